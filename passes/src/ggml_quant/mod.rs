//! Encoders for ggml block types: the legacy 32-element blocks, the k-quants,
//! IQ4_NL and the dense float types.
//!
//! Written from the format facts (ggml's block layouts) and the published
//! algorithms. Without importance weights, Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 reproduce
//! gguf-py's (and ggml's) reference quantizers bit for bit; the k-quants and
//! IQ4_NL search their scales harder than llama.cpp's reference quantizers
//! and reach a lower squared error. Every encoder is a pure function of its
//! input (no thread-count dependence) and never panics, whatever the floats.

// `!(x > 0.0)` is meant throughout: it is also true for NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

mod float;
pub(crate) mod iq4nl;
mod kquants;
mod legacy;
mod search;
mod simd;

use edgec_core::GgmlType;

/// Why a row could not be quantized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    #[error("{ty}: a row of {len} elements is not a whole number of {block}-element blocks")]
    RowLength {
        ty: GgmlType,
        len: usize,
        block: usize,
    },
    #[error("importance has {got} values for a row of {want} elements")]
    ImportanceLength { want: usize, got: usize },
}

/// Quantizes one row (`src.len()` a multiple of `ty.block_size()`), appending
/// `ty.row_bytes(src.len())` bytes to `out`.
///
/// `importance`: optional per-element weights (same length as `src`; e.g. Σx²
/// of the activations per input column) that the scale searches minimise the
/// weighted squared error under. `None` minimises the plain squared error, and
/// for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 gives exactly the reference quantizers' bytes.
/// Negative, NaN or infinite importances count as 0; a block whose weights are
/// all 0 is quantized unweighted. F32/F16/BF16 ignore `importance`.
pub fn quantize_row(
    ty: GgmlType,
    src: &[f32],
    importance: Option<&[f32]>,
    out: &mut Vec<u8>,
) -> Result<(), QuantError> {
    let block = ty.block_size();
    if !src.len().is_multiple_of(block) {
        return Err(QuantError::RowLength {
            ty,
            len: src.len(),
            block,
        });
    }
    if let Some(imp) = importance {
        if imp.len() != src.len() {
            return Err(QuantError::ImportanceLength {
                want: src.len(),
                got: imp.len(),
            });
        }
    }
    out.reserve(src.len() / block * ty.type_size());
    match ty {
        GgmlType::F32 => float::encode_f32(src, out),
        GgmlType::F16 => float::encode_f16(src, out),
        GgmlType::Bf16 => float::encode_bf16(src, out),
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => {
            legacy::encode(ty, src, importance, out)
        }
        GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => {
            kquants::encode(ty, src, importance, out)
        }
        GgmlType::Iq4Nl => iq4nl::encode(src, importance, out),
    }
    Ok(())
}

/// What `ty` keeps of `src`: quantized (as [`quantize_row`]) and decoded
/// again into `out` (`src.len()` values), for measuring errors.
pub fn round_trip(
    ty: GgmlType,
    src: &[f32],
    importance: Option<&[f32]>,
    out: &mut [f32],
) -> Result<(), QuantError> {
    let mut bytes = Vec::new();
    quantize_row(ty, src, importance, &mut bytes)?;
    edgec_core::ggml::dequant::dequantize(ty, &bytes, out)
        .expect("an encoder's own bytes decode to its row length");
    Ok(())
}

/// Per-element weights for one block: the sanitised importance scaled to a
/// largest weight of 1 (the same minimiser, and no overflow in the sums), or
/// all ones when there is none (or when the block's importance is all zero).
pub(crate) fn block_weights<const N: usize>(importance: Option<&[f32]>, w: &mut [f32; N]) {
    match importance {
        Some(imp) if imp.len() == N => {
            let mut max = 0f32;
            for (w, &v) in w.iter_mut().zip(imp) {
                *w = if v.is_finite() && v > 0.0 { v } else { 0.0 };
                max = max.max(*w);
            }
            if max > 0.0 {
                let inv = 1.0 / max;
                if inv.is_finite() {
                    w.iter_mut().for_each(|w| *w *= inv);
                }
            } else {
                w.fill(1.0);
            }
        }
        _ => w.fill(1.0),
    }
}
