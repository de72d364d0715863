//! Audit durability under SIGKILL: `mideum serve --store sqlite:…` is killed at random moments
//! while clients send requests, then restarted; every request a client saw succeed must have
//! its audit record, and the chain must verify.

mod common;

use common::{bin, post, serve};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn cli(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(bin()).args(args).output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn start(port: u16, store: &str) -> Child {
    serve(port, &["--store", store])
}

/// A small xorshift generator seeded from the clock: kill times differ from run to run.
fn rng() -> impl FnMut() -> u64 {
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(88172645463325252)
        | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

#[test]
fn every_acknowledged_request_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", dir.path().join("store.db").display());
    let (ok, _, err) = cli(&["tenants", "add", "acme", "--store", &store]);
    assert!(ok, "{err}");
    let (ok, key, err) = cli(&["keys", "create", "acme", "--store", &store]);
    assert!(ok, "{err}");
    let key = key.trim().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    let succeeded = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut server = start(port, &store);
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (succeeded, stop, key) = (succeeded.clone(), stop.clone(), key.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let user = format!("c{c}-r{n}");
                    let body = format!(
                        r#"{{"model":"tiny-mini","messages":[{{"role":"user","content":"안녕"}}],"max_tokens":2,"user":"{user}"}}"#
                    );
                    match post(port, "/v1/chat/completions", &key, &body) {
                        Some((200, b)) if b.contains("\"choices\"") => {
                            succeeded.lock().unwrap().push(user)
                        }
                        Some((s, b)) if s != 200 => panic!("unexpected {s}: {b}"),
                        _ => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        })
        .collect();
    let mut next = rng();
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(300 + next() % 1200));
        server.kill().unwrap(); // SIGKILL
        server.wait().unwrap();
        server = start(port, &store);
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    server.kill().unwrap();
    server.wait().unwrap();

    let succeeded = succeeded.lock().unwrap().clone();
    assert!(
        succeeded.len() >= 4,
        "too few successful requests ({}) to test anything",
        succeeded.len()
    );
    let (ok, out, err) = cli(&["audit", "verify", "--store", &store]);
    assert!(ok, "chain does not verify: {out} {err}");
    let (ok, out, err) = cli(&["audit", "export", "--store", &store, "--tenant", "acme"]);
    assert!(ok, "{err}");
    let recorded: std::collections::HashSet<String> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["user"].as_str().map(str::to_string))
        .collect();
    let missing: Vec<&String> = succeeded
        .iter()
        .filter(|u| !recorded.contains(*u))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged requests have no audit record: {missing:?}",
        missing.len()
    );
    eprintln!(
        "{} acknowledged requests, {} audit records, chain verified after 4 SIGKILLs",
        succeeded.len(),
        recorded.len()
    );
}

#[test]
fn store_commands_reject_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", dir.path().join("s.db").display());
    for (args, want) in [
        (vec!["tenants", "list"], "no store given"),
        (
            vec!["tenants", "add", "bad id", "--store", &store],
            "tenant id",
        ),
        (
            vec!["keys", "create", "nobody", "--store", &store],
            "tenant `nobody`",
        ),
        (
            vec!["keys", "revoke", "mdk_nope", "--store", &store],
            "no key",
        ),
        (
            vec!["tenants", "show", "nobody", "--store", &store],
            "no tenant",
        ),
        (
            vec!["audit", "export", "--since", "yesterday", "--store", &store],
            "YYYY-MM-DD",
        ),
        (
            vec!["audit", "export", "--format", "xml", "--store", &store],
            "jsonl or csv",
        ),
        (
            vec!["audit", "prune", "--store", &store],
            "MIDEUM_AUDIT_KEY",
        ),
        (
            vec!["audit", "verify", "--store", "sqlite:/nonexistent-dir/x.db"],
            "cannot open",
        ),
    ] {
        let o = Command::new(bin())
            .args(&args)
            .env_remove("MIDEUM_STORE")
            .env_remove("MIDEUM_AUDIT_KEY")
            .env_remove("MIDEUM_AUDIT_KEY_FILE")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // The happy path: add, list, key, revoke, verify an empty chain.
    assert!(cli(&["tenants", "add", "acme", "--rpm", "5", "--models", "a,b", "--store", &store]).0);
    let (_, out, _) = cli(&["tenants", "show", "acme", "--json", "--store", &store]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["config"]["allowed_models"], serde_json::json!(["a", "b"]));
    let (ok, out, _) = cli(&["keys", "create", "acme", "--json", "--store", &store]);
    assert!(ok);
    let k: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = k["id"].as_str().unwrap();
    let (_, list, _) = cli(&["keys", "list", "--store", &store]);
    assert!(
        list.contains(id)
            && list.contains("active")
            && !list.contains(k["secret"].as_str().unwrap())
    );
    assert!(cli(&["keys", "revoke", id, "--store", &store]).0);
    assert!(cli(&["keys", "list", "--store", &store])
        .1
        .contains("revoked"));
    let (ok, out, _) = cli(&["audit", "verify", "--store", &store]);
    assert!(ok && out.starts_with("ok: 0 records"), "{out}");
}

/// Over the real request path: a tenant's burst over its rate limit gets 429 with Retry-After
/// in OpenAI's shape, a budget stops a tenant, a key cannot use a model its tenant may not,
/// and each tenant's usage counts only its own requests.
#[test]
fn limits_and_isolation_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", dir.path().join("store.db").display());
    assert!(cli(&["tenants", "add", "acme", "--rpm", "2", "--store", &store]).0);
    assert!(
        cli(&[
            "tenants",
            "add",
            "globex",
            "--models",
            "other-model",
            "--store",
            &store
        ])
        .0
    );
    assert!(
        cli(&[
            "tenants",
            "add",
            "tiny",
            "--tokens-per-day",
            "1",
            "--store",
            &store
        ])
        .0
    );
    let key = |t: &str| {
        cli(&["keys", "create", t, "--store", &store])
            .1
            .trim()
            .to_string()
    };
    let (ka, kg, kt) = (key("acme"), key("globex"), key("tiny"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = start(port, &store);
    let body =
        r#"{"model":"tiny-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":2}"#;
    let raw = |k: &str| {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {k}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let status = |r: &str| r.split_whitespace().nth(1).unwrap_or("").to_string();
    assert_eq!(status(&raw(&ka)), "200");
    assert_eq!(status(&raw(&ka)), "200");
    let r = raw(&ka);
    assert_eq!(status(&r), "429", "{r}");
    assert!(r.to_ascii_lowercase().contains("retry-after: 30"), "{r}");
    assert!(
        r.contains("\"code\":\"rate_limit_exceeded\"")
            && r.contains("\"type\":\"rate_limit_error\""),
        "{r}"
    );
    // Another tenant's key: refused for a model it may not use.
    let r = raw(&kg);
    assert_eq!(status(&r), "403", "{r}");
    // Budget of 1 token a day: the first request passes (± one request), the next is refused.
    assert_eq!(status(&raw(&kt)), "200");
    let r = raw(&kt);
    assert_eq!(status(&r), "429", "{r}");
    assert!(r.contains("insufficient_quota"), "{r}");
    // No key, a made-up key: 401.
    assert_eq!(status(&raw("mdk_000000000000_00")), "401");
    server.kill().unwrap();
    server.wait().unwrap();
    // Usage and audit records stay per tenant.
    let (_, out, _) = cli(&["audit", "export", "--tenant", "acme", "--store", &store]);
    assert!(
        out.lines().count() >= 3 && out.lines().all(|l| l.contains("\"tenant\":\"acme\"")),
        "{out}"
    );
    let (_, out, _) = cli(&["audit", "export", "--tenant", "globex", "--store", &store]);
    assert!(
        out.lines().count() == 1 && out.contains("\"status\":403"),
        "{out}"
    );
    let (ok, _, err) = cli(&["audit", "verify", "--store", &store]);
    assert!(ok, "{err}");
}
