//! Dot products of an f32 activation vector with one weight row stored as f32, bf16 or f16.
//!
//! The SIMD versions are selected once at run time from the CPU's features (`DotKernel::detect`);
//! `scalar_*` are the reference twins that the property tests compare against.

/// Widens a bf16 bit pattern to f32 (exact: bf16 is the top half of an f32).
#[inline]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Widens an IEEE half bit pattern to f32 (exact).
#[inline]
pub fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

pub fn scalar_dot_f32(w: &[f32], x: &[f32]) -> f32 {
    // Eight partial sums, as the SIMD paths do, keeps rounding comparable and lets the
    // compiler vectorise this loop too.
    let mut acc = [0f32; 8];
    let chunks = w.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += w[c * 8 + l] * x[c * 8 + l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..w.len() {
        s += w[i] * x[i];
    }
    s
}

pub fn scalar_dot_bf16(w: &[u16], x: &[f32]) -> f32 {
    w.iter().zip(x).map(|(&a, &b)| bf16_to_f32(a) * b).sum()
}

pub fn scalar_dot_f16(w: &[u16], x: &[f32]) -> f32 {
    w.iter().zip(x).map(|(&a, &b)| f16_to_f32(a) * b).sum()
}

/// Which implementation the dot products use on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DotKernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl DotKernel {
    /// The fastest kernel this CPU supports. `MIDEUM_KERNEL=scalar` forces the reference path.
    pub fn detect() -> DotKernel {
        if std::env::var("MIDEUM_KERNEL").is_ok_and(|v| v == "scalar") {
            return DotKernel::Scalar;
        }
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return DotKernel::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                return DotKernel::Avx2;
            }
        }
        DotKernel::Scalar
    }

    /// All kernels usable on this CPU (for tests and benchmarks).
    pub fn available() -> Vec<DotKernel> {
        let mut v = vec![DotKernel::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                v.push(DotKernel::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                v.push(DotKernel::Avx512);
            }
        }
        v
    }

    /// `w · x` for equal-length slices.
    #[inline]
    pub fn dot_f32(self, w: &[f32], x: &[f32]) -> f32 {
        debug_assert_eq!(w.len(), x.len());
        match self {
            DotKernel::Scalar => scalar_dot_f32(w, x),
            // SAFETY: `detect`/`available` only return these variants when the CPU has the
            // features the functions are compiled for.
            #[cfg(target_arch = "x86_64")]
            DotKernel::Avx2 => unsafe { x86::dot_f32_avx2(w, x) },
            #[cfg(target_arch = "x86_64")]
            DotKernel::Avx512 => unsafe { x86::dot_f32_avx512(w, x) },
        }
    }

    #[inline]
    pub fn dot_bf16(self, w: &[u16], x: &[f32]) -> f32 {
        debug_assert_eq!(w.len(), x.len());
        match self {
            DotKernel::Scalar => scalar_dot_bf16(w, x),
            // SAFETY: see `dot_f32`.
            #[cfg(target_arch = "x86_64")]
            DotKernel::Avx2 => unsafe { x86::dot_bf16_avx2(w, x) },
            #[cfg(target_arch = "x86_64")]
            DotKernel::Avx512 => unsafe { x86::dot_bf16_avx512(w, x) },
        }
    }

    #[inline]
    pub fn dot_f16(self, w: &[u16], x: &[f32]) -> f32 {
        debug_assert_eq!(w.len(), x.len());
        match self {
            DotKernel::Scalar => scalar_dot_f16(w, x),
            // SAFETY: see `dot_f32`.
            #[cfg(target_arch = "x86_64")]
            DotKernel::Avx2 => unsafe { x86::dot_f16_avx2(w, x) },
            #[cfg(target_arch = "x86_64")]
            DotKernel::Avx512 => unsafe { x86::dot_f16_avx512(w, x) },
        }
    }

    /// Widens a bf16 row into `out` (used when one weight row meets many activation rows).
    pub fn widen_bf16(self, w: &[u16], out: &mut [f32]) {
        for (o, &b) in out.iter_mut().zip(w) {
            *o = bf16_to_f32(b);
        }
    }

    pub fn widen_f16(self, w: &[u16], out: &mut [f32]) {
        for (o, &b) in out.iter_mut().zip(w) {
            *o = f16_to_f32(b);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{bf16_to_f32, f16_to_f32};
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum256(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0x55>(s, s));
        _mm_cvtss_f32(s)
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA; `w.len() == x.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_f32_avx2(w: &[f32], x: &[f32]) -> f32 {
        let n = w.len().min(x.len());
        let mut a0 = _mm256_setzero_ps();
        let mut a1 = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY: every load reads 8 floats at index i..i+8 with i + 16 <= n or i + 8 <= n.
        unsafe {
            while i + 16 <= n {
                a0 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(w.as_ptr().add(i)),
                    _mm256_loadu_ps(x.as_ptr().add(i)),
                    a0,
                );
                a1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(w.as_ptr().add(i + 8)),
                    _mm256_loadu_ps(x.as_ptr().add(i + 8)),
                    a1,
                );
                i += 16;
            }
            while i + 8 <= n {
                a0 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(w.as_ptr().add(i)),
                    _mm256_loadu_ps(x.as_ptr().add(i)),
                    a0,
                );
                i += 8;
            }
        }
        let mut s = hsum256(_mm256_add_ps(a0, a1));
        while i < n {
            s += w[i] * x[i];
            i += 1;
        }
        s
    }

    /// # Safety
    /// The CPU must support AVX-512F; `w.len() == x.len()`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_f32_avx512(w: &[f32], x: &[f32]) -> f32 {
        let n = w.len().min(x.len());
        let mut a0 = _mm512_setzero_ps();
        let mut a1 = _mm512_setzero_ps();
        let mut i = 0;
        // SAFETY: loads stay within i..i+32 <= n (or i+16 <= n).
        unsafe {
            while i + 32 <= n {
                a0 = _mm512_fmadd_ps(
                    _mm512_loadu_ps(w.as_ptr().add(i)),
                    _mm512_loadu_ps(x.as_ptr().add(i)),
                    a0,
                );
                a1 = _mm512_fmadd_ps(
                    _mm512_loadu_ps(w.as_ptr().add(i + 16)),
                    _mm512_loadu_ps(x.as_ptr().add(i + 16)),
                    a1,
                );
                i += 32;
            }
            while i + 16 <= n {
                a0 = _mm512_fmadd_ps(
                    _mm512_loadu_ps(w.as_ptr().add(i)),
                    _mm512_loadu_ps(x.as_ptr().add(i)),
                    a0,
                );
                i += 16;
            }
        }
        let mut s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
        while i < n {
            s += w[i] * x[i];
            i += 1;
        }
        s
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA; `w.len() == x.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_bf16_avx2(w: &[u16], x: &[f32]) -> f32 {
        let n = w.len().min(x.len());
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY: reads 8 u16 (16 bytes) and 8 f32 starting at i with i + 8 <= n.
        unsafe {
            while i + 8 <= n {
                let h = _mm_loadu_si128(w.as_ptr().add(i) as *const __m128i);
                let wf = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)));
                acc = _mm256_fmadd_ps(wf, _mm256_loadu_ps(x.as_ptr().add(i)), acc);
                i += 8;
            }
        }
        let mut s = hsum256(acc);
        while i < n {
            s += bf16_to_f32(w[i]) * x[i];
            i += 1;
        }
        s
    }

    /// # Safety
    /// The CPU must support AVX-512F; `w.len() == x.len()`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_bf16_avx512(w: &[u16], x: &[f32]) -> f32 {
        let n = w.len().min(x.len());
        let mut acc = _mm512_setzero_ps();
        let mut i = 0;
        // SAFETY: reads 16 u16 (32 bytes) and 16 f32 starting at i with i + 16 <= n.
        unsafe {
            while i + 16 <= n {
                let h = _mm256_loadu_si256(w.as_ptr().add(i) as *const __m256i);
                let wf = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)));
                acc = _mm512_fmadd_ps(wf, _mm512_loadu_ps(x.as_ptr().add(i)), acc);
                i += 16;
            }
        }
        let mut s = _mm512_reduce_add_ps(acc);
        while i < n {
            s += bf16_to_f32(w[i]) * x[i];
            i += 1;
        }
        s
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `w.len() == x.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16_avx2(w: &[u16], x: &[f32]) -> f32 {
        let n = w.len().min(x.len());
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY: reads 8 u16 and 8 f32 starting at i with i + 8 <= n.
        unsafe {
            while i + 8 <= n {
                let h = _mm_loadu_si128(w.as_ptr().add(i) as *const __m128i);
                acc = _mm256_fmadd_ps(_mm256_cvtph_ps(h), _mm256_loadu_ps(x.as_ptr().add(i)), acc);
                i += 8;
            }
        }
        let mut s = hsum256(acc);
        while i < n {
            s += f16_to_f32(w[i]) * x[i];
            i += 1;
        }
        s
    }

    /// # Safety
    /// The CPU must support AVX-512F; `w.len() == x.len()`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_f16_avx512(w: &[u16], x: &[f32]) -> f32 {
        let n = w.len().min(x.len());
        let mut acc = _mm512_setzero_ps();
        let mut i = 0;
        // SAFETY: reads 16 u16 and 16 f32 starting at i with i + 16 <= n.
        unsafe {
            while i + 16 <= n {
                let h = _mm256_loadu_si256(w.as_ptr().add(i) as *const __m256i);
                acc = _mm512_fmadd_ps(_mm512_cvtph_ps(h), _mm512_loadu_ps(x.as_ptr().add(i)), acc);
                i += 16;
            }
        }
        let mut s = _mm512_reduce_add_ps(acc);
        while i < n {
            s += f16_to_f32(w[i]) * x[i];
            i += 1;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(a: f32, b: f32, n: usize) -> bool {
        (a - b).abs() <= 1e-4 * (1.0 + n as f32).sqrt() * (1.0 + a.abs().max(b.abs()))
    }

    proptest! {
        #[test]
        fn simd_dot_matches_scalar(v in proptest::collection::vec((-4.0f32..4.0, -4.0f32..4.0), 0..300)) {
            let w: Vec<f32> = v.iter().map(|p| p.0).collect();
            let x: Vec<f32> = v.iter().map(|p| p.1).collect();
            let wb: Vec<u16> = w.iter().map(|&f| half::bf16::from_f32(f).to_bits()).collect();
            let wh: Vec<u16> = w.iter().map(|&f| half::f16::from_f32(f).to_bits()).collect();
            let r32 = scalar_dot_f32(&w, &x);
            let rb = scalar_dot_bf16(&wb, &x);
            let rh = scalar_dot_f16(&wh, &x);
            for k in DotKernel::available() {
                prop_assert!(close(k.dot_f32(&w, &x), r32, w.len()), "{k:?} f32");
                prop_assert!(close(k.dot_bf16(&wb, &x), rb, w.len()), "{k:?} bf16");
                prop_assert!(close(k.dot_f16(&wh, &x), rh, w.len()), "{k:?} f16");
            }
        }
    }

    #[test]
    fn widening_is_exact() {
        for f in [0.0f32, -1.5, 3.140625, 65504.0, -0.000061035156] {
            assert_eq!(
                bf16_to_f32(half::bf16::from_f32(f).to_bits()),
                half::bf16::from_f32(f).to_f32()
            );
            assert_eq!(
                f16_to_f32(half::f16::from_f32(f).to_bits()),
                half::f16::from_f32(f).to_f32()
            );
        }
        let w: Vec<u16> = (0..37)
            .map(|i| half::f16::from_f32(i as f32 * 0.25).to_bits())
            .collect();
        let mut out = vec![0f32; 37];
        DotKernel::detect().widen_f16(&w, &mut out);
        assert_eq!(out[36], 9.0);
    }
}
