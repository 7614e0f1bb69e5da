//! `edgec prune` on graph models: exact fractions and N:M counts along each
//! output channel's input channels in the Conv, Gemm and MatMul weights of a
//! tiny CNN written as ONNX; one threshold with `--global`; `--ops` and
//! `--ignore` choose the weights; Wanda's masks follow |w|·‖x‖ with ‖x‖ of
//! the weight's input on the calibration samples, SparseGPT keeps the
//! calibration outputs closer to the dense model's than magnitude does;
//! TFLite output stores the pruned 1×1 conv weights sparse behind DENSIFY,
//! reads back to the same outputs as the dense file, and bad requests are
//! usage errors.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor as CTensor};
use common::*;
use edgec_core::runtime::graph::GraphRuntime;
use edgec_core::{DType, Graph, Model, Node, Op, Tensor};
use edgec_formats::tflite::{self, model::BuiltinOperator};

/// The weights of the tiny CNN and what they are.
const CONV3: &str = "conv3_w"; // [8, 8, 3, 3]
const PW1: &str = "pw1_w"; // [16, 8, 1, 1]
const DW: &str = "dw_w"; // [16, 1, 3, 3], depthwise
const PW2: &str = "pw2_w"; // [8, 16, 1, 1]
const MATMUL: &str = "mm_w"; // [8, 8] (K, N)
const GEMM: &str = "fc_w"; // [8, 4] (K, N), trans_b = 0

/// x [1, 8, 6, 6] → conv 3×3 → ReLU → 1×1 → depthwise 3×3 → 1×1 → global
/// average pool → flatten → MatMul → Gemm.
fn tiny_cnn() -> Model {
    let mut rng = Rng(11);
    let mut tensors = Vec::new();
    let mut w = |name: &str, shape: &[usize]| {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.next() * 0.5).collect();
        tensors.push(Tensor::from_f32(name, shape.to_vec(), v).unwrap());
        name.to_string()
    };
    let conv3 = w(CONV3, &[8, 8, 3, 3]);
    let conv3_b = w("conv3_b", &[8]);
    let pw1 = w(PW1, &[16, 8, 1, 1]);
    let dw = w(DW, &[16, 1, 3, 3]);
    let pw2 = w(PW2, &[8, 16, 1, 1]);
    let mm = w(MATMUL, &[8, 8]);
    let fc = w(GEMM, &[8, 4]);
    let fc_b = w("fc_b", &[4]);
    let node = |out: &str, op: Op, ins: &[&str]| Node {
        name: format!("n_{out}"),
        op,
        inputs: ins.iter().map(|s| s.to_string()).collect(),
        outputs: vec![out.to_string()],
    };
    let conv = |group| Op::Conv {
        window: window(1, 0),
        group,
    };
    let nodes = vec![
        node(
            "c1",
            Op::Conv {
                window: window(3, 1),
                group: 1,
            },
            &["x", &conv3, &conv3_b],
        ),
        node("r1", Op::Relu, &["c1"]),
        node("p1", conv(1), &["r1", &pw1]),
        node(
            "d1",
            Op::Conv {
                window: window(3, 1),
                group: 16,
            },
            &["p1", &dw],
        ),
        node("p2", conv(1), &["d1", &pw2]),
        node("gap", Op::GlobalAveragePool, &["p2"]),
        node("flat", Op::Flatten { axis: 1 }, &["gap"]),
        node("mm", Op::MatMul, &["flat", &mm]),
        node(
            "y",
            Op::Gemm {
                alpha: 1.0,
                beta: 1.0,
                trans_a: false,
                trans_b: false,
            },
            &["mm", &fc, &fc_b],
        ),
    ];
    Model {
        tensors,
        graph: Some(Graph {
            inputs: vec![vi("x", &[1, 8, 6, 6])],
            outputs: vec![vi("y", &[1, 4])],
            nodes,
        }),
        ..Default::default()
    }
}

fn write_cnn(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("cnn.onnx");
    edgec_formats::onnx::writer::write_model(&tiny_cnn(), &path).unwrap();
    path
}

fn weights(path: &Path) -> Model {
    edgec_formats::read_model(path).unwrap()
}

fn values(m: &Model, name: &str) -> Vec<f32> {
    m.tensor(name)
        .unwrap_or_else(|| panic!("{name} is missing"))
        .to_f32()
        .unwrap()
}

fn zeros(v: &[f32]) -> usize {
    v.iter().filter(|x| **x == 0.0).count()
}

/// Prunes the tiny CNN to `out_name` with `args` (`--method magnitude`
/// unless they give one); returns (input, output).
fn prune(dir: &Path, out_name: &str, args: &[&str]) -> (Model, std::path::PathBuf) {
    let input = write_cnn(dir);
    let out = dir.join(out_name);
    let mut all = vec!["prune", s(&input), s(&out)];
    if !args.contains(&"--method") {
        all.extend(["--method", "magnitude"]);
    }
    all.extend(args);
    ok(&all);
    (weights(&input), out)
}

/// The dropped weights are the smallest: no kept |w| below a dropped |w|,
/// and kept weights keep their values.
fn check_magnitude(before: &[f32], after: &[f32]) {
    let mut max_dropped = 0f32;
    let mut min_kept = f32::INFINITY;
    for (b, a) in before.iter().zip(after) {
        if *a == 0.0 {
            max_dropped = max_dropped.max(b.abs());
        } else {
            assert_eq!(a, b, "kept weights keep their values");
            min_kept = min_kept.min(b.abs());
        }
    }
    assert!(
        max_dropped <= min_kept,
        "{max_dropped} dropped, {min_kept} kept"
    );
}

#[test]
fn fraction_per_weight_is_exact_and_leaves_depthwise_and_biases() {
    let d = tempfile::tempdir().unwrap();
    let (input, out) = prune(d.path(), "out.onnx", &["--sparsity", "0.5"]);
    let out = weights(&out);
    for name in [CONV3, PW1, PW2, MATMUL, GEMM] {
        let (b, a) = (values(&input, name), values(&out, name));
        assert_eq!(zeros(&b), 0);
        assert_eq!(zeros(&a), (0.5 * b.len() as f64).round() as usize, "{name}");
        check_magnitude(&b, &a);
    }
    for name in [DW, "conv3_b", "fc_b"] {
        assert_eq!(values(&input, name), values(&out, name), "{name} untouched");
    }
}

#[test]
fn pattern_groups_run_along_the_input_channels() {
    let d = tempfile::tempdir().unwrap();
    let (input, out) = prune(d.path(), "out.onnx", &["--pattern", "2:4"]);
    let out = weights(&out);
    // conv [M, C, kh, kw]: per output channel and tap, 2 of every 4 channels
    for name in [CONV3, PW1, PW2] {
        let shape = input.tensor(name).unwrap().shape.clone();
        let (m, c, taps) = (shape[0], shape[1], shape[2] * shape[3]);
        let a = values(&out, name);
        let b = values(&input, name);
        for o in 0..m {
            for t in 0..taps {
                for g in 0..c / 4 {
                    let idx: Vec<usize> = (0..4).map(|j| (o * c + g * 4 + j) * taps + t).collect();
                    let z = idx.iter().filter(|&&i| a[i] == 0.0).count();
                    assert_eq!(z, 2, "{name}: output {o}, tap {t}, group {g}");
                    let group_b: Vec<f32> = idx.iter().map(|&i| b[i]).collect();
                    let group_a: Vec<f32> = idx.iter().map(|&i| a[i]).collect();
                    check_magnitude(&group_b, &group_a);
                }
            }
        }
    }
    // MatMul and Gemm [K, N]: per output n, 2 of every 4 consecutive k
    for name in [MATMUL, GEMM] {
        let shape = input.tensor(name).unwrap().shape.clone();
        let (k, n) = (shape[0], shape[1]);
        let a = values(&out, name);
        for col in 0..n {
            for g in 0..k / 4 {
                let z = (0..4).filter(|j| a[(g * 4 + j) * n + col] == 0.0).count();
                assert_eq!(z, 2, "{name}: output {col}, group {g}");
            }
        }
    }
    assert_eq!(values(&input, DW), values(&out, DW));
}

#[test]
fn global_takes_one_threshold_over_every_weight() {
    let d = tempfile::tempdir().unwrap();
    let (input, out) = prune(d.path(), "out.onnx", &["--sparsity", "0.6", "--global"]);
    let out = weights(&out);
    let names = [CONV3, PW1, PW2, MATMUL, GEMM];
    let before: Vec<f32> = names.iter().flat_map(|n| values(&input, n)).collect();
    let after: Vec<f32> = names.iter().flat_map(|n| values(&out, n)).collect();
    assert_eq!(zeros(&after), (0.6 * before.len() as f64).round() as usize);
    check_magnitude(&before, &after);
    // one threshold: the weights end at different fractions
    let fractions: Vec<f64> = names
        .iter()
        .map(|n| {
            let v = values(&out, n);
            zeros(&v) as f64 / v.len() as f64
        })
        .collect();
    assert!(
        fractions.iter().any(|f| (f - 0.6).abs() > 0.02),
        "{fractions:?}"
    );
}

#[test]
fn ops_and_ignore_choose_the_weights() {
    let d = tempfile::tempdir().unwrap();
    let (input, out) = prune(
        d.path(),
        "pw.onnx",
        &["--sparsity", "0.75", "--ops", "pointwise"],
    );
    let out = weights(&out);
    for name in [PW1, PW2] {
        let v = values(&out, name);
        assert_eq!(
            zeros(&v),
            (0.75 * v.len() as f64).round() as usize,
            "{name}"
        );
    }
    for name in [CONV3, DW, MATMUL, GEMM] {
        assert_eq!(values(&input, name), values(&out, name), "{name} untouched");
    }

    let (input, out) = prune(
        d.path(),
        "dw.onnx",
        &[
            "--sparsity",
            "0.5",
            "--ops",
            "depthwise,gemm",
            "--ignore",
            "fc_.*",
        ],
    );
    let out = weights(&out);
    assert_eq!(zeros(&values(&out, DW)), 72);
    for name in [CONV3, PW1, PW2, MATMUL, GEMM] {
        assert_eq!(values(&input, name), values(&out, name), "{name} untouched");
    }
}

/// The operators and the sparse tensors of a .tflite file.
fn tflite_contents(path: &Path) -> (Vec<BuiltinOperator>, usize) {
    let bytes = std::fs::read(path).unwrap();
    let m = tflite::schema::root_as_model(&bytes).unwrap();
    let codes: Vec<BuiltinOperator> = m
        .operator_codes()
        .unwrap()
        .iter()
        .map(|c| c.builtin_code())
        .collect();
    let sg = m.subgraphs().unwrap().get(0);
    let ops = sg
        .operators()
        .unwrap()
        .iter()
        .map(|o| codes[o.opcode_index() as usize])
        .collect();
    let sparse = sg
        .tensors()
        .unwrap()
        .iter()
        .filter(|t| t.sparsity().is_some())
        .count();
    (ops, sparse)
}

/// edgec's interpreter on the file read back.
fn run_tflite(path: &Path, x: &[f32]) -> Vec<f32> {
    let model = tflite::read_model(path).unwrap();
    let rt = GraphRuntime::new(&model).unwrap();
    let t = CTensor::from_vec(x.to_vec(), &[1, 6, 6, 8], &Device::Cpu).unwrap();
    let out = rt.run(&[("x", t)]).unwrap();
    out[0].1.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn tflite_stores_sparse_pointwise_weights_behind_densify() {
    let d = tempfile::tempdir().unwrap();
    let args = ["--sparsity", "0.75", "--ops", "pointwise"];
    let (_, sparse) = prune(d.path(), "sparse.tflite", &args);
    let mut off = args.to_vec();
    off.extend(["--tflite-sparse", "off"]);
    let (_, dense) = prune(d.path(), "dense.tflite", &off);
    let (ops, n) = tflite_contents(&sparse);
    let densify = ops
        .iter()
        .filter(|o| **o == BuiltinOperator::DENSIFY)
        .count();
    assert_eq!((densify, n), (2, 2), "{ops:?}");
    let (ops, n) = tflite_contents(&dense);
    assert!(
        !ops.contains(&BuiltinOperator::DENSIFY) && n == 0,
        "{ops:?}"
    );
    assert!(std::fs::metadata(&sparse).unwrap().len() < std::fs::metadata(&dense).unwrap().len());
    let mut rng = Rng(5);
    let x: Vec<f32> = (0..288).map(|_| rng.next()).collect();
    let (a, b) = (run_tflite(&sparse, &x), run_tflite(&dense, &x));
    assert_eq!(a, b, "sparse storage reads back to the same model");
    // the pruned weights read back from the sparse file as they were written
    let back = tflite::read_model(&sparse).unwrap();
    let zeroed = back
        .tensors
        .iter()
        .filter(|t| t.dtype == DType::F32 && t.shape == [16, 8, 1, 1])
        .map(|t| zeros(&t.to_f32().unwrap()))
        .max()
        .unwrap_or(0);
    assert_eq!(
        zeroed, 96,
        "the first 1×1 weight read back keeps its 96 zeros"
    );

    // below 2/3 zeros the weights stay dense
    let (_, half) = prune(d.path(), "half.tflite", &["--sparsity", "0.5"]);
    let (ops, n) = tflite_contents(&half);
    assert!(
        !ops.contains(&BuiltinOperator::DENSIFY) && n == 0,
        "{ops:?}"
    );
}

/// Runs `edgec prune ARGS…` on the tiny CNN (or `input`) and asserts a usage
/// error (exit 2) that says every one of `says`, and no output.
fn refused(input: Option<&Path>, args: &[&str], says: &[&str]) {
    let d = tempfile::tempdir().unwrap();
    let cnn = write_cnn(d.path());
    let input = input.unwrap_or(&cnn);
    let out = d.path().join("out.onnx");
    let mut all = vec!["prune", s(input), s(&out)];
    all.extend(args);
    let r = run(&all);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{args:?}: {err}");
    for word in says {
        assert!(err.contains(word), "{args:?}: no {word:?} in {err}");
    }
    assert!(!out.exists(), "{args:?}: no output on a bad request");
}

#[test]
fn bad_graph_requests_are_usage_errors() {
    let d = tempfile::tempdir().unwrap();
    let calib = d.path().join("calib.txt");
    std::fs::write(&calib, "some text").unwrap();
    refused(
        None,
        &[
            "--method",
            "wanda",
            "--sparsity",
            "0.5",
            "--calib",
            s(&calib),
        ],
        &["not text"],
    );
    let x = calib_file(d.path(), 2);
    refused(
        None,
        &[
            "--method",
            "sparsegpt",
            "--sparsity",
            "0.5",
            "--calib",
            s(&x),
            "--ops",
            "conv",
        ],
        &["conv3_w", "1x1 convs, gemm and matmul"],
    );
    refused(
        None,
        &[
            "--method",
            "wanda",
            "--sparsity",
            "0.5",
            "--calib",
            s(&x),
            "--global",
        ],
        &["global"],
    );
    refused(
        None,
        &["--method", "magnitude", "--pattern", "3:5"],
        &["conv3_w", "not a multiple of 5"],
    );
    refused(
        None,
        &[
            "--method",
            "magnitude",
            "--pattern",
            "2:4",
            "--ops",
            "depthwise",
        ],
        &["dw_w", "not a multiple of 4"],
    );
    refused(
        None,
        &[
            "--method",
            "magnitude",
            "--sparsity",
            "0.5",
            "--ops",
            "pointwise",
            "--ignore",
            "pw.*",
        ],
        &["no constant pointwise weight"],
    );
    refused(
        None,
        &[
            "--method",
            "magnitude",
            "--sparsity",
            "0.5",
            "--ops",
            "conv2d",
        ],
        &["conv2d"],
    );
    refused(
        Some(&fixture("tiny-llama")),
        &[
            "--method",
            "magnitude",
            "--sparsity",
            "0.5",
            "--ops",
            "conv",
        ],
        &["ops:", "graph models"],
    );
}

/// `n` calibration samples of the tiny CNN's input in a .safetensors file
/// (`x`, `[n, 8, 6, 6]`).
fn calib_file(dir: &Path, n: usize) -> std::path::PathBuf {
    let mut rng = Rng(23);
    let v: Vec<f32> = (0..n * 288).map(|_| rng.next()).collect();
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![n, 8, 6, 6], &bytes)
            .unwrap();
    let path = dir.join("calib.safetensors");
    std::fs::write(
        &path,
        safetensors::serialize(vec![("x", view)], None).unwrap(),
    )
    .unwrap();
    path
}

/// The samples of `calib_file` one at a time, `[1, 8, 6, 6]` each.
fn calib_samples(n: usize) -> Vec<CTensor> {
    let mut rng = Rng(23);
    let v: Vec<f32> = (0..n * 288).map(|_| rng.next()).collect();
    v.chunks(288)
        .map(|c| CTensor::from_vec(c.to_vec(), &[1, 8, 6, 6], &Device::Cpu).unwrap())
        .collect()
}

/// Σx² per channel (axis 1) of the values `names` over the samples, on `model`.
fn channel_sum_sq(model: &Model, names: &[&str], xs: &[CTensor]) -> HashMap<String, Vec<f64>> {
    let acc: Arc<Mutex<HashMap<String, Vec<f64>>>> = Arc::default();
    let a = Arc::clone(&acc);
    let wanted: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut rt = GraphRuntime::new(model).unwrap();
    rt.set_hook(Some(Arc::new(move |name: &str, t: &CTensor| {
        if !wanted.iter().any(|w| w == name) {
            return;
        }
        let dims = t.dims().to_vec();
        let (c, inner) = (dims[1], dims[2..].iter().product::<usize>());
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut a = a.lock().unwrap();
        let s = a.entry(name.to_string()).or_insert_with(|| vec![0.0; c]);
        for (i, x) in v.iter().enumerate() {
            s[(i / inner) % c] += (*x as f64) * (*x as f64);
        }
    })));
    for x in xs {
        rt.run(&[("x", x.clone())]).unwrap();
    }
    rt.set_hook(None);
    let out = acc.lock().unwrap().clone();
    out
}

fn outputs(model: &Model, xs: &[CTensor]) -> Vec<f32> {
    let rt = GraphRuntime::new(model).unwrap();
    xs.iter()
        .flat_map(|x| {
            let out = rt.run(&[("x", x.clone())]).unwrap();
            out[0].1.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        })
        .collect()
}

/// Checks Wanda's mask of one weight: in every row of its `[rows, cols]`
/// view (`at` gives the weight index of row r, input j), the half with the
/// lowest |w|·‖x_j‖ is dropped and the rest kept as it was.
fn check_wanda(
    name: &str,
    before: &[f32],
    after: &[f32],
    (rows, cols): (usize, usize),
    sum_sq: &[f64],
    at: &dyn Fn(usize, usize) -> usize,
) {
    for r in 0..rows {
        let score = |j: usize| before[at(r, j)].abs() as f64 * sum_sq[j].sqrt();
        let mut order: Vec<usize> = (0..cols).collect();
        order.sort_by(|&i, &j| score(i).total_cmp(&score(j)));
        for (rank, &j) in order.iter().enumerate() {
            let v = after[at(r, j)];
            if rank < cols / 2 {
                assert_eq!(
                    v, 0.0,
                    "{name} row {r}: input {j} ranks {rank}, must be dropped"
                );
            } else {
                assert_eq!(
                    v,
                    before[at(r, j)],
                    "{name} row {r}: input {j} is kept as it was"
                );
            }
        }
    }
}

#[test]
fn wanda_masks_follow_the_input_norms() {
    let d = tempfile::tempdir().unwrap();
    let calib = calib_file(d.path(), 6);
    let (input, out) = prune(
        d.path(),
        "wanda.onnx",
        &[
            "--method",
            "wanda",
            "--sparsity",
            "0.5",
            "--calib",
            s(&calib),
        ],
    );
    let out = weights(&out);
    let norms = channel_sum_sq(&input, &["r1", "flat"], &calib_samples(6));
    // pw1 [16, 8, 1, 1] reads r1; the MatMul [8 (k), 8 (n)] reads flat
    let (b, a) = (values(&input, PW1), values(&out, PW1));
    check_wanda(PW1, &b, &a, (16, 8), &norms["r1"], &|r, j| r * 8 + j);
    let (b, a) = (values(&input, MATMUL), values(&out, MATMUL));
    check_wanda(MATMUL, &b, &a, (8, 8), &norms["flat"], &|r, j| j * 8 + r);
    // by default the data methods take 1×1 convs, gemm and matmul
    for name in [PW2, GEMM] {
        let v = values(&out, name);
        assert_eq!(zeros(&v), v.len() / 2, "{name}");
    }
    for name in [CONV3, DW] {
        assert_eq!(values(&input, name), values(&out, name), "{name} untouched");
    }
}

#[test]
fn sparsegpt_keeps_the_outputs_closer_than_magnitude() {
    let d = tempfile::tempdir().unwrap();
    let calib = calib_file(d.path(), 8);
    let args = ["--sparsity", "0.5", "--ops", "pointwise,matmul,gemm"];
    let mut gpt = args.to_vec();
    gpt.extend(["--method", "sparsegpt", "--calib", s(&calib)]);
    let (_, sgpt) = prune(d.path(), "sparsegpt.onnx", &gpt);
    let (input, mag) = prune(d.path(), "magnitude.onnx", &args);
    let (sgpt, mag) = (weights(&sgpt), weights(&mag));
    let mut updated = 0;
    for name in [PW1, PW2, MATMUL, GEMM] {
        let (b, a) = (values(&input, name), values(&sgpt, name));
        assert_eq!(zeros(&a), b.len() / 2, "{name}: exactly half");
        updated += a
            .iter()
            .zip(&b)
            .filter(|(x, y)| **x != 0.0 && x != y)
            .count();
    }
    assert!(updated > 0, "SparseGPT updates the weights it keeps");
    let xs = calib_samples(8);
    let dense = outputs(&input, &xs);
    let err = |m: &Model| -> f64 {
        outputs(m, &xs)
            .iter()
            .zip(&dense)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum()
    };
    let (e_gpt, e_mag) = (err(&sgpt), err(&mag));
    assert!(
        e_gpt < e_mag,
        "squared output error: sparsegpt {e_gpt}, magnitude {e_mag}"
    );
}
