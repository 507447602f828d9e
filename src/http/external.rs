//! The integrators' API under `/api/v1/external` (API key in `X-API-Key` or `Bearer wg_…`; a
//! dashboard access token works too): sends, bulk sends, the drop-in per-type routes of the
//! original gateway, session status and message lookups; plus the dashboard's
//! `/api/v1/sessions/{id}/messages`.
//!
//! A send is answered `202` only after the log holds it durably (see `send::ingress`). Every
//! send is charged to the user's hourly message quota (each bulk item counts) and the answer
//! carries `X-RateLimit-Limit/-Remaining/-Reset`; over quota it is `429` with `Retry-After`.
//! With `Idempotency-Key`, the first answer is stored for 24 hours and replayed for the same
//! body; another body under the same key is `409`. The message ids of such a request are
//! derived from the key, so a retry that takes over the claim of a request cut off by a crash
//! appends the same ids, and each message is still delivered once.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use utoipa::ToSchema;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;

use super::error::{
    ApiError, ApiResult, finish, json_response, not_found_as, rate_limit_headers, success,
    success_body,
};
use super::extract::{
    Credential, Ctx, Principal, QueryParams, authenticated, path_id, query_params, user_session,
    with_context,
};
use super::views::{Envelope, ErrorEnvelope};
use crate::delivery::Waiting;
use crate::domain::{
    InvalidInput, MessageDirection, MessageStatus, PhoneJid, SessionId, TextRule, WaitingReason,
    ms_to_rfc3339,
};
use crate::quota::{QuotaDecision, QuotaKind};
use crate::send::{MessageIds, MessageKind, SendRequest, ValidatedSend};
use crate::store::{
    IdempotencyClaim, MessageListQuery, MessageRecord, SessionOwnership, StoreError, User,
};

/// Most messages in one bulk request.
pub const MAX_BULK_MESSAGES: usize = 1000;
/// How long an idempotency key's first answer is replayed.
const IDEMPOTENCY_RETENTION_MS: i64 = 24 * 3600 * 1000;
/// How long a claimed key waits for its request before a retry may take it over. Short: a
/// request whose process died must not block its client for long, and a takeover while the
/// first request is merely slow creates nothing twice (both derive the same message ids, see
/// `MessageIds::Idempotent`).
const IDEMPOTENCY_CLAIM_MS: i64 = 5 * 1000;
/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

/// The drop-in routes of the original gateway and the message kind each one forces.
const PER_TYPE_ROUTES: [(&str, MessageKind); 12] = [
    ("sendText", MessageKind::Text),
    ("sendImage", MessageKind::Image),
    ("sendFile", MessageKind::Document),
    ("sendVoice", MessageKind::Audio),
    ("sendVideo", MessageKind::Video),
    ("sendLocation", MessageKind::Location),
    ("sendContactVcard", MessageKind::Contact),
    ("sendLink", MessageKind::Link),
    ("sendPoll", MessageKind::Poll),
    ("sendSeen", MessageKind::Seen),
    ("startTyping", MessageKind::TypingStart),
    ("stopTyping", MessageKind::TypingStop),
];

/// Every external route, and the dashboard's message list.
pub fn routes(context: Ctx) -> BoxedFilter<(Response,)> {
    let base = || warp::path!("api" / "v1" / "external" / ..);
    let ctx = || with_context(context.clone());
    let caller = || authenticated(context.clone());
    let send_input = || {
        warp::header::optional::<String>("idempotency-key")
            .and(warp::header::optional::<String>("content-type"))
            .and(warp::body::bytes())
    };
    // POST /api/v1/external/send
    let send = base()
        .and(warp::path!("send"))
        .and(warp::post())
        .and(ctx())
        .and(caller())
        .and(send_input())
        .then(|context, principal, key, content_type, body| {
            send_single(context, principal, None, key, content_type, body)
        });
    // POST /api/v1/external/send/bulk
    let bulk = base()
        .and(warp::path!("send" / "bulk"))
        .and(warp::post())
        .and(ctx())
        .and(caller())
        .and(send_input())
        .then(send_bulk);
    // POST /api/v1/external/{sendText|sendImage|…|stopTyping}
    let per_type = base()
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::post())
        .and_then(|route: String| async move {
            PER_TYPE_ROUTES
                .iter()
                .find(|(name, _)| *name == route)
                .map(|(_, kind)| *kind)
                .ok_or_else(warp::reject::not_found)
        })
        .and(ctx())
        .and(caller())
        .and(send_input())
        .then(|kind, context, principal, key, content_type, body| {
            send_single(context, principal, Some(kind), key, content_type, body)
        });
    // GET /api/v1/external/session/{id}/status
    let status = base()
        .and(warp::path!("session" / String / "status"))
        .and(warp::get())
        .and(ctx())
        .and(caller())
        .then(session_status)
        .map(finish);
    // GET /api/v1/external/messages/{messageId}
    let message = base()
        .and(warp::path!("messages" / String))
        .and(warp::get())
        .and(ctx())
        .and(caller())
        .then(get_message)
        .map(finish);
    // GET /api/v1/external/messages
    let messages = base()
        .and(warp::path!("messages"))
        .and(warp::get())
        .and(ctx())
        .and(caller())
        .and(query_params())
        .then(list_messages)
        .map(finish);
    // GET /api/v1/sessions/{id}/messages (dashboard, access token)
    let dashboard = warp::path!("api" / "v1" / "sessions" / String / "messages")
        .and(warp::get())
        .and(ctx())
        .and(user_session(context.clone()))
        .and(query_params())
        .then(session_messages)
        .map(finish);
    send.or(bulk)
        .unify()
        .or(status)
        .unify()
        .or(message)
        .unify()
        .or(messages)
        .unify()
        .or(per_type)
        .unify()
        .or(dashboard)
        .unify()
        .boxed()
}

// ----- sends ---------------------------------------------------------------------------------

/// Sends one message (`202` once the log holds it; delivery is asynchronous, follow it with
/// `GET /api/v1/external/messages/{messageId}`). The per-type routes (`sendText`, …) take the
/// same body with `type` implied.
#[utoipa::path(post, path = "/api/v1/external/send", tag = "external",
    params(("Idempotency-Key" = Option<String>, Header, description = "replays the first answer for 24 h; another body under the same key is `409`")),
    responses((status = 202, body = Envelope<SendAnswer>),
              (status = 404, description = "the session is not the caller's", body = ErrorEnvelope),
              (status = 409, description = "Idempotency-Key in use or used with another body (IDEMPOTENCY_KEY_IN_PROGRESS, IDEMPOTENCY_KEY_REUSED), or the session was never connected (SESSION_NOT_CONNECTED: connect it first)", body = ErrorEnvelope)),
    security(("apiKey" = []), ("bearer" = [])))]
pub async fn send_single(
    context: Ctx,
    principal: Principal,
    forced_kind: Option<MessageKind>,
    idempotency_key: Option<String>,
    content_type: Option<String>,
    body: Bytes,
) -> Response {
    let route = forced_kind.map_or("send", MessageKind::protocol_name);
    // The handler runs after the claim, under borrowed request parts.
    let (context, principal, content_type, body) = (&context, &principal, &content_type, &body);
    with_idempotency(
        context,
        principal,
        route,
        idempotency_key,
        body,
        |ids| async move {
            let request: SendRequest =
                super::extract::parse_json_body(content_type.as_deref(), body)?;
            let send = request
                .validate(forced_kind, &context.config.default_country_code)
                .map_err(ApiError::validation)?;
            let session_id = resolve_session(principal, send.session_id.as_ref())?;
            let ownership = ensure_owned(context, &principal.user, &session_id).await?;
            ensure_sendable(ownership, &session_id)?;
            let decision = charge_messages(context, &principal.user, 1).await?;
            let to = send.to.clone();
            let kind = send.kind;
            let accepted = context
                .ingress
                .accept(&principal.user.id, &session_id, vec![send], ids)
                .await
                .map_err(log_unavailable)?;
            let message = accepted
                .first()
                .ok_or_else(|| ApiError::Unexpected(anyhow::anyhow!("append returned no id")))?;
            context.metrics.messages_accepted(1);
            let body = success_body(&SendAnswer {
                message_id: &message.message_id,
                status: MessageStatus::Pending.as_str(),
                session_id: session_id.as_str(),
                to: to.as_str(),
                kind: kind.protocol_name(),
                accepted_at: ms_to_rfc3339(message.accepted_at),
            })?;
            Ok((StatusCode::ACCEPTED, body, Some(decision)))
        },
    )
    .await
}

/// The answer to a single send.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SendAnswer<'a> {
    /// The message's id.
    message_id: &'a str,
    /// Always `PENDING`.
    status: &'static str,
    /// The session it goes through.
    session_id: &'a str,
    /// The recipient's JID.
    to: &'a str,
    /// The message kind (`text`, `image`, …).
    #[serde(rename = "type")]
    kind: &'static str,
    /// When it was accepted (RFC 3339).
    accepted_at: String,
}

/// The body of `POST /api/v1/external/send/bulk`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BulkRequest<'a> {
    /// The session every message is sent from (may be omitted with a session-bound key).
    session_id: Option<String>,
    /// The messages, each like a single send (its `sessionId`, if given, must match); kept as
    /// their JSON text so each is parsed once, straight into a [`SendRequest`], and a bad one
    /// is rejected alone.
    #[serde(borrow)]
    messages: Vec<&'a RawValue>,
}

/// The answer to a bulk send.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BulkAnswer<'a> {
    /// The session.
    session_id: &'a str,
    /// Items accepted.
    accepted: usize,
    /// Items refused.
    rejected: usize,
    /// One per item, in request order.
    results: Vec<BulkItemResult>,
}

/// What became of one item of a bulk send, at its index in the request.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BulkItemResult {
    /// Its index in `messages`.
    index: usize,
    /// `PENDING` (accepted) or `REJECTED`.
    status: &'static str,
    /// The recipient's JID (accepted items).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    to: Option<PhoneJid>,
    /// The message's id (accepted items).
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<String>,
    /// Why it was refused (refused items).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<BulkItemError>,
}

/// Why an item of a bulk send was rejected.
#[derive(Serialize, ToSchema)]
pub struct BulkItemError {
    /// Always `VALIDATION_ERROR`.
    code: &'static str,
    /// What is wrong.
    message: String,
    /// The field at fault.
    field: &'static str,
}

/// Up to 1000 messages of one session, validated one by one; the valid ones are charged
/// together and accepted as one batch (`202`, with a result per item); `400` when none is valid.
#[utoipa::path(post, path = "/api/v1/external/send/bulk", tag = "external",
    params(("Idempotency-Key" = Option<String>, Header, description = "replays the first answer for 24 h; another body under the same key is `409`")),
    responses((status = 202, body = Envelope<BulkAnswer>),
              (status = 404, description = "the session is not the caller's", body = ErrorEnvelope),
              (status = 409, description = "Idempotency-Key in use or used with another body (IDEMPOTENCY_KEY_IN_PROGRESS, IDEMPOTENCY_KEY_REUSED), or the session was never connected (SESSION_NOT_CONNECTED: connect it first)", body = ErrorEnvelope)),
    security(("apiKey" = []), ("bearer" = [])))]
pub async fn send_bulk(
    context: Ctx,
    principal: Principal,
    idempotency_key: Option<String>,
    content_type: Option<String>,
    body: Bytes,
) -> Response {
    let (context, principal, content_type, body) = (&context, &principal, &content_type, &body);
    with_idempotency(
        context,
        principal,
        "bulk",
        idempotency_key,
        body,
        |ids| async move {
            let request: BulkRequest =
                super::extract::parse_json_body(content_type.as_deref(), body)?;
            if request.messages.is_empty() || request.messages.len() > MAX_BULK_MESSAGES {
                return Err(ApiError::validation(InvalidInput::new(
                    "messages",
                    format!("must hold 1 to {MAX_BULK_MESSAGES} messages"),
                )));
            }
            // A bulk is many requests' worth of work: delivery yields to a stream of them as
            // it does to many clients' single sends (see `IngressPressure`).
            let _weight = context.pressure.enter_weighted(
                request
                    .messages
                    .len()
                    .div_ceil(crate::priority::BULK_MESSAGES_PER_UNIT),
            );
            let session = request
                .session_id
                .as_deref()
                .map(|raw| SessionId::parse("sessionId", raw))
                .transpose()
                .map_err(ApiError::validation)?;
            let session_id = resolve_session(principal, session.as_ref())?;
            let ownership = ensure_owned(context, &principal.user, &session_id).await?;

            let country_code = &context.config.default_country_code;
            let mut results = Vec::with_capacity(request.messages.len());
            let mut valid: Vec<ValidatedSend> = Vec::with_capacity(request.messages.len());
            for (index, item) in request.messages.into_iter().enumerate() {
                let checked = serde_json::from_str::<SendRequest>(item.get())
                    .map_err(|err| InvalidInput::new("messages", item_error(&err)))
                    .and_then(|request| request.validate(None, country_code))
                    .and_then(|send| match &send.session_id {
                        Some(other) if other != &session_id => Err(InvalidInput::new(
                            "sessionId",
                            "must be the bulk request's session",
                        )),
                        _ => Ok(send),
                    });
                results.push(match checked {
                    Ok(send) => {
                        let to = send.to.clone();
                        valid.push(send);
                        BulkItemResult {
                            index,
                            status: MessageStatus::Pending.as_str(),
                            to: Some(to),
                            message_id: None,
                            error: None,
                        }
                    }
                    Err(invalid) => BulkItemResult {
                        index,
                        status: "REJECTED",
                        to: None,
                        message_id: None,
                        error: Some(BulkItemError {
                            code: "VALIDATION_ERROR",
                            message: invalid.to_string(),
                            field: invalid.field,
                        }),
                    },
                });
            }
            let accepted_count = valid.len();
            let rejected = results.len() - accepted_count;
            if valid.is_empty() {
                return Err(ApiError::BadRequest {
                    code: "VALIDATION_ERROR",
                    message: "no message of the bulk request is valid".to_owned(),
                    details: Some(json!({ "results": results })),
                });
            }
            ensure_sendable(ownership, &session_id)?;
            let decision = charge_messages(context, &principal.user, accepted_count as u64).await?;
            let accepted = context
                .ingress
                .accept(&principal.user.id, &session_id, valid, ids)
                .await
                .map_err(log_unavailable)?;
            let mut ids = accepted.into_iter();
            for result in results.iter_mut().filter(|result| result.error.is_none()) {
                result.message_id = ids.next().map(|message| message.message_id);
            }
            context.metrics.messages_accepted(accepted_count as u64);
            let body = success_body(&BulkAnswer {
                session_id: session_id.as_str(),
                accepted: accepted_count,
                rejected,
                results,
            })?;
            Ok((StatusCode::ACCEPTED, body, Some(decision)))
        },
    )
    .await
}

/// A bulk item's parse error without serde's position, which would point into the item's own
/// text rather than the request body.
fn item_error(err: &serde_json::Error) -> String {
    let text = err.to_string();
    let position = format!(" at line {} column {}", err.line(), err.column());
    match text.strip_suffix(&position) {
        Some(message) if err.line() > 0 => message.to_owned(),
        _ => text,
    }
}

/// What a send handler produces before idempotency bookkeeping and rendering.
/// The answer's body is the success envelope's text, so an idempotent key stores exactly what
/// was sent.
type SendOutcome = Result<(StatusCode, String, Option<QuotaDecision>), ApiError>;

/// Runs `handle` under the request's `Idempotency-Key`, if it has one: a replay of an answered
/// key returns the stored answer, a different body under a used key is `409`, a key whose first
/// request is still running is `409` too. Only successful answers are stored; a failed request
/// releases its key so the client can retry it.
async fn with_idempotency<F, Fut>(
    context: &Ctx,
    principal: &Principal,
    route: &str,
    key: Option<String>,
    body: &[u8],
    handle: F,
) -> Response
where
    F: FnOnce(MessageIds) -> Fut,
    Fut: std::future::Future<Output = SendOutcome>,
{
    let Some(key) = key else {
        return render(handle(MessageIds::Fresh).await);
    };
    let user_id = &principal.user.id;
    if TextRule::line(MAX_IDEMPOTENCY_KEY_CHARS)
        .non_empty()
        .check("Idempotency-Key", &key)
        .is_err()
    {
        return ApiError::BadRequest {
            code: "INVALID_IDEMPOTENCY_KEY",
            message: format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable characters"
            ),
            details: Some(json!({ "field": "Idempotency-Key" })),
        }
        .into_response();
    }
    let request_hash = crate::store::request_fingerprint(route, body);
    let claim = context
        .store
        .claim_idempotency_key(user_id, &key, &request_hash, IDEMPOTENCY_CLAIM_MS)
        .await;
    let claimed_at_ms = match claim {
        Err(err) => return ApiError::from(err).into_response(),
        Ok(IdempotencyClaim::Answered {
            request_hash: first,
            status,
            body,
        }) => {
            if first != request_hash {
                return key_reused();
            }
            let mut response =
                json_response(StatusCode::from_u16(status).unwrap_or(StatusCode::OK), body);
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return response;
        }
        Ok(IdempotencyClaim::InProgress {
            request_hash: first,
        }) => {
            if first != request_hash {
                return key_reused();
            }
            return ApiError::Conflict {
                code: "IDEMPOTENCY_KEY_IN_PROGRESS",
                message:
                    "a request with this Idempotency-Key is still being processed; retry shortly"
                        .to_owned(),
            }
            .into_response();
        }
        Ok(IdempotencyClaim::Claimed { claimed_at_ms }) => claimed_at_ms,
    };
    let outcome = handle(MessageIds::Idempotent {
        user_id: user_id.clone(),
        key: key.clone(),
        request_hash,
        claimed_at_ms,
    })
    .await;
    match &outcome {
        Ok((status, body, _)) => {
            if let Err(err) = context
                .store
                .complete_idempotency_key(
                    user_id,
                    &key,
                    status.as_u16(),
                    body,
                    IDEMPOTENCY_RETENTION_MS,
                )
                .await
            {
                // The messages are accepted; only the replay record is missing. The claim
                // expires and a replay would then send again, so say so loudly.
                tracing::error!(error = %err, "storing the idempotent answer failed");
            }
        }
        Err(_) => {
            if let Err(err) = context.store.release_idempotency_key(user_id, &key).await {
                tracing::warn!(error = %err, "releasing an idempotency key failed; it expires on its own");
            }
        }
    }
    render(outcome)
}

fn key_reused() -> Response {
    ApiError::Conflict {
        code: "IDEMPOTENCY_KEY_REUSED",
        message: "this Idempotency-Key was used with a different request body".to_owned(),
    }
    .into_response()
}

/// Renders a send outcome with its rate-limit headers.
fn render(outcome: SendOutcome) -> Response {
    match outcome {
        Ok((status, body, decision)) => {
            let mut response = json_response(status, body);
            if let Some(decision) = decision {
                rate_limit_headers(&mut response, &decision);
            }
            response
        }
        Err(err) => err.into_response(),
    }
}

/// Charges `amount` messages; over quota is `429` with `Retry-After` and the rate-limit headers.
async fn charge_messages(
    context: &Ctx,
    user: &User,
    amount: u64,
) -> Result<QuotaDecision, ApiError> {
    let decision = context
        .quotas
        .charge(&user.id, user.tier, QuotaKind::Messages, amount)
        .await
        .map_err(ApiError::Unexpected)?;
    if decision.allowed {
        Ok(decision)
    } else if !decision.fits_an_hour {
        Err(ApiError::QuotaExceeded {
            message: format!(
                "{amount} messages never fit the {} tier's hourly quota of {}: send them in parts",
                user.tier, decision.limit
            ),
            decision,
        })
    } else {
        Err(ApiError::QuotaExceeded {
            message: format!(
                "hourly message quota of {} for the {} tier would be exceeded ({} left, {} asked)",
                decision.limit, user.tier, decision.remaining, amount
            ),
            decision,
        })
    }
}

/// The session a send goes through: the body's, or the API key's own. A key bound to a session
/// cannot send through another one.
fn resolve_session(
    principal: &Principal,
    named: Option<&SessionId>,
) -> Result<SessionId, ApiError> {
    let bound = match &principal.credential {
        Credential::ApiKey(record) => record.session_id.as_deref(),
        Credential::AccessToken => None,
    };
    match (named, bound) {
        (Some(named), Some(bound)) if named.as_str() != bound => Err(ApiError::NotFound("session")),
        (Some(named), _) => Ok(named.clone()),
        (None, Some(bound)) => SessionId::parse("sessionId", bound).map_err(ApiError::validation),
        (None, None) => Err(ApiError::validation(InvalidInput::new(
            "sessionId",
            "is required (or use an API key bound to a session)",
        ))),
    }
}

/// The session is the user's (another user's, or none, is `404`); what is known of its
/// placement.
async fn ensure_owned(
    context: &Ctx,
    user: &User,
    session_id: &SessionId,
) -> Result<SessionOwnership, ApiError> {
    match context
        .ingress
        .owns_session(&context.store, &user.id, session_id.as_str())
        .await?
    {
        SessionOwnership::NotOwned => Err(ApiError::NotFound("session")),
        placed => Ok(placed),
    }
}

/// A send can be delivered some time only to a session that was placed on a worker (now or
/// before: a disconnected or reconnecting session's sends wait, bounded). One nobody ever
/// connected is `409`, at once: its sends would only fail after the delivery bound.
fn ensure_sendable(ownership: SessionOwnership, session_id: &SessionId) -> Result<(), ApiError> {
    if ownership != SessionOwnership::NeverPlaced {
        return Ok(());
    }
    Err(ApiError::Conflict {
        code: "SESSION_NOT_CONNECTED",
        message: format!(
            "session {id} was never connected: connect it \
             (POST /api/v1/sessions/{id}/connect) and scan its QR code, then send",
            id = session_id.as_str()
        ),
    })
}

fn log_unavailable(err: producers::AppendError) -> ApiError {
    tracing::error!(error = %err, "appending to the outbound log failed");
    ApiError::ServiceUnavailable {
        code: "LOG_UNAVAILABLE",
        message: "the message log did not confirm the request; retry later with the same \
                  Idempotency-Key (a message the log took after all is then not sent twice)"
            .to_owned(),
    }
}

// ----- lookups -------------------------------------------------------------------------------

/// A session's status and current QR. A key bound to another session gets `404`.
#[utoipa::path(get, path = "/api/v1/external/session/{id}/status", tag = "external", params(("id" = String, Path, description = "session id")),
    responses((status = 200, body = Envelope<super::sessions::SessionStatusView>), (status = 404, body = ErrorEnvelope)),
    security(("apiKey" = []), ("bearer" = [])))]
pub async fn session_status(id: String, context: Ctx, principal: Principal) -> ApiResult {
    SessionId::parse("id", &id)?;
    if let Credential::ApiKey(record) = &principal.credential
        && record
            .session_id
            .as_deref()
            .is_some_and(|bound| bound != id)
    {
        return Err(ApiError::NotFound("session"));
    }
    super::sessions::session_status(id, context, principal.user).await
}

/// One of the caller's messages with its status timeline.
#[utoipa::path(get, path = "/api/v1/external/messages/{messageId}", tag = "external",
    params(("messageId" = String, Path, description = "the id a send answered")),
    responses((status = 200, body = Envelope<MessageDetail>), (status = 404, body = ErrorEnvelope)),
    security(("apiKey" = []), ("bearer" = [])))]
pub async fn get_message(id: String, context: Ctx, principal: Principal) -> ApiResult {
    path_id("messageId", &id)?;
    let message = context
        .store
        .message_for_user(&principal.user.id, &id)
        .await
        .map_err(not_found_as("message"))?;
    if let Credential::ApiKey(record) = &principal.credential
        && record
            .session_id
            .as_deref()
            .is_some_and(|bound| bound != message.session_id)
    {
        return Err(ApiError::NotFound("message"));
    }
    let timeline = context.store.message_timeline(&message.id).await?;
    let pacing = context.quotas.limits(principal.user.tier).send_interval_ms;
    let waiting = Waiting::explain(
        &context.store,
        &message,
        std::time::Duration::from_millis(pacing),
        context.config.delivery_max_wait,
    )
    .await?;
    let detail = MessageDetail {
        message: MessageView::from(&message).waiting(waiting),
        timeline: timeline
            .into_iter()
            .map(|event| TimelineStep {
                status: event.status,
                detail: event.detail,
                at: ms_to_rfc3339(event.at),
            })
            .collect(),
    };
    Ok(success(StatusCode::OK, &detail))
}

/// The query of the message lists, as documented (parsed by [`ListParams`]).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ListQuery {
    /// Only this session's messages.
    #[param(rename = "sessionId", pattern = "^([A-Za-z0-9_-]{3,50})?$")]
    session_id: Option<String>,
    /// Only messages in this status.
    status: Option<MessageStatus>,
    /// Only sent (`OUTBOUND`) or received (`INBOUND`) messages.
    direction: Option<MessageDirection>,
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// The `nextCursor` of the previous page.
    #[param(pattern = "^[A-Za-z0-9_-]{0,256}$")]
    cursor: Option<String>,
}

/// Query of the message lists, each parameter under its rule.
#[derive(Debug)]
struct ListParams {
    session_id: Option<SessionId>,
    status: Option<MessageStatus>,
    direction: Option<MessageDirection>,
    limit: u32,
    before: Option<(i64, String)>,
}

impl ListParams {
    fn parse(query: &QueryParams) -> Result<Self, ApiError> {
        let invalid = |invalid: InvalidInput| ApiError::BadRequest {
            code: "INVALID_QUERY",
            message: invalid.to_string(),
            details: Some(json!({ "field": invalid.field })),
        };
        query.only(&["sessionId", "status", "direction", "limit", "cursor"])?;
        let session_id = query
            .text("sessionId", TextRule::token(50))?
            .map(|raw| SessionId::parse("sessionId", raw))
            .transpose()
            .map_err(invalid)?;
        let status = query
            .text("status", TextRule::token(16))?
            .map(|raw| {
                raw.parse::<MessageStatus>().map_err(|_| {
                    InvalidInput::new("status", "must be PENDING, SENT, DELIVERED, READ or FAILED")
                })
            })
            .transpose()
            .map_err(invalid)?;
        let direction = query
            .text("direction", TextRule::token(16))?
            .map(|raw| {
                raw.parse::<MessageDirection>()
                    .map_err(|_| InvalidInput::new("direction", "must be INBOUND or OUTBOUND"))
            })
            .transpose()
            .map_err(invalid)?;
        let limit = query.number("limit", 1..=200)?.unwrap_or(50);
        let before = query
            .text("cursor", TextRule::token(256))?
            .map(decode_cursor)
            .transpose()
            .map_err(invalid)?;
        Ok(Self {
            session_id,
            status,
            direction,
            limit,
            before,
        })
    }
}

/// The caller's messages, newest first; with `sessionId`, one of their sessions (`404` for
/// anyone else's). A key bound to a session sees that session's messages only.
#[utoipa::path(get, path = "/api/v1/external/messages", tag = "external", params(ListQuery),
    responses((status = 200, body = Envelope<MessagePage>), (status = 404, description = "the session is not the caller's", body = ErrorEnvelope)),
    security(("apiKey" = []), ("bearer" = [])))]
pub async fn list_messages(context: Ctx, principal: Principal, query: QueryParams) -> ApiResult {
    let params = ListParams::parse(&query)?;
    let bound = match &principal.credential {
        Credential::ApiKey(record) => record.session_id.as_deref(),
        Credential::AccessToken => None,
    };
    let session_id = match (&params.session_id, bound) {
        (Some(named), Some(bound)) if named.as_str() != bound => {
            return Err(ApiError::NotFound("session"));
        }
        (Some(named), _) => {
            ensure_owned(&context, &principal.user, named).await?;
            Some(named.as_str().to_owned())
        }
        (None, bound) => bound.map(str::to_owned),
    };
    message_page(&context, &principal.user, session_id, params).await
}

/// One session's messages, newest first (the dashboard's view; `sessionId` in the query, if
/// given, must be this session).
#[utoipa::path(get, path = "/api/v1/sessions/{id}/messages", tag = "sessions",
    params(("id" = String, Path, description = "session id"), ListQuery),
    responses((status = 200, body = Envelope<MessagePage>), (status = 404, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn session_messages(
    id: String,
    context: Ctx,
    user: User,
    query: QueryParams,
) -> ApiResult {
    let id = SessionId::parse("id", &id)?;
    let params = ListParams::parse(&query)?;
    match context.store.user_owns_session(&user.id, id.as_str()).await {
        Ok(true) => {}
        Ok(false) | Err(StoreError::NotFound) => return Err(ApiError::NotFound("session")),
        Err(err) => return Err(err.into()),
    }
    message_page(&context, &user, Some(id.as_str().to_owned()), params).await
}

async fn message_page(
    context: &Ctx,
    user: &User,
    session_id: Option<String>,
    params: ListParams,
) -> ApiResult {
    let limit = params.limit;
    let page = context
        .store
        .list_messages(&MessageListQuery {
            user_id: user.id.clone(),
            session_id,
            status: params.status,
            direction: params.direction,
            before: params.before,
            limit,
        })
        .await?;
    let next_cursor = (page.len() == limit as usize)
        .then(|| {
            page.last()
                .map(|last| encode_cursor(last.created_at, &last.id))
        })
        .flatten();
    let page = MessagePage {
        messages: page.iter().map(MessageView::from).collect(),
        next_cursor,
    };
    Ok(success(StatusCode::OK, &page))
}

/// The opaque cursor: `created_at` and id of the last row, base64url.
fn encode_cursor(created_at: i64, id: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{created_at}:{id}"))
}

fn decode_cursor(raw: &str) -> Result<(i64, String), InvalidInput> {
    use base64::Engine;
    let invalid = || InvalidInput::new("cursor", "is not a cursor of this list");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw)
        .map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (created_at, id) = text.split_once(':').ok_or_else(invalid)?;
    // The id inside goes to the store: it must be an id like any other.
    TextRule::ID.check("cursor", id).map_err(|_| invalid())?;
    Ok((created_at.parse().map_err(|_| invalid())?, id.to_owned()))
}

/// A message as the API shows it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageView {
    /// The gateway's id.
    pub message_id: String,
    /// The session it went through.
    pub session_id: String,
    /// `OUTBOUND` (sent) or `INBOUND` (received).
    pub direction: MessageDirection,
    /// `TEXT`, `IMAGE`, … as stored.
    #[serde(rename = "type")]
    pub message_type: String,
    /// The other party's JID.
    pub remote_jid: String,
    /// What was sent or received (the worker body of a send).
    #[schema(value_type = Object)]
    pub content: Value,
    /// `PENDING`, `SENT`, `DELIVERED`, `READ` or `FAILED`.
    pub status: MessageStatus,
    /// WhatsApp's id, once sent.
    pub whatsapp_message_id: Option<String>,
    /// Why it failed.
    pub error_message: Option<String>,
    /// Delivery attempts so far.
    pub attempts: i64,
    /// While `PENDING`, why it has not been sent yet: `SESSION_RECONNECTING`, `WORKER_DOWN`,
    /// `WORKER_RATE_LIMITED`, `PACED`, `QUEUED` or `STORE_UNAVAILABLE`; `null` otherwise.
    /// Lists show what its own last attempt met; one message (`GET …/messages/{id}`) also says
    /// what holds up a message not tried yet.
    pub waiting_reason: Option<WaitingReason>,
    /// The waiting reason in words (the last attempt's failure, the worker's own words).
    pub waiting_detail: Option<String>,
    /// When its next attempt is due (RFC 3339), once an attempt of its own failed.
    pub next_attempt_at: Option<String>,
    /// Accepted (RFC 3339).
    pub created_at: String,
    /// Last change (RFC 3339).
    pub updated_at: String,
}

impl From<&MessageRecord> for MessageView {
    fn from(message: &MessageRecord) -> Self {
        Self {
            message_id: message.id.clone(),
            session_id: message.session_id.clone(),
            direction: message.direction,
            message_type: message.message_type.clone(),
            remote_jid: message.remote_jid.clone(),
            content: serde_json::from_str(&message.content)
                .unwrap_or_else(|_| Value::String(message.content.clone())),
            status: message.status,
            whatsapp_message_id: message.worker_message_id.clone(),
            error_message: message.error_message.clone(),
            attempts: message.attempts,
            waiting_reason: None,
            waiting_detail: None,
            next_attempt_at: None,
            created_at: ms_to_rfc3339(message.created_at),
            updated_at: ms_to_rfc3339(message.updated_at),
        }
        .waiting(Waiting::recorded(message))
    }
}

impl MessageView {
    fn waiting(mut self, waiting: Option<Waiting>) -> Self {
        if let Some(waiting) = waiting {
            self.waiting_reason = Some(waiting.reason);
            self.waiting_detail = waiting.detail;
            self.next_attempt_at = waiting.next_attempt_at.map(ms_to_rfc3339);
        }
        self
    }
}

/// A message with its status timeline.
#[derive(Serialize, ToSchema)]
pub struct MessageDetail {
    /// The message.
    #[serde(flatten)]
    pub message: MessageView,
    /// Each status it went through, oldest first.
    pub timeline: Vec<TimelineStep>,
}

/// One step of a message's timeline.
#[derive(Serialize, ToSchema)]
pub struct TimelineStep {
    /// The status reached.
    pub status: MessageStatus,
    /// What the worker said (a failure's reason).
    pub detail: Option<String>,
    /// When (RFC 3339).
    pub at: String,
}

/// A page of messages, newest first.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessagePage {
    /// The messages.
    pub messages: Vec<MessageView>,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next_cursor: Option<String>,
}
