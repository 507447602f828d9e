//! The log's topic catalog, loaded from `kafka/topics.toml`.
//!
//! That file is the single source of truth for the gateway's topics: the Kafka admin code
//! creates topics from it and the embedded SQLite log lays out its partitions from it, so
//! both back ends always agree on names and partition counts. It is embedded at compile
//! time; nothing reads it from disk at run time.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::OnceLock;

use serde::Deserialize;

use crate::partitioner;

/// Send requests accepted by the HTTP ingress, keyed by session id.
pub const OUTBOUND_TOPIC: &str = "wa.outbound.v1";
/// Normalized worker events, keyed by session id.
pub const EVENTS_TOPIC: &str = "wa.events.v1";
/// Dead letters of [`OUTBOUND_TOPIC`].
pub const OUTBOUND_DLQ_TOPIC: &str = "wa.outbound.dlq.v1";

/// Dead letters of [`EVENTS_TOPIC`]: events the events consumer could not apply.
pub const EVENTS_DLQ_TOPIC: &str = "wa.events.dlq.v1";

/// Topics the gateway cannot run without; [`TopicCatalog::builtin`] fails if one is missing.
pub const REQUIRED_TOPICS: [&str; 4] = [
    OUTBOUND_TOPIC,
    EVENTS_TOPIC,
    OUTBOUND_DLQ_TOPIC,
    EVENTS_DLQ_TOPIC,
];

/// The embedded definitions, so the binary never depends on a file at run time.
const BUILTIN_TOML: &str = include_str!("../../kafka/topics.toml");

/// Kafka's limit on topic name length.
const MAX_TOPIC_NAME_LEN: usize = 249;

/// Why a topic catalog could not be loaded; any of these is a build or configuration bug,
/// reported at start-up rather than when the first record is produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The TOML is malformed or has unknown or mistyped fields.
    #[error("topic catalog is not valid: {0}")]
    Parse(#[from] toml::de::Error),
    /// The catalog defines no topic at all.
    #[error("topic catalog defines no topics")]
    Empty,
    /// Two entries resolve to the same topic name.
    #[error("topic `{0}` is defined more than once")]
    DuplicateName(String),
    /// Two names differ only in `.` versus `_`, which Kafka refuses (their metric names
    /// collide).
    #[error("topics `{first}` and `{second}` collide: Kafka treats `.` and `_` alike")]
    CollidingNames {
        /// The name defined first.
        first: String,
        /// The name that collides with it.
        second: String,
    },
    /// A name Kafka would reject.
    #[error("topic name `{name}` is invalid: {problem}")]
    InvalidName {
        /// The offending name (prefix included).
        name: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A partition count below 1.
    #[error("topic `{name}`: partitions must be at least 1, found {partitions}")]
    InvalidPartitions {
        /// The topic.
        name: String,
        /// The configured count.
        partitions: i32,
    },
    /// A replication factor below 1.
    #[error("topic `{name}`: replication_factor must be at least 1, found {replication_factor}")]
    InvalidReplicationFactor {
        /// The topic.
        name: String,
        /// The configured factor.
        replication_factor: i32,
    },
    /// A retention that is neither positive nor -1 (forever).
    #[error("topic `{name}`: retention_ms must be positive or -1, found {retention_ms}")]
    InvalidRetention {
        /// The topic.
        name: String,
        /// The configured retention.
        retention_ms: i64,
    },
    /// A `[topic.config]` entry that would silently override a first-class field.
    #[error("topic `{name}`: config `{key}` must be set through its own field")]
    ConflictingConfig {
        /// The topic.
        name: String,
        /// The Kafka config key.
        key: String,
    },
    /// An entry without a `purpose` description.
    #[error("topic `{0}` has no purpose description")]
    MissingPurpose(String),
    /// A topic the caller needs is not in the catalog.
    #[error("topic `{0}` is not defined in the topic catalog")]
    UnknownTopic(String),
}

/// Kafka's `cleanup.policy`: what the broker does with old segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum CleanupPolicy {
    /// Drop segments older than the retention.
    #[serde(rename = "delete")]
    Delete,
    /// Keep the latest record per key.
    #[serde(rename = "compact")]
    Compact,
    /// Compact, and also drop segments older than the retention.
    #[serde(rename = "compact,delete", alias = "delete,compact")]
    CompactDelete,
}

impl CleanupPolicy {
    /// The value of Kafka's `cleanup.policy` topic config.
    #[must_use]
    pub const fn as_kafka_str(self) -> &'static str {
        match self {
            Self::Delete => "delete",
            Self::Compact => "compact",
            Self::CompactDelete => "compact,delete",
        }
    }
}

impl fmt::Display for CleanupPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_kafka_str())
    }
}

/// One topic of the log: everything needed to create it in Kafka or lay it out in the
/// embedded log.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// The topic name as used on the wire, including the catalog's prefix, if any.
    pub name: String,
    /// Partition count (at least 1); keyed records go to
    /// [`partition_for_key`](partitioner::partition_for_key) of it.
    pub partitions: i32,
    /// Copies the brokers keep (at least 1).
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// How long records are kept, in milliseconds; -1 keeps them forever.
    pub retention_ms: i64,
    /// What the broker does with old segments.
    pub cleanup_policy: CleanupPolicy,
    /// What the record key is (documentation for readers of the catalog).
    #[serde(default)]
    pub key: Option<String>,
    /// What the topic carries and who reads it.
    pub purpose: String,
    /// Extra Kafka topic configs passed through verbatim at creation.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Length of the catalog prefix at the start of `name` (0 when parsed directly).
    #[serde(skip)]
    prefix_len: usize,
}

/// Replication factor of a topic that does not state one (single-broker deployments).
const fn default_replication_factor() -> i32 {
    1
}

impl TopicSpec {
    /// The name as written in `topics.toml` (without prefix): the stable identity callers
    /// look topics up by, e.g. [`OUTBOUND_TOPIC`].
    #[must_use]
    pub fn logical_name(&self) -> &str {
        self.name.get(self.prefix_len..).unwrap_or(&self.name)
    }

    /// The partition of this topic a keyed record belongs to, the same in Kafka and the
    /// embedded log.
    #[must_use]
    pub fn partition_for_key(&self, key: &[u8]) -> i32 {
        partitioner::partition_for_key(key, self.partitions)
    }

    /// Every partition id of the topic, `0..partitions`, e.g. to create per-partition
    /// storage or consumers.
    pub fn partition_ids(&self) -> std::ops::Range<i32> {
        0..self.partitions
    }

    /// The topic configs to create the topic with in Kafka: `retention.ms`,
    /// `cleanup.policy` and any extra `[topic.config]` entries.
    #[must_use]
    pub fn kafka_configs(&self) -> BTreeMap<String, String> {
        let mut configs = self.config.clone();
        configs.insert("retention.ms".to_owned(), self.retention_ms.to_string());
        configs.insert(
            "cleanup.policy".to_owned(),
            self.cleanup_policy.as_kafka_str().to_owned(),
        );
        configs
    }

    /// Checks one entry; names are checked separately because they depend on the prefix.
    fn validate(&self) -> Result<(), TopicError> {
        validate_name(&self.name)?;
        if self.partitions < 1 {
            return Err(TopicError::InvalidPartitions {
                name: self.name.clone(),
                partitions: self.partitions,
            });
        }
        if self.replication_factor < 1 {
            return Err(TopicError::InvalidReplicationFactor {
                name: self.name.clone(),
                replication_factor: self.replication_factor,
            });
        }
        if self.retention_ms < 1 && self.retention_ms != -1 {
            return Err(TopicError::InvalidRetention {
                name: self.name.clone(),
                retention_ms: self.retention_ms,
            });
        }
        if let Some(key) = ["retention.ms", "cleanup.policy"]
            .into_iter()
            .find(|key| self.config.contains_key(*key))
        {
            return Err(TopicError::ConflictingConfig {
                name: self.name.clone(),
                key: key.to_owned(),
            });
        }
        if self.purpose.trim().is_empty() {
            return Err(TopicError::MissingPurpose(self.name.clone()));
        }
        Ok(())
    }
}

/// Kafka's topic name rules (`org.apache.kafka.common.internals.Topic.validate`).
fn validate_name(name: &str) -> Result<(), TopicError> {
    let invalid = |problem| {
        Err(TopicError::InvalidName {
            name: name.to_owned(),
            problem,
        })
    };
    if name.is_empty() {
        return invalid("must not be empty");
    }
    if name == "." || name == ".." {
        return invalid("must not be `.` or `..`");
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return invalid("must be at most 249 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return invalid("may contain only ASCII letters, digits, `.`, `_` and `-`");
    }
    Ok(())
}

/// The shape of `topics.toml`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    /// The `[[topic]]` entries, in file order.
    #[serde(default)]
    topic: Vec<TopicSpec>,
}

/// The validated set of log topics, optionally with a name prefix; what both the Kafka
/// admin code and the embedded log are driven from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicCatalog {
    /// Prepended to every logical name to form the wire name.
    prefix: String,
    /// The topics, in file order.
    topics: Vec<TopicSpec>,
}

impl TopicCatalog {
    /// The catalog embedded from `kafka/topics.toml`, parsed and validated once per process.
    /// Fails only if the embedded file is broken or lacks one of [`REQUIRED_TOPICS`].
    pub fn builtin() -> Result<&'static TopicCatalog, TopicError> {
        static BUILTIN: OnceLock<Result<TopicCatalog, TopicError>> = OnceLock::new();
        BUILTIN
            .get_or_init(|| {
                let catalog = Self::from_toml_str(BUILTIN_TOML)?;
                for name in REQUIRED_TOPICS {
                    catalog.require(name)?;
                }
                Ok(catalog)
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Parses and validates a catalog in the `topics.toml` format (no prefix); for tests
    /// and tools that need a catalog other than the built-in one.
    pub fn from_toml_str(text: &str) -> Result<Self, TopicError> {
        let file: CatalogFile = toml::from_str(text)?;
        Self::new(String::new(), file.topic)
    }

    /// A copy whose wire names are `<prefix><logical name>`, e.g. to give each test run
    /// its own topics on a shared broker. Replaces any earlier prefix; lookups keep using
    /// logical names. Fails if a prefixed name is not a valid Kafka topic name.
    pub fn with_prefix(&self, prefix: &str) -> Result<Self, TopicError> {
        let topics = self
            .topics
            .iter()
            .map(|spec| TopicSpec {
                name: format!("{prefix}{}", spec.logical_name()),
                prefix_len: prefix.len(),
                ..spec.clone()
            })
            .collect();
        Self::new(prefix.to_owned(), topics)
    }

    /// Validates every entry and the set as a whole.
    fn new(prefix: String, topics: Vec<TopicSpec>) -> Result<Self, TopicError> {
        if topics.is_empty() {
            return Err(TopicError::Empty);
        }
        // Keyed by the name with `.` folded to `_`, which is how Kafka detects collisions.
        let mut seen: HashMap<String, &str> = HashMap::with_capacity(topics.len());
        for spec in &topics {
            spec.validate()?;
            if let Some(first) = seen.insert(spec.name.replace('.', "_"), &spec.name) {
                if first == spec.name {
                    return Err(TopicError::DuplicateName(spec.name.clone()));
                }
                return Err(TopicError::CollidingNames {
                    first: first.to_owned(),
                    second: spec.name.clone(),
                });
            }
        }
        Ok(Self { prefix, topics })
    }

    /// The prefix applied to every wire name (empty for the built-in catalog).
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The topic with this logical name (as in `topics.toml`, e.g. [`OUTBOUND_TOPIC`]),
    /// whatever the prefix.
    #[must_use]
    pub fn get(&self, logical_name: &str) -> Option<&TopicSpec> {
        self.topics
            .iter()
            .find(|spec| spec.logical_name() == logical_name)
    }

    /// Like [`get`](Self::get), but a missing topic is a typed error, for callers that
    /// cannot proceed without it.
    pub fn require(&self, logical_name: &str) -> Result<&TopicSpec, TopicError> {
        self.get(logical_name)
            .ok_or_else(|| TopicError::UnknownTopic(logical_name.to_owned()))
    }

    /// The topic with this wire name (prefix included), e.g. to map a consumed record's
    /// topic back to its definition.
    #[must_use]
    pub fn by_wire_name(&self, name: &str) -> Option<&TopicSpec> {
        self.topics.iter().find(|spec| spec.name == name)
    }

    /// Every topic, in `topics.toml` order.
    pub fn iter(&self) -> std::slice::Iter<'_, TopicSpec> {
        self.topics.iter()
    }

    /// How many topics the catalog defines.
    #[must_use]
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    /// Always false for a validated catalog; here because `len` is.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }
}

impl<'a> IntoIterator for &'a TopicCatalog {
    type Item = &'a TopicSpec;
    type IntoIter = std::slice::Iter<'a, TopicSpec>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const DAY_MS: i64 = 24 * 60 * 60 * 1000;

    fn one_topic(body: &str) -> String {
        format!("[[topic]]\n{body}\n")
    }

    const VALID: &str = r#"name = "t.v1"
partitions = 2
retention_ms = 1000
cleanup_policy = "delete"
purpose = "test""#;

    #[test]
    fn builtin_catalog_matches_the_design() {
        let catalog = TopicCatalog::builtin().unwrap();
        assert_eq!(catalog.prefix(), "");
        assert_eq!(catalog.len(), 4);
        assert!(!catalog.is_empty());

        let outbound = catalog.require(OUTBOUND_TOPIC).unwrap();
        assert_eq!(outbound.name, "wa.outbound.v1");
        assert_eq!(outbound.logical_name(), "wa.outbound.v1");
        assert_eq!(outbound.partitions, 12);
        assert_eq!(outbound.replication_factor, 1);
        assert_eq!(outbound.retention_ms, 7 * DAY_MS);
        assert_eq!(outbound.cleanup_policy, CleanupPolicy::Delete);
        assert_eq!(outbound.key.as_deref(), Some("session id"));

        let events = catalog.require(EVENTS_TOPIC).unwrap();
        assert_eq!(events.partitions, 12);
        assert_eq!(events.retention_ms, 7 * DAY_MS);

        let dlq = catalog.require(OUTBOUND_DLQ_TOPIC).unwrap();
        assert_eq!(dlq.partitions, 3);
        assert_eq!(dlq.retention_ms, 30 * DAY_MS);
        assert_eq!(dlq.cleanup_policy, CleanupPolicy::Delete);

        for spec in catalog {
            assert!(!spec.purpose.trim().is_empty(), "{}", spec.name);
        }
        let names: Vec<_> = catalog.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, REQUIRED_TOPICS);
    }

    #[test]
    fn builtin_is_parsed_once() {
        let a = TopicCatalog::builtin().unwrap();
        let b = TopicCatalog::builtin().unwrap();
        assert!(std::ptr::eq(a, b));
    }

    #[test]
    fn kafka_configs_carry_retention_and_cleanup() {
        let outbound = TopicCatalog::builtin()
            .unwrap()
            .require(OUTBOUND_TOPIC)
            .unwrap();
        let configs = outbound.kafka_configs();
        assert_eq!(configs["retention.ms"], "604800000");
        assert_eq!(configs["cleanup.policy"], "delete");

        let text = one_topic(&format!(
            "{VALID}\n[topic.config]\n\"min.insync.replicas\" = \"2\""
        ));
        let catalog = TopicCatalog::from_toml_str(&text).unwrap();
        let configs = catalog.require("t.v1").unwrap().kafka_configs();
        assert_eq!(configs["min.insync.replicas"], "2");
        assert_eq!(configs.len(), 3);
    }

    #[test]
    fn partitioning_uses_the_topic_partition_count() {
        let catalog = TopicCatalog::builtin().unwrap();
        let outbound = catalog.require(OUTBOUND_TOPIC).unwrap();
        let dlq = catalog.require(OUTBOUND_DLQ_TOPIC).unwrap();
        assert_eq!(outbound.partition_for_key(b"kafka"), 4);
        assert_eq!(
            dlq.partition_for_key(b"kafka"),
            partitioner::partition_for_key(b"kafka", 3)
        );
        assert_eq!(outbound.partition_ids(), 0..12);
    }

    #[test]
    fn prefix_renames_but_keeps_logical_lookup() {
        let base = TopicCatalog::builtin().unwrap();
        let prefixed = base.with_prefix("it-1234-").unwrap();
        assert_eq!(prefixed.prefix(), "it-1234-");
        let outbound = prefixed.require(OUTBOUND_TOPIC).unwrap();
        assert_eq!(outbound.name, "it-1234-wa.outbound.v1");
        assert_eq!(outbound.logical_name(), OUTBOUND_TOPIC);
        assert_eq!(outbound.partitions, 12);
        assert_eq!(
            prefixed
                .by_wire_name("it-1234-wa.events.v1")
                .unwrap()
                .logical_name(),
            EVENTS_TOPIC
        );
        assert!(prefixed.by_wire_name(EVENTS_TOPIC).is_none());

        // Re-prefixing replaces, it does not stack; the original is untouched.
        let again = prefixed.with_prefix("x.").unwrap();
        assert_eq!(
            again.require(OUTBOUND_TOPIC).unwrap().name,
            "x.wa.outbound.v1"
        );
        assert_eq!(base.require(OUTBOUND_TOPIC).unwrap().name, OUTBOUND_TOPIC);
        assert_eq!(base.with_prefix("").unwrap(), *base);
    }

    #[test]
    fn prefix_must_keep_names_valid() {
        let base = TopicCatalog::builtin().unwrap();
        assert!(matches!(
            base.with_prefix("bad prefix/"),
            Err(TopicError::InvalidName { .. })
        ));
        assert!(matches!(
            base.with_prefix(&"p".repeat(240)),
            Err(TopicError::InvalidName { .. })
        ));
    }

    #[test]
    fn replication_factor_defaults_to_one() {
        let catalog = TopicCatalog::from_toml_str(&one_topic(VALID)).unwrap();
        let spec = catalog.get("t.v1").unwrap();
        assert_eq!(spec.replication_factor, 1);
        assert_eq!(spec.key, None);
        assert!(catalog.get("nope").is_none());
        assert_eq!(
            catalog.require("nope").unwrap_err(),
            TopicError::UnknownTopic("nope".into())
        );
    }

    #[test]
    fn rejects_empty_catalog() {
        assert_eq!(
            TopicCatalog::from_toml_str("").unwrap_err(),
            TopicError::Empty
        );
    }

    #[test]
    fn rejects_duplicates_and_collisions() {
        let twice = format!("{}{}", one_topic(VALID), one_topic(VALID));
        assert_eq!(
            TopicCatalog::from_toml_str(&twice).unwrap_err(),
            TopicError::DuplicateName("t.v1".into())
        );
        let colliding = format!(
            "{}{}",
            one_topic(VALID),
            one_topic(&VALID.replace("t.v1", "t_v1"))
        );
        assert_eq!(
            TopicCatalog::from_toml_str(&colliding).unwrap_err(),
            TopicError::CollidingNames {
                first: "t.v1".into(),
                second: "t_v1".into()
            }
        );
    }

    #[test]
    fn rejects_bad_entries() {
        let cases = [
            (
                VALID.replace("partitions = 2", "partitions = 0"),
                "partitions",
            ),
            (
                format!("{VALID}\nreplication_factor = 0"),
                "replication_factor",
            ),
            (
                VALID.replace("retention_ms = 1000", "retention_ms = 0"),
                "retention_ms",
            ),
            (
                VALID.replace("purpose = \"test\"", "purpose = \"  \""),
                "purpose",
            ),
            (VALID.replace("t.v1", "has space"), "invalid"),
            (VALID.replace("t.v1", ".."), "invalid"),
            (VALID.replace("t.v1", ""), "invalid"),
            (
                format!("{VALID}\n[topic.config]\n\"retention.ms\" = \"5\""),
                "own field",
            ),
        ];
        for (body, expected) in cases {
            let err = TopicCatalog::from_toml_str(&one_topic(&body)).unwrap_err();
            assert!(
                err.to_string().contains(expected),
                "{body:?}: `{err}` should mention `{expected}`"
            );
        }
    }

    #[test]
    fn retention_minus_one_means_forever() {
        let text = one_topic(&VALID.replace("retention_ms = 1000", "retention_ms = -1"));
        let catalog = TopicCatalog::from_toml_str(&text).unwrap();
        assert_eq!(
            catalog.get("t.v1").unwrap().kafka_configs()["retention.ms"],
            "-1"
        );
    }

    #[test]
    fn rejects_unknown_fields_and_policies() {
        let typo = one_topic(&format!("{VALID}\npartition = 3"));
        assert!(matches!(
            TopicCatalog::from_toml_str(&typo),
            Err(TopicError::Parse(_))
        ));
        let policy = one_topic(&VALID.replace("\"delete\"", "\"shred\""));
        assert!(matches!(
            TopicCatalog::from_toml_str(&policy),
            Err(TopicError::Parse(_))
        ));
        // A missing required field is a parse error too.
        let missing = one_topic(&VALID.replace("partitions = 2", ""));
        assert!(matches!(
            TopicCatalog::from_toml_str(&missing),
            Err(TopicError::Parse(_))
        ));
    }

    #[test]
    fn cleanup_policies_parse_and_print() {
        for (text, policy) in [
            ("delete", CleanupPolicy::Delete),
            ("compact", CleanupPolicy::Compact),
            ("compact,delete", CleanupPolicy::CompactDelete),
            ("delete,compact", CleanupPolicy::CompactDelete),
        ] {
            let body = VALID.replace("\"delete\"", &format!("\"{text}\""));
            let catalog = TopicCatalog::from_toml_str(&one_topic(&body)).unwrap();
            let spec = catalog.get("t.v1").unwrap();
            assert_eq!(spec.cleanup_policy, policy);
            assert_eq!(
                spec.kafka_configs()["cleanup.policy"],
                policy.as_kafka_str()
            );
        }
        assert_eq!(CleanupPolicy::CompactDelete.to_string(), "compact,delete");
    }
}
