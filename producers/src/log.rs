//! The one producer interface the gateway writes to, whichever log runs underneath.
//!
//! [`LogProducer`] is an enum over the two back ends rather than a trait object: there are
//! exactly two, both are known here, and enum dispatch keeps the hot append path free of
//! boxing. Business code (the ingress, the delivery consumer's dead letters, the worker
//! callbacks) only ever sees this type.

use crate::embedded::{EmbeddedLog, LogError};
use crate::kafka::{KafkaError, KafkaProducer};

/// Why an append failed. Either way nothing was acknowledged: the caller answers with an
/// error and the client may retry (with its `Idempotency-Key`).
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The embedded log refused or failed the append.
    #[error(transparent)]
    Embedded(#[from] LogError),
    /// Kafka refused or did not acknowledge the append.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
}

/// Appends keyed records to a topic of the log, durably: every method resolves only once the
/// log has acknowledged the records (the embedded log's group commit, or Kafka's `acks=all`).
#[derive(Debug, Clone)]
pub enum LogProducer {
    /// The embedded SQLite log (no `KAFKA_BROKERS`).
    Embedded(EmbeddedLog),
    /// Kafka (`KAFKA_BROKERS` set).
    Kafka(KafkaProducer),
}

impl LogProducer {
    /// Appends `records` (`(key, value)`; the key is a session id and picks the partition by
    /// murmur2) to `topic` (logical or wire name). Records of one key keep their input order.
    /// Resolves once every record is durable; on error, none of them may be treated as
    /// accepted (some may still have been written, as with any lost acknowledgement).
    pub async fn append_batch(
        &self,
        topic: &str,
        records: Vec<(String, Vec<u8>)>,
    ) -> Result<(), AppendError> {
        match self {
            Self::Embedded(log) => {
                log.append_batch(topic, records).await?;
                Ok(())
            }
            Self::Kafka(producer) => Ok(producer.append_batch(topic, records).await?),
        }
    }

    /// Which back end this is, for logs and the health answer.
    #[must_use]
    pub fn backend_name(&self) -> &'static str {
        match self {
            Self::Embedded(_) => "embedded",
            Self::Kafka(_) => "kafka",
        }
    }

    /// Flushes what is buffered and stops accepting appends; called at shutdown.
    pub async fn close(&self) {
        match self {
            Self::Embedded(log) => log.close().await,
            Self::Kafka(producer) => producer.close().await,
        }
    }
}
