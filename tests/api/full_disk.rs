//! A full disk under `DATA_DIR` (issue 14): a 16 MiB tmpfs is mounted as the data directory
//! (root only: the test fails loudly without it), the gateway serves from it as a child
//! process (`wa-gateway serve`, this build, so SIGTERM is the real signal path), and a filler
//! file takes every free block.
//!
//! While the disk is full, sends are `503` with `Retry-After` (never `500`, never `202` for a
//! message the log does not hold) and `/health` says so; once the filler is gone the gateway
//! recovers by itself within seconds, every message it accepted reaches the worker once and in
//! order, and SIGTERM, with the disk full again, stops it well within its drain bound.
//!
//! On SQLite the store lives on the small disk too; on PostgreSQL + Redis only the embedded
//! log does.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Connection;
use wa_gateway::store::{Store, StoreLocation};

use crate::backend_tests;
use crate::common::Backend;
use crate::common::process::{Fleet, GatewayProcess, child_vars, fleet};

backend_tests!(a_full_data_dir_is_503_then_recovers_by_itself_and_stops_on_sigterm);

/// How long SIGTERM may take with the disk full: far below the HTTP drain bound (20 s) plus
/// the delivery drain (10 s); nothing is in flight, so only a blocked step could use them.
const STOP_BOUND: Duration = Duration::from_secs(15);

/// After the filler is gone, sends are `202` again within this.
const RECOVERY_BOUND: Duration = Duration::from_secs(10);

/// How long the disk stays full: longer than the heartbeat timeout, so a gateway that took
/// heartbeats it could not record for silence would fail the fleet over once it writes again.
const FULL_FOR: Duration = Duration::from_secs(4);

/// Pacing off, limits out of the way, fast fleet timings; the heartbeat timeout (heartbeats
/// every 500 ms) is shorter than the time the disk stays full.
const GATEWAY_ENV: &[(&str, &str)] = &[
    ("WORKER_HEARTBEAT_TIMEOUT_MS", "2500"),
    ("WORKER_MONITOR_INTERVAL_MS", "200"),
    ("WORKER_PROBE_INTERVAL_MS", "500"),
    ("WORKER_REQUEST_TIMEOUT_MS", "2000"),
    ("BASIC_TIER_MAX_MESSAGES_PER_HOUR", "100000"),
    ("BASIC_TIER_MAX_API_CALLS_PER_HOUR", "100000"),
    ("BASIC_TIER_SEND_INTERVAL_MS", "0"),
    ("BASIC_TIER_SEND_JITTER_MS", "0"),
    ("FLUSH_INTERVAL_MS", "500"),
    ("LOG_LEVEL", "info"),
];

/// A small tmpfs mounted on a fresh directory; unmounted (lazily, so a process still holding a
/// file in it cannot make that fail) when dropped, also when the test panics.
struct SmallDisk {
    mount_point: PathBuf,
    /// Holds the mount point and, outside the small disk, the gateway's log.
    holder: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let holder = tempfile::tempdir().unwrap();
        let mount_point = holder.path().join("data");
        std::fs::create_dir(&mount_point).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mount_point)
            .output()
            .unwrap_or_else(|err| panic!("this test needs root to mount a tmpfs: {err}"));
        assert!(
            mounted.status.success(),
            "this test needs root to mount a tmpfs (mount -t tmpfs failed: {})",
            String::from_utf8_lossy(&mounted.stderr).trim()
        );
        Self {
            mount_point,
            holder,
        }
    }

    fn path(&self) -> &Path {
        &self.mount_point
    }

    /// Where the gateway logs: beside the small disk, not on it, so the log does not fail too.
    fn log_path(&self) -> PathBuf {
        self.holder.path().join("gateway.log")
    }

    /// Writes a filler file until the disk refuses another byte; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.mount_point.join("filler");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        for chunk in [64 * 1024, 512, 1] {
            let bytes = vec![0_u8; chunk];
            while file.write_all(&bytes).is_ok() {}
        }
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mount_point)
            .status();
    }
}

#[derive(Debug)]
enum Sent {
    Accepted(String),
    Unavailable(String),
}

/// One text send, every other one under an `Idempotency-Key` (which claims the key in the
/// store before the log append, so the store's failures show too). Anything but `202` or a
/// `503` with `Retry-After` fails the test.
async fn send(
    client: &reqwest::Client,
    gateway: &GatewayProcess,
    customer: &Fleet,
    n: usize,
) -> Sent {
    let mut request = client
        .post(format!("{}/api/v1/external/send", gateway.base_url()))
        .header("X-API-Key", &customer.key)
        .timeout(Duration::from_secs(10))
        .json(&json!({
            "sessionId": customer.sessions[0],
            "to": "6281234567890",
            // About 2 KiB, so a full disk shows at the first append that needs a new page.
            "message": format!("message {n} {}", "x".repeat(2000)),
        }));
    if n % 2 == 1 {
        request = request.header("Idempotency-Key", format!("full-disk-{n}"));
    }
    let answer = request
        .send()
        .await
        .unwrap_or_else(|err| panic!("send {n}: {err}:\n{}", gateway.log_text()));
    let status = answer.status().as_u16();
    let retry_after = answer.headers().get("retry-after").cloned();
    let body: Value = answer.json().await.unwrap();
    match status {
        202 => Sent::Accepted(body["data"]["messageId"].as_str().unwrap().to_owned()),
        503 => {
            assert!(retry_after.is_some(), "503 without Retry-After: {body}");
            let code = body["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(
                ["LOG_UNAVAILABLE", "STORE_UNAVAILABLE"].contains(&code.as_str()),
                "{body}"
            );
            Sent::Unavailable(code)
        }
        other => panic!("send {n}: {other} {body}\n{}", gateway.log_text()),
    }
}

/// `/health`: its status code and body; it must answer within 5 s whatever the disk does.
async fn health(client: &reqwest::Client, gateway: &GatewayProcess) -> (u16, Value) {
    let answer = client
        .get(format!("{}/health", gateway.base_url()))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_or_else(|err| panic!("/health did not answer: {err}"));
    (answer.status().as_u16(), answer.json().await.unwrap())
}

async fn a_full_data_dir_is_503_then_recovers_by_itself_and_stops_on_sigterm(backend: Backend) {
    // Child gateways outlive any one handle: the test's databases go when it ends.
    let _databases = crate::common::DatabasesGuard;
    let disk = SmallDisk::mount("16m");
    let gateway = GatewayProcess::start(
        child_vars(backend, disk.path(), GATEWAY_ENV).await,
        disk.log_path(),
    )
    .await;
    let client = reqwest::Client::new();
    // Two workers: a failover would move the session to the other one.
    let customer = fleet(&gateway, 2, 1, Duration::ZERO).await;
    let mut accepted = Vec::new();
    let mut n = 0;
    for _ in 0..4 {
        match send(&client, &gateway, &customer, n).await {
            Sent::Accepted(id) => accepted.push(id),
            other => panic!("send {n} before the disk filled up: {other:?}"),
        }
        n += 1;
    }

    // Full: once an append needs space, sends are 503 (a 202 before that is a message the
    // log holds; it must arrive like the others).
    let filler = disk.fill();
    let filled_at = Instant::now();
    let mut refused = HashMap::<String, usize>::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused.values().sum::<usize>() < 5 {
        assert!(
            Instant::now() < deadline,
            "no 503 with the disk full:\n{}",
            gateway.log_text()
        );
        match send(&client, &gateway, &customer, n).await {
            Sent::Accepted(id) => accepted.push(id),
            Sent::Unavailable(code) => *refused.entry(code).or_default() += 1,
        }
        n += 1;
    }
    // Health says so, every time it is asked, and answers promptly.
    for _ in 0..3 {
        let (status, body) = health(&client, &gateway).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["data"]["status"], "unavailable", "{body}");
        assert_eq!(body["data"]["backends"]["disk"]["status"], "down", "{body}");
        assert_eq!(body["data"]["backends"]["store"]["status"], "up", "{body}");
        assert_eq!(body["error"]["code"], "DISK_FULL", "{body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Long enough for the batch flusher (every 500 ms here) and the heartbeats to fail a few
    // commits in a row on the same pooled connections, which is what wedged SQLite for good,
    // and longer than the heartbeat timeout.
    tokio::time::sleep(FULL_FOR.saturating_sub(filled_at.elapsed())).await;

    // Space again: no restart, no operator; within seconds sends are 202 for good.
    std::fs::remove_file(&filler).unwrap();
    let freed_at = Instant::now();
    let recovered_in = loop {
        match send(&client, &gateway, &customer, n).await {
            Sent::Accepted(id) => {
                accepted.push(id);
                n += 1;
                break freed_at.elapsed();
            }
            Sent::Unavailable(_) => assert!(
                freed_at.elapsed() < RECOVERY_BOUND,
                "still 503 {:?} after the disk has room:\n{}",
                freed_at.elapsed(),
                gateway.log_text()
            ),
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for _ in 0..5 {
        match send(&client, &gateway, &customer, n).await {
            Sent::Accepted(id) => accepted.push(id),
            other => panic!("send {n} after recovery: {other:?}"),
        }
        n += 1;
    }
    let (status, body) = health(&client, &gateway).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["status"], "ok", "{body}");

    // Every accepted message reaches the worker, once, in acceptance order, and all reach the
    // same worker: the outage of the store was not taken for the fleet's.
    let deadline = Instant::now() + Duration::from_secs(20);
    let delivered = loop {
        let per_worker: Vec<Vec<String>> = customer
            .workers
            .iter()
            .map(|worker| {
                worker
                    .messages()
                    .into_iter()
                    .filter_map(|message| message.message_id)
                    .collect()
            })
            .collect();
        let delivered = per_worker.concat();
        if delivered.len() >= accepted.len() {
            assert!(
                per_worker
                    .iter()
                    .any(|messages| messages.len() == delivered.len()),
                "the session moved to another worker while the disk was full: {:?}\n{}",
                per_worker.iter().map(Vec::len).collect::<Vec<_>>(),
                gateway.log_text()
            );
            break delivered;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} accepted messages delivered:\n{}",
            delivered.len(),
            accepted.len(),
            gateway.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(delivered, accepted, "lost, repeated or reordered");

    // Full again, and SIGTERM: nothing may wait on a write that cannot happen.
    disk.fill();
    assert!(matches!(
        send(&client, &gateway, &customer, n).await,
        Sent::Unavailable(_)
    ));
    let took = gateway.terminate(STOP_BOUND).await;
    eprintln!(
        "{backend:?}: accepted {}, refused {refused:?}, recovered in {recovered_in:?}, \
         stopped in {took:?}",
        accepted.len(),
    );
    for worker in customer.workers {
        worker.kill().await;
    }
}

/// The root cause of the wedge, at the store: a `COMMIT` that fails on a full disk must not leave
/// its pooled connection inside a transaction. If it did, the connection's next transactions
/// would be nested savepoints that never commit, and every other connection would get
/// `database is locked` for good once the disk had room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_failed_on_a_full_disk_leaves_no_sqlite_connection_in_a_transaction() {
    let disk = SmallDisk::mount("4m");
    let store = Store::connect(StoreLocation::SqliteFile(&disk.path().join("store.db")))
        .await
        .unwrap();
    let pool = store.pool();
    sqlx::query("CREATE TABLE scratch (payload BLOB)")
        .execute(pool)
        .await
        .unwrap();
    let filler = disk.fill();
    for attempt in 0..4 {
        // One connection at a time: the pool hands out the same idle one again.
        let mut tx = pool.begin().await.unwrap();
        let written = sqlx::query("INSERT INTO scratch VALUES (zeroblob(200000))")
            .execute(&mut *tx)
            .await;
        let committed = match written {
            Ok(_) => tx.commit().await,
            Err(err) => Err(err),
        };
        let err = committed.expect_err("the disk is full");
        assert!(
            wa_gateway::store::is_unavailable(&err),
            "attempt {attempt}: {err}"
        );
    }
    std::fs::remove_file(&filler).unwrap();
    // Every connection the pool has writes at once: none holds the write lock, none is inside
    // a transaction it cannot leave.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(pool.acquire().await.unwrap());
    }
    for conn in &mut held {
        assert!(!conn.is_in_transaction());
        tokio::time::timeout(Duration::from_secs(5), async {
            let mut tx = conn.begin().await?;
            sqlx::query("INSERT INTO scratch VALUES (zeroblob(100))")
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        })
        .await
        .expect("a write waited on a lock nobody should hold")
        .unwrap();
    }
    drop(held);
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM scratch")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(rows, 3, "a write reported committed is not there");
    store.close().await;
}

/// SIGTERM while every store write waits out SQLite's busy timeout (another process holds the
/// write lock, as a wedged connection did): each shutdown step is bounded, so the gateway exits
/// within the HTTP drain (20 s) plus the tasks' and closing steps' bounds (12 s + 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_gateway_in_bounded_time_while_store_writes_hang() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let gateway = GatewayProcess::start(
        child_vars(Backend::Sqlite, &data_dir, GATEWAY_ENV).await,
        dir.path().join("gateway.log"),
    )
    .await;
    let client = reqwest::Client::new();
    let customer = fleet(&gateway, 1, 1, Duration::ZERO).await;
    for n in 0..2 {
        assert!(matches!(
            send(&client, &gateway, &customer, n).await,
            Sent::Accepted(_)
        ));
    }
    let mut lock = sqlx::SqliteConnection::connect(&format!(
        "sqlite://{}",
        data_dir.join("wa-gateway.db").display()
    ))
    .await
    .unwrap();
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut lock)
        .await
        .unwrap();
    // Requests that claim an idempotency key now wait on the lock, as do the flusher, the
    // fleet monitor and the workers' heartbeats.
    let stuck: Vec<_> = (0..4)
        .map(|n| {
            let request = client
                .post(format!("{}/api/v1/external/send", gateway.base_url()))
                .header("X-API-Key", &customer.key)
                .header("Idempotency-Key", format!("locked-{n}"))
                .json(
                    &json!({"sessionId": customer.sessions[0], "to": "6281234567890", "message": "m"}),
                );
            tokio::spawn(async move {
                let answer = request.send().await?;
                let status = answer.status().as_u16();
                let retry_after = answer.headers().contains_key("retry-after");
                Ok::<_, reqwest::Error>((status, retry_after, answer.json::<Value>().await?))
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let took = gateway.terminate(Duration::from_secs(40)).await;
    eprintln!("stopped in {took:?} with the store locked");
    // Answered during the drain, once the lock outlasted SQLite's busy timeout: a 503 with
    // Retry-After, never a 500.
    for request in stuck {
        let (status, retry_after, body) = request.await.unwrap().unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(retry_after, "503 without Retry-After: {body}");
        assert_eq!(body["error"]["code"], "STORE_UNAVAILABLE", "{body}");
    }
    sqlx::raw_sql("ROLLBACK").execute(&mut lock).await.unwrap();
    for worker in customer.workers {
        worker.kill().await;
    }
}
