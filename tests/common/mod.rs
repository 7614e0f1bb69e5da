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
