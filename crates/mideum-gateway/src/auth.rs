//! Who is calling and what is kept about each request: the seam between the request path
//! and the tenant store / audit log. The request path only sees the two traits; `mideum serve`
//! chooses the implementations (static keys and a counting log by default).

use crate::error::ApiError;
use axum::http::StatusCode;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

/// Who is calling, resolved from the `Authorization: Bearer` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Tenant id (`"default"` for static keys).
    pub tenant: String,
    /// Public id of the key, never the secret.
    pub key_id: String,
    /// Models this key may use; `None` = all.
    pub allowed_models: Option<Vec<String>>,
    /// Named policy from mideum.toml to apply; `None` = the default policy.
    pub policy: Option<String>,
    /// Tenant default data class, e.g. `"confidential"` forces local processing.
    pub data_class: Option<String>,
    /// Visible AI-generated notice text the tenant requires, if any.
    pub notice: Option<String>,
}

impl Principal {
    /// The principal used when no authentication is configured.
    pub fn anonymous() -> Principal {
        Principal {
            tenant: "default".into(),
            key_id: "anonymous".into(),
            allowed_models: None,
            policy: None,
            data_class: None,
            notice: None,
        }
    }

    /// Whether this principal may use the public model name `model`.
    pub fn may_use(&self, model: &str) -> bool {
        self.allowed_models
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| x == model))
    }
}

/// Resolves callers and admits their requests.
pub trait Authenticator: Send + Sync {
    /// `Ok(principal)` or an [`ApiError`] (401 `invalid_api_key`, 403, 429 with Retry-After).
    fn authenticate(&self, bearer: Option<&str>, origin: IpAddr) -> Result<Principal, ApiError>;

    /// Admission before any work: rate limits and budgets. Default: admitted.
    fn admit(&self, _p: &Principal, _est_prompt_tokens: u64) -> Result<(), ApiError> {
        Ok(())
    }
}

/// One record per request, filled by the request path and handed to the sink when the
/// answer ends. Holds counts and names, never values, prompts or keys.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRecord {
    pub time_unix_ms: u64,
    pub tenant: String,
    pub key_id: String,
    pub origin: IpAddr,
    pub user: Option<String>,
    /// `"chat.completions"` or `"completions"`.
    pub endpoint: &'static str,
    pub requested_model: String,
    pub served_model: Option<String>,
    pub backend: Option<String>,
    /// `local`, `domestic` or `overseas`.
    pub track: Option<String>,
    /// Entity type name -> count, never values.
    pub findings: Vec<(String, u32)>,
    /// Policy decision (`allow`, `mask`, `pseudonymize`, `route_local`, `block`) and why.
    pub decision: String,
    pub reason: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub latency_ms: u64,
    pub status: u16,
}

/// A boxed future, so that [`AuditSink`] stays dyn-compatible.
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<(), ApiError>> + Send + 'a>>;

/// Where request records go.
pub trait AuditSink: Send + Sync {
    /// Resolves only when the record is durable (or in a bounded durable queue). The request
    /// path awaits it before the response completes: before the body of a whole answer,
    /// before the final `data: [DONE]` of a stream. An `Err` fails the request (fail closed).
    fn record(&self, rec: RequestRecord) -> SinkFuture<'_>;

    /// Settles actual token usage (for budgets). Default: nothing.
    fn settle(&self, _tenant: &str, _key_id: &str, _prompt_tokens: u64, _completion_tokens: u64) {}
}

/// Static bearer keys (from an environment variable named in mideum.toml), or no
/// authentication at all when the list is empty.
pub struct StaticKeys {
    /// (secret, public key id) pairs.
    keys: Vec<(String, String)>,
}

impl StaticKeys {
    /// No authentication: every caller is [`Principal::anonymous`].
    pub fn open() -> StaticKeys {
        StaticKeys { keys: Vec::new() }
    }

    /// Keys given as a comma-separated list; each key's public id is `static-N`.
    pub fn from_list(list: &str) -> StaticKeys {
        let keys = list
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .enumerate()
            .map(|(i, k)| (k.to_string(), format!("static-{}", i + 1)))
            .collect();
        StaticKeys { keys }
    }

    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Compares without an early exit, so the time taken does not reveal a key's prefix.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn invalid_api_key() -> ApiError {
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        message: "Incorrect or missing API key. Send `Authorization: Bearer <key>`.".into(),
        kind: "invalid_request_error",
        param: None,
        code: Some("invalid_api_key"),
        retry_after: None,
    }
}

impl Authenticator for StaticKeys {
    fn authenticate(&self, bearer: Option<&str>, _origin: IpAddr) -> Result<Principal, ApiError> {
        if self.keys.is_empty() {
            return Ok(Principal::anonymous());
        }
        let b = bearer.ok_or_else(invalid_api_key)?;
        let mut found = None;
        for (secret, id) in &self.keys {
            if same_secret(secret.as_bytes(), b.as_bytes()) {
                found = Some(id);
            }
        }
        let id = found.ok_or_else(invalid_api_key)?;
        Ok(Principal {
            key_id: id.clone(),
            ..Principal::anonymous()
        })
    }
}

/// The default sink: logs counts only (no values), always succeeds.
pub struct LogSink;

impl AuditSink for LogSink {
    fn record(&self, rec: RequestRecord) -> SinkFuture<'_> {
        Box::pin(async move {
            let findings: u32 = rec.findings.iter().map(|(_, n)| n).sum();
            tracing::info!(
                tenant = %rec.tenant,
                key = %rec.key_id,
                endpoint = rec.endpoint,
                model = %rec.requested_model,
                backend = rec.backend.as_deref().unwrap_or("-"),
                track = rec.track.as_deref().unwrap_or("-"),
                decision = %rec.decision,
                findings,
                status = rec.status,
                latency_ms = rec.latency_ms,
                "request"
            );
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn open_keys_admit_anyone() {
        let k = StaticKeys::open();
        assert_eq!(k.authenticate(None, LO).unwrap(), Principal::anonymous());
    }

    #[test]
    fn static_keys_check_the_bearer() {
        let k = StaticKeys::from_list("sk-one, sk-two,");
        assert_eq!(
            k.authenticate(Some("sk-two"), LO).unwrap().key_id,
            "static-2"
        );
        assert_eq!(k.authenticate(None, LO).unwrap_err().status, 401);
        assert_eq!(k.authenticate(Some("sk-on"), LO).unwrap_err().status, 401);
        assert_eq!(
            k.authenticate(Some(""), LO).unwrap_err().code,
            Some("invalid_api_key")
        );
    }

    #[test]
    fn allowed_models_restrict() {
        let p = Principal {
            allowed_models: Some(vec!["a".into()]),
            ..Principal::anonymous()
        };
        assert!(p.may_use("a") && !p.may_use("b"));
        assert!(Principal::anonymous().may_use("b"));
    }
}
