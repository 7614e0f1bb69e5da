"""TFLite output: edgec convert / quantize to .tflite vs onnxruntime's and TensorFlow's quantizers,
on EfficientNet-Lite0, all judged the same way.

Rows (LiteRT = ai-edge-litert's Interpreter, num_threads=2, default op resolver, which applies
the XNNPACK delegate on x86; onnxruntime rows run in onnxruntime's CPU provider, 2 threads):
  - fp32 ONNX in onnxruntime: the reference every other row is compared with;
  - edgec convert fp32.onnx out.tflite (LiteRT);
  - edgec quantize --bits 8 fp32.onnx out.int8.tflite --calib CALIB_DIR --image-transform efficientnet
    [--crops K] (full int8, LiteRT);
  - edgec quantize --bits 8 --dynamic fp32.onnx out.dyn.tflite (dynamic range, LiteRT);
  - edgec quantize ... --int16-activations (16x8: int16 activations, int8 weights; LiteRT runs it in
    its builtin int16 kernels, XNNPACK has none);
  - onnxruntime quantize_static (QDQ, per-channel, MinMax; scripts/bench_onnx.py's worker) on the
    same calibration samples (onnxruntime);
  - TensorFlow's own converter (unless --skip-tf): onnx2tf turns the ONNX into a SavedModel, then
    tf.lite.TFLiteConverter.from_saved_model makes fp32, dynamic-range (optimizations=[DEFAULT])
    and full-int8 (plus a representative_dataset of the same calibration samples, NHWC,
    supported_ops=[TFLITE_BUILTINS_INT8], float input and output) and 16x8
    (EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8) .tflite files (LiteRT). It runs in
    its own venv (scripts/setup-tf-peer.sh; onnx2tf pins TensorFlow and numpy versions that clash
    with the test venv's).

Inputs are made as edgec makes them for `--image-transform efficientnet`
(calibration/src/images.rs): one centre crop per photo (shorter side resized to 256, centre
224x224), or with K > 1 crops, K windows of 0.8 x the shorter side on edgec's grid, each resized
to 224x224 by the `image` crate's separable triangle filter in f32 (replicated here in numpy,
operation for operation), then (x*255)/128 - 127/128. Photos are decoded by Pillow, edgec decodes
with zune-jpeg: on these photos the inputs are bit-identical to edgec's for PNGs, and for JPEGs
differ by the decoders' IDCT/chroma upsampling only (checked against edgec-calibration's
load_images: mean |diff| 0.13/255, max 3.9/255 of a pixel level). A notes line sets this script's
KLD of the onnxruntime int8 model beside `edgec eval`'s own (--check-prep).

Judged on K crops of every photo in $EDGEC_CACHE/images/heldout (different photos from the
calibration ones): top-1 agreement with the fp32 reference (all crops, and those where its top
probability > 0.5), mean KL(p_fp32 || p_row) of the softmaxes (the model outputs logits) in
float64, file size, latency per image (median of interleaved runs on one crop after warm-up),
and each converter's wall time and peak RSS (a subprocess under /usr/bin/time).

Targets: edgec int8 latency <= 0.5 x edgec fp32 latency (LiteRT); edgec int8 KLD <= onnxruntime
static int8's and <= TF converter int8's; edgec int8 top-1 agreement >= 97 % where fp32's top
probability > 0.5. Run through scripts/bench-tflite.sh.
"""

import argparse
import atexit
import contextlib
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("EDGEC_CACHE", Path.home() / ".cache" / "edgec"))
SIZE = 224
CROP_FRACTION = 0.8
CENTER_CROP_FRACTION = 0.875
# edgec's PixelTransform::EFFICIENTNET_LITE: x * 255 * scale + offset on x in 0..=1.
PIX_SCALE = np.float32(1.0 / 128.0)
PIX_OFFSET = np.float32(-127.0 / 128.0)
TF_QUIET = {"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "TF_ENABLE_ONEDNN_OPTS": "0"}


def log(msg):
    print(f"[bench-tflite] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- TF worker (runs in the tf-venv)

def tf_worker(argv):
    """`bench_tflite.py tf-worker SAVED_MODEL OUT.tflite fp32|dynamic|int8|16x8 [CALIB_NHWC.npy]`:
    TFLiteConverter.from_saved_model in its own process (measured like edgec). Prints phase
    times and the TensorFlow version as JSON."""
    for k, v in TF_QUIET.items():
        os.environ.setdefault(k, v)
    saved, out, mode = argv[:3]
    t = time.perf_counter()
    import tensorflow as tf  # import-check: tf-venv
    phases = {"import_s": time.perf_counter() - t}
    t = time.perf_counter()
    conv = tf.lite.TFLiteConverter.from_saved_model(saved)
    if mode in ("dynamic", "int8", "16x8"):
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode in ("int8", "16x8"):
        calib = np.load(argv[3])

        def representative():
            for i in range(len(calib)):
                yield [calib[i:i + 1]]

        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8 if mode == "16x8"
            else tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # inference_input_type / inference_output_type stay float32: float I/O, like edgec's.
    elif mode not in ("fp32", "dynamic"):
        sys.exit(f"unknown mode {mode}")
    data = conv.convert()
    phases["convert_s"] = time.perf_counter() - t
    Path(out).write_bytes(data)
    print(json.dumps({**phases, "tf": tf.__version__}))


# ---------------------------------------------------------------- edgec's image preprocessing

def rust_round(x):
    """f64::round for x >= 0: half away from zero."""
    return int(math.floor(x + 0.5))


def crop_windows(iw, ih, k, w=SIZE, h=SIZE):
    """calibration/src/images.rs crop_windows: (x, y, cw, ch) of each of k windows."""
    aspect = w / h
    fw, fh = (ih * aspect, float(ih)) if iw / ih >= aspect else (float(iw), iw / aspect)
    cw = min(max(rust_round(fw * CROP_FRACTION), 1), iw)
    ch = min(max(rust_round(fh * CROP_FRACTION), 1), ih)
    free_x, free_y = float(iw - cw), float(ih - ch)
    cols = k if free_y <= 0 else min(max(rust_round(math.sqrt(k * free_x / free_y)), 1), k)
    rows = -(-k // cols)

    def at(j, n, free):
        return rust_round(free / 2) if n <= 1 else rust_round(free * j / (n - 1))

    out = []
    for i in range(k):
        row, col = divmod(i, cols)
        in_row = k - row * cols if row + 1 == rows else cols
        out.append((at(col, in_row, free_x), at(row, rows, free_y), cw, ch))
    return out


def _taps(n_in, n_out):
    """The `image` crate's (0.25) sample.rs weights for the triangle filter, in f32: for each
    output index, the input indices and the normalised weights, padded with zero weights."""
    f32 = np.float32
    ratio = f32(n_in) / f32(n_out)
    sratio = ratio if ratio >= 1 else f32(1.0)
    support = f32(1.0) * sratio
    rows = []
    for o in range(n_out):
        x = (f32(o) + f32(0.5)) * ratio
        left = min(max(math.floor(x - support), 0), n_in - 1)
        right = min(max(math.ceil(x + support), left + 1), n_in)
        x = x - f32(0.5)
        ws, total = [], f32(0.0)
        for i in range(left, right):
            d = abs((f32(i) - x) / sratio)
            wt = f32(1.0) - d if d < 1 else f32(0.0)
            ws.append(wt)
            total = f32(total + wt)
        rows.append((left, [f32(wt / total) for wt in ws]))
    taps = max(len(ws) for _, ws in rows)
    idx = np.zeros((n_out, taps), np.int64)
    wts = np.zeros((n_out, taps), np.float32)
    for o, (left, ws) in enumerate(rows):
        idx[o, :] = left
        idx[o, :len(ws)] = np.arange(left, left + len(ws))
        wts[o, :len(ws)] = ws
    return idx, wts


def _sample(img, n_out, axis):
    """One pass of the separable resize along `axis` (0 = rows: vertical_sample, 1 = columns:
    horizontal_sample); the sum runs over the taps in order in f32, as the crate's loop does."""
    idx, wts = _taps(img.shape[axis], n_out)
    shape = list(img.shape)
    shape[axis] = n_out
    acc = np.zeros(shape, np.float32)
    bshape = [1, 1, 1]
    bshape[axis] = n_out
    for k in range(idx.shape[1]):
        acc += np.take(img, idx[:, k], axis=axis) * wts[:, k].reshape(bshape)
    return acc


def resize(img, nw, nh):
    """image::imageops::resize(img, nw, nh, Triangle) on an f32 HxWx3 image in 0..=1."""
    if img.shape[:2] == (nh, nw):
        return img.copy()
    # vertical_sample keeps f32 as is; horizontal_sample clamps to the subpixel range 0..=1.
    return np.clip(_sample(_sample(img, nh, 0), nw, 1), 0.0, 1.0)


def photo_samples(path, crops):
    """edgec's samples of one photo: HxWx3 (NHWC) f32 model inputs."""
    from PIL import Image
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    img = (rgb.astype(np.float32) / np.float32(255.0)).clip(0.0, 1.0)
    ih, iw = img.shape[:2]
    outs = []
    if crops > 1:
        for x, y, cw, ch in crop_windows(iw, ih, crops):
            outs.append(resize(img[y:y + ch, x:x + cw], SIZE, SIZE))
    else:
        s = float(rust_round(SIZE / CENTER_CROP_FRACTION))
        f = max(s / min(iw, ih), SIZE / ih, SIZE / iw)
        nw, nh = max(rust_round(iw * f), SIZE), max(rust_round(ih * f), SIZE)
        r = resize(img, nw, nh)
        x0, y0 = (nw - SIZE) // 2, (nh - SIZE) // 2
        outs.append(r[y0:y0 + SIZE, x0:x0 + SIZE])
    return [(o * np.float32(255.0)) * PIX_SCALE + PIX_OFFSET for o in outs]


def load_samples(folder, crops):
    """All samples of a folder, NHWC f32, files in byte order of their names (as edgec)."""
    photos = sorted((p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")),
                    key=lambda p: os.fsencode(p.name))
    if not photos:
        sys.exit(f"no photos in {folder}: run fixtures/fetch-images.sh")
    out = []
    for p in photos:
        out.extend(photo_samples(p, crops))
    return np.stack(out).astype(np.float32), photos


# ---------------------------------------------------------------- runtimes

@contextlib.contextmanager
def captured_stderr_fd():
    """Collects what native code writes to fd 2 (LiteRT's delegate messages)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        box = []
        try:
            yield box
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            box.append(tmp.read().decode("utf-8", "replace"))


class LiteRT:
    """One .tflite file in ai-edge-litert's Interpreter (default resolver), float or integer I/O."""

    def __init__(self, path, threads):
        from ai_edge_litert.interpreter import Interpreter
        with captured_stderr_fd() as box:
            self.it = Interpreter(model_path=str(path), num_threads=threads)
            self.it.allocate_tensors()
        self.log = box[0] if box else ""
        (self.inp,) = self.it.get_input_details()
        self.out = self.it.get_output_details()[0]
        shape = tuple(self.inp["shape"])
        if shape[-1] == 3:
            self.nchw = False
        elif len(shape) == 4 and shape[1] == 3:
            self.nchw = True
        else:
            raise ValueError(f"input {self.inp['name']} has shape {shape}: not an image tensor")
        ops = [d["op_name"] for d in self.it._get_ops_details()]
        self.ops = {o: ops.count(o) for o in sorted(set(ops))}

    def feed(self, x_nhwc):
        x = x_nhwc.transpose(0, 3, 1, 2) if self.nchw else x_nhwc
        dt = self.inp["dtype"]
        if dt != np.float32:
            s, z = self.inp["quantization"]
            info = np.iinfo(dt)
            x = np.clip(np.round(x / s) + z, info.min, info.max)
        return np.ascontiguousarray(x.astype(dt))

    def set(self, x_nhwc):
        self.it.set_tensor(self.inp["index"], self.feed(x_nhwc))

    def result(self):
        y = self.it.get_tensor(self.out["index"])
        if self.out["dtype"] != np.float32:
            s, z = self.out["quantization"]
            y = (y.astype(np.float32) - z) * s
        return y.reshape(y.shape[0], -1)

    def run(self, x_nhwc):
        self.set(x_nhwc)
        self.it.invoke()
        return self.result()

    def runner(self, x_nhwc):
        fed = self.feed(x_nhwc)
        idx = self.inp["index"]

        def go():
            self.it.set_tensor(idx, fed)
            self.it.invoke()
            self.it.get_tensor(self.out["index"])
        return go

    def delegate_note(self):
        """The runtime's delegate messages (LiteRT prints "Created ... XNNPACK delegate" once per
        process) and the number of delegate partitions in this model's execution plan."""
        lines = [l.strip() for l in self.log.splitlines() if "delegate" in l.lower()]
        LiteRT.messages.update(dict.fromkeys(lines))
        return f"{self.ops.get('DELEGATE', 0)} delegate partition(s)"

    messages = {}


class Ort:
    def __init__(self, path, threads):
        self.s = bo.session(path, threads)
        self.name = self.s.get_inputs()[0].name

    def run(self, x_nhwc):
        return self.s.run(None, {self.name: np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))})[0]

    def runner(self, x_nhwc):
        feed = {self.name: np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))}
        return lambda: self.s.run(None, feed)


# ---------------------------------------------------------------- conversions

def run_step(label, cmd, out_path, cwd=None, env=None):
    """A converter run as a row: wall s, peak RSS, output size, or its error."""
    log(f"{label}: {' '.join(shlex.quote(str(c)) for c in cmd)}")
    argv = list(cmd)
    if cwd is not None:
        argv = ["env", "-C", str(cwd), *argv]
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        wall, rss, code, stdout, stderr = bo.measure(argv)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    step = {"label": label, "s": wall, "rss": rss, "path": out_path}
    if code != 0 or not Path(out_path).exists():
        lines = [l.strip() for l in (stderr + "\n" + stdout).strip().splitlines() if l.strip()]
        errors = [l for l in lines if "error" in l.lower()]
        step["error"] = f"exit {code}: " + (" / ".join(errors[-2:] or lines[-2:]) or "(no message)")
        log(f"{label} failed:\n{stderr.strip()[-3000:]}")
        return step
    try:
        step["phases"] = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else None
    except (json.JSONDecodeError, IndexError):
        step["phases"] = None
    step["mib"] = Path(out_path).stat().st_size / 2**20
    return step


def tf_peer(args, work, fp32, calib_nhwc_path):
    """onnx2tf -> SavedModel, then TFLiteConverter three ways. Returns (onnx2tf step, rows)."""
    venv_bin = Path(args.tf_python).parent
    onnx2tf = venv_bin / "onnx2tf"
    tf_dir = work / "tf"
    tf_dir.mkdir()
    # onnx2tf reads (or else downloads) this sample file from its working folder for any 4-D
    # float input, even when it only converts to float; ours is a dummy (no network here).
    rng = np.random.default_rng(0)
    np.save(tf_dir / "calibration_image_sample_data_20x128x128x3_float32.npy",
            rng.random((20, 128, 128, 3), dtype=np.float32))
    src = tf_dir / "model.onnx"  # its own copy: onnx2tf may rewrite its input
    shutil.copyfile(fp32, src)
    saved = tf_dir / "saved_model"
    step = run_step("onnx2tf (ONNX -> SavedModel)", [onnx2tf, "-i", src, "-o", saved, "-osd", "-n"],
                    saved / "saved_model.pb", cwd=tf_dir, env=TF_QUIET)
    rows = []
    modes = (("fp32", "TF TFLiteConverter fp32"), ("dynamic", "TF TFLiteConverter dynamic range"),
             ("int8", "TF TFLiteConverter int8 (repr. dataset)"),
             ("16x8", "TF TFLiteConverter 16x8 (repr. dataset)"))
    for mode, label in modes:
        out = work / f"tf.{mode}.tflite"
        if "error" in step:
            rows.append({"label": label, "kind": mode, "runtime": "litert", "s": None, "rss": None,
                         "error": f"no SavedModel: onnx2tf failed ({step['error']})"})
            continue
        row = run_step(label, [args.tf_python, Path(__file__).resolve(), "tf-worker", saved, out, mode,
                               calib_nhwc_path], out, env=TF_QUIET)
        row.update(kind=mode, runtime="litert")
        rows.append(row)
    # onnx2tf's own side outputs are not needed (its float .tflite files and the SavedModel stay
    # until exit in --keep mode only).
    return step, rows


# ---------------------------------------------------------------- judging

def judge(rows, held_nhwc, ref_logits, args):
    ref = bo.log_softmax(ref_logits)
    p_ref = np.exp(ref)
    top_ref = ref.argmax(-1)
    confident = p_ref.max(-1) > 0.5
    engines = {}
    for r in rows:
        if "error" in r:
            continue
        try:
            eng = LiteRT(r["path"], args.threads) if r["runtime"] == "litert" else Ort(r["path"], args.threads)
            logits = np.concatenate([eng.run(held_nhwc[i:i + 1]) for i in range(len(held_nhwc))])
        except Exception as e:  # noqa: BLE001 - an unloadable or failing model is a result to show
            r["error"] = f"{r['runtime']} cannot run it: {type(e).__name__}: {e}"
            log(r["error"])
            continue
        engines[r["label"]] = eng
        lq = bo.log_softmax(logits)
        top = lq.argmax(-1)
        r["agree"] = 100 * float((top == top_ref).mean())
        r["agree_conf"] = 100 * float((top == top_ref)[confident].mean()) if confident.any() else None
        r["kld"] = float((p_ref * (ref - lq)).sum(-1).mean())
        if isinstance(eng, LiteRT):
            r["note"] = eng.delegate_note()
            r["ops"] = eng.ops
    one = held_nhwc[:1]
    lat = bo.interleaved_latency({k: e.runner(one) for k, e in engines.items()}, args.runs, warmup=args.warmup)
    for r in rows:
        r["ms"] = lat.get(r["label"])
    return confident


def check_prep(args, work, fp32, ort_int8):
    """edgec eval's own numbers (its own image loading) for the onnxruntime int8 model vs fp32
    on the held-out photos, to set beside this script's (numpy replica of edgec's preprocessing)."""
    cmd = [args.edgec, "--threads", str(args.threads), "eval", "--reference", fp32, "--candidate", ort_int8,
           "--data", CACHE / "images" / "heldout", "--image-transform", "efficientnet", "--json",
           *(["--crops", str(args.crops)] if args.crops > 1 else [])]
    log("preprocessing check: " + " ".join(shlex.quote(str(c)) for c in cmd))
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if proc.returncode not in (0, 3):
        return f"edgec eval failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}"
    try:
        rep = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return f"edgec eval printed no JSON: {proc.stdout[-300:]}"
    return rep


# ---------------------------------------------------------------- report

def fmt_kld(v):
    return f"{v:.5f}" if v >= 1e-4 or v == 0 else f"{v:.1e}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "tf-worker":
        tf_worker(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edgec", required=True)
    ap.add_argument("--model", type=Path, default=None, help="EfficientNet-Lite0 fp32 ONNX "
                    "(default $EDGEC_SHARED_MODELS/efficientnet_lite0.onnx)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--crops", type=int, default=8, help="held-out crops per photo (default 8: 144 samples)")
    ap.add_argument("--calib-crops", type=int, default=8,
                    help="calibration crops per photo, for all quantizers (default 8; 1 = edgec's default, "
                    "one centre crop per photo; > 1 passes --crops K to edgec)")
    ap.add_argument("--runs", type=int, default=100, help="timed latency runs per model (default 100)")
    ap.add_argument("--warmup", type=int, default=10, help="warm-up runs per model (default 10)")
    ap.add_argument("--skip-tf", action="store_true", help="no TensorFlow converter rows")
    ap.add_argument("--tf-python", help="python of the TF venv (scripts/setup-tf-peer.sh prints it)")
    ap.add_argument("--tf-error", help="why the TF venv is missing (the wrapper passes it on)")
    ap.add_argument("--edgec-args", default="",
                    help="extra flags for the edgec int8 quantize command (a lone flag: --edgec-args=--flag)")
    ap.add_argument("--check-prep", choices=("auto", "yes", "no"), default="auto",
                    help="run edgec eval on the onnxruntime int8 model to check this script's image "
                    "preprocessing against edgec's own (auto: yes)")
    ap.add_argument("--keep", type=Path, metavar="DIR",
                    help="write every model and input file to DIR and keep it (default: a temporary "
                    "folder removed at exit)")
    args = ap.parse_args()
    if args.model is None:
        args.model = bo.default_model()
    if not args.model.is_file():
        sys.exit(f"no model at {args.model} (set EDGEC_SHARED_MODELS or --model)")
    if not Path("/usr/bin/time").exists():
        log("warning: no /usr/bin/time (Debian package `time`): converter peak RSS includes this script's")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        work = args.keep.resolve()
        atexit.register(print, f"work folder kept: {work}")
    else:
        work = Path(tempfile.mkdtemp(prefix="edgec-bench-tflite-"))
        atexit.register(shutil.rmtree, work, True)
    # atexit does not run on a signal's default action: turn SIGTERM/SIGHUP into an exit.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    bench(args, work)


def bench(args, work):
    from safetensors.numpy import save_file
    t = time.perf_counter()
    calib_nhwc, calib_photos = load_samples(CACHE / "images" / "calib", args.calib_crops)
    held_nhwc, held_photos = load_samples(CACHE / "images" / "heldout", args.crops)
    log(f"images: {len(calib_nhwc)} calibration and {len(held_nhwc)} held-out samples in "
        f"{time.perf_counter() - t:.1f} s")
    calib_nchw_path = work / "calib.safetensors"
    save_file({"input": np.ascontiguousarray(calib_nhwc.transpose(0, 3, 1, 2))}, str(calib_nchw_path))
    calib_nhwc_path = work / "calib_nhwc.npy"
    np.save(calib_nhwc_path, calib_nhwc)
    fp32 = work / "efficientnet_lite0.onnx"
    shutil.copyfile(args.model, fp32)
    threads = str(args.threads)

    rows = [{"label": "fp32 ONNX (reference)", "kind": "ref", "runtime": "ort", "path": fp32,
             "mib": fp32.stat().st_size / 2**20, "s": None, "rss": None}]

    r = run_step("edgec convert (fp32)", [args.edgec, "--threads", threads, "convert", fp32,
                                          work / "edgec.fp32.tflite"], work / "edgec.fp32.tflite")
    rows.append({**r, "kind": "fp32", "runtime": "litert", "edgec": True})
    crops_flag = ["--crops", str(args.calib_crops)] if args.calib_crops > 1 else []
    out = work / "edgec.int8.tflite"
    r = run_step("edgec quantize --bits 8 --calib (int8)",
                 [args.edgec, "--threads", threads, "quantize", "--bits", "8", fp32, out,
                  "--calib", CACHE / "images" / "calib", "--image-transform", "efficientnet", *crops_flag,
                  *shlex.split(args.edgec_args)], out)
    rows.append({**r, "kind": "int8", "runtime": "litert", "edgec": True})
    out = work / "edgec.dynamic.tflite"
    r = run_step("edgec quantize --bits 8 --dynamic", [args.edgec, "--threads", threads, "quantize", "--bits", "8",
                                                       "--dynamic", fp32, out], out)
    rows.append({**r, "kind": "dynamic", "runtime": "litert", "edgec": True})
    out = work / "edgec.16x8.tflite"
    r = run_step("edgec quantize --bits 8 --calib --int16-activations (16x8)",
                 [args.edgec, "--threads", threads, "quantize", "--bits", "8", fp32, out,
                  "--calib", CACHE / "images" / "calib", "--image-transform", "efficientnet", *crops_flag,
                  "--int16-activations"], out)
    rows.append({**r, "kind": "16x8", "runtime": "litert", "edgec": True})

    out = work / "ort.int8.onnx"
    r = run_step("onnxruntime quantize_static MinMax (int8 QDQ)",
                 [sys.executable, HERE / "bench_onnx.py", "ort-worker", "static", fp32, out, calib_nchw_path,
                  "MinMax"], out)
    rows.append({**r, "kind": "int8", "runtime": "ort", "peer": "ort"})

    onnx2tf_step = None
    if args.skip_tf:
        tf_note = "skipped (--skip-tf)"
    elif not args.tf_python:
        tf_note = f"not run: {args.tf_error or 'no --tf-python (run through scripts/bench-tflite.sh)'}"
        for mode, label in (("fp32", "TF TFLiteConverter fp32"), ("dynamic", "TF TFLiteConverter dynamic range"),
                            ("int8", "TF TFLiteConverter int8 (repr. dataset)"),
                            ("16x8", "TF TFLiteConverter 16x8 (repr. dataset)")):
            rows.append({"label": label, "kind": mode, "runtime": "litert", "peer": "tf", "s": None, "rss": None,
                         "error": tf_note})
    else:
        tf_note = None
        onnx2tf_step, tf_rows = tf_peer(args, work, fp32, calib_nhwc_path)
        for r in tf_rows:
            r["peer"] = "tf"
        rows.extend(tf_rows)

    # The reference: fp32 ONNX in onnxruntime, on every held-out sample.
    log("judging")
    ref_logits = np.concatenate([Ort(fp32, args.threads).run(held_nhwc[i:i + 1]) for i in range(len(held_nhwc))])
    confident = judge(rows, held_nhwc, ref_logits, args)

    prep = None
    ort_row = next(r for r in rows if r.get("peer") == "ort")
    if args.check_prep != "no" and "error" not in ort_row:
        prep = check_prep(args, work, fp32, ort_row["path"])

    report(args, rows, onnx2tf_step, tf_note, confident, calib_nhwc, calib_photos, held_nhwc, held_photos, prep)


def report(args, rows, onnx2tf_step, tf_note, confident, calib_x, calib_photos, held_x, held_photos, prep):
    import onnxruntime
    from ai_edge_litert import __version__ as litert_version  # noqa: F401 (import check)
    n_conf = int(confident.sum())
    print(f"## EfficientNet-Lite0 to TFLite (LiteRT {litert_version}, onnxruntime {onnxruntime.__version__}, "
          f"{args.threads} threads)\n")
    print(f"Calibration: {len(calib_x)} samples ({args.calib_crops} per photo) of {len(calib_photos)} photos, the "
          f"same for every quantizer; judged on {len(held_x)} crops ({args.crops} per photo) of "
          f"{len(held_photos)} other photos, {n_conf} of them with fp32 top probability > 0.5. Reference: the fp32 "
          f"ONNX in onnxruntime. Latency: median of {args.runs} interleaved runs after {args.warmup} warm-up runs, "
          f"batch 1, one crop.\n")
    print("| model | runtime | MiB | convert s | peak RSS MiB | top-1 agree % | top-1 agree % (p>0.5) | mean KLD "
          "| ms/image |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rt_name = {"litert": "LiteRT", "ort": "onnxruntime"}
    for r in rows:
        rt = rt_name[r["runtime"]]
        if "error" in r:
            print(f"| {r['label']} | {rt} | error: {bo.fmt_err(r['error'])} | {bo.fmt(r['s'], '.2f')} "
                  f"| {bo.fmt(r['rss'], '.0f')} | | | | |")
            continue
        print(f"| {r['label']} | {rt} | {r['mib']:.2f} | {bo.fmt(r['s'], '.2f')} | {bo.fmt(r['rss'], '.0f')} "
              f"| {r['agree']:.1f} | {bo.fmt(r['agree_conf'], '.1f')} | {fmt_kld(r['kld'])} | {r['ms']:.2f} |")

    notes = []
    if onnx2tf_step is not None:
        if "error" in onnx2tf_step:
            notes.append(f"onnx2tf failed after {onnx2tf_step['s']:.1f} s: {bo.fmt_err(onnx2tf_step['error'], 600)}")
        else:
            notes.append(f"TF peer: onnx2tf (ONNX -> SavedModel, it also writes its own float .tflite files) "
                         f"{onnx2tf_step['s']:.1f} s, {onnx2tf_step['rss']:.0f} MiB peak RSS; the TF rows' "
                         "convert s / RSS are TFLiteConverter.from_saved_model alone (its own process, "
                         "TensorFlow import included)")
    tf8_row = next((r for r in rows if r.get("peer") == "tf" and r["kind"] == "int8"), None)
    if onnx2tf_step is not None and "error" not in onnx2tf_step and tf8_row and "error" not in tf8_row:
        notes.append(f"TF int8 end to end (onnx2tf + TFLiteConverter int8): {onnx2tf_step['s'] + tf8_row['s']:.1f} s, "
                     f"peak RSS {max(onnx2tf_step['rss'], tf8_row['rss']):.0f} MiB")
    if tf_note:
        notes.append(f"TF peer: {tf_note}")
    for r in rows:
        ph = r.get("phases")
        if ph and r.get("peer") == "tf":
            notes.append(f"{r['label']}: TensorFlow {ph.get('tf')}, import {ph['import_s']:.1f} s, "
                         f"convert {ph['convert_s']:.1f} s")
        elif ph and r.get("peer") == "ort":
            notes.append(f"{r['label']}: in-process " + ", ".join(f"{k[:-2]} {v:.2f} s" for k, v in ph.items()))
    notes.append(f"LiteRT kernels: Interpreter(num_threads={args.threads}), default op resolver (AUTO); the "
                 f"runtime said: {'; '.join(LiteRT.messages) or '(nothing about delegates)'}. A DELEGATE partition is one "
                 "subgraph handed to XNNPACK; ops left outside run in LiteRT's builtin kernels")
    for r in rows:
        if r.get("ops"):
            ops = ", ".join(f"{k} {v}" for k, v in r["ops"].items() if k != "DELEGATE")
            notes.append(f"{r['label']}: {r['note']}; ops {ops}")
    if isinstance(prep, dict):
        d = prep.get("delta") or {}
        ort_row = next(r for r in rows if r.get("peer") == "ort")
        agree = d.get("top1_agreement")
        notes.append(f"preprocessing check, onnxruntime int8 vs fp32 on the held-out crops: this script "
                     f"(numpy replica of edgec's image loading, onnxruntime) KLD {bo.fmt(ort_row.get('kld'), '.5f')}, "
                     f"agreement {bo.fmt(ort_row.get('agree'), '.1f')} %; edgec eval (its own image loading and "
                     f"runtime, {prep.get('samples')} samples) KLD {bo.fmt(d.get('kld'), '.5f')}, agreement "
                     f"{bo.fmt(None if agree is None else 100 * agree, '.1f')} %")
    elif prep:
        notes.append(f"preprocessing check: {prep}")
    for n in notes:
        print(f"- {n}")

    def find(**kw):
        for r in rows:
            if all(r.get(k) == v for k, v in kw.items()):
                return r
        return None

    print("\n### edgec / peer ratios\n")
    print("| edgec row | peer row | KLD ratio | size ratio | latency ratio | convert time ratio | peak RSS ratio |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    pairs = [(find(edgec=True, kind="int8"), find(peer="ort")),
             (find(edgec=True, kind="int8"), find(peer="tf", kind="int8")),
             (find(edgec=True, kind="dynamic"), find(peer="tf", kind="dynamic")),
             (find(edgec=True, kind="16x8"), find(peer="tf", kind="16x8")),
             (find(edgec=True, kind="fp32"), find(peer="tf", kind="fp32"))]
    for ours, theirs in pairs:
        if ours is None or theirs is None:
            continue
        if "error" in ours or "error" in theirs:
            print(f"| {ours['label']} | {theirs['label']} | (a row failed) | | | | |")
            continue
        cells = [ratio(ours["kld"], theirs["kld"]), ratio(ours["mib"], theirs["mib"]), ratio(ours["ms"], theirs["ms"]),
                 ratio(ours["s"], theirs["s"]), ratio(ours["rss"], theirs["rss"])]
        print(f"| {ours['label']} | {theirs['label']} | " + " | ".join(bo.fmt(c, '.3f') for c in cells) + " |")
    print("\n(onnxruntime's row runs in onnxruntime, so its latency ratio compares runtimes as well as models; "
          "its convert time is quantize_static with quant_pre_process, in a Python process.)")

    print("\n### targets\n")
    e8, e32, ort8, tf8 = find(edgec=True, kind="int8"), find(edgec=True, kind="fp32"), find(peer="ort"), \
        find(peer="tf", kind="int8")

    def missing(*rs):
        bad = [r for r in rs if r is None or "error" in r]
        if not bad:
            return None
        return "; ".join(f"{r['label']} failed: {bo.fmt_err(r['error'], 200)}" if r else "row not run" for r in bad)

    def line(name, ok_value_fn, *rs):
        why = missing(*rs)
        if why:
            print(f"- {name}: NOT MEASURED ({why})")
            return
        ok, text = ok_value_fn()
        print(f"- {name}: {text} -> {'met' if ok else 'MISSED'}")

    line("edgec int8 latency <= 0.5 x edgec fp32 latency (LiteRT)",
         lambda: (e8["ms"] / e32["ms"] <= 0.5, f"{e8['ms']:.2f} / {e32['ms']:.2f} ms = {e8['ms'] / e32['ms']:.3f}"),
         e8, e32)
    line("edgec int8 KLD <= onnxruntime static int8 KLD",
         lambda: (e8["kld"] <= ort8["kld"], f"{e8['kld']:.5f} vs {ort8['kld']:.5f}"), e8, ort8)
    if args.skip_tf:
        print("- edgec int8 KLD <= TF converter int8 KLD: NOT MEASURED (--skip-tf)")
    else:
        line("edgec int8 KLD <= TF converter int8 KLD",
             lambda: (e8["kld"] <= tf8["kld"], f"{e8['kld']:.5f} vs {tf8['kld']:.5f}"), e8, tf8)
    line(f"edgec int8 top-1 agreement >= 97 % where fp32 top prob > 0.5 ({n_conf} samples)",
         lambda: (e8["agree_conf"] is not None and e8["agree_conf"] >= 97,
                  f"{bo.fmt(e8['agree_conf'], '.1f')} %"), e8)
    print(flush=True)


sys.path.insert(0, str(HERE))
import bench_onnx as bo  # noqa: E402  (measure, session, log_softmax, interleaved_latency, fmt helpers)

if __name__ == "__main__":
    main()
