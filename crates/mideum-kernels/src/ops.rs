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
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32;
    1.0 / (ss + eps).sqrt()
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

/// `gate = silu(gate) * up`, the SwiGLU activation.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        let s = *g / (1.0 + (-*g).exp());
        *g = s * u;
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
