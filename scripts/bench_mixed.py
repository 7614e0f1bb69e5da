"""Mixed precision under a size budget: edgec --target-bpw vs the Q4_K_M preset at the same size.

On SmolLM2-135M (f32):
  - edgec quantize --type Q4_K_M --calib (the preset's per-tensor types, calibrated);
  - edgec quantize --target-bpw B --calib, B = the Q4_K_M file's measured bits per weight
    (per-tensor types chosen by measured sensitivity), with each sensitivity proxy.
Both calibrate on the same N x L tokens of /usr/share/common-licenses (as bench_calib.py).
Accuracy is judged by llama-perplexity --kl-divergence against the f32 GGUF's logits on
held-out text of another domain: the docstrings of the Python standard library.

Then the proxy check: with --method gptq (no AWQ, so every tensor's rounding is independent
of the others' types), a Q8_0 file and, for a sample of tensors, the same file with that one
tensor lowered to its lowest candidate (--tensor-type). The real effect is the KLD increase
over the Q8_0 file; the predicted one is the proxy's error increase (lowest candidate minus
Q8_0) from the mixed run's report. Spearman's rank correlation for each proxy: kfac (the Gram
error of each row weighed by its share of the loss's Fisher information), fisher (Σ F (w-q)²),
gram (Σ (w-q)ᵀ G (w-q)), diag (Σ E[x²](w-q)²) and plain (Σ (w-q)², no activations).

SmolLM2's only published weights are Q4_1, so the "f32" model is Q4_1's grid: types whose grids
contain it (Q5_1 can, with the scale search finding d and m) reproduce some tensors exactly,
which flatters any method that picks them. The benchmark therefore runs on two models: SmolLM2
as packaged, and SmolLM2 with the grid dithered away (each 32-weight block jittered uniformly by
+-half its Q4_1 step, fixed seed): continuous weights like a real f32 model's, judged against
their own f32 logits. The proxy check runs on the dithered model.

Target: KLD(--target-bpw) <= 0.8 x KLD(Q4_K_M) at the same size.
llama-quantize (this llama.cpp build) has no --target-bpw-like option (checked from its
--help at run time); if a later one does, it is reported.
Run through scripts/bench-mixed.sh.
"""

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tokenizers import Tokenizer

from bench_calib import CTX, write_calib_text
from bench_quantize import LLAMA_BIN, MODEL_DIR, kld, measure

PROXIES = ("kfac", "fisher", "gram", "diag", "plain")
STDLIB = Path(sys.base_prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"


def write_heldout_text(path, tokens_wanted, tok):
    """Docstrings of the Python standard library's top-level modules, in sorted order."""
    parts, n = [], 0
    for p in sorted(STDLIB.glob("*.py")):
        try:
            tree = ast.parse(p.read_text(errors="replace"))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 200:
                    parts.append(doc)
                    n += len(tok.encode(doc).ids)
        if n >= tokens_wanted:
            break
    path.write_text("\n\n".join(parts))
    return n


def link_model(src, dst):
    """A private copy of the model folder (hard links): another job re-making the cached folder
    cannot pull it away mid-run."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def dither_model(src, dst, seed=0):
    """`src` with every 2-D weight's 32-element blocks jittered uniformly by +-half their Q4_1 step."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, dst / f.name)
    rng = np.random.default_rng(seed)
    tensors = load_file(str(src / "model.safetensors"))
    out = {}
    for name in sorted(tensors):
        w = tensors[name]
        if w.ndim == 2 and w.shape[1] % 32 == 0:
            b = w.astype(np.float32).reshape(-1, 32)
            step = (b.max(axis=1, keepdims=True) - b.min(axis=1, keepdims=True)) / 15.0
            b = b + (rng.random(b.shape, dtype=np.float32) - 0.5) * step
            w = b.reshape(w.shape).astype(np.float32)
        out[name] = np.ascontiguousarray(w)
    save_file(out, str(dst / "model.safetensors"))
    return dst


def _gguf_layout(path):
    """(raw metadata bytes, [(name, dims, type, offset)], data start) of a GGUF v3 file (alignment 32)."""
    import struct
    buf = path.read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return v[0]

    def string():
        nonlocal pos
        n = take("Q")
        pos += n
        return buf[pos - n:pos].decode()

    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def value(ty):
        if ty == 8:
            string()
        elif ty == 9:
            elem, n = take("I"), take("Q")
            for _ in range(n):
                value(elem)
        else:
            take(scalar[ty])

    assert buf[:4] == b"GGUF" and struct.unpack_from("<I", buf, 4)[0] == 3
    pos = 8
    n_tensors, n_kv = take("Q"), take("Q")
    kv_start = pos
    for _ in range(n_kv):
        string()
        value(take("I"))
    kv = buf[kv_start:pos]
    infos = []
    for _ in range(n_tensors):
        name = string()
        dims = [take("Q") for _ in range(take("I"))]
        infos.append((name, dims, take("I"), take("Q")))
    start = (pos + 31) // 32 * 32
    return buf, n_kv, kv, infos, start


def splice(base, donor, name, out):
    """`base` with tensor `name`'s type and bytes taken from `donor` (same model, other types)."""
    import struct
    b_buf, n_kv, kv, b_infos, b_start = _gguf_layout(base)
    d_buf, _, _, d_infos, d_start = _gguf_layout(donor)

    def extents(infos, start, size):
        offs = [o for *_, o in infos] + [size - start]
        return {n: (t, start + o, start + offs[i + 1]) for i, (n, _, t, o) in enumerate(infos)}

    b_ext, d_ext = extents(b_infos, b_start, len(b_buf)), extents(d_infos, d_start, len(d_buf))
    head, data = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(b_infos), n_kv) + kv), bytearray()
    for n, dims, ty, _ in b_infos:
        src_buf, (t, lo, hi) = (d_buf, d_ext[n]) if n == name else (b_buf, b_ext[n])
        enc = n.encode()
        head += struct.pack("<Q", len(enc)) + enc + struct.pack("<I", len(dims))
        head += b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", t, len(data))
        data += src_buf[lo:hi]  # each extent already ends on the alignment
        data += b"\0" * (-len(data) % 32)
    head += b"\0" * (-len(head) % 32)
    out.write_bytes(bytes(head + data))


def spearman(xs, ys):
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx = sum((a - mx) ** 2 for a in rx) ** 0.5
    vy = sum((b - my) ** 2 for b in ry) ** 0.5
    return cov / (vx * vy) if vx and vy else float("nan")


def quantize_json(cmd):
    """Runs an edgec quantize --json command; its report, with wall seconds."""
    import time
    start = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout)
    report["wall"] = time.perf_counter() - start
    return report


def peer_option():
    out = subprocess.run([str(LLAMA_BIN / "llama-quantize"), "--help"], capture_output=True, text=True)
    text = out.stdout + out.stderr
    for flag in ("--target-bpw", "--target-size", "--bpw"):
        if flag in text:
            return flag
    return None


def bench(args, work):
    edgec, t = args.edgec, args.threads
    tok = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    calib, heldout = work / "calib.txt", work / "heldout.txt"
    write_calib_text(calib)
    held_tokens = write_heldout_text(heldout, args.chunks * CTX + 2048, tok)
    peer = peer_option()
    print(f"SmolLM2-135M, {t} threads; calibration: {args.samples} x {args.len} tokens of the licences; "
          f"KL-divergence vs f32 on {args.chunks} x {CTX} tokens of Python stdlib docstrings "
          f"({held_tokens} tokens written; llama-perplexity)\n")
    print(f"llama-quantize peer option: {peer or 'none in this build (no --target-bpw-like option)'}\n", flush=True)
    packaged = link_model(MODEL_DIR, work / "smollm2")
    models = {"packaged": packaged}
    if "dithered" in args.models:
        models["dithered"] = dither_model(packaged, work / "smollm2-dithered")
    for name in args.models.split(","):
        model = models[name]
        f32, base = work / f"{name}.f32.gguf", work / f"{name}.f32.kld"
        measure([edgec, "convert", model, f32])
        measure([LLAMA_BIN / "llama-perplexity", "-m", f32, "-f", heldout, "-c", CTX, "--chunks", args.chunks,
                 "--kl-divergence-base", base, "-t", t])
        if not args.rank_only:
            compare(args, work, name, model, calib, base)
        if name == args.models.split(",")[-1] and args.rank_tensors > 0:
            rank_check(args, work, model, calib, f32, heldout)


def compare(args, work, name, model, calib, base):
    edgec, t = args.edgec, args.threads
    calib_flags = ["--calib", calib, "--calib-samples", args.samples, "--calib-len", args.len]
    rows = {}

    def row(label, out, cmd):
        r = quantize_json([edgec, "--threads", t, "quantize", *cmd, "--json", model, out])
        rows[label] = {"bytes": out.stat().st_size, "bpw": r["bits_per_weight"], "s": r["wall"], "report": r,
                       **kld(out, base, t)}
        return r

    q4 = row("Q4_K_M --calib", work / f"{name}.q4km.gguf", ["--type", "Q4_K_M", *calib_flags])
    target = q4["bits_per_weight"]
    for proxy in args.proxies.split(","):
        row(f"--target-bpw {target:.4f} ({proxy})", work / f"{name}.mixed.{proxy}.gguf",
            ["--type", "Q4_K_M", "--target-bpw", f"{target:.6f}", "--sensitivity", proxy, *calib_flags])
    if args.size_check:
        size = rows["Q4_K_M --calib"]["bytes"]
        row(f"--target-size {size}", work / f"{name}.mixed.size.gguf",
            ["--type", "Q4_K_M", "--target-size", str(size), *calib_flags])

    print(f"### SmolLM2-135M, {name}\n")
    print("| file | MiB | bytes | bits/weight | edgec s | mean KLD | PPL | same top % | KLD / Q4_K_M |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    ref = rows["Q4_K_M --calib"]["kld"]
    for label, r in rows.items():
        print(f"| {label} | {r['bytes'] / 2**20:.2f} | {r['bytes']} | {r['bpw']:.4f} | {r['s']:.1f} | {r['kld']:.5f} "
              f"| {r['ppl']:.3f} | {r['same_top']:.2f} | {r['kld'] / ref:.3f} |")
    print()
    q4types = {}
    for tr in q4["tensors"]:
        q4types[tr["type"]] = q4types.get(tr["type"], 0) + 1
    print(f"- Q4_K_M --calib: types {dict(sorted(q4types.items()))}")
    for label, r in rows.items():
        mixed = r["report"].get("mixed")
        if mixed:
            print(f"- {label}: types {mixed['types']}; sensitivity {mixed['seconds']:.1f}s")
    best = min((r["kld"] for k, r in rows.items() if k.startswith("--target-bpw")), default=float("nan"))
    ratio = best / ref
    print(f"\n{name}: KLD --target-bpw / Q4_K_M at the same size = {ratio:.3f} (target <= 0.8, "
          f"{'met' if ratio <= 0.8 else 'MISSED'})\n", flush=True)


def rank_check(args, work, model, calib, f32, heldout):
    """The proxy against the real effect, one tensor lowered at a time (on the first --rank-chunks
    chunks of the held-out text: one llama-perplexity run per tensor)."""
    edgec, t = args.edgec, args.threads
    base = work / "rank.f32.kld"
    measure([LLAMA_BIN / "llama-perplexity", "-m", f32, "-f", heldout, "-c", CTX, "--chunks", args.rank_chunks,
             "--kl-divergence-base", base, "-t", t])
    rank_flags = ["--calib", calib, "--calib-samples", args.rank_samples, "--calib-len", args.len,
                  "--method", "gptq"]
    # GPTQ without AWQ rounds every tensor from its own weights and statistics alone, so a file
    # with one tensor lowered is the Q8_0 file with that tensor's bytes from the all-lowest file
    base_q8, lowest = work / "rank.q8.gguf", work / "rank.lowest.gguf"
    r = quantize_json([edgec, "--threads", t, "quantize", "--type", "Q8_0", *rank_flags, "--target-bpw", "8.4",
                       "--sensitivity", "kfac", "--json", model, work / "rank.mixed.gguf"])
    records = r["mixed"]["tensors"]
    measure([edgec, "--threads", t, "quantize", "--type", "Q8_0", *rank_flags, model, base_q8])
    measure([edgec, "--threads", t, "quantize", "--type", "Q2_K", "--pure", *rank_flags, model, lowest])
    k0 = kld(base_q8, base, t)["kld"]
    # an even sample over the weights (in model order: every kind, every depth)
    n = min(args.rank_tensors, len(records))
    sample = [records[i * len(records) // n + (len(records) // n) // 2] for i in range(n)]
    pts = []
    print(f"### Proxy vs real effect (--method gptq, {args.rank_samples} x {args.len} calibration tokens; "
          f"KLD on {args.rank_chunks} x {CTX} held-out tokens; Q8_0 file KLD {k0:.5f})\n")
    print("| tensor | lowered to | real KLD increase | " + " | ".join(PROXIES) + " |")
    print("| --- | --- | ---: |" + " ---: |" * len(PROXIES))
    for rec in sample:
        cands = rec["candidates"]
        low, top = cands[0], next(c for c in cands if c["type"] == "Q8_0")
        out = work / "rank.one.gguf"
        if args.recalibrate:
            measure([edgec, "--threads", t, "quantize", "--type", "Q8_0", *rank_flags,
                     "--tensor-type", f"{rec['gguf']}={low['type']}", model, out])
        else:
            splice(base_q8, lowest, rec["gguf"], out)
        dk = kld(out, base, t)["kld"] - k0
        pred = {p: low[p] - top[p] for p in PROXIES}
        pts.append((dk, pred))
        print(f"| {rec['gguf']} | {low['type']} | {dk:.5f} | " + " | ".join(f"{pred[p]:.4g}" for p in PROXIES) + " |",
              flush=True)
    print()
    for p in PROXIES:
        rho = spearman([x[0] for x in pts], [x[1][p] for x in pts])
        print(f"Spearman rank correlation, {p} proxy vs real KLD increase ({len(pts)} tensors): {rho:.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edgec", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=32, help="calibration sequences N (default 32)")
    ap.add_argument("--len", type=int, default=512, help="tokens per calibration sequence L (default 512)")
    ap.add_argument("--chunks", type=int, default=40, help="held-out chunks of 512 tokens judged (default 40)")
    ap.add_argument("--proxies", default="kfac,gram", help="sensitivity proxies to run --target-bpw with")
    ap.add_argument("--models", default="packaged,dithered", help="packaged and/or dithered SmolLM2")
    ap.add_argument("--size-check", action="store_true", help="also --target-size at the Q4_K_M file's bytes")
    ap.add_argument("--rank-tensors", type=int, default=16, help="tensors lowered one at a time (0: skip)")
    ap.add_argument("--rank-chunks", type=int, default=10, help="held-out chunks of the proxy check")
    ap.add_argument("--rank-samples", type=int, default=16, help="calibration sequences of the proxy check")
    ap.add_argument("--rank-only", action="store_true", help="only the proxy check (on the last model)")
    ap.add_argument("--recalibrate", action="store_true",
                    help="proxy check: quantize each lowered file with --tensor-type instead of splicing")
    ap.add_argument("--keep", help="write the work files here and keep them")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgec-bench-mixed-") as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        bench(args, work)


if __name__ == "__main__":
    main()
