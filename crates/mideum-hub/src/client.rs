//! The hub's HTTP API over a blocking client (ureq with rustls): model info and file
//! downloads, redirects followed by hand so that `Range` survives them and the token only goes
//! to the endpoint's own host. The token never appears in logs or `Debug` output.

use crate::error::{HubError, Result};
use crate::reference::RepoId;
use serde::Deserialize;
use std::time::Duration;

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// Hub or mirror address; default `HF_ENDPOINT`, else https://huggingface.co.
    pub endpoint: Option<String>,
    /// Bearer token; default `HF_TOKEN`, else the token `huggingface-cli login` saved.
    pub token: Option<String>,
    /// Give up on a connection that sends nothing for this long (default 60 s).
    pub read_timeout: Option<Duration>,
}

#[derive(Clone)]
pub struct HubClient {
    agent: ureq::Agent,
    endpoint: String,
    token: Option<String>,
}

impl std::fmt::Debug for HubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubClient")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// `HF_TOKEN`, else `HF_TOKEN_PATH` / `$HF_HOME/token` (written by `huggingface-cli login`).
pub fn token_from_env() -> Option<String> {
    if let Ok(t) = std::env::var("HF_TOKEN") {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Some(t);
        }
    }
    let path = std::env::var_os("HF_TOKEN_PATH")
        .map(std::path::PathBuf::from)
        .or_else(|| crate::store::hf_home().map(|h| h.join("token")))?;
    let t = std::fs::read_to_string(path).ok()?;
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

pub fn endpoint_from_env() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
}

/// One sibling file of a model, as `/api/models/{repo}/revision/{rev}?blobs=true` lists it.
#[derive(Clone, Debug, Deserialize)]
pub struct Sibling {
    pub rfilename: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default, rename = "blobId")]
    pub blob_id: Option<String>,
    #[serde(default)]
    pub lfs: Option<LfsInfo>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct LfsInfo {
    pub sha256: String,
    pub size: u64,
}

impl Sibling {
    pub fn size(&self) -> Option<u64> {
        self.lfs.as_ref().map(|l| l.size).or(self.size)
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct ModelInfo {
    #[serde(default)]
    pub id: Option<String>,
    pub sha: Option<String>,
    #[serde(default)]
    pub siblings: Vec<Sibling>,
}

/// Percent-encodes everything but unreserved characters (and '/' when `keep_slash`).
pub(crate) fn encode_path(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn origin(url: &str) -> &str {
    let after = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[after..].find('/') {
        Some(i) => &url[..after + i],
        None => url,
    }
}

/// Resolves a `Location` header against the URL that sent it.
fn join_location(base: &str, loc: &str) -> String {
    if loc.starts_with("http://") || loc.starts_with("https://") {
        loc.to_string()
    } else if let Some(rest) = loc.strip_prefix("//") {
        let scheme = base.split("://").next().unwrap_or("https");
        format!("{scheme}://{rest}")
    } else if loc.starts_with('/') {
        format!("{}{loc}", origin(base))
    } else {
        let path_end = base.find('?').unwrap_or(base.len());
        let dir = &base[..base[..path_end]
            .rfind('/')
            .map(|i| i + 1)
            .unwrap_or(path_end)];
        format!("{dir}{loc}")
    }
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// A response body opened for streaming, with what the download needs from the headers.
pub struct FileResponse {
    pub status: u16,
    /// `Content-Range` start when the server honored the Range request (206).
    pub range_start: Option<u64>,
    pub content_length: Option<u64>,
    /// `X-Linked-Etag` or `ETag`, quotes and `W/` removed.
    pub etag: Option<String>,
    pub reader: Box<dyn std::io::Read + Send>,
}

impl HubClient {
    pub fn new(opts: &ClientOptions) -> Result<HubClient> {
        let endpoint = opts
            .endpoint
            .clone()
            .unwrap_or_else(endpoint_from_env)
            .trim_end_matches('/')
            .to_string();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(HubError::BadResponse {
                url: endpoint,
                reason: "the endpoint must start with http:// or https://".into(),
            });
        }
        // Proxies come from ALL_PROXY/HTTPS_PROXY/HTTP_PROXY with NO_PROXY (ureq reads them);
        // a hub on this machine's loopback is never reached through one.
        let host = origin(&endpoint).split("://").nth(1).unwrap_or("");
        let loopback = ["127.", "localhost", "[::1]"]
            .iter()
            .any(|p| host.starts_with(p));
        let proxy = if loopback {
            None
        } else {
            ureq::Proxy::try_from_env()
        };
        let config = ureq::Agent::config_builder()
            .proxy(proxy)
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            .timeout_per_read(Some(opts.read_timeout.unwrap_or(Duration::from_secs(60))))
            .user_agent(concat!("mideum/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(HubClient {
            agent: config.new_agent(),
            endpoint,
            token: opts.token.clone().or_else(token_from_env),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// GET with redirects followed (up to 10), `Range` kept, the token sent only to the
    /// endpoint's host.
    fn get(
        &self,
        url: &str,
        range_from: Option<u64>,
    ) -> Result<(String, ureq::http::Response<ureq::Body>)> {
        let mut url = url.to_string();
        for _ in 0..10 {
            let mut req = self.agent.get(&url);
            if origin(&url) == origin(&self.endpoint) {
                if let Some(t) = &self.token {
                    req = req.header("authorization", format!("Bearer {t}"));
                }
            }
            if let Some(n) = range_from {
                req = req.header("range", format!("bytes={n}-"));
            }
            tracing::debug!(%url, ?range_from, "GET");
            let resp = req.call().map_err(|e| HubError::Network {
                url: url.clone(),
                reason: e.to_string(),
            })?;
            if resp.status().is_redirection() {
                if let Some(loc) = header(&resp, "location") {
                    url = join_location(&url, &loc);
                    continue;
                }
            }
            return Ok((url, resp));
        }
        Err(HubError::BadResponse {
            url,
            reason: "more than 10 redirects".into(),
        })
    }

    fn error_for(
        &self,
        url: &str,
        resp: &mut ureq::http::Response<ureq::Body>,
        repo: &RepoId,
        rev: &str,
        file: Option<&str>,
    ) -> HubError {
        let status = resp.status().as_u16();
        let code = header(resp, "x-error-code");
        let mut message = header(resp, "x-error-message");
        if message.is_none() {
            message = resp
                .body_mut()
                .with_config()
                .limit(4096)
                .read_to_string()
                .ok()
                .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string));
        }
        let token_sent = self.token.is_some();
        match (status, code.as_deref()) {
            (401, Some("GatedRepo")) | (403, _) => HubError::Forbidden {
                url: url.to_string(),
                token_sent,
                message,
            },
            (401, Some("RepoNotFound")) | (404, Some("RepoNotFound")) => HubError::RepoNotFound {
                repo: repo.to_string(),
                endpoint: self.endpoint.clone(),
            },
            (401, _) => HubError::Unauthorized {
                url: url.to_string(),
                token_sent,
            },
            (404, Some("RevisionNotFound")) => HubError::RevisionNotFound {
                repo: repo.to_string(),
                revision: rev.to_string(),
            },
            (404, Some("EntryNotFound")) => HubError::EntryNotFound {
                repo: repo.to_string(),
                revision: rev.to_string(),
                file: file.unwrap_or("").to_string(),
            },
            (404, _) => match file {
                Some(f) => HubError::EntryNotFound {
                    repo: repo.to_string(),
                    revision: rev.to_string(),
                    file: f.to_string(),
                },
                None => HubError::RepoNotFound {
                    repo: repo.to_string(),
                    endpoint: self.endpoint.clone(),
                },
            },
            _ => HubError::Http {
                url: url.to_string(),
                status,
                message,
            },
        }
    }

    /// `GET {endpoint}/api/models/{repo}/revision/{rev}?blobs=true`: the commit and the files
    /// with their sizes, git blob ids and LFS SHA-256.
    pub fn model_info(&self, repo: &RepoId, rev: &str) -> Result<ModelInfo> {
        let url = format!(
            "{}/api/models/{}/revision/{}?blobs=true",
            self.endpoint,
            repo,
            encode_path(rev, false)
        );
        let (final_url, mut resp) = self.get(&url, None)?;
        if !resp.status().is_success() {
            return Err(self.error_for(&final_url, &mut resp, repo, rev, None));
        }
        let ctype = header(&resp, "content-type").unwrap_or_default();
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| HubError::Network {
                url: final_url.clone(),
                reason: e.to_string(),
            })?;
        let info: ModelInfo = serde_json::from_str(&body).map_err(|e| {
            let start: String = body
                .trim_start()
                .chars()
                .take(60)
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            HubError::BadResponse {
                url: final_url.clone(),
                reason: if ctype.contains("html") || start.starts_with('<') {
                    format!(
                        "expected JSON model info, got an HTML page ({ctype}) starting {start:?}"
                    )
                } else {
                    format!("expected JSON model info ({e}); the answer starts {start:?}")
                },
            }
        })?;
        match &info.sha {
            Some(s) if crate::reference::is_commit_hash(s) => Ok(info),
            _ => Err(HubError::BadResponse {
                url: final_url,
                reason: "the model info has no 40-digit commit `sha`".into(),
            }),
        }
    }

    /// `GET {endpoint}/{repo}/resolve/{rev}/{file}` from byte `from` on.
    pub fn open_file(
        &self,
        repo: &RepoId,
        rev: &str,
        file: &str,
        from: u64,
    ) -> Result<FileResponse> {
        let url = format!(
            "{}/{}/resolve/{}/{}",
            self.endpoint,
            repo,
            encode_path(rev, false),
            encode_path(file, true)
        );
        let (final_url, mut resp) = self.get(&url, (from > 0).then_some(from))?;
        let status = resp.status().as_u16();
        if status == 416 {
            return Ok(FileResponse {
                status,
                range_start: None,
                content_length: None,
                etag: None,
                reader: Box::new(std::io::empty()),
            });
        }
        if !resp.status().is_success() {
            return Err(self.error_for(&final_url, &mut resp, repo, rev, Some(file)));
        }
        let range_start = if status == 206 {
            header(&resp, "content-range").and_then(|v| {
                v.strip_prefix("bytes ")?
                    .split('-')
                    .next()?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        } else {
            None
        };
        let content_length = header(&resp, "content-length").and_then(|v| v.parse().ok());
        let etag = header(&resp, "x-linked-etag")
            .or_else(|| header(&resp, "etag"))
            .map(|e| e.trim_start_matches("W/").trim_matches('"').to_string());
        let reader = resp.into_body().into_reader();
        Ok(FileResponse {
            status,
            range_start,
            content_length,
            etag,
            reader: Box::new(reader),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve_against_the_request() {
        let b = "http://127.0.0.1:80/org/m/resolve/main/a.bin?x=1";
        assert_eq!(join_location(b, "/cdn/a"), "http://127.0.0.1:80/cdn/a");
        assert_eq!(
            join_location(b, "https://cdn.example/a"),
            "https://cdn.example/a"
        );
        assert_eq!(
            join_location(b, "b.bin"),
            "http://127.0.0.1:80/org/m/resolve/main/b.bin"
        );
        assert_eq!(join_location(b, "//h/x"), "http://h/x");
        assert_eq!(encode_path("refs/pr/1", false), "refs%2Fpr%2F1");
        assert_eq!(encode_path("sub dir/a.gguf", true), "sub%20dir/a.gguf");
    }

    #[test]
    fn debug_hides_the_token() {
        let c = HubClient::new(&ClientOptions {
            endpoint: Some("http://127.0.0.1:9".into()),
            token: Some("hf_secret".into()),
            read_timeout: None,
        })
        .unwrap();
        assert!(!format!("{c:?}").contains("hf_secret"));
    }
}
