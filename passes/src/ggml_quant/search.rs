//! Scale searches shared by the block encoders.
//!
//! Two shapes of quantizer recur: symmetric (`y = s·q`, q in [qlo, qhi]) and
//! affine (`y = s·q + m`, q in [0, nmax]). Both searches scan candidate
//! inverse scales, fit the scale (and offset) by weighted least squares for
//! each candidate's codes, keep the best, then alternate "re-round the codes
//! for the fitted scale / re-fit the scale for the codes" until the error
//! stops falling. All loops are bounded and all float-to-int conversions are
//! clamped, so NaN or infinite inputs give garbage codes but never a panic.
//!
//! Sums run in four lanes ([`F4`]) combined in a fixed order: the results
//! are deterministic and identical on every platform.

use half::f16;

use super::simd::F4;

/// Rounds to the nearest integer, ties to even, exactly as ggml's
/// `nearest_int` (valid for |v| < 2^22; callers clamp first).
#[inline(always)]
pub(crate) fn nearest_int(v: f32) -> i32 {
    let t = v + 12_582_912.0;
    (t.to_bits() & 0x007F_FFFF) as i32 - 0x0040_0000
}

/// `v` clamped to [lo, hi], NaN going to `lo` (the scalar twin of
/// [`F4::round_clamp`]'s clamp).
#[inline(always)]
pub(crate) fn clampf(v: f32, lo: f32, hi: f32) -> f32 {
    let v = if v > lo { v } else { lo };
    if v < hi {
        v
    } else {
        hi
    }
}

/// `round(clamp(v, lo, hi))` (ties to even) as a float; |lo|, |hi| ≤ 2^22.
#[inline(always)]
pub(crate) fn round_clampf(v: f32, lo: f32, hi: f32) -> f32 {
    (clampf(v, lo, hi) + 12_582_912.0) - 12_582_912.0
}

/// `nearest_int(clamp(v, lo, hi))`; NaN maps to `lo`.
#[inline(always)]
pub(crate) fn round_clamp(v: f32, lo: f32, hi: f32) -> i32 {
    round_clampf(v, lo, hi) as i32
}

/// An f32 rounded to f16 (nearest, ties to even): the stored bits and the
/// value a decoder will see.
#[inline]
pub(crate) fn to_f16(v: f32) -> (u16, f32) {
    let h = f16::from_f32(v);
    (h.to_bits(), h.to_f32())
}

/// The value with the largest magnitude (the first one on ties) and that
/// magnitude. NaNs are skipped.
#[inline]
pub(crate) fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (max, amax)
}

/// Runs `f` over (x, w) four at a time, then over the remainder one at a
/// time (as lane 0 of a vector); `f` accumulates.
#[inline(always)]
pub(crate) fn for_lanes(x: &[f32], w: &[f32], mut f: impl FnMut(F4, F4)) {
    let n = x.len().min(w.len());
    let mut i = 0;
    while i + 4 <= n {
        f(F4::load(&x[i..]), F4::load(&w[i..]));
        i += 4;
    }
    while i < n {
        f(
            F4::load(&[x[i], 0.0, 0.0, 0.0]),
            F4::load(&[w[i], 0.0, 0.0, 0.0]),
        );
        i += 1;
    }
}

/// Σw and Σw·x.
#[inline]
pub(crate) fn weight_sums(x: &[f32], w: &[f32]) -> (f32, f32) {
    let (mut sw, mut sx) = (F4::zero(), F4::zero());
    for_lanes(x, w, |x, w| {
        sw = sw + w;
        sx = sx + w * x;
    });
    (sw.hsum(), sx.hsum())
}

/// Weighted Σ w·x·l and Σ w·l² for the codes `round(is·x)` clamped to [lo, hi].
#[inline(always)]
fn sym_stats(x: &[f32], w: &[f32], is: f32, lo: f32, hi: f32) -> (f32, f32) {
    let (vis, vlo, vhi) = (F4::splat(is), F4::splat(lo), F4::splat(hi));
    let (mut sxl, mut sll) = (F4::zero(), F4::zero());
    for_lanes(x, w, |x, w| {
        let l = (vis * x).round_clamp(vlo, vhi);
        let wl = w * l;
        sxl = sxl + wl * x;
        sll = sll + wl * l;
    });
    (sxl.hsum(), sll.hsum())
}

#[derive(Default)]
struct SymBest {
    sxl: f32,
    sll: f32,
    is: f32,
}

impl SymBest {
    /// Keeps the codes of inverse scale `is` if they fit better; true if so.
    #[inline]
    fn consider(&mut self, x: &[f32], w: &[f32], is: f32, lo: f32, hi: f32) -> bool {
        let (sxl, sll) = sym_stats(x, w, is, lo, hi);
        if sll > 0.0 && (self.sll == 0.0 || sxl * sxl * self.sll > self.sxl * self.sxl * sll) {
            (self.sxl, self.sll, self.is) = (sxl, sll, is);
            true
        } else {
            false
        }
    }
}

/// Symmetric quantizer search: finds `s` and codes in [qlo, qhi] (written to
/// `codes`) minimising Σ w (s·q − x)². Candidate inverse scales map the
/// largest-magnitude value to `qlo − δ` and to `qhi + δ` for each δ in
/// `deltas`; the best is then refined. Returns 0 (and zero codes) for an
/// all-zero block.
pub(crate) fn sym_search(
    x: &[f32],
    w: &[f32],
    qlo: i32,
    qhi: i32,
    deltas: &[f32],
    iters: usize,
    codes: &mut [i8],
) -> f32 {
    let (max, amax) = signed_absmax(x);
    if amax < 1e-30 {
        codes.iter_mut().for_each(|c| *c = 0);
        return 0.0;
    }
    let (lo, hi) = (qlo as f32, qhi as f32);
    // Maximise sxl²/sll (the error is Σwx² − sxl²/sll at the fitted scale).
    let mut best = SymBest::default();
    for &d in deltas {
        best.consider(x, w, (lo - d) / max, lo, hi);
        best.consider(x, w, (hi + d) / max, lo, hi);
    }
    for _ in 0..iters {
        if best.sll == 0.0 {
            break;
        }
        let s = best.sxl / best.sll;
        if s == 0.0 || !s.is_finite() || !best.consider(x, w, 1.0 / s, lo, hi) {
            break;
        }
    }
    if best.sll == 0.0 {
        codes.iter_mut().for_each(|c| *c = 0);
        return 0.0;
    }
    for (c, &x) in codes.iter_mut().zip(x) {
        *c = round_clamp(best.is * x, lo, hi) as i8;
    }
    best.sxl / best.sll
}

/// The weighted squared error of `s·q` with the codes nearest to `x/s` in
/// [lo, hi] (computed in f32 as a decoder does); `is` = 1/s (or 0).
#[inline]
pub(crate) fn sym_error(x: &[f32], w: &[f32], s: f32, is: f32, lo: f32, hi: f32) -> f32 {
    let (vs, vis, vlo, vhi) = (F4::splat(s), F4::splat(is), F4::splat(lo), F4::splat(hi));
    let mut err = F4::zero();
    for_lanes(x, w, |x, w| {
        let e = vs * (vis * x).round_clamp(vlo, vhi) - x;
        err = err + w * e * e;
    });
    err.hsum()
}

/// Codes for a fixed symmetric scale `s`, and the weighted squared error of
/// `s·q` (in f32, as a decoder computes it).
#[inline]
pub(crate) fn sym_assign(
    x: &[f32],
    w: &[f32],
    s: f32,
    qlo: i32,
    qhi: i32,
    codes: &mut [i8],
) -> f32 {
    let (lo, hi) = (qlo as f32, qhi as f32);
    let is = if s != 0.0 { 1.0 / s } else { 0.0 };
    for (c, &x) in codes.iter_mut().zip(x) {
        *c = round_clamp(is * x, lo, hi) as i8;
    }
    sym_error(x, w, s, is, lo, hi)
}

/// How `affine_search` scans candidate inverse scales: `(nmax + rmin +
/// rdelta·k) / (max − min)` for k in 0..=nstep, then `iters` refinements.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AffineGrid {
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: usize,
    pub iters: usize,
}

/// Σ w·l, Σ w·l², Σ w·l·x for codes `round((x − off)·is)` in [0, top].
#[inline(always)]
fn affine_stats(x: &[f32], w: &[f32], is: f32, off: f32, top: f32) -> (f32, f32, f32) {
    let (vis, voff, vlo, vhi) = (F4::splat(is), F4::splat(off), F4::zero(), F4::splat(top));
    let (mut sl, mut sll, mut sxl) = (F4::zero(), F4::zero(), F4::zero());
    for_lanes(x, w, |x, w| {
        let l = (vis * (x - voff)).round_clamp(vlo, vhi);
        let wl = w * l;
        sl = sl + wl;
        sll = sll + wl * l;
        sxl = sxl + wl * x;
    });
    (sl.hsum(), sll.hsum(), sxl.hsum())
}

/// Affine quantizer search: finds `(s, m)` and codes in [0, nmax] (written to
/// `codes`) minimising Σ w (s·q + m − x)², with `m ≤ 0` when `nonpos_min`
/// (the k-quants store mins as magnitudes that are subtracted). Returns
/// `(s, m)`; `s` is never negative.
pub(crate) fn affine_search(
    x: &[f32],
    w: &[f32],
    nmax: u8,
    nonpos_min: bool,
    grid: AffineGrid,
    codes: &mut [u8],
) -> (f32, f32) {
    let mut mn = f32::INFINITY;
    let mut mx = f32::NEG_INFINITY;
    for &x in x {
        mn = mn.min(x);
        mx = mx.max(x);
    }
    let (sw, sx) = weight_sums(x, w);
    if nonpos_min && mn > 0.0 {
        mn = 0.0;
    }
    let range = mx - mn;
    if !(range > 0.0) || !range.is_finite() || !(sw > 0.0) {
        // Constant (or empty / non-finite) block: an offset alone.
        codes.iter_mut().for_each(|c| *c = 0);
        let m = if mn.is_finite() { mn } else { 0.0 };
        return (0.0, if nonpos_min { m.min(0.0) } else { m });
    }
    let top = nmax as f32;

    // Fit (s, m) for given codes. Returns (s, m, gain) where the weighted
    // error is Σwx² − gain; None when the codes do not determine a fit.
    let fit = |sl: f32, sll: f32, sxl: f32| -> Option<(f32, f32, f32)> {
        let det = sw * sll - sl * sl;
        if !(det > 0.0) {
            return None;
        }
        let mut s = (sw * sxl - sx * sl) / det;
        let mut m = (sll * sx - sl * sxl) / det;
        if nonpos_min && m > 0.0 {
            m = 0.0;
            s = sxl / sll;
        }
        if !(s > 0.0) || !s.is_finite() {
            return None;
        }
        Some((s, m, s * sxl + m * sx))
    };

    // Start from the plain min/max quantizer.
    let mut best_is = top / range;
    let mut best_off = mn;
    let (mut bs, mut bm, mut bgain) = {
        let s = range / top;
        let (sl, sll, sxl) = affine_stats(x, w, best_is, mn, top);
        // gain = Σwx² − E for y = s·l + mn.
        let gain = 2.0 * (s * sxl + mn * sx) - (s * s * sll + 2.0 * s * mn * sl + mn * mn * sw);
        (s, mn, gain)
    };
    for k in 0..=grid.nstep {
        let is = (top + grid.rmin + grid.rdelta * k as f32) / range;
        let (sl, sll, sxl) = affine_stats(x, w, is, mn, top);
        if let Some((s, m, gain)) = fit(sl, sll, sxl) {
            if gain > bgain {
                (bs, bm, bgain) = (s, m, gain);
                best_is = is;
                best_off = mn;
            }
        }
    }
    for _ in 0..grid.iters {
        let (is, off) = (1.0 / bs, bm);
        let (sl, sll, sxl) = affine_stats(x, w, is, off, top);
        match fit(sl, sll, sxl) {
            Some((s, m, gain)) if gain > bgain => {
                (bs, bm, bgain) = (s, m, gain);
                best_is = is;
                best_off = off;
            }
            _ => break,
        }
    }
    for (c, &x) in codes.iter_mut().zip(x) {
        *c = round_clamp(best_is * (x - best_off), 0.0, top) as u8;
    }
    (bs, bm)
}

/// The weighted squared error of `dl·q − ml` with the codes nearest to
/// `(x + ml)/dl` in [0, top], computed as a decoder does; `idl` = 1/dl (or 0).
#[inline]
pub(crate) fn affine_error(x: &[f32], w: &[f32], dl: f32, idl: f32, ml: f32, top: f32) -> f32 {
    let (vd, vid, vm) = (F4::splat(dl), F4::splat(idl), F4::splat(ml));
    let (vlo, vhi) = (F4::zero(), F4::splat(top));
    let mut err = F4::zero();
    for_lanes(x, w, |x, w| {
        let l = ((x + vm) * vid).round_clamp(vlo, vhi);
        let e = vd * l - vm - x;
        err = err + w * e * e;
    });
    err.hsum()
}
