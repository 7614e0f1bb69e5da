#!/usr/bin/env bash
# Benchmark: edgec vs llama.cpp's llama-quantize on SmolLM2-135M (f32), the
# same input, 2 threads: wall time and peak RSS of quantizing to Q4_K_M, and
# KL-divergence against f32 (judged by llama-perplexity --kl-divergence) for
# Q8_0, Q4_0 and Q4_K_M from both tools. Prints a markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
# shellcheck disable=SC1091
source "${EDGEC_CACHE:-$HOME/.cache/edgec}/env.sh"
cargo build --release --bin edgec
EDGEC_BIN="$PWD/target/release/edgec" bash fixtures/fetch-real.sh >/dev/null
exec "$EDGEC_PY" scripts/bench_quantize.py --edgec "$PWD/target/release/edgec" "$@"
