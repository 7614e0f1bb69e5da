//! The shared building blocks of both families, written only with candle ops
//! that have backward passes (no `softmax_last_dim`, `ops::rms_norm`,
//! `ops::layer_norm` nor the rotary kernels), so gradients flow through them.

use candle_core::{Device, Result, Tensor, D};

/// RMSNorm as Hugging Face computes it: `w * x / sqrt(mean(x²) + eps)` over
/// the last dimension.
pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv)?.broadcast_mul(weight)
}

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

/// The rotary tables for positions `0..seq`, Hugging Face's layout: `cos` is
/// `cos(p·f)` repeated over both halves of the head, `sin_signed` is `sin(p·f)`
/// with the first half negated, so that `rope(x) = x·cos + swap_halves(x)·sin_signed`
/// equals HF's `x·cos + rotate_half(x)·sin`. Both are `[seq, head_dim]`.
pub(crate) fn rope_tables(
    seq: usize,
    head_dim: usize,
    theta: f64,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(seq * head_dim);
    let mut sin = Vec::with_capacity(seq * head_dim);
    // HF computes inv_freq in f32; the angle itself is formed in f64 here,
    // which is at least as close to the exact value at every position.
    let inv_freq: Vec<f64> = (0..half)
        .map(|i| {
            let f = 1.0f32 / (theta as f32).powf((2 * i) as f32 / head_dim as f32);
            f as f64
        })
        .collect();
    for p in 0..seq {
        let (c, s): (Vec<f32>, Vec<f32>) = inv_freq
            .iter()
            .map(|f| {
                let a = p as f64 * f;
                (a.cos() as f32, a.sin() as f32)
            })
            .unzip();
        cos.extend_from_slice(&c);
        cos.extend_from_slice(&c);
        sin.extend(s.iter().map(|v| -v));
        sin.extend_from_slice(&s);
    }
    Ok((
        Tensor::from_vec(cos, (seq, head_dim), device)?,
        Tensor::from_vec(sin, (seq, head_dim), device)?,
    ))
}

/// Applies rotary embeddings to `x` of shape `[batch, heads, seq, head_dim]`
/// with tables from [`rope_tables`]: `x·cos + [x2, x1]·sin_signed`, which is
/// HF's `x·cos + rotate_half(x)·sin` with `rotate_half(x) = [-x2, x1]`.
pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin_signed: &Tensor) -> Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let half = hd / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, hd - half)?;
    let swapped = Tensor::cat(&[&x2, &x1], D::Minus1)?;
    x.broadcast_mul(cos)?
        .add(&swapped.broadcast_mul(sin_signed)?)
}

/// The additive causal mask `[seq, seq]`: 0 where key ≤ query, −∞ above the diagonal.
pub(crate) fn causal_mask(seq: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..seq)
        .flat_map(|i| (0..seq).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Tensor::from_vec(mask, (seq, seq), device)
}
