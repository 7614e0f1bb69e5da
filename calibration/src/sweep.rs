//! Sequential (layer-by-layer) calibration: the statistics of
//! [`collect_linear_inputs`](crate::collect_linear_inputs), with at most one
//! layer's weights in memory at a time.
//!
//! Every calibration sequence is embedded into an activation cache (the
//! hidden states of every batch). Then, for each layer in turn: the layer
//! alone is built from its tensors ([`Stage`]), every cached batch runs
//! through it while a hook collects its linear layers' input statistics,
//! a callback receives those statistics (and may return replacement
//! weights for the layer, e.g. quantized-then-dequantized ones), the
//! layer's outputs become the cache, and the layer is dropped with its
//! mapped pages. The head (a causal LM's final norm and LM head) comes last.
//!
//! Peak memory is one layer's weights, one layer's statistics, and the
//! activation cache, whatever the depth. The cache spills to a temporary
//! file beyond [`SweepOptions::cache_budget`] bytes. The statistics do not
//! depend on the thread count: batches run one after another, as
//! `collect_linear_inputs` runs them, and each layer's sums are added in
//! a fixed order.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};
use edgec_core::runtime::{Part, Runtime, RuntimeError, RuntimeOptions, Stage};
use edgec_core::{Family, Model};

use crate::stats::{ChannelStats, Collector, StatsOptions};

/// Replacement weights a callback returns for its layer: IR tensor name
/// (e.g. `model.layers.3.mlp.down_proj.weight`) → f32 values in the
/// tensor's shape, row-major.
pub type Replacements = BTreeMap<String, Vec<f32>>;

/// An error a callback returns; the sweep stops with it.
pub type CallbackError = Box<dyn std::error::Error + Send + Sync>;

/// How to sweep.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// What statistics to collect (as for `collect_linear_inputs`).
    pub stats: StatsOptions,
    /// Whether a layer's outputs, the next layer's inputs, are computed
    /// with the weights its callback returned (llm-compressor's "propagate
    /// quantized outputs": later layers are calibrated on what the
    /// compressed model will feed them) or with the original weights. A
    /// layer whose callback returns no replacement runs on its own weights
    /// either way.
    pub propagate: bool,
    /// Bytes of activations kept in memory (the cache being read and the
    /// one being written together); batches beyond it go to a temporary
    /// file and are read back one at a time.
    pub cache_budget: usize,
    /// Where the temporary file goes (the system's temporary folder if
    /// `None`). It has no name and disappears with the sweep.
    pub spill_dir: Option<PathBuf>,
    /// The runtime's threads and quantized matmul.
    pub runtime: RuntimeOptions,
}

impl SweepOptions {
    /// Propagating replaced weights, with a 1 GiB in-memory cache.
    pub fn new(stats: StatsOptions) -> Self {
        SweepOptions {
            stats,
            propagate: true,
            cache_budget: 1 << 30,
            spill_dir: None,
            runtime: RuntimeOptions::default(),
        }
    }
}

/// What a sweep did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SweepReport {
    /// Tokens in the calibration sequences.
    pub tokens: u64,
    /// Batches they ran in.
    pub batches: usize,
    /// Layers swept (the head not counted).
    pub layers: usize,
    /// Layers whose outputs were computed with replaced weights.
    pub propagated_layers: usize,
    /// The most bytes of cached activations held in memory at once (the
    /// batch being run comes on top).
    pub peak_cache_bytes: usize,
    /// The largest a temporary file of one layer's activations grew (0 if
    /// nothing spilled). While a layer runs, the files of its inputs and of
    /// its outputs both exist.
    pub peak_spilled_bytes: u64,
    /// Per layer, the mean over tokens of the cosine between the residual
    /// stream entering and leaving it (ShortGPT's block influence is one
    /// minus it): a layer near 1 barely changes its input.
    pub block_cosine: Vec<f64>,
    /// Per layer, the mean root-mean-square of the residual stream entering
    /// it (the scale a layer's contributions are measured against).
    pub block_input_rms: Vec<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("calibration sequences: {0}")]
    Input(String),
    #[error("{part:?}: replacement weights: {msg}")]
    Replacement { part: Part, msg: String },
    #[error("{part:?}: {source}")]
    Callback { part: Part, source: CallbackError },
    #[error("activation cache file: {0}")]
    Spill(#[from] std::io::Error),
}

impl From<candle_core::Error> for SweepError {
    fn from(e: candle_core::Error) -> Self {
        SweepError::Runtime(RuntimeError::Candle(e))
    }
}

/// The units [`sweep_linear_inputs`] reports progress in, for a bar's
/// length: every token through every layer and through the head.
pub fn sweep_units(family: &Family, seqs: &[Vec<u32>]) -> u64 {
    let tokens: u64 = seqs.iter().map(|s| s.len() as u64).sum();
    tokens * (family.num_layers() as u64 + 1)
}

/// Runs `seqs` (token ids, all of one length) through `model` one layer at
/// a time, in batches of up to 2048 tokens as `collect_linear_inputs` runs
/// them, and calls `on_layer` once per layer (`Part::Layer(i)`, in order)
/// and once for the head (`Part::Head`) with the statistics of that part's
/// linear layers' inputs, keyed by module path exactly as
/// `collect_linear_inputs` keys them (a causal LM's `lm_head` from the
/// final norm's output; a BERT head has no linear layer and gets an empty
/// map). Gram matrices are collected for the layers `opts.stats.gram_for`
/// names.
///
/// `on_layer` may return replacement weights for tensors of its part (see
/// [`Part::tensors`]); with `opts.propagate` the next layer's inputs are
/// computed with them. The statistics are not kept: the callback owns
/// them. `progress` is called after every batch of every layer with the
/// units done (see [`sweep_units`]).
pub fn sweep_linear_inputs(
    model: &Model,
    seqs: &[Vec<u32>],
    opts: &SweepOptions,
    on_layer: &mut dyn FnMut(
        Part,
        BTreeMap<String, ChannelStats>,
    ) -> Result<Replacements, CallbackError>,
    progress: &dyn Fn(u64),
) -> Result<SweepReport, SweepError> {
    let family = model.meta.family.as_ref().ok_or(RuntimeError::NoFamily)?;
    let len = seqs.first().map_or(0, Vec::len);
    if len == 0 {
        return Err(SweepError::Input("no sequences, or empty ones".into()));
    }
    if seqs.iter().any(|s| s.len() != len) {
        return Err(SweepError::Input(format!(
            "every sequence must have {len} tokens, as the first has"
        )));
    }
    let batches: Vec<&[Vec<u32>]> = seqs.chunks(Runtime::sequences_per_batch(len)).collect();
    let mut report = SweepReport {
        tokens: (seqs.len() * len) as u64,
        batches: batches.len(),
        ..SweepReport::default()
    };
    let mut budget = Budget {
        limit: opts.cache_budget,
        report: &mut report,
    };

    let mut cache = Cache::new(opts.spill_dir.clone());
    {
        let stage = Stage::new(model, Part::Embeddings, &opts.runtime)?;
        for batch in &batches {
            let ids = Tensor::from_vec(batch.concat(), (batch.len(), len), &Device::Cpu)?;
            let x = stage.forward(&ids)?;
            cache.push(values(&x)?, 0, &mut budget)?;
        }
    }

    let mut done = 0u64;
    for part in Part::all(family).into_iter().skip(1) {
        let head = part == Part::Head;
        // BERT's head passes the hidden states through: nothing to observe.
        let observe = !(head && matches!(family, Family::Bert(_)));
        let mut stage = Stage::new(model, part, &opts.runtime)?;
        let collector = Arc::new(Mutex::new(Collector::default()));
        stage.set_hook(Some(Collector::hook(&collector, &opts.stats)));
        // Without propagation this pass's outputs are the next inputs; with
        // it they are computed once the callback has answered.
        let keep = !opts.propagate && !head;
        let mut next = Cache::new(opts.spill_dir.clone());
        let mut cosine = MeanCosine::default();
        for (i, batch) in batches.iter().enumerate() {
            if observe {
                let x = if keep { cache.take(i)? } else { cache.read(i)? };
                let x = Tensor::from_vec(x, (batch.len(), len, hidden(family)), &Device::Cpu)?;
                if head {
                    if let Family::Llama(_) = family {
                        // Only the last position's logits, as
                        // collect_linear_inputs asks for them.
                        stage.logits_from(&x, len - 1)?;
                    }
                } else {
                    let y = stage.forward(&x)?;
                    if keep {
                        let y = values(&y)?;
                        cosine.add(&values(&x)?, &y, hidden(family));
                        next.push(y, cache.mem, &mut budget)?;
                    }
                }
            }
            done += (batch.len() * len) as u64;
            progress(done);
        }
        // The stage's f32 weights are released before the callback, whose
        // AWQ and GPTQ work is the sweep's peak; with propagation the stage
        // is built again from the callback's weights.
        drop(stage);
        let stats = Collector::finish(collector)?;
        let replaced = on_layer(part, stats)
            .map_err(|source| SweepError::Callback { part, source })
            .and_then(|r| replacements(model, family, part, r))?;
        if head {
            break;
        }
        if opts.propagate {
            if !replaced.is_empty() {
                budget.report.propagated_layers += 1;
            }
            let stage = Stage::with_replaced(model, part, &opts.runtime, &replaced)?;
            for (i, batch) in batches.iter().enumerate() {
                let x = cache.take(i)?;
                let t =
                    Tensor::from_vec(x.clone(), (batch.len(), len, hidden(family)), &Device::Cpu)?;
                let y = values(&stage.forward(&t)?)?;
                cosine.add(&x, &y, hidden(family));
                next.push(y, cache.mem, &mut budget)?;
            }
        }
        budget.report.block_cosine.push(cosine.mean());
        budget.report.block_input_rms.push(cosine.mean_rms());
        cache = next;
        budget.report.layers += 1;
    }
    Ok(report)
}

/// The running mean of the cosine between rows of two `[tokens, hidden]`
/// matrices.
#[derive(Default)]
struct MeanCosine {
    sum: f64,
    sum_rms: f64,
    rows: u64,
}

impl MeanCosine {
    fn add(&mut self, x: &[f32], y: &[f32], hidden: usize) {
        for (a, b) in x.chunks(hidden).zip(y.chunks(hidden)) {
            let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
            for (&u, &v) in a.iter().zip(b) {
                let (u, v) = (u as f64, v as f64);
                ab += u * v;
                aa += u * u;
                bb += v * v;
            }
            let denom = (aa * bb).sqrt();
            self.sum += if denom > 0.0 { ab / denom } else { 1.0 };
            self.sum_rms += (aa / hidden as f64).sqrt();
            self.rows += 1;
        }
    }

    fn mean(&self) -> f64 {
        if self.rows == 0 {
            1.0
        } else {
            self.sum / self.rows as f64
        }
    }

    fn mean_rms(&self) -> f64 {
        self.sum_rms / self.rows.max(1) as f64
    }
}

fn hidden(family: &Family) -> usize {
    match family {
        Family::Llama(p) => p.hidden_size,
        Family::Bert(p) => p.hidden_size,
    }
}

/// A tensor's values, row-major.
fn values(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// Checks a callback's replacements against `part`'s tensors and makes
/// them IR tensors.
fn replacements(
    model: &Model,
    family: &Family,
    part: Part,
    r: Replacements,
) -> Result<Vec<edgec_core::Tensor>, SweepError> {
    let names = part.tensors(family);
    r.into_iter()
        .map(|(name, values)| {
            let err = |msg: String| SweepError::Replacement { part, msg };
            if !names.contains(&name) {
                return Err(err(format!("{name} is not one of this part's tensors")));
            }
            let shape = model
                .tensor(&name)
                .ok_or_else(|| err(format!("the model has no {name}")))?
                .shape
                .clone();
            edgec_core::Tensor::from_f32(name, shape, values).map_err(|e| err(e.to_string()))
        })
        .collect()
}

/// The activation memory limit and the report that records the peaks.
struct Budget<'a> {
    limit: usize,
    report: &'a mut SweepReport,
}

enum Entry {
    Mem(Vec<f32>),
    Spilled { offset: u64, len: usize },
}

/// The hidden states of every batch, in memory or in a temporary file.
struct Cache {
    entries: Vec<Option<Entry>>,
    /// Bytes of the entries held in memory.
    mem: usize,
    file: Option<File>,
    file_len: u64,
    dir: Option<PathBuf>,
}

impl Cache {
    fn new(dir: Option<PathBuf>) -> Self {
        Cache {
            entries: Vec::new(),
            mem: 0,
            file: None,
            file_len: 0,
            dir,
        }
    }

    /// Appends a batch: in memory while this cache and the `other_mem`
    /// bytes of the other one fit the budget, in the file otherwise.
    fn push(&mut self, v: Vec<f32>, other_mem: usize, budget: &mut Budget) -> std::io::Result<()> {
        let bytes = std::mem::size_of_val(v.as_slice());
        if self.mem + other_mem + bytes <= budget.limit {
            self.mem += bytes;
            let total = self.mem + other_mem;
            budget.report.peak_cache_bytes = budget.report.peak_cache_bytes.max(total);
            self.entries.push(Some(Entry::Mem(v)));
            return Ok(());
        }
        if self.file.is_none() {
            self.file = Some(match &self.dir {
                Some(d) => tempfile::tempfile_in(d)?,
                None => tempfile::tempfile()?,
            });
        }
        let file = self.file.as_mut().expect("just made");
        file.seek(SeekFrom::Start(self.file_len))?;
        file.write_all(f32_bytes(&v))?;
        self.entries.push(Some(Entry::Spilled {
            offset: self.file_len,
            len: v.len(),
        }));
        self.file_len += bytes as u64;
        budget.report.peak_spilled_bytes = budget.report.peak_spilled_bytes.max(self.file_len);
        Ok(())
    }

    /// Batch `i`, which stays in the cache.
    fn read(&mut self, i: usize) -> std::io::Result<Vec<f32>> {
        let (offset, len) = match &self.entries[i] {
            Some(Entry::Mem(v)) => return Ok(v.clone()),
            Some(Entry::Spilled { offset, len }) => (*offset, *len),
            None => return Err(taken(i)),
        };
        self.read_spilled(offset, len)
    }

    /// Batch `i`, which leaves the cache.
    fn take(&mut self, i: usize) -> std::io::Result<Vec<f32>> {
        match self.entries[i].take() {
            Some(Entry::Mem(v)) => {
                self.mem -= std::mem::size_of_val(v.as_slice());
                Ok(v)
            }
            Some(Entry::Spilled { offset, len }) => self.read_spilled(offset, len),
            None => Err(taken(i)),
        }
    }

    fn read_spilled(&mut self, offset: u64, len: usize) -> std::io::Result<Vec<f32>> {
        let file = self.file.as_mut().expect("a spilled batch has a file");
        let mut v = vec![0f32; len];
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(f32_bytes_mut(&mut v))?;
        Ok(v)
    }
}

fn taken(i: usize) -> std::io::Error {
    std::io::Error::other(format!("batch {i} was already taken from the cache"))
}

fn f32_bytes(v: &[f32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

fn f32_bytes_mut(v: &mut [f32]) -> &mut [u8] {
    bytemuck::cast_slice_mut(v)
}
