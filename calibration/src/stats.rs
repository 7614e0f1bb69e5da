//! Activation statistics of every linear layer's input, collected through
//! the runtime's hook while it runs calibration sequences.
//!
//! Per input channel: the sum of |x| and of x² over every token (what AWQ's
//! scales and llama.cpp's importance matrix are made of), and for chosen
//! layers the Gram matrix Σ x·xᵀ over tokens spread through the data (how
//! a weight error turns into an output error). Memory grows with channels, not tokens.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use edgec_core::runtime::{Hook, Runtime, RuntimeError};
use rayon::prelude::*;

/// The statistics of one linear layer's input.
#[derive(Debug, Clone, Default)]
pub struct ChannelStats {
    /// Tokens seen.
    pub count: u64,
    pub sum_abs: Vec<f64>,
    pub sum_sq: Vec<f64>,
    /// Σ x·xᵀ, row-major `[in, in]`, over `gram_count` tokens spread evenly
    /// over the data (f32: the matrices are large). Only the upper triangle
    /// is summed; [`ChannelStats::gram_mean`] gives the whole matrix.
    pub gram: Option<Vec<f32>>,
    pub gram_count: u64,
    /// The layer whose input this is too (q for k and v, gate for up).
    pub shared_with: Option<String>,
}

impl ChannelStats {
    pub fn channels(&self) -> usize {
        self.sum_sq.len()
    }

    /// Mean |x| per channel.
    pub fn mean_abs(&self) -> Vec<f32> {
        let n = self.count.max(1) as f64;
        self.sum_abs.iter().map(|v| (v / n) as f32).collect()
    }

    /// Mean x² per channel (llama.cpp's importance).
    pub fn mean_sq(&self) -> Vec<f32> {
        let n = self.count.max(1) as f64;
        self.sum_sq.iter().map(|v| (v / n) as f32).collect()
    }

    /// The mean of x·xᵀ, when collected.
    pub fn gram_mean(&self) -> Option<Vec<f32>> {
        let n = self.gram_count.max(1) as f64;
        let mut g: Vec<f32> = self
            .gram
            .as_ref()?
            .iter()
            .map(|v| (*v as f64 / n) as f32)
            .collect();
        edgec_core::linalg::mirror_upper(&mut g, self.channels());
        Some(g)
    }

    fn add(&mut self, x: &[f32], cols: usize, gram_step: Option<usize>) {
        let rows = x.len() / cols;
        if self.sum_sq.is_empty() {
            self.sum_abs = vec![0.0; cols];
            self.sum_sq = vec![0.0; cols];
        }
        // Column sums over row blocks in parallel, added in block order so
        // the result does not depend on the thread count.
        const BLOCK: usize = 64;
        let partial: Vec<(Vec<f64>, Vec<f64>)> = x
            .par_chunks(BLOCK * cols)
            .map(|block| {
                let mut a = vec![0f64; cols];
                let mut s = vec![0f64; cols];
                for row in block.chunks_exact(cols) {
                    for ((a, s), &v) in a.iter_mut().zip(s.iter_mut()).zip(row) {
                        *a += v.abs() as f64;
                        *s += v as f64 * v as f64;
                    }
                }
                (a, s)
            })
            .collect();
        for (a, s) in partial {
            for (t, v) in self.sum_abs.iter_mut().zip(a) {
                *t += v;
            }
            for (t, v) in self.sum_sq.iter_mut().zip(s) {
                *t += v;
            }
        }
        self.count += rows as u64;
        let Some(step) = gram_step else { return };
        let acc = self.gram.get_or_insert_with(|| vec![0.0; cols * cols]);
        let take = edgec_core::linalg::gram_accumulate(x, rows, cols, step, acc);
        self.gram_count += take as u64;
    }
}

/// Calls `f` with the values of the f32 matrix `x` (row-major) and its
/// columns: in place when `x` is contiguous in CPU memory, else from a copy.
fn with_rows(x: &Tensor, f: impl FnOnce(&[f32], usize)) -> candle_core::Result<()> {
    let (rows, cols) = x.dims2()?;
    {
        let (storage, layout) = x.storage_and_layout();
        if let (candle_core::Storage::Cpu(cpu), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            if let Ok(all) = cpu.as_slice::<f32>() {
                if b - a == rows * cols {
                    f(&all[a..b], cols);
                    return Ok(());
                }
            }
        }
    }
    f(&x.flatten_all()?.to_vec1::<f32>()?, cols);
    Ok(())
}

/// What to collect.
#[derive(Debug, Clone)]
pub struct StatsOptions {
    /// Linear layers (module paths, e.g. `model.layers.0.self_attn.q_proj`)
    /// whose input Gram matrix is wanted.
    pub gram_for: Vec<String>,
    /// Every how many tokens one enters the Gram matrices (1: all).
    pub gram_step: usize,
}

/// Accumulates hook observations. Linear layers that share one input
/// tensor (q, k, v; gate, up) are summed once and reported under each name.
#[derive(Default)]
pub(crate) struct Collector {
    stats: HashMap<String, ChannelStats>,
    /// name → the name whose statistics it shares
    alias: HashMap<String, String>,
    last: Option<(candle_core::TensorId, String)>,
    error: Option<String>,
}

impl Collector {
    /// A hook that feeds `collector` the input of every linear layer (a
    /// causal LM's `lm_head` from the final norm's output).
    pub(crate) fn hook(collector: &Arc<Mutex<Collector>>, opts: &StatsOptions) -> Hook {
        let c = Arc::clone(collector);
        let gram_for: std::collections::HashSet<String> = opts.gram_for.iter().cloned().collect();
        let step = opts.gram_step.max(1);
        Arc::new(move |name: &str, x: &Tensor| {
            // The LM head sees only the rows whose logits are asked for; the
            // final norm's output is its input at every position.
            let layer = match name {
                "model.norm:output" => "lm_head",
                "lm_head:input" => return,
                _ => match name.strip_suffix(":input") {
                    Some(l) => l,
                    None => return,
                },
            };
            let mut c = c.lock().expect("stats lock");
            if c.error.is_some() {
                return;
            }
            if let Some((id, first)) = &c.last {
                if *id == x.id() && first != layer {
                    let first = first.clone();
                    c.alias.insert(layer.to_string(), first);
                    return;
                }
            }
            c.last = Some((x.id(), layer.to_string()));
            let gram = gram_for.contains(layer).then_some(step);
            // The activations are read where they are (no copy of a
            // [tokens, channels] matrix per layer and batch).
            let added = with_rows(x, |values, cols| {
                c.stats
                    .entry(layer.to_string())
                    .or_default()
                    .add(values, cols, gram)
            });
            if let Err(e) = added {
                c.error = Some(format!("{layer}: {e}"));
            }
        })
    }

    /// The statistics by module path, a shared input under each of its
    /// layers' names. Every hook made by [`Collector::hook`] must be gone.
    pub(crate) fn finish(
        collector: Arc<Mutex<Collector>>,
    ) -> Result<BTreeMap<String, ChannelStats>, RuntimeError> {
        let c = Arc::try_unwrap(collector)
            .ok()
            .expect("the hook was dropped")
            .into_inner()
            .expect("stats lock");
        if let Some(e) = c.error {
            return Err(RuntimeError::Input(format!("activation statistics: {e}")));
        }
        let mut out: BTreeMap<String, ChannelStats> = c.stats.into_iter().collect();
        for (name, first) in c.alias {
            if let Some(mut s) = out.get(&first).cloned() {
                s.shared_with = Some(first);
                out.insert(name, s);
            }
        }
        Ok(out)
    }
}

/// Runs `seqs` (token ids, all of one length) through `rt` in batches of
/// up to 2048 tokens and returns the statistics of every linear layer's
/// input by module path (a causal LM's `lm_head` included, from the final
/// norm's output).
/// `progress` is called with the tokens done after every batch.
pub fn collect_linear_inputs(
    rt: &mut Runtime,
    seqs: &[Vec<u32>],
    opts: &StatsOptions,
    progress: &dyn Fn(u64),
) -> Result<BTreeMap<String, ChannelStats>, RuntimeError> {
    let collector = Arc::new(Mutex::new(Collector::default()));
    rt.set_hook(Some(Collector::hook(&collector, opts)));
    let len = seqs.first().map_or(0, Vec::len);
    let per_batch = Runtime::sequences_per_batch(len);
    let mut done = 0u64;
    let result = (|| -> Result<(), RuntimeError> {
        for batch in seqs.chunks(per_batch) {
            let refs: Vec<&[u32]> = batch.iter().map(Vec::as_slice).collect();
            if matches!(rt.family(), edgec_core::Family::Llama(_)) {
                // Only the last position's logits: the head's input
                // statistics come from the final norm.
                rt.logits_batch(&refs, len.saturating_sub(1))?;
            } else {
                let ids =
                    Tensor::from_vec(refs.concat(), (refs.len(), len), &candle_core::Device::Cpu)?;
                rt.forward(&ids)?;
            }
            done += (batch.len() * len) as u64;
            progress(done);
        }
        Ok(())
    })();
    rt.set_hook(None);
    result?;
    Collector::finish(collector)
}
