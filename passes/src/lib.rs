//! Passes over a model: quantization to ggml block types and k-quants,
//! with llama.cpp-style per-tensor presets.

pub mod ggml_quant;
pub mod presets;
