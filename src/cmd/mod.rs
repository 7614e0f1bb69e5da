//! One module per command. Each parses its flags into a recipe (or a call
//! of the library) and prints what came back.

pub mod calibrate;
pub mod convert;
pub mod embed;
pub mod eval;
pub mod inspect;
pub mod prune;
pub mod quantize;
pub mod recipe;
pub mod run;

use std::path::Path;

use anyhow::Result;
use edgec_pipeline::names::parse_name;
use edgec_pipeline::recipe::Recipe;
use edgec_pipeline::report::RunReport;
use edgec_pipeline::run::{self as runner, RunOptions};

pub use edgec_pipeline::{read_input, UsageError};

use crate::progress::Bars;

/// clap's parser for the library's named enums (recipes spell them the same).
pub fn named<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    parse_name(s)
}

/// Flags every one-step-recipe command shares.
#[derive(clap::Args, Clone, Debug)]
pub struct RecipeFlags {
    /// Print the equivalent recipe (TOML) on stdout and exit without running it.
    #[arg(long)]
    pub print_recipe: bool,
    /// Write the run report: JSON, or a self-contained HTML page (.html).
    #[arg(long, value_name = "FILE")]
    pub report: Option<std::path::PathBuf>,
}

/// Runs a command's recipe (or prints it); prints each step's lines unless
/// `quiet`. Returns the report.
pub fn run_recipe(
    recipe: &Recipe,
    flags: &RecipeFlags,
    label: &str,
    quiet: bool,
) -> Result<Option<RunReport>> {
    if flags.print_recipe {
        print!("{}", recipe.to_toml());
        return Ok(None);
    }
    let opts = RunOptions {
        label: label.to_string(),
        work: None,
        resume: false,
        hash_inputs: flags.report.is_some(),
    };
    let result = runner::run(recipe, &opts, &Bars, &mut |lines| {
        if !quiet {
            for l in lines {
                println!("{l}");
            }
        }
    })?;
    if let Some(path) = &flags.report {
        write_report(&result.report, path)?;
    }
    Ok(Some(result.report))
}

/// The report as JSON, or as a self-contained HTML page when the path ends in .html.
pub fn write_report(report: &RunReport, path: &Path) -> Result<()> {
    let html = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("html") || e.eq_ignore_ascii_case("htm"));
    if !html {
        return runner::write_report_json(report, path);
    }
    let page = edgec_pipeline::report::render_html(report);
    edgec_formats::output::write_file_atomically(path, |w| {
        use std::io::Write;
        w.write_all(page.as_bytes())
            .map_err(|e| edgec_formats::FormatError::io(path, e))
    })?;
    Ok(())
}
