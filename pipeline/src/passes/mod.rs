//! The passes, one module each, and what they share: the state a recipe's
//! steps hand on, the context they run in, and the static view `check` uses.

pub mod cast;
pub mod eval;
pub mod prune;
pub mod prune_channels;
pub mod prune_graph;
pub mod prune_structured;
pub mod quantize_gguf;
pub mod quantize_graph;
pub mod write;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use edgec_core::{Family, Model};
use edgec_formats::tflite::model::TflModel;
use edgec_passes::gptq::Hessian;
use edgec_passes::presets::Preset;
use serde::{Deserialize, Serialize};

use crate::error::usage;
use crate::progress::Progress;
use crate::recipe::DataSpec;
use crate::registry::{Changes, Needs};

/// A step of a recipe.
pub trait Pass {
    /// What the pass needs (data, statistics, a family, a written file).
    fn needs(&self) -> Needs;
    /// What the pass changes.
    fn changes(&self) -> Changes;
    /// The data set it reads, by name.
    fn data(&self) -> Option<&str> {
        None
    }
    /// The parameters with defaults filled in (for reports and cache keys).
    fn params(&self) -> serde_json::Value;
    /// Checks the pass against the model as the earlier steps leave it, and
    /// updates that view. Errors name the offending key (the caller adds
    /// the step).
    fn check(&self, view: &mut ModelView, ctx: &CheckContext) -> Result<()>;
    /// Runs the pass.
    fn run(&self, state: &mut State, ctx: &Context) -> Result<Outcome>;
}

/// What a finished step tells: a line for people, a JSON summary for the report.
#[derive(Default)]
pub struct Outcome {
    pub lines: Vec<String>,
    pub summary: serde_json::Value,
    /// A file or folder the step wrote.
    pub written: Option<PathBuf>,
    /// An eval step's result.
    pub eval: Option<crate::eval::Report>,
    /// Per-tensor records of the written model.
    pub tensors: Vec<crate::report::TensorRecord>,
}

/// Float storage types of weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FloatType {
    #[default]
    F32,
    F16,
    Bf16,
}

/// GGUF decisions of a quantize.gguf step, applied as the writer encodes
/// each tensor (one tensor at a time, so the model is never held twice).
pub struct GgufQuant {
    pub preset: Preset,
    /// Per-column importance of weights (IR names).
    pub importance: Option<std::collections::HashMap<String, Vec<f32>>>,
    /// Per weight, the input Hessian for rounding with error feedback.
    pub hessians: Option<std::collections::HashMap<String, Arc<Hessian>>>,
    /// Tensors already encoded by a sequential calibration (IR row order).
    pub encoded: Option<crate::encoded::EncodedStore>,
    /// Per weight, a type that replaces the preset's (mixed precision).
    pub types: Option<std::collections::HashMap<String, edgec_core::GgmlType>>,
}

/// The model as the steps so far leave it.
pub struct State {
    pub model: Model,
    /// Float storage type chosen by a cast step.
    pub dtype: Option<FloatType>,
    pub gguf: Option<GgufQuant>,
    /// A quantize.onnx step's description (the model is quantized in place).
    pub onnx: Option<String>,
    /// A quantize.tflite step's result: the lowered, quantized model.
    pub tflite: Option<(TflModel, String)>,
    /// The last file a write step produced.
    pub written: Option<PathBuf>,
}

impl State {
    pub fn new(model: Model) -> State {
        State {
            model,
            dtype: None,
            gguf: None,
            onnx: None,
            tflite: None,
            written: None,
        }
    }

    /// The model as a graph: as read, or a llama/bert model lowered to one.
    pub fn lower_to_graph(&mut self, input: &Path) -> Result<()> {
        if self.model.graph.is_none() {
            let graph = edgec_core::lowering::to_graph(&self.model)
                .map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?;
            self.model = graph;
        }
        Ok(())
    }
}

/// What a pass runs with.
pub struct Context<'a> {
    /// The file the model was read from (named in errors about it).
    pub input: &'a Path,
    pub data: &'a BTreeMap<String, DataSpec>,
    pub progress: &'a dyn Progress,
}

impl Context<'_> {
    /// The data set named `name` (checked to exist by `check`).
    pub fn data_set(&self, name: &str) -> Result<&DataSpec> {
        self.data
            .get(name)
            .with_context(|| format!("no data set named {name}"))
    }
}

/// What the model is at a point of the recipe, as `check` sees it.
#[derive(Clone, Debug)]
pub struct ModelView {
    pub family: Option<FamilyKind>,
    pub graph: bool,
    pub quant: QuantKind,
    pub written: Option<PathBuf>,
    /// Parameters (for memory estimates).
    pub params: usize,
    /// Bytes of the largest tensor as f32.
    pub largest_tensor_f32: usize,
    /// Sum over linear inputs of their Gram matrix's bytes (calibration).
    pub gram_bytes: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FamilyKind {
    Llama,
    Bert,
}

/// How the model has been quantized by the steps so far (one form per output).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantKind {
    None,
    Gguf,
    Onnx,
    Tflite,
}

impl ModelView {
    pub fn of(model: &Model) -> ModelView {
        let family = match &model.meta.family {
            Some(Family::Llama(_)) => Some(FamilyKind::Llama),
            Some(Family::Bert(_)) => Some(FamilyKind::Bert),
            None => None,
        };
        let linear_inputs: std::collections::BTreeSet<usize> = model
            .tensors
            .iter()
            .filter(|t| t.shape.len() == 2)
            .map(|t| t.row_len())
            .collect();
        ModelView {
            family,
            graph: model.graph.is_some(),
            quant: QuantKind::None,
            written: None,
            params: model.total_params(),
            largest_tensor_f32: model
                .tensors
                .iter()
                .map(|t| t.shape.iter().product::<usize>() * 4)
                .max()
                .unwrap_or(0),
            // one f64 Gram matrix per distinct input width per layer, roughly
            gram_bytes: model
                .tensors
                .iter()
                .filter(|t| t.shape.len() == 2 && t.name.ends_with(".weight"))
                .map(|t| t.row_len() * t.row_len() * 8)
                .sum::<usize>()
                .min(linear_inputs.iter().map(|c| c * c * 8).sum::<usize>() * 256),
        }
    }
}

/// What `check` knows besides the model: the data sets.
pub struct CheckContext<'a> {
    pub data: &'a BTreeMap<String, DataSpec>,
}

impl CheckContext<'_> {
    /// Checks that a data key names a set of the recipe.
    pub fn data_set(&self, name: &str) -> Result<&DataSpec> {
        self.data.get(name).ok_or_else(|| {
            usage(format!(
                "data = \"{name}\": no [data.{name}] in the recipe{}",
                if self.data.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (it has {})",
                        self.data.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                }
            ))
        })
    }
}

/// Whether `path` holds text or sentences rather than graph inputs (a folder
/// of photos, a photo, an IDX file or a .safetensors of tensors).
pub fn is_text(path: &Path) -> bool {
    if path.is_dir() {
        return false;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let graph_input = [
        ".safetensors",
        ".png",
        ".jpg",
        ".jpeg",
        "-ubyte",
        "-ubyte.gz",
        ".idx",
    ];
    !graph_input.iter().any(|ext| name.ends_with(ext))
}
