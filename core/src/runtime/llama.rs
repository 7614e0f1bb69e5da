//! The llama family (Llama, Mistral, Qwen2) as Hugging Face's modeling code
//! and llama.cpp compute it, in f32.

use candle_core::{Result, Tensor};

use super::hook::Tap;
use super::ops::{causal_mask, rms_norm, rope, rope_tables, softmax};
use super::weights::{parts, Group, Linear, Loader};
use super::RuntimeError;
use crate::{LlamaParams, LlamaVariant};

struct Layer {
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

pub(crate) struct Llama {
    p: LlamaParams,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
}

impl Llama {
    pub(crate) fn load(p: &LlamaParams, w: &mut Loader) -> std::result::Result<Self, RuntimeError> {
        if p.head_dim == 0 || !p.head_dim.is_multiple_of(2) {
            return Err(RuntimeError::Model(format!(
                "head_dim {} must be even and non-zero",
                p.head_dim
            )));
        }
        if p.num_kv_heads == 0 || !p.num_heads.is_multiple_of(p.num_kv_heads) {
            return Err(RuntimeError::Model(format!(
                "{} attention heads cannot share {} key/value heads",
                p.num_heads, p.num_kv_heads
            )));
        }
        let bias = p.variant == LlamaVariant::Qwen2;
        let embed = w.dense("model.embed_tokens.weight")?;
        let mut layers = Vec::with_capacity(p.num_layers);
        for i in 0..p.num_layers {
            let l = format!("model.layers.{i}");
            layers.push(Layer {
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
            });
        }
        let norm = w.dense("model.norm.weight")?;
        let lm_head = if p.tie_word_embeddings {
            w.linear_from("model.embed_tokens.weight", "lm_head", None)?
        } else {
            w.linear("lm_head", false)?
        };
        Ok(Llama {
            p: p.clone(),
            embed,
            layers,
            norm,
            lm_head,
        })
    }

    /// `ids` `[batch, seq]` u32 → logits `[batch, seq, vocab]`.
    pub(crate) fn forward(&self, ids: &Tensor, tap: Tap) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let dev = ids.device();
        let p = &self.p;
        let mut x = self.embed.index_select(&ids.flatten_all()?, 0)?;
        tap.emit("model.embed_tokens:output", &x);
        let (cos, sin) = rope_tables(s, p.head_dim, p.rope_theta as f64, dev)?;
        let mask = causal_mask(s, dev)?;
        let eps = p.rms_norm_eps as f64;
        for layer in &self.layers {
            x = layer.forward(p, &x, b, s, &cos, &sin, &mask, eps, tap)?;
        }
        let x = rms_norm(&x, &self.norm, eps)?;
        tap.emit("model.norm:output", &x);
        let logits = self.lm_head.forward(&x, tap)?;
        logits.reshape((b, s, p.vocab_size))
    }

    pub(crate) fn quantized_layers(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                l.qkv.quantized() + l.o.quantized() + l.gate_up.quantized() + l.down.quantized()
            })
            .sum::<usize>()
            + self.lm_head.quantized()
    }
}

impl Layer {
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        p: &LlamaParams,
        x: &Tensor,
        b: usize,
        s: usize,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        eps: f64,
        tap: Tap,
    ) -> Result<Tensor> {
        let (nh, nkv, hd) = (p.num_heads, p.num_kv_heads, p.head_dim);
        let rep = nh / nkv;

        let h = rms_norm(x, &self.input_norm, eps)?;
        tap.emit(&self.names.input_norm, &h);
        let [q, k, v]: [Tensor; 3] = parts(self.qkv.forward(&h, tap)?)?;

        // [b·s, heads·hd] → [b, heads, s, hd]
        let q = q.reshape((b, s, nh, hd))?.transpose(1, 2)?;
        let k = k.reshape((b, s, nkv, hd))?.transpose(1, 2)?;
        let v = v.reshape((b, s, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        let q = (rope(&q, cos, sin)? * (1.0 / (hd as f64).sqrt()))?;
        let k = rope(&k, cos, sin)?;

        // Grouped-query attention without repeating k and v: the `rep` query
        // heads of one kv head are adjacent, so they stack into the rows of
        // one matmul per kv head: [b, nkv, rep·s, hd] × [b, nkv, hd, s].
        let q = q.reshape((b, nkv, rep * s, hd))?;
        let scores = q.matmul(&k.t()?)?;
        let scores = scores
            .reshape((b, nkv, rep, s, s))?
            .broadcast_add(mask)?
            .reshape((b, nkv, rep * s, s))?;
        let probs = softmax(&scores)?;
        let ctx = probs.matmul(&v)?; // [b, nkv, rep·s, hd]
        let ctx = ctx
            .reshape((b, nh, s, hd))?
            .transpose(1, 2)?
            .reshape((b * s, nh * hd))?;
        let attn = self.o.forward(&ctx, tap)?;
        let x = (x + attn)?;
        tap.emit(&self.names.attn, &x);

        let h = rms_norm(&x, &self.post_norm, eps)?;
        tap.emit(&self.names.post_norm, &h);
        let [g, u]: [Tensor; 2] = parts(self.gate_up.forward(&h, tap)?)?;
        let a = (g.silu()? * u)?;
        let mlp = self.down.forward(&a, tap)?;
        let x = (x + mlp)?;
        tap.emit(&self.names.out, &x);
        Ok(x)
    }
}
