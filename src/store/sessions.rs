//! Sessions: the customer's WhatsApp logins, where they run, and their fencing epoch.
//! (The orchestration that moves them lives elsewhere; this is only their rows.)

use super::{Store, StoreError};

impl Store {
    /// How many sessions the user owns that are not deleted (what the tier limit counts).
    pub async fn count_live_sessions(&self, user_id: &str) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM sessions WHERE user_id = $1 AND deleted_at IS NULL",
        )
        .bind(user_id)
        .fetch_one(self.pool())
        .await?)
    }

    /// Whether `session_id` is a live session of `user_id` (isolation checks).
    pub async fn user_owns_session(
        &self,
        user_id: &str,
        session_id: &str,
    ) -> Result<bool, StoreError> {
        let found: Option<String> = sqlx::query_scalar(
            "SELECT id FROM sessions WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL",
        )
        .bind(session_id)
        .bind(user_id)
        .fetch_optional(self.pool())
        .await?;
        Ok(found.is_some())
    }
}
