//! Calibration recipes: activation statistics from text, AWQ scaling and
//! importance for the quantizers, joined to the GGUF writer's plan.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use edgec_calibration::StatsOptions;
use edgec_calibration::{calibration_sequences, collect_linear_inputs, read_text, ChannelStats};
use edgec_core::runtime::{Runtime, RuntimeOptions};
use edgec_core::{DType, Family, GgmlType, LlamaParams, Model, Tensor, TensorData};
use edgec_formats::gguf::gguf_tensor_name;
use edgec_formats::imatrix::{ImatrixEntry, ImportanceMatrix};
use edgec_formats::FormatError;
use edgec_passes::awq::{self, AwqOptions, GroupReport, InputStats, RowQuantizer};
use edgec_passes::ggml_quant;
use edgec_passes::gptq::Hessian;
use serde::{Deserialize, Serialize};

use crate::progress::{Progress, Unit};

/// How calibration data shapes the quantization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Plain rounding (no use of the data).
    Rtn,
    /// AWQ scales and clipping, then plain rounding.
    Awq,
    /// Importance-weighted rounding (mean x² per input column).
    Imatrix,
    /// AWQ, then importance-weighted rounding of the scaled weights.
    #[serde(rename = "awq+imatrix")]
    AwqImatrix,
    /// Importance-weighted rounding with error feedback (GPTQ-style).
    Gptq,
    /// AWQ, then importance-weighted rounding with error feedback.
    #[serde(rename = "awq+gptq")]
    AwqGptq,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Rtn => "rtn",
            Method::Awq => "awq",
            Method::Imatrix => "imatrix",
            Method::AwqImatrix => "awq+imatrix",
            Method::Gptq => "gptq",
            Method::AwqGptq => "awq+gptq",
        }
    }

    fn awq(self) -> bool {
        matches!(self, Method::Awq | Method::AwqImatrix | Method::AwqGptq)
    }

    pub fn importance(self) -> bool {
        !matches!(self, Method::Rtn | Method::Awq)
    }

    fn gptq(self) -> bool {
        matches!(self, Method::Gptq | Method::AwqGptq)
    }
}

/// Tokens the Gram matrices (AWQ's error measure, GPTQ's Hessians) are
/// summed over, at most: every k-th token of the calibration data. 4096
/// gave SmolLM2's Q4_K_M and IQ4_NL the same KL-divergence as 8192 within
/// run-to-run spread, at half the cost; 2048 was measurably worse on IQ4_NL.
const GRAM_TOKENS: usize = 4096;

/// Calibration sequences from a text file, tokenized with the model's own
/// tokenizer: `samples` windows of `len` tokens spread evenly over it.
pub fn sequences(model: &Model, data: &Path, samples: usize, len: usize) -> Result<Vec<Vec<u32>>> {
    if samples == 0 || len < 2 {
        bail!("calibration needs at least one sample of 2 tokens or more");
    }
    let text = read_text(data)?;
    let tok = crate::tokenizer_of(model, data)?;
    let tokens = tok
        .encode(&text, false)
        .with_context(|| format!("{}: tokenizing", data.display()))?;
    if tokens.len() < len {
        bail!(
            "{}: {} tokens, fewer than one calibration sample of {len}",
            data.display(),
            tokens.len()
        );
    }
    let mut seqs = calibration_sequences(&tokens, samples, len);
    if let Some(bos) = tok.bos().filter(|_| tok.add_bos()) {
        for s in &mut seqs {
            s[0] = bos;
        }
    }
    Ok(seqs)
}

/// Runs the model on `seqs` and returns every linear layer's input
/// statistics (with Gram matrices for `gram_for`).
pub fn statistics(
    model: &Model,
    seqs: &[Vec<u32>],
    gram_for: Vec<String>,
    progress: &dyn Progress,
) -> Result<BTreeMap<String, ChannelStats>> {
    let mut rt = Runtime::new(model, &RuntimeOptions::default())?;
    let total: u64 = seqs.iter().map(|s| s.len() as u64).sum();
    let bar = progress.bar(total, "calibrate", Unit::Tokens);
    let stats = collect_linear_inputs(
        &mut rt,
        seqs,
        &StatsOptions {
            gram_for,
            gram_step: (total as usize).div_ceil(GRAM_TOKENS),
        },
        &|done| bar.set_position(done),
    )?;
    bar.finish();
    Ok(stats)
}

/// The IR weight each linear layer's statistics belong to: `{module}.weight`,
/// and for a tied LM head the embedding table it multiplies by.
pub fn weight_of(model: &Model, module: &str) -> Option<String> {
    let w = format!("{module}.weight");
    if model.tensor(&w).is_some() {
        return Some(w);
    }
    (module == "lm_head" && model.tensor("model.embed_tokens.weight").is_some())
        .then(|| "model.embed_tokens.weight".to_string())
}

/// Quantizes rows as the GGUF plan will: each weight to its planned type.
struct PlanQuantizer {
    types: HashMap<String, GgmlType>,
}

impl RowQuantizer for PlanQuantizer {
    fn round_trip(
        &self,
        name: &str,
        row: &[f32],
        importance: Option<&[f32]>,
        out: &mut [f32],
    ) -> Result<(), String> {
        let ty = *self
            .types
            .get(name)
            .ok_or_else(|| format!("{name}: no planned type"))?;
        ggml_quant::round_trip(ty, row, importance, out).map_err(|e| format!("{name}: {e}"))
    }

    fn block(&self, name: &str) -> Option<usize> {
        self.types
            .get(name)
            .filter(|t| t.is_quantized())
            .map(|t| t.block_size())
    }
}

#[derive(Serialize)]
pub struct CalibReport {
    pub method: &'static str,
    pub samples: usize,
    pub tokens: usize,
    pub seconds: f64,
    /// Where the time went: the forward pass with statistics, AWQ's search,
    /// and the Hessian factors (the rounding itself is in the quantize report).
    pub seconds_statistics: f64,
    pub seconds_awq: f64,
    pub seconds_hessians: f64,
    /// Sum over AWQ groups of the output error with plain rounding and
    /// with the chosen scales and clipping (calibration activations).
    pub awq_error_rtn: Option<f64>,
    pub awq_error_final: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupReport>,
}

/// A model prepared for quantization: possibly rescaled weights, and the
/// importance to round them with.
pub struct Calibrated {
    pub model: Model,
    pub importance: Option<HashMap<String, Vec<f32>>>,
    pub hessians: Option<HashMap<String, Arc<Hessian>>>,
    pub report: CalibReport,
}

/// Calibrates `model` on `seqs` for quantization under `types` (IR weight
/// name → planned ggml type) with `method`.
pub fn calibrate(
    model: &Model,
    types: HashMap<String, GgmlType>,
    seqs: &[Vec<u32>],
    method: Method,
    awq_opts: &AwqOptions,
    progress: &dyn Progress,
) -> Result<Calibrated> {
    let start = std::time::Instant::now();
    let tokens = seqs.iter().map(Vec::len).sum();
    let mut report = CalibReport {
        method: method.name(),
        samples: seqs.len(),
        tokens,
        seconds: 0.0,
        seconds_statistics: 0.0,
        seconds_awq: 0.0,
        seconds_hessians: 0.0,
        awq_error_rtn: None,
        awq_error_final: None,
        groups: vec![],
    };
    if method == Method::Rtn {
        report.seconds = start.elapsed().as_secs_f64();
        return Ok(Calibrated {
            model: model.clone(),
            importance: None,
            hessians: None,
            report,
        });
    }
    let llama = match &model.meta.family {
        Some(Family::Llama(p)) => Some(p.clone()),
        _ => None,
    };
    if method.awq() && llama.is_none() {
        bail!("AWQ scaling is implemented for the llama family; use --method imatrix");
    }
    let gram_for = gram_inputs(model, llama.as_ref(), method);
    let stats = statistics(model, seqs, gram_for, progress)?;
    report.seconds_statistics = start.elapsed().as_secs_f64();
    let mut out = model.clone();
    let mut scales: HashMap<String, Vec<f32>> = HashMap::new();
    if let (Some(p), true) = (&llama, method.awq()) {
        let lookup = |module: &str| -> Option<InputStats> {
            let s = stats.get(module)?;
            Some(InputStats {
                mean_abs: s.mean_abs(),
                mean_sq: s.mean_sq(),
                gram: s.gram_mean()?,
            })
        };
        let quant = PlanQuantizer { types };
        let opts = AwqOptions {
            importance: method.importance(),
            ..awq_opts.clone()
        };
        let bar = progress.bar(p.num_layers as u64, "awq", Unit::Items);
        let result = awq::awq_llama(model, p, &lookup, &quant, &opts, &|| bar.inc(1))?;
        bar.finish();
        report.awq_error_rtn = Some(result.groups.iter().map(|g| g.error_rtn).sum());
        report.awq_error_final = Some(result.groups.iter().map(|g| g.error_final).sum());
        report.groups = result.groups;
        scales = result.input_scales;
        replace_tensors(&mut out, result.tensors)?;
        report.seconds_awq = start.elapsed().as_secs_f64() - report.seconds_statistics;
    }
    let importance = method
        .importance()
        .then(|| importance_of(model, &stats, &scales));
    let before_hessians = start.elapsed().as_secs_f64();
    let hessians = method
        .gptq()
        .then(|| hessians(model, &stats, &scales, progress))
        .transpose()?;
    report.seconds = start.elapsed().as_secs_f64();
    report.seconds_hessians = report.seconds - before_hessians;
    Ok(Calibrated {
        model: out,
        importance,
        hessians,
        report,
    })
}

/// The linear layers whose inputs need Gram matrices: every one for GPTQ
/// (shared inputs are summed once), AWQ's groups for AWQ alone.
fn gram_inputs(model: &Model, llama: Option<&LlamaParams>, method: Method) -> Vec<String> {
    if method.gptq() {
        return model
            .tensors
            .iter()
            .filter(|t| t.shape.len() == 2)
            .filter_map(|t| t.name.strip_suffix(".weight").map(str::to_string))
            .collect();
    }
    match (llama, method.awq()) {
        (Some(p), true) => awq::gram_layers(p),
        _ => vec![],
    }
}

/// Per weight (IR name), the importance of its input columns: mean x², over
/// s² where AWQ scaled the column by s.
fn importance_of(
    model: &Model,
    stats: &BTreeMap<String, ChannelStats>,
    scales: &HashMap<String, Vec<f32>>,
) -> HashMap<String, Vec<f32>> {
    stats
        .iter()
        .filter_map(|(module, s)| {
            let w = weight_of(model, module)?;
            let mut imp = s.mean_sq();
            if let Some(sc) = scales.get(&w) {
                for (v, s) in imp.iter_mut().zip(sc) {
                    *v /= s * s;
                }
            }
            Some((w, imp))
        })
        .collect()
}

/// Damping of the Hessians, as a fraction of their mean diagonal (GPTQ's).
const DAMP: f64 = 0.01;

/// The GPTQ factor of every weight whose input has a Gram matrix, for the
/// input as the (possibly AWQ-scaled) weight sees it: `G / (s·sᵀ)`. Weights
/// that share an input and its scales share one factor.
/// The weights that read each input with a Gram matrix, keyed by the
/// input's stats entry (q, k and v share q's; gate and up share gate's).
pub(crate) fn hessian_inputs(
    model: &Model,
    stats: &BTreeMap<String, ChannelStats>,
) -> BTreeMap<String, Vec<String>> {
    let mut by_input: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (module, s) in stats {
        if s.gram.is_none() {
            continue;
        }
        let Some(w) = weight_of(model, module) else {
            continue;
        };
        let input = s.shared_with.clone().unwrap_or_else(|| module.clone());
        by_input.entry(input).or_default().push(w);
    }
    by_input
}

/// `names` grouped by the input whose Gram matrix they read (one Hessian
/// per group, built and freed in turn), then the others one by one.
pub(crate) fn by_gram_input(
    model: &Model,
    stats: &BTreeMap<String, ChannelStats>,
    names: &[String],
) -> Vec<(Option<String>, Vec<String>)> {
    let wanted: std::collections::HashSet<&String> = names.iter().collect();
    let mut groups: Vec<(Option<String>, Vec<String>)> = hessian_inputs(model, stats)
        .into_iter()
        .map(|(input, ws)| {
            (
                Some(input),
                ws.into_iter().filter(|w| wanted.contains(w)).collect(),
            )
        })
        .filter(|(_, ws): &(_, Vec<String>)| !ws.is_empty())
        .collect();
    let grouped: std::collections::HashSet<String> = groups
        .iter()
        .flat_map(|(_, ws)| ws.iter().cloned())
        .collect();
    groups.extend(
        names
            .iter()
            .filter(|n| !grouped.contains(*n))
            .map(|n| (None, vec![n.clone()])),
    );
    groups
}

/// GPTQ's Hessian of `input` (Gram matrix from `stats`, divided by the AWQ
/// input scales of the first weight reading it, where there are some).
pub(crate) fn hessian_of(
    stats: &BTreeMap<String, ChannelStats>,
    input: &str,
    weights: &[String],
    scales: &HashMap<String, Vec<f32>>,
) -> Result<Hessian> {
    let s = &stats[input];
    let cols = s.channels();
    let mut g = s.gram_mean().context("filtered on gram")?;
    if let Some(sc) = weights.first().and_then(|w| scales.get(w)) {
        for i in 0..cols {
            for j in 0..cols {
                g[i * cols + j] /= sc[i] * sc[j];
            }
        }
    }
    Hessian::new(g, cols, DAMP).map_err(|e| anyhow::anyhow!("input of {input}: {e}"))
}

/// Every weight's Hessian, built in parallel (one-shot calibration, which
/// holds them all until the writer is done).
fn hessians(
    model: &Model,
    stats: &BTreeMap<String, ChannelStats>,
    scales: &HashMap<String, Vec<f32>>,
    progress: &dyn Progress,
) -> Result<HashMap<String, Arc<Hessian>>> {
    use rayon::prelude::*;
    let by_input = hessian_inputs(model, stats);
    let bar = progress.bar(by_input.len() as u64, "hessians", Unit::Items);
    let built: Vec<(Vec<String>, Arc<Hessian>)> = by_input
        .into_par_iter()
        .map(|(input, weights)| {
            let h = hessian_of(stats, &input, &weights, scales)?;
            bar.inc(1);
            Ok((weights, Arc::new(h)))
        })
        .collect::<Result<_>>()?;
    bar.finish();
    Ok(built
        .into_iter()
        .flat_map(|(ws, h)| ws.into_iter().map(move |w| (w, Arc::clone(&h))))
        .collect())
}

/// Replaces tensors of `model` by new f32 values of the same shape.
pub(crate) fn replace_tensors(
    model: &mut Model,
    mut values: HashMap<String, Vec<f32>>,
) -> Result<()> {
    for t in &mut model.tensors {
        if let Some(v) = values.remove(&t.name) {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            *t = Tensor::new(
                t.name.clone(),
                t.shape.clone(),
                DType::F32,
                TensorData::Owned(Arc::new(bytes)),
            )?;
        }
    }
    if let Some(name) = values.keys().next() {
        bail!("calibration changed a tensor the model does not have: {name}");
    }
    Ok(())
}

/// An importance matrix of the statistics, by GGUF weight name, as
/// llama-imatrix writes one: Σx² per input column and the tokens summed.
/// The output head is left out, as llama-imatrix leaves it out by default.
pub fn importance_matrix(
    model: &Model,
    stats: &BTreeMap<String, ChannelStats>,
    dataset: &str,
    samples: usize,
    len: usize,
) -> Result<ImportanceMatrix> {
    let family = model
        .meta
        .family
        .as_ref()
        .context("the model has no architecture")?;
    let mut entries = BTreeMap::new();
    for (module, s) in stats {
        if module == "lm_head" {
            continue;
        }
        let Some(w) = weight_of(model, module) else {
            continue;
        };
        let name = gguf_tensor_name(family, &w).with_context(|| format!("{w} has no GGUF name"))?;
        let sum_sq = s.sum_sq.iter().map(|&v| v as f32).collect();
        entries.insert(name, ImatrixEntry::dense(sum_sq, s.count));
    }
    Ok(ImportanceMatrix {
        entries,
        datasets: vec![dataset.to_string()],
        chunk_count: u32::try_from(samples).unwrap_or(u32::MAX),
        chunk_size: u32::try_from(len).unwrap_or(u32::MAX),
    })
}

/// Per-column importance of the model's weights (by IR name) from an
/// importance matrix file (llama.cpp's GGUF or legacy format, or ours).
pub fn importance_from_file(model: &Model, path: &Path) -> Result<HashMap<String, Vec<f32>>> {
    let family = model
        .meta
        .family
        .as_ref()
        .context("the model has no architecture")?;
    let imatrix = ImportanceMatrix::read(path)?;
    let mut out = HashMap::new();
    for t in &model.tensors {
        let Some(name) = gguf_tensor_name(family, &t.name) else {
            continue;
        };
        let Some(imp) = imatrix.importance(&name) else {
            continue;
        };
        if imp.len() != t.row_len() {
            bail!(
                "{}: {name} has {} importance values, the model's rows have {}",
                path.display(),
                imp.len(),
                t.row_len()
            );
        }
        out.insert(t.name.clone(), imp);
    }
    if out.is_empty() {
        bail!(
            "{}: no entry matches a weight of this model (names like blk.0.attn_q.weight)",
            path.display()
        );
    }
    Ok(out)
}

/// What a sequential calibration produced: every tensor encoded.
pub struct SequentialResult {
    pub encoded: crate::encoded::EncodedStore,
    pub report: CalibReport,
    pub sweep: edgec_calibration::SweepReport,
}

/// Options of the sequential sweep.
pub struct Sequential {
    /// Compute each layer's outputs with its quantized weights (the next
    /// layer is calibrated on what the quantized model feeds it).
    pub propagate: bool,
    /// Bytes of activations kept in memory; more spill to a temporary file.
    pub cache_budget: usize,
    /// Where spilled activations and the encoded tensors go (the system's
    /// temporary folder when `None`).
    pub spill_dir: Option<std::path::PathBuf>,
    pub allow_nonfinite: bool,
    pub awq: AwqOptions,
}

/// Calibrates and encodes `model` one layer at a time: each layer is
/// built from its own tensors, every calibration batch runs through it,
/// its statistics drive AWQ, importance and GPTQ for that layer's weights,
/// which are encoded to `types` right away; the layer and its statistics
/// are then dropped. Peak memory is one layer, its Gram matrices and the
/// activation cache, whatever the depth: the encoded tensors wait in a
/// temporary file. Without
/// propagation the statistics, and so the bytes, equal [`calibrate`]'s.
pub fn calibrate_sequential(
    model: &Model,
    input: &Path,
    types: HashMap<String, GgmlType>,
    seqs: &[Vec<u32>],
    method: Method,
    opts: &Sequential,
    progress: &dyn Progress,
) -> Result<SequentialResult> {
    use crate::writers::gguf::encode_tensor;
    use edgec_calibration::{sweep_linear_inputs, sweep_units, Replacements, SweepOptions};
    use edgec_core::runtime::Part;

    let start = std::time::Instant::now();
    let family = model
        .meta
        .family
        .clone()
        .context("the model has no architecture")?;
    let llama = match &family {
        Family::Llama(p) => Some(p.clone()),
        _ => None,
    };
    if method.awq() && llama.is_none() {
        bail!("AWQ scaling is implemented for the llama family; use --method imatrix");
    }
    let gram_for = gram_inputs(model, llama.as_ref(), method);
    let total: usize = seqs.iter().map(Vec::len).sum();
    let stats_opts = StatsOptions {
        gram_for,
        gram_step: total.div_ceil(GRAM_TOKENS),
    };
    let mut sweep_opts = SweepOptions::new(stats_opts);
    sweep_opts.propagate = opts.propagate;
    sweep_opts.cache_budget = opts.cache_budget;
    sweep_opts.spill_dir = opts.spill_dir.clone();
    let quant = PlanQuantizer {
        types: types.clone(),
    };
    let mut report = CalibReport {
        method: method.name(),
        samples: seqs.len(),
        tokens: total,
        seconds: 0.0,
        seconds_statistics: 0.0,
        seconds_awq: 0.0,
        seconds_hessians: 0.0,
        awq_error_rtn: None,
        awq_error_final: None,
        groups: vec![],
    };
    let mut encoded = crate::encoded::EncodedStore::new(opts.spill_dir.as_deref())
        .map_err(|e| anyhow::anyhow!("a temporary file for the encoded tensors: {e}"))?;
    let encode = |name: &str,
                  values: Option<&Vec<f32>>,
                  importance: Option<&[f32]>,
                  hessian: Option<&Hessian>|
     -> Result<(Vec<u8>, crate::writers::gguf::ErrorStats)> {
        let t = model
            .tensor(name)
            .with_context(|| format!("{name}: not in the model"))?;
        let owned;
        let t = match values {
            Some(v) => {
                owned = Tensor::from_f32(t.name.clone(), t.shape.clone(), v.clone())?;
                &owned
            }
            None => t,
        };
        let ty = *types
            .get(name)
            .with_context(|| format!("{name}: no planned type"))?;
        let (bytes, errors) =
            encode_tensor(t, ty, &|r| r, opts.allow_nonfinite, importance, hessian)
                .map_err(|msg| FormatError::invalid(input, msg))?;
        t.release_pages();
        Ok((bytes, errors))
    };
    let bar = progress.bar(sweep_units(&family, seqs), "calibrate", Unit::Tokens);
    let mut awq_rtn = 0.0;
    let mut awq_final = 0.0;
    let mut on_layer = |part: Part,
                        stats: BTreeMap<String, ChannelStats>|
     -> std::result::Result<Replacements, edgec_calibration::CallbackError> {
        let mut scales: HashMap<String, Vec<f32>> = HashMap::new();
        let mut changed: HashMap<String, Vec<f32>> = HashMap::new();
        if let (Some(p), true, Part::Layer(i)) = (&llama, method.awq(), part) {
            let t = std::time::Instant::now();
            let lookup = |module: &str| -> Option<InputStats> {
                let s = stats.get(module)?;
                Some(InputStats {
                    mean_abs: s.mean_abs(),
                    mean_sq: s.mean_sq(),
                    gram: s.gram_mean()?,
                })
            };
            let awq_opts = AwqOptions {
                importance: method.importance(),
                ..opts.awq.clone()
            };
            let r = awq::awq_llama_layer(model, p, i, &lookup, &quant, &awq_opts)?;
            awq_rtn += r.groups.iter().map(|g| g.error_rtn).sum::<f64>();
            awq_final += r.groups.iter().map(|g| g.error_final).sum::<f64>();
            report.groups.extend(r.groups);
            scales = r.input_scales;
            changed = r.tensors;
            report.seconds_awq += t.elapsed().as_secs_f64();
        }
        let importance = if method.importance() {
            importance_of(model, &stats, &scales)
        } else {
            HashMap::new()
        };
        // One input's Hessian at a time, freed once the weights reading that
        // input are encoded: a layer's Hessians built together were most of
        // the sweep's peak.
        let mut stats = stats;
        let names = part.tensors(&family);
        let groups = if method.gptq() {
            by_gram_input(model, &stats, &names)
        } else {
            names.into_iter().map(|n| (None, vec![n])).collect()
        };
        let mut replacements = Replacements::new();
        for (input, weights) in groups {
            let t = std::time::Instant::now();
            let hessian = match &input {
                Some(i) => Some(hessian_of(&stats, i, &weights, &scales)?),
                None => None,
            };
            if let Some(s) = input.as_ref().and_then(|i| stats.get_mut(i)) {
                s.gram = None;
            }
            report.seconds_hessians += t.elapsed().as_secs_f64();
            for name in weights {
                if model.tensor(&name).is_none() || encoded.contains(&name) {
                    continue;
                }
                let (bytes, errors) = encode(
                    &name,
                    changed.get(&name),
                    importance.get(&name).map(Vec::as_slice),
                    hessian.as_ref(),
                )?;
                // the head feeds no further layer: nothing to propagate
                if opts.propagate && part != Part::Head {
                    let ty = types[&name];
                    let mut values =
                        vec![0f32; model.tensor(&name).map_or(0, |t| t.shape.iter().product())];
                    edgec_core::ggml::dequant::dequantize(ty, &bytes, &mut values)?;
                    replacements.insert(name.clone(), values);
                } else if let Some(v) = changed.remove(&name) {
                    // AWQ's scaled weights compute the same function in float
                    replacements.insert(name.clone(), v);
                }
                encoded.insert(name, &bytes, errors).map_err(|e| {
                    anyhow::anyhow!("writing the encoded tensors' temporary file: {e}")
                })?;
            }
        }
        drop(stats);
        Ok(replacements)
    };
    let sweep = sweep_linear_inputs(model, seqs, &sweep_opts, &mut on_layer, &|done| {
        bar.set_position(done)
    })
    .map_err(|e| anyhow::anyhow!("{}: calibration: {e}", input.display()))?;
    bar.finish();
    // What no layer read: untied token embeddings (no statistics, as in
    // one-shot calibration, where no linear layer reads them).
    for t in &model.tensors {
        if !encoded.contains(&t.name) {
            let (bytes, errors) = encode(&t.name, None, None, None)?;
            encoded
                .insert(t.name.clone(), &bytes, errors)
                .context("writing the encoded tensors' temporary file")?;
        }
    }
    if method.awq() {
        report.awq_error_rtn = Some(awq_rtn);
        report.awq_error_final = Some(awq_final);
    }
    report.seconds = start.elapsed().as_secs_f64();
    report.seconds_statistics = report.seconds - report.seconds_awq - report.seconds_hessians;
    Ok(SequentialResult {
        encoded,
        report,
        sweep,
    })
}
