//! The HTTP face of a simulated worker: the gateway-facing endpoints of the worker protocol, the
//! `/sim/…` controls, and the accept loop.
//!
//! Every route but `GET /health` requires `Authorization: Bearer <token>`, unless
//! `Quirks::open_routes` (the existing worker checks no token). Answers use the envelope
//! `{"success": true, "data": …}` / `{"success": false, "error": {"code", "message"}}`;
//! `GET /health` answers its object at the top level, as the protocol lists it. How a refusal
//! reads (the validation error shape, `400` or `409` for a session that is not connected) is
//! decided in one place, [`SimError::render`], from the worker's quirks.
//!
//! Rate limits (`Quirks::rate_limits`) are checked before anything else a route does, as the
//! existing worker's middleware is: session operations by client IP and `X-User-Id`, sends by
//! session, and the optional global limit by client IP on every route but `GET /health` and the
//! `/sim/…` controls (which the existing worker does not have). The client IP is the
//! connection's peer address, which the accept loop hands to the routes.
//!
//! The accept loop keeps every connection task in a `JoinSet` owned by the server task, so
//! aborting that task (a kill) drops every connection at once, in-flight requests included.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::limits::{Caller, Limited};
use super::quirks::Quirks;
use super::state::{ReceivedSend, SessionId, SessionStatus};
use super::validate::{ValidationError, validate_manage, validate_send};
use super::worker::{SessionError, Worker};

/// Larger bodies are refused with 413 before any route runs.
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How long a graceful stop waits for in-flight requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// An error answer: status, stable code, message, and the offending field if any.
#[derive(Debug)]
struct SimError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    /// For `SESSION_NOT_CONNECTED`: the session's status (`NOT_FOUND` when it is not here), which
    /// the existing worker puts in its message.
    not_connected: Option<&'static str>,
    /// For `429`: the `Retry-After` header, in seconds.
    retry_after_seconds: Option<u64>,
}

impl SimError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        SimError {
            status,
            code,
            message: message.into(),
            field: None,
            not_connected: None,
            retry_after_seconds: None,
        }
    }

    fn validation(error: ValidationError) -> Self {
        SimError {
            field: Some(error.field.clone()),
            ..SimError::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", error.message)
        }
    }

    fn rate_limited(limited: &Limited) -> Self {
        SimError {
            retry_after_seconds: Some(limited.retry_after_seconds()),
            ..SimError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMIT_EXCEEDED",
                limited.message,
            )
        }
    }

    /// The answer as this worker words it.
    fn render(self, quirks: &Quirks) -> Response {
        let mut status = self.status;
        let mut message = self.message;
        if let Some(session_status) = self.not_connected
            && quirks.not_connected_400
        {
            status = StatusCode::BAD_REQUEST;
            message = format!("Session not connected. Status: {session_status}");
        }
        let body = if self.code == "VALIDATION_ERROR" && quirks.validation_error_shape {
            json!({
                "success": false,
                "error": "Validation error",
                "details": [{ "field": self.field.unwrap_or_default(), "message": message }],
            })
        } else {
            let mut error = json!({ "code": self.code, "message": message });
            if let Some(field) = self.field {
                error["details"] = json!({ "field": field });
            }
            json!({ "success": false, "error": error })
        };
        let mut response =
            warp::reply::with_status(warp::reply::json(&body), status).into_response();
        if let Some(seconds) = self.retry_after_seconds {
            response
                .headers_mut()
                .insert(warp::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }

    /// For refusals that no quirk words differently (the body could not be read, so no route
    /// ran).
    fn plain(self) -> Response {
        self.render(&Quirks::ideal())
    }
}

impl From<SessionError> for SimError {
    fn from(error: SessionError) -> Self {
        let (status, code) = match error {
            SessionError::NotFound => (StatusCode::NOT_FOUND, "SESSION_NOT_FOUND"),
            SessionError::AlreadyExists => (StatusCode::CONFLICT, "SESSION_ALREADY_EXISTS"),
            SessionError::CapacityReached => (StatusCode::SERVICE_UNAVAILABLE, "CAPACITY_REACHED"),
            SessionError::NotConnected(_) => (StatusCode::CONFLICT, "SESSION_NOT_CONNECTED"),
            SessionError::WrongState(_) => (StatusCode::CONFLICT, "INVALID_SESSION_STATE"),
            SessionError::SendFailed => (StatusCode::INTERNAL_SERVER_ERROR, "SEND_FAILED"),
        };
        let not_connected = match error {
            SessionError::NotConnected(status) => {
                Some(status.map_or("NOT_FOUND", |status| status.as_str()))
            }
            _ => None,
        };
        SimError {
            not_connected,
            ..SimError::new(status, code, error.to_string())
        }
    }
}

impl From<Limited> for SimError {
    fn from(limited: Limited) -> Self {
        SimError::rate_limited(&limited)
    }
}

type Answer = Result<Response, SimError>;

fn success<T: Serialize>(status: StatusCode, data: &T) -> Answer {
    Ok(warp::reply::with_status(
        warp::reply::json(&json!({ "success": true, "data": data })),
        status,
    )
    .into_response())
}

fn finish(quirks: &Quirks, answer: Answer) -> Response {
    answer.unwrap_or_else(|error| error.render(quirks))
}

fn parse_session_id(raw: &str) -> Result<SessionId, SimError> {
    SessionId::parse(raw).map_err(|err| SimError {
        field: Some("sessionId".to_owned()),
        ..SimError::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", err.to_string())
    })
}

fn parse_json(body: &Bytes) -> Result<Value, SimError> {
    serde_json::from_slice(body).map_err(|err| {
        SimError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_JSON",
            format!("the body is not valid JSON: {err}"),
        )
    })
}

/// A missing or wrong bearer token.
#[derive(Debug)]
struct Unauthorized;

impl warp::reject::Reject for Unauthorized {}

/// Over the global rate limit (before any route ran).
#[derive(Debug)]
struct RateLimited(Limited);

impl warp::reject::Reject for RateLimited {}

/// Passes only requests that carry `Authorization: Bearer <token>`.
fn authorized(token: Arc<str>) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and_then(move |header: Option<String>| {
            let token = Arc::clone(&token);
            async move {
                let presented = header
                    .as_deref()
                    .and_then(|value| value.strip_prefix("Bearer "))
                    .unwrap_or_default();
                if bool::from(presented.as_bytes().ct_eq(token.as_bytes())) {
                    Ok(())
                } else {
                    Err(warp::reject::custom(Unauthorized))
                }
            }
        })
        .untuple_one()
}

/// Passes requests under the global rate limit (keyed by client IP).
fn within_global_limit(
    worker: Arc<Worker>,
) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    caller()
        .and_then(move |caller: Caller| {
            let worker = Arc::clone(&worker);
            async move {
                worker
                    .admit_global(caller.ip, Instant::now())
                    .map_err(|limited| warp::reject::custom(RateLimited(limited)))
            }
        })
        .untuple_one()
}

/// The client IP and `X-User-Id` of the request, as [`caller_of`] found them.
fn caller() -> impl Filter<Extract = (Caller,), Error = Infallible> + Clone {
    warp::ext::optional::<Caller>().map(Option::unwrap_or_default)
}

/// Who calls, for the rate limits: the connection's peer address and the raw `X-User-Id` value
/// (any bytes: a header the limiter cannot read still keys a budget, and never fails a request).
/// An empty header counts as absent, as in the existing worker.
fn caller_of(peer: SocketAddr, headers: &warp::http::HeaderMap) -> Caller {
    Caller {
        ip: Some(peer.ip()),
        user_id: headers
            .get("x-user-id")
            .filter(|value| !value.is_empty())
            .cloned(),
    }
}

/// The one place where warp rejections become the error envelope.
async fn recover(rejection: Rejection, worker: Arc<Worker>) -> Result<Response, Infallible> {
    let error = if rejection.find::<Unauthorized>().is_some() {
        SimError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "missing or invalid bearer token",
        )
    } else if let Some(RateLimited(limited)) = rejection.find::<RateLimited>() {
        SimError::rate_limited(limited)
    } else if rejection.is_not_found() {
        SimError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        SimError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "method not allowed",
        )
    } else {
        tracing::debug!(?rejection, "unhandled rejection");
        SimError::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", "bad request")
    };
    Ok(error.render(&worker.config.quirks))
}

/// The whole route tree of one simulated worker.
pub(crate) fn routes(worker: Arc<Worker>) -> BoxedFilter<(Response,)> {
    let token: Arc<str> = Arc::from(worker.config.auth_token.as_str());
    let quirks = &worker.config.quirks;
    let open_routes = quirks.open_routes;
    let global_limit = quirks
        .rate_limits
        .is_some_and(|limits| limits.global.is_some());
    let for_recover = Arc::clone(&worker);
    let for_global_limit = Arc::clone(&worker);
    let with_worker = warp::any().map(move || Arc::clone(&worker));

    // GET /health (no auth, no rate limit: the gateway's liveness probe)
    let health = warp::path!("health")
        .and(warp::get())
        .and(with_worker.clone())
        .map(|worker: Arc<Worker>| warp::reply::json(&worker.health()).into_response());

    // POST /api/sessions/start
    let start = warp::path!("api" / "sessions" / "start")
        .and(warp::post())
        .and(with_worker.clone())
        .and(caller())
        .and(warp::body::bytes())
        .then(start_session);
    // GET /api/sessions/{id}/status
    let status = warp::path!("api" / "sessions" / String / "status")
        .and(warp::get())
        .and(with_worker.clone())
        .then(session_status);
    // POST /api/sessions/{id}/restart · /disconnect · /logout
    let control = warp::path!("api" / "sessions" / String / String)
        .and(warp::post())
        .and(with_worker.clone())
        .and(caller())
        .then(control_session);
    // DELETE /api/sessions/{id}
    let delete = warp::path!("api" / "sessions" / String)
        .and(warp::delete())
        .and(with_worker.clone())
        .and(caller())
        .then(delete_session);
    // GET /api/sessions
    let list = warp::path!("api" / "sessions")
        .and(warp::get())
        .and(with_worker.clone())
        .then(list_sessions);
    // POST /api/{id}/send
    let send = warp::path!("api" / String / "send")
        .and(warp::post())
        .and(with_worker.clone())
        .and(warp::header::optional::<String>("x-message-id"))
        .and(warp::body::bytes())
        .then(send_message);
    // POST /api/message/{id}/manage
    let manage = warp::path!("api" / "message" / String / "manage")
        .and(warp::post())
        .and(with_worker.clone())
        .and(warp::body::bytes())
        .then(manage_message);

    // GET /sim/messages[?after=<n>]
    let sim_messages = warp::path!("sim" / "messages")
        .and(warp::get())
        .and(with_worker.clone())
        .and(warp::query::<MessagesQuery>())
        .then(sim_messages);
    // GET /sim/sessions
    let sim_sessions = warp::path!("sim" / "sessions")
        .and(warp::get())
        .and(with_worker.clone())
        .then(sim_sessions);
    // POST /sim/sessions/{id}/scan · /drop · /inbound · /fail · /expire-qr · /logout-from-phone
    let sim_control = warp::path!("sim" / "sessions" / String / String)
        .and(warp::post())
        .and(with_worker.clone())
        .and(warp::body::bytes())
        .then(sim_control);

    let worker_api = start
        .or(status)
        .unify()
        .or(control)
        .unify()
        .or(delete)
        .unify()
        .or(list)
        .unify()
        .or(send)
        .unify()
        .or(manage)
        .unify()
        .boxed();
    // Checked before any path: every request that reaches it counts, even one that matches no
    // route, as in the existing worker. The simulation controls come first and never reach it.
    let worker_api = if global_limit {
        within_global_limit(for_global_limit)
            .and(worker_api)
            .boxed()
    } else {
        worker_api
    };
    // POST /sim/fail-starts/{n}: the next n session starts answer 500
    let sim_fail_starts = warp::path!("sim" / "fail-starts" / u32)
        .and(warp::post())
        .and(with_worker.clone())
        .map(|count: u32, worker: Arc<Worker>| {
            worker.fail_starts(count);
            finish(
                &worker.config.quirks,
                success(StatusCode::OK, &json!({ "failingStarts": count })),
            )
        });
    let sim_api = sim_messages
        .or(sim_sessions)
        .unify()
        .or(sim_control)
        .unify()
        .or(sim_fail_starts)
        .unify();
    let api = sim_api.or(worker_api).unify().boxed();
    let api = if open_routes {
        api
    } else {
        authorized(token).and(api).boxed()
    };
    health
        .or(api)
        .unify()
        .recover(move |rejection| recover(rejection, Arc::clone(&for_recover)))
        .unify()
        .boxed()
}

/// `POST /api/sessions/start` `{sessionId, userId, sessionName?}` → 201 `{sessionId, status}`.
/// Unlike send bodies, unknown fields are ignored here: the protocol only documents the
/// strictness of sends.
async fn start_session(worker: Arc<Worker>, caller: Caller, body: Bytes) -> Response {
    finish(
        &worker.config.quirks,
        (|| {
            worker.admit_session_operation(&caller, Instant::now())?;
            let body = parse_json(&body)?;
            let field = |name: &str| body.get(name).filter(|value| !value.is_null());
            let id = match field("sessionId") {
                Some(Value::String(raw)) => parse_session_id(raw)?,
                _ => return Err(missing_string("sessionId")),
            };
            let user_id = match field("userId") {
                Some(Value::String(user)) if !user.is_empty() => user.clone(),
                _ => return Err(missing_string("userId")),
            };
            let session_name = match field("sessionName") {
                None => None,
                Some(Value::String(name)) => Some(name.clone()),
                Some(_) => return Err(missing_string("sessionName")),
            };
            if worker.start_fails() {
                return Err(SimError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "START_FAILED",
                    "Failed to start session",
                ));
            }
            worker.start_session(id.clone(), Some(user_id), session_name)?;
            success(
                StatusCode::CREATED,
                &json!({ "sessionId": id.as_str(), "status": "INIT" }),
            )
        })(),
    )
}

fn missing_string(field: &str) -> SimError {
    SimError {
        field: Some(field.to_owned()),
        ..SimError::new(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            format!("\"{field}\" must be a non-empty string"),
        )
    }
}

/// `GET /api/sessions/{id}/status`.
async fn session_status(raw_id: String, worker: Arc<Worker>) -> Response {
    finish(
        &worker.config.quirks,
        (|| {
            let id = parse_session_id(&raw_id)?;
            let detail = worker.session_detail(&id).ok_or(SessionError::NotFound)?;
            success(StatusCode::OK, &detail)
        })(),
    )
}

/// The session operations of `POST /api/sessions/{id}/{action}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Control {
    Restart,
    Disconnect,
    Logout,
}

/// `POST /api/sessions/{id}/restart` · `/disconnect` · `/logout`.
async fn control_session(
    raw_id: String,
    action: String,
    worker: Arc<Worker>,
    caller: Caller,
) -> Response {
    finish(
        &worker.config.quirks,
        (|| {
            let control = match action.as_str() {
                "restart" => Control::Restart,
                "disconnect" => Control::Disconnect,
                "logout" => Control::Logout,
                _ => {
                    return Err(SimError::new(
                        StatusCode::NOT_FOUND,
                        "NOT_FOUND",
                        "no such route",
                    ));
                }
            };
            worker.admit_session_operation(&caller, Instant::now())?;
            let id = parse_session_id(&raw_id)?;
            let data = match control {
                Control::Restart => {
                    worker.restart_session(&id)?;
                    json!({ "sessionId": id.as_str(), "status": "INIT" })
                }
                Control::Disconnect => {
                    worker.disconnect_session(&id)?;
                    json!({ "sessionId": id.as_str(), "status": "DISCONNECTED" })
                }
                Control::Logout => {
                    worker.logout_session(&id)?;
                    json!({ "sessionId": id.as_str(), "status": "DISCONNECTED", "reason": "LOGGED_OUT" })
                }
            };
            success(StatusCode::OK, &data)
        })(),
    )
}

/// `DELETE /api/sessions/{id}`.
async fn delete_session(raw_id: String, worker: Arc<Worker>, caller: Caller) -> Response {
    finish(
        &worker.config.quirks,
        (|| {
            worker.admit_session_operation(&caller, Instant::now())?;
            let id = parse_session_id(&raw_id)?;
            worker.delete_session(&id)?;
            success(
                StatusCode::OK,
                &json!({ "sessionId": id.as_str(), "deleted": true }),
            )
        })(),
    )
}

/// `GET /api/sessions`.
async fn list_sessions(worker: Arc<Worker>) -> Response {
    finish(
        &worker.config.quirks,
        success(StatusCode::OK, &worker.session_details()),
    )
}

/// `POST /api/{id}/send`: rate limit, strict validation, then the per-session queue.
async fn send_message(
    raw_id: String,
    worker: Arc<Worker>,
    gateway_message_id: Option<String>,
    body: Bytes,
) -> Response {
    let answer = async {
        worker.admit_send(&raw_id, Instant::now())?;
        let id = parse_session_id(&raw_id)?;
        let body = parse_json(&body)?;
        let validated = validate_send(&body, worker.send_rules()).map_err(SimError::validation)?;
        let sent = worker
            .send(&id, gateway_message_id, validated, body)
            .await?;
        success(StatusCode::OK, &sent)
    };
    let answer = answer.await;
    finish(&worker.config.quirks, answer)
}

/// `POST /api/message/{id}/manage`.
async fn manage_message(raw_id: String, worker: Arc<Worker>, body: Bytes) -> Response {
    finish(
        &worker.config.quirks,
        (|| {
            let id = parse_session_id(&raw_id)?;
            let body = parse_json(&body)?;
            let managed = validate_manage(&body).map_err(SimError::validation)?;
            worker.ensure_connected(&id)?;
            success(
                StatusCode::OK,
                &json!({ "action": managed.action, "messageId": managed.message_id, "success": true }),
            )
        })(),
    )
}

/// Query of `GET /sim/messages`.
#[derive(Debug, Deserialize)]
struct MessagesQuery {
    /// Skip the first `after` sends; absent means the plain list of all of them.
    after: Option<usize>,
}

/// `GET /sim/messages`: every accepted send, in arrival order. With `?after=<n>`:
/// `{total, messages}`, the sends from index `n` on and how many there are in all, so a poller
/// fetches each send once however long the run.
async fn sim_messages(worker: Arc<Worker>, query: MessagesQuery) -> Response {
    let (total, newer) = worker.state.messages_after(query.after.unwrap_or(0));
    let messages: Vec<&ReceivedSend> = newer.iter().map(Arc::as_ref).collect();
    match query.after {
        // The original answer, a bare array, which existing clients parse.
        None => finish(&worker.config.quirks, success(StatusCode::OK, &messages)),
        Some(_) => finish(
            &worker.config.quirks,
            success(StatusCode::OK, &MessagesPage { total, messages }),
        ),
    }
}

/// The answer of `GET /sim/messages?after=<n>`; typed so a large page is serialised straight from
/// the records, not through an intermediate `Value`.
#[derive(Serialize)]
struct MessagesPage<'a> {
    /// Sends recorded so far; the next poll passes it as `after`.
    total: usize,
    /// The sends from index `after` on, in arrival order.
    messages: Vec<&'a ReceivedSend>,
}

/// `GET /sim/sessions`.
async fn sim_sessions(worker: Arc<Worker>) -> Response {
    let views = worker.state.sessions().views();
    finish(&worker.config.quirks, success(StatusCode::OK, &views))
}

/// `POST /sim/sessions/{id}/scan` · `/drop` · `/inbound` · `/fail` · `/expire-qr` ·
/// `/logout-from-phone`.
async fn sim_control(raw_id: String, action: String, worker: Arc<Worker>, body: Bytes) -> Response {
    finish(
        &worker.config.quirks,
        (|| {
            let id = parse_session_id(&raw_id)?;
            let now_status = |status: SessionStatus| {
                success(
                    StatusCode::OK,
                    &json!({ "sessionId": id.as_str(), "status": status }),
                )
            };
            match action.as_str() {
                "scan" => {
                    worker.scan(&id)?;
                    now_status(SessionStatus::Connected)
                }
                "drop" => {
                    worker.drop_connection(&id)?;
                    now_status(SessionStatus::Reconnecting)
                }
                "fail" => now_status(worker.fail_session(&id)?),
                "expire-qr" => now_status(worker.expire_qr(&id, None)?),
                "logout-from-phone" => {
                    worker.logout_from_phone(&id)?;
                    now_status(SessionStatus::Disconnected)
                }
                "inbound" => {
                    let body = parse_json(&body)?;
                    let text =
                        |name: &str| body.get(name).and_then(Value::as_str).map(str::to_owned);
                    let from = text("from")
                        .filter(|from| !from.is_empty())
                        .ok_or_else(|| missing_string("from"))?;
                    // A bare number is the common case in demos; the gateway expects a JID.
                    let from = if from.contains('@') {
                        from
                    } else {
                        format!("{}@s.whatsapp.net", from.trim_start_matches('+'))
                    };
                    let kind = text("type").unwrap_or_else(|| "text".to_owned());
                    let message_id = worker.inbound(&id, from, kind, text("message"))?;
                    success(StatusCode::OK, &json!({ "messageId": message_id }))
                }
                _ => Err(SimError::new(
                    StatusCode::NOT_FOUND,
                    "NOT_FOUND",
                    "no such route",
                )),
            }
        })(),
    )
}

/// Serves `filter` on `listener` until `shutdown` resolves, then lets in-flight requests finish
/// for at most [`SHUTDOWN_GRACE`]. Aborting the task that runs this drops every connection.
pub(crate) async fn serve(
    listener: TcpListener,
    filter: BoxedFilter<(Response,)>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let warp_service = warp::service(filter);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        while connections.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let warp_service = warp_service.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            handle(request, peer, warp_service.clone())
        });
        let connection = graceful.watch(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service),
        );
        connections.spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the grace period; dropping them");
    }
}

/// Reads the body under [`MAX_BODY_BYTES`] (chunked bodies included), then runs the routes with
/// the [`Caller`] in the request's extensions.
async fn handle<S>(
    request: hyper::Request<Incoming>,
    peer: SocketAddr,
    mut warp_service: S,
) -> Result<Response, Infallible>
where
    S: tower_service::Service<hyper::Request<Full<Bytes>>, Response = Response, Error = Infallible>,
{
    let (mut parts, body) = request.into_parts();
    let caller = caller_of(peer, &parts.headers);
    parts.extensions.insert(caller);
    match http_body_util::Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => {
            let request = hyper::Request::from_parts(parts, Full::new(collected.to_bytes()));
            warp_service.call(request).await
        }
        Err(err)
            if err
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Ok(SimError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                format!("the body exceeds {MAX_BODY_BYTES} bytes"),
            )
            .plain())
        }
        Err(err) => Ok(SimError::new(
            StatusCode::BAD_REQUEST,
            "BODY_READ_ERROR",
            format!("could not read the body: {err}"),
        )
        .plain()),
    }
}
