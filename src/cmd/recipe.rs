//! `edgec recipe run|check|passes`: recipes (TOML) that chain passes from
//! reading to the accuracy gate.

use std::path::PathBuf;

use anyhow::Result;
use edgec_pipeline::recipe::Recipe;
use edgec_pipeline::registry::PASSES;
use edgec_pipeline::run::{self as runner, RunOptions};

use crate::progress::Bars;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand)]
pub enum Action {
    /// Run a recipe: every step in order; the report goes to the work
    /// folder (and [report] json/html). Exit 3 when an eval gate fails.
    Run {
        recipe: PathBuf,
        /// Skip the steps a previous run of this recipe finished (the work
        /// folder caches them); the output is the same bytes.
        #[arg(long)]
        resume: bool,
        /// Also write the report here (JSON, or HTML for .html).
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
    },
    /// Validate every step before any work, and print the plan with an
    /// estimate of peak memory. Exit 2 naming the step and key on an error.
    Check { recipe: PathBuf },
    /// List the passes a step can name.
    Passes,
}

/// Ok(true) when every gate passed.
pub fn run(args: Args) -> Result<bool> {
    match args.action {
        Action::Passes => {
            for p in PASSES {
                println!("{:<16} {}", p.name, p.summary);
            }
            Ok(true)
        }
        Action::Check { recipe: path } => {
            let recipe = Recipe::read(&path)?;
            let checked = edgec_pipeline::check::check(&recipe)?;
            print!("{}", checked.describe(&recipe));
            println!("{}: ok", path.display());
            Ok(true)
        }
        Action::Run {
            recipe: path,
            resume,
            report,
        } => {
            let recipe = Recipe::read(&path)?;
            let work = recipe
                .report
                .work
                .clone()
                .unwrap_or_else(|| path.with_extension("work"));
            let opts = RunOptions {
                label: path.display().to_string(),
                work: Some(work.clone()),
                resume,
                hash_inputs: true,
            };
            let result = runner::run(&recipe, &opts, &Bars, &mut |lines| {
                for l in lines {
                    println!("{l}");
                }
            })?;
            let r = &result.report;
            let json = recipe
                .report
                .json
                .clone()
                .unwrap_or_else(|| work.join("report.json"));
            super::write_report(r, &json)?;
            for extra in [recipe.report.html.as_ref(), report.as_ref()]
                .into_iter()
                .flatten()
            {
                super::write_report(r, extra)?;
            }
            let cached = r.steps.iter().filter(|s| s.cached).count();
            println!(
                "{}: {} steps ({} from the work folder's cache), report {}{}",
                path.display(),
                r.steps.len(),
                cached,
                json.display(),
                if r.passed { "" } else { "; a gate failed" }
            );
            Ok(r.passed)
        }
    }
}
