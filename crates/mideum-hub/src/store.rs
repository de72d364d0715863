//! The local model store, laid out exactly like huggingface_hub's cache so that models
//! downloaded by `transformers` or `huggingface-cli` are found and reused, and ours by them:
//!
//! ```text
//! $HF_HUB_CACHE/models--org--name/
//!   blobs/<etag>                      file contents (etag = LFS sha256 or git blob sha1)
//!   blobs/<etag>.incomplete           a download in progress (resumed with a Range request)
//!   refs/main                         the commit hash the branch pointed to (no newline)
//!   snapshots/<commit>/<file>         relative symlink to ../../blobs/<etag>
//! $HF_HUB_CACHE/.locks/models--org--name/<etag>.lock
//! ```

use crate::error::{HubError, Result};
use crate::reference::{is_commit_hash, RepoId};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// `HF_HOME`: `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
pub fn hf_home() -> Option<PathBuf> {
    if let Some(h) = env_path("HF_HOME") {
        return Some(h);
    }
    if let Some(x) = env_path("XDG_CACHE_HOME") {
        return Some(x.join("huggingface"));
    }
    env_path("HOME")
        .or_else(|| env_path("USERPROFILE"))
        .map(|h| h.join(".cache").join("huggingface"))
}

/// One snapshot of a model in the store.
#[derive(Clone, Debug)]
pub struct CachedModel {
    pub repo: RepoId,
    pub commit: String,
    /// Refs (branches, tags) pointing at this commit.
    pub refs: Vec<String>,
    pub snapshot: PathBuf,
    pub files: Vec<CachedFile>,
}

#[derive(Clone, Debug)]
pub struct CachedFile {
    /// Path relative to the snapshot, with '/' separators.
    pub name: String,
    pub size: u64,
    pub path: PathBuf,
}

impl CachedModel {
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HubError + '_ {
    move |e| HubError::io(path, e)
}

/// Writes `contents` to `path` through a temporary file and a rename.
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        unique_suffix()
    ));
    std::fs::write(&tmp, contents).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        HubError::io(path, e)
    })
}

pub(crate) fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

impl Store {
    /// The store huggingface_hub would use: `HF_HUB_CACHE`, else `HUGGINGFACE_HUB_CACHE`,
    /// else `HF_HOME/hub` (see [`hf_home`]).
    pub fn from_env() -> Result<Store> {
        if let Some(p) = env_path("HF_HUB_CACHE").or_else(|| env_path("HUGGINGFACE_HUB_CACHE")) {
            return Ok(Store::at(p));
        }
        hf_home()
            .map(|h| Store::at(h.join("hub")))
            .ok_or_else(|| HubError::Local {
                reference: "store".into(),
                reason:
                    "cannot find the model store: set HF_HUB_CACHE or HF_HOME (HOME is not set)"
                        .into(),
            })
    }

    pub fn at(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn repo_dir(&self, repo: &RepoId) -> PathBuf {
        self.root.join(repo.folder_name())
    }

    pub fn blob_path(&self, repo: &RepoId, etag: &str) -> PathBuf {
        self.repo_dir(repo).join("blobs").join(etag)
    }

    pub fn incomplete_path(&self, repo: &RepoId, etag: &str) -> PathBuf {
        self.repo_dir(repo)
            .join("blobs")
            .join(format!("{etag}.incomplete"))
    }

    pub fn lock_path(&self, repo: &RepoId, etag: &str) -> PathBuf {
        self.root
            .join(".locks")
            .join(repo.folder_name())
            .join(format!("{etag}.lock"))
    }

    pub fn snapshot_dir(&self, repo: &RepoId, commit: &str) -> PathBuf {
        self.repo_dir(repo).join("snapshots").join(commit)
    }

    /// The commit a ref (branch or tag, possibly `refs/pr/N`) points to.
    pub fn read_ref(&self, repo: &RepoId, rev: &str) -> Option<String> {
        let p = self.repo_dir(repo).join("refs").join(rev);
        let s = std::fs::read_to_string(p).ok()?;
        let s = s.trim();
        is_commit_hash(s).then(|| s.to_string())
    }

    pub fn write_ref(&self, repo: &RepoId, rev: &str, commit: &str) -> Result<()> {
        write_atomic(
            &self.repo_dir(repo).join("refs").join(rev),
            commit.as_bytes(),
        )
    }

    /// The local snapshot for `rev` (default `main`): a commit hash with a snapshot folder,
    /// or a ref that points at one.
    pub fn find(&self, repo: &RepoId, rev: Option<&str>) -> Option<(String, PathBuf)> {
        let rev = rev.unwrap_or("main");
        let commit = if is_commit_hash(rev) {
            rev.to_ascii_lowercase()
        } else {
            self.read_ref(repo, rev)?
        };
        let dir = self.snapshot_dir(repo, &commit);
        dir.is_dir().then_some((commit, dir))
    }

    /// Makes `snapshots/<commit>/<name>` a relative symlink to `blobs/<etag>`, atomically
    /// (a new link under a temporary name, renamed over the final one).
    pub fn link(&self, repo: &RepoId, commit: &str, name: &str, etag: &str) -> Result<PathBuf> {
        let snap = self.snapshot_dir(repo, commit);
        let dest = snap.join(name);
        let parent = dest.parent().unwrap_or(&snap).to_path_buf();
        std::fs::create_dir_all(&parent).map_err(io(&parent))?;
        let depth = name.split('/').count();
        let mut target = PathBuf::new();
        for _ in 0..depth + 1 {
            target.push("..");
        }
        target.push("blobs");
        target.push(etag);
        if std::fs::read_link(&dest).ok().as_deref() == Some(target.as_path()) {
            return Ok(dest);
        }
        let tmp = parent.join(format!(".link-{}", unique_suffix()));
        make_link(&target, &self.blob_path(repo, etag), &tmp)?;
        std::fs::rename(&tmp, &dest).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            HubError::io(&dest, e)
        })?;
        Ok(dest)
    }

    /// Every snapshot of every model in the store, sorted by name.
    pub fn list(&self) -> Result<Vec<CachedModel>> {
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(&self.root) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(HubError::io(&self.root, e)),
        };
        let mut repos: Vec<RepoId> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| RepoId::from_folder_name(e.file_name().to_str()?))
            .collect();
        repos.sort();
        for repo in repos {
            out.extend(self.snapshots(&repo)?);
        }
        Ok(out)
    }

    /// The snapshots of one model (an empty list when it is not in the store).
    pub fn snapshots(&self, repo: &RepoId) -> Result<Vec<CachedModel>> {
        let dir = self.repo_dir(repo);
        let refs = self.all_refs(repo);
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(dir.join("snapshots")) else {
            return Ok(out);
        };
        let mut commits: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|c| !c.starts_with('.'))
            .collect();
        commits.sort();
        for commit in commits {
            let snapshot = dir.join("snapshots").join(&commit);
            let mut files = Vec::new();
            collect_files(&snapshot, "", &mut files)?;
            files.sort_by(|a, b| a.name.cmp(&b.name));
            out.push(CachedModel {
                repo: repo.clone(),
                refs: refs
                    .iter()
                    .filter(|(_, c)| *c == commit)
                    .map(|(r, _)| r.clone())
                    .collect(),
                commit,
                snapshot,
                files,
            });
        }
        Ok(out)
    }

    fn all_refs(&self, repo: &RepoId) -> Vec<(String, String)> {
        let base = self.repo_dir(repo).join("refs");
        let mut out = Vec::new();
        let mut stack = vec![(base.clone(), String::new())];
        while let Some((d, prefix)) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.filter_map(|e| e.ok()) {
                let Some(n) = e.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if n.starts_with('.') {
                    continue;
                }
                let rel = if prefix.is_empty() {
                    n
                } else {
                    format!("{prefix}/{n}")
                };
                if e.path().is_dir() {
                    stack.push((e.path(), rel));
                } else if let Some(c) = self.read_ref(repo, &rel) {
                    out.push((rel, c));
                }
            }
        }
        out.sort();
        out
    }

    /// Removes a model (all its snapshots, blobs and refs), or with `rev` one snapshot and the
    /// blobs no other snapshot uses. Returns the bytes freed.
    pub fn remove(&self, repo: &RepoId, rev: Option<&str>) -> Result<u64> {
        let dir = self.repo_dir(repo);
        if !dir.exists() {
            return Err(HubError::Local {
                reference: repo.to_string(),
                reason: format!("not in the store {}", self.root.display()),
            });
        }
        let Some(rev) = rev else {
            let freed = dir_size(&dir.join("blobs"));
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
            let _ = std::fs::remove_dir_all(self.root.join(".locks").join(repo.folder_name()));
            return Ok(freed);
        };
        let (commit, snap) = self.find(repo, Some(rev)).ok_or_else(|| HubError::Local {
            reference: format!("{repo}@{rev}"),
            reason: "this revision is not in the store".into(),
        })?;
        let mut used_elsewhere = std::collections::HashSet::new();
        for m in self.snapshots(repo)? {
            if m.commit != commit {
                for f in m.files {
                    if let Ok(t) = std::fs::canonicalize(&f.path) {
                        used_elsewhere.insert(t);
                    }
                }
            }
        }
        let mut mine = Vec::new();
        collect_files(&snap, "", &mut mine)?;
        let mut freed = 0;
        for f in mine {
            if let Ok(t) = std::fs::canonicalize(&f.path) {
                if !used_elsewhere.contains(&t)
                    && t.starts_with(dir.join("blobs").canonicalize().unwrap_or_default())
                {
                    freed += f.size;
                    let _ = std::fs::remove_file(&t);
                }
            }
        }
        std::fs::remove_dir_all(&snap).map_err(io(&snap))?;
        for (r, c) in self.all_refs(repo) {
            if c == commit {
                let _ = std::fs::remove_file(dir.join("refs").join(r));
            }
        }
        Ok(freed)
    }
}

#[cfg(unix)]
fn make_link(target: &Path, _absolute: &Path, link: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, link).map_err(io(link))
}

/// Windows without symlink rights: a copy, as huggingface_hub does.
#[cfg(not(unix))]
fn make_link(target: &Path, absolute: &Path, link: &Path) -> Result<()> {
    #[cfg(windows)]
    if std::os::windows::fs::symlink_file(target, link).is_ok() {
        return Ok(());
    }
    let _ = target;
    std::fs::copy(absolute, link).map(|_| ()).map_err(io(link))
}

fn collect_files(dir: &Path, prefix: &str, out: &mut Vec<CachedFile>) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(io(dir))?;
    for e in rd.filter_map(|e| e.ok()) {
        let Some(n) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if n.starts_with('.') {
            continue;
        }
        let path = e.path();
        let name = if prefix.is_empty() {
            n
        } else {
            format!("{prefix}/{n}")
        };
        // metadata() follows the symlink into blobs/.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => collect_files(&path, &name, out)?,
            Ok(m) => out.push(CachedFile {
                name,
                size: m.len(),
                path,
            }),
            Err(_) => {} // a dangling link: a blob removed behind our back
        }
    }
    Ok(())
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}
