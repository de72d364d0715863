//! `mideum quantize IN OUT --type TYPE`: converts a Hugging Face directory or a GGUF file into
//! a quantized GGUF that llama.cpp and Mideum both load.

use anyhow::{bail, Context, Result};
use clap::Args;
use mideum_model::gguf_write::{quantize_model, QuantPlan};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Clone, Debug)]
pub struct QuantizeArgs {
    /// A Hugging Face model directory or a .gguf file.
    pub input: PathBuf,
    /// The GGUF file to write.
    pub output: PathBuf,
    /// Q8_0, Q4_0, Q4_K, Q5_K, Q6_K, Q4_K_M or Q5_K_M.
    #[arg(long = "type", default_value = "Q8_0")]
    pub ty: String,
    /// Threads used to quantize (default: all cores).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
}

pub fn run(args: &QuantizeArgs) -> Result<()> {
    let plan = QuantPlan::parse(&args.ty).with_context(|| {
        format!(
            "unknown --type {} (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K, Q4_K_M, Q5_K_M)",
            args.ty
        )
    })?;
    if args.output.exists() && args.output.canonicalize().ok() == args.input.canonicalize().ok() {
        bail!("the output would overwrite the input");
    }
    let threads = if args.threads > 0 {
        args.threads
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    };
    let t0 = Instant::now();
    let mut err = std::io::stderr();
    let report = quantize_model(&args.input, &args.output, plan, threads, |p| {
        let frac = p.done_bytes as f64 / p.total_bytes.max(1) as f64;
        let width = 30;
        let filled = (frac * width as f64) as usize;
        let _ = write!(
            err,
            "\r[{}{}] {:5.1}% {:>4}/{} {:<32.32}",
            "#".repeat(filled),
            " ".repeat(width - filled),
            100.0 * frac,
            p.index,
            p.count,
            p.tensor
        );
        let _ = err.flush();
    })
    .with_context(|| {
        format!(
            "cannot quantize {} to {}",
            args.input.display(),
            args.output.display()
        )
    })?;
    let mut types: Vec<_> = report.types.iter().collect();
    types.sort();
    eprintln!(
        "\nwrote {} ({} tensors, {:.2} GB, {}) in {:.1} s",
        args.output.display(),
        report.tensors,
        report.bytes_written as f64 / 1e9,
        types
            .iter()
            .map(|(t, n)| format!("{n} × {t}"))
            .collect::<Vec<_>>()
            .join(", "),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
