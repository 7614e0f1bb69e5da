//! `prune` on graph models (imported ONNX or TFLite files): unstructured or
//! N:M magnitude sparsity in the constant weights of Conv, Gemm and MatMul
//! nodes. The weights stay dense (zeros stored as values); the TFLite
//! writer can store sparse conv weights through DENSIFY (`tflite_sparse`).
//!
//! Every weight is seen as `[outputs, inputs]` rows, one row per output
//! channel and kernel position: a Conv weight `[M, C/g, kH, kW]` as
//! `[M·kH·kW, C/g]` (the input channels of one output channel at one kernel
//! tap, TFLite's OHWI order), a Gemm/MatMul weight as `[N, K]` (transposed
//! when stored `[K, N]`). A fraction is taken over the whole weight (or over
//! all of them with `scope = "global"`); an N:M pattern drops N of every M
//! consecutive input channels of a row, so N:M groups run along the input
//! channels of each output channel.
//!
//! Which weights (`ops`): `conv` (every non-depthwise Conv, 1×1 included),
//! `pointwise` (1×1 Convs only), `depthwise`, `gemm`, `matmul` (a constant
//! 2-D right operand). The default is `conv`, `gemm`, `matmul`: depthwise
//! filters are left dense, since they hold few weights, every one of them
//! matters for its channel, and XNNPACK's sparse path only computes 1×1
//! convolutions sparse. `ops = ["pointwise"]` is what that path uses.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context as _, Result};
use edgec_core::graph::Op;
use edgec_core::{DType, Model, Tensor, TensorData};
use edgec_passes::prune::{self, Sparsity};
use serde::{Deserialize, Serialize};

use super::prune::{Prune, PruneMethod, Scope};
use super::{CheckContext, Context, ModelView, Outcome, QuantKind, State};
use crate::error::usage;
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

/// A weight to prune.
#[derive(Clone, Debug)]
struct Target {
    name: String,
    kind: GraphOp,
    layout: Layout,
    rows: usize,
    cols: usize,
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

    /// A mask in the `[rows, cols]` view back in the weight's own order.
    fn mask_from_rows(&self, mask: &[bool]) -> Vec<bool> {
        let mut out = vec![false; mask.len()];
        match self.layout {
            Layout::Rows => out.copy_from_slice(mask),
            Layout::Transposed => {
                for k in 0..self.cols {
                    for n in 0..self.rows {
                        out[k * self.rows + n] = mask[n * self.cols + k];
                    }
                }
            }
            Layout::Conv { m, c, taps } => {
                for o in 0..m {
                    for ci in 0..c {
                        for t in 0..taps {
                            out[(o * c + ci) * taps + t] = mask[(o * taps + t) * c + ci];
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
                Some((kind, Layout::Conv { m, c, taps }, m * taps, c))
            }
            Op::Gemm { trans_b, .. } if w.shape.len() == 2 => {
                let (r, c) = (w.shape[0], w.shape[1]);
                Some(if *trans_b {
                    (GraphOp::Gemm, Layout::Rows, r, c)
                } else {
                    (GraphOp::Gemm, Layout::Transposed, c, r)
                })
            }
            Op::MatMul if w.shape.len() == 2 => {
                Some((GraphOp::Matmul, Layout::Transposed, w.shape[1], w.shape[0]))
            }
            _ => None,
        };
        let Some((kind, layout, rows, cols)) = found else {
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
        });
    }
    out
}

/// The `ops` of a step, with the default filled in.
fn ops_of(p: &Prune) -> Vec<GraphOp> {
    if p.ops.is_empty() {
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
    if p.method != PruneMethod::Magnitude {
        return Err(usage(format!(
            "method = \"{}\": graph models (ONNX, TFLite) are pruned by magnitude only; Wanda and SparseGPT need the layer-by-layer sweep of llama and bert models",
            crate::names::name_of(&p.method)
        )));
    }
    let sparsity = sparsity_of(p)?;
    if p.scope == Scope::Global && !matches!(sparsity, Sparsity::Fraction(_)) {
        return Err(usage(
            "scope = \"global\": a pattern is per group of inputs; give a sparsity",
        ));
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

fn sparsity_of(p: &Prune) -> Result<Sparsity> {
    let s = match (p.sparsity, &p.pattern) {
        (Some(f), None) => Sparsity::Fraction(f),
        (None, Some(pat)) => {
            return Sparsity::parse_pattern(pat).map_err(|e| usage(format!("pattern: {e}")))
        }
        (Some(_), Some(_)) => return Err(usage("sparsity, pattern: give one or the other")),
        (None, None) => {
            return Err(usage(
                "sparsity: give a fraction (e.g. 0.5) or a pattern (e.g. \"2:4\")",
            ))
        }
    };
    s.check().map_err(|e| usage(format!("sparsity: {e}")))?;
    Ok(s)
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

/// `prune` on a graph model (magnitude, per weight or global).
pub fn run(p: &Prune, state: &mut State, ctx: &Context) -> Result<Outcome> {
    let sparsity = sparsity_of(p)?;
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
        let mask = match &mut global {
            Some((threshold, ties)) => prune::mask_below(&w, *threshold, ties),
            None => {
                let rows = t.to_rows(&w);
                let m = prune::mask_per_tensor(&prune::magnitude_scores(&rows), t.cols, sparsity);
                t.mask_from_rows(&m)
            }
        };
        prune::apply_mask(&mut w, &mask);
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
    let line = format!(
        "pruned {n} graph weights (magnitude{}, {how}): {:.2}% of their values are zero ({})",
        if p.scope == Scope::Global {
            ", global"
        } else {
            ""
        },
        100.0 * zeros as f64 / count.max(1) as f64,
        kinds.join(", ")
    );
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
        };
        let w: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let rows = t.to_rows(&w);
        // row (m=0, tap=1) holds w[0, c, 0, 1] = c*2 + 1
        assert_eq!(&rows[4..8], &[1.0, 3.0, 5.0, 7.0]);
        let mask: Vec<bool> = rows.iter().map(|v| *v as usize % 3 == 0).collect();
        let back = t.mask_from_rows(&mask);
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
        };
        let w = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(t.to_rows(&w), vec![0.0, 2.0, 4.0, 1.0, 3.0, 5.0]);
        let m = [true, false, false, false, false, true];
        assert_eq!(
            t.mask_from_rows(&m),
            vec![true, false, false, false, false, true]
        );
    }
}
