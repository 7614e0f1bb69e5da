//! The TFLite writer and reader: graphs built here are written, read back
//! and run in edgec's interpreter with the original's outputs; the bytes
//! are deterministic; the Buffer.offset path reads back the same; f16
//! weights stay close; hostile files and unsupported ops give errors that
//! name the file or the node, never a panic.

mod common;

use std::path::Path;

use candle_core::{Device, Tensor as CTensor};
use common::{vi, window};
use edgec_core::runtime::graph::GraphRuntime;
use edgec_core::{DType, Dim, Graph, Model, Node, Op, Tensor, ValueInfo};
use edgec_formats::tflite::{self, model::BuiltinOperator, WriteOptions};

// ---------------------------------------------------------------------------
// Building graphs.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

#[derive(Default)]
struct G {
    nodes: Vec<Node>,
    tensors: Vec<Tensor>,
    rng: Option<Rng>,
}

impl G {
    fn new() -> G {
        G {
            rng: Some(Rng(7)),
            ..Default::default()
        }
    }

    fn weight(&mut self, name: &str, shape: &[usize], scale: f32) -> String {
        let n = shape.iter().product();
        let v = self.rng.as_mut().expect("set").vec(n, scale);
        self.tensors
            .push(Tensor::from_f32(name, shape.to_vec(), v).expect("valid"));
        name.to_string()
    }

    fn scalar(&mut self, name: &str, v: f32) -> String {
        self.tensors
            .push(Tensor::from_f32(name, vec![], vec![v]).expect("valid"));
        name.to_string()
    }

    fn op(&mut self, out: &str, op: Op, inputs: &[&str]) -> String {
        self.nodes.push(Node {
            name: format!("n_{out}"),
            op,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: vec![out.to_string()],
        });
        out.to_string()
    }

    fn model(self, inputs: Vec<ValueInfo>, outputs: &[(&str, &[usize])]) -> Model {
        Model {
            tensors: self.tensors,
            graph: Some(Graph {
                inputs,
                outputs: outputs.iter().map(|(n, s)| vi(n, s)).collect(),
                nodes: self.nodes,
            }),
            ..Default::default()
        }
    }
}

/// A small CNN: conv (SAME) + ReLU6, depthwise stride 2 (SAME, odd pad at
/// the end) + ReLU, conv with explicit pads (a PAD op), 1×1 conv without
/// bias, residual add with a per-channel constant, pools, channel concat,
/// global average pool, flatten, Gemm, softmax.
fn cnn() -> Model {
    let mut g = G::new();
    let w1 = g.weight("w1", &[8, 3, 3, 3], 0.4);
    let b1 = g.weight("b1", &[8], 0.1);
    let zero = g.scalar("zero", 0.0);
    let six = g.scalar("six", 6.0);
    let c1 = g.op(
        "c1",
        Op::Conv {
            window: window(3, 1, [1, 1, 1, 1]),
            group: 1,
        },
        &["x", &w1, &b1],
    );
    let r1 = g.op("r1", Op::Clip, &[&c1, &zero, &six]);
    let wd = g.weight("wd", &[8, 1, 3, 3], 0.4);
    let bd = g.weight("bd", &[8], 0.1);
    let d = g.op(
        "d",
        Op::Conv {
            window: window(3, 2, [0, 0, 1, 1]),
            group: 8,
        },
        &[&r1, &wd, &bd],
    );
    let r2 = g.op("r2", Op::Relu, &[&d]);
    let w3 = g.weight("w3", &[8, 8, 3, 3], 0.2);
    let c3 = g.op(
        "c3",
        Op::Conv {
            window: window(3, 1, [2, 2, 0, 0]),
            group: 1,
        },
        &[&r2, &w3],
    );
    let mp = g.op(
        "mp",
        Op::MaxPool {
            window: window(3, 1, [1, 1, 1, 1]),
        },
        &[&c3],
    );
    let w4 = g.weight("w4", &[8, 8, 1, 1], 0.3);
    let c4 = g.op(
        "c4",
        Op::Conv {
            window: window(1, 1, [0, 0, 0, 0]),
            group: 1,
        },
        &[&r2, &w4],
    );
    let chan = g.weight("chan", &[8, 1, 1], 0.5);
    let a = g.op("a", Op::Add, &[&c4, &chan]);
    let res = g.op("res", Op::Add, &[&a, &r2]);
    let ap = g.op(
        "ap",
        Op::AveragePool {
            window: window(3, 1, [1, 1, 1, 1]),
            count_include_pad: false,
        },
        &[&res],
    );
    let cat = g.op("cat", Op::Concat { axis: 1 }, &[&mp, &ap]);
    let gap = g.op("gap", Op::GlobalAveragePool, &[&cat]);
    let flat = g.op("flat", Op::Flatten { axis: 1 }, &[&gap]);
    let wf = g.weight("wf", &[5, 16], 0.5);
    let bf = g.weight("bf", &[5], 0.1);
    let fc = g.op(
        "fc",
        Op::Gemm {
            alpha: 1.0,
            beta: 1.0,
            trans_a: false,
            trans_b: true,
        },
        &[&flat, &wf, &bf],
    );
    g.op("probs", Op::Softmax { axis: -1 }, &[&fc]);
    g.model(vec![vi("x", &[1, 3, 8, 8])], &[("probs", &[1, 5])])
}

/// A transformer-ish block on `[2, 4, 6]`: MatMul + bias + ReLU (one
/// FULLY_CONNECTED), LayerNorm, erf-GELU, attention-like MatMul of two
/// activations, softmax over a non-last axis, mean, reshape, Div by Sqrt.
fn block() -> Model {
    let mut g = G::new();
    let w = g.weight("w", &[6, 8], 0.5);
    let b = g.weight("b", &[8], 0.1);
    let mm = g.op("mm", Op::MatMul, &["x", &w]);
    let h = g.op("h", Op::Add, &[&mm, &b]);
    let r = g.op("r", Op::Relu, &[&h]);
    let s = g.weight("ln_s", &[8], 1.0);
    let bb = g.weight("ln_b", &[8], 0.2);
    let ln = g.op(
        "ln",
        Op::LayerNorm {
            axis: -1,
            epsilon: 1e-5,
        },
        &[&r, &s, &bb],
    );
    let sqrt2 = g.scalar("sqrt2", std::f32::consts::SQRT_2);
    let one = g.scalar("one", 1.0);
    let half = g.scalar("half", 0.5);
    let t = g.op("g1", Op::Div, &[&ln, &sqrt2]);
    let t = g.op("g2", Op::Erf, &[&t]);
    let t = g.op("g3", Op::Add, &[&t, &one]);
    let t = g.op("g4", Op::Mul, &[&ln, &t]);
    let gelu = g.op("gelu", Op::Mul, &[&t, &half]);
    let tr = g.op(
        "tr",
        Op::Transpose {
            perm: vec![0, 2, 1],
        },
        &[&gelu],
    );
    let att = g.op("att", Op::MatMul, &[&gelu, &tr]);
    let sm = g.op("sm", Op::Softmax { axis: 1 }, &[&att]);
    let mean = g.op(
        "mean",
        Op::ReduceMean {
            axes: vec![2],
            keep_dims: true,
        },
        &[&sm],
    );
    let sq = g.op("sq", Op::Sqrt, &[&mean]);
    let dv = g.op("dv", Op::Div, &[&sm, &sq]);
    let shape = "shape".to_string();
    g.tensors.push(
        Tensor::new(
            "shape",
            vec![2],
            DType::I64,
            edgec_core::TensorData::Owned(std::sync::Arc::new(
                [2i64, 16].iter().flat_map(|v| v.to_le_bytes()).collect(),
            )),
        )
        .expect("valid"),
    );
    g.op("y", Op::Reshape { allow_zero: false }, &[&dv, &shape]);
    g.model(vec![vi("x", &[2, 4, 6])], &[("y", &[2, 16])])
}

// ---------------------------------------------------------------------------
// Running.

fn run(model: &Model, name: &str, x: &[f32], shape: &[usize]) -> Vec<f32> {
    let rt = GraphRuntime::new(model).expect("plans");
    let t = CTensor::from_vec(x.to_vec(), shape, &Device::Cpu).expect("input");
    let out = rt.run(&[(name, t)]).expect("runs");
    out[0].1.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn nchw_to_nhwc(x: &[f32], s: [usize; 4]) -> Vec<f32> {
    let t = CTensor::from_vec(x.to_vec(), &s, &Device::Cpu).unwrap();
    t.permute((0, 2, 3, 1))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let m = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter().zip(b).fold(0f32, |d, (x, y)| d.max((x - y).abs())) / m
}

fn write(model: &Model, path: &Path, opts: &WriteOptions) {
    tflite::write_model(model, path, opts).expect("writes");
}

fn ops_of(path: &Path) -> Vec<BuiltinOperator> {
    let bytes = std::fs::read(path).unwrap();
    let m = tflite::schema::root_as_model(&bytes).unwrap();
    let codes: Vec<i32> = m
        .operator_codes()
        .unwrap()
        .iter()
        .map(|c| c.builtin_code().0.max(c.deprecated_builtin_code() as i32))
        .collect();
    m.subgraphs()
        .unwrap()
        .get(0)
        .operators()
        .unwrap()
        .iter()
        .map(|o| BuiltinOperator(codes[o.opcode_index() as usize]))
        .collect()
}

// ---------------------------------------------------------------------------
// Tests.

#[test]
fn cnn_round_trip_gives_the_same_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cnn.tflite");
    let model = cnn();
    write(&model, &path, &WriteOptions::default());
    let ops = ops_of(&path);
    use BuiltinOperator as B;
    for want in [
        B::CONV_2D,
        B::DEPTHWISE_CONV_2D,
        B::PAD,
        B::MAX_POOL_2D,
        B::AVERAGE_POOL_2D,
        B::CONCATENATION,
        B::MEAN,
        B::FULLY_CONNECTED,
        B::SOFTMAX,
    ] {
        assert!(ops.contains(&want), "{want:?} missing from {ops:?}");
    }
    // the image path is NHWC throughout: no TRANSPOSE, activations fused
    for absent in [B::TRANSPOSE, B::RELU, B::RELU6] {
        assert!(!ops.contains(&absent), "{absent:?} in {ops:?}");
    }
    let back = tflite::read_model(&path).expect("reads");
    let gi = &back.graph.as_ref().unwrap().inputs[0];
    assert_eq!(gi.name, "x");
    assert_eq!(gi.fixed_dims(), vec![Some(1), Some(8), Some(8), Some(3)]);
    let x = Rng(3).vec(3 * 64, 1.0);
    let want = run(&model, "x", &x, &[1, 3, 8, 8]);
    let got = run(&back, "x", &nchw_to_nhwc(&x, [1, 3, 8, 8]), &[1, 8, 8, 3]);
    let err = max_rel(&got, &want);
    assert!(err < 1e-5, "max relative error {err}");
}

#[test]
fn block_round_trip_gives_the_same_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("block.tflite");
    let model = block();
    write(&model, &path, &WriteOptions::default());
    let ops = ops_of(&path);
    use BuiltinOperator as B;
    for want in [
        B::FULLY_CONNECTED,
        B::GELU,
        B::BATCH_MATMUL,
        B::RSQRT,
        B::MEAN,
        B::TRANSPOSE,
        B::SOFTMAX,
    ] {
        assert!(ops.contains(&want), "{want:?} missing from {ops:?}");
    }
    assert!(
        !ops.contains(&B::RELU) && !ops.contains(&B::SQRT),
        "{ops:?}"
    );
    let back = tflite::read_model(&path).expect("reads");
    let x = Rng(5).vec(48, 1.0);
    let want = run(&model, "x", &x, &[2, 4, 6]);
    let got = run(&back, "x", &x, &[2, 4, 6]);
    let err = max_rel(&got, &want);
    assert!(err < 1e-5, "max relative error {err}");
}

#[test]
fn same_model_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.tflite"), dir.path().join("b.tflite"));
    write(&cnn(), &a, &WriteOptions::default());
    write(&cnn(), &b, &WriteOptions::default());
    let bytes = std::fs::read(&a).unwrap();
    assert_eq!(bytes, std::fs::read(&b).unwrap());
    assert_eq!(&bytes[4..8], b"TFL3");
    let m = tflite::schema::root_as_model(&bytes).unwrap();
    assert_eq!(m.version(), 3);
    assert_eq!(m.description(), Some("edgec"));
    let buffers = m.buffers().unwrap();
    assert!(buffers.get(0).data().is_none_or(|d| d.is_empty()));
    let meta = m.metadata().unwrap().get(0);
    assert_eq!(meta.name(), Some("min_runtime_version"));
    let v = buffers.get(meta.buffer() as usize).data().unwrap();
    assert_eq!(v.len(), 16);
    let sig = m.signature_defs().unwrap().get(0);
    assert_eq!(sig.signature_key(), Some("serving_default"));
    assert_eq!(sig.inputs().unwrap().get(0).name(), Some("x"));
    assert_eq!(sig.outputs().unwrap().get(0).name(), Some("probs"));
}

#[test]
fn offset_buffers_read_back_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let (inline, offset) = (dir.path().join("in.tflite"), dir.path().join("off.tflite"));
    let model = cnn();
    write(&model, &inline, &WriteOptions::default());
    let opts = WriteOptions {
        inline_limit: 0,
        ..Default::default()
    };
    write(&model, &offset, &opts);
    let bytes = std::fs::read(&offset).unwrap();
    assert_eq!(bytes.len() % 16, 0);
    let m = tflite::schema::root_as_model(&bytes).unwrap();
    let mut external = 0;
    for b in m.buffers().unwrap().iter() {
        if b.offset() > 1 {
            external += 1;
            assert_eq!(b.offset() % 16, 0);
            assert!(b.data().is_none());
            assert!(b.offset() + b.size() <= bytes.len() as u64);
        }
    }
    assert!(external > 5, "{external} external buffers");
    let x = Rng(9).vec(3 * 64, 1.0);
    let nhwc = nchw_to_nhwc(&x, [1, 3, 8, 8]);
    let a = run(
        &tflite::read_model(&inline).unwrap(),
        "x",
        &nhwc,
        &[1, 8, 8, 3],
    );
    let b = run(
        &tflite::read_model(&offset).unwrap(),
        "x",
        &nhwc,
        &[1, 8, 8, 3],
    );
    assert_eq!(a, b);
}

#[test]
fn f16_weights_stay_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f16.tflite");
    let model = cnn();
    let opts = WriteOptions {
        f16_weights: true,
        ..Default::default()
    };
    write(&model, &path, &opts);
    let ops = ops_of(&path);
    assert!(ops.contains(&BuiltinOperator::DEQUANTIZE));
    let bytes = std::fs::read(&path).unwrap();
    let m = tflite::schema::root_as_model(&bytes).unwrap();
    let t = m.subgraphs().unwrap().get(0).tensors().unwrap();
    assert!(t
        .iter()
        .any(|t| t.type_() == tflite::model::TensorType::FLOAT16));
    let x = Rng(3).vec(3 * 64, 1.0);
    let want = run(&model, "x", &x, &[1, 3, 8, 8]);
    let back = tflite::read_model(&path).unwrap();
    let got = run(&back, "x", &nchw_to_nhwc(&x, [1, 3, 8, 8]), &[1, 8, 8, 3]);
    let err = max_rel(&got, &want);
    assert!(err < 1e-2, "max relative error {err}");
}

#[test]
fn hostile_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.tflite");
    write(&block(), &good, &WriteOptions::default());
    let bytes = std::fs::read(&good).unwrap();
    let bad = dir.path().join("bad.tflite");
    let mut cases: Vec<Vec<u8>> = vec![
        vec![],
        b"TFL3".to_vec(),
        vec![0u8; 64],
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect(),
    ];
    let mut wrong_id = bytes.clone();
    wrong_id[4..8].copy_from_slice(b"ONNX");
    cases.push(wrong_id);
    for cut in [8, 16, 64, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
        cases.push(bytes[..cut].to_vec());
    }
    // flipped bytes in the tables (after the constants' data)
    for k in 0..64 {
        let mut b = bytes.clone();
        let at = bytes.len() - 1 - (k * 37) % (bytes.len() / 4);
        b[at] ^= 0xA5;
        cases.push(b);
    }
    for (i, case) in cases.iter().enumerate() {
        std::fs::write(&bad, case).unwrap();
        match tflite::read_model(&bad) {
            Err(e) => assert!(e.to_string().contains("bad.tflite"), "case {i}: {e}"),
            // a flip in a value that is still valid (a weight, a name)
            Ok(m) => assert!(i >= 11 && m.graph.is_some(), "case {i} read"),
        }
    }
}

#[test]
fn unsupported_ops_name_the_node() {
    let mut g = G::new();
    let e = g.op("e", Op::Erf, &["x"]);
    g.op("y", Op::Exp, &[&e]);
    let model = g.model(vec![vi("x", &[2, 3])], &[("y", &[2, 3])]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("erf.tflite");
    let err = tflite::write_model(&model, &path, &WriteOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("n_e") && err.contains("Erf") && err.contains("erf.tflite"),
        "{err}"
    );
    assert!(!path.exists());

    let mut g = G::new();
    let w = g.weight("w", &[6, 2, 3, 3], 0.1);
    g.op(
        "y",
        Op::Conv {
            window: window(3, 1, [0, 0, 0, 0]),
            group: 2,
        },
        &["x", &w],
    );
    let model = g.model(vec![vi("x", &[1, 4, 5, 5])], &[("y", &[1, 6, 3, 3])]);
    let err = tflite::write_model(&model, &path, &WriteOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("grouped convolution") && err.contains("n_y"),
        "{err}"
    );
}

#[test]
fn dynamic_dims_need_a_size() {
    let mut g = G::new();
    g.op("y", Op::Relu, &["x"]);
    let mut model = g.model(vec![vi("x", &[2, 3])], &[("y", &[2, 3])]);
    let graph = model.graph.as_mut().unwrap();
    graph.inputs[0].shape[1] = Dim::Named("sequence".into());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dyn.tflite");
    let err = tflite::write_model(&model, &path, &WriteOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("sequence"), "{err}");
    let opts = WriteOptions {
        lower: tflite::LowerOptions {
            dims: vec![("sequence".into(), 5)],
        },
        ..Default::default()
    };
    tflite::write_model(&model, &path, &opts).unwrap();
    let back = tflite::read_model(&path).unwrap();
    let gi = &back.graph.as_ref().unwrap().inputs[0];
    assert_eq!(gi.fixed_dims(), vec![Some(2), Some(5)]);
}
