//! Static int8 quantization of graph models in the QDQ form: every
//! activation a quantizable op reads or writes passes through
//! QuantizeLinear → DequantizeLinear (uint8, per tensor, asymmetric, with
//! ranges calibrated on data), weights are int8 per output channel
//! (symmetric) and biases int32 at input scale × weight scale, behind
//! DequantizeLinear. onnxruntime fuses this shape into QLinearConv, QGemm,
//! QLinearAdd… and runs it in integers.
//!
//! Where onnxruntime would fold an activation into the op before it
//! (Conv/Gemm/MatMul/Add → Relu/Clip), the op's own output is left float and
//! only the activation's output is quantized, so the integer op is followed
//! by no requantization. Data-movement ops (Flatten, Reshape, Transpose,
//! Squeeze, Unsqueeze, MaxPool) get their input's parameters on their
//! output, which lets onnxruntime drop the pair around them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use edgec_core::{DType, Model, Node, Op, Tensor, TensorData};

use crate::graph_quant::{GraphQuantError, Names};

type Result<T> = std::result::Result<T, GraphQuantError>;

/// The largest int32 bias code used (half of i32's range: headroom for the
/// accumulator it is added to).
const BIAS_LIMIT: f32 = (1u32 << 30) as f32;

/// Ops whose float activation inputs and outputs are quantized.
fn quantizable(op: &Op) -> bool {
    matches!(
        op,
        Op::Conv { .. }
            | Op::Gemm { .. }
            | Op::MatMul
            | Op::Add
            | Op::Mul
            | Op::Concat { .. }
            | Op::GlobalAveragePool
            | Op::AveragePool { .. }
            | Op::MaxPool { .. }
            | Op::Relu
            | Op::Clip
            | Op::Flatten { .. }
            | Op::Reshape { .. }
            | Op::Transpose { .. }
            | Op::Squeeze { .. }
            | Op::Unsqueeze { .. }
            | Op::Sigmoid
            | Op::HardSwish
            | Op::HardSigmoid { .. }
    )
}

/// Ops that only move data: their output keeps their input's parameters.
fn moves_data(op: &Op) -> bool {
    matches!(
        op,
        Op::Flatten { .. }
            | Op::Reshape { .. }
            | Op::Transpose { .. }
            | Op::Squeeze { .. }
            | Op::Unsqueeze { .. }
            | Op::MaxPool { .. }
    )
}

/// uint8 asymmetric parameters covering `[lo, hi]` (and 0).
pub fn u8_params(lo: f32, hi: f32) -> (f32, u8) {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let scale = (hi - lo) / 255.0;
    if scale.is_nan() || scale <= 0.0 || !scale.is_finite() {
        return (1.0, 0);
    }
    let zero = (-lo / scale).round().clamp(0.0, 255.0) as u8;
    (scale, zero)
}

/// TFLite's int8 activation parameters for `[lo, hi]`: the uint8 ones of
/// [`u8_params`] with the zero point moved by −128 (the same grid, so a
/// TFLite int8 model and the ONNX QDQ model quantize alike).
pub fn tflite_int8_params(lo: f32, hi: f32) -> (f32, i32) {
    let (scale, zero) = u8_params(lo, hi);
    (scale, zero as i32 - 128)
}

/// int8 symmetric codes (±127, zero point 0) of a float weight per channel
/// along `axis`, with the QDQ pass's error-minimising scale per channel
/// (at least `min_scales[c]`); returns (codes in the weight's layout,
/// scales). The TFLite writer rounds its weights with this.
pub fn int8_per_channel(
    values: &[f32],
    shape: &[usize],
    axis: usize,
    min_scales: Option<&[f32]>,
) -> (Vec<i8>, Vec<f32>) {
    let channels = shape.get(axis).copied().unwrap_or(1).max(1);
    let rows = crate::graph_quant::rows_along(values, shape, axis);
    let len = (rows.len() / channels).max(1);
    let mut codes = vec![0i32; rows.len()];
    let mut scales = Vec::with_capacity(channels);
    for (row, out) in rows.chunks_exact(len).zip(codes.chunks_exact_mut(len)) {
        let floor = min_scales
            .and_then(|m| m.get(scales.len()).copied())
            .unwrap_or(0.0);
        scales.push(int8_row(row, floor, out));
    }
    let codes = crate::graph_quant::scatter_rows(&codes, shape, axis);
    (codes.iter().map(|&c| c as i8).collect(), scales)
}

/// What [`quantize_static`] did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct QdqReport {
    pub activations: usize,
    pub weights: usize,
    pub biases: usize,
    /// Biases moved by the weight rounding's mean shift.
    pub bias_corrections: usize,
}

fn owned(name: String, shape: Vec<usize>, dtype: DType, bytes: Vec<u8>) -> Result<Tensor> {
    Tensor::new(name, shape, dtype, TensorData::Owned(Arc::new(bytes)))
        .map_err(|e| GraphQuantError::Model(e.to_string()))
}

/// Quantizes `model` to QDQ int8 with activation `ranges` (value name →
/// (min, max) seen on calibration data). Values without a range stay float.
/// With `input_means` (value → per-channel mean on calibration data), each
/// Conv/Gemm bias absorbs the mean shift its weight's rounding causes.
pub fn quantize_static(
    model: &mut Model,
    ranges: &HashMap<String, (f32, f32)>,
    input_means: Option<&HashMap<String, Vec<f64>>>,
) -> Result<QdqReport> {
    let graph = model.graph.as_ref().ok_or(GraphQuantError::NoGraph)?;
    let constants: HashSet<String> = model.tensors.iter().map(|t| t.name.clone()).collect();
    let outputs: HashSet<&str> = graph.outputs.iter().map(|v| v.name.as_str()).collect();
    let mut consumers: HashMap<&str, Vec<&Node>> = HashMap::new();
    for n in &graph.nodes {
        for i in &n.inputs {
            consumers.entry(i.as_str()).or_default().push(n);
        }
    }
    let producer: HashMap<&str, &Node> = graph
        .nodes
        .iter()
        .flat_map(|n| n.outputs.iter().map(move |o| (o.as_str(), n)))
        .collect();
    let mut ranges = ranges.clone();
    // Data movement shares its input's parameters (in graph order, so chains
    // of such ops all take the first one's).
    for n in &graph.nodes {
        if moves_data(&n.op) {
            if let Some(r) = ranges.get(&n.inputs[0]).copied() {
                ranges.insert(n.outputs[0].clone(), r);
            }
        }
    }

    // Which activations to quantize.
    let folds_activation = |v: &str| {
        let before = producer.get(v).is_some_and(|p| {
            matches!(
                p.op,
                Op::Conv { .. } | Op::Gemm { .. } | Op::MatMul | Op::Add
            )
        });
        let after = consumers.get(v).is_some_and(|c| {
            !c.is_empty() && c.iter().all(|n| matches!(n.op, Op::Relu | Op::Clip))
        });
        before && after
    };
    let mut chosen: Vec<String> = Vec::new();
    let candidates = graph
        .inputs
        .iter()
        .map(|v| v.name.clone())
        .chain(graph.nodes.iter().flat_map(|n| n.outputs.iter().cloned()));
    for v in candidates {
        if constants.contains(&v) || outputs.contains(v.as_str()) || !ranges.contains_key(&v) {
            continue;
        }
        let read = consumers
            .get(v.as_str())
            .is_some_and(|c| c.iter().any(|n| quantizable(&n.op)));
        let written = producer.get(v.as_str()).is_some_and(|p| quantizable(&p.op));
        if (read || written) && !folds_activation(&v) {
            chosen.push(v);
        }
    }

    let mut names = Names::of(model, graph);

    let mut new_tensors: Vec<Tensor> = Vec::new();
    let mut pairs: HashMap<String, Vec<Node>> = HashMap::new(); // value → its Q, DQ
    let mut renamed: HashMap<String, String> = HashMap::new(); // value → dequantized name
    let mut act_scale: HashMap<String, f32> = HashMap::new();
    for v in &chosen {
        let (lo, hi) = ranges[v];
        let (scale, zero) = u8_params(lo, hi);
        act_scale.insert(v.clone(), scale);
        let s = names.fresh(&format!("{v}_scale"));
        let z = names.fresh(&format!("{v}_zero_point"));
        new_tensors.push(owned(
            s.clone(),
            vec![],
            DType::F32,
            scale.to_le_bytes().to_vec(),
        )?);
        new_tensors.push(owned(z.clone(), vec![], DType::U8, vec![zero])?);
        let q = names.fresh(&format!("{v}_quantized"));
        let dq = names.fresh(&format!("{v}_dequantized"));
        pairs.insert(
            v.clone(),
            vec![
                Node {
                    name: names.fresh(&format!("{v}_QuantizeLinear")),
                    op: Op::QuantizeLinear {
                        axis: 1,
                        block_size: 0,
                        out: DType::U8,
                    },
                    inputs: vec![v.clone(), s.clone(), z.clone()],
                    outputs: vec![q.clone()],
                },
                Node {
                    name: names.fresh(&format!("{v}_DequantizeLinear")),
                    op: Op::DequantizeLinear {
                        axis: 1,
                        block_size: 0,
                    },
                    inputs: vec![q, s, z],
                    outputs: vec![dq.clone()],
                },
            ],
        );
        renamed.insert(v.clone(), dq);
    }

    // Weights (int8 per channel) and biases (int32) of Conv and Gemm whose
    // activation input is quantized; MatMul's constant B per column.
    let mut report = QdqReport {
        activations: chosen.len(),
        ..Default::default()
    };
    let mut weight_nodes: Vec<Node> = Vec::new();
    let mut weight_done: HashMap<String, (String, Vec<f32>)> = HashMap::new();
    let mut weight_errors: HashMap<String, Vec<f32>> = HashMap::new();
    let mut bias_renames: HashMap<(String, String), String> = HashMap::new(); // (node, bias) → dq
    for n in &graph.nodes {
        let axis = match &n.op {
            Op::Conv { .. } => 0,
            Op::Gemm {
                trans_b, trans_a, ..
            } if !trans_a => {
                if *trans_b {
                    0
                } else {
                    1
                }
            }
            Op::MatMul => 1,
            _ => continue,
        };
        let (Some(x), Some(w)) = (n.inputs.first(), n.inputs.get(1)) else {
            continue;
        };
        let Some(&x_scale) = act_scale.get(x) else {
            continue;
        };
        let Some(t) = model.tensor(w) else { continue };
        if t.dtype != DType::F32
            || t.shape.len() < 2
            || (matches!(n.op, Op::MatMul) && t.shape.len() != 2)
        {
            continue;
        }
        // The int32 bias must hold bias / (x_scale · w_scale): a channel with
        // near-zero weights and a large bias gets a coarser weight scale
        // rather than an overflowing bias (its weights barely matter).
        let bias_values = n
            .inputs
            .get(2)
            .filter(|b| !b.is_empty())
            .and_then(|b| model.tensor(b))
            .filter(|bt| bt.dtype == DType::F32 && bt.shape.len() == 1)
            .and_then(|bt| bt.to_f32().ok());
        let min_scales: Option<Vec<f32>> = bias_values
            .as_ref()
            .map(|b| b.iter().map(|v| v.abs() / (x_scale * BIAS_LIMIT)).collect());
        if !weight_done.contains_key(w) {
            let q = quantize_weight(t, axis, min_scales.as_deref(), &mut names)?;
            new_tensors.extend(q.tensors);
            weight_nodes.push(q.node);
            weight_done.insert(w.clone(), (q.dequantized, q.scales));
            weight_errors.insert(w.clone(), q.errors);
            report.weights += 1;
        }
        let w_scales = &weight_done[w].1;
        let shift = input_means
            .and_then(|m| m.get(x))
            .and_then(|mean| weight_bias_shift(&n.op, &t.shape, &weight_errors[w], mean));
        // Bias: Conv's input 2, Gemm's C when it is a vector over the outputs.
        let Some(b) = n.inputs.get(2).filter(|b| !b.is_empty()) else {
            continue;
        };
        let Some(bt) = model.tensor(b) else { continue };
        if bt.dtype != DType::F32 || bt.shape.len() != 1 || bt.shape[0] != w_scales.len() {
            continue;
        }
        let mut bias = bt
            .to_f32()
            .map_err(|e| GraphQuantError::Model(format!("{b}: {e}")))?;
        if let Some(shift) = shift.filter(|s| s.len() == bias.len()) {
            for (b, d) in bias.iter_mut().zip(shift) {
                *b += d;
            }
            report.bias_corrections += 1;
        }
        let scales: Vec<f32> = w_scales.iter().map(|s| s * x_scale).collect();
        let q: Vec<u8> = bias
            .iter()
            .zip(&scales)
            .flat_map(|(v, s)| {
                let q = if *s > 0.0 { (v / s).round() } else { 0.0 };
                (q.clamp(i32::MIN as f32, i32::MAX as f32) as i32).to_le_bytes()
            })
            .collect();
        let qn = names.fresh(&format!("{b}_quantized"));
        let sn = names.fresh(&format!("{b}_scale"));
        let dq = names.fresh(&format!("{b}_dequantized"));
        new_tensors.push(owned(qn.clone(), vec![bias.len()], DType::I32, q)?);
        new_tensors.push(owned(
            sn.clone(),
            vec![bias.len()],
            DType::F32,
            scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
        )?);
        weight_nodes.push(Node {
            name: names.fresh(&format!("{b}_DequantizeLinear")),
            op: Op::DequantizeLinear {
                axis: 0,
                block_size: 0,
            },
            inputs: vec![qn, sn],
            outputs: vec![dq.clone()],
        });
        bias_renames.insert((n.name.clone(), b.clone()), dq);
        report.biases += 1;
    }

    // Rebuild the node list: weight and bias decoders first, then each node
    // (reading dequantized values) followed by its outputs' Q/DQ pairs.
    let graph = model.graph.as_mut().expect("checked above");
    let old = std::mem::take(&mut graph.nodes);
    let mut nodes = weight_nodes;
    for v in graph
        .inputs
        .iter()
        .map(|v| v.name.clone())
        .collect::<Vec<_>>()
    {
        if let Some(p) = pairs.remove(&v) {
            nodes.extend(p);
        }
    }
    for mut n in old {
        for (k, i) in n.inputs.iter_mut().enumerate() {
            if let Some(dq) = bias_renames.get(&(n.name.clone(), i.clone())) {
                *i = dq.clone();
            } else if k == 1 && weight_done.contains_key(i.as_str()) {
                *i = weight_done[i.as_str()].0.clone();
            } else if let Some(dq) = renamed.get(i) {
                *i = dq.clone();
            }
        }
        let outs = n.outputs.clone();
        nodes.push(n);
        for o in outs {
            if let Some(p) = pairs.remove(&o) {
                nodes.extend(p);
            }
        }
    }
    graph.nodes = nodes;
    // Float weights and biases nobody reads any more.
    let read: HashSet<String> = graph
        .nodes
        .iter()
        .flat_map(|n| n.inputs.iter().cloned())
        .chain(graph.outputs.iter().map(|v| v.name.clone()))
        .collect();
    model.tensors.retain(|t| read.contains(&t.name));
    model
        .tensors
        .extend(new_tensors.into_iter().filter(|t| read.contains(&t.name)));
    Ok(report)
}

/// int8 symmetric per-channel codes of `t` along `axis` (error-minimising
/// scale per channel), and the DequantizeLinear that reads them back.
fn quantize_weight(
    t: &Tensor,
    axis: usize,
    min_scales: Option<&[f32]>,
    names: &mut Names,
) -> Result<QuantizedWeight> {
    let v = t
        .to_f32()
        .map_err(|e| GraphQuantError::Model(format!("{}: {e}", t.name)))?;
    let shape = t.shape.clone();
    let channels = shape[axis];
    let rows = crate::graph_quant::rows_along(&v, &shape, axis);
    let len = rows.len() / channels.max(1);
    let mut codes = vec![0i32; rows.len()];
    let mut scales = Vec::with_capacity(channels);
    for (row, out) in rows
        .chunks_exact(len.max(1))
        .zip(codes.chunks_exact_mut(len.max(1)))
    {
        let floor = min_scales
            .and_then(|m| m.get(scales.len()).copied())
            .unwrap_or(0.0);
        scales.push(int8_row(row, floor, out));
    }
    let codes = crate::graph_quant::scatter_rows(&codes, &shape, axis);
    // Rounding error of every weight, in the weight's own layout.
    let per_channel_scale = crate::graph_quant::scatter_rows(
        &(0..rows.len())
            .map(|i| scales[i / len.max(1)])
            .collect::<Vec<f32>>(),
        &shape,
        axis,
    );
    let errors: Vec<f32> = codes
        .iter()
        .zip(&per_channel_scale)
        .zip(&v)
        .map(|((&c, &s), &w)| c as f32 * s - w)
        .collect();
    let codes: Vec<u8> = codes.iter().map(|&c| c as i8 as u8).collect();
    let qn = names.fresh(&format!("{}_quantized", t.name));
    let sn = names.fresh(&format!("{}_scale", t.name));
    let zn = names.fresh(&format!("{}_zero_point", t.name));
    let dq = names.fresh(&format!("{}_dequantized", t.name));
    let tensors = vec![
        owned(qn.clone(), shape, DType::I8, codes)?,
        owned(
            sn.clone(),
            vec![channels],
            DType::F32,
            scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
        )?,
        owned(zn.clone(), vec![channels], DType::I8, vec![0; channels])?,
    ];
    let node = Node {
        name: names.fresh(&format!("{}_DequantizeLinear", t.name)),
        op: Op::DequantizeLinear {
            axis: axis as i64,
            block_size: 0,
        },
        inputs: vec![qn, sn, zn],
        outputs: vec![dq.clone()],
    };
    Ok(QuantizedWeight {
        dequantized: dq,
        scales,
        errors,
        node,
        tensors,
    })
}

struct QuantizedWeight {
    /// The DequantizeLinear's output name.
    dequantized: String,
    scales: Vec<f32>,
    /// Dequantized minus original, in the weight's layout.
    errors: Vec<f32>,
    node: Node,
    tensors: Vec<Tensor>,
}

/// −(ΔW · E[x]) per output channel: the mean shift that rounding the
/// weight gives the output (DFQ's bias correction), for a Conv weight
/// `[M, C/group, k…]` or a Gemm weight (`[N, K]` with `trans_b`, else `[K, N]`).
fn weight_bias_shift(op: &Op, shape: &[usize], errors: &[f32], mean: &[f64]) -> Option<Vec<f32>> {
    match op {
        Op::Conv { group, .. } => {
            let m = shape[0];
            let per_group_in = shape[1];
            let taps: usize = shape[2..].iter().product();
            let outs_per_group = m / (*group).max(1);
            if mean.len() != per_group_in * group || outs_per_group == 0 {
                return None;
            }
            let len = per_group_in * taps;
            Some(
                (0..m)
                    .map(|c| {
                        let g = c / outs_per_group;
                        let row = &errors[c * len..(c + 1) * len];
                        -row.iter()
                            .enumerate()
                            .map(|(j, &e)| e as f64 * mean[g * per_group_in + j / taps])
                            .sum::<f64>() as f32
                    })
                    .collect(),
            )
        }
        Op::Gemm { trans_b, .. } => {
            let (n, k) = if *trans_b {
                (shape[0], shape[1])
            } else {
                (shape[1], shape[0])
            };
            if mean.len() != k {
                return None;
            }
            Some(
                (0..n)
                    .map(|o| {
                        -(0..k)
                            .map(|i| {
                                let e = if *trans_b {
                                    errors[o * k + i]
                                } else {
                                    errors[i * n + o]
                                };
                                e as f64 * mean[i]
                            })
                            .sum::<f64>() as f32
                    })
                    .collect(),
            )
        }
        _ => None,
    }
}

/// Symmetric int8 codes in ±127 (onnxruntime's u8s8 kernels assume the
/// range) for `row`, with the scale among a few shrunken ranges that gives
/// the least squared error; returns the scale.
fn int8_row(row: &[f32], floor: f32, codes: &mut [i32]) -> f32 {
    let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
    if amax.is_nan() || amax <= 0.0 || amax / 127.0 < floor {
        let scale = if floor > 0.0 { floor } else { 1.0 };
        for (c, &v) in codes.iter_mut().zip(row) {
            *c = (v / scale).round().clamp(-127.0, 127.0) as i32;
        }
        return scale;
    }
    let mut best = (f64::INFINITY, amax / 127.0);
    for shrink in [1.0f32, 0.99, 0.98, 0.96, 0.94, 0.92, 0.9] {
        let scale = (amax * shrink / 127.0).max(floor);
        let err: f64 = row
            .iter()
            .map(|&v| {
                let q = (v / scale).round().clamp(-127.0, 127.0);
                let d = (q * scale - v) as f64;
                d * d
            })
            .sum();
        if err < best.0 {
            best = (err, scale);
        }
    }
    let scale = best.1;
    for (c, &v) in codes.iter_mut().zip(row) {
        *c = (v / scale).round().clamp(-127.0, 127.0) as i32;
    }
    scale
}
