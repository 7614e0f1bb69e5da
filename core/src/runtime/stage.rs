//! One part of a network at a time: the embeddings, one layer, or the head.
//!
//! A [`Stage`] is built from only its part's tensors of the [`Model`], so a
//! layer's weights can be materialized, used and dropped while the rest of
//! the model stays on disk (layer-by-layer calibration). Chaining the stages
//! `Embeddings → Layer(0) → … → Layer(n-1) → Head` computes exactly what
//! [`super::Runtime::forward`] computes: the stages run the same code.
//!
//! Between stages the hidden states are `[batch, seq, hidden]` f32.

use std::collections::HashSet;

use candle_core::{DType, Tensor};

use super::hook::{Hook, Tap};
use super::{
    bert, check_ids, configure_threads, llama, weights, QmmPolicy, RuntimeError, RuntimeOptions,
};
use crate::{Family, Model};

/// A part of a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    /// Token ids → the hidden states entering the first layer (llama: the
    /// token embedding; bert: word, position and token-type embeddings and
    /// their LayerNorm).
    Embeddings,
    /// Decoder or encoder layer `i`: hidden states → hidden states.
    Layer(usize),
    /// Llama: the final norm and the LM head, hidden states → logits. BERT's
    /// forward pass ends with the last layer, so its head has no weights
    /// and passes the hidden states through.
    Head,
}

impl Part {
    /// Every part of a model of `family`, in the order they run.
    pub fn all(family: &Family) -> Vec<Part> {
        std::iter::once(Part::Embeddings)
            .chain((0..family.num_layers()).map(Part::Layer))
            .chain(std::iter::once(Part::Head))
            .collect()
    }

    /// The IR tensors (Hugging Face names) this part reads. A tied LM head
    /// reads the token embedding table.
    pub fn tensors(self, family: &Family) -> Vec<String> {
        let with_prefix = |prefix: String| -> Vec<String> {
            family
                .expected_tensors()
                .into_iter()
                .map(|(n, _)| n)
                .filter(|n| n.starts_with(&prefix))
                .collect()
        };
        match (family, self) {
            (Family::Llama(_), Part::Embeddings) => vec!["model.embed_tokens.weight".into()],
            (Family::Llama(_), Part::Layer(i)) => with_prefix(format!("model.layers.{i}.")),
            (Family::Llama(p), Part::Head) => vec![
                "model.norm.weight".into(),
                if p.tie_word_embeddings {
                    "model.embed_tokens.weight".into()
                } else {
                    "lm_head.weight".into()
                },
            ],
            (Family::Bert(_), Part::Embeddings) => with_prefix("embeddings.".into()),
            (Family::Bert(_), Part::Layer(i)) => with_prefix(format!("encoder.layer.{i}.")),
            (Family::Bert(_), Part::Head) => Vec::new(),
        }
    }
}

enum Net {
    LlamaEmbed(weights::Embedding),
    LlamaLayer(llama::Layer),
    LlamaHead(llama::Head),
    BertEmbed(bert::Embeddings),
    BertLayer(bert::Layer),
    BertHead,
}

/// One [`Part`] of a network, built on its own. Dropping it releases the
/// mapped pages of the tensors it read (see [`Stage::release_pages`]).
pub struct Stage {
    family: Family,
    part: Part,
    net: Net,
    hook: Option<Hook>,
    pool: Option<rayon::ThreadPool>,
    /// The model's tensors this stage reads (sharing their bytes).
    sources: Vec<crate::Tensor>,
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage")
            .field("family", &self.family.name())
            .field("part", &self.part)
            .field("hook", &self.hook.is_some())
            .finish()
    }
}

impl Stage {
    /// Builds `part` of `model` from that part's tensors only (as
    /// [`super::Runtime::new`] builds the whole network).
    pub fn new(model: &Model, part: Part, opts: &RuntimeOptions) -> Result<Stage, RuntimeError> {
        Self::with_replaced(model, part, opts, &[])
    }

    /// [`Stage::new`] with some of the part's tensors replaced: a tensor of
    /// `replaced` is read instead of the model's tensor of the same name
    /// (e.g. quantized-then-dequantized weights). Each must be one of the
    /// part's tensors, in its shape.
    pub fn with_replaced(
        model: &Model,
        part: Part,
        opts: &RuntimeOptions,
        replaced: &[crate::Tensor],
    ) -> Result<Stage, RuntimeError> {
        let family = model.meta.family.clone().ok_or(RuntimeError::NoFamily)?;
        if let Part::Layer(i) = part {
            if i >= family.num_layers() {
                return Err(RuntimeError::Input(format!(
                    "layer {i} of a model of {} layers",
                    family.num_layers()
                )));
            }
        }
        let names: HashSet<String> = part.tensors(&family).into_iter().collect();
        if let Some(t) = replaced.iter().find(|t| !names.contains(&t.name)) {
            return Err(RuntimeError::Input(format!(
                "replaced tensor {} is not one of {part:?}'s",
                t.name
            )));
        }
        let pool = configure_threads(opts.threads)?;
        let mode = weights::Mode::Inference {
            qmm: opts.quantized_matmul.then_some(QmmPolicy::WhereFaster),
        };
        let sources: Vec<crate::Tensor> = names
            .iter()
            .filter_map(|n| model.tensor(n))
            .cloned()
            .collect();
        let mut w = weights::Loader::new(model, &family, mode).restricted(names, replaced);
        let net = match (&family, part) {
            (Family::Llama(p), Part::Embeddings) => {
                llama::check_params(p)?;
                Net::LlamaEmbed(llama::load_embedding(&mut w)?)
            }
            (Family::Llama(p), Part::Layer(i)) => {
                llama::check_params(p)?;
                Net::LlamaLayer(llama::Layer::load(p, &mut w, i)?)
            }
            (Family::Llama(p), Part::Head) => {
                llama::check_params(p)?;
                Net::LlamaHead(llama::Head::load(p, &mut w)?)
            }
            (Family::Bert(p), Part::Embeddings) => {
                bert::check_params(p)?;
                Net::BertEmbed(bert::Embeddings::load(&mut w)?)
            }
            (Family::Bert(p), Part::Layer(i)) => {
                bert::check_params(p)?;
                Net::BertLayer(bert::Layer::load(&mut w, i)?)
            }
            (Family::Bert(p), Part::Head) => {
                bert::check_params(p)?;
                Net::BertHead
            }
        };
        Ok(Stage {
            family,
            part,
            net,
            hook: None,
            pool,
            sources,
        })
    }

    pub fn part(&self) -> Part {
        self.part
    }

    pub fn family(&self) -> &Family {
        &self.family
    }

    /// Observes the stage's intermediate values under the names
    /// [`super::hook`] lists (those of this part only).
    pub fn set_hook(&mut self, hook: Option<Hook>) {
        self.hook = hook;
    }

    /// Runs the part:
    /// - [`Part::Embeddings`]: token ids `[batch, seq]` (any integer dtype)
    ///   → hidden states `[batch, seq, hidden]`;
    /// - [`Part::Layer`]: hidden states → hidden states (llama: causal
    ///   attention, every sequence at positions `0..seq`);
    /// - [`Part::Head`]: hidden states → logits `[batch, seq, vocab]`
    ///   (llama), the same hidden states (bert).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, RuntimeError> {
        let tap = Tap(self.hook.as_ref());
        match (&self.net, &self.family) {
            (Net::LlamaEmbed(table), Family::Llama(p)) => {
                let ids = check_ids(&self.family, x)?;
                let (b, s) = ids.dims2()?;
                self.run(|| Ok(llama::embed(table, &ids, tap)?.reshape((b, s, p.hidden_size))?))
            }
            (Net::LlamaLayer(layer), Family::Llama(p)) => {
                let (b, s, x) = self.hidden(x, p.hidden_size)?;
                self.run(|| {
                    let ctx = llama::Ctx::new(p, b, s, x.device())?;
                    Ok(layer
                        .forward(p, &x, &ctx, tap)?
                        .reshape((b, s, p.hidden_size))?)
                })
            }
            (Net::LlamaHead(head), Family::Llama(p)) => {
                let (b, s, x) = self.hidden(x, p.hidden_size)?;
                self.run(|| {
                    let x = head.norm(p, &x, tap)?;
                    Ok(head.logits_tensor(p, &x, b, s, tap)?)
                })
            }
            (Net::BertEmbed(emb), Family::Bert(p)) => {
                let ids = check_ids(&self.family, x)?;
                let (b, s) = ids.dims2()?;
                self.run(|| Ok(emb.forward(p, &ids, tap)?.reshape((b, s, p.hidden_size))?))
            }
            (Net::BertLayer(layer), Family::Bert(p)) => {
                let (b, s, x) = self.hidden(x, p.hidden_size)?;
                self.run(|| {
                    Ok(layer
                        .forward(p, &x, b, s, tap)?
                        .reshape((b, s, p.hidden_size))?)
                })
            }
            (Net::BertHead, Family::Bert(p)) => {
                let (b, s, x) = self.hidden(x, p.hidden_size)?;
                Ok(x.reshape((b, s, p.hidden_size))?)
            }
            _ => unreachable!("a stage is built for its own family"),
        }
    }

    /// The head of a causal LM: hidden states `[batch, seq, hidden]` → the
    /// logits of positions `first..seq` of each sequence, row-major
    /// `[batch·(seq - first), vocab]`, as [`super::Runtime::logits_batch`] gives
    /// them (the LM head runs only on those rows; the final norm, and a
    /// hook on it, sees every position).
    pub fn logits_from(&self, x: &Tensor, first: usize) -> Result<Vec<f32>, RuntimeError> {
        let (Net::LlamaHead(head), Family::Llama(p)) = (&self.net, &self.family) else {
            return Err(RuntimeError::WrongFamily {
                op: "logits_from",
                want: "a llama-family head",
                got: self.family.name(),
            });
        };
        let (b, s, x) = self.hidden(x, p.hidden_size)?;
        if first >= s {
            return Err(RuntimeError::Input(format!(
                "logits from position {first} of {s} tokens"
            )));
        }
        let tap = Tap(self.hook.as_ref());
        self.run(|| {
            let x = head.norm(p, &x, tap)?;
            Ok(head.logits_vec(&x, b, s, first, tap)?)
        })
    }

    /// Tells the OS that the mapped pages of the tensors this stage read
    /// will not be needed soon, so they leave the resident set (they are
    /// read from the file again if used). Called on drop.
    pub fn release_pages(&self) {
        for t in &self.sources {
            t.release_pages();
        }
    }

    /// Checks hidden states `[batch, seq, hidden]` f32 and returns them as
    /// `[batch·seq, hidden]`.
    fn hidden(&self, x: &Tensor, hidden: usize) -> Result<(usize, usize, Tensor), RuntimeError> {
        let dims = x.dims();
        let &[b, s, h] = dims else {
            return Err(RuntimeError::Input(format!(
                "hidden states must be [batch, seq, hidden], got {dims:?}"
            )));
        };
        if b == 0 || s == 0 || h != hidden || x.dtype() != DType::F32 {
            return Err(RuntimeError::Input(format!(
                "hidden states {dims:?} {:?}: want [batch, seq, {hidden}] f32, not empty",
                x.dtype()
            )));
        }
        Ok((b, s, x.reshape((b * s, h))?))
    }

    fn run<T: Send>(
        &self,
        f: impl FnOnce() -> Result<T, RuntimeError> + Send,
    ) -> Result<T, RuntimeError> {
        match &self.pool {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        self.release_pages();
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Stage>();
}
