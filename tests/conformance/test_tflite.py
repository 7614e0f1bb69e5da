"""TFLite conformance: every .tflite edgec writes loads and runs in LiteRT
(ai-edge-litert's Interpreter, the default resolver with XNNPACK) with the
outputs of onnxruntime on the ONNX original.

- f32: max |diff| <= 1e-4 x max |reference| (EfficientNet-Lite0, the
  Fashion-MNIST MLP, MiniLM lowered from safetensors, a small graph of
  pools, pads and concatenation);
- f16 weights (DEQUANTIZE layout): within 1e-4 of onnxruntime on edgec's
  f16-weight ONNX (the same rounded weights), within 5e-2 of f32 (measured
  1.9e-2 on a smooth pseudo-image) with the same top-1, about half the size;
- EfficientNet-Lite0 is NHWC with no TRANSPOSE, ReLU6 fused;
- the serving_default signature runs by input name; a file whose constants
  sit after the flatbuffer (Buffer.offset/size) gives the same outputs;
- `edgec run` reads the .tflite back and agrees with LiteRT.
"""

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import edgec_run, need, ort_run, run
from conftest import litert_interp as interp

F32_REL = 1e-4
F16_REL = 5e-2


def litert_run(litert, path: Path, feeds: dict) -> dict:
    """Runs through the serving_default signature, by input name."""
    it = interp(litert, path)
    assert list(it.get_signature_list()) == ["serving_default"]
    return it.get_signature_runner("serving_default")(**feeds)


def op_counts(litert, path: Path) -> Counter:
    return Counter(d["op_name"] for d in interp(litert, path)._get_ops_details())


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    assert ours.shape == ref.shape, f"shape {ours.shape} != {ref.shape}"
    return float(np.abs(ours.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-12))


def image(seed: int = 0) -> np.ndarray:
    """A smooth pseudo-image in EfficientNet's input range, NCHW [1, 3, 224, 224]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:224, 0:224] / 224.0
    out = np.empty((1, 3, 224, 224), np.float32)
    for c in range(3):
        f, p = rng.uniform(1, 6, 2), rng.uniform(0, 6.3, 2)
        img = 127 + 120 * np.sin(f[0] * 6.3 * x + p[0]) * np.cos(f[1] * 6.3 * y + p[1])
        out[0, c] = (img + rng.normal(0, 8, img.shape) - 127) / 128
    return out


@pytest.fixture(scope="module")
def effnet_tflite(edgec_bin, effnet, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tfl") / "effnet.tflite"
    run([edgec_bin, "convert", effnet, out])
    return out


def test_effnet_f32_matches_onnxruntime(litert, effnet, effnet_tflite):
    ops = op_counts(litert, effnet_tflite)
    assert ops["CONV_2D"] == 33 and ops["DEPTHWISE_CONV_2D"] == 16, ops
    assert "TRANSPOSE" not in ops and "RELU6" not in ops, ops
    it = interp(litert, effnet_tflite)
    (inp,) = it.get_input_details()
    assert inp["name"] == "input" and list(inp["shape"]) == [1, 224, 224, 3]
    for seed in range(2):
        x = image(seed)
        ref = ort_run(effnet, {"input": x})[0]
        got = litert_run(litert, effnet_tflite, {"input": x.transpose(0, 2, 3, 1).copy()})["logits"]
        err = rel_err(got, ref)
        print(f"EfficientNet-Lite0 f32 LiteRT vs onnxruntime: max rel {err:.2e}")
        assert err <= F32_REL
        assert got.argmax() == ref.argmax()


def test_effnet_f16_weights(litert, edgec_bin, effnet, effnet_tflite, tmp_path):
    out = tmp_path / "effnet.f16.tflite"
    run([edgec_bin, "convert", effnet, out, "--dtype", "f16"])
    assert out.stat().st_size < 0.55 * effnet_tflite.stat().st_size
    ops = op_counts(litert, out)
    assert ops["DEQUANTIZE"] >= 49 and "TRANSPOSE" not in ops, ops
    it = interp(litert, out)
    assert any(t["dtype"] == np.float16 for t in it.get_tensor_details())
    onnx16 = tmp_path / "effnet.f16.onnx"
    run([edgec_bin, "convert", effnet, onnx16, "--dtype", "f16"])
    x = image(1)
    ref = ort_run(effnet, {"input": x})[0]
    ref16 = ort_run(onnx16, {"input": x})[0]
    got = litert_run(litert, out, {"input": x.transpose(0, 2, 3, 1).copy()})["logits"]
    err16 = rel_err(got, ref16)
    print(f"EfficientNet-Lite0 f16 weights LiteRT vs onnxruntime on the f16 ONNX: max rel {err16:.2e}")
    assert err16 <= F32_REL
    err = rel_err(got, ref)
    print(f"EfficientNet-Lite0 f16 weights LiteRT vs onnxruntime f32: max rel {err:.2e}")
    assert err <= F16_REL
    assert got.argmax() == ref.argmax()


def test_effnet_offset_buffers_run_the_same(litert, edgec_bin, effnet, effnet_tflite, tmp_path):
    out = tmp_path / "effnet.offsets.tflite"
    run([edgec_bin, "convert", effnet, out, "--tflite-inline-limit", "0"])
    x = image(2).transpose(0, 2, 3, 1).copy()
    a = litert_run(litert, effnet_tflite, {"input": x})["logits"]
    b = litert_run(litert, out, {"input": x})["logits"]
    np.testing.assert_array_equal(a, b)


def test_edgec_reads_tflite_back(litert, edgec_bin, effnet_tflite, tmp_path):
    x = image(3).transpose(0, 2, 3, 1).copy()
    ref = litert_run(litert, effnet_tflite, {"input": x})["logits"]
    ours = edgec_run(edgec_bin, effnet_tflite, {"input": x}, tmp_path)["logits"]
    err = rel_err(ours, ref)
    print(f"edgec run on the .tflite vs LiteRT: max rel {err:.2e}")
    assert err <= F32_REL


def test_deterministic_bytes(edgec_bin, effnet, effnet_tflite, tmp_path):
    again = tmp_path / "again.tflite"
    run([edgec_bin, "convert", effnet, again])
    assert again.read_bytes() == effnet_tflite.read_bytes()


def test_fashion_mlp(litert, edgec_bin, models_dir, tmp_path):
    model = models_dir / "fashion-mlp.onnx"
    need(model.is_file(), f"{model} is missing: run `bash fixtures/fetch-images.sh` (after scripts/setup-env.sh)")
    out = tmp_path / "fashion.tflite"
    run([edgec_bin, "convert", model, out])
    it = interp(litert, out)
    (inp,) = it.get_input_details()
    name, shape = inp["name"], [int(d) for d in inp["shape"]]
    x = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)
    ref = ort_run(model, {name: x})[0]
    (got,) = litert_run(litert, out, {name: x}).values()
    err = rel_err(got, ref)
    print(f"Fashion MLP f32 LiteRT vs onnxruntime: max rel {err:.2e}")
    assert err <= F32_REL


def test_minilm_from_safetensors(litert, edgec_bin, tmp_path):
    value = os.environ.get("EDGEC_MINILM_DIR")
    need(bool(value) and Path(value).is_dir(),
         "EDGEC_MINILM_DIR is not set: run `bash scripts/setup-env.sh`, then `source ~/.cache/edgec/env.sh`")
    seq = 16
    tfl, onnx_out = tmp_path / "minilm.tflite", tmp_path / "minilm.onnx"
    run([edgec_bin, "convert", value, tfl, "--dim", f"sequence={seq}"])
    run([edgec_bin, "convert", value, onnx_out])
    ops = op_counts(litert, tfl)
    assert ops["GELU"] == 6 and ops["FULLY_CONNECTED"] == 36 and ops["BATCH_MATMUL"] == 12, ops
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 20000, (1, seq)).astype(np.int64)
    ids[0, 0], ids[0, -1] = 101, 102
    mask = np.ones_like(ids)
    mask[0, 12:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    ref = ort_run(onnx_out, feeds)[0]
    got = litert_run(litert, tfl, feeds)["last_hidden_state"]
    err = rel_err(got, ref)
    print(f"MiniLM f32 LiteRT vs onnxruntime: max rel {err:.2e}")
    assert err <= F32_REL
    ours = edgec_run(edgec_bin, tfl, feeds, tmp_path)["last_hidden_state"]
    assert rel_err(ours, got) <= F32_REL


def test_pools_pads_concat(litert, edgec_bin, tmp_path):
    """A small ONNX graph with what EfficientNet does not exercise: explicit
    (non-SAME) conv pads, max and average pools, channel concat, a
    per-channel constant, Sigmoid, Flatten of a spatial map (a TRANSPOSE
    back to NCHW), a channel softmax."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.3, (6, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.3, (6, 1, 3, 3)).astype(np.float32)
    chan = rng.normal(0, 0.5, (1, 6, 1, 1)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in [(w1, "w1"), (w2, "w2"), (chan, "chan")]]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[2, 1, 0, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], group=6, strides=[2, 2], auto_pad="SAME_UPPER"),
        helper.make_node("MaxPool", ["r1"], ["mp"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
        helper.make_node("Add", ["c2", "chan"], ["a"]),
        helper.make_node("Sigmoid", ["a"], ["s"]),
        helper.make_node("Concat", ["s", "mp"], ["cat"], axis=1),
        helper.make_node("AveragePool", ["cat"], ["ap"], kernel_shape=[2, 2], strides=[1, 1]),
        helper.make_node("Softmax", ["ap"], ["sm"], axis=1),
        helper.make_node("Flatten", ["sm"], ["y"], axis=1),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 10, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    src = tmp_path / "small.onnx"
    onnx.save(model, str(src))
    out = tmp_path / "small.tflite"
    run([edgec_bin, "convert", src, out])
    ops = op_counts(litert, out)
    for op in ["PAD", "MAX_POOL_2D", "AVERAGE_POOL_2D", "CONCATENATION", "DEPTHWISE_CONV_2D", "SOFTMAX"]:
        assert op in ops, ops
    x = rng.normal(0, 1, (1, 3, 10, 10)).astype(np.float32)
    ref = ort_run(src, {"x": x})[0]
    got = litert_run(litert, out, {"x": x.transpose(0, 2, 3, 1).copy()})["y"]
    err = rel_err(got, ref)
    print(f"pools/pads/concat graph LiteRT vs onnxruntime: max rel {err:.2e}")
    assert err <= F32_REL


@pytest.mark.parametrize("damage", ["truncate", "identifier"])
def test_bad_tflite_is_a_clear_error(edgec_bin, effnet_tflite, tmp_path, damage):
    data = effnet_tflite.read_bytes()
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:4] + b"XXXX" + data[8:])
    x = tmp_path / "x.safetensors"
    save_file({"input": np.zeros((1, 224, 224, 3), np.float32)}, str(x))
    proc = run([edgec_bin, "run", bad, "--inputs", x, "--output", tmp_path / "y.safetensors"], check_exit=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "bad.tflite" in err and "panicked" not in err, err
    assert not (tmp_path / "y.safetensors").exists()
