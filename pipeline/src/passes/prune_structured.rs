//! `prune.structured`: fewer FFN neurons, attention heads or whole layers in
//! a llama-family model, so the files shrink and run faster in every
//! runtime.
//!
//! Everything is ranked on the dense model first, one layer at a time on
//! calibration text: an FFN neuron by its mean |activation| (the input of
//! `down_proj`, Minitron's measure), a head by its expected contribution to
//! the residual stream (mean |attention output| times the norm of the
//! `o_proj` columns it writes through), a layer by its block influence (one
//! minus the cosine between the stream entering and leaving it, ShortGPT's
//! measure). Without data, units are ranked by their weights' norms; layers
//! need data.
//!
//! Uniform mode gives every layer the same widths (llama.cpp's `llama`
//! holds them). Non-uniform mode lets layers compete for one budget: FFN
//! neurons, taken in each layer's activation order, are valued by the
//! Fisher estimate of what removing them costs the next-token loss (one
//! backward pass per sequence: the loss units are the same in every layer,
//! which activations are not); heads by their contribution scaled by the
//! residual stream they add to. Per-layer widths are written as llama.cpp's
//! `deci` and DeciLM's `block_configs`.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use edgec_calibration::{
    sweep_linear_inputs, ChannelStats, Replacements, StatsOptions, SweepOptions,
};
use edgec_core::runtime::Part;
use edgec_core::{BlockShape, Family, LlamaParams, LlamaVariant, Model, Tensor};
use edgec_passes::structured;
use serde::{Deserialize, Serialize};

use super::{CheckContext, Context, FamilyKind, ModelView, Outcome, Pass, QuantKind, State};
use crate::error::usage;
use crate::mixed::FISHER_SEQS;
use crate::progress::Unit;
use crate::registry::{Changes, DataNeed, ModelNeed, Needs};

/// Uniform FFN widths are multiples of this (the block of Q4_0/Q8_0 rows).
const WIDTH_MULTIPLE: usize = 32;

/// Non-uniform FFN widths are multiples of this when the width is, so that
/// DeciLM configs (whose widths are multiples of 256) can hold them.
const DECI_MULTIPLE: usize = 256;

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct PruneStructured {
    /// Fraction of the FFN neurons to remove (0 < f < 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ffn: Option<f64>,
    /// Fraction of the query heads to remove (0 < f < 1): whole GQA groups
    /// when it is a multiple of a group, else the same number from each group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads: Option<f64>,
    /// Number of whole layers to remove (needs data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<usize>,
    /// One width for all layers (true), or per-layer widths from a global
    /// ranking at the same total (false, the default).
    #[serde(default)]
    pub uniform: bool,
    /// Calibration text: rank by activations instead of weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

/// What the dense model's calibration says about each layer.
struct Measured {
    /// Per layer, mean |input| of `down_proj` (one per FFN neuron).
    ffn: Vec<Vec<f32>>,
    /// Per layer and FFN neuron, the Fisher estimate of the loss its removal
    /// costs (non-uniform FFN pruning only).
    ffn_fisher: Option<Vec<Vec<f32>>>,
    /// Per layer, mean |input| of `o_proj` (one per attention channel).
    attn: Vec<Vec<f32>>,
    /// Per layer, the cosine between its input and output streams.
    cosine: Vec<f64>,
    /// Per layer, the RMS of its input stream.
    rms: Vec<f64>,
}

/// How heads are removed in every layer.
#[derive(Clone, Copy, Debug, PartialEq)]
enum HeadCut {
    /// This many whole GQA groups (query heads and their key/value head).
    Groups(usize),
    /// This many query heads from every group; key/value heads stay.
    PerGroup(usize),
}

fn ffn_names(i: usize) -> [String; 3] {
    ["gate_proj", "up_proj", "down_proj"].map(|p| format!("model.layers.{i}.mlp.{p}.weight"))
}

impl PruneStructured {
    /// The uniform FFN width for a width of `inter`.
    fn ffn_width(ffn: f64, inter: usize) -> Result<usize> {
        let keep = (1.0 - ffn) * inter as f64;
        let multiple = if inter.is_multiple_of(WIDTH_MULTIPLE) {
            WIDTH_MULTIPLE
        } else {
            1
        };
        let width = ((keep / multiple as f64).round() as usize) * multiple;
        if width == 0 || width >= inter {
            return Err(usage(format!(
                "ffn: removing {ffn} of {inter} neurons leaves {width} (widths are multiples of {multiple}): pick a fraction that removes some and keeps some"
            )));
        }
        Ok(width)
    }

    /// How `heads` of `nh` query heads sharing `nkv` key/value heads are cut.
    fn head_cut(heads: f64, nh: usize, nkv: usize) -> Result<HeadCut> {
        let rep = nh / nkv;
        let removed = (heads * nh as f64).round() as usize;
        if removed > 0 && removed.is_multiple_of(rep) && removed / rep < nkv {
            return Ok(HeadCut::Groups(removed / rep));
        }
        if removed > 0 && removed.is_multiple_of(nkv) && removed / nkv < rep {
            return Ok(HeadCut::PerGroup(removed / nkv));
        }
        let groups: Vec<String> = (1..nkv).map(|g| (g * rep).to_string()).collect();
        let per: Vec<String> = (1..rep).map(|r| (r * nkv).to_string()).collect();
        Err(usage(format!(
            "heads: {heads} of {nh} query heads is {removed}; {nh} heads in {nkv} groups of {rep} can lose whole groups ({}) or the same number from each group ({}) — pick a fraction giving one of those",
            if groups.is_empty() { "none".into() } else { groups.join(", ") },
            if per.is_empty() { "none".into() } else { per.join(", ") },
        )))
    }
}

impl Pass for PruneStructured {
    fn needs(&self) -> Needs {
        Needs {
            data: if self.layers.is_some() {
                DataNeed::Required
            } else {
                DataNeed::Optional
            },
            activation_stats: self.data.is_some(),
            model: ModelNeed::Family,
            written_file: false,
        }
    }

    fn changes(&self) -> Changes {
        Changes {
            weights: true,
            shapes: true,
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
        if self.ffn.is_none() && self.heads.is_none() && self.layers.is_none() {
            return Err(usage(
                "prune.structured: say what to remove: ffn (a fraction), heads (a fraction) or layers (a count)",
            ));
        }
        for (name, f) in [("ffn", self.ffn), ("heads", self.heads)] {
            if let Some(f) = f.filter(|f| !(*f > 0.0 && *f < 1.0)) {
                return Err(usage(format!(
                    "{name}: {f} must be between 0 and 1, both excluded"
                )));
            }
        }
        if self.layers == Some(0) {
            return Err(usage("layers: remove at least one layer"));
        }
        if self.layers.is_some() && self.data.is_none() {
            return Err(usage(
                "layers: whole layers are ranked by what they do to calibration text: give data (--calib TEXT)",
            ));
        }
        if view.family != Some(FamilyKind::Llama) {
            return Err(usage(
                "structured pruning works on llama-family models for now",
            ));
        }
        if view.quant != QuantKind::None {
            return Err(usage(
                "structured pruning comes before quantizing, not after",
            ));
        }
        if let Some(d) = &self.data {
            ctx.data_set(d)?;
        }
        Ok(())
    }

    fn run(&self, state: &mut State, ctx: &Context) -> Result<Outcome> {
        let model = &state.model;
        let Some(Family::Llama(p)) = model.meta.family.clone() else {
            return Err(usage(
                "structured pruning works on llama-family models for now",
            ));
        };
        if !p.is_uniform() {
            return Err(usage(
                "the model's layers already have different widths: prune it from the original",
            ));
        }
        if let Some(n) = self.layers.filter(|&n| n >= p.num_layers) {
            return Err(usage(format!(
                "layers: removing {n} of {} layers leaves none",
                p.num_layers
            )));
        }
        let ffn_width = self
            .ffn
            .map(|f| Self::ffn_width(f, p.intermediate_size))
            .transpose()?;
        let head_cut = self
            .heads
            .map(|f| Self::head_cut(f, p.num_heads, p.num_kv_heads))
            .transpose()?;
        if let (false, Some(HeadCut::PerGroup(_))) = (self.uniform, head_cut) {
            return Err(usage(
                "heads: non-uniform pruning removes whole GQA groups: pick a fraction that is a multiple of a group",
            ));
        }
        let measured = match &self.data {
            Some(d) => Some(measure(model, ctx, d, !self.uniform && self.ffn.is_some())?),
            None => None,
        };

        let dropped = match (self.layers, &measured) {
            (Some(n), Some(m)) => structured::least_influential_layers(&m.cosine, n),
            _ => Vec::new(),
        };
        let kept_layers: Vec<usize> = (0..p.num_layers).filter(|l| !dropped.contains(l)).collect();

        // Per kept layer: unit scores, then which units stay.
        let scale = |i: usize| {
            measured
                .as_ref()
                .map_or(1.0, |m| m.rms[i].max(1e-12) as f32)
        };
        let mut ffn_keep: Vec<Option<Vec<usize>>> = vec![None; p.num_layers];
        if let Some(width) = ffn_width {
            let scores = kept_layers
                .iter()
                .map(|&i| ffn_scores(model, &p, i, measured.as_ref()))
                .collect::<Result<Vec<_>>>()?;
            let widths = if self.uniform {
                vec![width; kept_layers.len()]
            } else {
                let step = if p.intermediate_size.is_multiple_of(DECI_MULTIPLE) {
                    DECI_MULTIPLE
                } else if p.intermediate_size.is_multiple_of(WIDTH_MULTIPLE) {
                    WIDTH_MULTIPLE
                } else {
                    1
                };
                let total = width * kept_layers.len() / step * step;
                match measured.as_ref().and_then(|m| m.ffn_fisher.as_ref()) {
                    // each layer's neurons in activation order, valued by
                    // the Fisher estimate of what removing them costs
                    Some(fisher) => {
                        let ordered: Vec<Vec<f32>> = scores
                            .iter()
                            .zip(&kept_layers)
                            .map(|(s, &i)| {
                                structured::order_by_importance(s)
                                    .into_iter()
                                    .map(|j| fisher[i][j])
                                    .collect()
                            })
                            .collect();
                        structured::allocate_in_order(&ordered, step, step, total)
                    }
                    None => structured::allocate(&scores, step, step, total),
                }
            };
            for ((s, &i), w) in scores.iter().zip(&kept_layers).zip(widths) {
                ffn_keep[i] = Some(structured::keep_most_important(s, w));
            }
        }
        // (query heads kept, kv heads kept) per layer
        let mut head_keep: Vec<Option<(Vec<usize>, Vec<usize>)>> = vec![None; p.num_layers];
        if let Some(cut) = head_cut {
            let (nh, nkv) = (p.num_heads, p.num_kv_heads);
            let rep = nh / nkv;
            let scores = kept_layers
                .iter()
                .map(|&i| head_scores(model, &p, i, measured.as_ref()))
                .collect::<Result<Vec<_>>>()?;
            match cut {
                HeadCut::Groups(g) => {
                    let group_scores: Vec<Vec<f32>> = scores
                        .iter()
                        .map(|s| structured::sum_runs(s, rep))
                        .collect();
                    let counts = if self.uniform {
                        vec![nkv - g; kept_layers.len()]
                    } else {
                        let scaled: Vec<Vec<f32>> = group_scores
                            .iter()
                            .zip(&kept_layers)
                            .map(|(s, &i)| s.iter().map(|v| v / scale(i)).collect())
                            .collect();
                        structured::allocate(&scaled, 1, 1, (nkv - g) * kept_layers.len())
                    };
                    for ((s, &i), n) in group_scores.iter().zip(&kept_layers).zip(counts) {
                        let groups = structured::keep_most_important(s, n);
                        let heads = structured::unit_rows(&groups, rep);
                        head_keep[i] = Some((heads, groups));
                    }
                }
                HeadCut::PerGroup(r) => {
                    for (s, &i) in scores.iter().zip(&kept_layers) {
                        let heads = (0..nkv)
                            .flat_map(|g| {
                                structured::keep_most_important(&s[g * rep..(g + 1) * rep], rep - r)
                                    .into_iter()
                                    .map(move |h| g * rep + h)
                            })
                            .collect();
                        head_keep[i] = Some((heads, (0..nkv).collect()));
                    }
                }
            }
        }

        let before = model.total_params();
        let mut shapes = Vec::with_capacity(kept_layers.len());
        let mut replaced: BTreeMap<String, Tensor> = BTreeMap::new();
        for &i in &kept_layers {
            let mut shape = p.block(i);
            if let Some(keep) = &ffn_keep[i] {
                cut_ffn(model, &p, i, keep, &mut replaced)?;
                shape.intermediate_size = keep.len();
            }
            if let Some((heads, groups)) = &head_keep[i] {
                cut_heads(model, &p, i, heads, groups, &mut replaced)?;
                shape.num_heads = heads.len();
                shape.num_kv_heads = groups.len();
            }
            shapes.push(shape);
        }
        // New tensors, dropped layers out and the rest renumbered.
        let renumber: BTreeMap<usize, usize> = kept_layers
            .iter()
            .enumerate()
            .map(|(n, &o)| (o, n))
            .collect();
        let old = std::mem::take(&mut state.model.tensors);
        for t in old {
            let mut t = replaced.remove(&t.name).unwrap_or(t);
            match layer_of(&t.name) {
                Some((i, rest)) => {
                    if let Some(n) = renumber.get(&i) {
                        t.name = format!("model.layers.{n}.{rest}");
                        state.model.tensors.push(t);
                    }
                }
                None => state.model.tensors.push(t),
            }
        }
        let Some(Family::Llama(params)) = &mut state.model.meta.family else {
            unreachable!("checked above")
        };
        params.set_block_shapes(shapes.clone());
        let after = state.model.total_params();

        let mut lines = Vec::new();
        let how = if self.data.is_some() {
            "by activation"
        } else {
            "by weight norms"
        };
        if !dropped.is_empty() {
            lines.push(format!(
                "removed layers {dropped:?} (the least block influence); {} remain",
                kept_layers.len()
            ));
        }
        let list = |f: fn(&BlockShape) -> usize| {
            let v: Vec<String> = shapes.iter().map(|b| f(b).to_string()).collect();
            v.join(" ")
        };
        if ffn_width.is_some() {
            lines.push(format!(
                "FFN neurons ({how}, {}): {} -> {}",
                if self.uniform {
                    "uniform"
                } else {
                    "non-uniform"
                },
                p.intermediate_size,
                list(|b| b.intermediate_size)
            ));
        }
        if head_cut.is_some() {
            lines.push(format!(
                "attention heads ({how}): {}/{} -> {} / {}",
                p.num_heads,
                p.num_kv_heads,
                list(|b| b.num_heads),
                list(|b| b.num_kv_heads)
            ));
        }
        lines.push(format!(
            "{:.2}M -> {:.2}M parameters",
            before as f64 / 1e6,
            after as f64 / 1e6
        ));
        Ok(Outcome {
            lines,
            summary: serde_json::json!({
                "uniform": self.uniform,
                "dropped_layers": dropped,
                "block_cosine": measured.as_ref().map(|m| &m.cosine),
                "layers": shapes.iter().map(|b| serde_json::json!({
                    "heads": b.num_heads,
                    "kv_heads": b.num_kv_heads,
                    "ffn": b.intermediate_size,
                })).collect::<Vec<_>>(),
                "params": { "before": before, "after": after },
            }),
            ..Default::default()
        })
    }
}

/// `model.layers.{i}.rest` → (i, rest).
fn layer_of(name: &str) -> Option<(usize, String)> {
    let rest = name.strip_prefix("model.layers.")?;
    let (i, rest) = rest.split_once('.')?;
    Some((i.parse().ok()?, rest.to_string()))
}

fn f32_of(model: &Model, name: &str) -> Result<Vec<f32>> {
    model
        .tensor(name)
        .with_context(|| format!("{name}: not in the model"))?
        .to_f32()
        .map_err(Into::into)
}

/// Layer `i`'s FFN neuron scores: measured mean |activation|, or weight norms.
fn ffn_scores(model: &Model, p: &LlamaParams, i: usize, m: Option<&Measured>) -> Result<Vec<f32>> {
    if let Some(m) = m {
        return Ok(m.ffn[i].clone());
    }
    let [g, u, d] = ffn_names(i);
    Ok(structured::ffn_magnitude_importance(
        &f32_of(model, &g)?,
        &f32_of(model, &u)?,
        &f32_of(model, &d)?,
        p.intermediate_size,
    ))
}

/// Layer `i`'s query head scores: measured contribution of each head's
/// attention output through `o_proj`, or weight norms (its q rows, its o
/// columns and its group's v rows).
fn head_scores(model: &Model, p: &LlamaParams, i: usize, m: Option<&Measured>) -> Result<Vec<f32>> {
    let (hd, width) = (p.head_dim, p.num_heads * p.head_dim);
    let l = format!("model.layers.{i}.self_attn");
    let o_norms = structured::column_norms(&f32_of(model, &format!("{l}.o_proj.weight"))?, width);
    Ok(match m {
        Some(m) => {
            let c: Vec<f32> = m.attn[i].iter().zip(&o_norms).map(|(a, n)| a * n).collect();
            structured::sum_runs(&c, hd)
        }
        None => {
            let norm2 = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>();
            let q = structured::row_norms(
                &f32_of(model, &format!("{l}.q_proj.weight"))?,
                p.hidden_size,
            );
            let v = structured::row_norms(
                &f32_of(model, &format!("{l}.v_proj.weight"))?,
                p.hidden_size,
            );
            let rep = p.num_heads / p.num_kv_heads;
            (0..p.num_heads)
                .map(|h| {
                    let g = h / rep;
                    let r = h * hd..(h + 1) * hd;
                    (norm2(&q[r.clone()]) * norm2(&o_norms[r]) * norm2(&v[g * hd..(g + 1) * hd]))
                        .sqrt()
                })
                .collect()
        }
    })
}

/// Keeps FFN neurons `keep` of layer `i`.
fn cut_ffn(
    model: &Model,
    p: &LlamaParams,
    i: usize,
    keep: &[usize],
    out: &mut BTreeMap<String, Tensor>,
) -> Result<()> {
    let (hidden, inter, w) = (p.hidden_size, p.intermediate_size, keep.len());
    let [g, u, d] = ffn_names(i);
    let cut = [
        (
            g.clone(),
            structured::select_rows(&f32_of(model, &g)?, hidden, keep),
            vec![w, hidden],
        ),
        (
            u.clone(),
            structured::select_rows(&f32_of(model, &u)?, hidden, keep),
            vec![w, hidden],
        ),
        (
            d.clone(),
            structured::select_cols(&f32_of(model, &d)?, inter, keep),
            vec![hidden, w],
        ),
    ];
    for (name, values, shape) in cut {
        out.insert(name.clone(), Tensor::from_f32(name, shape, values)?);
    }
    Ok(())
}

/// Keeps query heads `heads` and key/value heads `groups` of layer `i`.
fn cut_heads(
    model: &Model,
    p: &LlamaParams,
    i: usize,
    heads: &[usize],
    groups: &[usize],
    out: &mut BTreeMap<String, Tensor>,
) -> Result<()> {
    let (hidden, hd) = (p.hidden_size, p.head_dim);
    let l = format!("model.layers.{i}.self_attn");
    let q_rows = structured::unit_rows(heads, hd);
    let kv_rows = structured::unit_rows(groups, hd);
    let mut put = |name: String, values: Vec<f32>, shape: Vec<usize>| -> Result<()> {
        out.insert(name.clone(), Tensor::from_f32(name, shape, values)?);
        Ok(())
    };
    for (proj, rows) in [
        ("q_proj", &q_rows),
        ("k_proj", &kv_rows),
        ("v_proj", &kv_rows),
    ] {
        let name = format!("{l}.{proj}.weight");
        let w = structured::select_rows(&f32_of(model, &name)?, hidden, rows);
        put(name, w, vec![rows.len(), hidden])?;
        if p.variant == LlamaVariant::Qwen2 {
            let name = format!("{l}.{proj}.bias");
            let b = structured::select_rows(&f32_of(model, &name)?, 1, rows);
            put(name, b, vec![rows.len()])?;
        }
    }
    let name = format!("{l}.o_proj.weight");
    let o = structured::select_cols(&f32_of(model, &name)?, p.num_heads * hd, &q_rows);
    put(name, o, vec![hidden, q_rows.len()])
}

/// The dense model's activations, one layer at a time (no propagation).
fn measure(model: &Model, ctx: &Context, data: &str, fisher: bool) -> Result<Measured> {
    let spec = ctx.data_set(data)?;
    let seqs = crate::calib::sequences(
        model,
        &spec.path,
        spec.samples.unwrap_or(128),
        spec.len.unwrap_or(512),
    )?;
    let family = model
        .meta
        .family
        .clone()
        .context("the model has no architecture")?;
    let mut opts = SweepOptions::new(StatsOptions {
        gram_for: vec![],
        gram_step: 1,
    });
    opts.propagate = false;
    let bar = ctx.progress.bar(
        edgec_calibration::sweep_units(&family, &seqs),
        "importance",
        Unit::Tokens,
    );
    let layers = family.num_layers();
    let (mut ffn, mut attn) = (vec![Vec::new(); layers], vec![Vec::new(); layers]);
    let mut on_layer = |part: Part,
                        stats: BTreeMap<String, ChannelStats>|
     -> std::result::Result<Replacements, edgec_calibration::CallbackError> {
        if let Part::Layer(i) = part {
            for (module, slot) in [("mlp.down_proj", &mut ffn), ("self_attn.o_proj", &mut attn)] {
                let s = stats
                    .get(&format!("model.layers.{i}.{module}"))
                    .ok_or_else(|| format!("layer {i}: no {module} input observed"))?;
                slot[i] = s.mean_abs();
            }
        }
        Ok(Replacements::new())
    };
    let report = sweep_linear_inputs(model, &seqs, &opts, &mut on_layer, &|done| {
        bar.set_position(done)
    })
    .map_err(|e| anyhow::anyhow!("{}: structured importance: {e}", ctx.input.display()))?;
    bar.finish();
    // Layers are compared by what removing their neurons costs the loss.
    let ffn_fisher = if fisher {
        Some(neuron_fisher(
            model,
            &seqs[..seqs.len().min(FISHER_SEQS)],
            ctx,
        )?)
    } else {
        None
    };
    Ok(Measured {
        ffn,
        ffn_fisher,
        attn,
        cosine: report.block_cosine,
        rms: report.block_input_rms,
    })
}

/// Per layer and FFN neuron: ½ E over sequences of (Σ g·w over the neuron's
/// gate row, up row and down column)², the second-order (Fisher) estimate
/// of the next-token loss its removal costs, in the same units for every
/// layer.
fn neuron_fisher(model: &Model, seqs: &[Vec<u32>], ctx: &Context) -> Result<Vec<Vec<f32>>> {
    let Some(Family::Llama(p)) = &model.meta.family else {
        anyhow::bail!("not a llama model");
    };
    let (inter, hidden) = (p.intermediate_size, p.hidden_size);
    let (rt, vars) = edgec_core::runtime::Runtime::trainable(model)?;
    let var = |name: &str| {
        vars.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .with_context(|| format!("{name}: not trainable"))
    };
    let mut acc = vec![vec![0f64; inter]; p.num_layers];
    let bar = ctx.progress.bar(seqs.len() as u64, "fisher", Unit::Items);
    for s in seqs.iter().filter(|s| s.len() >= 2) {
        let grads = crate::mixed::next_token_loss(&rt, s)?.backward()?;
        for (i, acc) in acc.iter_mut().enumerate() {
            // one layer's weights and gradients at a time: [gate, up, down]
            let mut w: Vec<Vec<f32>> = Vec::with_capacity(3);
            let mut g: Vec<Vec<f32>> = Vec::with_capacity(3);
            for name in ffn_names(i) {
                let v = var(&name)?.as_tensor();
                let grad = grads
                    .get(v)
                    .with_context(|| format!("{name}: no gradient"))?;
                w.push(v.flatten_all()?.to_vec1()?);
                g.push(grad.flatten_all()?.to_vec1()?);
            }
            let dot = |a: &[f32], b: &[f32]| -> f64 {
                a.iter()
                    .zip(b)
                    .map(|(x, y)| (*x as f64) * (*y as f64))
                    .sum()
            };
            for (j, acc) in acc.iter_mut().enumerate() {
                let rows = j * hidden..(j + 1) * hidden;
                let mut sum = dot(&g[0][rows.clone()], &w[0][rows.clone()])
                    + dot(&g[1][rows.clone()], &w[1][rows]);
                sum += (0..hidden)
                    .map(|r| (g[2][r * inter + j] as f64) * (w[2][r * inter + j] as f64))
                    .sum::<f64>();
                *acc += sum * sum;
            }
        }
        bar.inc(1);
    }
    bar.finish();
    let k = 0.5 / seqs.len().max(1) as f64;
    Ok(acc
        .into_iter()
        .map(|v| v.into_iter().map(|x| (x * k) as f32).collect())
        .collect())
}
