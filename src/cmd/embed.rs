//! `edgec embed MODEL (--text S ... | --data FILE)`: mean-pooled sentence
//! embeddings from an encoder, in the reference runtime, as JSON.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use edgec_calibration::TextTokenizer;
use edgec_core::runtime::{Runtime, RuntimeOptions};
use edgec_core::Family;

use super::UsageError;
use edgec_pipeline::eval::read_sentences;

#[derive(clap::Args)]
pub struct Args {
    /// An encoder model (BERT family): HF folder, .safetensors or .gguf.
    pub model: PathBuf,
    /// A sentence to embed (repeatable).
    #[arg(long)]
    pub text: Vec<String>,
    /// Sentences to embed: JSONL ({"text": ...} or a JSON string per line) or one per line.
    #[arg(long, conflicts_with = "text")]
    pub data: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let sentences = match (&args.data, args.text.is_empty()) {
        (Some(path), _) => read_sentences(path)?,
        (None, false) => args.text.clone(),
        (None, true) => return Err(UsageError("give --text or --data".into()).into()),
    };
    let model = edgec_formats::read_model(&args.model)?;
    if !matches!(model.meta.family, Some(Family::Bert(_))) {
        bail!(
            "{}: embed needs an encoder (BERT family) model",
            args.model.display()
        );
    }
    let vocab = model
        .meta
        .vocab
        .as_ref()
        .with_context(|| format!("{}: the model has no tokenizer", args.model.display()))?;
    let tok = TextTokenizer::from_vocab(vocab)?;
    let rt = Runtime::new(&model, &RuntimeOptions::default())?;
    let mut out = Vec::with_capacity(sentences.len());
    for s in &sentences {
        let ids = tok.encode(s, true)?;
        out.push(serde_json::json!({"text": s, "tokens": ids.len(), "embedding": rt.embed(&ids)?}));
    }
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
