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
    const GRID: [f32; 16] = [
        1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25,
    ];
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
        assert!(lo >= 0.0 && lo < 0.01, "{lo}");
        assert!(hi > 0.95 && hi < 1.1, "{hi}");
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
