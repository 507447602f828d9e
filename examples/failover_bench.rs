//! Failover benchmark: how long from a worker's death until every one of its sessions is
//! CONNECTED on another worker.
//!
//! Runs the real gateway (in this process, on the embedded store by default, or on
//! `DATABASE_URL`/`REDIS_URL` when set) and two simulated workers, creates `--sessions` sessions,
//! kills the worker holding the most of them (state lost, no unregister: like `kill -9`), and
//! prints per-session failover times.
//!
//! ```sh
//! cargo run --release --example failover_bench -- --sessions 100 --heartbeat-timeout-ms 5000
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use wa_gateway::app::Application;
use wa_gateway::config::Config;
use wa_gateway::domain::{Email, Password, Role, SessionStatus, Tier};
use wa_gateway::sim::{Quirks, SimWorker, SimWorkerConfig};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sessions = arg("--sessions", 100) as usize;
    let timeout_ms = arg("--heartbeat-timeout-ms", 5000);
    let heartbeat_ms = arg("--heartbeat-interval-ms", 1000);
    let real_worker = std::env::args().any(|a| a == "--real-worker");
    let data_dir = tempfile::tempdir()?;
    let mut vars: HashMap<String, String> = HashMap::new();
    for (key, value) in [
        ("HOST", "127.0.0.1".to_owned()),
        ("PORT", "0".to_owned()),
        ("DATA_DIR", data_dir.path().display().to_string()),
        ("LOG_LEVEL", "error".to_owned()),
        ("WORKER_HEARTBEAT_TIMEOUT_MS", timeout_ms.to_string()),
        ("WORKER_MONITOR_INTERVAL_MS", "200".to_owned()),
        ("WORKER_PROBE_INTERVAL_MS", "1000".to_owned()),
        ("MAX_TIER_MAX_SESSIONS", (sessions + 10).to_string()),
        ("MAX_TIER_MAX_API_CALLS_PER_HOUR", "1000000".to_owned()),
    ] {
        vars.insert(key.to_owned(), value);
    }
    for key in ["DATABASE_URL", "REDIS_URL"] {
        if let Ok(value) = std::env::var(key) {
            vars.insert(key.to_owned(), value);
        }
    }
    let backend = if vars.contains_key("DATABASE_URL") {
        "postgres+redis"
    } else {
        "sqlite+in-process"
    };
    let config = Config::from_vars(vars)?;
    wa_gateway::telemetry::init(&config.log_level, config.log_format);
    let application = Application::build(config).await?;
    let base_url = format!("http://{}", application.local_addr());
    let context = application.context();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until_stopped(async move {
        let _ = stop_rx.await;
    }));

    let token = context.config.worker_auth_token.expose().clone();
    let start_sim = |id: &str| {
        let mut config = SimWorkerConfig::new(base_url.clone(), id, token.clone());
        config.heartbeat_interval = Duration::from_millis(heartbeat_ms);
        config.auto_connect = Duration::from_millis(100);
        config.max_sessions = (sessions * 2) as u32;
        // `--real-worker`: the existing worker's behaviour, its rate limits included (5 session
        // starts per 5 minutes per customer). Without it the ideal worker, as the README's
        // figures were measured.
        config.quirks = if real_worker {
            Quirks::real()
        } else {
            Quirks::ideal()
        };
        SimWorker::start(config)
    };
    let w1 = start_sim("bench-w1").await?;
    let w2 = start_sim("bench-w2").await?;
    while context.store.list_workers().await?.len() < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let owner = context
        .auth
        .create_user(
            &Email::parse("bench@example.com")?,
            "Bench",
            &Password::parse("password", "bench-pass-1")?,
            Role::User,
            Tier::Max,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for i in 0..sessions {
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
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = context.store.list_sessions(None).await?;
        if all.len() == sessions && all.iter().all(|s| s.status == SessionStatus::Connected) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "sessions did not all connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (victim, survivor) = if w1.sessions().len() >= w2.sessions().len() {
        (w1, w2)
    } else {
        (w2, w1)
    };
    let victim_id = victim.worker_id().to_owned();
    let moving: HashSet<String> = victim
        .sessions()
        .into_iter()
        .map(|s| s.session_id)
        .collect();
    println!(
        "backend={backend} sessions={sessions} on_killed_worker={} heartbeat_timeout_ms={timeout_ms} heartbeat_interval_ms={heartbeat_ms}",
        moving.len()
    );

    let killed_at = Instant::now();
    victim.kill().await;
    let mut offline_after = None;
    let mut done: HashMap<String, Duration> = HashMap::new();
    let deadline = killed_at + Duration::from_millis(timeout_ms) + Duration::from_secs(60);
    while done.len() < moving.len() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {}/{} sessions failed over",
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
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut times: Vec<Duration> = done.values().copied().collect();
    times.sort();
    let owners_ok = survivor.sessions().len() == sessions;
    let offline = offline_after.unwrap_or_default();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "RESULT failover_sessions={} detect_offline_ms={:.0} p50_ms={:.0} max_ms={:.0} p50_after_detect_ms={:.0} max_after_detect_ms={:.0} single_owner={}",
        times.len(),
        ms(offline),
        ms(percentile(&times, 0.5)),
        ms(*times.last().unwrap()),
        ms(percentile(&times, 0.5).saturating_sub(offline)),
        ms(times.last().unwrap().saturating_sub(offline)),
        owners_ok
    );
    survivor.kill().await;
    let _ = stop_tx.send(());
    server.await??;
    Ok(())
}
