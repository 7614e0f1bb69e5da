#!/usr/bin/env bash
# Benchmark: edgec quantize vs onnxruntime.quantization on ONNX models, 2 threads:
# EfficientNet-Lite0 int8 static QDQ (quantize_static) and all-MiniLM-L6-v2 int8
# (quantize_dynamic); accuracy, size, latency, quantizer time and peak RSS.
# Prints markdown tables (see bench_onnx.py). Arguments go to bench_onnx.py:
# --crops-calib K, --crops-heldout K, --runs N, --skip-minilm, --keep, --edgec-args "...".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh >/dev/null
# shellcheck disable=SC1091
source "${EDGEC_CACHE:-$HOME/.cache/edgec}/env.sh"
cargo build --release --bin edgec
if [ ! -d "$EDGEC_CACHE/images/calib" ] || [ ! -d "$EDGEC_CACHE/images/heldout" ]; then
  bash fixtures/fetch-images.sh
fi
exec "$EDGEC_PY" scripts/bench_onnx.py --edgec "$PWD/target/release/edgec" "$@"
