//! Crash safety, on every deployment: `kill -9` of the serving process mid-stream and a restart
//! two seconds later (on Kafka: while the dead consumer-group member is still in the group), and
//! on Kafka a broker killed and started again on the same data.
//!
//! The gateway runs as a child process (`wa-gateway serve`, this build) so that it can really be
//! killed; the simulated workers run in this process and live through the gateway's death, as a
//! fleet on other machines would. Clients send every message with an `Idempotency-Key` and retry
//! a request cut off by the kill (or answered `503`) until it is answered, as a careful
//! integrator does. Afterwards every accepted message must be at the workers, in per-session
//! order, and the only duplicates allowed are immediate repeats of a call in flight at the kill
//! (at most one per session), each counted by `wa_gateway_delivery_redelivered_total`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::{Child, Command};
use wa_gateway::sim::SimWorker;

use crate::common::process::{GatewayProcess, child_vars, fleet, free_port};
use crate::common::{Backend, PIPELINE_ENV, reachable_kafka_brokers};
use crate::pipeline_tests;

pipeline_tests!(kill_9_mid_stream_loses_nothing_and_sends_nothing_twice);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_broker_restart_mid_stream_loses_nothing() {
    broker_restart_mid_stream().await;
}

/// The gateway's settings in these tests: the send-pipeline tests' (a worker declared dead
/// 3 s after its last sign of life: shorter than the outage, so without the restart grace it
/// would be a fleet failure), and a log the failure messages can quote.
async fn crash_vars(backend: Backend, dir: &std::path::Path) -> HashMap<String, String> {
    let mut vars = child_vars(backend, dir, PIPELINE_ENV).await;
    vars.insert("LOG_LEVEL".into(), "info".into());
    vars.insert("LOG_FORMAT".into(), "json".into());
    vars
}

/// How long a worker call takes, so calls are in flight when the gateway dies.
const WORKER_CALL: Duration = Duration::from_millis(15);

/// How long the gateway stays dead: shorter than the consumer group's session timeout (10 s),
/// so on Kafka the new member joins while the dead one is still in the group.
const DOWN_FOR: Duration = Duration::from_secs(2);

/// What the clients saw of one message.
#[derive(Debug, Clone)]
struct Accepted {
    session: String,
    seq: usize,
    message_id: String,
    /// Whether a try of it was cut off (connection error) or refused for the moment (`409` in
    /// progress, `503`) before it was answered.
    interrupted: bool,
    /// When it was answered `202`.
    answered_at: Instant,
    /// When its first try that did not succeed happened.
    first_failure_at: Option<Instant>,
}

/// One client per session, sending the messages `seqs` one after the other (so acceptance
/// order is the send order), each under its own `Idempotency-Key`, retrying every try that is
/// cut off or answered `409 IDEMPOTENCY_KEY_IN_PROGRESS` / `503` until it is answered `202`.
async fn send_all(
    base: String,
    key: String,
    sessions: Vec<String>,
    seqs: std::ops::Range<usize>,
    accepted_count: Arc<AtomicUsize>,
    statuses: Arc<std::sync::Mutex<HashMap<u16, usize>>>,
) -> Vec<Accepted> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let tasks = sessions.into_iter().map(|session| {
        let (client, base, key) = (client.clone(), base.clone(), key.clone());
        let accepted_count = accepted_count.clone();
        let (statuses, seqs) = (statuses.clone(), seqs.clone());
        tokio::spawn(async move {
            let mut accepted = Vec::with_capacity(seqs.len());
            for seq in seqs {
                let body = json!({
                    "sessionId": session,
                    "to": "6281234567890",
                    "message": format!("{session}:{seq}"),
                });
                let idempotency_key = format!("{session}-{seq}");
                let deadline = Instant::now() + Duration::from_secs(90);
                let mut first_failure_at = None;
                loop {
                    assert!(
                        Instant::now() < deadline,
                        "{idempotency_key} not accepted within 90 s"
                    );
                    let tried = client
                        .post(format!("{base}/api/v1/external/send"))
                        .header("X-API-Key", &key)
                        .header("Idempotency-Key", &idempotency_key)
                        .json(&body)
                        .send()
                        .await;
                    let answer = match tried {
                        Ok(answer) => answer,
                        Err(_) => {
                            first_failure_at.get_or_insert_with(Instant::now);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let status = answer.status().as_u16();
                    *statuses.lock().unwrap().entry(status).or_default() += 1;
                    let retry_after = answer.headers().get("retry-after").cloned();
                    let Ok(answer) = answer.json::<Value>().await else {
                        first_failure_at.get_or_insert_with(Instant::now);
                        continue;
                    };
                    match status {
                        202 => {
                            accepted_count.fetch_add(1, Ordering::Relaxed);
                            accepted.push(Accepted {
                                session: session.clone(),
                                seq,
                                message_id: answer["data"]["messageId"]
                                    .as_str()
                                    .unwrap()
                                    .to_owned(),
                                interrupted: first_failure_at.is_some(),
                                answered_at: Instant::now(),
                                first_failure_at,
                            });
                            break;
                        }
                        409 if answer["error"]["code"] == "IDEMPOTENCY_KEY_IN_PROGRESS" => {}
                        503 => assert!(retry_after.is_some(), "503 without Retry-After: {answer}"),
                        other => panic!("{idempotency_key}: unexpected {other}: {answer}"),
                    }
                    first_failure_at.get_or_insert_with(Instant::now);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            accepted
        })
    });
    let mut all = Vec::new();
    for task in tasks.collect::<Vec<_>>() {
        all.extend(task.await.unwrap());
    }
    all
}

/// A stream of sends in progress: one warm-up message per session was delivered (delivery
/// runs; on Kafka the groups have formed), then `send_all` goes on in the background with
/// messages `1..per_session`; returns the warm-up's acceptances and the running clients.
struct Stream {
    warm_up: Vec<Accepted>,
    clients: tokio::task::JoinHandle<Vec<Accepted>>,
    accepted: Arc<AtomicUsize>,
    statuses: Arc<std::sync::Mutex<HashMap<u16, usize>>>,
}

async fn start_stream(
    base: String,
    key: String,
    sessions: Vec<String>,
    workers: &[SimWorker],
    per_session: usize,
) -> Stream {
    let accepted = Arc::new(AtomicUsize::new(0));
    let statuses = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let warm_up = send_all(
        base.clone(),
        key.clone(),
        sessions.clone(),
        0..1,
        accepted.clone(),
        statuses.clone(),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while arrivals(workers).values().map(Vec::len).sum::<usize>() < sessions.len() {
        assert!(
            Instant::now() < deadline,
            "the warm-up messages did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let clients = tokio::spawn(send_all(
        base,
        key,
        sessions,
        1..per_session,
        accepted.clone(),
        statuses.clone(),
    ));
    Stream {
        warm_up,
        clients,
        accepted,
        statuses,
    }
}

impl Stream {
    /// Waits until `count` messages are accepted.
    async fn until_accepted(&self, count: usize) {
        while self.accepted.load(Ordering::Relaxed) < count {
            assert!(!self.clients.is_finished(), "the clients stopped early");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Waits until every expected message reached a worker (or fails with the gateway's log).
async fn wait_delivered(
    workers: &[SimWorker],
    expected: &HashMap<String, Vec<String>>,
    gateway: &GatewayProcess,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let missing = missing(expected, &arrivals(workers));
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} accepted messages never reached a worker (stranded); gateway log:\n{}",
            gateway.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A duplicate gets its chance to show up.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
}

/// What arrived at the workers, by session: `(message id, received at µs)` in arrival order.
fn arrivals(workers: &[SimWorker]) -> HashMap<String, Vec<(String, i64)>> {
    let mut by_session: HashMap<String, Vec<(String, i64)>> = HashMap::new();
    for worker in workers {
        for message in worker.messages() {
            if let Some(id) = message.message_id {
                by_session
                    .entry(message.session_id)
                    .or_default()
                    .push((id, message.received_at_us));
            }
        }
    }
    for list in by_session.values_mut() {
        list.sort_by_key(|(_, at)| *at);
    }
    by_session
}

/// The accepted message ids of each session, in acceptance (= send) order.
fn by_session(accepted: &[Accepted]) -> HashMap<String, Vec<String>> {
    let mut by_session: HashMap<String, Vec<(usize, String)>> = HashMap::new();
    for message in accepted {
        by_session
            .entry(message.session.clone())
            .or_default()
            .push((message.seq, message.message_id.clone()));
    }
    by_session
        .into_iter()
        .map(|(session, mut list)| {
            list.sort();
            (session, list.into_iter().map(|(_, id)| id).collect())
        })
        .collect()
}

/// How many of the expected messages have not arrived.
fn missing(
    expected: &HashMap<String, Vec<String>>,
    got: &HashMap<String, Vec<(String, i64)>>,
) -> usize {
    expected
        .iter()
        .map(|(session, ids)| {
            let arrived: std::collections::HashSet<&String> = got
                .get(session)
                .map(|list| list.iter().map(|(id, _)| id).collect())
                .unwrap_or_default();
            ids.iter().filter(|id| !arrived.contains(id)).count()
        })
        .sum()
}

/// Asserts that each session's messages arrived in acceptance order, a duplicate only as the
/// immediate repeat of a call (never a message going backwards); returns the duplicates.
fn check_order(
    expected: &HashMap<String, Vec<String>>,
    got: &HashMap<String, Vec<(String, i64)>>,
) -> usize {
    let mut duplicates = 0;
    for (session, ids) in expected {
        let mut collapsed: Vec<&String> = Vec::with_capacity(ids.len());
        for (id, _) in &got[session] {
            if collapsed.last() == Some(&id) {
                duplicates += 1;
            } else {
                collapsed.push(id);
            }
        }
        let expected_ids: Vec<&String> = ids.iter().collect();
        assert_eq!(
            collapsed, expected_ids,
            "session {session}: out of order or sent twice apart"
        );
    }
    duplicates
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)
                .filter(|rest| rest.starts_with(' '))
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

fn unix_micros() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap()
}

async fn kill_9_mid_stream_loses_nothing_and_sends_nothing_twice(backend: Backend) {
    // Child gateways outlive any one handle: the test's databases go when it ends.
    let _databases = crate::common::DatabasesGuard;
    const SESSIONS: usize = 6;
    const PER_SESSION: usize = 50;
    /// Accepted messages (warm-up included) after which the gateway is killed.
    const KILL_AFTER: usize = 120;
    // Kept when the test fails (the gateway's log is in it), removed at its end otherwise.
    let dir = tempfile::tempdir().unwrap().keep();
    eprintln!("crash {backend:?}: data and log in {}", dir.display());
    let kafka = (backend == Backend::Kafka).then(reachable_kafka_brokers);
    let mut vars = crash_vars(backend, &dir).await;
    if let Some(brokers) = kafka {
        vars.insert("KAFKA_BROKERS".into(), brokers);
    }
    let mut gateway = GatewayProcess::start(vars, dir.join("gateway.log")).await;
    let fleet = fleet(&gateway, 2, SESSIONS, WORKER_CALL).await;

    let stream = start_stream(
        gateway.base_url(),
        fleet.key.clone(),
        fleet.sessions.clone(),
        &fleet.workers,
        PER_SESSION,
    )
    .await;
    stream.until_accepted(KILL_AFTER).await;
    let killed_at = Instant::now();
    gateway.kill().await;
    let accepted_at_kill = stream.accepted.load(Ordering::Relaxed);
    let delivered_at_kill: usize = arrivals(&fleet.workers).values().map(Vec::len).sum();
    tokio::time::sleep(DOWN_FOR).await;
    let restart_began = Instant::now();
    gateway.spawn().await;
    let restarted_at = Instant::now();
    let restarted_at_us = unix_micros();

    let mut accepted = stream.warm_up;
    accepted.extend(stream.clients.await.unwrap());
    assert_eq!(accepted.len(), SESSIONS * PER_SESSION);

    // Everything accepted reaches the workers.
    let expected = by_session(&accepted);
    wait_delivered(&fleet.workers, &expected, &gateway).await;
    let got = arrivals(&fleet.workers);
    let duplicates = check_order(&expected, &got);
    assert!(
        duplicates <= SESSIONS,
        "{duplicates} duplicates: more than the calls in flight at the kill"
    );
    let metrics = reqwest::get(format!("{}/metrics", gateway.base_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let redelivered = metric(&metrics, "wa_gateway_delivery_redelivered_total");
    assert!(
        redelivered >= duplicates as f64,
        "{duplicates} duplicates at the workers, {redelivered} counted"
    );

    // Delivery resumed soon after the restart (Kafka: within the group's session timeout plus
    // a few seconds).
    let resumed_after_us = got
        .values()
        .flatten()
        .map(|(_, at)| *at)
        .filter(|at| *at >= restarted_at_us)
        .min()
        .map(|first| first - restarted_at_us)
        .unwrap();
    let resumed_after = Duration::from_micros(u64::try_from(resumed_after_us).unwrap());
    assert!(
        resumed_after < Duration::from_secs(15),
        "delivery resumed {resumed_after:?} after the restart"
    );
    // A request cut off by the kill is answered within seconds of the restart.
    let interrupted: Vec<&Accepted> = accepted.iter().filter(|m| m.interrupted).collect();
    assert!(!interrupted.is_empty(), "the kill cut off no request");
    let slowest_retry = interrupted
        .iter()
        .filter(|m| m.first_failure_at.is_some_and(|at| at >= killed_at))
        .map(|m| m.answered_at.saturating_duration_since(restarted_at))
        .max()
        .unwrap_or_default();
    assert!(
        slowest_retry < Duration::from_secs(10),
        "a cut-off request waited {slowest_retry:?} after the restart for its answer"
    );
    eprintln!(
        "crash {backend:?}: accepted {} (at the kill {accepted_at_kill}), delivered at the kill \
         {delivered_at_kill}, stranded 0, duplicates {duplicates}, counted redelivered \
         {redelivered}, restart took {:?}, delivery resumed {resumed_after:?} after it, \
         slowest cut-off retry answered {slowest_retry:?} after it, answers {:?}",
        accepted.len(),
        restarted_at - restart_began,
        stream.statuses.lock().unwrap()
    );
    for worker in fleet.workers {
        worker.kill().await;
    }
    gateway.terminate(Duration::from_secs(30)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tansu broker of this test's own (sqlite engine) on a free port, killed and started again on
/// the same data. The binary is `TANSU_BIN`, else `~/.cargo/bin/tansu`, else `tansu` on `PATH`
/// (`.ci/run` installs it).
struct Broker {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Broker {
    fn binary() -> PathBuf {
        if let Ok(path) = std::env::var("TANSU_BIN") {
            return PathBuf::from(path);
        }
        let installed = std::env::var("HOME")
            .map(|home| PathBuf::from(home).join(".cargo/bin/tansu"))
            .ok()
            .filter(|path| path.exists());
        installed.unwrap_or_else(|| PathBuf::from("tansu"))
    }

    async fn start(dir: PathBuf) -> Self {
        let mut broker = Self {
            child: None,
            port: free_port(),
            dir,
        };
        broker.spawn().await;
        broker
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))
            .unwrap();
        let url = format!("tcp://{}", self.address());
        let child = Command::new(Self::binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                // tansu resolves this against its working directory.
                "sqlite://tansu.db",
            ])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "this test runs its own Kafka broker: cannot start tansu ({}): {err}; \
                     install it with `cargo install tansu --locked --features libsql` or set TANSU_BIN",
                    Self::binary().display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(self.address())
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().unwrap();
            child.wait().await.unwrap();
        }
    }
}

/// Kafka only: the broker is killed mid-stream and started again on the same data. New sends
/// meanwhile are answered `503` with `Retry-After` at once (never `202`: nothing can be in the
/// log), sends in flight at the kill wait for the broker, and afterwards every accepted
/// message reaches the workers in per-session order.
async fn broker_restart_mid_stream() {
    // Child gateways outlive any one handle: the test's databases go when it ends.
    let _databases = crate::common::DatabasesGuard;
    const SESSIONS: usize = 4;
    const PER_SESSION: usize = 40;
    const KILL_AFTER: usize = 60;
    const OUTAGE: Duration = Duration::from_secs(6);
    let dir = tempfile::tempdir().unwrap().keep();
    eprintln!("broker restart: data and logs in {}", dir.display());
    let broker_dir = dir.join("broker");
    std::fs::create_dir_all(&broker_dir).unwrap();
    let mut broker = Broker::start(broker_dir).await;
    let mut vars = crash_vars(Backend::Kafka, &dir).await;
    vars.insert("KAFKA_BROKERS".into(), broker.address());
    let gateway = GatewayProcess::start(vars, dir.join("gateway.log")).await;
    // The last session is only for the probes sent during the outage.
    let fleet = fleet(&gateway, 2, SESSIONS + 1, WORKER_CALL).await;
    let (streams, probe_session) = fleet.sessions.split_at(SESSIONS);
    let probe_session = probe_session[0].clone();

    let stream = start_stream(
        gateway.base_url(),
        fleet.key.clone(),
        streams.to_vec(),
        &fleet.workers,
        PER_SESSION,
    )
    .await;
    stream.until_accepted(KILL_AFTER).await;
    broker.kill().await;
    let killed_at = Instant::now();

    // New sends during the outage: refused at once, with Retry-After.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut refused = 0;
    let mut probe = 0;
    while killed_at.elapsed() < OUTAGE {
        probe += 1;
        let started = Instant::now();
        let answer = client
            .post(format!("{}/api/v1/external/send", gateway.base_url()))
            .header("X-API-Key", &fleet.key)
            .header("Idempotency-Key", format!("probe-{probe}"))
            .json(&json!({"sessionId": probe_session, "to": "6281234567890", "message": format!("probe {probe}")}))
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        let retry_after = answer.headers().contains_key("retry-after");
        let body: Value = answer.json().await.unwrap();
        // The first probes may still find librdkafka unaware of the outage (a record then
        // waits for the broker, up to the probe's own timeout); after that every one is
        // refused at once.
        if killed_at.elapsed() > Duration::from_secs(2) {
            assert_eq!(status, 503, "a send during the outage: {body}");
            assert!(retry_after, "503 without Retry-After: {body}");
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "a refusal took {:?}",
                started.elapsed()
            );
        }
        assert_ne!(status, 202, "202 during the broker outage: {body}");
        refused += usize::from(status == 503);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(refused > 0, "no send was refused during the outage");
    broker.spawn().await;
    let back_at = Instant::now();
    let mut accepted = stream.warm_up;
    accepted.extend(stream.clients.await.unwrap());
    assert_eq!(accepted.len(), SESSIONS * PER_SESSION);
    // What was answered 202 while the broker was down would not be in the log.
    let grace = Duration::from_millis(200);
    let during: Vec<&Accepted> = accepted
        .iter()
        .filter(|m| m.answered_at > killed_at + grace && m.answered_at < back_at)
        .collect();
    assert!(
        during.is_empty(),
        "202 while the broker was down: {during:?}"
    );

    let expected = by_session(&accepted);
    wait_delivered(&fleet.workers, &expected, &gateway).await;
    let got = arrivals(&fleet.workers);
    let duplicates = check_order(&expected, &got);
    assert!(
        !got.contains_key(&probe_session),
        "a refused probe reached a worker"
    );
    eprintln!(
        "broker restart: accepted {}, stranded 0, duplicates {duplicates}, probes refused \
         {refused} of {probe}, answers {:?}",
        accepted.len(),
        stream.statuses.lock().unwrap()
    );
    for worker in fleet.workers {
        worker.kill().await;
    }
    gateway.terminate(Duration::from_secs(30)).await;
    broker.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}
