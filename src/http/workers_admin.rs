//! `/api/v1/workers` (administrators): the fleet with its load; add, update (MAINTENANCE drains),
//! delete (only when empty), connectivity test, statistics.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::error::{ApiError, ApiResult, finish, not_found_as, success};
use super::extract::{Ctx, administrator, json_body, path_id, with_context};
use super::views::WorkerView;
use crate::domain::WorkerStatus;
use crate::fleet::RegisterWorker;
use crate::store::{StoreError, User};

#[allow(unused_imports)]
use super::views::{Envelope, ErrorEnvelope};

/// Body of `POST /workers`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddWorkerRequest {
    /// The worker's base URL; it is probed before it is added.
    pub endpoint: String,
    /// Id to register it under (default: what its `/health` says).
    pub worker_id: Option<String>,
    /// Capacity (default: what its `/health` says, else 50).
    pub max_sessions: Option<i64>,
    /// Free text.
    pub description: Option<String>,
}

/// Body of `PUT /workers/{id}`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateWorkerRequest {
    /// New capacity.
    pub max_sessions: Option<i64>,
    /// New description.
    pub description: Option<String>,
    /// ONLINE or MAINTENANCE (drains the worker); OFFLINE takes it out at once.
    pub status: Option<WorkerStatus>,
}

/// Fleet statistics.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetStats {
    /// Workers known.
    pub total_workers: usize,
    /// ONLINE workers.
    pub online: usize,
    /// OFFLINE workers.
    pub offline: usize,
    /// Workers in MAINTENANCE.
    pub maintenance: usize,
    /// Sessions placed on a worker.
    pub placed_sessions: i64,
    /// Capacity of ONLINE workers.
    pub online_capacity: i64,
    /// placed / capacity of ONLINE workers.
    pub utilization: f64,
}

// A worker id and description take the worker routes' rules.
use super::worker_api::{DESCRIPTION, WORKER_ID};

/// Every admin worker route.
pub fn routes(context: Ctx) -> BoxedFilter<(Response,)> {
    let base = || warp::path!("api" / "v1" / "workers" / ..);
    let ctx = || with_context(context.clone());
    let admin = || administrator(context.clone());
    // GET /api/v1/workers
    let list = base()
        .and(warp::path::end())
        .and(warp::get())
        .and(ctx())
        .and(admin())
        .then(list_workers)
        .map(finish);
    // GET /api/v1/workers/stats
    let stats = base()
        .and(warp::path!("stats"))
        .and(warp::get())
        .and(ctx())
        .and(admin())
        .then(fleet_stats)
        .map(finish);
    // A worker's id, not one of the worker protocol's own routes at the same depth
    // (`POST /api/v1/workers/register`): `GET /api/v1/workers/register` is a 405.
    let id = || {
        base()
            .and(warp::path::param::<String>())
            .and(warp::path::end())
            .and_then(|id: String| async move {
                if crate::fleet::RESERVED_WORKER_IDS.contains(&id.as_str()) {
                    Err(warp::reject::not_found())
                } else {
                    Ok(id)
                }
            })
    };
    // GET /api/v1/workers/{id}
    let get = id()
        .and(warp::get())
        .and(ctx())
        .and(admin())
        .then(get_worker)
        .map(finish);
    // POST /api/v1/workers
    let add = base()
        .and(warp::path::end())
        .and(warp::post())
        .and(ctx())
        .and(admin())
        .and(json_body())
        .then(add_worker)
        .map(finish);
    // PUT (or PATCH) /api/v1/workers/{id}
    let update = id()
        .and(warp::put().or(warp::patch()).unify())
        .and(ctx())
        .and(admin())
        .and(json_body())
        .then(update_worker)
        .map(finish);
    // DELETE /api/v1/workers/{id}
    let delete = id()
        .and(warp::delete())
        .and(ctx())
        .and(admin())
        .then(delete_worker)
        .map(finish);
    // POST /api/v1/workers/{id}/test
    let test = base()
        .and(warp::path!(String / "test"))
        .and(warp::post())
        .and(ctx())
        .and(admin())
        .then(test_worker)
        .map(finish);
    list.or(stats)
        .unify()
        .or(get)
        .unify()
        .or(add)
        .unify()
        .or(update)
        .unify()
        .or(delete)
        .unify()
        .or(test)
        .unify()
        .boxed()
}

/// The fleet with its load.
#[utoipa::path(get, path = "/api/v1/workers", tag = "workers",
    responses((status = 200, body = Envelope<Vec<WorkerView>>), (status = 403, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn list_workers(context: Ctx, _admin: User) -> ApiResult {
    let workers = context.store.list_workers().await?;
    let views: Vec<WorkerView> = workers.iter().map(WorkerView::from).collect();
    Ok(success(StatusCode::OK, &views))
}

/// One worker.
#[utoipa::path(get, path = "/api/v1/workers/{id}", tag = "workers", params(("id" = String, Path)),
    responses((status = 200, body = Envelope<WorkerView>), (status = 404, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn get_worker(id: String, context: Ctx, _admin: User) -> ApiResult {
    path_id("id", &id)?;
    let worker = context
        .store
        .worker_by_id(&id)
        .await
        .map_err(not_found_as("worker"))?;
    Ok(success(StatusCode::OK, &WorkerView::from(&worker)))
}

/// Fleet statistics.
#[utoipa::path(get, path = "/api/v1/workers/stats", tag = "workers",
    responses((status = 200, body = Envelope<FleetStats>)), security(("bearer" = [])))]
pub async fn fleet_stats(context: Ctx, _admin: User) -> ApiResult {
    let workers = context.store.list_workers().await?;
    let count = |status: WorkerStatus| workers.iter().filter(|w| w.status == status).count();
    let online_capacity: i64 = workers
        .iter()
        .filter(|w| w.status == WorkerStatus::Online)
        .map(|w| w.max_sessions)
        .sum();
    let placed_sessions: i64 = workers.iter().map(|w| w.session_count).sum();
    Ok(success(
        StatusCode::OK,
        &FleetStats {
            total_workers: workers.len(),
            online: count(WorkerStatus::Online),
            offline: count(WorkerStatus::Offline),
            maintenance: count(WorkerStatus::Maintenance),
            placed_sessions,
            online_capacity,
            utilization: if online_capacity > 0 {
                placed_sessions as f64 / online_capacity as f64
            } else {
                0.0
            },
        },
    ))
}

/// Adds a worker by endpoint after probing its `/health`.
#[utoipa::path(post, path = "/api/v1/workers", tag = "workers", request_body = AddWorkerRequest,
    responses((status = 201, body = Envelope<WorkerView>), (status = 409, description = "unreachable or taken", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn add_worker(context: Ctx, _admin: User, body: AddWorkerRequest) -> ApiResult {
    WORKER_ID.check_optional("workerId", body.worker_id.as_deref())?;
    DESCRIPTION.check_optional("description", body.description.as_deref())?;
    let endpoint = crate::fleet::normalize_endpoint(&body.endpoint)?;
    let health = context.fleet.probe(&endpoint).await?;
    let health = health.get("data").cloned().unwrap_or(health);
    let worker_id = body
        .worker_id
        .or_else(|| health["workerId"].as_str().map(str::to_owned))
        .ok_or_else(|| {
            crate::domain::InvalidInput::new(
                "workerId",
                "required: the worker's /health does not name it",
            )
        })?;
    // What the worker's /health names passes the same rule as what an administrator types.
    WORKER_ID.check("workerId", &worker_id)?;
    let max_sessions = body
        .max_sessions
        .or_else(|| health["sessions"]["maxSessions"].as_i64())
        .unwrap_or(50);
    let registered = context
        .fleet
        .register(RegisterWorker {
            worker_id,
            endpoint,
            max_sessions,
            description: body.description,
            version: health["version"].as_str().map(str::to_owned),
            environment: None,
        })
        .await?;
    Ok(success(
        StatusCode::CREATED,
        &WorkerView::from(&registered.worker),
    ))
}

/// Changes capacity, description or status; MAINTENANCE or OFFLINE moves the sessions off.
#[utoipa::path(put, path = "/api/v1/workers/{id}", tag = "workers", request_body = UpdateWorkerRequest,
    params(("id" = String, Path)),
    responses((status = 200, body = Envelope<WorkerView>), (status = 404, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn update_worker(
    id: String,
    context: Ctx,
    _admin: User,
    body: UpdateWorkerRequest,
) -> ApiResult {
    path_id("id", &id)?;
    DESCRIPTION.check_optional("description", body.description.as_deref())?;
    if body
        .max_sessions
        .is_some_and(|m| !(1..=100_000).contains(&m))
    {
        return Err(crate::domain::InvalidInput::new(
            "maxSessions",
            "must be between 1 and 100000",
        )
        .into());
    }
    let worker = context
        .store
        .update_worker(
            &id,
            body.max_sessions,
            body.description.as_deref(),
            body.status,
        )
        .await
        .map_err(not_found_as("worker"))?;
    let draining = if worker.status == WorkerStatus::Online {
        0
    } else {
        context
            .fleet
            .evacuate(&worker, "worker drained by an administrator")
            .await?
    };
    let mut data = serde_json::to_value(WorkerView::from(&worker)).map_err(anyhow::Error::from)?;
    if let serde_json::Value::Object(map) = &mut data {
        map.insert("migratingSessions".into(), json!(draining));
    }
    Ok(success(StatusCode::OK, &data))
}

/// Removes a worker that holds no sessions.
#[utoipa::path(delete, path = "/api/v1/workers/{id}", tag = "workers", params(("id" = String, Path)),
    responses((status = 200, body = Envelope<Object>), (status = 409, description = "still holds sessions", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn delete_worker(id: String, context: Ctx, _admin: User) -> ApiResult {
    path_id("id", &id)?;
    context
        .store
        .delete_worker(&id)
        .await
        .map_err(|err| match err {
            StoreError::Conflict(_) => ApiError::Conflict {
                code: "WORKER_NOT_EMPTY",
                message: "the worker still holds sessions; drain it first (status MAINTENANCE)"
                    .to_owned(),
            },
            other => not_found_as("worker")(other),
        })?;
    Ok(success(
        StatusCode::OK,
        &json!({ "id": id, "deleted": true }),
    ))
}

/// Probes the worker's `/health` now.
#[utoipa::path(post, path = "/api/v1/workers/{id}/test", tag = "workers", params(("id" = String, Path)),
    responses((status = 200, body = Envelope<Object>)), security(("bearer" = [])))]
pub async fn test_worker(id: String, context: Ctx, _admin: User) -> ApiResult {
    path_id("id", &id)?;
    let worker = context
        .store
        .worker_by_id(&id)
        .await
        .map_err(not_found_as("worker"))?;
    let started = Instant::now();
    let result = context.fleet.client().health(&worker.endpoint).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    context.store.record_probe(&id, result.is_ok()).await?;
    let data = match result {
        Ok(health) => json!({ "reachable": true, "latencyMs": latency_ms, "health": health }),
        Err(err) => {
            json!({ "reachable": false, "latencyMs": latency_ms, "error": err.to_string() })
        }
    };
    Ok(success(StatusCode::OK, &data))
}
