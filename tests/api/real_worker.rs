//! The existing worker's awkward parts (WORKER_PROTOCOL.md, "What the existing worker really
//! does"), each against a simulator in its real-worker mode: a send while the worker's session
//! is not connected (`400 SESSION_NOT_CONNECTED`) waits and is delivered, a worker's validation
//! refusal reaches the message with its field and message, and a `429` storm on session starts
//! ends with every session running on its worker.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wa_gateway::domain::{PhoneJid, SessionId};
use wa_gateway::send::{MessageIds, MessageKind, ValidatedSend};
use wa_gateway::sim::{Quirks, RateLimit, RateLimits, SessionStatus, SimWorker, SimWorkerConfig};

use crate::backend_tests;
use crate::common::{
    Backend, Login, PIPELINE_ENV, TestApp, metrics_text, start_registered_sim, wait_for,
};

backend_tests!(
    a_send_while_the_workers_session_is_not_connected_waits_and_is_delivered,
    a_worker_validation_refusal_shows_its_field_and_message,
    a_429_storm_on_session_starts_ends_with_every_session_running,
    a_killed_worker_is_offline_long_before_its_heartbeat_timeout,
    probes_never_stand_in_for_heartbeats,
    a_start_that_fails_is_started_again_by_itself,
    a_restarted_worker_runs_its_sessions_again,
    a_session_a_worker_runs_without_owning_it_is_stopped_there,
);

/// The pipeline's settings, with a short reconciliation bound.
async fn app(backend: Backend) -> TestApp {
    app_with(backend, &[]).await
}

/// [`app`] with some settings replaced.
async fn app_with(backend: Backend, replaced: &[(&'static str, &'static str)]) -> TestApp {
    let mut env = PIPELINE_ENV.to_vec();
    env.push(("SESSION_RECONCILE_AFTER_MS", "500"));
    env.retain(|(name, _)| !replaced.iter().any(|(other, _)| other == name));
    env.extend_from_slice(replaced);
    TestApp::spawn_with(backend, &env).await
}

/// A simulator of the existing worker (every quirk on), registered; `tweak` adjusts it.
async fn real_worker(
    app: &TestApp,
    id: &str,
    tweak: impl FnOnce(&mut SimWorkerConfig),
) -> SimWorker {
    let mut config = SimWorkerConfig::new(
        app.base_url.clone(),
        id,
        app.context.config.worker_auth_token.expose().clone(),
    );
    config.quirks = Quirks::real();
    config.heartbeat_interval = Duration::from_millis(300);
    config.auto_connect = Duration::from_millis(50);
    config.register_retry_interval = Duration::from_millis(200);
    tweak(&mut config);
    start_registered_sim(app, config).await
}

async fn customer(app: &TestApp) -> (Login, String) {
    let login = app
        .register(
            "Customer",
            &format!("c{}@example.com", uuid::Uuid::new_v4().simple()),
            "customer-pass-1",
        )
        .await;
    let key = app
        .post(
            "/api/v1/users/api-keys",
            Some(&login.access_token),
            json!({"name": "real-worker"}),
        )
        .await
        .assert_ok(201)["key"]
        .as_str()
        .unwrap()
        .to_owned();
    (login, key)
}

async fn create_session(app: &TestApp, login: &Login, id: &str) {
    app.post(
        "/api/v1/sessions",
        Some(&login.access_token),
        json!({"name": id, "sessionId": id}),
    )
    .await
    .assert_ok(201);
}

/// Creates session `id`, connects it (`200`) and waits until it is CONNECTED.
async fn connected_session(app: &TestApp, login: &Login, id: &str) {
    connect(app, login, id).await.assert_ok(200);
    wait_for(Duration::from_secs(10), "CONNECTED", || async {
        session(app, login, id).await["status"] == "CONNECTED"
    })
    .await;
}

/// Creates session `id` and asks to connect it.
async fn connect(app: &TestApp, login: &Login, id: &str) -> crate::common::Answer {
    create_session(app, login, id).await;
    app.post(
        &format!("/api/v1/sessions/{id}/connect"),
        Some(&login.access_token),
        json!({}),
    )
    .await
}

async fn session(app: &TestApp, login: &Login, id: &str) -> Value {
    app.get(&format!("/api/v1/sessions/{id}"), Some(&login.access_token))
        .await
        .assert_ok(200)
        .clone()
}

/// Delivery attempts that ended in a retry, from `/metrics`.
async fn retried(app: &TestApp) -> u64 {
    let text = metrics_text(app).await;
    text.lines()
        .find(|line| {
            line.contains("delivery_outcomes_total") && line.contains("outcome=\"retried\"")
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse::<f64>().ok())
        .map_or(0, |value| value as u64)
}

/// The message as `GET /api/v1/external/messages/{id}` shows it; `null` until its row exists
/// (it is written as the log is read, just after the `202`).
async fn message(app: &TestApp, key: &str, id: &str) -> Value {
    let answer = app
        .send(
            app.client
                .get(app.url(&format!("/api/v1/external/messages/{id}")))
                .header("X-API-Key", key),
        )
        .await;
    if answer.status.as_u16() == 404 {
        return Value::Null;
    }
    let data = answer.assert_ok(200);
    data.get("message").cloned().unwrap_or_else(|| data.clone())
}

/// The worker answers `400 SESSION_NOT_CONNECTED` while its session is not connected (here:
/// waiting for its QR to be scanned, while the gateway was told CONNECTED). The message waits,
/// PENDING, and is delivered once the session is connected: never FAILED for it.
async fn a_send_while_the_workers_session_is_not_connected_waits_and_is_delivered(
    backend: Backend,
) {
    // Heartbeats every 30 s, as the existing worker's, within a 60 s timeout: until the next
    // one, the gateway goes by the callbacks.
    let app = app_with(backend, &[("WORKER_HEARTBEAT_TIMEOUT_MS", "60000")]).await;
    let (login, key) = customer(&app).await;
    // No scan for a minute: the worker's session stays QR_REQUIRED until the test scans it.
    let worker = real_worker(&app, "w-real-1", |config| {
        config.auto_connect = Duration::from_secs(60);
        config.heartbeat_interval = Duration::from_secs(30);
    })
    .await;
    connect(&app, &login, "waits-1").await.assert_ok(200);
    wait_for(Duration::from_secs(10), "the QR", || async {
        session(&app, &login, "waits-1").await["status"] == "QR_REQUIRED"
    })
    .await;
    // The gateway believes the session connected (a report the worker's state does not match:
    // what a reconnect looks like from here).
    let token = app.context.config.worker_auth_token.expose().clone();
    app.send(
        app.client
            .post(app.url("/api/webhooks/session-status"))
            .bearer_auth(&token)
            .json(&json!({"sessionId": "waits-1", "status": "CONNECTED", "workerId": "w-real-1"})),
    )
    .await
    .assert_ok(200);
    let sent = app
        .send(
            app.client
                .post(app.url("/api/v1/external/send"))
                .header("X-API-Key", &key)
                .json(
                    &json!({"sessionId": "waits-1", "to": "6281234567890", "message": "hold on"}),
                ),
        )
        .await;
    let message_id = sent.assert_ok(202)["messageId"]
        .as_str()
        .unwrap()
        .to_owned();
    // The worker refused it with 400 SESSION_NOT_CONNECTED, again and again (the gateway's
    // session is CONNECTED, so nothing else makes delivery retry)...
    wait_for(Duration::from_secs(10), "retries at the worker", || async {
        retried(&app).await >= 2
    })
    .await;
    // ...and the message says why it waits, how often it was tried and when it is next.
    let waiting = message(&app, &key, &message_id).await;
    assert_eq!(waiting["status"], "PENDING", "{waiting}");
    wait_for(Duration::from_secs(10), "its waiting reason", || async {
        let now = message(&app, &key, &message_id).await;
        now["waitingReason"] == "SESSION_RECONNECTING" && now["attempts"].as_i64() >= Some(1)
    })
    .await;
    let waiting = message(&app, &key, &message_id).await;
    let detail = waiting["waitingDetail"].as_str().unwrap_or_default();
    assert!(detail.contains("SESSION_NOT_CONNECTED"), "{waiting}");
    assert!(waiting["nextAttemptAt"].is_string(), "{waiting}");
    // A second message, not tried yet, waits behind it, for the same reason.
    let behind = app
        .send(
            app.client
                .post(app.url("/api/v1/external/send"))
                .header("X-API-Key", &key)
                .json(&json!({"sessionId": "waits-1", "to": "6281234567890", "message": "me too"})),
        )
        .await;
    let behind_id = behind.assert_ok(202)["messageId"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for(
        Duration::from_secs(10),
        "the second message's row",
        || async { !message(&app, &key, &behind_id).await.is_null() },
    )
    .await;
    let second = message(&app, &key, &behind_id).await;
    assert_eq!(second["waitingReason"], "SESSION_RECONNECTING", "{second}");
    assert_eq!(second["attempts"], 0, "{second}");
    assert!(
        second["waitingDetail"]
            .as_str()
            .is_some_and(|d| d.starts_with("behind an earlier message")),
        "{second}"
    );
    assert!(worker.messages().is_empty());
    // ...and once the session is connected there, it is delivered.
    app.client
        .post(format!("{}/sim/sessions/waits-1/scan", worker.endpoint()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    wait_for(Duration::from_secs(20), "the deliveries", || async {
        worker.messages().len() == 2
    })
    .await;
    for id in [&message_id, &behind_id] {
        wait_for(Duration::from_secs(10), "SENT or later", || async {
            matches!(
                message(&app, &key, id).await["status"].as_str(),
                Some("SENT" | "DELIVERED" | "READ")
            )
        })
        .await;
        let sent = message(&app, &key, id).await;
        assert!(sent["waitingReason"].is_null(), "{sent}");
    }
    worker.kill().await;
    app.stop().await;
}

/// A body the worker refuses (here put in the log directly: the ingress refuses whatever the
/// worker would) fails with the worker's own reason: the validation detail's field and message.
async fn a_worker_validation_refusal_shows_its_field_and_message(backend: Backend) {
    let app = app(backend).await;
    let (login, key) = customer(&app).await;
    let worker = real_worker(&app, "w-real-2", |_| {}).await;
    connected_session(&app, &login, "refused-1").await;
    let to = PhoneJid::parse("to", "6281234567890", "62").unwrap();
    let too_long = ValidatedSend {
        session_id: None,
        to: to.clone(),
        kind: MessageKind::Text,
        worker_body: json!({"to": to.as_str(), "type": "text", "message": "x".repeat(5000)}),
    };
    let accepted = app
        .context
        .ingress
        .accept(
            &login.user_id,
            &SessionId::parse("sessionId", "refused-1").unwrap(),
            vec![too_long],
            MessageIds::Fresh,
        )
        .await
        .unwrap();
    let message_id = accepted[0].message_id.clone();
    wait_for(Duration::from_secs(15), "FAILED", || async {
        message(&app, &key, &message_id).await["status"] == "FAILED"
    })
    .await;
    let failed = message(&app, &key, &message_id).await;
    let reason = failed["errorMessage"].as_str().unwrap_or_default();
    assert!(reason.contains("Validation error"), "{failed}");
    assert!(reason.contains("message:"), "the field is named: {failed}");
    assert!(!reason.contains("no reason given"), "{failed}");
    assert!(worker.messages().is_empty());
    worker.kill().await;
    app.stop().await;
}

/// Session starts are limited per customer (here 2 per 2 s; the existing worker: 5 per 5
/// minutes): connecting 6 sessions at once meets `429`s. Each connect is `200` (started) or
/// `202` with `Retry-After` (queued on that worker), never `503`; every session ends
/// CONNECTED on the worker, which runs each of them.
async fn a_429_storm_on_session_starts_ends_with_every_session_running(backend: Backend) {
    let app = app(backend).await;
    let (login, _key) = customer(&app).await;
    let admin = app.admin().await;
    // The customer's tier allows 20 sessions (the pipeline settings).
    let worker = real_worker(&app, "w-real-3", |config| {
        let mut limits = RateLimits::real();
        limits.session_operations = RateLimit {
            max_requests: 2,
            window: Duration::from_secs(2),
        };
        config.quirks.rate_limits = Some(limits);
    })
    .await;
    let ids: Vec<String> = (0..6).map(|i| format!("storm-{i}")).collect();
    let mut queued = 0;
    for id in &ids {
        let answer = connect(&app, &login, id).await;
        match answer.status.as_u16() {
            200 => {}
            202 => {
                queued += 1;
                let retry_after = answer
                    .headers
                    .get("retry-after")
                    .expect("Retry-After on 202");
                assert!(retry_after.to_str().unwrap().parse::<u64>().unwrap() >= 1);
                assert_eq!(answer.data()["workerId"], "w-real-3", "{}", answer.body);
            }
            other => panic!("connect {id}: {other} {}", answer.body),
        }
    }
    assert!(
        queued >= 3,
        "2 starts per window: the rest are queued ({queued})"
    );
    wait_for(
        Duration::from_secs(40),
        "every session CONNECTED",
        || async {
            let mut all = true;
            for id in &ids {
                let now = session(&app, &login, id).await;
                all &= now["status"] == "CONNECTED" && now["workerId"] == "w-real-3";
            }
            all
        },
    )
    .await;
    let running = worker.sessions();
    for id in &ids {
        assert!(
            running
                .iter()
                .any(|s| &s.session_id == id && s.status == SessionStatus::Connected),
            "{id} runs on the worker: {running:?}"
        );
    }
    // The administrator sees the same.
    let workers = app
        .get("/api/v1/workers/w-real-3", Some(&admin.access_token))
        .await;
    workers.assert_ok(200);
    worker.kill().await;
    app.stop().await;
}

/// The existing worker heartbeats every 30 s and the timeout is 90 s; a killed worker's port
/// refuses connections at once, and three refused probes (one a second here) take it OFFLINE,
/// so its sessions move long before the heartbeat timeout (60 s here).
async fn a_killed_worker_is_offline_long_before_its_heartbeat_timeout(backend: Backend) {
    let mut env = PIPELINE_ENV.to_vec();
    env.retain(|(name, _)| {
        *name != "WORKER_HEARTBEAT_TIMEOUT_MS" && *name != "WORKER_PROBE_INTERVAL_MS"
    });
    env.extend([
        ("WORKER_HEARTBEAT_TIMEOUT_MS", "60000"),
        ("WORKER_PROBE_INTERVAL_MS", "1000"),
    ]);
    let app = TestApp::spawn_with(backend, &env).await;
    let (login, _key) = customer(&app).await;
    let slow_heartbeats = |config: &mut SimWorkerConfig| {
        config.heartbeat_interval = Duration::from_secs(30);
    };
    let doomed = real_worker(&app, "w-doomed", slow_heartbeats).await;
    connected_session(&app, &login, "moves-1").await;
    let survivor = real_worker(&app, "w-survivor", slow_heartbeats).await;
    let killed_at = Instant::now();
    doomed.kill().await;
    let store = app.context.store.clone();
    wait_for(
        Duration::from_secs(15),
        "the killed worker OFFLINE",
        || async {
            store
                .worker_by_id("w-doomed")
                .await
                .is_ok_and(|w| w.status == wa_gateway::domain::WorkerStatus::Offline)
        },
    )
    .await;
    let offline_after = killed_at.elapsed();
    wait_for(
        Duration::from_secs(20),
        "CONNECTED on the survivor",
        || async {
            let now = session(&app, &login, "moves-1").await;
            now["status"] == "CONNECTED" && now["workerId"] == "w-survivor"
        },
    )
    .await;
    assert!(
        killed_at.elapsed() < Duration::from_secs(40),
        "moved well before the 60 s heartbeat timeout (OFFLINE after {offline_after:?})"
    );
    assert_eq!(survivor.sessions().len(), 1);
    survivor.kill().await;
    app.stop().await;
}

/// A `/health` that answers until told to hang (then accepts connections and never answers,
/// like a worker behind a partition or with a stuck event loop). Returns its endpoint.
async fn health_that_hangs(hang: std::sync::Arc<std::sync::atomic::AtomicBool>) -> String {
    use warp::Filter;
    let health = warp::path!("health").and(warp::get()).then(move || {
        let hang = hang.clone();
        async move {
            if hang.load(std::sync::atomic::Ordering::Relaxed) {
                std::future::pending::<()>().await;
            }
            warp::reply::json(&json!({"status": "healthy"}))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(warp::serve(health).incoming(listener).run());
    endpoint
}

/// Probes only ever shorten a dead worker's life (refused connections), never lengthen or
/// shorten a live one's: a worker that answers every probe but has stopped heartbeating goes
/// OFFLINE after the heartbeat timeout (its sessions move), and a worker that keeps
/// heartbeating while its probes time out (a partition between the prober and it, a busy
/// worker) stays ONLINE well past the timeout.
async fn probes_never_stand_in_for_heartbeats(backend: Backend) {
    let app = app(backend).await; // 3 s heartbeat timeout, probes every 500 ms
    let (login, _key) = customer(&app).await;
    let silent = real_worker(&app, "w-silent", |config| {
        config.heartbeat_interval = Duration::from_secs(3600);
    })
    .await;
    connected_session(&app, &login, "quiet-1").await;

    let survivor = real_worker(&app, "w-heard", |_| {}).await;
    let store = app.context.store.clone();
    let status_of = |id: &'static str| {
        let store = store.clone();
        async move { store.worker_by_id(id).await.map(|w| w.status).ok() }
    };
    wait_for(
        Duration::from_secs(15),
        "the silent worker OFFLINE though it answers its probes",
        || async { status_of("w-silent").await == Some(wa_gateway::domain::WorkerStatus::Offline) },
    )
    .await;
    let health = app
        .client
        .get(format!("{}/health", silent.endpoint()))
        .send()
        .await
        .expect("the silent worker still answers /health");
    assert!(health.status().is_success());
    wait_for(
        Duration::from_secs(20),
        "its session CONNECTED on the heartbeating worker",
        || async {
            let now = session(&app, &login, "quiet-1").await;
            now["status"] == "CONNECTED" && now["workerId"] == "w-heard"
        },
    )
    .await;

    // The hung worker registers while its /health answers (with no room, so nothing is placed
    // on it), then hangs and heartbeats on.
    let token = app.context.config.worker_auth_token.expose().clone();
    let hang = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let endpoint = health_that_hangs(hang.clone()).await;
    app.send(
        app.client
            .post(app.url("/api/workers/register"))
            .bearer_auth(&token)
            .json(&json!({"workerId": "w-hung", "endpoint": endpoint, "maxSessions": 1})),
    )
    .await
    .assert_ok(200);
    hang.store(true, std::sync::atomic::Ordering::Relaxed);
    let heartbeats = {
        let client = app.client.clone();
        let url = app.url("/api/workers/w-hung/heartbeat");
        tokio::spawn(async move {
            loop {
                let _ = client
                    .put(&url)
                    .bearer_auth(&token)
                    .json(&json!({"sessions": []}))
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    // Twice the timeout of unanswered probes: the hung worker is ONLINE throughout.
    let watch_from = Instant::now();
    while watch_from.elapsed() < Duration::from_secs(7) {
        assert_eq!(
            status_of("w-hung").await,
            Some(wa_gateway::domain::WorkerStatus::Online),
            "a worker that heartbeats stays ONLINE while its probes time out"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    heartbeats.abort();
    silent.kill().await;
    survivor.kill().await;
    app.stop().await;
}

/// A simulator control (`/sim/…`), with the worker token.
async fn sim_control(app: &TestApp, worker: &SimWorker, path: &str) {
    app.client
        .post(format!("{}{path}", worker.endpoint()))
        .bearer_auth(app.context.config.worker_auth_token.expose())
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
}

/// Whether the simulator runs `session_id` CONNECTED.
fn runs(worker: &SimWorker, session_id: &str) -> bool {
    worker
        .sessions()
        .iter()
        .any(|s| s.session_id == session_id && s.status == SessionStatus::Connected)
}

/// The worker's start fails (`500`, its WhatsApp client did not initialise): connect answers
/// `202` (queued, not "no worker"), and the session is started there again by itself until
/// it runs, with no client action.
async fn a_start_that_fails_is_started_again_by_itself(backend: Backend) {
    let app = app(backend).await;
    let (login, _key) = customer(&app).await;
    let worker = real_worker(&app, "w-flaky", |_| {}).await;
    sim_control(&app, &worker, "/sim/fail-starts/2").await;
    let queued = connect(&app, &login, "flaky-1").await;
    queued.assert_ok(202);
    assert_eq!(queued.data()["workerId"], "w-flaky", "{}", queued.body);
    wait_for(
        Duration::from_secs(20),
        "the session CONNECTED on its worker",
        || async {
            let now = session(&app, &login, "flaky-1").await;
            now["status"] == "CONNECTED" && now["workerId"] == "w-flaky" && runs(&worker, "flaky-1")
        },
    )
    .await;
    worker.kill().await;
    app.stop().await;
}

/// A worker process restarts (killed and back on the same address within a second, so the
/// gateway never sees it OFFLINE) without its sessions: its heartbeats no longer list them,
/// and the gateway starts each again there.
async fn a_restarted_worker_runs_its_sessions_again(backend: Backend) {
    let app = app(backend).await;
    let (login, _key) = customer(&app).await;
    let first = real_worker(&app, "w-restarts", |_| {}).await;
    let ids = ["again-1", "again-2"];
    for id in ids {
        connect(&app, &login, id).await.assert_ok(200);
    }
    wait_for(Duration::from_secs(10), "both CONNECTED", || async {
        ids.iter().all(|id| runs(&first, id))
    })
    .await;
    let address = first.local_addr();
    first.kill().await;
    let second = real_worker(&app, "w-restarts", |config| config.listen = address).await;
    assert!(
        second.sessions().is_empty(),
        "a restart without its sessions"
    );
    wait_for(
        Duration::from_secs(20),
        "both running on the restarted worker",
        || async { ids.iter().all(|id| runs(&second, id)) },
    )
    .await;
    wait_for(Duration::from_secs(10), "both CONNECTED there", || async {
        for id in ids {
            let now = session(&app, &login, id).await;
            if now["workerId"] != "w-restarts" || now["status"] != "CONNECTED" {
                return false;
            }
        }
        true
    })
    .await;
    second.kill().await;
    app.stop().await;
}

/// A session that a worker runs and lists in its heartbeats but does not own (started there
/// by hand, or left over from before a move) is stopped there.
async fn a_session_a_worker_runs_without_owning_it_is_stopped_there(backend: Backend) {
    let app = app(backend).await;
    let worker = real_worker(&app, "w-stray", |_| {}).await;
    app.client
        .post(format!("{}/api/sessions/start", worker.endpoint()))
        .bearer_auth(app.context.config.worker_auth_token.expose())
        .json(&json!({"sessionId": "stray-1", "userId": "nobody"}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    wait_for(Duration::from_secs(5), "the stray running", || async {
        runs(&worker, "stray-1")
    })
    .await;
    wait_for(
        Duration::from_secs(15),
        "the stray stopped by the gateway",
        || async { !runs(&worker, "stray-1") },
    )
    .await;
    worker.kill().await;
    app.stop().await;
}
