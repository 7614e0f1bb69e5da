//! F32, F16 and BF16 "encoders": little-endian values, the half-precision
//! ones rounded to nearest, ties to even (NaN stays a quiet NaN).

use half::{bf16, f16};

pub(super) fn encode_f32(src: &[f32], out: &mut Vec<u8>) {
    src.iter()
        .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
}

pub(super) fn encode_f16(src: &[f32], out: &mut Vec<u8>) {
    src.iter()
        .for_each(|&v| out.extend_from_slice(&f16::from_f32(v).to_le_bytes()));
}

pub(super) fn encode_bf16(src: &[f32], out: &mut Vec<u8>) {
    src.iter()
        .for_each(|&v| out.extend_from_slice(&bf16::from_f32(v).to_le_bytes()));
}
