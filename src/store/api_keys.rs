//! API keys: `wg_…` secrets shown once, stored as SHA-256 hashes and looked up by hash.
//! A fast hash is right here (unlike passwords): keys carry 238 bits of randomness.

use sqlx::FromRow;

use super::{Store, StoreError};
use crate::domain::now_ms;

/// A stored API key (no secret).
#[derive(Clone, Debug, FromRow)]
pub struct ApiKeyRecord {
    /// Row id, used to revoke.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// When set, the key may only act on this session and may omit `sessionId`.
    pub session_id: Option<String>,
    /// The owner's label.
    pub name: String,
    /// First characters of the key, so owners can tell keys apart.
    pub key_prefix: String,
    /// Expiry instant (ms), if any.
    pub expires_at: Option<i64>,
    /// Last use, flushed in batches (see `auth::api_keys::LastUsedTracker`).
    pub last_used_at: Option<i64>,
    /// Revocation instant.
    pub revoked_at: Option<i64>,
    /// Creation instant.
    pub created_at: i64,
}

impl ApiKeyRecord {
    /// Whether the key may be used at `now` (ms).
    pub fn is_usable(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| at > now)
    }
}

/// What to store for a new key.
#[derive(Debug)]
pub struct NewApiKey<'a> {
    /// Owner.
    pub user_id: &'a str,
    /// Optional session binding.
    pub session_id: Option<&'a str>,
    /// Label.
    pub name: &'a str,
    /// SHA-256 (hex) of the full key.
    pub key_hash: &'a str,
    /// Display prefix.
    pub key_prefix: &'a str,
    /// Optional expiry (ms).
    pub expires_at: Option<i64>,
}

const COLUMNS: &str =
    "id, user_id, session_id, name, key_prefix, expires_at, last_used_at, revoked_at, created_at";

impl Store {
    /// Stores a new key and returns its record.
    pub async fn insert_api_key(&self, new: NewApiKey<'_>) -> Result<ApiKeyRecord, StoreError> {
        let id = crate::domain::new_id();
        sqlx::query(
            "INSERT INTO api_keys (id, user_id, session_id, name, key_hash, key_prefix, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&id)
        .bind(new.user_id)
        .bind(new.session_id)
        .bind(new.name)
        .bind(new.key_hash)
        .bind(new.key_prefix)
        .bind(new.expires_at)
        .bind(now_ms())
        .execute(self.pool())
        .await
        .map_err(|e| StoreError::from_sqlx(e, "api key collision"))?;
        self.api_key_for_user(new.user_id, &id).await
    }

    /// The key with this hash, whatever its state (callers check [`ApiKeyRecord::is_usable`]).
    pub async fn api_key_by_hash(
        &self,
        key_hash: &str,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM api_keys WHERE key_hash = $1"
        )))
        .bind(key_hash)
        .fetch_optional(self.pool())
        .await?)
    }

    /// One of the user's keys; `NotFound` for another user's key (isolation).
    pub async fn api_key_for_user(
        &self,
        user_id: &str,
        id: &str,
    ) -> Result<ApiKeyRecord, StoreError> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM api_keys WHERE id = $1 AND user_id = $2"
        )))
        .bind(id)
        .bind(user_id)
        .fetch_optional(self.pool())
        .await?
        .ok_or(StoreError::NotFound)
    }

    /// The user's keys, newest first (revoked ones included, marked as such).
    pub async fn list_api_keys(&self, user_id: &str) -> Result<Vec<ApiKeyRecord>, StoreError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM api_keys WHERE user_id = $1 ORDER BY created_at DESC, id DESC"
        )))
        .bind(user_id)
        .fetch_all(self.pool())
        .await?)
    }

    /// Revokes one of the user's keys; `NotFound` if it is not theirs or already revoked.
    pub async fn revoke_api_key(&self, user_id: &str, id: &str) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND user_id = $3 AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(id)
        .bind(user_id)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Writes a batch of `last_used_at` values in one transaction, never moving a value backwards.
    pub async fn record_api_key_usage(&self, uses: &[(String, i64)]) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool().begin().await?;
        for (id, at) in uses {
            sqlx::query(
                "UPDATE api_keys SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1)",
            )
            .bind(*at)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
