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
from onnx import TensorProto, helper, numpy_helper

from conftest import edgec_run, litert_interp, ort_run, run

REL = 1e-4


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    assert ours.shape == ref.shape, f"shape {ours.shape} != {ref.shape}"
    return float(np.abs(ours.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-12))


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> Path:
    """x [1, 3, 32, 32] -> 3x3 s2 conv -> BN -> ReLU6 -> (1x1 expand -> ReLU6
    -> depthwise 3x3 -> ReLU6 -> SE (pool, 1x1, ReLU, 1x1, sigmoid, Mul) ->
    1x1 project) x2 with residual adds -> 1x1 head -> pool -> flatten -> Gemm."""
    rng = np.random.default_rng(5)
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

    x = conv("input", "stem", 3, 32, 3, s=2, act=False)
    c = 32
    for p, v in (("scale", 1 + 0.2 * rng.normal(size=c)), ("bias", 0.1 * rng.normal(size=c)),
                 ("mean", 0.1 * rng.normal(size=c)), ("var", 1 + 0.3 * rng.random(size=c))):
        inits.append(numpy_helper.from_array(v.astype(np.float32), f"bn_{p}"))
    nodes.append(helper.make_node("BatchNormalization", [x, "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["bn"]))
    nodes.append(helper.make_node("Clip", ["bn", "lo", "hi"], ["stem_r6"]))
    x = conv("stem_r6", "b0_pw", 32, 16, 1, act=False)
    for i in (1, 2):
        e = conv(x, f"b{i}_expand", 16, 64, 1)
        d = conv(e, f"b{i}_dw", 64, 64, 3, group=64)
        nodes.append(helper.make_node("GlobalAveragePool", [d], [f"b{i}_se_gap"]))
        r = conv(f"b{i}_se_gap", f"b{i}_se_r", 64, 16, 1, act=False)
        nodes.append(helper.make_node("Relu", [r], [f"b{i}_se_relu"]))
        g = conv(f"b{i}_se_relu", f"b{i}_se_e", 16, 64, 1, act=False)
        nodes.append(helper.make_node("Sigmoid", [g], [f"b{i}_se_sig"]))
        nodes.append(helper.make_node("Mul", [d, f"b{i}_se_sig"], [f"b{i}_se"]))
        p = conv(f"b{i}_se", f"b{i}_project", 64, 16, 1, act=False)
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
    path = tmp_path_factory.mktemp("cnn") / "cnn.onnx"
    onnx.save(model, str(path))
    return path


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
