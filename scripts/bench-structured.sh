#!/usr/bin/env bash
# Benchmark: structured pruning of SmolLM2-135M (FFN -25% uniform and non-uniform, a third of
# the heads, 6 of 30 layers), judged by llama-perplexity and timed in llama.cpp beside the
# dense model (see bench_structured.py). Arguments go to bench_structured.py: --samples N,
# --len L, --settings a,b, --speed a,b, --repeat K. Work files go to $TMPDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh >/dev/null
# shellcheck disable=SC1091
source "${EDGEC_CACHE:-$HOME/.cache/edgec}/env.sh"
cargo build --release --bin edgec
edgec="${CARGO_TARGET_DIR:-$PWD/target}/release/edgec"
EDGEC_BIN="$edgec" bash fixtures/fetch-real.sh >/dev/null
exec "$EDGEC_PY" scripts/bench_structured.py --edgec "$edgec" "$@"
