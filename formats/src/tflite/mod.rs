//! TFLite (LiteRT) flatbuffers: the schema subset and its generated code,
//! the lowering of IR graphs to TFLite operators, the writer and the reader.
//!
//! Writing: [`writer::write_model`] lowers a graph model ([`lower`]) into a
//! [`model::TflModel`] (tensors, builtin operators with typed options,
//! optional quantization parameters), optionally stores its weights as
//! float16 (DEQUANTIZE ops), and serialises it. Reading:
//! [`reader::read_model`] turns a `.tflite` file back into an IR graph that
//! edgec's interpreter runs (NHWC convolutions become Transpose + Conv +
//! Transpose; DEQUANTIZE of constants is folded). Quantized files ([`quant`]:
//! dynamic-range and full-integer int8) read back as their integer
//! simulation: int8 activations pass through QuantizeLinear →
//! DequantizeLinear around float ops, int8 weights and int32 biases are
//! DequantizeLinear of integer constants.

pub mod lower;
pub mod model;
pub mod quant;
pub mod reader;
pub mod writer;

#[rustfmt::skip]
#[allow(
    clippy::all,
    clippy::pedantic,
    unused_imports,
    dead_code,
    deprecated,
    non_snake_case,
    non_camel_case_types,
    non_upper_case_globals,
    unsafe_op_in_unsafe_fn,
    mismatched_lifetime_syntaxes
)]
mod schema_generated;

/// The generated flatbuffers code (namespace `tflite`).
pub use schema_generated::tflite as schema;

pub use lower::LowerOptions;
pub use reader::read_model;
pub use writer::{write_model, WriteOptions};
