#!/usr/bin/env bash
# Benchmark: edgec quantize --target-bpw (mixed precision) vs the calibrated
# Q4_K_M preset at the same size, on SmolLM2-135M (see bench_mixed.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh >/dev/null
# shellcheck disable=SC1091
source "${EDGEC_CACHE:-$HOME/.cache/edgec}/env.sh"
cargo build --release --bin edgec
EDGEC_BIN="$PWD/target/release/edgec" bash fixtures/fetch-real.sh >/dev/null
exec "$EDGEC_PY" scripts/bench_mixed.py --edgec "$PWD/target/release/edgec" "$@"
