//! The versioned JSON values carried on the log.
//!
//! [`OutboundEnvelope`] is the value of `wa.outbound.v1` records, [`EventEnvelope`] the
//! value of `wa.events.v1` records. Both carry a schema version `v`; a reader rejects a
//! version it does not know with [`EnvelopeError::UnsupportedVersion`] instead of
//! misreading it, so an incompatible change is made by bumping `v` (and the topic's `.vN`
//! suffix if old readers must never see it). Adding an optional field is compatible and
//! keeps `v`: unknown fields are ignored on decode.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The only schema version this build writes and reads, for both envelopes.
pub const ENVELOPE_VERSION: u16 = 1;

/// Why a log record's value could not be decoded; the consumer dead-letters such a record
/// rather than retrying it, since it will never decode.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Not JSON, or JSON of the wrong shape for the envelope.
    #[error("envelope is malformed: {0}")]
    Malformed(#[from] serde_json::Error),
    /// A JSON object without the version field `v`.
    #[error("envelope has no version field `v`")]
    MissingVersion,
    /// Written by a newer (or foreign) producer with a schema this build does not know.
    #[error("envelope version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion {
        /// The version found in the record.
        found: u64,
        /// The version this build reads.
        supported: u16,
    },
    /// A field that identifies or routes the record is empty.
    #[error("envelope field `{0}` must not be empty")]
    EmptyField(&'static str),
}

/// Just the version, read first so that a record of another version is reported as such
/// and not as whatever field it happens to lack.
#[derive(Deserialize)]
struct VersionProbe {
    /// The schema version, if present.
    v: Option<u64>,
}

/// Checks the version, then decodes the whole value.
fn decode_versioned<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, EnvelopeError> {
    let probe: VersionProbe = serde_json::from_slice(bytes)?;
    match probe.v {
        None => Err(EnvelopeError::MissingVersion),
        Some(v) if v == u64::from(ENVELOPE_VERSION) => Ok(serde_json::from_slice(bytes)?),
        Some(found) => Err(EnvelopeError::UnsupportedVersion {
            found,
            supported: ENVELOPE_VERSION,
        }),
    }
}

/// Serialises an envelope. Infallible for the types of this module: every field is a
/// string, integer, option, or `serde_json::Value` (whose map keys are strings and whose
/// numbers are finite), written to an in-memory buffer.
fn encode_json<T: Serialize>(value: &T) -> Vec<u8> {
    match serde_json::to_vec(value) {
        Ok(bytes) => bytes,
        Err(err) => unreachable!("envelope serialisation cannot fail: {err}"),
    }
}

/// Fails with [`EnvelopeError::EmptyField`] if `value` is empty.
fn require_non_empty(field: &'static str, value: &str) -> Result<(), EnvelopeError> {
    if value.is_empty() {
        Err(EnvelopeError::EmptyField(field))
    } else {
        Ok(())
    }
}

/// A send request as accepted by the HTTP ingress: the value of a `wa.outbound.v1`
/// record, keyed by [`session_id`](Self::session_id). Carries everything the consumer
/// needs to deliver it to the session's worker without reading the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundEnvelope {
    /// Schema version, [`ENVELOPE_VERSION`].
    pub v: u16,
    /// The gateway's id of the message (the row the ingress created).
    pub message_id: String,
    /// The tenant that sent it.
    pub user_id: String,
    /// The WhatsApp session it is sent from; also the record key.
    pub session_id: String,
    /// The client's idempotency key, if it gave one, so a redelivery can be recognised.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// The message type (`text`, `image`, ...), i.e. which worker endpoint takes it.
    pub kind: String,
    /// The body sent to the worker, as the worker protocol defines it for `kind`.
    pub payload: serde_json::Value,
    /// When the ingress accepted the request, in milliseconds since the Unix epoch.
    pub accepted_at_ms: i64,
    /// Which delivery attempt this record is: 1 when first accepted, incremented each
    /// time the request is re-enqueued (retry or replay from the dead-letter topic).
    pub attempt: u32,
}

impl OutboundEnvelope {
    /// A first-attempt envelope of the current version, without idempotency key.
    #[must_use]
    pub fn new(
        message_id: impl Into<String>,
        user_id: impl Into<String>,
        session_id: impl Into<String>,
        kind: impl Into<String>,
        payload: serde_json::Value,
        accepted_at_ms: i64,
    ) -> Self {
        Self {
            v: ENVELOPE_VERSION,
            message_id: message_id.into(),
            user_id: user_id.into(),
            session_id: session_id.into(),
            idempotency_key: None,
            kind: kind.into(),
            payload,
            accepted_at_ms,
            attempt: 1,
        }
    }

    /// How long ago it was accepted, at `now_ms` (zero if the clock went back).
    #[must_use]
    pub fn age_at(&self, now_ms: i64) -> std::time::Duration {
        std::time::Duration::from_millis(u64::try_from(now_ms - self.accepted_at_ms).unwrap_or(0))
    }

    /// The same envelope carrying the client's idempotency key.
    #[must_use]
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// A copy for re-enqueueing: the same request with `attempt` one higher.
    #[must_use]
    pub fn next_attempt(&self) -> Self {
        Self {
            attempt: self.attempt.saturating_add(1),
            ..self.clone()
        }
    }

    /// The record key: the session id, so a session's messages share a partition and stay
    /// in order.
    #[must_use]
    pub fn key(&self) -> &[u8] {
        self.session_id.as_bytes()
    }

    /// The record value: compact JSON.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        encode_json(self)
    }

    /// Reads a record value, rejecting unknown versions and envelopes missing an id, the
    /// session or the kind.
    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let envelope: Self = decode_versioned(bytes)?;
        require_non_empty("messageId", &envelope.message_id)?;
        require_non_empty("userId", &envelope.user_id)?;
        require_non_empty("sessionId", &envelope.session_id)?;
        require_non_empty("kind", &envelope.kind)?;
        Ok(envelope)
    }
}

/// Something a worker reported, normalised: the value of a `wa.events.v1` record, keyed
/// by [`session_id`](Self::session_id) so a session's events are applied in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventEnvelope {
    /// Schema version, [`ENVELOPE_VERSION`].
    pub v: u16,
    /// The WhatsApp session the event concerns; also the record key.
    pub session_id: String,
    /// The worker that reported it, when known.
    #[serde(default)]
    pub worker_id: Option<String>,
    /// The session-assignment epoch the worker held, so events from a worker that has
    /// since lost the session can be recognised and ignored.
    #[serde(default)]
    pub epoch: Option<i64>,
    /// When the gateway received the event, in milliseconds since the Unix epoch.
    pub received_at_ms: i64,
    /// What happened.
    pub event: WorkerEvent,
}

impl EventEnvelope {
    /// An envelope of the current version.
    #[must_use]
    pub fn new(session_id: impl Into<String>, received_at_ms: i64, event: WorkerEvent) -> Self {
        Self {
            v: ENVELOPE_VERSION,
            session_id: session_id.into(),
            worker_id: None,
            epoch: None,
            received_at_ms,
            event,
        }
    }

    /// The same envelope attributed to a worker and its assignment epoch.
    #[must_use]
    pub fn attributed_to(mut self, worker_id: impl Into<String>, epoch: Option<i64>) -> Self {
        self.worker_id = Some(worker_id.into());
        self.epoch = epoch;
        self
    }

    /// The record key: the session id.
    #[must_use]
    pub fn key(&self) -> &[u8] {
        self.session_id.as_bytes()
    }

    /// The record value: compact JSON.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        encode_json(self)
    }

    /// Reads a record value, rejecting unknown versions and envelopes without a session.
    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let envelope: Self = decode_versioned(bytes)?;
        require_non_empty("sessionId", &envelope.session_id)?;
        Ok(envelope)
    }
}

/// The kinds of worker report the gateway acts on, tagged by `type`
/// (`session_status`, `message_status`, `message_waiting`, `message_received`) with camelCase
/// fields.
/// Statuses are kept as the worker's strings (e.g. `CONNECTED`, `DELIVERED`) so that this
/// crate does not own the gateway's domain enums; the consumer parses them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum WorkerEvent {
    /// The session's connection state changed, or a new QR code is to be scanned.
    SessionStatus {
        /// The new state (`INIT`, `QR_REQUIRED`, `CONNECTED`, ...).
        status: String,
        /// The QR code to show the user, while one is required.
        #[serde(default)]
        qr_code: Option<String>,
        /// The linked phone number, once connected.
        #[serde(default)]
        phone_number: Option<String>,
        /// The WhatsApp display name of the linked account, once connected.
        #[serde(default)]
        display_name: Option<String>,
        /// Why the session disconnected or failed, when it did.
        #[serde(default)]
        reason: Option<String>,
    },
    /// An outbound message advanced (sent, delivered, read) or failed.
    MessageStatus {
        /// The gateway's id of the message.
        message_id: String,
        /// The new state (`SENT`, `DELIVERED`, `READ`, `FAILED`, ...).
        status: String,
        /// Why it failed, when it did.
        #[serde(default)]
        error_message: Option<String>,
        /// When it was delivered, in milliseconds since the Unix epoch.
        #[serde(default)]
        delivered_at: Option<i64>,
        /// When it was read, in milliseconds since the Unix epoch.
        #[serde(default)]
        read_at: Option<i64>,
        /// WhatsApp's id of the message, from the worker's answer to the send; later receipts
        /// may name the message by it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        whatsapp_message_id: Option<String>,
        /// Delivery attempts it took, when the delivery consumer reports the outcome.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attempts: Option<u32>,
    },
    /// An outbound message's delivery attempt did not get through: it waits and is tried again
    /// (written by the delivery consumer, so that its status can say why it waits).
    MessageWaiting {
        /// The gateway's id of the message.
        message_id: String,
        /// Why, as a code (`SESSION_RECONNECTING`, `WORKER_DOWN`, `WORKER_RATE_LIMITED`, ...).
        reason: String,
        /// The last attempt's failure in words.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
        /// Attempts so far.
        attempts: u32,
        /// When the next attempt is due, in milliseconds since the Unix epoch.
        next_attempt_at: i64,
    },
    /// A message arrived on the session.
    MessageReceived {
        /// WhatsApp's id of the message.
        message_id: String,
        /// The sender's WhatsApp id (JID).
        from: String,
        /// The message type (`text`, `image`, ...).
        message_type: String,
        /// The message content as the worker reported it.
        body: serde_json::Value,
    },
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn outbound() -> OutboundEnvelope {
        OutboundEnvelope::new(
            "msg-1",
            "user-1",
            "sales-team_01",
            "text",
            json!({"to": "4915112345678", "text": "héllo"}),
            1_700_000_000_123,
        )
    }

    #[test]
    fn age_counts_from_acceptance_and_never_goes_negative() {
        let envelope = outbound();
        assert_eq!(
            envelope.age_at(1_700_000_000_123 + 250),
            std::time::Duration::from_millis(250)
        );
        assert_eq!(
            envelope.age_at(1_600_000_000_000),
            std::time::Duration::ZERO
        );
    }

    #[test]
    fn outbound_round_trips() {
        let plain = outbound();
        assert_eq!(OutboundEnvelope::decode(&plain.encode()).unwrap(), plain);
        let keyed = outbound().with_idempotency_key("idem-7").next_attempt();
        assert_eq!(keyed.attempt, 2);
        assert_eq!(OutboundEnvelope::decode(&keyed.encode()).unwrap(), keyed);
    }

    #[test]
    fn outbound_wire_format_is_camel_case() {
        let value: serde_json::Value =
            serde_json::from_slice(&outbound().with_idempotency_key("k").encode()).unwrap();
        assert_eq!(
            value,
            json!({
                "v": 1,
                "messageId": "msg-1",
                "userId": "user-1",
                "sessionId": "sales-team_01",
                "idempotencyKey": "k",
                "kind": "text",
                "payload": {"to": "4915112345678", "text": "héllo"},
                "acceptedAtMs": 1_700_000_000_123_i64,
                "attempt": 1
            })
        );
    }

    #[test]
    fn outbound_defaults_and_key() {
        let envelope = outbound();
        assert_eq!(envelope.v, ENVELOPE_VERSION);
        assert_eq!(envelope.attempt, 1);
        assert_eq!(envelope.idempotency_key, None);
        assert_eq!(envelope.key(), b"sales-team_01");
        // An absent idempotency key decodes as None; unknown fields are ignored.
        let bytes = br#"{"v":1,"messageId":"m","userId":"u","sessionId":"s","kind":"text",
            "payload":null,"acceptedAtMs":5,"attempt":1,"addedLater":true}"#;
        let decoded = OutboundEnvelope::decode(bytes).unwrap();
        assert_eq!(decoded.idempotency_key, None);
        assert_eq!(decoded.payload, serde_json::Value::Null);
    }

    #[test]
    fn rejects_unknown_and_missing_versions() {
        let mut value: serde_json::Value = serde_json::from_slice(&outbound().encode()).unwrap();
        value["v"] = json!(2);
        let bytes = serde_json::to_vec(&value).unwrap();
        assert!(matches!(
            OutboundEnvelope::decode(&bytes),
            Err(EnvelopeError::UnsupportedVersion {
                found: 2,
                supported: 1
            })
        ));
        // A future version is reported as such even if its shape is entirely different.
        assert!(matches!(
            OutboundEnvelope::decode(br#"{"v":7,"whatever":[]}"#),
            Err(EnvelopeError::UnsupportedVersion { found: 7, .. })
        ));
        assert!(matches!(
            EventEnvelope::decode(br#"{"v":0}"#),
            Err(EnvelopeError::UnsupportedVersion { found: 0, .. })
        ));
        value.as_object_mut().unwrap().remove("v");
        let bytes = serde_json::to_vec(&value).unwrap();
        assert!(matches!(
            OutboundEnvelope::decode(&bytes),
            Err(EnvelopeError::MissingVersion)
        ));
    }

    #[test]
    fn rejects_malformed_values() {
        for bytes in [
            &b"not json"[..],
            b"[1,2]",
            b"",
            br#"{"v":"1"}"#,
            br#"{"v":1,"messageId":"m"}"#,
        ] {
            assert!(
                matches!(
                    OutboundEnvelope::decode(bytes),
                    Err(EnvelopeError::Malformed(_))
                ),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn rejects_empty_routing_fields() {
        let mut envelope = outbound();
        envelope.session_id.clear();
        let err = OutboundEnvelope::decode(&envelope.encode()).unwrap_err();
        assert!(matches!(err, EnvelopeError::EmptyField("sessionId")));
        assert_eq!(
            err.to_string(),
            "envelope field `sessionId` must not be empty"
        );

        let mut envelope = outbound();
        envelope.kind.clear();
        assert!(matches!(
            OutboundEnvelope::decode(&envelope.encode()),
            Err(EnvelopeError::EmptyField("kind"))
        ));

        let event = EventEnvelope::new(
            "",
            1,
            WorkerEvent::SessionStatus {
                status: "INIT".into(),
                qr_code: None,
                phone_number: None,
                display_name: None,
                reason: None,
            },
        );
        assert!(matches!(
            EventEnvelope::decode(&event.encode()),
            Err(EnvelopeError::EmptyField("sessionId"))
        ));
    }

    fn sample_events() -> Vec<WorkerEvent> {
        vec![
            WorkerEvent::SessionStatus {
                status: "QR_REQUIRED".into(),
                qr_code: Some("2@abc".into()),
                phone_number: None,
                display_name: None,
                reason: None,
            },
            WorkerEvent::SessionStatus {
                status: "CONNECTED".into(),
                qr_code: None,
                phone_number: Some("4915112345678".into()),
                display_name: Some("Sales".into()),
                reason: None,
            },
            WorkerEvent::MessageStatus {
                message_id: "msg-1".into(),
                status: "READ".into(),
                error_message: None,
                delivered_at: Some(1_700_000_001_000),
                read_at: Some(1_700_000_002_000),
                whatsapp_message_id: None,
                attempts: None,
            },
            WorkerEvent::MessageStatus {
                message_id: "msg-2".into(),
                status: "FAILED".into(),
                error_message: Some("not on WhatsApp".into()),
                delivered_at: None,
                read_at: None,
                whatsapp_message_id: None,
                attempts: None,
            },
            WorkerEvent::MessageReceived {
                message_id: "WA-3EB0".into(),
                from: "4915112345678@s.whatsapp.net".into(),
                message_type: "text".into(),
                body: json!({"text": "hi"}),
            },
        ]
    }

    #[test]
    fn events_round_trip() {
        for (i, event) in sample_events().into_iter().enumerate() {
            let plain = EventEnvelope::new("s-1", 1_700_000_000_000, event.clone());
            assert_eq!(EventEnvelope::decode(&plain.encode()).unwrap(), plain);
            let attributed = plain.attributed_to(format!("worker-{i}"), Some(3));
            assert_eq!(attributed.key(), b"s-1");
            assert_eq!(
                EventEnvelope::decode(&attributed.encode()).unwrap(),
                attributed
            );
        }
    }

    #[test]
    fn event_wire_format_is_tagged_and_camel_case() {
        let envelope = EventEnvelope::new(
            "s-1",
            42,
            WorkerEvent::MessageStatus {
                message_id: "msg-1".into(),
                status: "DELIVERED".into(),
                error_message: None,
                delivered_at: Some(41),
                read_at: None,
                whatsapp_message_id: None,
                attempts: None,
            },
        )
        .attributed_to("w-1", Some(7));
        let value: serde_json::Value = serde_json::from_slice(&envelope.encode()).unwrap();
        assert_eq!(
            value,
            json!({
                "v": 1,
                "sessionId": "s-1",
                "workerId": "w-1",
                "epoch": 7,
                "receivedAtMs": 42,
                "event": {
                    "type": "message_status",
                    "messageId": "msg-1",
                    "status": "DELIVERED",
                    "errorMessage": null,
                    "deliveredAt": 41,
                    "readAt": null
                }
            })
        );
    }

    #[test]
    fn event_optional_fields_may_be_absent() {
        let bytes = br#"{"v":1,"sessionId":"s","receivedAtMs":1,
            "event":{"type":"session_status","status":"CONNECTED","phoneNumber":"49151"}}"#;
        let envelope = EventEnvelope::decode(bytes).unwrap();
        assert_eq!(envelope.worker_id, None);
        assert_eq!(envelope.epoch, None);
        assert_eq!(
            envelope.event,
            WorkerEvent::SessionStatus {
                status: "CONNECTED".into(),
                qr_code: None,
                phone_number: Some("49151".into()),
                display_name: None,
                reason: None,
            }
        );
        let received = br#"{"v":1,"sessionId":"s","receivedAtMs":1,"event":{"type":
            "message_received","messageId":"m","from":"f","messageType":"image","body":{}}}"#;
        assert!(matches!(
            EventEnvelope::decode(received).unwrap().event,
            WorkerEvent::MessageReceived { .. }
        ));
    }

    #[test]
    fn rejects_unknown_event_types() {
        let bytes = br#"{"v":1,"sessionId":"s","receivedAtMs":1,"event":{"type":"typing"}}"#;
        assert!(matches!(
            EventEnvelope::decode(bytes),
            Err(EnvelopeError::Malformed(_))
        ));
    }
}
