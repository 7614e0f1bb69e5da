//! [`Vocab`] → `tokenizer.json` + `tokenizer_config.json`.

use std::collections::HashMap;
use std::path::Path;

use edgec_core::{TokenType, TokenizerKind, Vocab};
use serde_json::{json, Map, Value};

use super::{bert_from_phantom, pretok, split_merge, SPIECE_SPACE};
use crate::error::{FormatError, Result};

fn check(vocab: &Vocab) -> std::result::Result<(), String> {
    let n = vocab.tokens.len();
    if n == 0 {
        return Err("the vocabulary is empty".into());
    }
    if !vocab.token_types.is_empty() && vocab.token_types.len() != n {
        return Err(format!(
            "{} token types for {n} tokens",
            vocab.token_types.len()
        ));
    }
    if !vocab.scores.is_empty() && vocab.scores.len() != n {
        return Err(format!("{} scores for {n} tokens", vocab.scores.len()));
    }
    for (name, id) in special_ids(vocab) {
        if let Some(id) = id {
            if id as usize >= n {
                return Err(format!("{name} token id {id} is out of range ({n} tokens)"));
            }
        }
    }
    Ok(())
}

fn special_ids(v: &Vocab) -> [(&'static str, Option<u32>); 7] {
    [
        ("bos", v.bos),
        ("eos", v.eos),
        ("unk", v.unk),
        ("sep", v.sep),
        ("pad", v.pad),
        ("cls", v.cls),
        ("mask", v.mask),
    ]
}

fn special(id: &str, type_id: u32) -> Value {
    json!({"SpecialToken": {"id": id, "type_id": type_id}})
}

fn sequence(id: &str, type_id: u32) -> Value {
    json!({"Sequence": {"id": id, "type_id": type_id}})
}

/// A TemplateProcessing that adds `first` before and `last` after a sequence
/// (and, for pairs, before and after the second one too, as Llama's and BERT's
/// templates do).
fn template(texts: &[String], first: Option<u32>, last: Option<u32>) -> Value {
    let mut single = vec![];
    let mut pair = vec![];
    let mut specials = Map::new();
    let text = |id: u32| texts[id as usize].as_str();
    for (type_id, seq) in [(0u32, "A"), (1, "B")] {
        if let Some(f) = first {
            // BERT's pair template has no second [CLS]
            if type_id == 0 || last.is_none() {
                pair.push(special(text(f), type_id));
            }
            if type_id == 0 {
                single.push(special(text(f), 0));
            }
        }
        pair.push(sequence(seq, type_id));
        if type_id == 0 {
            single.push(sequence(seq, 0));
        }
        if let Some(l) = last {
            pair.push(special(text(l), type_id));
            if type_id == 0 {
                single.push(special(text(l), 0));
            }
        }
    }
    for id in [first, last].into_iter().flatten() {
        specials.insert(
            text(id).to_string(),
            json!({"id": text(id), "ids": [id], "tokens": [text(id)]}),
        );
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
}

/// Merges for a SentencePiece vocabulary that has none, as Hugging Face's
/// converters derive them: every split of every normal piece into two normal
/// pieces, pieces by descending score.
fn merges_from_scores(
    texts: &[String],
    types: &[TokenType],
    scores: &[f32],
) -> Vec<(String, String)> {
    let mut ids: HashMap<&str, usize> = HashMap::new();
    for (i, t) in texts.iter().enumerate() {
        if types[i] == TokenType::Normal {
            ids.entry(t.as_str()).or_insert(i);
        }
    }
    let mut order: Vec<usize> = (0..texts.len())
        .filter(|&i| types[i] == TokenType::Normal)
        .collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut merges = vec![];
    for i in order {
        let piece = texts[i].as_str();
        let mut local: Vec<(usize, usize, &str, &str)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(k, _)| {
                let (l, r) = piece.split_at(k);
                Some((*ids.get(l)?, *ids.get(r)?, l, r))
            })
            .collect();
        local.sort();
        merges.extend(
            local
                .into_iter()
                .map(|(_, _, l, r)| (l.to_string(), r.to_string())),
        );
    }
    merges
}

fn write_atomic(path: &Path, value: &Value) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| FormatError::invalid(path, format!("cannot serialise JSON: {e}")))?;
    bytes.push(b'\n');
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, &bytes).map_err(|e| FormatError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| FormatError::io(path, e))
}

/// Writes tokenizer.json and tokenizer_config.json into `dir` so that the HF
/// `tokenizers` library tokenizes exactly as the Vocab (as llama.cpp would).
///
/// Defaults that llama.cpp applies when the GGUF leaves them unset are made
/// explicit in `tokenizer.json` (BOS added for `llama` and `bert` vocabularies
/// and for `llama-bpe`). Unused `[PAD{id}]` tokens stay in the model's
/// vocabulary, as in llama.cpp's (no merge or word makes them), and read back
/// as unused; a token text used twice keeps its first id (a Hugging Face vocabulary maps each text
/// to one id); BPE merges whose parts or result are not tokens are dropped
/// (Hugging Face refuses them; llama.cpp never produces their result).
pub fn write_hf_tokenizer(vocab: &Vocab, dir: &Path) -> Result<()> {
    let tj_path = dir.join("tokenizer.json");
    let err = |msg: String| FormatError::invalid(&tj_path, msg);
    check(vocab).map_err(err)?;
    let n = vocab.tokens.len();
    let types: Vec<TokenType> = (0..n)
        .map(|i| {
            vocab
                .token_types
                .get(i)
                .copied()
                .unwrap_or(TokenType::Normal)
        })
        .collect();
    let texts: Vec<String> = match vocab.kind {
        TokenizerKind::WordPiece => vocab
            .tokens
            .iter()
            .zip(&types)
            .map(|(t, ty)| bert_from_phantom(t, *ty))
            .collect(),
        _ => vocab.tokens.clone(),
    };

    // ---- added tokens: control, user-defined and unknown tokens
    let mut added = vec![];
    let mut added_decoder = Map::new();
    for (id, (text, ty)) in texts.iter().zip(&types).enumerate() {
        if !matches!(
            ty,
            TokenType::Control | TokenType::UserDefined | TokenType::Unknown
        ) {
            continue;
        }
        let special = *ty != TokenType::UserDefined;
        added.push(json!({
            "id": id, "content": text, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": special,
        }));
        added_decoder.insert(
            id.to_string(),
            json!({
                "content": text, "lstrip": false, "normalized": false,
                "rstrip": false, "single_word": false, "special": special,
            }),
        );
    }

    // ---- the model's vocabulary
    let mut vocab_map = Map::new();
    let mut in_vocab: HashMap<&str, usize> = HashMap::new();
    for (id, text) in texts.iter().enumerate() {
        if !in_vocab.contains_key(text.as_str()) {
            in_vocab.insert(text.as_str(), id);
            vocab_map.insert(text.clone(), json!(id));
        }
    }
    let merge_pairs = |merges: Vec<(String, String)>| -> Vec<Value> {
        merges
            .into_iter()
            .filter(|(a, b)| {
                in_vocab.contains_key(a.as_str())
                    && in_vocab.contains_key(b.as_str())
                    && in_vocab.contains_key(format!("{a}{b}").as_str())
            })
            .map(|(a, b)| json!([a, b]))
            .collect()
    };
    let split_all = |merges: &[String]| -> std::result::Result<Vec<(String, String)>, String> {
        merges
            .iter()
            .enumerate()
            .map(|(i, m)| {
                split_merge(m)
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| format!("merge {i} '{m}' is not \"left right\""))
            })
            .collect()
    };
    let text_of = |id: Option<u32>| id.map(|i| texts[i as usize].clone());

    let (model, normalizer, pre_tokenizer, post_processor, decoder, add_bos, add_eos);
    match vocab.kind {
        TokenizerKind::BytePairBpe => {
            let pt = pretok::hf_config(&vocab.pre)
                .ok_or_else(|| err(pretok::unsupported_name(&vocab.pre)))?;
            let merges = merge_pairs(split_all(&vocab.merges).map_err(err)?);
            model = json!({
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                "ignore_merges": pt.ignore_merges, "vocab": vocab_map, "merges": merges,
            });
            add_bos = vocab.add_bos.unwrap_or(vocab.pre == "llama-bpe");
            add_eos = vocab.add_eos.unwrap_or(false);
            let byte_level = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true});
            post_processor = if add_bos || add_eos {
                let tp = template(
                    &texts,
                    add_bos.then_some(vocab.bos).flatten(),
                    add_eos.then_some(vocab.eos).flatten(),
                );
                json!({"type": "Sequence", "processors": [byte_level, tp]})
            } else {
                byte_level
            };
            normalizer = pt.normalizer;
            pre_tokenizer = pt.pre_tokenizer;
            decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
        }
        TokenizerKind::SentencePiece => {
            let merges = if !vocab.merges.is_empty() {
                split_all(&vocab.merges).map_err(err)?
            } else if vocab.scores.len() == n {
                merges_from_scores(&texts, &types, &vocab.scores)
            } else {
                return Err(err(
                    "a SentencePiece vocabulary with neither merges nor scores".into(),
                ));
            };
            let merges = merge_pairs(merges);
            let prefix = vocab.add_space_prefix != Some(false);
            let space = SPIECE_SPACE.to_string();
            let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": space});
            normalizer = if prefix {
                json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": space}, replace]})
            } else {
                replace
            };
            pre_tokenizer = Value::Null;
            model = json!({
                "type": "BPE", "dropout": null, "unk_token": text_of(vocab.unk),
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
                "byte_fallback": true, "ignore_merges": false, "vocab": vocab_map, "merges": merges,
            });
            add_bos = vocab.add_bos.unwrap_or(true);
            add_eos = vocab.add_eos.unwrap_or(false);
            let (first, last) = (
                add_bos.then_some(vocab.bos).flatten(),
                add_eos.then_some(vocab.eos).flatten(),
            );
            post_processor = if first.is_some() || last.is_some() {
                template(&texts, first, last)
            } else {
                Value::Null
            };
            let mut decoders = vec![
                json!({"type": "Replace", "pattern": {"String": space}, "content": " "}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            if prefix {
                decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            decoder = json!({"type": "Sequence", "decoders": decoders});
        }
        TokenizerKind::WordPiece => {
            model = json!({
                "type": "WordPiece", "unk_token": text_of(vocab.unk).unwrap_or_else(|| "[UNK]".into()),
                "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": vocab_map,
            });
            normalizer = json!({
                "type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                "strip_accents": null, "lowercase": true,
            });
            pre_tokenizer = json!({"type": "BertPreTokenizer"});
            // llama.cpp always wraps a sequence in [CLS] ... [SEP]
            add_bos = vocab.add_bos.unwrap_or(true);
            add_eos = vocab.add_eos.unwrap_or(true);
            let first = vocab.cls.or(vocab.bos);
            let last = vocab.sep.or(vocab.eos);
            post_processor = match (first, last) {
                (Some(_), Some(_)) => template(&texts, first, last),
                _ => Value::Null,
            };
            decoder = json!({"type": "WordPiece", "prefix": "##", "cleanup": true});
        }
    }

    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": decoder,
        "model": model,
    });

    let mut config = Map::new();
    if let Some(v) = vocab.add_bos {
        config.insert("add_bos_token".into(), json!(v));
    } else if vocab.kind != TokenizerKind::WordPiece {
        config.insert("add_bos_token".into(), json!(add_bos));
    }
    if let Some(v) = vocab.add_eos {
        config.insert("add_eos_token".into(), json!(v));
    } else if vocab.kind != TokenizerKind::WordPiece {
        config.insert("add_eos_token".into(), json!(add_eos));
    }
    if let Some(v) = vocab.add_space_prefix {
        config.insert("add_prefix_space".into(), json!(v));
    }
    config.insert("added_tokens_decoder".into(), Value::Object(added_decoder));
    for (name, id) in special_ids(vocab) {
        if let Some(text) = text_of(id) {
            config.insert(format!("{name}_token"), json!(text));
        }
    }
    if let Some(t) = &vocab.chat_template {
        config.insert("chat_template".into(), json!(t));
    }
    config.insert("clean_up_tokenization_spaces".into(), json!(false));
    if vocab.kind == TokenizerKind::WordPiece {
        config.insert("do_lower_case".into(), json!(true));
    }
    config.insert(
        "model_max_length".into(),
        json!(1_000_000_000_000_000_000u64),
    );
    config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));

    std::fs::create_dir_all(dir).map_err(|e| FormatError::io(dir, e))?;
    write_atomic(&tj_path, &tokenizer_json)?;
    write_atomic(&dir.join("tokenizer_config.json"), &Value::Object(config))
}
