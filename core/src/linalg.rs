//! Dense f32 matrix products on gemm's kernels, on the current rayon pool.

/// gemm's parallelism for the current rayon pool.
fn parallelism() -> gemm::Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

/// `dst[i, j] = Σ_c x[i, c]·w[j, c]` for `i < m`, `j < rows`, with `dst`'s
/// rows `ld` apart; gemm never reads `dst` (read_dst false).
///
/// # Safety
/// `x` holds `[m, k]`, `w` `[rows, k]`, and `dst` is valid for writes of
/// `m` rows of `rows` floats at stride `ld`.
pub unsafe fn gemm_nt_into(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    rows: usize,
    dst: *mut f32,
    ld: usize,
) {
    gemm::gemm(
        m,
        rows,
        k,
        dst,
        1,
        ld as isize,
        false,
        x.as_ptr(),
        1,
        k as isize,
        // rhs = wᵀ, [k, rows]: element (r, c) is w[c, r]
        w.as_ptr(),
        k as isize,
        1,
        0.0,
        1.0,
        false,
        false,
        false,
        parallelism(),
    );
}

/// `a · bᵀ` for row-major `a` `[m, k]` and `b` `[n, k]`: `[m, n]`.
///
/// # Panics
/// When `a` or `b` is shorter than its shape.
pub fn matmul_nt(a: &[f32], m: usize, k: usize, b: &[f32], n: usize) -> Vec<f32> {
    assert!(
        a.len() >= m * k && b.len() >= n * k,
        "matmul_nt: operands too short"
    );
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: shapes checked above; `out` has room for m·n floats, all of
    // which gemm writes (row stride n) before the length is set.
    unsafe {
        gemm_nt_into(a, m, k, b, n, out.as_mut_ptr(), n);
        out.set_len(m * n);
    }
    out
}

/// `acc += Σ_t x_t·x_tᵀ` over rows `t = 0, step, 2·step, …` of row-major
/// `x` `[rows, cols]`; `acc` is row-major `[cols, cols]`. Returns the rows
/// summed.
///
/// # Panics
/// When `x` or `acc` is shorter than its shape, or `step` is 0.
pub fn gram_accumulate(x: &[f32], rows: usize, cols: usize, step: usize, acc: &mut [f32]) -> usize {
    assert!(step > 0, "gram_accumulate: step 0");
    assert!(
        x.len() >= rows * cols && acc.len() >= cols * cols,
        "gram_accumulate: operands too short"
    );
    let n = rows.div_ceil(step);
    if n == 0 || cols == 0 {
        return 0;
    }
    // SAFETY: lhs = xᵀ over the chosen rows ([cols, n]: element (i, t) at
    // x[t·step·cols + i]), rhs = those rows ([n, cols]); the largest index
    // read is (n−1)·step·cols + cols − 1 < rows·cols. acc is [cols, cols],
    // read and written (read_dst, alpha 1).
    unsafe {
        gemm::gemm(
            cols,
            cols,
            n,
            acc.as_mut_ptr(),
            1,
            cols as isize,
            true,
            x.as_ptr(),
            (step * cols) as isize,
            1,
            x.as_ptr(),
            1,
            (step * cols) as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism(),
        );
    }
    n
}

#[cfg(test)]
mod tests {
    #[test]
    fn gram_accumulate_matches_loops() {
        let (rows, cols, step) = (7, 4, 2);
        let x: Vec<f32> = (0..rows * cols).map(|i| (i % 9) as f32 - 4.0).collect();
        let mut acc = vec![1f32; cols * cols];
        assert_eq!(super::gram_accumulate(&x, rows, cols, step, &mut acc), 4);
        for i in 0..cols {
            for j in 0..cols {
                let want: f32 = 1.0
                    + (0..rows)
                        .step_by(step)
                        .map(|t| x[t * cols + i] * x[t * cols + j])
                        .sum::<f32>();
                assert_eq!(acc[i * cols + j], want);
            }
        }
    }

    #[test]
    fn matmul_nt_matches_loops() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 - 2.0).collect();
        let c = super::matmul_nt(&a, m, k, &b, n);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|c| a[i * k + c] * b[j * k + c]).sum();
                assert!((c[i * n + j] - want).abs() < 1e-4);
            }
        }
    }
}
