//! Quantization of graph models for ONNX and TFLite output. The input is an
//! ONNX graph, or a llama/bert model lowered to one (the `lower` pass).
//!
//! - `--bits 8 --calib DATA`: static int8 in the QDQ form (uint8
//!   activations with ranges calibrated on the data, int8 per-channel
//!   weights, int32 biases), which onnxruntime runs in integers.
//! - `--bits 8`: per-channel symmetric int8 weights behind DequantizeLinear
//!   (weight-only; activations stay float); `--dynamic`: activations
//!   quantized at run time, MatMulInteger (onnxruntime's quantize_dynamic form).
//!
//! Without --calib, embedding tables of a million or more values become
//! int8 rows with a scale each (Gather, then Cast and Mul).
//! - `--bits 4`: 4-bit blockwise weights (`--block`, default 32) for every
//!   MatMul/Gemm weight, in onnxruntime's MatMulNBits or (`--int4-format
//!   qdq`) as UINT4 behind opset-21 DequantizeLinear with block_size.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use edgec_core::{Model, Op};
use edgec_formats::tflite::model::TflModel;
use edgec_formats::tflite::{lower, quant};
use edgec_passes::{graph_quant, qdq};
use serde::{Deserialize, Serialize};

use crate::error::usage;
use crate::graph_data::{self, RangeArg, Sample};
use crate::progress::Progress;

/// The storage of 4-bit ONNX weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Int4Format {
    /// com.microsoft MatMulNBits
    #[default]
    Nbits,
    /// DequantizeLinear with block_size (opset 21), UINT4 weights
    Qdq,
}

/// Calibration samples and how they become activation statistics.
#[derive(Clone, Copy)]
pub struct Calib<'a> {
    pub samples: &'a [Sample],
    /// Where the samples came from (named in errors).
    pub path: &'a Path,
    pub bias_correction: bool,
    pub method: RangeArg,
}

/// What to write as quantized ONNX.
#[derive(Clone, Copy, Debug)]
pub struct OnnxQuant {
    pub bits: u32,
    /// Weights per block (4-bit).
    pub block: usize,
    pub int4: Int4Format,
    pub dynamic: bool,
}

/// Quantizes the graph `model` in place for ONNX output; with calibration
/// samples, static int8 QDQ. Returns what was done, for the summary line.
pub fn quantize_onnx(
    model: &mut Model,
    input: &Path,
    q: &OnnxQuant,
    calib: Option<Calib>,
    progress: &dyn Progress,
) -> Result<String> {
    let OnnxQuant {
        bits,
        block,
        int4,
        dynamic,
    } = *q;
    if let Some(c) = calib {
        let samples = c.samples;
        if bits != 8 {
            return Err(usage(
                "calibration data with ONNX output is static int8: use --bits 8",
            ));
        }
        let means_for = bias_correction_inputs(model, c.bias_correction);
        let (ranges, means) =
            graph_data::activation_stats(model, samples, c.method.method(), &means_for, progress)
                .map_err(|e| anyhow!("{}: {e:#}", c.path.display()))?;
        let means = c.bias_correction.then_some(means);
        let report = qdq::quantize_static(model, &ranges, means.as_ref())?;
        return Ok(format!(
            "ONNX, static int8 QDQ, {:?} ranges from {} samples, {} activations, {} weights, {} biases ({} corrected)",
            c.method,
            samples.len(),
            report.activations,
            report.weights,
            report.biases,
            report.bias_corrections,
        ));
    }
    if dynamic && bits != 8 {
        return Err(usage("--dynamic is int8: use --bits 8"));
    }
    // Large embedding tables: int8 rows, gathered before dequantizing.
    let tables = graph_quant::embeddings_to_int8(model, 1 << 20)?;
    let (changed, what) = match bits {
        8 if dynamic => (
            graph_quant::dynamic_int8(model)?,
            "dynamic int8 (MatMulInteger)",
        ),
        8 => (
            graph_quant::weights_to_int8(model)?,
            "int8 per-channel weights",
        ),
        4 if int4 == Int4Format::Nbits => (
            graph_quant::weights_to_nbits(model, block)?,
            "4-bit MatMulNBits weights",
        ),
        4 => (
            graph_quant::weights_to_int4_blocked(model, block)?,
            "4-bit blockwise DequantizeLinear weights",
        ),
        b => {
            return Err(usage(format!(
                "--bits {b}: ONNX output takes --bits 8 (int8 weights) or 4 (MatMulNBits)"
            )))
        }
    };
    let changed = changed + tables;
    if changed == 0 {
        bail!(
            "{}: no Conv, Gemm or MatMul weight to quantize",
            input.display()
        );
    }
    Ok(format!("ONNX, {what}, {changed} weights"))
}

/// What to write as TFLite int8.
#[derive(Clone, Copy, Debug, Default)]
pub struct TfliteQuant {
    /// Full int8: int8 graph inputs and outputs (no QUANTIZE/DEQUANTIZE).
    pub int8_io: bool,
    /// 16x8: int16 activations, int8 weights.
    pub int16_activations: bool,
}

/// The graph `model` lowered to TFLite and quantized: dynamic-range int8
/// (int8 per-channel weights, hybrid kernels), or with calibration samples
/// full-integer int8 by the TFLite quantization spec (activation ranges
/// calibrated as for ONNX static int8, on the same uint8 grid shifted to
/// int8). The integer rules belong to the format, so the quantizer lives
/// beside the TFLite writer; this joins it to the calibration data.
pub fn quantize_tflite(
    model: &Model,
    input: &Path,
    q: &TfliteQuant,
    calib: Option<Calib>,
    progress: &dyn Progress,
) -> Result<(TflModel, String)> {
    if q.int8_io && calib.is_none() {
        return Err(usage(
            "--int8-io needs full-integer quantization: give --calib DATA (dynamic range keeps float inputs and outputs)",
        ));
    }
    if q.int16_activations && calib.is_none() {
        return Err(usage(
            "--int16-activations needs full-integer quantization: give --calib DATA",
        ));
    }
    let tfl = lower::lower(model, &lower::LowerOptions::default())
        .map_err(|e| anyhow!("{}: {e}", input.display()))?;
    let weights: quant::WeightQuantizer = &qdq::int8_per_channel;
    let (tfl, report, what) = match calib {
        None => {
            let mut tfl = tfl;
            let report = quant::dynamic_range(&mut tfl, weights, quant::DYNAMIC_MIN_ELEMENTS);
            if report.weights == 0 {
                bail!(
                    "{}: no CONV_2D, DEPTHWISE_CONV_2D or FULLY_CONNECTED weight to quantize",
                    input.display()
                );
            }
            (tfl, report, "dynamic-range int8".to_string())
        }
        Some(c) => {
            let samples = c.samples;
            let (ranges, means) = graph_data::activation_stats(
                model,
                samples,
                c.method.method(),
                &bias_correction_inputs(model, c.bias_correction),
                progress,
            )
            .map_err(|e| anyhow!("{}: {e:#}", c.path.display()))?;
            let params: quant::ActParams = ranges
                .iter()
                .map(|(k, &(lo, hi))| {
                    let p = if q.int16_activations {
                        quant::int16_params(lo, hi)
                    } else {
                        qdq::tflite_int8_params(lo, hi)
                    };
                    (k.clone(), p)
                })
                .collect();
            let (tfl, report) = quant::full_int8(
                &tfl,
                &params,
                &quant::Int8Options {
                    int8_io: q.int8_io,
                    int16_activations: q.int16_activations,
                    weights,
                    input_means: c.bias_correction.then_some(&means),
                },
            )
            .map_err(|e| anyhow!("{}: {e}", input.display()))?;
            let what = format!(
                "full-integer {}{}, {:?} ranges from {} samples",
                if q.int16_activations {
                    "16x8 (int16 activations, int8 weights)"
                } else {
                    "int8"
                },
                match (q.int8_io, q.int16_activations) {
                    (false, _) => "",
                    (true, false) => ", int8 I/O",
                    (true, true) => ", int16 I/O",
                },
                c.method,
                samples.len()
            );
            (tfl, report, what)
        }
    };
    let float_note = if report.float_ops.is_empty() {
        String::new()
    } else {
        let mut names = report.float_ops.clone();
        names.sort();
        names.dedup();
        format!(
            ", {} ops left in float ({})",
            report.float_ops.len(),
            names.join(", ")
        )
    };
    let summary = format!(
        "TFLite, {what}, {} int8 weights, {} int8 ops, {} biases corrected{float_note}",
        report.weights, report.int8_ops, report.bias_corrections,
    );
    Ok((tfl, summary))
}

/// The values whose per-channel means bias correction needs: every
/// Conv/Gemm input (none without bias correction).
fn bias_correction_inputs(model: &Model, bias_correction: bool) -> HashSet<String> {
    if !bias_correction {
        return HashSet::new();
    }
    model
        .graph
        .iter()
        .flat_map(|g| &g.nodes)
        .filter(|n| matches!(n.op, Op::Conv { .. } | Op::Gemm { .. }))
        .filter_map(|n| n.inputs.first().cloned())
        .collect()
}
