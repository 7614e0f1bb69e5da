use thiserror::Error;

/// Errors from the IR. Readers wrap these with the file they came from.
#[derive(Debug, Error)]
pub enum Error {
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("shape: {0}")]
    Shape(String),
    #[error("data: {0}")]
    Data(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
