//! Readers and writers. Each format maps its names and layouts to the IR's
//! (Hugging Face names, row-major shapes) at its border.

pub mod error;
pub mod gguf;
pub mod hf;
pub mod output;
pub mod safetensors;
pub mod tokenizer;

pub use error::{FormatError, Result};
