//! The 32-element legacy blocks: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.
//!
//! Without importance, these are the reference quantizers (ggml's
//! `quantize_row_*_ref`, gguf-py's `quants.py`), reproduced bit for bit: the
//! scale from the block's extreme value, codes by truncating `x/d + offset`
//! (Q8_0: rounding half away from zero), scales rounded to f16 after use.
//! With importance, a weighted least-squares scale search takes over.

use edgec_core::GgmlType;

use super::block_weights;
use super::search::{affine_search, nearest_int, sym_assign, sym_search, to_f16, AffineGrid};

const QK: usize = 32;

pub(super) fn encode(ty: GgmlType, src: &[f32], importance: Option<&[f32]>, out: &mut Vec<u8>) {
    for (bi, x) in src.chunks_exact(QK).enumerate() {
        let Ok(x) = <&[f32; QK]>::try_from(x) else {
            continue;
        };
        match importance {
            None => match ty {
                GgmlType::Q4_0 => q4_0_ref(x, out),
                GgmlType::Q4_1 => q4_1_ref(x, out),
                GgmlType::Q5_0 => q5_0_ref(x, out),
                GgmlType::Q5_1 => q5_1_ref(x, out),
                _ => q8_0_ref(x, out),
            },
            Some(imp) => {
                let mut w = [0f32; QK];
                block_weights(imp.get(bi * QK..(bi + 1) * QK), &mut w);
                match ty {
                    GgmlType::Q4_0 => sym_weighted(x, &w, 4, out),
                    GgmlType::Q5_0 => sym_weighted(x, &w, 5, out),
                    GgmlType::Q8_0 => sym_weighted(x, &w, 8, out),
                    GgmlType::Q4_1 => affine_weighted(x, &w, 4, out),
                    _ => affine_weighted(x, &w, 5, out),
                }
            }
        }
    }
}

/// The first value of largest magnitude (the reference's `max`).
fn signed_max(x: &[f32; QK]) -> f32 {
    super::search::signed_absmax(x).0
}

fn min_max(x: &[f32; QK]) -> (f32, f32) {
    let mut mn = f32::MAX;
    let mut mx = -f32::MAX;
    for &v in x {
        if v < mn {
            mn = v;
        }
        if v > mx {
            mx = v;
        }
    }
    (mn, mx)
}

fn push_f16(out: &mut Vec<u8>, v: f32) {
    out.extend_from_slice(&to_f16(v).0.to_le_bytes());
}

/// Packs 32 codes of up to 4 bits: element j in the low nibble of byte j,
/// element j+16 in the high nibble.
fn push_nibbles(out: &mut Vec<u8>, q: &[u8; QK]) {
    let mut b = [0u8; QK / 2];
    for (j, b) in b.iter_mut().enumerate() {
        *b = (q[j] & 0x0F) | ((q[j + QK / 2] & 0x0F) << 4);
    }
    out.extend_from_slice(&b);
}

/// The fifth bits of 32 codes, element j at bit j of a little-endian u32.
fn push_high_bits(out: &mut Vec<u8>, q: &[u8; QK]) {
    let mut qh = 0u32;
    for (j, &q) in q.iter().enumerate() {
        qh |= (((q >> 4) & 1) as u32) << j;
    }
    out.extend_from_slice(&qh.to_le_bytes());
}

/// Symmetric reference: `d = max / -half`, codes `trunc(x/d + half + 0.5)`.
fn sym_ref(x: &[f32; QK], half: f32, top: i32) -> (f32, [u8; QK]) {
    let d = signed_max(x) / -half;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [0u8; QK];
    for (q, &v) in q.iter_mut().zip(x) {
        // `as` truncates toward zero and saturates (NaN -> 0), as the C cast does in range.
        *q = ((v * id + (half + 0.5)) as i32).clamp(0, top) as u8;
    }
    (d, q)
}

fn q4_0_ref(x: &[f32; QK], out: &mut Vec<u8>) {
    let (d, q) = sym_ref(x, 8.0, 15);
    push_f16(out, d);
    push_nibbles(out, &q);
}

fn q5_0_ref(x: &[f32; QK], out: &mut Vec<u8>) {
    let (d, q) = sym_ref(x, 16.0, 31);
    push_f16(out, d);
    push_high_bits(out, &q);
    push_nibbles(out, &q);
}

/// Affine reference: `d = (max − min) / top`, `m = min`, codes
/// `trunc((x − min)/d + 0.5)`.
fn affine_ref(x: &[f32; QK], top: i32) -> (f32, f32, [u8; QK]) {
    let (mn, mx) = min_max(x);
    let d = (mx - mn) / top as f32;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [0u8; QK];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (((v - mn) * id + 0.5) as i32).clamp(0, top) as u8;
    }
    (d, mn, q)
}

fn q4_1_ref(x: &[f32; QK], out: &mut Vec<u8>) {
    let (d, m, q) = affine_ref(x, 15);
    push_f16(out, d);
    push_f16(out, m);
    push_nibbles(out, &q);
}

fn q5_1_ref(x: &[f32; QK], out: &mut Vec<u8>) {
    let (d, m, q) = affine_ref(x, 31);
    push_f16(out, d);
    push_f16(out, m);
    push_high_bits(out, &q);
    push_nibbles(out, &q);
}

/// `roundf`: nearest, halves away from zero (exact for |v| < 2^23).
#[cfg(test)]
fn round_away(v: f32) -> i32 {
    let t = v as i32; // truncates toward zero, saturating
    let frac = v - t as f32;
    if frac >= 0.5 {
        t.saturating_add(1)
    } else if frac <= -0.5 {
        t.saturating_sub(1)
    } else {
        t
    }
}

fn q8_0_ref(x: &[f32; QK], out: &mut Vec<u8>) {
    let amax = x
        .iter()
        .fold(0f32, |a, v| if v.abs() > a { v.abs() } else { a });
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    push_f16(out, d);
    let mut q = [0u8; QK];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = round_away_i8(v * id) as u8;
    }
    out.extend_from_slice(&q);
}

/// `round_away(v).clamp(-128, 127)`, branch-free so that it vectorises:
/// the truncation is clamped to ±256 first (beyond which the result is
/// clamped anyway), so the ±1 cannot overflow.
#[inline(always)]
fn round_away_i8(v: f32) -> i8 {
    let t = (v as i32).clamp(-256, 256); // truncates toward zero, NaN -> 0
    let frac = v - t as f32;
    let r = t + (frac >= 0.5) as i32 - (frac <= -0.5) as i32;
    r.clamp(-128, 127) as i8
}

/// Importance-weighted symmetric block (Q4_0, Q5_0, Q8_0).
fn sym_weighted(x: &[f32; QK], w: &[f32; QK], bits: u32, out: &mut Vec<u8>) {
    let qlo = -(1i32 << (bits - 1));
    let qhi = (1i32 << (bits - 1)) - 1;
    const DELTAS: [f32; 11] = [-0.5, -0.4, -0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5];
    let mut codes = [0i8; QK];
    let s = sym_search(x, w, qlo, qhi, &DELTAS, 4, &mut codes);
    let (bits16, codes) = finalize_sym(x, w, s, qlo, qhi);
    out.extend_from_slice(&bits16.to_le_bytes());
    match bits {
        8 => out.extend(codes.iter().map(|&c| c as u8)),
        _ => {
            let mut u = [0u8; QK];
            for (u, &c) in u.iter_mut().zip(&codes) {
                *u = (c as i32 - qlo) as u8;
            }
            if bits == 5 {
                push_high_bits(out, &u);
            }
            push_nibbles(out, &u);
        }
    }
}

/// Chooses the f16 scale near `s` (re-fitting after each rounding) and the
/// codes for it, by the weighted error the decoder will actually see.
fn finalize_sym(x: &[f32; QK], w: &[f32; QK], s: f32, qlo: i32, qhi: i32) -> (u16, [i8; QK]) {
    let mut best: Option<(u16, f32, [i8; QK])> = None;
    let mut s = s;
    for _ in 0..3 {
        let (bits, v) = to_f16(s);
        if best.as_ref().is_some_and(|b| b.0 == bits) {
            break;
        }
        let mut codes = [0i8; QK];
        let err = sym_assign(x, w, v, qlo, qhi, &mut codes);
        if best.as_ref().is_some_and(|b| !(err < b.1)) {
            break;
        }
        best = Some((bits, err, codes));
        let (mut sxl, mut sll) = (0f32, 0f32);
        for ((&x, &w), &c) in x.iter().zip(w).zip(&codes) {
            sxl += w * x * c as f32;
            sll += w * c as f32 * c as f32;
        }
        if !(sll > 0.0) {
            break;
        }
        s = sxl / sll;
    }
    best.map_or((0, [0; QK]), |b| (b.0, b.2))
}

/// Importance-weighted affine block (Q4_1, Q5_1): `y = d·q + m`, m free.
fn affine_weighted(x: &[f32; QK], w: &[f32; QK], bits: u32, out: &mut Vec<u8>) {
    let top = ((1u32 << bits) - 1) as u8;
    let grid = AffineGrid {
        rmin: -1.0,
        rdelta: 0.1,
        nstep: 20,
        iters: 4,
    };
    let mut codes = [0u8; QK];
    let (s, m) = affine_search(x, w, top, false, grid, &mut codes);
    // Round (s, m) to f16, re-round the codes, re-fit; keep the best.
    let topf = top as f32;
    let mut best: Option<(u16, u16, f32, [u8; QK])> = None;
    let (mut s, mut m) = (s, m);
    for _ in 0..3 {
        let (db, dv) = to_f16(s);
        let (mb, mv) = to_f16(m);
        if best.as_ref().is_some_and(|b| b.0 == db && b.1 == mb) {
            break;
        }
        let id = if dv != 0.0 { 1.0 / dv } else { 0.0 };
        let mut q = [0u8; QK];
        let mut err = 0f32;
        let (mut sw, mut sx, mut sl, mut sll, mut sxl) = (0f32, 0f32, 0f32, 0f32, 0f32);
        for ((q, &x), &w) in q.iter_mut().zip(x).zip(w) {
            let l = nearest_int(((x - mv) * id).max(0.0).min(topf));
            *q = l as u8;
            let lf = l as f32;
            let e = dv * lf + mv - x;
            err += w * e * e;
            sw += w;
            sx += w * x;
            sl += w * lf;
            sll += w * lf * lf;
            sxl += w * lf * x;
        }
        if best.as_ref().is_some_and(|b| !(err < b.2)) {
            break;
        }
        best = Some((db, mb, err, q));
        let det = sw * sll - sl * sl;
        if !(det > 0.0) {
            break;
        }
        s = (sw * sxl - sx * sl) / det;
        m = (sll * sx - sl * sxl) / det;
    }
    let (db, mb, _, q) = best.unwrap_or((0, 0, 0.0, [0u8; QK]));
    out.extend_from_slice(&db.to_le_bytes());
    out.extend_from_slice(&mb.to_le_bytes());
    if bits == 5 {
        push_high_bits(out, &q);
    }
    push_nibbles(out, &q);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_away_matches_roundf() {
        for v in [
            0.5f32,
            -0.5,
            1.5,
            -1.5,
            2.5,
            0.49999997,
            -0.49999997,
            126.5,
            -127.0,
            3.2,
            -3.7,
        ] {
            assert_eq!(round_away(v), v.round() as i32, "{v}");
        }
        for v in [
            0.5f32,
            -0.5,
            127.49998,
            127.5,
            -128.5,
            -128.49998,
            300.7,
            -1e20,
            1e20,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            3.2,
            -3.7,
        ] {
            assert_eq!(
                round_away_i8(v) as i32,
                round_away(v).clamp(-128, 127),
                "{v}"
            );
        }
    }

    #[test]
    fn zero_block_is_zero() {
        let x = [0f32; QK];
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
        ] {
            for imp in [None, Some(&[1f32; QK][..])] {
                let mut out = Vec::new();
                encode(ty, &x, imp, &mut out);
                assert_eq!(out.len(), ty.type_size());
                // The reference computes d = 0 / −8 = −0.0 for Q4_0/Q5_0: still zero.
                let d = half::f16::from_le_bytes([out[0], out[1]]).to_f32();
                assert_eq!(d, 0.0, "{ty}");
                let mut y = [1f32; QK];
                edgec_core::ggml::dequant::dequantize(ty, &out, &mut y).unwrap();
                assert!(y.iter().all(|&v| v == 0.0), "{ty}");
            }
        }
    }
}
