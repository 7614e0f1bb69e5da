//! edgec's intermediate representation: tensors (dense or ggml-quantized),
//! model metadata, tokenizers, and the dataflow graph of models outside the
//! known families. Every reader produces a [`Model`] and every
//! writer consumes one.

pub mod error;
pub mod ggml;
pub mod graph;
pub mod linalg;
pub mod lowering;
pub mod model;
pub mod runtime;
pub mod tensor;
pub mod vocab;

pub use error::{Error, Result};
pub use ggml::GgmlType;
pub use graph::{Dim, Graph, Node, Op, PadMode, ValueInfo, Window};
pub use model::{BertParams, BlockShape, Family, LlamaParams, LlamaVariant, Model, ModelMeta};
pub use tensor::{DType, Tensor, TensorData};
pub use vocab::{TokenType, TokenizerKind, Vocab};
