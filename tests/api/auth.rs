//! Every auth flow: register, login, refresh rotation and reuse detection, logout, me,
//! change-password, deactivated users, expired tokens, throttling.

use std::time::Duration;

use serde_json::json;

use crate::backend_tests;
use crate::common::{Answer, Backend, TestApp, login_from};

backend_tests!(
    register_login_and_me,
    registration_validates_input,
    wrong_password_is_401,
    refresh_rotates_and_reuse_revokes_the_family,
    logout_revokes_the_refresh_token,
    logout_everywhere_kills_access_tokens,
    deactivated_user_cannot_log_in_or_use_tokens,
    expired_and_forged_access_tokens_are_401,
    change_password_ends_other_logins,
    failed_logins_are_throttled_per_account,
    failed_logins_are_throttled_per_ip,
    concurrent_wrong_logins_reach_the_password_check_at_most_the_limit,
    concurrent_wrong_logins_from_one_address_are_bounded_per_address,
    a_stranger_cannot_lock_the_owner_out,
    guesses_from_many_addresses_slow_an_account_down_but_never_lock_it,
    registrations_are_throttled_per_address_under_concurrency,
    wrong_current_passwords_are_throttled_under_concurrency,
    failed_refreshes_are_throttled_per_address_under_concurrency,
);

async fn register_login_and_me(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let registered = app.register("Ann", "Ann@Example.com", "s3cret-pass").await;
    let login = app.login("ann@example.com", "s3cret-pass").await;
    let data = login.assert_ok(200);
    assert_eq!(data["user"]["email"], "ann@example.com");
    assert_eq!(data["user"]["role"], "USER");
    assert_eq!(data["user"]["tier"], "BASIC");
    assert_eq!(data["tokenType"], "Bearer");
    assert_eq!(data["expiresIn"], 900);
    assert!(data["user"].get("passwordHash").is_none());
    let token = data["accessToken"].as_str().unwrap();
    let me = app.get("/api/v1/auth/me", Some(token)).await;
    assert_eq!(me.assert_ok(200)["id"], registered.user_id.as_str());
    app.get("/api/v1/auth/me", None)
        .await
        .assert_error(401, "UNAUTHORIZED");
    app.get("/api/v1/auth/me", Some("not-a-token"))
        .await
        .assert_error(401, "UNAUTHORIZED");
    app.stop().await;
}

async fn registration_validates_input(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for (body, field) in [
        (
            json!({"name": "A", "email": "nope", "password": "s3cret-pass"}),
            "email",
        ),
        (
            json!({"name": "A", "email": "a@example.com", "password": "short1"}),
            "password",
        ),
        (
            json!({"name": "A", "email": "a@example.com", "password": "onlyletters"}),
            "password",
        ),
        (
            json!({"name": "  ", "email": "a@example.com", "password": "s3cret-pass"}),
            "name",
        ),
    ] {
        let answer = app.post("/api/v1/auth/register", None, body).await;
        answer.assert_error(400, "VALIDATION_ERROR");
        assert_eq!(answer.body["error"]["details"]["field"], field);
    }
    app.post(
        "/api/v1/auth/register",
        None,
        json!({"email": "a@example.com"}),
    )
    .await
    .assert_error(400, "VALIDATION_ERROR");
    app.post("/api/v1/auth/register", None, json!({"name": "A", "email": "a@example.com", "password": "s3cret-pass", "role": "ADMINISTRATOR"}))
        .await
        .assert_error(400, "VALIDATION_ERROR");
    app.register("A", "a@example.com", "s3cret-pass").await;
    app.post(
        "/api/v1/auth/register",
        None,
        json!({"name": "B", "email": "A@EXAMPLE.com", "password": "s3cret-pass"}),
    )
    .await
    .assert_error(409, "EMAIL_TAKEN");
    app.stop().await;
}

async fn wrong_password_is_401(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("Bob", "bob@example.com", "s3cret-pass").await;
    app.login("bob@example.com", "wrong-pass-1")
        .await
        .assert_error(401, "UNAUTHORIZED");
    app.login("nobody@example.com", "wrong-pass-1")
        .await
        .assert_error(401, "UNAUTHORIZED");
    app.login("not an email", "wrong-pass-1")
        .await
        .assert_error(401, "UNAUTHORIZED");
    app.stop().await;
}

async fn refresh_rotates_and_reuse_revokes_the_family(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let first = app.register("Cy", "cy@example.com", "s3cret-pass").await;
    let rotated = app
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refreshToken": first.refresh_token}),
        )
        .await;
    let second = login_from(rotated.assert_ok(200));
    assert_ne!(second.refresh_token, first.refresh_token);
    app.get("/api/v1/auth/me", Some(&second.access_token))
        .await
        .assert_ok(200);
    // Replaying the used token: refused, and the whole family (including `second`) dies.
    app.post(
        "/api/v1/auth/refresh",
        None,
        json!({"refreshToken": first.refresh_token}),
    )
    .await
    .assert_error(401, "UNAUTHORIZED");
    app.post(
        "/api/v1/auth/refresh",
        None,
        json!({"refreshToken": second.refresh_token}),
    )
    .await
    .assert_error(401, "UNAUTHORIZED");
    // Another login's family is untouched.
    let other = login_from(
        app.login("cy@example.com", "s3cret-pass")
            .await
            .assert_ok(200),
    );
    app.post(
        "/api/v1/auth/refresh",
        None,
        json!({"refreshToken": other.refresh_token}),
    )
    .await
    .assert_ok(200);
    app.post(
        "/api/v1/auth/refresh",
        None,
        json!({"refreshToken": "garbage"}),
    )
    .await
    .assert_error(401, "UNAUTHORIZED");
    app.post("/api/v1/auth/refresh", None, json!({}))
        .await
        .assert_error(400, "VALIDATION_ERROR");
    app.stop().await;
}

async fn logout_revokes_the_refresh_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let login = app.register("Di", "di@example.com", "s3cret-pass").await;
    let other = login_from(
        app.login("di@example.com", "s3cret-pass")
            .await
            .assert_ok(200),
    );
    let answer = app
        .post(
            "/api/v1/auth/logout",
            Some(&login.access_token),
            json!({"refreshToken": login.refresh_token}),
        )
        .await;
    assert_eq!(answer.assert_ok(200)["scope"], "session");
    app.post(
        "/api/v1/auth/refresh",
        None,
        json!({"refreshToken": login.refresh_token}),
    )
    .await
    .assert_error(401, "UNAUTHORIZED");
    // The other login still works.
    app.post(
        "/api/v1/auth/refresh",
        None,
        json!({"refreshToken": other.refresh_token}),
    )
    .await
    .assert_ok(200);
    // Someone else's refresh token cannot be logged out by this user.
    let eve = app.register("Eve", "eve@example.com", "s3cret-pass").await;
    app.post(
        "/api/v1/auth/logout",
        Some(&eve.access_token),
        json!({"refreshToken": other.refresh_token}),
    )
    .await
    .assert_error(401, "UNAUTHORIZED");
    app.post("/api/v1/auth/logout", None, json!({}))
        .await
        .assert_error(401, "UNAUTHORIZED");
    app.stop().await;
}

async fn logout_everywhere_kills_access_tokens(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let login = app.register("Fa", "fa@example.com", "s3cret-pass").await;
    let answer = app
        .send(
            app.client
                .post(app.url("/api/v1/auth/logout"))
                .bearer_auth(&login.access_token),
        )
        .await;
    assert_eq!(answer.assert_ok(200)["scope"], "all");
    app.get("/api/v1/auth/me", Some(&login.access_token))
        .await
        .assert_error(401, "UNAUTHORIZED");
    app.post(
        "/api/v1/auth/refresh",
        None,
        json!({"refreshToken": login.refresh_token}),
    )
    .await
    .assert_error(401, "UNAUTHORIZED");
    app.stop().await;
}

async fn deactivated_user_cannot_log_in_or_use_tokens(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().await;
    let user = app.register("Gus", "gus@example.com", "s3cret-pass").await;
    app.put(
        &format!("/api/v1/admin/users/{}", user.user_id),
        Some(&admin.access_token),
        json!({"active": false}),
    )
    .await
    .assert_ok(200);
    app.login("gus@example.com", "s3cret-pass")
        .await
        .assert_error(403, "ACCOUNT_DISABLED");
    app.get("/api/v1/auth/me", Some(&user.access_token))
        .await
        .assert_error(401, "UNAUTHORIZED");
    app.post(
        "/api/v1/auth/refresh",
        None,
        json!({"refreshToken": user.refresh_token}),
    )
    .await
    .assert_error(401, "UNAUTHORIZED");
    // A wrong password on a deactivated account says nothing about the account.
    app.login("gus@example.com", "wrong-pass-1")
        .await
        .assert_error(401, "UNAUTHORIZED");
    app.put(
        &format!("/api/v1/admin/users/{}", user.user_id),
        Some(&admin.access_token),
        json!({"active": true}),
    )
    .await
    .assert_ok(200);
    app.login("gus@example.com", "s3cret-pass")
        .await
        .assert_ok(200);
    app.stop().await;
}

async fn expired_and_forged_access_tokens_are_401(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let login = app.register("Hal", "hal@example.com", "s3cret-pass").await;
    let now_s = chrono::Utc::now().timestamp();
    let jwt = app.context.auth.jwt();
    let expired = jwt
        .issue(
            &login.user_id,
            wa_gateway::domain::Role::User,
            0,
            now_s - 901,
        )
        .unwrap();
    app.get("/api/v1/auth/me", Some(&expired))
        .await
        .assert_error(401, "UNAUTHORIZED");
    let fresh = jwt
        .issue(&login.user_id, wa_gateway::domain::Role::User, 0, now_s)
        .unwrap();
    app.get("/api/v1/auth/me", Some(&fresh))
        .await
        .assert_ok(200);
    let forged_keys = wa_gateway::auth::jwt::JwtKeys::new(
        b"not-the-server-secret-not-the-server",
        std::time::Duration::from_secs(900),
    );
    let forged = forged_keys
        .issue(
            &login.user_id,
            wa_gateway::domain::Role::Administrator,
            0,
            now_s,
        )
        .unwrap();
    app.get("/api/v1/auth/me", Some(&forged))
        .await
        .assert_error(401, "UNAUTHORIZED");
    app.stop().await;
}

async fn change_password_ends_other_logins(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let login = app.register("Ida", "ida@example.com", "s3cret-pass").await;
    app.post(
        "/api/v1/auth/change-password",
        Some(&login.access_token),
        json!({"currentPassword": "wrong-pass-1", "newPassword": "n3w-password"}),
    )
    .await
    .assert_error(401, "UNAUTHORIZED");
    app.post(
        "/api/v1/auth/change-password",
        Some(&login.access_token),
        json!({"currentPassword": "s3cret-pass", "newPassword": "weak"}),
    )
    .await
    .assert_error(400, "VALIDATION_ERROR");
    let changed = app
        .post(
            "/api/v1/auth/change-password",
            Some(&login.access_token),
            json!({"currentPassword": "s3cret-pass", "newPassword": "n3w-password"}),
        )
        .await;
    let fresh = login_from(changed.assert_ok(200));
    app.get("/api/v1/auth/me", Some(&fresh.access_token))
        .await
        .assert_ok(200);
    app.get("/api/v1/auth/me", Some(&login.access_token))
        .await
        .assert_error(401, "UNAUTHORIZED");
    app.post(
        "/api/v1/auth/refresh",
        None,
        json!({"refreshToken": login.refresh_token}),
    )
    .await
    .assert_error(401, "UNAUTHORIZED");
    app.login("ida@example.com", "s3cret-pass")
        .await
        .assert_error(401, "UNAUTHORIZED");
    app.login("ida@example.com", "n3w-password")
        .await
        .assert_ok(200);
    app.stop().await;
}

async fn failed_logins_are_throttled_per_account(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("Jo", "jo@example.com", "s3cret-pass").await;
    for _ in 0..5 {
        app.login("jo@example.com", "wrong-pass-1")
            .await
            .assert_error(401, "UNAUTHORIZED");
    }
    let throttled = app.login("jo@example.com", "s3cret-pass").await;
    throttled.assert_error(429, "LOGIN_THROTTLED");
    let retry_after: u64 = throttled.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=900).contains(&retry_after), "{retry_after}");
    // Other accounts are not affected.
    app.register("Ky", "ky@example.com", "s3cret-pass").await;
    app.login("ky@example.com", "s3cret-pass")
        .await
        .assert_ok(200);
    app.stop().await;
}

async fn failed_logins_are_throttled_per_ip(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("LOGIN_MAX_FAILURES_PER_IP", "3")]).await;
    app.register("Lu", "lu@example.com", "s3cret-pass").await;
    for n in 0..3 {
        app.login(&format!("ghost{n}@example.com"), "wrong-pass-1")
            .await
            .assert_error(401, "UNAUTHORIZED");
    }
    app.login("lu@example.com", "s3cret-pass")
        .await
        .assert_error(429, "LOGIN_THROTTLED");
    app.stop().await;
}

/// Statuses of `answers`, counted: (401s, 429s, others).
fn tally(answers: &[Answer], throttled_code: &str) -> (usize, usize, Vec<String>) {
    let mut checked = 0;
    let mut throttled = 0;
    let mut other = Vec::new();
    for answer in answers {
        match answer.status.as_u16() {
            401 => checked += 1,
            429 => {
                assert_eq!(answer.error_code(), throttled_code, "{}", answer.body);
                assert!(answer.headers.contains_key("retry-after"));
                throttled += 1;
            }
            _ => other.push(format!("{} {}", answer.status, answer.body)),
        }
    }
    (checked, throttled, other)
}

/// A login from `ip` (the gateway trusts `X-Forwarded-For` in these tests).
async fn login_from_ip(app: &TestApp, ip: &str, email: &str, password: &str) -> Answer {
    app.send(
        app.client
            .post(app.url("/api/v1/auth/login"))
            .header("x-forwarded-for", ip)
            .json(&json!({"email": email, "password": password})),
    )
    .await
}

fn retry_after(answer: &Answer) -> u64 {
    answer.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn concurrent_wrong_logins_reach_the_password_check_at_most_the_limit(backend: Backend) {
    // Five failures per account and address (the default); 30 guesses at once. A 401 is an
    // attempt that reached the password check, a 429 one refused before it.
    let app = TestApp::spawn(backend).await;
    app.register("Jo", "jo@example.com", "s3cret-pass").await;
    let guesses = (0..30).map(|n| {
        app.login(
            "jo@example.com",
            if n % 2 == 0 {
                "wrong-pass-1"
            } else {
                "wrong-pass-2"
            },
        )
    });
    let answers = futures_util::future::join_all(guesses).await;
    let (checked, throttled, other) = tally(&answers, "LOGIN_THROTTLED");
    assert!(other.is_empty(), "{other:?}");
    assert!(
        (1..=5).contains(&checked),
        "{checked} guesses reached the password check, at most 5 may"
    );
    assert_eq!(checked + throttled, 30);
    // The owner, from the same address, waits like everyone there.
    app.login("jo@example.com", "s3cret-pass")
        .await
        .assert_error(429, "LOGIN_THROTTLED");
    app.stop().await;
}

async fn concurrent_wrong_logins_from_one_address_are_bounded_per_address(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("LOGIN_MAX_FAILURES_PER_IP", "4")]).await;
    let shared = &app;
    let guesses = (0..30).map(|n| async move {
        shared
            .login(&format!("ghost{n}@example.com"), "wrong-pass-1")
            .await
    });
    let answers = futures_util::future::join_all(guesses).await;
    let (checked, throttled, other) = tally(&answers, "LOGIN_THROTTLED");
    assert!(other.is_empty(), "{other:?}");
    assert!(
        (1..=4).contains(&checked),
        "{checked} reached the check, at most 4 may"
    );
    assert_eq!(checked + throttled, 30);
    app.stop().await;
}

async fn a_stranger_cannot_lock_the_owner_out(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("TRUST_PROXY_HEADERS", "true")]).await;
    app.register("Jo", "jo@example.com", "s3cret-pass").await;
    let stranger = "203.0.113.7";
    for _ in 0..5 {
        login_from_ip(&app, stranger, "jo@example.com", "guess-pass-1")
            .await
            .assert_error(401, "UNAUTHORIZED");
    }
    let refused = login_from_ip(&app, stranger, "jo@example.com", "guess-pass-2").await;
    refused.assert_error(429, "LOGIN_THROTTLED");
    // The stranger is locked out of this account for the window; the owner is not.
    login_from_ip(&app, "198.51.100.20", "jo@example.com", "s3cret-pass")
        .await
        .assert_ok(200);
    login_from_ip(&app, stranger, "jo@example.com", "s3cret-pass")
        .await
        .assert_error(429, "LOGIN_THROTTLED");
    app.stop().await;
}

async fn guesses_from_many_addresses_slow_an_account_down_but_never_lock_it(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("TRUST_PROXY_HEADERS", "true")]).await;
    app.register("Jo", "jo@example.com", "s3cret-pass").await;
    let ip = |n: u32| format!("203.0.113.{n}");
    // Five free failures for the account, from five addresses.
    for n in 1..=5 {
        login_from_ip(&app, &ip(n), "jo@example.com", "guess-pass-1")
            .await
            .assert_error(401, "UNAUTHORIZED");
    }
    // Then one check per delay, the delay doubling: 1 s, 2 s, …
    login_from_ip(&app, &ip(6), "jo@example.com", "guess-pass-1")
        .await
        .assert_error(401, "UNAUTHORIZED");
    let waiting = login_from_ip(&app, &ip(7), "jo@example.com", "guess-pass-1").await;
    waiting.assert_error(429, "LOGIN_THROTTLED");
    assert_eq!(retry_after(&waiting), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    login_from_ip(&app, &ip(8), "jo@example.com", "guess-pass-1")
        .await
        .assert_error(401, "UNAUTHORIZED");
    let waiting = login_from_ip(&app, &ip(9), "jo@example.com", "guess-pass-1").await;
    waiting.assert_error(429, "LOGIN_THROTTLED");
    assert_eq!(retry_after(&waiting), 2);
    // The owner gets in once the delay has passed; the account's failures are then forgotten.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    login_from_ip(&app, "198.51.100.20", "jo@example.com", "s3cret-pass")
        .await
        .assert_ok(200);
    login_from_ip(&app, &ip(10), "jo@example.com", "guess-pass-1")
        .await
        .assert_error(401, "UNAUTHORIZED");
    app.stop().await;
}

async fn registrations_are_throttled_per_address_under_concurrency(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("LOGIN_MAX_FAILURES_PER_IP", "3")]).await;
    let registrations = (0..12).map(|n| {
        app.post(
            "/api/v1/auth/register",
            None,
            json!({"name": "Jo", "email": format!("jo{n}@example.com"), "password": "s3cret-pass"}),
        )
    });
    let answers = futures_util::future::join_all(registrations).await;
    let created = answers.iter().filter(|a| a.status == 201).count();
    let throttled = answers
        .iter()
        .filter(|a| a.status == 429 && a.error_code() == "REGISTRATION_THROTTLED")
        .count();
    assert_eq!((created, throttled), (3, 9), "{answers:?}");
    app.stop().await;
}

async fn wrong_current_passwords_are_throttled_under_concurrency(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let jo = app.register("Jo", "jo@example.com", "s3cret-pass").await;
    let attempts = (0..20).map(|_| {
        app.post(
            "/api/v1/auth/change-password",
            Some(&jo.access_token),
            json!({"currentPassword": "guess-pass-1", "newPassword": "n3w-pass-123"}),
        )
    });
    let answers = futures_util::future::join_all(attempts).await;
    let (checked, throttled, other) = tally(&answers, "PASSWORD_CHECK_THROTTLED");
    assert!(other.is_empty(), "{other:?}");
    assert!(
        (1..=5).contains(&checked),
        "{checked} reached the check, at most 5 may"
    );
    assert_eq!(checked + throttled, 20);
    app.stop().await;
}

async fn failed_refreshes_are_throttled_per_address_under_concurrency(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("LOGIN_MAX_FAILURES_PER_IP", "3")]).await;
    let jo = app.register("Jo", "jo@example.com", "s3cret-pass").await;
    // Successful refreshes give their slot back: more of them than the limit all pass.
    let mut refresh_token = jo.refresh_token.clone();
    for _ in 0..5 {
        let answer = app
            .post(
                "/api/v1/auth/refresh",
                None,
                json!({"refreshToken": refresh_token}),
            )
            .await;
        refresh_token = login_from(answer.assert_ok(200)).refresh_token;
    }
    let bogus = (0..20).map(|n| {
        app.post(
            "/api/v1/auth/refresh",
            None,
            json!({"refreshToken": format!("bogus{n:059}")}),
        )
    });
    let answers = futures_util::future::join_all(bogus).await;
    let (checked, throttled, other) = tally(&answers, "REFRESH_THROTTLED");
    assert!(other.is_empty(), "{other:?}");
    assert!(
        (1..=3).contains(&checked),
        "{checked} reached the store, at most 3 may"
    );
    assert_eq!(checked + throttled, 20);
    app.stop().await;
}
