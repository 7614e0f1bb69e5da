//! BERT encoders as Hugging Face's `BertModel` computes them (absolute
//! positions, token type 0, no padding: every token attends to every token).
//!
//! The network is the embeddings and the encoder layers, each loadable on
//! its own (see [`super::stage`]); the whole forward pass chains them.

use candle_core::{Result, Tensor};

use super::hook::Tap;
use super::ops::{layer_norm, softmax};
use super::weights::{parts, Group, Linear, Loader};
use super::RuntimeError;
use crate::BertParams;

struct Norm {
    w: Tensor,
    b: Tensor,
}

impl Norm {
    fn load(w: &mut Loader, prefix: &str) -> std::result::Result<Self, RuntimeError> {
        Ok(Norm {
            w: w.dense(&format!("{prefix}.weight"))?,
            b: w.dense(&format!("{prefix}.bias"))?,
        })
    }

    fn forward(&self, x: &Tensor, eps: f64) -> Result<Tensor> {
        layer_norm(x, &self.w, &self.b, eps)
    }
}

pub(crate) struct Layer {
    /// query, key, value
    qkv: Group,
    attn_out: Linear,
    attn_norm: Norm,
    inter: Linear,
    out: Linear,
    out_norm: Norm,
    attn_name: String,
    out_name: String,
}

/// Word, position and token-type embeddings with their LayerNorm.
pub(crate) struct Embeddings {
    word: Tensor,
    pos: Tensor,
    token_type0: Tensor,
    norm: Norm,
}

pub(crate) struct Bert {
    p: BertParams,
    emb: Embeddings,
    layers: Vec<Layer>,
}

/// Checks the hyper-parameters every part relies on.
pub(crate) fn check_params(p: &BertParams) -> std::result::Result<(), RuntimeError> {
    if p.num_heads == 0 || !p.hidden_size.is_multiple_of(p.num_heads) {
        return Err(RuntimeError::Model(format!(
            "hidden size {} does not split into {} heads",
            p.hidden_size, p.num_heads
        )));
    }
    if p.type_vocab_size == 0 {
        return Err(RuntimeError::Model("type_vocab_size is 0".into()));
    }
    Ok(())
}

impl Bert {
    pub(crate) fn load(p: &BertParams, w: &mut Loader) -> std::result::Result<Self, RuntimeError> {
        check_params(p)?;
        let emb = Embeddings::load(w)?;
        let layers = (0..p.num_layers)
            .map(|i| Layer::load(w, i))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Bert {
            p: p.clone(),
            emb,
            layers,
        })
    }

    /// `ids` `[batch, seq]` u32 → last hidden state `[batch, seq, hidden]`.
    pub(crate) fn forward(&self, ids: &Tensor, tap: Tap) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let d = self.p.hidden_size;
        let mut x = self.emb.forward(&self.p, ids, tap)?;
        for layer in &self.layers {
            x = layer.forward(&self.p, &x, b, s, tap)?;
        }
        x.reshape((b, s, d))
    }

    pub(crate) fn quantized_layers(&self) -> usize {
        self.layers.iter().map(Layer::quantized).sum()
    }
}

impl Embeddings {
    pub(crate) fn load(w: &mut Loader) -> std::result::Result<Self, RuntimeError> {
        let word = w.dense("embeddings.word_embeddings.weight")?;
        let pos = w.dense("embeddings.position_embeddings.weight")?;
        let token_type0 = w
            .dense("embeddings.token_type_embeddings.weight")?
            .narrow(0, 0, 1)?;
        let norm = Norm::load(w, "embeddings.LayerNorm")?;
        Ok(Embeddings {
            word,
            pos,
            token_type0,
            norm,
        })
    }

    /// `ids` `[batch, seq]` u32 → the embeddings `[batch·seq, hidden]`.
    pub(crate) fn forward(&self, p: &BertParams, ids: &Tensor, tap: Tap) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let d = p.hidden_size;
        let words = self.word.index_select(&ids.flatten_all()?, 0)?; // [b·s, d]
        let pos = self.pos.narrow(0, 0, s)?; // [s, d]
        let emb = words
            .reshape((b, s, d))?
            .broadcast_add(&pos)?
            .broadcast_add(&self.token_type0)?
            .reshape((b * s, d))?;
        let x = self.norm.forward(&emb, p.layer_norm_eps as f64)?;
        tap.emit("embeddings:output", &x);
        Ok(x)
    }
}

impl Layer {
    /// Encoder layer `i`.
    pub(crate) fn load(w: &mut Loader, i: usize) -> std::result::Result<Self, RuntimeError> {
        let l = format!("encoder.layer.{i}");
        Ok(Layer {
            qkv: w.group(
                &["query", "key", "value"].map(|n| format!("{l}.attention.self.{n}")),
                true,
            )?,
            attn_out: w.linear(&format!("{l}.attention.output.dense"), true)?,
            attn_norm: Norm::load(w, &format!("{l}.attention.output.LayerNorm"))?,
            inter: w.linear(&format!("{l}.intermediate.dense"), true)?,
            out: w.linear(&format!("{l}.output.dense"), true)?,
            out_norm: Norm::load(w, &format!("{l}.output.LayerNorm"))?,
            attn_name: format!("{l}.attention.output:output"),
            out_name: format!("{l}:output"),
        })
    }

    pub(crate) fn quantized(&self) -> usize {
        self.qkv.quantized()
            + self.attn_out.quantized()
            + self.inter.quantized()
            + self.out.quantized()
    }

    /// The hidden states `[b·s, hidden]` before the layer → after it.
    pub(crate) fn forward(
        &self,
        p: &BertParams,
        x: &Tensor,
        b: usize,
        s: usize,
        tap: Tap,
    ) -> Result<Tensor> {
        let eps = p.layer_norm_eps as f64;
        let nh = p.num_heads;
        let hd = p.hidden_size / nh;
        let heads = |t: Tensor| -> Result<Tensor> {
            t.reshape((b, s, nh, hd))?.transpose(1, 2)?.contiguous()
        };
        let [q, k, v]: [Tensor; 3] = parts(self.qkv.forward(x, tap)?)?;
        let q = heads((q * (1.0 / (hd as f64).sqrt()))?)?;
        let k = heads(k)?;
        let v = heads(v)?;
        let probs = softmax(&q.matmul(&k.t()?)?)?; // [b, nh, s, s]
        let ctx = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b * s, p.hidden_size))?;
        let a = self.attn_out.forward(&ctx, tap)?;
        let h = self.attn_norm.forward(&(a + x)?, eps)?;
        tap.emit(&self.attn_name, &h);
        let i = self.inter.forward(&h, tap)?.gelu_erf()?;
        let o = self.out.forward(&i, tap)?;
        let y = self.out_norm.forward(&(o + h)?, eps)?;
        tap.emit(&self.out_name, &y);
        Ok(y)
    }
}
