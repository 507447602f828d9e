//! API key secrets and the batched `last_used` bookkeeping.
//!
//! Keys look like `wg_` + 40 characters of `[A-Za-z0-9]`. The gateway keeps only their SHA-256;
//! a request is authenticated by hashing the presented key and looking the hash up.
//!
//! `last_used_at` would cost a database write per request if written inline; instead every use is
//! noted in memory ([`LastUsedTracker::note`]) and flushed in one transaction per interval.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::store::Store;

/// Prefix of every key, so secret scanners and humans recognise them.
pub const KEY_PREFIX: &str = "wg_";
/// Random characters after the prefix (40 × log2(62) ≈ 238 bits).
const KEY_RANDOM_LEN: usize = 40;
/// Characters kept in clear (with the prefix) to tell keys apart in listings.
const DISPLAY_PREFIX_LEN: usize = 8;

/// A freshly generated key: the secret (shown once), its hash and its display prefix.
#[derive(Debug)]
pub struct GeneratedKey {
    /// The full key, returned to the client exactly once.
    pub secret: String,
    /// SHA-256 hex, what is stored.
    pub hash: String,
    /// `wg_` + first characters, for listings.
    pub display_prefix: String,
}

/// Generates a new random key.
pub fn generate() -> GeneratedKey {
    let secret = format!("{KEY_PREFIX}{}", super::random_token(KEY_RANDOM_LEN));
    GeneratedKey {
        hash: super::sha256_hex(&secret),
        display_prefix: secret[..KEY_PREFIX.len() + DISPLAY_PREFIX_LEN].to_owned(),
        secret,
    }
}

/// Whether a presented credential has the shape of an API key (as opposed to a JWT).
pub fn looks_like_key(credential: &str) -> bool {
    credential.len() >= KEY_PREFIX.len() + 32
        && credential.starts_with(KEY_PREFIX)
        && credential[KEY_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric())
}

/// Remembers the latest use of each key until the next flush.
#[derive(Debug, Default)]
pub struct LastUsedTracker {
    pending: Mutex<HashMap<String, i64>>,
}

impl LastUsedTracker {
    /// Notes that key `id` was used at `at_ms`. O(1), no I/O.
    pub fn note(&self, id: &str, at_ms: i64) {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match pending.get_mut(id) {
            Some(existing) => *existing = (*existing).max(at_ms),
            None => {
                pending.insert(id.to_owned(), at_ms);
            }
        }
    }

    /// Writes everything noted so far in one transaction. On failure the uses are put back so the
    /// next flush retries them.
    pub async fn flush(&self, store: &Store) -> anyhow::Result<usize> {
        let batch: Vec<(String, i64)> = {
            let mut pending = self
                .pending
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            pending.drain().collect()
        };
        if batch.is_empty() {
            return Ok(0);
        }
        if let Err(err) = store.record_api_key_usage(&batch).await {
            for (id, at) in &batch {
                self.note(id, *at);
            }
            return Err(err.into());
        }
        Ok(batch.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_documented_shape() {
        let key = generate();
        assert!(key.secret.starts_with("wg_"));
        assert_eq!(key.secret.len(), 3 + 40);
        assert!(looks_like_key(&key.secret));
        assert_eq!(key.hash, crate::auth::sha256_hex(&key.secret));
        assert!(key.secret.starts_with(&key.display_prefix));
        assert_ne!(generate().secret, key.secret);
        assert!(!looks_like_key("wg_short"));
        assert!(!looks_like_key("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig"));
    }

    #[test]
    fn tracker_keeps_the_latest_use() {
        let tracker = LastUsedTracker::default();
        tracker.note("k", 10);
        tracker.note("k", 5);
        tracker.note("j", 7);
        let pending = tracker.pending.lock().unwrap_or_else(|p| p.into_inner());
        assert_eq!(pending.get("k"), Some(&10));
        assert_eq!(pending.len(), 2);
    }
}

/// How long a verified key (with its owner) is trusted without reading the store again. Revoking
/// a key or changing its owner in this process takes effect at once (the entry is dropped);
/// through another api replica it takes at most this long.
const VERIFIED_TTL: std::time::Duration = std::time::Duration::from_secs(2);

/// A verified key and its owner, as of `at`.
type Verified = (
    crate::store::ApiKeyRecord,
    crate::store::User,
    std::time::Instant,
);

/// Recently verified keys by hash, so an integration posting thousands of sends a second costs
/// the store two reads per key every couple of seconds, not two per request.
#[derive(Debug, Default)]
pub struct VerifiedKeys {
    entries: Mutex<HashMap<String, Verified>>,
}

impl VerifiedKeys {
    /// The key with this hash and its owner, if verified recently.
    pub fn get(&self, hash: &str) -> Option<(crate::store::ApiKeyRecord, crate::store::User)> {
        let entries = self.lock();
        let (record, user, at) = entries.get(hash)?;
        (at.elapsed() < VERIFIED_TTL).then(|| (record.clone(), user.clone()))
    }

    /// Remembers a verified key.
    pub fn put(&self, hash: String, record: crate::store::ApiKeyRecord, user: crate::store::User) {
        let mut entries = self.lock();
        if entries.len() >= 10_000 {
            entries.retain(|_, (_, _, at)| at.elapsed() < VERIFIED_TTL);
        }
        entries.insert(hash, (record, user, std::time::Instant::now()));
    }

    /// Forgets every key of `user_id` (a key was revoked, or the user changed).
    pub fn forget_user(&self, user_id: &str) {
        self.lock()
            .retain(|_, (record, _, _)| record.user_id != user_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Verified>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
