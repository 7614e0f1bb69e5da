//! Helpers the end-to-end tests share: running the built `edgec` and
//! finding the fixtures.
#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn edgec() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edgec"))
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

pub fn run(args: &[&str]) -> Output {
    edgec().args(args).output().expect("edgec runs")
}

/// Runs edgec and asserts it succeeds.
pub fn ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "edgec {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Deterministic values in (-1, 1), all distinct in magnitude in practice.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// An f32 graph value of a fixed shape.
pub fn vi(name: &str, shape: &[usize]) -> edgec_core::ValueInfo {
    edgec_core::ValueInfo {
        name: name.into(),
        dtype: edgec_core::DType::F32,
        shape: shape.iter().map(|&d| edgec_core::Dim::Fixed(d)).collect(),
    }
}

/// A square `k`×`k` window of stride 1 padded `pad` on every side.
pub fn window(k: usize, pad: usize) -> edgec_core::Window {
    edgec_core::Window {
        kernel: vec![k, k],
        strides: vec![1, 1],
        pads: vec![pad; 4],
        dilations: vec![1, 1],
    }
}
