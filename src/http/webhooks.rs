//! Customer webhook endpoints under `/api/v1/webhooks` (access token or API key; another
//! user's endpoint is `404`). The signing secret is in the answer of a creation and of a
//! rotation only. An API key bound to a session manages only the endpoints of that session.

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::error::{ApiError, ApiResult, finish, success};
use super::extract::{Credential, Ctx, Principal, authenticated, json_body, path_id, with_context};
use super::sessions::Deleted;
use super::views::{Envelope, ErrorEnvelope};
use crate::domain::{ms_to_rfc3339, now_ms};
use crate::store::WebhookRecord;
use crate::webhooks::endpoints::{EndpointError, EndpointPatch, EndpointSpec, WithSecret};

/// An endpoint id in the path; the workers' callback names under the same prefix are left to
/// their routes (see [`super::worker_api::CALLBACK_NAMES`]).
fn webhook_id() -> impl Filter<Extract = (String,), Error = warp::Rejection> + Clone {
    warp::path::param::<String>().and_then(|id: String| async move {
        if super::worker_api::CALLBACK_NAMES.contains(&id.as_str()) {
            Err(warp::reject::not_found())
        } else {
            Ok(id)
        }
    })
}

/// Every webhook route.
pub fn routes(context: Ctx) -> BoxedFilter<(Response,)> {
    let base = || warp::path!("api" / "v1" / "webhooks" / ..);
    let ctx = || with_context(context.clone());
    let caller = || authenticated(context.clone());
    // POST /api/v1/webhooks
    let create = base()
        .and(warp::path::end())
        .and(warp::post())
        .and(ctx())
        .and(caller())
        .and(json_body())
        .then(create_webhook)
        .map(finish);
    // GET /api/v1/webhooks
    let list = base()
        .and(warp::path::end())
        .and(warp::get())
        .and(ctx())
        .and(caller())
        .then(list_webhooks)
        .map(finish);
    // GET /api/v1/webhooks/{id}
    let get = base()
        .and(webhook_id())
        .and(warp::path::end())
        .and(warp::get())
        .and(ctx())
        .and(caller())
        .then(get_webhook)
        .map(finish);
    // PATCH /api/v1/webhooks/{id}
    let update = base()
        .and(webhook_id())
        .and(warp::path::end())
        .and(warp::patch())
        .and(ctx())
        .and(caller())
        .and(json_body())
        .then(update_webhook)
        .map(finish);
    // DELETE /api/v1/webhooks/{id}
    let delete = base()
        .and(webhook_id())
        .and(warp::path::end())
        .and(warp::delete())
        .and(ctx())
        .and(caller())
        .then(delete_webhook)
        .map(finish);
    // POST /api/v1/webhooks/{id}/rotate-secret
    let rotate = base()
        .and(webhook_id())
        .and(warp::path!("rotate-secret"))
        .and(warp::post())
        .and(ctx())
        .and(caller())
        .then(rotate_secret)
        .map(finish);
    create
        .or(list)
        .unify()
        .or(get)
        .unify()
        .or(update)
        .unify()
        .or(delete)
        .unify()
        .or(rotate)
        .unify()
        .boxed()
}

/// Body of `POST /api/v1/webhooks`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// Where events are posted: `https` (and a public address) unless the gateway allows
    /// otherwise (`WEBHOOK_ALLOW_HTTP`, `WEBHOOK_ALLOW_PRIVATE`).
    pub url: String,
    /// Event types to receive, or `["*"]` for all.
    #[schema(value_type = Vec<String>, example = json!(["message.delivered", "message.failed"]))]
    pub events: Vec<String>,
    /// Only events of these sessions (yours); omit for all of them.
    pub session_ids: Option<Vec<String>>,
    /// A note (at most 500 characters).
    pub description: Option<String>,
    /// Whether it receives events (default `true`).
    pub enabled: Option<bool>,
}

/// Body of `PATCH /api/v1/webhooks/{id}`: only the fields present change; `null` clears
/// `sessionIds` (all sessions) and `description`.
#[derive(Deserialize, ToSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateWebhookRequest {
    /// New URL.
    pub url: Option<String>,
    /// New event types.
    pub events: Option<Vec<String>>,
    /// New session filter; `null`: all sessions.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub session_ids: Option<Option<Vec<String>>>,
    /// New note; `null` clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    /// Enable (also ends a disabling by `410` or failures) or disable.
    pub enabled: Option<bool>,
}

/// A field that is present, `null` or not: absent stays `None` (by `default`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

/// An endpoint as its owner sees it (never its secret).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookView {
    /// Its id.
    pub id: String,
    /// Where events go.
    pub url: String,
    /// Event types it receives (`*`: all).
    pub events: Vec<String>,
    /// Only these sessions' events; `null`: all the owner's sessions.
    pub session_ids: Option<Vec<String>>,
    /// The owner's note.
    pub description: Option<String>,
    /// Whether it receives events.
    pub enabled: bool,
    /// Why it was disabled (by its owner, a `410 Gone`, days of failures).
    pub disabled_reason: Option<String>,
    /// Since when it is disabled (RFC 3339).
    pub disabled_at: Option<String>,
    /// Until when the previous secret still signs beside the current one (RFC 3339), during
    /// a rotation.
    pub previous_secret_valid_until: Option<String>,
    /// Created (RFC 3339).
    pub created_at: String,
    /// Last change (RFC 3339).
    pub updated_at: String,
}

impl From<&WebhookRecord> for WebhookView {
    fn from(record: &WebhookRecord) -> Self {
        Self {
            id: record.id.clone(),
            url: record.url.clone(),
            events: record.events.clone(),
            session_ids: record.session_ids.clone(),
            description: record.description.clone(),
            enabled: record.disabled_at.is_none(),
            disabled_reason: record.disabled_reason.clone(),
            disabled_at: record.disabled_at.map(ms_to_rfc3339),
            previous_secret_valid_until: record
                .previous_secret_until
                .filter(|until| *until > now_ms())
                .map(ms_to_rfc3339),
            created_at: ms_to_rfc3339(record.created_at),
            updated_at: ms_to_rfc3339(record.updated_at),
        }
    }
}

/// An endpoint with its signing secret: the answer of a creation or a rotation, the only
/// times the secret is shown.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookWithSecret {
    /// The endpoint.
    #[serde(flatten)]
    pub webhook: WebhookView,
    /// The signing secret (`whsec_` + base64): verify each delivery's `webhook-signature`
    /// with it (Standard Webhooks). Not shown again.
    pub secret: String,
}

impl From<&WithSecret> for WebhookWithSecret {
    fn from(created: &WithSecret) -> Self {
        Self {
            webhook: WebhookView::from(&created.endpoint),
            secret: created.secret.reveal(),
        }
    }
}

impl From<EndpointError> for ApiError {
    fn from(err: EndpointError) -> Self {
        match err {
            EndpointError::Invalid(invalid) => ApiError::validation(invalid),
            limit @ EndpointError::Limit(_) => ApiError::Conflict {
                code: "WEBHOOK_LIMIT_REACHED",
                message: limit.to_string(),
            },
            EndpointError::NotFound => ApiError::NotFound("webhook"),
            EndpointError::Store(err) => err.into(),
        }
    }
}

/// The session an API key is bound to, if it is.
fn bound_session(principal: &Principal) -> Option<&str> {
    match &principal.credential {
        Credential::ApiKey(key) => key.session_id.as_deref(),
        Credential::AccessToken => None,
    }
}

/// Whether the caller may see `record`: a session-bound key sees only its session's endpoints.
fn visible(principal: &Principal, record: &WebhookRecord) -> bool {
    match bound_session(principal) {
        None => true,
        Some(session) => record.session_ids.as_deref() == Some(&[session.to_owned()][..]),
    }
}

/// One of the caller's endpoints, as the caller may see it.
async fn visible_webhook(
    context: &Ctx,
    principal: &Principal,
    id: &str,
) -> Result<WebhookRecord, ApiError> {
    path_id("id", id)?;
    match context.store.webhook_for_user(&principal.user.id, id).await {
        Ok(record) if visible(principal, &record) => Ok(record),
        Ok(_) | Err(crate::store::StoreError::NotFound) => Err(ApiError::NotFound("webhook")),
        Err(err) => Err(err.into()),
    }
}

/// Registers an endpoint. The answer carries its signing secret, shown this once.
#[utoipa::path(post, path = "/api/v1/webhooks", tag = "webhooks", request_body = CreateWebhookRequest,
    responses((status = 201, body = Envelope<WebhookWithSecret>),
              (status = 409, description = "as many endpoints as the tier allows (`WEBHOOK_LIMIT_REACHED`)", body = ErrorEnvelope)),
    security(("bearer" = []), ("apiKey" = [])))]
pub async fn create_webhook(
    context: Ctx,
    principal: Principal,
    body: CreateWebhookRequest,
) -> ApiResult {
    let session_ids = match (bound_session(&principal), body.session_ids) {
        (None, ids) => ids,
        (Some(session), None) => Some(vec![session.to_owned()]),
        (Some(session), Some(ids)) if ids.len() == 1 && ids[0] == session => Some(ids),
        (Some(_), Some(_)) => {
            return Err(ApiError::validation(crate::domain::InvalidInput::new(
                "sessionIds",
                "a key bound to a session registers endpoints of that session only",
            )));
        }
    };
    let limit = context.quotas.limits(principal.user.tier).max_webhooks;
    let created = context
        .webhooks
        .create(
            &principal.user.id,
            EndpointSpec {
                url: body.url,
                events: body.events,
                session_ids,
                description: body.description,
                enabled: body.enabled.unwrap_or(true),
            },
            limit,
        )
        .await?;
    Ok(success(
        StatusCode::CREATED,
        &WebhookWithSecret::from(&created),
    ))
}

/// The caller's endpoints, oldest first.
#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks",
    responses((status = 200, body = Envelope<Vec<WebhookView>>)),
    security(("bearer" = []), ("apiKey" = [])))]
pub async fn list_webhooks(context: Ctx, principal: Principal) -> ApiResult {
    let records = context.store.list_webhooks(&principal.user.id).await?;
    let views: Vec<WebhookView> = records
        .iter()
        .filter(|record| visible(&principal, record))
        .map(WebhookView::from)
        .collect();
    Ok(success(StatusCode::OK, &views))
}

/// One endpoint.
#[utoipa::path(get, path = "/api/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = Envelope<WebhookView>), (status = 404, body = ErrorEnvelope)),
    security(("bearer" = []), ("apiKey" = [])))]
pub async fn get_webhook(id: String, context: Ctx, principal: Principal) -> ApiResult {
    let record = visible_webhook(&context, &principal, &id).await?;
    Ok(success(StatusCode::OK, &WebhookView::from(&record)))
}

/// Changes an endpoint: only the fields sent.
#[utoipa::path(patch, path = "/api/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    request_body = UpdateWebhookRequest,
    responses((status = 200, body = Envelope<WebhookView>), (status = 404, body = ErrorEnvelope)),
    security(("bearer" = []), ("apiKey" = [])))]
pub async fn update_webhook(
    id: String,
    context: Ctx,
    principal: Principal,
    body: UpdateWebhookRequest,
) -> ApiResult {
    visible_webhook(&context, &principal, &id).await?;
    if bound_session(&principal).is_some() && body.session_ids.is_some() {
        return Err(ApiError::validation(crate::domain::InvalidInput::new(
            "sessionIds",
            "a key bound to a session cannot change an endpoint's sessions",
        )));
    }
    let record = context
        .webhooks
        .update(
            &principal.user.id,
            &id,
            EndpointPatch {
                url: body.url,
                events: body.events,
                session_ids: body.session_ids,
                description: body.description,
                enabled: body.enabled,
            },
        )
        .await?;
    Ok(success(StatusCode::OK, &WebhookView::from(&record)))
}

/// Deletes an endpoint and its delivery log.
#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = Envelope<Deleted>), (status = 404, body = ErrorEnvelope)),
    security(("bearer" = []), ("apiKey" = [])))]
pub async fn delete_webhook(id: String, context: Ctx, principal: Principal) -> ApiResult {
    visible_webhook(&context, &principal, &id).await?;
    context
        .store
        .delete_webhook(&principal.user.id, &id)
        .await
        .map_err(EndpointError::from)?;
    Ok(success(StatusCode::OK, &Deleted { id, deleted: true }))
}

/// A new signing secret; the previous one keeps signing beside it for 24 hours (both
/// signatures in `webhook-signature`), so receivers can switch without losing a delivery.
#[utoipa::path(post, path = "/api/v1/webhooks/{id}/rotate-secret", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = Envelope<WebhookWithSecret>), (status = 404, body = ErrorEnvelope)),
    security(("bearer" = []), ("apiKey" = [])))]
pub async fn rotate_secret(id: String, context: Ctx, principal: Principal) -> ApiResult {
    visible_webhook(&context, &principal, &id).await?;
    let rotated = context
        .webhooks
        .rotate_secret(&principal.user.id, &id)
        .await?;
    Ok(success(StatusCode::OK, &WebhookWithSecret::from(&rotated)))
}
