//! A four-lane f32 vector for the searches' inner loops: SSE2 on x86-64 (part
//! of the baseline, so always available), plain arrays elsewhere. Every
//! operation is a lane-wise IEEE operation with the same result on both
//! paths (including `max`/`min`, defined as `a > b ? a : b` / `a < b ? a : b`,
//! which is what `maxps`/`minps` compute), so the encoders' bytes do not
//! depend on the platform.

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
