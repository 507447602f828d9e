//! OpenAPI 3 generated from the handlers' annotations (`GET /api/v1/openapi.json`) and Swagger UI
//! served from files compiled into the binary (`GET /api/v1/docs`), so docs work offline.

use std::sync::Arc;

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::Uri;
use warp::reply::{Reply, Response};

use super::{admin, auth, health, sessions, users, views, workers_admin};

/// The API description; every documented handler is listed here.
#[derive(OpenApi)]
#[openapi(
    info(title = "wa-gateway", description = "Multi-tenant WhatsApp gateway API. Every answer is the envelope \
        `{success, data}` or `{success: false, error: {code, message, details}}`."),
    paths(
        auth::register, auth::login, auth::refresh, auth::logout, auth::me, auth::change_password,
        users::get_profile, users::update_profile, users::get_tier, users::get_usage,
        users::create_api_key, users::list_api_keys, users::revoke_api_key,
        admin::list_users, admin::get_user, admin::update_user,
        health::health,
        sessions::create_session, sessions::list_sessions, sessions::get_session, sessions::delete_session,
        sessions::connect_session, sessions::session_status, sessions::migrate_session,
        workers_admin::list_workers, workers_admin::get_worker, workers_admin::fleet_stats, workers_admin::add_worker,
        workers_admin::update_worker, workers_admin::delete_worker, workers_admin::test_worker,
    ),
    components(schemas(views::ErrorEnvelope, views::ErrorBody, views::UserView, views::AuthTokens, views::ApiKeyView, views::SessionView, views::WorkerView)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "auth", description = "Accounts and tokens"),
        (name = "users", description = "The caller's profile, tier and usage"),
        (name = "api-keys", description = "Integration keys"),
        (name = "admin", description = "Administrators only"),
        (name = "sessions", description = "WhatsApp sessions"),
        (name = "workers", description = "The worker fleet (administrators)"),
        (name = "health", description = "Liveness and backends"),
    )
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "apiKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

const OPENAPI_PATH: &str = "/api/v1/openapi.json";

/// The docs routes.
pub fn routes() -> BoxedFilter<(Response,)> {
    let spec = Arc::new(
        ApiDoc::openapi()
            .to_json()
            .unwrap_or_else(|_| "{}".to_owned()),
    );
    // GET /api/v1/openapi.json
    let openapi = warp::path!("api" / "v1" / "openapi.json")
        .and(warp::get())
        .map(move || {
            warp::reply::with_header(spec.as_str().to_owned(), "content-type", "application/json")
                .into_response()
        });
    let config = Arc::new(utoipa_swagger_ui::Config::from(OPENAPI_PATH));
    // GET /api/v1/docs (redirects to /api/v1/docs/) and GET /api/v1/docs/{file}
    let docs = warp::path!("api" / "v1" / "docs" / ..)
        .and(warp::get())
        .and(warp::path::full())
        .and(warp::path::tail())
        .map(move |full: warp::path::FullPath, tail: warp::path::Tail| {
            if full.as_str() == "/api/v1/docs" {
                warp::redirect::found(Uri::from_static("/api/v1/docs/")).into_response()
            } else {
                serve_swagger_file(tail.as_str(), config.clone())
            }
        });
    // GET /: where to go from here.
    let index = warp::path::end().and(warp::get()).map(|| {
        super::error::success(
            warp::http::StatusCode::OK,
            &serde_json::json!({
                "name": "wa-gateway",
                "version": env!("CARGO_PKG_VERSION"),
                "docs": "/api/v1/docs/",
                "openapi": OPENAPI_PATH,
                "health": "/health",
            }),
        )
    });
    openapi.or(docs).unify().or(index).unify().boxed()
}
fn serve_swagger_file(path: &str, config: Arc<utoipa_swagger_ui::Config<'static>>) -> Response {
    match utoipa_swagger_ui::serve(path, config) {
        Ok(Some(file)) => {
            warp::reply::with_header(file.bytes.into_owned(), "content-type", file.content_type)
                .into_response()
        }
        Ok(None) => super::error::ApiError::NotFound("documentation file").into_response(),
        Err(err) => {
            super::error::ApiError::Unexpected(anyhow::anyhow!("swagger ui: {err}")).into_response()
        }
    }
}
