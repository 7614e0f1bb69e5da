//! End-to-end tests of the `edgec` binary on the tiny fixture models.

mod common;

use std::path::Path;

use common::*;
use edgec_core::{DType, Family, GgmlType, LlamaVariant};
use edgec_formats::{gguf, hf};

/// Runs a command that must fail with exit code 1 and a message containing
/// every `needles`; returns stderr.
fn fails(args: &[&str], needles: &[&str]) -> String {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "edgec {args:?}: want exit 1, stderr: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "edgec {args:?}: stderr lacks {n:?}: {err}");
    }
    err
}

/// No temporary or partial output may be left in `dir`.
fn assert_clean(dir: &Path, allowed: &[&str]) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            allowed.contains(&name.as_str()),
            "unexpected leftover {name} in {}",
            dir.display()
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn rms(a: &[f32]) -> f32 {
    (a.iter().map(|x| x * x).sum::<f32>() / a.len().max(1) as f32).sqrt()
}

#[test]
fn f32_round_trip_is_exact() {
    for model in ["tiny-llama", "tiny-bert", "tiny-llama-sp", "tiny-qwen2"] {
        let d = tempfile::tempdir().unwrap();
        let g = d.path().join("m.gguf");
        let back = d.path().join("back");
        ok(&["convert", s(&fixture(model)), s(&g), "--dtype", "f32"]);
        ok(&["convert", s(&g), s(&back), "--dtype", "f32"]);
        let orig = hf::read(&fixture(model)).unwrap();
        let again = hf::read(&back).unwrap();
        // GGUF has one `llama` architecture for Llama and Mistral checkpoints.
        let mut family = orig.meta.family.clone();
        if let Some(Family::Llama(p)) = &mut family {
            if p.variant == LlamaVariant::Mistral {
                p.variant = LlamaVariant::Llama;
            }
        }
        assert_eq!(family, again.meta.family, "{model}: family changed");
        assert_eq!(orig.meta.vocab, again.meta.vocab, "{model}: vocab changed");
        for t in &orig.tensors {
            let u = again
                .tensor(&t.name)
                .unwrap_or_else(|| panic!("{model}: lost {}", t.name));
            assert_eq!(u.shape, t.shape);
            assert_eq!(
                u.to_f32().unwrap(),
                t.to_f32().unwrap(),
                "{model}: {} changed",
                t.name
            );
        }
        assert_eq!(orig.tensors.len(), again.tensors.len());
    }
}

#[test]
fn f16_round_trip_is_exact_for_f16_weights() {
    // tiny-bert is stored in F16, so F16 GGUF and back loses nothing.
    let d = tempfile::tempdir().unwrap();
    let g = d.path().join("m.gguf");
    let back = d.path().join("back");
    ok(&["convert", s(&fixture("tiny-bert")), s(&g), "--dtype", "f16"]);
    ok(&["convert", s(&g), s(&back), "--dtype", "f16"]);
    let orig = hf::read(&fixture("tiny-bert")).unwrap();
    let again = hf::read(&back).unwrap();
    for t in &orig.tensors {
        let u = again.tensor(&t.name).unwrap();
        assert_eq!(u.dtype, DType::F16);
        assert_eq!(u.bytes(), t.bytes(), "{} changed", t.name);
    }
}

/// Every type the writer emits, as a whole-model preset: the file reads
/// back, carries the chosen types and is within the type's error bound.
#[test]
fn every_type_round_trips_within_its_bound() {
    // Relative RMS error bounds per base type, loose enough for random weights.
    let bounds: &[(&str, f32)] = &[
        ("Q8_0", 0.01),
        ("Q6_K", 0.03),
        ("Q5_1", 0.05),
        ("Q5_0", 0.05),
        ("Q5_K_M", 0.05),
        ("Q4_1", 0.1),
        ("Q4_0", 0.1),
        ("IQ4_NL", 0.1),
        ("Q4_K_M", 0.1),
        ("Q4_K_S", 0.1),
        ("Q3_K_M", 0.2),
        ("Q2_K", 0.4),
        ("F16", 0.001),
        ("BF16", 0.01),
    ];
    let orig = hf::read(&fixture("tiny-llama")).unwrap();
    let d = tempfile::tempdir().unwrap();
    for (preset, bound) in bounds {
        let g = d.path().join(format!("{preset}.gguf"));
        ok(&[
            "quantize",
            s(&fixture("tiny-llama")),
            s(&g),
            "--type",
            preset,
        ]);
        let m = gguf::read_model(&g).unwrap();
        let file = gguf::reader::read(&g).unwrap();
        assert_eq!(
            file.metadata.get_u64("general.file_type"),
            gguf::file_type_id(preset).map(u64::from),
            "{preset}: file_type"
        );
        for t in &orig.tensors {
            let q = m.tensor(&t.name).unwrap();
            let (a, b) = (t.to_f32().unwrap(), q.to_f32().unwrap());
            let diff: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
            let rel = rms(&diff) / rms(&a).max(1e-12);
            assert!(
                rel <= *bound,
                "{preset}: {} relative RMS error {rel} > {bound} ({})",
                t.name,
                q.dtype
            );
        }
    }
}

#[test]
fn quantize_picks_llama_cpp_types() {
    let d = tempfile::tempdir().unwrap();
    let g = d.path().join("m.gguf");
    let out = ok(&[
        "quantize",
        "--bits",
        "4",
        s(&fixture("tiny-llama")),
        s(&g),
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["preset"], "Q4_K_M");
    let file = gguf::reader::read(&g).unwrap();
    let ty = |n: &str| file.tensors.iter().find(|t| t.name == n).unwrap().dtype;
    // Rows of 64 are not whole 256-blocks: Q4_K falls back, norms stay F32.
    assert_eq!(ty("blk.0.attn_norm.weight"), DType::F32);
    assert_eq!(ty("blk.1.attn_q.weight"), DType::Ggml(GgmlType::Q5_0));
    assert_eq!(ty("output.weight"), DType::Ggml(GgmlType::Q8_0));
}

#[test]
fn output_is_deterministic_across_runs_and_threads() {
    let d = tempfile::tempdir().unwrap();
    let mut outs = vec![];
    for (i, threads) in ["1", "2", "2"].iter().enumerate() {
        let g = d.path().join(format!("{i}.gguf"));
        ok(&[
            "--threads",
            threads,
            "quantize",
            "--type",
            "Q4_K_M",
            s(&fixture("tiny-llama-sp")),
            s(&g),
        ]);
        outs.push(std::fs::read(&g).unwrap());
    }
    assert_eq!(outs[0], outs[1], "--threads 1 and 2 differ");
    assert_eq!(outs[1], outs[2], "two runs differ");
}

#[test]
fn inspect_reports_types_and_totals() {
    let d = tempfile::tempdir().unwrap();
    let g = d.path().join("m.gguf");
    ok(&[
        "quantize",
        "--type",
        "Q8_0",
        s(&fixture("tiny-bert")),
        s(&g),
    ]);
    let out = ok(&["inspect", s(&g), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["architecture"], "bert");
    assert_eq!(v["metadata"]["general.file_type"], 7);
    let tensors = v["tensors"].as_array().unwrap();
    let q = tensors
        .iter()
        .find(|t| t["name"] == "blk.0.attn_q.weight")
        .unwrap();
    assert_eq!(q["type"], "Q8_0");
    assert!((q["bits_per_weight"].as_f64().unwrap() - 8.5).abs() < 1e-9);
    let text = ok(&["inspect", s(&fixture("tiny-llama"))]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("architecture: llama"));
}

#[test]
fn bad_inputs_fail_cleanly() {
    let d = tempfile::tempdir().unwrap();
    let out_dir = d.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("m.gguf");

    // Truncated weights.
    let trunc = d.path().join("trunc");
    copy_dir(&fixture("tiny-llama"), &trunc);
    let w = trunc.join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    fails(&["quantize", s(&trunc), s(&out)], &["model.safetensors"]);
    assert_clean(&out_dir, &[]);

    // A header length past the end of the file.
    let mut b = bytes.clone();
    b[0..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&w, &b).unwrap();
    fails(&["quantize", s(&trunc), s(&out)], &["model.safetensors"]);

    // Unknown architecture.
    let arch = d.path().join("arch");
    copy_dir(&fixture("tiny-llama"), &arch);
    let cfg = std::fs::read_to_string(arch.join("config.json")).unwrap();
    std::fs::write(
        arch.join("config.json"),
        cfg.replace("LlamaForCausalLM", "GPTNeoXForCausalLM"),
    )
    .unwrap();
    fails(
        &["quantize", s(&arch), s(&out)],
        &["config.json", "GPTNeoXForCausalLM", "LlamaForCausalLM"],
    );

    // A shape that disagrees with config.json.
    let shape = d.path().join("shape");
    copy_dir(&fixture("tiny-llama"), &shape);
    let cfg = std::fs::read_to_string(shape.join("config.json")).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    let mut cfg = cfg.as_object().unwrap().clone();
    cfg.insert("intermediate_size".into(), serde_json::json!(96));
    std::fs::write(
        shape.join("config.json"),
        serde_json::to_string(&cfg).unwrap(),
    )
    .unwrap();
    fails(
        &["quantize", s(&shape), s(&out)],
        &["model.safetensors", "mlp", "shape"],
    );

    // NaN weights: an error unless allowed.
    let nan = d.path().join("nan.gguf");
    ok(&["convert", s(&fixture("tiny-llama")), s(&nan)]);
    let mut g = std::fs::read(&nan).unwrap();
    let f = gguf::reader::read(&nan).unwrap();
    let t = f
        .tensors
        .iter()
        .find(|t| t.name == "blk.1.ffn_up.weight")
        .unwrap();
    let edgec_core::TensorData::Mapped { offset, .. } = t.data else {
        unreachable!()
    };
    g[offset..offset + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    drop(f);
    std::fs::write(&nan, &g).unwrap();
    fails(
        &["quantize", s(&nan), s(&out)],
        &[
            "nan.gguf",
            "model.layers.1.mlp.up_proj.weight",
            "non-finite",
            "--allow-nonfinite",
        ],
    );
    assert_clean(&out_dir, &[]);
    ok(&[
        "quantize",
        "--allow-nonfinite",
        "--type",
        "Q8_0",
        s(&nan),
        s(&out),
    ]);
    std::fs::remove_file(&out).unwrap();

    // Output equal to the input.
    let same = d.path().join("same.gguf");
    ok(&["convert", s(&fixture("tiny-bert")), s(&same)]);
    let before = std::fs::read(&same).unwrap();
    fails(&["quantize", s(&same), s(&same)], &["same.gguf", "input"]);
    assert_eq!(
        std::fs::read(&same).unwrap(),
        before,
        "the input was touched"
    );

    // An output folder that does not exist, and one that is a file.
    fails(
        &[
            "quantize",
            s(&fixture("tiny-bert")),
            s(&d.path().join("nope/m.gguf")),
        ],
        &["nope"],
    );
    let file = d.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    fails(
        &[
            "quantize",
            s(&fixture("tiny-bert")),
            s(&file.join("m.gguf")),
        ],
        &["file"],
    );

    // Not a model at all.
    let junk = d.path().join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    fails(&["inspect", s(&junk)], &["junk.gguf"]);
    assert_clean(&out_dir, &[]);
}

#[test]
fn usage_errors_exit_2() {
    let out = run(&["quantize", "--bits", "7", "a", "b.gguf"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bits 7"));
    let out = run(&["quantize"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

/// A sharded copy of tiny-llama (`model.safetensors.index.json` and two
/// shards) gives the same GGUF as the single file.
#[test]
fn sharded_safetensors_read_like_one_file() {
    use edgec_formats::safetensors::{write_file, LazyTensor};
    let d = tempfile::tempdir().unwrap();
    let sharded = d.path().join("tiny-llama");
    std::fs::create_dir(&sharded).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture("tiny-llama").join(f), sharded.join(f)).unwrap();
    }
    let model = hf::read(&fixture("tiny-llama")).unwrap();
    let (first, second) = model.tensors.split_at(model.tensors.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [first, second].into_iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        let lazy: Vec<LazyTensor> = part
            .iter()
            .map(|t| LazyTensor {
                name: t.name.clone(),
                shape: t.shape.clone(),
                dtype: t.dtype,
                produce: Box::new(move || t.bytes().to_vec()),
            })
            .collect();
        write_file(&sharded.join(&file), &lazy).unwrap();
        for t in part {
            weight_map.insert(t.name.clone(), serde_json::json!(file));
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();

    let a = d.path().join("single.gguf");
    let b = d.path().join("sharded.gguf");
    ok(&[
        "quantize",
        "--type",
        "Q8_0",
        s(&fixture("tiny-llama")),
        s(&a),
    ]);
    ok(&["quantize", "--type", "Q8_0", s(&sharded), s(&b)]);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

    // An index that points at a shard without the tensor is an error naming the shard.
    let mut broken = index.clone();
    broken["weight_map"]["model.norm.weight"] =
        serde_json::json!("model-00001-of-00002.safetensors");
    assert!(!first.iter().any(|t| t.name == "model.norm.weight"));
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        broken.to_string(),
    )
    .unwrap();
    fails(
        &["quantize", s(&sharded), s(&b)],
        &["model-00001-of-00002.safetensors", "model.norm.weight"],
    );
}
