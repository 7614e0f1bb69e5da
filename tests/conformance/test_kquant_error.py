"""edgec's k-quant encoders against llama.cpp's own, on real weights: both
quantize the same f32 GGUF (written by edgec) at the same preset; for every
tensor the two files store in the same k-quant type, edgec's squared error
against the f32 weights must be lower than llama-quantize's (no importance
matrix on either side). The byte-exact legacy types are checked against
gguf-py in passes/tests.
"""

from pathlib import Path

import numpy as np
import pytest

from conftest import CACHE, FETCH_HINT, llama_tool, need, run

# `--pure` on both sides: every tensor whose rows hold whole super-blocks
# gets the preset's k-quant (SmolLM2's ffn_down, MiniLM's output.dense).
K_TYPES = {"Q2_K": "Q2_K", "Q3_K_S": "Q3_K", "Q4_K_S": "Q4_K", "Q5_K_S": "Q5_K", "Q6_K": "Q6_K"}
MODELS = {
    "smollm2": CACHE / "models" / "smollm2-135m-f32",
    "minilm": CACHE / "models" / "all-MiniLM-L6-v2",
}


def tensors(path: Path) -> dict:
    """name -> (ggml type name, dequantized float32 array) through gguf-py."""
    import gguf

    reader = gguf.GGUFReader(path)
    out = {}
    for t in reader.tensors:
        out[t.name] = (t.tensor_type.name, gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64))
    return out


@pytest.fixture(scope="module")
def f32_ggufs(edgec_bin, tmp_path_factory):
    root = tmp_path_factory.mktemp("kq")
    out = {}
    for name, folder in MODELS.items():
        need((folder / "model.safetensors").is_file(), f"{folder} is missing: {FETCH_HINT}")
        f32 = root / f"{name}.f32.gguf"
        run([edgec_bin, "convert", folder, f32, "--dtype", "f32"])
        out[name] = (folder, f32)
    return root, out


@pytest.mark.parametrize("preset", list(K_TYPES))
@pytest.mark.parametrize("model", list(MODELS))
def test_kquant_error_below_llama_quantize(edgec_bin, llama_bin, f32_ggufs, model, preset):
    root, models = f32_ggufs
    folder, f32 = models[model]
    ours = root / f"{model}.{preset}.edgec.gguf"
    theirs = root / f"{model}.{preset}.llama.gguf"
    run([edgec_bin, "quantize", "--pure", "--type", preset, folder, ours])
    run([llama_tool(llama_bin, "llama-quantize"), "--pure", f32, theirs, preset, "2"])
    ref, a, b = tensors(f32), tensors(ours), tensors(theirs)
    ktype = K_TYPES[preset]
    compared, worse, ratios = 0, [], []
    for name, (ta, qa) in a.items():
        tb, qb = b[name]
        if ta != tb or ta != ktype:
            continue
        x = ref[name][1]
        mse_ours = float(np.mean((qa - x) ** 2))
        mse_theirs = float(np.mean((qb - x) ** 2))
        ratios.append(mse_ours / mse_theirs)
        compared += 1
        if mse_ours >= mse_theirs:
            worse.append(f"{name} ({ta}): edgec {mse_ours:.4e} vs llama.cpp {mse_theirs:.4e}")
    need(compared > 0, f"{model} {preset}: no tensor stored as a k-quant by both tools")
    print(f"{model} {preset} ({ktype}): {compared} tensors, MSE edgec/llama.cpp "
          f"mean {np.mean(ratios):.3f}, worst {max(ratios):.3f}")
    assert not worse, "edgec's error is not lower on:\n" + "\n".join(worse)
