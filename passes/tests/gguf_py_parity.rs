//! Byte-for-byte parity with gguf-py (llama.cpp's Python package, 0.19.0):
//! our legacy and float encoders against `gguf.quants.quantize`, and our
//! decoders against `gguf.quants.dequantize` for every type, on our bytes,
//! on gguf-py's bytes and on random bytes.
//!
//! Needs `EDGEC_PY` (a Python with gguf==0.19.0 and numpy); without it these
//! tests fail: run scripts/setup-env.sh and `source ~/.cache/edgec/env.sh`.

mod common;

use common::*;
use edgec_core::GgmlType;

const N: usize = 512;
const ROWS_PER_DIST: usize = 6;

/// Rows from every parity distribution, and the distribution of each row.
fn rows() -> (Vec<f32>, Vec<Dist>) {
    let mut rng = Rng::new(0xED6E);
    let mut x = Vec::new();
    let mut which = Vec::new();
    for dist in Dist::PARITY {
        for _ in 0..ROWS_PER_DIST {
            x.extend(row(&mut rng, dist, N));
            which.push(dist);
        }
    }
    (x, which)
}

const ENCODED_BY_GGUF_PY: [GgmlType; 8] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::F16,
    GgmlType::Bf16,
    GgmlType::F32,
];

/// Where the first difference is, by row, distribution and block.
fn first_difference(ty: GgmlType, ours: &[u8], theirs: &[u8], which: &[Dist]) -> Option<String> {
    let row_bytes = ty.row_bytes(N).unwrap();
    let ts = ty.type_size();
    for (r, (a, b)) in ours
        .chunks(row_bytes)
        .zip(theirs.chunks(row_bytes))
        .enumerate()
    {
        if a != b {
            let blk = a
                .chunks(ts)
                .zip(b.chunks(ts))
                .position(|(p, q)| p != q)
                .unwrap_or(0);
            return Some(format!(
                "{ty}: row {r} ({:?}) block {blk}: ours {:02x?} gguf-py {:02x?}",
                which[r],
                &a[blk * ts..(blk + 1) * ts],
                &b[blk * ts..(blk + 1) * ts]
            ));
        }
    }
    None
}

#[test]
fn legacy_and_float_bytes_equal_gguf_py() {
    let (x, which) = rows();
    let dir = scratch_dir("parity-q");
    let src = dir.join("x.f32");
    write_f32(&src, &x);
    let jobs: Vec<Job> = ENCODED_BY_GGUF_PY
        .iter()
        .map(|&ty| Job::Quant {
            ty,
            n: N,
            src: src.clone(),
            dst: dir.join(format!("{}.bin", ty.name())),
        })
        .collect();
    run_gguf_py(&dir, &jobs);
    let mut failures = Vec::new();
    for ty in ENCODED_BY_GGUF_PY {
        let theirs = std::fs::read(dir.join(format!("{}.bin", ty.name()))).unwrap();
        let ours = encode(ty, &x, N, None);
        assert_eq!(ours.len(), theirs.len(), "{ty}: byte count");
        if let Some(d) = first_difference(ty, &ours, &theirs, &which) {
            failures.push(d);
        } else {
            println!("{ty}: {} bytes identical to gguf-py", ours.len());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        failures.is_empty(),
        "differences from gguf-py:\n{}",
        failures.join("\n")
    );
}

#[test]
fn decoders_equal_gguf_py_dequantize() {
    let (x, _) = rows();
    let dir = scratch_dir("parity-dq");
    let src = dir.join("x.f32");
    write_f32(&src, &x);
    let mut rng = Rng::new(0xB17E5);
    // (label, type, bytes file, rows of N)
    let mut cases: Vec<(String, GgmlType, std::path::PathBuf)> = Vec::new();
    let mut jobs = Vec::new();
    for ty in GgmlType::ALL {
        // Our encoding of the test rows.
        let ours = dir.join(format!("ours-{}.bin", ty.name()));
        std::fs::write(&ours, encode(ty, &x, N, None)).unwrap();
        cases.push((format!("{ty} on our bytes"), ty, ours));
        // Random bytes: arbitrary codes, scales of every magnitude, NaN and Inf.
        let random = dir.join(format!("random-{}.bin", ty.name()));
        std::fs::write(&random, rng.bytes(ty.row_bytes(N).unwrap() * 16)).unwrap();
        cases.push((format!("{ty} on random bytes"), ty, random));
        // gguf-py's own encoding, where it has one.
        if ENCODED_BY_GGUF_PY.contains(&ty) {
            let theirs = dir.join(format!("theirs-{}.bin", ty.name()));
            jobs.push(Job::Quant {
                ty,
                n: N,
                src: src.clone(),
                dst: theirs.clone(),
            });
            cases.push((format!("{ty} on gguf-py's bytes"), ty, theirs));
        }
    }
    for (i, (_, ty, bytes)) in cases.iter().enumerate() {
        jobs.push(Job::Dequant {
            ty: *ty,
            n: N,
            src: bytes.clone(),
            dst: dir.join(format!("deq-{i}.f32")),
        });
    }
    run_gguf_py(&dir, &jobs);
    let mut failures = Vec::new();
    for (i, (label, ty, bytes)) in cases.iter().enumerate() {
        let theirs = read_f32(&dir.join(format!("deq-{i}.f32")));
        let bytes = std::fs::read(bytes).unwrap();
        let ours = decode(*ty, &bytes, theirs.len());
        match ours
            .iter()
            .zip(&theirs)
            .position(|(&a, &b)| !same_f32(a, b))
        {
            None => println!("{label}: {} values identical", ours.len()),
            Some(k) => failures.push(format!(
                "{label}: element {k}: ours {} ({:#010x}) gguf-py {} ({:#010x})",
                ours[k],
                ours[k].to_bits(),
                theirs[k],
                theirs[k].to_bits()
            )),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        failures.is_empty(),
        "decoders differ from gguf-py:\n{}",
        failures.join("\n")
    );
}
