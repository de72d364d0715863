//! Clients for OpenAI-compatible upstreams: one pooled hyper client per backend (plain TCP or
//! rustls with the ring provider), endpoint pools with weights and active health checks,
//! retries with backoff honouring `Retry-After`, and a circuit breaker per backend.

use crate::config::{BackendCfg, BackendType, Track};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Why an upstream call failed after its retries.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to the upstream")]
    Connect,
    #[error("the upstream answered {0}")]
    Status(u16),
    #[error("the upstream did not answer in time")]
    Timeout,
    #[error("the upstream's circuit breaker is open")]
    CircuitOpen,
    #[error("the upstream asked to retry after {0} ms, longer than allowed")]
    RetryTooLate(u64),
    #[error("upstream setup failed: {0}")]
    Setup(String),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A connection, plain or TLS.
pub enum Conn {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        match self {
            Conn::Plain(s) => s.connected(),
            Conn::Tls(_) => Connected::new(),
        }
    }
}

/// Connects plain TCP for `http://`, rustls (ring, webpki roots) for `https://`.
#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    tls: tokio_rustls::TlsConnector,
}

impl Connector {
    pub fn new(connect_timeout: Duration) -> Result<Connector, UpstreamError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Connector {
            http,
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
        })
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mut http = self.http.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            let https = uri.scheme_str() == Some("https");
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_string();
            let tcp = http.call(uri).await.map_err(|e| Box::new(e) as BoxError)?;
            if !https {
                return Ok(Conn::Plain(tcp));
            }
            let name = rustls::pki_types::ServerName::try_from(host)?;
            let s = tls.connect(name, tcp.into_inner()).await?;
            Ok(Conn::Tls(Box::new(TokioIo::new(s))))
        })
    }
}

/// One URL of a backend's pool.
pub struct Endpoint {
    pub base: String,
    pub weight: u32,
    pub healthy: AtomicBool,
}

#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    /// While half-open, one trial request is in flight.
    trial: bool,
}

/// A remote backend at run time.
pub struct Remote {
    pub name: String,
    pub track: Track,
    pub kind: BackendType,
    pub endpoints: Vec<Endpoint>,
    /// Model name sent upstream (None: the public name).
    pub model: Option<String>,
    azure: Option<(String, String)>,
    key: Option<String>,
    pub cfg: BackendCfg,
    client: Client<Connector, Full<Bytes>>,
    breaker: Mutex<Breaker>,
    pub outstanding: AtomicU64,
    seed: AtomicU64,
}

/// Counts an upstream request in flight for as long as it lives.
pub struct InFlight(Arc<Remote>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Remote {
    /// Builds the client; reads the API key from the environment variable named in the file.
    pub fn new(name: &str, cfg: &BackendCfg) -> Result<Remote, UpstreamError> {
        let key = match &cfg.api_key_env {
            Some(var) => Some(std::env::var(var.get_ref()).map_err(|_| {
                UpstreamError::Setup(format!(
                    "backend {name:?}: the environment variable {} (its API key) is not set",
                    var.get_ref()
                ))
            })?),
            None => None,
        };
        let mut endpoints: Vec<Endpoint> = cfg
            .endpoints
            .iter()
            .map(|e| Endpoint {
                base: e.url.get_ref().trim_end_matches('/').to_string(),
                weight: e.weight,
                healthy: AtomicBool::new(true),
            })
            .collect();
        for u in cfg.base_url.iter().chain(cfg.endpoint.iter()) {
            endpoints.push(Endpoint {
                base: u.get_ref().trim_end_matches('/').to_string(),
                weight: 1,
                healthy: AtomicBool::new(true),
            });
        }
        let azure = match (*cfg.kind.get_ref(), &cfg.deployment, &cfg.api_version) {
            (BackendType::AzureOpenai, Some(d), Some(v)) => Some((d.clone(), v.clone())),
            _ => None,
        };
        let connector = Connector::new(Duration::from_millis(cfg.connect_timeout_ms))?;
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Remote {
            name: name.to_string(),
            track: cfg.track(),
            kind: *cfg.kind.get_ref(),
            endpoints,
            model: cfg.model.clone(),
            azure,
            key,
            cfg: cfg.clone(),
            client,
            breaker: Mutex::new(Breaker::default()),
            outstanding: AtomicU64::new(0),
            seed: AtomicU64::new(0x2545_F491_4F6C_DD1D),
        })
    }

    pub fn in_flight(self: &Arc<Self>) -> InFlight {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    fn rand(&self) -> u64 {
        let mut x = self
            .seed
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        x ^= x >> 30;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^ (x >> 31)
    }

    /// An endpoint drawn by weight among the healthy ones (all, if none is healthy).
    fn pick(&self) -> Option<&Endpoint> {
        let healthy: Vec<&Endpoint> = self
            .endpoints
            .iter()
            .filter(|e| e.weight > 0 && e.healthy.load(Ordering::Relaxed))
            .collect();
        let pool = if healthy.is_empty() {
            self.endpoints.iter().filter(|e| e.weight > 0).collect()
        } else {
            healthy
        };
        let total: u64 = pool.iter().map(|e| e.weight as u64).sum();
        if total == 0 {
            return None;
        }
        let mut r = self.rand() % total;
        for e in &pool {
            if r < e.weight as u64 {
                return Some(e);
            }
            r -= e.weight as u64;
        }
        pool.last().copied()
    }

    fn url(&self, base: &str, path: &str) -> String {
        match &self.azure {
            Some((dep, ver)) => format!("{base}/openai/deployments/{dep}/{path}?api-version={ver}"),
            None => format!("{base}/{path}"),
        }
    }

    /// Admits a call unless the breaker is open; half-open lets one trial through.
    fn breaker_admit(&self) -> bool {
        let Ok(mut b) = self.breaker.lock() else {
            return true;
        };
        match b.open_until {
            None => true,
            Some(t) if Instant::now() < t => false,
            Some(_) if b.trial => false,
            Some(_) => {
                b.trial = true;
                true
            }
        }
    }

    fn breaker_result(&self, ok: bool) {
        let Ok(mut b) = self.breaker.lock() else {
            return;
        };
        b.trial = false;
        if ok {
            *b = Breaker::default();
        } else {
            b.failures += 1;
            if b.failures >= self.cfg.breaker_failures {
                b.open_until =
                    Some(Instant::now() + Duration::from_millis(self.cfg.breaker_cooldown_ms));
                tracing::warn!(backend = %self.name, "circuit breaker open");
            }
        }
    }

    pub fn breaker_open(&self) -> bool {
        self.breaker
            .lock()
            .map(|b| b.open_until.is_some_and(|t| Instant::now() < t))
            .unwrap_or(false)
    }

    /// POSTs `body` to `path` (`chat/completions` or `completions`), retrying connect
    /// errors, timeouts, 5xx and 429 with exponential backoff (or `Retry-After`). Answers
    /// other than those (2xx, other 4xx) are returned as they are.
    pub async fn post(&self, path: &str, body: Bytes) -> Result<Response<Incoming>, UpstreamError> {
        if !self.breaker_admit() {
            return Err(UpstreamError::CircuitOpen);
        }
        let timeout = Duration::from_millis(self.cfg.timeout_ms);
        let mut last = UpstreamError::Connect;
        for attempt in 0..=self.cfg.retries {
            let Some(ep) = self.pick() else {
                return Err(UpstreamError::Connect);
            };
            let mut rb = Request::post(self.url(&ep.base, path))
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream");
            if let Some(k) = &self.key {
                rb = match self.kind {
                    BackendType::AzureOpenai => rb.header("api-key", k),
                    _ => rb.header("authorization", format!("Bearer {k}")),
                };
            }
            let req = rb
                .body(Full::new(body.clone()))
                .map_err(|e| UpstreamError::Setup(e.to_string()))?;
            let mut wait =
                Duration::from_millis(self.cfg.backoff_ms.saturating_mul(1 << attempt.min(10)));
            match tokio::time::timeout(timeout, self.client.request(req)).await {
                Ok(Ok(resp)) => {
                    let s = resp.status().as_u16();
                    if s == 429 || s >= 500 {
                        last = UpstreamError::Status(s);
                        if let Some(ra) = retry_after(&resp) {
                            if ra > Duration::from_millis(self.cfg.max_retry_after_ms) {
                                // Not worth waiting here; a 429 is not a fault of the backend.
                                self.breaker_result(s == 429);
                                return Err(UpstreamError::RetryTooLate(ra.as_millis() as u64));
                            }
                            wait = ra;
                        }
                    } else {
                        self.breaker_result(true);
                        return Ok(resp);
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!(backend = %self.name, error = %e, "upstream request failed");
                    if e.is_connect() {
                        ep.healthy.store(false, Ordering::Relaxed);
                    }
                    last = UpstreamError::Connect;
                }
                Err(_) => last = UpstreamError::Timeout,
            }
            if attempt < self.cfg.retries {
                // Jitter: 75–125 % of the wait, so clients do not retry in lockstep.
                let j = 75 + self.rand() % 51;
                tokio::time::sleep(wait * j as u32 / 100).await;
            }
        }
        self.breaker_result(false);
        Err(last)
    }

    /// Checks every endpoint once with `GET {base}/models`; marks each healthy or not.
    pub async fn health_check(&self) {
        let t = Duration::from_millis(self.cfg.timeout_ms.min(5_000));
        for ep in &self.endpoints {
            let url = match self.kind {
                BackendType::AzureOpenai => ep.base.clone(),
                _ => format!("{}/models", ep.base),
            };
            let mut rb = Request::get(url);
            if let Some(k) = &self.key {
                rb = match self.kind {
                    BackendType::AzureOpenai => rb.header("api-key", k),
                    _ => rb.header("authorization", format!("Bearer {k}")),
                };
            }
            let Ok(req) = rb.body(Full::new(Bytes::new())) else {
                continue;
            };
            let ok = match tokio::time::timeout(t, self.client.request(req)).await {
                // Any HTTP answer below 500 means the server is up.
                Ok(Ok(r)) => r.status().as_u16() < 500,
                _ => false,
            };
            ep.healthy.store(ok, Ordering::Relaxed);
        }
    }
}

/// `Retry-After` in seconds (HTTP dates are not honoured: treated as absent).
fn retry_after<B>(r: &Response<B>) -> Option<Duration> {
    let v = r.headers().get("retry-after")?.to_str().ok()?.trim();
    if let Ok(s) = v.parse::<f64>() {
        if s.is_finite() && s >= 0.0 {
            return Some(Duration::from_secs_f64(s.min(3600.0)));
        }
    }
    None
}

/// Starts the periodic health checks of a backend (if configured).
pub fn spawn_health_checks(r: Arc<Remote>) {
    if r.cfg.health_check_s == 0 {
        return;
    }
    let every = Duration::from_secs(r.cfg.health_check_s);
    let weak = Arc::downgrade(&r);
    drop(r);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(r) = weak.upgrade() else { break };
            r.health_check().await;
        }
    });
}
