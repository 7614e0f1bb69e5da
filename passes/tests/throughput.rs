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
    let x: Vec<f32> = (0..ROWS).flat_map(|_| row(&mut rng, Dist::Gaussian, N)).collect();
    let imp: Vec<f32> = (0..N).map(|_| (rng.gaussian() * 1.5).exp() as f32).collect();
    println!("{:<7} {:>14} {:>18}", "type", "M weights/s", "with importance");
    println!("(per CPU-second of one thread)");
    for ty in GgmlType::ALL {
        let mut rates = Vec::new();
        for importance in [None, Some(&imp[..])] {
            let mut out = Vec::with_capacity(ty.row_bytes(N).unwrap() * ROWS);
            let t = Instant::now();
            let c = thread_cpu_seconds();
            for r in x.chunks(N) {
                quantize_row(ty, r, importance, &mut out).unwrap();
            }
            let secs = match (c, thread_cpu_seconds()) {
                (Some(a), Some(b)) if b > a => b - a,
                _ => t.elapsed().as_secs_f64(),
            };
            rates.push(x.len() as f64 / secs / 1e6);
        }
        println!("{:<7} {:>14.1} {:>18.1}", ty.name(), rates[0], rates[1]);
    }
}
