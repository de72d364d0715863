//! Egress suite: a recording stub OpenAI-compatible provider on loopback stands in for the
//! external track. For every entity type and policy action it checks what reaches the stub
//! (never an original value, exact or normalised, unless the policy allows it), what comes back
//! to the client (originals restored where pseudonymized), that blocked requests never reach
//! it, and how faults (500, 429 + Retry-After, timeouts, resets, cut streams) end — never hung.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mideum_gateway::config::Config;
use mideum_gateway::route::Routes;
use mideum_gateway::AppState;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the stub behaves.
#[derive(Clone, Debug)]
enum Mode {
    Echo,
    /// Answer 500 this many times, then echo.
    Fail500(u32),
    /// Answer 429 with this Retry-After (seconds) this many times, then echo.
    Limit429(u32, u64),
    /// Sleep this long before answering.
    Slow(u64),
    /// Stream a few chunks, then end the body without `[DONE]`.
    CutStream,
}

#[derive(Clone)]
struct Stub {
    seen: Arc<Mutex<Vec<(String, HeaderMap, String)>>>,
    mode: Arc<Mutex<Mode>>,
}

impl Stub {
    fn bodies(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|x| x.2.clone())
            .collect()
    }
    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// The text the stub echoes: every string content of the last message / the prompt.
fn echo_text(v: &Value) -> String {
    if let Some(p) = v.get("prompt") {
        return match p {
            Value::String(s) => s.clone(),
            Value::Array(a) => a.iter().filter_map(|x| x.as_str()).collect(),
            _ => String::new(),
        };
    }
    let last = v["messages"]
        .as_array()
        .and_then(|m| m.last())
        .cloned()
        .unwrap_or(Value::Null);
    match &last["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
        _ => String::new(),
    }
}

fn chunks(s: &str, n: usize) -> Vec<String> {
    let cs: Vec<char> = s.chars().collect();
    cs.chunks(n).map(|c| c.iter().collect()).collect()
}

async fn stub_completion(
    State(stub): State<Stub>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let text = String::from_utf8_lossy(&body).to_string();
    stub.seen
        .lock()
        .unwrap()
        .push((uri.path().to_string(), headers, text.clone()));
    let mode = stub.mode.lock().unwrap().clone();
    match mode {
        Mode::Fail500(n) if n > 0 => {
            *stub.mode.lock().unwrap() = Mode::Fail500(n - 1);
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "{\"error\":{\"message\":\"boom\"}}",
            )
                .into_response();
        }
        Mode::Limit429(n, ra) if n > 0 => {
            *stub.mode.lock().unwrap() = Mode::Limit429(n - 1, ra);
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", ra.to_string())],
                "{\"error\":{\"message\":\"slow down\"}}",
            )
                .into_response();
        }
        Mode::Slow(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        _ => {}
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let echo = format!("답변: {}", echo_text(&v));
    let chat = uri.path().ends_with("chat/completions");
    let tool = v["tools"][0]["function"]["name"]
        .as_str()
        .map(str::to_string);
    let args = json!({"text": echo}).to_string();
    if v["stream"] == json!(true) {
        let mut events = Vec::new();
        let pieces = chunks(if tool.is_some() { &args } else { &echo }, 3);
        for (i, p) in pieces.iter().enumerate() {
            let c = if !chat {
                json!({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "stub", "choices": [{"index": 0, "text": p, "finish_reason": null}]})
            } else if let Some(t) = &tool {
                let mut tc = json!({"index": 0, "function": {"arguments": p}});
                if i == 0 {
                    tc["id"] = json!("call_1");
                    tc["type"] = json!("function");
                    tc["function"]["name"] = json!(t);
                }
                json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "stub", "choices": [{"index": 0, "delta": {"tool_calls": [tc]}, "finish_reason": null}]})
            } else {
                json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "stub", "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": null}]})
            };
            events.push(format!("data: {c}\n\n"));
        }
        if matches!(mode, Mode::CutStream) {
            events.truncate(2);
        } else {
            let fin = if chat {
                json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "stub", "choices": [{"index": 0, "delta": {}, "finish_reason": if tool.is_some() {"tool_calls"} else {"stop"}}], "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}})
            } else {
                json!({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "stub", "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
            };
            events.push(format!("data: {fin}\n\ndata: [DONE]\n\n"));
        }
        let s = futures_util::stream::iter(
            events
                .into_iter()
                .map(|e| Ok::<_, std::convert::Infallible>(Bytes::from(e))),
        );
        return (
            [("content-type", "text/event-stream")],
            axum::body::Body::from_stream(s),
        )
            .into_response();
    }
    let a = if !chat {
        json!({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "stub", "choices": [{"index": 0, "text": echo, "finish_reason": "stop"}], "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}})
    } else if let Some(t) = &tool {
        json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "stub", "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": t, "arguments": args}}]}, "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}})
    } else {
        json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "stub", "choices": [{"index": 0, "message": {"role": "assistant", "content": echo}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}})
    };
    axum::Json(a).into_response()
}

async fn start_stub(mode: Mode) -> (String, Stub) {
    let stub = Stub {
        seen: Arc::default(),
        mode: Arc::new(Mutex::new(mode)),
    };
    let app = Router::new()
        .route("/v1/chat/completions", axum::routing::post(stub_completion))
        .route("/v1/completions", axum::routing::post(stub_completion))
        .route(
            "/openai/deployments/{d}/chat/completions",
            axum::routing::post(stub_completion),
        )
        .route(
            "/v1/models",
            get(|| async { axum::Json(json!({"object": "list", "data": []})) }),
        )
        .with_state(stub.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("http://{addr}"), stub)
}

/// A "server" that accepts connections and drops them at once (connection reset / EOF).
async fn start_resetter() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            drop(s);
        }
    });
    format!("http://{addr}")
}

async fn start_gateway(toml: &str, local: bool) -> String {
    let cfg = Config::parse(toml, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    let mut st = AppState::new(Some(Duration::from_secs(30)));
    if local {
        let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../testdata/models/tiny-mini");
        let m = mideum_model::LoadedModel::load(
            &p,
            &mideum_model::LoadOptions {
                threads: 1,
                ctx_size: Some(512),
                ..Default::default()
            },
        )
        .unwrap();
        let engine = Arc::new(mideum_engine::Engine::start(
            Arc::new(m),
            "tiny",
            mideum_engine::EngineConfig {
                max_running: 4,
                max_queue: 16,
                step_tokens: 64,
                kv_blocks: 64,
            },
        ));
        st.add(
            mideum_gateway::ServedModel {
                name: "tiny".into(),
                engine,
                created: 0,
            },
            &[],
        )
        .unwrap();
    }
    let routes = Routes::build(&cfg, &|n| st.has_local(n)).unwrap_or_else(|e| panic!("{e}"));
    st.set_routes(Arc::new(routes));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(mideum_gateway::serve(l, Arc::new(st)));
    format!("http://{addr}")
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    fn header(&self, n: &str) -> &str {
        self.headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    /// The text a client sees: message contents, tool-call arguments, completion texts, and
    /// for streams the same fields of every chunk joined.
    fn text(&self) -> String {
        let mut out = String::new();
        let mut take = |v: &Value| {
            for c in v["choices"].as_array().into_iter().flatten() {
                for p in ["/message/content", "/delta/content", "/text"] {
                    if let Some(s) = c.pointer(p).and_then(|x| x.as_str()) {
                        out.push_str(s);
                    }
                }
                for k in ["message", "delta"] {
                    for tc in c[k]["tool_calls"].as_array().into_iter().flatten() {
                        out.push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
                    }
                }
            }
        };
        if self.body.starts_with("data:") {
            for line in self.body.lines() {
                if let Some(d) = line.strip_prefix("data: ") {
                    if let Ok(v) = serde_json::from_str::<Value>(d) {
                        take(&v);
                    }
                }
            }
        } else if let Ok(v) = serde_json::from_str::<Value>(&self.body) {
            take(&v);
        }
        out
    }
}

async fn post(base: &str, path: &str, body: Value, headers: &[(&str, &str)]) -> Answer {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut rb =
        hyper::Request::post(format!("{base}{path}")).header("content-type", "application/json");
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let req = rb.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let fut = async {
        let r = client.request(req).await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).to_string(),
        }
    };
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .expect("the gateway hung")
}

/// (text containing the value, entity type, the value, normalised forms).
fn samples() -> Vec<(String, &'static str, String, Vec<String>)> {
    let frn = {
        let d = "850315512345";
        let w = [2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5];
        let sum: u32 = d.bytes().zip(w).map(|(b, w)| (b - b'0') as u32 * w).sum();
        format!("850315-5{}{}", &d[7..], (11 - sum % 11) % 10)
    };
    let crn = {
        let base = "110111000000";
        let sum: u32 = base
            .bytes()
            .enumerate()
            .map(|(i, b)| (b - b'0') as u32 * if i % 2 == 0 { 1 } else { 2 })
            .sum();
        format!("110111-{}{}", &base[6..], (10 - sum % 10) % 10)
    };
    let v = vec![
        (
            String::from("주민등록번호: 900101-1234568 입니다"),
            "KR_RRN",
            String::from("900101-1234568"),
        ),
        (
            format!("외국인등록번호 {frn} 입니다"),
            "KR_FRN",
            frn.clone(),
        ),
        (
            "여권번호 M123A4567 입니다".into(),
            "KR_PASSPORT",
            "M123A4567".into(),
        ),
        (
            "운전면허번호 11-12-123456-78 입니다".into(),
            "KR_DRIVER_LICENSE",
            "11-12-123456-78".into(),
        ),
        (
            "사업자등록번호 220-81-62517 입니다".into(),
            "KR_BRN",
            "220-81-62517".into(),
        ),
        (format!("법인등록번호: {crn} 입니다"), "KR_CRN", crn.clone()),
        (
            "연락처 010-1234-5678로 연락주세요".into(),
            "KR_PHONE",
            "010-1234-5678".into(),
        ),
        (
            "카드번호 4111-1111-1111-1111 입니다".into(),
            "CREDIT_CARD",
            "4111-1111-1111-1111".into(),
        ),
        (
            "입금 계좌 신한은행 110-123-456789 입니다".into(),
            "KR_BANK_ACCOUNT",
            "110-123-456789".into(),
        ),
        (
            "메일은 hong.gildong@example.co.kr으로 보내주세요".into(),
            "EMAIL",
            "hong.gildong@example.co.kr".into(),
        ),
        (
            "접속 IP 192.168.0.15에서".into(),
            "IP_ADDRESS",
            "192.168.0.15".into(),
        ),
        (
            "차량번호 12가3456 입니다".into(),
            "KR_VEHICLE_PLATE",
            "12가3456".into(),
        ),
        (
            "주소: 서울특별시 강남구 테헤란로 123, 5층".into(),
            "KR_ADDRESS",
            "서울특별시 강남구 테헤란로 123".into(),
        ),
        (
            "성명: 홍길동 고객 문의".into(),
            "KR_PERSON",
            "홍길동".into(),
        ),
    ];
    v.into_iter()
        .map(|(t, k, val)| {
            let digits: String = val.chars().filter(|c| c.is_ascii_digit()).collect();
            let nospace: String = val.chars().filter(|c| !c.is_whitespace()).collect();
            let mut forms = vec![val.clone(), nospace];
            if digits.len() >= 6 {
                forms.push(digits);
            }
            if k == "KR_ADDRESS" {
                forms.push("테헤란로 123".into());
            }
            (t, k, val, forms)
        })
        .collect()
}

/// Fails if any form of a value is in what the stub received (raw body, every JSON string,
/// and the digits of every JSON string).
fn assert_never_seen(stub: &Stub, forms: &[String], what: &str) {
    for body in stub.bodies() {
        let mut strings = Vec::new();
        fn all(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::String(s) => out.push(s.clone()),
                Value::Array(a) => a.iter().for_each(|x| all(x, out)),
                Value::Object(o) => o.values().for_each(|x| all(x, out)),
                _ => {}
            }
        }
        all(
            &serde_json::from_str(&body).unwrap_or(Value::Null),
            &mut strings,
        );
        for f in forms {
            assert!(
                !body.contains(f.as_str()),
                "{what}: {f:?} reached the provider: {body}"
            );
            for s in &strings {
                let d: String = s.chars().filter(|c| c.is_ascii_digit()).collect();
                let ns: String = s.chars().filter(|c| !c.is_whitespace()).collect();
                assert!(
                    !s.contains(f.as_str()) && !ns.contains(f.as_str()),
                    "{what}: {f:?} reached the provider in {s:?}"
                );
                if f.chars().all(|c| c.is_ascii_digit()) {
                    assert!(
                        !d.contains(f.as_str()),
                        "{what}: digits of {f:?} reached the provider in {s:?}"
                    );
                }
            }
        }
    }
}

fn config(stub: &str, region: &str, rules: &str, extra: &str) -> String {
    format!(
        "[backends.ext]\ntype = \"openai\"\nregion = \"{region}\"\nbase_url = \"{stub}/v1\"\nretries = 2\nbackoff_ms = 10\ntimeout_ms = 2000\n{extra}\n[models.m]\nbackends = [\"ext\"]\n\n[policies.default]\nallow_overseas = true\n[policies.default.rules]\n{rules}\n"
    )
}

fn chat(text: &str, stream: bool) -> Value {
    json!({"model": "m", "stream": stream, "messages": [{"role": "system", "content": "You help."}, {"role": "user", "content": text}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pseudonymized_values_never_leave_and_come_back_restored() {
    let (stub_url, stub) = start_stub(Mode::Echo).await;
    let rules = "unique_id = { domestic = \"pseudonymize\" }\ncontact = { domestic = \"pseudonymize\" }\nfinancial = { domestic = \"pseudonymize\" }\nperson = { domestic = \"pseudonymize\" }\nother = { domestic = \"pseudonymize\" }";
    let gw = start_gateway(&config(&stub_url, "domestic", rules, ""), false).await;
    for (text, kind, value, forms) in samples() {
        for stream in [false, true] {
            // Chat.
            let a = post(&gw, "/v1/chat/completions", chat(&text, stream), &[]).await;
            assert_eq!(a.status, 200, "{kind}: {}", a.body);
            assert_eq!(a.header("x-mideum-route"), "domestic");
            assert_eq!(a.header("x-ai-generated"), "true");
            assert!(
                a.header("x-mideum-policy").contains(kind),
                "{kind}: {}",
                a.header("x-mideum-policy")
            );
            assert!(
                a.text().contains(&value),
                "{kind} stream={stream}: not restored: {}",
                a.text()
            );
            if stream {
                assert!(a.body.trim_end().ends_with("data: [DONE]"), "{}", a.body);
            }
            // Completions, prompt as an array.
            let a = post(
                &gw,
                "/v1/completions",
                json!({"model": "m", "stream": stream, "prompt": [text.clone()]}),
                &[],
            )
            .await;
            assert_eq!(a.status, 200, "{kind}: {}", a.body);
            assert!(
                a.text().contains(&value),
                "{kind} completions stream={stream}: {}",
                a.text()
            );
            // Content parts, tool definitions and tool-call arguments; the answer is a tool call.
            let req = json!({"model": "m", "stream": stream,
            "tools": [{"type": "function", "function": {"name": "lookup", "description": format!("예시: {text}"), "parameters": {"type": "object", "properties": {"text": {"type": "string", "description": text}}}}}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "앞 문장 "}, {"type": "text", "text": text}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "lookup", "arguments": json!({"q": text}).to_string()}}]},
                {"role": "tool", "tool_call_id": "call_0", "content": text},
                {"role": "user", "content": [{"type": "text", "text": text}]}
            ]});
            let a = post(&gw, "/v1/chat/completions", req, &[]).await;
            assert_eq!(a.status, 200, "{kind}: {}", a.body);
            let args = a.text();
            let v: Value = serde_json::from_str(&args)
                .unwrap_or_else(|e| panic!("{kind}: tool arguments are not JSON ({e}): {args}"));
            assert!(
                v["text"].as_str().unwrap_or("").contains(&value),
                "{kind} tools stream={stream}: {args}"
            );
        }
        assert_never_seen(&stub, &forms, kind);
    }
    assert!(stub.count() >= 14 * 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masked_values_never_leave() {
    let (stub_url, stub) = start_stub(Mode::Echo).await;
    let rules = "unique_id = { overseas = \"mask\" }\ncontact = { overseas = \"mask\" }\nfinancial = { overseas = \"mask\" }\nperson = { overseas = \"mask\" }\nother = { overseas = \"mask\" }";
    let gw = start_gateway(&config(&stub_url, "overseas", rules, ""), false).await;
    for (text, kind, value, forms) in samples() {
        for stream in [false, true] {
            let a = post(&gw, "/v1/chat/completions", chat(&text, stream), &[]).await;
            assert_eq!(a.status, 200, "{kind}: {}", a.body);
            assert_eq!(a.header("x-mideum-route"), "overseas");
            assert!(
                !a.text().contains(&value),
                "{kind}: a masked value cannot come back: {}",
                a.text()
            );
        }
        assert_never_seen(&stub, &forms, kind);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_requests_never_reach_the_provider() {
    let (stub_url, stub) = start_stub(Mode::Echo).await;
    let rules = "unique_id = { domestic = \"block\" }\ncontact = { domestic = \"block\" }\nfinancial = { domestic = \"block\" }\nperson = { domestic = \"block\" }\nother = { domestic = \"block\" }";
    let gw = start_gateway(&config(&stub_url, "domestic", rules, ""), false).await;
    for (text, kind, _, _) in samples() {
        for stream in [false, true] {
            let a = post(&gw, "/v1/chat/completions", chat(&text, stream), &[]).await;
            assert_eq!(a.status, 403, "{kind}: {}", a.body);
            assert_eq!(a.json()["error"]["code"], "blocked_by_policy");
            assert!(a.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(kind));
            let a = post(
                &gw,
                "/v1/completions",
                json!({"model": "m", "prompt": text, "stream": stream}),
                &[],
            )
            .await;
            assert_eq!(a.status, 403, "{kind}: {}", a.body);
        }
    }
    assert_eq!(stub.count(), 0, "a blocked request reached the provider");
    // Clean text still goes through, and the metrics count the decisions.
    let a = post(&gw, "/v1/chat/completions", chat("날씨 알려줘", false), &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-mideum-policy"), "no personal data found");
    assert_eq!(stub.count(), 1);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let r = client
        .get(format!("{gw}/metrics").parse().unwrap())
        .await
        .unwrap();
    let m = String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(m.contains("mideum_route_requests_total{model=\"m\",backend=\"-\",track=\"domestic\",decision=\"block\"} 56"), "{m}");
    assert!(
        m.contains("mideum_guard_findings_total{entity=\"KR_RRN\"} 4"),
        "{m}"
    );
    assert!(!m.contains("900101"), "metrics must not hold values");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_values_do_reach_the_provider() {
    // The control: with `allow`, the recording stub does see the value, so the checks above
    // are able to fail.
    let (stub_url, stub) = start_stub(Mode::Echo).await;
    let gw = start_gateway(
        &config(
            &stub_url,
            "domestic",
            "contact = { domestic = \"allow\" }",
            "",
        ),
        false,
    )
    .await;
    let a = post(
        &gw,
        "/v1/chat/completions",
        chat("연락처 010-1234-5678로 연락주세요", false),
        &[],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(stub.bodies()[0].contains("010-1234-5678"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_defaults_keep_data_local() {
    let (stub_url, stub) = start_stub(Mode::Echo).await;
    let (dom_url, dom) = start_stub(Mode::Echo).await;
    // No policy section at all: overseas is off, unique ids are route_local.
    let toml = format!(
        "[backends.gpt]\ntype = \"openai\"\nregion = \"overseas\"\nbase_url = \"{stub_url}/v1\"\n[backends.kr]\ntype = \"openai\"\nregion = \"domestic\"\nbase_url = \"{dom_url}/v1\"\n[backends.tiny]\ntype = \"local\"\nserved = \"tiny\"\n[models.m]\nbackends = [\"gpt\", \"kr\", \"tiny\"]\n"
    );
    let gw = start_gateway(&toml, true).await;
    let a = post(
        &gw,
        "/v1/chat/completions",
        json!({"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "안녕"}]}),
        &[],
    )
    .await;
    assert_eq!(
        (a.status, a.header("x-mideum-route")),
        (200, "domestic"),
        "{}",
        a.body
    );
    assert_eq!(stub.count(), 0, "overseas must be off by default");
    let a = post(&gw, "/v1/chat/completions", json!({"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "주민등록번호: 900101-1234568 입니다"}]}), &[]).await;
    assert_eq!(
        (a.status, a.header("x-mideum-route")),
        (200, "local"),
        "{}",
        a.body
    );
    assert!(a.header("x-mideum-policy").starts_with("route_local"));
    for stream in [false, true] {
        let mut req = json!({"model": "m", "max_tokens": 2, "stream": stream, "messages": [{"role": "user", "content": "안녕"}]});
        req["stream"] = json!(stream);
        let a = post(
            &gw,
            "/v1/chat/completions",
            req,
            &[("x-mideum-data-class", "confidential")],
        )
        .await;
        assert_eq!(
            (
                a.status,
                a.header("x-mideum-route"),
                a.header("x-mideum-backend")
            ),
            (200, "local", "tiny"),
            "{}",
            a.body
        );
        if stream {
            assert!(a.body.trim_end().ends_with("data: [DONE]"), "{}", a.body);
        }
    }
    assert_eq!(
        dom.count(),
        1,
        "only the clean request went to the domestic provider"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_retry_fall_back_or_fail_cleanly() {
    // 500 twice, then fine: the retries absorb it.
    let (u, stub) = start_stub(Mode::Fail500(2)).await;
    let gw = start_gateway(&config(&u, "domestic", "", ""), false).await;
    let a = post(&gw, "/v1/chat/completions", chat("안녕", false), &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(stub.count(), 3);

    // 429 with Retry-After: 1 is honoured (the retry waits about a second).
    let (u, stub) = start_stub(Mode::Limit429(1, 1)).await;
    let gw = start_gateway(&config(&u, "domestic", "", ""), false).await;
    let t = std::time::Instant::now();
    let a = post(&gw, "/v1/chat/completions", chat("안녕", true), &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        t.elapsed() >= Duration::from_millis(700),
        "Retry-After was not honoured"
    );
    assert_eq!(stub.count(), 2);

    // A Retry-After beyond the limit, a reset, a timeout: each falls back to the next backend.
    let (bad, _) = start_stub(Mode::Limit429(9, 3600)).await;
    let reset = start_resetter().await;
    let (slow, _) = start_stub(Mode::Slow(5_000)).await;
    let (good, good_stub) = start_stub(Mode::Echo).await;
    let toml = format!(
        "[backends.a]\ntype = \"openai\"\nregion = \"domestic\"\nbase_url = \"{bad}/v1\"\nretries = 1\nbackoff_ms = 10\n\
         [backends.b]\ntype = \"openai\"\nregion = \"domestic\"\nbase_url = \"{reset}/v1\"\nretries = 1\nbackoff_ms = 10\n\
         [backends.c]\ntype = \"openai\"\nregion = \"domestic\"\nbase_url = \"{slow}/v1\"\nretries = 0\ntimeout_ms = 300\n\
         [backends.d]\ntype = \"openai\"\nregion = \"domestic\"\nbase_url = \"{good}/v1\"\n\
         [models.m]\nbackends = [\"a\", \"b\", \"c\", \"d\"]\n"
    );
    let gw = start_gateway(&toml, false).await;
    let t = std::time::Instant::now();
    let a = post(&gw, "/v1/chat/completions", chat("안녕", false), &[]).await;
    assert_eq!(
        (a.status, a.header("x-mideum-backend")),
        (200, "d"),
        "{}",
        a.body
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(good_stub.count(), 1);

    // Everything down: a clear 503, not a hang.
    let toml = format!("[backends.b]\ntype = \"openai\"\nregion = \"domestic\"\nbase_url = \"{reset}/v1\"\nretries = 1\nbackoff_ms = 10\nbreaker_failures = 2\n[models.m]\nbackends = [\"b\"]\n");
    let gw = start_gateway(&toml, false).await;
    for _ in 0..3 {
        let a = post(&gw, "/v1/chat/completions", chat("안녕", true), &[]).await;
        assert_eq!(a.status, 503, "{}", a.body);
        assert_eq!(a.json()["error"]["code"], "upstream_unavailable");
    }
    let a = post(&gw, "/v1/chat/completions", chat("안녕", false), &[]).await;
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("circuit breaker"),
        "{}",
        a.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stream_ends_with_an_error_event() {
    let (u, _) = start_stub(Mode::CutStream).await;
    let gw = start_gateway(&config(&u, "domestic", "", ""), false).await;
    let a = post(
        &gw,
        "/v1/chat/completions",
        chat("연락처 010-1234-5678로 연락주세요", true),
        &[],
    )
    .await;
    assert_eq!(a.status, 200);
    assert!(!a.body.contains("[DONE]"), "{}", a.body);
    let last = a.body.trim_end().lines().last().unwrap_or("");
    assert!(last.contains("upstream_stream_cut"), "{}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_gets_its_url_and_api_key_header() {
    let (u, stub) = start_stub(Mode::Echo).await;
    // SAFETY-free: a variable name only this test uses.
    std::env::set_var("MIDEUM_TEST_AZURE_KEY", "az-secret");
    let toml = format!("[backends.az]\ntype = \"azure_openai\"\nregion = \"domestic\"\nendpoint = \"{u}\"\ndeployment = \"gpt4o\"\napi_version = \"2024-10-21\"\napi_key_env = \"MIDEUM_TEST_AZURE_KEY\"\n[models.m]\nbackends = [\"az\"]\n");
    let gw = start_gateway(&toml, false).await;
    let a = post(&gw, "/v1/chat/completions", chat("안녕", false), &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let seen = stub.seen.lock().unwrap();
    assert_eq!(seen[0].0, "/openai/deployments/gpt4o/chat/completions");
    assert_eq!(seen[0].1.get("api-key").unwrap(), "az-secret");
    assert!(seen[0].1.get("authorization").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notice_and_unknown_models() {
    let (u, _) = start_stub(Mode::Echo).await;
    let toml = format!(
        "[server]\nnotice = \"AI가 생성한 답변입니다.\"\n{}",
        config(&u, "domestic", "", "")
    );
    let gw = start_gateway(&toml, false).await;
    for stream in [false, true] {
        let a = post(&gw, "/v1/chat/completions", chat("안녕", stream), &[]).await;
        assert!(
            a.text().ends_with("AI가 생성한 답변입니다."),
            "{}",
            a.text()
        );
    }
    let a = post(
        &gw,
        "/v1/chat/completions",
        json!({"model": "nope", "messages": []}),
        &[],
    )
    .await;
    assert_eq!(a.status, 404);
    let a = post(&gw, "/v1/chat/completions", json!([1]), &[]).await;
    assert_eq!(a.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_picks_the_cheapest_backend_that_holds_the_prompt() {
    let (dear, dear_stub) = start_stub(Mode::Echo).await;
    let (cheap, cheap_stub) = start_stub(Mode::Echo).await;
    let toml = format!(
        "[backends.dear]\ntype = \"openai\"\nregion = \"domestic\"\nbase_url = \"{dear}/v1\"\ncost = 1.0\n\
         [backends.cheap]\ntype = \"openai\"\nregion = \"domestic\"\nbase_url = \"{cheap}/v1\"\ncost = 0.1\ncontext = 100\n\
         [models.auto]\nbackends = [\"dear\", \"cheap\"]\n"
    );
    let gw = start_gateway(&toml, false).await;
    let mut req = chat("안녕", false);
    req["model"] = json!("auto");
    let a = post(&gw, "/v1/chat/completions", req.clone(), &[]).await;
    assert_eq!(
        (a.status, a.header("x-mideum-backend")),
        (200, "cheap"),
        "{}",
        a.body
    );
    req["messages"][1]["content"] = json!("긴 문장 ".repeat(200));
    let a = post(&gw, "/v1/chat/completions", req, &[]).await;
    assert_eq!(
        (a.status, a.header("x-mideum-backend")),
        (200, "dear"),
        "{}",
        a.body
    );
    assert_eq!((dear_stub.count(), cheap_stub.count()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_take_a_dead_endpoint_out_of_the_pool() {
    let reset = start_resetter().await;
    let (good, good_stub) = start_stub(Mode::Echo).await;
    let toml = format!(
        "[backends.pool]\ntype = \"openai\"\nregion = \"domestic\"\nretries = 0\nhealth_check_s = 1\ntimeout_ms = 500\n\
         endpoints = [{{ url = \"{reset}/v1\", weight = 1 }}, {{ url = \"{good}/v1\", weight = 1 }}]\n\
         [models.m]\nbackends = [\"pool\"]\n"
    );
    let gw = start_gateway(&toml, false).await;
    tokio::time::sleep(Duration::from_millis(1800)).await;
    for _ in 0..10 {
        let a = post(&gw, "/v1/chat/completions", chat("안녕", false), &[]).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    assert_eq!(good_stub.count(), 10);
}
