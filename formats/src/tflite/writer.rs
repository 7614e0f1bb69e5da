//! TFLite writer: serialises a [`TflModel`] as a `.tflite` flatbuffer.
//!
//! - Schema version 3, file identifier `TFL3`, description `edgec`.
//! - `buffers[0]` is the empty sentinel; each constant has its own buffer,
//!   activations use buffer 0.
//! - One operator code per (op, version): `deprecated_builtin_code =
//!   min(code, 127)` and `builtin_code = code`.
//! - A `serving_default` SignatureDef names the graph inputs and outputs,
//!   and `min_runtime_version` metadata (16 zero-padded bytes) gives the
//!   oldest TF Lite runtime that has every (op, version) used.
//! - Constants go inside the flatbuffer unless they pass the inline limit
//!   (2 GiB by default: the flatbuffer builder cannot grow past it); then
//!   every constant is appended after the flatbuffer, 16-byte aligned, and
//!   its Buffer gives the absolute `offset` and `size` instead of `data`.
//!
//! - Sparse constants (DENSIFY's inputs) carry `SparsityParameters`:
//!   traversal order 0..rank, every dimension DENSE but the last,
//!   SPARSE_CSR, with Uint8/Uint16/Int32 index vectors (the narrowest that
//!   fits); their buffer holds the non-zero values only.
//!
//! The same model gives the same bytes.

use std::io::Write;
use std::path::Path;

use edgec_core::Model;
use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};

use super::lower::{lower, LowerOptions};
use super::model::{BuiltinOperator, Options, SparseCsr, TflModel};
use super::schema as fb;
use crate::output::write_file_atomically;
use crate::{FormatError, Result};

/// Above this many constant bytes, constants are appended after the
/// flatbuffer (Buffer.offset/size) instead of stored inside it.
pub const INLINE_LIMIT: usize = (1 << 31) - (64 << 20);

/// How to write a graph model as TFLite.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Store float32 constants as float16 with DEQUANTIZE ops (TFLite's
    /// float16 quantization).
    pub f16_weights: bool,
    /// See [`INLINE_LIMIT`]; 0 puts every constant after the flatbuffer.
    pub inline_limit: usize,
    /// Lowering options (sizes of named input dimensions).
    pub lower: LowerOptions,
    /// Store float conv weights with at least this fraction of zeros sparse,
    /// read through DENSIFY ([`TflModel::sparse_weights`]); `None` keeps
    /// every weight dense.
    pub sparse_min_zeros: Option<f64>,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            f16_weights: false,
            inline_limit: INLINE_LIMIT,
            lower: LowerOptions::default(),
            sparse_min_zeros: Some(super::model::SPARSE_MIN_ZEROS),
        }
    }
}

/// Lowers `model`'s graph to TFLite and writes it to `path` (atomically).
/// Returns how many weights are stored sparse.
pub fn write_model(model: &Model, path: &Path, opts: &WriteOptions) -> Result<usize> {
    let mut tfl = lower(model, &opts.lower).map_err(|e| FormatError::invalid(path, e))?;
    if opts.f16_weights {
        tfl.weights_to_f16();
    }
    let sparse = match opts.sparse_min_zeros {
        Some(min) => tfl.sparse_weights(min),
        None => 0,
    };
    write_tfl(&tfl, path, opts.inline_limit)?;
    Ok(sparse)
}

/// Writes an already lowered model to `path` (atomically).
pub fn write_tfl(tfl: &TflModel, path: &Path, inline_limit: usize) -> Result<()> {
    let enc = encode(tfl, inline_limit).map_err(|e| FormatError::invalid(path, e))?;
    write_file_atomically(path, |w| {
        enc.write_to(w).map_err(|e| FormatError::io(path, e))
    })
}

/// The bytes of a `.tflite` file: the flatbuffer, then (offset mode) the
/// constants it points at.
pub struct Encoded<'a> {
    pub flatbuffer: Vec<u8>,
    /// (absolute offset, bytes) of constants stored after the flatbuffer.
    pub tail: Vec<(u64, &'a [u8])>,
}

impl Encoded<'_> {
    pub fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        w.write_all(&self.flatbuffer)?;
        let mut pos = self.flatbuffer.len() as u64;
        for (offset, bytes) in &self.tail {
            let pad = (offset - pos) as usize;
            w.write_all(&vec![0u8; pad])?;
            w.write_all(bytes)?;
            pos = offset + bytes.len() as u64;
        }
        if !self.tail.is_empty() {
            w.write_all(&vec![0u8; pad16(pos) as usize - pos as usize])?;
        }
        Ok(())
    }

    /// The whole file in memory.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v).expect("writing to a Vec cannot fail");
        v
    }
}

fn pad16(n: u64) -> u64 {
    n.div_ceil(16) * 16
}

/// Serialises `tfl`; constants go after the flatbuffer when their total
/// passes `inline_limit`.
pub fn encode(tfl: &TflModel, inline_limit: usize) -> std::result::Result<Encoded<'_>, String> {
    check(tfl)?;
    let total: usize = tfl
        .tensors
        .iter()
        .filter_map(|t| t.data.as_ref().map(|d| d.bytes().len()))
        .sum();
    if total <= inline_limit {
        return Ok(Encoded {
            flatbuffer: build(tfl, None),
            tail: vec![],
        });
    }
    // constants in tensor order, each at a 16-byte aligned offset; the
    // first build with placeholder offsets fixes the flatbuffer's size (the
    // u64 fields are present either way, so the second build matches it)
    let consts: Vec<&[u8]> = tfl
        .tensors
        .iter()
        .filter_map(|t| t.data.as_ref().map(|d| d.bytes()))
        .collect();
    let placeholder: Vec<(u64, u64)> = consts.iter().map(|b| (1, b.len().max(1) as u64)).collect();
    let size = build(tfl, Some(&placeholder)).len() as u64;
    let mut pos = pad16(size);
    let mut places = Vec::with_capacity(consts.len());
    let mut tail = Vec::with_capacity(consts.len());
    for b in &consts {
        places.push((pos, b.len() as u64));
        tail.push((pos, *b));
        pos = pad16(pos + b.len() as u64);
    }
    let flatbuffer = build(tfl, Some(&places));
    if flatbuffer.len() as u64 != size {
        return Err("internal error: the flatbuffer size changed between builds".into());
    }
    Ok(Encoded { flatbuffer, tail })
}

fn check(tfl: &TflModel) -> std::result::Result<(), String> {
    let n = tfl.tensors.len();
    for (i, op) in tfl.ops.iter().enumerate() {
        for &t in op.inputs.iter().flatten().chain(&op.outputs) {
            if t >= n {
                return Err(format!("operator {i} refers to tensor {t} of {n}"));
            }
        }
    }
    for t in &tfl.tensors {
        if let Some(d) = &t.data {
            if t.numel() > 0 && d.bytes().is_empty() {
                return Err(format!("constant {} has no data", t.name));
            }
        }
    }
    Ok(())
}

/// The oldest TF Lite runtime with this (op, version), from TF Lite's
/// `runtime_version.cc` table (for the ops edgec writes).
fn runtime_version(code: BuiltinOperator, version: i32) -> Option<(u32, u32, u32)> {
    use BuiltinOperator as B;
    Some(match (code, version) {
        (B::AVERAGE_POOL_2D | B::CONV_2D | B::DEPTHWISE_CONV_2D | B::ADD, 1) => (1, 5, 0),
        (B::MAX_POOL_2D | B::FULLY_CONNECTED | B::CAST | B::CONCATENATION, 1) => (1, 5, 0),
        (B::MUL | B::PAD | B::RESHAPE | B::SOFTMAX | B::RELU | B::RELU6, 1) => (1, 5, 0),
        (B::FULLY_CONNECTED, 5) => (2, 0, 0),
        (B::SUB | B::DIV | B::GATHER | B::TRANSPOSE | B::MEAN | B::SQUEEZE, 1) => (1, 6, 0),
        (B::STRIDED_SLICE, 1) => (1, 6, 0),
        (B::EXP, 1) => (1, 7, 0),
        (B::NEG, 1) => (1, 9, 0),
        (B::SUM | B::SQRT | B::RSQRT | B::POW | B::EXPAND_DIMS, 1) => (1, 10, 0),
        (B::LOGICAL_OR | B::LOGICAL_AND | B::LOGICAL_NOT, 1) => (1, 11, 0),
        (B::ABS, 1) => (1, 13, 0),
        (B::DEQUANTIZE, 1) => (1, 13, 1),
        (B::DEQUANTIZE, 2) => (1, 14, 0),
        (B::DEQUANTIZE, 3) => (1, 15, 0),
        (B::TANH | B::LOGISTIC | B::MAXIMUM | B::MINIMUM | B::LOG | B::QUANTIZE, 1) => (1, 14, 0),
        (B::EQUAL | B::GREATER | B::GREATER_EQUAL | B::LESS | B::LESS_EQUAL, 1) => (1, 14, 0),
        (B::SLICE, 1) => (1, 14, 0),
        (B::HARD_SWISH, 1) => (1, 15, 0),
        (B::SELECT_V2 | B::DENSIFY, 1) => (2, 2, 0),
        (B::BATCH_MATMUL, 1) => (2, 3, 0),
        (B::GELU, 1) => (2, 9, 0),
        _ => return None,
    })
}

fn min_runtime_version(tfl: &TflModel) -> [u8; 16] {
    let v = tfl
        .ops
        .iter()
        .filter_map(|op| runtime_version(op.code, op.version))
        .max()
        .unwrap_or((1, 5, 0));
    let s = format!("{}.{}.{}", v.0, v.1, v.2);
    let mut out = [0u8; 16];
    out[..s.len()].copy_from_slice(s.as_bytes());
    out
}

/// One flatbuffer; `places` gives (offset, size) per constant (in tensor
/// order) when constants live after it.
fn build(tfl: &TflModel, places: Option<&[(u64, u64)]>) -> Vec<u8> {
    let mut b = FlatBufferBuilder::with_capacity(1 << 16);

    // operator codes, in first-use order
    let mut codes: Vec<(BuiltinOperator, i32)> = Vec::new();
    let mut op_code_index = Vec::with_capacity(tfl.ops.len());
    for op in &tfl.ops {
        let key = (op.code, op.version);
        let idx = match codes.iter().position(|c| *c == key) {
            Some(i) => i,
            None => {
                codes.push(key);
                codes.len() - 1
            }
        };
        op_code_index.push(idx as u32);
    }

    // buffers: 0 empty, then one per constant, then the metadata buffer
    let mut buffers = vec![fb::Buffer::create(&mut b, &fb::BufferArgs::default())];
    let mut tensor_buffer = vec![0u32; tfl.tensors.len()];
    let mut k = 0;
    for (i, t) in tfl.tensors.iter().enumerate() {
        let Some(data) = &t.data else { continue };
        let args = match places {
            None => fb::BufferArgs {
                data: Some(b.create_vector(data.bytes())),
                ..Default::default()
            },
            Some(p) => fb::BufferArgs {
                data: None,
                offset: p[k].0,
                size: p[k].1,
            },
        };
        k += 1;
        tensor_buffer[i] = buffers.len() as u32;
        buffers.push(fb::Buffer::create(&mut b, &args));
    }
    let version_bytes = min_runtime_version(tfl);
    let meta_buffer = buffers.len() as u32;
    let vdata = b.create_vector(&version_bytes[..]);
    buffers.push(fb::Buffer::create(
        &mut b,
        &fb::BufferArgs {
            data: Some(vdata),
            ..Default::default()
        },
    ));

    // tensors
    let mut tensors = Vec::with_capacity(tfl.tensors.len());
    for (i, t) in tfl.tensors.iter().enumerate() {
        let shape: Vec<i32> = t.shape.iter().map(|&d| d as i32).collect();
        let shape = b.create_vector(&shape);
        let name = b.create_string(&t.name);
        let quantization = t.quant.as_ref().map(|q| {
            let scale = b.create_vector(&q.scale);
            let zero_point = b.create_vector(&q.zero_point);
            fb::QuantizationParameters::create(
                &mut b,
                &fb::QuantizationParametersArgs {
                    scale: Some(scale),
                    zero_point: Some(zero_point),
                    quantized_dimension: q.quantized_dimension,
                    ..Default::default()
                },
            )
        });
        let sparsity = t.sparsity.as_ref().map(|s| sparsity(&mut b, &t.shape, s));
        tensors.push(fb::Tensor::create(
            &mut b,
            &fb::TensorArgs {
                shape: Some(shape),
                type_: t.dtype,
                buffer: tensor_buffer[i],
                name: Some(name),
                quantization,
                sparsity,
                ..Default::default()
            },
        ));
    }

    // operators
    let mut ops = Vec::with_capacity(tfl.ops.len());
    for (op, &code_index) in tfl.ops.iter().zip(&op_code_index) {
        let inputs: Vec<i32> = op
            .inputs
            .iter()
            .map(|t| t.map_or(-1, |t| t as i32))
            .collect();
        let outputs: Vec<i32> = op.outputs.iter().map(|&t| t as i32).collect();
        let inputs = b.create_vector(&inputs);
        let outputs = b.create_vector(&outputs);
        let (ty, value) = options(&mut b, op.code, &op.options);
        ops.push(fb::Operator::create(
            &mut b,
            &fb::OperatorArgs {
                opcode_index: code_index,
                inputs: Some(inputs),
                outputs: Some(outputs),
                builtin_options_type: ty,
                builtin_options: value,
                ..Default::default()
            },
        ));
    }

    let sub_inputs: Vec<i32> = tfl.inputs.iter().map(|(_, t)| *t as i32).collect();
    let sub_outputs: Vec<i32> = tfl.outputs.iter().map(|(_, t)| *t as i32).collect();
    let tensors = b.create_vector(&tensors);
    let sub_inputs = b.create_vector(&sub_inputs);
    let sub_outputs = b.create_vector(&sub_outputs);
    let ops = b.create_vector(&ops);
    let main = b.create_string("main");
    let subgraph = fb::SubGraph::create(
        &mut b,
        &fb::SubGraphArgs {
            tensors: Some(tensors),
            inputs: Some(sub_inputs),
            outputs: Some(sub_outputs),
            operators: Some(ops),
            name: Some(main),
        },
    );
    let subgraphs = b.create_vector(&[subgraph]);

    let mut opcodes = Vec::with_capacity(codes.len());
    for (code, version) in &codes {
        opcodes.push(fb::OperatorCode::create(
            &mut b,
            &fb::OperatorCodeArgs {
                deprecated_builtin_code: code.0.min(127) as i8,
                custom_code: None,
                version: *version,
                builtin_code: *code,
            },
        ));
    }
    let opcodes = b.create_vector(&opcodes);

    let sig_inputs = tensor_maps(&mut b, &tfl.inputs);
    let sig_outputs = tensor_maps(&mut b, &tfl.outputs);
    let key = b.create_string("serving_default");
    let signature = fb::SignatureDef::create(
        &mut b,
        &fb::SignatureDefArgs {
            inputs: Some(sig_inputs),
            outputs: Some(sig_outputs),
            signature_key: Some(key),
            subgraph_index: 0,
        },
    );
    let signatures = b.create_vector(&[signature]);
    let meta_name = b.create_string("min_runtime_version");
    let metadata = fb::Metadata::create(
        &mut b,
        &fb::MetadataArgs {
            name: Some(meta_name),
            buffer: meta_buffer,
        },
    );
    let metadata = b.create_vector(&[metadata]);
    let buffers = b.create_vector(&buffers);
    let description = b.create_string("edgec");
    let model = fb::Model::create(
        &mut b,
        &fb::ModelArgs {
            version: 3,
            operator_codes: Some(opcodes),
            subgraphs: Some(subgraphs),
            description: Some(description),
            buffers: Some(buffers),
            metadata_buffer: None,
            metadata: Some(metadata),
            signature_defs: Some(signatures),
        },
    );
    fb::finish_model_buffer(&mut b, model);
    b.finished_data().to_vec()
}

/// The `SparsityParameters` of a [`SparseCsr`] tensor of `shape`: traversal
/// order 0..rank, no blocks, every dimension DENSE but the last
/// (SPARSE_CSR), index vectors in the narrowest type that holds them.
fn sparsity<'a>(
    b: &mut FlatBufferBuilder<'a>,
    shape: &[usize],
    s: &SparseCsr,
) -> WIPOffset<fb::SparsityParameters<'a>> {
    let rank = shape.len();
    let order: Vec<i32> = (0..rank as i32).collect();
    let order = b.create_vector(&order);
    let block_map = b.create_vector::<i32>(&[]);
    let mut dims = Vec::with_capacity(rank);
    for &d in &shape[..rank - 1] {
        dims.push(fb::DimensionMetadata::create(
            b,
            &fb::DimensionMetadataArgs {
                format: fb::DimensionType::DENSE,
                dense_size: d as i32,
                ..Default::default()
            },
        ));
    }
    let (segments_type, segments) = index_vector(b, &s.segments);
    let (indices_type, indices) = index_vector(b, &s.indices);
    dims.push(fb::DimensionMetadata::create(
        b,
        &fb::DimensionMetadataArgs {
            format: fb::DimensionType::SPARSE_CSR,
            dense_size: 0,
            array_segments_type: segments_type,
            array_segments: Some(segments),
            array_indices_type: indices_type,
            array_indices: Some(indices),
        },
    ));
    let dims = b.create_vector(&dims);
    fb::SparsityParameters::create(
        b,
        &fb::SparsityParametersArgs {
            traversal_order: Some(order),
            block_map: Some(block_map),
            dim_metadata: Some(dims),
        },
    )
}

/// A `SparseIndexVector`: Uint8Vector, Uint16Vector or Int32Vector, the
/// narrowest that holds every value.
fn index_vector(
    b: &mut FlatBufferBuilder,
    values: &[u32],
) -> (fb::SparseIndexVector, WIPOffset<UnionWIPOffset>) {
    let max = values.iter().copied().max().unwrap_or(0);
    if max <= u8::MAX as u32 {
        let v: Vec<u8> = values.iter().map(|&x| x as u8).collect();
        let v = b.create_vector(&v);
        let t = fb::Uint8Vector::create(b, &fb::Uint8VectorArgs { values: Some(v) });
        (fb::SparseIndexVector::Uint8Vector, t.as_union_value())
    } else if max <= u16::MAX as u32 {
        let v: Vec<u16> = values.iter().map(|&x| x as u16).collect();
        let v = b.create_vector(&v);
        let t = fb::Uint16Vector::create(b, &fb::Uint16VectorArgs { values: Some(v) });
        (fb::SparseIndexVector::Uint16Vector, t.as_union_value())
    } else {
        let v: Vec<i32> = values.iter().map(|&x| x as i32).collect();
        let v = b.create_vector(&v);
        let t = fb::Int32Vector::create(b, &fb::Int32VectorArgs { values: Some(v) });
        (fb::SparseIndexVector::Int32Vector, t.as_union_value())
    }
}

fn tensor_maps<'a>(
    b: &mut FlatBufferBuilder<'a>,
    list: &[(String, usize)],
) -> WIPOffset<flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<fb::TensorMap<'a>>>> {
    let v: Vec<_> = list
        .iter()
        .map(|(name, t)| {
            let name = b.create_string(name);
            fb::TensorMap::create(
                b,
                &fb::TensorMapArgs {
                    name: Some(name),
                    tensor_index: *t as u32,
                },
            )
        })
        .collect();
    b.create_vector(&v)
}

type Union = Option<WIPOffset<UnionWIPOffset>>;

/// The options union (type tag and table) of an operator.
fn options(
    b: &mut FlatBufferBuilder,
    code: BuiltinOperator,
    o: &Options,
) -> (fb::BuiltinOptions, Union) {
    use fb::BuiltinOptions as T;
    use BuiltinOperator as B;
    let some = |w: WIPOffset<UnionWIPOffset>| Some(w);
    match o {
        Options::None => (T::NONE, None),
        Options::Conv2D {
            padding,
            stride,
            dilation,
            act,
        } => {
            let t = fb::Conv2DOptions::create(
                b,
                &fb::Conv2DOptionsArgs {
                    padding: *padding,
                    stride_w: stride[1],
                    stride_h: stride[0],
                    fused_activation_function: *act,
                    dilation_w_factor: dilation[1],
                    dilation_h_factor: dilation[0],
                    ..Default::default()
                },
            );
            (T::Conv2DOptions, some(t.as_union_value()))
        }
        Options::DepthwiseConv2D {
            padding,
            stride,
            dilation,
            depth_multiplier,
            act,
        } => {
            let t = fb::DepthwiseConv2DOptions::create(
                b,
                &fb::DepthwiseConv2DOptionsArgs {
                    padding: *padding,
                    stride_w: stride[1],
                    stride_h: stride[0],
                    depth_multiplier: *depth_multiplier,
                    fused_activation_function: *act,
                    dilation_w_factor: dilation[1],
                    dilation_h_factor: dilation[0],
                },
            );
            (T::DepthwiseConv2DOptions, some(t.as_union_value()))
        }
        Options::Pool2D {
            padding,
            stride,
            filter,
            act,
        } => {
            let t = fb::Pool2DOptions::create(
                b,
                &fb::Pool2DOptionsArgs {
                    padding: *padding,
                    stride_w: stride[1],
                    stride_h: stride[0],
                    filter_width: filter[1],
                    filter_height: filter[0],
                    fused_activation_function: *act,
                },
            );
            (T::Pool2DOptions, some(t.as_union_value()))
        }
        Options::FullyConnected {
            act,
            keep_num_dims,
            asymmetric_quantize_inputs,
        } => {
            let t = fb::FullyConnectedOptions::create(
                b,
                &fb::FullyConnectedOptionsArgs {
                    fused_activation_function: *act,
                    keep_num_dims: *keep_num_dims,
                    asymmetric_quantize_inputs: *asymmetric_quantize_inputs,
                    ..Default::default()
                },
            );
            (T::FullyConnectedOptions, some(t.as_union_value()))
        }
        Options::Softmax { beta } => {
            let t = fb::SoftmaxOptions::create(b, &fb::SoftmaxOptionsArgs { beta: *beta });
            (T::SoftmaxOptions, some(t.as_union_value()))
        }
        Options::Concatenation { axis, act } => {
            let t = fb::ConcatenationOptions::create(
                b,
                &fb::ConcatenationOptionsArgs {
                    axis: *axis,
                    fused_activation_function: *act,
                },
            );
            (T::ConcatenationOptions, some(t.as_union_value()))
        }
        Options::Add { act } => {
            let t = fb::AddOptions::create(
                b,
                &fb::AddOptionsArgs {
                    fused_activation_function: *act,
                    pot_scale_int16: false,
                },
            );
            (T::AddOptions, some(t.as_union_value()))
        }
        Options::Sub { act } => {
            let t = fb::SubOptions::create(
                b,
                &fb::SubOptionsArgs {
                    fused_activation_function: *act,
                    pot_scale_int16: false,
                },
            );
            (T::SubOptions, some(t.as_union_value()))
        }
        Options::Mul { act } => {
            let t = fb::MulOptions::create(
                b,
                &fb::MulOptionsArgs {
                    fused_activation_function: *act,
                },
            );
            (T::MulOptions, some(t.as_union_value()))
        }
        Options::Div { act } => {
            let t = fb::DivOptions::create(
                b,
                &fb::DivOptionsArgs {
                    fused_activation_function: *act,
                },
            );
            (T::DivOptions, some(t.as_union_value()))
        }
        Options::Reshape { new_shape } => {
            let v = b.create_vector(new_shape);
            let t = fb::ReshapeOptions::create(b, &fb::ReshapeOptionsArgs { new_shape: Some(v) });
            (T::ReshapeOptions, some(t.as_union_value()))
        }
        Options::Gather { axis, batch_dims } => {
            let t = fb::GatherOptions::create(
                b,
                &fb::GatherOptionsArgs {
                    axis: *axis,
                    batch_dims: *batch_dims,
                },
            );
            (T::GatherOptions, some(t.as_union_value()))
        }
        Options::Reducer { keep_dims } => {
            let t = fb::ReducerOptions::create(
                b,
                &fb::ReducerOptionsArgs {
                    keep_dims: *keep_dims,
                },
            );
            (T::ReducerOptions, some(t.as_union_value()))
        }
        Options::StridedSlice {
            begin_mask,
            end_mask,
            shrink_axis_mask,
        } => {
            let t = fb::StridedSliceOptions::create(
                b,
                &fb::StridedSliceOptionsArgs {
                    begin_mask: *begin_mask,
                    end_mask: *end_mask,
                    shrink_axis_mask: *shrink_axis_mask,
                    ..Default::default()
                },
            );
            (T::StridedSliceOptions, some(t.as_union_value()))
        }
        Options::Cast { from, to } => {
            let t = fb::CastOptions::create(
                b,
                &fb::CastOptionsArgs {
                    in_data_type: *from,
                    out_data_type: *to,
                },
            );
            (T::CastOptions, some(t.as_union_value()))
        }
        Options::BatchMatMul { adj_x, adj_y } => {
            let t = fb::BatchMatMulOptions::create(
                b,
                &fb::BatchMatMulOptionsArgs {
                    adj_x: *adj_x,
                    adj_y: *adj_y,
                    asymmetric_quantize_inputs: false,
                },
            );
            (T::BatchMatMulOptions, some(t.as_union_value()))
        }
        Options::Gelu { approximate } => {
            let t = fb::GeluOptions::create(
                b,
                &fb::GeluOptionsArgs {
                    approximate: *approximate,
                },
            );
            (T::GeluOptions, some(t.as_union_value()))
        }
        Options::Empty => {
            macro_rules! empty {
                ($table:ident, $args:ident) => {{
                    let t = fb::$table::create(b, &fb::$args {});
                    (T::$table, some(t.as_union_value()))
                }};
            }
            match code {
                B::PAD => empty!(PadOptions, PadOptionsArgs),
                B::TRANSPOSE => empty!(TransposeOptions, TransposeOptionsArgs),
                B::DEQUANTIZE => empty!(DequantizeOptions, DequantizeOptionsArgs),
                B::QUANTIZE => empty!(QuantizeOptions, QuantizeOptionsArgs),
                B::HARD_SWISH => empty!(HardSwishOptions, HardSwishOptionsArgs),
                B::SELECT_V2 => empty!(SelectV2Options, SelectV2OptionsArgs),
                B::EXP => empty!(ExpOptions, ExpOptionsArgs),
                B::MAXIMUM | B::MINIMUM => empty!(MaximumMinimumOptions, MaximumMinimumOptionsArgs),
                B::LESS => empty!(LessOptions, LessOptionsArgs),
                B::NEG => empty!(NegOptions, NegOptionsArgs),
                B::GREATER => empty!(GreaterOptions, GreaterOptionsArgs),
                B::GREATER_EQUAL => empty!(GreaterEqualOptions, GreaterEqualOptionsArgs),
                B::LESS_EQUAL => empty!(LessEqualOptions, LessEqualOptionsArgs),
                B::SLICE => empty!(SliceOptions, SliceOptionsArgs),
                B::EQUAL => empty!(EqualOptions, EqualOptionsArgs),
                B::POW => empty!(PowOptions, PowOptionsArgs),
                B::LOGICAL_OR => empty!(LogicalOrOptions, LogicalOrOptionsArgs),
                B::LOGICAL_AND => empty!(LogicalAndOptions, LogicalAndOptionsArgs),
                B::LOGICAL_NOT => empty!(LogicalNotOptions, LogicalNotOptionsArgs),
                B::ABS => empty!(AbsOptions, AbsOptionsArgs),
                B::DENSIFY => empty!(DensifyOptions, DensifyOptionsArgs),
                _ => (T::NONE, None),
            }
        }
    }
}
