//! The simulated WhatsApp worker behind `wa-gateway sim-worker`: a faithful stand-in for the
//! open-source Node.js Baileys worker, for tests, demos, benchmarks and smoke tests. It speaks the
//! worker protocol of `docs/WORKER_PROTOCOL.md` on both sides (registration with retries,
//! heartbeats, recovery, unregistration, status and message callbacks; the gateway-facing session
//! and send endpoints with the real worker's strict validation) and holds no WhatsApp login.
//!
//! By default it also reproduces what the existing worker really does (the protocol's "What the
//! existing worker really does"): `400 SESSION_NOT_CONNECTED`, its validation error shape and
//! stricter rules, its rate limits, callbacks without `workerId` but on `QR_REQUIRED`, `INIT`
//! for sessions that connect, fail or whose QR expired, logouts as `DISCONNECTED` +
//! `loggedOutAt`, no recovery-status, a logout of every session on shutdown, a random
//! `cpuUsage`, and no token check on its own routes. Each is a field of [`Quirks`]:
//! [`Quirks::real`] is the default, [`Quirks::ideal`] the kind worker without any of them.
//!
//! Modules:
//! - `quirks`: the switches for the existing worker's behaviours, and its rate limits.
//! - `state`: sessions, accepted sends, the process-wide credential store.
//! - `worker`: the session lifecycle, sends, registration, heartbeats and recovery at run time.
//! - `server`: warp routes, the envelope and how refusals read, the accept loop.
//! - `limits`: the fixed-window rate limiters.
//! - `gateway`: calls to the gateway, callbacks with retry.
//! - `validate`: strict send and manage body validation.
//!
//! Invariants: nothing here imports the gateway's own modules (the simulator is an outside
//! party, like the real worker); every background task of a worker lives in its task set, so
//! [`SimWorker::kill`] leaves nothing running; session-status callbacks leave in the order the
//! transitions happened; sends through one session are recorded in arrival order; rate limiter
//! state is bounded.
//!
//! Simulation controls (same bearer token as the rest, when the token is checked):
//! `GET /sim/messages` (every accepted send in arrival order; `?after=<n>` answers
//! `{total, messages}` with only the sends from index `n` on, for pollers of large runs),
//! `GET /sim/sessions`, `POST /sim/sessions/{id}/scan` (connect now),
//! `POST /sim/sessions/{id}/drop` (`RECONNECTING`, then `CONNECTED` after 100 ms; the existing
//! worker reports `INIT` in between), `POST /sim/sessions/{id}/fail` (the connection fails until
//! a restart: `ERROR`, or `INIT` for the existing worker), `POST /sim/sessions/{id}/expire-qr`
//! (the QR was not scanned in time: `INIT` for the existing worker, a fresh QR otherwise),
//! `POST /sim/sessions/{id}/logout-from-phone` (like a logout, with `loggedOutFromPhone`),
//! `POST /sim/sessions/{id}/inbound` `{from, message?, type?}` (forwarded to
//! `POST /api/webhooks/message-received`), `POST /sim/fail-starts/{n}` (the next `n` session
//! starts answer `500`, as the existing worker does when its WhatsApp client fails to
//! initialise). None of them is rate-limited, not even by the global limit.

mod gateway;
mod limits;
mod quirks;
mod server;
mod state;
mod validate;
mod worker;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use quirks::{
    DEFAULT_GLOBAL_LIMIT, DEFAULT_GLOBAL_WINDOW, DEFAULT_SENDS_LIMIT, DEFAULT_SENDS_WINDOW,
    DEFAULT_SESSION_OPERATIONS_LIMIT, DEFAULT_SESSION_OPERATIONS_WINDOW, Quirks, RateLimit,
    RateLimits, RecoveryReport,
};
pub use state::{ReceivedSend, SessionStatus, SimSessionView};

use worker::Worker;

/// The version the simulator announces in registration and `/health`.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Default of `--max-sessions`.
pub const DEFAULT_MAX_SESSIONS: u32 = 50;
/// Default of `--heartbeat-interval-ms`, like the real worker.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// Default of `--auto-connect-ms`: how long a QR waits for a "scan" before connecting alone.
pub const DEFAULT_AUTO_CONNECT: Duration = Duration::from_secs(2);
/// Default number of registration retries, like the real worker.
pub const DEFAULT_REGISTER_RETRIES: u32 = 5;
/// Default pause between registration attempts, like the real worker.
pub const DEFAULT_REGISTER_RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// How a simulated worker is set up; one field per `sim-worker` flag.
#[derive(Clone)]
pub struct SimWorkerConfig {
    /// Where to listen (`--listen`); port 0 picks a free port.
    pub listen: SocketAddr,
    /// The gateway's base URL (`--backend`), e.g. `http://127.0.0.1:8000` (plain HTTP only).
    pub backend_url: String,
    /// This worker's id in the fleet (`--worker-id`).
    pub worker_id: String,
    /// The shared secret (`WORKER_AUTH_TOKEN`), sent on every call and, unless
    /// `quirks.open_routes`, required on every request but `GET /health`.
    pub auth_token: String,
    /// How many sessions this worker accepts (`--max-sessions`); more answer 503.
    pub max_sessions: u32,
    /// Period of heartbeats (`--heartbeat-interval-ms`); the first goes out one period after
    /// registration.
    pub heartbeat_interval: Duration,
    /// How long a QR waits before the session connects on its own (`--auto-connect-ms`);
    /// `POST /sim/sessions/{id}/scan` connects sooner.
    pub auto_connect: Duration,
    /// Added to every send (`--send-latency-ms`), inside the per-session queue.
    pub send_latency: Duration,
    /// Probability in `0.0..=1.0` that a send answers 500 (`--fail-rate`).
    pub fail_rate: f64,
    /// Whether accepted sends are followed by `SENT`, `DELIVERED` and `READ` message-status
    /// callbacks (`--receipts`, on by default like a real worker). Off, a benchmark measures the
    /// send path without the callback traffic.
    pub receipts: bool,
    /// Pause before the first registration (the real worker waits about 5 s).
    pub register_delay: Duration,
    /// Registration attempts after the first one fails.
    pub register_retries: u32,
    /// Pause between registration attempts.
    pub register_retry_interval: Duration,
    /// Which behaviours of the existing worker to reproduce (`--ideal` and the `--no-quirk-…`
    /// flags); [`Quirks::real`] by default.
    pub quirks: Quirks,
}

impl SimWorkerConfig {
    /// A configuration with the CLI defaults (the existing worker's quirks included), listening on
    /// a free loopback port.
    pub fn new(
        backend_url: impl Into<String>,
        worker_id: impl Into<String>,
        auth_token: impl Into<String>,
    ) -> Self {
        SimWorkerConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            backend_url: backend_url.into(),
            worker_id: worker_id.into(),
            auth_token: auth_token.into(),
            max_sessions: DEFAULT_MAX_SESSIONS,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            auto_connect: DEFAULT_AUTO_CONNECT,
            send_latency: Duration::ZERO,
            fail_rate: 0.0,
            receipts: true,
            register_delay: Duration::ZERO,
            register_retries: DEFAULT_REGISTER_RETRIES,
            register_retry_interval: DEFAULT_REGISTER_RETRY_INTERVAL,
            quirks: Quirks::real(),
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.auth_token.is_empty(),
            "the worker auth token (WORKER_AUTH_TOKEN) must not be empty"
        );
        anyhow::ensure!(
            !self.worker_id.is_empty(),
            "the worker id must not be empty"
        );
        if let Some(limits) = &self.quirks.rate_limits {
            let windows = [
                Some(limits.session_operations),
                Some(limits.sends),
                limits.global,
            ];
            anyhow::ensure!(
                windows
                    .iter()
                    .flatten()
                    .all(|limit| !limit.window.is_zero()),
                "a rate-limit window must be longer than zero"
            );
        }
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.fail_rate),
            "the fail rate must be between 0 and 1, got {}",
            self.fail_rate
        );
        // The HTTP client is built without TLS.
        anyhow::ensure!(
            self.backend_url.starts_with("http://"),
            "the backend URL must be a plain http:// URL, got {}",
            self.backend_url
        );
        Ok(())
    }
}

/// The token never prints.
impl std::fmt::Debug for SimWorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimWorkerConfig")
            .field("listen", &self.listen)
            .field("backend_url", &self.backend_url)
            .field("worker_id", &self.worker_id)
            .field("auth_token", &"<redacted>")
            .field("max_sessions", &self.max_sessions)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("auto_connect", &self.auto_connect)
            .field("send_latency", &self.send_latency)
            .field("fail_rate", &self.fail_rate)
            .field("receipts", &self.receipts)
            .field("register_delay", &self.register_delay)
            .field("register_retries", &self.register_retries)
            .field("register_retry_interval", &self.register_retry_interval)
            .field("quirks", &self.quirks)
            .finish()
    }
}

/// A running simulated worker. Dropping it aborts everything without unregistering, like
/// [`SimWorker::kill`] but without waiting.
pub struct SimWorker {
    worker: Arc<Worker>,
    local_addr: SocketAddr,
    /// Tells the server to stop accepting and drain; `None` once used.
    stop_server: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
}

impl SimWorker {
    /// Binds, starts serving, registers with the gateway in the background (with retries),
    /// starts heartbeats.
    pub async fn start(config: SimWorkerConfig) -> anyhow::Result<SimWorker> {
        config.check()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("could not listen on {}", config.listen))?;
        let local_addr = listener
            .local_addr()
            .context("could not read the bound address")?;
        let worker = Worker::launch(config, endpoint_for(local_addr))?;
        let (stop_server, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(server::serve(
            listener,
            server::routes(Arc::clone(&worker)),
            async move {
                // A dropped sender (the handle went away) also means stop.
                let _ = stopped.await;
            },
        ));
        tracing::info!(
            worker_id = worker.config.worker_id,
            endpoint = worker.endpoint,
            "simulated worker listening"
        );
        Ok(SimWorker {
            worker,
            local_addr,
            stop_server: Some(stop_server),
            server,
        })
    }

    /// The address the server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://<local_addr>`, the endpoint announced to the gateway (an unspecified listen
    /// address such as `0.0.0.0` is announced as loopback).
    pub fn endpoint(&self) -> String {
        self.worker.endpoint.clone()
    }

    /// The worker id.
    pub fn worker_id(&self) -> &str {
        &self.worker.config.worker_id
    }

    /// Unregisters (`DELETE /api/workers/unregister`, like the real worker on SIGINT) and stops.
    /// With `quirks.logout_on_shutdown` it then logs out every session, as the existing worker
    /// does: `DISCONNECTED` + `loggedOutAt` reports (after the unregister) and wiped
    /// credentials, so those sessions need a new QR afterwards. Everything is stopped even when
    /// unregistering fails; the error is returned afterwards.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        // Background work first, so no heartbeat can re-register after the unregister.
        self.worker.tasks.close().await;
        let unregistered = self.worker.gateway.unregister(&self.worker.endpoint).await;
        if self.worker.config.quirks.logout_on_shutdown {
            self.worker.log_out_every_session().await;
        }
        if let Some(stop) = self.stop_server.take() {
            let _ = stop.send(());
        }
        if let Err(err) = (&mut self.server).await {
            tracing::warn!(error = %err, "the simulated worker's server task failed");
        }
        tracing::info!(
            worker_id = self.worker.config.worker_id,
            "simulated worker stopped"
        );
        unregistered.context("could not unregister from the gateway")
    }

    /// Stops without telling anyone (like SIGKILL): connections drop, background tasks are
    /// aborted, state is lost, no unregister. Returns every send it had accepted, for tests that
    /// account for each message across the crash: a send still being handled when the kill lands
    /// is either in it or was never accepted.
    pub async fn kill(mut self) -> Vec<ReceivedSend> {
        let received = self.worker.state.crash();
        self.server.abort();
        let _ = (&mut self.server).await;
        self.worker.tasks.close().await;
        tracing::info!(
            worker_id = self.worker.config.worker_id,
            "simulated worker killed"
        );
        received
    }

    /// Snapshots of the sessions, sorted by id.
    pub fn sessions(&self) -> Vec<SimSessionView> {
        self.worker.state.sessions().views()
    }

    /// Every accepted send, in arrival order.
    pub fn messages(&self) -> Vec<ReceivedSend> {
        self.worker.state.messages()
    }
}

impl Drop for SimWorker {
    fn drop(&mut self) {
        self.server.abort();
        self.worker.tasks.abort_now();
    }
}

/// For the CLI: starts the worker, runs until `shutdown` resolves (ctrl-c, SIGTERM, SIGINT),
/// then unregisters, logs out every session unless the quirk is off, and stops
/// ([`SimWorker::shutdown`]).
pub async fn run(
    config: SimWorkerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let worker = SimWorker::start(config).await?;
    shutdown.await;
    tracing::info!("shutdown requested; unregistering");
    worker.shutdown().await
}

/// The URL the gateway can reach `local_addr` at.
fn endpoint_for(local_addr: SocketAddr) -> String {
    let reachable = match local_addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), local_addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), local_addr.port())
        }
        _ => local_addr,
    };
    format!("http://{reachable}")
}
