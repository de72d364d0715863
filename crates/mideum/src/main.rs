//! `mideum`: the command line over the Mideum libraries. Each subcommand parses its flags,
//! calls into `mideum-model`, `mideum-engine` or `mideum-guard`, and prints text (or JSON with
//! `--json`). Errors go to stderr with a non-zero exit code.

mod bench;
mod chat;
mod models;
mod quantize;
mod scan;
mod serve;
mod tenancy;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use mideum_engine::{generate, score, GenerateRequest, SamplingParams, Session};
use mideum_model::{LoadOptions, LoadedModel, TextAssets};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "mideum",
    version,
    about = "Run Korea's Mi:dm models on your own machines and govern where every LLM call goes."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
    /// Never use the network: hub references must already be in the store.
    #[arg(long, global = true)]
    offline: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Chat with a model in the terminal (or answer one --prompt and exit).
    Run(RunArgs),
    /// Raw completion of a prompt, without a chat template.
    Generate(GenerateArgs),
    /// Token ids of a text (no special tokens added; special-token strings map to their ids).
    Tokenize(TokenizeArgs),
    /// Text of a list of token ids.
    Detokenize(DetokenizeArgs),
    /// The prompt a model's chat template makes for a conversation.
    Render(RenderArgs),
    /// Log-probability of every next token of a text, and its perplexity.
    Perplexity(PerplexityArgs),
    /// Find Korean personal data in a text and mask it.
    Scan(scan::ScanArgs),
    /// Serve models over an OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
    /// Tenants of the store: add, list, show.
    Tenants(tenancy::TenantsArgs),
    /// API keys of the store: create, list, revoke.
    Keys(tenancy::KeysArgs),
    /// The audit trail: verify, export, prune, bench.
    Audit(tenancy::AuditArgs),
    /// Download a model from the hub (or a mirror) into the local store.
    Pull(models::PullArgs),
    /// Models in the local store.
    List(models::ListArgs),
    /// Remove a model from the local store.
    Rm(models::RmArgs),
    /// Architecture, parameters, context length, chat template and license of a model.
    Show(models::ShowArgs),
    /// Register a model directory or .gguf (e.g. from removable media) in the store.
    Import(models::ImportArgs),
    /// Write a manifest (names, sizes, SHA-256) of a model's files.
    Export(models::ExportArgs),
    /// Prompt and generation throughput (llama-bench style) and the memory-bandwidth bound.
    Bench(bench::BenchArgs),
    /// Convert a checkpoint into a quantized GGUF (Q8_0, Q4_0, Q4_K_M, …).
    Quantize(quantize::QuantizeArgs),
}

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A model directory, a .gguf file, ORG/NAME[@REV] or an alias (midm-mini).
    #[arg(long = "model", short = 'm')]
    pub model: PathBuf,
    /// Threads for the forward pass (default: all cores).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
    /// Context window in tokens (default: the model's).
    #[arg(long)]
    pub ctx_size: Option<usize>,
    /// Quantize the weights while loading: q8_0, q4_0, q4_k, q5_k or q6_k.
    #[arg(long)]
    pub quant: Option<String>,
}

impl ModelArgs {
    fn load(&self) -> Result<LoadedModel> {
        load_model_quant(
            &self.model,
            self.threads,
            self.ctx_size,
            self.quant.as_deref(),
        )
    }
}

/// Parses a `--kv-type` value.
pub fn parse_kv_type(s: &str) -> Result<mideum_model::KvType> {
    mideum_model::KvType::parse(s).ok_or_else(|| {
        anyhow::anyhow!(
            "--kv-type {s:?} is not one of {}",
            mideum_model::KvType::NAMES
        )
    })
}

pub fn load_model(path: &Path, threads: usize, ctx_size: Option<usize>) -> Result<LoadedModel> {
    load_model_quant(path, threads, ctx_size, None)
}

/// Loads a model reference, optionally quantizing its weights on the way in.
pub fn load_model_quant(
    path: &Path,
    threads: usize,
    ctx_size: Option<usize>,
    quant: Option<&str>,
) -> Result<LoadedModel> {
    let quant = match quant {
        None => None,
        Some(q) => Some(mideum_model::QuantType::parse(q).ok_or_else(|| {
            anyhow::anyhow!("--quant {q:?} is not one of q8_0, q4_0, q4_k, q5_k, q6_k")
        })?),
    };
    if ctx_size == Some(0) {
        bail!("--ctx-size must be at least 1");
    }
    let path = &models::resolve(path)?;
    tracing::info!(path = %path.display(), "loading model");
    LoadedModel::load(
        path,
        &LoadOptions {
            threads,
            ctx_size,
            quant,
            ..Default::default()
        },
    )
    .with_context(|| format!("cannot load model {}", path.display()))
}

#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// Sampling temperature (0 = greedy). Default: the model's generation_config.json.
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub min_p: Option<f32>,
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Seed for reproducible sampling.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop when this text appears (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Maximum number of new tokens.
    #[arg(long, short = 'n', default_value_t = 256)]
    pub max_tokens: usize,
}

impl SamplingArgs {
    pub fn params(&self, model: &LoadedModel) -> Result<SamplingParams> {
        let mut p = SamplingParams::from_defaults(&model.generation);
        if let Some(t) = self.temperature {
            p.temperature = t;
            if t > 0.0 && model.generation.do_sample != Some(true) {
                // Sampling asked for explicitly on a greedy-by-default model: no hidden cut-offs.
                p.top_k = 0;
                p.top_p = 1.0;
            }
        }
        if let Some(k) = self.top_k {
            p.top_k = k;
        }
        if let Some(x) = self.top_p {
            p.top_p = x;
        }
        if let Some(x) = self.min_p {
            p.min_p = x;
        }
        if let Some(x) = self.repetition_penalty {
            p.repetition_penalty = x;
        }
        p.seed = self.seed;
        p.validate().map_err(anyhow::Error::msg)?;
        Ok(p)
    }
}

#[derive(Args)]
struct RunArgs {
    /// A model directory, a .gguf file, ORG/NAME[@REV] or an alias (midm-mini).
    model: PathBuf,
    /// Answer this one message and exit.
    #[arg(long, short = 'p')]
    prompt: Option<String>,
    /// A system message (the model's template supplies its default otherwise).
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[arg(long, short = 't', default_value_t = 0)]
    threads: usize,
    #[arg(long)]
    ctx_size: Option<usize>,
    /// Print one JSON object per answer.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt text.
    #[arg(long, short = 'p')]
    prompt: String,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Do not stop at end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Print {"prompt_ids", "ids", "text"} instead of streaming text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["text", "file"])))]
struct TokenizeArgs {
    #[arg(long, short = 'm')]
    model: PathBuf,
    #[arg(long)]
    text: Option<String>,
    /// Read the text from a file (UTF-8).
    #[arg(long)]
    file: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DetokenizeArgs {
    #[arg(long, short = 'm')]
    model: PathBuf,
    /// Comma-separated token ids, e.g. 1,2,3.
    #[arg(long)]
    ids: String,
    /// Leave out special tokens.
    #[arg(long)]
    skip_special: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RenderArgs {
    #[arg(long, short = 'm')]
    model: PathBuf,
    /// A JSON file with the messages array.
    #[arg(long)]
    messages: PathBuf,
    /// A JSON file with the tools array.
    #[arg(long)]
    tools: Option<PathBuf>,
    /// Leave out the assistant header at the end.
    #[arg(long)]
    no_generation_prompt: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["file", "ids_file"])))]
struct PerplexityArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A UTF-8 text file: scored as BOS + its tokens.
    #[arg(long)]
    file: Option<PathBuf>,
    /// A JSON file with a list of token ids.
    #[arg(long)]
    ids_file: Option<PathBuf>,
    /// KV cache element type while scoring (default f32, so that scores compare with
    /// reference implementations; f16 is what generation uses).
    #[arg(long, default_value = "f32")]
    kv_type: String,
    #[arg(long)]
    json: bool,
}

fn read_utf8(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not valid UTF-8 (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

fn read_json_file(path: &Path) -> Result<serde_json::Value> {
    let text = read_utf8(path)?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

fn parse_ids(s: &str) -> Result<Vec<u32>> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| {
            x.parse::<u32>().with_context(|| {
                format!("{x:?} is not a token id (expected comma-separated non-negative integers)")
            })
        })
        .collect()
}

fn print_json(v: &serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

fn cmd_generate(a: &GenerateArgs) -> Result<()> {
    let m = a.model.load()?;
    let mut prompt_ids = m.tokenizer.encode(&a.prompt, m.tokenizer.adds_bos)?;
    if prompt_ids.is_empty() {
        if let Some(b) = m.tokenizer.bos_id() {
            prompt_ids.push(b);
        }
    }
    let req = GenerateRequest {
        prompt_ids: prompt_ids.clone(),
        max_tokens: a.sampling.max_tokens,
        sampling: a.sampling.params(&m)?,
        stop: a.sampling.stop.clone(),
        ignore_eos: a.ignore_eos,
    };
    let mut session = Session::new(&m);
    let mut stdout = std::io::stdout();
    let out = if a.json {
        generate(&m, &mut session, &req, &mut |_| true)?
    } else {
        let o = generate(&m, &mut session, &req, &mut |piece| {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
            true
        })?;
        println!();
        o
    };
    tracing::info!(
        prompt_tokens = out.prompt_tokens,
        new_tokens = out.ids.len(),
        prefill_tok_s = out.prompt_tokens as f64 / out.prefill_secs.max(1e-9),
        decode_tok_s = out.ids.len() as f64 / out.decode_secs.max(1e-9),
        "done"
    );
    if a.json {
        print_json(
            &json!({"prompt_ids": prompt_ids, "ids": out.ids, "text": out.text, "finish_reason": out.finish_reason}),
        )?;
    }
    Ok(())
}

fn cmd_tokenize(a: &TokenizeArgs) -> Result<()> {
    let assets = TextAssets::load(&models::resolve(&a.model)?)
        .with_context(|| format!("cannot load the tokenizer of {}", a.model.display()))?;
    let text = match (&a.text, &a.file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => read_utf8(f)?,
        (None, None) => bail!("give --text or --file"),
    };
    let ids = assets.tokenizer.encode(&text, false)?;
    if a.json {
        print_json(&json!({ "ids": ids }))
    } else {
        println!(
            "{}",
            ids.iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        Ok(())
    }
}

fn cmd_detokenize(a: &DetokenizeArgs) -> Result<()> {
    let assets = TextAssets::load(&models::resolve(&a.model)?)
        .with_context(|| format!("cannot load the tokenizer of {}", a.model.display()))?;
    let ids = parse_ids(&a.ids)?;
    let text = assets.tokenizer.decode(&ids, a.skip_special)?;
    if a.json {
        print_json(&json!({ "text": text }))
    } else {
        println!("{text}");
        Ok(())
    }
}

fn cmd_render(a: &RenderArgs) -> Result<()> {
    let assets = TextAssets::load(&models::resolve(&a.model)?)
        .with_context(|| format!("cannot load the tokenizer of {}", a.model.display()))?;
    let messages = read_json_file(&a.messages)?;
    let tools = a.tools.as_deref().map(read_json_file).transpose()?;
    let prompt = assets.render_chat(&messages, tools.as_ref(), !a.no_generation_prompt)?;
    if a.json {
        let ids = assets.tokenizer.encode(&prompt, false)?;
        print_json(&json!({ "prompt": prompt, "ids": ids }))
    } else {
        print!("{prompt}");
        std::io::stdout().flush()?;
        Ok(())
    }
}

fn cmd_perplexity(a: &PerplexityArgs) -> Result<()> {
    let kv_type = parse_kv_type(&a.kv_type)?;
    let mut m = a.model.load()?;
    m.model.set_kv_type(kv_type);
    let ids: Vec<u32> = match (&a.file, &a.ids_file) {
        (Some(f), _) => {
            let text = read_utf8(f)?;
            let mut ids: Vec<u32> = m.tokenizer.bos_id().into_iter().collect();
            ids.extend(m.tokenizer.encode(&text, false)?);
            ids
        }
        (None, Some(f)) => serde_json::from_value(read_json_file(f)?)
            .with_context(|| format!("{} must hold a JSON list of token ids", f.display()))?,
        (None, None) => bail!("give --file or --ids-file"),
    };
    let logprobs = score(&m, &ids)?;
    let nll = -logprobs.iter().map(|&x| x as f64).sum::<f64>() / logprobs.len() as f64;
    let ppl = nll.exp();
    if a.json {
        print_json(&json!({ "ids": ids, "logprobs": logprobs, "ppl": ppl }))
    } else {
        println!("tokens scored: {}\nperplexity: {ppl:.4}", logprobs.len());
        Ok(())
    }
}

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MIDEUM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    models::set_offline(cli.offline);
    let r = match &cli.cmd {
        Command::Run(a) => chat::run(
            a.model.as_path(),
            a.threads,
            a.ctx_size,
            a.prompt.as_deref(),
            a.system.as_deref(),
            &a.sampling,
            a.json,
        ),
        Command::Generate(a) => cmd_generate(a),
        Command::Tokenize(a) => cmd_tokenize(a),
        Command::Detokenize(a) => cmd_detokenize(a),
        Command::Render(a) => cmd_render(a),
        Command::Perplexity(a) => cmd_perplexity(a),
        Command::Scan(a) => scan::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Tenants(a) => tenancy::run_tenants(a),
        Command::Keys(a) => tenancy::run_keys(a),
        Command::Audit(a) => tenancy::run_audit(a),
        Command::Pull(a) => models::run_pull(a),
        Command::List(a) => models::run_list(a),
        Command::Rm(a) => models::run_rm(a),
        Command::Show(a) => models::run_show(a),
        Command::Import(a) => models::run_import(a),
        Command::Export(a) => models::run_export(a),
        Command::Bench(a) => bench::run(a),
        Command::Quantize(a) => quantize::run(a),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
