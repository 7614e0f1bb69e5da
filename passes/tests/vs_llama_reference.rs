//! Our k-quant and IQ4_NL searches against llama.cpp's reference quantizers
//! (what `llama-quantize` does without an importance matrix), ported in
//! `common/llama_ref.rs`: ours must reach a lower (or equal) squared error
//! on Gaussian and heavy-tailed rows.

mod common;

use common::*;
use edgec_core::GgmlType;

const SEARCHED: [GgmlType; 6] = [
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::Iq4Nl,
];

const N: usize = 4096;
const ROWS: usize = 16;

fn matrix(dist: Dist, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..ROWS).flat_map(|_| row(&mut rng, dist, N)).collect()
}

#[test]
fn searches_beat_llama_reference() {
    let mut worse = Vec::new();
    println!(
        "{:<7} {:<10} {:>12} {:>12} {:>8}",
        "type", "rows", "mse ours", "mse llama", "ratio"
    );
    let cases = [
        ("Gaussian", matrix(Dist::Gaussian, 1)),
        ("StudentT", matrix(Dist::StudentT, 2)),
        ("Laplace", matrix(Dist::Laplace, 3)),
        // Weights that went through Q4_1 already (as a model dequantized
        // from a Q4_1 GGUF): 16 levels per 32 values.
        ("ViaQ4_1", {
            let x = matrix(Dist::StudentT, 4);
            decode(
                GgmlType::Q4_1,
                &encode(GgmlType::Q4_1, &x, N, None),
                x.len(),
            )
        }),
    ];
    for (dist, x) in cases {
        for ty in SEARCHED {
            let ours = decode(ty, &encode(ty, &x, N, None), x.len());
            let theirs = decode(ty, &common::llama_ref::quantize(ty, &x), x.len());
            let (a, b) = (mse(&x, &ours), mse(&x, &theirs));
            let ratio = a / b;
            println!(
                "{:<7} {dist:<10} {a:>12.4e} {b:>12.4e} {ratio:>8.4}",
                ty.name()
            );
            if a > b || a.is_nan() {
                worse.push(format!("{ty} {dist}: ours {a:e} > llama {b:e}"));
            }
        }
    }
    assert!(
        worse.is_empty(),
        "worse than llama.cpp's reference:\n{}",
        worse.join("\n")
    );
}

/// Checks the port in `common/llama_ref.rs` against llama.cpp itself, through
/// the wrapper in `llama_ref_harness.c` (see its header for how to build it),
/// named by `EDGEC_LLAMA_REF`.
#[test]
fn reference_port_matches_llama_cpp() {
    let bin = std::env::var_os("EDGEC_LLAMA_REF").expect(
        "EDGEC_LLAMA_REF (llama.cpp's reference quantizers, built by scripts/setup-env.sh) is not set: \
         run scripts/setup-env.sh and `source ~/.cache/edgec/env.sh`",
    );
    let dir = scratch_dir("llama-ref");
    let mut rng = Rng::new(77);
    let mut x = Vec::new();
    for dist in Dist::PARITY {
        for _ in 0..4 {
            x.extend(row(&mut rng, dist, 1024));
        }
    }
    let src = dir.join("x.f32");
    write_f32(&src, &x);
    for ty in SEARCHED {
        let dst = dir.join(format!("{}.bin", ty.name()));
        let status = std::process::Command::new(&bin)
            .args([ty.id().to_string(), "1024".to_string()])
            .arg(&src)
            .arg(&dst)
            .status()
            .unwrap();
        assert!(status.success(), "{ty}: harness failed");
        let theirs = std::fs::read(&dst).unwrap();
        let ours = common::llama_ref::quantize(ty, &x);
        assert_eq!(ours.len(), theirs.len(), "{ty}: length");
        let ts = ty.type_size();
        if let Some(b) = ours
            .chunks(ts)
            .zip(theirs.chunks(ts))
            .position(|(a, b)| a != b)
        {
            panic!(
                "{ty}: block {b} (row {}) differs:\n port  {:02x?}\n llama {:02x?}",
                b * ty.block_size() / 1024,
                &ours[b * ts..(b + 1) * ts],
                &theirs[b * ts..(b + 1) * ts]
            );
        }
        println!("{ty}: port identical to llama.cpp ({} bytes)", ours.len());
    }

    // With an importance matrix llama.cpp takes other paths (make_qkx3_quants,
    // make_qp_quants ...): compare the importance-weighted error, ours
    // against llama.cpp's, on rows that share one importance vector.
    let n = 1024;
    let imp: Vec<f32> = (0..n)
        .map(|_| (rng.gaussian() * 1.5).exp() as f32)
        .collect();
    let imp_path = dir.join("imatrix.f32");
    write_f32(&imp_path, &imp);
    println!(
        "{:<7} {:<10} {:>8}",
        "type", "rows", "wmse ours/llama (imatrix)"
    );
    for dist in [Dist::Gaussian, Dist::StudentT] {
        let x: Vec<f32> = (0..32).flat_map(|_| row(&mut rng, dist, n)).collect();
        write_f32(&src, &x);
        for ty in SEARCHED {
            let dst = dir.join(format!("imp-{}.bin", ty.name()));
            let status = std::process::Command::new(&bin)
                .args([ty.id().to_string(), n.to_string()])
                .arg(&src)
                .arg(&dst)
                .arg(&imp_path)
                .status()
                .unwrap();
            assert!(status.success(), "{ty}: harness failed");
            let theirs = decode(ty, &std::fs::read(&dst).unwrap(), x.len());
            let ours = decode(ty, &encode(ty, &x, n, Some(&imp)), x.len());
            let ratio = weighted_mse(&x, &ours, &imp) / weighted_mse(&x, &theirs, &imp);
            println!("{:<7} {:<10} {ratio:>8.4}", ty.name(), format!("{dist:?}"));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
