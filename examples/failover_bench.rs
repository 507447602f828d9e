//! Failover benchmark: how long from a worker's death until every one of its sessions is
//! CONNECTED on another worker.
//!
//! Runs the real gateway (in this process, on the embedded store by default, or on
//! `DATABASE_URL`/`REDIS_URL` when set) and one simulated worker (the victim), places all
//! `--sessions` sessions of `--users` users on it, starts a second worker (the survivor), kills
//! the victim (state lost, no unregister: like `kill -9`), and prints when the gateway saw it
//! OFFLINE and when each session was CONNECTED on the survivor.
//!
//! ```sh
//! # the existing worker's behaviour and timings (30 s heartbeats, 90 s timeout), 100 customers
//! cargo run --release --example failover_bench -- --real-worker --sessions 100 --users 100 \
//!     --heartbeat-interval-ms 30000 --heartbeat-timeout-ms 90000
//! # one customer: the survivor's 5 session starts per 5 minutes per customer set the pace
//! cargo run --release --example failover_bench -- --real-worker --sessions 100 --users 1 \
//!     --heartbeat-interval-ms 30000 --heartbeat-timeout-ms 90000
//! ```
//!
//! `--real-worker` runs both simulators as the existing worker (every quirk, rate limits
//! included); the victim's rate limits are off, so that placing the sessions before the kill
//! does not take as long as the failover being measured. `--session-op-window-s` shortens the
//! survivor's session-operation window (default 300, the existing worker's) for a quick run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/mod.rs"]
mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use support::{Gateway, arg};
use wa_gateway::domain::{Email, Password, Role, SessionStatus, Tier};
use wa_gateway::sim::{Quirks, RateLimit, RateLimits, SimWorker, SimWorkerConfig};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sessions = arg("--sessions", 100) as usize;
    let users = (arg("--users", 1) as usize).clamp(1, sessions.max(1));
    let timeout_ms = arg("--heartbeat-timeout-ms", 5000);
    let heartbeat_ms = arg("--heartbeat-interval-ms", 1000);
    let window_s = arg("--session-op-window-s", 300);
    let real_worker = std::env::args().any(|a| a == "--real-worker");
    let gateway = Gateway::start(&[
        ("WORKER_HEARTBEAT_TIMEOUT_MS", timeout_ms.to_string()),
        ("WORKER_MONITOR_INTERVAL_MS", "200".to_owned()),
        ("WORKER_PROBE_INTERVAL_MS", "1000".to_owned()),
        ("MAX_TIER_MAX_SESSIONS", (sessions + 10).to_string()),
        ("MAX_TIER_MAX_API_CALLS_PER_HOUR", "1000000".to_owned()),
    ])
    .await?;
    let (base_url, context, backend) =
        (&gateway.base_url, gateway.context.clone(), gateway.backend);

    let token = context.config.worker_auth_token.expose().clone();
    let start_sim = |id: &str, limits: Option<RateLimits>| {
        let mut config = SimWorkerConfig::new(base_url.clone(), id, token.clone());
        config.heartbeat_interval = Duration::from_millis(heartbeat_ms);
        config.auto_connect = Duration::from_millis(100);
        config.max_sessions = (sessions * 2) as u32;
        config.quirks = if real_worker {
            Quirks {
                rate_limits: limits,
                ..Quirks::real()
            }
        } else {
            Quirks::ideal()
        };
        SimWorker::start(config)
    };
    let survivor_limits = RateLimits {
        session_operations: RateLimit {
            window: Duration::from_secs(window_s),
            ..RateLimits::real().session_operations
        },
        ..RateLimits::real()
    };
    let victim = start_sim("bench-victim", None).await?;
    while context.store.list_workers().await?.is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut owners = Vec::with_capacity(users);
    for u in 0..users {
        let owner = context
            .auth
            .create_user(
                &Email::parse(&format!("bench{u}@example.com"))?,
                "Bench",
                &Password::parse("password", "bench-pass-1")?,
                Role::User,
                Tier::Max,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        owners.push(owner);
    }
    for i in 0..sessions {
        let owner = &owners[i % users];
        let session = context
            .fleet
            .create_session(
                &owner.id,
                "bench",
                Some(&format!("bench-{i:04}")),
                (sessions + 10) as u32,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        context
            .fleet
            .connect(&session)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let all = context.store.list_sessions(None).await?;
        if all.len() == sessions && all.iter().all(|s| s.status == SessionStatus::Connected) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "sessions did not all connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let survivor = start_sim("bench-survivor", real_worker.then_some(survivor_limits)).await?;
    while context.store.list_workers().await?.len() < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let victim_id = victim.worker_id().to_owned();
    let moving: HashSet<String> = victim
        .sessions()
        .into_iter()
        .map(|s| s.session_id)
        .collect();
    println!(
        "backend={backend} real_worker={real_worker} sessions={sessions} users={users} on_killed_worker={} heartbeat_timeout_ms={timeout_ms} heartbeat_interval_ms={heartbeat_ms} survivor_session_op_window_s={window_s}",
        moving.len()
    );

    let killed_at = Instant::now();
    victim.kill().await;
    let mut offline_after = None;
    let mut done: HashMap<String, Duration> = HashMap::new();
    // Under the existing worker's limit (5 session starts per window per customer) one
    // customer's sessions need sessions / 5 windows; allow that twice over.
    let per_user = sessions.div_ceil(users) as u64;
    let windows = if real_worker { per_user.div_ceil(5) } else { 1 };
    let bound = Duration::from_millis(timeout_ms)
        + Duration::from_secs(60)
        + Duration::from_secs(2 * windows * window_s);
    let deadline = killed_at + bound;
    let mut next_report = killed_at + Duration::from_secs(30);
    while done.len() < moving.len() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {}/{} sessions failed over within {bound:?}",
            done.len(),
            moving.len()
        );
        if offline_after.is_none()
            && context.store.worker_by_id(&victim_id).await?.status
                == wa_gateway::domain::WorkerStatus::Offline
        {
            offline_after = Some(killed_at.elapsed());
        }
        for session in context.store.list_sessions(None).await? {
            if moving.contains(&session.id)
                && !done.contains_key(&session.id)
                && session.status == SessionStatus::Connected
                && session.worker_id.as_deref() != Some(victim_id.as_str())
            {
                done.insert(session.id.clone(), killed_at.elapsed());
            }
        }
        if Instant::now() >= next_report {
            println!(
                "progress t={:.0}s connected_elsewhere={}/{}",
                killed_at.elapsed().as_secs_f64(),
                done.len(),
                moving.len()
            );
            next_report += Duration::from_secs(30);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut times: Vec<Duration> = done.values().copied().collect();
    times.sort();
    let running = survivor.sessions();
    let single_owner = running.len() == sessions
        && moving
            .iter()
            .all(|id| running.iter().any(|s| &s.session_id == id));
    let offline = offline_after.unwrap_or_default();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "RESULT failover_sessions={} lost=0 detect_offline_ms={:.0} p50_ms={:.0} max_ms={:.0} p50_after_detect_ms={:.0} max_after_detect_ms={:.0} single_owner={}",
        times.len(),
        ms(offline),
        ms(percentile(&times, 0.5)),
        ms(*times.last().unwrap()),
        ms(percentile(&times, 0.5).saturating_sub(offline)),
        ms(times.last().unwrap().saturating_sub(offline)),
        single_owner
    );
    survivor.kill().await;
    gateway.stop().await
}
