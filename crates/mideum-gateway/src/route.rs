//! The routed request path for models named in `mideum.toml`: authenticate → scan every text
//! field with the guard → decide the destination by policy → mask / pseudonymize → forward
//! (streams pass through chunk by chunk) → restore pseudonyms in the answer → audit → respond.
//! Models served only with `--model` take the same path minus the guard (they are local).

use crate::auth::{Principal, RequestRecord};
use crate::config::{BackendType, Config, Strategy, Track};
use crate::error::{ApiError, ApiResult};
use crate::policy::{Decision, Policies, Verdict};
use crate::scan::Scan;
use crate::upstream::{InFlight, Remote, UpstreamError};
use crate::{model_field, parse_body, AppState};
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use mideum_guard::{Analyzer, RestoreMode, Vault};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("{0}")]
    Setup(String),
}

enum BackendRt {
    Local { served: String },
    Remote(Arc<Remote>),
}

impl BackendRt {
    fn track(&self) -> Track {
        match self {
            BackendRt::Local { .. } => Track::Local,
            BackendRt::Remote(r) => r.track,
        }
    }
}

struct RouteModel {
    chain: Vec<String>,
    strategy: Strategy,
}

/// Routing state built once from the configuration.
pub struct Routes {
    backends: HashMap<String, BackendRt>,
    /// Backend name -> (cost, context, weight) for ordering.
    costs: HashMap<String, (f64, u64, u32)>,
    models: BTreeMap<String, RouteModel>,
    policies: Policies,
    analyzer: Analyzer,
    notice: Option<String>,
    pub metrics: RouteMetrics,
    seed: std::sync::atomic::AtomicU64,
}

impl Routes {
    /// `served(name)` says whether a local model of that name is loaded.
    pub fn build(cfg: &Config, served: &dyn Fn(&str) -> bool) -> Result<Routes, RouteError> {
        let mut backends = HashMap::new();
        let mut costs = HashMap::new();
        for (name, b) in &cfg.backends {
            let b = b.get_ref();
            let rt = match b.kind.get_ref() {
                BackendType::Local => {
                    let s = b.served.clone().unwrap_or_else(|| name.clone());
                    if !served(&s) {
                        return Err(RouteError::Setup(format!(
                            "backend {name:?}: no local model named {s:?} is loaded (give it with --model {s}=PATH or set `path`)"
                        )));
                    }
                    BackendRt::Local { served: s }
                }
                _ => BackendRt::Remote(Arc::new(
                    Remote::new(name, b).map_err(|e| RouteError::Setup(e.to_string()))?,
                )),
            };
            costs.insert(name.clone(), (b.cost, b.context, b.weight));
            backends.insert(name.clone(), rt);
        }
        let models = cfg
            .models
            .iter()
            .map(|(n, m)| {
                let m = m.get_ref();
                (
                    n.clone(),
                    RouteModel {
                        chain: m.backends.iter().map(|b| b.get_ref().clone()).collect(),
                        strategy: m.strategy,
                    },
                )
            })
            .collect();
        let analyzer = Analyzer::new()
            .map_err(|e| RouteError::Setup(format!("cannot start the guard: {e}")))?;
        Ok(Routes {
            backends,
            costs,
            models,
            policies: Policies::from_config(cfg),
            analyzer,
            notice: cfg.server.notice.clone(),
            metrics: RouteMetrics::default(),
            seed: std::sync::atomic::AtomicU64::new(0x853C_49E6_748F_EA9B),
        })
    }

    /// Starts active health checks (needs a running tokio runtime).
    pub fn start_health_checks(&self) {
        for b in self.backends.values() {
            if let BackendRt::Remote(r) = b {
                crate::upstream::spawn_health_checks(r.clone());
            }
        }
    }

    /// Public model names served through routing.
    pub fn model_names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    pub fn has_model(&self, name: &str) -> bool {
        self.models.contains_key(name)
    }

    /// The backends to try, in order, for one request.
    fn order(&self, model: &str, m: &RouteModel, prompt_tokens: u64) -> Vec<String> {
        let mut chain = m.chain.clone();
        if model == "auto" {
            // Cheapest first among those that can hold the prompt; the rest keep their order.
            chain.retain(|b| {
                let ctx = self.costs.get(b).map_or(0, |c| c.1);
                ctx == 0 || ctx > prompt_tokens
            });
            chain.sort_by(|a, b| {
                let ca = self.costs.get(a).map_or(0.0, |c| c.0);
                let cb = self.costs.get(b).map_or(0.0, |c| c.0);
                ca.total_cmp(&cb)
            });
            return chain;
        }
        let first = match m.strategy {
            Strategy::Fallback => None,
            Strategy::Weighted => {
                let total: u64 = chain
                    .iter()
                    .map(|b| self.costs.get(b).map_or(1, |c| c.2) as u64)
                    .sum();
                if total == 0 {
                    None
                } else {
                    let mut x = self
                        .seed
                        .fetch_add(0x9E37_79B9_7F4A_7C15, std::sync::atomic::Ordering::Relaxed);
                    x ^= x >> 31;
                    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    let mut r = (x ^ (x >> 29)) % total;
                    chain.iter().position(|b| {
                        let w = self.costs.get(b).map_or(1, |c| c.2) as u64;
                        if r < w {
                            true
                        } else {
                            r -= w;
                            false
                        }
                    })
                }
            }
            Strategy::LeastOutstanding => {
                (0..chain.len()).min_by_key(|&i| match self.backends.get(&chain[i]) {
                    Some(BackendRt::Remote(r)) => {
                        r.outstanding.load(std::sync::atomic::Ordering::Relaxed)
                    }
                    _ => 0,
                })
            }
        };
        if let Some(i) = first {
            let b = chain.remove(i);
            chain.insert(0, b);
        }
        chain
    }
}

/// Counters for /metrics: per model, backend, track and decision; per entity type; upstream
/// failures and cut streams. Counts only, never values.
#[derive(Default)]
pub struct RouteMetrics {
    requests: Mutex<BTreeMap<[String; 4], u64>>,
    findings: Mutex<BTreeMap<String, u64>>,
    failures: Mutex<BTreeMap<[String; 2], u64>>,
}

fn bump<K: Ord>(m: &Mutex<BTreeMap<K, u64>>, k: K, n: u64) {
    if let Ok(mut g) = m.lock() {
        *g.entry(k).or_insert(0) += n;
    }
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl RouteMetrics {
    fn request(&self, model: &str, backend: &str, track: &str, decision: &str) {
        bump(
            &self.requests,
            [model, backend, track, decision].map(str::to_string),
            1,
        );
    }

    fn failure(&self, backend: &str, kind: &str) {
        bump(&self.failures, [backend, kind].map(str::to_string), 1);
    }

    /// Prometheus text format.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        s.push_str("# HELP mideum_route_requests_total Routed requests by public model, backend, track and policy decision.\n# TYPE mideum_route_requests_total counter\n");
        if let Ok(g) = self.requests.lock() {
            for ([m, b, t, d], n) in g.iter() {
                let _ = writeln!(s, "mideum_route_requests_total{{model=\"{}\",backend=\"{}\",track=\"{}\",decision=\"{}\"}} {n}", label(m), label(b), label(t), label(d));
            }
        }
        s.push_str("# HELP mideum_guard_findings_total Personal-data findings in routed requests by entity type.\n# TYPE mideum_guard_findings_total counter\n");
        if let Ok(g) = self.findings.lock() {
            for (e, n) in g.iter() {
                let _ = writeln!(
                    s,
                    "mideum_guard_findings_total{{entity=\"{}\"}} {n}",
                    label(e)
                );
            }
        }
        s.push_str("# HELP mideum_upstream_failures_total Failed upstream calls (after retries) and cut streams by backend.\n# TYPE mideum_upstream_failures_total counter\n");
        if let Ok(g) = self.failures.lock() {
            for ([b, k], n) in g.iter() {
                let _ = writeln!(
                    s,
                    "mideum_upstream_failures_total{{backend=\"{}\",kind=\"{}\"}} {n}",
                    label(b),
                    label(k)
                );
            }
        }
        s
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat/completions",
            Endpoint::Completions => "completions",
        }
    }
    fn name(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat.completions",
            Endpoint::Completions => "completions",
        }
    }
}

pub async fn chat(State(st): State<Arc<AppState>>, req: Request) -> Response {
    handle(st, Endpoint::Chat, req).await
}

pub async fn completions(State(st): State<Arc<AppState>>, req: Request) -> Response {
    handle(st, Endpoint::Completions, req).await
}

/// What goes in the transparency headers.
#[derive(Clone, Default)]
struct RouteInfo {
    track: &'static str,
    backend: String,
    reason: String,
    notice: Option<String>,
}

fn set_header(h: &mut HeaderMap, name: &'static str, v: &str) {
    if let Ok(v) = HeaderValue::from_str(v) {
        h.insert(HeaderName::from_static(name), v);
    }
}

impl RouteInfo {
    fn apply(&self, h: &mut HeaderMap) {
        set_header(h, "x-ai-generated", "true");
        set_header(h, "x-mideum-route", self.track);
        set_header(h, "x-mideum-backend", &self.backend);
        set_header(h, "x-mideum-policy", &self.reason);
        if self.notice.is_some() {
            set_header(h, "x-mideum-notice", "appended");
        }
    }
}

struct Ctx {
    st: Arc<AppState>,
    ep: Endpoint,
    t0: Instant,
    stream: bool,
    notice: Option<String>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn handle(st: Arc<AppState>, ep: Endpoint, req: Request) -> Response {
    let t0 = Instant::now();
    let (parts, body) = req.into_parts();
    let origin = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let bearer = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let principal = match st.auth.authenticate(bearer, origin) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let bytes = match axum::body::to_bytes(body, 32 * 1024 * 1024).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::bad_request(
                "The request body could not be read (over 32 MiB or cut off)",
                None,
            )
            .into_response()
        }
    };
    let mut rec = RequestRecord {
        time_unix_ms: now_ms(),
        tenant: principal.tenant.clone(),
        key_id: principal.key_id.clone(),
        origin,
        user: None,
        endpoint: ep.name(),
        requested_model: String::new(),
        served_model: None,
        backend: None,
        track: None,
        findings: Vec::new(),
        decision: "none".into(),
        reason: String::new(),
        prompt_tokens: 0,
        completion_tokens: 0,
        latency_ms: 0,
        status: 0,
    };
    match dispatch(&st, ep, &principal, &parts.headers, &bytes, &mut rec, t0).await {
        Ok(r) => r,
        Err(e) => {
            rec.status = e.status.as_u16();
            rec.latency_ms = t0.elapsed().as_millis() as u64;
            let reason = rec.reason.clone();
            let audit = st.audit.record(rec).await;
            let mut r = match audit {
                Ok(()) => e.into_response(),
                Err(a) => a.into_response(),
            };
            if !reason.is_empty() {
                set_header(r.headers_mut(), "x-mideum-policy", &reason);
            }
            r
        }
    }
}

fn forbidden(message: String, code: &'static str) -> ApiError {
    ApiError {
        status: StatusCode::FORBIDDEN,
        message,
        kind: "invalid_request_error",
        param: None,
        code: Some(code),
        retry_after: None,
    }
}

fn unavailable(message: String) -> ApiError {
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: Some("upstream_unavailable"),
        ..ApiError::internal(message)
    }
}

async fn dispatch(
    st: &Arc<AppState>,
    ep: Endpoint,
    principal: &Principal,
    headers: &HeaderMap,
    bytes: &[u8],
    rec: &mut RequestRecord,
    t0: Instant,
) -> ApiResult<Response> {
    let v = parse_body(bytes)?;
    let model = model_field(&v)?.to_string();
    rec.requested_model = model.clone();
    rec.user = v.get("user").and_then(|u| u.as_str()).map(str::to_string);
    if !principal.may_use(&model) {
        return Err(forbidden(
            format!("This API key may not use the model `{model}`."),
            "model_not_allowed",
        ));
    }
    st.auth.admit(principal, bytes.len() as u64 / 3)?;
    let stream = v.get("stream") == Some(&Value::Bool(true));
    let confidential = headers
        .get("x-mideum-data-class")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| h.trim().eq_ignore_ascii_case("confidential"))
        || principal
            .data_class
            .as_deref()
            .is_some_and(|d| d.eq_ignore_ascii_case("confidential"));
    let routes = st.routes.clone();
    let notice = principal
        .notice
        .clone()
        .or_else(|| routes.as_ref().and_then(|r| r.notice.clone()));
    let ctx = Ctx {
        st: st.clone(),
        ep,
        t0,
        stream,
        notice,
    };
    let Some(routes) = routes.filter(|r| r.has_model(&model)) else {
        // A model given only with --model: served here, nothing leaves the premises.
        st.model(&model)?;
        let info = RouteInfo {
            track: "local",
            backend: model.clone(),
            reason: "local model".into(),
            notice: ctx.notice.clone(),
        };
        rec.decision = "allow".into();
        rec.reason = info.reason.clone();
        return serve_local(&ctx, v, &model, Vault::new(), info, rec.clone(), None).await;
    };
    let Some(policy) = routes.policies.get(principal.policy.as_deref()) else {
        return Err(ApiError::internal(format!(
            "The policy {:?} assigned to this key is not defined in mideum.toml",
            principal.policy.as_deref().unwrap_or("default")
        )));
    };
    let scan = Scan::run(&routes.analyzer, &v);
    if let Ok(s) = &scan {
        rec.findings = s
            .findings
            .iter()
            .map(|(k, n)| (k.to_string(), *n))
            .collect();
        for (k, n) in &s.findings {
            bump(&routes.metrics.findings, k.to_string(), *n as u64);
        }
    }
    let rm = &routes.models[&model];
    let order = routes.order(&model, rm, bytes.len() as u64 / 3);
    let mut skipped: Vec<String> = Vec::new();
    let mut route_local: Option<String> = None;
    let mut last_err: Option<UpstreamError> = None;
    for name in &order {
        let Some(b) = routes.backends.get(name) else {
            continue;
        };
        let track = b.track();
        let decision = match &scan {
            Ok(s) => policy.decide(s.findings.keys().copied(), track, confidential),
            Err(_) if track == Track::Local => Decision {
                verdict: Verdict::Send,
                actions: BTreeMap::new(),
                reason: "guard failed; served locally".into(),
            },
            Err(_) => {
                skipped.push(format!(
                    "{name}: the guard failed, so nothing leaves the premises"
                ));
                continue;
            }
        };
        match decision.verdict {
            Verdict::Block => {
                routes.metrics.request(&model, "-", track.as_str(), "block");
                rec.decision = "block".into();
                rec.reason = decision.reason.clone();
                return Err(forbidden(
                    format!("This request was blocked by the data policy: {}. Remove that data or ask for a local model.", decision.reason),
                    "blocked_by_policy",
                ));
            }
            Verdict::RouteLocal => {
                route_local = Some(decision.reason);
                break;
            }
            Verdict::Skip => {
                skipped.push(format!("{name}: {}", decision.reason));
                continue;
            }
            Verdict::Send => {}
        }
        let (body, vault) = match transform(&scan, &v, &decision) {
            Ok(x) => x,
            Err(_) if track != Track::Local => {
                skipped.push(format!(
                    "{name}: the guard failed, so nothing leaves the premises"
                ));
                continue;
            }
            Err(_) => (v.clone(), Vault::new()),
        };
        let info = RouteInfo {
            track: track.as_str(),
            backend: name.clone(),
            reason: decision.reason.clone(),
            notice: ctx.notice.clone(),
        };
        rec.decision = decision.name().into();
        rec.reason = decision.reason.clone();
        match b {
            BackendRt::Local { served } => {
                routes
                    .metrics
                    .request(&model, name, track.as_str(), decision.name());
                return serve_local(&ctx, body, served, vault, info, rec.clone(), None).await;
            }
            BackendRt::Remote(r) => {
                if r.breaker_open() {
                    skipped.push(format!("{name}: circuit breaker open"));
                    last_err = Some(UpstreamError::CircuitOpen);
                    continue;
                }
                match forward(&ctx, r, body, vault, info, rec.clone()).await {
                    Ok(resp) => {
                        routes
                            .metrics
                            .request(&model, name, track.as_str(), decision.name());
                        return Ok(resp);
                    }
                    Err(e) => {
                        tracing::warn!(backend = %name, error = %e, "upstream failed; trying the next backend");
                        routes.metrics.failure(name, fail_kind(&e));
                        skipped.push(format!("{name}: {e}"));
                        last_err = Some(e);
                    }
                }
            }
        }
    }
    if let Some(reason) = route_local {
        let local = rm
            .chain
            .iter()
            .find(|b| matches!(routes.backends.get(*b), Some(BackendRt::Local { .. })))
            .cloned()
            .or_else(|| policy.local_backend.clone());
        let Some((name, BackendRt::Local { served })) =
            local.and_then(|n| routes.backends.get(&n).map(|b| (n, b)))
        else {
            routes.metrics.request(&model, "-", "local", "route_local");
            rec.decision = "route_local".into();
            rec.reason = reason.clone();
            return Err(forbidden(
                format!("This request must be served on the premises ({reason}), but no local backend serves `{model}`. Use a local model or set `local_backend` in the policy."),
                "local_required",
            ));
        };
        let d = match &scan {
            Ok(s) => policy.decide(s.findings.keys().copied(), Track::Local, false),
            Err(_) => Decision {
                verdict: Verdict::Send,
                actions: BTreeMap::new(),
                reason: String::new(),
            },
        };
        if d.verdict == Verdict::Block {
            rec.decision = "block".into();
            rec.reason = d.reason.clone();
            return Err(forbidden(
                format!("This request was blocked by the data policy: {}.", d.reason),
                "blocked_by_policy",
            ));
        }
        let (body, vault) = transform(&scan, &v, &d).unwrap_or_else(|_| (v.clone(), Vault::new()));
        let info = RouteInfo {
            track: "local",
            backend: name.clone(),
            reason: format!("route_local: {reason}"),
            notice: ctx.notice.clone(),
        };
        rec.decision = "route_local".into();
        rec.reason = info.reason.clone();
        routes
            .metrics
            .request(&model, &name, "local", "route_local");
        return serve_local(&ctx, body, served, vault, info, rec.clone(), None).await;
    }
    if scan.is_err() {
        return Err(unavailable(
            "The personal-data guard failed, so this request was not sent off the premises.".into(),
        ));
    }
    rec.decision = "unavailable".into();
    rec.reason = skipped.join("; ");
    match last_err {
        Some(_) => Err(unavailable(format!(
            "No backend for `{model}` could answer: {}.",
            skipped.join("; ")
        ))),
        None => Err(forbidden(
            format!(
                "No backend for `{model}` may take this request under the data policy: {}.",
                skipped.join("; ")
            ),
            "no_allowed_backend",
        )),
    }
}

fn fail_kind(e: &UpstreamError) -> &'static str {
    match e {
        UpstreamError::Connect => "connect",
        UpstreamError::Status(_) => "status",
        UpstreamError::Timeout => "timeout",
        UpstreamError::CircuitOpen => "circuit_open",
        UpstreamError::RetryTooLate(_) => "retry_after",
        UpstreamError::Setup(_) => "setup",
    }
}

fn transform(
    scan: &Result<Scan, crate::scan::ScanError>,
    v: &Value,
    d: &Decision,
) -> Result<(Value, Vault), crate::scan::ScanError> {
    let mut vault = Vault::new();
    match scan {
        Ok(s) => Ok((s.transform(v, &d.actions, &mut vault)?, vault)),
        Err(_) if d.actions.is_empty() => Ok((v.clone(), vault)),
        Err(_) => Err(crate::scan::ScanError::Panicked),
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

async fn serve_local(
    ctx: &Ctx,
    mut body: Value,
    served: &str,
    vault: Vault,
    info: RouteInfo,
    mut rec: RequestRecord,
    _guard: Option<InFlight>,
) -> ApiResult<Response> {
    body["model"] = Value::String(served.to_string());
    rec.backend = Some(info.backend.clone());
    rec.track = Some("local".into());
    rec.served_model = Some(served.to_string());
    let bytes =
        Bytes::from(serde_json::to_vec(&body).map_err(|e| ApiError::internal(e.to_string()))?);
    let st = State(ctx.st.clone());
    let resp = match ctx.ep {
        Endpoint::Chat => crate::chat::chat_completions(st, bytes).await,
        Endpoint::Completions => crate::completions::completions(st, bytes).await,
    };
    let status = resp.status();
    let retry_after = resp.headers().get("retry-after").cloned();
    let is_sse = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream"));
    if is_sse {
        let src: ByteStream = Box::pin(
            resp.into_body()
                .into_data_stream()
                .map(|r| r.map_err(|e| e.to_string())),
        );
        return Ok(sse_response(ctx, src, None, vault, info, rec, None));
    }
    let body = axum::body::to_bytes(resp.into_body(), 64 * 1024 * 1024)
        .await
        .map_err(|e| ApiError::internal(format!("cannot read the local answer: {e}")))?;
    let mut r = whole_response(ctx, status, &body, &vault, info, rec).await?;
    if let Some(ra) = retry_after {
        r.headers_mut().insert("retry-after", ra);
    }
    Ok(r)
}

async fn forward(
    ctx: &Ctx,
    r: &Arc<Remote>,
    mut body: Value,
    vault: Vault,
    info: RouteInfo,
    mut rec: RequestRecord,
) -> Result<Response, UpstreamError> {
    if let Some(m) = &r.model {
        body["model"] = Value::String(m.clone());
    }
    rec.backend = Some(r.name.clone());
    rec.track = Some(r.track.as_str().into());
    rec.served_model = body
        .get("model")
        .and_then(|m| m.as_str())
        .map(str::to_string);
    let bytes = serde_json::to_vec(&body).map_err(|e| UpstreamError::Setup(e.to_string()))?;
    let guard = r.in_flight();
    let resp = r.post(ctx.ep.path(), Bytes::from(bytes)).await?;
    let status = resp.status();
    let idle = Duration::from_millis(r.cfg.timeout_ms);
    let is_sse = resp
        .headers()
        .get("content-type")
        .and_then(|c| c.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream"));
    if status.is_success() && (ctx.stream || is_sse) {
        let src: ByteStream = Box::pin(
            http_body_util::BodyStream::new(resp.into_body()).filter_map(|f| async move {
                match f {
                    Ok(frame) => frame.into_data().ok().map(Ok),
                    Err(e) => Some(Err(e.to_string())),
                }
            }),
        );
        return Ok(sse_response(
            ctx,
            src,
            Some(idle),
            vault,
            info,
            rec,
            Some(guard),
        ));
    }
    use http_body_util::BodyExt;
    let body = match tokio::time::timeout(idle, resp.into_body().collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => return Err(UpstreamError::Connect),
        Err(_) => return Err(UpstreamError::Timeout),
    };
    drop(guard);
    let status = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    whole_response(ctx, status, &body, &vault, info, rec)
        .await
        .or_else(|e| Ok(e.into_response()))
}

/// Restores pseudonyms in every string of a whole answer (tool-call arguments as JSON text).
fn restore_value(v: &mut Value, vault: &Vault, key: Option<&str>) {
    match v {
        Value::String(s) if s.contains('<') || s.contains("\\u003c") => {
            *s = if key == Some("arguments") {
                vault.restore_json(s)
            } else {
                vault.restore(s)
            };
        }
        Value::Array(a) => a.iter_mut().for_each(|x| restore_value(x, vault, key)),
        Value::Object(o) => o
            .iter_mut()
            .for_each(|(k, x)| restore_value(x, vault, Some(k))),
        _ => {}
    }
}

fn add_notice(v: &mut Value, notice: &str) {
    if let Some(choices) = v.get_mut("choices").and_then(|c| c.as_array_mut()) {
        for c in choices {
            let slot = match c.get_mut("message") {
                Some(m) => m.get_mut("content"),
                None => c.get_mut("text"),
            };
            if let Some(Value::String(s)) = slot {
                s.push_str("\n\n");
                s.push_str(notice);
            }
        }
    }
}

async fn whole_response(
    ctx: &Ctx,
    status: StatusCode,
    body: &[u8],
    vault: &Vault,
    info: RouteInfo,
    mut rec: RequestRecord,
) -> ApiResult<Response> {
    let out: Vec<u8> = match serde_json::from_slice::<Value>(body) {
        Ok(mut v) => {
            if !vault.is_empty() {
                restore_value(&mut v, vault, None);
            }
            if status.is_success() {
                if let Some(n) = &info.notice {
                    add_notice(&mut v, n);
                }
            }
            if let Some(u) = v.get("usage") {
                rec.prompt_tokens = u.get("prompt_tokens").and_then(|x| x.as_u64()).unwrap_or(0);
                rec.completion_tokens = u
                    .get("completion_tokens")
                    .and_then(|x| x.as_u64())
                    .unwrap_or(0);
            }
            serde_json::to_vec(&v).map_err(|e| ApiError::internal(e.to_string()))?
        }
        Err(_) if status.is_success() => {
            return Err(ApiError {
                status: StatusCode::BAD_GATEWAY,
                ..ApiError::internal("The upstream answered with something that is not JSON.")
            })
        }
        Err(_) => vault.restore(&String::from_utf8_lossy(body)).into_bytes(),
    };
    rec.status = status.as_u16();
    rec.latency_ms = ctx.t0.elapsed().as_millis() as u64;
    let (tenant, key, pt, ct) = (
        rec.tenant.clone(),
        rec.key_id.clone(),
        rec.prompt_tokens,
        rec.completion_tokens,
    );
    ctx.st.audit.record(rec).await?;
    ctx.st.audit.settle(&tenant, &key, pt, ct);
    let mut r = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(out))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    info.apply(r.headers_mut());
    Ok(r)
}

/// Re-emits a server-sent-event stream, restoring pseudonyms chunk by chunk.
struct SseRelay {
    src: ByteStream,
    idle: Option<Duration>,
    buf: Vec<u8>,
    vault: Vault,
    /// (choice index, tool-call index or -1 for text) -> bytes held back.
    pending: BTreeMap<(u64, i64), String>,
    ep: Endpoint,
    notice: Option<String>,
    /// The last chunk seen, as a template for chunks we add.
    template: Option<Value>,
    st: Arc<AppState>,
    rec: Option<RequestRecord>,
    t0: Instant,
    done: bool,
    _guard: Option<InFlight>,
}

fn sse_response(
    ctx: &Ctx,
    src: ByteStream,
    idle: Option<Duration>,
    vault: Vault,
    info: RouteInfo,
    rec: RequestRecord,
    guard: Option<InFlight>,
) -> Response {
    let relay = SseRelay {
        src,
        idle,
        buf: Vec::new(),
        vault,
        pending: BTreeMap::new(),
        ep: ctx.ep,
        notice: info.notice.clone(),
        template: None,
        st: ctx.st.clone(),
        rec: Some(rec),
        t0: ctx.t0,
        done: false,
        _guard: guard,
    };
    let s = futures_util::stream::unfold(relay, |mut r| async move {
        let out = r.next_bytes().await?;
        Some((Ok::<Bytes, std::convert::Infallible>(out), r))
    });
    let mut resp = Response::new(Body::from_stream(s));
    let h = resp.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    info.apply(h);
    resp
}

fn take_event(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let i = buf.windows(2).position(|w| w == b"\n\n")?;
    let ev: Vec<u8> = buf.drain(..i + 2).collect();
    Some(ev[..i].to_vec())
}

impl SseRelay {
    async fn next_bytes(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        loop {
            if let Some(ev) = take_event(&mut self.buf) {
                let out = self.on_event(&ev).await;
                if !out.is_empty() {
                    return Some(Bytes::from(out));
                }
                if self.done {
                    return None;
                }
                continue;
            }
            let next = match self.idle {
                Some(d) => match tokio::time::timeout(d, self.src.next()).await {
                    Ok(x) => x,
                    Err(_) => Some(Err("no data within the timeout".into())),
                },
                None => self.src.next().await,
            };
            match next {
                Some(Ok(b)) => self.buf.extend(b.iter().filter(|&&c| c != b'\r')),
                Some(Err(e)) => {
                    return Some(
                        self.fail(&format!("The upstream stream failed mid-answer ({e})."))
                            .await,
                    )
                }
                None if self.buf.iter().any(|c| !c.is_ascii_whitespace()) => {
                    self.buf.extend_from_slice(b"\n\n");
                }
                None => {
                    return Some(
                        self.fail("The upstream stream ended before the answer was complete.")
                            .await,
                    )
                }
            }
        }
    }

    /// Ends the stream with an error event (never a silent success) and records it.
    async fn fail(&mut self, message: &str) -> Bytes {
        self.done = true;
        if let Some(mut rec) = self.rec.take() {
            rec.status = 502;
            rec.latency_ms = self.t0.elapsed().as_millis() as u64;
            if let (Some(routes), Some(b)) = (&self.st.routes, &rec.backend) {
                routes.metrics.failure(b, "stream_cut");
            }
            let _ = self.st.audit.record(rec).await;
        }
        let e = json!({"error": {"message": message, "type": "server_error", "param": null, "code": "upstream_stream_cut"}});
        Bytes::from(format!("data: {e}\n\n"))
    }

    fn push(&mut self, key: (u64, i64), s: &str, mode: RestoreMode) -> String {
        let p = self.pending.entry(key).or_default();
        p.push_str(s);
        let (out, used) = self.vault.restore_partial(p, mode, false);
        p.drain(..used);
        out
    }

    fn flush(&mut self, key: (u64, i64)) -> String {
        let Some(p) = self.pending.remove(&key) else {
            return String::new();
        };
        let mode = if key.1 >= 0 {
            RestoreMode::Json
        } else {
            RestoreMode::Text
        };
        self.vault.restore_partial(&p, mode, true).0
    }

    fn restore_chunk(&mut self, v: &mut Value) {
        let ep = self.ep;
        let Some(choices) = v.get_mut("choices").and_then(|c| c.as_array_mut()) else {
            return;
        };
        for c in choices {
            let idx = c.get("index").and_then(|i| i.as_u64()).unwrap_or(0);
            let finished = c.get("finish_reason").is_some_and(|f| !f.is_null());
            match ep {
                Endpoint::Chat => {
                    let Some(d) = c.get_mut("delta") else {
                        continue;
                    };
                    if let Some(Value::String(s)) = d.get_mut("content") {
                        let t = std::mem::take(s);
                        *s = self.push((idx, -1), &t, RestoreMode::Text);
                    }
                    if let Some(tcs) = d.get_mut("tool_calls").and_then(|t| t.as_array_mut()) {
                        for tc in tcs {
                            let ti = tc.get("index").and_then(|i| i.as_i64()).unwrap_or(0).max(0);
                            if let Some(Value::String(a)) = tc.pointer_mut("/function/arguments") {
                                let t = std::mem::take(a);
                                *a = self.push((idx, ti), &t, RestoreMode::Json);
                            }
                        }
                    }
                    if finished {
                        let keys: Vec<(u64, i64)> = self
                            .pending
                            .keys()
                            .filter(|k| k.0 == idx)
                            .copied()
                            .collect();
                        for k in keys {
                            let rest = self.flush(k);
                            if rest.is_empty() {
                                continue;
                            }
                            append_delta(d, k.1, &rest);
                        }
                    }
                }
                Endpoint::Completions => {
                    if let Some(Value::String(s)) = c.get_mut("text") {
                        let t = std::mem::take(s);
                        *s = self.push((idx, -1), &t, RestoreMode::Text);
                    }
                    if finished {
                        let rest = self.flush((idx, -1));
                        if let Some(Value::String(s)) = c.get_mut("text") {
                            s.push_str(&rest);
                        }
                    }
                }
            }
        }
    }

    /// A chunk in the answer's own shape carrying `text` for choice 0.
    fn extra_chunk(&self, parts: Vec<(u64, i64, String)>) -> Option<String> {
        let mut v = self.template.clone()?;
        let choices: Vec<Value> = parts
            .into_iter()
            .map(|(idx, ti, text)| match self.ep {
                Endpoint::Chat => {
                    let mut d = json!({});
                    append_delta(&mut d, ti, &text);
                    json!({"index": idx, "delta": d, "finish_reason": null})
                }
                Endpoint::Completions => json!({"index": idx, "text": text, "finish_reason": null}),
            })
            .collect();
        v["choices"] = Value::Array(choices);
        if let Some(o) = v.as_object_mut() {
            o.remove("usage");
        }
        Some(format!("data: {v}\n\n"))
    }

    async fn on_event(&mut self, ev: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(ev);
        let mut data = String::new();
        let mut has_data = false;
        for line in text.split('\n') {
            if let Some(d) = line.strip_prefix("data:") {
                if has_data {
                    data.push('\n');
                }
                data.push_str(d.strip_prefix(' ').unwrap_or(d));
                has_data = true;
            }
        }
        if !has_data {
            // Comments and keep-alives pass through.
            let mut out = ev.to_vec();
            out.extend_from_slice(b"\n\n");
            return out;
        }
        if data.trim() == "[DONE]" {
            return self.on_done().await;
        }
        let Ok(mut v) = serde_json::from_str::<Value>(&data) else {
            return self
                .fail("The upstream sent a stream event that is not JSON.")
                .await
                .to_vec();
        };
        if v.get("error").is_some_and(|e| !e.is_null()) {
            restore_value(&mut v, &self.vault, None);
            if let Some(rec) = self.rec.as_mut() {
                rec.status = 502;
            }
            return format!("data: {v}\n\n").into_bytes();
        }
        if let (Some(u), Some(rec)) = (v.get("usage").filter(|u| !u.is_null()), self.rec.as_mut()) {
            rec.prompt_tokens = u.get("prompt_tokens").and_then(|x| x.as_u64()).unwrap_or(0);
            rec.completion_tokens = u
                .get("completion_tokens")
                .and_then(|x| x.as_u64())
                .unwrap_or(0);
        }
        if !self.vault.is_empty() {
            self.restore_chunk(&mut v);
        }
        if self.template.is_none() {
            self.template = Some(v.clone());
        }
        format!("data: {v}\n\n").into_bytes()
    }

    async fn on_done(&mut self) -> Vec<u8> {
        let mut out = String::new();
        let keys: Vec<(u64, i64)> = self.pending.keys().copied().collect();
        let mut rest = Vec::new();
        for k in keys {
            let t = self.flush(k);
            if !t.is_empty() {
                rest.push((k.0, k.1, t));
            }
        }
        if !rest.is_empty() {
            if let Some(c) = self.extra_chunk(rest) {
                out.push_str(&c);
            }
        }
        if let Some(n) = self.notice.clone() {
            if let Some(c) = self.extra_chunk(vec![(0, -1, format!("\n\n{n}"))]) {
                out.push_str(&c);
            }
        }
        if let Some(mut rec) = self.rec.take() {
            if rec.status == 0 {
                rec.status = 200;
            }
            rec.latency_ms = self.t0.elapsed().as_millis() as u64;
            let (tenant, key, pt, ct) = (
                rec.tenant.clone(),
                rec.key_id.clone(),
                rec.prompt_tokens,
                rec.completion_tokens,
            );
            if let Err(e) = self.st.audit.record(rec).await {
                self.done = true;
                let e = json!({"error": {"message": format!("The answer could not be recorded: {}", e.message), "type": "server_error", "param": null, "code": "audit_failed"}});
                out.push_str(&format!("data: {e}\n\n"));
                return out.into_bytes();
            }
            self.st.audit.settle(&tenant, &key, pt, ct);
        }
        self.done = true;
        out.push_str("data: [DONE]\n\n");
        out.into_bytes()
    }
}

/// Appends text to a chat delta: to `content` (ti < 0) or to tool call `ti`'s arguments.
fn append_delta(d: &mut Value, ti: i64, text: &str) {
    if ti < 0 {
        match d.get_mut("content") {
            Some(Value::String(s)) => s.push_str(text),
            _ => d["content"] = Value::String(text.to_string()),
        }
        return;
    }
    if !d.get("tool_calls").is_some_and(|t| t.is_array()) {
        d["tool_calls"] = json!([]);
    }
    let Some(tcs) = d.get_mut("tool_calls").and_then(|t| t.as_array_mut()) else {
        return;
    };
    if let Some(tc) = tcs
        .iter_mut()
        .find(|t| t.get("index").and_then(|i| i.as_i64()) == Some(ti))
    {
        if let Some(Value::String(a)) = tc.pointer_mut("/function/arguments") {
            a.push_str(text);
            return;
        }
        tc["function"] = json!({"arguments": text});
        return;
    }
    tcs.push(json!({"index": ti, "function": {"arguments": text}}));
}
