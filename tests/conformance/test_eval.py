"""edgec's reference runtime and `edgec eval` against llama.cpp and an
independent numpy BERT:

- perplexity of f32 SmolLM2 from `edgec eval` (edgec's own tokenization and
  chunking) equals llama-perplexity's on the same text and context within
  0.5%, and of its Q4_K_M GGUF within 1%;
- logits: on llama.cpp's own tokens, the KL-divergence of edgec's f32
  distributions from llama.cpp's f32 distributions (its saved
  --kl-divergence-base file, read by `edgec eval --llama-logits`) is below
  1e-4 and the top token agrees on at least 99% of positions;
- MiniLM's pooled embeddings from `edgec embed` against numpy: cosine >= 0.9999;
- the JUnit file `edgec eval --junit` writes is valid XML that a real parser reads.
"""

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from conftest import CACHE, FETCH_HINT, llama_tool, need, run
from test_llama_cpp import MINILM_DIR, SENTENCES, cosine, numpy_bert_mean_pooled

SMOL_DIR = CACHE / "models" / "smollm2-135m-f32"
CTX, CHUNKS = 512, 6


@pytest.fixture(scope="module")
def work(tmp_path_factory, edgec_bin):
    need((SMOL_DIR / "model.safetensors").is_file(), f"{SMOL_DIR} is missing: {FETCH_HINT}")
    root = tmp_path_factory.mktemp("eval")
    text = root / "eval.txt"
    text.write_text(Path("/usr/share/common-licenses/GPL-3").read_text())
    f32 = root / "smol.f32.gguf"
    q4 = root / "smol.Q4_K_M.gguf"
    run([edgec_bin, "convert", SMOL_DIR, f32])
    run([edgec_bin, "quantize", "--type", "Q4_K_M", SMOL_DIR, q4])
    return {"root": root, "text": text, "f32": f32, "q4": q4}


def llama_ppl(llama_bin, model, text, extra=()):
    out = run([llama_tool(llama_bin, "llama-perplexity"), "-m", model, "-f", text, "-c", CTX, "--chunks", CHUNKS,
               "-t", "2", *extra])
    log = out.stdout.decode() + out.stderr.decode()
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", log)
    assert m, log[-2000:]
    return float(m.group(1))


def edgec_eval(edgec_bin, *args):
    out = run([edgec_bin, "eval", *args, "--json"])
    return json.loads(out.stdout)


@pytest.mark.parametrize("which,tolerance", [("f32", 0.005), ("q4", 0.01)])
def test_perplexity_matches_llama_perplexity(edgec_bin, llama_bin, work, which, tolerance):
    model = SMOL_DIR if which == "f32" else work["q4"]
    ours = edgec_eval(edgec_bin, model, "--data", work["text"], "--ctx", str(CTX), "--chunks", str(CHUNKS))
    theirs = llama_ppl(llama_bin, work["f32"] if which == "f32" else work["q4"], work["text"])
    ppl = ours["reference"]["ppl"]
    print(f"{which}: edgec PPL {ppl:.4f}, llama-perplexity {theirs:.4f} ({ppl / theirs - 1:+.4%})")
    assert ours["chunks"] == CHUNKS
    assert abs(ppl / theirs - 1) <= tolerance


def test_logits_match_llama_cpp(edgec_bin, llama_bin, work):
    base = work["root"] / "f32.kld"
    llama_ppl(llama_bin, work["f32"], work["text"], ["--kl-divergence-base", base])
    r = edgec_eval(edgec_bin, SMOL_DIR, "--llama-logits", base, "--max-kld", "1e-4")
    d = r["delta"]
    print(f"edgec f32 vs llama.cpp f32: KLD {d['kld']:.3e}, top-1 {d['top1_agreement']:.4f}, "
          f"PPL {r['candidate']['ppl']:.4f} vs {r['reference']['ppl']:.4f}")
    assert r["passed"] and d["kld"] <= 1e-4
    assert d["top1_agreement"] >= 0.99
    assert abs(d["ppl_increase"]) <= 0.001
    # The quantized file too: edgec's runtime of the Q4_K_M GGUF against llama.cpp's f32.
    q = edgec_eval(edgec_bin, work["q4"], "--llama-logits", base)
    theirs = run([llama_tool(llama_bin, "llama-perplexity"), "-m", work["q4"], "--kl-divergence-base", base,
                  "--kl-divergence", "-t", "2"])
    m = re.search(r"Mean\s+KLD:\s+([0-9.]+)", theirs.stdout.decode() + theirs.stderr.decode())
    assert m
    llama_kld = float(m.group(1))
    print(f"Q4_K_M KLD vs f32: edgec runtime {q['delta']['kld']:.5f}, llama.cpp {llama_kld:.5f}")
    assert abs(q["delta"]["kld"] - llama_kld) <= 0.1 * llama_kld


def test_minilm_embeddings_match_numpy(edgec_bin):
    need((MINILM_DIR / "model.safetensors").is_file(), f"{MINILM_DIR} is missing: {FETCH_HINT}")
    args = [edgec_bin, "embed", MINILM_DIR]
    for s in SENTENCES:
        args += ["--text", s]
    got = json.loads(run(args).stdout)
    for s, item in zip(SENTENCES, got):
        ref = numpy_bert_mean_pooled(MINILM_DIR, s)
        c = cosine(ref, np.array(item["embedding"], dtype=np.float64))
        print(f"cosine {c:.7f}: {s!r}")
        assert c >= 0.9999, (s, c)


def test_junit_is_valid_xml(edgec_bin, work):
    junit = work["root"] / "eval.xml"
    proc = run([edgec_bin, "eval", "--reference", SMOL_DIR, "--candidate", work["q4"], "--data", work["text"],
                "--ctx", "128", "--chunks", "2", "--max-kld", "1e-9", "--max-ppl-increase", "50%",
                "--junit", junit], check_exit=False)
    assert proc.returncode == 3
    suite = ET.parse(junit).getroot()
    assert suite.tag == "testsuite"
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert cases["max-kld"].find("failure") is not None
    assert cases["max-ppl-increase"].find("failure") is None
