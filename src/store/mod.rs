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
mod webhooks;
mod workers;
mod write_gate;

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::future::BoxFuture;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::error::DatabaseError;
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnectionMetadata;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{AnyPool, ConnectOptions, Connection};

pub use api_keys::{ApiKeyRecord, NewApiKey};
pub use idempotency::{IdempotencyClaim, request_fingerprint};
pub use messages::{
    MessageEvent, MessageListQuery, MessageRecord, MessageStatusChange, MessageWait,
    NewOutboundMessage, SentAnswer,
};
pub use refresh_tokens::{NewRefreshToken, RefreshOutcome, RefreshTokenRecord};
pub use sessions::{Session, SessionOwnership, SessionReport};
pub use usage::UsageRecord;
pub use users::{NewUser, User, UserListQuery, UserPage, UserUpdate};
pub use webhooks::{DISABLED_BY_OWNER, NewWebhook, WebhookChanges, WebhookRecord};
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
    /// The database cannot do the work now but may shortly: disk full, I/O error, a lock held
    /// too long, the connection lost, the pool exhausted or closed (see [`is_unavailable`]).
    /// Callers answer `503` or retry later; nothing is wrong with the request.
    #[error("store unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    /// Anything else: a row is corrupt, a constraint the code should have kept, a bug.
    #[error(transparent)]
    Unexpected(anyhow::Error),
}

impl StoreError {
    /// Classifies a sqlx error, turning unique violations into [`StoreError::Conflict`].
    pub(crate) fn from_sqlx(err: sqlx::Error, conflict: &'static str) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(conflict),
            sqlx::Error::RowNotFound => StoreError::NotFound,
            _ if is_unavailable(&err) => StoreError::Unavailable(anyhow::Error::new(err)),
            _ => StoreError::Unexpected(anyhow::Error::new(err)),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        Self::from_sqlx(err, "duplicate")
    }
}

/// Context added with `anyhow` keeps the cause: a database that cannot work now stays
/// [`StoreError::Unavailable`] however it was wrapped.
impl From<anyhow::Error> for StoreError {
    fn from(err: anyhow::Error) -> Self {
        if chain_is_unavailable(&err) {
            StoreError::Unavailable(err)
        } else {
            StoreError::Unexpected(err)
        }
    }
}

/// Whether a database error is the database's momentary state rather than the statement's
/// fault: retrying the same work later can succeed, so it is a `503`, not a `500`.
///
/// sqlx's `Any` driver passes the backend's own error through unchanged, so it downcasts to
/// `SqliteError` (whose code is SQLite's extended result code, in decimal) or to
/// `PgDatabaseError` (whose code is the SQLSTATE).
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            if let Some(sqlite) = db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
                sqlite
                    .code()
                    .and_then(|code| code.parse::<u32>().ok())
                    .is_some_and(sqlite_code_is_unavailable)
            } else if let Some(postgres) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            {
                sqlstate_is_unavailable(postgres.code())
            } else {
                false
            }
        }
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// How a failed store call should be treated by whoever retries work: the pipeline's consumers
/// retry a [`Transient`](FailureClass::Transient) failure (the same work can succeed later) and
/// set aside the piece of work behind a [`Permanent`](FailureClass::Permanent) one (the database
/// refused these values: retrying them can only fail again and would hold up everything behind
/// them). What is neither (a bug, a corrupt row) is [`Unknown`](FailureClass::Unknown).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureClass {
    /// The database cannot work now: connection lost, pool exhausted, disk full, locked.
    Transient,
    /// The database refused the data: a constraint (integrity, class 23), a value it cannot
    /// hold or encode (data exception, class 22, e.g. `22021` a NUL byte in UTF-8 text),
    /// a value sqlx could not encode.
    Permanent,
    /// Anything else.
    Unknown,
}

impl StoreError {
    /// How a consumer should treat this failure (see [`FailureClass`]). `NotFound` and
    /// `Conflict` are answers about the data, so permanent.
    pub fn class(&self) -> FailureClass {
        match self {
            StoreError::Unavailable(_) => FailureClass::Transient,
            StoreError::Conflict(_) | StoreError::NotFound => FailureClass::Permanent,
            StoreError::Unexpected(err) => chain_class(err),
        }
    }
}

/// [`FailureClass`] of one sqlx error.
pub fn classify(err: &sqlx::Error) -> FailureClass {
    if is_unavailable(err) {
        return FailureClass::Transient;
    }
    match err {
        sqlx::Error::Database(db) => {
            let permanent = if let Some(sqlite) = db.try_downcast_ref::<sqlx::sqlite::SqliteError>()
            {
                sqlite
                    .code()
                    .and_then(|code| code.parse::<u32>().ok())
                    .is_some_and(sqlite_code_is_permanent)
            } else if let Some(postgres) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            {
                sqlstate_is_permanent(postgres.code())
            } else {
                false
            };
            if permanent {
                FailureClass::Permanent
            } else {
                FailureClass::Unknown
            }
        }
        sqlx::Error::Encode(_) | sqlx::Error::RowNotFound => FailureClass::Permanent,
        _ => FailureClass::Unknown,
    }
}

/// [`classify`] over an `anyhow` chain: the first sqlx error in it decides.
pub fn chain_class(err: &anyhow::Error) -> FailureClass {
    err.chain()
        .find_map(|cause| cause.downcast_ref::<sqlx::Error>())
        .map_or(FailureClass::Unknown, classify)
}

/// SQLite primary result codes of a statement the database refuses for its values:
/// TOOBIG (18), CONSTRAINT (19, every `SQLITE_CONSTRAINT_*`), MISMATCH (20), RANGE (25).
fn sqlite_code_is_permanent(code: u32) -> bool {
    matches!(code & 0xff, 18 | 19 | 20 | 25)
}

/// PostgreSQL SQLSTATE classes 22 (data exception: `22021` invalid byte sequence, `22003`
/// numeric value out of range, `22P02` invalid text representation, `22001` string too long)
/// and 23 (integrity constraint violation: unique, foreign key, check, not null).
fn sqlstate_is_permanent(code: &str) -> bool {
    code.starts_with("22") || code.starts_with("23")
}

/// [`is_unavailable`] for any cause in an `anyhow` chain.
pub fn chain_is_unavailable(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<sqlx::Error>()
            .is_some_and(is_unavailable)
    })
}

/// SQLite primary result codes (an extended code carries its primary code in the low byte):
/// BUSY (5), LOCKED (6), IOERR (10), FULL (13), CANTOPEN (14).
fn sqlite_code_is_unavailable(code: u32) -> bool {
    matches!(code & 0xff, 5 | 6 | 10 | 13 | 14)
}

/// PostgreSQL SQLSTATE classes 53 (insufficient resources; `53100` is a full disk), 08
/// (connection exception), 58 (system error, e.g. `58030` I/O error) and `57P01`..`57P03` (the
/// server is shutting down, crashed, or not yet accepting connections).
fn sqlstate_is_unavailable(code: &str) -> bool {
    code.starts_with("53")
        || code.starts_with("08")
        || code.starts_with("58")
        || matches!(code, "57P01" | "57P02" | "57P03")
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
                    .after_release(release_outside_transaction)
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

/// The release check of every SQLite pool: a connection goes back to the pool only if sqlx's
/// transaction bookkeeping says it is outside any transaction; otherwise it is closed, which
/// rolls back whatever SQLite still holds open and releases the write lock.
///
/// Why: when a `COMMIT` fails with `SQLITE_FULL` or `SQLITE_IOERR`, SQLite has already rolled
/// the transaction back, so the `ROLLBACK` sqlx then issues fails and its depth counter stays
/// at 1. On that connection's next transaction sqlx issues `SAVEPOINT` instead of `BEGIN`
/// (a real transaction all the same); when its release fails too and sqlx rolls back to the
/// savepoint, SQLite keeps the transaction, and its write lock, open for good: every later
/// "commit" on that connection only releases a nested savepoint (writes reported done, never
/// durable) and every other connection gets `database is locked` until the process dies.
///
/// A transaction dropped without commit queues its rollback on the connection; the ping runs it
/// before the depth is read, so a rollback that worked keeps the connection.
pub(crate) fn release_outside_transaction<C: Connection>(
    conn: &mut C,
    _meta: PoolConnectionMetadata,
) -> BoxFuture<'_, Result<bool, sqlx::Error>> {
    Box::pin(async move {
        if conn.is_in_transaction() {
            conn.ping().await?;
        }
        let keep = !conn.is_in_transaction();
        if !keep {
            tracing::warn!(
                "closing an SQLite connection left inside a transaction (a failed commit or \
                 rollback); its transaction is rolled back"
            );
        }
        Ok(keep)
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_codes_of_a_database_that_cannot_work_now_are_unavailable() {
        // BUSY, BUSY_TIMEOUT, LOCKED, IOERR_WRITE, IOERR_FSYNC, FULL, CANTOPEN.
        for code in [5, 773, 6, 778, 1034, 13, 14] {
            assert!(sqlite_code_is_unavailable(code), "{code}");
        }
        // ERROR, CONSTRAINT_UNIQUE, READONLY, CORRUPT, MISMATCH.
        for code in [1, 2067, 8, 11, 20] {
            assert!(!sqlite_code_is_unavailable(code), "{code}");
        }
    }

    #[test]
    fn sqlstates_of_a_server_that_cannot_work_now_are_unavailable() {
        for code in [
            "53100", "53300", "08006", "08001", "57P01", "57P03", "58030",
        ] {
            assert!(sqlstate_is_unavailable(code), "{code}");
        }
        for code in ["23505", "40001", "42P01", "57014", "22P02"] {
            assert!(!sqlstate_is_unavailable(code), "{code}");
        }
    }

    #[test]
    fn refused_values_are_permanent_and_outages_transient() {
        // TOOBIG, CONSTRAINT_CHECK, CONSTRAINT_FOREIGNKEY, CONSTRAINT_NOTNULL, MISMATCH, RANGE.
        for code in [18, 275, 787, 1299, 20, 25] {
            assert!(sqlite_code_is_permanent(code), "{code}");
        }
        // BUSY, FULL, IOERR_WRITE, ERROR, CORRUPT.
        for code in [5, 13, 778, 1, 11] {
            assert!(!sqlite_code_is_permanent(code), "{code}");
        }
        for code in [
            "22021", "22003", "22P02", "22P03", "23505", "23503", "23514",
        ] {
            assert!(sqlstate_is_permanent(code), "{code}");
        }
        for code in ["08006", "53100", "57P01", "40001", "42P01"] {
            assert!(!sqlstate_is_permanent(code), "{code}");
        }
        assert_eq!(
            classify(&sqlx::Error::PoolTimedOut),
            FailureClass::Transient
        );
        assert_eq!(
            StoreError::Unavailable(anyhow::anyhow!("disk full")).class(),
            FailureClass::Transient
        );
        assert_eq!(
            StoreError::Conflict("duplicate").class(),
            FailureClass::Permanent
        );
        let bug = anyhow::Error::new(sqlx::Error::ColumnNotFound("x".into())).context("reading");
        assert_eq!(StoreError::from(bug).class(), FailureClass::Unknown);
        let encode = anyhow::Error::new(sqlx::Error::Encode("bad".into())).context("binding");
        assert_eq!(StoreError::from(encode).class(), FailureClass::Permanent);
    }

    #[test]
    fn context_keeps_a_store_that_cannot_work_now_unavailable() {
        let wrapped = anyhow::Error::new(sqlx::Error::PoolTimedOut).context("flushing usage");
        assert!(matches!(
            StoreError::from(wrapped),
            StoreError::Unavailable(_)
        ));
        let bug = anyhow::Error::new(sqlx::Error::ColumnNotFound("x".into())).context("reading");
        assert!(matches!(StoreError::from(bug), StoreError::Unexpected(_)));
    }
}
