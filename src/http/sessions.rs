//! `/api/v1/sessions` (JWT): users manage their own sessions, administrators all of them; plus
//! `POST /api/v1/admin/sessions/{id}/migrate`.

use std::convert::Infallible;

use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use super::error::{ApiError, ApiResult, finish, success};
use super::extract::{Ctx, administrator, json_body, user_session, with_context};
use super::views::SessionView;
use crate::domain::{DisplayName, Role, SessionId, TextRule};
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
    // POST /api/v1/sessions/{id}/{restart|disconnect|logout}
    let action = base()
        .and(warp::path!(String / String))
        .and(warp::post())
        .and(ctx())
        .and(user())
        .then(session_action)
        .map(finish);
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
        .or(action)
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
    responses((status = 200, body = Envelope<Object>), (status = 404, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn delete_session(id: String, context: Ctx, user: User) -> ApiResult {
    let session = visible_session(&context, &user, &id).await?;
    context.fleet.delete_session(&session).await?;
    Ok(success(
        StatusCode::OK,
        &json!({ "id": session.id, "deleted": true }),
    ))
}

/// Places the session on the healthy worker with the most headroom and starts it.
#[utoipa::path(post, path = "/api/v1/sessions/{id}/connect", tag = "sessions", params(("id" = String, Path)),
    responses((status = 200, body = Envelope<SessionView>),
              (status = 503, description = "no worker available", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn connect_session(id: String, context: Ctx, user: User) -> ApiResult {
    let session = visible_session(&context, &user, &id).await?;
    let session = context.fleet.connect(&session).await?;
    Ok(success(StatusCode::OK, &SessionView::from(&session)))
}

/// Status with the current QR (raw and as a PNG data URL).
#[utoipa::path(get, path = "/api/v1/sessions/{id}/status", tag = "sessions", params(("id" = String, Path)),
    responses((status = 200, body = Envelope<Object>), (status = 404, body = ErrorEnvelope)),
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
    let mut data =
        serde_json::to_value(SessionView::from(&session)).map_err(anyhow::Error::from)?;
    if let serde_json::Value::Object(map) = &mut data {
        map.insert("qrCode".into(), json!(qr_code));
        map.insert("qrDataUrl".into(), json!(qr_data_url));
        map.insert(
            "qrUpdatedAt".into(),
            json!(session.qr_updated_at.map(crate::domain::ms_to_rfc3339)),
        );
    }
    Ok(success(StatusCode::OK, &data))
}

/// Restart, disconnect (keeps credentials) or logout (wipes them), forwarded to the owner worker.
pub async fn session_action(id: String, action: String, context: Ctx, user: User) -> ApiResult {
    if !matches!(action.as_str(), "restart" | "disconnect" | "logout") {
        return Err(ApiError::NotFound("route"));
    }
    let session = visible_session(&context, &user, &id).await?;
    let worker_answer = context.fleet.session_action(&session, &action).await?;
    Ok(success(
        StatusCode::OK,
        &json!({ "id": session.id, "action": action, "worker": worker_answer.get("data").cloned().unwrap_or(worker_answer) }),
    ))
}

/// Server-Sent Events: the current state, then every status or QR change.
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

/// Moves a session to another worker (administrators).
#[utoipa::path(post, path = "/api/v1/admin/sessions/{id}/migrate", tag = "admin", params(("id" = String, Path)),
    request_body(content = Option<MigrateRequest>),
    responses((status = 202, body = Envelope<Object>), (status = 404, body = ErrorEnvelope)),
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
        &json!({ "sessionId": session.id, "fromWorkerId": session.worker_id, "targetWorkerId": request.target_worker_id, "queued": true }),
    ))
}
