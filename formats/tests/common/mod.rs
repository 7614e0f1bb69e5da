//! What several test files share: where the shared real models are, and
//! builders of small IR graphs. (Each test file uses part of it.)
#![allow(dead_code)]

use std::path::PathBuf;

use edgec_core::{DType, Dim, ValueInfo, Window};

/// A fixed-shape f32 graph input or output.
pub fn vi(name: &str, shape: &[usize]) -> ValueInfo {
    ValueInfo {
        name: name.into(),
        dtype: DType::F32,
        shape: shape.iter().map(|&d| Dim::Fixed(d)).collect(),
    }
}

/// A square `k`×`k` window with stride `s`, ONNX-order `pads`, no dilation.
pub fn window(k: usize, s: usize, pads: [usize; 4]) -> Window {
    Window {
        kernel: vec![k, k],
        strides: vec![s, s],
        pads: pads.to_vec(),
        dilations: vec![1, 1],
    }
}

/// EfficientNet-Lite0 from the shared models folder: `$EDGEC_SHARED_MODELS`
/// (set by scripts/setup-env.sh's env file), else `../shared/models` beside
/// the project. Panics with what to do when it is missing.
pub fn efficientnet() -> PathBuf {
    let candidates = std::env::var_os("EDGEC_SHARED_MODELS")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/models")]);
    for dir in candidates {
        let path = dir.join("efficientnet_lite0.onnx");
        if path.is_file() {
            return path;
        }
    }
    panic!(
        "efficientnet_lite0.onnx is missing: run `bash scripts/setup-env.sh`, then \
         `source ~/.cache/edgec/env.sh` (it sets EDGEC_SHARED_MODELS)"
    );
}
