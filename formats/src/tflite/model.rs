//! The TFLite model in memory, between the IR and the flatbuffer: tensors
//! (shape, element type, constant bytes, optional quantization) and builtin
//! operators with typed options, in execution order. The lowering fills it
//! from an IR graph, passes rewrite it (f16 weights now; int8 modes later),
//! and the writer serialises it as it is.

use edgec_core::TensorData;

pub use super::schema::{ActivationFunctionType as Act, BuiltinOperator, Padding, TensorType};

/// Per-tensor or per-axis affine quantization (`real = scale * (q - zero_point)`).
#[derive(Debug, Clone, PartialEq)]
pub struct Quantization {
    pub scale: Vec<f32>,
    pub zero_point: Vec<i64>,
    /// The axis the per-channel parameters run along (0 when per tensor).
    pub quantized_dimension: i32,
}

/// Sparse storage of a constant (TFLite's `SparsityParameters`, in the
/// one form edgec writes): the dimensions in their own order, every one
/// DENSE but the last, which is SPARSE_CSR. `data` then holds only the
/// non-zero values, row after row.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseCsr {
    /// Row `r` (the flattened leading dimensions) holds the values
    /// `segments[r]..segments[r + 1]`; `rows + 1` entries.
    pub segments: Vec<u32>,
    /// The last-dimension index of each stored value.
    pub indices: Vec<u32>,
}

impl SparseCsr {
    /// The CSR form of row-major `values` (`elem` bytes each) with rows of
    /// `cols`, and the stored bytes; `is_zero` tells an element's bytes.
    pub fn of(
        values: &[u8],
        cols: usize,
        elem: usize,
        is_zero: impl Fn(&[u8]) -> bool,
    ) -> (SparseCsr, Vec<u8>) {
        let mut segments = vec![0u32];
        let mut indices = Vec::new();
        let mut kept = Vec::new();
        for row in values.chunks(cols.max(1) * elem) {
            for (j, v) in row.chunks_exact(elem).enumerate() {
                if !is_zero(v) {
                    indices.push(j as u32);
                    kept.extend_from_slice(v);
                }
            }
            segments.push(indices.len() as u32);
        }
        (SparseCsr { segments, indices }, kept)
    }
}

/// At least this fraction of a float conv weight must be zeros for the
/// weight to be stored sparse ([`TflModel::sparse_weights`]): XNNPACK runs
/// a model sparse when more than 2/3 of its 1×1 conv weights are zeros.
pub const SPARSE_MIN_ZEROS: f64 = 2.0 / 3.0;

/// A tensor: an activation (no data) or a constant.
#[derive(Debug, Clone)]
pub struct TflTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: TensorType,
    /// Little-endian row-major bytes of a constant (only the non-zero
    /// values when `sparsity` is set).
    pub data: Option<TensorData>,
    pub quant: Option<Quantization>,
    /// Sparse storage of a constant, read through a DENSIFY op.
    pub sparsity: Option<SparseCsr>,
}

impl TflTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Builtin options of an operator (the `BuiltinOptions` union).
#[derive(Debug, Clone, PartialEq)]
pub enum Options {
    None,
    Conv2D {
        padding: Padding,
        /// `[h, w]`.
        stride: [i32; 2],
        dilation: [i32; 2],
        act: Act,
    },
    DepthwiseConv2D {
        padding: Padding,
        stride: [i32; 2],
        dilation: [i32; 2],
        depth_multiplier: i32,
        act: Act,
    },
    Pool2D {
        padding: Padding,
        stride: [i32; 2],
        /// `[h, w]`.
        filter: [i32; 2],
        act: Act,
    },
    FullyConnected {
        act: Act,
        keep_num_dims: bool,
        /// Hybrid (dynamic-range) kernels quantize the float input
        /// asymmetrically at run time (TF sets it for dynamic range).
        asymmetric_quantize_inputs: bool,
    },
    Softmax {
        beta: f32,
    },
    Concatenation {
        axis: i32,
        act: Act,
    },
    Add {
        act: Act,
    },
    Sub {
        act: Act,
    },
    Mul {
        act: Act,
    },
    Div {
        act: Act,
    },
    Reshape {
        new_shape: Vec<i32>,
    },
    Gather {
        axis: i32,
        batch_dims: i32,
    },
    Reducer {
        keep_dims: bool,
    },
    StridedSlice {
        begin_mask: i32,
        end_mask: i32,
        shrink_axis_mask: i32,
    },
    Cast {
        from: TensorType,
        to: TensorType,
    },
    BatchMatMul {
        adj_x: bool,
        adj_y: bool,
    },
    Gelu {
        approximate: bool,
    },
    /// An options table with no fields, written as TF does (PAD, TRANSPOSE,
    /// DEQUANTIZE, QUANTIZE, HARD_SWISH, SELECT_V2, comparisons ...).
    Empty,
}

impl Options {
    /// The fused activation, for the options that have one.
    pub fn act(&self) -> Act {
        match self {
            Options::Conv2D { act, .. }
            | Options::DepthwiseConv2D { act, .. }
            | Options::Pool2D { act, .. }
            | Options::FullyConnected { act, .. }
            | Options::Concatenation { act, .. }
            | Options::Add { act }
            | Options::Sub { act }
            | Options::Mul { act }
            | Options::Div { act } => *act,
            _ => Act::NONE,
        }
    }

    /// Sets the fused activation; false when the options have none.
    pub fn set_act(&mut self, new: Act) -> bool {
        match self {
            Options::Conv2D { act, .. }
            | Options::DepthwiseConv2D { act, .. }
            | Options::Pool2D { act, .. }
            | Options::FullyConnected { act, .. }
            | Options::Concatenation { act, .. }
            | Options::Add { act }
            | Options::Sub { act }
            | Options::Mul { act }
            | Options::Div { act } => {
                *act = new;
                true
            }
            _ => false,
        }
    }
}

/// A builtin operator applied to tensors (indices into [`TflModel::tensors`];
/// `None` = an absent optional input, written as -1).
#[derive(Debug, Clone)]
pub struct TflOp {
    pub code: BuiltinOperator,
    pub version: i32,
    pub inputs: Vec<Option<usize>>,
    pub outputs: Vec<usize>,
    pub options: Options,
}

/// One subgraph with its signature: graph inputs and outputs are tensor
/// indices, named in the `serving_default` SignatureDef.
#[derive(Debug, Clone, Default)]
pub struct TflModel {
    pub tensors: Vec<TflTensor>,
    pub ops: Vec<TflOp>,
    pub inputs: Vec<(String, usize)>,
    pub outputs: Vec<(String, usize)>,
}

impl TflModel {
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        shape: Vec<usize>,
        dtype: TensorType,
    ) -> usize {
        self.tensors.push(TflTensor {
            name: name.into(),
            shape,
            dtype,
            data: None,
            quant: None,
            sparsity: None,
        });
        self.tensors.len() - 1
    }

    pub fn add_const(
        &mut self,
        name: impl Into<String>,
        shape: Vec<usize>,
        dtype: TensorType,
        data: TensorData,
    ) -> usize {
        self.tensors.push(TflTensor {
            name: name.into(),
            shape,
            dtype,
            data: Some(data),
            quant: None,
            sparsity: None,
        });
        self.tensors.len() - 1
    }

    /// A constant int32 vector.
    pub fn add_i32(&mut self, name: impl Into<String>, values: &[i32]) -> usize {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_const(
            name,
            vec![values.len()],
            TensorType::INT32,
            TensorData::Owned(std::sync::Arc::new(bytes)),
        )
    }

    /// A constant f32 tensor.
    pub fn add_f32(&mut self, name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> usize {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_const(
            name,
            shape,
            TensorType::FLOAT32,
            TensorData::Owned(std::sync::Arc::new(bytes)),
        )
    }

    pub fn add_op(
        &mut self,
        code: BuiltinOperator,
        inputs: Vec<Option<usize>>,
        outputs: Vec<usize>,
        options: Options,
    ) {
        self.ops.push(TflOp {
            code,
            version: 1,
            inputs,
            outputs,
            options,
        });
    }

    pub fn is_const(&self, t: usize) -> bool {
        self.tensors[t].data.is_some()
    }

    /// The TFLite float16 weight layout: every float32 constant of more
    /// than one element is stored as float16 and read through a DEQUANTIZE
    /// (version 3) at the start of the graph, shared by its consumers.
    /// Returns how many constants were converted.
    pub fn weights_to_f16(&mut self) -> usize {
        let mut converted: Vec<Option<usize>> = vec![None; self.tensors.len()];
        let mut dequant_ops = Vec::new();
        let consumed: Vec<usize> = {
            let mut seen = vec![false; self.tensors.len()];
            let mut order = Vec::new();
            for op in &self.ops {
                for &i in op.inputs.iter().flatten() {
                    if !seen[i] {
                        seen[i] = true;
                        order.push(i);
                    }
                }
            }
            order
        };
        for t in consumed {
            let tensor = &self.tensors[t];
            let Some(data) = &tensor.data else { continue };
            if tensor.dtype != TensorType::FLOAT32
                || tensor.numel() <= 1
                || tensor.quant.is_some()
                || tensor.sparsity.is_some()
            {
                continue;
            }
            let halves: Vec<u8> = data
                .bytes()
                .chunks_exact(4)
                .flat_map(|c| {
                    let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    half::f16::from_f32(v).to_le_bytes()
                })
                .collect();
            let name = tensor.name.clone();
            let shape = tensor.shape.clone();
            // the f32 tensor becomes the DEQUANTIZE output; the f16 copy is new
            let f16 = self.add_const(
                format!("{name}/f16"),
                shape,
                TensorType::FLOAT16,
                TensorData::Owned(std::sync::Arc::new(halves)),
            );
            self.tensors[t].data = None;
            converted[t] = Some(f16);
            dequant_ops.push(TflOp {
                code: BuiltinOperator::DEQUANTIZE,
                version: 3,
                inputs: vec![Some(f16)],
                outputs: vec![t],
                options: Options::Empty,
            });
        }
        let n = dequant_ops.len();
        dequant_ops.append(&mut self.ops);
        self.ops = dequant_ops;
        n
    }
}

impl TflModel {
    /// TensorFlow's sparse layout for float conv weights: the weight of
    /// every CONV_2D (a float32 constant, or a float16 constant behind the
    /// DEQUANTIZE of [`TflModel::weights_to_f16`]) with at least
    /// `min_zeros` of its values zero is stored sparse ([`SparseCsr`] over
    /// its input channels) and read through a DENSIFY op at the start of
    /// the graph; the dense tensor becomes DENSIFY's output. XNNPACK
    /// densifies such weights once at load and, where the graph allows it,
    /// runs the model's 1×1 convolutions with sparse kernels. Returns how
    /// many weights are stored sparse.
    pub fn sparse_weights(&mut self, min_zeros: f64) -> usize {
        let producer: std::collections::HashMap<usize, usize> = self
            .ops
            .iter()
            .enumerate()
            .flat_map(|(i, op)| op.outputs.iter().map(move |&t| (t, i)))
            .collect();
        let mut chosen: Vec<usize> = Vec::new();
        for op in &self.ops {
            if op.code != BuiltinOperator::CONV_2D {
                continue;
            }
            let Some(Some(w)) = op.inputs.get(1) else {
                continue;
            };
            // the constant itself, or the f16 constant its DEQUANTIZE reads
            let t = match producer.get(w).map(|&i| &self.ops[i]) {
                None => *w,
                Some(p) if p.code == BuiltinOperator::DEQUANTIZE => match p.inputs.first() {
                    Some(Some(s)) => *s,
                    _ => continue,
                },
                Some(_) => continue,
            };
            let tensor = &self.tensors[t];
            let float = match tensor.dtype {
                TensorType::FLOAT32 => t == *w,
                TensorType::FLOAT16 => t != *w,
                _ => false,
            };
            if !float
                || tensor.quant.is_some()
                || tensor.sparsity.is_some()
                || tensor.shape.len() < 2
                || chosen.contains(&t)
            {
                continue;
            }
            let Some(data) = &tensor.data else { continue };
            let zeros = zeros_of(data.bytes(), tensor.dtype);
            if zeros as f64 >= min_zeros * tensor.numel() as f64 && zeros > 0 {
                chosen.push(t);
            }
        }
        let mut densify = Vec::with_capacity(chosen.len());
        for t in chosen {
            let tensor = &self.tensors[t];
            let dtype = tensor.dtype;
            let elem = elem_size(dtype).expect("a float type");
            let cols = *tensor.shape.last().expect("rank checked");
            let bytes = tensor.data.as_ref().expect("a constant").bytes();
            let (csr, kept) = SparseCsr::of(bytes, cols, elem, |v| is_zero(v, dtype));
            let name = format!("{}/sparse", tensor.name);
            let shape = tensor.shape.clone();
            let sparse = self.add_const(
                name,
                shape,
                dtype,
                TensorData::Owned(std::sync::Arc::new(kept)),
            );
            self.tensors[sparse].sparsity = Some(csr);
            // the dense tensor becomes DENSIFY's output
            self.tensors[t].data = None;
            densify.push(TflOp {
                code: BuiltinOperator::DENSIFY,
                version: 1,
                inputs: vec![Some(sparse)],
                outputs: vec![t],
                options: Options::Empty,
            });
        }
        let n = densify.len();
        densify.append(&mut self.ops);
        self.ops = densify;
        n
    }
}

/// Whether one float element's bytes are ±0.
fn is_zero(v: &[u8], dtype: TensorType) -> bool {
    match dtype {
        TensorType::FLOAT32 => f32::from_le_bytes([v[0], v[1], v[2], v[3]]) == 0.0,
        TensorType::FLOAT16 => u16::from_le_bytes([v[0], v[1]]) & 0x7fff == 0,
        _ => false,
    }
}

/// How many elements of float `data` are ±0.
fn zeros_of(data: &[u8], dtype: TensorType) -> usize {
    let Some(elem) = elem_size(dtype) else {
        return 0;
    };
    data.chunks_exact(elem)
        .filter(|v| is_zero(v, dtype))
        .count()
}

/// Bytes per element of a TFLite type (None for strings and unknown types).
pub fn elem_size(t: TensorType) -> Option<usize> {
    Some(match t {
        TensorType::FLOAT32 | TensorType::INT32 => 4,
        TensorType::FLOAT16 | TensorType::INT16 => 2,
        TensorType::INT64 | TensorType::FLOAT64 | TensorType::COMPLEX64 => 8,
        TensorType::UINT8 | TensorType::INT8 | TensorType::BOOL => 1,
        _ => return None,
    })
}

/// The TFLite type of a dense IR dtype.
pub fn tfl_type(d: edgec_core::DType) -> Option<TensorType> {
    use edgec_core::DType;
    Some(match d {
        DType::F32 => TensorType::FLOAT32,
        DType::F16 => TensorType::FLOAT16,
        DType::I32 => TensorType::INT32,
        DType::I64 => TensorType::INT64,
        DType::I8 => TensorType::INT8,
        DType::I16 => TensorType::INT16,
        DType::U8 => TensorType::UINT8,
        DType::Bool => TensorType::BOOL,
        _ => return None,
    })
}

/// The IR dtype of a TFLite type.
pub fn ir_type(t: TensorType) -> Option<edgec_core::DType> {
    use edgec_core::DType;
    Some(match t {
        TensorType::FLOAT32 => DType::F32,
        TensorType::FLOAT16 => DType::F16,
        TensorType::INT32 => DType::I32,
        TensorType::INT64 => DType::I64,
        TensorType::INT8 => DType::I8,
        TensorType::INT16 => DType::I16,
        TensorType::UINT8 => DType::U8,
        TensorType::BOOL => DType::Bool,
        _ => return None,
    })
}

/// Transposes row-major data of `elem`-byte elements: output axis `i` is
/// input axis `perm[i]`.
pub fn transpose_bytes(data: &[u8], shape: &[usize], perm: &[usize], elem: usize) -> Vec<u8> {
    let rank = shape.len();
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let mut in_strides = vec![1usize; rank];
    for i in (0..rank.saturating_sub(1)).rev() {
        in_strides[i] = in_strides[i + 1] * shape[i + 1];
    }
    let strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let n: usize = shape.iter().product();
    let mut out = Vec::with_capacity(n * elem);
    let mut idx = vec![0usize; rank];
    for _ in 0..n {
        let off: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum();
        out.extend_from_slice(&data[off * elem..(off + 1) * elem]);
        for d in (0..rank).rev() {
            idx[d] += 1;
            if idx[d] < out_shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}
