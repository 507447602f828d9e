//! The events consumer: applies `wa.events.v1` (delivery outcomes and the workers' receipts) to
//! the `messages` table in turns of a few statements, then commits the batch's positions. Events
//! of one session share a partition and are applied in log order; a status never moves
//! backwards (see `Store::apply_message_statuses`), so a replay after a crash is harmless.
//!
//! No poison pills: an event that cannot be decoded, fails validation, or that the store refuses
//! on its own (a permanent failure: a constraint, a value it cannot encode, see
//! [`FailureClass`]) is set aside on `wa.events.dlq.v1` with the reason, counted in
//! `wa_gateway_dead_letters_total{consumer="events"}` and logged once; the partition moves on.
//! A turn the store refuses is applied again one event at a time, so only the events that fail
//! alone are set aside. A store that cannot work now (connection lost, disk full) is waited
//! for: nothing is committed past an event that was neither applied nor set aside.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use consumers::{LogSource, SourceEvent, SourceRecord};
use futures_util::future::BoxFuture;
use producers::{EventEnvelope, WorkerEvent};
use tokio::sync::watch;

use crate::app::AppContext;
use crate::domain::{InvalidInput, MessageStatus, SessionId, TextRule, WaitingReason};
use crate::store::{FailureClass, MessageStatusChange, MessageWait, Store, StoreError};

/// Events applied per transaction at most.
const BATCH: usize = 2_000;
/// Status changes written in one transaction at most (see [`Applier::apply_changes`]).
const STATUS_CHUNK: usize = 128;
/// A message id in an event: the gateway's UUID or WhatsApp's id (printable ASCII).
pub(crate) const MESSAGE_ID_RULE: TextRule = TextRule::token(256).non_empty();
/// Pause after a store that cannot work now, doubling up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Tries of one event alone that failed neither transiently nor permanently (an error the
/// store does not classify) before it is set aside.
const UNKNOWN_TRIES: u32 = 3;

/// The events consumer's label in `wa_gateway_dead_letters_total`.
const CONSUMER: &str = "events";

/// Runs until `stop` flips.
pub async fn run_events(
    context: Arc<AppContext>,
    store: Store,
    mut source: LogSource,
    mut stop: watch::Receiver<bool>,
) {
    let dead_letter_topic = context.pipeline.topics().event_dead_letters;
    let mut failures = 0_u32;
    loop {
        if *stop.borrow() {
            return;
        }
        let event = tokio::select! {
            event = source.next(BATCH, Duration::from_millis(100)) => event,
            _ = stop.changed() => return,
        };
        let records = match event {
            Ok(SourceEvent::Records(records)) => records,
            Ok(SourceEvent::Assigned(_) | SourceEvent::Revoked(_)) => continue,
            Err(err) => {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %err, "reading the events log failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(failures.min(25)))).await;
                continue;
            }
        };
        if records.is_empty() {
            continue;
        }
        let mut positions: HashMap<(String, i32), i64> = HashMap::new();
        let mut applier = Applier {
            store: &store,
            records: &records,
            changes: Vec::with_capacity(records.len()),
            waits: Vec::new(),
            inbound: Vec::new(),
            set_aside: Vec::new(),
            stop: stop.clone(),
        };
        for (index, record) in records.iter().enumerate() {
            let slot = positions
                .entry((record.topic.clone(), record.partition))
                .or_insert(record.offset + 1);
            *slot = (*slot).max(record.offset + 1);
            applier.collect(index, record);
        }
        // Committing past events that were neither applied nor set aside would lose them.
        if applier.apply().await.is_err() {
            return;
        }
        let set_aside = std::mem::take(&mut applier.set_aside);
        let applied = records.len() - set_aside.len();
        if !set_aside.is_empty()
            && set_aside_all(&context, &dead_letter_topic, &records, set_aside, &mut stop)
                .await
                .is_err()
        {
            return;
        }
        failures = 0;
        context.metrics.events_applied_total.inc_by(applied as u64);
        let positions: Vec<(String, i32, i64)> = positions
            .into_iter()
            .map(|((topic, partition), offset)| (topic, partition, offset))
            .collect();
        if let Err(err) = source.commit(&positions).await {
            tracing::warn!(error = %err, "committing event positions failed; they will be re-applied");
        }
    }
}

use super::Stopped;

/// Why an event was set aside: the metric's `reason` label and the words for the DLQ record.
#[derive(Debug)]
struct SetAside {
    /// Index of the record in the fetched batch.
    record: usize,
    /// `undecodable`, `invalid`, `rejected` or `unapplicable`.
    label: &'static str,
    reason: String,
}

/// A write of a batch, and the record each of its items came from.
type FromRecord<T> = (usize, T);

/// An inbound message waiting to be stored, and the record it came from.
struct Inbound {
    record: usize,
    session_id: String,
    message_id: String,
    from: String,
    message_type: String,
    body: serde_json::Value,
}

/// One fetched batch on its way to the store.
struct Applier<'a> {
    store: &'a Store,
    records: &'a [SourceRecord],
    changes: Vec<FromRecord<MessageStatusChange>>,
    waits: Vec<FromRecord<MessageWait>>,
    inbound: Vec<Inbound>,
    set_aside: Vec<SetAside>,
    stop: watch::Receiver<bool>,
}

impl Applier<'_> {
    /// Decodes and validates one record; what cannot be applied is set aside.
    fn collect(&mut self, index: usize, record: &SourceRecord) {
        let envelope = match EventEnvelope::decode(&record.value) {
            Ok(envelope) => envelope,
            Err(err) => return self.set_aside(index, "undecodable", err.to_string()),
        };
        match validated(envelope) {
            Ok(Some(Valid::Change(change))) => self.changes.push((index, change)),
            Ok(Some(Valid::Wait(wait))) => self.waits.push((index, wait)),
            Ok(Some(Valid::Inbound {
                session_id,
                message_id,
                from,
                message_type,
                body,
            })) => self.inbound.push(Inbound {
                record: index,
                session_id,
                message_id,
                from,
                message_type,
                body,
            }),
            Ok(None) => {}
            Err(invalid) => self.set_aside(index, "invalid", invalid.to_string()),
        }
    }

    fn set_aside(&mut self, record: usize, label: &'static str, reason: String) {
        let source = &self.records[record];
        tracing::warn!(
            topic = %source.topic,
            partition = source.partition,
            offset = source.offset,
            reason = %reason,
            "event set aside on the dead-letter topic"
        );
        self.set_aside.push(SetAside {
            record,
            label,
            reason,
        });
    }

    async fn apply(&mut self) -> Result<(), Stopped> {
        let changes = std::mem::take(&mut self.changes);
        self.apply_in_turns(&changes, "status changes", |store, turn| {
            Box::pin(store.apply_message_statuses(turn))
        })
        .await?;
        // After the changes of the same batch: a wait recorded after its message was sent is
        // refused by the store (only PENDING messages wait).
        let waits = std::mem::take(&mut self.waits);
        self.apply_in_turns(&waits, "waiting messages", |store, turn| {
            Box::pin(store.apply_message_waits(turn))
        })
        .await?;
        self.apply_inbound().await
    }

    /// Writes `items` in turns of at most [`STATUS_CHUNK`]: on SQLite each turn holds the one
    /// write lock, and delivery's own outcomes (each session's next message waits for its
    /// previous one to be durable) wait for at most one turn rather than for a whole batch of
    /// receipts. A turn the store refuses is applied one item at a time, in order.
    async fn apply_in_turns<T: Clone>(
        &mut self,
        items: &[FromRecord<T>],
        what: &str,
        write: impl for<'t> Fn(&'t Store, &'t [T]) -> BoxFuture<'t, Result<u64, StoreError>>,
    ) -> Result<(), Stopped> {
        for chunk in items.chunks(STATUS_CHUNK) {
            let turn: Vec<T> = chunk.iter().map(|(_, item)| item.clone()).collect();
            let store = self.store;
            let refused = self
                .until_not_transient(|| write(store, &turn))
                .await?
                .err();
            let Some(err) = refused else {
                continue;
            };
            tracing::warn!(
                error = format!("{err:#}"),
                items = chunk.len(),
                "the store refused a turn of {what}; applying them one by one"
            );
            for (record, item) in chunk {
                let one = std::slice::from_ref(item);
                self.apply_alone(*record, || write(store, one)).await?;
            }
        }
        Ok(())
    }

    async fn apply_inbound(&mut self) -> Result<(), Stopped> {
        let inbound = std::mem::take(&mut self.inbound);
        let store = self.store;
        for message in &inbound {
            self.apply_alone(message.record, || store_inbound(store, message))
                .await?;
        }
        Ok(())
    }

    /// Applies one event's work alone: a transient failure is waited out, a permanent one sets
    /// the event aside, an unclassified one is tried [`UNKNOWN_TRIES`] times first.
    async fn apply_alone<T, F, Fut>(&mut self, record: usize, work: F) -> Result<(), Stopped>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut tries = 0;
        loop {
            let err = match self.until_not_transient(&work).await? {
                Ok(_) => return Ok(()),
                Err(err) => err,
            };
            tries += 1;
            let (label, retry) = match err.class() {
                FailureClass::Permanent => ("rejected", false),
                _ => ("unapplicable", tries < UNKNOWN_TRIES),
            };
            if !retry {
                self.set_aside(record, label, format!("the store refused it: {err:#}"));
                return Ok(());
            }
            self.pause(tries).await?;
        }
    }

    /// [`until_not_transient`](super::until_not_transient) with this consumer's backoff.
    async fn until_not_transient<T, F, Fut>(
        &mut self,
        work: F,
    ) -> Result<Result<T, StoreError>, Stopped>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        super::until_not_transient("applying events failed", work, backoff, &mut self.stop).await
    }

    async fn pause(&mut self, failures: u32) -> Result<(), Stopped> {
        super::pause(backoff(failures), &mut self.stop).await
    }
}

/// The wait before try `failures + 1`: [`RETRY_FIRST`] doubling to [`RETRY_MAX`].
fn backoff(failures: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(1 << failures.clamp(1, 8).saturating_sub(1))
        .min(RETRY_MAX)
}

async fn store_inbound(store: &Store, message: &Inbound) -> Result<(), StoreError> {
    let session = match store.session_by_id(&message.session_id).await {
        Ok(session) => session,
        // A message for a session deleted meanwhile: nothing to keep it for.
        Err(StoreError::NotFound) => return Ok(()),
        Err(err) => return Err(err),
    };
    store
        .insert_inbound_message(
            &session.user_id,
            &session.id,
            &message.message_id,
            &message.from,
            &message.message_type,
            &message.body,
        )
        .await?;
    Ok(())
}

/// Appends the set-aside records to the events DLQ (retried while the log refuses: they must
/// be there before the batch is committed), then counts them.
async fn set_aside_all(
    context: &AppContext,
    topic: &str,
    records: &[SourceRecord],
    set_aside: Vec<SetAside>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), Stopped> {
    let letters: Vec<(String, Vec<u8>)> = set_aside
        .iter()
        .map(|aside| {
            let record = &records[aside.record];
            (
                record.key.clone(),
                super::dead_letter_value_raw(record, &aside.reason),
            )
        })
        .collect();
    let mut failures = 0;
    while let Err(err) = context
        .pipeline
        .producer()
        .append_batch(topic, letters.clone())
        .await
    {
        failures += 1;
        tracing::error!(error = %err, failures, "appending to the events dead-letter topic failed; retrying");
        super::pause(backoff(failures), stop).await?;
    }
    for aside in &set_aside {
        context.metrics.dead_lettered(CONSUMER, aside.label);
    }
    Ok(())
}

/// What a valid event asks of the store.
#[derive(Debug)]
enum Valid {
    Change(MessageStatusChange),
    Wait(MessageWait),
    Inbound {
        session_id: String,
        message_id: String,
        from: String,
        message_type: String,
        body: serde_json::Value,
    },
}

/// Checks what the consumer interprets in an event: the session id, the message id and the
/// status. `Ok(None)`: nothing to apply here (session events are applied by the fleet).
/// Free text (reasons, senders, bodies) is the store's to refuse.
fn validated(envelope: EventEnvelope) -> Result<Option<Valid>, InvalidInput> {
    SessionId::parse("sessionId", &envelope.session_id)?;
    match envelope.event {
        WorkerEvent::MessageStatus {
            message_id,
            status,
            error_message,
            whatsapp_message_id,
            attempts,
            ..
        } => {
            MESSAGE_ID_RULE.check("messageId", &message_id)?;
            if let Some(id) = &whatsapp_message_id {
                MESSAGE_ID_RULE.check("whatsappMessageId", id)?;
            }
            let status = status
                .to_ascii_uppercase()
                .parse::<MessageStatus>()
                .map_err(|problem| InvalidInput::new("status", problem))?;
            Ok(Some(Valid::Change(MessageStatusChange {
                session_id: envelope.session_id,
                message_id,
                status,
                error_message,
                worker_message_id: whatsapp_message_id,
                attempts: attempts.map(i64::from),
                at: envelope.received_at_ms,
            })))
        }
        WorkerEvent::MessageWaiting {
            message_id,
            reason,
            detail,
            attempts,
            next_attempt_at,
        } => {
            MESSAGE_ID_RULE.check("messageId", &message_id)?;
            let reason = reason
                .parse::<WaitingReason>()
                .map_err(|problem| InvalidInput::new("reason", problem))?;
            Ok(Some(Valid::Wait(MessageWait {
                session_id: envelope.session_id,
                message_id,
                reason,
                detail,
                attempts: i64::from(attempts),
                next_attempt_at,
            })))
        }
        WorkerEvent::MessageReceived {
            message_id,
            from,
            message_type,
            body,
        } => {
            MESSAGE_ID_RULE.check("messageId", &message_id)?;
            Ok(Some(Valid::Inbound {
                session_id: envelope.session_id,
                message_id,
                from,
                message_type,
                body,
            }))
        }
        WorkerEvent::SessionStatus { .. } => Ok(None),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn status_event(session: &str, message_id: &str, status: &str) -> EventEnvelope {
        EventEnvelope::new(
            session,
            1,
            WorkerEvent::MessageStatus {
                message_id: message_id.to_owned(),
                status: status.to_owned(),
                error_message: None,
                delivered_at: None,
                read_at: None,
                whatsapp_message_id: None,
                attempts: None,
            },
        )
    }

    fn waiting_event(message_id: &str, reason: &str) -> EventEnvelope {
        EventEnvelope::new(
            "sess-1",
            1,
            WorkerEvent::MessageWaiting {
                message_id: message_id.to_owned(),
                reason: reason.to_owned(),
                detail: Some("the worker is unreachable".to_owned()),
                attempts: 2,
                next_attempt_at: 5_000,
            },
        )
    }

    #[test]
    fn events_with_ids_or_statuses_the_store_cannot_take_are_invalid() {
        assert!(matches!(
            validated(status_event("sess-1", "3EB0C767D0A1", "delivered")),
            Ok(Some(Valid::Change(_)))
        ));
        assert!(matches!(
            validated(waiting_event("m1", "WORKER_DOWN")),
            Ok(Some(Valid::Wait(MessageWait {
                attempts: 2,
                reason: WaitingReason::WorkerDown,
                ..
            })))
        ));
        for (event, field) in [
            (status_event("sess-1", "poison\u{0}id", "READ"), "messageId"),
            (status_event("sess-1", "", "READ"), "messageId"),
            (
                status_event("sess-1", &"x".repeat(257), "READ"),
                "messageId",
            ),
            (status_event("sess-1", "m1", "EXPLODED"), "status"),
            (status_event("se\u{0}ss", "m1", "READ"), "sessionId"),
            (waiting_event("m1", "BORED"), "reason"),
            (waiting_event("poison\u{0}id", "PACED"), "messageId"),
        ] {
            let refused = validated(event).unwrap_err();
            assert_eq!(refused.field, field);
        }
    }
}
