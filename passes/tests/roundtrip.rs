//! Encode → decode round trips for every type: error bounds, zero rows,
//! non-finite inputs, determinism, importance weighting and argument errors.

mod common;

use common::*;
use edgec_core::GgmlType;
use edgec_passes::ggml_quant::{quantize_row, QuantError};

const N: usize = 2048;

/// Upper bounds on RMSE / RMS of Gaussian rows, about 10% above what the
/// encoders reach (printed by the test), so a regression in a search fails.
fn bound(ty: GgmlType) -> f64 {
    match ty {
        GgmlType::F32 => 0.0,
        GgmlType::F16 => 2.4e-4,
        GgmlType::Bf16 => 1.9e-3,
        GgmlType::Q8_0 => 0.0059,
        GgmlType::Q6K => 0.0180,
        GgmlType::Q5_1 => 0.042,
        GgmlType::Q5_0 => 0.047,
        GgmlType::Q5K => 0.038,
        GgmlType::Q4_1 => 0.086,
        GgmlType::Q4_0 => 0.094,
        GgmlType::Q4K => 0.077,
        GgmlType::Iq4Nl => 0.081,
        GgmlType::Q3K => 0.158,
        GgmlType::Q2K => 0.287,
    }
}

#[test]
fn roundtrip_error_within_bounds() {
    let mut rng = Rng::new(11);
    let x: Vec<f32> = (0..8)
        .flat_map(|_| row(&mut rng, Dist::Gaussian, N))
        .collect();
    let rms_x = rms(&x);
    let mut failures = Vec::new();
    for ty in GgmlType::ALL {
        let bytes = encode(ty, &x, N, None);
        assert_eq!(
            bytes.len(),
            ty.row_bytes(N).unwrap() * 8,
            "{ty}: byte count"
        );
        let y = decode(ty, &bytes, x.len());
        let rel = mse(&x, &y).sqrt() / rms_x;
        println!("{:<7} rmse/rms {rel:.5} (bound {})", ty.name(), bound(ty));
        if rel > bound(ty) || rel.is_nan() {
            failures.push(format!("{ty}: {rel} > {}", bound(ty)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_distribution_roundtrips_sanely() {
    // Looser: the relative error stays below a per-type ceiling on every
    // distribution that has something to quantize.
    let mut rng = Rng::new(12);
    for dist in Dist::PARITY {
        let x: Vec<f32> = (0..4).flat_map(|_| row(&mut rng, dist, 512)).collect();
        for ty in GgmlType::ALL {
            let y = decode(ty, &encode(ty, &x, 512, None), x.len());
            if dist == Dist::Zeros {
                assert!(y.iter().all(|&v| v == 0.0), "{ty}: zeros decode to zeros");
                continue;
            }
            if matches!(dist, Dist::Tiny | Dist::Huge)
                && !matches!(ty, GgmlType::F32 | GgmlType::Bf16)
            {
                // f16 (and f16 scales) underflow at 1e-8 and overflow at 1e5:
                // only finiteness of the decode of tiny rows is guaranteed.
                if dist == Dist::Tiny {
                    assert!(y.iter().all(|v| v.is_finite()), "{ty} {dist:?}");
                }
                continue;
            }
            let rel = mse(&x, &y).sqrt() / rms(&x);
            let ceiling = match dist {
                // One value 1000× the rest: its block's others round to ~0.
                Dist::Outlier => 1.0,
                _ => 3.0 * bound(ty) + 1e-3,
            };
            assert!(rel <= ceiling, "{ty} {dist:?}: rmse/rms {rel} > {ceiling}");
        }
    }
}

#[test]
fn zero_rows_encode_to_zero_scales() {
    let x = vec![0f32; 512];
    for ty in GgmlType::ALL {
        let bytes = encode(ty, &x, 512, None);
        let y = decode(ty, &bytes, x.len());
        assert!(y.iter().all(|&v| v == 0.0), "{ty}");
        // Every f16 scale field decodes to zero (the reference writes −0.0 for Q4_0/Q5_0).
        let ts = ty.type_size();
        let scale_at: &[usize] = match ty {
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::Iq4Nl => &[0],
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
            GgmlType::Q2K => &[80, 82],
            GgmlType::Q3K => &[108],
            GgmlType::Q6K => &[208],
            _ => &[],
        };
        for b in bytes.chunks(ts) {
            for &at in scale_at {
                let d = half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32();
                assert_eq!(d, 0.0, "{ty}: scale at byte {at}");
            }
        }
    }
}

#[test]
fn non_finite_inputs_do_not_panic() {
    let specials = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        -1e-45,
        0.0,
        -0.0,
        1.0,
    ];
    let mut rng = Rng::new(13);
    let mut rows: Vec<Vec<f32>> = specials.iter().map(|&v| vec![v; 256]).collect();
    for _ in 0..20 {
        let mut r = row(&mut rng, Dist::Gaussian, 256);
        for _ in 0..(rng.next_u64() % 8 + 1) {
            let i = (rng.next_u64() % 256) as usize;
            r[i] = specials[(rng.next_u64() % specials.len() as u64) as usize];
        }
        rows.push(r);
    }
    let bad_importance: Vec<Vec<f32>> = vec![
        vec![0.0; 256],
        vec![f32::NAN; 256],
        vec![-1.0; 256],
        vec![f32::INFINITY; 256],
        (0..256)
            .map(|i| if i % 3 == 0 { f32::NAN } else { i as f32 })
            .collect(),
    ];
    for ty in GgmlType::ALL {
        for r in &rows {
            for imp in std::iter::once(None).chain(bad_importance.iter().map(|v| Some(&v[..]))) {
                let mut out = Vec::new();
                quantize_row(ty, r, imp, &mut out).unwrap();
                assert_eq!(out.len(), ty.row_bytes(256).unwrap(), "{ty}");
                let _ = decode(ty, &out, 256);
            }
        }
    }
}

#[test]
fn encoding_is_deterministic_across_threads() {
    let mut rng = Rng::new(14);
    let x: Vec<f32> = (0..4)
        .flat_map(|_| row(&mut rng, Dist::StudentT, 1024))
        .collect();
    let imp: Vec<f32> = (0..1024)
        .map(|_| (rng.gaussian() * 2.0).exp() as f32)
        .collect();
    for ty in GgmlType::ALL {
        for importance in [None, Some(&imp[..])] {
            let first = encode(ty, &x, 1024, importance);
            let again: Vec<Vec<u8>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..3)
                    .map(|_| s.spawn(|| encode(ty, &x, 1024, importance)))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for a in again {
                assert_eq!(a, first, "{ty}");
            }
            // Rows encoded one by one equal the matrix encoded at once.
            let mut by_row = Vec::new();
            for r in x.chunks(1024) {
                quantize_row(ty, r, importance, &mut by_row).unwrap();
            }
            assert_eq!(by_row, first, "{ty}");
        }
    }
}

#[test]
fn importance_lowers_the_weighted_error() {
    // Importance varying over three orders of magnitude across columns, as
    // activation statistics do.
    let mut rng = Rng::new(15);
    let n = 1024;
    let x: Vec<f32> = (0..16)
        .flat_map(|_| row(&mut rng, Dist::Gaussian, n))
        .collect();
    let imp: Vec<f32> = (0..n)
        .map(|_| (rng.gaussian() * 1.5).exp() as f32)
        .collect();
    println!(
        "{:<7} {:>14} {:>14} {:>8}",
        "type", "wmse plain", "wmse weighted", "ratio"
    );
    for ty in GgmlType::ALL.into_iter().filter(|t| t.is_quantized()) {
        let plain = decode(ty, &encode(ty, &x, n, None), x.len());
        let weighted = decode(ty, &encode(ty, &x, n, Some(&imp)), x.len());
        let (a, b) = (
            weighted_mse(&x, &plain, &imp),
            weighted_mse(&x, &weighted, &imp),
        );
        println!("{:<7} {a:>14.4e} {b:>14.4e} {:>8.4}", ty.name(), b / a);
        assert!(
            b < a,
            "{ty}: importance did not lower the weighted error ({b} >= {a})"
        );
    }
}

#[test]
fn bad_arguments_are_errors() {
    for ty in GgmlType::ALL.into_iter().filter(|t| t.block_size() > 1) {
        let mut out = Vec::new();
        let x = vec![0.5f32; ty.block_size() + 1];
        assert!(matches!(
            quantize_row(ty, &x, None, &mut out),
            Err(QuantError::RowLength { .. })
        ));
        let x = vec![0.5f32; ty.block_size()];
        assert!(matches!(
            quantize_row(ty, &x, Some(&[1.0; 3]), &mut out),
            Err(QuantError::ImportanceLength { want, got: 3 }) if want == ty.block_size()
        ));
        assert!(out.is_empty(), "{ty}: nothing written on error");
    }
    // An empty row is fine and writes nothing.
    let mut out = Vec::new();
    quantize_row(GgmlType::Q4K, &[], None, &mut out).unwrap();
    assert!(out.is_empty());
}

#[test]
fn appends_to_existing_output() {
    let mut rng = Rng::new(16);
    let x = row(&mut rng, Dist::Gaussian, 256);
    for ty in GgmlType::ALL {
        let mut out = vec![0xAB; 7];
        quantize_row(ty, &x, None, &mut out).unwrap();
        assert_eq!(&out[..7], &[0xAB; 7]);
        assert_eq!(out[7..], encode(ty, &x, 256, None)[..], "{ty}");
    }
}
