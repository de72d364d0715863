//! The store-backed [`Authenticator`] and [`AuditSink`]: tenants and hashed keys from
//! `mideum-store` (expiry and revocation checked on every request), per-tenant rate limits and
//! budgets before any work, and audit records made durable by the store's group-commit writer
//! before the answer completes.

use std::net::IpAddr;
use std::sync::Arc;

use axum::http::StatusCode;
use mideum_store::keys::{self, AuthError};
use mideum_store::time::now_ms;
use mideum_store::{AuditRecord, AuditWriter, Denied, Limiter, Store};

use crate::auth::{
    invalid_api_key, AuditSink, Authenticator, Principal, RequestRecord, SinkFuture,
};
use crate::error::ApiError;

/// Tenants, keys, limits and the audit writer over one store.
pub struct StoreAuth {
    store: Arc<dyn Store>,
    limiter: Limiter,
    writer: AuditWriter,
}

impl StoreAuth {
    /// `store` answers lookups; `writer_store` is a second connection owned by the writer.
    pub fn new(
        store: Arc<dyn Store>,
        writer_store: Box<dyn Store>,
    ) -> Result<StoreAuth, mideum_store::StoreError> {
        Ok(StoreAuth {
            store,
            limiter: Limiter::new(),
            writer: AuditWriter::start(writer_store)?,
        })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Writes what is queued and stops the writer.
    pub fn shutdown(&self) {
        self.writer.shutdown();
    }
}

fn store_failure(e: mideum_store::StoreError) -> ApiError {
    tracing::error!(error = %e, "tenant store");
    ApiError::internal("The tenant store is unavailable; the request was not processed.")
}

/// The OpenAI-shaped 429 for a refused admission.
pub fn denied_error(d: &Denied) -> ApiError {
    let (kind, code) = if d.is_budget() {
        ("insufficient_quota", "insufficient_quota")
    } else {
        ("rate_limit_error", "rate_limit_exceeded")
    };
    ApiError {
        status: StatusCode::TOO_MANY_REQUESTS,
        message: format!("{d}. Retry after {} s.", d.retry_after_s()),
        kind,
        param: None,
        code: Some(code),
        retry_after: Some(d.retry_after_s()),
    }
}

impl Authenticator for StoreAuth {
    fn authenticate(&self, bearer: Option<&str>, _origin: IpAddr) -> Result<Principal, ApiError> {
        match keys::authenticate(self.store.as_ref(), bearer).map_err(store_failure)? {
            Ok(a) => {
                let c = a.tenant.config;
                Ok(Principal {
                    tenant: a.tenant.id,
                    key_id: a.key_id,
                    allowed_models: c.allowed_models,
                    policy: c.policy,
                    data_class: c.data_class,
                    notice: c.notice,
                })
            }
            Err(e @ (AuthError::Expired(_) | AuthError::Revoked(_))) => Err(ApiError {
                message: format!("{e}. Ask your administrator for a new key."),
                ..invalid_api_key()
            }),
            Err(_) => Err(invalid_api_key()),
        }
    }

    fn admit(&self, p: &Principal, est_prompt_tokens: u64) -> Result<(), ApiError> {
        let tenant = self
            .store
            .tenant(&p.tenant)
            .map_err(store_failure)?
            .ok_or_else(invalid_api_key)?;
        match self
            .limiter
            .admit(self.store.as_ref(), &tenant, est_prompt_tokens, now_ms())
            .map_err(store_failure)?
        {
            Ok(()) => Ok(()),
            Err(d) => Err(denied_error(&d)),
        }
    }
}

/// The store's form of a request record.
pub fn audit_record(r: RequestRecord) -> AuditRecord {
    AuditRecord {
        time_ms: r.time_unix_ms,
        tenant: r.tenant,
        key_id: r.key_id,
        origin: r.origin.to_string(),
        user: r.user,
        endpoint: r.endpoint.to_string(),
        requested_model: r.requested_model,
        served_model: r.served_model,
        backend: r.backend,
        track: r.track,
        findings: r.findings,
        decision: r.decision,
        reason: r.reason,
        prompt_tokens: r.prompt_tokens,
        completion_tokens: r.completion_tokens,
        latency_ms: r.latency_ms,
        status: r.status,
    }
}

impl AuditSink for StoreAuth {
    fn record(&self, rec: RequestRecord) -> SinkFuture<'_> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.writer.submit(audit_record(rec), move |r| {
            let _ = tx.send(r);
        });
        Box::pin(async move {
            match rx.await {
                Ok(Ok(_seq)) => Ok(()),
                Ok(Err(e)) => Err(store_failure(e)),
                Err(_) => Err(ApiError::internal(
                    "the audit writer stopped; the request was not recorded",
                )),
            }
        })
    }

    fn settle(&self, tenant: &str, _key_id: &str, prompt_tokens: u64, completion_tokens: u64) {
        // Admission took the prompt estimate from the tokens/min bucket; the generated tokens
        // are charged now. Day/month budgets are counted by the audit writer itself.
        self.limiter
            .settle(tenant, prompt_tokens, prompt_tokens + completion_tokens);
    }
}
