//! Getting models in: a local store laid out like Hugging Face's cache, a downloader with
//! resume, verification, locking and progress, model references (paths, `org/name[@rev]`,
//! aliases) resolved in one place, and manifests for air-gapped import and export.

pub mod client;
pub mod download;
pub mod error;
pub mod manifest;
pub mod progress;
pub mod reference;
pub mod select;
pub mod store;

pub use client::{ClientOptions, HubClient, ModelInfo, Sibling};
pub use download::{pull, PullOptions, Pulled};
pub use error::{HubError, Result};
pub use manifest::{
    build_manifest, import, read_manifest, write_manifest, ImportOptions, Imported, Manifest,
};
pub use progress::{Bars, NoProgress, Progress};
pub use reference::{alias, ModelRef, RepoId, ALIASES};
pub use store::{CachedModel, Store};

use std::path::{Path, PathBuf};

/// Bytes as a short human string (binary units).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// True when `HF_HUB_OFFLINE` is set to 1/true/yes/on.
pub fn offline_from_env() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

#[derive(Clone, Debug, Default)]
pub struct ResolveOptions {
    /// Never touch the network (also `HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Hub or mirror for a first-use pull (default `HF_ENDPOINT`).
    pub endpoint: Option<String>,
    /// The store (default: [`Store::from_env`]).
    pub store: Option<PathBuf>,
    /// Show progress bars on stderr during a first-use pull.
    pub progress: bool,
}

/// What a model reference names, before anything is downloaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    Path(PathBuf),
    Hub(ModelRef),
}

/// Classifies a reference: an existing path is a path; `org/name[@rev]` or an alias is a hub
/// model; anything path-like that does not exist is an error saying so.
pub fn parse_reference(reference: &str) -> Result<Reference> {
    let p = Path::new(reference);
    if p.exists() {
        return Ok(Reference::Path(p.to_path_buf()));
    }
    let base = reference.split('@').next().unwrap_or(reference);
    if alias(base).is_some() {
        return ModelRef::parse(reference).map(Reference::Hub);
    }
    let path_like = reference.starts_with('/')
        || reference.starts_with('.')
        || reference.starts_with('~')
        || reference.ends_with(".gguf")
        || reference.contains('\\')
        || base.matches('/').count() != 1;
    if path_like {
        return Err(HubError::NoSuchPath {
            path: p.to_path_buf(),
        });
    }
    ModelRef::parse(reference).map(Reference::Hub)
}

/// The loadable path of a snapshot: the folder, or its `.gguf` when it holds one and no
/// `config.json`.
pub fn model_path_in(snapshot: &Path) -> Result<PathBuf> {
    if snapshot.join("config.json").exists() {
        return Ok(snapshot.to_path_buf());
    }
    let mut ggufs: Vec<PathBuf> = manifest::model_files(snapshot)?
        .into_iter()
        .filter(|(n, _)| n.ends_with(".gguf"))
        .map(|(_, p)| p)
        .collect();
    ggufs.sort();
    match ggufs.len() {
        0 => Ok(snapshot.to_path_buf()),
        1 => Ok(ggufs.remove(0)),
        _ => Err(HubError::Local {
            reference: snapshot.display().to_string(),
            reason: format!(
                "several .gguf files; give the path of one: {}",
                ggufs
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// Turns a model reference into a path `mideum_model` can load: a local directory or `.gguf`
/// as is; `org/name[@rev]` or an alias (see [`ALIASES`]) from the store, pulled on first use
/// unless offline.
pub fn resolve(reference: &str, opts: &ResolveOptions) -> Result<PathBuf> {
    let r = match parse_reference(reference)? {
        Reference::Path(p) => return Ok(p),
        Reference::Hub(r) => r,
    };
    let store = match &opts.store {
        Some(s) => Store::at(s),
        None => Store::from_env()?,
    };
    if let Some((_, snap)) = store.find(&r.repo, r.revision.as_deref()) {
        tracing::info!(model = %r, path = %snap.display(), "found in the store");
        return model_path_in(&snap);
    }
    if opts.offline || offline_from_env() {
        return Err(HubError::OfflineNotInStore {
            repo: r.repo.to_string(),
            revision: r.revision.clone(),
            store: store.root().to_path_buf(),
        });
    }
    let client = HubClient::new(&ClientOptions {
        endpoint: opts.endpoint.clone(),
        ..Default::default()
    })?;
    let pull_opts = PullOptions {
        revision: r.revision.clone(),
        ..Default::default()
    };
    let pulled = if opts.progress {
        pull(&store, &client, &r.repo, &pull_opts, &Bars::new())?
    } else {
        pull(&store, &client, &r.repo, &pull_opts, &NoProgress)?
    };
    Ok(pulled.model_path)
}
