//! Mixed precision under a size budget: how much each candidate type of a
//! weight costs the layer's output (its sensitivity), and the choice of one
//! type per weight that meets a byte budget with the least summed cost.
//!
//! Sensitivity of weight `W` under type `t`: with `Q` the weight as the
//! calibrated quantizer rounds it to `t` (importance-weighted, with error
//! feedback when a Hessian is given) and `G = E[x·xᵀ]` the Gram matrix of
//! the layer's input, the expected increase of the layer's squared output
//! error per token, `Σ_rows (w − q)ᵀ G (w − q)` ([`Proxy::Gram`]), or its
//! diagonal approximation `Σ_rows Σ_j E[x_j²] (w_j − q_j)²` ([`Proxy::Diag`]).
//! It is measured on an even sample of rows and scaled to the whole tensor.
//!
//! Allocation ([`allocate`]): each weight's candidates reduced to the lower
//! convex hull of (bytes, error); every weight starts at its cheapest hull
//! point, then the upgrade with the largest error reduction per byte is
//! taken while it fits, an upgrade that does not fit retiring its weight.
//! The popped slopes never increase, which makes the summed error
//! non-increasing in the budget; ties break by weight index, so the result
//! is deterministic.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use edgec_core::ggml::dequant::dequantize;
use edgec_core::GgmlType;

use crate::ggml_quant::quantize_row;
use crate::gptq::Hessian;
use crate::presets::fallback;

/// The k-quant ladder (and Q8_0) candidates are drawn from, lowest first.
pub const LADDER: [GgmlType; 6] = [
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::Q8_0,
];

/// The candidate types of a weight whose rows have `row_len` elements:
/// [`LADDER`], each through the presets' fallback for rows that are not
/// whole super-blocks (Q2_K/Q3_K → IQ4_NL, Q4_K → Q5_0, Q5_K → Q5_1,
/// Q6_K → Q8_0), deduplicated, in order of bits per weight. Empty when no
/// block type fits (rows that are not a multiple of 32 stay F16).
pub fn candidates(row_len: usize) -> Vec<GgmlType> {
    let mut out: Vec<GgmlType> = Vec::new();
    for ty in LADDER {
        let t = fallback(ty, row_len);
        if t.is_quantized() && !out.contains(&t) {
            out.push(t);
        }
    }
    out.sort_by(|a, b| bits(*a).total_cmp(&bits(*b)));
    out
}

/// Bits per weight of a block type.
pub fn bits(ty: GgmlType) -> f64 {
    ty.type_size() as f64 * 8.0 / ty.block_size() as f64
}

/// How a candidate's error is weighed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxy {
    /// `Σ (w − q)ᵀ G (w − q)`, the full Gram matrix of the input (from the
    /// GPTQ Hessian's factor; the diagonal where there is no Hessian).
    Gram,
    /// `Σ_j E[x_j²] (w_j − q_j)²`, the Gram matrix's diagonal (the importance).
    Diag,
    /// `Σ F (w − q)²`, the weights' diagonal Fisher information.
    Fisher,
    /// The Gram error of each row weighed by the row's share of the Fisher.
    Kfac,
}

/// One candidate's measured errors over the sampled rows, by each proxy
/// (and unweighted), so one measurement serves every comparison.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Errors {
    /// Σ ‖w − q‖² (no activations).
    pub plain: f64,
    /// Σ_j imp_j (w_j − q_j)² (the importance; `plain` without one).
    pub diag: f64,
    /// Σ (w − q)ᵀ G (w − q) (`diag` without a Hessian).
    pub gram: f64,
    /// Σ F (w − q)², F the diagonal Fisher information of the weights
    /// (squared loss gradients; `gram` without one).
    pub fisher: f64,
    /// Σ_rows γ_row (w − q)ᵀ G (w − q), γ_row = Σ_j F_j / Σ_j G_jj over the
    /// row: the Gram error weighed by how much the row's output moves the
    /// loss (a Kronecker-factored Fisher; `gram` without one).
    pub kfac: f64,
}

impl Errors {
    pub fn get(&self, proxy: Proxy) -> f64 {
        match proxy {
            Proxy::Gram => self.gram,
            Proxy::Diag => self.diag,
            Proxy::Fisher => self.fisher,
            Proxy::Kfac => self.kfac,
        }
    }

    pub fn scaled(&self, k: f64) -> Errors {
        Errors {
            plain: self.plain * k,
            diag: self.diag * k,
            gram: self.gram * k,
            fisher: self.fisher * k,
            kfac: self.kfac * k,
        }
    }
}

/// `n` rows of `row_count` spread evenly (all of them when `n >= row_count`).
pub fn sample_rows(row_count: usize, n: usize) -> Vec<usize> {
    if n >= row_count {
        return (0..row_count).collect();
    }
    (0..n)
        .map(|i| i * row_count / n + row_count / (2 * n))
        .collect()
}

/// The errors of `rows` (row-major, rows of `row_len`) rounded to each of
/// `types` the way the writer will round them: with error feedback through
/// `hessian` when given, else by `importance` (per column). `fisher`: the
/// rows' Fisher information (same layout as `rows`), for those proxies.
pub fn candidate_errors(
    rows: &[f32],
    row_len: usize,
    types: &[GgmlType],
    importance: Option<&[f32]>,
    hessian: Option<&Hessian>,
    fisher: Option<&[f32]>,
) -> Result<Vec<Errors>, String> {
    if row_len == 0 || !rows.len().is_multiple_of(row_len) {
        return Err(format!(
            "{} values are not whole rows of {row_len}",
            rows.len()
        ));
    }
    if importance.is_some_and(|i| i.len() != row_len) {
        return Err(format!("importance does not have {row_len} values"));
    }
    if hessian.is_some_and(|h| h.cols() != row_len) {
        return Err(format!("the Hessian is not {row_len} columns wide"));
    }
    if fisher.is_some_and(|f| f.len() != rows.len()) {
        return Err("the Fisher information does not match the rows".into());
    }
    // γ per row: the row's Fisher over its input energy
    let gamma: Option<Vec<f64>> = fisher.map(|f| {
        let energy: f64 = match importance {
            Some(imp) => imp.iter().map(|&v| v.max(0.0) as f64).sum(),
            None => row_len as f64,
        };
        f.chunks_exact(row_len)
            .map(|r| r.iter().map(|&v| v as f64).sum::<f64>() / energy.max(1e-30))
            .collect()
    });
    let mut bytes = Vec::new();
    let mut decoded = vec![0f32; rows.len()];
    types
        .iter()
        .map(|&ty| {
            bytes.clear();
            match hessian {
                Some(h) => h.quantize_rows(ty, rows, importance, &mut bytes),
                None => rows
                    .chunks_exact(row_len)
                    .try_for_each(|r| quantize_row(ty, r, importance, &mut bytes)),
            }
            .map_err(|e| e.to_string())?;
            dequantize(ty, &bytes, &mut decoded).map_err(|e| e.to_string())?;
            let mut err: Vec<f32> = rows.iter().zip(&decoded).map(|(w, q)| w - q).collect();
            let plain = err.iter().map(|&e| (e as f64) * (e as f64)).sum::<f64>();
            let diag = match importance {
                Some(imp) => err
                    .chunks_exact(row_len)
                    .flat_map(|r| r.iter().zip(imp))
                    .map(|(&e, &i)| (e as f64) * (e as f64) * i.max(0.0) as f64)
                    .sum(),
                None => plain,
            };
            let fisher_err = match fisher {
                Some(f) => err
                    .iter()
                    .zip(f)
                    .map(|(&e, &v)| (e as f64) * (e as f64) * v.max(0.0) as f64)
                    .sum(),
                None => f64::NAN,
            };
            let per_row: Vec<f64> = match hessian {
                Some(h) => h.output_errors(&mut err),
                None => err
                    .chunks_exact(row_len)
                    .map(|r| match importance {
                        Some(imp) => r
                            .iter()
                            .zip(imp)
                            .map(|(&e, &i)| (e as f64) * (e as f64) * i.max(0.0) as f64)
                            .sum(),
                        None => r.iter().map(|&e| (e as f64) * (e as f64)).sum(),
                    })
                    .collect(),
            };
            let gram: f64 = per_row.iter().sum();
            let (fisher, kfac) = match &gamma {
                Some(g) => (fisher_err, per_row.iter().zip(g).map(|(e, g)| e * g).sum()),
                None => (gram, gram),
            };
            Ok(Errors {
                plain,
                diag,
                gram,
                fisher,
                kfac,
            })
        })
        .collect()
}

/// One option of a weight: its bytes and its error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    pub bytes: u64,
    pub error: f64,
}

/// The chosen option of every weight, with the totals.
#[derive(Debug, Clone, PartialEq)]
pub struct Allocation {
    /// Per weight, the index of its chosen option.
    pub choice: Vec<usize>,
    pub bytes: u64,
    pub error: f64,
}

/// Why a budget cannot be met.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("the budget of {budget} bytes is below the smallest choice, {min} bytes")]
    TooSmall { budget: u64, min: u64 },
    #[error("a weight has no options")]
    NoOptions,
}

/// Indices of the lower convex hull of `opts` over (bytes, error): the
/// cheapest option first, then options that lower the error at a
/// decreasing rate per byte. Dominated options (more bytes, no less
/// error) are never on it.
pub fn hull(opts: &[Cost]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..opts.len()).collect();
    order.sort_by(|&a, &b| {
        opts[a]
            .bytes
            .cmp(&opts[b].bytes)
            .then(opts[a].error.total_cmp(&opts[b].error))
            .then(a.cmp(&b))
    });
    let mut h: Vec<usize> = Vec::new();
    for i in order {
        let p = opts[i];
        if let Some(&last) = h.last() {
            // same bytes, or no better: dominated
            if opts[last].bytes == p.bytes
                || p.error.partial_cmp(&opts[last].error) != Some(Ordering::Less)
            {
                continue;
            }
        }
        while h.len() >= 2 {
            let (a, b) = (opts[h[h.len() - 2]], opts[h[h.len() - 1]]);
            let cross = (b.bytes - a.bytes) as f64 * (p.error - a.error)
                - (b.error - a.error) * (p.bytes - a.bytes) as f64;
            if cross <= 0.0 {
                h.pop();
            } else {
                break;
            }
        }
        h.push(i);
    }
    h
}

/// An upgrade of weight `tensor` from hull step `step` to `step + 1`.
struct Upgrade {
    slope: f64,
    tensor: usize,
    step: usize,
}

impl PartialEq for Upgrade {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Upgrade {}
impl PartialOrd for Upgrade {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Upgrade {
    // the max-heap pops the steepest first, then the lowest weight index
    fn cmp(&self, o: &Self) -> Ordering {
        self.slope
            .total_cmp(&o.slope)
            .then(o.tensor.cmp(&self.tensor))
            .then(o.step.cmp(&self.step))
    }
}

/// Chooses one option per weight so that the bytes stay within `budget`
/// and the summed error is as low as the greedy hull walk gets it (see the
/// module's notes). Fails when even the cheapest options exceed it.
pub fn allocate(weights: &[Vec<Cost>], budget: u64) -> Result<Allocation, AllocError> {
    let hulls: Vec<Vec<usize>> = weights.iter().map(|o| hull(o)).collect();
    if hulls.iter().any(Vec::is_empty) {
        return Err(AllocError::NoOptions);
    }
    let opt = |t: usize, step: usize| weights[t][hulls[t][step]];
    let upgrade = |t: usize, step: usize| -> Option<Upgrade> {
        (step + 1 < hulls[t].len()).then(|| {
            let (a, b) = (opt(t, step), opt(t, step + 1));
            Upgrade {
                slope: (a.error - b.error) / (b.bytes - a.bytes) as f64,
                tensor: t,
                step,
            }
        })
    };
    let mut steps = vec![0usize; weights.len()];
    let min: u64 = (0..weights.len()).map(|t| opt(t, 0).bytes).sum();
    if min > budget {
        return Err(AllocError::TooSmall { budget, min });
    }
    let mut used = min;
    let mut heap: BinaryHeap<Upgrade> = (0..weights.len()).filter_map(|t| upgrade(t, 0)).collect();
    while let Some(u) = heap.pop() {
        let (a, b) = (opt(u.tensor, u.step), opt(u.tensor, u.step + 1));
        let extra = b.bytes - a.bytes;
        if used + extra > budget {
            continue; // this weight stays where it is
        }
        used += extra;
        steps[u.tensor] = u.step + 1;
        if let Some(next) = upgrade(u.tensor, u.step + 1) {
            heap.push(next);
        }
    }
    let choice: Vec<usize> = steps
        .iter()
        .enumerate()
        .map(|(t, &s)| hulls[t][s])
        .collect();
    let error = choice
        .iter()
        .enumerate()
        .map(|(t, &c)| weights[t][c].error)
        .sum();
    Ok(Allocation {
        choice,
        bytes: used,
        error,
    })
}

/// The largest bytes any choice takes (every weight at its largest hull point).
pub fn max_bytes(weights: &[Vec<Cost>]) -> u64 {
    weights
        .iter()
        .map(|o| hull(o).last().map_or(0, |&i| o[i].bytes))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (no dependency).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Weights like a model's: a few sizes, errors falling ~4x per extra bit
    /// with noise, some options dominated.
    fn instance(seed: u64, n: usize) -> Vec<Vec<Cost>> {
        let mut r = Lcg(seed);
        (0..n)
            .map(|_| {
                let params = [65_536u64, 147_456, 442_368, 884_736][(r.next() * 4.0) as usize];
                let sens = 10f64.powf(r.next() * 4.0 - 2.0);
                [2.625, 3.4375, 4.5, 5.0, 5.5, 6.5625, 8.5]
                    .iter()
                    .map(|&b: &f64| Cost {
                        bytes: (params as f64 * b / 8.0) as u64,
                        error: sens * 4f64.powf(-b) * (0.7 + 0.6 * r.next()),
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn candidates_follow_the_fallbacks() {
        use GgmlType::*;
        assert_eq!(candidates(1536), vec![Q2K, Q3K, Q4K, Q5K, Q6K, Q8_0]);
        assert_eq!(candidates(576), vec![Iq4Nl, Q5_0, Q5_1, Q8_0]);
        assert!(candidates(20).is_empty());
    }

    #[test]
    fn hull_drops_dominated_and_concave_points() {
        let c = |bytes, error| Cost { bytes, error };
        // 1 is dominated by 0; 3 lies above the chord from 2 to 4
        let opts = [c(10, 8.0), c(12, 9.0), c(20, 4.0), c(30, 3.5), c(40, 0.5)];
        assert_eq!(hull(&opts), vec![0, 2, 4]);
        assert_eq!(hull(&[c(5, 1.0), c(5, 0.5)]), vec![1]);
    }

    #[test]
    fn meets_the_budget_within_one_percent() {
        for seed in 0..20 {
            let w = instance(seed, 200);
            let (lo, hi) = (w.iter().map(|o| o[0].bytes).sum::<u64>(), max_bytes(&w));
            for k in 1..10 {
                let budget = lo + (hi - lo) * k / 10;
                let a = allocate(&w, budget).unwrap();
                let bytes: u64 = a
                    .choice
                    .iter()
                    .enumerate()
                    .map(|(t, &c)| w[t][c].bytes)
                    .sum();
                assert_eq!(bytes, a.bytes);
                assert!(bytes <= budget, "seed {seed}: {bytes} > {budget}");
                assert!(
                    bytes as f64 >= 0.99 * budget as f64,
                    "seed {seed}: {bytes} < 99% of {budget}"
                );
            }
            assert!(matches!(
                allocate(&w, lo - 1),
                Err(AllocError::TooSmall { .. })
            ));
            let top = allocate(&w, hi).unwrap();
            assert_eq!(top.bytes, hi);
        }
    }

    #[test]
    fn more_budget_never_adds_error() {
        for seed in 0..10 {
            let w = instance(100 + seed, 120);
            let lo = w.iter().map(|o| o[0].bytes).sum::<u64>();
            let hi = max_bytes(&w);
            let mut last = f64::INFINITY;
            for k in 0..=400 {
                let a = allocate(&w, lo + (hi - lo) * k / 400).unwrap();
                assert!(
                    a.error <= last * (1.0 + 1e-12),
                    "seed {seed}, step {k}: {} > {last}",
                    a.error
                );
                last = a.error;
            }
        }
    }

    #[test]
    fn is_deterministic_and_breaks_ties_by_index() {
        let w = instance(7, 300);
        let budget = (w.iter().map(|o| o[0].bytes).sum::<u64>() + max_bytes(&w)) / 2;
        assert_eq!(allocate(&w, budget).unwrap(), allocate(&w, budget).unwrap());
        // two identical weights, room for one upgrade: the first gets it
        let c = |bytes, error| Cost { bytes, error };
        let same = vec![vec![c(10, 4.0), c(20, 1.0)]; 2];
        assert_eq!(allocate(&same, 30).unwrap().choice, vec![1, 0]);
    }

    #[test]
    fn greedy_is_near_the_exact_optimum_on_small_cases() {
        // brute force over every combination of 4 weights x 7 options
        for seed in 0..30 {
            let w = instance(1000 + seed, 4);
            let lo = w.iter().map(|o| o[0].bytes).sum::<u64>();
            let hi = max_bytes(&w);
            let budget = lo + (hi - lo) / 2;
            let mut best = f64::INFINITY;
            for code in 0..7usize.pow(4) {
                let pick: Vec<usize> = (0..4).map(|t| code / 7usize.pow(t as u32) % 7).collect();
                let bytes: u64 = pick.iter().enumerate().map(|(t, &c)| w[t][c].bytes).sum();
                if bytes <= budget {
                    best = best.min(pick.iter().enumerate().map(|(t, &c)| w[t][c].error).sum());
                }
            }
            let got = allocate(&w, budget).unwrap().error;
            assert!(got >= best * (1.0 - 1e-12));
            // the hull walk can miss the knapsack optimum by at most one
            // upgrade; with 4 weights that is a bounded factor
            assert!(got <= best * 20.0, "seed {seed}: {got} vs {best}");
        }
    }

    #[test]
    fn errors_shrink_with_bits_and_the_gram_proxy_sees_correlated_inputs() {
        let row_len = 256;
        let mut r = Lcg(3);
        let rows: Vec<f32> = (0..8 * row_len).map(|_| (r.next() - 0.5) as f32).collect();
        // inputs whose channels move together in pairs
        let mut gram = vec![0f32; row_len * row_len];
        for i in 0..row_len {
            gram[i * row_len + i] = 1.0 + (i % 7) as f32;
            let j = i ^ 1;
            gram[i * row_len + j] = 0.5;
        }
        let imp: Vec<f32> = (0..row_len).map(|i| gram[i * row_len + i]).collect();
        let h = Hessian::new(gram.clone(), row_len, 0.0).unwrap();
        let types = candidates(row_len);
        let e = candidate_errors(&rows, row_len, &types, Some(&imp), Some(&h), None).unwrap();
        for w in e.windows(2) {
            assert!(w[1].gram < w[0].gram, "{e:?}");
        }
        // without a Hessian, the Gram proxy is the diagonal one
        let d = candidate_errors(&rows, row_len, &types, Some(&imp), None, None).unwrap();
        assert!(d.iter().all(|x| (x.gram - x.diag).abs() <= 1e-12 * x.diag));
        // a Fisher of γ·G_jj in every row makes the kfac proxy γ times the Gram one
        let fisher: Vec<f32> = (0..rows.len()).map(|i| 3.0 * imp[i % row_len]).collect();
        let f =
            candidate_errors(&rows, row_len, &types, Some(&imp), Some(&h), Some(&fisher)).unwrap();
        for (a, b) in f.iter().zip(&e) {
            assert!(
                (a.kfac - 3.0 * b.gram).abs() <= 1e-9 * a.kfac,
                "{a:?} vs {b:?}"
            );
            assert!(
                (a.fisher - 3.0 * b.diag).abs() <= 1e-6 * a.fisher,
                "{a:?} vs {b:?}"
            );
        }
        // the Gram proxy of a plain round trip equals eᵀ G e computed directly
        let mut q = vec![0f32; row_len];
        crate::ggml_quant::round_trip(GgmlType::Q4K, &rows[..row_len], Some(&imp), &mut q).unwrap();
        let err: Vec<f32> = rows[..row_len].iter().zip(&q).map(|(w, q)| w - q).collect();
        let direct: f64 = (0..row_len)
            .flat_map(|i| (0..row_len).map(move |j| (i, j)))
            .map(|(i, j)| err[i] as f64 * gram[i * row_len + j] as f64 * err[j] as f64)
            .sum();
        let mut e2 = err.clone();
        let via_factor = h.output_error(&mut e2);
        assert!(
            (via_factor - direct).abs() <= 1e-3 * direct,
            "{via_factor} vs {direct}"
        );
    }
}
