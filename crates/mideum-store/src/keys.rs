//! API keys: `mdk_<id>_<secret>`, shown once at creation. The store keeps only the SHA-256 of
//! the whole key (the secret has 256 random bits, so a fast hash is enough), looked up on every
//! request so that expiry and revocation take effect immediately.

use crate::crypto::{hex, random_bytes, sha256_hex};
use crate::time::now_ms;
use crate::{check_tenant_id, KeyRecord, Result, Store, StoreError, Tenant};

/// A key just created: the only time `secret` exists outside the client.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NewKey {
    pub key: KeyRecord,
    /// The full bearer token to give the client.
    pub secret: String,
}

/// Creates a key for an existing tenant.
pub fn create_key(
    store: &dyn Store,
    tenant: &str,
    label: Option<String>,
    expires_ms: Option<u64>,
) -> Result<NewKey> {
    check_tenant_id(tenant)?;
    if store.tenant(tenant)?.is_none() {
        return Err(StoreError::NotFound(format!("tenant `{tenant}`")));
    }
    let id = format!("mdk_{}", hex(&random_bytes(6)?));
    let secret = format!("{id}_{}", hex(&random_bytes(32)?));
    let key = KeyRecord {
        id,
        tenant: tenant.to_string(),
        hash: sha256_hex(secret.as_bytes()),
        label,
        created_ms: now_ms(),
        expires_ms,
        revoked_ms: None,
    };
    store.insert_key(&key)?;
    Ok(NewKey { key, secret })
}

/// Why a bearer token was refused. Messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no API key: send `Authorization: Bearer <key>`")]
    Missing,
    #[error("the API key is not valid")]
    Unknown,
    #[error("the API key {0} has expired")]
    Expired(String),
    #[error("the API key {0} was revoked")]
    Revoked(String),
}

/// A key that passed, with its tenant.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub key_id: String,
    pub tenant: Tenant,
}

/// Resolves a bearer token to its key and tenant, checking expiry and revocation now.
pub fn authenticate(
    store: &dyn Store,
    bearer: Option<&str>,
) -> std::result::Result<std::result::Result<Authenticated, AuthError>, StoreError> {
    let Some(token) = bearer.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(Err(AuthError::Missing));
    };
    let Some(key) = store.key_by_hash(&sha256_hex(token.as_bytes()))? else {
        return Ok(Err(AuthError::Unknown));
    };
    let now = now_ms();
    if key.revoked_ms.is_some_and(|t| t <= now) {
        return Ok(Err(AuthError::Revoked(key.id)));
    }
    if key.expires_ms.is_some_and(|t| t <= now) {
        return Ok(Err(AuthError::Expired(key.id)));
    }
    let Some(tenant) = store.tenant(&key.tenant)? else {
        return Ok(Err(AuthError::Unknown));
    };
    Ok(Ok(Authenticated {
        key_id: key.id,
        tenant,
    }))
}
