//! `eval`: reads the file the last write step produced back and judges it
//! against a reference (the input model by default) on a data set, with
//! gates as `edgec eval` has them (a failed gate makes the run exit 3).

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::{CheckContext, Context, FamilyKind, ModelView, Outcome, Pass, State};
use crate::error::usage;
use crate::eval::{self as judge, EvalSpec, Metric};
use crate::registry::{Changes, DataNeed, ModelNeed, Needs};

fn default_reference() -> String {
    "input".into()
}

fn default_ctx() -> usize {
    512
}

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Eval {
    /// The model to judge against: `input` (the model as read), or a path.
    #[serde(default = "default_reference")]
    pub reference: String,
    /// The evaluation data (a data set's name).
    pub data: String,
    /// Metrics to report (default: the model kind's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<Metric>,
    /// Language models: tokens per chunk.
    #[serde(default = "default_ctx")]
    pub ctx: usize,
    /// Language models: at most this many chunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ppl_increase: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_kld: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_cosine: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_top1: Option<f64>,
    /// Encoders given as ONNX: the tokenizer.json to read sentences with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<PathBuf>,
    /// Classifiers: true classes (IDX labels) for accuracy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<PathBuf>,
}

impl Pass for Eval {
    fn needs(&self) -> Needs {
        Needs {
            data: DataNeed::Required,
            activation_stats: false,
            model: ModelNeed::Any,
            written_file: true,
        }
    }

    fn changes(&self) -> Changes {
        Changes::default()
    }

    fn data(&self) -> Option<&str> {
        Some(&self.data)
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data")
    }

    fn check(&self, view: &mut ModelView, ctx: &CheckContext) -> Result<()> {
        let spec = ctx.data_set(&self.data)?;
        if view.written.is_none() {
            return Err(usage(
                "eval judges the written file: put a write step before it",
            ));
        }
        let text = super::is_text(&spec.path);
        // Which gates can judge this kind of model.
        let (kind, allowed): (&str, &[&str]) = match view.family {
            Some(FamilyKind::Llama) => ("a language model", &["max_ppl_increase", "max_kld"]),
            Some(FamilyKind::Bert) => ("an encoder", &["min_cosine"]),
            None if text => ("an encoder (graph, text data)", &["min_cosine"]),
            None => ("a classifier", &["max_kld", "min_top1"]),
        };
        for (key, set) in [
            ("max_ppl_increase", self.max_ppl_increase.is_some()),
            ("max_kld", self.max_kld.is_some()),
            ("min_cosine", self.min_cosine.is_some()),
            ("min_top1", self.min_top1.is_some()),
        ] {
            if set && !allowed.contains(&key) {
                return Err(usage(format!(
                    "{key}: this gate cannot judge {kind}; its gates are {}",
                    allowed.join(", ")
                )));
            }
        }
        if self.ctx < 4 {
            return Err(usage(format!("ctx = {}: at least 4", self.ctx)));
        }
        Ok(())
    }

    fn run(&self, state: &mut State, ctx: &Context) -> Result<Outcome> {
        let candidate = state
            .written
            .clone()
            .context("eval judges the written file: put a write step before it")?;
        let data = ctx.data_set(&self.data)?;
        let reference = if self.reference == "input" {
            ctx.input.to_path_buf()
        } else {
            PathBuf::from(&self.reference)
        };
        let spec = EvalSpec {
            reference,
            candidate: Some(candidate),
            data: Some(data.path.clone()),
            llama_logits: None,
            metric: self.metrics.clone(),
            ctx: self.ctx,
            chunks: self.chunks,
            max_ppl_increase: self.max_ppl_increase,
            max_kld: self.max_kld,
            min_cosine: self.min_cosine,
            min_top1: self.min_top1,
            tokenizer: self.tokenizer.clone(),
            labels: self.labels.clone(),
            samples: data.samples,
            image: data.image.clone(),
        };
        let report = judge::run(&spec, ctx.progress)?;
        Ok(Outcome {
            lines: vec![judge::text_report(&report).trim_end().to_string()],
            summary: serde_json::to_value(&report)?,
            eval: Some(report),
            ..Default::default()
        })
    }
}
