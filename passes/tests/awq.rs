//! AWQ on the tiny fixtures: folding the scales keeps the float model's
//! logits, and the search never does worse than plain rounding on its own
//! measure.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use edgec_calibration::{collect_linear_inputs, StatsOptions};
use edgec_core::runtime::{Runtime, RuntimeOptions};
use edgec_core::{DType, Family, GgmlType, Model, Tensor, TensorData};
use edgec_passes::awq::{awq_llama, gram_layers, AwqOptions, InputStats, RowQuantizer};
use edgec_passes::ggml_quant::round_trip;
use edgec_passes::groupwise::Groupwise;

fn fixture(name: &str) -> Model {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name);
    edgec_formats::hf::read(&dir).unwrap()
}

struct Q4_0;

impl RowQuantizer for Q4_0 {
    fn round_trip(
        &self,
        _: &str,
        row: &[f32],
        imp: Option<&[f32]>,
        out: &mut [f32],
    ) -> Result<(), String> {
        round_trip(GgmlType::Q4_0, row, imp, out).map_err(|e| e.to_string())
    }

    fn block(&self, _: &str) -> Option<usize> {
        Some(32)
    }
}

fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            ((s >> 33) % vocab as u64) as u32
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn run_awq(model: &Model, opts: &AwqOptions) -> edgec_passes::awq::AwqResult {
    run_awq_with(model, opts, &Q4_0)
}

fn run_awq_with(
    model: &Model,
    opts: &AwqOptions,
    quant: &dyn RowQuantizer,
) -> edgec_passes::awq::AwqResult {
    let Some(Family::Llama(p)) = &model.meta.family else {
        panic!("llama fixture")
    };
    let mut rt = Runtime::new(model, &RuntimeOptions::default()).unwrap();
    let seqs: Vec<Vec<u32>> = (0..4).map(|i| tokens(96, p.vocab_size, i)).collect();
    let stats = collect_linear_inputs(
        &mut rt,
        &seqs,
        &StatsOptions {
            gram_for: gram_layers(p),
            gram_step: 1,
        },
        &|_| {},
    )
    .unwrap();
    let lookup = |m: &str| {
        let s = stats.get(m)?;
        Some(InputStats {
            mean_abs: s.mean_abs(),
            mean_sq: s.mean_sq(),
            gram: s.gram_mean()?,
        })
    };
    awq_llama(model, p, &lookup, quant, opts, &|| {}).unwrap()
}

fn folded(model: &Model, mut values: HashMap<String, Vec<f32>>) -> Model {
    let mut out = model.clone();
    for t in &mut out.tensors {
        if let Some(v) = values.remove(&t.name) {
            let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            *t = Tensor::new(
                t.name.clone(),
                t.shape.clone(),
                DType::F32,
                TensorData::Owned(Arc::new(bytes)),
            )
            .unwrap();
        }
    }
    assert!(values.is_empty(), "unknown tensors {:?}", values.keys());
    out
}

/// With scales and no clipping, the folded float model computes what the
/// original does: logits within 1e-4 of their largest magnitude. Checked
/// with a fixed α = 0.5 so the scales are far from 1, on grouped-query
/// attention (o's scales shared by the query heads of a kv head) and on
/// q/k/v biases (Qwen2).
#[test]
fn folded_scales_keep_the_float_model() {
    for name in ["tiny-llama", "tiny-qwen2", "tiny-llama-sp"] {
        let model = fixture(name);
        let opts = AwqOptions {
            clip_grid: 1,
            alpha: Some(0.5),
            ..Default::default()
        };
        let result = run_awq(&model, &opts);
        let spread = result
            .input_scales
            .values()
            .flat_map(|s| s.iter())
            .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        assert!(
            spread.1 / spread.0 > 1.5,
            "{name}: scales {spread:?} barely move"
        );
        assert!(result
            .groups
            .iter()
            .all(|g| g.clip.iter().all(|&c| c == 1.0)));
        let scaled = folded(&model, result.tensors);
        let Some(Family::Llama(p)) = &model.meta.family else {
            unreachable!()
        };
        let toks = tokens(150, p.vocab_size, 99);
        let opts = RuntimeOptions::default();
        let want = Runtime::new(&model, &opts).unwrap().logits(&toks).unwrap();
        let got = Runtime::new(&scaled, &opts).unwrap().logits(&toks).unwrap();
        let scale = want.iter().fold(1f32, |a, b| a.max(b.abs()));
        let err = max_abs_diff(&got, &want);
        assert!(err <= 1e-4 * scale, "{name}: max |Δ| {err} (scale {scale})");
    }
}

/// The search keeps plain rounding among its candidates, so on its own
/// measure every group ends no worse than plain rounding; with a linear
/// int4 groupwise quantizer as with a ggml type.
#[test]
fn the_search_never_loses_to_plain_rounding() {
    let model = fixture("tiny-llama");
    for quant in [
        &Q4_0 as &dyn RowQuantizer,
        &Groupwise {
            bits: 4,
            group: 32,
            symmetric: true,
        },
    ] {
        let result = run_awq_with(&model, &AwqOptions::default(), quant);
        assert!(!result.groups.is_empty());
        for g in &result.groups {
            assert!(g.error_scaled <= g.error_rtn * (1.0 + 1e-9), "{g:?}");
            assert!(g.error_final <= g.error_scaled * (1.0 + 1e-9), "{g:?}");
        }
    }
}
