//! Observation of intermediate values, for calibration.
//!
//! A hook is called synchronously during the forward pass with a stable name
//! and the value. Names are the Hugging Face module path followed by a colon
//! and what is observed:
//!
//! | name | value |
//! | --- | --- |
//! | `{linear}:input` | the input of every linear layer, `[batch·seq, in_features]` (e.g. `model.layers.3.mlp.down_proj:input`, `encoder.layer.0.attention.self.query:input`, `lm_head:input`) |
//! | `{linear}:output` | its output, `[batch·seq, out_features]` (bias included) |
//! | `model.embed_tokens:output`, `embeddings:output` | the embeddings entering the first layer, `[batch·seq, hidden]` |
//! | `model.layers.{i}.input_layernorm:output`, `…post_attention_layernorm:output`, `model.norm:output` | norm outputs (llama) |
//! | `model.layers.{i}.self_attn:output` | the residual stream after attention (llama) |
//! | `model.layers.{i}:output`, `encoder.layer.{i}:output` | the residual stream after the layer |
//! | `encoder.layer.{i}.attention.output:output` | after attention's residual and LayerNorm (bert) |
//!
//! q, k and v projections (and gate and up) share one input tensor; each is
//! reported under its own name. Linear layers that run quantized report the
//! same names as dense ones.

use std::sync::Arc;

use candle_core::Tensor;

/// The hook type [`super::Runtime::set_hook`] takes.
pub type Hook = Arc<dyn Fn(&str, &Tensor) + Send + Sync>;

/// A borrowed, possibly absent hook, passed down the forward pass.
#[derive(Clone, Copy)]
pub(crate) struct Tap<'a>(pub(crate) Option<&'a Hook>);

impl Tap<'_> {
    #[inline]
    pub(crate) fn emit(&self, name: &str, value: &Tensor) {
        if let Some(h) = self.0 {
            h(name, value);
        }
    }

    pub(crate) fn active(&self) -> bool {
        self.0.is_some()
    }
}
