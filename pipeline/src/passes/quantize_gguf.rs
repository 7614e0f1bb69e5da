//! `quantize.gguf`: llama.cpp's block types and k-quants under a preset
//! (per-tensor types by llama.cpp's rules), optionally calibrated on text:
//! AWQ scaling, importance-weighted rounding, GPTQ error feedback, or an
//! importance matrix file. The pass decides every tensor's type and the
//! rounding's inputs; the GGUF writer encodes tensor by tensor.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use edgec_passes::presets::{Preset, PRESETS};
use serde::{Deserialize, Serialize};

use super::{
    CheckContext, Context, FamilyKind, GgufQuant, ModelView, Outcome, Pass, QuantKind, State,
};
use crate::calib::{self, Method};
use crate::error::usage;
use crate::mixed::{self, ByteSize, Sensitivity};
use crate::registry::{Changes, DataNeed, ModelNeed, Needs};
use crate::writers::gguf as gguf_out;

fn default_preset() -> String {
    "Q4_K_M".into()
}

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct QuantizeGguf {
    /// A llama.cpp preset or type: Q4_K_M, Q8_0, IQ4_NL, F16 ...
    #[serde(default = "default_preset")]
    pub preset: String,
    /// Every quantizable tensor gets the preset's base type (llama-quantize --pure).
    #[serde(default)]
    pub pure: bool,
    /// How calibration data is used (default with data: awq+gptq; without: rtn).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Method>,
    /// The calibration text (a data set's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Round by the importance of an importance matrix file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imatrix: Option<PathBuf>,
    /// How calibration runs the model: `oneshot` (the whole model, every
    /// statistic at once) or `sequential` (one layer at a time, encoded as
    /// it goes: memory of one layer whatever the depth).
    #[serde(default, skip_serializing_if = "is_oneshot")]
    pub sweep: Sweep,
    /// Sequential: calibrate each layer on the outputs of the already
    /// quantized layers before it.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub propagate: bool,
    /// Sequential (which encodes as it goes): keep NaN or infinite weights.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_nonfinite: bool,
    /// Mixed precision: per-tensor types chosen by measured sensitivity so
    /// that the tensors average this many bits per weight (needs data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_bpw: Option<f64>,
    /// Mixed precision to a file size: bytes, or "80M", "1.2G" (needs data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_size: Option<ByteSize>,
    /// Mixed precision's sensitivity proxy: "kfac" (default for language
    /// models), "fisher", "gram" (default for encoders) or "diag".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<Sensitivity>,
    /// Types of given tensors by GGUF name ("blk.0.attn_v.weight" = "Q8_0"),
    /// like llama-quantize --tensor-type; kept under a target.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tensor_types: BTreeMap<String, String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// How calibration runs the model.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Sweep {
    #[default]
    Oneshot,
    Sequential,
}

fn is_oneshot(s: &Sweep) -> bool {
    *s == Sweep::Oneshot
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

pub fn preset_names() -> String {
    PRESETS
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ")
}

impl QuantizeGguf {
    fn preset(&self) -> Result<Preset> {
        let mut p = Preset::by_name(&self.preset).ok_or_else(|| {
            usage(format!(
                "preset = \"{}\": unknown; known: {}",
                self.preset,
                preset_names()
            ))
        })?;
        p.pure = self.pure;
        Ok(p)
    }

    fn method(&self) -> Result<Method> {
        match (&self.data, self.method) {
            (None, Some(m)) if m != Method::Rtn && m != Method::Imatrix => Err(usage(format!(
                "method = \"{}\" needs calibration data: give data = \"NAME\" (--calib FILE)",
                m.name()
            ))),
            (None, Some(Method::Imatrix)) if self.imatrix.is_none() => Err(usage(
                "method = \"imatrix\" needs calibration data or an imatrix file",
            )),
            (None, _) => Ok(Method::Rtn),
            (Some(_), m) => Ok(m.unwrap_or(Method::AwqGptq)),
        }
    }
}

impl Pass for QuantizeGguf {
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
            dtypes: true,
            ..Default::default()
        }
    }

    fn data(&self) -> Option<&str> {
        self.data.as_deref()
    }

    fn params(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("plain data");
        if let Ok(m) = self.method() {
            v["method"] = serde_json::Value::String(m.name().into());
        }
        v
    }

    fn check(&self, view: &mut ModelView, ctx: &CheckContext) -> Result<()> {
        self.preset()?;
        self.method()?;
        self.target()?;
        if self.imatrix.is_some() && self.data.is_some() {
            return Err(usage(
                "imatrix: give calibration data or an importance matrix, not both",
            ));
        }
        if self.imatrix.is_some() && self.method.is_some_and(|m| m != Method::Imatrix) {
            return Err(usage(
                "imatrix rounds by importance only (method = \"imatrix\"); for AWQ give data",
            ));
        }
        if self.sweep == Sweep::Sequential
            && (self.target_bpw.is_some() || self.target_size.is_some())
        {
            // mixed precision chooses types from the whole model's
            // sensitivities; a sequential sweep encodes each layer first
            return Err(usage(
                "sweep = \"sequential\" cannot yet meet target_bpw/target_size: use the one-shot sweep",
            ));
        }
        if self.sweep == Sweep::Sequential && self.data.is_none() {
            return Err(usage("sweep = \"sequential\" calibrates: give data"));
        }
        if let Some(d) = &self.data {
            let spec = ctx.data_set(d)?;
            if !super::is_text(&spec.path) {
                return Err(usage(format!(
                    "data = \"{d}\": GGUF calibration reads text (a .txt file), not {}",
                    spec.path.display()
                )));
            }
        }
        if view.family.is_none() {
            return Err(usage(
                "preset: GGUF output needs a llama/mistral/qwen2 or bert model (this one is a graph)",
            ));
        }
        let awq = matches!(
            self.method(),
            Ok(Method::Awq | Method::AwqImatrix | Method::AwqGptq)
        );
        if self.data.is_some() && awq && view.family != Some(FamilyKind::Llama) {
            // the model, not the recipe, is what does not fit: exit 1
            bail!(
                "method: AWQ scaling is implemented for the llama family; use method = \"imatrix\""
            );
        }
        if view.quant != QuantKind::None {
            return Err(usage(
                "preset: the model is already quantized by an earlier step",
            ));
        }
        view.quant = QuantKind::Gguf;
        Ok(())
    }

    fn run(&self, state: &mut State, ctx: &Context) -> Result<Outcome> {
        let preset = self.preset()?;
        let method = self.method()?;
        let model = &state.model;
        let file_importance = self
            .imatrix
            .as_deref()
            .map(|p| calib::importance_from_file(model, p))
            .transpose()?;
        let mut out = Outcome::default();
        if let (Some(name), Sweep::Sequential, true) =
            (&self.data, self.sweep, method != Method::Rtn)
        {
            return self.run_sequential(state, ctx, name, preset, method);
        }
        let calibrated = match &self.data {
            Some(name) if method != Method::Rtn => {
                let spec = ctx.data_set(name)?;
                let (types, _) = self.planned_types(model, &preset, method)?;
                let seqs = calib::sequences(
                    model,
                    &spec.path,
                    spec.samples.unwrap_or(32),
                    spec.len.unwrap_or(512),
                )?;
                Some(calib::calibrate(
                    model,
                    types,
                    &seqs,
                    method,
                    &Default::default(),
                    ctx.progress,
                )?)
            }
            _ => None,
        };
        let importance = match calibrated {
            Some(c) => {
                let r = &c.report;
                out.lines.push(calibration_line(r, ""));
                out.summary = serde_json::json!({ "calibration": r });
                let types = self.types(
                    &c.model,
                    &preset,
                    c.importance.as_ref(),
                    c.hessians.as_ref(),
                    ctx,
                    &mut out,
                )?;
                state.model = c.model;
                state.gguf = Some(GgufQuant {
                    preset,
                    importance: c.importance,
                    hessians: c.hessians,
                    encoded: None,
                    types,
                });
                return Ok(out);
            }
            None => file_importance,
        };
        if state.model.meta.family.is_none() {
            bail!(
                "{}: the model has no architecture (a GGUF needs one: give a model folder with config.json)",
                ctx.input.display()
            );
        }
        let types = self.types(
            &state.model,
            &preset,
            importance.as_ref(),
            None,
            ctx,
            &mut out,
        )?;
        state.gguf = Some(GgufQuant {
            preset,
            importance,
            hessians: None,
            encoded: None,
            types,
        });
        Ok(out)
    }
}

/// The line people read about a calibration; `how` follows the method.
fn calibration_line(r: &calib::CalibReport, how: &str) -> String {
    format!(
        "calibrated ({}{how}) on {} tokens in {:.2}s{}",
        r.method,
        r.tokens,
        r.seconds,
        match (r.awq_error_rtn, r.awq_error_final) {
            (Some(a), Some(b)) if a > 0.0 =>
                format!("; AWQ output error {:.3}x plain rounding's", b / a),
            _ => String::new(),
        }
    )
}

impl QuantizeGguf {
    /// Every tensor's planned type (IR name → type), with the pinned
    /// `tensor_types` applied; and the pinned ones alone.
    fn planned_types(
        &self,
        model: &edgec_core::Model,
        preset: &Preset,
        method: Method,
    ) -> Result<(
        std::collections::HashMap<String, edgec_core::GgmlType>,
        std::collections::HashMap<String, edgec_core::GgmlType>,
    )> {
        let mut plans = gguf_out::plan(model, preset, method.importance())?;
        let pinned = mixed::pinned_types(model, &plans, &self.tensor_types, "tensor_types")?;
        mixed::apply_types(model, &mut plans, &pinned);
        let types = model
            .tensors
            .iter()
            .zip(&plans)
            .map(|(t, p)| (t.name.clone(), p.ty))
            .collect();
        Ok((types, pinned))
    }

    /// Calibration one layer at a time, each layer encoded as it goes.
    fn run_sequential(
        &self,
        state: &mut State,
        ctx: &Context,
        data: &str,
        preset: Preset,
        method: Method,
    ) -> Result<Outcome> {
        let model = &state.model;
        let spec = ctx.data_set(data)?;
        let (types, pinned) = self.planned_types(model, &preset, method)?;
        let seqs = calib::sequences(
            model,
            &spec.path,
            spec.samples.unwrap_or(32),
            spec.len.unwrap_or(512),
        )?;
        let r = calib::calibrate_sequential(
            model,
            ctx.input,
            types,
            &seqs,
            method,
            &calib::Sequential {
                propagate: self.propagate,
                cache_budget: 1 << 30,
                spill_dir: None,
                allow_nonfinite: self.allow_nonfinite,
                awq: Default::default(),
            },
            ctx.progress,
        )?;
        let c = &r.report;
        let line = calibration_line(
            c,
            if self.propagate {
                ", sequential, propagated"
            } else {
                ", sequential"
            },
        );
        let summary = serde_json::json!({
            "calibration": c,
            "sweep": {
                "layers": r.sweep.layers,
                "batches": r.sweep.batches,
                "peak_cache_bytes": r.sweep.peak_cache_bytes,
                "peak_spilled_bytes": r.sweep.peak_spilled_bytes,
                "encoded_bytes": r.encoded.bytes(),
            },
        });
        state.gguf = Some(GgufQuant {
            preset,
            importance: None,
            hessians: None,
            encoded: Some(r.encoded),
            // the writer's plan must name the types the layers were encoded to
            types: (!pinned.is_empty()).then_some(pinned),
        });
        Ok(Outcome {
            lines: vec![line],
            summary,
            ..Default::default()
        })
    }
}
