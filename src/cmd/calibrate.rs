//! `edgec calibrate MODEL --data FILE --out imatrix.gguf`: the input
//! statistics of every linear layer, as an importance matrix llama-quantize
//! reads too.

use std::path::PathBuf;

use anyhow::Result;
use edgec_formats::output::check_not_input;

use edgec_pipeline::calib;

use crate::progress::Bars;

#[derive(clap::Args)]
pub struct Args {
    /// The model: a Hugging Face folder, a .safetensors file or a .gguf file.
    pub model: PathBuf,
    /// Calibration text, tokenized with the model's tokenizer.
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// Output: GGUF imatrix (llama-imatrix's format), or legacy with a .dat extension.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Calibration sequences, spread evenly over the text.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub samples: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 512, value_name = "L")]
    pub len: usize,
}

pub fn run(args: Args) -> Result<()> {
    check_not_input(&args.out, &[&args.model, &args.data])?;
    let model = edgec_formats::read_model(&args.model)?;
    let seqs = calib::sequences(&model, &args.data, args.samples, args.len)?;
    let stats = calib::statistics(&model, &seqs, vec![], &Bars)?;
    let dataset = args.data.file_name().map_or_else(
        || args.data.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let imatrix = calib::importance_matrix(&model, &stats, &dataset, seqs.len(), args.len)?;
    imatrix.write(&args.out)?;
    let tokens: usize = seqs.iter().map(Vec::len).sum();
    println!(
        "wrote {} ({} entries, {} sequences x {} tokens = {tokens} tokens)",
        args.out.display(),
        imatrix.entries.len(),
        seqs.len(),
        args.len
    );
    Ok(())
}
