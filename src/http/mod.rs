//! The HTTP surface: warp filters per area (each route documented as `METHOD /path`), thin async
//! handlers, one `recover` that renders every rejection as the JSON error envelope, CORS, and the
//! server loop in [`server`].

pub mod admin;
pub mod auth;
pub mod docs;
pub mod error;
pub mod external;
pub mod extract;
pub mod health;
pub mod server;
pub mod sessions;
pub mod streams;
pub mod users;
pub mod views;
pub mod worker_api;
pub mod workers_admin;

use std::sync::Arc;

use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::app::AppContext;
use crate::config::CorsOrigins;

/// The whole route tree, with CORS and error recovery applied.
pub fn routes(context: Arc<AppContext>) -> BoxedFilter<(Response,)> {
    let api = health::routes(context.clone())
        .or(worker_api::routes(context.clone()))
        .unify()
        .or(auth::routes(context.clone()))
        .unify()
        .or(external::routes(context.clone()))
        .unify()
        .or(sessions::routes(context.clone()))
        .unify()
        .or(workers_admin::routes(context.clone()))
        .unify()
        .or(users::routes(context.clone()))
        .unify()
        .or(admin::routes(context.clone()))
        .unify()
        .or(docs::routes())
        .unify()
        .recover(error::recover)
        .unify();
    // Recover twice: inside CORS so error answers carry CORS headers, and outside for CORS's own
    // refusals (disallowed origin or method on a preflight).
    let allowed = match &context.config.cors_origins {
        // No CORS headers at all: browsers keep other origins' pages from reading answers.
        CorsOrigins::None => return api.boxed(),
        CorsOrigins::Any => cors().allow_any_origin(),
        CorsOrigins::List(list) => cors().allow_origins(list.iter().map(String::as_str)),
    };
    api.with(allowed)
        .map(warp::Reply::into_response)
        .recover(error::recover)
        .unify()
        .boxed()
}

fn cors() -> warp::filters::cors::Builder {
    warp::cors()
        .allow_methods(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
        .allow_headers([
            "authorization",
            "content-type",
            "x-api-key",
            "x-request-id",
            "idempotency-key",
        ])
        .expose_headers([
            "x-request-id",
            "retry-after",
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ])
        .max_age(600)
}
