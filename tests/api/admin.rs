//! `/api/v1/admin/users`: administrators only; paging, search, updates.

use serde_json::json;

use crate::backend_tests;
use crate::common::{Backend, TestApp};

backend_tests!(
    users_get_403_on_admin_routes,
    admin_lists_searches_and_pages,
    admin_gets_and_updates_users
);

async fn users_get_403_on_admin_routes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let user = app.register("Ann", "ann@example.com", "s3cret-pass").await;
    let token = Some(user.access_token.as_str());
    app.get("/api/v1/admin/users", token)
        .await
        .assert_error(403, "FORBIDDEN");
    app.get(&format!("/api/v1/admin/users/{}", user.user_id), token)
        .await
        .assert_error(403, "FORBIDDEN");
    app.put(
        &format!("/api/v1/admin/users/{}", user.user_id),
        token,
        json!({"tier": "MAX"}),
    )
    .await
    .assert_error(403, "FORBIDDEN");
    app.get("/api/v1/admin/users", None)
        .await
        .assert_error(401, "UNAUTHORIZED");
    app.stop().await;
}

async fn admin_lists_searches_and_pages(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().await;
    let token = Some(admin.access_token.as_str());
    for n in 0..5 {
        app.register(
            &format!("Member {n}"),
            &format!("member{n}@corp.example"),
            "s3cret-pass",
        )
        .await;
    }
    app.register("Percent", "100%_sure@other.example", "s3cret-pass")
        .await;
    let all = app.get("/api/v1/admin/users?perPage=100", token).await;
    assert_eq!(all.assert_ok(200)["total"], 7);
    let page = app.get("/api/v1/admin/users?page=2&perPage=2", token).await;
    let data = page.assert_ok(200);
    assert_eq!(data["items"].as_array().unwrap().len(), 2);
    assert_eq!(data["page"], 2);
    let search = app
        .get("/api/v1/admin/users?search=CORP.example", token)
        .await;
    assert_eq!(search.assert_ok(200)["total"], 5);
    // LIKE wildcards in the search are literal.
    let literal = app.get("/api/v1/admin/users?search=100%25_", token).await;
    assert_eq!(literal.assert_ok(200)["total"], 1);
    let none = app
        .get("/api/v1/admin/users?search=%25%25nobody", token)
        .await;
    assert_eq!(none.assert_ok(200)["total"], 0);
    app.get("/api/v1/admin/users?page=abc", token)
        .await
        .assert_error(400, "INVALID_QUERY");
    app.stop().await;
}

async fn admin_gets_and_updates_users(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().await;
    let token = Some(admin.access_token.as_str());
    let user = app.register("Ann", "ann@example.com", "s3cret-pass").await;
    let path = format!("/api/v1/admin/users/{}", user.user_id);
    assert_eq!(
        app.get(&path, token).await.assert_ok(200)["email"],
        "ann@example.com"
    );
    let updated = app
        .put(
            &path,
            token,
            json!({"tier": "PRO", "role": "ADMINISTRATOR"}),
        )
        .await;
    let data = updated.assert_ok(200);
    assert_eq!(data["tier"], "PRO");
    assert_eq!(data["role"], "ADMINISTRATOR");
    app.put(&path, token, json!({"tier": "GOLD"}))
        .await
        .assert_error(400, "VALIDATION_ERROR");
    app.get("/api/v1/admin/users/does-not-exist", token)
        .await
        .assert_error(404, "NOT_FOUND");
    app.put(
        "/api/v1/admin/users/does-not-exist",
        token,
        json!({"tier": "PRO"}),
    )
    .await
    .assert_error(404, "NOT_FOUND");
    app.put(
        &format!("/api/v1/admin/users/{}", admin.user_id),
        token,
        json!({"active": false}),
    )
    .await
    .assert_error(409, "SELF_LOCKOUT");
    // The promoted user's tier shows in their own view.
    let tier = app
        .get("/api/v1/users/tier", Some(&user.access_token))
        .await;
    let tier = tier.assert_ok(200);
    assert_eq!(tier["tier"], "PRO");
    assert_eq!(tier["limits"]["messagesPerHour"], 1000);
    app.stop().await;
}
