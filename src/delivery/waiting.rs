//! Why a `PENDING` message has not been sent yet, as its status says (`waitingReason`).
//!
//! A message whose own attempt failed says what the delivery consumer recorded (the reason of
//! its last attempt and when it is tried next, see [`Store::apply_message_waits`]). A message
//! that has not been tried yet waits for something else, read from the store when asked: its
//! session is not connected, its worker is down, an earlier message of the session waits (and
//! why), or the tier's pacing. Nothing here is on the delivery's hot path: it runs when a
//! client reads one message.

use std::time::Duration;

use crate::domain::{
    MessageDirection, MessageStatus, SessionStatus, WaitingReason, WorkerStatus, now_ms,
};
use crate::store::{MessageRecord, Store, StoreError};

/// Why a message waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// The reason, as a code.
    pub reason: WaitingReason,
    /// The reason in words.
    pub detail: Option<String>,
    /// When its next attempt is due (ms), when one of its own attempts failed.
    pub next_attempt_at: Option<i64>,
}

impl Waiting {
    /// What the store recorded on the message itself (its last failed attempt), if it waits.
    pub fn recorded(message: &MessageRecord) -> Option<Waiting> {
        if message.status != MessageStatus::Pending {
            return None;
        }
        message
            .waiting
            .clone()
            .map(|(reason, detail, next_attempt_at)| Waiting {
                reason,
                detail,
                next_attempt_at,
            })
    }

    /// Why `message` waits: its own last attempt's reason, else what holds it up now.
    /// `pacing` is the owner's tier interval between two sends of a session; `max_wait` is
    /// `DELIVERY_MAX_WAIT_MS` (messages older than it are no longer waiting).
    pub async fn explain(
        store: &Store,
        message: &MessageRecord,
        pacing: Duration,
        max_wait: Duration,
    ) -> Result<Option<Waiting>, StoreError> {
        if message.status != MessageStatus::Pending
            || message.direction != MessageDirection::Outbound
        {
            return Ok(None);
        }
        if let Some(own) = Waiting::recorded(message) {
            return Ok(Some(own));
        }
        let because = |reason, detail: String| {
            Ok(Some(Waiting {
                reason,
                detail: Some(detail),
                next_attempt_at: None,
            }))
        };
        let session = match store.session_by_id(&message.session_id).await {
            Ok(session) => session,
            Err(StoreError::NotFound) => return Ok(None),
            Err(err) => return Err(err),
        };
        if session.status != SessionStatus::Connected {
            return because(
                WaitingReason::SessionReconnecting,
                format!(
                    "the session is {}; its messages are sent once it is CONNECTED again",
                    session.status
                ),
            );
        }
        let Some(worker_id) = &session.worker_id else {
            return because(
                WaitingReason::WorkerDown,
                "the session is being placed on a worker".to_owned(),
            );
        };
        match store.worker_by_id(worker_id).await {
            Ok(worker) if worker.status == WorkerStatus::Online => {}
            Ok(worker) => {
                return because(
                    WaitingReason::WorkerDown,
                    format!(
                        "the session's worker is {}; the session is being moved",
                        worker.status
                    ),
                );
            }
            Err(StoreError::NotFound) => {
                return because(
                    WaitingReason::WorkerDown,
                    "the session's worker is gone; the session is being moved".to_owned(),
                );
            }
            Err(err) => return Err(err),
        }
        let since =
            now_ms().saturating_sub(i64::try_from(max_wait.as_millis()).unwrap_or(i64::MAX));
        if let Some((reason, detail)) = store
            .waiting_ahead(&message.session_id, message.created_at, since)
            .await?
        {
            let detail = detail.map_or_else(
                || "behind an earlier message of the session that waits".to_owned(),
                |detail| format!("behind an earlier message of the session that waits: {detail}"),
            );
            return because(reason, detail);
        }
        if !pacing.is_zero() {
            return because(
                WaitingReason::Paced,
                format!(
                    "in line: the session sends one message every {} ms on this tier",
                    pacing.as_millis()
                ),
            );
        }
        because(WaitingReason::Queued, "in line for delivery".to_owned())
    }
}
