//! Grouped-query causal attention for inference, straight on gemm.
//!
//! The differentiable version (candle matmuls per tile) is in `llama.rs`;
//! when no tensor records gradients this one runs instead: it reads q, k and
//! v in place through their strides, writes each tile's output into its
//! place in the result, and keeps each gemm on one thread (the tiles are
//! the parallel work). candle's matmul would copy operands to contiguous
//! memory and ask the OS for the core count on every call, which together
//! cost as much as the arithmetic for a small model.

use candle_core::{Result, Storage, Tensor};
use rayon::prelude::*;

use super::fused::softmax_row;

/// A 2-D f32 tensor's storage as a slice, with its first element and row
/// stride; columns must be contiguous.
struct Rows<'a> {
    data: &'a [f32],
    start: usize,
    stride: usize,
}

/// Checks that `l` is `[n, width]` with contiguous columns inside `st`.
fn rows<'a>(st: &'a Storage, l: &candle_core::Layout, n: usize, width: usize) -> Result<Rows<'a>> {
    let Storage::Cpu(c) = st else {
        candle_core::bail!("attention: CPU tensors only")
    };
    let data = c.as_slice::<f32>()?;
    let dims = l.shape().dims2()?;
    let stride = l.stride();
    if dims != (n, width) || stride[1] != 1 {
        candle_core::bail!(
            "attention: operand of shape {:?} strides {stride:?}",
            l.shape()
        )
    }
    let start = l.start_offset();
    if n > 0 && start + (n - 1) * stride[0] + width > data.len() {
        candle_core::bail!("attention: layout outside its storage")
    }
    Ok(Rows {
        data,
        start,
        stride: stride[0],
    })
}

/// Shapes of one attention call.
pub(crate) struct Dims {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Query positions per tile.
const TILE: usize = 128;

/// `q` `[b·s, nh·hd]` (rotated and scaled), `k` and `v` `[b·s, nkv·hd]`,
/// any row strides with contiguous columns → `[b·s, nh·hd]`.
pub(crate) fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, d: &Dims) -> Result<Tensor> {
    let (nh, nkv, hd) = (d.heads, d.kv_heads, d.head_dim);
    let (b, s) = (d.batch, d.seq);
    let rep = nh / nkv;
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let q = rows(&qs, ql, b * s, nh * hd)?;
    let k = rows(&ks, kl, b * s, nkv * hd)?;
    let v = rows(&vs, vl, b * s, nkv * hd)?;
    let width = nh * hd;
    let mut out = vec![0f32; b * s * width];
    let tiles: Vec<(usize, usize, usize)> = (0..b)
        .flat_map(|bi| {
            (0..s)
                .step_by(TILE)
                .flat_map(move |a| (0..nh).map(move |h| (bi, a, h)))
        })
        .collect();
    let out_ptr = SendPtr(out.as_mut_ptr());
    tiles.par_iter().for_each(|&(bi, a, h)| {
        let len = TILE.min(s - a);
        let keys = a + len;
        let g = h / rep;
        let row0 = bi * s;
        let mut p = vec![0f32; len * keys];
        let mut scratch = Vec::with_capacity(keys);
        // SAFETY (both gemm calls): every operand is in bounds: q rows
        // row0+a .. row0+a+len at column h·hd, k and v rows row0 .. row0+keys
        // at column g·hd, each hd wide (checked by `rows` above); `p` is
        // [len, keys]; the output block, rows row0+a.. at column h·hd, is
        // written by this tile only, so the tiles' writes never overlap.
        unsafe {
            // scores = q·kᵀ, [len, hd] × [hd, keys]
            gemm::gemm(
                len,
                keys,
                hd,
                p.as_mut_ptr(),
                1,
                keys as isize,
                false,
                q.data
                    .as_ptr()
                    .add(q.start + (row0 + a) * q.stride + h * hd),
                1,
                q.stride as isize,
                k.data.as_ptr().add(k.start + row0 * k.stride + g * hd),
                k.stride as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        for (i, row) in p.chunks_mut(keys).enumerate() {
            let visible = a + i + 1;
            let (seen, future) = row.split_at_mut(visible);
            scratch.clear();
            scratch.extend_from_slice(seen);
            softmax_row(&scratch, seen);
            future.fill(0.0);
        }
        unsafe {
            // out = p·v, [len, keys] × [keys, hd]
            gemm::gemm(
                len,
                hd,
                keys,
                out_ptr.get().add((row0 + a) * width + h * hd),
                1,
                width as isize,
                false,
                p.as_ptr(),
                1,
                keys as isize,
                v.data.as_ptr().add(v.start + row0 * v.stride + g * hd),
                1,
                v.stride as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    });
    drop((qs, ks, vs));
    Tensor::from_vec(out, (b * s, width), &candle_core::Device::Cpu)
}

/// A raw pointer the tiles share; each writes a disjoint block through it.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: tiles write disjoint regions (see `causal_attention`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}
