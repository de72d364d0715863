//! A prefill-shaped packed Q4_K matmul (`t` activation rows against 1024 × 1792 and 512 × 4608
//! weights) with everything in L3: the best of 30 calls, so a shared machine's interruptions
//! fall out. It measures the blocking of `matmul` around the micro-kernel (which `pbench` times
//! alone, in L1) without DRAM noise; `qbench` measures whole layers from DRAM.
//!
//!     cargo run --release -p mideum-kernels --example gbench -- [THREADS] [T]
//!
//! `GBENCH_SHAPES=n:k,n:k` times other shapes (the model's: 6144:1792, 9216:1792, 1792:4096,
//! 1792:4608); `GBENCH_TYPE=q8_0|q6_k|q4_0` another packed weight type than Q4_K.
use mideum_kernels::packed::{self, Packed};
use mideum_kernels::quant::{quantize_row, QuantType};
use mideum_kernels::{matmul, DotKernel, ThreadPool, WeightView};
use std::time::Instant;

#[path = "common/rng.rs"]
mod rng;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let threads = args.first().copied().unwrap_or(1);
    let t = args.get(1).copied().unwrap_or(512);
    let pool = ThreadPool::new(threads);
    let kern = DotKernel::detect();
    let mut rnd = rng::uniform(12345);
    let qt = match std::env::var("GBENCH_TYPE").as_deref() {
        Ok("q8_0") => QuantType::Q8_0,
        Ok("q6_k") => QuantType::Q6K,
        Ok("q4_0") => QuantType::Q4_0,
        _ => QuantType::Q4K,
    };
    for (n, k) in shapes() {
        let Some(lay) = Packed::for_weights(qt, n, k) else {
            eprintln!("{qt:?} has no packed layout for n={n} k={k}");
            continue;
        };
        let rb = qt.row_bytes(k);
        let mut w = vec![0u8; n * rb];
        let wf: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
        for j in 0..n {
            quantize_row(qt, &wf[j * k..(j + 1) * k], &mut w[j * rb..(j + 1) * rb]);
        }
        let mut p = vec![0u8; lay.bytes(n, k)];
        packed::pack(lay, &w, n, k, &mut p);
        let x: Vec<f32> = (0..t * k).map(|_| rnd()).collect();
        let mut out = vec![0f32; t * n];
        let mut best = f64::MAX;
        for _ in 0..30 {
            let t0 = Instant::now();
            matmul(
                &pool,
                kern,
                &x,
                t,
                k,
                WeightView::Packed(lay, &p),
                n,
                &mut out,
            );
            best = best.min(t0.elapsed().as_secs_f64());
        }
        println!(
            "{qt:?} n={n} k={k} t={t}: {:.1} GMAC/s ({:.2} ms)",
            (n * k * t) as f64 / best / 1e9,
            best * 1e3
        );
    }
}

/// The (n, k) products timed: `GBENCH_SHAPES=n:k,n:k` overrides the two defaults.
fn shapes() -> Vec<(usize, usize)> {
    match std::env::var("GBENCH_SHAPES") {
        Ok(s) => s
            .split(',')
            .filter_map(|p| {
                let (n, k) = p.split_once(':')?;
                Some((n.parse().ok()?, k.parse().ok()?))
            })
            .collect(),
        Err(_) => vec![(1024, 1792), (512, 4608)],
    }
}
