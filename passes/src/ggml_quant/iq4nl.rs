//! IQ4_NL: blocks of 32, an f16 scale and 4-bit indices into the non-linear
//! codebook `kvalues_iq4nl` (decode `d·kvalues[q]`).
//!
//! The scale search scans inverse scales that put the largest-magnitude value
//! near either end of the (asymmetric) codebook, least-squares fits the
//! scale for each candidate's indices, refines the best by re-assigning and
//! re-fitting, and finally picks the f16 scale and indices by the error the
//! decoder will see. llama.cpp's reference scans one end only and assigns the
//! final indices for the unrounded scale.

use edgec_core::ggml::dequant::KVALUES_IQ4NL as KV;

use super::block_weights;
use super::search::{signed_absmax, to_f16};

const QK: usize = 32;

/// Candidate inverse scales put the largest-magnitude value at each end of
/// the codebook, offset by `TSTEP·t` codebook units for t in −NTRY..=NTRY
/// (llama.cpp: one end, steps of 1, NTRY 7). Tuned by measurement.
const NTRY: i32 = 5;
const TSTEP: f32 = 1.4;

/// `LUT[h]`: index of the codebook value nearest to any v with
/// floor(2v) = h − 512 (every midpoint between neighbours is a multiple of ½;
/// a value exactly on a midpoint goes to the upper neighbour).
const LUT: [u8; 1024] = build_lut();

const fn build_lut() -> [u8; 1024] {
    let mut lut = [0u8; 1024];
    let mut h = 0;
    while h < 1024 {
        let v2 = h as i32 - 512;
        let mut c = 0u8;
        let mut k = 0;
        while k < 15 {
            if (KV[k] as i32 + KV[k + 1] as i32) <= v2 {
                c += 1;
            }
            k += 1;
        }
        lut[h] = c;
        h += 1;
    }
    lut
}

/// Index of the codebook value nearest to `v` (NaN → 0).
#[inline(always)]
pub(crate) fn best_index(v: f32) -> usize {
    let h = level_arg(v).clamp(0.0, 1023.0) as usize; // NaN -> 0
    LUT[h.min(1023)] as usize
}

pub(super) fn encode(src: &[f32], importance: Option<&[f32]>, out: &mut Vec<u8>) {
    for (bi, x) in src.chunks_exact(QK).enumerate() {
        let Ok(x) = <&[f32; QK]>::try_from(x) else {
            continue;
        };
        let mut w = [0f32; QK];
        block_weights(
            importance.and_then(|i| i.get(bi * QK..(bi + 1) * QK)),
            &mut w,
        );
        let (d, q) = quantize_block(x, &w);
        out.extend_from_slice(&d.to_le_bytes());
        for j in 0..QK / 2 {
            out.push(q[j] | (q[j + QK / 2] << 4));
        }
    }
}

/// Σ w·q·x and Σ w·q² for the indices nearest to `id·x`.
#[inline]
fn stats(x: &[f32; QK], w: &[f32; QK], id: f32) -> (f32, f32) {
    let (mut sqx, mut sqq) = (0f32, 0f32);
    for (&x, &w) in x.iter().zip(w) {
        let q = KV[best_index(id * x)] as f32;
        sqx += w * q * x;
        sqq += w * q * q;
    }
    (sqx, sqq)
}

/// Candidates of the first scan: both ends of the codebook, 2·NTRY + 1
/// offsets each.
const SCAN: usize = 2 * (2 * NTRY as usize + 1);
/// [`SCAN`] rounded up to whole 512-bit vectors (the extra lanes are unused).
const LANES: usize = SCAN.next_multiple_of(16);

/// Thresholds and steps of the codebook for [`level`]: `v` maps to index
/// `#{k : 2v + 512 ≥ MID[k]}` (what [`LUT`] holds) and `KV[0] + Σ STEP[k]` over
/// the same `k` is that index's value, exactly (small integers).
pub(crate) const MID: [f32; 15] = {
    let mut m = [0f32; 15];
    let mut k = 0;
    while k < 15 {
        m[k] = (KV[k] as i32 + KV[k + 1] as i32 + 512) as f32;
        k += 1;
    }
    m
};
pub(crate) const STEP: [f32; 15] = {
    let mut s = [0f32; 15];
    let mut k = 0;
    while k < 15 {
        s[k] = (KV[k + 1] as i32 - KV[k] as i32) as f32;
        k += 1;
    }
    s
};

/// `KV[best_index(v)]` as comparisons instead of a table look-up, so that it
/// vectorises. `h` is formed as in [`best_index`]; there `floor(clamp(h))`
/// is compared with the integer thresholds, which for every `h` (NaN
/// included: no comparison holds) counts the same as comparing `h` itself.
#[inline(always)]
fn level(v: f32) -> f32 {
    let h = level_arg(v);
    let mut q = KV[0] as f32;
    for k in 0..15 {
        q += if h >= MID[k] { STEP[k] } else { 0.0 };
    }
    q
}

/// What [`best_index`] compares with the thresholds [`MID`].
#[inline(always)]
pub(crate) fn level_arg(v: f32) -> f32 {
    2.0 * v + 512.0
}

/// [`stats`] for many inverse scales at once (lane `c`: `id[c]`), each lane
/// with the same operations in the same order as [`stats`] alone: the lanes
/// run side by side in vectors instead of one dependent sum at a time.
fn stats_lanes(x: &[f32; QK], w: &[f32; QK], id: &[f32; LANES]) -> ([f32; LANES], [f32; LANES]) {
    #[inline(always)]
    fn generic(x: &[f32; QK], w: &[f32; QK], id: &[f32; LANES]) -> ([f32; LANES], [f32; LANES]) {
        let (mut sqx, mut sqq) = ([0f32; LANES], [0f32; LANES]);
        for (&x, &w) in x.iter().zip(w) {
            for c in 0..LANES {
                let q = level(id[c] * x);
                sqx[c] += w * q * x;
                sqq[c] += w * q * q;
            }
        }
        (sqx, sqq)
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(
            x: &[f32; QK],
            w: &[f32; QK],
            id: &[f32; LANES],
        ) -> ([f32; LANES], [f32; LANES]) {
            generic(x, w, id)
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked just above.
            return unsafe { avx512(x, w, id) };
        }
    }
    generic(x, w, id)
}

fn quantize_block(x: &[f32; QK], w: &[f32; QK]) -> (u16, [u8; QK]) {
    let (max, amax) = signed_absmax(x);
    if amax < 1e-15 {
        // ggml writes d = 0 and the index of the value nearest 0.
        return (0, [best_index(0.0) as u8; QK]);
    }
    let (lo, hi) = (KV[0] as f32, KV[15] as f32);
    let (mut bqx, mut bqq) = (0f32, 0f32);
    // Takes (sqx, sqq) when its least-squares scale fits better than the
    // best so far: sqx²/sqq is the error it removes.
    let take = |sqx: f32, sqq: f32, bqx: &mut f32, bqq: &mut f32| {
        if sqq > 0.0 && (*bqq == 0.0 || sqx * sqx * *bqq > *bqx * *bqx * sqq) {
            (*bqx, *bqq) = (sqx, sqq);
            true
        } else {
            false
        }
    };
    let better = |id: f32, bqx: &mut f32, bqq: &mut f32| {
        let (sqx, sqq) = stats(x, w, id);
        take(sqx, sqq, bqx, bqq)
    };
    // The scan's candidates, evaluated together, then compared in order.
    let mut ids = [0f32; LANES];
    for (k, t) in (-NTRY..=NTRY).enumerate() {
        let off = TSTEP * t as f32;
        ids[2 * k] = (lo + off) / max;
        ids[2 * k + 1] = (hi + off) / max;
    }
    let (sqx, sqq) = stats_lanes(x, w, &ids);
    for c in 0..SCAN {
        take(sqx[c], sqq[c], &mut bqx, &mut bqq);
    }
    for _ in 0..4 {
        if bqq == 0.0 || bqx == 0.0 {
            break;
        }
        let d = bqx / bqq;
        if !better(1.0 / d, &mut bqx, &mut bqq) {
            break;
        }
    }
    if !(bqq > 0.0) {
        return (0, [best_index(0.0) as u8; QK]);
    }
    // Choose the f16 scale (re-fitting after each rounding) by the exact error.
    let mut d = bqx / bqq;
    let mut best: Option<(u16, f32, [u8; QK])> = None;
    for _ in 0..3 {
        let (db, dv) = to_f16(d);
        if best.as_ref().is_some_and(|b| b.0 == db) || !d.is_finite() {
            break;
        }
        let id = if dv != 0.0 { 1.0 / dv } else { 0.0 };
        let mut q = [0u8; QK];
        let (mut err, mut sqx, mut sqq) = (0f32, 0f32, 0f32);
        for ((q, &x), &w) in q.iter_mut().zip(x).zip(w) {
            let k = best_index(id * x);
            *q = k as u8;
            let v = KV[k] as f32;
            let e = dv * v - x;
            err += w * e * e;
            sqx += w * v * x;
            sqq += w * v * v;
        }
        if best.as_ref().is_some_and(|b| !(err < b.1)) {
            break;
        }
        best = Some((db, err, q));
        if !(sqq > 0.0) {
            break;
        }
        d = sqx / sqq;
    }
    match best {
        Some((db, _, q)) => (db, q),
        None => (0, [best_index(0.0) as u8; QK]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nearest codebook index by exhaustive search (ties to the upper).
    fn nearest(v: f32) -> usize {
        let mut best = 0;
        for (k, &kv) in KV.iter().enumerate().skip(1) {
            if (v - kv as f32).abs() <= (v - KV[best] as f32).abs() {
                best = k;
            }
        }
        best
    }

    #[test]
    fn lut_is_nearest() {
        let mut v = -140.0f32;
        while v < 130.0 {
            assert_eq!(best_index(v), nearest(v), "{v}");
            v += 0.125;
        }
        assert_eq!(best_index(f32::NAN), 0);
        assert_eq!(best_index(1e30), 15);
        assert_eq!(best_index(-1e30), 0);
    }

    #[test]
    fn level_is_the_table_value() {
        // every half step, the values just beside each threshold and the
        // edge cases
        let mut vs = vec![
            f32::NAN,
            f32::INFINITY,
            -f32::INFINITY,
            1e30,
            -1e30,
            0.0,
            -0.0,
        ];
        let mut v = -300.0f32;
        while v < 300.0 {
            vs.extend([v, v.next_up(), v.next_down()]);
            v += 0.5;
        }
        for v in vs {
            assert_eq!(level(v), KV[best_index(v)] as f32, "{v}");
        }
    }

    #[test]
    fn lanes_give_the_single_stats() {
        let mut s = 1u32;
        let mut rnd = || {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for _ in 0..50 {
            let x: [f32; QK] = std::array::from_fn(|_| rnd());
            let w: [f32; QK] = std::array::from_fn(|_| rnd() + 0.5);
            let id: [f32; LANES] = std::array::from_fn(|_| 300.0 * rnd());
            let (sqx, sqq) = stats_lanes(&x, &w, &id);
            for c in 0..LANES {
                let (a, b) = stats(&x, &w, id[c]);
                assert_eq!(
                    (sqx[c].to_bits(), sqq[c].to_bits()),
                    (a.to_bits(), b.to_bits())
                );
            }
        }
    }
}
