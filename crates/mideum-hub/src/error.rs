//! Every way getting a model can fail, each with a message that says what to do next.

use std::path::{Path, PathBuf};

pub type Result<T> = std::result::Result<T, HubError>;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("invalid model reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    #[error("{path}: No such file or directory (and not a model reference ORG/NAME[@REVISION] or an alias such as midm-mini)")]
    NoSuchPath { path: PathBuf },

    #[error("{repo}{} is not in the local store {store} and offline mode is on (--offline or HF_HUB_OFFLINE); pull it where the hub or a mirror is reachable with `mideum pull {repo}{}` (HF_ENDPOINT selects a mirror), or bring it in with `mideum import`", rev_suffix(.revision), rev_suffix(.revision))]
    OfflineNotInStore {
        repo: String,
        revision: Option<String>,
        store: PathBuf,
    },

    #[error("{url}: 401 Unauthorized: {}", if *.token_sent { "the token in HF_TOKEN (or the saved token) was rejected; check that it is valid and has read access" } else { "the repository is private or gated and needs a token: set HF_TOKEN to an access token with read permission" })]
    Unauthorized { url: String, token_sent: bool },

    #[error("{url}: 403 Forbidden: {}{}", if *.token_sent { "your token has no access to this repository; for a gated model, accept its conditions on the model's page with this account and use a token with read permission" } else { "access denied; for a gated model accept its conditions on the model's page and set HF_TOKEN" }, server_says(.message))]
    Forbidden {
        url: String,
        token_sent: bool,
        message: Option<String>,
    },

    #[error("repository {repo} not found at {endpoint} (check the name; a private repository also answers 404 without a token: set HF_TOKEN)")]
    RepoNotFound { repo: String, endpoint: String },

    #[error("revision {revision:?} of {repo} not found (check the branch, tag or commit)")]
    RevisionNotFound { repo: String, revision: String },

    #[error("file {file} not found in {repo} at revision {revision}")]
    EntryNotFound {
        repo: String,
        revision: String,
        file: String,
    },

    #[error("{url}: HTTP {status}{}", server_says(.message))]
    Http {
        url: String,
        status: u16,
        message: Option<String>,
    },

    #[error("cannot reach {url}: {reason} (check the network, HF_ENDPOINT, and HTTPS_PROXY/HTTP_PROXY/NO_PROXY)")]
    Network { url: String, reason: String },

    #[error("{url} did not answer like a Hugging Face hub: {reason} (is HF_ENDPOINT/--endpoint the address of a hub or mirror?)")]
    BadResponse { url: String, reason: String },

    #[error("{file}: SHA-256 mismatch after {attempts} download attempt(s): expected {expected}, got {actual}")]
    HashMismatch {
        file: String,
        expected: String,
        actual: String,
        attempts: u32,
    },

    #[error("{file}: expected {expected} bytes, the server sent {actual}")]
    SizeMismatch {
        file: String,
        expected: u64,
        actual: u64,
    },

    #[error("disk full while writing {path}{}; free some space (or point HF_HUB_CACHE at a larger disk) and run the command again: finished files are kept and partial ones resume", needed_text(*.needed))]
    DiskFull { path: PathBuf, needed: Option<u64> },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{repo} has several .gguf files; choose one with --include GLOB, e.g. --include '{}'. Candidates: {}", .candidates.first().map(String::as_str).unwrap_or("*.gguf"), .candidates.join(", "))]
    AmbiguousGguf {
        repo: String,
        candidates: Vec<String>,
    },

    #[error("no file of {repo} matches {patterns:?}; it has: {}", .available.join(", "))]
    NothingMatched {
        repo: String,
        patterns: Vec<String>,
        available: Vec<String>,
    },

    #[error("{repo} has no .safetensors or .gguf weights (Mideum loads those); it has: {}", .available.join(", "))]
    NoWeights {
        repo: String,
        available: Vec<String>,
    },

    #[error("{repo}: the hub listed an unsafe file name {name:?}")]
    UnsafeFileName { repo: String, name: String },

    #[error("manifest {path}: {reason}")]
    Manifest { path: PathBuf, reason: String },

    #[error("{file}: does not match the manifest: {reason}")]
    ManifestMismatch { file: String, reason: String },

    #[error("{reference}: {reason}")]
    Local { reference: String, reason: String },
}

fn rev_suffix(r: &Option<String>) -> String {
    r.as_ref().map(|r| format!("@{r}")).unwrap_or_default()
}

fn server_says(m: &Option<String>) -> String {
    match m {
        Some(m) if !m.is_empty() => format!(" (server says: {m})"),
        _ => String::new(),
    }
}

fn needed_text(n: Option<u64>) -> String {
    n.map(|n| format!(" ({} still to download)", crate::human_bytes(n)))
        .unwrap_or_default()
}

/// True for "no space left on device" and "disk quota exceeded".
pub fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::StorageFull)
        || matches!(e.raw_os_error(), Some(28) | Some(122))
}

impl HubError {
    /// An I/O error on `path`; a full disk gets its own message.
    pub fn io(path: &Path, source: std::io::Error) -> HubError {
        if is_disk_full(&source) {
            HubError::DiskFull {
                path: path.to_path_buf(),
                needed: None,
            }
        } else {
            HubError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }

    /// Failures worth another try within the same pull (the connection dropped, a 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            HubError::Network { .. } => true,
            HubError::Http { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_says_so() {
        for e in [
            std::io::Error::from_raw_os_error(28),
            std::io::Error::from(std::io::ErrorKind::StorageFull),
        ] {
            let h = HubError::io(Path::new("/store/blobs/x.incomplete"), e);
            assert!(matches!(h, HubError::DiskFull { .. }), "{h}");
            assert!(
                h.to_string()
                    .starts_with("disk full while writing /store/blobs/x.incomplete"),
                "{h}"
            );
        }
        let h = HubError::DiskFull {
            path: "/store".into(),
            needed: Some(3 << 30),
        };
        assert!(h.to_string().contains("(3.0 GiB still to download)"), "{h}");
        let other = HubError::io(
            Path::new("/x"),
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert!(matches!(other, HubError::Io { .. }));
    }
}
