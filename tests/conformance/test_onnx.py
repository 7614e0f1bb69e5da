"""ONNX conformance: what edgec reads and writes, judged by onnx.checker and
onnxruntime on the real models (EfficientNet-Lite0, the int8 MiniLM).

- edgec's runtime on an imported graph gives onnxruntime's outputs
  (max |diff| <= 1e-4 x max |output|);
- an f32 round trip (import, write) gives bit-identical onnxruntime outputs;
- fp16 and int8 weight files pass the full checker, run in onnxruntime,
  equal edgec's runtime on the same file, and stay close to f32.
"""

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from safetensors.numpy import save_file

from conftest import edgec_run, need, ort_run, run

@pytest.fixture(scope="module")
def minilm_int8() -> Path:
    value = os.environ.get("EDGEC_MINILM_INT8_ONNX")
    need(bool(value) and Path(value).is_file(),
         "EDGEC_MINILM_INT8_ONNX is not set: run `bash scripts/setup-env.sh`, then `source ~/.cache/edgec/env.sh`")
    return Path(value)


def image_batch(n: int = 2, seed: int = 0) -> np.ndarray:
    """Smooth pseudo-images in EfficientNet's input range (x - 127) / 128."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:224, 0:224] / 224.0
    out = np.empty((n, 3, 224, 224), np.float32)
    for i in range(n):
        for c in range(3):
            f = rng.uniform(1, 6, 2)
            p = rng.uniform(0, 6.3, 2)
            img = 127 + 120 * np.sin(f[0] * 6.3 * x + p[0]) * np.cos(f[1] * 6.3 * y + p[1])
            out[i, c] = (img + rng.normal(0, 8, img.shape) - 127) / 128
    return out


def minilm_feeds(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 20000, (2, 16)).astype(np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    mask = np.ones_like(ids)
    mask[1, 12:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def assert_close(ours: np.ndarray, ref: np.ndarray, rel: float, what: str):
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    scale = float(np.abs(ref).max())
    diff = float(np.abs(ours.astype(np.float64) - ref).max())
    assert diff <= rel * scale, f"{what}: max |diff| {diff:.3g} > {rel} x max |ref| {scale:.3g}"


def test_effnet_runtime_matches_onnxruntime(edgec_bin, effnet, tmp_path):
    for i in range(2):
        feeds = {"input": image_batch(1, seed=i)}
        ref = ort_run(effnet, feeds)[0]
        ours = edgec_run(edgec_bin, effnet, feeds, tmp_path)["logits"]
        assert_close(ours, ref, 1e-4, f"EfficientNet logits, image {i}")


def test_effnet_f32_round_trip_is_exact(edgec_bin, effnet, tmp_path):
    out = tmp_path / "effnet.f32.onnx"
    run([edgec_bin, "convert", effnet, out])
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    for i in range(2):
        feeds = {"input": image_batch(1, seed=10 + i)}
        ref, ours = ort_run(effnet, feeds)[0], ort_run(out, feeds)[0]
        assert np.array_equal(ref, ours), f"round trip changed logits by {np.abs(ref - ours).max():.3g}"


def test_effnet_f16_weights(edgec_bin, effnet, tmp_path):
    out = tmp_path / "effnet.f16.onnx"
    run([edgec_bin, "convert", "--dtype", "f16", effnet, out])
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    assert out.stat().st_size < 0.55 * effnet.stat().st_size
    feeds = {"input": image_batch(1, seed=3)}
    ref, ours = ort_run(effnet, feeds)[0], ort_run(out, feeds)[0]
    assert_close(ours, ref, 2e-2, "f16 weights vs f32")
    assert int(ref.argmax()) == int(ours.argmax())
    assert_close(edgec_run(edgec_bin, out, feeds, tmp_path)["logits"], ours, 1e-4, "edgec vs onnxruntime on the f16 file")


def test_minilm_int8_runtime_matches_onnxruntime(edgec_bin, minilm_int8, tmp_path):
    feeds = minilm_feeds()
    ref = ort_run(minilm_int8, feeds)[0]
    ours = edgec_run(edgec_bin, minilm_int8, feeds, tmp_path)["last_hidden_state"]
    assert_close(ours, ref, 1e-4, "MiniLM int8 hidden states")


def test_minilm_int8_round_trip(edgec_bin, minilm_int8, tmp_path):
    """The int8 weights survive the round trip as int8 (Cast+Mul kept, not
    folded to f32), and onnxruntime's outputs stay within float rounding
    (the file moves from opset 17 to 21, which changes kernel choices)."""
    out = tmp_path / "minilm.onnx"
    run([edgec_bin, "convert", minilm_int8, out])
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    int8 = sum(t.data_type == onnx.TensorProto.INT8 for t in model.graph.initializer)
    assert int8 == 38, f"{int8} int8 initializers (the source has 38)"
    assert out.stat().st_size < 1.1 * minilm_int8.stat().st_size
    feeds = minilm_feeds(1)
    ref, ours = ort_run(minilm_int8, feeds)[0], ort_run(out, feeds)[0]
    assert_close(ours, ref, 1e-5, "MiniLM int8 round trip")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_bad_onnx_is_a_clear_error(edgec_bin, effnet, tmp_path, damage):
    bad = tmp_path / f"{damage}.onnx"
    data = effnet.read_bytes()
    bad.write_bytes({"truncated": data[: len(data) // 3], "garbage": b"\x07not a protobuf" * 100, "empty": b""}[damage])
    out = tmp_path / "out.onnx"
    proc = run([edgec_bin, "convert", bad, out], check_exit=False)
    assert proc.returncode == 1, proc.stderr
    assert str(bad) in proc.stderr.decode(), proc.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".edgec-")], "a temporary file was left"


@pytest.fixture(scope="module")
def minilm_dir(models_dir) -> Path:
    path = models_dir / "all-MiniLM-L6-v2"
    need(path.is_dir(), f"{path} is missing: run `bash fixtures/fetch-real.sh`")
    return path


@pytest.fixture(scope="module")
def smollm2_dir(models_dir) -> Path:
    path = models_dir / "smollm2-135m-f32"
    need(path.is_dir(), f"{path} is missing: run `bash fixtures/fetch-real.sh`")
    return path


def test_minilm_safetensors_to_onnx(edgec_bin, minilm_dir, tmp_path):
    """HF MiniLM → ONNX: onnxruntime gives edgec's runtime's hidden states on
    the safetensors model, and padding is masked like Hugging Face does."""
    out = tmp_path / "minilm.onnx"
    run([edgec_bin, "convert", minilm_dir, out])
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    feeds = minilm_feeds(2)
    feeds["attention_mask"][:] = 1
    ref = edgec_run(edgec_bin, minilm_dir, {"input_ids": feeds["input_ids"]}, tmp_path)["last_hidden_state"]
    assert_close(ort_run(out, feeds)[0], ref, 1e-4, "MiniLM ONNX vs safetensors")
    # a padded sequence gives the hidden states of the unpadded one
    short = {k: v[:1, :10] for k, v in feeds.items()}
    padded = {k: v[:1].copy() for k, v in feeds.items()}
    padded["attention_mask"][0, 10:] = 0
    a, b = ort_run(out, short)[0], ort_run(out, padded)[0][:, :10]
    assert_close(b, a, 1e-4, "padded vs unpadded")


def test_smollm2_safetensors_to_onnx(edgec_bin, smollm2_dir, tmp_path):
    """HF SmolLM2 → ONNX: onnxruntime's logits equal edgec's runtime's."""
    out = tmp_path / "smollm2.onnx"
    run([edgec_bin, "convert", smollm2_dir, out])
    onnx.checker.check_model(str(out), full_check=True)
    ids = np.random.default_rng(0).integers(0, 49152, (2, 24)).astype(np.int64)
    ref = edgec_run(edgec_bin, smollm2_dir, {"input_ids": ids}, tmp_path)["logits"]
    ours = ort_run(out, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
    assert_close(ours, ref, 1e-4, "SmolLM2 ONNX logits vs safetensors")


@pytest.mark.parametrize("bits,extra,op,min_cos", [
    (8, [], "DequantizeLinear", 0.999),
    (8, ["--dynamic"], "MatMulInteger", 0.98),
    (4, [], "MatMulNBits", 0.95),
    (4, ["--int4-format", "qdq"], "DequantizeLinear", 0.95),
])
def test_minilm_quantized_onnx(edgec_bin, minilm_dir, tmp_path, bits, extra, op, min_cos):
    """--bits 8 (int8 weights), --bits 8 --dynamic (MatMulInteger), --bits 4
    (MatMulNBits) and --bits 4 --int4-format qdq (UINT4 behind blocked
    DequantizeLinear) ONNX files pass the checker, run in onnxruntime close
    to f32, and edgec's runtime agrees; the word embeddings are int8 rows."""
    f32, out = tmp_path / "minilm.onnx", tmp_path / f"minilm.q{bits}.onnx"
    run([edgec_bin, "convert", minilm_dir, f32])
    run([edgec_bin, "quantize", "--bits", str(bits), *extra, minilm_dir, out])
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert sum(n.op_type == op for n in model.graph.node) == 36, f"36 weights behind {op}"
    assert any(t.data_type == onnx.TensorProto.INT8 and list(t.dims) == [30522, 384]
               for t in model.graph.initializer), "word embeddings as int8 rows"
    if "qdq" in extra:
        blocked = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
        assert all(any(a.name == "block_size" and a.i == 32 for a in n.attribute) for n in blocked)
        assert sum(t.data_type == onnx.TensorProto.UINT4 for t in model.graph.initializer) == 72
    assert out.stat().st_size < 0.3 * f32.stat().st_size
    feeds = minilm_feeds(3)
    ref, ours = ort_run(f32, feeds)[0], ort_run(out, feeds)[0]
    mask = feeds["attention_mask"][..., None]
    pool = lambda h: (h * mask).sum(1) / mask.sum(1)
    a, b = pool(ref), pool(ours)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= min_cos, cos
    # one quantization step is the bound; the int4 file's runtime error is far below it
    assert_close(edgec_run(edgec_bin, out, feeds, tmp_path)["last_hidden_state"], ours, 1e-3,
                 f"edgec vs onnxruntime on the {bits}-bit file")




@pytest.fixture(scope="module")
def effnet_int8(edgec_bin, effnet, photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "effnet.int8.onnx"
    run([edgec_bin, "quantize", "--bits", "8", effnet, out, "--calib", photos[0],
         "--image-transform", "efficientnet", "--crops", "2"])
    return out


def eval_json(edgec_bin, reference, candidate, data, *extra, check_exit=True):
    proc = run([edgec_bin, "eval", "--reference", reference, "--candidate", candidate, "--data", data,
                "--image-transform", "efficientnet", "--json", *extra], check_exit=check_exit)
    return proc, json.loads(proc.stdout)


def test_effnet_static_int8_runs_in_onnxruntime_as_integers(edgec_bin, effnet, effnet_int8, tmp_path):
    """The QDQ file passes the checker, onnxruntime fuses it into integer
    kernels (QLinearConv for all 49 convolutions), and edgec's runtime gives
    onnxruntime's logits within a few output quantization steps."""
    model = onnx.load(str(effnet_int8))
    onnx.checker.check_model(model, full_check=True)
    assert effnet_int8.stat().st_size < 0.3 * effnet.stat().st_size
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(effnet_int8), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]
    assert ops.count("QLinearConv") == 49, sorted(set(ops))
    feeds = {"input": image_batch(1, seed=5)}
    ours = edgec_run(edgec_bin, effnet_int8, feeds, tmp_path)["logits"]
    ref = ort_run(effnet_int8, feeds)[0]
    # onnxruntime rounds in integers (requantizing between layers), edgec
    # simulates the same rounding in float: they may differ by a few steps
    # of the classifier's input quantization, not more.
    assert_close(ours, ref, 0.05, "edgec vs onnxruntime on the int8 file")
    assert int(ours.argmax()) == int(ref.argmax())


def test_effnet_static_int8_accuracy_and_gates(edgec_bin, effnet, effnet_int8, photos):
    """Judged on photos it was not calibrated on: top-1 agrees with fp32 on
    nearly every confident prediction; the KLD gate passes at a loose bound
    and fails (exit 3) at an impossible one."""
    heldout = photos[1]
    proc, report = eval_json(edgec_bin, effnet, effnet_int8, heldout, "--crops", "2",
                             "--max-kld", "0.1", "--min-top1", "0.8")
    n_photos = sum(1 for p in heldout.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    assert report["kind"] == "classifier" and report["samples"] == 2 * n_photos
    delta = report["delta"]
    assert 0 < delta["kld"] < 0.1, delta
    assert delta["top1_agreement_confident"] >= 0.95, delta
    assert report["passed"] and proc.returncode == 0
    proc, report = eval_json(edgec_bin, effnet, effnet_int8, heldout, "--max-kld", "1e-9", check_exit=False)
    assert proc.returncode == 3 and not report["passed"]


def test_bias_correction_lowers_the_error(edgec_bin, effnet, effnet_int8, photos, tmp_path):
    plain = tmp_path / "plain.onnx"
    run([edgec_bin, "quantize", "--bits", "8", effnet, plain, "--calib", photos[0],
         "--image-transform", "efficientnet", "--crops", "2", "--no-bias-correction"])
    _, corrected = eval_json(edgec_bin, effnet, effnet_int8, photos[1])
    _, uncorrected = eval_json(edgec_bin, effnet, plain, photos[1])
    assert corrected["delta"]["kld"] < 0.8 * uncorrected["delta"]["kld"], (corrected["delta"], uncorrected["delta"])


def test_static_int8_from_tensors(edgec_bin, effnet, tmp_path):
    """--calib also takes a .safetensors of input tensors (samples on axis 0)."""
    calib = tmp_path / "calib.safetensors"
    save_file({"input": image_batch(4, seed=7)}, str(calib))
    out = tmp_path / "int8.onnx"
    proc = run([edgec_bin, "quantize", "--bits", "8", effnet, out, "--calib", calib])
    assert b"from 4 samples" in proc.stdout, proc.stdout
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    bad = tmp_path / "bad.safetensors"
    save_file({"other": image_batch(1)}, str(bad))
    proc = run([edgec_bin, "quantize", "--bits", "8", effnet, tmp_path / "x.onnx", "--calib", bad], check_exit=False)
    assert proc.returncode == 1 and b"no tensor named input" in proc.stderr, proc.stderr
    assert not (tmp_path / "x.onnx").exists()


def idx_array(path: Path) -> np.ndarray:
    import gzip
    data = gzip.decompress(path.read_bytes())
    rank = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * rank).reshape(dims)


def test_fashion_accuracy_and_int8_from_idx(edgec_bin, fashion, tmp_path):
    """Top-1 accuracy on labeled IDX data equals onnxruntime's on the same
    images; static int8 calibrated on IDX training images runs in
    onnxruntime and keeps the accuracy within half a point."""
    model, data = fashion
    images, labels = data / "t10k-images-idx3-ubyte.gz", data / "t10k-labels-idx1-ubyte.gz"
    x = (idx_array(images).astype(np.float32) / 255.0)[:, None]
    y = idx_array(labels)
    ref_acc = float((ort_run(model, {"input": x})[0].argmax(1) == y).mean())
    proc = run([edgec_bin, "eval", model, "--data", images, "--labels", labels, "--json"])
    report = json.loads(proc.stdout)
    assert report["samples"] == 10000
    assert report["reference"]["accuracy"] == pytest.approx(ref_acc, abs=2e-4), (report["reference"], ref_acc)
    out = tmp_path / "fashion.int8.onnx"
    run([edgec_bin, "quantize", "--bits", "8", model, out, "--calib", data / "train-images-idx3-ubyte.gz",
         "--calib-samples", "1000"])
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    q_acc = float((ort_run(out, {"input": x})[0].argmax(1) == y).mean())
    assert abs(q_acc - ref_acc) < 0.005, (q_acc, ref_acc)
    proc = run([edgec_bin, "eval", "--reference", model, "--candidate", out, "--data", images,
                "--labels", labels, "--json", "--min-top1", "0.98"])
    report = json.loads(proc.stdout)
    assert report["passed"] and report["candidate"]["accuracy"] == pytest.approx(q_acc, abs=0.002)


def test_eval_onnx_encoders(edgec_bin, minilm_dir, minilm_int8, tmp_path):
    """edgec eval compares an HF encoder with an ONNX one, and two ONNX
    encoders given their tokenizer: pooled-embedding cosine, gated."""
    sentences = tmp_path / "sentences.txt"
    lines = [l.strip() for l in Path("/usr/share/common-licenses/GPL-3").read_text().splitlines() if l.strip()]
    sentences.write_text("\n".join(lines[:20]) + "\n")
    proc = run([edgec_bin, "eval", "--reference", minilm_dir, "--candidate", minilm_int8, "--data", sentences,
                "--json", "--min-cosine", "0.998"])
    report = json.loads(proc.stdout)
    assert report["kind"] == "encoder" and report["sentences"] == 20 and report["passed"], report
    assert report["delta"]["cosine_mean"] > 0.998
    f32 = tmp_path / "minilm.onnx"
    run([edgec_bin, "convert", minilm_dir, f32])
    proc = run([edgec_bin, "eval", "--reference", f32, "--candidate", minilm_int8, "--data", sentences,
                "--tokenizer", minilm_dir / "tokenizer.json", "--json"])
    both_onnx = json.loads(proc.stdout)["delta"]["cosine_mean"]
    assert both_onnx == pytest.approx(report["delta"]["cosine_mean"], abs=1e-5)
    proc = run([edgec_bin, "eval", "--reference", f32, "--candidate", minilm_int8, "--data", sentences],
               check_exit=False)
    assert proc.returncode == 2 and b"--tokenizer" in proc.stderr


def test_static_int8_is_deterministic_across_threads(edgec_bin, effnet, photos, tmp_path):
    outs = []
    for threads in ("1", "2"):
        out = tmp_path / f"int8.{threads}.onnx"
        run([edgec_bin, "--threads", threads, "quantize", "--bits", "8", effnet, out, "--calib", photos[0],
             "--image-transform", "efficientnet", "--calib-samples", "6"])
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
