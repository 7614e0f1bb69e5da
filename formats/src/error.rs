use std::path::{Path, PathBuf};

use thiserror::Error;

/// A reader or writer error, always naming the file it concerns.
#[derive(Debug, Error)]
pub enum FormatError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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

    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        FormatError::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}

pub type Result<T, E = FormatError> = std::result::Result<T, E>;
