//! Fused CPU kernels for the hot element-wise steps, as candle custom ops
//! whose backward passes are written in candle ops, so gradients flow
//! through them (unlike candle's own fused `softmax_last_dim` or rotary
//! kernels). Each replaces several candle ops (one pass and one allocation
//! each) with one pass, and uses a vectorizable `exp` instead of a libm call
//! per element.
//!
//! - [`causal_softmax`]: attention probabilities of a causal tile.
//! - [`swiglu`]: `silu(gate) · up`, in parallel over rows.
//! - [`rms_norm`]: RMSNorm with its weight, in parallel over rows.
//! - [`rope`]: rotary embeddings from precomputed tables, in parallel over rows.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

/// Softmax over the last dimension of causal attention scores
/// `[len, heads, keys]` whose row `i` is query position `offset + i`: keys
/// after it get probability 0 (they are never read, so need no mask).
pub(crate) fn causal_softmax(scores: &Tensor, offset: usize) -> Result<Tensor> {
    // candle records the op, with its backward, only for tracked tensors
    scores.apply_op1(CausalSoftmax { offset })
}

/// `silu(gate) · up` element-wise, for two `[rows, cols]` tensors whose rows
/// are contiguous (column views of a fused projection are fine).
pub(crate) fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.apply_op2(up, SwiGlu)
}

/// RMSNorm over the last dimension, `w · x / sqrt(mean(x²) + eps)`, for `x`
/// `[rows, cols]` (rows contiguous) and `w` `[cols]`; the mean of squares is
/// summed in f64.
pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    x.apply_op2(w, RmsNorm { eps })
}

/// Rotary embeddings `x·cos + swap_halves(x)·sin` on `x` `[b·seq, width]`
/// (rows contiguous, `heads` heads per row) with the `[seq, width]` tables
/// of `ops::rope_tables`; returns a contiguous tensor.
pub(crate) fn rope(
    x: &Tensor,
    seq: usize,
    heads: usize,
    tables: &(Tensor, Tensor),
) -> Result<Tensor> {
    x.apply_op1(Rope {
        seq,
        heads,
        cos: tables.0.clone(),
        sin: tables.1.clone(),
    })
}

fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op} needs f32")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op} needs contiguous input")
    };
    Ok(&data[start..end])
}

/// A 2-D f32 tensor whose rows are contiguous, at any row stride.
struct RowView<'a> {
    data: &'a [f32],
    start: usize,
    stride: usize,
}

impl<'a> RowView<'a> {
    fn new(storage: &'a CpuStorage, layout: &Layout) -> Result<Self> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("swiglu needs f32")
        };
        let (rows, cols) = layout.shape().dims2()?;
        let stride = layout.stride();
        if cols > 1 && stride[1] != 1 {
            candle_core::bail!("swiglu needs rows with contiguous columns")
        }
        let start = layout.start_offset();
        if rows > 0 && start + (rows - 1) * stride[0] + cols > data.len() {
            candle_core::bail!("swiglu: layout outside its storage")
        }
        Ok(RowView {
            data,
            start,
            stride: stride[0],
        })
    }

    fn row(&self, r: usize, cols: usize) -> &'a [f32] {
        let at = self.start + r * self.stride;
        &self.data[at..at + cols]
    }
}

struct CausalSoftmax {
    offset: usize,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let data = f32_slice(storage, layout, self.name())?;
        let (len, heads, keys) = layout.shape().dims3()?;
        let mut out = vec![0f32; data.len()];
        for i in 0..len {
            let visible = (self.offset + i + 1).min(keys);
            for h in 0..heads {
                let row = (i * heads + h) * keys;
                softmax_row(&data[row..row + visible], &mut out[row..row + visible]);
            }
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    /// d softmax: `p · (g − Σ g·p)`; masked keys have `p = 0`, so no gradient.
    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dot = (grad * res)?.sum_keepdim(D::Minus1)?;
        Ok(Some((res * grad.broadcast_sub(&dot)?)?))
    }
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "swiglu: shapes {:?} and {:?} differ",
                l1.shape(),
                l2.shape()
            )
        }
        let (rows, cols) = l1.shape().dims2()?;
        let g = RowView::new(s1, l1)?;
        let u = RowView::new(s2, l2)?;
        let mut out = vec![0f32; rows * cols];
        if cols > 0 {
            out.par_chunks_mut(cols)
                .with_min_len(8)
                .enumerate()
                .for_each(|(r, o)| swiglu_chunk(g.row(r, cols), u.row(r, cols), o));
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    /// With `s = σ(g)`: `∂/∂g = grad · u · s · (1 + g·(1 − s))`,
    /// `∂/∂u = grad · g · s`.
    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let s = (g.neg()?.exp()? + 1.0)?.recip()?;
        let silu = (g * &s)?;
        let dsilu = (&s * ((g * (1.0 - &s)?)? + 1.0)?)?;
        let dg = (grad * u)?.mul(&dsilu)?;
        let du = (grad * silu)?;
        Ok((Some(dg), Some(du)))
    }
}

struct RmsNorm {
    eps: f64,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, cols) = l1.shape().dims2()?;
        let x = RowView::new(s1, l1)?;
        let w = f32_slice(s2, l2, self.name())?;
        if w.len() != cols {
            candle_core::bail!("rms-norm: {} weights for rows of {cols}", w.len())
        }
        let mut out = vec![0f32; rows * cols];
        if cols > 0 {
            out.par_chunks_mut(cols)
                .with_min_len(8)
                .enumerate()
                .for_each(|(r, o)| {
                    let x = x.row(r, cols);
                    let ms = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / cols as f64;
                    let inv = (1.0 / (ms + self.eps).sqrt()) as f32;
                    for ((o, &v), &w) in o.iter_mut().zip(x).zip(w) {
                        *o = w * (v * inv);
                    }
                });
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    /// With `r = 1/sqrt(mean(x²) + eps)` and `gw = grad·w`:
    /// `∂/∂x = r·gw − x·r³·mean(gw·x)`, `∂/∂w = Σ_rows grad·x·r`.
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let r = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?
            .sqrt()?
            .recip()?;
        let gw = grad.broadcast_mul(w)?;
        let dot = (&gw * x)?.mean_keepdim(D::Minus1)?;
        let r3 = r.powf(3.0)?;
        let dx = (gw.broadcast_mul(&r)? - x.broadcast_mul(&(r3 * dot)?)?)?;
        let dw = (grad * x.broadcast_mul(&r)?)?.sum(0)?;
        Ok((Some(dx), Some(dw)))
    }
}

struct Rope {
    seq: usize,
    heads: usize,
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// `swap_halves` of every head of `[rows, width]`.
    fn swap_halves(&self, t: &Tensor) -> Result<Tensor> {
        let (rows, width) = t.dims2()?;
        let half = width / self.heads / 2;
        let t4 = t.reshape((rows, self.heads, 2, half))?;
        Tensor::cat(&[t4.narrow(2, 1, 1)?, t4.narrow(2, 0, 1)?], 2)?.reshape((rows, width))
    }

    /// The `[seq, width]` table repeated over the batch, `[rows, width]`.
    fn tiled(&self, t: &Tensor, rows: usize) -> Result<Tensor> {
        let width = t.dim(1)?;
        t.unsqueeze(0)?
            .broadcast_as((rows / self.seq, self.seq, width))?
            .reshape((rows, width))
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, width) = layout.shape().dims2()?;
        let x = RowView::new(storage, layout)?;
        if self.heads == 0
            || !width.is_multiple_of(2 * self.heads)
            || !rows.is_multiple_of(self.seq.max(1))
        {
            candle_core::bail!(
                "rope: [{rows}, {width}] is not {} heads over positions of {}",
                self.heads,
                self.seq
            )
        }
        let (cs, cl) = self.cos.storage_and_layout();
        let (ss, sl) = self.sin.storage_and_layout();
        let cos = f32_slice(cs_cpu(&cs)?, cl, "rope")?;
        let sin = f32_slice(cs_cpu(&ss)?, sl, "rope")?;
        if cos.len() != self.seq * width || sin.len() != cos.len() {
            candle_core::bail!("rope: tables do not match [{}, {width}]", self.seq)
        }
        let half = width / self.heads / 2;
        let mut out = vec![0f32; rows * width];
        if width > 0 {
            out.par_chunks_mut(width)
                .with_min_len(8)
                .enumerate()
                .for_each(|(r, o)| {
                    let p = r % self.seq;
                    let x = x.row(r, width);
                    let c = &cos[p * width..(p + 1) * width];
                    let s = &sin[p * width..(p + 1) * width];
                    for h in 0..self.heads {
                        let at = h * 2 * half;
                        for i in at..at + half {
                            let j = i + half;
                            o[i] = x[i] * c[i] + x[j] * s[i];
                            o[j] = x[j] * c[j] + x[i] * s[j];
                        }
                    }
                });
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    /// Linear in x: `∂/∂x = grad·cos + swap_halves(grad·sin)`.
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let rows = arg.dim(0)?;
        let cos = self.tiled(&self.cos, rows)?;
        let sin = self.tiled(&self.sin, rows)?;
        let dx = ((grad * cos)? + self.swap_halves(&(grad * sin)?)?)?;
        Ok(Some(dx))
    }
}

/// The CPU storage of a tensor's storage.
fn cs_cpu(s: &candle_core::Storage) -> Result<&CpuStorage> {
    match s {
        candle_core::Storage::Cpu(c) => Ok(c),
        _ => candle_core::bail!("CPU tensors only"),
    }
}

// ---------------------------------------------------------------------------
// Kernels: plain loops that the compiler vectorizes, compiled once for
// AVX-512 and once for the baseline, picked at run time.

macro_rules! dispatch {
    ($generic:ident($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512(src: &[f32], b: &[f32], dst: &mut [f32]) {
                $generic(src, b, dst)
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F, checked just above.
                return unsafe { avx512($($arg),*) };
            }
        }
        $generic($($arg),*)
    }};
}

pub(crate) fn softmax_row(src: &[f32], dst: &mut [f32]) {
    dispatch!(softmax_row_generic(src, &[], dst))
}

fn swiglu_chunk(g: &[f32], u: &[f32], dst: &mut [f32]) {
    dispatch!(swiglu_generic(g, u, dst))
}

const LANES: usize = 16;

#[inline(always)]
fn softmax_row_generic(src: &[f32], _unused: &[f32], dst: &mut [f32]) {
    let mut m = [f32::NEG_INFINITY; LANES];
    let chunks = src.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, &v) in m.iter_mut().zip(c) {
            *m = if v > *m { v } else { *m };
        }
    }
    let mut max = m.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for &v in tail {
        max = max.max(v);
    }
    let mut s = [0f32; LANES];
    let mut dc = dst.chunks_exact_mut(LANES);
    let mut sc = src.chunks_exact(LANES);
    for (d, c) in (&mut dc).zip(&mut sc) {
        for ((d, &v), s) in d.iter_mut().zip(c).zip(s.iter_mut()) {
            *d = exp(v - max);
            *s += *d;
        }
    }
    let mut sum: f32 = s.iter().sum();
    for (d, &v) in dc.into_remainder().iter_mut().zip(sc.remainder()) {
        *d = exp(v - max);
        sum += *d;
    }
    let inv = 1.0 / sum;
    dst.iter_mut().for_each(|d| *d *= inv);
}

#[inline(always)]
fn swiglu_generic(g: &[f32], u: &[f32], dst: &mut [f32]) {
    for ((d, &g), &u) in dst.iter_mut().zip(g).zip(u) {
        *d = g * u / (1.0 + exp(-g));
    }
}

/// `e^x` to about 1 ulp over f32's range (0 below −87.3, +∞ above 88.7),
/// written to vectorize: Cody–Waite reduction `x = n·ln2 + r`, |r| ≤ ln2/2,
/// a degree-6 Taylor polynomial for `e^r` (error < 2e-7), and `2^n` built in
/// the exponent bits.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // adding then subtracting 1.5·2²³ rounds to the nearest integer
    const ROUND: f32 = 12_582_912.0;
    let big = x > 88.7;
    let small = x < -87.3;
    let x = x.clamp(-87.3, 88.7);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // n ∈ [−126, 128]; 2^128 overflows to +∞ as it should for x ≈ 88.7
    let scale = f32::from_bits(((n as i32 + 127).clamp(0, 255) as u32) << 23);
    let y = p * scale;
    if big {
        f32::INFINITY
    } else if small {
        0.0
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(100.0).is_infinite());
    }

    /// The fused causal softmax against candle's softmax of masked scores:
    /// values and gradients.
    #[test]
    fn causal_softmax_matches_masked_softmax() {
        let (len, heads, keys, offset) = (5, 3, 40, 30);
        let v: Vec<f32> = (0..len * heads * keys)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.3)
            .collect();
        let x = Var::from_vec(v, (len, heads, keys), &Device::Cpu).unwrap();
        let mask: Vec<f32> = (0..len)
            .flat_map(|i| {
                (0..keys).map(move |j| {
                    if j <= offset + i {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (len, 1, keys), &Device::Cpu).unwrap();
        let want = candle_nn::ops::softmax(&x.broadcast_add(&mask).unwrap(), D::Minus1).unwrap();
        let got = causal_softmax(x.as_tensor(), offset).unwrap();
        assert!(max_diff(&got, &want) < 1e-6);
        // a loss that weighs every probability differently
        let w: Vec<f32> = (0..len * heads * keys).map(|i| (i % 7) as f32).collect();
        let w = Tensor::from_vec(w, (len, heads, keys), &Device::Cpu).unwrap();
        let g_want = (&want * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g_got = (&got * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let (a, b) = (g_got.get(&x).unwrap(), g_want.get(&x).unwrap());
        assert!(max_diff(a, b) < 1e-5, "{}", max_diff(a, b));
        assert!(
            a.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );
    }

    fn var(rows: usize, cols: usize, seed: usize) -> Var {
        let v: Vec<f32> = (0..rows * cols)
            .map(|i| (((i + seed) * 37 % 101) as f32 - 50.0) * 0.03)
            .collect();
        Var::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
    }

    /// Gradients of `Σ out·weights` (a loss that weighs every output
    /// differently) with respect to `vars`.
    fn grads(out: &Tensor, vars: &[&Var]) -> Vec<Tensor> {
        let (rows, cols) = out.dims2().unwrap();
        let w = Tensor::arange(0f32, (rows * cols) as f32, &Device::Cpu)
            .unwrap()
            .reshape((rows, cols))
            .unwrap()
            .affine(1e-3, -0.5)
            .unwrap();
        let g = (out * w).unwrap().sum_all().unwrap().backward().unwrap();
        vars.iter().map(|v| g.get(v).unwrap().clone()).collect()
    }

    #[test]
    fn rms_norm_matches_candle_ops() {
        let (x, w) = (var(300, 48, 1), var(1, 48, 2));
        let w1 = w.as_tensor().reshape(48).unwrap();
        let eps = 1e-5;
        // Hugging Face's formula in candle ops
        let ms = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let inv = (ms + eps).unwrap().sqrt().unwrap().recip().unwrap();
        let want = x.broadcast_mul(&inv).unwrap().broadcast_mul(&w1).unwrap();
        let got = rms_norm(x.as_tensor(), &w1, eps).unwrap();
        assert!(max_diff(&got, &want) < 1e-5, "{}", max_diff(&got, &want));
        let (gw, gg) = (grads(&want, &[&x, &w]), grads(&got, &[&x, &w]));
        for (a, b) in gg.iter().zip(&gw) {
            let d = max_diff(&a.reshape(b.shape()).unwrap(), b);
            assert!(d < 1e-3, "{d}");
        }
    }

    #[test]
    fn rope_matches_candle_ops() {
        let (b, seq, heads, hd) = (2, 7, 3, 8);
        let (cos, sin) =
            crate::runtime::ops::rope_tables(seq, hd, heads, 10000.0, 0.5, &Device::Cpu).unwrap();
        let x = var(b * seq, heads * hd, 3);
        // x·cos + swap_halves(x)·sin, as candle ops
        let half = hd / 2;
        let x4 = x.reshape((b * seq, heads, 2, half)).unwrap();
        let swapped = Tensor::cat(
            &[x4.narrow(2, 1, 1).unwrap(), x4.narrow(2, 0, 1).unwrap()],
            2,
        )
        .unwrap()
        .reshape((b, seq, heads * hd))
        .unwrap();
        let x3 = x.reshape((b, seq, heads * hd)).unwrap();
        let want = (x3.broadcast_mul(&cos).unwrap() + swapped.broadcast_mul(&sin).unwrap())
            .unwrap()
            .reshape((b * seq, heads * hd))
            .unwrap();
        let got = rope(x.as_tensor(), seq, heads, &(cos, sin)).unwrap();
        assert!(max_diff(&got, &want) < 1e-6);
        let (gw, gg) = (grads(&want, &[&x]), grads(&got, &[&x]));
        assert!(max_diff(&gg[0], &gw[0]) < 1e-5);
        // a column view of a wider tensor (as q is of the fused projection)
        let wide = var(b * seq, 2 * heads * hd, 4);
        let view = wide.narrow(1, heads * hd, heads * hd).unwrap();
        let got = rope(&view, seq, heads, &(cos_sin(seq, hd, heads))).unwrap();
        let want = rope(
            &view.contiguous().unwrap(),
            seq,
            heads,
            &cos_sin(seq, hd, heads),
        )
        .unwrap();
        assert_eq!(max_diff(&got, &want), 0.0);
    }

    fn cos_sin(seq: usize, hd: usize, heads: usize) -> (Tensor, Tensor) {
        crate::runtime::ops::rope_tables(seq, hd, heads, 10000.0, 1.0, &Device::Cpu).unwrap()
    }

    #[test]
    fn swiglu_matches_candle_ops() {
        let n = 40_000; // more than one parallel chunk
        let gv: Vec<f32> = (0..n)
            .map(|i| ((i * 13 % 41) as f32 - 20.0) * 0.4)
            .collect();
        let uv: Vec<f32> = (0..n).map(|i| ((i * 7 % 17) as f32 - 8.0) * 0.2).collect();
        let g = Var::from_vec(gv, (200, 200), &Device::Cpu).unwrap();
        let u = Var::from_vec(uv, (200, 200), &Device::Cpu).unwrap();
        let want = (g.silu().unwrap() * u.as_tensor()).unwrap();
        let got = swiglu(g.as_tensor(), u.as_tensor()).unwrap();
        assert!(max_diff(&got, &want) < 1e-5);
        let w = Tensor::arange(0f32, n as f32, &Device::Cpu)
            .unwrap()
            .reshape((200, 200))
            .unwrap()
            .affine(1e-4, 0.0)
            .unwrap();
        let gw = (&want * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gg = (&got * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&g, &u] {
            let d = max_diff(gg.get(v).unwrap(), gw.get(v).unwrap());
            assert!(d < 1e-5, "{d}");
        }
    }
}
