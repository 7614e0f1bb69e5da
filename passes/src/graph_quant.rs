//! Weight storage passes on graph models (imported ONNX): fp16 weights,
//! per-channel int8 weights and int4 blockwise weights, each decoded back to
//! f32 by a node in front of the consumer, so every consumer is unchanged.
//!
//! A weight is a float constant read as the weight input of Conv, Gemm or
//! MatMul. The pass renames the constant, stores the new form under the new
//! name, and inserts a Cast or DequantizeLinear node that produces the old
//! name: the graph reads the same values (up to rounding) by the same name.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use edgec_core::{DType, Graph, Model, Node, Op, Tensor, TensorData};

use crate::groupwise::Groupwise;

#[derive(Debug, thiserror::Error)]
pub enum GraphQuantError {
    #[error("the model has no graph (graph passes apply to imported ONNX models)")]
    NoGraph,
    #[error("{0}")]
    Model(String),
}

type Result<T> = std::result::Result<T, GraphQuantError>;

/// A weight and the axis along which its output channels run.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightUse {
    pub name: String,
    /// The output-channel axis (Conv 0; Gemm 0 with transB, else 1; MatMul
    /// the last); `None` when consumers disagree.
    pub channel_axis: Option<usize>,
    /// Read only as the `B` input of MatMul or Gemm (2-D), so it can be
    /// blocked along its input dimension.
    pub matmul_only: bool,
}

/// The float weight constants of the graph's Conv, Gemm and MatMul nodes,
/// in first-use order.
pub fn find_weights(model: &Model) -> Result<Vec<WeightUse>> {
    let graph = model.graph.as_ref().ok_or(GraphQuantError::NoGraph)?;
    let mut order = Vec::new();
    let mut uses: HashMap<String, WeightUse> = HashMap::new();
    for n in &graph.nodes {
        let (axis, matmul) = match &n.op {
            Op::Conv { .. } => (Some(0), false),
            Op::Gemm { trans_b, .. } => (Some(if *trans_b { 0 } else { 1 }), !*trans_b),
            Op::MatMul => (None, true),
            _ => continue,
        };
        let Some(name) = n.inputs.get(1) else {
            continue;
        };
        let Some(t) = model.tensor(name) else {
            continue;
        };
        if t.dtype != DType::F32 || t.shape.len() < 2 {
            continue;
        }
        let axis = axis.unwrap_or(t.shape.len() - 1);
        let matmul = matmul && t.shape.len() == 2;
        match uses.get_mut(name) {
            Some(u) => {
                if u.channel_axis != Some(axis) {
                    u.channel_axis = None;
                }
                u.matmul_only &= matmul;
            }
            None => {
                order.push(name.clone());
                uses.insert(
                    name.clone(),
                    WeightUse {
                        name: name.clone(),
                        channel_axis: Some(axis),
                        matmul_only: matmul,
                    },
                );
            }
        }
    }
    // A weight that is also read by any other op (or is a graph output)
    // keeps one per-tensor form only if that reader is fine with it: all
    // rewrites keep the name, so other readers see the same values.
    Ok(order
        .into_iter()
        .map(|n| uses.remove(&n).unwrap())
        .collect())
}

/// Replaces the node at each index of `replacements` by its nodes, in place.
fn splice(graph: &mut Graph, mut replacements: HashMap<usize, Vec<Node>>) {
    let old = std::mem::take(&mut graph.nodes);
    for (i, n) in old.into_iter().enumerate() {
        match replacements.remove(&i) {
            Some(r) => graph.nodes.extend(r),
            None => graph.nodes.push(n),
        }
    }
}

/// Names not yet used by the model.
pub(crate) struct Names(HashSet<String>);

impl Names {
    pub(crate) fn of(model: &Model, graph: &Graph) -> Self {
        let mut s: HashSet<String> = model.tensors.iter().map(|t| t.name.clone()).collect();
        s.extend(graph.inputs.iter().map(|v| v.name.clone()));
        for n in &graph.nodes {
            s.extend(n.outputs.iter().cloned());
            s.insert(n.name.clone());
        }
        Names(s)
    }

    pub(crate) fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 1;
        while self.0.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.0.insert(name.clone());
        name
    }
}

fn owned(name: String, shape: Vec<usize>, dtype: DType, bytes: Vec<u8>) -> Result<Tensor> {
    Tensor::new(name, shape, dtype, TensorData::Owned(Arc::new(bytes)))
        .map_err(|e| GraphQuantError::Model(e.to_string()))
}

fn values(t: &Tensor) -> Result<Vec<f32>> {
    t.to_f32()
        .map_err(|e| GraphQuantError::Model(format!("{}: {e}", t.name)))
}

/// Replaces the constant `name` by `new` tensors and a decoding node that
/// produces `name` again; the node goes first, since it reads constants only.
fn replace(model: &mut Model, name: &str, new: Vec<Tensor>, node: Node) {
    model.tensors.retain(|t| t.name != name);
    model.tensors.extend(new);
    let graph = model.graph.as_mut().expect("checked by the caller");
    graph.nodes.insert(0, node);
}

/// Stores every float weight (and every other f32 constant of at least
/// `min_elements`) as f16, read back through a Cast to f32. Returns how
/// many constants changed.
pub fn weights_to_f16(model: &mut Model, min_elements: usize) -> Result<usize> {
    let graph = model.graph.as_ref().ok_or(GraphQuantError::NoGraph)?;
    let mut names = Names::of(model, graph);
    let weights: HashSet<String> = find_weights(model)?.into_iter().map(|w| w.name).collect();
    let targets: Vec<String> = model
        .tensors
        .iter()
        .filter(|t| {
            t.dtype == DType::F32 && (weights.contains(&t.name) || t.numel() >= min_elements)
        })
        .map(|t| t.name.clone())
        .collect();
    // Reverse so that the inserted Casts end up in the tensors' order.
    for name in targets.iter().rev() {
        let t = model.tensor(name).expect("listed above");
        let half: Vec<u8> = values(t)?
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let stored = names.fresh(&format!("{name}_f16"));
        let tensor = owned(stored.clone(), t.shape.clone(), DType::F16, half)?;
        let node = Node {
            name: names.fresh(&format!("{name}_cast")),
            op: Op::Cast { to: DType::F32 },
            inputs: vec![stored],
            outputs: vec![name.clone()],
        };
        replace(model, name, vec![tensor], node);
    }
    Ok(targets.len())
}

/// Gathers `values` of `shape` into rows along `axis`: row `c` holds every
/// element whose index on `axis` is `c`, in row-major order of the rest.
pub(crate) fn rows_along(values: &[f32], shape: &[usize], axis: usize) -> Vec<f32> {
    let outer: usize = shape[..axis].iter().product();
    let channels = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let mut rows = vec![0f32; values.len()];
    let len = outer * inner;
    for o in 0..outer {
        for c in 0..channels {
            let src = &values[(o * channels + c) * inner..][..inner];
            rows[c * len + o * inner..][..inner].copy_from_slice(src);
        }
    }
    rows
}

/// The inverse of [`rows_along`].
pub(crate) fn scatter_rows<T: Copy + Default>(rows: &[T], shape: &[usize], axis: usize) -> Vec<T> {
    let outer: usize = shape[..axis].iter().product();
    let channels = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let len = outer * inner;
    let mut out = vec![T::default(); rows.len()];
    for o in 0..outer {
        for c in 0..channels {
            out[(o * channels + c) * inner..][..inner]
                .copy_from_slice(&rows[c * len + o * inner..][..inner]);
        }
    }
    out
}

/// Per-channel symmetric int8 weights (per tensor where consumers disagree
/// on the channel axis), read back through DequantizeLinear. Returns the
/// weights changed.
pub fn weights_to_int8(model: &mut Model) -> Result<usize> {
    let graph = model.graph.as_ref().ok_or(GraphQuantError::NoGraph)?;
    let mut names = Names::of(model, graph);
    let weights = find_weights(model)?;
    for w in weights.iter().rev() {
        let t = model.tensor(&w.name).expect("found above");
        let shape = t.shape.clone();
        let v = values(t)?;
        let (axis, channels) = match w.channel_axis {
            Some(a) => (a, shape[a]),
            None => (0, 1),
        };
        let rows = if channels == 1 {
            v.clone()
        } else {
            rows_along(&v, &shape, axis)
        };
        let len = rows.len() / channels;
        let q = Groupwise {
            bits: 8,
            group: len,
            symmetric: true,
        };
        let mut codes = Vec::with_capacity(rows.len());
        let mut scales = Vec::with_capacity(channels);
        let mut scratch = vec![0f32; len];
        for row in rows.chunks_exact(len.max(1)) {
            q.quantize(row, None, &mut scratch, Some(&mut codes), Some(&mut scales));
        }
        let codes: Vec<u8> = if channels == 1 {
            codes.iter().map(|&c| c as i8 as u8).collect()
        } else {
            scatter_rows(&codes, &shape, axis)
                .iter()
                .map(|&c| c as i8 as u8)
                .collect()
        };
        let stored = names.fresh(&format!("{}_quantized", w.name));
        let scale_name = names.fresh(&format!("{}_scale", w.name));
        let zero_name = names.fresh(&format!("{}_zero_point", w.name));
        let scale_shape = if channels == 1 {
            vec![]
        } else {
            vec![channels]
        };
        let new = vec![
            owned(stored.clone(), shape, DType::I8, codes)?,
            owned(
                scale_name.clone(),
                scale_shape.clone(),
                DType::F32,
                scales.iter().flat_map(|(s, _)| s.to_le_bytes()).collect(),
            )?,
            owned(zero_name.clone(), scale_shape, DType::I8, vec![0; channels])?,
        ];
        let node = Node {
            name: names.fresh(&format!("{}_dequantize", w.name)),
            op: Op::DequantizeLinear {
                axis: axis as i64,
                block_size: 0,
            },
            inputs: vec![stored, scale_name, zero_name],
            outputs: vec![w.name.clone()],
        };
        replace(model, &w.name, new, node);
    }
    Ok(weights.len())
}

/// 4-bit weights for onnxruntime's MatMulNBits (com.microsoft): every
/// 2-D weight read only as the `B` of MatMul, or of Gemm with `transB` (and
/// alpha = beta = 1), is quantized in blocks of `block` along its input
/// dimension, asymmetric (codes 0..15 with a 4-bit zero point per block),
/// and its consumer becomes MatMulNBits (+ Add for a Gemm's bias). Returns
/// the weights changed.
pub fn weights_to_nbits(model: &mut Model, block: usize) -> Result<usize> {
    if block < 16 || !block.is_power_of_two() {
        return Err(GraphQuantError::Model(format!(
            "block size {block}: MatMulNBits takes a power of two of at least 16"
        )));
    }
    let graph = model.graph.as_ref().ok_or(GraphQuantError::NoGraph)?;
    let mut names = Names::of(model, graph);
    // Weights read by anything else keep their float form.
    let mut readers: HashMap<&str, usize> = HashMap::new();
    for n in &graph.nodes {
        for i in &n.inputs {
            *readers.entry(i.as_str()).or_default() += 1;
        }
    }
    let mut plans: Vec<(usize, String, bool)> = Vec::new(); // (node, weight, [N,K] layout)
    for (idx, n) in graph.nodes.iter().enumerate() {
        let (layout_nk, ok) = match &n.op {
            Op::MatMul => (false, true),
            Op::Gemm {
                alpha,
                beta,
                trans_a,
                trans_b,
            } => (true, *trans_b && !*trans_a && *alpha == 1.0 && *beta == 1.0),
            _ => continue,
        };
        let Some(w) = n.inputs.get(1) else { continue };
        let Some(t) = model.tensor(w) else { continue };
        if !ok || t.dtype != DType::F32 || t.shape.len() != 2 || readers[w.as_str()] != 1 {
            continue;
        }
        plans.push((idx, w.clone(), layout_nk));
    }
    let mut new_nodes: HashMap<usize, Vec<Node>> = HashMap::new();
    let mut removed: HashSet<String> = HashSet::new();
    let mut added: Vec<Tensor> = Vec::new();
    let q = Groupwise {
        bits: 4,
        group: block,
        symmetric: false,
    };
    for (idx, w, layout_nk) in &plans {
        let t = model.tensor(w).expect("planned");
        let v = values(t)?;
        // Rows of the [N, K] layout: one per output column.
        let (n_out, k) = if *layout_nk {
            (t.shape[0], t.shape[1])
        } else {
            (t.shape[1], t.shape[0])
        };
        let rows = if *layout_nk {
            v
        } else {
            rows_along(&v, &t.shape, 1)
        };
        let blocks = k.div_ceil(block);
        let mut packed = vec![0u8; n_out * blocks * block / 2];
        let mut scales: Vec<f32> = Vec::with_capacity(n_out * blocks);
        let zp_row = blocks.div_ceil(2);
        let mut zeros = vec![0u8; n_out * zp_row];
        let mut scratch = vec![0f32; k];
        for (r, row) in rows.chunks_exact(k).enumerate() {
            let mut codes = Vec::with_capacity(k);
            let mut sc = Vec::with_capacity(blocks);
            q.quantize(row, None, &mut scratch, Some(&mut codes), Some(&mut sc));
            // Codes pack two per byte, low nibble first; a ragged last
            // block is padded with the zero point's code (value 0).
            for (b, (scale, zero)) in sc.iter().enumerate() {
                scales.push(*scale);
                let z = (*zero).clamp(0, 15) as u8;
                zeros[r * zp_row + b / 2] |= z << (4 * (b % 2));
                for i in 0..block {
                    let c = codes
                        .get(b * block + i)
                        .map_or(z, |&c| c.clamp(0, 15) as u8);
                    packed[(r * blocks + b) * block / 2 + i / 2] |= c << (4 * (i % 2));
                }
            }
        }
        let node = &graph.nodes[*idx];
        let base = w.clone();
        let b_name = names.fresh(&format!("{base}_nbits"));
        let s_name = names.fresh(&format!("{base}_nbits_scales"));
        let z_name = names.fresh(&format!("{base}_nbits_zero_points"));
        added.push(owned(
            b_name.clone(),
            vec![n_out, blocks, block / 2],
            DType::U8,
            packed,
        )?);
        added.push(owned(
            s_name.clone(),
            vec![n_out * blocks],
            DType::F32,
            scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
        )?);
        added.push(owned(
            z_name.clone(),
            vec![n_out * zp_row],
            DType::U8,
            zeros,
        )?);
        removed.insert(w.clone());
        let bias = node.inputs.get(2).filter(|b| !b.is_empty()).cloned();
        let mm_out = if bias.is_some() {
            names.fresh(&format!("{}_matmul", node.outputs[0]))
        } else {
            node.outputs[0].clone()
        };
        let mut replacement = vec![Node {
            name: node.name.clone(),
            op: Op::MatMulNBits {
                k,
                n: n_out,
                bits: 4,
                block_size: block,
            },
            inputs: vec![node.inputs[0].clone(), b_name, s_name, z_name],
            outputs: vec![mm_out.clone()],
        }];
        if let Some(b) = bias {
            replacement.push(Node {
                name: names.fresh(&format!("{}_bias", node.name)),
                op: Op::Add,
                inputs: vec![mm_out, b],
                outputs: node.outputs.clone(),
            });
        }
        new_nodes.insert(*idx, replacement);
    }
    splice(model.graph.as_mut().expect("checked above"), new_nodes);
    model.tensors.retain(|t| !removed.contains(&t.name));
    model.tensors.extend(added);
    Ok(plans.len())
}

/// 4-bit blockwise weights in standard ONNX (opset 21): every 2-D weight
/// read as the `B` of MatMul (`[K, N]`) or of Gemm with `transB` (`[N, K]`)
/// is stored as UINT4 codes with a float scale and a UINT4 zero point per
/// `block` weights along K, read back by DequantizeLinear with
/// `block_size`. Returns the weights changed.
pub fn weights_to_int4_blocked(model: &mut Model, block: usize) -> Result<usize> {
    if block < 2 {
        return Err(GraphQuantError::Model(format!(
            "block size {block} is below 2"
        )));
    }
    let graph = model.graph.as_ref().ok_or(GraphQuantError::NoGraph)?;
    let mut names = Names::of(model, graph);
    // (weight, K axis) for weights every reader of which agrees on K.
    let mut axes: HashMap<String, Option<usize>> = HashMap::new();
    let mut order = Vec::new();
    for n in &graph.nodes {
        let k_axis = match &n.op {
            Op::MatMul => 0,
            Op::Gemm {
                trans_a: false,
                trans_b: true,
                ..
            } => 1,
            Op::Gemm { trans_a: false, .. } => 0,
            _ => continue,
        };
        let Some(w) = n.inputs.get(1) else { continue };
        let Some(t) = model.tensor(w) else { continue };
        if t.dtype != DType::F32 || t.shape.len() != 2 {
            continue;
        }
        match axes.get_mut(w) {
            Some(a) if *a != Some(k_axis) => *a = None,
            Some(_) => {}
            None => {
                order.push(w.clone());
                axes.insert(w.clone(), Some(k_axis));
            }
        }
    }
    let q = Groupwise {
        bits: 4,
        group: block,
        symmetric: false,
    };
    let mut changed = 0;
    for w in order.iter().rev() {
        let Some(k_axis) = axes[w] else { continue };
        let t = model.tensor(w).expect("found above");
        let shape = t.shape.clone();
        let v = values(t)?;
        let (k, n_out) = (shape[k_axis], shape[1 - k_axis]);
        // Rows along K, one per output.
        let rows = if k_axis == 1 {
            v
        } else {
            rows_along(&v, &shape, 1)
        };
        let blocks = k.div_ceil(block);
        let mut codes = vec![0u8; k * n_out];
        let mut scales = vec![0f32; blocks * n_out];
        let mut zeros = vec![0u8; blocks * n_out];
        let mut scratch = vec![0f32; k];
        for (o, row) in rows.chunks_exact(k).enumerate() {
            let mut c = Vec::with_capacity(k);
            let mut sc = Vec::with_capacity(blocks);
            q.quantize(row, None, &mut scratch, Some(&mut c), Some(&mut sc));
            for (i, code) in c.iter().enumerate() {
                // element (i, o) of [K, N], or (o, i) of [N, K]
                let at = if k_axis == 0 {
                    i * n_out + o
                } else {
                    o * k + i
                };
                codes[at] = code.clamp(&0, &15).to_owned() as u8;
            }
            for (b, (scale, zero)) in sc.iter().enumerate() {
                let at = if k_axis == 0 {
                    b * n_out + o
                } else {
                    o * blocks + b
                };
                scales[at] = *scale;
                zeros[at] = (*zero).clamp(0, 15) as u8;
            }
        }
        let pack = |v: &[u8]| {
            let mut p = vec![0u8; v.len().div_ceil(2)];
            for (i, c) in v.iter().enumerate() {
                p[i / 2] |= c << (4 * (i % 2));
            }
            p
        };
        let scale_shape = if k_axis == 0 {
            vec![blocks, n_out]
        } else {
            vec![n_out, blocks]
        };
        let stored = names.fresh(&format!("{w}_int4"));
        let scale_name = names.fresh(&format!("{w}_scale"));
        let zero_name = names.fresh(&format!("{w}_zero_point"));
        let new = vec![
            owned(stored.clone(), shape.clone(), DType::U4, pack(&codes))?,
            owned(
                scale_name.clone(),
                scale_shape.clone(),
                DType::F32,
                scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
            )?,
            owned(zero_name.clone(), scale_shape, DType::U4, pack(&zeros))?,
        ];
        let node = Node {
            name: names.fresh(&format!("{w}_dequantize")),
            op: Op::DequantizeLinear {
                axis: k_axis as i64,
                block_size: block,
            },
            inputs: vec![stored, scale_name, zero_name],
            outputs: vec![w.clone()],
        };
        replace(model, w, new, node);
        changed += 1;
    }
    Ok(changed)
}

/// Symmetric int8 codes of `row` with one scale (amax / 127); returns the scale.
/// Unlike the QDQ pass's weight rounding, no shrunken range is searched:
/// on MiniLM that search lowered the dynamic model's cosine to f32 (mean
/// 0.99254 → 0.99234, min 0.984 → 0.979), as clipped rows hurt more here.
fn int8_codes(row: &[f32], codes: &mut Vec<u8>) -> f32 {
    let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = if amax > 0.0 { amax / 127.0 } else { 1.0 };
    codes.extend(
        row.iter()
            .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8 as u8),
    );
    scale
}

/// Embedding tables (2-D float constants read only as Gather's data along
/// axis 0, at least `min_elements` large) stored as int8 rows with one scale
/// per row: Gather picks the int8 rows and their scales, and a Cast and a
/// Mul restore floats for the gathered rows only. Returns the tables changed.
pub fn embeddings_to_int8(model: &mut Model, min_elements: usize) -> Result<usize> {
    let graph = model.graph.as_ref().ok_or(GraphQuantError::NoGraph)?;
    let mut names = Names::of(model, graph);
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in graph.nodes.iter().enumerate() {
        for inp in &n.inputs {
            readers.entry(inp.as_str()).or_default().push(i);
        }
    }
    let outputs: HashSet<&str> = graph.outputs.iter().map(|v| v.name.as_str()).collect();
    let mut plans: Vec<(usize, String)> = Vec::new();
    for (i, n) in graph.nodes.iter().enumerate() {
        if n.op != (Op::Gather { axis: 0 }) {
            continue;
        }
        let Some(t) = n.inputs.first().and_then(|w| model.tensor(w)) else {
            continue;
        };
        let only_gather = readers[t.name.as_str()].iter().all(|&r| {
            graph.nodes[r].op == (Op::Gather { axis: 0 }) && graph.nodes[r].inputs[0] == t.name
        });
        if t.dtype == DType::F32
            && t.shape.len() == 2
            && t.numel() >= min_elements
            && only_gather
            && !outputs.contains(t.name.as_str())
        {
            plans.push((i, t.name.clone()));
        }
    }
    let mut tables: HashMap<String, (String, String)> = HashMap::new();
    let mut added = Vec::new();
    let mut replacements: HashMap<usize, Vec<Node>> = HashMap::new();
    for (i, w) in &plans {
        if !tables.contains_key(w) {
            let t = model.tensor(w).expect("planned");
            let (rows, cols) = (t.shape[0], t.shape[1]);
            let v = values(t)?;
            let mut codes = Vec::with_capacity(v.len());
            let scales: Vec<f32> = v
                .chunks_exact(cols.max(1))
                .map(|row| int8_codes(row, &mut codes))
                .collect();
            let qn = names.fresh(&format!("{w}_int8"));
            let sn = names.fresh(&format!("{w}_row_scale"));
            added.push(owned(qn.clone(), vec![rows, cols], DType::I8, codes)?);
            added.push(owned(
                sn.clone(),
                vec![rows, 1],
                DType::F32,
                scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
            )?);
            tables.insert(w.clone(), (qn, sn));
        }
        let (qn, sn) = &tables[w];
        let node = &graph.nodes[*i];
        let ids = node.inputs[1].clone();
        let out = node.outputs[0].clone();
        let g = names.fresh(&format!("{out}_int8"));
        let gs = names.fresh(&format!("{out}_scale"));
        let f = names.fresh(&format!("{out}_float"));
        replacements.insert(
            *i,
            vec![
                Node {
                    name: node.name.clone(),
                    op: Op::Gather { axis: 0 },
                    inputs: vec![qn.clone(), ids.clone()],
                    outputs: vec![g.clone()],
                },
                Node {
                    name: names.fresh(&format!("{}_scale", node.name)),
                    op: Op::Gather { axis: 0 },
                    inputs: vec![sn.clone(), ids],
                    outputs: vec![gs.clone()],
                },
                Node {
                    name: names.fresh(&format!("{}_cast", node.name)),
                    op: Op::Cast { to: DType::F32 },
                    inputs: vec![g],
                    outputs: vec![f.clone()],
                },
                Node {
                    name: names.fresh(&format!("{}_dequantize", node.name)),
                    op: Op::Mul,
                    inputs: vec![f, gs],
                    outputs: vec![out],
                },
            ],
        );
    }
    splice(model.graph.as_mut().expect("checked above"), replacements);
    model.tensors.retain(|t| !tables.contains_key(&t.name));
    model.tensors.extend(added);
    Ok(tables.len())
}

/// Dynamic int8: every MatMul, or Gemm without `transA` and with alpha =
/// beta = 1, whose `B` is a 2-D float constant read by nothing else runs as
/// DynamicQuantizeLinear (uint8 activations, range measured per call) →
/// MatMulInteger with int8 weights (symmetric, per output column) → Cast →
/// Mul by the two scales (→ Add of the bias), the form onnxruntime's
/// quantize_dynamic writes and fuses. Returns the weights changed.
pub fn dynamic_int8(model: &mut Model) -> Result<usize> {
    let graph = model.graph.as_ref().ok_or(GraphQuantError::NoGraph)?;
    let mut names = Names::of(model, graph);
    let mut readers: HashMap<&str, usize> = HashMap::new();
    for n in &graph.nodes {
        for i in &n.inputs {
            *readers.entry(i.as_str()).or_default() += 1;
        }
    }
    let mut replacements: HashMap<usize, Vec<Node>> = HashMap::new();
    let mut removed = HashSet::new();
    let mut added = Vec::new();
    for (idx, n) in graph.nodes.iter().enumerate() {
        let trans_b = match &n.op {
            Op::MatMul => false,
            Op::Gemm {
                alpha,
                beta,
                trans_a: false,
                trans_b,
            } if *alpha == 1.0 && *beta == 1.0 => *trans_b,
            _ => continue,
        };
        let Some(w) = n.inputs.get(1) else { continue };
        let Some(t) = model.tensor(w) else { continue };
        if t.dtype != DType::F32 || t.shape.len() != 2 || readers[w.as_str()] != 1 {
            continue;
        }
        let v = values(t)?;
        // Rows are output columns: [N, K].
        let (rows, k, n_out) = if trans_b {
            (v, t.shape[1], t.shape[0])
        } else {
            (rows_along(&v, &t.shape, 1), t.shape[0], t.shape[1])
        };
        let mut row_codes = Vec::with_capacity(rows.len());
        let scales: Vec<f32> = rows
            .chunks_exact(k.max(1))
            .map(|r| int8_codes(r, &mut row_codes))
            .collect();
        // MatMulInteger's B is [K, N].
        let mut codes = vec![0u8; k * n_out];
        for o in 0..n_out {
            for i in 0..k {
                codes[i * n_out + o] = row_codes[o * k + i];
            }
        }
        let base = n.outputs[0].clone();
        let wq = names.fresh(&format!("{w}_quantized"));
        let wz = names.fresh(&format!("{w}_zero_point"));
        let ws = names.fresh(&format!("{w}_scale"));
        added.push(owned(wq.clone(), vec![k, n_out], DType::I8, codes)?);
        added.push(owned(wz.clone(), vec![n_out], DType::I8, vec![0; n_out])?);
        added.push(owned(
            ws.clone(),
            vec![n_out],
            DType::F32,
            scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
        )?);
        removed.insert(w.clone());
        let (xq, xs, xz) = (
            names.fresh(&format!("{base}_input_quantized")),
            names.fresh(&format!("{base}_input_scale")),
            names.fresh(&format!("{base}_input_zero_point")),
        );
        let (acc, accf, scale, scaled) = (
            names.fresh(&format!("{base}_int32")),
            names.fresh(&format!("{base}_int32_float")),
            names.fresh(&format!("{base}_scale")),
            names.fresh(&format!("{base}_scaled")),
        );
        let bias = n.inputs.get(2).filter(|b| !b.is_empty()).cloned();
        let mut nodes = vec![
            Node {
                name: names.fresh(&format!("{}_quantize_input", n.name)),
                op: Op::DynamicQuantizeLinear,
                inputs: vec![n.inputs[0].clone()],
                outputs: vec![xq.clone(), xs.clone(), xz.clone()],
            },
            Node {
                name: n.name.clone(),
                op: Op::MatMulInteger,
                inputs: vec![xq, wq, xz, wz],
                outputs: vec![acc.clone()],
            },
            Node {
                name: names.fresh(&format!("{}_cast", n.name)),
                op: Op::Cast { to: DType::F32 },
                inputs: vec![acc],
                outputs: vec![accf.clone()],
            },
            Node {
                name: names.fresh(&format!("{}_scales", n.name)),
                op: Op::Mul,
                inputs: vec![xs, ws],
                outputs: vec![scale.clone()],
            },
            Node {
                name: names.fresh(&format!("{}_dequantize", n.name)),
                op: Op::Mul,
                inputs: vec![accf, scale],
                outputs: vec![if bias.is_some() {
                    scaled.clone()
                } else {
                    base.clone()
                }],
            },
        ];
        if let Some(b) = bias {
            nodes.push(Node {
                name: names.fresh(&format!("{}_bias", n.name)),
                op: Op::Add,
                inputs: vec![scaled, b],
                outputs: vec![base],
            });
        }
        replacements.insert(idx, nodes);
    }
    let changed = replacements.len();
    splice(model.graph.as_mut().expect("checked above"), replacements);
    model.tensors.retain(|t| !removed.contains(&t.name));
    model.tensors.extend(added);
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_along_round_trips() {
        let shape = [2, 3, 4];
        let v: Vec<f32> = (0..24).map(|i| i as f32).collect();
        for axis in 0..3 {
            let rows = rows_along(&v, &shape, axis);
            // row c holds the elements whose index on `axis` is c
            let len = 24 / shape[axis];
            for (c, row) in rows.chunks(len).enumerate() {
                for &x in row {
                    let i = x as usize;
                    let idx = [i / 12, (i / 4) % 3, i % 4];
                    assert_eq!(idx[axis], c);
                }
            }
            assert_eq!(scatter_rows(&rows, &shape, axis), v);
        }
    }
}
