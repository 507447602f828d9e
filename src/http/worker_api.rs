//! The worker-facing API of WORKER_PROTOCOL.md, at the paths the existing worker calls
//! (`/api/workers/…`, `/api/webhooks/…`) and under `/api/v1/…`. Every route needs
//! `Authorization: Bearer <WORKER_AUTH_TOKEN>` (constant-time compare).
//!
//! Bodies are parsed liberally: unknown fields are ignored, optional fields may be missing or
//! `null`, numbers may be integers or floats. A malformed body is a `400` and changes nothing.
//!
//! Every string a worker sends passes the gateway's one text rule ([`TextRule`]: no NUL, no
//! control character the field does not allow, a length bound) or the request is a `400`
//! naming the field: nothing a worker sends reaches the store or the event log unchecked.
//! Heartbeat metrics are optional; one that is not a number is a `400` naming it, one out of
//! its range is clamped into it (see [`HeartbeatMetrics`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use subtle::ConstantTimeEq;
use utoipa::ToSchema;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::error::{ApiError, ApiResult, finish, success};
use super::extract::{Ctx, json_body, with_context};
use super::views::{Envelope, ErrorEnvelope, WorkerView};
use crate::domain::{InvalidInput, MessageStatus, SessionId, TextRule, now_ms};
use crate::fleet::{RegisterWorker, ReportedSession, StatusReport};
use crate::store::WorkerMetricsSample;
use producers::{EventEnvelope, WorkerEvent};

/// Registration body (unknown fields are ignored).
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisterBody {
    worker_id: String,
    endpoint: String,
    max_sessions: Option<f64>,
    description: Option<String>,
    version: Option<String>,
    environment: Option<String>,
}

/// Heartbeat body (unknown fields are ignored).
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatBody {
    #[serde(default)]
    sessions: Option<Vec<HeartbeatSession>>,
    #[serde(default)]
    metrics: Option<HeartbeatMetrics>,
}

/// One session the worker runs.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatSession {
    session_id: String,
    status: Option<String>,
    phone_number: Option<String>,
    display_name: Option<String>,
}

/// A heartbeat's metrics, each optional (missing or `null`). A metric that is not a number
/// is a `400` naming it; a number out of its range is clamped into it (see [`Metric`]).
#[derive(Deserialize, Default, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatMetrics {
    #[serde(default)]
    #[schema(value_type = Option<f64>)]
    cpu_usage: Metric,
    #[serde(default)]
    #[schema(value_type = Option<f64>)]
    memory_usage: Metric,
    #[serde(default)]
    #[schema(value_type = Option<f64>)]
    uptime: Metric,
    #[serde(default)]
    #[schema(value_type = Option<f64>)]
    message_count: Metric,
    #[serde(default)]
    #[schema(value_type = Option<f64>)]
    total_sessions: Metric,
    #[serde(default)]
    #[schema(value_type = Option<f64>)]
    active_sessions: Metric,
}

/// Old-style heartbeat body (unknown fields are ignored).
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LegacyHeartbeatBody {
    worker_id: String,
    #[serde(default)]
    #[schema(value_type = Option<f64>)]
    session_count: Metric,
    #[serde(default)]
    #[schema(value_type = Option<f64>)]
    cpu_usage: Metric,
    #[serde(default)]
    #[schema(value_type = Option<f64>)]
    memory_usage: Metric,
    #[serde(default)]
    #[schema(value_type = Option<f64>)]
    uptime: Metric,
    #[serde(default)]
    #[schema(value_type = Option<f64>)]
    active_connections: Metric,
}

/// One heartbeat metric as sent: checked by [`Metric::real`] and [`Metric::whole`].
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(transparent)]
struct Metric(Value);

/// CPU usage in percent: up to 100 per core.
const CPU_MAX: f64 = 100_000.0;
/// Memory usage, a ratio, a percentage or megabytes as the worker reports it.
const MEMORY_MAX: f64 = 1e12;
/// Uptime in seconds: a century.
const UPTIME_MAX: i64 = 100 * 366 * 24 * 3600;
/// Messages handled since the worker started.
const MESSAGE_COUNT_MAX: i64 = 1_000_000_000_000_000;
/// Sessions a worker reports (a worker registers for at most 100,000).
const SESSIONS_MAX: i64 = 1_000_000;

impl Metric {
    /// The number, or `None` when missing or `null`; anything else is refused.
    fn number(&self, field: &'static str) -> Result<Option<f64>, InvalidInput> {
        match &self.0 {
            Value::Null => Ok(None),
            Value::Number(number) => Ok(number.as_f64().filter(|v| v.is_finite())),
            _ => Err(InvalidInput::new(field, "must be a number")),
        }
    }

    /// The number clamped into `0..=max`.
    fn real(&self, field: &'static str, max: f64) -> Result<Option<f64>, InvalidInput> {
        Ok(self.number(field)?.map(|v| v.clamp(0.0, max)))
    }

    /// The number rounded and clamped into `0..=max`.
    fn whole(&self, field: &'static str, max: i64) -> Result<Option<i64>, InvalidInput> {
        // `as` saturates, and the value is finite.
        Ok(self
            .number(field)?
            .map(|v| (v.round() as i64).clamp(0, max)))
    }
}

/// Recovery results body (counts flat or under `summary`; only the results matter). The
/// existing worker may send only a `summary`, with `recoveryResults` empty or absent: nothing to
/// apply (its session-status callbacks tell each session's fate).
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryBody {
    #[serde(default)]
    recovery_results: Vec<RecoveryResult>,
}

/// What became of one session the worker restored.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryResult {
    session_id: String,
    status: String,
}

/// Unregistration body.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnregisterBody {
    worker_id: String,
    endpoint: Option<String>,
}

/// `session-status` callback body.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionStatusBody {
    session_id: String,
    status: String,
    qr_code: Option<String>,
    phone_number: Option<String>,
    display_name: Option<String>,
    worker_id: Option<String>,
    reason: Option<String>,
    /// Set (any non-null value) when the session was logged out.
    #[schema(value_type = Option<Object>)]
    logged_out_at: Option<Value>,
}

/// `message-status` callback body.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageStatusBody {
    session_id: String,
    message_id: String,
    status: String,
    error_message: Option<String>,
}

/// `message-received` callback body: the other fields (`message`, `mediaUrl`, `caption`, …)
/// are kept as the message's content.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageReceivedBody {
    session_id: String,
    message_id: String,
    from: String,
    #[serde(rename = "type")]
    message_type: Option<String>,
    #[serde(flatten)]
    #[schema(ignore)]
    rest: serde_json::Map<String, Value>,
}

/// The answer to a registration: the worker, and whether it should restore sessions.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Registered {
    /// The worker as stored.
    #[serde(flatten)]
    worker: WorkerView,
    /// Its id again (the existing worker reads `workerId`).
    worker_id: String,
    /// True when it still owns live sessions: fetch them from `sessions/assigned`.
    recovery_required: bool,
    /// How many.
    assigned_session_count: usize,
}

/// The answer to a heartbeat.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatAck {
    /// The worker.
    worker_id: String,
    /// Always `true`.
    acknowledged: bool,
}

/// A session the worker should restore.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AssignedSession {
    /// Session id.
    session_id: String,
    /// Its owner.
    user_id: String,
    /// Its label.
    session_name: String,
    /// WhatsApp number, once known.
    phone_number: Option<String>,
    /// WhatsApp name, once known.
    display_name: Option<String>,
    /// Its last status.
    status: crate::domain::SessionStatus,
    /// The fencing epoch the worker holds it under.
    epoch: i64,
}

/// The sessions assigned to a worker.
#[derive(Serialize, ToSchema)]
pub struct AssignedSessions {
    /// The sessions.
    sessions: Vec<AssignedSession>,
    /// How many.
    count: usize,
}

/// The answer to a recovery report.
#[derive(Serialize, ToSchema)]
pub struct RecoveryAck {
    /// Results read.
    processed: usize,
    /// Results applied (sessions this worker still owns).
    applied: usize,
}

/// The answer to an unregistration.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Unregistered {
    /// The worker.
    worker_id: String,
    /// Always `true`.
    unregistered: bool,
    /// Sessions queued to move to other workers.
    migrating_sessions: usize,
}

/// The answer to a session-status callback.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionStatusAck {
    /// The session.
    session_id: String,
    /// Its status now.
    status: crate::domain::SessionStatus,
    /// Always `true`.
    accepted: bool,
}

/// The answer to a message callback.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageAck {
    /// The message.
    message_id: String,
    /// The status reported (message-status only).
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<MessageStatus>,
    /// Always `true`: the report is in the event log.
    accepted: bool,
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

/// The workers' callbacks under `/api/webhooks/` and `/api/v1/webhooks/`: names the customer
/// webhook routes (`/api/v1/webhooks/{id}`) leave to them.
pub const CALLBACK_NAMES: [&str; 4] = [
    "session-status",
    "message-status",
    "message-received",
    "worker-heartbeat",
];

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

/// Worker ids: what [`crate::fleet`] registers (checked there again with its own words).
pub(crate) const WORKER_ID: TextRule = TextRule::token(100).non_empty();
/// A status word as a worker spells it.
pub(crate) const STATUS: TextRule = TextRule::line(32).non_empty();
/// WhatsApp's message ids and the gateway's.
pub(crate) const MESSAGE_ID: TextRule = crate::delivery::events::MESSAGE_ID_RULE;
/// Phone numbers and JIDs.
pub(crate) const PHONE: TextRule = TextRule::line(128);
/// A WhatsApp profile name (pasted right-to-left names carry direction marks).
pub(crate) const DISPLAY_NAME: TextRule = TextRule::multiline(256);
/// A QR string (Baileys' are about 240 characters).
pub(crate) const QR_CODE: TextRule = TextRule::line(4096);
/// Reasons and error messages.
pub(crate) const REASON: TextRule = TextRule::multiline(2000);
/// A registration's free text.
pub(crate) const DESCRIPTION: TextRule = TextRule::multiline(500);
/// A registration's version or environment.
pub(crate) const LABEL: TextRule = TextRule::line(100);
/// A URL a worker gives.
pub(crate) const ENDPOINT: TextRule = TextRule::line(500).non_empty();
/// Any string inside a received message's body.
pub(crate) const BODY_TEXT: TextRule = TextRule::multiline(65_536);

/// Checks every string (keys too) in a received message's body.
fn check_body(value: &Value) -> Result<(), InvalidInput> {
    match value {
        Value::String(text) => BODY_TEXT.check("message", text).map(|_| ()),
        Value::Array(items) => items.iter().try_for_each(check_body),
        Value::Object(map) => map.iter().try_for_each(|(key, value)| {
            LABEL.check("message", key)?;
            check_body(value)
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

/// A worker joins (or rejoins) the fleet. The gateway probes `GET {endpoint}/health` first.
#[utoipa::path(post, path = "/api/workers/register", tag = "worker-protocol", request_body = RegisterBody,
    responses((status = 200, body = Envelope<Registered>),
              (status = 409, description = "unreachable endpoint (`WORKER_UNREACHABLE`), or the id or endpoint belongs to another live worker", body = ErrorEnvelope)),
    security(("workerToken" = [])))]
pub async fn register(context: Ctx, body: RegisterBody) -> ApiResult {
    WORKER_ID.check("workerId", &body.worker_id)?;
    ENDPOINT.check("endpoint", &body.endpoint)?;
    DESCRIPTION.check_optional("description", body.description.as_deref())?;
    LABEL.check_optional("version", body.version.as_deref())?;
    LABEL.check_optional("environment", body.environment.as_deref())?;
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
    Ok(success(
        StatusCode::OK,
        &Registered {
            worker: WorkerView::from(&registered.worker),
            worker_id: registered.worker.id.clone(),
            recovery_required: registered.recovery_required,
            assigned_session_count: registered.assigned_session_count,
        },
    ))
}

/// Liveness, the sessions the worker runs and its metrics (every 30 s). Also `POST`.
#[utoipa::path(put, path = "/api/workers/{workerId}/heartbeat", tag = "worker-protocol", request_body = HeartbeatBody,
    params(("workerId" = String, Path)),
    responses((status = 200, body = Envelope<HeartbeatAck>), (status = 404, description = "unknown worker: register first", body = ErrorEnvelope)),
    security(("workerToken" = [])))]
pub async fn heartbeat(worker_id: String, context: Ctx, body: HeartbeatBody) -> ApiResult {
    WORKER_ID.check("workerId", &worker_id)?;
    let metrics = body.metrics.unwrap_or_default();
    let sample = WorkerMetricsSample {
        cpu_usage: metrics.cpu_usage.real("cpuUsage", CPU_MAX)?,
        memory_usage: metrics.memory_usage.real("memoryUsage", MEMORY_MAX)?,
        uptime_seconds: metrics.uptime.whole("uptime", UPTIME_MAX)?,
        message_count: metrics
            .message_count
            .whole("messageCount", MESSAGE_COUNT_MAX)?,
        total_sessions: metrics
            .total_sessions
            .whole("totalSessions", SESSIONS_MAX)?,
        active_sessions: metrics
            .active_sessions
            .whole("activeSessions", SESSIONS_MAX)?,
    };
    let listed = body.sessions.is_some();
    let sessions: Vec<ReportedSession> = body
        .sessions
        .unwrap_or_default()
        .into_iter()
        .map(|s| {
            SessionId::parse("sessionId", &s.session_id)?;
            STATUS.check_optional("status", s.status.as_deref())?;
            PHONE.check_optional("phoneNumber", s.phone_number.as_deref())?;
            DISPLAY_NAME.check_optional("displayName", s.display_name.as_deref())?;
            Ok(ReportedSession {
                session_id: s.session_id,
                status: s.status,
                phone_number: s.phone_number,
                display_name: s.display_name,
            })
        })
        .collect::<Result<_, InvalidInput>>()?;
    context
        .fleet
        .heartbeat(&worker_id, &sample, listed.then_some(sessions.as_slice()))
        .await?;
    Ok(success(
        StatusCode::OK,
        &HeartbeatAck {
            worker_id,
            acknowledged: true,
        },
    ))
}

/// The old-style heartbeat, still accepted (no session list).
#[utoipa::path(post, path = "/api/webhooks/worker-heartbeat", tag = "worker-protocol", request_body = LegacyHeartbeatBody,
    responses((status = 200, body = Envelope<HeartbeatAck>), (status = 404, description = "unknown worker: register first", body = ErrorEnvelope)),
    security(("workerToken" = [])))]
pub async fn legacy_heartbeat(context: Ctx, body: LegacyHeartbeatBody) -> ApiResult {
    WORKER_ID.check("workerId", &body.worker_id)?;
    let sample = WorkerMetricsSample {
        cpu_usage: body.cpu_usage.real("cpuUsage", CPU_MAX)?,
        memory_usage: body.memory_usage.real("memoryUsage", MEMORY_MAX)?,
        uptime_seconds: body.uptime.whole("uptime", UPTIME_MAX)?,
        message_count: None,
        total_sessions: body.session_count.whole("sessionCount", SESSIONS_MAX)?,
        active_sessions: body
            .active_connections
            .whole("activeConnections", SESSIONS_MAX)?,
    };
    context
        .fleet
        .heartbeat(&body.worker_id, &sample, None)
        .await?;
    Ok(success(
        StatusCode::OK,
        &HeartbeatAck {
            worker_id: body.worker_id,
            acknowledged: true,
        },
    ))
}

/// The sessions a restarted worker should restore.
#[utoipa::path(get, path = "/api/workers/{workerId}/sessions/assigned", tag = "worker-protocol",
    params(("workerId" = String, Path)),
    responses((status = 200, body = Envelope<AssignedSessions>), (status = 404, description = "unknown worker", body = ErrorEnvelope)),
    security(("workerToken" = [])))]
pub async fn assigned(worker_id: String, context: Ctx) -> ApiResult {
    WORKER_ID.check("workerId", &worker_id)?;
    let sessions: Vec<AssignedSession> = context
        .fleet
        .assigned_sessions(&worker_id)
        .await?
        .into_iter()
        .map(|s| AssignedSession {
            session_id: s.id,
            user_id: s.user_id,
            session_name: s.name,
            phone_number: s.phone_number,
            display_name: s.display_name,
            status: s.status,
            epoch: s.epoch,
        })
        .collect();
    let count = sessions.len();
    Ok(success(
        StatusCode::OK,
        &AssignedSessions { sessions, count },
    ))
}

/// What became of the sessions a restarted worker restored.
#[utoipa::path(post, path = "/api/workers/{workerId}/sessions/recovery-status", tag = "worker-protocol",
    request_body = RecoveryBody, params(("workerId" = String, Path)),
    responses((status = 200, body = Envelope<RecoveryAck>), (status = 404, description = "unknown worker", body = ErrorEnvelope)),
    security(("workerToken" = [])))]
pub async fn recovery(worker_id: String, context: Ctx, body: RecoveryBody) -> ApiResult {
    WORKER_ID.check("workerId", &worker_id)?;
    let results: Vec<(String, String)> = body
        .recovery_results
        .into_iter()
        .map(|r| {
            SessionId::parse("sessionId", &r.session_id)?;
            STATUS.check("status", &r.status)?;
            Ok((r.session_id, r.status.to_ascii_uppercase()))
        })
        .collect::<Result<_, InvalidInput>>()?;
    let applied = context.fleet.recovery_results(&worker_id, &results).await?;
    Ok(success(
        StatusCode::OK,
        &RecoveryAck {
            processed: results.len(),
            applied,
        },
    ))
}

/// The worker leaves the fleet; its sessions move to other workers. Also `POST`.
#[utoipa::path(delete, path = "/api/workers/unregister", tag = "worker-protocol", request_body = UnregisterBody,
    responses((status = 200, body = Envelope<Unregistered>), (status = 404, description = "unknown worker", body = ErrorEnvelope)),
    security(("workerToken" = [])))]
pub async fn unregister(context: Ctx, body: UnregisterBody) -> ApiResult {
    WORKER_ID.check("workerId", &body.worker_id)?;
    ENDPOINT.check_optional("endpoint", body.endpoint.as_deref())?;
    let migrating = context
        .fleet
        .unregister(&body.worker_id, body.endpoint.as_deref())
        .await?;
    Ok(success(
        StatusCode::OK,
        &Unregistered {
            worker_id: body.worker_id,
            unregistered: true,
            migrating_sessions: migrating,
        },
    ))
}

/// A session's status changed on its worker (with the QR while `QR_REQUIRED`).
#[utoipa::path(post, path = "/api/webhooks/session-status", tag = "worker-protocol", request_body = SessionStatusBody,
    responses((status = 200, body = Envelope<SessionStatusAck>), (status = 404, description = "unknown session", body = ErrorEnvelope),
              (status = 409, description = "the report names a worker that does not own the session (`STALE_OWNER`)", body = ErrorEnvelope)),
    security(("workerToken" = [])))]
pub async fn session_status(context: Ctx, body: SessionStatusBody) -> ApiResult {
    SessionId::parse("sessionId", &body.session_id)?;
    STATUS.check("status", &body.status)?;
    QR_CODE.check_optional("qrCode", body.qr_code.as_deref())?;
    PHONE.check_optional("phoneNumber", body.phone_number.as_deref())?;
    DISPLAY_NAME.check_optional("displayName", body.display_name.as_deref())?;
    WORKER_ID.check_optional("workerId", body.worker_id.as_deref())?;
    REASON.check_optional("reason", body.reason.as_deref())?;
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
        &SessionStatusAck {
            session_id: session.id,
            status: session.status,
            accepted: true,
        },
    ))
}

/// A sent message's status changed (`SENT`, `DELIVERED`, `READ`, `FAILED`); applied from the
/// event log.
#[utoipa::path(post, path = "/api/webhooks/message-status", tag = "worker-protocol", request_body = MessageStatusBody,
    responses((status = 200, body = Envelope<MessageAck>)),
    security(("workerToken" = [])))]
pub async fn message_status(context: Ctx, body: MessageStatusBody) -> ApiResult {
    SessionId::parse("sessionId", &body.session_id)?;
    MESSAGE_ID.check("messageId", &body.message_id)?;
    STATUS.check("status", &body.status)?;
    REASON.check_optional("errorMessage", body.error_message.as_deref())?;
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
        &MessageAck {
            message_id: body.message_id,
            status: Some(status),
            accepted: true,
        },
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

/// A message arrived for one of the worker's sessions.
#[utoipa::path(post, path = "/api/webhooks/message-received", tag = "worker-protocol", request_body = MessageReceivedBody,
    responses((status = 200, body = Envelope<MessageAck>)),
    security(("workerToken" = [])))]
pub async fn message_received(context: Ctx, body: MessageReceivedBody) -> ApiResult {
    SessionId::parse("sessionId", &body.session_id)?;
    MESSAGE_ID.check("messageId", &body.message_id)?;
    PHONE.check("from", &body.from)?;
    LABEL.check_optional("type", body.message_type.as_deref())?;
    body.rest.iter().try_for_each(|(key, value)| {
        LABEL.check("message", key)?;
        check_body(value)
    })?;
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
        &MessageAck {
            message_id: body.message_id,
            status: None,
            accepted: true,
        },
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
