//! Scenarios every store must pass, run against SQLite and PostgreSQL. Each scenario gets a
//! fresh store from the harness, by URL, plus a way to run raw SQL on it (to tamper).

#![allow(dead_code)]

use std::sync::Arc;

use mideum_store::audit::{self, row_hash, BreakKind, ExportFormat};
use mideum_store::time::{day_key, month_key, now_ms};
use mideum_store::{
    keys, AuditFilter, AuditRecord, AuditWriter, AuthError, Denied, Limiter, Store, Tenant,
    TenantConfig,
};

pub type Raw = Box<dyn Fn(&str)>;

pub trait Harness {
    /// A URL of an empty store, and a raw-SQL runner on it.
    fn fresh(&self) -> (String, Raw);
}

pub fn record(tenant: &str, i: u64, time_ms: u64) -> AuditRecord {
    AuditRecord {
        time_ms,
        tenant: tenant.into(),
        key_id: format!("mdk_{tenant}"),
        origin: "127.0.0.1".into(),
        user: if i.is_multiple_of(2) {
            Some(format!("user-{i}"))
        } else {
            None
        },
        endpoint: "/v1/chat/completions".into(),
        requested_model: "midm".into(),
        served_model: Some("midm-mini".into()),
        backend: Some("local".into()),
        track: Some("local".into()),
        findings: vec![("rrn".into(), 1), ("phone, kr".into(), i as u32)],
        decision: "allow".into(),
        reason: "no personal data leaves".into(),
        prompt_tokens: 10 + i,
        completion_tokens: 5,
        latency_ms: 12,
        status: 200,
    }
}

fn tenant(id: &str, config: TenantConfig) -> Tenant {
    Tenant {
        id: id.into(),
        config,
        created_ms: now_ms(),
    }
}

/// A store with ten records, alternating tenants `a` and `b`, one second apart from T0.
pub const T0: u64 = 1_764_000_000_000;
fn ten(h: &dyn Harness) -> (Box<dyn Store>, Raw) {
    let (url, raw) = h.fresh();
    let store = mideum_store::open(&url).unwrap();
    let recs: Vec<AuditRecord> = (1..=10)
        .map(|i: u64| {
            record(
                if !i.is_multiple_of(2) { "a" } else { "b" },
                i,
                T0 + i * 1000,
            )
        })
        .collect();
    // Two batches, so the chain crosses a transaction boundary.
    assert_eq!(store.append_audit(&recs[..4]).unwrap(), vec![1, 2, 3, 4]);
    assert_eq!(
        store.append_audit(&recs[4..]).unwrap(),
        (5..=10).collect::<Vec<u64>>()
    );
    let r = audit::verify(store.as_ref(), None).unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(
        (r.records_checked, r.first_seq, r.last_seq),
        (10, Some(1), Some(10))
    );
    (store, raw)
}

fn expect_break(store: &dyn Store, seq: u64, kind: BreakKind, what: &str) {
    let r = audit::verify(store, None).unwrap();
    assert!(!r.ok, "{what}: verify passed a tampered chain");
    let b = r.first_break.unwrap();
    assert_eq!((b.seq, b.kind), (seq, kind), "{what}: {}", b.detail);
}

pub fn tamper_modify(h: &dyn Harness) {
    let (s, raw) = ten(h);
    raw("UPDATE audit_log SET content = replace(content, '\"status\":200', '\"status\":500') WHERE seq = 4");
    expect_break(s.as_ref(), 4, BreakKind::Modified, "modified content");
}

pub fn tamper_modify_link(h: &dyn Harness) {
    let (s, raw) = ten(h);
    raw("UPDATE audit_log SET prev_hash = hash WHERE seq = 7");
    expect_break(s.as_ref(), 7, BreakKind::Modified, "modified link");
}

pub fn tamper_column(h: &dyn Harness) {
    let (s, raw) = ten(h);
    raw("UPDATE audit_log SET tenant = 'b' WHERE seq = 3");
    expect_break(
        s.as_ref(),
        3,
        BreakKind::ColumnMismatch,
        "moved to another tenant",
    );
}

pub fn tamper_delete(h: &dyn Harness) {
    let (s, raw) = ten(h);
    raw("DELETE FROM audit_log WHERE seq = 5");
    expect_break(s.as_ref(), 5, BreakKind::Missing, "deleted row");
    let (s, raw) = ten(h);
    raw("DELETE FROM audit_log WHERE seq >= 9");
    expect_break(s.as_ref(), 9, BreakKind::HeadMismatch, "deleted tail");
    let (s, raw) = ten(h);
    raw("DELETE FROM audit_log WHERE seq = 1");
    expect_break(s.as_ref(), 1, BreakKind::Missing, "deleted first row");
}

pub fn tamper_reorder(h: &dyn Harness) {
    let (s, raw) = ten(h);
    raw("UPDATE audit_log SET seq = 1003 WHERE seq = 3; UPDATE audit_log SET seq = 3 WHERE seq = 6; UPDATE audit_log SET seq = 6 WHERE seq = 1003");
    expect_break(s.as_ref(), 3, BreakKind::Modified, "swapped rows");
}

pub fn tamper_insert(h: &dyn Harness) {
    // A forged row with a correct hash of its own, put at 6 by renumbering the rest.
    let (s, raw) = ten(h);
    let five = s
        .audit_page(&AuditFilter::default(), 4, 1)
        .unwrap()
        .remove(0);
    let forged = record("a", 99, T0 + 5500).canonical().unwrap();
    let hash = row_hash(6, &five.hash, &forged);
    raw("UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 6; UPDATE audit_log SET seq = seq - 999 WHERE seq >= 1000; UPDATE audit_head SET seq = 11");
    raw(&format!(
        "INSERT INTO audit_log (seq, time_ms, tenant, prev_hash, hash, content) VALUES (6, {}, 'a', '{}', '{hash}', '{}')",
        T0 + 5500,
        five.hash,
        forged.replace('\'', "''")
    ));
    expect_break(s.as_ref(), 6, BreakKind::BadLink, "inserted row");

    // A forged row appended at the end, head left alone.
    let (s, raw) = ten(h);
    let (_, head) = s.audit_head().unwrap();
    let hash = row_hash(11, &head, &forged);
    raw(&format!(
        "INSERT INTO audit_log (seq, time_ms, tenant, prev_hash, hash, content) VALUES (11, {}, 'a', '{head}', '{hash}', '{}')",
        T0 + 5500,
        forged.replace('\'', "''")
    ));
    expect_break(s.as_ref(), 11, BreakKind::HeadMismatch, "appended row");
}

pub fn prune_and_anchor(h: &dyn Harness) {
    let key = b"0123456789abcdef-test-key";
    let (s, raw) = ten(h);
    // Records 1..=4 are older than T0 + 4500.
    let p = audit::prune(s.as_ref(), T0 + 4500, key).unwrap();
    assert_eq!(p.pruned, 4);
    assert_eq!(p.anchor.as_ref().unwrap().through_seq, 4);
    let r = audit::verify(s.as_ref(), Some(key)).unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(
        (r.records_checked, r.first_seq, r.anchored_through),
        (6, Some(5), Some(4))
    );
    // No key, wrong key: the anchor cannot be trusted.
    assert_eq!(
        audit::verify(s.as_ref(), None)
            .unwrap()
            .first_break
            .unwrap()
            .kind,
        BreakKind::Anchor
    );
    assert!(
        !audit::verify(s.as_ref(), Some(b"another-key-16-bytes"))
            .unwrap()
            .ok
    );
    // New records still chain on; pruning again moves the anchor.
    s.append_audit(&[record("a", 11, T0 + 11_000)]).unwrap();
    assert!(audit::verify(s.as_ref(), Some(key)).unwrap().ok);
    assert_eq!(audit::prune(s.as_ref(), T0 + 4500, key).unwrap().pruned, 0);
    assert_eq!(audit::prune(s.as_ref(), T0 + 7500, key).unwrap().pruned, 3);
    assert!(audit::verify(s.as_ref(), Some(key)).unwrap().ok);
    // Moving the anchor forward by hand breaks its signature.
    raw("UPDATE audit_anchor SET anchor = replace(anchor, '\"through_seq\":7', '\"through_seq\":8')");
    let b = audit::verify(s.as_ref(), Some(key))
        .unwrap()
        .first_break
        .unwrap();
    assert_eq!(b.kind, BreakKind::Anchor);
    // Deleting the anchor leaves a chain that starts in the middle.
    raw("DELETE FROM audit_anchor");
    expect_break(s.as_ref(), 1, BreakKind::Missing, "anchor deleted");
    // A broken chain is not pruned (it would be signed over).
    let (s, raw) = ten(h);
    raw("DELETE FROM audit_log WHERE seq = 2");
    assert!(audit::prune(s.as_ref(), T0 + 4500, key).is_err());
}

pub fn export_filters(h: &dyn Harness) {
    let (s, _) = ten(h);
    let mut out = Vec::new();
    let f = AuditFilter {
        tenant: Some("b".into()),
        since_ms: Some(T0 + 4000),
        until_ms: Some(T0 + 9000),
    };
    assert_eq!(
        audit::export(s.as_ref(), &f, ExportFormat::Jsonl, &mut out).unwrap(),
        3
    );
    let text = String::from_utf8(out).unwrap();
    let seqs: Vec<u64> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["tenant"], "b");
            v["seq"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(seqs, vec![4, 6, 8]);
    let mut out = Vec::new();
    assert_eq!(
        audit::export(
            s.as_ref(),
            &AuditFilter::default(),
            ExportFormat::Csv,
            &mut out
        )
        .unwrap(),
        10
    );
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 11);
    assert!(lines[0].starts_with("seq,time,tenant,"));
    // A finding type with a comma is quoted.
    assert!(lines[1].contains("\"rrn:1;phone, kr:1\""), "{}", lines[1]);
    assert!(
        lines[1].starts_with("1,2025-11-24T16:00:01.000Z,a,"),
        "{}",
        lines[1]
    );
}

pub fn tenants_keys_usage(h: &dyn Harness) {
    let (url, raw) = h.fresh();
    let s = mideum_store::open(&url).unwrap();
    let cfg = TenantConfig {
        allowed_models: Some(vec!["midm".into()]),
        notice: Some("AI 생성".into()),
        ..Default::default()
    };
    s.create_tenant(&tenant("acme", cfg.clone())).unwrap();
    s.create_tenant(&tenant("globex", TenantConfig::default()))
        .unwrap();
    assert!(matches!(
        s.create_tenant(&tenant("acme", cfg.clone())),
        Err(mideum_store::StoreError::Conflict(_))
    ));
    assert_eq!(s.tenant("acme").unwrap().unwrap().config, cfg);
    assert_eq!(s.tenants().unwrap().len(), 2);
    assert!(keys::create_key(s.as_ref(), "nobody", None, None).is_err());

    let k1 = keys::create_key(s.as_ref(), "acme", Some("ci".into()), None).unwrap();
    let k2 = keys::create_key(s.as_ref(), "globex", None, None).unwrap();
    // The secret is not stored: only its hash.
    raw("SELECT 1");
    assert!(!format!("{:?}", s.keys(None).unwrap()).contains(&k1.secret[k1.key.id.len() + 1..]));
    let a = keys::authenticate(s.as_ref(), Some(&k1.secret))
        .unwrap()
        .unwrap();
    assert_eq!(
        (a.tenant.id.as_str(), a.key_id.as_str()),
        ("acme", k1.key.id.as_str())
    );
    assert_eq!(
        keys::authenticate(s.as_ref(), None).unwrap().unwrap_err(),
        AuthError::Missing
    );
    assert_eq!(
        keys::authenticate(s.as_ref(), Some("mdk_nope"))
            .unwrap()
            .unwrap_err(),
        AuthError::Unknown
    );
    // Isolation of key management: acme cannot revoke globex's key, nor see it.
    assert!(!s.revoke_key(&k2.key.id, Some("acme"), now_ms()).unwrap());
    assert_eq!(s.keys(Some("acme")).unwrap().len(), 1);
    // Revocation is effective on the next request.
    assert!(s.revoke_key(&k1.key.id, Some("acme"), now_ms()).unwrap());
    assert!(matches!(
        keys::authenticate(s.as_ref(), Some(&k1.secret)).unwrap(),
        Err(AuthError::Revoked(_))
    ));
    // Expiry.
    let k3 = keys::create_key(s.as_ref(), "globex", None, Some(now_ms() - 1)).unwrap();
    assert!(matches!(
        keys::authenticate(s.as_ref(), Some(&k3.secret)).unwrap(),
        Err(AuthError::Expired(_))
    ));
    let k4 = keys::create_key(s.as_ref(), "globex", None, Some(now_ms() + 60_000)).unwrap();
    assert!(keys::authenticate(s.as_ref(), Some(&k4.secret))
        .unwrap()
        .is_ok());

    // Usage follows the audit records, per tenant, per day and month.
    let t = now_ms();
    s.append_audit(&[
        record("acme", 1, t),
        record("acme", 2, t),
        record("globex", 3, t),
    ])
    .unwrap();
    let u = s.usage("acme", &day_key(t)).unwrap();
    assert_eq!(
        (u.requests, u.prompt_tokens, u.completion_tokens),
        (2, 23, 10)
    );
    assert_eq!(s.usage("acme", &month_key(t)).unwrap().tokens(), 33);
    assert_eq!(s.usage("globex", &day_key(t)).unwrap().tokens(), 18);
}

pub fn limits(h: &dyn Harness) {
    let (url, _) = h.fresh();
    let s = mideum_store::open(&url).unwrap();
    let t = tenant(
        "acme",
        TenantConfig {
            requests_per_min: Some(5),
            tokens_per_day: Some(100),
            ..Default::default()
        },
    );
    s.create_tenant(&t).unwrap();
    let lim = Limiter::new();
    let now = now_ms();
    for _ in 0..5 {
        assert_eq!(lim.admit(s.as_ref(), &t, 1, now).unwrap(), Ok(()));
    }
    let d = lim.admit(s.as_ref(), &t, 1, now).unwrap().unwrap_err();
    assert!(
        matches!(
            d,
            Denied::Requests {
                limit: 5,
                retry_after_s: 12
            }
        ),
        "{d:?}"
    );
    // One request back after 12 s.
    assert_eq!(lim.admit(s.as_ref(), &t, 1, now + 12_000).unwrap(), Ok(()));

    // Budget: requests of 15 tokens each until 100 is reached; the request that crosses it
    // is the last admitted (± one request).
    let tb = tenant(
        "budget",
        TenantConfig {
            tokens_per_day: Some(100),
            ..Default::default()
        },
    );
    s.create_tenant(&tb).unwrap();
    let mut admitted = 0;
    while lim.admit(s.as_ref(), &tb, 15, now).unwrap().is_ok() {
        admitted += 1;
        let mut r = record("budget", 0, now);
        r.prompt_tokens = 10;
        r.completion_tokens = 5;
        s.append_audit(&[r]).unwrap();
        assert!(admitted < 100);
    }
    assert_eq!(
        admitted, 7,
        "7 x 15 = 105 tokens: stops within one request of 100"
    );
    let d = lim.admit(s.as_ref(), &tb, 15, now).unwrap().unwrap_err();
    assert!(d.is_budget() && d.retry_after_s() > 0);
    // Tokens per minute: a 40-token request on a 100/min bucket, settled at 90 actual.
    let tt = tenant(
        "tpm",
        TenantConfig {
            tokens_per_min: Some(100),
            ..Default::default()
        },
    );
    assert_eq!(lim.admit(s.as_ref(), &tt, 40, now).unwrap(), Ok(()));
    lim.settle("tpm", 40, 90);
    assert!(matches!(
        lim.admit(s.as_ref(), &tt, 20, now).unwrap(),
        Err(Denied::Tokens { .. })
    ));
    assert_eq!(
        lim.admit(s.as_ref(), &tt, 20, now + 60_000).unwrap(),
        Ok(())
    );
}

pub fn writer_group_commit(h: &dyn Harness) {
    let (url, _) = h.fresh();
    let w = Arc::new(AuditWriter::start(mideum_store::open(&url).unwrap()).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let w = w.clone();
            std::thread::spawn(move || {
                (0..40)
                    .map(|i| w.append(record("a", i, T0 + i)).unwrap())
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut seqs: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=320).collect::<Vec<u64>>());
    w.shutdown();
    assert!(w.append(record("a", 0, T0)).is_err());
    let s = mideum_store::open(&url).unwrap();
    let r = audit::verify(s.as_ref(), None).unwrap();
    assert!(r.ok && r.records_checked == 320, "{r:?}");
}

pub fn two_writers_share_one_chain(h: &dyn Harness) {
    // Two store connections appending at once (as two instances would) keep one chain.
    let (url, _) = h.fresh();
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let s = mideum_store::open(&url).unwrap();
                for i in 0..30 {
                    s.append_audit(&[record("a", i, T0 + i), record("b", i, T0 + i)])
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let s = mideum_store::open(&url).unwrap();
    let r = audit::verify(s.as_ref(), None).unwrap();
    assert!(r.ok && r.records_checked == 120, "{r:?}");
}

/// Runs every scenario.
pub fn all(h: &dyn Harness) {
    tamper_modify(h);
    tamper_modify_link(h);
    tamper_column(h);
    tamper_delete(h);
    tamper_reorder(h);
    tamper_insert(h);
    prune_and_anchor(h);
    export_filters(h);
    tenants_keys_usage(h);
    limits(h);
    writer_group_commit(h);
    two_writers_share_one_chain(h);
}
