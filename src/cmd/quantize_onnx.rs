//! `edgec quantize IN OUT.onnx --bits 8|4`: quantized ONNX output. The input
//! is an ONNX graph, or a llama/bert model lowered to one.
//!
//! - `--bits 8`: per-channel symmetric int8 weights behind DequantizeLinear
//!   (weight-only; activations stay float).
//! - `--bits 4`: 4-bit blockwise weights in onnxruntime's MatMulNBits for
//!   every MatMul/Gemm weight (`--block`, default 32).

use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use edgec_core::Model;
use edgec_passes::graph_quant;

use super::UsageError;

/// Writes `model` quantized to `bits` as ONNX at `output`.
pub fn run(model: Model, input: &Path, output: &Path, bits: u32, block: usize) -> Result<()> {
    let start = Instant::now();
    let mut model = match model.graph {
        Some(_) => model,
        None => edgec_core::lowering::to_graph(&model)
            .map_err(|e| anyhow!("{}: {e}", input.display()))?,
    };
    let (changed, what) = match bits {
        8 => (
            graph_quant::weights_to_int8(&mut model)?,
            "int8 per-channel weights",
        ),
        4 => (
            graph_quant::weights_to_nbits(&mut model, block)?,
            "4-bit MatMulNBits weights",
        ),
        b => {
            return Err(UsageError(format!(
                "--bits {b}: ONNX output takes --bits 8 (int8 weights) or 4 (MatMulNBits)"
            ))
            .into())
        }
    };
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
