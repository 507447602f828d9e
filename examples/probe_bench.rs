//! What probing the fleet costs the gateway: registers `--workers` workers (default 1,000),
//! lets the gateway probe each one's `GET /health` every second (`WORKER_PROBE_INTERVAL_MS`),
//! and measures the gateway process's CPU time over `--seconds` (default 30), against the same
//! process with no worker as the baseline.
//!
//! The workers' `/health` is one small HTTP server in a child process (so its CPU is not
//! counted), listening on 0.0.0.0: every `127.0.a.b` is loopback on Linux, so 1,000 distinct
//! worker endpoints `http://127.0.a.b:PORT` reach it. The child counts the probes it answered.
//!
//! ```sh
//! cargo run --release --example probe_bench -- --workers 1000 --seconds 30
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{Gateway, arg};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// CPU time (user + system) of this process, from /proc/self/stat.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SC_CLK_TCK is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// The child: answers `GET /health` on every connection, keep-alive, and prints how many
/// requests it answered when its stdin closes.
async fn serve_health(port: u16) {
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .unwrap();
    let answered = Arc::new(AtomicU64::new(0));
    let counter = answered.clone();
    tokio::spawn(async move {
        let mut line = String::new();
        let mut stdin = BufReader::new(tokio::io::stdin());
        loop {
            line.clear();
            if stdin.read_line(&mut line).await.unwrap_or(0) == 0 {
                println!("answered={}", counter.load(Ordering::Relaxed));
                std::process::exit(0);
            }
            println!("answered={}", counter.load(Ordering::Relaxed));
        }
    });
    println!("listening");
    loop {
        let (mut socket, _) = listener.accept().await.unwrap();
        let answered = answered.clone();
        tokio::spawn(async move {
            let body = r#"{"status":"healthy","uptime":1}"#;
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let mut buffer = vec![0u8; 4096];
            let mut pending = Vec::new();
            loop {
                let Ok(n) = socket.read(&mut buffer).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                pending.extend_from_slice(&buffer[..n]);
                while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    pending.drain(..end + 4);
                    answered.fetch_add(1, Ordering::Relaxed);
                    if socket.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve-health") {
        serve_health(args[i + 1].parse()?).await;
        return Ok(());
    }
    let workers = arg("--workers", 1000) as usize;
    let seconds = arg("--seconds", 30);

    let port = {
        let probe = std::net::TcpListener::bind("0.0.0.0:0")?;
        probe.local_addr()?.port()
    };
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["--serve-health", &port.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut child_out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut child_in = child.stdin.take().unwrap();
    anyhow::ensure!(child_out.next_line().await?.as_deref() == Some("listening"));

    let gateway = Gateway::start(&[
        // Long enough that no worker needs a heartbeat during the run.
        ("WORKER_HEARTBEAT_TIMEOUT_MS", "3600000".to_owned()),
        ("WORKER_PROBE_INTERVAL_MS", "1000".to_owned()),
    ])
    .await?;
    let (base_url, context, backend) =
        (&gateway.base_url, gateway.context.clone(), gateway.backend);
    let token = context.config.worker_auth_token.expose().clone();
    let client = reqwest::Client::new();

    // The baseline: the same process, no worker.
    let measure = |seconds: u64| async move {
        let (cpu, wall) = (cpu_time(), Instant::now());
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        (cpu_time() - cpu).as_secs_f64() / wall.elapsed().as_secs_f64()
    };
    let idle = measure(seconds).await;

    let registering = Instant::now();
    for w in 0..workers {
        let endpoint = format!("http://127.0.{}.{}:{port}", 1 + w / 250, 1 + w % 250);
        let answer = client
            .post(format!("{base_url}/api/workers/register"))
            .bearer_auth(&token)
            .json(&json!({"workerId": format!("probe-{w:04}"), "endpoint": endpoint, "maxSessions": 10}))
            .send()
            .await?;
        anyhow::ensure!(
            answer.status().is_success(),
            "registering {w}: {}",
            answer.text().await?
        );
    }
    let registered_in = registering.elapsed();
    // Let a few probe rounds settle (the first round records every worker's health).
    tokio::time::sleep(Duration::from_secs(5)).await;
    child_in.write_all(b"count\n").await?;
    let before: u64 = child_out.next_line().await?.unwrap_or_default()[9..].parse()?;
    let probing = measure(seconds).await;
    child_in.write_all(b"count\n").await?;
    let after: u64 = child_out.next_line().await?.unwrap_or_default()[9..].parse()?;
    let online = context
        .store
        .list_workers()
        .await?
        .iter()
        .filter(|w| w.status == wa_gateway::domain::WorkerStatus::Online)
        .count();
    let probes_per_s = (after - before) as f64 / seconds as f64;
    println!(
        "RESULT backend={backend} workers={workers} online={online} registered_in_ms={} probes_per_s={probes_per_s:.0} cpu_idle_pct={:.1} cpu_probing_pct={:.1} cpu_per_1000_probes_ms={:.1}",
        registered_in.as_millis(),
        idle * 100.0,
        probing * 100.0,
        (probing - idle).max(0.0) * 1000.0 / probes_per_s.max(1.0) * 1000.0,
    );
    drop(child_in);
    let _ = child.wait().await;
    gateway.stop().await
}
