//! `pull`: model info, file selection, then a few worker threads that each download a file
//! into `blobs/<etag>.incomplete` (resuming with `Range` what an earlier try left), check its
//! size and hash (LFS SHA-256, or the git blob id of small files), rename it to `blobs/<etag>`
//! and link it into the snapshot. Each blob is downloaded under a file lock shared with
//! huggingface_hub (`.locks/models--org--name/<etag>.lock`), so concurrent pulls wait for each
//! other instead of writing the same file.

use crate::client::{HubClient, Sibling};
use crate::error::{HubError, Result};
use crate::progress::Progress;
use crate::reference::RepoId;
use crate::store::Store;
use sha1::Digest as _;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct PullOptions {
    /// Branch, tag or commit (default `main`).
    pub revision: Option<String>,
    /// Globs choosing the files (see [`crate::select::select`]).
    pub include: Vec<String>,
    /// Files downloaded at once.
    pub workers: usize,
    /// Tries per file (a dropped connection, a 5xx or a hash mismatch costs one).
    pub attempts: u32,
    /// Pause before a retry.
    pub retry_delay: Duration,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            revision: None,
            include: vec![],
            workers: 4,
            attempts: 5,
            retry_delay: Duration::from_millis(500),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Pulled {
    pub repo: RepoId,
    pub commit: String,
    /// The snapshot folder.
    pub snapshot: PathBuf,
    /// What to load: the snapshot, or the `.gguf` file when the pull fetched exactly one.
    pub model_path: PathBuf,
    pub files: Vec<String>,
    /// Bytes that came over the network in this pull.
    pub downloaded: u64,
}

/// What a file must be once downloaded.
struct Expect {
    size: Option<u64>,
    sha256: Option<String>,
    git_sha1: Option<String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of bytes, hex.
pub fn sha256_bytes(b: &[u8]) -> String {
    hex(&sha2::Sha256::digest(b))
}

/// The git blob id of bytes: sha1("blob <len>\0" + bytes).
pub fn git_blob_sha1_bytes(b: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", b.len()).as_bytes());
    h.update(b);
    hex(&h.finalize())
}

/// The git blob id of a file: sha1("blob <len>\0" + contents).
pub fn git_blob_sha1(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| HubError::io(path, e))?;
    let len = f.metadata().map_err(|e| HubError::io(path, e))?.len();
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {len}\0").as_bytes());
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| HubError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| HubError::io(path, e))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| HubError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// Pulls `repo` into `store`.
pub fn pull(
    store: &Store,
    client: &HubClient,
    repo: &RepoId,
    opts: &PullOptions,
    progress: &dyn Progress,
) -> Result<Pulled> {
    let rev = opts.revision.as_deref().unwrap_or("main");
    let info = client.model_info(repo, rev)?;
    let commit = info.sha.clone().unwrap_or_default().to_ascii_lowercase();
    let repo_s = repo.to_string();
    for s in &info.siblings {
        crate::select::check_file_name(&repo_s, &s.rfilename)?;
    }
    let chosen = crate::select::select(&repo_s, &info.siblings, &opts.include)?;
    tracing::info!(repo = %repo, %commit, files = chosen.len(), endpoint = client.endpoint(), "pulling");

    let repo_dir = store.repo_dir(repo);
    for d in [
        repo_dir.join("blobs"),
        repo_dir.join("refs"),
        store.snapshot_dir(repo, &commit),
    ] {
        std::fs::create_dir_all(&d).map_err(|e| HubError::io(&d, e))?;
    }

    // Fail before downloading anything when the disk cannot hold what is left.
    let mut needed = 0u64;
    let mut total = 0u64;
    for s in &chosen {
        let size = s.size().unwrap_or(0);
        total += size;
        if let Some(etag) = known_etag(s) {
            if store.blob_path(repo, &etag).exists() {
                continue;
            }
            let have = std::fs::metadata(store.incomplete_path(repo, &etag))
                .map(|m| m.len())
                .unwrap_or(0);
            needed += size.saturating_sub(have);
        } else {
            needed += size;
        }
    }
    if let Ok(free) = fs4::available_space(&repo_dir) {
        if free < needed {
            return Err(HubError::DiskFull {
                path: repo_dir,
                needed: Some(needed),
            });
        }
    }
    progress.begin(&repo_s, total, chosen.len());

    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let errors: Mutex<Vec<HubError>> = Mutex::new(Vec::new());
    let downloaded = std::sync::atomic::AtomicU64::new(0);
    let workers = opts.workers.clamp(1, 16).min(chosen.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(s) = chosen.get(i) else { break };
                let job = FileJob {
                    store,
                    client,
                    repo,
                    rev: &commit,
                    sibling: s,
                    opts,
                    progress,
                };
                match job.run() {
                    Ok(n) => {
                        downloaded.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        if let Ok(mut v) = errors.lock() {
                            v.push(e);
                        }
                    }
                }
            });
        }
    });
    progress.finish();
    if let Some(e) = errors
        .into_inner()
        .ok()
        .and_then(|mut v| (!v.is_empty()).then(|| v.remove(0)))
    {
        return Err(e);
    }
    if rev != commit {
        store.write_ref(repo, rev, &commit)?;
    }
    let snapshot = store.snapshot_dir(repo, &commit);
    let files: Vec<String> = chosen.iter().map(|s| s.rfilename.clone()).collect();
    let ggufs: Vec<&String> = files.iter().filter(|f| f.ends_with(".gguf")).collect();
    let model_path = if ggufs.len() == 1 && !files.iter().any(|f| f == "config.json") {
        snapshot.join(ggufs[0])
    } else {
        snapshot.clone()
    };
    Ok(Pulled {
        repo: repo.clone(),
        commit,
        snapshot,
        model_path,
        files,
        downloaded: downloaded.into_inner(),
    })
}

/// The blob name huggingface_hub would use, when the model info tells it.
fn known_etag(s: &Sibling) -> Option<String> {
    s.lfs
        .as_ref()
        .map(|l| l.sha256.to_ascii_lowercase())
        .or_else(|| s.blob_id.as_ref().map(|b| b.to_ascii_lowercase()))
        .filter(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_hexdigit()))
}

struct FileJob<'a> {
    store: &'a Store,
    client: &'a HubClient,
    repo: &'a RepoId,
    rev: &'a str,
    sibling: &'a Sibling,
    opts: &'a PullOptions,
    progress: &'a dyn Progress,
}

/// Holds an exclusive lock file until dropped.
struct LockGuard {
    _file: std::fs::File,
}

fn lock(path: &Path) -> Result<LockGuard> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| HubError::io(d, e))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| HubError::io(path, e))?;
    fs4::FileExt::lock(&file).map_err(|e| HubError::io(path, e))?;
    Ok(LockGuard { _file: file })
}

impl FileJob<'_> {
    fn name(&self) -> &str {
        &self.sibling.rfilename
    }

    /// Downloads (if needed) and links one file; returns the bytes fetched.
    fn run(&self) -> Result<u64> {
        let name = self.name();
        let expect = Expect {
            size: self.sibling.size(),
            sha256: self
                .sibling
                .lfs
                .as_ref()
                .map(|l| l.sha256.to_ascii_lowercase()),
            git_sha1: self
                .sibling
                .blob_id
                .as_ref()
                .map(|b| b.to_ascii_lowercase()),
        };
        // Without a known blob name (a sparse mirror), download under a name derived from the
        // file and name the blob by its SHA-256 afterwards.
        let etag = known_etag(self.sibling);
        let work_name = etag.clone().unwrap_or_else(|| {
            let mut h = sha2::Sha256::new();
            h.update(format!("{}@{}", name, self.rev).as_bytes());
            format!("pending-{}", &hex(&h.finalize())[..32])
        });
        if let Some(e) = &etag {
            let blob = self.store.blob_path(self.repo, e);
            if blob_ok(&blob, expect.size) {
                self.store.link(self.repo, self.rev, name, e)?;
                self.progress
                    .file_begin(name, expect.size, expect.size.unwrap_or(0));
                self.progress.file_end(name);
                return Ok(0);
            }
        }
        let _guard = lock(&self.store.lock_path(self.repo, &work_name))?;
        if let Some(e) = &etag {
            // Another pull may have finished it while we waited for the lock.
            if blob_ok(&self.store.blob_path(self.repo, e), expect.size) {
                self.store.link(self.repo, self.rev, name, e)?;
                self.progress
                    .file_begin(name, expect.size, expect.size.unwrap_or(0));
                self.progress.file_end(name);
                return Ok(0);
            }
        }
        let incomplete = self.store.incomplete_path(self.repo, &work_name);
        let mut fetched = 0u64;
        let mut attempt = 0u32;
        let mut mismatches = 0u32;
        loop {
            attempt += 1;
            let r = self.fetch_into(&incomplete, &expect, &mut fetched);
            let err = match r {
                Ok(header_etag) => match self.verify(&incomplete, &expect) {
                    Ok(sha256) => {
                        let blob_name = etag
                            .clone()
                            .or(header_etag.filter(|e| {
                                !e.is_empty() && e.bytes().all(|b| b.is_ascii_hexdigit())
                            }))
                            .unwrap_or(sha256);
                        let blob = self.store.blob_path(self.repo, &blob_name);
                        std::fs::rename(&incomplete, &blob).map_err(|e| HubError::io(&blob, e))?;
                        self.store.link(self.repo, self.rev, name, &blob_name)?;
                        self.progress.file_end(name);
                        return Ok(fetched);
                    }
                    Err(e) => {
                        // The bytes on disk are wrong: start this file over.
                        let _ = std::fs::remove_file(&incomplete);
                        mismatches += 1;
                        e
                    }
                },
                Err(e) if e.is_transient() => e,
                Err(e) => return Err(e),
            };
            if attempt >= self.opts.attempts.max(1) {
                return Err(match err {
                    HubError::HashMismatch {
                        file,
                        expected,
                        actual,
                        ..
                    } => HubError::HashMismatch {
                        file,
                        expected,
                        actual,
                        attempts: mismatches,
                    },
                    e => e,
                });
            }
            tracing::warn!(file = name, attempt, error = %err, "retrying");
            self.progress.note(&format!(
                "{name}: {err}; retrying ({attempt}/{})",
                self.opts.attempts
            ));
            std::thread::sleep(self.opts.retry_delay);
        }
    }

    /// Appends the rest of the file to `incomplete` (from its current length).
    /// Returns the ETag the server sent.
    fn fetch_into(
        &self,
        incomplete: &Path,
        expect: &Expect,
        fetched: &mut u64,
    ) -> Result<Option<String>> {
        let name = self.name();
        let mut have = std::fs::metadata(incomplete).map(|m| m.len()).unwrap_or(0);
        if let Some(size) = expect.size {
            if have > size {
                have = 0;
            }
            if have == size && size > 0 {
                self.progress.file_begin(name, expect.size, have);
                return Ok(None);
            }
        }
        let mut resp = self.client.open_file(self.repo, self.rev, name, have)?;
        if resp.status == 416 {
            // Our partial file does not fit the server's: start over.
            have = 0;
            resp = self.client.open_file(self.repo, self.rev, name, 0)?;
        }
        let from = if have > 0 && resp.status == 206 && resp.range_start == Some(have) {
            have
        } else {
            0
        };
        if have > 0 && from == 0 {
            tracing::info!(
                file = name,
                "server ignored the range request; downloading from the start"
            );
        } else if from > 0 {
            tracing::info!(file = name, from, "resuming");
            self.progress
                .note(&format!("{name}: resuming at {}", crate::human_bytes(from)));
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(incomplete)
            .map_err(|e| HubError::io(incomplete, e))?;
        f.set_len(from).map_err(|e| HubError::io(incomplete, e))?;
        f.seek(std::io::SeekFrom::Start(from))
            .map_err(|e| HubError::io(incomplete, e))?;
        let size = expect.size.or(resp.content_length.map(|l| l + from));
        self.progress.file_begin(name, size, from);
        let mut done = from;
        let mut buf = vec![0u8; 1 << 16];
        let url = format!(
            "{}/{}/resolve/{}/{}",
            self.client.endpoint(),
            self.repo,
            self.rev,
            name
        );
        loop {
            let n = match resp.reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = f.flush();
                    return Err(HubError::Network {
                        url,
                        reason: format!("connection lost after {done} bytes: {e}"),
                    });
                }
            };
            f.write_all(&buf[..n])
                .map_err(|e| match HubError::io(incomplete, e) {
                    HubError::DiskFull { path, .. } => HubError::DiskFull {
                        path,
                        needed: size.map(|s| s.saturating_sub(done)),
                    },
                    e => e,
                })?;
            done += n as u64;
            *fetched += n as u64;
            self.progress.file_progress(name, done);
        }
        f.sync_all().map_err(|e| HubError::io(incomplete, e))?;
        if let Some(s) = expect.size {
            if done < s {
                return Err(HubError::Network {
                    url,
                    reason: format!("the connection closed after {done} of {s} bytes"),
                });
            }
        }
        Ok(resp.etag)
    }

    /// Checks size and hash; returns the SHA-256.
    fn verify(&self, path: &Path, expect: &Expect) -> Result<String> {
        let len = std::fs::metadata(path)
            .map_err(|e| HubError::io(path, e))?
            .len();
        if let Some(s) = expect.size {
            if len != s {
                return Err(HubError::SizeMismatch {
                    file: self.name().to_string(),
                    expected: s,
                    actual: len,
                });
            }
        }
        let sha256 = sha256_file(path)?;
        if let Some(want) = &expect.sha256 {
            if *want != sha256 {
                return Err(HubError::HashMismatch {
                    file: self.name().to_string(),
                    expected: want.clone(),
                    actual: sha256,
                    attempts: 1,
                });
            }
        } else if let Some(want) = &expect.git_sha1 {
            let got = git_blob_sha1(path)?;
            if *want != got {
                return Err(HubError::HashMismatch {
                    file: self.name().to_string(),
                    expected: format!("git blob {want}"),
                    actual: format!("git blob {got}"),
                    attempts: 1,
                });
            }
        }
        Ok(sha256)
    }
}

fn blob_ok(blob: &Path, size: Option<u64>) -> bool {
    match std::fs::metadata(blob) {
        Ok(m) => m.is_file() && size.is_none_or(|s| m.len() == s),
        Err(_) => false,
    }
}
