//! The runner: reads the input, runs the checked steps in order, caches
//! finished write and eval steps in the work folder (for `--resume`), and
//! keeps the run report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::check::{self, Checked};
use crate::passes::{Context, Outcome, State};
use crate::progress::Progress;
use crate::recipe::Recipe;
use crate::report::{EvalRecord, FileRecord, GateRecord, RunReport, StepRecord, TensorRecord};

pub struct RunOptions {
    /// How the report names the recipe (its path, or the command).
    pub label: String,
    /// Where finished steps are cached (none: no cache).
    pub work: Option<PathBuf>,
    /// Skip steps whose results the work folder holds.
    pub resume: bool,
    /// Hash the input and data files for the report.
    pub hash_inputs: bool,
}

/// What a run produced.
pub struct RunResult {
    pub report: RunReport,
    /// Each step's lines for people, in order.
    pub lines: Vec<Vec<String>>,
}

/// A cached step's result, as stored in the work folder.
#[derive(Serialize, Deserialize)]
struct Cached {
    lines: Vec<String>,
    summary: serde_json::Value,
    tensors: Vec<TensorRecord>,
    eval: Option<EvalRecord>,
    /// The written path (write steps): the cache holds a copy as `output`.
    written: Option<PathBuf>,
}

/// Checks and runs `recipe`; `on_step` sees each step's lines as it ends.
pub fn run(
    recipe: &Recipe,
    opts: &RunOptions,
    progress: &dyn Progress,
    on_step: &mut dyn FnMut(&[String]),
) -> Result<RunResult> {
    let checked = check::check(recipe)?;
    run_checked(recipe, checked, opts, progress, on_step)
}

pub fn run_checked(
    recipe: &Recipe,
    checked: Checked,
    opts: &RunOptions,
    progress: &dyn Progress,
    on_step: &mut dyn FnMut(&[String]),
) -> Result<RunResult> {
    let input = recipe.input.model.as_path();
    let mut report = RunReport {
        edgec_version: env!("CARGO_PKG_VERSION").to_string(),
        recipe: opts.label.clone(),
        passed: true,
        ..Default::default()
    };
    let need_hashes = opts.hash_inputs || opts.work.is_some();
    report
        .inputs
        .push(file_record("input", input, need_hashes)?);
    for (name, d) in &recipe.data {
        report.inputs.push(file_record(name, &d.path, need_hashes)?);
    }
    // Each step's cache key: the input, the data, edgec's version and
    // every step so far with its parameters.
    let mut keys = Vec::new();
    let mut h = Sha256::new();
    h.update(env!("CARGO_PKG_VERSION"));
    for r in &report.inputs {
        h.update(format!("{}\0{}\0{}\0", r.name, r.path, r.sha256));
    }
    h.update(serde_json::to_string(&recipe.data)?);
    for p in &checked.plan {
        h.update(format!("\0{}\0{}", p.pass, p.params));
        keys.push(hex(&h.clone().finalize()));
    }
    let steps_dir = opts.work.as_ref().map(|w| w.join("steps"));
    if let Some(dir) = &steps_dir {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    let cached: Vec<Option<Cached>> = keys
        .iter()
        .map(|k| {
            let dir = steps_dir.as_ref()?.join(k);
            let text = std::fs::read_to_string(dir.join("outcome.json")).ok()?;
            serde_json::from_str(&text).ok()
        })
        .collect();
    // With --resume: the steps up to the last one whose result is cached
    // are skipped when nothing after them needs the model in memory (only
    // eval steps follow); otherwise passes run again and cached evals are reused.
    let skip_through = if opts.resume {
        let n = checked.passes.len();
        let last_cached = (0..n).rev().find(|&i| {
            cached[i].is_some()
                && (0..=i).all(|j| !produces_result(&checked, j) || cached[j].is_some())
        });
        last_cached.filter(|&l| (l + 1..n).all(|j| checked.plan[j].pass == "eval"))
    } else {
        None
    };

    let mut state: Option<State> = None;
    let ctx = Context {
        input,
        data: &recipe.data,
        progress,
    };
    let mut lines = Vec::new();
    for (i, pass) in checked.passes.iter().enumerate() {
        let start = Instant::now();
        reset_peak_rss();
        let reuse = match (&cached[i], skip_through) {
            (Some(c), Some(l)) if i <= l => Some(c),
            (Some(c), _) if opts.resume && checked.plan[i].pass == "eval" => Some(c),
            _ => None,
        };
        let (outcome_lines, summary, tensors, eval, written, was_cached) = match reuse {
            Some(c) => {
                if let (Some(path), Some(dir)) = (&c.written, &steps_dir) {
                    restore(&dir.join(&keys[i]).join("output"), path)?;
                }
                if let (Some(s), Some(path)) = (state.as_mut(), &c.written) {
                    s.written = Some(path.clone());
                }
                (
                    c.lines.clone(),
                    c.summary.clone(),
                    c.tensors.clone(),
                    c.eval.clone(),
                    c.written.clone(),
                    true,
                )
            }
            None => {
                if state.is_none() {
                    let mut s = State::new(edgec_formats::read_model(input)?);
                    // steps skipped before this one leave their written file behind
                    s.written = (0..i)
                        .filter_map(|j| cached[j].as_ref().and_then(|c| c.written.clone()))
                        .next_back();
                    state = Some(s);
                }
                let s = state.as_mut().expect("just set");
                let out: Outcome = pass.run(s, &ctx)?;
                let eval = out.eval.as_ref().map(|r| EvalRecord {
                    step: i,
                    metrics: crate::eval::metrics(r),
                    gates: r
                        .gates
                        .iter()
                        .map(|g| GateRecord {
                            name: g.name.clone(),
                            threshold: g.threshold,
                            value: g.value,
                            passed: g.passed,
                        })
                        .collect(),
                    passed: r.passed,
                });
                let c = Cached {
                    lines: out.lines,
                    summary: out.summary,
                    tensors: out.tensors,
                    eval,
                    written: out.written,
                };
                if let Some(dir) = &steps_dir {
                    store(&dir.join(&keys[i]), &c)?;
                }
                (c.lines, c.summary, c.tensors, c.eval, c.written, false)
            }
        };
        on_step(&outcome_lines);
        lines.push(outcome_lines);
        if !tensors.is_empty() {
            report.tensors = tensors;
        }
        if let Some(e) = eval {
            report.passed &= e.passed;
            report.evals.push(EvalRecord { step: i, ..e });
        }
        if let Some(w) = &written {
            report
                .outputs
                .push(file_record(&format!("step {}", i + 1), w, true)?);
        }
        report.steps.push(StepRecord {
            index: i,
            pass: checked.plan[i].pass.clone(),
            params: checked.plan[i].params.clone(),
            seconds: start.elapsed().as_secs_f64(),
            peak_rss_bytes: peak_rss(),
            cached: was_cached,
            summary,
        });
    }
    Ok(RunResult { report, lines })
}

/// Whether step `j` leaves a result in the cache (writes and evals do).
fn produces_result(checked: &Checked, j: usize) -> bool {
    matches!(checked.plan[j].pass.as_str(), "write" | "eval")
}

/// Stores a finished step: its outcome, and a copy of what it wrote
/// (hard links where the file system allows; writers replace files by
/// renaming, so a link never sees a later change). Built in a temporary
/// folder renamed at the end, so a killed run leaves no half entry.
fn store(dir: &Path, c: &Cached) -> Result<()> {
    let parent = dir.parent().expect("steps folder");
    let tmp = tempfile::Builder::new()
        .prefix(".edgec-step-")
        .tempdir_in(parent)
        .with_context(|| parent.display().to_string())?;
    if let Some(w) = &c.written {
        copy_tree(w, &tmp.path().join("output"))?;
    }
    std::fs::write(tmp.path().join("outcome.json"), serde_json::to_vec(c)?)?;
    let _ = std::fs::remove_dir_all(dir);
    let kept = tmp.keep();
    std::fs::rename(&kept, dir).with_context(|| dir.display().to_string())?;
    Ok(())
}

/// Puts a cached output back at `target` (atomically, like the writers).
fn restore(cached: &Path, target: &Path) -> Result<()> {
    let parent = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = parent.join(format!(
        ".edgec-restore-{}",
        target
            .file_name()
            .map_or("out".into(), |n| n.to_string_lossy())
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_file(&tmp);
    copy_tree(cached, &tmp)?;
    if target.is_dir() {
        std::fs::remove_dir_all(target)?;
    }
    std::fs::rename(&tmp, target).with_context(|| target.display().to_string())?;
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    if from.is_dir() {
        std::fs::create_dir_all(to)?;
        for e in std::fs::read_dir(from)? {
            let e = e?;
            copy_tree(&e.path(), &to.join(e.file_name()))?;
        }
        Ok(())
    } else {
        if std::fs::hard_link(from, to).is_err() {
            std::fs::copy(from, to)
                .with_context(|| format!("{} -> {}", from.display(), to.display()))?;
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The size of a file, or of a folder's files.
pub fn path_bytes(p: &Path) -> u64 {
    if p.is_dir() {
        std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| path_bytes(&e.path())).sum())
            .unwrap_or(0)
    } else {
        std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
    }
}

/// SHA-256 of a file, or of a folder's files (names and contents, in name order).
pub fn sha256_path(p: &Path) -> Result<String> {
    let mut h = Sha256::new();
    hash_into(&mut h, p, Path::new(""))?;
    Ok(hex(&h.finalize()))
}

fn hash_into(h: &mut Sha256, p: &Path, rel: &Path) -> Result<()> {
    if p.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(p)
            .with_context(|| p.display().to_string())?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        entries.sort();
        for name in entries {
            hash_into(h, &p.join(&name), &rel.join(&name))?;
        }
    } else {
        h.update(rel.to_string_lossy().as_bytes());
        h.update([0]);
        let mut f = std::fs::File::open(p).with_context(|| p.display().to_string())?;
        std::io::copy(&mut f, h).with_context(|| p.display().to_string())?;
    }
    Ok(())
}

fn file_record(name: &str, p: &Path, hash: bool) -> Result<FileRecord> {
    Ok(FileRecord {
        name: name.to_string(),
        path: p.display().to_string(),
        bytes: path_bytes(p),
        sha256: if hash { sha256_path(p)? } else { String::new() },
    })
}

/// Starts a new peak of resident memory (Linux: clear_refs 5 resets VmHWM).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident memory since the last reset (bytes; 0 where unknown).
pub fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Writes the report as JSON at `path` (atomically).
pub fn write_report_json(report: &RunReport, path: &Path) -> Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    edgec_formats::output::write_file_atomically(path, |w| {
        use std::io::Write;
        w.write_all(text.as_bytes())
            .map_err(|e| edgec_formats::FormatError::io(path, e))
    })?;
    Ok(())
}
