//! A generic dataflow graph, for models that are not one of the known
//! families: what an ONNX file imports into, what the ONNX and TFLite
//! writers emit, and what the runtime's graph interpreter runs.
//!
//! Ops follow ONNX semantics (numpy broadcasting, NCHW, the same input
//! order, an empty input name for an absent optional input), so import and
//! export are close to one-to-one. Constant inputs (weights, shapes) are
//! tensors of the [`Model`](crate::Model) under the value's name; every
//! other value is produced by exactly one node or is a graph input. Nodes
//! are in topological order.

use crate::DType;

/// A dimension of a graph input or output: fixed, or named (e.g. a dynamic
/// batch `N`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dim {
    Fixed(usize),
    Named(String),
}

impl Dim {
    /// The size of a fixed dimension.
    pub fn fixed(&self) -> Option<usize> {
        match self {
            Dim::Fixed(n) => Some(*n),
            Dim::Named(_) => None,
        }
    }
}

/// A typed graph input or output.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<Dim>,
}

impl ValueInfo {
    /// Each dimension's size where it is fixed.
    pub fn fixed_dims(&self) -> Vec<Option<usize>> {
        self.shape.iter().map(Dim::fixed).collect()
    }
}

/// Padding modes of [`Op::Pad`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PadMode {
    Constant,
    Reflect,
    Edge,
}

/// Window attributes of Conv and the pooling ops, normalised at import:
/// every field has one entry per spatial dimension (`pads` two: all begins,
/// then all ends, ONNX's order), `auto_pad` resolved into `pads`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub pads: Vec<usize>,
    pub dilations: Vec<usize>,
}

/// An operation. Inputs and outputs are in ONNX's order for the op of the
/// same name; attributes are typed fields.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    // Elementwise, one input.
    Identity,
    Relu,
    Sigmoid,
    Tanh,
    Erf,
    Exp,
    Log,
    Sqrt,
    Reciprocal,
    Neg,
    Abs,
    IsNaN,
    Not,
    /// Inputs: x, then optional min and max (constant scalars after import).
    Clip,
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    HardSwish,
    /// `approximate = "tanh"` when `tanh`.
    Gelu {
        tanh: bool,
    },
    // Elementwise, two or three inputs, numpy broadcasting.
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Equal,
    Greater,
    Less,
    GreaterOrEqual,
    LessOrEqual,
    And,
    Or,
    /// Variadic, broadcasting.
    Max,
    Min,
    /// Inputs: condition, x, y.
    Where,
    // Linear algebra.
    MatMul,
    /// Inputs: a, b, optional c.
    Gemm {
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    },
    /// Inputs: x `[N, C, H, W]`, w `[M, C/group, kH, kW]`, optional bias `[M]`.
    Conv {
        window: Window,
        group: usize,
    },
    // Normalisation.
    /// Inputs: x, scale, bias, mean, var (only where it could not be folded
    /// into a preceding Conv).
    BatchNorm {
        epsilon: f32,
    },
    /// Inputs: x, scale, optional bias; normalises over `axis..`.
    LayerNorm {
        axis: i64,
        epsilon: f32,
    },
    Softmax {
        axis: i64,
    },
    // Pooling and reductions.
    GlobalAveragePool,
    AveragePool {
        window: Window,
        count_include_pad: bool,
    },
    MaxPool {
        window: Window,
    },
    /// Axes as attribute or (opset ≥ 18) constant input, resolved at import;
    /// empty axes reduce everything unless `noop_with_empty_axes`.
    ReduceMean {
        axes: Vec<i64>,
        keep_dims: bool,
    },
    ReduceSum {
        axes: Vec<i64>,
        keep_dims: bool,
    },
    // Shape and data movement.
    /// Inputs: data, shape (i64). ONNX's 0 = copy and -1 = infer.
    Reshape {
        allow_zero: bool,
    },
    Flatten {
        axis: i64,
    },
    Transpose {
        perm: Vec<usize>,
    },
    Concat {
        axis: i64,
    },
    /// Axes resolved at import (attribute before opset 13, input after).
    Unsqueeze {
        axes: Vec<i64>,
    },
    Squeeze {
        axes: Vec<i64>,
    },
    /// The input's shape as an i64 vector, dims `start..end`.
    Shape {
        start: i64,
        end: Option<i64>,
    },
    Gather {
        axis: i64,
    },
    GatherND {
        batch_dims: usize,
    },
    /// Inputs: data, starts, ends, optional axes, optional steps (i64).
    Slice,
    /// Inputs: data, shape (i64).
    Expand,
    Cast {
        to: DType,
    },
    /// Inputs: data, pads (i64, begins then ends), optional constant value.
    Pad {
        mode: PadMode,
    },
    /// Inputs: shape (i64). Fills with `value` of `dtype`.
    ConstantOfShape {
        dtype: DType,
        value: f64,
    },
    /// Inputs: start, limit, delta.
    Range,
    // Quantization.
    /// Inputs: x, y_scale, optional y_zero_point (whose dtype is the output's).
    /// Per tensor, per `axis`, or per block of `block_size` along `axis`.
    QuantizeLinear {
        axis: i64,
        block_size: usize,
        /// The output dtype when there is no zero point (U8 by default).
        out: DType,
    },
    /// Inputs: x, x_scale, optional x_zero_point.
    DequantizeLinear {
        axis: i64,
        block_size: usize,
    },
    /// Inputs: x. Outputs: y (u8), y_scale, y_zero_point.
    DynamicQuantizeLinear,
    /// Inputs: a, b, optional a_zero_point, b_zero_point. Output i32.
    MatMulInteger,
    /// com.microsoft MatMulNBits: inputs a, packed b `[N, blocks, block/2]`,
    /// scales, optional zero points.
    MatMulNBits {
        k: usize,
        n: usize,
        bits: usize,
        block_size: usize,
    },
}

impl Op {
    /// The ONNX op type (and domain, empty for the default one).
    pub fn onnx_name(&self) -> (&'static str, &'static str) {
        let name = match self {
            Op::Identity => "Identity",
            Op::Relu => "Relu",
            Op::Sigmoid => "Sigmoid",
            Op::Tanh => "Tanh",
            Op::Erf => "Erf",
            Op::Exp => "Exp",
            Op::Log => "Log",
            Op::Sqrt => "Sqrt",
            Op::Reciprocal => "Reciprocal",
            Op::Neg => "Neg",
            Op::Abs => "Abs",
            Op::IsNaN => "IsNaN",
            Op::Not => "Not",
            Op::Clip => "Clip",
            Op::HardSigmoid { .. } => "HardSigmoid",
            Op::HardSwish => "HardSwish",
            Op::Gelu { .. } => "Gelu",
            Op::Add => "Add",
            Op::Sub => "Sub",
            Op::Mul => "Mul",
            Op::Div => "Div",
            Op::Pow => "Pow",
            Op::Equal => "Equal",
            Op::Greater => "Greater",
            Op::Less => "Less",
            Op::GreaterOrEqual => "GreaterOrEqual",
            Op::LessOrEqual => "LessOrEqual",
            Op::And => "And",
            Op::Or => "Or",
            Op::Max => "Max",
            Op::Min => "Min",
            Op::Where => "Where",
            Op::MatMul => "MatMul",
            Op::Gemm { .. } => "Gemm",
            Op::Conv { .. } => "Conv",
            Op::BatchNorm { .. } => "BatchNormalization",
            Op::LayerNorm { .. } => "LayerNormalization",
            Op::Softmax { .. } => "Softmax",
            Op::GlobalAveragePool => "GlobalAveragePool",
            Op::AveragePool { .. } => "AveragePool",
            Op::MaxPool { .. } => "MaxPool",
            Op::ReduceMean { .. } => "ReduceMean",
            Op::ReduceSum { .. } => "ReduceSum",
            Op::Reshape { .. } => "Reshape",
            Op::Flatten { .. } => "Flatten",
            Op::Transpose { .. } => "Transpose",
            Op::Concat { .. } => "Concat",
            Op::Unsqueeze { .. } => "Unsqueeze",
            Op::Squeeze { .. } => "Squeeze",
            Op::Shape { .. } => "Shape",
            Op::Gather { .. } => "Gather",
            Op::GatherND { .. } => "GatherND",
            Op::Slice => "Slice",
            Op::Expand => "Expand",
            Op::Cast { .. } => "Cast",
            Op::Pad { .. } => "Pad",
            Op::ConstantOfShape { .. } => "ConstantOfShape",
            Op::Range => "Range",
            Op::QuantizeLinear { .. } => "QuantizeLinear",
            Op::DequantizeLinear { .. } => "DequantizeLinear",
            Op::DynamicQuantizeLinear => "DynamicQuantizeLinear",
            Op::MatMulInteger => "MatMulInteger",
            Op::MatMulNBits { .. } => return ("MatMulNBits", "com.microsoft"),
        };
        (name, "")
    }
}

/// One operation applied to named values.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub op: Op,
    /// Value names; `""` for an absent optional input.
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

/// A graph: its inputs and outputs, and its nodes in topological order.
/// Constant values are the model's tensors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Graph {
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
    pub nodes: Vec<Node>,
}

impl Graph {
    /// The node producing `value`, if any.
    pub fn producer(&self, value: &str) -> Option<&Node> {
        self.nodes
            .iter()
            .find(|n| n.outputs.iter().any(|o| o == value))
    }

    /// The nodes reading `value`.
    pub fn consumers<'a>(&'a self, value: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.nodes
            .iter()
            .filter(move |n| n.inputs.iter().any(|i| i == value))
    }
}
