//! The store-backed authenticator, audit sink and `/admin/` API over a real socket: two
//! tenants that must not see each other, rate limits and budgets answered 429 in OpenAI's
//! shape with Retry-After, and audit records durable before `record` resolves.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use mideum_gateway::admin::Admin;
use mideum_gateway::auth::{AuditSink, Authenticator, RequestRecord};
use mideum_gateway::tenants::StoreAuth;
use mideum_gateway::AppState;
use mideum_store::{audit, Store};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ADMIN: &str = "admin-token-for-tests";
const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

struct Env {
    _dir: tempfile::TempDir,
    addr: String,
    auth: Arc<StoreAuth>,
    store: Arc<dyn Store>,
}

async fn start() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("t.db").display());
    let store: Arc<dyn Store> = Arc::from(mideum_store::open(&url).unwrap());
    let auth = Arc::new(StoreAuth::new(store.clone(), mideum_store::open(&url).unwrap()).unwrap());
    let mut st = AppState::new(None);
    st.set_authenticator(auth.clone());
    st.set_audit_sink(auth.clone());
    st.admin = Some(Arc::new(Admin::new(
        store.clone(),
        Some(ADMIN.into()),
        None,
    )));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(mideum_gateway::serve(listener, Arc::new(st)));
    Env {
        _dir: dir,
        addr,
        auth,
        store,
    }
}

struct Reply {
    status: u16,
    headers: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

async fn http(addr: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> Reply {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(30), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut r = rest;
        while let Some((len, tail)) = r.split_once("\r\n") {
            let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            r = &tail[n + 2..];
        }
        out
    } else {
        rest.to_string()
    };
    Reply {
        status,
        headers: head.to_ascii_lowercase(),
        body,
    }
}

fn rec(tenant: &str, key: &str, tokens: u64) -> RequestRecord {
    RequestRecord {
        time_unix_ms: mideum_store::time::now_ms(),
        tenant: tenant.into(),
        key_id: key.into(),
        origin: LO,
        user: Some("u1".into()),
        endpoint: "chat.completions",
        requested_model: "midm".into(),
        served_model: Some("tiny-mini".into()),
        backend: Some("local".into()),
        track: Some("local".into()),
        findings: vec![("phone".into(), 1)],
        decision: "allow".into(),
        reason: "test".into(),
        prompt_tokens: tokens,
        completion_tokens: 0,
        latency_ms: 1,
        status: 200,
    }
}

/// Two tenants with a key each, made through the admin API.
async fn two_tenants(e: &Env) -> (String, String, String, String) {
    let a = &e.addr;
    for body in [
        json!({"id": "acme", "allowed_models": ["midm"], "requests_per_min": 3}),
        json!({"id": "globex", "tokens_per_day": 100, "notice": "AI 생성"}),
    ] {
        let r = http(a, "POST", "/admin/tenants", Some(ADMIN), &body.to_string()).await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let mut out = Vec::new();
    for t in ["acme", "globex"] {
        let r = http(
            a,
            "POST",
            &format!("/admin/tenants/{t}/keys"),
            Some(ADMIN),
            r#"{"label":"ci"}"#,
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let v = r.json();
        assert!(v.get("hash").is_none(), "the hash is never sent: {v}");
        out.push(v["secret"].as_str().unwrap().to_string());
        out.push(v["id"].as_str().unwrap().to_string());
    }
    (
        out[0].clone(),
        out[1].clone(),
        out[2].clone(),
        out[3].clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_keeps_tenants_apart() {
    let e = start().await;
    let a = e.addr.as_str();
    let (ka, ida, kb, idb) = two_tenants(&e).await;
    // Audit records for both tenants.
    e.auth.record(rec("acme", &ida, 5)).await.unwrap();
    e.auth.record(rec("globex", &idb, 7)).await.unwrap();

    // No token, a wrong token: 401 in OpenAI's shape, on every endpoint.
    let endpoints = [
        ("GET", "/admin/tenants"),
        ("GET", "/admin/tenants/acme"),
        ("GET", "/admin/keys"),
        ("GET", "/admin/tenants/acme/keys"),
        ("GET", "/admin/usage?tenant=acme"),
        ("GET", "/admin/audit/export?tenant=acme"),
        ("GET", "/admin/audit/verify"),
        ("POST", "/admin/tenants"),
        ("POST", "/admin/tenants/acme/keys"),
        ("POST", &format!("/admin/keys/{idb}/revoke")),
    ];
    for (m, p) in endpoints {
        for t in [None, Some("wrong")] {
            let r = http(a, m, p, t, "{}").await;
            assert_eq!(r.status, 401, "{m} {p} with {t:?}: {}", r.body);
            assert_eq!(r.json()["error"]["code"], "invalid_api_key");
        }
    }
    // A tenant key reading another tenant: 403 on every read endpoint.
    for p in [
        "/admin/tenants/globex",
        "/admin/tenants/globex/keys",
        "/admin/keys?tenant=globex",
        "/admin/usage?tenant=globex",
        "/admin/audit/export?tenant=globex",
    ] {
        let r = http(a, "GET", p, Some(&ka), "").await;
        assert_eq!(r.status, 403, "{p}: {}", r.body);
        assert_eq!(r.json()["error"]["type"], "permission_error");
    }
    // Writes and whole-chain operations need the admin token.
    for (m, p, b) in [
        ("POST", "/admin/tenants".to_string(), r#"{"id":"evil"}"#),
        ("POST", "/admin/tenants/acme/keys".to_string(), "{}"),
        ("POST", format!("/admin/keys/{idb}/revoke"), ""),
        ("POST", format!("/admin/keys/{ida}/revoke"), ""),
        ("GET", "/admin/audit/verify".to_string(), ""),
    ] {
        let r = http(a, m, &p, Some(&ka), b).await;
        assert_eq!(r.status, 403, "{m} {p}: {}", r.body);
    }
    // A tenant key sees only its own tenant, keys, usage and audit records.
    let r = http(a, "GET", "/admin/tenants", Some(&ka), "").await.json();
    assert_eq!(r["data"].as_array().unwrap().len(), 1);
    assert_eq!(r["data"][0]["id"], "acme");
    let r = http(a, "GET", "/admin/keys", Some(&kb), "").await.json();
    let ids: Vec<&str> = r["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["globex"]);
    let r = http(a, "GET", "/admin/usage", Some(&kb), "").await.json();
    assert_eq!(r["data"][0]["tenant"], "globex");
    assert_eq!(r["data"][0]["prompt_tokens"], 7);
    let r = http(a, "GET", "/admin/audit/export", Some(&ka), "").await;
    assert_eq!(r.status, 200);
    let lines: Vec<Value> = r
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["tenant"], "acme");
    assert_eq!(lines[0]["seq"], 1);
    // The admin sees everything.
    let r = http(a, "GET", "/admin/tenants", Some(ADMIN), "")
        .await
        .json();
    assert_eq!(r["data"].as_array().unwrap().len(), 2);
    let r = http(a, "GET", "/admin/audit/export?format=csv", Some(ADMIN), "").await;
    assert_eq!(r.body.lines().count(), 3, "{}", r.body);
    assert!(r.headers.contains("text/csv"));
    let r = http(a, "GET", "/admin/audit/verify", Some(ADMIN), "")
        .await
        .json();
    assert_eq!(
        (r["ok"].as_bool(), r["records_checked"].as_u64()),
        (Some(true), Some(2))
    );
    let r = http(a, "GET", "/admin/tenants/globex", Some(ADMIN), "")
        .await
        .json();
    assert_eq!(r["config"]["notice"], "AI 생성");

    // Bad input: clear 400/404/409 errors.
    for (m, p, b, code) in [
        ("POST", "/admin/tenants", "not json", 400),
        ("POST", "/admin/tenants", r#"{"id":"bad id!"}"#, 400),
        ("POST", "/admin/tenants", r#"{"id":"x","rpm":5}"#, 400),
        ("POST", "/admin/tenants", r#"{"id":"acme"}"#, 409),
        ("POST", "/admin/tenants/nobody/keys", "{}", 404),
        ("POST", "/admin/keys/mdk_nothing/revoke", "", 404),
        ("GET", "/admin/tenants/nobody", "", 404),
        ("GET", "/admin/usage", "", 400),
        ("GET", "/admin/usage?tenant=acme&period=2026-13", "", 400),
        ("GET", "/admin/audit/export?since=yesterday", "", 400),
        ("GET", "/admin/audit/export?format=xml", "", 400),
    ] {
        let r = http(a, m, p, Some(ADMIN), b).await;
        assert_eq!(r.status, code, "{m} {p} {b}: {}", r.body);
        assert!(r.json()["error"]["message"].is_string());
    }

    // Revocation through the API is effective on the next request.
    let r = http(
        a,
        "POST",
        &format!("/admin/keys/{ida}/revoke"),
        Some(ADMIN),
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        http(a, "GET", "/admin/tenants", Some(&ka), "").await.status,
        401
    );
    let err = e.auth.authenticate(Some(&ka), LO).unwrap_err();
    assert_eq!(
        (err.status.as_u16(), err.code),
        (401, Some("invalid_api_key"))
    );
    assert!(err.message.contains("revoked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principal_limits_and_budgets() {
    let e = start().await;
    let (ka, _ida, kb, idb) = two_tenants(&e).await;
    let pa = e.auth.authenticate(Some(&ka), LO).unwrap();
    assert_eq!(pa.tenant, "acme");
    assert!(pa.may_use("midm") && !pa.may_use("globex-model"));
    let pb = e.auth.authenticate(Some(&kb), LO).unwrap();
    assert_eq!(
        (pb.tenant.as_str(), pb.notice.as_deref()),
        ("globex", Some("AI 생성"))
    );
    assert!(e.auth.authenticate(None, LO).is_err());

    // acme: 3 requests per minute; the 4th of a burst is refused with Retry-After.
    for _ in 0..3 {
        e.auth.admit(&pa, 10).unwrap();
    }
    let err = e.auth.admit(&pa, 10).unwrap_err();
    assert_eq!(err.status.as_u16(), 429);
    assert_eq!(
        (err.kind, err.code),
        ("rate_limit_error", Some("rate_limit_exceeded"))
    );
    assert_eq!(err.retry_after, Some(20));
    let body = err.body();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("3 requests per minute"));
    // Another tenant is not affected by acme's burst.
    e.auth.admit(&pb, 10).unwrap();

    // globex: 100 tokens per day, 30 per request: the 4th request crosses the budget and
    // the 5th is refused (within one request of the budget).
    let mut done = 0;
    while e.auth.admit(&pb, 30).is_ok() {
        e.auth.record(rec("globex", &idb, 30)).await.unwrap();
        e.auth.settle("globex", &idb, 30, 0);
        done += 1;
        assert!(done < 10);
    }
    assert_eq!(done, 4);
    let err = e.auth.admit(&pb, 30).unwrap_err();
    assert_eq!(
        (err.status.as_u16(), err.code),
        (429, Some("insufficient_quota"))
    );
    assert!(err.retry_after.unwrap() > 0);
    // The records were durable when `record` resolved: a fresh connection sees them.
    let r = audit::verify(e.store.as_ref(), None).unwrap();
    assert!(r.ok && r.records_checked == 4, "{r:?}");
}
