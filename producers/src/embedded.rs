//! The embedded partitioned log: Kafka's topic/partition/offset model on one SQLite file.
//!
//! Used when `KAFKA_BROKERS` is unset and one gateway process owns the database. Topics and
//! partition counts come from the [`TopicCatalog`], and a keyed record lands on the same
//! partition as it would in Kafka ([`TopicSpec::partition_for_key`](crate::topics::TopicSpec::partition_for_key)), so switching back
//! ends keeps per-session ordering.
//!
//! Records live in `log_records` and consumer-group positions in `log_consumer_offsets`.
//! The gateway keeps the log in its own file (`DATA_DIR/log.db`, [`EmbeddedLog::open_file`],
//! which creates the tables of [`SCHEMA`]), whichever store it runs on.
//!
//! # Group commit
//!
//! Every append goes through a channel to a single writer thread that owns its own SQLite
//! connection (rusqlite, synchronous: a batch costs one wake-up of that thread, not one
//! hand-off per statement as through an async driver, which under CPU contention is what
//! bounds a group commit's latency). The writer drains whatever is queued (up to
//! [`MAX_BATCH_RECORDS`] records or [`MAX_BATCH_BYTES`] bytes, though one
//! [`EmbeddedLog::append_batch`] is never split), assigns offsets from its in-memory map of
//! next offsets (dense per partition, no read per append), writes the whole batch in one
//! transaction with a cached prepared `INSERT` and commits it. Only then is every waiter
//! answered, and the writer's connection uses `synchronous=FULL`, so an acknowledged record
//! survives power loss. If the transaction fails, every waiter of that
//! batch gets the error and the writer re-reads the next offsets from the table, so no
//! offset is skipped or reused.
//!
//! Readers use [`EmbeddedLog::fetch`] and [`EmbeddedLog::subscribe`] (woken after every
//! committed batch of a topic), and keep their positions with [`EmbeddedLog::commit`]; reads
//! and trimming go through a small sqlx pool on the same file (WAL: readers never block the
//! writer).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::{mpsc, oneshot, watch};

use crate::topics::TopicCatalog;

/// The writer stops draining the queue into a batch once it holds this many records.
pub const MAX_BATCH_RECORDS: usize = 5_000;
/// The writer stops draining the queue into a batch once its keys and values reach this
/// many bytes.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Append requests that may wait for the writer before appenders are held back.
const QUEUE_CAPACITY: usize = 8_192;
/// WAL pages after which a commit checkpoints (16 MiB of 4 KiB pages).
const WAL_AUTOCHECKPOINT_PAGES: i64 = 4_096;
/// How long a write waits for a lock another connection holds (trimming) before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The log's tables; created by [`EmbeddedLog::open_file`] when missing.
pub const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS log_records (topic TEXT NOT NULL, partition_id INTEGER NOT NULL, \
     record_offset BIGINT NOT NULL, record_key TEXT NOT NULL, record_value BLOB NOT NULL, \
     appended_at BIGINT NOT NULL, PRIMARY KEY (topic, partition_id, record_offset))",
    "CREATE TABLE IF NOT EXISTS log_consumer_offsets (group_id TEXT NOT NULL, topic TEXT NOT NULL, \
     partition_id INTEGER NOT NULL, committed_offset BIGINT NOT NULL, updated_at BIGINT NOT NULL, \
     PRIMARY KEY (group_id, topic, partition_id))",
];

/// Why a log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The topic is not in the catalog the log was opened with.
    #[error("topic `{0}` is not defined in the embedded log")]
    UnknownTopic(String),
    /// The partition does not exist in the topic.
    #[error("topic `{topic}` has no partition {partition}")]
    UnknownPartition {
        /// The topic's wire name.
        topic: String,
        /// The requested partition.
        partition: i32,
    },
    /// The log was closed (or its writer stopped) before the record was written; the record
    /// was not appended.
    #[error("the embedded log is closed")]
    Closed,
    /// The group-commit transaction holding the record failed; nothing of that batch was
    /// appended. Shared by every appender of the batch.
    #[error("the group commit holding this record failed: {0}")]
    BatchFailed(Arc<rusqlite::Error>),
    /// The writer thread could not start, open the log file or read its next offsets.
    #[error("the embedded log writer could not start: {0}")]
    WriterStart(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A database operation failed.
    #[error("embedded log database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// One record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// The topic's wire name.
    pub topic: String,
    /// The partition the record is in.
    pub partition: i32,
    /// Its offset within the partition (dense, from 0).
    pub offset: i64,
    /// The record key (a session id for the gateway's topics).
    pub key: String,
    /// The record value (an encoded envelope).
    pub value: Vec<u8>,
    /// When the batch holding the record was written, in Unix milliseconds.
    pub appended_at_ms: i64,
}

/// A `log_records` row as the fetches select it: offset, key, value, appended at.
type StoredRecord = (i64, String, Vec<u8>, i64);

impl LogRecord {
    /// The record of `topic`'s `partition` stored as `row`.
    fn from_row(topic: &str, partition: i32, row: StoredRecord) -> Self {
        let (offset, key, value, appended_at_ms) = row;
        Self {
            topic: topic.to_owned(),
            partition,
            offset,
            key,
            value,
            appended_at_ms,
        }
    }
}

/// A topic of the open log.
#[derive(Debug)]
struct TopicState {
    /// The wire name, as stored in the tables.
    name: String,
    /// Partition count.
    partitions: i32,
    /// Bumped after every committed batch holding records of this topic.
    changes: watch::Sender<u64>,
    /// Each partition's end offset (one past its last record) as of the last committed
    /// batch: set by the writer after the commit and before `changes` is bumped, so a reader
    /// can tell which partitions hold anything past its position without asking the database.
    ends: Vec<AtomicI64>,
    /// `fetch_partitions`' statement over every partition (one text per topic, so it stays in
    /// the connections' statement caches).
    fetch_all_sql: String,
}

impl TopicState {
    /// Fails unless `partition` is one of the topic's.
    fn check_partition(&self, partition: i32) -> Result<(), LogError> {
        if (0..self.partitions).contains(&partition) {
            Ok(())
        } else {
            Err(LogError::UnknownPartition {
                topic: self.name.clone(),
                partition,
            })
        }
    }
}

/// State shared by the handles and the writer task.
#[derive(Debug)]
struct Shared {
    pool: SqlitePool,
    /// The catalog's topics, in catalog order; requests refer to them by index.
    topics: Vec<TopicState>,
    /// Logical and wire names to an index into `topics`.
    by_name: HashMap<String, usize>,
    /// Handed out by [`EmbeddedLog::subscribe`] for unknown topics; never bumped.
    idle: watch::Sender<u64>,
}

impl Shared {
    /// The index of a topic by logical or wire name.
    fn resolve(&self, topic: &str) -> Result<usize, LogError> {
        self.by_name
            .get(topic)
            .copied()
            .ok_or_else(|| LogError::UnknownTopic(topic.to_owned()))
    }
}

/// One record waiting for the writer.
struct PendingRecord {
    partition: i32,
    key: String,
    value: Vec<u8>,
}

/// One append call waiting for the writer; its records go into one transaction.
struct AppendRequest {
    topic: usize,
    records: Vec<PendingRecord>,
    reply: oneshot::Sender<Result<Vec<(i32, i64)>, LogError>>,
}

impl AppendRequest {
    fn bytes(&self) -> usize {
        self.records
            .iter()
            .map(|record| record.key.len() + record.value.len())
            .sum()
    }
}

/// One commit call waiting for the writer: a consumer group's positions, as
/// `(topic index, partition, next offset)`, written in the transaction of the next group commit.
struct CommitRequest {
    group: String,
    positions: Vec<(usize, i32, i64)>,
    reply: oneshot::Sender<Result<(), LogError>>,
}

/// What the writer is asked to do. Every write to the log's tables but trimming goes through
/// the one writer, so writers never wait on each other's locks (SQLite's busy handler sleeps).
enum WriteRequest {
    Append(AppendRequest),
    Commit(CommitRequest),
    /// Write what was queued before, then stop; later requests fail with [`LogError::Closed`].
    Close,
}

/// What the clones of one [`EmbeddedLog`] share; dropping it stops the writer.
#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
    requests: mpsc::Sender<WriteRequest>,
    /// Flips to `true` when the writer thread has stopped.
    stopped: watch::Receiver<bool>,
}

/// The embedded partitioned log over one SQLite database. Cheap to clone; the group-commit
/// writer stops when the last clone is dropped or [`close`](Self::close) is called.
#[derive(Debug, Clone)]
pub struct EmbeddedLog {
    inner: Arc<Handle>,
}

impl EmbeddedLog {
    /// Opens (creating when missing) the log in its own SQLite file at `path`, with its
    /// tables, WAL and `synchronous=FULL`: an acknowledged append survives power loss. The
    /// log keeps its own file so its group-commit writer never queues behind the store's.
    /// Loads every partition's next offset and starts the writer thread.
    pub async fn open_file(path: &Path, catalog: &TopicCatalog) -> Result<Self, LogError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&pool).await?;
        }

        let mut topics = Vec::with_capacity(catalog.len());
        let mut by_name = HashMap::with_capacity(catalog.len() * 2);
        for (index, spec) in catalog.iter().enumerate() {
            by_name.insert(spec.logical_name().to_owned(), index);
            by_name.insert(spec.name.clone(), index);
            topics.push(TopicState {
                name: spec.name.clone(),
                partitions: spec.partitions,
                changes: watch::Sender::new(0),
                ends: (0..spec.partitions).map(|_| AtomicI64::new(0)).collect(),
                fetch_all_sql: fetch_partitions_sql(spec.partitions),
            });
        }
        let shared = Arc::new(Shared {
            pool,
            topics,
            by_name,
            idle: watch::Sender::new(0),
        });
        let (requests, queue) = mpsc::channel(QUEUE_CAPACITY);
        let (stopped_tx, stopped) = watch::channel(false);
        let (ready_tx, ready) = oneshot::channel();
        let writer = Writer {
            shared: Arc::clone(&shared),
            path: path.to_owned(),
        };
        std::thread::Builder::new()
            .name("wa-log-writer".to_owned())
            .spawn(move || {
                writer.run(queue, ready_tx);
                stopped_tx.send_replace(true);
            })
            .map_err(|error| LogError::WriterStart(error.into()))?;
        ready.await.map_err(|_| LogError::Closed)??;
        Ok(Self {
            inner: Arc::new(Handle {
                shared,
                requests,
                stopped,
            }),
        })
    }

    /// Appends one record to `topic` (logical or wire name) on the partition Kafka would
    /// pick for `key` (murmur2). Resolves only once the batch holding it is committed;
    /// returns its `(partition, offset)`.
    ///
    /// Dropping the future after the record was queued does not withdraw it: it may still
    /// be appended, like a Kafka produce whose acknowledgement was lost.
    pub async fn append(
        &self,
        topic: &str,
        key: &str,
        value: Vec<u8>,
    ) -> Result<(i32, i64), LogError> {
        let positions = self
            .append_batch(topic, vec![(key.to_owned(), value)])
            .await?;
        positions.into_iter().next().ok_or(LogError::Closed)
    }

    /// Appends many records to `topic` in one transaction (all or none), e.g. a bulk send.
    /// Returns their `(partition, offset)` in input order; records of one partition get
    /// increasing offsets in input order.
    pub async fn append_batch(
        &self,
        topic: &str,
        records: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<(i32, i64)>, LogError> {
        let shared = &self.inner.shared;
        let index = shared.resolve(topic)?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let spec = &shared.topics[index];
        let records = records
            .into_iter()
            .map(|(key, value)| PendingRecord {
                partition: crate::partitioner::partition_for_key(key.as_bytes(), spec.partitions),
                key,
                value,
            })
            .collect();
        let (reply, answer) = oneshot::channel();
        self.inner
            .requests
            .send(WriteRequest::Append(AppendRequest {
                topic: index,
                records,
                reply,
            }))
            .await
            .map_err(|_| LogError::Closed)?;
        answer.await.map_err(|_| LogError::Closed)?
    }

    /// Reads up to `max` records of one partition, from `from_offset` on, in offset order.
    /// Returns fewer (or none) when the partition holds no more yet; records already
    /// removed by [`truncate`](Self::truncate) are skipped.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: i32,
        from_offset: i64,
        max: usize,
    ) -> Result<Vec<LogRecord>, LogError> {
        let shared = &self.inner.shared;
        let state = &shared.topics[shared.resolve(topic)?];
        state.check_partition(partition)?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<StoredRecord> = sqlx::query_as(
            "SELECT record_offset, record_key, record_value, appended_at FROM log_records \
             WHERE topic = ?1 AND partition_id = ?2 AND record_offset >= ?3 \
             ORDER BY record_offset LIMIT ?4",
        )
        .bind(&state.name)
        .bind(partition)
        .bind(from_offset)
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .fetch_all(&shared.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| LogRecord::from_row(&state.name, partition, row))
            .collect())
    }

    /// Reads up to `max_each` records of every partition of `topic` in one statement, partition
    /// `p` from `from_offsets[p]` on (one entry per partition). Returns them by partition, each
    /// partition's in offset order. One statement instead of one per partition: a reader that
    /// follows many partitions pays one round trip to the database per poll.
    pub async fn fetch_partitions(
        &self,
        topic: &str,
        from_offsets: &[i64],
        max_each: usize,
    ) -> Result<Vec<LogRecord>, LogError> {
        let shared = &self.inner.shared;
        let state = &shared.topics[shared.resolve(topic)?];
        if from_offsets.len() != state.ends.len() {
            return Err(LogError::UnknownPartition {
                topic: state.name.clone(),
                partition: i32::try_from(from_offsets.len()).unwrap_or(i32::MAX),
            });
        }
        if max_each == 0 {
            return Ok(Vec::new());
        }
        let mut query = sqlx::query_as::<_, (i32, i64, String, Vec<u8>, i64)>(sqlx::AssertSqlSafe(
            state.fetch_all_sql.as_str(),
        ))
        .bind(&state.name)
        .bind(i64::try_from(max_each).unwrap_or(i64::MAX));
        for offset in from_offsets {
            query = query.bind(*offset);
        }
        let mut rows = query.fetch_all(&shared.pool).await?;
        // UNION ALL keeps its parts' order in SQLite, but SQL does not promise it.
        rows.sort_unstable_by_key(|row| (row.0, row.1));
        Ok(rows
            .into_iter()
            .map(|(partition, offset, key, value, appended_at)| {
                LogRecord::from_row(&state.name, partition, (offset, key, value, appended_at))
            })
            .collect())
    }

    /// One past the last record of a partition, as of the last committed batch (0 for an
    /// empty partition). Records below it are readable.
    pub fn end_offset(&self, topic: &str, partition: i32) -> Result<i64, LogError> {
        let shared = &self.inner.shared;
        let state = &shared.topics[shared.resolve(topic)?];
        state.check_partition(partition)?;
        let slot = usize::try_from(partition).map_err(|_| LogError::UnknownPartition {
            topic: state.name.clone(),
            partition,
        })?;
        Ok(state.ends[slot].load(Ordering::Acquire))
    }

    /// The position (next offset to read) `group` committed on a partition; 0 when it never
    /// committed one.
    pub async fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
    ) -> Result<i64, LogError> {
        let shared = &self.inner.shared;
        let state = &shared.topics[shared.resolve(topic)?];
        state.check_partition(partition)?;
        let position: Option<i64> = sqlx::query_scalar(
            "SELECT committed_offset FROM log_consumer_offsets \
             WHERE group_id = ?1 AND topic = ?2 AND partition_id = ?3",
        )
        .bind(group)
        .bind(&state.name)
        .bind(partition)
        .fetch_optional(&shared.pool)
        .await?;
        Ok(position.unwrap_or(0))
    }

    /// Commits `group`'s positions, `(topic, partition, next offset to read)`, in one
    /// transaction (the writer's next group commit). A position never moves backwards: one
    /// below what is stored is ignored. Every topic and partition is checked before anything
    /// is written.
    pub async fn commit(
        &self,
        group: &str,
        positions: &[(String, i32, i64)],
    ) -> Result<(), LogError> {
        let shared = &self.inner.shared;
        let mut resolved = Vec::with_capacity(positions.len());
        for (topic, partition, offset) in positions {
            let index = shared.resolve(topic)?;
            shared.topics[index].check_partition(*partition)?;
            resolved.push((index, *partition, *offset));
        }
        if resolved.is_empty() {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        self.inner
            .requests
            .send(WriteRequest::Commit(CommitRequest {
                group: group.to_owned(),
                positions: resolved,
                reply,
            }))
            .await
            .map_err(|_| LogError::Closed)?;
        answer.await.map_err(|_| LogError::Closed)?
    }

    /// A counter bumped after every committed batch holding records of `topic`: wait on
    /// [`changed`](watch::Receiver::changed) and then [`fetch`](Self::fetch), instead of
    /// polling. For a topic not in the catalog the receiver never changes (its fetches fail
    /// with [`LogError::UnknownTopic`]).
    #[must_use]
    pub fn subscribe(&self, topic: &str) -> watch::Receiver<u64> {
        let shared = &self.inner.shared;
        match shared.resolve(topic) {
            Ok(index) => shared.topics[index].changes.subscribe(),
            Err(_) => shared.idle.subscribe(),
        }
    }

    /// Housekeeping: deletes the records of `topic` that were appended more than
    /// `older_than_ms` milliseconds ago (the topic's retention) **and** that every consumer
    /// group which committed a position on their partition has read. A partition no group
    /// committed on keeps its records, and the newest record of each partition is always
    /// kept so its next offset survives a restart. A negative `older_than_ms` (retention -1,
    /// forever) deletes nothing. Returns how many records were deleted.
    pub async fn truncate(&self, topic: &str, older_than_ms: i64) -> Result<u64, LogError> {
        let shared = &self.inner.shared;
        let state = &shared.topics[shared.resolve(topic)?];
        if older_than_ms < 0 {
            return Ok(0);
        }
        let cutoff = now_ms().saturating_sub(older_than_ms);
        let mut deleted = 0;
        for partition in 0..state.partitions {
            let read_by_all: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(committed_offset) FROM log_consumer_offsets \
                 WHERE topic = ?1 AND partition_id = ?2",
            )
            .bind(&state.name)
            .bind(partition)
            .fetch_one(&shared.pool)
            .await?;
            let newest = max_record_offset(&shared.pool, &state.name, partition).await?;
            let (Some(read_by_all), Some(newest)) = (read_by_all, newest) else {
                continue;
            };
            let below = read_by_all.min(newest);
            let result = sqlx::query(
                "DELETE FROM log_records WHERE topic = ?1 AND partition_id = ?2 \
                 AND record_offset < ?3 AND appended_at < ?4",
            )
            .bind(&state.name)
            .bind(partition)
            .bind(below)
            .bind(cutoff)
            .execute(&shared.pool)
            .await?;
            deleted += result.rows_affected();
        }
        Ok(deleted)
    }

    /// Stops the writer and waits for it: what was queued before is written, later appends
    /// fail with [`LogError::Closed`]. Reads keep working until the pool is closed.
    /// Idempotent.
    pub async fn close(&self) {
        // Fails only when the writer is gone already.
        let _ = self.inner.requests.send(WriteRequest::Close).await;
        let _ = self
            .inner
            .stopped
            .clone()
            .wait_for(|stopped| *stopped)
            .await;
    }
}

/// Now, in Unix milliseconds.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// The highest offset stored in a partition, if it holds any record.
async fn max_record_offset(
    pool: &SqlitePool,
    topic: &str,
    partition: i32,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(MAX_RECORD_OFFSET)
        .bind(topic)
        .bind(partition)
        .fetch_one(pool)
        .await
}

/// The group-commit writer: the only one writing records and consumer positions, on its own
/// thread and connection.
struct Writer {
    shared: Arc<Shared>,
    path: std::path::PathBuf,
}

/// The highest offset stored in a partition (`NULL` when it holds none).
const MAX_RECORD_OFFSET: &str =
    "SELECT MAX(record_offset) FROM log_records WHERE topic = ?1 AND partition_id = ?2";

const INSERT_RECORD: &str = "INSERT INTO log_records \
     (topic, partition_id, record_offset, record_key, record_value, appended_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

const UPSERT_POSITION: &str = "INSERT INTO log_consumer_offsets \
     (group_id, topic, partition_id, committed_offset, updated_at) \
     VALUES (?1, ?2, ?3, ?4, ?5) \
     ON CONFLICT (group_id, topic, partition_id) DO UPDATE SET \
     committed_offset = excluded.committed_offset, updated_at = excluded.updated_at \
     WHERE excluded.committed_offset > log_consumer_offsets.committed_offset";

impl Writer {
    /// Opens the connection, loads the next offsets, reports on `ready`, then writes batches
    /// until [`WriteRequest::Close`] or every handle is gone.
    fn run(
        self,
        mut queue: mpsc::Receiver<WriteRequest>,
        ready: oneshot::Sender<Result<(), LogError>>,
    ) {
        let opened = self
            .connect()
            .and_then(|connection| {
                let next = self.load_next_offsets(&connection)?;
                Ok((connection, next))
            })
            .map_err(|error| LogError::WriterStart(error.into()));
        let (mut connection, mut next_offsets) = match opened {
            Ok(opened) => {
                for (topic, ends) in self.shared.topics.iter().zip(&opened.1) {
                    publish_ends(topic, ends);
                }
                let _ = ready.send(Ok(()));
                opened
            }
            Err(error) => {
                let _ = ready.send(Err(error));
                return;
            }
        };
        // Set when the in-memory offsets may disagree with the table (a batch failed after
        // advancing some); they are re-read before the next batch.
        let mut stale = false;
        let mut closing = false;
        while !closing {
            let Some(first) = queue.blocking_recv() else {
                break;
            };
            let (mut records, mut bytes) = (0, 0);
            let mut batch = Vec::new();
            let mut commits = Vec::new();
            let mut next = Some(first);
            while let Some(request) = next.take() {
                match request {
                    WriteRequest::Append(request) => {
                        records += request.records.len();
                        bytes += request.bytes();
                        batch.push(request);
                    }
                    WriteRequest::Commit(request) => commits.push(request),
                    WriteRequest::Close => closing = true,
                }
                if !closing && records < MAX_BATCH_RECORDS && bytes < MAX_BATCH_BYTES {
                    next = queue.try_recv().ok();
                }
            }
            if batch.is_empty() && commits.is_empty() {
                continue;
            }
            if stale {
                match self.load_next_offsets(&connection) {
                    Ok(reloaded) => {
                        next_offsets = reloaded;
                        stale = false;
                    }
                    Err(error) => {
                        tracing::error!(%error, "embedded log cannot re-read its offsets");
                        fail_all(batch, commits, error);
                        continue;
                    }
                }
            }
            match self.write_batch(&mut connection, &mut next_offsets, &batch, &commits) {
                Ok(positions) => self.answer(batch, commits, positions, &next_offsets),
                Err(error) => {
                    tracing::error!(%error, records, "embedded log group commit failed");
                    stale = true;
                    fail_all(batch, commits, error);
                    // Dropping the failed transaction rolled it back (rusqlite asks SQLite, it
                    // keeps no counter that could drift). Should that rollback itself have
                    // failed (an I/O error), the transaction would hold the write lock and
                    // every later BEGIN would fail: start on a fresh connection instead.
                    if !connection.is_autocommit() {
                        match self.connect() {
                            Ok(fresh) => connection = fresh,
                            Err(error) => {
                                tracing::error!(%error, "embedded log cannot reopen its file");
                            }
                        }
                    }
                }
            }
        }
        queue.close();
        while let Some(request) = queue.blocking_recv() {
            match request {
                WriteRequest::Append(request) => {
                    let _ = request.reply.send(Err(LogError::Closed));
                }
                WriteRequest::Commit(request) => {
                    let _ = request.reply.send(Err(LogError::Closed));
                }
                WriteRequest::Close => {}
            }
        }
    }

    /// The writer's connection: WAL (set on the file by the pool), `synchronous=FULL`.
    fn connect(&self) -> Result<rusqlite::Connection, rusqlite::Error> {
        let connection = rusqlite::Connection::open(&self.path)?;
        connection.busy_timeout(BUSY_TIMEOUT)?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        // Every commit appends the pages it touched to the WAL (about one per partition
        // written); checkpointing after 1000 pages, the default, would copy them back dozens of
        // times a second under load. A page rewritten by many commits is copied once per
        // checkpoint.
        connection.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
        Ok(connection)
    }

    /// Publishes the end offsets of every topic the batch wrote to and wakes its readers, then
    /// answers every waiter.
    fn answer(
        &self,
        batch: Vec<AppendRequest>,
        commits: Vec<CommitRequest>,
        positions: Vec<Vec<(i32, i64)>>,
        next_offsets: &[Vec<i64>],
    ) {
        let mut touched = vec![false; self.shared.topics.len()];
        for request in &batch {
            touched[request.topic] = true;
        }
        for ((topic, touched), ends) in self.shared.topics.iter().zip(touched).zip(next_offsets) {
            if touched {
                publish_ends(topic, ends);
                topic
                    .changes
                    .send_modify(|counter| *counter = counter.wrapping_add(1));
            }
        }
        for (request, positions) in batch.into_iter().zip(positions) {
            let _ = request.reply.send(Ok(positions));
        }
        for request in commits {
            let _ = request.reply.send(Ok(()));
        }
    }

    /// Every partition's next offset, `[topic][partition]`: one past the highest stored
    /// record, and never below a committed position (so offsets are not reused even if a
    /// partition's records were all deleted).
    fn load_next_offsets(
        &self,
        connection: &rusqlite::Connection,
    ) -> Result<Vec<Vec<i64>>, rusqlite::Error> {
        let mut stored = connection.prepare_cached(MAX_RECORD_OFFSET)?;
        let mut committed = connection.prepare_cached(
            "SELECT MAX(committed_offset) FROM log_consumer_offsets \
             WHERE topic = ?1 AND partition_id = ?2",
        )?;
        let mut next = Vec::with_capacity(self.shared.topics.len());
        for topic in &self.shared.topics {
            let mut partitions = Vec::with_capacity(usize::try_from(topic.partitions).unwrap_or(0));
            for partition in 0..topic.partitions {
                let highest: Option<i64> =
                    stored.query_row((&topic.name, partition), |row| row.get(0))?;
                let position: Option<i64> =
                    committed.query_row((&topic.name, partition), |row| row.get(0))?;
                partitions.push(
                    highest
                        .map_or(0, |offset| offset + 1)
                        .max(position.unwrap_or(0)),
                );
            }
            next.push(partitions);
        }
        Ok(next)
    }

    /// Assigns offsets to every record of `batch` and writes them, and the consumer positions
    /// of `commits`, in one transaction. Returns each append's positions; on error nothing was
    /// written and the caller must re-read `next_offsets` (some were advanced).
    fn write_batch(
        &self,
        connection: &mut rusqlite::Connection,
        next_offsets: &mut [Vec<i64>],
        batch: &[AppendRequest],
        commits: &[CommitRequest],
    ) -> Result<Vec<Vec<(i32, i64)>>, rusqlite::Error> {
        let now = now_ms();
        // Dropping the transaction on an error path rolls it back.
        let transaction = connection.transaction()?;
        let mut positions = Vec::with_capacity(batch.len());
        {
            let mut insert = transaction.prepare_cached(INSERT_RECORD)?;
            for request in batch {
                let topic = &self.shared.topics[request.topic];
                let mut request_positions = Vec::with_capacity(request.records.len());
                for record in &request.records {
                    // The partition was computed modulo the topic's partition count.
                    let slot = usize::try_from(record.partition)
                        .ok()
                        .and_then(|partition| next_offsets[request.topic].get_mut(partition))
                        .ok_or(rusqlite::Error::IntegralValueOutOfRange(
                            1,
                            i64::from(record.partition),
                        ))?;
                    let offset = *slot;
                    *slot += 1;
                    insert.execute((
                        &topic.name,
                        record.partition,
                        offset,
                        &record.key,
                        &record.value,
                        now,
                    ))?;
                    request_positions.push((record.partition, offset));
                }
                positions.push(request_positions);
            }
            let mut upsert = transaction.prepare_cached(UPSERT_POSITION)?;
            for commit in commits {
                for &(topic, partition, offset) in &commit.positions {
                    upsert.execute((
                        &commit.group,
                        &self.shared.topics[topic].name,
                        partition,
                        offset,
                        now,
                    ))?;
                }
            }
        }
        transaction.commit()?;
        Ok(positions)
    }
}

/// Stores a topic's partition end offsets where readers look (see `TopicState::ends`).
fn publish_ends(topic: &TopicState, ends: &[i64]) {
    for (slot, end) in topic.ends.iter().zip(ends) {
        slot.store(*end, Ordering::Release);
    }
}

/// The statement of [`EmbeddedLog::fetch_partitions`] for a topic of `partitions`
/// partitions: `?1` the topic, `?2` the limit per partition, `?3…` each partition's first
/// offset. Each part walks the primary key from its offset.
fn fetch_partitions_sql(partitions: i32) -> String {
    (0..partitions)
        .map(|partition| {
            format!(
                "SELECT * FROM (SELECT partition_id, record_offset, record_key, record_value, \
                 appended_at FROM log_records WHERE topic = ?1 AND partition_id = {partition} \
                 AND record_offset >= ?{} ORDER BY record_offset LIMIT ?2)",
                partition + 3
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// Answers every request of a failed group commit with its error.
fn fail_all(batch: Vec<AppendRequest>, commits: Vec<CommitRequest>, error: rusqlite::Error) {
    let error = Arc::new(error);
    for request in batch {
        let _ = request
            .reply
            .send(Err(LogError::BatchFailed(Arc::clone(&error))));
    }
    for request in commits {
        let _ = request
            .reply
            .send(Err(LogError::BatchFailed(Arc::clone(&error))));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet, HashMap};
    use std::time::Instant;

    use super::*;
    use crate::topics::{EVENTS_TOPIC, OUTBOUND_TOPIC};

    fn catalog() -> &'static TopicCatalog {
        TopicCatalog::builtin().unwrap()
    }

    async fn open(path: &Path) -> EmbeddedLog {
        EmbeddedLog::open_file(path, catalog()).await.unwrap()
    }

    fn temp() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        (dir, path)
    }

    /// Every record of a topic, by partition, in offset order.
    async fn read_all(log: &EmbeddedLog, topic: &str) -> BTreeMap<i32, Vec<LogRecord>> {
        let spec = catalog().get(topic).unwrap();
        let mut all = BTreeMap::new();
        for partition in spec.partition_ids() {
            let records = log.fetch(topic, partition, 0, usize::MAX).await.unwrap();
            all.insert(partition, records);
        }
        all
    }

    /// Asserts every partition's offsets are exactly `0..n`.
    fn assert_dense(all: &BTreeMap<i32, Vec<LogRecord>>) {
        for (partition, records) in all {
            for (expected, record) in records.iter().enumerate() {
                assert_eq!(record.offset, expected as i64, "partition {partition}");
                assert_eq!(record.partition, *partition);
            }
        }
    }

    #[tokio::test]
    async fn offsets_are_dense_per_partition_and_follow_the_key() {
        let (_dir, path) = temp();
        let log = open(&path).await;
        let spec = catalog().get(OUTBOUND_TOPIC).unwrap();
        let mut expected: HashMap<i32, i64> = HashMap::new();
        for i in 0..60 {
            let key = format!("session-{}", i % 7);
            let (partition, offset) = log
                .append(OUTBOUND_TOPIC, &key, format!("v{i}").into_bytes())
                .await
                .unwrap();
            assert_eq!(partition, spec.partition_for_key(key.as_bytes()));
            let next = expected.entry(partition).or_insert(0);
            assert_eq!(offset, *next);
            *next += 1;
        }
        let all = read_all(&log, OUTBOUND_TOPIC).await;
        assert_dense(&all);
        assert_eq!(all.values().map(Vec::len).sum::<usize>(), 60);
        // Another topic has its own offsets.
        let (_, offset) = log
            .append(EVENTS_TOPIC, "session-0", b"e".to_vec())
            .await
            .unwrap();
        assert_eq!(offset, 0);
        // The wire name works as well as the logical one.
        let (partition, offset) = log
            .append(&spec.name, "session-0", b"x".to_vec())
            .await
            .unwrap();
        assert_eq!(offset, expected[&partition]);
    }

    #[tokio::test]
    async fn concurrent_appends_are_durable_without_gaps_or_duplicates() {
        let (_dir, path) = temp();
        let log = open(&path).await;
        let mut tasks = Vec::new();
        for task in 0..50 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..20 {
                    let key = format!("session-{}", (task * 3 + i) % 17);
                    let value = format!("{task}/{i}").into_bytes();
                    let position = log
                        .append(OUTBOUND_TOPIC, &key, value.clone())
                        .await
                        .unwrap();
                    acked.push((position, key, value));
                }
                acked
            }));
        }
        let mut acked = Vec::new();
        for task in tasks {
            acked.extend(task.await.unwrap());
        }
        assert_eq!(acked.len(), 1000);
        let distinct: BTreeSet<(i32, i64)> = acked.iter().map(|(position, ..)| *position).collect();
        assert_eq!(distinct.len(), 1000, "no position is handed out twice");

        // Re-open the file with a fresh pool: every acknowledged record is there.
        log.close().await;
        drop(log);
        let reopened = open(&path).await;
        let all = read_all(&reopened, OUTBOUND_TOPIC).await;
        assert_dense(&all);
        assert_eq!(all.values().map(Vec::len).sum::<usize>(), 1000);
        for ((partition, offset), key, value) in &acked {
            let record = &all[partition][usize::try_from(*offset).unwrap()];
            assert_eq!((&record.key, &record.value), (key, value));
        }
        // Appends continue after the highest stored offset.
        let (partition, offset) = reopened
            .append(OUTBOUND_TOPIC, "session-1", b"after".to_vec())
            .await
            .unwrap();
        assert_eq!(offset, all[&partition].len() as i64);
    }

    #[tokio::test]
    async fn append_batch_keeps_input_order() {
        let (_dir, path) = temp();
        let log = open(&path).await;
        let spec = catalog().get(OUTBOUND_TOPIC).unwrap();
        log.append(OUTBOUND_TOPIC, "a", b"first".to_vec())
            .await
            .unwrap();
        let records: Vec<(String, Vec<u8>)> = (0..1500)
            .map(|i| (format!("k{}", i % 5), format!("{i}").into_bytes()))
            .collect();
        let positions = log
            .append_batch(OUTBOUND_TOPIC, records.clone())
            .await
            .unwrap();
        assert_eq!(positions.len(), records.len());
        let mut last: HashMap<i32, i64> = HashMap::new();
        for ((key, value), (partition, offset)) in records.iter().zip(&positions) {
            assert_eq!(*partition, spec.partition_for_key(key.as_bytes()));
            if let Some(previous) = last.insert(*partition, *offset) {
                assert_eq!(*offset, previous + 1, "increasing in input order");
            }
            let fetched = log
                .fetch(OUTBOUND_TOPIC, *partition, *offset, 1)
                .await
                .unwrap();
            assert_eq!(&fetched[0].value, value);
        }
        assert_dense(&read_all(&log, OUTBOUND_TOPIC).await);
        assert!(
            log.append_batch(OUTBOUND_TOPIC, Vec::new())
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn fetch_returns_offset_ranges() {
        let (_dir, path) = temp();
        let log = open(&path).await;
        let records: Vec<(String, Vec<u8>)> =
            (0..10).map(|i| ("one-key".to_owned(), vec![i])).collect();
        let positions = log.append_batch(EVENTS_TOPIC, records).await.unwrap();
        let partition = positions[0].0;
        let range = log.fetch(EVENTS_TOPIC, partition, 3, 4).await.unwrap();
        assert_eq!(
            range.iter().map(|r| r.offset).collect::<Vec<_>>(),
            [3, 4, 5, 6]
        );
        assert_eq!(range[0].value, [3]);
        assert_eq!(range[0].key, "one-key");
        assert_eq!(range[0].topic, catalog().get(EVENTS_TOPIC).unwrap().name);
        assert!(range[0].appended_at_ms > 0);
        assert_eq!(
            log.fetch(EVENTS_TOPIC, partition, 8, 100)
                .await
                .unwrap()
                .len(),
            2
        );
        assert!(
            log.fetch(EVENTS_TOPIC, partition, 10, 100)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            log.fetch(EVENTS_TOPIC, partition, 0, 0)
                .await
                .unwrap()
                .is_empty()
        );
        let other = (partition + 1) % 12;
        assert!(
            log.fetch(EVENTS_TOPIC, other, 0, 100)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            log.fetch(EVENTS_TOPIC, 12, 0, 1).await,
            Err(LogError::UnknownPartition { partition: 12, .. })
        ));
    }

    #[tokio::test]
    async fn end_offsets_and_fetching_every_partition_at_once() {
        let (_dir, path) = temp();
        let log = open(&path).await;
        let keys: Vec<String> = (0..40).map(|i| format!("session-{i}")).collect();
        let records: Vec<(String, Vec<u8>)> = (0..200_u8)
            .map(|i| (keys[usize::from(i) % keys.len()].clone(), vec![i]))
            .collect();
        let positions = log.append_batch(OUTBOUND_TOPIC, records).await.unwrap();
        let mut per_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        for (partition, offset) in &positions {
            per_partition.entry(*partition).or_default().push(*offset);
        }
        assert!(per_partition.len() > 2, "the keys spread over partitions");
        for partition in 0..12 {
            let stored = per_partition.get(&partition).map_or(0, Vec::len) as i64;
            assert_eq!(log.end_offset(OUTBOUND_TOPIC, partition).unwrap(), stored);
        }
        // From the start, at most 3 of each partition, in offset order.
        let all = log
            .fetch_partitions(OUTBOUND_TOPIC, &[0; 12], 3)
            .await
            .unwrap();
        for partition in 0..12 {
            let got: Vec<i64> = all
                .iter()
                .filter(|r| r.partition == partition)
                .map(|r| r.offset)
                .collect();
            let stored = per_partition.get(&partition).map_or(0, Vec::len) as i64;
            assert_eq!(got, (0..stored.min(3)).collect::<Vec<_>>());
        }
        // From each partition's own position: only what lies past it.
        let from: Vec<i64> = (0..12)
            .map(|p| {
                log.end_offset(OUTBOUND_TOPIC, p)
                    .unwrap()
                    .saturating_sub(1)
                    .max(0)
            })
            .collect();
        let tail = log
            .fetch_partitions(OUTBOUND_TOPIC, &from, 100)
            .await
            .unwrap();
        assert_eq!(tail.len(), per_partition.len());
        for record in &tail {
            assert_eq!(
                record.offset + 1,
                log.end_offset(OUTBOUND_TOPIC, record.partition).unwrap()
            );
            let expected = log
                .fetch(OUTBOUND_TOPIC, record.partition, record.offset, 1)
                .await
                .unwrap();
            assert_eq!(expected, std::slice::from_ref(record));
        }
        // The ends move with the next commit, and survive a reopen.
        let (partition, offset) = log
            .append(OUTBOUND_TOPIC, "session-0", vec![1])
            .await
            .unwrap();
        assert_eq!(
            log.end_offset(OUTBOUND_TOPIC, partition).unwrap(),
            offset + 1
        );
        assert!(matches!(
            log.fetch_partitions(OUTBOUND_TOPIC, &[0; 3], 1).await,
            Err(LogError::UnknownPartition { .. })
        ));
        assert!(matches!(
            log.end_offset(OUTBOUND_TOPIC, 12),
            Err(LogError::UnknownPartition { partition: 12, .. })
        ));
        log.close().await;
        drop(log);
        let reopened = open(&path).await;
        assert_eq!(
            reopened.end_offset(OUTBOUND_TOPIC, partition).unwrap(),
            offset + 1
        );
    }

    #[tokio::test]
    async fn committed_positions_never_move_backwards() {
        let (_dir, path) = temp();
        let log = open(&path).await;
        assert_eq!(log.committed("g", OUTBOUND_TOPIC, 3).await.unwrap(), 0);
        let topic = OUTBOUND_TOPIC.to_owned();
        log.commit("g", &[(topic.clone(), 3, 10), (topic.clone(), 4, 2)])
            .await
            .unwrap();
        assert_eq!(log.committed("g", OUTBOUND_TOPIC, 3).await.unwrap(), 10);
        assert_eq!(log.committed("g", OUTBOUND_TOPIC, 4).await.unwrap(), 2);
        log.commit("g", &[(topic.clone(), 3, 7), (topic.clone(), 4, 5)])
            .await
            .unwrap();
        assert_eq!(log.committed("g", OUTBOUND_TOPIC, 3).await.unwrap(), 10);
        assert_eq!(log.committed("g", OUTBOUND_TOPIC, 4).await.unwrap(), 5);
        assert_eq!(log.committed("other", OUTBOUND_TOPIC, 3).await.unwrap(), 0);
        // A bad entry rejects the whole commit.
        assert!(matches!(
            log.commit("g", &[(topic.clone(), 3, 20), ("nope".to_owned(), 0, 1)]).await,
            Err(LogError::UnknownTopic(name)) if name == "nope"
        ));
        assert_eq!(log.committed("g", OUTBOUND_TOPIC, 3).await.unwrap(), 10);
        log.commit("g", &[]).await.unwrap();
    }

    #[tokio::test]
    async fn subscribe_wakes_after_an_append() {
        let (_dir, path) = temp();
        let log = open(&path).await;
        let mut changes = log.subscribe(OUTBOUND_TOPIC);
        let other = log.subscribe(EVENTS_TOPIC);
        let before = *changes.borrow_and_update();
        let writer = log.clone();
        let append = tokio::spawn(async move {
            writer
                .append(OUTBOUND_TOPIC, "s", b"v".to_vec())
                .await
                .unwrap()
        });
        tokio::time::timeout(Duration::from_secs(10), changes.changed())
            .await
            .expect("woken")
            .unwrap();
        assert!(*changes.borrow_and_update() > before);
        let (partition, offset) = append.await.unwrap();
        // Once woken, the record is visible.
        assert_eq!(
            log.fetch(OUTBOUND_TOPIC, partition, offset, 1)
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(!other.has_changed().unwrap(), "other topics are not woken");
    }

    #[tokio::test]
    async fn unknown_topics_and_closed_logs_are_errors() {
        let (_dir, path) = temp();
        let log = open(&path).await;
        assert!(matches!(
            log.append("wa.nope", "k", Vec::new()).await,
            Err(LogError::UnknownTopic(name)) if name == "wa.nope"
        ));
        assert!(matches!(
            log.append_batch("wa.nope", Vec::new()).await,
            Err(LogError::UnknownTopic(_))
        ));
        assert!(matches!(
            log.fetch("wa.nope", 0, 0, 1).await,
            Err(LogError::UnknownTopic(_))
        ));
        assert!(matches!(
            log.committed("g", "wa.nope", 0).await,
            Err(LogError::UnknownTopic(_))
        ));
        assert!(matches!(
            log.truncate("wa.nope", 0).await,
            Err(LogError::UnknownTopic(_))
        ));
        let mut idle = log.subscribe("wa.nope");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), idle.changed())
                .await
                .is_err(),
            "an unknown topic's receiver never fires"
        );
        log.close().await;
        log.close().await;
        assert!(matches!(
            log.append(OUTBOUND_TOPIC, "k", Vec::new()).await,
            Err(LogError::Closed)
        ));
    }

    #[tokio::test]
    async fn a_failed_batch_fails_its_waiters_and_reuses_no_offset() {
        let (_dir, path) = temp();
        let log = open(&path).await;
        let (partition, _) = log
            .append(OUTBOUND_TOPIC, "k", b"0".to_vec())
            .await
            .unwrap();
        // Make the next insert fail.
        sqlx::query(
            "CREATE TRIGGER refuse BEFORE INSERT ON log_records \
             BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .execute(&log.inner.shared.pool)
        .await
        .unwrap();
        assert!(matches!(
            log.append(OUTBOUND_TOPIC, "k", b"1".to_vec()).await,
            Err(LogError::BatchFailed(_))
        ));
        sqlx::query("DROP TRIGGER refuse")
            .execute(&log.inner.shared.pool)
            .await
            .unwrap();
        assert_eq!(
            log.append(OUTBOUND_TOPIC, "k", b"2".to_vec())
                .await
                .unwrap(),
            (partition, 1)
        );
    }

    #[tokio::test]
    async fn truncate_keeps_unread_and_recent_records() {
        let (_dir, path) = temp();
        let log = open(&path).await;
        let records: Vec<(String, Vec<u8>)> = (0..10).map(|i| ("k".to_owned(), vec![i])).collect();
        let partition = log.append_batch(OUTBOUND_TOPIC, records).await.unwrap()[0].0;
        let topic = OUTBOUND_TOPIC.to_owned();
        // Nobody committed: nothing goes.
        assert_eq!(log.truncate(OUTBOUND_TOPIC, 0).await.unwrap(), 0);
        log.commit("fast", &[(topic.clone(), partition, 10)])
            .await
            .unwrap();
        log.commit("slow", &[(topic.clone(), partition, 4)])
            .await
            .unwrap();
        // Too recent for a day's retention; forever retention keeps everything.
        assert_eq!(log.truncate(OUTBOUND_TOPIC, 86_400_000).await.unwrap(), 0);
        assert_eq!(log.truncate(OUTBOUND_TOPIC, -1).await.unwrap(), 0);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(log.truncate(OUTBOUND_TOPIC, 0).await.unwrap(), 4);
        let left = log.fetch(OUTBOUND_TOPIC, partition, 0, 100).await.unwrap();
        assert_eq!(left.first().map(|r| r.offset), Some(4));
        // Everyone read everything: the newest record stays, so offsets survive a restart.
        log.commit("slow", &[(topic.clone(), partition, 10)])
            .await
            .unwrap();
        assert_eq!(log.truncate(OUTBOUND_TOPIC, 0).await.unwrap(), 5);
        log.close().await;
        drop(log);
        let reopened = open(&path).await;
        assert_eq!(
            reopened
                .append(OUTBOUND_TOPIC, "k", b"next".to_vec())
                .await
                .unwrap(),
            (partition, 10)
        );
    }

    #[tokio::test]
    async fn throughput_of_group_commit() {
        const RECORDS: usize = 20_000;
        let (_dir, path) = temp();
        let log = open(&path).await;
        let value = vec![b'x'; 256];

        let started = Instant::now();
        let mut tasks = Vec::new();
        for task in 0..200 {
            let log = log.clone();
            let value = value.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..RECORDS / 200 {
                    let key = format!("session-{}", (task + i) % 500);
                    log.append(OUTBOUND_TOPIC, &key, value.clone())
                        .await
                        .unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let concurrent = started.elapsed();

        let started = Instant::now();
        for batch in 0..RECORDS / 1000 {
            let records = (0..1000)
                .map(|i| (format!("session-{}", (batch + i) % 500), value.clone()))
                .collect();
            log.append_batch(EVENTS_TOPIC, records).await.unwrap();
        }
        let batched = started.elapsed();

        eprintln!(
            "embedded log: {RECORDS} appends from 200 tasks in {concurrent:?} ({:.0} records/s); \
             {RECORDS} via append_batch(1000) in {batched:?} ({:.0} records/s)",
            RECORDS as f64 / concurrent.as_secs_f64(),
            RECORDS as f64 / batched.as_secs_f64(),
        );
        for topic in [OUTBOUND_TOPIC, EVENTS_TOPIC] {
            let all = read_all(&log, topic).await;
            assert_dense(&all);
            assert_eq!(all.values().map(Vec::len).sum::<usize>(), RECORDS);
        }
    }
}
