//! Nothing a worker sends can stop the pipeline or get a 5xx (issue 15): hostile events in the
//! log are set aside on the dead-letter topics and the partitions move on, before and after a
//! restart; worker routes refuse control characters with `400` naming the field; heartbeats
//! take any mix of missing and out-of-range metrics; a QR comes only from the session's owner;
//! worker registration takes `scheme://host:port` only.

use std::time::{Duration, Instant};

use consumers::SourceEvent;
use producers::{EventEnvelope, OutboundEnvelope, WorkerEvent};
use serde_json::{Value, json};
use wa_gateway::domain::{MessageStatus, now_ms};
use wa_gateway::sim::{SimWorker, SimWorkerConfig};
use wa_gateway::store::NewOutboundMessage;

use crate::common::{Answer, Backend, Login, PIPELINE_ENV, TestApp, wait_for};
use crate::pipeline_tests;

pipeline_tests!(
    poison_events_are_set_aside_and_statuses_keep_flowing,
    hostile_outbound_records_are_set_aside,
);

/// The worker-route tests need no Kafka: SQLite and PostgreSQL only.
mod edge {
    use crate::backend_tests;
    use crate::common::Backend;

    backend_tests!(
        sent_outcomes_the_store_refuses_lose_only_whatsapps_id,
        heartbeats_with_and_without_metrics_share_a_connection,
        a_thousand_random_heartbeats_then_normal_ones_all_200,
        worker_routes_refuse_control_characters_with_400_naming_the_field,
        a_qr_comes_only_from_the_sessions_owner,
        worker_registration_takes_scheme_host_and_port_only,
    );

    async fn a_thousand_random_heartbeats_then_normal_ones_all_200(backend: Backend) {
        super::a_thousand_random_heartbeats_then_normal_ones_all_200(backend).await;
    }

    async fn sent_outcomes_the_store_refuses_lose_only_whatsapps_id(backend: Backend) {
        super::sent_outcomes_the_store_refuses_lose_only_whatsapps_id(backend).await;
    }

    async fn heartbeats_with_and_without_metrics_share_a_connection(backend: Backend) {
        super::heartbeats_with_and_without_metrics_share_a_connection(backend).await;
    }

    async fn worker_routes_refuse_control_characters_with_400_naming_the_field(backend: Backend) {
        super::worker_routes_refuse_control_characters_with_400_naming_the_field(backend).await;
    }

    async fn a_qr_comes_only_from_the_sessions_owner(backend: Backend) {
        super::a_qr_comes_only_from_the_sessions_owner(backend).await;
    }

    async fn worker_registration_takes_scheme_host_and_port_only(backend: Backend) {
        super::worker_registration_takes_scheme_host_and_port_only(backend).await;
    }
}

fn token(app: &TestApp) -> String {
    app.context.config.worker_auth_token.expose().clone()
}

/// A worker-route call with the worker token.
async fn worker_call(app: &TestApp, method: reqwest::Method, path: &str, body: Value) -> Answer {
    app.send(
        app.client
            .request(method, app.url(path))
            .bearer_auth(token(app))
            .json(&body),
    )
    .await
}

fn dead_letters(app: &TestApp, consumer: &str, reason: &str) -> u64 {
    app.context
        .metrics
        .dead_letters_total
        .with_label_values(&[consumer, reason])
        .get()
}

fn all_dead_letters(app: &TestApp, consumer: &str) -> u64 {
    ["undecodable", "invalid", "rejected", "unapplicable"]
        .iter()
        .map(|reason| dead_letters(app, consumer, reason))
        .sum()
}

/// A customer with a session (not placed on any worker: the events consumer does not need one).
async fn tenant(app: &TestApp, name: &str) -> (Login, String) {
    let login = app
        .register(
            name,
            &format!("{name}-{}@example.com", uuid::Uuid::new_v4().simple()),
            "tenant-pass-1",
        )
        .await;
    let session = format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    app.post(
        "/api/v1/sessions",
        Some(&login.access_token),
        json!({"name": session, "sessionId": session}),
    )
    .await
    .assert_ok(201);
    (login, session)
}

/// Records PENDING outbound messages as the delivery consumer would.
async fn outbound(app: &TestApp, login: &Login, session: &str, ids: &[&str]) {
    let rows: Vec<NewOutboundMessage> = ids
        .iter()
        .map(|id| NewOutboundMessage {
            id: (*id).to_owned(),
            user_id: login.user_id.clone(),
            session_id: session.to_owned(),
            message_type: "TEXT",
            remote_jid: "6281234567890@s.whatsapp.net".to_owned(),
            content: "{}".to_owned(),
            idempotency_key: None,
            accepted_at: now_ms(),
        })
        .collect();
    app.context
        .store
        .insert_outbound_messages(&rows)
        .await
        .unwrap();
}

async fn status_of(app: &TestApp, login: &Login, id: &str) -> MessageStatus {
    app.context
        .store
        .message_for_user(&login.user_id, id)
        .await
        .unwrap()
        .status
}

fn status_event(session: &str, id: &str, status: &str, error: Option<&str>) -> (String, Vec<u8>) {
    let event = EventEnvelope::new(
        session,
        now_ms(),
        WorkerEvent::MessageStatus {
            message_id: id.to_owned(),
            status: status.to_owned(),
            error_message: error.map(str::to_owned),
            delivered_at: None,
            read_at: None,
            whatsapp_message_id: None,
            attempts: None,
        },
    );
    (session.to_owned(), event.encode())
}

/// Every record of a dead-letter topic, read from the start by a group of its own.
async fn read_dead_letters(app: &TestApp, topic: &str, expected: usize) -> Vec<Value> {
    let group = format!("dlq-check-{}", uuid::Uuid::new_v4().simple());
    let mut source = app.context.pipeline.source(&group, topic, &group).unwrap();
    let mut letters = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while letters.len() < expected {
        assert!(
            Instant::now() < deadline,
            "{} of {expected} dead letters on {topic}: {letters:?}",
            letters.len()
        );
        if let SourceEvent::Records(records) =
            source.next(100, Duration::from_millis(200)).await.unwrap()
        {
            for record in records {
                letters.push(serde_json::from_slice(&record.value).unwrap());
            }
        }
    }
    letters
}

/// A message-status callback, and how long until the store shows its status.
async fn status_flows(app: &TestApp, login: &Login, session: &str, id: &str, status: &str) {
    let sent = Instant::now();
    worker_call(
        app,
        reqwest::Method::POST,
        "/api/webhooks/message-status",
        json!({"sessionId": session, "messageId": id, "status": status,
               "timestamp": "2026-01-01T00:00:00Z"}),
    )
    .await
    .assert_ok(200);
    let wanted: MessageStatus = status.parse().unwrap();
    wait_for(
        Duration::from_secs(30),
        &format!("{id} {status}"),
        || async { status_of(app, login, id).await == wanted },
    )
    .await;
    let took = sent.elapsed();
    eprintln!("{status} of {id} applied {took:?} after its callback");
    assert!(
        took < Duration::from_secs(1),
        "{id} took {took:?} to become {status}"
    );
}

/// The poison callback (a NUL in `messageId`) and other hostile events, written into
/// the events log beside good ones of other tenants: every good one is applied, each hostile
/// one is set aside with its reason (on PostgreSQL a NUL in an error message is refused by the
/// store: only that one event is set aside, not its turn), and statuses keep flowing within a
/// second, before and after a restart, which does not meet the poison again.
async fn poison_events_are_set_aside_and_statuses_keep_flowing(backend: Backend) {
    let app = TestApp::spawn_with(backend, PIPELINE_ENV).await;
    let (attacker, attacker_session) = tenant(&app, "attacker").await;
    let (victim, victim_session) = tenant(&app, "victim").await;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let [a1, a2, b1, b2, b3, b4] =
        ["a1", "a2", "b1", "b2", "b3", "b4"].map(|name| format!("{name}-{suffix}"));
    outbound(&app, &attacker, &attacker_session, &[&a1, &a2]).await;
    outbound(&app, &victim, &victim_session, &[&b1, &b2, &b3, &b4]).await;

    // The edge refuses the poison callback itself, naming the field.
    let refused = worker_call(
        &app,
        reqwest::Method::POST,
        "/api/webhooks/message-status",
        json!({"sessionId": attacker_session, "messageId": "poison\u{0}id", "status": "READ"}),
    )
    .await;
    refused.assert_error(400, "VALIDATION_ERROR");
    assert_eq!(refused.body["error"]["details"]["field"], "messageId");

    // What is already in the log (from an older build, another producer) must not stop anyone.
    let received = EventEnvelope::new(
        attacker_session.as_str(),
        now_ms(),
        WorkerEvent::MessageReceived {
            message_id: format!("in-{suffix}"),
            from: "6281234567890@s.whatsapp.net".to_owned(),
            message_type: "BOGUS".to_owned(),
            body: json!({"message": "hi"}),
        },
    );
    let records = vec![
        status_event(&victim_session, &b1, "DELIVERED", None),
        status_event(&attacker_session, "poison\u{0}id", "READ", None),
        status_event(&attacker_session, &a1, "FAILED", Some("bad\u{0}reason")),
        status_event(&attacker_session, &a2, "DELIVERED", None),
        (
            attacker_session.clone(),
            b"not an envelope\x00\xff".to_vec(),
        ),
        status_event(&attacker_session, &a2, "EXPLODED", None),
        (attacker_session.clone(), received.encode()),
        status_event(&victim_session, &b2, "DELIVERED", None),
    ];
    let topics = app.context.pipeline.topics();
    app.context
        .pipeline
        .producer()
        .append_batch(&topics.events, records)
        .await
        .unwrap();
    // On PostgreSQL the store refuses the NUL in the error message; SQLite keeps it.
    let refused_by_store: u64 = if backend == Backend::Sqlite { 1 } else { 2 };
    // (On Kafka the two sessions' partitions may come in separate reads.)
    wait_for(
        Duration::from_secs(30),
        "the hostile events set aside, the good ones applied",
        || async {
            dead_letters(&app, "events", "rejected") == refused_by_store
                && dead_letters(&app, "events", "invalid") == 2
                && dead_letters(&app, "events", "undecodable") == 1
                && status_of(&app, &victim, &b1).await == MessageStatus::Delivered
                && status_of(&app, &victim, &b2).await == MessageStatus::Delivered
        },
    )
    .await;
    // a2 shares its turn (and on PostgreSQL its refused transaction) with a1.
    assert_eq!(
        status_of(&app, &attacker, &a2).await,
        MessageStatus::Delivered
    );
    let a1_status = status_of(&app, &attacker, &a1).await;
    if backend == Backend::Sqlite {
        assert_eq!(a1_status, MessageStatus::Failed);
    } else {
        assert_eq!(a1_status, MessageStatus::Pending);
    }
    status_flows(&app, &victim, &victim_session, &b3, "READ").await;

    // The dead letters carry the reason and the record as it was.
    let letters = read_dead_letters(
        &app,
        &topics.event_dead_letters,
        3 + refused_by_store as usize,
    )
    .await;
    let reasons: Vec<&str> = letters
        .iter()
        .map(|letter| letter["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("messageId") && r.contains("U+0000")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("status")), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("the store refused it")),
        "{reasons:?}"
    );
    assert!(
        letters
            .iter()
            .all(|letter| letter["raw"].is_string() && letter["source"]["offset"].is_i64()),
        "{letters:?}"
    );

    // After a restart the partitions start past the poison: nothing is set aside again, and
    // statuses flow.
    let app = app.restart_after(Duration::from_millis(200)).await;
    wait_for(
        Duration::from_secs(30),
        "the events consumer after the restart",
        || {
            let app = &app;
            let victim = &victim;
            let victim_session = &victim_session;
            let b4 = &b4;
            async move {
                worker_call(
                    app,
                    reqwest::Method::POST,
                    "/api/webhooks/message-status",
                    json!({"sessionId": victim_session, "messageId": b4, "status": "DELIVERED"}),
                )
                .await
                .assert_ok(200);
                tokio::time::sleep(Duration::from_millis(200)).await;
                status_of(app, victim, b4).await == MessageStatus::Delivered
            }
        },
    )
    .await;
    status_flows(&app, &victim, &victim_session, &b4, "READ").await;
    status_flows(&app, &victim, &victim_session, &b1, "READ").await;
    assert_eq!(all_dead_letters(&app, "events"), 0);
    app.stop().await;
}

/// Outbound records the delivery consumer cannot use (undecodable, an id with a NUL, a user
/// the store does not know) are set aside in the same read as a good one, which is recorded.
async fn hostile_outbound_records_are_set_aside(backend: Backend) {
    let app = TestApp::spawn_with(backend, PIPELINE_ENV).await;
    let (login, session) = tenant(&app, "sender").await;
    let good = format!("good-{}", uuid::Uuid::new_v4().simple());
    let envelope = |id: &str, user: &str| {
        let envelope = OutboundEnvelope::new(
            id,
            user,
            session.as_str(),
            "text",
            json!({"to": "6281234567890@s.whatsapp.net", "type": "text", "message": "hi"}),
            now_ms(),
        );
        (session.clone(), envelope.encode())
    };
    let records = vec![
        envelope("poison\u{0}id", &login.user_id),
        (session.clone(), b"\x00garbage".to_vec()),
        envelope(
            &format!("orphan-{}", uuid::Uuid::new_v4().simple()),
            "no-such-user",
        ),
        envelope(&good, &login.user_id),
    ];
    let topics = app.context.pipeline.topics();
    app.context
        .pipeline
        .producer()
        .append_batch(&topics.outbound, records)
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(30),
        "the hostile records set aside",
        || async {
            dead_letters(&app, "delivery", "invalid") == 1
                && dead_letters(&app, "delivery", "undecodable") == 1
                && dead_letters(&app, "delivery", "rejected") == 1
        },
    )
    .await;
    wait_for(
        Duration::from_secs(10),
        "the good message recorded",
        || async {
            app.context
                .store
                .message_for_user(&login.user_id, &good)
                .await
                .is_ok()
        },
    )
    .await;
    let letters = read_dead_letters(&app, &topics.dead_letters, 3).await;
    assert!(
        letters.iter().any(|l| l["reason"]
            .as_str()
            .unwrap()
            .contains("the store refused it")),
        "{letters:?}"
    );
    app.stop().await;
}

/// A worker's `2xx` whose WhatsApp id the store refuses (a NUL, on PostgreSQL) is still recorded
/// as SENT, without that id, and the other answers of its statement keep theirs: the delivery
/// does not retry the whole forever (every session's next message waits for it).
async fn sent_outcomes_the_store_refuses_lose_only_whatsapps_id(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (login, session) = tenant(&app, "sent").await;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let [m1, m2] = ["m1", "m2"].map(|name| format!("{name}-{suffix}"));
    outbound(&app, &login, &session, &[&m1, &m2]).await;
    let answer = |id: &str, whatsapp: &str| wa_gateway::store::SentAnswer {
        message_id: id.to_owned(),
        worker_message_id: Some(whatsapp.to_owned()),
        attempts: 1,
        at: now_ms(),
    };
    app.context
        .store
        .record_sent(&[answer(&m1, "WA\u{0}1"), answer(&m2, "WA2")])
        .await
        .unwrap();
    let first = app
        .context
        .store
        .message_for_user(&login.user_id, &m1)
        .await
        .unwrap();
    let second = app
        .context
        .store
        .message_for_user(&login.user_id, &m2)
        .await
        .unwrap();
    assert_eq!(first.status, MessageStatus::Sent);
    assert_eq!(second.status, MessageStatus::Sent);
    assert_eq!(second.worker_message_id.as_deref(), Some("WA2"));
    if backend != Backend::Sqlite {
        assert_eq!(first.worker_message_id, None);
    }
    app.stop().await;
}

/// A tiny xorshift: the same "random" heartbeats on every run.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % sides as u64) as usize
    }
}

/// A worker that only answers its health probe, registered under `id`.
async fn registered_worker(app: &TestApp, id: &str) -> SimWorker {
    let mut config = SimWorkerConfig::new(app.base_url.clone(), id, token(app));
    // Its own heartbeats stay out of the way of the test's.
    config.heartbeat_interval = Duration::from_secs(3600);
    config.register_retry_interval = Duration::from_millis(200);
    config.quirks = crate::common::process::sim_quirks();
    let worker = SimWorker::start(config).await.unwrap();
    wait_for(Duration::from_secs(10), "worker registration", || async {
        app.context.store.worker_by_id(id).await.is_ok()
    })
    .await;
    worker
}

/// The store records heartbeats with any mix of missing metrics, one after another on the
/// same pooled connection (a one-connection pool makes sure of it): a statement first run
/// with a metric missing must not refuse it present later.
async fn heartbeats_with_and_without_metrics_share_a_connection(backend: Backend) {
    let store = crate::common::TestStore::new(backend).await;
    let store = &store.store;
    store
        .upsert_worker(&wa_gateway::store::WorkerRegistration {
            id: "w-1",
            endpoint: "http://127.0.0.1:3001",
            max_sessions: 5,
            description: None,
            version: None,
            environment: None,
        })
        .await
        .unwrap();
    let none = wa_gateway::store::WorkerMetricsSample::default();
    let full = wa_gateway::store::WorkerMetricsSample {
        cpu_usage: Some(40.5),
        memory_usage: Some(0.5),
        uptime_seconds: Some(7),
        message_count: Some(3),
        total_sessions: Some(3_000_000_000),
        active_sessions: Some(2),
    };
    let partial = wa_gateway::store::WorkerMetricsSample {
        memory_usage: Some(0.25),
        active_sessions: Some(1),
        ..Default::default()
    };
    for sample in [&none, &full, &partial, &none, &full] {
        assert!(store.record_heartbeat("w-1", sample).await.unwrap());
    }
    let worker = store.worker_by_id("w-1").await.unwrap();
    assert_eq!(worker.cpu_usage, Some(40.5));
    assert_eq!(worker.uptime_seconds, Some(7));
    assert_eq!(store.count_worker_metrics("w-1").await.unwrap(), 5);
}

/// A thousand heartbeats with random metrics (missing, null, negative, huge, fractional,
/// words, objects): never a 5xx, a `400` only for a value that is not a number; then normal
/// heartbeats are all `200` (on PostgreSQL, missing metrics used to leave pooled connections
/// refusing every later heartbeat), and values out of range were clamped.
async fn a_thousand_random_heartbeats_then_normal_ones_all_200(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let worker_id = format!("w-beat-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let worker = registered_worker(&app, &worker_id).await;
    let path = format!("/api/workers/{worker_id}/heartbeat");
    let values = [
        json!(null),
        json!(0),
        json!(-1),
        json!(3_000_000_000_i64),
        json!(i64::MAX),
        json!(u64::MAX),
        json!(-9_223_372_036_854_775_808_i64),
        json!(1e300),
        json!(-1e300),
        json!(1e-300),
        json!(42.5),
        json!(0.999_999),
        json!("NaN"),
        json!("45"),
        json!("high"),
        json!(true),
        json!({}),
        json!([1]),
    ];
    let fields = [
        "cpuUsage",
        "memoryUsage",
        "uptime",
        "messageCount",
        "totalSessions",
        "activeSessions",
    ];
    let mut dice = Dice(0x9E37_79B9_7F4A_7C15);
    // First heartbeats without metrics, sixteen at a time so they open and prepare their
    // statements on many pooled connections (the PostgreSQL failure was a statement prepared
    // for a missing metric refusing a present one later on the same connection); then the
    // random ones, as concurrently.
    let mut bodies: Vec<Value> = (0..48)
        .map(|n| match n % 3 {
            0 => json!({}),
            1 => json!({"metrics": {"uptime": n}}),
            _ => json!({"sessions": [], "metrics": {"activeSessions": null, "memoryUsage": 1}}),
        })
        .collect();
    bodies.extend((0..1000).map(|_| {
        let mut metrics = serde_json::Map::new();
        for field in fields {
            // Missing a third of the time.
            if dice.roll(3) > 0 {
                metrics.insert(field.to_owned(), values[dice.roll(values.len())].clone());
            }
        }
        match dice.roll(10) {
            0 => json!({}),
            1 => json!({"metrics": null, "sessions": null}),
            _ => json!({"sessions": [], "metrics": metrics}),
        }
    }));
    let (mut ok, mut refused) = (0, 0);
    for chunk in bodies.chunks(16) {
        let answers = futures_util::future::join_all(
            chunk
                .iter()
                .map(|body| worker_call(&app, reqwest::Method::PUT, &path, body.clone())),
        )
        .await;
        for (body, answer) in chunk.iter().zip(answers) {
            match answer.status.as_u16() {
                200 => ok += 1,
                400 => {
                    refused += 1;
                    assert_eq!(answer.error_code(), "VALIDATION_ERROR", "{body}");
                    let field = answer.body["error"]["details"]["field"].as_str().unwrap();
                    assert!(fields.contains(&field), "{field}: {body}");
                    assert!(
                        body["metrics"][field].is_string()
                            || body["metrics"][field].is_boolean()
                            || body["metrics"][field].is_object()
                            || body["metrics"][field].is_array(),
                        "{body} refused: {}",
                        answer.body
                    );
                }
                other => panic!("{other} for {body}: {}", answer.body),
            }
        }
    }
    assert!(
        ok > 100 && refused > 100,
        "{ok} accepted, {refused} refused"
    );
    // The case on its own, and the old-style heartbeat.
    worker_call(
        &app,
        reqwest::Method::PUT,
        &path,
        json!({"metrics": {"activeSessions": 3_000_000_000_i64, "cpuUsage": -5, "uptime": 1e300}}),
    )
    .await
    .assert_ok(200);
    worker_call(
        &app,
        reqwest::Method::POST,
        "/api/webhooks/worker-heartbeat",
        json!({"workerId": worker_id, "sessionCount": 3_000_000_000_i64, "cpuUsage": null}),
    )
    .await
    .assert_ok(200);
    let stored = app.context.store.worker_by_id(&worker_id).await.unwrap();
    assert_eq!(stored.cpu_usage, Some(0.0));
    assert_eq!(stored.uptime_seconds, Some(100 * 366 * 24 * 3600));
    // Normal heartbeats, sixteen at a time (through every pooled connection), then one last.
    for round in 0..4 {
        let answers = futures_util::future::join_all((0..16).map(|n| {
            worker_call(
                &app,
                reqwest::Method::PUT,
                &path,
                json!({"sessions": [], "metrics": {"cpuUsage": 40.5, "memoryUsage": 0.5,
                       "uptime": round * 16 + n, "messageCount": n, "totalSessions": 1,
                       "activeSessions": 1}}),
            )
        }))
        .await;
        for answer in answers {
            answer.assert_ok(200);
        }
    }
    worker_call(
        &app,
        reqwest::Method::PUT,
        &path,
        json!({"sessions": [], "metrics": {"cpuUsage": 40.5, "memoryUsage": 0.5, "uptime": 49,
               "messageCount": 1, "totalSessions": 1, "activeSessions": 1}}),
    )
    .await
    .assert_ok(200);
    let stored = app.context.store.worker_by_id(&worker_id).await.unwrap();
    assert_eq!(stored.cpu_usage, Some(40.5));
    assert_eq!(stored.uptime_seconds, Some(49));
    worker.kill().await;
    app.stop().await;
}

/// Every worker route refuses NUL and other control characters where the field does not allow
/// them, and over-long values, with `400` naming the field; nothing is changed and nothing is
/// a 5xx.
async fn worker_routes_refuse_control_characters_with_400_naming_the_field(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let worker_id = format!("w-text-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let worker = registered_worker(&app, &worker_id).await;
    let (_, session) = tenant(&app, "texts").await;
    let long = "x".repeat(300);
    let post = reqwest::Method::POST;
    let put = reqwest::Method::PUT;
    let cases: Vec<(reqwest::Method, String, Value, &str)> = vec![
        (
            post.clone(),
            "/api/workers/register".into(),
            json!({"workerId": "w\u{0}x", "endpoint": "http://127.0.0.1:1"}),
            "workerId",
        ),
        (
            post.clone(),
            "/api/workers/register".into(),
            json!({"workerId": worker_id, "endpoint": "http://127.0.0.1:1", "description": "a\u{0}b"}),
            "description",
        ),
        (
            post.clone(),
            "/api/workers/register".into(),
            json!({"workerId": worker_id, "endpoint": "http://127.0.0.1:1\u{0}"}),
            "endpoint",
        ),
        (
            put.clone(),
            format!("/api/workers/{worker_id}/heartbeat"),
            json!({"sessions": [{"sessionId": session, "status": "CONNECTED", "displayName": "A\u{0}"}]}),
            "displayName",
        ),
        (
            put.clone(),
            format!("/api/workers/{worker_id}/heartbeat"),
            json!({"sessions": [{"sessionId": "s\u{0}ss", "status": "CONNECTED"}]}),
            "sessionId",
        ),
        (
            put.clone(),
            format!("/api/workers/{worker_id}/heartbeat"),
            json!({"sessions": [{"sessionId": session, "phoneNumber": "62\u{1b}[31m"}]}),
            "phoneNumber",
        ),
        (
            post.clone(),
            "/api/webhooks/worker-heartbeat".into(),
            json!({"workerId": "w\u{0}", "sessionCount": 1}),
            "workerId",
        ),
        (
            post.clone(),
            format!("/api/workers/{worker_id}/sessions/recovery-status"),
            json!({"recoveryResults": [{"sessionId": session, "status": "SUCC\u{0}ESS"}]}),
            "status",
        ),
        (
            reqwest::Method::DELETE,
            "/api/workers/unregister".into(),
            json!({"workerId": "w\u{0}"}),
            "workerId",
        ),
        (
            post.clone(),
            "/api/webhooks/session-status".into(),
            json!({"sessionId": session, "status": "DISCONNECTED", "reason": "r\u{0}"}),
            "reason",
        ),
        (
            post.clone(),
            "/api/webhooks/session-status".into(),
            json!({"sessionId": session, "status": "QR_REQUIRED", "qrCode": "2@a\nb"}),
            "qrCode",
        ),
        (
            post.clone(),
            "/api/webhooks/message-status".into(),
            json!({"sessionId": session, "messageId": "m\u{0}", "status": "READ"}),
            "messageId",
        ),
        (
            post.clone(),
            "/api/webhooks/message-status".into(),
            json!({"sessionId": session, "messageId": long, "status": "READ"}),
            "messageId",
        ),
        (
            post.clone(),
            "/api/webhooks/message-status".into(),
            json!({"sessionId": session, "messageId": "m1", "status": "FAILED", "errorMessage": "e\u{0}"}),
            "errorMessage",
        ),
        (
            post.clone(),
            "/api/webhooks/message-received".into(),
            json!({"sessionId": session, "messageId": "m1", "from": "62\u{0}", "type": "text"}),
            "from",
        ),
        (
            post.clone(),
            "/api/webhooks/message-received".into(),
            json!({"sessionId": session, "messageId": "m1", "from": "62", "type": "text",
                   "message": {"text": "hi\u{0}"}}),
            "message",
        ),
    ];
    for (method, path, body, field) in cases {
        let answer = worker_call(&app, method.clone(), &path, body.clone()).await;
        answer.assert_error(400, "VALIDATION_ERROR");
        assert_eq!(
            answer.body["error"]["details"]["field"], field,
            "{method} {path} {body}: {}",
            answer.body
        );
    }
    // A NUL in a path id, percent-encoded: refused or unknown, never a 5xx.
    for path in [
        "/api/workers/w%00x/sessions/assigned",
        "/api/v1/workers/w%00x/sessions/assigned",
    ] {
        let answer = app
            .send(app.client.get(app.url(path)).bearer_auth(token(&app)))
            .await;
        assert!(
            matches!(answer.status.as_u16(), 400 | 404),
            "{path}: {} {}",
            answer.status,
            answer.body
        );
    }
    let answer = worker_call(
        &app,
        put.clone(),
        "/api/workers/w%00x/heartbeat",
        json!({"metrics": {"cpuUsage": 1}}),
    )
    .await;
    assert!(
        matches!(answer.status.as_u16(), 400 | 404),
        "{}",
        answer.body
    );
    // Line breaks and tabs are text where text is free.
    worker_call(
        &app,
        post,
        "/api/webhooks/message-received",
        json!({"sessionId": session, "messageId": "m-ok", "from": "6281234567890@s.whatsapp.net",
               "type": "text", "message": "two\nlines\tand a tab"}),
    )
    .await
    .assert_ok(200);
    worker.kill().await;
    app.stop().await;
}

/// A `session-status` that does not name the session's owner does not set its QR (the real
/// worker names itself on QR_REQUIRED); the owner's does.
async fn a_qr_comes_only_from_the_sessions_owner(backend: Backend) {
    // A heartbeat timeout longer than the test: this worker does not heartbeat (below), and
    // answering health probes does not keep a worker ONLINE.
    let mut env = PIPELINE_ENV.to_vec();
    env.retain(|(name, _)| *name != "WORKER_HEARTBEAT_TIMEOUT_MS");
    env.push(("WORKER_HEARTBEAT_TIMEOUT_MS", "60000"));
    let app = TestApp::spawn_with(backend, &env).await;
    let worker_id = format!("w-qr-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut config = SimWorkerConfig::new(app.base_url.clone(), &worker_id, token(&app));
    // No heartbeats: one listing the session CONNECTED would clear a QR under the test.
    config.heartbeat_interval = Duration::from_secs(3600);
    config.auto_connect = Duration::from_millis(50);
    config.register_retry_interval = Duration::from_millis(200);
    config.quirks = crate::common::process::sim_quirks();
    let worker = SimWorker::start(config).await.unwrap();
    wait_for(Duration::from_secs(10), "worker registration", || async {
        app.context.store.worker_by_id(&worker_id).await.is_ok()
    })
    .await;
    let (login, session) = tenant(&app, "qr").await;
    app.post(
        &format!("/api/v1/sessions/{session}/connect"),
        Some(&login.access_token),
        json!({}),
    )
    .await
    .assert_ok(200);
    wait_for(Duration::from_secs(15), "CONNECTED", || async {
        app.context
            .store
            .session_by_id(&session)
            .await
            .is_ok_and(|s| s.status.as_str() == "CONNECTED")
    })
    .await;
    // The sim worker keeps the session connected; nothing else will set a QR meanwhile.
    let anonymous = worker_call(
        &app,
        reqwest::Method::POST,
        "/api/webhooks/session-status",
        json!({"sessionId": session, "status": "QR_REQUIRED", "qrCode": "2@attacker-qr"}),
    )
    .await;
    anonymous.assert_ok(200);
    let after = app.context.store.session_by_id(&session).await.unwrap();
    assert_eq!(after.status.as_str(), "QR_REQUIRED");
    assert_eq!(after.qr_code, None, "a QR from a callback naming no worker");
    let stranger = worker_call(
        &app,
        reqwest::Method::POST,
        "/api/webhooks/session-status",
        json!({"sessionId": session, "status": "QR_REQUIRED", "qrCode": "2@stranger-qr",
               "workerId": "w-stranger"}),
    )
    .await;
    assert_eq!(stranger.status.as_u16(), 409, "{}", stranger.body);
    assert_eq!(
        app.context
            .store
            .session_by_id(&session)
            .await
            .unwrap()
            .qr_code,
        None
    );
    worker_call(
        &app,
        reqwest::Method::POST,
        "/api/webhooks/session-status",
        json!({"sessionId": session, "status": "QR_REQUIRED", "qrCode": "2@owner-qr",
               "workerId": worker_id}),
    )
    .await
    .assert_ok(200);
    assert_eq!(
        app.context
            .store
            .session_by_id(&session)
            .await
            .unwrap()
            .qr_code
            .as_deref(),
        Some("2@owner-qr")
    );
    worker.kill().await;
    app.stop().await;
}

/// Registration takes `scheme://host:port` only, refuses the gateway's own address, and says
/// nothing about why a probe failed.
async fn worker_registration_takes_scheme_host_and_port_only(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let port = app.base_url.rsplit(':').next().unwrap().to_owned();
    let register = |endpoint: String| {
        let app = &app;
        async move {
            worker_call(
                app,
                reqwest::Method::POST,
                "/api/workers/register",
                json!({"workerId": "w-reg", "endpoint": endpoint, "maxSessions": 5}),
            )
            .await
        }
    };
    for endpoint in [
        "http://127.0.0.1:3001/api".to_owned(),
        "http://127.0.0.1:3001/health?probe=1".to_owned(),
        "http://127.0.0.1:3001#x".to_owned(),
        "http://admin:secret@127.0.0.1:3001".to_owned(),
        "gopher://127.0.0.1:3001".to_owned(),
        app.base_url.clone(),
        format!("http://localhost:{port}"),
        format!("http://0.0.0.0:{port}/"),
    ] {
        let answer = register(endpoint.clone()).await;
        answer.assert_error(400, "VALIDATION_ERROR");
        assert_eq!(
            answer.body["error"]["details"]["field"], "endpoint",
            "{endpoint}: {}",
            answer.body
        );
    }
    // A closed port: 409 WORKER_UNREACHABLE, and not a word about the connection.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let answer = register(format!("http://127.0.0.1:{closed_port}")).await;
    answer.assert_error(409, "WORKER_UNREACHABLE");
    let message = answer.body["error"]["message"]
        .as_str()
        .unwrap()
        .to_lowercase();
    for leak in ["refused", "connect", "error", "tcp", "os "] {
        assert!(!message.contains(leak), "{message}");
    }
    assert!(app.context.store.worker_by_id("w-reg").await.is_err());
    app.stop().await;
}
