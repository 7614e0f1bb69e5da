//! `edgec inspect FILE [--json]`

use std::path::PathBuf;

use anyhow::Result;
use edgec_core::{BlockShape, Family, Tensor};
use edgec_formats::gguf::{self, value::GgufValue};
use edgec_formats::Format;
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct Args {
    /// A .gguf file, .safetensors file or Hugging Face folder.
    pub path: PathBuf,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

fn value_json(v: &GgufValue) -> Value {
    match v {
        GgufValue::String(s) => json!(s),
        GgufValue::Bool(b) => json!(b),
        GgufValue::F32(x) => json!(x),
        GgufValue::F64(x) => json!(x),
        GgufValue::Array(_, items) => Value::Array(items.iter().map(value_json).collect()),
        other => other
            .as_i64()
            .map(|i| json!(i))
            .or_else(|| other.as_u64().map(|u| json!(u)))
            .unwrap_or(Value::Null),
    }
}

/// Long arrays (vocabularies, merges) are summarised in the text view.
fn value_text(v: &GgufValue) -> String {
    match v {
        GgufValue::Array(_, items) if items.len() > 8 => format!("[{} items]", items.len()),
        GgufValue::String(s) if s.len() > 80 => {
            format!("{:?}… ({} bytes)", &s[..s.floor_char_boundary(60)], s.len())
        }
        GgufValue::String(s) => format!("{s:?}"),
        other => value_json(other).to_string(),
    }
}

pub fn run(args: Args) -> Result<()> {
    // GGUF is shown as stored (llama.cpp names, all metadata); other formats as read into the IR.
    let (arch, metadata, tensors, family) = if Format::of(&args.path) == Some(Format::Gguf) {
        let file = gguf::reader::read(&args.path)?;
        let arch = file
            .metadata
            .get_str("general.architecture")
            .unwrap_or("unknown")
            .to_string();
        let family = gguf::family_from_metadata(&args.path, &file.metadata, &file.tensors).ok();
        (arch, file.metadata.entries, file.tensors, family)
    } else {
        let model = edgec_formats::read_model(&args.path)?;
        let arch = model
            .meta
            .family
            .as_ref()
            .map(|f| f.name().to_string())
            .unwrap_or_else(|| "unknown".into());
        (arch, vec![], model.tensors, model.meta.family)
    };
    // Each block's widths: structured pruning may leave them different.
    let blocks: Vec<BlockShape> = match &family {
        Some(Family::Llama(p)) => p.block_shapes(),
        _ => vec![],
    };
    // Exact zeros as the tensor decodes (a pruned model's sparsity, and what
    // of it survived quantization); one tensor at a time, pages released.
    let zero_fractions: Vec<f64> = tensors
        .iter()
        .map(|t| {
            let values = t.to_f32()?;
            t.release_pages();
            let zeros = values.iter().filter(|v| **v == 0.0).count();
            Ok(zeros as f64 / values.len().max(1) as f64)
        })
        .collect::<Result<_>>()?;
    let params: usize = tensors.iter().map(Tensor::numel).sum();
    let bytes: usize = tensors.iter().map(|t| t.bytes().len()).sum();
    let bpw = if params > 0 {
        bytes as f64 * 8.0 / params as f64
    } else {
        0.0
    };
    if args.json {
        let out = json!({
            "path": args.path.display().to_string(),
            "architecture": arch,
            "metadata": metadata.iter().map(|(k, v)| (k.clone(), value_json(v))).collect::<serde_json::Map<_, _>>(),
            "tensors": tensors.iter().zip(&zero_fractions).map(|(t, zeros)| json!({
                "name": t.name, "shape": t.shape, "type": t.dtype.name(), "bytes": t.bytes().len(),
                "bits_per_weight": t.bytes().len() as f64 * 8.0 / t.shape.iter().product::<usize>().max(1) as f64,
                "zero_fraction": zeros,
            })).collect::<Vec<_>>(),
            "layers": blocks.iter().map(|b| json!({
                "heads": b.num_heads, "kv_heads": b.num_kv_heads, "ffn": b.intermediate_size,
            })).collect::<Vec<_>>(),
            "total_params": params,
            "total_bytes": bytes,
            "bits_per_weight": bpw,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("{}", args.path.display());
    println!("architecture: {arch}");
    if !metadata.is_empty() {
        println!("metadata ({} keys):", metadata.len());
        for (k, v) in &metadata {
            println!("  {k} = {}", value_text(v));
        }
    }
    if let Some(first) = blocks.first() {
        if blocks.iter().all(|b| b == first) {
            println!(
                "layers ({}): {} heads, {} key/value heads, FFN {} in every layer",
                blocks.len(),
                first.num_heads,
                first.num_kv_heads,
                first.intermediate_size
            );
        } else {
            println!("layers ({}, widths differ):", blocks.len());
            for (i, b) in blocks.iter().enumerate() {
                println!(
                    "  {i:>3}: {} heads, {} key/value heads, FFN {}",
                    b.num_heads, b.num_kv_heads, b.intermediate_size
                );
            }
        }
    }
    println!("tensors ({}):", tensors.len());
    for (t, zeros) in tensors.iter().zip(&zero_fractions) {
        let (name, shape, dtype, b) = (&t.name, &t.shape, t.dtype, t.bytes().len());
        let n = shape.iter().product::<usize>().max(1);
        let sparsity = if *zeros > 0.0 {
            format!(" {:>6.2}% zero", zeros * 100.0)
        } else {
            String::new()
        };
        println!(
            "  {name:<48} {dtype:<7} {:<20} {:>6.2} bpw{sparsity}",
            format!("{shape:?}"),
            b as f64 * 8.0 / n as f64
        );
    }
    println!(
        "total: {:.2}M parameters, {:.2} MiB, {bpw:.2} bits/weight",
        params as f64 / 1e6,
        bytes as f64 / (1 << 20) as f64
    );
    Ok(())
}
