//! `/api/v1/sessions` (JWT): users manage their own sessions, administrators all of them; plus
//! `POST /api/v1/admin/sessions/{id}/migrate`.

use std::convert::Infallible;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use super::error::{ApiError, ApiResult, finish, success};
use super::extract::{Ctx, administrator, json_body, user_session, with_context};
use super::views::SessionView;
use crate::domain::{DisplayName, Role, SessionId, TextRule};
use crate::fleet::Connected;
use crate::store::{Session, StoreError, User};

#[allow(unused_imports)]
use super::views::{Envelope, ErrorEnvelope};

/// Body of `POST /sessions`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSessionRequest {
    /// A label.
    pub name: String,
    /// Your own id (3–50 of letters, digits, `_`, `-`); generated when absent.
    pub session_id: Option<String>,
}

/// Body of `POST /admin/sessions/{id}/migrate`.
#[derive(Deserialize, ToSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MigrateRequest {
    /// Where to move it; placement decides when absent.
    pub target_worker_id: Option<String>,
}

/// Every session route.
pub fn routes(context: Ctx) -> BoxedFilter<(Response,)> {
    let base = || warp::path!("api" / "v1" / "sessions" / ..);
    let ctx = || with_context(context.clone());
    let user = || user_session(context.clone());
    // POST /api/v1/sessions
    let create = base()
        .and(warp::path::end())
        .and(warp::post())
        .and(ctx())
        .and(user())
        .and(json_body())
        .then(create_session)
        .map(finish);
    // GET /api/v1/sessions
    let list = base()
        .and(warp::path::end())
        .and(warp::get())
        .and(ctx())
        .and(user())
        .then(list_sessions)
        .map(finish);
    // GET /api/v1/sessions/{id}
    let get = base()
        .and(warp::path!(String))
        .and(warp::get())
        .and(ctx())
        .and(user())
        .then(get_session)
        .map(finish);
    // DELETE /api/v1/sessions/{id}
    let delete = base()
        .and(warp::path!(String))
        .and(warp::delete())
        .and(ctx())
        .and(user())
        .then(delete_session)
        .map(finish);
    // POST /api/v1/sessions/{id}/connect
    let connect = base()
        .and(warp::path!(String / "connect"))
        .and(warp::post())
        .and(ctx())
        .and(user())
        .then(connect_session)
        .map(finish);
    // GET /api/v1/sessions/{id}/status
    let status = base()
        .and(warp::path!(String / "status"))
        .and(warp::get())
        .and(ctx())
        .and(user())
        .then(session_status)
        .map(finish);
    // POST /api/v1/sessions/{id}/restart, /disconnect and /logout
    let action = |name: &'static str| {
        base()
            .and(warp::path::param::<String>())
            .and(warp::path(name))
            .and(warp::path::end())
            .and(warp::post())
            .and(ctx())
            .and(user())
    };
    let restart = action("restart").then(restart_session).map(finish);
    let disconnect = action("disconnect").then(disconnect_session).map(finish);
    let logout = action("logout").then(logout_session).map(finish);
    // GET /api/v1/sessions/{id}/events (Server-Sent Events)
    let events = base()
        .and(warp::path!(String / "events"))
        .and(warp::get())
        .and(ctx())
        .and(user())
        .then(session_events)
        .map(finish);
    // POST /api/v1/admin/sessions/{id}/migrate
    let migrate = warp::path!("api" / "v1" / "admin" / "sessions" / String / "migrate")
        .and(warp::post())
        .and(ctx())
        .and(administrator(context.clone()))
        .and(warp::body::bytes())
        .then(migrate_session)
        .map(finish);
    create
        .or(list)
        .unify()
        .or(get)
        .unify()
        .or(delete)
        .unify()
        .or(connect)
        .unify()
        .or(status)
        .unify()
        .or(events)
        .unify()
        .or(restart)
        .unify()
        .or(disconnect)
        .unify()
        .or(logout)
        .unify()
        .or(migrate)
        .unify()
        .boxed()
}

/// The session if the caller may see it: their own, or any for an administrator; 404 otherwise.
/// An id that cannot be a session id (the path's `id`) is a 400.
async fn visible_session(context: &Ctx, user: &User, id: &str) -> Result<Session, ApiError> {
    let id = SessionId::parse("id", id)?;
    match context.store.session_by_id(id.as_str()).await {
        Ok(session) if session.user_id == user.id || user.role == Role::Administrator => {
            Ok(session)
        }
        Ok(_) | Err(StoreError::NotFound) => Err(ApiError::NotFound("session")),
        Err(err) => Err(err.into()),
    }
}

/// The answer to a deletion.
#[derive(Serialize, ToSchema)]
pub struct Deleted {
    /// What was deleted.
    pub id: String,
    /// Always `true`.
    pub deleted: bool,
}

/// Creates a session (not yet placed).
#[utoipa::path(post, path = "/api/v1/sessions", tag = "sessions", request_body = CreateSessionRequest,
    responses((status = 201, body = Envelope<SessionView>), (status = 409, description = "tier limit or id taken", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn create_session(context: Ctx, user: User, body: CreateSessionRequest) -> ApiResult {
    let name = DisplayName::parse("name", &body.name)?;
    let limit = context.quotas.limits(user.tier).max_sessions;
    let session = context
        .fleet
        .create_session(&user.id, name.as_str(), body.session_id.as_deref(), limit)
        .await?;
    Ok(success(StatusCode::CREATED, &SessionView::from(&session)))
}

/// The caller's sessions (all sessions for administrators).
#[utoipa::path(get, path = "/api/v1/sessions", tag = "sessions",
    responses((status = 200, body = Envelope<Vec<SessionView>>)), security(("bearer" = [])))]
pub async fn list_sessions(context: Ctx, user: User) -> ApiResult {
    let owner = (user.role != Role::Administrator).then_some(user.id.as_str());
    let sessions = context.store.list_sessions(owner).await?;
    let views: Vec<SessionView> = sessions.iter().map(SessionView::from).collect();
    Ok(success(StatusCode::OK, &views))
}

/// One session.
#[utoipa::path(get, path = "/api/v1/sessions/{id}", tag = "sessions", params(("id" = String, Path)),
    responses((status = 200, body = Envelope<SessionView>), (status = 404, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn get_session(id: String, context: Ctx, user: User) -> ApiResult {
    let session = visible_session(&context, &user, &id).await?;
    Ok(success(StatusCode::OK, &SessionView::from(&session)))
}

/// Stops the session on its worker and deletes it.
#[utoipa::path(delete, path = "/api/v1/sessions/{id}", tag = "sessions", params(("id" = String, Path)),
    responses((status = 200, body = Envelope<Deleted>), (status = 404, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn delete_session(id: String, context: Ctx, user: User) -> ApiResult {
    let session = visible_session(&context, &user, &id).await?;
    context.fleet.delete_session(&session).await?;
    Ok(success(
        StatusCode::OK,
        &Deleted {
            id: session.id,
            deleted: true,
        },
    ))
}

/// Places the session on the healthy worker with the most headroom and starts it. `200`: the
/// worker started it (the QR follows). `202`: the session is placed but its worker is rate
/// limiting session starts (the existing worker allows each customer 5 per 5 minutes), or
/// could not carry out the start now (a `5xx`, no answer); the start is queued there and
/// happens by itself, `Retry-After` says about when; follow the session's status (SSE) for
/// its QR.
#[utoipa::path(post, path = "/api/v1/sessions/{id}/connect", tag = "sessions", params(("id" = String, Path)),
    responses((status = 200, body = Envelope<SessionView>),
              (status = 202, description = "placed; the worker is rate limiting session starts or could not start it now, so the start is queued on it and happens by itself (Retry-After: about when)",
               body = Envelope<SessionView>,
               headers(("Retry-After" = u64, description = "Seconds until the worker is expected to take the start"))),
              (status = 503, description = "no worker available", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn connect_session(id: String, context: Ctx, user: User) -> ApiResult {
    let session = visible_session(&context, &user, &id).await?;
    match context.fleet.connect(&session).await? {
        Connected::Started(session) => Ok(success(StatusCode::OK, &SessionView::from(&session))),
        Connected::Queued {
            session,
            retry_after,
        } => {
            let seconds = retry_after.map_or(QUEUED_START_RETRY_AFTER_SECS, |after| {
                after.as_secs().max(1)
            });
            let answer = success(StatusCode::ACCEPTED, &SessionView::from(&session));
            Ok(
                warp::reply::with_header(answer, "retry-after", seconds.to_string())
                    .into_response(),
            )
        }
    }
}

/// `Retry-After` of a queued start when the worker gave none.
const QUEUED_START_RETRY_AFTER_SECS: u64 = 60;

/// A session with its current QR.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionStatusView {
    /// The session.
    #[serde(flatten)]
    pub session: SessionView,
    /// The raw QR string to scan while the status is `QR_REQUIRED` (valid about 2 minutes).
    pub qr_code: Option<String>,
    /// The same QR as a PNG data URL, for an `<img>`.
    pub qr_data_url: Option<String>,
    /// When the worker reported the QR (RFC 3339).
    pub qr_updated_at: Option<String>,
}

/// Status with the current QR (raw and as a PNG data URL).
#[utoipa::path(get, path = "/api/v1/sessions/{id}/status", tag = "sessions", params(("id" = String, Path)),
    responses((status = 200, body = Envelope<SessionStatusView>), (status = 404, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn session_status(id: String, context: Ctx, user: User) -> ApiResult {
    let session = visible_session(&context, &user, &id).await?;
    let qr_code = session
        .qr_code
        .clone()
        .filter(|_| session.status == crate::domain::SessionStatus::QrRequired);
    let qr_data_url = match &qr_code {
        Some(qr) => Some(crate::fleet::qr::png_data_url(qr)?),
        None => None,
    };
    Ok(success(
        StatusCode::OK,
        &SessionStatusView {
            session: SessionView::from(&session),
            qr_code,
            qr_data_url,
            qr_updated_at: session.qr_updated_at.map(crate::domain::ms_to_rfc3339),
        },
    ))
}

/// The answer to a session action.
#[derive(Serialize, ToSchema)]
pub struct ActionAnswer {
    /// The session.
    pub id: String,
    /// `restart`, `disconnect` or `logout`.
    pub action: &'static str,
    /// What the owner worker answered (its `data`), as it sent it.
    #[schema(value_type = Object)]
    pub worker: serde_json::Value,
}

/// Restarts the session on its worker (keeps its credentials).
#[utoipa::path(post, path = "/api/v1/sessions/{id}/restart", tag = "sessions", params(("id" = String, Path)),
    responses((status = 200, body = Envelope<ActionAnswer>),
              (status = 409, description = "the session is on no worker, or its worker refused", body = ErrorEnvelope),
              (status = 503, description = "the worker cannot be reached", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn restart_session(id: String, context: Ctx, user: User) -> ApiResult {
    session_action(id, "restart", context, user).await
}

/// Disconnects the session from WhatsApp, keeping its credentials.
#[utoipa::path(post, path = "/api/v1/sessions/{id}/disconnect", tag = "sessions", params(("id" = String, Path)),
    responses((status = 200, body = Envelope<ActionAnswer>),
              (status = 409, description = "the session is on no worker, or its worker refused", body = ErrorEnvelope),
              (status = 503, description = "the worker cannot be reached", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn disconnect_session(id: String, context: Ctx, user: User) -> ApiResult {
    session_action(id, "disconnect", context, user).await
}

/// Logs the session out of WhatsApp and wipes its credentials (a new QR scan is needed).
#[utoipa::path(post, path = "/api/v1/sessions/{id}/logout", tag = "sessions", params(("id" = String, Path)),
    responses((status = 200, body = Envelope<ActionAnswer>),
              (status = 409, description = "the session is on no worker, or its worker refused", body = ErrorEnvelope),
              (status = 503, description = "the worker cannot be reached", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn logout_session(id: String, context: Ctx, user: User) -> ApiResult {
    session_action(id, "logout", context, user).await
}

/// Forwards `action` to the session's owner worker.
async fn session_action(id: String, action: &'static str, context: Ctx, user: User) -> ApiResult {
    let session = visible_session(&context, &user, &id).await?;
    let worker_answer = context.fleet.session_action(&session, action).await?;
    Ok(success(
        StatusCode::OK,
        &ActionAnswer {
            id: session.id,
            action,
            worker: worker_answer.get("data").cloned().unwrap_or(worker_answer),
        },
    ))
}

/// Server-Sent Events: the current state, then every status or QR change, each an event
/// `session` whose data is the session's JSON (a keep-alive comment every 15 s). The stream
/// ends when the gateway shuts down; reconnect then.
#[utoipa::path(get, path = "/api/v1/sessions/{id}/events", tag = "sessions", params(("id" = String, Path)),
    responses((status = 200, description = "an endless `text/event-stream`: `event: session` with `data:` a session as JSON",
               content_type = "text/event-stream", body = SessionView),
              (status = 404, body = ErrorEnvelope),
              (status = 429, description = "too many open streams for this user (`TOO_MANY_STREAMS`)", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn session_events(id: String, context: Ctx, user: User) -> ApiResult {
    let session = visible_session(&context, &user, &id).await?;
    let slot = context
        .streams
        .take(&user.id)
        .ok_or_else(|| ApiError::TooManyRequests {
            code: "TOO_MANY_STREAMS",
            message: format!(
                "at most {} live event streams per user; close one first",
                context.streams.per_user()
            ),
            retry_after: std::time::Duration::from_secs(5),
        })?;
    let receiver = context.fleet.events().subscribe(&session.id);
    let initial = warp::sse::Event::default()
        .event("session")
        .json_data(SessionView::from(&session))
        .map_err(|e| ApiError::Unexpected(anyhow::anyhow!("sse: {e}")))?;
    // The slot lives as long as the stream: the client going away frees it.
    let updates =
        futures_util::stream::unfold((receiver, slot), |(mut receiver, slot)| async move {
            loop {
                match receiver.recv().await {
                    Ok(event) => {
                        let sse = warp::sse::Event::default()
                            .event("session")
                            .json_data(&event)
                            .ok()?;
                        return Some((Ok::<_, Infallible>(sse), (receiver, slot)));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
    let stream = futures_util::StreamExt::chain(
        futures_util::stream::once(async move { Ok(initial) }),
        updates,
    );
    // An endless answer would hold the HTTP drain for its whole grace period: the stream ends
    // when shutdown starts (the client reconnects to another process or after the restart).
    let mut shutting_down = context.shutting_down.subscribe();
    let stream = futures_util::StreamExt::take_until(stream, async move {
        let _ = shutting_down.wait_for(|stopping| *stopping).await;
    });
    Ok(warp::sse::reply(warp::sse::keep_alive().stream(stream)).into_response())
}

/// A migration, queued.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationQueued {
    /// The session.
    pub session_id: String,
    /// Where it runs now.
    pub from_worker_id: Option<String>,
    /// Where it goes (placement decides when absent).
    pub target_worker_id: Option<String>,
    /// Always `true`.
    pub queued: bool,
}

/// Moves a session to another worker (administrators).
#[utoipa::path(post, path = "/api/v1/admin/sessions/{id}/migrate", tag = "admin", params(("id" = String, Path)),
    request_body(content = MigrateRequest, description = "optional: without a body, placement picks the target"),
    responses((status = 202, body = Envelope<MigrationQueued>), (status = 404, body = ErrorEnvelope),
              (status = 409, description = "the target cannot take it", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn migrate_session(
    id: String,
    context: Ctx,
    _admin: User,
    body: bytes::Bytes,
) -> ApiResult {
    let request: MigrateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        MigrateRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest {
            code: "VALIDATION_ERROR",
            message: format!("invalid request body: {e}"),
            details: None,
        })?
    };
    SessionId::parse("id", &id)?;
    TextRule::ID.check_optional("targetWorkerId", request.target_worker_id.as_deref())?;
    let session = context
        .store
        .session_by_id(&id)
        .await
        .map_err(|_| ApiError::NotFound("session"))?;
    context
        .fleet
        .request_migration(&session, request.target_worker_id.clone())
        .await?;
    Ok(success(
        StatusCode::ACCEPTED,
        &MigrationQueued {
            session_id: session.id,
            from_worker_id: session.worker_id,
            target_worker_id: request.target_worker_id,
            queued: true,
        },
    ))
}
