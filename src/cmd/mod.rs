pub mod convert;
pub mod embed;
pub mod eval;
pub mod inspect;
pub mod quantize;

use std::path::Path;

use anyhow::{bail, Result};
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
