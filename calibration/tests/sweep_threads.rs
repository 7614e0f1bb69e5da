//! The sweep's statistics do not depend on the thread count, in its own
//! test binary because `RuntimeOptions::threads` sets process-wide thread
//! settings.

use std::collections::BTreeMap;
use std::path::PathBuf;

use edgec_calibration::{sweep_linear_inputs, ChannelStats, StatsOptions, SweepOptions};
use edgec_core::runtime::RuntimeOptions;

#[test]
fn thread_count_does_not_change_the_statistics() {
    for name in ["tiny-qwen2", "tiny-bert"] {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures")
            .join(name);
        let m = edgec_formats::read_model(&dir).unwrap();
        let seqs: Vec<Vec<u32>> = (0..40u32)
            .map(|s| (0..128u32).map(|i| (i * 37 + s * 11 + 5) % 512).collect())
            .collect();
        let run = |threads| {
            let mut stats = StatsOptions {
                gram_for: vec![],
                gram_step: 2,
            };
            stats.gram_for = [
                "model.layers.0.self_attn.q_proj",
                "model.layers.1.mlp.down_proj",
                "lm_head",
                "encoder.layer.0.attention.self.query",
                "encoder.layer.1.output.dense",
            ]
            .map(String::from)
            .to_vec();
            let opts = SweepOptions {
                runtime: RuntimeOptions {
                    threads,
                    quantized_matmul: true,
                },
                ..SweepOptions::new(stats)
            };
            let mut all: BTreeMap<String, ChannelStats> = BTreeMap::new();
            sweep_linear_inputs(
                &m,
                &seqs,
                &opts,
                &mut |_, s| {
                    all.extend(s);
                    Ok(Default::default())
                },
                &|_| {},
            )
            .unwrap();
            all
        };
        let one = run(Some(1));
        assert!(one.values().any(|s| s.gram.is_some()));
        for threads in [Some(2), Some(3)] {
            let other = run(threads);
            assert_eq!(one.len(), other.len());
            for (k, s) in &one {
                let o = &other[k];
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&s.sum_sq), bits(&o.sum_sq), "{name} {k} {threads:?}");
                assert_eq!(bits(&s.sum_abs), bits(&o.sum_abs), "{name} {k} {threads:?}");
                let gbits = |g: &Option<Vec<f32>>| {
                    g.as_ref()
                        .map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
                };
                assert_eq!(gbits(&s.gram), gbits(&o.gram), "{name} {k} {threads:?}");
            }
        }
    }
}
