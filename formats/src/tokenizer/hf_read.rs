//! `tokenizer.json` (+ `tokenizer_config.json`) → [`Vocab`].

use std::collections::HashMap;
use std::path::Path;

use edgec_core::{TokenType, TokenizerKind, Vocab};
use serde_json::Value;

use super::{bert_to_phantom, is_byte_token, looks_special, pretok, split_merge, SPIECE_SPACE};
use crate::error::{FormatError, Result};

/// More token ids than any real tokenizer has: a bound against absurd ids.
const MAX_TOKENS: u64 = 1 << 24;

pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).map_err(|e| FormatError::io(path, e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| FormatError::invalid(path, format!("not valid JSON: {e}")))
}

struct Added {
    id: usize,
    content: String,
    special: bool,
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn type_of(v: &Value) -> Option<&str> {
    str_field(v, "type")
}

/// A special token in `tokenizer_config.json`: a string or `{"content": ...}`.
fn config_token(config: Option<&Value>, key: &str) -> Option<String> {
    match config?.get(key)? {
        Value::String(s) => Some(s.clone()),
        v @ Value::Object(_) => str_field(v, "content").map(str::to_string),
        _ => None,
    }
}

/// Whether the BPE model is SentencePiece-style, and if so whether a "▁" is
/// prepended to the text (llama.cpp's `add_space_prefix`).
fn sentencepiece_prefix(
    model: &Value,
    normalizer: &Value,
    pre: &Value,
) -> std::result::Result<Option<bool>, String> {
    let space = SPIECE_SPACE.to_string();
    let mut norms: Vec<&Value> = vec![];
    match type_of(normalizer) {
        Some("Sequence") => norms.extend(
            normalizer
                .get("normalizers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        ),
        Some(_) => norms.push(normalizer),
        None => {}
    }
    let is_replace = |n: &Value| {
        type_of(n) == Some("Replace")
            && n.get("pattern")
                .and_then(|p| p.get("String"))
                .and_then(Value::as_str)
                == Some(" ")
            && str_field(n, "content") == Some(space.as_str())
    };
    let is_metaspace = type_of(pre) == Some("Metaspace");
    let byte_fallback = model
        .get("byte_fallback")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if !byte_fallback && !is_metaspace && !norms.iter().any(|n| is_replace(n)) {
        return Ok(None);
    }
    let (mut prefix, mut replace) = (false, false);
    for n in norms {
        if is_replace(n) {
            replace = true;
        } else if type_of(n) == Some("Prepend") && str_field(n, "prepend") == Some(space.as_str()) {
            prefix = true;
        } else {
            return Err(format!(
                "SentencePiece-style BPE with normalizer {n}: llama.cpp only prepends and substitutes '▁'"
            ));
        }
    }
    if is_metaspace {
        if str_field(pre, "replacement").is_some_and(|r| r != space) {
            return Err(format!(
                "Metaspace pre-tokenizer with replacement other than '▁': {pre}"
            ));
        }
        replace = true;
        prefix |= match str_field(pre, "prepend_scheme") {
            Some("never") => false,
            Some(_) => true, // "always", "first"
            None => pre
                .get("add_prefix_space")
                .and_then(Value::as_bool)
                .unwrap_or(true),
        };
    } else if !pre.is_null() {
        return Err(format!(
            "SentencePiece-style BPE with pre-tokenizer {pre}: llama.cpp's SentencePiece tokenizer has none"
        ));
    }
    if !replace {
        return Err(
            "SentencePiece-style BPE (byte_fallback) that does not turn spaces into '▁': \
             neither a Replace(' ', '▁') normalizer nor a Metaspace pre-tokenizer"
                .into(),
        );
    }
    Ok(Some(prefix))
}

fn has_byte_level(v: &Value) -> bool {
    match type_of(v) {
        Some("ByteLevel") => true,
        Some("Sequence") => ["pretokenizers", "decoders", "processors"]
            .iter()
            .filter_map(|k| v.get(*k).and_then(Value::as_array))
            .flatten()
            .any(has_byte_level),
        _ => false,
    }
}

fn check_wordpiece(
    model: &Value,
    normalizer: &Value,
    pre: &Value,
) -> std::result::Result<(), String> {
    let prefix = str_field(model, "continuing_subword_prefix").unwrap_or("##");
    if prefix != "##" {
        return Err(format!("WordPiece with continuing_subword_prefix '{prefix}': llama.cpp's BERT vocab needs '##'"));
    }
    if type_of(normalizer) != Some("BertNormalizer") {
        return Err(format!(
            "WordPiece with normalizer {normalizer}: llama.cpp applies BERT's (BertNormalizer)"
        ));
    }
    let lowercase = normalizer
        .get("lowercase")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let strip_accents = normalizer
        .get("strip_accents")
        .and_then(Value::as_bool)
        .unwrap_or(lowercase);
    if !lowercase || !strip_accents {
        return Err(format!(
            "WordPiece with normalizer {normalizer}: cased BERT (lowercase or strip_accents false) needs \
             tokenizer.ggml.normalizer.* keys that edgec's Vocab does not carry yet"
        ));
    }
    if type_of(pre) != Some("BertPreTokenizer") {
        return Err(format!(
            "WordPiece with pre-tokenizer {pre}: llama.cpp splits words as BertPreTokenizer does"
        ));
    }
    Ok(())
}

fn check_byte_level_model(model: &Value) -> std::result::Result<(), String> {
    if model.get("byte_fallback").and_then(Value::as_bool) == Some(true) {
        return Err("byte-level BPE with byte_fallback".into());
    }
    for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
        if str_field(model, key).is_some_and(|s| !s.is_empty()) {
            return Err(format!("byte-level BPE with {key}: llama.cpp has none"));
        }
    }
    if model
        .get("dropout")
        .and_then(Value::as_f64)
        .is_some_and(|d| d > 0.0)
    {
        return Err("BPE with dropout: tokenization would be random".into());
    }
    Ok(())
}

/// Merges as GGUF strings "left right". The newer pair form `[left, right]`
/// allows spaces inside a part; like gguf-py, those are written as U+0120.
fn parse_merges(model: &Value) -> std::result::Result<Vec<String>, String> {
    let Some(list) = model.get("merges") else {
        return Ok(vec![]);
    };
    let list = list.as_array().ok_or("model.merges is not a list")?;
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        match m {
            Value::String(s) => {
                if split_merge(s).is_none() {
                    return Err(format!("merge {i} '{s}' is not \"left right\""));
                }
                out.push(s.clone());
            }
            Value::Array(pair) => match pair.as_slice() {
                [Value::String(a), Value::String(b)] if !a.is_empty() && !b.is_empty() => {
                    let enc = |s: &str| s.replace(' ', "\u{120}");
                    out.push(format!("{} {}", enc(a), enc(b)));
                }
                _ => return Err(format!("merge {i} is not a pair of non-empty strings: {m}")),
            },
            _ => return Err(format!("merge {i} is neither a string nor a pair: {m}")),
        }
    }
    Ok(out)
}

/// SentencePiece scores that make llama.cpp's algorithm (merge the adjacent
/// pair whose concatenation scores best) follow the BPE merge order: a token
/// made by merge `r` scores `-r`, other normal tokens below every merge,
/// special, byte and unused tokens 0.
fn scores_from_merges(tokens: &[String], types: &[TokenType], merges: &[String]) -> Vec<f32> {
    let mut rank: HashMap<String, usize> = HashMap::new();
    for (r, m) in merges.iter().enumerate() {
        if let Some((a, b)) = split_merge(m) {
            rank.entry(format!("{a}{b}")).or_insert(r);
        }
    }
    let floor = -(merges.len() as f32) - 1.0;
    tokens
        .iter()
        .zip(types)
        .map(|(t, ty)| match ty {
            TokenType::Normal => rank.get(t).map_or(floor, |&r| -(r as f32)),
            _ => 0.0,
        })
        .collect()
}

/// Reads `tokenizer.json` (+ `tokenizer_config.json` when present: bos/eos/pad
/// tokens, add_bos_token/add_eos_token, chat_template) into a Vocab.
///
/// As convert_hf_to_gguf.py does, `config.json` beside `tokenizer.json`
/// supplies special token ids (`bos_token_id`, ...) that the tokenizer files
/// leave unset, and `chat_template.jinja` (or `chat_template.json`) beside it a
/// chat template that `tokenizer_config.json` lacks. The vocabulary is as long
/// as the tokenizer's; [`super::pad_vocab`] pads it to `config.json`'s
/// `vocab_size`.
pub fn vocab_from_hf(tokenizer_json: &Path, tokenizer_config: Option<&Path>) -> Result<Vocab> {
    let path = tokenizer_json;
    let err = |msg: String| FormatError::invalid(path, msg);
    let tj = read_json(path)?;
    let config = tokenizer_config.map(read_json).transpose()?;
    let config = config.as_ref();
    let dir = path.parent().unwrap_or(Path::new("."));

    let model = tj
        .get("model")
        .filter(|m| m.is_object())
        .ok_or_else(|| err("no \"model\" object: not a Hugging Face tokenizer.json".into()))?;
    let null = Value::Null;
    let normalizer = tj.get("normalizer").unwrap_or(&null);
    let pre_tokenizer = tj.get("pre_tokenizer").unwrap_or(&null);
    let decoder = tj.get("decoder").unwrap_or(&null);
    let model_type = type_of(model).unwrap_or(if model.get("merges").is_some() {
        "BPE"
    } else {
        ""
    });

    let mut sp_prefix = None;
    let kind = match model_type {
        "WordPiece" => {
            check_wordpiece(model, normalizer, pre_tokenizer).map_err(err)?;
            TokenizerKind::WordPiece
        }
        "BPE" => match sentencepiece_prefix(model, normalizer, pre_tokenizer).map_err(err)? {
            Some(prefix) => {
                sp_prefix = Some(prefix);
                TokenizerKind::SentencePiece
            }
            None if has_byte_level(pre_tokenizer) || has_byte_level(decoder) => {
                check_byte_level_model(model).map_err(err)?;
                TokenizerKind::BytePairBpe
            }
            None => {
                return Err(err(format!(
                    "BPE tokenizer that is neither byte-level (ByteLevel pre-tokenizer) nor SentencePiece-style \
                     (byte_fallback, '▁' for spaces): pre_tokenizer {pre_tokenizer}, normalizer {normalizer}"
                )))
            }
        },
        other => {
            return Err(err(format!(
                "tokenizer model '{other}' is not supported: edgec converts BPE (byte-level or \
                 SentencePiece-style) and WordPiece"
            )))
        }
    };
    let pre = match kind {
        TokenizerKind::BytePairBpe => pretok::detect(pre_tokenizer, normalizer).map_err(err)?,
        _ => "default",
    };

    // ---- the base vocabulary and the added tokens
    let vocab_obj = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| err("model.vocab is not an object {token: id}".into()))?;
    let mut base: Vec<Option<String>> = vec![];
    let mut base_ids: HashMap<&str, usize> = HashMap::new();
    for (token, id) in vocab_obj {
        let id = id.as_u64().filter(|&i| i < MAX_TOKENS).ok_or_else(|| {
            err(format!(
                "model.vocab: token {token:?} has id {id}, not an integer below {MAX_TOKENS}"
            ))
        })? as usize;
        if base.len() <= id {
            base.resize(id + 1, None);
        }
        if let Some(other) = &base[id] {
            return Err(err(format!(
                "model.vocab: id {id} is used by both {other:?} and {token:?}"
            )));
        }
        base[id] = Some(token.clone());
        base_ids.insert(token.as_str(), id);
    }
    let mut added: Vec<Added> = vec![];
    if let Some(list) = tj.get("added_tokens").filter(|v| !v.is_null()) {
        let list = list
            .as_array()
            .ok_or_else(|| err("added_tokens is not a list".into()))?;
        for (i, a) in list.iter().enumerate() {
            let id = a
                .get("id")
                .and_then(Value::as_u64)
                .filter(|&i| i < MAX_TOKENS);
            let content = str_field(a, "content");
            let (Some(id), Some(content)) = (id, content) else {
                return Err(err(format!(
                    "added_tokens[{i}] has no valid id and content: {a}"
                )));
            };
            let special = a.get("special").and_then(Value::as_bool).unwrap_or(false);
            added.push(Added {
                id: id as usize,
                content: content.to_string(),
                special,
            });
        }
    }
    let n = added
        .iter()
        .map(|a| a.id + 1)
        .chain([base.len()])
        .max()
        .unwrap_or(0);
    if n == 0 {
        return Err(err("the vocabulary is empty".into()));
    }
    let mut added_at: Vec<Option<&Added>> = vec![None; n];
    for a in &added {
        added_at[a.id].get_or_insert(a);
    }
    let model_unk = str_field(model, "unk_token");

    let mut tokens = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    for (id, added_here) in added_at.iter().enumerate() {
        let (token, ty) = if let Some(a) = added_here {
            if kind == TokenizerKind::SentencePiece && Some(a.content.as_str()) == model_unk {
                (a.content.clone(), TokenType::Unknown)
            } else if a.special || looks_special(&a.content) {
                (a.content.clone(), TokenType::Control)
            } else {
                // convert pre-normalises user-defined spaces
                (a.content.replace(SPIECE_SPACE, " "), TokenType::UserDefined)
            }
        } else if let Some(t) = base.get(id).cloned().flatten() {
            let ty = if t == format!("[PAD{id}]") {
                // convert's filler for ids no token uses (written back as such)
                TokenType::Unused
            } else if kind == TokenizerKind::SentencePiece && is_byte_token(&t) {
                TokenType::Byte
            } else if kind == TokenizerKind::SentencePiece && Some(t.as_str()) == model_unk {
                TokenType::Unknown
            } else {
                TokenType::Normal
            };
            (t, ty)
        } else {
            (format!("[PAD{id}]"), TokenType::Unused)
        };
        tokens.push(token);
        types.push(ty);
    }

    let merges = match kind {
        TokenizerKind::WordPiece => vec![],
        _ => parse_merges(model).map_err(err)?,
    };
    let scores = match kind {
        TokenizerKind::SentencePiece => scores_from_merges(&tokens, &types, &merges),
        _ => vec![],
    };

    // ---- special tokens, as gguf-py's SpecialVocab finds them
    let mut bos = config_token(config, "bos_token");
    let mut eos = config_token(config, "eos_token");
    let unk = config_token(config, "unk_token");
    let mut sep = config_token(config, "sep_token");
    let pad = config_token(config, "pad_token");
    let mut cls = config_token(config, "cls_token");
    let mask = config_token(config, "mask_token");
    if bos.is_none() && cls.is_some() {
        bos = cls.clone();
    }
    if eos.is_none() && sep.is_some() {
        eos = sep.clone();
    }
    let (mut add_bos, mut add_eos) = (None, None);
    if let Some(pp) = tj.get("post_processor").filter(|v| !v.is_null()) {
        let processors: Vec<&Value> = match type_of(pp) {
            Some("Sequence") => pp
                .get("processors")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .collect(),
            _ => vec![pp],
        };
        for p in processors {
            match type_of(p) {
                Some("ByteLevel") => {
                    add_bos.get_or_insert(false);
                    add_eos.get_or_insert(false);
                }
                Some("RobertaProcessing") => {
                    add_bos = Some(true);
                    add_eos = Some(true);
                    let first = |k: &str| {
                        p.get(k)
                            .and_then(|v| v.get(0))
                            .and_then(Value::as_str)
                            .map(str::to_string)
                    };
                    if cls.is_none() {
                        cls = first("cls").or_else(|| bos.clone());
                    }
                    if sep.is_none() {
                        sep = first("sep").or_else(|| eos.clone());
                    }
                }
                Some("TemplateProcessing") => {
                    let single: &[Value] = p
                        .get("single")
                        .and_then(Value::as_array)
                        .map_or(&[], Vec::as_slice);
                    let special_id = |v: &Value| {
                        v.get("SpecialToken")
                            .and_then(|s| s.get("id"))
                            .and_then(Value::as_str)
                            .map(str::to_string)
                    };
                    if single.len() > 1 {
                        if let Some(first) = special_id(&single[0]) {
                            let is_known = |bos: &Option<String>| {
                                Some(&first) == bos.as_ref() || Some(&first) == cls.as_ref()
                            };
                            if !is_known(&bos) && bos.is_none() {
                                bos = Some(first.clone());
                            }
                            add_bos = Some(is_known(&bos));
                        }
                        if let Some(last) = special_id(&single[single.len() - 1]) {
                            // convert makes the trailing token the EOS
                            eos = Some(last);
                            add_eos = Some(true);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    if add_bos.is_none() {
        add_bos = config
            .and_then(|c| c.get("add_bos_token"))
            .and_then(Value::as_bool);
    }
    if add_eos.is_none() {
        add_eos = config
            .and_then(|c| c.get("add_eos_token"))
            .and_then(Value::as_bool);
    }

    let lookup = |text: &Option<String>| -> Option<u32> {
        let text = text.as_deref()?;
        added
            .iter()
            .find(|a| a.content == text)
            .map(|a| a.id)
            .or_else(|| base_ids.get(text).copied())
            .map(|id| id as u32)
    };
    let mut vocab = Vocab::new(kind);
    vocab.bos = lookup(&bos);
    vocab.eos = lookup(&eos);
    vocab.unk = lookup(&unk).or_else(|| lookup(&model_unk.map(str::to_string)));
    vocab.sep = lookup(&sep);
    vocab.pad = lookup(&pad);
    vocab.cls = lookup(&cls);
    vocab.mask = lookup(&mask);

    // config.json fills what the tokenizer files leave unset
    let config_json = dir.join("config.json");
    if config_json.is_file() {
        let cj = read_json(&config_json)?;
        let id_of = |key: &str| {
            cj.get(key)
                .and_then(Value::as_u64)
                .filter(|&i| i < n as u64)
                .map(|i| i as u32)
        };
        for (slot, key) in [
            (&mut vocab.bos, "bos_token_id"),
            (&mut vocab.eos, "eos_token_id"),
            (&mut vocab.unk, "unk_token_id"),
            (&mut vocab.sep, "sep_token_id"),
            (&mut vocab.pad, "pad_token_id"),
            (&mut vocab.cls, "cls_token_id"),
            (&mut vocab.mask, "mask_token_id"),
        ] {
            if slot.is_none() {
                *slot = id_of(key);
            }
        }
    }

    vocab.chat_template = match config.and_then(|c| c.get("chat_template")) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(list)) => list
            .iter()
            .find(|t| str_field(t, "name") == Some("default"))
            .or(list.first())
            .and_then(|t| str_field(t, "template"))
            .map(str::to_string),
        _ => None,
    };
    if vocab.chat_template.is_none() {
        let jinja = dir.join("chat_template.jinja");
        let json = dir.join("chat_template.json");
        if jinja.is_file() {
            let text = std::fs::read_to_string(&jinja).map_err(|e| FormatError::io(&jinja, e))?;
            vocab.chat_template = Some(text);
        } else if json.is_file() {
            vocab.chat_template =
                str_field(&read_json(&json)?, "chat_template").map(str::to_string);
        }
    }

    let config_prefix = config
        .and_then(|c| c.get("add_prefix_space"))
        .and_then(Value::as_bool);
    vocab.add_space_prefix = match sp_prefix {
        // tokenizer.json is what the tokenizers library follows
        Some(false) => Some(false),
        Some(true) => config_prefix.map(|_| true),
        None => config_prefix,
    };

    if kind == TokenizerKind::WordPiece {
        for (t, ty) in tokens.iter_mut().zip(&types) {
            *t = bert_to_phantom(t, *ty);
        }
    }
    vocab.pre = pre.to_string();
    vocab.tokens = tokens;
    vocab.token_types = types;
    vocab.scores = scores;
    vocab.merges = merges;
    vocab.add_bos = add_bos;
    vocab.add_eos = add_eos;
    Ok(vocab)
}
