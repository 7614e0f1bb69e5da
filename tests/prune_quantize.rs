//! A pruned model's zeros survive calibrated quantization (AWQ + GPTQ) in
//! the types with a zero level, exactly where the mask put them, and the
//! write step reports the sparsity before and after encoding, naming the
//! types that cannot hold it.

mod common;

use common::*;
use edgec_formats::{gguf, hf};

const TEXT: &str = "/usr/share/common-licenses/GPL-3";

#[test]
fn calibrated_quantization_keeps_the_mask() {
    let d = tempfile::tempdir().unwrap();
    let pruned = d.path().join("pruned");
    ok(&[
        "prune",
        s(&fixture("tiny-llama")),
        s(&pruned),
        "--method",
        "magnitude",
        "--sparsity",
        "0.5",
    ]);
    let mask_of = |m: &edgec_core::Model, name: &str| -> Vec<bool> {
        m.tensor(name)
            .unwrap()
            .to_f32()
            .unwrap()
            .iter()
            .map(|v| *v == 0.0)
            .collect()
    };
    let p = hf::read(&pruned).unwrap();
    for ty in ["Q8_0", "Q4_0"] {
        let out = d.path().join(format!("{ty}.gguf"));
        let r = ok(&[
            "quantize",
            "--type",
            ty,
            s(&pruned),
            s(&out),
            "--calib",
            TEXT,
            "--calib-samples",
            "4",
            "--calib-len",
            "64",
        ]);
        let stdout = String::from_utf8_lossy(&r.stdout);
        assert!(
            stdout.contains("50.00% zero before encoding, 50.00% after"),
            "{ty}: {stdout}"
        );
        let q = gguf::read_model(&out).unwrap();
        for t in &p.tensors {
            if t.name.starts_with("model.layers.") && t.shape.len() == 2 {
                let (before, after) = (mask_of(&p, &t.name), mask_of(&q, &t.name));
                // every pruned weight is still exactly zero
                let kept = before
                    .iter()
                    .zip(&after)
                    .filter(|(b, a)| **b && **a)
                    .count();
                assert_eq!(
                    kept,
                    before.iter().filter(|b| **b).count(),
                    "{ty} {}",
                    t.name
                );
            }
        }
    }
    // IQ4_NL has no zero level: said, not hidden
    let out = d.path().join("iq4nl.gguf");
    let r = ok(&["quantize", "--type", "IQ4_NL", s(&pruned), s(&out)]);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(
        stdout.contains("50.00% zero before encoding, 0.00% after (IQ4_NL cannot hold every zero"),
        "{stdout}"
    );
}
