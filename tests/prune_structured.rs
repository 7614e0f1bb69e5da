//! `edgec prune --heads/--layers/--ffn`: removing heads, layers or neurons
//! that contribute exactly nothing (constructed) leaves every logit where
//! it was, non-uniform widths follow the ranking and are written as
//! llama.cpp's `deci` and read back, and bad requests are usage errors.

mod common;

use std::path::Path;

use common::*;
use edgec_core::runtime::{Runtime, RuntimeOptions};
use edgec_core::{BlockShape, DType, Family, Model, Tensor};
use edgec_formats::{gguf, hf};

const TEXT: &str = "/usr/share/common-licenses/GPL-3";

/// tiny-llama with `edit(name, shape, values)` applied to every tensor.
fn edited(edit: impl Fn(&str, &[usize], &mut [f32])) -> Model {
    let mut m = hf::read(&fixture("tiny-llama")).unwrap();
    for t in &mut m.tensors {
        let mut w = t.to_f32().unwrap();
        edit(&t.name, &t.shape, &mut w);
        *t = Tensor::from_f32(t.name.clone(), t.shape.clone(), w).unwrap();
    }
    m
}

fn save(m: &Model, dir: &Path) -> std::path::PathBuf {
    let out = dir.join("edited");
    std::fs::create_dir_all(&out).unwrap();
    hf::write(m, &out, DType::F32).unwrap();
    out
}

fn logits(m: &Model) -> Vec<f32> {
    let tokens: Vec<u32> = (1..40).collect();
    Runtime::new(m, &RuntimeOptions::default())
        .unwrap()
        .logits(&tokens)
        .unwrap()
}

fn worst(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

fn blocks(m: &Model) -> Vec<BlockShape> {
    match &m.meta.family {
        Some(Family::Llama(p)) => p.block_shapes(),
        _ => panic!("not a llama"),
    }
}

fn shape(heads: usize, kv: usize, ffn: usize) -> BlockShape {
    BlockShape {
        num_heads: heads,
        num_kv_heads: kv,
        intermediate_size: ffn,
    }
}

#[test]
fn silent_heads_are_removed_without_changing_a_logit() {
    let d = tempfile::tempdir().unwrap();
    // tiny-llama: 4 heads of 16 in 2 GQA groups. The second group's heads
    // write nothing (their o_proj columns are zero) in both layers.
    let m = edited(|name, shape, w| {
        if name.ends_with("o_proj.weight") {
            let cols = shape[1];
            for (i, v) in w.iter_mut().enumerate() {
                if i % cols >= 32 {
                    *v = 0.0;
                }
            }
        }
    });
    let src = save(&m, d.path());
    let out = d.path().join("heads.gguf");
    ok(&["prune", s(&src), s(&out), "--heads", "0.5", "--uniform"]);
    let p = gguf::read_model(&out).unwrap();
    assert_eq!(blocks(&p), vec![shape(2, 1, 160); 2]);
    assert_eq!(
        p.tensor("model.layers.1.self_attn.o_proj.weight")
            .unwrap()
            .shape,
        vec![64, 32]
    );
    let moved = worst(&logits(&m), &logits(&p));
    assert!(moved < 1e-4, "logits moved by {moved}");
    // the live group's removal would move them (the check can fail)
    let live = d.path().join("live.gguf");
    ok(&[
        "prune",
        s(&fixture("tiny-llama")),
        s(&live),
        "--heads",
        "0.5",
        "--uniform",
    ]);
    let orig = hf::read(&fixture("tiny-llama")).unwrap();
    assert!(worst(&logits(&orig), &logits(&gguf::read_model(&live).unwrap())) > 1e-3);
}

#[test]
fn a_layer_that_changes_nothing_is_the_one_removed() {
    let d = tempfile::tempdir().unwrap();
    // layer 0 adds nothing to the residual stream: its output is its input
    let m = edited(|name, _, w| {
        if name.starts_with("model.layers.0.")
            && (name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight"))
        {
            w.fill(0.0);
        }
    });
    let src = save(&m, d.path());
    let out = d.path().join("shallow");
    let r = ok(&[
        "prune",
        s(&src),
        s(&out),
        "--layers",
        "1",
        "--calib",
        TEXT,
        "--calib-samples",
        "4",
        "--calib-len",
        "32",
    ]);
    assert!(
        String::from_utf8_lossy(&r.stdout).contains("removed layers [0]"),
        "{}",
        String::from_utf8_lossy(&r.stdout)
    );
    let p = hf::read(&out).unwrap();
    assert_eq!(blocks(&p).len(), 1);
    // the remaining layer is the old layer 1, renumbered
    assert_eq!(
        p.tensor("model.layers.0.mlp.down_proj.weight")
            .unwrap()
            .to_f32()
            .unwrap(),
        m.tensor("model.layers.1.mlp.down_proj.weight")
            .unwrap()
            .to_f32()
            .unwrap()
    );
    assert!(p
        .tensors
        .iter()
        .all(|t| !t.name.starts_with("model.layers.1.")));
    let moved = worst(&logits(&m), &logits(&p));
    assert!(moved < 1e-4, "logits moved by {moved}");
}

#[test]
fn non_uniform_widths_follow_the_ranking_and_are_written_as_deci() {
    let d = tempfile::tempdir().unwrap();
    // layer 1's odd FFN neurons are silent: removing 64 of the 320, a
    // global ranking takes them all from layer 1 (whole steps of 32)
    let m = edited(|name, shape, w| {
        if name == "model.layers.1.mlp.down_proj.weight" {
            let cols = shape[1];
            for (i, v) in w.iter_mut().enumerate() {
                if (i % cols) % 2 == 1 {
                    *v = 0.0;
                }
            }
        }
    });
    let src = save(&m, d.path());
    let out = d.path().join("nonuniform.gguf");
    ok(&["prune", s(&src), s(&out), "--ffn", "0.25"]);
    let file = gguf::reader::read(&out).unwrap();
    assert_eq!(file.metadata.get_str("general.architecture"), Some("deci"));
    let p = gguf::read_model(&out).unwrap();
    assert_eq!(blocks(&p), vec![shape(4, 2, 160), shape(4, 2, 96)]);
    let moved = worst(&logits(&m), &logits(&p));
    assert!(moved < 1e-4, "logits moved by {moved}");
    // uniform at the same count cuts live neurons in layer 0
    let uniform = d.path().join("uniform.gguf");
    ok(&["prune", s(&src), s(&uniform), "--ffn", "0.25", "--uniform"]);
    let u = gguf::read_model(&uniform).unwrap();
    assert_eq!(blocks(&u), vec![shape(4, 2, 128); 2]);
    assert!(worst(&logits(&m), &logits(&u)) > 1e-3);
    // DeciLM configs hold only widths that are multiples of 256: refused,
    // naming the output, and nothing written
    let hf_out = d.path().join("nonuniform-hf");
    let r = run(&["prune", s(&src), s(&hf_out), "--ffn", "0.25"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(
        err.contains("nonuniform-hf") && err.contains("multiples of 256"),
        "{err}"
    );
    assert!(!hf_out.exists());
    // inspect lists the widths
    let r = ok(&["inspect", s(&out)]);
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(
        text.contains("widths differ") && text.contains("FFN 96"),
        "{text}"
    );
}

#[test]
fn bad_structured_requests_are_usage_errors() {
    let d = tempfile::tempdir().unwrap();
    let tiny = fixture("tiny-llama");
    for (args, says) in [
        (vec!["--heads", "0.25"], "whole groups (2)"),
        (vec!["--heads", "1"], "between 0 and 1"),
        (vec!["--layers", "1"], "--calib"),
        (
            vec![
                "--layers",
                "2",
                "--calib",
                TEXT,
                "--calib-samples",
                "2",
                "--calib-len",
                "16",
            ],
            "leaves none",
        ),
        (
            vec!["--ffn", "0.25", "--method", "magnitude"],
            "cannot be used with",
        ),
    ] {
        let out = d.path().join("out.gguf");
        let mut all = vec!["prune", s(&tiny), s(&out)];
        all.extend(&args);
        let r = run(&all);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: no {says:?} in {err}");
        assert!(!out.exists());
    }
}
