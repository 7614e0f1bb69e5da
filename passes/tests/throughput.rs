//! Encoder throughput, single thread. Meaningful in release only:
//!
//!     cargo test --release -p edgec-passes --test throughput -- --ignored --nocapture

mod common;

use std::time::Instant;

use common::*;
use edgec_core::GgmlType;
use edgec_passes::ggml_quant::quantize_row;

/// CPU time of this thread in seconds (Linux), so a busy machine does not
/// skew the rates; wall time elsewhere.
fn thread_cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e9)
}

#[test]
#[ignore = "a measurement: run in release with --ignored --nocapture"]
fn encode_throughput() {
    const N: usize = 4096;
    const ROWS: usize = 256;
    let mut rng = Rng::new(5);
    let x: Vec<f32> = (0..ROWS)
        .flat_map(|_| row(&mut rng, Dist::Gaussian, N))
        .collect();
    let imp: Vec<f32> = (0..N)
        .map(|_| (rng.gaussian() * 1.5).exp() as f32)
        .collect();
    println!(
        "{:<7} {:>14} {:>18}",
        "type", "M weights/s", "with importance"
    );
    println!("(per CPU-second of one thread)");
    for ty in GgmlType::ALL {
        let mut rates = Vec::new();
        for importance in [None, Some(&imp[..])] {
            // Repeat until enough CPU time has passed to measure (the
            // scheduler's accounting is updated at ticks).
            let mut out = Vec::with_capacity(ty.row_bytes(N).unwrap() * ROWS);
            let t = Instant::now();
            let c = thread_cpu_seconds();
            let mut done = 0usize;
            let secs = loop {
                out.clear();
                for r in x.chunks(N) {
                    quantize_row(ty, r, importance, &mut out).unwrap();
                }
                done += x.len();
                let secs = match (c, thread_cpu_seconds()) {
                    (Some(a), Some(b)) => b - a,
                    _ => t.elapsed().as_secs_f64(),
                };
                if secs > 0.25 {
                    break secs;
                }
            };
            rates.push(done as f64 / secs / 1e6);
        }
        println!("{:<7} {:>14.1} {:>18.1}", ty.name(), rates[0], rates[1]);
    }
}

/// A model-sized job on all threads (rayon), as the CLI runs it: reports
/// the wall time extrapolated to 135M weights (SmolLM2-135M) for Q4_K.
#[test]
#[ignore = "a measurement: run in release with --ignored --nocapture"]
fn q4_k_model_sized_parallel() {
    use rayon::prelude::*;
    const N: usize = 4096;
    const ROWS: usize = 8192; // 33.5M weights
    let mut rng = Rng::new(6);
    let x: Vec<f32> = (0..ROWS)
        .flat_map(|_| row(&mut rng, Dist::Gaussian, N))
        .collect();
    for ty in [GgmlType::Q4K, GgmlType::Q6K, GgmlType::Q8_0] {
        let t = Instant::now();
        let rows: Vec<Vec<u8>> = x
            .par_chunks(N)
            .map(|r| {
                let mut out = Vec::new();
                quantize_row(ty, r, None, &mut out).unwrap();
                out
            })
            .collect();
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(rows.len(), ROWS);
        println!(
            "{ty}: {} threads, {:.1} M weights/s wall, 135M weights in {:.2} s",
            rayon::current_num_threads(),
            x.len() as f64 / secs / 1e6,
            135e6 * secs / x.len() as f64
        );
    }
}
