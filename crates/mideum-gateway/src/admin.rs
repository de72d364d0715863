//! The admin API under `/admin/`: tenants, keys, usage and the audit trail.
//!
//! Two kinds of callers. The admin token (`MIDEUM_ADMIN_TOKEN`) may do everything. A tenant's
//! own API key may read only its own tenant: its settings, its keys, its usage and its audit
//! records; asking for another tenant's is 403, and writing anything needs the admin token.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mideum_store::audit::{self, ExportFormat};
use mideum_store::crypto::constant_time_eq;
use mideum_store::time::{day_key, month_key, now_ms, parse_date};
use mideum_store::{keys, AuditFilter, Store, StoreError, Tenant, TenantConfig};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::invalid_api_key;
use crate::error::ApiError;

/// State of the admin API.
pub struct Admin {
    store: Arc<dyn Store>,
    /// The admin token; `None` disables the admin-only operations.
    token: Option<String>,
    /// The key that checks prune anchors during verify.
    audit_key: Option<Vec<u8>>,
}

impl Admin {
    pub fn new(store: Arc<dyn Store>, token: Option<String>, audit_key: Option<Vec<u8>>) -> Admin {
        Admin {
            store,
            token: token.filter(|t| !t.is_empty()),
            audit_key,
        }
    }
}

/// Who is calling the admin API.
enum Caller {
    Admin,
    Tenant(String),
}

impl Caller {
    /// The tenant this caller may read, checking a requested one.
    fn scope(&self, requested: Option<&str>) -> Result<Option<String>, ApiError> {
        match (self, requested) {
            (Caller::Admin, r) => Ok(r.map(str::to_string)),
            (Caller::Tenant(t), None) => Ok(Some(t.clone())),
            (Caller::Tenant(t), Some(r)) if r == t => Ok(Some(t.clone())),
            (Caller::Tenant(_), Some(_)) => Err(forbidden("this key may only read its own tenant")),
        }
    }

    fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Tenant(_) => Err(forbidden("this operation needs the admin token")),
        }
    }
}

fn forbidden(msg: &str) -> ApiError {
    ApiError {
        status: StatusCode::FORBIDDEN,
        message: msg.into(),
        kind: "permission_error",
        param: None,
        code: Some("forbidden"),
        retry_after: None,
    }
}

fn not_found(what: String) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: Some("not_found"),
        ..ApiError::bad_request(what, None)
    }
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Invalid(m) => ApiError::bad_request(m, None),
        StoreError::NotFound(m) => not_found(format!("not found: {m}")),
        StoreError::Conflict(m) => ApiError {
            status: StatusCode::CONFLICT,
            code: Some("conflict"),
            ..ApiError::bad_request(format!("already exists: {m}"), None)
        },
        other => {
            tracing::error!(error = %other, "admin API store error");
            ApiError::internal("the tenant store failed; see the server log")
        }
    }
}

fn bearer(h: &HeaderMap) -> Option<&str> {
    h.get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError::internal("admin task failed"))?
}

async fn caller(a: &Arc<Admin>, h: &HeaderMap) -> Result<Caller, ApiError> {
    let Some(b) = bearer(h).map(str::to_string) else {
        return Err(invalid_api_key());
    };
    if let Some(t) = &a.token {
        if constant_time_eq(t.as_bytes(), b.as_bytes()) {
            return Ok(Caller::Admin);
        }
    }
    let a = a.clone();
    blocking(
        move || match keys::authenticate(a.store.as_ref(), Some(&b)).map_err(store_error)? {
            Ok(k) => Ok(Caller::Tenant(k.tenant.id)),
            Err(_) => Err(invalid_api_key()),
        },
    )
    .await
}

fn tenant_json(t: &Tenant) -> Value {
    json!({"id": t.id, "created_ms": t.created_ms, "config": t.config})
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}"), None))
}

async fn add_tenant(
    State(a): State<Arc<Admin>>,
    h: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller(&a, &h).await?.require_admin()?;
    // `id` plus the tenant settings; `TenantConfig` refuses unknown fields.
    let mut fields: serde_json::Map<String, Value> = parse_json(&body)?;
    let id = match fields.remove("id") {
        Some(Value::String(id)) => id,
        _ => {
            return Err(ApiError::bad_request(
                "`id` is required and must be a string",
                Some("id"),
            ))
        }
    };
    mideum_store::check_tenant_id(&id).map_err(store_error)?;
    let config: TenantConfig = serde_json::from_value(Value::Object(fields))
        .map_err(|e| ApiError::bad_request(format!("invalid tenant settings: {e}"), None))?;
    let t = Tenant {
        id,
        config,
        created_ms: now_ms(),
    };
    blocking(move || {
        a.store.create_tenant(&t).map_err(store_error)?;
        Ok((StatusCode::CREATED, Json(tenant_json(&t))).into_response())
    })
    .await
}

async fn list_tenants(State(a): State<Arc<Admin>>, h: HeaderMap) -> Result<Json<Value>, ApiError> {
    let scope = caller(&a, &h).await?.scope(None)?;
    blocking(move || {
        let all = a.store.tenants().map_err(store_error)?;
        let data: Vec<Value> = all
            .iter()
            .filter(|t| scope.as_ref().is_none_or(|s| *s == t.id))
            .map(tenant_json)
            .collect();
        Ok(Json(json!({"object": "list", "data": data})))
    })
    .await
}

async fn show_tenant(
    State(a): State<Arc<Admin>>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller(&a, &h).await?.scope(Some(&id))?;
    blocking(move || match a.store.tenant(&id).map_err(store_error)? {
        Some(t) => Ok(Json(tenant_json(&t))),
        None => Err(not_found(format!("no tenant `{id}`"))),
    })
    .await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewKeyBody {
    #[serde(default)]
    label: Option<String>,
    /// Days until the key expires; none = never.
    #[serde(default)]
    expires_in_days: Option<u64>,
}

async fn create_key(
    State(a): State<Arc<Admin>>,
    h: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller(&a, &h).await?.require_admin()?;
    let b: NewKeyBody = if body.is_empty() {
        NewKeyBody::default()
    } else {
        parse_json(&body)?
    };
    let expires = b
        .expires_in_days
        .map(|d| now_ms().saturating_add(d.saturating_mul(86_400_000)));
    blocking(move || {
        let k = keys::create_key(a.store.as_ref(), &id, b.label, expires).map_err(store_error)?;
        let mut v = serde_json::to_value(&k.key).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("secret".into(), k.secret.into());
        }
        Ok((StatusCode::CREATED, Json(v)).into_response())
    })
    .await
}

#[derive(Deserialize, Default)]
struct TenantQuery {
    tenant: Option<String>,
}

async fn list_keys(
    State(a): State<Arc<Admin>>,
    h: HeaderMap,
    Query(q): Query<TenantQuery>,
) -> Result<Json<Value>, ApiError> {
    let scope = caller(&a, &h).await?.scope(q.tenant.as_deref())?;
    blocking(move || {
        let ks = a.store.keys(scope.as_deref()).map_err(store_error)?;
        Ok(Json(json!({"object": "list", "data": ks})))
    })
    .await
}

async fn tenant_keys(
    State(a): State<Arc<Admin>>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    list_keys(State(a), h, Query(TenantQuery { tenant: Some(id) })).await
}

async fn revoke_key(
    State(a): State<Arc<Admin>>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller(&a, &h).await?.require_admin()?;
    blocking(move || {
        if a.store
            .revoke_key(&id, None, now_ms())
            .map_err(store_error)?
        {
            Ok(Json(json!({"id": id, "revoked": true})))
        } else {
            Err(not_found(format!("no key `{id}`")))
        }
    })
    .await
}

#[derive(Deserialize, Default)]
struct UsageQuery {
    tenant: Option<String>,
    /// `YYYY-MM-DD` or `YYYY-MM`; default: today and this month.
    period: Option<String>,
}

async fn usage(
    State(a): State<Arc<Admin>>,
    h: HeaderMap,
    Query(q): Query<UsageQuery>,
) -> Result<Json<Value>, ApiError> {
    let scope = caller(&a, &h).await?.scope(q.tenant.as_deref())?;
    let Some(tenant) = scope else {
        return Err(ApiError::bad_request(
            "`tenant` is required with the admin token",
            Some("tenant"),
        ));
    };
    if let Some(p) = &q.period {
        let ok = (p.len() == 10 && parse_date(p).is_ok())
            || (p.len() == 7 && parse_date(&format!("{p}-01")).is_ok());
        if !ok {
            return Err(ApiError::bad_request(
                format!("expected period YYYY-MM-DD or YYYY-MM, found `{p}`"),
                Some("period"),
            ));
        }
    }
    blocking(move || {
        if a.store.tenant(&tenant).map_err(store_error)?.is_none() {
            return Err(not_found(format!("no tenant `{tenant}`")));
        }
        let now = now_ms();
        let periods = match q.period {
            Some(p) => vec![p],
            None => vec![day_key(now), month_key(now)],
        };
        let data = periods
            .iter()
            .map(|p| a.store.usage(&tenant, p).map_err(store_error))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Json(json!({"object": "list", "data": data})))
    })
    .await
}

async fn verify(State(a): State<Arc<Admin>>, h: HeaderMap) -> Result<Json<Value>, ApiError> {
    // The chain spans all tenants, so only the admin verifies it.
    caller(&a, &h).await?.require_admin()?;
    blocking(move || {
        let r = audit::verify(a.store.as_ref(), a.audit_key.as_deref()).map_err(store_error)?;
        Ok(Json(serde_json::to_value(r).unwrap_or_default()))
    })
    .await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ExportQuery {
    tenant: Option<String>,
    since: Option<String>,
    until: Option<String>,
    format: Option<String>,
}

async fn export(
    State(a): State<Arc<Admin>>,
    h: HeaderMap,
    Query(q): Query<ExportQuery>,
) -> Result<Response, ApiError> {
    let scope = caller(&a, &h).await?.scope(q.tenant.as_deref())?;
    let date = |s: &Option<String>, p: &str| {
        s.as_deref()
            .map(parse_date)
            .transpose()
            .map_err(|e| ApiError::bad_request(e.to_string(), Some(p)))
    };
    let filter = AuditFilter {
        tenant: scope,
        since_ms: date(&q.since, "since")?,
        until_ms: date(&q.until, "until")?,
    };
    let format: ExportFormat = q
        .format
        .as_deref()
        .unwrap_or("jsonl")
        .parse()
        .map_err(|e: StoreError| ApiError::bad_request(e.to_string(), Some("format")))?;
    blocking(move || {
        let mut out = Vec::new();
        audit::export(a.store.as_ref(), &filter, format, &mut out).map_err(store_error)?;
        let ctype = match format {
            ExportFormat::Jsonl => "application/x-ndjson",
            ExportFormat::Csv => "text/csv; charset=utf-8",
        };
        Ok(([(header::CONTENT_TYPE, ctype)], out).into_response())
    })
    .await
}

/// The `/admin/` routes.
pub fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/admin/tenants", post(add_tenant).get(list_tenants))
        .route("/admin/tenants/{id}", get(show_tenant))
        .route(
            "/admin/tenants/{id}/keys",
            post(create_key).get(tenant_keys),
        )
        .route("/admin/keys", get(list_keys))
        .route("/admin/keys/{id}/revoke", post(revoke_key))
        .route("/admin/usage", get(usage))
        .route("/admin/audit/verify", get(verify))
        .route("/admin/audit/export", get(export))
        .with_state(admin)
}
