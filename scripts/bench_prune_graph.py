"""Sparse conv weights in TFLite: EfficientNet-Lite0 with its 1x1 convs pruned
(`edgec prune --ops pointwise --sparsity S`, default 0.75; --method magnitude, or wanda /
sparsegpt calibrated on K crops (--calib-crops) of the photos in $EDGEC_CACHE/images/calib with
`--image-transform efficientnet`), written twice from the same pruned weights: dense
(`--tflite-sparse off`) and sparse behind DENSIFY (`auto`), as XNNPACK's sparse inference wants
them.

Measured in LiteRT (ai-edge-litert's Interpreter, default op resolver = XNNPACK delegate,
--threads, default 2):
  - latency per image on one photo: R rounds (--rounds) of N interleaved runs (--runs) of the
    dense and the DENSIFY file (and the unpruned model, for scale) after warm-up, each round
    starting with another of the three; each round's medians and their ratio, then the median
    over the rounds;
  - load time (Interpreter + allocate_tensors, the DENSIFY ops run there), median of 5;
  - file sizes;
  - top-1 agreement of the pruned model (DENSIFY file) with the unpruned one (edgec convert, f32)
    in LiteRT, on K crops (--crops) of the held-out photos of fixtures/fetch-images.sh (never the
    calibration ones), also where the unpruned model's top probability is > 0.5; mean
    KL(p_unpruned || p_pruned);
  - that both files give the same logits (max |diff|).

The script also records whether this CPU can run XNNPACK's sparse path at all: XNNPACK turns
sparse (CHW) inference off on x86 processors with AVX (`xnn_is_chw_compatible_config`: "on
processors with AVX ISA dense inference is expected to be faster than sparse"), so there the two
files are expected to run at the same speed.

Target (issue 14): LiteRT latency of the DENSIFY file >= 1.2x faster than the dense one.
Run through scripts/bench-prune-graph.sh.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_onnx as bo  # noqa: E402  (interleaved_latency, log_softmax, load_crops)

CACHE = Path(os.environ.get("EDGEC_CACHE", Path.home() / ".cache" / "edgec"))


def log(msg):
    print(f"[bench-prune-graph] {msg}", file=sys.stderr, flush=True)


def effnet_path():
    shared = os.environ.get("EDGEC_SHARED_MODELS")
    for d in [shared, HERE.parent.parent / "shared" / "models"]:
        if d and (Path(d) / "efficientnet_lite0.onnx").is_file():
            return Path(d) / "efficientnet_lite0.onnx"
    sys.exit("efficientnet_lite0.onnx not found: set EDGEC_SHARED_MODELS (scripts/setup-env.sh)")


def cpu_flags():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def edgec(cmd):
    log(" ".join(str(c) for c in cmd))
    t = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{cmd} failed ({proc.returncode}):\n{proc.stderr}")
    return time.perf_counter() - t, proc.stdout.strip()


def interpreter(path, threads):
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    return it


def ops_of(it):
    ops = [d["op_name"] for d in it._get_ops_details()]
    return {o: ops.count(o) for o in sorted(set(ops))}


def logits(it, xs):
    """xs NCHW [N, 3, 224, 224] -> [N, 1000], one image at a time."""
    (inp,), out = it.get_input_details(), it.get_output_details()[0]
    res = []
    for x in xs:
        it.set_tensor(inp["index"], np.ascontiguousarray(x.transpose(1, 2, 0)[None]))
        it.invoke()
        res.append(it.get_tensor(out["index"]).reshape(-1).copy())
    return np.stack(res)


def runner(it, x):
    (inp,), out = it.get_input_details(), it.get_output_details()[0]
    fed = np.ascontiguousarray(x.transpose(1, 2, 0)[None])

    def go():
        it.set_tensor(inp["index"], fed)
        it.invoke()
        return it.get_tensor(out["index"])
    return go


def load_time(path, threads, n=5):
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        interpreter(path, threads)
        ts.append(time.perf_counter() - t)
    return 1000 * float(np.median(ts))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edgec", required=True)
    ap.add_argument("--sparsity", type=float, default=0.75, help="fraction of each 1x1 conv weight dropped")
    ap.add_argument("--method", default="magnitude", choices=["magnitude", "wanda", "sparsegpt"])
    ap.add_argument("--calib-crops", type=int, default=4, help="crops per calibration photo (default 4)")
    ap.add_argument("--global", dest="global_", action="store_true", help="one threshold over all 1x1 weights")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=100, help="interleaved runs per round (default 100)")
    ap.add_argument("--rounds", type=int, default=6, help="rounds of interleaved runs (default 6)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--crops", type=int, default=4, help="crops per photo for top-1 agreement (default 4)")
    ap.add_argument("--keep", type=Path, help="keep the files here")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = ap.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-prune-graph-"))
    work.mkdir(parents=True, exist_ok=True)
    src = effnet_path()
    dense, sparse, unpruned = work / "pruned.dense.tflite", work / "pruned.densify.tflite", work / "unpruned.tflite"
    prune = ["prune", src, None, "--method", args.method, "--sparsity", str(args.sparsity), "--ops", "pointwise"]
    if args.method != "magnitude":
        prune += ["--calib", CACHE / "images" / "calib", "--image-transform", "efficientnet",
                  "--crops", str(args.calib_crops)]
    if args.global_:
        prune.append("--global")
    t_sparse, line_sparse = edgec([args.edgec, *[sparse if a is None else a for a in prune]])
    t_dense, _ = edgec([args.edgec, *[dense if a is None else a for a in prune], "--tflite-sparse", "off"])
    edgec([args.edgec, "convert", src, unpruned])
    log(line_sparse)

    its = {k: interpreter(p, args.threads) for k, p in
           [("unpruned", unpruned), ("dense", dense), ("densify", sparse)]}
    ops = ops_of(its["densify"])
    # per weight, every 1x1 weight passes 2/3 zeros or none does
    expected = 32 if args.global_ or args.sparsity >= 2 / 3 else 0
    if (ops.get("DENSIFY", 0) > 0) != (expected > 0):
        sys.exit(f"the DENSIFY file has {ops.get('DENSIFY', 0)} DENSIFY ops, expected {expected}: {ops}")
    if "DENSIFY" in ops_of(its["dense"]):
        sys.exit("the dense file has DENSIFY ops")

    # quality: the held-out photos, K crops
    xs, n_photos = bo.load_crops(CACHE / "images" / "heldout", args.crops)
    log(f"{len(xs)} crops of {n_photos} photos")
    ref = logits(its["unpruned"], xs)
    got = logits(its["densify"], xs)
    got_dense = logits(its["dense"], xs)
    same = float(np.abs(got - got_dense).max())
    lp, lq = bo.log_softmax(ref.astype(np.float64)), bo.log_softmax(got.astype(np.float64))
    p = np.exp(lp)
    kld = float((p * (lp - lq)).sum(axis=1).mean())
    agree = ref.argmax(1) == got.argmax(1)
    conf = p.max(1) > 0.5
    quality = {
        "samples": int(len(xs)), "photos": n_photos,
        "top1_agreement": 100 * float(agree.mean()),
        "top1_agreement_conf": 100 * float(agree[conf].mean()) if conf.any() else None,
        "conf_samples": int(conf.sum()),
        "kld": kld, "max_diff_densify_vs_dense": same,
    }

    # latency: rounds of interleaved runs on one photo
    one = xs[0]
    rounds = []
    names = list(its)
    for r in range(args.rounds):
        # each round starts with another file, so no file always runs after the same one
        order = names[r % len(names):] + names[:r % len(names)]
        lat = bo.interleaved_latency({k: runner(its[k], one) for k in order}, args.runs,
                                     warmup=args.warmup if r == 0 else 2)
        lat["ratio"] = lat["dense"] / lat["densify"]
        rounds.append(lat)
        log(f"round {r + 1}: unpruned {lat['unpruned']:.2f} ms, dense {lat['dense']:.2f} ms, "
            f"DENSIFY {lat['densify']:.2f} ms, dense/DENSIFY {lat['ratio']:.3f}")
    med = {k: float(np.median([r[k] for r in rounds])) for k in ("unpruned", "dense", "densify", "ratio")}
    loads = {k: load_time(p, args.threads) for k, p in [("dense", dense), ("densify", sparse)]}
    sizes = {k: p.stat().st_size for k, p in [("unpruned", unpruned), ("dense", dense), ("densify", sparse)]}
    flags = cpu_flags()
    cpu = {"avx": "avx" in flags, "avx2": "avx2" in flags, "machine": os.uname().machine}

    from ai_edge_litert import __version__ as litert_version  # noqa: N811
    print(f"\n### EfficientNet-Lite0, 1x1 convs at {100 * args.sparsity:.0f}% "
          f"({args.method}{', global' if args.global_ else ', per weight'}), LiteRT {litert_version}, "
          f"{args.threads} threads\n")
    print("| file | size (MiB) | load (ms) | latency (ms, median of round medians) |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| unpruned f32 | {sizes['unpruned'] / 2**20:.2f} | — | {med['unpruned']:.2f} |")
    print(f"| pruned, dense | {sizes['dense'] / 2**20:.2f} | {loads['dense']:.1f} | {med['dense']:.2f} |")
    print(f"| pruned, DENSIFY | {sizes['densify'] / 2**20:.2f} | {loads['densify']:.1f} | {med['densify']:.2f} |")
    print(f"\nRounds ({args.rounds} x {args.runs} interleaved runs), dense/DENSIFY: "
          + ", ".join(f"{r['ratio']:.3f}" for r in rounds))
    qc = quality["top1_agreement_conf"]
    print(f"\nTop-1 agreement with the unpruned model: {quality['top1_agreement']:.1f} % of "
          f"{quality['samples']} crops ({args.crops} per photo, {n_photos} held-out photos); "
          f"{'—' if qc is None else f'{qc:.1f}'} % of the {quality['conf_samples']} where the unpruned "
          f"model's top probability > 0.5; mean KLD {kld:.4f}. DENSIFY vs dense logits: max |diff| {same:.3g}.")
    print(f"edgec prune: {t_sparse:.2f} s (DENSIFY file), {t_dense:.2f} s (dense file).")
    print(f"CPU: {cpu['machine']}, AVX {'yes' if cpu['avx'] else 'no'}"
          + (" — XNNPACK runs no sparse (CHW) inference on x86 with AVX, so equal latency is expected here"
             if cpu["avx"] and cpu["machine"] in ("x86_64", "i686") else ""))
    met = med["ratio"] >= 1.2
    print(f"\nTarget: LiteRT latency dense/DENSIFY >= 1.2: {'MET' if met else 'MISSED'} ({med['ratio']:.3f})\n")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rounds": rounds,
                                         "median": med, "load_ms": loads, "sizes": sizes, "quality": quality,
                                         "cpu": cpu, "litert": litert_version}, indent=2))


if __name__ == "__main__":
    main()
