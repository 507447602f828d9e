//! The log under the send pipeline, chosen by configuration: Kafka when `KAFKA_BROKERS` is set,
//! else the embedded log in `DATA_DIR/log.db`. Hands out the one producer the process appends
//! with and the consumer-group readers of the delivery and events consumers.

use anyhow::Context;
use consumers::{EmbeddedSource, KafkaSource, LogSource};
use producers::kafka::{KafkaProducer, create_topics};
use producers::{
    EVENTS_DLQ_TOPIC, EVENTS_TOPIC, EmbeddedLog, LogProducer, OUTBOUND_DLQ_TOPIC, OUTBOUND_TOPIC,
    TopicCatalog,
};

use crate::config::Config;
use crate::delivery::LogTopics;

/// Consumer group of the delivery consumers (before the prefix).
pub const DELIVERY_GROUP: &str = "wa-gateway.delivery";
/// Consumer group of the events consumers (before the prefix).
pub const EVENTS_GROUP: &str = "wa-gateway.events";

/// Which log runs underneath.
#[derive(Debug, Clone)]
enum Backend {
    Embedded(EmbeddedLog),
    Kafka { brokers: String },
}

/// The log: topics, the producer, and readers for consumer groups.
#[derive(Debug, Clone)]
pub struct Pipeline {
    catalog: TopicCatalog,
    producer: LogProducer,
    backend: Backend,
    group_prefix: String,
}

impl Pipeline {
    /// Opens the configured log. With Kafka, creates the topics of `kafka/topics.toml` that do
    /// not exist yet (and fails when one exists with another partition count).
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        let catalog = catalog(config)?;
        if let Some(brokers) = &config.kafka_brokers {
            let created = create_topics(brokers, &catalog)
                .await
                .with_context(|| format!("creating the log topics on KAFKA_BROKERS={brokers}"))?;
            if !created.is_empty() {
                tracing::info!(created = created.join(", "), "created Kafka topics");
            }
            let producer = KafkaProducer::new(brokers, &catalog)
                .with_context(|| format!("connecting a Kafka producer to {brokers}"))?;
            return Ok(Self {
                producer: LogProducer::Kafka(producer),
                backend: Backend::Kafka {
                    brokers: brokers.clone(),
                },
                catalog,
                group_prefix: config.topic_prefix.clone(),
            });
        }
        // With PostgreSQL nothing else may have created DATA_DIR yet.
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating DATA_DIR {}", config.data_dir.display()))?;
        let path = config.data_dir.join("log.db");
        let log = EmbeddedLog::open_file(&path, &catalog)
            .await
            .with_context(|| format!("opening the embedded log at {}", path.display()))?;
        Ok(Self {
            producer: LogProducer::Embedded(log.clone()),
            backend: Backend::Embedded(log),
            catalog,
            group_prefix: config.topic_prefix.clone(),
        })
    }

    /// The producer every append goes through.
    pub fn producer(&self) -> &LogProducer {
        &self.producer
    }

    /// Wire names of the pipeline's topics.
    pub fn topics(&self) -> LogTopics {
        let wire = |logical: &str| {
            self.catalog.get(logical).map_or_else(
                || format!("{}{logical}", self.catalog.prefix()),
                |spec| spec.name.clone(),
            )
        };
        LogTopics {
            outbound: wire(OUTBOUND_TOPIC),
            events: wire(EVENTS_TOPIC),
            dead_letters: wire(OUTBOUND_DLQ_TOPIC),
            event_dead_letters: wire(EVENTS_DLQ_TOPIC),
        }
    }

    /// A reader of `topic` (wire name) for consumer group `group` (before the prefix). On Kafka
    /// the reader is the static member `instance_id` of the group (see
    /// [`Config::kafka_group_instance_id`]).
    pub fn source(&self, group: &str, topic: &str, instance_id: &str) -> anyhow::Result<LogSource> {
        let group = format!("{}{group}", self.group_prefix);
        match &self.backend {
            Backend::Embedded(log) => Ok(LogSource::Embedded(EmbeddedSource::new(
                log.clone(),
                &self.catalog,
                group,
                &[topic],
            )?)),
            Backend::Kafka { brokers } => Ok(LogSource::Kafka(KafkaSource::subscribe(
                brokers,
                &group,
                &[topic],
                Some(instance_id),
            )?)),
        }
    }

    /// Housekeeping of the embedded log: drops records past their topic's retention that every
    /// consumer group has read. Kafka does this itself.
    pub async fn trim(&self) -> anyhow::Result<u64> {
        let Backend::Embedded(log) = &self.backend else {
            return Ok(0);
        };
        let mut removed = 0;
        for spec in self.catalog.iter() {
            removed += log.truncate(&spec.name, spec.retention_ms).await?;
        }
        Ok(removed)
    }

    /// Which log runs underneath (`embedded` or `kafka`).
    pub fn backend_name(&self) -> &'static str {
        self.producer.backend_name()
    }

    /// Flushes and closes the producer.
    pub async fn close(&self) {
        self.producer.close().await;
    }
}

/// The topic catalog of `kafka/topics.toml` under `KAFKA_TOPIC_PREFIX`.
pub fn catalog(config: &Config) -> anyhow::Result<TopicCatalog> {
    TopicCatalog::builtin()
        .context("loading kafka/topics.toml")?
        .with_prefix(&config.topic_prefix)
        .context("KAFKA_TOPIC_PREFIX makes an invalid topic name")
}
