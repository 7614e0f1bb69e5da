"""Pruning: edgec prune vs llm-compressor (WandaPruningModifier, SparseGPTModifier) on SmolLM2-135M.

For each setting (default 50% unstructured and 2:4; 70% too) and method (default wanda,
sparsegpt, magnitude), one after the other:
  - edgec: `edgec prune MODEL out.gguf --method M (--sparsity 0.5 | --pattern 2:4)
    --calib calib.txt --calib-samples N --calib-len L` (magnitude: no calibration);
  - llm-compressor (wanda and sparsegpt only): `oneshot` with the same modifier on the CPU,
    in its own venv (scripts/setup-prune-peer.sh), run by this file with --peer-worker; it
    writes an f32 Hugging Face folder, which `edgec convert` turns into a GGUF.
With --owl, each unstructured setting also runs edgec with OWL's per-block sparsity
(`--owl`, M 5 and lambda 0.08 unless --owl-m/--owl-lambda say otherwise; the setting's
sparsity is the blocks' mean), reported beside plain edgec with each block's measured zeros.
Both tools calibrate on the same N x L tokens: the licences of /usr/share/common-licenses
except GPL-3, tokenized with the model's tokenizer (no special tokens), N windows of L
tokens at starts i * (total - L) // (N - 1), as edgec takes them; the worker gets the
windows themselves. Both prune the decoder layers' linear weights (not lm_head, which
SmolLM2 ties to the embeddings).
Accuracy: llama-perplexity on GPL-3 (ctx 512), PPL and mean KL-divergence against the
dense f32 GGUF. Time and peak RSS: the edgec prune command, and the whole worker process
for llm-compressor (python start, imports, model load, oneshot, save; its breakdown is
printed too); the GGUF conversion of the peer's folder is not counted.

Targets, per setting: PPL(edgec) <= PPL(llm-compressor) for the same method, and
time(edgec) <= 0.5 x time(llm-compressor).
Run through scripts/bench-prune.sh.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tokenizers import Tokenizer

from bench_calib import CTX, JUDGE, write_calib_text
from bench_quantize import LLAMA_BIN, MODEL_DIR, kld, measure

CACHE = Path(os.environ.get("EDGEC_CACHE", Path.home() / ".cache" / "edgec"))
SETTINGS = {"50%": ["--sparsity", "0.5"], "70%": ["--sparsity", "0.7"], "2:4": ["--pattern", "2:4"]}
SKIPPED = "skipped (--skip-peer)"  # scripts/bench-prune.sh's --peer-error for --skip-peer: no peer rows
PEER_METHODS = ("wanda", "sparsegpt")  # llm-compressor's one-shot pruners compared here
# The linear weights both tools prune, by their GGUF names.
PRUNED = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def log(msg):
    print(f"[bench-prune] {msg}", file=sys.stderr, flush=True)


def calibration_windows(ids, n, length):
    """calibration/src/data.rs calibration_sequences: n windows of `length` tokens, evenly spread."""
    if len(ids) <= length:
        return [list(ids)]
    span = len(ids) - length
    n = min(n, span + 1)
    return [list(ids[s:s + length]) for s in (i * span // max(n - 1, 1) for i in range(n))]


# ---------------------------------------------------------------- peer worker (runs in its venv)

def peer_worker(argv):
    """`bench_prune.py --peer-worker MODEL_DIR OUT_DIR METHOD SETTING WINDOWS.json CALIB.txt THREADS
    TIMES.json`: llm-compressor's oneshot on the CPU; writes an f32 HF folder and its phase times."""
    model_dir, out_dir, method, setting, windows_path, calib_path, threads, times_path = argv
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a CPU run, whatever the machine has
    times, t = {}, time.perf_counter()
    import torch  # import-check: prune-peer-venv
    from llmcompressor import oneshot  # import-check: prune-peer-venv
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier  # import-check: prune-peer-venv
    from transformers import AutoModelForCausalLM, AutoTokenizer  # import-check: prune-peer-venv
    torch.set_num_threads(int(threads))
    times["import_s"] = time.perf_counter() - t

    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    windows = json.loads(Path(windows_path).read_text())
    # The windows come from the caller's tokenizers run; check that transformers agrees.
    ids = AutoTokenizer.from_pretrained(model_dir)(Path(calib_path).read_text(), add_special_tokens=False)["input_ids"]
    if calibration_windows(ids, len(windows), len(windows[0])) != windows:
        print("warning: transformers' tokenization of the calibration text differs from the windows given",
              file=sys.stderr)
    # One sequence a batch, as edgec runs them; a DataLoader is used by oneshot as it is.
    batches = [{"input_ids": torch.tensor([w]), "attention_mask": torch.ones(1, len(w), dtype=torch.long)}
               for w in windows]
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    times["load_s"] = time.perf_counter() - t

    shape = {"sparsity": 0.5, "mask_structure": setting} if ":" in setting else {"sparsity": float(setting)}
    modifier = {"wanda": WandaPruningModifier, "sparsegpt": SparseGPTModifier}[method](
        **shape, targets=[r"re:model\.layers\.\d+$"], ignore=["re:.*lm_head"])
    t = time.perf_counter()
    oneshot(model=model, recipe=modifier, dataset=loader, num_calibration_samples=len(windows),
            max_seq_length=len(windows[0]), shuffle_calibration_samples=False)
    times["oneshot_s"] = time.perf_counter() - t

    t = time.perf_counter()
    model.save_pretrained(out_dir, save_compressed=False)  # dense f32 safetensors
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the original tokenizer files, as they are
        shutil.copyfile(Path(model_dir) / name, Path(out_dir) / name)
    times["save_s"] = time.perf_counter() - t
    Path(times_path).write_text(json.dumps(times))


# ---------------------------------------------------------------- benchmark (runs in the test venv)

def sparsity(gguf_path):
    """Fraction of zeros over the pruned linear weights of a GGUF (f32/f16 tensors), overall and
    per block."""
    import numpy as np  # here, not at the top: the peer venv runs this file too and has no gguf
    from gguf import GGUFReader

    zeros, total = {}, {}
    for t in GGUFReader(gguf_path).tensors:
        if t.name.startswith("blk.") and t.name.split(".")[2] in PRUNED:
            block = int(t.name.split(".")[1])
            data = np.asarray(t.data)
            zeros[block] = zeros.get(block, 0) + int(np.count_nonzero(data == 0))
            total[block] = total.get(block, 0) + data.size
    if not total:
        return float("nan"), []
    return sum(zeros.values()) / sum(total.values()), [zeros[b] / total[b] for b in sorted(total)]


def try_measure(cmd):
    """measure(), with a failure returned as its message rather than ending the benchmark."""
    try:
        return measure(cmd), None
    except SystemExit as e:
        return None, str(e)


def judge(row, gguf, base, threads, keep):
    """PPL, KLD and sparsity of one output GGUF into `row`; the GGUF is deleted unless kept."""
    overall, blocks = sparsity(gguf)
    row.update(kld(gguf, base, threads), sparsity=overall, blocks=blocks)
    log(f"{row['setting']} {row['tool']} {row['method']}: PPL {row['ppl']:.3f}, KLD {row['kld']:.5f}, "
        f"{row['s']:.1f} s, {row['rss']:.0f} MiB, {100 * row['sparsity']:.2f}% zeros")
    if not keep:
        gguf.unlink()


def bench(args, work):
    edgec, t, n, length = args.edgec, args.threads, args.samples, args.len
    calib, f32, base = work / "calib.txt", work / "f32.gguf", work / "f32.kld"
    write_calib_text(calib)
    ids = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json")).encode(
        calib.read_text(), add_special_tokens=False).ids
    if len(ids) < n * length:
        log(f"the calibration text has {len(ids)} tokens, fewer than {n} x {length}: windows overlap")
    windows = work / "windows.json"
    windows.write_text(json.dumps(calibration_windows(ids, n, length)))
    measure([edgec, "convert", MODEL_DIR, f32])
    measure([LLAMA_BIN / "llama-perplexity", "-m", f32, "-f", JUDGE, "-c", CTX, "--kl-divergence-base", base,
             "-t", t])
    dense = kld(f32, base, t)
    if not args.keep:
        f32.unlink()  # the KLD base holds the dense logits; the disk is short

    calib_flags = ["--calib", calib, "--calib-samples", n, "--calib-len", length]
    owl_flags = ["--owl", "--owl-m", args.owl_m, "--owl-lambda", args.owl_lambda]
    rows = []
    for setting in args.settings.split(","):
        for method in args.methods.split(","):
            # edgec (and edgec with OWL), then (right after, so both see the machine alike)
            # llm-compressor
            for owl in (False, True) if args.owl and ":" not in setting else (False,):
                name = f"{method}+owl" if owl else method
                out = work / f"edgec.{name}.{setting.replace(':', 'of').replace('%', '')}.gguf"
                log(f"{setting} {name}: edgec")
                row = {"setting": setting, "method": name, "tool": "edgec"}
                rows.append(row)
                got, row["error"] = try_measure([edgec, "--threads", t, "prune", MODEL_DIR, out, "--method", method,
                                                 *SETTINGS[setting], *(owl_flags if owl else []),
                                                 *(calib_flags if method != "magnitude" or owl else [])])
                if got:
                    row["s"], row["rss"] = got
                    judge(row, out, base, t, args.keep)
            if method not in PEER_METHODS or args.peer_error == SKIPPED:
                continue
            row = {"setting": setting, "method": method, "tool": "llm-compressor"}
            rows.append(row)
            if not args.peer_python:
                row["error"] = args.peer_error or "no --peer-python (run through scripts/bench-prune.sh)"
                continue
            log(f"{setting} {method}: llm-compressor")
            folder = work / f"peer.{method}.{setting.replace(':', 'of')}"
            times = work / f"{folder.name}.times.json"
            shape = SETTINGS[setting][1] if setting.endswith("%") else setting  # "0.5" or "2:4"
            got, row["error"] = try_measure([args.peer_python, Path(__file__).resolve(), "--peer-worker", MODEL_DIR,
                                             folder, method, shape, windows, calib, t, times])
            if got:
                row["s"], row["rss"] = got
                row["phases"] = json.loads(times.read_text())
                gguf = work / f"{folder.name}.gguf"
                measure([edgec, "--threads", t, "convert", folder, gguf])
                if not args.keep:
                    shutil.rmtree(folder)
                judge(row, gguf, base, t, args.keep)
    report(args, len(ids), dense, rows)


def report(args, tokens, dense, rows):
    print(f"SmolLM2-135M (f32), {args.threads} threads; calibration: {args.samples} x {args.len} tokens of the "
          f"licences except GPL-3 ({tokens} tokens); judged by llama-perplexity on GPL-3, ctx {CTX}, against "
          f"the dense f32 GGUF (PPL {dense['ppl']:.3f})\n")
    print("| setting | tool | method | PPL | PPL/dense | mean KLD | seconds | peak RSS MiB | sparsity % |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        if r.get("error"):
            print(f"| {r['setting']} | {r['tool']} | {r['method']} | failed: {r['error'].splitlines()[0][:120]} "
                  "| | | | | |")
            continue
        print(f"| {r['setting']} | {r['tool']} | {r['method']} | {r['ppl']:.3f} | {r['ppl'] / dense['ppl']:.3f} "
              f"| {r['kld']:.5f} | {r['s']:.1f} | {r['rss']:.0f} | {100 * r['sparsity']:.2f} |")
    owl = [r for r in rows if r["method"].endswith("+owl")]
    if owl:
        print(f"\nOWL (M {args.owl_m}, lambda {args.owl_lambda}) against plain edgec, same setting and method "
              "(PPL/dense; the blocks' measured sparsity, first to last):\n")
        for r in owl:
            p = next((x for x in rows if x["tool"] == "edgec" and x["setting"] == r["setting"]
                      and x["method"] == r["method"].removesuffix("+owl")), None)
            if r.get("error") or p is None or p.get("error"):
                print(f"- {r['setting']} {r['method']}: no ratio (a run failed)")
                continue
            blocks = " ".join(f"{100 * b:.0f}" for b in r["blocks"])
            print(f"- {r['setting']} {r['method']}: PPL/dense {r['ppl'] / dense['ppl']:.3f} vs "
                  f"{p['ppl'] / dense['ppl']:.3f} plain (OWL/plain {r['ppl'] / p['ppl']:.3f}), KLD {r['kld']:.4f} vs "
                  f"{p['kld']:.4f}, {r['s']:.1f} s vs {p['s']:.1f} s; block sparsity % {blocks}")
    peer = [r for r in rows if r["tool"] == "llm-compressor" and "phases" in r]
    if peer:
        print("\nllm-compressor worker, seconds by phase (the rest of its time is the python start):\n")
        print("| setting | method | imports | model load + data | oneshot | save | whole process |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for r in peer:
            p = r["phases"]
            print(f"| {r['setting']} | {r['method']} | {p['import_s']:.1f} | {p['load_s']:.1f} "
                  f"| {p['oneshot_s']:.1f} | {p['save_s']:.1f} | {r['s']:.1f} |")
    print("\nedgec / llm-compressor, same setting and method (targets: PPL ratio <= 1, time ratio <= 0.5):\n")
    for r in rows:
        if r["tool"] != "edgec" or r["method"] not in PEER_METHODS:
            continue
        p = next((x for x in rows if x["tool"] == "llm-compressor" and x["setting"] == r["setting"]
                  and x["method"] == r["method"]), None)
        if p is None:
            continue
        if r.get("error") or p.get("error"):
            print(f"- {r['setting']} {r['method']}: no ratio (a run failed)")
            continue
        ppl, s = r["ppl"] / p["ppl"], r["s"] / p["s"]
        print(f"- {r['setting']} {r['method']}: PPL {ppl:.3f} ({'met' if ppl <= 1 else 'MISSED'}), "
              f"time {s:.2f} ({'met' if s <= 0.5 else 'MISSED'}); vs oneshot alone {r['s'] / p['phases']['oneshot_s']:.2f}")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--peer-worker":
        peer_worker(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edgec", required=True)
    ap.add_argument("--peer-python", help="python of the llm-compressor venv (scripts/setup-prune-peer.sh prints it)")
    ap.add_argument("--peer-error", help="why there is no --peer-python (shown in the table)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=64, help="calibration sequences N (default 64)")
    ap.add_argument("--len", type=int, default=512, help="tokens per calibration sequence L (default 512)")
    ap.add_argument("--settings", default="50%,2:4", help=f"comma-separated, of {', '.join(SETTINGS)}")
    ap.add_argument("--methods", default="wanda,sparsegpt,magnitude",
                    help="comma-separated edgec methods; llm-compressor runs wanda and sparsegpt")
    ap.add_argument("--owl", action="store_true",
                    help="also run edgec with OWL's per-block sparsity at each unstructured setting")
    ap.add_argument("--owl-m", default="5", help="OWL's outlier threshold M (default 5)")
    ap.add_argument("--owl-lambda", default="0.08", help="OWL's lambda (default 0.08)")
    ap.add_argument("--keep", help="write the work files (texts, GGUFs, the peer's folders) here and keep them")
    args = ap.parse_args()
    for s in args.settings.split(","):
        if s not in SETTINGS:
            sys.exit(f"unknown setting {s!r}: use {', '.join(SETTINGS)}")
    with tempfile.TemporaryDirectory(prefix="edgec-bench-prune-") as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        bench(args, work)


if __name__ == "__main__":
    main()
