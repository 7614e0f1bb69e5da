#!/usr/bin/env bash
# Benchmark: edgec's .tflite output (fp32 convert, full-int8 and dynamic-range quantize) on
# EfficientNet-Lite0 in LiteRT, beside onnxruntime's quantize_static and TensorFlow's own
# TFLiteConverter (through onnx2tf, in its own venv: scripts/setup-tf-peer.sh, ~2.6 GB once).
# Prints markdown tables and a targets block (see bench_tflite.py). Arguments go to
# bench_tflite.py: --skip-tf, --runs N, --crops K, --calib-crops K, --keep DIR, --edgec-args "...".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh >/dev/null
# shellcheck disable=SC1091
source "${EDGEC_CACHE:-$HOME/.cache/edgec}/env.sh"
cargo build --release --bin edgec
edgec="${CARGO_TARGET_DIR:-$PWD/target}/release/edgec"
if [ ! -d "$EDGEC_CACHE/images/calib" ] || [ ! -d "$EDGEC_CACHE/images/heldout" ]; then
  bash fixtures/fetch-images.sh
fi
tf=()
skip_tf=0
for a in "$@"; do [ "$a" = "--skip-tf" ] && skip_tf=1; done
if [ "$skip_tf" = 0 ]; then
  if tf_py="$(bash scripts/setup-tf-peer.sh)"; then
    tf=(--tf-python "$tf_py")
  else
    tf=(--tf-error "scripts/setup-tf-peer.sh failed (its messages are above)")
  fi
fi
exec "$EDGEC_PY" scripts/bench_tflite.py --edgec "$edgec" "${tf[@]}" "$@"
