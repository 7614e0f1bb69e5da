//! Renders a run report's JSON as the HTML page (until the CLI has a
//! `report` command): `cargo run -p edgec-pipeline --example render_report -- report.json out.html`.

use anyhow::{bail, Context, Result};
use edgec_pipeline::report::{render_html, RunReport};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        bail!("usage: render_report REPORT.json OUT.html");
    };
    let json = std::fs::read_to_string(input).with_context(|| format!("reading {input}"))?;
    let report: RunReport =
        serde_json::from_str(&json).with_context(|| format!("{input} is not a run report"))?;
    std::fs::write(output, render_html(&report)).with_context(|| format!("writing {output}"))?;
    Ok(())
}
