//! `GET /api/v1/health`, `GET /health` and `GET /metrics`.

use serde::Serialize;
use utoipa::ToSchema;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::error::{ApiError, ApiResult, finish, success};
use super::extract::{Ctx, with_context};
use crate::limits::Counters;

/// One backend's state.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendHealth {
    /// `up` or `down`.
    pub status: &'static str,
    /// Which implementation (`sqlite`, `postgres`, `redis`, `in-process`, `embedded`, `kafka`).
    pub backend: &'static str,
    /// Round-trip time of the probe.
    pub latency_ms: Option<f64>,
    /// Why it is down.
    pub error: Option<String>,
}

/// Health of the process and its backends.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthReport {
    /// `ok`, `degraded` (an optional backend is down) or `unavailable` (the store is down).
    pub status: &'static str,
    /// Gateway version.
    pub version: &'static str,
    /// Seconds since the process started.
    pub uptime_seconds: u64,
    /// Per-backend detail.
    pub backends: Backends,
}

/// The backends checked.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Backends {
    /// The store (required).
    pub store: BackendHealth,
    /// Quota and routing cache.
    pub cache: BackendHealth,
}

/// Health and metrics routes.
pub fn routes(context: Ctx) -> BoxedFilter<(Response,)> {
    // GET /api/v1/health and GET /health
    let health = warp::path!("api" / "v1" / "health")
        .or(warp::path!("health"))
        .unify()
        .and(warp::get())
        .and(with_context(context.clone()))
        .then(health)
        .map(finish);
    // GET /metrics
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_context(context))
        .then(metrics)
        .map(finish);
    health.or(metrics).unify().boxed()
}

fn probe(result: anyhow::Result<std::time::Duration>, backend: &'static str) -> BackendHealth {
    match result {
        Ok(latency) => BackendHealth {
            status: "up",
            backend,
            latency_ms: Some(latency.as_secs_f64() * 1000.0),
            error: None,
        },
        Err(err) => BackendHealth {
            status: "down",
            backend,
            latency_ms: None,
            error: Some(format!("{err:#}")),
        },
    }
}

/// Overall and per-backend status; `503` when the store is unreachable.
#[utoipa::path(get, path = "/api/v1/health", tag = "health",
    responses((status = 200, body = super::views::Envelope<HealthReport>),
              (status = 503, description = "store unreachable", body = super::views::Envelope<HealthReport>)))]
pub async fn health(context: Ctx) -> ApiResult {
    let (store, cache) = tokio::join!(context.store.ping(), context.counters.ping());
    let store = probe(store, context.store.backend().as_str());
    let cache = probe(
        cache,
        match *context.counters {
            Counters::InProcess(_) => "in-process",
            Counters::Redis(_) => "redis",
        },
    );
    let (status, code) = match (store.status, cache.status) {
        ("up", "up") => ("ok", StatusCode::OK),
        ("up", _) => ("degraded", StatusCode::OK),
        _ => ("unavailable", StatusCode::SERVICE_UNAVAILABLE),
    };
    let report = HealthReport {
        status,
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: context.started_at.elapsed().as_secs(),
        backends: Backends { store, cache },
    };
    let mut response = success(code, &report);
    if code != StatusCode::OK {
        // Still the envelope, but `success: false` so clients that only read the flag notice.
        response = warp::reply::with_status(
            warp::reply::json(&serde_json::json!({
                "success": false,
                "data": report,
                "error": { "code": "STORE_UNAVAILABLE", "message": "the store is unreachable", "details": null },
            })),
            code,
        )
        .into_response();
    }
    Ok(response)
}

/// Prometheus text exposition.
pub async fn metrics(context: Ctx) -> ApiResult {
    let text = context.metrics.render().map_err(ApiError::Unexpected)?;
    Ok(warp::reply::with_header(text, "content-type", "text/plain; version=0.0.4").into_response())
}

use warp::Reply;
