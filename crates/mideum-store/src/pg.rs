//! The shared store: PostgreSQL, for several Mideum instances behind a load balancer. Appends
//! lock the head row (`SELECT … FOR UPDATE`), so instances take turns and keep one chain; a
//! commit returns after PostgreSQL has flushed its WAL (`synchronous_commit` on, the default).

use std::sync::{Mutex, MutexGuard};

use postgres::{Client, NoTls};

use crate::audit::{chain_rows, usage_deltas, AuditRecord, StoredRow};
use crate::crypto::ZERO_HASH;
use crate::{
    Anchor, AuditFilter, KeyRecord, Result, Store, StoreError, Tenant, TenantConfig, Usage,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tenants (id TEXT PRIMARY KEY, config TEXT NOT NULL, created_ms BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS api_keys (id TEXT PRIMARY KEY, tenant TEXT NOT NULL REFERENCES tenants(id),
    hash TEXT NOT NULL UNIQUE, label TEXT, created_ms BIGINT NOT NULL, expires_ms BIGINT, revoked_ms BIGINT);
CREATE TABLE IF NOT EXISTS usage (tenant TEXT NOT NULL, period TEXT NOT NULL, requests BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL, completion_tokens BIGINT NOT NULL, PRIMARY KEY (tenant, period));
CREATE TABLE IF NOT EXISTS audit_log (seq BIGINT PRIMARY KEY, time_ms BIGINT NOT NULL, tenant TEXT NOT NULL,
    prev_hash TEXT NOT NULL, hash TEXT NOT NULL, content TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_log_tenant ON audit_log(tenant, seq);
CREATE TABLE IF NOT EXISTS audit_head (id INT PRIMARY KEY CHECK (id = 1), seq BIGINT NOT NULL, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit_anchor (id INT PRIMARY KEY CHECK (id = 1), anchor TEXT NOT NULL);
";

pub struct PgStore {
    client: Mutex<Client>,
}

fn i(v: u64) -> i64 {
    v as i64
}

impl PgStore {
    /// Connects (without TLS) and creates the schema when missing.
    pub fn connect(url: &str) -> Result<PgStore> {
        let mut client = Client::connect(url, NoTls)?;
        // Concurrent `CREATE TABLE IF NOT EXISTS` from two instances can still collide; an
        // advisory lock makes schema creation one at a time.
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock(7201)", &[])?;
        tx.batch_execute(SCHEMA)?;
        tx.execute(
            "INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, $1) ON CONFLICT (id) DO NOTHING",
            &[&ZERO_HASH],
        )?;
        tx.commit()?;
        Ok(PgStore {
            client: Mutex::new(client),
        })
    }

    fn client(&self) -> MutexGuard<'_, Client> {
        self.client.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs raw SQL: for tests that tamper with the tables, and for nothing else.
    pub fn execute_raw(&self, sql: &str) -> Result<()> {
        self.client().batch_execute(sql)?;
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

fn key_row(r: &postgres::Row) -> Result<KeyRecord> {
    Ok(KeyRecord {
        id: r.try_get(0)?,
        tenant: r.try_get(1)?,
        hash: r.try_get(2)?,
        label: r.try_get(3)?,
        created_ms: r.try_get::<_, i64>(4)? as u64,
        expires_ms: r.try_get::<_, Option<i64>>(5)?.map(|v| v as u64),
        revoked_ms: r.try_get::<_, Option<i64>>(6)?.map(|v| v as u64),
    })
}

const KEY_COLS: &str = "id, tenant, hash, label, created_ms, expires_ms, revoked_ms";

impl Store for PgStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn create_tenant(&self, t: &Tenant) -> Result<()> {
        let config = serde_json::to_string(&t.config)
            .map_err(|e| StoreError::Invalid(format!("tenant config: {e}")))?;
        let n = self.client().execute(
            "INSERT INTO tenants (id, config, created_ms) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
            &[&t.id, &config, &i(t.created_ms)],
        )?;
        if n == 0 {
            return Err(StoreError::Conflict(format!("tenant `{}`", t.id)));
        }
        Ok(())
    }

    fn tenant(&self, id: &str) -> Result<Option<Tenant>> {
        let row = self.client().query_opt(
            "SELECT id, config, created_ms FROM tenants WHERE id = $1",
            &[&id],
        )?;
        row.map(|r| tenant_row(r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))
            .transpose()
    }

    fn tenants(&self) -> Result<Vec<Tenant>> {
        let rows = self.client().query(
            "SELECT id, config, created_ms FROM tenants ORDER BY id",
            &[],
        )?;
        rows.iter()
            .map(|r| tenant_row(r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))
            .collect()
    }

    fn insert_key(&self, k: &KeyRecord) -> Result<()> {
        self.client().execute(
            "INSERT INTO api_keys (id, tenant, hash, label, created_ms, expires_ms, revoked_ms) VALUES ($1,$2,$3,$4,$5,$6,$7)",
            &[&k.id, &k.tenant, &k.hash, &k.label, &i(k.created_ms), &k.expires_ms.map(i), &k.revoked_ms.map(i)],
        )?;
        Ok(())
    }

    fn key_by_hash(&self, hash: &str) -> Result<Option<KeyRecord>> {
        let row = self.client().query_opt(
            &format!("SELECT {KEY_COLS} FROM api_keys WHERE hash = $1"),
            &[&hash],
        )?;
        row.as_ref().map(key_row).transpose()
    }

    fn keys(&self, tenant: Option<&str>) -> Result<Vec<KeyRecord>> {
        let rows = self.client().query(
            &format!("SELECT {KEY_COLS} FROM api_keys WHERE $1::text IS NULL OR tenant = $1 ORDER BY tenant, created_ms, id"),
            &[&tenant],
        )?;
        rows.iter().map(key_row).collect()
    }

    fn revoke_key(&self, id: &str, tenant: Option<&str>, at_ms: u64) -> Result<bool> {
        let n = self.client().execute(
            "UPDATE api_keys SET revoked_ms = COALESCE(revoked_ms, $3) WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)",
            &[&id, &tenant, &i(at_ms)],
        )?;
        Ok(n > 0)
    }

    fn usage(&self, tenant: &str, period: &str) -> Result<Usage> {
        let row = self.client().query_opt(
            "SELECT requests, prompt_tokens, completion_tokens FROM usage WHERE tenant = $1 AND period = $2",
            &[&tenant, &period],
        )?;
        let (requests, prompt, completion): (i64, i64, i64) = match row {
            Some(r) => (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?),
            None => (0, 0, 0),
        };
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
        let mut client = self.client();
        let mut tx = client.transaction()?;
        let head = tx.query_one(
            "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE",
            &[],
        )?;
        let rows = chain_rows(
            (head.try_get::<_, i64>(0)? as u64, head.try_get(1)?),
            records,
        )?;
        // One statement for all rows (arrays unnested server-side) and one upsert per
        // (tenant, period): a batch costs a handful of round trips, not three per record.
        tx.execute(
            "INSERT INTO audit_log (seq, time_ms, tenant, prev_hash, hash, content)
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[])",
            &[
                &rows.iter().map(|r| i(r.seq)).collect::<Vec<i64>>(),
                &rows.iter().map(|r| i(r.time_ms)).collect::<Vec<i64>>(),
                &rows.iter().map(|r| r.tenant.as_str()).collect::<Vec<&str>>(),
                &rows.iter().map(|r| r.prev_hash.as_str()).collect::<Vec<&str>>(),
                &rows.iter().map(|r| r.hash.as_str()).collect::<Vec<&str>>(),
                &rows.iter().map(|r| r.content.as_str()).collect::<Vec<&str>>(),
            ],
        )?;
        let usage = tx.prepare(
            "INSERT INTO usage (tenant, period, requests, prompt_tokens, completion_tokens) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (tenant, period) DO UPDATE SET requests = usage.requests + excluded.requests,
             prompt_tokens = usage.prompt_tokens + excluded.prompt_tokens,
             completion_tokens = usage.completion_tokens + excluded.completion_tokens",
        )?;
        for ((tenant, period), u) in usage_deltas(records) {
            tx.execute(&usage, &[&tenant, &period, &i(u.0), &i(u.1), &i(u.2)])?;
        }
        if let Some(last) = rows.last() {
            tx.execute(
                "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1",
                &[&i(last.seq), &last.hash],
            )?;
        }
        tx.commit()?;
        Ok(rows.iter().map(|r| r.seq).collect())
    }

    fn audit_page(&self, f: &AuditFilter, after_seq: u64, limit: usize) -> Result<Vec<StoredRow>> {
        let rows = self.client().query(
            "SELECT seq, time_ms, tenant, prev_hash, hash, content FROM audit_log
             WHERE seq > $1 AND ($2::text IS NULL OR tenant = $2) AND ($3::bigint IS NULL OR time_ms >= $3)
               AND ($4::bigint IS NULL OR time_ms < $4)
             ORDER BY seq LIMIT $5",
            &[&i(after_seq), &f.tenant, &f.since_ms.map(i), &f.until_ms.map(i), &(limit as i64)],
        )?;
        rows.iter()
            .map(|r| {
                Ok(StoredRow {
                    seq: r.try_get::<_, i64>(0)? as u64,
                    time_ms: r.try_get::<_, i64>(1)? as u64,
                    tenant: r.try_get(2)?,
                    prev_hash: r.try_get(3)?,
                    hash: r.try_get(4)?,
                    content: r.try_get(5)?,
                })
            })
            .collect()
    }

    fn audit_head(&self) -> Result<(u64, String)> {
        let r = self
            .client()
            .query_one("SELECT seq, hash FROM audit_head WHERE id = 1", &[])?;
        Ok((r.try_get::<_, i64>(0)? as u64, r.try_get(1)?))
    }

    fn anchor(&self) -> Result<Option<Anchor>> {
        let row = self
            .client()
            .query_opt("SELECT anchor FROM audit_anchor WHERE id = 1", &[])?;
        match row {
            Some(r) => {
                let t: String = r.try_get(0)?;
                serde_json::from_str(&t)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt(format!("prune anchor: {e}")))
            }
            None => Ok(None),
        }
    }

    fn prune_through(&self, a: &Anchor) -> Result<u64> {
        let text =
            serde_json::to_string(a).map_err(|e| StoreError::Invalid(format!("anchor: {e}")))?;
        let mut client = self.client();
        let mut tx = client.transaction()?;
        let n = tx.execute(
            "DELETE FROM audit_log WHERE seq <= $1",
            &[&i(a.through_seq)],
        )?;
        tx.execute(
            "INSERT INTO audit_anchor (id, anchor) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET anchor = excluded.anchor",
            &[&text],
        )?;
        tx.commit()?;
        Ok(n)
    }
}
