//! `prune`: unstructured or N:M sparsity in the linear layers of a llama or
//! bert model's blocks — magnitude (no data), Wanda or SparseGPT (on
//! calibration text, one layer at a time), at one sparsity for every block
//! or (OWL) one per block from its share of outlier activations. Embeddings,
//! the head and norms are left alone. The weights stay dense: zeros are
//! stored as values.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context as _, Result};
use edgec_calibration::{
    sweep_linear_inputs, ChannelStats, Replacements, StatsOptions, SweepOptions,
};
use edgec_core::runtime::Part;
use edgec_core::Model;
use edgec_passes::prune::{self, Owl, Sparsity};
use serde::{Deserialize, Serialize};

use super::{CheckContext, Context, ModelView, Outcome, Pass, QuantKind, State};
use crate::calib;
use crate::error::usage;
use crate::progress::Unit;
use crate::registry::{Changes, DataNeed, ModelNeed, Needs};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PruneMethod {
    /// Drop the smallest |w| of each weight.
    Magnitude,
    /// Drop the lowest |w|·‖x‖ of each output row (calibration data).
    Wanda,
    /// Mask by w²/[H⁻¹]ⱼⱼ and update the weights kept (calibration data).
    Sparsegpt,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    #[default]
    Layer,
    Global,
}

impl Scope {
    fn is_layer(&self) -> bool {
        *self == Scope::Layer
    }
}

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Prune {
    pub method: PruneMethod,
    /// Fraction of each weight to drop (0 < s < 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparsity: Option<f64>,
    /// Or `N:M`: N of every M consecutive inputs (2:4, 4:8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// Calibration text (Wanda, SparseGPT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Magnitude: one threshold per weight (`layer`) or over all of them
    /// (`global`).
    #[serde(default, skip_serializing_if = "Scope::is_layer")]
    pub scope: Scope,
    /// Weights left dense: regular expressions matched against whole
    /// tensor names (e.g. `.*down_proj.*`, `model\.layers\.0\..*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<String>,
    /// Graph models: the weights pruned (see `prune_graph`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ops: Vec<super::prune_graph::GraphOp>,
    /// OWL: each block's sparsity from its share of outlier Wanda scores on
    /// the dense model (calibration data, any method), `sparsity` the mean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owl: Option<OwlParams>,
}

/// OWL's parameters (Yin et al. 2023), the paper's values by default.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OwlParams {
    /// Outlier threshold M: scores above M times their block's mean.
    #[serde(default = "owl_m")]
    pub m: f64,
    /// λ: every block's sparsity within the target ± λ.
    #[serde(default = "owl_lambda")]
    pub lambda: f64,
}

impl Default for OwlParams {
    fn default() -> Self {
        OwlParams {
            m: Owl::M,
            lambda: Owl::LAMBDA,
        }
    }
}

fn owl_m() -> f64 {
    Owl::M
}

fn owl_lambda() -> f64 {
    Owl::LAMBDA
}

impl Prune {
    pub(super) fn sparsity(&self) -> Result<Sparsity> {
        let s = match (self.sparsity, &self.pattern) {
            (Some(f), None) => Sparsity::Fraction(f),
            (None, Some(p)) => {
                return Sparsity::parse_pattern(p).map_err(|e| usage(format!("pattern: {e}")))
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

    /// OWL's parameters, checked against the request.
    fn owl(&self, sparsity: Sparsity) -> Result<Option<Owl>> {
        let Some(p) = self.owl else {
            return Ok(None);
        };
        let Sparsity::Fraction(target) = sparsity else {
            return Err(usage(
                "owl: per-block sparsity is for a sparsity (e.g. 0.5); a pattern (N:M) is the same in every block",
            ));
        };
        if self.scope == Scope::Global {
            return Err(usage(
                "owl: per-block sparsity and scope = \"global\" (one threshold over all weights) exclude each other",
            ));
        }
        let owl = Owl {
            m: p.m,
            lambda: p.lambda,
        };
        owl.check(target).map_err(|e| usage(format!("owl: {e}")))?;
        Ok(Some(owl))
    }

    /// Whether the step reads calibration data.
    fn uses_data(&self) -> bool {
        self.method != PruneMethod::Magnitude || self.owl.is_some()
    }

    fn ignored(&self) -> Result<Vec<regex::Regex>> {
        self.ignore
            .iter()
            .map(|p| {
                regex::Regex::new(&format!("^(?:{p})$"))
                    .map_err(|e| usage(format!("ignore: {p:?} is not a regular expression: {e}")))
            })
            .collect()
    }
}

/// The weights pruned in `part`: the 2-D `.weight` tensors of a block
/// that no `ignore` pattern matches.
fn targets(model: &Model, part: Part, ignore: &[regex::Regex]) -> Vec<String> {
    let Some(family) = &model.meta.family else {
        return vec![];
    };
    match part {
        Part::Layer(_) => part
            .tensors(family)
            .into_iter()
            .filter(|n| {
                n.ends_with(".weight") && model.tensor(n).is_some_and(|t| t.shape.len() == 2)
            })
            .filter(|n| !ignore.iter().any(|r| r.is_match(n)))
            .collect(),
        _ => vec![],
    }
}

/// Wanda's ‖x‖₂ of each input of `module` over the calibration tokens.
fn input_norms(stats: &BTreeMap<String, ChannelStats>, module: &str) -> Result<Vec<f32>> {
    let s = stats
        .get(module)
        .with_context(|| format!("{module}: no input statistics"))?;
    Ok(s.sum_sq.iter().map(|v| v.sqrt() as f32).collect())
}

/// OWL's dense pass: every block's outlier ratio from Wanda's scores of its
/// target weights together, each block fed by the unpruned block before it.
/// Keyed by layer; blocks without targets are left out.
fn owl_ratios(
    model: &Model,
    seqs: &[Vec<u32>],
    targets: &dyn Fn(Part) -> Vec<String>,
    m: f64,
    ctx: &Context,
) -> Result<BTreeMap<usize, f64>> {
    let family = model.meta.family.as_ref().context("checked: a family")?;
    let mut opts = SweepOptions::new(StatsOptions {
        gram_for: vec![],
        gram_step: 1,
    });
    opts.propagate = false;
    let bar = ctx.progress.bar(
        edgec_calibration::sweep_units(family, seqs),
        "owl",
        Unit::Tokens,
    );
    let mut ratios = BTreeMap::new();
    let mut on_layer = |part: Part,
                        stats: BTreeMap<String, ChannelStats>|
     -> std::result::Result<Replacements, edgec_calibration::CallbackError> {
        let Part::Layer(i) = part else {
            return Ok(Replacements::new());
        };
        let names = targets(part);
        if names.is_empty() {
            return Ok(Replacements::new());
        }
        let mut scores = Vec::with_capacity(names.len());
        for name in &names {
            let (w, _) = weight(model, name)?;
            let norms = input_norms(&stats, name.trim_end_matches(".weight"))?;
            scores.push(prune::wanda_scores(&w, &norms));
        }
        ratios.insert(i, prune::outlier_ratio(&scores, m));
        Ok(Replacements::new())
    };
    sweep_linear_inputs(model, seqs, &opts, &mut on_layer, &|done| {
        bar.set_position(done)
    })
    .map_err(|e| anyhow::anyhow!("{}: OWL's outlier statistics: {e}", ctx.input.display()))?;
    bar.finish();
    Ok(ratios)
}

/// A weight's values as `[rows, cols]` f32 and its row length.
fn weight(model: &Model, name: &str) -> Result<(Vec<f32>, usize)> {
    let t = model
        .tensor(name)
        .with_context(|| format!("{name}: not in the model"))?;
    let cols = *t.shape.last().context("a weight without a shape")?;
    Ok((t.to_f32()?, cols))
}

impl Pass for Prune {
    fn needs(&self) -> Needs {
        let data = self.uses_data();
        Needs {
            data: if data {
                DataNeed::Required
            } else {
                DataNeed::None
            },
            activation_stats: data,
            model: ModelNeed::Family,
            written_file: false,
        }
    }

    fn changes(&self) -> Changes {
        Changes {
            weights: true,
            ..Default::default()
        }
    }

    fn data(&self) -> Option<&str> {
        self.data.as_deref()
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data")
    }

    fn check(&self, view: &mut ModelView, ctx: &CheckContext) -> Result<()> {
        if let Some(graph) = super::prune_graph::check(self, view, ctx) {
            return graph;
        }
        let sparsity = self.sparsity()?;
        self.ignored()?;
        self.owl(sparsity)?;
        if self.scope == Scope::Global {
            if self.method != PruneMethod::Magnitude {
                return Err(usage("scope = \"global\" is for method = \"magnitude\""));
            }
            if !matches!(sparsity, Sparsity::Fraction(_)) {
                return Err(usage(
                    "scope = \"global\": a pattern is per group of inputs; give a sparsity",
                ));
            }
        }
        if view.family.is_none() {
            return Err(usage(
                "method: pruning works on llama-family and bert models (read from a Hugging Face folder or GGUF)",
            ));
        }
        if view.quant != QuantKind::None {
            return Err(usage("method: prune before quantizing, not after"));
        }
        match (&self.data, self.method) {
            (Some(d), _) => {
                ctx.data_set(d)?;
            }
            (None, PruneMethod::Wanda | PruneMethod::Sparsegpt) => {
                return Err(usage(format!(
                    "data: method = \"{}\" scores weights by their inputs: give calibration text",
                    crate::names::name_of(&self.method)
                )))
            }
            (None, PruneMethod::Magnitude) if self.owl.is_some() => {
                return Err(usage(
                    "data: owl counts outlier activations: give calibration text",
                ))
            }
            (None, PruneMethod::Magnitude) => {}
        }
        Ok(())
    }

    fn run(&self, state: &mut State, ctx: &Context) -> Result<Outcome> {
        if state.model.graph.is_some() {
            return super::prune_graph::run(self, state, ctx);
        }
        let sparsity = self.sparsity()?;
        let model = &state.model;
        let family = model
            .meta
            .family
            .clone()
            .context("the model has no architecture")?;
        let layers: Vec<Part> = (0..family.num_layers()).map(Part::Layer).collect();
        let ignore = self.ignored()?;
        let targets = |part: Part| targets(model, part, &ignore);
        if layers.iter().all(|p| targets(*p).is_empty()) {
            return Err(usage(
                "ignore: every linear weight is ignored: nothing to prune",
            ));
        }
        for part in &layers {
            for name in targets(*part) {
                let cols = *model
                    .tensor(&name)
                    .and_then(|t| t.shape.last())
                    .unwrap_or(&0);
                sparsity
                    .fits(cols)
                    .map_err(|e| usage(format!("pattern: {name}: {e}")))?;
            }
        }
        let owl = self.owl(sparsity)?;
        let seqs = if self.uses_data() {
            let spec = ctx.data_set(self.data.as_deref().context("checked: data")?)?;
            Some(calib::sequences(
                model,
                &spec.path,
                spec.samples.unwrap_or(128),
                spec.len.unwrap_or(512),
            )?)
        } else {
            None
        };
        // OWL: a dense pass for the outlier ratios, then each block's sparsity
        let start = std::time::Instant::now();
        let owl_layers: Option<BTreeMap<usize, (f64, f64)>> = match (owl, sparsity) {
            (Some(o), Sparsity::Fraction(target)) => {
                let seqs = seqs.as_deref().context("checked: data")?;
                let ratios = owl_ratios(model, seqs, &targets, o.m, ctx)?;
                let d: Vec<f64> = ratios.values().copied().collect();
                let s = prune::owl_sparsities(&d, target, o.lambda);
                Some(
                    ratios
                        .into_iter()
                        .zip(s)
                        .map(|((l, d), s)| (l, (d, s)))
                        .collect(),
                )
            }
            _ => None,
        };
        let seconds_owl = owl_layers.as_ref().map(|_| start.elapsed().as_secs_f64());
        let sparsity_of = |part: Part| match (&owl_layers, part) {
            (Some(layers), Part::Layer(i)) => layers
                .get(&i)
                .map_or(sparsity, |&(_, s)| Sparsity::Fraction(s)),
            _ => sparsity,
        };
        let mut pruned: HashMap<String, Vec<f32>> = HashMap::new();
        let mut seconds_sweep = None;
        match self.method {
            PruneMethod::Magnitude => {
                let names: Vec<(Part, String)> = layers
                    .iter()
                    .flat_map(|p| targets(*p).into_iter().map(|n| (*p, n)))
                    .collect();
                // global: one threshold over every target weight
                let mut global = match (self.scope, sparsity) {
                    (Scope::Global, Sparsity::Fraction(f)) => {
                        let total: usize = names
                            .iter()
                            .filter_map(|(_, n)| model.tensor(n))
                            .map(|t| t.numel())
                            .sum();
                        let k = (f * total as f64).round() as usize;
                        let mut failed = None;
                        let found = prune::global_threshold(k, |visit| {
                            for (_, n) in &names {
                                match weight(model, n) {
                                    Ok((w, _)) => visit(&w),
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
                let bar = ctx.progress.bar(names.len() as u64, "prune", Unit::Items);
                for (part, name) in names {
                    let (mut w, cols) = weight(model, &name)?;
                    let mask = match &mut global {
                        Some((threshold, ties)) => prune::mask_below(&w, *threshold, ties),
                        None => prune::mask_per_tensor(
                            &prune::magnitude_scores(&w),
                            cols,
                            sparsity_of(part),
                        ),
                    };
                    prune::apply_mask(&mut w, &mask);
                    pruned.insert(name, w);
                    bar.inc(1);
                }
                bar.finish();
            }
            PruneMethod::Wanda | PruneMethod::Sparsegpt => {
                let start = std::time::Instant::now();
                let seqs = seqs.as_deref().context("checked: data")?;
                let gram_for = if self.method == PruneMethod::Sparsegpt {
                    layers
                        .iter()
                        .flat_map(|p| targets(*p))
                        .filter_map(|n| n.strip_suffix(".weight").map(str::to_string))
                        .collect()
                } else {
                    vec![]
                };
                // every token enters the Gram matrices, as SparseGPT's reference does
                let mut opts = SweepOptions::new(StatsOptions {
                    gram_for,
                    gram_step: 1,
                });
                opts.propagate = true;
                let bar = ctx.progress.bar(
                    edgec_calibration::sweep_units(&family, seqs),
                    "prune",
                    Unit::Tokens,
                );
                let method = self.method;
                let mut on_layer = |part: Part,
                                    stats: BTreeMap<String, ChannelStats>|
                 -> std::result::Result<
                    Replacements,
                    edgec_calibration::CallbackError,
                > {
                    let mut out = Replacements::new();
                    let names = targets(part);
                    if names.is_empty() {
                        return Ok(out);
                    }
                    let sparsity = sparsity_of(part);
                    let groups = if method == PruneMethod::Sparsegpt {
                        calib::by_gram_input(model, &stats, &names)
                    } else {
                        names.into_iter().map(|n| (None, vec![n])).collect()
                    };
                    for (input, weights) in groups {
                        // SparseGPT: one input's Hessian at a time
                        let hessian = match &input {
                            Some(i) => {
                                Some(calib::hessian_of(&stats, i, &weights, &HashMap::new())?)
                            }
                            None => None,
                        };
                        for name in weights {
                            let (mut w, cols) = weight(model, &name)?;
                            match &hessian {
                                Some(h) => {
                                    prune::sparsegpt(&mut w, h, sparsity, 128);
                                }
                                None if method == PruneMethod::Sparsegpt => {
                                    return Err(format!("{name}: no input Gram matrix").into());
                                }
                                None => {
                                    let norms =
                                        input_norms(&stats, name.trim_end_matches(".weight"))?;
                                    let mask = prune::mask_per_row(
                                        &prune::wanda_scores(&w, &norms),
                                        cols,
                                        sparsity,
                                    );
                                    prune::apply_mask(&mut w, &mask);
                                }
                            }
                            out.insert(name.clone(), w.clone());
                            pruned.insert(name, w);
                        }
                    }
                    Ok(out)
                };
                let report = sweep_linear_inputs(model, seqs, &opts, &mut on_layer, &|done| {
                    bar.set_position(done)
                })
                .map_err(|e| anyhow::anyhow!("{}: pruning: {e}", ctx.input.display()))?;
                bar.finish();
                seconds_sweep = Some((start.elapsed().as_secs_f64(), report.tokens));
            }
        }
        // what the weights are now, before the model takes them
        let mut tensors = serde_json::Map::new();
        let (mut zeros, mut count) = (0usize, 0usize);
        let mut names: Vec<&String> = pruned.keys().collect();
        names.sort();
        for name in names {
            let w = &pruned[name];
            let z = w.iter().filter(|v| **v == 0.0).count();
            zeros += z;
            count += w.len();
            tensors.insert(
                name.clone(),
                serde_json::json!(z as f64 / w.len().max(1) as f64),
            );
        }
        let n = pruned.len();
        calib::replace_tensors(&mut state.model, pruned)?;
        let how = match (self.sparsity, &self.pattern) {
            (_, Some(p)) => p.clone(),
            (Some(f), None) if owl.is_some() => {
                format!("{:.0}% mean of the blocks, OWL", f * 100.0)
            }
            (Some(f), None) => format!("{:.0}%", f * 100.0),
            _ => unreachable!("checked"),
        };
        let mut line = format!(
            "pruned {n} weights ({}, {how}): {:.2}% of their values are zero",
            crate::names::name_of(&self.method),
            100.0 * zeros as f64 / count.max(1) as f64
        );
        if let Some((s, tokens)) = seconds_sweep {
            line.push_str(&format!("; calibrated on {tokens} tokens in {s:.2}s"));
        }
        let mut lines = vec![line];
        let mut summary = serde_json::json!({ "sparsity": tensors });
        if let (Some(o), Some(layers)) = (owl, &owl_layers) {
            let list: Vec<String> = layers
                .iter()
                .map(|(l, (_, s))| format!("{l}: {:.1}%", 100.0 * s))
                .collect();
            lines.push(format!(
                "OWL (M {}, lambda {}; outlier statistics in {:.2}s): block sparsity {}",
                o.m,
                o.lambda,
                seconds_owl.unwrap_or(0.0),
                list.join(", ")
            ));
            summary["owl"] = serde_json::json!({
                "m": o.m,
                "lambda": o.lambda,
                "layers": layers
                    .iter()
                    .map(|(l, (d, s))| serde_json::json!({
                        "layer": l,
                        "outlier_ratio": d,
                        "sparsity": s,
                    }))
                    .collect::<Vec<_>>(),
            });
        }
        Ok(Outcome {
            lines,
            summary,
            ..Default::default()
        })
    }
}
