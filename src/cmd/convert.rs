//! `edgec convert IN OUT [--dtype f32|f16|bf16]`: float conversions between
//! GGUF and Hugging Face folders, and of graph models (ONNX, TFLite, or HF
//! llama/bert models lowered to a graph) to ONNX or TFLite. A one-step
//! recipe: `cast` (unless f32), then `write`.

use std::path::PathBuf;

use anyhow::Result;
use edgec_pipeline::passes::write::TfliteSparse;
use edgec_pipeline::passes::FloatType;
use edgec_pipeline::recipe::{absolute, Input, Recipe};

use super::quantize::step;
use super::{named, RecipeFlags};

#[derive(clap::Args)]
pub struct Args {
    /// Input model: a Hugging Face folder, a .safetensors, .gguf, .onnx or .tflite file.
    pub input: PathBuf,
    /// Output: a .gguf, .onnx or .tflite file, or a folder for a Hugging Face model.
    pub output: PathBuf,
    /// Float type of the weights written: f32, f16, bf16 (quantized inputs are dequantized).
    #[arg(long, default_value = "f32", value_parser = named::<FloatType>)]
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
    /// TFLite output: store float conv weights that are at least 2/3 zeros sparse,
    /// read through DENSIFY (auto, the default), or keep every weight dense (off).
    #[arg(long, value_name = "MODE", value_parser = named::<TfliteSparse>)]
    pub tflite_sparse: Option<TfliteSparse>,
    #[command(flatten)]
    pub recipe: RecipeFlags,
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

/// The recipe `edgec convert` stands for.
pub fn recipe(args: &Args) -> Recipe {
    let mut steps = Vec::new();
    if args.dtype != FloatType::F32 {
        steps.push(step("cast", serde_json::json!({ "dtype": args.dtype })));
    }
    let dims: serde_json::Map<String, serde_json::Value> = args
        .dim
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::json!(v)))
        .collect();
    steps.push(step(
        "write",
        serde_json::json!({
            "path": absolute(&args.output),
            "allow_nonfinite": args.allow_nonfinite,
            "dims": if dims.is_empty() { serde_json::Value::Null } else { dims.into() },
            "tflite_inline_limit": args.tflite_inline_limit,
            "tflite_sparse": args.tflite_sparse,
        }),
    ));
    Recipe {
        input: Input {
            model: absolute(&args.input),
        },
        data: Default::default(),
        steps,
        report: Default::default(),
    }
}

pub fn run(args: Args) -> Result<()> {
    super::run_recipe(&recipe(&args), &args.recipe, "edgec convert", false)?;
    Ok(())
}
