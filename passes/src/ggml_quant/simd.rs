//! Vectors for the searches' inner loops.
//!
//! [`F4`] is a four-lane f32 vector: SSE2 on x86-64 (part of the baseline, so
//! always available), plain arrays elsewhere. Every operation is a lane-wise
//! IEEE operation with the same result on both paths (including `max`/`min`,
//! defined as `a > b ? a : b` / `a < b ? a : b`, which is what
//! `maxps`/`minps` compute), so the encoders' bytes do not depend on the
//! platform.
//!
//! The batched kernels in `search.rs` evaluate several candidate scales over
//! the same values at once. They are written once against [`Lanes`]: a
//! vector holding [`Lanes::CANDS`] candidates side by side, each in four
//! lanes that see exactly the values, operations and summation order of an
//! [`F4`] evaluating that candidate alone. [`F8`] (AVX, two candidates) and
//! [`F16`] (AVX-512F, four candidates) are picked at run time when the CPU
//! has them; since `vmaxps`/`vminps` of every width share `maxps`'s rule and
//! no operation is fused, every path gives bit-identical results.

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::arch::x86_64::*;

    #[derive(Clone, Copy)]
    pub(crate) struct F4(__m128);

    // SAFETY (all `unsafe` blocks below): SSE2 is part of the x86-64
    // baseline, and `load` reads exactly four in-bounds elements.
    impl F4 {
        #[inline(always)]
        pub(crate) fn splat(v: f32) -> Self {
            F4(unsafe { _mm_set1_ps(v) })
        }
        #[inline(always)]
        pub(crate) fn zero() -> Self {
            F4(unsafe { _mm_setzero_ps() })
        }
        /// The first four values of `s` (which must hold at least four).
        #[inline(always)]
        pub(crate) fn load(s: &[f32]) -> Self {
            let s = &s[..4];
            F4(unsafe { _mm_loadu_ps(s.as_ptr()) })
        }
        #[inline(always)]
        pub(crate) fn to_array(self) -> [f32; 4] {
            let mut a = [0f32; 4];
            unsafe { _mm_storeu_ps(a.as_mut_ptr(), self.0) };
            a
        }
        /// Lane-wise `self > o ? self : o`.
        #[inline(always)]
        pub(crate) fn max(self, o: Self) -> Self {
            F4(unsafe { _mm_max_ps(self.0, o.0) })
        }
        /// Lane-wise `self < o ? self : o`.
        #[inline(always)]
        pub(crate) fn min(self, o: Self) -> Self {
            F4(unsafe { _mm_min_ps(self.0, o.0) })
        }
    }
    impl std::ops::Add for F4 {
        type Output = F4;
        #[inline(always)]
        fn add(self, o: F4) -> F4 {
            F4(unsafe { _mm_add_ps(self.0, o.0) })
        }
    }
    impl std::ops::Sub for F4 {
        type Output = F4;
        #[inline(always)]
        fn sub(self, o: F4) -> F4 {
            F4(unsafe { _mm_sub_ps(self.0, o.0) })
        }
    }
    impl std::ops::Mul for F4 {
        type Output = F4;
        #[inline(always)]
        fn mul(self, o: F4) -> F4 {
            F4(unsafe { _mm_mul_ps(self.0, o.0) })
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    #[derive(Clone, Copy)]
    pub(crate) struct F4([f32; 4]);

    impl F4 {
        #[inline(always)]
        pub(crate) fn splat(v: f32) -> Self {
            F4([v; 4])
        }
        #[inline(always)]
        pub(crate) fn zero() -> Self {
            F4([0.0; 4])
        }
        #[inline(always)]
        pub(crate) fn load(s: &[f32]) -> Self {
            F4([s[0], s[1], s[2], s[3]])
        }
        #[inline(always)]
        pub(crate) fn to_array(self) -> [f32; 4] {
            self.0
        }
        #[inline(always)]
        pub(crate) fn max(self, o: Self) -> Self {
            F4(std::array::from_fn(|i| {
                if self.0[i] > o.0[i] {
                    self.0[i]
                } else {
                    o.0[i]
                }
            }))
        }
        #[inline(always)]
        pub(crate) fn min(self, o: Self) -> Self {
            F4(std::array::from_fn(|i| {
                if self.0[i] < o.0[i] {
                    self.0[i]
                } else {
                    o.0[i]
                }
            }))
        }
    }
    impl std::ops::Add for F4 {
        type Output = F4;
        #[inline(always)]
        fn add(self, o: F4) -> F4 {
            F4(std::array::from_fn(|i| self.0[i] + o.0[i]))
        }
    }
    impl std::ops::Sub for F4 {
        type Output = F4;
        #[inline(always)]
        fn sub(self, o: F4) -> F4 {
            F4(std::array::from_fn(|i| self.0[i] - o.0[i]))
        }
    }
    impl std::ops::Mul for F4 {
        type Output = F4;
        #[inline(always)]
        fn mul(self, o: F4) -> F4 {
            F4(std::array::from_fn(|i| self.0[i] * o.0[i]))
        }
    }
}

pub(crate) use imp::F4;
#[cfg(target_arch = "x86_64")]
pub(crate) use wide::{F16, F8};

/// A vector of `CANDS` candidates × four lanes (see the module docs).
pub(crate) trait Lanes:
    Copy + std::ops::Add<Output = Self> + std::ops::Sub<Output = Self> + std::ops::Mul<Output = Self>
{
    /// Candidates per vector.
    const CANDS: usize;
    fn splat(v: f32) -> Self;
    fn zero() -> Self;
    /// `x[0..4]`, repeated for every candidate.
    fn load4(x: &[f32]) -> Self;
    /// `p[c]` in the four lanes of candidate c (`p` holds at least `CANDS`).
    fn per_cand(p: &[f32]) -> Self;
    fn max(self, o: Self) -> Self;
    fn min(self, o: Self) -> Self;
    /// Per candidate c, `out[c]` = the sum of its four lanes in [`F4::hsum`]'s order.
    fn hsums(self, out: &mut [f32; 4]);
    /// Lane-wise round(clamp(v, lo, hi)) exactly as [`F4::round_clamp`].
    #[inline(always)]
    fn round_clamp(self, lo: Self, hi: Self) -> Self {
        let magic = Self::splat(12_582_912.0);
        (self.max(lo).min(hi) + magic) - magic
    }
}

impl Lanes for F4 {
    const CANDS: usize = 1;
    #[inline(always)]
    fn splat(v: f32) -> Self {
        F4::splat(v)
    }
    #[inline(always)]
    fn zero() -> Self {
        F4::zero()
    }
    #[inline(always)]
    fn load4(x: &[f32]) -> Self {
        F4::load(x)
    }
    #[inline(always)]
    fn per_cand(p: &[f32]) -> Self {
        F4::splat(p[0])
    }
    #[inline(always)]
    fn max(self, o: Self) -> Self {
        F4::max(self, o)
    }
    #[inline(always)]
    fn min(self, o: Self) -> Self {
        F4::min(self, o)
    }
    #[inline(always)]
    fn hsums(self, out: &mut [f32; 4]) {
        out[0] = self.hsum();
    }
}

/// The AVX and AVX-512F vectors. Their methods may only run on a CPU with
/// the feature: they are called only from the `#[target_feature]` kernels
/// in `search.rs`, which are called only after run-time detection.
#[cfg(target_arch = "x86_64")]
mod wide {
    use std::arch::x86_64::*;

    use super::Lanes;

    #[inline(always)]
    fn hsum4(a: &[f32]) -> f32 {
        (a[0] + a[2]) + (a[1] + a[3])
    }

    #[derive(Clone, Copy)]
    pub(crate) struct F8(__m256);

    // SAFETY (all `unsafe` blocks in this impl): AVX is present (see the
    // module docs); loads read four in-bounds elements.
    impl Lanes for F8 {
        const CANDS: usize = 2;
        #[inline(always)]
        fn splat(v: f32) -> Self {
            F8(unsafe { _mm256_set1_ps(v) })
        }
        #[inline(always)]
        fn zero() -> Self {
            F8(unsafe { _mm256_setzero_ps() })
        }
        #[inline(always)]
        fn load4(x: &[f32]) -> Self {
            let x = &x[..4];
            F8(unsafe {
                let v = _mm_loadu_ps(x.as_ptr());
                _mm256_set_m128(v, v)
            })
        }
        #[inline(always)]
        fn per_cand(p: &[f32]) -> Self {
            F8(unsafe { _mm256_set_m128(_mm_set1_ps(p[1]), _mm_set1_ps(p[0])) })
        }
        #[inline(always)]
        fn max(self, o: Self) -> Self {
            F8(unsafe { _mm256_max_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn min(self, o: Self) -> Self {
            F8(unsafe { _mm256_min_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn hsums(self, out: &mut [f32; 4]) {
            let mut a = [0f32; 8];
            unsafe { _mm256_storeu_ps(a.as_mut_ptr(), self.0) };
            out[0] = hsum4(&a[0..4]);
            out[1] = hsum4(&a[4..8]);
        }
    }
    impl std::ops::Add for F8 {
        type Output = F8;
        #[inline(always)]
        fn add(self, o: F8) -> F8 {
            F8(unsafe { _mm256_add_ps(self.0, o.0) })
        }
    }
    impl std::ops::Sub for F8 {
        type Output = F8;
        #[inline(always)]
        fn sub(self, o: F8) -> F8 {
            F8(unsafe { _mm256_sub_ps(self.0, o.0) })
        }
    }
    impl std::ops::Mul for F8 {
        type Output = F8;
        #[inline(always)]
        fn mul(self, o: F8) -> F8 {
            F8(unsafe { _mm256_mul_ps(self.0, o.0) })
        }
    }

    #[derive(Clone, Copy)]
    pub(crate) struct F16(__m512);

    // SAFETY (all `unsafe` blocks in this impl): AVX-512F is present (see
    // the module docs); loads read four in-bounds elements.
    impl Lanes for F16 {
        const CANDS: usize = 4;
        #[inline(always)]
        fn splat(v: f32) -> Self {
            F16(unsafe { _mm512_set1_ps(v) })
        }
        #[inline(always)]
        fn zero() -> Self {
            F16(unsafe { _mm512_setzero_ps() })
        }
        #[inline(always)]
        fn load4(x: &[f32]) -> Self {
            let x = &x[..4];
            F16(unsafe { _mm512_broadcast_f32x4(_mm_loadu_ps(x.as_ptr())) })
        }
        #[inline(always)]
        fn per_cand(p: &[f32]) -> Self {
            let (a, b, c, d) = (p[0], p[1], p[2], p[3]);
            F16(unsafe { _mm512_setr_ps(a, a, a, a, b, b, b, b, c, c, c, c, d, d, d, d) })
        }
        #[inline(always)]
        fn max(self, o: Self) -> Self {
            F16(unsafe { _mm512_max_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn min(self, o: Self) -> Self {
            F16(unsafe { _mm512_min_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn hsums(self, out: &mut [f32; 4]) {
            let mut a = [0f32; 16];
            unsafe { _mm512_storeu_ps(a.as_mut_ptr(), self.0) };
            for (c, o) in out.iter_mut().enumerate() {
                *o = hsum4(&a[4 * c..4 * c + 4]);
            }
        }
    }
    impl std::ops::Add for F16 {
        type Output = F16;
        #[inline(always)]
        fn add(self, o: F16) -> F16 {
            F16(unsafe { _mm512_add_ps(self.0, o.0) })
        }
    }
    impl std::ops::Sub for F16 {
        type Output = F16;
        #[inline(always)]
        fn sub(self, o: F16) -> F16 {
            F16(unsafe { _mm512_sub_ps(self.0, o.0) })
        }
    }
    impl std::ops::Mul for F16 {
        type Output = F16;
        #[inline(always)]
        fn mul(self, o: F16) -> F16 {
            F16(unsafe { _mm512_mul_ps(self.0, o.0) })
        }
    }
}

impl F4 {
    /// The sum of the lanes, in a fixed order.
    #[inline(always)]
    pub(crate) fn hsum(self) -> f32 {
        let a = self.to_array();
        (a[0] + a[2]) + (a[1] + a[3])
    }
    /// Lane-wise round(clamp(v, lo, hi)), ties to even, NaN → lo; exact
    /// for |lo|, |hi| ≤ 2^22.
    #[inline(always)]
    pub(crate) fn round_clamp(self, lo: F4, hi: F4) -> F4 {
        let magic = F4::splat(12_582_912.0);
        (self.max(lo).min(hi) + magic) - magic
    }
}
