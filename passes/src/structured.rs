//! Structured pruning: which units (FFN neurons, heads) to keep, and the
//! smaller matrices that remain once the others are cut out.

/// The indices of the `keep` most important units, in their original
/// order; ties keep the lower index.
pub fn keep_most_important(importance: &[f32], keep: usize) -> Vec<usize> {
    let mut idx = order_by_importance(importance);
    idx.truncate(keep);
    idx.sort_unstable();
    idx
}

/// Every index, most important first; ties keep the lower index first.
pub fn order_by_importance(importance: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..importance.len()).collect();
    idx.sort_by(|&a, &b| importance[b].total_cmp(&importance[a]).then(a.cmp(&b)));
    idx
}

/// A data-free importance of FFN neuron j: ‖gate_j‖·‖up_j‖·‖down_{·,j}‖
/// (its input rows and output column; a neuron with any of them zero adds
/// nothing to the output). `gate`, `up`: `[inter, hidden]`; `down`:
/// `[hidden, inter]`.
pub fn ffn_magnitude_importance(gate: &[f32], up: &[f32], down: &[f32], inter: usize) -> Vec<f32> {
    let hidden = gate.len().checked_div(inter).unwrap_or(0);
    let norm =
        |v: &mut dyn Iterator<Item = f32>| v.map(|x| (x as f64) * (x as f64)).sum::<f64>().sqrt();
    (0..inter)
        .map(|j| {
            let g = norm(&mut gate[j * hidden..(j + 1) * hidden].iter().copied());
            let u = norm(&mut up[j * hidden..(j + 1) * hidden].iter().copied());
            let d = norm(&mut (0..hidden).map(|r| down[r * inter + j]));
            (g * u * d) as f32
        })
        .collect()
}

/// Per-layer unit counts under one global budget (non-uniform structured
/// pruning). `scores[l]` holds layer l's unit scores (comparable across
/// layers); units are taken `step` at a time, highest first, so every layer
/// keeps a multiple of `step` units, at least `floor`. Greedy on the summed
/// score of each layer's next `step` units, which is optimal for a sum
/// because those sums only fall. Returns the count per layer, summing to
/// `total` when `total` is a multiple of `step` and reachable.
pub fn allocate(scores: &[Vec<f32>], step: usize, floor: usize, total: usize) -> Vec<usize> {
    let sorted: Vec<Vec<f32>> = scores
        .iter()
        .map(|s| {
            let mut s = s.clone();
            s.sort_by(|a, b| b.total_cmp(a));
            s
        })
        .collect();
    allocate_in_order(&sorted, step, floor, total)
}

/// [`allocate`] for units already in the order each layer keeps them
/// (`values[l][k]`: what layer l's k-th unit is worth), e.g. ranked by one
/// measure and valued by another.
pub fn allocate_in_order(
    sorted: &[Vec<f32>],
    step: usize,
    floor: usize,
    total: usize,
) -> Vec<usize> {
    let mut kept: Vec<usize> = sorted.iter().map(|s| floor.min(s.len())).collect();
    let mut left = total.saturating_sub(kept.iter().sum());
    while left >= step {
        let best = sorted
            .iter()
            .enumerate()
            .filter(|(l, s)| kept[*l] + step <= s.len())
            .map(|(l, s)| {
                let gain: f64 = s[kept[l]..kept[l] + step].iter().map(|&v| v as f64).sum();
                (l, gain)
            })
            // ties go to the earlier layer, for determinism
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
        let Some((l, _)) = best else { break };
        kept[l] += step;
        left -= step;
    }
    kept
}

/// The `drop` layers whose output is most like their input (highest
/// cosine: the least block influence), in ascending order.
pub fn least_influential_layers(block_cosine: &[f64], drop: usize) -> Vec<usize> {
    let as_f32: Vec<f32> = block_cosine.iter().map(|&c| -c as f32).collect();
    let keep = keep_most_important(&as_f32, block_cosine.len().saturating_sub(drop));
    (0..block_cosine.len())
        .filter(|l| !keep.contains(l))
        .collect()
}

/// Sums consecutive runs of `width` values: per-channel scores to per-head
/// (or per-group) scores.
pub fn sum_runs(values: &[f32], width: usize) -> Vec<f32> {
    values
        .chunks(width.max(1))
        .map(|c| c.iter().map(|&v| v as f64).sum::<f64>() as f32)
        .collect()
}

/// The Euclidean norm of each column of a row-major matrix with rows of `cols`.
pub fn column_norms(w: &[f32], cols: usize) -> Vec<f32> {
    let mut sq = vec![0f64; cols];
    for row in w.chunks(cols) {
        for (s, &v) in sq.iter_mut().zip(row) {
            *s += (v as f64) * (v as f64);
        }
    }
    sq.into_iter().map(|v| v.sqrt() as f32).collect()
}

/// The Euclidean norm of each row of a row-major matrix with rows of `cols`.
pub fn row_norms(w: &[f32], cols: usize) -> Vec<f32> {
    w.chunks(cols)
        .map(|r| {
            r.iter()
                .map(|&v| (v as f64) * (v as f64))
                .sum::<f64>()
                .sqrt() as f32
        })
        .collect()
}

/// The units (e.g. heads of `width` rows each) `keep` expanded to row indices.
pub fn unit_rows(keep: &[usize], width: usize) -> Vec<usize> {
    keep.iter()
        .flat_map(|&u| u * width..(u + 1) * width)
        .collect()
}

/// Rows `keep` of a row-major matrix with rows of `cols`.
pub fn select_rows(w: &[f32], cols: usize, keep: &[usize]) -> Vec<f32> {
    keep.iter()
        .flat_map(|&r| w[r * cols..(r + 1) * cols].iter().copied())
        .collect()
}

/// Columns `keep` of a row-major matrix with rows of `cols`.
pub fn select_cols(w: &[f32], cols: usize, keep: &[usize]) -> Vec<f32> {
    w.chunks(cols)
        .flat_map(|row| keep.iter().map(move |&c| row[c]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_important_are_kept_in_order() {
        assert_eq!(
            keep_most_important(&[0.5, 2.0, 0.1, 2.0, 1.0], 3),
            vec![1, 3, 4]
        );
        assert_eq!(keep_most_important(&[1.0, 1.0, 1.0], 2), vec![0, 1]);
    }

    #[test]
    fn rows_and_columns_are_cut_out() {
        let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(select_rows(&w, 3, &[1]), vec![4.0, 5.0, 6.0]);
        assert_eq!(select_cols(&w, 3, &[0, 2]), vec![1.0, 3.0, 4.0, 6.0]);
    }

    #[test]
    fn allocation_follows_the_scores_in_steps() {
        // layer 0's units are worth more: it gets the extra steps
        let scores = vec![vec![9.0, 8.0, 7.0, 6.0], vec![5.0, 1.0, 1.0, 1.0]];
        assert_eq!(allocate(&scores, 1, 1, 5), vec![4, 1]);
        assert_eq!(allocate(&scores, 2, 2, 4), vec![2, 2]);
        assert_eq!(allocate(&scores, 2, 2, 6), vec![4, 2]);
        // a layer never gives more than it has
        assert_eq!(allocate(&scores, 1, 1, 8), vec![4, 4]);
    }

    #[test]
    fn the_layers_that_change_least_are_dropped() {
        assert_eq!(
            least_influential_layers(&[0.5, 0.99, 0.7, 0.98], 2),
            vec![1, 3]
        );
        assert_eq!(
            least_influential_layers(&[0.5, 0.9], 0),
            Vec::<usize>::new()
        );
    }

    #[test]
    fn norms_and_runs() {
        let w = [3.0, 0.0, 4.0, 1.0];
        assert_eq!(row_norms(&w, 2), vec![3.0, 4.0_f32.hypot(1.0)]);
        assert_eq!(column_norms(&w, 2), vec![5.0, 1.0]);
        assert_eq!(sum_runs(&[1.0, 2.0, 3.0, 4.0], 2), vec![3.0, 7.0]);
        assert_eq!(unit_rows(&[0, 2], 2), vec![0, 1, 4, 5]);
    }

    #[test]
    fn a_neuron_without_an_output_is_worth_nothing() {
        let (hidden, inter) = (3, 2);
        let gate = vec![1.0; inter * hidden];
        let up = vec![1.0; inter * hidden];
        let down = vec![1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
        let imp = ffn_magnitude_importance(&gate, &up, &down, inter);
        assert!(imp[0] > 0.0);
        assert_eq!(imp[1], 0.0);
    }
}
