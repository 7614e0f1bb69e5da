//! `prune` on graph models (imported ONNX or TFLite files): unstructured or
//! N:M sparsity in the constant weights of Conv, Gemm and MatMul nodes, by
//! magnitude, or by Wanda or SparseGPT from the statistics of each weight's
//! input on calibration samples (photos, IDX or .safetensors of the graph's
//! inputs). The weights stay dense (zeros stored as values); the TFLite
//! writer can store sparse conv weights through DENSIFY (`tflite_sparse`).
//!
//! Every weight is seen as `[outputs, inputs]` rows, one row per output
//! channel and kernel position: a Conv weight `[M, C/g, kH, kW]` as
//! `[M·kH·kW, C/g]` (the input channels of one output channel at one kernel
//! tap, TFLite's OHWI order), a Gemm/MatMul weight as `[N, K]` (transposed
//! when stored `[K, N]`). A magnitude fraction is taken over the whole
//! weight (or over all of them with `scope = "global"`), Wanda's within each
//! row; an N:M pattern drops N of every M consecutive input channels of a
//! row, so N:M groups run along the input channels of each output channel.
//!
//! Which weights (`ops`): `conv` (every non-depthwise Conv, 1×1 included),
//! `pointwise` (1×1 Convs only), `depthwise`, `gemm`, `matmul` (a constant
//! 2-D right operand). The default is `conv`, `gemm`, `matmul`: depthwise
//! filters are left dense, since they hold few weights, every one of them
//! matters for its channel, and XNNPACK's sparse path only computes 1×1
//! convolutions sparse. `ops = ["pointwise"]` is what that path uses.
//!
//! Wanda and SparseGPT take 1×1 convs, Gemm and MatMul (their default
//! `ops`), whose inputs are plain feature vectors (a conv's pixels, a
//! Gemm's rows): Σx² per input for Wanda, Σx·xᵀ for SparseGPT (damped by 1 %
//! of its mean diagonal). The statistics come from one pass of the dense
//! model over the samples (one-shot, not layer by layer as for llama
//! models: later weights see the dense model's activations).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use candle_core::Tensor as CTensor;
use edgec_core::graph::Op;
use edgec_core::runtime::graph::GraphRuntime;
use edgec_core::{DType, Model, Tensor, TensorData};
use edgec_passes::gptq::Hessian;
use edgec_passes::prune::{self, Sparsity};
use serde::{Deserialize, Serialize};

use super::prune::{Prune, PruneMethod, Scope};
use super::{CheckContext, Context, ModelView, Outcome, QuantKind, State};
use crate::error::usage;
use crate::graph_data::{self, Sample};
use crate::progress::Unit;

/// The kinds of graph weights `prune` can take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GraphOp {
    /// Every Conv that is not depthwise (1×1 and larger kernels).
    Conv,
    /// 1×1 Convs (group 1) only.
    Pointwise,
    /// Depthwise Convs (one input channel per group).
    Depthwise,
    /// Gemm's constant B.
    Gemm,
    /// MatMul's constant 2-D right operand.
    Matmul,
}

const DEFAULT_OPS: [GraphOp; 3] = [GraphOp::Conv, GraphOp::Gemm, GraphOp::Matmul];
/// Wanda and SparseGPT score a weight by its inputs' statistics, which
/// edgec gathers for 1×1 convs, Gemm and MatMul.
const DEFAULT_DATA_OPS: [GraphOp; 3] = [GraphOp::Pointwise, GraphOp::Gemm, GraphOp::Matmul];

/// How a weight's values map onto `[rows, cols]` (outputs × inputs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// Conv `[M, C/g, kH, kW]`: rows are (m, kh, kw), columns the input channels.
    Conv { m: usize, c: usize, taps: usize },
    /// Already `[rows, cols]` (Gemm with trans_b).
    Rows,
    /// `[cols, rows]` (Gemm without trans_b, MatMul): transposed.
    Transposed,
}

/// How a weight's input value holds its `cols` features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Features {
    /// Axis 1 of `[N, C, …]` (a 1×1 Conv's input): every pixel is a sample.
    Channels,
    /// The last axis (Gemm's A, MatMul's left operand): every row a sample.
    Last,
    /// The first axis of a 2-D `[K, N]` (Gemm with trans_a).
    First,
}

/// A weight to prune.
#[derive(Clone, Debug)]
struct Target {
    name: String,
    kind: GraphOp,
    layout: Layout,
    rows: usize,
    cols: usize,
    /// The node's data input, and how its features lie (None for a kernel
    /// larger than 1×1 or a grouped conv: no per-input statistics).
    input: String,
    features: Option<Features>,
}

impl Target {
    /// The weight's values in the `[rows, cols]` view.
    fn to_rows(&self, w: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; w.len()];
        match self.layout {
            Layout::Rows => out.copy_from_slice(w),
            Layout::Transposed => {
                // w is [cols, rows]
                for k in 0..self.cols {
                    for n in 0..self.rows {
                        out[n * self.cols + k] = w[k * self.rows + n];
                    }
                }
            }
            Layout::Conv { m, c, taps } => {
                for o in 0..m {
                    for ci in 0..c {
                        for t in 0..taps {
                            out[(o * taps + t) * c + ci] = w[(o * c + ci) * taps + t];
                        }
                    }
                }
            }
        }
        out
    }

    /// Values (or a mask) in the `[rows, cols]` view back in the weight's
    /// own order.
    fn back_from_rows<T: Copy + Default>(&self, rows: &[T]) -> Vec<T> {
        let mut out = vec![T::default(); rows.len()];
        match self.layout {
            Layout::Rows => out.copy_from_slice(rows),
            Layout::Transposed => {
                for k in 0..self.cols {
                    for n in 0..self.rows {
                        out[k * self.rows + n] = rows[n * self.cols + k];
                    }
                }
            }
            Layout::Conv { m, c, taps } => {
                for o in 0..m {
                    for ci in 0..c {
                        for t in 0..taps {
                            out[(o * c + ci) * taps + t] = rows[(o * taps + t) * c + ci];
                        }
                    }
                }
            }
        }
        out
    }
}

/// The kind of a Conv by its weight `[M, C/g, kH, kW]` and group.
fn conv_kind(w: &Tensor, group: usize) -> GraphOp {
    // one input channel per group: depthwise (with any channel multiplier)
    if group > 1 && w.shape.get(1) == Some(&1) {
        GraphOp::Depthwise
    } else if w.shape.len() >= 3 && w.shape[2..].iter().all(|&k| k == 1) && group == 1 {
        GraphOp::Pointwise
    } else {
        GraphOp::Conv
    }
}

/// Whether a weight of `kind` is selected by `ops`.
fn selected(ops: &[GraphOp], kind: GraphOp) -> bool {
    match kind {
        // `conv` takes the 1×1 ones too
        GraphOp::Pointwise => ops.contains(&GraphOp::Pointwise) || ops.contains(&GraphOp::Conv),
        k => ops.contains(&k),
    }
}

/// The constant weights of the graph's Conv, Gemm and MatMul nodes that
/// `ops` selects and no `ignore` pattern matches, each once, in node order.
fn targets(model: &Model, ops: &[GraphOp], ignore: &[regex::Regex]) -> Vec<Target> {
    let Some(graph) = &model.graph else {
        return vec![];
    };
    let mut out: Vec<Target> = Vec::new();
    for node in &graph.nodes {
        let Some(wname) = node.inputs.get(1).filter(|n| !n.is_empty()) else {
            continue;
        };
        let Some(w) = model.tensor(wname) else {
            continue;
        };
        // float weights only (quantized graphs are refused by `check`)
        if w.dtype != DType::F32 {
            continue;
        }
        let found = match &node.op {
            Op::Conv { group, .. } if w.shape.len() >= 3 => {
                let kind = conv_kind(w, *group);
                let (m, c) = (w.shape[0], w.shape[1]);
                let taps: usize = w.shape[2..].iter().product();
                let features = (kind == GraphOp::Pointwise).then_some(Features::Channels);
                Some((kind, Layout::Conv { m, c, taps }, m * taps, c, features))
            }
            Op::Gemm {
                trans_a, trans_b, ..
            } if w.shape.len() == 2 => {
                let (r, c) = (w.shape[0], w.shape[1]);
                let f = Some(if *trans_a {
                    Features::First
                } else {
                    Features::Last
                });
                Some(if *trans_b {
                    (GraphOp::Gemm, Layout::Rows, r, c, f)
                } else {
                    (GraphOp::Gemm, Layout::Transposed, c, r, f)
                })
            }
            Op::MatMul if w.shape.len() == 2 => Some((
                GraphOp::Matmul,
                Layout::Transposed,
                w.shape[1],
                w.shape[0],
                Some(Features::Last),
            )),
            _ => None,
        };
        let Some((kind, layout, rows, cols, features)) = found else {
            continue;
        };
        if !selected(ops, kind)
            || ignore.iter().any(|r| r.is_match(wname))
            || out.iter().any(|t| &t.name == wname)
        {
            continue;
        }
        out.push(Target {
            name: wname.clone(),
            kind,
            layout,
            rows,
            cols,
            input: node.inputs[0].clone(),
            features,
        });
    }
    out
}

/// The `ops` of a step, with the default filled in.
fn ops_of(p: &Prune) -> Vec<GraphOp> {
    if p.ops.is_empty() && p.method != PruneMethod::Magnitude {
        DEFAULT_DATA_OPS.to_vec()
    } else if p.ops.is_empty() {
        DEFAULT_OPS.to_vec()
    } else {
        p.ops.clone()
    }
}

/// `prune`'s check for graph models; `None` for the other models, which
/// `Prune::check` handles (after refusing `ops`, which only graphs have).
pub fn check(p: &Prune, view: &ModelView, ctx: &CheckContext) -> Option<Result<()>> {
    if view.family.is_some() || !view.graph {
        if !p.ops.is_empty() {
            return Some(Err(usage(
                "ops: chooses the weights of graph models (ONNX, TFLite); llama and bert models prune their linear layers",
            )));
        }
        return None;
    }
    Some(check_graph(p, view, ctx))
}

fn check_graph(p: &Prune, view: &ModelView, ctx: &CheckContext) -> Result<()> {
    let sparsity = p.sparsity()?;
    if p.owl.is_some() {
        return Err(usage(
            "owl: per-block sparsity is for llama and bert blocks; graph models take one sparsity",
        ));
    }
    if p.scope == Scope::Global {
        if p.method != PruneMethod::Magnitude {
            return Err(usage("scope = \"global\" is for method = \"magnitude\""));
        }
        if !matches!(sparsity, Sparsity::Fraction(_)) {
            return Err(usage(
                "scope = \"global\": a pattern is per group of inputs; give a sparsity",
            ));
        }
    }
    if p.method != PruneMethod::Magnitude {
        let Some(d) = &p.data else {
            return Err(usage(format!(
                "data: method = \"{}\" scores weights by their inputs: give calibration data (photos, IDX or .safetensors of the graph's inputs)",
                crate::names::name_of(&p.method)
            )));
        };
        let spec = ctx.data_set(d)?;
        if super::is_text(&spec.path) {
            return Err(usage(format!(
                "data = \"{d}\": a graph model calibrates on its inputs (photos, IDX or .safetensors), not text"
            )));
        }
    }
    ignored(p)?;
    if view.quant != QuantKind::None {
        return Err(usage("method: prune before quantizing, not after"));
    }
    if let Some(d) = &p.data {
        ctx.data_set(d)?;
    }
    Ok(())
}

fn ignored(p: &Prune) -> Result<Vec<regex::Regex>> {
    p.ignore
        .iter()
        .map(|pat| {
            regex::Regex::new(&format!("^(?:{pat})$"))
                .map_err(|e| usage(format!("ignore: {pat:?} is not a regular expression: {e}")))
        })
        .collect()
}

fn name_of(op: GraphOp) -> String {
    crate::names::name_of(&op)
}

/// An f32 weight with new values.
fn encode(t: &Tensor, values: &[f32]) -> Result<Tensor> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok(Tensor::new(
        t.name.clone(),
        t.shape.clone(),
        DType::F32,
        TensorData::Owned(std::sync::Arc::new(bytes)),
    )?)
}

/// Sums over the calibration data of one weight input's features: Σx² per
/// feature (Wanda's ‖x‖²) and, for SparseGPT, Σx·xᵀ; `count` samples
/// (pixels of a conv input, rows of a Gemm/MatMul input).
#[derive(Default)]
struct Acc {
    count: u64,
    sum_sq: Vec<f64>,
    gram: Vec<f64>,
}

/// A value as `[samples, k]` f32 rows of its features.
fn feature_rows(t: &CTensor, f: Features, k: usize) -> candle_core::Result<CTensor> {
    let t = t.to_dtype(candle_core::DType::F32)?;
    match f {
        Features::Channels => {
            let dims = t.dims().to_vec();
            let (n, c) = (dims[0], dims[1]);
            let p: usize = dims[2..].iter().product();
            t.reshape((n, c, p))?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((n * p, c))
        }
        Features::Last => t.reshape(((), k)),
        Features::First => t.t()?.contiguous(),
    }
}

impl Acc {
    fn add(&mut self, t: &CTensor, f: Features, k: usize, gram: bool) -> candle_core::Result<()> {
        let x = feature_rows(t, f, k)?;
        let (n, kk) = x.dims2()?;
        if kk != k {
            return Err(candle_core::Error::Msg(format!(
                "{kk} features where the weight has {k} inputs"
            )));
        }
        if self.sum_sq.is_empty() {
            self.sum_sq = vec![0.0; k];
            if gram {
                self.gram = vec![0.0; k * k];
            }
        }
        let sq = x.sqr()?.sum(0)?.to_vec1::<f32>()?;
        for (a, v) in self.sum_sq.iter_mut().zip(sq) {
            *a += v as f64;
        }
        if gram {
            let g = x.t()?.matmul(&x)?.flatten_all()?.to_vec1::<f32>()?;
            for (a, v) in self.gram.iter_mut().zip(g) {
                *a += v as f64;
            }
        }
        self.count += n as u64;
        Ok(())
    }
}

/// The input statistics of every target on the calibration samples, from
/// the dense model (one pass; the pruned weights do not feed the later
/// statistics), by input value name.
fn input_stats(
    model: &Model,
    targets: &[Target],
    samples: &[Sample],
    gram: bool,
    ctx: &Context,
) -> Result<HashMap<String, Acc>> {
    let wanted: HashMap<String, (Features, usize)> = targets
        .iter()
        .filter_map(|t| t.features.map(|f| (t.input.clone(), (f, t.cols))))
        .collect();
    let accs: Arc<Mutex<HashMap<String, Acc>>> = Arc::default();
    let failed: Arc<Mutex<Option<String>>> = Arc::default();
    let (a, e, w) = (Arc::clone(&accs), Arc::clone(&failed), wanted.clone());
    let observe = Arc::new(move |name: &str, t: &CTensor| {
        let Some(&(f, k)) = w.get(name) else { return };
        let mut accs = a.lock().expect("stats lock");
        if let Err(err) = accs.entry(name.to_string()).or_default().add(t, f, k, gram) {
            e.lock()
                .expect("error lock")
                .get_or_insert_with(|| format!("{name}: {err}"));
        }
    });
    let mut rt = GraphRuntime::new(model)?;
    let hook = Arc::clone(&observe);
    rt.set_hook(Some(Arc::new(move |name: &str, t: &CTensor| hook(name, t))));
    let bar = ctx
        .progress
        .bar(samples.len() as u64, "prune: statistics", Unit::Items);
    for sample in samples {
        // graph inputs are not node outputs: the hook does not see them
        for (name, t) in sample {
            observe(name, t);
        }
        let refs: Vec<(&str, CTensor)> = sample
            .iter()
            .map(|(n, t)| (n.as_str(), t.clone()))
            .collect();
        rt.run(&refs)?;
        bar.inc(1);
    }
    bar.finish();
    rt.set_hook(None);
    if let Some(e) = failed.lock().expect("error lock").take() {
        anyhow::bail!("calibration statistics: {e}");
    }
    let accs = std::mem::take(&mut *accs.lock().expect("stats lock"));
    for t in targets {
        if accs.get(&t.input).is_none_or(|a| a.count == 0) {
            anyhow::bail!(
                "{}: its input {} was not seen on the calibration data",
                t.name,
                t.input
            );
        }
    }
    Ok(accs)
}

/// Wanda or SparseGPT on one weight, in its `[rows, cols]` view, from its
/// input's statistics; returns the new values in the weight's own order.
fn prune_by_data(
    t: &Target,
    w: &[f32],
    acc: &Acc,
    method: PruneMethod,
    sparsity: Sparsity,
) -> Result<Vec<f32>> {
    let mut rows = t.to_rows(w);
    match method {
        PruneMethod::Wanda => {
            let norms: Vec<f32> = acc.sum_sq.iter().map(|v| v.sqrt() as f32).collect();
            let mask = prune::mask_per_row(&prune::wanda_scores(&rows, &norms), t.cols, sparsity);
            prune::apply_mask(&mut rows, &mask);
        }
        PruneMethod::Sparsegpt => {
            let n = acc.count.max(1) as f64;
            let gram: Vec<f32> = acc.gram.iter().map(|v| (v / n) as f32).collect();
            let h =
                Hessian::new(gram, t.cols, 0.01).map_err(|e| anyhow::anyhow!("{}: {e}", t.name))?;
            prune::sparsegpt(&mut rows, &h, sparsity, 128);
        }
        PruneMethod::Magnitude => unreachable!("no data for magnitude"),
    }
    Ok(t.back_from_rows(&rows))
}

/// `prune` on a graph model (magnitude, per weight or global).
pub fn run(p: &Prune, state: &mut State, ctx: &Context) -> Result<Outcome> {
    let sparsity = p.sparsity()?;
    let ops = ops_of(p);
    let ignore = ignored(p)?;
    let model = &state.model;
    let targets = targets(model, &ops, &ignore);
    if targets.is_empty() {
        let what: Vec<String> = ops.iter().map(|o| name_of(*o)).collect();
        return Err(usage(format!(
            "ops: the graph has no constant {} weight{} to prune",
            what.join(", "),
            if p.ignore.is_empty() {
                ""
            } else {
                " that --ignore leaves"
            }
        )));
    }
    for t in &targets {
        sparsity.fits(t.cols).map_err(|e| {
            usage(format!(
                "pattern: {} ({}): {e}; N:M groups run along the input channels of each output channel (leave it out with --ignore, or choose --ops)",
                t.name,
                name_of(t.kind)
            ))
        })?;
    }
    let data_stats = if p.method == PruneMethod::Magnitude {
        None
    } else {
        if let Some(t) = targets.iter().find(|t| t.features.is_none()) {
            return Err(usage(format!(
                "ops: method = \"{}\" takes 1x1 convs, gemm and matmul (their inputs' statistics); {} is a {} weight {:?} (choose --ops pointwise,gemm,matmul, or --ignore it)",
                crate::names::name_of(&p.method),
                t.name,
                name_of(t.kind),
                model.tensor(&t.name).map(|w| w.shape.clone()).unwrap_or_default()
            )));
        }
        let spec = ctx.data_set(p.data.as_deref().context("checked: data")?)?;
        let samples = graph_data::samples(model, &spec.path, &spec.image, spec.samples)?;
        let start = std::time::Instant::now();
        let stats = input_stats(
            model,
            &targets,
            &samples,
            p.method == PruneMethod::Sparsegpt,
            ctx,
        )?;
        Some((stats, samples.len(), start.elapsed().as_secs_f64()))
    };
    let values = |t: &Target| -> Result<Vec<f32>> {
        model
            .tensor(&t.name)
            .with_context(|| format!("{}: not in the model", t.name))?
            .to_f32()
            .map_err(Into::into)
    };
    // global: one threshold over every target weight
    let mut global = match (p.scope, sparsity) {
        (Scope::Global, Sparsity::Fraction(f)) => {
            let total: usize = targets.iter().map(|t| t.rows * t.cols).sum();
            let k = (f * total as f64).round() as usize;
            let mut failed = None;
            let found = prune::global_threshold(k, |visit| {
                for t in &targets {
                    match values(t) {
                        Ok(w) => visit(&w),
                        Err(e) => failed = Some(e),
                    }
                }
            });
            if let Some(e) = failed {
                return Err(e);
            }
            Some(found)
        }
        _ => None,
    };
    let bar = ctx.progress.bar(targets.len() as u64, "prune", Unit::Items);
    let mut pruned: HashMap<String, Tensor> = HashMap::new();
    let mut sparsities = serde_json::Map::new();
    let (mut zeros, mut count) = (0usize, 0usize);
    let mut by_kind: BTreeMap<GraphOp, (usize, usize, usize)> = BTreeMap::new();
    for t in &targets {
        let mut w = values(t)?;
        if let Some((stats, _, _)) = &data_stats {
            w = prune_by_data(t, &w, &stats[&t.input], p.method, sparsity)?;
        } else {
            let mask = match &mut global {
                Some((threshold, ties)) => prune::mask_below(&w, *threshold, ties),
                None => {
                    let rows = t.to_rows(&w);
                    let m =
                        prune::mask_per_tensor(&prune::magnitude_scores(&rows), t.cols, sparsity);
                    t.back_from_rows(&m)
                }
            };
            prune::apply_mask(&mut w, &mask);
        }
        let z = w.iter().filter(|v| **v == 0.0).count();
        zeros += z;
        count += w.len();
        let e = by_kind.entry(t.kind).or_default();
        *e = (e.0 + 1, e.1 + z, e.2 + w.len());
        sparsities.insert(
            t.name.clone(),
            serde_json::json!(z as f64 / w.len().max(1) as f64),
        );
        let old = model.tensor(&t.name).expect("a target is a tensor");
        pruned.insert(t.name.clone(), encode(old, &w)?);
        bar.inc(1);
    }
    bar.finish();
    let n = pruned.len();
    for tensor in &mut state.model.tensors {
        if let Some(new) = pruned.remove(&tensor.name) {
            *tensor = new;
        }
    }
    let how = match (p.sparsity, &p.pattern) {
        (_, Some(pat)) => pat.clone(),
        (Some(f), None) => format!("{:.0}%", f * 100.0),
        _ => unreachable!("checked"),
    };
    let kinds: Vec<String> = by_kind
        .iter()
        .map(|(k, (n, z, c))| {
            format!(
                "{n} {} at {:.2}%",
                name_of(*k),
                100.0 * *z as f64 / (*c).max(1) as f64
            )
        })
        .collect();
    let mut line = format!(
        "pruned {n} graph weights ({}{}, {how}): {:.2}% of their values are zero ({})",
        crate::names::name_of(&p.method),
        if p.scope == Scope::Global {
            ", global"
        } else {
            ""
        },
        100.0 * zeros as f64 / count.max(1) as f64,
        kinds.join(", ")
    );
    if let Some((_, samples, seconds)) = &data_stats {
        line.push_str(&format!(
            "; input statistics of {samples} samples in {seconds:.2}s"
        ));
    }
    Ok(Outcome {
        lines: vec![line],
        summary: serde_json::json!({ "sparsity": sparsities }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_rows_round_trip_and_group_input_channels() {
        // [M=2, C=4, 1, 2]: rows (m, tap), columns the 4 input channels
        let t = Target {
            name: "w".into(),
            kind: GraphOp::Conv,
            layout: Layout::Conv {
                m: 2,
                c: 4,
                taps: 2,
            },
            rows: 4,
            cols: 4,
            input: "x".into(),
            features: None,
        };
        let w: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let rows = t.to_rows(&w);
        // row (m=0, tap=1) holds w[0, c, 0, 1] = c*2 + 1
        assert_eq!(&rows[4..8], &[1.0, 3.0, 5.0, 7.0]);
        let mask: Vec<bool> = rows.iter().map(|v| *v as usize % 3 == 0).collect();
        let back = t.back_from_rows(&mask);
        for (i, v) in w.iter().enumerate() {
            assert_eq!(back[i], *v as usize % 3 == 0);
        }
    }

    #[test]
    fn transposed_rows() {
        // [K=3, N=2] stored; rows are the 2 outputs
        let t = Target {
            name: "w".into(),
            kind: GraphOp::Matmul,
            layout: Layout::Transposed,
            rows: 2,
            cols: 3,
            input: "x".into(),
            features: Some(Features::Last),
        };
        let w = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(t.to_rows(&w), vec![0.0, 2.0, 4.0, 1.0, 3.0, 5.0]);
        let m = [true, false, false, false, false, true];
        assert_eq!(
            t.back_from_rows(&m),
            vec![true, false, false, false, false, true]
        );
    }
}
