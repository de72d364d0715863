//! Dot products of one block-quantized weight row with one 8-bit activation row
//! ([`ActRow`]), with runtime dispatch between AVX-512 VNNI and the scalar reference twins.
//!
//! All versions compute each block's integer dot product exactly (weights as unsigned
//! `n`/`q + 128`, activations as i8, offsets removed with the activation sums) and differ
//! only in the order the per-block float terms are added.

use crate::quant::{scale_min_k4, ActRow, QuantType, QK_K};
use half::f16;

#[inline]
fn rd_f16(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Which implementation the quantized dot products use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QKernel {
    Scalar,
    /// AVX2 + FMA + F16C (Haswell, Zen 1 and later).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512 F/BW/VL + VNNI (Zen 4, Ice Lake and later).
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

impl QKernel {
    /// The fastest kernel this CPU supports (`MIDEUM_KERNEL=scalar` forces the reference).
    pub fn detect() -> QKernel {
        if std::env::var("MIDEUM_KERNEL").is_ok_and(|v| v == "scalar") {
            return QKernel::Scalar;
        }
        QKernel::available()
            .last()
            .copied()
            .unwrap_or(QKernel::Scalar)
    }

    pub fn available() -> Vec<QKernel> {
        #[allow(unused_mut)]
        let mut v = vec![QKernel::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                v.push(QKernel::Avx2);
            }
            if has!("avx512f")
                && has!("avx512bw")
                && has!("avx512vl")
                && has!("avx512vnni")
                && has!("fma")
                && has!("f16c")
            {
                v.push(QKernel::Avx512Vnni);
            }
        }
        v
    }

    /// `w · a` for a weight row `w` of type `qt` and a quantized activation row of the kind
    /// `qt.act_kind()` with the same number of elements.
    #[inline]
    pub fn dot(self, qt: QuantType, w: &[u8], a: ActRow<'_>) -> f32 {
        let k = a.qs.len();
        assert!(
            k.is_multiple_of(qt.block_elems()) && w.len() >= qt.row_bytes(k),
            "quantized row shape"
        );
        assert!(
            a.d.len() * qt.block_elems() >= k
                && a.sums.len()
                    >= match qt.act_kind() {
                        crate::quant::ActKind::B32 => k / 32,
                        crate::quant::ActKind::K256 => k / 16,
                    },
            "activation row shape"
        );
        match self {
            QKernel::Scalar => scalar_dot(qt, w, a),
            // SAFETY: `available`/`detect` only return this variant when the CPU has every
            // feature the functions are compiled for; the shapes were checked above, which is
            // what the functions' raw-pointer reads rely on.
            #[cfg(target_arch = "x86_64")]
            QKernel::Avx512Vnni => unsafe { x86::vnni::dot_rows::<1>(qt, w, &[a])[0] },
            // SAFETY: as above, for AVX2/FMA/F16C.
            #[cfg(target_arch = "x86_64")]
            QKernel::Avx2 => unsafe { x86::avx2::dot_rows::<1>(qt, w, &[a])[0] },
        }
    }

    /// `w · a[r]` for `R` activation rows at once: each weight block is loaded and unpacked
    /// once for all of them (the prefill / batched-decode micro-kernel).
    #[inline]
    pub fn dot_rows<const R: usize>(
        self,
        qt: QuantType,
        w: &[u8],
        a: &[ActRow<'_>; R],
    ) -> [f32; R] {
        let Some(first) = a.first() else {
            return [0f32; R];
        };
        let k = first.qs.len();
        assert!(
            k.is_multiple_of(qt.block_elems()) && w.len() >= qt.row_bytes(k),
            "quantized row shape"
        );
        let ns = match qt.act_kind() {
            crate::quant::ActKind::B32 => k / 32,
            crate::quant::ActKind::K256 => k / 16,
        };
        for r in a {
            assert!(
                r.qs.len() == k && r.d.len() * qt.block_elems() >= k && r.sums.len() >= ns,
                "activation row shape"
            );
        }
        match self {
            QKernel::Scalar => a.map(|r| scalar_dot(qt, w, r)),
            // SAFETY: as in `dot`; every row's shape was checked above.
            #[cfg(target_arch = "x86_64")]
            QKernel::Avx512Vnni => unsafe { x86::vnni::dot_rows::<R>(qt, w, a) },
            // SAFETY: as above, for AVX2/FMA/F16C.
            #[cfg(target_arch = "x86_64")]
            QKernel::Avx2 => unsafe { x86::avx2::dot_rows::<R>(qt, w, a) },
        }
    }
}

/// The reference: per-block integer dot products in plain Rust.
pub fn scalar_dot(qt: QuantType, w: &[u8], a: ActRow<'_>) -> f32 {
    let k = a.qs.len();
    let (be, bb) = (qt.block_elems(), qt.block_bytes());
    let mut total = 0f32;
    for b in 0..k / be {
        let blk = &w[b * bb..(b + 1) * bb];
        let aq = &a.qs[b * be..(b + 1) * be];
        match qt {
            QuantType::Q8_0 => {
                let dot: i32 = blk[2..34]
                    .iter()
                    .zip(aq)
                    .map(|(&q, &x)| (q ^ 0x80) as i32 * x as i32)
                    .sum::<i32>()
                    - 128 * a.sums[b];
                total += rd_f16(blk, 0) * a.d[b] * dot as f32;
            }
            QuantType::Q4_0 => {
                let mut dot = 0i32;
                for j in 0..16 {
                    dot += (blk[2 + j] & 0xF) as i32 * aq[j] as i32;
                    dot += (blk[2 + j] >> 4) as i32 * aq[j + 16] as i32;
                }
                dot -= 8 * a.sums[b];
                total += rd_f16(blk, 0) * a.d[b] * dot as f32;
            }
            QuantType::Q4K | QuantType::Q5K => {
                let (d, dmin) = (rd_f16(blk, 0), rd_f16(blk, 2));
                let scales = &blk[4..16];
                let five = qt == QuantType::Q5K;
                let (qh, qs) = if five {
                    (&blk[16..48], &blk[48..176])
                } else {
                    (&blk[0..0], &blk[16..144])
                };
                let (mut sumi, mut summ) = (0i32, 0i32);
                for j in 0..8 {
                    let (sc, m) = scale_min_k4(j, scales);
                    let (c, hi) = (j / 2, j % 2 == 1);
                    let mut dot = 0i32;
                    for l in 0..32 {
                        let byte = qs[32 * c + l];
                        let mut n = if hi { byte >> 4 } else { byte & 0xF };
                        if five {
                            n |= ((qh[l] >> j) & 1) << 4;
                        }
                        dot += n as i32 * aq[32 * j + l] as i32;
                    }
                    sumi += sc as i32 * dot;
                    summ += m as i32 * (a.sums[b * 16 + 2 * j] + a.sums[b * 16 + 2 * j + 1]);
                }
                total += a.d[b] * (d * sumi as f32 - dmin * summ as f32);
            }
            QuantType::Q6K => {
                let d = rd_f16(blk, 208);
                let mut sumi = 0i32;
                for half in 0..2 {
                    let ql = &blk[64 * half..64 * half + 64];
                    let qh = &blk[128 + 32 * half..128 + 32 * half + 32];
                    for c in 0..4 {
                        for sub in 0..2 {
                            let g = 8 * half + 2 * c + sub;
                            let sc = blk[192 + g] as i8 as i32;
                            let mut dot = 0i32;
                            for l in 16 * sub..16 * sub + 16 {
                                let lo = ql[l + 32 * (c % 2)];
                                let lo = if c >= 2 { lo >> 4 } else { lo & 0xF };
                                let n = lo | (((qh[l] >> (2 * c)) & 3) << 4);
                                dot += n as i32 * aq[128 * half + 32 * c + l] as i32;
                            }
                            sumi += sc * (dot - 32 * a.sums[b * 16 + g]);
                        }
                    }
                }
                total += a.d[b] * d * sumi as f32;
            }
        }
    }
    total
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum256(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// f16 at `p` (unaligned) to f32.
    #[inline]
    #[target_feature(enable = "f16c")]
    unsafe fn ld_f16(p: *const u8) -> f32 {
        // SAFETY: the caller guarantees two readable bytes at `p`.
        let bits = unsafe { (p as *const u16).read_unaligned() };
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    /// The kernels, instantiated once per instruction set: each module supplies `dp(u, a)`
    /// (per-lane sums of four u8×i8 products, u ≤ 63) and `q8_block(w, a, Σa)` (per-lane
    /// partial sums of one signed Q8_0 block), compiled with the module's target features.
    macro_rules! kernels {
        ($feat:literal) => {
            /// # Safety
            /// See [`dot_q8_0`].
            #[inline]
            #[target_feature(enable = $feat)]
            pub unsafe fn dot_rows<const R: usize>(
                qt: QuantType,
                w: &[u8],
                a: &[ActRow<'_>; R],
            ) -> [f32; R] {
                // SAFETY: the caller's contract is the callee's.
                unsafe {
                    match qt {
                        QuantType::Q8_0 => dot_q8_0::<R>(w, a),
                        QuantType::Q4_0 => dot_q4_0::<R>(w, a),
                        QuantType::Q4K => dot_k_asym::<false, R>(w, a),
                        QuantType::Q5K => dot_k_asym::<true, R>(w, a),
                        QuantType::Q6K => dot_q6k::<R>(w, a),
                    }
                }
            }

            /// # Safety
            /// CPU has AVX-512 VNNI/VL/BW, AVX2, FMA, F16C; `w` holds `a[r].qs.len() / 32` blocks and
            /// every `a[r]` has that many values, a scale and a sum per block (checked by the callers).
            #[inline]
            #[target_feature(enable = $feat)]
            pub unsafe fn dot_q8_0<const R: usize>(w: &[u8], a: &[ActRow<'_>; R]) -> [f32; R] {
                let nb = a[0].qs.len() / 32;
                let mut acc = [_mm256_setzero_ps(); R];
                let wp = w.as_ptr();
                for b in 0..nb {
                    // SAFETY (whole loop body): block b < nb lies inside `w` (34 bytes each) and `a`.
                    unsafe {
                        let blk = wp.add(b * 34);
                        // Stream ahead: a decode matmul reads each weight once, straight from DRAM.
                        _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(34 * 16) as *const i8);
                        let wq = _mm256_loadu_si256(blk.add(2) as *const __m256i);
                        let dw = ld_f16(blk);
                        for r in 0..R {
                            let av =
                                _mm256_loadu_si256(a[r].qs.as_ptr().add(b * 32) as *const __m256i);
                            let p = q8_block(wq, av, *a[r].sums.get_unchecked(b));
                            let s = dw * *a[r].d.get_unchecked(b);
                            acc[r] =
                                _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(s), acc[r]);
                        }
                    }
                }
                let mut out = [0f32; R];
                for r in 0..R {
                    out[r] = hsum256(acc[r]);
                }
                out
            }

            /// # Safety
            /// As [`dot_q8_0`], with 18-byte blocks.
            #[inline]
            #[target_feature(enable = $feat)]
            pub unsafe fn dot_q4_0<const R: usize>(w: &[u8], a: &[ActRow<'_>; R]) -> [f32; R] {
                let nb = a[0].qs.len() / 32;
                let m4 = _mm_set1_epi8(0xF);
                let mut acc = [_mm256_setzero_ps(); R];
                let wp = w.as_ptr();
                for b in 0..nb {
                    // SAFETY (whole loop body): block b < nb lies inside `w` (18 bytes each) and `a`.
                    unsafe {
                        let blk = wp.add(b * 18);
                        _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(18 * 32) as *const i8);
                        let q = _mm_loadu_si128(blk.add(2) as *const __m128i);
                        let lo = _mm_and_si128(q, m4);
                        let hi = _mm_and_si128(_mm_srli_epi16(q, 4), m4);
                        let wq = _mm256_set_m128i(hi, lo);
                        let dw = ld_f16(blk);
                        for r in 0..R {
                            let av =
                                _mm256_loadu_si256(a[r].qs.as_ptr().add(b * 32) as *const __m256i);
                            let p = dp(wq, av);
                            let corr = _mm256_zextsi128_si256(_mm_cvtsi32_si128(
                                8 * *a[r].sums.get_unchecked(b),
                            ));
                            let p = _mm256_sub_epi32(p, corr);
                            let s = dw * *a[r].d.get_unchecked(b);
                            acc[r] =
                                _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(s), acc[r]);
                        }
                    }
                }
                let mut out = [0f32; R];
                for r in 0..R {
                    out[r] = hsum256(acc[r]);
                }
                out
            }

            /// Q4_K and Q5_K share everything but the fifth bit.
            ///
            /// # Safety
            /// As [`dot_q8_0`], with 144/176-byte blocks and K256 activations.
            #[inline]
            #[target_feature(enable = $feat)]
            pub unsafe fn dot_k_asym<const FIVE: bool, const R: usize>(
                w: &[u8],
                a: &[ActRow<'_>; R],
            ) -> [f32; R] {
                let nb = a[0].qs.len() / QK_K;
                let bb = if FIVE { 176 } else { 144 };
                let m4 = _mm256_set1_epi8(0xF);
                let zero = _mm256_setzero_si256();
                let mut acc = [_mm256_setzero_ps(); R];
                let mut mins_total = [0f32; R];
                let wp = w.as_ptr();
                for b in 0..nb {
                    // SAFETY (whole loop body): block b < nb lies inside `w` and `a` (checked by the
                    // caller); every offset below stays inside one block.
                    unsafe {
                        let blk = wp.add(b * bb);
                        _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(2 * bb) as *const i8);
                        _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(2 * bb + 64) as *const i8);
                        _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(2 * bb + 128) as *const i8);
                        let scales = std::slice::from_raw_parts(blk.add(4), 12);
                        let mut sc = [0i32; 8];
                        let mut mn = [0i32; 8];
                        for j in 0..8 {
                            let (s, m) = scale_min_k4(j, scales);
                            sc[j] = s as i32;
                            mn[j] = m as i32;
                        }
                        let qs = blk.add(if FIVE { 48 } else { 16 });
                        let qh = if FIVE {
                            _mm256_loadu_si256(blk.add(16) as *const __m256i)
                        } else {
                            zero
                        };
                        let mut sumi = [zero; R];
                        for c in 0..4 {
                            let q = _mm256_loadu_si256(qs.add(32 * c) as *const __m256i);
                            let mut lo = _mm256_and_si256(q, m4);
                            let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                            if FIVE {
                                let b0 = _mm256_set1_epi8(1 << (2 * c));
                                let b1 = _mm256_set1_epi8((1u8 << (2 * c + 1)) as i8);
                                let sixteen = _mm256_set1_epi8(16);
                                lo = _mm256_or_si256(
                                    lo,
                                    _mm256_and_si256(
                                        _mm256_cmpeq_epi8(_mm256_and_si256(qh, b0), b0),
                                        sixteen,
                                    ),
                                );
                                hi = _mm256_or_si256(
                                    hi,
                                    _mm256_and_si256(
                                        _mm256_cmpeq_epi8(_mm256_and_si256(qh, b1), b1),
                                        sixteen,
                                    ),
                                );
                            }
                            let s0 = _mm256_set1_epi32(sc[2 * c]);
                            let s1 = _mm256_set1_epi32(sc[2 * c + 1]);
                            for r in 0..R {
                                let aq = a[r].qs.as_ptr().add(b * QK_K);
                                let a0 = _mm256_loadu_si256(aq.add(64 * c) as *const __m256i);
                                let a1 = _mm256_loadu_si256(aq.add(64 * c + 32) as *const __m256i);
                                let p0 = dp(lo, a0);
                                let p1 = dp(hi, a1);
                                sumi[r] = _mm256_add_epi32(sumi[r], _mm256_mullo_epi32(p0, s0));
                                sumi[r] = _mm256_add_epi32(sumi[r], _mm256_mullo_epi32(p1, s1));
                            }
                        }
                        let dw = ld_f16(blk);
                        let dmw = ld_f16(blk.add(2));
                        for r in 0..R {
                            let sums = a[r].sums.get_unchecked(b * 16..b * 16 + 16);
                            let mut summ = 0i32;
                            for j in 0..8 {
                                summ += mn[j] * (sums[2 * j] + sums[2 * j + 1]);
                            }
                            let da = *a[r].d.get_unchecked(b);
                            acc[r] = _mm256_fmadd_ps(
                                _mm256_cvtepi32_ps(sumi[r]),
                                _mm256_set1_ps(dw * da),
                                acc[r],
                            );
                            mins_total[r] += dmw * da * summ as f32;
                        }
                    }
                }
                let mut out = [0f32; R];
                for r in 0..R {
                    out[r] = hsum256(acc[r]) - mins_total[r];
                }
                out
            }

            /// # Safety
            /// As [`dot_q8_0`], with 210-byte Q6_K blocks and K256 activations.
            #[target_feature(enable = $feat)]
            #[inline]
            pub unsafe fn dot_q6k<const R: usize>(w: &[u8], a: &[ActRow<'_>; R]) -> [f32; R] {
                let nb = a[0].qs.len() / QK_K;
                let m4 = _mm256_set1_epi8(0xF);
                let m3 = _mm256_set1_epi8(3);
                let zero = _mm256_setzero_si256();
                let mut acc = [_mm256_setzero_ps(); R];
                let wp = w.as_ptr();
                for b in 0..nb {
                    // SAFETY (whole loop body): block b < nb lies inside `w` (210 bytes each) and `a`.
                    unsafe {
                        let blk = wp.add(b * 210);
                        for off in [0, 64, 128, 192] {
                            _mm_prefetch::<_MM_HINT_T0>(
                                blk.wrapping_add(2 * 210 + off) as *const i8
                            );
                        }
                        let sc16 = _mm_loadu_si128(blk.add(192) as *const __m128i);
                        let sc_lo = _mm256_cvtepi8_epi32(sc16);
                        let sc_hi = _mm256_cvtepi8_epi32(_mm_srli_si128(sc16, 8));
                        let mut sumi = [zero; R];
                        for r in 0..R {
                            let sums = a[r].sums.as_ptr().add(b * 16);
                            let s_lo = _mm256_loadu_si256(sums as *const __m256i);
                            let s_hi = _mm256_loadu_si256(sums.add(8) as *const __m256i);
                            // Σ_g sc_g · 32 · Σa_g, removed from the unsigned-weight dot below.
                            let offs = _mm256_slli_epi32(
                                _mm256_add_epi32(
                                    _mm256_mullo_epi32(sc_lo, s_lo),
                                    _mm256_mullo_epi32(sc_hi, s_hi),
                                ),
                                5,
                            );
                            sumi[r] = _mm256_sub_epi32(zero, offs);
                        }
                        for half in 0..2 {
                            let ql0 = _mm256_loadu_si256(blk.add(64 * half) as *const __m256i);
                            let ql1 = _mm256_loadu_si256(blk.add(64 * half + 32) as *const __m256i);
                            let qh = _mm256_loadu_si256(blk.add(128 + 32 * half) as *const __m256i);
                            let scv = if half == 0 { sc_lo } else { sc_hi };
                            let n = [
                                _mm256_or_si256(
                                    _mm256_and_si256(ql0, m4),
                                    _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4),
                                ),
                                _mm256_or_si256(
                                    _mm256_and_si256(ql1, m4),
                                    _mm256_slli_epi16(
                                        _mm256_and_si256(_mm256_srli_epi16(qh, 2), m3),
                                        4,
                                    ),
                                ),
                                _mm256_or_si256(
                                    _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                                    _mm256_slli_epi16(
                                        _mm256_and_si256(_mm256_srli_epi16(qh, 4), m3),
                                        4,
                                    ),
                                ),
                                _mm256_or_si256(
                                    _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                    _mm256_slli_epi16(
                                        _mm256_and_si256(_mm256_srli_epi16(qh, 6), m3),
                                        4,
                                    ),
                                ),
                            ];
                            for (c, nv) in n.iter().enumerate() {
                                // Lanes 0..4 cover group 2c, lanes 4..8 group 2c+1.
                                let idx = _mm256_setr_epi32(
                                    2 * c as i32,
                                    2 * c as i32,
                                    2 * c as i32,
                                    2 * c as i32,
                                    2 * c as i32 + 1,
                                    2 * c as i32 + 1,
                                    2 * c as i32 + 1,
                                    2 * c as i32 + 1,
                                );
                                let s = _mm256_permutevar8x32_epi32(scv, idx);
                                for r in 0..R {
                                    let aq = a[r].qs.as_ptr().add(b * QK_K);
                                    let av = _mm256_loadu_si256(
                                        aq.add(128 * half + 32 * c) as *const __m256i
                                    );
                                    let p = dp(*nv, av);
                                    sumi[r] = _mm256_add_epi32(sumi[r], _mm256_mullo_epi32(p, s));
                                }
                            }
                        }
                        let dw = ld_f16(blk.add(208));
                        for r in 0..R {
                            let d = dw * *a[r].d.get_unchecked(b);
                            acc[r] = _mm256_fmadd_ps(
                                _mm256_cvtepi32_ps(sumi[r]),
                                _mm256_set1_ps(d),
                                acc[r],
                            );
                        }
                    }
                }
                let mut out = [0f32; R];
                for r in 0..R {
                    out[r] = hsum256(acc[r]);
                }
                out
            }
        };
    }

    /// AVX-512 VNNI (`vpdpbusd` on 256-bit vectors: Zen 4 runs them at full width).
    pub mod vnni {
        use super::*;

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        fn dp(u: __m256i, a: __m256i) -> __m256i {
            _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, a)
        }

        /// Q8_0: weights made unsigned (`q + 128`), the offset removed with `128·Σa`.
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        fn q8_block(w: __m256i, a: __m256i, asum: i32) -> __m256i {
            let p = dp(_mm256_xor_si256(w, _mm256_set1_epi8(-128)), a);
            _mm256_sub_epi32(p, _mm256_zextsi128_si256(_mm_cvtsi32_si128(128 * asum)))
        }

        kernels!("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c");
    }

    /// AVX2: `vpmaddubsw` + `vpmaddwd`. Exact here because the unsigned side never exceeds 63
    /// (2·63·127 fits i16); Q8_0 uses the sign trick (|w| ≤ 128) instead of the offset.
    pub mod avx2 {
        use super::*;

        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        fn dp(u: __m256i, a: __m256i) -> __m256i {
            _mm256_madd_epi16(_mm256_maddubs_epi16(u, a), _mm256_set1_epi16(1))
        }

        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        fn q8_block(w: __m256i, a: __m256i, _asum: i32) -> __m256i {
            let p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
            _mm256_madd_epi16(p, _mm256_set1_epi16(1))
        }

        kernels!("avx2,fma,f16c");
    }
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::*;
    use crate::quant::{dequantize_row, quantize_row, ActQ8};
    use proptest::prelude::*;

    fn rnd(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 11) % 20001) as f32 / 10000.0 - 1.0
            })
            .collect()
    }

    fn rnd_bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

    /// Random but finite blocks: random bytes with the f16 scales overwritten by small values.
    fn random_blocks(qt: QuantType, nb: usize, seed: u64) -> Vec<u8> {
        let mut w = rnd_bytes(seed, nb * qt.block_bytes());
        let sc = rnd(seed ^ 99, nb * 2);
        for b in 0..nb {
            let blk = &mut w[b * qt.block_bytes()..(b + 1) * qt.block_bytes()];
            let put = |blk: &mut [u8], at: usize, v: f32| {
                blk[at..at + 2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes())
            };
            match qt {
                QuantType::Q8_0 | QuantType::Q4_0 => put(blk, 0, sc[2 * b] * 0.1),
                QuantType::Q4K | QuantType::Q5K => {
                    put(blk, 0, sc[2 * b].abs() * 0.01);
                    put(blk, 2, sc[2 * b + 1].abs() * 0.01);
                }
                QuantType::Q6K => put(blk, 208, sc[2 * b] * 0.01),
            }
        }
        w
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Every SIMD kernel agrees with the scalar twin, and the scalar twin agrees with
        /// dequantize-then-dot over the same quantized activations.
        #[test]
        fn simd_matches_scalar(qi in 0usize..5, nb in 1usize..7, seed in 0u64..100_000) {
            let qt = QuantType::ALL[qi];
            let k = nb * qt.block_elems();
            let w = random_blocks(qt, nb, seed);
            let x = rnd(seed.wrapping_add(7), k);
            let mut act = ActQ8::default();
            act.quantize(&x, 1, k, qt.act_kind());
            let row = act.row(0, qt.act_kind());
            let reference = scalar_dot(qt, &w, row);
            // Dequantized weights times dequantized activations.
            let mut wf = vec![0f32; k];
            dequantize_row(qt, &w, &mut wf);
            let be = match qt.act_kind() { crate::quant::ActKind::B32 => 32, _ => QK_K };
            let mut naive = 0f64;
            let mut mag = 0f64;
            for i in 0..k {
                let xv = row.qs[i] as f64 * row.d[i / be] as f64;
                naive += wf[i] as f64 * xv;
                mag += (wf[i] as f64 * xv).abs();
            }
            prop_assert!((reference as f64 - naive).abs() <= 1e-5 * mag + 1e-6, "{:?} scalar {} naive {}", qt, reference, naive);
            for kern in QKernel::available() {
                let got = kern.dot(qt, &w, row);
                prop_assert!((got as f64 - reference as f64).abs() <= 1e-5 * mag + 1e-6, "{:?} {:?}: {} vs {}", qt, kern, got, reference);
            }
            // The multi-row micro-kernel over 4 different rows.
            let x4 = rnd(seed.wrapping_add(11), 4 * k);
            let mut act4 = ActQ8::default();
            act4.quantize(&x4, 4, k, qt.act_kind());
            let rows4 = [0, 1, 2, 3].map(|r| act4.row(r, qt.act_kind()));
            for kern in QKernel::available() {
                let got = kern.dot_rows::<4>(qt, &w, &rows4);
                for r in 0..4 {
                    let want = scalar_dot(qt, &w, rows4[r]);
                    prop_assert!((got[r] - want).abs() <= 1e-4 * (1.0 + want.abs()) + 1e-5 * mag as f32, "{:?} {:?} row {}: {} vs {}", qt, kern, r, got[r], want);
                }
            }
        }

        /// Quantization round trip stays close for every type and non-trivial shapes.
        #[test]
        fn activation_quantization_error(nb in 1usize..4, seed in 0u64..1000) {
            let k = nb * QK_K;
            let x = rnd(seed, k);
            for kind in [crate::quant::ActKind::B32, crate::quant::ActKind::K256] {
                let mut act = ActQ8::default();
                act.quantize(&x, 1, k, kind);
                let be = if kind == crate::quant::ActKind::B32 { 32 } else { QK_K };
                for i in 0..k {
                    let y = act.qs[i] as f32 * act.d[i / be];
                    prop_assert!((y - x[i]).abs() <= act.d[i / be] * 0.51 + 1e-3 * x[i].abs());
                }
            }
        }
    }

    #[test]
    fn quantized_weights_dot_close_to_float() {
        for qt in QuantType::ALL {
            let k = 512;
            let wf = rnd(3, k);
            let x = rnd(4, k);
            let mut w = vec![0u8; qt.row_bytes(k)];
            quantize_row(qt, &wf, &mut w);
            let mut act = ActQ8::default();
            act.quantize(&x, 1, k, qt.act_kind());
            let exact: f32 = wf.iter().zip(&x).map(|(a, b)| a * b).sum();
            let norm = (wf.iter().map(|a| a * a).sum::<f32>()
                * x.iter().map(|a| a * a).sum::<f32>())
            .sqrt();
            for kern in QKernel::available() {
                let got = kern.dot(qt, &w, act.row(0, qt.act_kind()));
                assert!(
                    (got - exact).abs() < 0.05 * norm,
                    "{qt:?} {kern:?}: {got} vs {exact}"
                );
            }
        }
    }
}
