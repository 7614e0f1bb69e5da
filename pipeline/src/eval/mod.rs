//! `edgec eval`: accuracy of one model, or of a candidate against a
//! reference, on real data, with gates for CI (exit code 3 when one fails).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use edgec_calibration::{
    cosine, first_scored, read_jsonl_sentences, read_text, token_chunks, KlAccumulator, LlamaKl,
    LlamaLogitsFile, PerplexityAccumulator, TextTokenizer,
};
use edgec_core::runtime::{Runtime, RuntimeOptions};
use edgec_core::{Family, Model};
use serde::{Deserialize, Serialize};

use crate::error::UsageError;
use crate::graph_data::{self, ImageSpec};
use crate::progress::{Progress, Unit};

/// What to evaluate and how (the flags of `edgec eval`, the keys of a
/// recipe's eval step).
#[derive(Clone, Debug, Default)]
pub struct EvalSpec {
    /// The model to evaluate alone, or the reference of a comparison.
    pub reference: PathBuf,
    /// The candidate judged against the reference.
    pub candidate: Option<PathBuf>,
    /// Text (language models), JSONL or one sentence per line (encoders),
    /// photos, IDX or tensors (classifiers).
    pub data: Option<PathBuf>,
    /// Judge the model against llama-perplexity's saved logits.
    pub llama_logits: Option<PathBuf>,
    /// Metrics to report (empty: the family's defaults).
    pub metric: Vec<Metric>,
    /// Context length of each chunk (language models).
    pub ctx: usize,
    /// At most this many chunks.
    pub chunks: Option<usize>,
    /// Gates.
    pub max_ppl_increase: Option<f64>,
    pub max_kld: Option<f64>,
    pub min_cosine: Option<f64>,
    pub min_top1: Option<f64>,
    /// Encoders given as ONNX: the tokenizer.json to read sentences with.
    pub tokenizer: Option<PathBuf>,
    /// Classifiers: the true class of every sample (IDX labels).
    pub labels: Option<PathBuf>,
    /// Classifiers: at most this many samples.
    pub samples: Option<usize>,
    pub image: ImageSpec,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    Ppl,
    Kld,
    Top1,
    Cosine,
}

pub fn parse_fraction(s: &str) -> Result<f64, String> {
    let (num, scale) = match s.strip_suffix('%') {
        Some(n) => (n, 0.01),
        None => (s, 1.0),
    };
    num.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| v * scale)
        .ok_or_else(|| format!("{s:?} is not a non-negative number or percentage"))
}

/// What one model scored.
#[derive(Serialize, Default, Clone)]
pub struct Scores {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ppl: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_second: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples_per_second: Option<f64>,
    /// Top-1 accuracy against --labels (classifiers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
}

#[derive(Serialize, Clone)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ppl_increase: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kld: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top1_agreement: Option<f64>,
    /// Top-1 agreement where the reference's top probability exceeds 0.5.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top1_agreement_confident: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cosine_mean: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cosine_min: Option<f64>,
}

#[derive(Serialize, Clone)]
pub struct Gate {
    pub name: String,
    pub threshold: f64,
    pub value: f64,
    pub passed: bool,
}

/// The JSON document `--json` prints (documented in the README).
#[derive(Serialize)]
pub struct Report {
    pub data: String,
    pub kind: &'static str,
    pub ctx: Option<usize>,
    pub chunks: Option<usize>,
    pub scored_tokens: Option<usize>,
    pub sentences: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples: Option<usize>,
    pub reference: Scores,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate: Option<Scores>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<Delta>,
    pub gates: Vec<Gate>,
    pub passed: bool,
}

/// Evaluates as `spec` says; `report.passed` tells whether every gate passed.
pub fn run(spec: &EvalSpec, progress: &dyn Progress) -> Result<Report> {
    let reference_path = spec.reference.clone();
    let candidate_path = spec.candidate.clone();
    if candidate_path.is_none()
        && spec.llama_logits.is_none()
        && (spec.max_kld.is_some() || spec.min_cosine.is_some())
    {
        return Err(UsageError(
            "gates compare two models: give --reference and --candidate (or --llama-logits)".into(),
        )
        .into());
    }
    let opts = RuntimeOptions::default();
    if let Some(logits) = &spec.llama_logits {
        let model = edgec_formats::read_model(&reference_path)?;
        return eval_against_llama(spec, logits, &reference_path, &model, &opts, progress);
    }
    if candidate_path.is_none() && spec.max_ppl_increase.is_some() {
        return Err(UsageError(
            "--max-ppl-increase compares two models: give --reference and --candidate".into(),
        )
        .into());
    }
    let reference = edgec_formats::read_model(&reference_path)?;
    let candidate = candidate_path
        .as_deref()
        .map(edgec_formats::read_model)
        .transpose()?;
    // BERT models, and ONNX encoders given sentences
    let encoder = matches!(reference.meta.family, Some(Family::Bert(_)))
        || (reference.graph.is_some() && is_text(spec.data.as_deref()));
    let (cand_path, cand) = (candidate_path.as_deref(), candidate.as_ref());
    match reference.meta.family {
        _ if encoder => eval_encoder(
            spec,
            &reference_path,
            &reference,
            cand_path,
            cand,
            &opts,
            progress,
        ),
        Some(Family::Llama(_)) => eval_lm(
            spec,
            &reference_path,
            &reference,
            cand_path,
            cand,
            &opts,
            progress,
        ),
        _ if reference.graph.is_some() => {
            eval_classifier(spec, &reference_path, &reference, cand_path, cand, progress)
        }
        _ => bail!(
            "{}: the model has no architecture to run",
            reference_path.display()
        ),
    }
}

/// The metrics of a report by name, for the run report.
pub fn metrics(r: &Report) -> std::collections::BTreeMap<String, f64> {
    let mut m = std::collections::BTreeMap::new();
    let mut put = |k: &str, v: Option<f64>| {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    };
    put("ppl_reference", r.reference.ppl);
    put("accuracy_reference", r.reference.accuracy);
    if let Some(c) = &r.candidate {
        put("ppl_candidate", c.ppl);
        put("accuracy_candidate", c.accuracy);
    }
    if let Some(d) = &r.delta {
        put("ppl_increase", d.ppl_increase);
        put("kld", d.kld);
        put("top1_agreement", d.top1_agreement);
        put("cosine_mean", d.cosine_mean);
        put("cosine_min", d.cosine_min);
    }
    m
}

/// Whether evaluation data is sentences (text or JSONL) rather than images,
/// IDX or tensors.
fn is_text(data: Option<&Path>) -> bool {
    data.and_then(|d| d.extension())
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| matches!(e.as_str(), "txt" | "jsonl" | "json"))
}

fn check_same_family(a: &Model, b: &Model, b_path: &Path) -> Result<()> {
    let same = match (&a.meta.family, &b.meta.family) {
        (Some(Family::Llama(x)), Some(Family::Llama(y))) => {
            x.vocab_size == y.vocab_size && x.hidden_size == y.hidden_size
        }
        (Some(Family::Bert(x)), Some(Family::Bert(y))) => {
            x.vocab_size == y.vocab_size && x.hidden_size == y.hidden_size
        }
        _ => false,
    };
    if !same {
        bail!(
            "{}: the candidate is not the same architecture and vocabulary as the reference",
            b_path.display()
        );
    }
    Ok(())
}

fn eval_lm(
    args: &EvalSpec,
    ref_path: &Path,
    reference: &Model,
    cand_path: Option<&Path>,
    candidate: Option<&Model>,
    opts: &RuntimeOptions,
    progress: &dyn Progress,
) -> Result<Report> {
    let metrics: Vec<Metric> = if args.metric.is_empty() {
        if candidate.is_some() {
            vec![Metric::Ppl, Metric::Kld, Metric::Top1]
        } else {
            vec![Metric::Ppl]
        }
    } else {
        args.metric.clone()
    };
    if metrics.contains(&Metric::Cosine) {
        return Err(UsageError(
            "--metric cosine is for encoders; language models have ppl, kld, top1".into(),
        )
        .into());
    }
    if let (Some(c), Some(p)) = (candidate, cand_path) {
        check_same_family(reference, c, p)?;
    }
    if args.ctx < 4 {
        return Err(UsageError(format!("--ctx {} is too short (at least 4)", args.ctx)).into());
    }
    let data = args.data.as_deref().expect("clap requires --data here");
    // Tokenizing (mostly building the tokenizer) runs beside loading the
    // weights: the two take similar time and need nothing from each other.
    let (tokenized, ref_rt) = std::thread::scope(|s| {
        let tokenized = s.spawn(|| -> Result<(TextTokenizer, Vec<Vec<u32>>)> {
            let text = read_text(data)?;
            let tok = crate::tokenizer_of(reference, ref_path)?;
            let tokens = tok
                .encode(&text, tok.add_bos())
                .with_context(|| format!("{}: tokenizing", data.display()))?;
            let chunks = token_chunks(&tokens, args.ctx, args.chunks)
                .with_context(|| data.display().to_string())?;
            Ok((tok, chunks))
        });
        let rt = Runtime::new(reference, opts);
        (tokenized.join(), rt)
    });
    let (tok, chunks) =
        tokenized.map_err(|_| anyhow::anyhow!("the tokenizer thread panicked"))??;
    let ref_rt = ref_rt?;
    let cand_rt = candidate.map(|c| Runtime::new(c, opts)).transpose()?;
    let mut ref_ppl = PerplexityAccumulator::new();
    let mut cand_ppl = PerplexityAccumulator::new();
    let mut kl = KlAccumulator::new();
    let (mut ref_secs, mut cand_secs) = (0f64, 0f64);
    let bar = progress.bar((chunks.len() * args.ctx) as u64, "eval", Unit::Tokens);
    let first = first_scored(args.ctx);
    let per_batch = Runtime::sequences_per_batch(args.ctx);
    for batch in chunks.chunks(per_batch) {
        let batch: Vec<Vec<u32>> = batch
            .iter()
            .map(|chunk| {
                let mut chunk = chunk.clone();
                if let Some(bos) = tok.bos().filter(|_| tok.add_bos()) {
                    chunk[0] = bos;
                }
                chunk
            })
            .collect();
        let seqs: Vec<&[u32]> = batch.iter().map(Vec::as_slice).collect();
        // Only the scored half's logits: rows for positions `first..`.
        let t = Instant::now();
        let ref_logits = ref_rt.logits_batch(&seqs, first)?;
        ref_secs += t.elapsed().as_secs_f64();
        let cand_logits = match &cand_rt {
            Some(rt) => {
                let t = Instant::now();
                let l = rt.logits_batch(&seqs, first)?;
                cand_secs += t.elapsed().as_secs_f64();
                Some(l)
            }
            None => None,
        };
        let per_seq = ref_logits.len() / seqs.len();
        let vocab = per_seq / (args.ctx - first);
        for (i, chunk) in seqs.iter().enumerate() {
            let rows = i * per_seq..(i + 1) * per_seq;
            ref_ppl.add_chunk_tail(&ref_logits[rows.clone()], vocab, chunk);
            if let Some(cand) = &cand_logits {
                cand_ppl.add_chunk_tail(&cand[rows.clone()], vocab, chunk);
                kl.add_chunk(&ref_logits[rows.clone()], &cand[rows], vocab, 0);
            }
            bar.inc(chunk.len() as u64);
        }
    }
    bar.finish();
    let n_tokens = (chunks.len() * args.ctx) as f64;
    let want = |m: Metric| metrics.contains(&m);
    let reference_scores = Scores {
        path: ref_path.display().to_string(),
        ppl: want(Metric::Ppl).then(|| ref_ppl.ppl()),
        tokens_per_second: Some(n_tokens / ref_secs.max(1e-9)),
        samples_per_second: None,
        accuracy: None,
    };
    let candidate_scores = cand_path.map(|p| Scores {
        path: p.display().to_string(),
        ppl: want(Metric::Ppl).then(|| cand_ppl.ppl()),
        tokens_per_second: Some(n_tokens / cand_secs.max(1e-9)),
        samples_per_second: None,
        accuracy: None,
    });
    let delta = candidate.map(|_| Delta {
        ppl_increase: want(Metric::Ppl).then(|| cand_ppl.ppl() / ref_ppl.ppl() - 1.0),
        kld: want(Metric::Kld).then(|| kl.mean_kld()),
        top1_agreement: want(Metric::Top1).then(|| kl.top1_agreement()),
        top1_agreement_confident: None,
        cosine_mean: None,
        cosine_min: None,
    });
    let gates = lm_gates(args, cand_ppl.ppl() / ref_ppl.ppl() - 1.0, kl.mean_kld());
    if args.min_cosine.is_some() {
        return Err(UsageError(
            "--min-cosine gates encoders; use --max-kld or --max-ppl-increase".into(),
        )
        .into());
    }
    let passed = gates.iter().all(|g| g.passed);
    Ok(Report {
        data: data.display().to_string(),
        kind: "language-model",
        ctx: Some(args.ctx),
        chunks: Some(chunks.len()),
        scored_tokens: Some(ref_ppl.count()),
        sentences: None,
        samples: None,
        reference: reference_scores,
        candidate: candidate_scores,
        delta,
        gates,
        passed,
    })
}

pub fn read_sentences(path: &Path) -> Result<Vec<String>> {
    let is_jsonl = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl") || e.eq_ignore_ascii_case("json"));
    let sentences = if is_jsonl {
        read_jsonl_sentences(path)?
    } else {
        read_text(path)?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    };
    if sentences.is_empty() {
        bail!("{}: no sentences", path.display());
    }
    Ok(sentences)
}

fn eval_encoder(
    args: &EvalSpec,
    ref_path: &Path,
    reference: &Model,
    cand_path: Option<&Path>,
    candidate: Option<&Model>,
    opts: &RuntimeOptions,
    progress: &dyn Progress,
) -> Result<Report> {
    if args.metric.iter().any(|m| *m != Metric::Cosine) {
        return Err(UsageError("encoders report --metric cosine only".into()).into());
    }
    if args.max_kld.is_some() || args.max_ppl_increase.is_some() {
        return Err(UsageError(
            "--max-kld and --max-ppl-increase gate language models; use --min-cosine".into(),
        )
        .into());
    }
    if let (Some(c), Some(p)) = (candidate, cand_path) {
        if reference.graph.is_none() && c.graph.is_none() {
            check_same_family(reference, c, p)?;
        }
    }
    let data = args.data.as_deref().expect("clap requires --data here");
    let sentences = read_sentences(data)?;
    // The tokenizer: --tokenizer, else whichever model carries one (an ONNX
    // encoder carries none).
    let tok = match (
        &args.tokenizer,
        &reference.meta.vocab,
        candidate.and_then(|c| c.meta.vocab.as_ref()),
    ) {
        (Some(path), _, _) => {
            let vocab = edgec_formats::tokenizer::vocab_from_hf(path, None)?;
            TextTokenizer::from_vocab(&vocab).with_context(|| path.display().to_string())?
        }
        (None, Some(_), _) => crate::tokenizer_of(reference, ref_path)?,
        (None, None, Some(v)) => TextTokenizer::from_vocab(v)
            .with_context(|| format!("{}: tokenizer", cand_path.unwrap_or(ref_path).display()))?,
        (None, None, None) => {
            return Err(UsageError(
                "ONNX encoders carry no tokenizer: give --tokenizer tokenizer.json".into(),
            )
            .into())
        }
    };
    let ref_rt = Embedder::new(reference, opts)?;
    let cand_rt = candidate.map(|c| Embedder::new(c, opts)).transpose()?;
    let max_pos = match (&reference.meta.family, candidate.map(|c| &c.meta.family)) {
        (Some(Family::Bert(p)), _) | (_, Some(Some(Family::Bert(p)))) => p.max_position_embeddings,
        _ => usize::MAX,
    };
    let (mut cos, mut n_tokens, mut ref_secs, mut cand_secs) = (Vec::new(), 0usize, 0f64, 0f64);
    let bar = progress.bar(sentences.len() as u64, "eval", Unit::Tokens);
    for (i, s) in sentences.iter().enumerate() {
        let ids = tok
            .encode(s, true)
            .with_context(|| format!("{}: sentence {}", data.display(), i + 1))?;
        if ids.len() > max_pos {
            bail!(
                "{}: sentence {} has {} tokens, more than the model's {max_pos} positions",
                data.display(),
                i + 1,
                ids.len()
            );
        }
        n_tokens += ids.len();
        let t = Instant::now();
        let a = ref_rt.embed(&ids)?;
        ref_secs += t.elapsed().as_secs_f64();
        if let Some(rt) = &cand_rt {
            let t = Instant::now();
            let b = rt.embed(&ids)?;
            cand_secs += t.elapsed().as_secs_f64();
            cos.push(cosine(&a, &b));
        }
        bar.inc(1);
    }
    bar.finish();
    let mean = cos.iter().sum::<f64>() / cos.len().max(1) as f64;
    let min = cos.iter().copied().fold(f64::INFINITY, f64::min);
    let mut gates = vec![];
    if let Some(threshold) = args.min_cosine {
        gates.push(Gate {
            name: "min-cosine".into(),
            threshold,
            value: mean,
            passed: mean >= threshold,
        });
    }
    let passed = gates.iter().all(|g| g.passed);
    Ok(Report {
        data: data.display().to_string(),
        kind: "encoder",
        ctx: None,
        chunks: None,
        scored_tokens: None,
        sentences: Some(sentences.len()),
        samples: None,
        reference: Scores {
            path: ref_path.display().to_string(),
            ppl: None,
            tokens_per_second: Some(n_tokens as f64 / ref_secs.max(1e-9)),
            samples_per_second: None,
            accuracy: None,
        },
        candidate: cand_path.map(|p| Scores {
            path: p.display().to_string(),
            ppl: None,
            tokens_per_second: Some(n_tokens as f64 / cand_secs.max(1e-9)),
            samples_per_second: None,
            accuracy: None,
        }),
        delta: candidate.map(|_| Delta {
            ppl_increase: None,
            kld: None,
            top1_agreement: None,
            top1_agreement_confident: None,
            cosine_mean: Some(mean),
            cosine_min: Some(min),
        }),
        gates,
        passed,
    })
}

/// MODEL against llama.cpp's saved f32 logits, on llama.cpp's tokens, with
/// llama.cpp's KL formula: the reference is llama.cpp itself.
fn eval_against_llama(
    args: &EvalSpec,
    logits: &Path,
    path: &Path,
    model: &Model,
    opts: &RuntimeOptions,
    progress: &dyn Progress,
) -> Result<Report> {
    let file = LlamaLogitsFile::open(logits)?;
    match &model.meta.family {
        Some(Family::Llama(p)) if p.vocab_size == file.n_vocab => {}
        _ => bail!(
            "{}: the model does not have the {}-token vocabulary of {}",
            path.display(),
            file.n_vocab,
            logits.display()
        ),
    }
    if args.min_cosine.is_some() {
        return Err(UsageError("--min-cosine gates encoders".into()).into());
    }
    let tok = model
        .meta
        .vocab
        .as_ref()
        .map(TextTokenizer::from_vocab)
        .transpose()?;
    let bos = tok.as_ref().filter(|t| t.add_bos()).and_then(|t| t.bos());
    let rt = Runtime::new(model, opts)?;
    let n_chunks = args.chunks.map_or(file.n_chunk, |c| c.min(file.n_chunk));
    let mut kl = LlamaKl::default();
    let bar = progress.bar((n_chunks * file.n_ctx) as u64, "eval", Unit::Tokens);
    let start = Instant::now();
    for c in 0..n_chunks {
        let mut chunk = file.chunk_tokens(c).to_vec();
        if let Some(bos) = bos {
            chunk[0] = bos;
        }
        let model_logits = rt.logits(&chunk)?;
        let rows = file.chunk_rows(c)?;
        kl.add_chunk(&file, &model_logits, &rows, &chunk);
        bar.inc(chunk.len() as u64);
    }
    bar.finish();
    let secs = start.elapsed().as_secs_f64();
    let increase = kl.ppl() / kl.ppl_base() - 1.0;
    let gates = lm_gates(args, increase, kl.mean_kld());
    let passed = gates.iter().all(|g| g.passed);
    Ok(Report {
        data: logits.display().to_string(),
        kind: "language-model",
        ctx: Some(file.n_ctx),
        chunks: Some(n_chunks),
        scored_tokens: Some(kl.count),
        sentences: None,
        samples: None,
        reference: Scores {
            path: format!("llama.cpp ({})", logits.display()),
            ppl: Some(kl.ppl_base()),
            tokens_per_second: None,
            samples_per_second: None,
            accuracy: None,
        },
        candidate: Some(Scores {
            path: path.display().to_string(),
            ppl: Some(kl.ppl()),
            tokens_per_second: Some((n_chunks * file.n_ctx) as f64 / secs.max(1e-9)),
            samples_per_second: None,
            accuracy: None,
        }),
        delta: Some(Delta {
            ppl_increase: Some(increase),
            kld: Some(kl.mean_kld()),
            top1_agreement: Some(kl.same_top()),
            top1_agreement_confident: None,
            cosine_mean: None,
            cosine_min: None,
        }),
        gates,
        passed,
    })
}

/// The language-model gates the flags ask for: each an upper bound.
fn lm_gates(args: &EvalSpec, ppl_increase: f64, kld: f64) -> Vec<Gate> {
    [
        ("max-ppl-increase", args.max_ppl_increase, ppl_increase),
        ("max-kld", args.max_kld, kld),
    ]
    .into_iter()
    .filter_map(|(name, threshold, value)| {
        threshold.map(|t| Gate {
            name: name.into(),
            threshold: t,
            value,
            passed: value <= t,
        })
    })
    .collect()
}

pub fn text_report(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "data: {} ({})", r.data, r.kind);
    if let (Some(ctx), Some(chunks)) = (r.ctx, r.chunks) {
        let _ = writeln!(
            s,
            "chunks: {chunks} x {ctx} tokens, {} scored",
            r.scored_tokens.unwrap_or(0)
        );
    }
    if let Some(n) = r.sentences {
        let _ = writeln!(s, "sentences: {n}");
    }
    if let Some(n) = r.samples {
        let _ = writeln!(s, "samples: {n}");
    }
    for (label, sc) in [
        ("reference", Some(&r.reference)),
        ("candidate", r.candidate.as_ref()),
    ] {
        if let Some(sc) = sc {
            let ppl = sc.ppl.map(|p| format!(" PPL {p:.4}")).unwrap_or_default();
            let speed = sc
                .tokens_per_second
                .map(|t| format!(", {t:.1} tokens/s"))
                .or_else(|| sc.samples_per_second.map(|t| format!(", {t:.1} samples/s")))
                .unwrap_or_default();
            let acc = sc
                .accuracy
                .map(|a| format!(" top-1 accuracy {:.2}%", a * 100.0))
                .unwrap_or_default();
            let _ = writeln!(s, "{label}: {} —{ppl}{acc}{speed}", sc.path);
        }
    }
    if let Some(d) = &r.delta {
        if let Some(v) = d.ppl_increase {
            let _ = writeln!(s, "delta: PPL {:+.3}%", v * 100.0);
        }
        if let Some(v) = d.kld {
            let _ = writeln!(s, "delta: mean KL-divergence {v:.6}");
        }
        if let Some(v) = d.top1_agreement {
            let _ = writeln!(s, "delta: top-1 agreement {:.2}%", v * 100.0);
        }
        if let Some(v) = d.top1_agreement_confident {
            let _ = writeln!(
                s,
                "delta: top-1 agreement where the reference is confident (p > 0.5) {:.2}%",
                v * 100.0
            );
        }
        if let (Some(m), Some(n)) = (d.cosine_mean, d.cosine_min) {
            let _ = writeln!(s, "delta: cosine mean {m:.6}, min {n:.6}");
        }
    }
    for g in &r.gates {
        let _ = writeln!(
            s,
            "gate {}: {:.6} vs {:.6} — {}",
            g.name,
            g.value,
            g.threshold,
            if g.passed { "pass" } else { "FAIL" }
        );
    }
    s
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One test case per gate (and one that always records the metrics when no
/// gate is set), so CI systems show each gate as a test.
pub fn junit_xml(r: &Report) -> String {
    let failures = r.gates.iter().filter(|g| !g.passed).count();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let cases = r.gates.len().max(1);
    let _ = writeln!(
        x,
        "<testsuite name=\"edgec eval\" tests=\"{cases}\" failures=\"{failures}\" errors=\"0\">"
    );
    if r.gates.is_empty() {
        let _ = writeln!(
            x,
            "  <testcase classname=\"edgec.eval\" name=\"{}\"/>",
            xml_escape(&r.data)
        );
    }
    for g in &r.gates {
        let _ = write!(
            x,
            "  <testcase classname=\"edgec.eval\" name=\"{}\"",
            xml_escape(&g.name)
        );
        if g.passed {
            let _ = writeln!(x, "/>");
        } else {
            let _ = writeln!(
                x,
                ">\n    <failure message=\"{} = {} fails the gate {}\"/>\n  </testcase>",
                xml_escape(&g.name),
                g.value,
                g.threshold
            );
        }
    }
    x.push_str("</testsuite>\n");
    x
}

/// A classifier graph (ONNX) on images or tensors: with a candidate, the
/// KL-divergence of its class probabilities from the reference's and their
/// top-1 agreement (over all samples, and over those where the reference's
/// top probability exceeds 0.5).
fn eval_classifier(
    args: &EvalSpec,
    ref_path: &Path,
    reference: &Model,
    cand_path: Option<&Path>,
    candidate: Option<&Model>,
    progress: &dyn Progress,
) -> Result<Report> {
    use edgec_core::runtime::graph::GraphRuntime;
    if args
        .metric
        .iter()
        .any(|m| !matches!(m, Metric::Kld | Metric::Top1))
    {
        return Err(UsageError("classifiers report --metric kld,top1".into()).into());
    }
    if args.max_ppl_increase.is_some() || args.min_cosine.is_some() {
        return Err(UsageError("classifiers are gated by --max-kld and --min-top1".into()).into());
    }
    if candidate.is_none() && args.labels.is_none() {
        return Err(UsageError(
            "a classifier is judged on --labels, or against a --reference with --candidate".into(),
        )
        .into());
    }
    if let (Some(c), Some(p)) = (candidate, cand_path) {
        if c.graph.is_none() {
            bail!("{}: the candidate is not a graph model", p.display());
        }
    }
    let data = args.data.as_deref().expect("clap requires --data here");
    let samples = graph_data::samples(reference, data, &args.image, args.samples)?;
    // each model reads the data in its own input layout (a .tflite is NHWC
    // where the ONNX original is NCHW): the same pixels, loaded again
    let input_shapes = |m: &Model| {
        m.graph
            .as_ref()
            .map(|g| g.inputs.iter().map(|v| v.shape.clone()).collect::<Vec<_>>())
    };
    let cand_samples = match candidate {
        Some(c) if input_shapes(c) != input_shapes(reference) => {
            let s = graph_data::samples(c, data, &args.image, args.samples)?;
            if s.len() != samples.len() {
                bail!(
                    "{}: {} samples for the candidate, {} for the reference",
                    data.display(),
                    s.len(),
                    samples.len()
                );
            }
            Some(s)
        }
        _ => None,
    };
    let labels = args
        .labels
        .as_deref()
        .map(|p| -> Result<Vec<u32>> {
            let l = edgec_calibration::idx::read_idx_labels(p)?;
            if l.len() < samples.len() {
                bail!(
                    "{}: {} labels for {} samples",
                    p.display(),
                    l.len(),
                    samples.len()
                );
            }
            Ok(l)
        })
        .transpose()?;
    let ref_rt = GraphRuntime::new(reference)?;
    let cand_rt = candidate.map(GraphRuntime::new).transpose()?;
    let (mut ref_correct, mut cand_correct) = (0usize, 0usize);
    let mut kl = KlAccumulator::new();
    let (mut confident, mut confident_agree) = (0usize, 0usize);
    let (mut ref_secs, mut cand_secs) = (0f64, 0f64);
    let bar = progress.bar(samples.len() as u64, "eval", Unit::Items);
    let first_output = |rt: &GraphRuntime, s: &graph_data::Sample, secs: &mut f64, path: &Path| {
        let refs: Vec<(&str, candle_core::Tensor)> =
            s.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
        let t = Instant::now();
        let out = rt.run(&refs).with_context(|| path.display().to_string())?;
        *secs += t.elapsed().as_secs_f64();
        let (_, logits) = out.into_iter().next().context("the graph has no output")?;
        let v: Vec<f32> = logits
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        Ok::<_, anyhow::Error>(v)
    };
    for (i, s) in samples.iter().enumerate() {
        let r = first_output(&ref_rt, s, &mut ref_secs, ref_path)?;
        let label = labels.as_ref().map(|l| l[i] as usize);
        ref_correct += usize::from(label == Some(edgec_calibration::metrics::argmax(&r)));
        let (Some(cand_rt), Some(cand_path)) = (&cand_rt, cand_path) else {
            bar.inc(1);
            continue;
        };
        let cs = cand_samples.as_ref().map_or(s, |v| &v[i]);
        let c = first_output(cand_rt, cs, &mut cand_secs, cand_path)?;
        cand_correct += usize::from(label == Some(edgec_calibration::metrics::argmax(&c)));
        if r.len() != c.len() || r.is_empty() {
            bail!(
                "{}: the candidate gives {} outputs, the reference {}",
                cand_path.display(),
                c.len(),
                r.len()
            );
        }
        kl.add_rows(&r, &c, r.len());
        let top = edgec_calibration::metrics::argmax(&r);
        let max = r.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let p_top = 1.0 / r.iter().map(|&v| ((v - max) as f64).exp()).sum::<f64>();
        if p_top > 0.5 {
            confident += 1;
            confident_agree += usize::from(edgec_calibration::metrics::argmax(&c) == top);
        }
        bar.inc(1);
    }
    bar.finish();
    let n = samples.len() as f64;
    let want = |m: Metric| args.metric.is_empty() || args.metric.contains(&m);
    let mut gates = Vec::new();
    if let Some(t) = args.max_kld {
        gates.push(Gate {
            name: "max-kld".into(),
            threshold: t,
            value: kl.mean_kld(),
            passed: kl.mean_kld() <= t,
        });
    }
    if let Some(t) = args.min_top1 {
        gates.push(Gate {
            name: "min-top1".into(),
            threshold: t,
            value: kl.top1_agreement(),
            passed: kl.top1_agreement() >= t,
        });
    }
    let passed = gates.iter().all(|g| g.passed);
    Ok(Report {
        data: data.display().to_string(),
        kind: "classifier",
        ctx: None,
        chunks: None,
        scored_tokens: None,
        sentences: None,
        samples: Some(samples.len()),
        reference: Scores {
            path: ref_path.display().to_string(),
            ppl: None,
            tokens_per_second: None,
            samples_per_second: Some(n / ref_secs.max(1e-9)),
            accuracy: labels.as_ref().map(|_| ref_correct as f64 / n),
        },
        candidate: cand_path.map(|p| Scores {
            path: p.display().to_string(),
            ppl: None,
            tokens_per_second: None,
            samples_per_second: Some(n / cand_secs.max(1e-9)),
            accuracy: labels.as_ref().map(|_| cand_correct as f64 / n),
        }),
        delta: candidate.map(|_| Delta {
            ppl_increase: None,
            kld: want(Metric::Kld).then(|| kl.mean_kld()),
            top1_agreement: want(Metric::Top1).then(|| kl.top1_agreement()),
            top1_agreement_confident: (want(Metric::Top1) && confident > 0)
                .then(|| confident_agree as f64 / confident as f64),
            cosine_mean: None,
            cosine_min: None,
        }),
        gates,
        passed,
    })
}

/// Mean-pooled sentence embeddings from a BERT-family model or an ONNX
/// encoder graph (inputs `input_ids`, `attention_mask`, optionally
/// `token_type_ids`; its first output the last hidden state).
enum Embedder {
    Family(Box<Runtime>),
    Graph(edgec_core::runtime::graph::GraphRuntime),
}

impl Embedder {
    fn new(model: &Model, opts: &RuntimeOptions) -> Result<Self> {
        Ok(match &model.graph {
            Some(g) => {
                if !g.inputs.iter().any(|v| v.name == "input_ids") {
                    bail!("the graph has no input_ids input; it is not a text encoder");
                }
                Embedder::Graph(edgec_core::runtime::graph::GraphRuntime::new(model)?)
            }
            None => Embedder::Family(Box::new(Runtime::new(model, opts)?)),
        })
    }

    fn embed(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let rt = match self {
            Embedder::Family(rt) => return Ok(rt.embed(ids)?),
            Embedder::Graph(rt) => rt,
        };
        use candle_core::{Device, Tensor};
        let n = ids.len();
        let ids_t = Tensor::from_vec(
            ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
            (1, n),
            &Device::Cpu,
        )?;
        let mut inputs = vec![("input_ids", ids_t)];
        for v in rt.inputs() {
            match v.name.as_str() {
                "attention_mask" => inputs.push((
                    "attention_mask",
                    Tensor::ones((1, n), candle_core::DType::I64, &Device::Cpu)?,
                )),
                "token_type_ids" => inputs.push((
                    "token_type_ids",
                    Tensor::zeros((1, n), candle_core::DType::I64, &Device::Cpu)?,
                )),
                _ => {}
            }
        }
        let out = rt.run(&inputs)?;
        let (_, hidden) = out.into_iter().next().context("the graph has no output")?;
        let (_, s, d) = hidden.dims3()?;
        let v: Vec<f32> = hidden
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let mut pooled = vec![0f32; d];
        for row in v.chunks_exact(d) {
            for (p, x) in pooled.iter_mut().zip(row) {
                *p += x / s as f32;
            }
        }
        Ok(pooled)
    }
}
