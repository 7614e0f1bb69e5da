//! The k-quants: super-blocks of 256 values split into sub-blocks, whose
//! scales (and mins) are themselves quantized against one f16 super-scale.
//!
//! | type | sub-blocks | codes | sub-scales | decode |
//! | --- | --- | --- | --- | --- |
//! | Q2_K | 16 × 16 | 0..=3 | 4-bit scale, 4-bit min | `d·sc·q − dmin·m` |
//! | Q3_K | 16 × 16 | −4..=3 | 6-bit signed | `d·sc·q` |
//! | Q4_K | 8 × 32 | 0..=15 | 6-bit scale, 6-bit min | `d·sc·q − dmin·m` |
//! | Q5_K | 8 × 32 | 0..=31 | 6-bit scale, 6-bit min | `d·sc·q − dmin·m` |
//! | Q6_K | 16 × 16 | −32..=31 | int8 | `d·sc·q` |
//!
//! The search, per super-block:
//! 1. each sub-block gets its continuous best scale (and min) from a grid of
//!    candidate scales, each least-squares fitted, then refined by
//!    alternating re-rounding and re-fitting (`search.rs`);
//! 2. the sub-block scales (and mins) are quantized against the f16
//!    super-scale(s) *jointly with the codes*: for each sub-block a window
//!    of integer scales around the continuous one is tried (with, for the
//!    affine types, the min that is least-squares optimal for that scale),
//!    the codes re-rounded for each, and the best kept by the exact error
//!    the decoder will see — the best lattice point is often well away from
//!    the rounded continuous optimum;
//! 3. given those integers and codes, the super-scale(s) are re-fitted by
//!    least squares over the whole super-block and rounded to f16, and
//!    step 2 runs again; the best state over the rounds is kept.
//!
//! llama.cpp's reference instead quantizes the sub-block scales after the
//! fact from the largest one and re-rounds the codes once. Without importance
//! the objective is the plain squared error: llama.cpp's default weightings
//! (`av_x + |x|`, `|x|`, `x²`) measured worse in squared error for every type.

use edgec_core::GgmlType;

use super::block_weights;
use super::search::{
    affine_search, batch, lane_sum, round_clamp, signed_absmax, sym_search, to_f16, weight_sums,
    AffineErrK, AffineGrid, SymErrK, MAX_CANDS,
};
use super::simd::F4;

pub(crate) const QK_K: usize = 256;

pub(super) fn encode(ty: GgmlType, src: &[f32], importance: Option<&[f32]>, out: &mut Vec<u8>) {
    for (bi, x) in src.chunks_exact(QK_K).enumerate() {
        let Ok(x) = <&[f32; QK_K]>::try_from(x) else {
            continue;
        };
        let mut w = [0f32; QK_K];
        block_weights(
            importance.and_then(|i| i.get(bi * QK_K..(bi + 1) * QK_K)),
            &mut w,
        );
        match ty {
            GgmlType::Q2K => q2_k(x, &w, out),
            GgmlType::Q3K => q3_k(x, &w, out),
            GgmlType::Q4K => q4_k(x, &w, out),
            GgmlType::Q5K => q5_k(x, &w, out),
            _ => q6_k(x, &w, out),
        }
    }
}

// ---------------------------------------------------------------- affine

struct AffineSpec {
    /// Elements per sub-block (16 or 32).
    sub: usize,
    /// Largest code (3, 15 or 31).
    nmax: u8,
    /// Largest sub-block scale / min integer (15 or 63).
    smax: u8,
    grid: AffineGrid,
    /// Rounds of (choose integers, re-fit super-scales).
    rounds: usize,
    /// How far beyond floor/ceil of the continuous sub-block scale step 2 looks.
    valley: i32,
}

/// A quantized affine super-block: `y = d·sc[j]·q − dmin·m[j]`.
#[derive(Clone)]
struct AffineBlock {
    d: u16,
    dmin: u16,
    sc: [u8; 16],
    m: [u8; 16],
    q: [u8; QK_K],
}

/// Per sub-block: the continuous scale from step 1, Σw and Σw·x.
struct SubSums {
    s: [f32; 16],
    sw: [f32; 16],
    sx: [f32; 16],
}

/// Four codes as floats.
#[inline(always)]
fn load_codes<T: Copy + Into<f32>>(q: &[T]) -> F4 {
    F4::load(&[q[0].into(), q[1].into(), q[2].into(), q[3].into()])
}

/// Sub-block weights, with an all-zero sub-block searched unweighted.
fn sub_weights<'a>(w: &'a [f32], ones: &'a [f32]) -> &'a [f32] {
    if w.iter().any(|&v| v > 0.0) {
        w
    } else {
        &ones[..w.len()]
    }
}

/// Integer candidates next to the continuous `c`: floor and ceil, in [lo, hi].
#[inline]
fn neighbours(c: f32, lo: i32, hi: i32) -> [i32; 2] {
    let f = (c.max(lo as f32).min(hi as f32) as i32).clamp(lo, hi);
    // `as` truncates; for negative c step down to the floor.
    let f = if (f as f32) > c { (f - 1).max(lo) } else { f };
    [f, (f + 1).min(hi)]
}

/// Step 2 for fixed super-scales `dv`, `mv`: per sub-block, the integer
/// (scale, min) pair with the lowest exact error among: scales within
/// `spec.valley` of the continuous target `sums.s[j]/dv` (floor − valley ..=
/// ceil + valley), each with the floor and ceil of the min that is
/// least-squares optimal for that scale and the sub-block's current codes
/// (scale and min trade off along a valley of near-equal error, and the
/// best lattice point is often off the continuous optimum). Writes the
/// integers and re-rounded codes to `cur`; returns the total weighted error.
fn choose_affine_ints(
    x: &[f32; QK_K],
    w: &[f32; QK_K],
    spec: &AffineSpec,
    sums: &SubSums,
    (dv, mv): (f32, f32),
    cur: &mut AffineBlock,
) -> f32 {
    let sub = spec.sub;
    let nmax = spec.nmax as f32;
    let smax = spec.smax as i32;
    let k = spec.valley;
    let mut total = 0f32;
    for (j, &sj) in sums.s.iter().enumerate().take(QK_K / sub) {
        let r = j * sub..(j + 1) * sub;
        let (xs, ws) = (&x[r.clone()], &w[r.clone()]);
        let (sw, sx) = (sums.sw[j], sums.sx[j]);
        let qs = &cur.q[r.clone()];
        let sl = lane_sum(xs, ws, |i, _, w| w * load_codes(&qs[i..]));
        let cs = if dv > 0.0 { sj / dv } else { 0.0 };
        let [s0, _] = neighbours(cs, 0, smax);
        // The candidates (scale, min), evaluated together.
        let mut cand = [(0u8, 0u8); MAX_CANDS];
        let (mut cd, mut cid, mut cml) = ([0f32; MAX_CANDS], [0f32; MAX_CANDS], [0f32; MAX_CANDS]);
        let mut nc = 0;
        for ls in (s0 - k).max(0)..=(s0 + 1 + k).min(smax) {
            let dl = dv * ls as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            // min minimising Σw(dl·q − m − x)² for the current codes q.
            let mstar = if sw > 0.0 { (dl * sl - sx) / sw } else { 0.0 };
            let cm = if mv > 0.0 { mstar / mv } else { 0.0 };
            let [m0, m1] = neighbours(cm, 0, smax);
            for lm in [m0, m1].into_iter().take(if m1 > m0 { 2 } else { 1 }) {
                if nc < MAX_CANDS {
                    cand[nc] = (ls as u8, lm as u8);
                    (cd[nc], cid[nc], cml[nc]) = (dl, idl, mv * lm as f32);
                    nc += 1;
                }
            }
        }
        let mut errs = [[0f32; MAX_CANDS]; 3];
        batch(
            &AffineErrK { top: nmax },
            xs,
            ws,
            [&cd[..nc], &cid[..nc], &cml[..nc]],
            &mut errs,
        );
        let mut bj = (f32::INFINITY, 0u8, 0u8);
        for (&err, &(ls, lm)) in errs[0][..nc].iter().zip(&cand) {
            if err < bj.0 {
                bj = (err, ls, lm);
            }
        }
        let dl = dv * bj.1 as f32;
        let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        let ml = mv * bj.2 as f32;
        for (q, &x) in cur.q[r].iter_mut().zip(xs) {
            *q = round_clamp((x + ml) * idl, 0.0, nmax) as u8;
        }
        cur.sc[j] = bj.1;
        cur.m[j] = bj.2;
        total += bj.0;
    }
    total
}

/// Step 3: the least-squares (d, dmin) for fixed integers and codes,
/// minimising Σw(d·u − dmin·v − x)² with u = sc·q, v = m; None if undetermined.
fn refit_affine(
    x: &[f32; QK_K],
    w: &[f32; QK_K],
    sub: usize,
    sums: &SubSums,
    cur: &AffineBlock,
) -> Option<(f32, f32)> {
    let (mut aa, mut bb, mut cc, mut pp, mut qq) = (0f32, 0f32, 0f32, 0f32, 0f32);
    for j in 0..QK_K / sub {
        let (scj, mj) = (cur.sc[j] as f32, cur.m[j] as f32);
        let r = j * sub..(j + 1) * sub;
        let (xs, ws, qs) = (&x[r.clone()], &w[r.clone()], &cur.q[r]);
        let (mut swl, mut swll, mut swlx) = (F4::zero(), F4::zero(), F4::zero());
        for i in (0..sub).step_by(4) {
            let (x, w, l) = (F4::load(&xs[i..]), F4::load(&ws[i..]), load_codes(&qs[i..]));
            let wl = w * l;
            swl = swl + wl;
            swll = swll + wl * l;
            swlx = swlx + wl * x;
        }
        let (sw, swx) = (sums.sw[j], sums.sx[j]);
        let (swl, swll, swlx) = (swl.hsum(), swll.hsum(), swlx.hsum());
        aa += scj * scj * swll;
        bb += scj * mj * swl;
        cc += mj * mj * sw;
        pp += scj * swlx;
        qq += mj * swx;
    }
    let det = aa * cc - bb * bb;
    let (mut d, mut dm) = if det > 0.0 {
        ((pp * cc - bb * qq) / det, (bb * pp - aa * qq) / det)
    } else if aa > 0.0 {
        (pp / aa, 0.0)
    } else {
        return None;
    };
    if dm < 0.0 && aa > 0.0 {
        d = pp / aa;
        dm = 0.0;
    }
    if !(d >= 0.0) || !d.is_finite() || !dm.is_finite() {
        return None;
    }
    Some((d, dm))
}

fn affine_superblock(x: &[f32; QK_K], w: &[f32; QK_K], spec: &AffineSpec) -> AffineBlock {
    let sub = spec.sub;
    let nsb = QK_K / sub;
    let ones = [1f32; 32];

    // 1. Continuous per-sub-block fits.
    let mut s = [0f32; 16];
    let mut a = [0f32; 16];
    let mut q = [0u8; QK_K];
    for j in 0..nsb {
        let r = j * sub..(j + 1) * sub;
        let ws = sub_weights(&w[r.clone()], &ones);
        let (sj, mj) = affine_search(&x[r.clone()], ws, spec.nmax, true, spec.grid, &mut q[r]);
        s[j] = sj;
        a[j] = -mj;
    }
    // (The mins' continuous targets only set the initial dmin: step 2 derives
    // each min from its scale.)
    let mut sums = SubSums {
        s,
        sw: [0f32; 16],
        sx: [0f32; 16],
    };
    for j in 0..nsb {
        let r = j * sub..(j + 1) * sub;
        (sums.sw[j], sums.sx[j]) = weight_sums(&x[r.clone()], &w[r]);
    }
    let max_s = s[..nsb].iter().fold(0f32, |m, &v| m.max(v));
    let max_a = a[..nsb].iter().fold(0f32, |m, &v| m.max(v));

    let blank = || AffineBlock {
        d: 0,
        dmin: 0,
        sc: [0; 16],
        m: [0; 16],
        q: [0; QK_K],
    };
    let mut best = blank();
    let mut cur = blank();
    cur.q = q;
    let mut best_err = f32::INFINITY;
    let mut have_best = false;
    let (mut d, mut dm) = (max_s / spec.smax as f32, max_a / spec.smax as f32);
    let mut last = None;
    for _ in 0..spec.rounds.max(1) {
        let (db, dv) = to_f16(d.max(0.0));
        let (mb, mv) = to_f16(dm.max(0.0));
        if last == Some((db, mb)) {
            break;
        }
        last = Some((db, mb));
        (cur.d, cur.dmin) = (db, mb);
        // 2. Integer sub-scales and mins.
        let total = choose_affine_ints(x, w, spec, &sums, (dv, mv), &mut cur);
        if !have_best || total < best_err {
            have_best = true;
            best_err = total;
            best.clone_from(&cur);
        }
        // 3. Re-fit (d, dmin) for these integers and codes.
        match refit_affine(x, w, sub, &sums, &cur) {
            Some((nd, ndm)) => (d, dm) = (nd, ndm),
            None => break,
        }
    }
    best
}

fn pack_scale_min_k4(sc: &[u8; 16], m: &[u8; 16]) -> [u8; 12] {
    let mut out = [0u8; 12];
    for j in 0..8 {
        let (ls, lm) = (sc[j] & 63, m[j] & 63);
        if j < 4 {
            out[j] |= ls;
            out[j + 4] |= lm;
        } else {
            out[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
            out[j - 4] |= (ls >> 4) << 6;
            out[j] |= (lm >> 4) << 6;
        }
    }
    out
}

// Search settings, tuned by measurement (tests/vs_llama_reference.rs for
// the error, tests/throughput.rs for the speed): wider windows in step 2
// pay off more than denser grids in step 1, up to a point: Q4_K/Q5_K's
// valley of 2 (vs 1) and Q6_K's window of ±16 (vs ±8) gained 0.2-1.6% in
// error for ~25% of the time.
const SPEC_Q4: AffineSpec = AffineSpec {
    sub: 32,
    nmax: 15,
    smax: 63,
    grid: AffineGrid {
        rmin: -1.0,
        rdelta: 0.2,
        nstep: 10,
        iters: 3,
    },
    rounds: 2,
    valley: 1,
};
const SPEC_Q5: AffineSpec = AffineSpec {
    sub: 32,
    nmax: 31,
    smax: 63,
    grid: AffineGrid {
        rmin: -0.5,
        rdelta: 0.2,
        nstep: 8,
        iters: 3,
    },
    rounds: 2,
    valley: 1,
};
const SPEC_Q2: AffineSpec = AffineSpec {
    sub: 16,
    nmax: 3,
    smax: 15,
    grid: AffineGrid {
        rmin: -0.5,
        rdelta: 0.2,
        nstep: 8,
        iters: 3,
    },
    rounds: 2,
    valley: 1,
};

fn q4_k(x: &[f32; QK_K], w: &[f32; QK_K], out: &mut Vec<u8>) {
    let b = affine_superblock(x, w, &SPEC_Q4);
    out.extend_from_slice(&b.d.to_le_bytes());
    out.extend_from_slice(&b.dmin.to_le_bytes());
    out.extend_from_slice(&pack_scale_min_k4(&b.sc, &b.m));
    for c in 0..4 {
        for l in 0..32 {
            out.push((b.q[64 * c + l] & 0x0F) | ((b.q[64 * c + 32 + l] & 0x0F) << 4));
        }
    }
}

fn q5_k(x: &[f32; QK_K], w: &[f32; QK_K], out: &mut Vec<u8>) {
    let b = affine_superblock(x, w, &SPEC_Q5);
    out.extend_from_slice(&b.d.to_le_bytes());
    out.extend_from_slice(&b.dmin.to_le_bytes());
    out.extend_from_slice(&pack_scale_min_k4(&b.sc, &b.m));
    let mut qh = [0u8; 32];
    for (e, &v) in b.q.iter().enumerate() {
        qh[e % 32] |= ((v >> 4) & 1) << (e / 32);
    }
    out.extend_from_slice(&qh);
    for c in 0..4 {
        for l in 0..32 {
            out.push((b.q[64 * c + l] & 0x0F) | ((b.q[64 * c + 32 + l] & 0x0F) << 4));
        }
    }
}

/// 2-bit codes of 256 elements: element 128n + 32k + l at bits 2k of byte 32n + l.
fn pack_2bit(q: &[u8; QK_K]) -> [u8; 64] {
    let mut out = [0u8; 64];
    for (e, &v) in q.iter().enumerate() {
        out[32 * (e / 128) + e % 32] |= (v & 3) << (2 * ((e % 128) / 32));
    }
    out
}

fn q2_k(x: &[f32; QK_K], w: &[f32; QK_K], out: &mut Vec<u8>) {
    let b = affine_superblock(x, w, &SPEC_Q2);
    for j in 0..16 {
        out.push((b.sc[j] & 0x0F) | ((b.m[j] & 0x0F) << 4));
    }
    out.extend_from_slice(&pack_2bit(&b.q));
    out.extend_from_slice(&b.d.to_le_bytes());
    out.extend_from_slice(&b.dmin.to_le_bytes());
}

// ------------------------------------------------------------- symmetric

struct SymSpec {
    qlo: i32,
    qhi: i32,
    sclo: i32,
    schi: i32,
    deltas: &'static [f32],
    iters: usize,
    rounds: usize,
    /// How far beyond floor/ceil of the continuous sub-block scale step 2 looks.
    wide: i32,
}

/// A quantized symmetric super-block: `y = (d·sc[j])·q`.
struct SymBlock {
    d: u16,
    sc: [i8; 16],
    q: [i8; QK_K],
}

/// Step 2 (symmetric) for a fixed super-scale `dv`: per sub-block, the
/// integer scale within `spec.wide` of floor/ceil of `s[j]/dv` with the
/// lowest exact error, and its codes. Returns the total weighted error.
fn choose_sym_ints(
    x: &[f32; QK_K],
    w: &[f32; QK_K],
    spec: &SymSpec,
    s: &[f32; 16],
    dv: f32,
    cur: &mut SymBlock,
) -> f32 {
    const SUB: usize = 16;
    let (qlo, qhi) = (spec.qlo as f32, spec.qhi as f32);
    let mut total = 0f32;
    for (j, &sj) in s.iter().enumerate() {
        let r = j * SUB..(j + 1) * SUB;
        let (xs, ws) = (&x[r.clone()], &w[r.clone()]);
        let [c0, _] = neighbours(sj / dv, spec.sclo, spec.schi);
        let (first, last) = (
            (c0 - spec.wide).max(spec.sclo),
            (c0 + 1 + spec.wide).min(spec.schi),
        );
        let nc = ((last - first + 1).max(0) as usize).min(MAX_CANDS);
        let (mut cd, mut cid) = ([0f32; MAX_CANDS], [0f32; MAX_CANDS]);
        // (Branch-free, so that the divisions vectorise.)
        for (i, (cd, cid)) in cd.iter_mut().zip(&mut cid).enumerate() {
            let dl = dv * (first + i as i32) as f32;
            *cd = dl;
            *cid = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        }
        let mut errs = [[0f32; MAX_CANDS]; 3];
        let (cd, cid) = (&cd[..nc], &cid[..nc]);
        batch(
            &SymErrK { lo: qlo, hi: qhi },
            xs,
            ws,
            [cd, cid, cd],
            &mut errs,
        );
        let mut bj = (f32::INFINITY, 0i8);
        for (&err, l) in errs[0][..nc].iter().zip(first..) {
            if err < bj.0 {
                bj = (err, l as i8);
            }
        }
        let dl = dv * bj.1 as f32;
        let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        for (q, &x) in cur.q[r].iter_mut().zip(xs) {
            *q = round_clamp(x * idl, qlo, qhi) as i8;
        }
        cur.sc[j] = bj.1;
        total += bj.0;
    }
    total
}

fn sym_superblock(x: &[f32; QK_K], w: &[f32; QK_K], spec: &SymSpec) -> SymBlock {
    const SUB: usize = 16;
    let ones = [1f32; SUB];
    let mut s = [0f32; 16];
    let mut tmp = [0i8; SUB];
    for (j, sj) in s.iter_mut().enumerate() {
        let r = j * SUB..(j + 1) * SUB;
        let ws = sub_weights(&w[r.clone()], &ones);
        *sj = sym_search(
            &x[r],
            ws,
            spec.qlo,
            spec.qhi,
            spec.deltas,
            spec.iters,
            &mut tmp,
        );
    }
    let blank = || SymBlock {
        d: 0,
        sc: [0; 16],
        q: [0; QK_K],
    };
    let mut best = blank();
    let (max_s, amax_s) = signed_absmax(&s);
    if !(amax_s > 0.0) {
        return best;
    }
    let mut best_err = f32::INFINITY;
    let mut have_best = false;
    let mut d = max_s / spec.sclo as f32;
    let mut cur = blank();
    let mut last = None;
    for _ in 0..spec.rounds.max(1) {
        if !d.is_finite() {
            break;
        }
        let (db, dv) = to_f16(d);
        if last == Some(db) || dv == 0.0 {
            break;
        }
        last = Some(db);
        cur.d = db;
        let total = choose_sym_ints(x, w, spec, &s, dv, &mut cur);
        if !have_best || total < best_err {
            have_best = true;
            best_err = total;
            best.d = cur.d;
            best.sc = cur.sc;
            best.q = cur.q;
        }
        // Re-fit d for these integers and codes.
        let (mut num, mut den) = (F4::zero(), F4::zero());
        for i in (0..QK_K).step_by(4) {
            let (x, w) = (F4::load(&x[i..]), F4::load(&w[i..]));
            let u = F4::splat(cur.sc[i / SUB] as f32) * load_codes(&cur.q[i..]);
            num = num + w * x * u;
            den = den + w * u * u;
        }
        let (num, den) = (num.hsum(), den.hsum());
        if !(den > 0.0) {
            break;
        }
        d = num / den;
    }
    best
}

const SPEC_Q6: SymSpec = SymSpec {
    qlo: -32,
    qhi: 31,
    sclo: -128,
    schi: 127,
    deltas: &[-0.9, -0.45, 0.0, 0.45, 0.9],
    iters: 3,
    rounds: 2,
    wide: 8,
};
const SPEC_Q3: SymSpec = SymSpec {
    qlo: -4,
    qhi: 3,
    sclo: -32,
    schi: 31,
    deltas: &[-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5],
    iters: 3,
    rounds: 3,
    wide: 1,
};

fn q6_k(x: &[f32; QK_K], w: &[f32; QK_K], out: &mut Vec<u8>) {
    let b = sym_superblock(x, w, &SPEC_Q6);
    let mut u = [0u8; QK_K];
    for (u, &c) in u.iter_mut().zip(&b.q) {
        *u = (c as i32 + 32) as u8;
    }
    let mut ql = [0u8; 128];
    let mut qh = [0u8; 64];
    for (e, &v) in u.iter().enumerate() {
        let (n, r) = (e / 128, e % 128);
        let (g, l) = (r / 32, r % 32);
        ql[64 * n + l + 32 * (g & 1)] |= (v & 0x0F) << (4 * (g / 2));
        qh[32 * n + l] |= ((v >> 4) & 3) << (2 * g);
    }
    out.extend_from_slice(&ql);
    out.extend_from_slice(&qh);
    out.extend(b.sc.iter().map(|&s| s as u8));
    out.extend_from_slice(&b.d.to_le_bytes());
}

fn q3_k(x: &[f32; QK_K], w: &[f32; QK_K], out: &mut Vec<u8>) {
    let b = sym_superblock(x, w, &SPEC_Q3);
    let mut u = [0u8; QK_K];
    for (u, &c) in u.iter_mut().zip(&b.q) {
        *u = (c as i32 + 4) as u8;
    }
    let mut hmask = [0u8; 32];
    for (e, &v) in u.iter().enumerate() {
        hmask[e % 32] |= ((v >> 2) & 1) << (e / 32);
    }
    let low = {
        let mut l = [0u8; QK_K];
        for (l, &v) in l.iter_mut().zip(&u) {
            *l = v & 3;
        }
        pack_2bit(&l)
    };
    let mut scales = [0u8; 12];
    for (j, &sc) in b.sc.iter().enumerate() {
        let v = (sc as i32 + 32) as u8 & 63;
        if j < 8 {
            scales[j] |= v & 0x0F;
        } else {
            scales[j - 8] |= (v & 0x0F) << 4;
        }
        scales[8 + j % 4] |= (v >> 4) << (2 * (j / 4));
    }
    out.extend_from_slice(&hmask);
    out.extend_from_slice(&low);
    out.extend_from_slice(&scales);
    out.extend_from_slice(&b.d.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::super::search::{best_level, Level, FORCE_LEVEL};
    use super::*;

    /// Every vector width gives the same bytes (the batched kernels keep
    /// each candidate's operations and their order).
    #[test]
    fn same_bytes_at_every_simd_level() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        };
        let mut x: Vec<f32> = (0..QK_K * 8).map(|_| next()).collect();
        x[5] = f32::NAN;
        x[300] = f32::INFINITY;
        x[600] *= 1e6;
        x[1024..1280].fill(0.0);
        let imp: Vec<f32> = (0..x.len()).map(|_| next().abs() * 10.0).collect();
        for ty in [
            GgmlType::Q2K,
            GgmlType::Q3K,
            GgmlType::Q4K,
            GgmlType::Q5K,
            GgmlType::Q6K,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
        ] {
            for importance in [None, Some(&imp[..])] {
                let outs: Vec<Vec<u8>> = [Level::F4, Level::F8, Level::F16]
                    .into_iter()
                    .map(|l| {
                        FORCE_LEVEL.with(|f| f.set(Some(l)));
                        let mut out = Vec::new();
                        crate::ggml_quant::quantize_row(ty, &x, importance, &mut out).unwrap();
                        out
                    })
                    .collect();
                FORCE_LEVEL.with(|f| f.set(None));
                assert!(
                    outs.iter().all(|o| o == &outs[0]),
                    "{ty} (best {:?})",
                    best_level()
                );
            }
        }
    }

    #[test]
    fn neighbours_are_floor_and_ceil() {
        assert_eq!(neighbours(3.4, 0, 63), [3, 4]);
        assert_eq!(neighbours(63.9, 0, 63), [63, 63]);
        assert_eq!(neighbours(-0.3, 0, 63), [0, 1]);
        assert_eq!(neighbours(-3.4, -32, 31), [-4, -3]);
        assert_eq!(neighbours(-40.0, -32, 31), [-32, -31]);
        assert_eq!(neighbours(f32::NAN, -32, 31), [-32, -31]);
    }
}
