//! Times decode attention over a Mi:dm Mini-shaped KV cache (48 layers, 8 KV heads of 128,
//! 4 query heads per KV head) stored as f16 and as q8_0, interleaved:
//! `cargo run --release -p mideum-kernels --example kvbench -- [DEPTH] [ROUNDS] [hot] [rows=N]
//! [threads=T] [block=B] [type=f16|q8_0|f32] [layout=pool]`.
//! `block=B`: positions per KV block (the pool's is 16). `layout=pool`: f16 blocks laid out as
//! mideum-model's pool lays out a block, every (layer, K/V, head) run of it side by side, one
//! allocation per block (as the pool allocated them before its chunked storage), instead of
//! each head's blocks back to back. `type=`: one element type only; `f32` (the same values
//! widened, twice the f16 bytes) is timed only when asked for.
//! `rows=N`: N query rows after the depth (a prefill chunk) instead of one decode row.
//! `threads=T`: the (layer, head) calls dealt round-robin to T threads, as the model's pool
//! deals a layer's KV heads.
//! With `hot`, every (layer, head) of a thread reads the same unit's rows, which stay in the
//! caches: the arithmetic rate without DRAM traffic.

use mideum_kernels::attn::{attend, quantize_q8, AttnKernel, AttnShape, KvRows, Q8_GROUP};
use std::time::Instant;

#[path = "common/rng.rs"]
mod rng;

fn main() {
    let mut args = std::env::args().skip(1);
    let depth: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(4096);
    let rounds: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let rest: Vec<String> = args.collect();
    let hot = rest.iter().any(|s| s == "hot");
    let rows: usize = rest
        .iter()
        .find_map(|s| s.strip_prefix("rows=").and_then(|v| v.parse().ok()))
        .unwrap_or(1);
    let threads: usize = rest
        .iter()
        .find_map(|s| s.strip_prefix("threads=").and_then(|v| v.parse().ok()))
        .unwrap_or(1)
        .max(1);
    let block: usize = rest
        .iter()
        .find_map(|s| s.strip_prefix("block=").and_then(|v| v.parse().ok()))
        .unwrap_or(16)
        .max(1);
    let only: Option<&str> = rest.iter().find_map(|s| s.strip_prefix("type="));
    let pool = rest.iter().any(|s| s == "layout=pool");
    if let Some(t) = only.filter(|t| !["f16", "q8_0", "f32"].contains(t)) {
        eprintln!("kvbench: unknown type={t} (f16, q8_0 or f32)");
        std::process::exit(2);
    }
    let (layers, heads, hd, group) = (48usize, 8usize, 128usize, 4usize);
    let units = layers * heads;
    let n_blocks = (depth + rows).div_ceil(block);
    let bl = block * hd;
    let gpr = hd.div_ceil(Q8_GROUP);
    let mut rnd = rng::uniform(12345);
    // Per unit (layer, head): K then V, each n_blocks * bl values.
    let per = n_blocks * bl;
    let mut h16 = vec![0u16; units * 2 * per];
    let mut q8 = vec![0i8; units * 2 * per];
    let mut sc = vec![0u16; units * 2 * per / hd * gpr];
    let mut row = vec![0f32; hd];
    for r in 0..units * 2 * per / hd {
        row.iter_mut().for_each(|x| *x = rnd());
        for (d, &x) in h16[r * hd..(r + 1) * hd].iter_mut().zip(&row) {
            *d = half::f16::from_f32(x).to_bits();
        }
        quantize_q8(
            &row,
            &mut q8[r * hd..(r + 1) * hd],
            &mut sc[r * gpr..(r + 1) * gpr],
        );
    }
    // f32 rows (the same values) only when asked for: they double the f16 bytes.
    let f32s: Vec<f32> = if only == Some("f32") {
        h16.iter()
            .map(|&b| half::f16::from_bits(b).to_f32())
            .collect()
    } else {
        Vec::new()
    };
    // layout=pool: one allocation per block holding every (layer, K/V, head) run, as
    // mideum-model's KvPool lays a block out (f16 only).
    let pooled: Vec<Vec<u16>> = if pool {
        (0..n_blocks)
            .map(|b| {
                let mut blk = vec![0u16; units * 2 * bl];
                for u in 0..units * 2 {
                    blk[u * bl..(u + 1) * bl].copy_from_slice(&h16[u * per + b * bl..][..bl]);
                }
                blk
            })
            .collect()
    } else {
        Vec::new()
    };
    let q: Vec<f32> = (0..rows * group * hd).map(|_| rnd()).collect();
    let shape = AttnShape {
        head_dim: hd,
        group,
        rows,
        pos0: depth,
        block,
        scale: 1.0 / (hd as f32).sqrt(),
    };
    let kern = AttnKernel::detect();
    let sl = block * gpr;
    let bytes16 = (units * 2 * (depth + 1) * hd * 2) as f64;
    let bytes8 = (units * 2 * (depth + 1) * (hd + 2 * gpr)) as f64;
    println!(
        "{kern:?}, {threads} thread(s), depth {depth}{}: f16 {:.0} MB, q8_0 {:.0} MB per token",
        if hot {
            " (hot: one head's rows, in cache)"
        } else {
            ""
        },
        bytes16 / 1e6,
        bytes8 / 1e6
    );
    let mut sink = 0f32;
    for round in 0..rounds {
        for ty in ["f16", "q8_0", "f32"] {
            if ty == "f32" && only != Some("f32") {
                continue;
            }
            if only.is_some_and(|o| o != ty) {
                continue;
            }
            let t0 = Instant::now();
            // Thread `tid` takes units tid, tid + threads, ... (with `hot`, all of them read
            // unit `tid`'s rows, so that the threads do not share one head's cache lines).
            let run_units = |tid: usize| -> f32 {
                let mut sink = 0f32;
                for u in (tid..units).step_by(threads) {
                    let u = if hot { tid } else { u };
                    let (ko, vo) = (u * 2 * per, u * 2 * per + per);
                    let (kso, vso) = (ko / hd * gpr, vo / hd * gpr);
                    let kv = |b: usize| match ty {
                        "f32" => KvRows::F32 {
                            k: &f32s[ko + b * bl..ko + (b + 1) * bl],
                            v: &f32s[vo + b * bl..vo + (b + 1) * bl],
                        },
                        "f16" if pool => KvRows::F16 {
                            k: &pooled[b][u * 2 * bl..][..bl],
                            v: &pooled[b][(u * 2 + 1) * bl..][..bl],
                        },
                        "f16" => KvRows::F16 {
                            k: &h16[ko + b * bl..ko + (b + 1) * bl],
                            v: &h16[vo + b * bl..vo + (b + 1) * bl],
                        },
                        _ => KvRows::Q8 {
                            k: &q8[ko + b * bl..ko + (b + 1) * bl],
                            v: &q8[vo + b * bl..vo + (b + 1) * bl],
                            ks: &sc[kso + b * sl..kso + (b + 1) * sl],
                            vs: &sc[vso + b * sl..vso + (b + 1) * sl],
                        },
                    };
                    attend(kern, &shape, &q, group * hd, &kv, &mut |_, o| sink += o[0]);
                }
                sink
            };
            std::thread::scope(|s| {
                let others: Vec<_> = (1..threads)
                    .map(|tid| {
                        let run = &run_units;
                        s.spawn(move || run(tid))
                    })
                    .collect();
                sink += run_units(0);
                for h in others {
                    sink += h.join().unwrap_or(0.0);
                }
            });
            let dt = t0.elapsed().as_secs_f64();
            let b = match ty {
                "f16" => bytes16,
                "f32" => 2.0 * bytes16,
                _ => bytes8,
            };
            println!(
                "round {round} {ty}: {:.1} ms per {rows}-row step, {:.1} GB/s of KV",
                dt * 1e3,
                b / dt / 1e9
            );
        }
    }
    println!("(checksum {sink})");
}
