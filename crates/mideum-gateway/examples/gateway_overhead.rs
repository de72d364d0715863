//! Tools for bench/gateway_overhead.sh (not a test): a minimal OpenAI-compatible stub provider
//! and an open-loop constant-rate load generator.
//!
//!   gateway_overhead stub PORT
//!       answers POST /v1/chat/completions by echoing the last message (non-streaming JSON).
//!   gateway_overhead load URL RATE SECONDS [CONCURRENCY_LIMIT]
//!       sends RATE requests/s for SECONDS with a 2 KB Korean prompt containing personal data,
//!       measures latency from each request's scheduled send time (no coordinated omission) and
//!       prints one JSON line: sent, ok, errors, achieved rate, p50/p90/p99/max in ms.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn prompt() -> String {
    let base = "고객 홍길동 님(연락처 010-1234-5678, 메일 hong.gildong@example.co.kr)의 문의입니다. \
                지난달 청구서 금액이 평소보다 높게 나왔다고 하시며, 요금제 변경 이력과 부가서비스 가입 내역을 \
                확인해 달라고 요청하셨습니다. 상담 내용을 요약하고 다음 조치를 제안해 주세요. ";
    let mut s = String::new();
    while s.len() < 2048 {
        s.push_str(base);
    }
    s
}

async fn stub(port: u16) {
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    loop {
        let Ok((s, _)) = l.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(
                |req: hyper::Request<hyper::body::Incoming>| async move {
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let last = v["messages"]
                        .as_array()
                        .and_then(|m| m.last())
                        .map(|m| m["content"].clone())
                        .unwrap_or(Value::Null);
                    let a = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "stub",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": last}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 600, "completion_tokens": 600, "total_tokens": 1200}});
                    Ok::<_, std::convert::Infallible>(
                        hyper::Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(a.to_string())))
                            .unwrap_or_default(),
                    )
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}

async fn load(url: String, rate: f64, secs: f64, limit: u64) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(4096)
        .build_http();
    let body = Bytes::from(
        json!({"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": prompt()}]}).to_string(),
    );
    let lat = Arc::new(Mutex::new(Vec::<f64>::new()));
    let errors = Arc::new(AtomicU64::new(0));
    let inflight = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let n = (rate * secs) as u64;
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut handles = Vec::with_capacity(n as usize);
    for i in 0..n {
        let at = start + period.mul_f64(i as f64);
        tokio::time::sleep_until(at.into()).await;
        if inflight.load(Ordering::Relaxed) >= limit {
            dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        inflight.fetch_add(1, Ordering::Relaxed);
        let (c, b, u, lat, errors, inflight) = (
            client.clone(),
            body.clone(),
            url.clone(),
            lat.clone(),
            errors.clone(),
            inflight.clone(),
        );
        handles.push(tokio::spawn(async move {
            let req = hyper::Request::post(&u)
                .header("content-type", "application/json")
                .body(Full::new(b));
            let ok = match req {
                Ok(req) => {
                    match tokio::time::timeout(Duration::from_secs(10), c.request(req)).await {
                        Ok(Ok(r)) => {
                            let s = r.status().is_success();
                            s && r.into_body().collect().await.is_ok()
                        }
                        _ => false,
                    }
                }
                Err(_) => false,
            };
            if ok {
                if let Ok(mut l) = lat.lock() {
                    l.push(at.elapsed().as_secs_f64() * 1e3);
                }
            } else {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            inflight.fetch_sub(1, Ordering::Relaxed);
        }));
    }
    for h in handles {
        let _ = h.await;
    }
    let wall = start.elapsed().as_secs_f64();
    let mut l = lat.lock().map(|l| l.clone()).unwrap_or_default();
    l.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        if l.is_empty() {
            f64::NAN
        } else {
            l[((l.len() - 1) as f64 * p).round() as usize]
        }
    };
    println!(
        "{}",
        json!({"rate": rate, "sent": n, "ok": l.len(), "errors": errors.load(Ordering::Relaxed),
               "dropped_over_limit": dropped.load(Ordering::Relaxed), "achieved_rps": l.len() as f64 / wall,
               "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99), "max_ms": q(1.0)})
    );
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    match a.get(1).map(String::as_str) {
        Some("stub") => rt.block_on(stub(a.get(2).and_then(|p| p.parse().ok()).unwrap_or(9100))),
        Some("load") if a.len() >= 5 => {
            let (Ok(rate), Ok(secs)) = (a[3].parse(), a[4].parse()) else {
                eprintln!("RATE and SECONDS must be numbers");
                std::process::exit(2)
            };
            let limit = a.get(5).and_then(|x| x.parse().ok()).unwrap_or(2000);
            rt.block_on(load(a[2].clone(), rate, secs, limit))
        }
        _ => {
            eprintln!(
                "usage: gateway_overhead stub PORT | load URL RATE SECONDS [CONCURRENCY_LIMIT]"
            );
            std::process::exit(2)
        }
    }
}
