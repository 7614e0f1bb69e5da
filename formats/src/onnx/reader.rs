//! ONNX reader: decodes a model and imports it into the IR graph.

use std::path::Path;

use edgec_core::Model;

use crate::{FormatError, Result};

/// Reads an ONNX model (and its external data) into a graph model.
pub fn read_model(path: &Path) -> Result<Model> {
    Err(FormatError::invalid(path, "ONNX import is not built yet"))
}
