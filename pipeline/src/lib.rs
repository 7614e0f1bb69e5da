//! The pass pipeline: read → passes → write → read back → judge.
//!
//! - [`recipe`]: the TOML recipe (`[input]`, `[data.NAME]`, `[[step]]`,
//!   `[report]`) and its printing;
//! - [`registry`]: the named passes, their typed parameters and what each
//!   needs and changes; [`check`] validates a recipe before any work;
//! - [`passes`]: one module per pass; [`writers`]: one module per output format;
//! - [`run`]: the runner (state, step cache and resume, the run report);
//! - [`calib`], [`graph_data`], [`graph_quant`]: calibration on text and on
//!   graph inputs; [`eval`]: comparisons and gates; [`report`]: the report.
//!
//! Libraries never print: progress goes to a [`progress::Progress`] sink.

pub mod calib;
pub mod check;
pub mod encoded;
pub mod error;
pub mod eval;
pub mod graph_data;
pub mod graph_quant;
pub mod mixed;
pub mod names;
pub mod passes;
pub mod progress;
pub mod recipe;
pub mod registry;
pub mod report;
pub mod run;
pub mod writers;

use std::path::Path;

use anyhow::{bail, Context, Result};
use edgec_calibration::TextTokenizer;
use edgec_core::Model;
use edgec_formats::output::check_not_input;

pub use error::{usage, UsageError};

/// Reads any supported model, refusing an output path that is the input.
pub fn read_input(input: &Path, output: &Path) -> Result<Model> {
    check_output_path(input, output)?;
    Ok(edgec_formats::read_model(input)?)
}

/// Refuses an output that is the input or lies in a folder that does not exist.
pub fn check_output_path(input: &Path, output: &Path) -> Result<()> {
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
    Ok(())
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
