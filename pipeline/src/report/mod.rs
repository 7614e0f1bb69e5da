//! The report every run writes: inputs with their hashes, steps with their
//! parameters, time and peak memory, per-tensor results and eval gates.
//! JSON always; HTML on request (`report::html`).

use serde::{Deserialize, Serialize};

pub mod html;

pub use html::render_html;

/// One run of a recipe.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct RunReport {
    pub edgec_version: String,
    /// The recipe file, or the command line that stood for one.
    pub recipe: String,
    pub inputs: Vec<FileRecord>,
    pub steps: Vec<StepRecord>,
    /// Per tensor of the written model (the last write step).
    pub tensors: Vec<TensorRecord>,
    /// The eval steps' results, in order.
    pub evals: Vec<EvalRecord>,
    pub outputs: Vec<FileRecord>,
    /// Every gate of every eval step passed (true when there are none).
    pub passed: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct FileRecord {
    /// `input`, a data set's name, or the writing step's path.
    pub name: String,
    pub path: String,
    pub bytes: u64,
    /// SHA-256 of the file, or of a folder's files in name order.
    pub sha256: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct StepRecord {
    pub index: usize,
    pub pass: String,
    /// The step's parameters as given, defaults filled in.
    pub params: serde_json::Value,
    pub seconds: f64,
    /// Peak resident memory of the process at the end of the step (bytes).
    pub peak_rss_bytes: u64,
    /// Taken from the work folder's cache (`recipe run --resume`).
    pub cached: bool,
    /// What the step has to say (pass-specific, free form).
    pub summary: serde_json::Value,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct TensorRecord {
    /// The name in the written file (GGUF names for GGUF).
    pub name: String,
    /// What the tensor is (`attn_q`, `ffn_down`, `token_embd`, `norm`, ...).
    pub kind: String,
    pub layer: Option<usize>,
    pub shape: Vec<usize>,
    /// The written type (`Q4_K`, `F32`, `int8`, ...).
    #[serde(rename = "type")]
    pub ty: String,
    pub bits_per_weight: f64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Fraction of exact zeros among the written weights.
    pub sparsity: f64,
    /// Fraction of exact zeros before encoding (what pruning left).
    #[serde(default)]
    pub sparsity_before: f64,
    /// Relative RMS error of the written weights against the float ones,
    /// ‖W − Q(W)‖ / ‖W‖ (0 for tensors stored exactly).
    pub error: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct EvalRecord {
    pub step: usize,
    /// Metric name → value (`ppl_reference`, `ppl_candidate`, `kld`, `top1_agreement`, ...).
    pub metrics: std::collections::BTreeMap<String, f64>,
    pub gates: Vec<GateRecord>,
    pub passed: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct GateRecord {
    /// `max_kld`, `max_ppl_increase`, `min_top1`, `min_cosine`.
    pub name: String,
    pub threshold: f64,
    pub value: f64,
    pub passed: bool,
}
