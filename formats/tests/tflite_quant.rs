//! Integer TFLite files: a small CNN quantized to full int8 carries the
//! spec's parameters (per-channel symmetric weights along the output
//! channel, int32 biases at input × weight scale, SOFTMAX at (1/256, −128),
//! shared parameters through pools and reshapes, the spec's op versions),
//! reads back as edgec's integer simulation close to the float model, and
//! gives the same bytes twice; int8 I/O keeps no QUANTIZE/DEQUANTIZE;
//! dynamic range stores int8 weights with float activations.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor as CTensor};
use common::{vi, window};
use edgec_core::runtime::graph::GraphRuntime;
use edgec_core::{DType, Graph, Model, Node, Op, Tensor};
use edgec_formats::tflite::model::{BuiltinOperator as B, Options, TensorType, TflModel};
use edgec_formats::tflite::{lower, quant, read_model, writer};

fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * scale
        })
        .collect()
}

/// conv 3×3 SAME + ReLU6 → depthwise 3×3 stride 2 + ReLU → max pool →
/// residual add → global average pool → flatten → Gemm → softmax.
fn cnn() -> Model {
    let mut tensors = Vec::new();
    let mut w = |name: &str, shape: &[usize], scale: f32, seed: u64| {
        let n = shape.iter().product();
        tensors.push(Tensor::from_f32(name, shape.to_vec(), values(n, seed, scale)).unwrap());
        name.to_string()
    };
    w("w1", &[8, 3, 3, 3], 0.4, 1);
    w("b1", &[8], 0.1, 2);
    w("wd", &[8, 1, 3, 3], 0.4, 3);
    w("bd", &[8], 0.1, 4);
    w("wf", &[5, 8], 0.5, 5);
    w("bf", &[5], 0.1, 6);
    tensors.push(Tensor::from_f32("zero", vec![], vec![0.0]).unwrap());
    tensors.push(Tensor::from_f32("six", vec![], vec![6.0]).unwrap());
    let node = |out: &str, op: Op, ins: &[&str]| Node {
        name: format!("n_{out}"),
        op,
        inputs: ins.iter().map(|s| s.to_string()).collect(),
        outputs: vec![out.to_string()],
    };
    let nodes = vec![
        node(
            "c1",
            Op::Conv {
                window: window(3, 1, [1, 1, 1, 1]),
                group: 1,
            },
            &["x", "w1", "b1"],
        ),
        node("r1", Op::Clip, &["c1", "zero", "six"]),
        node(
            "d",
            Op::Conv {
                window: window(3, 2, [0, 0, 1, 1]),
                group: 8,
            },
            &["r1", "wd", "bd"],
        ),
        node("r2", Op::Relu, &["d"]),
        node(
            "mp",
            Op::MaxPool {
                window: window(3, 1, [1, 1, 1, 1]),
            },
            &["r2"],
        ),
        node("res", Op::Add, &["mp", "r2"]),
        node("gap", Op::GlobalAveragePool, &["res"]),
        node("flat", Op::Flatten { axis: 1 }, &["gap"]),
        node(
            "fc",
            Op::Gemm {
                alpha: 1.0,
                beta: 1.0,
                trans_a: false,
                trans_b: true,
            },
            &["flat", "wf", "bf"],
        ),
        node("probs", Op::Softmax { axis: -1 }, &["fc"]),
    ];
    Model {
        tensors,
        graph: Some(Graph {
            inputs: vec![vi("x", &[1, 3, 8, 8])],
            outputs: vec![vi("probs", &[1, 5])],
            nodes,
        }),
        ..Default::default()
    }
}

fn input(seed: u64) -> Vec<f32> {
    values(3 * 64, 100 + seed, 1.0)
}

fn run_nchw(model: &Model, x: &[f32]) -> Vec<f32> {
    let rt = GraphRuntime::new(model).unwrap();
    let t = CTensor::from_vec(x.to_vec(), (1, 3, 8, 8), &Device::Cpu).unwrap();
    let out = rt.run(&[("x", t)]).unwrap();
    out[0].1.flatten_all().unwrap().to_vec1().unwrap()
}

fn run_nhwc(model: &Model, x: &[f32]) -> Vec<f32> {
    let rt = GraphRuntime::new(model).unwrap();
    let t = CTensor::from_vec(x.to_vec(), (1, 3, 8, 8), &Device::Cpu)
        .unwrap()
        .permute((0, 2, 3, 1))
        .unwrap()
        .contiguous()
        .unwrap();
    let out = rt.run(&[("x", t)]).unwrap();
    out[0].1.flatten_all().unwrap().to_vec1().unwrap()
}

/// Min/max of every float value over a few inputs, as int8 parameters.
fn calibrate(model: &Model) -> quant::ActParams {
    ranges(model)
        .iter()
        .map(|(k, &(lo, hi))| (k.clone(), quant::int8_params(lo, hi)))
        .collect()
}

/// Min/max of every float value over a few inputs.
fn ranges(model: &Model) -> HashMap<String, (f32, f32)> {
    let seen: Arc<Mutex<HashMap<String, (f32, f32)>>> = Arc::default();
    let mut rt = GraphRuntime::new(model).unwrap();
    let s = Arc::clone(&seen);
    rt.set_hook(Some(Arc::new(move |name: &str, t: &CTensor| {
        let Ok(v) = t.flatten_all().and_then(|t| t.to_vec1::<f32>()) else {
            return;
        };
        let mut m = s.lock().unwrap();
        let e = m.entry(name.to_string()).or_insert((0.0, 0.0));
        for x in v {
            e.0 = e.0.min(x);
            e.1 = e.1.max(x);
        }
    })));
    for k in 0..8 {
        let x = input(k);
        let t = CTensor::from_vec(x.clone(), (1, 3, 8, 8), &Device::Cpu).unwrap();
        rt.run(&[("x", t)]).unwrap();
        let e = seen
            .lock()
            .unwrap()
            .entry("x".into())
            .or_insert((0.0, 0.0))
            .to_owned();
        let lo = x.iter().copied().fold(e.0, f32::min);
        let hi = x.iter().copied().fold(e.1, f32::max);
        seen.lock().unwrap().insert("x".into(), (lo, hi));
    }
    let m = seen.lock().unwrap();
    m.clone()
}

fn full_int8(model: &Model, int8_io: bool) -> TflModel {
    let tfl = lower::lower(model, &Default::default()).unwrap();
    let (q, report) = quant::full_int8(
        &tfl,
        &calibrate(model),
        &quant::Int8Options {
            int8_io,
            int16_activations: false,
            weights: &quant::absmax_int8,
            input_means: None,
        },
    )
    .unwrap();
    assert_eq!(report.weights, 3);
    assert!(report.float_ops.is_empty(), "{:?}", report.float_ops);
    q
}

fn bytes(m: &TflModel) -> Vec<u8> {
    writer::encode(m, writer::INLINE_LIMIT).unwrap().to_vec()
}

fn read_back(m: &TflModel, tag: &str) -> Model {
    let path = std::env::temp_dir().join(format!("edgec-tflq-{tag}-{}.tflite", std::process::id()));
    writer::write_tfl(m, &path, writer::INLINE_LIMIT).unwrap();
    let back = read_model(&path);
    std::fs::remove_file(&path).ok();
    back.unwrap()
}

#[test]
fn full_int8_carries_the_spec_parameters() {
    let m = full_int8(&cnn(), false);
    let find = |code: B| m.ops.iter().find(|o| o.code == code).unwrap();
    let q = |t: usize| m.tensors[t].quant.clone().unwrap();
    // float I/O behind QUANTIZE / DEQUANTIZE
    assert_eq!(m.ops.first().unwrap().code, B::QUANTIZE);
    assert_eq!(m.ops.last().unwrap().code, B::DEQUANTIZE);
    assert_eq!(m.tensors[m.inputs[0].1].dtype, TensorType::FLOAT32);
    assert_eq!(m.tensors[m.outputs[0].1].dtype, TensorType::FLOAT32);
    for (code, axis, version) in [
        (B::CONV_2D, 0, 3),
        (B::DEPTHWISE_CONV_2D, 3, 3),
        (B::FULLY_CONNECTED, 0, 4),
    ] {
        let op = find(code);
        assert_eq!(op.version, version, "{code:?}");
        let (x, w, b) = (
            op.inputs[0].unwrap(),
            op.inputs[1].unwrap(),
            op.inputs[2].unwrap(),
        );
        assert_eq!(m.tensors[x].dtype, TensorType::INT8);
        assert_eq!(m.tensors[w].dtype, TensorType::INT8);
        assert_eq!(m.tensors[b].dtype, TensorType::INT32);
        let (qx, qw, qb) = (q(x), q(w), q(b));
        let channels = m.tensors[w].shape[axis];
        assert_eq!(qw.scale.len(), channels, "{code:?} is per channel");
        assert_eq!(qw.quantized_dimension, axis as i32);
        assert!(qw.zero_point.iter().all(|&z| z == 0));
        assert!(qb.zero_point.iter().all(|&z| z == 0));
        for (sb, sw) in qb.scale.iter().zip(&qw.scale) {
            assert!(
                (sb - qx.scale[0] * sw).abs() <= 1e-6 * sb,
                "{code:?} bias scale"
            );
        }
        let codes = m.tensors[w].data.as_ref().unwrap().bytes();
        assert!(codes.iter().all(|&c| c as i8 >= -127), "weights in ±127");
    }
    let sm = find(B::SOFTMAX);
    assert_eq!(sm.version, 2);
    assert_eq!(
        q(sm.outputs[0]).scale[0],
        1.0 / 256.0,
        "softmax output scale"
    );
    assert_eq!(q(sm.outputs[0]).zero_point[0], -128);
    for code in [B::MAX_POOL_2D, B::RESHAPE] {
        let op = find(code);
        assert_eq!(
            q(op.inputs[0].unwrap()),
            q(op.outputs[0]),
            "{code:?} shares"
        );
    }
    // ReLU6 and ReLU stay fused
    assert!(!m.ops.iter().any(|o| matches!(o.code, B::RELU | B::RELU6)));
    assert!(matches!(
        find(B::CONV_2D).options,
        Options::Conv2D {
            act: edgec_formats::tflite::model::Act::RELU6,
            ..
        }
    ));
    assert_eq!(find(B::ADD).version, 2);
    assert_eq!(find(B::MEAN).version, 2);
}

#[test]
fn full_int8_reads_back_close_to_float_and_deterministic() {
    let float = cnn();
    let m = full_int8(&float, false);
    assert_eq!(bytes(&m), bytes(&full_int8(&float, false)), "same bytes");
    let back = read_back(&m, "full");
    // the simulation quantizes: the graph has Quantize/DequantizeLinear
    let graph = back.graph.as_ref().unwrap();
    assert!(graph
        .nodes
        .iter()
        .any(|n| matches!(n.op, Op::QuantizeLinear { .. })));
    for k in 0..4 {
        let x = input(k);
        let want = run_nchw(&float, &x);
        let got = run_nhwc(&back, &x);
        // softmax outputs are multiples of 1/256
        for g in &got {
            let steps = g * 256.0;
            assert!(
                (steps - steps.round()).abs() < 1e-3,
                "{g} is not on the grid"
            );
        }
        let worst = want
            .iter()
            .zip(&got)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst < 0.05, "sample {k}: int8 vs float {worst}");
    }
}

/// 16x8: every activation int16 with zero point 0, weights int8, biases
/// int64 at input × weight scale, softmax at (1/32768, 0); read back, it is
/// much closer to float than int8.
#[test]
fn int16_activations_are_symmetric_with_int64_biases() {
    let float = cnn();
    let tfl = lower::lower(&float, &Default::default()).unwrap();
    let params: quant::ActParams = ranges(&float)
        .iter()
        .map(|(k, &(lo, hi))| (k.clone(), quant::int16_params(lo, hi)))
        .collect();
    let (m, report) = quant::full_int8(
        &tfl,
        &params,
        &quant::Int8Options {
            int8_io: false,
            int16_activations: true,
            weights: &quant::absmax_int8,
            input_means: None,
        },
    )
    .unwrap();
    assert!(report.float_ops.is_empty(), "{:?}", report.float_ops);
    let q = |t: usize| m.tensors[t].quant.clone().unwrap();
    for op in &m.ops {
        let acts = op.inputs.iter().flatten().chain(&op.outputs).copied();
        for t in acts.filter(|&t| m.tensors[t].data.is_none()) {
            let dt = m.tensors[t].dtype;
            if dt == TensorType::FLOAT32 {
                continue;
            }
            assert_eq!(dt, TensorType::INT16, "{:?} {}", op.code, m.tensors[t].name);
            assert_eq!(
                q(t).zero_point,
                vec![0],
                "{} is symmetric",
                m.tensors[t].name
            );
        }
        if matches!(
            op.code,
            B::CONV_2D | B::DEPTHWISE_CONV_2D | B::FULLY_CONNECTED
        ) {
            let (x, w, b) = (
                op.inputs[0].unwrap(),
                op.inputs[1].unwrap(),
                op.inputs[2].unwrap(),
            );
            assert_eq!(m.tensors[w].dtype, TensorType::INT8);
            assert_eq!(m.tensors[b].dtype, TensorType::INT64);
            for (sb, sw) in q(b).scale.iter().zip(&q(w).scale) {
                assert!((sb - q(x).scale[0] * sw).abs() <= 1e-6 * sb);
            }
        }
    }
    let sm = m.ops.iter().find(|o| o.code == B::SOFTMAX).unwrap();
    assert_eq!(q(sm.outputs[0]).scale[0], 1.0 / 32768.0);
    let back = read_back(&m, "16x8");
    let int8 = read_back(&full_int8(&float, false), "16x8-ref");
    let (mut worst16, mut worst8) = (0f32, 0f32);
    for k in 0..4 {
        let x = input(k);
        let want = run_nchw(&float, &x);
        let got = run_nhwc(&back, &x);
        let got8 = run_nhwc(&int8, &x);
        for ((w, g), g8) in want.iter().zip(&got).zip(&got8) {
            worst16 = worst16.max((w - g).abs());
            worst8 = worst8.max((w - g8).abs());
        }
    }
    assert!(
        worst16 < 0.01 && worst16 < worst8,
        "16x8 {worst16} vs int8 {worst8}"
    );
}

#[test]
fn int8_io_has_integer_ends() {
    let m = full_int8(&cnn(), true);
    assert!(!m
        .ops
        .iter()
        .any(|o| matches!(o.code, B::QUANTIZE | B::DEQUANTIZE)));
    let (i, o) = (m.inputs[0].1, m.outputs[0].1);
    assert_eq!(m.tensors[i].dtype, TensorType::INT8);
    assert_eq!(m.tensors[o].dtype, TensorType::INT8);
    let back = read_back(&m, "io");
    let g = back.graph.as_ref().unwrap();
    assert_eq!(g.inputs[0].dtype, DType::I8);
    assert_eq!(g.outputs[0].dtype, DType::I8);
    // int8 codes in, int8 codes out
    let q = m.tensors[i].quant.clone().unwrap();
    let x: Vec<i64> = input(0)
        .iter()
        .map(|v| ((v / q.scale[0]).round() as i64 + q.zero_point[0]).clamp(-128, 127))
        .collect();
    let t = CTensor::from_vec(x, (1, 3, 8, 8), &Device::Cpu)
        .unwrap()
        .permute((0, 2, 3, 1))
        .unwrap()
        .contiguous()
        .unwrap();
    let rt = GraphRuntime::new(&back).unwrap();
    let out = rt.run(&[("x", t)]).unwrap();
    let y: Vec<i64> = out[0]
        .1
        .to_dtype(candle_core::DType::I64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(y.len(), 5);
    // softmax codes (1/256, −128) sum to about 256 steps
    let total: i64 = y.iter().map(|c| c + 128).sum();
    assert!((250..=262).contains(&total), "{y:?}");
}

/// TF's rule: weights under 1024 elements stay float (this graph's are all
/// smaller), larger ones are int8.
#[test]
fn dynamic_range_leaves_small_weights_float() {
    let float = cnn();
    let mut m = lower::lower(&float, &Default::default()).unwrap();
    let sizes: Vec<usize> = [B::CONV_2D, B::DEPTHWISE_CONV_2D, B::FULLY_CONNECTED]
        .iter()
        .map(|&c| {
            let op = m.ops.iter().find(|o| o.code == c).unwrap();
            m.tensors[op.inputs[1].unwrap()].numel()
        })
        .collect();
    let cut = sizes.iter().copied().max().unwrap();
    let report = quant::dynamic_range(&mut m, &quant::absmax_int8, cut);
    assert_eq!(report.weights, 1, "only the largest ({cut} of {sizes:?})");
    let int8 = m
        .tensors
        .iter()
        .filter(|t| t.dtype == TensorType::INT8)
        .count();
    assert_eq!(int8, 1);
    let mut all = lower::lower(&float, &Default::default()).unwrap();
    let report = quant::dynamic_range(&mut all, &quant::absmax_int8, quant::DYNAMIC_MIN_ELEMENTS);
    assert_eq!(report.weights, 0, "{sizes:?} are all under 1024");
}

#[test]
fn dynamic_range_stores_int8_weights_and_float_activations() {
    let float = cnn();
    let mut m = lower::lower(&float, &Default::default()).unwrap();
    let report = quant::dynamic_range(&mut m, &quant::absmax_int8, 0);
    assert_eq!(report.weights, 3);
    for (code, version) in [
        (B::CONV_2D, 5),
        (B::DEPTHWISE_CONV_2D, 6),
        (B::FULLY_CONNECTED, 12),
    ] {
        let op = m.ops.iter().find(|o| o.code == code).unwrap();
        assert_eq!(op.version, version);
        let (x, w) = (op.inputs[0].unwrap(), op.inputs[1].unwrap());
        assert_eq!(m.tensors[x].dtype, TensorType::FLOAT32);
        assert_eq!(m.tensors[w].dtype, TensorType::INT8);
        assert_eq!(m.tensors[op.outputs[0]].dtype, TensorType::FLOAT32);
        if let Some(b) = op.inputs.get(2).copied().flatten() {
            assert_eq!(m.tensors[b].dtype, TensorType::FLOAT32, "biases stay float");
        }
        if let Options::FullyConnected {
            asymmetric_quantize_inputs,
            ..
        } = op.options
        {
            assert!(asymmetric_quantize_inputs);
        }
    }
    // no float copy of a weight is left behind
    assert!(!m.tensors.iter().any(|t| t.name == "w1"));
    let back = read_back(&m, "dyn");
    for k in 0..2 {
        let x = input(k);
        let want = run_nchw(&float, &x);
        let got = run_nhwc(&back, &x);
        let worst = want
            .iter()
            .zip(&got)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst < 0.02, "sample {k}: {worst}");
    }
}
