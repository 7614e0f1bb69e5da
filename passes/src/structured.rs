//! Structured pruning: which units (FFN neurons, heads) to keep, and the
//! smaller matrices that remain once the others are cut out.

/// The indices of the `keep` most important units, in their original
/// order; ties keep the lower index.
pub fn keep_most_important(importance: &[f32], keep: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..importance.len()).collect();
    idx.sort_by(|&a, &b| importance[b].total_cmp(&importance[a]).then(a.cmp(&b)));
    idx.truncate(keep);
    idx.sort_unstable();
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
