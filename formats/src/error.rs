use std::path::{Path, PathBuf};

use thiserror::Error;

/// A reader or writer error, always naming the file it concerns.
#[derive(Debug, Error)]
pub enum FormatError {
    // The io error is part of the message, not a `source`, so that
    // `{:#}` chains do not print it twice.
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
}

impl FormatError {
    pub fn invalid(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        FormatError::Invalid {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }

    pub fn io(path: impl AsRef<Path>, err: std::io::Error) -> Self {
        FormatError::Io {
            path: path.as_ref().to_path_buf(),
            err,
        }
    }
}

pub type Result<T, E = FormatError> = std::result::Result<T, E>;
