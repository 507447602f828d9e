//! The processes a self-contained run spawns: one `wa-gateway serve` and `--workers`
//! `wa-gateway sim-worker`s, all this same executable, on free loopback ports, sharing a random
//! worker token, with a temporary `DATA_DIR` and tier limits and pacing that cannot cut the run.
//!
//! Children run in the temporary directory (so no stray `.env` is read) with their output in log
//! files there. They are killed if the load generator exits early (`kill_on_drop`); a normal end
//! stops them with SIGTERM so the workers unregister. The directory is removed after a clean run
//! and kept, with its logs, after a failed one.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::process::{Child, Command};

use crate::config::Secret;

/// How long the gateway may take to answer its health check (migrations included).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a child may take to exit after SIGTERM before it is killed: a worker unregisters
/// first, and the gateway drains and then stops its consumers.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Far above anything a run can reach, yet within the `u32` the limits are parsed into.
const UNLIMITED: &str = "1000000000";
/// Variables handed to the spawned gateway when the load generator's environment has them, so
/// the same run measures PostgreSQL, Redis or Kafka instead of the embedded backends (or the
/// consumers at another priority or burst rate).
const PASSED_THROUGH: [&str; 5] = [
    "DATABASE_URL",
    "REDIS_URL",
    "KAFKA_BROKERS",
    "CONSUMER_NICE",
    "DELIVERY_BURST_RATE",
];

/// What the spawned processes are to look like.
pub struct SpawnOptions {
    /// Names things unique to this run (worker ids, Redis key prefix).
    pub run_id: String,
    /// Simulated workers to start.
    pub workers: u32,
    /// Sessions each simulated worker accepts.
    pub sessions_per_worker: u32,
    /// Whether the simulated workers send message-status callbacks.
    pub receipts: bool,
    /// The simulated workers' nice value.
    pub nice: u8,
}

/// The temporary directory of a run: removed by [`RunDir::remove`], kept (and its path printed)
/// when dropped without it, so a failed run leaves its logs behind.
struct RunDir {
    path: PathBuf,
    removed: bool,
}

impl RunDir {
    fn create(run_id: &str) -> anyhow::Result<RunDir> {
        let path = std::env::temp_dir().join(format!("wa-gateway-loadgen-{run_id}"));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("could not create {}", path.display()))?;
        Ok(RunDir {
            path,
            removed: false,
        })
    }

    fn remove(&mut self) {
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => self.removed = true,
            Err(err) => eprintln!("loadgen: could not remove {}: {err}", self.path.display()),
        }
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.removed {
            eprintln!("loadgen: logs and data kept in {}", self.path.display());
        }
    }
}

/// A spawned child and the log file its output goes to.
struct Spawned {
    name: String,
    child: Child,
    log: PathBuf,
}

/// The running gateway and simulated workers.
pub struct Processes {
    /// `http://127.0.0.1:<port>` of the gateway.
    pub base_url: String,
    /// `http://127.0.0.1:<port>` of each simulated worker.
    pub sim_urls: Vec<String>,
    /// The `WORKER_AUTH_TOKEN` of all of them (also the bearer of `/sim/…`).
    pub worker_token: Secret<String>,
    gateway: Spawned,
    /// How the gateway was started, to start it again after [`Processes::kill_gateway`].
    gateway_spec: GatewaySpec,
    sims: Vec<Spawned>,
    // Declared last: dropped after the children are killed.
    dir: RunDir,
}

impl Processes {
    /// Starts the gateway, waits until it is healthy, then starts the simulated workers and
    /// waits until they answer.
    pub async fn start(client: &reqwest::Client, options: &SpawnOptions) -> anyhow::Result<Self> {
        let executable =
            std::env::current_exe().context("could not find this executable to spawn")?;
        let dir = RunDir::create(&options.run_id)?;
        let worker_token = Secret::new(crate::auth::random_token(48));
        let jwt_secret = crate::auth::random_token(48);

        let gateway_spec = GatewaySpec {
            executable: executable.clone(),
            port: free_port()?,
            worker_token: worker_token.clone(),
            jwt_secret: jwt_secret.clone(),
            run_id: options.run_id.clone(),
        };
        let base_url = format!("http://127.0.0.1:{}", gateway_spec.port);
        let gateway = spawn(gateway_spec.command(&dir.path), "gateway", &dir.path)?;
        let mut processes = Processes {
            base_url,
            sim_urls: Vec::new(),
            worker_token,
            gateway,
            gateway_spec,
            sims: Vec::new(),
            dir,
        };
        let health = format!("{}/api/v1/health", processes.base_url);
        processes.wait_answering(client, &health).await?;

        for index in 0..options.workers {
            let port = free_port()?;
            let name = format!("sim-{index}");
            let mut command = child_command(&executable, &processes.dir.path);
            command
                .args(["sim-worker", "--ideal"])
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(["--backend", &processes.base_url])
                .args(["--worker-id", &format!("lg-{}-w{index}", options.run_id)])
                .args(["--max-sessions", &options.sessions_per_worker.to_string()])
                .args(["--heartbeat-interval-ms", "5000"])
                .args(["--auto-connect-ms", "100"])
                .args(["--receipts", &options.receipts.to_string()])
                .args(["--nice", &options.nice.to_string()])
                .env("DATA_DIR", processes.dir.path.join(&name))
                .env("WORKER_AUTH_TOKEN", processes.worker_token.expose())
                .env("JWT_SECRET", &jwt_secret);
            let sim = spawn(command, &name, &processes.dir.path)?;
            processes.sims.push(sim);
            processes.sim_urls.push(format!("http://127.0.0.1:{port}"));
        }
        for url in processes.sim_urls.clone() {
            processes
                .wait_answering(client, &format!("{url}/health"))
                .await?;
        }
        Ok(processes)
    }

    /// `kill -9` of the gateway: no drain, no flush, its consumer-group membership left behind.
    pub async fn kill_gateway(&mut self) -> anyhow::Result<()> {
        self.gateway
            .child
            .kill()
            .await
            .context("could not kill the gateway")
    }

    /// Starts the gateway again, on the same port, store and log, and waits until it answers.
    pub async fn restart_gateway(&mut self, client: &reqwest::Client) -> anyhow::Result<()> {
        let command = self.gateway_spec.command(&self.dir.path);
        self.gateway = spawn_appending(command, "gateway", &self.dir.path)?;
        let health = format!("{}/api/v1/health", self.base_url);
        self.wait_answering(client, &health).await
    }

    /// Polls `url` until it answers 2xx; fails early when a child has exited.
    async fn wait_answering(&mut self, client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.check_running()?;
            if let Ok(response) = client.get(url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{url} did not answer within {START_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fails, naming the log, if a child has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for spawned in std::iter::once(&mut self.gateway).chain(self.sims.iter_mut()) {
            if let Some(status) = spawned
                .child
                .try_wait()
                .with_context(|| format!("could not check on the {}", spawned.name))?
            {
                anyhow::bail!(
                    "the {} exited ({status}); see {}",
                    spawned.name,
                    spawned.log.display()
                );
            }
        }
        Ok(())
    }

    /// Stops the simulated workers (they unregister), then the gateway; removes the temporary
    /// directory unless `keep_files`.
    /// A child that had to be killed keeps the directory too: its log says what it was doing.
    pub async fn stop(mut self, keep_files: bool) {
        let sims = futures_util::future::join_all(self.sims.iter_mut().map(stop)).await;
        let gateway = stop(&mut self.gateway).await;
        if !keep_files && gateway && !sims.contains(&false) {
            self.dir.remove();
        }
    }
}

/// What the gateway child is started with (again, after a kill).
struct GatewaySpec {
    executable: PathBuf,
    port: u16,
    worker_token: Secret<String>,
    jwt_secret: String,
    run_id: String,
}

impl GatewaySpec {
    fn command(&self, dir: &Path) -> Command {
        let mut command = child_command(&self.executable, dir);
        command
            .arg("serve")
            .env("PORT", self.port.to_string())
            .env("DATA_DIR", dir.join("gateway"))
            .env("WORKER_AUTH_TOKEN", self.worker_token.expose())
            .env("JWT_SECRET", &self.jwt_secret)
            // Setup takes seconds, but a long run must not outlive its token.
            .env("JWT_ACCESS_TOKEN_TTL_SECONDS", "86400")
            .env("REDIS_KEY_PREFIX", format!("wag-loadgen-{}:", self.run_id))
            // Topics and groups of their own on a shared cluster: no earlier run's records.
            .env("KAFKA_TOPIC_PREFIX", format!("lg-{}.", self.run_id));
        for tier in ["BASIC", "PRO", "MAX"] {
            for limit in [
                "MAX_SESSIONS",
                "MAX_MESSAGES_PER_HOUR",
                "MAX_API_CALLS_PER_HOUR",
            ] {
                command.env(format!("{tier}_TIER_{limit}"), UNLIMITED);
            }
            // Pacing off: the benchmark measures the pipeline, not the anti-ban delays.
            command.env(format!("{tier}_TIER_SEND_INTERVAL_MS"), "0");
            command.env(format!("{tier}_TIER_SEND_JITTER_MS"), "0");
        }
        for name in PASSED_THROUGH {
            if let Ok(value) = std::env::var(name) {
                command.env(name, value);
            }
        }
        command
    }
}

/// The children log warnings only, unless `LOADGEN_CHILD_LOG_LEVEL` says otherwise (e.g. `info`
/// to follow a run in the logs the failed run leaves behind).
fn child_log_level() -> String {
    std::env::var("LOADGEN_CHILD_LOG_LEVEL").unwrap_or_else(|_| "warn".to_owned())
}

/// A command for this executable with the settings every child shares.
fn child_command(executable: &Path, dir: &Path) -> Command {
    let mut command = Command::new(executable);
    command
        .current_dir(dir)
        .env("APP_ENV", "development")
        .env("HOST", "127.0.0.1")
        .env("LOG_LEVEL", child_log_level())
        .env("RUST_LOG", child_log_level())
        .env("LOG_FORMAT", "pretty")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

fn spawn(command: Command, name: &str, dir: &Path) -> anyhow::Result<Spawned> {
    let log = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&log)
        .with_context(|| format!("could not create {}", log.display()))?;
    spawn_logging_to(command, name, log, file)
}

/// [`spawn`] for a child started again: its log goes on after the previous one's.
fn spawn_appending(command: Command, name: &str, dir: &Path) -> anyhow::Result<Spawned> {
    let log = dir.join(format!("{name}.log"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("could not open {}", log.display()))?;
    spawn_logging_to(command, name, log, file)
}

fn spawn_logging_to(
    mut command: Command,
    name: &str,
    log: PathBuf,
    file: std::fs::File,
) -> anyhow::Result<Spawned> {
    let stderr = file
        .try_clone()
        .with_context(|| format!("could not open {} twice", log.display()))?;
    command
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(stderr));
    let child = command
        .spawn()
        .with_context(|| format!("could not start the {name}"))?;
    Ok(Spawned {
        name: name.to_owned(),
        child,
        log,
    })
}

/// SIGTERM (the children shut down gracefully on it), then SIGKILL after [`STOP_GRACE`].
/// Whether the child ended by itself.
async fn stop(spawned: &mut Spawned) -> bool {
    if let Ok(Some(_)) = spawned.child.try_wait() {
        return true;
    }
    if let Some(pid) = spawned.child.id() {
        // `kill(1)`: the crate forbids `unsafe`, and a failed SIGTERM still ends in SIGKILL.
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
    if tokio::time::timeout(STOP_GRACE, spawned.child.wait())
        .await
        .is_err()
    {
        eprintln!(
            "loadgen: the {} had not stopped {STOP_GRACE:?} after SIGTERM; killing it",
            spawned.name
        );
        let _ = spawned.child.kill().await;
        return false;
    }
    true
}

/// A port nothing listens on right now: bind port 0, read it, let it go. Another process could
/// take it before the child binds it; on a benchmark machine that is rare, and the child then
/// fails loudly.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("could not bind a loopback port to find a free one")?;
    Ok(listener
        .local_addr()
        .context("could not read the bound port")?
        .port())
}
