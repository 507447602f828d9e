//! What one client can hold of the HTTP server (issue 15): slow or silent connections are
//! closed, a slow body is `408`, connections beyond the cap get `503`, the defaults hold 10,000
//! idle clients while others are served; and the headers every answer carries (`nosniff`,
//! `no-store`, no CORS until configured), `/metrics` behind `METRICS_TOKEN`.
//!
//! The server does not depend on the store, so these run on the embedded default only.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::process::{GatewayProcess, child_vars};
use crate::common::{Backend, TestApp};

fn address(app: &TestApp) -> String {
    app.base_url.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection (or `within` passes: then `None`); returns
/// what it sent.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut received = Vec::new();
    let mut buffer = [0_u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&received).into()),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_idle_keep_alive_connections_are_closed() {
    let app = TestApp::spawn_with(Backend::Sqlite, &[("HTTP_HEADER_READ_TIMEOUT_MS", "500")]).await;
    // Headers that never end.
    let mut slow = TcpStream::connect(address(&app)).await.unwrap();
    slow.write_all(b"GET /api/v1/health HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    assert!(
        read_until_closed(&mut slow, Duration::from_secs(5))
            .await
            .is_some(),
        "a connection still sending its headers after the timeout stays open"
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
    // A silent connection.
    let mut silent = TcpStream::connect(address(&app)).await.unwrap();
    assert!(
        read_until_closed(&mut silent, Duration::from_secs(5))
            .await
            .is_some(),
        "a silent connection stays open"
    );
    // Kept alive after an answer, then idle.
    let mut kept = TcpStream::connect(address(&app)).await.unwrap();
    kept.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut kept, Duration::from_secs(5))
        .await
        .expect("an idle keep-alive connection stays open");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Under the timeout, a client sending its request promptly is served.
    let served = app.get("/health", None).await;
    assert_eq!(served.status, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_in_time_is_408() {
    let app = TestApp::spawn_with(Backend::Sqlite, &[("HTTP_BODY_READ_TIMEOUT_MS", "500")]).await;
    let mut stream = TcpStream::connect(address(&app)).await.unwrap();
    stream
        .write_all(
            b"POST /api/v1/auth/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{\"email\":",
        )
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream, Duration::from_secs(5))
        .await
        .expect("a stalled body holds the connection");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("REQUEST_TIMEOUT"), "{answer}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_get_503_and_room_comes_back() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &[
            ("HTTP_MAX_CONNECTIONS", "8"),
            ("HTTP_HEADER_READ_TIMEOUT_MS", "30000"),
        ],
    )
    .await;
    // The test client's own pool may hold a connection: start from none.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(TcpStream::connect(address(&app)).await.unwrap());
    }
    // Give the accept loop time to take all eight.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(address(&app)).await.unwrap();
    let answer = read_until_closed(&mut extra, Duration::from_secs(5))
        .await
        .expect("a connection over the cap is neither served nor closed");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 2"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let envelope: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        envelope["error"]["code"], "TOO_MANY_CONNECTIONS",
        "{answer}"
    );
    // Closing held connections makes room.
    held.clear();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut stream = TcpStream::connect(address(&app)).await.unwrap();
        stream
            .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_until_closed(&mut stream, Duration::from_secs(5))
            .await
            .unwrap();
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "no room after closing: {answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}

/// With the default settings, 10,000 idle connections are held (none refused) while another
/// client is served promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_defaults_hold_ten_thousand_idle_clients() {
    const IDLE: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    // A child process: the test's 10,000 sockets and the gateway's 10,000 must not share one
    // process's open-files limit.
    let gateway = GatewayProcess::start(
        child_vars(Backend::Sqlite, &data_dir, &[]).await,
        dir.path().join("gateway.log"),
    )
    .await;
    let target = gateway.base_url().trim_start_matches("http://").to_owned();
    let started = Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(&target).await.unwrap());
    }
    let opened_in = started.elapsed();
    // Served while they are all open.
    let client = reqwest::Client::new();
    let asked = Instant::now();
    let answer = client
        .get(format!("{}/health", gateway.base_url()))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    let served_in = asked.elapsed();
    assert_eq!(answer.status(), 200);
    assert!(served_in < Duration::from_secs(1), "{served_in:?}");
    // None was refused: each is still open (a refused one would have its 503 and EOF).
    let mut refused = 0;
    for stream in &idle {
        let mut byte = [0_u8; 1];
        match stream.try_read(&mut byte) {
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            _ => refused += 1,
        }
    }
    assert_eq!(refused, 0, "of {IDLE} idle connections");
    eprintln!(
        "{IDLE} idle connections opened in {opened_in:?}; another client served in {served_in:?}"
    );
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_nosniff_and_no_store_and_cross_origin_is_off_by_default() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let registered = app
        .send(app.client.post(app.url("/api/v1/auth/register")).json(
            &serde_json::json!({"name": "Ann", "email": "ann@example.com", "password": "correct-horse-1"}),
        ))
        .await;
    registered.assert_ok(201);
    for answer in [&registered, &app.get("/api/v1/nowhere", None).await] {
        assert_eq!(answer.headers["x-content-type-options"], "nosniff");
        assert_eq!(answer.headers["cache-control"], "no-store");
    }
    // No CORS_ORIGIN: no origin is allowed to read answers, the preflight allows nothing.
    let read = app
        .send(
            app.client
                .get(app.url("/api/v1/health"))
                .header("origin", "https://evil.example.com"),
        )
        .await;
    assert!(!read.headers.contains_key("access-control-allow-origin"));
    let preflight = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/api/v1/auth/login"))
        .header("origin", "https://evil.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(
        !preflight
            .headers()
            .contains_key("access-control-allow-origin")
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_want_the_metrics_token_when_it_is_set() {
    let open = TestApp::spawn(Backend::Sqlite).await;
    let scraped = open.client.get(open.url("/metrics")).send().await.unwrap();
    assert_eq!(scraped.status(), 200);
    open.stop().await;

    let token = "metrics-token-0123456789abcdef";
    let app = TestApp::spawn_with(Backend::Sqlite, &[("METRICS_TOKEN", token)]).await;
    app.get("/metrics", None)
        .await
        .assert_error(401, "UNAUTHORIZED");
    app.get("/metrics", Some("wrong-token"))
        .await
        .assert_error(401, "UNAUTHORIZED");
    let scraped = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(scraped.status(), 200);
    assert!(scraped.text().await.unwrap().contains("wa_gateway_"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_holds_at_most_the_configured_event_streams() {
    let app = TestApp::spawn_with(Backend::Sqlite, &[("SSE_MAX_STREAMS_PER_USER", "2")]).await;
    let ann = app
        .register("Ann", "ann@example.com", "correct-horse-1")
        .await;
    let bob = app
        .register("Bob", "bob@example.com", "correct-horse-2")
        .await;
    for (user, id) in [(&ann, "ann-1"), (&bob, "bob-1")] {
        app.post(
            "/api/v1/sessions",
            Some(&user.access_token),
            serde_json::json!({"name": id, "sessionId": id}),
        )
        .await
        .assert_ok(201);
    }
    let open = |token: String, id: &'static str| {
        app.client
            .get(app.url(&format!("/api/v1/sessions/{id}/events")))
            .bearer_auth(token)
            .send()
    };
    let first = open(ann.access_token.clone(), "ann-1").await.unwrap();
    let second = open(ann.access_token.clone(), "ann-1").await.unwrap();
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let third = open(ann.access_token.clone(), "ann-1").await.unwrap();
    assert_eq!(third.status(), 429);
    assert!(third.headers().contains_key("retry-after"));
    let body: serde_json::Value = third.json().await.unwrap();
    assert_eq!(body["error"]["code"], "TOO_MANY_STREAMS", "{body}");
    // Another user is not affected.
    let bobs = open(bob.access_token.clone(), "bob-1").await.unwrap();
    assert_eq!(bobs.status(), 200);
    // A stream the client closes frees its slot.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let again = open(ann.access_token.clone(), "ann-1").await.unwrap();
        if again.status() == 200 {
            break;
        }
        assert_eq!(again.status(), 429);
        assert!(Instant::now() < deadline, "a closed stream kept its slot");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop((second, bobs));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_points_to_the_docs_and_a_401_names_its_scheme() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let index = app.get("/", None).await;
    let data = index.assert_ok(200);
    assert_eq!(data["docs"], "/api/v1/docs/");
    assert_eq!(data["openapi"], "/api/v1/openapi.json");
    let docs = app.get("/api/v1/openapi.json", None).await;
    assert_eq!(docs.status, 200);
    let refused = app.get("/api/v1/auth/me", None).await;
    refused.assert_error(401, "UNAUTHORIZED");
    assert_eq!(
        refused.headers["www-authenticate"],
        "Bearer realm=\"wa-gateway\""
    );
    app.stop().await;
}

/// A connection that never sent a byte has nothing to drain: shutdown does not wait for it
/// (it used to wait out the 10 s header timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_silent_connection() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let _silent = TcpStream::connect(address(&app)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    app.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        started.elapsed()
    );
}
