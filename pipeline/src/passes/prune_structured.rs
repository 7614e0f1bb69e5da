//! `prune.structured`: fewer FFN neurons in every block of a llama-family
//! model (uniform: one new width for all layers), so the files shrink and
//! run faster in every runtime. Neurons are ranked by their mean |activation|
//! on calibration text (Minitron's measure: the input of `down_proj`), or by
//! the weights' norms without data.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use edgec_calibration::{
    sweep_linear_inputs, ChannelStats, Replacements, StatsOptions, SweepOptions,
};
use edgec_core::runtime::Part;
use edgec_core::{Family, Model, Tensor};
use edgec_passes::structured;
use serde::{Deserialize, Serialize};

use super::{CheckContext, Context, FamilyKind, ModelView, Outcome, Pass, QuantKind, State};
use crate::error::usage;
use crate::progress::Unit;
use crate::registry::{Changes, DataNeed, ModelNeed, Needs};

/// New FFN widths are multiples of this (the block of Q4_0/Q8_0 rows).
const WIDTH_MULTIPLE: usize = 32;

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct PruneStructured {
    /// Fraction of each block's FFN neurons to remove (0 < f < 1).
    pub ffn: f64,
    /// Calibration text: rank neurons by activation instead of weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

fn ffn_names(i: usize) -> [String; 3] {
    ["gate_proj", "up_proj", "down_proj"].map(|p| format!("model.layers.{i}.mlp.{p}.weight"))
}

impl PruneStructured {
    /// The new FFN width for a width of `inter`.
    fn new_width(&self, inter: usize) -> Result<usize> {
        let keep = (1.0 - self.ffn) * inter as f64;
        let multiple = if inter.is_multiple_of(WIDTH_MULTIPLE) {
            WIDTH_MULTIPLE
        } else {
            1
        };
        let width = ((keep / multiple as f64).round() as usize) * multiple;
        if width == 0 || width >= inter {
            return Err(usage(format!(
                "ffn: removing {} of {inter} neurons leaves {width} (widths are multiples of {multiple}): pick a fraction that removes some and keeps some",
                self.ffn
            )));
        }
        Ok(width)
    }
}

impl Pass for PruneStructured {
    fn needs(&self) -> Needs {
        Needs {
            data: DataNeed::Optional,
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
        if !(self.ffn > 0.0 && self.ffn < 1.0) {
            return Err(usage(format!(
                "ffn: {} must be between 0 and 1, both excluded",
                self.ffn
            )));
        }
        if view.family != Some(FamilyKind::Llama) {
            return Err(usage(
                "ffn: structured pruning works on llama-family models for now",
            ));
        }
        if view.quant != QuantKind::None {
            return Err(usage("ffn: prune before quantizing, not after"));
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
                "ffn: structured pruning works on llama-family models for now",
            ));
        };
        let (inter, layers) = (p.intermediate_size, p.num_layers);
        let width = self.new_width(inter)?;
        let measured = match &self.data {
            Some(d) => Some(activation_importance(model, ctx, d)?),
            None => None,
        };
        let hidden = p.hidden_size;
        let mut replaced: BTreeMap<String, Tensor> = BTreeMap::new();
        for i in 0..layers {
            let names = ffn_names(i);
            let [g, u, d] = [0, 1, 2].map(|k| f32_of(model, &names[k]));
            let (g, u, d) = (g?, u?, d?);
            let keep = match &measured {
                Some(m) => structured::keep_most_important(&m[i], width),
                None => structured::keep_most_important(
                    &structured::ffn_magnitude_importance(&g, &u, &d, inter),
                    width,
                ),
            };
            let cut = [
                (
                    structured::select_rows(&g, hidden, &keep),
                    vec![width, hidden],
                ),
                (
                    structured::select_rows(&u, hidden, &keep),
                    vec![width, hidden],
                ),
                (
                    structured::select_cols(&d, inter, &keep),
                    vec![hidden, width],
                ),
            ];
            for (name, (values, shape)) in names.into_iter().zip(cut) {
                replaced.insert(name.clone(), Tensor::from_f32(name, shape, values)?);
            }
        }
        let before = model.total_params();
        for t in &mut state.model.tensors {
            if let Some(new) = replaced.remove(&t.name) {
                *t = new;
            }
        }
        if let Some(Family::Llama(p)) = &mut state.model.meta.family {
            p.intermediate_size = width;
        }
        let after = state.model.total_params();
        Ok(Outcome {
            lines: vec![format!(
                "pruned FFN neurons ({}): {inter} -> {width} per layer; {:.2}M -> {:.2}M parameters",
                if self.data.is_some() { "by activation" } else { "by weight norms" },
                before as f64 / 1e6,
                after as f64 / 1e6
            )],
            summary: serde_json::json!({
                "ffn": { "before": inter, "after": width },
                "params": { "before": before, "after": after },
            }),
            ..Default::default()
        })
    }
}

fn f32_of(model: &Model, name: &str) -> Result<Vec<f32>> {
    model
        .tensor(name)
        .with_context(|| format!("{name}: not in the model"))?
        .to_f32()
        .map_err(Into::into)
}

/// Per layer, each FFN neuron's mean |activation| on the data (the dense
/// model's, one layer at a time).
fn activation_importance(model: &Model, ctx: &Context, data: &str) -> Result<Vec<Vec<f32>>> {
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
    let mut out = vec![Vec::new(); family.num_layers()];
    let mut on_layer = |part: Part,
                        stats: BTreeMap<String, ChannelStats>|
     -> std::result::Result<Replacements, edgec_calibration::CallbackError> {
        if let Part::Layer(i) = part {
            let s = stats
                .get(&format!("model.layers.{i}.mlp.down_proj"))
                .ok_or_else(|| format!("layer {i}: no FFN activations observed"))?;
            out[i] = s.mean_abs();
        }
        Ok(Replacements::new())
    };
    sweep_linear_inputs(model, &seqs, &opts, &mut on_layer, &|done| {
        bar.set_position(done)
    })
    .map_err(|e| anyhow::anyhow!("{}: FFN importance: {e}", ctx.input.display()))?;
    bar.finish();
    Ok(out)
}
