//! The one registry of named passes. Commands and recipes build their steps
//! here, from the same typed parameters, so `edgec quantize …` and the recipe
//! it prints run the same code.

use anyhow::Result;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::usage;
use crate::passes::{self, Pass};
use crate::recipe::Step;

/// What a pass needs before it can run.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Needs {
    /// Calibration or evaluation data (a named data set).
    pub data: DataNeed,
    /// Activation statistics gathered by running the model on the data.
    pub activation_stats: bool,
    /// A model family the pass knows (llama, bert), or a graph.
    pub model: ModelNeed,
    /// A file written by an earlier step (eval reads it back).
    pub written_file: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataNeed {
    #[default]
    None,
    Optional,
    Required,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelNeed {
    /// Any model.
    #[default]
    Any,
    /// A llama/mistral/qwen2 or bert model (a family edgec runs).
    Family,
    /// A graph, or a family that lowers to one.
    Graph,
}

/// What a pass changes in the model.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Changes {
    pub weights: bool,
    pub dtypes: bool,
    pub shapes: bool,
    pub graph: bool,
    /// Writes a file (writers).
    pub files: bool,
}

/// A registered pass: its name, what it is for, and its builder.
pub struct PassInfo {
    pub name: &'static str,
    pub summary: &'static str,
    /// Parameters that are paths (resolved against the recipe's folder).
    pub path_keys: &'static [&'static str],
    build: fn(&toml::Table) -> Result<Box<dyn Pass>, String>,
}

fn build<P: Pass + DeserializeOwned + 'static>(
    params: &toml::Table,
) -> Result<Box<dyn Pass>, String> {
    let p: P = params
        .clone()
        .try_into()
        .map_err(|e: toml::de::Error| e.message().to_string())?;
    Ok(Box::new(p))
}

/// Every pass edgec knows, by name.
pub const PASSES: &[PassInfo] = &[
    PassInfo {
        name: "cast",
        summary: "store float weights as f32, f16 or bf16",
        path_keys: &[],
        build: build::<passes::cast::Cast>,
    },
    PassInfo {
        name: "prune",
        summary: "unstructured or N:M sparsity in the blocks' linear layers: magnitude, Wanda or SparseGPT; in graphs' Conv/Gemm/MatMul weights (Wanda and SparseGPT: 1x1 convs, Gemm, MatMul)",
        path_keys: &[],
        build: build::<passes::prune::Prune>,
    },
    PassInfo {
        name: "prune.structured",
        summary: "fewer FFN neurons, attention heads (whole GQA groups) or layers; uniform or per-layer widths from a global ranking (written as llama.cpp's deci, DeciLM configs)",
        path_keys: &[],
        build: build::<passes::prune_structured::PruneStructured>,
    },
    PassInfo {
        name: "prune.channels",
        summary: "CNN graphs: fewer conv output channels, in dependency groups (depthwise convs, residual adds, BatchNorm and consumers follow), by a fraction of channels or of MACs",
        path_keys: &[],
        build: build::<passes::prune_channels::PruneChannels>,
    },
    PassInfo {
        name: "quantize.gguf",
        summary: "llama.cpp block types and k-quants under a preset, optionally calibrated (AWQ, importance, GPTQ); mixed precision under a size budget",
        path_keys: &["imatrix"],
        build: build::<passes::quantize_gguf::QuantizeGguf>,
    },
    PassInfo {
        name: "quantize.onnx",
        summary: "graph weights to int8 or 4-bit, dynamic int8, or static int8 QDQ calibrated on data",
        path_keys: &[],
        build: build::<passes::quantize_graph::QuantizeOnnx>,
    },
    PassInfo {
        name: "quantize.tflite",
        summary: "TFLite dynamic-range int8, or full-integer int8/16x8 calibrated on data",
        path_keys: &[],
        build: build::<passes::quantize_graph::QuantizeTflite>,
    },
    PassInfo {
        name: "write",
        summary: "write the model: .gguf, .onnx, .tflite or a Hugging Face folder (by the path)",
        path_keys: &["path"],
        build: build::<passes::write::Write>,
    },
    PassInfo {
        name: "eval",
        summary: "read the written file back and judge it against the input (gates: exit 3)",
        path_keys: &["reference", "tokenizer", "labels"],
        build: build::<passes::eval::Eval>,
    },
];

/// The pass named `name`.
pub fn info(name: &str) -> Option<&'static PassInfo> {
    PASSES.iter().find(|p| p.name == name)
}

/// The parameters of `pass` that hold paths (none for unknown passes).
pub fn path_keys(pass: &str) -> &'static [&'static str] {
    info(pass).map_or(&[], |p| p.path_keys)
}

/// Builds step `index` (0-based) of a recipe; errors name the step and the key.
pub fn build_step(index: usize, step: &Step) -> Result<Box<dyn Pass>> {
    let info = info(&step.pass).ok_or_else(|| {
        usage(format!(
            "step {} (pass = \"{}\"): unknown pass; known: {}",
            index + 1,
            step.pass,
            PASSES.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
        ))
    })?;
    (info.build)(&step.params)
        .map_err(|e| usage(format!("step {} ({}): {e}", index + 1, step.pass)))
}
