//! Where consumers read from: one interface over the embedded log and Kafka.
//!
//! A consume loop calls [`LogSource::next`] for the next [`SourceEvent`]: records, or a change
//! of the partitions this consumer owns (a Kafka rebalance; the embedded log assigns every
//! partition once, at start). When its work on records is done it calls
//! [`LogSource::commit`] with the next offsets to read, computed by
//! [`ConsumerOffsets`](crate::ConsumerOffsets), so a restart resumes after the last fully
//! handled record of each partition and never before it.

use std::collections::HashMap;
use std::time::Duration;

use producers::embedded::{EmbeddedLog, LogError};
use producers::topics::TopicCatalog;
use tokio::sync::watch;

use crate::kafka::KafkaSource;

/// One record read from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRecord {
    /// The topic's wire name.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// The record key (the session id for the gateway's topics); empty when it had none.
    pub key: String,
    /// The record value (an encoded envelope).
    pub value: Vec<u8>,
    /// When the log stored it, in Unix milliseconds.
    pub timestamp_ms: i64,
}

/// What [`LogSource::next`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    /// Records in offset order per partition; empty when the wait ran out with nothing new.
    Records(Vec<SourceRecord>),
    /// These `(topic, partition)`s are now this consumer's; reading starts at their committed
    /// positions.
    Assigned(Vec<(String, i32)>),
    /// These `(topic, partition)`s are no longer this consumer's: drop their queued and
    /// in-flight work without committing it (another consumer re-reads it from the committed
    /// position).
    Revoked(Vec<(String, i32)>),
}

/// Why reading or committing failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The embedded log failed.
    #[error(transparent)]
    Embedded(#[from] LogError),
    /// The topic is not in the catalog.
    #[error("topic `{0}` is not defined")]
    UnknownTopic(String),
    /// Kafka failed (connection, group coordination, commit).
    #[error("kafka: {0}")]
    Kafka(String),
}

/// A consumer-group reader of some topics of the log.
#[derive(Debug)]
pub enum LogSource {
    /// The embedded log: this process is the group's only member.
    Embedded(EmbeddedSource),
    /// Kafka: one member of a consumer group; partitions come and go with rebalances.
    Kafka(KafkaSource),
}

impl LogSource {
    /// Waits up to `wait` for the next event; at most `max_records` records are returned at
    /// once.
    pub async fn next(
        &mut self,
        max_records: usize,
        wait: Duration,
    ) -> Result<SourceEvent, SourceError> {
        match self {
            Self::Embedded(source) => source.next(max_records, wait).await,
            Self::Kafka(source) => source.next(max_records, wait).await,
        }
    }

    /// Commits the group's positions `(topic, partition, next offset to read)`. Positions
    /// never move backwards.
    pub async fn commit(&mut self, positions: &[(String, i32, i64)]) -> Result<(), SourceError> {
        match self {
            Self::Embedded(source) => source.commit(positions).await,
            Self::Kafka(source) => source.commit(positions).await,
        }
    }
}

/// Reads every partition of some topics of an [`EmbeddedLog`] for one consumer group.
#[derive(Debug)]
pub struct EmbeddedSource {
    log: EmbeddedLog,
    group: String,
    /// `(wire name, partition count)` of each subscribed topic.
    topics: Vec<(String, i32)>,
    /// Next offset to fetch per `(topic index, partition)`; filled on the first call.
    positions: HashMap<(usize, i32), i64>,
    /// One change counter per subscribed topic, so an idle consumer sleeps instead of polling.
    changes: Vec<watch::Receiver<u64>>,
    /// Whether the one-time [`SourceEvent::Assigned`] was handed out.
    assigned: bool,
}

impl EmbeddedSource {
    /// A reader of `topics` (logical or wire names) for `group`.
    pub fn new(
        log: EmbeddedLog,
        catalog: &TopicCatalog,
        group: impl Into<String>,
        topics: &[&str],
    ) -> Result<Self, SourceError> {
        let mut resolved = Vec::with_capacity(topics.len());
        let mut changes = Vec::with_capacity(topics.len());
        for topic in topics {
            let spec = catalog
                .get(topic)
                .or_else(|| catalog.by_wire_name(topic))
                .ok_or_else(|| SourceError::UnknownTopic((*topic).to_owned()))?;
            changes.push(log.subscribe(&spec.name));
            resolved.push((spec.name.clone(), spec.partitions));
        }
        Ok(Self {
            log,
            group: group.into(),
            topics: resolved,
            positions: HashMap::new(),
            changes,
            assigned: false,
        })
    }

    async fn next(
        &mut self,
        max_records: usize,
        wait: Duration,
    ) -> Result<SourceEvent, SourceError> {
        if !self.assigned {
            let mut assigned = Vec::new();
            for (index, (topic, partitions)) in self.topics.iter().enumerate() {
                for partition in 0..*partitions {
                    let position = self.log.committed(&self.group, topic, partition).await?;
                    self.positions.insert((index, partition), position);
                    assigned.push((topic.clone(), partition));
                }
            }
            self.assigned = true;
            return Ok(SourceEvent::Assigned(assigned));
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Mark every counter seen before reading, so a batch committed during the reads
            // wakes the next wait instead of being missed.
            for changes in &mut self.changes {
                changes.borrow_and_update();
            }
            let records = self.fetch_all(max_records).await?;
            if !records.is_empty() {
                return Ok(SourceEvent::Records(records));
            }
            let woken = tokio::time::timeout_at(deadline, wait_any(&mut self.changes)).await;
            if woken.is_err() {
                return Ok(SourceEvent::Records(Vec::new()));
            }
        }
    }

    /// Reads up to `max_records` new records, spread over the partitions so one busy
    /// partition does not starve the others: one statement per topic that has records past
    /// this reader's positions, none for an idle topic.
    async fn fetch_all(&mut self, max_records: usize) -> Result<Vec<SourceRecord>, SourceError> {
        let partition_count: usize = self
            .topics
            .iter()
            .map(|(_, partitions)| usize::try_from(*partitions).unwrap_or(1))
            .sum();
        let share = (max_records / partition_count.max(1)).max(1);
        let mut records = Vec::new();
        for (index, (topic, partitions)) in self.topics.iter().enumerate() {
            let mut from_offsets = Vec::with_capacity(usize::try_from(*partitions).unwrap_or(0));
            let mut behind = false;
            for partition in 0..*partitions {
                // Every partition has a position once assigned; one without never reads.
                let position = self
                    .positions
                    .get(&(index, partition))
                    .copied()
                    .unwrap_or(i64::MAX);
                behind |= position < self.log.end_offset(topic, partition)?;
                from_offsets.push(position);
            }
            if !behind {
                continue;
            }
            let fetched = self
                .log
                .fetch_partitions(topic, &from_offsets, share)
                .await?;
            for record in fetched {
                if let Some(position) = self.positions.get_mut(&(index, record.partition)) {
                    *position = (*position).max(record.offset + 1);
                }
                records.push(SourceRecord {
                    topic: record.topic,
                    partition: record.partition,
                    offset: record.offset,
                    key: record.key,
                    value: record.value,
                    timestamp_ms: record.appended_at_ms,
                });
            }
        }
        Ok(records)
    }

    async fn commit(&mut self, positions: &[(String, i32, i64)]) -> Result<(), SourceError> {
        Ok(self.log.commit(&self.group, positions).await?)
    }
}

/// Resolves when any of the counters changes (or all of their senders are gone, which only
/// happens when the log is dropped: then it never resolves and the caller's timeout ends it).
async fn wait_any(changes: &mut [watch::Receiver<u64>]) {
    let waits = changes
        .iter_mut()
        .map(|receiver| Box::pin(receiver.changed()));
    match futures_select_all(waits).await {
        Ok(()) => {}
        Err(_) => std::future::pending::<()>().await,
    }
}

/// `select_all` over the change futures without pulling in `futures`: polls each in turn.
async fn futures_select_all<F, T>(futures: impl Iterator<Item = F>) -> T
where
    F: std::future::Future<Output = T> + Unpin,
{
    let mut futures: Vec<F> = futures.collect();
    if futures.is_empty() {
        return std::future::pending().await;
    }
    std::future::poll_fn(move |context| {
        for future in &mut futures {
            if let std::task::Poll::Ready(output) = std::pin::Pin::new(future).poll(context) {
                return std::task::Poll::Ready(output);
            }
        }
        std::task::Poll::Pending
    })
    .await
}
