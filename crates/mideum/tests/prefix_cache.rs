//! `mideum serve --prefix-cache-dir`: the default system prompt is computed at startup and its
//! KV blocks written to the directory; a restarted server restores them instead of computing
//! them again, and a damaged file is recomputed and replaced, never trusted.

mod common;

use common::{free_port, post, request, serve};
use std::time::{Duration, Instant};

/// The value of a Prometheus counter or gauge from `/metrics`.
fn metric(port: u16, name: &str) -> f64 {
    let (status, body) = request(port, "GET", "/metrics", "", "").expect("metrics");
    assert_eq!(status, 200);
    body.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Waits until `f` holds (polling), or fails the test after `secs`.
fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A new conversation: the prompt tokens it was served from the cache.
fn cached_tokens(port: u16) -> u64 {
    let body = r#"{"model":"tiny-mini","messages":[{"role":"user","content":"새 대화입니다"}],"max_tokens":1}"#;
    let (status, text) = post(port, "/v1/chat/completions", "", body).expect("chat");
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .expect("cached_tokens")
}

#[test]
fn default_system_prompt_survives_a_restart() {
    let dir = std::env::temp_dir().join(format!("mideum-prefix-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_s = dir.display().to_string();
    let file = dir.join("tiny-mini.kvcache");
    let args = ["--prefix-cache-dir", dir_s.as_str()];

    // First start: computed at startup (no request needed) and written.
    let port = free_port();
    let mut server = serve(port, &args);
    wait_for(60, "the prefix cache file", || file.exists());
    let computed = metric(port, "mideum_prompt_tokens_total");
    assert!(computed >= 16.0, "the warm-up computed {computed} tokens");
    let cached = cached_tokens(port);
    assert!(cached >= 16, "a new conversation reused {cached} tokens");
    server.kill().unwrap();
    server.wait().unwrap();
    let saved = std::fs::read(&file).unwrap();

    // Restart: restored from the file, nothing computed before the first request.
    let port = free_port();
    let mut server = serve(port, &args);
    wait_for(30, "restored blocks", || {
        metric(port, "mideum_kv_cache_blocks_cached") >= 1.0
    });
    assert_eq!(metric(port, "mideum_prompt_tokens_total"), 0.0);
    assert_eq!(
        cached_tokens(port),
        cached,
        "the restored prefix serves like the computed one"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        saved,
        "a valid file is not rewritten"
    );
    server.kill().unwrap();
    server.wait().unwrap();

    // A damaged file: the server still starts, recomputes the prefix and replaces the file.
    let mut bad = saved.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    std::fs::write(&file, &bad).unwrap();
    let port = free_port();
    let mut server = serve(port, &args);
    wait_for(60, "recomputed prefix", || {
        metric(port, "mideum_prompt_tokens_total") >= 16.0
    });
    wait_for(60, "rewritten file", || {
        std::fs::read(&file).is_ok_and(|b| b != bad)
    });
    assert_eq!(cached_tokens(port), cached);
    server.kill().unwrap();
    server.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
