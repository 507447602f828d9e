//! Accepting sends: validated requests become `wa.outbound.v1` records, keyed by session, and
//! are acknowledged only once the log holds them durably.
//!
//! The log is the source of truth for an accepted message: the `messages` row is written by the
//! delivery consumer when it reads the record (in batches, idempotently), so the ingress pays
//! one batched log append per request and nothing else on the store's write path.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use producers::{AppendError, LogProducer, OutboundEnvelope};

use super::request::ValidatedSend;
use crate::domain::{SessionId, now_ms};
use crate::store::{SessionOwnership, Store, StoreError};

/// How long a confirmed "this user owns this session" is trusted without asking the store. A
/// session deleted within this window may still get a send accepted; delivery then fails it
/// (session gone) and dead-letters it, so nothing is lost or misrouted.
const OWNERSHIP_TTL: Duration = Duration::from_secs(5);

/// Entries kept before the ownership cache is swept.
const OWNERSHIP_CAPACITY: usize = 100_000;

/// Where the ids of a request's messages come from.
#[derive(Debug, Clone)]
pub enum MessageIds {
    /// New UUIDv7s.
    Fresh,
    /// Derived from the request's `Idempotency-Key` claim, so a second append of the same
    /// request (its claim taken over after the first process died, or after it was merely
    /// slow) carries the same ids, and delivery, idempotent by message id, sends each once.
    /// Still UUIDv7-shaped and time-ordered: the time is the claim's.
    Idempotent {
        /// The user the key belongs to (keys are per user).
        user_id: String,
        /// The `Idempotency-Key`.
        key: String,
        /// The fingerprint of the request (route and body): another body under a reclaimed
        /// key gets other ids.
        request_hash: String,
        /// When the key was first claimed for this request (kept across takeovers).
        claimed_at_ms: i64,
    },
}

impl MessageIds {
    /// The id of the `index`-th message of the request.
    fn id(&self, index: usize) -> String {
        match self {
            MessageIds::Fresh => uuid::Uuid::now_v7().to_string(),
            MessageIds::Idempotent {
                user_id,
                key,
                request_hash,
                claimed_at_ms,
            } => {
                use sha2::{Digest, Sha256};
                let mut hasher = Sha256::new();
                for part in [user_id.as_bytes(), key.as_bytes(), request_hash.as_bytes()] {
                    hasher.update(part);
                    hasher.update([0]);
                }
                hasher.update((index as u64).to_be_bytes());
                let digest = hasher.finalize();
                let mut tail = [0_u8; 10];
                tail.copy_from_slice(&digest[..10]);
                let millis = u64::try_from(*claimed_at_ms).unwrap_or(0);
                uuid::Builder::from_unix_timestamp_millis(millis, &tail)
                    .into_uuid()
                    .to_string()
            }
        }
    }

    /// The key to carry in the envelope, if any.
    fn key(&self) -> Option<&str> {
        match self {
            MessageIds::Fresh => None,
            MessageIds::Idempotent { key, .. } => Some(key.as_str()),
        }
    }
}

/// One accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedMessage {
    /// The gateway's id (UUIDv7: time-ordered), `X-Message-Id` at the worker.
    pub message_id: String,
    /// When it was accepted (ms).
    pub accepted_at: i64,
}

/// The send ingress: ownership checks and durable appends.
#[derive(Debug)]
pub struct Ingress {
    log: LogProducer,
    /// Wire name of the outbound topic (prefixed in tests).
    outbound_topic: String,
    /// `(user id, session id)` → when ownership was last confirmed.
    owned: Mutex<HashMap<(String, String), Instant>>,
}

impl Ingress {
    /// An ingress appending to `outbound_topic` of `log`.
    pub fn new(log: LogProducer, outbound_topic: String) -> Self {
        Self {
            log,
            outbound_topic,
            owned: Mutex::new(HashMap::new()),
        }
    }

    /// The log this ingress appends to.
    pub fn log(&self) -> &LogProducer {
        &self.log
    }

    /// Whether `user_id` owns the live session `session_id` (and whether it was ever placed),
    /// from a short-lived cache of placed sessions.
    pub async fn owns_session(
        &self,
        store: &Store,
        user_id: &str,
        session_id: &str,
    ) -> Result<SessionOwnership, StoreError> {
        let key = (user_id.to_owned(), session_id.to_owned());
        let now = Instant::now();
        if self
            .lock()
            .get(&key)
            .is_some_and(|confirmed| now.duration_since(*confirmed) < OWNERSHIP_TTL)
        {
            return Ok(SessionOwnership::Placed);
        }
        let ownership = store.session_ownership(user_id, session_id).await?;
        let mut owned = self.lock();
        if ownership == SessionOwnership::Placed {
            if owned.len() >= OWNERSHIP_CAPACITY {
                owned.retain(|_, confirmed| now.duration_since(*confirmed) < OWNERSHIP_TTL);
            }
            owned.insert(key, now);
        } else {
            owned.remove(&key);
        }
        Ok(ownership)
    }

    /// Forgets a session's cached ownership (it was deleted here).
    pub fn forget_session(&self, session_id: &str) {
        self.lock().retain(|(_, session), _| session != session_id);
    }

    /// Appends `sends` (already validated, of one user and one session) as one batch and
    /// returns their ids in input order, once the log holds them durably. The sends are taken
    /// by value: their worker bodies move into the envelopes.
    pub async fn accept(
        &self,
        user_id: &str,
        session_id: &SessionId,
        sends: Vec<ValidatedSend>,
        ids: MessageIds,
    ) -> Result<Vec<AcceptedMessage>, AppendError> {
        let accepted_at = now_ms();
        let mut accepted = Vec::with_capacity(sends.len());
        let mut records = Vec::with_capacity(sends.len());
        for (index, send) in sends.into_iter().enumerate() {
            let message_id = ids.id(index);
            let mut envelope = OutboundEnvelope::new(
                message_id.clone(),
                user_id,
                session_id.as_str(),
                send.kind.protocol_name(),
                send.worker_body,
                accepted_at,
            );
            if let Some(key) = ids.key() {
                envelope = envelope.with_idempotency_key(key);
            }
            records.push((session_id.as_str().to_owned(), envelope.encode()));
            accepted.push(AcceptedMessage {
                message_id,
                accepted_at,
            });
        }
        self.log.append_batch(&self.outbound_topic, records).await?;
        Ok(accepted)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Instant>> {
        self.owned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
