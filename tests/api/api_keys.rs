//! API keys: create (shown once), list (no secrets), use in both headers, revoke, expiry,
//! isolation, batched last_used.

use serde_json::json;

use crate::backend_tests;
use crate::common::{Backend, TestApp};

backend_tests!(
    create_list_use_and_revoke,
    expired_key_is_401,
    keys_are_isolated_between_users,
    api_keys_cannot_manage_the_account,
    key_creation_validates_input,
    last_used_is_recorded_in_batches,
    the_creation_answer_names_each_field_once,
);

async fn create_list_use_and_revoke(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let login = app.register("Ann", "ann@example.com", "s3cret-pass").await;
    let created = app
        .post(
            "/api/v1/users/api-keys",
            Some(&login.access_token),
            json!({"name": "crm"}),
        )
        .await;
    let data = created.assert_ok(201);
    let key = data["key"].as_str().unwrap().to_owned();
    let id = data["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("wg_"));
    assert!(key.len() >= 35);
    assert!(key[3..].bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(data["status"], "ACTIVE");

    let list = app
        .get("/api/v1/users/api-keys", Some(&login.access_token))
        .await;
    let keys = list.assert_ok(200).as_array().unwrap().clone();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["id"], id.as_str());
    assert!(keys[0].get("key").is_none());
    assert!(
        !list.body.to_string().contains(&key),
        "the secret must never be listed"
    );

    // Both header forms authenticate.
    let via_header = app
        .send(
            app.client
                .get(app.url("/api/v1/users/profile"))
                .header("x-api-key", &key),
        )
        .await;
    assert_eq!(via_header.assert_ok(200)["email"], "ann@example.com");
    app.get("/api/v1/users/profile", Some(&key))
        .await
        .assert_ok(200);
    // Two credentials are one too many, whichever is valid: an invalid one never passes
    // unnoticed beside a valid one.
    for (x_api_key, bearer) in [
        (key.as_str(), "garbage"),
        (
            "wg_doesnotexistdoesnotexistdoesnotexist",
            login.access_token.as_str(),
        ),
        (key.as_str(), login.access_token.as_str()),
    ] {
        app.send(
            app.client
                .get(app.url("/api/v1/users/profile"))
                .header("x-api-key", x_api_key)
                .bearer_auth(bearer),
        )
        .await
        .assert_error(401, "UNAUTHORIZED");
    }
    // The same key in both headers is one credential.
    app.send(
        app.client
            .get(app.url("/api/v1/users/profile"))
            .header("x-api-key", &key)
            .bearer_auth(&key),
    )
    .await
    .assert_ok(200);

    let revoked = app
        .delete(
            &format!("/api/v1/users/api-keys/{id}"),
            Some(&login.access_token),
        )
        .await;
    assert_eq!(revoked.assert_ok(200)["status"], "REVOKED");
    app.send(
        app.client
            .get(app.url("/api/v1/users/profile"))
            .header("x-api-key", &key),
    )
    .await
    .assert_error(401, "UNAUTHORIZED");
    app.get("/api/v1/users/profile", Some(&key))
        .await
        .assert_error(401, "UNAUTHORIZED");
    app.delete(
        &format!("/api/v1/users/api-keys/{id}"),
        Some(&login.access_token),
    )
    .await
    .assert_error(404, "NOT_FOUND");
    app.send(
        app.client
            .get(app.url("/api/v1/users/profile"))
            .header("x-api-key", "wg_doesnotexistdoesnotexistdoesnotexist"),
    )
    .await
    .assert_error(401, "UNAUTHORIZED");
    app.stop().await;
}

async fn expired_key_is_401(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let login = app.register("Ann", "ann@example.com", "s3cret-pass").await;
    // Verified keys are cached for a moment, so expiry must be judged by the clock on every
    // request, not by a fresh read of the row: let a short-lived key run out while cached.
    let soon = chrono::Utc::now() + chrono::Duration::milliseconds(2500);
    let created = app
        .post(
            "/api/v1/users/api-keys",
            Some(&login.access_token),
            json!({"name": "temp", "expiresAt": soon.to_rfc3339()}),
        )
        .await;
    let data = created.assert_ok(201).clone();
    let key = data["key"].as_str().unwrap();
    app.get("/api/v1/users/profile", Some(key))
        .await
        .assert_ok(200);
    let left = (soon - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left + std::time::Duration::from_millis(50)).await;
    app.get("/api/v1/users/profile", Some(key))
        .await
        .assert_error(401, "UNAUTHORIZED");
    let list = app
        .get("/api/v1/users/api-keys", Some(&login.access_token))
        .await;
    assert_eq!(list.assert_ok(200)[0]["status"], "EXPIRED");
    app.stop().await;
}

async fn keys_are_isolated_between_users(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ann = app.register("Ann", "ann@example.com", "s3cret-pass").await;
    let bob = app.register("Bob", "bob@example.com", "s3cret-pass").await;
    let created = app
        .post(
            "/api/v1/users/api-keys",
            Some(&ann.access_token),
            json!({"name": "ann's"}),
        )
        .await;
    let data = created.assert_ok(201).clone();
    let id = data["id"].as_str().unwrap();
    app.delete(
        &format!("/api/v1/users/api-keys/{id}"),
        Some(&bob.access_token),
    )
    .await
    .assert_error(404, "NOT_FOUND");
    let bobs = app
        .get("/api/v1/users/api-keys", Some(&bob.access_token))
        .await;
    assert_eq!(bobs.assert_ok(200).as_array().unwrap().len(), 0);
    // Still usable by Ann: Bob's attempt changed nothing.
    let key = data["key"].as_str().unwrap();
    assert_eq!(
        app.get("/api/v1/users/profile", Some(key))
            .await
            .assert_ok(200)["email"],
        "ann@example.com"
    );
    app.stop().await;
}

async fn api_keys_cannot_manage_the_account(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let login = app.register("Ann", "ann@example.com", "s3cret-pass").await;
    let created = app
        .post(
            "/api/v1/users/api-keys",
            Some(&login.access_token),
            json!({"name": "crm"}),
        )
        .await;
    let key = created.assert_ok(201)["key"].as_str().unwrap().to_owned();
    app.post(
        "/api/v1/users/api-keys",
        Some(&key),
        json!({"name": "more"}),
    )
    .await
    .assert_error(403, "ACCESS_TOKEN_REQUIRED");
    app.post(
        "/api/v1/auth/change-password",
        Some(&key),
        json!({"currentPassword": "s3cret-pass", "newPassword": "n3w-password"}),
    )
    .await
    .assert_error(403, "ACCESS_TOKEN_REQUIRED");
    app.stop().await;
}

async fn key_creation_validates_input(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let login = app.register("Ann", "ann@example.com", "s3cret-pass").await;
    let token = Some(login.access_token.as_str());
    for (body, field) in [
        (json!({"name": ""}), "name"),
        (json!({"name": "x", "expiresAt": "tomorrow"}), "expiresAt"),
        (
            json!({"name": "x", "expiresAt": "2001-01-01T00:00:00Z"}),
            "expiresAt",
        ),
        (json!({"name": "x", "sessionId": "bad id!"}), "sessionId"),
    ] {
        let answer = app.post("/api/v1/users/api-keys", token, body).await;
        answer.assert_error(400, "VALIDATION_ERROR");
        assert_eq!(answer.body["error"]["details"]["field"], field);
    }
    app.post(
        "/api/v1/users/api-keys",
        token,
        json!({"name": "x", "sessionId": "not-my-session"}),
    )
    .await
    .assert_error(404, "NOT_FOUND");
    app.stop().await;
}

async fn last_used_is_recorded_in_batches(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let login = app.register("Ann", "ann@example.com", "s3cret-pass").await;
    let created = app
        .post(
            "/api/v1/users/api-keys",
            Some(&login.access_token),
            json!({"name": "crm"}),
        )
        .await;
    let key = created.assert_ok(201)["key"].as_str().unwrap().to_owned();
    for _ in 0..5 {
        app.get("/api/v1/users/profile", Some(&key))
            .await
            .assert_ok(200);
    }
    // Not written per request...
    let before = app
        .get("/api/v1/users/api-keys", Some(&login.access_token))
        .await;
    assert!(before.assert_ok(200)[0]["lastUsedAt"].is_null());
    // ...but on the next flush.
    app.context.flush_batches().await;
    let after = app
        .get("/api/v1/users/api-keys", Some(&login.access_token))
        .await;
    assert!(after.assert_ok(200)[0]["lastUsedAt"].is_string());
    app.stop().await;
}

async fn the_creation_answer_names_each_field_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let login = app.register("Ann", "ann@example.com", "s3cret-pass").await;
    // Read as text: a JSON parser would silently keep one of two equal keys.
    let response = app
        .client
        .post(app.url("/api/v1/users/api-keys"))
        .bearer_auth(&login.access_token)
        .json(&json!({"name": "crm"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let text = response.text().await.unwrap();
    for key in [
        "\"id\"",
        "\"key\"",
        "\"name\"",
        "\"status\"",
        "\"createdAt\"",
    ] {
        assert_eq!(text.matches(key).count(), 1, "{key} in {text}");
    }
    app.stop().await;
}
