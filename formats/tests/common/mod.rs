//! Where the tests find the shared real models.

use std::path::PathBuf;

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
