//! Passes over a model: quantization to ggml block types and k-quants,
//! with llama.cpp-style per-tensor presets, activation-aware scaling (AWQ)
//! and error feedback while rounding (GPTQ).

pub mod awq;
pub mod channel_groups;
pub mod ggml_quant;
pub mod gptq;
pub mod graph_quant;
pub mod groupwise;
pub mod mixed;
pub mod presets;
pub mod prune;
pub mod qdq;
pub mod structured;
