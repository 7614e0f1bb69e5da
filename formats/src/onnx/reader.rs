//! ONNX reader: decodes a model and imports it into the IR graph.
//!
//! The file is memory-mapped. Initializers' raw bytes are located in the
//! protobuf wire format and borrowed from the map, so that the decoder
//! copies only the small messages (nodes, shapes). The graph is checked
//! (every value defined once, before use; sorted when the file's order is
//! not topological), its ops converted (see `import_ops`), then simplified
//! (see `import_simplify`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fs::File;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use edgec_core::{DType, Dim, Graph, Model, ModelMeta, Tensor, TensorData, ValueInfo};
use memmap2::Mmap;
use prost::Message;

use super::import_ops::{self, Ctx, Shape};
use super::import_simplify;
use super::import_tensor::{dtype_of, onnx_type_name, Consts, TensorReader};
use super::proto::{
    attribute_type as at, DimensionValue, GraphProto, ModelProto, NodeProto, TensorProto,
    ValueInfoProto,
};
use crate::{FormatError, Result};

/// The default domain's opsets the importer knows the semantics of.
pub const MIN_OPSET: i64 = 11;
pub const MAX_OPSET: i64 = 21;

/// Reads an ONNX model (and its external data) into a graph model.
pub fn read_model(path: &Path) -> Result<Model> {
    let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
    let len = file.metadata().map_err(|e| FormatError::io(path, e))?.len();
    if len == 0 {
        return Err(FormatError::invalid(path, "empty file, not an ONNX model"));
    }
    // SAFETY: the map is read-only; a file changed underneath us while
    // converting is outside what any converter can defend against.
    let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?);
    let decoded = decode(path, &map)?;
    let reader = TensorReader::new(path, map.clone())?;
    let mut model = import(path, decoded, &reader)?;
    // Shape arithmetic on static shapes and other constant subgraphs become
    // constants (quantized weights' Cast/Dequantize stay, by design).
    edgec_core::runtime::graph::fold_constants(&mut model)
        .map_err(|e| FormatError::invalid(path, format!("folding constants: {e}")))?;
    Ok(model)
}

// ---------------------------------------------------------------------------
// Wire format: just enough to find the initializers' raw_data.

struct Field {
    number: u64,
    wire: u64,
    /// The whole field, tag included.
    span: Range<usize>,
    /// A length-delimited field's payload.
    value: Range<usize>,
}

fn malformed(path: &Path, what: &str, pos: usize) -> FormatError {
    FormatError::invalid(
        path,
        format!("not an ONNX model: truncated or malformed protobuf in the {what} at byte {pos}"),
    )
}

fn varint(buf: &[u8], pos: &mut usize, end: usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        if *pos >= end {
            return None;
        }
        let b = buf[*pos];
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            // The tenth byte may only carry the top bit.
            return (shift < 63 || b <= 1).then_some(v);
        }
    }
    None
}

/// The fields of the message in `buf[range]`, checked against its bounds.
fn fields(path: &Path, buf: &[u8], range: Range<usize>, what: &str) -> Result<Vec<Field>> {
    let mut out = Vec::new();
    let mut pos = range.start;
    let end = range.end;
    while pos < end {
        let start = pos;
        let bad = || malformed(path, what, start);
        let tag = varint(buf, &mut pos, end).ok_or_else(bad)?;
        let (number, wire) = (tag >> 3, tag & 7);
        if number == 0 {
            return Err(bad());
        }
        let mut value = pos..pos;
        match wire {
            0 => {
                varint(buf, &mut pos, end).ok_or_else(bad)?;
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                pos = pos.checked_add(n).filter(|&p| p <= end).ok_or_else(bad)?;
            }
            2 => {
                let len = varint(buf, &mut pos, end).ok_or_else(bad)?;
                let stop = usize::try_from(len)
                    .ok()
                    .and_then(|l| pos.checked_add(l))
                    .filter(|&p| p <= end)
                    .ok_or_else(bad)?;
                value = pos..stop;
                pos = stop;
            }
            _ => return Err(bad()),
        }
        out.push(Field {
            number,
            wire,
            span: start..pos,
            value,
        });
    }
    Ok(out)
}

struct Decoded {
    model: ModelProto,
    graph: GraphProto,
    /// Each initializer, with where its raw_data lies in the file.
    initializers: Vec<(TensorProto, Option<Range<usize>>)>,
}

/// Decodes the model with prost, except the initializers' raw_data, which
/// is left in the file and located.
fn decode(path: &Path, buf: &[u8]) -> Result<Decoded> {
    const GRAPH: u64 = 7; // ModelProto.graph
    const INITIALIZER: u64 = 5; // GraphProto.initializer
    const RAW_DATA: u64 = 9; // TensorProto.raw_data
    const SPARSE_INITIALIZER: u64 = 15; // GraphProto.sparse_initializer
    let proto_err =
        |e: prost::DecodeError| FormatError::invalid(path, format!("not an ONNX model: {e}"));
    let mut rest = Vec::new();
    let mut graph_range = None;
    for f in fields(path, buf, 0..buf.len(), "model")? {
        if f.number == GRAPH && f.wire == 2 {
            if graph_range.replace(f.value).is_some() {
                return Err(FormatError::invalid(
                    path,
                    "the model has more than one graph",
                ));
            }
        } else {
            rest.extend_from_slice(&buf[f.span]);
        }
    }
    let model = ModelProto::decode(&rest[..]).map_err(proto_err)?;
    let graph_range =
        graph_range.ok_or_else(|| FormatError::invalid(path, "the model has no graph"))?;
    let mut rest = Vec::new();
    let mut initializers = Vec::new();
    for f in fields(path, buf, graph_range, "graph")? {
        if f.number == SPARSE_INITIALIZER {
            return Err(FormatError::invalid(
                path,
                "sparse initializers are not supported",
            ));
        }
        if f.number != INITIALIZER || f.wire != 2 {
            rest.extend_from_slice(&buf[f.span]);
            continue;
        }
        let mut meta = Vec::new();
        let mut raw = None;
        for tf in fields(path, buf, f.value, "initializer")? {
            if tf.number == RAW_DATA && tf.wire == 2 {
                raw = Some(tf.value);
            } else {
                meta.extend_from_slice(&buf[tf.span]);
            }
        }
        initializers.push((TensorProto::decode(&meta[..]).map_err(proto_err)?, raw));
    }
    let graph = GraphProto::decode(&rest[..]).map_err(proto_err)?;
    Ok(Decoded {
        model,
        graph,
        initializers,
    })
}

// ---------------------------------------------------------------------------
// Import.

/// The default domain's opset, checked to be one edgec reads. Other
/// domains are judged per node (only com.microsoft's MatMulNBits is read).
fn default_opset(path: &Path, model: &ModelProto) -> Result<i64> {
    let mut found = None;
    for o in &model.opset_import {
        if matches!(o.domain.as_str(), "" | "ai.onnx") {
            if found.is_some_and(|v| v != o.version) {
                return Err(FormatError::invalid(
                    path,
                    "the default ONNX domain is imported twice, with different opsets",
                ));
            }
            found = Some(o.version);
        }
    }
    let v = found.ok_or_else(|| {
        FormatError::invalid(
            path,
            "the model imports no opset of the default ONNX domain",
        )
    })?;
    if !(MIN_OPSET..=MAX_OPSET).contains(&v) {
        return Err(FormatError::invalid(
            path,
            format!(
                "opset {v} of the default ONNX domain is not supported (edgec reads opsets \
                 {MIN_OPSET} to {MAX_OPSET})"
            ),
        ));
    }
    Ok(v)
}

fn import(path: &Path, d: Decoded, reader: &TensorReader) -> Result<Model> {
    let err = |msg: String| FormatError::invalid(path, msg);
    let opset = default_opset(path, &d.model)?;
    let g = &d.graph;

    let mut consts = Consts::default();
    for (t, raw) in &d.initializers {
        if t.name.is_empty() {
            return Err(err("an initializer has no name".into()));
        }
        if !consts.insert(reader.read(t, raw.clone(), &t.name)?) {
            return Err(err(format!("initializer {} is defined twice", t.name)));
        }
    }

    // Graph inputs that are initializers are defaults (IR < 4): constants.
    let mut inputs = Vec::new();
    let mut input_names = HashSet::new();
    for v in g.input.iter().filter(|v| !consts.contains(&v.name)) {
        if !input_names.insert(v.name.clone()) {
            return Err(err(format!("graph input {} is listed twice", v.name)));
        }
        inputs.push(value_info(path, v, true)?);
    }

    // Constant nodes become constants; the others get a name if they lack one.
    let mut taken: HashSet<String> = g.node.iter().map(|n| n.name.clone()).collect();
    let mut made_up = Vec::with_capacity(g.node.len());
    for (i, n) in g.node.iter().enumerate() {
        let mut name = String::new();
        if n.name.is_empty() {
            name = format!("{}_{i}", n.op_type);
            while taken.contains(&name) {
                name.push('_');
            }
            taken.insert(name.clone());
        }
        made_up.push(name);
    }
    let mut nodes: Vec<(&str, &NodeProto)> = Vec::new();
    for (n, made) in g.node.iter().zip(&made_up) {
        let name = if n.name.is_empty() { made } else { &n.name };
        if n.op_type == "Constant" && matches!(n.domain.as_str(), "" | "ai.onnx") {
            let t = constant_node(path, reader, n, name)?;
            if input_names.contains(&t.name) || !consts.insert(t.clone()) {
                return Err(err(format!(
                    "value {} of Constant node \"{name}\" is defined twice",
                    t.name
                )));
            }
        } else {
            nodes.push((name, n));
        }
    }

    let order = topological_order(path, &nodes, |v| {
        input_names.contains(v) || consts.contains(v)
    })?;

    let mut used: HashSet<String> = nodes
        .iter()
        .flat_map(|(_, n)| n.input.iter().filter(|s| !s.is_empty()).cloned())
        .collect();
    used.extend(g.output.iter().map(|v| v.name.clone()));

    // Shapes known statically: graph inputs, value_info hints, then what
    // the ops propagate (auto_pad and a few defaults need them).
    let mut hints: HashMap<String, Shape> = HashMap::new();
    for v in g.value_info.iter().chain(&g.output) {
        if let Some(s) = hint_shape(v) {
            hints.insert(v.name.clone(), s);
        }
    }
    let mut shapes: HashMap<String, Shape> = HashMap::new();
    for v in &inputs {
        let s = v.fixed_dims();
        shapes.insert(v.name.clone(), s);
    }
    let domains: HashMap<String, i64> = d
        .model
        .opset_import
        .iter()
        .map(|o| (o.domain.clone(), o.version))
        .collect();
    let mut graph_nodes = Vec::with_capacity(order.len());
    for &i in &order {
        let (name, p) = nodes[i];
        let ctx = Ctx {
            path,
            opset,
            consts: &consts,
            reader,
            shapes: &shapes,
            used: &used,
            domains: &domains,
        };
        let node = import_ops::convert(&ctx, p, name)?;
        let inferred = import_ops::infer(&ctx, &node);
        for (k, out) in node.outputs.iter().enumerate() {
            let s = merge(inferred.get(k).cloned().flatten(), hints.get(out));
            if let Some(s) = s {
                shapes.insert(out.clone(), s);
            }
        }
        graph_nodes.push(node);
    }

    let produced: HashSet<&str> = graph_nodes
        .iter()
        .flat_map(|n| n.outputs.iter().map(String::as_str))
        .collect();
    let mut outputs = Vec::new();
    let mut output_names = HashSet::new();
    for v in &g.output {
        if !output_names.insert(v.name.as_str()) {
            return Err(err(format!("graph output {} is listed twice", v.name)));
        }
        if !produced.contains(v.name.as_str())
            && !input_names.contains(&v.name)
            && !consts.contains(&v.name)
        {
            return Err(err(format!(
                "graph output {} is not produced by any node (nor is it a graph input or a \
                 constant)",
                v.name
            )));
        }
        outputs.push(value_info(path, v, false)?);
    }
    if outputs.is_empty() {
        return Err(err("the graph has no outputs".into()));
    }

    let mut graph = Graph {
        inputs,
        outputs,
        nodes: graph_nodes,
    };
    import_simplify::fold_batchnorm(path, &mut graph, &mut consts)?;
    import_simplify::fuse_layernorm(&mut graph, &consts, &shapes);

    // Constants nothing reads any more (resolved axes, folded weights).
    let mut read: HashSet<String> = graph
        .nodes
        .iter()
        .flat_map(|n| n.inputs.iter().cloned())
        .collect();
    read.extend(graph.outputs.iter().map(|v| v.name.clone()));
    consts.retain(|name| read.contains(name));

    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Model {
        meta: ModelMeta {
            name,
            family: None,
            vocab: None,
        },
        tensors: consts.list,
        graph: Some(graph),
    })
}

/// Inferred dims where known, else the file's value_info hint (ignored
/// when its rank disagrees).
fn merge(inferred: Option<Shape>, hint: Option<&Shape>) -> Option<Shape> {
    match (inferred, hint) {
        (Some(s), Some(h)) if s.len() == h.len() => {
            Some(s.iter().zip(h).map(|(a, b)| a.or(*b)).collect())
        }
        (Some(s), _) => Some(s),
        (None, h) => h.cloned(),
    }
}

fn hint_shape(v: &ValueInfoProto) -> Option<Shape> {
    let shape = v.r#type.as_ref()?.tensor_type.as_ref()?.shape.as_ref()?;
    Some(
        shape
            .dim
            .iter()
            .map(|d| match d.value {
                Some(DimensionValue::DimValue(n)) => usize::try_from(n).ok(),
                _ => None,
            })
            .collect(),
    )
}

/// A graph input or output. Inputs need a shape; an output's may be absent.
fn value_info(path: &Path, v: &ValueInfoProto, input: bool) -> Result<ValueInfo> {
    let what = if input { "graph input" } else { "graph output" };
    let err = |msg: String| FormatError::invalid(path, format!("{what} {}: {msg}", v.name));
    if v.name.is_empty() {
        return Err(FormatError::invalid(path, format!("a {what} has no name")));
    }
    let tt = v
        .r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .ok_or_else(|| err("has no tensor type".into()))?;
    let dtype: DType = dtype_of(tt.elem_type).ok_or_else(|| {
        err(format!(
            "element type {} is not supported",
            onnx_type_name(tt.elem_type)
        ))
    })?;
    let shape = match &tt.shape {
        None if input => return Err(err("has no shape".into())),
        None => vec![],
        Some(s) => s
            .dim
            .iter()
            .enumerate()
            .map(|(i, d)| match &d.value {
                Some(DimensionValue::DimValue(n)) => usize::try_from(*n)
                    .map(Dim::Fixed)
                    .map_err(|_| err(format!("dimension {i} is negative ({n})"))),
                Some(DimensionValue::DimParam(p)) if !p.is_empty() => Ok(Dim::Named(p.clone())),
                // An unnamed dynamic dimension: a name of its own.
                _ => Ok(Dim::Named(format!("{}_dim{i}", v.name))),
            })
            .collect::<Result<_>>()?,
    };
    Ok(ValueInfo {
        name: v.name.clone(),
        dtype,
        shape,
    })
}

/// The tensor a Constant node defines (named after its output).
fn constant_node(path: &Path, reader: &TensorReader, n: &NodeProto, name: &str) -> Result<Tensor> {
    let err = |msg: &str| FormatError::invalid(path, format!("node \"{name}\" (Constant): {msg}"));
    if !n.input.is_empty() || n.output.len() != 1 || n.output[0].is_empty() {
        return Err(err("a Constant has no inputs and one output"));
    }
    let [a] = n.attribute.as_slice() else {
        return Err(err("a Constant has exactly one attribute, its value"));
    };
    let out = n.output[0].clone();
    let owned = |shape: Vec<usize>, dtype: DType, bytes: Vec<u8>| {
        Tensor::new(
            out.clone(),
            shape,
            dtype,
            TensorData::Owned(Arc::new(bytes)),
        )
        .map_err(|e| FormatError::invalid(path, e.to_string()))
    };
    match (a.name.as_str(), a.r#type) {
        ("value", at::TENSOR) => {
            let t = a.t.as_ref().ok_or_else(|| err("value has no tensor"))?;
            reader.read(t, None, &out)
        }
        ("value_float", at::FLOAT) => owned(vec![], DType::F32, a.f.to_le_bytes().to_vec()),
        ("value_floats", at::FLOATS) => owned(
            vec![a.floats.len()],
            DType::F32,
            a.floats.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        ("value_int", at::INT) => owned(vec![], DType::I64, a.i.to_le_bytes().to_vec()),
        ("value_ints", at::INTS) => owned(
            vec![a.ints.len()],
            DType::I64,
            a.ints.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        (other, _) => Err(err(&format!(
            "attribute {other} (type {}) is not a supported constant value",
            a.r#type
        ))),
    }
}

/// An order of `nodes` in which every input is defined before it is read,
/// the file's own when it already is one. Checks that every value is
/// produced once and every input is defined somewhere.
fn topological_order(
    path: &Path,
    nodes: &[(&str, &NodeProto)],
    defined: impl Fn(&str) -> bool,
) -> Result<Vec<usize>> {
    let err = |msg: String| FormatError::invalid(path, msg);
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, (name, n)) in nodes.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            if defined(o) {
                return Err(err(format!(
                    "node \"{name}\" writes {o}, which is already a graph input or a constant"
                )));
            }
            if let Some(j) = producer.insert(o, i) {
                return Err(err(format!(
                    "value {o} is produced twice, by nodes \"{}\" and \"{name}\"",
                    nodes[j].0
                )));
            }
        }
    }
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(nodes.len());
    for (name, n) in nodes {
        let mut d = Vec::new();
        for inp in n.input.iter().filter(|s| !s.is_empty()) {
            match producer.get(inp.as_str()) {
                Some(&j) => d.push(j),
                None if defined(inp) => {}
                None => {
                    return Err(err(format!(
                        "node \"{name}\" reads {inp}, which is not a graph input, a constant \
                         or any node's output"
                    )))
                }
            }
        }
        d.sort_unstable();
        d.dedup();
        deps.push(d);
    }
    if deps
        .iter()
        .enumerate()
        .all(|(i, d)| d.iter().all(|&j| j < i))
    {
        return Ok((0..nodes.len()).collect());
    }
    // Kahn's algorithm, taking ready nodes in file order.
    let mut pending: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, d) in deps.iter().enumerate() {
        for &j in d {
            readers[j].push(i);
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> = (0..nodes.len())
        .filter(|&i| pending[i] == 0)
        .map(Reverse)
        .collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for &r in &readers[i] {
            pending[r] -= 1;
            if pending[r] == 0 {
                ready.push(Reverse(r));
            }
        }
    }
    if order.len() == nodes.len() {
        return Ok(order);
    }
    // Walk back through unfinished producers until a node repeats: it lies
    // on a cycle.
    // (An unfinished node always waits on an unfinished producer.)
    let mut at = (0..nodes.len()).find(|&i| pending[i] > 0);
    let mut seen = HashSet::new();
    while let Some(i) = at.filter(|&i| seen.insert(i)) {
        at = deps[i].iter().copied().find(|&j| pending[j] > 0);
    }
    let on_cycle = at.map_or("?", |i| nodes[i].0);
    Err(err(format!(
        "the graph has a cycle through node \"{on_cycle}\""
    )))
}
