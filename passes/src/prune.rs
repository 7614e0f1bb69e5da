//! Unstructured and N:M sparsity of one linear weight `[rows (outputs),
//! cols (inputs)]`: which weights to drop (by magnitude or by Wanda's
//! |w|·‖x‖ score) and SparseGPT's update of the weights that stay.
//!
//! Ties between equal scores go to the lower index, so a mask depends on
//! the values only, never on the thread count.

use crate::gptq::Hessian;

/// How many weights to drop.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sparsity {
    /// This fraction of the weights (0 < f < 1).
    Fraction(f64),
    /// `n` of every `m` consecutive inputs of a row (2:4, 4:8).
    NM { n: usize, m: usize },
}

impl Sparsity {
    /// Checks the request, in words a user can act on.
    pub fn check(&self) -> Result<(), String> {
        match *self {
            Sparsity::Fraction(f) if !(f > 0.0 && f < 1.0) => Err(format!(
                "sparsity {f}: must be between 0 and 1, both excluded"
            )),
            Sparsity::NM { n, m } if n == 0 || m == 0 || n >= m => Err(format!(
                "pattern {n}:{m}: want N:M with 0 < N < M (e.g. 2:4, 4:8)"
            )),
            _ => Ok(()),
        }
    }

    /// Parses `N:M`.
    pub fn parse_pattern(s: &str) -> Result<Sparsity, String> {
        let bad = || format!("pattern {s:?}: want N:M, e.g. 2:4");
        let (n, m) = s.split_once(':').ok_or_else(bad)?;
        let p = Sparsity::NM {
            n: n.trim().parse().map_err(|_| bad())?,
            m: m.trim().parse().map_err(|_| bad())?,
        };
        p.check()?;
        Ok(p)
    }

    /// Checks that a weight with rows of `cols` inputs can take the pattern.
    pub fn fits(&self, cols: usize) -> Result<(), String> {
        match *self {
            Sparsity::NM { n, m } if !cols.is_multiple_of(m) => Err(format!(
                "{cols} inputs per row are not a multiple of {m} ({n}:{m})"
            )),
            _ => Ok(()),
        }
    }
}

/// Indices of the `k` lowest scores (ties: the lower index first).
fn lowest(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    let key = |&i: &usize| (scores[i], i);
    if k < idx.len() {
        idx.select_nth_unstable_by(k, |a, b| {
            let (sa, ia) = key(a);
            let (sb, ib) = key(b);
            sa.total_cmp(&sb).then(ia.cmp(&ib))
        });
    }
    idx.truncate(k);
    idx
}

/// The mask (true: dropped) for `scores` laid out like the weight:
/// a fraction is taken within each row (Wanda compares weights of one
/// output), a pattern within each group of `m` inputs of a row.
pub fn mask_per_row(scores: &[f32], cols: usize, s: Sparsity) -> Vec<bool> {
    let mut mask = vec![false; scores.len()];
    if cols == 0 {
        return mask;
    }
    let group = match s {
        Sparsity::Fraction(_) => cols,
        Sparsity::NM { m, .. } => m,
    };
    for (g, chunk) in scores.chunks(group).enumerate() {
        let k = match s {
            Sparsity::Fraction(f) => (f * chunk.len() as f64).round() as usize,
            Sparsity::NM { n, .. } => n.min(chunk.len()),
        };
        for i in lowest(chunk, k) {
            mask[g * group + i] = true;
        }
    }
    mask
}

/// The mask over the whole tensor at once (magnitude pruning per layer):
/// a fraction of all the weights; a pattern is per row as always.
pub fn mask_per_tensor(scores: &[f32], cols: usize, s: Sparsity) -> Vec<bool> {
    match s {
        Sparsity::Fraction(f) => {
            let mut mask = vec![false; scores.len()];
            let k = (f * scores.len() as f64).round() as usize;
            for i in lowest(scores, k) {
                mask[i] = true;
            }
            mask
        }
        Sparsity::NM { .. } => mask_per_row(scores, cols, s),
    }
}

/// The threshold that drops the `k` smallest |w| over several weights at
/// once (global magnitude pruning), without holding them together: |w|'s
/// f32 bits order like its values, so two passes of a 65536-bin histogram
/// (high half of the bits, then the low half within the chosen bin) find
/// the k-th smallest exactly. `for_each` calls back with every weight's
/// values, in the same order on both passes. Returns the threshold value
/// and how many weights equal to it are dropped (the first ones met, in
/// that order); weights below it are all dropped.
pub fn global_threshold(
    k: usize,
    mut for_each: impl FnMut(&mut dyn FnMut(&[f32])),
) -> (f32, usize) {
    let key = |v: f32| v.abs().to_bits();
    let mut high = vec![0usize; 1 << 16];
    for_each(&mut |w| {
        for &v in w {
            high[(key(v) >> 16) as usize] += 1;
        }
    });
    // the bin holding the k-th smallest (0-based k; k = total drops nothing)
    let (mut below, mut bin) = (0usize, None);
    for (b, &n) in high.iter().enumerate() {
        if below + n > k {
            bin = Some(b as u32);
            break;
        }
        below += n;
    }
    let Some(bin) = bin else {
        return (f32::INFINITY, 0);
    };
    let mut low = vec![0usize; 1 << 16];
    for_each(&mut |w| {
        for &v in w {
            if key(v) >> 16 == bin {
                low[(key(v) & 0xffff) as usize] += 1;
            }
        }
    });
    for (l, &n) in low.iter().enumerate() {
        if below + n > k {
            return (f32::from_bits((bin << 16) | l as u32), k - below);
        }
        below += n;
    }
    unreachable!("the bin holds the k-th value")
}

/// The mask of one weight under a global threshold; `ties` counts the
/// weights equal to the threshold still to drop, across calls.
pub fn mask_below(w: &[f32], threshold: f32, ties: &mut usize) -> Vec<bool> {
    w.iter()
        .map(|v| {
            let a = v.abs();
            if a < threshold {
                true
            } else if a == threshold && *ties > 0 {
                *ties -= 1;
                true
            } else {
                false
            }
        })
        .collect()
}

/// |w| (magnitude pruning's score).
pub fn magnitude_scores(w: &[f32]) -> Vec<f32> {
    w.iter().map(|v| v.abs()).collect()
}

/// Wanda's score |w_ij|·‖x_j‖₂, with `input_norms` the ℓ2 norm of each
/// input over the calibration tokens.
pub fn wanda_scores(w: &[f32], input_norms: &[f32]) -> Vec<f32> {
    let cols = input_norms.len();
    w.iter()
        .enumerate()
        .map(|(i, v)| v.abs() * input_norms[i % cols])
        .collect()
}

/// OWL (Outlier Weighed Layerwise sparsity, Yin et al. 2023): each layer
/// (a model block) gets its own sparsity from its share of outliers, the
/// layers with more outliers keeping more weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Owl {
    /// A score is an outlier above `m` times its layer's mean score.
    pub m: f64,
    /// The layers' sparsities stay within the target ± `lambda`.
    pub lambda: f64,
}

impl Owl {
    /// The paper's outlier threshold M.
    pub const M: f64 = 5.0;
    /// The paper's λ for LLaMA (0.08).
    pub const LAMBDA: f64 = 0.08;

    /// Checks the parameters against a target sparsity, in words a user can
    /// act on.
    pub fn check(&self, target: f64) -> Result<(), String> {
        if !(self.m.is_finite() && self.m > 0.0) {
            return Err(format!("M = {}: must be a positive number", self.m));
        }
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            return Err(format!(
                "lambda = {}: must be 0 or more (e.g. 0.08)",
                self.lambda
            ));
        }
        if !(target - self.lambda > 0.0 && target + self.lambda < 1.0) {
            return Err(format!(
                "lambda = {}: the layers' sparsities {target} ± {} must stay between 0 and 1, both excluded",
                self.lambda, self.lambda
            ));
        }
        Ok(())
    }
}

/// A layer's outlier ratio D (OWL's layerwise outlier distribution): the
/// fraction of its scores (Wanda's |w|·‖x‖ over all of the layer's weights
/// together) above `m` times their mean.
pub fn outlier_ratio(scores: &[Vec<f32>], m: f64) -> f64 {
    let count: usize = scores.iter().map(Vec::len).sum();
    if count == 0 {
        return 0.0;
    }
    let mean = scores
        .iter()
        .flat_map(|s| s.iter())
        .map(|&v| v as f64)
        .sum::<f64>()
        / count as f64;
    let above = scores
        .iter()
        .flat_map(|s| s.iter())
        .filter(|&&v| v as f64 > m * mean)
        .count();
    above as f64 / count as f64
}

/// OWL's per-layer sparsities from the layers' outlier ratios: linear in
/// the ratio, more outliers giving a lower sparsity, with mean `target`
/// and every layer within `target ± lambda`:
/// `s_l = target − lambda · (D_l − mean D) / max_k |D_k − mean D|`, so the
/// layer farthest from the mean lands on the band's edge. (The authors'
/// script maps the ratios min-to-max onto a span of 2λ and recentres it on
/// the target, which leaves the band when the ratios are skewed; this keeps
/// both of the paper's constraints.) Equal ratios give every layer the
/// target.
pub fn owl_sparsities(ratios: &[f64], target: f64, lambda: f64) -> Vec<f64> {
    if ratios.is_empty() {
        return vec![];
    }
    let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
    let spread = ratios
        .iter()
        .map(|d| (d - mean).abs())
        .fold(0.0f64, f64::max);
    ratios
        .iter()
        .map(|d| {
            if spread > 0.0 {
                target - lambda * (d - mean) / spread
            } else {
                target
            }
        })
        .collect()
}

/// Zeroes the masked weights.
pub fn apply_mask(w: &mut [f32], mask: &[bool]) {
    for (v, &m) in w.iter_mut().zip(mask) {
        if m {
            *v = 0.0;
        }
    }
}

/// SparseGPT (Frantar & Alistarh, 2023): columns in blocks of `block`,
/// left to right. In each block the mask takes the weights with the lowest
/// w² / U_jj² (a fraction of the block's weights, or `n` of every `m`
/// inputs of a row); each column's dropped weights are zeroed and their
/// error, over U's diagonal, moves the row's later columns by the optimal
/// brain surgeon update — GPTQ's machinery with a mask for a quantizer.
/// Returns the mask; `w` (row-major `[rows, h.cols()]`) is updated in place.
pub fn sparsegpt(w: &mut [f32], h: &Hessian, s: Sparsity, block: usize) -> Vec<bool> {
    let cols = h.cols();
    let u = h.factor();
    let rows = w.len().checked_div(cols).unwrap_or(0);
    let mut mask = vec![false; w.len()];
    let block = match s {
        // a pattern group must not straddle two blocks
        Sparsity::NM { m, .. } => block.div_ceil(m) * m,
        Sparsity::Fraction(_) => block,
    }
    .max(1);
    let mut err = vec![0f32; rows * block];
    for c0 in (0..cols).step_by(block) {
        let c1 = (c0 + block).min(cols);
        let width = c1 - c0;
        if let Sparsity::Fraction(f) = s {
            // one threshold for the block's weights of every row, as the
            // reference does
            let wv: &[f32] = w;
            let scores: Vec<f32> = (0..rows)
                .flat_map(|r| {
                    (c0..c1).map(move |j| {
                        let d = u[j * cols + j];
                        let v = wv[r * cols + j];
                        v * v / (d * d)
                    })
                })
                .collect();
            let k = (f * scores.len() as f64).round() as usize;
            for i in lowest(&scores, k) {
                mask[(i / width) * cols + c0 + i % width] = true;
            }
        }
        for r in 0..rows {
            let wr = &mut w[r * cols..(r + 1) * cols];
            let errs = &mut err[r * block..r * block + width];
            for j in c0..c1 {
                if let Sparsity::NM { n, m } = s {
                    if (j - c0).is_multiple_of(m) {
                        // the group's scores with the errors pushed so far
                        let scores: Vec<f32> = (j..j + m)
                            .map(|c| {
                                let d = u[c * cols + c];
                                wr[c] * wr[c] / (d * d)
                            })
                            .collect();
                        for i in lowest(&scores, n) {
                            mask[r * cols + j + i] = true;
                        }
                    }
                }
                let e = if mask[r * cols + j] {
                    let e = wr[j] / u[j * cols + j];
                    wr[j] = 0.0;
                    e
                } else {
                    0.0
                };
                errs[j - c0] = e;
                if e != 0.0 {
                    for (x, &uv) in wr[j + 1..c1]
                        .iter_mut()
                        .zip(&u[j * cols + j + 1..j * cols + c1])
                    {
                        *x -= e * uv;
                    }
                }
            }
        }
        if c1 < cols {
            // W[:, c1..] −= E · U[c0..c1, c1..]
            edgec_core::linalg::sub_matmul(
                &mut w[c1..],
                cols,
                &err,
                block,
                &u[c0 * cols + c1..],
                cols,
                rows,
                width,
                cols - c1,
            );
        }
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(s: &mut u64) -> f32 {
        *s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    }

    #[test]
    fn patterns_drop_exactly_n_of_every_m() {
        let mut s = 7;
        let w: Vec<f32> = (0..16 * 64).map(|_| lcg(&mut s)).collect();
        for (n, m) in [(2, 4), (4, 8), (1, 4)] {
            let mask = mask_per_row(&magnitude_scores(&w), 64, Sparsity::NM { n, m });
            for g in mask.chunks(m) {
                assert_eq!(g.iter().filter(|&&d| d).count(), n);
            }
        }
    }

    #[test]
    fn fractions_drop_the_smallest() {
        let w = [0.5, -0.1, 0.3, -0.7, 0.02, 0.0, 0.9, -0.04];
        let mask = mask_per_tensor(&magnitude_scores(&w), 4, Sparsity::Fraction(0.5));
        assert_eq!(mask, [false, true, false, false, true, true, false, true]);
        // per row: the two smallest of each row of 4
        let mask = mask_per_row(&magnitude_scores(&w), 4, Sparsity::Fraction(0.5));
        assert_eq!(mask, [false, true, true, false, true, true, false, false]);
    }

    #[test]
    fn the_global_threshold_drops_exactly_k_smallest() {
        let mut s = 11;
        let mut ws: Vec<Vec<f32>> = (0..3)
            .map(|i| (0..100 + 37 * i).map(|_| lcg(&mut s)).collect())
            .collect();
        // ties across tensors
        ws[0][5] = 0.25;
        ws[1][7] = -0.25;
        ws[2][9] = 0.25;
        let mut all: Vec<(f32, usize, usize)> = ws
            .iter()
            .enumerate()
            .flat_map(|(t, w)| w.iter().enumerate().map(move |(i, v)| (v.abs(), t, i)))
            .collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0).then((a.1, a.2).cmp(&(b.1, b.2))));
        for k in [0, 1, 50, 150, all.len() - 1, all.len()] {
            let (th, mut ties) = global_threshold(k, |f| ws.iter().for_each(|w| f(w)));
            let masks: Vec<Vec<bool>> = ws.iter().map(|w| mask_below(w, th, &mut ties)).collect();
            let dropped: std::collections::HashSet<(usize, usize)> = masks
                .iter()
                .enumerate()
                .flat_map(|(t, m)| {
                    m.iter()
                        .enumerate()
                        .filter(|x| *x.1)
                        .map(move |(i, _)| (t, i))
                })
                .collect();
            let want: std::collections::HashSet<(usize, usize)> =
                all[..k].iter().map(|&(_, t, i)| (t, i)).collect();
            assert_eq!(dropped, want, "k = {k}");
        }
    }

    #[test]
    fn wanda_weighs_by_the_input_norm() {
        // the large weight on a silent input goes first
        let w = [1.0, 0.1, 0.2, 0.3];
        let mask = mask_per_row(
            &wanda_scores(&w, &[0.01, 1.0, 1.0, 1.0]),
            4,
            Sparsity::Fraction(0.25),
        );
        assert_eq!(mask, [true, false, false, false]);
    }

    #[test]
    fn owl_keeps_the_mean_and_the_band_and_orders_by_outliers() {
        let mut s = 5;
        for (target, lambda) in [(0.5, 0.08), (0.7, 0.08), (0.3, 0.2)] {
            for n in [2, 3, 7, 30] {
                // skewed ratios: a few layers with many outliers
                let ratios: Vec<f64> = (0..n)
                    .map(|i| {
                        let r = (lcg(&mut s) as f64 + 0.5) * 0.01;
                        if i % 5 == 0 {
                            r * 10.0
                        } else {
                            r
                        }
                    })
                    .collect();
                let sp = owl_sparsities(&ratios, target, lambda);
                let mean = sp.iter().sum::<f64>() / n as f64;
                assert!((mean - target).abs() < 1e-12, "mean {mean} vs {target}");
                for &x in &sp {
                    assert!(x >= target - lambda - 1e-12 && x <= target + lambda + 1e-12);
                }
                // the farthest layer is on the band's edge
                let far = sp.iter().map(|x| (x - target).abs()).fold(0.0f64, f64::max);
                assert!((far - lambda).abs() < 1e-12, "{far}");
                // more outliers, lower sparsity
                for i in 0..n {
                    for j in 0..n {
                        if ratios[i] > ratios[j] {
                            assert!(sp[i] < sp[j], "{ratios:?} -> {sp:?}");
                        }
                    }
                }
            }
        }
        // equal ratios: the target everywhere
        assert_eq!(owl_sparsities(&[0.01; 4], 0.5, 0.08), vec![0.5; 4]);
        // symmetric ratios: the band's two edges, as the authors' min-max map
        let sp = owl_sparsities(&[0.01, 0.02, 0.03], 0.5, 0.08);
        for (got, want) in sp.iter().zip([0.58, 0.5, 0.42]) {
            assert!((got - want).abs() < 1e-12, "{sp:?}");
        }
        assert!(Owl {
            m: 5.0,
            lambda: 0.08
        }
        .check(0.5)
        .is_ok());
        assert!(Owl {
            m: 5.0,
            lambda: 0.08
        }
        .check(0.95)
        .is_err());
        assert!(Owl {
            m: 0.0,
            lambda: 0.08
        }
        .check(0.5)
        .is_err());
        assert!(Owl {
            m: 5.0,
            lambda: -0.1
        }
        .check(0.5)
        .is_err());
    }

    #[test]
    fn outlier_ratio_counts_scores_above_m_times_the_mean() {
        // mean of all 10 scores = (8 × 1 + 2 × 21) / 10 = 5: two above 2 × 5
        let a = vec![1.0f32; 6];
        let b = vec![1.0, 1.0, 21.0, 21.0];
        assert_eq!(outlier_ratio(&[a.clone(), b.clone()], 2.0), 0.2);
        // the mean is over the layer's weights together, not each one's
        assert_eq!(outlier_ratio(&[a], 2.0), 0.0);
        assert_eq!(outlier_ratio(&[b], 5.0), 0.0);
        assert_eq!(outlier_ratio(&[], 5.0), 0.0);
    }

    #[test]
    fn bad_requests_say_what_is_allowed() {
        assert!(Sparsity::Fraction(1.0).check().is_err());
        assert!(Sparsity::Fraction(0.0).check().is_err());
        assert!(Sparsity::parse_pattern("4:2").is_err());
        assert!(Sparsity::parse_pattern("2:4").is_ok());
        assert!(Sparsity::parse_pattern("x").is_err());
        assert!(Sparsity::NM { n: 2, m: 4 }.fits(6).is_err());
    }

    #[test]
    fn sparsegpt_beats_plain_masking_on_the_output() {
        let (cols, rows, tokens) = (64, 8, 512);
        let mut s = 3;
        // correlated inputs: a few shared factors plus noise
        let x: Vec<f32> = (0..tokens)
            .flat_map(|_| {
                let f = [lcg(&mut s), lcg(&mut s)];
                (0..cols)
                    .map(|j| f[j % 2] * 2.0 + lcg(&mut s) * 0.3)
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut g = vec![0f32; cols * cols];
        for t in x.chunks(cols) {
            for i in 0..cols {
                for j in 0..cols {
                    g[i * cols + j] += t[i] * t[j] / tokens as f32;
                }
            }
        }
        let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut s)).collect();
        let h = Hessian::new(g.clone(), cols, 0.01).unwrap();
        let out_err = |wq: &[f32]| -> f64 {
            let mut e = 0.0;
            for t in x.chunks(cols) {
                for r in 0..rows {
                    let d: f32 = (0..cols)
                        .map(|c| (wq[r * cols + c] - w[r * cols + c]) * t[c])
                        .sum();
                    e += (d * d) as f64;
                }
            }
            e
        };
        for sp in [Sparsity::Fraction(0.5), Sparsity::NM { n: 2, m: 4 }] {
            let mut pruned = w.clone();
            let mask = sparsegpt(&mut pruned, &h, sp, 16);
            assert!(pruned.iter().zip(&mask).all(|(v, &m)| !m || *v == 0.0));
            let dropped = mask.iter().filter(|&&m| m).count();
            assert_eq!(dropped, rows * cols / 2, "{sp:?}");
            let mut plain = w.clone();
            apply_mask(&mut plain, &mask_per_row(&magnitude_scores(&w), cols, sp));
            assert!(
                out_err(&pruned) < 0.7 * out_err(&plain),
                "{sp:?}: {} vs {}",
                out_err(&pruned),
                out_err(&plain)
            );
        }
    }
}
