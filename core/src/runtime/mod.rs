//! The reference runtime: an interpreter of the two model families on
//! candle-core tensors (CPU, f32 compute).
//!
//! - Llama family (Llama, Mistral, Qwen2): causal LM logits, as HF
//!   transformers and llama.cpp compute them (RMSNorm, rotate-half RoPE,
//!   grouped-query causal attention, SwiGLU; no rope scaling, no sliding window).
//! - BERT: last hidden state, mean-pooled for [`Runtime::embed`].
//!
//! Quantized weights (`DType::Ggml`) run through candle's quantized matmul
//! when [`RuntimeOptions::quantized_matmul`] is on and [`QmmPolicy`] picks
//! them (by default only where candle's kernel beats f32 on this CPU); like
//! llama.cpp it quantizes the activations to 8 bits. Everything else is
//! dequantized to f32 once at load.
//!
//! Linear layers that share an input (q/k/v, gate/up) run as one matmul in
//! inference. The whole forward pass is built from candle ops that have
//! backward passes, so [`Runtime::trainable`] gives a differentiable model
//! whose weights are `Var`s. A [`Hook`] observes intermediate values (see
//! [`hook`] for the names). A [`Stage`] runs one part of the network
//! (embeddings, one layer, or the head) built from that part's tensors only.
//! For speed, call [`init_process`] at program start.

mod attention;
mod bert;
mod fused;
pub mod graph;
pub mod hook;
mod llama;
mod ops;
pub mod stage;
mod weights;

use candle_core::{DType, Device, Tensor, Var};

pub use hook::Hook;
pub use stage::{Part, Stage};

use crate::{Family, Model};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("the model has no family the runtime knows (llama, mistral, qwen2 or bert)")]
    NoFamily,
    #[error("{op} needs a {want} model, this one is {got}")]
    WrongFamily {
        op: &'static str,
        want: &'static str,
        got: &'static str,
    },
    #[error("model: {0}")]
    Model(String),
    #[error("input: {0}")]
    Input(String),
    #[error(transparent)]
    Ir(#[from] crate::Error),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("thread pool: {0}")]
    Threads(String),
}

#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Worker threads for the matmuls. `None` uses the current rayon pool
    /// (e.g. the global one the CLI set up) and `RAYON_NUM_THREADS` or the
    /// physical cores for gemm's split; `Some(n)` sets `RAYON_NUM_THREADS`
    /// and runs on a pool of `n` threads. Element-wise ops run on the calling
    /// thread (see `configure_threads`).
    pub threads: Option<usize>,
    /// Run ggml-quantized linear weights through candle's quantized matmul
    /// (activations quantized to Q8 on the fly) instead of dequantizing them.
    pub quantized_matmul: bool,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            threads: None,
            quantized_matmul: true,
        }
    }
}

/// Which ggml-quantized linear layers run on candle's quantized matmul when
/// [`RuntimeOptions::quantized_matmul`] is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QmmPolicy {
    /// Only where candle's kernel for the block type and shape beats the f32
    /// matmul on this CPU; the rest is dequantized (the default).
    #[default]
    WhereFaster,
    /// Every block type candle has (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K … Q6_K).
    Always,
}

enum Net {
    Llama(llama::Llama),
    Bert(bert::Bert),
}

pub struct Runtime {
    family: Family,
    net: Net,
    hook: Option<Hook>,
    /// A pool of exactly the requested threads, when the current one differs.
    pool: Option<rayon::ThreadPool>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("family", &self.family)
            .field("quantized_layers", &self.quantized_layers())
            .field("hook", &self.hook.is_some())
            .finish()
    }
}

impl Runtime {
    /// Builds the runtime for `model`. Dense weights become f32 candle
    /// tensors (linear weights transposed once to `[in, out]`); quantized
    /// linear weights become `QMatMul`s or are dequantized.
    pub fn new(model: &Model, opts: &RuntimeOptions) -> Result<Runtime, RuntimeError> {
        Self::with_qmm_policy(model, opts, QmmPolicy::WhereFaster)
    }

    /// [`Runtime::new`] with a choice of which quantized layers use candle's
    /// quantized matmul.
    pub fn with_qmm_policy(
        model: &Model,
        opts: &RuntimeOptions,
        policy: QmmPolicy,
    ) -> Result<Runtime, RuntimeError> {
        let pool = configure_threads(opts.threads)?;
        let mode = weights::Mode::Inference {
            qmm: opts.quantized_matmul.then_some(policy),
        };
        let (family, net, _) = build(model, mode)?;
        Ok(Runtime {
            family,
            net,
            hook: None,
            pool,
        })
    }

    /// Builds a differentiable runtime whose every weight is an f32 `Var`
    /// (quantized weights dequantized), returned with its HF tensor name. A
    /// tied embedding is one Var used twice.
    pub fn trainable(model: &Model) -> Result<(Runtime, Vec<(String, Var)>), RuntimeError> {
        let pool = configure_threads(None)?;
        let (family, net, vars) = build(model, weights::Mode::Trainable)?;
        Ok((
            Runtime {
                family,
                net,
                hook: None,
                pool,
            },
            vars,
        ))
    }

    pub fn family(&self) -> &Family {
        &self.family
    }

    /// How many linear layers run on candle's quantized matmul.
    pub fn quantized_layers(&self) -> usize {
        match &self.net {
            Net::Llama(m) => m.quantized_layers(),
            Net::Bert(m) => m.quantized_layers(),
        }
    }

    pub fn set_hook(&mut self, hook: Option<Hook>) {
        self.hook = hook;
    }

    /// The forward pass on candle tensors: ids `[batch, seq]` (any integer
    /// dtype) → logits `[batch, seq, vocab]` (llama) or the last hidden state
    /// `[batch, seq, hidden]` (bert). Differentiable with respect to the
    /// weights of a [`Runtime::trainable`] runtime.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor, RuntimeError> {
        let ids = self.check_ids(ids)?;
        self.run(|| {
            let tap = hook::Tap(self.hook.as_ref());
            Ok(match &self.net {
                Net::Llama(m) => m.forward(&ids, tap)?,
                Net::Bert(m) => m.forward(&ids, tap)?,
            })
        })
    }

    /// Causal LM: logits for every position, row-major `[tokens.len(), vocab]`.
    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>, RuntimeError> {
        self.logits_from(tokens, 0)
    }

    /// Causal LM: the logits of positions `first..tokens.len()` only,
    /// row-major `[tokens.len() - first, vocab]` (perplexity scores the
    /// second half of a chunk, so it needs no more; the rest of the model
    /// still sees every token).
    pub fn logits_from(&self, tokens: &[u32], first: usize) -> Result<Vec<f32>, RuntimeError> {
        self.logits_batch(&[tokens], first)
    }

    /// How many sequences of `len` tokens to run as one batch: up to 2048
    /// tokens, llama-perplexity's default batch, which reads every weight
    /// once per batch instead of once per sequence.
    pub fn sequences_per_batch(len: usize) -> usize {
        (2048 / len.max(1)).max(1)
    }

    /// [`Self::logits_from`] for several sequences of one length, run as one
    /// batch: every weight is read once for all of them, which is faster
    /// than one sequence at a time. The logits of every sequence one after
    /// another, row-major `[seqs.len()·(len - first), vocab]` (split with
    /// `chunks(len(logits) / seqs.len())`).
    pub fn logits_batch(&self, seqs: &[&[u32]], first: usize) -> Result<Vec<f32>, RuntimeError> {
        let Net::Llama(m) = &self.net else {
            return Err(self.wrong("logits", "llama-family"));
        };
        let len = seqs.first().map_or(0, |s| s.len());
        if seqs.iter().any(|s| s.len() != len) {
            return Err(RuntimeError::Input(
                "a batch needs sequences of one length".into(),
            ));
        }
        let flat: Vec<u32> = seqs.concat();
        let ids = Tensor::from_vec(flat, (seqs.len(), len), &Device::Cpu)?;
        let ids = self.check_ids(&ids)?;
        if first >= len {
            return Err(RuntimeError::Input(format!(
                "logits from position {first} of {len} tokens"
            )));
        }
        self.run(|| Ok(m.logits(&ids, first, hook::Tap(self.hook.as_ref()))?))
    }

    /// Encoder: the mean-pooled last hidden state (attention mask all ones,
    /// token type 0), `[hidden]`.
    pub fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>, RuntimeError> {
        if !matches!(self.family, Family::Bert(_)) {
            return Err(self.wrong("embed", "bert"));
        }
        let ids = self.ids(tokens)?;
        let out = self.forward(&ids)?;
        Ok(out.mean(1)?.flatten_all()?.to_vec1::<f32>()?)
    }

    fn wrong(&self, op: &'static str, want: &'static str) -> RuntimeError {
        RuntimeError::WrongFamily {
            op,
            want,
            got: self.family.name(),
        }
    }

    fn ids(&self, tokens: &[u32]) -> Result<Tensor, RuntimeError> {
        Ok(Tensor::from_slice(tokens, (1, tokens.len()), &Device::Cpu)?)
    }

    fn check_ids(&self, ids: &Tensor) -> Result<Tensor, RuntimeError> {
        check_ids(&self.family, ids)
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

/// Checks ids: `[batch, seq]`, integers, within the vocabulary and the
/// position table; returns them as contiguous u32.
fn check_ids(family: &Family, ids: &Tensor) -> Result<Tensor, RuntimeError> {
    let (b, s) = ids.dims2().map_err(|_| {
        RuntimeError::Input(format!("ids must be [batch, seq], got {:?}", ids.dims()))
    })?;
    if b == 0 || s == 0 {
        return Err(RuntimeError::Input(format!("empty input {:?}", ids.dims())));
    }
    let (vocab, max_pos) = match family {
        Family::Llama(p) => (p.vocab_size, None),
        Family::Bert(p) => (p.vocab_size, Some(p.max_position_embeddings)),
    };
    if let Some(m) = max_pos {
        if s > m {
            return Err(RuntimeError::Input(format!(
                "{s} tokens exceed the model's {m} positions"
            )));
        }
    }
    let ids = match ids.dtype() {
        DType::U32 => ids.contiguous()?,
        DType::U8 | DType::I16 | DType::I32 | DType::I64 => {
            let min = ids.to_dtype(DType::I64)?.min_all()?.to_scalar::<i64>()?;
            if min < 0 {
                return Err(RuntimeError::Input(format!("negative token id {min}")));
            }
            ids.to_dtype(DType::I64)?
                .clamp(0i64, u32::MAX as i64)?
                .to_dtype(DType::U32)?
                .contiguous()?
        }
        other => {
            return Err(RuntimeError::Input(format!(
                "ids must be integers, got {other:?}"
            )))
        }
    };
    let max = ids.max_all()?.to_scalar::<u32>()?;
    if max as usize >= vocab {
        return Err(RuntimeError::Input(format!(
            "token id {max} is out of range for a vocabulary of {vocab}"
        )));
    }
    Ok(ids)
}

/// Process-wide setup for the runtime's speed; call it once at program start,
/// before any other candle use.
///
/// - Keeps candle's own worker pool to the calling thread (see
///   `configure_threads`; [`Runtime::new`] does this too, but only takes
///   effect if candle has not built that pool yet).
///
/// Memory: every candle op allocates its output, many of them megabytes.
/// glibc's malloc returned those blocks to the OS and faulted them in again
/// (a quarter of SmolLM2's forward pass), and tuned to keep them it kept
/// hundreds of MiB a layer-by-layer sweep had freed. The edgec binary uses
/// mimalloc, which reuses freed blocks and gives them back when idle, at the
/// same speed (calibrated Q4_K_M of SmolLM2: 21.8–22.4 s against 21.7–22.1 s).
pub fn init_process() {
    keep_candle_pool_inline();
}

/// A built network with its family and, when trainable, its Vars.
type Built = (Family, Net, Vec<(String, Var)>);

fn build(model: &Model, mode: weights::Mode) -> Result<Built, RuntimeError> {
    let family = model.meta.family.clone().ok_or(RuntimeError::NoFamily)?;
    let mut loader = weights::Loader::new(model, &family, mode);
    let net = match &family {
        Family::Llama(p) => Net::Llama(llama::Llama::load(p, &mut loader)?),
        Family::Bert(p) => Net::Bert(bert::Bert::load(p, &mut loader)?),
    };
    Ok((family, net, loader.vars))
}

/// Sets up threads.
///
/// The f32 matmuls (gemm) run on the current rayon pool, with as many tasks as
/// `RAYON_NUM_THREADS` says (candle reads it on every matmul; else the number
/// of physical cores). candle also has a pool of its own for element-wise ops
/// and quantized matmuls, sized from `CANDLE_NUM_THREADS` when first used,
/// whose workers spin between jobs and so take cores from gemm's workers: on
/// 2 cores keeping it to the calling thread made SmolLM2 1.6–2.2× faster. So
/// `CANDLE_NUM_THREADS` is set to 1 unless the user set it, and the runtime
/// runs quantized matmuls over row blocks on the rayon pool itself.
///
/// With `threads`, `RAYON_NUM_THREADS` is set to it and a rayon pool of that
/// size is returned when the current pool has another.
fn configure_threads(threads: Option<usize>) -> Result<Option<rayon::ThreadPool>, RuntimeError> {
    keep_candle_pool_inline();
    let Some(n) = threads else {
        return Ok(None);
    };
    if n == 0 {
        return Err(RuntimeError::Threads("threads must be at least 1".into()));
    }
    let v = n.to_string();
    if std::env::var("RAYON_NUM_THREADS").ok().as_deref() != Some(v.as_str()) {
        std::env::set_var("RAYON_NUM_THREADS", &v);
    }
    if rayon::current_num_threads() == n {
        return Ok(None);
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .map(Some)
        .map_err(|e| RuntimeError::Threads(e.to_string()))
}

/// Sets `CANDLE_NUM_THREADS=1` unless the user set it (see `configure_threads`).
fn keep_candle_pool_inline() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
            std::env::set_var("CANDLE_NUM_THREADS", "1");
        }
    });
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Runtime>();
}
