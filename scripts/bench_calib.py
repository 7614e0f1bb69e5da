"""Activation-aware calibration: edgec quantize --calib vs llama.cpp's importance matrix.

On SmolLM2-135M (f32), for each type (default Q4_K_M, Q4_0, IQ4_NL):
  - llama.cpp: plain llama-quantize, and llama-imatrix (-c L --chunks N) followed by
    llama-quantize --imatrix;
  - edgec: quantize --method rtn, and quantize --calib with N samples x L tokens (the
    method edgec picks); with --all-methods also --method awq, imatrix, awq+imatrix, gptq;
    with --sequential also --calib --sequential (one layer at a time), with and without
    --no-propagate.
Both tools calibrate on the same text, /usr/share/common-licenses without GPL-3.
Accuracy is judged by llama-perplexity --kl-divergence against the f32 GGUF's logits
on GPL-3, which neither tool calibrated on. Time and peak RSS cover the whole
quantization: llama-imatrix + llama-quantize (times summed, the larger RSS), and the
single edgec command (which calibrates itself).

Targets, per type: KLD(edgec --calib) / KLD(llama.cpp --imatrix) <= 0.5, and
time(edgec --calib) / time(llama-imatrix + llama-quantize) <= 1.0.
Run through scripts/bench-calib.sh.
"""

import argparse
import hashlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from tokenizers import Tokenizer

from bench_quantize import LLAMA_BIN, MODEL_DIR, kld, measure

LICENSES = Path("/usr/share/common-licenses")
JUDGE = LICENSES / "GPL-3"
CTX = 512  # context of the KLD judging
CALIB_FLAGS = ("--calib", "--calib-samples", "--calib-len", "--method")
EXTRA_METHODS = ("awq", "imatrix", "awq+imatrix", "gptq")


def write_calib_text(path):
    """The licenses except the judging one, in sorted order, symlinks and duplicate texts skipped."""
    seen, parts = set(), []
    for p in sorted(LICENSES.iterdir()):
        if p.is_symlink() or not p.is_file() or p.samefile(JUDGE):
            continue
        text = p.read_text(errors="replace")
        digest = hashlib.sha256(text.encode()).digest()
        if digest not in seen:
            seen.add(digest)
            parts.append(text)
    path.write_text("\n\n".join(parts))


def check_edgec_flags(edgec):
    usage = subprocess.run([edgec, "quantize", "--help"], capture_output=True, text=True).stdout
    missing = [f for f in CALIB_FLAGS if f not in re.findall(r"--[\w+-]+", usage)]
    if missing:
        sys.exit(f"{edgec} quantize does not accept {', '.join(missing)}: this benchmark needs "
                 "`edgec quantize --calib FILE --calib-samples N --calib-len L --method METHOD`")


def bench(args, work):
    edgec, t, n, length = args.edgec, args.threads, args.samples, args.len
    quantize = LLAMA_BIN / "llama-quantize"
    calib, f32, base, imatrix = work / "calib.txt", work / "f32.gguf", work / "f32.kld", work / "imatrix.gguf"
    write_calib_text(calib)
    tokens = len(Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json")).encode(calib.read_text()).ids)
    if tokens < n * length:
        print(f"warning: the calibration text has {tokens} tokens, fewer than {n} x {length}", file=sys.stderr)
    measure([edgec, "convert", MODEL_DIR, f32])
    measure([LLAMA_BIN / "llama-perplexity", "-m", f32, "-f", JUDGE, "-c", CTX, "--kl-divergence-base", base,
             "-t", t])
    imatrix_cmd = [LLAMA_BIN / "llama-imatrix", "-m", f32, "-f", calib, "-c", length, "--chunks", n, "--no-ppl",
                   "-o", imatrix, "--output-format", "gguf", "-t", t]
    calib_flags = ["--calib", calib, "--calib-samples", n, "--calib-len", length]
    # edgec --calib runs right after llama.cpp's imatrix + quantize, so that both see the machine alike
    methods = [None, "rtn"] + (list(EXTRA_METHODS) if args.all_methods else [])

    print(f"SmolLM2-135M, {t} threads; calibration: {n} x {length} tokens of {calib.name} ({tokens} tokens); "
          f"KL-divergence vs f32 on GPL-3, ctx {CTX} (llama-perplexity)\n")
    for ty in args.types.split(","):
        rows = {}
        # llama-imatrix is timed again for every type, just before its quantize and edgec's run: this
        # machine's speed drifts, and one early timing made the ratios drift with it
        imatrix_s, imatrix_rss = measure(imatrix_cmd)

        def row(label, out, cmd, extra=(0.0, 0.0)):
            seconds, rss = measure(cmd)
            rows[label] = {"mib": out.stat().st_size / 2**20, "s": seconds + extra[0], "rss": max(rss, extra[1]),
                           **kld(out, base, t)}

        out = work / f"llama.imatrix.{ty}.gguf"
        row("llama.cpp --imatrix", out, [quantize, "--imatrix", imatrix, f32, out, ty, t], (imatrix_s, imatrix_rss))
        for method in methods:
            out = work / f"edgec.{method or 'calib'}.{ty}.gguf"
            flags = (["--method", method] if method else []) + (calib_flags if method != "rtn" else [])
            row(f"edgec --method {method}" if method else "edgec --calib", out,
                [edgec, "--threads", t, "quantize", "--type", ty, *flags, MODEL_DIR, out])
            if method is None:
                out = work / f"llama.{ty}.gguf"
                row("llama.cpp", out, [quantize, f32, out, ty, t])
            if method is None and args.sequential:
                for extra in (["--sequential"], ["--sequential", "--no-propagate"]):
                    out = work / f"edgec.calib{''.join(extra)}.{ty}.gguf"
                    row("edgec --calib " + " ".join(extra), out,
                        [edgec, "--threads", t, "quantize", "--type", ty, *calib_flags, *extra, MODEL_DIR, out])

        print(f"### {ty}\n\n| tool / method | MiB | seconds | peak RSS MiB | mean KLD | PPL |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for label, r in rows.items():
            print(f"| {label} | {r['mib']:.1f} | {r['s']:.2f} | {r['rss']:.0f} | {r['kld']:.5f} | {r['ppl']:.3f} |")
        ours, theirs = rows["edgec --calib"], rows["llama.cpp --imatrix"]
        k, s = ours["kld"] / theirs["kld"], ours["s"] / theirs["s"]
        print(f"\n{ty}: KLD edgec --calib / llama.cpp --imatrix = {k:.3f} (target <= 0.5, "
              f"{'met' if k <= 0.5 else 'MISSED'}); time edgec / llama.cpp imatrix+quantize = {s:.2f} "
              f"(target <= 1.0, {'met' if s <= 1.0 else 'MISSED'})\n", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edgec", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=32, help="calibration sequences N (default 32)")
    ap.add_argument("--len", type=int, default=512, help="tokens per calibration sequence L (default 512)")
    ap.add_argument("--types", default="Q4_K_M,Q4_0,IQ4_NL")
    ap.add_argument("--all-methods", action="store_true", help="also edgec --method awq, imatrix, awq+imatrix, gptq")
    ap.add_argument("--sequential", action="store_true",
                    help="also edgec --calib --sequential (with and without --no-propagate)")
    ap.add_argument("--keep", help="write the work files (texts, GGUFs, imatrix) here and keep them")
    args = ap.parse_args()
    check_edgec_flags(args.edgec)
    with tempfile.TemporaryDirectory(prefix="edgec-bench-calib-") as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        bench(args, work)


if __name__ == "__main__":
    main()
