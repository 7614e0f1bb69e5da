//! `edgec quantize IN OUT [--bits N | --type T]`

use std::path::PathBuf;

use anyhow::{bail, Result};
use edgec_formats::Format;
use edgec_passes::presets::{Preset, PRESETS};

use super::UsageError;
use crate::calib::{self, Method};
use crate::graph_data::{ImageArgs, RangeArg};
use crate::pipeline::{self, GgufOptions};

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
    /// How calibration is used (default with --calib: awq+gptq, the best measured).
    #[arg(long, value_enum)]
    pub method: Option<Method>,
    /// Round with the importance of an importance matrix file (llama-imatrix's
    /// GGUF or legacy .dat, or edgec calibrate's).
    #[arg(long, value_name = "FILE", conflicts_with = "calib")]
    pub imatrix: Option<PathBuf>,
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
    #[arg(long, value_enum, default_value = "nbits")]
    pub int4_format: super::quantize_onnx::Int4Format,
    /// Static int8 (ONNX, TFLite): how activation ranges are chosen from
    /// the data [default: mse; minmax with --int16-activations, whose 65536
    /// levels gain nothing from clipping].
    #[arg(long, value_enum)]
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

pub fn run(args: Args) -> Result<()> {
    if Format::of(&args.output) == Some(Format::Tflite) {
        return run_tflite(args);
    }
    if args.int8_io || args.int16_activations {
        return Err(UsageError(
            "--int8-io and --int16-activations are for TFLite output (.tflite)".into(),
        )
        .into());
    }
    if Format::of(&args.output) == Some(Format::Onnx) {
        let Some(bits) = args.bits else {
            return Err(UsageError("ONNX output: give --bits 8 or --bits 4".into()).into());
        };
        if args.ty.is_some() || args.imatrix.is_some() || args.pure || args.method.is_some() {
            return Err(UsageError(
                "ONNX output takes --bits, --block and --calib; --type, --imatrix, --method and --pure are for GGUF".into(),
            )
            .into());
        }
        let model = super::read_input(&args.input, &args.output)?;
        let calib = graph_calib(&args);
        return super::quantize_onnx::run(
            model,
            &args.input,
            &args.output,
            &super::quantize_onnx::OnnxQuant {
                bits,
                block: args.block,
                int4: args.int4_format,
                dynamic: args.dynamic,
            },
            calib,
        );
    }
    let mut preset = preset_from_args(args.bits, args.ty.as_deref(), "Q4_K_M")?;
    preset.pure = args.pure;
    match Format::of(&args.output) {
        Some(Format::Gguf) => {}
        _ => bail!(
            "{}: quantize writes .gguf, .onnx or .tflite files",
            args.output.display()
        ),
    }
    let model = super::read_input(&args.input, &args.output)?;
    let method = match (&args.calib, args.method) {
        (None, Some(m)) if m != Method::Rtn => {
            return Err(UsageError(format!(
                "--method {} needs calibration data: give --calib FILE",
                m.name()
            ))
            .into())
        }
        (None, _) => Method::Rtn,
        (Some(_), m) => m.unwrap_or(Method::AwqGptq),
    };
    if args.imatrix.is_some() && args.method.is_some_and(|m| m != Method::Imatrix) {
        return Err(UsageError(
            "--imatrix rounds by importance only (--method imatrix); for AWQ give --calib".into(),
        )
        .into());
    }
    let file_importance = args
        .imatrix
        .as_deref()
        .map(|p| calib::importance_from_file(&model, p))
        .transpose()?;
    let calibrated = match &args.calib {
        Some(data) if method != Method::Rtn => {
            let plans = pipeline::plan(&model, &preset, method.importance())?;
            let types = model
                .tensors
                .iter()
                .zip(&plans)
                .map(|(t, p)| (t.name.clone(), p.ty))
                .collect();
            let seqs = calib::sequences(
                &model,
                data,
                args.calib_samples.unwrap_or(32),
                args.calib_len,
            )?;
            Some(calib::calibrate(
                &model,
                types,
                &seqs,
                method,
                &Default::default(),
            )?)
        }
        _ => None,
    };
    let report = pipeline::write_gguf(
        calibrated.as_ref().map_or(&model, |c| &c.model),
        &args.output,
        &preset,
        &GgufOptions {
            input: &args.input,
            allow_nonfinite: args.allow_nonfinite,
            importance: calibrated
                .as_ref()
                .and_then(|c| c.importance.as_ref())
                .or(file_importance.as_ref()),
            hessians: calibrated.as_ref().and_then(|c| c.hessians.as_ref()),
        },
    )?;
    let calib_report = calibrated.map(|c| c.report);
    if args.json {
        let mut json = serde_json::to_value(&report)?;
        if let Some(c) = &calib_report {
            json["calibration"] = serde_json::to_value(c)?;
        }
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        if let Some(c) = &calib_report {
            println!(
                "calibrated ({}) on {} tokens in {:.2}s{}",
                c.method,
                c.tokens,
                c.seconds,
                match (c.awq_error_rtn, c.awq_error_final) {
                    (Some(a), Some(b)) if a > 0.0 =>
                        format!("; AWQ output error {:.3}x plain rounding's", b / a),
                    _ => String::new(),
                }
            );
        }
        println!(
            "wrote {} ({}): {} tensors, {:.2}M parameters, {:.2} bits/weight, {:.1} MiB, {:.2}s",
            report.output,
            report.preset,
            report.tensors.len(),
            report.params as f64 / 1e6,
            report.bits_per_weight,
            report.bytes as f64 / (1 << 20) as f64,
            report.seconds
        );
    }
    Ok(())
}

/// The calibration settings of graph (ONNX and TFLite) outputs, with --calib.
fn graph_calib(args: &Args) -> Option<super::quantize_onnx::Calib<'_>> {
    args.calib
        .as_deref()
        .map(|data| super::quantize_onnx::Calib {
            data,
            bias_correction: !args.no_bias_correction,
            samples: args.calib_samples,
            method: args.calib_method.unwrap_or(if args.int16_activations {
                RangeArg::Minmax
            } else {
                RangeArg::Mse
            }),
            image: &args.image,
        })
}

/// `.tflite` output: int8 only (dynamic range, or full integer with --calib).
fn run_tflite(args: Args) -> Result<()> {
    match args.bits {
        Some(8) => {}
        Some(b) => {
            return Err(UsageError(format!(
                "--bits {b}: TFLite output is int8 (--bits 8); for float16 weights use `edgec convert --dtype f16`"
            ))
            .into())
        }
        None => return Err(UsageError("TFLite output: give --bits 8".into()).into()),
    }
    if args.ty.is_some() || args.imatrix.is_some() || args.pure || args.method.is_some() {
        return Err(UsageError(
            "TFLite output takes --bits 8, --dynamic or --calib; --type, --imatrix, --method and --pure are for GGUF".into(),
        )
        .into());
    }
    if args.int8_io && args.calib.is_none() {
        return Err(UsageError(
            "--int8-io needs full-integer quantization: give --calib DATA (dynamic range keeps float inputs and outputs)".into(),
        )
        .into());
    }
    if args.int16_activations && args.calib.is_none() {
        return Err(UsageError(
            "--int16-activations needs full-integer quantization: give --calib DATA".into(),
        )
        .into());
    }
    if let Some(c) = &args.calib {
        if !c.exists() {
            bail!("{}: the calibration data does not exist", c.display());
        }
    }
    let model = super::read_input(&args.input, &args.output)?;
    let calib = graph_calib(&args);
    super::quantize_onnx::run_tflite(
        model,
        &args.input,
        &args.output,
        super::quantize_onnx::TfliteQuant {
            calib,
            int8_io: args.int8_io,
            int16_activations: args.int16_activations,
        },
    )
}
