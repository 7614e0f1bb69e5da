"""edgec quantize vs llama-quantize: speed, memory and KL-divergence.

Both tools start from the same weights: edgec reads the f32 Hugging Face
folder (safetensors), llama-quantize reads the f32 GGUF that edgec convert
writes from it (llama.cpp's own converter needs torch, which is not here).
Accuracy is judged by llama.cpp itself: llama-perplexity --kl-divergence
against the f32 GGUF's logits on a text neither tool saw.
"""

import atexit
import argparse
import json
import os
import re
import subprocess
import sys
import shutil
import tempfile
import threading
import time
from pathlib import Path

CACHE = Path(os.environ.get("EDGEC_CACHE", Path.home() / ".cache" / "edgec"))
LLAMA_BIN = Path(os.environ["LLAMA_BIN"])
MODEL_DIR = CACHE / "models" / "smollm2-135m-f32"


def measure(cmd):
    """Wall seconds and peak RSS (MiB) of one run of `cmd`.

    The peak is the larger of the child's ru_maxrss and the VmHWM/VmRSS that
    /proc shows while it runs (polled every 20 ms): on this machine's kernel
    ru_maxrss (and so /usr/bin/time) reported 1.1 GB for a run whose VmRSS was
    seen at 2.2 GB, so the kernel's exit figure alone is not trusted."""
    # stderr goes to a file: a pipe nobody reads until exit would fill and block the tool.
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.DEVNULL, stderr=log)
        seen = [0]
        done = threading.Event()

        def poll():
            while not done.is_set():
                try:
                    status = Path(f"/proc/{proc.pid}/status").read_text()
                except OSError:
                    break
                for key in ("VmHWM:", "VmRSS:"):
                    m = re.search(key + r"\s+(\d+) kB", status)
                    if m:
                        seen[0] = max(seen[0], int(m.group(1)))
                done.wait(0.02)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        _, status, usage = os.wait4(proc.pid, 0)
        done.set()
        poller.join()
        wall = time.perf_counter() - start
        log.seek(0)
        err = log.read().decode("utf-8", "replace")
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{err[-3000:]}")
    return wall, max(usage.ru_maxrss, seen[0]) / 1024


def best_of(n, cmd):
    runs = [measure(cmd) for _ in range(n)]
    return min(r[0] for r in runs), max(r[1] for r in runs)


def kld(model, base, threads):
    """llama-perplexity's mean KL-divergence, PPL and top-token agreement."""
    proc = subprocess.run([str(LLAMA_BIN / "llama-perplexity"), "-m", str(model), "--kl-divergence-base", str(base),
                           "--kl-divergence", "-t", str(threads)], capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        sys.exit(f"llama-perplexity on {model} failed:\n{out[-3000:]}")
    def grab(pattern):
        m = re.search(pattern, out)
        if not m:
            sys.exit(f"no {pattern!r} in llama-perplexity output for {model}:\n{out[-3000:]}")
        return float(m.group(1))
    return {
        "kld": grab(r"Mean\s+KLD:\s+([-0-9.e]+)"),
        "ppl": grab(r"Mean PPL\(Q\)\s*:\s+([0-9.e]+)"),
        "same_top": grab(r"Same top p:\s+([0-9.]+)"),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--edgec", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=40)
    ap.add_argument("--types", default="Q8_0,Q4_0,Q4_K_M")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    edgec = Path(args.edgec)
    work = Path(tempfile.mkdtemp(prefix="edgec-bench-"))
    atexit.register(shutil.rmtree, work, True)  # models of hundreds of MiB
    f32 = work / "smollm2.f32.gguf"
    subprocess.run([edgec, "convert", MODEL_DIR, f32, "--dtype", "f32"], check=True, capture_output=True)

    # Evaluation text: the licenses Debian ships, which neither tool calibrates on.
    text = work / "eval.txt"
    licenses = sorted(Path("/usr/share/common-licenses").iterdir())
    text.write_text("\n\n".join(p.read_text(errors="replace") for p in licenses if p.is_file()))
    base = work / "f32.kld"
    subprocess.run([LLAMA_BIN / "llama-perplexity", "-m", f32, "-f", text, "-c", str(args.ctx),
                    "--chunks", str(args.chunks), "--kl-divergence-base", base, "-t", str(args.threads)],
                   check=True, capture_output=True)

    results = {"threads": args.threads, "ctx": args.ctx, "chunks": args.chunks, "types": {}}
    for ty in args.types.split(","):
        ours, theirs = work / f"edgec.{ty}.gguf", work / f"llama.{ty}.gguf"
        e_time, e_rss = best_of(args.repeat, [edgec, "--threads", args.threads, "quantize", "--type", ty, MODEL_DIR, ours])
        l_time, l_rss = best_of(args.repeat, [LLAMA_BIN / "llama-quantize", f32, theirs, ty, args.threads])
        results["types"][ty] = {
            "edgec": {"seconds": e_time, "peak_rss_mib": e_rss, "bytes": ours.stat().st_size, **kld(ours, base, args.threads)},
            "llama.cpp": {"seconds": l_time, "peak_rss_mib": l_rss, "bytes": theirs.stat().st_size, **kld(theirs, base, args.threads)},
        }

    print(f"SmolLM2-135M, {args.threads} threads, KL-divergence vs f32 on {args.chunks}x{args.ctx} tokens "
          f"of /usr/share/common-licenses (llama-perplexity)\n")
    print("| type | tool | size MiB | quantize s | peak RSS MiB | mean KLD | PPL | same top % |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for ty, r in results["types"].items():
        for tool in ("edgec", "llama.cpp"):
            x = r[tool]
            print(f"| {ty} | {tool} | {x['bytes'] / 2**20:.1f} | {x['seconds']:.2f} | {x['peak_rss_mib']:.0f} "
                  f"| {x['kld']:.5f} | {x['ppl']:.3f} | {x['same_top']:.2f} |")
        e, l = r["edgec"], r["llama.cpp"]
        print(f"| {ty} | edgec/llama.cpp | {e['bytes'] / l['bytes']:.3f} | {e['seconds'] / l['seconds']:.2f} "
              f"| {e['peak_rss_mib'] / l['peak_rss_mib']:.2f} | {e['kld'] / l['kld']:.3f} | | |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
