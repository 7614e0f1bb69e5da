//! `edgec eval` end to end on the tiny fixtures: metrics, gates and their
//! exit codes, the JSON and JUnit reports, bad data.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn code(args: &[&str]) -> (i32, String, String) {
    let o = run(args);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

const TEXT: &str = "/usr/share/common-licenses/GPL-3";

fn quantized(dir: &Path, model: &str, ty: &str) -> PathBuf {
    let out = dir.join(format!("{model}.{ty}.gguf"));
    let (c, _, err) = code(&["quantize", "--type", ty, s(&fixture(model)), s(&out)]);
    assert_eq!(c, 0, "{err}");
    out
}

#[test]
fn one_model_reports_perplexity() {
    let (c, out, err) = code(&[
        "eval",
        s(&fixture("tiny-llama")),
        "--data",
        TEXT,
        "--ctx",
        "64",
        "--chunks",
        "4",
        "--json",
    ]);
    assert_eq!(c, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ppl = v["reference"]["ppl"].as_f64().unwrap();
    // Random weights: perplexity near the vocabulary size, never below 1.
    assert!(ppl > 1.0 && ppl.is_finite(), "{ppl}");
    assert_eq!(v["chunks"], 4);
    assert_eq!(v["scored_tokens"], 4 * 31);
    assert_eq!(v["passed"], true);
}

#[test]
fn gates_pass_and_fail_with_exit_codes() {
    let d = tempfile::tempdir().unwrap();
    let q8 = quantized(d.path(), "tiny-llama", "Q8_0");
    let q2 = quantized(d.path(), "tiny-llama", "Q2_K");
    let junit = d.path().join("eval.xml");
    let reference = fixture("tiny-llama");
    let base = [
        "eval",
        "--reference",
        s(&reference),
        "--data",
        TEXT,
        "--ctx",
        "64",
        "--chunks",
        "3",
    ];

    let mut args = base.to_vec();
    args.extend([
        "--candidate",
        s(&q8),
        "--max-kld",
        "0.01",
        "--max-ppl-increase",
        "1%",
        "--json",
        "--junit",
        s(&junit),
    ]);
    let (c, out, err) = code(&args);
    assert_eq!(c, 0, "{err}\n{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for key in ["ppl_increase", "kld", "top1_agreement"] {
        assert!(v["delta"][key].is_number(), "delta.{key} missing: {out}");
    }
    assert!(v["delta"]["kld"].as_f64().unwrap() >= 0.0);
    assert_eq!(v["gates"].as_array().unwrap().len(), 2);
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("tests=\"2\" failures=\"0\""), "{xml}");

    let mut args = base.to_vec();
    args.extend([
        "--candidate",
        s(&q2),
        "--max-kld",
        "0.000001",
        "--junit",
        s(&junit),
    ]);
    let (c, out, _) = code(&args);
    assert_eq!(c, 3, "a failed gate exits 3: {out}");
    assert!(out.contains("FAIL"), "{out}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("failures=\"1\"") && xml.contains("<failure"),
        "{xml}"
    );
}

#[test]
fn encoder_cosine_gate() {
    let d = tempfile::tempdir().unwrap();
    let q8 = quantized(d.path(), "tiny-bert", "Q8_0");
    let data = d.path().join("s.jsonl");
    std::fs::write(&data, "{\"text\": \"the quick brown fox\"}\n\"a free software license\"\n\n{\"text\": \"copyright notice\"}\n").unwrap();
    let reference = fixture("tiny-bert");
    let args = [
        "eval",
        "--reference",
        s(&reference),
        "--candidate",
        s(&q8),
        "--data",
        s(&data),
        "--json",
    ];
    let mut pass = args.to_vec();
    pass.extend(["--min-cosine", "0.99"]);
    let (c, out, err) = code(&pass);
    assert_eq!(c, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["sentences"], 3);
    let mean = v["delta"]["cosine_mean"].as_f64().unwrap();
    assert!(mean > 0.99 && mean <= 1.0 + 1e-9, "{mean}");
    let mut fail = args.to_vec();
    fail.extend(["--min-cosine", "1.5"]);
    assert_eq!(code(&fail).0, 3);
}

#[test]
fn bad_data_and_usage() {
    let d = tempfile::tempdir().unwrap();
    let empty = d.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let binary = d.path().join("blob.txt");
    std::fs::write(&binary, [0u8, 159, 146, 150, 0, 1, 2]).unwrap();
    let short = d.path().join("short.txt");
    std::fs::write(&short, "just a few words").unwrap();
    for (file, needle) in [
        (&empty, "empty.txt"),
        (&binary, "blob.txt"),
        (&short, "short.txt"),
    ] {
        let (c, _, err) = code(&[
            "eval",
            s(&fixture("tiny-llama")),
            "--data",
            s(file),
            "--ctx",
            "64",
        ]);
        assert_eq!(c, 1, "{err}");
        assert!(err.contains(needle), "error does not name the file: {err}");
    }
    let (c, _, err) = code(&[
        "eval",
        s(&fixture("tiny-llama")),
        "--data",
        s(&d.path().join("missing.txt")),
    ]);
    assert_eq!(c, 1);
    assert!(err.contains("missing.txt"), "{err}");
    // Usage: a candidate needs a reference; gates need two models.
    assert_eq!(
        code(&["eval", "--candidate", "x.gguf", "--data", TEXT]).0,
        2
    );
    assert_eq!(
        code(&[
            "eval",
            s(&fixture("tiny-llama")),
            "--data",
            TEXT,
            "--max-kld",
            "0.1"
        ])
        .0,
        2
    );
}
