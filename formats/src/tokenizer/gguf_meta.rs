//! [`Vocab`] ↔ GGUF `tokenizer.*` metadata.

use std::path::Path;

use edgec_core::{TokenType, TokenizerKind, Vocab};

use crate::error::{FormatError, Result};
use crate::gguf::value::{type_id, GgufValue, Metadata};

pub const MODEL: &str = "tokenizer.ggml.model";
pub const PRE: &str = "tokenizer.ggml.pre";
pub const TOKENS: &str = "tokenizer.ggml.tokens";
pub const SCORES: &str = "tokenizer.ggml.scores";
pub const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
pub const MERGES: &str = "tokenizer.ggml.merges";
pub const BOS_ID: &str = "tokenizer.ggml.bos_token_id";
pub const EOS_ID: &str = "tokenizer.ggml.eos_token_id";
pub const UNK_ID: &str = "tokenizer.ggml.unknown_token_id";
/// Spelled so in llama.cpp.
pub const SEP_ID: &str = "tokenizer.ggml.seperator_token_id";
pub const PAD_ID: &str = "tokenizer.ggml.padding_token_id";
pub const CLS_ID: &str = "tokenizer.ggml.cls_token_id";
pub const MASK_ID: &str = "tokenizer.ggml.mask_token_id";
pub const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
pub const ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
pub const ADD_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
pub const CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// GGUF keys `tokenizer.ggml.*` and `tokenizer.chat_template`, appended to
/// `meta` in llama.cpp's key order (convert_hf_to_gguf.py's: `add_space_prefix`
/// from tokenizer_config.json first, then model, pre, tokens, scores, token
/// types, merges, special token ids, add_bos/add_eos, chat template). A key
/// already in `meta` is replaced in place.
///
/// For BERT, llama.cpp also wants `tokenizer.ggml.token_type_count` (the
/// model's `type_vocab_size`), which the Vocab does not hold: the writer of the
/// model's metadata sets it.
pub fn vocab_to_gguf(vocab: &Vocab, meta: &mut Metadata) {
    if let Some(v) = vocab.add_space_prefix {
        meta.set(ADD_PREFIX, GgufValue::Bool(v));
    }
    meta.set(MODEL, GgufValue::String(vocab.kind.gguf_model().into()));
    meta.set(PRE, GgufValue::String(vocab.pre.clone()));
    meta.set(
        TOKENS,
        GgufValue::string_array(vocab.tokens.iter().cloned()),
    );
    if !vocab.scores.is_empty() {
        meta.set(
            SCORES,
            GgufValue::Array(
                type_id::F32,
                vocab.scores.iter().map(|&s| GgufValue::F32(s)).collect(),
            ),
        );
    }
    let types = (0..vocab.tokens.len())
        .map(|i| {
            GgufValue::I32(
                vocab
                    .token_types
                    .get(i)
                    .copied()
                    .unwrap_or(TokenType::Normal) as i32,
            )
        })
        .collect();
    meta.set(TOKEN_TYPE, GgufValue::Array(type_id::I32, types));
    // llama.cpp refuses a gpt2 vocabulary without merges, even an empty list
    if !vocab.merges.is_empty() || vocab.kind == TokenizerKind::BytePairBpe {
        meta.set(
            MERGES,
            GgufValue::string_array(vocab.merges.iter().cloned()),
        );
    }
    for (key, id) in [
        (BOS_ID, vocab.bos),
        (EOS_ID, vocab.eos),
        (UNK_ID, vocab.unk),
        (SEP_ID, vocab.sep),
        (PAD_ID, vocab.pad),
        (CLS_ID, vocab.cls),
        (MASK_ID, vocab.mask),
    ] {
        if let Some(id) = id {
            meta.set(key, GgufValue::U32(id));
        }
    }
    if let Some(v) = vocab.add_bos {
        meta.set(ADD_BOS, GgufValue::Bool(v));
    }
    if let Some(v) = vocab.add_eos {
        meta.set(ADD_EOS, GgufValue::Bool(v));
    }
    if let Some(t) = &vocab.chat_template {
        meta.set(CHAT_TEMPLATE, GgufValue::String(t.clone()));
    }
}

/// The inverse: None when the file has no tokenizer.ggml.model.
pub fn vocab_from_gguf(meta: &Metadata, path: &Path) -> Result<Option<Vocab>> {
    let err = |msg: String| FormatError::invalid(path, msg);
    let Some(model) = meta.get(MODEL) else {
        return Ok(None);
    };
    let model = model
        .as_str()
        .ok_or_else(|| err(format!("{MODEL} is not a string")))?;
    let kind = match model {
        "gpt2" => TokenizerKind::BytePairBpe,
        "llama" => TokenizerKind::SentencePiece,
        "bert" => TokenizerKind::WordPiece,
        other => {
            return Err(err(format!(
                "tokenizer model '{other}' is not supported (edgec reads gpt2, llama and bert vocabularies)"
            )))
        }
    };
    let mut vocab = Vocab::new(kind);
    if let Some(pre) = meta.get(PRE) {
        vocab.pre = pre
            .as_str()
            .ok_or_else(|| err(format!("{PRE} is not a string")))?
            .to_string();
    }

    let array = |key: &str| -> Result<Option<&[GgufValue]>> {
        match meta.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_array()
                .map(Some)
                .ok_or_else(|| err(format!("{key} is not an array"))),
        }
    };
    let strings = |key: &str, items: &[GgufValue]| -> Result<Vec<String>> {
        items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| err(format!("{key}[{i}] is not a string")))
            })
            .collect()
    };

    let tokens = array(TOKENS)?
        .ok_or_else(|| err(format!("{MODEL} is '{model}' but {TOKENS} is missing")))?;
    vocab.tokens = strings(TOKENS, tokens)?;
    let n = vocab.tokens.len();
    if n == 0 {
        return Err(err(format!("{TOKENS} is empty")));
    }

    if let Some(scores) = array(SCORES)? {
        if scores.len() != n {
            return Err(err(format!(
                "{SCORES} has {} entries for {n} tokens",
                scores.len()
            )));
        }
        vocab.scores = scores
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                GgufValue::F32(s) => Ok(*s),
                GgufValue::I32(s) => Ok(*s as f32),
                _ => Err(err(format!("{SCORES}[{i}] is not a float32"))),
            })
            .collect::<Result<_>>()?;
    }

    vocab.token_types = match array(TOKEN_TYPE)? {
        None => vec![TokenType::Normal; n],
        Some(types) => {
            if types.len() != n {
                return Err(err(format!(
                    "{TOKEN_TYPE} has {} entries for {n} tokens",
                    types.len()
                )));
            }
            types
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    GgufValue::I32(t) => TokenType::from_i32(*t)
                        .ok_or_else(|| err(format!("{TOKEN_TYPE}[{i}] = {t} is no token type"))),
                    _ => Err(err(format!("{TOKEN_TYPE}[{i}] is not an int32"))),
                })
                .collect::<Result<_>>()?
        }
    };

    if let Some(merges) = array(MERGES)? {
        vocab.merges = strings(MERGES, merges)?;
    } else if kind == TokenizerKind::BytePairBpe {
        return Err(err(format!("a gpt2 vocabulary without {MERGES}")));
    }

    let id = |key: &str| -> Result<Option<u32>> {
        match meta.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(id) if (id as usize) < n => Ok(Some(id as u32)),
                _ => Err(err(format!("{key} = {v:?} is not a token id below {n}"))),
            },
        }
    };
    vocab.bos = id(BOS_ID)?;
    vocab.eos = id(EOS_ID)?;
    vocab.unk = id(UNK_ID)?;
    vocab.sep = id(SEP_ID)?;
    vocab.pad = id(PAD_ID)?;
    vocab.cls = id(CLS_ID)?;
    vocab.mask = id(MASK_ID)?;

    let flag = |key: &str| -> Result<Option<bool>> {
        match meta.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| err(format!("{key} is not a bool"))),
        }
    };
    vocab.add_bos = flag(ADD_BOS)?;
    vocab.add_eos = flag(ADD_EOS)?;
    vocab.add_space_prefix = flag(ADD_PREFIX)?;
    vocab.chat_template = match meta.get(CHAT_TEMPLATE) {
        None => None,
        Some(v) => Some(
            v.as_str()
                .ok_or_else(|| err(format!("{CHAT_TEMPLATE} is not a string")))?
                .to_string(),
        ),
    };
    Ok(Some(vocab))
}
