//! Dense f32 matrix products on gemm's kernels, on the current rayon pool.

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
    let threads = rayon::current_num_threads();
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
        if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        },
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

#[cfg(test)]
mod tests {
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
