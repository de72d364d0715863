//! Air-gapped transfer: `export` writes a manifest (file names, sizes, SHA-256) of a model;
//! `import` copies a directory or `.gguf` brought in on removable media into the store,
//! hashing every byte as it copies and refusing anything the manifest does not vouch for.

use crate::download::git_blob_sha1;
use crate::error::{HubError, Result};
use crate::reference::{is_commit_hash, RepoId};
use crate::store::Store;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub const MANIFEST_FORMAT: &str = "mideum-manifest/1";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format: String,
    /// `org/name` when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// The commit of the snapshot when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    pub files: Vec<ManifestFile>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestFile {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// The files of a model path: every file under a directory (following the store's symlinks,
/// skipping hidden ones), or the file itself.
pub fn model_files(path: &Path) -> Result<Vec<(String, PathBuf)>> {
    let meta = std::fs::metadata(path).map_err(|e| HubError::io(path, e))?;
    if !meta.is_dir() {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| HubError::Local {
                reference: path.display().to_string(),
                reason: "the file name is not valid UTF-8".into(),
            })?;
        return Ok(vec![(name.to_string(), path.to_path_buf())]);
    }
    let mut out = Vec::new();
    walk(path, "", &mut out)?;
    out.sort();
    Ok(out)
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| HubError::io(dir, e))?;
    for e in rd {
        let e = e.map_err(|e| HubError::io(dir, e))?;
        let Some(n) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if n.starts_with('.') {
            continue;
        }
        let p = e.path();
        let name = if prefix.is_empty() {
            n
        } else {
            format!("{prefix}/{n}")
        };
        let m = std::fs::metadata(&p).map_err(|e| HubError::io(&p, e))?;
        if m.is_dir() {
            walk(&p, &name, out)?;
        } else {
            out.push((name, p));
        }
    }
    Ok(())
}

/// If `path` lies in a store snapshot (`.../models--org--name/snapshots/<commit>/...`), the
/// repo and commit.
pub fn store_identity(path: &Path) -> Option<(RepoId, String)> {
    let comps: Vec<String> = path
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let i = comps.iter().rposition(|c| c == "snapshots")?;
    let repo = RepoId::from_folder_name(comps.get(i.checked_sub(1)?)?)?;
    let commit = comps.get(i + 1)?;
    is_commit_hash(commit).then(|| (repo, commit.clone()))
}

/// Hashes every file of `path` into a manifest.
pub fn build_manifest(path: &Path) -> Result<Manifest> {
    let identity = store_identity(path);
    let mut files = Vec::new();
    for (name, p) in model_files(path)? {
        let size = std::fs::metadata(&p)
            .map_err(|e| HubError::io(&p, e))?
            .len();
        files.push(ManifestFile {
            name,
            size,
            sha256: crate::download::sha256_file(&p)?,
        });
    }
    Ok(Manifest {
        format: MANIFEST_FORMAT.into(),
        repo: identity.as_ref().map(|(r, _)| r.to_string()),
        revision: identity.map(|(_, c)| c),
        files,
    })
}

pub fn write_manifest(m: &Manifest, out: &Path) -> Result<()> {
    let mut s = serde_json::to_string_pretty(m).map_err(|e| HubError::Manifest {
        path: out.to_path_buf(),
        reason: e.to_string(),
    })?;
    s.push('\n');
    crate::store::write_atomic(out, s.as_bytes())
}

pub fn read_manifest(path: &Path) -> Result<Manifest> {
    let s = std::fs::read_to_string(path).map_err(|e| HubError::io(path, e))?;
    let m: Manifest = serde_json::from_str(&s).map_err(|e| HubError::Manifest {
        path: path.to_path_buf(),
        reason: format!("not a Mideum manifest ({e})"),
    })?;
    if m.format != MANIFEST_FORMAT {
        return Err(HubError::Manifest {
            path: path.to_path_buf(),
            reason: format!("unknown format {:?} (expected {MANIFEST_FORMAT})", m.format),
        });
    }
    for f in &m.files {
        crate::select::check_file_name("manifest", &f.name).map_err(|_| HubError::Manifest {
            path: path.to_path_buf(),
            reason: format!("unsafe file name {:?}", f.name),
        })?;
        if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(HubError::Manifest {
                path: path.to_path_buf(),
                reason: format!("{}: sha256 must be 64 hex digits", f.name),
            });
        }
    }
    Ok(m)
}

#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    pub manifest: Option<PathBuf>,
    /// `org/name` to register under (default: the manifest's, else `local/<folder name>`).
    pub name: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Imported {
    pub repo: RepoId,
    pub commit: String,
    pub snapshot: PathBuf,
    pub model_path: PathBuf,
    pub files: Vec<ManifestFile>,
}

fn sanitize_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    while out.contains("--") {
        out = out.replace("--", "-");
    }
    while out.contains("..") {
        out = out.replace("..", ".");
    }
    let t = out.trim_matches(|c| c == '-' || c == '.').to_string();
    if t.is_empty() {
        "model".into()
    } else {
        t
    }
}

/// Copies `path` into the store, verified against the manifest when one is given.
pub fn import(store: &Store, path: &Path, opts: &ImportOptions) -> Result<Imported> {
    let manifest = opts.manifest.as_deref().map(read_manifest).transpose()?;
    let files = model_files(path)?;
    if files.is_empty() {
        return Err(HubError::Local {
            reference: path.display().to_string(),
            reason: "no files to import".into(),
        });
    }
    let stem = path
        .file_stem()
        .and_then(|n| n.to_str())
        .map(sanitize_name)
        .unwrap_or_else(|| "model".into());
    let repo_s = opts
        .name
        .clone()
        .or_else(|| manifest.as_ref().and_then(|m| m.repo.clone()))
        .unwrap_or_else(|| format!("local/{stem}"));
    let repo = RepoId::parse(&repo_s)?;

    if let Some(m) = &manifest {
        let mpath = opts.manifest.clone().unwrap_or_default();
        for (name, _) in &files {
            if !m.files.iter().any(|f| f.name == *name) {
                return Err(HubError::ManifestMismatch {
                    file: name.clone(),
                    reason: format!("not listed in {}", mpath.display()),
                });
            }
        }
        for f in &m.files {
            if !files.iter().any(|(n, _)| *n == f.name) {
                return Err(HubError::ManifestMismatch {
                    file: f.name.clone(),
                    reason: format!(
                        "listed in {} but missing from {}",
                        mpath.display(),
                        path.display()
                    ),
                });
            }
        }
    }

    let blobs = store.repo_dir(&repo).join("blobs");
    std::fs::create_dir_all(&blobs).map_err(|e| HubError::io(&blobs, e))?;
    // Copy and hash in one pass into temporary names; only when every file matches do they
    // get their final names, so a failed import leaves nothing behind.
    let mut copied: Vec<(ManifestFile, PathBuf)> = Vec::new();
    let cleanup = |copied: &[(ManifestFile, PathBuf)]| {
        for (_, t) in copied {
            let _ = std::fs::remove_file(t);
        }
    };
    for (name, src) in &files {
        let tmp = blobs.join(format!(
            "import-{}.incomplete",
            crate::store::unique_suffix()
        ));
        let (size, sha256) = match copy_hashing(src, &tmp) {
            Ok(x) => x,
            Err(e) => {
                cleanup(&copied);
                return Err(e);
            }
        };
        copied.push((
            ManifestFile {
                name: name.clone(),
                size,
                sha256,
            },
            tmp,
        ));
        let (got, _) = &copied[copied.len() - 1];
        if let Some(w) = manifest
            .as_ref()
            .and_then(|m| m.files.iter().find(|f| f.name == *name))
        {
            let reason = if w.size != got.size {
                Some(format!(
                    "size {} bytes, the manifest says {}",
                    got.size, w.size
                ))
            } else if !w.sha256.eq_ignore_ascii_case(&got.sha256) {
                Some(format!(
                    "SHA-256 {}, the manifest says {}",
                    got.sha256, w.sha256
                ))
            } else {
                None
            };
            if let Some(reason) = reason {
                cleanup(&copied);
                return Err(HubError::ManifestMismatch {
                    file: name.clone(),
                    reason,
                });
            }
        }
    }
    let mut done: Vec<(ManifestFile, String)> = Vec::new();
    for (f, tmp) in copied {
        // Blob names as a hub pull would give them: LFS-sized files by SHA-256, small ones
        // by their git blob id.
        let etag = if f.size >= 10 * 1024 * 1024 {
            f.sha256.clone()
        } else {
            git_blob_sha1(&tmp)?
        };
        let blob = blobs.join(&etag);
        std::fs::rename(&tmp, &blob).map_err(|e| HubError::io(&blob, e))?;
        done.push((f, etag));
    }
    let commit = match manifest.as_ref().and_then(|m| m.revision.clone()) {
        Some(c) if is_commit_hash(&c) => c.to_ascii_lowercase(),
        _ => {
            // A stable made-up commit: the hash of the file list.
            let mut h = sha1::Sha1::new();
            for (f, _) in &done {
                h.update(format!("{} {} {}\n", f.name, f.size, f.sha256).as_bytes());
            }
            h.finalize().iter().map(|b| format!("{b:02x}")).collect()
        }
    };
    for (f, etag) in &done {
        store.link(&repo, &commit, &f.name, etag)?;
    }
    store.write_ref(&repo, "main", &commit)?;
    let snapshot = store.snapshot_dir(&repo, &commit);
    let is_gguf_file = std::fs::metadata(path)
        .map(|m| !m.is_dir())
        .unwrap_or(false);
    let model_path = match (&done[..], is_gguf_file) {
        ([(f, _)], true) => snapshot.join(&f.name),
        _ => snapshot.clone(),
    };
    Ok(Imported {
        repo,
        commit,
        snapshot,
        model_path,
        files: done.into_iter().map(|(f, _)| f).collect(),
    })
}

fn copy_hashing(src: &Path, dst: &Path) -> Result<(u64, String)> {
    let mut r = std::fs::File::open(src).map_err(|e| HubError::io(src, e))?;
    let mut w = std::fs::File::create(dst).map_err(|e| HubError::io(dst, e))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n_total = 0u64;
    let res = (|| -> Result<()> {
        loop {
            let n = r.read(&mut buf).map_err(|e| HubError::io(src, e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            w.write_all(&buf[..n]).map_err(|e| HubError::io(dst, e))?;
            n_total += n as u64;
        }
        w.sync_all().map_err(|e| HubError::io(dst, e))
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(dst);
        return Err(e);
    }
    Ok((
        n_total,
        h.finalize().iter().map(|b| format!("{b:02x}")).collect(),
    ))
}
