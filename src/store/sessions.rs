//! Sessions: the customer's WhatsApp logins, which worker runs each, and its fencing epoch.
//!
//! The epoch is the fencing token: every (re)assignment to a worker bumps it with a
//! compare-and-set, so of two concurrent moves exactly one wins, and a report from a worker that
//! is not the current owner can be recognised and refused.

use sqlx::FromRow;

use super::{Store, StoreError, parse_column};
use crate::domain::{SessionStatus, now_ms};

/// A session row.
#[derive(Clone, Debug)]
pub struct Session {
    /// Protocol session id (3–50 of `[A-Za-z0-9_-]`).
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// The owner's label.
    pub name: String,
    /// Last known status.
    pub status: SessionStatus,
    /// Worker currently running it.
    pub worker_id: Option<String>,
    /// Fencing token, bumped on every assignment.
    pub epoch: i64,
    /// WhatsApp number once connected.
    pub phone_number: Option<String>,
    /// WhatsApp display name once connected.
    pub display_name: Option<String>,
    /// Current QR string while `QR_REQUIRED`.
    pub qr_code: Option<String>,
    /// When the QR was issued (ms).
    pub qr_updated_at: Option<i64>,
    /// When the phone logged the session out (ms).
    pub logged_out_at: Option<i64>,
    /// Last report (ms).
    pub last_activity_at: Option<i64>,
    /// Creation (ms).
    pub created_at: i64,
    /// Last change (ms).
    pub updated_at: i64,
}

impl Session {
    /// Whether its worker should be running it: placed, not logged out, and not stopped on
    /// purpose or for good (`DISCONNECTED`, `ERROR`).
    pub fn should_run(&self) -> bool {
        self.worker_id.is_some()
            && self.logged_out_at.is_none()
            && matches!(
                self.status,
                SessionStatus::Init
                    | SessionStatus::QrRequired
                    | SessionStatus::Connected
                    | SessionStatus::Reconnecting
            )
    }
}

#[derive(FromRow)]
struct SessionRow {
    id: String,
    user_id: String,
    name: String,
    status: String,
    worker_id: Option<String>,
    epoch: i64,
    phone_number: Option<String>,
    display_name: Option<String>,
    qr_code: Option<String>,
    qr_updated_at: Option<i64>,
    logged_out_at: Option<i64>,
    last_activity_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<SessionRow> for Session {
    type Error = StoreError;
    fn try_from(row: SessionRow) -> Result<Self, StoreError> {
        Ok(Session {
            status: parse_column("sessions.status", &row.status)?,
            id: row.id,
            user_id: row.user_id,
            name: row.name,
            worker_id: row.worker_id,
            epoch: row.epoch,
            phone_number: row.phone_number,
            display_name: row.display_name,
            qr_code: row.qr_code,
            qr_updated_at: row.qr_updated_at,
            logged_out_at: row.logged_out_at,
            last_activity_at: row.last_activity_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

const SESSION_COLUMNS: &str = "id, user_id, name, status, worker_id, epoch, phone_number, display_name, qr_code, \
    qr_updated_at, logged_out_at, last_activity_at, created_at, updated_at";

/// A status report to apply (from a webhook or a heartbeat).
#[derive(Debug, Default, Clone)]
pub struct SessionReport {
    /// New status.
    pub status: Option<SessionStatus>,
    /// Phone number, when reported.
    pub phone_number: Option<String>,
    /// Display name, when reported.
    pub display_name: Option<String>,
    /// New QR string (set with `QR_REQUIRED`; cleared otherwise).
    pub qr_code: Option<String>,
    /// The phone logged the session out.
    pub logged_out: bool,
}

impl Store {
    /// Creates a session (status INIT, on no worker); `Conflict` if the id is taken.
    pub async fn insert_session(
        &self,
        id: &str,
        user_id: &str,
        name: &str,
    ) -> Result<Session, StoreError> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO sessions (id, user_id, name, status, epoch, created_at, updated_at) \
             VALUES ($1, $2, $3, 'INIT', 0, $4, $4)",
        )
        .bind(id)
        .bind(user_id)
        .bind(name)
        .bind(now)
        .execute(self.pool())
        .await
        .map_err(|e| StoreError::from_sqlx(e, "session id already in use"))?;
        self.session_by_id(id).await
    }

    /// A live (not deleted) session by id, whoever owns it.
    pub async fn session_by_id(&self, id: &str) -> Result<Session, StoreError> {
        let row: Option<SessionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1 AND deleted_at IS NULL"
        )))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        row.ok_or(StoreError::NotFound)?.try_into()
    }

    /// Live sessions, newest first: one user's, or everyone's when `user_id` is `None`.
    pub async fn list_sessions(&self, user_id: Option<&str>) -> Result<Vec<Session>, StoreError> {
        let rows: Vec<SessionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE deleted_at IS NULL AND ($1 IS NULL OR user_id = $1) \
             ORDER BY created_at DESC, id DESC"
        )))
        .bind(user_id)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter().map(Session::try_from).collect()
    }

    /// Live sessions assigned to a worker.
    pub async fn sessions_on_worker(&self, worker_id: &str) -> Result<Vec<Session>, StoreError> {
        let rows: Vec<SessionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE worker_id = $1 AND deleted_at IS NULL ORDER BY id"
        )))
        .bind(worker_id)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter().map(Session::try_from).collect()
    }

    /// How many sessions the user owns that are not deleted (what the tier limit counts).
    pub async fn count_live_sessions(&self, user_id: &str) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM sessions WHERE user_id = $1 AND deleted_at IS NULL",
        )
        .bind(user_id)
        .fetch_one(self.pool())
        .await?)
    }

    /// Whether `session_id` is a live session of `user_id` (isolation checks).
    pub async fn user_owns_session(
        &self,
        user_id: &str,
        session_id: &str,
    ) -> Result<bool, StoreError> {
        let found: Option<String> = sqlx::query_scalar(
            "SELECT id FROM sessions WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL",
        )
        .bind(session_id)
        .bind(user_id)
        .fetch_optional(self.pool())
        .await?;
        Ok(found.is_some())
    }

    /// Whether `user_id` owns the live session `session_id`, and if so whether it was ever
    /// placed on a worker (a placement bumps the epoch, so epoch 0 without a worker is a
    /// session nobody connected yet).
    pub async fn session_ownership(
        &self,
        user_id: &str,
        session_id: &str,
    ) -> Result<SessionOwnership, StoreError> {
        let found: Option<(Option<String>, i64)> = sqlx::query_as(
            "SELECT worker_id, epoch FROM sessions WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL",
        )
        .bind(session_id)
        .bind(user_id)
        .fetch_optional(self.pool())
        .await?;
        Ok(match found {
            None => SessionOwnership::NotOwned,
            Some((None, 0)) => SessionOwnership::NeverPlaced,
            Some(_) => SessionOwnership::Placed,
        })
    }

    /// Moves the session to `worker_id` (or to no worker) if its epoch is still `expected_epoch`;
    /// bumps the epoch and resets the status. `None` when another move won the race.
    pub async fn assign_session(
        &self,
        id: &str,
        expected_epoch: i64,
        worker_id: Option<&str>,
        status: SessionStatus,
    ) -> Result<Option<Session>, StoreError> {
        let done = sqlx::query(
            "UPDATE sessions SET worker_id = $1, epoch = epoch + 1, status = $2, qr_code = NULL, updated_at = $3 \
             WHERE id = $4 AND epoch = $5 AND deleted_at IS NULL",
        )
        .bind(worker_id)
        .bind(status.as_str())
        .bind(now_ms())
        .bind(id)
        .bind(expected_epoch)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        self.session_by_id(id).await.map(Some)
    }

    /// Applies a report from `worker_id` if it still owns the session at `epoch` (fencing).
    /// Returns the updated session, or `None` when the report was fenced off.
    pub async fn apply_session_report(
        &self,
        id: &str,
        worker_id: &str,
        epoch: i64,
        report: &SessionReport,
    ) -> Result<Option<Session>, StoreError> {
        let now = now_ms();
        let qr_updated_at = report.qr_code.as_ref().map(|_| now);
        let done = sqlx::query(
            "UPDATE sessions SET status = COALESCE($1, status), \
             phone_number = COALESCE($2, phone_number), \
             display_name = COALESCE($3, display_name), \
             qr_code = CASE WHEN $1 IS NULL OR $1 = 'QR_REQUIRED' THEN COALESCE($4, qr_code) ELSE NULL END, \
             qr_updated_at = COALESCE($5, qr_updated_at), \
             logged_out_at = CASE WHEN $6 = 1 THEN $7 WHEN $1 = 'CONNECTED' THEN NULL ELSE logged_out_at END, \
             last_activity_at = $7, updated_at = $7 \
             WHERE id = $8 AND worker_id = $9 AND epoch = $10 AND deleted_at IS NULL",
        )
        .bind(report.status.map(SessionStatus::as_str))
        .bind(report.phone_number.as_deref())
        .bind(report.display_name.as_deref())
        .bind(report.qr_code.as_deref())
        .bind(qr_updated_at)
        .bind(i64::from(report.logged_out))
        .bind(now)
        .bind(id)
        .bind(worker_id)
        .bind(epoch)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        self.session_by_id(id).await.map(Some)
    }

    /// Sets the status of a session regardless of owner (gateway-side decisions, e.g. ERROR after
    /// a failed recovery), only if the epoch is unchanged.
    pub async fn set_session_status(
        &self,
        id: &str,
        epoch: i64,
        status: SessionStatus,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE sessions SET status = $1, updated_at = $2 WHERE id = $3 AND epoch = $4 AND deleted_at IS NULL",
        )
        .bind(status.as_str())
        .bind(now_ms())
        .bind(id)
        .bind(epoch)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Soft-deletes a session (its id stays reserved; messages keep their reference).
    pub async fn delete_session(&self, id: &str) -> Result<(), StoreError> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE sessions SET deleted_at = $1, worker_id = NULL, epoch = epoch + 1, updated_at = $1 \
             WHERE id = $2 AND deleted_at IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}

/// What [`Store::session_ownership`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionOwnership {
    /// No such live session of that user.
    NotOwned,
    /// The user's, never connected: no worker holds it or ever did.
    NeverPlaced,
    /// The user's, placed on a worker now or before.
    Placed,
}
