//! Speed and accuracy of the runtime on a real model (SmolLM2-135M), run by
//! hand in release:
//!
//! ```sh
//! cargo test --release -p edgec-core --test runtime_bench -- --ignored --nocapture
//! ```
//!
//! Inputs (all optional; the test says what it skipped):
//! - `EDGEC_BENCH_F32`: an f32 model (default `$EDGEC_CACHE/models/smollm2-135m-f32`,
//!   `EDGEC_CACHE` defaulting to `~/.cache/edgec`)
//! - `EDGEC_BENCH_GGUF`: a quantized GGUF of it (e.g. Q4_K_M from `edgec quantize`)
//! - `EDGEC_BENCH_TOKENS`: token ids as llama-tokenize `--ids` prints them;
//!   perplexity is then computed the way llama-perplexity does (chunks of
//!   512, the second half of each scored). Without it, fixed pseudo-random ids.
//! - `EDGEC_BENCH_CHUNKS` (default 4), `EDGEC_BENCH_THREADS` (default: candle's),
//!   `EDGEC_BENCH_NO_TUNE` (set: skip `runtime::init_process`),
//!   `EDGEC_BENCH_HOOK` (set: with a no-op hook),
//!   `EDGEC_BENCH_QMM_ALWAYS` (set: also run every quantized type through
//!   candle's quantized matmul, `QmmPolicy::Always`).

use std::path::PathBuf;
use std::time::Instant;

use edgec_core::runtime::{QmmPolicy, Runtime, RuntimeOptions};
use edgec_core::{Family, Model};

const CTX: usize = 512;

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var).map(PathBuf::from)
}

fn default_f32() -> PathBuf {
    let cache = env_path("EDGEC_CACHE").unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/edgec")
    });
    cache.join("models/smollm2-135m-f32")
}

fn load_tokens(vocab: usize, chunks: usize) -> (Vec<u32>, bool) {
    if let Some(p) = env_path("EDGEC_BENCH_TOKENS") {
        let text = std::fs::read_to_string(&p).unwrap();
        let ids: Vec<u32> = text
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        assert!(ids.len() >= chunks * CTX, "{} tokens", ids.len());
        return (ids[..chunks * CTX].to_vec(), true);
    }
    let mut s = 7u64;
    let ids = (0..chunks * CTX)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            ((s >> 33) % vocab as u64) as u32
        })
        .collect();
    (ids, false)
}

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = row.iter().map(|v| (*v as f64 - m).exp()).sum::<f64>().ln() + m;
    row.iter().map(|v| *v as f64 - lse).collect()
}

struct Run {
    logits: Vec<Vec<f32>>,
    secs: f64,
}

fn run(model: &Model, opts: &RuntimeOptions, toks: &[u32], label: &str) -> Run {
    run_with(model, opts, QmmPolicy::WhereFaster, toks, label)
}

fn run_with(
    model: &Model,
    opts: &RuntimeOptions,
    policy: QmmPolicy,
    toks: &[u32],
    label: &str,
) -> Run {
    let t0 = Instant::now();
    let mut rt = Runtime::with_qmm_policy(model, opts, policy).unwrap();
    if std::env::var_os("EDGEC_BENCH_HOOK").is_some() {
        rt.set_hook(Some(std::sync::Arc::new(
            |_: &str, _: &candle_core::Tensor| {},
        )));
    }
    let load = t0.elapsed().as_secs_f64();
    // one untimed pass: page-in, candle's pools and quantized repacking
    rt.logits(&toks[..CTX]).unwrap();
    let t1 = Instant::now();
    let logits: Vec<Vec<f32>> = toks.chunks(CTX).map(|c| rt.logits(c).unwrap()).collect();
    let secs = t1.elapsed().as_secs_f64();
    println!(
        "{label}: load {load:.2}s, {} quantized linears, {} tokens in {secs:.2}s = {:.1} tokens/s",
        rt.quantized_layers(),
        toks.len(),
        toks.len() as f64 / secs
    );
    Run { logits, secs }
}

fn ppl(run: &Run, toks: &[u32], vocab: usize) -> f64 {
    let mut nll = 0.0;
    let mut n = 0usize;
    for (c, logits) in toks.chunks(CTX).zip(&run.logits) {
        for j in CTX / 2..CTX - 1 {
            let lp = log_softmax(&logits[j * vocab..(j + 1) * vocab]);
            nll -= lp[c[j + 1] as usize];
            n += 1;
        }
    }
    (nll / n as f64).exp()
}

/// Mean KL(p‖q) and top-1 agreement over every position.
fn kld(p: &Run, q: &Run, vocab: usize) -> (f64, f64) {
    let (mut kl, mut agree, mut n) = (0.0, 0usize, 0usize);
    for (a, b) in p.logits.iter().zip(&q.logits) {
        for (ra, rb) in a.chunks(vocab).zip(b.chunks(vocab)) {
            let (la, lb) = (log_softmax(ra), log_softmax(rb));
            kl += la
                .iter()
                .zip(&lb)
                .map(|(x, y)| x.exp() * (x - y))
                .sum::<f64>();
            let arg = |r: &[f32]| {
                r.iter()
                    .enumerate()
                    .max_by(|x, y| x.1.total_cmp(y.1))
                    .unwrap()
                    .0
            };
            agree += (arg(ra) == arg(rb)) as usize;
            n += 1;
        }
    }
    (kl / n as f64, agree as f64 / n as f64)
}

#[test]
#[ignore = "benchmark on a real model; run by hand in release"]
fn smollm2_speed_and_accuracy() {
    if std::env::var_os("EDGEC_BENCH_NO_TUNE").is_none() {
        edgec_core::runtime::init_process();
    }
    let chunks: usize = std::env::var("EDGEC_BENCH_CHUNKS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let threads = std::env::var("EDGEC_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok());
    let opts = RuntimeOptions {
        threads,
        quantized_matmul: true,
    };
    let dequant = RuntimeOptions {
        threads,
        quantized_matmul: false,
    };
    let f32_path = env_path("EDGEC_BENCH_F32").unwrap_or_else(default_f32);
    let f32_run = if f32_path.exists() {
        let m = edgec_formats::read_model(&f32_path).unwrap();
        let Some(Family::Llama(p)) = &m.meta.family else {
            panic!("not a llama-family model")
        };
        let vocab = p.vocab_size;
        let (toks, real) = load_tokens(vocab, chunks);
        let r = run(&m, &opts, &toks, "f32");
        if real {
            println!("f32: perplexity {:.4}", ppl(&r, &toks, vocab));
        }
        Some((r, toks, vocab, real))
    } else {
        println!("skipped f32: no {}", f32_path.display());
        None
    };
    let Some(gguf) = env_path("EDGEC_BENCH_GGUF") else {
        println!("skipped the quantized model: EDGEC_BENCH_GGUF is not set");
        return;
    };
    let m = edgec_formats::read_model(&gguf).unwrap();
    let Some(Family::Llama(p)) = &m.meta.family else {
        panic!("not a llama-family model")
    };
    let vocab = p.vocab_size;
    let (toks, real) = match &f32_run {
        Some((_, t, _, real)) => (t.clone(), *real),
        None => load_tokens(vocab, chunks),
    };
    let q = run(&m, &opts, &toks, "gguf, quantized matmul");
    let d = run(&m, &dequant, &toks, "gguf, dequantized");
    if real {
        println!(
            "gguf: perplexity {:.4} (quantized matmul), {:.4} (dequantized)",
            ppl(&q, &toks, vocab),
            ppl(&d, &toks, vocab)
        );
    }
    let (kl, top1) = kld(&d, &q, vocab);
    println!("quantized matmul vs dequantized f32: KLD {kl:.6}, top-1 agreement {top1:.4}");
    if let Some((f, _, _, _)) = &f32_run {
        let (kl, top1) = kld(f, &q, vocab);
        println!("f32 model vs quantized matmul: KLD {kl:.6}, top-1 {top1:.4}");
        let (kl, top1) = kld(f, &d, vocab);
        println!("f32 model vs dequantized: KLD {kl:.6}, top-1 {top1:.4}");
    }
    println!(
        "speed ratio quantized matmul / dequantized: {:.2}",
        d.secs / q.secs
    );
    if std::env::var_os("EDGEC_BENCH_QMM_ALWAYS").is_some() {
        let a = run_with(
            &m,
            &opts,
            QmmPolicy::Always,
            &toks,
            "gguf, quantized matmul always",
        );
        if real {
            println!(
                "gguf: perplexity {:.4} (quantized matmul always)",
                ppl(&a, &toks, vocab)
            );
        }
        let (kl, top1) = kld(&d, &a, vocab);
        println!("quantized matmul always vs dequantized: KLD {kl:.6}, top-1 {top1:.4}");
    }
}

/// GFLOP/s of candle's quantized matmul per block type against the f32
/// matmul, on SmolLM2's shapes (512 rows; k = 576 is not a multiple of 256).
#[test]
#[ignore = "benchmark; run by hand in release"]
fn qmatmul_kernel_speed() {
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};
    let m = 512;
    for (k, n) in [
        (576usize, 1536usize),
        (1536, 576),
        (768, 1536),
        (576, 49152),
    ] {
        let w = Tensor::randn(0f32, 0.05, (n, k), &Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
        let flops = 2.0 * (m * n * k) as f64;
        let time = |f: &dyn Fn() -> Tensor| {
            f();
            let t = Instant::now();
            let reps = 5;
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() / reps as f64
        };
        let wt = w.t().unwrap().contiguous().unwrap();
        let s = time(&|| x.matmul(&wt).unwrap());
        println!("k={k} n={n}: f32 {:.1} GFLOP/s", flops / s / 1e9);
        let wv = w.t().unwrap();
        let s = time(&|| x.matmul(&wv).unwrap());
        println!(
            "k={k} n={n}: f32, weight as a transposed view {:.1} GFLOP/s",
            flops / s / 1e9
        );
        for q in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
            GgmlDType::Q2K,
            GgmlDType::Q3K,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ] {
            if k % q.block_size() != 0 {
                continue;
            }
            let qm = QMatMul::from_qtensor(QTensor::quantize(&w, q).unwrap()).unwrap();
            let s = time(&|| qm.forward(&x).unwrap());
            println!("k={k} n={n}: {q:?} {:.1} GFLOP/s", flops / s / 1e9);
        }
    }
}

/// all-MiniLM-L6-v2 (`EDGEC_MINILM_DIR`) loads and embeds; prints speed.
#[test]
#[ignore = "needs the MiniLM package; run by hand"]
fn minilm_embeds() {
    let Some(dir) = env_path("EDGEC_MINILM_DIR") else {
        println!("skipped: EDGEC_MINILM_DIR is not set");
        return;
    };
    let m = edgec_formats::read_model(&dir).unwrap();
    let rt = Runtime::new(&m, &RuntimeOptions::default()).unwrap();
    // "[CLS] hello world [SEP]" in BERT's uncased vocabulary
    let e = rt.embed(&[101, 7592, 2088, 102]).unwrap();
    let norm = e.iter().map(|v| v * v).sum::<f32>().sqrt();
    println!("dim {}, norm {norm:.4}, first {:?}", e.len(), &e[..4]);
    let toks: Vec<u32> = (0..128u32).map(|i| 1000 + i * 7).collect();
    let t = Instant::now();
    for _ in 0..10 {
        rt.embed(&toks).unwrap();
    }
    println!("{:.1} tokens/s", 1280.0 / t.elapsed().as_secs_f64());
}

/// Where a 512-token forward pass spends its time, from the hook's
/// timestamps: the time before each observation point, summed over layers.
#[test]
#[ignore = "benchmark on a real model; run by hand in release"]
fn smollm2_time_breakdown() {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    edgec_core::runtime::init_process();
    let path = env_path("EDGEC_BENCH_F32").unwrap_or_else(default_f32);
    if !path.exists() {
        println!("skipped: no {}", path.display());
        return;
    }
    let m = edgec_formats::read_model(&path).unwrap();
    let mut rt = Runtime::new(&m, &RuntimeOptions::default()).unwrap();
    let (toks, _) = load_tokens(49152, 1);
    rt.logits(&toks).unwrap();
    type Stamps = Vec<(String, Instant)>;
    let stamps: Arc<Mutex<Stamps>> = Arc::default();
    let s2 = stamps.clone();
    rt.set_hook(Some(Arc::new(
        move |name: &str, _: &candle_core::Tensor| {
            s2.lock().unwrap().push((name.to_string(), Instant::now()))
        },
    )));
    // the fastest of 3 runs, per segment
    let mut by: BTreeMap<String, f64> = BTreeMap::new();
    let mut total = f64::MAX;
    for _ in 0..3 {
        stamps.lock().unwrap().clear();
        let t0 = Instant::now();
        rt.logits(&toks).unwrap();
        total = total.min(t0.elapsed().as_secs_f64());
        let stamps = stamps.lock().unwrap();
        let mut run: BTreeMap<String, f64> = BTreeMap::new();
        let mut prev = t0;
        for (name, t) in stamps.iter() {
            // model.layers.7.mlp.down_proj:input -> mlp.down_proj:input
            let key = match name.strip_prefix("model.layers.") {
                Some(rest) => rest.split_once('.').map_or("layer:output", |x| x.1),
                None => name,
            };
            *run.entry(key.to_string()).or_default() += (*t - prev).as_secs_f64();
            prev = *t;
        }
        *run.entry("(after the last hook)".into()).or_default() += prev.elapsed().as_secs_f64();
        for (k, t) in run {
            let e = by.entry(k).or_insert(f64::MAX);
            *e = e.min(t);
        }
    }
    let mut v: Vec<_> = by.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("fastest total {total:.3}s for {} tokens", toks.len());
    for (k, t) in v {
        println!("{:>7.1} ms {:>5.1}%  up to {k}", t * 1e3, 100.0 * t / total);
    }
}
