//! Recipes end to end: commands and the recipes they print give the same
//! bytes; `recipe check` names the step and key of every mistake (exit 2);
//! `recipe run --resume` after a SIGKILL finishes with the same bytes; the
//! run report says what happened to every tensor.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

const TEXT: &str = "/usr/share/common-licenses/GPL-3";

/// Runs a command, then the recipe it prints (`--print-recipe`) with the
/// output path swapped, and asserts that both wrote the same bytes.
fn same_bytes_as_printed_recipe(dir: &Path, tag: &str, args: &[&str], out_name: &str) {
    let direct = dir.join(format!("direct-{out_name}"));
    let via = dir.join(format!("recipe-{out_name}"));
    let with_out = |out: &Path| -> Vec<String> {
        args.iter()
            .map(|a| {
                if *a == "OUT" {
                    s(out).to_string()
                } else {
                    a.to_string()
                }
            })
            .collect()
    };
    let direct_args = with_out(&direct);
    let direct_args: Vec<&str> = direct_args.iter().map(String::as_str).collect();
    ok(&direct_args);
    let mut print_args = with_out(&via);
    print_args.push("--print-recipe".into());
    let print_args: Vec<&str> = print_args.iter().map(String::as_str).collect();
    let printed = ok(&print_args);
    assert!(
        !via.exists(),
        "{tag}: --print-recipe must not run the recipe"
    );
    let recipe = dir.join(format!("{tag}.toml"));
    std::fs::write(&recipe, &printed.stdout).unwrap();
    let checked = ok(&["recipe", "check", s(&recipe)]);
    assert!(
        String::from_utf8_lossy(&checked.stdout).contains("estimated peak memory"),
        "{tag}: check prints the plan"
    );
    ok(&["recipe", "run", s(&recipe)]);
    assert_eq!(
        read_tree(&direct),
        read_tree(&via),
        "{tag}: the command and its printed recipe wrote different bytes"
    );
}

/// A file's bytes, or a folder's files (name, bytes) in name order.
fn read_tree(p: &Path) -> Vec<(String, Vec<u8>)> {
    if p.is_dir() {
        let mut names: Vec<PathBuf> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        names
            .iter()
            .map(|f| {
                (
                    f.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(f).unwrap(),
                )
            })
            .collect()
    } else {
        vec![(String::new(), std::fs::read(p).unwrap())]
    }
}

#[test]
fn commands_and_their_printed_recipes_write_the_same_bytes() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let llama = fixture("tiny-llama");
    let bert = fixture("tiny-bert");
    let (llama, bert) = (s(&llama), s(&bert));
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "q4km",
            vec!["quantize", "--bits", "4", llama, "OUT"],
            "a.gguf",
        ),
        (
            "q8pure",
            vec!["quantize", "--type", "Q8_0", "--pure", bert, "OUT"],
            "b.gguf",
        ),
        (
            "awqgptq",
            vec![
                "quantize",
                "--type",
                "Q4_K_M",
                "--calib",
                TEXT,
                "--calib-samples",
                "4",
                "--calib-len",
                "64",
                llama,
                "OUT",
            ],
            "c.gguf",
        ),
        (
            "imatrix",
            vec![
                "quantize",
                "--type",
                "IQ4_NL",
                "--calib",
                TEXT,
                "--calib-samples",
                "4",
                "--calib-len",
                "64",
                "--method",
                "imatrix",
                llama,
                "OUT",
            ],
            "d.gguf",
        ),
        (
            "f16gguf",
            vec!["convert", "--dtype", "f16", llama, "OUT"],
            "e.gguf",
        ),
        (
            "hfbf16",
            vec!["convert", "--dtype", "bf16", llama, "OUT"],
            "hf",
        ),
        (
            "onnxf16",
            vec!["convert", "--dtype", "f16", bert, "OUT"],
            "f.onnx",
        ),
        (
            "onnx8",
            vec!["quantize", "--bits", "8", llama, "OUT"],
            "g.onnx",
        ),
        (
            "onnx4qdq",
            vec![
                "quantize",
                "--bits",
                "4",
                "--int4-format",
                "qdq",
                llama,
                "OUT",
            ],
            "h.onnx",
        ),
        (
            "onnxdyn",
            vec!["quantize", "--bits", "8", "--dynamic", llama, "OUT"],
            "i.onnx",
        ),
    ];
    for (tag, args, out) in cases {
        same_bytes_as_printed_recipe(dir, tag, &args, out);
    }
}

/// Writes a recipe with `steps` (TOML) for the tiny llama and returns its path.
fn recipe_file(dir: &Path, name: &str, body: &str) -> PathBuf {
    let text = format!(
        "[input]\nmodel = \"{}\"\n\n[data.calib]\npath = \"{TEXT}\"\nsamples = 4\nlen = 64\n\n{body}",
        s(&fixture("tiny-llama"))
    );
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `recipe check` must exit 2 with every needle in its message.
fn check_fails(dir: &Path, name: &str, body: &str, needles: &[&str]) {
    let p = recipe_file(dir, name, body);
    let out = run(&["recipe", "check", s(&p)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{name}: want exit 2: {err}");
    for n in needles {
        assert!(err.contains(n), "{name}: stderr lacks {n:?}: {err}");
    }
}

#[test]
fn check_names_the_step_and_key_of_each_mistake() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let out = |n: &str| s(&dir.join(n)).to_string();
    check_fails(
        dir,
        "unknown-pass.toml",
        "[[step]]\npass = \"quantize.nope\"\n",
        &["step 1", "quantize.nope", "unknown pass"],
    );
    check_fails(
        dir,
        "unknown-key.toml",
        &format!(
            "[[step]]\npass = \"quantize.gguf\"\npreset = \"Q4_K_M\"\nfrobnicate = 3\n\n[[step]]\npass = \"write\"\npath = \"{}\"\n",
            out("a.gguf")
        ),
        &["step 1", "quantize.gguf", "frobnicate"],
    );
    check_fails(
        dir,
        "no-data-set.toml",
        "[[step]]\npass = \"quantize.gguf\"\ndata = \"heldout\"\n",
        &["step 1", "data", "heldout"],
    );
    check_fails(
        dir,
        "eval-needs-data.toml",
        &format!(
            "[[step]]\npass = \"write\"\npath = \"{}\"\n\n[[step]]\npass = \"eval\"\n",
            out("b.gguf")
        ),
        &["step 2", "eval", "data"],
    );
    check_fails(
        dir,
        "writer-cannot-hold.toml",
        &format!(
            "[[step]]\npass = \"quantize.gguf\"\n\n[[step]]\npass = \"write\"\npath = \"{}\"\n",
            out("c.onnx")
        ),
        &["step 2", "write", "path", "ONNX"],
    );
    check_fails(
        dir,
        "gate-cannot-judge.toml",
        &format!(
            "[[step]]\npass = \"quantize.gguf\"\n\n[[step]]\npass = \"write\"\npath = \"{}\"\n\n[[step]]\npass = \"eval\"\ndata = \"calib\"\nmin_cosine = 0.99\n",
            out("d.gguf")
        ),
        &["step 3", "eval", "min_cosine", "language model"],
    );
    check_fails(
        dir,
        "eval-before-write.toml",
        "[[step]]\npass = \"eval\"\ndata = \"calib\"\n",
        &["step 1", "eval", "write step"],
    );
    check_fails(
        dir,
        "bad-preset.toml",
        "[[step]]\npass = \"quantize.gguf\"\npreset = \"Q9_X\"\n",
        &["step 1", "preset", "Q9_X"],
    );
    // nothing was written by any check
    for n in ["a.gguf", "b.gguf", "c.onnx", "d.gguf"] {
        assert!(!dir.join(n).exists(), "check wrote {n}");
    }
}

fn gated_recipe(dir: &Path, out: &Path, max_kld: f64) -> PathBuf {
    recipe_file(
        dir,
        "gated.toml",
        &format!(
            "[[step]]\npass = \"quantize.gguf\"\npreset = \"Q4_K_M\"\ndata = \"calib\"\n\n\
             [[step]]\npass = \"write\"\npath = \"{}\"\n\n\
             [[step]]\npass = \"eval\"\ndata = \"calib\"\nctx = 64\nchunks = 4\nmax_kld = {max_kld}\n\n\
             [report]\nhtml = \"report.html\"\n",
            s(out)
        ),
    )
}

#[test]
fn a_recipe_runs_to_the_gate_and_reports_every_tensor() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let out = dir.join("m.gguf");
    let recipe = gated_recipe(dir, &out, 10.0);
    ok(&["recipe", "run", s(&recipe)]);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("gated.work/report.json")).unwrap())
            .unwrap();
    assert_eq!(report["passed"], true);
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    assert!(steps
        .iter()
        .all(|s| s["peak_rss_bytes"].as_u64().unwrap() > 0));
    assert!(steps.iter().all(|s| s["cached"] == false));
    assert_eq!(steps[0]["params"]["method"], "awq+gptq");
    let inputs = report["inputs"].as_array().unwrap();
    assert_eq!(inputs[0]["sha256"].as_str().unwrap().len(), 64);
    let tensors = report["tensors"].as_array().unwrap();
    let q = tensors
        .iter()
        .find(|t| t["name"] == "blk.0.attn_q.weight")
        .expect("attn_q in the report");
    assert_eq!(q["kind"], "attn_q");
    assert_eq!(q["layer"], 0);
    let err = q["error"].as_f64().unwrap();
    assert!(
        err > 0.0 && err < 0.5,
        "relative error of a 4-bit weight: {err}"
    );
    let norm = tensors
        .iter()
        .find(|t| t["kind"] == "attn_norm")
        .expect("a norm");
    assert_eq!(norm["error"], 0.0, "F32 norms are stored exactly");
    let evals = report["evals"].as_array().unwrap();
    assert_eq!(evals[0]["gates"][0]["name"], "max-kld");
    assert!(evals[0]["metrics"]["kld"].as_f64().unwrap() >= 0.0);
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("attn_q"));

    // the same recipe with a gate the model cannot meet: exit 3
    let strict = gated_recipe(dir, &dir.join("m2.gguf"), 0.0);
    let failed = run(&["recipe", "run", s(&strict)]);
    assert_eq!(failed.status.code(), Some(3));
}

#[test]
fn resume_after_sigkill_gives_the_same_bytes() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    // the uninterrupted run
    let whole_dir = dir.join("whole");
    std::fs::create_dir(&whole_dir).unwrap();
    let whole_out = whole_dir.join("m.gguf");
    let whole = gated_recipe(&whole_dir, &whole_out, 10.0);
    ok(&["recipe", "run", s(&whole)]);
    let want = std::fs::read(&whole_out).unwrap();

    // Killed early (during quantization) and late (once the write step is
    // cached, during the eval): resume finishes with the same bytes.
    for (tag, kill_after_write) in [("early", false), ("late", true)] {
        let case = dir.join(tag);
        std::fs::create_dir(&case).unwrap();
        let out = case.join("m.gguf");
        let recipe = gated_recipe(&case, &out, 10.0);
        let mut child = edgec()
            .args(["recipe", "run", s(&recipe)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let steps = case.join("gated.work/steps");
        loop {
            let written = std::fs::read_dir(&steps)
                .map(|rd| {
                    rd.flatten()
                        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                        .count()
                })
                .unwrap_or(0);
            let ready = if kill_after_write {
                written >= 2
            } else {
                start.elapsed() > Duration::from_millis(300)
            };
            if ready || child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "{tag}: no progress"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill(); // SIGKILL
        child.wait().unwrap();
        // nothing at the target but a complete file or nothing
        if out.exists() {
            assert_eq!(
                std::fs::read(&out).unwrap(),
                want,
                "{tag}: a partial output"
            );
        }
        let resumed = ok(&["recipe", "run", "--resume", s(&recipe)]);
        assert_eq!(
            std::fs::read(&out).unwrap(),
            want,
            "{tag}: resumed bytes differ"
        );
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(case.join("gated.work/report.json")).unwrap())
                .unwrap();
        if kill_after_write {
            let steps = report["steps"].as_array().unwrap();
            assert_eq!(steps[0]["cached"], true, "{tag}: quantize skipped");
            assert_eq!(steps[1]["cached"], true, "{tag}: write skipped");
        }
        assert!(String::from_utf8_lossy(&resumed.stdout).contains("steps"));
    }
}

#[test]
fn bad_recipes_fail_cleanly() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    // not TOML: a usage error naming the file
    let junk = dir.join("junk.toml");
    std::fs::write(&junk, "[input\nmodel = ").unwrap();
    let out = run(&["recipe", "check", s(&junk)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("junk.toml"));
    // a missing input model: exit 1 naming it, nothing written
    let missing = dir.join("missing.toml");
    let target = dir.join("never.gguf");
    std::fs::write(
        &missing,
        format!(
            "[input]\nmodel = \"nope/model.safetensors\"\n\n[[step]]\npass = \"write\"\npath = \"{}\"\n",
            s(&target)
        ),
    )
    .unwrap();
    let out = run(&["recipe", "run", s(&missing)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
    assert!(!target.exists());
}
