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
        self.dot_tile::<1, 1>(qt, [w], &[a])[0][0]
    }

    /// `w · a[r]` for `R` activation rows at once: each weight block is loaded and unpacked
    /// once for all of them.
    #[inline]
    pub fn dot_rows<const R: usize>(
        self,
        qt: QuantType,
        w: &[u8],
        a: &[ActRow<'_>; R],
    ) -> [f32; R] {
        self.dot_tile::<1, R>(qt, [w], a)[0]
    }

    /// The micro-kernel: `out[i][r] = w[i] · a[r]` for `RW` weight rows and `RA` activation
    /// rows of the same length. Each weight block is unpacked once for all activation rows and
    /// each activation block loaded once for all weight rows (decode uses `RA = 1` with several
    /// weight rows side by side, prefill a few of each).
    #[inline]
    pub fn dot_tile<const RW: usize, const RA: usize>(
        self,
        qt: QuantType,
        w: [&[u8]; RW],
        a: &[ActRow<'_>; RA],
    ) -> [[f32; RA]; RW] {
        let Some(first) = a.first() else {
            return [[0f32; RA]; RW];
        };
        let k = first.qs.len();
        let rb = qt.row_bytes(k);
        assert!(k.is_multiple_of(qt.block_elems()), "quantized row shape");
        for wr in &w {
            assert!(wr.len() >= rb, "quantized row shape");
        }
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
            QKernel::Scalar => w.map(|wr| a.map(|r| scalar_dot(qt, wr, r))),
            // SAFETY: `available`/`detect` only return this variant when the CPU has every
            // feature the kernels are compiled for; the shapes were checked above, which is
            // what their raw-pointer reads rely on.
            #[cfg(target_arch = "x86_64")]
            QKernel::Avx512Vnni => unsafe {
                x86::vnni::tile::<RW, RA>(qt, &w.map(|r| r.as_ptr()), a)
            },
            // SAFETY: as above, for AVX2/FMA/F16C.
            #[cfg(target_arch = "x86_64")]
            QKernel::Avx2 => unsafe { x86::avx2::tile::<RW, RA>(qt, &w.map(|r| r.as_ptr()), a) },
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

    /// Bytes ahead of the current block that the kernels prefetch in each weight row: decode
    /// reads every weight once, straight from DRAM, several rows side by side (8 KiB beat
    /// 0.25–4 KiB on this machine's AVX2 decode runs, within its large run-to-run noise).
    const PF: usize = 8192;

    /// The 8 six-bit scales and the 8 mins of a Q4_K/Q5_K block as little-endian byte lanes
    /// of two u64 (`scales[j]` is byte `j`), from its 12 packed bytes (see
    /// [`scale_min_k4`]: sub-blocks 0..4 keep 6 bits in bytes 0..8, sub-blocks 4..8 take their
    /// low nibbles from bytes 8..12 and their top two bits from bits 6..8 of bytes 0..8).
    ///
    /// # Safety
    /// `p` points at 12 readable bytes.
    #[inline(always)]
    unsafe fn unpack_k4_scales(p: *const u8) -> (u64, u64) {
        // SAFETY: 12 readable bytes at `p`, read as three unaligned u32.
        let (a, b, c) = unsafe {
            (
                (p as *const u32).read_unaligned(),
                (p.add(4) as *const u32).read_unaligned(),
                (p.add(8) as *const u32).read_unaligned(),
            )
        };
        const LOW6: u32 = 0x3f3f_3f3f;
        const LOW4: u32 = 0x0f0f_0f0f;
        const TOP2: u32 = 0x0303_0303;
        let sc_lo = a & LOW6;
        let m_lo = b & LOW6;
        let sc_hi = (c & LOW4) | (((a >> 6) & TOP2) << 4);
        let m_hi = ((c >> 4) & LOW4) | (((b >> 6) & TOP2) << 4);
        (
            sc_lo as u64 | (sc_hi as u64) << 32,
            m_lo as u64 | (m_hi as u64) << 32,
        )
    }

    /// The kernels, instantiated once per instruction set: each module supplies
    /// `q8_block(w, a, c)` (per-lane partial sums of one signed block of 32, |w| ≤ 128, each
    /// lane's sum exact on its own) and `act_corr(a)` (what `q8_block` needs from the
    /// activation block `a` alone, computed once per block for all weight rows), compiled with
    /// the module's target features. The K-quants use `vpmaddubsw` +
    /// `vpmaddwd` with the sub-block scale as the second factor in both.
    ///
    /// Every kernel computes a tile: `RW` weight rows against `RA` activation rows, so that
    /// each weight block is loaded and unpacked once for all `RA` activation rows and each
    /// activation block once for all `RW` weight rows (decode: `RW` rows side by side keep
    /// several independent streams of loads in flight).
    macro_rules! kernels {
        ($feat:literal) => {
            /// # Safety
            /// The CPU has the module's features; every `w[i]` points at a full row of
            /// `a[0].qs.len() / block_elems` blocks of `qt`; every `a[r]` has that many values,
            /// a scale per block and its sums (checked by the callers).
            #[inline]
            #[target_feature(enable = $feat)]
            pub unsafe fn tile<const RW: usize, const RA: usize>(
                qt: QuantType,
                w: &[*const u8; RW],
                a: &[ActRow<'_>; RA],
            ) -> [[f32; RA]; RW] {
                // SAFETY: the caller's contract is the callee's.
                unsafe {
                    match qt {
                        QuantType::Q8_0 => tile_b32::<false, RW, RA>(w, a),
                        QuantType::Q4_0 => tile_b32::<true, RW, RA>(w, a),
                        QuantType::Q4K => tile_k_asym::<false, RW, RA>(w, a),
                        QuantType::Q5K => tile_k_asym::<true, RW, RA>(w, a),
                        QuantType::Q6K => tile_q6k::<RW, RA>(w, a),
                    }
                }
            }

            #[inline]
            #[target_feature(enable = $feat)]
            fn finish<const RW: usize, const RA: usize>(acc: [[__m256; RA]; RW]) -> [[f32; RA]; RW] {
                let mut out = [[0f32; RA]; RW];
                for i in 0..RW {
                    for r in 0..RA {
                        out[i][r] = hsum256(acc[i][r]);
                    }
                }
                out
            }

            /// Q8_0 (34-byte blocks) and Q4_0 (18-byte blocks, made signed as `n − 8`).
            ///
            /// # Safety
            /// As [`tile`].
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn tile_b32<const Q4: bool, const RW: usize, const RA: usize>(
                w: &[*const u8; RW],
                a: &[ActRow<'_>; RA],
            ) -> [[f32; RA]; RW] {
                let nb = a[0].qs.len() / 32;
                let pf = PF;
                let bb = if Q4 { 18 } else { 34 };
                let m4 = _mm256_set1_epi8(0xF);
                let eight = _mm256_set1_epi8(8);
                // Low 128-bit lane: low nibbles (elements 0..16); high lane: high nibbles.
                let nib_shift = _mm256_setr_epi64x(0, 0, 4, 4);
                let mut acc = [[_mm256_setzero_ps(); RA]; RW];
                for b in 0..nb {
                    // SAFETY (whole loop body): block b < nb lies inside every row and every
                    // activation row (the caller's contract).
                    unsafe {
                        let mut av = [_mm256_setzero_si256(); RA];
                        let mut da = [0f32; RA];
                        let mut ca = [_mm256_setzero_si256(); RA];
                        for r in 0..RA {
                            av[r] = _mm256_loadu_si256(a[r].qs.as_ptr().add(b * 32) as *const __m256i);
                            da[r] = *a[r].d.get_unchecked(b);
                            ca[r] = act_corr(av[r]);
                        }
                        for i in 0..RW {
                            let blk = w[i].add(b * bb);
                            // One prefetch per cache line: every 2nd Q8_0 / 4th Q4_0 block.
                            if b % if Q4 { 4 } else { 2 } == 0 {
                                _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(pf) as *const i8);
                            }
                            let wq = if Q4 {
                                let q = _mm256_broadcastsi128_si256(_mm_loadu_si128(
                                    blk.add(2) as *const __m128i,
                                ));
                                _mm256_sub_epi8(
                                    _mm256_and_si256(_mm256_srlv_epi64(q, nib_shift), m4),
                                    eight,
                                )
                            } else {
                                _mm256_loadu_si256(blk.add(2) as *const __m256i)
                            };
                            let dw = ld_f16(blk);
                            for r in 0..RA {
                                let p = q8_block(wq, av[r], ca[r]);
                                acc[i][r] = _mm256_fmadd_ps(
                                    _mm256_cvtepi32_ps(p),
                                    _mm256_set1_ps(dw * da[r]),
                                    acc[i][r],
                                );
                            }
                        }
                    }
                }
                finish(acc)
            }

            /// Q4_K and Q5_K share everything but the fifth bit.
            ///
            /// # Safety
            /// As [`tile`], with 144/176-byte blocks and K256 activations.
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn tile_k_asym<const FIVE: bool, const RW: usize, const RA: usize>(
                w: &[*const u8; RW],
                a: &[ActRow<'_>; RA],
            ) -> [[f32; RA]; RW] {
                let nb = a[0].qs.len() / QK_K;
                let pf = PF;
                let bb = if FIVE { 176 } else { 144 };
                let m4 = _mm256_set1_epi8(0xF);
                let one = _mm256_set1_epi8(1);
                let zero = _mm256_setzero_si256();
                let mut acc = [[_mm256_setzero_ps(); RA]; RW];
                for b in 0..nb {
                    // SAFETY (whole loop body): block b < nb lies inside every row and every
                    // activation row; every offset below stays inside one block.
                    unsafe {
                        // Per activation row: its scale and its sums per 32 (sub-block order).
                        let mut da = [0f32; RA];
                        let mut pair = [zero; RA];
                        for r in 0..RA {
                            da[r] = *a[r].d.get_unchecked(b);
                            let s = a[r].sums.as_ptr().add(b * 16);
                            let h = _mm256_hadd_epi32(
                                _mm256_loadu_si256(s as *const __m256i),
                                _mm256_loadu_si256(s.add(8) as *const __m256i),
                            );
                            pair[r] = _mm256_permute4x64_epi64::<0b11_01_10_00>(h);
                        }
                        for i in 0..RW {
                            let blk = w[i].add(b * bb);
                            _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(pf) as *const i8);
                            _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(pf + 64) as *const i8);
                            _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(pf + 128) as *const i8);
                            let (sc, mn) = unpack_k4_scales(blk.add(4));
                            // Scales as i16, both 128-bit lanes holding all eight.
                            let sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(
                                _mm_cvtsi64_si128(sc as i64),
                            ));
                            let mn32 = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(mn as i64));
                            let qs = blk.add(if FIVE { 48 } else { 16 });
                            let qh = if FIVE {
                                _mm256_loadu_si256(blk.add(16) as *const __m256i)
                            } else {
                                zero
                            };
                            let mut sumi = [zero; RA];
                            for c in 0..4 {
                                let q = _mm256_loadu_si256(qs.add(32 * c) as *const __m256i);
                                let mut lo = _mm256_and_si256(q, m4);
                                let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                                if FIVE {
                                    let h = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * c as i32));
                                    lo = _mm256_or_si256(
                                        lo,
                                        _mm256_slli_epi16(_mm256_and_si256(h, one), 4),
                                    );
                                    hi = _mm256_or_si256(
                                        hi,
                                        _mm256_slli_epi16(
                                            _mm256_and_si256(_mm256_srli_epi16(h, 1), one),
                                            4,
                                        ),
                                    );
                                }
                                // Scale of sub-block 2c (resp. 2c + 1) in every i16 lane.
                                let s0 = _mm256_shuffle_epi8(
                                    sc16,
                                    _mm256_set1_epi16((((4 * c + 1) << 8) | (4 * c)) as i16),
                                );
                                let s1 = _mm256_shuffle_epi8(
                                    sc16,
                                    _mm256_set1_epi16((((4 * c + 3) << 8) | (4 * c + 2)) as i16),
                                );
                                for r in 0..RA {
                                    let aq = a[r].qs.as_ptr().add(b * QK_K + 64 * c);
                                    let a0 = _mm256_loadu_si256(aq as *const __m256i);
                                    let a1 = _mm256_loadu_si256(aq.add(32) as *const __m256i);
                                    // u8 nibbles × i8: pair sums ≤ 2·31·127 fit i16; times the
                                    // 6-bit scale, pair sums fit i32.
                                    let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, a0), s0);
                                    let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, a1), s1);
                                    sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(p0, p1));
                                }
                            }
                            let dw = ld_f16(blk);
                            let dmw = ld_f16(blk.add(2));
                            for r in 0..RA {
                                let mins = _mm256_mullo_epi32(mn32, pair[r]);
                                acc[i][r] = _mm256_fmadd_ps(
                                    _mm256_cvtepi32_ps(sumi[r]),
                                    _mm256_set1_ps(dw * da[r]),
                                    acc[i][r],
                                );
                                acc[i][r] = _mm256_fnmadd_ps(
                                    _mm256_cvtepi32_ps(mins),
                                    _mm256_set1_ps(dmw * da[r]),
                                    acc[i][r],
                                );
                            }
                        }
                    }
                }
                finish(acc)
            }

            /// # Safety
            /// As [`tile`], with 210-byte Q6_K blocks and K256 activations.
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn tile_q6k<const RW: usize, const RA: usize>(
                w: &[*const u8; RW],
                a: &[ActRow<'_>; RA],
            ) -> [[f32; RA]; RW] {
                let nb = a[0].qs.len() / QK_K;
                let pf = PF;
                let m4 = _mm256_set1_epi8(0xF);
                let m3 = _mm256_set1_epi8(3);
                let zero = _mm256_setzero_si256();
                let mut acc = [[_mm256_setzero_ps(); RA]; RW];
                for b in 0..nb {
                    // SAFETY (whole loop body): block b < nb lies inside every row and every
                    // activation row; every offset below stays inside one block.
                    unsafe {
                        let mut da = [0f32; RA];
                        let mut s_lo = [zero; RA];
                        let mut s_hi = [zero; RA];
                        for r in 0..RA {
                            da[r] = *a[r].d.get_unchecked(b);
                            let s = a[r].sums.as_ptr().add(b * 16);
                            s_lo[r] = _mm256_loadu_si256(s as *const __m256i);
                            s_hi[r] = _mm256_loadu_si256(s.add(8) as *const __m256i);
                        }
                        for i in 0..RW {
                            let blk = w[i].add(b * 210);
                            for off in [0, 64, 128, 192] {
                                _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(pf + off) as *const i8);
                            }
                            let sc8 = _mm_loadu_si128(blk.add(192) as *const __m128i);
                            let sc_lo = _mm256_cvtepi8_epi32(sc8);
                            let sc_hi = _mm256_cvtepi8_epi32(_mm_srli_si128(sc8, 8));
                            // Scales as i16: half h's eight in both 128-bit lanes.
                            let sc16 = [
                                _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(sc8)),
                                _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(_mm_srli_si128(sc8, 8))),
                            ];
                            let mut sumi = [zero; RA];
                            for r in 0..RA {
                                // Σ_g sc_g · 32 · Σa_g, removed from the unsigned-weight dot.
                                let offs = _mm256_add_epi32(
                                    _mm256_mullo_epi32(sc_lo, s_lo[r]),
                                    _mm256_mullo_epi32(sc_hi, s_hi[r]),
                                );
                                sumi[r] = _mm256_sub_epi32(zero, _mm256_slli_epi32(offs, 5));
                            }
                            for half in 0..2 {
                                let ql0 = _mm256_loadu_si256(blk.add(64 * half) as *const __m256i);
                                let ql1 =
                                    _mm256_loadu_si256(blk.add(64 * half + 32) as *const __m256i);
                                let qh =
                                    _mm256_loadu_si256(blk.add(128 + 32 * half) as *const __m256i);
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
                                        _mm256_and_si256(qh, _mm256_set1_epi8(0x30)),
                                    ),
                                    _mm256_or_si256(
                                        _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                        _mm256_and_si256(
                                            _mm256_srli_epi16(qh, 2),
                                            _mm256_set1_epi8(0x30),
                                        ),
                                    ),
                                ];
                                for (c, nv) in n.iter().enumerate() {
                                    // Low lane: group 8·half + 2c; high lane: the next group.
                                    let s = _mm256_shuffle_epi8(
                                        sc16[half],
                                        _mm256_setr_epi8(
                                            (4 * c) as i8, (4 * c + 1) as i8, (4 * c) as i8, (4 * c + 1) as i8,
                                            (4 * c) as i8, (4 * c + 1) as i8, (4 * c) as i8, (4 * c + 1) as i8,
                                            (4 * c) as i8, (4 * c + 1) as i8, (4 * c) as i8, (4 * c + 1) as i8,
                                            (4 * c) as i8, (4 * c + 1) as i8, (4 * c) as i8, (4 * c + 1) as i8,
                                            (4 * c + 2) as i8, (4 * c + 3) as i8, (4 * c + 2) as i8, (4 * c + 3) as i8,
                                            (4 * c + 2) as i8, (4 * c + 3) as i8, (4 * c + 2) as i8, (4 * c + 3) as i8,
                                            (4 * c + 2) as i8, (4 * c + 3) as i8, (4 * c + 2) as i8, (4 * c + 3) as i8,
                                            (4 * c + 2) as i8, (4 * c + 3) as i8, (4 * c + 2) as i8, (4 * c + 3) as i8,
                                        ),
                                    );
                                    for r in 0..RA {
                                        let av = _mm256_loadu_si256(
                                            a[r].qs.as_ptr().add(b * QK_K + 128 * half + 32 * c)
                                                as *const __m256i,
                                        );
                                        // u6 × i8 pair sums ≤ 2·63·127 fit i16; times the i8
                                        // scale, pair sums fit i32.
                                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(*nv, av), s);
                                        sumi[r] = _mm256_add_epi32(sumi[r], p);
                                    }
                                }
                            }
                            let dw = ld_f16(blk.add(208));
                            for r in 0..RA {
                                acc[i][r] = _mm256_fmadd_ps(
                                    _mm256_cvtepi32_ps(sumi[r]),
                                    _mm256_set1_ps(dw * da[r]),
                                    acc[i][r],
                                );
                            }
                        }
                    }
                }
                finish(acc)
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

        /// `128 ·` the sum of each lane's four activation bytes.
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        fn act_corr(a: __m256i) -> __m256i {
            _mm256_slli_epi32::<7>(dp(_mm256_set1_epi8(1), a))
        }

        /// Q8_0: weights made unsigned (`q + 128`), the offset removed lane by lane with
        /// `c = act_corr(a)`, so that every lane holds its own exact partial sum. (Taking the
        /// whole block's `128·Σa` off one lane gave the same lane total, but lanes of ~±10⁴
        /// that cancel only in the final horizontal sum, after each was scaled and rounded in
        /// f32: a Q4_0 product of ~1e-3 came out 17% off.)
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        fn q8_block(w: __m256i, a: __m256i, c: __m256i) -> __m256i {
            _mm256_sub_epi32(dp(_mm256_xor_si256(w, _mm256_set1_epi8(-128)), a), c)
        }

        kernels!("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c");
    }

    /// AVX2: `vpmaddubsw` + `vpmaddwd`. Exact here because the unsigned side never exceeds 63
    /// (2·63·127 fits i16); Q8_0 uses the sign trick (|w| ≤ 128) instead of the offset.
    pub mod avx2 {
        use super::*;

        /// Nothing: the sign trick needs no correction.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        fn act_corr(_a: __m256i) -> __m256i {
            _mm256_setzero_si256()
        }

        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        fn q8_block(w: __m256i, a: __m256i, _c: __m256i) -> __m256i {
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

        /// The tile micro-kernels (several weight rows × several activation rows) agree with
        /// the scalar twin entry by entry, for every tile shape the matmul uses.
        #[test]
        fn tiles_match_scalar(qi in 0usize..5, nb in 1usize..5, seed in 0u64..100_000) {
            let qt = QuantType::ALL[qi];
            let k = nb * qt.block_elems();
            let w4 = random_blocks(qt, 4 * nb, seed);
            let rows: [&[u8]; 4] = std::array::from_fn(|i| &w4[i * qt.row_bytes(k)..(i + 1) * qt.row_bytes(k)]);
            let x = rnd(seed.wrapping_add(3), 8 * k);
            let mut act = ActQ8::default();
            act.quantize(&x, 8, k, qt.act_kind());
            let a: [ActRow<'_>; 8] = std::array::from_fn(|r| act.row(r, qt.act_kind()));
            let want: Vec<Vec<f32>> = rows.iter().map(|w| a.iter().map(|&r| scalar_dot(qt, w, r)).collect()).collect();
            let close = |got: f32, want: f32| (got - want).abs() <= 1e-4 * (1.0 + want.abs());
            for kern in QKernel::available() {
                let t41 = kern.dot_tile::<4, 1>(qt, rows, &[a[5]]);
                let t24 = kern.dot_tile::<2, 4>(qt, [rows[1], rows[3]], &[a[0], a[1], a[2], a[7]]);
                let t44 = kern.dot_tile::<4, 4>(qt, rows, &[a[4], a[5], a[6], a[7]]);
                let t28 = kern.dot_tile::<2, 8>(qt, [rows[2], rows[0]], &a);
                let t34 = kern.dot_tile::<3, 4>(qt, [rows[0], rows[1], rows[2]], &[a[3], a[2], a[1], a[0]]);
                for i in 0..4 {
                    prop_assert!(close(t41[i][0], want[i][5]), "{:?} {:?} 4x1 {}", qt, kern, i);
                    for r in 0..4 {
                        prop_assert!(close(t44[i][r], want[i][4 + r]), "{:?} {:?} 4x4", qt, kern);
                    }
                }
                for r in 0..4 {
                    prop_assert!(close(t24[0][r], want[1][[0, 1, 2, 7][r]]), "{:?} {:?} 2x4", qt, kern);
                    prop_assert!(close(t24[1][r], want[3][[0, 1, 2, 7][r]]), "{:?} {:?} 2x4", qt, kern);
                    for i in 0..3 {
                        prop_assert!(close(t34[i][r], want[i][3 - r]), "{:?} {:?} 3x4", qt, kern);
                    }
                }
                for r in 0..8 {
                    prop_assert!(close(t28[0][r], want[2][r]) && close(t28[1][r], want[0][r]), "{:?} {:?} 2x8", qt, kern);
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
                    prop_assert!((y - x[i]).abs() <= act.d[i / be].abs() * 0.51 + 1e-3 * x[i].abs());
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
