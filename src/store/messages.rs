//! Messages: outbound sends and inbound messages, with status timeline events.

use sqlx::FromRow;

use super::{Store, StoreError, parse_column};
use crate::domain::{MessageDirection, MessageStatus, WaitingReason, now_ms};

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
    /// When the ingress accepted it (ms); the message's `createdAt`.
    pub accepted_at: i64,
}

/// One status change to apply, from the events consumer.
#[derive(Debug, Clone)]
pub struct MessageStatusChange {
    /// The session the message belongs to (a worker can only move its own session's messages).
    pub session_id: String,
    /// The gateway's id, or the worker's WhatsApp id.
    pub message_id: String,
    /// The new status.
    pub status: MessageStatus,
    /// Why it failed.
    pub error_message: Option<String>,
    /// WhatsApp's id of the message, once the worker answered the send.
    pub worker_message_id: Option<String>,
    /// Delivery attempts, when the delivery consumer reports the outcome.
    pub attempts: Option<i64>,
    /// When it happened (ms).
    pub at: i64,
}

/// A delivery attempt that did not get through: the message waits, and says why.
#[derive(Debug, Clone)]
pub struct MessageWait {
    /// The session the message belongs to.
    pub session_id: String,
    /// The gateway's id of the message.
    pub message_id: String,
    /// Why it waits.
    pub reason: WaitingReason,
    /// The last attempt's failure in words.
    pub detail: Option<String>,
    /// Attempts so far.
    pub attempts: i64,
    /// When the next attempt is due (ms).
    pub next_attempt_at: i64,
}

/// A worker's `2xx` to a send, for [`Store::record_sent`].
#[derive(Debug, Clone)]
pub struct SentAnswer {
    /// The gateway's id of the message.
    pub message_id: String,
    /// WhatsApp's id of the message, when the worker gave one.
    pub worker_message_id: Option<String>,
    /// Delivery attempts, this one included.
    pub attempts: i64,
    /// When the answer arrived (ms).
    pub at: i64,
}

/// Filters and page of [`Store::list_messages`].
#[derive(Debug, Clone)]
pub struct MessageListQuery {
    /// Whose messages (always set: isolation).
    pub user_id: String,
    /// Only this session's.
    pub session_id: Option<String>,
    /// Only in this status.
    pub status: Option<MessageStatus>,
    /// Only this direction.
    pub direction: Option<MessageDirection>,
    /// Keyset cursor: rows strictly older than this `(created_at, id)`.
    pub before: Option<(i64, String)>,
    /// Page size.
    pub limit: u32,
}

/// Rows per multi-row statement. Small on purpose: SQLite finds a numbered placeholder by a
/// linear scan, so binding costs grow with the square of the placeholders in one statement.
const RECORD_CHUNK: usize = 64;

const MESSAGE_COLUMNS: &str = "id, user_id, session_id, direction, message_type, remote_jid, content, status, \
    worker_message_id, error_message, CAST(attempts AS BIGINT) AS attempts, created_at, updated_at, \
    waiting_reason, waiting_detail, next_attempt_at";

/// Moves a message forward only (any state may become FAILED, nothing leaves it). Returns the id
/// of the row it changed. The message is found by its id or WhatsApp's id through two indexed
/// lookups: an `OR` of the two lets SQLite's planner walk the session's index instead, which is
/// a scan of every message of the session per status change.
const UPDATE_STATUS_SQL: &str = "UPDATE messages SET status = $1, error_message = COALESCE($2, error_message), \
     updated_at = $3, attempts = COALESCE($7, attempts), \
     worker_message_id = COALESCE($8, worker_message_id), \
     sent_at = CASE WHEN $1 = 'SENT' THEN $3 ELSE sent_at END, \
     delivered_at = CASE WHEN $1 = 'DELIVERED' THEN $3 ELSE delivered_at END, \
     read_at = CASE WHEN $1 = 'READ' THEN $3 ELSE read_at END, \
     failed_at = CASE WHEN $1 = 'FAILED' THEN $3 ELSE failed_at END \
     WHERE id = (SELECT id FROM messages WHERE id = $5 AND session_id = $4 \
                 UNION ALL SELECT id FROM messages WHERE worker_message_id = $5 AND session_id = $4 LIMIT 1) AND \
     (CASE status WHEN 'PENDING' THEN 0 WHEN 'SENT' THEN 1 WHEN 'DELIVERED' THEN 2 WHEN 'READ' THEN 3 ELSE 4 END) < $6 \
     RETURNING id";

/// Applies one change found by the gateway's id or WhatsApp's id; returns the id it moved.
async fn update_one(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    change: &MessageStatusChange,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(UPDATE_STATUS_SQL)
        .bind(change.status.as_str())
        .bind(change.error_message.as_deref())
        .bind(change.at)
        .bind(&change.session_id)
        .bind(&change.message_id)
        .bind(status_rank(change.status))
        .bind(change.attempts)
        .bind(change.worker_message_id.as_deref())
        .fetch_all(&mut **tx)
        .await?)
}

/// Order of statuses; FAILED ranks last so it can follow any other, and nothing follows it.
fn status_rank(status: MessageStatus) -> i64 {
    match status {
        MessageStatus::Pending => 0,
        MessageStatus::Sent => 1,
        MessageStatus::Delivered => 2,
        MessageStatus::Read => 3,
        MessageStatus::Failed => 4,
    }
}

/// Appends `rows` value tuples of `columns` placeholders each, numbered from `$1`, with
/// `direction` as a literal fourth column and 'PENDING' / 0 for status and attempts: the
/// layout of the outbound insert.
fn push_value_rows(sql: &mut String, rows: usize, columns: usize, direction: &str) {
    for row in 0..rows {
        if row > 0 {
            sql.push(',');
        }
        let p = |column: usize| format!("${}", row * columns + column);
        sql.push_str(&format!(
            "({}, {}, {}, {direction}, {}, {}, {}, 'PENDING', {}, 0, {}, {})",
            p(1),
            p(2),
            p(3),
            p(4),
            p(5),
            p(6),
            p(7),
            p(8),
            p(8)
        ));
    }
}

/// One multi-row insert of outbound messages (PENDING), returning the ids it inserted.
fn record_query(
    chunk: &[NewOutboundMessage],
) -> sqlx::query::QueryScalar<'_, sqlx::Any, String, sqlx::any::AnyArguments> {
    let mut sql = String::with_capacity(256 + chunk.len() * 64);
    sql.push_str(
        "INSERT INTO messages (id, user_id, session_id, direction, message_type, remote_jid, content, \
         status, idempotency_key, attempts, created_at, updated_at) VALUES ",
    );
    push_value_rows(&mut sql, chunk.len(), 8, "'OUTBOUND'");
    sql.push_str(" ON CONFLICT (id) DO NOTHING RETURNING id");
    let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql));
    for message in chunk {
        query = query
            .bind(&message.id)
            .bind(&message.user_id)
            .bind(&message.session_id)
            .bind(message.message_type)
            .bind(&message.remote_jid)
            .bind(&message.content)
            .bind(message.idempotency_key.as_deref())
            .bind(message.accepted_at);
    }
    query
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
    /// While `PENDING` after a failed attempt: why it waits, in words, and when it is tried
    /// next (ms). Kept after it leaves `PENDING` (history); shown only while it waits.
    pub waiting: Option<(WaitingReason, Option<String>, Option<i64>)>,
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
    waiting_reason: Option<String>,
    waiting_detail: Option<String>,
    next_attempt_at: Option<i64>,
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
            waiting: row
                .waiting_reason
                .map(|reason| parse_column("messages.waiting_reason", &reason))
                .transpose()?
                .map(|reason| (reason, row.waiting_detail, row.next_attempt_at)),
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
    /// Records accepted outbound messages (PENDING) with multi-row inserts: one statement, or
    /// one transaction when they need several. Every message waits for this on its way to the
    /// worker, so on SQLite it goes ahead of the status writes queued for the file. The
    /// PENDING step of the timeline is the row's `created_at` (see
    /// [`message_timeline`](Self::message_timeline)), not a row of its own. Idempotent: a message already recorded is left as it
    /// is, because the delivery consumer records what it reads from the log and a redelivered
    /// record must not reset a message that moved on. Returns the ids that were new.
    pub async fn insert_outbound_messages(
        &self,
        messages: &[NewOutboundMessage],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut recorded = std::collections::HashSet::with_capacity(messages.len());
        if messages.is_empty() {
            return Ok(recorded);
        }
        let _turn = self.urgent_write_turn().await;
        if messages.len() <= RECORD_CHUNK {
            // One statement is atomic on its own: no BEGIN and COMMIT round trips, which under
            // load cost more than the insert.
            recorded.extend(record_query(messages).fetch_all(self.pool()).await?);
            return Ok(recorded);
        }
        let mut tx = self.pool().begin().await?;
        for chunk in messages.chunks(RECORD_CHUNK) {
            recorded.extend(record_query(chunk).fetch_all(&mut *tx).await?);
        }
        tx.commit().await?;
        Ok(recorded)
    }

    /// Which of `ids` are no longer PENDING (sent, failed, ...): a redelivered log record whose
    /// message already has an outcome must not reach the worker a second time.
    pub async fn settled_message_ids(
        &self,
        ids: &[&str],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut settled = std::collections::HashSet::new();
        for chunk in ids.chunks(RECORD_CHUNK * 4) {
            let mut sql =
                String::from("SELECT id FROM messages WHERE status <> 'PENDING' AND id IN (");
            for index in 0..chunk.len() {
                if index > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!("${}", index + 1));
            }
            sql.push(')');
            let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(*id);
            }
            settled.extend(query.fetch_all(self.pool()).await?);
        }
        Ok(settled)
    }

    /// Applies many status changes in one transaction, in order (see
    /// [`apply_message_status`](Self::apply_message_status) for the rules). Returns how many
    /// changed a message.
    pub async fn apply_message_statuses(
        &self,
        changes: &[MessageStatusChange],
    ) -> Result<u64, StoreError> {
        if changes.is_empty() {
            return Ok(0);
        }
        let _turn = self.write_turn().await;
        let mut tx = self.pool().begin().await?;
        // WhatsApp's id and the attempt count of delivery outcomes, whatever the status does
        // (the outcome may lose the race to the worker's own SENT receipt).
        let side: Vec<&MessageStatusChange> = changes
            .iter()
            .filter(|c| c.worker_message_id.is_some() || c.attempts.is_some())
            .collect();
        for chunk in side.chunks(RECORD_CHUNK) {
            let mut ids = String::new();
            let mut worker_ids = String::from("CASE id");
            let mut attempts = String::from("CASE id");
            for (index, _) in chunk.iter().enumerate() {
                let base = index * 3;
                if index > 0 {
                    ids.push(',');
                }
                ids.push_str(&format!("${}", base + 1));
                worker_ids.push_str(&format!(" WHEN ${} THEN ${}", base + 1, base + 2));
                attempts.push_str(&format!(" WHEN ${} THEN ${}", base + 1, base + 3));
            }
            let sql = format!(
                "UPDATE messages SET worker_message_id = COALESCE(worker_message_id, {worker_ids} END), \
                 attempts = COALESCE({attempts} END, attempts) WHERE id IN ({ids})"
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for change in chunk {
                query = query
                    .bind(&change.message_id)
                    .bind(change.worker_message_id.as_deref())
                    .bind(change.attempts);
            }
            query.execute(&mut *tx).await?;
        }
        // Statuses without a reason, grouped by status in rank order: moving forward only, the
        // result is the same as applying them one by one, at a few statements per batch.
        let mut events: Vec<(String, MessageStatus, Option<String>, i64)> = Vec::new();
        for status in [
            MessageStatus::Sent,
            MessageStatus::Delivered,
            MessageStatus::Read,
            MessageStatus::Failed,
        ] {
            let group: Vec<&MessageStatusChange> = changes
                .iter()
                .filter(|c| c.status == status && c.error_message.is_none())
                .collect();
            for chunk in group.chunks(RECORD_CHUNK) {
                let at = chunk.iter().map(|c| c.at).max().unwrap_or_else(now_ms);
                let mut ids = String::new();
                let mut sessions = String::from("CASE id");
                for (index, _) in chunk.iter().enumerate() {
                    let base = 3 + index * 2;
                    if index > 0 {
                        ids.push(',');
                    }
                    ids.push_str(&format!("${}", base + 1));
                    sessions.push_str(&format!(" WHEN ${} THEN ${}", base + 1, base + 2));
                }
                let sql = format!(
                    "UPDATE messages SET status = $1, updated_at = $2, \
                     sent_at = CASE WHEN $1 = 'SENT' THEN $2 ELSE sent_at END, \
                     delivered_at = CASE WHEN $1 = 'DELIVERED' THEN $2 ELSE delivered_at END, \
                     read_at = CASE WHEN $1 = 'READ' THEN $2 ELSE read_at END, \
                     failed_at = CASE WHEN $1 = 'FAILED' THEN $2 ELSE failed_at END \
                     WHERE id IN ({ids}) AND session_id = ({sessions} END) AND \
                     (CASE status WHEN 'PENDING' THEN 0 WHEN 'SENT' THEN 1 WHEN 'DELIVERED' THEN 2 \
                      WHEN 'READ' THEN 3 ELSE 4 END) < $3 RETURNING id"
                );
                let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql))
                    .bind(status.as_str())
                    .bind(at)
                    .bind(status_rank(status));
                for change in chunk {
                    query = query.bind(&change.message_id).bind(&change.session_id);
                }
                let updated: std::collections::HashSet<String> =
                    query.fetch_all(&mut *tx).await?.into_iter().collect();
                let missed: Vec<&&MessageStatusChange> = chunk
                    .iter()
                    .filter(|c| !updated.contains(&c.message_id))
                    .collect();
                for id in updated {
                    events.push((id, status, None, at));
                }
                if missed.is_empty() {
                    continue;
                }
                // Not moved by our id: either it is already further along (nothing to do) or
                // the worker named it by WhatsApp's id (one statement each, found by index).
                let mut sql = String::from("SELECT id FROM messages WHERE id IN (");
                for index in 0..missed.len() {
                    if index > 0 {
                        sql.push(',');
                    }
                    sql.push_str(&format!("${}", index + 1));
                }
                sql.push(')');
                let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql));
                for change in &missed {
                    query = query.bind(&change.message_id);
                }
                let known: std::collections::HashSet<String> =
                    query.fetch_all(&mut *tx).await?.into_iter().collect();
                for change in missed
                    .into_iter()
                    .filter(|c| !known.contains(&c.message_id))
                {
                    for id in update_one(&mut tx, change).await? {
                        events.push((id, status, None, change.at));
                    }
                }
            }
        }
        // Statuses with a reason (failures), one by one, in order.
        for change in changes.iter().filter(|c| c.error_message.is_some()) {
            for id in update_one(&mut tx, change).await? {
                events.push((id, change.status, change.error_message.clone(), change.at));
            }
        }
        let changed = events.len() as u64;
        // The SENT step of the timeline is the row's `sent_at` (as PENDING is its
        // `created_at`): the delivery's own `2xx` records it in one statement, see
        // [`record_sent`](Self::record_sent).
        events.retain(|(_, status, _, _)| *status != MessageStatus::Sent);
        for chunk in events.chunks(RECORD_CHUNK) {
            let mut sql =
                String::from("INSERT INTO message_events (message_id, status, detail, at) VALUES ");
            for index in 0..chunk.len() {
                let base = index * 4;
                if index > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!(
                    "(${}, ${}, ${}, ${})",
                    base + 1,
                    base + 2,
                    base + 3,
                    base + 4
                ));
            }
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (id, status, detail, at) in chunk {
                query = query
                    .bind(id)
                    .bind(status.as_str())
                    .bind(detail.as_deref())
                    .bind(*at);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    /// Records why messages wait (the delivery consumer's failed attempts), each only while
    /// the message is still `PENDING` (a late record never dresses a sent message as waiting).
    /// One transaction; waits are at most one per waiting session per backoff step.
    pub async fn apply_message_waits(&self, waits: &[MessageWait]) -> Result<u64, StoreError> {
        if waits.is_empty() {
            return Ok(0);
        }
        let _turn = self.write_turn().await;
        let mut tx = self.pool().begin().await?;
        let mut changed = 0;
        for wait in waits {
            changed += sqlx::query(
                "UPDATE messages SET waiting_reason = $1, waiting_detail = $2, next_attempt_at = $3, \
                 attempts = $4 WHERE id = $5 AND session_id = $6 AND status = 'PENDING'",
            )
            .bind(wait.reason.as_str())
            .bind(wait.detail.as_deref())
            .bind(wait.next_attempt_at)
            .bind(wait.attempts)
            .bind(&wait.message_id)
            .bind(&wait.session_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(changed)
    }

    /// Why the nearest earlier waiting message of `session_id` waits: the reason and words of
    /// the latest `PENDING` message created before `before` (ms) and not before `since` (ms)
    /// that has one. The session's index is walked backwards from `before`, bounded by `since`
    /// (older messages have been sent or given up on), so this stays cheap on a long history.
    pub async fn waiting_ahead(
        &self,
        session_id: &str,
        before: i64,
        since: i64,
    ) -> Result<Option<(WaitingReason, Option<String>)>, StoreError> {
        let row: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT waiting_reason, waiting_detail FROM messages \
             WHERE session_id = $1 AND created_at <= $2 AND created_at >= $3 \
             AND status = 'PENDING' AND waiting_reason IS NOT NULL \
             ORDER BY created_at DESC, id DESC LIMIT 1",
        )
        .bind(session_id)
        .bind(before)
        .bind(since)
        .fetch_optional(self.pool())
        .await?;
        row.map(|(reason, detail)| Ok((parse_column("messages.waiting_reason", &reason)?, detail)))
            .transpose()
    }

    /// Records workers' `2xx` answers: PENDING becomes SENT (with `sent_at`, the timeline's SENT
    /// step), and WhatsApp's id and the attempt count are kept whatever the status is (the
    /// answer may lose the race to the worker's own receipts). A session's next message waits
    /// until its previous answer is durable, so this is one statement per
    /// [`RECORD_CHUNK`] answers, each atomic on its own (no BEGIN and COMMIT round trips),
    /// ahead of the queued status writes (worker receipts). Each answer stands alone, so a
    /// failure part-way leaves the earlier chunks recorded and a retry of the whole is harmless.
    ///
    /// A chunk the store refuses for its values (a permanent failure, see
    /// [`FailureClass`](super::FailureClass)) is recorded again one answer at a time, and an
    /// answer refused on its own is recorded without WhatsApp's id: the worker's `2xx` is what
    /// matters, and a delivery that retried the whole forever would hold up every session.
    pub async fn record_sent(&self, answers: &[SentAnswer]) -> Result<(), StoreError> {
        if answers.is_empty() {
            return Ok(());
        }
        let _turn = self.urgent_write_turn().await;
        for chunk in answers.chunks(RECORD_CHUNK) {
            let refused = match self.record_sent_chunk(chunk).await {
                Err(err) if err.class() == super::FailureClass::Permanent => err,
                other => {
                    other?;
                    continue;
                }
            };
            tracing::warn!(
                error = format!("{refused:#}"),
                answers = chunk.len(),
                "the store refused a chunk of SENT outcomes; recording them one by one"
            );
            for answer in chunk {
                let err = match self.record_sent_chunk(std::slice::from_ref(answer)).await {
                    Err(err) if err.class() == super::FailureClass::Permanent => err,
                    other => {
                        other?;
                        continue;
                    }
                };
                tracing::warn!(
                    message_id = %answer.message_id,
                    error = format!("{err:#}"),
                    "the store refused a SENT outcome; recording it without WhatsApp's id"
                );
                let bare = SentAnswer {
                    worker_message_id: None,
                    ..answer.clone()
                };
                self.record_sent_chunk(std::slice::from_ref(&bare)).await?;
            }
        }
        Ok(())
    }

    /// One statement of [`record_sent`](Self::record_sent), for at most [`RECORD_CHUNK`]
    /// answers.
    async fn record_sent_chunk(&self, chunk: &[SentAnswer]) -> Result<(), StoreError> {
        let mut ids = String::new();
        let mut worker_ids = String::from("CASE id");
        let mut attempts = String::from("CASE id");
        for index in 0..chunk.len() {
            let base = 1 + index * 3;
            if index > 0 {
                ids.push(',');
            }
            ids.push_str(&format!("${}", base + 1));
            worker_ids.push_str(&format!(" WHEN ${} THEN ${}", base + 1, base + 2));
            attempts.push_str(&format!(" WHEN ${} THEN ${}", base + 1, base + 3));
        }
        // Every right-hand side reads the row as it was before this statement.
        let sql = format!(
            "UPDATE messages SET \
             status = CASE WHEN status = 'PENDING' THEN 'SENT' ELSE status END, \
             sent_at = CASE WHEN status = 'PENDING' THEN $1 ELSE sent_at END, \
             updated_at = CASE WHEN status = 'PENDING' THEN $1 ELSE updated_at END, \
             worker_message_id = COALESCE(worker_message_id, {worker_ids} END), \
             attempts = COALESCE({attempts} END, attempts) \
             WHERE id IN ({ids})"
        );
        let at = chunk.iter().map(|a| a.at).max().unwrap_or_else(now_ms);
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(at);
        for answer in chunk {
            query = query
                .bind(&answer.message_id)
                .bind(answer.worker_message_id.as_deref())
                .bind(answer.attempts);
        }
        query.execute(self.pool()).await?;
        Ok(())
    }

    /// A page of the user's messages, newest first, after `cursor` (the last row of the previous
    /// page), with optional filters.
    pub async fn list_messages(
        &self,
        query: &MessageListQuery,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        let mut sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE user_id = $1");
        let mut next = 2;
        let mut push = |sql: &mut String, clause: &str| {
            sql.push_str(&clause.replace('?', &format!("${next}")));
            next += 1;
        };
        if query.session_id.is_some() {
            push(&mut sql, " AND session_id = ?");
        }
        if query.status.is_some() {
            push(&mut sql, " AND status = ?");
        }
        if query.direction.is_some() {
            push(&mut sql, " AND direction = ?");
        }
        if query.before.is_some() {
            let created = next;
            let id = next + 1;
            sql.push_str(&format!(
                " AND (created_at < ${created} OR (created_at = ${created} AND id < ${id}))"
            ));
            next += 2;
        }
        sql.push_str(&format!(" ORDER BY created_at DESC, id DESC LIMIT ${next}"));
        let mut select =
            sqlx::query_as::<_, MessageRow>(sqlx::AssertSqlSafe(sql)).bind(&query.user_id);
        if let Some(session_id) = &query.session_id {
            select = select.bind(session_id);
        }
        if let Some(status) = query.status {
            select = select.bind(status.as_str());
        }
        if let Some(direction) = query.direction {
            select = select.bind(direction.as_str());
        }
        if let Some((created_at, id)) = &query.before {
            select = select.bind(*created_at).bind(id);
        }
        select = select.bind(i64::from(query.limit));
        select
            .fetch_all(self.pool())
            .await?
            .into_iter()
            .map(MessageRecord::try_from)
            .collect()
    }

    /// One of the user's messages; `NotFound` for anyone else's (isolation).
    pub async fn message_for_user(
        &self,
        user_id: &str,
        id: &str,
    ) -> Result<MessageRecord, StoreError> {
        let row: Option<MessageRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1 AND user_id = $2"
        )))
        .bind(id)
        .bind(user_id)
        .fetch_optional(self.pool())
        .await?;
        row.ok_or(StoreError::NotFound)?.try_into()
    }

    /// A message's status timeline, oldest first.
    pub async fn message_timeline(&self, id: &str) -> Result<Vec<MessageEvent>, StoreError> {
        let rows: Vec<(String, Option<String>, i64)> = sqlx::query_as(
            "SELECT status, detail, at FROM (\
               SELECT 'PENDING' AS status, CAST(NULL AS TEXT) AS detail, created_at AS at, 0 AS step, 0 AS seq \
               FROM messages WHERE id = $1 AND direction = 'OUTBOUND' \
               UNION ALL SELECT 'SENT', CAST(NULL AS TEXT), sent_at, 1, 0 \
               FROM messages WHERE id = $1 AND sent_at IS NOT NULL \
               UNION ALL SELECT status, detail, at, 2, id FROM message_events WHERE message_id = $1) steps \
             ORDER BY at, step, seq",
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
        let change = MessageStatusChange {
            session_id: session_id.to_owned(),
            message_id: message_id.to_owned(),
            status,
            error_message: error_message.map(str::to_owned),
            worker_message_id: None,
            attempts: None,
            at: now_ms(),
        };
        Ok(self.apply_message_statuses(&[change]).await? > 0)
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
