"""Shared set-up of the conformance tests: where edgec, llama.cpp's tools, the
fixtures and the real models are. A missing prerequisite fails the test with
what to run; nothing is skipped silently."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("EDGEC_CACHE", Path.home() / ".cache" / "edgec"))
SETUP_HINT = "run `bash scripts/setup-env.sh`, then `source $EDGEC_CACHE/env.sh` (EDGEC_CACHE defaults to ~/.cache/edgec)"
FETCH_HINT = "run `bash fixtures/fetch-real.sh` (after scripts/setup-env.sh)"


def need(condition: bool, message: str) -> None:
    """Fails the test (never skips it) when a prerequisite is missing."""
    if not condition:
        pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def edgec_bin() -> Path:
    path = Path(os.environ.get("EDGEC_BIN", REPO / "target" / "debug" / "edgec"))
    need(path.is_file() and os.access(path, os.X_OK), f"edgec binary {path} is missing: run `cargo build --bin edgec`")
    return path


@pytest.fixture(scope="session")
def llama_bin() -> Path:
    value = os.environ.get("LLAMA_BIN")
    need(bool(value), f"LLAMA_BIN (the folder of llama.cpp's tools) is not set: {SETUP_HINT}")
    path = Path(value)
    need(path.is_dir(), f"LLAMA_BIN={path} is not a folder: {SETUP_HINT}")
    return path


def llama_tool(llama_bin: Path, name: str) -> Path:
    tool = llama_bin / name
    need(tool.is_file() and os.access(tool, os.X_OK), f"{tool} is missing: {SETUP_HINT}")
    return tool


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return REPO / "fixtures"


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return CACHE / "models"


def run(cmd: list, timeout: float = 600, check_exit: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Runs a command; a failure fails the test with its output (unless
    `check_exit` is false, for commands whose exit code is the point)."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, timeout=timeout, **kwargs)
    if check_exit and proc.returncode != 0:
        out = proc.stdout.decode("utf-8", "replace")[-2000:]
        err = proc.stderr.decode("utf-8", "replace")[-4000:]
        pytest.fail(
            f"`{' '.join(map(str, cmd))}` exited with {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}",
            pytrace=False,
        )
    return proc


def which(name: str) -> str | None:
    return shutil.which(name)


# --------------------------------------------------------------- shared models and runners
EFFNET = Path(os.environ.get("EDGEC_SHARED_MODELS", REPO.parent / "shared" / "models")) / "efficientnet_lite0.onnx"
# (scripts/setup-env.sh's env file sets EDGEC_SHARED_MODELS to the folder it found)
IMAGES = CACHE / "images"
FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def effnet() -> Path:
    need(EFFNET.is_file(), f"{EFFNET} is missing: run `bash scripts/setup-env.sh`, then `source ~/.cache/edgec/env.sh` "
         "(it sets EDGEC_SHARED_MODELS to the shared models folder)")
    return EFFNET


@pytest.fixture(scope="session")
def photos() -> tuple[Path, Path]:
    """The calibration and held-out photo folders of fixtures/fetch-images.sh."""
    calib, heldout = IMAGES / "calib", IMAGES / "heldout"
    need(calib.is_dir() and heldout.is_dir(), f"{IMAGES} is missing its photos: run `bash fixtures/fetch-images.sh`")
    return calib, heldout


@pytest.fixture(scope="session")
def litert():
    """LiteRT's interpreter module (ai-edge-litert)."""
    try:
        from ai_edge_litert import interpreter
    except ImportError:
        need(False, f"ai-edge-litert is not installed in this Python: {SETUP_HINT} "
             "(it pins ai-edge-litert==2.3.0), and run pytest with $EDGEC_PY")
    return interpreter


@pytest.fixture(scope="session")
def fashion(models_dir) -> tuple[Path, Path]:
    """The Fashion-MNIST classifier and the folder of its idx files."""
    model = models_dir / "fashion-mlp.onnx"
    need(model.is_file() and all((FASHION / f"{s}-images-idx3-ubyte.gz").is_file() for s in ("train", "t10k")),
         "the Fashion-MNIST data or classifier is missing: run `bash fixtures/fetch-images.sh` (as root)")
    return model, FASHION


def litert_interp(litert, path: Path):
    """A LiteRT interpreter of `path`, 2 threads, tensors allocated."""
    it = litert.Interpreter(model_path=str(path), num_threads=2)
    it.allocate_tensors()
    return it


def ort_session(model: Path):
    """An onnxruntime session of `model` (CPU, 2 threads)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])


def ort_run(model: Path, feeds: dict) -> list:
    """onnxruntime's outputs of `model` on `feeds` (CPU, 2 threads)."""
    return ort_session(model).run(None, feeds)


def edgec_run(edgec_bin, model: Path, feeds: dict, tmp: Path) -> dict:
    """`edgec run` of `model` on `feeds`, through safetensors files in `tmp`."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    inputs, outputs = tmp / f"{model.stem}.in.safetensors", tmp / f"{model.stem}.out.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in feeds.items()}, str(inputs))
    run([edgec_bin, "run", model, "--inputs", inputs, "--output", outputs])
    return load_file(str(outputs))


def rel_err(ours, ref) -> float:
    """max |ours - ref| / max |ref|, shapes checked."""
    import numpy as np

    assert ours.shape == ref.shape, f"shape {ours.shape} != {ref.shape}"
    return float(np.abs(ours.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-12))


def tiny_cnn(path: Path, seed: int, se_and_bn: bool) -> Path:
    """Writes EfficientNet's shape in small as ONNX at `path`: x [1, 3, 32, 32]
    -> 3x3 s2 stem -> (1x1 expand -> ReLU6 -> depthwise 3x3 -> ReLU6 -> 1x1
    project) x2 with residual adds -> 1x1 head -> global pool -> flatten ->
    Gemm. `se_and_bn` adds a BatchNorm after the stem and a squeeze-excite
    (pool, 1x1, ReLU, 1x1, sigmoid, Mul) before each projection."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(np.array(0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6, np.float32), "hi")]
    nodes = []

    def conv(x, name, cin, cout, k, s=1, group=1, act=True):
        w = (rng.normal(size=(cout, cin // group, k, k)) * (1.5 / np.sqrt(cin // group * k * k))).astype(np.float32)
        b = (rng.normal(size=cout) * 0.1).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"{name}_w"), numpy_helper.from_array(b, f"{name}_b")])
        nodes.append(helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [f"{name}_c" if act else name],
                                      kernel_shape=[k, k], strides=[s, s], group=group, auto_pad="SAME_UPPER"))
        if act:
            nodes.append(helper.make_node("Clip", [f"{name}_c", "lo", "hi"], [name]))
        return name

    if se_and_bn:
        x = conv("input", "stem", 3, 32, 3, s=2, act=False)
        c = 32
        for p, v in (("scale", 1 + 0.2 * rng.normal(size=c)), ("bias", 0.1 * rng.normal(size=c)),
                     ("mean", 0.1 * rng.normal(size=c)), ("var", 1 + 0.3 * rng.random(size=c))):
            inits.append(numpy_helper.from_array(v.astype(np.float32), f"bn_{p}"))
        nodes.append(helper.make_node("BatchNormalization", [x, "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["bn"]))
        nodes.append(helper.make_node("Clip", ["bn", "lo", "hi"], ["stem_r6"]))
        x = conv("stem_r6", "b0_pw", 32, 16, 1, act=False)
    else:
        x = conv("input", "stem", 3, 16, 3, s=2)
        x = conv(x, "b0_pw", 16, 16, 1, act=False)
    for i in (1, 2):
        e = conv(x, f"b{i}_expand", 16, 64, 1)
        d = conv(e, f"b{i}_dw", 64, 64, 3, group=64)
        if se_and_bn:
            nodes.append(helper.make_node("GlobalAveragePool", [d], [f"b{i}_se_gap"]))
            r = conv(f"b{i}_se_gap", f"b{i}_se_r", 64, 16, 1, act=False)
            nodes.append(helper.make_node("Relu", [r], [f"b{i}_se_relu"]))
            g = conv(f"b{i}_se_relu", f"b{i}_se_e", 16, 64, 1, act=False)
            nodes.append(helper.make_node("Sigmoid", [g], [f"b{i}_se_sig"]))
            nodes.append(helper.make_node("Mul", [d, f"b{i}_se_sig"], [f"b{i}_se"]))
            d = f"b{i}_se"
        p = conv(d, f"b{i}_project", 64, 16, 1, act=False)
        nodes.append(helper.make_node("Add", [x, p], [f"b{i}_add"]))
        x = f"b{i}_add"
    x = conv(x, "head", 16, 96, 1)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], axis=1))
    inits.append(numpy_helper.from_array((rng.normal(size=(10, 96)) * 0.3).astype(np.float32), "fc_w"))
    inits.append(numpy_helper.from_array(np.zeros(10, np.float32), "fc_b"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1))
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path
