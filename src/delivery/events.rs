//! The events consumer: applies `wa.events.v1` (delivery outcomes and the workers' receipts) to
//! the `messages` table, a whole fetched batch per transaction, then commits the batch's
//! positions. Events of one session share a partition and are applied in log order; a status
//! never moves backwards (see `Store::apply_message_statuses`), so a replay after a crash is
//! harmless.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use consumers::{LogSource, SourceEvent};
use producers::{EventEnvelope, WorkerEvent};
use tokio::sync::watch;

use crate::app::AppContext;
use crate::domain::MessageStatus;
use crate::store::{MessageStatusChange, Store};

/// Events applied per transaction at most.
const BATCH: usize = 2_000;
/// Status changes written in one transaction at most (see [`apply`]).
const STATUS_CHUNK: usize = 128;

/// Runs until `stop` flips.
pub async fn run_events(
    context: Arc<AppContext>,
    store: Store,
    mut source: LogSource,
    mut stop: watch::Receiver<bool>,
) {
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
        let mut changes = Vec::with_capacity(records.len());
        let mut inbound = Vec::new();
        for record in &records {
            let slot = positions
                .entry((record.topic.clone(), record.partition))
                .or_insert(record.offset + 1);
            *slot = (*slot).max(record.offset + 1);
            match EventEnvelope::decode(&record.value) {
                Ok(envelope) => collect(envelope, &mut changes, &mut inbound),
                Err(err) => tracing::error!(error = %err, partition = record.partition,
                    offset = record.offset, "undecodable event; skipped"),
            }
        }
        // Apply until it works: committing past events that were not applied would lose them.
        loop {
            match apply(&store, &changes, &inbound).await {
                Ok(()) => break,
                Err(err) => {
                    tracing::error!(
                        error = format!("{err:#}"),
                        "applying events failed; retrying"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        }
        failures = 0;
        context
            .metrics
            .events_applied_total
            .inc_by(records.len() as u64);
        let positions: Vec<(String, i32, i64)> = positions
            .into_iter()
            .map(|((topic, partition), offset)| (topic, partition, offset))
            .collect();
        if let Err(err) = source.commit(&positions).await {
            tracing::warn!(error = %err, "committing event positions failed; they will be re-applied");
        }
    }
}

/// An inbound message waiting to be stored.
struct Inbound {
    session_id: String,
    message_id: String,
    from: String,
    message_type: String,
    body: serde_json::Value,
}

fn collect(
    envelope: EventEnvelope,
    changes: &mut Vec<MessageStatusChange>,
    inbound: &mut Vec<Inbound>,
) {
    match envelope.event {
        WorkerEvent::MessageStatus {
            message_id,
            status,
            error_message,
            whatsapp_message_id,
            attempts,
            ..
        } => {
            let Ok(status) = status.to_ascii_uppercase().parse::<MessageStatus>() else {
                tracing::warn!(status, "event with an unknown message status; skipped");
                return;
            };
            changes.push(MessageStatusChange {
                session_id: envelope.session_id,
                message_id,
                status,
                error_message,
                worker_message_id: whatsapp_message_id,
                attempts: attempts.map(i64::from),
                at: envelope.received_at_ms,
            });
        }
        WorkerEvent::MessageReceived {
            message_id,
            from,
            message_type,
            body,
        } => inbound.push(Inbound {
            session_id: envelope.session_id,
            message_id,
            from,
            message_type,
            body,
        }),
        WorkerEvent::SessionStatus { .. } => {}
    }
}

async fn apply(
    store: &Store,
    changes: &[MessageStatusChange],
    inbound: &[Inbound],
) -> anyhow::Result<()> {
    // In turns of at most STATUS_CHUNK changes: on SQLite each turn holds the one write lock,
    // and delivery's own outcomes (each session's next message waits for its previous one to
    // be durable) wait for at most one turn rather than for a whole batch of receipts.
    for chunk in changes.chunks(STATUS_CHUNK) {
        store.apply_message_statuses(chunk).await?;
    }
    for message in inbound {
        let session = match store.session_by_id(&message.session_id).await {
            Ok(session) => session,
            Err(crate::store::StoreError::NotFound) => continue,
            Err(err) => return Err(err.into()),
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
    }
    Ok(())
}
