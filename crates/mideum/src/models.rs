//! Model management commands (`pull`, `list`, `rm`, `show`, `import`, `export`) and the one
//! place where the other commands turn a model reference into a path: a local directory or
//! `.gguf`, `org/name[@rev]` from the store (pulled on first use unless offline), or an alias.

use anyhow::{bail, Context, Result};
use clap::Args;
use mideum_hub::{ClientOptions, HubClient, ModelRef, PullOptions, ResolveOptions, Store};
use mideum_model::gguf::GgufFile;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

static OFFLINE: AtomicBool = AtomicBool::new(false);

/// `--offline` on the command line: never touch the network.
pub fn set_offline(on: bool) {
    OFFLINE.store(on, Ordering::Relaxed);
}

/// Resolves a model reference given to any command into a loadable path.
pub fn resolve(reference: &Path) -> Result<PathBuf> {
    let Some(s) = reference.to_str() else {
        return Ok(reference.to_path_buf());
    };
    mideum_hub::resolve(
        s,
        &ResolveOptions {
            offline: OFFLINE.load(Ordering::Relaxed),
            progress: true,
            ..Default::default()
        },
    )
    .map_err(anyhow::Error::from)
}

#[derive(Args)]
pub struct PullArgs {
    /// ORG/NAME[@REVISION] or an alias (midm-mini, midm-base).
    pub model: String,
    /// Only files matching this glob (repeatable); picks the .gguf of a GGUF repository.
    #[arg(long)]
    pub include: Vec<String>,
    /// Hub or mirror address (default: HF_ENDPOINT, else https://huggingface.co).
    #[arg(long)]
    pub endpoint: Option<String>,
}

#[derive(Args)]
pub struct ListArgs {
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct RmArgs {
    /// ORG/NAME (all its revisions) or ORG/NAME@REVISION, or an alias.
    pub model: String,
}

#[derive(Args)]
pub struct ShowArgs {
    /// A model reference: path, .gguf, ORG/NAME[@REVISION] or alias.
    pub model: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ImportArgs {
    /// A model directory or a .gguf file (e.g. on removable media).
    pub path: PathBuf,
    /// A manifest written by `mideum export`; every file must match it.
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Register as ORG/NAME (default: the manifest's, else local/<folder name>).
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Args)]
pub struct ExportArgs {
    /// A model reference: path, .gguf, ORG/NAME[@REVISION] or alias.
    pub model: PathBuf,
    /// Where to write the manifest (file names, sizes, SHA-256).
    #[arg(long)]
    pub manifest: PathBuf,
}

fn store() -> Result<Store> {
    Ok(Store::from_env()?)
}

pub fn run_pull(a: &PullArgs) -> Result<()> {
    let r = ModelRef::parse(&a.model)?;
    if OFFLINE.load(Ordering::Relaxed) || mideum_hub::offline_from_env() {
        bail!("cannot pull {r}: offline mode is on (--offline or HF_HUB_OFFLINE)");
    }
    let store = store()?;
    let client = HubClient::new(&ClientOptions {
        endpoint: a.endpoint.clone(),
        ..Default::default()
    })?;
    let opts = PullOptions {
        revision: r.revision.clone(),
        include: a.include.clone(),
        ..Default::default()
    };
    let bars = mideum_hub::Bars::new();
    let p = mideum_hub::pull(&store, &client, &r.repo, &opts, &bars)?;
    eprintln!(
        "pulled {} @ {} ({} files, {} downloaded)",
        p.repo,
        &p.commit[..12.min(p.commit.len())],
        p.files.len(),
        mideum_hub::human_bytes(p.downloaded)
    );
    println!("{}", p.model_path.display());
    Ok(())
}

/// What `list` and `show` say about the format and quantization of a model path.
fn format_of(path: &Path) -> (&'static str, Option<String>) {
    if path.extension().is_some_and(|e| e == "gguf") {
        let q = GgufFile::open(path)
            .ok()
            .and_then(|g| gguf_quantization(&g));
        ("gguf", q)
    } else if std::fs::read_dir(path)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        })
        .unwrap_or(false)
    {
        ("safetensors", None)
    } else {
        ("other", None)
    }
}

/// llama.cpp's `general.file_type`, else the most common type of the 2-D tensors.
fn gguf_quantization(g: &GgufFile) -> Option<String> {
    if let Some(t) = g.get("general.file_type").and_then(|v| v.as_u64()) {
        let name = match t {
            0 => "F32",
            1 => "F16",
            2 => "Q4_0",
            3 => "Q4_1",
            7 => "Q8_0",
            8 => "Q5_0",
            9 => "Q5_1",
            10 => "Q2_K",
            11 => "Q3_K_S",
            12 => "Q3_K_M",
            13 => "Q3_K_L",
            14 => "Q4_K_S",
            15 => "Q4_K_M",
            16 => "Q5_K_S",
            17 => "Q5_K_M",
            18 => "Q6_K",
            19 => "IQ2_XXS",
            20 => "IQ2_XS",
            21 => "Q2_K_S",
            22 => "IQ3_XS",
            23 => "IQ3_XXS",
            24 => "IQ1_S",
            25 => "IQ4_NL",
            26 => "IQ3_S",
            27 => "IQ3_M",
            28 => "IQ2_S",
            29 => "IQ2_M",
            30 => "IQ4_XS",
            31 => "IQ1_M",
            32 => "BF16",
            _ => return Some(format!("file_type {t}")),
        };
        return Some(name.to_string());
    }
    let mut counts = std::collections::BTreeMap::new();
    for t in g.tensor_infos.iter().filter(|t| t.dims.len() >= 2) {
        *counts.entry(t.ggml_type).or_insert(0usize) += 1;
    }
    let (t, _) = counts.into_iter().max_by_key(|(_, n)| *n)?;
    Some(
        match t {
            0 => "F32",
            1 => "F16",
            2 => "Q4_0",
            3 => "Q4_1",
            6 => "Q5_0",
            7 => "Q5_1",
            8 => "Q8_0",
            10 => "Q2_K",
            11 => "Q3_K",
            12 => "Q4_K",
            13 => "Q5_K",
            14 => "Q6_K",
            30 => "BF16",
            _ => "unknown",
        }
        .to_string(),
    )
}

pub fn run_list(a: &ListArgs) -> Result<()> {
    let store = store()?;
    let mut rows = Vec::new();
    for m in store.list()? {
        let path = mideum_hub::model_path_in(&m.snapshot).unwrap_or_else(|_| m.snapshot.clone());
        let (format, quant) = format_of(&path);
        let revision = if m.refs.is_empty() {
            m.commit[..12.min(m.commit.len())].to_string()
        } else {
            m.refs.join(",")
        };
        rows.push(json!({
            "name": m.repo.to_string(),
            "revision": revision,
            "commit": m.commit,
            "format": format,
            "size": m.size(),
            "quantization": quant,
            "path": path.display().to_string(),
        }));
    }
    if a.json {
        return crate::print_json(&Value::Array(rows));
    }
    if rows.is_empty() {
        eprintln!("no models in {}", store.root().display());
        return Ok(());
    }
    println!(
        "{:<44} {:<12} {:<12} {:>10} {:<8} PATH",
        "NAME", "REVISION", "FORMAT", "SIZE", "QUANT"
    );
    for r in rows {
        let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
        println!(
            "{:<44} {:<12} {:<12} {:>10} {:<8} {}",
            s("name"),
            s("revision"),
            s("format"),
            mideum_hub::human_bytes(r["size"].as_u64().unwrap_or(0)),
            s("quantization"),
            s("path")
        );
    }
    Ok(())
}

pub fn run_rm(a: &RmArgs) -> Result<()> {
    let r = ModelRef::parse(&a.model)?;
    let store = store()?;
    let freed = store.remove(&r.repo, r.revision.as_deref())?;
    println!("removed {r} ({} freed)", mideum_hub::human_bytes(freed));
    Ok(())
}

/// `license:` from a model card's YAML front matter.
fn card_license(readme: &Path) -> Option<String> {
    let text = std::fs::read_to_string(readme).ok()?;
    let mut lines = text.lines();
    if lines.next()?.trim() != "---" {
        return None;
    }
    for l in lines {
        let l = l.trim_end();
        if l.trim() == "---" {
            break;
        }
        if let Some(v) = l.strip_prefix("license:") {
            let v = v.trim().trim_matches(|c| c == '"' || c == '\'').to_string();
            if !v.is_empty() {
                return Some(v);
            }
        }
    }
    None
}

fn hf_chat_template(dir: &Path) -> Option<String> {
    if let Ok(t) = std::fs::read_to_string(dir.join("tokenizer_config.json")) {
        if let Ok(v) = serde_json::from_str::<Value>(&t) {
            match v.get("chat_template") {
                Some(Value::String(s)) => return Some(s.clone()),
                Some(Value::Array(a)) => {
                    if let Some(s) = a
                        .iter()
                        .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                        .and_then(|t| t.get("template"))
                        .and_then(|s| s.as_str())
                    {
                        return Some(s.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    std::fs::read_to_string(dir.join("chat_template.jinja")).ok()
}

pub fn run_show(a: &ShowArgs) -> Result<()> {
    let path = resolve(&a.model)?;
    let mut info = serde_json::Map::new();
    info.insert("path".into(), json!(path.display().to_string()));
    let (format, quant) = format_of(&path);
    info.insert("format".into(), json!(format));
    let card_dir = if format == "gguf" {
        let g = GgufFile::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let arch = g.architecture().unwrap_or("unknown").to_string();
        let params: u64 = g
            .tensor_infos
            .iter()
            .map(|t| t.dims.iter().product::<u64>())
            .sum();
        let ctx = g
            .get(&format!("{arch}.context_length"))
            .and_then(|v| v.as_u64());
        let tmpl = g
            .get("tokenizer.chat_template")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        info.insert("architecture".into(), json!(arch));
        info.insert("parameters".into(), json!(params));
        info.insert("context_length".into(), json!(ctx));
        info.insert("quantization".into(), json!(quant));
        info.insert("chat_template".into(), json!(tmpl.is_some()));
        info.insert(
            "chat_template_chars".into(),
            json!(tmpl.map(|t| t.chars().count())),
        );
        info.insert(
            "license".into(),
            json!(g.get("general.license").and_then(|v| v.as_str())),
        );
        path.parent().map(Path::to_path_buf)
    } else {
        let cfg_path = path.join("config.json");
        let text = std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("cannot read {}", cfg_path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", cfg_path.display()))?;
        let cfg = mideum_model::ModelConfig::from_json(&v)
            .with_context(|| format!("invalid {}", cfg_path.display()))?;
        let tensors = mideum_model::safetensors::load_dir(&path)
            .with_context(|| format!("cannot read the weights in {}", path.display()))?;
        let params: usize = tensors.values().map(|t| t.numel()).sum();
        let tmpl = hf_chat_template(&path);
        info.insert("architecture".into(), json!(cfg.architecture));
        info.insert("parameters".into(), json!(params));
        info.insert("context_length".into(), json!(cfg.max_position_embeddings));
        info.insert("dtype".into(), json!(cfg.dtype));
        info.insert("hidden_size".into(), json!(cfg.hidden_size));
        info.insert("layers".into(), json!(cfg.num_layers));
        info.insert("heads".into(), json!(cfg.num_heads));
        info.insert("kv_heads".into(), json!(cfg.num_kv_heads));
        info.insert("vocab_size".into(), json!(cfg.vocab_size));
        info.insert("chat_template".into(), json!(tmpl.is_some()));
        info.insert(
            "chat_template_chars".into(),
            json!(tmpl.map(|t| t.chars().count())),
        );
        info.insert("license".into(), Value::Null);
        Some(path.clone())
    };
    if let Some(l) = card_dir.and_then(|d| card_license(&d.join("README.md"))) {
        info.insert("license".into(), json!(l));
    }
    let info = Value::Object(info);
    if a.json {
        return crate::print_json(&info);
    }
    let params = info["parameters"].as_u64().unwrap_or(0);
    println!("path            {}", path.display());
    println!(
        "architecture    {}",
        info["architecture"].as_str().unwrap_or("?")
    );
    println!("parameters      {params} ({:.2}B)", params as f64 / 1e9);
    println!(
        "context length  {}",
        info["context_length"]
            .as_u64()
            .map(|c| c.to_string())
            .unwrap_or_else(|| "?".into())
    );
    println!(
        "format          {format}{}",
        info.get("quantization")
            .and_then(|q| q.as_str())
            .map(|q| format!(" ({q})"))
            .unwrap_or_default()
    );
    match info["chat_template_chars"].as_u64() {
        Some(n) => println!("chat template   yes ({n} characters)"),
        None => println!("chat template   no"),
    }
    println!(
        "license         {}",
        info["license"].as_str().unwrap_or("(not stated)")
    );
    Ok(())
}

pub fn run_import(a: &ImportArgs) -> Result<()> {
    let store = store()?;
    let imported = mideum_hub::import(
        &store,
        &a.path,
        &mideum_hub::ImportOptions {
            manifest: a.manifest.clone(),
            name: a.name.clone(),
        },
    )?;
    eprintln!(
        "imported {} files as {} @ {}{}",
        imported.files.len(),
        imported.repo,
        &imported.commit[..12],
        if a.manifest.is_some() {
            " (every file matches the manifest)"
        } else {
            " (no manifest: hashes not checked against one)"
        }
    );
    println!("{}", imported.model_path.display());
    Ok(())
}

pub fn run_export(a: &ExportArgs) -> Result<()> {
    let path = resolve(&a.model)?;
    let m = mideum_hub::build_manifest(&path)?;
    mideum_hub::write_manifest(&m, &a.manifest)?;
    eprintln!(
        "wrote {} ({} files, {})",
        a.manifest.display(),
        m.files.len(),
        mideum_hub::human_bytes(m.files.iter().map(|f| f.size).sum())
    );
    println!("{}", path.display());
    Ok(())
}
