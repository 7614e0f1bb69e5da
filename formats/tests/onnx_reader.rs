//! The ONNX reader: real models import, hand-built models (encoded here with
//! prost) give the expected ops, and hostile files give errors that name the
//! file and the problem, never a panic.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use edgec_core::{DType, Dim, Model, Op, TensorData, Window};
use edgec_formats::onnx::proto::{
    attribute_type as at, data_location, data_type, AttributeProto, Dimension, DimensionValue,
    GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    TensorShapeProto, TypeProto, TypeProtoTensor, ValueInfoProto,
};
use edgec_formats::onnx::read_model;
use prost::Message;

// ---------------------------------------------------------------------------
// Building models.

fn vi(name: &str, elem: i32, dims: &[i64]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: elem,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(DimensionValue::DimValue(d)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn f32_vi(name: &str, dims: &[i64]) -> ValueInfoProto {
    vi(name, data_type::FLOAT, dims)
}

fn node(op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: format!("{op}_{}", outputs.first().copied().unwrap_or("")),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

fn a_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: at::INT,
        i,
        ..Default::default()
    }
}

fn a_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: at::INTS,
        ints: ints.to_vec(),
        ..Default::default()
    }
}

fn a_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: at::FLOAT,
        f,
        ..Default::default()
    }
}

fn a_str(name: &str, s: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: at::STRING,
        s: s.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn f32_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: data_type::FLOAT,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn i64_tensor(name: &str, dims: &[i64], values: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: data_type::INT64,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn model(
    opset: i64,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
) -> ModelProto {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        graph: Some(GraphProto {
            name: "g".into(),
            node: nodes,
            initializer: inits,
            input: inputs,
            output: outputs,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn write_bytes(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn import(m: &ModelProto) -> Model {
    let d = tempfile::tempdir().unwrap();
    let p = write_bytes(d.path(), "m.onnx", &m.encode_to_vec());
    read_model(&p).unwrap_or_else(|e| panic!("import failed: {e}"))
}

fn import_err_at(path: &Path) -> String {
    match read_model(path) {
        Ok(_) => panic!("expected an error for {}", path.display()),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with(&path.display().to_string()),
                "error does not start with the file: {msg}"
            );
            msg
        }
    }
}

fn import_err(m: &ModelProto) -> String {
    let d = tempfile::tempdir().unwrap();
    let p = write_bytes(d.path(), "bad.onnx", &m.encode_to_vec());
    import_err_at(&p)
}

fn assert_contains(msg: &str, part: &str) {
    assert!(msg.contains(part), "expected {part:?} in: {msg}");
}

fn f32s(m: &Model, name: &str) -> Vec<f32> {
    m.tensor(name)
        .unwrap_or_else(|| panic!("no tensor {name}"))
        .to_f32()
        .unwrap()
}

/// A one-node model: x [1,2,4] → op → y.
fn unary(opset: i64, n: NodeProto, inits: Vec<TensorProto>) -> ModelProto {
    model(
        opset,
        vec![n],
        inits,
        vec![f32_vi("x", &[1, 2, 4])],
        vec![f32_vi("y", &[])],
    )
}

fn ops(m: &Model) -> Vec<Op> {
    m.graph
        .as_ref()
        .unwrap()
        .nodes
        .iter()
        .map(|n| n.op.clone())
        .collect()
}

fn histogram<'a>(names: impl Iterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut h = BTreeMap::new();
    for n in names {
        *h.entry(n.to_string()).or_default() += 1;
    }
    h
}

// ---------------------------------------------------------------------------
// Real models.

#[test]
fn efficientnet_lite0_imports() {
    let path = &common::efficientnet();
    let proto = ModelProto::decode(&std::fs::read(path).unwrap()[..]).unwrap();
    let pg = proto.graph.as_ref().unwrap();
    let m = read_model(path).unwrap();
    let g = m.graph.as_ref().unwrap();
    assert_eq!(m.meta.name, "efficientnet_lite0");
    assert!(m.meta.family.is_none());

    assert_eq!(g.inputs.len(), 1);
    assert_eq!(g.inputs[0].dtype, DType::F32);
    assert_eq!(g.inputs[0].shape, [1, 3, 224, 224].map(Dim::Fixed).to_vec());
    assert_eq!(g.outputs.len(), 1);
    assert_eq!(g.outputs[0].name, "logits");
    assert_eq!(g.outputs[0].shape, [1, 1000].map(Dim::Fixed).to_vec());

    // No BatchNorm, no decomposed LayerNorm: one IR node per ONNX node.
    let want = histogram(pg.node.iter().map(|n| n.op_type.as_str()));
    let got = histogram(g.nodes.iter().map(|n| n.op.onnx_name().0));
    assert_eq!(got, want);
    assert_eq!(want["Conv"], 49);
    assert_eq!(g.nodes.len(), pg.node.len());

    // Every initializer is read by some node, borrowed from the file.
    assert_eq!(m.tensors.len(), pg.initializer.len());
    for t in &pg.initializer {
        let it = m.tensor(&t.name).unwrap();
        assert_eq!(it.bytes(), &t.raw_data[..], "{}", t.name);
        assert_eq!(
            it.shape,
            t.dims.iter().map(|&d| d as usize).collect::<Vec<_>>()
        );
        assert!(matches!(it.data, TensorData::Mapped { .. }), "{}", t.name);
    }

    // SAME_UPPER: 224 with kernel 3 stride 2 gives 112, padding 1 at the end.
    let Op::Conv { window, group } = &g.nodes[0].op else {
        panic!("first node is {:?}", g.nodes[0].op)
    };
    assert_eq!(*group, 1);
    assert_eq!(
        *window,
        Window {
            kernel: vec![3, 3],
            strides: vec![2, 2],
            pads: vec![0, 0, 1, 1],
            dilations: vec![1, 1],
        }
    );
    // With stride 1 the padding is symmetric, (k-1)/2 a side.
    for n in &g.nodes {
        if let Op::Conv { window: w, .. } = &n.op {
            if w.strides == [1, 1] {
                let p = (w.kernel[0] - 1) / 2;
                assert_eq!(w.pads, vec![p; 4], "{}", n.name);
            }
        }
    }
    let Some(Op::Gemm {
        trans_b: true,
        alpha,
        beta,
        trans_a: false,
    }) = g
        .nodes
        .iter()
        .map(|n| &n.op)
        .find(|o| matches!(o, Op::Gemm { .. }))
    else {
        panic!("no Gemm with transB")
    };
    assert_eq!((*alpha, *beta), (1.0, 1.0));
}

#[test]
fn minilm_int8_imports() {
    let Ok(p) = std::env::var("EDGEC_MINILM_INT8_ONNX") else {
        panic!(
            "EDGEC_MINILM_INT8_ONNX is not set: run scripts/setup-env.sh, then \
             `source ~/.cache/edgec/env.sh`"
        );
    };
    let path = Path::new(&p);
    let proto = ModelProto::decode(&std::fs::read(path).unwrap()[..]).unwrap();
    let pg = proto.graph.as_ref().unwrap();
    let m = read_model(path).unwrap();
    let g = m.graph.as_ref().unwrap();

    let names: Vec<_> = g.inputs.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["input_ids", "attention_mask", "token_type_ids"]);
    for v in &g.inputs {
        assert_eq!(v.dtype, DType::I64);
        assert_eq!(
            v.shape,
            vec![Dim::Named("batch".into()), Dim::Named("sequence".into())]
        );
    }
    assert_eq!(g.outputs[0].name, "last_hidden_state");
    assert_eq!(g.outputs[0].dtype, DType::F32);
    assert_eq!(
        g.outputs[0].shape,
        vec![
            Dim::Named("batch".into()),
            Dim::Named("sequence".into()),
            Dim::Fixed(384)
        ]
    );

    let want = histogram(pg.node.iter().map(|n| n.op_type.as_str()));
    let got = histogram(g.nodes.iter().map(|n| n.op.onnx_name().0));
    assert_eq!(got, want);
    assert_eq!(want["LayerNormalization"], 13);

    // Unsqueeze axes (opset 17: a constant input) resolved into the op.
    for n in g
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Unsqueeze { .. }))
    {
        assert_eq!(n.inputs.len(), 1, "{}", n.name);
        let Op::Unsqueeze { axes } = &n.op else {
            unreachable!()
        };
        assert!(!axes.is_empty());
    }
    // int8 weights, int64 and bool constants, all with the right sizes.
    let count = |d: DType| m.tensors.iter().filter(|t| t.dtype == d).count();
    assert_eq!(count(DType::I8), 38);
    assert_eq!(count(DType::Bool), 1);
    assert!(count(DType::I64) >= 10);
    for t in &pg.initializer {
        if let Some(it) = m.tensor(&t.name) {
            assert_eq!(it.bytes(), &t.raw_data[..], "{}", t.name);
        }
    }
    // Every node input is defined before it is read.
    let mut known: std::collections::HashSet<&str> =
        g.inputs.iter().map(|v| v.name.as_str()).collect();
    known.extend(m.tensors.iter().map(|t| t.name.as_str()));
    for n in &g.nodes {
        for i in n.inputs.iter().filter(|i| !i.is_empty()) {
            assert!(known.contains(i.as_str()), "{} reads {i} early", n.name);
        }
        known.extend(n.outputs.iter().map(String::as_str));
    }
}

// ---------------------------------------------------------------------------
// Hand-built models.

#[test]
fn clip_with_min_max_inputs() {
    let m = import(&unary(
        13,
        node("Clip", &["x", "lo", "hi"], &["y"], vec![]),
        vec![f32_tensor("lo", &[], &[0.0]), f32_tensor("hi", &[], &[6.0])],
    ));
    let g = m.graph.as_ref().unwrap();
    assert_eq!(g.nodes[0].op, Op::Clip);
    assert_eq!(g.nodes[0].inputs, ["x", "lo", "hi"]);
    assert_eq!(f32s(&m, "hi"), [6.0]);

    // Only a max: the min slot stays empty.
    let m = import(&unary(
        13,
        node("Clip", &["x", "", "hi"], &["y"], vec![]),
        vec![f32_tensor("hi", &[], &[6.0])],
    ));
    assert_eq!(m.graph.as_ref().unwrap().nodes[0].inputs, ["x", "", "hi"]);

    // A bound computed at run time is refused.
    let msg = import_err(&model(
        13,
        vec![
            node("Relu", &["x"], &["r"], vec![]),
            node("Clip", &["x", "r"], &["y"], vec![]),
        ],
        vec![],
        vec![f32_vi("x", &[1])],
        vec![f32_vi("y", &[1])],
    ));
    assert_contains(&msg, "the min input \"r\" must be a constant");
}

#[test]
fn unsqueeze_axes_attribute_and_input_agree() {
    let old = import(&unary(
        11,
        node("Unsqueeze", &["x"], &["y"], vec![a_ints("axes", &[0, 3])]),
        vec![],
    ));
    let new = import(&unary(
        13,
        node("Unsqueeze", &["x", "axes"], &["y"], vec![]),
        vec![i64_tensor("axes", &[2], &[0, 3])],
    ));
    let (go, gn) = (old.graph.unwrap(), new.graph.unwrap());
    assert_eq!(go.nodes[0].op, Op::Unsqueeze { axes: vec![0, 3] });
    assert_eq!(go.nodes, gn.nodes);
    assert_eq!(gn.nodes[0].inputs, ["x"]);
    // The axes constant is no longer read: not a tensor of the model.
    assert!(new.tensors.is_empty());

    // An axes attribute at opset 13 is not silently ignored.
    let msg = import_err(&unary(
        13,
        node("Unsqueeze", &["x"], &["y"], vec![a_ints("axes", &[0])]),
        vec![],
    ));
    assert_contains(&msg, "takes 2 inputs");
}

#[test]
fn reductions_resolve_axes_per_opset() {
    let mean = |opset, n, inits| {
        let m = import(&unary(opset, n, inits));
        m.graph.unwrap().nodes[0].op.clone()
    };
    let want = Op::ReduceMean {
        axes: vec![-1],
        keep_dims: false,
    };
    assert_eq!(
        mean(
            17,
            node(
                "ReduceMean",
                &["x"],
                &["y"],
                vec![a_ints("axes", &[-1]), a_int("keepdims", 0)]
            ),
            vec![]
        ),
        want
    );
    assert_eq!(
        mean(
            18,
            node(
                "ReduceMean",
                &["x", "ax"],
                &["y"],
                vec![a_int("keepdims", 0)]
            ),
            vec![i64_tensor("ax", &[1], &[-1])]
        ),
        want
    );
    // ReduceSum's axes became an input at 13; noop_with_empty_axes is Identity.
    assert_eq!(
        mean(
            13,
            node("ReduceSum", &["x", "ax"], &["y"], vec![]),
            vec![i64_tensor("ax", &[1], &[1])]
        ),
        Op::ReduceSum {
            axes: vec![1],
            keep_dims: true
        }
    );
    assert_eq!(
        mean(
            13,
            node(
                "ReduceSum",
                &["x"],
                &["y"],
                vec![a_int("noop_with_empty_axes", 1)]
            ),
            vec![]
        ),
        Op::Identity
    );
}

fn conv_model(auto_pad: &str, size: i64, stride: i64) -> ModelProto {
    let w: Vec<f32> = (0..9).map(|v| v as f32).collect();
    model(
        13,
        vec![node(
            "Conv",
            &["x", "w"],
            &["y"],
            vec![
                a_str("auto_pad", auto_pad),
                a_ints("strides", &[stride, stride]),
            ],
        )],
        vec![f32_tensor("w", &[1, 1, 3, 3], &w)],
        vec![f32_vi("x", &[1, 1, size, size])],
        vec![f32_vi("y", &[])],
    )
}

fn window_of(m: &Model) -> Window {
    match &m.graph.as_ref().unwrap().nodes[0].op {
        Op::Conv { window, .. } => window.clone(),
        op => panic!("not a conv: {op:?}"),
    }
}

#[test]
fn conv_same_padding_is_explicit() {
    // 6 wide, kernel 3, stride 2: 3 outputs need 2*2 + 3 = 7, one pad.
    let w = window_of(&import(&conv_model("SAME_UPPER", 6, 2)));
    assert_eq!(w.kernel, [3, 3], "kernel from the weight's shape");
    assert_eq!(w.pads, [0, 0, 1, 1]);
    assert_eq!(w.dilations, [1, 1]);
    assert_eq!(
        window_of(&import(&conv_model("SAME_LOWER", 6, 2))).pads,
        [1, 1, 0, 0]
    );
    // 5 wide: 3 outputs need 7, two pads, split evenly.
    assert_eq!(
        window_of(&import(&conv_model("SAME_UPPER", 5, 2))).pads,
        [1, 1, 1, 1]
    );
    assert_eq!(
        window_of(&import(&conv_model("VALID", 5, 2))).pads,
        [0, 0, 0, 0]
    );
    assert_eq!(
        window_of(&import(&conv_model("NOTSET", 5, 1))).pads,
        [0, 0, 0, 0]
    );

    // Stride 2 needs the input size; a dynamic one is an error naming the node.
    let mut m = conv_model("SAME_UPPER", 6, 2);
    let g = m.graph.as_mut().unwrap();
    g.input[0] = ValueInfoProto {
        name: "x".into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: data_type::FLOAT,
                shape: Some(TensorShapeProto {
                    dim: ["n", "c", "h", "w"]
                        .map(|p| Dimension {
                            value: Some(DimensionValue::DimParam(p.into())),
                            ..Default::default()
                        })
                        .to_vec(),
                }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let msg = import_err(&m);
    assert_contains(&msg, "node \"Conv_y\" (Conv)");
    assert_contains(&msg, "needs the input's spatial size");
}

/// x → Conv(w, b) → BatchNorm → y, with two output channels.
fn conv_bn(extra_reader: bool) -> ModelProto {
    let w = [1.0, -2.0, 0.5, 3.0, 4.0, -1.0, 2.0, 0.25f32]; // [2, 1, 2, 2]
    let mut nodes = vec![
        node("Conv", &["x", "w", "b"], &["c"], vec![]),
        node(
            "BatchNormalization",
            &["c", "s", "sh", "mu", "var"],
            &["y"],
            vec![a_float("epsilon", 0.01)],
        ),
    ];
    let mut outputs = vec![f32_vi("y", &[1, 2, 2, 2])];
    if extra_reader {
        nodes.push(node("Relu", &["c"], &["r"], vec![]));
        outputs.push(f32_vi("r", &[1, 2, 2, 2]));
    }
    model(
        13,
        nodes,
        vec![
            f32_tensor("w", &[2, 1, 2, 2], &w),
            f32_tensor("b", &[2], &[0.5, -1.0]),
            f32_tensor("s", &[2], &[3.0, -1.0]),
            f32_tensor("sh", &[2], &[0.1, 0.2]),
            f32_tensor("mu", &[2], &[1.0, -3.0]),
            f32_tensor("var", &[2], &[3.99, 0.24]),
        ],
        vec![f32_vi("x", &[1, 1, 3, 3])],
        outputs,
    )
}

#[test]
fn conv_batchnorm_folds_into_the_conv() {
    let m = import(&conv_bn(false));
    let g = m.graph.as_ref().unwrap();
    assert_eq!(g.nodes.len(), 1);
    let conv = &g.nodes[0];
    assert!(matches!(conv.op, Op::Conv { .. }));
    assert_eq!(conv.inputs[0], "x");
    assert_eq!(conv.outputs, ["y"]);
    // k = scale / sqrt(var + eps) = [3 / sqrt(4), -1 / sqrt(0.25)] = [1.5, -2];
    // w' = w * k per output channel, b' = (b - mean) * k + shift.
    let k = [1.5f32, -2.0];
    let w = [1.0, -2.0, 0.5, 3.0, 4.0, -1.0, 2.0, 0.25f32];
    let want_w: Vec<f32> = w.iter().enumerate().map(|(i, v)| v * k[i / 4]).collect();
    let want_b = [(0.5 - 1.0) * 1.5 + 0.1, (-1.0 + 3.0) * -2.0 + 0.2f32];
    let wt = m.tensor(&conv.inputs[1]).unwrap();
    assert_eq!((wt.dtype, wt.shape.clone()), (DType::F32, vec![2, 1, 2, 2]));
    let got_w = f32s(&m, &conv.inputs[1]);
    let got_b = f32s(&m, &conv.inputs[2]);
    for (a, b) in got_w.iter().zip(&want_w) {
        assert!((a - b).abs() < 1e-6, "{got_w:?} vs {want_w:?}");
    }
    for (a, b) in got_b.iter().zip(&want_b) {
        assert!((a - b).abs() < 1e-6, "{got_b:?} vs {want_b:?}");
    }
    // The originals are no longer read, so they are gone.
    for name in ["w", "b", "s", "sh", "mu", "var"] {
        assert!(m.tensor(name).is_none(), "{name} kept");
    }
}

#[test]
fn batchnorm_stays_when_the_conv_output_has_other_readers() {
    let m = import(&conv_bn(true));
    let ops = ops(&m);
    assert_eq!(ops.len(), 3);
    assert_eq!(ops[1], Op::BatchNorm { epsilon: 0.01 });
}

#[test]
fn decomposed_layernorm_is_one_op() {
    let d = 4;
    let nodes = vec![
        node("ReduceMean", &["x"], &["m"], vec![a_ints("axes", &[-1])]),
        node("Sub", &["x", "m"], &["d"], vec![]),
        node("Pow", &["d", "two"], &["p"], vec![]),
        node("ReduceMean", &["p"], &["v"], vec![a_ints("axes", &[-1])]),
        node("Add", &["v", "eps"], &["ve"], vec![]),
        node("Sqrt", &["ve"], &["s"], vec![]),
        node("Div", &["d", "s"], &["n"], vec![]),
        node("Mul", &["n", "gamma"], &["g"], vec![]),
        node("Add", &["beta", "g"], &["y"], vec![]),
        node("Relu", &["y"], &["z"], vec![]),
    ];
    let inits = vec![
        f32_tensor("two", &[], &[2.0]),
        f32_tensor("eps", &[], &[1e-6]),
        f32_tensor("gamma", &[d], &[1.0, 2.0, 3.0, 4.0]),
        f32_tensor("beta", &[d], &[0.0; 4]),
    ];
    let m = import(&model(
        17,
        nodes.clone(),
        inits.clone(),
        vec![f32_vi("x", &[2, 3, d])],
        vec![f32_vi("z", &[2, 3, d])],
    ));
    let g = m.graph.as_ref().unwrap();
    assert_eq!(g.nodes.len(), 2);
    assert_eq!(
        g.nodes[0].op,
        Op::LayerNorm {
            axis: -1,
            epsilon: 1e-6
        }
    );
    assert_eq!(g.nodes[0].inputs, ["x", "gamma", "beta"]);
    assert_eq!(g.nodes[0].outputs, ["y"]);
    assert!(m.tensor("two").is_none() && m.tensor("eps").is_none());

    // An intermediate read elsewhere blocks the fusion.
    let mut nodes2 = nodes;
    nodes2.push(node("Relu", &["s"], &["q"], vec![]));
    let m = import(&model(
        17,
        nodes2,
        inits,
        vec![f32_vi("x", &[2, 3, d])],
        vec![f32_vi("z", &[2, 3, d]), f32_vi("q", &[2, 3, 1])],
    ));
    assert_eq!(m.graph.unwrap().nodes.len(), 11);
}

#[test]
fn external_data_is_borrowed_from_the_data_file() {
    let d = tempfile::tempdir().unwrap();
    let values = [1.5f32, -2.0, 3.25, 4.0, 0.0, 7.0];
    let mut data = vec![0xAAu8; 16]; // leading bytes of another tensor
    data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::create_dir(d.path().join("weights")).unwrap();
    write_bytes(d.path(), "weights/w.bin", &data);
    let p = write_bytes(
        d.path(),
        "m.onnx",
        &external_model("weights/w.bin", 16, Some(24)).encode_to_vec(),
    );
    let m = read_model(&p).unwrap();
    let t = m.tensor("w").unwrap();
    assert_eq!(t.shape, [2, 3]);
    assert!(matches!(
        t.data,
        TensorData::Mapped {
            offset: 16,
            len: 24,
            ..
        }
    ));
    assert_eq!(t.to_f32().unwrap(), values);
    // Without a length the data runs to the end of the file.
    let p = write_bytes(
        d.path(),
        "m2.onnx",
        &external_model("./weights/w.bin", 16, None).encode_to_vec(),
    );
    assert_eq!(
        read_model(&p)
            .unwrap()
            .tensor("w")
            .unwrap()
            .to_f32()
            .unwrap(),
        values
    );
}

fn external_model(location: &str, offset: u64, length: Option<u64>) -> ModelProto {
    let mut entries = vec![
        StringStringEntryProto {
            key: "location".into(),
            value: location.into(),
        },
        StringStringEntryProto {
            key: "offset".into(),
            value: offset.to_string(),
        },
    ];
    if let Some(l) = length {
        entries.push(StringStringEntryProto {
            key: "length".into(),
            value: l.to_string(),
        });
    }
    let w = TensorProto {
        name: "w".into(),
        dims: vec![2, 3],
        data_type: data_type::FLOAT,
        data_location: data_location::EXTERNAL,
        external_data: entries,
        ..Default::default()
    };
    model(
        13,
        vec![node("MatMul", &["x", "w"], &["y"], vec![])],
        vec![w],
        vec![f32_vi("x", &[1, 2])],
        vec![f32_vi("y", &[1, 3])],
    )
}

#[test]
fn typed_fields_and_constant_nodes_become_tensors() {
    let q = TensorProto {
        name: "q".into(),
        dims: vec![3],
        data_type: data_type::INT8,
        int32_data: vec![-128, 0, 127],
        ..Default::default()
    };
    let s = TensorProto {
        name: "s".into(),
        dims: vec![],
        data_type: data_type::FLOAT,
        float_data: vec![0.5],
        ..Default::default()
    };
    let shape_const = NodeProto {
        op_type: "Constant".into(),
        output: vec!["shape".into()],
        attribute: vec![a_ints("value_ints", &[3, 1])],
        ..Default::default()
    };
    let m = import(&model(
        13,
        vec![
            node(
                "DequantizeLinear",
                &["q", "s"],
                &["deq"],
                vec![a_int("axis", 0)],
            ),
            shape_const,
            node("Reshape", &["deq", "shape"], &["y"], vec![]),
        ],
        vec![q, s],
        vec![],
        vec![f32_vi("y", &[3, 1])],
    ));
    assert_eq!(m.tensor("q").unwrap().bytes(), [0x80, 0, 0x7f]);
    assert_eq!(m.tensor("q").unwrap().dtype, DType::I8);
    assert_eq!(f32s(&m, "s"), [0.5]);
    let shape = m.tensor("shape").unwrap();
    assert_eq!((shape.dtype, shape.shape.clone()), (DType::I64, vec![2]));
    let g = m.graph.unwrap();
    assert_eq!(
        g.nodes.len(),
        2,
        "the Constant node is a tensor, not a node"
    );
    assert_eq!(
        g.nodes[0].op,
        Op::DequantizeLinear {
            axis: 0,
            block_size: 0
        }
    );
}

#[test]
fn nodes_out_of_order_are_sorted() {
    let m = import(&model(
        13,
        vec![
            node("Relu", &["a"], &["y"], vec![]),
            node("Neg", &["x"], &["a"], vec![]),
        ],
        vec![],
        vec![f32_vi("x", &[2])],
        vec![f32_vi("y", &[2])],
    ));
    assert_eq!(ops(&m), [Op::Neg, Op::Relu]);
}

#[test]
fn softmax_defaults_follow_the_opset() {
    let sm = |opset, rank: usize| {
        let dims = vec![2; rank];
        model(
            opset,
            vec![node("Softmax", &["x"], &["y"], vec![])],
            vec![],
            vec![f32_vi("x", &dims)],
            vec![f32_vi("y", &[])],
        )
    };
    assert_eq!(ops(&import(&sm(13, 3))), [Op::Softmax { axis: -1 }]);
    // Before 13 the default axis is 1: the last axis of a 2-D input...
    assert_eq!(ops(&import(&sm(11, 2))), [Op::Softmax { axis: 1 }]);
    // ...but a coerce-to-2D over two axes of a 3-D input.
    assert_contains(&import_err(&sm(11, 3)), "only when that is the last axis");
}

// ---------------------------------------------------------------------------
// Hostile and unsupported files.

#[test]
fn truncated_protobuf_is_an_error() {
    let bytes = conv_bn(false).encode_to_vec();
    let d = tempfile::tempdir().unwrap();
    for cut in [bytes.len() - 3, bytes.len() / 2, 7] {
        let p = write_bytes(d.path(), "cut.onnx", &bytes[..cut]);
        let msg = import_err_at(&p);
        assert!(
            msg.contains("truncated or malformed") || msg.contains("not an ONNX model"),
            "{msg}"
        );
    }
    let p = write_bytes(d.path(), "empty.onnx", b"");
    assert_contains(&import_err_at(&p), "empty file");
    let p = write_bytes(d.path(), "text.onnx", b"this is not a protobuf at all");
    assert_contains(&import_err_at(&p), "not an ONNX model");
}

#[test]
fn a_cycle_is_an_error_naming_a_node_on_it() {
    let msg = import_err(&model(
        13,
        vec![
            node("Relu", &["x"], &["a"], vec![]),
            node("Add", &["a", "c"], &["b"], vec![]),
            node("Neg", &["b"], &["c"], vec![]),
            node("Abs", &["c"], &["y"], vec![]),
        ],
        vec![],
        vec![f32_vi("x", &[2])],
        vec![f32_vi("y", &[2])],
    ));
    assert!(
        msg.contains("cycle through node \"Add_b\"")
            || msg.contains("cycle through node \"Neg_c\""),
        "{msg}"
    );
}

#[test]
fn undefined_and_twice_defined_values_are_errors() {
    let msg = import_err(&model(
        13,
        vec![node("Relu", &["nowhere"], &["y"], vec![])],
        vec![],
        vec![f32_vi("x", &[2])],
        vec![f32_vi("y", &[2])],
    ));
    assert_contains(&msg, "reads nowhere, which is not a graph input");
    let msg = import_err(&model(
        13,
        vec![
            node("Relu", &["x"], &["y"], vec![]),
            node("Neg", &["x"], &["y"], vec![]),
        ],
        vec![],
        vec![f32_vi("x", &[2])],
        vec![f32_vi("y", &[2])],
    ));
    assert_contains(&msg, "value y is produced twice");
    let msg = import_err(&model(
        13,
        vec![node("Relu", &["x"], &["y"], vec![])],
        vec![],
        vec![f32_vi("x", &[2])],
        vec![f32_vi("z", &[2])],
    ));
    assert_contains(&msg, "graph output z is not produced");
}

#[test]
fn external_data_may_not_leave_the_model_folder() {
    let outer = tempfile::tempdir().unwrap();
    let dir = outer.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    let secret = write_bytes(outer.path(), "x.bin", &[0u8; 64]);
    write_bytes(&dir, "inside.bin", &[0u8; 24]);
    let err_for = |location: &str| {
        let p = write_bytes(
            &dir,
            "m.onnx",
            &external_model(location, 0, Some(24)).encode_to_vec(),
        );
        import_err_at(&p)
    };
    assert_contains(&err_for("../x.bin"), "leaves the model's folder");
    assert_contains(&err_for("weights/../../x.bin"), "leaves the model's folder");
    assert_contains(&err_for("/etc/passwd"), "is an absolute path");
    assert_contains(
        &err_for("missing.bin"),
        "external data file \"missing.bin\"",
    );

    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&secret, dir.join("link.bin")).unwrap();
        assert_contains(&err_for("link.bin"), "resolves outside the model's folder");
        std::os::unix::fs::symlink(outer.path(), dir.join("up")).unwrap();
        assert_contains(&err_for("up/x.bin"), "resolves outside the model's folder");
    }
    let _ = secret;
    // A link that stays inside is fine.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(dir.join("inside.bin"), dir.join("ok.bin")).unwrap();
        let p = write_bytes(
            &dir,
            "ok.onnx",
            &external_model("ok.bin", 0, Some(24)).encode_to_vec(),
        );
        assert!(read_model(&p).is_ok());
    }
}

#[test]
fn external_data_ranges_are_checked() {
    let d = tempfile::tempdir().unwrap();
    write_bytes(d.path(), "w.bin", &[0u8; 30]);
    let err_for = |offset: u64, length: Option<u64>| {
        let p = write_bytes(
            d.path(),
            "m.onnx",
            &external_model("w.bin", offset, length).encode_to_vec(),
        );
        import_err_at(&p)
    };
    let msg = err_for(10, Some(24));
    assert_contains(
        &msg,
        "tensor w: external data offset 10 + length 24 runs past the end",
    );
    assert_contains(&err_for(u64::MAX, Some(24)), "runs past the end");
    // In range, but not the 24 bytes a 2x3 f32 tensor needs.
    assert_contains(
        &err_for(0, Some(20)),
        "needs 24 bytes, external data length is 20",
    );
    assert_contains(&err_for(0, None), "external data length is 30");
}

#[test]
fn absurd_dimensions_are_an_error_not_an_allocation() {
    let big = |dims: &[i64], data: Vec<u8>| {
        let t = TensorProto {
            name: "w".into(),
            dims: dims.to_vec(),
            data_type: data_type::FLOAT,
            raw_data: data,
            ..Default::default()
        };
        import_err(&model(
            13,
            vec![node("MatMul", &["x", "w"], &["y"], vec![])],
            vec![t],
            vec![f32_vi("x", &[1, 2])],
            vec![f32_vi("y", &[])],
        ))
    };
    assert_contains(&big(&[1 << 40, 1 << 40], vec![]), "absurd dimensions");
    assert_contains(&big(&[1 << 62], vec![0; 8]), "absurd dimensions");
    assert_contains(
        &big(&[1 << 40], vec![0; 8]),
        "needs 4398046511104 bytes, raw_data has 8",
    );
    assert_contains(&big(&[2, -3], vec![0; 8]), "negative dimension -3");
    // Typed fields are counted against the shape too.
    let t = TensorProto {
        name: "w".into(),
        dims: vec![1 << 40],
        data_type: data_type::FLOAT,
        float_data: vec![1.0; 3],
        ..Default::default()
    };
    let msg = import_err(&model(
        13,
        vec![node("MatMul", &["x", "w"], &["y"], vec![])],
        vec![t],
        vec![f32_vi("x", &[1, 2])],
        vec![f32_vi("y", &[])],
    ));
    assert_contains(&msg, "needs 1099511627776 elements, float_data has 3");
}

#[test]
fn dims_and_data_length_must_agree() {
    let mut t = f32_tensor("w", &[2, 3], &[1.0; 5]);
    let m = |t: TensorProto| {
        model(
            13,
            vec![node("MatMul", &["x", "w"], &["y"], vec![])],
            vec![t],
            vec![f32_vi("x", &[1, 2])],
            vec![f32_vi("y", &[])],
        )
    };
    assert_contains(
        &import_err(&m(t.clone())),
        "tensor w: F32 [2, 3] needs 24 bytes, raw_data has 20",
    );
    t.data_type = data_type::DOUBLE;
    assert_contains(
        &import_err(&m(t)),
        "tensor w: element type DOUBLE is not supported",
    );
    let bad_i8 = TensorProto {
        name: "w".into(),
        dims: vec![1],
        data_type: data_type::INT8,
        int32_data: vec![300],
        ..Default::default()
    };
    assert_contains(&import_err(&m(bad_i8)), "value 300 is out of range for I8");
}

#[test]
fn unknown_op_names_op_node_and_opset() {
    let mut n = node("LSTM", &["x"], &["y"], vec![]);
    n.name = "lstm_1".into();
    let msg = import_err(&unary(17, n, vec![]));
    assert_contains(
        &msg,
        "bad.onnx: unsupported op LSTM in node \"lstm_1\" (opset 17)",
    );

    let mut n = node("FusedMatMul", &["x"], &["y"], vec![]);
    n.domain = "com.microsoft".into();
    assert_contains(
        &import_err(&unary(17, n, vec![])),
        "unsupported op FusedMatMul in node \"FusedMatMul_y\" (domain com.microsoft, not imported",
    );

    let mut n = node("If", &["x"], &["y"], vec![]);
    n.name = "branch".into();
    assert_contains(
        &import_err(&unary(17, n, vec![])),
        "node \"branch\" (If): If carries subgraphs",
    );

    let msg = import_err(&unary(
        17,
        node("Relu", &["x"], &["y"], vec![a_int("alpha", 1)]),
        vec![],
    ));
    assert_contains(&msg, "attribute alpha is not supported");
    let msg = import_err(&unary(17, node("Gelu", &["x"], &["y"], vec![]), vec![]));
    assert_contains(&msg, "Gelu needs opset 20, the model declares 17");
    let msg = import_err(&unary(
        17,
        node(
            "Cast",
            &["x"],
            &["y"],
            vec![a_int("to", data_type::DOUBLE as i64)],
        ),
        vec![],
    ));
    assert_contains(&msg, "Cast to DOUBLE is not supported");
}

#[test]
fn opsets_outside_11_to_21_are_errors() {
    for opset in [9, 22] {
        let msg = import_err(&unary(opset, node("Relu", &["x"], &["y"], vec![]), vec![]));
        assert_contains(
            &msg,
            &format!("opset {opset} of the default ONNX domain is not supported (edgec reads opsets 11 to 21)"),
        );
    }
    let mut m = unary(13, node("Relu", &["x"], &["y"], vec![]), vec![]);
    m.opset_import.clear();
    assert_contains(
        &import_err(&m),
        "imports no opset of the default ONNX domain",
    );
}

#[test]
fn damaged_files_never_panic() {
    let bytes = conv_bn(true).encode_to_vec();
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("damaged.onnx");
    let mut outcomes = [0usize; 2];
    let mut check = |b: &[u8]| {
        std::fs::write(&p, b).unwrap();
        match read_model(&p) {
            Ok(_) => outcomes[0] += 1,
            Err(e) => {
                assert!(e.to_string().starts_with(&p.display().to_string()), "{e}");
                outcomes[1] += 1;
            }
        }
    };
    for cut in 0..bytes.len() {
        check(&bytes[..cut]);
    }
    for i in 0..bytes.len() {
        for x in [0x01u8, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[i] ^= x;
            check(&b);
        }
    }
    assert!(outcomes[1] > bytes.len(), "{outcomes:?}");
}

#[test]
fn matmul_nbits_from_com_microsoft() {
    let b = TensorProto {
        name: "b".into(),
        dims: vec![2, 1, 16],
        data_type: data_type::UINT8,
        raw_data: vec![0x88; 32],
        ..Default::default()
    };
    let mut n = node(
        "MatMulNBits",
        &["x", "b", "scales"],
        &["y"],
        vec![
            a_int("K", 32),
            a_int("N", 2),
            a_int("bits", 4),
            a_int("block_size", 32),
            a_int("accuracy_level", 4),
        ],
    );
    n.domain = "com.microsoft".into();
    let mut m = model(
        17,
        vec![n],
        vec![b, f32_tensor("scales", &[2], &[0.1, 0.2])],
        vec![f32_vi("x", &[1, 32])],
        vec![f32_vi("y", &[1, 2])],
    );
    m.opset_import.push(OperatorSetIdProto {
        domain: "com.microsoft".into(),
        version: 1,
    });
    assert_eq!(
        ops(&import(&m)),
        [Op::MatMulNBits {
            k: 32,
            n: 2,
            bits: 4,
            block_size: 32
        }]
    );
    // A packed weight of the wrong shape for K, N and the block size.
    m.graph.as_mut().unwrap().node[0].attribute[0] = a_int("K", 64);
    assert_contains(&import_err(&m), "need U8 [2, 2, 16]");
}

#[test]
fn pools_and_inference_only_ops() {
    // 5 wide, kernel 2, stride 2: ceil_mode gives 3 outputs, one end pad.
    let pool = |op: &str, extra: Vec<AttributeProto>| {
        let mut attrs = vec![a_ints("kernel_shape", &[2, 2]), a_ints("strides", &[2, 2])];
        attrs.extend(extra);
        model(
            13,
            vec![node(op, &["x"], &["y"], attrs)],
            vec![],
            vec![f32_vi("x", &[1, 1, 5, 5])],
            vec![f32_vi("y", &[])],
        )
    };
    let Op::MaxPool { window } = &ops(&import(&pool("MaxPool", vec![a_int("ceil_mode", 1)])))[0]
    else {
        panic!()
    };
    assert_eq!(window.pads, [0, 0, 1, 1]);
    let Op::AveragePool {
        window,
        count_include_pad: false,
    } = &ops(&import(&pool("AveragePool", vec![])))[0]
    else {
        panic!()
    };
    assert_eq!(window.pads, [0, 0, 0, 0]);
    let msg = import_err(&pool(
        "AveragePool",
        vec![a_int("ceil_mode", 1), a_int("count_include_pad", 1)],
    ));
    assert_contains(&msg, "ceil_mode with count_include_pad");

    // Dropout is the identity at inference; its unused mask is dropped.
    let m = import(&unary(
        13,
        node("Dropout", &["x"], &["y", "mask"], vec![]),
        vec![],
    ));
    let n = &m.graph.as_ref().unwrap().nodes[0];
    assert_eq!(
        (n.op.clone(), n.outputs.clone()),
        (Op::Identity, vec!["y".into()])
    );
}

#[test]
fn initializers_listed_as_inputs_are_constants() {
    let mut m = unary(
        13,
        node("Add", &["x", "bias"], &["y"], vec![]),
        vec![f32_tensor("bias", &[4], &[1.0; 4])],
    );
    m.graph.as_mut().unwrap().input.push(f32_vi("bias", &[4]));
    let m = import(&m);
    let g = m.graph.as_ref().unwrap();
    assert_eq!(g.inputs.len(), 1);
    assert_eq!(f32s(&m, "bias"), [1.0; 4]);
}
