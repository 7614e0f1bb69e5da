//! `edgec prune`: the masks land where they should (exact N:M counts,
//! exact fractions, only the blocks' linear weights), the command and its
//! printed recipe write the same bytes whatever the thread count, and bad
//! requests are usage errors.

mod common;

use std::path::Path;

use common::*;
use edgec_core::Model;
use edgec_formats::{gguf, hf};

const TEXT: &str = "/usr/share/common-licenses/GPL-3";

fn is_block_linear(m: &Model, name: &str) -> bool {
    name.starts_with("model.layers.")
        && name.ends_with(".weight")
        && m.tensor(name).is_some_and(|t| t.shape.len() == 2)
}

/// Runs `edgec prune tiny-llama OUT ARGS…` and asserts a usage error (exit 2)
/// whose message holds every one of `says`, and no output.
fn refused(args: &[&str], says: &[&str]) {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.gguf");
    let tiny = fixture("tiny-llama");
    let mut all = vec!["prune", s(&tiny), s(&out)];
    all.extend(args);
    let r = run(&all);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{args:?}: {err}");
    for word in says {
        assert!(err.contains(word), "{args:?}: no {word:?} in {err}");
    }
    assert!(!out.exists(), "{args:?}: no output on a bad request");
}

fn zeros(v: &[f32]) -> usize {
    v.iter().filter(|x| **x == 0.0).count()
}

/// Checks every tensor of `out` against the input: block linear weights by
/// `check`, everything else unchanged.
fn check_pruned(out: &Model, check: impl Fn(&str, &[f32], usize)) {
    let input = hf::read(&fixture("tiny-llama")).unwrap();
    let mut pruned = 0;
    for t in &input.tensors {
        let after = out.tensor(&t.name).unwrap().to_f32().unwrap();
        let before = t.to_f32().unwrap();
        if is_block_linear(&input, &t.name) {
            check(&t.name, &after, *t.shape.last().unwrap());
            // kept weights keep their values (magnitude and Wanda do not update)
            pruned += 1;
        } else {
            assert_eq!(
                before, after,
                "{}: not a block's linear weight, must be unchanged",
                t.name
            );
        }
    }
    assert_eq!(pruned, 14, "2 layers x 7 linear weights");
}

#[test]
fn patterns_leave_exactly_n_zeros_in_every_group() {
    let d = tempfile::tempdir().unwrap();
    let tiny = fixture("tiny-llama");
    for (method, pattern, calib) in [
        ("magnitude", "2:4", false),
        ("magnitude", "4:8", false),
        ("wanda", "2:4", true),
        ("sparsegpt", "2:4", true),
    ] {
        let out = d
            .path()
            .join(format!("{method}-{}.gguf", pattern.replace(':', "-")));
        let mut args = vec![
            "prune",
            s(&tiny),
            s(&out),
            "--method",
            method,
            "--pattern",
            pattern,
        ];
        if calib {
            args.extend(["--calib", TEXT, "--calib-samples", "8", "--calib-len", "64"]);
        }
        ok(&args);
        let (n, m): (usize, usize) = {
            let (a, b) = pattern.split_once(':').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        };
        check_pruned(&gguf::read_model(&out).unwrap(), |name, w, cols| {
            assert_eq!(cols % m, 0);
            for (g, group) in w.chunks(m).enumerate() {
                assert_eq!(
                    zeros(group),
                    n,
                    "{method} {pattern}: {name} group {g}: {group:?}"
                );
            }
        });
    }
}

#[test]
fn fractions_are_met_per_weight_and_per_row() {
    let d = tempfile::tempdir().unwrap();
    // magnitude: the fraction of each whole weight; wanda: of each row
    let mag = d.path().join("mag");
    ok(&[
        "prune",
        s(&fixture("tiny-llama")),
        s(&mag),
        "--method",
        "magnitude",
        "--sparsity",
        "0.5",
    ]);
    check_pruned(&hf::read(&mag).unwrap(), |name, w, _| {
        assert_eq!(zeros(w), w.len() / 2, "{name}");
    });
    let wanda = d.path().join("wanda");
    ok(&[
        "prune",
        s(&fixture("tiny-llama")),
        s(&wanda),
        "--method",
        "wanda",
        "--sparsity",
        "0.25",
        "--calib",
        TEXT,
        "--calib-samples",
        "8",
        "--calib-len",
        "64",
    ]);
    check_pruned(&hf::read(&wanda).unwrap(), |name, w, cols| {
        for row in w.chunks(cols) {
            assert_eq!(zeros(row), (cols as f64 * 0.25).round() as usize, "{name}");
        }
    });
}

#[test]
fn command_and_recipe_agree_whatever_the_thread_count() {
    let d = tempfile::tempdir().unwrap();
    for method in ["wanda", "sparsegpt"] {
        let direct = d.path().join(format!("{method}-direct.gguf"));
        let args = |out: &Path, threads: &str| -> Vec<String> {
            [
                "--threads",
                threads,
                "prune",
                s(&fixture("tiny-llama")),
                s(out),
                "--method",
                method,
                "--sparsity",
                "0.5",
                "--calib",
                TEXT,
                "--calib-samples",
                "8",
                "--calib-len",
                "64",
            ]
            .map(String::from)
            .to_vec()
        };
        let a = args(&direct, "2");
        ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
        let one = d.path().join(format!("{method}-1.gguf"));
        let a = args(&one, "1");
        ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(
            std::fs::read(&direct).unwrap(),
            std::fs::read(&one).unwrap(),
            "{method}: 1 vs 2 threads"
        );
        let via = d.path().join(format!("{method}-recipe.gguf"));
        let mut a = args(&via, "2");
        a.push("--print-recipe".into());
        let printed = ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
        let recipe = d.path().join(format!("{method}.toml"));
        std::fs::write(&recipe, &printed.stdout).unwrap();
        ok(&["recipe", "run", s(&recipe)]);
        assert_eq!(
            std::fs::read(&direct).unwrap(),
            std::fs::read(&via).unwrap(),
            "{method}: command vs recipe"
        );
    }
}

#[test]
fn sparsegpt_updates_the_weights_it_keeps_and_wanda_does_not() {
    let d = tempfile::tempdir().unwrap();
    let input = hf::read(&fixture("tiny-llama")).unwrap();
    for (method, updates) in [("wanda", false), ("sparsegpt", true)] {
        let out = d.path().join(method);
        ok(&[
            "prune",
            s(&fixture("tiny-llama")),
            s(&out),
            "--method",
            method,
            "--sparsity",
            "0.5",
            "--calib",
            TEXT,
            "--calib-samples",
            "8",
            "--calib-len",
            "64",
        ]);
        let m = hf::read(&out).unwrap();
        let name = "model.layers.1.mlp.down_proj.weight";
        let before = input.tensor(name).unwrap().to_f32().unwrap();
        let after = m.tensor(name).unwrap().to_f32().unwrap();
        let changed = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **a != 0.0 && a != b)
            .count();
        assert_eq!(
            changed > 0,
            updates,
            "{method}: {changed} kept weights changed"
        );
    }
}

#[test]
fn bad_requests_are_usage_errors() {
    for (args, says) in [
        (
            vec!["--method", "magnitude", "--sparsity", "1"],
            "between 0 and 1",
        ),
        (
            vec!["--method", "magnitude", "--sparsity", "0"],
            "between 0 and 1",
        ),
        (
            vec!["--method", "magnitude", "--pattern", "4:2"],
            "0 < N < M",
        ),
        (
            vec!["--method", "magnitude", "--pattern", "2:3"],
            "not a multiple of 3",
        ),
        (vec!["--method", "wanda", "--sparsity", "0.5"], "--calib"),
        (vec!["--method", "sparsegpt", "--pattern", "2:4"], "--calib"),
        (
            vec![
                "--method",
                "magnitude",
                "--sparsity",
                "0.5",
                "--pattern",
                "2:4",
            ],
            "cannot be used with",
        ),
        (vec!["--method", "magnitude"], "--sparsity"),
    ] {
        refused(&args, &[says]);
    }
}

#[test]
fn inspect_shows_the_zeros_and_they_survive_plain_q8_0_and_q4_0() {
    let d = tempfile::tempdir().unwrap();
    let pruned = d.path().join("pruned");
    ok(&[
        "prune",
        s(&fixture("tiny-llama")),
        s(&pruned),
        "--method",
        "magnitude",
        "--pattern",
        "2:4",
    ]);
    for ty in ["F32", "Q8_0", "Q4_0"] {
        let out = d.path().join(format!("{ty}.gguf"));
        if ty == "F32" {
            ok(&["convert", s(&pruned), s(&out)]);
        } else {
            ok(&["quantize", s(&pruned), s(&out), "--type", ty, "--pure"]);
        }
        let json = ok(&["inspect", s(&out), "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        let mut linears = 0;
        for t in v["tensors"].as_array().unwrap() {
            let name = t["name"].as_str().unwrap();
            let zeros = t["zero_fraction"].as_f64().unwrap();
            // GGUF names: blk.N.attn_q.weight, blk.N.ffn_down.weight, ...
            if name.starts_with("blk.") && t["shape"].as_array().unwrap().len() == 2 {
                linears += 1;
                assert!(
                    zeros >= 0.5,
                    "{ty}: {name}: {zeros} zero, want the 2:4 half at least"
                );
            } else if name.contains("norm") {
                assert_eq!(zeros, 0.0, "{ty}: {name}");
            }
        }
        assert_eq!(linears, 14, "{ty}");
    }
}

#[test]
fn ignored_weights_stay_dense() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    ok(&[
        "prune",
        s(&fixture("tiny-llama")),
        s(&out),
        "--method",
        "magnitude",
        "--sparsity",
        "0.5",
        "--ignore",
        ".*down_proj.*",
        "--ignore",
        r"model\.layers\.0\.self_attn\..*",
    ]);
    let input = hf::read(&fixture("tiny-llama")).unwrap();
    let m = hf::read(&out).unwrap();
    let mut dense = 0;
    for t in &input.tensors {
        if !is_block_linear(&input, &t.name) {
            continue;
        }
        let after = m.tensor(&t.name).unwrap().to_f32().unwrap();
        let kept = t.name.contains("down_proj") || t.name.starts_with("model.layers.0.self_attn.");
        if kept {
            dense += 1;
            assert_eq!(
                after,
                t.to_f32().unwrap(),
                "{}: ignored, must be unchanged",
                t.name
            );
        } else {
            assert_eq!(zeros(&after), after.len() / 2, "{}", t.name);
        }
    }
    assert_eq!(dense, 2 + 4, "2 down_proj and layer 0's q, k, v, o");
    for (pattern, says) in [
        ("(", "not a regular expression"),
        (".*", "nothing to prune"),
    ] {
        refused(
            &[
                "--method",
                "magnitude",
                "--sparsity",
                "0.5",
                "--ignore",
                pattern,
            ],
            &[says, "ignore"],
        );
    }
}

#[test]
fn global_magnitude_drops_the_smallest_over_all_weights() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    ok(&[
        "prune",
        s(&fixture("tiny-llama")),
        s(&out),
        "--method",
        "magnitude",
        "--sparsity",
        "0.5",
        "--global",
    ]);
    let input = hf::read(&fixture("tiny-llama")).unwrap();
    let m = hf::read(&out).unwrap();
    let (mut dropped_max, mut kept_min, mut zeros_all, mut total) = (0f32, f32::INFINITY, 0, 0);
    let mut fractions = vec![];
    for t in input
        .tensors
        .iter()
        .filter(|t| is_block_linear(&input, &t.name))
    {
        let before = t.to_f32().unwrap();
        let after = m.tensor(&t.name).unwrap().to_f32().unwrap();
        for (b, a) in before.iter().zip(&after) {
            if *a == 0.0 {
                dropped_max = dropped_max.max(b.abs());
            } else {
                assert_eq!(a, b);
                kept_min = kept_min.min(b.abs());
            }
        }
        zeros_all += zeros(&after);
        total += after.len();
        fractions.push(zeros(&after) as f64 / after.len() as f64);
    }
    assert!(
        dropped_max <= kept_min,
        "{dropped_max} dropped, {kept_min} kept"
    );
    assert_eq!(zeros_all, (total as f64 * 0.5).round() as usize);
    assert!(
        fractions.iter().any(|f| (f - 0.5).abs() > 0.01),
        "one threshold, so weights differ: {fractions:?}"
    );
    for (args, says) in [
        (
            vec![
                "--method",
                "wanda",
                "--calib",
                TEXT,
                "--sparsity",
                "0.5",
                "--global",
            ],
            "magnitude",
        ),
        (
            vec!["--method", "magnitude", "--pattern", "2:4", "--global"],
            "give a sparsity",
        ),
    ] {
        refused(&args, &[says, "scope"]);
    }
}

#[test]
fn bert_blocks_are_pruned_too() {
    let d = tempfile::tempdir().unwrap();
    let tiny = fixture("tiny-bert");
    let input = hf::read(&tiny).unwrap();
    for method in ["magnitude", "wanda", "sparsegpt"] {
        let out = d.path().join(method);
        let mut args = vec![
            "prune",
            s(&tiny),
            s(&out),
            "--method",
            method,
            "--pattern",
            "2:4",
        ];
        if method != "magnitude" {
            args.extend(["--calib", TEXT, "--calib-samples", "8", "--calib-len", "64"]);
        }
        ok(&args);
        let m = hf::read(&out).unwrap();
        let mut linears = 0;
        for t in &input.tensors {
            let after = m.tensor(&t.name).unwrap().to_f32().unwrap();
            if t.name.starts_with("encoder.layer.")
                && t.name.ends_with(".weight")
                && t.shape.len() == 2
            {
                linears += 1;
                for group in after.chunks(4) {
                    assert_eq!(zeros(group), 2, "{method}: {}", t.name);
                }
            } else {
                assert_eq!(
                    after,
                    t.to_f32().unwrap(),
                    "{method}: {} must be unchanged",
                    t.name
                );
            }
        }
        assert_eq!(linears, 12, "2 layers x 6 linear weights");
    }
}

#[test]
fn removing_ffn_neurons_that_contribute_nothing_changes_no_logit() {
    use edgec_core::runtime::{Runtime, RuntimeOptions};
    let d = tempfile::tempdir().unwrap();
    // tiny-llama with 40 of each layer's 160 FFN neurons silenced (their
    // down_proj columns zeroed): the weight-norm ranking removes 32 of them
    let mut m = hf::read(&fixture("tiny-llama")).unwrap();
    for t in &mut m.tensors {
        if t.name.ends_with("mlp.down_proj.weight") {
            let cols = t.shape[1];
            let mut w = t.to_f32().unwrap();
            for (i, v) in w.iter_mut().enumerate() {
                if (i % cols) % 4 == 1 {
                    *v = 0.0;
                }
            }
            *t = edgec_core::Tensor::from_f32(t.name.clone(), t.shape.clone(), w).unwrap();
        }
    }
    let silenced = d.path().join("silenced");
    std::fs::create_dir_all(&silenced).unwrap();
    hf::write(&m, &silenced, edgec_core::DType::F32).unwrap();
    for out in [d.path().join("pruned.gguf"), d.path().join("pruned")] {
        let r = ok(&["prune", s(&silenced), s(&out), "--ffn", "0.25"]);
        assert!(String::from_utf8_lossy(&r.stdout).contains("160 -> 128"));
        let p = if out.extension().is_some() {
            gguf::read_model(&out).unwrap()
        } else {
            hf::read(&out).unwrap()
        };
        assert_eq!(
            p.tensor("model.layers.0.mlp.up_proj.weight").unwrap().shape,
            vec![128, 64]
        );
        assert_eq!(
            p.tensor("model.layers.1.mlp.down_proj.weight")
                .unwrap()
                .shape,
            vec![64, 128]
        );
        let tokens: Vec<u32> = (1..40).collect();
        let want = Runtime::new(&m, &RuntimeOptions::default())
            .unwrap()
            .logits(&tokens)
            .unwrap();
        let got = Runtime::new(&p, &RuntimeOptions::default())
            .unwrap()
            .logits(&tokens)
            .unwrap();
        let worst = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "{}: logits moved by {worst}", out.display());
    }
    // and a live neuron's removal does change them (the check can fail)
    let live = d.path().join("live");
    ok(&[
        "prune",
        s(&fixture("tiny-llama")),
        s(&live),
        "--ffn",
        "0.25",
    ]);
    let p = hf::read(&live).unwrap();
    let orig = hf::read(&fixture("tiny-llama")).unwrap();
    let tokens: Vec<u32> = (1..40).collect();
    let a = Runtime::new(&orig, &RuntimeOptions::default())
        .unwrap()
        .logits(&tokens)
        .unwrap();
    let b = Runtime::new(&p, &RuntimeOptions::default())
        .unwrap()
        .logits(&tokens)
        .unwrap();
    assert!(a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-3));
    // bad widths are usage errors
    for f in ["0", "1", "0.01"] {
        let r = run(&[
            "prune",
            s(&fixture("tiny-llama")),
            s(&d.path().join("bad.gguf")),
            "--ffn",
            f,
        ]);
        assert_eq!(
            r.status.code(),
            Some(2),
            "--ffn {f}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
    }
}

#[test]
fn owl_gives_each_block_its_own_sparsity_around_the_target() {
    let d = tempfile::tempdir().unwrap();
    let tiny = fixture("tiny-llama");
    for method in ["wanda", "magnitude", "sparsegpt"] {
        let out = d.path().join(method);
        let report = d.path().join(format!("{method}.json"));
        // M = 2, not the default 5: the option reaches the step
        ok(&[
            "prune",
            s(&tiny),
            s(&out),
            "--method",
            method,
            "--sparsity",
            "0.5",
            "--owl",
            "--owl-m",
            "2",
            "--calib",
            TEXT,
            "--calib-samples",
            "8",
            "--calib-len",
            "64",
            "--report",
            s(&report),
        ]);
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        let owl = &r["steps"][0]["summary"]["owl"];
        assert_eq!(owl["m"], 2.0);
        assert_eq!(owl["lambda"], 0.08);
        let layers = owl["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 2, "{owl}");
        let get = |l: usize, k: &str| layers[l][k].as_f64().unwrap();
        // two blocks: one on each edge of the band, the one with more outliers
        // keeping more weights
        assert!(get(0, "outlier_ratio") != get(1, "outlier_ratio"), "{owl}");
        let (more, fewer) = if get(0, "outlier_ratio") > get(1, "outlier_ratio") {
            (0, 1)
        } else {
            (1, 0)
        };
        assert!((get(more, "sparsity") - 0.42).abs() < 1e-9, "{owl}");
        assert!((get(fewer, "sparsity") - 0.58).abs() < 1e-9, "{owl}");
        // the weights follow their block's sparsity
        let m = hf::read(&out).unwrap();
        let input = hf::read(&tiny).unwrap();
        for t in input
            .tensors
            .iter()
            .filter(|t| is_block_linear(&input, &t.name))
        {
            let layer: usize = t.name.split('.').nth(2).unwrap().parse().unwrap();
            let want = get(layer, "sparsity");
            let w = m.tensor(&t.name).unwrap().to_f32().unwrap();
            let cols = *t.shape.last().unwrap();
            if method == "magnitude" {
                let k = (want * w.len() as f64).round() as usize;
                assert_eq!(zeros(&w), k, "{method}: {}", t.name);
            } else if method == "wanda" {
                for row in w.chunks(cols) {
                    let k = (want * cols as f64).round() as usize;
                    assert_eq!(zeros(row), k, "{method}: {}", t.name);
                }
            } else {
                let f = zeros(&w) as f64 / w.len() as f64;
                assert!(
                    (f - want).abs() < 0.01,
                    "{method}: {}: {f} vs {want}",
                    t.name
                );
            }
        }
    }
}

#[test]
fn owl_bad_requests_are_usage_errors() {
    let calib = ["--calib", TEXT, "--calib-samples", "8", "--calib-len", "64"];
    let with = |args: &[&'static str]| -> Vec<&'static str> {
        let mut v = args.to_vec();
        v.extend(calib);
        v
    };
    for (args, says) in [
        (
            with(&["--method", "wanda", "--pattern", "2:4", "--owl"]),
            &["owl", "pattern"][..],
        ),
        (
            vec!["--method", "magnitude", "--sparsity", "0.5", "--owl"],
            &["--owl", "--calib"][..],
        ),
        (
            with(&[
                "--method",
                "magnitude",
                "--sparsity",
                "0.5",
                "--owl",
                "--global",
            ]),
            &["owl", "global"][..],
        ),
        (
            with(&[
                "--method",
                "wanda",
                "--sparsity",
                "0.5",
                "--owl",
                "--owl-lambda",
                "0.5",
            ]),
            &["owl", "lambda", "between 0 and 1"][..],
        ),
        (
            with(&[
                "--method",
                "wanda",
                "--sparsity",
                "0.5",
                "--owl",
                "--owl-m",
                "0",
            ]),
            &["owl", "M"][..],
        ),
        (
            with(&["--method", "wanda", "--sparsity", "0.5", "--owl-m", "3"]),
            &["--owl"][..],
        ),
    ] {
        refused(&args, says);
    }
}
