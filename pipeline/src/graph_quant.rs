//! `edgec quantize IN OUT.onnx --bits 8|4`: quantized ONNX output. The input
//! is an ONNX graph, or a llama/bert model lowered to one.
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
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use edgec_core::{Model, Op};
use edgec_passes::{graph_quant, qdq};

use super::UsageError;
use crate::graph_data::{self, ImageArgs, RangeArg};

/// The storage of 4-bit ONNX weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Int4Format {
    /// com.microsoft MatMulNBits
    Nbits,
    /// DequantizeLinear with block_size (opset 21), UINT4 weights
    Qdq,
}

/// Calibration data for static int8.
pub struct Calib<'a> {
    pub data: &'a Path,
    pub bias_correction: bool,
    pub samples: Option<usize>,
    pub method: RangeArg,
    pub image: &'a ImageArgs,
}

/// Writes `model` quantized to `bits` as ONNX at `output`.
/// What to write.
#[derive(Clone, Copy)]
pub struct OnnxQuant {
    pub bits: u32,
    /// Weights per block (4-bit).
    pub block: usize,
    pub int4: Int4Format,
    pub dynamic: bool,
}

pub fn run(
    model: Model,
    input: &Path,
    output: &Path,
    q: &OnnxQuant,
    calib: Option<Calib>,
) -> Result<()> {
    let OnnxQuant {
        bits,
        block,
        int4,
        dynamic,
    } = *q;
    let start = Instant::now();
    let mut model = match model.graph {
        Some(_) => model,
        None => edgec_core::lowering::to_graph(&model)
            .map_err(|e| anyhow!("{}: {e}", input.display()))?,
    };
    if let Some(c) = calib {
        if bits != 8 {
            return Err(
                UsageError("--calib with ONNX output is static int8: use --bits 8".into()).into(),
            );
        }
        let samples = graph_data::samples(&model, c.data, c.image, c.samples)?;
        let means_for = bias_correction_inputs(&model, c.bias_correction);
        let (ranges, means) =
            graph_data::activation_stats(&model, &samples, c.method.method(), &means_for)
                .map_err(|e| anyhow!("{}: {e:#}", c.data.display()))?;
        let means = c.bias_correction.then_some(means);
        let report = qdq::quantize_static(&mut model, &ranges, means.as_ref())?;
        edgec_formats::onnx::writer::write_model(&model, output)?;
        let bytes = std::fs::metadata(output).map(|m| m.len()).unwrap_or(0);
        println!(
            "wrote {} (ONNX, static int8 QDQ, {:?} ranges from {} samples): {} activations, {} weights, {} biases ({} corrected), {:.1} MiB, {:.2}s",
            output.display(),
            c.method,
            samples.len(),
            report.activations,
            report.weights,
            report.biases,
            report.bias_corrections,
            bytes as f64 / (1 << 20) as f64,
            start.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    if dynamic && bits != 8 {
        return Err(UsageError("--dynamic is int8: use --bits 8".into()).into());
    }
    // Large embedding tables: int8 rows, gathered before dequantizing.
    let tables = graph_quant::embeddings_to_int8(&mut model, 1 << 20)?;
    let (changed, what) = match bits {
        8 if dynamic => (
            graph_quant::dynamic_int8(&mut model)?,
            "dynamic int8 (MatMulInteger)",
        ),
        8 => (
            graph_quant::weights_to_int8(&mut model)?,
            "int8 per-channel weights",
        ),
        4 if int4 == Int4Format::Nbits => (
            graph_quant::weights_to_nbits(&mut model, block)?,
            "4-bit MatMulNBits weights",
        ),
        4 => (
            graph_quant::weights_to_int4_blocked(&mut model, block)?,
            "4-bit blockwise DequantizeLinear weights",
        ),
        b => {
            return Err(UsageError(format!(
                "--bits {b}: ONNX output takes --bits 8 (int8 weights) or 4 (MatMulNBits)"
            ))
            .into())
        }
    };
    let changed = changed + tables;
    if changed == 0 {
        bail!(
            "{}: no Conv, Gemm or MatMul weight to quantize",
            input.display()
        );
    }
    edgec_formats::onnx::writer::write_model(&model, output)?;
    let bytes = std::fs::metadata(output).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} (ONNX, {what}): {changed} weights, {:.1} MiB, {:.2}s",
        output.display(),
        bytes as f64 / (1 << 20) as f64,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What to write as TFLite.
pub struct TfliteQuant<'a> {
    /// Calibration data: full-integer int8; without it dynamic range.
    pub calib: Option<Calib<'a>>,
    /// Full int8: int8 graph inputs and outputs (no QUANTIZE/DEQUANTIZE).
    pub int8_io: bool,
    /// 16x8: int16 activations, int8 weights.
    pub int16_activations: bool,
}

/// `edgec quantize --bits 8 IN OUT.tflite`: dynamic-range int8 (int8
/// per-channel weights, hybrid kernels), or with `--calib` full-integer
/// int8 by the TFLite quantization spec (activation ranges calibrated on the
/// data as for ONNX static int8, on the same uint8 grid shifted to int8).
pub fn run_tflite(model: Model, input: &Path, output: &Path, q: TfliteQuant) -> Result<()> {
    use edgec_formats::tflite::{lower, quant, writer};
    let start = Instant::now();
    let model = match model.graph {
        Some(_) => model,
        None => edgec_core::lowering::to_graph(&model)
            .map_err(|e| anyhow!("{}: {e}", input.display()))?,
    };
    let tfl = lower::lower(&model, &lower::LowerOptions::default())
        .map_err(|e| anyhow!("{}: {e}", input.display()))?;
    let weights: quant::WeightQuantizer = &qdq::int8_per_channel;
    let (tfl, report, what) = match &q.calib {
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
            let samples = graph_data::samples(&model, c.data, c.image, c.samples)?;
            let (ranges, means) = graph_data::activation_stats(
                &model,
                &samples,
                c.method.method(),
                &bias_correction_inputs(&model, c.bias_correction),
            )
            .map_err(|e| anyhow!("{}: {e:#}", c.data.display()))?;
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
    writer::write_tfl(&tfl, output, writer::INLINE_LIMIT)?;
    let bytes = std::fs::metadata(output).map(|m| m.len()).unwrap_or(0);
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
    println!(
        "wrote {} (TFLite, {what}): {} int8 weights, {} int8 ops, {} biases corrected{float_note}, {:.1} MiB, {:.2}s",
        output.display(),
        report.weights,
        report.int8_ops,
        report.bias_corrections,
        bytes as f64 / (1 << 20) as f64,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The values whose per-channel means bias correction needs: every
/// Conv/Gemm input (none without bias correction).
fn bias_correction_inputs(model: &edgec_core::Model, bias_correction: bool) -> HashSet<String> {
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
