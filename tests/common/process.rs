//! A gateway as a child process (`wa-gateway serve`, this build), for the tests that must really
//! kill it, signal it or starve it, and the customer and simulated fleet those tests send
//! through.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::{Child, Command};
use wa_gateway::sim::{Quirks, SimWorker, SimWorkerConfig};

use super::{Backend, gateway_vars};

const BIN: &str = env!("CARGO_BIN_EXE_wa-gateway");

/// A `wa-gateway serve` child process on a fixed port, restartable on the same store and log.
pub struct GatewayProcess {
    child: Option<Child>,
    port: u16,
    pub vars: HashMap<String, String>,
    log: PathBuf,
}

impl GatewayProcess {
    pub async fn start(vars: HashMap<String, String>, log: PathBuf) -> Self {
        let port = vars["PORT"].parse().unwrap();
        let mut gateway = Self {
            child: None,
            port,
            vars,
            log,
        };
        gateway.spawn().await;
        gateway
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the process and waits until it answers its health check.
    pub async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env_remove("KAFKA_BROKERS")
            .envs(&self.vars)
            .current_dir(Path::new(&self.vars["DATA_DIR"]))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true);
        self.child = Some(command.spawn().unwrap());
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let healthy = client
                .get(format!("{}/api/v1/health", self.base_url()))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|answer| answer.status().is_success());
            if healthy {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "the gateway exited during start ({status}); its log:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not become healthy; its log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `kill -9`: no drain, no flush, no goodbye to the consumer group.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().unwrap();
            child.wait().await.unwrap();
        }
    }

    /// The gateway's worker token (the simulated workers need it).
    pub fn worker_token(&self) -> &str {
        &self.vars["WORKER_AUTH_TOKEN"]
    }

    /// SIGTERM; returns how long the process took to exit, and fails past `bound`.
    pub async fn terminate(mut self, bound: Duration) -> Duration {
        let mut child = self.child.take().expect("the gateway is running");
        let pid = child.id().expect("the gateway has a pid");
        let started = Instant::now();
        let signalled = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(signalled.success());
        let exit = match tokio::time::timeout(bound, child.wait()).await {
            Ok(exit) => exit.unwrap(),
            Err(_) => panic!(
                "the gateway did not stop within {bound:?} of SIGTERM:\n{}",
                self.log_text()
            ),
        };
        assert!(exit.success(), "exit {exit:?}:\n{}", self.log_text());
        started.elapsed()
    }

    /// The gateway's log without the request lines (what is left is what went wrong).
    pub fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|line| !line.contains("request finished"))
            .collect();
        lines[lines.len().saturating_sub(200)..].join("\n")
    }
}

/// The behaviour of every simulated worker the integration tests start: the existing worker's
/// (WORKER_PROTOCOL.md, "What the existing worker really does"), but for its rate limits
/// (10 sends per minute per session would make every pipeline test a test of that limit; the
/// tests in `real_worker.rs` meet them on purpose).
pub fn sim_quirks() -> Quirks {
    Quirks {
        rate_limits: None,
        ..Quirks::real()
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The environment of a gateway child of `backend` in `dir`: a free port, fresh secrets, then
/// `settings` on top.
pub async fn child_vars(
    backend: Backend,
    dir: &Path,
    settings: &[(&str, &str)],
) -> HashMap<String, String> {
    let mut vars = gateway_vars(backend, dir).await;
    vars.insert("PORT".into(), free_port().to_string());
    vars.insert("JWT_SECRET".into(), random_secret());
    vars.insert("WORKER_AUTH_TOKEN".into(), random_secret());
    for (key, value) in settings {
        vars.insert((*key).to_owned(), (*value).to_owned());
    }
    vars
}

pub fn random_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// A customer with an API key and `sessions` CONNECTED sessions on `workers` simulated workers.
pub struct Fleet {
    pub key: String,
    pub sessions: Vec<String>,
    pub workers: Vec<SimWorker>,
}

/// Each worker call takes `send_latency` at the workers.
pub async fn fleet(
    gateway: &GatewayProcess,
    workers: usize,
    sessions: usize,
    send_latency: Duration,
) -> Fleet {
    let client = reqwest::Client::new();
    let base = gateway.base_url();
    let email = format!("c{}@example.com", uuid::Uuid::new_v4().simple());
    let registered: Value = client
        .post(format!("{base}/api/v1/auth/register"))
        .json(&json!({"name": "Customer", "email": email, "password": "customer-pass-1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = registered["data"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{registered}"))
        .to_owned();
    let created: Value = client
        .post(format!("{base}/api/v1/users/api-keys"))
        .bearer_auth(&token)
        .json(&json!({"name": "integration"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["data"]["key"].as_str().unwrap().to_owned();
    let mut started = Vec::new();
    for index in 0..workers {
        let mut config = SimWorkerConfig::new(
            base.clone(),
            format!("w{index}-{}", uuid::Uuid::new_v4().simple()),
            gateway.vars["WORKER_AUTH_TOKEN"].clone(),
        );
        config.heartbeat_interval = Duration::from_millis(500);
        config.auto_connect = Duration::from_millis(50);
        config.register_delay = Duration::ZERO;
        config.register_retry_interval = Duration::from_millis(200);
        config.send_latency = send_latency;
        config.quirks = sim_quirks();
        started.push(SimWorker::start(config).await.unwrap());
    }
    let ids: Vec<String> = (0..sessions)
        .map(|i| format!("s{i}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in &ids {
        // Until every worker registered, a session may find no worker: try again.
        for (path, body) in [
            (
                "/api/v1/sessions".to_owned(),
                json!({"name": id, "sessionId": id}),
            ),
            (format!("/api/v1/sessions/{id}/connect"), json!({})),
        ] {
            loop {
                let answer = client
                    .post(format!("{base}{path}"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                if answer.status().is_success() {
                    break;
                }
                assert!(Instant::now() < deadline, "{path}: {}", answer.status());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    loop {
        let listed: Value = client
            .get(format!("{base}/api/v1/sessions"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let all = listed["data"].as_array().unwrap();
        if all.len() == ids.len() && all.iter().all(|s| s["status"] == "CONNECTED") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sessions not CONNECTED: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Fleet {
        key,
        sessions: ids,
        workers: started,
    }
}
