//! `/api/v1/admin/users`: administrators list, inspect and change users. `403` for everyone else.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::error::{ApiError, ApiResult, finish, not_found_as, success};
use super::extract::{
    Ctx, QueryParams, administrator, json_body, path_id, query_params, with_context,
};
use super::views::UserView;
use crate::domain::{DisplayName, Role, TextRule, Tier};
use crate::store::{User, UserListQuery, UserUpdate};

#[allow(unused_imports)]
use super::views::{Envelope, ErrorEnvelope};

/// Query of `GET /admin/users`.
#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListUsersQuery {
    /// 1-based page (default 1).
    #[param(minimum = 1, maximum = 1000000)]
    pub page: Option<u32>,
    /// Page size (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub per_page: Option<u32>,
    /// Case-insensitive substring of e-mail or name (one line, at most 100 characters).
    #[param(
        max_length = 100,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F\\u2028\\u2029\\u061C\\u202A-\\u202E\\u2066-\\u2069]*$"
    )]
    pub search: Option<String>,
}

impl ListUsersQuery {
    /// Takes the parameters from the query string, each under its rule.
    fn parse(query: &QueryParams) -> Result<Self, ApiError> {
        query.only(&["page", "perPage", "search"])?;
        Ok(Self {
            page: query.number("page", 1..=1_000_000)?,
            per_page: query.number("perPage", 1..=100)?,
            search: query
                .text("search", TextRule::line(100))?
                .map(str::to_owned),
        })
    }
}

/// A page of users.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserPageView {
    /// The users, newest first.
    pub items: Vec<UserView>,
    /// This page.
    pub page: u32,
    /// Page size.
    pub per_page: u32,
    /// Matching users in total.
    pub total: i64,
}

/// Body of `PUT /admin/users/{id}`; absent fields are left alone.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminUserUpdate {
    /// New display name.
    pub name: Option<String>,
    /// New tier.
    pub tier: Option<Tier>,
    /// New role.
    pub role: Option<Role>,
    /// `false` deactivates (ends every login), `true` reactivates.
    pub active: Option<bool>,
}

/// Every `/api/v1/admin/users` route.
pub fn routes(context: Ctx) -> BoxedFilter<(Response,)> {
    let base = warp::path!("api" / "v1" / "admin" / "users" / ..);
    // GET /api/v1/admin/users
    let list = base
        .and(warp::path::end())
        .and(warp::get())
        .and(with_context(context.clone()))
        .and(administrator(context.clone()))
        .and(query_params())
        .then(list_users)
        .map(finish);
    // GET /api/v1/admin/users/{id}
    let get = base
        .and(warp::path!(String))
        .and(warp::get())
        .and(with_context(context.clone()))
        .and(administrator(context.clone()))
        .then(get_user)
        .map(finish);
    // PUT (or PATCH) /api/v1/admin/users/{id}
    let update = base
        .and(warp::path!(String))
        .and(warp::put().or(warp::patch()).unify())
        .and(with_context(context.clone()))
        .and(administrator(context))
        .and(json_body())
        .then(update_user)
        .map(finish);
    list.or(get).unify().or(update).unify().boxed()
}

/// Lists users with paging and search.
#[utoipa::path(get, path = "/api/v1/admin/users", tag = "admin", params(ListUsersQuery),
    responses((status = 200, body = Envelope<UserPageView>), (status = 403, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn list_users(context: Ctx, _admin: User, query: QueryParams) -> ApiResult {
    let query = ListUsersQuery::parse(&query)?;
    let page = query.page.unwrap_or(1);
    let per_page = query.per_page.unwrap_or(20);
    let search = query.search.filter(|s| !s.trim().is_empty());
    let result = context
        .store
        .list_users(&UserListQuery {
            search: search.map(|s| s.trim().to_owned()),
            page,
            per_page,
        })
        .await?;
    Ok(success(
        StatusCode::OK,
        &UserPageView {
            items: result.users.iter().map(UserView::from).collect(),
            page,
            per_page,
            total: result.total,
        },
    ))
}

/// One user.
#[utoipa::path(get, path = "/api/v1/admin/users/{id}", tag = "admin",
    params(("id" = String, Path, description = "user id")),
    responses((status = 200, body = Envelope<UserView>), (status = 404, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn get_user(id: String, context: Ctx, _admin: User) -> ApiResult {
    path_id("id", &id)?;
    let user = context
        .store
        .user_by_id(&id)
        .await
        .map_err(not_found_as("user"))?;
    Ok(success(StatusCode::OK, &UserView::from(&user)))
}

/// Changes a user's name, tier, role or activation.
#[utoipa::path(put, path = "/api/v1/admin/users/{id}", tag = "admin", request_body = AdminUserUpdate,
    params(("id" = String, Path, description = "user id")),
    responses((status = 200, body = Envelope<UserView>), (status = 404, body = ErrorEnvelope),
              (status = 409, description = "would lock the administrator out", body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn update_user(
    id: String,
    context: Ctx,
    admin: User,
    body: AdminUserUpdate,
) -> ApiResult {
    path_id("id", &id)?;
    if id == admin.id && (body.active == Some(false) || body.role == Some(Role::User)) {
        return Err(ApiError::Conflict {
            code: "SELF_LOCKOUT",
            message: "administrators cannot deactivate or demote themselves".to_owned(),
        });
    }
    let name = body
        .name
        .as_deref()
        .map(|raw| DisplayName::parse("name", raw))
        .transpose()?
        .map(DisplayName::into_inner);
    let update = UserUpdate {
        name,
        tier: body.tier,
        role: body.role,
        active: body.active,
    };
    let user = context
        .store
        .admin_update_user(&id, &update)
        .await
        .map_err(not_found_as("user"))?;
    if body.active == Some(false) {
        context.store.revoke_user_refresh_tokens(&user.id).await?;
    }
    context.verified_keys.forget_user(&user.id);
    tracing::info!(admin = %admin.id, user = %user.id, "user updated by administrator");
    Ok(success(StatusCode::OK, &UserView::from(&user)))
}
