//! A tokenizer in the form llama.cpp keeps it (GGUF `tokenizer.ggml.*`),
//! which is also a neutral form every format can convert to and from.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerKind {
    /// Byte-level BPE (GPT-2 style): GGUF model `gpt2`.
    BytePairBpe,
    /// SentencePiece-style BPE with ▁ for spaces and byte fallback: GGUF model `llama`.
    SentencePiece,
    /// BERT WordPiece: GGUF model `bert`.
    WordPiece,
}

impl TokenizerKind {
    pub fn gguf_model(self) -> &'static str {
        match self {
            TokenizerKind::BytePairBpe => "gpt2",
            TokenizerKind::SentencePiece => "llama",
            TokenizerKind::WordPiece => "bert",
        }
    }
}

/// llama.cpp's token types (`llama_token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum TokenType {
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

impl TokenType {
    pub fn from_i32(v: i32) -> Option<Self> {
        Some(match v {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Vocab {
    pub kind: TokenizerKind,
    /// llama.cpp's pre-tokenizer name (`tokenizer.ggml.pre`), e.g. `smollm`, `default`.
    pub pre: String,
    pub tokens: Vec<String>,
    /// SentencePiece scores; empty when the tokenizer has none.
    pub scores: Vec<f32>,
    pub token_types: Vec<TokenType>,
    /// BPE merges as "left right".
    pub merges: Vec<String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub sep: Option<u32>,
    pub cls: Option<u32>,
    pub mask: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
    pub chat_template: Option<String>,
}

impl Vocab {
    pub fn new(kind: TokenizerKind) -> Self {
        Vocab {
            kind,
            pre: "default".into(),
            tokens: vec![],
            scores: vec![],
            token_types: vec![],
            merges: vec![],
            bos: None,
            eos: None,
            unk: None,
            pad: None,
            sep: None,
            cls: None,
            mask: None,
            add_bos: None,
            add_eos: None,
            add_space_prefix: None,
            chat_template: None,
        }
    }
}
