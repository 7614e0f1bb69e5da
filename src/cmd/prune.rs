//! `edgec prune IN OUT --method magnitude|wanda|sparsegpt (--sparsity F
//! [--owl] | --pattern N:M) [--calib TEXT]`: a one-step recipe, `prune` then
//! `write` (by the output's extension, as `convert` writes).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use edgec_pipeline::graph_data::ImageSpec;
use edgec_pipeline::passes::prune::{OwlParams, PruneMethod};
use edgec_pipeline::passes::FloatType;
use edgec_pipeline::recipe::{absolute, DataSpec, Input, Recipe};

use super::quantize::step;
use super::{named, RecipeFlags};

#[derive(clap::Args)]
pub struct Args {
    /// Input model: a Hugging Face folder, a .safetensors or .gguf file (llama family or BERT).
    pub input: PathBuf,
    /// Output: a .gguf file or a folder for a Hugging Face model (weights stay dense).
    pub output: PathBuf,
    /// magnitude (no data), wanda or sparsegpt (both need --calib).
    #[arg(long, value_parser = named::<PruneMethod>, required_unless_present = "ffn", conflicts_with = "ffn")]
    pub method: Option<PruneMethod>,
    /// Fraction of each linear weight to drop, between 0 and 1.
    #[arg(
        long,
        value_name = "F",
        conflicts_with = "pattern",
        required_unless_present_any = ["pattern", "ffn"]
    )]
    pub sparsity: Option<f64>,
    /// Structured: remove this fraction of every block's FFN neurons (the
    /// model shrinks; ranked by activation with --calib, else by weight norms).
    #[arg(long, value_name = "F", conflicts_with_all = ["sparsity", "pattern", "global", "ignore", "owl"])]
    pub ffn: Option<f64>,
    /// N of every M consecutive inputs dropped (2:4, 4:8).
    #[arg(long, value_name = "N:M")]
    pub pattern: Option<String>,
    /// Calibration text for wanda and sparsegpt.
    #[arg(long, value_name = "FILE")]
    pub calib: Option<PathBuf>,
    /// Calibration sequences spread evenly over the text.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub calib_samples: usize,
    /// Tokens per calibration sequence.
    #[arg(long, default_value_t = 512, value_name = "L")]
    pub calib_len: usize,
    /// Magnitude: one threshold over all the weights instead of one per weight.
    #[arg(long)]
    pub global: bool,
    /// OWL: each block's sparsity from its share of outlier activations
    /// (Wanda scores above M times the block's mean, on the dense model),
    /// within --sparsity ± lambda and --sparsity on average; needs --calib.
    #[arg(long)]
    pub owl: bool,
    /// OWL's outlier threshold M.
    #[arg(long, value_name = "M", requires = "owl")]
    pub owl_m: Option<f64>,
    /// OWL's lambda: how far a block's sparsity may move from --sparsity.
    #[arg(long, value_name = "LAMBDA", requires = "owl")]
    pub owl_lambda: Option<f64>,
    /// Leave weights dense whose names (as in the HF model) match this
    /// regular expression, e.g. `--ignore '.*down_proj.*'` (repeatable).
    #[arg(long, value_name = "REGEX")]
    pub ignore: Vec<String>,
    /// Float type of the weights written: f32, f16, bf16.
    #[arg(long, default_value = "f32", value_parser = named::<FloatType>)]
    pub dtype: FloatType,
    #[command(flatten)]
    pub recipe: RecipeFlags,
}

/// The recipe `edgec prune` stands for.
pub fn recipe(args: &Args) -> Recipe {
    let mut data = BTreeMap::new();
    if let Some(c) = &args.calib {
        data.insert(
            "calib".to_string(),
            DataSpec {
                path: absolute(c),
                samples: Some(args.calib_samples),
                len: Some(args.calib_len),
                image: ImageSpec::new(),
            },
        );
    }
    let data_name = args.calib.as_ref().map(|_| "calib");
    let owl = args.owl.then(|| {
        let d = OwlParams::default();
        OwlParams {
            m: args.owl_m.unwrap_or(d.m),
            lambda: args.owl_lambda.unwrap_or(d.lambda),
        }
    });
    let mut steps = vec![match args.ffn {
        Some(ffn) => step(
            "prune.structured",
            serde_json::json!({ "ffn": ffn, "data": data_name }),
        ),
        None => step(
            "prune",
            serde_json::json!({
                "method": args.method,
                "sparsity": args.sparsity,
                "pattern": args.pattern,
                "data": data_name,
                "scope": args.global.then_some("global"),
                "ignore": if args.ignore.is_empty() { None } else { Some(&args.ignore) },
                "owl": owl,
            }),
        ),
    }];
    if args.dtype != FloatType::F32 {
        steps.push(step("cast", serde_json::json!({ "dtype": args.dtype })));
    }
    steps.push(step(
        "write",
        serde_json::json!({ "path": absolute(&args.output) }),
    ));
    Recipe {
        input: Input {
            model: absolute(&args.input),
        },
        data,
        steps,
        report: Default::default(),
    }
}

pub fn run(args: Args) -> Result<()> {
    if args.owl && args.calib.is_none() {
        return Err(super::UsageError(
            "--owl counts outlier activations: give --calib TEXT".into(),
        )
        .into());
    }
    if let Some(method) = args.method.filter(|m| *m != PruneMethod::Magnitude) {
        if args.calib.is_none() {
            return Err(super::UsageError(format!(
                "--method {} scores weights by their inputs: give --calib TEXT (or use --method magnitude)",
                edgec_pipeline::names::name_of(&method)
            ))
            .into());
        }
    }
    super::run_recipe(&recipe(&args), &args.recipe, "edgec prune", false)?;
    Ok(())
}
