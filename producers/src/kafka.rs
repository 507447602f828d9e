//! The Kafka back end of the log: an idempotent rdkafka producer and topic administration.
//!
//! Used when `KAFKA_BROKERS` is set. [`KafkaProducer`] appends keyed records exactly like
//! the embedded log does: every record goes to the partition
//! [`partition_for_key`] picks from the [`TopicCatalog`]'s partition count (set
//! explicitly on the record, so librdkafka's partitioner never gets a say), and
//! [`KafkaProducer::append_batch`] resolves only once the brokers acknowledged every record
//! of the batch with `acks=all`. The producer is idempotent, so librdkafka's internal
//! retries neither duplicate nor reorder records of a partition: a session's records keep
//! their input order.
//!
//! [`create_topics`] creates the catalog's topics (partitions, replication factor, retention
//! and cleanup policy from `kafka/topics.toml`) and then, like [`wait_for_topics`], waits
//! until the brokers' metadata shows every topic with its catalog partition count and a
//! leader for each partition, so a producer or consumer started right after does not race
//! topic creation. A topic that exists with a different partition count is an error:
//! keys would land on other partitions than the embedded log and the consumers expect.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;

use crate::partitioner::{RDKAFKA_PARTITIONER, partition_for_key};
use crate::topics::{TopicCatalog, TopicSpec};

/// librdkafka's `client.id` of the gateway's producer, as shown in broker logs and metrics.
const PRODUCER_CLIENT_ID: &str = "wa-gateway-producer";
/// librdkafka's `client.id` of the short-lived admin clients.
const ADMIN_CLIENT_ID: &str = "wa-gateway-admin";
/// How long a record may wait in librdkafka (queue, retries) before its delivery fails;
/// also bounds how long [`KafkaProducer::append_batch`] waits for room in a full queue.
/// Long on purpose: records that time out make librdkafka bump the idempotent producer's
/// epoch, which a broker restarted meanwhile may not know (tansu's storage then fails every
/// request for good). During an outage new appends are refused at once instead (see
/// [`ProducerContext`]), so clients are not held for this long.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often librdkafka reports its statistics, among them each broker's connection state,
/// which is how the producer learns that a broker is reachable again.
const STATISTICS_INTERVAL: Duration = Duration::from_millis(500);
/// Records librdkafka may buffer; large, so bulk sends are not refused with `QueueFull`.
const QUEUE_MAX_MESSAGES: u32 = 1_000_000;
/// How long an enqueue that found the local queue full waits before trying again.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);
/// How long [`KafkaProducer::close`] waits for buffered records to be acknowledged.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long topic creation may take on the brokers.
const ADMIN_OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`create_topics`] waits for the new topics to show up in the metadata.
const TOPICS_VISIBLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two metadata checks of [`wait_for_topics`].
const METADATA_RETRY: Duration = Duration::from_millis(100);
/// Upper bound of one metadata request.
const METADATA_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Reports librdkafka's log lines and client errors through `tracing`, like the rest of
/// the gateway. Client errors (a broker unreachable, a connection reset) are retried by
/// librdkafka and surface as failed appends if they last, so they are warnings here rather
/// than the `error` level rdkafka's default context uses.
#[derive(Clone, Copy, Debug, Default)]
struct TracingContext;

impl ClientContext for TracingContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
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
        tracing::warn!(target: "librdkafka", %error, reason, "kafka client error");
    }
}

/// The producer's context: logs like [`TracingContext`], and knows whether any broker is
/// reachable. librdkafka reports "all broker connections are down" as a global error and the
/// brokers' states in its periodic statistics; while no broker is reachable an append is
/// refused at once ([`KafkaError::Unreachable`]: the ingress answers `503`, and the record is
/// certainly not in the log) rather than queued for up to [`MESSAGE_TIMEOUT`].
#[derive(Debug, Default)]
struct ProducerContext {
    /// Shared with the [`KafkaProducer`], which checks it before each append.
    unreachable: Arc<AtomicBool>,
}

impl ClientContext for ProducerContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        TracingContext.log(level, facility, message);
    }

    fn error(&self, error: RdKafkaError, reason: &str) {
        if matches!(
            error,
            RdKafkaError::Global(RDKafkaErrorCode::AllBrokersDown)
        ) && !self.unreachable.swap(true, Ordering::AcqRel)
        {
            tracing::warn!("no kafka broker is reachable: appends are refused until one is");
        }
        TracingContext.error(error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        // Bootstrap entries have no node id; a real broker in state UP takes requests.
        let reachable = statistics
            .brokers
            .values()
            .any(|broker| broker.nodeid >= 0 && broker.state == "UP");
        if reachable && self.unreachable.swap(false, Ordering::AcqRel) {
            tracing::info!("a kafka broker is reachable again: appends resume");
        }
    }
}

/// Why a Kafka operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// librdkafka refused the configuration or could not create the client.
    #[error("could not create the kafka client: {0}")]
    Create(#[source] RdKafkaError),
    /// The topic is neither a logical nor a wire name of the catalog.
    #[error("topic `{0}` is not defined in the topic catalog")]
    UnknownTopic(String),
    /// A record was not acknowledged by the brokers (or could not even be enqueued); the
    /// batch must not be treated as accepted.
    #[error("kafka did not accept a record of `{topic}`: {source}")]
    Delivery {
        /// The topic's wire name.
        topic: String,
        /// librdkafka's error.
        #[source]
        source: RdKafkaError,
    },
    /// No broker is reachable: the batch was not handed to librdkafka at all.
    #[error("no kafka broker of `{brokers}` is reachable")]
    Unreachable {
        /// The cluster, as configured.
        brokers: String,
    },
    /// [`KafkaProducer::close`] was called, or the producer went away before answering.
    #[error("the kafka producer is closed")]
    Closed,
    /// An admin request (topic creation) failed as a whole.
    #[error("kafka admin request failed: {0}")]
    Admin(#[source] RdKafkaError),
    /// The brokers refused to create one topic.
    #[error("could not create kafka topic `{topic}`: {code}")]
    CreateTopic {
        /// The topic's wire name.
        topic: String,
        /// The broker's error code.
        code: RDKafkaErrorCode,
    },
    /// The topic exists with another partition count than the catalog's, so keys would not
    /// land where the consumers and the embedded log put them.
    #[error(
        "kafka topic `{topic}` has {actual} partitions, the topic catalog says {expected}; \
         partition counts of a live topic must not change (add a new versioned topic)"
    )]
    PartitionMismatch {
        /// The topic's wire name.
        topic: String,
        /// The catalog's partition count.
        expected: i32,
        /// The brokers' partition count.
        actual: i32,
    },
    /// Something did not happen in time.
    #[error("timed out after {waited:?} {what}")]
    Timeout {
        /// What was being waited for, with the last error seen, if any.
        what: String,
        /// How long was waited.
        waited: Duration,
    },
    /// A blocking librdkafka call on the blocking pool panicked or was cancelled.
    #[error("a blocking kafka call failed: {0}")]
    Blocking(String),
}

/// The gateway's Kafka producer: idempotent, `acks=all`, keyed records on the catalog's
/// partitions. Cheap to clone; all clones share one librdkafka producer.
#[derive(Clone)]
pub struct KafkaProducer {
    producer: FutureProducer<ProducerContext>,
    catalog: Arc<TopicCatalog>,
    brokers: Arc<str>,
    /// Set by [`close`](Self::close); appends are refused afterwards.
    closed: Arc<AtomicBool>,
    /// Whether no broker is reachable now (kept up to date by [`ProducerContext`]).
    unreachable: Arc<AtomicBool>,
}

impl fmt::Debug for KafkaProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only what identifies the producer: no config values (a future SASL password
        // would live there) and no librdkafka handles.
        f.debug_struct("KafkaProducer")
            .field("brokers", &self.brokers)
            .field("client_id", &PRODUCER_CLIENT_ID)
            .field(
                "topics",
                &self
                    .catalog
                    .iter()
                    .map(|spec| spec.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl KafkaProducer {
    /// A producer for the topics of `catalog` on the cluster at `brokers`
    /// (`host:port[,host:port…]`). Does not connect yet: librdkafka connects in the
    /// background and an unreachable cluster shows up as failing appends.
    pub fn new(brokers: &str, catalog: &TopicCatalog) -> Result<Self, KafkaError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("client.id", PRODUCER_CLIENT_ID)
            // Idempotence implies acks=all and bounded in-flight requests, so retries keep
            // the order of a partition and never duplicate; acks is spelled out anyway
            // because durability is the point.
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // Records carry an explicit partition, so this only matters for a record that
            // does not; it then still lands where Java clients put it.
            .set("partitioner", RDKAFKA_PARTITIONER)
            // A couple of milliseconds of batching keeps bulk sends efficient without
            // adding noticeable latency to single sends.
            .set("linger.ms", "2")
            .set("compression.type", "lz4")
            .set("message.timeout.ms", millis(MESSAGE_TIMEOUT))
            .set("statistics.interval.ms", millis(STATISTICS_INTERVAL))
            .set(
                "queue.buffering.max.messages",
                QUEUE_MAX_MESSAGES.to_string(),
            )
            // Topics are created from the catalog, never by accident through metadata.
            .set("allow.auto.create.topics", "false");
        let unreachable = Arc::new(AtomicBool::new(false));
        let producer: FutureProducer<ProducerContext> = config
            .create_with_context(ProducerContext {
                unreachable: unreachable.clone(),
            })
            .map_err(KafkaError::Create)?;
        Ok(Self {
            producer,
            catalog: Arc::new(catalog.clone()),
            brokers: Arc::from(brokers),
            closed: Arc::new(AtomicBool::new(false)),
            unreachable,
        })
    }

    /// Appends `records` (`(key, value)`; the key is a session id) to `topic` (logical or
    /// wire name). Each record goes to [`partition_for_key`] of its key; records of one key
    /// keep their input order. Resolves once the brokers acknowledged every record; on
    /// error none of them may be treated as accepted (some may still have been written, as
    /// with any lost acknowledgement).
    pub async fn append_batch(
        &self,
        topic: &str,
        records: Vec<(String, Vec<u8>)>,
    ) -> Result<(), KafkaError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(KafkaError::Closed);
        }
        if self.unreachable.load(Ordering::Acquire) {
            return Err(KafkaError::Unreachable {
                brokers: self.brokers.to_string(),
            });
        }
        let spec = self.resolve(topic)?;
        // Enqueue everything first and only then wait, so the whole batch travels in as few
        // produce requests as librdkafka can make of it.
        let mut deliveries = Vec::with_capacity(records.len());
        for (key, value) in &records {
            let record = FutureRecord::to(&spec.name)
                .partition(partition_for_key(key.as_bytes(), spec.partitions))
                .key(key)
                .payload(value);
            deliveries.push(self.enqueue(&spec.name, record).await?);
        }
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((source, _record))) => {
                    return Err(KafkaError::Delivery {
                        topic: spec.name.clone(),
                        source,
                    });
                }
                // The delivery report's sender went away: only when the producer is torn
                // down, which cannot happen while this clone holds it, but be safe.
                Err(_canceled) => return Err(KafkaError::Closed),
            }
        }
        Ok(())
    }

    /// Hands one record to librdkafka, waiting while its local queue is full (bounded by
    /// [`MESSAGE_TIMEOUT`], after which the records would time out anyway).
    async fn enqueue<'a>(
        &self,
        topic: &str,
        mut record: FutureRecord<'a, String, Vec<u8>>,
    ) -> Result<DeliveryFuture, KafkaError> {
        let started = Instant::now();
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((RdKafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    if started.elapsed() >= MESSAGE_TIMEOUT {
                        return Err(KafkaError::Timeout {
                            what: format!(
                                "waiting for room in the full producer queue for `{topic}`"
                            ),
                            waited: started.elapsed(),
                        });
                    }
                    record = returned;
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err((source, _)) => {
                    return Err(KafkaError::Delivery {
                        topic: topic.to_owned(),
                        source,
                    });
                }
            }
        }
    }

    /// The catalog entry of a logical or wire topic name.
    fn resolve(&self, topic: &str) -> Result<&TopicSpec, KafkaError> {
        self.catalog
            .get(topic)
            .or_else(|| self.catalog.by_wire_name(topic))
            .ok_or_else(|| KafkaError::UnknownTopic(topic.to_owned()))
    }

    /// The cluster this producer writes to, as configured.
    #[must_use]
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// Stops accepting appends and waits (bounded) until what librdkafka buffered is
    /// acknowledged; called at shutdown. Calling it again only flushes again.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let producer = self.producer.clone();
        // `flush` blocks its thread until the queue is empty or the timeout passes.
        match tokio::task::spawn_blocking(move || producer.flush(CLOSE_FLUSH_TIMEOUT)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(
                %error,
                in_flight = self.producer.in_flight_count(),
                "kafka producer did not flush everything at close"
            ),
            Err(error) => tracing::warn!(%error, "kafka producer flush task failed"),
        }
    }
}

/// Creates every topic of `catalog` on the cluster at `brokers` with its partitions,
/// replication factor and [`kafka_configs`](TopicSpec::kafka_configs); a topic that already
/// exists counts as success. Then waits (up to 30 s) until every topic is visible with its
/// catalog partition count, as [`wait_for_topics`] does. Returns the wire names of the
/// topics this call created.
pub async fn create_topics(
    brokers: &str,
    catalog: &TopicCatalog,
) -> Result<Vec<String>, KafkaError> {
    let admin = Arc::new(admin_client(brokers)?);
    let created = create_all(&admin, catalog).await;
    let visible = match &created {
        Ok(_) => await_topics(&admin, catalog, TOPICS_VISIBLE_TIMEOUT).await,
        Err(_) => Ok(()),
    };
    drop_off_runtime(admin);
    let created = created?;
    visible?;
    Ok(created)
}

/// Waits up to `timeout` until the cluster's metadata shows every topic of `catalog` with
/// its catalog partition count and a leader for every partition, so producing to or
/// subscribing to them does not race their creation. Fails at once on a partition count
/// mismatch, and with [`KafkaError::Timeout`] (naming the last problem) when time runs out.
pub async fn wait_for_topics(
    brokers: &str,
    catalog: &TopicCatalog,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let admin = Arc::new(admin_client(brokers)?);
    let result = await_topics(&admin, catalog, timeout).await;
    drop_off_runtime(admin);
    result
}

/// A short-lived admin client; never auto-creates topics through metadata requests.
fn admin_client(brokers: &str) -> Result<AdminClient<TracingContext>, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("client.id", ADMIN_CLIENT_ID)
        .set("allow.auto.create.topics", "false")
        .create_with_context(TracingContext)
        .map_err(KafkaError::Create)
}

/// Dropping an admin client joins its polling thread and destroys the librdkafka handle,
/// which blocks; do it on the blocking pool rather than on a runtime worker.
fn drop_off_runtime(admin: Arc<AdminClient<TracingContext>>) {
    drop(tokio::task::spawn_blocking(move || drop(admin)));
}

/// Sends one CreateTopics request for the whole catalog; returns the names created.
async fn create_all(
    admin: &AdminClient<TracingContext>,
    catalog: &TopicCatalog,
) -> Result<Vec<String>, KafkaError> {
    // `NewTopic` borrows its config strings, so they have to outlive the request.
    let configs: Vec<Vec<(String, String)>> = catalog
        .iter()
        .map(|spec| spec.kafka_configs().into_iter().collect())
        .collect();
    let new_topics: Vec<NewTopic<'_>> = catalog
        .iter()
        .zip(&configs)
        .map(|(spec, configs)| {
            configs.iter().fold(
                NewTopic::new(
                    &spec.name,
                    spec.partitions,
                    TopicReplication::Fixed(spec.replication_factor),
                ),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(ADMIN_OPERATION_TIMEOUT))
        .request_timeout(Some(ADMIN_OPERATION_TIMEOUT));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(KafkaError::Admin)?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(KafkaError::CreateTopic { topic, code }),
        }
    }
    Ok(created)
}

/// Polls the metadata of every catalog topic until all are ready or `timeout` passes.
async fn await_topics(
    admin: &Arc<AdminClient<TracingContext>>,
    catalog: &TopicCatalog,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let started = Instant::now();
    loop {
        let mut problem = None;
        for spec in catalog {
            if let Some(found) = topic_problem(admin, spec).await? {
                problem = Some(found);
                break;
            }
        }
        let Some(problem) = problem else {
            return Ok(());
        };
        if started.elapsed() >= timeout {
            return Err(KafkaError::Timeout {
                what: format!("waiting for the kafka topics to be ready ({problem})"),
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(METADATA_RETRY).await;
    }
}

/// Why `spec`'s topic is not ready yet (`None` when it is); a partition count mismatch is a
/// hard error rather than something to wait out.
async fn topic_problem(
    admin: &Arc<AdminClient<TracingContext>>,
    spec: &TopicSpec,
) -> Result<Option<String>, KafkaError> {
    let client = Arc::clone(admin);
    let name = spec.name.clone();
    // A metadata request blocks its thread until the answer or the timeout.
    let metadata = tokio::task::spawn_blocking(move || {
        client
            .inner()
            .fetch_metadata(Some(&name), METADATA_REQUEST_TIMEOUT)
    })
    .await
    .map_err(|error| KafkaError::Blocking(error.to_string()))?;
    let metadata = match metadata {
        Ok(metadata) => metadata,
        Err(error) => return Ok(Some(format!("metadata request failed: {error}"))),
    };
    let Some(topic) = metadata
        .topics()
        .iter()
        .find(|topic| topic.name() == spec.name)
    else {
        return Ok(Some(format!("`{}` is not in the metadata", spec.name)));
    };
    if let Some(error) = topic.error() {
        let code = RDKafkaErrorCode::from(error);
        return Ok(Some(format!("`{}`: {code}", spec.name)));
    }
    let actual = i32::try_from(topic.partitions().len()).unwrap_or(i32::MAX);
    if actual != spec.partitions {
        if actual == 0 {
            return Ok(Some(format!("`{}` has no partitions yet", spec.name)));
        }
        return Err(KafkaError::PartitionMismatch {
            topic: spec.name.clone(),
            expected: spec.partitions,
            actual,
        });
    }
    if let Some(partition) = topic
        .partitions()
        .iter()
        .find(|partition| partition.leader() < 0 || partition.error().is_some())
    {
        return Ok(Some(format!(
            "partition {} of `{}` has no leader yet",
            partition.id(),
            spec.name
        )));
    }
    Ok(None)
}

/// A duration as librdkafka's millisecond config value.
fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}

/// The broker the tests run against: `KAFKA_BROKERS`, else a local one. The tests fail
/// (never skip) when it is unreachable: CI starts one (`.ci/run`). Test support for this
/// crate and `consumers`; it panics rather than returns an error, as a test should.
pub fn test_brokers() -> String {
    use std::net::{TcpStream, ToSocketAddrs};
    let brokers = std::env::var("KAFKA_BROKERS")
        .ok()
        .filter(|value| !value.trim().is_empty())
        .unwrap_or_else(|| "127.0.0.1:9092".to_owned());
    for broker in brokers.split(',') {
        let reachable = broker
            .trim()
            .to_socket_addrs()
            .ok()
            .is_some_and(|mut addrs| {
                addrs.any(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok())
            });
        assert!(
            reachable,
            "no Kafka broker reachable at `{broker}` (KAFKA_BROKERS={brokers}): these tests \
             need a running broker; start one as .ci/run does (tansu) or point \
             KAFKA_BROKERS at one"
        );
    }
    brokers
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::sync::atomic::AtomicU32;

    use rdkafka::Message;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

    use super::*;
    use crate::topics::{EVENTS_TOPIC, OUTBOUND_TOPIC};

    fn brokers() -> String {
        test_brokers()
    }

    /// The built-in catalog under a prefix no other test (or earlier run) uses.
    fn unique_catalog() -> TopicCatalog {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let prefix = format!(
            "t{}-{nanos}-{}-",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        TopicCatalog::builtin()
            .unwrap()
            .with_prefix(&prefix)
            .unwrap()
    }

    /// Reads every partition of `topic` from the beginning until `count` records arrived,
    /// as `(partition, offset, key, value)` in arrival order.
    async fn read_back(
        brokers: &str,
        spec: &TopicSpec,
        count: usize,
    ) -> Vec<(i32, i64, String, Vec<u8>)> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("{}-reader", spec.name))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        for partition in spec.partition_ids() {
            assignment
                .add_partition_offset(&spec.name, partition, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).unwrap();
        let mut records = Vec::with_capacity(count);
        let deadline = Instant::now() + Duration::from_secs(30);
        while records.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = tokio::time::timeout(left, consumer.recv())
                .await
                .unwrap_or_else(|_| panic!("only {} of {count} records read back", records.len()))
                .unwrap();
            records.push((
                message.partition(),
                message.offset(),
                String::from_utf8(message.key().unwrap().to_vec()).unwrap(),
                message.payload().unwrap_or_default().to_vec(),
            ));
        }
        records
    }

    #[tokio::test]
    async fn create_topics_creates_the_catalog_once() {
        let brokers = brokers();
        let catalog = unique_catalog();
        let mut created = create_topics(&brokers, &catalog).await.unwrap();
        created.sort();
        let mut expected: Vec<String> = catalog.iter().map(|spec| spec.name.clone()).collect();
        expected.sort();
        assert_eq!(created, expected);

        // Again: everything exists already, which is success with nothing new.
        assert!(create_topics(&brokers, &catalog).await.unwrap().is_empty());
        wait_for_topics(&brokers, &catalog, Duration::from_secs(10))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn wait_for_topics_rejects_other_partition_counts() {
        let brokers = brokers();
        let catalog = unique_catalog();
        create_topics(&brokers, &catalog).await.unwrap();
        // Same wire names, but the catalog now claims a different partition count.
        let text = format!(
            "[[topic]]\nname = \"{}\"\npartitions = 5\nretention_ms = 1000\n\
             cleanup_policy = \"delete\"\npurpose = \"test\"\n",
            catalog.require(OUTBOUND_TOPIC).unwrap().name
        );
        let other = TopicCatalog::from_toml_str(&text).unwrap();
        let error = wait_for_topics(&brokers, &other, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                KafkaError::PartitionMismatch {
                    expected: 5,
                    actual: 12,
                    ..
                }
            ),
            "{error}"
        );
    }

    #[tokio::test]
    async fn wait_for_topics_times_out_on_missing_topics() {
        let brokers = brokers();
        let catalog = unique_catalog();
        let error = wait_for_topics(&brokers, &catalog, Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(matches!(error, KafkaError::Timeout { .. }), "{error}");
    }

    #[tokio::test]
    async fn append_batch_places_keys_like_partition_for_key_in_order() {
        let brokers = brokers();
        let catalog = unique_catalog();
        create_topics(&brokers, &catalog).await.unwrap();
        let producer = KafkaProducer::new(&brokers, &catalog).unwrap();
        let spec = catalog.require(OUTBOUND_TOPIC).unwrap();

        // Interleaved keys, so each partition holds several sessions' records.
        let keys: Vec<String> = (0..24).map(|index| format!("session-{index}")).collect();
        let batch = |round: usize| -> Vec<(String, Vec<u8>)> {
            (0..250)
                .map(|index| {
                    let key = &keys[index % keys.len()];
                    (key.clone(), format!("{key}:{round}:{index}").into_bytes())
                })
                .collect()
        };
        // Logical and wire names both work.
        producer
            .append_batch(OUTBOUND_TOPIC, batch(0))
            .await
            .unwrap();
        producer.append_batch(&spec.name, batch(1)).await.unwrap();

        let records = read_back(&brokers, spec, 500).await;
        let mut per_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        let mut per_key: HashMap<String, Vec<(i32, i64, Vec<u8>)>> = HashMap::new();
        for (partition, offset, key, value) in records {
            assert_eq!(
                partition,
                partition_for_key(key.as_bytes(), spec.partitions),
                "{key} landed on the wrong partition"
            );
            per_partition.entry(partition).or_default().push(offset);
            per_key
                .entry(key)
                .or_default()
                .push((partition, offset, value));
        }
        // Several partitions are used, and offsets are dense from 0 in each.
        assert!(per_partition.len() > 1, "{per_partition:?}");
        for offsets in per_partition.values() {
            let dense: Vec<i64> = (0..offsets.len() as i64).collect();
            assert_eq!(*offsets, dense);
        }
        // Each key's records, in offset order, are exactly the input order.
        assert_eq!(per_key.len(), keys.len());
        for (key, mut got) in per_key {
            got.sort_by_key(|(_, offset, _)| *offset);
            let expected: Vec<Vec<u8>> = [batch(0), batch(1)]
                .into_iter()
                .flatten()
                .filter(|(record_key, _)| *record_key == key)
                .map(|(_, value)| value)
                .collect();
            let got: Vec<Vec<u8>> = got.into_iter().map(|(_, _, value)| value).collect();
            assert_eq!(got, expected, "order of {key}");
        }
        producer.close().await;
    }

    #[tokio::test]
    async fn append_to_unknown_topic_or_after_close_fails() {
        let brokers = brokers();
        let catalog = unique_catalog();
        create_topics(&brokers, &catalog).await.unwrap();
        let producer = KafkaProducer::new(&brokers, &catalog).unwrap();
        let error = producer
            .append_batch("no.such.topic", vec![("k".into(), b"v".to_vec())])
            .await
            .unwrap_err();
        assert!(matches!(error, KafkaError::UnknownTopic(ref name) if name == "no.such.topic"));
        // The unprefixed wire name of a prefixed catalog is not one of its topics either.
        let error = producer
            .append_batch(
                &format!("x{}", catalog.require(EVENTS_TOPIC).unwrap().name),
                Vec::new(),
            )
            .await
            .unwrap_err();
        assert!(matches!(error, KafkaError::UnknownTopic(_)));

        // An empty batch is trivially acknowledged.
        producer
            .append_batch(EVENTS_TOPIC, Vec::new())
            .await
            .unwrap();
        producer
            .append_batch(EVENTS_TOPIC, vec![("s".into(), b"before close".to_vec())])
            .await
            .unwrap();
        producer.close().await;
        let error = producer
            .append_batch(EVENTS_TOPIC, vec![("s".into(), b"after close".to_vec())])
            .await
            .unwrap_err();
        assert!(matches!(error, KafkaError::Closed));
    }

    #[test]
    fn debug_names_the_cluster_and_topics_only() {
        let catalog = TopicCatalog::builtin().unwrap();
        // Creating a producer does not connect, so no broker is needed here.
        let producer = KafkaProducer::new("127.0.0.1:1", catalog).unwrap();
        let debug = format!("{producer:?}");
        assert!(debug.contains("127.0.0.1:1"), "{debug}");
        assert!(debug.contains(OUTBOUND_TOPIC), "{debug}");
        assert_eq!(producer.brokers(), "127.0.0.1:1");
    }

    #[test]
    fn futures_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        let catalog = TopicCatalog::builtin().unwrap();
        let producer = KafkaProducer::new("127.0.0.1:1", catalog).unwrap();
        assert_send(&producer.append_batch(OUTBOUND_TOPIC, Vec::new()));
        assert_send(&producer.close());
        assert_send(&create_topics("127.0.0.1:1", catalog));
        assert_send(&wait_for_topics("127.0.0.1:1", catalog, Duration::ZERO));
    }
}
