//! The llama family (Llama, Mistral, Qwen2) as Hugging Face's modeling code
//! and llama.cpp compute it, in f32.
//!
//! The network is three kinds of parts, each loadable on its own (see
//! [`super::stage`]): the token embeddings, the decoder layers, and the head
//! (final norm and LM head). The whole forward pass chains the same parts.

use std::collections::BTreeMap;

use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;

use super::attention;
use super::fused::{causal_softmax, rms_norm, rope, swiglu};
use super::hook::Tap;
use super::ops::rope_tables;
use super::weights::{parts, Embedding, Group, Linear, Loader};
use super::RuntimeError;
use crate::{BlockShape, LlamaParams, LlamaVariant};

pub(crate) struct Layer {
    /// This block's head counts and FFN width.
    shape: BlockShape,
    input_norm: Tensor,
    post_norm: Tensor,
    /// q, k, v
    qkv: Group,
    o: Linear,
    /// gate, up
    gate_up: Group,
    down: Linear,
    names: LayerNames,
}

struct LayerNames {
    input_norm: String,
    post_norm: String,
    attn: String,
    out: String,
}

/// The final norm and the LM head.
pub(crate) struct Head {
    norm: Tensor,
    lm_head: Linear,
}

pub(crate) struct Llama {
    p: LlamaParams,
    embed: Embedding,
    layers: Vec<Layer>,
    head: Head,
}

/// Checks the hyper-parameters every part relies on.
pub(crate) fn check_params(p: &LlamaParams) -> std::result::Result<(), RuntimeError> {
    if p.head_dim == 0 || !p.head_dim.is_multiple_of(2) {
        return Err(RuntimeError::Model(format!(
            "head_dim {} must be even and non-zero",
            p.head_dim
        )));
    }
    for (i, b) in p.block_shapes().iter().enumerate() {
        if b.num_heads == 0 || b.num_kv_heads == 0 || !b.num_heads.is_multiple_of(b.num_kv_heads) {
            return Err(RuntimeError::Model(format!(
                "layer {i}: {} attention heads cannot share {} key/value heads",
                b.num_heads, b.num_kv_heads
            )));
        }
        if b.intermediate_size == 0 {
            return Err(RuntimeError::Model(format!(
                "layer {i}: a feed-forward width of 0"
            )));
        }
    }
    Ok(())
}

/// The token embedding table.
pub(crate) fn load_embedding(w: &mut Loader) -> std::result::Result<Embedding, RuntimeError> {
    w.embedding("model.embed_tokens.weight")
}

/// `ids` `[batch, seq]` u32 → the embeddings `[batch·seq, hidden]`.
pub(crate) fn embed(table: &Embedding, ids: &Tensor, tap: Tap) -> Result<Tensor> {
    let x = table.lookup(ids)?;
    tap.emit("model.embed_tokens:output", &x);
    Ok(x)
}

impl Llama {
    pub(crate) fn load(p: &LlamaParams, w: &mut Loader) -> std::result::Result<Self, RuntimeError> {
        check_params(p)?;
        let embed = load_embedding(w)?;
        let layers = (0..p.num_layers)
            .map(|i| Layer::load(p, w, i))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let head = Head::load(p, w)?;
        Ok(Llama {
            p: p.clone(),
            embed,
            layers,
            head,
        })
    }

    /// `ids` `[batch, seq]` u32 → logits `[batch, seq, vocab]`.
    pub(crate) fn forward(&self, ids: &Tensor, tap: Tap) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let x = self.hidden(ids, tap)?;
        self.head.logits_tensor(&self.p, &x, b, s, tap)
    }

    /// `ids` `[batch, seq]` u32 → the logits of positions `first..seq` of
    /// each sequence, row-major `[batch·(seq - first), vocab]`. The output
    /// projection, a fifth of the model's multiply-adds for a small model,
    /// runs only on those rows.
    pub(crate) fn logits(&self, ids: &Tensor, first: usize, tap: Tap) -> Result<Vec<f32>> {
        let (b, s) = ids.dims2()?;
        let x = self.hidden(ids, tap)?;
        self.head.logits_vec(&x, b, s, first, tap)
    }

    /// The final norm's output, `[batch·seq, hidden]`.
    fn hidden(&self, ids: &Tensor, tap: Tap) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let p = &self.p;
        let mut x = embed(&self.embed, ids, tap)?;
        let ctx = Ctx::new(p, b, s, ids.device())?;
        for layer in &self.layers {
            x = layer.forward(p, &x, &ctx, tap)?;
        }
        self.head.norm(p, &x, tap)
    }

    pub(crate) fn quantized_layers(&self) -> usize {
        self.layers.iter().map(Layer::quantized).sum::<usize>() + self.head.quantized()
    }
}

impl Head {
    pub(crate) fn load(p: &LlamaParams, w: &mut Loader) -> std::result::Result<Self, RuntimeError> {
        let norm = w.dense("model.norm.weight")?;
        let lm_head = if p.tie_word_embeddings {
            w.linear_from("model.embed_tokens.weight", "lm_head", None)?
        } else {
            w.linear("lm_head", false)?
        };
        Ok(Head { norm, lm_head })
    }

    /// The final norm of the last layer's output `[batch·seq, hidden]`.
    pub(crate) fn norm(&self, p: &LlamaParams, x: &Tensor, tap: Tap) -> Result<Tensor> {
        let x = rms_norm(x, &self.norm, p.rms_norm_eps as f64)?;
        tap.emit("model.norm:output", &x);
        Ok(x)
    }

    /// The final norm's output `[batch·seq, hidden]` → logits
    /// `[batch, seq, vocab]`.
    pub(crate) fn logits_tensor(
        &self,
        p: &LlamaParams,
        x: &Tensor,
        b: usize,
        s: usize,
        tap: Tap,
    ) -> Result<Tensor> {
        self.lm_head.forward(x, tap)?.reshape((b, s, p.vocab_size))
    }

    /// The final norm's output `[batch·seq, hidden]` → the logits of
    /// positions `first..seq`, row-major `[batch·(seq - first), vocab]`.
    pub(crate) fn logits_vec(
        &self,
        x: &Tensor,
        b: usize,
        s: usize,
        first: usize,
        tap: Tap,
    ) -> Result<Vec<f32>> {
        let x = if first == 0 {
            x.clone()
        } else {
            x.reshape((b, s, ()))?
                .narrow(1, first, s - first)?
                .reshape((b * (s - first), ()))?
        };
        self.lm_head.forward_vec(&x, tap)
    }

    pub(crate) fn quantized(&self) -> usize {
        self.lm_head.quantized()
    }
}

/// What every layer of one forward pass shares.
pub(crate) struct Ctx {
    b: usize,
    s: usize,
    /// The rotary tables of q (carrying the softmax scale 1/√hd) and of k,
    /// for each head count a block has: `(heads, scaled) → (cos, sin)`.
    rope: BTreeMap<(usize, bool), (Tensor, Tensor)>,
    eps: f64,
}

impl Ctx {
    /// The rotary tables and sizes for a batch of `b` sequences of `s`
    /// positions (every sequence starts at position 0).
    pub(crate) fn new(p: &LlamaParams, b: usize, s: usize, dev: &Device) -> Result<Ctx> {
        let hd = p.head_dim;
        let theta = p.rope_theta as f64;
        let mut rope = BTreeMap::new();
        for shape in p.block_shapes() {
            for (heads, scaled) in [(shape.num_heads, true), (shape.num_kv_heads, false)] {
                if let std::collections::btree_map::Entry::Vacant(e) = rope.entry((heads, scaled)) {
                    let scale = if scaled {
                        1.0 / (hd as f64).sqrt()
                    } else {
                        1.0
                    };
                    e.insert(rope_tables(s, hd, heads, theta, scale, dev)?);
                }
            }
        }
        Ok(Ctx {
            b,
            s,
            rope,
            eps: p.rms_norm_eps as f64,
        })
    }

    fn rope_for(&self, heads: usize, scaled: bool) -> Result<&(Tensor, Tensor)> {
        self.rope
            .get(&(heads, scaled))
            .ok_or_else(|| candle_core::Error::Msg(format!("no rotary tables for {heads} heads")))
    }
}

impl Layer {
    /// Decoder layer `i`.
    pub(crate) fn load(
        p: &LlamaParams,
        w: &mut Loader,
        i: usize,
    ) -> std::result::Result<Self, RuntimeError> {
        let bias = p.variant == LlamaVariant::Qwen2;
        let l = format!("model.layers.{i}");
        Ok(Layer {
            shape: p.block(i),
            input_norm: w.dense(&format!("{l}.input_layernorm.weight"))?,
            post_norm: w.dense(&format!("{l}.post_attention_layernorm.weight"))?,
            qkv: w.group(
                &["q_proj", "k_proj", "v_proj"].map(|n| format!("{l}.self_attn.{n}")),
                bias,
            )?,
            o: w.linear(&format!("{l}.self_attn.o_proj"), false)?,
            gate_up: w.group(
                &["gate_proj", "up_proj"].map(|n| format!("{l}.mlp.{n}")),
                false,
            )?,
            down: w.linear(&format!("{l}.mlp.down_proj"), false)?,
            names: LayerNames {
                input_norm: format!("{l}.input_layernorm:output"),
                post_norm: format!("{l}.post_attention_layernorm:output"),
                attn: format!("{l}.self_attn:output"),
                out: format!("{l}:output"),
            },
        })
    }

    pub(crate) fn quantized(&self) -> usize {
        self.qkv.quantized() + self.o.quantized() + self.gate_up.quantized() + self.down.quantized()
    }

    /// The residual stream `[b·s, hidden]` before the layer → after it.
    pub(crate) fn forward(&self, p: &LlamaParams, x: &Tensor, c: &Ctx, tap: Tap) -> Result<Tensor> {
        let h = rms_norm(x, &self.input_norm, c.eps)?;
        tap.emit(&self.names.input_norm, &h);
        let [q, k, v]: [Tensor; 3] = parts(self.qkv.forward(&h, tap)?)?;
        // Everything stays in the token-major [b·s, heads·hd] layout of the
        // projections: no transposes.
        let sh = self.shape;
        let q = rope(&q, c.s, sh.num_heads, c.rope_for(sh.num_heads, true)?)?;
        let k = rope(
            &k,
            c.s,
            sh.num_kv_heads,
            c.rope_for(sh.num_kv_heads, false)?,
        )?;
        let ctx = if q.track_op() || k.track_op() || v.track_op() {
            causal_attention(&q, &k, &v, sh, p.head_dim, c)?
        } else {
            attention::causal_attention(
                &q,
                &k,
                &v,
                &attention::Dims {
                    batch: c.b,
                    seq: c.s,
                    heads: sh.num_heads,
                    kv_heads: sh.num_kv_heads,
                    head_dim: p.head_dim,
                },
            )?
        };
        let attn = self.o.forward(&ctx, tap)?;
        let x = (x + attn)?;
        tap.emit(&self.names.attn, &x);

        let h = rms_norm(&x, &self.post_norm, c.eps)?;
        tap.emit(&self.names.post_norm, &h);
        let [g, u]: [Tensor; 2] = parts(self.gate_up.forward(&h, tap)?)?;
        let a = swiglu(&g, &u)?;
        let mlp = self.down.forward(&a, tap)?;
        let x = (x + mlp)?;
        tap.emit(&self.names.out, &x);
        Ok(x)
    }
}

/// Query positions per attention tile.
const TILE: usize = 128;

/// Grouped-query causal attention on `q` `[b·s, nh·hd]` (rotated and
/// scaled), `k` and `v` `[b·s, nkv·hd]` (any strides), giving `[b·s, nh·hd]`.
///
/// The work is cut into tiles of one batch row, one kv head and up to
/// [`TILE`] query positions, run in parallel on the rayon pool. A tile reads
/// only the keys its queries may see (causality halves the work), and k and
/// v are never repeated: the `rep` query heads that share a kv head stack
/// into the rows of one matmul, `[tile·rep, hd] × [hd, keys]`.
fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    shape: BlockShape,
    hd: usize,
    c: &Ctx,
) -> Result<Tensor> {
    let (nh, nkv) = (shape.num_heads, shape.num_kv_heads);
    let rep = nh / nkv;
    let (b, s) = (c.b, c.s);
    let tiles: Vec<(usize, usize, usize)> = (0..b)
        .flat_map(|bi| {
            (0..s)
                .step_by(TILE)
                .flat_map(move |a| (0..nkv).map(move |g| (bi, a, g)))
        })
        .collect();
    let out = tiles
        .par_iter()
        .map(|&(bi, a, g)| {
            let len = TILE.min(s - a);
            let keys = a + len;
            // rows (position, head) of this kv head's query heads
            let qt = q
                .narrow(0, bi * s + a, len)?
                .reshape((len, nh, hd))?
                .narrow(1, g * rep, rep)?
                .reshape((len * rep, hd))?;
            let kt = k.narrow(0, bi * s, keys)?.narrow(1, g * hd, hd)?;
            let vt = v.narrow(0, bi * s, keys)?.narrow(1, g * hd, hd)?;
            let scores = qt.matmul(&kt.t()?)?.reshape((len, rep, keys))?;
            causal_softmax(&scores, a)?
                .reshape((len * rep, keys))?
                .matmul(&vt)?
                .reshape((len, rep, hd))
        })
        .collect::<Result<Vec<_>>>()?;
    // Reassemble: kv heads side by side, then tiles and batch rows one
    // under the other, which is the token-major layout again.
    let rows = out
        .chunks(nkv)
        .map(|heads| Tensor::cat(heads, 1))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&rows, 0)?.reshape((b * s, nh * hd))
}
