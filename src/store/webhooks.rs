//! Webhook endpoints: where a user's events are posted. The signing secret is stored sealed
//! (see `crypto::SecretBox`); this layer never sees it in clear.

use sqlx::FromRow;

use super::{Store, StoreError};
use crate::domain::now_ms;

/// A stored endpoint.
#[derive(Clone, Debug)]
pub struct WebhookRecord {
    /// Its id.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Where events are posted.
    pub url: String,
    /// Event types it receives (`*`: all).
    pub events: Vec<String>,
    /// Only events of these sessions; `None`: every session of the owner.
    pub session_ids: Option<Vec<String>>,
    /// The owner's note.
    pub description: Option<String>,
    /// The sealed signing secret.
    pub secret: String,
    /// The sealed previous secret, signing beside the current one until `previous_secret_until`.
    pub previous_secret: Option<String>,
    /// Until when (ms) the previous secret signs too.
    pub previous_secret_until: Option<i64>,
    /// When it was disabled (ms), and why.
    pub disabled_at: Option<i64>,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
    /// First failure of the current run of failures (ms).
    pub failing_since: Option<i64>,
    /// Created (ms).
    pub created_at: i64,
    /// Last change (ms).
    pub updated_at: i64,
}

#[derive(FromRow)]
struct WebhookRow {
    id: String,
    user_id: String,
    url: String,
    events: String,
    session_ids: Option<String>,
    description: Option<String>,
    secret: String,
    previous_secret: Option<String>,
    previous_secret_until: Option<i64>,
    disabled_at: Option<i64>,
    disabled_reason: Option<String>,
    failing_since: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<WebhookRow> for WebhookRecord {
    type Error = StoreError;
    fn try_from(row: WebhookRow) -> Result<Self, StoreError> {
        let list = |column: &'static str, text: &str| -> Result<Vec<String>, StoreError> {
            serde_json::from_str(text).map_err(|err| {
                StoreError::Unexpected(anyhow::anyhow!(
                    "corrupt column webhooks.{column}: not a JSON list of strings: {err}"
                ))
            })
        };
        Ok(WebhookRecord {
            events: list("events", &row.events)?,
            session_ids: row
                .session_ids
                .as_deref()
                .map(|text| list("session_ids", text))
                .transpose()?,
            id: row.id,
            user_id: row.user_id,
            url: row.url,
            description: row.description,
            secret: row.secret,
            previous_secret: row.previous_secret,
            previous_secret_until: row.previous_secret_until,
            disabled_at: row.disabled_at,
            disabled_reason: row.disabled_reason,
            failing_since: row.failing_since,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// A new endpoint; `seal` turns its id into the sealed secret (the seal is bound to the id).
#[derive(Debug)]
pub struct NewWebhook<'a> {
    /// Owner.
    pub user_id: &'a str,
    /// Where events go.
    pub url: &'a str,
    /// Event types.
    pub events: &'a [String],
    /// Session filter.
    pub session_ids: Option<&'a [String]>,
    /// Note.
    pub description: Option<&'a str>,
    /// Created disabled.
    pub disabled: bool,
}

/// Changes to an endpoint; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct WebhookChanges<'a> {
    /// New URL.
    pub url: Option<&'a str>,
    /// New event types.
    pub events: Option<&'a [String]>,
    /// New session filter (`Some(None)`: every session).
    pub session_ids: Option<Option<&'a [String]>>,
    /// New note (`Some(None)` clears it).
    pub description: Option<Option<&'a str>>,
    /// Enable (clears the disabling and the failure run) or disable (by its owner).
    pub enabled: Option<bool>,
}

const COLUMNS: &str = "id, user_id, url, events, session_ids, description, secret, previous_secret, \
    previous_secret_until, disabled_at, disabled_reason, failing_since, created_at, updated_at";

/// Why an endpoint disabled by its owner is disabled.
pub const DISABLED_BY_OWNER: &str = "disabled by its owner";

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned())
}

impl Store {
    /// Stores a new endpoint unless its owner has `max_per_user` already
    /// ([`StoreError::Conflict`] `"webhook limit"`). `seal` gets the new id and returns the
    /// sealed secret.
    pub async fn insert_webhook(
        &self,
        new: NewWebhook<'_>,
        max_per_user: u32,
        seal: impl FnOnce(&str) -> String,
    ) -> Result<WebhookRecord, StoreError> {
        let id = crate::domain::new_id();
        let now = now_ms();
        let inserted = sqlx::query(
            "INSERT INTO webhooks (id, user_id, url, secret, events, session_ids, description, \
             disabled_at, disabled_reason, created_at, updated_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10 \
             WHERE (SELECT COUNT(*) FROM webhooks WHERE user_id = $2) < $11",
        )
        .bind(&id)
        .bind(new.user_id)
        .bind(new.url)
        .bind(seal(&id))
        .bind(json_list(new.events))
        .bind(new.session_ids.map(json_list))
        .bind(new.description)
        .bind(new.disabled.then_some(now))
        .bind(new.disabled.then_some(DISABLED_BY_OWNER))
        .bind(now)
        .bind(i64::from(max_per_user))
        .execute(self.pool())
        .await
        .map_err(|e| StoreError::from_sqlx(e, "webhook id collision"))?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::Conflict("webhook limit"));
        }
        self.webhook_for_user(new.user_id, &id).await
    }

    /// One of `user_id`'s endpoints ([`StoreError::NotFound`] for anyone else's).
    pub async fn webhook_for_user(
        &self,
        user_id: &str,
        id: &str,
    ) -> Result<WebhookRecord, StoreError> {
        let row: WebhookRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM webhooks WHERE id = $1 AND user_id = $2"
        )))
        .bind(id)
        .bind(user_id)
        .fetch_optional(self.pool())
        .await?
        .ok_or(StoreError::NotFound)?;
        row.try_into()
    }

    /// `user_id`'s endpoints, oldest first.
    pub async fn list_webhooks(&self, user_id: &str) -> Result<Vec<WebhookRecord>, StoreError> {
        let rows: Vec<WebhookRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM webhooks WHERE user_id = $1 ORDER BY created_at, id"
        )))
        .bind(user_id)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter().map(WebhookRecord::try_from).collect()
    }

    /// Applies `changes` to one of `user_id`'s endpoints.
    pub async fn update_webhook(
        &self,
        user_id: &str,
        id: &str,
        changes: WebhookChanges<'_>,
    ) -> Result<WebhookRecord, StoreError> {
        let now = now_ms();
        // $8: 1 enable, 0 disable, NULL leave.
        let updated = sqlx::query(
            "UPDATE webhooks SET url = COALESCE($3, url), events = COALESCE($4, events), \
             session_ids = CASE WHEN $5 = 1 THEN $6 ELSE session_ids END, \
             description = CASE WHEN $7 = 1 THEN $9 ELSE description END, \
             disabled_at = CASE WHEN $8 = 1 THEN NULL WHEN $8 = 0 THEN COALESCE(disabled_at, $10) ELSE disabled_at END, \
             disabled_reason = CASE WHEN $8 = 1 THEN NULL WHEN $8 = 0 THEN COALESCE(disabled_reason, $11) ELSE disabled_reason END, \
             failing_since = CASE WHEN $8 = 1 THEN NULL ELSE failing_since END, \
             updated_at = $10 WHERE id = $1 AND user_id = $2",
        )
        .bind(id)
        .bind(user_id)
        .bind(changes.url)
        .bind(changes.events.map(json_list))
        .bind(i64::from(changes.session_ids.is_some()))
        .bind(changes.session_ids.flatten().map(json_list))
        .bind(i64::from(changes.description.is_some()))
        .bind(changes.enabled.map(i64::from))
        .bind(changes.description.flatten())
        .bind(now)
        .bind(DISABLED_BY_OWNER)
        .execute(self.pool())
        .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        self.webhook_for_user(user_id, id).await
    }

    /// Deletes one of `user_id`'s endpoints (and its delivery log).
    pub async fn delete_webhook(&self, user_id: &str, id: &str) -> Result<(), StoreError> {
        let deleted = sqlx::query("DELETE FROM webhooks WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user_id)
            .execute(self.pool())
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Replaces the signing secret with `sealed`; the current one becomes the previous one,
    /// signing beside it until `previous_until` (ms).
    pub async fn rotate_webhook_secret(
        &self,
        user_id: &str,
        id: &str,
        sealed: &str,
        previous_until: i64,
    ) -> Result<WebhookRecord, StoreError> {
        let rotated = sqlx::query(
            "UPDATE webhooks SET previous_secret = secret, previous_secret_until = $3, secret = $4, \
             updated_at = $5 WHERE id = $1 AND user_id = $2",
        )
        .bind(id)
        .bind(user_id)
        .bind(previous_until)
        .bind(sealed)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        if rotated.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        self.webhook_for_user(user_id, id).await
    }
}
