"""Conformance in llama.cpp: every GGUF type edgec writes loads and runs in
llama.cpp's own tools; greedy generation from Q8_0 SmolLM2 equals f32's;
MiniLM's embeddings in llama.cpp match an independent numpy BERT.

Prerequisites (a missing one fails, with what to run): scripts/setup-env.sh
(LLAMA_BIN, the venv), fixtures/fetch-real.sh (the real models), edgec built.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import CACHE, FETCH_HINT, REPO, llama_tool, need, run

TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL",
         "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K"]

SMOL_DIR = CACHE / "models" / "smollm2-135m-f32"
MINILM_DIR = CACHE / "models" / "all-MiniLM-L6-v2"

_made = {}


def quantized(edgec_bin: Path, tmp_root: Path, src: Path, ty: str) -> Path:
    """edgec's GGUF of `src` at `ty`, made once per session."""
    key = (str(src), ty)
    if key not in _made:
        out = tmp_root / f"{src.name}.{ty}.gguf"
        run([edgec_bin, "quantize", "--type", ty, src, out])
        _made[key] = out
    return _made[key]


@pytest.fixture(scope="session")
def tmp_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gguf")


def generate(llama_bin: Path, model: Path, prompt: str, n: int) -> str:
    """Greedy generation with llama.cpp's llama-simple (prompt + continuation)."""
    proc = run([llama_tool(llama_bin, "llama-simple"), "-m", model, "-n", str(n), prompt])
    return proc.stdout.decode("utf-8", "replace")


@pytest.mark.parametrize("ty", TYPES)
@pytest.mark.parametrize("model", ["tiny-llama", "tiny-llama-sp", "tiny-qwen2"])
def test_tiny_llama_loads_and_runs(edgec_bin, llama_bin, tmp_root, model, ty):
    out = quantized(edgec_bin, tmp_root, REPO / "fixtures" / model, ty)
    text = generate(llama_bin, out, "Hello", 4)
    assert "Hello" in text, text


@pytest.mark.parametrize("ty", TYPES)
def test_smollm2_loads_and_runs(edgec_bin, llama_bin, tmp_root, ty):
    need((SMOL_DIR / "model.safetensors").is_file(), f"{SMOL_DIR} is missing: {FETCH_HINT}")
    out = quantized(edgec_bin, tmp_root, SMOL_DIR, ty)
    text = generate(llama_bin, out, "The capital of France is", 8)
    assert len(text) > len("The capital of France is"), text
    if ty in KNOWS_PARIS:
        assert "Paris" in text, f"{ty}: {text!r}"


# Types at 5 bits and up keep this fact. (Below that, SmolLM2 loses it with
# llama-quantize's files too: its Q4_0 answers "capitalised", as edgec's does.)
KNOWS_PARIS = {"F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_0", "Q5_1"}


PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The GNU General Public License is",
]


def test_greedy_q8_0_equals_f32(edgec_bin, llama_bin, tmp_root):
    need((SMOL_DIR / "model.safetensors").is_file(), f"{SMOL_DIR} is missing: {FETCH_HINT}")
    f32 = quantized(edgec_bin, tmp_root, SMOL_DIR, "F32")
    q8 = quantized(edgec_bin, tmp_root, SMOL_DIR, "Q8_0")
    for prompt in PROMPTS:
        a = generate(llama_bin, f32, prompt, 16)
        b = generate(llama_bin, q8, prompt, 16)
        assert a == b, f"prompt {prompt!r}:\nf32:  {a!r}\nQ8_0: {b!r}"


# --- MiniLM: llama.cpp embeddings against an independent numpy BERT ---------

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on stage.",
    "This program is free software; you can redistribute it and/or modify it.",
    "Ünïcödé text, digits 12345 and punctuation!?",
]


def _layer_norm(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


_erf = np.vectorize(math.erf)


def numpy_bert_mean_pooled(folder: Path, text: str) -> np.ndarray:
    """all-MiniLM-L6-v2's sentence embedding (mean pooling), from the HF
    folder's own safetensors and tokenizer, in float64 numpy."""
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    cfg = json.loads((folder / "config.json").read_text())
    w = {k.removeprefix("bert."): v.astype(np.float64) for k, v in load_file(folder / "model.safetensors").items()}
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    ids = tok.encode(text).ids
    n, d, heads = len(ids), cfg["hidden_size"], cfg["num_attention_heads"]
    eps = cfg.get("layer_norm_eps", 1e-12)
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n] \
        + w["embeddings.token_type_embeddings.weight"][0]
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    hd = d // heads
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        lin = lambda t, name: t @ w[p + name + ".weight"].T + w[p + name + ".bias"]
        q = lin(x, "attention.self.query").reshape(n, heads, hd).transpose(1, 0, 2)
        k = lin(x, "attention.self.key").reshape(n, heads, hd).transpose(1, 0, 2)
        v = lin(x, "attention.self.value").reshape(n, heads, hd).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(n, d)
        x = _layer_norm(x + lin(ctx, "attention.output.dense"), w[p + "attention.output.LayerNorm.weight"],
                        w[p + "attention.output.LayerNorm.bias"], eps)
        h = lin(x, "intermediate.dense")
        h = 0.5 * h * (1 + _erf(h / math.sqrt(2)))
        x = _layer_norm(x + lin(h, "output.dense"), w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
    return x.mean(0)


def llama_embedding(llama_bin: Path, model: Path, text: str) -> np.ndarray:
    """The mean-pooled embedding llama.cpp's llama-embedding computes.

    llama.cpp's logger is asynchronous and is not flushed at exit (its
    common_log_main() leaks the logger on purpose), so on a busy machine the
    tail of the printed JSON is sometimes lost. Such a run is repeated; the
    values of a complete run are what the tests judge."""
    cmd = [llama_tool(llama_bin, "llama-embedding"), "-m", model, "-p", text, "--pooling", "mean",
           "--embd-normalize", "-1", "--embd-output-format", "json"]
    for _ in range(8):
        out = run(cmd).stdout.decode("utf-8", "replace")
        try:
            return np.array(json.loads(out)["data"][0]["embedding"], dtype=np.float64)
        except json.JSONDecodeError:
            continue
    pytest.fail(f"llama-embedding printed incomplete JSON 8 times in a row; last: {out[-300:]!r}")


def cosine(a, b) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# Cosine to the f32 reference each type must reach (mean over sentences).
MINILM_MIN_COSINE = {"F32": 0.999, "F16": 0.999, "BF16": 0.999, "Q8_0": 0.999, "Q6_K": 0.995,
                     "Q5_K_M": 0.99, "Q5_K_S": 0.99, "Q5_0": 0.99, "Q5_1": 0.99}


@pytest.mark.parametrize("ty", TYPES)
def test_minilm_embeddings(edgec_bin, llama_bin, tmp_root, ty):
    need((MINILM_DIR / "model.safetensors").is_file(), f"{MINILM_DIR} is missing: {FETCH_HINT}")
    out = quantized(edgec_bin, tmp_root, MINILM_DIR, ty)
    cos = []
    for text in SENTENCES:
        ref = numpy_bert_mean_pooled(MINILM_DIR, text)
        emb = llama_embedding(llama_bin, out, text)
        assert emb.shape == ref.shape and np.isfinite(emb).all()
        cos.append(cosine(ref, emb))
    mean = sum(cos) / len(cos)
    print(f"MiniLM {ty}: cosine to numpy f32 reference {mean:.5f} (min {min(cos):.5f})")
    assert mean >= MINILM_MIN_COSINE.get(ty, 0.95), f"{ty}: cosines {cos}"
    if ty in ("F32", "F16", "BF16", "Q8_0"):
        assert min(cos) >= 0.999, f"{ty}: cosines {cos}"
