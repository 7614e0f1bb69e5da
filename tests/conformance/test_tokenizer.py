"""Tokenizer conformance: llama.cpp (`llama-tokenize`) on the GGUF that edgec
writes must give the same token ids as Hugging Face `tokenizers` on the source
folder's tokenizer.json, for every probe string.

Models: the tiny fixtures (byte-level BPE, SentencePiece-style BPE, WordPiece),
all-MiniLM-L6-v2 (BERT WordPiece) and SmolLM2-135M (byte-level BPE, `smollm`).
SmolLM2 exists here only as a GGUF: fixtures/fetch-real.sh makes its HF folder
with `edgec convert`, so its tokenizer.json is edgec's own; the packaged GGUF
is then the independent reference, and is checked against it too.

Prerequisites (a missing one fails, with what to run): `edgec` built, LLAMA_BIN
(llama.cpp's tools), the `tokenizers` and `gguf` Python packages
(scripts/setup-env.sh), the real models (fixtures/fetch-real.sh).
"""

import functools
import subprocess
from pathlib import Path

import pytest

from conftest import CACHE, FETCH_HINT, SETUP_HINT, llama_tool, need, run

PROBES = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "GNU GENERAL PUBLIC LICENSE Version 3, 29 June 2007",
    "don't we'll I'M you're they've",
    "Ünïcödé àccents: café, naïve, Ångström, Ñandú",
    "日本語のテキスト and 中文字符",
    "emoji 🙂🚀 👍🏽 family 👨‍👩‍👧",
    "12345 3.14159 1,000,000 0x1F 2024-11-05",
    "  leading spaces",
    "trailing spaces   ",
    "multiple     spaces between",
    "new\nlines\n\n\nand\r\ncarriage returns",
    "\ttabs\t\tand\t mixed \t",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<s>[INST] hi [/INST] ok</s>",
    "[CLS] hello [SEP] world [MASK].",
    "<tool>call</tool>",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "def f(x):\n    return x ** 2  # square\n",
    " ",
    "\n",
]

MODELS = {
    # name: (HF folder, GGUF tokenizer model, tokenizer.ggml.pre)
    "tiny-llama": (lambda fx: fx / "tiny-llama", "gpt2", "smollm"),
    "tiny-llama-sp": (lambda fx: fx / "tiny-llama-sp", "llama", "default"),
    "tiny-bert": (lambda fx: fx / "tiny-bert", "bert", "default"),
    "minilm": (lambda fx: CACHE / "models" / "all-MiniLM-L6-v2", "bert", "default"),
    "smollm2": (lambda fx: CACHE / "models" / "smollm2-135m-f32", "gpt2", "smollm"),
}
REAL = {"minilm", "smollm2"}


def hf_tokenizer(folder: Path):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        pytest.fail(f"the `tokenizers` Python package is missing: {SETUP_HINT}", pytrace=False)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_padding()  # MiniLM's tokenizer.json pads to 128
    tok.no_truncation()
    return tok


def gguf_fields(path: Path) -> dict:
    try:
        import gguf
    except ImportError:
        pytest.fail(f"the `gguf` Python package (gguf-py) is missing: {SETUP_HINT}", pytrace=False)
    reader = gguf.GGUFReader(str(path))
    out = {}
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.add_bos_token"):
        field = reader.fields.get(key)
        if field is not None:
            out[key] = field.contents()
    out["n_tokens"] = len(reader.fields["tokenizer.ggml.tokens"].data)
    return out


def add_bos_of(fields: dict) -> bool:
    """llama.cpp's add_bos: the GGUF's key, else its default for the vocabulary type."""
    if "tokenizer.ggml.add_bos_token" in fields:
        return bool(fields["tokenizer.ggml.add_bos_token"])
    model = fields.get("tokenizer.ggml.model")
    return model in ("llama", "bert") or fields.get("tokenizer.ggml.pre") == "llama-bpe"


@functools.cache
def parse_special_flags(tokenize: Path) -> tuple[str, ...]:
    """llama-tokenize parses special tokens by default since it has
    --no-parse-special; older builds needed --parse-special."""
    proc = subprocess.run([str(tokenize), "--help"], capture_output=True, timeout=60)
    text = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    return () if "--no-parse-special" in text else ("--parse-special",)


def llama_ids(tokenize: Path, gguf_path: Path, text: str, tmp: Path) -> list[int]:
    prompt = tmp / "prompt.txt"
    prompt.write_bytes(text.encode("utf-8"))
    # -f reads the file verbatim; --no-escape keeps backslashes as they are
    proc = run(
        [tokenize, "-m", gguf_path, "-f", prompt, "--ids", *parse_special_flags(tokenize), "--no-escape", "--log-disable"],
        timeout=120,
    )
    out = proc.stdout.decode("utf-8").strip().splitlines()
    need(bool(out) and out[-1].startswith("["), f"llama-tokenize printed no id list: {proc.stdout!r}")
    line = out[-1].strip("[]").strip()
    return [int(x) for x in line.split(",")] if line else []


def compare(tokenize: Path, gguf_path: Path, folder: Path, tmp: Path) -> None:
    fields = gguf_fields(gguf_path)
    add_special = add_bos_of(fields)
    hf = hf_tokenizer(folder)
    bad = []
    for text in PROBES:
        want = hf.encode(text, add_special_tokens=add_special).ids
        got = llama_ids(tokenize, gguf_path, text, tmp)
        if got != want:
            bad.append(f"  {text!r}:\n    llama.cpp {got}\n    HF        {want}")
    assert not bad, (
        f"{gguf_path.name}: llama.cpp and HF tokenizers ({folder / 'tokenizer.json'}) differ "
        f"on {len(bad)}/{len(PROBES)} probes (add_special={add_special}):\n" + "\n".join(bad)
    )


@pytest.fixture(scope="module")
def edgec_gguf(edgec_bin, fixtures_dir, tmp_path_factory):
    """The F32 GGUF edgec writes for a model, made once per model."""
    made = {}

    def make(name: str) -> tuple[Path, Path]:
        folder_of, _, _ = MODELS[name]
        folder = folder_of(fixtures_dir)
        hint = FETCH_HINT if name in REAL else "run `python fixtures/make_tiny.py`"
        need((folder / "tokenizer.json").is_file(), f"{folder}/tokenizer.json is missing: {hint}")
        if name not in made:
            out = tmp_path_factory.mktemp(name) / f"{name}-f32.gguf"
            run([edgec_bin, "quantize", "--type", "F32", folder, out], timeout=900)
            made[name] = out
        return folder, made[name]

    return make


@pytest.mark.parametrize("name", list(MODELS))
def test_gguf_vocabulary_header(name, edgec_gguf):
    """The GGUF says what llama.cpp needs to pick the right tokenizer."""
    folder, gguf_path = edgec_gguf(name)
    _, model, pre = MODELS[name]
    fields = gguf_fields(gguf_path)
    assert fields.get("tokenizer.ggml.model") == model
    assert fields.get("tokenizer.ggml.pre") == pre
    assert fields["n_tokens"] >= hf_tokenizer(folder).get_vocab_size(with_added_tokens=True)


@pytest.mark.parametrize("name", list(MODELS))
def test_llama_cpp_matches_hf_tokenizers(name, edgec_gguf, llama_bin, tmp_path):
    tokenize = llama_tool(llama_bin, "llama-tokenize")
    folder, gguf_path = edgec_gguf(name)
    compare(tokenize, gguf_path, folder, tmp_path)


def test_smollm2_packaged_gguf_matches_written_tokenizer(llama_bin, models_dir, tmp_path):
    """edgec's tokenizer.json for SmolLM2 (written from the packaged GGUF by
    `edgec convert`) tokenizes as llama.cpp does with the packaged GGUF itself."""
    tokenize = llama_tool(llama_bin, "llama-tokenize")
    packaged = models_dir / "smollm2-135m-q4_1.gguf"
    folder = models_dir / "smollm2-135m-f32"
    need(packaged.exists() and (folder / "tokenizer.json").is_file(), f"{packaged} or {folder}: {FETCH_HINT}")
    compare(tokenize, packaged, folder, tmp_path)
