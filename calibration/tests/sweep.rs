//! The sequential sweep against the one-shot statistics on the tiny
//! fixtures: the same statistics, replaced weights propagated, spilling.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use edgec_calibration::{
    collect_linear_inputs, sweep_linear_inputs, sweep_units, CallbackError, ChannelStats,
    Replacements, StatsOptions, SweepError, SweepOptions, SweepReport,
};
use edgec_core::runtime::{Part, Runtime, RuntimeOptions};
use edgec_core::{Family, Model};

type Stats = BTreeMap<String, ChannelStats>;

fn fixture(name: &str) -> Model {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name);
    edgec_formats::read_model(&dir).unwrap_or_else(|e| panic!("reading {name}: {e}"))
}

fn family(m: &Model) -> &Family {
    m.meta.family.as_ref().unwrap()
}

/// `n` sequences of `len` tokens.
fn seqs(m: &Model, n: usize, len: usize) -> Vec<Vec<u32>> {
    let v = match family(m) {
        Family::Llama(p) => p.vocab_size,
        Family::Bert(p) => p.vocab_size,
    } as u32;
    (0..n as u32)
        .map(|s| {
            (0..len as u32)
                .map(|i| ((i + 7 * s).wrapping_mul(2_654_435_761) >> 9) % v)
                .collect()
        })
        .collect()
}

fn one_shot(m: &Model, seqs: &[Vec<u32>], opts: &StatsOptions) -> Stats {
    let mut rt = Runtime::new(m, &RuntimeOptions::default()).unwrap();
    collect_linear_inputs(&mut rt, seqs, opts, &|_| {}).unwrap()
}

/// Every linear layer's module path, with a Gram matrix for each, every
/// third token.
fn every_gram(m: &Model, seqs: &[Vec<u32>]) -> StatsOptions {
    let keys = one_shot(
        m,
        &seqs[..1],
        &StatsOptions {
            gram_for: vec![],
            gram_step: 1,
        },
    );
    StatsOptions {
        gram_for: keys.into_keys().collect(),
        gram_step: 3,
    }
}

/// Runs the sweep, merging the statistics of every part; `replace` gives
/// each part's replacement weights. Returns the statistics, the parts in
/// the order the callback saw them with their layers, and the report.
fn sweep(
    m: &Model,
    seqs: &[Vec<u32>],
    opts: &SweepOptions,
    replace: &dyn Fn(Part) -> Replacements,
) -> (Stats, Vec<(Part, BTreeSet<String>)>, SweepReport) {
    let mut all = Stats::new();
    let mut parts = Vec::new();
    let last = RefCell::new(0u64);
    let report = sweep_linear_inputs(
        m,
        seqs,
        opts,
        &mut |part, stats| {
            parts.push((part, stats.keys().cloned().collect()));
            for k in stats.keys() {
                assert!(!all.contains_key(k), "{k} reported twice");
            }
            all.extend(stats);
            Ok(replace(part))
        },
        &|done| {
            assert!(done > *last.borrow());
            *last.borrow_mut() = done;
        },
    )
    .unwrap();
    assert_eq!(*last.borrow(), sweep_units(family(m), seqs));
    (all, parts, report)
}

/// The largest difference between `a` and `b` relative to the largest
/// magnitude in `b` (for sums of squares and Gram matrices alike).
fn rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-30f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

/// The largest relative difference of any statistic between two runs,
/// after checking that they have the same layers, counts and sharing.
fn max_diff(got: &Stats, want: &Stats) -> f32 {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    let mut worst = 0f32;
    for (k, w) in want {
        let g = &got[k];
        assert_eq!(g.count, w.count, "{k}");
        assert_eq!(g.gram_count, w.gram_count, "{k}");
        assert_eq!(g.shared_with, w.shared_with, "{k}");
        assert_eq!(g.gram.is_some(), w.gram.is_some(), "{k}");
        worst = worst
            .max(rel(&g.mean_abs(), &w.mean_abs()))
            .max(rel(&g.mean_sq(), &w.mean_sq()));
        if let (Some(a), Some(b)) = (g.gram_mean(), w.gram_mean()) {
            worst = worst.max(rel(&a, &b));
        }
    }
    worst
}

/// Per layer of `got`, the relative difference of its mean squares to `want`'s.
fn per_layer_diff(got: &Stats, want: &Stats) -> BTreeMap<String, f32> {
    got.iter()
        .map(|(k, g)| {
            let w = &want[k];
            (k.clone(), rel(&g.mean_sq(), &w.mean_sq()))
        })
        .collect()
}

const ALL: [&str; 3] = ["tiny-llama", "tiny-qwen2", "tiny-bert"];
const TOL: f32 = 1e-5;

#[test]
fn sweep_statistics_equal_the_one_shot_statistics() {
    for name in ALL {
        let m = fixture(name);
        // 40 sequences of 64 tokens: two batches (32 per batch), the last partial
        let seqs = seqs(&m, 40, 64);
        let stats = every_gram(&m, &seqs);
        let want = one_shot(&m, &seqs, &stats);
        for propagate in [false, true] {
            let opts = SweepOptions {
                propagate,
                ..SweepOptions::new(stats.clone())
            };
            let (got, parts, report) = sweep(&m, &seqs, &opts, &|_| Replacements::new());
            let n = family(&m).num_layers();
            let mut expected_parts: Vec<Part> = (0..n).map(Part::Layer).collect();
            expected_parts.push(Part::Head);
            let seen: Vec<Part> = parts.iter().map(|p| p.0).collect();
            assert_eq!(seen, expected_parts, "{name}");
            assert_eq!(report.layers, n);
            assert_eq!(report.batches, 2);
            assert_eq!(report.tokens, 40 * 64);
            assert_eq!(report.propagated_layers, 0);
            assert_eq!(report.peak_spilled_bytes, 0);
            if let Family::Llama(_) = family(&m) {
                assert!(got.contains_key("lm_head"), "{name}");
                assert_eq!(got["lm_head"].count, 40 * 64);
            }
            assert!(got.values().all(|s| s.gram.is_some() && s.count == 40 * 64));
            let d = max_diff(&got, &want);
            eprintln!("{name} propagate={propagate}: max relative difference {d:e}");
            assert!(d <= TOL, "{name}: {d}");
        }
    }
}

/// Round-to-nearest 4-bit per row, dequantized: what a quantizing
/// callback would hand back.
fn fake_quant(m: &Model, name: &str) -> Vec<f32> {
    let t = m.tensor(name).unwrap();
    let cols = t.shape[1];
    let mut w = t.to_f32().unwrap();
    for row in w.chunks_mut(cols) {
        let scale = row.iter().fold(0f32, |a, v| a.max(v.abs())) / 7.0;
        if scale > 0.0 {
            for v in row {
                *v = (*v / scale).round().clamp(-8.0, 7.0) * scale;
            }
        }
    }
    w
}

/// The linear weights of `part` (2-D tensors other than embedding tables).
fn linear_weights(m: &Model, part: Part) -> Vec<String> {
    part.tensors(family(m))
        .into_iter()
        .filter(|n| {
            m.tensor(n).is_some_and(|t| t.shape.len() == 2)
                && n.ends_with(".weight")
                && !n.contains("embeddings.")
                && !(part != Part::Head && n.contains("embed_tokens"))
        })
        .collect()
}

/// `m` with the linear weights of layers `0..n` replaced by `quantize`'s.
fn replaced_below(m: &Model, n: usize, quantize: &dyn Fn(Part) -> Replacements) -> Model {
    let mut out = m.clone();
    for i in 0..n {
        for (name, v) in quantize(Part::Layer(i)) {
            let t = out.tensors.iter_mut().find(|t| t.name == name).unwrap();
            *t = edgec_core::Tensor::from_f32(name, t.shape.clone(), v).unwrap();
        }
    }
    out
}

#[test]
fn replaced_weights_propagate_to_later_layers() {
    for name in ALL {
        let m = fixture(name);
        let seqs = seqs(&m, 40, 64);
        let stats = every_gram(&m, &seqs);
        let quantize = |part: Part| -> Replacements {
            linear_weights(&m, part)
                .into_iter()
                .map(|n| {
                    let v = fake_quant(&m, &n);
                    (n, v)
                })
                .collect()
        };
        let layers = family(&m).num_layers();
        let original = one_shot(&m, &seqs, &stats);

        let on = SweepOptions::new(stats.clone());
        let (got, by_part, report) = sweep(&m, &seqs, &on, &quantize);
        assert_eq!(report.propagated_layers, layers);
        // A layer is calibrated on its own original weights and on the
        // outputs of the replaced layers before it: what a one-shot run
        // sees on a model whose layers before it are replaced.
        for (j, part) in by_part.iter().enumerate() {
            let want = one_shot(&replaced_below(&m, j, &quantize), &seqs, &stats);
            let part_stats: Stats = got
                .iter()
                .filter(|(k, _)| part.1.contains(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let want: Stats = want
                .into_iter()
                .filter(|(k, _)| part.1.contains(k))
                .collect();
            let d = max_diff(&part_stats, &want);
            eprintln!("{name} {:?}: max relative difference {d:e}", part.0);
            assert!(d <= TOL, "{name} {:?}: {d}", part.0);
            // and from layer 1 on, every statistic differs from the original
            for (k, diff) in per_layer_diff(&part_stats, &original) {
                if j == 0 {
                    assert_eq!(diff, 0.0, "{name} {k}");
                } else {
                    assert!(diff > 1e-4, "{name} {k} did not change ({diff:e})");
                }
            }
        }

        let off = SweepOptions {
            propagate: false,
            ..SweepOptions::new(stats.clone())
        };
        let (got, _, report) = sweep(&m, &seqs, &off, &quantize);
        assert_eq!(report.propagated_layers, 0);
        let d = max_diff(&got, &original);
        assert!(d <= TOL, "{name} without propagation: {d}");
    }
}

#[test]
fn a_spilled_cache_gives_the_same_statistics() {
    for name in ["tiny-qwen2", "tiny-bert"] {
        let m = fixture(name);
        let seqs = seqs(&m, 100, 64); // four batches of 32, 32, 32, 4
        let stats = every_gram(&m, &seqs);
        let batch_bytes = 32 * 64 * 64 * 4;
        for propagate in [false, true] {
            let run = |budget: usize| {
                let opts = SweepOptions {
                    propagate,
                    cache_budget: budget,
                    ..SweepOptions::new(stats.clone())
                };
                let quantize = |part: Part| -> Replacements {
                    linear_weights(&m, part)
                        .into_iter()
                        .map(|n| {
                            let v = fake_quant(&m, &n);
                            (n, v)
                        })
                        .collect()
                };
                sweep(&m, &seqs, &opts, &quantize)
            };
            let (all_mem, _, r_mem) = run(usize::MAX);
            assert_eq!(r_mem.peak_spilled_bytes, 0);
            for budget in [0, batch_bytes + 1000, 3 * batch_bytes] {
                let (spilled, _, r) = run(budget);
                eprintln!("{name} propagate={propagate} budget {budget}: {r:?}");
                assert!(r.peak_spilled_bytes > 0, "{name}: nothing spilled");
                assert!(r.peak_cache_bytes <= budget, "{name}: over budget");
                // bit for bit: the same values, read back
                assert_eq!(max_diff(&spilled, &all_mem), 0.0, "{name} budget {budget}");
                for (k, s) in &spilled {
                    assert_eq!(s.sum_sq, all_mem[k].sum_sq, "{k}");
                    assert_eq!(s.gram, all_mem[k].gram, "{k}");
                }
            }
        }
    }
}

#[test]
fn sweep_errors() {
    let m = fixture("tiny-llama");
    let opts = SweepOptions::new(StatsOptions {
        gram_for: vec![],
        gram_step: 1,
    });
    let mut nothing =
        |_: Part, _: Stats| -> Result<Replacements, CallbackError> { Ok(Replacements::new()) };
    assert!(matches!(
        sweep_linear_inputs(&m, &[], &opts, &mut nothing, &|_| {}),
        Err(SweepError::Input(_))
    ));
    assert!(matches!(
        sweep_linear_inputs(&m, &[vec![1, 2], vec![3]], &opts, &mut nothing, &|_| {}),
        Err(SweepError::Input(_))
    ));
    let seqs = seqs(&m, 2, 8);
    // a tensor of another layer
    let mut wrong = |part: Part, _: Stats| -> Result<Replacements, CallbackError> {
        let mut r = Replacements::new();
        if part == Part::Layer(0) {
            r.insert(
                "model.layers.1.mlp.up_proj.weight".into(),
                vec![0.0; 160 * 64],
            );
        }
        Ok(r)
    };
    assert!(matches!(
        sweep_linear_inputs(&m, &seqs, &opts, &mut wrong, &|_| {}),
        Err(SweepError::Replacement {
            part: Part::Layer(0),
            ..
        })
    ));
    // the wrong number of values
    let mut short = |_: Part, _: Stats| -> Result<Replacements, CallbackError> {
        Ok(Replacements::from([(
            "model.layers.0.mlp.up_proj.weight".to_string(),
            vec![0.0; 3],
        )]))
    };
    assert!(matches!(
        sweep_linear_inputs(&m, &seqs, &opts, &mut short, &|_| {}),
        Err(SweepError::Replacement { .. })
    ));
    // the callback's own error stops the sweep
    let mut failing = |part: Part, _: Stats| -> Result<Replacements, CallbackError> {
        if part == Part::Layer(1) {
            Err("no room".into())
        } else {
            Ok(Replacements::new())
        }
    };
    let err = sweep_linear_inputs(&m, &seqs, &opts, &mut failing, &|_| {}).unwrap_err();
    assert!(matches!(
        err,
        SweepError::Callback {
            part: Part::Layer(1),
            ..
        }
    ));
    assert!(err.to_string().contains("no room"), "{err}");
}
