//! The metrics `edgec eval` reports: perplexity as llama.cpp's
//! llama-perplexity computes it, KL-divergence and top-1 agreement against
//! reference logits (llama-perplexity's `--kl-divergence`), cosine
//! similarity and top-1 accuracy.
//!
//! llama-perplexity evaluates consecutive chunks of `n_ctx` tokens (the first
//! token of each replaced by BOS when the model adds BOS) and scores the
//! second half of each: with `first = n_ctx / 2`, the logits at positions
//! `first ..= n_ctx - 2` predict the tokens at `first + 1 ..= n_ctx - 1`,
//! `n_ctx - 1 - first` tokens per chunk. The negative log-likelihood of a
//! token is `-(logit[tok] - max - ln Σ exp(logit - max))`, the exponentials in
//! f32 and their sum in f64, accumulated in f64 over all scored tokens of all
//! chunks; PPL = exp(mean). The KL-divergence and top-1 agreement use the same
//! positions.

use rayon::prelude::*;

/// A mean and its standard error, as llama.cpp prints `value ± stderr`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Stats {
    pub mean: f64,
    pub stderr: f64,
}

/// The first scored position of a chunk of `n_ctx` tokens.
pub fn first_scored(n_ctx: usize) -> usize {
    n_ctx / 2
}

/// The number of tokens scored in a chunk of `n_ctx` tokens.
pub fn scored_per_chunk(n_ctx: usize) -> usize {
    n_ctx.saturating_sub(1 + first_scored(n_ctx))
}

fn check_rows(what: &str, logits: &[f32], vocab: usize) -> usize {
    assert!(vocab > 0, "{what}: a vocabulary of 0 tokens");
    assert!(
        logits.len().is_multiple_of(vocab),
        "{what}: {} logits are not rows of {vocab}",
        logits.len()
    );
    logits.len() / vocab
}

/// The maximum as C++'s `std::max` fold from the first element (NaNs aside).
fn max_of(row: &[f32]) -> f32 {
    row.iter().fold(row[0], |m, &v| if m < v { v } else { m })
}

/// The index of the largest value, the first one on ties (as llama.cpp).
/// 0 for an empty slice.
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate().skip(1) {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// The negative log-likelihood of `tok` under the softmax of `row`, computed
/// as llama.cpp's `log_softmax` (perplexity.cpp).
pub fn token_nll(row: &[f32], tok: usize) -> f64 {
    let max = max_of(row);
    let mut sum_exp = 0f64;
    for &l in row {
        sum_exp += f64::from((l - max).exp());
    }
    -(f64::from(row[tok] - max) - sum_exp.ln())
}

/// Accumulates llama-perplexity's perplexity over chunks.
#[derive(Debug, Clone, Default)]
pub struct PerplexityAccumulator {
    nll: f64,
    nll2: f64,
    count: usize,
}

impl PerplexityAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one chunk: `tokens` as evaluated (after the BOS replacement),
    /// `logits` row-major `[tokens.len(), vocab]`, the logits of every
    /// position. Scores positions `n_ctx / 2 ..= n_ctx - 2`.
    ///
    /// # Panics
    /// When `logits` does not hold `tokens.len()` rows of `vocab`, or a scored
    /// token is not below `vocab`.
    pub fn add_chunk(&mut self, logits: &[f32], vocab: usize, tokens: &[u32]) {
        let rows = check_rows("perplexity", logits, vocab);
        assert_eq!(
            rows,
            tokens.len(),
            "perplexity: {rows} rows of logits for {} tokens",
            tokens.len()
        );
        let first = first_scored(tokens.len());
        self.add_rows(&logits[first * vocab..], vocab, tokens, first);
    }

    /// As [`Self::add_chunk`], with only the logits of the scored half:
    /// rows for positions `n_ctx / 2 ..` (`n_ctx - n_ctx / 2` rows, or one
    /// fewer: the last position's logits are never used), as llama.cpp asks
    /// the model for them.
    ///
    /// # Panics
    /// As [`Self::add_chunk`].
    pub fn add_chunk_tail(&mut self, tail_logits: &[f32], vocab: usize, tokens: &[u32]) {
        let rows = check_rows("perplexity", tail_logits, vocab);
        let first = first_scored(tokens.len());
        let want = tokens.len() - first;
        assert!(
            rows == want || rows + 1 == want,
            "perplexity: {rows} rows of logits for the {want} positions from {first} of {} tokens",
            tokens.len()
        );
        self.add_rows(tail_logits, vocab, tokens, first);
    }

    /// `rows` holds the logits of positions `first ..`. Rows are scored in
    /// parallel and summed in order, so the result does not depend on the
    /// thread count.
    fn add_rows(&mut self, rows: &[f32], vocab: usize, tokens: &[u32], first: usize) {
        let last = tokens.len().saturating_sub(1);
        for j in first..last {
            let tok = tokens[j + 1] as usize;
            assert!(
                tok < vocab,
                "perplexity: token {tok} at position {} is outside the logits' vocabulary of {vocab}",
                j + 1
            );
        }
        let nlls: Vec<f64> = (first..last)
            .into_par_iter()
            .map(|j| {
                let row = &rows[(j - first) * vocab..(j - first + 1) * vocab];
                token_nll(row, tokens[j + 1] as usize)
            })
            .collect();
        for v in nlls {
            self.nll += v;
            self.nll2 += v * v;
            self.count += 1;
        }
    }

    /// Adds the sums of another accumulator (for chunks evaluated apart).
    pub fn merge(&mut self, other: &PerplexityAccumulator) {
        self.nll += other.nll;
        self.nll2 += other.nll2;
        self.count += other.count;
    }

    /// The number of scored tokens.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The mean negative log-likelihood (NaN before any token is scored).
    pub fn nll_mean(&self) -> f64 {
        self.nll / self.count as f64
    }

    /// exp(mean nll): llama-perplexity's "Final estimate: PPL".
    pub fn ppl(&self) -> f64 {
        self.nll_mean().exp()
    }

    /// The mean nll and its standard error.
    pub fn nll_stats(&self) -> Stats {
        let n = self.count as f64;
        let mean = self.nll / n;
        let var = self.nll2 / n - mean * mean;
        let stderr = if var > 0.0 && self.count > 1 {
            (var / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        Stats { mean, stderr }
    }

    /// PPL ± its uncertainty, as llama-perplexity prints them.
    pub fn ppl_stats(&self) -> Stats {
        let s = self.nll_stats();
        let ppl = s.mean.exp();
        Stats {
            mean: ppl,
            stderr: s.stderr * ppl,
        }
    }
}

/// llama.cpp's `mean_and_uncertainty`.
fn mean_and_uncertainty(sum: f64, sum2: f64, count: usize) -> Stats {
    if count == 0 {
        return Stats {
            mean: f64::NAN,
            stderr: 0.0,
        };
    }
    let n = count as f64;
    let mean = sum / n;
    let var = sum2 / n - mean * mean;
    let stderr = if var > 0.0 && count > 10 {
        (var / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    Stats { mean, stderr }
}

/// KL(p || q) of the softmaxes of two rows, in f64, and whether their
/// largest entries are the same.
fn kl_row(r: &[f32], c: &[f32]) -> (f64, bool) {
    let (rmax, cmax) = (f64::from(max_of(r)), f64::from(max_of(c)));
    let sum_r: f64 = r.iter().map(|&v| (f64::from(v) - rmax).exp()).sum();
    let sum_c: f64 = c.iter().map(|&v| (f64::from(v) - cmax).exp()).sum();
    let (lse_r, lse_c) = (sum_r.ln(), sum_c.ln());
    let mut kl = 0f64;
    for (&x, &y) in r.iter().zip(c) {
        let lp = f64::from(x) - rmax - lse_r;
        let p = lp.exp();
        if p > 0.0 {
            kl += p * (lp - (f64::from(y) - cmax - lse_c));
        }
    }
    (kl, argmax(r) == argmax(c))
}

/// Compares a candidate's logits with a reference's at the scored positions:
/// KL(reference ‖ candidate) and top-1 agreement (llama-perplexity's
/// `--kl-divergence` "Mean KLD" and "Same top p").
///
/// Computed exactly in f64 from both sets of logits; llama.cpp stores the
/// reference as 16-bit quantized log-probabilities and drops reference
/// probabilities below e^-16, which changes the KLD in its last digits.
#[derive(Debug, Clone, Default)]
pub struct KlAccumulator {
    sum_kld: f64,
    sum_kld2: f64,
    max_kld: f64,
    same_top: usize,
    count: usize,
}

impl KlAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one chunk: both logits row-major `[n, vocab]` for the same `n`
    /// positions; scores rows `first ..= n - 2` (the positions perplexity
    /// scores; `first` is `n_ctx / 2` for a full chunk). The last row is not
    /// scored, as in llama.cpp.
    ///
    /// # Panics
    /// When the two do not hold the same number of rows of `vocab`.
    pub fn add_chunk(
        &mut self,
        ref_logits: &[f32],
        cand_logits: &[f32],
        vocab: usize,
        first: usize,
    ) {
        let rows = check_rows("kl-divergence (reference)", ref_logits, vocab);
        self.add_range(
            ref_logits,
            cand_logits,
            vocab,
            first..rows.saturating_sub(1),
        );
    }

    /// Adds every row of `[n, classes]` logits (a classifier's outputs).
    ///
    /// # Panics
    /// When the two do not hold the same number of rows of `vocab`.
    pub fn add_rows(&mut self, ref_logits: &[f32], cand_logits: &[f32], vocab: usize) {
        let rows = check_rows("kl-divergence (reference)", ref_logits, vocab);
        self.add_range(ref_logits, cand_logits, vocab, 0..rows);
    }

    fn add_range(
        &mut self,
        ref_logits: &[f32],
        cand_logits: &[f32],
        vocab: usize,
        range: std::ops::Range<usize>,
    ) {
        let rows = check_rows("kl-divergence (reference)", ref_logits, vocab);
        let cand_rows = check_rows("kl-divergence (candidate)", cand_logits, vocab);
        assert_eq!(
            rows, cand_rows,
            "kl-divergence: {rows} reference rows, {cand_rows} candidate rows"
        );
        let per_row: Vec<(f64, bool)> = range
            .into_par_iter()
            .map(|j| {
                kl_row(
                    &ref_logits[j * vocab..(j + 1) * vocab],
                    &cand_logits[j * vocab..(j + 1) * vocab],
                )
            })
            .collect();
        for (kl, same) in per_row {
            self.sum_kld += kl;
            self.sum_kld2 += kl * kl;
            self.max_kld = self.max_kld.max(kl);
            self.same_top += usize::from(same);
            self.count += 1;
        }
    }

    /// Adds the sums of another accumulator.
    pub fn merge(&mut self, other: &KlAccumulator) {
        self.sum_kld += other.sum_kld;
        self.sum_kld2 += other.sum_kld2;
        self.max_kld = self.max_kld.max(other.max_kld);
        self.same_top += other.same_top;
        self.count += other.count;
    }

    /// The number of positions compared.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Mean KL(reference ‖ candidate) in nats (NaN before any position).
    pub fn mean_kld(&self) -> f64 {
        self.sum_kld / self.count as f64
    }

    /// The largest KL-divergence of one position.
    pub fn max_kld(&self) -> f64 {
        self.max_kld
    }

    /// Mean KLD ± its uncertainty (as llama.cpp: 0 up to 10 positions).
    pub fn kld_stats(&self) -> Stats {
        mean_and_uncertainty(self.sum_kld, self.sum_kld2, self.count)
    }

    /// The fraction (0 to 1) of positions where both predict the same token.
    pub fn top1_agreement(&self) -> f64 {
        self.same_top as f64 / self.count as f64
    }

    /// Top-1 agreement ± its binomial uncertainty, as fractions.
    pub fn top1_stats(&self) -> Stats {
        let p = self.top1_agreement();
        let stderr = if self.count > 1 {
            (p * (1.0 - p) / (self.count - 1) as f64).sqrt()
        } else {
            0.0
        };
        Stats { mean: p, stderr }
    }
}

/// Cosine similarity in f64. Two all-zero vectors are identical (1); one
/// all-zero vector against another is 0.
///
/// # Panics
/// When the lengths differ.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "cosine of vectors of different lengths");
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    match (aa == 0.0, bb == 0.0) {
        (true, true) => 1.0,
        (true, false) | (false, true) => 0.0,
        _ => ab / (aa.sqrt() * bb.sqrt()),
    }
}

/// The fraction (0 to 1) of predictions equal to their labels; NaN when
/// there are none.
///
/// # Panics
/// When the lengths differ.
pub fn top1_accuracy(pred: &[usize], labels: &[usize]) -> f64 {
    assert_eq!(
        pred.len(),
        labels.len(),
        "{} predictions for {} labels",
        pred.len(),
        labels.len()
    );
    let right = pred.iter().zip(labels).filter(|(p, l)| p == l).count();
    right as f64 / pred.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random f32 in [-scale, scale).
    fn lcg(seed: &mut u64, scale: f32) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    }

    fn random_logits(n: usize, vocab: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed;
        (0..n * vocab).map(|_| lcg(&mut s, scale)).collect()
    }

    /// The textbook computation: softmax probabilities in f64.
    fn naive_ppl(chunks: &[(Vec<f32>, Vec<u32>)], vocab: usize) -> (f64, usize) {
        let (mut nll, mut n) = (0f64, 0usize);
        for (logits, tokens) in chunks {
            let n_ctx = tokens.len();
            for j in n_ctx / 2..n_ctx - 1 {
                let row: Vec<f64> = logits[j * vocab..(j + 1) * vocab]
                    .iter()
                    .map(|&v| v as f64)
                    .collect();
                let z: f64 = row.iter().map(|v| v.exp()).sum();
                let p = row[tokens[j + 1] as usize].exp() / z;
                nll -= p.ln();
                n += 1;
            }
        }
        ((nll / n as f64).exp(), n)
    }

    #[test]
    fn perplexity_equals_the_direct_computation() {
        let (vocab, n_ctx) = (37, 16);
        let mut chunks = vec![];
        let mut seed = 7u64;
        for c in 0..3 {
            let logits = random_logits(n_ctx, vocab, 100 + c, 4.0);
            let tokens: Vec<u32> = (0..n_ctx)
                .map(|_| (lcg(&mut seed, 1.0).abs() * vocab as f32) as u32 % vocab as u32)
                .collect();
            chunks.push((logits, tokens));
        }
        let mut acc = PerplexityAccumulator::new();
        for (l, t) in &chunks {
            acc.add_chunk(l, vocab, t);
        }
        let (want, n) = naive_ppl(&chunks, vocab);
        assert_eq!(acc.count(), n);
        assert_eq!(n, 3 * (n_ctx - 1 - n_ctx / 2));
        assert!(
            (acc.ppl() - want).abs() / want < 1e-6,
            "{} vs {want}",
            acc.ppl()
        );
        assert!((acc.nll_mean() - want.ln()).abs() < 1e-6);
        assert!((acc.ppl_stats().mean - acc.ppl()).abs() < 1e-12);
        assert!(acc.ppl_stats().stderr > 0.0);

        // the tail form gives the same
        let mut tail = PerplexityAccumulator::new();
        for (l, t) in &chunks {
            tail.add_chunk_tail(&l[n_ctx / 2 * vocab..], vocab, t);
            // without the unused last row too
            let mut one = PerplexityAccumulator::new();
            one.add_chunk_tail(&l[n_ctx / 2 * vocab..(n_ctx - 1) * vocab], vocab, t);
            assert_eq!(one.count(), n_ctx - 1 - n_ctx / 2);
        }
        assert_eq!(tail.ppl(), acc.ppl());
    }

    #[test]
    fn perplexity_of_uniform_logits_is_the_vocabulary_size() {
        let (vocab, n_ctx) = (50, 9);
        let logits = vec![0.25f32; n_ctx * vocab];
        let tokens: Vec<u32> = (0..n_ctx as u32).collect();
        let mut acc = PerplexityAccumulator::new();
        acc.add_chunk(&logits, vocab, &tokens);
        assert_eq!(acc.count(), 9 - 1 - 4);
        assert!((acc.ppl() - 50.0).abs() < 1e-9, "{}", acc.ppl());
        // odd n_ctx: first = 4, scored rows 4..=7
        assert_eq!(scored_per_chunk(9), 4);
        assert_eq!(scored_per_chunk(512), 255);
    }

    #[test]
    fn perplexity_uses_only_the_scored_half() {
        let (vocab, n_ctx) = (5, 8);
        let mut logits = random_logits(n_ctx, vocab, 3, 2.0);
        let tokens = vec![1u32, 2, 3, 4, 0, 1, 2, 3];
        let mut a = PerplexityAccumulator::new();
        a.add_chunk(&logits, vocab, &tokens);
        // the first half and the last row do not matter
        for v in &mut logits[..n_ctx / 2 * vocab] {
            *v = 99.0;
        }
        for v in &mut logits[(n_ctx - 1) * vocab..] {
            *v = -99.0;
        }
        let mut b = PerplexityAccumulator::new();
        b.add_chunk(&logits, vocab, &tokens);
        assert_eq!(a.ppl(), b.ppl());
    }

    #[test]
    fn merge_adds_chunks() {
        let (vocab, n_ctx) = (11, 10);
        let l1 = random_logits(n_ctx, vocab, 1, 3.0);
        let l2 = random_logits(n_ctx, vocab, 2, 3.0);
        let t: Vec<u32> = (0..n_ctx as u32).collect();
        let mut all = PerplexityAccumulator::new();
        all.add_chunk(&l1, vocab, &t);
        all.add_chunk(&l2, vocab, &t);
        let (mut a, mut b) = (PerplexityAccumulator::new(), PerplexityAccumulator::new());
        a.add_chunk(&l1, vocab, &t);
        b.add_chunk(&l2, vocab, &t);
        a.merge(&b);
        assert_eq!(a.count(), all.count());
        assert!((a.ppl() - all.ppl()).abs() < 1e-12);
    }

    #[test]
    #[should_panic(expected = "outside the logits' vocabulary")]
    fn token_outside_vocabulary_panics_with_a_message() {
        let mut acc = PerplexityAccumulator::new();
        acc.add_chunk(&[0.0; 8], 2, &[0, 1, 1, 5]);
    }

    #[test]
    fn kl_of_identical_logits_is_zero_and_top1_is_full() {
        let (vocab, n) = (64, 12);
        let l = random_logits(n, vocab, 9, 6.0);
        let mut kl = KlAccumulator::new();
        kl.add_chunk(&l, &l, vocab, n / 2);
        assert_eq!(kl.count(), n - 1 - n / 2);
        assert_eq!(kl.mean_kld(), 0.0);
        assert_eq!(kl.max_kld(), 0.0);
        assert_eq!(kl.top1_agreement(), 1.0);
        assert_eq!(kl.top1_stats().stderr, 0.0);
        // shifting logits by a constant changes nothing
        let shifted: Vec<f32> = l.iter().map(|v| v + 3.0).collect();
        let mut k2 = KlAccumulator::new();
        k2.add_chunk(&l, &shifted, vocab, 0);
        assert!(k2.mean_kld().abs() < 1e-12, "{}", k2.mean_kld());
        assert_eq!(k2.top1_agreement(), 1.0);
    }

    #[test]
    fn kl_of_known_distributions_equals_the_closed_form() {
        // p = (1/2, 1/4, 1/4), q = (1/4, 1/4, 1/2) as logits ln p, ln q:
        // KL(p||q) = 1/2 ln 2 + 0 + 1/4 ln(1/2) = 1/4 ln 2
        let p = [0.5f64, 0.25, 0.25];
        let q = [0.25f64, 0.25, 0.5];
        let lp: Vec<f32> = p.iter().map(|v| v.ln() as f32).collect();
        let lq: Vec<f32> = q.iter().map(|v| v.ln() as f32).collect();
        // two rows: the first is scored, the last never is
        let r = [lp.clone(), lp.clone()].concat();
        let c = [lq.clone(), lq.clone()].concat();
        let mut kl = KlAccumulator::new();
        kl.add_chunk(&r, &c, 3, 0);
        assert_eq!(kl.count(), 1);
        let want = 0.25 * std::f64::consts::LN_2;
        assert!(
            (kl.mean_kld() - want).abs() < 1e-7,
            "{} vs {want}",
            kl.mean_kld()
        );
        assert_eq!(kl.top1_agreement(), 0.0);

        // Bernoulli: KL(B(a)||B(b)) = a ln(a/b) + (1-a) ln((1-a)/(1-b))
        let (a, b) = (0.9f64, 0.6f64);
        let row = |x: f64| vec![x.ln() as f32, (1.0 - x).ln() as f32];
        let mut k2 = KlAccumulator::new();
        k2.add_chunk(&[row(a), row(a)].concat(), &[row(b), row(b)].concat(), 2, 0);
        let want = a * (a / b).ln() + (1.0 - a) * ((1.0 - a) / (1.0 - b)).ln();
        assert!(
            (k2.mean_kld() - want).abs() < 1e-7,
            "{} vs {want}",
            k2.mean_kld()
        );
        assert_eq!(k2.top1_agreement(), 1.0);

        // the mean over positions
        let mut both = k2.clone();
        both.merge(&kl);
        assert_eq!(both.count(), 2);
        let mean = (0.25 * std::f64::consts::LN_2 + want) / 2.0;
        assert!((both.mean_kld() - mean).abs() < 1e-7);
        assert_eq!(both.top1_agreement(), 0.5);
    }

    #[test]
    fn kl_is_not_symmetric_and_is_reference_first() {
        let p = [0.7f32.ln(), 0.2f32.ln(), 0.1f32.ln()];
        let q = [0.1f32.ln(), 0.3f32.ln(), 0.6f32.ln()];
        let mut pq = KlAccumulator::new();
        pq.add_chunk(&[p, p].concat(), &[q, q].concat(), 3, 0);
        let want: f64 = [(0.7f64, 0.1f64), (0.2, 0.3), (0.1, 0.6)]
            .iter()
            .map(|(a, b)| a * (a / b).ln())
            .sum();
        assert!((pq.mean_kld() - want).abs() < 1e-6);
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[5.0]), 0);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn cosine_and_accuracy() {
        assert!((cosine(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]) - 1.0).abs() < 1e-12);
        assert!(cosine(&[1.0, 0.0], &[0.0, 1.0]).abs() < 1e-12);
        assert!((cosine(&[1.0, 0.0], &[-1.0, 0.0]) + 1.0).abs() < 1e-12);
        let c = cosine(&[1.0, 1.0], &[1.0, 0.0]);
        assert!((c - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12);
        assert_eq!(cosine(&[0.0, 0.0], &[0.0, 0.0]), 1.0);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        assert_eq!(top1_accuracy(&[1, 2, 3, 4], &[1, 2, 0, 4]), 0.75);
        assert!(top1_accuracy(&[], &[]).is_nan());
    }

    #[test]
    fn stats_follow_llama_cpp() {
        let mut acc = PerplexityAccumulator::new();
        // nlls of 1 and 3 on a uniform 2-token vocabulary are not possible;
        // use two rows with different probabilities of the scored token
        let vocab = 2;
        let tokens = [0u32, 0, 0, 0, 1, 0];
        // first = 3: rows 3 and 4 predict tokens 4 (1) and 5 (0)
        let mut logits = vec![0f32; 6 * vocab];
        logits[3 * vocab..4 * vocab].copy_from_slice(&[0.0, 1.0]);
        logits[4 * vocab..5 * vocab].copy_from_slice(&[0.0, 2.0]);
        acc.add_chunk(&logits, vocab, &tokens);
        let n1 = token_nll(&[0.0, 1.0], 1);
        let n2 = token_nll(&[0.0, 2.0], 0);
        let mean = (n1 + n2) / 2.0;
        let var = (n1 * n1 + n2 * n2) / 2.0 - mean * mean;
        let s = acc.nll_stats();
        assert!((s.mean - mean).abs() < 1e-12);
        assert!((s.stderr - var.sqrt()).abs() < 1e-12);
        assert!((n1 - (1.0 + (-1f64).exp()).ln()).abs() < 1e-6);
    }
}
