//! The Kafka reader of the log: a consumer-group member on rdkafka's `StreamConsumer`.
//!
//! [`KafkaSource`] is what [`LogSource::Kafka`](crate::LogSource::Kafka) wraps. It joins a
//! consumer group, reports partition ownership changes as [`SourceEvent::Assigned`] /
//! [`SourceEvent::Revoked`] (from the rebalance callbacks of its [`ConsumerContext`]),
//! hands out records in batches, and commits only the positions the consume loop passes
//! in: auto-commit and the automatic offset store are off, so a record is never marked
//! consumed before the loop has fully handled it (at-least-once).
//!
//! Ordering of what [`KafkaSource::next`] returns matches what librdkafka did: a rebalance
//! notification is returned before any record fetched after it, so the loop never sees a
//! record of a partition it has not been told it owns, and records returned before a
//! `Revoked` are exactly those it should drop without committing.
//!
//! Latency matters more than throughput here (the send path's end-to-end p99 target is
//! 50 ms), hence the short `fetch.wait.max.ms` and returning a batch as soon as the first
//! record is there instead of waiting for it to fill.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::source::{SourceError, SourceEvent, SourceRecord};

/// librdkafka's `client.id` of the gateway's consumers.
const CLIENT_ID: &str = "wa-gateway-consumer";
/// How long the broker may hold a fetch with nothing new: short, for latency.
const FETCH_WAIT_MAX_MS: &str = "10";
/// A member silent for this long is dropped from the group and its partitions reassigned.
const SESSION_TIMEOUT_MS: &str = "10000";
/// How often a member tells the coordinator it is alive (well under the session timeout).
const HEARTBEAT_INTERVAL_MS: &str = "1000";
/// Incremental rebalancing: a joining or leaving member only moves the partitions that
/// must move, the others keep flowing.
const ASSIGNMENT_STRATEGY: &str = "cooperative-sticky";

/// Receives librdkafka's rebalance callbacks (on the thread polling the consumer, i.e.
/// inside [`KafkaSource::next`]) and forwards them as [`SourceEvent`]s.
struct RebalanceContext {
    events: mpsc::UnboundedSender<SourceEvent>,
}

impl ClientContext for RebalanceContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        // Through `tracing`, like the rest of the gateway (and the producer's context).
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility, "{message}");
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility, "{message}");
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    fn error(&self, error: RdKafkaError, reason: &str) {
        // Client-level errors (broker down, transport failures) are retried by librdkafka
        // itself; they are worth seeing in the log but not fatal for the loop.
        tracing::warn!(target: "librdkafka", %error, reason, "kafka consumer error");
    }
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(partitions) => {
                let partitions = topic_partitions(partitions);
                tracing::info!(?partitions, "kafka partitions revoked");
                if !partitions.is_empty() {
                    // The receiver only goes away with the source, when nobody cares.
                    let _ = self.events.send(SourceEvent::Revoked(partitions));
                }
            }
            Rebalance::Error(error) => tracing::warn!(%error, "kafka rebalance failed"),
            Rebalance::Assign(_) => {}
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            let partitions = topic_partitions(partitions);
            tracing::info!(?partitions, "kafka partitions assigned");
            // With cooperative rebalancing an assignment may add nothing; say nothing then.
            if !partitions.is_empty() {
                let _ = self.events.send(SourceEvent::Assigned(partitions));
            }
        }
    }
}

/// The `(topic, partition)`s of a partition list.
fn topic_partitions(list: &TopicPartitionList) -> Vec<(String, i32)> {
    list.elements()
        .iter()
        .map(|element| (element.topic().to_owned(), element.partition()))
        .collect()
}

/// A consumer-group reader of some Kafka topics; see the [module docs](self).
pub struct KafkaSource {
    /// `None` only while dropping (the consumer is then closed on the blocking pool).
    consumer: Option<Arc<StreamConsumer<RebalanceContext>>>,
    /// Rebalance notifications, in the order librdkafka raised them.
    events: mpsc::UnboundedReceiver<SourceEvent>,
    /// Records fetched after a rebalance notification that had not been returned yet; they
    /// go out after it.
    pending: VecDeque<SourceRecord>,
    /// A fatal error met while already holding records; returned by the next call.
    failure: Option<String>,
    /// The last position this member committed per `(topic, partition)` it owns, so a
    /// stale commit never moves the group's position backwards.
    committed: HashMap<(String, i32), i64>,
    brokers: String,
    group: String,
    topics: Vec<String>,
}

impl fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSource")
            .field("brokers", &self.brokers)
            .field("group", &self.group)
            .field("topics", &self.topics)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl KafkaSource {
    /// Joins consumer group `group` on the cluster at `brokers` as a reader of `topics`
    /// (wire names). Reading starts at the group's committed positions, or at the earliest
    /// record where the group has none. Must be called inside a Tokio runtime; the
    /// connection and group join happen in the background, reported by
    /// [`next`](Self::next) as [`SourceEvent::Assigned`].
    ///
    /// With `instance_id` the reader is a static member (`group.instance.id`): a process that
    /// was killed and restarted under the same id takes its own place in the group back at
    /// once. A dynamic member joining while its dead predecessor is still in the group waits
    /// out the session timeout at best; on a coordinator that made the dead member the leader
    /// it can be handed an empty assignment for good (seen on tansu: a `kill -9` and a
    /// restart 2 s later stranded everything the restarted gateway accepted).
    pub fn subscribe(
        brokers: &str,
        group: &str,
        topics: &[&str],
        instance_id: Option<&str>,
    ) -> Result<Self, SourceError> {
        if topics.is_empty() {
            return Err(SourceError::Kafka(
                "a kafka consumer needs at least one topic".to_owned(),
            ));
        }
        // rdkafka spawns a helper task on the current runtime and would panic without one.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(SourceError::Kafka(
                "a kafka consumer must be created inside a Tokio runtime".to_owned(),
            ));
        }
        let (sender, events) = mpsc::unbounded_channel();
        let mut config = ClientConfig::new();
        if let Some(instance_id) = instance_id {
            config.set("group.instance.id", instance_id);
        }
        let consumer: StreamConsumer<RebalanceContext> = config
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("client.id", CLIENT_ID)
            // Only the loop decides what is consumed: it commits explicitly, after handling.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS)
            .set("session.timeout.ms", SESSION_TIMEOUT_MS)
            .set("heartbeat.interval.ms", HEARTBEAT_INTERVAL_MS)
            .set("partition.assignment.strategy", ASSIGNMENT_STRATEGY)
            // Topics come from the catalog; a subscription must not create them.
            .set("allow.auto.create.topics", "false")
            .create_with_context(RebalanceContext { events: sender })
            .map_err(|error| SourceError::Kafka(format!("creating the consumer: {error}")))?;
        consumer
            .subscribe(topics)
            .map_err(|error| SourceError::Kafka(format!("subscribing to {topics:?}: {error}")))?;
        Ok(Self {
            consumer: Some(Arc::new(consumer)),
            events,
            pending: VecDeque::new(),
            failure: None,
            committed: HashMap::new(),
            brokers: brokers.to_owned(),
            group: group.to_owned(),
            topics: topics.iter().map(|topic| (*topic).to_owned()).collect(),
        })
    }

    /// The consumer, unless the source is being dropped.
    fn consumer(&self) -> Result<Arc<StreamConsumer<RebalanceContext>>, SourceError> {
        self.consumer
            .clone()
            .ok_or_else(|| SourceError::Kafka("the kafka consumer is closed".to_owned()))
    }

    /// The next event: a pending rebalance notification if there is one, else records.
    /// Waits up to `wait` for a first record, then takes what else is already fetched (not
    /// waiting any longer), up to `max_records`; `Records` is empty when the wait ran out.
    pub async fn next(
        &mut self,
        max_records: usize,
        wait: Duration,
    ) -> Result<SourceEvent, SourceError> {
        if let Some(failure) = self.failure.take() {
            return Err(SourceError::Kafka(failure));
        }
        if let Ok(event) = self.events.try_recv() {
            return Ok(self.note(event));
        }
        let max_records = max_records.max(1);
        if !self.pending.is_empty() {
            let take = max_records.min(self.pending.len());
            return Ok(SourceEvent::Records(self.pending.drain(..take).collect()));
        }
        let consumer = self.consumer()?;
        let deadline = tokio::time::Instant::now() + wait;
        let first = loop {
            tokio::select! {
                // Notifications first: they were raised before anything fetched later.
                biased;
                event = self.events.recv() => match event {
                    Some(event) => return Ok(self.note(event)),
                    // The sender lives in the consumer, which this source holds.
                    None => {
                        return Err(SourceError::Kafka("the kafka consumer is gone".to_owned()));
                    }
                },
                // `recv` is cancellation safe: losing the race to the timer loses no record.
                message = consumer.recv() => match message {
                    Ok(message) => break to_record(&message),
                    Err(error) => consumption_error(error)?,
                },
                () = tokio::time::sleep_until(deadline) => {
                    return Ok(SourceEvent::Records(Vec::new()));
                }
            }
        };
        if let Ok(event) = self.events.try_recv() {
            // Fetched after a rebalance callback ran: it must follow that notification.
            self.pending.push_back(first);
            return Ok(self.note(event));
        }
        let mut records = vec![first];
        while records.len() < max_records {
            // One poll without waiting: what librdkafka already fetched, nothing more.
            let Some(message) = consumer.recv().now_or_never() else {
                break;
            };
            match message {
                Ok(message) => {
                    let record = to_record(&message);
                    if self.events.is_empty() {
                        records.push(record);
                    } else {
                        self.pending.push_back(record);
                        break;
                    }
                }
                Err(error) => {
                    // Hand out what was read; a fatal error is reported by the next call.
                    if let Err(SourceError::Kafka(failure)) = consumption_error(error) {
                        self.failure = Some(failure);
                    }
                    break;
                }
            }
        }
        Ok(SourceEvent::Records(records))
    }

    /// Keeps the commit bookkeeping in step with ownership changes handed out.
    fn note(&mut self, event: SourceEvent) -> SourceEvent {
        if let SourceEvent::Assigned(partitions) | SourceEvent::Revoked(partitions) = &event {
            for (topic, partition) in partitions {
                self.committed.remove(&(topic.clone(), *partition));
            }
        }
        event
    }

    /// Commits the group's positions `(topic, partition, next offset to read)` and waits for
    /// the coordinator's answer. Positions of partitions this member no longer owns, and
    /// positions behind what it already committed, are skipped; a commit refused because
    /// the group is rebalancing is logged and dropped (the partitions' new owner re-reads
    /// from the last committed position, which is what at-least-once allows).
    pub async fn commit(&mut self, positions: &[(String, i32, i64)]) -> Result<(), SourceError> {
        let wanted: Vec<(String, i32, i64)> = positions
            .iter()
            .filter(|(topic, partition, offset)| {
                self.committed
                    .get(&(topic.clone(), *partition))
                    .is_none_or(|committed| offset > committed)
            })
            .cloned()
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let consumer = self.consumer()?;
        // A synchronous commit blocks its thread for a round trip to the coordinator.
        let done = tokio::task::spawn_blocking(move || commit_owned(&consumer, wanted))
            .await
            .map_err(|error| SourceError::Kafka(format!("commit task failed: {error}")))??;
        for (topic, partition, offset) in done {
            self.committed.insert((topic, partition), offset);
        }
        Ok(())
    }

    /// Leaves the group cleanly and waits until it is done, so the group's other members
    /// take over this member's partitions at once rather than after the session timeout.
    /// Dropping the source does the same without waiting.
    pub async fn close(mut self) {
        if let Some(consumer) = self.consumer.take() {
            // Closing polls the consumer until it left the group: blocking.
            if let Err(error) = tokio::task::spawn_blocking(move || drop(consumer)).await {
                tracing::warn!(%error, "closing the kafka consumer failed");
            }
        }
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        // Closing a consumer blocks until it left the group; keep that off runtime
        // workers when there is a runtime (and just block when there is none).
        if let Some(consumer) = self.consumer.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            drop(runtime.spawn_blocking(move || drop(consumer)));
        }
    }
}

/// Commits those of `positions` whose partition this member owns; returns what was
/// committed (empty when nothing was, including a commit lost to a rebalance).
fn commit_owned(
    consumer: &StreamConsumer<RebalanceContext>,
    positions: Vec<(String, i32, i64)>,
) -> Result<Vec<(String, i32, i64)>, SourceError> {
    let assignment = consumer
        .assignment()
        .map_err(|error| SourceError::Kafka(format!("reading the assignment: {error}")))?;
    let mut list = TopicPartitionList::new();
    let mut owned = Vec::with_capacity(positions.len());
    for (topic, partition, offset) in positions {
        // rdkafka panics on a topic name with a NUL byte; no assigned topic has one.
        if topic.contains('\0') || assignment.find_partition(&topic, partition).is_none() {
            tracing::debug!(
                %topic,
                partition,
                offset,
                "not committing a partition no longer owned"
            );
            continue;
        }
        list.add_partition_offset(&topic, partition, Offset::Offset(offset))
            .map_err(|error| {
                SourceError::Kafka(format!(
                    "commit position {topic}/{partition}@{offset}: {error}"
                ))
            })?;
        owned.push((topic, partition, offset));
    }
    if owned.is_empty() {
        return Ok(owned);
    }
    match consumer.commit(&list, CommitMode::Sync) {
        Ok(()) => Ok(owned),
        Err(RdKafkaError::ConsumerCommit(code)) if lost_to_rebalance(code) => {
            tracing::warn!(
                %code,
                positions = ?owned,
                "kafka commit dropped: the group is rebalancing"
            );
            Ok(Vec::new())
        }
        Err(error) => Err(SourceError::Kafka(format!("commit failed: {error}"))),
    }
}

/// Commit errors that mean "you no longer (or not yet) own this", not "Kafka is broken".
fn lost_to_rebalance(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::RebalanceInProgress
            | RDKafkaErrorCode::IllegalGeneration
            | RDKafkaErrorCode::UnknownMemberId
            | RDKafkaErrorCode::FencedInstanceId
            | RDKafkaErrorCode::AssignmentLost
            | RDKafkaErrorCode::NoOffset
    )
}

/// What to do with an error polled from the consumer: fatal ones end the consumer
/// (`Err`); the rest (a subscribed topic not there yet, a partition briefly without a
/// leader) are retried by librdkafka and only logged.
fn consumption_error(error: RdKafkaError) -> Result<(), SourceError> {
    match error {
        RdKafkaError::MessageConsumptionFatal(code) => Err(SourceError::Kafka(format!(
            "the kafka consumer failed fatally: {code}"
        ))),
        error => {
            tracing::warn!(%error, "kafka consumer reported an error");
            Ok(())
        }
    }
}

/// Copies a fetched message into a [`SourceRecord`].
fn to_record(message: &BorrowedMessage<'_>) -> SourceRecord {
    SourceRecord {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        key: message
            .key()
            .map(|key| String::from_utf8_lossy(key).into_owned())
            .unwrap_or_default(),
        value: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        // The broker's (or producer's) timestamp; a record without one counts as just
        // received, so latency measured from it is not absurd.
        timestamp_ms: message.timestamp().to_millis().unwrap_or_else(now_ms),
    }
}

/// The current time in Unix milliseconds.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    use producers::kafka::{KafkaProducer, create_topics};
    use producers::partitioner::partition_for_key;
    use producers::topics::{OUTBOUND_TOPIC, TopicCatalog, TopicSpec};

    use super::*;

    fn brokers() -> String {
        producers::kafka::test_brokers()
    }

    /// A name no other test (or earlier run) uses.
    fn unique(what: &str) -> String {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        format!(
            "{what}{}-{nanos}-{}-",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Creates the built-in catalog's topics under a fresh prefix; returns the outbound
    /// topic's spec.
    async fn fresh_outbound(brokers: &str) -> TopicSpec {
        let catalog = TopicCatalog::builtin()
            .unwrap()
            .with_prefix(&unique("c"))
            .unwrap();
        create_topics(brokers, &catalog).await.unwrap();
        catalog.require(OUTBOUND_TOPIC).unwrap().clone()
    }

    /// Produces `count` records spread over 16 sessions; values are `key:index`.
    async fn produce(brokers: &str, spec: &TopicSpec, from: usize, count: usize) {
        let catalog = TopicCatalog::builtin()
            .unwrap()
            .with_prefix(spec.name.strip_suffix(OUTBOUND_TOPIC).unwrap())
            .unwrap();
        let producer = KafkaProducer::new(brokers, &catalog).unwrap();
        let records = (from..from + count)
            .map(|index| {
                let key = format!("session-{}", index % 16);
                let value = format!("{key}:{index}").into_bytes();
                (key, value)
            })
            .collect();
        producer.append_batch(&spec.name, records).await.unwrap();
        producer.close().await;
    }

    /// Calls `next` until `count` records arrived (asserting the records only come from
    /// partitions announced as assigned); returns them and the assignment.
    async fn read(
        source: &mut KafkaSource,
        owned: &mut BTreeSet<(String, i32)>,
        count: usize,
    ) -> Vec<SourceRecord> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut records = Vec::new();
        while records.len() < count {
            assert!(
                Instant::now() < deadline,
                "only {} of {count} records arrived",
                records.len()
            );
            match source.next(100, Duration::from_millis(200)).await.unwrap() {
                SourceEvent::Assigned(partitions) => owned.extend(partitions),
                SourceEvent::Revoked(partitions) => {
                    for partition in partitions {
                        owned.remove(&partition);
                    }
                }
                SourceEvent::Records(batch) => {
                    assert!(batch.len() <= 100);
                    for record in batch {
                        assert!(
                            owned.contains(&(record.topic.clone(), record.partition)),
                            "record of an unannounced partition: {record:?}"
                        );
                        records.push(record);
                    }
                }
            }
        }
        records
    }

    #[tokio::test]
    async fn reads_in_order_and_resumes_from_the_committed_position() {
        let brokers = brokers();
        let spec = fresh_outbound(&brokers).await;
        produce(&brokers, &spec, 0, 400).await;
        let group = unique("g");

        let mut first =
            KafkaSource::subscribe(&brokers, &group, &[spec.name.as_str()], None).unwrap();
        let mut owned = BTreeSet::new();
        let records = read(&mut first, &mut owned, 400).await;
        // A lone member owns every partition.
        assert_eq!(owned.len(), 12);

        // Keys sit on their murmur2 partition, each key's records in production order.
        let mut last_index: BTreeMap<String, usize> = BTreeMap::new();
        let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        for record in &records {
            assert_eq!(record.topic, spec.name);
            assert_eq!(
                record.partition,
                partition_for_key(record.key.as_bytes(), spec.partitions)
            );
            let value = String::from_utf8(record.value.clone()).unwrap();
            let (key, index) = value.split_once(':').unwrap();
            assert_eq!(key, record.key);
            let index: usize = index.parse().unwrap();
            if let Some(previous) = last_index.insert(record.key.clone(), index) {
                assert!(previous < index, "{key}: {index} after {previous}");
            }
            assert!(record.timestamp_ms > 0);
            by_partition
                .entry(record.partition)
                .or_default()
                .push(record.offset);
        }
        assert_eq!(last_index.len(), 16);

        // Commit half of each partition (the next offset to read), and one position of a
        // partition this member does not own, which is skipped rather than failing.
        let committed: BTreeMap<i32, i64> = by_partition
            .iter()
            .map(|(partition, offsets)| (*partition, offsets[offsets.len() / 2]))
            .collect();
        let mut positions: Vec<(String, i32, i64)> = committed
            .iter()
            .map(|(partition, offset)| (spec.name.clone(), *partition, *offset))
            .collect();
        positions.push(("not-a-subscribed-topic".to_owned(), 0, 5));
        first.commit(&positions).await.unwrap();
        // Going backwards is ignored.
        let backwards: Vec<(String, i32, i64)> = committed
            .keys()
            .map(|partition| (spec.name.clone(), *partition, 0))
            .collect();
        first.commit(&backwards).await.unwrap();
        first.close().await;

        // More records arrive while nobody reads.
        produce(&brokers, &spec, 400, 100).await;

        let mut second =
            KafkaSource::subscribe(&brokers, &group, &[spec.name.as_str()], None).unwrap();
        let expected: usize = by_partition
            .iter()
            .map(|(partition, offsets)| {
                offsets
                    .iter()
                    .filter(|offset| **offset >= committed[partition])
                    .count()
            })
            .sum::<usize>()
            + 100;
        let mut owned = BTreeSet::new();
        let resumed = read(&mut second, &mut owned, expected).await;
        let mut seen = BTreeSet::new();
        for record in &resumed {
            let start = committed.get(&record.partition).copied().unwrap_or(0);
            assert!(
                record.offset >= start,
                "re-read {}@{} before the committed {start}",
                record.partition,
                record.offset
            );
            assert!(
                seen.insert((record.partition, record.offset)),
                "{record:?} twice"
            );
        }
        // Nothing beyond what was expected shows up.
        match second.next(100, Duration::from_millis(300)).await.unwrap() {
            SourceEvent::Records(extra) => assert!(extra.is_empty(), "{extra:?}"),
            other => panic!("unexpected {other:?}"),
        }
        second.close().await;
    }

    #[tokio::test]
    async fn a_second_member_takes_over_partitions_with_events() {
        let brokers = brokers();
        let spec = fresh_outbound(&brokers).await;
        let group = unique("g");
        let topics = [spec.name.as_str()];
        let all: BTreeSet<(String, i32)> = spec
            .partition_ids()
            .map(|partition| (spec.name.clone(), partition))
            .collect();

        let mut first = KafkaSource::subscribe(&brokers, &group, &topics, None).unwrap();
        let mut first_owned = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while first_owned != all {
            assert!(
                Instant::now() < deadline,
                "first member got {first_owned:?}"
            );
            apply(&mut first, &mut first_owned).await;
        }

        let mut second = KafkaSource::subscribe(&brokers, &group, &topics, None).unwrap();
        let mut second_owned = BTreeSet::new();
        // Both members must keep polling for the rebalance to complete.
        while second_owned.is_empty()
            || first_owned
                .union(&second_owned)
                .cloned()
                .collect::<BTreeSet<_>>()
                != all
            || !first_owned.is_disjoint(&second_owned)
        {
            assert!(
                Instant::now() < deadline,
                "no clean split: first {first_owned:?}, second {second_owned:?}"
            );
            apply(&mut first, &mut first_owned).await;
            apply(&mut second, &mut second_owned).await;
        }
        assert!(!first_owned.is_empty());

        // The first member committing for partitions it lost is not an error.
        let lost: Vec<(String, i32, i64)> = second_owned
            .iter()
            .map(|(topic, partition)| (topic.clone(), *partition, 1))
            .collect();
        first.commit(&lost).await.unwrap();

        // When the second member leaves, the first gets everything back.
        second.close().await;
        while first_owned != all {
            assert!(
                Instant::now() < deadline,
                "first member got {first_owned:?} back"
            );
            apply(&mut first, &mut first_owned).await;
        }
        first.close().await;
    }

    /// One `next` call, applying ownership events to `owned`; records are not expected.
    async fn apply(source: &mut KafkaSource, owned: &mut BTreeSet<(String, i32)>) {
        match source.next(10, Duration::from_millis(100)).await.unwrap() {
            SourceEvent::Assigned(partitions) => {
                for partition in partitions {
                    assert!(
                        owned.insert(partition.clone()),
                        "{partition:?} assigned twice"
                    );
                }
            }
            SourceEvent::Revoked(partitions) => {
                for partition in partitions {
                    assert!(
                        owned.remove(&partition),
                        "{partition:?} revoked but not owned"
                    );
                }
            }
            SourceEvent::Records(records) => assert!(records.is_empty(), "{records:?}"),
        }
    }

    #[test]
    fn subscribe_needs_a_runtime_and_topics() {
        let error = KafkaSource::subscribe("127.0.0.1:1", "g", &["t"], None).unwrap_err();
        assert!(error.to_string().contains("Tokio runtime"), "{error}");
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let error = KafkaSource::subscribe("127.0.0.1:1", "g", &[], None).unwrap_err();
            assert!(error.to_string().contains("at least one topic"), "{error}");
            let source =
                KafkaSource::subscribe("127.0.0.1:1", "group-x", &["t"], Some("x-1")).unwrap();
            let debug = format!("{source:?}");
            assert!(
                debug.contains("group-x") && debug.contains("127.0.0.1:1"),
                "{debug}"
            );
        });
    }
}
