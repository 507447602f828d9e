//! The store: one repository layer over SQLite (embedded default) and PostgreSQL.
//!
//! Both backends are reached through sqlx's `Any` driver, so every query is written once. That
//! works because the schema (see `migrations/`) sticks to the types both share: TEXT ids, BIGINT
//! epoch milliseconds, nullable instants instead of booleans, TEXT enumerations under CHECK
//! constraints. Placeholders are `$1, $2, …`, which SQLite accepts as positional parameters.
//!
//! Each submodule adds the repository methods of one aggregate to [`Store`].

mod api_keys;
mod idempotency;
mod messages;
mod refresh_tokens;
mod sessions;
mod usage;
mod users;
mod workers;
mod write_gate;

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{AnyPool, ConnectOptions, Connection};

pub use api_keys::{ApiKeyRecord, NewApiKey};
pub use idempotency::{IdempotencyClaim, request_fingerprint};
pub use messages::{
    MessageEvent, MessageListQuery, MessageRecord, MessageStatusChange, NewOutboundMessage,
};
pub use refresh_tokens::{NewRefreshToken, RefreshOutcome, RefreshTokenRecord};
pub use sessions::{Session, SessionReport};
pub use usage::UsageRecord;
pub use users::{NewUser, User, UserListQuery, UserPage, UserUpdate};
pub use workers::{Worker, WorkerMetricsSample, WorkerRegistration};

static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// Which database is behind the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The embedded SQLite file in `DATA_DIR`.
    Sqlite,
    /// PostgreSQL at `DATABASE_URL`.
    Postgres,
}

impl Backend {
    /// Name for health answers and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Failures a repository method reports; the HTTP layer maps them to status codes.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was violated (e.g. the e-mail is taken).
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// The row does not exist (or is not visible to the caller).
    #[error("not found")]
    NotFound,
    /// Anything else: the database is down, a row is corrupt, a bug.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl StoreError {
    /// Classifies a sqlx error, turning unique violations into [`StoreError::Conflict`].
    pub(crate) fn from_sqlx(err: sqlx::Error, conflict: &'static str) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(conflict),
            sqlx::Error::RowNotFound => StoreError::NotFound,
            _ => StoreError::Unexpected(anyhow::Error::new(err)),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        Self::from_sqlx(err, "duplicate")
    }
}

/// Where to connect.
#[derive(Clone, Debug)]
pub enum StoreLocation<'a> {
    /// An SQLite file (created if missing, WAL mode).
    SqliteFile(&'a Path),
    /// A PostgreSQL URL.
    Postgres(&'a str),
}

/// The handle every component shares; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite allows one writer at a time and makes the others wait in its busy handler, which
    /// sleeps in growing steps (1, 2, 5, 10… ms): a latency cliff for the pipeline's hot write
    /// paths. They queue here instead, recordings of read messages first (unused on
    /// PostgreSQL, which has row locks).
    write_gate: std::sync::Arc<write_gate::WriteGate>,
}

impl Store {
    /// Connects (creating the SQLite file when needed). Does not migrate: see [`Store::migrate`].
    pub async fn connect(location: StoreLocation<'_>) -> anyhow::Result<Self> {
        install_default_drivers();
        match location {
            StoreLocation::SqliteFile(path) => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("creating data directory {}", parent.display()))?;
                }
                // WAL is a property of the file: set it once through a native connection, and
                // every pooled connection opened after that uses it.
                let native = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .connect()
                    .await
                    .with_context(|| format!("opening SQLite database {}", path.display()))?;
                native.close().await.ok();
                let url = format!("sqlite://{}", path.display());
                let pool = AnyPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(10))
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            // NORMAL is durable in WAL mode except for the last commits before a
                            // power loss; the log tables that must not lose accepted messages
                            // use their own FULL-synchronous connection.
                            sqlx::query("PRAGMA synchronous = NORMAL")
                                .execute(&mut *conn)
                                .await?;
                            sqlx::query("PRAGMA foreign_keys = ON")
                                .execute(&mut *conn)
                                .await?;
                            sqlx::query("PRAGMA busy_timeout = 10000")
                                .execute(&mut *conn)
                                .await?;
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await
                    .with_context(|| format!("opening SQLite pool on {}", path.display()))?;
                Ok(Self {
                    pool,
                    backend: Backend::Sqlite,
                    write_gate: Default::default(),
                })
            }
            StoreLocation::Postgres(url) => {
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await
                    .context("connecting to PostgreSQL (DATABASE_URL)")?;
                Ok(Self {
                    pool,
                    backend: Backend::Postgres,
                    write_gate: Default::default(),
                })
            }
        }
    }

    /// Applies pending migrations of this backend (idempotent, safe while other processes run).
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATOR,
            Backend::Postgres => &POSTGRES_MIGRATOR,
        };
        migrator
            .run(&self.pool)
            .await
            .with_context(|| format!("applying {} migrations", self.backend.as_str()))
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Held around a hot-path write transaction on SQLite (see `write_gate`); `None` on
    /// PostgreSQL, which has row locks and needs no queue.
    pub(crate) async fn write_turn(&self) -> Option<write_gate::WriteTurn> {
        match self.backend {
            Backend::Sqlite => Some(self.write_gate.normal().await),
            Backend::Postgres => None,
        }
    }

    /// [`write_turn`](Self::write_turn) ahead of the waiting normal writers: for the writes
    /// every message waits for on its way to the worker.
    pub(crate) async fn urgent_write_turn(&self) -> Option<write_gate::WriteTurn> {
        match self.backend {
            Backend::Sqlite => Some(self.write_gate.urgent().await),
            Backend::Postgres => None,
        }
    }

    /// The connection pool, for repository modules and tests.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Round-trips a trivial query; the health endpoint's store probe.
    pub async fn ping(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        tokio::time::timeout(
            Duration::from_secs(2),
            sqlx::query("SELECT 1").execute(&self.pool),
        )
        .await
        .context("store did not answer within 2 s")?
        .context("store query failed")?;
        Ok(started.elapsed())
    }

    /// Closes every connection; later calls fail. Used at shutdown (and by tests of `503`).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Parses a stored enumeration, reporting corruption as an unexpected error.
pub(crate) fn parse_column<T: FromStr<Err = String>>(
    column: &'static str,
    raw: &str,
) -> Result<T, StoreError> {
    raw.parse().map_err(|problem| {
        StoreError::Unexpected(anyhow::anyhow!("corrupt column {column}: {problem}"))
    })
}
