//! llama.cpp importance matrices: both formats round-trip, agree with each
//! other, and damaged or hostile files give errors naming the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use edgec_core::GgmlType;
use edgec_formats::gguf::value::{GgufValue, Metadata};
use edgec_formats::gguf::{writer, TensorPlan};
use edgec_formats::imatrix::{ImatrixEntry, ImatrixFormat, ImportanceMatrix};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Two dense layers, one 3-expert layer with an unused expert, and a dense
/// 2-matrix weight sharing one count (as llama-imatrix stores 3-D dense weights).
fn sample() -> ImportanceMatrix {
    let mut entries = BTreeMap::new();
    entries.insert(
        "blk.0.attn_q.weight".to_string(),
        ImatrixEntry::dense(vec![12.5, 0.0, 3.25, 1e-3, 7.0, 1e6, 2.0, 0.5], 512),
    );
    entries.insert(
        "blk.0.ffn_down.weight".to_string(),
        ImatrixEntry::dense((0..16).map(|i| i as f32 * 0.37 + 0.01).collect(), 384),
    );
    entries.insert(
        "blk.1.ffn_up_exps.weight".to_string(),
        ImatrixEntry {
            sum_sq: (0..12).map(|i| (i * i) as f32 + 0.5).collect(),
            counts: vec![100.0, 0.0, 412.0],
        },
    );
    entries.insert(
        "blk.1.shared.weight".to_string(),
        ImatrixEntry {
            sum_sq: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            counts: vec![256.0],
        },
    );
    ImportanceMatrix {
        entries,
        datasets: vec!["old.txt".into(), "calib.txt".into()],
        chunk_count: 4,
        chunk_size: 128,
    }
}

fn gguf_bytes(m: &ImportanceMatrix) -> Vec<u8> {
    let d = tmp();
    let p = d.path().join("m.gguf");
    m.write_gguf(&p).unwrap();
    std::fs::read(p).unwrap()
}

fn dat_bytes(m: &ImportanceMatrix) -> Vec<u8> {
    let d = tmp();
    let p = d.path().join("m.dat");
    m.write_dat(&p).unwrap();
    std::fs::read(p).unwrap()
}

fn read_bytes(bytes: &[u8], name: &str) -> Result<ImportanceMatrix, String> {
    let d = tmp();
    let p = write(d.path(), name, bytes);
    ImportanceMatrix::read(&p).map_err(|e| {
        let msg = e.to_string();
        assert!(msg.contains(name), "error does not name the file: {msg}");
        msg
    })
}

fn err_of(bytes: &[u8], name: &str) -> String {
    match read_bytes(bytes, name) {
        Ok(_) => panic!("expected an error reading {name}"),
        Err(m) => m,
    }
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= 1e-6 * x.abs().max(y.abs()).max(1e-30))
}

#[test]
fn gguf_round_trip() {
    let m = sample();
    let back = read_bytes(&gguf_bytes(&m), "m.gguf").unwrap();
    assert_eq!(back, m);
    let d = tmp();
    let p = write(d.path(), "m.gguf", &gguf_bytes(&m));
    assert_eq!(ImportanceMatrix::detect(&p).unwrap(), ImatrixFormat::Gguf);
}

#[test]
fn gguf_layout_is_llama_imatrix_layout() {
    let m = sample();
    let d = tmp();
    let p = write(d.path(), "m.gguf", &gguf_bytes(&m));
    let f = edgec_formats::gguf::reader::read(&p).unwrap();
    assert_eq!(f.version, 3);
    let keys: Vec<&str> = f.metadata.entries.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "general.type",
            "imatrix.datasets",
            "imatrix.chunk_count",
            "imatrix.chunk_size"
        ]
    );
    assert_eq!(
        f.metadata.get("imatrix.chunk_count"),
        Some(&GgufValue::U32(4))
    );
    let shapes: Vec<(&str, &[usize])> = f
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t.shape.as_slice()))
        .collect();
    assert_eq!(
        shapes,
        [
            ("blk.0.attn_q.weight.in_sum2", &[8][..]),
            ("blk.0.attn_q.weight.counts", &[1][..]),
            ("blk.0.ffn_down.weight.in_sum2", &[16][..]),
            ("blk.0.ffn_down.weight.counts", &[1][..]),
            ("blk.1.ffn_up_exps.weight.in_sum2", &[3, 4][..]),
            ("blk.1.ffn_up_exps.weight.counts", &[3, 1][..]),
            ("blk.1.shared.weight.in_sum2", &[6][..]),
            ("blk.1.shared.weight.counts", &[1][..]),
        ]
    );
}

#[test]
fn dat_round_trip() {
    let m = sample();
    let bytes = dat_bytes(&m);
    let back = read_bytes(&bytes, "m.dat").unwrap();
    // The legacy format keeps means·ncall and one ncall per entry.
    assert_eq!(back.chunk_size, 0);
    assert_eq!(back.chunk_count, 4);
    assert_eq!(back.datasets, vec!["calib.txt".to_string()]);
    assert_eq!(back.entries["blk.0.attn_q.weight"].counts, vec![4.0]); // ⌈512/128⌉
    assert_eq!(back.entries["blk.1.ffn_up_exps.weight"].counts, vec![4.0]); // ⌈412/128⌉
    for (name, e) in &m.entries {
        let got = back.importance(name).unwrap();
        assert!(close(&got, &e.mean_sq().unwrap()), "{name}: {got:?}");
    }
    // What was read writes back bit for bit, and reads back equal.
    assert_eq!(dat_bytes(&back), bytes);
    assert_eq!(read_bytes(&dat_bytes(&back), "m.dat").unwrap(), back);
    let d = tmp();
    let p = write(d.path(), "m.dat", &bytes);
    assert_eq!(ImportanceMatrix::detect(&p).unwrap(), ImatrixFormat::Dat);
}

#[test]
fn dat_values_follow_llama_scaling() {
    let m = sample();
    let back = read_bytes(&dat_bytes(&m), "m.dat").unwrap();
    // value = (sum / count) · ncall, in f32, as llama-imatrix computes it.
    let e = &back.entries["blk.0.attn_q.weight"];
    assert_eq!(e.sum_sq[0], (12.5f32 / 512.0) * 4.0);
    // An expert without data stores ncall, i.e. importance 1.
    let x = &back.entries["blk.1.ffn_up_exps.weight"];
    assert_eq!(&x.sum_sq[4..8], &[4.0; 4]);
    assert_eq!(
        &back.importance("blk.1.ffn_up_exps.weight").unwrap()[4..8],
        &[1.0; 4]
    );
}

#[test]
fn both_formats_read_back_equal() {
    let m = sample();
    let g = read_bytes(&gguf_bytes(&m), "m.gguf").unwrap();
    let l = read_bytes(&dat_bytes(&m), "m.dat").unwrap();
    assert_eq!(
        g.entries.keys().collect::<Vec<_>>(),
        l.entries.keys().collect::<Vec<_>>()
    );
    for name in g.entries.keys() {
        assert!(
            close(&g.importance(name).unwrap(), &l.importance(name).unwrap()),
            "{name}"
        );
    }
    assert_eq!(g.chunk_count, l.chunk_count);
    assert_eq!(g.datasets.last(), l.datasets.last());
    // Legacy content survives a trip through GGUF unchanged, both ways.
    let lg = read_bytes(&gguf_bytes(&l), "l.gguf").unwrap();
    assert_eq!(lg, l);
    assert_eq!(dat_bytes(&lg), dat_bytes(&m));
    // GGUF → dat → GGUF → dat is stable after the first conversion.
    assert_eq!(dat_bytes(&g), dat_bytes(&m));
}

#[test]
fn importance_is_sum_over_count() {
    let m = sample();
    let q = m.importance("blk.0.attn_q.weight").unwrap();
    let want: Vec<f32> = m.entries["blk.0.attn_q.weight"]
        .sum_sq
        .iter()
        .map(|s| s / 512.0)
        .collect();
    assert_eq!(q, want);
    let x = m.importance("blk.1.ffn_up_exps.weight").unwrap();
    let s = &m.entries["blk.1.ffn_up_exps.weight"].sum_sq;
    assert_eq!(x[1], s[1] / 100.0);
    assert_eq!(&x[4..8], &[1.0; 4]); // count 0: no data, all ones as llama-quantize does
    assert_eq!(x[9], s[9] / 412.0);
    let shared = m.importance("blk.1.shared.weight").unwrap();
    assert_eq!(shared[5], 6.0 / 256.0);
    assert!(m.importance("blk.9.attn_q.weight").is_none());
    let bad = ImatrixEntry {
        sum_sq: vec![1.0; 5],
        counts: vec![1.0, 2.0],
    };
    assert!(bad.mean_sq().is_none());
}

#[test]
fn output_is_byte_identical() {
    let m = sample();
    assert_eq!(gguf_bytes(&m), gguf_bytes(&m.clone()));
    assert_eq!(dat_bytes(&m), dat_bytes(&m.clone()));
    let d = tmp();
    let (a, b) = (d.path().join("a.gguf"), d.path().join("b.dat"));
    m.write(&a).unwrap();
    m.write(&b).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), gguf_bytes(&m));
    assert_eq!(std::fs::read(&b).unwrap(), dat_bytes(&m));
}

#[test]
fn writers_refuse_bad_contents_and_leave_nothing() {
    let d = tmp();
    let cases: Vec<(ImportanceMatrix, &str)> = vec![
        (ImportanceMatrix::default(), "no entries"),
        (
            with_entry("w", vec![1.0, f32::NAN], vec![1.0]),
            "sum of squares 1 is NaN",
        ),
        (with_entry("w", vec![1.0, -1.0], vec![1.0]), "not negative"),
        (
            with_entry("w", vec![1.0; 3], vec![1.0, 1.0]),
            "not a multiple",
        ),
        (with_entry("w", vec![1.0], vec![]), "no counts"),
        (with_entry("w", vec![1.0], vec![-2.0]), "count 0 is -2"),
        (with_entry("w", vec![1.0], vec![1.5]), "whole number"),
        (with_entry("", vec![1.0], vec![1.0]), "empty"),
    ];
    for (m, want) in cases {
        for name in ["x.gguf", "x.dat"] {
            let p = d.path().join(name);
            let msg = m.write(&p).unwrap_err().to_string();
            assert!(msg.contains(want) && msg.contains(name), "{msg}");
            assert!(!p.exists());
        }
    }
    let long = with_entry(&format!("blk.0.{}", "a".repeat(60)), vec![1.0], vec![1.0]);
    let p = d.path().join("long.gguf");
    assert!(long
        .write_gguf(&p)
        .unwrap_err()
        .to_string()
        .contains("too long"));
    let none = with_entry("w", vec![1.0, 2.0], vec![0.0]);
    let p = d.path().join("none.dat");
    assert!(none
        .write_dat(&p)
        .unwrap_err()
        .to_string()
        .contains("no entry has any data"));
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
}

fn with_entry(name: &str, sum_sq: Vec<f32>, counts: Vec<f32>) -> ImportanceMatrix {
    let mut m = ImportanceMatrix {
        chunk_size: 1,
        ..Default::default()
    };
    m.entries
        .insert(name.into(), ImatrixEntry { sum_sq, counts });
    m
}

fn small() -> ImportanceMatrix {
    let mut m = with_entry("blk.0.attn_q.weight", vec![4.0, 8.0, 0.5], vec![16.0]);
    m.entries.insert(
        "blk.0.ffn_gate_exps.weight".into(),
        ImatrixEntry {
            sum_sq: vec![1.0, 2.0, 3.0, 4.0],
            counts: vec![2.0, 0.0],
        },
    );
    m.datasets = vec!["t.txt".into()];
    m.chunk_count = 2;
    m.chunk_size = 8;
    m
}

#[test]
fn gguf_truncated_at_every_byte_is_an_error() {
    let m = small();
    let full = gguf_bytes(&m);
    for len in 0..full.len() {
        match read_bytes(&full[..len], "cut.gguf") {
            Err(_) => {}
            // Only the last tensor's alignment padding may go missing.
            Ok(back) => {
                assert!(len > full.len() - 32, "prefix of {len} bytes read");
                assert_eq!(back, m);
            }
        }
    }
}

#[test]
fn dat_truncated_at_every_byte_is_an_error() {
    let m = small();
    let full = dat_bytes(&m);
    // The trailer is 4 (chunk count) + 4 (length) + 5 ("t.txt") bytes and optional.
    let entries_end = full.len() - 13;
    for len in 0..full.len() {
        let r = read_bytes(&full[..len], "cut.dat");
        if len == entries_end || len == entries_end + 4 {
            let back = r.unwrap();
            assert!(back.datasets.is_empty());
            assert_eq!(back.chunk_count, if len == entries_end { 0 } else { 2 });
        } else {
            assert!(r.is_err(), "prefix of {len} bytes read");
        }
    }
}

/// Deterministic noise.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

#[test]
fn garbage_is_an_error() {
    for seed in 0..200u64 {
        let n = (seed as usize * 7) % 300;
        let g = noise(n, seed);
        err_of(&g, "noise.dat");
        let mut gg = b"GGUF".to_vec();
        gg.extend_from_slice(&noise(n, seed + 1000));
        err_of(&gg, "noise.gguf");
    }
    // Random flips inside valid files never panic (they may still read).
    let (g, l) = (gguf_bytes(&small()), dat_bytes(&small()));
    for seed in 0..300u64 {
        let r = noise(3, seed);
        let mut b = g.clone();
        let at = (r[0] as usize * 256 + r[1] as usize) % b.len();
        b[at] ^= r[2] | 1;
        let _ = read_bytes(&b, "flip.gguf");
        let mut b = l.clone();
        let at = (r[0] as usize * 256 + r[1] as usize) % b.len();
        b[at] ^= r[2] | 1;
        let _ = read_bytes(&b, "flip.dat");
    }
}

/// A legacy file by hand: (name, ncall, nval, values), then `tail`.
fn dat(n_entries: i32, entries: &[(&[u8], i32, i32, &[f32])], tail: &[u8]) -> Vec<u8> {
    let mut b = n_entries.to_le_bytes().to_vec();
    for (name, ncall, nval, values) in entries {
        b.extend_from_slice(&(name.len() as i32).to_le_bytes());
        b.extend_from_slice(name);
        b.extend_from_slice(&ncall.to_le_bytes());
        b.extend_from_slice(&nval.to_le_bytes());
        for v in *values {
            b.extend_from_slice(&v.to_le_bytes());
        }
    }
    b.extend_from_slice(tail);
    b
}

#[test]
fn dat_absurd_values() {
    let ok: &[(&[u8], i32, i32, &[f32])] = &[(b"w", 2, 2, &[1.0, 2.0])];
    let back = read_bytes(&dat(1, ok, &[]), "ok.dat").unwrap();
    assert_eq!(back.importance("w").unwrap(), vec![0.5, 1.0]);

    assert!(err_of(&dat(i32::MAX, ok, &[]), "a.dat").contains("more than the file can hold"));
    assert!(err_of(&dat(0, &[], &[]), "a.dat").contains("not positive"));
    assert!(err_of(&dat(-5, ok, &[]), "a.dat").contains("not positive"));
    // name length past the end
    let mut b = dat(1, ok, &[]);
    b[4..8].copy_from_slice(&i32::MAX.to_le_bytes());
    assert!(err_of(&b, "a.dat").contains("name length"));
    b[4..8].copy_from_slice(&(-1i32).to_le_bytes());
    assert!(err_of(&b, "a.dat").contains("name length"));
    // value count past the end / negative / zero
    for nval in [i32::MAX, 3, -1, 0] {
        let msg = err_of(&dat(1, &[(b"w", 2, nval, &[1.0, 2.0])], &[]), "a.dat");
        assert!(msg.contains("value count"), "{msg}");
    }
    for ncall in [0, -3] {
        let msg = err_of(&dat(1, &[(b"w", ncall, 2, &[1.0, 2.0])], &[]), "a.dat");
        assert!(msg.contains("ncall"), "{msg}");
    }
    let msg = err_of(&dat(1, &[(b"w", 2, 2, &[1.0, f32::NAN])], &[]), "a.dat");
    assert!(msg.contains("NaN") && msg.contains("entry w"), "{msg}");
    let msg = err_of(
        &dat(1, &[(b"w", 2, 2, &[1.0, f32::INFINITY])], &[]),
        "a.dat",
    );
    assert!(msg.contains("inf"), "{msg}");
    let msg = err_of(&dat(1, &[(b"w", 2, 2, &[-1.0, 0.0])], &[]), "a.dat");
    assert!(msg.contains("negative"), "{msg}");
    let twice: &[(&[u8], i32, i32, &[f32])] = &[(b"w", 1, 1, &[1.0]), (b"w", 1, 1, &[1.0])];
    assert!(err_of(&dat(2, twice, &[]), "a.dat").contains("twice"));
    assert!(err_of(&dat(1, &[(b"\xff\xfe", 1, 1, &[1.0])], &[]), "a.dat").contains("UTF-8"));
    // trailer: negative chunk count, dataset length past the end, extra bytes
    let tail = |n: i32, len: i32, rest: &[u8]| {
        [&n.to_le_bytes()[..], &len.to_le_bytes()[..], rest].concat()
    };
    assert!(err_of(&dat(1, ok, &tail(-1, 0, b"")), "a.dat").contains("chunk count"));
    assert!(err_of(&dat(1, ok, &tail(1, i32::MAX, b"x")), "a.dat").contains("dataset name length"));
    assert!(err_of(&dat(1, ok, &tail(1, -4, b"")), "a.dat").contains("dataset name length"));
    assert!(err_of(&dat(1, ok, &tail(1, 1, b"xyz")), "a.dat").contains("unexpected bytes"));
    let back = read_bytes(&dat(1, ok, &tail(3, 4, b"d.tx")), "a.dat").unwrap();
    assert_eq!(
        (back.chunk_count, back.datasets),
        (3, vec!["d.tx".to_string()])
    );
    // empty and tiny files
    err_of(b"", "a.dat");
    err_of(b"GGU", "a.dat");
}

/// A GGUF by hand through the generic writer: F32 tensors unless named in `f16`.
fn gguf(meta: &Metadata, tensors: &[(&str, Vec<usize>, Vec<f32>)], f16: &[&str]) -> Vec<u8> {
    let plans: Vec<TensorPlan> = tensors
        .iter()
        .map(|(n, s, _)| TensorPlan {
            name: n.to_string(),
            shape: s.clone(),
            ty: if f16.contains(n) {
                GgmlType::F16
            } else {
                GgmlType::F32
            },
        })
        .collect();
    let mut out = Vec::new();
    writer::write(Path::new("mem"), &mut out, meta, &plans, |i| {
        let v = &tensors[i].2;
        Ok(if f16.contains(&tensors[i].0) {
            v.iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect()
        } else {
            v.iter().flat_map(|x| x.to_le_bytes()).collect()
        })
    })
    .unwrap();
    out
}

fn imatrix_meta() -> Metadata {
    let mut m = Metadata::default();
    m.set("general.type", GgufValue::String("imatrix".into()));
    m.set("imatrix.datasets", GgufValue::string_array(["d.txt"]));
    m.set("imatrix.chunk_count", GgufValue::U32(1));
    m.set("imatrix.chunk_size", GgufValue::U32(8));
    m
}

#[test]
fn gguf_hostile_contents() {
    let meta = imatrix_meta();
    let sums = || ("w.in_sum2", vec![4], vec![1.0, 2.0, 3.0, 4.0]);
    let counts = || ("w.counts", vec![1], vec![8.0]);
    let ok = read_bytes(&gguf(&meta, &[sums(), counts()], &[]), "ok.gguf").unwrap();
    assert_eq!(ok.importance("w").unwrap(), vec![0.125, 0.25, 0.375, 0.5]);
    assert_eq!(ok.datasets, vec!["d.txt".to_string()]);

    let e = |t: &[(&str, Vec<usize>, Vec<f32>)]| err_of(&gguf(&meta, t, &[]), "bad.gguf");
    assert!(e(&[sums()]).contains("no w.counts partner"));
    assert!(e(&[counts()]).contains("no w.in_sum2 partner"));
    let m = e(&[sums(), ("w.counts", vec![3], vec![1.0, 1.0, 1.0])]);
    assert!(m.contains("not a multiple") && m.contains("entry w"), "{m}");
    assert!(e(&[("w.in_sum2", vec![2], vec![1.0, f32::NAN]), counts()]).contains("NaN"));
    assert!(e(&[sums(), ("w.counts", vec![1], vec![-8.0])]).contains("-8"));
    assert!(e(&[sums(), ("w.counts", vec![1], vec![f32::NAN])]).contains("NaN"));
    assert!(e(&[sums(), ("w.counts", vec![1], vec![2.5])]).contains("whole number"));
    assert!(e(&[
        (".in_sum2", vec![1], vec![1.0]),
        (".counts", vec![1], vec![1.0])
    ])
    .contains("empty"));
    assert!(e(&[("token_embd.weight", vec![2], vec![1.0, 2.0])])
        .contains("no importance-matrix tensors"));
    let f16 = err_of(&gguf(&meta, &[sums(), counts()], &["w.counts"]), "bad.gguf");
    assert!(f16.contains("not F32"), "{f16}");

    let mut model = imatrix_meta();
    model.set("general.type", GgufValue::String("model".into()));
    assert!(err_of(&gguf(&model, &[sums(), counts()], &[]), "bad.gguf").contains("not \"imatrix\""));
    let mut bad = imatrix_meta();
    bad.set("imatrix.datasets", GgufValue::U32(3));
    assert!(err_of(&gguf(&bad, &[sums(), counts()], &[]), "bad.gguf").contains("array of strings"));
    let mut bad = imatrix_meta();
    bad.set("imatrix.chunk_size", GgufValue::String("8".into()));
    assert!(err_of(&gguf(&bad, &[sums(), counts()], &[]), "bad.gguf").contains("not a u32"));
    let mut bad = imatrix_meta();
    bad.set("imatrix.chunk_count", GgufValue::I64(-1));
    assert!(err_of(&gguf(&bad, &[sums(), counts()], &[]), "bad.gguf").contains("not a u32"));
    // Without the optional keys it still reads (llama-quantize would refuse it).
    let bare = read_bytes(
        &gguf(&Metadata::default(), &[sums(), counts()], &[]),
        "ok.gguf",
    )
    .unwrap();
    assert_eq!(
        (bare.chunk_count, bare.chunk_size, bare.datasets.len()),
        (0, 0, 0)
    );
}

#[test]
fn output_format_follows_the_extension() {
    assert_eq!(
        ImatrixFormat::for_output(Path::new("a.dat")),
        ImatrixFormat::Dat
    );
    assert_eq!(
        ImatrixFormat::for_output(Path::new("a.DAT")),
        ImatrixFormat::Dat
    );
    assert_eq!(
        ImatrixFormat::for_output(Path::new("a.gguf")),
        ImatrixFormat::Gguf
    );
    assert_eq!(
        ImatrixFormat::for_output(Path::new("imatrix")),
        ImatrixFormat::Gguf
    );
}

/// Files written by llama-imatrix itself: EDGEC_IMATRIX_GGUF and/or
/// EDGEC_IMATRIX_DAT (from the same run, or the .dat made from the .gguf by
/// `llama-imatrix --in-file X.gguf --output-format dat`). Run by hand:
/// `EDGEC_IMATRIX_GGUF=… EDGEC_IMATRIX_DAT=… cargo test -p edgec-formats
/// --test imatrix -- --ignored`.
#[test]
#[ignore = "needs llama-imatrix output named by EDGEC_IMATRIX_GGUF / EDGEC_IMATRIX_DAT"]
fn llama_imatrix_files() {
    let g = std::env::var_os("EDGEC_IMATRIX_GGUF").map(PathBuf::from);
    let l = std::env::var_os("EDGEC_IMATRIX_DAT").map(PathBuf::from);
    assert!(
        g.is_some() || l.is_some(),
        "set EDGEC_IMATRIX_GGUF and/or EDGEC_IMATRIX_DAT"
    );
    let d = tmp();
    let mut from_gguf = None;
    if let Some(p) = &g {
        let m = ImportanceMatrix::read(p).unwrap();
        assert!(!m.entries.is_empty() && m.chunk_size > 0 && m.chunk_count > 0);
        for (name, e) in &m.entries {
            assert!(
                name.starts_with("blk.") || name == "output.weight",
                "{name}"
            );
            assert!(e.counts.iter().all(|&c| c > 0.0), "{name}: {:?}", e.counts);
        }
        // Written back it is byte for byte llama-imatrix's file.
        let out = d.path().join("again.gguf");
        m.write_gguf(&out).unwrap();
        assert!(
            std::fs::read(&out).unwrap() == std::fs::read(p).unwrap(),
            "GGUF rewrite differs"
        );
        eprintln!(
            "{}: {} entries, {} chunks of {}, datasets {:?}",
            p.display(),
            m.entries.len(),
            m.chunk_count,
            m.chunk_size,
            m.datasets
        );
        from_gguf = Some(m);
    }
    if let Some(p) = &l {
        let m = ImportanceMatrix::read(p).unwrap();
        let out = d.path().join("again.dat");
        m.write_dat(&out).unwrap();
        assert!(
            std::fs::read(&out).unwrap() == std::fs::read(p).unwrap(),
            "dat rewrite differs"
        );
        eprintln!(
            "{}: {} entries, {} chunks",
            p.display(),
            m.entries.len(),
            m.chunk_count
        );
        if let Some(gm) = &from_gguf {
            assert_eq!(
                gm.entries.keys().collect::<Vec<_>>(),
                m.entries.keys().collect::<Vec<_>>()
            );
            for name in m.entries.keys() {
                assert!(
                    close(&gm.importance(name).unwrap(), &m.importance(name).unwrap()),
                    "{name}"
                );
            }
            // Our GGUF → dat conversion is llama-imatrix's, byte for byte.
            let conv = d.path().join("conv.dat");
            gm.write_dat(&conv).unwrap();
            assert!(
                std::fs::read(&conv).unwrap() == std::fs::read(p).unwrap(),
                "GGUF → dat differs"
            );
        }
    }
}
