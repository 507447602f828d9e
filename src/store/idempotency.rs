//! Idempotency keys: the first answer to a client's `Idempotency-Key`, replayed for 24 hours.
//!
//! A key is first *claimed* (a row with status 0 and a short expiry), then *completed* with the
//! answer. The claim is an insert that only one request can win. A claim whose request died
//! (its process was killed between claiming and answering) expires within seconds and is taken
//! over by the client's retry; the claim's first time survives the takeover, so the retry
//! derives the same message ids as the request it replaces
//! ([`MessageIds::Idempotent`](crate::send::MessageIds)) and a message appended twice is still
//! delivered once.

use super::{Store, StoreError};
use crate::domain::now_ms;

/// The fingerprint of a request under an idempotency key: its route and its exact body. The
/// same key with another fingerprint is a client error, and message ids derived from a claim
/// include it.
pub fn request_fingerprint(route: &str, body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(route.as_bytes());
    hasher.update([0]);
    hasher.update(body);
    hex::encode(hasher.finalize())
}

/// What claiming a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// The key is ours: run the request, then [`Store::complete_idempotency_key`].
    Claimed {
        /// When the key was first claimed for this request body: kept when an abandoned
        /// claim of the same body is taken over, new otherwise.
        claimed_at_ms: i64,
    },
    /// Another request with this key is still running.
    InProgress {
        /// The fingerprint of that request's body.
        request_hash: String,
    },
    /// The key was answered before.
    Answered {
        /// The fingerprint of the first request.
        request_hash: String,
        /// Its HTTP status.
        status: u16,
        /// Its body.
        body: String,
    },
}

impl Store {
    /// Claims `(user_id, key)` for a request with `request_hash`, or reports who has it. An
    /// expired row (answer older than its retention, or an abandoned claim) is taken over; an
    /// abandoned claim of the same body keeps its first claim time.
    pub async fn claim_idempotency_key(
        &self,
        user_id: &str,
        key: &str,
        request_hash: &str,
        claim_ttl_ms: i64,
    ) -> Result<IdempotencyClaim, StoreError> {
        let now = now_ms();
        let taken: Option<i64> = sqlx::query_scalar(
            "INSERT INTO idempotency_keys (user_id, idempotency_key, request_hash, response_status, response_body, \
             created_at, expires_at) VALUES ($1, $2, $3, 0, '', $4, $5) \
             ON CONFLICT (user_id, idempotency_key) DO UPDATE SET request_hash = excluded.request_hash, \
             created_at = CASE WHEN idempotency_keys.response_status = 0 \
               AND idempotency_keys.request_hash = excluded.request_hash \
               THEN idempotency_keys.created_at ELSE excluded.created_at END, \
             response_status = 0, response_body = '', expires_at = excluded.expires_at \
             WHERE idempotency_keys.expires_at < $4 RETURNING created_at",
        )
        .bind(user_id)
        .bind(key)
        .bind(request_hash)
        .bind(now)
        .bind(now + claim_ttl_ms)
        .fetch_optional(self.pool())
        .await?;
        if let Some(claimed_at_ms) = taken {
            return Ok(IdempotencyClaim::Claimed { claimed_at_ms });
        }
        let row: Option<(String, i32, String)> = sqlx::query_as(
            "SELECT request_hash, CAST(response_status AS INTEGER), response_body FROM idempotency_keys \
             WHERE user_id = $1 AND idempotency_key = $2",
        )
        .bind(user_id)
        .bind(key)
        .fetch_optional(self.pool())
        .await?;
        Ok(match row {
            // Deleted between the two statements: whoever deleted it released it.
            None => IdempotencyClaim::InProgress {
                request_hash: request_hash.to_owned(),
            },
            Some((request_hash, 0, _)) => IdempotencyClaim::InProgress { request_hash },
            Some((request_hash, status, body)) => IdempotencyClaim::Answered {
                request_hash,
                status: u16::try_from(status).unwrap_or(500),
                body,
            },
        })
    }

    /// Stores the answer of a claimed key, kept for `retention_ms`.
    pub async fn complete_idempotency_key(
        &self,
        user_id: &str,
        key: &str,
        status: u16,
        body: &str,
        retention_ms: i64,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        sqlx::query(
            "UPDATE idempotency_keys SET response_status = $1, response_body = $2, expires_at = $3 \
             WHERE user_id = $4 AND idempotency_key = $5",
        )
        .bind(i32::from(status))
        .bind(body)
        .bind(now + retention_ms)
        .bind(user_id)
        .bind(key)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Gives a claimed key back (the request failed), so the client's retry with the same key
    /// runs again at once. The claim row stays, expired, with its first claim time: a failed
    /// append may still have reached the log (a timeout after the broker stored it), and a
    /// retry of the same body then derives the same message ids.
    pub async fn release_idempotency_key(
        &self,
        user_id: &str,
        key: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE idempotency_keys SET expires_at = 0 \
             WHERE user_id = $1 AND idempotency_key = $2 AND response_status = 0",
        )
        .bind(user_id)
        .bind(key)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Housekeeping: removes expired keys; returns how many.
    pub async fn purge_idempotency_keys(&self) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM idempotency_keys WHERE expires_at < $1")
            .bind(now_ms())
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }
}
