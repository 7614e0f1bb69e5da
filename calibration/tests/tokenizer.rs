//! TextTokenizer against independent tokenizations: the `tokenizers` library
//! on each fixture's own tokenizer.json, and llama.cpp's `llama-tokenize` on
//! SmolLM2-135M.
//!
//! The llama.cpp test needs LLAMA_BIN (scripts/setup-env.sh, then
//! `source ~/.cache/edgec/env.sh`) and the real model (fixtures/fetch-real.sh);
//! without them it fails, it does not skip.

use std::path::{Path, PathBuf};
use std::process::Command;

use edgec_calibration::TextTokenizer;
use edgec_core::Vocab;

const PROBES: &[&str] = &[
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
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "def f(x):\n    return x ** 2  # square\n",
    " ",
    "\n",
];

/// Probes with special tokens written in the text.
const SPECIAL_PROBES: &[&str] = &[
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<s>[INST] hi [/INST] ok</s>",
    "[CLS] hello [SEP] world [MASK].",
];

const SETUP_HINT: &str = "run scripts/setup-env.sh and `source ~/.cache/edgec/env.sh`";
const FETCH_HINT: &str = "run fixtures/fetch-real.sh";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name)
}

fn vocab_of(path: &Path) -> Vocab {
    let model =
        edgec_formats::read_model(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    model
        .meta
        .vocab
        .unwrap_or_else(|| panic!("{}: no tokenizer", path.display()))
}

fn hf_ids(tk: &tokenizers::Tokenizer, text: &str, add_special: bool) -> Vec<u32> {
    tk.encode(text, add_special).unwrap().get_ids().to_vec()
}

fn check_fixture(name: &str) {
    let dir = fixture(name);
    let ours = TextTokenizer::from_vocab(&vocab_of(&dir)).unwrap();
    let theirs = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    for text in PROBES.iter().chain(SPECIAL_PROBES) {
        for add_special in [false, true] {
            assert_eq!(
                ours.encode_parse_special(text, add_special).unwrap(),
                hf_ids(&theirs, text, add_special),
                "{name}: {text:?} (add_special {add_special})"
            );
        }
    }
    // without special-token parsing: as the library with encode_special_tokens
    let mut plain = theirs.clone();
    plain.set_encode_special_tokens(true);
    for text in PROBES.iter().chain(SPECIAL_PROBES) {
        assert_eq!(
            ours.encode(text, true).unwrap(),
            hf_ids(&plain, text, true),
            "{name}: {text:?} (no special parsing)"
        );
    }
}

#[test]
fn tiny_llama_byte_level_bpe_matches_its_tokenizer_json() {
    check_fixture("tiny-llama");
}

#[test]
fn tiny_llama_sentencepiece_matches_its_tokenizer_json() {
    check_fixture("tiny-llama-sp");
}

#[test]
fn tiny_bert_wordpiece_matches_its_tokenizer_json() {
    check_fixture("tiny-bert");
}

#[test]
fn add_bos_follows_the_vocabulary() {
    for (name, bos_first) in [
        ("tiny-llama", false),
        ("tiny-llama-sp", true),
        ("tiny-bert", true),
    ] {
        let v = vocab_of(&fixture(name));
        let tk = TextTokenizer::from_vocab(&v).unwrap();
        assert_eq!(tk.add_bos(), bos_first, "{name}");
        let ids = tk.encode("hello world", true).unwrap();
        assert_eq!(
            ids.first().copied() == tk.bos(),
            bos_first,
            "{name}: {ids:?}, bos {:?}",
            tk.bos()
        );
        assert_eq!(tk.vocab_size(), v.tokens.len());
    }
}

// ---- llama.cpp

fn cache_dir() -> PathBuf {
    match std::env::var_os("EDGEC_CACHE") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/edgec"),
    }
}

fn llama_tokenize_bin() -> PathBuf {
    let Some(dir) = std::env::var_os("LLAMA_BIN") else {
        panic!("LLAMA_BIN (llama.cpp's tools) is not set: {SETUP_HINT}");
    };
    let bin = Path::new(&dir).join("llama-tokenize");
    assert!(
        bin.is_file(),
        "{} does not exist: {SETUP_HINT}",
        bin.display()
    );
    bin
}

/// `llama-tokenize` on the file: ids as llama.cpp gives them.
fn llama_tokenize(bin: &Path, gguf: &Path, text_file: &Path, bos: bool, special: bool) -> Vec<u32> {
    let mut cmd = Command::new(bin);
    cmd.arg("-m").arg(gguf).arg("-f").arg(text_file).args([
        "--ids",
        "--log-disable",
        "--no-escape",
    ]);
    if !bos {
        cmd.arg("--no-bos");
    }
    if !special {
        cmd.arg("--no-parse-special");
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}: {SETUP_HINT}", bin.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "llama-tokenize failed on {}: {}{}",
        gguf.display(),
        String::from_utf8_lossy(&out.stderr),
        stdout
    );
    let list = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('['))
        .unwrap_or_else(|| panic!("no id list in llama-tokenize's output: {stdout}"));
    list.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect()
}

/// A GGUF holding no tensors, only the metadata edgec writes for `model`
/// (llama-tokenize loads the vocabulary only).
fn vocab_only_gguf(model: &edgec_core::Model, path: &Path) {
    let meta = edgec_formats::gguf::model_metadata(model, 0);
    let bytes = edgec_formats::gguf::writer::header(&meta, &[]).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn first_chars(text: &str, n: usize) -> &str {
    match text.char_indices().nth(n) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

#[test]
fn smollm2_matches_llama_tokenize_on_gpl3() {
    let bin = llama_tokenize_bin();
    let cache = cache_dir();
    let f32_dir = cache.join("models/smollm2-135m-f32");
    assert!(
        f32_dir.join("model.safetensors").is_file(),
        "{} is missing: {FETCH_HINT}",
        f32_dir.display()
    );
    let packaged = std::env::var_os("EDGEC_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache.join("models/smollm2-135m-q4_1.gguf"));
    assert!(
        packaged.is_file(),
        "{} is missing: {SETUP_HINT}",
        packaged.display()
    );

    let gpl = std::fs::read_to_string("/usr/share/common-licenses/GPL-3")
        .expect("/usr/share/common-licenses/GPL-3");
    let dir = tempfile::tempdir().unwrap();
    let mut texts = vec![("gpl3-4000", first_chars(&gpl, 4000).to_string())];
    texts.push(("probes", PROBES.join("\n")));
    texts.push(("specials", SPECIAL_PROBES.join(" ")));

    // edgec's own GGUF of the f32 folder (its metadata), and the packaged GGUF
    // that llama.cpp's convert made: the independent reference.
    let model = edgec_formats::read_model(&f32_dir).unwrap();
    let ours_gguf = dir.path().join("smollm2-vocab.gguf");
    vocab_only_gguf(&model, &ours_gguf);
    let from_folder = TextTokenizer::from_vocab(model.meta.vocab.as_ref().unwrap()).unwrap();
    let from_gguf = TextTokenizer::from_vocab(&vocab_of(&packaged)).unwrap();

    for (name, text) in &texts {
        let file = dir.path().join(format!("{name}.txt"));
        std::fs::write(&file, text).unwrap();
        for gguf in [&packaged, &ours_gguf] {
            for (add_special, parse_special) in [(true, false), (false, false), (true, true)] {
                let want = llama_tokenize(&bin, gguf, &file, add_special, parse_special);
                assert!(!want.is_empty());
                for (which, tk) in [("folder", &from_folder), ("packaged GGUF", &from_gguf)] {
                    // llama-tokenize's --no-bos only drops BOS when the model adds it
                    let got = if parse_special {
                        tk.encode_parse_special(text, add_special)
                    } else {
                        tk.encode(text, add_special)
                    }
                    .unwrap();
                    if got != want {
                        let at = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
                        panic!(
                            "{name}: tokenizer from the {which} differs from llama-tokenize on {} \
                             (add_special {add_special}, parse_special {parse_special}) at token \
                             {at}: ours {:?}, llama.cpp {:?} ({} vs {} tokens)",
                            gguf.display(),
                            &got[at..(at + 8).min(got.len())],
                            &want[at..(at + 8).min(want.len())],
                            got.len(),
                            want.len()
                        );
                    }
                }
            }
        }
    }
    assert!(!from_folder.add_bos());
}
