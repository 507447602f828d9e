//! Webhook endpoints (issue 17): create (the secret shown once, sealed at rest), list, get,
//! patch, rotate (both secrets sign for a day), delete; tenant isolation on every route; the
//! tier limit; the SSRF guard at creation.

use serde_json::{Value, json};

use crate::backend_tests;
use crate::common::{Answer, Backend, Login, TestApp};

backend_tests!(
    endpoints_are_created_listed_changed_rotated_and_deleted,
    another_users_endpoints_are_not_found,
    the_tier_limits_the_endpoints,
    internal_and_plain_http_targets_are_refused,
    fields_are_validated_with_the_field_named,
);

const URL: &str = "https://hooks.example.com/wa";

async fn user(app: &TestApp, name: &str) -> Login {
    app.register(
        name,
        &format!("{name}-{}@example.com", uuid::Uuid::new_v4().simple()),
        "webhook-pass-1",
    )
    .await
}

/// `POST /api/v1/webhooks` as `login`.
async fn try_create(app: &TestApp, login: &Login, body: Value) -> Answer {
    app.post("/api/v1/webhooks", Some(&login.access_token), body)
        .await
}

async fn create(app: &TestApp, login: &Login, body: Value) -> Value {
    try_create(app, login, body).await.assert_ok(201).clone()
}

/// An app whose endpoints may be anywhere (no DNS here for example.com).
async fn open_app(backend: Backend) -> TestApp {
    TestApp::spawn_with(backend, &[("WEBHOOK_ALLOW_PRIVATE", "true")]).await
}

async fn endpoints_are_created_listed_changed_rotated_and_deleted(backend: Backend) {
    let app = open_app(backend).await;
    let ann = user(&app, "ann").await;
    let created = create(
        &app,
        &ann,
        json!({"url": URL, "events": ["message.delivered", "message.failed", "message.failed"],
               "description": "CRM"}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{created}");
    assert_eq!(
        created["events"],
        json!(["message.delivered", "message.failed"])
    );
    assert_eq!(created["enabled"], true);
    assert!(created["sessionIds"].is_null());

    // The secret is never shown again, and is not stored in clear.
    let listed = app.get("/api/v1/webhooks", Some(&ann.access_token)).await;
    let listed = listed.assert_ok(200).as_array().unwrap().clone();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].get("secret").is_none(), "{}", listed[0]);
    let fetched = app
        .get(&format!("/api/v1/webhooks/{id}"), Some(&ann.access_token))
        .await;
    assert!(fetched.assert_ok(200).get("secret").is_none());
    let record = app
        .context
        .store
        .webhook_for_user(&ann.user_id, &id)
        .await
        .unwrap();
    assert!(!record.secret.contains(&secret[6..]), "sealed at rest");
    let signing = app.context.webhooks.signing_secrets(&record, 0).unwrap();
    assert_eq!(signing.len(), 1);
    assert_eq!(signing[0].reveal(), secret);

    // PATCH changes only what is sent; null clears.
    let patched = app
        .patch(
            &format!("/api/v1/webhooks/{id}"),
            Some(&ann.access_token),
            json!({"description": null, "enabled": false, "events": ["*"]}),
        )
        .await;
    let patched = patched.assert_ok(200);
    assert!(patched["description"].is_null());
    assert_eq!(patched["enabled"], false);
    assert_eq!(patched["disabledReason"], "disabled by its owner");
    assert_eq!(patched["events"], json!(["*"]));
    assert_eq!(patched["url"], URL);
    let enabled = app
        .patch(
            &format!("/api/v1/webhooks/{id}"),
            Some(&ann.access_token),
            json!({"enabled": true}),
        )
        .await;
    assert_eq!(enabled.assert_ok(200)["disabledReason"], Value::Null);

    // Rotation: a new secret; the old one keeps signing beside it for a day.
    let rotated = app
        .post(
            &format!("/api/v1/webhooks/{id}/rotate-secret"),
            Some(&ann.access_token),
            json!({}),
        )
        .await;
    let rotated = rotated.assert_ok(200).clone();
    let new_secret = rotated["secret"].as_str().unwrap();
    assert!(new_secret.starts_with("whsec_") && new_secret != secret);
    assert!(rotated["previousSecretValidUntil"].is_string(), "{rotated}");
    let record = app
        .context
        .store
        .webhook_for_user(&ann.user_id, &id)
        .await
        .unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let signing = app.context.webhooks.signing_secrets(&record, now).unwrap();
    let revealed: Vec<String> = signing.iter().map(|s| s.reveal()).collect();
    assert_eq!(revealed, [new_secret.to_owned(), secret.clone()]);
    let after_a_day = now + 24 * 3600 * 1000 + 1;
    assert_eq!(
        app.context
            .webhooks
            .signing_secrets(&record, after_a_day)
            .unwrap()
            .len(),
        1
    );

    // An API key of the same user manages them too.
    let key = app
        .post(
            "/api/v1/users/api-keys",
            Some(&ann.access_token),
            json!({"name": "ops"}),
        )
        .await
        .assert_ok(201)["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let by_key = app
        .send(
            app.client
                .get(app.url(&format!("/api/v1/webhooks/{id}")))
                .header("X-API-Key", &key),
        )
        .await;
    by_key.assert_ok(200);

    app.delete(&format!("/api/v1/webhooks/{id}"), Some(&ann.access_token))
        .await
        .assert_ok(200);
    app.get(&format!("/api/v1/webhooks/{id}"), Some(&ann.access_token))
        .await
        .assert_error(404, "NOT_FOUND");
    app.stop().await;
}

async fn another_users_endpoints_are_not_found(backend: Backend) {
    let app = open_app(backend).await;
    let ann = user(&app, "ann").await;
    let bob = user(&app, "bob").await;
    let id = create(&app, &ann, json!({"url": URL, "events": ["*"]})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/v1/webhooks/{id}");
    let token = Some(bob.access_token.as_str());
    app.get(&path, token).await.assert_error(404, "NOT_FOUND");
    app.patch(&path, token, json!({"enabled": false}))
        .await
        .assert_error(404, "NOT_FOUND");
    app.post(&format!("{path}/rotate-secret"), token, json!({}))
        .await
        .assert_error(404, "NOT_FOUND");
    app.delete(&path, token)
        .await
        .assert_error(404, "NOT_FOUND");
    let listed = app.get("/api/v1/webhooks", token).await;
    assert!(listed.assert_ok(200).as_array().unwrap().is_empty());
    // Ann's endpoint is untouched.
    let still = app.get(&path, Some(&ann.access_token)).await;
    assert_eq!(still.assert_ok(200)["enabled"], true);
    // Bob cannot filter on Ann's sessions.
    app.post(
        "/api/v1/sessions",
        Some(&ann.access_token),
        json!({"name": "ann's", "sessionId": "ann-sales"}),
    )
    .await
    .assert_ok(201);
    let refused = app
        .post(
            "/api/v1/webhooks",
            token,
            json!({"url": URL, "events": ["*"], "sessionIds": ["ann-sales"]}),
        )
        .await;
    refused.assert_error(400, "VALIDATION_ERROR");
    app.stop().await;
}

async fn the_tier_limits_the_endpoints(backend: Backend) {
    let app = open_app(backend).await;
    let ann = user(&app, "ann").await; // BASIC: 2
    for _ in 0..2 {
        create(&app, &ann, json!({"url": URL, "events": ["*"]})).await;
    }
    let third = try_create(&app, &ann, json!({"url": URL, "events": ["*"]})).await;
    third.assert_error(409, "WEBHOOK_LIMIT_REACHED");
    app.stop().await;
}

async fn internal_and_plain_http_targets_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ann = user(&app, "ann").await;
    for url in [
        "http://hooks.example.com/wa",
        "https://127.0.0.1/hook",
        "https://10.1.2.3/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://localhost:8443/hook",
        "ftp://hooks.example.com/",
    ] {
        let refused = try_create(&app, &ann, json!({"url": url, "events": ["*"]})).await;
        refused.assert_error(400, "VALIDATION_ERROR");
        assert_eq!(
            refused.body["error"]["details"]["field"], "url",
            "{url}: {}",
            refused.body
        );
    }
    let listed = app.get("/api/v1/webhooks", Some(&ann.access_token)).await;
    assert!(listed.assert_ok(200).as_array().unwrap().is_empty());
    app.stop().await;
}

async fn fields_are_validated_with_the_field_named(backend: Backend) {
    let app = open_app(backend).await;
    let ann = user(&app, "ann").await;
    for (body, field) in [
        (json!({"url": URL, "events": []}), "events"),
        (
            json!({"url": URL, "events": ["message.exploded"]}),
            "events",
        ),
        (
            json!({"url": URL, "events": ["*"], "sessionIds": []}),
            "sessionIds",
        ),
        (
            json!({"url": URL, "events": ["*"], "sessionIds": ["no such"]}),
            "sessionIds",
        ),
        (
            json!({"url": URL, "events": ["*"], "description": "x".repeat(501)}),
            "description",
        ),
        (json!({"url": "not a url", "events": ["*"]}), "url"),
    ] {
        let refused = try_create(&app, &ann, body.clone()).await;
        refused.assert_error(400, "VALIDATION_ERROR");
        assert_eq!(
            refused.body["error"]["details"]["field"], field,
            "{body}: {}",
            refused.body
        );
    }
    let unknown = try_create(
        &app,
        &ann,
        json!({"url": URL, "events": ["*"], "secret": "mine"}),
    )
    .await;
    unknown.assert_error(400, "VALIDATION_ERROR");
    app.stop().await;
}
