//! The audit trail: one record per request, chained by hashes. Each stored row carries the
//! hash of the row before it and the hash of its own sequence number, predecessor and
//! canonical content, so changing, deleting, reordering or inserting a row breaks a link that
//! [`verify`] reports. Pruning keeps an HMAC-signed [`Anchor`] for the removed prefix.

use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::crypto::{constant_time_eq, hex, hmac_sha256, sha256_hex, ZERO_HASH};
use crate::time::{day_key, month_key, now_ms, rfc3339};
use crate::{Anchor, AuditFilter, Result, Store, StoreError};

/// What happened in one request. Findings are entity types and counts, never values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub time_ms: u64,
    pub tenant: String,
    pub key_id: String,
    pub origin: String,
    pub user: Option<String>,
    pub endpoint: String,
    pub requested_model: String,
    pub served_model: Option<String>,
    pub backend: Option<String>,
    pub track: Option<String>,
    pub findings: Vec<(String, u32)>,
    pub decision: String,
    pub reason: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub latency_ms: u64,
    pub status: u16,
}

impl AuditRecord {
    /// The exact text that is stored and hashed: JSON with the fields in declaration order.
    pub fn canonical(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|e| StoreError::Corrupt(format!("record JSON: {e}")))
    }
}

/// One row as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRow {
    pub seq: u64,
    pub time_ms: u64,
    pub tenant: String,
    pub prev_hash: String,
    pub hash: String,
    pub content: String,
}

/// The hash of row `seq` with predecessor hash `prev` and canonical `content`.
pub fn row_hash(seq: u64, prev: &str, content: &str) -> String {
    let mut buf = Vec::with_capacity(content.len() + 100);
    buf.extend_from_slice(b"mideum-audit-v1\n");
    buf.extend_from_slice(seq.to_string().as_bytes());
    buf.push(b'\n');
    buf.extend_from_slice(prev.as_bytes());
    buf.push(b'\n');
    buf.extend_from_slice(content.as_bytes());
    sha256_hex(&buf)
}

/// Builds the rows for `records` following a head `(seq, hash)`: the shared part of every
/// store's `append_audit`.
pub fn chain_rows(head: (u64, String), records: &[AuditRecord]) -> Result<Vec<StoredRow>> {
    let (mut seq, mut prev) = head;
    let mut rows = Vec::with_capacity(records.len());
    for r in records {
        seq += 1;
        let content = r.canonical()?;
        let hash = row_hash(seq, &prev, &content);
        rows.push(StoredRow {
            seq,
            time_ms: r.time_ms,
            tenant: r.tenant.clone(),
            prev_hash: prev,
            hash: hash.clone(),
            content,
        });
        prev = hash;
    }
    Ok(rows)
}

/// (tenant, period key).
pub type TenantPeriod = (String, String);
/// (requests, prompt tokens, completion tokens).
pub type UsageDelta = (u64, u64, u64);

/// The usage the records add, per (tenant, period): (requests, prompt tokens, completion
/// tokens) for each record's UTC day and month. Stores apply these in the append transaction.
pub fn usage_deltas(records: &[AuditRecord]) -> Vec<(TenantPeriod, UsageDelta)> {
    let mut m: std::collections::BTreeMap<TenantPeriod, UsageDelta> = Default::default();
    for r in records {
        for period in [day_key(r.time_ms), month_key(r.time_ms)] {
            let e = m.entry((r.tenant.clone(), period)).or_default();
            e.0 += 1;
            e.1 += r.prompt_tokens;
            e.2 += r.completion_tokens;
        }
    }
    m.into_iter().collect()
}

/// What kind of break [`verify`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakKind {
    /// The row's own hash does not match its sequence number, link and content: the row was
    /// changed, or moved to another position.
    Modified,
    /// Sequence numbers jump: rows were deleted before this one.
    Missing,
    /// The row is intact but links to a different predecessor: a row was inserted before it
    /// or the rows were reordered.
    BadLink,
    /// The indexed columns (tenant, time) differ from the hashed content.
    ColumnMismatch,
    /// The chain ends before, or after, the head recorded with the last append.
    HeadMismatch,
    /// The prune anchor's signature is wrong, or there is no key to check it.
    Anchor,
}

/// The first broken link.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Break {
    pub seq: u64,
    pub kind: BreakKind,
    pub detail: String,
}

/// The result of [`verify`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub records_checked: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub head_hash: String,
    pub anchored_through: Option<u64>,
    pub first_break: Option<Break>,
}

/// The canonical text of an anchor (everything but its MAC).
fn anchor_text(a: &Anchor) -> String {
    format!(
        "mideum-anchor-v1\n{}\n{}\n{}\n{}",
        a.through_seq, a.through_hash, a.before_ms, a.created_ms
    )
}

pub fn sign_anchor(mut a: Anchor, key: &[u8]) -> Anchor {
    a.mac = hex(&hmac_sha256(key, anchor_text(&a).as_bytes()));
    a
}

pub fn anchor_valid(a: &Anchor, key: &[u8]) -> bool {
    let want = hex(&hmac_sha256(key, anchor_text(a).as_bytes()));
    constant_time_eq(want.as_bytes(), a.mac.as_bytes())
}

/// Walks the whole chain and reports the first broken link. `key` checks the prune anchor;
/// an anchor that cannot be checked fails verification (fail closed).
pub fn verify(store: &dyn Store, key: Option<&[u8]>) -> Result<VerifyReport> {
    let anchor = store.anchor()?;
    let mut report = VerifyReport {
        ok: true,
        records_checked: 0,
        first_seq: None,
        last_seq: None,
        head_hash: String::new(),
        anchored_through: anchor.as_ref().map(|a| a.through_seq),
        first_break: None,
    };
    let (mut expect_seq, mut prev) = match &anchor {
        Some(a) => {
            let signed = key.map(|k| anchor_valid(a, k));
            if signed != Some(true) {
                report.ok = false;
                report.first_break = Some(Break {
                    seq: a.through_seq,
                    kind: BreakKind::Anchor,
                    detail: if signed.is_none() {
                        "the chain starts at a prune anchor and no audit key (MIDEUM_AUDIT_KEY or MIDEUM_AUDIT_KEY_FILE) is set to check its signature".into()
                    } else {
                        "the prune anchor's signature does not match: the anchor was altered or the key is wrong".into()
                    },
                });
                return Ok(report);
            }
            (a.through_seq + 1, a.through_hash.clone())
        }
        None => (1, ZERO_HASH.to_string()),
    };
    let fail = |report: &mut VerifyReport, seq, kind, detail: String| {
        report.ok = false;
        report.first_break = Some(Break { seq, kind, detail });
    };
    // Hashes of recent rows, to tell an inserted row (the next row links two back) from others.
    let mut recent: Vec<String> = Vec::new();
    let all = AuditFilter::default();
    let mut after = 0u64;
    'pages: loop {
        let page = store.audit_page(&all, after, 1000)?;
        if page.is_empty() {
            break;
        }
        for row in page {
            after = row.seq;
            report.records_checked += 1;
            report.first_seq.get_or_insert(row.seq);
            if row.seq != expect_seq {
                let detail = if row.seq > expect_seq {
                    format!(
                        "records {expect_seq}..{} are missing (deleted)",
                        row.seq - 1
                    )
                } else {
                    format!("record {} appears where {expect_seq} was expected", row.seq)
                };
                fail(&mut report, expect_seq, BreakKind::Missing, detail);
                break 'pages;
            }
            if row_hash(row.seq, &row.prev_hash, &row.content) != row.hash {
                // An intact row hashed for another position was moved: by reordering, or by
                // renumbering to make room for inserted rows.
                let moved_from = (1..=8u64)
                    .flat_map(|k| [row.seq.checked_sub(k), row.seq.checked_add(k)])
                    .flatten()
                    .find(|&s| s > 0 && row_hash(s, &row.prev_hash, &row.content) == row.hash);
                match moved_from {
                    Some(orig) if orig < row.seq => {
                        let k = row.seq - orig;
                        // The rows now at orig..row.seq were inserted; the first is at `orig`.
                        fail(
                            &mut report,
                            orig,
                            BreakKind::BadLink,
                            format!("record {orig} was renumbered to {}: {k} row(s) were inserted at {orig}", row.seq),
                        );
                    }
                    Some(orig) => fail(
                        &mut report,
                        row.seq,
                        BreakKind::Modified,
                        format!(
                            "record {} holds the row hashed as record {orig}: rows were reordered",
                            row.seq
                        ),
                    ),
                    None => fail(
                        &mut report,
                        row.seq,
                        BreakKind::Modified,
                        format!(
                            "record {} does not match its hash: its content or link was changed",
                            row.seq
                        ),
                    ),
                }
                break 'pages;
            }
            if row.prev_hash != prev {
                let detail = match recent.iter().rev().position(|h| *h == row.prev_hash) {
                    Some(back) => format!(
                        "record {} links to record {} instead of {}: {} record(s) before it were inserted",
                        row.seq,
                        row.seq - 2 - back as u64,
                        row.seq - 1,
                        back + 1
                    ),
                    None => format!(
                        "record {} does not link to record {}: rows were inserted or reordered",
                        row.seq,
                        row.seq - 1
                    ),
                };
                // The first row that is out of place is the one before, when it links back correctly.
                let at = if recent
                    .iter()
                    .rev()
                    .position(|h| *h == row.prev_hash)
                    .is_some()
                {
                    row.seq - 1
                } else {
                    row.seq
                };
                fail(&mut report, at, BreakKind::BadLink, detail);
                break 'pages;
            }
            match serde_json::from_str::<AuditRecord>(&row.content) {
                Ok(r) if r.tenant == row.tenant && r.time_ms == row.time_ms => {}
                Ok(_) => {
                    fail(
                        &mut report,
                        row.seq,
                        BreakKind::ColumnMismatch,
                        format!(
                            "record {}'s tenant or time column differs from its hashed content",
                            row.seq
                        ),
                    );
                    break 'pages;
                }
                Err(e) => {
                    fail(
                        &mut report,
                        row.seq,
                        BreakKind::Modified,
                        format!("record {} is not a valid record: {e}", row.seq),
                    );
                    break 'pages;
                }
            }
            recent.push(row.hash.clone());
            if recent.len() > 64 {
                recent.remove(0);
            }
            prev = row.hash;
            report.last_seq = Some(row.seq);
            expect_seq += 1;
        }
    }
    report.head_hash = prev.clone();
    if report.ok {
        let (head_seq, head_hash) = store.audit_head()?;
        let last = expect_seq - 1;
        if head_seq != last || head_hash != prev {
            let detail = if head_seq > last {
                format!("the chain ends at record {last} but {head_seq} were appended: the last records were deleted")
            } else {
                format!("the chain ends at record {last}, after the recorded head {head_seq}: records were appended outside Mideum or the head was altered")
            };
            fail(
                &mut report,
                head_seq.min(last) + 1,
                BreakKind::HeadMismatch,
                detail,
            );
        }
    }
    Ok(report)
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Jsonl,
    Csv,
}

impl std::str::FromStr for ExportFormat {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "jsonl" => Ok(ExportFormat::Jsonl),
            "csv" => Ok(ExportFormat::Csv),
            _ => Err(StoreError::Invalid(format!(
                "expected --format jsonl or csv, found `{s}`"
            ))),
        }
    }
}

const CSV_COLUMNS: &str = "seq,time,tenant,key_id,origin,user,endpoint,requested_model,served_model,backend,track,findings,decision,reason,prompt_tokens,completion_tokens,latency_ms,status,prev_hash,hash";

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Writes the rows matching `filter` to `out`; returns how many.
pub fn export(
    store: &dyn Store,
    filter: &AuditFilter,
    format: ExportFormat,
    out: &mut dyn Write,
) -> Result<u64> {
    if format == ExportFormat::Csv {
        writeln!(out, "{CSV_COLUMNS}")?;
    }
    let mut n = 0u64;
    let mut after = 0u64;
    loop {
        let page = store.audit_page(filter, after, 1000)?;
        if page.is_empty() {
            break;
        }
        for row in page {
            after = row.seq;
            let r: AuditRecord = serde_json::from_str(&row.content).map_err(|e| {
                StoreError::Corrupt(format!("audit record {} is not valid JSON: {e}", row.seq))
            })?;
            match format {
                ExportFormat::Jsonl => {
                    let mut v = serde_json::json!({
                        "seq": row.seq,
                        "time": rfc3339(r.time_ms),
                    });
                    if let (Some(obj), Ok(serde_json::Value::Object(rec))) =
                        (v.as_object_mut(), serde_json::to_value(&r))
                    {
                        obj.extend(rec);
                        obj.insert("prev_hash".into(), row.prev_hash.clone().into());
                        obj.insert("hash".into(), row.hash.clone().into());
                    }
                    writeln!(out, "{v}")?;
                }
                ExportFormat::Csv => {
                    let findings: Vec<String> =
                        r.findings.iter().map(|(t, c)| format!("{t}:{c}")).collect();
                    let opt = |o: &Option<String>| o.clone().unwrap_or_default();
                    let fields = [
                        row.seq.to_string(),
                        rfc3339(r.time_ms),
                        r.tenant.clone(),
                        r.key_id.clone(),
                        r.origin.clone(),
                        opt(&r.user),
                        r.endpoint.clone(),
                        r.requested_model.clone(),
                        opt(&r.served_model),
                        opt(&r.backend),
                        opt(&r.track),
                        findings.join(";"),
                        r.decision.clone(),
                        r.reason.clone(),
                        r.prompt_tokens.to_string(),
                        r.completion_tokens.to_string(),
                        r.latency_ms.to_string(),
                        r.status.to_string(),
                        row.prev_hash.clone(),
                        row.hash.clone(),
                    ];
                    let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
                    writeln!(out, "{}", line.join(","))?;
                }
            }
            n += 1;
        }
    }
    Ok(n)
}

/// What [`prune`] did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PruneReport {
    pub pruned: u64,
    pub anchor: Option<Anchor>,
}

/// Default retention: two years.
pub const DEFAULT_RETENTION_MS: u64 = 730 * 86_400_000;

/// Removes the records older than `before_ms` (the longest prefix of the chain whose records
/// are all older), after verifying the chain, and stores a signed anchor for them.
pub fn prune(store: &dyn Store, before_ms: u64, key: &[u8]) -> Result<PruneReport> {
    let report = verify(store, Some(key))?;
    if let Some(b) = report.first_break {
        return Err(StoreError::Invalid(format!(
            "refusing to prune a broken chain (record {}: {}); run `mideum audit verify`",
            b.seq, b.detail
        )));
    }
    // The last record of the prefix that is entirely older than `before_ms`.
    let mut through: Option<StoredRow> = None;
    let mut after = 0u64;
    'pages: loop {
        let page = store.audit_page(&AuditFilter::default(), after, 1000)?;
        if page.is_empty() {
            break;
        }
        for row in page {
            after = row.seq;
            if row.time_ms >= before_ms {
                break 'pages;
            }
            through = Some(row);
        }
    }
    let Some(last) = through else {
        return Ok(PruneReport {
            pruned: 0,
            anchor: None,
        });
    };
    let anchor = sign_anchor(
        Anchor {
            through_seq: last.seq,
            through_hash: last.hash.clone(),
            before_ms,
            created_ms: now_ms(),
            mac: String::new(),
        },
        key,
    );
    let pruned = store.prune_through(&anchor)?;
    Ok(PruneReport {
        pruned,
        anchor: Some(anchor),
    })
}
