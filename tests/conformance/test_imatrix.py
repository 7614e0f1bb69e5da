"""Importance matrices between edgec and llama.cpp, both directions, both of
llama.cpp's file formats (GGUF, the default of llama-imatrix, and the legacy
`.dat` of `--output-format dat`):

1. llama-imatrix's files, on the tiny fixture and on the real SmolLM2, have
   the layout edgec reads (checked here by an independent Python reader).
2. `edgec quantize --imatrix THEIR_FILE` uses them: its Q4_K_M differs from
   the one without an imatrix, and llama.cpp loads and runs it.
3. `edgec calibrate --out OURS` writes files that llama.cpp accepts:
   llama-quantize loads an entry for every tensor llama-imatrix would have
   covered (no "did not find weights" for a `blk.*` tensor, none skipped), its
   output loads and runs, llama-imatrix itself loads them, and the statistics
   agree with llama-imatrix's on the same text.

Prerequisites (a missing one fails, with what to run): scripts/setup-env.sh
(LLAMA_BIN, the venv), fixtures/fetch-real.sh (SmolLM2), edgec built.
"""

import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import CACHE, FETCH_HINT, REPO, llama_tool, need, run

TEXT = Path("/usr/share/common-licenses/GPL-2")
CTX = 128
CHUNKS = 4
MODELS = ["tiny-llama", "smollm2"]
FORMATS = ["gguf", "dat"]
SMOL_DIR = CACHE / "models" / "smollm2-135m-f32"

_made: dict = {}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("imatrix")


def once(key, make):
    if key not in _made:
        _made[key] = make()
    return _made[key]


def model_gguf(edgec_bin: Path, work: Path, model: str) -> Path:
    """The model as an f32 GGUF written by edgec: what both tools calibrate
    and quantize, so that both see the same weights."""

    def make():
        if model == "smollm2":
            need((SMOL_DIR / "model.safetensors").is_file(), f"{SMOL_DIR} is missing: {FETCH_HINT}")
            src = SMOL_DIR
        else:
            src = REPO / "fixtures" / model
        out = work / f"{model}.f32.gguf"
        run([edgec_bin, "convert", src, out])
        return out

    return once(("model", model), make)


def text_file() -> Path:
    need(TEXT.is_file(), f"{TEXT} is missing (Debian's base-files provides it)")
    return TEXT


def their_imatrix(edgec_bin, llama_bin, work, model: str, fmt: str) -> Path:
    """llama-imatrix's statistics over CHUNKS chunks of CTX tokens of TEXT."""

    def make():
        out = work / f"{model}.theirs.{fmt}"
        cmd = [llama_tool(llama_bin, "llama-imatrix"), "-m", model_gguf(edgec_bin, work, model),
               "-f", text_file(), "-o", out, "-c", CTX, "--chunks", CHUNKS, "--output-format", fmt]
        run(cmd)
        need(out.is_file(), f"llama-imatrix wrote no {out}")
        return out

    return once(("theirs", model, fmt), make)


def our_imatrix(edgec_bin, work, model: str, fmt: str) -> Path:
    def make():
        out = work / f"{model}.ours.{fmt}"
        run([edgec_bin, "calibrate", model_gguf(edgec_bin, work, model), "--data", text_file(),
             "--out", out, "--samples", CHUNKS, "--len", CTX])
        need(out.is_file(), f"edgec calibrate wrote no {out}")
        return out

    return once(("ours", model, fmt), make)


# --- an independent reader of both formats ----------------------------------


def read_imatrix(path: Path) -> dict:
    """{"entries": {name: (values float32, counts float32)}, "chunk_count",
    "chunk_size", "datasets", "legacy"}: as llama.cpp's loader reads it."""
    if path.read_bytes()[:4] == b"GGUF":
        import gguf

        r = gguf.GGUFReader(path)
        f = r.fields
        meta = {"legacy": False, "datasets": [], "chunk_count": None, "chunk_size": None,
                "general.type": f["general.type"].contents() if "general.type" in f else None}
        if "imatrix.datasets" in f:
            meta["datasets"] = list(f["imatrix.datasets"].contents())
        for k in ("chunk_count", "chunk_size"):
            if f"imatrix.{k}" in f:
                field = f[f"imatrix.{k}"]
                assert field.types == [gguf.GGUFValueType.UINT32], f"imatrix.{k} is {field.types}, not u32"
                meta[k] = int(field.contents())
        sums, counts = {}, {}
        for t in r.tensors:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32, f"{t.name} is {t.tensor_type.name}"
            data = np.array(t.data, dtype=np.float32).ravel()
            if t.name.endswith(".in_sum2"):
                sums[t.name[: -len(".in_sum2")]] = (data, [int(d) for d in t.shape])
            elif t.name.endswith(".counts"):
                counts[t.name[: -len(".counts")]] = data
        assert sums.keys() == counts.keys(), f"unpaired: {sorted(sums.keys() ^ counts.keys())}"
        entries = {}
        for name, (s, ne) in sums.items():
            c = counts[name]
            # ne = [n_per_row, n_mat] with trailing 1s dropped; one count per matrix.
            assert s.size % c.size == 0 and ne[0] * c.size == s.size, f"{name}: {ne} vs {c.size} counts"
            entries[name] = (s, c)
        meta["entries"] = entries
        return meta
    b = path.read_bytes()
    pos = 0

    def i32():
        nonlocal pos
        (v,) = struct.unpack_from("<i", b, pos)
        pos += 4
        return v

    entries = {}
    for _ in range(i32()):
        n = i32()
        name = b[pos: pos + n].decode()
        pos += n
        ncall, nval = i32(), i32()
        values = np.frombuffer(b, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        pos += 4 * nval
        entries[name] = (values, np.array([ncall], dtype=np.float32))
    meta = {"legacy": True, "entries": entries, "chunk_count": None, "chunk_size": 0, "datasets": []}
    if pos < len(b):
        meta["chunk_count"] = i32()
    if pos < len(b):
        n = i32()
        meta["datasets"] = [b[pos: pos + n].decode()] if n > 0 else []
        pos += n
    assert pos == len(b), f"{len(b) - pos} stray bytes"
    return meta


def mean_sq(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """What llama-quantize feeds its quantizers: sums / count per matrix
    (all ones for a matrix without data); legacy files store mean·ncall."""
    seg = values.reshape(counts.size, -1).astype(np.float64)
    c = counts.astype(np.float64)[:, None]
    return np.where(c > 0, seg / np.where(c > 0, c, 1), 1.0).ravel()


# --- llama.cpp helpers ------------------------------------------------------


def generate(llama_bin: Path, model: Path, prompt: str, n: int) -> str:
    """Greedy generation with llama.cpp's llama-simple, as test_llama_cpp.py loads files."""
    proc = run([llama_tool(llama_bin, "llama-simple"), "-m", model, "-n", str(n), prompt])
    return proc.stdout.decode("utf-8", "replace")


def gguf_tensors(path: Path) -> dict:
    import gguf

    return {t.name: (t.tensor_type.name, bytes(np.asarray(t.data).tobytes())) for t in gguf.GGUFReader(path).tensors}


def gguf_field(path: Path, key: str):
    import gguf

    f = gguf.GGUFReader(path).fields.get(key)
    return None if f is None else f.contents()


# --- 1. llama-imatrix's files -------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("model", MODELS)
def test_llama_imatrix_layout(edgec_bin, llama_bin, work, model, fmt):
    m = read_imatrix(their_imatrix(edgec_bin, llama_bin, work, model, fmt))
    assert m["legacy"] == (fmt == "dat")
    names = sorted(m["entries"])
    assert names and all(n.startswith("blk.") and n.endswith(".weight") for n in names), names
    tokens = CTX * CHUNKS
    assert m["chunk_count"] == CHUNKS
    assert m["datasets"] == [str(TEXT)]
    for name, (values, counts) in m["entries"].items():
        assert np.isfinite(values).all() and (values >= 0).all(), name
        if fmt == "gguf":
            # Raw sums of x² over every token, one count (in tokens) per matrix.
            assert counts.tolist() == [tokens], (name, counts)
        else:
            # Means · ncall, ncall = ⌈tokens / chunk size⌉.
            assert counts.tolist() == [CHUNKS], (name, counts)
    if fmt == "gguf":
        assert m["general.type"] == "imatrix" and m["chunk_size"] == CTX
        # The legacy file of the same run holds the same means.
        other = read_imatrix(their_imatrix(edgec_bin, llama_bin, work, model, "dat"))
        assert sorted(other["entries"]) == names
        for name in names:
            a, b = mean_sq(*m["entries"][name]), mean_sq(*other["entries"][name])
            np.testing.assert_allclose(a, b, rtol=1e-5, err_msg=name)


# --- 2. edgec quantize --imatrix THEIR_FILE ------------------------------------


def edgec_q4km(edgec_bin, work, model: str, imatrix: Path | None, tag: str) -> Path:
    def make():
        out = work / f"{model}.edgec-{tag}.Q4_K_M.gguf"
        cmd = [edgec_bin, "quantize", "--type", "Q4_K_M"]
        if imatrix is not None:
            cmd += ["--imatrix", imatrix]
        run(cmd + [model_gguf(edgec_bin, work, model), out])
        return out

    return once(("edgec-q", model, tag), make)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("model", MODELS)
def test_edgec_quantize_uses_llama_imatrix(edgec_bin, llama_bin, work, model, fmt):
    theirs = their_imatrix(edgec_bin, llama_bin, work, model, fmt)
    plain = gguf_tensors(edgec_q4km(edgec_bin, work, model, None, "plain"))
    out = edgec_q4km(edgec_bin, work, model, theirs, f"theirs-{fmt}")
    weighted = gguf_tensors(out)
    assert plain.keys() == weighted.keys()
    covered = set(read_imatrix(theirs)["entries"])
    changed = sorted(n for n in covered if n in plain and plain[n][1] != weighted[n][1])
    quantized = sorted(n for n in covered if n in plain and plain[n][0] not in ("F32", "F16", "BF16", "Q8_0"))
    assert quantized, "no tensor with an imatrix entry was quantized"
    # Every tensor quantized with an imatrix-aware type must change (edgec's
    # Q8_0 uses importance too, so it may change as well).
    assert set(quantized) <= set(changed), f"unchanged with the imatrix: {sorted(set(quantized) - set(changed))}"
    text = generate(llama_bin, out, "Hello", 4)
    assert "Hello" in text, text


# --- 3. edgec calibrate --out OURS, used by llama.cpp ----------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("model", MODELS)
def test_llama_quantize_uses_our_imatrix(edgec_bin, llama_bin, work, model, fmt):
    ours = our_imatrix(edgec_bin, work, model, fmt)
    theirs = read_imatrix(their_imatrix(edgec_bin, llama_bin, work, model, "gguf"))
    mine = read_imatrix(ours)
    assert mine["legacy"] == (fmt == "dat")
    # Every weight llama-imatrix covers, at the same size.
    missing = sorted(set(theirs["entries"]) - set(mine["entries"]))
    assert not missing, f"entries llama-imatrix has and edgec's lacks: {missing}"
    for name, (values, _) in theirs["entries"].items():
        assert mine["entries"][name][0].size == values.size, name

    src = model_gguf(edgec_bin, work, model)
    out = work / f"{model}.llama-ours-{fmt}.Q4_K_M.gguf"
    proc = run([llama_tool(llama_bin, "llama-quantize"), "--imatrix", ours, src, out, "Q4_K_M"],
               env={**os.environ, "LLAMA_TRACE": "1"})
    stdout = proc.stdout.decode("utf-8", "replace")
    stderr = proc.stderr.decode("utf-8", "replace")
    n = len(mine["entries"])
    assert f"load_imatrix: loaded {n} importance matrix entries from {ours}" in stdout, stdout[-3000:]
    assert f"prepare_imatrix: have {n} importance matrix entries" in stdout, stdout[-3000:]
    # With LLAMA_TRACE llama-quantize lists every entry it loaded; GGUF lines
    # carry the token count, legacy lines the ncall.
    traced = {name: int(v) for v, name in re.findall(
        r"loaded data \(size = +\d+, (?:n_tokens|ncall) = +(\d+)[^)]*\) for '([^']+)'", stdout)}
    assert set(traced) == set(mine["entries"]), f"not traced: {sorted(set(mine['entries']) - set(traced))}"
    assert all(v > 0 for v in traced.values()), {k: v for k, v in traced.items() if v <= 0}
    # Each quantized tensor without an entry is named; only the embeddings
    # and the output head (which llama-imatrix does not cover) may be.
    not_found = re.findall(r"did not find weights for (\S+)", stderr)
    assert set(not_found) <= {"token_embd.weight", "output.weight"}, not_found
    assert "imatrix size" not in stderr, stderr[-3000:]
    assert gguf_field(out, "quantize.imatrix.entries_count") == n
    text = generate(llama_bin, out, "Hello", 4)
    assert "Hello" in text, text


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("model", MODELS)
def test_our_statistics_match_llama_imatrix(edgec_bin, llama_bin, work, model, fmt):
    """Both tools gather x² over CHUNKS × CTX tokens of the same text with the
    same weights: the per-column means point the same way. llama-imatrix
    also loads and re-saves edgec's file (its own loader accepts it)."""
    ours = our_imatrix(edgec_bin, work, model, fmt)
    mine = read_imatrix(ours)
    theirs = read_imatrix(their_imatrix(edgec_bin, llama_bin, work, model, "gguf"))
    cos = {}
    for name, entry in theirs["entries"].items():
        a, b = mean_sq(*entry), mean_sq(*mine["entries"][name])
        assert np.isfinite(b).all() and (b >= 0).all(), name
        cos[name] = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    worst = min(cos, key=cos.get)
    med = float(np.median(list(cos.values())))
    print(f"{model} {fmt}: cosine of mean x² to llama-imatrix's: median {med:.4f}, min {cos[worst]:.4f} ({worst})")
    assert med >= 0.9, cos
    resaved = ours.with_name(f"{ours.stem}.resaved.gguf")
    proc = run([llama_tool(llama_bin, "llama-imatrix"), "-m", model_gguf(edgec_bin, work, model),
                "--in-file", ours, "-o", resaved, "-c", CTX])
    assert resaved.is_file(), proc.stderr.decode("utf-8", "replace")[-2000:]
    again = read_imatrix(resaved)
    assert sorted(again["entries"]) == sorted(mine["entries"])
