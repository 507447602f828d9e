//! Usage records: per user per hour counts of messages and API calls, written in batches by the
//! usage recorder (never one write per request).

use sqlx::FromRow;

use super::{Store, StoreError};

/// One user's counts for one hour.
#[derive(Clone, Debug, FromRow, PartialEq, Eq)]
pub struct UsageRecord {
    /// Start of the hour (ms).
    pub hour_start: i64,
    /// Messages accepted in that hour.
    pub messages: i64,
    /// Authenticated API calls in that hour.
    pub api_calls: i64,
}

impl Store {
    /// Adds a batch of `(user_id, hour_start, messages, api_calls)` increments in one transaction.
    pub async fn add_usage(
        &self,
        increments: &[(String, i64, i64, i64)],
    ) -> Result<(), StoreError> {
        if increments.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool().begin().await?;
        for (user_id, hour_start, messages, api_calls) in increments {
            sqlx::query(
                "INSERT INTO usage_records (user_id, hour_start, messages, api_calls) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (user_id, hour_start) DO UPDATE SET \
                 messages = usage_records.messages + excluded.messages, \
                 api_calls = usage_records.api_calls + excluded.api_calls",
            )
            .bind(user_id)
            .bind(*hour_start)
            .bind(*messages)
            .bind(*api_calls)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The user's hourly records since `since_ms`, oldest first.
    pub async fn usage_since(
        &self,
        user_id: &str,
        since_ms: i64,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT hour_start, messages, api_calls FROM usage_records \
             WHERE user_id = $1 AND hour_start >= $2 ORDER BY hour_start",
        )
        .bind(user_id)
        .bind(since_ms)
        .fetch_all(self.pool())
        .await?)
    }
}
