//! The sweep's peak memory does not grow with the model's depth, and the
//! one-shot statistics' does (so this test can fail).
//!
//! Two random llama-shaped f32 models whose weights dominate the process
//! (hidden 512, ffn 1536: 13.6 MB a layer), of 4 and 32 layers, are written
//! to a temporary folder; each run happens in a child process (this test
//! binary again, told what to do by an environment variable) that reports
//! its peak resident set (VmHWM, which counts mapped file pages too).

#![cfg(target_os = "linux")]

use std::path::Path;
use std::process::Command;

use edgec_calibration::{
    collect_linear_inputs, sweep_linear_inputs, ChannelStats, Replacements, StatsOptions,
    SweepOptions,
};
use edgec_core::runtime::{Part, Runtime, RuntimeOptions};
use edgec_core::{DType, Family, LlamaParams, LlamaVariant, Model};
use edgec_formats::safetensors::LazyTensor;

const CHILD: &str = "EDGEC_SWEEP_MEMORY_CHILD";
const TEST: &str = "peak_memory_does_not_grow_with_depth";

fn family(layers: usize) -> Family {
    Family::Llama(LlamaParams {
        variant: LlamaVariant::Llama,
        vocab_size: 256,
        hidden_size: 512,
        intermediate_size: 1536,
        num_layers: layers,
        num_heads: 8,
        num_kv_heads: 8,
        head_dim: 64,
        max_position_embeddings: 256,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        tie_word_embeddings: false,
        blocks: None,
    })
}

/// Writes a random f32 model of `layers` layers into `dir` (config.json
/// and model.safetensors, one tensor in memory at a time); returns the
/// weights' file size.
fn write_model(dir: &Path, layers: usize) -> u64 {
    std::fs::create_dir_all(dir).unwrap();
    let f = family(layers);
    let config = edgec_formats::hf::config_json(&f, DType::F32).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let lazy: Vec<LazyTensor> = f
        .expected_tensors()
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let s = shape.clone();
            let produce: Box<dyn Fn() -> Vec<u8>> = Box::new(move || {
                let n: usize = s.iter().product();
                if s.len() == 1 {
                    // norm weights
                    return 1f32.to_le_bytes().repeat(n);
                }
                let amp = 1.7 / (s[1] as f32).sqrt();
                let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64 + 1);
                let mut out = Vec::with_capacity(n * 4);
                for _ in 0..n {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    let u = (state >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
                    out.extend_from_slice(&((2.0 * u - 1.0) * amp).to_le_bytes());
                }
                out
            });
            LazyTensor {
                name,
                shape,
                dtype: DType::F32,
                produce,
            }
        })
        .collect();
    let path = dir.join("model.safetensors");
    edgec_formats::safetensors::write_file(&path, &lazy).unwrap();
    std::fs::metadata(&path).unwrap().len()
}

/// Every linear layer, each with a Gram matrix.
fn stats_options(m: &Model) -> StatsOptions {
    let layers = m.meta.family.as_ref().unwrap().num_layers();
    let mut gram_for: Vec<String> = (0..layers)
        .flat_map(|i| {
            [
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
            ]
            .map(|l| format!("model.layers.{i}.{l}"))
        })
        .collect();
    gram_for.push("lm_head".into());
    StatsOptions {
        gram_for,
        gram_step: 1,
    }
}

/// Round-to-nearest 4-bit per row, dequantized.
fn fake_quant(m: &Model, name: &str) -> Vec<f32> {
    let t = m.tensor(name).unwrap();
    let mut w = t.to_f32().unwrap();
    for row in w.chunks_mut(t.shape[1]) {
        let scale = row.iter().fold(0f32, |a, v| a.max(v.abs())) / 7.0;
        for v in row {
            *v = (*v / scale).round().clamp(-8.0, 7.0) * scale;
        }
    }
    w
}

fn vm_hwm_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// What a child process does: one run, then its peak on stdout.
fn child(spec: &str) {
    edgec_core::runtime::init_process();
    let (mode, dir) = spec.split_once(':').unwrap();
    let m = edgec_formats::read_model(Path::new(dir)).unwrap();
    let layers = m.meta.family.as_ref().unwrap().num_layers();
    let seqs: Vec<Vec<u32>> = (0..2u32)
        .map(|s| (0..64u32).map(|i| (i * 31 + s * 7 + 3) % 256).collect())
        .collect();
    let opts = stats_options(&m);
    let mut seen = 0usize;
    match mode {
        "sweep" => {
            let report = sweep_linear_inputs(
                &m,
                &seqs,
                &SweepOptions::new(opts),
                &mut |part, stats| {
                    seen += stats.len();
                    // quantized weights, propagated to the next layer
                    let r: Replacements = match part {
                        Part::Layer(_) => part
                            .tensors(m.meta.family.as_ref().unwrap())
                            .into_iter()
                            .filter(|n| n.ends_with("proj.weight"))
                            .map(|n| {
                                let v = fake_quant(&m, &n);
                                (n, v)
                            })
                            .collect(),
                        _ => Replacements::new(),
                    };
                    Ok(r)
                },
                &|_| {},
            )
            .unwrap();
            assert_eq!(report.propagated_layers, layers);
        }
        "one-shot" => {
            let mut rt = Runtime::new(&m, &RuntimeOptions::default()).unwrap();
            let stats: std::collections::BTreeMap<String, ChannelStats> =
                collect_linear_inputs(&mut rt, &seqs, &opts, &|_| {}).unwrap();
            seen = stats.len();
        }
        other => panic!("unknown mode {other}"),
    }
    assert_eq!(seen, 7 * layers + 1);
    println!("\nVmHWM_KB={}", vm_hwm_kb());
}

/// Runs a child on the model in `dir` and returns its peak in MiB.
fn peak_mib(mode: &str, dir: &Path) -> f64 {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([TEST, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD, format!("{mode}:{}", dir.display()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child {mode} {}: {stdout}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let kb: u64 = stdout
        .lines()
        .find_map(|l| l.split("VmHWM_KB=").nth(1))
        .unwrap_or_else(|| panic!("no peak from the child: {stdout}"))
        .trim()
        .parse()
        .unwrap();
    kb as f64 / 1024.0
}

#[test]
fn peak_memory_does_not_grow_with_depth() {
    if let Ok(spec) = std::env::var(CHILD) {
        child(&spec);
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (shallow, deep) = (tmp.path().join("l4"), tmp.path().join("l32"));
    let shallow_bytes = write_model(&shallow, 4);
    let deep_bytes = write_model(&deep, 32);
    let ratio = deep_bytes as f64 / shallow_bytes as f64;
    assert!(
        ratio > 7.5,
        "the deep model is only {ratio:.2}x the shallow one"
    );

    let sweep4 = peak_mib("sweep", &shallow);
    let sweep32 = peak_mib("sweep", &deep);
    let once4 = peak_mib("one-shot", &shallow);
    let once32 = peak_mib("one-shot", &deep);
    eprintln!(
        "weights {:.0} MiB vs {:.0} MiB ({ratio:.2}x); peak RSS: sweep {sweep4:.0} MiB vs \
         {sweep32:.0} MiB ({:.2}x), one-shot {once4:.0} MiB vs {once32:.0} MiB ({:.2}x)",
        shallow_bytes as f64 / (1 << 20) as f64,
        deep_bytes as f64 / (1 << 20) as f64,
        sweep32 / sweep4,
        once32 / once4,
    );
    assert!(
        sweep32 < 1.3 * sweep4,
        "the sweep's peak grew with depth: {sweep4:.0} MiB for 4 layers, {sweep32:.0} MiB for 32"
    );
    assert!(
        once32 > 3.0 * once4,
        "the one-shot peak should grow with depth: {once4:.0} MiB vs {once32:.0} MiB"
    );
}
