#!/usr/bin/env bash
# Benchmark: edgec prune (magnitude, wanda, sparsegpt; 50% and 2:4) vs llm-compressor's
# WandaPruningModifier and SparseGPTModifier on the CPU, on SmolLM2-135M, judged by
# llama-perplexity (see bench_prune.py). llm-compressor runs in a venv of its own
# (scripts/setup-prune-peer.sh: torch, transformers, llmcompressor; about 6 GB once).
# Arguments go to bench_prune.py: --skip-peer (edgec alone), --samples N, --len L,
# --settings 50%,70%,2:4, --methods wanda,sparsegpt,magnitude, --owl [--owl-m M --owl-lambda L]
# (edgec with OWL beside plain edgec), --keep DIR. The work files (GGUFs of about 540 MB,
# one or two at a time) go to $TMPDIR: TMPDIR=/dev/shm keeps them off a full disk.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh >/dev/null
# shellcheck disable=SC1091
source "${EDGEC_CACHE:-$HOME/.cache/edgec}/env.sh"
cargo build --release --bin edgec
edgec="${CARGO_TARGET_DIR:-$PWD/target}/release/edgec"
EDGEC_BIN="$edgec" bash fixtures/fetch-real.sh >/dev/null
peer=()
args=()
skip_peer=0
for a in "$@"; do
  if [ "$a" = "--skip-peer" ]; then skip_peer=1; else args+=("$a"); fi
done
if [ "$skip_peer" = 1 ]; then
  peer=(--peer-error "skipped (--skip-peer)")
elif peer_py="$(bash scripts/setup-prune-peer.sh)"; then
  peer=(--peer-python "$peer_py")
else
  peer=(--peer-error "scripts/setup-prune-peer.sh failed (its messages are above)")
fi
exec "$EDGEC_PY" scripts/bench_prune.py --edgec "$edgec" "${peer[@]}" "${args[@]}"
