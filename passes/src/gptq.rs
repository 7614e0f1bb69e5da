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
//! GPTQ rounds one column at a time; ggml blocks share their scales, so a
//! whole block is rounded at once by the type's own encoder (importance
//! weighted) from the updated values, and the update then runs through the
//! block's columns with their codes fixed, which is the exact update for
//! those codes. The encoder's bytes are the output, block by block.

use edgec_core::ggml::dequant::dequantize;
use edgec_core::GgmlType;
use faer::linalg::solvers::DenseSolveCore;
use faer::{Mat, Side};

use crate::ggml_quant::{quantize_row, QuantError};

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
    /// `damp` times the mean of its diagonal (GPTQ uses 0.01).
    pub fn new(gram: &[f32], cols: usize, damp: f64) -> Result<Self, String> {
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
        let h = Mat::<f64>::from_fn(cols, cols, |i, j| {
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
        let hinv = h
            .llt(Side::Lower)
            .map_err(|_| "the Hessian is not positive definite".to_string())?
            .inverse();
        let l = hinv
            .llt(Side::Lower)
            .map_err(|_| "the inverse Hessian is not positive definite".to_string())?;
        let l = l.L();
        // U = Lᵀ
        let mut u = vec![0f32; cols * cols];
        for i in 0..cols {
            for j in i..cols {
                u[i * cols + j] = l[(j, i)] as f32;
            }
        }
        Ok(Hessian { cols, u, dead })
    }

    pub fn cols(&self) -> usize {
        self.cols
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
        let cols = self.cols;
        let block = ty.block_size();
        if row.len() != cols || !ty.is_quantized() {
            return quantize_row(ty, row, importance, out);
        }
        let mut w: Vec<f32> = row
            .iter()
            .zip(&self.dead)
            .map(|(&v, &d)| if d { 0.0 } else { v })
            .collect();
        let mut bytes = Vec::with_capacity(ty.type_size());
        let mut q = vec![0f32; block];
        for c0 in (0..cols).step_by(block) {
            let c1 = (c0 + block).min(cols);
            bytes.clear();
            quantize_row(ty, &w[c0..c1], importance.map(|i| &i[c0..c1]), &mut bytes)?;
            dequantize(ty, &bytes, &mut q[..c1 - c0])
                .expect("the encoder's own bytes decode");
            out.extend_from_slice(&bytes);
            if c1 == cols {
                break;
            }
            for j in c0..c1 {
                let err = (w[j] - q[j - c0]) / self.u[j * cols + j];
                let rest = &mut w[j + 1..];
                let urow = &self.u[j * cols + j + 1..(j + 1) * cols];
                for (wk, uk) in rest.iter_mut().zip(urow) {
                    *wk -= err * uk;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(s: &mut u64) -> f32 {
        *s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
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
                let d: f32 = (0..cols).map(|c| (wq[r * cols + c] - w[r * cols + c]) * xt[c]).sum();
                e += (d * d) as f64;
            }
        }
        e
    }

    #[test]
    fn error_feedback_lowers_the_output_error() {
        let cols = 128;
        let (x, g, w) = setup(cols, 512, 16);
        let h = Hessian::new(&g, cols, 0.01).unwrap();
        let imp: Vec<f32> = (0..cols).map(|j| g[j * cols + j]).collect();
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Iq4Nl] {
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
            let (ep, ef) = (output_error(&x, &w, &plain, cols), output_error(&x, &w, &fed, cols));
            assert!(ef < 0.95 * ep, "{ty}: feedback {ef} vs plain {ep}");
        }
    }

    #[test]
    fn a_diagonal_hessian_changes_nothing_across_blocks() {
        // Uncorrelated inputs: no error is pushed onward, so the result is
        // plain rounding.
        let cols = 64;
        let g: Vec<f32> = (0..cols * cols)
            .map(|k| if k / cols == k % cols { 1.0 + (k % 5) as f32 } else { 0.0 })
            .collect();
        let h = Hessian::new(&g, cols, 0.0).unwrap();
        let mut s = 9u64;
        let row: Vec<f32> = (0..cols).map(|_| lcg(&mut s)).collect();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        quantize_row(GgmlType::Q4_0, &row, None, &mut a).unwrap();
        h.quantize_row(GgmlType::Q4_0, &row, None, &mut b).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(Hessian::new(&[1.0; 6], 3, 0.01).is_err());
        assert!(Hessian::new(&[], 0, 0.01).is_err());
        // not positive definite and no damping
        assert!(Hessian::new(&[1.0, 2.0, 2.0, 1.0], 2, 0.0).is_err());
    }
}
