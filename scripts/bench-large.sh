#!/usr/bin/env bash
# Benchmark: peak memory of calibrated Q4_K_M on a random 1.2B llama
# (see bench_large.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh >/dev/null
# shellcheck disable=SC1091
source "${EDGEC_CACHE:-$HOME/.cache/edgec}/env.sh"
cargo build --release --bin edgec
EDGEC_BIN="$PWD/target/release/edgec" bash fixtures/fetch-real.sh >/dev/null
exec "$EDGEC_PY" scripts/bench_large.py --edgec "$PWD/target/release/edgec" "$@"
