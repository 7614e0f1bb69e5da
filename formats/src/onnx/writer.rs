//! ONNX writer: emits a graph model as an ONNX file.
//!
//! The file declares opset [`OPSET`] of the default domain (and
//! `com.microsoft` when MatMulNBits is used) and IR version [`IR_VERSION`],
//! which onnxruntime 1.31 and tract load. Attributes that became inputs in
//! later opsets (the axes of Unsqueeze, Squeeze and the reductions) are
//! written as constant inputs. Constants go inline, or into one external
//! data file beside the model when they pass protobuf's 2 GiB limit.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use edgec_core::{DType, Dim, Graph, Model, Node, Op, PadMode, Tensor, ValueInfo, Window};
use prost::Message;

use super::proto::{self, data_type};
use crate::output::write_file_atomically;
use crate::{FormatError, Result};

/// The default domain's opset of every written file: 21 is the first with
/// blocked (de)quantization and int4 tensors.
pub const OPSET: i64 = 21;
/// IR version 10 goes with opset 21; onnxruntime accepts up to 13.
pub const IR_VERSION: i64 = 10;
/// Above this many constant bytes, constants go to an external data file
/// (protobuf messages cannot exceed 2 GiB).
const INLINE_LIMIT: usize = 1 << 31;

/// The ONNX `TensorProto.DataType` of a dense dtype.
pub fn onnx_dtype(dtype: DType) -> Option<i32> {
    Some(match dtype {
        DType::F32 => data_type::FLOAT,
        DType::F16 => data_type::FLOAT16,
        DType::Bf16 => data_type::BFLOAT16,
        DType::I8 => data_type::INT8,
        DType::I16 => data_type::INT16,
        DType::U8 => data_type::UINT8,
        DType::I32 => data_type::INT32,
        DType::I64 => data_type::INT64,
        DType::Bool => data_type::BOOL,
        DType::I4 => data_type::INT4,
        DType::U4 => data_type::UINT4,
        DType::Ggml(_) => return None,
    })
}

/// Writes `model` (which must have a graph) to `path`; constants go to an
/// external data file `path.data` when they pass 2 GiB.
pub fn write_model(model: &Model, path: &Path) -> Result<()> {
    write_model_with(model, path, INLINE_LIMIT)
}

/// [`write_model`] with the threshold above which constants go to the
/// external data file (0: always).
pub fn write_model_with(model: &Model, path: &Path, inline_limit: usize) -> Result<()> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| FormatError::invalid(path, "the model has no graph to write as ONNX"))?;
    let mut builder = Builder::new(model, graph, path);
    let nodes = graph
        .nodes
        .iter()
        .map(|n| builder.node(n))
        .collect::<Result<Vec<_>>>()?;
    let initializers = builder.initializers();
    let total: usize = initializers.iter().map(|(_, t)| t.bytes().len()).sum();
    let external = total > inline_limit;
    let data_name = format!(
        "{}.data",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model.onnx".into())
    );
    let mut offset = 0usize;
    let mut protos = Vec::with_capacity(initializers.len());
    let mut layout = Vec::new(); // (padding, tensor) in data-file order
    for (name, t) in &initializers {
        let mut p = proto::TensorProto {
            name: name.clone(),
            dims: t.shape.iter().map(|&d| d as i64).collect(),
            data_type: onnx_dtype(t.dtype).ok_or_else(|| {
                FormatError::invalid(
                    path,
                    format!(
                        "tensor {name}: {} has no ONNX type (dequantize it first)",
                        t.dtype
                    ),
                )
            })?,
            ..Default::default()
        };
        if external {
            // 64-byte alignment lets readers map tensors in place.
            let pad = offset.next_multiple_of(64) - offset;
            offset += pad;
            layout.push((pad, *t));
            p.data_location = proto::data_location::EXTERNAL;
            p.external_data = [
                ("location", data_name.clone()),
                ("offset", offset.to_string()),
                ("length", t.bytes().len().to_string()),
            ]
            .into_iter()
            .map(|(k, v)| proto::StringStringEntryProto {
                key: k.into(),
                value: v,
            })
            .collect();
            offset += t.bytes().len();
        } else {
            p.raw_data = t.bytes().to_vec();
        }
        protos.push(p);
    }
    let mut opset_import = vec![proto::OperatorSetIdProto {
        domain: String::new(),
        version: OPSET,
    }];
    if graph.nodes.iter().any(|n| !n.op.onnx_name().1.is_empty()) {
        opset_import.push(proto::OperatorSetIdProto {
            domain: "com.microsoft".into(),
            version: 1,
        });
    }
    let proto = proto::ModelProto {
        ir_version: IR_VERSION,
        opset_import,
        producer_name: "edgec".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(proto::GraphProto {
            name: if model.meta.name.is_empty() {
                "edgec".into()
            } else {
                model.meta.name.clone()
            },
            node: nodes,
            initializer: protos,
            input: graph
                .inputs
                .iter()
                .map(|v| value_info(v, path))
                .collect::<Result<_>>()?,
            output: graph
                .outputs
                .iter()
                .map(|v| value_info(v, path))
                .collect::<Result<_>>()?,
            ..Default::default()
        }),
        ..Default::default()
    };
    let bytes = proto.encode_to_vec();
    let data_path = path.with_file_name(&data_name);
    if external {
        write_file_atomically(&data_path, |w| {
            for (pad, t) in &layout {
                w.write_all(&vec![0u8; *pad])
                    .and_then(|_| w.write_all(t.bytes()))
                    .map_err(|e| FormatError::io(&data_path, e))?;
            }
            Ok(())
        })?;
    }
    let written = write_file_atomically(path, |w| {
        w.write_all(&bytes).map_err(|e| FormatError::io(path, e))
    });
    if written.is_err() && external {
        let _ = std::fs::remove_file(&data_path);
    }
    written
}

fn value_info(v: &ValueInfo, path: &Path) -> Result<proto::ValueInfoProto> {
    let elem_type = onnx_dtype(v.dtype).ok_or_else(|| {
        FormatError::invalid(
            path,
            format!("graph value {}: no ONNX type for {}", v.name, v.dtype),
        )
    })?;
    let dim = v
        .shape
        .iter()
        .map(|d| proto::Dimension {
            value: Some(match d {
                Dim::Fixed(n) => proto::DimensionValue::DimValue(*n as i64),
                Dim::Named(s) => proto::DimensionValue::DimParam(s.clone()),
            }),
            ..Default::default()
        })
        .collect();
    Ok(proto::ValueInfoProto {
        name: v.name.clone(),
        r#type: Some(proto::TypeProto {
            tensor_type: Some(proto::TypeProtoTensor {
                elem_type,
                shape: Some(proto::TensorShapeProto { dim }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Collects the constants the nodes read, and the axes inputs it adds.
struct Builder<'a> {
    model: &'a Model,
    path: &'a Path,
    /// Every value name in use, so added constants get fresh names.
    names: HashSet<String>,
    /// Constants read by the graph, in first-use order.
    used: Vec<String>,
    used_set: HashSet<String>,
    added: Vec<Tensor>,
}

impl<'a> Builder<'a> {
    fn new(model: &'a Model, graph: &'a Graph, path: &'a Path) -> Self {
        let mut names: HashSet<String> = model.tensors.iter().map(|t| t.name.clone()).collect();
        for n in &graph.nodes {
            names.extend(n.outputs.iter().cloned());
        }
        names.extend(graph.inputs.iter().map(|v| v.name.clone()));
        let mut b = Builder {
            model,
            path,
            names,
            used: vec![],
            used_set: HashSet::new(),
            added: vec![],
        };
        // Graph outputs that are constants must be written too.
        for v in &graph.outputs {
            b.note_use(&v.name);
        }
        b
    }

    fn note_use(&mut self, name: &str) {
        if !name.is_empty()
            && self.model.tensor(name).is_some()
            && self.used_set.insert(name.to_string())
        {
            self.used.push(name.to_string());
        }
    }

    /// A new I64 constant `[values]` named after `base`.
    fn axes(&mut self, base: &str, values: &[i64]) -> Result<String> {
        let mut name = format!("{base}_axes");
        let mut k = 1;
        while self.names.contains(&name) {
            name = format!("{base}_axes_{k}");
            k += 1;
        }
        self.names.insert(name.clone());
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = Tensor::new(
            name.clone(),
            vec![values.len()],
            DType::I64,
            edgec_core::TensorData::Owned(std::sync::Arc::new(bytes)),
        )
        .map_err(|e| FormatError::invalid(self.path, e.to_string()))?;
        self.added.push(t);
        Ok(name)
    }

    fn initializers(&self) -> Vec<(String, &Tensor)> {
        let mut out: Vec<(String, &Tensor)> = Vec::new();
        for name in &self.used {
            let t = self.model.tensor(name).expect("noted only when present");
            out.push((name.clone(), t));
        }
        out.extend(self.added.iter().map(|t| (t.name.clone(), t)));
        out
    }

    fn node(&mut self, n: &Node) -> Result<proto::NodeProto> {
        for i in &n.inputs {
            self.note_use(i);
        }
        let (op_type, domain) = n.op.onnx_name();
        let mut inputs = n.inputs.clone();
        let mut attrs = Vec::new();
        let window = |attrs: &mut Vec<proto::AttributeProto>, w: &Window| {
            attrs.push(ints("kernel_shape", &w.kernel));
            attrs.push(ints("strides", &w.strides));
            attrs.push(ints("pads", &w.pads));
            if w.dilations.iter().any(|&d| d != 1) {
                attrs.push(ints("dilations", &w.dilations));
            }
        };
        match &n.op {
            Op::HardSigmoid { alpha, beta } => {
                attrs.push(float("alpha", *alpha));
                attrs.push(float("beta", *beta));
            }
            Op::Gelu { tanh } => {
                attrs.push(string("approximate", if *tanh { "tanh" } else { "none" }));
            }
            Op::Gemm {
                alpha,
                beta,
                trans_a,
                trans_b,
            } => {
                attrs.push(float("alpha", *alpha));
                attrs.push(float("beta", *beta));
                attrs.push(int("transA", *trans_a as i64));
                attrs.push(int("transB", *trans_b as i64));
            }
            Op::Conv { window: w, group } => {
                window(&mut attrs, w);
                attrs.push(int("group", *group as i64));
            }
            Op::BatchNorm { epsilon } => attrs.push(float("epsilon", *epsilon)),
            Op::LayerNorm { axis, epsilon } => {
                attrs.push(int("axis", *axis));
                attrs.push(float("epsilon", *epsilon));
            }
            Op::Softmax { axis } | Op::Flatten { axis } | Op::Concat { axis } => {
                attrs.push(int("axis", *axis))
            }
            Op::Gather { axis } => attrs.push(int("axis", *axis)),
            Op::GatherND { batch_dims } => attrs.push(int("batch_dims", *batch_dims as i64)),
            Op::AveragePool {
                window: w,
                count_include_pad,
            } => {
                window(&mut attrs, w);
                attrs.push(int("count_include_pad", *count_include_pad as i64));
            }
            Op::MaxPool { window: w } => window(&mut attrs, w),
            Op::ReduceMean { axes, keep_dims } | Op::ReduceSum { axes, keep_dims } => {
                if !axes.is_empty() {
                    let name = self.axes(&n.outputs[0], axes)?;
                    inputs.truncate(1);
                    inputs.push(name);
                }
                attrs.push(int("keepdims", *keep_dims as i64));
            }
            Op::Unsqueeze { axes } | Op::Squeeze { axes } => {
                inputs.truncate(1);
                if !axes.is_empty() || matches!(n.op, Op::Unsqueeze { .. }) {
                    let name = self.axes(&n.outputs[0], axes)?;
                    inputs.push(name);
                }
            }
            Op::Reshape { allow_zero: true } => attrs.push(int("allowzero", 1)),
            Op::Transpose { perm } => attrs.push(ints("perm", perm)),
            Op::Shape { start, end } => {
                if *start != 0 {
                    attrs.push(int("start", *start));
                }
                if let Some(e) = end {
                    attrs.push(int("end", *e));
                }
            }
            Op::Cast { to } => attrs.push(int("to", self.dtype(*to, n)? as i64)),
            Op::Pad { mode } => attrs.push(string(
                "mode",
                match mode {
                    PadMode::Constant => "constant",
                    PadMode::Reflect => "reflect",
                    PadMode::Edge => "edge",
                },
            )),
            Op::ConstantOfShape { dtype, value } => {
                let bytes = scalar_bytes(*dtype, *value).ok_or_else(|| {
                    FormatError::invalid(
                        self.path,
                        format!(
                            "node {}: ConstantOfShape of {dtype} is not writable",
                            n.name
                        ),
                    )
                })?;
                attrs.push(proto::AttributeProto {
                    name: "value".into(),
                    r#type: proto::attribute_type::TENSOR,
                    t: Some(proto::TensorProto {
                        dims: vec![1],
                        data_type: self.dtype(*dtype, n)?,
                        raw_data: bytes,
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
            Op::QuantizeLinear {
                axis,
                block_size,
                out,
            } => {
                attrs.push(int("axis", *axis));
                if *block_size > 0 {
                    attrs.push(int("block_size", *block_size as i64));
                }
                if n.inputs.get(2).is_none_or(|z| z.is_empty()) {
                    attrs.push(int("output_dtype", self.dtype(*out, n)? as i64));
                }
            }
            Op::DequantizeLinear { axis, block_size } => {
                attrs.push(int("axis", *axis));
                if *block_size > 0 {
                    attrs.push(int("block_size", *block_size as i64));
                }
            }
            Op::MatMulNBits {
                k,
                n: cols,
                bits,
                block_size,
            } => {
                attrs.push(int("K", *k as i64));
                attrs.push(int("N", *cols as i64));
                attrs.push(int("bits", *bits as i64));
                attrs.push(int("block_size", *block_size as i64));
            }
            _ => {}
        }
        // Trailing absent optional inputs are dropped, as ONNX tools do.
        while inputs.last().is_some_and(|i| i.is_empty()) {
            inputs.pop();
        }
        Ok(proto::NodeProto {
            input: inputs,
            output: n.outputs.clone(),
            name: n.name.clone(),
            op_type: op_type.into(),
            domain: domain.into(),
            attribute: attrs,
            ..Default::default()
        })
    }

    fn dtype(&self, d: DType, n: &Node) -> Result<i32> {
        onnx_dtype(d).ok_or_else(|| {
            FormatError::invalid(self.path, format!("node {}: no ONNX type for {d}", n.name))
        })
    }
}

/// One element of `dtype` holding `value`, little-endian.
fn scalar_bytes(dtype: DType, value: f64) -> Option<Vec<u8>> {
    Some(match dtype {
        DType::F32 => (value as f32).to_le_bytes().to_vec(),
        DType::F16 => half::f16::from_f64(value).to_le_bytes().to_vec(),
        DType::Bf16 => half::bf16::from_f64(value).to_le_bytes().to_vec(),
        DType::I8 => (value as i8).to_le_bytes().to_vec(),
        DType::I16 => (value as i16).to_le_bytes().to_vec(),
        DType::U8 | DType::Bool => vec![value as u8],
        DType::I32 => (value as i32).to_le_bytes().to_vec(),
        DType::I64 => (value as i64).to_le_bytes().to_vec(),
        DType::I4 | DType::U4 => vec![(value as i64 as u8) & 15],
        DType::Ggml(_) => return None,
    })
}

fn int(name: &str, i: i64) -> proto::AttributeProto {
    proto::AttributeProto {
        name: name.into(),
        r#type: proto::attribute_type::INT,
        i,
        ..Default::default()
    }
}

fn float(name: &str, f: f32) -> proto::AttributeProto {
    proto::AttributeProto {
        name: name.into(),
        r#type: proto::attribute_type::FLOAT,
        f,
        ..Default::default()
    }
}

fn ints<T: Copy + TryInto<i64>>(name: &str, v: &[T]) -> proto::AttributeProto {
    proto::AttributeProto {
        name: name.into(),
        r#type: proto::attribute_type::INTS,
        ints: v
            .iter()
            .map(|&x| x.try_into().unwrap_or(i64::MAX))
            .collect(),
        ..Default::default()
    }
}

fn string(name: &str, s: &str) -> proto::AttributeProto {
    proto::AttributeProto {
        name: name.into(),
        r#type: proto::attribute_type::STRING,
        s: s.as_bytes().to_vec(),
        ..Default::default()
    }
}
