//! TFLite reader: a `.tflite` file into an IR graph model that edgec's
//! interpreter runs.
//!
//! The flatbuffer is checked by the generated verifier (after the `TFL3`
//! identifier); every tensor, buffer and operator index, every shape and
//! every data length (inline or at Buffer.offset/size) is checked before
//! use. Graph inputs and outputs take their SignatureDef names when there
//! is one. Tensors keep TFLite's layout: NHWC convolutions and pools become
//! Transpose → Conv/Pool (NCHW) → Transpose, with the transposes made only
//! where another op needs the NHWC value; weights are permuted to ONNX's
//! order at read. DEQUANTIZE of a constant (float16, or int8 with scales)
//! is folded into an f32 constant. Fused activations become Relu or Clip
//! nodes.
//!
//! Quantized files read back as their integer simulation. Int8 CONV_2D,
//! DEPTHWISE_CONV_2D, FULLY_CONNECTED, ADD and MEAN run LiteRT's integer
//! arithmetic bit for bit (see `integer`). Any other op with an int8
//! output is the float op through QuantizeLinear → DequantizeLinear with
//! the tensor's parameters, so consumers read the exact values the integer
//! tensor holds; int8 weights and int32 biases of those ops are
//! DequantizeLinear of the integer constants (per channel where the file
//! has per-axis parameters). QUANTIZE is that pair; DEQUANTIZE of an
//! activation an identity. Hybrid (dynamic-range) ops are the float op on
//! the dequantized weights. Integer graph inputs are dequantized first, and
//! integer graph outputs quantized last.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use edgec_core::{
    DType, Dim, Graph, Model, ModelMeta, Node, Op, PadMode, Tensor, TensorData, ValueInfo, Window,
};
use memmap2::Mmap;

use super::model::{
    elem_size, ir_type, transpose_bytes, Act, BuiltinOperator as B, Padding, TensorType,
};
use super::schema as fb;
use crate::{FormatError, Result};

mod integer;

type Res<T> = std::result::Result<T, String>;

/// Reads a `.tflite` file into a graph model.
pub fn read_model(path: &Path) -> Result<Model> {
    let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
    let len = file.metadata().map_err(|e| FormatError::io(path, e))?.len();
    if len < 8 {
        return Err(FormatError::invalid(path, "too short to be a TFLite file"));
    }
    // SAFETY: read-only map; see the ONNX reader.
    let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?);
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut model = parse(&map, name).map_err(|e| FormatError::invalid(path, e))?;
    edgec_core::runtime::graph::fold_constants(&mut model)
        .map_err(|e| FormatError::invalid(path, format!("folding constants: {e}")))?;
    Ok(model)
}

/// Scales, zero points and the axis they run along.
type QuantParams = (Vec<f32>, Vec<i64>, usize);

/// A checked tensor of the file.
struct TInfo {
    shape: Vec<usize>,
    dtype: TensorType,
    /// (offset, len) of constant data in the file.
    data: Option<(usize, usize)>,
    quant: Option<QuantParams>,
}

fn parse(map: &Arc<Mmap>, name: String) -> Res<Model> {
    let buf: &[u8] = map;
    if &buf[4..8] != b"TFL3" {
        return Err("not a TFLite file (no TFL3 identifier)".into());
    }
    let fb_len = buf.len().min(i32::MAX as usize);
    let opts = flatbuffers::VerifierOptions {
        max_tables: 100_000_000,
        ..Default::default()
    };
    let model = fb::root_as_model_with_opts(&opts, &buf[..fb_len]).map_err(|e| {
        let msg = e.to_string();
        let lines: Vec<&str> = msg
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        format!("invalid TFLite flatbuffer: {}", lines.join("; "))
    })?;
    let subgraphs = model.subgraphs().ok_or("the model has no subgraph")?;
    if subgraphs.is_empty() {
        return Err("the model has no subgraph".into());
    }
    let sg = subgraphs.get(0);
    let buffers = model.buffers();
    let nbuf = buffers.map_or(0, |b| b.len());
    let ftensors = sg.tensors().ok_or("the subgraph has no tensors")?;

    let mut infos = Vec::with_capacity(ftensors.len());
    let mut tnames = Vec::with_capacity(ftensors.len());
    // (tensor, dense bytes) of sparse constants
    let mut sparse: Vec<(usize, Vec<u8>)> = Vec::new();
    for (i, t) in ftensors.iter().enumerate() {
        let tname = t.name().unwrap_or("").to_string();
        let what = || format!("tensor {i} ({tname})");
        let shape: Vec<usize> = match t.shape() {
            Some(s) => s
                .iter()
                .map(|d| usize::try_from(d).map_err(|_| format!("{}: dimension {d}", what())))
                .collect::<Res<_>>()?,
            None => vec![],
        };
        let numel = edgec_core::tensor::checked_numel(&shape)
            .filter(|&n| n < 1 << 40)
            .ok_or_else(|| format!("{}: shape {shape:?} is too large", what()))?;
        let dtype = t.type_();
        let b = t.buffer() as usize;
        if b >= nbuf.max(1) && b != 0 {
            return Err(format!("{}: buffer {b} of {nbuf}", what()));
        }
        let mut data = None;
        if b != 0 {
            let buffer = buffers.expect("counted").get(b);
            let (off, len) = match buffer.data() {
                Some(d) if !d.is_empty() => {
                    let off = d.bytes().as_ptr() as usize - buf.as_ptr() as usize;
                    (off, d.len())
                }
                _ if buffer.offset() > 1 => {
                    let (o, s) = (buffer.offset(), buffer.size());
                    if o.checked_add(s).is_none_or(|end| end > buf.len() as u64) {
                        return Err(format!(
                            "{}: buffer {b} at offset {o} size {s} is past the end of the file ({} bytes)",
                            what(),
                            buf.len()
                        ));
                    }
                    (o as usize, s as usize)
                }
                _ => (0, 0),
            };
            if let (Some(sp), true) = (t.sparsity(), len > 0) {
                // sparse storage (DENSIFY's input): read dense now
                let elem = elem_size(dtype)
                    .ok_or_else(|| format!("{}: type {:?} is not supported", what(), dtype))?;
                let dense = densify(&shape, sp, &buf[off..off + len], elem)
                    .map_err(|e| format!("{}: sparse storage: {e}", what()))?;
                sparse.push((i, dense));
            } else if len > 0 || (numel == 0 && buffer.offset() > 1) {
                let elem = elem_size(dtype)
                    .ok_or_else(|| format!("{}: type {:?} is not supported", what(), dtype))?;
                if numel * elem != len {
                    return Err(format!(
                        "{}: {:?} {shape:?} needs {} bytes, its buffer has {len}",
                        what(),
                        dtype,
                        numel * elem
                    ));
                }
                data = Some((off, len));
            }
        }
        let quant = t.quantization().and_then(|q| {
            let scale: Vec<f32> = q.scale()?.iter().collect();
            let zp: Vec<i64> = q
                .zero_point()
                .map(|z| z.iter().collect())
                .unwrap_or_default();
            Some((scale, zp, q.quantized_dimension().max(0) as usize))
        });
        infos.push(TInfo {
            shape,
            dtype,
            data,
            quant,
        });
        tnames.push(tname);
    }

    // operator codes: max(builtin_code, deprecated_builtin_code)
    let codes: Vec<B> = model
        .operator_codes()
        .map(|v| {
            v.iter()
                .map(|c| {
                    if c.custom_code().is_some() {
                        B(-1)
                    } else {
                        B(c.builtin_code().0.max(c.deprecated_builtin_code() as i32))
                    }
                })
                .collect()
        })
        .unwrap_or_default();

    // names: signature names for the graph's inputs and outputs
    let n = infos.len();
    let idx = |v: i32, what: &str| -> Res<usize> {
        usize::try_from(v)
            .ok()
            .filter(|&v| v < n)
            .ok_or_else(|| format!("{what} refers to tensor {v} of {n}"))
    };
    let inputs: Vec<usize> = sg
        .inputs()
        .map(|v| {
            v.iter()
                .map(|t| idx(t, "a graph input"))
                .collect::<Res<_>>()
        })
        .transpose()?
        .unwrap_or_default();
    let outputs: Vec<usize> = sg
        .outputs()
        .map(|v| {
            v.iter()
                .map(|t| idx(t, "a graph output"))
                .collect::<Res<_>>()
        })
        .transpose()?
        .unwrap_or_default();
    let mut sig_name: HashMap<usize, String> = HashMap::new();
    if let Some(sigs) = model.signature_defs() {
        if let Some(sig) = sigs.iter().find(|s| s.subgraph_index() == 0) {
            for list in [sig.inputs(), sig.outputs()].into_iter().flatten() {
                for m in list {
                    let t = m.tensor_index() as usize;
                    if t < n {
                        if let Some(nm) = m.name() {
                            sig_name.insert(t, nm.to_string());
                        }
                    }
                }
            }
        }
    }
    let mut used: HashSet<String> = HashSet::new();
    let mut names = vec![String::new(); n];
    for &t in inputs.iter().chain(&outputs) {
        if names[t].is_empty() {
            let base = sig_name
                .get(&t)
                .cloned()
                .unwrap_or_else(|| tnames[t].clone());
            names[t] = unique(
                &mut used,
                if base.is_empty() {
                    format!("t{t}")
                } else {
                    base
                },
            );
        }
    }
    for t in 0..n {
        if names[t].is_empty() {
            let base = if tnames[t].is_empty() {
                format!("t{t}")
            } else {
                tnames[t].clone()
            };
            names[t] = unique(&mut used, base);
        }
    }

    let mut r = Reader {
        map: map.clone(),
        infos,
        names,
        used,
        canon: vec![None; n],
        nchw: vec![None; n],
        codes: vec![None; n],
        codes_nchw: vec![None; n],
        consts: vec![None; n],
        tensors: Vec::new(),
        nodes: Vec::new(),
    };
    for (t, dense) in sparse {
        let dtype = ir_type(r.infos[t].dtype).ok_or_else(|| {
            format!(
                "constant {}: type {:?} is not supported",
                r.names[t], r.infos[t].dtype
            )
        })?;
        let name = r.names[t].clone();
        let shape = r.infos[t].shape.clone();
        r.add_const(name, shape, dtype, owned(dense))?;
        r.consts[t] = Some(r.tensors.len() - 1);
    }
    let mut graph_inputs = Vec::new();
    for &t in &inputs {
        let info = &r.infos[t];
        let dtype = ir_type(info.dtype).ok_or_else(|| {
            format!(
                "input {}: type {:?} is not supported",
                r.names[t], info.dtype
            )
        })?;
        graph_inputs.push(ValueInfo {
            name: r.names[t].clone(),
            dtype,
            shape: info.shape.iter().map(|&d| Dim::Fixed(d)).collect(),
        });
        r.canon[t] = Some(r.names[t].clone());
        // an integer input is dequantized for the float ops
        if let Some(params) = r.act_quant(t)? {
            let x = r.names[t].clone();
            r.codes[t] = Some(x.clone());
            let out = r.fresh(&format!("{x}.dequantized"));
            r.dequantize_into(x, params, out.clone())?;
            r.canon[t] = Some(out);
        }
    }
    // integer outputs: the float value under another name, quantized last
    let mut int_outputs: HashMap<usize, String> = HashMap::new();
    for &t in &outputs {
        if r.act_quant(t)?.is_some() && !int_outputs.contains_key(&t) && !inputs.contains(&t) {
            let orig = r.names[t].clone();
            r.names[t] = r.fresh(&format!("{orig}.dequantized"));
            int_outputs.insert(t, orig);
        }
    }
    let ops = sg
        .operators()
        .map(|o| o.iter().collect::<Vec<_>>())
        .unwrap_or_default();
    for (k, op) in ops.iter().enumerate() {
        let ci = op.opcode_index() as usize;
        let code = *codes
            .get(ci)
            .ok_or_else(|| format!("operator {k} has opcode index {ci} of {}", codes.len()))?;
        let ins: Vec<Option<usize>> = op
            .inputs()
            .map(|v| {
                v.iter()
                    .map(|t| {
                        if t < 0 {
                            Ok(None)
                        } else {
                            idx(t, &format!("operator {k}")).map(Some)
                        }
                    })
                    .collect::<Res<_>>()
            })
            .transpose()?
            .unwrap_or_default();
        let outs: Vec<usize> = op
            .outputs()
            .map(|v| {
                v.iter()
                    .map(|t| idx(t, &format!("operator {k}")))
                    .collect::<Res<_>>()
            })
            .transpose()?
            .unwrap_or_default();
        if outs.len() != 1 {
            return Err(format!(
                "operator {k} ({}) has {} outputs (one supported)",
                op_name(code),
                outs.len()
            ));
        }
        r.op(code, *op, &ins, outs[0])
            .map_err(|e| format!("operator {k} ({}): {e}", op_name(code)))?;
    }
    let mut graph_outputs = Vec::new();
    for &t in &outputs {
        let v = r.val(t)?;
        let shape: Vec<Dim> = r.infos[t].shape.iter().map(|&d| Dim::Fixed(d)).collect();
        let dtype = ir_type(r.infos[t].dtype).ok_or_else(|| {
            format!(
                "output {}: type {:?} is not supported",
                r.names[t], r.infos[t].dtype
            )
        })?;
        if let Some(orig) = int_outputs.get(&t) {
            let params = r.act_quant(t)?.expect("checked above");
            r.quantize_into(v, params, orig.clone())?;
            graph_outputs.push(ValueInfo {
                name: orig.clone(),
                dtype,
                shape,
            });
            continue;
        }
        if v != r.names[t] {
            let out = r.names[t].clone();
            r.nodes.push(Node {
                name: out.clone(),
                op: Op::Identity,
                inputs: vec![v],
                outputs: vec![out],
            });
        }
        graph_outputs.push(ValueInfo {
            name: r.names[t].clone(),
            dtype,
            shape,
        });
    }
    Ok(Model {
        meta: ModelMeta {
            name,
            family: None,
            vocab: None,
        },
        tensors: r.tensors,
        graph: Some(Graph {
            inputs: graph_inputs,
            outputs: graph_outputs,
            nodes: r.nodes,
        }),
    })
}

fn unique(used: &mut HashSet<String>, base: String) -> String {
    let mut n = base.clone();
    let mut k = 1;
    while used.contains(&n) {
        n = format!("{base}_{k}");
        k += 1;
    }
    used.insert(n.clone());
    n
}

/// The dense bytes of a sparse constant of `shape` (`elem` bytes per
/// element): TFLite's SparsityParameters without blocks, each level of the
/// traversal order DENSE or SPARSE_CSR, walked as TFLite's format converter
/// walks it (a dense level's children are `parent · size + i`, a sparse
/// level's are the positions `segments[parent]..segments[parent + 1]`).
fn densify(
    shape: &[usize],
    sp: fb::SparsityParameters,
    values: &[u8],
    elem: usize,
) -> Res<Vec<u8>> {
    enum Level {
        Dense(usize),
        Csr(Vec<usize>, Vec<usize>),
    }
    // an index vector as usize, whichever of the three types it is stored in
    macro_rules! index_vector {
        ($d:expr, $i32:ident, $u16:ident, $u8:ident) => {
            if let Some(v) = $d.$i32().and_then(|v| v.values()) {
                Ok(v.iter().map(|x| x.max(0) as usize).collect::<Vec<usize>>())
            } else if let Some(v) = $d.$u16().and_then(|v| v.values()) {
                Ok(v.iter().map(|x| x as usize).collect())
            } else if let Some(v) = $d.$u8().and_then(|v| v.values()) {
                Ok(v.iter().map(|x| x as usize).collect())
            } else {
                Err("a sparse dimension without its index vectors".to_string())
            }
        };
    }
    let rank = shape.len();
    let order: Vec<usize> = sp
        .traversal_order()
        .ok_or("no traversal order")?
        .iter()
        .map(|d| usize::try_from(d).map_err(|_| format!("traversal order {d}")))
        .collect::<Res<_>>()?;
    let mut sorted = order.clone();
    sorted.sort_unstable();
    if order.len() != rank || sorted != (0..rank).collect::<Vec<_>>() {
        return Err(format!(
            "traversal order {order:?} of a rank-{rank} tensor (block sparsity is not supported)"
        ));
    }
    let dims = sp.dim_metadata().ok_or("no dimension metadata")?;
    if dims.len() != rank {
        return Err(format!("{} dimension metadata for rank {rank}", dims.len()));
    }
    let mut levels = Vec::with_capacity(rank);
    for (k, d) in dims.iter().enumerate() {
        levels.push(match d.format() {
            fb::DimensionType::DENSE => {
                if d.dense_size() as usize != shape[order[k]] {
                    return Err(format!("dense dimension {k} of size {}", d.dense_size()));
                }
                Level::Dense(shape[order[k]])
            }
            fb::DimensionType::SPARSE_CSR => Level::Csr(
                index_vector!(
                    d,
                    array_segments_as_int_32_vector,
                    array_segments_as_uint_16_vector,
                    array_segments_as_uint_8_vector
                )?,
                index_vector!(
                    d,
                    array_indices_as_int_32_vector,
                    array_indices_as_uint_16_vector,
                    array_indices_as_uint_8_vector
                )?,
            ),
            f => return Err(format!("dimension type {f:?}")),
        });
    }
    let numel: usize = shape.iter().product();
    let mut strides = vec![1usize; rank];
    for i in (0..rank.saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    let mut out = vec![0u8; numel * elem];
    // (position at this level, dense offset so far), level by level
    let mut nodes: Vec<(usize, usize)> = vec![(0, 0)];
    for (k, level) in levels.iter().enumerate() {
        let stride = strides[order[k]];
        let mut next = Vec::new();
        for (pos, offset) in nodes {
            match level {
                Level::Dense(n) => {
                    for i in 0..*n {
                        next.push((pos * n + i, offset + i * stride));
                    }
                }
                Level::Csr(segments, indices) => {
                    let (a, b) = (segments.get(pos), segments.get(pos + 1));
                    let (Some(&a), Some(&b)) = (a, b) else {
                        return Err(format!("dimension {k}: segment {pos} is missing"));
                    };
                    if a > b || b > indices.len() {
                        return Err(format!("dimension {k}: segment {pos} is {a}..{b}"));
                    }
                    for (p, &i) in indices.iter().enumerate().take(b).skip(a) {
                        if i >= shape[order[k]] {
                            return Err(format!("dimension {k}: index {i} of {}", shape[order[k]]));
                        }
                        next.push((p, offset + i * stride));
                    }
                }
            }
        }
        nodes = next;
    }
    if nodes.len() * elem != values.len() {
        return Err(format!(
            "{} stored values, the buffer holds {} bytes",
            nodes.len(),
            values.len()
        ));
    }
    for (pos, offset) in nodes {
        if pos * elem + elem > values.len() {
            return Err(format!("value {pos} is past the buffer"));
        }
        out[offset * elem..(offset + 1) * elem]
            .copy_from_slice(&values[pos * elem..(pos + 1) * elem]);
    }
    Ok(out)
}

fn op_name(code: B) -> String {
    code.variant_name().map(str::to_string).unwrap_or_else(|| {
        if code.0 < 0 {
            "custom op".into()
        } else {
            format!("builtin op {}", code.0)
        }
    })
}

struct Reader {
    map: Arc<Mmap>,
    infos: Vec<TInfo>,
    names: Vec<String>,
    used: HashSet<String>,
    /// The IR value holding tensor t in TFLite's layout.
    canon: Vec<Option<String>>,
    /// The IR value holding a 4-D tensor t in NCHW.
    nchw: Vec<Option<String>>,
    /// The integer codes of quantized activation t, in TFLite's layout and
    /// in NCHW (see `integer`).
    codes: Vec<Option<String>>,
    codes_nchw: Vec<Option<String>>,
    /// The index in `tensors` of a constant (or folded) tensor.
    consts: Vec<Option<usize>>,
    tensors: Vec<Tensor>,
    nodes: Vec<Node>,
}

/// An integer type the simulation quantizes activations to.
fn int_act_type(t: TensorType) -> Option<DType> {
    match t {
        TensorType::INT8 => Some(DType::I8),
        TensorType::INT16 => Some(DType::I16),
        TensorType::UINT8 => Some(DType::U8),
        _ => None,
    }
}

fn f32s_of(t: &Tensor) -> Res<Vec<f32>> {
    t.to_f32().map_err(|e| e.to_string())
}

fn owned(v: Vec<u8>) -> TensorData {
    TensorData::Owned(Arc::new(v))
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Reader {
    fn fresh(&mut self, base: &str) -> String {
        unique(&mut self.used, base.to_string())
    }

    fn emit(&mut self, op: Op, inputs: Vec<String>, out: String) {
        self.nodes.push(Node {
            name: out.clone(),
            op,
            inputs,
            outputs: vec![out],
        });
    }

    fn add_const(
        &mut self,
        name: String,
        shape: Vec<usize>,
        dtype: DType,
        data: TensorData,
    ) -> Res<String> {
        let t = Tensor::new(name.clone(), shape, dtype, data).map_err(|e| e.to_string())?;
        self.tensors.push(t);
        Ok(name)
    }

    fn const_i64(&mut self, base: &str, v: &[i64]) -> Res<String> {
        let name = self.fresh(base);
        self.add_const(
            name,
            vec![v.len()],
            DType::I64,
            owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        )
    }

    fn const_scalar(&mut self, base: &str, v: f32) -> Res<String> {
        let name = self.fresh(base);
        self.add_const(name, vec![], DType::F32, owned(v.to_le_bytes().to_vec()))
    }

    fn is_const(&self, t: usize) -> bool {
        self.consts[t].is_some() || self.infos[t].data.is_some()
    }

    /// The model tensor of constant t (its raw type).
    fn const_tensor(&mut self, t: usize) -> Res<Tensor> {
        if let Some(k) = self.consts[t] {
            return Ok(self.tensors[k].clone());
        }
        let info = &self.infos[t];
        let (off, len) = info
            .data
            .ok_or_else(|| format!("tensor {} is not a constant", self.names[t]))?;
        let dtype = ir_type(info.dtype).ok_or_else(|| {
            format!(
                "constant {}: type {:?} is not supported",
                self.names[t], info.dtype
            )
        })?;
        let tensor = Tensor::new(
            self.names[t].clone(),
            info.shape.clone(),
            dtype,
            TensorData::Mapped {
                map: self.map.clone(),
                offset: off,
                len,
            },
        )
        .map_err(|e| e.to_string())?;
        self.tensors.push(tensor.clone());
        self.consts[t] = Some(self.tensors.len() - 1);
        Ok(tensor)
    }

    /// (scale, zero point, integer type) of a quantized activation tensor.
    fn act_quant(&self, t: usize) -> Res<Option<(f32, i64, DType)>> {
        let info = &self.infos[t];
        let Some(dt) = int_act_type(info.dtype) else {
            return Ok(None);
        };
        if info.data.is_some() {
            return Ok(None);
        }
        let Some((scale, zp, _)) = &info.quant else {
            return Ok(None);
        };
        match scale.as_slice() {
            [] => Ok(None),
            [s] if s.is_finite() && *s > 0.0 => {
                Ok(Some((*s, zp.first().copied().unwrap_or(0), dt)))
            }
            [s] => Err(format!("tensor {}: scale {s}", self.names[t])),
            _ => Err(format!(
                "tensor {}: per-axis parameters on an activation are not supported",
                self.names[t]
            )),
        }
    }

    /// Scale (and zero point, when not 0) constants of a per-tensor
    /// Quantize/DequantizeLinear.
    fn qdq_params(&mut self, base: &str, scale: f32, zp: i64, dt: DType) -> Res<Vec<String>> {
        let s = self.const_scalar(&format!("{base}.scale"), scale)?;
        if zp == 0 {
            return Ok(vec![s]);
        }
        let (lo, hi) = match dt {
            DType::I8 => (i8::MIN as i64, i8::MAX as i64),
            DType::I16 => (i16::MIN as i64, i16::MAX as i64),
            _ => (0, u8::MAX as i64),
        };
        if zp < lo || zp > hi {
            return Err(format!("{base}: zero point {zp} is out of range for {dt}"));
        }
        let bytes = match dt {
            DType::I16 => (zp as i16).to_le_bytes().to_vec(),
            _ => vec![zp as u8],
        };
        let name = self.fresh(&format!("{base}.zero_point"));
        let z = self.add_const(name, vec![], dt, owned(bytes))?;
        Ok(vec![s, z])
    }

    /// DequantizeLinear of integer constant `codes` (shape `shape`) with
    /// parameters per tensor or along `axis`.
    fn dequantize_codes(
        &mut self,
        base: &str,
        codes: String,
        quant: &QuantParams,
        axis: usize,
        dt: DType,
    ) -> Res<String> {
        let (scale, zp, _) = quant;
        let shape = if scale.len() == 1 {
            vec![]
        } else {
            vec![scale.len()]
        };
        if scale.iter().any(|s| !s.is_finite()) {
            return Err(format!("{base}: scales must be finite"));
        }
        let sn = self.fresh(&format!("{base}.scale"));
        self.add_const(
            sn.clone(),
            shape.clone(),
            DType::F32,
            owned(f32_bytes(scale)),
        )?;
        let mut inputs = vec![codes, sn];
        if zp.iter().any(|&z| z != 0) {
            if !matches!(dt, DType::I8 | DType::U8) {
                return Err(format!(
                    "{base}: zero points on {dt} constants are not supported"
                ));
            }
            let z: Vec<u8> = (0..scale.len())
                .map(|c| zp.get(c).or(zp.first()).copied().unwrap_or(0) as u8)
                .collect();
            let zn = self.fresh(&format!("{base}.zero_point"));
            self.add_const(zn.clone(), shape, dt, owned(z))?;
            inputs.push(zn);
        }
        let out = self.fresh(&format!("{base}.dequantized"));
        self.emit(
            Op::DequantizeLinear {
                axis: axis as i64,
                block_size: 0,
            },
            inputs,
            out.clone(),
        );
        Ok(out)
    }

    /// The quantization of integer constant t, checked against its shape.
    fn const_quant(&self, t: usize) -> Res<Option<QuantParams>> {
        let info = &self.infos[t];
        if info.data.is_none()
            || !matches!(
                info.dtype,
                TensorType::INT8
                    | TensorType::UINT8
                    | TensorType::INT16
                    | TensorType::INT32
                    | TensorType::INT64
            )
        {
            return Ok(None);
        }
        let Some(q) = info.quant.clone().filter(|q| !q.0.is_empty()) else {
            return Ok(None);
        };
        if q.0.len() > 1 && info.shape.get(q.2) != Some(&q.0.len()) {
            return Err(format!(
                "constant {}: {} scales for axis {} of {:?}",
                self.names[t],
                q.0.len(),
                q.2,
                info.shape
            ));
        }
        Ok(Some(q))
    }

    fn ints(&mut self, t: usize) -> Res<Vec<i64>> {
        let c = self.const_tensor(t)?;
        let b = c.bytes();
        Ok(match c.dtype {
            DType::I32 => b
                .chunks_exact(4)
                .map(|x| i32::from_le_bytes(x.try_into().expect("4")) as i64)
                .collect(),
            DType::I64 => b
                .chunks_exact(8)
                .map(|x| i64::from_le_bytes(x.try_into().expect("8")))
                .collect(),
            d => return Err(format!("tensor {} holds {d}, not integers", self.names[t])),
        })
    }

    /// Tensor t in TFLite's layout.
    fn val(&mut self, t: usize) -> Res<String> {
        if let Some(v) = &self.canon[t] {
            return Ok(v.clone());
        }
        if self.is_const(t) {
            let c = self.const_tensor(t)?;
            let v = match self.const_quant(t)? {
                Some(q) => {
                    let axis = q.2;
                    self.dequantize_codes(&c.name, c.name.clone(), &q, axis, c.dtype)?
                }
                None => c.name,
            };
            self.canon[t] = Some(v.clone());
            return Ok(v);
        }
        if let Some(x) = self.nchw[t].clone() {
            let out = self.names[t].clone();
            self.emit(
                Op::Transpose {
                    perm: vec![0, 2, 3, 1],
                },
                vec![x],
                out.clone(),
            );
            self.canon[t] = Some(out.clone());
            return Ok(out);
        }
        Err(format!(
            "tensor {} is read before it is computed",
            self.names[t]
        ))
    }

    /// 4-D tensor t (NHWC in the file) as NCHW.
    fn val_nchw(&mut self, t: usize) -> Res<String> {
        if let Some(v) = &self.nchw[t] {
            return Ok(v.clone());
        }
        if self.infos[t].shape.len() != 4 {
            return Err(format!("tensor {} is not 4-D", self.names[t]));
        }
        let x = self.val(t)?;
        let out = self.fresh(&format!("{}.nchw", self.names[t]));
        self.emit(
            Op::Transpose {
                perm: vec![0, 3, 1, 2],
            },
            vec![x],
            out.clone(),
        );
        self.nchw[t] = Some(out.clone());
        Ok(out)
    }

    /// Emits `op` into output tensor `o` (in TFLite layout unless `nchw`),
    /// followed by its fused activation.
    fn finish(&mut self, op: Op, inputs: Vec<String>, o: usize, act: Act, nchw: bool) -> Res<()> {
        let quant = self.act_quant(o)?;
        let target = match (quant, nchw) {
            (Some(_), _) => self.fresh(&format!("{}.float", self.names[o])),
            (None, true) => self.fresh(&format!("{}.nchw", self.names[o])),
            (None, false) => self.names[o].clone(),
        };
        if act == Act::NONE {
            self.emit(op, inputs, target.clone());
        } else {
            let raw = self.fresh(&format!("{target}.pre"));
            self.emit(op, inputs, raw.clone());
            match act {
                Act::RELU => self.emit(Op::Relu, vec![raw], target.clone()),
                Act::RELU6 | Act::RELU_N1_TO_1 => {
                    let (lo, hi) = if act == Act::RELU6 {
                        (0.0, 6.0)
                    } else {
                        (-1.0, 1.0)
                    };
                    let lo = self.const_scalar("edgec.clip_min", lo)?;
                    let hi = self.const_scalar("edgec.clip_max", hi)?;
                    self.emit(Op::Clip, vec![raw, lo, hi], target.clone());
                }
                Act::TANH => self.emit(Op::Tanh, vec![raw], target.clone()),
                other => return Err(format!("fused activation {other:?} is not supported")),
            }
        }
        if let Some(params) = quant {
            // the integer tensor, as consumers see it
            let q = self.fresh(&format!("{}.quantized", self.names[o]));
            self.quantize_into(target, params, q.clone())?;
            return self.finish_codes(q, o, nchw);
        }
        if nchw {
            self.nchw[o] = Some(target);
        } else {
            self.canon[o] = Some(target);
        }
        Ok(())
    }

    fn input(&self, ins: &[Option<usize>], k: usize) -> Res<usize> {
        ins.get(k)
            .copied()
            .flatten()
            .ok_or_else(|| format!("input {k} is missing"))
    }

    fn op(&mut self, code: B, op: fb::Operator, ins: &[Option<usize>], o: usize) -> Res<()> {
        let unary = |r: &mut Self, ir: Op| -> Res<()> {
            let x = r.input(ins, 0)?;
            let x = r.val(x)?;
            r.finish(ir, vec![x], o, Act::NONE, false)
        };
        let binary = |r: &mut Self, ir: Op, act: Act| -> Res<()> {
            let a = r.input(ins, 0)?;
            let b = r.input(ins, 1)?;
            let (a, b) = (r.val(a)?, r.val(b)?);
            r.finish(ir, vec![a, b], o, act, false)
        };
        if code == B::ADD {
            let (a, b) = (self.input(ins, 0)?, self.input(ins, 1)?);
            let act = op
                .builtin_options_as_add_options()
                .map_or(Act::NONE, |x| x.fused_activation_function());
            if self.int_add(a, b, o, act)? {
                return Ok(());
            }
        }
        match code {
            B::ADD => binary(
                self,
                Op::Add,
                op.builtin_options_as_add_options()
                    .map_or(Act::NONE, |x| x.fused_activation_function()),
            ),
            B::SUB => binary(
                self,
                Op::Sub,
                op.builtin_options_as_sub_options()
                    .map_or(Act::NONE, |x| x.fused_activation_function()),
            ),
            B::MUL => binary(
                self,
                Op::Mul,
                op.builtin_options_as_mul_options()
                    .map_or(Act::NONE, |x| x.fused_activation_function()),
            ),
            B::DIV => binary(
                self,
                Op::Div,
                op.builtin_options_as_div_options()
                    .map_or(Act::NONE, |x| x.fused_activation_function()),
            ),
            B::POW => binary(self, Op::Pow, Act::NONE),
            B::MAXIMUM => binary(self, Op::Max, Act::NONE),
            B::MINIMUM => binary(self, Op::Min, Act::NONE),
            B::EQUAL => binary(self, Op::Equal, Act::NONE),
            B::LESS => binary(self, Op::Less, Act::NONE),
            B::LESS_EQUAL => binary(self, Op::LessOrEqual, Act::NONE),
            B::GREATER => binary(self, Op::Greater, Act::NONE),
            B::GREATER_EQUAL => binary(self, Op::GreaterOrEqual, Act::NONE),
            B::LOGICAL_AND => binary(self, Op::And, Act::NONE),
            B::LOGICAL_OR => binary(self, Op::Or, Act::NONE),
            B::LOGICAL_NOT => unary(self, Op::Not),
            B::RELU => unary(self, Op::Relu),
            B::LOGISTIC => unary(self, Op::Sigmoid),
            B::TANH => unary(self, Op::Tanh),
            B::EXP => unary(self, Op::Exp),
            B::LOG => unary(self, Op::Log),
            B::SQRT => unary(self, Op::Sqrt),
            B::NEG => unary(self, Op::Neg),
            B::ABS => unary(self, Op::Abs),
            B::HARD_SWISH => unary(self, Op::HardSwish),
            B::GELU => {
                let tanh = op
                    .builtin_options_as_gelu_options()
                    .is_some_and(|g| g.approximate());
                unary(self, Op::Gelu { tanh })
            }
            B::RELU6 => {
                let x = self.input(ins, 0)?;
                let x = self.val(x)?;
                let lo = self.const_scalar("edgec.clip_min", 0.0)?;
                let hi = self.const_scalar("edgec.clip_max", 6.0)?;
                self.finish(Op::Clip, vec![x, lo, hi], o, Act::NONE, false)
            }
            B::RSQRT => {
                let x = self.input(ins, 0)?;
                let x = self.val(x)?;
                let s = self.fresh(&format!("{}.sqrt", self.names[o]));
                self.emit(Op::Sqrt, vec![x], s.clone());
                self.finish(Op::Reciprocal, vec![s], o, Act::NONE, false)
            }
            B::SELECT_V2 => {
                let c = self.input(ins, 0)?;
                let a = self.input(ins, 1)?;
                let b = self.input(ins, 2)?;
                let v = vec![self.val(c)?, self.val(a)?, self.val(b)?];
                self.finish(Op::Where, v, o, Act::NONE, false)
            }
            B::CAST => {
                let to = ir_type(self.infos[o].dtype).ok_or("unsupported output type")?;
                unary(self, Op::Cast { to })
            }
            B::DEQUANTIZE => self.dequantize(ins, o),
            B::DENSIFY => self.densify(ins, o),
            B::QUANTIZE => unary(self, Op::Identity),
            B::CONV_2D | B::DEPTHWISE_CONV_2D => self.conv(code, op, ins, o),
            B::AVERAGE_POOL_2D | B::MAX_POOL_2D => self.pool(code, op, ins, o),
            B::FULLY_CONNECTED => self.fully_connected(op, ins, o),
            B::BATCH_MATMUL => {
                let (adj_x, adj_y) = op
                    .builtin_options_as_batch_mat_mul_options()
                    .map_or((false, false), |b| (b.adj_x(), b.adj_y()));
                let mut v = Vec::new();
                for (k, adj) in [(0, adj_x), (1, adj_y)] {
                    let t = self.input(ins, k)?;
                    let x = self.val(t)?;
                    if adj {
                        let r = self.infos[t].shape.len();
                        if r < 2 {
                            return Err("adjoint of an operand of rank < 2".into());
                        }
                        let mut perm: Vec<usize> = (0..r).collect();
                        perm.swap(r - 1, r - 2);
                        let out = self.fresh(&format!("{x}.adj"));
                        self.emit(Op::Transpose { perm }, vec![x], out.clone());
                        v.push(out);
                    } else {
                        v.push(x);
                    }
                }
                self.finish(Op::MatMul, v, o, Act::NONE, false)
            }
            B::SOFTMAX => {
                let beta = op
                    .builtin_options_as_softmax_options()
                    .map_or(1.0, |s| s.beta());
                let x = self.input(ins, 0)?;
                let mut x = self.val(x)?;
                if beta != 1.0 {
                    let b = self.const_scalar("edgec.beta", beta)?;
                    let out = self.fresh(&format!("{x}.beta"));
                    self.emit(Op::Mul, vec![x, b], out.clone());
                    x = out;
                }
                self.finish(Op::Softmax { axis: -1 }, vec![x], o, Act::NONE, false)
            }
            B::MEAN | B::SUM => {
                let keep_dims = op
                    .builtin_options_as_reducer_options()
                    .is_some_and(|r| r.keep_dims());
                let x = self.input(ins, 0)?;
                let a = self.input(ins, 1)?;
                let axes = self.ints(a)?;
                if code == B::MEAN && self.int_mean(x, &axes, keep_dims, o)? {
                    return Ok(());
                }
                let xv = self.val(x)?;
                let ir = if code == B::MEAN {
                    Op::ReduceMean { axes, keep_dims }
                } else {
                    Op::ReduceSum { axes, keep_dims }
                };
                self.finish(ir, vec![xv], o, Act::NONE, false)
            }
            B::RESHAPE | B::SQUEEZE | B::EXPAND_DIMS => {
                let x = self.input(ins, 0)?;
                let xv = self.val(x)?;
                let shape: Vec<i64> = self.infos[o].shape.iter().map(|&d| d as i64).collect();
                let s = self.const_i64(&format!("{}.shape", self.names[o]), &shape)?;
                self.finish(
                    Op::Reshape { allow_zero: false },
                    vec![xv, s],
                    o,
                    Act::NONE,
                    false,
                )
            }
            B::TRANSPOSE => {
                let x = self.input(ins, 0)?;
                let p = self.input(ins, 1)?;
                let perm = self.ints(p)?;
                let r = self.infos[x].shape.len();
                let mut seen = vec![false; r];
                let mut out = Vec::with_capacity(r);
                for &a in &perm {
                    let a = usize::try_from(a)
                        .ok()
                        .filter(|&a| a < r && !seen[a])
                        .ok_or("invalid permutation")?;
                    seen[a] = true;
                    out.push(a);
                }
                if out.len() != r {
                    return Err("invalid permutation".into());
                }
                let xv = self.val(x)?;
                self.finish(Op::Transpose { perm: out }, vec![xv], o, Act::NONE, false)
            }
            B::CONCATENATION => {
                let (axis, act) = op
                    .builtin_options_as_concatenation_options()
                    .map_or((0, Act::NONE), |c| {
                        (c.axis(), c.fused_activation_function())
                    });
                let mut v = Vec::new();
                for k in 0..ins.len() {
                    let t = self.input(ins, k)?;
                    v.push(self.val(t)?);
                }
                self.finish(Op::Concat { axis: axis as i64 }, v, o, act, false)
            }
            B::GATHER => {
                let (axis, batch_dims) = op
                    .builtin_options_as_gather_options()
                    .map_or((0, 0), |g| (g.axis(), g.batch_dims()));
                if batch_dims != 0 {
                    return Err("GATHER with batch_dims is not supported".into());
                }
                let d = self.input(ins, 0)?;
                let i = self.input(ins, 1)?;
                let v = vec![self.val(d)?, self.val(i)?];
                self.finish(Op::Gather { axis: axis as i64 }, v, o, Act::NONE, false)
            }
            B::PAD => {
                let x = self.input(ins, 0)?;
                let p = self.input(ins, 1)?;
                let rows = self.ints(p)?;
                let r = self.infos[x].shape.len();
                if rows.len() != 2 * r {
                    return Err(format!("paddings of {} values for rank {r}", rows.len()));
                }
                let pads: Vec<i64> = (0..r)
                    .map(|a| rows[2 * a])
                    .chain((0..r).map(|a| rows[2 * a + 1]))
                    .collect();
                let xv = self.val(x)?;
                let pv = self.const_i64(&format!("{}.pads", self.names[o]), &pads)?;
                self.finish(
                    Op::Pad {
                        mode: PadMode::Constant,
                    },
                    vec![xv, pv],
                    o,
                    Act::NONE,
                    false,
                )
            }
            B::STRIDED_SLICE => self.strided_slice(op, ins, o),
            other => Err(format!("{} is not supported", op_name(other))),
        }
    }

    fn dequantize(&mut self, ins: &[Option<usize>], o: usize) -> Res<()> {
        let x = self.input(ins, 0)?;
        if !self.is_const(x) {
            let xv = self.val(x)?;
            // a quantized activation is already its dequantized value
            let op = if self.act_quant(x)?.is_some() {
                Op::Identity
            } else {
                Op::Cast { to: DType::F32 }
            };
            return self.finish(op, vec![xv], o, Act::NONE, false);
        }
        let t = self.const_tensor(x)?;
        let mut v = f32s_of(&t)?;
        if let Some((scale, zp, axis)) = self.infos[x].quant.clone() {
            if matches!(t.dtype, DType::I8 | DType::U8 | DType::I32) && !scale.is_empty() {
                let shape = &t.shape;
                // per tensor: one channel; per axis: channel c of `dim`, each
                // a run of `inner` values
                let (dim, inner) = if scale.len() == 1 {
                    (1, v.len())
                } else {
                    if axis >= shape.len() || shape[axis] != scale.len() {
                        return Err(format!(
                            "{} scales for axis {axis} of {shape:?}",
                            scale.len()
                        ));
                    }
                    let inner: usize = shape[axis + 1..].iter().product();
                    (shape[axis], inner)
                };
                for (k, x) in v.iter_mut().enumerate() {
                    let c = (k / inner.max(1)) % dim.max(1);
                    let z = zp.get(c).or(zp.first()).copied().unwrap_or(0) as f32;
                    *x = (*x - z) * scale[c];
                }
            }
        }
        let name = self.names[o].clone();
        self.add_const(name, t.shape.clone(), DType::F32, owned(f32_bytes(&v)))?;
        self.consts[o] = Some(self.tensors.len() - 1);
        Ok(())
    }

    /// DENSIFY of a sparse constant (already dense since the read): the
    /// same constant under the output's name.
    fn densify(&mut self, ins: &[Option<usize>], o: usize) -> Res<()> {
        let x = self.input(ins, 0)?;
        if !self.is_const(x) {
            return Err("the input is not a constant".into());
        }
        let t = self.const_tensor(x)?;
        let name = self.names[o].clone();
        self.add_const(name, t.shape.clone(), t.dtype, t.data.clone())?;
        self.consts[o] = Some(self.tensors.len() - 1);
        Ok(())
    }

    /// ONNX pads `[top, left, bottom, right]` of a TFLite padding mode.
    fn pads(
        &self,
        padding: Padding,
        input: &[usize],
        kernel: [usize; 2],
        stride: [usize; 2],
        dil: [usize; 2],
    ) -> Vec<usize> {
        if padding != Padding::SAME {
            return vec![0; 4];
        }
        let mut p = vec![0; 4];
        for k in 0..2 {
            let eff = kernel[k]
                .saturating_sub(1)
                .saturating_mul(dil[k])
                .saturating_add(1);
            let out = input[k].div_ceil(stride[k].max(1));
            let total = out
                .saturating_sub(1)
                .saturating_mul(stride[k])
                .saturating_add(eff)
                .saturating_sub(input[k]);
            p[k] = total / 2;
            p[k + 2] = total - total / 2;
        }
        p
    }

    fn conv(&mut self, code: B, op: fb::Operator, ins: &[Option<usize>], o: usize) -> Res<()> {
        let x = self.input(ins, 0)?;
        let w = self.input(ins, 1)?;
        let xs = self.infos[x].shape.clone();
        let ws = self.infos[w].shape.clone();
        if xs.len() != 4 || ws.len() != 4 {
            return Err("input and filter must be 4-D".into());
        }
        let (padding, stride, dil, act) = if code == B::CONV_2D {
            let c = op
                .builtin_options_as_conv_2_doptions()
                .ok_or("missing options")?;
            (
                c.padding(),
                [c.stride_h(), c.stride_w()],
                [c.dilation_h_factor(), c.dilation_w_factor()],
                c.fused_activation_function(),
            )
        } else {
            let c = op
                .builtin_options_as_depthwise_conv_2_doptions()
                .ok_or("missing options")?;
            (
                c.padding(),
                [c.stride_h(), c.stride_w()],
                [c.dilation_h_factor(), c.dilation_w_factor()],
                c.fused_activation_function(),
            )
        };
        let pos = |v: i32| {
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0)
                .ok_or_else(|| format!("stride or dilation {v}"))
        };
        let stride = [pos(stride[0])?, pos(stride[1])?];
        let dil = [pos(dil[0])?, pos(dil[1])?];
        let wt = self
            .const_tensor(w)
            .map_err(|_| "the filter must be constant".to_string())?;
        let wquant = self.const_quant(w)?;
        // integer filters keep their codes (permuted), dequantized below
        let (wb, elem, wdtype) = match &wquant {
            Some(_) => {
                let e = elem_size(self.infos[w].dtype).ok_or("unsupported filter type")?;
                (wt.bytes().to_vec(), e, wt.dtype)
            }
            None => (f32_bytes(&f32s_of(&wt)?), 4, DType::F32),
        };
        let c_in = xs[3];
        let (oihw, shape, group) = if code == B::CONV_2D {
            // OHWI → OIHW
            if ws[3] == 0 || !c_in.is_multiple_of(ws[3]) {
                return Err(format!("filter {ws:?} does not fit {c_in} input channels"));
            }
            (
                transpose_bytes(&wb, &ws, &[0, 3, 1, 2], elem),
                vec![ws[0], ws[3], ws[1], ws[2]],
                c_in / ws[3],
            )
        } else {
            // [1, kh, kw, C·m] → [C·m, 1, kh, kw]
            if ws[0] != 1 || c_in == 0 || !ws[3].is_multiple_of(c_in) {
                return Err(format!(
                    "depthwise filter {ws:?} does not fit {c_in} input channels"
                ));
            }
            (
                transpose_bytes(&wb, &ws, &[3, 0, 1, 2], elem),
                vec![ws[3], 1, ws[1], ws[2]],
                c_in,
            )
        };
        let (kh, kw) = (ws[1], ws[2]);
        if kh == 0 || kw == 0 || xs.contains(&0) {
            return Err(format!("empty input {xs:?} or filter {ws:?}"));
        }
        let window = Window {
            kernel: vec![kh, kw],
            strides: stride.to_vec(),
            pads: self.pads(padding, &xs[1..3], [kh, kw], stride, dil),
            dilations: dil.to_vec(),
        };
        let out_axis = if code == B::CONV_2D { 0 } else { 3 };
        if let (Some(q), DType::I8) = (&wquant, wdtype) {
            if q.0.len() == 1 || q.2 == out_axis {
                let codes: Vec<i8> = oihw.iter().map(|&b| b as i8).collect();
                let bias = ins.get(2).copied().flatten();
                let plan = self.int_linear(x, (&codes, &shape), (&q.0, &q.1), bias, o, act)?;
                if let Some(plan) = plan {
                    let xc = self.centred(x, plan.zx, true)?;
                    let conv = Op::Conv { window, group };
                    return self.emit_int_linear(plan, xc, conv, o, act, true);
                }
            }
        }
        let wname = self.fresh(&format!("{}.oihw", self.names[w]));
        self.add_const(wname.clone(), shape, wdtype, owned(oihw))?;
        let wname = match &wquant {
            Some(q) => {
                // the output channel axis: 0 of OHWI, 3 of [1, kh, kw, C·m]
                if q.0.len() > 1 && q.2 != out_axis {
                    return Err(format!(
                        "filter parameters run along axis {}, not the output channels",
                        q.2
                    ));
                }
                self.dequantize_codes(&wname.clone(), wname, q, 0, wdtype)?
            }
            None => wname,
        };
        let mut inputs = vec![self.val_nchw(x)?, wname];
        if let Some(b) = ins.get(2).copied().flatten() {
            let bt = self
                .const_tensor(b)
                .map_err(|_| "the bias must be constant".to_string())?;
            let bname = if self.const_quant(b)?.is_some() {
                self.val(b)?
            } else if bt.dtype == DType::F32 {
                bt.name.clone()
            } else {
                let v = f32s_of(&bt)?;
                let n = self.fresh(&format!("{}.f32", bt.name));
                self.add_const(n, bt.shape.clone(), DType::F32, owned(f32_bytes(&v)))?
            };
            inputs.push(bname);
        }
        self.finish(Op::Conv { window, group }, inputs, o, act, true)
    }

    fn pool(&mut self, code: B, op: fb::Operator, ins: &[Option<usize>], o: usize) -> Res<()> {
        let x = self.input(ins, 0)?;
        let xs = self.infos[x].shape.clone();
        if xs.len() != 4 {
            return Err("input must be 4-D".into());
        }
        if xs.contains(&0) {
            return Err(format!("empty input {xs:?}"));
        }
        let p = op
            .builtin_options_as_pool_2_doptions()
            .ok_or("missing options")?;
        let pos = |v: i32| {
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0)
                .ok_or_else(|| format!("stride or filter size {v}"))
        };
        let stride = [pos(p.stride_h())?, pos(p.stride_w())?];
        let kernel = [pos(p.filter_height())?, pos(p.filter_width())?];
        let window = Window {
            kernel: kernel.to_vec(),
            strides: stride.to_vec(),
            pads: self.pads(p.padding(), &xs[1..3], kernel, stride, [1, 1]),
            dilations: vec![1, 1],
        };
        let ir = if code == B::MAX_POOL_2D {
            Op::MaxPool { window }
        } else {
            Op::AveragePool {
                window,
                count_include_pad: false,
            }
        };
        let xv = self.val_nchw(x)?;
        self.finish(ir, vec![xv], o, p.fused_activation_function(), true)
    }

    fn fully_connected(&mut self, op: fb::Operator, ins: &[Option<usize>], o: usize) -> Res<()> {
        let (act, keep) = op
            .builtin_options_as_fully_connected_options()
            .map_or((Act::NONE, false), |f| {
                (f.fused_activation_function(), f.keep_num_dims())
            });
        let x = self.input(ins, 0)?;
        let w = self.input(ins, 1)?;
        let ws = self.infos[w].shape.clone();
        let xs = self.infos[x].shape.clone();
        if ws.len() != 2 || ws[1] == 0 || xs.is_empty() || xs.iter().product::<usize>() % ws[1] != 0
        {
            return Err(format!("weights {ws:?} do not fit input {xs:?}"));
        }
        let k = ws[1];
        if self.infos[o].shape.len() == 2 && (xs.len() == 2 && xs[1] == k || !keep) {
            if let Some(plan) = self.int_fc_plan(x, w, ins, o, act)? {
                let mut xc = self.centred(x, plan.zx, false)?;
                if !(xs.len() == 2 && xs[1] == k) {
                    let s = self.const_i64(&format!("{}.rows", self.names[o]), &[-1, k as i64])?;
                    let out = self.fresh(&format!("{xc}.2d"));
                    self.emit(Op::Reshape { allow_zero: false }, vec![xc, s], out.clone());
                    xc = out;
                }
                let gemm = Op::Gemm {
                    alpha: 1.0,
                    beta: 1.0,
                    trans_a: false,
                    trans_b: true,
                };
                return self.emit_int_linear(plan, xc, gemm, o, act, false);
            }
        }
        let mut xv = self.val(x)?;
        let wv = self.val(w)?;
        let bias = match ins.get(2).copied().flatten() {
            Some(b) => Some(self.val(b)?),
            None => None,
        };
        if xs.len() == 2 && xs[1] == k || !keep {
            if !(xs.len() == 2 && xs[1] == k) {
                let s = self.const_i64(&format!("{}.rows", self.names[o]), &[-1, k as i64])?;
                let out = self.fresh(&format!("{}.2d", self.names[x]));
                self.emit(Op::Reshape { allow_zero: false }, vec![xv, s], out.clone());
                xv = out;
            }
            let mut inputs = vec![xv, wv];
            inputs.extend(bias);
            let gemm = Op::Gemm {
                alpha: 1.0,
                beta: 1.0,
                trans_a: false,
                trans_b: true,
            };
            if self.infos[o].shape.len() == 2 {
                return self.finish(gemm, inputs, o, act, false);
            }
            let out = self.fresh(&format!("{}.gemm", self.names[o]));
            self.emit(gemm, inputs, out.clone());
            let shape: Vec<i64> = self.infos[o].shape.iter().map(|&d| d as i64).collect();
            let s = self.const_i64(&format!("{}.shape", self.names[o]), &shape)?;
            return self.finish(
                Op::Reshape { allow_zero: false },
                vec![out, s],
                o,
                act,
                false,
            );
        }
        // keep_num_dims: x·Wᵀ (+ b) on the last axis
        let wt = self.fresh(&format!("{wv}.t"));
        self.emit(Op::Transpose { perm: vec![1, 0] }, vec![wv], wt.clone());
        match bias {
            None => self.finish(Op::MatMul, vec![xv, wt], o, act, false),
            Some(b) => {
                let mm = self.fresh(&format!("{}.matmul", self.names[o]));
                self.emit(Op::MatMul, vec![xv, wt], mm.clone());
                self.finish(Op::Add, vec![mm, b], o, act, false)
            }
        }
    }

    fn strided_slice(&mut self, op: fb::Operator, ins: &[Option<usize>], o: usize) -> Res<()> {
        let s = op.builtin_options_as_strided_slice_options();
        let (bm, em, shrink) = s.map_or((0, 0, 0), |s| {
            (s.begin_mask(), s.end_mask(), s.shrink_axis_mask())
        });
        if s.is_some_and(|s| s.ellipsis_mask() != 0 || s.new_axis_mask() != 0 || s.offset()) {
            return Err("ellipsis, new-axis and offset slices are not supported".into());
        }
        let x = self.input(ins, 0)?;
        let xs = self.infos[x].shape.clone();
        let r = xs.len();
        if r > 16 {
            return Err(format!("rank {r} is too large"));
        }
        let (bt, et, st) = (
            self.input(ins, 1)?,
            self.input(ins, 2)?,
            self.input(ins, 3)?,
        );
        let (begin, end, strides) = (self.ints(bt)?, self.ints(et)?, self.ints(st)?);
        if begin.len() != r || end.len() != r || strides.len() != r {
            return Err("begin, end and strides must have one value per axis".into());
        }
        let mut starts = Vec::new();
        let mut ends = Vec::new();
        for a in 0..r {
            if strides[a] <= 0 {
                return Err("strides ≤ 0 are not supported".into());
            }
            let dim = xs[a] as i64;
            let b = if bm >> a & 1 == 1 { 0 } else { begin[a] };
            let e = if shrink >> a & 1 == 1 {
                let b0 = if b < 0 { b + dim } else { b };
                b0 + 1
            } else if em >> a & 1 == 1 {
                dim
            } else {
                end[a]
            };
            starts.push(b);
            ends.push(e);
        }
        let xv = self.val(x)?;
        let name = self.names[o].clone();
        let sv = self.const_i64(&format!("{name}.starts"), &starts)?;
        let ev = self.const_i64(&format!("{name}.ends"), &ends)?;
        let av = self.const_i64(&format!("{name}.axes"), &(0..r as i64).collect::<Vec<_>>())?;
        let pv = self.const_i64(&format!("{name}.steps"), &strides)?;
        if shrink == 0 {
            return self.finish(Op::Slice, vec![xv, sv, ev, av, pv], o, Act::NONE, false);
        }
        let sl = self.fresh(&format!("{name}.slice"));
        self.emit(Op::Slice, vec![xv, sv, ev, av, pv], sl.clone());
        let shape: Vec<i64> = self.infos[o].shape.iter().map(|&d| d as i64).collect();
        let s = self.const_i64(&format!("{name}.shape"), &shape)?;
        self.finish(
            Op::Reshape { allow_zero: false },
            vec![sl, s],
            o,
            Act::NONE,
            false,
        )
    }
}
