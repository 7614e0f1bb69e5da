//! The ONNX writer round-trips through the reader: graph and constants come
//! back the same, inline or in an external data file.

mod common;

use std::path::PathBuf;

use edgec_formats::onnx::{read_model, writer};

fn effnet() -> PathBuf {
    common::efficientnet()
}

fn assert_same(a: &edgec_core::Model, b: &edgec_core::Model) {
    assert_eq!(a.graph, b.graph);
    assert_eq!(a.tensors.len(), b.tensors.len());
    // the writer orders constants by first use; compare by name
    for x in &a.tensors {
        let y = b
            .tensor(&x.name)
            .unwrap_or_else(|| panic!("{} is lost", x.name));
        assert_eq!((&x.shape, x.dtype), (&y.shape, y.dtype), "{}", x.name);
        assert!(x.bytes() == y.bytes(), "{} changed", x.name);
    }
}

#[test]
fn inline_round_trip_is_identical() {
    let model = read_model(&effnet()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    writer::write_model(&model, &out).unwrap();
    assert!(!dir.path().join("m.onnx.data").exists());
    assert_same(&model, &read_model(&out).unwrap());
    // the same input gives the same bytes
    let again = dir.path().join("again.onnx");
    writer::write_model(&model, &again).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
}

#[test]
fn external_data_round_trip_is_identical() {
    let model = read_model(&effnet()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    writer::write_model_with(&model, &out, 0).unwrap();
    let data = dir.path().join("m.onnx.data");
    let weights: usize = model.tensors.iter().map(|t| t.bytes().len()).sum();
    assert!(std::fs::metadata(&data).unwrap().len() as usize >= weights);
    assert!((std::fs::metadata(&out).unwrap().len() as usize) < weights / 10);
    let back = read_model(&out).unwrap();
    assert_same(&model, &back);
    // the tensors are borrowed from the data file, not copied
    assert!(back
        .tensors
        .iter()
        .all(|t| matches!(t.data, edgec_core::TensorData::Mapped { .. })));
}

#[test]
fn a_model_without_graph_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    let err = writer::write_model(&edgec_core::Model::default(), &out).unwrap_err();
    assert!(err.to_string().contains("no graph"), "{err}");
    assert!(!out.exists());
}
