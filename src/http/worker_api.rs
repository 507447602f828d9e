//! The worker-facing API of WORKER_PROTOCOL.md, at the paths the existing worker calls
//! (`/api/workers/…`, `/api/webhooks/…`) and under `/api/v1/…`. Every route needs
//! `Authorization: Bearer <WORKER_AUTH_TOKEN>` (constant-time compare).
//!
//! Bodies are parsed liberally: unknown fields are ignored, optional fields may be missing or
//! `null`, numbers may be integers or floats. A malformed body is a `400` and changes nothing.

use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::error::{ApiError, ApiResult, finish, success};
use super::extract::{Ctx, json_body, with_context};
use super::views::WorkerView;
use crate::domain::{MessageStatus, SessionId, now_ms};
use crate::fleet::{RegisterWorker, ReportedSession, StatusReport};
use crate::store::WorkerMetricsSample;
use producers::{EventEnvelope, WorkerEvent};

/// Registration body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterBody {
    worker_id: String,
    endpoint: String,
    max_sessions: Option<f64>,
    description: Option<String>,
    version: Option<String>,
    environment: Option<String>,
}

/// Heartbeat body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatBody {
    #[serde(default)]
    sessions: Option<Vec<HeartbeatSession>>,
    #[serde(default)]
    metrics: Option<HeartbeatMetrics>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeartbeatSession {
    session_id: String,
    status: Option<String>,
    phone_number: Option<String>,
    display_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct HeartbeatMetrics {
    cpu_usage: Option<f64>,
    memory_usage: Option<f64>,
    uptime: Option<f64>,
    message_count: Option<f64>,
    total_sessions: Option<f64>,
    active_sessions: Option<f64>,
}

/// Old-style heartbeat body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LegacyHeartbeatBody {
    worker_id: String,
    session_count: Option<f64>,
    cpu_usage: Option<f64>,
    memory_usage: Option<f64>,
    uptime: Option<f64>,
    active_connections: Option<f64>,
}

/// Recovery results body (counts flat or under `summary`; only the results matter).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryBody {
    recovery_results: Vec<RecoveryResult>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RecoveryResult {
    session_id: String,
    status: String,
}

/// Unregistration body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnregisterBody {
    worker_id: String,
    endpoint: Option<String>,
}

/// `session-status` callback body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionStatusBody {
    session_id: String,
    status: String,
    qr_code: Option<String>,
    phone_number: Option<String>,
    display_name: Option<String>,
    worker_id: Option<String>,
    reason: Option<String>,
    logged_out_at: Option<Value>,
}

/// `message-status` callback body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageStatusBody {
    session_id: String,
    message_id: String,
    status: String,
    error_message: Option<String>,
}

/// `message-received` callback body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageReceivedBody {
    session_id: String,
    message_id: String,
    from: String,
    #[serde(rename = "type")]
    message_type: Option<String>,
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

/// Requires the worker token.
pub fn worker_auth(context: Ctx) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(with_context(context))
        .and_then(|authorization: Option<String>, context: Ctx| async move {
            let presented = authorization
                .as_deref()
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .unwrap_or("")
                .trim();
            let expected = context.config.worker_auth_token.expose().as_bytes();
            if bool::from(presented.as_bytes().ct_eq(expected)) && !expected.is_empty() {
                Ok(())
            } else {
                Err(warp::reject::custom(ApiError::Unauthorized(
                    "invalid worker token",
                )))
            }
        })
        .untuple_one()
}

/// Whether `path` is one of the worker-facing routes' (`/api/workers/…`, `/api/webhooks/…`,
/// also under `/api/v1/`).
pub fn is_worker_path(path: &str) -> bool {
    let rest = path.strip_prefix("/api/").unwrap_or_default();
    let rest = rest.strip_prefix("v1/").unwrap_or(rest);
    rest.starts_with("workers/") || rest.starts_with("webhooks/")
}

/// Both path prefixes: `/api/…` (the existing worker) and `/api/v1/…`.
fn api_prefix() -> BoxedFilter<()> {
    warp::path("api")
        .and(warp::path("v1").or(warp::any()).unify())
        .boxed()
}

/// Every worker-facing route.
pub fn routes(context: Ctx) -> BoxedFilter<(Response,)> {
    let auth = || worker_auth(context.clone());
    let ctx = || with_context(context.clone());
    // POST /api/workers/register
    let register = api_prefix()
        .and(warp::path!("workers" / "register"))
        .and(warp::post())
        .and(auth())
        .and(ctx())
        .and(json_body())
        .then(register)
        .map(finish);
    // PUT /api/workers/{workerId}/heartbeat
    let heartbeat = api_prefix()
        .and(warp::path!("workers" / String / "heartbeat"))
        .and(warp::put().or(warp::post()).unify())
        .and(auth())
        .and(ctx())
        .and(json_body())
        .then(heartbeat)
        .map(finish);
    // GET /api/workers/{workerId}/sessions/assigned
    let assigned = api_prefix()
        .and(warp::path!("workers" / String / "sessions" / "assigned"))
        .and(warp::get())
        .and(auth())
        .and(ctx())
        .then(assigned)
        .map(finish);
    // POST /api/workers/{workerId}/sessions/recovery-status
    let recovery = api_prefix()
        .and(warp::path!(
            "workers" / String / "sessions" / "recovery-status"
        ))
        .and(warp::post())
        .and(auth())
        .and(ctx())
        .and(json_body())
        .then(recovery)
        .map(finish);
    // DELETE /api/workers/unregister
    let unregister = api_prefix()
        .and(warp::path!("workers" / "unregister"))
        .and(warp::delete().or(warp::post()).unify())
        .and(auth())
        .and(ctx())
        .and(json_body())
        .then(unregister)
        .map(finish);
    // POST /api/webhooks/session-status
    let session_status = api_prefix()
        .and(warp::path!("webhooks" / "session-status"))
        .and(warp::post())
        .and(auth())
        .and(ctx())
        .and(json_body())
        .then(session_status)
        .map(finish);
    // POST /api/webhooks/message-status
    let message_status = api_prefix()
        .and(warp::path!("webhooks" / "message-status"))
        .and(warp::post())
        .and(auth())
        .and(ctx())
        .and(json_body())
        .then(message_status)
        .map(finish);
    // POST /api/webhooks/message-received
    let message_received = api_prefix()
        .and(warp::path!("webhooks" / "message-received"))
        .and(warp::post())
        .and(auth())
        .and(ctx())
        .and(json_body())
        .then(message_received)
        .map(finish);
    // POST /api/webhooks/worker-heartbeat (old style)
    let legacy_heartbeat = api_prefix()
        .and(warp::path!("webhooks" / "worker-heartbeat"))
        .and(warp::post())
        .and(auth())
        .and(ctx())
        .and(json_body())
        .then(legacy_heartbeat)
        .map(finish);
    register
        .or(heartbeat)
        .unify()
        .or(assigned)
        .unify()
        .or(recovery)
        .unify()
        .or(unregister)
        .unify()
        .or(session_status)
        .unify()
        .or(message_status)
        .unify()
        .or(message_received)
        .unify()
        .or(legacy_heartbeat)
        .unify()
        .boxed()
}

fn whole(value: Option<f64>) -> Option<i64> {
    value.filter(|v| v.is_finite()).map(|v| v.round() as i64)
}

async fn register(context: Ctx, body: RegisterBody) -> ApiResult {
    let environment = body
        .environment
        .map(|e| e.to_ascii_uppercase())
        .filter(|e| ["DEVELOPMENT", "STAGING", "TESTING", "PRODUCTION"].contains(&e.as_str()));
    let registered = context
        .fleet
        .register(RegisterWorker {
            worker_id: body.worker_id,
            endpoint: body.endpoint,
            max_sessions: whole(body.max_sessions).unwrap_or(50),
            description: body.description,
            version: body.version,
            environment,
        })
        .await?;
    let mut data =
        serde_json::to_value(WorkerView::from(&registered.worker)).map_err(anyhow::Error::from)?;
    if let Value::Object(map) = &mut data {
        map.insert("workerId".into(), json!(registered.worker.id));
        map.insert(
            "recoveryRequired".into(),
            json!(registered.recovery_required),
        );
        map.insert(
            "assignedSessionCount".into(),
            json!(registered.assigned_session_count),
        );
    }
    Ok(success(StatusCode::OK, &data))
}

async fn heartbeat(worker_id: String, context: Ctx, body: HeartbeatBody) -> ApiResult {
    let metrics = body.metrics.unwrap_or_default();
    let sample = WorkerMetricsSample {
        cpu_usage: metrics.cpu_usage,
        memory_usage: metrics.memory_usage,
        uptime_seconds: whole(metrics.uptime),
        message_count: whole(metrics.message_count),
        total_sessions: whole(metrics.total_sessions),
        active_sessions: whole(metrics.active_sessions),
    };
    let sessions: Vec<ReportedSession> = body
        .sessions
        .unwrap_or_default()
        .into_iter()
        .map(|s| ReportedSession {
            session_id: s.session_id,
            status: s.status,
            phone_number: s.phone_number,
            display_name: s.display_name,
        })
        .collect();
    context
        .fleet
        .heartbeat(&worker_id, &sample, &sessions)
        .await?;
    Ok(success(
        StatusCode::OK,
        &json!({ "workerId": worker_id, "acknowledged": true }),
    ))
}

async fn legacy_heartbeat(context: Ctx, body: LegacyHeartbeatBody) -> ApiResult {
    let sample = WorkerMetricsSample {
        cpu_usage: body.cpu_usage,
        memory_usage: body.memory_usage,
        uptime_seconds: whole(body.uptime),
        message_count: None,
        total_sessions: whole(body.session_count),
        active_sessions: whole(body.active_connections),
    };
    context
        .fleet
        .heartbeat(&body.worker_id, &sample, &[])
        .await?;
    Ok(success(
        StatusCode::OK,
        &json!({ "workerId": body.worker_id, "acknowledged": true }),
    ))
}

async fn assigned(worker_id: String, context: Ctx) -> ApiResult {
    let sessions: Vec<Value> = context
        .fleet
        .assigned_sessions(&worker_id)
        .await?
        .into_iter()
        .map(|s| {
            json!({
                "sessionId": s.id,
                "userId": s.user_id,
                "sessionName": s.name,
                "phoneNumber": s.phone_number,
                "displayName": s.display_name,
                "status": s.status,
                "epoch": s.epoch,
            })
        })
        .collect();
    Ok(success(
        StatusCode::OK,
        &json!({ "sessions": sessions, "count": sessions.len() }),
    ))
}

async fn recovery(worker_id: String, context: Ctx, body: RecoveryBody) -> ApiResult {
    let results: Vec<(String, String)> = body
        .recovery_results
        .into_iter()
        .map(|r| (r.session_id, r.status.to_ascii_uppercase()))
        .collect();
    let applied = context.fleet.recovery_results(&worker_id, &results).await?;
    Ok(success(
        StatusCode::OK,
        &json!({ "processed": results.len(), "applied": applied }),
    ))
}

async fn unregister(context: Ctx, body: UnregisterBody) -> ApiResult {
    let migrating = context
        .fleet
        .unregister(&body.worker_id, body.endpoint.as_deref())
        .await?;
    Ok(success(
        StatusCode::OK,
        &json!({ "workerId": body.worker_id, "unregistered": true, "migratingSessions": migrating }),
    ))
}

async fn session_status(context: Ctx, body: SessionStatusBody) -> ApiResult {
    SessionId::parse("sessionId", &body.session_id)?;
    let session = context
        .fleet
        .session_status(StatusReport {
            session_id: body.session_id,
            status: body.status,
            qr_code: body.qr_code,
            phone_number: body.phone_number,
            display_name: body.display_name,
            worker_id: body.worker_id,
            reason: body.reason,
            logged_out: body.logged_out_at.is_some_and(|v| !v.is_null()),
        })
        .await?;
    Ok(success(
        StatusCode::OK,
        &json!({ "sessionId": session.id, "status": session.status, "accepted": true }),
    ))
}

async fn message_status(context: Ctx, body: MessageStatusBody) -> ApiResult {
    SessionId::parse("sessionId", &body.session_id)?;
    let status: MessageStatus = body
        .status
        .to_ascii_uppercase()
        .parse()
        .map_err(|problem| crate::domain::InvalidInput::new("status", problem))?;
    // Through wa.events.v1 like every status change: the events consumer applies it in a
    // batch, in the session's order. Answered once the log holds it.
    let event = EventEnvelope::new(
        body.session_id.clone(),
        now_ms(),
        WorkerEvent::MessageStatus {
            message_id: body.message_id.clone(),
            status: status.as_str().to_owned(),
            error_message: body.error_message,
            delivered_at: None,
            read_at: None,
            whatsapp_message_id: None,
            attempts: None,
        },
    );
    append_event(&context, event).await?;
    Ok(success(
        StatusCode::OK,
        &json!({ "messageId": body.message_id, "status": status, "accepted": true }),
    ))
}

/// Appends a worker event to `wa.events.v1`; `503` when the log does not take it (the worker
/// retries its callback).
async fn append_event(context: &Ctx, event: EventEnvelope) -> Result<(), ApiError> {
    let topic = context.pipeline.topics().events;
    context
        .pipeline
        .producer()
        .append_batch(&topic, vec![(event.session_id.clone(), event.encode())])
        .await
        .map_err(|err| {
            tracing::error!(error = %err, "appending a worker event failed");
            ApiError::ServiceUnavailable {
                code: "LOG_UNAVAILABLE",
                message: "the event log did not accept the report; retry".to_owned(),
            }
        })
}

async fn message_received(context: Ctx, body: MessageReceivedBody) -> ApiResult {
    SessionId::parse("sessionId", &body.session_id)?;
    let message_type = body
        .message_type
        .unwrap_or_else(|| "text".to_owned())
        .to_ascii_uppercase();
    let message_type = match message_type.as_str() {
        "TEXT" | "IMAGE" | "DOCUMENT" | "AUDIO" | "VIDEO" | "STICKER" | "LOCATION" | "CONTACT"
        | "LINK" | "POLL" | "REACTION" => message_type,
        _ => "TEXT".to_owned(),
    };
    let event = EventEnvelope::new(
        body.session_id.clone(),
        now_ms(),
        WorkerEvent::MessageReceived {
            message_id: body.message_id.clone(),
            from: body.from,
            message_type,
            body: Value::Object(body.rest),
        },
    );
    append_event(&context, event).await?;
    Ok(success(
        StatusCode::OK,
        &json!({ "messageId": body.message_id, "accepted": true }),
    ))
}

#[cfg(test)]
mod tests {
    use super::is_worker_path;

    #[test]
    fn worker_paths_are_told_apart_from_the_rest() {
        for path in [
            "/api/workers/register",
            "/api/v1/workers/w1/heartbeat",
            "/api/webhooks/message-status",
            "/api/v1/webhooks/session-status",
        ] {
            assert!(is_worker_path(path), "{path}");
        }
        for path in [
            "/api/v1/external/send",
            "/api/v1/health",
            "/api/v1/webhooks",
            "/workers/register",
            "/api/v2/workers/register",
        ] {
            assert!(!is_worker_path(path), "{path}");
        }
    }
}
