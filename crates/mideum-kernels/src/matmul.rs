//! `out = x · Wᵀ` for activations `x` (`t` rows of `k` floats) and a row-major weight matrix
//! `W` (`n` rows of `k` elements, the layout of both safetensors and GGUF), parallel over
//! blocks of weight rows so that each weight row is read from memory once for all `t` rows.

use crate::dot::DotKernel;
use crate::par::{DisjointSlice, ThreadPool};
use crate::qdot::QKernel;
use crate::quant::{dequantize_row, ActQ8, QuantType};
use std::cell::RefCell;
use std::sync::OnceLock;

/// A borrowed weight matrix in its stored element type.
#[derive(Clone, Copy, Debug)]
pub enum WeightView<'a> {
    F32(&'a [f32]),
    BF16(&'a [u16]),
    F16(&'a [u16]),
    /// GGML blocks of `QuantType`, rows stored one after another.
    Quant(QuantType, &'a [u8]),
}

impl WeightView<'_> {
    pub fn len(&self) -> usize {
        match self {
            WeightView::F32(w) => w.len(),
            WeightView::BF16(w) | WeightView::F16(w) => w.len(),
            WeightView::Quant(qt, b) => b.len() / qt.block_bytes() * qt.block_elems(),
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
            WeightView::Quant(qt, b) => {
                let rb = qt.row_bytes(k);
                dequantize_row(*qt, &b[r * rb..(r + 1) * rb], out)
            }
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
    if let WeightView::Quant(qt, wb) = w {
        return matmul_quant(pool, kern, x, t, k, qt, wb, n, out);
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

thread_local! {
    /// The calling thread's quantized activations, reused across calls (no per-token allocation).
    static ACT: RefCell<ActQ8> = RefCell::new(ActQ8::default());
}

fn best_qkernel(kern: DotKernel) -> QKernel {
    static BEST: OnceLock<QKernel> = OnceLock::new();
    if kern == DotKernel::Scalar {
        QKernel::Scalar
    } else {
        *BEST.get_or_init(QKernel::detect)
    }
}

/// Activation rows per tile in the many-rows (prefill) path: a tile of int8 rows stays in L2
/// while every weight row of a task is streamed past it.
const T_TILE: usize = 32;

/// `out = x · Wᵀ` over block-quantized weights: the activations are quantized to 8 bits once,
/// then each weight row is dotted with every activation row while it is in L1.
#[allow(clippy::too_many_arguments)]
fn matmul_quant(
    pool: &ThreadPool,
    kern: DotKernel,
    x: &[f32],
    t: usize,
    k: usize,
    qt: QuantType,
    wb: &[u8],
    n: usize,
    out: &mut [f32],
) {
    assert!(
        qt.fits(k),
        "row length {k} is not a multiple of {}",
        qt.block_elems()
    );
    let qk = best_qkernel(kern);
    let kind = qt.act_kind();
    let rb = qt.row_bytes(k);
    ACT.with(|cell| {
        let mut act = cell.borrow_mut();
        act.quantize(x, t, k, kind);
        let act = &*act;
        let per_task = if t == 1 {
            (n / (pool.n_threads() * 8)).clamp(1, 256)
        } else {
            16
        };
        let n_tasks = n.div_ceil(per_task);
        let dst = DisjointSlice::new(out);
        pool.for_each(n_tasks, &|task| {
            let j0 = task * per_task;
            let j1 = (j0 + per_task).min(n);
            for t0 in (0..t).step_by(T_TILE) {
                let t1 = (t0 + T_TILE).min(t);
                for j in j0..j1 {
                    let wr = &wb[j * rb..(j + 1) * rb];
                    let mut tt = t0;
                    // Four activation rows per pass over the weight row, then the rest singly.
                    while tt + 4 <= t1 {
                        let rows = [tt, tt + 1, tt + 2, tt + 3].map(|r| act.row(r, kind));
                        let v = qk.dot_rows::<4>(qt, wr, &rows);
                        for (r, &val) in v.iter().enumerate() {
                            let at = (tt + r) * n + j;
                            // SAFETY: task `task` owns columns j0..j1 of every output row.
                            let o = unsafe { dst.range(at, at + 1) };
                            o[0] = val;
                        }
                        tt += 4;
                    }
                    for tt in tt..t1 {
                        let v = qk.dot(qt, wr, act.row(tt, kind));
                        // SAFETY: task `task` owns columns j0..j1 of every output row.
                        let o = unsafe { dst.range(tt * n + j, tt * n + j + 1) };
                        o[0] = v;
                    }
                }
            }
        });
    });
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)]
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

        #[test]
        fn quant_matmul_matches_dequantized(qi in 0usize..5, t in 1usize..40, nb in 1usize..3, n in 1usize..20, seed in 0u32..1000) {
            let qt = QuantType::ALL[qi];
            let k = nb * qt.block_elems();
            let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
            let mut rnd = || { s ^= s << 13; s ^= s >> 17; s ^= s << 5; (s % 2001) as f32 / 1000.0 - 1.0 };
            let x: Vec<f32> = (0..t * k).map(|_| rnd()).collect();
            let wf: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
            let mut wq = vec![0u8; n * qt.row_bytes(k)];
            for j in 0..n {
                crate::quant::quantize_row(qt, &wf[j * k..(j + 1) * k], &mut wq[j * qt.row_bytes(k)..(j + 1) * qt.row_bytes(k)]);
            }
            let view = WeightView::Quant(qt, &wq);
            prop_assert_eq!(view.len(), n * k);
            let pool = ThreadPool::new(2);
            for kern in DotKernel::available() {
                let mut out = vec![0f32; t * n];
                matmul(&pool, kern, &x, t, k, view, n, &mut out);
                let mut row = vec![0f32; k];
                for tt in 0..t {
                    let xr = &x[tt * k..(tt + 1) * k];
                    let xn = xr.iter().map(|v| v * v).sum::<f32>().sqrt();
                    for j in 0..n {
                        view.row_f32(j, k, &mut row);
                        let r: f32 = (0..k).map(|i| row[i] * xr[i]).sum();
                        let wn = row.iter().map(|v| v * v).sum::<f32>().sqrt();
                        // 8-bit activations: error ≲ |w|·|x|/127 per row.
                        prop_assert!((out[tt * n + j] - r).abs() <= 0.02 * wn * xn + 1e-5, "{:?} {:?}", qt, kern);
                    }
                }
            }
        }
    }
}
