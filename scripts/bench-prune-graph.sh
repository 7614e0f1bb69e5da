#!/usr/bin/env bash
# Benchmark: EfficientNet-Lite0 with its 1x1 convs pruned (edgec prune --ops pointwise), float
# TFLite with the pruned weights dense vs sparse behind DENSIFY, in LiteRT (XNNPACK): latency
# (interleaved rounds, medians, ratio), load time, size, and top-1 agreement with the unpruned
# model on the photos of fixtures/fetch-images.sh. Arguments go to bench_prune_graph.py:
# --sparsity S (default 0.75), --global, --threads N, --runs N, --rounds R, --crops K, --keep DIR,
# --json FILE.
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
exec "$EDGEC_PY" scripts/bench_prune_graph.py --edgec "$edgec" "$@"
