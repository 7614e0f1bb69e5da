//! Encoders for ggml block types.
