"""Structurally pruned SmolLM2 in llama.cpp: fewer FFN neurons, heads and
layers, uniform (written as llama.cpp's `llama`) and non-uniform (written as
`deci`, with per-layer head counts and FFN widths). llama.cpp loads and runs
every file, and its logits equal edgec's runtime's on the same file (KLD of
edgec's distributions from llama.cpp's below 1e-4, top token agreeing on 99%
of positions). A non-uniform FFN written as a DeciLM HF folder reads back
into the same model, and the non-uniform model lowered to ONNX runs in
onnxruntime with edgec's logits.
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import CACHE, FETCH_HINT, edgec_run, llama_tool, need, ort_run, run

SMOL_DIR = CACHE / "models" / "smollm2-135m-f32"
CALIB = "/usr/share/common-licenses/GPL-3"
HELDOUT = "/usr/share/common-licenses/Apache-2.0"
CTX, CHUNKS = 128, 4
CALIB_ARGS = ["--calib", CALIB, "--calib-samples", "16", "--calib-len", "128"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    need((SMOL_DIR / "model.safetensors").is_file(), f"{SMOL_DIR} is missing: {FETCH_HINT}")
    return tmp_path_factory.mktemp("structured")


def inspect(edgec_bin, path: Path) -> dict:
    return json.loads(run([edgec_bin, "inspect", path, "--json"]).stdout)


def llama_matches_edgec(edgec_bin, llama_bin, model: Path, base: Path) -> dict:
    """llama.cpp runs `model` and saves its logits; edgec's runtime of the
    same file is compared with them."""
    out = run([llama_tool(llama_bin, "llama-perplexity"), "-m", model, "-f", HELDOUT, "-c", CTX,
               "--chunks", CHUNKS, "-t", "2", "--kl-divergence-base", base])
    log = out.stdout.decode() + out.stderr.decode()
    assert re.search(r"Final estimate: PPL = [0-9.]+", log), log[-2000:]
    r = json.loads(run([edgec_bin, "eval", model, "--llama-logits", base, "--max-kld", "1e-4", "--json"]).stdout)
    d = r["delta"]
    print(f"{model.name}: llama.cpp PPL {r['reference']['ppl']:.3f}, edgec {r['candidate']['ppl']:.3f}, "
          f"KLD {d['kld']:.2e}, top-1 {d['top1_agreement']:.4f}")
    assert r["passed"] and d["kld"] <= 1e-4
    assert d["top1_agreement"] >= 0.99
    return r


@pytest.mark.parametrize("uniform", [True, False])
def test_pruned_smollm2_runs_in_llama_cpp_as_edgec_runs_it(edgec_bin, llama_bin, root, uniform):
    out = root / f"pruned-{'uniform' if uniform else 'nonuniform'}.gguf"
    args = ["--ffn", "0.25", "--heads", "0.34"] + (["--layers", "2", "--uniform"] if uniform else [])
    run([edgec_bin, "prune", SMOL_DIR, out, *args, *CALIB_ARGS])
    info = inspect(edgec_bin, out)
    layers = info["layers"]
    if uniform:
        assert info["architecture"] == "llama"
        assert len(layers) == 28
        assert all(l == {"heads": 6, "kv_heads": 2, "ffn": 1152} for l in layers), layers
    else:
        assert info["architecture"] == "deci"
        assert len(layers) == 30
        assert len({l["ffn"] for l in layers}) > 1 and len({l["heads"] for l in layers}) > 1, layers
        # the same totals as uniform pruning of every layer
        assert sum(l["ffn"] for l in layers) <= 30 * 1152
        assert sum(l["kv_heads"] for l in layers) == 30 * 2
        assert all(l["heads"] == 3 * l["kv_heads"] for l in layers)
    dense = inspect(edgec_bin, SMOL_DIR)["total_params"]
    assert info["total_params"] < 0.85 * dense
    llama_matches_edgec(edgec_bin, llama_bin, out, root / f"{out.stem}.kld")


def test_non_uniform_ffn_as_a_decilm_folder_reads_back(edgec_bin, llama_bin, root):
    folder = root / "deci-hf"
    run([edgec_bin, "prune", SMOL_DIR, folder, "--ffn", "0.25", *CALIB_ARGS])
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architectures"] == ["DeciLMForCausalLM"]
    blocks = cfg["block_configs"]
    assert len(blocks) == 30
    # DeciLM's width rule, as its modeling code and llama.cpp's converter apply it
    widths = []
    for b in blocks:
        w = int(2 * b["ffn"]["ffn_mult"] * cfg["hidden_size"] / 3)
        widths.append(w if w % 256 == 0 else w + 256 - w % 256)
        assert cfg["num_attention_heads"] // b["attention"]["n_heads_in_group"] == 3
    assert len(set(widths)) > 1
    back = root / "deci-hf.gguf"
    run([edgec_bin, "convert", folder, back])
    info = inspect(edgec_bin, back)
    assert info["architecture"] == "deci"
    assert [l["ffn"] for l in info["layers"]] == widths
    llama_matches_edgec(edgec_bin, llama_bin, back, root / "deci-hf.kld")
    # edgec reads the folder itself as the same model: same logits as its GGUF
    base = root / "deci-hf.kld"
    r = json.loads(run([edgec_bin, "eval", folder, "--llama-logits", base, "--max-kld", "1e-4", "--json"]).stdout)
    assert r["passed"] and r["delta"]["top1_agreement"] >= 0.99


def test_non_uniform_model_as_onnx_runs_in_onnxruntime(edgec_bin, root):
    src = root / "pruned-nonuniform.gguf"
    if not src.is_file():
        run([edgec_bin, "prune", SMOL_DIR, src, "--ffn", "0.25", "--heads", "0.34", *CALIB_ARGS])
    out = root / "pruned-nonuniform.onnx"
    run([edgec_bin, "convert", src, out])
    ids = np.random.default_rng(0).integers(0, 49152, (2, 24)).astype(np.int64)
    ref = edgec_run(edgec_bin, src, {"input_ids": ids}, root)["logits"]
    ours = ort_run(out, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
    assert ours.shape == ref.shape == (2, 24, 49152)
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    print(f"non-uniform ONNX vs edgec: max relative difference {err:.2e}")
    assert err <= 1e-4
