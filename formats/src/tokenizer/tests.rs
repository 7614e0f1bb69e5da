use std::path::{Path, PathBuf};

use edgec_core::{TokenType, TokenizerKind, Vocab};
use serde_json::{json, Value};

use super::*;
use crate::gguf::value::{type_id, GgufValue, Metadata};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name)
}

fn read_fixture(name: &str) -> Vocab {
    let dir = fixture(name);
    vocab_from_hf(
        &dir.join("tokenizer.json"),
        Some(&dir.join("tokenizer_config.json")),
    )
    .unwrap()
}

fn id_of(v: &Vocab, text: &str) -> Option<u32> {
    v.tokens.iter().position(|t| t == text).map(|i| i as u32)
}

fn hf_round_trip(v: &Vocab) -> Vocab {
    let dir = tempfile::tempdir().unwrap();
    write_hf_tokenizer(v, dir.path()).unwrap();
    vocab_from_hf(
        &dir.path().join("tokenizer.json"),
        Some(&dir.path().join("tokenizer_config.json")),
    )
    .unwrap()
}

fn gguf_round_trip(v: &Vocab) -> Vocab {
    let mut meta = Metadata::default();
    meta.set("general.architecture", GgufValue::String("llama".into()));
    vocab_to_gguf(v, &mut meta);
    assert_eq!(
        meta.entries[0].0, "general.architecture",
        "keys are appended"
    );
    vocab_from_gguf(&meta, Path::new("x.gguf"))
        .unwrap()
        .unwrap()
}

/// Writes a tokenizer.json (and optionally a config) into a temp dir.
fn write_tj(tj: &Value, config: Option<&Value>) -> (tempfile::TempDir, PathBuf, Option<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let tj_path = dir.path().join("tokenizer.json");
    std::fs::write(&tj_path, tj.to_string()).unwrap();
    let cfg = config.map(|c| {
        let p = dir.path().join("tokenizer_config.json");
        std::fs::write(&p, c.to_string()).unwrap();
        p
    });
    (dir, tj_path, cfg)
}

fn byte_level_tj(pre_tokenizer: Value, normalizer: Value) -> Value {
    json!({
        "version": "1.0",
        "added_tokens": [{"id": 0, "content": "<|endoftext|>", "special": true, "normalized": false}],
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "vocab": {"<|endoftext|>": 0, "a": 1, "b": 2, "ab": 3, "Ġ": 4, "Ġab": 5},
                  "merges": [["a", "b"], ["Ġ", "ab"]]},
    })
}

#[test]
fn helpers() {
    assert!(looks_special("<|im_start|>"));
    assert!(looks_special("<pad>"));
    assert!(looks_special("<unused12>"));
    assert!(!looks_special("<tool>"));
    assert_eq!(bert_to_phantom("##ing", TokenType::Normal), "ing");
    assert_eq!(bert_to_phantom("the", TokenType::Normal), "▁the");
    assert_eq!(bert_to_phantom("[CLS]", TokenType::Control), "[CLS]");
    for (t, ty) in [
        ("##ing", TokenType::Normal),
        ("the", TokenType::Normal),
        ("###", TokenType::Normal),
    ] {
        assert_eq!(bert_from_phantom(&bert_to_phantom(t, ty), ty), t);
    }
    assert_eq!(split_merge("Ġ t"), Some(("Ġ", "t")));
    assert_eq!(split_merge("  x"), Some((" ", "x")));
    assert_eq!(split_merge("ab"), None);
    assert!(is_byte_token("<0x0A>") && !is_byte_token("<0xZZ>") && !is_byte_token("<s>"));
}

#[test]
fn tiny_llama_byte_level_bpe() {
    let v = read_fixture("tiny-llama");
    assert_eq!(v.kind, TokenizerKind::BytePairBpe);
    assert_eq!(v.pre, "smollm");
    assert_eq!(v.tokens.len(), 512);
    assert!(v.scores.is_empty());
    assert!(!v.merges.is_empty() && v.merges[0].contains(' '));
    assert_eq!(v.tokens[0], "<|endoftext|>");
    assert_eq!(v.token_types[..3], [TokenType::Control; 3]);
    let tool = id_of(&v, "<tool>").unwrap() as usize;
    assert_eq!(v.token_types[tool], TokenType::UserDefined);
    assert_eq!(v.token_types[10], TokenType::Normal);
    assert_eq!(
        (v.bos, v.eos, v.unk, v.pad),
        (Some(1), Some(2), Some(0), Some(2))
    );
    assert_eq!((v.add_bos, v.add_eos), (Some(false), Some(false)));
    assert_eq!(v.add_space_prefix, Some(false));
    assert!(v.chat_template.as_deref().unwrap().contains("<|im_start|>"));
    assert_eq!(hf_round_trip(&v), v);
    assert_eq!(gguf_round_trip(&v), v);
}

#[test]
fn tiny_llama_sp_sentencepiece_bpe() {
    let v = read_fixture("tiny-llama-sp");
    assert_eq!(v.kind, TokenizerKind::SentencePiece);
    assert_eq!(v.pre, "default");
    assert_eq!(v.tokens.len(), 640);
    assert_eq!(v.token_types[0], TokenType::Unknown);
    assert_eq!(v.token_types[1..3], [TokenType::Control; 2]);
    assert_eq!(v.tokens[3 + 0x0A], "<0x0A>");
    assert!(v.token_types[3..259].iter().all(|t| *t == TokenType::Byte));
    assert_eq!((v.unk, v.bos, v.eos), (Some(0), Some(1), Some(2)));
    assert_eq!((v.add_bos, v.add_eos), (Some(true), Some(false)));
    assert_eq!(v.add_space_prefix, None);
    assert_eq!(v.scores.len(), 640);
    // the first merge's result scores best among normal tokens
    let (a, b) = split_merge(&v.merges[0]).unwrap();
    let first = id_of(&v, &format!("{a}{b}")).unwrap() as usize;
    assert_eq!(v.scores[first], 0.0);
    assert!(v.scores[first] > v.scores[id_of(&v, "▁the").unwrap() as usize]);
    assert_eq!(hf_round_trip(&v), v);
    assert_eq!(gguf_round_trip(&v), v);
}

#[test]
fn tiny_bert_wordpiece() {
    let v = read_fixture("tiny-bert");
    assert_eq!(v.kind, TokenizerKind::WordPiece);
    assert_eq!(
        v.tokens[..5],
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    );
    assert_eq!(v.token_types[..5], [TokenType::Control; 5]);
    // llama.cpp's phantom-space form: no "##", word starts marked with ▁
    assert!(v.tokens[5..].iter().all(|t| !t.starts_with("##")));
    assert!(v.tokens.iter().any(|t| t == "▁the"));
    assert_eq!(
        (v.pad, v.unk, v.cls, v.sep, v.mask),
        (Some(0), Some(1), Some(2), Some(3), Some(4))
    );
    assert_eq!((v.bos, v.eos), (Some(2), Some(3)));
    assert_eq!((v.add_bos, v.add_eos), (Some(true), Some(true)));
    assert_eq!(hf_round_trip(&v), v);
    assert_eq!(gguf_round_trip(&v), v);
}

#[test]
fn written_tokenizer_json_shapes() {
    let v = read_fixture("tiny-llama");
    let dir = tempfile::tempdir().unwrap();
    write_hf_tokenizer(&v, dir.path()).unwrap();
    let tj: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("tokenizer.json")).unwrap()).unwrap();
    assert_eq!(
        tj["pre_tokenizer"],
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]})
    );
    assert_eq!(tj["decoder"]["type"], "ByteLevel");
    assert_eq!(tj["post_processor"]["type"], "ByteLevel");
    let added = tj["added_tokens"].as_array().unwrap();
    assert_eq!(added.len(), 4);
    assert_eq!(added[3]["content"], "<tool>");
    assert_eq!(added[3]["special"], false);
    assert_eq!(added[0]["special"], true);
    // deterministic output
    let dir2 = tempfile::tempdir().unwrap();
    write_hf_tokenizer(&v, dir2.path()).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        assert_eq!(
            std::fs::read(dir.path().join(f)).unwrap(),
            std::fs::read(dir2.path().join(f)).unwrap()
        );
    }

    // BERT comes back in WordPiece form
    let v = read_fixture("tiny-bert");
    write_hf_tokenizer(&v, dir.path()).unwrap();
    let tj: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("tokenizer.json")).unwrap()).unwrap();
    let orig: Value = serde_json::from_slice(
        &std::fs::read(fixture("tiny-bert").join("tokenizer.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(tj["model"]["vocab"], orig["model"]["vocab"]);
    assert_eq!(
        tj["post_processor"]["single"],
        orig["post_processor"]["single"]
    );
    assert_eq!(tj["post_processor"]["pair"], orig["post_processor"]["pair"]);
}

#[test]
fn pre_tokenizer_detection() {
    use pretok::*;
    let bl = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
    assert_eq!(detect(&bl(true), &Value::Null), Ok("gpt-2"));
    let llama3 = json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), bl(false)]});
    assert_eq!(detect(&llama3, &Value::Null), Ok("llama-bpe"));
    let qwen2 = json!({"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), bl(false)]});
    assert_eq!(detect(&qwen2, &json!({"type": "NFC"})), Ok("qwen2"));
    assert!(detect(&llama3, &json!({"type": "NFC"})).is_err());
    let e = detect(&json!({"type": "Whitespace"}), &Value::Null).unwrap_err();
    assert!(
        e.contains("Whitespace") && e.contains("smollm") && e.contains("llama-bpe"),
        "{e}"
    );
    let prefixed = json!({"type": "ByteLevel", "add_prefix_space": true, "use_regex": true});
    assert!(detect(&prefixed, &Value::Null).is_err());
    for name in SUPPORTED {
        let c = hf_config(name).unwrap();
        assert_eq!(detect(&c.pre_tokenizer, &c.normalizer), Ok(*name));
    }
    assert!(hf_config("deepseek-llm").is_none());
    assert!(unsupported_name("deepseek-llm").contains("deepseek-llm"));
}

#[test]
fn llama3_and_qwen2_round_trip() {
    for pre in ["llama-bpe", "qwen2", "gpt-2"] {
        let c = pretok::hf_config(pre).unwrap();
        let (_d, tj, _) = write_tj(&byte_level_tj(c.pre_tokenizer, c.normalizer), None);
        let mut v = vocab_from_hf(&tj, None).unwrap();
        assert_eq!(v.pre, pre);
        v.bos = Some(0);
        assert_eq!(v.merges, ["a b", "Ġ ab"]);
        let back = hf_round_trip(&v);
        assert_eq!(back.tokens, v.tokens);
        assert_eq!(back.merges, v.merges);
        assert_eq!(back.pre, pre);
        // llama.cpp adds BOS for llama-bpe when the GGUF does not say
        assert_eq!(back.add_bos, Some(pre == "llama-bpe"));
    }
}

#[test]
fn merges_as_strings_or_pairs() {
    let pre = json!({"type": "ByteLevel", "add_prefix_space": false, "use_regex": true});
    let mut tj = byte_level_tj(pre, Value::Null);
    tj["model"]["merges"] = json!(["a b", "Ġ ab"]);
    let (_d, p, _) = write_tj(&tj, None);
    assert_eq!(vocab_from_hf(&p, None).unwrap().merges, ["a b", "Ġ ab"]);
    tj["model"]["merges"] = json!(["ab"]);
    let (_d, p, _) = write_tj(&tj, None);
    let e = vocab_from_hf(&p, None).unwrap_err().to_string();
    assert!(e.contains("tokenizer.json") && e.contains("merge 0"), "{e}");
}

#[test]
fn unsupported_inputs_are_clear_errors() {
    // an unknown pre-tokenizer names itself and the supported ones
    let (_d, p, _) = write_tj(
        &byte_level_tj(
            json!({"type": "Sequence", "pretokenizers": [
        {"type": "Punctuation"}, {"type": "ByteLevel", "add_prefix_space": false}]}),
            Value::Null,
        ),
        None,
    );
    let e = vocab_from_hf(&p, None).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("Punctuation") && e.contains("smollm"),
        "{e}"
    );
    // Unigram
    let (_d, p, _) = write_tj(
        &json!({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}),
        None,
    );
    let e = vocab_from_hf(&p, None).unwrap_err().to_string();
    assert!(e.contains("Unigram"), "{e}");
    // not JSON
    let (_d, p, _) = write_tj(&json!(1), None);
    std::fs::write(&p, "{").unwrap();
    assert!(vocab_from_hf(&p, None)
        .unwrap_err()
        .to_string()
        .contains("JSON"));
    // missing file
    let e = vocab_from_hf(Path::new("/nonexistent/tokenizer.json"), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/tokenizer.json"), "{e}");
    // bad ids
    let mut tj = byte_level_tj(
        json!({"type": "ByteLevel", "add_prefix_space": false}),
        Value::Null,
    );
    tj["model"]["vocab"]["x"] = json!(-1);
    let (_d, p, _) = write_tj(&tj, None);
    assert!(vocab_from_hf(&p, None)
        .unwrap_err()
        .to_string()
        .contains("\"x\""));
    let mut tj = byte_level_tj(
        json!({"type": "ByteLevel", "add_prefix_space": false}),
        Value::Null,
    );
    tj["model"]["vocab"]["x"] = json!(1);
    let (_d, p, _) = write_tj(&tj, None);
    assert!(vocab_from_hf(&p, None)
        .unwrap_err()
        .to_string()
        .contains("id 1"));
    // cased BERT
    let tj = json!({"normalizer": {"type": "BertNormalizer", "lowercase": false},
                    "pre_tokenizer": {"type": "BertPreTokenizer"},
                    "model": {"type": "WordPiece", "vocab": {"[UNK]": 0}}});
    let (_d, p, _) = write_tj(&tj, None);
    assert!(vocab_from_hf(&p, None)
        .unwrap_err()
        .to_string()
        .contains("cased"));
    // an unknown pre-tokenizer name on writing
    let mut v = read_fixture("tiny-llama");
    v.pre = "deepseek-llm".into();
    let dir = tempfile::tempdir().unwrap();
    let e = write_hf_tokenizer(&v, dir.path()).unwrap_err().to_string();
    assert!(e.contains("deepseek-llm") && e.contains("smollm"), "{e}");
}

#[test]
fn holes_and_padding() {
    let mut tj = byte_level_tj(
        json!({"type": "ByteLevel", "add_prefix_space": false}),
        Value::Null,
    );
    tj["model"]["vocab"]["x"] = json!(8);
    let (_d, p, _) = write_tj(&tj, None);
    let mut v = vocab_from_hf(&p, None).unwrap();
    assert_eq!(v.tokens[6], "[PAD6]");
    assert_eq!(v.token_types[6], TokenType::Unused);
    pad_vocab(&mut v, 12);
    assert_eq!(v.tokens.len(), 12);
    assert_eq!(v.tokens[11], "[PAD11]");
    assert_eq!(v.token_types.len(), 12);
    let back = hf_round_trip(&v);
    assert_eq!(back.tokens, v.tokens);
    assert_eq!(back.token_types, v.token_types);
}

#[test]
fn special_tokens_from_template_and_config_json() {
    // Llama-3 style: BOS from the template, ids from config.json
    let c = pretok::hf_config("llama-bpe").unwrap();
    let mut tj = byte_level_tj(c.pre_tokenizer, c.normalizer);
    tj["added_tokens"] = json!([
        {"id": 0, "content": "<|endoftext|>", "special": true},
        {"id": 6, "content": "<|begin_of_text|>", "special": true},
        {"id": 7, "content": "<think>", "special": false},
    ]);
    tj["post_processor"] = json!({"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        {"type": "TemplateProcessing",
         "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [], "special_tokens": {}}]});
    let (d, p, _) = write_tj(&tj, None);
    std::fs::write(
        d.path().join("config.json"),
        r#"{"eos_token_id": 0, "pad_token_id": 99}"#,
    )
    .unwrap();
    std::fs::write(d.path().join("chat_template.jinja"), "{{ x }}").unwrap();
    let v = vocab_from_hf(&p, None).unwrap();
    assert_eq!(v.tokens.len(), 8);
    assert_eq!((v.bos, v.eos, v.pad), (Some(6), Some(0), None));
    assert_eq!((v.add_bos, v.add_eos), (Some(true), Some(false)));
    assert_eq!(v.token_types[7], TokenType::UserDefined);
    assert_eq!(v.chat_template.as_deref(), Some("{{ x }}"));
    let back = hf_round_trip(&v);
    assert_eq!(
        (back.bos, back.eos, back.add_bos, back.add_eos),
        (v.bos, v.eos, v.add_bos, v.add_eos)
    );
    assert_eq!(back.token_types, v.token_types);
}

#[test]
fn sentencepiece_without_merges_gets_them_from_scores() {
    let mut v = Vocab::new(TokenizerKind::SentencePiece);
    v.tokens = ["<unk>", "<s>", "</s>", "▁", "a", "b", "ab", "▁ab", "<0x41>"]
        .map(String::from)
        .to_vec();
    v.token_types = vec![
        TokenType::Unknown,
        TokenType::Control,
        TokenType::Control,
        TokenType::Normal,
        TokenType::Normal,
        TokenType::Normal,
        TokenType::Normal,
        TokenType::Normal,
        TokenType::Byte,
    ];
    v.scores = vec![0.0, 0.0, 0.0, -10.0, -11.0, -12.0, -1.0, -2.0, 0.0];
    v.unk = Some(0);
    v.bos = Some(1);
    v.eos = Some(2);
    let dir = tempfile::tempdir().unwrap();
    write_hf_tokenizer(&v, dir.path()).unwrap();
    let tj: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("tokenizer.json")).unwrap()).unwrap();
    assert_eq!(tj["model"]["merges"], json!([["a", "b"], ["▁", "ab"]]));
    assert_eq!(tj["model"]["byte_fallback"], true);
    assert_eq!(
        tj["post_processor"]["single"][0]["SpecialToken"]["id"],
        "<s>"
    );
    assert_eq!(tj["normalizer"]["normalizers"][0]["type"], "Prepend");
    let back = hf_round_trip(&v);
    assert_eq!(back.tokens, v.tokens);
    assert_eq!(back.token_types, v.token_types);
    assert_eq!(back.add_bos, Some(true));
    assert_eq!(back.merges, ["a b", "▁ ab"]);
    // scores come back in the same order for the merged tokens
    assert!(back.scores[6] > back.scores[7]);

    // no space prefix
    v.add_space_prefix = Some(false);
    let back = hf_round_trip(&v);
    assert_eq!(back.add_space_prefix, Some(false));
    v.merges = back.merges.clone();
    v.scores = back.scores.clone();
    v.add_bos = Some(true);
    v.add_eos = Some(false);
    assert_eq!(hf_round_trip(&v), v);
}

#[test]
fn gguf_metadata() {
    let v = read_fixture("tiny-llama-sp");
    let mut meta = Metadata::default();
    vocab_to_gguf(&v, &mut meta);
    let keys: Vec<&str> = meta.entries.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "tokenizer.ggml.model",
            "tokenizer.ggml.pre",
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.scores",
            "tokenizer.ggml.token_type",
            "tokenizer.ggml.merges",
            "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.unknown_token_id",
            "tokenizer.ggml.add_bos_token",
            "tokenizer.ggml.add_eos_token",
            "tokenizer.chat_template",
        ]
    );
    assert_eq!(meta.get_str("tokenizer.ggml.model"), Some("llama"));
    assert!(
        matches!(meta.get("tokenizer.ggml.token_type"), Some(GgufValue::Array(t, _)) if *t == type_id::I32)
    );
    assert!(
        matches!(meta.get("tokenizer.ggml.scores"), Some(GgufValue::Array(t, _)) if *t == type_id::F32)
    );
    assert!(matches!(
        meta.get("tokenizer.ggml.bos_token_id"),
        Some(GgufValue::U32(1))
    ));

    let path = Path::new("m.gguf");
    assert_eq!(vocab_from_gguf(&Metadata::default(), path).unwrap(), None);
    let broken = |key: &str, value: GgufValue| {
        let mut m = meta.clone();
        m.set(key, value);
        vocab_from_gguf(&m, path).unwrap_err().to_string()
    };
    let e = broken("tokenizer.ggml.bos_token_id", GgufValue::U32(640));
    assert!(e.contains("m.gguf") && e.contains("bos_token_id"), "{e}");
    let e = broken("tokenizer.ggml.model", GgufValue::String("t5".into()));
    assert!(e.contains("t5"), "{e}");
    let e = broken(
        "tokenizer.ggml.token_type",
        GgufValue::Array(type_id::I32, vec![GgufValue::I32(9); 640]),
    );
    assert!(e.contains("token_type"), "{e}");
    let e = broken(
        "tokenizer.ggml.scores",
        GgufValue::Array(type_id::F32, vec![]),
    );
    assert!(e.contains("scores"), "{e}");
    let e = broken("tokenizer.ggml.tokens", GgufValue::U32(3));
    assert!(e.contains("tokens"), "{e}");

    // gpt2 always carries merges
    let mut g = read_fixture("tiny-llama");
    g.merges.clear();
    let mut m = Metadata::default();
    vocab_to_gguf(&g, &mut m);
    assert!(m.get("tokenizer.ggml.merges").is_some());
    assert_eq!(meta.get_str("tokenizer.ggml.pre"), Some("default"));
    let _ = TokenizerKind::BytePairBpe.gguf_model();
}
