//! Passes over a model: quantization to ggml block types and k-quants,
//! with llama.cpp-style per-tensor presets, and activation-aware scaling.

pub mod awq;
pub mod ggml_quant;
pub mod presets;
