//! `/api/v1/auth`: register, login, refresh, logout, me, change-password.

use serde::Deserialize;
use utoipa::ToSchema;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::error::{ApiResult, finish, success};
use super::extract::{
    Ctx, Principal, authenticated, client_ip, json_body, user_session, with_context,
};
use super::views::{AuthTokens, UserView};
use crate::auth::LoginAttempt;
use crate::store::User;

/// Body of `POST /auth/register`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Display name.
    pub name: String,
    /// Login e-mail.
    pub email: String,
    /// At least 8 characters with a letter and a digit.
    pub password: String,
}

/// Body of `POST /auth/login`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Login e-mail.
    pub email: String,
    /// Password.
    pub password: String,
}

/// Body of `POST /auth/refresh` (and, optionally, `POST /auth/logout`).
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RefreshRequest {
    /// The refresh token from login or the previous refresh.
    pub refresh_token: String,
}

/// Body of `POST /auth/change-password`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChangePasswordRequest {
    /// The current password.
    pub current_password: String,
    /// The new password (same policy as registration).
    pub new_password: String,
}

/// Every `/api/v1/auth` route.
pub fn routes(context: Ctx) -> BoxedFilter<(Response,)> {
    let base = warp::path!("api" / "v1" / "auth" / ..);
    // POST /api/v1/auth/register
    let register = base
        .and(warp::path!("register"))
        .and(warp::post())
        .and(with_context(context.clone()))
        .and(client_ip(context.clone()))
        .and(json_body())
        .then(register)
        .map(finish);
    // POST /api/v1/auth/login
    let login = base
        .and(warp::path!("login"))
        .and(warp::post())
        .and(with_context(context.clone()))
        .and(client_ip(context.clone()))
        .and(json_body())
        .then(login)
        .map(finish);
    // POST /api/v1/auth/refresh
    let refresh = base
        .and(warp::path!("refresh"))
        .and(warp::post())
        .and(with_context(context.clone()))
        .and(client_ip(context.clone()))
        .and(json_body())
        .then(refresh)
        .map(finish);
    // POST /api/v1/auth/logout
    let logout = base
        .and(warp::path!("logout"))
        .and(warp::post())
        .and(with_context(context.clone()))
        .and(user_session(context.clone()))
        .and(optional_json_body())
        .then(logout)
        .map(finish);
    // GET /api/v1/auth/me
    let me = base
        .and(warp::path!("me"))
        .and(warp::get())
        .and(authenticated(context.clone()))
        .then(me)
        .map(finish);
    // POST /api/v1/auth/change-password
    let change_password = base
        .and(warp::path!("change-password"))
        .and(warp::post())
        .and(with_context(context.clone()))
        .and(user_session(context))
        .and(json_body())
        .then(change_password)
        .map(finish);
    register
        .or(login)
        .unify()
        .or(refresh)
        .unify()
        .or(logout)
        .unify()
        .or(me)
        .unify()
        .or(change_password)
        .unify()
        .boxed()
}

/// An optional JSON body: empty means `None`.
fn optional_json_body()
-> impl Filter<Extract = (Option<RefreshRequest>,), Error = warp::Rejection> + Clone {
    warp::body::bytes().and_then(|body: bytes::Bytes| async move {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        serde_json::from_slice::<RefreshRequest>(&body)
            .map(Some)
            .map_err(|err| {
                warp::reject::custom(super::error::ApiError::BadRequest {
                    code: "INVALID_JSON",
                    message: format!("invalid request body: {err}"),
                    details: None,
                })
            })
    })
}

/// Creates an account (role USER, tier BASIC) and logs it in; throttled per client address.
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = RegisterRequest,
    responses((status = 201, body = Envelope<AuthTokens>), (status = 400, body = ErrorEnvelope),
              (status = 409, description = "e-mail taken", body = ErrorEnvelope),
              (status = 429, description = "too many registrations from this address", body = ErrorEnvelope)))]
pub async fn register(
    context: Ctx,
    client_ip: Option<std::net::IpAddr>,
    body: RegisterRequest,
) -> ApiResult {
    let (user, tokens) = context
        .auth
        .register(&body.name, &body.email, &body.password, client_ip)
        .await?;
    Ok(success(
        StatusCode::CREATED,
        &AuthTokens::new(&user, tokens),
    ))
}

/// Exchanges e-mail and password for tokens; throttled per account and per client address.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = Envelope<AuthTokens>), (status = 400, body = ErrorEnvelope),
              (status = 401, body = ErrorEnvelope),
              (status = 403, description = "account deactivated", body = ErrorEnvelope),
              (status = 429, description = "too many failures", body = ErrorEnvelope)))]
pub async fn login(
    context: Ctx,
    client_ip: Option<std::net::IpAddr>,
    body: LoginRequest,
) -> ApiResult {
    let (user, tokens) = context
        .auth
        .login(LoginAttempt {
            email: &body.email,
            password: &body.password,
            client_ip,
        })
        .await?;
    Ok(success(StatusCode::OK, &AuthTokens::new(&user, tokens)))
}

/// Rotates a refresh token; replaying a used one revokes its whole family. Failed refreshes
/// are throttled per client address.
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = Envelope<AuthTokens>), (status = 400, body = ErrorEnvelope),
              (status = 401, body = ErrorEnvelope),
              (status = 429, description = "too many failed refreshes", body = ErrorEnvelope)))]
pub async fn refresh(
    context: Ctx,
    client_ip: Option<std::net::IpAddr>,
    body: RefreshRequest,
) -> ApiResult {
    let (user, tokens) = context.auth.refresh(&body.refresh_token, client_ip).await?;
    Ok(success(StatusCode::OK, &AuthTokens::new(&user, tokens)))
}

/// Ends this login (with `refreshToken`) or every login of the user (without).
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", request_body(content = RefreshRequest, description = "optional: with the refresh token, that login ends too"),
    responses((status = 200, body = Envelope<Object>), (status = 401, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn logout(context: Ctx, user: User, body: Option<RefreshRequest>) -> ApiResult {
    context
        .auth
        .logout(&user, body.as_ref().map(|b| b.refresh_token.as_str()))
        .await?;
    let scope = if body.is_some() { "session" } else { "all" };
    Ok(success(
        StatusCode::OK,
        &serde_json::json!({ "loggedOut": true, "scope": scope }),
    ))
}

/// The authenticated user.
#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth",
    responses((status = 200, body = Envelope<UserView>), (status = 401, body = ErrorEnvelope)),
    security(("bearer" = []), ("apiKey" = [])))]
pub async fn me(principal: Principal) -> ApiResult {
    Ok(success(StatusCode::OK, &UserView::from(&principal.user)))
}

/// Changes the password; every other login ends, fresh tokens are returned.
#[utoipa::path(post, path = "/api/v1/auth/change-password", tag = "auth", request_body = ChangePasswordRequest,
    responses((status = 200, body = Envelope<AuthTokens>), (status = 400, body = ErrorEnvelope),
              (status = 401, body = ErrorEnvelope),
              (status = 429, description = "too many wrong current passwords", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn change_password(context: Ctx, user: User, body: ChangePasswordRequest) -> ApiResult {
    let tokens = context
        .auth
        .change_password(&user, &body.current_password, &body.new_password)
        .await?;
    let user = context.store.user_by_id(&user.id).await?;
    Ok(success(StatusCode::OK, &AuthTokens::new(&user, tokens)))
}

#[allow(unused_imports)]
use super::views::{Envelope, ErrorEnvelope};
