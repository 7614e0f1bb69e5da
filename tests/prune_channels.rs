//! `edgec prune --channels` on CNN graphs: a tiny CNN with BatchNorm, a
//! depthwise conv and a residual Add. Channels whose producing filters are
//! all zero (constructed so the whole channel is zero) are the ones removed,
//! and the outputs do not change; every tensor of a group shrinks by the
//! same channels (producers' rows and biases, BatchNorm, depthwise weights
//! and group, consumers' input columns, the Gemm behind the global pool);
//! removing live channels changes the outputs; `--macs` reaches its
//! target; bad requests are usage errors.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor as CTensor};
use common::*;
use edgec_core::runtime::graph::GraphRuntime;
use edgec_core::{Graph, Model, Node, Op, Tensor};

/// Channels of both groups that are dead in `tiny_cnn(true)`.
const DEAD: [usize; 8] = [0, 2, 3, 6, 9, 10, 13, 15];
const C: usize = 16;

/// x [1, 3, 8, 8] → conv 3×3 (c1) → ReLU → BatchNorm (bn) → depthwise 3×3
/// → Clip(0, 6) → 1×1 (p2) → Add bn → 1×1 (p3) → ReLU → global pool →
/// flatten → Gemm (trans_b). Group A: c1, BN, depthwise, p2 (tied by the
/// Add); group B: p3 and the Gemm's columns. With `dead`, the DEAD channels
/// of both groups are exactly zero everywhere.
pub fn tiny_cnn(dead: bool) -> Model {
    let mut rng = Rng(7);
    let mut tensors = Vec::new();
    let mut w = |name: &str, shape: &[usize], zero_rows: bool, offset: f32| {
        let n: usize = shape.iter().product();
        let row = n / shape[0];
        let v: Vec<f32> = (0..n)
            .map(|i| {
                if zero_rows && dead && DEAD.contains(&(i / row)) {
                    0.0
                } else {
                    rng.next() * 0.5 + offset
                }
            })
            .collect();
        tensors.push(Tensor::from_f32(name, shape.to_vec(), v).unwrap());
        name.to_string()
    };
    let c1 = w("c1_w", &[C, 3, 3, 3], true, 0.0);
    let c1b = w("c1_b", &[C], true, 0.0);
    let bn_s = w("bn_scale", &[C], false, 1.0);
    let bn_b = w("bn_bias", &[C], true, 0.0);
    let bn_m = w("bn_mean", &[C], true, 0.0);
    let bn_v = w("bn_var", &[C], false, 1.5);
    let dw = w("dw_w", &[C, 1, 3, 3], false, 0.0);
    let dwb = w("dw_b", &[C], true, 0.0);
    let p2 = w("p2_w", &[C, C, 1, 1], true, 0.0);
    let p2b = w("p2_b", &[C], true, 0.0);
    let p3 = w("p3_w", &[C, C, 1, 1], true, 0.0);
    let p3b = w("p3_b", &[C], true, 0.1);
    let fc = w("fc_w", &[5, C], false, 0.0);
    let fcb = w("fc_b", &[5], false, 0.0);
    tensors.push(Tensor::from_f32("zero", vec![], vec![0.0]).unwrap());
    tensors.push(Tensor::from_f32("six", vec![], vec![6.0]).unwrap());
    let node = |out: &str, op: Op, ins: &[&str]| Node {
        name: format!("n_{out}"),
        op,
        inputs: ins.iter().map(|s| s.to_string()).collect(),
        outputs: vec![out.to_string()],
    };
    let conv = |k, group| Op::Conv {
        window: window(k, k / 2),
        group,
    };
    let nodes = vec![
        node("c1", conv(3, 1), &["x", &c1, &c1b]),
        node("r1", Op::Relu, &["c1"]),
        // after the ReLU, so the ONNX reader cannot fold it into c1
        node(
            "bn",
            Op::BatchNorm { epsilon: 1e-5 },
            &["r1", &bn_s, &bn_b, &bn_m, &bn_v],
        ),
        node("d1", conv(3, C), &["bn", &dw, &dwb]),
        node("r2", Op::Clip, &["d1", "zero", "six"]),
        node("p2", conv(1, 1), &["r2", &p2, &p2b]),
        node("add", Op::Add, &["p2", "bn"]),
        node("p3", conv(1, 1), &["add", &p3, &p3b]),
        node("r3", Op::Relu, &["p3"]),
        node("gap", Op::GlobalAveragePool, &["r3"]),
        node("flat", Op::Flatten { axis: 1 }, &["gap"]),
        node(
            "y",
            Op::Gemm {
                alpha: 1.0,
                beta: 1.0,
                trans_a: false,
                trans_b: true,
            },
            &["flat", &fc, &fcb],
        ),
    ];
    Model {
        tensors,
        graph: Some(Graph {
            inputs: vec![vi("x", &[1, 3, 8, 8])],
            outputs: vec![vi("y", &[1, 5])],
            nodes,
        }),
        ..Default::default()
    }
}

fn write(model: &Model, dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    edgec_formats::onnx::writer::write_model(model, &path).unwrap();
    path
}

fn outputs(model: &Model) -> Vec<f32> {
    let mut rng = Rng(3);
    let rt = GraphRuntime::new(model).unwrap();
    (0..4)
        .flat_map(|_| {
            let v: Vec<f32> = (0..3 * 64).map(|_| rng.next() * 2.0).collect();
            let x = CTensor::from_vec(v, (1, 3, 8, 8), &Device::Cpu).unwrap();
            let out = rt.run(&[("x", x)]).unwrap();
            out[0].1.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        })
        .collect()
}

fn values(m: &Model, name: &str) -> Vec<f32> {
    m.tensor(name).unwrap().to_f32().unwrap()
}

fn shape(m: &Model, name: &str) -> Vec<usize> {
    m.tensor(name).unwrap().shape.clone()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn prune(model: &Model, dir: &Path, args: &[&str]) -> Model {
    let input = write(model, dir, "in.onnx");
    let out = dir.join("out.onnx");
    let mut all = vec!["prune", s(&input), s(&out)];
    all.extend(args);
    ok(&all);
    edgec_formats::read_model(&out).unwrap()
}

#[test]
fn dead_channels_are_removed_and_the_outputs_do_not_change() {
    let d = tempfile::tempdir().unwrap();
    let dense = tiny_cnn(true);
    let pruned = prune(&dense, d.path(), &["--channels", "0.5"]);
    let live: Vec<usize> = (0..C).filter(|c| !DEAD.contains(c)).collect();
    let k = live.len();
    // shapes shrink consistently
    for (name, want) in [
        ("c1_w", vec![k, 3, 3, 3]),
        ("c1_b", vec![k]),
        ("bn_scale", vec![k]),
        ("bn_bias", vec![k]),
        ("bn_mean", vec![k]),
        ("bn_var", vec![k]),
        ("dw_w", vec![k, 1, 3, 3]),
        ("dw_b", vec![k]),
        ("p2_w", vec![k, k, 1, 1]),
        ("p2_b", vec![k]),
        ("p3_w", vec![k, k, 1, 1]),
        ("p3_b", vec![k]),
        ("fc_w", vec![5, k]),
        ("fc_b", vec![5]),
    ] {
        assert_eq!(shape(&pruned, name), want, "{name}");
    }
    let dw_group = pruned
        .graph
        .as_ref()
        .unwrap()
        .nodes
        .iter()
        .find_map(|n| match &n.op {
            Op::Conv { group, .. } if n.inputs[1] == "dw_w" => Some(*group),
            _ => None,
        });
    assert_eq!(dw_group, Some(k));
    // the live channels are kept, with their values
    let before = values(&dense, "bn_scale");
    let after = values(&pruned, "bn_scale");
    for (i, c) in live.iter().enumerate() {
        assert_eq!(after[i], before[*c]);
    }
    let (p3_before, p3_after) = (values(&dense, "p3_w"), values(&pruned, "p3_w"));
    for (i, o) in live.iter().enumerate() {
        for (j, c) in live.iter().enumerate() {
            assert_eq!(p3_after[i * k + j], p3_before[o * C + c]);
        }
    }
    let diff = max_diff(&outputs(&dense), &outputs(&pruned));
    assert!(diff < 1e-5, "outputs moved by {diff}");
}

#[test]
fn removing_live_channels_changes_the_outputs() {
    let d = tempfile::tempdir().unwrap();
    let dense = tiny_cnn(false);
    let pruned = prune(&dense, d.path(), &["--channels", "0.5"]);
    assert_eq!(shape(&pruned, "c1_w"), vec![8, 3, 3, 3]);
    assert_eq!(shape(&pruned, "fc_w"), vec![5, 8]);
    let diff = max_diff(&outputs(&dense), &outputs(&pruned));
    assert!(diff > 1e-3, "outputs moved by only {diff}");
}

#[test]
fn a_mac_target_is_reached() {
    let d = tempfile::tempdir().unwrap();
    let dense = tiny_cnn(false);
    let input = write(&dense, d.path(), "in.onnx");
    let out = d.path().join("out.onnx");
    let r = ok(&["prune", s(&input), s(&out), "--macs", "0.3"]);
    let err = String::from_utf8_lossy(&r.stderr).to_string() + &String::from_utf8_lossy(&r.stdout);
    assert!(err.contains("MACs"), "{err}");
    let pruned = edgec_formats::read_model(&out).unwrap();
    assert!(pruned.total_params() < dense.total_params());
}

fn refused(input: &Path, args: &[&str], says: &str) {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.onnx");
    let mut all = vec!["prune", s(input), s(&out)];
    all.extend(args);
    let r = run(&all);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(says), "{args:?}: no {says:?} in {err}");
    assert!(!out.exists());
}

#[test]
fn bad_channel_requests_are_usage_errors() {
    let d = tempfile::tempdir().unwrap();
    let cnn = write(&tiny_cnn(false), d.path(), "cnn.onnx");
    refused(&cnn, &["--channels", "0"], "between 0 and 1");
    refused(&cnn, &["--channels", "1"], "between 0 and 1");
    refused(&cnn, &["--channels", "1.5"], "between 0 and 1");
    refused(&cnn, &["--macs=-0.2"], "between 0 and 1");
    refused(&cnn, &["--channels", "0.5", "--macs", "0.3"], "--macs");
    refused(
        &cnn,
        &["--channels", "0.5", "--sparsity", "0.5"],
        "--sparsity",
    );
    refused(
        &fixture("tiny-llama"),
        &["--channels", "0.5"],
        "graph models",
    );
}
