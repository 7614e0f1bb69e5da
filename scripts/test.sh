#!/usr/bin/env bash
# The whole test suite: unit and CLI tests, then conformance against the real
# runtimes (llama.cpp's tools, gguf-py, HF tokenizers) on real models.
# Installs what it needs on a fresh machine (cached in ~/.cache/edgec).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-env.sh
# shellcheck disable=SC1091
source "${EDGEC_CACHE:-$HOME/.cache/edgec}/env.sh"
# Every module the project's Python files import must come from the lock.
"$EDGEC_PY" scripts/venv/check.py imports

cargo build --bin edgec
export EDGEC_BIN="$PWD/target/debug/edgec"
bash fixtures/fetch-real.sh
bash fixtures/fetch-images.sh

cargo test --workspace
# The conformance tests write models of hundreds of MiB: keep the folders of
# failed tests only, and of the last run only, so repeated runs do not fill the disk.
"$EDGEC_PY" -m pytest tests/conformance -q -p no:cacheprovider \
  -o tmp_path_retention_policy=failed -o tmp_path_retention_count=1 "$@"
