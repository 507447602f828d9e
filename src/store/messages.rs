//! Messages: outbound sends and inbound messages, with status timeline events.

use super::{Store, StoreError};
use crate::domain::{MessageStatus, now_ms};

impl Store {
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
        Ok(done.rows_affected() > 0)
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
