//! Error feedback while rounding (GPTQ, Frantar et al., ICLR 2023), for any
//! ggml block type.
//!
//! A row is quantized one block at a time, left to right. After a block is
//! rounded, its error is pushed onto the columns not yet rounded by the
//! optimal-brain-surgeon update for the input's Hessian `H = E[x·xᵀ]`, so
//! later blocks absorb what earlier ones lost in the layer's *output*.
//! With `U` the upper Cholesky factor of `H⁻¹`, column `j`'s error
//! `(w_j − q_j) / U_jj` moves the columns after it by `−err · U[j, j+1..]`.
//!
//! ggml blocks share their scales: each block's scales come from the type's
//! own encoder (importance weighted) run on the updated values; then, for
//! the legacy types and IQ4_NL, each column is rounded on that grid in turn
//! as GPTQ does, after the errors of the columns before it were pushed onto
//! it. k-quants (whose sub-blocks have scales of their own) keep the
//! encoder's codes for the whole block, and the update runs through its
//! columns with those codes fixed, which is the exact update for them.

use edgec_core::ggml::dequant::{dequantize, KVALUES_IQ4NL};
use edgec_core::GgmlType;
use faer::Mat;

use crate::ggml_quant::{iq4nl, quantize_row, QuantError};

/// The factor GPTQ needs for one input: `U`, upper triangular with
/// `Uᵀ·U = (H + λI)⁻¹`, row-major `[cols, cols]`.
#[derive(Debug, Clone)]
pub struct Hessian {
    cols: usize,
    u: Vec<f32>,
    /// Channels never active in calibration: their weights are dropped.
    dead: Vec<bool>,
}

impl Hessian {
    /// From `gram` = E[x·xᵀ] (row-major `[cols, cols]`), dampened by
    /// `damp` times the mean of its diagonal (GPTQ uses 0.01). `gram` is
    /// taken so that it is freed before the factorisation: for a 14k-wide
    /// FFN input it is 0.8 GB, and sequential calibration's peak is one
    /// layer's largest Hessian.
    pub fn new(gram: Vec<f32>, cols: usize, damp: f64) -> Result<Self, String> {
        if gram.len() != cols * cols || cols == 0 {
            return Err(format!(
                "a Hessian of {} values is not {cols}x{cols}",
                gram.len()
            ));
        }
        let dead: Vec<bool> = (0..cols).map(|j| gram[j * cols + j] <= 0.0).collect();
        let mean_diag = (0..cols)
            .map(|j| gram[j * cols + j].max(0.0) as f64)
            .sum::<f64>()
            / cols as f64;
        let lambda = damp * mean_diag.max(1e-12);
        // U comes from one Cholesky factorisation of H with its channel
        // order reversed, P·H·P = L·Lᵀ (P the reversal), and one triangular
        // inverse: H⁻¹ = (P·L⁻ᵀ·P)·(P·L⁻¹·P), so U = P·L⁻¹·P. That is a third
        // of the work of factorising H, inverting it and factorising the
        // inverse.
        let rev = |i: usize| cols - 1 - i;
        let h = Mat::<f64>::from_fn(cols, cols, |i, j| {
            let (i, j) = (rev(i), rev(j));
            if dead[i] || dead[j] {
                if i == j {
                    1.0
                } else {
                    0.0
                }
            } else {
                gram[i * cols + j] as f64 + if i == j { lambda } else { 0.0 }
            }
        });
        drop(gram);
        // Factorised in place (Mat::llt would copy H): with the inverse
        // beside it, two f64 matrices are the peak.
        let mut l = h;
        let par = faer::get_global_parallelism();
        let mut scratch = faer::dyn_stack::MemBuffer::new(
            faer::linalg::cholesky::llt::factor::cholesky_in_place_scratch::<f64>(
                cols,
                par,
                Default::default(),
            ),
        );
        faer::linalg::cholesky::llt::factor::cholesky_in_place(
            l.as_mut(),
            Default::default(),
            par,
            faer::dyn_stack::MemStack::new(&mut scratch),
            Default::default(),
        )
        .map_err(|_| "the Hessian is not positive definite".to_string())?;
        for j in 1..cols {
            for i in 0..j {
                l[(i, j)] = 0.0;
            }
        }
        // L⁻¹ by blocks of columns, straight into U: a trailing block of a
        // lower-triangular inverse is the inverse of L's trailing block, so
        // each block is one triangular solve against identity columns, and
        // no second cols x cols f64 matrix is needed.
        const BLOCK: usize = 128;
        let mut u = vec![0f32; cols * cols];
        let mut x = Mat::<f64>::zeros(cols, BLOCK);
        for k0 in (0..cols).step_by(BLOCK) {
            let b = BLOCK.min(cols - k0);
            let m = cols - k0;
            let mut xb = x.as_mut().submatrix_mut(0, 0, m, b);
            xb.fill(0.0);
            for c in 0..b {
                xb[(c, c)] = 1.0;
            }
            faer::linalg::triangular_solve::solve_lower_triangular_in_place(
                l.as_ref().submatrix(k0, k0, m, m),
                xb.as_mut(),
                faer::Par::Seq,
            );
            // column `col` of L⁻¹, rows col..: U[rev(r), rev(col)]
            for c in 0..b {
                let col = k0 + c;
                for r in col..cols {
                    u[rev(r) * cols + rev(col)] = xb[(r - k0, c)] as f32;
                }
            }
        }
        drop(l);
        Ok(Hessian { cols, u, dead })
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `U`, row-major `[cols, cols]` (SparseGPT's update reads it too).
    pub(crate) fn factor(&self) -> &[f32] {
        &self.u
    }

    /// `Σ_rows eᵀ (H + λI) e` for the rows of `err` (row-major, rows of
    /// `cols`; overwritten): the layer's added squared output error per
    /// token for weight errors `err`, with `H + λI = (UᵀU)⁻¹` solved
    /// through the factor (`‖U⁻ᵀ e‖²`). Dead channels count nothing.
    pub fn output_error(&self, err: &mut [f32]) -> f64 {
        self.output_errors(err).iter().sum()
    }

    /// [`Hessian::output_error`] of each row.
    pub fn output_errors(&self, err: &mut [f32]) -> Vec<f64> {
        let cols = self.cols;
        if err.is_empty() || !err.len().is_multiple_of(cols) {
            return vec![];
        }
        for row in err.chunks_exact_mut(cols) {
            for (e, &dead) in row.iter_mut().zip(&self.dead) {
                if dead {
                    *e = 0.0;
                }
            }
        }
        let n = err.len() / cols;
        // U row-major is Uᵀ column-major; the rows of err are the columns of
        // a column-major [cols, n] right-hand side
        let ut = faer::MatRef::from_column_major_slice(&self.u, cols, cols);
        let rhs = faer::MatMut::from_column_major_slice_mut(err, cols, n);
        faer::linalg::triangular_solve::solve_lower_triangular_in_place(ut, rhs, faer::Par::Seq);
        err.chunks_exact(cols)
            .map(|r| r.iter().map(|&y| (y as f64) * (y as f64)).sum())
            .collect()
    }

    /// Quantizes `row` as `ty` with error feedback, appending the same
    /// number of bytes [`quantize_row`] would. `importance` weighs columns
    /// inside each block's own rounding.
    pub fn quantize_row(
        &self,
        ty: GgmlType,
        row: &[f32],
        importance: Option<&[f32]>,
        out: &mut Vec<u8>,
    ) -> Result<(), QuantError> {
        self.quantize_rows(ty, row, importance, out)
    }

    /// [`Hessian::quantize_row`] for several rows at once (row-major,
    /// `rows.len()` a multiple of the columns), appending their bytes in
    /// order. Within a block each column's error moves only the block's
    /// later columns; the block's errors then move the rest of every row
    /// in one matrix product (GPTQ's lazy batch update), which reads `U`
    /// once for all the rows instead of once per row.
    pub fn quantize_rows(
        &self,
        ty: GgmlType,
        rows: &[f32],
        importance: Option<&[f32]>,
        out: &mut Vec<u8>,
    ) -> Result<(), QuantError> {
        let cols = self.cols;
        let block = ty.block_size();
        if rows.is_empty() || !rows.len().is_multiple_of(cols) || !ty.is_quantized() {
            return quantize_row(ty, rows, importance, out);
        }
        let n = rows.len() / cols;
        let mut w: Vec<f32> = rows
            .iter()
            .enumerate()
            .map(|(i, &v)| if self.dead[i % cols] { 0.0 } else { v })
            .collect();
        // Weights that are exactly zero (a pruning mask) stay zero: the
        // errors pushed onto them are dropped, as SparseGPT drops them, so
        // types with a zero level write them as exact zeros.
        let mask: Option<Vec<bool>> = w
            .contains(&0.0)
            .then(|| w.iter().map(|&v| v == 0.0).collect());
        let mut encoded: Vec<Vec<u8>> = vec![Vec::new(); n];
        // this block's errors, [n, block], already divided by U's diagonal
        let mut err = vec![0f32; n * block];
        let mut bytes = Vec::with_capacity(ty.type_size());
        let mut q = vec![0f32; block];
        for c0 in (0..cols).step_by(block) {
            let c1 = (c0 + block).min(cols);
            let width = c1 - c0;
            // rows whose block has a grid: (row, grid, where its bytes start)
            let mut on_grid: Vec<(usize, Grid, usize)> = Vec::new();
            if let Some(mask) = &mask {
                for (v, &m) in w.iter_mut().zip(mask) {
                    if m {
                        *v = 0.0;
                    }
                }
            }
            for (r, wr) in w.chunks_exact_mut(cols).enumerate() {
                bytes.clear();
                quantize_row(ty, &wr[c0..c1], importance.map(|i| &i[c0..c1]), &mut bytes)?;
                if let Some(grid) = Grid::of(ty, &bytes) {
                    on_grid.push((r, grid, encoded[r].len()));
                } else {
                    // k-quants: the encoder's codes, errors pushed on
                    let errs = &mut err[r * block..r * block + width];
                    dequantize(ty, &bytes, &mut q[..width])
                        .expect("the encoder's own bytes decode");
                    for j in c0..c1 {
                        let e = (wr[j] - q[j - c0]) / self.u[j * cols + j];
                        errs[j - c0] = e;
                        axpy(
                            &mut wr[j + 1..c1],
                            e,
                            &self.u[j * cols + j + 1..j * cols + c1],
                        );
                    }
                }
                encoded[r].extend_from_slice(&bytes);
            }
            if !on_grid.is_empty() {
                let start: Vec<f32> = on_grid
                    .iter()
                    .flat_map(|&(r, ..)| &w[r * cols + c0..r * cols + c1])
                    .copied()
                    .collect();
                let grids: Vec<Grid> = on_grid.iter().map(|&(_, g, _)| g).collect();
                let start_mask: Option<Vec<bool>> = mask.as_ref().map(|m| {
                    on_grid
                        .iter()
                        .flat_map(|&(r, ..)| &m[r * cols + c0..r * cols + c1])
                        .copied()
                        .collect()
                });
                let rounded = self.round_on_grids(ty, c0, &start, start_mask.as_deref(), &grids);
                for (i, &(r, grid, at)) in on_grid.iter().enumerate() {
                    let b = &mut encoded[r][at..];
                    for (k, &code) in rounded.codes[i * width..(i + 1) * width].iter().enumerate() {
                        grid.set_code(ty, b, k, code);
                    }
                    b[..2].copy_from_slice(&half::f16::from_f32(rounded.d[i]).to_le_bytes());
                    err[r * block..r * block + width]
                        .copy_from_slice(&rounded.errs[i * width..(i + 1) * width]);
                }
            }
            if c1 < cols {
                // W[:, c1..] −= E · U[c0..c1, c1..]
                edgec_core::linalg::sub_matmul(
                    &mut w[c1..],
                    cols,
                    &err,
                    block,
                    &self.u[c0 * cols + c1..],
                    cols,
                    n,
                    c1 - c0,
                    cols - c1,
                );
            }
        }
        for e in encoded {
            out.extend_from_slice(&e);
        }
        Ok(())
    }
}

/// What GPTQ chose for one block of several rows: per row the scale, and
/// the codes and errors (divided by U's diagonal) of its `width` columns.
struct Rounded {
    d: Vec<f32>,
    codes: Vec<u8>,
    errs: Vec<f32>,
}

impl Hessian {
    /// GPTQ proper inside one block of a grid type (legacy types, IQ4_NL),
    /// for several rows (`start`, `[rows, width]`, one grid each): each
    /// column is rounded on the block's grid after the columns before it
    /// pushed their errors onto it. The encoder chose the block's scale for
    /// plain rounding; for IQ4_NL a few nearby scales are tried too and the
    /// one with the least output-error increase Σ (err_j / U_jj)² is kept.
    ///
    /// Every (row, scale) pair is a lane and all lanes advance together, one
    /// column at a time: a lane alone is a chain of dependent steps, so
    /// interleaving them keeps the core busy, and the error push onto the
    /// later columns becomes one vector operation across lanes. Each lane
    /// sees the same operations in the same order as when run alone.
    fn round_on_grids(
        &self,
        ty: GgmlType,
        c0: usize,
        start: &[f32],
        mask: Option<&[bool]>,
        grids: &[Grid],
    ) -> Rounded {
        let cols = self.cols;
        let rows = grids.len();
        let width = start.len() / rows;
        // Only IQ4_NL gained from the other scales on SmolLM2 (KLD 0.048 →
        // 0.045; Q4_0 and Q8_0 did not move), and the tries cost 5× the
        // in-block work, so the other types keep the encoder's scale.
        let tries: &[f32] = if ty == GgmlType::Iq4Nl {
            &SCALE_TRIES
        } else {
            &SCALE_TRIES[..1]
        };
        // lanes: (row, grid with the tried scale), rows in order
        let mut lanes: Vec<(usize, Grid)> = Vec::with_capacity(rows * tries.len());
        for (r, grid) in grids.iter().enumerate() {
            for &f in tries {
                let d = half::f16::from_f32(grid.d * f).to_f32();
                if f != 1.0 && d == grid.d || !d.is_finite() {
                    continue;
                }
                lanes.push((r, Grid { d, ..*grid }));
            }
        }
        let nl = lanes.len();
        // wt[k·nl + l]: column k of lane l, updated as the columns before
        // it are rounded
        let mut wt = vec![0f32; width * nl];
        for (l, &(r, _)) in lanes.iter().enumerate() {
            for k in 0..width {
                wt[k * nl + l] = start[r * width + k];
            }
        }
        let levels = grids[0].levels; // one type: the same for every lane
        let ld: Vec<f32> = lanes.iter().map(|(_, g)| g.d).collect();
        let lm: Vec<f32> = lanes.iter().map(|(_, g)| g.m).collect();
        let mut codes = vec![0u8; nl * width];
        let mut errs = vec![0f32; nl * width];
        let mut loss = vec![0f64; nl];
        let mut code = vec![0u8; nl];
        let mut qv = vec![0f32; nl];
        let mut e = vec![0f32; nl];
        for k in 0..width {
            let j = c0 + k;
            let (now, later) = wt[k * nl..].split_at_mut(nl);
            if let Some(mask) = mask {
                for (v, &(r, _)) in now.iter_mut().zip(&lanes) {
                    if mask[r * width + k] {
                        *v = 0.0;
                    }
                }
            }
            nearest_lanes(levels, now, &ld, &lm, &mut code, &mut qv);
            for (l, &c) in code.iter().enumerate() {
                codes[l * width + k] = c;
            }
            errors(now, &qv, self.u[j * cols + j], &mut e, &mut loss);
            for (l, &el) in e.iter().enumerate() {
                errs[l * width + k] = el;
            }
            push_errors(
                &mut later[..(width - k - 1) * nl],
                &e,
                &self.u[j * cols + j + 1..j * cols + c0 + width],
            );
        }
        // per row, the first try with the least loss (the encoder's scale
        // is finite (Grid::of), so its try is always a lane)
        let mut out = Rounded {
            d: vec![0f32; rows],
            codes: vec![0u8; rows * width],
            errs: vec![0f32; rows * width],
        };
        let mut best: Vec<Option<(f64, usize)>> = vec![None; rows];
        for (l, &(r, _)) in lanes.iter().enumerate() {
            if best[r].is_none_or(|b| loss[l] < b.0) {
                best[r] = Some((loss[l], l));
            }
        }
        for (r, b) in best.iter().enumerate() {
            let Some((_, l)) = *b else { continue };
            out.d[r] = lanes[l].1.d;
            out.codes[r * width..(r + 1) * width]
                .copy_from_slice(&codes[l * width..(l + 1) * width]);
            out.errs[r * width..(r + 1) * width].copy_from_slice(&errs[l * width..(l + 1) * width]);
        }
        out
    }
}

/// [`Grid::nearest`] and [`Grid::value`] for many lanes of one type (lane
/// `l`: value `v[l]` on the grid of scale `d[l]` and offset `m[l]`), written
/// so that they vectorise: both of IQ4_NL's searches run and one is kept.
fn nearest_lanes(levels: Levels, v: &[f32], d: &[f32], m: &[f32], code: &mut [u8], qv: &mut [f32]) {
    #[inline(always)]
    fn generic(levels: Levels, v: &[f32], d: &[f32], m: &[f32], code: &mut [u8], qv: &mut [f32]) {
        // Fixed-width chunks of lanes, each step a loop over the chunk, so
        // that the compiler turns every step into vector operations.
        const W: usize = 16;
        for at in (0..code.len()).step_by(W) {
            let n = W.min(code.len() - at);
            let (mut vv, mut dd, mut mm) = ([0f32; W], [1f32; W], [0f32; W]);
            vv[..n].copy_from_slice(&v[at..at + n]);
            dd[..n].copy_from_slice(&d[at..at + n]);
            mm[..n].copy_from_slice(&m[at..at + n]);
            let (mut c, mut q) = ([0f32; W], [0f32; W]);
            match levels {
                Levels::Range(lo, hi) => {
                    for i in 0..W {
                        let x = (vv[i] - mm[i]) / dd[i];
                        // f32::round (half away from zero) from trunc, which
                        // vectorises: x − trunc(x) is exact
                        let t = x.trunc();
                        let r = if (x - t).abs() >= 0.5 {
                            t + 1f32.copysign(x)
                        } else {
                            t
                        };
                        let k = if dd[i] == 0.0 {
                            0
                        } else {
                            (r as i32).clamp(lo, hi)
                        };
                        c[i] = (k - lo) as f32;
                        q[i] = mm[i] + dd[i] * k as f32;
                    }
                }
                Levels::Table(t) => {
                    // d > 0: iq4nl::best_index(v / d), as comparisons
                    let mut h = [0f32; W];
                    for i in 0..W {
                        h[i] = iq4nl::level_arg(vv[i] / dd[i]);
                    }
                    let (mut up, mut lvl) = ([0f32; W], [t[0] as f32; W]);
                    for (&mid, &step) in iq4nl::MID.iter().zip(&iq4nl::STEP) {
                        for i in 0..W {
                            let above = h[i] >= mid;
                            up[i] += if above { 1.0 } else { 0.0 };
                            lvl[i] += if above { step } else { 0.0 };
                        }
                    }
                    // otherwise: the first level of least distance
                    let (mut down, mut dl, mut best) =
                        ([0f32; W], [t[0] as f32; W], [f32::INFINITY; W]);
                    for (k, &l) in t.iter().enumerate() {
                        let l = l as f32;
                        for i in 0..W {
                            let e = (dd[i] * l - vv[i]).abs();
                            if e < best[i] {
                                (down[i], dl[i], best[i]) = (k as f32, l, e);
                            }
                        }
                    }
                    for i in 0..W {
                        let pos = dd[i] > 0.0;
                        c[i] = if pos { up[i] } else { down[i] };
                        q[i] = dd[i] * if pos { lvl[i] } else { dl[i] };
                    }
                }
            }
            for i in 0..n {
                code[at + i] = c[i] as u8;
                qv[at + i] = q[i];
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw")]
        unsafe fn avx512(
            levels: Levels,
            v: &[f32],
            d: &[f32],
            m: &[f32],
            code: &mut [u8],
            qv: &mut [f32],
        ) {
            generic(levels, v, d, m, code, qv)
        }
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
        {
            // SAFETY: the CPU has AVX-512F and BW, checked just above.
            return unsafe { avx512(levels, v, d, m, code, qv) };
        }
    }
    generic(levels, v, d, m, code, qv)
}

/// Per lane, the rounding error divided by U's diagonal entry `ujj`, and
/// its square added to the lane's loss.
fn errors(w: &[f32], qv: &[f32], ujj: f32, e: &mut [f32], loss: &mut [f64]) {
    #[inline(always)]
    fn generic(w: &[f32], qv: &[f32], ujj: f32, e: &mut [f32], loss: &mut [f64]) {
        for (((e, loss), &w), &q) in e.iter_mut().zip(loss.iter_mut()).zip(w).zip(qv) {
            *e = (w - q) / ujj;
            *loss += *e as f64 * *e as f64;
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(w: &[f32], qv: &[f32], ujj: f32, e: &mut [f32], loss: &mut [f64]) {
            generic(w, qv, ujj, e, loss)
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked just above.
            return unsafe { avx512(w, qv, ujj, e, loss) };
        }
    }
    generic(w, qv, ujj, e, loss)
}

/// The error update of every lane at once: row `k` of `later` (one value
/// per lane) `−= e·u[k]`, the same product [`axpy`] forms for one lane.
fn push_errors(later: &mut [f32], e: &[f32], u: &[f32]) {
    #[inline(always)]
    fn generic(later: &mut [f32], e: &[f32], u: &[f32]) {
        for (row, &uk) in later.chunks_exact_mut(e.len()).zip(u) {
            for (y, &el) in row.iter_mut().zip(e) {
                *y -= el * uk;
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(later: &mut [f32], e: &[f32], u: &[f32]) {
            generic(later, e, u)
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked just above.
            return unsafe { avx512(later, e, u) };
        }
    }
    generic(later, e, u)
}

/// Scale factors tried around the encoder's block scale in GPTQ rounding.
const SCALE_TRIES: [f32; 5] = [1.0, 0.94, 0.97, 1.03, 1.06];

/// `y −= a·x`, the error update: most of GPTQ's time. Compiled for AVX-512
/// too and picked at run time; no fused multiply-add, so every width gives
/// the same bits.
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    #[inline(always)]
    fn generic(y: &mut [f32], a: f32, x: &[f32]) {
        for (yk, xk) in y.iter_mut().zip(x) {
            *yk -= a * xk;
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(y: &mut [f32], a: f32, x: &[f32]) {
            generic(y, a, x)
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked just above.
            return unsafe { avx512(y, a, x) };
        }
    }
    generic(y, a, x)
}

/// The values one element of a 32-element block of a legacy type or IQ4_NL
/// can take, given the block's scale `d` (and offset `m`): `m + d·level`.
#[derive(Clone, Copy)]
struct Grid {
    d: f32,
    m: f32,
    levels: Levels,
}

#[derive(Clone, Copy)]
enum Levels {
    /// Integers `lo..=hi`.
    Range(i32, i32),
    /// IQ4_NL's table.
    Table(&'static [i8; 16]),
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

impl Grid {
    /// The grid of an encoded block; `None` for types whose elements do not
    /// share one (k-quants: sub-block scales).
    fn of(ty: GgmlType, b: &[u8]) -> Option<Grid> {
        let d = f16_at(b, 0);
        let (m, levels) = match ty {
            GgmlType::Q4_0 => (0.0, Levels::Range(-8, 7)),
            GgmlType::Q4_1 => (f16_at(b, 2), Levels::Range(0, 15)),
            GgmlType::Q5_0 => (0.0, Levels::Range(-16, 15)),
            GgmlType::Q5_1 => (f16_at(b, 2), Levels::Range(0, 31)),
            GgmlType::Q8_0 => (0.0, Levels::Range(-128, 127)),
            GgmlType::Iq4Nl => (0.0, Levels::Table(&KVALUES_IQ4NL)),
            _ => return None,
        };
        (d.is_finite() && m.is_finite()).then_some(Grid { d, m, levels })
    }

    /// The level nearest to `v` (as stored: offset so that codes are ≥ 0):
    /// one lane of [`nearest_lanes`], which the tests check against it.
    #[cfg(test)]
    fn nearest(&self, v: f32) -> u8 {
        match self.levels {
            Levels::Range(lo, hi) => {
                let q = if self.d == 0.0 {
                    0
                } else {
                    (((v - self.m) / self.d).round() as i32).clamp(lo, hi)
                };
                (q - lo) as u8
            }
            Levels::Table(_) if self.d > 0.0 => {
                crate::ggml_quant::iq4nl::best_index(v / self.d) as u8
            }
            Levels::Table(t) => {
                let mut best = (0u8, f32::INFINITY);
                for (k, &l) in t.iter().enumerate() {
                    let e = (self.d * l as f32 - v).abs();
                    if e < best.1 {
                        best = (k as u8, e);
                    }
                }
                best.0
            }
        }
    }

    #[cfg(test)]
    fn value(&self, code: u8) -> f32 {
        match self.levels {
            Levels::Range(lo, _) => self.m + self.d * (code as i32 + lo) as f32,
            Levels::Table(t) => self.d * t[code as usize] as f32,
        }
    }

    /// Writes `code` for element `j` into the block's bytes.
    fn set_code(&self, ty: GgmlType, b: &mut [u8], j: usize, code: u8) {
        // 4-bit codes: element j < 16 in the low nibble of qs[j], j ≥ 16 in
        // the high nibble of qs[j − 16]; 5-bit codes keep bit 4 in qh bit j.
        let nibble = |b: &mut [u8], qs: usize, code: u8| {
            let at = qs + j % 16;
            b[at] = if j < 16 {
                (b[at] & 0xF0) | (code & 0x0F)
            } else {
                (b[at] & 0x0F) | (code << 4)
            };
        };
        match ty {
            GgmlType::Q4_0 | GgmlType::Iq4Nl => nibble(b, 2, code),
            GgmlType::Q4_1 => nibble(b, 4, code),
            GgmlType::Q5_0 | GgmlType::Q5_1 => {
                let (qh, qs) = if ty == GgmlType::Q5_0 { (2, 6) } else { (4, 8) };
                nibble(b, qs, code & 0x0F);
                let byte = qh + j / 8;
                let bit = 1u8 << (j % 8);
                b[byte] = if code & 0x10 != 0 {
                    b[byte] | bit
                } else {
                    b[byte] & !bit
                };
            }
            GgmlType::Q8_0 => b[2 + j] = code.wrapping_add(128),
            _ => unreachable!("Grid::of has no grid for {ty}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(s: &mut u64) -> f32 {
        *s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    /// Correlated activations (each channel mixes its neighbours), their
    /// Gram matrix, and rows of weights.
    fn setup(cols: usize, tokens: usize, rows: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut s = 3u64;
        let raw: Vec<f32> = (0..tokens * cols).map(|_| lcg(&mut s)).collect();
        let mut x = vec![0f32; tokens * cols];
        for t in 0..tokens {
            for c in 0..cols {
                let scale = 1.0 + (c % 7) as f32;
                x[t * cols + c] = scale
                    * (raw[t * cols + c] + 0.8 * raw[t * cols + (c + 1) % cols]
                        - 0.5 * raw[t * cols + (c + 3) % cols]);
            }
        }
        let mut g = vec![0f32; cols * cols];
        for t in 0..tokens {
            let xt = &x[t * cols..(t + 1) * cols];
            for i in 0..cols {
                for j in 0..cols {
                    g[i * cols + j] += xt[i] * xt[j] / tokens as f32;
                }
            }
        }
        let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut s) * 0.1).collect();
        (x, g, w)
    }

    fn output_error(x: &[f32], w: &[f32], wq: &[f32], cols: usize) -> f64 {
        let rows = w.len() / cols;
        let mut e = 0f64;
        for xt in x.chunks(cols) {
            for r in 0..rows {
                let d: f32 = (0..cols)
                    .map(|c| (wq[r * cols + c] - w[r * cols + c]) * xt[c])
                    .sum();
                e += (d * d) as f64;
            }
        }
        e
    }

    #[test]
    fn the_factor_inverts_the_dampened_hessian() {
        // Uᵀ·U·(H + λI) = I, with λ = damp · mean diagonal; 300 columns
        // span three of the factor's blocks of 128
        let cols = 300;
        let (_, g, _) = setup(cols, 1000, 1);
        let damp = 0.01;
        let h = Hessian::new(g.clone(), cols, damp).unwrap();
        let lambda = damp * (0..cols).map(|j| g[j * cols + j] as f64).sum::<f64>() / cols as f64;
        for i in 0..cols {
            for j in 0..i {
                assert_eq!(h.u[i * cols + j], 0.0, "U is upper triangular");
            }
        }
        let mut hinv = vec![0f64; cols * cols];
        for k in 0..cols {
            for i in 0..cols {
                let uki = h.u[k * cols + i] as f64;
                if uki != 0.0 {
                    for j in 0..cols {
                        hinv[i * cols + j] += uki * h.u[k * cols + j] as f64;
                    }
                }
            }
        }
        for i in 0..cols {
            for j in 0..cols {
                let v: f64 = (0..cols)
                    .map(|k| {
                        let hk = g[k * cols + j] as f64 + if k == j { lambda } else { 0.0 };
                        hinv[i * cols + k] * hk
                    })
                    .sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-3, "({i}, {j}): {v}");
            }
        }
    }

    #[test]
    fn error_feedback_lowers_the_output_error() {
        let cols = 128;
        let (x, g, w) = setup(cols, 512, 16);
        let h = Hessian::new(g.clone(), cols, 0.01).unwrap();
        let imp: Vec<f32> = (0..cols).map(|j| g[j * cols + j]).collect();
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Iq4Nl,
        ] {
            let (mut plain, mut fed) = (Vec::new(), Vec::new());
            for row in w.chunks(cols) {
                let (mut a, mut b) = (Vec::new(), Vec::new());
                quantize_row(ty, row, Some(&imp), &mut a).unwrap();
                h.quantize_row(ty, row, Some(&imp), &mut b).unwrap();
                assert_eq!(a.len(), b.len());
                let mut qa = vec![0f32; cols];
                let mut qb = vec![0f32; cols];
                dequantize(ty, &a, &mut qa).unwrap();
                dequantize(ty, &b, &mut qb).unwrap();
                plain.extend(qa);
                fed.extend(qb);
            }
            let (ep, ef) = (
                output_error(&x, &w, &plain, cols),
                output_error(&x, &w, &fed, cols),
            );
            assert!(ef < 0.95 * ep, "{ty}: feedback {ef} vs plain {ep}");
            // all rows at once: the lazy batch update is the same update
            let mut all = Vec::new();
            h.quantize_rows(ty, &w, Some(&imp), &mut all).unwrap();
            let mut batched = vec![0f32; w.len()];
            for (bytes, q) in all.chunks(all.len() / 16).zip(batched.chunks_mut(cols)) {
                dequantize(ty, bytes, q).unwrap();
            }
            let eb = output_error(&x, &w, &batched, cols);
            assert!(
                (eb - ef).abs() <= 0.02 * ef,
                "{ty}: batched {eb} vs one row at a time {ef}"
            );
        }
    }

    #[test]
    fn a_diagonal_hessian_only_picks_among_scales() {
        // Uncorrelated inputs: no error is pushed onward, so each block is
        // rounded on its own, on the best of the scales tried, which include
        // the encoder's: never worse than plain rounding in the Hessian's
        // weighted error.
        let cols = 64;
        let diag: Vec<f32> = (0..cols).map(|j| 1.0 + (j % 5) as f32).collect();
        let g: Vec<f32> = (0..cols * cols)
            .map(|k| {
                if k / cols == k % cols {
                    diag[k % cols]
                } else {
                    0.0
                }
            })
            .collect();
        let h = Hessian::new(g.clone(), cols, 0.0).unwrap();
        let mut s = 9u64;
        for ty in [GgmlType::Q4_0, GgmlType::Iq4Nl]
            .into_iter()
            .cycle()
            .take(40)
        {
            let row: Vec<f32> = (0..cols).map(|_| lcg(&mut s)).collect();
            let (mut a, mut b) = (Vec::new(), Vec::new());
            quantize_row(ty, &row, None, &mut a).unwrap();
            h.quantize_row(ty, &row, None, &mut b).unwrap();
            let weighted = |bytes: &[u8]| {
                let mut q = vec![0f32; cols];
                dequantize(ty, bytes, &mut q).unwrap();
                (0..cols)
                    .map(|j| diag[j] as f64 * ((q[j] - row[j]) as f64).powi(2))
                    .sum::<f64>()
            };
            assert!(weighted(&b) <= weighted(&a) * (1.0 + 1e-6));
        }
    }

    #[test]
    fn grid_codes_write_what_the_decoder_reads() {
        let mut s = 5u64;
        let row: Vec<f32> = (0..32).map(|_| lcg(&mut s)).collect();
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Iq4Nl,
        ] {
            let mut b = Vec::new();
            quantize_row(ty, &row, None, &mut b).unwrap();
            let g = Grid::of(ty, &b).unwrap();
            let mut want = vec![0f32; 32];
            dequantize(ty, &b, &mut want).unwrap();
            // re-coding each element to its own value changes no byte
            let orig = b.clone();
            for (j, &v) in want.iter().enumerate() {
                let code = g.nearest(v);
                assert_eq!(g.value(code), v, "{ty} element {j}");
                g.set_code(ty, &mut b, j, code);
            }
            assert_eq!(b, orig, "{ty}");
            // and a new code is read back as its value
            let code = g.nearest(-want[7]);
            g.set_code(ty, &mut b, 7, code);
            let mut got = vec![0f32; 32];
            dequantize(ty, &b, &mut got).unwrap();
            assert_eq!(got[7], g.value(code), "{ty}");
        }
    }

    #[test]
    fn lanes_round_as_one_grid_does() {
        let mut s = 11u64;
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Iq4Nl,
        ] {
            let mut b = Vec::new();
            quantize_row(ty, &[0.5; 32], None, &mut b).unwrap();
            let levels = Grid::of(ty, &b).unwrap().levels;
            // scales of both signs and zero, values on and between levels,
            // beyond the grid, and not numbers
            let n = 300;
            let d: Vec<f32> = (0..n)
                .map(|i| if i % 7 == 0 { 0.0 } else { lcg(&mut s) * 0.02 })
                .collect();
            let m: Vec<f32> = (0..n).map(|_| lcg(&mut s) * 0.1).collect();
            let v: Vec<f32> = (0..n)
                .map(|i| match i % 11 {
                    0 => f32::NAN,
                    1 => 1e30 * lcg(&mut s).signum(),
                    2 => m[i] + d[i] * (i % 40) as f32 * 0.5,
                    _ => lcg(&mut s) * 3.0,
                })
                .collect();
            let (mut code, mut qv) = (vec![0u8; n], vec![0f32; n]);
            nearest_lanes(levels, &v, &d, &m, &mut code, &mut qv);
            for i in 0..n {
                let g = Grid {
                    d: d[i],
                    m: m[i],
                    levels,
                };
                let c = g.nearest(v[i]);
                assert_eq!(code[i], c, "{ty}: {} on d {} m {}", v[i], d[i], m[i]);
                assert_eq!(qv[i].to_bits(), g.value(c).to_bits(), "{ty}");
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(Hessian::new(vec![1.0; 6], 3, 0.01).is_err());
        assert!(Hessian::new(vec![], 0, 0.01).is_err());
        // not positive definite and no damping
        assert!(Hessian::new(vec![1.0, 2.0, 2.0, 1.0], 2, 0.0).is_err());
    }
}
