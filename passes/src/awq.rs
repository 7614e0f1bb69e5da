//! Activation-aware weight quantization (AWQ, Lin et al., MLSys 2024) for the
//! llama family, with any row quantizer.
//!
//! For each group of linear layers that read one input (q/k/v after the
//! attention norm, o after v, gate/up after the FFN norm, down after up) a
//! per-input-channel scale `s` is searched: the group's weights become
//! `W·diag(s)` and the op before them is divided by `s` (the norm's weight,
//! or v's or up's output rows), so the float model computes the same thing
//! while the channels that carry large activations get finer quantization
//! steps. Candidates are `s = x̄^α` and `s = x̄^α / w̄^(1−α)` (x̄ the mean
//! |activation| per channel, w̄ the mean normalised |weight|) for α on a grid;
//! α = 0 is plain rounding, so the search never does worse than it on its
//! own measure. Then each layer's blocks are clipped to a searched fraction
//! of their maximum.
//!
//! The measure is the output error on the calibration activations,
//! `Σ_r δ_r·G·δ_rᵀ` with `δ = dequant(quant(W·s))/s − W` and `G` the mean of
//! `x·xᵀ` (collected once, so the search never re-runs the model); it is
//! evaluated on an evenly spaced subset of each weight's rows.

use std::collections::HashMap;

use edgec_core::linalg::matmul_nt;
use edgec_core::{LlamaParams, Model};
use rayon::prelude::*;
use serde::Serialize;

/// Statistics of one linear layer's input (from calibration).
#[derive(Debug, Clone)]
pub struct InputStats {
    /// Mean |x| per channel.
    pub mean_abs: Vec<f32>,
    /// Mean x² per channel.
    pub mean_sq: Vec<f32>,
    /// Mean x·xᵀ, row-major `[in, in]`.
    pub gram: Vec<f32>,
}

/// Quantizes rows of a named weight and gives them back dequantized: the
/// target type's round trip, used to measure errors.
pub trait RowQuantizer: Sync {
    /// `out` = dequant(quant(`row`)) for a row of weight `name`, weighting
    /// columns by `importance` when given.
    fn round_trip(
        &self,
        name: &str,
        row: &[f32],
        importance: Option<&[f32]>,
        out: &mut [f32],
    ) -> Result<(), String>;

    /// Columns per quantization block of weight `name`; `None` when it is
    /// not quantized (kept in float), which leaves it out of the search.
    fn block(&self, name: &str) -> Option<usize>;
}

#[derive(Debug, Clone)]
pub struct AwqOptions {
    /// α values per scale form (α = i / grid).
    pub grid: usize,
    /// Clipping ratios tried, evenly from 1 down to 0.5 (0: no clipping search).
    pub clip_grid: usize,
    /// Rows of each weight the error is measured on (64 chose as well as
    /// 128 on SmolLM2, in half the time).
    pub max_rows: usize,
    /// Weight columns by importance (mean x² over the scaled input) when
    /// rounding, as the final quantization will.
    pub importance: bool,
    /// A fixed α for `s = x̄^α` instead of the search (AWQ's ablation; the
    /// clipping search still runs).
    pub alpha: Option<f32>,
}

impl Default for AwqOptions {
    fn default() -> Self {
        AwqOptions {
            grid: 10,
            clip_grid: 6,
            max_rows: 64,
            importance: false,
            alpha: None,
        }
    }
}

/// What the search chose for one group.
#[derive(Debug, Clone, Serialize)]
pub struct GroupReport {
    pub input: String,
    /// `x` for `x̄^α`, `xw` for `x̄^α / w̄^(1−α)`.
    pub form: &'static str,
    pub alpha: f32,
    /// Output error (sum of squares per token) with plain rounding.
    pub error_rtn: f64,
    /// With the chosen scales.
    pub error_scaled: f64,
    /// With the chosen scales and clipping.
    pub error_final: f64,
    /// Clip ratio per weight of the group, in order.
    pub clip: Vec<f32>,
}

/// The transformed weights.
#[derive(Debug, Default)]
pub struct AwqResult {
    /// New f32 values of every changed tensor (weights, norms, biases).
    pub tensors: HashMap<String, Vec<f32>>,
    /// Per weight: the scale its input columns were multiplied by, so that
    /// importance `E[x²]` becomes `E[x²]/s²`.
    pub input_scales: HashMap<String, Vec<f32>>,
    pub groups: Vec<GroupReport>,
}

#[derive(Debug, thiserror::Error)]
pub enum AwqError {
    #[error("AWQ: tensor {0} is missing or has an unexpected shape")]
    Tensor(String),
    #[error("AWQ: no calibration statistics for {0} (input of a linear layer)")]
    Stats(String),
    #[error("AWQ: {0}")]
    Other(String),
}

/// The linear layers whose input Gram matrix the search needs, one per
/// group (the others share it).
pub fn gram_layers(p: &LlamaParams) -> Vec<String> {
    (0..p.num_layers)
        .flat_map(|i| {
            [
                "self_attn.q_proj",
                "self_attn.o_proj",
                "mlp.gate_proj",
                "mlp.down_proj",
            ]
            .map(|l| format!("model.layers.{i}.{l}"))
        })
        .collect()
}

/// What a group's scales are folded into.
enum Fold {
    /// A norm's weight, `[in]`.
    Norm(String),
    /// The output rows of a weight (and its bias): `in` rows, or with
    /// grouped-query attention `in / rep` rows shared by `rep` channels.
    Rows {
        weight: String,
        bias: Option<String>,
    },
}

struct Group {
    input: String,
    weights: Vec<String>,
    fold: Fold,
    /// Channels per scale: input channel `c` takes scale `tie(c)`.
    shared: Option<(usize, usize)>, // (head_dim, rep): o's input under GQA
}

fn layer_groups(p: &LlamaParams, model: &Model, i: usize) -> Vec<Group> {
    let l = format!("model.layers.{i}");
    let w = |n: &str| format!("{l}.{n}.weight");
    let v_bias = format!("{l}.self_attn.v_proj.bias");
    let b = p.block(i);
    let rep = b.num_heads / b.num_kv_heads.max(1);
    vec![
        Group {
            input: format!("{l}.self_attn.q_proj"),
            weights: vec![
                w("self_attn.q_proj"),
                w("self_attn.k_proj"),
                w("self_attn.v_proj"),
            ],
            fold: Fold::Norm(w("input_layernorm")),
            shared: None,
        },
        Group {
            input: format!("{l}.self_attn.o_proj"),
            weights: vec![w("self_attn.o_proj")],
            fold: Fold::Rows {
                weight: w("self_attn.v_proj"),
                bias: model.tensor(&v_bias).map(|_| v_bias.clone()),
            },
            shared: (rep > 1).then_some((p.head_dim, rep)),
        },
        Group {
            input: format!("{l}.mlp.gate_proj"),
            weights: vec![w("mlp.gate_proj"), w("mlp.up_proj")],
            fold: Fold::Norm(w("post_attention_layernorm")),
            shared: None,
        },
        Group {
            input: format!("{l}.mlp.down_proj"),
            weights: vec![w("mlp.down_proj")],
            fold: Fold::Rows {
                weight: w("mlp.up_proj"),
                bias: None,
            },
            shared: None,
        },
    ]
}

/// AWQ on layer `layer` alone (its groups only read and change that
/// layer's tensors), for calibration that sweeps one layer at a time.
pub fn awq_llama_layer(
    model: &Model,
    p: &LlamaParams,
    layer: usize,
    stats: &(dyn Fn(&str) -> Option<InputStats> + Sync),
    quant: &dyn RowQuantizer,
    opts: &AwqOptions,
) -> Result<AwqResult, AwqError> {
    let mut work = Tensors {
        model,
        changed: HashMap::new(),
    };
    let mut result = AwqResult::default();
    for g in layer_groups(p, model, layer) {
        if g.weights.iter().any(|w| quant.block(w).is_none()) {
            continue; // kept in float: nothing to protect
        }
        let st = stats(&g.input).ok_or_else(|| AwqError::Stats(g.input.clone()))?;
        let report = search_group(&g, &st, &mut work, &mut result, quant, opts)?;
        result.groups.push(report);
    }
    result.tensors = work.changed;
    Ok(result)
}

/// Runs the search on every layer (layers in parallel) and returns the
/// changed tensors. `stats` is looked up by linear module path (the
/// group's first layer); `layer_done` is called as each layer finishes.
pub fn awq_llama(
    model: &Model,
    p: &LlamaParams,
    stats: &(dyn Fn(&str) -> Option<InputStats> + Sync),
    quant: &dyn RowQuantizer,
    opts: &AwqOptions,
    layer_done: &(dyn Fn() + Sync),
) -> Result<AwqResult, AwqError> {
    let per_layer: Vec<AwqResult> = (0..p.num_layers)
        .into_par_iter()
        .map(|i| {
            let result = awq_llama_layer(model, p, i, stats, quant, opts)?;
            layer_done();
            Ok(result)
        })
        .collect::<Result<_, AwqError>>()?;
    let mut out = AwqResult::default();
    for r in per_layer {
        out.tensors.extend(r.tensors);
        out.input_scales.extend(r.input_scales);
        out.groups.extend(r.groups);
    }
    Ok(out)
}

/// The model's tensors as f32, with this layer's changes so far.
struct Tensors<'a> {
    model: &'a Model,
    changed: HashMap<String, Vec<f32>>,
}

impl Tensors<'_> {
    fn get(&self, name: &str) -> Result<Vec<f32>, AwqError> {
        if let Some(v) = self.changed.get(name) {
            return Ok(v.clone());
        }
        let t = self
            .model
            .tensor(name)
            .ok_or_else(|| AwqError::Tensor(name.to_string()))?;
        t.to_f32().map_err(|e| AwqError::Other(e.to_string()))
    }

    fn cols(&self, name: &str) -> Result<usize, AwqError> {
        let t = self
            .model
            .tensor(name)
            .ok_or_else(|| AwqError::Tensor(name.to_string()))?;
        match t.shape.as_slice() {
            [_, c] => Ok(*c),
            _ => Err(AwqError::Tensor(name.to_string())),
        }
    }
}

/// A weight being searched: its values `[rows, cols]` and the rows measured.
struct Weight {
    name: String,
    values: Vec<f32>,
    rows: usize,
    sample: Vec<usize>,
}

fn search_group(
    g: &Group,
    st: &InputStats,
    work: &mut Tensors,
    result: &mut AwqResult,
    quant: &dyn RowQuantizer,
    opts: &AwqOptions,
) -> Result<GroupReport, AwqError> {
    let cols = st.mean_abs.len();
    if st.gram.len() != cols * cols || st.mean_sq.len() != cols {
        return Err(AwqError::Stats(g.input.clone()));
    }
    let mut weights = Vec::new();
    for name in &g.weights {
        if work.cols(name)? != cols {
            return Err(AwqError::Tensor(name.clone()));
        }
        let values = work.get(name)?;
        let rows = values.len() / cols;
        let n = opts.max_rows.clamp(1, rows.max(1));
        let sample = (0..n).map(|k| k * rows / n).collect();
        weights.push(Weight {
            name: name.clone(),
            values,
            rows,
            sample,
        });
    }
    // Scales live on `n_scales` channels; input channel c uses tie(c).
    let (n_scales, tie): (usize, Box<dyn Fn(usize) -> usize + Sync>) = match g.shared {
        Some((hd, rep)) => (cols / rep, Box::new(move |c| (c / hd / rep) * hd + c % hd)),
        None => (cols, Box::new(|c| c)),
    };
    let reduce = |v: &[f32]| {
        let mut sum = vec![0f64; n_scales];
        let mut n = vec![0usize; n_scales];
        for (c, &x) in v.iter().enumerate() {
            sum[tie(c)] += x as f64;
            n[tie(c)] += 1;
        }
        sum.iter()
            .zip(&n)
            .map(|(s, &k)| (s / k.max(1) as f64) as f32)
            .collect::<Vec<f32>>()
    };
    let x_mean = reduce(&st.mean_abs);
    // w̄: |W| normalised by each row's maximum, averaged over all rows.
    let mut w_sum = vec![0f64; cols];
    let mut w_rows = 0usize;
    for w in &weights {
        for row in w.values.chunks_exact(cols) {
            let m = row.iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-12);
            for (s, v) in w_sum.iter_mut().zip(row) {
                *s += (v.abs() / m) as f64;
            }
            w_rows += 1;
        }
    }
    let w_mean = reduce(
        &w_sum
            .iter()
            .map(|s| (s / w_rows.max(1) as f64) as f32)
            .collect::<Vec<_>>(),
    );
    let expand = |s: &[f32]| (0..cols).map(|c| s[tie(c)]).collect::<Vec<f32>>();

    // Per candidate scale (unclipped), the error of each weight: all the
    // candidates' deltas go through one product with the Gram matrix.
    let errors = |scales: &[Vec<f32>]| -> Result<Vec<Vec<f64>>, AwqError> {
        let mut per = vec![Vec::with_capacity(weights.len()); scales.len()];
        for w in &weights {
            let e = weight_errors(w, cols, scales, 1.0, st, quant, opts.importance)?;
            for (p, e) in per.iter_mut().zip(e) {
                p.push(e);
            }
        }
        Ok(per)
    };
    let ones = vec![1f32; cols];
    // per weight, with the scales and without clipping (the clip search
    // starts from these)
    let rtn_errors = errors(std::slice::from_ref(&ones))?.remove(0);
    let rtn: f64 = rtn_errors.iter().sum();
    let (mut best, mut best_err) = ((("x", 0f32), ones.clone(), rtn_errors), rtn);
    if opts.alpha.is_some() {
        best_err = f64::INFINITY; // take the fixed α whatever its error
    }
    // Evaluates candidates (form, grid step) together, then takes them in
    // order as if tried one by one; returns their errors.
    let mut try_alphas = |cands: &[(&'static str, usize)]| -> Result<Vec<f64>, AwqError> {
        let mut alphas = Vec::with_capacity(cands.len());
        let mut scales = Vec::with_capacity(cands.len());
        for &(form, k) in cands {
            let alpha = match opts.alpha {
                Some(a) => a,
                None => k as f32 / opts.grid as f32,
            };
            let s: Vec<f32> = x_mean
                .iter()
                .zip(&w_mean)
                .map(|(&x, &w)| {
                    let v = x.max(1e-8).powf(alpha);
                    if form == "xw" {
                        v / w.max(1e-8).powf(1.0 - alpha)
                    } else {
                        v
                    }
                })
                .collect();
            alphas.push(alpha);
            scales.push(expand(&normalise(&s)));
        }
        let per = errors(&scales)?;
        let mut sums = Vec::with_capacity(cands.len());
        for (((&(form, _), alpha), full), errs) in cands.iter().zip(alphas).zip(scales).zip(per) {
            let e: f64 = errs.iter().sum();
            if e < best_err {
                best = ((form, alpha), full, errs);
                best_err = e;
            }
            sums.push(e);
        }
        Ok(sums)
    };
    if opts.alpha.is_some() {
        try_alphas(&[("x", 0)])?;
    } else {
        // Coarse to fine: every other α of the grid for both forms, then
        // the neighbours of the best of those. The error is smooth in α, so
        // this finds the grid's best in about half the evaluations (each is
        // a rounding of the sampled rows and a product with the Gram matrix).
        let cands: Vec<(&'static str, usize)> = ["x", "xw"]
            .into_iter()
            .flat_map(|form| (2..opts.grid).step_by(2).map(move |k| (form, k)))
            .collect();
        let mut coarse = ("x", 0usize, f64::INFINITY);
        for (&(form, k), e) in cands.iter().zip(try_alphas(&cands)?) {
            if e < coarse.2 {
                coarse = (form, k, e);
            }
        }
        let (form, k, _) = coarse;
        let fine: Vec<(&'static str, usize)> = [k.saturating_sub(1), k + 1]
            .into_iter()
            .filter(|k| (1..opts.grid).contains(k))
            .map(|k| (form, k))
            .collect();
        try_alphas(&fine)?;
    }
    let ((form, alpha), scale, unclipped) = best;
    // Clipping: per weight, the ratio with the least error (the weights'
    // errors are independent).
    let ratios: Vec<f32> = (0..opts.clip_grid.max(1))
        .map(|k| 1.0 - 0.5 * k as f32 / (opts.clip_grid.max(2) - 1) as f32)
        .collect();
    let mut clip = Vec::with_capacity(weights.len());
    let mut final_err = 0f64;
    for (w, &e1) in weights.iter().zip(&unclipped) {
        // The error falls as clipping starts to pay and rises once it cuts
        // too deep: stop at the first ratio that does worse than the best.
        let mut pick = (1f32, e1);
        for &r in ratios.iter().skip(1) {
            let e = weight_errors(
                w,
                cols,
                std::slice::from_ref(&scale),
                r,
                st,
                quant,
                opts.importance,
            )?[0];
            if e >= pick.1 {
                break;
            }
            pick = (r, e);
        }
        clip.push(pick.0);
        final_err += pick.1;
    }
    // Apply: W·diag(s), clipped; the fold divides the op before by s.
    // (each weight's columns belong to exactly one group, so these are its
    // input scales)
    for (w, &ratio) in weights.into_iter().zip(&clip) {
        let block = quant.block(&w.name).unwrap_or(cols);
        let mut v = w.values;
        for row in v.chunks_exact_mut(cols) {
            for (x, s) in row.iter_mut().zip(&scale) {
                *x *= s;
            }
            if ratio < 1.0 {
                clip_row(row, block, ratio);
            }
        }
        result.input_scales.insert(w.name.clone(), scale.clone());
        work.changed.insert(w.name, v);
    }
    let mut per_scale = vec![1f32; n_scales];
    for (c, &s) in scale.iter().enumerate() {
        per_scale[tie(c)] = s;
    }
    match &g.fold {
        Fold::Norm(name) => {
            let mut v = work.get(name)?;
            if v.len() != cols {
                return Err(AwqError::Tensor(name.clone()));
            }
            for (x, s) in v.iter_mut().zip(&scale) {
                *x /= s;
            }
            work.changed.insert(name.clone(), v);
        }
        Fold::Rows { weight, bias } => {
            let mut v = work.get(weight)?;
            let row_len = v.len() / n_scales.max(1);
            if v.len() != n_scales * row_len {
                return Err(AwqError::Tensor(weight.clone()));
            }
            for (row, s) in v.chunks_exact_mut(row_len).zip(&per_scale) {
                row.iter_mut().for_each(|x| *x /= s);
            }
            work.changed.insert(weight.clone(), v);
            if let Some(b) = bias {
                let mut v = work.get(b)?;
                if v.len() != n_scales {
                    return Err(AwqError::Tensor(b.clone()));
                }
                for (x, s) in v.iter_mut().zip(&per_scale) {
                    *x /= s;
                }
                work.changed.insert(b.clone(), v);
            }
        }
    }
    Ok(GroupReport {
        input: g.input.clone(),
        form,
        alpha,
        error_rtn: rtn,
        error_scaled: best_err,
        error_final: final_err,
        clip,
    })
}

/// Scales centred on 1 in the geometric sense (AWQ's normalisation), kept
/// away from 0.
fn normalise(s: &[f32]) -> Vec<f32> {
    let s: Vec<f32> = s.iter().map(|v| v.max(1e-4)).collect();
    let max = s.iter().cloned().fold(f32::MIN, f32::max);
    let min = s.iter().cloned().fold(f32::MAX, f32::min);
    let mid = (max * min).sqrt().max(1e-8);
    s.iter().map(|v| v / mid).collect()
}

/// Clamps every block of `row` to ±`ratio` of its largest magnitude.
fn clip_row(row: &mut [f32], block: usize, ratio: f32) {
    for b in row.chunks_mut(block.max(1)) {
        let m = b.iter().fold(0f32, |a, v| a.max(v.abs())) * ratio;
        b.iter_mut().for_each(|x| *x = x.clamp(-m, m));
    }
}

/// The output error of weight `w` quantized after scaling its columns by
/// each of `scales` and clipping to `ratio`, summed over its rows (the
/// sample's error scaled up to all rows): `Σ_r δ_r·G·δ_rᵀ`. The deltas of
/// every scale go through one product with `G`, which gemm then packs once.
fn weight_errors(
    w: &Weight,
    cols: usize,
    scales: &[Vec<f32>],
    ratio: f32,
    st: &InputStats,
    quant: &dyn RowQuantizer,
    importance: bool,
) -> Result<Vec<f64>, AwqError> {
    let block = quant.block(&w.name).unwrap_or(cols);
    let imps: Vec<Option<Vec<f32>>> = scales
        .iter()
        .map(|scale| {
            importance.then(|| {
                st.mean_sq
                    .iter()
                    .zip(scale)
                    .map(|(q, s)| q / (s * s))
                    .collect()
            })
        })
        .collect();
    let n = w.sample.len();
    let jobs: Vec<(usize, usize)> = (0..scales.len())
        .flat_map(|i| w.sample.iter().map(move |&r| (i, r)))
        .collect();
    let deltas: Vec<Vec<f32>> = jobs
        .par_iter()
        .map(|&(i, r)| {
            let scale = &scales[i];
            let row = &w.values[r * cols..(r + 1) * cols];
            let mut scaled: Vec<f32> = row.iter().zip(scale).map(|(x, s)| x * s).collect();
            if ratio < 1.0 {
                clip_row(&mut scaled, block, ratio);
            }
            let mut q = vec![0f32; cols];
            quant.round_trip(&w.name, &scaled, imps[i].as_deref(), &mut q)?;
            Ok(q.iter()
                .zip(scale)
                .zip(row)
                .map(|((q, s), x)| q / s - x)
                .collect())
        })
        .collect::<Result<_, String>>()
        .map_err(AwqError::Other)?;
    let d: Vec<f32> = deltas.concat();
    // E = D·G (G symmetric), error = Σ E∘D per scale.
    let e = matmul_nt(&d, jobs.len(), cols, &st.gram, cols);
    Ok(e.chunks(n * cols)
        .zip(d.chunks(n * cols))
        .map(|(e, d)| {
            let sum: f64 = e.iter().zip(d).map(|(a, b)| *a as f64 * *b as f64).sum();
            sum * w.rows as f64 / n.max(1) as f64
        })
        .collect())
}
