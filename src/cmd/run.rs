//! `edgec run MODEL --inputs IN.safetensors --output OUT.safetensors`: runs
//! a model through the reference runtime on named input tensors and writes
//! its outputs. Graph models (ONNX) take their graph inputs; llama and bert
//! models take `input_ids` and give `logits` or `last_hidden_state`, the
//! names of their ONNX export. Safetensors carries the tensors because
//! numpy, torch and edgec all read and write it.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use edgec_core::runtime::graph::GraphRuntime;
use edgec_core::runtime::{Runtime, RuntimeOptions};
use safetensors::Dtype;

#[derive(clap::Args)]
pub struct Args {
    /// Any model edgec reads (.onnx, .gguf, .safetensors, HF folder).
    pub model: PathBuf,
    /// The inputs, by graph input name, as a .safetensors file.
    #[arg(long, value_name = "FILE")]
    pub inputs: PathBuf,
    /// Where to write the outputs (.safetensors), by graph output name.
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let model = super::read_input(&args.model, &args.output)?;
    let inputs = edgec_pipeline::graph_data::read_tensors(&args.inputs)?;
    let outputs = if model.graph.is_some() {
        let rt = GraphRuntime::new(&model).with_context(|| format!("{}", args.model.display()))?;
        let refs: Vec<(&str, Tensor)> = inputs
            .iter()
            .map(|(n, t)| (n.as_str(), t.clone()))
            .collect();
        rt.run(&refs)
            .with_context(|| format!("{}", args.model.display()))?
    } else {
        let rt = Runtime::new(&model, &RuntimeOptions::default())
            .with_context(|| format!("{}", args.model.display()))?;
        let Some((_, ids)) = inputs.iter().find(|(n, _)| n == "input_ids") else {
            bail!("{}: give the token ids as input_ids", args.inputs.display());
        };
        let out = rt
            .forward(ids)
            .with_context(|| format!("{}", args.model.display()))?;
        let name = match model.meta.family {
            Some(edgec_core::Family::Bert(_)) => "last_hidden_state",
            _ => "logits",
        };
        vec![(name.to_string(), out)]
    };
    // Outputs as f32 (floats) or i64 (integers), little-endian.
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in outputs {
        let shape = t.dims().to_vec();
        let (dtype, bytes) = if t.dtype().is_float() {
            let v: Vec<f32> = t
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1()?;
            (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect())
        } else {
            let v: Vec<i64> = t
                .to_dtype(candle_core::DType::I64)?
                .flatten_all()?
                .to_vec1()?;
            (Dtype::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect())
        };
        owned.push((name, dtype, shape, bytes));
    }
    let views = owned
        .iter()
        .map(|(n, d, s, b)| {
            Ok((
                n.as_str(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let serialized = safetensors::serialize(views, None)?;
    edgec_formats::output::write_file_atomically(&args.output, |w| {
        use std::io::Write;
        w.write_all(&serialized)
            .map_err(|e| edgec_formats::FormatError::io(&args.output, e))
    })?;
    Ok(())
}
