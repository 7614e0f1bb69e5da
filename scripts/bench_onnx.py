"""ONNX int8 quantization: edgec quantize vs onnxruntime.quantization.

1. EfficientNet-Lite0 (fp32 ONNX), static int8 QDQ:
   - onnxruntime: quant_pre_process (shape inference + graph optimization, the
     pre-processing its docs recommend before static quantization), then
     quantize_static(QDQ, per_channel, activations QUInt8, weights QInt8, MinMax);
     with --peer-extra also a second row calibrated by Percentile or Entropy;
   - edgec: quantize --bits 8 fp32.onnx out.onnx --calib calib.safetensors.
   Both calibrate on the same tensors: K crops of each photo in
   $EDGEC_CACHE/images/calib, stacked into calib.safetensors (tensor `input`,
   [N, 3, 224, 224]), which edgec reads and onnxruntime's CalibrationDataReader
   feeds one sample at a time. Judged by onnxruntime on K crops of each photo in
   $EDGEC_CACHE/images/heldout (different photos): top-1 agreement with fp32 (all
   crops, and those where fp32's top probability is > 0.5), mean KL(p_fp32 || p_q)
   of the softmaxes in float64, file size, latency per image (median, interleaved
   runs of all models) and each quantizer's wall time and peak RSS (both as
   subprocesses).
2. all-MiniLM-L6-v2: edgec convert gives the f32 ONNX; onnxruntime's
   quantize_dynamic(QInt8, per_channel) on it vs edgec quantize --bits 8 (weight-only)
   and --dynamic. Judged by the cosine of mean-pooled embeddings to f32 over
   100 lines of GPL-3, one sentence at a time.

Targets (EfficientNet): KLD edgec / KLD onnxruntime <= 0.5, top-1 agreement edgec -
onnxruntime >= 0, latency edgec / onnxruntime <= 1.0.
Run through scripts/bench-onnx.sh.
"""

import argparse
import atexit
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("EDGEC_CACHE", Path.home() / ".cache" / "edgec"))
REPO = Path(__file__).resolve().parent.parent
SIZE = 224
SENTENCES = Path("/usr/share/common-licenses/GPL-3")


def default_model():
    shared = os.environ.get("EDGEC_SHARED_MODELS")
    folder = Path(shared) if shared else REPO.parent / "shared" / "models"
    return folder / "efficientnet_lite0.onnx"


def default_minilm():
    cached = CACHE / "models" / "all-MiniLM-L6-v2"
    if cached.exists() or "EDGEC_MINILM_DIR" not in os.environ:
        return cached
    return Path(os.environ["EDGEC_MINILM_DIR"])


# ---------------------------------------------------------------- subprocesses

def measure(cmd):
    """Wall seconds, peak RSS (MiB), exit code, stdout and stderr of one run of `cmd`.

    Like bench_quantize.measure, but a failure is returned instead of ending the
    benchmark (edgec rows show their error), stdout is kept (the onnxruntime worker
    reports its phase times there), and the peak RSS comes from /usr/bin/time: a
    child's ru_maxrss starts at its parent's RSS at fork time (Linux carries the
    high-water mark across exec), and this script's own RSS is hundreds of MiB of
    image tensors, while /usr/bin/time's is about 2 MiB."""
    timer = Path("/usr/bin/time")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".rss") as rss_file:
        argv = [str(c) for c in cmd]
        if timer.exists():
            argv = [str(timer), "-f", "%M", "-o", rss_file.name, *argv]
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        rss = usage.ru_maxrss / 1024
        if timer.exists():
            lines = rss_file.read().split()
            rss = int(lines[-1]) / 1024 if lines and lines[-1].isdigit() else float("nan")
        return (wall, rss, os.waitstatus_to_exitcode(status),
                out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"))


def run_quantizer(label, cmd, out_path):
    """One quantizer run as a table row: its time, RSS and output, or its error."""
    print(f"[bench-onnx] {label}: {' '.join(shlex.quote(str(c)) for c in cmd)}", file=sys.stderr, flush=True)
    wall, rss, code, stdout, stderr = measure(cmd)
    row = {"label": label, "cmd": cmd, "path": out_path, "s": wall, "rss": rss}
    if code != 0 or not out_path.exists():
        lines = [l.strip() for l in stderr.strip().splitlines() if l.strip()]
        errors = [l for l in lines if l.lower().startswith("error")]
        row["error"] = f"exit {code}: " + (" / ".join(errors[-2:] or lines[-2:]) or "(no message)")
        print(f"[bench-onnx] {label} failed: {stderr.strip()[-2000:]}", file=sys.stderr, flush=True)
        return row
    try:
        row["phases"] = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else None
    except (json.JSONDecodeError, IndexError):
        row["phases"] = None
    row["mib"] = out_path.stat().st_size / 2**20
    return row


def ort_worker(argv):
    """`bench_onnx.py ort-worker static|dynamic ...`: onnxruntime's quantizer in its own
    process, so its wall time and peak RSS are measured like edgec's. Prints phase times as JSON."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    kind = argv[0]
    phases = {}
    if kind == "static":
        src, dst, calib, method = argv[1:5]
        from safetensors.numpy import load_file
        data = load_file(calib)["input"]

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.i = 0

            def get_next(self):
                if self.i >= len(data):
                    return None
                self.i += 1
                return {"input": data[self.i - 1:self.i]}

        t = time.perf_counter()
        pre = str(Path(dst).with_suffix(".pre.onnx"))
        # Symbolic shape inference needs sympy, which the venv lacks; it matters for
        # dynamic shapes only, and this model's shapes are all fixed (onnx's shape
        # inference, which still runs, infers them all).
        quant_pre_process(src, pre, skip_symbolic_shape=importlib.util.find_spec("sympy") is None)
        phases["preprocess_s"] = time.perf_counter() - t
        t = time.perf_counter()
        quantize_static(pre, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, method))
        phases["quantize_s"] = time.perf_counter() - t
        os.unlink(pre)
    elif kind == "dynamic":
        src, dst = argv[1:3]
        t = time.perf_counter()
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True)
        phases["quantize_s"] = time.perf_counter() - t
    else:
        sys.exit(f"unknown worker kind {kind}")
    print(json.dumps(phases))


# ---------------------------------------------------------------- images

def crop_boxes(width, height, k):
    """k square windows of 0.8 x the shorter side, at evenly picked points of a
    near-square grid spanning the photo (deterministic)."""
    side = int(round(0.8 * min(width, height)))
    nx = int(np.ceil(np.sqrt(k)))
    ny = int(np.ceil(k / nx))
    if width < height:
        nx, ny = ny, nx
    grid = [(ix, iy) for iy in range(ny) for ix in range(nx)]
    picks = [grid[int(i * len(grid) / k)] for i in range(k)]
    def pos(i, n, span):
        return 0 if n == 1 else int(round((span - side) * i / (n - 1)))
    return [(pos(ix, nx, width), pos(iy, ny, height), pos(ix, nx, width) + side, pos(iy, ny, height) + side)
            for ix, iy in picks]


def load_crops(folder, k):
    from PIL import Image
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not photos:
        sys.exit(f"no photos in {folder}: run fixtures/fetch-images.sh")
    samples = []
    for p in photos:
        with Image.open(p) as im:
            im = im.convert("RGB")
            for box in crop_boxes(im.width, im.height, k):
                x = np.asarray(im.crop(box).resize((SIZE, SIZE), Image.BILINEAR), dtype=np.float32)
                samples.append((x.transpose(2, 0, 1) - 127.0) / 128.0)
    return np.stack(samples).astype(np.float32), len(photos)


# ---------------------------------------------------------------- onnxruntime judging

def session(path, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def log_softmax(z):
    z = z.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def interleaved_latency(runners, runs, warmup=10):
    """Median ms per call of each runner; runs are interleaved across runners so a
    load change on the shared machine hits them all alike."""
    for r in runners.values():
        for _ in range(warmup):
            r()
    times = {k: [] for k in runners}
    for _ in range(runs):
        for k, r in runners.items():
            t = time.perf_counter()
            r()
            times[k].append(time.perf_counter() - t)
    return {k: 1000 * float(np.median(v)) for k, v in times.items()}


def fmt_err(msg, width=160):
    msg = msg.replace("|", "\\|").replace("\n", " ")
    return msg if len(msg) <= width else msg[:width - 3] + "..."


def fmt(v, spec):
    return "—" if v is None else format(v, spec)


# ---------------------------------------------------------------- EfficientNet

def bench_efficientnet(args, work, edgec_extra):
    calib_x, n_calib_photos = load_crops(CACHE / "images" / "calib", args.crops_calib)
    held_x, n_held_photos = load_crops(CACHE / "images" / "heldout", args.crops_heldout)
    from safetensors.numpy import save_file
    calib = work / "calib.safetensors"
    save_file({"input": calib_x}, str(calib))
    fp32 = work / "efficientnet_lite0.onnx"
    shutil.copyfile(args.model, fp32)

    rows = [{"label": "fp32", "path": fp32, "mib": fp32.stat().st_size / 2**20, "s": None, "rss": None}]
    me = Path(__file__).resolve()
    peers = ["MinMax"] + ([args.peer_extra.capitalize()] if args.peer_extra != "none" else [])
    for method in peers:
        out = work / f"ort.{method.lower()}.onnx"
        rows.append(run_quantizer(f"onnxruntime quantize_static {method}", [sys.executable, me, "ort-worker", "static",
                                  fp32, out, calib, method], out))
    out = work / "edgec.int8.onnx"
    rows.append(run_quantizer("edgec quantize --bits 8 --calib", [args.edgec, "--threads", args.threads, "quantize",
                              "--bits", "8", fp32, out, "--calib", calib, *edgec_extra], out))

    # Judging: logits of every held-out crop, then interleaved latency on one crop.
    sessions = {}
    for r in rows:
        if "error" in r:
            continue
        try:
            sessions[r["label"]] = session(r["path"], args.threads)
        except Exception as e:  # noqa: BLE001 - an unloadable output is a result to show
            r["error"] = f"onnxruntime cannot load it: {e}"
    logits = {}
    for label, s in sessions.items():
        logits[label] = np.concatenate([s.run(None, {"input": held_x[i:i + 1]})[0] for i in range(len(held_x))])
    ref = log_softmax(logits["fp32"])
    p_ref = np.exp(ref)
    top_ref = ref.argmax(-1)
    confident = p_ref.max(-1) > 0.5
    for r in rows:
        if r["label"] not in logits:
            continue
        lq = log_softmax(logits[r["label"]])
        top = lq.argmax(-1)
        r["agree"] = 100 * float((top == top_ref).mean())
        r["agree_conf"] = 100 * float((top == top_ref)[confident].mean()) if confident.any() else None
        r["kld"] = float((p_ref * (ref - lq)).sum(-1).mean())
    one = held_x[:1]
    lat = interleaved_latency({k: (lambda s=s: s.run(None, {"input": one})) for k, s in sessions.items()}, args.runs)
    for r in rows:
        r["ms"] = lat.get(r["label"])

    import onnxruntime
    print(f"## EfficientNet-Lite0, int8 static (onnxruntime {onnxruntime.__version__}, {args.threads} threads)\n")
    print(f"Calibration: {len(calib_x)} crops ({args.crops_calib} per photo) of {n_calib_photos} photos; "
          f"judged on {len(held_x)} crops ({args.crops_heldout} per photo) of {n_held_photos} other photos, "
          f"{int(confident.sum())} of them with fp32 top probability > 0.5. Latency: median of {args.runs} "
          f"interleaved runs after 10 warm-up runs, batch 1.\n")
    print(f"| model | MiB | quantize s | peak RSS MiB | top-1 agree % | top-1 agree % (p>0.5) | mean KLD | ms/image |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        if "error" in r:
            print(f"| {r['label']} | error: {fmt_err(r['error'])} | {fmt(r['s'], '.2f')} | {fmt(r['rss'], '.0f')} "
                  f"| | | | |")
            continue
        print(f"| {r['label']} | {r['mib']:.2f} | {fmt(r['s'], '.2f')} | {fmt(r['rss'], '.0f')} | {r['agree']:.1f} "
              f"| {fmt(r['agree_conf'], '.1f')} | {r['kld']:.5f} | {r['ms']:.2f} |")
    notes = []
    for r in rows:
        if r.get("phases"):
            ph = ", ".join(f"{k[:-2]} {v:.2f} s" for k, v in r["phases"].items())
            notes.append(f"{r['label']}: in-process {ph} (the rest of its wall time is Python and "
                         "onnxruntime start-up)")
    if importlib.util.find_spec("sympy") is None:
        notes.append("quant_pre_process ran with skip_symbolic_shape=True (sympy is not in the venv; "
                     "the model's shapes are static, so onnx shape inference covers them)")
    for n in notes:
        print(f"- {n}")

    ours = rows[-1]
    for theirs in rows[1:-1]:
        if "error" in ours or "error" in theirs:
            print(f"\nedgec vs {theirs['label']}: no ratios (a row failed)")
            continue
        k = ours["kld"] / theirs["kld"] if theirs["kld"] > 0 else float("inf")
        a = ours["agree"] - theirs["agree"]
        lt = ours["ms"] / theirs["ms"]
        print(f"\nedgec vs {theirs['label']}: KLD ratio {k:.3f} (target <= 0.5, {'met' if k <= 0.5 else 'MISSED'}); "
              f"top-1 agreement difference {a:+.1f} points (target >= 0, {'met' if a >= 0 else 'MISSED'}); "
              f"latency ratio {lt:.2f} (target <= 1.0, {'met' if lt <= 1.0 else 'MISSED'})")
    print(flush=True)


# ---------------------------------------------------------------- MiniLM

def bench_minilm(args, work):
    from tokenizers import Tokenizer
    d = Path(args.minilm)
    fp32 = work / "minilm.f32.onnx"
    conv = run_quantizer("edgec convert (f32 export)", [args.edgec, "--threads", args.threads, "convert", d, fp32],
                         fp32)
    if "error" in conv:
        print(f"## all-MiniLM-L6-v2\n\nedgec convert failed, nothing to judge: {fmt_err(conv['error'], 1000)}\n")
        return
    rows = [{"label": "fp32 (edgec convert)", "path": fp32, "mib": conv["mib"], "s": None, "rss": None}]
    me = Path(__file__).resolve()
    out = work / "minilm.ort.dynamic.onnx"
    rows.append(run_quantizer("onnxruntime quantize_dynamic", [sys.executable, me, "ort-worker", "dynamic", fp32, out],
                              out))
    for label, flags, name in (("edgec quantize --bits 8 (weight-only)", [], "minilm.edgec.w8.onnx"),
                               ("edgec quantize --bits 8 --dynamic", ["--dynamic"],
                                "minilm.edgec.dynamic.onnx")):
        out = work / name
        rows.append(run_quantizer(label, [args.edgec, "--threads", args.threads, "quantize", "--bits", "8", *flags, d,
                                          out], out))

    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(128)
    lines = [l.strip() for l in SENTENCES.read_text().splitlines() if l.strip()]
    n = min(args.sentences, len(lines))
    sentences = [lines[int(i * len(lines) / n)] for i in range(n)]
    encs = [tok.encode(s) for s in sentences]

    def feeds(sess):
        names = {i.name for i in sess.get_inputs()}
        out = []
        for e in encs:
            f = {"input_ids": np.array([e.ids], np.int64), "attention_mask": np.array([e.attention_mask], np.int64),
                 "token_type_ids": np.array([e.type_ids], np.int64)}
            out.append({k: v for k, v in f.items() if k in names})
        return out

    sessions, inputs = {}, {}
    for r in rows:
        if "error" in r:
            continue
        try:
            sessions[r["label"]] = session(r["path"], args.threads)
            inputs[r["label"]] = feeds(sessions[r["label"]])
        except Exception as e:  # noqa: BLE001
            r["error"] = f"onnxruntime cannot load it: {e}"

    def embed(label):
        s = sessions[label]
        outs = []
        for e, f in zip(encs, inputs[label]):
            h = s.run(["last_hidden_state"], f)[0][0].astype(np.float64)
            m = np.array(e.attention_mask, np.float64)[:, None]
            outs.append((h * m).sum(0) / m.sum())
        return np.stack(outs)

    emb = {}
    for label in list(sessions):
        try:
            emb[label] = embed(label)
        except Exception as e:  # noqa: BLE001
            next(r for r in rows if r["label"] == label)["error"] = f"onnxruntime run failed: {e}"
            del sessions[label]
    ref = emb[rows[0]["label"]]
    for r in rows:
        if r["label"] not in emb:
            continue
        e = emb[r["label"]]
        cos = (e * ref).sum(-1) / (np.linalg.norm(e, axis=-1) * np.linalg.norm(ref, axis=-1))
        r["cos_mean"], r["cos_min"] = float(cos.mean()), float(cos.min())

    # Latency: a warm-up pass, then passes over all sentences, each model in turn per sentence.
    passes = max(3, -(-args.runs // n))
    times = {k: [] for k in sessions}
    for p in range(passes + 1):
        for i in range(n):
            for k, s in sessions.items():
                t = time.perf_counter()
                s.run(["last_hidden_state"], inputs[k][i])
                if p:
                    times[k].append(time.perf_counter() - t)
    for r in rows:
        if r["label"] in times:
            r["ms"] = 1000 * float(np.sum(times[r["label"]])) / len(times[r["label"]])

    lens = [len(e.ids) for e in encs]
    print(f"## all-MiniLM-L6-v2, int8 ({args.threads} threads)\n")
    print(f"{n} non-empty lines of {SENTENCES} ({min(lens)}-{max(lens)} tokens, mean {np.mean(lens):.1f}), one at a "
          f"time; cosine of mean-pooled last_hidden_state to the f32 export's; latency: mean ms per sentence over "
          f"{passes} passes after a warm-up pass.\n")
    print("| model | MiB | quantize s | peak RSS MiB | mean cos | min cos | ms/sentence |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        if "error" in r:
            print(f"| {r['label']} | error: {fmt_err(r['error'])} | {fmt(r['s'], '.2f')} | {fmt(r['rss'], '.0f')} "
                  f"| | | |")
            continue
        print(f"| {r['label']} | {r['mib']:.2f} | {fmt(r['s'], '.2f')} | {fmt(r['rss'], '.0f')} | {r['cos_mean']:.6f} "
              f"| {r['cos_min']:.6f} | {r['ms']:.2f} |")
    print(f"- f32 export: edgec convert, {conv['s']:.2f} s, {conv['rss']:.0f} MiB peak RSS")
    for r in rows:
        if r.get("phases"):
            print(f"- {r['label']}: in-process quantize {r['phases']['quantize_s']:.2f} s")
    theirs = rows[1]
    for ours in rows[2:]:
        if "error" in ours or "error" in theirs:
            continue
        dc = (1 - ours["cos_mean"]) / (1 - theirs["cos_mean"]) if theirs["cos_mean"] < 1 else float("inf")
        print(f"\n{ours['label']} vs onnxruntime: (1 - mean cos) ratio {dc:.3f}; latency ratio "
              f"{ours['ms'] / theirs['ms']:.2f}; size ratio {ours['mib'] / theirs['mib']:.2f}")
    print(flush=True)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "ort-worker":
        ort_worker(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edgec", required=True)
    ap.add_argument("--model", type=Path, default=default_model(), help="EfficientNet-Lite0 fp32 ONNX")
    ap.add_argument("--minilm", type=Path, default=default_minilm(), help="all-MiniLM-L6-v2 f32 HF folder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--crops-calib", type=int, default=8, help="calibration crops per photo (default 8)")
    ap.add_argument("--crops-heldout", type=int, default=16, help="held-out crops per photo (default 16)")
    ap.add_argument("--runs", type=int, default=100, help="timed latency runs per model (default 100)")
    ap.add_argument("--sentences", type=int, default=100, help="MiniLM sentences (default 100)")
    ap.add_argument("--peer-extra", choices=("none", "percentile", "entropy"), default="none",
                    help="a second onnxruntime quantize_static row with this calibration (default none: both keep "
                    "every calibration activation in memory, 2-3 minutes and ~10 GB peak RSS at the default crops; "
                    "entropy through quantize_static comes out the same as MinMax, its histogram having as many "
                    "bins, 128, as it searches, and quantize_static cannot change num_bins)")
    ap.add_argument("--edgec-args", default="",
                    help="extra flags for the EfficientNet edgec quantize command (a lone flag: --edgec-args=--flag)")
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--skip-efficientnet", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work folder and print its path")
    args = ap.parse_args()
    if not args.model.is_file():
        sys.exit(f"no model at {args.model} (set EDGEC_SHARED_MODELS or --model)")
    if not Path("/usr/bin/time").exists():
        print("[bench-onnx] warning: no /usr/bin/time (Debian package `time`): the quantizers' peak RSS "
              "includes this script's own", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="edgec-bench-onnx-"))
    if args.keep:
        atexit.register(print, f"work folder kept: {work}")
    else:
        atexit.register(shutil.rmtree, work, True)
    edgec_extra = shlex.split(args.edgec_args)
    if not args.skip_efficientnet:
        bench_efficientnet(args, work, edgec_extra)
    if not args.skip_minilm:
        bench_minilm(args, work)


if __name__ == "__main__":
    main()
