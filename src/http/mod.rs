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
pub mod webhooks;
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
        .or(webhooks::routes(context.clone()))
        .unify()
        .or(docs::routes())
        .unify()
        // Last: no route matched. Names the methods the path has, for a `405` with `Allow`.
        .or(unmatched())
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

/// Every route served, as `(method, path template)`: the OpenAPI description documents
/// exactly these (a test compares both, and probes each), and a request whose path matches a
/// template but not its method is a `405` with `Allow` naming the methods the path has.
pub const SERVED: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/health"),
    ("GET", "/api/v1/health"),
    ("GET", "/metrics"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/docs"),
    ("GET", "/api/v1/docs/{file}"),
    // auth
    ("POST", "/api/v1/auth/register"),
    ("POST", "/api/v1/auth/login"),
    ("POST", "/api/v1/auth/refresh"),
    ("POST", "/api/v1/auth/logout"),
    ("GET", "/api/v1/auth/me"),
    ("POST", "/api/v1/auth/change-password"),
    // users and API keys
    ("GET", "/api/v1/users/profile"),
    ("PUT", "/api/v1/users/profile"),
    ("GET", "/api/v1/users/tier"),
    ("GET", "/api/v1/users/usage"),
    ("POST", "/api/v1/users/api-keys"),
    ("GET", "/api/v1/users/api-keys"),
    ("DELETE", "/api/v1/users/api-keys/{id}"),
    // administrators
    ("GET", "/api/v1/admin/users"),
    ("GET", "/api/v1/admin/users/{id}"),
    ("PUT", "/api/v1/admin/users/{id}"),
    ("PATCH", "/api/v1/admin/users/{id}"),
    ("POST", "/api/v1/admin/sessions/{id}/migrate"),
    // sessions
    ("POST", "/api/v1/sessions"),
    ("GET", "/api/v1/sessions"),
    ("GET", "/api/v1/sessions/{id}"),
    ("DELETE", "/api/v1/sessions/{id}"),
    ("POST", "/api/v1/sessions/{id}/connect"),
    ("GET", "/api/v1/sessions/{id}/status"),
    ("POST", "/api/v1/sessions/{id}/restart"),
    ("POST", "/api/v1/sessions/{id}/disconnect"),
    ("POST", "/api/v1/sessions/{id}/logout"),
    ("GET", "/api/v1/sessions/{id}/events"),
    ("GET", "/api/v1/sessions/{id}/messages"),
    // webhooks
    ("POST", "/api/v1/webhooks"),
    ("GET", "/api/v1/webhooks"),
    ("GET", "/api/v1/webhooks/{id}"),
    ("PATCH", "/api/v1/webhooks/{id}"),
    ("DELETE", "/api/v1/webhooks/{id}"),
    ("POST", "/api/v1/webhooks/{id}/rotate-secret"),
    // the worker fleet (administrators)
    ("GET", "/api/v1/workers"),
    ("POST", "/api/v1/workers"),
    ("GET", "/api/v1/workers/stats"),
    ("GET", "/api/v1/workers/{id}"),
    ("PUT", "/api/v1/workers/{id}"),
    ("PATCH", "/api/v1/workers/{id}"),
    ("DELETE", "/api/v1/workers/{id}"),
    ("POST", "/api/v1/workers/{id}/test"),
    // integrators
    ("POST", "/api/v1/external/send"),
    ("POST", "/api/v1/external/send/bulk"),
    ("POST", "/api/v1/external/sendText"),
    ("POST", "/api/v1/external/sendImage"),
    ("POST", "/api/v1/external/sendFile"),
    ("POST", "/api/v1/external/sendVoice"),
    ("POST", "/api/v1/external/sendVideo"),
    ("POST", "/api/v1/external/sendLocation"),
    ("POST", "/api/v1/external/sendContactVcard"),
    ("POST", "/api/v1/external/sendLink"),
    ("POST", "/api/v1/external/sendPoll"),
    ("POST", "/api/v1/external/sendSeen"),
    ("POST", "/api/v1/external/startTyping"),
    ("POST", "/api/v1/external/stopTyping"),
    ("GET", "/api/v1/external/session/{id}/status"),
    ("GET", "/api/v1/external/messages"),
    ("GET", "/api/v1/external/messages/{messageId}"),
    // workers, at the paths the existing worker calls and under /api/v1
    ("POST", "/api/workers/register"),
    ("PUT", "/api/workers/{workerId}/heartbeat"),
    ("POST", "/api/workers/{workerId}/heartbeat"),
    ("GET", "/api/workers/{workerId}/sessions/assigned"),
    ("POST", "/api/workers/{workerId}/sessions/recovery-status"),
    ("DELETE", "/api/workers/unregister"),
    ("POST", "/api/workers/unregister"),
    ("POST", "/api/webhooks/session-status"),
    ("POST", "/api/webhooks/message-status"),
    ("POST", "/api/webhooks/message-received"),
    ("POST", "/api/webhooks/worker-heartbeat"),
    ("POST", "/api/v1/workers/register"),
    ("PUT", "/api/v1/workers/{workerId}/heartbeat"),
    ("POST", "/api/v1/workers/{workerId}/heartbeat"),
    ("GET", "/api/v1/workers/{workerId}/sessions/assigned"),
    (
        "POST",
        "/api/v1/workers/{workerId}/sessions/recovery-status",
    ),
    ("DELETE", "/api/v1/workers/unregister"),
    ("POST", "/api/v1/workers/unregister"),
    ("POST", "/api/v1/webhooks/session-status"),
    ("POST", "/api/v1/webhooks/message-status"),
    ("POST", "/api/v1/webhooks/message-received"),
    ("POST", "/api/v1/webhooks/worker-heartbeat"),
];

/// The methods [`SERVED`] has for `path` (empty: no route has this path). As in OpenAPI, a
/// literal segment wins over a parameter: `/api/v1/workers/register` is that route's path,
/// not a worker id.
pub fn methods_of(path: &str) -> Vec<&'static str> {
    // Which segments of `template` are literal, if it matches `path`.
    let literals = |template: &str| -> Option<Vec<bool>> {
        let mut given = path.split('/');
        let mut wanted = template.split('/');
        let mut literal = Vec::new();
        loop {
            match (given.next(), wanted.next()) {
                (None, None) => return Some(literal),
                (Some(segment), Some(pattern)) => {
                    let is_param = pattern.starts_with('{') && pattern.ends_with('}');
                    if segment == pattern && !is_param {
                        literal.push(true);
                    } else if is_param && !segment.is_empty() {
                        literal.push(false);
                    } else {
                        return None;
                    }
                }
                _ => return None,
            }
        }
    };
    let matching: Vec<(&'static str, Vec<bool>)> = SERVED
        .iter()
        .filter_map(|(method, template)| literals(template).map(|mask| (*method, mask)))
        .collect();
    let Some(most_specific) = matching.iter().map(|(_, mask)| mask).max().cloned() else {
        return Vec::new();
    };
    let mut methods: Vec<&'static str> = matching
        .into_iter()
        .filter(|(_, mask)| *mask == most_specific)
        .map(|(method, _)| method)
        .collect();
    methods.sort_unstable();
    methods.dedup();
    methods
}

/// What no route took: a rejection carrying the request's method and the methods its path has,
/// for [`error::recover`] (a `405` with `Allow`, or a `404`). Only reached once every route has
/// rejected, so it costs nothing on a served request.
fn unmatched() -> BoxedFilter<(Response,)> {
    warp::method()
        .and(warp::path::full())
        .and_then(
            |method: warp::http::Method, path: warp::path::FullPath| async move {
                Err::<Response, _>(warp::reject::custom(error::Unmatched {
                    method,
                    allowed: methods_of(path.as_str()),
                }))
            },
        )
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
