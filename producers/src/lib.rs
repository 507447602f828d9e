//! Everything on the producing side of the gateway's log.
//!
//! The send path is HTTP ingress → `wa.outbound.v1` (keyed by session id) → consumers
//! delivering to workers; workers' reports flow back through `wa.events.v1`. This crate
//! owns what a producer must agree on with every reader of that log:
//!
//! * [`topics`]: the topic catalog, embedded from `kafka/topics.toml`, which both creates
//!   the Kafka topics and lays out the embedded SQLite log;
//! * [`partitioner`]: Kafka's Java-compatible murmur2 partitioner, so a session lands on
//!   the same partition in the embedded log and in Kafka;
//! * [`envelope`]: the versioned JSON record values of the outbound and event topics;
//! * [`embedded`]: the embedded partitioned log on SQLite, used when `KAFKA_BROKERS` is
//!   unset: group-committed, durable appends, offset-ordered fetches, consumer-group
//!   positions and change notifications;
//! * [`kafka`]: the Kafka back end, used when `KAFKA_BROKERS` is set: an idempotent
//!   (`acks=all`) rdkafka producer that places each key on the same partition as the
//!   embedded log, and creation of the catalog's topics;
//! * [`log`]: [`LogProducer`], the one append interface over both back ends, so the
//!   ingress does not care which one runs.
//!
//! [`topics`], [`partitioner`] and [`envelope`] are runtime-independent (no I/O, no
//! async); [`embedded`] runs on Tokio and `sqlx`, [`kafka`] on Tokio and librdkafka.

pub mod embedded;
pub mod envelope;
pub mod kafka;
pub mod log;
pub mod partitioner;
pub mod topics;

pub use embedded::{EmbeddedLog, LogError, LogRecord, MAX_BATCH_BYTES, MAX_BATCH_RECORDS};
pub use envelope::{ENVELOPE_VERSION, EnvelopeError, EventEnvelope, OutboundEnvelope, WorkerEvent};
pub use kafka::{KafkaError, KafkaProducer};
pub use log::{AppendError, LogProducer};
pub use partitioner::{RDKAFKA_PARTITIONER, murmur2, partition_for_key, to_positive};
pub use topics::{
    CleanupPolicy, EVENTS_DLQ_TOPIC, EVENTS_TOPIC, OUTBOUND_DLQ_TOPIC, OUTBOUND_TOPIC,
    REQUIRED_TOPICS, TopicCatalog, TopicError, TopicSpec,
};
