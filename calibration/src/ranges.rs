//! Activation ranges for static int8 quantization, from values observed on
//! calibration data.
//!
//! Min-max takes the extremes. Percentile and MSE need the distribution:
//! a first pass finds each value's extremes, a second fills a histogram
//! over them ([`RangeCollector::start_histograms`]), and the range is then
//! cut at percentiles or chosen to minimise the expected squared error of
//! uint8 quantization (clipping error outside, rounding error Δ²/12 inside).

use std::collections::{BTreeMap, HashMap};

/// How a value's quantization range is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RangeMethod {
    MinMax,
    /// Cut at this percentile of each tail (e.g. 99.99).
    Percentile(f64),
    /// The range with the least expected uint8 quantization error.
    Mse,
    /// The range whose 256-level quantized histogram is closest to the
    /// observed one in KL-divergence (TensorRT's entropy calibration, over
    /// both ends of the range).
    Entropy,
}

impl RangeMethod {
    /// Whether the method needs the second (histogram) pass.
    pub fn needs_histogram(self) -> bool {
        !matches!(self, RangeMethod::MinMax)
    }
}

const BINS: usize = 2048;

#[derive(Debug, Clone)]
struct Stats {
    min: f32,
    max: f32,
    hist: Option<Vec<u64>>,
}

/// Collects per-value extremes, then histograms.
#[derive(Debug, Default)]
pub struct RangeCollector {
    stats: HashMap<String, Stats>,
}

impl RangeCollector {
    /// Records `values` of the value `name` (non-finite values are ignored).
    pub fn observe(&mut self, name: &str, values: &[f32]) {
        let (lo, hi) = values
            .iter()
            .filter(|v| v.is_finite())
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let s = self.stats.entry(name.to_string()).or_insert(Stats {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            hist: None,
        });
        match &mut s.hist {
            None => {
                s.min = s.min.min(lo);
                s.max = s.max.max(hi);
            }
            Some(h) => {
                let width = (s.max - s.min).max(f32::MIN_POSITIVE);
                for &v in values.iter().filter(|v| v.is_finite()) {
                    let b = (((v - s.min) / width) * BINS as f32) as isize;
                    h[b.clamp(0, BINS as isize - 1) as usize] += 1;
                }
            }
        }
    }

    /// Ends the extremes pass: later observations fill histograms over them.
    pub fn start_histograms(&mut self) {
        for s in self.stats.values_mut() {
            s.hist = Some(vec![0; BINS]);
        }
    }

    /// Each value's range by `method` (a method that needs histograms uses
    /// the extremes when none were collected).
    pub fn ranges(&self, method: RangeMethod) -> BTreeMap<String, (f32, f32)> {
        self.stats
            .iter()
            .filter(|(_, s)| s.min <= s.max)
            .map(|(name, s)| {
                let r = match (&s.hist, method) {
                    (Some(h), RangeMethod::Percentile(p)) => percentile_range(s, h, p),
                    (Some(h), RangeMethod::Mse) => mse_range(s, h),
                    (Some(h), RangeMethod::Entropy) => entropy_range(s, h),
                    _ => (s.min, s.max),
                };
                (name.clone(), r)
            })
            .collect()
    }
}

fn bin_center(s: &Stats, b: usize) -> f32 {
    s.min + (b as f32 + 0.5) * (s.max - s.min) / BINS as f32
}

fn percentile_range(s: &Stats, h: &[u64], p: f64) -> (f32, f32) {
    let total: u64 = h.iter().sum();
    if total == 0 {
        return (s.min, s.max);
    }
    let tail = ((1.0 - p / 100.0).clamp(0.0, 0.5) * total as f64) as u64;
    let (mut acc, mut lo) = (0u64, 0usize);
    while lo < BINS - 1 && acc + h[lo] <= tail {
        acc += h[lo];
        lo += 1;
    }
    let (mut acc, mut hi) = (0u64, BINS - 1);
    while hi > 0 && acc + h[hi] <= tail {
        acc += h[hi];
        hi -= 1;
    }
    let width = (s.max - s.min) / BINS as f32;
    (s.min + lo as f32 * width, s.min + (hi + 1) as f32 * width)
}

/// The `[lo, hi]` (shrunk from the extremes on a grid, each end on its own)
/// with the least expected squared error of uint8 quantization.
fn mse_range(s: &Stats, h: &[u64]) -> (f32, f32) {
    let (min, max) = (s.min.min(0.0), s.max.max(0.0));
    let mut best = (f64::INFINITY, (s.min, s.max));
    for &a in &GRID {
        let lo = min * a;
        if min == 0.0 && a != 1.0 {
            break; // nothing below 0 to clip
        }
        for &b in &GRID {
            let hi = max * b;
            let step = (hi - lo) as f64 / 255.0;
            let round = step * step / 12.0;
            let err: f64 = h
                .iter()
                .enumerate()
                .filter(|(_, &c)| c > 0)
                .map(|(i, &c)| {
                    let x = bin_center(s, i);
                    let e = if x < lo {
                        ((lo - x) as f64).powi(2)
                    } else if x > hi {
                        ((x - hi) as f64).powi(2)
                    } else {
                        round
                    };
                    c as f64 * e
                })
                .sum();
            if err < best.0 {
                best = (err, (lo.max(s.min), hi.min(s.max)));
            }
        }
    }
    best.1
}

/// Shrink factors of each end of the range tried by the searches.
const GRID: [f32; 16] = [
    1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25,
];

/// The range (ends shrunk on [`GRID`], in whole bins) minimising KL(P‖Q):
/// P is the histogram with what falls outside piled onto the end bins, Q is
/// P merged into 255 equal steps and spread back evenly over each step's
/// non-empty bins.
fn entropy_range(s: &Stats, h: &[u64]) -> (f32, f32) {
    let width = (s.max - s.min) / BINS as f32;
    if width <= 0.0 || h.iter().sum::<u64>() == 0 {
        return (s.min, s.max);
    }
    let zero_bin = ((0.0 - s.min) / width).clamp(0.0, BINS as f32) as usize;
    // Exact zeros (ReLU's, padding's) are exact in any range (the zero
    // point holds them): their spike would otherwise dominate the
    // divergence and pull the range in. Their bin takes a neighbour's count.
    let mut h = h.to_vec();
    if zero_bin < BINS {
        let neighbour = if zero_bin + 1 < BINS {
            zero_bin + 1
        } else {
            zero_bin.saturating_sub(1)
        };
        h[zero_bin] = h[neighbour];
    }
    let h = &h;
    let mut best = (f64::INFINITY, (s.min, s.max));
    for &a in &GRID {
        // the low end moves toward 0 (or stays at the minimum when it is 0)
        let lo_bin = (zero_bin as f32 * (1.0 - a)) as usize;
        if s.min >= 0.0 && a != 1.0 {
            break;
        }
        for &b in &GRID {
            let hi_bin = zero_bin + ((BINS - zero_bin) as f32 * b) as usize;
            if hi_bin <= lo_bin + 255 {
                continue;
            }
            let kl = kl_after_quantizing(h, lo_bin, hi_bin);
            if kl < best.0 {
                best = (
                    kl,
                    (s.min + lo_bin as f32 * width, s.min + hi_bin as f32 * width),
                );
            }
        }
    }
    best.1
}

fn kl_after_quantizing(h: &[u64], lo: usize, hi: usize) -> f64 {
    let mut p: Vec<f64> = h[lo..hi].iter().map(|&c| c as f64).collect();
    p[0] += h[..lo].iter().sum::<u64>() as f64;
    let last = p.len() - 1;
    p[last] += h[hi..].iter().sum::<u64>() as f64;
    let n = p.len();
    let mut q = vec![0f64; n];
    for level in 0..255 {
        let (start, end) = (
            level * n / 255,
            ((level + 1) * n / 255).max(level * n / 255 + 1),
        );
        let end = end.min(n);
        let mass: f64 = p[start..end].iter().sum();
        let filled = p[start..end].iter().filter(|&&x| x > 0.0).count();
        if filled > 0 {
            for i in start..end {
                if p[i] > 0.0 {
                    q[i] = mass / filled as f64;
                }
            }
        }
    }
    let (sp, sq): (f64, f64) = (p.iter().sum(), q.iter().sum());
    p.iter()
        .zip(&q)
        .filter(|(&a, _)| a > 0.0)
        .map(|(&a, &b)| {
            let (a, b) = (a / sp, (b / sq).max(1e-12));
            a * (a / b).ln()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(values: &[f32], method: RangeMethod) -> (f32, f32) {
        let mut c = RangeCollector::default();
        c.observe("x", values);
        if method.needs_histogram() {
            c.start_histograms();
            c.observe("x", values);
        }
        c.ranges(method)["x"]
    }

    #[test]
    fn minmax_is_the_extremes() {
        assert_eq!(
            collect(&[-1.0, 0.5, 3.0, f32::NAN], RangeMethod::MinMax),
            (-1.0, 3.0)
        );
    }

    #[test]
    fn percentile_cuts_rare_outliers() {
        let mut v: Vec<f32> = (0..100_000).map(|i| (i % 1000) as f32 / 1000.0).collect();
        v.push(50.0);
        let (lo, hi) = collect(&v, RangeMethod::Percentile(99.9));
        assert!((0.0..0.01).contains(&lo), "{lo}");
        assert!(hi > 0.95 && hi < 1.1, "{hi}");
    }

    #[test]
    fn entropy_ignores_the_spike_of_exact_zeros() {
        // half exact zeros (a ReLU's), the rest spread up to 6
        let mut v: Vec<f32> = vec![0.0; 50_000];
        v.extend((0..50_000).map(|i| (-((i as f32 + 0.5) / 50_000.0).ln()).min(6.0)));
        let (_, hi) = collect(&v, RangeMethod::Entropy);
        assert!(hi > 4.0, "{hi}");
    }

    #[test]
    fn entropy_clips_a_long_tail() {
        let mut t: Vec<f32> = (0..100_000).map(|i| (i % 100) as f32 / 100.0).collect();
        t.extend([40.0, 40.0]);
        let (lo, hi) = collect(&t, RangeMethod::Entropy);
        assert!(lo >= 0.0 && (0.9..40.0).contains(&hi), "{lo} {hi}");
    }

    #[test]
    fn mse_clips_a_long_tail_but_not_a_uniform_range() {
        // uniform on [0, 1]: clipping only adds error
        let u: Vec<f32> = (0..10_000).map(|i| i as f32 / 10_000.0).collect();
        let (_, hi) = collect(&u, RangeMethod::Mse);
        assert!(hi > 0.99, "{hi}");
        // a few huge values among many small ones: the range shrinks
        let mut t: Vec<f32> = (0..100_000).map(|i| (i % 100) as f32 / 100.0).collect();
        t.extend([40.0, -40.0]);
        let (lo, hi) = collect(&t, RangeMethod::Mse);
        assert!(hi < 40.0 && lo > -40.0, "{lo} {hi}");
    }
}
