//! The graph interpreter against straightforward loop implementations on
//! small graphs built in code, plus constant folding, shape inference,
//! hooks and errors.

use std::sync::{Arc, Mutex};

use candle_core::{DType as CDType, Device, Tensor as CTensor};
use edgec_core::runtime::graph::{fold_constants, infer_shapes, GraphRuntime};
use edgec_core::{
    DType, Dim, Graph, Model, Node, Op, PadMode, Tensor, TensorData, ValueInfo, Window,
};

// ---------------------------------------------------------------------------
// Building graphs.

fn vi(name: &str, dtype: DType, dims: &[usize]) -> ValueInfo {
    ValueInfo {
        name: name.into(),
        dtype,
        shape: dims.iter().map(|&d| Dim::Fixed(d)).collect(),
    }
}

fn node(name: &str, op: Op, ins: &[&str], outs: &[&str]) -> Node {
    Node {
        name: name.into(),
        op,
        inputs: ins.iter().map(|s| s.to_string()).collect(),
        outputs: outs.iter().map(|s| s.to_string()).collect(),
    }
}

fn model(
    inputs: Vec<ValueInfo>,
    outputs: &[&str],
    nodes: Vec<Node>,
    tensors: Vec<Tensor>,
) -> Model {
    Model {
        meta: Default::default(),
        tensors,
        graph: Some(Graph {
            inputs,
            outputs: outputs.iter().map(|o| vi(o, DType::F32, &[])).collect(),
            nodes,
        }),
    }
}

fn f32t(name: &str, dims: &[usize], v: &[f32]) -> Tensor {
    Tensor::from_f32(name, dims.to_vec(), v.to_vec()).unwrap()
}

fn bytes_t(name: &str, dims: &[usize], dtype: DType, bytes: Vec<u8>) -> Tensor {
    Tensor::new(
        name,
        dims.to_vec(),
        dtype,
        TensorData::Owned(Arc::new(bytes)),
    )
    .unwrap()
}

fn i64t(name: &str, dims: &[usize], v: &[i64]) -> Tensor {
    bytes_t(
        name,
        dims,
        DType::I64,
        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )
}

fn i8t(name: &str, dims: &[usize], v: &[i8]) -> Tensor {
    bytes_t(name, dims, DType::I8, v.iter().map(|&x| x as u8).collect())
}

fn u8t(name: &str, dims: &[usize], v: &[u8]) -> Tensor {
    bytes_t(name, dims, DType::U8, v.to_vec())
}

fn ct(v: &[f32], dims: &[usize]) -> CTensor {
    CTensor::from_vec(v.to_vec(), dims.to_vec(), &Device::Cpu).unwrap()
}

/// Deterministic values in [-1, 1).
fn rnd(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn f32s(t: &CTensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(CDType::F32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn i64s(t: &CTensor) -> Vec<i64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(CDType::I64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}: element {i} is {g}, want {w}"
        );
    }
}

/// Runs a one-node graph: `feeds` are graph inputs (F32 or I64 by their
/// candle dtype), `consts` model tensors; returns the node's outputs.
fn run_op(
    op: Op,
    ins: &[&str],
    feeds: &[(&str, CTensor)],
    consts: Vec<Tensor>,
    n_out: usize,
) -> Vec<CTensor> {
    let inputs = feeds
        .iter()
        .map(|(n, t)| {
            let dt = match t.dtype() {
                CDType::F32 => DType::F32,
                CDType::I64 => DType::I64,
                CDType::U8 => DType::U8,
                d => panic!("{d:?}"),
            };
            vi(n, dt, t.dims())
        })
        .collect();
    let outs: Vec<String> = (0..n_out).map(|i| format!("out{i}")).collect();
    let outs: Vec<&str> = outs.iter().map(String::as_str).collect();
    let m = model(
        inputs,
        &outs,
        vec![node("the_node", op, ins, &outs)],
        consts,
    );
    let rt = GraphRuntime::new(&m).unwrap();
    let feeds: Vec<(&str, CTensor)> = feeds.iter().map(|(n, t)| (*n, t.clone())).collect();
    rt.run(&feeds)
        .unwrap()
        .into_iter()
        .map(|(_, t)| t)
        .collect()
}

fn win(kernel: &[usize], strides: &[usize], pads: &[usize], dilations: &[usize]) -> Window {
    Window {
        kernel: kernel.to_vec(),
        strides: strides.to_vec(),
        pads: pads.to_vec(),
        dilations: dilations.to_vec(),
    }
}

// ---------------------------------------------------------------------------
// Convolution and pooling.

/// Plain-loop conv2d: x `[n, c, h, w]`, w `[m, c/g, kh, kw]`, pads
/// `[top, left, bottom, right]`.
#[allow(clippy::too_many_arguments)]
fn ref_conv(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    wt: &[f32],
    [m, cg, kh, kw]: [usize; 4],
    bias: Option<&[f32]>,
    (sh, sw): (usize, usize),
    (dh, dw): (usize, usize),
    pads: [usize; 4],
    group: usize,
) -> (Vec<f32>, [usize; 4]) {
    let oh = (h + pads[0] + pads[2] - ((kh - 1) * dh + 1)) / sh + 1;
    let ow = (w + pads[1] + pads[3] - ((kw - 1) * dw + 1)) / sw + 1;
    let mg = m / group;
    let mut out = vec![0f32; n * m * oh * ow];
    for b in 0..n {
        for o in 0..m {
            let g = o / mg;
            for i in 0..oh {
                for j in 0..ow {
                    let mut acc = bias.map_or(0.0, |bv| bv[o]) as f64;
                    for ci in 0..cg {
                        for ki in 0..kh {
                            for kj in 0..kw {
                                let ih = (i * sh + ki * dh) as isize - pads[0] as isize;
                                let iw = (j * sw + kj * dw) as isize - pads[1] as isize;
                                if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize {
                                    continue;
                                }
                                let xv =
                                    x[((b * c + g * cg + ci) * h + ih as usize) * w + iw as usize];
                                let wv = wt[((o * cg + ci) * kh + ki) * kw + kj];
                                acc += (xv * wv) as f64;
                            }
                        }
                    }
                    out[((b * m + o) * oh + i) * ow + j] = acc as f32;
                }
            }
        }
    }
    (out, [n, m, oh, ow])
}

#[test]
fn conv_matches_loops() {
    struct Case {
        c: usize,
        m: usize,
        group: usize,
        k: (usize, usize),
        s: (usize, usize),
        d: (usize, usize),
        pads: [usize; 4],
        bias: bool,
    }
    let cases = [
        // stride 2, asymmetric pads, bias
        Case {
            c: 3,
            m: 4,
            group: 1,
            k: (3, 3),
            s: (2, 2),
            d: (1, 1),
            pads: [0, 1, 1, 0],
            bias: true,
        },
        // dilation 2, symmetric pads, no bias
        Case {
            c: 2,
            m: 3,
            group: 1,
            k: (3, 3),
            s: (1, 1),
            d: (2, 2),
            pads: [2, 2, 2, 2],
            bias: false,
        },
        // depthwise, stride 2, asymmetric pads (TF "same")
        Case {
            c: 4,
            m: 4,
            group: 4,
            k: (3, 3),
            s: (2, 2),
            d: (1, 1),
            pads: [0, 0, 1, 1],
            bias: true,
        },
        // depthwise 5×5 with a channel multiplier of 2, dilation 2
        Case {
            c: 3,
            m: 6,
            group: 3,
            k: (5, 5),
            s: (1, 1),
            d: (2, 2),
            pads: [4, 3, 4, 5],
            bias: false,
        },
        // two groups
        Case {
            c: 4,
            m: 6,
            group: 2,
            k: (3, 2),
            s: (1, 1),
            d: (1, 1),
            pads: [1, 0, 1, 1],
            bias: true,
        },
        // different strides and dilations per dim
        Case {
            c: 2,
            m: 2,
            group: 1,
            k: (3, 3),
            s: (2, 1),
            d: (1, 2),
            pads: [1, 1, 1, 1],
            bias: false,
        },
        // 1×1 pointwise
        Case {
            c: 5,
            m: 3,
            group: 1,
            k: (1, 1),
            s: (1, 1),
            d: (1, 1),
            pads: [0, 0, 0, 0],
            bias: true,
        },
    ];
    for (ci, cs) in cases.iter().enumerate() {
        let (n, h, w) = (2, 9, 8);
        let xd = [n, cs.c, h, w];
        let wd = [cs.m, cs.c / cs.group, cs.k.0, cs.k.1];
        let x = rnd(xd.iter().product(), 1 + ci as u64);
        let wt = rnd(wd.iter().product(), 100 + ci as u64);
        let b = rnd(cs.m, 200 + ci as u64);
        let mut consts = vec![f32t("w", &wd, &wt)];
        let mut ins = vec!["x", "w"];
        if cs.bias {
            consts.push(f32t("b", &[cs.m], &b));
            ins.push("b");
        }
        let op = Op::Conv {
            window: win(
                &[cs.k.0, cs.k.1],
                &[cs.s.0, cs.s.1],
                &cs.pads,
                &[cs.d.0, cs.d.1],
            ),
            group: cs.group,
        };
        let out = run_op(op, &ins, &[("x", ct(&x, &xd))], consts, 1);
        let (want, dims) = ref_conv(
            &x,
            xd,
            &wt,
            wd,
            cs.bias.then_some(&b[..]),
            cs.s,
            cs.d,
            cs.pads,
            cs.group,
        );
        assert_eq!(out[0].dims(), dims, "case {ci}");
        assert_close(&f32s(&out[0]), &want, 1e-4, &format!("conv case {ci}"));
    }
}

#[test]
fn conv_1d_and_depthwise_1d() {
    for (c, m, group) in [(3, 4, 1), (4, 4, 4)] {
        let (n, l, k) = (2, 11, 3);
        let x = rnd(n * c * l, 7);
        let wt = rnd(m * (c / group) * k, 8);
        let op = Op::Conv {
            window: win(&[k], &[2], &[1, 2], &[2]),
            group,
        };
        let out = run_op(
            op,
            &["x", "w"],
            &[("x", ct(&x, &[n, c, l]))],
            vec![f32t("w", &[m, c / group, k], &wt)],
            1,
        );
        // a 1-D conv is a 2-D one of height 1
        let (want, dims) = ref_conv(
            &x,
            [n, c, 1, l],
            &wt,
            [m, c / group, 1, k],
            None,
            (1, 2),
            (1, 2),
            [0, 1, 0, 2],
            group,
        );
        assert_eq!(out[0].dims(), &[dims[0], dims[1], dims[3]]);
        assert_close(&f32s(&out[0]), &want, 1e-4, "conv1d");
    }
}

/// Plain-loop pooling; `avg` with or without the padding counted.
fn ref_pool(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    k: (usize, usize),
    s: (usize, usize),
    d: (usize, usize),
    pads: [usize; 4],
    mode: &str,
) -> (Vec<f32>, [usize; 4]) {
    let oh = (h + pads[0] + pads[2] - ((k.0 - 1) * d.0 + 1)) / s.0 + 1;
    let ow = (w + pads[1] + pads[3] - ((k.1 - 1) * d.1 + 1)) / s.1 + 1;
    let mut out = Vec::new();
    for p in 0..n * c {
        for i in 0..oh {
            for j in 0..ow {
                let (mut mx, mut sum, mut cnt) = (f32::NEG_INFINITY, 0f32, 0usize);
                for a in 0..k.0 {
                    for b in 0..k.1 {
                        let ih = (i * s.0 + a * d.0) as isize - pads[0] as isize;
                        let iw = (j * s.1 + b * d.1) as isize - pads[1] as isize;
                        if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize {
                            continue;
                        }
                        let v = x[(p * h + ih as usize) * w + iw as usize];
                        mx = mx.max(v);
                        sum += v;
                        cnt += 1;
                    }
                }
                out.push(match mode {
                    "max" => mx,
                    "avg_incl" => sum / (k.0 * k.1) as f32,
                    _ => sum / cnt as f32,
                });
            }
        }
    }
    (out, [n, c, oh, ow])
}

#[test]
fn pools_match_loops() {
    let xd = [2, 3, 7, 6];
    // negative values: a max over padding must not see zeros
    let x: Vec<f32> = rnd(xd.iter().product(), 5)
        .iter()
        .map(|v| v - 2.0)
        .collect();
    type Pair = (usize, usize);
    let cases: [(&str, Pair, Pair, Pair, [usize; 4]); 6] = [
        ("max", (3, 3), (2, 2), (1, 1), [1, 1, 1, 1]),
        ("max", (2, 3), (1, 2), (1, 1), [0, 1, 1, 2]),
        ("max", (2, 2), (1, 1), (2, 2), [1, 0, 0, 1]),
        ("avg_incl", (3, 3), (2, 2), (1, 1), [1, 0, 1, 2]),
        ("avg_excl", (3, 3), (2, 2), (1, 1), [1, 0, 1, 2]),
        ("avg_excl", (2, 2), (2, 1), (1, 1), [0, 0, 0, 0]),
    ];
    for (ci, (mode, k, s, d, pads)) in cases.into_iter().enumerate() {
        let window = win(&[k.0, k.1], &[s.0, s.1], &pads, &[d.0, d.1]);
        let op = match mode {
            "max" => Op::MaxPool { window },
            m => Op::AveragePool {
                window,
                count_include_pad: m == "avg_incl",
            },
        };
        let out = run_op(op, &["x"], &[("x", ct(&x, &xd))], vec![], 1);
        let (want, dims) = ref_pool(&x, xd, k, s, d, pads, mode);
        assert_eq!(out[0].dims(), dims, "pool case {ci}");
        assert_close(
            &f32s(&out[0]),
            &want,
            1e-5,
            &format!("pool case {ci} ({mode})"),
        );
    }
    let out = run_op(
        Op::GlobalAveragePool,
        &["x"],
        &[("x", ct(&x, &xd))],
        vec![],
        1,
    );
    assert_eq!(out[0].dims(), &[2, 3, 1, 1]);
    let want: Vec<f32> = x.chunks(42).map(|c| c.iter().sum::<f32>() / 42.0).collect();
    assert_close(&f32s(&out[0]), &want, 1e-5, "global average pool");
}

// ---------------------------------------------------------------------------
// Linear algebra and normalisation.

#[test]
fn gemm_with_transposes() {
    let (m, k, n) = (3, 4, 5);
    let a = rnd(m * k, 11);
    let b = rnd(k * n, 12);
    let c = rnd(n, 13);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let ad = if ta { [k, m] } else { [m, k] };
        let bd = if tb { [n, k] } else { [k, n] };
        // store the transposes where asked
        let at: Vec<f32> = if ta {
            (0..k * m).map(|i| a[(i % m) * k + i / m]).collect()
        } else {
            a.clone()
        };
        let bt: Vec<f32> = if tb {
            (0..n * k).map(|i| b[(i % k) * n + i / k]).collect()
        } else {
            b.clone()
        };
        let op = Op::Gemm {
            alpha: 0.5,
            beta: 2.0,
            trans_a: ta,
            trans_b: tb,
        };
        let out = run_op(
            op,
            &["a", "b", "c"],
            &[("a", ct(&at, &ad))],
            vec![f32t("b", &bd, &bt), f32t("c", &[n], &c)],
            1,
        );
        let mut want = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let s: f32 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
                want[i * n + j] = 0.5 * s + 2.0 * c[j];
            }
        }
        assert_eq!(out[0].dims(), &[m, n]);
        assert_close(&f32s(&out[0]), &want, 1e-5, &format!("gemm {ta} {tb}"));
    }
}

/// numpy's matmul by loops.
fn ref_matmul(a: &[f32], ad: &[usize], b: &[f32], bd: &[usize]) -> (Vec<f32>, Vec<usize>) {
    let (a1, b1) = (ad.len() == 1, bd.len() == 1);
    let ad: Vec<usize> = if a1 { vec![1, ad[0]] } else { ad.to_vec() };
    let bd: Vec<usize> = if b1 { vec![bd[0], 1] } else { bd.to_vec() };
    let (m, k, n) = (ad[ad.len() - 2], ad[ad.len() - 1], bd[bd.len() - 1]);
    let (ba, bb) = (&ad[..ad.len() - 2], &bd[..bd.len() - 2]);
    let r = ba.len().max(bb.len());
    let pad = |v: &[usize]| {
        let mut p = vec![1; r - v.len()];
        p.extend_from_slice(v);
        p
    };
    let (pa, pb) = (pad(ba), pad(bb));
    let batch: Vec<usize> = pa.iter().zip(&pb).map(|(x, y)| *x.max(y)).collect();
    let total: usize = batch.iter().product();
    let mut out = Vec::new();
    for bi in 0..total {
        let mut rem = bi;
        let mut idx = vec![0; r];
        for d in (0..r).rev() {
            idx[d] = rem % batch[d];
            rem /= batch[d];
        }
        let flat = |dims: &[usize]| {
            idx.iter()
                .zip(dims)
                .fold(0, |acc, (&i, &d)| acc * d + if d == 1 { 0 } else { i })
        };
        let (oa, ob) = (flat(&pa) * m * k, flat(&pb) * k * n);
        for i in 0..m {
            for j in 0..n {
                out.push((0..k).map(|p| a[oa + i * k + p] * b[ob + p * n + j]).sum());
            }
        }
    }
    let mut dims = batch;
    if !a1 {
        dims.push(m);
    }
    if !b1 {
        dims.push(n);
    }
    (out, dims)
}

#[test]
fn matmul_broadcasting() {
    let cases: [(&[usize], &[usize]); 6] = [
        (&[2, 1, 3, 4], &[5, 4, 2]),
        (&[3, 4], &[2, 4, 6]),
        (&[2, 3, 4], &[4, 2]),
        (&[4], &[2, 4, 3]),
        (&[2, 3, 4], &[4]),
        (&[4], &[4]),
    ];
    for (ci, (ad, bd)) in cases.into_iter().enumerate() {
        let a = rnd(ad.iter().product(), 20 + ci as u64);
        let b = rnd(bd.iter().product(), 40 + ci as u64);
        let out = run_op(
            Op::MatMul,
            &["a", "b"],
            &[("a", ct(&a, ad)), ("b", ct(&b, bd))],
            vec![],
            1,
        );
        let (want, dims) = ref_matmul(&a, ad, &b, bd);
        assert_eq!(out[0].dims(), dims.as_slice(), "matmul case {ci}");
        assert_close(&f32s(&out[0]), &want, 1e-5, &format!("matmul case {ci}"));
    }
}

#[test]
fn softmax_on_axis_1_of_3d() {
    let d = [2, 3, 4];
    let x = rnd(24, 3);
    let out = run_op(
        Op::Softmax { axis: 1 },
        &["x"],
        &[("x", ct(&x, &d))],
        vec![],
        1,
    );
    let mut want = vec![0f32; 24];
    for a in 0..2 {
        for c in 0..4 {
            let idx = |b: usize| (a * 3 + b) * 4 + c;
            let mx = (0..3).map(|b| x[idx(b)]).fold(f32::MIN, f32::max);
            let s: f32 = (0..3).map(|b| (x[idx(b)] - mx).exp()).sum();
            for b in 0..3 {
                want[idx(b)] = (x[idx(b)] - mx).exp() / s;
            }
        }
    }
    assert_close(&f32s(&out[0]), &want, 1e-5, "softmax");
}

#[test]
fn layer_norm_over_trailing_axes() {
    let d = [2, 3, 4];
    let x = rnd(24, 31);
    for axis in [-1i64, 1] {
        let inner = if axis == -1 { 4 } else { 12 };
        let sd: Vec<usize> = if axis == -1 { vec![4] } else { vec![3, 4] };
        let scale = rnd(inner, 32);
        let bias = rnd(inner, 33);
        let out = run_op(
            Op::LayerNorm {
                axis,
                epsilon: 1e-5,
            },
            &["x", "s", "b"],
            &[("x", ct(&x, &d))],
            vec![f32t("s", &sd, &scale), f32t("b", &sd, &bias)],
            1,
        );
        let mut want = Vec::new();
        for row in x.chunks(inner) {
            let mean = row.iter().sum::<f32>() / inner as f32;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / inner as f32;
            for (i, v) in row.iter().enumerate() {
                want.push((v - mean) / (var + 1e-5).sqrt() * scale[i] + bias[i]);
            }
        }
        assert_close(&f32s(&out[0]), &want, 1e-4, "layer norm");
    }
}

#[test]
fn batch_norm_matches_formula() {
    let d = [2, 3, 2, 2];
    let x = rnd(24, 41);
    let (s, b, m) = (rnd(3, 42), rnd(3, 43), rnd(3, 44));
    let v: Vec<f32> = rnd(3, 45).iter().map(|x| x.abs() + 0.5).collect();
    let out = run_op(
        Op::BatchNorm { epsilon: 1e-3 },
        &["x", "s", "b", "m", "v"],
        &[("x", ct(&x, &d))],
        vec![
            f32t("s", &[3], &s),
            f32t("b", &[3], &b),
            f32t("m", &[3], &m),
            f32t("v", &[3], &v),
        ],
        1,
    );
    let want: Vec<f32> = (0..24)
        .map(|i| {
            let c = (i / 4) % 3;
            (x[i] - m[c]) / (v[c] + 1e-3).sqrt() * s[c] + b[c]
        })
        .collect();
    assert_close(&f32s(&out[0]), &want, 1e-5, "batch norm");
}

// ---------------------------------------------------------------------------
// Data movement.

#[test]
fn slice_with_negative_steps_and_open_ends() {
    let d = [4, 5];
    let x: Vec<f32> = (0..20).map(|v| v as f32).collect();
    // rows from the last backwards to the start, columns 4, 2, 0
    let out = run_op(
        Op::Slice,
        &["x", "st", "en", "ax", "sp"],
        &[("x", ct(&x, &d))],
        vec![
            i64t("st", &[2], &[-1, i64::MAX]),
            i64t("en", &[2], &[i64::MIN, -6]),
            i64t("ax", &[2], &[0, -1]),
            i64t("sp", &[2], &[-1, -2]),
        ],
        1,
    );
    assert_eq!(out[0].dims(), &[4, 3]);
    let want: Vec<f32> = [3, 2, 1, 0]
        .iter()
        .flat_map(|r| [4, 2, 0].map(|c| (r * 5 + c) as f32))
        .collect();
    assert_eq!(f32s(&out[0]), want);
    // positive step 2 with an INT_MAX end, no axes or steps given for rows
    let out = run_op(
        Op::Slice,
        &["x", "st", "en", "", "sp"],
        &[("x", ct(&x, &d))],
        vec![
            i64t("st", &[2], &[1, 1]),
            i64t("en", &[2], &[i64::MAX, i64::MAX]),
            i64t("sp", &[2], &[2, 3]),
        ],
        1,
    );
    assert_eq!(out[0].dims(), &[2, 2]);
    assert_eq!(f32s(&out[0]), vec![6.0, 9.0, 16.0, 19.0]);
}

#[test]
fn gather_with_negative_indices() {
    let d = [2, 5, 2];
    let x: Vec<f32> = (0..20).map(|v| v as f32).collect();
    let out = run_op(
        Op::Gather { axis: 1 },
        &["x", "i"],
        &[("x", ct(&x, &d))],
        vec![i64t("i", &[2, 2], &[-1, 0, 1, -2])],
        1,
    );
    assert_eq!(out[0].dims(), &[2, 2, 2, 2]);
    let mut want = Vec::new();
    for a in 0..2 {
        for idx in [4, 0, 1, 3] {
            for c in 0..2 {
                want.push(x[(a * 5 + idx) * 2 + c]);
            }
        }
    }
    assert_eq!(f32s(&out[0]), want);
    // a scalar index drops the axis
    let out = run_op(
        Op::Gather { axis: 0 },
        &["x", "i"],
        &[("x", ct(&x, &d))],
        vec![i64t("i", &[], &[-1])],
        1,
    );
    assert_eq!(out[0].dims(), &[5, 2]);
    assert_eq!(f32s(&out[0]), x[10..].to_vec());
}

#[test]
fn gather_nd_with_batch_dims() {
    // data [2, 3, 2], indices [2, 1, 1] with batch_dims 1: out [2, 1, 2]
    let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
    let out = run_op(
        Op::GatherND { batch_dims: 1 },
        &["x", "i"],
        &[("x", ct(&x, &[2, 3, 2]))],
        vec![i64t("i", &[2, 1, 1], &[2, -3])],
        1,
    );
    assert_eq!(out[0].dims(), &[2, 1, 2]);
    assert_eq!(f32s(&out[0]), vec![4.0, 5.0, 6.0, 7.0]);
    // batch_dims 0, full coordinates: out [2]
    let out = run_op(
        Op::GatherND { batch_dims: 0 },
        &["x", "i"],
        &[("x", ct(&x, &[2, 3, 2]))],
        vec![i64t("i", &[2, 3], &[1, 2, 1, 0, 0, 0])],
        1,
    );
    assert_eq!(f32s(&out[0]), vec![11.0, 0.0]);
}

#[test]
fn reshape_zero_and_minus_one() {
    let x: Vec<f32> = (0..24).map(|v| v as f32).collect();
    let cases: [(&[i64], bool, &[usize]); 3] = [
        (&[0, -1], false, &[2, 12]),
        (&[0, 0, 2, -1], false, &[2, 3, 2, 2]),
        (&[-1, 4], false, &[6, 4]),
    ];
    for (shape, allow_zero, want) in cases {
        let out = run_op(
            Op::Reshape { allow_zero },
            &["x", "s"],
            &[("x", ct(&x, &[2, 3, 4]))],
            vec![i64t("s", &[shape.len()], shape)],
            1,
        );
        assert_eq!(out[0].dims(), want);
        assert_eq!(f32s(&out[0]), x);
    }
}

#[test]
fn pad_constant_reflect_edge() {
    let x: Vec<f32> = (1..=6).map(|v| v as f32).collect(); // [[1,2,3],[4,5,6]]
    let run = |mode, pads: &[i64], value: Option<f32>| {
        let mut consts = vec![i64t("p", &[4], pads)];
        let mut ins = vec!["x", "p"];
        if let Some(v) = value {
            consts.push(f32t("v", &[], &[v]));
            ins.push("v");
        }
        let out = run_op(Op::Pad { mode }, &ins, &[("x", ct(&x, &[2, 3]))], consts, 1);
        (out[0].dims().to_vec(), f32s(&out[0]))
    };
    let (d, v) = run(PadMode::Reflect, &[0, 2, 1, 1], None);
    assert_eq!(d, vec![3, 6]);
    assert_eq!(
        v,
        vec![3., 2., 1., 2., 3., 2., 6., 5., 4., 5., 6., 5., 3., 2., 1., 2., 3., 2.]
    );
    let (d, v) = run(PadMode::Edge, &[1, 0, 0, 2], None);
    assert_eq!(d, vec![3, 5]);
    assert_eq!(
        v,
        vec![1., 2., 3., 3., 3., 1., 2., 3., 3., 3., 4., 5., 6., 6., 6.]
    );
    let (d, v) = run(PadMode::Constant, &[0, 1, 0, -1], Some(9.0));
    assert_eq!(d, vec![2, 3]);
    assert_eq!(v, vec![9., 1., 2., 9., 4., 5.]);
}

#[test]
fn assorted_ops() {
    let dev = &Device::Cpu;
    // Where with broadcasting
    let c = CTensor::from_vec(vec![1u8, 0, 1], 3, dev).unwrap();
    let m = model(
        vec![vi("c", DType::Bool, &[3]), vi("x", DType::F32, &[2, 1])],
        &["y"],
        vec![node("w", Op::Where, &["c", "x", "z"], &["y"])],
        vec![f32t("z", &[], &[-1.0])],
    );
    let out = GraphRuntime::new(&m)
        .unwrap()
        .run(&[("c", c), ("x", ct(&[5.0, 6.0], &[2, 1]))])
        .unwrap();
    assert_eq!(f32s(&out[0].1), vec![5., -1., 5., 6., -1., 6.]);

    // Expand, bidirectional
    let out = run_op(
        Op::Expand,
        &["x", "s"],
        &[("x", ct(&[1., 2., 3.], &[3, 1]))],
        vec![i64t("s", &[3], &[2, 1, 2])],
        1,
    );
    assert_eq!(out[0].dims(), &[2, 3, 2]);
    assert_eq!(
        f32s(&out[0]),
        vec![1., 1., 2., 2., 3., 3., 1., 1., 2., 2., 3., 3.]
    );

    // Cast: truncation toward zero, int8 wrap, bool
    let x = ct(&[2.7, -2.7, 300.0, 0.0], &[4]);
    let out = run_op(
        Op::Cast { to: DType::I8 },
        &["x"],
        &[("x", x.clone())],
        vec![],
        1,
    );
    assert_eq!(i64s(&out[0]), vec![2, -2, 44, 0]);
    let out = run_op(
        Op::Cast { to: DType::Bool },
        &["x"],
        &[("x", x.clone())],
        vec![],
        1,
    );
    assert_eq!(i64s(&out[0]), vec![1, 1, 1, 0]);
    let out = run_op(
        Op::Cast { to: DType::F16 },
        &["x"],
        &[("x", ct(&[0.1], &[1]))],
        vec![],
        1,
    );
    assert_eq!(f32s(&out[0]), vec![half::f16::from_f32(0.1).to_f32()]);

    // Range (int and float), ConstantOfShape
    let out = run_op(
        Op::Range,
        &["a", "b", "c"],
        &[],
        vec![
            i64t("a", &[], &[10]),
            i64t("b", &[], &[3]),
            i64t("c", &[], &[-3]),
        ],
        1,
    );
    assert_eq!(i64s(&out[0]), vec![10, 7, 4]);
    let out = run_op(
        Op::Range,
        &["a", "b", "c"],
        &[],
        vec![
            f32t("a", &[], &[0.5]),
            f32t("b", &[], &[2.0]),
            f32t("c", &[], &[0.5]),
        ],
        1,
    );
    assert_eq!(f32s(&out[0]), vec![0.5, 1.0, 1.5]);
    let out = run_op(
        Op::ConstantOfShape {
            dtype: DType::I64,
            value: 7.0,
        },
        &["s"],
        &[],
        vec![i64t("s", &[2], &[2, 3])],
        1,
    );
    assert_eq!(out[0].dims(), &[2, 3]);
    assert_eq!(i64s(&out[0]), vec![7; 6]);

    // Clip with only a max, HardSigmoid, HardSwish, Gelu (both), Erf, Pow
    let xs = [-4.0f32, -1.0, -0.25, 0.0, 0.5, 2.0, 7.0];
    let x = ct(&xs, &[7]);
    let out = run_op(
        Op::Clip,
        &["x", "", "hi"],
        &[("x", x.clone())],
        vec![f32t("hi", &[], &[1.0])],
        1,
    );
    assert_eq!(f32s(&out[0]), xs.map(|v| v.min(1.0)).to_vec());
    let out = run_op(Op::HardSwish, &["x"], &[("x", x.clone())], vec![], 1);
    let want = xs.map(|v| v * (v / 6.0 + 0.5).clamp(0.0, 1.0));
    assert_close(&f32s(&out[0]), &want, 1e-6, "hard swish");
    let out = run_op(
        Op::HardSigmoid {
            alpha: 0.2,
            beta: 0.5,
        },
        &["x"],
        &[("x", x.clone())],
        vec![],
        1,
    );
    assert_close(
        &f32s(&out[0]),
        &xs.map(|v| (0.2 * v + 0.5).clamp(0.0, 1.0)),
        1e-6,
        "hard sigmoid",
    );
    let erf = |v: f64| {
        // Abramowitz–Stegun 7.1.26 is too coarse; integrate numerically
        let n = 2000;
        let h = v / n as f64;
        let f = |t: f64| (-t * t).exp();
        let s: f64 = (0..n)
            .map(|i| f(h * i as f64) + 4.0 * f(h * (i as f64 + 0.5)) + f(h * (i + 1) as f64))
            .sum();
        s * h / 6.0 * 2.0 / std::f64::consts::PI.sqrt()
    };
    let out = run_op(Op::Erf, &["x"], &[("x", x.clone())], vec![], 1);
    assert_close(
        &f32s(&out[0]),
        &xs.map(|v| erf(v as f64) as f32),
        1e-5,
        "erf",
    );
    let out = run_op(
        Op::Gelu { tanh: false },
        &["x"],
        &[("x", x.clone())],
        vec![],
        1,
    );
    let want = xs.map(|v| (0.5 * v as f64 * (1.0 + erf(v as f64 / 2f64.sqrt()))) as f32);
    assert_close(&f32s(&out[0]), &want, 1e-5, "gelu");
    let out = run_op(
        Op::Gelu { tanh: true },
        &["x"],
        &[("x", x.clone())],
        vec![],
        1,
    );
    let want = xs.map(|v| {
        0.5 * v * (1.0 + ((2.0 / std::f32::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh())
    });
    assert_close(&f32s(&out[0]), &want, 1e-5, "gelu tanh");
    let out = run_op(
        Op::Pow,
        &["x", "e"],
        &[("x", x.clone())],
        vec![f32t("e", &[], &[3.0])],
        1,
    );
    assert_close(&f32s(&out[0]), &xs.map(|v| v.powi(3)), 1e-6, "pow");

    // integer arithmetic, comparisons, logic, variadic Max
    let a = CTensor::from_vec(vec![7i64, -7, 9], 3, dev).unwrap();
    let out = run_op(
        Op::Div,
        &["a", "b"],
        &[("a", a.clone())],
        vec![i64t("b", &[], &[2])],
        1,
    );
    assert_eq!(i64s(&out[0]), vec![3, -3, 4]);
    let out = run_op(
        Op::Less,
        &["a", "b"],
        &[("a", a.clone())],
        vec![i64t("b", &[], &[8])],
        1,
    );
    assert_eq!(i64s(&out[0]), vec![1, 1, 0]);
    let out = run_op(
        Op::Max,
        &["a", "b", "c"],
        &[("a", a.clone())],
        vec![i64t("b", &[1], &[0]), i64t("c", &[3], &[1, 1, 10])],
        1,
    );
    assert_eq!(i64s(&out[0]), vec![7, 1, 10]);
    let out = run_op(
        Op::ReduceSum {
            axes: vec![1],
            keep_dims: false,
        },
        &["a"],
        &[("a", a.reshape((1, 3)).unwrap())],
        vec![],
        1,
    );
    assert_eq!(i64s(&out[0]), vec![9]);

    // Transpose, Squeeze, Unsqueeze, Concat, Flatten, ReduceMean
    let x: Vec<f32> = (0..6).map(|v| v as f32).collect();
    let out = run_op(
        Op::Transpose { perm: vec![1, 0] },
        &["x"],
        &[("x", ct(&x, &[2, 3]))],
        vec![],
        1,
    );
    assert_eq!(f32s(&out[0]), vec![0., 3., 1., 4., 2., 5.]);
    let out = run_op(
        Op::Unsqueeze { axes: vec![-1, 0] },
        &["x"],
        &[("x", ct(&x, &[2, 3]))],
        vec![],
        1,
    );
    assert_eq!(out[0].dims(), &[1, 2, 3, 1]);
    let out = run_op(
        Op::Squeeze { axes: vec![] },
        &["x"],
        &[("x", ct(&x, &[1, 6, 1]))],
        vec![],
        1,
    );
    assert_eq!(out[0].dims(), &[6]);
    let out = run_op(
        Op::Concat { axis: -1 },
        &["x", "y"],
        &[("x", ct(&x, &[2, 3]))],
        vec![f32t("y", &[2, 1], &[9., 9.])],
        1,
    );
    assert_eq!(f32s(&out[0]), vec![0., 1., 2., 9., 3., 4., 5., 9.]);
    let out = run_op(
        Op::Flatten { axis: 2 },
        &["x"],
        &[("x", ct(&x, &[1, 2, 3]))],
        vec![],
        1,
    );
    assert_eq!(out[0].dims(), &[2, 3]);
    let out = run_op(
        Op::Flatten { axis: -1 },
        &["x"],
        &[("x", ct(&x, &[1, 2, 3]))],
        vec![],
        1,
    );
    assert_eq!(out[0].dims(), &[2, 3]);
    let out = run_op(
        Op::ReduceMean {
            axes: vec![0],
            keep_dims: false,
        },
        &["x"],
        &[("x", ct(&x, &[2, 3]))],
        vec![],
        1,
    );
    assert_eq!(f32s(&out[0]), vec![1.5, 2.5, 3.5]);
    let out = run_op(
        Op::Shape {
            start: 1,
            end: None,
        },
        &["x"],
        &[("x", ct(&x, &[1, 2, 3]))],
        vec![],
        1,
    );
    assert_eq!(i64s(&out[0]), vec![2, 3]);
}

// ---------------------------------------------------------------------------
// Quantization.

#[test]
fn quantize_linear_rounds_half_to_even_and_saturates() {
    let xs = [2.5f32, 3.5, -2.5, -0.5, 0.5, 1.5, -129.0, 300.0, -3.5];
    let out = run_op(
        Op::QuantizeLinear {
            axis: 1,
            block_size: 0,
            out: DType::U8,
        },
        &["x", "s", "z"],
        &[("x", ct(&xs, &[9]))],
        vec![f32t("s", &[], &[1.0]), i8t("z", &[], &[0])],
        1,
    );
    assert_eq!(i64s(&out[0]), vec![2, 4, -2, 0, 0, 2, -128, 127, -4]);
    // uint8 by default, zero point 0: negatives saturate to 0
    let out = run_op(
        Op::QuantizeLinear {
            axis: 1,
            block_size: 0,
            out: DType::U8,
        },
        &["x", "s"],
        &[("x", ct(&xs, &[9]))],
        vec![f32t("s", &[], &[0.5])],
        1,
    );
    assert_eq!(i64s(&out[0]), vec![5, 7, 0, 0, 1, 3, 0, 255, 0]);
    // per axis with uint8 zero points
    let x: Vec<f32> = vec![0.0, 1.0, 2.0, -1.0, 0.3, 0.7];
    let out = run_op(
        Op::QuantizeLinear {
            axis: 0,
            block_size: 0,
            out: DType::U8,
        },
        &["x", "s", "z"],
        &[("x", ct(&x, &[2, 3]))],
        vec![f32t("s", &[2], &[0.5, 0.1]), u8t("z", &[2], &[10, 128])],
        1,
    );
    assert_eq!(i64s(&out[0]), vec![10, 12, 14, 118, 131, 135]);
}

#[test]
fn dequantize_per_axis_and_blocked() {
    // per axis 1 of [2, 3]
    let q: Vec<i8> = vec![-3, 0, 5, 127, -128, 1];
    let s = [0.5f32, 0.25, 2.0];
    let z: Vec<i8> = vec![1, -2, 0];
    let m = model(
        vec![vi("dummy", DType::F32, &[1])],
        &["y"],
        vec![node(
            "dq",
            Op::DequantizeLinear {
                axis: 1,
                block_size: 0,
            },
            &["q", "s", "z"],
            &["y"],
        )],
        vec![
            i8t("q", &[2, 3], &q),
            f32t("s", &[3], &s),
            i8t("z", &[3], &z),
        ],
    );
    let out = GraphRuntime::new(&m)
        .unwrap()
        .run(&[("dummy", ct(&[0.0], &[1]))])
        .unwrap();
    let want: Vec<f32> = (0..6)
        .map(|i| (q[i] as f32 - z[i % 3] as f32) * s[i % 3])
        .collect();
    assert_eq!(f32s(&out[0].1), want);

    // blocks of 2 along axis 1 of [2, 5]: 3 blocks, the last one short
    let q: Vec<u8> = (0..10).map(|i| (i * 23 % 256) as u8).collect();
    let s: Vec<f32> = vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6];
    let z: Vec<u8> = vec![3, 100, 7, 0, 255, 128];
    let out = run_op(
        Op::DequantizeLinear {
            axis: 1,
            block_size: 2,
        },
        &["q", "s", "z"],
        &[],
        vec![
            u8t("q", &[2, 5], &q),
            f32t("s", &[2, 3], &s),
            u8t("z", &[2, 3], &z),
        ],
        1,
    );
    let want: Vec<f32> = (0..10)
        .map(|i| {
            let (r, c) = (i / 5, i % 5);
            let b = r * 3 + c / 2;
            (q[i] as f32 - z[b] as f32) * s[b]
        })
        .collect();
    assert_close(&f32s(&out[0]), &want, 1e-6, "blocked dequantize");
}

#[test]
fn dynamic_quantize_linear_follows_onnx_formula() {
    for (seed, shift) in [(1u64, 0.0f32), (2, 3.0), (3, -5.0)] {
        let x: Vec<f32> = rnd(30, seed).iter().map(|v| v * 4.0 + shift).collect();
        let out = run_op(
            Op::DynamicQuantizeLinear,
            &["x"],
            &[("x", ct(&x, &[5, 6]))],
            vec![],
            3,
        );
        let lo = x.iter().copied().fold(0f32, f32::min);
        let hi = x.iter().copied().fold(0f32, f32::max);
        let scale = (hi - lo) / 255.0;
        let zp = (0.0 - lo / scale).clamp(0.0, 255.0).round_ties_even();
        let y: Vec<i64> = x
            .iter()
            .map(|v| ((v / scale).round_ties_even() + zp).clamp(0.0, 255.0) as i64)
            .collect();
        assert_eq!(i64s(&out[0]), y);
        assert_eq!(f32s(&out[1]), vec![scale]);
        assert_eq!(out[1].dims(), &[] as &[usize]);
        assert_eq!(i64s(&out[2]), vec![zp as i64]);
    }
}

#[test]
fn matmul_integer_with_zero_points() {
    let (m, k, n) = (3, 5, 4);
    let a: Vec<u8> = (0..2 * m * k).map(|i| (i * 37 % 256) as u8).collect();
    let b: Vec<i8> = (0..k * n).map(|i| ((i * 53) % 256) as u8 as i8).collect();
    let bz: Vec<i8> = vec![-3, 0, 7, 127];
    let m1 = model(
        vec![vi("dummy", DType::F32, &[1])],
        &["y"],
        vec![node(
            "mmi",
            Op::MatMulInteger,
            &["a", "b", "az", "bz"],
            &["y"],
        )],
        vec![
            u8t("a", &[2, m, k], &a),
            i8t("b", &[k, n], &b),
            u8t("az", &[], &[131]),
            i8t("bz", &[n], &bz),
        ],
    );
    let out = GraphRuntime::new(&m1)
        .unwrap()
        .run(&[("dummy", ct(&[0.0], &[1]))])
        .unwrap();
    let mut want = Vec::new();
    for bt in 0..2 {
        for i in 0..m {
            for j in 0..n {
                want.push(
                    (0..k)
                        .map(|p| {
                            (a[(bt * m + i) * k + p] as i64 - 131)
                                * (b[p * n + j] as i64 - bz[j] as i64)
                        })
                        .sum::<i64>(),
                );
            }
        }
    }
    assert_eq!(out[0].1.dims(), &[2, m, n]);
    assert_eq!(i64s(&out[0].1), want);

    // a's zero point per row of a 2-D a
    let az: Vec<u8> = vec![1, 200, 255];
    let out = run_op(
        Op::MatMulInteger,
        &["a", "b", "az", ""],
        &[],
        vec![
            u8t("a", &[m, k], &a[..m * k]),
            i8t("b", &[k, n], &b),
            u8t("az", &[m], &az),
        ],
        1,
    );
    let want: Vec<i64> = (0..m * n)
        .map(|ij| {
            let (i, j) = (ij / n, ij % n);
            (0..k)
                .map(|p| (a[i * k + p] as i64 - az[i] as i64) * b[p * n + j] as i64)
                .sum()
        })
        .collect();
    assert_eq!(i64s(&out[0]), want);
}

#[test]
fn matmul_nbits_matches_dequantize_then_matmul() {
    let (k, n, block) = (40usize, 3usize, 16usize);
    let blocks = k.div_ceil(block); // 3, the last one short
    let blob = block / 2;
    let packed: Vec<u8> = (0..n * blocks * blob)
        .map(|i| (i * 97 + 13) as u8)
        .collect();
    let scales: Vec<f32> = rnd(n * blocks, 71).iter().map(|v| v * 0.1).collect();
    let zp_cols = (blocks * 4).div_ceil(8); // 2 bytes per column
    let zps: Vec<u8> = (0..n * zp_cols).map(|i| (i * 59 + 7) as u8).collect();
    let a = rnd(2 * 2 * k, 72);
    for with_zp in [true, false] {
        let mut consts = vec![
            u8t("b", &[n, blocks, blob], &packed),
            f32t("s", &[n * blocks], &scales),
        ];
        let mut ins = vec!["a", "b", "s"];
        if with_zp {
            consts.push(u8t("z", &[n * zp_cols], &zps));
            ins.push("z");
        }
        let out = run_op(
            Op::MatMulNBits {
                k,
                n,
                bits: 4,
                block_size: block,
            },
            &ins,
            &[("a", ct(&a, &[2, 2, k]))],
            consts,
            1,
        );
        // dequantize by the spec: low nibble first
        let mut w = vec![0f32; n * k];
        for col in 0..n {
            for kk in 0..k {
                let (blk, j) = (kk / block, kk % block);
                let byte = packed[(col * blocks + blk) * blob + j / 2];
                let code = if j % 2 == 0 { byte & 15 } else { byte >> 4 };
                let z = if with_zp {
                    let zb = zps[col * zp_cols + blk / 2];
                    if blk % 2 == 0 {
                        zb & 15
                    } else {
                        zb >> 4
                    }
                } else {
                    8
                };
                w[col * k + kk] = (code as f32 - z as f32) * scales[col * blocks + blk];
            }
        }
        let want: Vec<f32> = a
            .chunks(k)
            .flat_map(|row| {
                (0..n)
                    .map(|col| (0..k).map(|p| row[p] * w[col * k + p]).sum::<f32>())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(out[0].dims(), &[2, 2, n]);
        assert_close(&f32s(&out[0]), &want, 1e-4, "MatMulNBits");
    }
}

// ---------------------------------------------------------------------------
// Whole graphs: folding, shapes, hooks, errors.

/// x `[1, 3, 4, 4]` → Reshape to `[x.shape[0], -1]` through the shape
/// arithmetic torch exports emit, plus a second chain on a computed value.
fn shape_chain_model() -> Model {
    let nodes = vec![
        node(
            "shape",
            Op::Shape {
                start: 0,
                end: None,
            },
            &["x"],
            &["s"],
        ),
        node("gather", Op::Gather { axis: 0 }, &["s", "zero"], &["n"]),
        node("unsq", Op::Unsqueeze { axes: vec![0] }, &["n"], &["n1"]),
        node(
            "concat",
            Op::Concat { axis: 0 },
            &["n1", "minus1"],
            &["shp"],
        ),
        node(
            "reshape",
            Op::Reshape { allow_zero: false },
            &["x", "shp"],
            &["y"],
        ),
        node("relu", Op::Relu, &["y"], &["r"]),
        node(
            "shape2",
            Op::Shape {
                start: 1,
                end: None,
            },
            &["r"],
            &["s2"],
        ),
        node(
            "reshape2",
            Op::Reshape { allow_zero: false },
            &["r", "s2"],
            &["out2"],
        ),
        node("neg", Op::Neg, &["r"], &["out"]),
    ];
    model(
        vec![vi("x", DType::F32, &[1, 3, 4, 4])],
        &["out", "out2"],
        nodes,
        vec![
            i64t("zero", &[], &[0]),
            i64t("minus1", &[1], &[-1]),
            f32t("unused_by_folds", &[1], &[1.0]),
        ],
    )
}

#[test]
fn fold_constants_removes_shape_arithmetic() {
    let mut m = shape_chain_model();
    let x = rnd(48, 9);
    let feed = [("x", ct(&x, &[1, 3, 4, 4]))];
    let before = GraphRuntime::new(&m).unwrap().run(&feed).unwrap();
    let folded = fold_constants(&mut m).unwrap();
    // Shape, Gather, Unsqueeze, Concat, and the Shape of the computed r
    assert_eq!(folded, 5);
    let g = m.graph.as_ref().unwrap();
    let ops: Vec<&str> = g.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(ops, ["reshape", "relu", "reshape2", "neg"]);
    let names: Vec<&str> = m.tensors.iter().map(|t| t.name.as_str()).collect();
    assert!(names.contains(&"shp") && names.contains(&"s2"), "{names:?}");
    assert!(
        !names.contains(&"zero") && !names.contains(&"minus1"),
        "{names:?}"
    );
    assert!(names.contains(&"unused_by_folds"));
    let shp = m.tensor("shp").unwrap();
    assert_eq!(shp.dtype, DType::I64);
    assert_eq!(shp.shape, vec![2]);
    let after = GraphRuntime::new(&m).unwrap().run(&feed).unwrap();
    assert_eq!(before.len(), after.len());
    for ((n1, t1), (n2, t2)) in before.iter().zip(&after) {
        assert_eq!(n1, n2);
        assert_eq!(t1.dims(), t2.dims());
        assert_eq!(f32s(t1), f32s(t2));
    }
    assert_eq!(after[1].1.dims(), &[48]);
    // nothing is left to fold
    assert_eq!(fold_constants(&mut m).unwrap(), 0);
}

#[test]
fn fold_constants_keeps_dynamic_shapes_and_int8_weights() {
    // a named batch dim: Shape of x's dim 0 cannot fold, its dim 1 can
    let mut inputs = vec![vi("x", DType::F32, &[0, 4])];
    inputs[0].shape[0] = Dim::Named("N".into());
    let w: Vec<i8> = (0..16).map(|i| (i * 13 % 256) as u8 as i8).collect();
    let nodes = vec![
        node(
            "s0",
            Op::Shape {
                start: 0,
                end: Some(1),
            },
            &["x"],
            &["n"],
        ),
        node(
            "s1",
            Op::Shape {
                start: 1,
                end: None,
            },
            &["x"],
            &["c"],
        ),
        node("cat", Op::Concat { axis: 0 }, &["n", "c"], &["shp"]),
        node(
            "rs",
            Op::Reshape { allow_zero: false },
            &["x", "shp"],
            &["x2"],
        ),
        node(
            "dq",
            Op::DequantizeLinear {
                axis: 1,
                block_size: 0,
            },
            &["w", "ws", "wz"],
            &["wd"],
        ),
        node("mm", Op::MatMul, &["x2", "wd"], &["y1"]),
        node("cast", Op::Cast { to: DType::F32 }, &["w"], &["wf"]),
        node("mul", Op::Mul, &["wf", "ws2"], &["wd2"]),
        node("mm2", Op::MatMul, &["y1", "wd2"], &["y"]),
        // constant, small, foldable: a QuantizeLinear of a float constant
        node(
            "q",
            Op::QuantizeLinear {
                axis: 1,
                block_size: 0,
                out: DType::I8,
            },
            &["fw", "ws"],
            &["qw"],
        ),
        node(
            "dq2",
            Op::DequantizeLinear {
                axis: 1,
                block_size: 0,
            },
            &["qw", "ws"],
            &["fwd"],
        ),
        node("add", Op::Add, &["y", "fwd"], &["out"]),
    ];
    let mut m = model(
        inputs,
        &["out"],
        nodes,
        vec![
            i8t("w", &[4, 4], &w),
            f32t("ws", &[], &[0.05]),
            i8t("wz", &[], &[2]),
            f32t("ws2", &[], &[0.1]),
            f32t("fw", &[4], &[0.1, -0.2, 0.33, 1.0]),
        ],
    );
    let x = rnd(12, 4);
    let feed = [("x", ct(&x, &[3, 4]))];
    // the runtime evaluates constant-only nodes once at load; the hook
    // still sees their outputs on every run
    let mut rt = GraphRuntime::new(&m).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    rt.set_hook(Some(Arc::new(move |name: &str, _: &CTensor| {
        s.lock().unwrap().push(name.to_string());
    })));
    let before = rt.run(&feed).unwrap();
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        ["c", "fwd", "n", "out", "qw", "shp", "wd", "wd2", "wf", "x2", "y", "y1"]
    );
    let folded = fold_constants(&mut m).unwrap();
    let g = m.graph.as_ref().unwrap();
    let names: Vec<&str> = g.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(folded, 2, "{names:?}");
    assert_eq!(
        names,
        ["s0", "cat", "rs", "dq", "mm", "cast", "mul", "mm2", "dq2", "add"]
    );
    assert_eq!(m.tensor("w").unwrap().dtype, DType::I8);
    assert_eq!(m.tensor("qw").unwrap().dtype, DType::I8);
    assert!(m.tensor("fw").is_none());
    let after = GraphRuntime::new(&m).unwrap().run(&feed).unwrap();
    assert_eq!(f32s(&before[0].1), f32s(&after[0].1));
}

/// x `[N, 3, 8, 8]` → Conv(4, 3×3, s2, p1) → Relu → MaxPool(2) →
/// GlobalAveragePool → Flatten → Gemm(10).
fn small_cnn() -> Model {
    let mut x = vi("x", DType::F32, &[0, 3, 8, 8]);
    x.shape[0] = Dim::Named("N".into());
    let nodes = vec![
        node(
            "conv",
            Op::Conv {
                window: win(&[3, 3], &[2, 2], &[1, 1, 1, 1], &[1, 1]),
                group: 1,
            },
            &["x", "w", "b"],
            &["c"],
        ),
        node("relu", Op::Relu, &["c"], &["r"]),
        node(
            "pool",
            Op::MaxPool {
                window: win(&[2, 2], &[2, 2], &[0, 0, 0, 0], &[1, 1]),
            },
            &["r"],
            &["p"],
        ),
        node("gap", Op::GlobalAveragePool, &["p"], &["g"]),
        node("flat", Op::Flatten { axis: 1 }, &["g"], &["f"]),
        node(
            "fc",
            Op::Gemm {
                alpha: 1.0,
                beta: 1.0,
                trans_a: false,
                trans_b: true,
            },
            &["f", "fw", "fb"],
            &["logits"],
        ),
    ];
    model(
        vec![x],
        &["logits"],
        nodes,
        vec![
            f32t("w", &[4, 3, 3, 3], &rnd(108, 1)),
            f32t("b", &[4], &rnd(4, 2)),
            f32t("fw", &[10, 4], &rnd(40, 3)),
            f32t("fb", &[10], &rnd(10, 4)),
        ],
    )
}

#[test]
fn infer_shapes_of_a_small_cnn() {
    let m = small_cnn();
    let shapes = infer_shapes(&m, &[("x", vec![2, 3, 8, 8])]).unwrap();
    let want: [(&str, &[usize]); 9] = [
        ("x", &[2, 3, 8, 8]),
        ("w", &[4, 3, 3, 3]),
        ("c", &[2, 4, 4, 4]),
        ("r", &[2, 4, 4, 4]),
        ("p", &[2, 4, 2, 2]),
        ("g", &[2, 4, 1, 1]),
        ("f", &[2, 4]),
        ("fw", &[10, 4]),
        ("logits", &[2, 10]),
    ];
    for (name, dims) in want {
        let (dt, got) = &shapes[name];
        assert_eq!(*dt, DType::F32, "{name}");
        assert_eq!(got.as_slice(), dims, "{name}");
    }
    assert_eq!(shapes.len(), 11);
    // the named dim must be given
    assert!(infer_shapes(&m, &[]).is_err());
}

#[test]
fn hook_sees_every_node_output() {
    let mut rt = GraphRuntime::new(&small_cnn()).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    rt.set_hook(Some(Arc::new(move |name: &str, t: &CTensor| {
        s.lock()
            .unwrap()
            .push((name.to_string(), t.dims().to_vec()));
    })));
    let out = rt.run(&[("x", ct(&rnd(192, 5), &[1, 3, 8, 8]))]).unwrap();
    assert_eq!(out[0].0, "logits");
    assert_eq!(out[0].1.dims(), &[1, 10]);
    let seen = seen.lock().unwrap();
    let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["c", "r", "p", "g", "f", "logits"]);
    assert_eq!(seen[2].1, vec![1, 4, 2, 2]);
}

#[test]
fn errors_name_the_input_or_node() {
    let rt = GraphRuntime::new(&small_cnn()).unwrap();
    let err = rt
        .run(&[("x", ct(&rnd(3 * 9 * 8, 1), &[1, 3, 9, 8]))])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("input x") && err.contains("dim 2 must be 8"),
        "{err}"
    );
    let err = rt
        .run(&[("x", ct(&rnd(4 * 64, 1), &[1, 4, 8, 8]))])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("input x") && err.contains("dim 1 must be 3"),
        "{err}"
    );
    let err = rt.run(&[]).unwrap_err().to_string();
    assert!(err.contains("missing input x"), "{err}");
    let err = rt
        .run(&[(
            "x",
            CTensor::zeros((1, 3, 8, 8), CDType::I64, &Device::Cpu).unwrap(),
        )])
        .unwrap_err()
        .to_string();
    assert!(err.contains("input x"), "{err}");

    let m = model(
        vec![vi("x", DType::F32, &[5])],
        &["y"],
        vec![node(
            "Gather_bad",
            Op::Gather { axis: 0 },
            &["x", "i"],
            &["y"],
        )],
        vec![i64t("i", &[2], &[1, 7])],
    );
    let err = GraphRuntime::new(&m)
        .unwrap()
        .run(&[("x", ct(&[0.0; 5], &[5]))])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("node \"Gather_bad\" (Gather)") && err.contains("index 7"),
        "{err}"
    );

    // bad ranks and mismatched shapes are errors, not panics
    let m = model(
        vec![vi("a", DType::F32, &[2, 3]), vi("b", DType::F32, &[4, 2])],
        &["y"],
        vec![node("mm", Op::MatMul, &["a", "b"], &["y"])],
        vec![],
    );
    let err = GraphRuntime::new(&m)
        .unwrap()
        .run(&[("a", ct(&[0.0; 6], &[2, 3])), ("b", ct(&[0.0; 8], &[4, 2]))])
        .unwrap_err()
        .to_string();
    assert!(err.contains("node \"mm\" (MatMul)"), "{err}");
    let m = model(
        vec![vi("a", DType::F32, &[2, 3])],
        &["y"],
        vec![node(
            "cv",
            Op::Conv {
                window: win(&[3, 3], &[1, 1], &[0, 0, 0, 0], &[1, 1]),
                group: 1,
            },
            &["a", "w"],
            &["y"],
        )],
        vec![f32t("w", &[1, 1, 3, 3], &[0.0; 9])],
    );
    let err = GraphRuntime::new(&m)
        .unwrap()
        .run(&[("a", ct(&[0.0; 6], &[2, 3]))])
        .unwrap_err()
        .to_string();
    assert!(err.contains("node \"cv\" (Conv)"), "{err}");
    // a node reading a value nobody produces fails at load
    let m = model(
        vec![vi("a", DType::F32, &[2])],
        &["y"],
        vec![node("n", Op::Relu, &["nope"], &["y"])],
        vec![],
    );
    let err = GraphRuntime::new(&m).unwrap_err().to_string();
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn depthwise_conv_is_differentiable_through_the_graph() {
    let (c, h, w) = (3, 6, 5);
    let wt = rnd(c * 9, 3);
    let m = model(
        vec![vi("x", DType::F32, &[1, c, h, w])],
        &["y"],
        vec![node(
            "dw",
            Op::Conv {
                window: win(&[3, 3], &[2, 2], &[1, 0, 1, 1], &[1, 1]),
                group: c,
            },
            &["x", "w"],
            &["y"],
        )],
        vec![f32t("w", &[c, 1, 3, 3], &wt)],
    );
    let x = candle_core::Var::from_vec(rnd(c * h * w, 4), (1, c, h, w), &Device::Cpu).unwrap();
    let out = GraphRuntime::new(&m)
        .unwrap()
        .run(&[("x", x.as_tensor().clone())])
        .unwrap();
    let grads = out[0]
        .1
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let got = f32s(grads.get(x.as_tensor()).unwrap());
    // candle's own grouped conv, on explicitly padded input
    let kt = CTensor::from_vec(wt, (c, 1, 3, 3), &Device::Cpu).unwrap();
    let xp = x
        .pad_with_zeros(2, 1, 1)
        .unwrap()
        .pad_with_zeros(3, 0, 1)
        .unwrap();
    let y = xp.conv2d(&kt, 0, 2, 1, c).unwrap();
    assert_close(&f32s(&out[0].1), &f32s(&y), 1e-5, "depthwise forward");
    let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let want = f32s(grads.get(x.as_tensor()).unwrap());
    assert_close(&got, &want, 1e-4, "depthwise gradient");
}

// ---------------------------------------------------------------------------
// Speed: an EfficientNet-Lite0-shaped network with random weights.

fn efficientnet_lite0_like() -> Model {
    let mut nodes = Vec::new();
    let mut tensors = Vec::new();
    let mut seed = 1000u64;
    let mut n = 0usize;
    let mut conv = |nodes: &mut Vec<Node>,
                    tensors: &mut Vec<Tensor>,
                    x: &str,
                    cin: usize,
                    cout: usize,
                    k: usize,
                    s: usize,
                    group: usize,
                    relu6: bool|
     -> String {
        n += 1;
        seed += 1;
        let (w, b, y) = (format!("w{n}"), format!("b{n}"), format!("c{n}"));
        let fan = (cin / group * k * k) as f32;
        let wv: Vec<f32> = rnd(cout * cin / group * k * k, seed)
            .iter()
            .map(|v| v / fan.sqrt())
            .collect();
        tensors.push(f32t(&w, &[cout, cin / group, k, k], &wv));
        tensors.push(f32t(&b, &[cout], &rnd(cout, seed + 7)));
        // TF "same" padding on even sizes: stride 2 pads one less, at the end
        let total = if s == 2 { k - 2 } else { k - 1 };
        let (p0, p1) = (total / 2, total - total / 2);
        nodes.push(node(
            &format!("Conv_{n}"),
            Op::Conv {
                window: win(&[k, k], &[s, s], &[p0, p0, p1, p1], &[1, 1]),
                group,
            },
            &[x, &w, &b],
            &[&y],
        ));
        if !relu6 {
            return y;
        }
        let r = format!("r{n}");
        nodes.push(node(
            &format!("Clip_{n}"),
            Op::Clip,
            &[&y, "zero", "six"],
            &[&r],
        ));
        r
    };
    tensors.push(f32t("zero", &[], &[0.0]));
    tensors.push(f32t("six", &[], &[6.0]));
    let mut x = conv(&mut nodes, &mut tensors, "input", 3, 32, 3, 2, 1, true);
    let mut cin = 32;
    // (expand, kernel, stride, out, repeats)
    let stages = [
        (1, 3, 1, 16, 1),
        (6, 3, 2, 24, 2),
        (6, 5, 2, 40, 2),
        (6, 3, 2, 80, 3),
        (6, 5, 1, 112, 3),
        (6, 5, 2, 192, 4),
        (6, 3, 1, 320, 1),
    ];
    let mut adds = 0;
    for (e, k, s, cout, reps) in stages {
        for r in 0..reps {
            let stride = if r == 0 { s } else { 1 };
            let mid = cin * e;
            let h = if e == 1 {
                x.clone()
            } else {
                conv(&mut nodes, &mut tensors, &x, cin, mid, 1, 1, 1, true)
            };
            let h = conv(&mut nodes, &mut tensors, &h, mid, mid, k, stride, mid, true);
            let h = conv(&mut nodes, &mut tensors, &h, mid, cout, 1, 1, 1, false);
            x = if stride == 1 && cin == cout {
                adds += 1;
                let y = format!("add{adds}");
                nodes.push(node(&format!("Add_{adds}"), Op::Add, &[&h, &x], &[&y]));
                y
            } else {
                h
            };
            cin = cout;
        }
    }
    let x = conv(&mut nodes, &mut tensors, &x, cin, 1280, 1, 1, 1, true);
    nodes.push(node("gap", Op::GlobalAveragePool, &[&x], &["gap"]));
    nodes.push(node("flat", Op::Flatten { axis: 1 }, &["gap"], &["flat"]));
    tensors.push(f32t(
        "fcw",
        &[1000, 1280],
        &rnd(1_280_000, 5)
            .iter()
            .map(|v| v * 0.03)
            .collect::<Vec<_>>(),
    ));
    tensors.push(f32t("fcb", &[1000], &rnd(1000, 6)));
    nodes.push(node(
        "fc",
        Op::Gemm {
            alpha: 1.0,
            beta: 1.0,
            trans_a: false,
            trans_b: true,
        },
        &["flat", "fcw", "fcb"],
        &["logits"],
    ));
    nodes.push(node(
        "softmax",
        Op::Softmax { axis: -1 },
        &["logits"],
        &["probs"],
    ));
    model(
        vec![vi("input", DType::F32, &[1, 3, 224, 224])],
        &["probs"],
        nodes,
        tensors,
    )
}

/// Prints the time per image of an EfficientNet-Lite0-shaped network (49
/// convs at 224×224); run with `--ignored --nocapture`, ideally `--release`.
#[test]
#[ignore]
fn efficientnet_lite0_shaped_speed() {
    let m = efficientnet_lite0_like();
    let convs = m
        .graph
        .as_ref()
        .unwrap()
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Conv { .. }))
        .count();
    let rt = GraphRuntime::new(&m).unwrap();
    let x = ct(&rnd(3 * 224 * 224, 1), &[1, 3, 224, 224]);
    let out = rt.run(&[("input", x.clone())]).unwrap();
    let sum: f32 = f32s(&out[0].1).iter().sum();
    assert!((sum - 1.0).abs() < 1e-3);
    let runs = 5;
    let t = std::time::Instant::now();
    for _ in 0..runs {
        rt.run(&[("input", x.clone())]).unwrap();
    }
    let per = t.elapsed() / runs;
    eprintln!("{convs} convs, {per:?} per 224×224 image");
}
