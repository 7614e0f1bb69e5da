//! `prune.channels`: structured channel pruning of CNN graphs. Output
//! channels are removed in dependency groups (see
//! [`edgec_passes::channel_groups`]): the producing Convs lose filters, the
//! depthwise Convs, BatchNorms and per-channel constants of the group lose
//! the same channels, and the consumers (Convs, a Gemm behind a global
//! pool) lose input channels, so every tensor shrinks and the model stays
//! a plain graph that every writer and runtime takes.
//!
//! Channels are ranked data-free, by the L2 norm of their filters in the
//! producing Convs (summed when a residual Add ties several producers).
//! `channels = F` removes a fraction F of every prunable group (kept counts
//! rounded to multiples of 8 from 16 channels up); `macs = F` searches the
//! uniform fraction whose pruned model has at least F fewer multiply-adds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use candle_core::{Device, Tensor as CTensor};
use edgec_core::graph::{Dim, Op};
use edgec_core::runtime::graph::GraphRuntime;
use edgec_core::Model;
use edgec_passes::channel_groups::{self, Group};
use edgec_passes::structured;
use serde::{Deserialize, Serialize};

use super::{CheckContext, Context, ModelView, Outcome, Pass, QuantKind, State};
use crate::error::usage;
use crate::registry::{Changes, DataNeed, ModelNeed, Needs};

/// The parameters of `prune.channels`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneChannels {
    /// Fraction of each prunable group's channels to remove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<f64>,
    /// Fraction of the model's multiply-adds to remove (a uniform channel
    /// fraction is searched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macs: Option<f64>,
}

impl Pass for PruneChannels {
    fn needs(&self) -> Needs {
        Needs {
            data: DataNeed::None,
            activation_stats: false,
            model: ModelNeed::Graph,
            written_file: false,
        }
    }

    fn changes(&self) -> Changes {
        Changes {
            weights: true,
            shapes: true,
            graph: true,
            ..Default::default()
        }
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data")
    }

    fn check(&self, view: &mut ModelView, _ctx: &CheckContext) -> Result<()> {
        let f = match (self.channels, self.macs) {
            (Some(_), Some(_)) => return Err(usage("channels, macs: give one or the other")),
            (None, None) => {
                return Err(usage(
                    "prune.channels: give channels (a fraction of each group's channels) or macs (a fraction of the multiply-adds)",
                ))
            }
            (Some(f), None) => ("channels", f),
            (None, Some(f)) => ("macs", f),
        };
        if !(f.1 > 0.0 && f.1 < 1.0) {
            return Err(usage(format!(
                "{}: {} must be between 0 and 1, both excluded",
                f.0, f.1
            )));
        }
        if view.family.is_some() || !view.graph {
            return Err(usage(
                "prune.channels: channel pruning is for graph models (ONNX, TFLite CNNs); use --ffn/--heads/--layers for llama models",
            ));
        }
        if view.quant != QuantKind::None {
            return Err(usage("prune.channels: prune before quantizing, not after"));
        }
        Ok(())
    }

    fn run(&self, state: &mut State, _ctx: &Context) -> Result<Outcome> {
        if state.model.graph.is_none() {
            return Err(usage("prune.channels: the model has no graph"));
        }
        let groups = channel_groups::find_groups(&state.model);
        let prunable: Vec<&Group> = groups.iter().filter(|g| g.prunable()).collect();
        if prunable.is_empty() {
            return Err(usage(
                "prune.channels: no channel group of this graph can be pruned (every one reaches a reshape, concat, graph output or shared weight)",
            ));
        }
        let positions = positions(&state.model)?;
        let before = macs(&state.model, &positions);
        let scores: Vec<Vec<f32>> = prunable
            .iter()
            .map(|g| channel_groups::channel_scores(&state.model, g))
            .collect();
        let prune_at = |f: f64| -> Result<Model> {
            let mut m = state.model.clone();
            for (g, s) in prunable.iter().zip(&scores) {
                let keep =
                    structured::keep_most_important(s, channel_groups::keep_count(g.channels, f));
                if keep.len() < g.channels {
                    channel_groups::apply(&mut m, g, &keep)?;
                }
            }
            Ok(m)
        };
        let fraction = match (self.channels, self.macs) {
            (Some(f), _) => f,
            (None, Some(target)) => {
                // the smallest uniform fraction reaching the target
                let (mut lo, mut hi) = (0.0f64, 0.95f64);
                let reached = |f: f64| -> Result<bool> {
                    let m = prune_at(f)?;
                    Ok(1.0 - macs(&m, &positions) as f64 / before as f64 >= target)
                };
                if !reached(hi)? {
                    return Err(usage(format!(
                        "macs: {target} cannot be removed from the prunable groups (at most {:.1}%)",
                        100.0 * (1.0 - macs(&prune_at(hi)?, &positions) as f64 / before as f64)
                    )));
                }
                for _ in 0..20 {
                    let mid = 0.5 * (lo + hi);
                    if reached(mid)? {
                        hi = mid;
                    } else {
                        lo = mid;
                    }
                }
                hi
            }
            _ => unreachable!("checked"),
        };
        let pruned = prune_at(fraction)?;
        let after = macs(&pruned, &positions);
        let params_before = state.model.total_params();
        state.model = pruned;
        let mut widths = Vec::new();
        let (mut ch_before, mut ch_after) = (0, 0);
        for g in &prunable {
            let k = channel_groups::keep_count(g.channels, fraction).min(g.channels);
            ch_before += g.channels;
            ch_after += k;
            widths.push(serde_json::json!({
                "producers": g.producers,
                "channels": g.channels,
                "kept": k,
            }));
        }
        let line = format!(
            "pruned channels of {} of {} groups (fraction {:.3}): {} → {} channels, MACs {:.1}M → {:.1}M (-{:.1}%), parameters {} → {}",
            prunable.len(),
            groups.len(),
            fraction,
            ch_before,
            ch_after,
            before as f64 / 1e6,
            after as f64 / 1e6,
            100.0 * (1.0 - after as f64 / before as f64),
            params_before,
            state.model.total_params()
        );
        Ok(Outcome {
            lines: vec![line],
            summary: serde_json::json!({
                "fraction": fraction,
                "macs_before": before,
                "macs_after": after,
                "groups": widths,
                "blocked": groups.iter().filter_map(|g| g.blocked.as_ref().map(|b| serde_json::json!({"producers": g.producers, "why": b}))).collect::<Vec<_>>(),
            }),
            ..Default::default()
        })
    }
}

/// For each Conv/Gemm/MatMul node (by index), how many output positions it
/// computes per weight element: a Conv's N·H·W, a Gemm's rows. MACs are
/// then `positions × weight elements`, whatever the channel counts.
fn positions(model: &Model) -> Result<HashMap<usize, usize>> {
    let graph = model.graph.as_ref().expect("checked");
    let shapes: Arc<Mutex<HashMap<String, Vec<usize>>>> = Arc::default();
    let mut rt = GraphRuntime::new(model)?;
    let s = Arc::clone(&shapes);
    rt.set_hook(Some(Arc::new(move |name: &str, t: &CTensor| {
        s.lock()
            .expect("shapes lock")
            .insert(name.to_string(), t.dims().to_vec());
    })));
    let mut inputs = Vec::new();
    for i in &graph.inputs {
        if model.tensor(&i.name).is_some() {
            continue;
        }
        let dims: Vec<usize> = i
            .shape
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => *n,
                Dim::Named(_) => 1,
            })
            .collect();
        let t = CTensor::zeros(dims, candle_core::DType::F32, &Device::Cpu)?;
        inputs.push((i.name.as_str(), t));
    }
    rt.run(&inputs)
        .context("prune.channels: running the graph once for its shapes")?;
    let shapes = shapes.lock().expect("shapes lock");
    let mut out = HashMap::new();
    for (idx, n) in graph.nodes.iter().enumerate() {
        let Some(dims) = n.outputs.first().and_then(|o| shapes.get(o)) else {
            continue;
        };
        let Some(w) = n.inputs.get(1).and_then(|w| model.tensor(w)) else {
            continue;
        };
        let p = match &n.op {
            Op::Conv { .. } if w.shape.len() >= 3 => {
                dims.iter().product::<usize>() / dims.get(1).copied().unwrap_or(1).max(1)
            }
            Op::Gemm { .. } | Op::MatMul if w.shape.len() == 2 => {
                dims.iter().product::<usize>() / dims.last().copied().unwrap_or(1).max(1)
            }
            _ => continue,
        };
        out.insert(idx, p);
    }
    Ok(out)
}

/// The multiply-adds of the Conv/Gemm/MatMul nodes of `model`.
fn macs(model: &Model, positions: &HashMap<usize, usize>) -> u64 {
    let graph = model.graph.as_ref().expect("a graph");
    positions
        .iter()
        .map(|(&i, &p)| {
            graph.nodes[i]
                .inputs
                .get(1)
                .and_then(|w| model.tensor(w))
                .map_or(0, |w| (p * w.numel()) as u64)
        })
        .sum()
}
