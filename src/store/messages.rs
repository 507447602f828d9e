//! Messages: outbound sends and inbound messages, with status timeline events.

use sqlx::FromRow;

use super::{Store, StoreError, parse_column};
use crate::domain::{MessageDirection, MessageStatus, now_ms};

/// A message accepted for sending, as recorded at ingress.
#[derive(Debug, Clone)]
pub struct NewOutboundMessage {
    /// Gateway message id (travels to the worker as `X-Message-Id`).
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Sending session.
    pub session_id: String,
    /// `messages.message_type` spelling.
    pub message_type: &'static str,
    /// Recipient JID.
    pub remote_jid: String,
    /// The worker send body (JSON).
    pub content: String,
    /// The client's `Idempotency-Key`, if any.
    pub idempotency_key: Option<String>,
}

/// A stored message.
#[derive(Debug, Clone)]
pub struct MessageRecord {
    /// Gateway message id.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Session.
    pub session_id: String,
    /// INBOUND or OUTBOUND.
    pub direction: MessageDirection,
    /// Type (store spelling).
    pub message_type: String,
    /// Recipient (outbound) or sender (inbound).
    pub remote_jid: String,
    /// Body (JSON text).
    pub content: String,
    /// Delivery state.
    pub status: MessageStatus,
    /// WhatsApp's id, once the worker answered.
    pub worker_message_id: Option<String>,
    /// Why it failed.
    pub error_message: Option<String>,
    /// Delivery attempts so far.
    pub attempts: i64,
    /// Accepted at (ms).
    pub created_at: i64,
    /// Last change (ms).
    pub updated_at: i64,
}

#[derive(FromRow)]
struct MessageRow {
    id: String,
    user_id: String,
    session_id: String,
    direction: String,
    message_type: String,
    remote_jid: String,
    content: String,
    status: String,
    worker_message_id: Option<String>,
    error_message: Option<String>,
    attempts: i64,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<MessageRow> for MessageRecord {
    type Error = StoreError;
    fn try_from(row: MessageRow) -> Result<Self, StoreError> {
        Ok(MessageRecord {
            direction: parse_column("messages.direction", &row.direction)?,
            status: parse_column("messages.status", &row.status)?,
            id: row.id,
            user_id: row.user_id,
            session_id: row.session_id,
            message_type: row.message_type,
            remote_jid: row.remote_jid,
            content: row.content,
            worker_message_id: row.worker_message_id,
            error_message: row.error_message,
            attempts: row.attempts,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// One step of a message's status timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageEvent {
    /// Status reached.
    pub status: MessageStatus,
    /// Detail (error text, worker id).
    pub detail: Option<String>,
    /// When (ms).
    pub at: i64,
}

impl Store {
    /// Records accepted outbound messages (PENDING) and their first timeline step, all in one
    /// transaction: a bulk send of 1000 is one commit.
    pub async fn insert_outbound_messages(
        &self,
        messages: &[NewOutboundMessage],
    ) -> Result<(), StoreError> {
        if messages.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        for message in messages {
            sqlx::query(
                "INSERT INTO messages (id, user_id, session_id, direction, message_type, remote_jid, content, status, \
                 idempotency_key, attempts, created_at, updated_at) \
                 VALUES ($1, $2, $3, 'OUTBOUND', $4, $5, $6, 'PENDING', $7, 0, $8, $8)",
            )
            .bind(&message.id)
            .bind(&message.user_id)
            .bind(&message.session_id)
            .bind(message.message_type)
            .bind(&message.remote_jid)
            .bind(&message.content)
            .bind(message.idempotency_key.as_deref())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "message id already exists"))?;
            sqlx::query("INSERT INTO message_events (message_id, status, detail, at) VALUES ($1, 'PENDING', NULL, $2)")
                .bind(&message.id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// One of the user's messages; `NotFound` for anyone else's (isolation).
    pub async fn message_for_user(
        &self,
        user_id: &str,
        id: &str,
    ) -> Result<MessageRecord, StoreError> {
        let row: Option<MessageRow> = sqlx::query_as(
            "SELECT id, user_id, session_id, direction, message_type, remote_jid, content, status, worker_message_id, \
             error_message, CAST(attempts AS BIGINT) AS attempts, created_at, updated_at \
             FROM messages WHERE id = $1 AND user_id = $2",
        )
        .bind(id)
        .bind(user_id)
        .fetch_optional(self.pool())
        .await?;
        row.ok_or(StoreError::NotFound)?.try_into()
    }

    /// A message's status timeline, oldest first.
    pub async fn message_timeline(&self, id: &str) -> Result<Vec<MessageEvent>, StoreError> {
        let rows: Vec<(String, Option<String>, i64)> = sqlx::query_as(
            "SELECT status, detail, at FROM message_events WHERE message_id = $1 ORDER BY at, id",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|(status, detail, at)| {
                Ok(MessageEvent {
                    status: parse_column("message_events.status", &status)?,
                    detail,
                    at,
                })
            })
            .collect()
    }

    /// Applies a worker's status report to a message of `session_id` known by the gateway's id or
    /// the worker's WhatsApp id. Status never moves backwards (a late SENT after READ is ignored),
    /// except to FAILED. Returns whether a message changed.
    pub async fn apply_message_status(
        &self,
        session_id: &str,
        message_id: &str,
        status: MessageStatus,
        error_message: Option<&str>,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let rank = |s: MessageStatus| match s {
            MessageStatus::Pending => 0_i64,
            MessageStatus::Sent => 1,
            MessageStatus::Delivered => 2,
            MessageStatus::Read => 3,
            MessageStatus::Failed => 4,
        };
        let done = sqlx::query(
            "UPDATE messages SET status = $1, error_message = COALESCE($2, error_message), updated_at = $3, \
             sent_at = CASE WHEN $1 = 'SENT' THEN $3 ELSE sent_at END, \
             delivered_at = CASE WHEN $1 = 'DELIVERED' THEN $3 ELSE delivered_at END, \
             read_at = CASE WHEN $1 = 'READ' THEN $3 ELSE read_at END, \
             failed_at = CASE WHEN $1 = 'FAILED' THEN $3 ELSE failed_at END \
             WHERE session_id = $4 AND (id = $5 OR worker_message_id = $5) AND \
             (CASE status WHEN 'PENDING' THEN 0 WHEN 'SENT' THEN 1 WHEN 'DELIVERED' THEN 2 WHEN 'READ' THEN 3 ELSE 4 END) < $6",
        )
        .bind(status.as_str())
        .bind(error_message)
        .bind(now)
        .bind(session_id)
        .bind(message_id)
        .bind(rank(status))
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO message_events (message_id, status, detail, at) \
             SELECT id, $1, $2, $3 FROM messages WHERE session_id = $4 AND (id = $5 OR worker_message_id = $5)",
        )
        .bind(status.as_str())
        .bind(error_message)
        .bind(now)
        .bind(session_id)
        .bind(message_id)
        .execute(self.pool())
        .await?;
        Ok(true)
    }

    /// Stores an inbound message (idempotent on the worker's message id).
    pub async fn insert_inbound_message(
        &self,
        user_id: &str,
        session_id: &str,
        worker_message_id: &str,
        from: &str,
        message_type: &str,
        content: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let id = format!("in-{session_id}-{worker_message_id}");
        let done = sqlx::query(
            "INSERT INTO messages (id, user_id, session_id, direction, message_type, remote_jid, content, status, \
             worker_message_id, created_at, updated_at) VALUES ($1, $2, $3, 'INBOUND', $4, $5, $6, 'DELIVERED', $7, $8, $8) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&id)
        .bind(user_id)
        .bind(session_id)
        .bind(message_type)
        .bind(from)
        .bind(content.to_string())
        .bind(worker_message_id)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }
}
