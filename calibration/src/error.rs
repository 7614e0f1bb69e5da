//! The crate's error type. Every error about a file names the file.

use std::path::PathBuf;

use thiserror::Error;

/// An error of the calibration crate.
#[derive(Debug, Error)]
pub enum CalibrationError {
    // The io error is part of the message, not a `source`, so that `{:#}`
    // chains do not print it twice.
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path}: the file is empty")]
    Empty { path: PathBuf },
    #[error("{path}: the file holds only whitespace, no text")]
    Blank { path: PathBuf },
    #[error("{path}: a binary file, not text (NUL byte at byte {offset})")]
    Binary { path: PathBuf, offset: usize },
    #[error("{path}: not UTF-8 text at byte {offset}")]
    NotUtf8 { path: PathBuf, offset: usize },
    /// A line of a JSONL file; `line` counts from 1.
    #[error("{path}:{line}: {msg}")]
    Jsonl {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{path}: no sentences (every line is blank)")]
    NoSentences { path: PathBuf },
    /// The text tokenizes to fewer tokens than one chunk. The caller knows the
    /// file and adds its name.
    #[error("{tokens} tokens, fewer than one chunk of {n_ctx}")]
    TooFewTokens { tokens: usize, n_ctx: usize },
    /// Anything else wrong with a file's content.
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Format(#[from] edgec_formats::FormatError),
}

impl CalibrationError {
    pub(crate) fn io(path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        CalibrationError::Io {
            path: path.into(),
            err,
        }
    }
}

pub type Result<T, E = CalibrationError> = std::result::Result<T, E>;
