#!/usr/bin/env bash
# Benchmark: EfficientNet-Lite0 channel-pruned (edgec prune --macs 0.25) vs unpruned, in
# onnxruntime and in LiteRT (float TFLite): latency (interleaved rounds, medians, ratio), MACs,
# parameters, sizes, and top-1 agreement with the unpruned model on the held-out photos of
# fixtures/fetch-images.sh. Arguments go to bench_prune_channels.py: --macs F (default 0.25) or
# --channels F, --threads N, --runs N, --rounds R, --crops K, --keep DIR, --json FILE.
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
exec "$EDGEC_PY" scripts/bench_prune_channels.py --edgec "$edgec" "$@"
