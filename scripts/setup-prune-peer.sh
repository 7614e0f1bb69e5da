#!/usr/bin/env bash
# The llm-compressor peer for scripts/bench-prune.sh: a venv of its own with
# llmcompressor (WandaPruningModifier, SparseGPTModifier), the torch and
# transformers it runs on, under $EDGEC_CACHE/prune-peer-venv (default
# ~/.cache/edgec). The benchmark runs it on the CPU only.
#
# llmcompressor 0.14.0.1 wants torch<=2.14.0 and transformers<=5.17.0, numpy 2
# and pyarrow, none of which belong in the test venv, hence a venv of its own.
#
# torch: the x86_64 Linux wheels on PyPI are CUDA builds that pull about 3 GB
# of nvidia-*/cuda-* wheels (unused here: the worker hides every GPU). Where an
# index of CPU-only torch wheels is reachable, set EDGEC_TORCH_CPU_INDEX to its
# URL and torch comes from there instead (same version, no CUDA packages).
# Either way all the versions below are exact; CUDA_PINS only constrain what
# the PyPI torch pulls in (torch itself pins the nvidia-* wheels exactly).
#
# Idempotent: a warm re-run only checks the stamp. Prints the venv's python on
# stdout (the last line); everything else goes to stderr. Exit 1 with the
# reason when it cannot install.
set -euo pipefail

EDGEC_CACHE="${EDGEC_CACHE:-$HOME/.cache/edgec}"
VENV="$EDGEC_CACHE/prune-peer-venv"
PY="$VENV/bin/python"
TORCH_INDEX="${EDGEC_TORCH_CPU_INDEX:-}"

# Exact pins: llmcompressor's resolved closure (pip's choice on 2026-11 for
# llmcompressor==0.14.0.1, Python 3.11), less the CUDA packages.
PIP_REQS=(
  llmcompressor==0.14.0.1
  compressed-tensors==0.19.0
  auto-round==0.15.1
  torch==2.14.0
  transformers==5.17.0
  accelerate==1.16.0
  datasets==5.2.0
  safetensors==0.8.0
  tokenizers==0.23.3
  huggingface-hub==1.33.0
  hf-xet==1.8.0
  numpy==2.4.6
  pyarrow==26.0.1
  pandas==3.1.2
  pydantic==2.14.4
  pydantic-core==2.50.5
  annotated-types==0.8.0
  typing-inspection==0.4.5
  loguru==0.8.0
  pillow==13.0.0
  psutil==7.2.2
  py-cpuinfo==9.0.0
  pyyaml==6.0.4
  regex==2026.12.2
  requests==2.34.2
  charset-normalizer==3.5.3
  idna==3.21
  urllib3==2.8.0
  certifi==2026.10.19.post1
  httpx==0.29.0
  httpcore==1.0.9
  h11==0.16.0
  anyio==4.16.0
  click==8.5.1
  typer==0.29.3
  annotated-doc==0.0.7
  rich==15.0.0
  pygments==2.21.0
  markdown-it-py==4.3.0
  mdurl==0.1.2
  shellingham==1.5.4
  dill==0.4.1
  multiprocess==0.70.19
  xxhash==4.1.0
  fsspec==2026.9.0
  filelock==4.3.2
  networkx==3.6.1
  sympy==1.14.0
  mpmath==1.3.0
  jinja2==3.1.6
  markupsafe==3.0.4
  packaging==26.4
  python-dateutil==4.0.0
  tzdata==2026.6
  tqdm==4.70.1
  typing-extensions==4.16.0
  setuptools==84.2.1
)
# What the PyPI (CUDA) torch 2.14.0 pulls in beyond its own exact nvidia pins.
CUDA_PINS=(
  cuda-bindings==13.5.0
  cuda-pathfinder==1.9.1
  triton==3.8.0
)

log() { printf '[setup-prune-peer] %s\n' "$*" >&2; }

mkdir -p "$EDGEC_CACHE"
exec 9>"$EDGEC_CACHE/.prune-peer-venv.lock"
flock 9

stamp="$VENV/.edgec-pip-stamp"
want="$(printf '%s\n' "python=$(python3 -c 'import sys; print(sys.version.split()[0])')" \
  "torch-index=${TORCH_INDEX:-pypi}" "${PIP_REQS[@]}" "${CUDA_PINS[@]}")"
if [ -x "$PY" ] && [ "$(cat "$stamp" 2>/dev/null || true)" = "$want" ]; then
  log "prune-peer-venv up to date ($VENV)"
else
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || {
    log "python3 has no venv module: apt-get install python3-venv"; exit 1; }
  log "creating $VENV: llmcompressor, torch (${TORCH_INDEX:+CPU-only, }from ${TORCH_INDEX:-PyPI}), transformers"
  start=$SECONDS
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  pip=("$PY" -m pip install -q --disable-pip-version-check --no-cache-dir)
  constraints="$VENV/.edgec-constraints.txt"
  printf '%s\n' "${CUDA_PINS[@]}" >"$constraints"
  fail() {
    log "pip install failed (see above); the llm-compressor rows of the benchmark will be skipped"
    rm -rf "$VENV"
    exit 1
  }
  if [ -n "$TORCH_INDEX" ]; then
    # torch alone from the CPU index (its wheels carry a +cpu local version,
    # which torch==2.14.0 below still matches, so pip keeps it).
    "${pip[@]}" --index-url "$TORCH_INDEX" --no-deps torch==2.14.0 >&2 || fail
  fi
  "${pip[@]}" -c "$constraints" "${PIP_REQS[@]}" >&2 || fail
  if ! out="$(CUDA_VISIBLE_DEVICES= "$PY" -c 'import torch, transformers, llmcompressor' 2>&1)"; then
    printf '%s\n' "$out" >&2
    log "installed, but torch, transformers or llmcompressor does not import (see above)"
    exit 1
  fi
  printf '%s\n' "$want" >"$stamp"
  log "installed in $((SECONDS - start)) s, $(du -sh "$VENV" | cut -f1)"
fi
echo "$PY"
