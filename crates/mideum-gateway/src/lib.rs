//! Mideum's HTTP API: OpenAI-compatible endpoints (`/v1/chat/completions`,
//! `/v1/completions`, `/v1/models`) over the local engines, plus `/health`, `/ready` and
//! `/metrics`. Requests are validated field by field and answered with OpenAI-shaped errors.
//! With a `mideum.toml` ([`config`]), public models are routed per request by a
//! data-sovereignty [`policy`] to local engines or OpenAI-compatible [`upstream`]s ([`route`]).

pub mod admin;
pub mod auth;
pub mod config;
pub mod error;
pub mod params;
pub mod policy;
pub mod route;
pub mod scan;
pub mod tenants;
pub mod tools;
pub mod upstream;

mod chat;
mod completions;
mod stream;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use error::{ApiError, ApiResult};
use mideum_engine::{Engine, SubmitError};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A model the server answers for.
pub struct ServedModel {
    pub name: String,
    pub engine: Arc<Engine>,
    pub created: u64,
}

pub struct AppState {
    models: HashMap<String, Arc<ServedModel>>,
    /// Public names in the order given (aliases listed after their model).
    listing: Vec<(String, String)>,
    pub request_timeout: Option<Duration>,
    ready: AtomicBool,
    counter: AtomicU64,
    /// Resolves callers (static keys or none by default; tenants when wired by `mideum serve`).
    pub auth: Arc<dyn auth::Authenticator>,
    /// Receives one record per request (a counting log by default).
    pub audit: Arc<dyn auth::AuditSink>,
    /// The `/admin/` API, when a tenant store is configured.
    pub admin: Option<Arc<admin::Admin>>,
    /// Models routed by `mideum.toml` (none: only the `--model` models, all local).
    pub routes: Option<Arc<route::Routes>>,
}

impl AppState {
    pub fn new(request_timeout: Option<Duration>) -> AppState {
        AppState {
            models: HashMap::new(),
            listing: Vec::new(),
            request_timeout,
            ready: AtomicBool::new(false),
            counter: AtomicU64::new(0),
            auth: Arc::new(auth::StaticKeys::open()),
            audit: Arc::new(auth::LogSink),
            admin: None,
            routes: None,
        }
    }

    /// Serves `model` under its name and every alias. Fails if a name is taken.
    pub fn add(&mut self, model: ServedModel, aliases: &[String]) -> Result<(), String> {
        let m = Arc::new(model);
        for n in std::iter::once(&m.name).chain(aliases) {
            if self.models.contains_key(n) {
                return Err(format!("the model name {n:?} is used twice"));
            }
            self.models.insert(n.clone(), m.clone());
            self.listing.push((n.clone(), m.name.clone()));
        }
        Ok(())
    }

    /// Replaces the authenticator (default: no authentication).
    pub fn set_authenticator(&mut self, a: Arc<dyn auth::Authenticator>) {
        self.auth = a;
    }

    /// Replaces the audit sink (default: a log of counts).
    pub fn set_audit_sink(&mut self, s: Arc<dyn auth::AuditSink>) {
        self.audit = s;
    }

    /// Serves the models of a `mideum.toml` through the routed path.
    pub fn set_routes(&mut self, r: Arc<route::Routes>) {
        self.routes = Some(r);
    }

    /// Whether a local model of this name (or alias) is loaded.
    pub fn has_local(&self, name: &str) -> bool {
        self.models.contains_key(name)
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    pub(crate) fn model(&self, name: &str) -> ApiResult<Arc<ServedModel>> {
        self.models
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::model_not_found(name))
    }

    /// A fresh id such as `chatcmpl-5f0c…`.
    pub(crate) fn new_id(&self, prefix: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut x = t ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (std::process::id() as u64) << 40;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        format!("{prefix}-{x:016x}{n:06x}")
    }

    pub(crate) fn deadline(&self) -> Option<std::time::Instant> {
        self.request_timeout.map(|d| std::time::Instant::now() + d)
    }
}

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn submit_error(e: SubmitError) -> ApiError {
    match e {
        SubmitError::QueueFull(n) => ApiError::busy(format!("The server is at capacity ({n} requests waiting). Retry shortly."), 1),
        SubmitError::PromptTooLong { tokens, context } => ApiError::bad_request(
            format!("This model's maximum context length is {context} tokens. However, your prompt has {tokens} tokens. Shorten the prompt."),
            Some("messages"),
        )
        .with_code("context_length_exceeded"),
        SubmitError::Invalid(m) => ApiError::bad_request(m, None),
        SubmitError::Stopped => ApiError { status: StatusCode::SERVICE_UNAVAILABLE, ..ApiError::internal("the engine has stopped") },
    }
}

/// Parses a JSON request body, answering 400 for anything that is not a JSON object.
pub(crate) fn parse_body(body: &[u8]) -> ApiResult<Value> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("The request body is not valid JSON: {e}"), None)
    })?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "The request body must be a JSON object",
            None,
        ));
    }
    Ok(v)
}

pub(crate) fn model_field(v: &Value) -> ApiResult<&str> {
    match v.get("model") {
        Some(Value::String(s)) => Ok(s),
        _ => Err(ApiError::bad_request(
            "`model` is required and must be a string",
            Some("model"),
        )),
    }
}

async fn list_models(State(st): State<Arc<AppState>>) -> Json<Value> {
    let data: Vec<Value> = st
        .listing
        .iter()
        .map(|(n, canonical)| {
            let m = &st.models[n];
            json!({"id": n, "object": "model", "created": m.created, "owned_by": "mideum", "root": canonical,
                   "max_model_len": m.engine.model.ctx_size})
        })
        .collect();
    let mut data = data;
    if let Some(r) = &st.routes {
        for n in r.model_names().filter(|n| !st.models.contains_key(*n)) {
            data.push(
                json!({"id": n, "object": "model", "created": 0, "owned_by": "mideum-route"}),
            );
        }
    }
    Json(json!({"object": "list", "data": data}))
}

async fn retrieve_model(
    State(st): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    match st.models.get(&id) {
        Some(m) => Json(json!({"id": id, "object": "model", "created": m.created, "owned_by": "mideum", "root": m.name,
                               "max_model_len": m.engine.model.ctx_size}))
        .into_response(),
        None if st.routes.as_ref().is_some_and(|r| r.has_model(&id)) => {
            Json(json!({"id": id, "object": "model", "created": 0, "owned_by": "mideum-route"})).into_response()
        }
        None => ApiError::model_not_found(&id).into_response(),
    }
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn ready(State(st): State<Arc<AppState>>) -> Response {
    if st.ready.load(Ordering::SeqCst) && (!st.models.is_empty() || st.routes.is_some()) {
        Json(json!({"status": "ready", "models": st.listing.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading"})),
        )
            .into_response()
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let mut seen = std::collections::HashSet::new();
    let ms: Vec<&mideum_engine::Metrics> = st
        .listing
        .iter()
        .filter(|(_, c)| seen.insert(c.clone()))
        .map(|(_, c)| &*st.models[c].engine.metrics)
        .collect();
    let mut body = mideum_engine::render_all(&ms);
    if let Some(r) = &st.routes {
        body.push_str(&r.metrics.render());
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: Some("not_found"),
        ..ApiError::bad_request(
            "Unknown endpoint. See /v1/models, /v1/chat/completions, /v1/completions.",
            None,
        )
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let admin = match &state.admin {
        Some(a) => admin::router(a.clone()),
        None => Router::new(),
    };
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(retrieve_model))
        .route("/v1/chat/completions", post(route::chat))
        .route("/v1/completions", post(route::completions))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(32 * 1024 * 1024))
        .with_state(state)
        .merge(admin)
}

/// Serves until Ctrl-C / SIGTERM.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AppState>) -> std::io::Result<()> {
    state.set_ready();
    if let Some(r) = &state.routes {
        r.start_health_checks();
    }
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
