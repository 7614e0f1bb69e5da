//! Block decoders for every ggml type edgec reads and writes.
//!
//! Written from the block layouts (ggml-common.h's `block_*` structs) and
//! evaluated in the same order of f32 operations as ggml's and gguf-py's
//! dequantizers, so the decoded values are bit-identical to theirs. Every
//! offset is a constant inside a block of fixed size: no input can make a
//! decoder index out of bounds, and NaN or infinite scales simply decode.

use half::{bf16, f16};

use super::GgmlType;
use crate::{Error, Result};

/// The IQ4_NL / IQ4_XS non-linear 4-bit codebook (ggml's `kvalues_iq4nl`).
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// Decodes `src` (whole blocks of type `ty`) into `out`, which must hold
/// exactly the number of elements those blocks encode.
pub fn dequantize(ty: GgmlType, src: &[u8], out: &mut [f32]) -> Result<()> {
    let want = ty.row_bytes(out.len())?;
    if src.len() != want {
        return Err(Error::Data(format!(
            "{ty}: {} elements need {want} bytes, got {}",
            out.len(),
            src.len()
        )));
    }
    match ty {
        GgmlType::F32 => blocks::<4, 1>(src, out, |b, o| o[0] = f32::from_le_bytes(*b)),
        GgmlType::F16 => blocks::<2, 1>(src, out, |b, o| o[0] = f16::from_le_bytes(*b).to_f32()),
        GgmlType::Bf16 => blocks::<2, 1>(src, out, |b, o| o[0] = bf16::from_le_bytes(*b).to_f32()),
        GgmlType::Q4_0 => blocks::<18, 32>(src, out, q4_0),
        GgmlType::Q4_1 => blocks::<20, 32>(src, out, q4_1),
        GgmlType::Q5_0 => blocks::<22, 32>(src, out, q5_0),
        GgmlType::Q5_1 => blocks::<24, 32>(src, out, q5_1),
        GgmlType::Q8_0 => blocks::<34, 32>(src, out, q8_0),
        GgmlType::Q2K => blocks::<84, 256>(src, out, q2_k),
        GgmlType::Q3K => blocks::<110, 256>(src, out, q3_k),
        GgmlType::Q4K => blocks::<144, 256>(src, out, q4_k),
        GgmlType::Q5K => blocks::<176, 256>(src, out, q5_k),
        GgmlType::Q6K => blocks::<210, 256>(src, out, q6_k),
        GgmlType::Iq4Nl => blocks::<18, 32>(src, out, iq4_nl),
    }
    Ok(())
}

/// Runs `f` over every (block bytes, block elements) pair. The lengths were
/// checked by the caller; `TS`/`BS` are the type's block geometry.
fn blocks<const TS: usize, const BS: usize>(
    src: &[u8],
    out: &mut [f32],
    f: impl Fn(&[u8; TS], &mut [f32; BS]),
) {
    for (b, o) in src.chunks_exact(TS).zip(out.chunks_exact_mut(BS)) {
        if let (Ok(b), Ok(o)) = (<&[u8; TS]>::try_from(b), <&mut [f32; BS]>::try_from(o)) {
            f(b, o);
        }
    }
}

#[inline]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Sub-block scale and min `j` (0..8) of a Q4_K/Q5_K block's 12 packed bytes:
/// 6 bits each; the first four live in the low 6 bits of bytes 0..4 (scales)
/// and 4..8 (mins), the last four in the nibbles of bytes 8..12 with their top
/// two bits in the top bits of bytes 0..8.
#[inline]
pub fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The 16 signed 6-bit scales of a Q3_K block (already minus 32).
#[inline]
pub fn scales_q3_k(s: &[u8; 12]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let lo = if j < 8 { s[j] & 0x0F } else { s[j - 8] >> 4 };
        let hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = ((lo | (hi << 4)) as i8) - 32;
    }
    out
}

fn q4_0(b: &[u8; 18], o: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        let q = b[2 + j];
        o[j] = d * ((q & 0x0F) as i32 - 8) as f32;
        o[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
    }
}

fn q4_1(b: &[u8; 20], o: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    for j in 0..16 {
        let q = b[4 + j];
        o[j] = d * (q & 0x0F) as f32 + m;
        o[j + 16] = d * (q >> 4) as f32 + m;
    }
}

fn q5_0(b: &[u8; 22], o: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        let q = b[6 + j];
        let h0 = ((qh >> j) & 1) as i32;
        let h1 = ((qh >> (j + 16)) & 1) as i32;
        o[j] = d * (((q & 0x0F) as i32 | (h0 << 4)) - 16) as f32;
        o[j + 16] = d * (((q >> 4) as i32 | (h1 << 4)) - 16) as f32;
    }
}

fn q5_1(b: &[u8; 24], o: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for j in 0..16 {
        let q = b[8 + j];
        let h0 = ((qh >> j) & 1) as u8;
        let h1 = ((qh >> (j + 16)) & 1) as u8;
        o[j] = d * ((q & 0x0F) | (h0 << 4)) as f32 + m;
        o[j + 16] = d * ((q >> 4) | (h1 << 4)) as f32 + m;
    }
}

fn q8_0(b: &[u8; 34], o: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for j in 0..32 {
        o[j] = (b[2 + j] as i8) as f32 * d;
    }
}

// block_q2_K: scales[16] (low nibble scale, high nibble min), qs[64], d, dmin.
fn q2_k(b: &[u8; 84], o: &mut [f32; 256]) {
    let d = f16_at(b, 80);
    let dmin = f16_at(b, 82);
    let qs = &b[16..80];
    for (e, y) in o.iter_mut().enumerate() {
        let sc = b[e / 16];
        let dl = d * (sc & 0x0F) as f32;
        let ml = dmin * (sc >> 4) as f32;
        let q = (qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
        *y = dl * q as f32 - ml;
    }
}

// block_q3_K: hmask[32], qs[64], scales[12], d.
fn q3_k(b: &[u8; 110], o: &mut [f32; 256]) {
    let d = f16_at(b, 108);
    let hmask = &b[0..32];
    let qs = &b[32..96];
    let mut packed = [0u8; 12];
    packed.copy_from_slice(&b[96..108]);
    let scales = scales_q3_k(&packed);
    for (e, y) in o.iter_mut().enumerate() {
        let dl = d * scales[e / 16] as f32;
        let low = ((qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3) as i8;
        let high = (hmask[e % 32] >> (e / 32)) & 1;
        let q = low - if high != 0 { 0 } else { 4 };
        *y = dl * q as f32;
    }
}

// block_q4_K: d, dmin, scales[12], qs[128].
fn q4_k(b: &[u8; 144], o: &mut [f32; 256]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let mut packed = [0u8; 12];
    packed.copy_from_slice(&b[4..16]);
    let qs = &b[16..144];
    for (j, ys) in o.chunks_exact_mut(32).enumerate() {
        let (sc, m) = scale_min_k4(j, &packed);
        let dl = d * sc as f32;
        let ml = dmin * m as f32;
        let q = &qs[32 * (j / 2)..32 * (j / 2) + 32];
        let shift = 4 * (j % 2);
        for (y, &q) in ys.iter_mut().zip(q) {
            *y = dl * ((q >> shift) & 0x0F) as f32 - ml;
        }
    }
}

// block_q5_K: d, dmin, scales[12], qh[32], qs[128].
fn q5_k(b: &[u8; 176], o: &mut [f32; 256]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let mut packed = [0u8; 12];
    packed.copy_from_slice(&b[4..16]);
    let qh = &b[16..48];
    let qs = &b[48..176];
    for (j, ys) in o.chunks_exact_mut(32).enumerate() {
        let (sc, m) = scale_min_k4(j, &packed);
        let dl = d * sc as f32;
        let ml = dmin * m as f32;
        let q = &qs[32 * (j / 2)..32 * (j / 2) + 32];
        let shift = 4 * (j % 2);
        for ((y, &q), &h) in ys.iter_mut().zip(q).zip(qh) {
            let v = ((q >> shift) & 0x0F) | (((h >> j) & 1) << 4);
            *y = dl * v as f32 - ml;
        }
    }
}

// block_q6_K: ql[128], qh[64], scales[16] (int8), d.
fn q6_k(b: &[u8; 210], o: &mut [f32; 256]) {
    let d = f16_at(b, 208);
    let ql = &b[0..128];
    let qh = &b[128..192];
    let scales = &b[192..208];
    for (e, y) in o.iter_mut().enumerate() {
        let n = e / 128;
        let r = e % 128;
        let l = r % 32;
        let g = r / 32;
        let lo = (ql[64 * n + l + 32 * (g & 1)] >> (4 * (g / 2))) & 0x0F;
        let hi = (qh[32 * n + l] >> (2 * g)) & 3;
        let q = (lo | (hi << 4)) as i8 - 32;
        let dl = d * (scales[e / 16] as i8) as f32;
        *y = dl * q as f32;
    }
}

fn iq4_nl(b: &[u8; 18], o: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        let q = b[2 + j];
        o[j] = d * KVALUES_IQ4NL[(q & 0x0F) as usize] as f32;
        o[j + 16] = d * KVALUES_IQ4NL[(q >> 4) as usize] as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny deterministic byte stream (splitmix64).
    fn bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = s;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                (z ^ (z >> 31)) as u8
            })
            .collect()
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        for ty in GgmlType::ALL {
            for blocks in [0usize, 1, 3] {
                let n = blocks * ty.block_size().max(32);
                let nbytes = ty.row_bytes(n).unwrap();
                for seed in 0..20 {
                    let src = bytes(seed, nbytes);
                    let mut out = vec![0f32; n];
                    dequantize(ty, &src, &mut out).unwrap();
                }
                // All-ones bytes: NaN scales everywhere.
                let src = vec![0xFFu8; nbytes];
                let mut out = vec![0f32; n];
                dequantize(ty, &src, &mut out).unwrap();
            }
        }
    }

    #[test]
    fn wrong_lengths_are_errors() {
        for ty in GgmlType::ALL {
            let n = ty.block_size().max(32);
            let nbytes = ty.row_bytes(n).unwrap();
            let mut out = vec![0f32; n];
            assert!(dequantize(ty, &vec![0u8; nbytes + 1], &mut out).is_err());
            assert!(dequantize(ty, &vec![0u8; nbytes - 1], &mut out).is_err());
            if ty.block_size() > 1 {
                let mut odd = vec![0f32; n + 1];
                assert!(dequantize(ty, &vec![0u8; nbytes], &mut odd).is_err());
            }
        }
    }

    #[test]
    fn scale_min_packing_matches_layout() {
        // Pack 8 six-bit (scale, min) pairs the way ggml does and read them back.
        let pairs: Vec<(u8, u8)> = (0..8)
            .map(|j| ((7 * j + 5) % 64, (11 * j + 60) % 64))
            .collect();
        let mut q = [0u8; 12];
        for (j, &(ls, lm)) in pairs.iter().enumerate() {
            if j < 4 {
                q[j] = ls;
                q[j + 4] = lm;
            } else {
                q[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
                q[j - 4] |= (ls >> 4) << 6;
                q[j] |= (lm >> 4) << 6;
            }
        }
        for (j, &p) in pairs.iter().enumerate() {
            assert_eq!(scale_min_k4(j, &q), p);
        }
    }

    #[test]
    fn q8_0_and_q4_0_known_values() {
        // d = 0.5 (f16 0x3800), codes 0..32 as int8.
        let mut b = vec![0x00, 0x38];
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let mut out = [0f32; 32];
        dequantize(GgmlType::Q8_0, &b, &mut out).unwrap();
        for (i, v) in out.iter().enumerate() {
            assert_eq!(*v, (i as f32 - 16.0) * 0.5);
        }
        // Q4_0: d = 1, qs[j] = j | (15 - j) << 4.
        let mut b = vec![0x00, 0x3C];
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut out = [0f32; 32];
        dequantize(GgmlType::Q4_0, &b, &mut out).unwrap();
        for j in 0..16 {
            assert_eq!(out[j], j as f32 - 8.0);
            assert_eq!(out[j + 16], 7.0 - j as f32);
        }
    }
}
