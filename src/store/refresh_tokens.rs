//! Refresh tokens: opaque, stored hashed, rotated on every use. All tokens descending from one
//! login form a family; presenting an already-used token means it was stolen (or replayed), and
//! the whole family is revoked.

use sqlx::FromRow;

use super::{Store, StoreError};
use crate::domain::now_ms;

/// A stored refresh token (never the token itself, only its hash).
#[derive(Clone, Debug, FromRow)]
pub struct RefreshTokenRecord {
    /// Row id.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// The login this token descends from.
    pub family_id: String,
    /// Expiry instant (ms).
    pub expires_at: i64,
    /// When it was exchanged for a successor; a second exchange is a replay.
    pub used_at: Option<i64>,
    /// When it was revoked (logout, reuse detection, password change).
    pub revoked_at: Option<i64>,
}

/// What to store for a newly issued refresh token.
#[derive(Debug)]
pub struct NewRefreshToken<'a> {
    /// Owner.
    pub user_id: &'a str,
    /// Family (a new id on login, the predecessor's on rotation).
    pub family_id: &'a str,
    /// SHA-256 of the token.
    pub token_hash: &'a str,
    /// Expiry instant (ms).
    pub expires_at: i64,
}

/// The result of presenting a refresh token.
#[derive(Debug)]
pub enum RefreshOutcome {
    /// Valid and now consumed: issue a successor in the same family.
    Rotated(RefreshTokenRecord),
    /// Was already used: the family has just been revoked.
    ReuseDetected,
    /// Unknown, expired or revoked.
    Invalid,
}

const COLUMNS: &str = "id, user_id, family_id, expires_at, used_at, revoked_at";

impl Store {
    /// Stores a new refresh token.
    pub async fn insert_refresh_token(&self, new: NewRefreshToken<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(crate::domain::new_id())
        .bind(new.user_id)
        .bind(new.family_id)
        .bind(new.token_hash)
        .bind(new.expires_at)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Consumes a refresh token atomically: of two concurrent presentations exactly one rotates.
    pub async fn consume_refresh_token(
        &self,
        token_hash: &str,
    ) -> Result<RefreshOutcome, StoreError> {
        let now = now_ms();
        let consumed = sqlx::query(
            "UPDATE refresh_tokens SET used_at = $1 \
             WHERE token_hash = $2 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $1",
        )
        .bind(now)
        .bind(token_hash)
        .execute(self.pool())
        .await?;
        let record: Option<RefreshTokenRecord> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM refresh_tokens WHERE token_hash = $1"
        )))
        .bind(token_hash)
        .fetch_optional(self.pool())
        .await?;
        let Some(record) = record else {
            return Ok(RefreshOutcome::Invalid);
        };
        if consumed.rows_affected() == 1 {
            return Ok(RefreshOutcome::Rotated(record));
        }
        if record.used_at.is_some() && record.revoked_at.is_none() {
            self.revoke_refresh_family(&record.family_id).await?;
            return Ok(RefreshOutcome::ReuseDetected);
        }
        Ok(RefreshOutcome::Invalid)
    }

    /// The record behind a token hash, if any.
    pub async fn refresh_token_by_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<RefreshTokenRecord>, StoreError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM refresh_tokens WHERE token_hash = $1"
        )))
        .bind(token_hash)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Revokes every token of a family (logout, reuse detection).
    pub async fn revoke_refresh_family(&self, family_id: &str) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(family_id)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    /// Revokes every refresh token of a user (password change, deactivation).
    pub async fn revoke_user_refresh_tokens(&self, user_id: &str) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(user_id)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    /// Deletes tokens that expired more than a day ago (housekeeping).
    pub async fn purge_expired_refresh_tokens(&self) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM refresh_tokens WHERE expires_at < $1")
            .bind(now_ms() - 24 * 3600 * 1000)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }
}
