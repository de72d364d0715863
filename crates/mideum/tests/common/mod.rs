//! Helpers shared by the integration tests that run `mideum serve` as a child process.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mideum")
}

/// The tiny Mi:dm-shaped test checkpoint.
pub fn model() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/models/tiny-mini")
        .display()
        .to_string()
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One HTTP/1.1 request with `Connection: close`: the status and body, or None if the
/// connection failed or the response was cut short.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    key: &str,
    body: &str,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let auth = if key.is_empty() {
        String::new()
    } else {
        format!("Authorization: Bearer {key}\r\n")
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    // A response cut by a kill has no complete body: count it as failed.
    let (_, body) = text.split_once("\r\n\r\n")?;
    Some((status, body.to_string()))
}

pub fn post(port: u16, path: &str, key: &str, body: &str) -> Option<(u16, String)> {
    request(port, "POST", path, key, body)
}

pub fn healthy(port: u16) -> bool {
    request(port, "GET", "/health", "", "").is_some_and(|(s, _)| s == 200)
}

/// `mideum serve` on the tiny model, one thread, 256-token context, plus `extra` arguments;
/// returns once `/health` answers.
pub fn serve(port: u16, extra: &[&str]) -> Child {
    let port_s = port.to_string();
    let mut args = vec![
        "serve",
        "-m",
        "",
        "--port",
        &port_s,
        "-t",
        "1",
        "--ctx-size",
        "256",
    ];
    let m = model();
    args[2] = &m;
    args.extend_from_slice(extra);
    let child = Command::new(bin())
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mideum serve");
    let t0 = Instant::now();
    while !healthy(port) {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "serve did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}
