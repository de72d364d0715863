//! Element-wise and row-wise steps of the transformer block, written to match the reference
//! implementation's f32 arithmetic (Hugging Face `transformers` Llama).

/// `out = x / sqrt(mean(x²) + eps) * weight`, the Llama RMSNorm.
pub fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let inv = rms_inv(x, eps);
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = w * (v * inv);
    }
}

/// `1 / sqrt(mean(x²) + eps)`, the factor [`rmsnorm`] scales by.
#[inline]
pub fn rms_inv(x: &[f32], eps: f32) -> f32 {
    // Squares summed in f64 as GGML does (the f32 sum's rounding error grows with the width).
    let ss = x.iter().map(|v| (v * v) as f64).sum::<f64>() / x.len().max(1) as f64;
    1.0 / (ss as f32 + eps).sqrt()
}

/// How a head's dimensions are paired for rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Hugging Face layout: dimension `i` pairs with `i + d/2`.
    HalfSplit,
    /// llama.cpp/GGUF layout (its converter permutes Q/K rows): dimension `2i` pairs with `2i+1`.
    Interleaved,
}

/// Rotates one head vector `x` (length `2 * cos.len()`) by the angles whose cosines and sines
/// are given for each frequency.
pub fn rope(x: &mut [f32], cos: &[f32], sin: &[f32], layout: RopeLayout) {
    let half = cos.len();
    debug_assert_eq!(x.len(), 2 * half);
    match layout {
        RopeLayout::HalfSplit => {
            for i in 0..half {
                let (a, b) = (x[i], x[i + half]);
                x[i] = a * cos[i] - b * sin[i];
                x[i + half] = b * cos[i] + a * sin[i];
            }
        }
        RopeLayout::Interleaved => {
            for i in 0..half {
                let (a, b) = (x[2 * i], x[2 * i + 1]);
                x[2 * i] = a * cos[i] - b * sin[i];
                x[2 * i + 1] = b * cos[i] + a * sin[i];
            }
        }
    }
}

/// In-place softmax; a row of all `-inf` becomes all zeros instead of NaN.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        x.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// Log-softmax of `x` evaluated at index `i`, computed stably.
pub fn log_softmax_at(x: &[f32], i: usize) -> f32 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse: f64 = x
        .iter()
        .map(|&v| ((v - max) as f64).exp())
        .sum::<f64>()
        .ln();
    ((x[i] - max) as f64 - lse) as f32
}

/// `gate = silu(gate) * up`, the SwiGLU activation (AVX2 with a polynomial `exp` where the
/// CPU has it, relative difference to [`silu_mul_scalar`] ~1e-6).
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::avx2_fma() {
        // SAFETY: `avx2_fma` checked AVX2 and FMA.
        return unsafe { x86::silu_mul_avx2(gate, up) };
    }
    silu_mul_scalar(gate, up)
}

/// The reference of [`silu_mul`].
pub fn silu_mul_scalar(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        let s = *g / (1.0 + (-*g).exp());
        *g = s * u;
    }
}

/// [`silu_mul`] over `rows` rows of `n`, spread across `pool` when there are enough rows to
/// pay for waking it (prefill); the same result, bit for bit, as one call.
pub fn silu_mul_par(
    pool: &crate::par::ThreadPool,
    gate: &mut [f32],
    up: &[f32],
    rows: usize,
    n: usize,
) {
    let (gate, up) = (&mut gate[..rows * n], &up[..rows * n]);
    if rows < PAR_ROWS || pool.n_threads() < 2 {
        return silu_mul(gate, up);
    }
    // Pieces of a multiple of 8 elements: every element takes the same path (vector or tail)
    // as in one call over the whole.
    let total = rows * n;
    let chunk = total.div_ceil(pool.n_threads() * 4).next_multiple_of(8);
    let g = crate::par::DisjointSlice::new(gate);
    pool.for_each(total.div_ceil(chunk), &|i| {
        let (a, b) = (i * chunk, ((i + 1) * chunk).min(total));
        // SAFETY: task `i` owns elements a..b; tasks never overlap.
        silu_mul(unsafe { g.range(a, b) }, &up[a..b]);
    });
}

/// Rows from which the element-wise steps of a forward pass run on the thread pool.
pub const PAR_ROWS: usize = 8;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use crate::attn::x86::exp8;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn silu_mul_avx2(gate: &mut [f32], up: &[f32]) {
        let n = gate.len().min(up.len());
        let mut i = 0;
        let one = _mm256_set1_ps(1.0);
        let neg = _mm256_set1_ps(-0.0);
        while i + 8 <= n {
            // SAFETY: i + 8 <= n, within both slices; AVX2/FMA enabled here.
            unsafe {
                let g = _mm256_loadu_ps(gate.as_ptr().add(i));
                let u = _mm256_loadu_ps(up.as_ptr().add(i));
                let e = exp8(_mm256_xor_ps(g, neg));
                let s = _mm256_div_ps(g, _mm256_add_ps(one, e));
                _mm256_storeu_ps(gate.as_mut_ptr().add(i), _mm256_mul_ps(s, u));
            }
            i += 8;
        }
        super::silu_mul_scalar(&mut gate[i..n], &up[i..n]);
    }
}

/// `acc += x`.
pub fn add_assign(acc: &mut [f32], x: &[f32]) {
    for (a, &b) in acc.iter_mut().zip(x) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The dispatched SwiGLU (AVX2 here) and its parallel form against the scalar twin,
        /// over lengths that are not multiples of 8 and inputs deep into both tails of the
        /// sigmoid.
        #[test]
        fn silu_mul_matches_the_scalar_twin(
            g in proptest::collection::vec(-100f32..100.0, 0..70),
            seed in 0u32..1000,
        ) {
            let up: Vec<f32> = g.iter().enumerate().map(|(i, _)| ((i as u32 * 7919 + seed) % 200) as f32 / 50.0 - 2.0).collect();
            let mut want = g.clone();
            silu_mul_scalar(&mut want, &up);
            let mut got = g.clone();
            silu_mul(&mut got, &up);
            for (a, b) in got.iter().zip(&want) {
                prop_assert!((a - b).abs() <= 2e-6 * b.abs() + 1e-30, "{a} vs {b}");
            }
            // Rows of 5 through the pool: the same as one call.
            let rows = g.len() / 5;
            let pool = crate::par::ThreadPool::new(2);
            let mut par = g.clone();
            silu_mul_par(&pool, &mut par, &up, rows, 5);
            let mut one = g[..rows * 5].to_vec();
            silu_mul(&mut one, &up[..rows * 5]);
            prop_assert_eq!(&par[..rows * 5], &one[..]);
            prop_assert_eq!(&par[rows * 5..], &g[rows * 5..]);
        }
    }

    #[test]
    fn rope_layouts_agree_under_the_gguf_permutation() {
        // llama.cpp's converter reorders each head's rows so that HF's pair (i, i+d/2) lands at
        // (2i, 2i+1): rotating the permuted vector interleaved equals permuting the HF result.
        let d = 8;
        let x: Vec<f32> = (0..d).map(|i| i as f32 * 0.3 - 1.0).collect();
        let cos = [0.9f32, 0.5, -0.2, 0.1];
        let sin = [0.43f32, 0.86, 0.97, -0.99];
        let mut hf = x.clone();
        rope(&mut hf, &cos, &sin, RopeLayout::HalfSplit);
        let perm =
            |v: &[f32]| -> Vec<f32> { (0..d).map(|j| v[(j / 2) + (j % 2) * (d / 2)]).collect() };
        let mut gg = perm(&x);
        rope(&mut gg, &cos, &sin, RopeLayout::Interleaved);
        assert_eq!(gg, perm(&hf));
    }

    #[test]
    fn softmax_and_logsoftmax() {
        let mut v = vec![1.0f32, 2.0, 3.0];
        let l = log_softmax_at(&v, 2);
        softmax(&mut v);
        assert!((v.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((v[2].ln() - l).abs() < 1e-6);
        let mut z = vec![f32::NEG_INFINITY; 3];
        softmax(&mut z);
        assert_eq!(z, vec![0.0; 3]);
    }

    #[test]
    fn rmsnorm_unit() {
        let x = [3.0f32, 4.0];
        let mut o = [0f32; 2];
        rmsnorm(&x, &[1.0, 2.0], 0.0, &mut o);
        let r = (12.5f32).sqrt();
        assert!((o[0] - 3.0 / r).abs() < 1e-6 && (o[1] - 8.0 / r).abs() < 1e-6);
    }
}
