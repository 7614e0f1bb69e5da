//! Calibration end to end on the tiny fixtures: `quantize --calib` and its
//! methods, `calibrate` and `quantize --imatrix`, determinism, bad input.

mod common;

use std::path::Path;

use common::*;

fn fails(args: &[&str], code: i32, needles: &[&str]) {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "edgec {args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "edgec {args:?}: stderr lacks {n:?}: {err}");
    }
}

const TEXT: &str = "/usr/share/common-licenses/GPL-3";

fn quantize(dir: &Path, tag: &str, threads: &str, extra: &[&str]) -> Vec<u8> {
    let out = dir.join(format!("{tag}.gguf"));
    let model = fixture("tiny-llama");
    let mut args = vec!["--threads", threads, "quantize", "--type", "Q4_K_M"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[s(&model), s(&out)]);
    ok(&args);
    std::fs::read(&out).unwrap()
}

const CALIB: [&str; 6] = ["--calib", TEXT, "--calib-samples", "6", "--calib-len", "64"];

#[test]
fn every_method_is_deterministic_across_runs_and_threads() {
    let d = tempfile::tempdir().unwrap();
    let plain = quantize(d.path(), "plain", "2", &[]);
    for method in ["awq", "imatrix", "awq+imatrix", "gptq", "awq+gptq"] {
        let mut args = CALIB.to_vec();
        args.extend_from_slice(&["--method", method]);
        let one = quantize(d.path(), &format!("{method}-1"), "1", &args);
        let two = quantize(d.path(), &format!("{method}-2"), "2", &args);
        let again = quantize(d.path(), &format!("{method}-2b"), "2", &args);
        assert_eq!(one, two, "{method}: --threads 1 and 2 differ");
        assert_eq!(two, again, "{method}: two runs differ");
        assert_ne!(
            one, plain,
            "{method}: the same bytes as without calibration"
        );
    }
    // no --method with --calib is the default (awq+gptq)
    let default = quantize(d.path(), "default", "2", &CALIB);
    let mut args = CALIB.to_vec();
    args.extend_from_slice(&["--method", "awq+gptq"]);
    assert_eq!(default, quantize(d.path(), "explicit", "2", &args));
}

#[test]
fn json_reports_the_calibration() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("q.gguf");
    let mut args = vec!["quantize", "--type", "Q4_0", "--json", "--method", "awq"];
    args.extend_from_slice(&CALIB);
    let model = fixture("tiny-llama");
    args.extend_from_slice(&[s(&model), s(&out)]);
    let o = ok(&args);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let c = &v["calibration"];
    assert_eq!(c["method"], "awq");
    assert_eq!(c["samples"], 6);
    assert_eq!(c["tokens"], 6 * 64);
    let rtn = c["awq_error_rtn"].as_f64().unwrap();
    let fin = c["awq_error_final"].as_f64().unwrap();
    assert!(fin <= rtn && fin > 0.0, "{fin} vs {rtn}");
    // two layers x four groups
    assert_eq!(c["groups"].as_array().unwrap().len(), 8);
}

#[test]
fn calibrate_writes_an_imatrix_that_quantize_reads() {
    let d = tempfile::tempdir().unwrap();
    let model = fixture("tiny-llama");
    for name in ["imatrix.gguf", "imatrix.dat"] {
        let im = d.path().join(name);
        let o = ok(&[
            "calibrate",
            s(&model),
            "--data",
            TEXT,
            "--out",
            s(&im),
            "--samples",
            "4",
            "--len",
            "64",
        ]);
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("14 entries"),
            "{o:?}"
        );
        let read = edgec_formats::imatrix::ImportanceMatrix::read(&im).unwrap();
        assert_eq!(read.entries.len(), 14); // 2 layers x 7 linear layers
        assert!(read.entries.contains_key("blk.1.ffn_down.weight"));
        let with = quantize(
            d.path(),
            &format!("with-{name}"),
            "2",
            &["--imatrix", s(&im)],
        );
        let plain = quantize(d.path(), "plain", "2", &[]);
        assert_ne!(with, plain, "{name}: --imatrix changed nothing");
    }
}

#[test]
fn bad_calibration_input_fails_cleanly() {
    let d = tempfile::tempdir().unwrap();
    let model = fixture("tiny-llama");
    let out = d.path().join("out.gguf");
    let empty = d.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let binary = d.path().join("binary.txt");
    std::fs::write(&binary, [0u8, 159, 146, 150, 0, 1, 2]).unwrap();
    let short = d.path().join("short.txt");
    std::fs::write(&short, "Just a few words.").unwrap();
    let garbage = d.path().join("garbage.gguf");
    std::fs::write(&garbage, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    for (file, needle) in [
        (&empty, "empty.txt"),
        (&binary, "binary.txt"),
        (&short, "short.txt"),
    ] {
        fails(
            &["quantize", "--calib", s(file), s(&model), s(&out)],
            1,
            &[needle],
        );
    }
    fails(
        &[
            "calibrate",
            s(&model),
            "--data",
            s(&short),
            "--out",
            s(&out),
        ],
        1,
        &["short.txt"],
    );
    fails(
        &["quantize", "--imatrix", s(&garbage), s(&model), s(&out)],
        1,
        &["garbage.gguf"],
    );
    // usage errors: exit 2
    fails(
        &["quantize", "--method", "awq", s(&model), s(&out)],
        2,
        &["--calib"],
    );
    fails(
        &[
            "quantize",
            "--calib",
            TEXT,
            "--imatrix",
            s(&garbage),
            s(&model),
            s(&out),
        ],
        2,
        &[],
    );
    // AWQ needs the llama family's structure
    fails(
        &[
            "quantize",
            "--calib",
            TEXT,
            "--method",
            "awq",
            s(&fixture("tiny-bert")),
            s(&out),
        ],
        1,
        &["llama family"],
    );
    assert!(!out.exists(), "a failed run left {}", out.display());
    let left: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 4, "leftovers: {left:?}");
}

#[test]
fn imatrix_rounding_works_for_bert_too() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("bert.gguf");
    let mut args = vec!["quantize", "--type", "Q4_0", "--method", "imatrix"];
    args.extend_from_slice(&CALIB);
    let model = fixture("tiny-bert");
    args.extend_from_slice(&[s(&model), s(&out)]);
    ok(&args);
    let plain = d.path().join("plain.gguf");
    ok(&["quantize", "--type", "Q4_0", s(&model), s(&plain)]);
    assert_ne!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&plain).unwrap(),
        "importance changed nothing"
    );
}

#[test]
fn sequential_calibration_without_propagation_equals_one_shot() {
    let d = tempfile::tempdir().unwrap();
    for method in ["awq+gptq", "gptq", "imatrix", "awq"] {
        let mut extra = CALIB.to_vec();
        extra.extend_from_slice(&["--method", method]);
        let one_shot = quantize(d.path(), &format!("one-{method}"), "2", &extra);
        extra.extend_from_slice(&["--sequential", "--no-propagate"]);
        let sequential = quantize(d.path(), &format!("seq-{method}"), "2", &extra);
        assert!(
            one_shot == sequential,
            "{method}: one layer at a time must give the same statistics and bytes"
        );
    }
}

#[test]
fn sequential_calibration_with_propagation_is_deterministic() {
    let d = tempfile::tempdir().unwrap();
    let mut extra = CALIB.to_vec();
    extra.push("--sequential");
    let a = quantize(d.path(), "a", "1", &extra);
    let b = quantize(d.path(), "b", "2", &extra);
    assert!(a == b, "--threads 1 and 2 differ");
    let one_shot = quantize(d.path(), "one", "2", &CALIB);
    assert!(
        a != one_shot,
        "propagating quantized outputs changes the later layers' statistics"
    );
}
