"""Peak memory of calibrated quantization on a model of about 1.2B parameters.

The script makes a llama-shaped model with random bf16 weights (TinyLlama's
shape: hidden 2048, 22 layers, FFN 5632, 32 heads, 4 KV heads; SmolLM2's
tokenizer, vocabulary 49152, untied head: 1.17B parameters, 2.3 GB of
safetensors), then quantizes it to Q4_K_M with calibration:

  - edgec quantize --calib --sequential (one layer at a time);
  - llama.cpp: llama-imatrix on the bf16 GGUF that edgec convert writes, then
    llama-quantize --imatrix (with --peer; on by default).

Both calibrate on the same tokens (N x L of /usr/share/common-licenses). The
quantized files are loaded and run by llama-perplexity on one chunk, to show
that llama.cpp reads them. Random weights make KL-divergence meaningless, so
this benchmark is about memory and time; bench-calib.sh judges accuracy.

Target: edgec's peak RSS under 1.5 GB (1430 MiB).
Run through scripts/bench-large.sh.
"""

import argparse
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench_calib import write_calib_text
from bench_quantize import LLAMA_BIN, MODEL_DIR, measure

SHAPE = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "vocab_size": 49152,
}
TARGET_MIB = 1.5e9 / 2**20


def tensor_shapes(c):
    h, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = h // c["num_attention_heads"] * c["num_key_value_heads"]
    yield "model.embed_tokens.weight", (v, h)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (h,)
        yield p + "self_attn.q_proj.weight", (h, h)
        yield p + "self_attn.k_proj.weight", (kv, h)
        yield p + "self_attn.v_proj.weight", (kv, h)
        yield p + "self_attn.o_proj.weight", (h, h)
        yield p + "post_attention_layernorm.weight", (h,)
        yield p + "mlp.gate_proj.weight", (f, h)
        yield p + "mlp.up_proj.weight", (f, h)
        yield p + "mlp.down_proj.weight", (h, f)
    yield "model.norm.weight", (h,)
    yield "lm_head.weight", (v, h)


def make_model(folder, seed):
    """Writes config.json, the tokenizer and model.safetensors (BF16), one tensor at a time.

    numpy has no bfloat16, so the safetensors file is laid out here: the header
    names BF16 and each tensor's bytes are the top halves of float32 values.
    """
    folder.mkdir(parents=True)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **SHAPE,
        "head_dim": SHAPE["hidden_size"] // SHAPE["num_attention_heads"],
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "torch_dtype": "bfloat16",
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(MODEL_DIR / name, folder / name)
    shapes = list(tensor_shapes(SHAPE))
    header, offset = {}, 0
    for name, shape in shapes:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    rng = np.random.default_rng(seed)
    with open(folder / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for name, shape in shapes:
            if name.endswith("norm.weight"):
                values = np.ones(shape, dtype=np.float32)
            else:
                # 0.02: the usual initialiser's scale; outputs stay finite through 22 layers
                values = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
            f.write((values.view(np.uint32) >> 16).astype(np.uint16).tobytes())
    return sum(int(np.prod(s)) for _, s in shapes)


def runs_in_llama_cpp(model, text, threads):
    proc = subprocess.run([str(LLAMA_BIN / "llama-perplexity"), "-m", str(model), "-f", str(text), "-c", "128",
                           "--chunks", "1", "-t", str(threads)], capture_output=True, text=True)
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", proc.stdout + proc.stderr)
    if proc.returncode != 0 or not m:
        sys.exit(f"llama-perplexity could not run {model}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return float(m.group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edgec", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=8, help="calibration sequences N (default 8)")
    ap.add_argument("--len", type=int, default=512, help="tokens per calibration sequence L (default 512)")
    ap.add_argument("--no-peer", action="store_true", help="skip llama-imatrix + llama-quantize")
    ap.add_argument("--keep", help="make the model and outputs here and keep them (reused when present)")
    args = ap.parse_args()

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="edgec-bench-large-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        bench(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def bench(args, work):
    t, n, length = args.threads, args.samples, args.len
    model = work / "llama-1.2b-bf16"
    if not (model / "model.safetensors").exists():
        shutil.rmtree(model, ignore_errors=True)
        params = make_model(model, seed=1)
    else:
        params = sum(int(np.prod(s)) for _, s in tensor_shapes(SHAPE))
    calib = work / "calib.txt"
    write_calib_text(calib)
    print(f"random llama, {params / 1e9:.3f}B parameters, bf16 ({(model / 'model.safetensors').stat().st_size / 2**30:.2f}"
          f" GiB); Q4_K_M calibrated on {n} x {length} tokens; {t} threads\n")
    rows = {}
    out = work / "edgec.Q4_K_M.gguf"
    s, rss = measure([args.edgec, "--threads", t, "quantize", "--type", "Q4_K_M", "--calib", calib,
                      "--calib-samples", n, "--calib-len", length, "--sequential", model, out])
    rows["edgec --calib --sequential"] = (out, s, rss)
    if not args.no_peer:
        bf16 = work / "bf16.gguf"
        imatrix = work / "imatrix.gguf"
        if not bf16.exists():
            measure([args.edgec, "convert", "--dtype", "bf16", model, bf16])
        s1, rss1 = measure([LLAMA_BIN / "llama-imatrix", "-m", bf16, "-f", calib, "-c", length, "--chunks", n,
                            "--no-ppl", "-o", imatrix, "--output-format", "gguf", "-t", t])
        out = work / "llama.Q4_K_M.gguf"
        s2, rss2 = measure([LLAMA_BIN / "llama-quantize", "--imatrix", imatrix, bf16, out, "Q4_K_M", t])
        rows["llama-imatrix + llama-quantize"] = (out, s1 + s2, max(rss1, rss2))

    print("| tool | MiB | seconds | peak RSS MiB | loads in llama.cpp (PPL, 1 chunk) |")
    print("| --- | ---: | ---: | ---: | --- |")
    for label, (out, s, rss) in rows.items():
        ppl = runs_in_llama_cpp(out, calib, t)
        print(f"| {label} | {out.stat().st_size / 2**20:.1f} | {s:.1f} | {rss:.0f} | yes ({ppl:.1f}) |")
    rss = rows["edgec --calib --sequential"][2]
    print(f"\nedgec peak RSS {rss:.0f} MiB (target < {TARGET_MIB:.0f} MiB = 1.5 GB: "
          f"{'met' if rss < TARGET_MIB else 'MISSED'})")


if __name__ == "__main__":
    main()
