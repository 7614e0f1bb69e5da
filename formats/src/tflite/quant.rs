//! Integer TFLite models from a lowered float [`TflModel`].
//!
//! - [`dynamic_range`]: int8 per-channel symmetric weights of CONV_2D,
//!   DEPTHWISE_CONV_2D and FULLY_CONNECTED with float activations (TFLite's
//!   hybrid kernels quantize the input at run time); biases stay float.
//! - [`full_int8`]: every op the spec covers runs on int8 tensors, by the
//!   TFLite quantization spec: weights int8 symmetric per output channel
//!   (zero point 0; axis 0 for CONV_2D and FULLY_CONNECTED, 3 for
//!   DEPTHWISE_CONV_2D), activations int8 asymmetric per tensor with the
//!   calibrated parameters given by tensor name, biases int32 at input
//!   scale × weight scale, SOFTMAX/LOGISTIC outputs at (1/256, −128) and
//!   TANH at (1/128, 0), data movement (RESHAPE, TRANSPOSE, pools, PAD,
//!   GATHER, SQUEEZE, STRIDED_SLICE) keeping its input's parameters, and
//!   CONCATENATION inputs requantized to its output's. Fused ReLU/ReLU6 stay
//!   fused: the output's calibrated range already lies inside the clamp.
//!   An op with no int8 kernel here (or with a tensor without calibrated
//!   parameters) runs in float between DEQUANTIZE and QUANTIZE. Graph inputs
//!   and outputs stay float behind QUANTIZE/DEQUANTIZE, as TF's converter
//!   does, unless `int8_io`.
//!
//! With `int16_activations` (TFLite's 16x8 mode) the activations are int16
//! symmetric (zero point 0), biases int64, and SOFTMAX/LOGISTIC/TANH outputs
//! at (1/32768, 0); weights stay int8. LiteRT runs these in its builtin
//! int16 kernels (XNNPACK has none).
//!
//! Op versions are the ones TF's converter writes for these signatures
//! (TF Lite's `op_version.cc`).

use std::collections::HashMap;
use std::sync::Arc;

use edgec_core::TensorData;

use super::model::{BuiltinOperator as B, Options, Quantization, TensorType, TflModel, TflOp};

/// Rounds a float weight to int8 codes, symmetric per channel along `axis`
/// (zero point 0, codes in ±127), optionally with a lower bound on each
/// channel's scale: `(values, shape, axis, min_scales) → (codes, scales)`.
pub type WeightQuantizer<'a> =
    &'a dyn Fn(&[f32], &[usize], usize, Option<&[f32]>) -> (Vec<i8>, Vec<f32>);

/// int8 activation parameters `(scale, zero_point)` by tensor name.
pub type ActParams = HashMap<String, (f32, i32)>;

/// The largest int32 bias code (half of i32's range: headroom for the
/// accumulator it is added to), as the QDQ pass.
const BIAS_LIMIT: f64 = (1u32 << 30) as f64;

/// Plain absmax rounding: scale = max |w| / 127 per channel.
pub fn absmax_int8(
    values: &[f32],
    shape: &[usize],
    axis: usize,
    min_scales: Option<&[f32]>,
) -> (Vec<i8>, Vec<f32>) {
    let dim = shape.get(axis).copied().unwrap_or(1).max(1);
    let inner: usize = shape.get(axis + 1..).map_or(1, |s| s.iter().product());
    let inner = inner.max(1);
    let mut amax = vec![0f32; dim];
    for (k, v) in values.iter().enumerate() {
        let c = (k / inner) % dim;
        amax[c] = amax[c].max(v.abs());
    }
    let scales: Vec<f32> = amax
        .iter()
        .enumerate()
        .map(|(c, &a)| {
            let floor = min_scales.and_then(|m| m.get(c).copied()).unwrap_or(0.0);
            let s = (a / 127.0).max(floor);
            if s > 0.0 && s.is_finite() {
                s
            } else {
                1.0
            }
        })
        .collect();
    let codes = values
        .iter()
        .enumerate()
        .map(|(k, &v)| (v / scales[(k / inner) % dim]).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (codes, scales)
}

/// int8 asymmetric per-tensor parameters covering `[lo, hi]` and 0.
pub fn int8_params(lo: f32, hi: f32) -> (f32, i32) {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let scale = (hi - lo) / 255.0;
    if scale.is_nan() || scale <= 0.0 || !scale.is_finite() {
        return (1.0, 0);
    }
    let zero = (-lo / scale).round().clamp(0.0, 255.0) as i32 - 128;
    (scale, zero)
}

fn owned(v: Vec<u8>) -> TensorData {
    TensorData::Owned(Arc::new(v))
}

fn f32s(m: &TflModel, t: usize) -> Vec<f32> {
    m.tensors[t]
        .data
        .as_ref()
        .map(|d| {
            d.bytes()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        })
        .unwrap_or_default()
}

fn is_f32_const(m: &TflModel, t: usize) -> bool {
    m.tensors[t].data.is_some() && m.tensors[t].dtype == TensorType::FLOAT32
}

fn is_f32_act(m: &TflModel, t: usize) -> bool {
    m.tensors[t].data.is_none() && m.tensors[t].dtype == TensorType::FLOAT32
}

fn per_tensor(scale: f32, zp: i64) -> Quantization {
    Quantization {
        scale: vec![scale],
        zero_point: vec![zp],
        quantized_dimension: 0,
    }
}

/// The weight's per-channel axis in an op (None: not a weighted op).
fn weight_axis(code: B) -> Option<usize> {
    match code {
        B::CONV_2D | B::FULLY_CONNECTED => Some(0),
        B::DEPTHWISE_CONV_2D => Some(3),
        _ => None,
    }
}

/// Adds the int8 per-channel copy of float constant `w` (shape checked by
/// the caller) and returns (tensor, scales).
fn add_int8_weight(
    m: &mut TflModel,
    w: usize,
    axis: usize,
    min_scales: Option<&[f32]>,
    quantize: WeightQuantizer,
) -> (usize, Vec<f32>) {
    let values = f32s(m, w);
    let shape = m.tensors[w].shape.clone();
    let (codes, scales) = quantize(&values, &shape, axis, min_scales);
    let name = format!("{}_int8", m.tensors[w].name);
    let id = m.add_const(
        name,
        shape,
        TensorType::INT8,
        owned(codes.iter().map(|&c| c as u8).collect()),
    );
    m.tensors[id].quant = Some(Quantization {
        scale: scales.clone(),
        zero_point: vec![0; scales.len()],
        quantized_dimension: axis as i32,
    });
    (id, scales)
}

/// QUANTIZE (float or integer → integer) or DEQUANTIZE of `from` into
/// `to`, at the versions TF writes for int8.
fn convert_op(code: B, from: usize, to: usize) -> TflOp {
    TflOp {
        code,
        version: if code == B::DEQUANTIZE { 2 } else { 1 },
        inputs: vec![Some(from)],
        outputs: vec![to],
        options: Options::Empty,
    }
}

/// Drops ops nothing reads (unless they write a graph output) and tensors
/// nothing refers to, renumbering the rest.
fn prune(m: &mut TflModel) {
    let n = m.tensors.len();
    let mut live_t = vec![false; n];
    for (_, t) in m.inputs.iter().chain(&m.outputs) {
        live_t[*t] = true;
    }
    let mut live_op = vec![false; m.ops.len()];
    for (k, op) in m.ops.iter().enumerate().rev() {
        if op.outputs.iter().any(|&o| live_t[o]) {
            live_op[k] = true;
            for &i in op.inputs.iter().flatten() {
                live_t[i] = true;
            }
        }
    }
    let mut k = 0;
    m.ops.retain(|_| {
        k += 1;
        live_op[k - 1]
    });
    let mut remap = vec![usize::MAX; n];
    let mut tensors = Vec::new();
    for (i, t) in std::mem::take(&mut m.tensors).into_iter().enumerate() {
        if live_t[i] {
            remap[i] = tensors.len();
            tensors.push(t);
        }
    }
    m.tensors = tensors;
    for op in &mut m.ops {
        for i in op.inputs.iter_mut().flatten() {
            *i = remap[*i];
        }
        for o in &mut op.outputs {
            *o = remap[*o];
        }
    }
    for (_, t) in m.inputs.iter_mut().chain(m.outputs.iter_mut()) {
        *t = remap[*t];
    }
}

/// What a quantization did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Int8Report {
    /// Weights stored as int8.
    pub weights: usize,
    /// Ops running on int8 tensors (QUANTIZE/DEQUANTIZE not counted).
    pub int8_ops: usize,
    /// Names of ops left in float (no int8 kernel or no calibrated range).
    pub float_ops: Vec<String>,
    /// Biases moved by their weight's rounding error (bias correction).
    pub bias_corrections: usize,
}

/// Weights smaller than this stay float in dynamic range, as TF's converter
/// leaves them (its `min_elements`): they save little and are the stem and
/// the narrow depthwise filters, where rounding costs the most.
pub const DYNAMIC_MIN_ELEMENTS: usize = 1024;

/// Dynamic-range quantization: int8 per-channel weights of CONV_2D,
/// DEPTHWISE_CONV_2D and FULLY_CONNECTED (hybrid kernels) with at least
/// `min_elements` weights ([`DYNAMIC_MIN_ELEMENTS`] for TF's choice), float
/// activations and biases.
pub fn dynamic_range(
    m: &mut TflModel,
    quantize: WeightQuantizer,
    min_elements: usize,
) -> Int8Report {
    let mut report = Int8Report::default();
    let mut done: HashMap<usize, usize> = HashMap::new();
    for k in 0..m.ops.len() {
        let code = m.ops[k].code;
        let Some(axis) = weight_axis(code) else {
            continue;
        };
        let (Some(Some(x)), Some(Some(w))) = (m.ops[k].inputs.first(), m.ops[k].inputs.get(1))
        else {
            continue;
        };
        let (x, w) = (*x, *w);
        if !is_f32_act(m, x) || !is_f32_const(m, w) || m.tensors[w].shape.len() <= axis {
            continue;
        }
        if m.tensors[w].numel() < min_elements {
            continue;
        }
        let q = match done.get(&w) {
            Some(&q) => q,
            None => {
                let (q, _) = add_int8_weight(m, w, axis, None, quantize);
                done.insert(w, q);
                report.weights += 1;
                q
            }
        };
        let op = &mut m.ops[k];
        op.inputs[1] = Some(q);
        // hybrid per-channel versions (op_version.cc)
        op.version = match code {
            B::CONV_2D => 5,
            B::DEPTHWISE_CONV_2D => 6,
            _ => 12,
        };
        if let Options::FullyConnected {
            asymmetric_quantize_inputs,
            ..
        } = &mut op.options
        {
            *asymmetric_quantize_inputs = true;
        }
        report.int8_ops += 1;
    }
    prune(m);
    report
}

/// How to quantize fully.
pub struct Int8Options<'a> {
    /// Graph inputs and outputs int8 (no QUANTIZE/DEQUANTIZE at the ends).
    pub int8_io: bool,
    /// 16x8: int16 activations (with `params` from [`int16_params`]),
    /// int64 biases; weights int8.
    pub int16_activations: bool,
    pub weights: WeightQuantizer<'a>,
    /// Per-channel means (channel axis 1 of the graph's NCHW values, by
    /// tensor name) of the inputs of weighted ops on the calibration data:
    /// each bias then absorbs the mean shift −ΔW·E[x] that rounding its
    /// weight causes (DFQ's bias correction, as the ONNX static int8 does).
    pub input_means: Option<&'a HashMap<String, Vec<f64>>>,
}

/// −(ΔW·E[x]) per output channel for a TFLite weight: CONV_2D
/// `[O, kh, kw, I]`, FULLY_CONNECTED `[O, I]` or DEPTHWISE_CONV_2D
/// `[1, kh, kw, C·m]`; `None` when the means do not fit the weight.
fn bias_shift(code: B, shape: &[usize], errors: &[f32], mean: &[f64]) -> Option<Vec<f32>> {
    let (&first, &last) = (shape.first()?, shape.last()?);
    if mean.is_empty() || first == 0 || last == 0 {
        return None;
    }
    match code {
        B::CONV_2D | B::FULLY_CONNECTED if mean.len() == last => {
            let inner = errors.len() / first;
            Some(
                errors
                    .chunks_exact(inner)
                    .map(|row| {
                        -row.iter()
                            .enumerate()
                            .map(|(j, &e)| e as f64 * mean[j % last])
                            .sum::<f64>() as f32
                    })
                    .collect(),
            )
        }
        B::DEPTHWISE_CONV_2D if last.is_multiple_of(mean.len()) => {
            let mult = last / mean.len();
            let mut shift = vec![0f64; last];
            for (k, &e) in errors.iter().enumerate() {
                shift[k % last] -= e as f64 * mean[(k % last) / mult];
            }
            Some(shift.into_iter().map(|v| v as f32).collect())
        }
        _ => None,
    }
}

/// Ops whose output takes the input's parameters.
fn shares_params(code: B) -> bool {
    matches!(
        code,
        B::RESHAPE
            | B::SQUEEZE
            | B::EXPAND_DIMS
            | B::TRANSPOSE
            | B::MAX_POOL_2D
            | B::AVERAGE_POOL_2D
            | B::PAD
            | B::GATHER
            | B::STRIDED_SLICE
            | B::SLICE
    )
}

/// Fixed output parameters of the spec (int8, or int16 in 16x8 mode).
fn fixed_params(code: B, int16: bool) -> Option<(f32, i64)> {
    match code {
        B::SOFTMAX | B::LOGISTIC | B::TANH if int16 => Some((1.0 / 32768.0, 0)),
        B::SOFTMAX | B::LOGISTIC => Some((1.0 / 256.0, -128)),
        B::TANH => Some((1.0 / 128.0, 0)),
        _ => None,
    }
}

/// Symmetric int16 parameters `(max(|lo|, |hi|) / 32767, 0)` of a range.
pub fn int16_params(lo: f32, hi: f32) -> (f32, i32) {
    let m = lo.abs().max(hi.abs());
    (if m > 0.0 { m / 32767.0 } else { 1.0 / 32767.0 }, 0)
}

/// Ops written with int8 tensors.
fn has_int8_kernel(code: B) -> bool {
    shares_params(code)
        || fixed_params(code, false).is_some()
        || matches!(
            code,
            B::CONV_2D
                | B::DEPTHWISE_CONV_2D
                | B::FULLY_CONNECTED
                | B::ADD
                | B::SUB
                | B::MUL
                | B::MEAN
                | B::CONCATENATION
                | B::RELU
                | B::RELU6
                | B::MAXIMUM
                | B::MINIMUM
        )
}

/// The version TF's converter writes for the int8 signature of `op`.
fn int8_version(op: &TflOp, q: &[Option<(f32, i64)>]) -> i32 {
    match op.code {
        B::CONV_2D | B::DEPTHWISE_CONV_2D => 3,
        B::FULLY_CONNECTED => match op.options {
            Options::FullyConnected {
                keep_num_dims: true,
                ..
            } => 5,
            _ => 4,
        },
        B::MUL => {
            let s = |k: usize| {
                op.inputs
                    .get(k)
                    .copied()
                    .flatten()
                    .and_then(|t| q[t])
                    .map_or(0.0, |p| p.0 as f64)
            };
            let out = q[op.outputs[0]].map_or(0.0, |p| p.0 as f64);
            if out > 0.0 && s(0) * s(1) / out >= 1.0 {
                3
            } else {
                2
            }
        }
        B::RESHAPE | B::SQUEEZE | B::EXPAND_DIMS => 1,
        _ => 2,
    }
}

/// Full-integer int8 quantization of a lowered float model with activation
/// parameters `params` (by tensor name, as the lowering names tensors after
/// the graph's values).
pub fn full_int8(
    src: &TflModel,
    params: &ActParams,
    opts: &Int8Options,
) -> Result<(TflModel, Int8Report), String> {
    let n = src.tensors.len();
    let mut q: Vec<Option<(f32, i64)>> = src
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if is_f32_act(src, i) {
                params.get(&t.name).map(|&(s, z)| (s, z as i64))
            } else {
                None
            }
        })
        .collect();
    for op in &src.ops {
        let (Some(Some(x)), [o]) = (op.inputs.first(), op.outputs.as_slice()) else {
            continue;
        };
        if !is_f32_act(src, *x) || !is_f32_act(src, *o) {
            continue;
        }
        if shares_params(op.code) && q[*x].is_some() {
            q[*o] = q[*x];
        } else if let Some(f) =
            fixed_params(op.code, opts.int16_activations).filter(|_| q[*x].is_some())
        {
            q[*o] = Some(f);
        }
    }

    // which ops run in int8
    let int8_op = |op: &TflOp| -> bool {
        if !has_int8_kernel(op.code) || op.outputs.len() != 1 {
            return false;
        }
        let o = op.outputs[0];
        if !is_f32_act(src, o) || q[o].is_none() {
            return false;
        }
        for (k, i) in op.inputs.iter().enumerate() {
            let Some(i) = *i else { continue };
            if is_f32_act(src, i) {
                if q[i].is_none() {
                    return false;
                }
            } else if is_f32_const(src, i) {
                let weighted = weight_axis(op.code).is_some();
                let ok = if weighted {
                    let axis = weight_axis(op.code).expect("weighted");
                    (k == 1 && src.tensors[i].shape.len() > axis) || k == 2
                } else {
                    // elementwise and concatenation operands, not moved data
                    !shares_params(op.code)
                };
                if !ok {
                    return false;
                }
            } else if k == 0 {
                return false;
            }
        }
        if let Some(axis) = weight_axis(op.code) {
            // the weight must be a float constant, the bias one of its channels
            let w = op.inputs.get(1).copied().flatten();
            let Some(w) = w.filter(|&w| is_f32_const(src, w)) else {
                return false;
            };
            let channels = src.tensors[w].shape[axis];
            if let Some(b) = op.inputs.get(2).copied().flatten() {
                if !is_f32_const(src, b) || src.tensors[b].numel() != channels {
                    return false;
                }
            }
        }
        true
    };
    let modes: Vec<bool> = src.ops.iter().map(int8_op).collect();

    // parameters only where an int8 op reads or writes the tensor (or the
    // graph's int8 inputs and outputs)
    let mut touched = vec![false; n];
    for (op, &int8) in src.ops.iter().zip(&modes) {
        if int8 {
            for &t in op.inputs.iter().flatten().chain(&op.outputs) {
                touched[t] = true;
            }
        }
    }
    if opts.int8_io {
        for (_, t) in src.inputs.iter().chain(&src.outputs) {
            touched[*t] = true;
        }
    }
    for (t, p) in q.iter_mut().enumerate() {
        if !touched[t] {
            *p = None;
        }
    }

    let act_type = if opts.int16_activations {
        TensorType::INT16
    } else {
        TensorType::INT8
    };
    let mut m = src.clone();
    m.ops.clear();
    m.inputs.clear();
    m.outputs.clear();
    for (t, p) in q.iter().enumerate() {
        if let Some((s, z)) = *p {
            m.tensors[t].dtype = act_type;
            m.tensors[t].quant = Some(per_tensor(s, z));
        }
    }
    let mut report = Int8Report::default();
    // the float copy of a quantized tensor, for float consumers and the ends
    let mut float_view: HashMap<usize, usize> = HashMap::new();
    let rename_int8 = |m: &mut TflModel, t: usize| {
        let name = std::mem::take(&mut m.tensors[t].name);
        m.tensors[t].name = format!("{name}_int8");
        name
    };
    for (name, t) in &src.inputs {
        let t = *t;
        if q[t].is_some() && !opts.int8_io {
            let shape = m.tensors[t].shape.clone();
            let tname = rename_int8(&mut m, t);
            let f = m.add_tensor(tname, shape, TensorType::FLOAT32);
            m.ops.push(convert_op(B::QUANTIZE, f, t));
            float_view.insert(t, f);
            m.inputs.push((name.clone(), f));
        } else {
            m.inputs.push((name.clone(), t));
        }
    }
    let mut int8_weights: HashMap<(usize, u32), (usize, Vec<f32>)> = HashMap::new();
    let mut int8_consts: HashMap<(usize, u32, i64), usize> = HashMap::new();
    for (op, &int8) in src.ops.iter().zip(&modes) {
        if !int8 {
            let mut new = op.clone();
            for i in new.inputs.iter_mut().flatten() {
                if q[*i].is_none() {
                    continue;
                }
                let f = match float_view.get(i) {
                    Some(&f) => f,
                    None => {
                        let shape = m.tensors[*i].shape.clone();
                        let name = format!("{}_dequantized", m.tensors[*i].name);
                        let f = m.add_tensor(name, shape, TensorType::FLOAT32);
                        m.ops.push(convert_op(B::DEQUANTIZE, *i, f));
                        float_view.insert(*i, f);
                        f
                    }
                };
                *i = f;
            }
            let mut after = Vec::new();
            for o in new.outputs.iter_mut() {
                if q[*o].is_none() {
                    continue;
                }
                let shape = m.tensors[*o].shape.clone();
                let name = format!("{}_float", m.tensors[*o].name);
                let f = m.add_tensor(name, shape, TensorType::FLOAT32);
                after.push(convert_op(B::QUANTIZE, f, *o));
                float_view.insert(*o, f);
                *o = f;
            }
            report.float_ops.push(
                op.code
                    .variant_name()
                    .map_or_else(|| format!("op {}", op.code.0), str::to_string),
            );
            m.ops.push(new);
            m.ops.extend(after);
            continue;
        }
        report.int8_ops += 1;
        let mut new = op.clone();
        new.version = int8_version(op, &q);
        let o = op.outputs[0];
        let out_q = q[o].expect("int8 ops have output parameters");
        if let Some(axis) = weight_axis(op.code) {
            let x = op.inputs[0].expect("checked");
            let w = op.inputs[1].expect("checked");
            let in_s = q[x].expect("checked").0;
            let bias = op.inputs.get(2).copied().flatten();
            let bias_v = bias.map(|b| f32s(src, b));
            let (wq, w_scales) = match int8_weights.get(&(w, in_s.to_bits())) {
                Some(v) => v.clone(),
                None => {
                    let min: Option<Vec<f32>> = bias_v.as_ref().map(|b| {
                        b.iter()
                            .map(|v| (v.abs() as f64 / (in_s as f64 * BIAS_LIMIT)) as f32)
                            .collect()
                    });
                    let v = add_int8_weight(&mut m, w, axis, min.as_deref(), opts.weights);
                    report.weights += 1;
                    int8_weights.insert((w, in_s.to_bits()), v.clone());
                    v
                }
            };
            new.inputs[1] = Some(wq);
            let channels = w_scales.len();
            let shift = opts
                .input_means
                .and_then(|means| means.get(&src.tensors[x].name))
                .and_then(|mean| {
                    let shape = &src.tensors[w].shape;
                    let stride: usize = shape[axis + 1..].iter().product();
                    let codes = m.tensors[wq].data.as_ref()?.bytes();
                    let errors: Vec<f32> = f32s(src, w)
                        .iter()
                        .zip(codes)
                        .enumerate()
                        .map(|(k, (&v, &c))| {
                            c as i8 as f32 * w_scales[(k / stride.max(1)) % channels] - v
                        })
                        .collect();
                    bias_shift(op.code, shape, &errors, mean)
                })
                .filter(|s| s.len() == channels);
            if shift.is_some() {
                report.bias_corrections += 1;
            }
            // conv kernels want a bias; FULLY_CONNECTED takes -1 as TF writes
            if bias.is_some() || op.code != B::FULLY_CONNECTED || shift.is_some() {
                let mut b = bias_v.unwrap_or_else(|| vec![0.0; channels]);
                for (b, s) in b.iter_mut().zip(shift.iter().flatten()) {
                    *b += s;
                }
                let scales: Vec<f32> = w_scales.iter().map(|s| s * in_s).collect();
                let int16 = opts.int16_activations;
                let codes: Vec<u8> = b
                    .iter()
                    .zip(&w_scales)
                    .flat_map(|(&v, &ws)| {
                        let s = in_s as f64 * ws as f64;
                        let c = if s > 0.0 { (v as f64 / s).round() } else { 0.0 };
                        // 16x8 kernels take int64 biases
                        if int16 {
                            (c.clamp(i64::MIN as f64, i64::MAX as f64) as i64)
                                .to_le_bytes()
                                .to_vec()
                        } else {
                            (c.clamp(i32::MIN as f64, i32::MAX as f64) as i32)
                                .to_le_bytes()
                                .to_vec()
                        }
                    })
                    .collect();
                let (suffix, btype) = if int16 {
                    ("int64", TensorType::INT64)
                } else {
                    ("int32", TensorType::INT32)
                };
                let name = match bias {
                    Some(b) => format!("{}_{suffix}", src.tensors[b].name),
                    None => format!("{}_bias", src.tensors[o].name),
                };
                let bt = m.add_const(name, vec![channels], btype, owned(codes));
                m.tensors[bt].quant = Some(Quantization {
                    scale: scales,
                    zero_point: vec![0; channels],
                    quantized_dimension: 0,
                });
                if new.inputs.len() < 3 {
                    new.inputs.resize(3, None);
                }
                new.inputs[2] = Some(bt);
            }
        } else {
            // float constant operands: per tensor on their own range, or at
            // the output's parameters for a concatenation
            for k in 0..new.inputs.len() {
                let Some(i) = new.inputs[k] else { continue };
                if is_f32_const(src, i) {
                    let v = f32s(src, i);
                    let (s, z) = if op.code == B::CONCATENATION {
                        out_q
                    } else {
                        let lo = v.iter().copied().fold(0f32, f32::min);
                        let hi = v.iter().copied().fold(0f32, f32::max);
                        let (s, z) = if opts.int16_activations {
                            int16_params(lo, hi)
                        } else {
                            int8_params(lo, hi)
                        };
                        (s, z as i64)
                    };
                    let id = match int8_consts.get(&(i, s.to_bits(), z)) {
                        Some(&id) => id,
                        None => {
                            let code = |x: f32| (x / s).round_ties_even() + z as f32;
                            let codes: Vec<u8> = if opts.int16_activations {
                                v.iter()
                                    .flat_map(|&x| {
                                        (code(x).clamp(-32768.0, 32767.0) as i16).to_le_bytes()
                                    })
                                    .collect()
                            } else {
                                v.iter()
                                    .map(|&x| code(x).clamp(-128.0, 127.0) as i8 as u8)
                                    .collect()
                            };
                            let kind = if opts.int16_activations {
                                "int16"
                            } else {
                                "int8"
                            };
                            let name = format!("{}_{kind}", src.tensors[i].name);
                            let shape = src.tensors[i].shape.clone();
                            let id = m.add_const(name, shape, act_type, owned(codes));
                            m.tensors[id].quant = Some(per_tensor(s, z));
                            int8_consts.insert((i, s.to_bits(), z), id);
                            id
                        }
                    };
                    new.inputs[k] = Some(id);
                } else if op.code == B::CONCATENATION && q[i].is_some_and(|p| p != out_q) {
                    // requantize to the output's parameters
                    let shape = m.tensors[i].shape.clone();
                    let name = format!("{}_requantized", src.tensors[i].name);
                    let r = m.add_tensor(name, shape, act_type);
                    m.tensors[r].quant = Some(per_tensor(out_q.0, out_q.1));
                    m.ops.push(convert_op(B::QUANTIZE, i, r));
                    new.inputs[k] = Some(r);
                }
            }
        }
        m.ops.push(new);
    }
    for (name, t) in &src.outputs {
        let t = *t;
        if q[t].is_none() || opts.int8_io {
            m.outputs.push((name.clone(), t));
            continue;
        }
        let f = match float_view.get(&t) {
            Some(&f) => f,
            None => {
                let shape = m.tensors[t].shape.clone();
                let f = m.add_tensor(String::new(), shape, TensorType::FLOAT32);
                m.ops.push(convert_op(B::DEQUANTIZE, t, f));
                f
            }
        };
        // the float output takes the value's name
        let tname = rename_int8(&mut m, t);
        m.tensors[f].name = tname;
        m.outputs.push((name.clone(), f));
    }
    prune(&mut m);
    if m.ops.is_empty() {
        return Err("nothing to run after quantization".into());
    }
    Ok((m, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bias_shift_is_minus_the_weight_error_times_the_input_mean() {
        // CONV_2D [O=2, 1, 1, I=3]: shift[o] = −Σ_i e[o, i]·mean[i]
        let e = [1.0, 0.5, -1.0, 0.0, 2.0, 1.0];
        let mean = [1.0, 2.0, 3.0];
        let s = bias_shift(B::CONV_2D, &[2, 1, 1, 3], &e, &mean).unwrap();
        assert_eq!(s, vec![-(1.0 + 1.0 - 3.0), -(4.0 + 3.0)]);
        // DEPTHWISE_CONV_2D [1, 2 taps, 1, C=2]: shift[c] = −Σ_t e[t, c]·mean[c]
        let e = [1.0, 2.0, 3.0, -1.0];
        let s = bias_shift(B::DEPTHWISE_CONV_2D, &[1, 2, 1, 2], &e, &[2.0, 5.0]).unwrap();
        assert_eq!(s, vec![-(4.0 * 2.0), -(1.0 * 5.0)]);
        // means of the wrong length: no correction
        assert!(bias_shift(B::CONV_2D, &[2, 1, 1, 3], &[0.0; 6], &[1.0; 4]).is_none());
    }
}
