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
//! are deterministic and identical on every platform. Independent candidates
//! (a search's grid, step 2's windows) are evaluated together by the batched
//! kernels ([`batch`]), which vectorise across candidates (AVX, AVX-512F when
//! the CPU has them) without changing any candidate's operations or their
//! order, so every path gives the same bits as a lone [`F4`] evaluation.

use half::f16;

use super::simd::{Lanes, F4};
#[cfg(target_arch = "x86_64")]
use super::simd::{F16, F8};

/// The most candidates one [`batch`] call evaluates.
pub(crate) const MAX_CANDS: usize = 64;

/// Per-candidate sums from [`batch`]: `out[a][c]` is accumulator `a` of candidate `c`.
pub(crate) type BatchOut = [[f32; MAX_CANDS]; 3];

/// One evaluation of a candidate over four values: the operations an
/// `F4` loop would do, written once for every [`Lanes`] width.
pub(crate) trait Kernel {
    /// How many of the three accumulators are used.
    const NACC: usize;
    /// Accumulates one chunk `x`, `w` for the candidates whose parameters
    /// (up to three per candidate) are in `p`.
    fn step<V: Lanes>(&self, x: V, w: V, p: &[V; 3], acc: &mut [V; 3]);
}

/// Σ w·x·l and Σ w·l² for codes `round(is·x)` in [lo, hi]; parameter: `is`.
pub(crate) struct SymStatsK {
    pub lo: f32,
    pub hi: f32,
}
impl Kernel for SymStatsK {
    const NACC: usize = 2;
    #[inline(always)]
    fn step<V: Lanes>(&self, x: V, w: V, p: &[V; 3], acc: &mut [V; 3]) {
        let l = (p[0] * x).round_clamp(V::splat(self.lo), V::splat(self.hi));
        let wl = w * l;
        acc[0] = acc[0] + wl * x;
        acc[1] = acc[1] + wl * l;
    }
}

/// Σ w·l, Σ w·l², Σ w·l·x for codes `round((x − off)·is)` in [0, top];
/// parameter: `is`.
pub(crate) struct AffineStatsK {
    pub off: f32,
    pub top: f32,
}
impl Kernel for AffineStatsK {
    const NACC: usize = 3;
    #[inline(always)]
    fn step<V: Lanes>(&self, x: V, w: V, p: &[V; 3], acc: &mut [V; 3]) {
        let l = (p[0] * (x - V::splat(self.off))).round_clamp(V::zero(), V::splat(self.top));
        let wl = w * l;
        acc[0] = acc[0] + wl;
        acc[1] = acc[1] + wl * l;
        acc[2] = acc[2] + wl * x;
    }
}

/// [`sym_error`]; parameters: `s`, `is`.
pub(crate) struct SymErrK {
    pub lo: f32,
    pub hi: f32,
}
impl Kernel for SymErrK {
    const NACC: usize = 1;
    #[inline(always)]
    fn step<V: Lanes>(&self, x: V, w: V, p: &[V; 3], acc: &mut [V; 3]) {
        let e = p[0] * (p[1] * x).round_clamp(V::splat(self.lo), V::splat(self.hi)) - x;
        acc[0] = acc[0] + w * e * e;
    }
}

/// The weighted squared error of `dl·q − ml` with the codes nearest to
/// `(x + ml)/dl` in [0, top], computed as a decoder does; parameters: `dl`,
/// `idl` (1/dl or 0), `ml`.
pub(crate) struct AffineErrK {
    pub top: f32,
}
impl Kernel for AffineErrK {
    const NACC: usize = 1;
    #[inline(always)]
    fn step<V: Lanes>(&self, x: V, w: V, p: &[V; 3], acc: &mut [V; 3]) {
        let l = ((x + p[2]) * p[1]).round_clamp(V::zero(), V::splat(self.top));
        let e = p[0] * l - p[2] - x;
        acc[0] = acc[0] + w * e * e;
    }
}

/// `G` vectors of candidates from `c0` (padded with the last candidate).
#[inline(always)]
fn batch_group<V: Lanes, K: Kernel, const G: usize>(
    k: &K,
    x: &[f32],
    w: &[f32],
    p: [&[f32]; 3],
    c0: usize,
    out: &mut BatchOut,
) {
    let nc = p[0].len();
    let mut pv = [[V::zero(); 3]; G];
    for (g, pv) in pv.iter_mut().enumerate() {
        for (a, pv) in pv.iter_mut().enumerate() {
            let mut t = [0f32; 4];
            for (c, t) in t.iter_mut().enumerate().take(V::CANDS) {
                *t = p[a][(c0 + g * V::CANDS + c).min(nc - 1)];
            }
            *pv = V::per_cand(&t);
        }
    }
    let mut acc = [[V::zero(); 3]; G];
    let n = x.len().min(w.len());
    let mut i = 0;
    while i + 4 <= n {
        let (xv, wv) = (V::load4(&x[i..]), V::load4(&w[i..]));
        for g in 0..G {
            k.step(xv, wv, &pv[g], &mut acc[g]);
        }
        i += 4;
    }
    // The remainder one at a time, as lane 0 of a vector (as `for_lanes`).
    while i < n {
        let xv = V::load4(&[x[i], 0.0, 0.0, 0.0]);
        let wv = V::load4(&[w[i], 0.0, 0.0, 0.0]);
        for g in 0..G {
            k.step(xv, wv, &pv[g], &mut acc[g]);
        }
        i += 1;
    }
    for (g, acc) in acc.iter().enumerate() {
        for (a, acc) in acc.iter().enumerate().take(K::NACC) {
            let mut t = [0f32; 4];
            acc.hsums(&mut t);
            for (c, &t) in t.iter().enumerate().take(V::CANDS) {
                let ci = c0 + g * V::CANDS + c;
                if ci < nc {
                    out[a][ci] = t;
                }
            }
        }
    }
}

#[inline(always)]
fn batch_with<V: Lanes, K: Kernel>(
    k: &K,
    x: &[f32],
    w: &[f32],
    p: [&[f32]; 3],
    out: &mut BatchOut,
) {
    let nc = p[0].len().min(MAX_CANDS);
    let p = p.map(|p| &p[..nc]);
    let mut c0 = 0;
    while c0 < nc {
        let nv = (nc - c0).div_ceil(V::CANDS);
        match nv {
            1 => batch_group::<V, K, 1>(k, x, w, p, c0, out),
            2 => batch_group::<V, K, 2>(k, x, w, p, c0, out),
            3 => batch_group::<V, K, 3>(k, x, w, p, c0, out),
            _ => batch_group::<V, K, 4>(k, x, w, p, c0, out),
        }
        c0 += nv.min(4) * V::CANDS;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn batch_avx<K: Kernel>(k: &K, x: &[f32], w: &[f32], p: [&[f32]; 3], out: &mut BatchOut) {
    batch_with::<F8, K>(k, x, w, p, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn batch_avx512<K: Kernel>(k: &K, x: &[f32], w: &[f32], p: [&[f32]; 3], out: &mut BatchOut) {
    batch_with::<F16, K>(k, x, w, p, out)
}

/// The vector width the batched kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    F4,
    F8,
    F16,
}

#[cfg(test)]
thread_local! {
    /// Tests force a level (on this thread) to compare the paths.
    pub(crate) static FORCE_LEVEL: std::cell::Cell<Option<Level>> = const { std::cell::Cell::new(None) };
}

/// The widest level this CPU runs.
pub(crate) fn best_level() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return Level::F16;
        }
        if is_x86_feature_detected!("avx") {
            return Level::F8;
        }
    }
    Level::F4
}

#[inline]
fn level() -> Level {
    #[cfg(test)]
    if let Some(l) = FORCE_LEVEL.with(|f| f.get()) {
        return l.min_available();
    }
    best_level()
}

#[cfg(test)]
impl Level {
    fn min_available(self) -> Level {
        match (self, best_level()) {
            (Level::F16, Level::F16) => Level::F16,
            (Level::F16 | Level::F8, Level::F16 | Level::F8) => Level::F8,
            _ => Level::F4,
        }
    }
}

/// Evaluates kernel `k` over (x, w) for every candidate (parameter `a` of
/// candidate `c` in `p[a][c]`; all of `p`'s slices as long as `p[0]`, at
/// most [`MAX_CANDS`]), writing accumulator `a` of candidate `c` to
/// `out[a][c]`: bit for bit what an [`F4`] loop per candidate gives.
#[inline]
pub(crate) fn batch<K: Kernel>(k: &K, x: &[f32], w: &[f32], p: [&[f32]; 3], out: &mut BatchOut) {
    match level() {
        // SAFETY: the level is only F16 / F8 when the CPU has AVX-512F / AVX.
        #[cfg(target_arch = "x86_64")]
        Level::F16 => unsafe { batch_avx512(k, x, w, p, out) },
        #[cfg(target_arch = "x86_64")]
        Level::F8 => unsafe { batch_avx(k, x, w, p, out) },
        _ => batch_with::<F4, K>(k, x, w, p, out),
    }
}

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

/// `nearest_int(clamp(v, lo, hi))`; NaN maps to `lo`. (Integer bit
/// arithmetic rather than a saturating cast, so that loops vectorise.)
#[inline(always)]
pub(crate) fn round_clamp(v: f32, lo: f32, hi: f32) -> i32 {
    nearest_int(clampf(v, lo, hi))
}

/// Σ f(x, w) over (x, w) in four lanes, combined as [`F4::hsum`].
#[inline(always)]
pub(crate) fn lane_sum(x: &[f32], w: &[f32], mut f: impl FnMut(usize, F4, F4) -> F4) -> f32 {
    let mut acc = F4::zero();
    let n = x.len().min(w.len());
    let mut i = 0;
    while i + 4 <= n {
        acc = acc + f(i, F4::load(&x[i..]), F4::load(&w[i..]));
        i += 4;
    }
    let mut a = acc.to_array();
    for (k, (&x, &w)) in x[i..n].iter().zip(&w[i..n]).enumerate() {
        let t = f(i + k, F4::splat(x), F4::splat(w)).to_array()[0];
        a[0] += t;
    }
    (a[0] + a[2]) + (a[1] + a[3])
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
    // The largest magnitude (in eight lanes, so that it vectorises: `max`
    // is exact in any order), then the first value that has it.
    let mut lanes = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            let a = v.abs();
            *m = if a > *m { a } else { *m };
        }
    }
    for &v in chunks.remainder() {
        let a = v.abs();
        lanes[0] = if a > lanes[0] { a } else { lanes[0] };
    }
    let amax = lanes.iter().fold(0f32, |m, &a| if a > m { a } else { m });
    if amax == 0.0 {
        return (0.0, 0.0);
    }
    let max = x.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0);
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
        self.offer(sxl, sll, is)
    }

    /// Keeps the codes of inverse scale `is` with sums `sxl`, `sll` if they
    /// fit better; true if so.
    #[inline]
    fn offer(&mut self, sxl: f32, sll: f32, is: f32) -> bool {
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
    let mut cis = [0f32; MAX_CANDS];
    let nc = (2 * deltas.len()).min(MAX_CANDS);
    for (c, &d) in deltas.iter().take(nc / 2).enumerate() {
        cis[2 * c] = (lo - d) / max;
        cis[2 * c + 1] = (hi + d) / max;
    }
    let mut st = [[0f32; MAX_CANDS]; 3];
    let cis = &cis[..nc];
    batch(&SymStatsK { lo, hi }, x, w, [cis; 3], &mut st);
    for (c, &is) in cis.iter().enumerate() {
        best.offer(st[0][c], st[1][c], is);
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
    // Min and max, NaNs skipped (in eight lanes, so that it vectorises).
    let mut mns = [f32::INFINITY; 8];
    let mut mxs = [f32::NEG_INFINITY; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for ((mn, mx), &v) in mns.iter_mut().zip(&mut mxs).zip(c) {
            *mn = if v < *mn { v } else { *mn };
            *mx = if v > *mx { v } else { *mx };
        }
    }
    for &v in chunks.remainder() {
        mns[0] = if v < mns[0] { v } else { mns[0] };
        mxs[0] = if v > mxs[0] { v } else { mxs[0] };
    }
    let mut mn = mns
        .iter()
        .fold(f32::INFINITY, |m, &v| if v < m { v } else { m });
    let mx = mxs
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
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
    // Candidate 0 is the min/max quantizer, then the grid.
    let mut cis = [0f32; MAX_CANDS];
    let nc = (grid.nstep + 2).min(MAX_CANDS);
    cis[0] = top / range;
    for (k, is) in cis[1..nc].iter_mut().enumerate() {
        *is = (top + grid.rmin + grid.rdelta * k as f32) / range;
    }
    let cis = &cis[..nc];
    let mut st = [[0f32; MAX_CANDS]; 3];
    batch(&AffineStatsK { off: mn, top }, x, w, [cis; 3], &mut st);
    let mut best_is = cis[0];
    let mut best_off = mn;
    let (mut bs, mut bm, mut bgain) = {
        let s = range / top;
        let (sl, sll, sxl) = (st[0][0], st[1][0], st[2][0]);
        // gain = Σwx² − E for y = s·l + mn.
        let gain = 2.0 * (s * sxl + mn * sx) - (s * s * sll + 2.0 * s * mn * sl + mn * mn * sw);
        (s, mn, gain)
    };
    for (c, &is) in cis.iter().enumerate().skip(1) {
        let (sl, sll, sxl) = (st[0][c], st[1][c], st[2][c]);
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
