//! The shared building blocks of both families, written only with candle ops
//! that have backward passes (no `softmax_last_dim`, `ops::rms_norm`,
//! `ops::layer_norm` nor the rotary kernels), so gradients flow through them.
//! RMSNorm and the rotary step are fused ops in `fused.rs`.

use candle_core::{Device, Result, Tensor, D};

/// LayerNorm over the last dimension with the biased variance (PyTorch's).
pub(crate) fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (var + eps)?.sqrt()?.recip()?;
    xc.broadcast_mul(&inv)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}

/// Softmax over the last dimension from max, exp, sum and div
/// (`candle_nn::ops::softmax`, which has a backward pass).
pub(crate) fn softmax(x: &Tensor) -> Result<Tensor> {
    candle_nn::ops::softmax(x, D::Minus1)
}

/// The rotary tables for positions `0..seq` and `heads` heads of `head_dim`,
/// in the token-major layout `[seq, heads·head_dim]`, both multiplied by
/// `scale`: `cos` is `cos(p·f)` over both halves of each head, `sin` is
/// `sin(p·f)` with the first half negated, so that
/// `rope(x) = x·cos + swap_halves(x)·sin` is Hugging Face's
/// `x·cos + rotate_half(x)·sin` (inv_freq `1/θ^(2i/d)` in f32, as HF has it).
pub(crate) fn rope_tables(
    seq: usize,
    head_dim: usize,
    heads: usize,
    theta: f64,
    scale: f64,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let inv_freq: Vec<f64> = (0..half)
        .map(|i| (1.0f32 / (theta as f32).powf((2 * i) as f32 / head_dim as f32)) as f64)
        .collect();
    let width = heads * head_dim;
    let mut cos = Vec::with_capacity(seq * width);
    let mut sin = Vec::with_capacity(seq * width);
    let mut c_head = vec![0f32; head_dim];
    let mut s_head = vec![0f32; head_dim];
    for p in 0..seq {
        for (i, f) in inv_freq.iter().enumerate() {
            // the angle in f64: at least as close to exact as HF's f32
            let (s, c) = (p as f64 * f).sin_cos();
            c_head[i] = (c * scale) as f32;
            c_head[i + half] = (c * scale) as f32;
            s_head[i] = (-s * scale) as f32;
            s_head[i + half] = (s * scale) as f32;
        }
        for _ in 0..heads {
            cos.extend_from_slice(&c_head);
            sin.extend_from_slice(&s_head);
        }
    }
    Ok((
        Tensor::from_vec(cos, (seq, width), device)?,
        Tensor::from_vec(sin, (seq, width), device)?,
    ))
}
