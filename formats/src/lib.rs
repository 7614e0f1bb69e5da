//! Readers and writers. Each format maps its names and layouts to the IR's
//! (Hugging Face names, row-major shapes) at its border.

pub mod error;
pub mod gguf;
pub mod hf;
pub mod imatrix;
pub mod onnx;
pub mod output;
pub mod safetensors;
pub mod tflite;
pub mod tokenizer;

pub use error::{FormatError, Result};

use std::path::Path;

use edgec_core::Model;

/// The formats a path can hold, judged by its extension (folders are HF models).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Gguf,
    HfFolder,
    Safetensors,
    Onnx,
    Tflite,
}

impl Format {
    pub fn of(path: &Path) -> Option<Format> {
        if path.is_dir() {
            return Some(Format::HfFolder);
        }
        let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
        if name.ends_with(".gguf") {
            Some(Format::Gguf)
        } else if name.ends_with(".onnx") {
            Some(Format::Onnx)
        } else if name.ends_with(".tflite") {
            Some(Format::Tflite)
        } else if name.ends_with(".safetensors") || name.ends_with(".safetensors.index.json") {
            Some(Format::Safetensors)
        } else if path.extension().is_none() {
            Some(Format::HfFolder)
        } else {
            None
        }
    }
}

/// Reads a model from any supported input: a GGUF file, an HF folder, a
/// `.safetensors` file (with its folder's config.json when present), an
/// ONNX or a TFLite file.
pub fn read_model(path: &Path) -> Result<Model> {
    match Format::of(path) {
        Some(Format::Gguf) => gguf::read_model(path),
        Some(Format::HfFolder) | Some(Format::Safetensors) => hf::read(path),
        Some(Format::Onnx) => onnx::read_model(path),
        Some(Format::Tflite) => tflite::read_model(path),
        None => Err(FormatError::invalid(
            path,
            "unknown input format (expected .gguf, .safetensors, .onnx, .tflite or a Hugging Face model folder)",
        )),
    }
}
