//! `out = x · Wᵀ` for activations `x` (`t` rows of `k` floats) and a row-major weight matrix
//! `W` (`n` rows of `k` elements, the layout of both safetensors and GGUF), parallel over
//! blocks of weight rows so that each weight row is read from memory once for all `t` rows.

use crate::dot::DotKernel;
use crate::par::{DisjointSlice, ThreadPool};

/// A borrowed weight matrix in its stored element type.
#[derive(Clone, Copy, Debug)]
pub enum WeightView<'a> {
    F32(&'a [f32]),
    BF16(&'a [u16]),
    F16(&'a [u16]),
}

impl WeightView<'_> {
    pub fn len(&self) -> usize {
        match self {
            WeightView::F32(w) => w.len(),
            WeightView::BF16(w) | WeightView::F16(w) => w.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies row `r` (of length `k`) into `out` as f32.
    pub fn row_f32(&self, r: usize, k: usize, out: &mut [f32]) {
        let out = &mut out[..k];
        match self {
            WeightView::F32(w) => out.copy_from_slice(&w[r * k..(r + 1) * k]),
            WeightView::BF16(w) => DotKernel::Scalar.widen_bf16(&w[r * k..(r + 1) * k], out),
            WeightView::F16(w) => DotKernel::Scalar.widen_f16(&w[r * k..(r + 1) * k], out),
        }
    }
}

/// Computes `out[ti * n + j] = Σ_i x[ti * k + i] · w[j * k + i]`.
///
/// Panics if the slice lengths do not match `t`, `k` and `n` (a programming error: shapes are
/// validated when the model is loaded).
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    pool: &ThreadPool,
    kern: DotKernel,
    x: &[f32],
    t: usize,
    k: usize,
    w: WeightView<'_>,
    n: usize,
    out: &mut [f32],
) {
    assert_eq!(x.len(), t * k, "activation shape");
    assert_eq!(w.len(), n * k, "weight shape");
    assert_eq!(out.len(), t * n, "output shape");
    if t == 0 || n == 0 {
        return;
    }
    let per_task = (n / (pool.n_threads() * 8)).clamp(1, 256);
    let n_tasks = n.div_ceil(per_task);
    let dst = DisjointSlice::new(out);
    pool.for_each(n_tasks, &|task| {
        let j0 = task * per_task;
        let j1 = (j0 + per_task).min(n);
        // SAFETY: task `task` owns columns j0..j1 of every output row; tasks never overlap.
        let mut outs: Vec<&mut [f32]> = (0..t)
            .map(|tt| unsafe { dst.range(tt * n + j0, tt * n + j1) })
            .collect();
        let mut row = Vec::new();
        for j in j0..j1 {
            let jj = j - j0;
            match w {
                WeightView::F32(w) => {
                    let wr = &w[j * k..(j + 1) * k];
                    for (tt, o) in outs.iter_mut().enumerate() {
                        o[jj] = kern.dot_f32(wr, &x[tt * k..(tt + 1) * k]);
                    }
                }
                WeightView::BF16(wb) if t == 1 => {
                    outs[0][jj] = kern.dot_bf16(&wb[j * k..(j + 1) * k], x)
                }
                WeightView::F16(wh) if t == 1 => {
                    outs[0][jj] = kern.dot_f16(&wh[j * k..(j + 1) * k], x)
                }
                _ => {
                    // Many activation rows: widen the weight row once, use it for all of them.
                    if row.len() != k {
                        row.resize(k, 0.0);
                    }
                    w.row_f32(j, k, &mut row);
                    for (tt, o) in outs.iter_mut().enumerate() {
                        o[jj] = kern.dot_f32(&row, &x[tt * k..(tt + 1) * k]);
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn matmul_matches_naive(t in 1usize..5, k in 1usize..70, n in 1usize..40, seed in 0u32..1000) {
            let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
            let mut rnd = || { s ^= s << 13; s ^= s >> 17; s ^= s << 5; (s % 2001) as f32 / 1000.0 - 1.0 };
            let x: Vec<f32> = (0..t * k).map(|_| rnd()).collect();
            let w: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
            let wb: Vec<u16> = w.iter().map(|&f| half::bf16::from_f32(f).to_bits()).collect();
            let pool = ThreadPool::new(2);
            for kern in DotKernel::available() {
                for view in [WeightView::F32(&w), WeightView::BF16(&wb)] {
                    let mut out = vec![0f32; t * n];
                    matmul(&pool, kern, &x, t, k, view, n, &mut out);
                    let mut row = vec![0f32; k];
                    for tt in 0..t {
                        for j in 0..n {
                            view.row_f32(j, k, &mut row);
                            let r: f32 = (0..k).map(|i| row[i] * x[tt * k + i]).sum();
                            prop_assert!((out[tt * n + j] - r).abs() < 1e-4 * (1.0 + r.abs()) * (k as f32).sqrt());
                        }
                    }
                }
            }
        }
    }
}
