//! Recipes: a TOML file naming the input model, data sets, the steps (each a
//! registered pass with its parameters) and where the report goes.
//!
//! ```toml
//! [input]
//! model = "models/SmolLM2-135M"
//!
//! [data.calib]
//! path = "calib.txt"
//! samples = 32
//! len = 512
//!
//! [[step]]
//! pass = "quantize.gguf"
//! preset = "Q4_K_M"
//! data = "calib"
//!
//! [[step]]
//! pass = "write"
//! path = "out/model.Q4_K_M.gguf"
//!
//! [[step]]
//! pass = "eval"
//! data = "heldout"
//! max_kld = 0.05
//!
//! [report]
//! html = "out/report.html"
//! ```
//!
//! Relative paths are relative to the recipe file's folder. A step's keys
//! other than `pass` are the pass's parameters, checked against its typed
//! parameters when the recipe is checked (unknown keys are errors naming the
//! step and the key).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::error::usage;
use crate::graph_data::ImageSpec;

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub input: Input,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, DataSpec>,
    #[serde(default, rename = "step")]
    pub steps: Vec<Step>,
    #[serde(default, skip_serializing_if = "ReportSpec::is_empty")]
    pub report: ReportSpec,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// A Hugging Face folder, .safetensors, .gguf, .onnx or .tflite file.
    pub model: PathBuf,
}

/// A named data set: calibration or evaluation data.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// Text (.txt), sentences (.jsonl), a folder of photos, an IDX file or a
    /// .safetensors of input tensors (sample axis first).
    pub path: PathBuf,
    /// Text calibration: sequences spread evenly over the text (default 32);
    /// graph inputs: at most this many samples (default all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<usize>,
    /// Text calibration: tokens per sequence (default 512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub len: Option<usize>,
    /// Photos and IDX images: how pixels become the model's input.
    #[serde(default, skip_serializing_if = "ImageSpec::is_default")]
    pub image: ImageSpec,
}

/// One step: a registered pass and its parameters (checked by the pass).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Step {
    pub pass: String,
    #[serde(flatten)]
    pub params: toml::Table,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct ReportSpec {
    /// The JSON report (default: report.json in the work folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<PathBuf>,
    /// A self-contained HTML page with plots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<PathBuf>,
    /// Where finished steps are cached for `--resume` (default: the recipe's
    /// name with `.work` beside it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work: Option<PathBuf>,
}

impl ReportSpec {
    fn is_empty(&self) -> bool {
        self.json.is_none() && self.html.is_none() && self.work.is_none()
    }
}

impl Recipe {
    /// Parses a recipe; relative paths are taken from `base`.
    pub fn parse(text: &str, origin: &Path, base: &Path) -> Result<Recipe> {
        let mut recipe: Recipe =
            toml::from_str(text).map_err(|e| usage(format!("{}: {e}", origin.display())))?;
        recipe.resolve_paths(base);
        Ok(recipe)
    }

    /// Reads a recipe file.
    pub fn read(path: &Path) -> Result<Recipe> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Recipe::parse(&text, path, base)
    }

    /// The recipe as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a recipe is plain data")
    }

    fn resolve_paths(&mut self, base: &Path) {
        let join = |p: &mut PathBuf| {
            if p.is_relative() && !base.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        join(&mut self.input.model);
        for d in self.data.values_mut() {
            join(&mut d.path);
        }
        for r in [
            &mut self.report.json,
            &mut self.report.html,
            &mut self.report.work,
        ]
        .into_iter()
        .flatten()
        {
            join(r);
        }
        for step in &mut self.steps {
            for key in crate::registry::path_keys(&step.pass) {
                if let Some(toml::Value::String(s)) = step.params.get_mut(*key) {
                    let mut p = PathBuf::from(&*s);
                    if *key == "reference" && s == "input" {
                        continue;
                    }
                    join(&mut p);
                    *s = p.display().to_string();
                }
            }
        }
    }
}

/// An absolute form of `p` (joined to the current folder), for printed
/// recipes that must run from anywhere.
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
