//! The HTTP contract: envelope on every answer (404, 405, bad JSON, oversized bodies), request ids,
//! CORS, health (and 503), metrics, OpenAPI and Swagger UI, the API call quota.

use serde_json::json;

use crate::backend_tests;
use crate::common::{Backend, TestApp};

backend_tests!(
    unknown_routes_and_methods_get_the_envelope,
    bad_bodies_are_4xx_never_500,
    request_ids_are_echoed_or_generated,
    cors_follows_cors_origin,
    health_reports_backends_and_503_without_store,
    metrics_openapi_and_docs_are_served,
    api_call_quota_is_enforced,
);

async fn unknown_routes_and_methods_get_the_envelope(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.get("/api/v1/nothing-here", None)
        .await
        .assert_error(404, "NOT_FOUND");
    app.get("/nothing-here", None)
        .await
        .assert_error(404, "NOT_FOUND");
    let answer = app.delete("/api/v1/auth/login", None).await;
    answer.assert_error(405, "METHOD_NOT_ALLOWED");
    assert_eq!(answer.headers["allow"], "POST");
    let answer = app.put("/api/v1/health", None, json!({})).await;
    answer.assert_error(405, "METHOD_NOT_ALLOWED");
    assert_eq!(answer.headers["allow"], "GET");
    // A literal segment is its own route, not an id of the route beside it.
    let answer = app.get("/api/v1/workers/register", None).await;
    answer.assert_error(405, "METHOD_NOT_ALLOWED");
    assert_eq!(answer.headers["allow"], "POST");
    let answer = app.delete("/api/v1/workers/stats", None).await;
    answer.assert_error(405, "METHOD_NOT_ALLOWED");
    assert_eq!(answer.headers["allow"], "GET");
    let answer = app.delete("/api/v1/sessions/abc", None).await;
    answer.assert_error(401, "UNAUTHORIZED");
    // ...so no worker may take such a word as its id.
    let token = app.context.config.worker_auth_token.expose().clone();
    let answer = app
        .post(
            "/api/workers/register",
            Some(&token),
            json!({"workerId": "stats", "endpoint": "http://127.0.0.1:9"}),
        )
        .await;
    answer.assert_error(400, "VALIDATION_ERROR");
    assert_eq!(answer.body["error"]["details"]["field"], "workerId");
    app.stop().await;
}

async fn bad_bodies_are_4xx_never_500(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let register = app.url("/api/v1/auth/register");
    let send_raw = |body: &'static str, content_type: &'static str| {
        app.client
            .post(&register)
            .header("content-type", content_type)
            .body(body)
    };
    app.send(send_raw("{\"name\": ", "application/json"))
        .await
        .assert_error(400, "INVALID_JSON");
    app.send(send_raw("", "application/json"))
        .await
        .assert_error(400, "INVALID_JSON");
    app.send(send_raw("[1,2,3]", "application/json"))
        .await
        .assert_error(400, "VALIDATION_ERROR");
    // A field of the wrong type is named.
    let answer = app
        .send(send_raw(
            "{\"name\": 5, \"email\": \"a@b.co\", \"password\": \"x\"}",
            "application/json",
        ))
        .await;
    answer.assert_error(400, "VALIDATION_ERROR");
    assert_eq!(answer.body["error"]["details"]["field"], "name");
    app.send(send_raw("name=a", "application/x-www-form-urlencoded"))
        .await
        .assert_error(415, "UNSUPPORTED_MEDIA_TYPE");
    // Over the 1 MiB default, declared up front...
    let big = format!("{{\"name\": \"{}\"}}", "a".repeat(1024 * 1024 + 10));
    let answer = app
        .send(
            app.client
                .post(&register)
                .header("content-type", "application/json")
                .body(big.clone()),
        )
        .await;
    answer.assert_error(413, "PAYLOAD_TOO_LARGE");
    // ...and streamed without a length (chunked).
    let stream = futures_util::stream::iter(
        big.into_bytes()
            .chunks(64 * 1024)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let answer = app
        .send(
            app.client
                .post(&register)
                .header("content-type", "application/json")
                .body(reqwest::Body::wrap_stream(stream)),
        )
        .await;
    answer.assert_error(413, "PAYLOAD_TOO_LARGE");
    // A smaller configured limit applies.
    app.stop().await;
    let small = TestApp::spawn_with(backend, &[("MAX_BODY_BYTES", "64")]).await;
    small
        .post(
            "/api/v1/auth/register",
            None,
            json!({"name": "x".repeat(100), "email": "a@b.co", "password": "p4ssword"}),
        )
        .await
        .assert_error(413, "PAYLOAD_TOO_LARGE");
    small.stop().await;
}

async fn request_ids_are_echoed_or_generated(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let echoed = app
        .send(
            app.client
                .get(app.url("/api/v1/health"))
                .header("x-request-id", "trace-abc-123"),
        )
        .await;
    assert_eq!(echoed.headers["x-request-id"], "trace-abc-123");
    let generated = app.get("/api/v1/nothing", None).await;
    let id = generated.headers["x-request-id"].to_str().unwrap();
    assert!(id.len() >= 16, "{id}");
    let other = app.get("/api/v1/nothing", None).await;
    assert_ne!(other.headers["x-request-id"], id);
    // Unprintable or huge ids are replaced, not echoed.
    let replaced = app
        .send(
            app.client
                .get(app.url("/api/v1/health"))
                .header("x-request-id", "x".repeat(500)),
        )
        .await;
    assert_ne!(
        replaced.headers["x-request-id"].to_str().unwrap(),
        "x".repeat(500)
    );
    app.stop().await;
}

async fn cors_follows_cors_origin(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("CORS_ORIGIN", "https://dash.example.com")]).await;
    let preflight = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/api/v1/auth/login"))
        .header("origin", "https://dash.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://dash.example.com"
    );
    let allowed = app
        .send(
            app.client
                .get(app.url("/api/v1/health"))
                .header("origin", "https://dash.example.com"),
        )
        .await;
    assert_eq!(
        allowed.headers["access-control-allow-origin"],
        "https://dash.example.com"
    );
    let refused = app
        .send(
            app.client
                .request(reqwest::Method::OPTIONS, app.url("/api/v1/auth/login"))
                .header("origin", "https://evil.example.com")
                .header("access-control-request-method", "POST"),
        )
        .await;
    refused.assert_error(403, "CORS_FORBIDDEN");
    app.stop().await;
}

async fn health_reports_backends_and_503_without_store(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for path in ["/api/v1/health", "/health"] {
        let answer = app.get(path, None).await;
        let data = answer.assert_ok(200);
        assert_eq!(data["status"], "ok");
        assert_eq!(data["version"], env!("CARGO_PKG_VERSION"));
        assert!(data["uptimeSeconds"].is_u64());
        let expected = match backend {
            Backend::Sqlite => ("sqlite", "in-process"),
            Backend::Postgres | Backend::Kafka => ("postgres", "redis"),
        };
        assert_eq!(data["backends"]["store"]["backend"], expected.0);
        assert_eq!(data["backends"]["store"]["status"], "up");
        assert_eq!(data["backends"]["cache"]["backend"], expected.1);
    }
    app.context.store.close().await;
    let down = app.get("/api/v1/health", None).await;
    assert_eq!(down.status.as_u16(), 503);
    assert_eq!(down.body["success"], false);
    assert_eq!(down.body["data"]["status"], "unavailable");
    assert_eq!(down.body["data"]["backends"]["store"]["status"], "down");
    assert_eq!(down.error_code(), "STORE_UNAVAILABLE");
}

async fn metrics_openapi_and_docs_are_served(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.get("/api/v1/health", None).await.assert_ok(200);
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains("wa_gateway_http_requests_total{method=\"GET\",status=\"2xx\"}"),
        "{text}"
    );
    let spec = app
        .client
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(spec.status(), 200);
    let spec: serde_json::Value = spec.json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/auth/login",
        "/api/v1/users/api-keys",
        "/api/v1/admin/users",
        "/api/v1/health",
    ] {
        assert!(spec["paths"][path].is_object(), "missing {path}");
    }
    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(app.url("/api/v1/docs"))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 302);
    let page = app
        .client
        .get(app.url("/api/v1/docs/"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("swagger-ui"));
    let init = app
        .client
        .get(app.url("/api/v1/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap();
    assert!(init.text().await.unwrap().contains("/api/v1/openapi.json"));
    app.stop().await;
}

async fn api_call_quota_is_enforced(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("BASIC_TIER_MAX_API_CALLS_PER_HOUR", "3")]).await;
    let login = app.register("Ann", "ann@example.com", "s3cret-pass").await;
    for _ in 0..3 {
        app.get("/api/v1/users/profile", Some(&login.access_token))
            .await
            .assert_ok(200);
    }
    let refused = app
        .get("/api/v1/users/profile", Some(&login.access_token))
        .await;
    refused.assert_error(429, "API_CALL_QUOTA_EXCEEDED");
    assert!(refused.headers.contains_key("retry-after"));
    app.context.flush_batches().await;
    let rows = app
        .context
        .store
        .usage_since(&login.user_id, 0)
        .await
        .unwrap();
    assert_eq!(rows.iter().map(|r| r.api_calls).sum::<i64>(), 3);
    app.stop().await;
}
