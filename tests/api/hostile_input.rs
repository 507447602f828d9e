//! Hostile text at the edge: NUL and other control characters in every string a client sends
//! (JSON bodies, query parameters, path ids, cursors) are refused with `400` naming the field,
//! on both stores: nothing of it reaches the store, nothing answers 5xx, and the gateway works
//! normally afterwards. Also: bad query parameters of the message lists are `400` (not `405`),
//! and another user's session in the message list is `404` (not `200 []`).

use base64::Engine;
use reqwest::Method;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::common::{Answer, Backend, Login, TestApp};

backend_tests!(
    control_characters_in_auth_bodies_are_400_naming_the_field,
    control_characters_in_user_and_api_key_routes_are_400_naming_the_field,
    control_characters_in_admin_routes_are_400_naming_the_field,
    control_characters_in_session_routes_are_400_naming_the_field,
    control_characters_in_sends_are_400_naming_the_field,
    control_characters_in_message_lists_and_cursors_are_400_naming_the_field,
    emails_with_hidden_characters_are_refused_at_registration,
    bad_query_parameters_are_400_naming_the_parameter,
    another_users_session_in_the_message_list_is_404,
);

/// Characters no field takes: NUL, other C0 controls, DEL, a C1 control.
const CONTROLS: [&str; 5] = ["\u{0}", "\u{1}", "\u{1b}", "\u{7f}", "\u{9b}"];
/// What one-line fields refuse besides [`CONTROLS`].
const LINE_BREAKS: [&str; 3] = ["\n", "\r", "\u{2028}"];

/// One hostile request and the field its refusal must name.
struct Case {
    method: Method,
    path: String,
    token: Option<String>,
    api_key: Option<String>,
    body: Option<Value>,
    field: &'static str,
}

impl Case {
    fn new(method: Method, path: impl Into<String>, field: &'static str) -> Self {
        Self {
            method,
            path: path.into(),
            token: None,
            api_key: None,
            body: None,
            field,
        }
    }
    fn token(mut self, login: &Login) -> Self {
        self.token = Some(login.access_token.clone());
        self
    }
    fn api_key(mut self, key: &str) -> Self {
        self.api_key = Some(key.to_owned());
        self
    }
    fn body(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }
}

/// `bad` percent-encoded for a path segment or a query value.
fn encoded(bad: &str) -> String {
    bad.bytes().map(|b| format!("%{b:02X}")).collect()
}

async fn send_case(app: &TestApp, case: &Case) -> Answer {
    let mut request = app.client.request(case.method.clone(), app.url(&case.path));
    if let Some(token) = &case.token {
        request = request.bearer_auth(token);
    }
    if let Some(key) = &case.api_key {
        request = request.header("x-api-key", key);
    }
    if let Some(body) = &case.body {
        request = request.json(body);
    }
    app.send(request).await
}

/// Sends every case and checks each is a `400` envelope naming its field.
async fn assert_all_refused(app: &TestApp, label: &str, cases: Vec<Case>) {
    assert!(!cases.is_empty());
    for case in &cases {
        let answer = send_case(app, case).await;
        let what = format!("{label}: {} {} {:?}", case.method, case.path, case.body);
        assert_eq!(answer.status.as_u16(), 400, "{what}: {}", answer.body);
        assert_eq!(
            answer.body["success"],
            json!(false),
            "{what}: {}",
            answer.body
        );
        assert_eq!(
            answer.body["error"]["details"]["field"], case.field,
            "{what}: {}",
            answer.body
        );
    }
}

/// The gateway still answers normally (PostgreSQL connections were not left broken).
async fn assert_still_healthy(app: &TestApp, login: &Login, email: &str) {
    app.get("/api/v1/users/profile", Some(&login.access_token))
        .await
        .assert_ok(200);
    app.login(email, "s3cret-pass-1").await.assert_ok(200);
}

async fn control_characters_in_auth_bodies_are_400_naming_the_field(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ann = app
        .register("Ann", "ann@example.com", "s3cret-pass-1")
        .await;
    for bad in CONTROLS.iter().chain(&LINE_BREAKS) {
        let one_line_only = LINE_BREAKS.contains(bad);
        let mut cases = vec![
            Case::new(Method::POST, "/api/v1/auth/register", "name").body(json!({
                "name": format!("A{bad}nn"), "email": "new@example.com", "password": "s3cret-pass-1"
            })),
            Case::new(Method::POST, "/api/v1/auth/register", "email").body(json!({
                "name": "Ann", "email": format!("ne{bad}w@example.com"), "password": "s3cret-pass-1"
            })),
            Case::new(Method::POST, "/api/v1/auth/register", "email").body(json!({
                "name": "Ann", "email": format!("new@example.com{bad}"), "password": "s3cret-pass-1"
            })),
            Case::new(Method::POST, "/api/v1/auth/register", "password").body(json!({
                "name": "Ann", "email": "new@example.com", "password": format!("s3cret{bad}pass")
            })),
            Case::new(Method::POST, "/api/v1/auth/login", "email").body(json!({
                "email": format!("ann@example.com{bad}"), "password": "s3cret-pass-1"
            })),
            Case::new(Method::POST, "/api/v1/auth/refresh", "refreshToken")
                .body(json!({ "refreshToken": format!("{}{bad}", ann.refresh_token) })),
            Case::new(Method::POST, "/api/v1/auth/logout", "refreshToken")
                .token(&ann)
                .body(json!({ "refreshToken": format!("x{bad}") })),
            Case::new(Method::POST, "/api/v1/auth/change-password", "newPassword")
                .token(&ann)
                .body(json!({
                    "currentPassword": "s3cret-pass-1", "newPassword": format!("n3w{bad}pass-1")
                })),
        ];
        // A presented password may hold a tab or a line break (older passwords might), never
        // any other control character.
        if !one_line_only {
            cases.push(
                Case::new(Method::POST, "/api/v1/auth/login", "password").body(json!({
                    "email": "ann@example.com", "password": format!("s3cret{bad}pass-1")
                })),
            );
            cases.push(
                Case::new(
                    Method::POST,
                    "/api/v1/auth/change-password",
                    "currentPassword",
                )
                .token(&ann)
                .body(json!({
                    "currentPassword": format!("s3cret{bad}pass-1"), "newPassword": "n3w-pass-12"
                })),
            );
        }
        assert_all_refused(&app, &format!("{bad:?}"), cases).await;
    }
    // Nothing was created, and Ann's logins were neither ended nor throttled.
    app.login("new@example.com", "s3cret-pass-1")
        .await
        .assert_error(401, "UNAUTHORIZED");
    app.post(
        "/api/v1/auth/refresh",
        None,
        json!({ "refreshToken": ann.refresh_token }),
    )
    .await
    .assert_ok(200);
    assert_still_healthy(&app, &ann, "ann@example.com").await;
    app.stop().await;
}

async fn control_characters_in_user_and_api_key_routes_are_400_naming_the_field(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ann = app
        .register("Ann", "ann@example.com", "s3cret-pass-1")
        .await;
    for bad in CONTROLS.iter().chain(&LINE_BREAKS) {
        let bad_path = encoded(bad);
        let cases = vec![
            Case::new(Method::PUT, "/api/v1/users/profile", "name")
                .token(&ann)
                .body(json!({ "name": format!("A{bad}nn") })),
            Case::new(
                Method::GET,
                format!("/api/v1/users/usage?hours=2{bad_path}"),
                "hours",
            )
            .token(&ann),
            Case::new(Method::POST, "/api/v1/users/api-keys", "name")
                .token(&ann)
                .body(json!({ "name": format!("crm{bad}") })),
            Case::new(Method::POST, "/api/v1/users/api-keys", "sessionId")
                .token(&ann)
                .body(json!({ "name": "crm", "sessionId": format!("sales{bad}") })),
            Case::new(Method::POST, "/api/v1/users/api-keys", "expiresAt")
                .token(&ann)
                .body(json!({ "name": "crm", "expiresAt": format!("2030-01-01T00:00:00Z{bad}") })),
            Case::new(
                Method::DELETE,
                format!("/api/v1/users/api-keys/key{bad_path}"),
                "id",
            )
            .token(&ann),
        ];
        assert_all_refused(&app, &format!("{bad:?}"), cases).await;
    }
    // Ids longer than any the gateway issues are refused too.
    assert_all_refused(
        &app,
        "long id",
        vec![
            Case::new(
                Method::DELETE,
                format!("/api/v1/users/api-keys/{}", "k".repeat(200)),
                "id",
            )
            .token(&ann),
        ],
    )
    .await;
    let keys = app
        .get("/api/v1/users/api-keys", Some(&ann.access_token))
        .await;
    assert_eq!(keys.assert_ok(200).as_array().unwrap().len(), 0);
    assert_still_healthy(&app, &ann, "ann@example.com").await;
    app.stop().await;
}

async fn control_characters_in_admin_routes_are_400_naming_the_field(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().await;
    let ann = app
        .register("Ann", "ann@example.com", "s3cret-pass-1")
        .await;
    for bad in CONTROLS.iter().chain(&LINE_BREAKS) {
        let bad_path = encoded(bad);
        let mut cases = vec![
            Case::new(
                Method::GET,
                format!("/api/v1/admin/users?search=ann{bad_path}"),
                "search",
            )
            .token(&admin),
            Case::new(
                Method::GET,
                format!("/api/v1/admin/users?page=1{bad_path}"),
                "page",
            )
            .token(&admin),
            Case::new(
                Method::GET,
                format!("/api/v1/admin/users?perPage={bad_path}"),
                "perPage",
            )
            .token(&admin),
            Case::new(
                Method::GET,
                format!("/api/v1/admin/users/u{bad_path}"),
                "id",
            )
            .token(&admin),
            Case::new(
                Method::PUT,
                format!("/api/v1/admin/users/u{bad_path}"),
                "id",
            )
            .token(&admin)
            .body(json!({ "name": "Ann" })),
            Case::new(
                Method::PUT,
                format!("/api/v1/admin/users/{}", ann.user_id),
                "name",
            )
            .token(&admin)
            .body(json!({ "name": format!("A{bad}nn") })),
            Case::new(
                Method::POST,
                format!("/api/v1/admin/sessions/s{bad_path}/migrate"),
                "id",
            )
            .token(&admin),
            Case::new(
                Method::POST,
                "/api/v1/admin/sessions/sales-1/migrate",
                "targetWorkerId",
            )
            .token(&admin)
            .body(json!({ "targetWorkerId": format!("w{bad}") })),
        ];
        // The fleet's admin routes.
        for (method, suffix) in [
            (Method::GET, ""),
            (Method::DELETE, ""),
            (Method::POST, "/test"),
        ] {
            cases.push(
                Case::new(method, format!("/api/v1/workers/w{bad_path}{suffix}"), "id")
                    .token(&admin),
            );
        }
        cases.push(
            Case::new(Method::PUT, format!("/api/v1/workers/w{bad_path}"), "id")
                .token(&admin)
                .body(json!({ "maxSessions": 5 })),
        );
        cases.push(
            Case::new(Method::POST, "/api/v1/workers", "workerId")
                .token(&admin)
                .body(json!({ "endpoint": "http://127.0.0.1:9", "workerId": format!("w{bad}") })),
        );
        // A description may hold line breaks, no other control character.
        if CONTROLS.contains(bad) {
            cases.push(
                Case::new(Method::PUT, "/api/v1/workers/w-1", "description")
                    .token(&admin)
                    .body(json!({ "description": format!("d{bad}") })),
            );
            cases.push(
                Case::new(Method::POST, "/api/v1/workers", "description")
                    .token(&admin)
                    .body(json!({ "endpoint": "http://127.0.0.1:9", "description": format!("d{bad}") })),
            );
        }
        assert_all_refused(&app, &format!("{bad:?}"), cases).await;
    }
    let profile = app
        .get(
            &format!("/api/v1/admin/users/{}", ann.user_id),
            Some(&admin.access_token),
        )
        .await;
    assert_eq!(profile.assert_ok(200)["name"], "Ann");
    assert_still_healthy(&app, &ann, "ann@example.com").await;
    app.stop().await;
}

async fn control_characters_in_session_routes_are_400_naming_the_field(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ann = app
        .register("Ann", "ann@example.com", "s3cret-pass-1")
        .await;
    for bad in CONTROLS.iter().chain(&LINE_BREAKS) {
        let bad_path = encoded(bad);
        let id = format!("sales{bad_path}");
        let mut cases = vec![
            Case::new(Method::POST, "/api/v1/sessions", "name")
                .token(&ann)
                .body(json!({ "name": format!("Sales{bad}") })),
            Case::new(Method::POST, "/api/v1/sessions", "sessionId")
                .token(&ann)
                .body(json!({ "name": "Sales", "sessionId": format!("sales{bad}") })),
        ];
        for (method, suffix) in [
            (Method::GET, ""),
            (Method::DELETE, ""),
            (Method::POST, "/connect"),
            (Method::GET, "/status"),
            (Method::POST, "/restart"),
            (Method::POST, "/disconnect"),
            (Method::POST, "/logout"),
            (Method::GET, "/events"),
            (Method::GET, "/messages"),
        ] {
            cases.push(
                Case::new(method, format!("/api/v1/sessions/{id}{suffix}"), "id").token(&ann),
            );
        }
        assert_all_refused(&app, &format!("{bad:?}"), cases).await;
    }
    let sessions = app.get("/api/v1/sessions", Some(&ann.access_token)).await;
    assert_eq!(sessions.assert_ok(200).as_array().unwrap().len(), 0);
    assert_still_healthy(&app, &ann, "ann@example.com").await;
    app.stop().await;
}

/// An API key of `login`'s.
async fn api_key(app: &TestApp, login: &Login) -> String {
    let created = app
        .post(
            "/api/v1/users/api-keys",
            Some(&login.access_token),
            json!({ "name": "integration" }),
        )
        .await;
    created.assert_ok(201)["key"].as_str().unwrap().to_owned()
}

async fn control_characters_in_sends_are_400_naming_the_field(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ann = app
        .register("Ann", "ann@example.com", "s3cret-pass-1")
        .await;
    // The bulk checks ownership before its items: the session must exist.
    app.post(
        "/api/v1/sessions",
        Some(&ann.access_token),
        json!({"name": "Sales", "sessionId": "sales-1"}),
    )
    .await
    .assert_ok(201);
    let key = api_key(&app, &ann).await;
    let send = |field: &'static str, body: Value| {
        Case::new(Method::POST, "/api/v1/external/send", field)
            .api_key(&key)
            .body(body)
    };
    for bad in CONTROLS {
        let base = json!({ "sessionId": "sales-1", "to": "6281234567890" });
        let with = |extra: Value| {
            let mut body = base.clone();
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            body
        };
        let bad_path = encoded(bad);
        let cases = vec![
            send(
                "sessionId",
                with(json!({ "sessionId": format!("sales{bad}"), "message": "hi" })),
            ),
            send(
                "to",
                with(json!({ "to": format!("62812345{bad}67890"), "message": "hi" })),
            ),
            send(
                "type",
                with(json!({ "type": format!("text{bad}"), "message": "hi" })),
            ),
            send(
                "message",
                with(json!({ "message": format!("hi{bad}there") })),
            ),
            send(
                "mediaUrl",
                with(
                    json!({ "type": "image", "mediaUrl": format!("https://cdn.example/a{bad}.png") }),
                ),
            ),
            send(
                "caption",
                with(json!({
                    "type": "image", "mediaUrl": "https://cdn.example/a.png", "caption": format!("c{bad}")
                })),
            ),
            send(
                "filename",
                with(json!({
                    "type": "document", "mediaUrl": "https://cdn.example/a.pdf", "filename": format!("a{bad}.pdf")
                })),
            ),
            send(
                "location",
                with(json!({
                    "type": "location", "location": {"latitude": 1.0, "longitude": 2.0, "name": format!("x{bad}")}
                })),
            ),
            send(
                "contact",
                with(json!({
                    "type": "contact", "contact": {"name": format!("Bo{bad}b"), "phone": "6281234567891"}
                })),
            ),
            send(
                "link",
                with(json!({
                    "type": "link", "link": {"url": "https://example.com", "title": format!("t{bad}")}
                })),
            ),
            send(
                "link",
                with(json!({
                    "type": "link", "link": {"url": "https://example.com", "description": format!("d{bad}")}
                })),
            ),
            send(
                "poll",
                with(json!({
                    "type": "poll", "poll": {"question": format!("q{bad}"), "options": ["a", "b"]}
                })),
            ),
            send(
                "poll",
                with(json!({
                    "type": "poll", "poll": {"question": "q", "options": ["a", format!("b{bad}")]}
                })),
            ),
            send(
                "messageId",
                with(json!({ "type": "seen", "messageId": format!("m{bad}") })),
            ),
            Case::new(Method::POST, "/api/v1/external/sendText", "message")
                .api_key(&key)
                .body(with(json!({ "message": format!("{bad}") }))),
            Case::new(Method::POST, "/api/v1/external/send/bulk", "sessionId")
                .api_key(&key)
                .body(json!({
                    "sessionId": format!("sales{bad}"),
                    "messages": [{"to": "6281234567890", "message": "hi"}]
                })),
            Case::new(
                Method::GET,
                format!("/api/v1/external/session/s{bad_path}/status"),
                "id",
            )
            .api_key(&key),
            Case::new(
                Method::GET,
                format!("/api/v1/external/messages/m{bad_path}"),
                "messageId",
            )
            .api_key(&key),
        ];
        assert_all_refused(&app, &format!("{bad:?}"), cases).await;

        // A bulk whose every item is refused is a 400 naming each item's field.
        let bulk = send_case(
            &app,
            &Case::new(Method::POST, "/api/v1/external/send/bulk", "messages")
                .api_key(&key)
                .body(json!({
                    "sessionId": "sales-1",
                    "messages": [{"to": "6281234567890", "message": format!("a{bad}")}]
                })),
        )
        .await;
        bulk.assert_error(400, "VALIDATION_ERROR");
        assert_eq!(
            bulk.body["error"]["details"]["results"][0]["error"]["field"], "message",
            "{}",
            bulk.body
        );
    }
    // Message text may hold line breaks and tabs: such a send passes validation (and then
    // meets a missing session, a 404, not a 400).
    app.send(
        app.client
            .post(app.url("/api/v1/external/send"))
            .header("x-api-key", &key)
            .json(&json!({"sessionId": "nobody-1", "to": "6281234567890", "message": "one\r\ntwo\tthree"})),
    )
    .await
    .assert_error(404, "NOT_FOUND");
    // An Idempotency-Key with a control character (a tab is all HTTP lets through).
    let answer = app
        .send(
            app.client
                .post(app.url("/api/v1/external/send"))
                .header("x-api-key", &key)
                .header("idempotency-key", "key\tone")
                .json(&json!({"sessionId": "sales-1", "to": "6281234567890", "message": "hi"})),
        )
        .await;
    answer.assert_error(400, "INVALID_IDEMPOTENCY_KEY");
    assert_eq!(answer.body["error"]["details"]["field"], "Idempotency-Key");
    assert_still_healthy(&app, &ann, "ann@example.com").await;
    app.stop().await;
}

async fn control_characters_in_message_lists_and_cursors_are_400_naming_the_field(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let ann = app
        .register("Ann", "ann@example.com", "s3cret-pass-1")
        .await;
    app.post(
        "/api/v1/sessions",
        Some(&ann.access_token),
        json!({"name": "Sales", "sessionId": "sales-1"}),
    )
    .await
    .assert_ok(201);
    let key = api_key(&app, &ann).await;
    let cursor_with = |id: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("1700000000000:{id}"))
    };
    for bad in CONTROLS {
        let q = encoded(bad);
        let hidden_in_cursor = cursor_with(&format!("m{bad}"));
        let mut cases = Vec::new();
        for list in [
            "/api/v1/external/messages?",
            "/api/v1/sessions/sales-1/messages?",
        ] {
            for (query, field) in [
                (format!("status=SENT{q}"), "status"),
                (format!("direction={q}OUTBOUND"), "direction"),
                (format!("limit=1{q}"), "limit"),
                (format!("cursor=abc{q}"), "cursor"),
                (format!("cursor={hidden_in_cursor}"), "cursor"),
                (format!("sessionId=sales{q}"), "sessionId"),
            ] {
                cases.push(Case::new(Method::GET, format!("{list}{query}"), field).token(&ann));
                if list.contains("external") {
                    cases.push(
                        Case::new(Method::GET, format!("{list}{query}"), field).api_key(&key),
                    );
                }
            }
        }
        assert_all_refused(&app, &format!("{bad:?}"), cases).await;
    }
    // A well-formed cursor still pages.
    let page = app
        .get(
            &format!(
                "/api/v1/sessions/sales-1/messages?cursor={}",
                cursor_with("m-1")
            ),
            Some(&ann.access_token),
        )
        .await;
    assert_eq!(page.assert_ok(200)["messages"], json!([]));
    assert_still_healthy(&app, &ann, "ann@example.com").await;
    app.stop().await;
}

async fn emails_with_hidden_characters_are_refused_at_registration(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for email in [
        "a\u{200B}nn@example.com",
        "ann\u{200D}@example.com",
        "ann@exam\u{FEFF}ple.com",
        "\u{202E}moc.elpmaxe@nna",
        "ann\u{2066}@example.com",
        "ann\u{AD}@example.com",
        "ann @example.com",
        "ann@exa mple.com",
    ] {
        let answer = app
            .post(
                "/api/v1/auth/register",
                None,
                json!({"name": "Ann", "email": email, "password": "s3cret-pass-1"}),
            )
            .await;
        answer.assert_error(400, "VALIDATION_ERROR");
        assert_eq!(
            answer.body["error"]["details"]["field"], "email",
            "{email:?}"
        );
    }
    app.stop().await;
}

async fn bad_query_parameters_are_400_naming_the_parameter(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().await;
    let ann = app
        .register("Ann", "ann@example.com", "s3cret-pass-1")
        .await;
    app.post(
        "/api/v1/sessions",
        Some(&ann.access_token),
        json!({"name": "Sales", "sessionId": "sales-1"}),
    )
    .await
    .assert_ok(201);
    let cases = [
        ("/api/v1/external/messages?limit=abc", "limit", &ann),
        ("/api/v1/external/messages?limit=0", "limit", &ann),
        ("/api/v1/external/messages?limit=201", "limit", &ann),
        ("/api/v1/external/messages?limit=-1", "limit", &ann),
        ("/api/v1/external/messages?status=LOST", "status", &ann),
        (
            "/api/v1/external/messages?direction=SIDEWAYS",
            "direction",
            &ann,
        ),
        (
            "/api/v1/external/messages?cursor=not-a-cursor",
            "cursor",
            &ann,
        ),
        ("/api/v1/external/messages?sessionId=a", "sessionId", &ann),
        ("/api/v1/external/messages?colour=red", "query", &ann),
        ("/api/v1/external/messages?limit=5&limit=6", "limit", &ann),
        ("/api/v1/sessions/sales-1/messages?limit=abc", "limit", &ann),
        (
            "/api/v1/sessions/sales-1/messages?colour=red",
            "query",
            &ann,
        ),
        ("/api/v1/users/usage?hours=abc", "hours", &ann),
        ("/api/v1/users/usage?hours=721", "hours", &ann),
        ("/api/v1/admin/users?page=abc", "page", &admin),
        ("/api/v1/admin/users?perPage=-3", "perPage", &admin),
    ];
    for (path, field, login) in cases {
        let answer = app.get(path, Some(&login.access_token)).await;
        answer.assert_error(400, "INVALID_QUERY");
        assert_eq!(answer.body["error"]["details"]["field"], field, "{path}");
    }
    // The good ones still work.
    for path in [
        "/api/v1/external/messages?limit=5&status=SENT&direction=OUTBOUND",
        "/api/v1/sessions/sales-1/messages?limit=200",
        "/api/v1/users/usage?hours=720",
    ] {
        app.get(path, Some(&ann.access_token)).await.assert_ok(200);
    }
    app.stop().await;
}

async fn another_users_session_in_the_message_list_is_404(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ann = app
        .register("Ann", "ann@example.com", "s3cret-pass-1")
        .await;
    let bob = app
        .register("Bob", "bob@example.com", "s3cret-pass-1")
        .await;
    app.post(
        "/api/v1/sessions",
        Some(&ann.access_token),
        json!({"name": "Sales", "sessionId": "ann-sales"}),
    )
    .await
    .assert_ok(201);
    let bob_key = api_key(&app, &bob).await;
    let path = "/api/v1/external/messages?sessionId=ann-sales";
    app.get(path, Some(&bob.access_token))
        .await
        .assert_error(404, "NOT_FOUND");
    app.send(app.client.get(app.url(path)).header("x-api-key", &bob_key))
        .await
        .assert_error(404, "NOT_FOUND");
    // A session nobody has is the same 404.
    app.get(
        "/api/v1/external/messages?sessionId=nobody-has-it",
        Some(&bob.access_token),
    )
    .await
    .assert_error(404, "NOT_FOUND");
    // Its owner sees the (empty) list.
    let own = app.get(path, Some(&ann.access_token)).await;
    assert_eq!(own.assert_ok(200)["messages"], json!([]));
    app.stop().await;
}
