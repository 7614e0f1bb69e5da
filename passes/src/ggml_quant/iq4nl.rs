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
    let h = (2.0 * v + 512.0).clamp(0.0, 1023.0) as usize; // NaN -> 0
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

fn quantize_block(x: &[f32; QK], w: &[f32; QK]) -> (u16, [u8; QK]) {
    let (max, amax) = signed_absmax(x);
    if amax < 1e-15 {
        // ggml writes d = 0 and the index of the value nearest 0.
        return (0, [best_index(0.0) as u8; QK]);
    }
    let (lo, hi) = (KV[0] as f32, KV[15] as f32);
    let (mut bqx, mut bqq) = (0f32, 0f32);
    let better = |id: f32, bqx: &mut f32, bqq: &mut f32| {
        let (sqx, sqq) = stats(x, w, id);
        if sqq > 0.0 && (*bqq == 0.0 || sqx * sqx * *bqq > *bqx * *bqx * sqq) {
            (*bqx, *bqq) = (sqx, sqq);
            true
        } else {
            false
        }
    };
    for t in -NTRY..=NTRY {
        let off = TSTEP * t as f32;
        better((lo + off) / max, &mut bqx, &mut bqq);
        better((hi + off) / max, &mut bqx, &mut bqq);
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
}
