//! ONNX: the protobuf schema subset, the reader (import into the IR graph)
//! and the writer.

mod import_ops;
mod import_simplify;
mod import_tensor;
pub mod proto;
pub mod reader;
pub mod writer;

pub use reader::read_model;
