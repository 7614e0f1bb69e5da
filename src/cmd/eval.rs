//! `edgec eval`: accuracy of one model, or of a candidate against a
//! reference, on real data, with gates for CI (exit code 3 when one fails).
//! The comparisons and gates are the library's (`edgec_pipeline::eval`).

use std::path::PathBuf;

use anyhow::Result;
use edgec_pipeline::eval::{self, parse_fraction, EvalSpec, Metric};

use super::{named, UsageError};
use crate::image_args::ImageArgs;
use crate::progress::Bars;

#[derive(clap::Args)]
pub struct Args {
    /// The model to evaluate (alone).
    pub model: Option<PathBuf>,
    /// Reference model, compared with --candidate.
    #[arg(long, requires = "candidate", conflicts_with = "model")]
    pub reference: Option<PathBuf>,
    /// Candidate model, judged against --reference.
    #[arg(long, requires = "reference")]
    pub candidate: Option<PathBuf>,
    /// Evaluation data: a text file for language models; for encoders a
    /// JSONL file of sentences ({"text": ...} or a JSON string per line) or
    /// a text file with one sentence per line.
    #[arg(long, required_unless_present = "llama_logits")]
    pub data: Option<PathBuf>,
    /// Judge MODEL against llama.cpp's own run: the logits file written by
    /// `llama-perplexity --kl-divergence-base FILE` (its tokens and context are used).
    #[arg(long, conflicts_with_all = ["reference", "candidate", "data", "ctx"])]
    pub llama_logits: Option<PathBuf>,
    /// Metrics to report: ppl, kld, top1 (language models), cosine (encoders).
    #[arg(long, value_delimiter = ',', value_parser = named::<Metric>)]
    pub metric: Vec<Metric>,
    /// Context length of each chunk (language models).
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// At most this many chunks (default: all the data holds).
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Gate: the candidate's perplexity may exceed the reference's by at
    /// most this much, relative (0.05 or 5%).
    #[arg(long, value_parser = parse_fraction)]
    pub max_ppl_increase: Option<f64>,
    /// Gate: mean KL-divergence of the candidate from the reference.
    #[arg(long)]
    pub max_kld: Option<f64>,
    /// Gate: mean cosine similarity of pooled embeddings (encoders).
    #[arg(long)]
    pub min_cosine: Option<f64>,
    /// Gate: top-1 agreement of the candidate with the reference
    /// (classifiers and language models; 0.97 or 97%).
    #[arg(long, value_parser = parse_fraction)]
    pub min_top1: Option<f64>,
    /// Print the results as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also write the gates as a JUnit XML report to this file.
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Encoders given as ONNX (which carries no tokenizer): the
    /// tokenizer.json to read the sentences with.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Classifiers: the true class of every sample (an IDX labels file, e.g.
    /// Fashion-MNIST's), for top-1 accuracy.
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// Classifiers (ONNX graphs): at most this many samples.
    #[arg(long, value_name = "N")]
    pub samples: Option<usize>,
    #[command(flatten)]
    pub image: ImageArgs,
}

/// Result of running `eval`: Ok(true) when every gate passed.
pub fn run(args: Args) -> Result<bool> {
    let (reference, candidate) = match (&args.model, &args.reference, &args.candidate) {
        (Some(m), None, None) => (m.clone(), None),
        (None, Some(r), Some(c)) => (r.clone(), Some(c.clone())),
        _ => return Err(UsageError("give a MODEL, or --reference and --candidate".into()).into()),
    };
    let spec = EvalSpec {
        reference,
        candidate,
        data: args.data.clone(),
        llama_logits: args.llama_logits.clone(),
        metric: args.metric.clone(),
        ctx: args.ctx,
        chunks: args.chunks,
        max_ppl_increase: args.max_ppl_increase,
        max_kld: args.max_kld,
        min_cosine: args.min_cosine,
        min_top1: args.min_top1,
        tokenizer: args.tokenizer.clone(),
        labels: args.labels.clone(),
        samples: args.samples,
        image: args.image.spec(),
    };
    let report = eval::run(&spec, &Bars)?;
    if let Some(junit) = &args.junit {
        edgec_formats::output::write_file_atomically(junit, |w| {
            use std::io::Write;
            w.write_all(eval::junit_xml(&report).as_bytes())
                .map_err(|e| edgec_formats::FormatError::io(junit, e))
        })?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", eval::text_report(&report));
    }
    Ok(report.passed)
}
