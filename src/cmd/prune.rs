//! `edgec prune IN OUT --method magnitude|wanda|sparsegpt (--sparsity F
//! [--owl] | --pattern N:M) [--calib TEXT]`: a one-step recipe, `prune` then
//! `write` (by the output's extension, as `convert` writes).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use edgec_pipeline::graph_data::ImageSpec;
use edgec_pipeline::passes::prune::{OwlParams, PruneMethod};
use edgec_pipeline::passes::prune_graph::GraphOp;
use edgec_pipeline::passes::write::TfliteSparse;
use edgec_pipeline::passes::FloatType;
use edgec_pipeline::recipe::{absolute, DataSpec, Input, Recipe};

use super::quantize::step;
use super::{named, RecipeFlags};
use crate::image_args::ImageArgs;

#[derive(clap::Args)]
pub struct Args {
    /// Input model: a Hugging Face folder, a .safetensors or .gguf file (llama family or BERT),
    /// or a graph model (.onnx, .tflite).
    pub input: PathBuf,
    /// Output: a .gguf file or a folder for a Hugging Face model; .onnx or .tflite for graphs.
    pub output: PathBuf,
    /// magnitude (no data), wanda or sparsegpt (both need --calib).
    #[arg(
        long,
        value_parser = named::<PruneMethod>,
        required_unless_present_any = ["ffn", "heads", "layers", "channels", "macs"],
        conflicts_with_all = ["ffn", "heads", "layers", "channels", "macs"]
    )]
    pub method: Option<PruneMethod>,
    /// Fraction of each linear weight to drop, between 0 and 1.
    #[arg(
        long,
        value_name = "F",
        conflicts_with = "pattern",
        required_unless_present_any = ["pattern", "ffn", "heads", "layers", "channels", "macs"]
    )]
    pub sparsity: Option<f64>,
    /// Structured: remove this fraction of the FFN neurons (the model
    /// shrinks; ranked by activation with --calib, else by weight norms).
    #[arg(long, value_name = "F", conflicts_with_all = ["sparsity", "pattern", "global", "ignore", "ops", "owl"])]
    pub ffn: Option<f64>,
    /// Structured: remove this fraction of the attention heads (whole GQA
    /// groups, or the same number from each group).
    #[arg(long, value_name = "F", conflicts_with_all = ["sparsity", "pattern", "global", "ignore", "ops"])]
    pub heads: Option<f64>,
    /// Structured: remove this many whole layers, those that change their
    /// input least on the --calib text.
    #[arg(long, value_name = "N", conflicts_with_all = ["sparsity", "pattern", "global", "ignore", "ops"])]
    pub layers: Option<usize>,
    /// Graph models (CNNs): remove this fraction of the output channels of
    /// every prunable channel group (convs, with their depthwise convs,
    /// BatchNorms, residual adds and consumers), ranked by filter norms.
    #[arg(long, value_name = "F", conflicts_with_all = ["sparsity", "pattern", "global", "ignore", "ops", "owl", "ffn", "heads", "layers", "macs", "calib"])]
    pub channels: Option<f64>,
    /// Graph models (CNNs): remove channels until this fraction of the
    /// multiply-adds is gone (one fraction for every group, searched).
    #[arg(long, value_name = "F", conflicts_with_all = ["sparsity", "pattern", "global", "ignore", "ops", "owl", "ffn", "heads", "layers", "calib"])]
    pub macs: Option<f64>,
    /// Structured: the same widths in every layer (llama.cpp's `llama`,
    /// standard HF configs) instead of per-layer widths from a global
    /// ranking (llama.cpp's `deci`, DeciLM configs).
    #[arg(long)]
    pub uniform: bool,
    /// N of every M consecutive inputs dropped (2:4, 4:8).
    #[arg(long, value_name = "N:M")]
    pub pattern: Option<String>,
    /// Calibration data for wanda and sparsegpt: text, or for graph models
    /// photos (a folder), IDX or .safetensors of the graph's inputs.
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
    /// Graph models: the weights pruned, comma-separated: conv (every non-depthwise
    /// Conv), pointwise (1x1 Convs only), depthwise, gemm, matmul [default: conv,gemm,matmul].
    #[arg(long, value_name = "OPS", value_delimiter = ',', value_parser = named::<GraphOp>)]
    pub ops: Vec<GraphOp>,
    /// TFLite output: store float conv weights that are at least 2/3 zeros sparse,
    /// read through DENSIFY (XNNPACK's sparse path), or keep them dense (off).
    #[arg(long, value_name = "MODE", value_parser = named::<TfliteSparse>)]
    pub tflite_sparse: Option<TfliteSparse>,
    /// Float type of the weights written: f32, f16, bf16.
    #[arg(long, default_value = "f32", value_parser = named::<FloatType>)]
    pub dtype: FloatType,
    /// Graph models calibrated on photos: how photos become the input.
    #[command(flatten)]
    pub image: ImageArgs,
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
                image: if edgec_pipeline::passes::is_text(c) {
                    ImageSpec::new()
                } else {
                    args.image.spec()
                },
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
    let structured = args.ffn.is_some() || args.heads.is_some() || args.layers.is_some();
    let channels = args.channels.is_some() || args.macs.is_some();
    let mut steps = vec![match structured {
        _ if channels => step(
            "prune.channels",
            serde_json::json!({ "channels": args.channels, "macs": args.macs }),
        ),
        true => step(
            "prune.structured",
            serde_json::json!({
                "ffn": args.ffn,
                "heads": args.heads,
                "layers": args.layers,
                "uniform": args.uniform,
                "data": data_name,
            }),
        ),
        false => step(
            "prune",
            serde_json::json!({
                "method": args.method,
                "sparsity": args.sparsity,
                "pattern": args.pattern,
                "data": data_name,
                "scope": args.global.then_some("global"),
                "ignore": if args.ignore.is_empty() { None } else { Some(&args.ignore) },
                "ops": if args.ops.is_empty() { None } else { Some(&args.ops) },
                "owl": owl,
            }),
        ),
    }];
    if args.dtype != FloatType::F32 {
        steps.push(step("cast", serde_json::json!({ "dtype": args.dtype })));
    }
    steps.push(step(
        "write",
        serde_json::json!({
            "path": absolute(&args.output),
            "tflite_sparse": args.tflite_sparse,
        }),
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
    if args.layers.is_some() && args.calib.is_none() {
        return Err(super::UsageError(
            "--layers ranks layers by what they do to text: give --calib TEXT".into(),
        )
        .into());
    }
    super::run_recipe(&recipe(&args), &args.recipe, "edgec prune", false)?;
    Ok(())
}
