//! `write`: the model as the steps leave it, in the format its path names:
//! `.gguf`, `.onnx`, `.tflite`, or a folder (a Hugging Face model).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use edgec_core::DType;
use edgec_formats::output::write_dir_atomically;
use edgec_formats::{hf, tflite, Format};
use edgec_passes::presets::Preset;
use serde::{Deserialize, Serialize};

use super::{CheckContext, Context, FloatType, ModelView, Outcome, Pass, QuantKind, State};
use crate::error::usage;
use crate::registry::{Changes, Needs};
use crate::writers::{self, gguf as gguf_out};

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Write {
    /// The output: a .gguf, .onnx or .tflite file, or a folder.
    pub path: PathBuf,
    /// Keep NaN or infinite weights instead of failing.
    #[serde(default)]
    pub allow_nonfinite: bool,
    /// TFLite: sizes of named (dynamic) input dimensions, e.g. { sequence = 128 }.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dims: BTreeMap<String, usize>,
    /// TFLite: constants past this many bytes in all go after the flatbuffer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tflite_inline_limit: Option<usize>,
    /// TFLite: float conv weights at least 2/3 zeros stored sparse and read
    /// through DENSIFY (`auto`, the default), or every weight dense (`off`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tflite_sparse: Option<TfliteSparse>,
}

/// Sparse storage of pruned float conv weights in TFLite files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TfliteSparse {
    /// Weights with at least 2/3 zeros go through DENSIFY (XNNPACK's sparse path).
    #[default]
    Auto,
    /// Every weight dense.
    Off,
}

/// The output kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    Gguf,
    Onnx,
    Tflite,
    HfFolder,
}

impl OutputKind {
    pub fn of(path: &Path) -> Result<OutputKind> {
        match Format::of(path) {
            Some(Format::Gguf) => Ok(OutputKind::Gguf),
            Some(Format::Onnx) => Ok(OutputKind::Onnx),
            Some(Format::Tflite) => Ok(OutputKind::Tflite),
            _ if path.extension().is_none() => Ok(OutputKind::HfFolder),
            _ => Err(usage(format!(
                "path = \"{}\": edgec writes .gguf, .onnx or .tflite files, or a Hugging Face folder (a path without extension)",
                path.display()
            ))),
        }
    }

    fn name(self) -> &'static str {
        match self {
            OutputKind::Gguf => "GGUF",
            OutputKind::Onnx => "ONNX",
            OutputKind::Tflite => "TFLite",
            OutputKind::HfFolder => "a Hugging Face folder",
        }
    }
}

fn mib(path: &Path) -> f64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) as f64 / (1 << 20) as f64
}

impl Pass for Write {
    fn needs(&self) -> Needs {
        Needs::default()
    }

    fn changes(&self) -> Changes {
        Changes {
            files: true,
            ..Default::default()
        }
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data")
    }

    fn check(&self, view: &mut ModelView, _: &CheckContext) -> Result<()> {
        let kind = OutputKind::of(&self.path)?;
        let holds = match (view.quant, kind) {
            (QuantKind::None, OutputKind::Gguf | OutputKind::HfFolder) => view.family.is_some(),
            (QuantKind::None, OutputKind::Onnx | OutputKind::Tflite) => true,
            (QuantKind::Gguf, k) => k == OutputKind::Gguf,
            (QuantKind::Onnx, k) => k == OutputKind::Onnx,
            (QuantKind::Tflite, k) => k == OutputKind::Tflite,
        };
        if !holds {
            let what = match view.quant {
                QuantKind::None => "a graph model (no llama/bert family)".to_string(),
                q => format!("a model quantized for {q:?}"),
            };
            return Err(usage(format!(
                "path = \"{}\": {} cannot hold {what}",
                self.path.display(),
                kind.name()
            )));
        }
        if !self.dims.is_empty() && kind != OutputKind::Tflite {
            return Err(usage("dims: named dimension sizes are for TFLite output"));
        }
        if self.tflite_sparse.is_some() && kind != OutputKind::Tflite {
            return Err(usage(
                "tflite_sparse: sparse weight storage is for TFLite output",
            ));
        }
        view.written = Some(self.path.clone());
        Ok(())
    }

    fn run(&self, state: &mut State, ctx: &Context) -> Result<Outcome> {
        crate::check_output_path(ctx.input, &self.path)?;
        let kind = OutputKind::of(&self.path)?;
        let dtype = state.dtype.unwrap_or_default();
        let mut out = match kind {
            OutputKind::Gguf => self.write_gguf(state, ctx, dtype)?,
            OutputKind::Onnx => self.write_onnx(state, ctx, dtype)?,
            OutputKind::Tflite => self.write_tflite(state, ctx, dtype)?,
            OutputKind::HfFolder => self.write_hf(state, ctx, dtype)?,
        };
        out.written = Some(self.path.clone());
        state.written = Some(self.path.clone());
        Ok(out)
    }
}

impl Write {
    fn write_gguf(&self, state: &State, ctx: &Context, dtype: FloatType) -> Result<Outcome> {
        let float_preset = || {
            let name = match dtype {
                FloatType::F32 => "F32",
                FloatType::F16 => "F16",
                FloatType::Bf16 => "BF16",
            };
            Preset::by_name(name).expect("float presets exist")
        };
        let q = state.gguf.as_ref();
        let preset = q.map_or_else(float_preset, |q| q.preset);
        let report = gguf_out::write_gguf(
            &state.model,
            &self.path,
            &preset,
            &gguf_out::GgufOptions {
                input: ctx.input,
                allow_nonfinite: self.allow_nonfinite,
                importance: q.and_then(|q| q.importance.as_ref()),
                hessians: q.and_then(|q| q.hessians.as_ref()),
                encoded: q.and_then(|q| q.encoded.as_ref()),
                types: q.and_then(|q| q.types.as_ref()),
            },
            ctx.progress,
        )?;
        let line = format!(
            "wrote {} ({}): {} tensors, {:.2}M parameters, {:.2} bits/weight, {:.1} MiB, {:.2}s",
            report.output,
            report.preset,
            report.tensors.len(),
            report.params as f64 / 1e6,
            report.bits_per_weight,
            report.bytes as f64 / (1 << 20) as f64,
            report.seconds
        );
        let mut lines = vec![line];
        if let Some((before, after, values, lost)) = writers::gguf_sparsity(&report) {
            let pct = |n: u64| 100.0 * n as f64 / values.max(1) as f64;
            lines.push(format!(
                "sparsity of the pruned tensors: {:.2}% zero before encoding, {:.2}% after{}",
                pct(before),
                pct(after),
                if lost.is_empty() {
                    String::new()
                } else {
                    format!(
                        " ({} cannot hold every zero: types with a minimum or without a zero level)",
                        lost.join(", ")
                    )
                }
            ));
        }
        Ok(Outcome {
            lines,
            tensors: writers::gguf_tensor_records(&report),
            summary: serde_json::to_value(&report)?,
            ..Default::default()
        })
    }

    fn write_onnx(&self, state: &mut State, ctx: &Context, dtype: FloatType) -> Result<Outcome> {
        let start = std::time::Instant::now();
        let what = match &state.onnx {
            Some(what) => what.clone(),
            None => {
                state.lower_to_graph(ctx.input)?;
                if !self.allow_nonfinite {
                    gguf_out::check_finite(&state.model, ctx.input)?;
                }
                match dtype {
                    FloatType::F32 => "ONNX, f32".to_string(),
                    FloatType::F16 => {
                        edgec_passes::graph_quant::weights_to_f16(&mut state.model, 16)?;
                        "ONNX, f16 weights".to_string()
                    }
                    FloatType::Bf16 => bail!("ONNX output supports dtype f32 or f16"),
                }
            }
        };
        edgec_formats::onnx::writer::write_model(&state.model, &self.path)?;
        Ok(self.written_line(&what, start))
    }

    fn write_tflite(&self, state: &mut State, ctx: &Context, dtype: FloatType) -> Result<Outcome> {
        let start = std::time::Instant::now();
        let inline_limit = self
            .tflite_inline_limit
            .unwrap_or(tflite::writer::INLINE_LIMIT);
        if let Some((tfl, what)) = &state.tflite {
            tflite::writer::write_tfl(tfl, &self.path, inline_limit)?;
            return Ok(self.written_line(what, start));
        }
        state.lower_to_graph(ctx.input)?;
        if !self.allow_nonfinite {
            gguf_out::check_finite(&state.model, ctx.input)?;
        }
        let (f16_weights, what) = match dtype {
            FloatType::F32 => (false, "TFLite, f32"),
            FloatType::F16 => (true, "TFLite, f16 weights"),
            FloatType::Bf16 => bail!("TFLite output supports dtype f32 or f16"),
        };
        let opts = tflite::WriteOptions {
            f16_weights,
            inline_limit,
            lower: tflite::LowerOptions {
                dims: self.dims.clone().into_iter().collect(),
            },
            sparse_min_zeros: match self.tflite_sparse.unwrap_or_default() {
                TfliteSparse::Auto => Some(tflite::model::SPARSE_MIN_ZEROS),
                TfliteSparse::Off => None,
            },
        };
        let sparse = tflite::write_model(&state.model, &self.path, &opts)?;
        let what = if sparse > 0 {
            format!("{what}, {sparse} conv weights sparse through DENSIFY")
        } else {
            what.to_string()
        };
        Ok(self.written_line(&what, start))
    }

    fn write_hf(&self, state: &State, ctx: &Context, dtype: FloatType) -> Result<Outcome> {
        if !self.allow_nonfinite {
            gguf_out::check_finite(&state.model, ctx.input)?;
        }
        let dtype = match dtype {
            FloatType::F32 => DType::F32,
            FloatType::F16 => DType::F16,
            FloatType::Bf16 => DType::Bf16,
        };
        // A model no config can describe is refused before anything is written.
        if let Some(family) = &state.model.meta.family {
            hf::config_json(family, dtype)
                .map_err(|e| anyhow::anyhow!("{}: {e}", self.path.display()))?;
        }
        write_dir_atomically(&self.path, |dir| hf::write(&state.model, dir, dtype))?;
        Ok(Outcome {
            lines: vec![format!(
                "wrote {} (Hugging Face folder, {dtype})",
                self.path.display()
            )],
            ..Default::default()
        })
    }

    fn written_line(&self, what: &str, start: std::time::Instant) -> Outcome {
        Outcome {
            lines: vec![format!(
                "wrote {} ({what}), {:.1} MiB, {:.2}s",
                self.path.display(),
                mib(&self.path),
                start.elapsed().as_secs_f64()
            )],
            ..Default::default()
        }
    }
}
