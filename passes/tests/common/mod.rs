//! Shared helpers for the codec tests: a deterministic generator of test rows,
//! error measures, and the gguf-py bridge.
#![allow(dead_code)]

pub mod llama_ref;

use std::path::{Path, PathBuf};
use std::process::Command;

use edgec_core::ggml::dequant::dequantize;
use edgec_core::GgmlType;
use edgec_passes::ggml_quant::quantize_row;

/// splitmix64: small, fast, and the same numbers on every machine.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn gaussian(&mut self) -> f64 {
        // Box-Muller; 1 - u keeps the log finite.
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    /// Student-t with `nu` degrees of freedom (heavy tails for small nu).
    pub fn student_t(&mut self, nu: u32) -> f64 {
        let z = self.gaussian();
        let chi2: f64 = (0..nu).map(|_| self.gaussian().powi(2)).sum();
        z / (chi2 / nu as f64).sqrt()
    }
    pub fn laplace(&mut self) -> f64 {
        let u = self.uniform() - 0.5;
        -u.signum() * (1.0 - 2.0 * u.abs()).max(1e-300).ln()
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// The distributions test rows are drawn from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dist {
    Gaussian,
    Uniform,
    Zeros,
    /// Gaussian with one value 1000× larger.
    Outlier,
    /// Gaussian scaled to ~1e-8 (f16 scales underflow to subnormals or zero).
    Tiny,
    /// Gaussian whose largest-magnitude value is made negative.
    NegativeMax,
    /// Student-t, 3 degrees of freedom.
    StudentT,
    Laplace,
    /// Small integers and halves: many exact rounding ties.
    Ties,
    /// Gaussian scaled to ~1e5 (f16 scales overflow).
    Huge,
    /// All values positive (mins are 0).
    Positive,
}

impl Dist {
    pub const PARITY: [Dist; 11] = [
        Dist::Gaussian,
        Dist::Uniform,
        Dist::Zeros,
        Dist::Outlier,
        Dist::Tiny,
        Dist::NegativeMax,
        Dist::StudentT,
        Dist::Laplace,
        Dist::Ties,
        Dist::Huge,
        Dist::Positive,
    ];
}

/// One row of `n` values from `dist`, scaled like a weight matrix (σ ≈ 0.02).
pub fn row(rng: &mut Rng, dist: Dist, n: usize) -> Vec<f32> {
    let s = 0.02;
    let mut v: Vec<f32> = match dist {
        Dist::Gaussian | Dist::Outlier | Dist::NegativeMax => {
            (0..n).map(|_| (rng.gaussian() * s) as f32).collect()
        }
        Dist::Uniform => (0..n)
            .map(|_| ((rng.uniform() * 2.0 - 1.0) * s) as f32)
            .collect(),
        Dist::Zeros => vec![0.0; n],
        Dist::Tiny => (0..n).map(|_| (rng.gaussian() * 1e-8) as f32).collect(),
        Dist::StudentT => (0..n).map(|_| (rng.student_t(3) * s) as f32).collect(),
        Dist::Laplace => (0..n).map(|_| (rng.laplace() * s) as f32).collect(),
        Dist::Ties => (0..n)
            .map(|_| ((rng.next_u64() % 33) as f32 - 16.0) * 0.5)
            .collect(),
        Dist::Huge => (0..n).map(|_| (rng.gaussian() * 1e5) as f32).collect(),
        Dist::Positive => (0..n).map(|_| (rng.uniform() * s + 0.001) as f32).collect(),
    };
    match dist {
        Dist::Outlier if n > 0 => {
            let i = (rng.next_u64() % n as u64) as usize;
            v[i] = 1000.0 * s as f32 * if rng.uniform() < 0.5 { -1.0 } else { 1.0 };
        }
        Dist::NegativeMax => {
            // In every 32-block, make the largest-magnitude value negative.
            for b in v.chunks_mut(32) {
                let i = (0..b.len())
                    .max_by(|&a, &c| b[a].abs().total_cmp(&b[c].abs()))
                    .unwrap_or(0);
                if let Some(x) = b.get_mut(i) {
                    *x = -x.abs() * 1.5;
                }
            }
        }
        _ => {}
    }
    v
}

/// Quantizes every row of `x` (rows of `n`) with our encoder.
pub fn encode(ty: GgmlType, x: &[f32], n: usize, importance: Option<&[f32]>) -> Vec<u8> {
    let mut out = Vec::new();
    for r in x.chunks(n) {
        quantize_row(ty, r, importance, &mut out).unwrap();
    }
    out
}

pub fn decode(ty: GgmlType, bytes: &[u8], len: usize) -> Vec<f32> {
    let mut y = vec![0f32; len];
    dequantize(ty, bytes, &mut y).unwrap();
    y
}

/// Mean squared error, in f64.
pub fn mse(x: &[f32], y: &[f32]) -> f64 {
    assert_eq!(x.len(), y.len());
    x.iter()
        .zip(y)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum::<f64>()
        / x.len().max(1) as f64
}

/// Σ w (x − y)² / Σ w, with `w` repeated every `w.len()` elements.
pub fn weighted_mse(x: &[f32], y: &[f32], w: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (i, (&a, &b)) in x.iter().zip(y).enumerate() {
        let wi = w[i % w.len()] as f64;
        num += wi * (a as f64 - b as f64).powi(2);
        den += wi;
    }
    num / den
}

pub fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

/// A fresh scratch directory under the system temp dir.
pub fn scratch_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "edgec-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn write_f32(path: &Path, x: &[f32]) {
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

pub fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

const SETUP_HINT: &str = "run scripts/setup-env.sh and `source ~/.cache/edgec/env.sh`";

/// The Python interpreter (from `EDGEC_PY`) that has gguf-py; panics — the
/// test fails, it does not skip — when it is missing or cannot import gguf.
pub fn gguf_python() -> PathBuf {
    let Some(py) = std::env::var_os("EDGEC_PY") else {
        panic!("EDGEC_PY is not set: {SETUP_HINT}");
    };
    let out = Command::new(&py)
        .arg(gguf_script())
        .arg("--check")
        .output()
        .unwrap_or_else(|e| panic!("cannot run EDGEC_PY={py:?} ({e}): {SETUP_HINT}"));
    if !out.status.success() {
        panic!(
            "EDGEC_PY={py:?} cannot import gguf 0.19.0 and numpy ({}): {SETUP_HINT}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    PathBuf::from(py)
}

pub fn gguf_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gguf_ref.py")
}

/// One job for `gguf_ref.py`.
pub enum Job {
    /// gguf-py quantizes the f32 file (rows of `n`) to `ty`.
    Quant {
        ty: GgmlType,
        n: usize,
        src: PathBuf,
        dst: PathBuf,
    },
    /// gguf-py dequantizes the bytes (rows of `n` elements) of `ty` to f32.
    Dequant {
        ty: GgmlType,
        n: usize,
        src: PathBuf,
        dst: PathBuf,
    },
}

/// Runs all jobs in one interpreter.
pub fn run_gguf_py(dir: &Path, jobs: &[Job]) {
    let py = gguf_python();
    let mut text = String::new();
    for j in jobs {
        let (op, ty, n, src, dst) = match j {
            Job::Quant { ty, n, src, dst } => ("quant", ty, n, src, dst),
            Job::Dequant { ty, n, src, dst } => ("dequant", ty, n, src, dst),
        };
        text.push_str(&format!(
            "{op}\t{}\t{n}\t{}\t{}\n",
            ty.name(),
            src.display(),
            dst.display()
        ));
    }
    let jobs_path = dir.join("jobs.tsv");
    std::fs::write(&jobs_path, text).unwrap();
    let out = Command::new(&py)
        .arg(gguf_script())
        .arg(&jobs_path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {py:?}: {e}: {SETUP_HINT}"));
    assert!(
        out.status.success(),
        "gguf_ref.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// f32 equality that treats any two NaNs as equal and tells ±0 apart.
pub fn same_f32(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}
