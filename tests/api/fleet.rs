//! The worker fleet end to end: the real gateway and several simulated workers in this process.
//! Placement, failover of a killed worker, drain, unregister, fencing, tier limit, isolation,
//! malformed worker payloads, the worker token.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wa_gateway::sim::{SessionStatus, SimWorker, SimWorkerConfig};

use crate::backend_tests;
use crate::common::{Backend, Login, TestApp, start_registered_sim, wait_for};

/// Fleet timings for tests: a worker is declared dead 2 s after its last sign of life.
const FLEET_ENV: &[(&str, &str)] = &[
    ("WORKER_HEARTBEAT_TIMEOUT_MS", "2000"),
    ("WORKER_MONITOR_INTERVAL_MS", "200"),
    ("WORKER_PROBE_INTERVAL_MS", "500"),
    ("WORKER_REQUEST_TIMEOUT_MS", "2000"),
];

backend_tests!(
    sessions_are_placed_evenly_and_connect,
    killed_worker_sessions_fail_over_with_one_owner,
    a_gateway_restart_is_not_a_fleet_failure,
    drained_worker_hands_its_sessions_over,
    unregistered_worker_hands_its_sessions_over,
    reports_from_a_non_owner_are_fenced,
    tier_session_limit_and_isolation,
    malformed_worker_payloads_are_400_and_change_nothing,
    worker_routes_need_the_worker_token,
    no_worker_means_503,
    status_shows_the_qr_and_events_stream_changes,
    session_actions_reach_the_owner,
    sessions_wait_for_capacity_then_move,
    admins_add_and_test_workers,
);

async fn fleet_app(backend: Backend) -> TestApp {
    TestApp::spawn_with(backend, FLEET_ENV).await
}

async fn sim(app: &TestApp, id: &str, auto_connect_ms: u64) -> SimWorker {
    let mut config = SimWorkerConfig::new(
        app.base_url.clone(),
        id,
        app.context.config.worker_auth_token.expose().clone(),
    );
    config.heartbeat_interval = Duration::from_millis(300);
    config.auto_connect = Duration::from_millis(auto_connect_ms);
    config.register_retry_interval = Duration::from_millis(200);
    config.quirks = crate::common::process::sim_quirks();
    start_registered_sim(app, config).await
}

async fn sessions_of(app: &TestApp, token: &str) -> Vec<Value> {
    app.get("/api/v1/sessions", Some(token))
        .await
        .assert_ok(200)
        .as_array()
        .unwrap()
        .clone()
}

async fn create_and_connect(app: &TestApp, login: &Login, ids: &[String]) {
    for id in ids {
        app.post(
            "/api/v1/sessions",
            Some(&login.access_token),
            json!({"name": id, "sessionId": id}),
        )
        .await
        .assert_ok(201);
        app.post(
            &format!("/api/v1/sessions/{id}/connect"),
            Some(&login.access_token),
            json!({}),
        )
        .await
        .assert_ok(200);
    }
}

async fn all_connected(app: &TestApp, token: &str, expected: usize) -> bool {
    let sessions = sessions_of(app, token).await;
    sessions.len() == expected && sessions.iter().all(|s| s["status"] == "CONNECTED")
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

async fn sessions_are_placed_evenly_and_connect(backend: Backend) {
    let app = fleet_app(backend).await;
    let admin = app.admin().await;
    let w1 = sim(&app, "w-even-1", 100).await;
    let w2 = sim(&app, "w-even-2", 100).await;
    let sessions = ids("even", 10);
    create_and_connect(&app, &admin, &sessions).await;
    wait_for(Duration::from_secs(10), "all sessions CONNECTED", || {
        all_connected(&app, &admin.access_token, 10)
    })
    .await;
    let workers = app.get("/api/v1/workers", Some(&admin.access_token)).await;
    let workers = workers.assert_ok(200).as_array().unwrap().clone();
    assert_eq!(workers.len(), 2);
    for worker in &workers {
        assert_eq!(worker["status"], "ONLINE");
        assert_eq!(worker["sessionCount"], 5, "{worker}");
        assert!(worker["lastHeartbeat"].is_string());
        assert!(worker["maxSessions"].is_i64());
        assert!(
            worker["endpoint"]
                .as_str()
                .unwrap()
                .starts_with("http://127.0.0.1:")
        );
    }
    assert_eq!(w1.sessions().len() + w2.sessions().len(), 10);
    let one = app
        .get("/api/v1/sessions/even-0", Some(&admin.access_token))
        .await;
    let one = one.assert_ok(200);
    assert_eq!(one["status"], "CONNECTED");
    assert!(one["phoneNumber"].as_str().unwrap().starts_with("628"));
    assert!(one["displayName"].is_string());
    assert!(one["workerId"].is_string());
    let stats = app
        .get("/api/v1/workers/stats", Some(&admin.access_token))
        .await;
    assert_eq!(stats.assert_ok(200)["placedSessions"], 10);
    w1.kill().await;
    w2.kill().await;
    app.stop().await;
}

async fn killed_worker_sessions_fail_over_with_one_owner(backend: Backend) {
    let app = fleet_app(backend).await;
    let admin = app.admin().await;
    let w1 = sim(&app, "w-fail-1", 100).await;
    let w2 = sim(&app, "w-fail-2", 100).await;
    let sessions = ids("fail", 8);
    create_and_connect(&app, &admin, &sessions).await;
    wait_for(Duration::from_secs(10), "all sessions CONNECTED", || {
        all_connected(&app, &admin.access_token, 8)
    })
    .await;
    let on_w1: HashSet<String> = w1.sessions().into_iter().map(|s| s.session_id).collect();
    assert_eq!(on_w1.len(), 4);

    // (no lower bound: refused probes may take it OFFLINE before the heartbeat timeout)
    w1.kill().await;
    // Its port refuses the probes (or, at the latest, the heartbeat timeout passes): within the
    // heartbeat timeout plus a bound, every session of the dead worker is CONNECTED on the
    // survivor. (How soon is the failover benchmark's business, not this test's.)
    wait_for(Duration::from_millis(2000 + 10_000), "failover", || async {
        let sessions = sessions_of(&app, &admin.access_token).await;
        sessions
            .iter()
            .all(|s| s["status"] == "CONNECTED" && s["workerId"] == "w-fail-2")
    })
    .await;
    // Exactly one owner: the survivor runs every session once.
    let on_w2: Vec<String> = w2.sessions().into_iter().map(|s| s.session_id).collect();
    assert_eq!(on_w2.len(), 8, "{on_w2:?}");
    assert_eq!(on_w2.iter().collect::<HashSet<_>>().len(), 8);
    for moved in &on_w1 {
        let session = app
            .get(
                &format!("/api/v1/sessions/{moved}"),
                Some(&admin.access_token),
            )
            .await;
        assert_eq!(
            session.assert_ok(200)["epoch"],
            2,
            "one move, one epoch bump"
        );
    }
    let dead = app
        .get("/api/v1/workers/w-fail-1", Some(&admin.access_token))
        .await;
    assert_eq!(dead.assert_ok(200)["status"], "OFFLINE");

    // The dead worker comes back (same id, new process): it gets none of its sessions back.
    let back = sim(&app, "w-fail-1", 100).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(back.sessions().is_empty());
    let revived = app
        .get("/api/v1/workers/w-fail-1", Some(&admin.access_token))
        .await;
    let revived = revived.assert_ok(200);
    assert_eq!(revived["status"], "ONLINE");
    assert_eq!(revived["sessionCount"], 0);
    assert!(
        sessions_of(&app, &admin.access_token)
            .await
            .iter()
            .all(|s| s["workerId"] == "w-fail-2")
    );
    back.kill().await;
    w2.kill().await;
    app.stop().await;
}

/// The gateway is down longer than the heartbeat timeout while its workers stay up: when it
/// comes back nothing moves (liveness counts from when it could hear heartbeats again), and a
/// worker that then really dies is still detected.
async fn a_gateway_restart_is_not_a_fleet_failure(backend: Backend) {
    let app = fleet_app(backend).await;
    let admin = app.admin().await;
    let w1 = sim(&app, "w-restart-1", 100).await;
    let w2 = sim(&app, "w-restart-2", 100).await;
    let sessions = ids("restart", 6);
    create_and_connect(&app, &admin, &sessions).await;
    wait_for(Duration::from_secs(10), "all sessions CONNECTED", || {
        all_connected(&app, &admin.access_token, 6)
    })
    .await;
    let placed: Vec<(String, Value)> = sessions_of(&app, &admin.access_token)
        .await
        .iter()
        .map(|s| (s["id"].as_str().unwrap().to_owned(), s["workerId"].clone()))
        .collect();

    // Down for 1.5 timeouts: the workers' heartbeats meanwhile all fail.
    let app = app.restart_after(Duration::from_millis(3_000)).await;
    // Well past the timeout counted from the last heartbeat the old process heard, and
    // another full timeout after the restart.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    for worker in ["w-restart-1", "w-restart-2"] {
        let answer = app
            .get(
                &format!("/api/v1/workers/{worker}"),
                Some(&admin.access_token),
            )
            .await;
        assert_eq!(answer.assert_ok(200)["status"], "ONLINE", "{worker}");
    }
    for (id, worker) in &placed {
        let session = app
            .get(&format!("/api/v1/sessions/{id}"), Some(&admin.access_token))
            .await;
        let session = session.assert_ok(200);
        assert_eq!(&session["workerId"], worker, "{id} moved");
        assert_eq!(session["epoch"], 1, "{id} moved");
        assert_eq!(session["status"], "CONNECTED", "{id}");
    }
    assert_eq!(w1.sessions().len() + w2.sessions().len(), 6);

    // Liveness still works after the restart: a worker that dies now is found out.
    w1.kill().await;
    wait_for(
        Duration::from_secs(12),
        "failover after the restart",
        || async {
            sessions_of(&app, &admin.access_token)
                .await
                .iter()
                .all(|s| s["status"] == "CONNECTED" && s["workerId"] == "w-restart-2")
        },
    )
    .await;
    w2.kill().await;
    app.stop().await;
}

async fn drained_worker_hands_its_sessions_over(backend: Backend) {
    let app = fleet_app(backend).await;
    let admin = app.admin().await;
    let w1 = sim(&app, "w-drain-1", 100).await;
    let w2 = sim(&app, "w-drain-2", 100).await;
    create_and_connect(&app, &admin, &ids("drain", 4)).await;
    wait_for(Duration::from_secs(10), "all CONNECTED", || {
        all_connected(&app, &admin.access_token, 4)
    })
    .await;
    let drained = app
        .put(
            "/api/v1/workers/w-drain-1",
            Some(&admin.access_token),
            json!({"status": "MAINTENANCE"}),
        )
        .await;
    assert_eq!(drained.assert_ok(200)["status"], "MAINTENANCE");
    wait_for(Duration::from_secs(10), "drain", || async {
        sessions_of(&app, &admin.access_token)
            .await
            .iter()
            .all(|s| s["status"] == "CONNECTED" && s["workerId"] == "w-drain-2")
    })
    .await;
    // The drained worker was told to stop them: it holds nothing, the other holds all.
    wait_for(Duration::from_secs(5), "old owner stops", || async {
        w1.sessions().is_empty()
    })
    .await;
    assert_eq!(w2.sessions().len(), 4);
    // An empty worker may be deleted; a busy one may not.
    app.delete("/api/v1/workers/w-drain-2", Some(&admin.access_token))
        .await
        .assert_error(409, "WORKER_NOT_EMPTY");
    w1.kill().await;
    app.delete("/api/v1/workers/w-drain-1", Some(&admin.access_token))
        .await
        .assert_ok(200);
    app.get("/api/v1/workers/w-drain-1", Some(&admin.access_token))
        .await
        .assert_error(404, "NOT_FOUND");
    w2.kill().await;
    app.stop().await;
}

async fn unregistered_worker_hands_its_sessions_over(backend: Backend) {
    let app = fleet_app(backend).await;
    let admin = app.admin().await;
    let w1 = sim(&app, "w-unreg-1", 100).await;
    let w2 = sim(&app, "w-unreg-2", 100).await;
    create_and_connect(&app, &admin, &ids("unreg", 4)).await;
    wait_for(Duration::from_secs(10), "all CONNECTED", || {
        all_connected(&app, &admin.access_token, 4)
    })
    .await;
    let started = Instant::now();
    w1.shutdown().await.unwrap();
    wait_for(
        Duration::from_secs(10),
        "unregister moves sessions",
        || async {
            sessions_of(&app, &admin.access_token)
                .await
                .iter()
                .all(|s| s["status"] == "CONNECTED" && s["workerId"] == "w-unreg-2")
        },
    )
    .await;
    // Unregistering does not wait for the heartbeat timeout.
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "{:?}",
        started.elapsed()
    );
    let gone = app
        .get("/api/v1/workers/w-unreg-1", Some(&admin.access_token))
        .await;
    assert_eq!(gone.assert_ok(200)["status"], "OFFLINE");
    w2.kill().await;
    app.stop().await;
}

async fn reports_from_a_non_owner_are_fenced(backend: Backend) {
    let app = fleet_app(backend).await;
    let admin = app.admin().await;
    let w1 = sim(&app, "w-fence-1", 100).await;
    create_and_connect(&app, &admin, &ids("fence", 1)).await;
    wait_for(Duration::from_secs(10), "CONNECTED", || {
        all_connected(&app, &admin.access_token, 1)
    })
    .await;
    let w2 = sim(&app, "w-fence-2", 100).await;
    let token = app.context.config.worker_auth_token.expose().clone();
    // w2 claims the session it does not own.
    let claim = app
        .send(
            app.client
                .post(app.url("/api/webhooks/session-status"))
                .bearer_auth(&token)
                .json(&json!({"sessionId": "fence-0", "status": "DISCONNECTED", "workerId": "w-fence-2",
                              "timestamp": "2026-01-01T00:00:00Z"})),
        )
        .await;
    claim.assert_error(409, "STALE_OWNER");
    let session = app
        .get("/api/v1/sessions/fence-0", Some(&admin.access_token))
        .await;
    let session = session.assert_ok(200).clone();
    assert_eq!(session["status"], "CONNECTED");
    assert_eq!(session["workerId"], "w-fence-1");
    // A heartbeat from w2 listing the session changes nothing either.
    let heartbeat = app
        .send(
            app.client
                .put(app.url("/api/workers/w-fence-2/heartbeat"))
                .bearer_auth(&token)
                .json(&json!({"sessions": [{"sessionId": "fence-0", "status": "ERROR", "phoneNumber": null, "displayName": null}],
                              "metrics": {"cpuUsage": 1, "memoryUsage": 2, "uptime": 3, "messageCount": 0, "totalSessions": 1, "activeSessions": 1}})),
        )
        .await;
    heartbeat.assert_ok(200);
    let after = app
        .get("/api/v1/sessions/fence-0", Some(&admin.access_token))
        .await;
    assert_eq!(after.assert_ok(200)["status"], "CONNECTED");
    // Manual migration to w2, then the old owner's reports are the stale ones.
    app.post(
        "/api/v1/admin/sessions/fence-0/migrate",
        Some(&admin.access_token),
        json!({"targetWorkerId": "w-fence-2"}),
    )
    .await
    .assert_ok(202);
    wait_for(Duration::from_secs(10), "manual migration", || async {
        let s = app
            .get("/api/v1/sessions/fence-0", Some(&admin.access_token))
            .await;
        s.body["data"]["workerId"] == "w-fence-2" && s.body["data"]["status"] == "CONNECTED"
    })
    .await;
    let stale = app
        .send(
            app.client
                .post(app.url("/api/v1/webhooks/session-status"))
                .bearer_auth(&token)
                .json(&json!({"sessionId": "fence-0", "status": "QR_REQUIRED", "qrCode": "x", "workerId": "w-fence-1"})),
        )
        .await;
    stale.assert_error(409, "STALE_OWNER");
    wait_for(Duration::from_secs(5), "old owner told to stop", || async {
        w1.sessions().is_empty()
    })
    .await;
    let last = app
        .get("/api/v1/sessions/fence-0", Some(&admin.access_token))
        .await;
    assert_eq!(last.assert_ok(200)["status"], "CONNECTED");
    // The existing worker names itself only on QR_REQUIRED: the old owner's DISCONNECTED
    // without workerId (what it posts when the migration stops it) is not applied, since the
    // new owner, asked, runs the session.
    for status in ["DISCONNECTED", "ERROR", "INIT", "RECONNECTING"] {
        let anonymous = app
            .send(
                app.client
                    .post(app.url("/api/webhooks/session-status"))
                    .bearer_auth(&token)
                    .json(&json!({"sessionId": "fence-0", "status": status,
                                  "timestamp": "2026-01-01T00:00:00Z"})),
            )
            .await;
        anonymous.assert_error(409, "STALE_REPORT");
        let now = app
            .get("/api/v1/sessions/fence-0", Some(&admin.access_token))
            .await;
        let now = now.assert_ok(200);
        assert_eq!(now["status"], "CONNECTED", "after an anonymous {status}");
        assert_eq!(now["workerId"], "w-fence-2");
    }
    // Once the owner confirms a setback, an anonymous report is applied, with the owner's
    // word for the status (here DISCONNECTED, where the report said RECONNECTING).
    app.post(
        "/api/v1/sessions/fence-0/disconnect",
        Some(&admin.access_token),
        json!({}),
    )
    .await
    .assert_ok(200);
    wait_for(Duration::from_secs(5), "the owner disconnected", || async {
        w2.sessions()
            .iter()
            .any(|s| s.session_id == "fence-0" && s.status == SessionStatus::Disconnected)
    })
    .await;
    let confirmed = app
        .send(
            app.client
                .post(app.url("/api/webhooks/session-status"))
                .bearer_auth(&token)
                .json(&json!({"sessionId": "fence-0", "status": "RECONNECTING"})),
        )
        .await;
    assert_eq!(confirmed.assert_ok(200)["status"], "DISCONNECTED");
    w1.kill().await;
    w2.kill().await;
    app.stop().await;
}

async fn tier_session_limit_and_isolation(backend: Backend) {
    let app = fleet_app(backend).await;
    let w = sim(&app, "w-tier", 100).await;
    let ann = app.register("Ann", "ann@example.com", "s3cret-pass").await;
    let bob = app.register("Bob", "bob@example.com", "s3cret-pass").await;
    let created = app
        .post(
            "/api/v1/sessions",
            Some(&ann.access_token),
            json!({"name": "main"}),
        )
        .await;
    let id = created.assert_ok(201)["id"].as_str().unwrap().to_owned();
    assert!((3..=50).contains(&id.len()));
    // BASIC allows one session.
    app.post(
        "/api/v1/sessions",
        Some(&ann.access_token),
        json!({"name": "second"}),
    )
    .await
    .assert_error(409, "SESSION_LIMIT_REACHED");
    app.post(
        "/api/v1/sessions",
        Some(&bob.access_token),
        json!({"name": "x", "sessionId": "no spaces allowed"}),
    )
    .await
    .assert_error(400, "VALIDATION_ERROR");
    app.post(
        "/api/v1/sessions",
        Some(&bob.access_token),
        json!({"name": "x", "sessionId": id}),
    )
    .await
    .assert_error(409, "SESSION_ID_TAKEN");
    // Bob cannot see or touch Ann's session.
    for path in [
        format!("/api/v1/sessions/{id}"),
        format!("/api/v1/sessions/{id}/status"),
    ] {
        app.get(&path, Some(&bob.access_token))
            .await
            .assert_error(404, "NOT_FOUND");
    }
    app.post(
        &format!("/api/v1/sessions/{id}/connect"),
        Some(&bob.access_token),
        json!({}),
    )
    .await
    .assert_error(404, "NOT_FOUND");
    app.delete(&format!("/api/v1/sessions/{id}"), Some(&bob.access_token))
        .await
        .assert_error(404, "NOT_FOUND");
    assert!(sessions_of(&app, &bob.access_token).await.is_empty());
    assert_eq!(sessions_of(&app, &ann.access_token).await.len(), 1);
    // Deleting frees the slot.
    app.delete(&format!("/api/v1/sessions/{id}"), Some(&ann.access_token))
        .await
        .assert_ok(200);
    app.post(
        "/api/v1/sessions",
        Some(&ann.access_token),
        json!({"name": "again"}),
    )
    .await
    .assert_ok(201);
    // Users may not use the admin fleet API.
    app.get("/api/v1/workers", Some(&ann.access_token))
        .await
        .assert_error(403, "FORBIDDEN");
    app.post(
        "/api/v1/admin/sessions/x/migrate",
        Some(&ann.access_token),
        json!({}),
    )
    .await
    .assert_error(403, "FORBIDDEN");
    w.kill().await;
    app.stop().await;
}

async fn malformed_worker_payloads_are_400_and_change_nothing(backend: Backend) {
    let app = fleet_app(backend).await;
    let admin = app.admin().await;
    let w = sim(&app, "w-bad", 100).await;
    create_and_connect(&app, &admin, &ids("bad", 1)).await;
    wait_for(Duration::from_secs(10), "CONNECTED", || {
        all_connected(&app, &admin.access_token, 1)
    })
    .await;
    let token = app.context.config.worker_auth_token.expose().clone();
    let before = app
        .get("/api/v1/workers/w-bad", Some(&admin.access_token))
        .await
        .assert_ok(200)
        .clone();
    let cases: Vec<(reqwest::Method, &str, Value)> = vec![
        (
            reqwest::Method::POST,
            "/api/workers/register",
            json!({"endpoint": "http://127.0.0.1:1"}),
        ),
        (
            reqwest::Method::POST,
            "/api/workers/register",
            json!({"workerId": "w-bad", "endpoint": "not a url"}),
        ),
        (
            reqwest::Method::PUT,
            "/api/workers/w-bad/heartbeat",
            json!({"sessions": "everything"}),
        ),
        (
            reqwest::Method::PUT,
            "/api/workers/w-bad/heartbeat",
            json!({"metrics": {"cpuUsage": "high"}}),
        ),
        (
            reqwest::Method::POST,
            "/api/webhooks/session-status",
            json!({"sessionId": "bad-0", "status": "DANCING"}),
        ),
        (
            reqwest::Method::POST,
            "/api/webhooks/session-status",
            json!({"status": "CONNECTED"}),
        ),
        (
            reqwest::Method::POST,
            "/api/webhooks/message-status",
            json!({"sessionId": "bad-0", "messageId": "m", "status": "LOST"}),
        ),
        (
            reqwest::Method::POST,
            "/api/workers/w-bad/sessions/recovery-status",
            json!({"recoveryResults": 5}),
        ),
    ];
    for (method, path, body) in cases {
        let answer = app
            .send(
                app.client
                    .request(method.clone(), app.url(path))
                    .bearer_auth(&token)
                    .json(&body),
            )
            .await;
        assert_eq!(
            answer.status.as_u16(),
            400,
            "{method} {path} {body}: {}",
            answer.body
        );
        assert_eq!(answer.body["success"], false);
    }
    let raw = app
        .send(
            app.client
                .put(app.url("/api/workers/w-bad/heartbeat"))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body("{not json"),
        )
        .await;
    raw.assert_error(400, "INVALID_JSON");
    let after = app
        .get("/api/v1/workers/w-bad", Some(&admin.access_token))
        .await
        .assert_ok(200)
        .clone();
    assert_eq!(before["endpoint"], after["endpoint"]);
    assert_eq!(after["status"], "ONLINE");
    let session = app
        .get("/api/v1/sessions/bad-0", Some(&admin.access_token))
        .await;
    assert_eq!(session.assert_ok(200)["status"], "CONNECTED");
    // The real worker's payloads as they are: nulls, unknown fields, LOGGED_OUT, nested summary.
    let liberal = app
        .send(
            app.client
                .put(app.url("/api/workers/w-bad/heartbeat"))
                .bearer_auth(&token)
                .json(&json!({"sessions": [{"sessionId": "bad-0", "status": "CONNECTED", "phoneNumber": null,
                                            "displayName": null, "lastActivity": null, "extra": 1}],
                              "metrics": {"cpuUsage": 12.5, "memoryUsage": 40, "uptime": 99.9, "messageCount": 1,
                                          "totalSessions": 1, "activeSessions": 1, "gcPauses": 3},
                              "lastActivity": "2026-11-24T00:00:00Z", "futureField": {"x": 1}})),
        )
        .await;
    liberal.assert_ok(200);
    let recovery = app
        .send(
            app.client
                .post(app.url("/api/workers/w-bad/sessions/recovery-status"))
                .bearer_auth(&token)
                .json(&json!({"recoveryResults": [{"sessionId": "bad-0", "status": "SUCCESS", "recoveredAt": null}],
                              "summary": {"totalSessions": 1, "successfulRecoveries": 1, "failedRecoveries": 0}})),
        )
        .await;
    recovery.assert_ok(200);
    // The existing worker's other recovery reports: a summary alone (no results, or an empty
    // list) applies nothing; its lower-case words are understood. (The simulator stops first:
    // its heartbeats would set the status it runs the session in between.)
    w.kill().await;
    let recover = |body: Value| {
        app.client
            .post(app.url("/api/workers/w-bad/sessions/recovery-status"))
            .bearer_auth(&token)
            .json(&body)
    };
    let summary = json!({"totalSessions": 1, "successfulRecoveries": 0, "failedRecoveries": 1});
    for body in [
        json!({ "summary": summary }),
        json!({"recoveryResults": [], "summary": summary}),
    ] {
        let answer = app.send(recover(body)).await;
        assert_eq!(answer.assert_ok(200)["processed"], 0);
    }
    let status_of = || async {
        app.get("/api/v1/sessions/bad-0", Some(&admin.access_token))
            .await
            .assert_ok(200)["status"]
            .clone()
    };
    assert_eq!(status_of().await, "CONNECTED");
    for (word, expected) in [
        ("error", "ERROR"),
        ("recovered", "CONNECTED"),
        ("failed", "ERROR"),
    ] {
        let body = json!({"recoveryResults": [{"sessionId": "bad-0", "status": word}]});
        let answer = app.send(recover(body)).await;
        assert_eq!(answer.assert_ok(200)["applied"], 1, "{word}");
        assert_eq!(status_of().await, expected, "after {word}");
    }
    let count = app
        .context
        .store
        .count_worker_metrics("w-bad")
        .await
        .unwrap();
    assert!(count >= 1, "heartbeat metrics are sampled");
    app.stop().await;
}

async fn worker_routes_need_the_worker_token(backend: Backend) {
    let app = fleet_app(backend).await;
    let admin = app.admin().await;
    let routes: Vec<(reqwest::Method, &str)> = vec![
        (reqwest::Method::POST, "/api/workers/register"),
        (reqwest::Method::PUT, "/api/workers/w/heartbeat"),
        (reqwest::Method::GET, "/api/workers/w/sessions/assigned"),
        (
            reqwest::Method::POST,
            "/api/workers/w/sessions/recovery-status",
        ),
        (reqwest::Method::DELETE, "/api/workers/unregister"),
        (reqwest::Method::POST, "/api/webhooks/session-status"),
        (reqwest::Method::POST, "/api/webhooks/message-status"),
        (reqwest::Method::POST, "/api/webhooks/message-received"),
        (reqwest::Method::POST, "/api/webhooks/worker-heartbeat"),
        (reqwest::Method::POST, "/api/v1/workers/register"),
        (reqwest::Method::POST, "/api/v1/webhooks/session-status"),
    ];
    for (method, path) in routes {
        for token in [None, Some("wrong-token"), Some(admin.access_token.as_str())] {
            let mut request = app
                .client
                .request(method.clone(), app.url(path))
                .json(&json!({}));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let answer = app.send(request).await;
            assert_eq!(
                answer.status.as_u16(),
                401,
                "{method} {path} with {token:?}: {}",
                answer.body
            );
        }
    }
    app.stop().await;
}

async fn no_worker_means_503(backend: Backend) {
    let app = fleet_app(backend).await;
    let admin = app.admin().await;
    app.post(
        "/api/v1/sessions",
        Some(&admin.access_token),
        json!({"name": "lonely", "sessionId": "lonely"}),
    )
    .await
    .assert_ok(201);
    app.post(
        "/api/v1/sessions/lonely/connect",
        Some(&admin.access_token),
        json!({}),
    )
    .await
    .assert_error(503, "NO_WORKER_AVAILABLE");
    app.post(
        "/api/v1/sessions/lonely/restart",
        Some(&admin.access_token),
        json!({}),
    )
    .await
    .assert_error(409, "SESSION_NOT_PLACED");
    app.stop().await;
}

async fn status_shows_the_qr_and_events_stream_changes(backend: Backend) {
    let app = fleet_app(backend).await;
    let admin = app.admin().await;
    let w = sim(&app, "w-qr", 60_000).await;
    app.post(
        "/api/v1/sessions",
        Some(&admin.access_token),
        json!({"name": "qr", "sessionId": "qr-1"}),
    )
    .await
    .assert_ok(201);
    let mut events = app
        .client
        .get(app.url("/api/v1/sessions/qr-1/events"))
        .bearer_auth(&admin.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    assert!(
        events.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    app.post(
        "/api/v1/sessions/qr-1/connect",
        Some(&admin.access_token),
        json!({}),
    )
    .await
    .assert_ok(200);
    wait_for(Duration::from_secs(10), "QR", || async {
        let s = app
            .get("/api/v1/sessions/qr-1/status", Some(&admin.access_token))
            .await;
        s.body["data"]["status"] == "QR_REQUIRED"
    })
    .await;
    let status = app
        .get("/api/v1/sessions/qr-1/status", Some(&admin.access_token))
        .await;
    let status = status.assert_ok(200).clone();
    assert!(status["qrCode"].as_str().is_some_and(|q| !q.is_empty()));
    assert!(
        status["qrDataUrl"]
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,")
    );
    // Scan on the (simulated) phone: CONNECTED, and the stream saw the QR and the connection.
    let token = app.context.config.worker_auth_token.expose().clone();
    app.client
        .post(format!("{}/sim/sessions/qr-1/scan", w.endpoint()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains("\"CONNECTED\"") {
        assert!(Instant::now() < deadline, "events so far: {seen}");
        if let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(1), events.chunk())
            .await
            .unwrap_or(Ok(None))
        {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    assert!(
        seen.contains("event:session") || seen.contains("event: session"),
        "{seen}"
    );
    assert!(seen.contains("QR_REQUIRED"), "{seen}");
    let done = app
        .get("/api/v1/sessions/qr-1/status", Some(&admin.access_token))
        .await;
    let done = done.assert_ok(200);
    assert_eq!(done["status"], "CONNECTED");
    assert!(done["qrCode"].is_null());
    drop(events);
    w.kill().await;
    app.stop().await;
}

async fn session_actions_reach_the_owner(backend: Backend) {
    let app = fleet_app(backend).await;
    let admin = app.admin().await;
    let w = sim(&app, "w-act", 100).await;
    create_and_connect(&app, &admin, &ids("act", 1)).await;
    wait_for(Duration::from_secs(10), "CONNECTED", || {
        all_connected(&app, &admin.access_token, 1)
    })
    .await;
    let token = Some(admin.access_token.as_str());
    app.post("/api/v1/sessions/act-0/disconnect", token, json!({}))
        .await
        .assert_ok(200);
    wait_for(Duration::from_secs(10), "DISCONNECTED", || async {
        app.get("/api/v1/sessions/act-0", token).await.body["data"]["status"] == "DISCONNECTED"
    })
    .await;
    app.post("/api/v1/sessions/act-0/restart", token, json!({}))
        .await
        .assert_ok(200);
    wait_for(
        Duration::from_secs(10),
        "reconnected after restart",
        || async {
            app.get("/api/v1/sessions/act-0", token).await.body["data"]["status"] == "CONNECTED"
        },
    )
    .await;
    app.post("/api/v1/sessions/act-0/logout", token, json!({}))
        .await
        .assert_ok(200);
    wait_for(Duration::from_secs(10), "logged out", || async {
        app.get("/api/v1/sessions/act-0", token).await.body["data"]["status"] == "DISCONNECTED"
    })
    .await;
    app.post("/api/v1/sessions/act-0/dance", token, json!({}))
        .await
        .assert_error(404, "NOT_FOUND");
    app.delete("/api/v1/sessions/act-0", token)
        .await
        .assert_ok(200);
    wait_for(
        Duration::from_secs(5),
        "worker stops the deleted session",
        || async { w.sessions().is_empty() },
    )
    .await;
    app.get("/api/v1/sessions/act-0", token)
        .await
        .assert_error(404, "NOT_FOUND");
    w.kill().await;
    app.stop().await;
}

async fn sessions_wait_for_capacity_then_move(backend: Backend) {
    let app = fleet_app(backend).await;
    let admin = app.admin().await;
    let only = sim(&app, "w-wait-1", 100).await;
    create_and_connect(&app, &admin, &ids("wait", 3)).await;
    wait_for(Duration::from_secs(10), "CONNECTED", || {
        all_connected(&app, &admin.access_token, 3)
    })
    .await;
    only.kill().await;
    // No target: the sessions stay put (waiting) while the worker is OFFLINE...
    wait_for(Duration::from_secs(10), "OFFLINE", || async {
        app.get("/api/v1/workers/w-wait-1", Some(&admin.access_token))
            .await
            .body["data"]["status"]
            == "OFFLINE"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        sessions_of(&app, &admin.access_token)
            .await
            .iter()
            .all(|s| s["workerId"] == "w-wait-1")
    );
    // ...and move as soon as capacity appears.
    let rescue = sim(&app, "w-wait-2", 100).await;
    wait_for(
        Duration::from_secs(15),
        "moved to the new worker",
        || async {
            sessions_of(&app, &admin.access_token)
                .await
                .iter()
                .all(|s| s["workerId"] == "w-wait-2" && s["status"] == "CONNECTED")
        },
    )
    .await;
    assert_eq!(rescue.sessions().len(), 3);
    rescue.kill().await;
    app.stop().await;
}

async fn admins_add_and_test_workers(backend: Backend) {
    let app = fleet_app(backend).await;
    let admin = app.admin().await;
    let token = Some(admin.access_token.as_str());
    let w = sim(&app, "w-add", 100).await;
    // Adding by endpoint probes it and takes the id and capacity from its /health.
    let added = app
        .post(
            "/api/v1/workers",
            token,
            json!({"endpoint": w.endpoint(), "maxSessions": 7}),
        )
        .await;
    let added = added.assert_ok(201);
    assert_eq!(added["id"], "w-add");
    assert_eq!(added["maxSessions"], 7);
    app.post(
        "/api/v1/workers",
        token,
        json!({"endpoint": "http://127.0.0.1:1"}),
    )
    .await
    .assert_error(409, "WORKER_UNREACHABLE");
    let probe = app
        .post("/api/v1/workers/w-add/test", token, json!({}))
        .await;
    let probe = probe.assert_ok(200);
    assert_eq!(probe["reachable"], true);
    assert_eq!(probe["health"]["workerId"], "w-add");
    let updated = app
        .put(
            "/api/v1/workers/w-add",
            token,
            json!({"maxSessions": 3, "description": "rack 2"}),
        )
        .await;
    let updated = updated.assert_ok(200);
    assert_eq!(updated["maxSessions"], 3);
    assert_eq!(updated["description"], "rack 2");
    app.put("/api/v1/workers/w-add", token, json!({"maxSessions": 0}))
        .await
        .assert_error(400, "VALIDATION_ERROR");
    app.get("/api/v1/workers/nope", token)
        .await
        .assert_error(404, "NOT_FOUND");
    w.kill().await;
    let dead = app
        .post("/api/v1/workers/w-add/test", token, json!({}))
        .await;
    assert_eq!(dead.assert_ok(200)["reachable"], false);
    app.stop().await;
}
