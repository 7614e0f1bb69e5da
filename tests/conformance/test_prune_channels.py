"""Channel-pruned CNNs in the runtimes: `edgec prune --channels/--macs`.

- a small CNN (BatchNorm, depthwise convs, residual adds, a squeeze-excite
  Mul, global pool -> Gemm) built here: the channel-pruned model, written as
  ONNX and as TFLite, gives onnxruntime's and LiteRT's outputs equal to
  edgec's runtime (max |diff| <= 1e-4 x max |output|); every tensor shrank;
- EfficientNet-Lite0 pruned to ~25% fewer MACs loads and runs in
  onnxruntime and LiteRT, agrees with edgec's runtime, and its MACs fall.
"""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import edgec_run, litert_interp, ort_run, rel_err, run, tiny_cnn

REL = 1e-4


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> Path:
    return tiny_cnn(tmp_path_factory.mktemp("cnn") / "cnn.onnx", seed=5, se_and_bn=True)


def inputs(n: int, shape=(1, 3, 32, 32), seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape).astype(np.float32) for _ in range(n)]


def litert_outputs(litert, path: Path, xs: list) -> list:
    it = litert_interp(litert, path)
    (inp,), (out,) = it.get_input_details(), it.get_output_details()
    got = []
    for x in xs:
        it.set_tensor(inp["index"], x)
        it.invoke()
        got.append(it.get_tensor(out["index"]).copy())
    return got


def weights(path: Path) -> dict:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def conv_macs(path: Path, hw: int) -> int:
    """Multiply-adds of the Convs and the Gemm, by onnx shape inference."""
    m = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    w = weights(path)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in m.graph.value_info}
    shapes.update({v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in m.graph.output})
    total = 0
    for n in m.graph.node:
        if n.op_type in ("Conv", "Gemm"):
            out = shapes[n.output[0]]
            pos = int(np.prod(out)) // out[1]
            total += pos * w[n.input[1]].size
    return total


def test_channel_pruned_cnn_equals_edgec_in_ort_and_litert(litert, edgec_bin, cnn, tmp_path):
    onnx_out, tfl_out = tmp_path / "pruned.onnx", tmp_path / "pruned.tflite"
    r = run([edgec_bin, "prune", cnn, onnx_out, "--channels", "0.5"])
    print(r.stderr if isinstance(r.stderr, str) else "")
    run([edgec_bin, "prune", cnn, tfl_out, "--channels", "0.5"])
    m = onnx.load(str(onnx_out))
    onnx.checker.check_model(m, full_check=True)
    w0, w1 = weights(cnn), weights(onnx_out)
    # every group shrank: the stem (its BatchNorm folded into it at import) 32 -> 16, the residual
    # stream 16 -> 8, the expansions with their depthwise convs and SE expansions 64 -> 32, the SE
    # reductions 16 -> 8, the head and the Gemm's columns 96 -> 48
    convs = [tuple(w1[n.input[1]].shape) for n in m.graph.node if n.op_type == "Conv"]
    block = [(32, 8, 1, 1), (32, 1, 3, 3), (8, 32, 1, 1), (32, 8, 1, 1), (8, 32, 1, 1)]
    assert convs == [(16, 3, 3, 3), (8, 16, 1, 1), *block, *block, (48, 8, 1, 1)], convs
    assert w1["fc_w"].shape == (10, 48)
    assert sum(v.size for v in w1.values()) < 0.4 * sum(v.size for v in w0.values())
    xs = inputs(3, seed=2)
    for x, lx in zip(xs, litert_outputs(litert, tfl_out, [x.transpose(0, 2, 3, 1).copy() for x in xs])):
        ref = ort_run(onnx_out, {"input": x})[0]
        ours = edgec_run(edgec_bin, onnx_out, {"input": x}, tmp_path)["logits"]
        e_ort, e_lite = rel_err(ours, ref), rel_err(ours, lx.reshape(ours.shape))
        print(f"channel-pruned CNN: edgec vs onnxruntime {e_ort:.2e}, vs LiteRT {e_lite:.2e}")
        assert e_ort <= REL and e_lite <= REL
        assert rel_err(ort_run(cnn, {"input": x})[0], ref) > 1e-3, "pruning live channels changes the logits"


def test_effnet_channel_pruned_runs_in_ort_and_litert(litert, edgec_bin, effnet, tmp_path):
    onnx_out, tfl_out = tmp_path / "effnet.pruned.onnx", tmp_path / "effnet.pruned.tflite"
    run([edgec_bin, "prune", effnet, onnx_out, "--macs", "0.25"])
    run([edgec_bin, "convert", onnx_out, tfl_out])
    before, after = conv_macs(effnet, 224), conv_macs(onnx_out, 224)
    print(f"EfficientNet-Lite0 MACs {before / 1e6:.1f}M -> {after / 1e6:.1f}M ({1 - after / before:.1%} fewer)")
    assert after <= 0.76 * before
    x = inputs(1, shape=(1, 3, 224, 224), seed=4)[0] * 0.5
    ref = ort_run(onnx_out, {"input": x})[0]
    ours = edgec_run(edgec_bin, onnx_out, {"input": x}, tmp_path)["logits"]
    lite = litert_outputs(litert, tfl_out, [x.transpose(0, 2, 3, 1).copy()])[0]
    e_ort, e_lite = rel_err(ours, ref), rel_err(ours, lite.reshape(ours.shape))
    print(f"EfficientNet-Lite0 channel-pruned: edgec vs onnxruntime {e_ort:.2e}, vs LiteRT {e_lite:.2e}")
    assert e_ort <= REL and e_lite <= REL
