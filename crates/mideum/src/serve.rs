//! `mideum serve`: loads one or more models, starts a continuous-batching engine for each, and
//! serves the OpenAI-compatible HTTP API.

use anyhow::{bail, Context, Result};
use clap::Args;
use mideum_engine::{Engine, EngineConfig, WarmPrefix};
use mideum_gateway::{AppState, ServedModel};
use mideum_model::LoadedModel;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args)]
pub struct ServeArgs {
    /// A model to serve, as PATH or NAME=PATH (repeatable). The name defaults to the
    /// directory or file name.
    #[arg(long = "model", short = 'm', required_unless_present = "config")]
    pub models: Vec<String>,
    /// A mideum.toml with backends, routed models and data policies (see
    /// mideum.example.toml). Combines with --model: local backends may name those models.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Another name for a served model, as ALIAS=NAME (repeatable).
    #[arg(long = "alias")]
    pub aliases: Vec<String>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Threads for each model's forward pass (default: all cores).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
    /// Context window per sequence (default: the model's).
    #[arg(long)]
    pub ctx_size: Option<usize>,
    /// KV cache budget per model in MiB (default: a quarter of physical memory).
    #[arg(long)]
    pub kv_cache_mb: Option<usize>,
    /// Element type of the KV cache: f16 (default; twice the tokens per MiB of f32), f32, or
    /// q8_0 (int8 with an f16 scale per 32 values: ~1.9x the tokens per MiB of f16).
    #[arg(long, default_value = "f16")]
    pub kv_type: String,
    /// Most sequences generated at once per model.
    #[arg(long, default_value_t = 16)]
    pub max_running: usize,
    /// Most requests waiting per model; more are answered 429.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Tokens per forward pass (decode tokens plus prefill chunks).
    #[arg(long, default_value_t = 256)]
    pub step_tokens: usize,
    /// Seconds a request may run before it is ended (0 = no limit).
    #[arg(long, default_value_t = 600)]
    pub request_timeout: u64,
    /// Compute each model's default system prompt (what its chat template puts in front of
    /// every conversation without a system message) at startup, and keep its KV cache in this
    /// directory (one file per model): a restart restores it instead of computing it again.
    #[arg(long)]
    pub prefix_cache_dir: Option<PathBuf>,
    /// Tenant store (`sqlite:PATH` or `postgres://…`): API keys, limits and the durable audit
    /// trail come from it, and `/admin/` is served (admin token in MIDEUM_ADMIN_TOKEN).
    #[arg(long)]
    pub store: Option<String>,
}

/// The tokens every chat without a system message starts with (the template's default system
/// prompt and the markup around it): the common start of two one-message chats. `None` when
/// the model has no chat template or the common start is shorter than one KV block.
fn default_prefix(m: &LoadedModel) -> Option<Vec<u32>> {
    let chat = |text: &str| {
        m.encode_chat(
            &serde_json::json!([{"role": "user", "content": text}]),
            None,
            true,
        )
        .ok()
        .map(|(_, ids)| ids)
    };
    let (a, b) = (chat("a")?, chat("b")?);
    let n = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    (n >= mideum_model::BLOCK_TOKENS).then(|| a[..n].to_vec())
}

/// What `--prefix-cache-dir` asks of the engine for model `name`: its default prefix, kept in
/// `DIR/NAME.kvcache` (the name with anything but letters, digits, `.`, `-` and `_` replaced).
fn warm_prefix(dir: Option<&std::path::Path>, name: &str, m: &LoadedModel) -> Option<WarmPrefix> {
    let dir = dir?;
    let Some(tokens) = default_prefix(m) else {
        eprintln!("{name}: no default system prompt to keep (no chat template, or too short)");
        return None;
    };
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    eprintln!(
        "{name}: default system prompt of {} tokens, kept in {}",
        tokens.len(),
        dir.join(format!("{safe}.kvcache")).display()
    );
    Some(WarmPrefix {
        tokens,
        file: Some(dir.join(format!("{safe}.kvcache"))),
    })
}

fn physical_memory_mb() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

pub fn run(a: &ServeArgs) -> Result<()> {
    if a.max_running == 0 || a.max_queue == 0 || a.step_tokens == 0 {
        bail!("--max-running, --max-queue and --step-tokens must be at least 1");
    }
    let kv_type = crate::parse_kv_type(&a.kv_type)?;
    if let Some(d) = &a.prefix_cache_dir {
        std::fs::create_dir_all(d)
            .with_context(|| format!("--prefix-cache-dir {}", d.display()))?;
    }
    let cache_dir = a.prefix_cache_dir.as_deref();
    let timeout = (a.request_timeout > 0).then(|| Duration::from_secs(a.request_timeout));
    let mut state = AppState::new(timeout);
    let kv_mb = a
        .kv_cache_mb
        .unwrap_or_else(|| (physical_memory_mb().unwrap_or(8192) / 4).max(512));
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for spec in &a.models {
        let (name, path) = match spec.split_once('=') {
            Some((n, p)) if !n.is_empty() && !n.contains('/') => (n.to_string(), PathBuf::from(p)),
            _ => {
                let p = PathBuf::from(spec);
                let n = p
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or("model")
                    .to_string();
                (n, p)
            }
        };
        let mut m = crate::load_model(&path, a.threads, a.ctx_size)?;
        m.model.set_kv_type(kv_type);
        let block_bytes = m.model.kv_block_bytes();
        let kv_blocks = (kv_mb * 1024 * 1024 / block_bytes).max(2);
        let cfg = EngineConfig {
            max_running: a.max_running,
            max_queue: a.max_queue,
            step_tokens: a.step_tokens,
            kv_blocks,
        };
        eprintln!(
            "loaded {name} from {} (context {} tokens, KV budget {} MiB = {} tokens)",
            path.display(),
            m.ctx_size,
            kv_mb,
            kv_blocks * mideum_model::BLOCK_TOKENS
        );
        let warm = warm_prefix(cache_dir, &name, &m);
        let engine = Arc::new(Engine::start_warm(Arc::new(m), &name, cfg, warm));
        let aliases: Vec<String> = a
            .aliases
            .iter()
            .filter_map(|s| s.split_once('='))
            .filter(|(_, target)| *target == name)
            .map(|(alias, _)| alias.to_string())
            .collect();
        state
            .add(
                ServedModel {
                    name,
                    engine,
                    created,
                },
                &aliases,
            )
            .map_err(anyhow::Error::msg)?;
    }
    let routes_cfg = match &a.config {
        Some(p) => Some(mideum_gateway::config::Config::load(p).map_err(anyhow::Error::msg)?),
        None => None,
    };
    if let Some(cfg) = &routes_cfg {
        for (bname, b) in &cfg.backends {
            let b = b.get_ref();
            let Some(path) = &b.path else { continue };
            let m = crate::load_model_quant(
                std::path::Path::new(path.get_ref()),
                b.threads,
                a.ctx_size,
                b.quant.as_ref().map(|q| q.get_ref().as_str()),
            )
            .with_context(|| {
                format!(
                    "backend {bname:?} in {}",
                    a.config
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                )
            })?;
            let block_bytes = m.model.kv_block_bytes();
            let kv_blocks = (kv_mb * 1024 * 1024 / block_bytes).max(2);
            let cfg = EngineConfig {
                max_running: a.max_running,
                max_queue: a.max_queue,
                step_tokens: a.step_tokens,
                kv_blocks,
            };
            eprintln!("loaded backend {bname} from {}", path.get_ref());
            let warm = warm_prefix(cache_dir, bname, &m);
            let engine = Arc::new(Engine::start_warm(Arc::new(m), bname, cfg, warm));
            state
                .add(
                    ServedModel {
                        name: bname.clone(),
                        engine,
                        created,
                    },
                    &[],
                )
                .map_err(anyhow::Error::msg)?;
        }
        if let Some(var) = &cfg.server.api_keys_env {
            let list = std::env::var(var.get_ref()).with_context(|| {
                format!(
                    "the environment variable {} (named by server.api_keys_env) is not set",
                    var.get_ref()
                )
            })?;
            let keys = mideum_gateway::auth::StaticKeys::from_list(&list);
            if keys.is_open() {
                bail!("{} holds no API key", var.get_ref());
            }
            state.set_authenticator(Arc::new(keys));
        }
        let routes = mideum_gateway::route::Routes::build(cfg, &|n| state.has_local(n))
            .map_err(anyhow::Error::msg)?;
        state.set_routes(Arc::new(routes));
    }
    for s in &a.aliases {
        let Some((alias, target)) = s.split_once('=') else {
            bail!("--alias must look like ALIAS=NAME, got {s:?}")
        };
        if alias.is_empty()
            || !a.models.iter().any(|m| {
                m.starts_with(&format!("{target}="))
                    || PathBuf::from(m).file_stem().and_then(|x| x.to_str()) == Some(target)
            })
        {
            bail!("--alias {s:?}: no served model is named {target:?}");
        }
    }
    let tenants = match &a.store {
        Some(url) => {
            let redacted = crate::tenancy::redact(url);
            let open = || {
                mideum_store::open(url).with_context(|| format!("cannot open the store {redacted}"))
            };
            let lookups: Arc<dyn mideum_store::Store> = Arc::from(open()?);
            let sa = Arc::new(
                mideum_gateway::tenants::StoreAuth::new(lookups.clone(), open()?)
                    .context("cannot start the audit writer")?,
            );
            state.set_authenticator(sa.clone());
            state.set_audit_sink(sa.clone());
            let token = std::env::var("MIDEUM_ADMIN_TOKEN").ok();
            if token.as_deref().is_none_or(str::is_empty) {
                eprintln!("MIDEUM_ADMIN_TOKEN is not set: /admin/ answers only tenants' own read requests");
            }
            let key = mideum_store::crypto::audit_key_from_env()?;
            state.admin = Some(Arc::new(mideum_gateway::admin::Admin::new(
                lookups, token, key,
            )));
            eprintln!("tenants, keys and audit from {redacted}");
            Some(sa)
        }
        None => None,
    };
    let state = Arc::new(state);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let addr = format!("{}:{}", a.host, a.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        eprintln!(
            "mideum serving on http://{}",
            listener.local_addr().map(|x| x.to_string()).unwrap_or(addr)
        );
        mideum_gateway::serve(listener, state)
            .await
            .context("server error")
    })?;
    if let Some(t) = tenants {
        t.shutdown();
    }
    Ok(())
}
