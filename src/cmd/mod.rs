pub mod calibrate;
pub mod convert;
pub mod embed;
pub mod eval;
pub mod inspect;
pub mod quantize;
pub mod quantize_onnx;
pub mod run;

use std::path::Path;

use anyhow::{bail, Context, Result};
use edgec_calibration::TextTokenizer;
use edgec_core::Model;
use edgec_formats::output::check_not_input;

/// A mistake in how edgec was called (exit code 2, like clap's own).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Reads any supported model, refusing an output path that is the input.
pub fn read_input(input: &Path, output: &Path) -> Result<Model> {
    check_not_input(output, &[input])?;
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            bail!(
                "{}: the output folder {} does not exist",
                output.display(),
                dir.display()
            );
        }
    }
    Ok(edgec_formats::read_model(input)?)
}

/// The model's own tokenizer, for reading text data.
pub fn tokenizer_of(model: &Model, path: &Path) -> Result<TextTokenizer> {
    let vocab = model.meta.vocab.as_ref().with_context(|| {
        format!(
            "{}: the model has no tokenizer to read the data with",
            path.display()
        )
    })?;
    TextTokenizer::from_vocab(vocab).with_context(|| format!("{}: tokenizer", path.display()))
}
