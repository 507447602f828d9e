//! Building the application is separate from running it: [`Application::build`] connects the
//! store and caches, migrates and binds the listener; [`Application::run_until_stopped`] serves
//! until the shutdown future resolves, then drains in-flight requests and flushes batched
//! bookkeeping. Tests build it on port 0 and drive the production path over HTTP.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::AuthService;
use crate::auth::api_keys::{LastUsedTracker, VerifiedKeys};
use crate::auth::jwt::JwtKeys;
use crate::config::Config;
use crate::delivery::events::run_events;
use crate::delivery::run_delivery;
use crate::fleet::client::WorkerClient;
use crate::fleet::jobs::MigrationQueue;
use crate::fleet::routing::RouteCache;
use crate::fleet::{Fleet, FleetSettings};
use crate::limits::{Counters, InProcessCounters, RedisCounters, connect_redis};
use crate::metrics::Metrics;
use crate::pipeline::{DELIVERY_GROUP, EVENTS_GROUP, Pipeline};
use crate::priority::{IngressPressure, PriorityRuntime};
use crate::quota::Quotas;
use crate::send::Ingress;
use crate::store::{Store, StoreLocation};

/// Everything a request handler may need; shared behind an `Arc`.
#[derive(Debug)]
pub struct AppContext {
    /// The loaded configuration.
    pub config: Config,
    /// The store.
    pub store: Store,
    /// Account flows and token checks.
    pub auth: AuthService,
    /// Shared counters (login throttling, quotas).
    pub counters: Arc<Counters>,
    /// Tier quotas and usage accounting.
    pub quotas: Quotas,
    /// Batched API key `last_used` bookkeeping.
    pub api_key_usage: LastUsedTracker,
    /// Recently verified API keys (a two-second cache in front of the store).
    pub verified_keys: VerifiedKeys,
    /// Prometheus registry and instruments.
    pub metrics: Metrics,
    /// Workers, sessions, routing, migrations.
    pub fleet: Arc<Fleet>,
    /// The log under the send pipeline.
    pub pipeline: Pipeline,
    /// Accepts sends into the outbound log.
    pub ingress: Ingress,
    /// HTTP requests in flight: the consumers yield to a burst.
    pub pressure: IngressPressure,
    /// When this process started (health uptime).
    pub started_at: Instant,
    /// Flips to `true` when shutdown starts, so endless responses (SSE) end and drain completes.
    pub shutting_down: watch::Sender<bool>,
    /// Open event streams per user (`SSE_MAX_STREAMS_PER_USER`).
    pub streams: crate::http::streams::StreamSlots,
    /// Customer webhook endpoints.
    pub webhooks: crate::webhooks::Endpoints,
}

impl AppContext {
    /// Connects every backend the configuration names and migrates the store.
    pub async fn connect(config: Config) -> anyhow::Result<Self> {
        crate::config::make_data_dir_private(&config.data_dir)?;
        let store = open_store(&config).await?;
        store.migrate().await?;
        let redis = match &config.redis_url {
            Some(url) => Some(connect_redis(url.expose()).await?),
            None => None,
        };
        let counters = Arc::new(match &redis {
            Some(conn) => {
                Counters::Redis(RedisCounters::new(conn.clone(), &config.redis_key_prefix))
            }
            None => Counters::InProcess(InProcessCounters::default()),
        });
        let jwt = JwtKeys::new(
            config.jwt_secret.expose().as_bytes(),
            config.access_token_ttl,
        );
        let auth = AuthService::new(
            store.clone(),
            jwt,
            counters.clone(),
            config.login_throttle,
            config.refresh_token_ttl,
        );
        let quotas = Quotas::new(counters.clone(), config.tiers);
        let routes = match redis {
            Some(conn) => RouteCache::redis(conn, &config.redis_key_prefix),
            None => RouteCache::in_process(),
        };
        let migrations = match &config.database_url {
            Some(url) => MigrationQueue::postgres(url.expose()).await?,
            None => MigrationQueue::sqlite(&config.data_dir.join("jobs.db")).await?,
        };
        let fleet = Arc::new(Fleet::new(
            store.clone(),
            WorkerClient::new(
                config.worker_auth_token.clone(),
                config.worker_request_timeout,
            )?,
            routes,
            migrations,
            FleetSettings {
                heartbeat_timeout: config.worker_heartbeat_timeout,
                monitor_interval: config.worker_monitor_interval,
                probe_interval: config.worker_probe_interval,
                metrics_retention: config.worker_metrics_retention,
                reconcile_after: config.session_reconcile_after,
            },
        ));
        let pipeline = Pipeline::connect(&config).await?;
        let ingress = Ingress::new(pipeline.producer().clone(), pipeline.topics().outbound);
        let streams =
            crate::http::streams::StreamSlots::new(config.http_limits.sse_streams_per_user);
        let vault = Arc::new(crate::crypto::SecretBox::new(
            config.data_encryption_key.expose(),
            config
                .data_encryption_keys_previous
                .iter()
                .map(|key| key.expose().as_str()),
        ));
        let webhooks =
            crate::webhooks::Endpoints::new(store.clone(), vault, config.webhook_targets);
        Ok(Self {
            webhooks,
            pipeline,
            ingress,
            pressure: IngressPressure::default(),
            config,
            store,
            auth,
            counters,
            quotas,
            api_key_usage: LastUsedTracker::default(),
            verified_keys: VerifiedKeys::default(),
            metrics: Metrics::new()?,
            fleet,
            started_at: Instant::now(),
            shutting_down: watch::channel(false).0,
            streams,
        })
    }

    /// Writes batched bookkeeping (API key use, usage records). Called on a timer and at shutdown.
    pub async fn flush_batches(&self) {
        if let Err(err) = self.api_key_usage.flush(&self.store).await {
            tracing::warn!(
                error = format!("{err:#}"),
                "flushing API key last_used failed; will retry"
            );
        }
        if let Err(err) = self.quotas.flush_usage(&self.store).await {
            tracing::warn!(
                error = format!("{err:#}"),
                "flushing usage records failed; will retry"
            );
        }
    }
}

/// Opens a pool on the configured store (PostgreSQL, or the embedded SQLite file).
async fn open_store(config: &Config) -> anyhow::Result<Store> {
    match &config.database_url {
        Some(url) => Store::connect(StoreLocation::Postgres(url.expose())).await,
        None => Store::connect(StoreLocation::SqliteFile(&config.sqlite_path())).await,
    }
}

/// A built, bound, not yet running gateway.
pub struct Application {
    context: Arc<AppContext>,
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl Application {
    /// Connects, migrates and binds `HOST:PORT` (port 0 picks a free one).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let addr = SocketAddr::new(config.host, config.port);
        let context = Arc::new(AppContext::connect(config).await?);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr} (HOST/PORT)"))?;
        let local_addr = listener.local_addr().context("reading bound address")?;
        context.fleet.listening_on(local_addr);
        Ok(Self {
            context,
            listener,
            local_addr,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The shared context (tests reach the store and services through it).
    pub fn context(&self) -> Arc<AppContext> {
        self.context.clone()
    }

    /// Serves until `shutdown` resolves; then stops accepting, lets in-flight requests finish
    /// (bounded), stops background tasks and flushes their batches.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let flusher = tokio::spawn(run_flusher(self.context.clone(), stop_rx.clone()));
        let housekeeping = tokio::spawn(run_housekeeping(self.context.clone(), stop_rx.clone()));
        let monitor = tokio::spawn(run_fleet_monitor(
            self.context.fleet.clone(),
            stop_rx.clone(),
        ));
        let migrations = {
            let fleet = self.context.fleet.clone();
            let mut stop = stop_rx.clone();
            let name = format!("migrations-{}", uuid::Uuid::new_v4().simple());
            tokio::spawn(async move {
                let queue = fleet.migrations().clone();
                let stopped = async move {
                    let _ = stop.changed().await;
                };
                if let Err(err) = queue.run_worker(fleet, name, stopped).await {
                    tracing::error!(error = format!("{err:#}"), "migration worker stopped");
                }
            })
        };
        let consumers = PriorityRuntime::start("wa-consumers", self.context.config.consumer_nice)?;
        // The consumers' own pool, opened on their threads: its SQLite connection threads
        // inherit their priority, so the consumers' writes do not compete with the ingress.
        let consumer_store = {
            let config = self.context.config.clone();
            consumers
                .spawn(async move { open_store(&config).await })
                .await
                .context("opening the consumers' store pool")??
        };
        let topics = self.context.pipeline.topics();
        let instance_id = self
            .context
            .config
            .kafka_group_instance_id
            .clone()
            .unwrap_or_else(|| default_group_instance_id(self.local_addr.port()));
        let delivery = consumers.spawn(run_delivery(
            self.context.clone(),
            consumer_store.clone(),
            self.context
                .pipeline
                .source(DELIVERY_GROUP, &topics.outbound, &instance_id)?,
            topics.clone(),
            stop_rx.clone(),
        ));
        let events = consumers.spawn(run_events(
            self.context.clone(),
            consumer_store.clone(),
            self.context
                .pipeline
                .source(EVENTS_GROUP, &topics.events, &instance_id)?,
            stop_rx.clone(),
        ));
        let routes = crate::http::routes(self.context.clone());
        let shutting_down = self.context.shutting_down.clone();
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            addr = %self.local_addr,
            store = self.context.store.backend().as_str(),
            counters = if self.context.config.redis_url.is_some() { "redis" } else { "in-process" },
            log = self.context.pipeline.backend_name(),
            docs = format!("http://{}/api/v1/docs", self.local_addr),
            "wa-gateway listening"
        );
        crate::http::server::serve(
            self.listener,
            routes,
            self.context.clone(),
            async move {
                shutdown.await;
                tracing::info!("shutdown requested; draining in-flight requests");
                shutting_down.send_replace(true);
            },
            Duration::from_secs(20),
        )
        .await;
        let stopping = std::time::Instant::now();
        note_slow_stop("http", stopping);
        let _ = stop_tx.send(true);
        // Every step below can wait on a write (SQLite's busy timeout alone is 10 s a
        // statement): a store or log that cannot write must not keep the process from exiting.
        // The tasks share one deadline, the closing steps another, so a task that hangs cannot
        // take the log's close with it; what is still running at its deadline is abandoned
        // (nothing it was doing was acknowledged, the next process redoes it).
        let deadline = tokio::time::Instant::now() + STOP_TASKS_BOUND;
        for (name, mut task) in [
            ("flusher", flusher),
            ("housekeeping", housekeeping),
            ("fleet monitor", monitor),
            ("migration worker", migrations),
            ("delivery consumer", delivery),
            ("events consumer", events),
        ] {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Err(err)) => {
                    tracing::warn!(task = name, error = %err, "background task ended abnormally");
                }
                Ok(Ok(())) => {}
                Err(_) => {
                    task.abort();
                    tracing::error!(
                        task = name,
                        "background task abandoned at the stop deadline"
                    );
                }
            }
            note_slow_stop(name, stopping);
        }
        let deadline = tokio::time::Instant::now() + STOP_CLOSING_BOUND;
        bounded_stop("consumers' store", deadline, consumer_store.close()).await;
        drop(consumers);
        bounded_stop("batch flush", deadline, self.context.flush_batches()).await;
        note_slow_stop("batch flush", stopping);
        bounded_stop("log", deadline, self.context.pipeline.close()).await;
        note_slow_stop("log", stopping);
        bounded_stop("store", deadline, self.context.store.close()).await;
        note_slow_stop("store", stopping);
        tracing::info!("wa-gateway stopped");
        Ok(())
    }
}

/// How long the background tasks may take to stop after the HTTP drain: the delivery drain's
/// 10 s and a little more.
const STOP_TASKS_BOUND: Duration = Duration::from_secs(12);
/// How long the closing steps after them (final batch flush, log, store) may take together;
/// milliseconds when the disks answer.
const STOP_CLOSING_BOUND: Duration = Duration::from_secs(5);

/// Runs a shutdown step until `deadline`; past it the step is dropped, with an error naming it.
async fn bounded_stop(step: &str, deadline: tokio::time::Instant, work: impl Future<Output = ()>) {
    if tokio::time::timeout_at(deadline, work).await.is_err() {
        tracing::error!(step, "shutdown step abandoned at the stop deadline");
    }
}

/// Shutdown should take well under a second once requests are drained; a step still running
/// after that is worth a warning that names it.
fn note_slow_stop(step: &str, since: std::time::Instant) {
    let elapsed = since.elapsed();
    tracing::debug!(
        step,
        elapsed_ms = elapsed.as_millis() as u64,
        "shutdown step done"
    );
    if elapsed > Duration::from_secs(1) {
        tracing::warn!(
            step,
            elapsed_ms = elapsed.as_millis() as u64,
            "slow shutdown"
        );
    }
}

async fn run_flusher(context: Arc<AppContext>, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(context.config.flush_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Stop is looked at before every select: after a slow flush the ticker is ready too, and
    // the select picks one of two ready branches at random, so it would start another flush
    // half the time (with a store that cannot write, each waits out SQLite's busy timeout).
    while !*stop.borrow() {
        tokio::select! {
            _ = ticker.tick() => context.flush_batches().await,
            _ = stop.changed() => return,
        }
    }
}

/// Every ten minutes: expired idempotency keys go, and the embedded log drops what is past its
/// retention and read by every group. Safe in several processes at once.
async fn run_housekeeping(context: Arc<AppContext>, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(600));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        if let Err(err) = context.store.purge_idempotency_keys().await {
            tracing::warn!(error = %err, "purging idempotency keys failed");
        }
        if let Err(err) = context.pipeline.trim().await {
            tracing::warn!(
                error = format!("{err:#}"),
                "trimming the embedded log failed"
            );
        }
    }
}

/// The default static member id of this process in its Kafka consumer groups: the host name and
/// the HTTP port, which no two live gateway processes share and a restarted one keeps.
fn default_group_instance_id(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "wa-gateway".to_owned());
    format!("{host}-{port}")
}

/// Liveness checks every monitor interval, `/health` probes and metrics retention on their own
/// periods. Every step is safe to run in several processes at once.
async fn run_fleet_monitor(fleet: Arc<Fleet>, mut stop: watch::Receiver<bool>) {
    fleet.start_hearing();
    let settings = fleet.settings();
    let mut liveness = tokio::time::interval(settings.monitor_interval);
    let mut probes = tokio::time::interval(settings.probe_interval);
    let mut retention = tokio::time::interval(Duration::from_secs(600));
    for ticker in [&mut liveness, &mut probes, &mut retention] {
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        // As in `run_flusher`: slow steps leave the tickers ready, so look at stop first.
        if *stop.borrow() {
            return;
        }
        let result = tokio::select! {
            _ = liveness.tick() => fleet.check_liveness().await.map(|_| ()),
            _ = probes.tick() => fleet.probe_workers().await,
            _ = retention.tick() => fleet.prune_metrics().await,
            _ = stop.changed() => return,
        };
        if let Err(err) = result {
            tracing::warn!(error = %err, "fleet monitor step failed");
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is called, not when the
/// future is first polled: call it before binding, so a SIGTERM that arrives as soon as the port
/// answers is a graceful stop rather than the default (killed by the signal).
#[cfg(unix)]
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind: SignalKind, name: &'static str| {
        signal(kind)
            .inspect_err(|err| tracing::warn!(error = %err, "cannot listen for {name}"))
            .ok()
    };
    let mut terminate = listen(SignalKind::terminate(), "SIGTERM");
    let mut interrupt = listen(SignalKind::interrupt(), "Ctrl-C");
    async move {
        let received = |signal: &mut Option<tokio::signal::unix::Signal>| {
            let signal = signal.take();
            async move {
                match signal {
                    Some(mut signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
        };
        tokio::select! {
            () = received(&mut terminate) => {},
            () = received(&mut interrupt) => {},
        }
    }
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
