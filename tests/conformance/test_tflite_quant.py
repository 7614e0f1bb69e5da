"""Quantized TFLite conformance: every int8 .tflite edgec writes loads and
runs in LiteRT (ai-edge-litert's Interpreter, default resolver with
XNNPACK), and edgec's own integer simulation (`edgec run` on the file) agrees.

- EfficientNet-Lite0 dynamic range (int8 per-channel weights of 1024
  elements or more, hybrid kernels) and full int8 calibrated on ~/.cache/edgec/images/calib: top-1
  agrees with onnxruntime fp32 on the held-out photos (measured 18/18 for
  both; gate 0.9), `edgec eval` of the ONNX against the .tflite works;
- full int8 LiteRT vs the simulation: edgec's reader runs int8 CONV_2D,
  DEPTHWISE_CONV_2D and FULLY_CONNECTED with int32 accumulators and
  XNNPACK's fp32 requantization (round half to even), ADD in XNNPACK's fixed
  point and MEAN on the integer sum, so the Fashion MLP and EfficientNet-Lite0
  (61 int8 ops) give LiteRT's outputs exactly (gate: 0 steps, stricter than
  the issue's one step), and so does every intermediate int8 tensor of
  EfficientNet (each op's output made the graph output in turn);
- 16x8 (--int16-activations): LiteRT runs it (int16 activations with zero
  point 0, int64 biases), top-1 agrees, its KLD to fp32 is below the int8
  model's, and edgec's (float) simulation of it stays within 64 int16 output
  steps of LiteRT (measured 5);
- int8 I/O: integer input and output tensors, the same codes as LiteRT's;
- bad flags are clear errors, exit non-zero, and write no file.
"""

import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import FASHION, edgec_run, need, ort_session, run
from conftest import litert_interp as interp

TOP1_MIN = 0.9


def load_photo(path: Path) -> np.ndarray:
    """Shorter side to 256, centre 224 crop, (p − 127) / 128, NHWC."""
    from PIL import Image
    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = 256 / min(w, h)
    im = im.resize((round(w * s), round(h * s)), Image.BILINEAR)
    w, h = im.size
    left, top = (w - 224) // 2, (h - 224) // 2
    im = im.crop((left, top, left + 224, top + 224))
    return ((np.asarray(im, np.float32) - 127) / 128)[None]


def heldout_images(heldout: Path) -> list:
    files = sorted(p for p in heldout.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    need(len(files) >= 10, f"{heldout} has {len(files)} photos: run `bash fixtures/fetch-images.sh`")
    return [load_photo(p) for p in files]


def litert_run(it, x: np.ndarray) -> np.ndarray:
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    it.set_tensor(inp["index"], x)
    it.invoke()
    return it.get_tensor(out["index"]).copy()


def op_counts(it) -> Counter:
    return Counter(d["op_name"] for d in it._get_ops_details())


def output_scale(it) -> float:
    """The scale of the int8 tensor the final DEQUANTIZE reads."""
    tensors = {d["index"]: d for d in it.get_tensor_details()}
    deq = [o for o in it._get_ops_details() if o["op_name"] == "DEQUANTIZE"]
    return float(tensors[deq[-1]["inputs"][0]]["quantization"][0])


def edgec_out(edgec_bin, model: Path, name: str, x: np.ndarray, tmp: Path) -> np.ndarray:
    """The single output of `edgec run` on input `name` = x."""
    (y,) = edgec_run(edgec_bin, model, {name: x}, tmp).values()
    return y


def quantize(edgec_bin, src: Path, out: Path, *extra, check_exit=True):
    return run([edgec_bin, "quantize", "--bits", "8", src, out, *extra], check_exit=check_exit)


@pytest.fixture(scope="module")
def effnet_dyn(edgec_bin, effnet, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tflq") / "effnet.dyn.tflite"
    quantize(edgec_bin, effnet, out, "--dynamic")
    return out


@pytest.fixture(scope="module")
def effnet_int8(edgec_bin, effnet, photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tflq") / "effnet.int8.tflite"
    quantize(edgec_bin, effnet, out, "--calib", photos[0], "--image-transform", "efficientnet")
    return out


def top1_agreement(litert, model: Path, effnet: Path, images: list) -> float:
    it, sess = interp(litert, model), ort_session(effnet)
    agree = 0
    for x in images:
        ref = sess.run(None, {"input": x.transpose(0, 3, 1, 2).copy()})[0]
        agree += int(litert_run(it, x).argmax() == ref.argmax())
    return agree / len(images)


def test_effnet_dynamic_range(litert, effnet, effnet_dyn, photos):
    it = interp(litert, effnet_dyn)
    ops = op_counts(it)
    assert "QUANTIZE" not in ops and "DEQUANTIZE" not in ops, ops
    # (the hybrid kernels add int8 scratch tensors of their own)
    weights = [t for t in it.get_tensor_details() if t["dtype"] == np.int8 and t["name"].endswith("_int8")]
    assert len(weights) == 46 and all(len(t["quantization_parameters"]["scales"]) > 1 for t in weights)
    # as TF's converter: filters under 1024 elements (the stem, the narrowest depthwise) stay float
    small = [t["name"] for t in it.get_tensor_details() if t["dtype"] == np.float32 and len(t["shape"]) == 4
             and 0 < np.prod(t["shape"]) < 1024]
    assert len(small) == 4, small
    assert it.get_input_details()[0]["dtype"] == np.float32
    assert effnet_dyn.stat().st_size < 0.3 * effnet.stat().st_size
    agree = top1_agreement(litert, effnet_dyn, effnet, heldout_images(photos[1]))
    print(f"EfficientNet-Lite0 dynamic range: top-1 agreement with fp32 {agree:.3f}, "
          f"{effnet_dyn.stat().st_size / 2**20:.2f} MiB")
    assert agree >= TOP1_MIN


def test_effnet_full_int8_in_litert(litert, effnet, effnet_int8, photos):
    it = interp(litert, effnet_int8)
    ops = op_counts(it)
    assert ops["QUANTIZE"] == 1 and ops["DEQUANTIZE"] == 1, ops
    details = it.get_tensor_details()
    floats = [t["name"] for t in details if t["dtype"] == np.float32]
    assert len(floats) == 2, floats  # the input and the output only
    agree = top1_agreement(litert, effnet_int8, effnet, heldout_images(photos[1]))
    print(f"EfficientNet-Lite0 full int8: top-1 agreement with fp32 {agree:.3f}, "
          f"{effnet_int8.stat().st_size / 2**20:.2f} MiB")
    assert agree >= TOP1_MIN


def test_effnet_full_int8_matches_the_simulation(litert, edgec_bin, effnet_int8, photos, tmp_path):
    it = interp(litert, effnet_int8)
    scale = output_scale(it)
    worst, beyond, total = 0.0, 0, 0
    for x in heldout_images(photos[1])[:8]:
        got = litert_run(it, x)
        ours = edgec_out(edgec_bin, effnet_int8, "input", x, tmp_path)
        steps = np.abs(ours.astype(np.float64) - got) / scale
        worst = max(worst, float(steps.max()))
        beyond += int((steps > 0.001).sum())
        total += steps.size
    print(f"EfficientNet-Lite0 int8 LiteRT vs edgec simulation: max {worst:.2f} steps, "
          f"{beyond}/{total} logits differ")
    assert worst <= 0.001, f"{beyond}/{total} logits differ, by up to {worst:.2f} output steps"


def test_effnet_int8_every_layer_matches_litert(litert, edgec_bin, effnet_int8, photos, tmp_path):
    """Each op's int8 output, made the graph's output in a copy of the
    model cut after that op, is the same in LiteRT and in edgec."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    data = effnet_int8.read_bytes()
    full = schema.ModelT.InitFromPackedBuf(data, 0)
    codes = [c.builtinCode for c in full.operatorCodes]
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    x = heldout_images(photos[1])[1]
    report = []
    for k, op in enumerate(full.subgraphs[0].operators):
        cut = schema.ModelT.InitFromPackedBuf(data, 0)
        sg = cut.subgraphs[0]
        sg.outputs, sg.operators, cut.signatureDefs = [op.outputs[0]], sg.operators[:k + 1], None
        b = flatbuffers.Builder(1 << 20)
        b.Finish(cut.Pack(b), file_identifier=b"TFL3")
        path = tmp_path / "cut.tflite"
        path.write_bytes(bytes(b.Output()))
        it = interp(litert, path)
        got = litert_run(it, x)
        ours = edgec_out(edgec_bin, path, it.get_input_details()[0]["name"], x, tmp_path).reshape(got.shape)
        # values compared exactly (edgec run writes integers as i64, the last op's output is float)
        diff = int(np.count_nonzero(ours != got))
        report.append((k, op_names.get(codes[op.opcodeIndex]), got.dtype.name, diff))
    bad = [r for r in report if r[3]]
    kinds = Counter(r[1] for r in report)
    print(f"EfficientNet-Lite0 int8, every op's output: {len(report) - len(bad)}/{len(report)} bit-exact "
          f"({dict(kinds)})")
    assert not bad, f"ops whose output differs from LiteRT's (index, op, dtype, elements): {bad}"


def mean_kld(litert, model: Path, effnet: Path, images: list) -> float:
    """Mean KL-divergence of `model`'s softmax (LiteRT) from onnxruntime fp32's."""
    it, sess = interp(litert, model), ort_session(effnet)

    def softmax(z):
        e = np.exp(z.astype(np.float64) - z.max())
        return e / e.sum()

    total = 0.0
    for x in images:
        p = softmax(sess.run(None, {"input": x.transpose(0, 3, 1, 2).copy()})[0].ravel())
        q = softmax(litert_run(it, x).ravel())
        total += float((p * (np.log(p + 1e-12) - np.log(q + 1e-12))).sum())
    return total / len(images)


def test_effnet_16x8_in_litert(litert, edgec_bin, effnet, effnet_int8, photos, tmp_path):
    """--int16-activations: LiteRT runs the 16x8 model (int16 activations,
    int8 weights, int64 biases) in its int16 kernels; it is closer to fp32
    than the int8 model, and edgec's simulation reads it back."""
    out = tmp_path / "effnet.16x8.tflite"
    quantize(edgec_bin, effnet, out, "--calib", photos[0], "--image-transform", "efficientnet",
             "--int16-activations")
    it = interp(litert, out)
    ops = op_counts(it)
    assert ops["QUANTIZE"] == 1 and ops["DEQUANTIZE"] == 1 and ops["CONV_2D"] == 33, ops
    details = it.get_tensor_details()
    kinds = Counter(t["dtype"].__name__ for t in details)
    acts = [t for t in details if t["dtype"] == np.int16]
    assert len(acts) >= 61 and all(t["quantization"][1] == 0 for t in acts), kinds
    assert kinds["int64"] == 50 and kinds["float32"] == 2, kinds
    images = heldout_images(photos[1])
    agree = top1_agreement(litert, out, effnet, images)
    k16, k8 = mean_kld(litert, out, effnet, images), mean_kld(litert, effnet_int8, effnet, images)
    x = images[0]
    got = litert_run(it, x)
    ours = edgec_out(edgec_bin, out, "input", x, tmp_path)
    scale = output_scale(it)
    steps = float(np.abs(ours.astype(np.float64) - got).max() / scale)
    print(f"EfficientNet-Lite0 16x8: top-1 agreement {agree:.3f}, KLD {k16:.5f} (int8 {k8:.5f}), "
          f"{out.stat().st_size / 2**20:.2f} MiB; edgec simulation within {steps:.1f} int16 output steps")
    assert agree >= TOP1_MIN
    assert k16 < k8, "16x8 should be closer to fp32 than int8"
    assert steps <= 64, "edgec's reading of the 16x8 file drifts from LiteRT's"


def test_edgec_eval_onnx_against_int8_tflite(edgec_bin, effnet, effnet_int8, photos):
    proc = run([edgec_bin, "eval", "--reference", effnet, "--candidate", effnet_int8, "--data", photos[1],
                "--image-transform", "efficientnet", "--json"])
    report = json.loads(proc.stdout)
    delta = report["delta"]
    print(f"edgec eval ONNX fp32 vs int8 .tflite: KLD {delta['kld']:.4f}, top-1 {delta['top1_agreement']:.3f}")
    assert delta["top1_agreement"] >= TOP1_MIN and delta["kld"] < 0.2


def fashion_images(n: int) -> np.ndarray:
    raw = gzip.open(FASHION / "t10k-images-idx3-ubyte.gz").read()
    return np.frombuffer(raw[16:], np.uint8).reshape(-1, 1, 28, 28)[:n].astype(np.float32) / 255.0


def test_fashion_full_int8_matches_the_simulation(litert, edgec_bin, fashion, tmp_path):
    model, data = fashion
    out = tmp_path / "fashion.int8.tflite"
    quantize(edgec_bin, model, out, "--calib", data / "train-images-idx3-ubyte.gz", "--calib-samples", "1000")
    it = interp(litert, out)
    inp = it.get_input_details()[0]
    scale = output_scale(it)
    sess = ort_session(model)
    worst, agree, xs = 0.0, 0, fashion_images(20)
    for x in xs:
        x = x[None].reshape(inp["shape"])
        got = litert_run(it, x)
        ours = edgec_out(edgec_bin, out, inp["name"], x, tmp_path)
        worst = max(worst, float((np.abs(ours.astype(np.float64) - got) / scale).max()))
        agree += int(got.argmax() == sess.run(None, {inp["name"]: x})[0].argmax())
    print(f"Fashion MLP int8 LiteRT vs edgec simulation: max {worst:.2f} steps; top-1 with fp32 {agree}/{len(xs)}")
    assert worst <= 1.001
    assert agree >= 0.9 * len(xs)


def test_fashion_int8_io(litert, edgec_bin, fashion, tmp_path):
    model, data = fashion
    out = tmp_path / "fashion.int8io.tflite"
    quantize(edgec_bin, model, out, "--calib", data / "train-images-idx3-ubyte.gz", "--calib-samples", "500",
             "--int8-io")
    it = interp(litert, out)
    inp, outp = it.get_input_details()[0], it.get_output_details()[0]
    assert inp["dtype"] == np.int8 and outp["dtype"] == np.int8
    ops = op_counts(it)
    assert "QUANTIZE" not in ops and "DEQUANTIZE" not in ops, ops
    s, z = inp["quantization"]
    for x in fashion_images(5):
        q = np.clip(np.round(x / s) + z, -128, 127).astype(np.int8).reshape(inp["shape"])
        got = litert_run(it, q)
        ours = edgec_out(edgec_bin, out, inp["name"], q, tmp_path)
        assert (ours.astype(np.int64) == got.astype(np.int64)).all(), (ours, got)


@pytest.mark.parametrize("case", ["missing-calib", "int8-io-without-calib", "int16-without-calib", "bits-4"])
def test_bad_flags_are_clear_errors(edgec_bin, fashion, tmp_path, case):
    model, _ = fashion
    out = tmp_path / "bad.tflite"
    extra = {
        "missing-calib": ["--bits", "8", "--calib", tmp_path / "no-such-folder"],
        "int8-io-without-calib": ["--bits", "8", "--int8-io"],
        "int16-without-calib": ["--bits", "8", "--int16-activations"],
        "bits-4": ["--bits", "4"],
    }[case]
    proc = run([edgec_bin, "quantize", model, out, *extra], check_exit=False)
    err = proc.stderr.decode()
    assert proc.returncode != 0, err
    assert "panicked" not in err and err.strip(), err
    want = {"missing-calib": "no-such-folder", "int8-io-without-calib": "--calib", "int16-without-calib": "--calib",
            "bits-4": "int8"}[case]
    assert want in err, err
    assert not out.exists()
