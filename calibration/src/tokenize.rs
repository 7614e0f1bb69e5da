//! Text → token ids with the model's own tokenizer, as llama.cpp tokenizes.
//!
//! The IR keeps the tokenizer in llama.cpp's form (a [`Vocab`]);
//! `edgec_formats::tokenizer::write_hf_tokenizer` turns it into a
//! `tokenizer.json` that the Hugging Face `tokenizers` library tokenizes as
//! llama.cpp tokenizes the same vocabulary in a GGUF. That file is what is
//! loaded here (with `fancy-regex`, not the C library Oniguruma, for the
//! pre-tokenizers' regexes).

use edgec_core::{TokenizerKind, Vocab};
use tokenizers::Tokenizer;

use crate::error::{CalibrationError, Result};

/// A text tokenizer built from a model's [`Vocab`].
#[derive(Clone)]
pub struct TextTokenizer {
    /// Special (control and unknown) tokens in the text are plain text, as
    /// llama.cpp tokenizes with `parse_special = false` (llama-perplexity).
    plain: Tokenizer,
    /// Special tokens in the text are recognised (`parse_special = true`).
    special: Tokenizer,
    bos: Option<u32>,
    add_bos: bool,
    n_tokens: usize,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("n_tokens", &self.n_tokens)
            .field("bos", &self.bos)
            .field("add_bos", &self.add_bos)
            .finish_non_exhaustive()
    }
}

fn tk_err(e: impl std::fmt::Display) -> CalibrationError {
    CalibrationError::Tokenizer(e.to_string())
}

impl TextTokenizer {
    /// Builds the tokenizer. Fails when the vocabulary has no Hugging Face
    /// form in edgec (an unknown pre-tokenizer, say).
    pub fn from_vocab(vocab: &Vocab) -> Result<Self> {
        let dir = tempfile::tempdir().map_err(|e| CalibrationError::io(std::env::temp_dir(), e))?;
        edgec_formats::tokenizer::write_hf_tokenizer(vocab, dir.path())?;
        let path = dir.path().join("tokenizer.json");
        let bytes = std::fs::read(&path).map_err(|e| CalibrationError::io(&path, e))?;
        let special = Tokenizer::from_bytes(&bytes).map_err(tk_err)?;
        let mut plain = special.clone();
        plain.set_encode_special_tokens(true);
        Ok(TextTokenizer {
            plain,
            special,
            bos: match vocab.kind {
                // llama.cpp's BERT "BOS" is [CLS]; the writer's template uses it too
                TokenizerKind::WordPiece => vocab.cls.or(vocab.bos),
                _ => vocab.bos,
            },
            add_bos: add_bos_of(vocab),
            n_tokens: vocab.tokens.len(),
        })
    }

    /// Token ids of `text`. With `add_special`, the tokens the model adds
    /// around a sequence (BOS when [`Self::add_bos`]; [CLS] … [SEP] for
    /// BERT), as llama.cpp's `llama_tokenize(.., add_special, parse_special =
    /// false)`: control tokens written in the text are text, not tokens.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        self.encode_with(&self.plain, text, add_special)
    }

    /// As [`Self::encode`], but control tokens written in the text (`<|im_end|>`)
    /// become their ids, as with llama.cpp's `parse_special = true`.
    pub fn encode_parse_special(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        self.encode_with(&self.special, text, add_special)
    }

    fn encode_with(&self, tk: &Tokenizer, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = tk.encode_fast(text, add_special).map_err(tk_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of token ids (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.plain.decode(ids, true).map_err(tk_err)
    }

    /// The BOS token (for BERT, [CLS]).
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// Whether the model adds BOS to a sequence (llama.cpp's
    /// `llama_vocab_get_add_bos`, with llama.cpp's defaults when the model
    /// does not say).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// The number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.n_tokens
    }
}

/// llama.cpp's `add_bos`: the vocabulary's own flag, else llama.cpp's default
/// for the tokenizer type (true for SentencePiece and WordPiece; for
/// byte-level BPE only for the Llama-3 pre-tokenizer among those edgec knows).
fn add_bos_of(vocab: &Vocab) -> bool {
    vocab.add_bos.unwrap_or(match vocab.kind {
        TokenizerKind::BytePairBpe => vocab.pre == "llama-bpe",
        TokenizerKind::SentencePiece | TokenizerKind::WordPiece => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgec_core::{TokenType, TokenizerKind};

    /// A byte-level BPE vocabulary: the 256 byte symbols, a few merges, and
    /// a control token.
    fn bpe_vocab() -> Vocab {
        let mut v = Vocab::new(TokenizerKind::BytePairBpe);
        v.pre = "smollm".into();
        v.tokens.push("<|endoftext|>".into());
        v.token_types.push(TokenType::Control);
        // GPT-2's byte → unicode map
        let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
            .chain(0xA1..=0xAC)
            .chain(0xAE..=0xFF)
            .collect();
        let mut cs = bs.clone();
        let mut n = 0;
        for b in 0..256u32 {
            if !bs.contains(&b) {
                bs.push(b);
                cs.push(256 + n);
                n += 1;
            }
        }
        let mut pairs: Vec<(u32, u32)> = bs.into_iter().zip(cs).collect();
        pairs.sort();
        for (_, c) in pairs {
            v.tokens.push(char::from_u32(c).unwrap().to_string());
            v.token_types.push(TokenType::Normal);
        }
        for (m, t) in [
            ("h e", "he"),
            ("he l", "hel"),
            ("hel l", "hell"),
            ("hell o", "hello"),
        ] {
            v.merges.push(m.into());
            v.tokens.push(t.into());
            v.token_types.push(TokenType::Normal);
        }
        v.bos = Some(0);
        v.eos = Some(0);
        v
    }

    #[test]
    fn encodes_with_merges_and_without_parsing_specials() {
        let v = bpe_vocab();
        let tk = TextTokenizer::from_vocab(&v).unwrap();
        let id = |t: &str| v.tokens.iter().position(|x| x == t).unwrap() as u32;
        assert_eq!(tk.encode("hello", false).unwrap(), vec![id("hello")]);
        assert_eq!(tk.encode("hello", true).unwrap(), vec![id("hello")]);
        assert!(!tk.add_bos());
        assert_eq!(tk.bos(), Some(0));
        // a control token in the text is text unless asked
        let plain = tk.encode("<|endoftext|>", false).unwrap();
        assert!(plain.len() > 1 && !plain.contains(&0), "{plain:?}");
        assert_eq!(
            tk.encode_parse_special("<|endoftext|>", false).unwrap(),
            vec![0]
        );
        assert_eq!(
            tk.decode(&tk.encode("hello there", false).unwrap())
                .unwrap(),
            "hello there"
        );
    }

    #[test]
    fn add_bos_adds_bos() {
        let mut v = bpe_vocab();
        v.add_bos = Some(true);
        let tk = TextTokenizer::from_vocab(&v).unwrap();
        assert!(tk.add_bos());
        let ids = tk.encode("hello", true).unwrap();
        assert_eq!(ids[0], 0);
        assert_eq!(ids.len(), 2);
        assert_eq!(tk.encode("hello", false).unwrap().len(), 1);
    }

    #[test]
    fn unknown_pre_tokenizer_is_an_error() {
        let mut v = bpe_vocab();
        v.pre = "no-such-pre".into();
        let e = TextTokenizer::from_vocab(&v).unwrap_err().to_string();
        assert!(e.contains("no-such-pre"), "{e}");
    }
}
