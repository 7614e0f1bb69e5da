//! `edgec quantize IN OUT [--bits N | --type T]`

use std::path::PathBuf;

use anyhow::{bail, Result};
use edgec_formats::Format;
use edgec_passes::presets::{Preset, PRESETS};

use super::UsageError;
use crate::pipeline::{self, GgufOptions};

#[derive(clap::Args)]
pub struct Args {
    /// Input model: a Hugging Face folder, a .safetensors file or a .gguf file.
    pub input: PathBuf,
    /// Output file; the format comes from its extension (.gguf).
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
    let mut preset = preset_from_args(args.bits, args.ty.as_deref(), "Q4_K_M")?;
    preset.pure = args.pure;
    match Format::of(&args.output) {
        Some(Format::Gguf) => {}
        _ => bail!(
            "{}: quantize writes .gguf files (ONNX and TFLite outputs are not implemented yet)",
            args.output.display()
        ),
    }
    let model = super::read_input(&args.input, &args.output)?;
    let report = pipeline::write_gguf(
        &model,
        &args.output,
        &preset,
        &GgufOptions {
            input: &args.input,
            allow_nonfinite: args.allow_nonfinite,
        },
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
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
