#!/usr/bin/env bash
# The TensorFlow peer for scripts/bench-tflite.sh: a venv of its own with
# onnx2tf (ONNX -> TensorFlow SavedModel) and the TensorFlow whose
# TFLiteConverter it uses, under $EDGEC_CACHE/tf-venv (default ~/.cache/edgec).
#
# onnx2tf 1.29.24 pins its dependencies exactly (tensorflow 2.19.0, tf-keras,
# onnx 1.19.1, onnxruntime 1.23.0, numpy 1.26.4, protobuf 4.25.5, ...), which
# clash with the test venv's (numpy 2.4, onnx 1.23, protobuf 7), hence its own
# venv. About 2.6 GB on disk and under a minute to install, all binary wheels.
#
# Idempotent: a warm re-run only checks the stamp. Prints the venv's python on
# stdout (the last line); everything else goes to stderr. Exit 1 with the
# reason when it cannot install.
set -euo pipefail

EDGEC_CACHE="${EDGEC_CACHE:-$HOME/.cache/edgec}"
VENV="$EDGEC_CACHE/tf-venv"
PY="$VENV/bin/python"

# Exact pins: onnx2tf's own (it pins every dependency it declares, exactly).
PIP_REQS=(
  onnx2tf==1.29.24
  tensorflow==2.19.0
  tf-keras==2.19.0
  onnx==1.19.1
  onnxruntime==1.23.0
  onnxsim==0.4.36
  onnxoptimizer==0.4.2
  onnx-graphsurgeon==0.5.8
  simple-onnx-processing-tools==1.1.32
  ai-edge-litert==2.1.0
  numpy==1.26.4
  protobuf==4.25.5
  h5py==3.11.0
  ml-dtypes==0.5.1
  flatbuffers==25.12.19
  opencv-python==4.11.0.86
  psutil==5.9.5
  requests==2.32.5
)

log() { printf '[setup-tf-peer] %s\n' "$*" >&2; }

mkdir -p "$EDGEC_CACHE"
exec 9>"$EDGEC_CACHE/.tf-venv.lock"
flock 9

stamp="$VENV/.edgec-pip-stamp"
want="$(printf '%s\n' "python=$(python3 -c 'import sys; print(sys.version.split()[0])')" "${PIP_REQS[@]}")"
if [ -x "$PY" ] && [ "$(cat "$stamp" 2>/dev/null || true)" = "$want" ]; then
  log "tf-venv up to date ($VENV)"
else
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || {
    log "python3 has no venv module: apt-get install python3-venv"; exit 1; }
  log "creating $VENV and installing ${PIP_REQS[*]} (about 2.6 GB, a minute)"
  start=$SECONDS
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  if ! "$PY" -m pip install -q --disable-pip-version-check "${PIP_REQS[@]}" >&2; then
    log "pip install failed (see above); the TensorFlow rows of the benchmark will be skipped"
    rm -rf "$VENV"
    exit 1
  fi
  if ! out="$(TF_CPP_MIN_LOG_LEVEL=3 CUDA_VISIBLE_DEVICES= "$PY" -c 'import tensorflow, onnx2tf' 2>&1)"; then
    printf '%s\n' "$out" >&2
    log "installed, but tensorflow or onnx2tf does not import (see above)"
    exit 1
  fi
  printf '%s\n' "$want" >"$stamp"
  log "installed in $((SECONDS - start)) s, $(du -sh "$VENV" | cut -f1)"
fi
echo "$PY"
