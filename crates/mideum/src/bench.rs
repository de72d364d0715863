//! `mideum bench`: prompt-processing and generation throughput in the manner of llama-bench
//! (random tokens, one warm-up run, mean ± sd over repetitions), plus the machine's measured
//! read bandwidth and the decode speed it allows for this model's weights.

use anyhow::{bail, Context, Result};
use clap::Args;
use mideum_model::gguf::GgufFile;
use mideum_model::{BatchItem, LoadOptions, LoadedModel, Logits, SeqKv, BLOCK_TOKENS};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    /// A Hugging Face model directory or a .gguf file.
    #[arg(long = "model", short = 'm')]
    pub model: PathBuf,
    /// Prompt lengths to time (comma-separated; 0 skips prompt tests).
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "512"
    )]
    pub n_prompt: Vec<usize>,
    /// Generated token counts to time (comma-separated; 0 skips generation tests).
    #[arg(
        short = 'n',
        long = "n-gen",
        value_delimiter = ',',
        default_value = "128"
    )]
    pub n_gen: Vec<usize>,
    /// Thread counts (comma-separated).
    #[arg(
        short = 't',
        long = "threads",
        value_delimiter = ',',
        default_value = "2"
    )]
    pub threads: Vec<usize>,
    /// Context already in the KV cache before each test (comma-separated).
    #[arg(
        short = 'd',
        long = "n-depth",
        value_delimiter = ',',
        default_value = "0"
    )]
    pub depth: Vec<usize>,
    /// Repetitions per test.
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    pub reps: usize,
    /// Quantize the weights while loading (q8_0, q4_0, q4_k, q5_k, q6_k).
    #[arg(long)]
    pub quant: Option<String>,
    /// Sequences decoded together in one batched forward pass per token (generation tests at
    /// depth 0; t/s is the aggregate over all of them, as a server with that many streams).
    #[arg(short = 'b', long = "parallel", default_value_t = 1)]
    pub parallel: usize,
    /// How the depth context is filled: `prefill` (run the model, like llama-bench) or
    /// `synthetic` (random keys and values written directly: same bytes for decode to read,
    /// without minutes of prefill).
    #[arg(long, default_value = "prefill")]
    pub depth_fill: String,
    /// Element type of the KV cache: f16, f32 or q8_0.
    #[arg(long, default_value = "f16")]
    pub kv_type: String,
    /// One JSON object per test on stdout, with llama-bench's field names.
    #[arg(long)]
    pub json: bool,
}

/// Bytes the decode of one token reads: every weight except the embedding table (of which it
/// reads one row), unless the table doubles as the output matrix.
fn decode_bytes(path: &Path, lm: &LoadedModel) -> usize {
    if lm.format == mideum_model::CheckpointFormat::Gguf {
        if let Ok(g) = GgufFile::open(path) {
            if let Ok(ts) = g.tensors() {
                let tied = !ts.contains_key("output.weight");
                return ts
                    .iter()
                    .filter(|(n, _)| tied || n.as_str() != "token_embd.weight")
                    .map(|(_, t)| t.nbytes())
                    .sum();
            }
        }
    }
    lm.model.weight_bytes()
}

fn type_name(path: &Path, lm: &LoadedModel, quant: Option<&str>) -> String {
    if let Some(q) = quant {
        return q.to_uppercase();
    }
    if lm.format == mideum_model::CheckpointFormat::Gguf {
        if let Ok(g) = GgufFile::open(path) {
            if let Some(ft) = g.get("general.file_type").and_then(|v| v.as_u64()) {
                let n = match ft {
                    0 => "F32",
                    1 => "F16",
                    2 => "Q4_0",
                    7 => "Q8_0",
                    14 => "Q4_K_S",
                    15 => "Q4_K_M",
                    16 => "Q5_K_S",
                    17 => "Q5_K_M",
                    18 => "Q6_K",
                    32 => "BF16",
                    _ => "?",
                };
                return n.to_string();
            }
        }
    }
    lm.model
        .config
        .dtype
        .clone()
        .unwrap_or_else(|| "?".into())
        .to_uppercase()
}

/// Read bandwidth in GB/s over a buffer far larger than any cache, on `threads` threads
/// (the best of three passes).
pub fn measure_bandwidth(threads: usize) -> f64 {
    const BYTES: usize = 512 << 20;
    let buf: Vec<u64> = (0..BYTES / 8).map(|i| i as u64).collect();
    let threads = threads.max(1);
    let per = buf.len().div_ceil(threads);
    let mut best = 0f64;
    for _ in 0..3 {
        let t0 = Instant::now();
        let sum: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = buf
                .chunks(per)
                .map(|c| {
                    s.spawn(move || {
                        let mut acc = [0u64; 8];
                        for ch in c.chunks_exact(8) {
                            for l in 0..8 {
                                acc[l] = acc[l].wrapping_add(ch[l]);
                            }
                        }
                        acc.iter().fold(0u64, |a, &b| a.wrapping_add(b))
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0u64, |a, b| a.wrapping_add(b))
        });
        let dt = t0.elapsed().as_secs_f64();
        std::hint::black_box(sum);
        best = best.max(BYTES as f64 / dt / 1e9);
    }
    best
}

/// Resident memory now (`VmRSS`): read right after a test, before the next bandwidth probe
/// allocates its buffer, so it is the model's mapped weights plus KV cache and scratch.
fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn random_tokens(n: usize, vocab: usize, seed: &mut u64) -> Vec<u32> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*seed >> 33) % vocab.max(1) as u64) as u32
        })
        .collect()
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if args.reps == 0 {
        bail!("-r must be at least 1");
    }
    let quant = match &args.quant {
        Some(q) => Some(
            mideum_model::QuantType::parse(q)
                .with_context(|| format!("unknown --quant {q} (q8_0, q4_0, q4_k, q5_k, q6_k)"))?,
        ),
        None => None,
    };
    let kv_type = crate::parse_kv_type(&args.kv_type)?;
    if args.parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    if args.parallel > 1 && args.depth.iter().any(|&d| d > 0) {
        bail!("--parallel above 1 is only supported at depth 0");
    }
    let synthetic = match args.depth_fill.as_str() {
        "prefill" => false,
        "synthetic" => true,
        other => bail!("--depth-fill {other:?} is not one of prefill, synthetic"),
    };
    let file_size = std::fs::metadata(&args.model)
        .map(|m| if m.is_file() { m.len() } else { 0 })
        .unwrap_or(0);
    if !args.json {
        println!("| model | size | threads | test | t/s | bw GB/s (before/after) | bound t/s | of bound |");
        println!("|---|---|---|---|---|---|---|---|");
    }
    let mut seed = 42u64;
    for &threads in &args.threads {
        let max_ctx = args.depth.iter().max().copied().unwrap_or(0)
            + args
                .n_prompt
                .iter()
                .max()
                .copied()
                .unwrap_or(0)
                .max(args.n_gen.iter().max().copied().unwrap_or(0))
            + 1;
        eprintln!(
            "bench: loading {} with {threads} threads",
            args.model.display()
        );
        let lm = LoadedModel::load(
            &args.model,
            &LoadOptions {
                threads,
                ctx_size: Some(max_ctx),
                quant,
                kv_type,
            },
        )
        .with_context(|| format!("cannot load model {}", args.model.display()))?;
        let vocab = lm.model.config.vocab_size;
        let wbytes = decode_bytes(&args.model, &lm);
        let model_size = if quant.is_some() || file_size == 0 {
            lm.model.weight_bytes() as u64
        } else {
            file_size
        };
        let ty = type_name(&args.model, &lm, args.quant.as_deref());
        let mut tests: Vec<(usize, usize, usize)> = Vec::new();
        for &d in &args.depth {
            for &p in args.n_prompt.iter().filter(|&&p| p > 0) {
                tests.push((p, 0, d));
            }
            for &n in args.n_gen.iter().filter(|&&n| n > 0) {
                tests.push((0, n, d));
            }
        }
        for (p, n, d) in tests {
            let label = if p > 0 {
                format!("pp{p}")
            } else {
                format!("tg{n}")
            } + &if d > 0 {
                format!(" @ d{d}")
            } else {
                String::new()
            } + &if n > 0 && args.parallel > 1 {
                format!(" x{}", args.parallel)
            } else {
                String::new()
            };
            let bw_before = measure_bandwidth(threads);
            let mut cache = lm.model.new_cache(d + p.max(n) + 1);
            if d > 0 {
                eprintln!("bench: {label} t={threads}: filling {d} tokens of context");
                let ctx = random_tokens(d, vocab, &mut seed);
                if synthetic {
                    cache.fill_synthetic(&ctx, seed)?;
                } else {
                    for chunk in ctx.chunks(512) {
                        lm.model.forward_cached(chunk, &mut cache, Logits::Last)?;
                    }
                }
            }
            let mut samples = Vec::with_capacity(args.reps);
            // One warm-up run, then the timed repetitions.
            for rep in 0..=args.reps {
                cache.truncate(d);
                let t0;
                if p > 0 {
                    let toks = random_tokens(p, vocab, &mut seed);
                    t0 = Instant::now();
                    lm.model.forward_cached(&toks, &mut cache, Logits::Last)?;
                } else if args.parallel > 1 {
                    let b = args.parallel;
                    let mut pool = lm.model.new_pool(b * (n.div_ceil(BLOCK_TOKENS) + 1));
                    let mut seqs: Vec<SeqKv> = (0..b).map(|_| SeqKv::with_capacity(n)).collect();
                    let toks: Vec<Vec<u32>> =
                        (0..b).map(|_| random_tokens(n, vocab, &mut seed)).collect();
                    t0 = Instant::now();
                    for i in 0..n {
                        let mut items: Vec<BatchItem> = seqs
                            .iter_mut()
                            .zip(&toks)
                            .map(|(seq, t)| BatchItem {
                                tokens: &t[i..i + 1],
                                seq,
                                logits: Logits::Last,
                            })
                            .collect();
                        lm.model.run_batch(&mut pool, &mut items)?;
                    }
                } else {
                    let toks = random_tokens(n, vocab, &mut seed);
                    t0 = Instant::now();
                    for &tk in &toks {
                        lm.model.forward_cached(&[tk], &mut cache, Logits::Last)?;
                    }
                }
                let dt = t0.elapsed().as_secs_f64();
                let ts = (p + n * if p == 0 { args.parallel } else { 1 }) as f64 / dt;
                if rep > 0 {
                    samples.push(ts);
                }
                eprintln!(
                    "bench: {label} t={threads} {} {}/{}: {ts:.2} t/s",
                    if rep == 0 { "warm-up" } else { "rep" },
                    rep,
                    args.reps
                );
            }
            let rss = rss_bytes();
            let bw_after = measure_bandwidth(threads);
            let (avg, sd) = mean_sd(&samples);
            let bw = (bw_before + bw_after) / 2.0;
            // A generated token also reads the KV cache of every earlier position: the depth plus,
            // on average, half of the generated tokens.
            let kv_read = if n > 0 {
                ((d + n / 2) * lm.model.kv_block_bytes() / BLOCK_TOKENS) as f64
            } else {
                0.0
            };
            // With several sequences per step, one read of the weights serves all of them.
            let per_step = if n > 0 { args.parallel as f64 } else { 1.0 };
            let bound = per_step * bw * 1e9 / (wbytes as f64 + per_step * kv_read).max(1.0);
            if args.json {
                println!(
                    "{}",
                    json!({
                        "model_filename": args.model.display().to_string(),
                        "model_type": format!("llama {ty}"),
                        "type": ty,
                        "model_size": model_size,
                        "model_n_params": null,
                        "n_threads": threads,
                        "n_prompt": p,
                        "n_gen": n,
                        "n_depth": d,
                        "n_parallel": if n > 0 { args.parallel } else { 1 },
                        "avg_ts": avg,
                        "stddev_ts": sd,
                        "samples_ts": samples,
                        "bw_gbs_before": bw_before,
                        "bw_gbs_after": bw_after,
                        "decode_bytes": wbytes,
                        "kv_bytes_per_token": kv_read,
                        "kv_type": args.kv_type,
                        "bound_ts": bound,
                        "rss_bytes": rss,
                        "kv_cache_bytes": cache.bytes(),
                    })
                );
            } else {
                let of_bound = if n > 0 {
                    format!("{:.0}%", 100.0 * avg / bound)
                } else {
                    "-".into()
                };
                println!(
                    "| {ty} | {:.2} GiB | {threads} | {label} | {avg:.2} ± {sd:.2} | {bw_before:.1}/{bw_after:.1} | {bound:.1} | {of_bound} |",
                    model_size as f64 / (1u64 << 30) as f64
                );
            }
        }
    }
    Ok(())
}
