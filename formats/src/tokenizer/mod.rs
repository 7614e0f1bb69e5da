//! Tokenizer conversion between Hugging Face `tokenizer.json` and the IR's
//! [`edgec_core::Vocab`] (llama.cpp's form), and between the `Vocab` and GGUF's
//! `tokenizer.*` metadata.
//!
//! What is read follows llama.cpp's `convert_hf_to_gguf.py`:
//!
//! - byte-level BPE (GGUF model `gpt2`): tokens as the `tokenizers` library
//!   spells them (`Ġ` for a space), merges as `"left right"`, and
//!   `tokenizer.ggml.pre` recognised from the pre-tokenizer's configuration
//!   (convert hashes a tokenization made with the HF library instead; the
//!   shapes known here are in [`pretok`]);
//! - SentencePiece-style BPE in `tokenizer.json` (Llama-2, Mistral: byte
//!   fallback, `▁` for spaces; GGUF model `llama`): byte tokens `<0xXX>`, and
//!   scores from the merge ranks so that llama.cpp's SentencePiece algorithm (the
//!   best-scored adjacent pair first) merges as the BPE does. Convert's
//!   `_set_vocab_llama_hf` writes -1000 for every score, which makes llama.cpp
//!   merge left to right instead: we do not copy that;
//! - WordPiece (GGUF model `bert`): llama.cpp's "phantom space" form, where a
//!   continuation piece `##ing` becomes `ing`, a word-start piece `the` becomes
//!   `▁the` and control tokens stay as they are.
//!
//! Token types as convert assigns them: special added tokens (and added tokens
//! that look special, like `<|...|>`) are control, other added tokens
//! user-defined, ids that no token uses `[PAD{id}]` unused.
//!
//! The writer does the reverse, so that the `tokenizers` library tokenizes a
//! written `tokenizer.json` as llama.cpp tokenizes the GGUF.

mod gguf_meta;
mod hf_read;
mod hf_write;
pub mod pretok;

use edgec_core::{TokenType, Vocab};

pub use gguf_meta::{vocab_from_gguf, vocab_to_gguf};
pub use hf_read::vocab_from_hf;
pub use hf_write::write_hf_tokenizer;

/// SentencePiece's space, U+2581 `▁`.
pub(crate) const SPIECE_SPACE: char = '\u{2581}';

/// Pads the vocabulary to `n` tokens with unused `[PAD{id}]` tokens, as
/// convert does when `config.json`'s `vocab_size` exceeds the tokenizer's.
/// Does nothing when the vocabulary already has `n` tokens or more.
pub fn pad_vocab(vocab: &mut Vocab, n: usize) {
    let has_types = vocab.token_types.len() == vocab.tokens.len();
    let has_scores = !vocab.scores.is_empty() && vocab.scores.len() == vocab.tokens.len();
    for id in vocab.tokens.len()..n {
        vocab.tokens.push(format!("[PAD{id}]"));
        if has_types {
            vocab.token_types.push(TokenType::Unused);
        }
        if has_scores {
            vocab.scores.push(-1000.0);
        }
    }
}

/// Convert's `does_token_look_special`: added tokens that some models fail to
/// mark special but that must be control tokens.
pub(crate) fn looks_special(token: &str) -> bool {
    matches!(token, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (token.starts_with("<|") && token.ends_with("|>"))
        || (token.starts_with("<｜") && token.ends_with("｜>"))
        || (token.starts_with("<unused") && token.ends_with('>'))
}

/// llama.cpp's WordPiece form of a BERT token (convert's `phantom`).
pub(crate) fn bert_to_phantom(token: &str, ty: TokenType) -> String {
    if ty == TokenType::Control {
        token.to_string()
    } else if let Some(rest) = token.strip_prefix("##") {
        rest.to_string()
    } else {
        format!("{SPIECE_SPACE}{token}")
    }
}

/// The inverse of [`bert_to_phantom`].
pub(crate) fn bert_from_phantom(token: &str, ty: TokenType) -> String {
    if ty == TokenType::Control {
        token.to_string()
    } else if let Some(rest) = token.strip_prefix(SPIECE_SPACE) {
        rest.to_string()
    } else {
        format!("##{token}")
    }
}

/// Splits a GGUF merge `"left right"` as llama.cpp does: at the first space
/// after the first byte (so a left part can never be empty).
pub(crate) fn split_merge(merge: &str) -> Option<(&str, &str)> {
    let first = merge.chars().next()?.len_utf8();
    let pos = merge[first..].find(' ')? + first;
    Some((&merge[..pos], &merge[pos + 1..]))
}

/// True for SentencePiece byte-fallback tokens `<0xXX>`.
pub(crate) fn is_byte_token(token: &str) -> bool {
    let b = token.as_bytes();
    b.len() == 6
        && b.starts_with(b"<0x")
        && b[5] == b'>'
        && b[3].is_ascii_hexdigit()
        && b[4].is_ascii_hexdigit()
}

#[cfg(test)]
mod tests;
