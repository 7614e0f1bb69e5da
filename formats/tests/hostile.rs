//! Hostile and damaged files: each gives an error that names the file and
//! the problem, never a panic.

use std::path::{Path, PathBuf};

use edgec_core::GgmlType;
use edgec_formats::gguf::value::{GgufValue, Metadata};
use edgec_formats::gguf::{reader, writer, TensorPlan};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A small valid GGUF: two F32 tensors.
fn valid_gguf() -> Vec<u8> {
    let mut meta = Metadata::default();
    meta.set("general.architecture", GgufValue::String("llama".into()));
    meta.set(
        "test.array",
        GgufValue::Array(4, vec![GgufValue::U32(1), GgufValue::U32(2)]),
    );
    let plans = vec![
        TensorPlan {
            name: "a".into(),
            shape: vec![2, 4],
            ty: GgmlType::F32,
        },
        TensorPlan {
            name: "b".into(),
            shape: vec![3],
            ty: GgmlType::F32,
        },
    ];
    let mut out = Vec::new();
    writer::write(Path::new("mem"), &mut out, &meta, &plans, |i| {
        Ok((0..plans[i].shape.iter().product::<usize>())
            .flat_map(|v| (v as f32).to_le_bytes())
            .collect())
    })
    .unwrap();
    out
}

fn gguf_err(bytes: &[u8]) -> String {
    let d = tmp();
    let p = write(d.path(), "bad.gguf", bytes);
    match reader::read(&p) {
        Ok(_) => panic!("expected an error"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("bad.gguf"),
                "error does not name the file: {msg}"
            );
            msg
        }
    }
}

#[test]
fn gguf_round_trips() {
    let d = tmp();
    let p = write(d.path(), "ok.gguf", &valid_gguf());
    let f = reader::read(&p).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.metadata.get_str("general.architecture"), Some("llama"));
    assert_eq!(f.tensors.len(), 2);
    assert_eq!(f.tensors[0].shape, vec![2, 4]);
    assert_eq!(
        f.tensors[0].to_f32().unwrap(),
        (0..8).map(|v| v as f32).collect::<Vec<_>>()
    );
    assert_eq!(f.tensors[1].to_f32().unwrap(), vec![0.0, 1.0, 2.0]);
}

#[test]
fn gguf_truncated_anywhere_is_an_error() {
    let good = valid_gguf();
    // Every prefix that cuts into the data must fail cleanly. The last 20
    // bytes are the final tensor's alignment padding, which may be absent.
    for len in (0..good.len() - 20).step_by(3) {
        gguf_err(&good[..len]);
    }
}

#[test]
fn gguf_bad_magic_and_version() {
    let mut b = valid_gguf();
    b[0] = b'X';
    assert!(gguf_err(&b).contains("not a GGUF file"));
    let mut b = valid_gguf();
    b[4] = 9;
    assert!(gguf_err(&b).contains("version 9"));
}

#[test]
fn gguf_absurd_counts() {
    let mut b = valid_gguf();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(gguf_err(&b).contains("more than the file can hold"));
}

/// Byte position of tensor `name`'s offset field in the header.
fn offset_field(bytes: &[u8], name: &str, n_dims: usize) -> usize {
    let needle = [&(name.len() as u64).to_le_bytes()[..], name.as_bytes()].concat();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .unwrap();
    at + needle.len() + 4 + 8 * n_dims + 4
}

#[test]
fn gguf_offsets_out_of_range_or_overlapping() {
    let good = valid_gguf();
    let mut b = good.clone();
    let at = offset_field(&b, "b", 1);
    b[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(gguf_err(&b).contains("past the end"));
    let mut b = good.clone();
    b[at..at + 8].copy_from_slice(&0u64.to_le_bytes());
    assert!(gguf_err(&b).contains("overlap"));
    let mut b = good;
    b[at..at + 8].copy_from_slice(&3u64.to_le_bytes());
    assert!(gguf_err(&b).contains("not aligned"));
}

#[test]
fn gguf_string_length_past_end() {
    let mut b = valid_gguf();
    // First key's length field sits right after the 24-byte preamble.
    b[24..32].copy_from_slice(&(1u64 << 50).to_le_bytes());
    assert!(gguf_err(&b).contains("past the end"));
}

fn safetensors_bytes(header: &str, data_len: usize) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend(std::iter::repeat_n(0u8, data_len));
    b
}

fn st_err(bytes: &[u8]) -> String {
    let d = tmp();
    let p = write(d.path(), "bad.safetensors", bytes);
    match edgec_formats::safetensors::read_file(&p) {
        Ok(_) => panic!("expected an error"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("bad.safetensors"),
                "error does not name the file: {msg}"
            );
            msg
        }
    }
}

#[test]
fn safetensors_damage() {
    let ok = r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#;
    let d = tmp();
    let p = write(d.path(), "ok.safetensors", &safetensors_bytes(ok, 16));
    assert_eq!(
        edgec_formats::safetensors::read_file(&p).unwrap()[0].shape,
        vec![2, 2]
    );
    // truncated data
    st_err(&safetensors_bytes(ok, 8));
    // header length past the end
    let mut b = safetensors_bytes(ok, 16);
    b[0..8].copy_from_slice(&(1u64 << 20).to_le_bytes());
    st_err(&b);
    // dtype/shape mismatch with the offsets
    st_err(&safetensors_bytes(
        r#"{"w":{"dtype":"F32","shape":[3,2],"data_offsets":[0,16]}}"#,
        16,
    ));
    // overlapping offsets
    st_err(&safetensors_bytes(
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
        12,
    ));
    // not JSON
    st_err(&safetensors_bytes("{nope", 0));
    // empty file
    st_err(b"");
}
