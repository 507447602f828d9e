//! `/api/v1/users`: the caller's profile, tier, usage, and API keys.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::error::{ApiError, ApiResult, finish, not_found_as, success};
use super::extract::{
    Ctx, Principal, QueryParams, authenticated, json_body, path_id, query_params, user_session,
    with_context,
};
use super::views::{ApiKeyView, UserView};
use crate::auth::api_keys;
use crate::config::TierLimits;
use crate::domain::{DisplayName, SessionId, TextRule, Tier, ms_to_rfc3339, now_ms, rfc3339_to_ms};
use crate::quota::HourUsage;
use crate::store::{NewApiKey, User};

#[allow(unused_imports)]
use super::views::{Envelope, ErrorEnvelope};

/// Body of `PUT /users/profile`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileUpdate {
    /// New display name.
    pub name: String,
}

/// Body of `POST /users/api-keys`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    /// A label to recognise the key by.
    pub name: String,
    /// Bind the key to one of your sessions (it may then omit `sessionId` when sending).
    pub session_id: Option<String>,
    /// Expiry (RFC 3339), in the future (a past instant is a `400`).
    pub expires_at: Option<String>,
}

/// Answer of `POST /users/api-keys`: the only time the secret is shown.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedApiKey {
    /// The secret key: store it now, it cannot be shown again.
    pub key: String,
    /// Everything else about the key, its `id` among it.
    #[serde(flatten)]
    pub details: ApiKeyView,
}

/// Answer of `GET /users/tier`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TierView {
    /// The user's tier.
    pub tier: Tier,
    /// Its limits.
    pub limits: TierLimits,
    /// This hour's usage.
    pub usage: HourUsage,
    /// Sessions owned (not deleted).
    pub sessions: i64,
}

/// Query of `GET /users/usage`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// How many hours of history (1..=720, default 24).
    #[param(minimum = 1, maximum = 720)]
    pub hours: Option<u32>,
}

/// One hour of recorded usage.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageHour {
    /// Start of the hour (RFC 3339).
    pub hour_start: String,
    /// Messages accepted.
    pub messages: i64,
    /// API calls.
    pub api_calls: i64,
}

/// Answer of `GET /users/usage`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageView {
    /// Live counters of the current hour.
    pub current: HourUsage,
    /// Recorded hours, oldest first (written in batches, may lag a few seconds).
    pub history: Vec<UsageHour>,
}

/// Every `/api/v1/users` route.
pub fn routes(context: Ctx) -> BoxedFilter<(Response,)> {
    let base = warp::path!("api" / "v1" / "users" / ..);
    // GET /api/v1/users/profile
    let get_profile = base
        .and(warp::path!("profile"))
        .and(warp::get())
        .and(authenticated(context.clone()))
        .then(get_profile)
        .map(finish);
    // PUT /api/v1/users/profile
    let put_profile = base
        .and(warp::path!("profile"))
        .and(warp::put())
        .and(with_context(context.clone()))
        .and(user_session(context.clone()))
        .and(json_body())
        .then(update_profile)
        .map(finish);
    // GET /api/v1/users/tier
    let tier = base
        .and(warp::path!("tier"))
        .and(warp::get())
        .and(with_context(context.clone()))
        .and(authenticated(context.clone()))
        .then(get_tier)
        .map(finish);
    // GET /api/v1/users/usage
    let usage = base
        .and(warp::path!("usage"))
        .and(warp::get())
        .and(with_context(context.clone()))
        .and(authenticated(context.clone()))
        .and(query_params())
        .then(get_usage)
        .map(finish);
    // POST /api/v1/users/api-keys
    let create_key = base
        .and(warp::path!("api-keys"))
        .and(warp::post())
        .and(with_context(context.clone()))
        .and(user_session(context.clone()))
        .and(json_body())
        .then(create_api_key)
        .map(finish);
    // GET /api/v1/users/api-keys
    let list_keys = base
        .and(warp::path!("api-keys"))
        .and(warp::get())
        .and(with_context(context.clone()))
        .and(user_session(context.clone()))
        .then(list_api_keys)
        .map(finish);
    // DELETE /api/v1/users/api-keys/{id}
    let revoke_key = base
        .and(warp::path!("api-keys" / String))
        .and(warp::delete())
        .and(with_context(context.clone()))
        .and(user_session(context))
        .then(revoke_api_key)
        .map(finish);
    get_profile
        .or(put_profile)
        .unify()
        .or(tier)
        .unify()
        .or(usage)
        .unify()
        .or(create_key)
        .unify()
        .or(list_keys)
        .unify()
        .or(revoke_key)
        .unify()
        .boxed()
}

/// The caller's profile.
#[utoipa::path(get, path = "/api/v1/users/profile", tag = "users",
    responses((status = 200, body = Envelope<UserView>), (status = 401, body = ErrorEnvelope)),
    security(("bearer" = []), ("apiKey" = [])))]
pub async fn get_profile(principal: Principal) -> ApiResult {
    Ok(success(StatusCode::OK, &UserView::from(&principal.user)))
}

/// Changes the caller's display name.
#[utoipa::path(put, path = "/api/v1/users/profile", tag = "users", request_body = ProfileUpdate,
    responses((status = 200, body = Envelope<UserView>), (status = 400, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn update_profile(context: Ctx, user: User, body: ProfileUpdate) -> ApiResult {
    let name = DisplayName::parse("name", &body.name)?;
    let user = context
        .store
        .update_user_name(&user.id, name.as_str())
        .await?;
    Ok(success(StatusCode::OK, &UserView::from(&user)))
}

/// The caller's tier, its limits and this hour's usage.
#[utoipa::path(get, path = "/api/v1/users/tier", tag = "users",
    responses((status = 200, body = Envelope<TierView>)), security(("bearer" = []), ("apiKey" = [])))]
pub async fn get_tier(context: Ctx, principal: Principal) -> ApiResult {
    let user = principal.user;
    let usage = context.quotas.current_usage(&user.id).await?;
    let sessions = context.store.count_live_sessions(&user.id).await?;
    Ok(success(
        StatusCode::OK,
        &TierView {
            tier: user.tier,
            limits: context.quotas.limits(user.tier),
            usage,
            sessions,
        },
    ))
}

/// This hour's live counters and the recorded hourly history.
#[utoipa::path(get, path = "/api/v1/users/usage", tag = "users", params(UsageQuery),
    responses((status = 200, body = Envelope<UsageView>)), security(("bearer" = []), ("apiKey" = [])))]
pub async fn get_usage(context: Ctx, principal: Principal, query: QueryParams) -> ApiResult {
    query.only(&["hours"])?;
    let hours = query.number("hours", 1..=720)?.unwrap_or(24);
    let current = context.quotas.current_usage(&principal.user.id).await?;
    let since = now_ms() - i64::from(hours) * 3_600_000;
    let history = context
        .store
        .usage_since(&principal.user.id, since)
        .await?
        .into_iter()
        .map(|r| UsageHour {
            hour_start: ms_to_rfc3339(r.hour_start),
            messages: r.messages,
            api_calls: r.api_calls,
        })
        .collect();
    Ok(success(StatusCode::OK, &UsageView { current, history }))
}

/// Creates an API key; the secret is in this answer only.
#[utoipa::path(post, path = "/api/v1/users/api-keys", tag = "api-keys", request_body = CreateApiKeyRequest,
    responses((status = 201, body = Envelope<CreatedApiKey>), (status = 400, body = ErrorEnvelope),
              (status = 404, description = "session not yours", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn create_api_key(context: Ctx, user: User, body: CreateApiKeyRequest) -> ApiResult {
    let name = DisplayName::parse("name", &body.name)?;
    let session_id = body
        .session_id
        .as_deref()
        .map(|raw| SessionId::parse("sessionId", raw))
        .transpose()?;
    if let Some(session_id) = &session_id
        && !context
            .store
            .user_owns_session(&user.id, session_id.as_str())
            .await?
    {
        return Err(ApiError::NotFound("session"));
    }
    let expires_at = TextRule::token(64)
        .check_optional("expiresAt", body.expires_at.as_deref())?
        .map(|raw| rfc3339_to_ms("expiresAt", raw))
        .transpose()?;
    let now = now_ms();
    if expires_at.is_some_and(|at| at <= now) {
        return Err(crate::domain::InvalidInput::new("expiresAt", "must be in the future").into());
    }
    let generated = api_keys::generate();
    let record = context
        .store
        .insert_api_key(NewApiKey {
            user_id: &user.id,
            session_id: session_id.as_ref().map(SessionId::as_str),
            name: name.as_str(),
            key_hash: &generated.hash,
            key_prefix: &generated.display_prefix,
            expires_at,
        })
        .await?;
    Ok(success(
        StatusCode::CREATED,
        &CreatedApiKey {
            key: generated.secret,
            details: ApiKeyView::new(&record, now),
        },
    ))
}

/// The caller's keys, without secrets.
#[utoipa::path(get, path = "/api/v1/users/api-keys", tag = "api-keys",
    responses((status = 200, body = Envelope<Vec<ApiKeyView>>)), security(("bearer" = [])))]
pub async fn list_api_keys(context: Ctx, user: User) -> ApiResult {
    let now = now_ms();
    let keys: Vec<ApiKeyView> = context
        .store
        .list_api_keys(&user.id)
        .await?
        .iter()
        .map(|record| ApiKeyView::new(record, now))
        .collect();
    Ok(success(StatusCode::OK, &keys))
}

/// Revokes one of the caller's keys; `404` for anyone else's.
#[utoipa::path(delete, path = "/api/v1/users/api-keys/{id}", tag = "api-keys",
    params(("id" = String, Path, description = "API key id")),
    responses((status = 200, body = Envelope<ApiKeyView>), (status = 404, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn revoke_api_key(id: String, context: Ctx, user: User) -> ApiResult {
    path_id("id", &id)?;
    context
        .store
        .revoke_api_key(&user.id, &id)
        .await
        .map_err(not_found_as("api key"))?;
    context.verified_keys.forget_user(&user.id);
    let record = context.store.api_key_for_user(&user.id, &id).await?;
    Ok(success(StatusCode::OK, &ApiKeyView::new(&record, now_ms())))
}
