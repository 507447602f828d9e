//! The durable job queue of session migrations, on apalis: apalis-sqlite (a `jobs.db` file beside
//! the embedded store) or apalis-postgres (its own `apalis` schema in the gateway's database).
//!
//! Jobs carry an idempotency key of (session, epoch, 30-second window): the liveness monitor may
//! ask for the same move every second from several processes, but at most one job per window is
//! stored, and one that ran out of retries is asked for again in the next window.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use apalis::layers::retry::HasherRng;
use apalis::layers::retry::backoff::{ExponentialBackoffMaker, MakeBackoff};
use apalis::prelude::*;
use apalis_core::backend::ext::poll_strategy::{PollSnapshot, PollStrategy};
use apalis_postgres::PostgresStorage;
use apalis_sqlite::SqliteStorage;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

use super::Fleet;
use super::migration::{MigrateSession, MigrationOutcome};
use crate::domain::now_ms;

const QUEUE: &str = "session_migrations";
/// Window of the idempotency key.
pub(crate) const DEDUP_WINDOW_MS: i64 = 30_000;
/// How often idle workers look for new jobs.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// In-process attempts of one job before it is marked failed (then re-requested next window).
const RETRIES: usize = 12;
/// How long shutdown waits for migration jobs in progress (a job waiting for capacity would
/// otherwise hold it for all its retries).
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Wakes the job worker every period to look for new jobs.
///
/// apalis's own `IntervalStrategy` arms its next timer without polling it, so when a fetch
/// completes within the same poll the worker is left with no timer and sleeps until apalis's
/// 30-second heartbeat (seen here as migrations stalling under load). This strategy keeps
/// polling its interval until it is pending, so a wake-up is always registered.
struct TickStrategy {
    interval: tokio::time::Interval,
}

impl TickStrategy {
    fn new(period: Duration) -> Self {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { interval }
    }
}

impl PollStrategy for TickStrategy {
    fn poll_drive(
        &mut self,
        cx: &mut std::task::Context<'_>,
        _snapshot: &PollSnapshot,
    ) -> std::task::Poll<Option<()>> {
        let mut fired = false;
        while self.interval.poll_tick(cx).is_ready() {
            fired = true;
        }
        if fired {
            std::task::Poll::Ready(Some(()))
        } else {
            std::task::Poll::Pending
        }
    }
}

/// Where migration jobs are stored.
#[derive(Clone)]
pub enum MigrationQueue {
    /// apalis-sqlite.
    Sqlite(SqliteStorage<MigrateSession>),
    /// apalis-postgres.
    Postgres(PostgresStorage<MigrateSession>),
}

impl std::fmt::Debug for MigrationQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MigrationQueue::Sqlite(_) => f.write_str("MigrationQueue::Sqlite"),
            MigrationQueue::Postgres(_) => f.write_str("MigrationQueue::Postgres"),
        }
    }
}

impl MigrationQueue {
    /// Opens (creating and migrating) the SQLite job store at `path`.
    pub async fn sqlite(path: &Path) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // apalis runs its fetches and acks in transactions: the store's guard against a
            // connection wedged in one by a failed commit (full disk) applies here too.
            .after_release(crate::store::release_outside_transaction)
            .connect_with(options)
            .await
            .with_context(|| format!("opening job store {}", path.display()))?;
        SqliteStorage::setup(&pool)
            .await
            .map_err(|e| anyhow::anyhow!("setting up the SQLite job store: {e}"))?;
        let config = apalis_sqlite::Config::default().queue(QUEUE);
        Ok(MigrationQueue::Sqlite(
            SqliteStorage::new(&pool).with_config(config),
        ))
    }

    /// Connects to PostgreSQL and sets up apalis's schema (idempotent; separate from ours).
    pub async fn postgres(url: &str) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(url)
            .await
            .context("connecting the job store to PostgreSQL")?;
        PostgresStorage::setup(&pool)
            .await
            .map_err(|e| anyhow::anyhow!("setting up the PostgreSQL job store: {e}"))?;
        let config = apalis_postgres::Config::default().queue(QUEUE);
        Ok(MigrationQueue::Postgres(
            PostgresStorage::new(&pool).with_config(config),
        ))
    }

    /// Stores a job unless an equal one was stored in the current window.
    pub async fn enqueue(&self, job: MigrateSession) -> anyhow::Result<()> {
        self.enqueue_after(job, Duration::ZERO).await
    }

    /// Stores a job to run after `delay`, unless an equal one is due in the same window.
    pub async fn enqueue_after(&self, job: MigrateSession, delay: Duration) -> anyhow::Result<()> {
        let due = now_ms().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
        let key = format!(
            "{}:{}:{}:{}",
            job.session_id,
            job.expected_epoch,
            job.target_worker_id.as_deref().unwrap_or("*"),
            due / DEDUP_WINDOW_MS
        );
        // apalis re-runs a failed job at once until `max_attempts` (default 25); the in-process
        // retries with backoff are the only retries wanted, so the stored job gets one run.
        let mut task = TaskBuilder::new(job)
            .idempotency_key(key)
            .max_attempts(RETRIES + 1);
        if !delay.is_zero() {
            task = task.run_after(delay);
        }
        let task = task.build();
        let pushed = match self {
            MigrationQueue::Sqlite(storage) => storage
                .clone()
                .push_task(task)
                .await
                .map_err(|e| e.to_string()),
            MigrationQueue::Postgres(storage) => storage
                .clone()
                .push_task(task)
                .await
                .map_err(|e| e.to_string()),
        };
        match pushed {
            Ok(()) => Ok(()),
            // The unique index on the idempotency key refused a duplicate: the job exists.
            Err(message) if message.contains("idempotency") || message.contains("UNIQUE") => Ok(()),
            Err(message) => Err(anyhow::anyhow!("enqueueing a session migration: {message}")),
        }
    }

    /// Runs migration jobs until `shutdown` resolves; a job in progress is finished first.
    pub async fn run_worker(
        &self,
        fleet: Arc<Fleet>,
        name: String,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let backoff = ExponentialBackoffMaker::new(
            Duration::from_millis(200),
            Duration::from_secs(5),
            0.5,
            HasherRng::default(),
        )
        .map_err(|e| anyhow::anyhow!("backoff: {e}"))?
        .make_backoff();
        let (stopping_tx, stopping) = tokio::sync::oneshot::channel::<()>();
        let stop = async move {
            shutdown.await;
            let _ = stopping_tx.send(());
            Ok::<(), std::io::Error>(())
        };
        macro_rules! run {
            ($backend:expr) => {
                WorkerBuilder::new(name)
                    .backend($backend)
                    .data(fleet)
                    .concurrency(8)
                    .retry(RetryPolicy::retries(RETRIES).with_backoff(backoff))
                    .on_event(|ctx, event| match event {
                        Event::Error(err) => tracing::warn!(worker = ctx.name(), error = %err, "migration job error"),
                        other => tracing::debug!(worker = ctx.name(), event = ?other, "migration worker event"),
                    })
                    .build(handle_migration)
                    .run_until(stop)
            };
        }
        let worker = async {
            let ran = match self {
                MigrationQueue::Sqlite(storage) => {
                    run!(
                        storage
                            .clone()
                            .poll_with_strategy(TickStrategy::new(POLL_INTERVAL))
                    )
                    .await
                }
                MigrationQueue::Postgres(storage) => {
                    run!(
                        storage
                            .clone()
                            .poll_with_strategy(TickStrategy::new(POLL_INTERVAL))
                    )
                    .await
                }
            };
            ran.map_err(|e| anyhow::anyhow!("migration worker: {e}"))
        };
        // A job waiting for capacity retries with backoff inside the worker, which would hold the
        // shutdown for all its retries; past the grace it is left to the queue, which hands it to
        // a worker again once its lease lapses (as after a crash).
        let grace = async {
            if stopping.await.is_ok() {
                tokio::time::sleep(STOP_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            ran = worker => ran,
            () = grace => {
                tracing::warn!(
                    grace_ms = STOP_GRACE.as_millis() as u64,
                    "migration jobs still running at shutdown; the queue will run them again"
                );
                Ok(())
            }
        }
    }
}

/// Why a migration attempt should be retried.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct RetryLater(String);

async fn handle_migration(job: MigrateSession, fleet: Data<Arc<Fleet>>) -> Result<(), BoxDynError> {
    match fleet.migrate(&job).await {
        Ok(MigrationOutcome::Moved { .. }) | Ok(MigrationOutcome::Skipped(_)) => Ok(()),
        Ok(MigrationOutcome::RetryLater(why)) => {
            tracing::info!(session = %job.session_id, reason = why, "migration waiting for capacity");
            Err(Box::new(RetryLater(why.to_owned())))
        }
        Err(err) => {
            tracing::warn!(session = %job.session_id, error = %err, "migration attempt failed");
            Err(Box::new(RetryLater(err.to_string())))
        }
    }
}
