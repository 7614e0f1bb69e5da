//! `quantize.onnx` and `quantize.tflite`: graph models (ONNX inputs, or
//! llama/bert models lowered to a graph) quantized for ONNX or TFLite output.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{CheckContext, Context, ModelView, Outcome, Pass, QuantKind, State};
use crate::error::usage;
use crate::graph_data::{self, RangeArg, Sample};
use crate::graph_quant::{self, Calib, Int4Format, OnnxQuant, TfliteQuant};
use crate::registry::{Changes, DataNeed, ModelNeed, Needs};

fn yes() -> bool {
    true
}

fn default_block() -> usize {
    32
}

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct QuantizeOnnx {
    /// 8: int8 weights (static int8 QDQ with data); 4: 4-bit blockwise weights.
    pub bits: u32,
    /// 4-bit: weights per block (a power of two, at least 16).
    #[serde(default = "default_block")]
    pub block: usize,
    /// 4-bit: MatMulNBits, or opset-21 DequantizeLinear on UINT4.
    #[serde(default)]
    pub int4_format: Int4Format,
    /// int8 without data: quantize activations at run time (MatMulInteger).
    #[serde(default)]
    pub dynamic: bool,
    /// Calibration samples (static int8), a data set's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// How activation ranges are chosen (static int8).
    #[serde(default = "default_range")]
    pub range_method: RangeArg,
    /// Static int8: move each Conv/Gemm output's mean back onto the float model's.
    #[serde(default = "yes")]
    pub bias_correction: bool,
}

fn default_range() -> RangeArg {
    RangeArg::Mse
}

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct QuantizeTflite {
    /// Calibration samples: full-integer int8; without, dynamic range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Full integer: int8 (int16 in 16x8) graph inputs and outputs.
    #[serde(default)]
    pub int8_io: bool,
    /// Full integer 16x8: int16 activations, int8 weights, int64 biases.
    #[serde(default)]
    pub int16_activations: bool,
    /// How activation ranges are chosen (default mse; minmax for 16x8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_method: Option<RangeArg>,
    #[serde(default = "yes")]
    pub bias_correction: bool,
}

impl QuantizeTflite {
    fn range_method(&self) -> RangeArg {
        self.range_method.unwrap_or(if self.int16_activations {
            RangeArg::Minmax
        } else {
            RangeArg::Mse
        })
    }
}

/// The calibration samples of data set `name` for the graph `state.model`,
/// with the set's path.
fn samples<'a>(
    state: &State,
    ctx: &'a Context,
    name: Option<&str>,
) -> Result<Option<(Vec<Sample>, &'a std::path::Path)>> {
    let Some(name) = name else { return Ok(None) };
    let spec = ctx.data_set(name)?;
    if !spec.path.exists() {
        anyhow::bail!(
            "{}: the calibration data does not exist",
            spec.path.display()
        );
    }
    let samples = graph_data::samples(&state.model, &spec.path, &spec.image, spec.samples)?;
    Ok(Some((samples, spec.path.as_path())))
}

fn check_graph_data(ctx: &CheckContext, data: Option<&str>) -> Result<()> {
    if let Some(d) = data {
        let spec = ctx.data_set(d)?;
        if super::is_text(&spec.path) {
            return Err(usage(format!(
                "data = \"{d}\": static int8 calibrates on graph inputs (photos, IDX or .safetensors), not text"
            )));
        }
    }
    Ok(())
}

fn check_graph(view: &mut ModelView, kind: QuantKind) -> Result<()> {
    if !view.graph && view.family.is_none() {
        return Err(usage("the model has no graph and no family to lower"));
    }
    if view.quant != QuantKind::None {
        return Err(usage("the model is already quantized by an earlier step"));
    }
    view.graph = true;
    view.quant = kind;
    Ok(())
}

fn graph_changes() -> Changes {
    Changes {
        weights: true,
        dtypes: true,
        graph: true,
        ..Default::default()
    }
}

impl Pass for QuantizeOnnx {
    fn needs(&self) -> Needs {
        Needs {
            data: DataNeed::Optional,
            activation_stats: self.data.is_some(),
            model: ModelNeed::Graph,
            written_file: false,
        }
    }

    fn changes(&self) -> Changes {
        graph_changes()
    }

    fn data(&self) -> Option<&str> {
        self.data.as_deref()
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data")
    }

    fn check(&self, view: &mut ModelView, ctx: &CheckContext) -> Result<()> {
        match (self.bits, &self.data) {
            (8, _) | (4, None) => {}
            (4, Some(_)) => {
                return Err(usage(
                    "data: calibration data with ONNX output is static int8: use bits = 8",
                ))
            }
            (b, _) => {
                return Err(usage(format!(
                    "bits = {b}: ONNX output takes 8 (int8) or 4 (MatMulNBits)"
                )))
            }
        }
        if self.dynamic && (self.bits != 8 || self.data.is_some()) {
            return Err(usage("dynamic: dynamic int8 is bits = 8 without data"));
        }
        if self.bits == 4 && (self.block < 16 || !self.block.is_power_of_two()) {
            return Err(usage(format!(
                "block = {}: a power of two, at least 16",
                self.block
            )));
        }
        check_graph_data(ctx, self.data.as_deref())?;
        check_graph(view, QuantKind::Onnx)
    }

    fn run(&self, state: &mut State, ctx: &Context) -> Result<Outcome> {
        state.lower_to_graph(ctx.input)?;
        let samples = samples(state, ctx, self.data.as_deref())?;
        let calib = samples.as_ref().map(|(s, path)| Calib {
            samples: s,
            path,
            bias_correction: self.bias_correction,
            method: self.range_method,
        });
        let what = graph_quant::quantize_onnx(
            &mut state.model,
            ctx.input,
            &OnnxQuant {
                bits: self.bits,
                block: self.block,
                int4: self.int4_format,
                dynamic: self.dynamic,
            },
            calib,
            ctx.progress,
        )?;
        state.onnx = Some(what.clone());
        Ok(Outcome {
            summary: serde_json::json!({ "what": what }),
            ..Default::default()
        })
    }
}

impl Pass for QuantizeTflite {
    fn needs(&self) -> Needs {
        Needs {
            data: DataNeed::Optional,
            activation_stats: self.data.is_some(),
            model: ModelNeed::Graph,
            written_file: false,
        }
    }

    fn changes(&self) -> Changes {
        graph_changes()
    }

    fn data(&self) -> Option<&str> {
        self.data.as_deref()
    }

    fn params(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("plain data");
        v["range_method"] = serde_json::to_value(self.range_method()).expect("plain data");
        v
    }

    fn check(&self, view: &mut ModelView, ctx: &CheckContext) -> Result<()> {
        if self.int8_io && self.data.is_none() {
            return Err(usage(
                "int8_io needs full-integer quantization: give data (dynamic range keeps float inputs and outputs)",
            ));
        }
        if self.int16_activations && self.data.is_none() {
            return Err(usage(
                "int16_activations needs full-integer quantization: give data",
            ));
        }
        check_graph_data(ctx, self.data.as_deref())?;
        check_graph(view, QuantKind::Tflite)
    }

    fn run(&self, state: &mut State, ctx: &Context) -> Result<Outcome> {
        state.lower_to_graph(ctx.input)?;
        let samples = samples(state, ctx, self.data.as_deref())?;
        let calib = samples.as_ref().map(|(s, path)| Calib {
            samples: s,
            path,
            bias_correction: self.bias_correction,
            method: self.range_method(),
        });
        let (tfl, what) = graph_quant::quantize_tflite(
            &state.model,
            ctx.input,
            &TfliteQuant {
                int8_io: self.int8_io,
                int16_activations: self.int16_activations,
            },
            calib,
            ctx.progress,
        )?;
        state.tflite = Some((tfl, what.clone()));
        Ok(Outcome {
            summary: serde_json::json!({ "what": what }),
            ..Default::default()
        })
    }
}
