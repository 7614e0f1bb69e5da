"""Structured pruning of SmolLM2-135M with edgec, judged and timed in llama.cpp.

Settings (each `edgec prune MODEL out.gguf ... --calib calib.txt --calib-samples N --calib-len L`):
  ffn25-uniform     --ffn 0.25 --uniform     every layer 1536 -> 1152 neurons (llama.cpp's `llama`)
  ffn25-nonuniform  --ffn 0.25               per-layer widths from a global ranking, same total or
                                             less (multiples of 256: DeciLM-writable; `deci` GGUF)
  heads33-uniform   --heads 0.34 --uniform   one of the 3 GQA groups of 3 heads in every layer
  heads33-nonuniform --heads 0.34            the same number of groups, placed by a global ranking
  layers6           --layers 6               the 6 of 30 layers with the least block influence
Calibration: the licences of /usr/share/common-licenses except GPL-3 (as bench-calib and
bench-prune). Accuracy: llama-perplexity on GPL-3 (ctx 512), PPL and mean KL-divergence against
the dense f32 GGUF. Speed in llama.cpp (F32 files, 2 threads), dense and pruned alternated,
`--repeat` times, medians: prompt processing (llama-perplexity's seconds per pass, -c 512,
4 chunks) and generation (llama-simple, 64 tokens, its decode speed).

Targets (issue 14): llama.cpp loads and runs every file; the file shrinks with the parameter
count; generation tokens/s >= 1.15x dense at FFN -25%; non-uniform beats uniform on KLD at the
same parameter count. Run through scripts/bench-structured.sh.
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_calib import CTX, JUDGE, write_calib_text
from bench_quantize import LLAMA_BIN, MODEL_DIR, kld, measure

SETTINGS = {
    "ffn25-uniform": ["--ffn", "0.25", "--uniform"],
    "ffn25-nonuniform": ["--ffn", "0.25"],
    "heads33-uniform": ["--heads", "0.34", "--uniform"],
    "heads33-nonuniform": ["--heads", "0.34"],
    "layers6": ["--layers", "6"],
}


def log(msg):
    print(f"[bench-structured] {msg}", file=sys.stderr, flush=True)


def run_text(cmd):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        sys.exit(f"{cmd[0]} failed:\n{out[-3000:]}")
    return out


def prompt_seconds(model, threads):
    out = run_text([LLAMA_BIN / "llama-perplexity", "-m", model, "-f", JUDGE, "-c", 512, "--chunks", 4,
                    "-t", threads])
    m = re.search(r"([0-9.]+) seconds per pass", out)
    if not m:
        sys.exit(f"no 'seconds per pass' for {model}:\n{out[-2000:]}")
    return float(m.group(1))


def generation_tps(model, threads):
    out = run_text([LLAMA_BIN / "llama-simple", "-m", model, "-n", 64, "The licence says"])
    m = re.search(r"eval time =\s+[0-9.]+ ms /\s+\d+ runs\s+\(\s*[0-9.]+ ms per token,\s+([0-9.]+) tokens per second",
                  out)
    if not m:
        sys.exit(f"no decode speed for {model}:\n{out[-2000:]}")
    return float(m.group(1))


def params_of(edgec, model):
    info = json.loads(subprocess.run([str(edgec), "inspect", str(model), "--json"], capture_output=True, text=True,
                                     check=True).stdout)
    return info["total_params"], info["layers"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edgec", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--len", type=int, default=512)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--repeat", type=int, default=3, help="speed runs per file, alternated with dense")
    ap.add_argument("--speed", default="ffn25-uniform,ffn25-nonuniform,layers6",
                    help="settings whose llama.cpp speed is measured")
    args = ap.parse_args()
    t = args.threads
    with tempfile.TemporaryDirectory(prefix="bench-structured-") as tmp:
        work = Path(tmp)
        calib, f32, base = work / "calib.txt", work / "f32.gguf", work / "f32.kld"
        write_calib_text(calib)
        measure([args.edgec, "convert", MODEL_DIR, f32])
        measure([LLAMA_BIN / "llama-perplexity", "-m", f32, "-f", JUDGE, "-c", CTX, "--kl-divergence-base", base,
                 "-t", t])
        dense = kld(f32, base, t)
        dense_params, _ = params_of(args.edgec, f32)
        rows = []
        for name in args.settings.split(","):
            out = work / f"{name}.gguf"
            log(f"{name}: edgec prune")
            s, rss = measure([args.edgec, "--threads", t, "prune", MODEL_DIR, out, *SETTINGS[name], "--calib", calib,
                              "--calib-samples", args.samples, "--calib-len", args.len])
            params, layers = params_of(args.edgec, out)
            row = {"name": name, "s": s, "rss": rss, "params": params, "mib": out.stat().st_size / 2**20,
                   "ffn": sorted({l["ffn"] for l in layers}), "heads": sorted({l["heads"] for l in layers}),
                   "layers": len(layers), **kld(out, base, t)}
            log(f"{name}: PPL {row['ppl']:.3f}, KLD {row['kld']:.4f}, {params / 1e6:.2f}M params")
            if name in args.speed.split(","):
                dp, pp, dg, pg = [], [], [], []
                for _ in range(args.repeat):
                    dp.append(prompt_seconds(f32, t))
                    pp.append(prompt_seconds(out, t))
                    dg.append(generation_tps(f32, t))
                    pg.append(generation_tps(out, t))
                row.update(dense_prompt=statistics.median(dp), prompt=statistics.median(pp),
                           dense_gen=statistics.median(dg), gen=statistics.median(pg))
                log(f"{name}: prompt {row['prompt']:.2f} s vs dense {row['dense_prompt']:.2f}; generation "
                    f"{row['gen']:.1f} vs {row['dense_gen']:.1f} tokens/s")
            rows.append(row)
            out.unlink()
        dense_mib = f32.stat().st_size / 2**20
    print(f"SmolLM2-135M (f32), {t} threads; calibration {args.samples} x {args.len} tokens of the licences "
          f"except GPL-3; judged by llama-perplexity on GPL-3 (ctx {CTX}) against the dense f32 GGUF "
          f"(PPL {dense['ppl']:.3f}, {dense_params / 1e6:.2f}M parameters, {dense_mib:.1f} MiB)\n")
    print("| setting | layers | FFN widths | heads | params (M) | F32 MiB | PPL | PPL/dense | mean KLD | "
          "prune s | prompt s/pass (dense) | gen tok/s (dense) | gen speed-up |")
    print("| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        speed = ("| — | — | —" if "gen" not in r else
                 f"| {r['prompt']:.2f} ({r['dense_prompt']:.2f}) | {r['gen']:.1f} ({r['dense_gen']:.1f}) | "
                 f"{r['gen'] / r['dense_gen']:.2f}×")
        widths = (lambda v: f"{v[0]}" if len(v) == 1 else f"{v[0]}–{v[-1]}")
        print(f"| {r['name']} | {r['layers']} | {widths(r['ffn'])} | {widths(r['heads'])} | {r['params'] / 1e6:.2f} | "
              f"{r['mib']:.1f} | {r['ppl']:.3f} | {r['ppl'] / dense['ppl']:.2f}× | {r['kld']:.4f} | {r['s']:.1f} "
              f"{speed} |")


if __name__ == "__main__":
    main()
