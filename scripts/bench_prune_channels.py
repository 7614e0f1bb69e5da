"""Channel pruning of EfficientNet-Lite0 (`edgec prune --macs F`, default 0.25: the uniform
fraction of every prunable channel group's channels that removes F of the multiply-adds,
channels ranked by their filters' L2 norms, data-free), against the unpruned model, in
onnxruntime (CPU EP) and LiteRT (float TFLite from `edgec convert`, XNNPACK), --threads each
(default 2):

  - latency per image on one photo: R rounds (--rounds) of N interleaved runs (--runs) of the
    unpruned and the pruned model, each round starting with the other; each round's medians and
    their ratio, then the median over the rounds; per runtime;
  - MACs (Conv and Gemm, from the pruned weights' shapes and onnx shape inference), parameters,
    file sizes;
  - top-1 agreement of the pruned model with the unpruned one (onnxruntime) on K crops (--crops)
    of the held-out photos of fixtures/fetch-images.sh, also where the unpruned model's top
    probability is > 0.5; mean KL(p_unpruned || p_pruned); no fine-tuning (distillation would
    win it back).

Target (issue 14): 25% of the MACs removed, lower latency in both runtimes. Run through
scripts/bench-prune-channels.sh.
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
import bench_onnx as bo  # noqa: E402  (interleaved_latency, log_softmax, load_crops, session)
from bench_prune_graph import effnet_path, interpreter, runner as tfl_runner  # noqa: E402

CACHE = Path(os.environ.get("EDGEC_CACHE", Path.home() / ".cache" / "edgec"))


def log(msg):
    print(f"[bench-prune-channels] {msg}", file=sys.stderr, flush=True)


def edgec(cmd):
    log(" ".join(str(c) for c in cmd))
    t = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{cmd} failed ({proc.returncode}):\n{proc.stderr}")
    return time.perf_counter() - t, (proc.stdout + proc.stderr).strip()


def macs_and_params(path):
    import onnx
    from onnx import numpy_helper
    m = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    w = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(m.graph.value_info) + list(m.graph.output)}
    total = 0
    for n in m.graph.node:
        if n.op_type in ("Conv", "Gemm"):
            out = shapes[n.output[0]]
            total += int(np.prod(out)) // out[1] * w[n.input[1]].size
    return total, sum(v.size for v in w.values())


def ort_runner(sess, x):
    name = sess.get_inputs()[0].name
    fed = {name: x[None]}

    def go():
        return sess.run(None, fed)[0]
    return go


def latency(runners, rounds, runs, warmup, tag):
    names = list(runners)
    res = []
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        lat = bo.interleaved_latency({k: runners[k] for k in order}, runs, warmup=warmup if r == 0 else 2)
        lat["ratio"] = lat["unpruned"] / lat["pruned"]
        res.append(lat)
        log(f"{tag} round {r + 1}: unpruned {lat['unpruned']:.2f} ms, pruned {lat['pruned']:.2f} ms, "
            f"ratio {lat['ratio']:.3f}")
    med = {k: float(np.median([r[k] for r in res])) for k in ("unpruned", "pruned", "ratio")}
    return res, med


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edgec", required=True)
    ap.add_argument("--macs", type=float, default=0.25, help="fraction of the MACs removed (default 0.25)")
    ap.add_argument("--channels", type=float, help="instead: fraction of each group's channels removed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=50, help="interleaved runs per round (default 50)")
    ap.add_argument("--rounds", type=int, default=6, help="rounds (default 6)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--crops", type=int, default=4, help="crops per held-out photo (default 4)")
    ap.add_argument("--keep", type=Path, help="keep the files here")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = ap.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-prune-channels-"))
    work.mkdir(parents=True, exist_ok=True)
    src = effnet_path()
    p_onnx, p_tfl, u_tfl = work / "pruned.onnx", work / "pruned.tflite", work / "unpruned.tflite"
    how = ["--channels", str(args.channels)] if args.channels else ["--macs", str(args.macs)]
    t_prune, line = edgec([args.edgec, "prune", src, p_onnx, *how])
    log(line)
    edgec([args.edgec, "convert", p_onnx, p_tfl])
    edgec([args.edgec, "convert", src, u_tfl])
    macs0, params0 = macs_and_params(src)
    macs1, params1 = macs_and_params(p_onnx)

    sess = {"unpruned": bo.session(src, args.threads), "pruned": bo.session(p_onnx, args.threads)}
    its = {"unpruned": interpreter(u_tfl, args.threads), "pruned": interpreter(p_tfl, args.threads)}

    xs, n_photos = bo.load_crops(CACHE / "images" / "heldout", args.crops)
    log(f"{len(xs)} crops of {n_photos} photos")
    ref = np.stack([ort_runner(sess["unpruned"], x)().reshape(-1) for x in xs])
    got = np.stack([ort_runner(sess["pruned"], x)().reshape(-1) for x in xs])
    got_tfl = np.stack([tfl_runner(its["pruned"], x)().reshape(-1) for x in xs])
    tfl_vs_ort = float(np.abs(got_tfl - got).max() / np.abs(got).max())
    lp, lq = bo.log_softmax(ref.astype(np.float64)), bo.log_softmax(got.astype(np.float64))
    p = np.exp(lp)
    kld = float((p * (lp - lq)).sum(axis=1).mean())
    agree = ref.argmax(1) == got.argmax(1)
    conf = p.max(1) > 0.5
    quality = {"samples": int(len(xs)), "photos": n_photos, "top1_agreement": 100 * float(agree.mean()),
               "top1_agreement_conf": 100 * float(agree[conf].mean()) if conf.any() else None,
               "conf_samples": int(conf.sum()), "kld": kld, "litert_vs_ort_rel": tfl_vs_ort}

    one = xs[0]
    ort_rounds, ort_med = latency({k: ort_runner(s, one) for k, s in sess.items()},
                                  args.rounds, args.runs, args.warmup, "onnxruntime")
    tfl_rounds, tfl_med = latency({k: tfl_runner(i, one) for k, i in its.items()},
                                  args.rounds, args.runs, args.warmup, "LiteRT")
    sizes = {"unpruned_onnx": src.stat().st_size, "pruned_onnx": p_onnx.stat().st_size,
             "unpruned_tflite": u_tfl.stat().st_size, "pruned_tflite": p_tfl.stat().st_size}

    import onnxruntime
    from ai_edge_litert import __version__ as litert_version  # noqa: N811
    print(f"\n### EfficientNet-Lite0, channel pruning ({' '.join(how)}), onnxruntime {onnxruntime.__version__}, "
          f"LiteRT {litert_version}, {args.threads} threads\n")
    print(f"edgec: {line}\n")
    print(f"MACs {macs0 / 1e6:.1f}M -> {macs1 / 1e6:.1f}M ({100 * (1 - macs1 / macs0):.1f}% fewer); "
          f"parameters {params0 / 1e6:.2f}M -> {params1 / 1e6:.2f}M; edgec prune {t_prune:.2f} s\n")
    print("| runtime | unpruned (ms) | pruned (ms) | speed-up (median of round ratios) | size unpruned -> pruned (MiB) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(f"| onnxruntime | {ort_med['unpruned']:.2f} | {ort_med['pruned']:.2f} | {ort_med['ratio']:.3f}x | "
          f"{sizes['unpruned_onnx'] / 2**20:.2f} -> {sizes['pruned_onnx'] / 2**20:.2f} |")
    print(f"| LiteRT (f32) | {tfl_med['unpruned']:.2f} | {tfl_med['pruned']:.2f} | {tfl_med['ratio']:.3f}x | "
          f"{sizes['unpruned_tflite'] / 2**20:.2f} -> {sizes['pruned_tflite'] / 2**20:.2f} |")
    print(f"\nRounds ({args.rounds} x {args.runs} interleaved runs), unpruned/pruned: onnxruntime "
          + ", ".join(f"{r['ratio']:.3f}" for r in ort_rounds) + "; LiteRT "
          + ", ".join(f"{r['ratio']:.3f}" for r in tfl_rounds))
    qc = quality["top1_agreement_conf"]
    print(f"\nTop-1 agreement with the unpruned model (onnxruntime, no fine-tuning): "
          f"{quality['top1_agreement']:.1f} % of {quality['samples']} crops ({args.crops} per photo, {n_photos} "
          f"held-out photos); {'—' if qc is None else f'{qc:.1f}'} % of the {quality['conf_samples']} where the "
          f"unpruned model's top probability > 0.5; mean KLD {kld:.4f}. Pruned LiteRT vs pruned onnxruntime "
          f"logits: max rel diff {tfl_vs_ort:.2e}.")
    met = macs1 <= 0.75 * macs0 * 1.0001 and ort_med["ratio"] > 1 and tfl_med["ratio"] > 1
    print(f"\nTarget: >= 25% of the MACs removed and lower latency in both runtimes: {'MET' if met else 'MISSED'}\n")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "edgec": line,
                                         "macs": [macs0, macs1], "params": [params0, params1], "sizes": sizes,
                                         "onnxruntime": {"rounds": ort_rounds, "median": ort_med},
                                         "litert": {"rounds": tfl_rounds, "median": tfl_med},
                                         "quality": quality}, indent=2))


if __name__ == "__main__":
    main()
