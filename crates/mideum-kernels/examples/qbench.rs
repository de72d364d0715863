//! Quantized matmul micro-benchmark on Mi:dm-Mini-shaped layers.
//!
//!     cargo run --release -p mideum-kernels --example qbench -- [TYPES] [THREADS] [T] [REPS] [LAYERS]
//!
//! TYPES is a comma list (`q8_0,q4_0,q4_k,q5_k,q6_k`), T the activation rows (1 = decode).
//! Each repetition runs every matrix of LAYERS layers (q, k, v, o, gate, up, down; far larger
//! than the L3 cache, so decode streams the weights from DRAM) and the minimum and median
//! times are printed with the implied weight bandwidth (decode) or integer op rate (prefill).

use mideum_kernels::packed::{self, Packed};
use mideum_kernels::quant::QuantType;
use mideum_kernels::{matmul, matmul_multi, DotKernel, ThreadPool, WeightView};
use std::time::Instant;

fn random_weights(qt: QuantType, n: usize, k: usize, seed: u64) -> Vec<u8> {
    let nb = n * k / qt.block_elems();
    let bb = qt.block_bytes();
    let mut s = seed | 1;
    let mut w: Vec<u8> = (0..nb * bb)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect();
    let put = |blk: &mut [u8], at: usize, v: f32| {
        blk[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes())
    };
    for blk in w.chunks_exact_mut(bb) {
        match qt {
            QuantType::Q8_0 | QuantType::Q4_0 => put(blk, 0, 0.01),
            QuantType::Q4K | QuantType::Q5K => {
                put(blk, 0, 0.001);
                put(blk, 2, 0.001);
            }
            QuantType::Q6K => put(blk, 208, 0.001),
        }
    }
    w
}

fn view_of(layout: Option<Packed>, qt: QuantType, w: &[u8]) -> WeightView<'_> {
    match layout {
        Some(p) => WeightView::Packed(p, w),
        None => WeightView::Quant(qt, w),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let types: Vec<QuantType> = args
        .get(1)
        .map(|s| s.split(',').filter_map(QuantType::parse).collect())
        .unwrap_or_else(|| QuantType::ALL.to_vec());
    let threads: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    let t: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    let reps: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(7);
    let layers: usize = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(4);
    let multi = std::env::var("QBENCH_SEPARATE").is_err();
    let (h, qd, kvd, ff) = (1792usize, 4096usize, 1024usize, 4608usize);
    let pool = ThreadPool::new(threads);
    let kern = DotKernel::detect();
    for qt in types {
        // (n, k) of q, k, v, o, gate, up, down.
        let shapes = [
            (qd, h),
            (kvd, h),
            (kvd, h),
            (h, qd),
            (ff, h),
            (ff, h),
            (h, ff),
        ];
        let ws: Vec<Vec<Vec<u8>>> = (0..layers)
            .map(|l| {
                shapes
                    .iter()
                    .enumerate()
                    .map(|(i, &(n, k))| random_weights(qt, n, k, (l * 7 + i + 1) as u64))
                    .collect()
            })
            .collect();
        // QBENCH_PACKED=1: repack the weights as the model loader does (where a layout exists).
        let packed_on = std::env::var("QBENCH_PACKED").is_ok_and(|v| v == "1");
        let layouts: Vec<Option<Packed>> = shapes
            .iter()
            .map(|&(n, k)| Packed::for_weights(qt, n, k).filter(|_| packed_on))
            .collect();
        let ws: Vec<Vec<Vec<u8>>> = ws
            .into_iter()
            .map(|wl| {
                wl.into_iter()
                    .enumerate()
                    .map(|(i, w)| match layouts[i] {
                        Some(p) => {
                            let (n, k) = shapes[i];
                            let mut out = vec![0u8; p.bytes(n, k)];
                            packed::pack(p, &w, n, k, &mut out);
                            out
                        }
                        None => w,
                    })
                    .collect()
            })
            .collect();
        let bytes: usize = ws.iter().flatten().map(|w| w.len()).sum();
        let ops: f64 = layers as f64
            * shapes.iter().map(|&(n, k)| (n * k) as f64).sum::<f64>()
            * t as f64
            * 2.0;
        let xs: Vec<Vec<f32>> = [h, qd, ff]
            .iter()
            .map(|&k| {
                (0..t * k)
                    .map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0)
                    .collect()
            })
            .collect();
        let mut outs: Vec<Vec<f32>> = shapes.iter().map(|&(n, _)| vec![0f32; t * n]).collect();
        let mut times = Vec::new();
        for rep in 0..reps + 1 {
            let t0 = Instant::now();
            for wl in &ws {
                let [oq, ok, ov, oo, og, ou, od] = &mut outs[..] else {
                    unreachable!()
                };
                if multi {
                    matmul_multi(
                        &pool,
                        kern,
                        &xs[0],
                        t,
                        h,
                        &mut [
                            (view_of(layouts[0], qt, &wl[0]), qd, &mut oq[..]),
                            (view_of(layouts[1], qt, &wl[1]), kvd, &mut ok[..]),
                            (view_of(layouts[2], qt, &wl[2]), kvd, &mut ov[..]),
                        ],
                    );
                } else {
                    matmul(
                        &pool,
                        kern,
                        &xs[0],
                        t,
                        h,
                        view_of(layouts[0], qt, &wl[0]),
                        qd,
                        oq,
                    );
                    matmul(
                        &pool,
                        kern,
                        &xs[0],
                        t,
                        h,
                        view_of(layouts[1], qt, &wl[1]),
                        kvd,
                        ok,
                    );
                    matmul(
                        &pool,
                        kern,
                        &xs[0],
                        t,
                        h,
                        view_of(layouts[2], qt, &wl[2]),
                        kvd,
                        ov,
                    );
                }
                matmul(
                    &pool,
                    kern,
                    &xs[1],
                    t,
                    qd,
                    view_of(layouts[3], qt, &wl[3]),
                    h,
                    oo,
                );
                if multi {
                    matmul_multi(
                        &pool,
                        kern,
                        &xs[0],
                        t,
                        h,
                        &mut [
                            (view_of(layouts[4], qt, &wl[4]), ff, &mut og[..]),
                            (view_of(layouts[5], qt, &wl[5]), ff, &mut ou[..]),
                        ],
                    );
                } else {
                    matmul(
                        &pool,
                        kern,
                        &xs[0],
                        t,
                        h,
                        view_of(layouts[4], qt, &wl[4]),
                        ff,
                        og,
                    );
                    matmul(
                        &pool,
                        kern,
                        &xs[0],
                        t,
                        h,
                        view_of(layouts[5], qt, &wl[5]),
                        ff,
                        ou,
                    );
                }
                matmul(
                    &pool,
                    kern,
                    &xs[2],
                    t,
                    ff,
                    view_of(layouts[6], qt, &wl[6]),
                    h,
                    od,
                );
            }
            if rep > 0 {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        // Plain read of the same weights over the same threads: the bandwidth bound right now.
        let mut bw_times = Vec::new();
        for _ in 0..3 {
            let all: Vec<&[u8]> = ws.iter().flatten().map(|w| &w[..]).collect();
            let t0 = Instant::now();
            let sums: Vec<std::sync::atomic::AtomicU64> =
                (0..all.len()).map(|_| Default::default()).collect();
            pool.for_each(all.len() * 8, &|task| {
                let w = all[task / 8];
                let per = w.len().div_ceil(8);
                let c = &w[(task % 8) * per..((task % 8 + 1) * per).min(w.len())];
                let mut acc = [0u64; 8];
                for ch in c.chunks_exact(64) {
                    for l in 0..8 {
                        acc[l] = acc[l].wrapping_add(u64::from_le_bytes(
                            ch[8 * l..8 * l + 8].try_into().unwrap_or([0; 8]),
                        ));
                    }
                }
                sums[task / 8].fetch_add(
                    acc.iter().fold(0, |a: u64, &b| a.wrapping_add(b)),
                    std::sync::atomic::Ordering::Relaxed,
                );
            });
            bw_times.push(t0.elapsed().as_secs_f64());
            std::hint::black_box(&sums);
        }
        bw_times.sort_by(f64::total_cmp);
        times.sort_by(f64::total_cmp);
        let (min, med) = (times[0], times[times.len() / 2]);
        println!(
            "{:5} threads {} t {:4}: min {:8.2} ms  median {:8.2} ms  {:6.2} GB/s (plain read {:6.2} GB/s)  {:7.1} Gop/s (weights {:.0} MB, check {:.3})",
            qt.name(),
            threads,
            t,
            min * 1e3,
            med * 1e3,
            bytes as f64 / min / 1e9,
            bytes as f64 / bw_times[0] / 1e9,
            ops / min / 1e9,
            bytes as f64 / 1e6,
            outs.iter().flatten().map(|v| v.abs() as f64).sum::<f64>() / 1e6,
        );
    }
}
