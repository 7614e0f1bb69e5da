//! `edgec convert IN OUT [--dtype f32|f16|bf16]`: float conversions between
//! GGUF and Hugging Face folders, and of graph models (ONNX, TFLite, or HF
//! llama/bert models lowered to a graph) to ONNX or TFLite.

use std::path::PathBuf;

use anyhow::{bail, Result};
use edgec_core::DType;
use edgec_formats::output::write_dir_atomically;
use edgec_formats::{hf, tflite, Format};
use edgec_passes::presets::Preset;

use crate::pipeline::{self, GgufOptions};

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum FloatType {
    F32,
    F16,
    Bf16,
}

#[derive(clap::Args)]
pub struct Args {
    /// Input model: a Hugging Face folder, a .safetensors, .gguf, .onnx or .tflite file.
    pub input: PathBuf,
    /// Output: a .gguf, .onnx or .tflite file, or a folder for a Hugging Face model.
    pub output: PathBuf,
    /// Float type of the weights written (quantized inputs are dequantized).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: FloatType,
    /// Keep NaN or infinite weights instead of failing.
    #[arg(long)]
    pub allow_nonfinite: bool,
    /// TFLite output: the size of a named (dynamic) input dimension, e.g.
    /// `--dim sequence=128` (TFLite shapes are static; batch dims default to 1).
    #[arg(long, value_name = "NAME=SIZE", value_parser = parse_dim)]
    pub dim: Vec<(String, usize)>,
    /// TFLite output: constants past this many bytes in all are stored after
    /// the flatbuffer (Buffer.offset/size) instead of inside it (for tests).
    #[arg(long, value_name = "BYTES", hide = true)]
    pub tflite_inline_limit: Option<usize>,
}

fn parse_dim(s: &str) -> Result<(String, usize), String> {
    let (name, size) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=SIZE, got {s}"))?;
    let size: usize = size
        .parse()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{s}: the size must be a positive integer"))?;
    Ok((name.to_string(), size))
}

pub fn run(args: Args) -> Result<()> {
    let model = super::read_input(&args.input, &args.output)?;
    let (dtype, preset) = match args.dtype {
        FloatType::F32 => (DType::F32, "F32"),
        FloatType::F16 => (DType::F16, "F16"),
        FloatType::Bf16 => (DType::Bf16, "BF16"),
    };
    if Format::of(&args.output) == Some(Format::Onnx) {
        return write_onnx(model, &args);
    }
    if Format::of(&args.output) == Some(Format::Tflite) {
        return write_tflite(model, &args);
    }
    let out_is_gguf = args
        .output
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if out_is_gguf {
        let preset = Preset::by_name(preset).expect("float presets exist");
        let report = pipeline::write_gguf(
            &model,
            &args.output,
            &preset,
            &GgufOptions {
                input: &args.input,
                allow_nonfinite: args.allow_nonfinite,
                importance: None,
                hessians: None,
            },
        )?;
        println!(
            "wrote {} ({preset}, {:.1} MiB)",
            report.output,
            report.bytes as f64 / (1 << 20) as f64,
            preset = report.preset
        );
        return Ok(());
    }
    if args.output.extension().is_some() || Format::of(&args.output) == Some(Format::Safetensors) {
        bail!(
            "{}: convert writes a .gguf file or a Hugging Face folder (a path without extension)",
            args.output.display()
        );
    }
    if !args.allow_nonfinite {
        pipeline::check_finite(&model, &args.input)?;
    }
    write_dir_atomically(&args.output, |dir| hf::write(&model, dir, dtype))?;
    println!(
        "wrote {} (Hugging Face folder, {})",
        args.output.display(),
        dtype
    );
    Ok(())
}

/// ONNX output: a graph model as read, or a llama/bert model lowered to a
/// graph; f32, or f16 weights read back through Cast nodes.
fn write_onnx(model: edgec_core::Model, args: &Args) -> Result<()> {
    let mut model = match model.graph {
        Some(_) => model,
        None => edgec_core::lowering::to_graph(&model)
            .map_err(|e| anyhow::anyhow!("{}: {e}", args.input.display()))?,
    };
    if !args.allow_nonfinite {
        pipeline::check_finite(&model, &args.input)?;
    }
    let what = match args.dtype {
        FloatType::F32 => "f32",
        FloatType::F16 => {
            edgec_passes::graph_quant::weights_to_f16(&mut model, 16)?;
            "f16 weights"
        }
        FloatType::Bf16 => bail!("ONNX output supports --dtype f32 or f16"),
    };
    edgec_formats::onnx::writer::write_model(&model, &args.output)?;
    println!("wrote {} (ONNX, {what})", args.output.display());
    Ok(())
}

/// TFLite output: a graph model as read, or a llama/bert model lowered to a
/// graph; f32, or f16 weights read through DEQUANTIZE ops.
fn write_tflite(model: edgec_core::Model, args: &Args) -> Result<()> {
    let model = match model.graph {
        Some(_) => model,
        None => edgec_core::lowering::to_graph(&model)
            .map_err(|e| anyhow::anyhow!("{}: {e}", args.input.display()))?,
    };
    if !args.allow_nonfinite {
        pipeline::check_finite(&model, &args.input)?;
    }
    let (f16_weights, what) = match args.dtype {
        FloatType::F32 => (false, "f32"),
        FloatType::F16 => (true, "f16 weights"),
        FloatType::Bf16 => bail!("TFLite output supports --dtype f32 or f16"),
    };
    let opts = tflite::WriteOptions {
        f16_weights,
        inline_limit: args
            .tflite_inline_limit
            .unwrap_or(tflite::writer::INLINE_LIMIT),
        lower: tflite::LowerOptions {
            dims: args.dim.clone(),
        },
    };
    tflite::write_model(&model, &args.output, &opts)?;
    println!("wrote {} (TFLite, {what})", args.output.display());
    Ok(())
}
