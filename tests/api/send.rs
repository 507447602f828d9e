//! The send pipeline end to end, on the embedded log (SQLite, and PostgreSQL + Redis) and on
//! Kafka: API-key ingress, quotas, idempotency, validation, per-session ordered delivery to
//! simulated workers (checked by `X-Message-Id`), failover mid-stream, status timelines.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wa_gateway::domain::SessionId;
use wa_gateway::send::{MessageIds, SendRequest};
use wa_gateway::sim::{SimWorker, SimWorkerConfig};
use wa_gateway::store::IdempotencyClaim;

use crate::common::{
    Answer, Backend, Login, PIPELINE_ENV, TestApp, metrics_text, start_registered_sim, wait_for,
};
use crate::pipeline_tests;

pipeline_tests!(
    sends_reach_their_worker_once_and_in_order,
    killed_worker_messages_wait_and_resume_in_order,
    basic_tier_101st_message_is_429,
    idempotent_replays_create_nothing,
    a_retry_takes_over_a_dead_claim_and_sends_once,
    statuses_flow_back_and_lists_page,
    undeliverable_messages_fail_after_the_bound,
    validation_errors_are_clear_4xx,
);

/// Two api processes sharing PostgreSQL and Redis enforce one quota between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_is_shared_by_two_api_processes() {
    quota_is_shared_by_api_processes(Backend::Postgres).await;
}

/// During an ingress burst delivery starts at most `DELIVERY_BURST_RATE` worker calls per
/// second and still makes progress; once the burst is over the backlog goes at full width, in
/// order. The burst is driven through the gateway's own pressure gauge (what the HTTP server
/// counts per client request), from a thread of its own so the test's runtime cannot starve
/// it; a short burst window keeps the upper bound meaningful on a slow machine: it can only
/// deliver less.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_steps_aside_during_an_ingress_burst_and_catches_up() {
    const RATE: usize = 5;
    let setup = setup(Backend::Sqlite, &[("DELIVERY_BURST_RATE", "5")], 1, 4).await;
    let (app, key) = (&setup.app, setup.key.as_str());
    let burst_over = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pressure_thread = {
        let context = app.context.clone();
        let burst_over = burst_over.clone();
        std::thread::spawn(move || {
            let pressure = &context.pressure;
            let _held: Vec<_> = (1..wa_gateway::priority::BURST_IN_FLIGHT)
                .map(|_| pressure.enter())
                .collect();
            // One more request comes and goes every 10 ms: saturation again and again.
            while !burst_over.load(std::sync::atomic::Ordering::Relaxed) {
                drop(pressure.enter());
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    wait_for(Duration::from_secs(5), "an ingress burst", || async {
        app.context.pressure.is_burst()
    })
    .await;

    let began = Instant::now();
    let mut expected: HashMap<String, Vec<String>> = HashMap::new();
    for session in &setup.sessions {
        let messages: Vec<Value> = (0..10)
            .map(|n| json!({"to": "081234567890", "message": format!("burst {n}")}))
            .collect();
        let answer = send(
            app,
            key,
            "/api/v1/external/send/bulk",
            json!({"sessionId": session, "messages": messages}),
        )
        .await;
        let ids = answer.assert_ok(202)["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["messageId"].as_str().unwrap().to_owned())
            .collect();
        expected.insert(session.clone(), ids);
    }
    let workers: Vec<&SimWorker> = setup.workers.iter().collect();
    // Progress during the burst, at no more than the burst rate.
    wait_for(
        Duration::from_secs(5),
        "a delivery during the burst",
        || async { !received(&workers).is_empty() },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let delivered: usize = received(&workers).values().map(Vec::len).sum();
    let allowed = (began.elapsed().as_secs_f64() * RATE as f64).ceil() as usize + 1;
    assert!(app.context.pressure.is_burst(), "the burst lapsed");
    assert!(
        delivered <= allowed,
        "{delivered} delivered during the burst, at most {allowed} allowed"
    );
    assert!(delivered < 40, "the burst held nothing back");

    // Over: the rest goes at full width (throttled it would need seconds), in order.
    burst_over.store(true, std::sync::atomic::Ordering::Relaxed);
    pressure_thread.join().unwrap();
    let ended = Instant::now();
    assert_delivered_in_order(&workers, &expected, Duration::from_secs(10)).await;
    let remaining = 40 - delivered;
    let throttled = Duration::from_secs_f64(remaining as f64 / RATE as f64);
    assert!(
        ended.elapsed() < throttled,
        "the backlog of {remaining} took {:?} after the burst",
        ended.elapsed()
    );
    for worker in setup.workers {
        worker.kill().await;
    }
    setup.app.stop().await;
}

/// A gateway, a customer with an API key, and connected sessions on simulated workers.
struct Setup {
    app: TestApp,
    login: Login,
    key: String,
    workers: Vec<SimWorker>,
    sessions: Vec<String>,
}

async fn setup(backend: Backend, env: &[(&str, &str)], workers: usize, sessions: usize) -> Setup {
    let mut all: Vec<(&str, &str)> = PIPELINE_ENV.to_vec();
    all.extend_from_slice(env);
    let app = TestApp::spawn_with(backend, &all).await;
    let login = app
        .register(
            "Customer",
            &format!("c{}@example.com", uuid::Uuid::new_v4().simple()),
            "customer-pass-1",
        )
        .await;
    let key = create_key(&app, &login, None).await;
    let mut started = Vec::new();
    for index in 0..workers {
        started.push(
            sim(
                &app,
                &format!("w{index}-{}", uuid::Uuid::new_v4().simple()),
                |_| {},
            )
            .await,
        );
    }
    let ids: Vec<String> = (0..sessions)
        .map(|i| format!("s{i}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]))
        .collect();
    for id in &ids {
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
    wait_for(Duration::from_secs(15), "sessions CONNECTED", || async {
        let listed = app.get("/api/v1/sessions", Some(&login.access_token)).await;
        listed.data().as_array().is_some_and(|all| {
            all.len() == ids.len() && all.iter().all(|s| s["status"] == "CONNECTED")
        })
    })
    .await;
    Setup {
        app,
        login,
        key,
        workers: started,
        sessions: ids,
    }
}

async fn create_key(app: &TestApp, login: &Login, session: Option<&str>) -> String {
    let mut body = json!({"name": "integration"});
    if let Some(session) = session {
        body["sessionId"] = json!(session);
    }
    let answer = app
        .post("/api/v1/users/api-keys", Some(&login.access_token), body)
        .await;
    answer.assert_ok(201)["key"].as_str().unwrap().to_owned()
}

async fn sim(app: &TestApp, id: &str, tweak: impl FnOnce(&mut SimWorkerConfig)) -> SimWorker {
    let mut config = SimWorkerConfig::new(
        app.base_url.clone(),
        id,
        app.context.config.worker_auth_token.expose().clone(),
    );
    config.heartbeat_interval = Duration::from_millis(300);
    config.auto_connect = Duration::from_millis(50);
    config.register_retry_interval = Duration::from_millis(200);
    config.quirks = crate::common::process::sim_quirks();
    tweak(&mut config);
    start_registered_sim(app, config).await
}

async fn send(app: &TestApp, key: &str, path: &str, body: Value) -> Answer {
    app.send(
        app.client
            .post(app.url(path))
            .header("X-API-Key", key)
            .json(&body),
    )
    .await
}

fn text(session: &str, to: &str, message: &str) -> Value {
    json!({"sessionId": session, "to": to, "message": message})
}

/// Every message id the workers received, by session, in arrival order.
fn received(workers: &[&SimWorker]) -> HashMap<String, Vec<String>> {
    let mut by_session: HashMap<String, Vec<String>> = HashMap::new();
    for worker in workers {
        for message in worker.messages() {
            if let Some(id) = message.message_id {
                by_session.entry(message.session_id).or_default().push(id);
            }
        }
    }
    by_session
}

/// Waits until the workers hold every expected id, then checks each arrived exactly once and in
/// the session's acceptance order.
async fn assert_delivered_in_order(
    workers: &[&SimWorker],
    expected: &HashMap<String, Vec<String>>,
    timeout: Duration,
) {
    let total: usize = expected.values().map(Vec::len).sum();
    wait_for(
        timeout,
        &format!("{total} messages at the workers"),
        || async { received(workers).values().map(Vec::len).sum::<usize>() >= total },
    )
    .await;
    // Give a duplicate the chance to show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = received(workers);
    for (session, ids) in expected {
        assert_eq!(
            got.get(session),
            Some(ids),
            "session {session}: order or exactly-once broken"
        );
    }
    assert_eq!(
        got.values().map(Vec::len).sum::<usize>(),
        total,
        "unexpected extra sends"
    );
}

// ----- tests -----------------------------------------------------------------------------------

async fn sends_reach_their_worker_once_and_in_order(backend: Backend) {
    let setup = setup(backend, &[], 2, 6).await;
    let (app, key) = (&setup.app, setup.key.as_str());
    let mut expected: HashMap<String, Vec<String>> = HashMap::new();
    // Single sends: sessions in parallel, each session's sends one after another.
    let singles = setup.sessions.iter().map(|session| async move {
        let mut ids = Vec::new();
        for n in 0..8 {
            let answer = send(
                app,
                key,
                "/api/v1/external/send",
                text(session, "+62 812-3456-7890", &format!("single {n}")),
            )
            .await;
            let data = answer.assert_ok(202);
            assert_eq!(data["status"], "PENDING");
            assert_eq!(data["to"], "6281234567890@s.whatsapp.net");
            assert!(answer.headers.contains_key("x-ratelimit-remaining"));
            ids.push(data["messageId"].as_str().unwrap().to_owned());
        }
        (session.clone(), ids)
    });
    for (session, ids) in futures_util::future::join_all(singles).await {
        expected.entry(session).or_default().extend(ids);
    }
    // Bulk: 50 per session, with the drop-in per-type route in between.
    for session in &setup.sessions {
        let messages: Vec<Value> = (0..50)
            .map(|n| json!({"to": "081234567890", "message": format!("bulk {n}")}))
            .collect();
        let answer = send(
            app,
            key,
            "/api/v1/external/send/bulk",
            json!({"sessionId": session, "messages": messages}),
        )
        .await;
        let data = answer.assert_ok(202);
        assert_eq!(data["accepted"], 50);
        assert_eq!(data["rejected"], 0);
        let ids = data["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["messageId"].as_str().unwrap().to_owned());
        expected.entry(session.clone()).or_default().extend(ids);
        let answer = send(
            app,
            key,
            "/api/v1/external/sendText",
            text(session, "6281234567890", "drop-in"),
        )
        .await;
        expected.entry(session.clone()).or_default().push(
            answer.assert_ok(202)["messageId"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let workers: Vec<&SimWorker> = setup.workers.iter().collect();
    assert_delivered_in_order(&workers, &expected, Duration::from_secs(30)).await;
    // Every message's way was timed, stage by stage (attempts may retry, so route and worker
    // count at least once per message).
    let total: usize = expected.values().map(Vec::len).sum();
    wait_for(Duration::from_secs(10), "every stage timed", || async {
        let metrics = metrics_text(app).await;
        let count = |stage: &str| {
            let prefix = format!("wa_gateway_delivery_stage_seconds_count{{stage=\"{stage}\"}} ");
            metrics
                .lines()
                .find_map(|line| line.strip_prefix(prefix.as_str()))
                .and_then(|value| value.parse::<usize>().ok())
                .unwrap_or(0)
        };
        ["read", "record", "queue"]
            .iter()
            .all(|stage| count(stage) == total)
            && ["route", "worker"]
                .iter()
                .all(|stage| count(stage) >= total)
    })
    .await;
    // The worker got exactly the protocol body.
    let sample = setup
        .workers
        .iter()
        .flat_map(SimWorker::messages)
        .next()
        .unwrap();
    assert_eq!(sample.body["to"], "6281234567890@s.whatsapp.net");
    assert_eq!(sample.body["type"], "text");
    for worker in setup.workers {
        worker.kill().await;
    }
    setup.app.stop().await;
}

async fn killed_worker_messages_wait_and_resume_in_order(backend: Backend) {
    let mut setup = setup(backend, &[], 2, 4).await;
    let (app, key) = (&setup.app, setup.key.clone());
    let victim = setup.workers.remove(0);
    let victim_sessions: HashSet<String> = victim
        .sessions()
        .into_iter()
        .map(|s| s.session_id)
        .collect();
    assert!(!victim_sessions.is_empty());
    let mut expected: HashMap<String, Vec<String>> = HashMap::new();
    let bulk = |session: &String, from: usize| {
        let messages: Vec<Value> = (from..from + 20)
            .map(|n| json!({"to": "6281234567890", "message": format!("m {n}")}))
            .collect();
        json!({"sessionId": session, "messages": messages})
    };
    // Kill the worker while its sessions have messages queued behind it.
    for session in &setup.sessions.clone() {
        let answer = send(app, &key, "/api/v1/external/send/bulk", bulk(session, 0)).await;
        let ids: Vec<String> = answer.assert_ok(202)["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["messageId"].as_str().unwrap().to_owned())
            .collect();
        expected.entry(session.clone()).or_default().extend(ids);
    }
    // What the victim accepted before it died, counted at the instant it dies.
    let before_kill = victim.kill().await;
    for session in &setup.sessions.clone() {
        let answer = send(app, &key, "/api/v1/external/send/bulk", bulk(session, 20)).await;
        let ids: Vec<String> = answer.assert_ok(202)["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["messageId"].as_str().unwrap().to_owned())
            .collect();
        expected.entry(session.clone()).or_default().extend(ids);
    }
    // After failover the survivor gets the rest of every session, in order; together with what
    // the victim got before it died nothing is missing and nothing is out of order.
    let survivor = &setup.workers[0];
    let total: usize = expected.values().map(Vec::len).sum();
    wait_for(
        Duration::from_secs(30),
        "every message delivered after failover",
        || async {
            let mut seen: HashSet<String> = before_kill
                .iter()
                .filter_map(|m| m.message_id.clone())
                .collect();
            seen.extend(survivor.messages().into_iter().filter_map(|m| m.message_id));
            seen.len() >= total
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got: HashMap<String, Vec<String>> = HashMap::new();
    for message in before_kill.into_iter().chain(survivor.messages()) {
        got.entry(message.session_id)
            .or_default()
            .push(message.message_id.unwrap());
    }
    for (session, ids) in &expected {
        let arrived = &got[session];
        // A message the victim took just before dying may come again on the survivor (its
        // answer was lost): at-least-once across a crash. Nothing else may repeat, and the order
        // of first arrivals is the acceptance order.
        let mut firsts = Vec::new();
        let mut seen = HashSet::new();
        for id in arrived {
            if seen.insert(id.clone()) {
                firsts.push(id.clone());
            }
        }
        assert_eq!(&firsts, ids, "session {session}: lost or out of order");
        assert!(
            arrived.len() - firsts.len() <= 1,
            "session {session}: more than the crash's one repeat"
        );
        if !victim_sessions.contains(session) {
            assert_eq!(
                arrived.len(),
                ids.len(),
                "an unaffected session saw a repeat"
            );
        }
    }
    for worker in setup.workers {
        worker.kill().await;
    }
    setup.app.stop().await;
}

async fn basic_tier_101st_message_is_429(backend: Backend) {
    // Default BASIC limits: 100 messages an hour.
    let setup = setup(
        backend,
        &[("BASIC_TIER_MAX_MESSAGES_PER_HOUR", "100")],
        1,
        1,
    )
    .await;
    let (app, key, session) = (&setup.app, setup.key.as_str(), setup.sessions[0].as_str());
    let messages: Vec<Value> = (0..99)
        .map(|n| json!({"to": "6281234567890", "message": format!("q {n}")}))
        .collect();
    let answer = send(
        app,
        key,
        "/api/v1/external/send/bulk",
        json!({"sessionId": session, "messages": messages}),
    )
    .await;
    answer.assert_ok(202);
    assert_eq!(answer.headers["x-ratelimit-limit"], "100");
    assert_eq!(answer.headers["x-ratelimit-remaining"], "1");
    let hundredth = send(
        app,
        key,
        "/api/v1/external/send",
        text(session, "6281234567890", "100th"),
    )
    .await;
    hundredth.assert_ok(202);
    assert_eq!(hundredth.headers["x-ratelimit-remaining"], "0");
    let refused = send(
        app,
        key,
        "/api/v1/external/send",
        text(session, "6281234567890", "101st"),
    )
    .await;
    refused.assert_error(429, "MESSAGE_QUOTA_EXCEEDED");
    let retry_after: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&retry_after));
    assert_eq!(refused.headers["x-ratelimit-remaining"], "0");
    assert!(refused.headers.contains_key("x-ratelimit-reset"));
    // A bulk request that does not fit is refused whole.
    let bulk = send(
        app,
        key,
        "/api/v1/external/send/bulk",
        json!({"sessionId": session, "messages": [{"to": "6281234567890", "message": "x"}]}),
    )
    .await;
    bulk.assert_error(429, "MESSAGE_QUOTA_EXCEEDED");
    assert!(bulk.headers.contains_key("retry-after"));
    // One larger than the hourly limit never fits: no Retry-After to wait for.
    let never: Vec<Value> = (0..101)
        .map(|n| json!({"to": "6281234567890", "message": format!("n {n}")}))
        .collect();
    let never = send(
        app,
        key,
        "/api/v1/external/send/bulk",
        json!({"sessionId": session, "messages": never}),
    )
    .await;
    never.assert_error(429, "MESSAGE_QUOTA_EXCEEDED");
    assert!(
        !never.headers.contains_key("retry-after"),
        "{:?}",
        never.headers
    );
    assert!(
        never.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("never fit"),
        "{}",
        never.body
    );
    // Exactly the 100 accepted messages reach the worker.
    let worker = &setup.workers[0];
    wait_for(Duration::from_secs(20), "100 deliveries", || async {
        worker.messages().len() >= 100
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(worker.messages().len(), 100);
    for worker in setup.workers {
        worker.kill().await;
    }
    setup.app.stop().await;
}

async fn quota_is_shared_by_api_processes(backend: Backend) {
    let setup = setup(
        backend,
        &[("BASIC_TIER_MAX_MESSAGES_PER_HOUR", "100")],
        1,
        1,
    )
    .await;
    let (first, key, session) = (&setup.app, setup.key.as_str(), setup.sessions[0].as_str());
    // A second api process on the same store (and, on PostgreSQL, the same Redis counters).
    let mut env: Vec<(String, String)> = PIPELINE_ENV
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    env.push(("BASIC_TIER_MAX_MESSAGES_PER_HOUR".into(), "100".into()));
    env.push((
        "DATABASE_URL".into(),
        first
            .context
            .config
            .database_url
            .as_ref()
            .unwrap()
            .expose()
            .clone(),
    ));
    env.push((
        "REDIS_KEY_PREFIX".into(),
        first.context.config.redis_key_prefix.clone(),
    ));
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let second = TestApp::spawn_with(backend, &env_refs).await;
    let messages: Vec<Value> = (0..60)
        .map(|n| json!({"to": "6281234567890", "message": format!("a {n}")}))
        .collect();
    send(
        first,
        key,
        "/api/v1/external/send/bulk",
        json!({"sessionId": session, "messages": messages}),
    )
    .await
    .assert_ok(202);
    let messages: Vec<Value> = (0..40)
        .map(|n| json!({"to": "6281234567890", "message": format!("b {n}")}))
        .collect();
    let on_second = send(
        &second,
        key,
        "/api/v1/external/send/bulk",
        json!({"sessionId": session, "messages": messages}),
    )
    .await;
    on_second.assert_ok(202);
    assert_eq!(on_second.headers["x-ratelimit-remaining"], "0");
    send(
        &second,
        key,
        "/api/v1/external/send",
        text(session, "6281234567890", "101st"),
    )
    .await
    .assert_error(429, "MESSAGE_QUOTA_EXCEEDED");
    send(
        first,
        key,
        "/api/v1/external/send",
        text(session, "6281234567890", "101st"),
    )
    .await
    .assert_error(429, "MESSAGE_QUOTA_EXCEEDED");
    second.stop().await;
    for worker in setup.workers {
        worker.kill().await;
    }
    setup.app.stop().await;
}

async fn idempotent_replays_create_nothing(backend: Backend) {
    let setup = setup(backend, &[], 1, 1).await;
    let (app, key, session) = (&setup.app, setup.key.as_str(), setup.sessions[0].as_str());
    let post = |body: Value, idempotency: &'static str, path: &'static str| {
        app.send(
            app.client
                .post(app.url(path))
                .header("X-API-Key", key)
                .header("Idempotency-Key", idempotency)
                .json(&body),
        )
    };
    let body = text(session, "6281234567890", "once");
    let first = post(body.clone(), "order-1", "/api/v1/external/send").await;
    let id = first.assert_ok(202)["messageId"]
        .as_str()
        .unwrap()
        .to_owned();
    let replay = post(body.clone(), "order-1", "/api/v1/external/send").await;
    assert_eq!(replay.assert_ok(202)["messageId"], id.as_str());
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    post(
        text(session, "6281234567890", "other body"),
        "order-1",
        "/api/v1/external/send",
    )
    .await
    .assert_error(409, "IDEMPOTENCY_KEY_REUSED");
    // Bulk too.
    let bulk = json!({"sessionId": session, "messages": [{"to": "6281234567890", "message": "b1"}, {"to": "6281234567890", "message": "b2"}]});
    let first_bulk = post(bulk.clone(), "batch-1", "/api/v1/external/send/bulk").await;
    let replay_bulk = post(bulk, "batch-1", "/api/v1/external/send/bulk").await;
    assert_eq!(first_bulk.assert_ok(202), replay_bulk.assert_ok(202));
    // A key is per user: another user's identical key is theirs.
    let worker = &setup.workers[0];
    wait_for(Duration::from_secs(20), "3 deliveries", || async {
        worker.messages().len() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered: Vec<String> = worker
        .messages()
        .into_iter()
        .filter_map(|m| m.message_id)
        .collect();
    assert_eq!(
        delivered.len(),
        3,
        "a replay created a message: {delivered:?}"
    );
    assert_eq!(delivered[0], id);
    for worker in setup.workers {
        worker.kill().await;
    }
    setup.app.stop().await;
}

/// A request cut off by a crash after its append leaves a claim nobody will answer and a
/// message in the log. The client's retry with the same key is told to wait while the claim
/// lives, takes it over within seconds, and gets the id of the message already appended: the
/// worker receives it once.
async fn a_retry_takes_over_a_dead_claim_and_sends_once(backend: Backend) {
    let setup = setup(backend, &[], 1, 1).await;
    let (app, key, session) = (&setup.app, setup.key.as_str(), setup.sessions[0].as_str());
    let body = serde_json::to_vec(&text(session, "6281234567890", "cut off")).unwrap();

    // What the dead request did: claim the key, append, and never answer.
    let user_id = &setup.login.user_id;
    let fingerprint = wa_gateway::store::request_fingerprint("send", &body);
    let claim = app
        .context
        .store
        .claim_idempotency_key(user_id, "order-cut", &fingerprint, 5_000)
        .await
        .unwrap();
    let IdempotencyClaim::Claimed { claimed_at_ms } = claim else {
        panic!("{claim:?}");
    };
    let send = serde_json::from_slice::<SendRequest>(&body)
        .unwrap()
        .validate(None, "62")
        .unwrap();
    let first = app
        .context
        .ingress
        .accept(
            user_id,
            &SessionId::parse("sessionId", session).unwrap(),
            vec![send],
            MessageIds::Idempotent {
                user_id: user_id.clone(),
                key: "order-cut".to_owned(),
                request_hash: fingerprint.clone(),
                claimed_at_ms,
            },
        )
        .await
        .unwrap();
    let first_id = first[0].message_id.clone();

    let retried_at = Instant::now();
    let mut waits = 0;
    let retry = || {
        app.send(
            app.client
                .post(app.url("/api/v1/external/send"))
                .header("X-API-Key", key)
                .header("Idempotency-Key", "order-cut")
                .header("content-type", "application/json")
                .body(body.clone()),
        )
    };
    let answer = loop {
        let answer = retry().await;
        if answer.status.as_u16() != 409 {
            break answer;
        }
        answer.assert_error(409, "IDEMPOTENCY_KEY_IN_PROGRESS");
        waits += 1;
        assert!(
            retried_at.elapsed() < Duration::from_secs(8),
            "the dead claim still blocks the retry"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(waits > 0, "the live claim did not hold the retry back");
    assert_eq!(answer.assert_ok(202)["messageId"], first_id.as_str());
    // The answer is stored now: a further retry replays it.
    let replay = retry().await;
    assert_eq!(replay.assert_ok(202)["messageId"], first_id.as_str());
    assert_eq!(replay.headers["idempotent-replayed"], "true");

    let worker = &setup.workers[0];
    wait_for(
        Duration::from_secs(20),
        "the message at the worker",
        || async {
            worker
                .messages()
                .iter()
                .any(|m| m.message_id.as_deref() == Some(first_id.as_str()))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let delivered: Vec<String> = worker
        .messages()
        .into_iter()
        .filter_map(|m| m.message_id)
        .collect();
    assert_eq!(delivered, vec![first_id], "appended twice, sent twice");
    for worker in setup.workers {
        worker.kill().await;
    }
    setup.app.stop().await;
}

async fn statuses_flow_back_and_lists_page(backend: Backend) {
    let setup = setup(backend, &[], 1, 2).await;
    let (app, key) = (&setup.app, setup.key.as_str());
    let session = setup.sessions[0].as_str();
    let id = send(
        app,
        key,
        "/api/v1/external/send",
        text(session, "6281234567890", "track me"),
    )
    .await
    .assert_ok(202)["messageId"]
        .as_str()
        .unwrap()
        .to_owned();
    // The simulator reports SENT, DELIVERED, READ; they flow through wa.events.v1.
    let path = format!("/api/v1/external/messages/{id}");
    wait_for(Duration::from_secs(20), "READ", || async {
        let answer = app
            .send(app.client.get(app.url(&path)).header("X-API-Key", key))
            .await;
        answer.status == 200 && answer.data()["status"] == "READ"
    })
    .await;
    let message = app
        .send(app.client.get(app.url(&path)).header("X-API-Key", key))
        .await;
    let data = message.assert_ok(200);
    let timeline: Vec<&str> = data["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(timeline, ["PENDING", "SENT", "DELIVERED", "READ"]);
    assert_eq!(data["content"]["message"], "track me");
    assert!(data["whatsappMessageId"].is_string());

    // 25 more on the other session; page through them 10 at a time.
    let other = setup.sessions[1].as_str();
    let messages: Vec<Value> = (0..25)
        .map(|n| json!({"to": "6281234567890", "message": format!("p {n}")}))
        .collect();
    send(
        app,
        key,
        "/api/v1/external/send/bulk",
        json!({"sessionId": other, "messages": messages}),
    )
    .await
    .assert_ok(202);
    wait_for(Duration::from_secs(20), "25 recorded", || async {
        let answer = app
            .send(
                app.client
                    .get(app.url(&format!(
                        "/api/v1/external/messages?sessionId={other}&limit=100"
                    )))
                    .header("X-API-Key", key),
            )
            .await;
        answer.data()["messages"]
            .as_array()
            .is_some_and(|m| m.len() == 25)
    })
    .await;
    let mut cursor: Option<String> = None;
    let mut seen = HashSet::new();
    let mut pages = 0;
    loop {
        let mut path = format!("/api/v1/sessions/{other}/messages?limit=10");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = app.get(&path, Some(&setup.login.access_token)).await;
        let data = page.assert_ok(200).clone();
        for message in data["messages"].as_array().unwrap() {
            assert_eq!(message["sessionId"], other);
            assert!(seen.insert(message["messageId"].as_str().unwrap().to_owned()));
        }
        pages += 1;
        match data["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 25);
    assert!(pages >= 3);
    // Filters.
    let read = app
        .send(
            app.client
                .get(app.url("/api/v1/external/messages?status=READ&limit=100"))
                .header("X-API-Key", key),
        )
        .await;
    assert!(
        read.assert_ok(200)["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["status"] == "READ")
    );
    // Isolation: another user sees none of it.
    let stranger = app
        .register(
            "Stranger",
            &format!("x{}@example.com", uuid::Uuid::new_v4().simple()),
            "stranger-pass-1",
        )
        .await;
    let stranger_key = create_key(app, &stranger, None).await;
    app.send(
        app.client
            .get(app.url(&path_of(&id)))
            .header("X-API-Key", &stranger_key),
    )
    .await
    .assert_error(404, "NOT_FOUND");
    app.get(
        &format!("/api/v1/sessions/{other}/messages"),
        Some(&stranger.access_token),
    )
    .await
    .assert_error(404, "NOT_FOUND");
    let mine = app
        .send(
            app.client
                .get(app.url("/api/v1/external/messages"))
                .header("X-API-Key", &stranger_key),
        )
        .await;
    assert_eq!(mine.assert_ok(200)["messages"], json!([]));
    // Session status through the external API.
    let status = app
        .send(
            app.client
                .get(app.url(&format!("/api/v1/external/session/{session}/status")))
                .header("X-API-Key", key),
        )
        .await;
    assert_eq!(status.assert_ok(200)["status"], "CONNECTED");
    for worker in setup.workers {
        worker.kill().await;
    }
    setup.app.stop().await;
}

fn path_of(id: &str) -> String {
    format!("/api/v1/external/messages/{id}")
}

async fn undeliverable_messages_fail_after_the_bound(backend: Backend) {
    let setup = setup(backend, &[("DELIVERY_MAX_WAIT_MS", "1500")], 1, 1).await;
    let (app, key, session) = (&setup.app, setup.key.as_str(), setup.sessions[0].as_str());
    let mut workers = setup.workers;
    workers.remove(0).kill().await;
    let id = send(
        app,
        key,
        "/api/v1/external/send",
        text(session, "6281234567890", "nobody home"),
    )
    .await
    .assert_ok(202)["messageId"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = path_of(&id);
    wait_for(Duration::from_secs(20), "FAILED", || async {
        let answer = app
            .send(app.client.get(app.url(&path)).header("X-API-Key", key))
            .await;
        answer.status == 200 && answer.data()["status"] == "FAILED"
    })
    .await;
    let message = app
        .send(app.client.get(app.url(&path)).header("X-API-Key", key))
        .await;
    let error = message.data()["errorMessage"].as_str().unwrap().to_owned();
    assert!(error.contains("not delivered within"), "{error}");
    let metrics = metrics_text(app).await;
    assert!(
        metrics.contains("wa_gateway_delivery_outcomes_total{outcome=\"dead_lettered\"} 1"),
        "{metrics}"
    );
    setup.app.stop().await;
}

async fn validation_errors_are_clear_4xx(backend: Backend) {
    let setup = setup(backend, &[], 1, 1).await;
    let (app, key, session) = (&setup.app, setup.key.as_str(), setup.sessions[0].as_str());
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "/api/v1/external/send",
            json!({"sessionId": session, "message": "no recipient"}),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "/api/v1/external/send",
            json!({"sessionId": session, "to": "12345", "message": "short"}),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "/api/v1/external/send",
            json!({"sessionId": session, "to": "1234567890123456", "message": "long"}),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "/api/v1/external/send",
            json!({"sessionId": session, "to": "6281234567890", "message": "x".repeat(4097)}),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "/api/v1/external/send",
            json!({"sessionId": session, "to": "6281234567890", "message": ""}),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "/api/v1/external/send",
            json!({"sessionId": session, "to": "6281234567890", "type": "image", "mediaUrl": "ftp://x/y.png"}),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "/api/v1/external/send",
            json!({"sessionId": session, "to": "6281234567890", "type": "image", "mediaUrl": "https://x/y.png", "caption": "c".repeat(1025)}),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "/api/v1/external/send",
            json!({"sessionId": session, "to": "6281234567890", "type": "poll", "poll": {"question": "?", "options": ["one"]}}),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "/api/v1/external/send",
            json!({"sessionId": session, "to": "6281234567890", "type": "poll", "poll": {"question": "?", "options": (0..13).map(|i| i.to_string()).collect::<Vec<_>>()}}),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "/api/v1/external/send",
            json!({"sessionId": session, "to": "6281234567890", "type": "fax"}),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "/api/v1/external/send",
            json!({"sessionId": session, "to": "6281234567890", "message": "hi", "colour": "red"}),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "/api/v1/external/send",
            json!({"to": "6281234567890", "message": "which session?"}),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "/api/v1/external/send",
            json!({"sessionId": "not-mine-at-all", "to": "6281234567890", "message": "hi"}),
            404,
            "NOT_FOUND",
        ),
        (
            "/api/v1/external/sendImage",
            json!({"sessionId": session, "to": "6281234567890", "message": "text on an image route"}),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "/api/v1/external/sendLocation",
            json!({"sessionId": session, "to": "6281234567890", "location": {"latitude": 91, "longitude": 0}}),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "/api/v1/external/send/bulk",
            json!({"sessionId": session, "messages": []}),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "/api/v1/external/send/bulk",
            json!({"sessionId": session, "messages": vec![json!({"to": "6281234567890", "message": "x"}); 1001]}),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "/api/v1/external/send/bulk",
            json!({"sessionId": session, "messages": [{"to": "1", "message": "x"}]}),
            400,
            "VALIDATION_ERROR",
        ),
        // What the existing worker would refuse is refused here, as it counts: 9 digits,
        // 2049 emoji (4098 UTF-16 code units), a 101-character location name.
        (
            "/api/v1/external/send",
            json!({"sessionId": session, "to": "628123456", "message": "nine digits"}),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "/api/v1/external/send",
            json!({"sessionId": session, "to": "6281234567890", "message": "\u{1F600}".repeat(2049)}),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "/api/v1/external/sendLocation",
            json!({"sessionId": session, "to": "6281234567890", "location": {"latitude": 1, "longitude": 1, "name": "n".repeat(101)}}),
            400,
            "VALIDATION_ERROR",
        ),
    ];
    for (path, body, status, code) in cases {
        let answer = send(app, key, path, body.clone()).await;
        assert_eq!(
            answer.status.as_u16(),
            status,
            "{path} {body}: {}",
            answer.body
        );
        answer.assert_error(status, code);
    }
    // A session nobody ever connected: 409 at once, single or bulk (a bad body is still 400
    // first), where a 202 would only have failed after the delivery bound.
    app.post(
        "/api/v1/sessions",
        Some(&setup.login.access_token),
        json!({"name": "never", "sessionId": "never-connected"}),
    )
    .await
    .assert_ok(201);
    let never = text("never-connected", "6281234567890", "hi");
    send(app, key, "/api/v1/external/send", never)
        .await
        .assert_error(409, "SESSION_NOT_CONNECTED");
    send(
        app,
        key,
        "/api/v1/external/send/bulk",
        json!({"sessionId": "never-connected", "messages": [{"to": "6281234567890", "message": "hi"}]}),
    )
    .await
    .assert_error(409, "SESSION_NOT_CONNECTED");
    send(
        app,
        key,
        "/api/v1/external/send",
        json!({"sessionId": "never-connected", "to": "1", "message": "hi"}),
    )
    .await
    .assert_error(400, "VALIDATION_ERROR");
    // Malformed JSON, no credentials, a bad key.
    let raw = app
        .send(
            app.client
                .post(app.url("/api/v1/external/send"))
                .header("X-API-Key", key)
                .header("content-type", "application/json")
                .body("{nope"),
        )
        .await;
    raw.assert_error(400, "INVALID_JSON");
    let anonymous = app
        .send(
            app.client
                .post(app.url("/api/v1/external/send"))
                .json(&text(session, "6281234567890", "hi")),
        )
        .await;
    anonymous.assert_error(401, "UNAUTHORIZED");
    let bad_key = send(
        app,
        "wg_0000000000000000000000000000000000000000",
        "/api/v1/external/send",
        text(session, "6281234567890", "hi"),
    )
    .await;
    bad_key.assert_error(401, "UNAUTHORIZED");
    // Bulk: invalid items are rejected one by one, the rest accepted.
    let mixed = send(
        app,
        key,
        "/api/v1/external/send/bulk",
        json!({"sessionId": session, "messages": [
            {"to": "6281234567890", "message": "ok"},
            {"to": "123", "message": "bad number"},
            {"to": "6281234567890", "type": "poll", "poll": {"question": "?", "options": ["a"]}},
        ]}),
    )
    .await;
    let data = mixed.assert_ok(202);
    assert_eq!(data["accepted"], 1);
    assert_eq!(data["rejected"], 2);
    assert_eq!(data["results"][1]["status"], "REJECTED");
    assert_eq!(data["results"][1]["error"]["field"], "to");
    // A key bound to a session may omit sessionId, and cannot reach another session.
    let bound = create_key(app, &setup.login, Some(session)).await;
    send(
        app,
        &bound,
        "/api/v1/external/send",
        json!({"to": "081234567890", "message": "bound"}),
    )
    .await
    .assert_ok(202);
    send(
        app,
        &bound,
        "/api/v1/external/send",
        text("another-session", "6281234567890", "x"),
    )
    .await
    .assert_error(404, "NOT_FOUND");
    // Unknown message: 404; an idempotency key that is too long: 400.
    app.send(
        app.client
            .get(app.url("/api/v1/external/messages/nope"))
            .header("X-API-Key", key),
    )
    .await
    .assert_error(404, "NOT_FOUND");
    app.send(
        app.client
            .post(app.url("/api/v1/external/send"))
            .header("X-API-Key", key)
            .header("Idempotency-Key", "k".repeat(300))
            .json(&text(session, "6281234567890", "x")),
    )
    .await
    .assert_error(400, "INVALID_IDEMPOTENCY_KEY");
    for worker in setup.workers {
        worker.kill().await;
    }
    setup.app.stop().await;
}
