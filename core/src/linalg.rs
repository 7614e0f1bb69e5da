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

/// `dst[i, j] −= Σ_k a[i, k]·b[k, j]` for `i < m`, `j < n`, `k < inner`, on
/// row-major operands with row strides `ld_dst`, `ld_a`, `ld_b`. Runs on
/// the calling thread (for callers that are already parallel), so the
/// result does not depend on the thread count.
///
/// # Panics
/// When an operand is shorter than its shape and stride.
#[allow(clippy::too_many_arguments)]
pub fn sub_matmul(
    dst: &mut [f32],
    ld_dst: usize,
    a: &[f32],
    ld_a: usize,
    b: &[f32],
    ld_b: usize,
    m: usize,
    inner: usize,
    n: usize,
) {
    if m == 0 || n == 0 || inner == 0 {
        return;
    }
    let fits = |len: usize, rows: usize, ld: usize, cols: usize| {
        ld >= cols && len >= (rows - 1) * ld + cols
    };
    assert!(
        fits(dst.len(), m, ld_dst, n)
            && fits(a.len(), m, ld_a, inner)
            && fits(b.len(), inner, ld_b, n),
        "sub_matmul: operands too short"
    );
    // SAFETY: the asserts above bound every index gemm reads or writes:
    // dst (i, j) at i·ld_dst + j, a (i, k) at i·ld_a + k, b (k, j) at
    // k·ld_b + j.
    unsafe {
        gemm::gemm(
            m,
            n,
            inner,
            dst.as_mut_ptr(),
            1,
            ld_dst as isize,
            true,
            a.as_ptr(),
            1,
            ld_a as isize,
            b.as_ptr(),
            1,
            ld_b as isize,
            1.0,
            -1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `acc += Σ_t x_t·x_tᵀ` over rows `t = 0, step, 2·step, …` of row-major
/// `x` `[rows, cols]`; `acc` is row-major `[cols, cols]`. Returns the rows
/// summed.
///
/// Only the upper triangle (`i ≤ j`) is guaranteed: the product is
/// symmetric, so it is computed in bands of rows from the diagonal right,
/// about half the flops of the full product (what BLAS's syrk does; gemm
/// has no syrk). Entries below the diagonal are partly updated; call
/// [`mirror_upper`] before reading the whole matrix.
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
    // Bands of 128 rows keep gemm's kernels busy while skipping most of the
    // lower triangle.
    const BAND: usize = 128;
    for i0 in (0..cols).step_by(BAND) {
        let i1 = (i0 + BAND).min(cols);
        // SAFETY: lhs = xᵀ over the chosen rows, channels i0..i1 ([i1−i0, n]:
        // element (i, t) at x[t·step·cols + i0 + i]); rhs = those rows,
        // channels i0..cols ([n, cols−i0]: element (t, j) at
        // x[t·step·cols + i0 + j]); the largest index read is
        // (n−1)·step·cols + cols − 1 < rows·cols. dst = acc[i0.., i0..]
        // ([i1−i0, cols−i0], row stride cols), read and written (alpha 1).
        unsafe {
            gemm::gemm(
                i1 - i0,
                cols - i0,
                n,
                acc.as_mut_ptr().add(i0 * cols + i0),
                1,
                cols as isize,
                true,
                x.as_ptr().add(i0),
                (step * cols) as isize,
                1,
                x.as_ptr().add(i0),
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
    }
    n
}

/// Copies the upper triangle of the row-major `[cols, cols]` matrix `m`
/// onto its lower triangle.
pub fn mirror_upper(m: &mut [f32], cols: usize) {
    for i in 0..cols {
        for j in 0..i {
            m[i * cols + j] = m[j * cols + i];
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn gram_accumulate_matches_loops() {
        let (rows, cols, step) = (7, 4, 2);
        let x: Vec<f32> = (0..rows * cols).map(|i| (i % 9) as f32 - 4.0).collect();
        let mut acc = vec![1f32; cols * cols];
        assert_eq!(super::gram_accumulate(&x, rows, cols, step, &mut acc), 4);
        super::mirror_upper(&mut acc, cols);
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
    fn gram_accumulate_bands_cover_the_upper_triangle() {
        // more channels than one band, so the banded product is exercised
        let (rows, cols, step) = (9, 300, 1);
        let x: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7) % 13) as f32 - 6.0)
            .collect();
        let mut acc = vec![0.5f32; cols * cols];
        super::gram_accumulate(&x, rows, cols, step, &mut acc);
        super::mirror_upper(&mut acc, cols);
        for i in 0..cols {
            for j in 0..cols {
                let want: f32 = 0.5
                    + (0..rows)
                        .map(|t| x[t * cols + i] * x[t * cols + j])
                        .sum::<f32>();
                assert!((acc[i * cols + j] - want).abs() < 1e-3, "({i}, {j})");
            }
        }
    }

    #[test]
    fn sub_matmul_matches_loops() {
        // strided views: a 3x2 block of a, a 2x4 block of b, into a 3x4
        // block of a wider dst
        let (m, inner, n) = (3, 2, 4);
        let a: Vec<f32> = (0..m * 5).map(|i| i as f32 - 4.0).collect();
        let b: Vec<f32> = (0..inner * 6).map(|i| (i % 4) as f32 + 0.5).collect();
        let mut dst = vec![2f32; m * 7];
        super::sub_matmul(&mut dst, 7, &a, 5, &b, 6, m, inner, n);
        for i in 0..m {
            for j in 0..7 {
                let want = if j < n {
                    2.0 - (0..inner).map(|k| a[i * 5 + k] * b[k * 6 + j]).sum::<f32>()
                } else {
                    2.0
                };
                assert_eq!(dst[i * 7 + j], want, "({i}, {j})");
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
