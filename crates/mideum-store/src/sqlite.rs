//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`, so a committed
//! audit batch survives power loss. Each append takes the write lock (`BEGIN IMMEDIATE`) and
//! reads the head inside it, so several processes on one file keep one chain.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::audit::{chain_rows, usage_deltas, AuditRecord, StoredRow};
use crate::crypto::ZERO_HASH;
use crate::{
    Anchor, AuditFilter, KeyRecord, Result, Store, StoreError, Tenant, TenantConfig, Usage,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tenants (id TEXT PRIMARY KEY, config TEXT NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS api_keys (id TEXT PRIMARY KEY, tenant TEXT NOT NULL REFERENCES tenants(id),
    hash TEXT NOT NULL UNIQUE, label TEXT, created_ms INTEGER NOT NULL, expires_ms INTEGER, revoked_ms INTEGER);
CREATE TABLE IF NOT EXISTS usage (tenant TEXT NOT NULL, period TEXT NOT NULL, requests INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, PRIMARY KEY (tenant, period));
CREATE TABLE IF NOT EXISTS audit_log (seq INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, tenant TEXT NOT NULL,
    prev_hash TEXT NOT NULL, hash TEXT NOT NULL, content TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_log_tenant ON audit_log(tenant, seq);
CREATE TABLE IF NOT EXISTS audit_head (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit_anchor (id INTEGER PRIMARY KEY CHECK (id = 1), anchor TEXT NOT NULL);
";

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

fn i(v: u64) -> i64 {
    v as i64
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<SqliteStore> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)?;
        conn.execute(
            "INSERT OR IGNORE INTO audit_head (id, seq, hash) VALUES (1, 0, ?1)",
            [ZERO_HASH],
        )?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs raw SQL: for tests that tamper with the file, and for nothing else.
    pub fn execute_raw(&self, sql: &str) -> Result<()> {
        self.conn().execute_batch(sql)?;
        Ok(())
    }
}

fn tenant_row(id: String, config: String, created: i64) -> Result<Tenant> {
    let config: TenantConfig = serde_json::from_str(&config)
        .map_err(|e| StoreError::Corrupt(format!("tenant `{id}` config: {e}")))?;
    Ok(Tenant {
        id,
        config,
        created_ms: created as u64,
    })
}

fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyRecord> {
    Ok(KeyRecord {
        id: r.get(0)?,
        tenant: r.get(1)?,
        hash: r.get(2)?,
        label: r.get(3)?,
        created_ms: r.get::<_, i64>(4)? as u64,
        expires_ms: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
        revoked_ms: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
    })
}

const KEY_COLS: &str = "id, tenant, hash, label, created_ms, expires_ms, revoked_ms";

impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn create_tenant(&self, t: &Tenant) -> Result<()> {
        let config = serde_json::to_string(&t.config)
            .map_err(|e| StoreError::Invalid(format!("tenant config: {e}")))?;
        let n = self.conn().execute(
            "INSERT OR IGNORE INTO tenants (id, config, created_ms) VALUES (?1, ?2, ?3)",
            params![t.id, config, i(t.created_ms)],
        )?;
        if n == 0 {
            return Err(StoreError::Conflict(format!("tenant `{}`", t.id)));
        }
        Ok(())
    }

    fn tenant(&self, id: &str) -> Result<Option<Tenant>> {
        let row = self
            .conn()
            .query_row(
                "SELECT id, config, created_ms FROM tenants WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        row.map(|(a, b, c)| tenant_row(a, b, c)).transpose()
    }

    fn tenants(&self) -> Result<Vec<Tenant>> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT id, config, created_ms FROM tenants ORDER BY id")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.map(|r| {
            let (a, b, c) = r?;
            tenant_row(a, b, c)
        })
        .collect()
    }

    fn insert_key(&self, k: &KeyRecord) -> Result<()> {
        self.conn().execute(
            "INSERT INTO api_keys (id, tenant, hash, label, created_ms, expires_ms, revoked_ms) VALUES (?1,?2,?3,?4,?5,?6,?7)",
            params![k.id, k.tenant, k.hash, k.label, i(k.created_ms), k.expires_ms.map(i), k.revoked_ms.map(i)],
        )?;
        Ok(())
    }

    fn key_by_hash(&self, hash: &str) -> Result<Option<KeyRecord>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {KEY_COLS} FROM api_keys WHERE hash = ?1"),
                [hash],
                key_row,
            )
            .optional()?)
    }

    fn keys(&self, tenant: Option<&str>) -> Result<Vec<KeyRecord>> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {KEY_COLS} FROM api_keys WHERE ?1 IS NULL OR tenant = ?1 ORDER BY tenant, created_ms, id"
        ))?;
        let rows = st.query_map([tenant], key_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn revoke_key(&self, id: &str, tenant: Option<&str>, at_ms: u64) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE api_keys SET revoked_ms = COALESCE(revoked_ms, ?3) WHERE id = ?1 AND (?2 IS NULL OR tenant = ?2)",
            params![id, tenant, i(at_ms)],
        )?;
        Ok(n > 0)
    }

    fn usage(&self, tenant: &str, period: &str) -> Result<Usage> {
        let row = self
            .conn()
            .query_row(
                "SELECT requests, prompt_tokens, completion_tokens FROM usage WHERE tenant = ?1 AND period = ?2",
                [tenant, period],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)),
            )
            .optional()?;
        let (requests, prompt, completion) = row.unwrap_or((0, 0, 0));
        Ok(Usage {
            tenant: tenant.into(),
            period: period.into(),
            requests: requests as u64,
            prompt_tokens: prompt as u64,
            completion_tokens: completion as u64,
        })
    }

    fn append_audit(&self, records: &[AuditRecord]) -> Result<Vec<u64>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let head: (i64, String) =
            tx.query_row("SELECT seq, hash FROM audit_head WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let rows = chain_rows((head.0 as u64, head.1), records)?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO audit_log (seq, time_ms, tenant, prev_hash, hash, content) VALUES (?1,?2,?3,?4,?5,?6)",
            )?;
            for row in &rows {
                ins.execute(params![
                    i(row.seq),
                    i(row.time_ms),
                    row.tenant,
                    row.prev_hash,
                    row.hash,
                    row.content
                ])?;
            }
            let mut usage = tx.prepare_cached(
                "INSERT INTO usage (tenant, period, requests, prompt_tokens, completion_tokens) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (tenant, period) DO UPDATE SET requests = requests + excluded.requests,
                 prompt_tokens = prompt_tokens + excluded.prompt_tokens,
                 completion_tokens = completion_tokens + excluded.completion_tokens",
            )?;
            for ((tenant, period), u) in usage_deltas(records) {
                usage.execute(params![tenant, period, i(u.0), i(u.1), i(u.2)])?;
            }
        }
        if let Some(last) = rows.last() {
            tx.execute(
                "UPDATE audit_head SET seq = ?1, hash = ?2 WHERE id = 1",
                params![i(last.seq), last.hash],
            )?;
        }
        tx.commit()?;
        Ok(rows.iter().map(|r| r.seq).collect())
    }

    fn audit_page(&self, f: &AuditFilter, after_seq: u64, limit: usize) -> Result<Vec<StoredRow>> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(
            "SELECT seq, time_ms, tenant, prev_hash, hash, content FROM audit_log
             WHERE seq > ?1 AND (?2 IS NULL OR tenant = ?2) AND (?3 IS NULL OR time_ms >= ?3)
               AND (?4 IS NULL OR time_ms < ?4)
             ORDER BY seq LIMIT ?5",
        )?;
        let rows = st.query_map(
            params![
                i(after_seq),
                f.tenant,
                f.since_ms.map(i),
                f.until_ms.map(i),
                limit as i64
            ],
            |r| {
                Ok(StoredRow {
                    seq: r.get::<_, i64>(0)? as u64,
                    time_ms: r.get::<_, i64>(1)? as u64,
                    tenant: r.get(2)?,
                    prev_hash: r.get(3)?,
                    hash: r.get(4)?,
                    content: r.get(5)?,
                })
            },
        )?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn audit_head(&self) -> Result<(u64, String)> {
        let (s, h): (i64, String) =
            self.conn()
                .query_row("SELECT seq, hash FROM audit_head WHERE id = 1", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
        Ok((s as u64, h))
    }

    fn anchor(&self) -> Result<Option<Anchor>> {
        let text: Option<String> = self
            .conn()
            .query_row("SELECT anchor FROM audit_anchor WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()?;
        text.map(|t| {
            serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("prune anchor: {e}")))
        })
        .transpose()
    }

    fn prune_through(&self, a: &Anchor) -> Result<u64> {
        let text =
            serde_json::to_string(a).map_err(|e| StoreError::Invalid(format!("anchor: {e}")))?;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute("DELETE FROM audit_log WHERE seq <= ?1", [i(a.through_seq)])?;
        tx.execute(
            "INSERT INTO audit_anchor (id, anchor) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET anchor = excluded.anchor",
            [text],
        )?;
        tx.commit()?;
        Ok(n as u64)
    }
}
