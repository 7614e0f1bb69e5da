"""edgec eval vs llama-perplexity: tokens/s and peak RSS of a perplexity run
on SmolLM2-135M (f32 and Q4_K_M), same text, same context and chunks, same
thread count. Tokens/s counts every evaluated token over the whole run's
wall time (loading and tokenizing included, for both tools). Run through
scripts/bench-eval.sh.
"""

import atexit
import argparse
import json
import re
import subprocess
import shutil
import tempfile
from pathlib import Path

from bench_quantize import LLAMA_BIN, MODEL_DIR, measure


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--edgec", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgec-bench-eval-"))
    atexit.register(shutil.rmtree, work, True)  # models of hundreds of MiB
    text = work / "eval.txt"
    text.write_text(Path("/usr/share/common-licenses/GPL-3").read_text())
    f32 = work / "f32.gguf"
    q4 = work / "q4_k_m.gguf"
    subprocess.run([args.edgec, "convert", MODEL_DIR, f32], check=True, capture_output=True)
    subprocess.run([args.edgec, "quantize", "--type", "Q4_K_M", MODEL_DIR, q4], check=True, capture_output=True)
    tokens = args.ctx * args.chunks
    print(f"SmolLM2-135M perplexity, {args.chunks} x {args.ctx} tokens of GPL-3, {args.threads} threads, "
          f"best of {args.repeat}\n")
    print("| model | tool | tokens/s | peak RSS MiB | PPL |")
    print("| --- | --- | ---: | ---: | ---: |")
    for label, ours_in, theirs_in in [("f32", MODEL_DIR, f32), ("Q4_K_M", q4, q4)]:
        ours_cmd = [args.edgec, "--threads", args.threads, "eval", ours_in, "--data", text, "--ctx", args.ctx,
                    "--chunks", args.chunks]
        theirs_cmd = [LLAMA_BIN / "llama-perplexity", "-m", theirs_in, "-f", text, "-c", args.ctx, "--chunks",
                      args.chunks, "-t", args.threads]
        e = min((measure(ours_cmd) for _ in range(args.repeat)), key=lambda r: r[0])
        l = min((measure(theirs_cmd) for _ in range(args.repeat)), key=lambda r: r[0])
        e_ppl = json.loads(subprocess.run([str(c) for c in ours_cmd] + ["--json"], capture_output=True,
                                          check=True).stdout)["reference"]["ppl"]
        log = subprocess.run([str(c) for c in theirs_cmd], capture_output=True, text=True, check=True)
        l_ppl = float(re.search(r"Final estimate: PPL = ([0-9.]+)", log.stdout + log.stderr).group(1))
        print(f"| {label} | edgec | {tokens / e[0]:.0f} | {e[1]:.0f} | {e_ppl:.4f} |")
        print(f"| {label} | llama.cpp | {tokens / l[0]:.0f} | {l[1]:.0f} | {l_ppl:.4f} |")
        print(f"| {label} | edgec/llama.cpp | {l[0] / e[0]:.2f} | {e[1] / l[1]:.2f} | |")


if __name__ == "__main__":
    main()
