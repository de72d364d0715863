//! In-cache throughput of the packed Q4_K, Q6_K and Q8_0 micro-kernels per activation-row count (one group of
//! 8 rows, and two per call, K = 1792 and 4608, everything in L1/L2): the best of many short timed loops, so a
//! shared machine's interruptions fall out.
//!
//!     cargo run --release -p mideum-kernels --example pbench

use mideum_kernels::packed::{self, Packed, PackedKernel};
use mideum_kernels::quant::{quantize_row, ActQ8, ActRow, QuantType};
use std::time::Instant;

#[path = "common/rng.rs"]
mod rng;

fn time<const RA: usize>(pk: PackedKernel, lay: Packed, p: &[u8], act: &ActQ8, k: usize) -> f64 {
    let rows: [ActRow<'_>; RA] = std::array::from_fn(|r| act.row(r, lay.source().act_kind()));
    let iters = 2000;
    let mut best = f64::MAX;
    let mut sink = 0f32;
    for _ in 0..40 {
        let t0 = Instant::now();
        for _ in 0..iters {
            let o = pk.group::<RA>(lay, std::hint::black_box(p), &rows, false);
            sink += o[RA - 1][7];
        }
        best = best.min(t0.elapsed().as_secs_f64() / iters as f64);
    }
    std::hint::black_box(sink);
    (packed::ROWS * RA * k) as f64 / best / 1e9
}

/// The same for two groups per call ([`PackedKernel::groups`]).
fn time2<const RA: usize>(pk: PackedKernel, lay: Packed, p: &[u8], act: &ActQ8, k: usize) -> f64 {
    let rows: [ActRow<'_>; RA] = std::array::from_fn(|r| act.row(r, lay.source().act_kind()));
    let gb = lay.group_bytes(k);
    let iters = 1000;
    let mut best = f64::MAX;
    let mut sink = 0f32;
    for _ in 0..40 {
        let t0 = Instant::now();
        for _ in 0..iters {
            let p = std::hint::black_box(p);
            let o = pk.groups::<2, RA>(lay, [&p[..gb], &p[gb..2 * gb]], &rows, false);
            sink += o[1][RA - 1][7];
        }
        best = best.min(t0.elapsed().as_secs_f64() / iters as f64);
    }
    std::hint::black_box(sink);
    (2 * packed::ROWS * RA * k) as f64 / best / 1e9
}

fn main() {
    let pk = PackedKernel::detect();
    for (qt, lay) in [
        (QuantType::Q4K, Packed::Q4Kx8),
        (QuantType::Q6K, Packed::Q6Kx8),
        (QuantType::Q8_0, Packed::Q8_0x8),
    ] {
        for k in [1792usize, 4608] {
            let n = 2 * packed::ROWS;
            let rb = qt.row_bytes(k);
            let mut w = vec![0u8; n * rb];
            let mut rnd = rng::uniform(12345);
            let wf: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
            for j in 0..n {
                quantize_row(qt, &wf[j * k..(j + 1) * k], &mut w[j * rb..(j + 1) * rb]);
            }
            let mut p = vec![0u8; lay.bytes(n, k)];
            packed::pack(lay, &w, n, k, &mut p);
            let x: Vec<f32> = (0..8 * k).map(|_| rnd()).collect();
            let mut act = ActQ8::default();
            act.quantize(&x, 8, k, qt.act_kind());
            println!(
                "{pk:?} {lay:?} k={k}: GMAC/s RA=1 {:.1}  2 {:.1}  3 {:.1}  4 {:.1}  5 {:.1}  6 {:.1}  8 {:.1}",
                time::<1>(pk, lay, &p, &act, k),
                time::<2>(pk, lay, &p, &act, k),
                time::<3>(pk, lay, &p, &act, k),
                time::<4>(pk, lay, &p, &act, k),
                time::<5>(pk, lay, &p, &act, k),
                time::<6>(pk, lay, &p, &act, k),
                time::<8>(pk, lay, &p, &act, k),
            );
            println!(
                "{pk:?} {lay:?} k={k}: two groups per call, GMAC/s RA=1 {:.1}  4 {:.1}  6 {:.1}  8 {:.1}",
                time2::<1>(pk, lay, &p, &act, k),
                time2::<4>(pk, lay, &p, &act, k),
                time2::<6>(pk, lay, &p, &act, k),
                time2::<8>(pk, lay, &p, &act, k),
            );
        }
    }
}
