//! Byte-level BPE pre-tokenizers: the shapes of Hugging Face's `pre_tokenizer`
//! (and `normalizer`) configuration that llama.cpp implements, by llama.cpp's
//! name (`tokenizer.ggml.pre`).
//!
//! convert_hf_to_gguf.py tells pre-tokenizers apart by hashing the token ids
//! the HF tokenizer gives for a test string; without the HF library we read
//! the configuration instead. Each shape here is the one of the reference model
//! that convert maps to the name, and llama.cpp applies the same regexes.

use serde_json::{json, Value};

/// GPT-2's split regex (also the default of the `ByteLevel` pre-tokenizer).
pub const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama-3's split regex (`llama-bpe`).
pub const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split regex (`qwen2`): Llama-3's with single digits.
pub const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The names that [`detect`] gives and [`hf_config`] accepts. `starcoder`
/// is accepted on writing: llama.cpp splits it exactly as `smollm`.
pub const SUPPORTED: &[&str] = &["gpt-2", "smollm", "llama-bpe", "qwen2"];

const SUPPORTED_HELP: &str =
    "gpt-2 (ByteLevel with GPT-2's regex), smollm (Sequence[Digits(individual_digits), \
ByteLevel]), llama-bpe (Sequence[Split(Llama-3 regex), ByteLevel(use_regex: false)]), qwen2 \
(Sequence[Split(Qwen2 regex), ByteLevel(use_regex: false)], NFC normalizer)";

/// The Hugging Face side of a pre-tokenizer.
#[derive(Debug, Clone, PartialEq)]
pub struct HfPreTokenizer {
    pub normalizer: Value,
    pub pre_tokenizer: Value,
    /// The BPE model's `ignore_merges` (Llama-3 takes a word that is a whole
    /// token as is; llama.cpp does the same for `llama-bpe`).
    pub ignore_merges: bool,
}

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split(regex: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
}

/// The `tokenizer.json` configuration for llama.cpp's pre-tokenizer `name`,
/// or `None` when edgec does not know it.
pub fn hf_config(name: &str) -> Option<HfPreTokenizer> {
    let (normalizer, pre_tokenizer, ignore_merges) = match name {
        "gpt-2" => (Value::Null, byte_level(true), false),
        "smollm" | "starcoder" => (
            Value::Null,
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]}),
            false,
        ),
        "llama-bpe" => (
            Value::Null,
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false)]}),
            true,
        ),
        "qwen2" => (
            json!({"type": "NFC"}),
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(false)]}),
            false,
        ),
        _ => return None,
    };
    Some(HfPreTokenizer {
        normalizer,
        pre_tokenizer,
        ignore_merges,
    })
}

/// The error for a name [`hf_config`] does not know.
pub fn unsupported_name(name: &str) -> String {
    format!("llama.cpp pre-tokenizer '{name}' has no Hugging Face form in edgec; supported: {SUPPORTED_HELP}")
}

fn ty(v: &Value) -> Option<&str> {
    v.get("type").and_then(Value::as_str)
}

fn flag(v: &Value, key: &str, default: bool) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(default)
}

/// A ByteLevel pre-tokenizer that llama.cpp can follow: no prefix space.
/// Returns its `use_regex`.
fn as_byte_level(v: &Value) -> Option<bool> {
    (ty(v) == Some("ByteLevel") && !flag(v, "add_prefix_space", false))
        .then(|| flag(v, "use_regex", true))
}

/// The regex of an isolating `Split` pre-tokenizer.
fn as_split_regex(v: &Value) -> Option<&str> {
    if ty(v) != Some("Split") || flag(v, "invert", false) {
        return None;
    }
    if v.get("behavior").and_then(Value::as_str) != Some("Isolated") {
        return None;
    }
    v.get("pattern")?.get("Regex")?.as_str()
}

fn compact(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 400 {
        let mut end = 400;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

/// llama.cpp's name for a byte-level BPE pre-tokenizer configuration, or an
/// error message naming what was found and listing what is supported.
pub fn detect(pre_tokenizer: &Value, normalizer: &Value) -> Result<&'static str, String> {
    let name = match ty(pre_tokenizer) {
        Some("ByteLevel") => match as_byte_level(pre_tokenizer) {
            Some(true) => Some("gpt-2"),
            _ => None,
        },
        Some("Sequence") => {
            let items: &[Value] = pre_tokenizer
                .get("pretokenizers")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            match items {
                [digits, bl] if ty(digits) == Some("Digits") => {
                    (flag(digits, "individual_digits", false) && as_byte_level(bl) == Some(true))
                        .then_some("smollm")
                }
                [sp, bl] if as_split_regex(sp).is_some() && as_byte_level(bl) == Some(false) => {
                    match as_split_regex(sp) {
                        Some(LLAMA3_REGEX) => Some("llama-bpe"),
                        Some(QWEN2_REGEX) => Some("qwen2"),
                        Some(GPT2_REGEX) => Some("gpt-2"),
                        _ => None,
                    }
                }
                [single] => match as_byte_level(single) {
                    Some(true) => Some("gpt-2"),
                    _ => None,
                },
                _ => None,
            }
        }
        _ => None,
    };
    let Some(name) = name else {
        return Err(format!(
            "unsupported byte-level BPE pre-tokenizer {}; llama.cpp's pre-tokenizers that edgec recognises: {SUPPORTED_HELP}",
            compact(pre_tokenizer)
        ));
    };
    let normalizer_ok = match ty(normalizer) {
        None => normalizer.is_null(),
        // Qwen2 ships NFC; llama.cpp does not normalise, which only matters for
        // text that is not already NFC.
        Some("NFC") => name == "qwen2",
        Some("Sequence") => normalizer
            .get("normalizers")
            .and_then(Value::as_array)
            .is_some_and(|v| v.is_empty()),
        _ => false,
    };
    if !normalizer_ok {
        return Err(format!(
            "byte-level BPE with pre-tokenizer '{name}' has normalizer {}, which llama.cpp does not apply",
            compact(normalizer)
        ));
    }
    Ok(name)
}
