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
    /// `ok`, `degraded` (an optional backend is down) or `unavailable` (the store is down, or
    /// `DATA_DIR` is full so the store and log files in it cannot write).
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
    /// Free space in `DATA_DIR` (`filesystem`), when the SQLite store or the embedded log
    /// lives there. A full disk leaves reads working, so the store's ping alone would say
    /// `up` while every write fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<BackendHealth>,
}

/// Below this much free space in `DATA_DIR` the disk counts as full: SQLite's next WAL growth
/// or checkpoint, and with it a send's append, may fail any moment.
pub const DATA_DIR_MIN_FREE_BYTES: u64 = 1024 * 1024;

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
    // GET /metrics (with `Authorization: Bearer <METRICS_TOKEN>` when that is set)
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(warp::header::optional::<String>("authorization"))
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
              (status = 503, description = "store unreachable, or DATA_DIR full", body = super::views::Envelope<HealthReport>)))]
pub async fn health(context: Ctx) -> ApiResult {
    let config = &context.config;
    let data_dir_in_use = config.database_url.is_none() || config.kafka_brokers.is_none();
    let disk = async {
        if data_dir_in_use {
            Some(probe(
                free_space(config.data_dir.clone()).await,
                "filesystem",
            ))
        } else {
            None
        }
    };
    let (store, cache, disk) = tokio::join!(context.store.ping(), context.counters.ping(), disk);
    let store = probe(store, context.store.backend().as_str());
    let cache = probe(
        cache,
        match *context.counters {
            Counters::InProcess(_) => "in-process",
            Counters::Redis(_) => "redis",
        },
    );
    let disk_up = disk.as_ref().is_none_or(|disk| disk.status == "up");
    let (status, code) = match (store.status, cache.status, disk_up) {
        ("up", "up", true) => ("ok", StatusCode::OK),
        ("up", _, true) => ("degraded", StatusCode::OK),
        _ => ("unavailable", StatusCode::SERVICE_UNAVAILABLE),
    };
    let error = if store.status != "up" {
        Some(("STORE_UNAVAILABLE", "the store is unreachable"))
    } else if !disk_up {
        Some((
            "DISK_FULL",
            "DATA_DIR is full: the store and the message log cannot write",
        ))
    } else {
        None
    };
    let report = HealthReport {
        status,
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: context.started_at.elapsed().as_secs(),
        backends: Backends { store, cache, disk },
    };
    let mut response = success(code, &report);
    if let Some((error_code, message)) = error {
        // Still the envelope, but `success: false` so clients that only read the flag notice.
        response = warp::reply::with_status(
            warp::reply::json(&serde_json::json!({
                "success": false,
                "data": report,
                "error": { "code": error_code, "message": message, "details": null },
            })),
            code,
        )
        .into_response();
    }
    Ok(response)
}

/// The free space of the file system holding `dir`, as a probe result: down below
/// [`DATA_DIR_MIN_FREE_BYTES`]. `statvfs` is a system call that may touch the disk, so it runs
/// on the blocking pool.
#[cfg(target_os = "linux")]
async fn free_space(dir: std::path::PathBuf) -> anyhow::Result<std::time::Duration> {
    use anyhow::Context;
    let started = std::time::Instant::now();
    let stats = tokio::task::spawn_blocking(move || rustix::fs::statvfs(&dir))
        .await
        .context("the free-space probe did not finish")?
        .context("reading the free space of DATA_DIR")?;
    let free = stats.f_bavail.saturating_mul(stats.f_frsize);
    anyhow::ensure!(
        free >= DATA_DIR_MIN_FREE_BYTES,
        "DATA_DIR has {free} bytes free (below {DATA_DIR_MIN_FREE_BYTES}): writes fail"
    );
    Ok(started.elapsed())
}

/// Free space is read through rustix, a Linux-only dependency here; elsewhere the probe has
/// nothing to say.
#[cfg(not(target_os = "linux"))]
async fn free_space(_dir: std::path::PathBuf) -> anyhow::Result<std::time::Duration> {
    Ok(std::time::Duration::ZERO)
}

/// Prometheus text exposition; behind `METRICS_TOKEN` when it is set.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String),
              (status = 401, description = "`METRICS_TOKEN` is set and was not presented", body = super::views::ErrorEnvelope)),
    security((), ("metricsToken" = [])))]
pub async fn metrics(authorization: Option<String>, context: Ctx) -> ApiResult {
    if let Some(token) = &context.config.metrics_token {
        use subtle::ConstantTimeEq;
        let presented = authorization
            .as_deref()
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !bool::from(presented.as_bytes().ct_eq(token.expose().as_bytes())) {
            return Err(ApiError::Unauthorized(
                "metrics need Authorization: Bearer <METRICS_TOKEN>",
            ));
        }
    }
    let text = context.metrics.render().map_err(ApiError::Unexpected)?;
    Ok(warp::reply::with_header(text, "content-type", "text/plain; version=0.0.4").into_response())
}

use warp::Reply;
