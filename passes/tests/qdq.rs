//! The static int8 QDQ pass on a small Conv → Clip → Conv graph: where the
//! quantize/dequantize pairs go, how weights and biases are stored, the
//! bias-overflow guard, bias correction, and that the quantized graph stays
//! close to the float one in the reference runtime.

use std::collections::HashMap;

use candle_core::{Device, Tensor as CTensor};
use edgec_core::runtime::graph::GraphRuntime;
use edgec_core::{DType, Dim, Graph, Model, Node, Op, Tensor, ValueInfo, Window};
use edgec_passes::qdq::{quantize_static, u8_params};

fn conv(name: &str, x: &str, w: &str, b: &str, out: &str) -> Node {
    Node {
        name: name.into(),
        op: Op::Conv {
            window: Window {
                kernel: vec![3, 3],
                strides: vec![1, 1],
                pads: vec![1, 1, 1, 1],
                dilations: vec![1, 1],
            },
            group: 1,
        },
        inputs: vec![x.into(), w.into(), b.into()],
        outputs: vec![out.into()],
    }
}

/// input [1,2,6,6] → conv1 (4 channels; channel 3 has zero weights and a
/// large bias) → Clip(0, 6) → conv2 (2 channels) → output.
fn model() -> Model {
    let w1: Vec<f32> = (0..4 * 2 * 9)
        .map(|i| {
            if i >= 3 * 18 {
                0.0
            } else {
                ((i * 7 % 11) as f32 - 5.0) * 0.1
            }
        })
        .collect();
    let b1 = vec![0.1, -0.2, 0.3, 50.0];
    let w2: Vec<f32> = (0..2 * 4 * 9)
        .map(|i| ((i * 5 % 13) as f32 - 6.0) * 0.05)
        .collect();
    let b2 = vec![0.05, -0.05];
    let f32s =
        |name: &str, shape: Vec<usize>, v: Vec<f32>| Tensor::from_f32(name, shape, v).unwrap();
    let scalar = |name: &str, v: f32| f32s(name, vec![], vec![v]);
    Model {
        meta: Default::default(),
        tensors: vec![
            f32s("w1", vec![4, 2, 3, 3], w1),
            f32s("b1", vec![4], b1),
            f32s("w2", vec![2, 4, 3, 3], w2),
            f32s("b2", vec![2], b2),
            scalar("lo", 0.0),
            scalar("hi", 6.0),
        ],
        graph: Some(Graph {
            inputs: vec![ValueInfo {
                name: "x".into(),
                dtype: DType::F32,
                shape: [1, 2, 6, 6].map(Dim::Fixed).to_vec(),
            }],
            outputs: vec![ValueInfo {
                name: "y".into(),
                dtype: DType::F32,
                shape: [1, 2, 6, 6].map(Dim::Fixed).to_vec(),
            }],
            nodes: vec![
                conv("conv1", "x", "w1", "b1", "c1"),
                Node {
                    name: "clip".into(),
                    op: Op::Clip,
                    inputs: vec!["c1".into(), "lo".into(), "hi".into()],
                    outputs: vec!["a1".into()],
                },
                conv("conv2", "a1", "w2", "b2", "y"),
            ],
        }),
    }
}

fn input(seed: u32) -> CTensor {
    let v: Vec<f32> = (0..72)
        .map(|i| {
            (((i as u32).wrapping_mul(2654435761).wrapping_add(seed * 97)) % 1000) as f32 / 500.0
                - 1.0
        })
        .collect();
    CTensor::from_vec(v, (1, 2, 6, 6), &Device::Cpu).unwrap()
}

fn run(model: &Model, x: &CTensor) -> Vec<f32> {
    let rt = GraphRuntime::new(model).unwrap();
    let out = rt.run(&[("x", x.clone())]).unwrap();
    out[0].1.flatten_all().unwrap().to_vec1().unwrap()
}

fn ranges() -> HashMap<String, (f32, f32)> {
    [("x", (-1.0, 1.0)), ("c1", (-3.0, 9.0)), ("a1", (0.0, 6.0))]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

#[test]
fn pairs_go_around_quantizable_values_and_skip_the_folded_activation() {
    let mut m = model();
    let report = quantize_static(&mut m, &ranges(), None).unwrap();
    let g = m.graph.as_ref().unwrap();
    let quantized: Vec<&str> = g
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::QuantizeLinear { .. }))
        .map(|n| n.inputs[0].as_str())
        .collect();
    // the input and the Clip's output; not the Conv's output before the Clip
    // (onnxruntime folds the Clip into the integer Conv), not the graph output
    assert_eq!(quantized, ["x", "a1"]);
    assert_eq!(
        (report.activations, report.weights, report.biases),
        (2, 2, 2)
    );
    // weights int8 per output channel, biases int32, both behind DequantizeLinear
    let w1 = m.tensor("w1_quantized").unwrap();
    assert_eq!(
        (w1.dtype, w1.shape.as_slice()),
        (DType::I8, &[4, 2, 3, 3][..])
    );
    assert_eq!(m.tensor("w1_scale").unwrap().shape, [4]);
    let b1 = m.tensor("b1_quantized").unwrap();
    assert_eq!(b1.dtype, DType::I32);
    // the graph's float weights are gone
    assert!(m.tensor("w1").is_none() && m.tensor("b1").is_none());
}

#[test]
fn int32_biases_are_input_scale_times_weight_scale_and_never_overflow() {
    let mut m = model();
    quantize_static(&mut m, &ranges(), None).unwrap();
    let (x_scale, _) = u8_params(-1.0, 1.0);
    let w_scales = m.tensor("w1_scale").unwrap().to_f32().unwrap();
    let b_scales = m.tensor("b1_scale").unwrap().to_f32().unwrap();
    for (b, w) in b_scales.iter().zip(&w_scales) {
        assert!(
            (b - w * x_scale).abs() <= 1e-6 * b.abs(),
            "{b} vs {w} x {x_scale}"
        );
    }
    // channel 3: zero weights, bias 50; its weight scale was coarsened so that
    // the int32 bias is exact instead of saturated
    let codes = m.tensor("b1_quantized").unwrap().bytes().to_vec();
    let q3 = i32::from_le_bytes(codes[12..16].try_into().unwrap());
    assert!(q3.unsigned_abs() <= 1 << 30, "{q3}");
    assert!((q3 as f32 * b_scales[3] - 50.0).abs() < 1e-3 * 50.0);
}

#[test]
fn the_quantized_graph_stays_close_and_bias_correction_does_not_hurt() {
    let float = model();
    let mut plain = model();
    quantize_static(&mut plain, &ranges(), None).unwrap();
    // input means for bias correction, from the float graph on the same data
    let samples: Vec<CTensor> = (0..8).map(input).collect();
    let mut means: HashMap<String, Vec<f64>> = HashMap::new();
    let mean_of = |t: &CTensor| -> Vec<f64> {
        t.mean_keepdim(3)
            .and_then(|t| t.mean_keepdim(2))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect()
    };
    let x_means: Vec<Vec<f64>> = samples.iter().map(mean_of).collect();
    means.insert(
        "x".into(),
        (0..2)
            .map(|c| x_means.iter().map(|m| m[c]).sum::<f64>() / 8.0)
            .collect(),
    );
    let mut corrected = model();
    let report = quantize_static(&mut corrected, &ranges(), Some(&means)).unwrap();
    assert_eq!(report.bias_corrections, 1, "conv1 has its input's means");
    let (mut err_plain, mut err_corrected, mut scale) = (0f64, 0f64, 0f64);
    for x in &samples {
        let f = run(&float, x);
        let p = run(&plain, x);
        let c = run(&corrected, x);
        for ((f, p), c) in f.iter().zip(&p).zip(&c) {
            err_plain += ((p - f) as f64).powi(2);
            err_corrected += ((c - f) as f64).powi(2);
            scale += (*f as f64).powi(2);
        }
    }
    assert!(err_plain < 1e-3 * scale, "{err_plain} vs {scale}");
    assert!(
        err_corrected <= err_plain * 1.05,
        "{err_corrected} vs {err_plain}"
    );
}

/// The same ranges and weight rounding written as a full-int8 TFLite file
/// (int8 grid = the uint8 grid shifted by 128) and read back as edgec's
/// integer simulation: within one step of the output's scale of the ONNX
/// QDQ graph (which leaves the graph output float; TFLite quantizes it).
#[test]
fn tflite_full_int8_reads_back_within_one_step_of_the_qdq_graph() {
    use edgec_formats::tflite::{lower, quant, read_model, writer};
    use edgec_passes::qdq::{int8_per_channel, tflite_int8_params};
    let float = model();
    let mut r = ranges();
    let ys: Vec<f32> = (0..4).flat_map(|s| run(&float, &input(s))).collect();
    let lo = ys.iter().copied().fold(0f32, f32::min);
    let hi = ys.iter().copied().fold(0f32, f32::max);
    r.insert("y".into(), (lo, hi));
    let mut qdq = float.clone();
    quantize_static(&mut qdq, &r, None).unwrap();

    let tfl = lower::lower(&float, &Default::default()).unwrap();
    let params: quant::ActParams = r
        .iter()
        .map(|(k, &(a, b))| (k.clone(), tflite_int8_params(a, b)))
        .collect();
    let (tfl, report) = quant::full_int8(
        &tfl,
        &params,
        &quant::Int8Options {
            int8_io: false,
            int16_activations: false,
            weights: &int8_per_channel,
            input_means: None,
        },
    )
    .unwrap();
    assert_eq!(report.weights, 2);
    assert!(report.float_ops.is_empty(), "{:?}", report.float_ops);
    let path = std::env::temp_dir().join(format!("edgec-qdq-{}.tflite", std::process::id()));
    writer::write_tfl(&tfl, &path, writer::INLINE_LIMIT).unwrap();
    let back = read_model(&path);
    std::fs::remove_file(&path).ok();
    let back = back.unwrap();
    let step = tflite_int8_params(lo, hi).0;
    for s in 0..4 {
        let x = input(s);
        let want = run(&qdq, &x);
        let nhwc = x.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
        let rt = GraphRuntime::new(&back).unwrap();
        let got = rt.run(&[("x", nhwc)]).unwrap();
        let got: Vec<f32> = got[0]
            .1
            .permute((0, 3, 1, 2))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let worst = want
            .iter()
            .zip(&got)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            worst <= step * 1.001,
            "sample {s}: {worst} > one step {step}"
        );
    }
}
