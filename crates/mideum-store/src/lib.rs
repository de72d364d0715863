//! Tenants, API keys, usage counters, rate limits, budgets and the hash-chained audit trail of
//! Mideum. Pure storage and logic, synchronous, no HTTP: the gateway and the CLI sit on top.
//!
//! One [`Store`] trait with two implementations: embedded SQLite ([`SqliteStore`], the default,
//! WAL and `synchronous=FULL`) and PostgreSQL ([`PgStore`], for several instances sharing one
//! store). Everything that is not a query (hashing the chain, verifying it, signing prune
//! anchors, rate limiting) is written once, over the trait.

pub mod audit;
pub mod crypto;
pub mod keys;
pub mod limits;
mod pg;
mod sqlite;
pub mod time;
pub mod writer;

use serde::{Deserialize, Serialize};

pub use audit::{AuditRecord, ExportFormat, StoredRow, VerifyReport};
pub use keys::{AuthError, Authenticated, NewKey};
pub use limits::{Denied, Limiter};
pub use pg::PgStore;
pub use sqlite::SqliteStore;
pub use writer::AuditWriter;

/// Errors of the store. Database errors keep their source; the rest say what was expected.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] postgres::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    Conflict(String),
    #[error("audit key: {0}")]
    Key(String),
    #[error("stored data is malformed: {0}")]
    Corrupt(String),
    #[error("the audit writer stopped: {0}")]
    Writer(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A tenant: one customer team or company with its own keys, models, limits and policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    pub id: String,
    #[serde(default)]
    pub config: TenantConfig,
    #[serde(default)]
    pub created_ms: u64,
}

/// What a tenant may do. `None` everywhere means "no restriction".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Models (names or aliases as clients send them) this tenant may use; `None` = all.
    #[serde(default)]
    pub allowed_models: Option<Vec<String>>,
    /// Named policy from mideum.toml; `None` = the default policy.
    #[serde(default)]
    pub policy: Option<String>,
    /// Default data class of this tenant's requests, e.g. `confidential`.
    #[serde(default)]
    pub data_class: Option<String>,
    /// Visible "AI-generated" notice text the tenant requires.
    #[serde(default)]
    pub notice: Option<String>,
    #[serde(default)]
    pub requests_per_min: Option<u32>,
    #[serde(default)]
    pub tokens_per_min: Option<u64>,
    #[serde(default)]
    pub tokens_per_day: Option<u64>,
    #[serde(default)]
    pub tokens_per_month: Option<u64>,
}

/// A stored API key: never the secret, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Public id, safe to log and show (`mdk_` + 12 hex digits).
    pub id: String,
    pub tenant: String,
    #[serde(skip_serializing)]
    pub hash: String,
    pub label: Option<String>,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
    pub revoked_ms: Option<u64>,
}

/// Token and request counts of one tenant in one period (`YYYY-MM-DD` or `YYYY-MM`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub tenant: String,
    pub period: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// The signed summary of a pruned chain prefix; the chain continues from `through_hash`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anchor {
    /// Last pruned sequence number; the first kept record has `through_seq + 1`.
    pub through_seq: u64,
    /// Hash of the last pruned record: the `prev_hash` of the first kept one.
    pub through_hash: String,
    /// Records were pruned because they were older than this instant.
    pub before_ms: u64,
    pub created_ms: u64,
    /// HMAC-SHA-256 (hex) of the anchor's canonical text under the audit key.
    pub mac: String,
}

/// Which audit rows to read: all filters are optional and combine with AND.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub tenant: Option<String>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
}

/// The storage layer. Implementations are internally synchronized (`&self`), so one can be
/// shared as `Arc<dyn Store>`; the audit writer opens its own.
pub trait Store: Send + Sync {
    /// Which backend this is, for messages: `sqlite` or `postgres`.
    fn kind(&self) -> &'static str;

    fn create_tenant(&self, tenant: &Tenant) -> Result<()>;
    fn tenant(&self, id: &str) -> Result<Option<Tenant>>;
    fn tenants(&self) -> Result<Vec<Tenant>>;

    fn insert_key(&self, key: &KeyRecord) -> Result<()>;
    fn key_by_hash(&self, hash: &str) -> Result<Option<KeyRecord>>;
    /// Keys of one tenant, or of all tenants when `tenant` is `None`.
    fn keys(&self, tenant: Option<&str>) -> Result<Vec<KeyRecord>>;
    /// Marks a key revoked at `at_ms`; with `tenant`, only a key of that tenant. False when
    /// no such key exists.
    fn revoke_key(&self, id: &str, tenant: Option<&str>, at_ms: u64) -> Result<bool>;

    /// Usage of one tenant in one period key; zero counts when none is recorded.
    fn usage(&self, tenant: &str, period: &str) -> Result<Usage>;

    /// Appends records to the chain in ONE transaction (group commit), also adding their token
    /// counts to the tenants' day and month usage; returns their sequence numbers. Durable when
    /// it returns.
    fn append_audit(&self, records: &[AuditRecord]) -> Result<Vec<u64>>;
    /// Rows after `after_seq` in sequence order, at most `limit`, matching `filter`.
    fn audit_page(
        &self,
        filter: &AuditFilter,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredRow>>;
    /// The head: last appended sequence number and its hash (`(0, ZERO_HASH)` when empty).
    fn audit_head(&self) -> Result<(u64, String)>;
    fn anchor(&self) -> Result<Option<Anchor>>;
    /// Deletes rows with `seq <= anchor.through_seq` and stores the anchor, in one transaction.
    fn prune_through(&self, anchor: &Anchor) -> Result<u64>;
}

/// Opens a store from `sqlite:PATH` (or a bare path) or `postgres://…` / `postgresql://…`,
/// creating the schema when missing.
pub fn open(url: &str) -> Result<Box<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Box::new(PgStore::connect(url)?))
    } else {
        let path = url.strip_prefix("sqlite:").unwrap_or(url);
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            return Err(StoreError::Invalid(
                "expected --store sqlite:PATH or postgres://USER@HOST/DB, found an empty path"
                    .into(),
            ));
        }
        Ok(Box::new(SqliteStore::open(std::path::Path::new(path))?))
    }
}

/// Checks a tenant id: 1–64 characters of `[A-Za-z0-9_.-]`.
pub fn check_tenant_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        return Err(StoreError::Invalid(format!(
            "a tenant id is 1-64 characters of letters, digits, `_`, `-` or `.`; found `{id}`"
        )));
    }
    Ok(())
}
