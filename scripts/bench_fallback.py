"""Which 32-block type should a k-quant fall back to when a row is not a
multiple of 256? Quantizes SmolLM2-135M (hidden size 576: most of its
tensors need a fallback) with every candidate as a `--pure` preset and lets
llama.cpp judge: KL-divergence against f32 with llama-perplexity, beside the
bits per weight. Run through scripts/bench-fallback.sh.
"""

import atexit
import argparse
import json
import subprocess
import shutil
import tempfile
from pathlib import Path

from bench_quantize import LLAMA_BIN, MODEL_DIR, kld


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--edgec", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--types", default="Q4_0,IQ4_NL,Q4_1,Q5_0,Q5_1")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgec-fallback-"))
    atexit.register(shutil.rmtree, work, True)  # models of hundreds of MiB
    f32 = work / "f32.gguf"
    subprocess.run([args.edgec, "convert", MODEL_DIR, f32], check=True, capture_output=True)
    text = work / "eval.txt"
    licenses = sorted(Path("/usr/share/common-licenses").iterdir())
    text.write_text("\n\n".join(p.read_text(errors="replace") for p in licenses if p.is_file()))
    base = work / "f32.kld"
    subprocess.run([LLAMA_BIN / "llama-perplexity", "-m", f32, "-f", text, "-c", str(args.ctx), "--chunks",
                    str(args.chunks), "--kl-divergence-base", base, "-t", str(args.threads)], check=True,
                   capture_output=True)
    print("| type (--pure) | bits/weight | mean KLD | PPL | same top % |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for ty in args.types.split(","):
        out = work / f"{ty}.gguf"
        report = subprocess.run([args.edgec, "--threads", str(args.threads), "quantize", "--pure", "--type", ty,
                                 MODEL_DIR, out, "--json"], check=True, capture_output=True, text=True).stdout
        bpw = json.loads(report)["bits_per_weight"]
        r = kld(out, base, args.threads)
        print(f"| {ty} | {bpw:.2f} | {r['kld']:.5f} | {r['ppl']:.3f} | {r['same_top']:.2f} |")


if __name__ == "__main__":
    main()
