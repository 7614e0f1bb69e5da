//! The reference runtime against independent plain-loop implementations on
//! the tiny fixtures, plus causality, batching, hooks, the quantized matmul
//! path and gradients.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use edgec_core::runtime::{QmmPolicy, Runtime, RuntimeError, RuntimeOptions};
use edgec_core::{
    DType, Family, GgmlType, LlamaParams, LlamaVariant, Model, ModelMeta, TensorData,
};

fn fixture(name: &str) -> Model {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name);
    edgec_formats::read_model(&dir).unwrap_or_else(|e| panic!("reading {name}: {e}"))
}

fn rt(model: &Model) -> Runtime {
    Runtime::new(model, &RuntimeOptions::default()).unwrap()
}

fn tokens(n: usize, vocab: usize, seed: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed * 97 + 13) >> 7) % vocab as u32)
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

// ---------------------------------------------------------------------------
// Independent reference: plain loops, f64 accumulation, no candle.

struct Ref<'a>(&'a Model);

impl Ref<'_> {
    fn get(&self, name: &str) -> Vec<f32> {
        self.0
            .tensor(name)
            .unwrap_or_else(|| panic!("no {name}"))
            .to_f32()
            .unwrap()
    }
}

/// `w` is `[rows, cols]` row-major; returns `w·x (+ b)`.
fn matvec(w: &[f32], x: &[f32], b: Option<&[f32]>) -> Vec<f32> {
    let cols = x.len();
    w.chunks_exact(cols)
        .enumerate()
        .map(|(r, row)| {
            let dot: f64 = row.iter().zip(x).map(|(a, b)| *a as f64 * *b as f64).sum();
            (dot + b.map_or(0.0, |b| b[r] as f64)) as f32
        })
        .collect()
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let ms: f64 = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps as f64).sqrt();
    x.iter()
        .zip(w)
        .map(|(v, w)| (*v as f64 * inv * *w as f64) as f32)
        .collect()
}

fn layer_norm(x: &[f32], w: &[f32], b: &[f32], eps: f32) -> Vec<f32> {
    let n = x.len() as f64;
    let mean: f64 = x.iter().map(|v| *v as f64).sum::<f64>() / n;
    let var: f64 = x.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / n;
    let inv = 1.0 / (var + eps as f64).sqrt();
    x.iter()
        .zip(w.iter().zip(b))
        .map(|(v, (w, b))| ((*v as f64 - mean) * inv * *w as f64 + *b as f64) as f32)
        .collect()
}

fn softmax(s: &mut [f64]) {
    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for v in s.iter_mut() {
        *v = (*v - m).exp();
        sum += *v;
    }
    for v in s.iter_mut() {
        *v /= sum;
    }
}

/// Multi-head attention over per-token q, k, v rows; `causal` masks the future.
fn attention(
    q: &[Vec<f32>],
    k: &[Vec<f32>],
    v: &[Vec<f32>],
    nh: usize,
    nkv: usize,
    hd: usize,
    causal: bool,
) -> Vec<Vec<f32>> {
    let n = q.len();
    let rep = nh / nkv;
    (0..n)
        .map(|t| {
            let mut out = vec![0f32; nh * hd];
            for h in 0..nh {
                let kh = h / rep;
                let keys = if causal { t + 1 } else { n };
                let mut s: Vec<f64> = (0..keys)
                    .map(|j| {
                        (0..hd)
                            .map(|i| q[t][h * hd + i] as f64 * k[j][kh * hd + i] as f64)
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                softmax(&mut s);
                for i in 0..hd {
                    out[h * hd + i] = (0..keys)
                        .map(|j| s[j] * v[j][kh * hd + i] as f64)
                        .sum::<f64>() as f32;
                }
            }
            out
        })
        .collect()
}

/// HF's rotate-half rotary embedding on every head of `x`, at position `pos`.
fn rope(x: &mut [f32], heads: usize, hd: usize, pos: usize, theta: f32) {
    let half = hd / 2;
    for h in 0..heads {
        for i in 0..half {
            let f = 1.0 / (theta as f64).powf((2 * i) as f64 / hd as f64);
            let (s, c) = (pos as f64 * f).sin_cos();
            let a = x[h * hd + i] as f64;
            let b = x[h * hd + i + half] as f64;
            x[h * hd + i] = (a * c - b * s) as f32;
            x[h * hd + i + half] = (b * c + a * s) as f32;
        }
    }
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

fn ref_llama(m: &Model, tokens: &[u32]) -> Vec<f32> {
    let Some(Family::Llama(p)) = &m.meta.family else {
        panic!("not llama")
    };
    let r = Ref(m);
    let (d, nh, nkv, hd) = (p.hidden_size, p.num_heads, p.num_kv_heads, p.head_dim);
    let embed = r.get("model.embed_tokens.weight");
    let mut x: Vec<Vec<f32>> = tokens
        .iter()
        .map(|&t| embed[t as usize * d..(t as usize + 1) * d].to_vec())
        .collect();
    let bias = p.variant == LlamaVariant::Qwen2;
    for l in 0..p.num_layers {
        let name = |s: &str| format!("model.layers.{l}.{s}");
        let ln1 = r.get(&name("input_layernorm.weight"));
        let ln2 = r.get(&name("post_attention_layernorm.weight"));
        let lin = |s: &str| {
            let w = r.get(&name(&format!("{s}.weight")));
            let b = bias.then(|| r.get(&name(&format!("{s}.bias"))));
            (w, b)
        };
        let (qw, qb) = lin("self_attn.q_proj");
        let (kw, kb) = lin("self_attn.k_proj");
        let (vw, vb) = lin("self_attn.v_proj");
        let ow = r.get(&name("self_attn.o_proj.weight"));
        let gw = r.get(&name("mlp.gate_proj.weight"));
        let uw = r.get(&name("mlp.up_proj.weight"));
        let dw = r.get(&name("mlp.down_proj.weight"));
        let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
        for (pos, xt) in x.iter().enumerate() {
            let h = rms_norm(xt, &ln1, p.rms_norm_eps);
            let mut qt = matvec(&qw, &h, qb.as_deref());
            let mut kt = matvec(&kw, &h, kb.as_deref());
            rope(&mut qt, nh, hd, pos, p.rope_theta);
            rope(&mut kt, nkv, hd, pos, p.rope_theta);
            q.push(qt);
            k.push(kt);
            v.push(matvec(&vw, &h, vb.as_deref()));
        }
        let ctx = attention(&q, &k, &v, nh, nkv, hd, true);
        for (xt, c) in x.iter_mut().zip(&ctx) {
            let o = matvec(&ow, c, None);
            xt.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let h = rms_norm(xt, &ln2, p.rms_norm_eps);
            let g = matvec(&gw, &h, None);
            let u = matvec(&uw, &h, None);
            let a: Vec<f32> = g.iter().zip(&u).map(|(g, u)| silu(*g) * u).collect();
            let dn = matvec(&dw, &a, None);
            xt.iter_mut().zip(&dn).for_each(|(a, b)| *a += b);
        }
    }
    let norm = r.get("model.norm.weight");
    let head = if p.tie_word_embeddings {
        embed
    } else {
        r.get("lm_head.weight")
    };
    x.iter()
        .flat_map(|xt| matvec(&head, &rms_norm(xt, &norm, p.rms_norm_eps), None))
        .collect()
}

fn gelu_erf(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

/// erf by its Taylor series (to ~1e-15 for |x| ≤ 5; ±1 beyond).
fn erf(x: f64) -> f64 {
    if x.abs() > 5.0 {
        return x.signum();
    }
    // Taylor: erf(x) = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1))
    let mut sum = 0.0;
    let mut term = x;
    let mut n = 0.0;
    while term.abs() > 1e-17 || n < 5.0 {
        sum += term / (2.0 * n + 1.0);
        n += 1.0;
        term *= -x * x / n;
        if n > 200.0 {
            break;
        }
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

fn ref_bert(m: &Model, tokens: &[u32]) -> Vec<f32> {
    let Some(Family::Bert(p)) = &m.meta.family else {
        panic!("not bert")
    };
    let r = Ref(m);
    let d = p.hidden_size;
    let eps = p.layer_norm_eps;
    let we = r.get("embeddings.word_embeddings.weight");
    let pe = r.get("embeddings.position_embeddings.weight");
    let te = r.get("embeddings.token_type_embeddings.weight");
    let (lw, lb) = (
        r.get("embeddings.LayerNorm.weight"),
        r.get("embeddings.LayerNorm.bias"),
    );
    let mut x: Vec<Vec<f32>> = tokens
        .iter()
        .enumerate()
        .map(|(pos, &t)| {
            let e: Vec<f32> = (0..d)
                .map(|i| we[t as usize * d + i] + pe[pos * d + i] + te[i])
                .collect();
            layer_norm(&e, &lw, &lb, eps)
        })
        .collect();
    for l in 0..p.num_layers {
        let name = |s: &str| format!("encoder.layer.{l}.{s}");
        let lin = |s: &str| {
            (
                r.get(&name(&format!("{s}.weight"))),
                r.get(&name(&format!("{s}.bias"))),
            )
        };
        let (qw, qb) = lin("attention.self.query");
        let (kw, kb) = lin("attention.self.key");
        let (vw, vb) = lin("attention.self.value");
        let (ow, ob) = lin("attention.output.dense");
        let (n1w, n1b) = lin("attention.output.LayerNorm");
        let (iw, ib) = lin("intermediate.dense");
        let (o2w, o2b) = lin("output.dense");
        let (n2w, n2b) = lin("output.LayerNorm");
        let q: Vec<_> = x.iter().map(|t| matvec(&qw, t, Some(&qb))).collect();
        let k: Vec<_> = x.iter().map(|t| matvec(&kw, t, Some(&kb))).collect();
        let v: Vec<_> = x.iter().map(|t| matvec(&vw, t, Some(&vb))).collect();
        let ctx = attention(&q, &k, &v, p.num_heads, p.num_heads, d / p.num_heads, false);
        for (xt, c) in x.iter_mut().zip(&ctx) {
            let a = matvec(&ow, c, Some(&ob));
            let s: Vec<f32> = a.iter().zip(xt.iter()).map(|(a, b)| a + b).collect();
            let h = layer_norm(&s, &n1w, &n1b, eps);
            let i: Vec<f32> = matvec(&iw, &h, Some(&ib))
                .iter()
                .map(|v| gelu_erf(*v as f64) as f32)
                .collect();
            let o = matvec(&o2w, &i, Some(&o2b));
            let s: Vec<f32> = o.iter().zip(&h).map(|(a, b)| a + b).collect();
            *xt = layer_norm(&s, &n2w, &n2b, eps);
        }
    }
    (0..d)
        .map(|i| (x.iter().map(|t| t[i] as f64).sum::<f64>() / x.len() as f64) as f32)
        .collect()
}

// ---------------------------------------------------------------------------

const LLAMAS: [&str; 3] = ["tiny-llama", "tiny-qwen2", "tiny-llama-sp"];

fn vocab(m: &Model) -> usize {
    match m.meta.family.as_ref().unwrap() {
        Family::Llama(p) => p.vocab_size,
        Family::Bert(p) => p.vocab_size,
    }
}

#[test]
fn llama_logits_shape_and_finite() {
    for name in LLAMAS {
        let m = fixture(name);
        let v = vocab(&m);
        let r = rt(&m);
        let toks = tokens(17, v, 1);
        let logits = r.logits(&toks).unwrap();
        assert_eq!(logits.len(), 17 * v, "{name}");
        assert!(logits.iter().all(|x| x.is_finite()), "{name}");
        // one token works too
        assert_eq!(r.logits(&toks[..1]).unwrap().len(), v);
    }
}

#[test]
fn llama_logits_match_reference_loops() {
    for name in LLAMAS {
        let m = fixture(name);
        // more positions than one attention tile (128)
        let toks = tokens(150, vocab(&m), 2);
        let got = rt(&m).logits(&toks).unwrap();
        let want = ref_llama(&m, &toks);
        let scale = want.iter().fold(1f32, |a, b| a.max(b.abs()));
        let err = max_abs_diff(&got, &want);
        assert!(err <= 1e-4 * scale, "{name}: max |Δ| {err} (scale {scale})");
    }
}

#[test]
fn llama_is_causal() {
    for name in LLAMAS {
        let m = fixture(name);
        let v = vocab(&m);
        let r = rt(&m);
        for (n, from) in [(20, 12), (200, 140)] {
            let a = tokens(n, v, 3);
            let mut b = a.clone();
            for (i, t) in b.iter_mut().enumerate().skip(from) {
                *t = (*t + 1 + i as u32) % v as u32;
            }
            let la = r.logits(&a).unwrap();
            let lb = r.logits(&b).unwrap();
            let err = max_abs_diff(&la[..from * v], &lb[..from * v]);
            assert!(err <= 1e-5, "{name}: earlier positions moved by {err}");
            assert!(
                max_abs_diff(&la[from * v..], &lb[from * v..]) > 1e-3,
                "{name}"
            );
        }
    }
}

#[test]
fn batched_forward_matches_single_sequences() {
    let m = fixture("tiny-qwen2");
    let v = vocab(&m);
    let r = rt(&m);
    // more positions than one attention tile (128)
    let n = 140;
    let (a, b) = (tokens(n, v, 4), tokens(n, v, 5));
    let ids: Vec<u32> = a.iter().chain(&b).copied().collect();
    let ids = Tensor::from_vec(ids, (2, n), &Device::Cpu).unwrap();
    let out = r.forward(&ids).unwrap();
    assert_eq!(out.dims(), &[2, n, v]);
    let out: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
    assert!(max_abs_diff(&out[..n * v], &r.logits(&a).unwrap()) < 1e-5);
    assert!(max_abs_diff(&out[n * v..], &r.logits(&b).unwrap()) < 1e-5);
    // i64 ids are accepted too
    let ids64 = Tensor::from_vec(
        a.iter().map(|&t| t as i64).collect::<Vec<_>>(),
        (1, n),
        &Device::Cpu,
    )
    .unwrap();
    let out64: Vec<f32> = r
        .forward(&ids64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(out64, r.logits(&a).unwrap());
}

#[test]
fn tail_and_batched_logits_are_slices_of_the_full_logits() {
    let m = fixture("tiny-llama");
    let v = vocab(&m);
    let r = rt(&m);
    let n = 140;
    let (a, b) = (tokens(n, v, 6), tokens(n, v, 7));
    let (la, lb) = (r.logits(&a).unwrap(), r.logits(&b).unwrap());
    let first = 70;
    let tail = r.logits_from(&a, first).unwrap();
    assert!(max_abs_diff(&tail, &la[first * v..]) < 1e-5);
    let both = r.logits_batch(&[&a, &b], first).unwrap();
    let half = (n - first) * v;
    assert_eq!(both.len(), 2 * half);
    assert!(max_abs_diff(&both[..half], &la[first * v..]) < 1e-5);
    assert!(max_abs_diff(&both[half..], &lb[first * v..]) < 1e-5);
    assert!(r.logits_from(&a, n).is_err());
    assert!(r.logits_batch(&[&a, &b[..n - 1]], 0).is_err());
}

#[test]
fn inference_and_trainable_runtimes_agree() {
    // The inference runtime reads f32 weights in place and runs attention
    // on gemm directly; the trainable one runs candle ops with backward
    // passes. Same model, same logits.
    for name in LLAMAS {
        let m = fixture(name);
        let toks = tokens(150, vocab(&m), 8);
        let fast = rt(&m).logits(&toks).unwrap();
        let (slow, _vars) = Runtime::trainable(&m).unwrap();
        let slow = slow.logits(&toks).unwrap();
        let scale = slow.iter().fold(1f32, |a, b| a.max(b.abs()));
        let err = max_abs_diff(&fast, &slow);
        assert!(err <= 1e-5 * scale, "{name}: max |Δ| {err} (scale {scale})");
    }
}

#[test]
fn bert_embedding_matches_reference_loops() {
    let m = fixture("tiny-bert");
    let r = rt(&m);
    for (n, seed) in [(1, 6), (9, 7), (40, 8)] {
        let toks = tokens(n, vocab(&m), seed);
        let got = r.embed(&toks).unwrap();
        let want = ref_bert(&m, &toks);
        let Some(Family::Bert(p)) = &m.meta.family else {
            unreachable!()
        };
        assert_eq!(got.len(), p.hidden_size);
        let err = max_abs_diff(&got, &want);
        assert!(err <= 1e-4, "{n} tokens: max |Δ| {err}");
    }
    // forward gives the last hidden state [batch, seq, hidden]
    let ids = Tensor::from_vec(tokens(6, vocab(&m), 9), (1, 6), &Device::Cpu).unwrap();
    assert_eq!(r.forward(&ids).unwrap().dims(), &[1, 6, 64]);
}

#[test]
fn bad_inputs_are_errors() {
    let llama = rt(&fixture("tiny-llama"));
    let bert = rt(&fixture("tiny-bert"));
    assert!(matches!(llama.logits(&[]), Err(RuntimeError::Input(_))));
    assert!(matches!(
        llama.logits(&[1, 512]),
        Err(RuntimeError::Input(_))
    ));
    assert!(matches!(
        llama.embed(&[1, 2]),
        Err(RuntimeError::WrongFamily { .. })
    ));
    assert!(matches!(
        bert.logits(&[1, 2]),
        Err(RuntimeError::WrongFamily { .. })
    ));
    // more tokens than BERT has positions
    assert!(matches!(
        bert.embed(&vec![5; 129]),
        Err(RuntimeError::Input(_))
    ));
    let neg = Tensor::from_vec(vec![3i64, -1], (1, 2), &Device::Cpu).unwrap();
    assert!(matches!(llama.forward(&neg), Err(RuntimeError::Input(_))));
    let flat = Tensor::from_vec(vec![3u32, 1], 2, &Device::Cpu).unwrap();
    assert!(matches!(llama.forward(&flat), Err(RuntimeError::Input(_))));
    // a model without its family, or missing a tensor
    let mut m = fixture("tiny-llama");
    m.tensors
        .retain(|t| t.name != "model.layers.1.mlp.up_proj.weight");
    assert!(matches!(
        Runtime::new(&m, &RuntimeOptions::default()),
        Err(RuntimeError::Model(_))
    ));
    m.meta.family = None;
    assert!(matches!(
        Runtime::new(&m, &RuntimeOptions::default()),
        Err(RuntimeError::NoFamily)
    ));
}

#[test]
fn hook_sees_linear_inputs_and_residuals() {
    let m = fixture("tiny-llama");
    let mut r = rt(&m);
    type Seen = Vec<(String, Vec<usize>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let s2 = seen.clone();
    r.set_hook(Some(Arc::new(move |name: &str, t: &Tensor| {
        s2.lock()
            .unwrap()
            .push((name.to_string(), t.dims().to_vec()));
    })));
    r.logits(&tokens(5, 512, 10)).unwrap();
    let seen = seen.lock().unwrap();
    let find = |n: &str| {
        seen.iter()
            .find(|(name, _)| name == n)
            .unwrap_or_else(|| panic!("hook never saw {n}"))
            .1
            .clone()
    };
    for l in 0..2 {
        for (lin, inp) in [
            ("self_attn.q_proj", 64),
            ("self_attn.k_proj", 64),
            ("self_attn.v_proj", 64),
            ("self_attn.o_proj", 64),
            ("mlp.gate_proj", 64),
            ("mlp.up_proj", 64),
            ("mlp.down_proj", 160),
        ] {
            assert_eq!(find(&format!("model.layers.{l}.{lin}:input")), [5, inp]);
        }
        assert_eq!(find(&format!("model.layers.{l}:output")), [5, 64]);
        assert_eq!(find(&format!("model.layers.{l}.self_attn:output")), [5, 64]);
    }
    assert_eq!(find("lm_head:input"), [5, 64]);
    assert_eq!(find("lm_head:output"), [5, 512]);
    drop(seen);
    r.set_hook(None);
    r.logits(&[1, 2]).unwrap();

    let mut b = rt(&fixture("tiny-bert"));
    let names: Arc<Mutex<Vec<String>>> = Arc::default();
    let n2 = names.clone();
    b.set_hook(Some(Arc::new(move |name: &str, _: &Tensor| {
        n2.lock().unwrap().push(name.to_string())
    })));
    b.embed(&[3, 4, 5]).unwrap();
    let names = names.lock().unwrap();
    for want in [
        "embeddings:output",
        "encoder.layer.0.attention.self.query:input",
        "encoder.layer.0.attention.output.dense:input",
        "encoder.layer.1.intermediate.dense:input",
        "encoder.layer.1.output.dense:input",
        "encoder.layer.1:output",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "bert hook never saw {want}"
        );
    }
}

#[test]
fn gradient_reaches_first_layer() {
    for (name, first) in [
        ("tiny-llama", "model.layers.0.self_attn.q_proj.weight"),
        ("tiny-qwen2", "model.layers.0.self_attn.q_proj.weight"),
        ("tiny-bert", "encoder.layer.0.attention.self.query.weight"),
    ] {
        let m = fixture(name);
        let (r, vars) = Runtime::trainable(&m).unwrap();
        // every tensor is a Var, once (a tied embedding is one Var)
        assert_eq!(vars.len(), m.tensors.len(), "{name}");
        // llama: more positions than one attention tile (128)
        let seq = if name == "tiny-bert" { 8 } else { 136 };
        let ids = Tensor::from_vec(tokens(2 * seq, vocab(&m), 11), (2, seq), &Device::Cpu).unwrap();
        let out = r.forward(&ids).unwrap();
        // the trainable graph computes what the inference one does
        let inf = rt(&m).forward(&ids).unwrap();
        let d = (&out - &inf)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5, "{name}: trainable differs by {d}");
        let loss = match m.meta.family.as_ref().unwrap() {
            // next-token cross-entropy
            Family::Llama(_) => {
                let logp = candle_nn::ops::log_softmax(&out, candle_core::D::Minus1).unwrap();
                let tgt = ids.flatten_all().unwrap().unsqueeze(1).unwrap();
                let logp = logp.flatten_to(1).unwrap();
                logp.gather(&tgt, 1)
                    .unwrap()
                    .mean_all()
                    .unwrap()
                    .neg()
                    .unwrap()
            }
            Family::Bert(_) => out.mean(1).unwrap().sqr().unwrap().sum_all().unwrap(),
        };
        let grads = loss.backward().unwrap();
        for (n, var) in &vars {
            if n == first || n.contains("layers.0.") || n.contains("layer.0.") {
                let g = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("{name}: no gradient for {n}"));
                let mag = g
                    .abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(
                    mag > 0.0 && mag.is_finite(),
                    "{name}: gradient of {n} is {mag}"
                );
            }
        }
        assert!(vars.iter().any(|(n, _)| n == first));
    }
}

// ---------------------------------------------------------------------------
// Quantized weights: a synthetic llama whose rows are multiples of 256, so
// every block type fits, quantized by candle and stored in the IR as ggml
// blocks.

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

fn synthetic_llama(quant: Option<GgmlDType>) -> Model {
    let p = LlamaParams {
        variant: LlamaVariant::Llama,
        vocab_size: 320,
        hidden_size: 256,
        intermediate_size: 512,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 64,
        max_position_embeddings: 512,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        tie_word_embeddings: false,
        blocks: None,
    };
    let family = Family::Llama(p);
    let mut seed = 42u64;
    let tensors = family
        .expected_tensors()
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            if shape.len() == 1 {
                let v: Vec<f32> = (0..n).map(|_| 1.0 + 0.1 * lcg(&mut seed)).collect();
                return edgec_core::Tensor::from_f32(name, shape, v).unwrap();
            }
            let scale = 1.0 / (shape[1] as f32).sqrt() * 1.7;
            let v: Vec<f32> = (0..n).map(|_| scale * lcg(&mut seed)).collect();
            match quant {
                Some(q) if name != "model.embed_tokens.weight" => {
                    let t = Tensor::from_vec(v, shape.as_slice(), &Device::Cpu).unwrap();
                    let qt = QTensor::quantize(&t, q).unwrap();
                    let bytes = qt.data().unwrap().to_vec();
                    let gt = GgmlType::from_name(&format!("{q:?}").replace('K', "_K")).unwrap();
                    edgec_core::Tensor::new(
                        name,
                        shape,
                        DType::Ggml(gt),
                        TensorData::Owned(Arc::new(bytes)),
                    )
                    .unwrap()
                }
                _ => edgec_core::Tensor::from_f32(name, shape, v).unwrap(),
            }
        })
        .collect();
    Model {
        meta: ModelMeta {
            name: "synthetic".into(),
            family: Some(family),
            vocab: None,
        },
        tensors,
        graph: None,
    }
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn quantized_matmul_close_to_dequantized() {
    let toks = tokens(33, 320, 12);
    let f32_logits = rt(&synthetic_llama(None)).logits(&toks).unwrap();
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
        let m = synthetic_llama(Some(q));
        let qmm =
            Runtime::with_qmm_policy(&m, &RuntimeOptions::default(), QmmPolicy::Always).unwrap();
        assert_eq!(qmm.quantized_layers(), 2 * 7 + 1, "{q:?}");
        // by default only the types whose kernels beat f32 run quantized
        let default = Runtime::new(&m, &RuntimeOptions::default()).unwrap();
        if matches!(q, GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1) {
            assert_eq!(default.quantized_layers(), 0, "{q:?}");
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && q == GgmlDType::Q4K {
            assert_eq!(default.quantized_layers(), 2 * 7 + 1, "{q:?}");
        }
        let deq = Runtime::new(
            &m,
            &RuntimeOptions {
                threads: None,
                quantized_matmul: false,
            },
        )
        .unwrap();
        assert_eq!(deq.quantized_layers(), 0);
        let a = qmm.logits(&toks).unwrap();
        let b = deq.logits(&toks).unwrap();
        let e = rel_err(&a, &b);
        let eq = rel_err(&b, &f32_logits);
        eprintln!("{q:?}: qmatmul vs dequantized {e:.5}, dequantized vs f32 {eq:.5}");
        // The activations are quantized to 8 bits (Q8_K for k-quants, Q8_0
        // otherwise), about what Q8_0 weights cost. This random model
        // amplifies errors (Q4_0 weights move its logits by 22%), so the
        // bound is loose; SmolLM2's is measured by the benchmark test.
        assert!(e < 0.04, "{q:?}: relative error {e}");
    }
}

#[test]
fn candle_reads_ggml_blocks_as_edgec_does() {
    let m = synthetic_llama(Some(GgmlDType::Q4K));
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
        let src = m.tensor("model.layers.0.mlp.up_proj.weight").unwrap();
        let t = Tensor::from_vec(src.to_f32().unwrap(), (512, 256), &Device::Cpu).unwrap();
        let qt = QTensor::quantize(&t, q).unwrap();
        let gt = GgmlType::from_name(&format!("{q:?}").replace('K', "_K")).unwrap();
        let ir = edgec_core::Tensor::new(
            "w",
            vec![512, 256],
            DType::Ggml(gt),
            TensorData::Owned(Arc::new(qt.data().unwrap().to_vec())),
        )
        .unwrap();
        let ours = ir.to_f32().unwrap();
        let theirs: Vec<f32> = qt
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(ours, theirs, "{q:?}");
    }
}
