//! Linear integer quantization in groups along a row: int4 or int8, one
//! scale (and, when asymmetric, a zero point) per `group` columns, the form
//! ONNX's DequantizeLinear with `block_size` and MatMulNBits store.
//!
//! The scale is searched: starting from the group's range, a few shrunken
//! ranges are tried and the one with the least (importance-weighted) squared
//! error kept, so outliers do not take all the resolution.

use crate::awq::RowQuantizer;

/// A groupwise integer format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Groupwise {
    /// 4 or 8.
    pub bits: u8,
    /// Columns per scale.
    pub group: usize,
    /// Symmetric (`q ∈ [−2^(b−1), 2^(b−1)−1]`, zero point 0) or asymmetric
    /// (`q ∈ [0, 2^b − 1]` with a zero point).
    pub symmetric: bool,
}

/// Shrink factors of the range tried by the scale search.
const SHRINK: [f32; 8] = [1.0, 0.97, 0.94, 0.91, 0.88, 0.85, 0.8, 0.75];

impl Groupwise {
    /// Quantizes `row` and writes the dequantized values to `out`; with
    /// `codes`, also the integer codes (offset by the zero point: stored
    /// values), one per element, and with `scales` one scale and zero point
    /// per group.
    pub fn quantize(
        &self,
        row: &[f32],
        importance: Option<&[f32]>,
        out: &mut [f32],
        mut codes: Option<&mut Vec<i32>>,
        mut scales: Option<&mut Vec<(f32, i32)>>,
    ) {
        let g = self.group.max(1);
        let levels = (1i32 << self.bits) - 1;
        for (c0, x) in row.chunks(g).enumerate().map(|(i, x)| (i * g, x)) {
            let w = importance.map(|imp| &imp[c0..c0 + x.len()]);
            let (lo, hi) = x
                .iter()
                .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            let mut best = (f32::INFINITY, 0f32, 0i32);
            for shrink in SHRINK {
                let (scale, zero) = if self.symmetric {
                    let amax = lo.abs().max(hi.abs()) * shrink;
                    (amax / (levels / 2 + 1) as f32, 0)
                } else {
                    let (l, h) = (lo.min(0.0) * shrink, hi.max(0.0) * shrink);
                    let scale = (h - l) / levels as f32;
                    let zero = if scale > 0.0 {
                        (-l / scale).round() as i32
                    } else {
                        0
                    };
                    (scale, zero.clamp(0, levels))
                };
                let err: f32 = x
                    .iter()
                    .enumerate()
                    .map(|(k, &v)| {
                        let d = self.round(v, scale, zero, levels) - v;
                        d * d * w.map_or(1.0, |w| w[k].max(0.0))
                    })
                    .sum();
                if err < best.0 {
                    best = (err, scale, zero);
                }
            }
            let (_, scale, zero) = best;
            for (k, &v) in x.iter().enumerate() {
                out[c0 + k] = self.round(v, scale, zero, levels);
                if let Some(c) = codes.as_deref_mut() {
                    c.push(self.code(v, scale, zero, levels));
                }
            }
            if let Some(s) = scales.as_deref_mut() {
                s.push((scale, zero));
            }
        }
    }

    fn code(&self, v: f32, scale: f32, zero: i32, levels: i32) -> i32 {
        if scale == 0.0 {
            return zero;
        }
        let q = (v / scale).round() as i32;
        if self.symmetric {
            q.clamp(-(levels / 2 + 1), levels / 2)
        } else {
            (q + zero).clamp(0, levels)
        }
    }

    fn round(&self, v: f32, scale: f32, zero: i32, levels: i32) -> f32 {
        let q = self.code(v, scale, zero, levels);
        (q - zero) as f32 * scale
    }
}

impl RowQuantizer for Groupwise {
    fn round_trip(
        &self,
        _name: &str,
        row: &[f32],
        importance: Option<&[f32]>,
        out: &mut [f32],
    ) -> Result<(), String> {
        if out.len() != row.len() || importance.is_some_and(|i| i.len() != row.len()) {
            return Err(format!(
                "groupwise: {} values, {} outputs, {:?} importances",
                row.len(),
                out.len(),
                importance.map(<[f32]>::len)
            ));
        }
        self.quantize(row, importance, out, None, None);
        Ok(())
    }

    fn block(&self, _name: &str) -> Option<usize> {
        Some(self.group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: usize) -> Vec<f32> {
        let mut s = 11u64;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    #[test]
    fn values_sit_on_their_grid_within_half_a_step() {
        let x = row(256);
        for bits in [4u8, 8] {
            for symmetric in [true, false] {
                let q = Groupwise {
                    bits,
                    group: 32,
                    symmetric,
                };
                let mut out = vec![0f32; x.len()];
                let (mut codes, mut scales) = (Vec::new(), Vec::new());
                q.quantize(&x, None, &mut out, Some(&mut codes), Some(&mut scales));
                assert_eq!(scales.len(), 8);
                let max = (1i32 << bits) - 1;
                for (k, (&v, &o)) in x.iter().zip(&out).enumerate() {
                    let (scale, zero) = scales[k / 32];
                    let c = codes[k];
                    if symmetric {
                        assert!((-(max / 2 + 1)..=max / 2).contains(&c));
                    } else {
                        assert!((0..=max).contains(&c));
                    }
                    assert_eq!(o, (c - zero) as f32 * scale);
                    // off the ends of the (possibly shrunken) range, at most
                    // half a step away
                    let (lo, hi) = if symmetric {
                        (-(max / 2 + 1), max / 2)
                    } else {
                        (0, max)
                    };
                    if c > lo && c < hi {
                        assert!((o - v).abs() <= scale * 0.5001, "{bits} {symmetric} {k}");
                    }
                }
            }
        }
    }

    #[test]
    fn int8_is_finer_than_int4_and_importance_is_respected() {
        let x = row(128);
        let err = |q: Groupwise, imp: Option<&[f32]>, w: &[f32]| {
            let mut out = vec![0f32; x.len()];
            q.quantize(&x, imp, &mut out, None, None);
            x.iter()
                .zip(&out)
                .zip(w)
                .map(|((a, b), w)| (a - b) * (a - b) * w)
                .sum::<f32>()
        };
        let ones = vec![1f32; 128];
        let g4 = Groupwise {
            bits: 4,
            group: 32,
            symmetric: true,
        };
        let g8 = Groupwise { bits: 8, ..g4 };
        assert!(err(g8, None, &ones) < err(g4, None, &ones) / 100.0);
        let imp: Vec<f32> = (0..128)
            .map(|k| if k % 5 == 0 { 100.0 } else { 0.01 })
            .collect();
        assert!(err(g4, Some(&imp), &imp) <= err(g4, None, &imp));
    }
}
