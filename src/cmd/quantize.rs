//! `edgec quantize IN OUT [--bits N | --type T]`

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use edgec_formats::Format;
use edgec_passes::presets::{Preset, PRESETS};
use edgec_pipeline::calib::Method;
use edgec_pipeline::graph_data::{ImageSpec, RangeArg};
use edgec_pipeline::graph_quant::Int4Format;
use edgec_pipeline::mixed::Sensitivity;
use edgec_pipeline::recipe::{absolute, DataSpec, Input, Recipe, Step};

use super::{named, RecipeFlags, UsageError};
use crate::image_args::ImageArgs;

#[derive(clap::Args)]
pub struct Args {
    /// Input model: a Hugging Face folder, a .safetensors file or a .gguf file.
    pub input: PathBuf,
    /// Output file; the format comes from its extension (.gguf, .onnx or .tflite).
    pub output: PathBuf,
    /// Bits per weight: 2 (Q2_K), 3 (Q3_K_M), 4 (Q4_K_M), 5 (Q5_K_M), 6 (Q6_K), 8 (Q8_0).
    #[arg(long, conflicts_with = "type")]
    pub bits: Option<u32>,
    /// A llama.cpp type or preset: Q4_K_M, Q8_0, Q4_0, IQ4_NL, F16 ...
    #[arg(long = "type", id = "type")]
    pub ty: Option<String>,
    /// Give every quantizable tensor the preset's base type (no per-tensor
    /// rules; rows the type cannot hold still fall back), like llama-quantize --pure.
    #[arg(long)]
    pub pure: bool,
    /// Keep NaN or infinite weights instead of failing.
    #[arg(long)]
    pub allow_nonfinite: bool,
    /// Print a JSON report on stdout.
    #[arg(long)]
    pub json: bool,
    /// Calibration data: text for GGUF output (activation statistics guide
    /// the rounding, see --method); for ONNX output, a folder of photos or a
    /// .safetensors of input tensors (static int8: activation ranges).
    #[arg(long, value_name = "FILE")]
    pub calib: Option<PathBuf>,
    /// Calibration samples: text sequences spread evenly over the text
    /// (default 32), or at most this many inputs (default all).
    #[arg(long, value_name = "N")]
    pub calib_samples: Option<usize>,
    /// Tokens per calibration sequence.
    #[arg(long, default_value_t = 512, value_name = "L")]
    pub calib_len: usize,
    /// How calibration is used: rtn, awq, imatrix, awq+imatrix, gptq,
    /// awq+gptq (default with --calib: awq+gptq, the best measured).
    #[arg(long, value_parser = named::<Method>)]
    pub method: Option<Method>,
    /// Calibrate one layer at a time (memory of one layer whatever the
    /// depth), each layer on the outputs of the quantized layers before it.
    #[arg(long, requires = "calib")]
    pub sequential: bool,
    /// With --sequential: calibrate each layer on the float model's
    /// outputs instead (the same statistics, and bytes, as one-shot).
    #[arg(long, requires = "sequential")]
    pub no_propagate: bool,
    /// Round with the importance of an importance matrix file (llama-imatrix's
    /// GGUF or legacy .dat, or edgec calibrate's).
    #[arg(long, value_name = "FILE", conflicts_with = "calib")]
    pub imatrix: Option<PathBuf>,
    /// Mixed precision (GGUF): each tensor's type is chosen by its measured
    /// sensitivity on --calib so that the tensors average B bits per weight
    /// (within 1%), from Q2_K..Q6_K and Q8_0 (32-block types where rows are
    /// not whole super-blocks); --type gives the preset calibration starts from.
    #[arg(
        long,
        value_name = "B",
        conflicts_with = "target_size",
        requires = "calib"
    )]
    pub target_bpw: Option<f64>,
    /// Mixed precision to a file size (within 1%): bytes, or 80M, 1.2G (K, M,
    /// G: powers of 1024; KB, MB, GB: of 1000).
    #[arg(long, value_name = "SIZE", requires = "calib")]
    pub target_size: Option<String>,
    /// Mixed precision's sensitivity measure: kfac (the Gram error of each
    /// row weighed by its share of the loss's Fisher information; the
    /// default for language models), fisher (Σ F (w−q)²), gram (Σ (w−q)ᵀ G
    /// (w−q) with the input's Gram matrix; the default for encoders) or diag
    /// (its diagonal, mean x²).
    #[arg(long, value_parser = named::<Sensitivity>)]
    pub sensitivity: Option<Sensitivity>,
    /// GGUF: the type of one tensor, by GGUF name (repeatable), like
    /// llama-quantize --tensor-type: blk.0.attn_v.weight=Q8_0.
    #[arg(long = "tensor-type", value_name = "NAME=TYPE")]
    pub tensor_type: Vec<String>,
    /// ONNX --bits 4: weights per block (a power of two, at least 16).
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub block: usize,
    /// ONNX --bits 8 without --calib: quantize activations at run time too
    /// (DynamicQuantizeLinear + MatMulInteger, like onnxruntime's
    /// quantize_dynamic) instead of int8 weights only.
    #[arg(long, conflicts_with = "calib")]
    pub dynamic: bool,
    /// ONNX --bits 4: onnxruntime's MatMulNBits (fastest there), or standard
    /// opset-21 DequantizeLinear with block_size on UINT4 weights.
    #[arg(long, default_value = "nbits", value_parser = named::<Int4Format>)]
    pub int4_format: Int4Format,
    /// Static int8 (ONNX, TFLite): how activation ranges are chosen from
    /// the data: minmax, percentile, mse, entropy [default: mse; minmax
    /// with --int16-activations, whose 65536 levels gain nothing from clipping].
    #[arg(long, value_parser = named::<RangeArg>)]
    pub calib_method: Option<RangeArg>,
    /// ONNX static int8: skip bias correction (moving each Conv/Gemm
    /// output's per-channel mean back onto the float model's).
    #[arg(long)]
    pub no_bias_correction: bool,
    /// TFLite full-integer int8 (--calib): int8 graph inputs and outputs
    /// (int16 with --int16-activations) instead of float ones behind
    /// QUANTIZE/DEQUANTIZE.
    #[arg(long)]
    pub int8_io: bool,
    /// TFLite full-integer (--calib): 16x8 mode, int16 activations
    /// (symmetric) with int8 weights and int64 biases.
    #[arg(long)]
    pub int16_activations: bool,
    #[command(flatten)]
    pub image: ImageArgs,
    #[command(flatten)]
    pub recipe: RecipeFlags,
}

pub fn preset_from_args(bits: Option<u32>, ty: Option<&str>, default: &str) -> Result<Preset> {
    let names = || {
        PRESETS
            .iter()
            .map(|p| p.name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (bits, ty) {
        (Some(b), _) => Preset::by_bits(b).ok_or_else(|| {
            UsageError(format!(
                "--bits {b} has no preset; use 2, 3, 4, 5, 6, 8 (or --type with one of {})",
                names()
            ))
            .into()
        }),
        (None, Some(t)) => Preset::by_name(t)
            .ok_or_else(|| UsageError(format!("unknown --type {t}; known: {}", names())).into()),
        (None, None) => Ok(Preset::by_name(default).expect("default preset exists")),
    }
}

/// A recipe step from JSON parameters (unset options, null, left out).
pub fn step(pass: &str, mut params: serde_json::Value) -> Step {
    if let serde_json::Value::Object(m) = &mut params {
        m.retain(|_, v| !v.is_null());
    }
    let params = match toml::Value::try_from(params).expect("plain parameters") {
        toml::Value::Table(t) => t,
        _ => unreachable!("parameters are a table"),
    };
    Step {
        pass: pass.into(),
        params,
    }
}

/// The one-step recipe `edgec quantize` stands for.
pub fn recipe(args: &Args) -> Result<Recipe> {
    let format = Format::of(&args.output);
    let graph_out = matches!(format, Some(Format::Onnx | Format::Tflite));
    if format != Some(Format::Tflite) && (args.int8_io || args.int16_activations) {
        return Err(UsageError(
            "--int8-io and --int16-activations are for TFLite output (.tflite)".into(),
        )
        .into());
    }
    if graph_out
        && (args.ty.is_some()
            || args.imatrix.is_some()
            || args.pure
            || args.method.is_some()
            || args.target_bpw.is_some()
            || args.target_size.is_some()
            || !args.tensor_type.is_empty())
    {
        return Err(UsageError(format!(
            "{} output takes --bits, --block and --calib; --type, --imatrix, --method, --pure, \
             --target-bpw, --target-size and --tensor-type are for GGUF",
            if format == Some(Format::Onnx) {
                "ONNX"
            } else {
                "TFLite"
            }
        ))
        .into());
    }
    let mut data = BTreeMap::new();
    if let Some(c) = &args.calib {
        let text = !graph_out;
        data.insert(
            "calib".to_string(),
            DataSpec {
                path: absolute(c),
                samples: if text {
                    Some(args.calib_samples.unwrap_or(32))
                } else {
                    args.calib_samples
                },
                len: text.then_some(args.calib_len),
                image: if text {
                    ImageSpec::new()
                } else {
                    args.image.spec()
                },
            },
        );
    }
    let calib = args.calib.as_ref().map(|_| "calib");
    let quantize = match format {
        Some(Format::Tflite) => {
            match args.bits {
                Some(8) => {}
                Some(b) => return Err(UsageError(format!(
                    "--bits {b}: TFLite output is int8 (--bits 8); for float16 weights use `edgec convert --dtype f16`"
                )).into()),
                None => return Err(UsageError("TFLite output: give --bits 8".into()).into()),
            }
            // the command's own words for what the pass's check says in keys
            if args.calib.is_none() && args.int8_io {
                return Err(UsageError(
                    "--int8-io needs full-integer quantization: give --calib DATA (dynamic range keeps float inputs and outputs)".into(),
                )
                .into());
            }
            if args.calib.is_none() && args.int16_activations {
                return Err(UsageError(
                    "--int16-activations needs full-integer quantization: give --calib DATA".into(),
                )
                .into());
            }
            step(
                "quantize.tflite",
                serde_json::json!({
                    "data": calib,
                    "int8_io": args.int8_io,
                    "int16_activations": args.int16_activations,
                    "range_method": args.calib_method.unwrap_or(if args.int16_activations {
                        RangeArg::Minmax
                    } else {
                        RangeArg::Mse
                    }),
                    "bias_correction": !args.no_bias_correction,
                }),
            )
        }
        Some(Format::Onnx) => {
            let Some(bits) = args.bits else {
                return Err(UsageError("ONNX output: give --bits 8 or --bits 4".into()).into());
            };
            step(
                "quantize.onnx",
                serde_json::json!({
                    "bits": bits,
                    "block": args.block,
                    "int4_format": args.int4_format,
                    "dynamic": args.dynamic,
                    "data": calib,
                    "range_method": args.calib_method.unwrap_or(RangeArg::Mse),
                    "bias_correction": !args.no_bias_correction,
                }),
            )
        }
        Some(Format::Gguf) => {
            let preset = preset_from_args(args.bits, args.ty.as_deref(), "Q4_K_M")?;
            if args.imatrix.is_some() && args.method.is_some_and(|m| m != Method::Imatrix) {
                return Err(UsageError(
                    "--imatrix rounds by importance only (--method imatrix); for AWQ give --calib"
                        .into(),
                )
                .into());
            }
            if let (None, Some(m)) = (&args.calib, args.method) {
                if m != Method::Rtn && !(m == Method::Imatrix && args.imatrix.is_some()) {
                    return Err(UsageError(format!(
                        "--method {} needs calibration data: give --calib FILE",
                        m.name()
                    ))
                    .into());
                }
            }
            let mut tensor_types = serde_json::Map::new();
            for spec in &args.tensor_type {
                let Some((name, ty)) = spec.split_once('=') else {
                    return Err(UsageError(format!(
                        "--tensor-type {spec}: give NAME=TYPE, e.g. blk.0.attn_v.weight=Q8_0"
                    ))
                    .into());
                };
                tensor_types.insert(name.trim().into(), ty.trim().into());
            }
            step(
                "quantize.gguf",
                serde_json::json!({
                    "preset": preset.name,
                    "pure": args.pure,
                    "method": args.method,
                    "data": calib,
                    "imatrix": args.imatrix.as_deref().map(absolute),
                    "sweep": args.sequential.then_some("sequential"),
                    "propagate": args.no_propagate.then_some(false),
                    "allow_nonfinite": (args.sequential && args.allow_nonfinite).then_some(true),
                    "target_bpw": args.target_bpw,
                    "target_size": args.target_size,
                    "sensitivity": args.sensitivity,
                    "tensor_types": (!tensor_types.is_empty()).then_some(tensor_types),
                }),
            )
        }
        _ => bail!(
            "{}: quantize writes .gguf, .onnx or .tflite files",
            args.output.display()
        ),
    };
    let write = step(
        "write",
        serde_json::json!({
            "path": absolute(&args.output),
            "allow_nonfinite": args.allow_nonfinite,
        }),
    );
    Ok(Recipe {
        input: Input {
            model: absolute(&args.input),
        },
        data,
        steps: vec![quantize, write],
        report: Default::default(),
    })
}

pub fn run(args: Args) -> Result<()> {
    let recipe = recipe(&args)?;
    let gguf = Format::of(&args.output) == Some(Format::Gguf);
    let Some(report) = super::run_recipe(&recipe, &args.recipe, "edgec quantize", args.json)?
    else {
        return Ok(());
    };
    if args.json {
        // GGUF: the writer's report (tensors, types, sizes) with the
        // calibration's; other outputs: the run report.
        let json = if gguf {
            let mut json = report.steps[1].summary.clone();
            for key in ["calibration", "mixed"] {
                if let Some(c) = report.steps[0].summary.get(key) {
                    json[key] = c.clone();
                }
            }
            json
        } else {
            serde_json::to_value(&report)?
        };
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    Ok(())
}
