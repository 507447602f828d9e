//! Workers: the fleet registry (registration, liveness, load) and metrics samples.

use sqlx::FromRow;

use super::{Store, StoreError, parse_column};
use crate::domain::{WorkerStatus, now_ms};

/// A registered worker and its load.
#[derive(Clone, Debug)]
pub struct Worker {
    /// The worker's own id (`workerId`).
    pub id: String,
    /// Base URL the gateway calls (`http://host:port`).
    pub endpoint: String,
    /// ONLINE, OFFLINE or MAINTENANCE.
    pub status: WorkerStatus,
    /// Capacity the worker announced (or an admin set).
    pub max_sessions: i64,
    /// Free text.
    pub description: Option<String>,
    /// Worker software version.
    pub version: Option<String>,
    /// DEVELOPMENT, STAGING, TESTING or PRODUCTION.
    pub environment: Option<String>,
    /// Last reported CPU usage (percent).
    pub cpu_usage: Option<f64>,
    /// Last reported memory usage (percent or MB, as the worker reports).
    pub memory_usage: Option<f64>,
    /// Last reported uptime.
    pub uptime_seconds: Option<i64>,
    /// Last heartbeat (ms).
    pub last_heartbeat_at: Option<i64>,
    /// Last successful `GET /health` probe (ms).
    pub last_probe_ok_at: Option<i64>,
    /// Consecutive failed probes.
    pub probe_failures: i64,
    /// First registration (ms).
    pub registered_at: i64,
    /// Last change (ms).
    pub updated_at: i64,
    /// Live sessions assigned to the worker (computed).
    pub session_count: i64,
}

impl Worker {
    /// The last sign of life: its registration or last heartbeat. A healthy `/health` probe is
    /// not one: a worker that answers probes but has stopped heartbeating (a stuck event loop,
    /// a worker that lost its gateway URL) goes OFFLINE after the heartbeat timeout all the
    /// same. Probes only speed the other way: refused connections take a dead worker OFFLINE
    /// at once (see `Fleet::probe_workers`).
    pub fn last_seen_at(&self) -> Option<i64> {
        self.last_heartbeat_at
    }

    /// Whether the worker has shown life within `timeout_ms` of `now`.
    pub fn is_alive(&self, now: i64, timeout_ms: i64) -> bool {
        self.last_seen_at()
            .is_some_and(|seen| now - seen <= timeout_ms)
    }
}

#[derive(FromRow)]
struct WorkerRow {
    id: String,
    endpoint: String,
    status: String,
    max_sessions: i64,
    description: Option<String>,
    version: Option<String>,
    environment: Option<String>,
    cpu_usage: Option<f64>,
    memory_usage: Option<f64>,
    uptime_seconds: Option<i64>,
    last_heartbeat_at: Option<i64>,
    last_probe_ok_at: Option<i64>,
    probe_failures: i64,
    registered_at: i64,
    updated_at: i64,
    session_count: i64,
}

impl TryFrom<WorkerRow> for Worker {
    type Error = StoreError;
    fn try_from(row: WorkerRow) -> Result<Self, StoreError> {
        Ok(Worker {
            status: parse_column("workers.status", &row.status)?,
            id: row.id,
            endpoint: row.endpoint,
            max_sessions: row.max_sessions,
            description: row.description,
            version: row.version,
            environment: row.environment,
            cpu_usage: row.cpu_usage,
            memory_usage: row.memory_usage,
            uptime_seconds: row.uptime_seconds,
            last_heartbeat_at: row.last_heartbeat_at,
            last_probe_ok_at: row.last_probe_ok_at,
            probe_failures: row.probe_failures,
            registered_at: row.registered_at,
            updated_at: row.updated_at,
            session_count: row.session_count,
        })
    }
}

const WORKER_SELECT: &str = "SELECT w.id, w.endpoint, w.status, CAST(w.max_sessions AS BIGINT) AS max_sessions, \
    w.description, w.version, w.environment, w.cpu_usage, w.memory_usage, w.uptime_seconds, w.last_heartbeat_at, \
    w.last_probe_ok_at, CAST(w.probe_failures AS BIGINT) AS probe_failures, w.registered_at, w.updated_at, \
    (SELECT COUNT(*) FROM sessions s WHERE s.worker_id = w.id AND s.deleted_at IS NULL) AS session_count \
    FROM workers w";

/// What a worker announces when it registers.
#[derive(Debug)]
pub struct WorkerRegistration<'a> {
    /// Its id.
    pub id: &'a str,
    /// Its base URL.
    pub endpoint: &'a str,
    /// Capacity.
    pub max_sessions: i64,
    /// Free text.
    pub description: Option<&'a str>,
    /// Version.
    pub version: Option<&'a str>,
    /// Environment.
    pub environment: Option<&'a str>,
}

/// A heartbeat's metrics.
#[derive(Debug, Default, Clone)]
pub struct WorkerMetricsSample {
    /// CPU usage.
    pub cpu_usage: Option<f64>,
    /// Memory usage.
    pub memory_usage: Option<f64>,
    /// Uptime in seconds.
    pub uptime_seconds: Option<i64>,
    /// Messages handled since start.
    pub message_count: Option<i64>,
    /// Sessions held.
    pub total_sessions: Option<i64>,
    /// Sessions connected.
    pub active_sessions: Option<i64>,
}

/// The metrics kept on the `workers` row as well as in `worker_metrics`.
const WORKER_COLUMNS: [&str; 4] = [
    "cpu_usage",
    "memory_usage",
    "uptime_seconds",
    "active_sessions",
];

/// One metric value as it is bound.
#[derive(Clone, Copy, Debug)]
enum MetricValue {
    Real(f64),
    Whole(i64),
}

impl MetricValue {
    fn bind_to<'q>(
        self,
        query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
        match self {
            MetricValue::Real(value) => query.bind(value),
            MetricValue::Whole(value) => query.bind(value),
        }
    }
}

impl WorkerMetricsSample {
    /// The metrics present, by column, in a fixed order.
    fn present(&self) -> Vec<(&'static str, MetricValue)> {
        let real = |column, value: Option<f64>| value.map(|v| (column, MetricValue::Real(v)));
        let whole = |column, value: Option<i64>| value.map(|v| (column, MetricValue::Whole(v)));
        // `total_sessions` and `active_sessions` are INTEGER columns (32 bits on PostgreSQL).
        let count = |column, value: Option<i64>| {
            value.map(|v| (column, MetricValue::Whole(v.clamp(0, i64::from(i32::MAX)))))
        };
        [
            real("cpu_usage", self.cpu_usage),
            real("memory_usage", self.memory_usage),
            whole("uptime_seconds", self.uptime_seconds),
            whole("message_count", self.message_count),
            count("total_sessions", self.total_sessions),
            count("active_sessions", self.active_sessions),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

impl Store {
    /// All workers with their session counts, by id.
    pub async fn list_workers(&self) -> Result<Vec<Worker>, StoreError> {
        let rows: Vec<WorkerRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{WORKER_SELECT} ORDER BY w.id"
        )))
        .fetch_all(self.pool())
        .await?;
        rows.into_iter().map(Worker::try_from).collect()
    }

    /// One worker.
    pub async fn worker_by_id(&self, id: &str) -> Result<Worker, StoreError> {
        let row: Option<WorkerRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{WORKER_SELECT} WHERE w.id = $1"
        )))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        row.ok_or(StoreError::NotFound)?.try_into()
    }

    /// The worker registered at `endpoint`, if any.
    pub async fn worker_by_endpoint(&self, endpoint: &str) -> Result<Option<Worker>, StoreError> {
        let row: Option<WorkerRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{WORKER_SELECT} WHERE w.endpoint = $1"
        )))
        .bind(endpoint)
        .fetch_optional(self.pool())
        .await?;
        row.map(Worker::try_from).transpose()
    }

    /// Inserts or refreshes a worker as ONLINE and alive now. A worker in MAINTENANCE stays
    /// there (an admin's drain outlives restarts).
    pub async fn upsert_worker(
        &self,
        registration: &WorkerRegistration<'_>,
    ) -> Result<Worker, StoreError> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO workers (id, endpoint, status, max_sessions, description, version, environment, \
             last_heartbeat_at, last_probe_ok_at, probe_failures, registered_at, created_at, updated_at) \
             VALUES ($1, $2, 'ONLINE', $3, $4, $5, $6, $7, $7, 0, $7, $7, $7) \
             ON CONFLICT (id) DO UPDATE SET endpoint = excluded.endpoint, \
             status = CASE WHEN workers.status = 'MAINTENANCE' THEN 'MAINTENANCE' ELSE 'ONLINE' END, \
             max_sessions = excluded.max_sessions, description = excluded.description, \
             version = excluded.version, environment = excluded.environment, \
             last_heartbeat_at = excluded.last_heartbeat_at, last_probe_ok_at = excluded.last_probe_ok_at, \
             probe_failures = 0, registered_at = excluded.registered_at, updated_at = excluded.updated_at",
        )
        .bind(registration.id)
        .bind(registration.endpoint)
        .bind(registration.max_sessions)
        .bind(registration.description)
        .bind(registration.version)
        .bind(registration.environment)
        .bind(now)
        .execute(self.pool())
        .await
        .map_err(|e| StoreError::from_sqlx(e, "endpoint registered by another worker"))?;
        self.worker_by_id(registration.id).await
    }

    /// Records a heartbeat: liveness, metrics, and OFFLINE → ONLINE (never out of MAINTENANCE).
    /// Returns false when the worker is unknown (it must register).
    ///
    /// Only the metrics the worker sent are written, and each is bound as a value, never as a
    /// NULL: through sqlx's `Any` driver a missing `f64` is bound as a `float4` NULL where a
    /// present one is a `float8`, and PostgreSQL then refused the statement prepared for the
    /// other shape on that pooled connection (`incorrect binary data format in bind
    /// parameter 2`) for every later heartbeat. So each combination of present metrics is a
    /// statement of its own, whose parameter types never change.
    pub async fn record_heartbeat(
        &self,
        id: &str,
        sample: &WorkerMetricsSample,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut sql = String::from(
            "UPDATE workers SET last_heartbeat_at = $2, updated_at = $2, \
             status = CASE WHEN status = 'MAINTENANCE' THEN 'MAINTENANCE' ELSE 'ONLINE' END",
        );
        let present = sample.present();
        for (index, (column, _)) in present
            .iter()
            .filter(|(column, _)| WORKER_COLUMNS.contains(column))
            .enumerate()
        {
            sql.push_str(&format!(", {column} = ${}", index + 3));
        }
        sql.push_str(" WHERE id = $1");
        let mut update = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).bind(now);
        for (column, value) in &present {
            if WORKER_COLUMNS.contains(column) {
                update = value.bind_to(update);
            }
        }
        let done = update.execute(self.pool()).await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        let mut columns = String::from("worker_id, recorded_at");
        let mut values = String::from("$1, $2");
        for (index, (column, _)) in present.iter().enumerate() {
            columns.push_str(&format!(", {column}"));
            values.push_str(&format!(", ${}", index + 3));
        }
        let mut insert = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO worker_metrics ({columns}) VALUES ({values})"
        )))
        .bind(id)
        .bind(now);
        for (_, value) in &present {
            insert = value.bind_to(insert);
        }
        insert.execute(self.pool()).await?;
        Ok(true)
    }

    /// Records a probe result (shown to operators; liveness is the heartbeats').
    pub async fn record_probe(&self, id: &str, ok: bool) -> Result<(), StoreError> {
        let now = now_ms();
        let query = if ok {
            "UPDATE workers SET last_probe_ok_at = $1, probe_failures = 0 WHERE id = $2"
        } else {
            "UPDATE workers SET probe_failures = probe_failures + 1 WHERE id = $2 AND $1 > 0"
        };
        sqlx::query(query)
            .bind(now)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Sets a worker's status only if it is currently `from` (so concurrent monitors act once).
    /// Returns whether this call made the change.
    pub async fn transition_worker(
        &self,
        id: &str,
        from: WorkerStatus,
        to: WorkerStatus,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE workers SET status = $1, updated_at = $2 WHERE id = $3 AND status = $4",
        )
        .bind(to.as_str())
        .bind(now_ms())
        .bind(id)
        .bind(from.as_str())
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// An administrator's change of capacity, description or status.
    pub async fn update_worker(
        &self,
        id: &str,
        max_sessions: Option<i64>,
        description: Option<&str>,
        status: Option<WorkerStatus>,
    ) -> Result<Worker, StoreError> {
        let done = sqlx::query(
            "UPDATE workers SET max_sessions = COALESCE($1, max_sessions), description = COALESCE($2, description), \
             status = COALESCE($3, status), updated_at = $4 WHERE id = $5",
        )
        .bind(max_sessions)
        .bind(description)
        .bind(status.map(WorkerStatus::as_str))
        .bind(now_ms())
        .bind(id)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        self.worker_by_id(id).await
    }

    /// Removes a worker that holds no live session; `Conflict` otherwise.
    pub async fn delete_worker(&self, id: &str) -> Result<(), StoreError> {
        let worker = self.worker_by_id(id).await?;
        if worker.session_count > 0 {
            return Err(StoreError::Conflict("worker still holds sessions"));
        }
        sqlx::query("UPDATE sessions SET worker_id = NULL WHERE worker_id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        sqlx::query("DELETE FROM workers WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Deletes metrics samples older than `before_ms` (retention).
    pub async fn prune_worker_metrics(&self, before_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM worker_metrics WHERE recorded_at < $1")
            .bind(before_ms)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }

    /// How many metrics samples a worker has (tests, statistics).
    pub async fn count_worker_metrics(&self, worker_id: &str) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM worker_metrics WHERE worker_id = $1")
                .bind(worker_id)
                .fetch_one(self.pool())
                .await?,
        )
    }
}
