//! Tier quotas per user per clock hour (messages and API calls) and the batched usage recorder.
//!
//! Charging goes through [`Counters::admit`], so it is atomic and, with Redis, exact across api
//! processes. What was charged is also accumulated in memory and written to `usage_records` once
//! per flush interval, one transaction per batch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{TierLimits, TierTable};
use crate::domain::{Tier, now_ms};
use crate::limits::Counters;
use crate::store::Store;

const HOUR_MS: i64 = 3_600_000;

/// The counter of one user's `kind` in the hour starting at `hour_start` (ms).
fn quota_key(kind: QuotaKind, user_id: &str, hour_start: i64) -> String {
    format!("quota:{}:{user_id}:{hour_start}", kind.key_part())
}

/// What is being counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaKind {
    /// Accepted messages (each bulk item counts).
    Messages,
    /// Authenticated API calls.
    ApiCalls,
}

impl QuotaKind {
    fn key_part(self) -> &'static str {
        match self {
            QuotaKind::Messages => "msg",
            QuotaKind::ApiCalls => "api",
        }
    }

    fn limit(self, limits: TierLimits) -> u64 {
        u64::from(match self {
            QuotaKind::Messages => limits.messages_per_hour,
            QuotaKind::ApiCalls => limits.api_calls_per_hour,
        })
    }
}

/// The outcome of a charge, with what the `X-RateLimit-*` headers need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaDecision {
    /// Whether the charge fit.
    pub allowed: bool,
    /// The hourly limit.
    pub limit: u64,
    /// What is left this hour.
    pub remaining: u64,
    /// Unix seconds when the hour ends.
    pub reset_at_s: i64,
    /// Time until then.
    pub retry_after: Duration,
    /// Whether the charge could fit in any hour (it is not larger than the limit): when it
    /// cannot, waiting does not help and the answer carries no `Retry-After`.
    pub fits_an_hour: bool,
}

/// Current usage of a user this hour.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HourUsage {
    /// Messages accepted this hour.
    pub messages: u64,
    /// API calls this hour.
    pub api_calls: u64,
    /// When the hour started (RFC 3339).
    pub window_start: String,
    /// When it resets (RFC 3339).
    pub window_end: String,
}

/// Quota enforcement and usage accounting.
#[derive(Debug)]
pub struct Quotas {
    counters: Arc<Counters>,
    tiers: TierTable,
    pending_usage: Mutex<HashMap<(String, i64), (i64, i64)>>,
}

impl Quotas {
    /// Quotas over shared counters and the configured tier table.
    pub fn new(counters: Arc<Counters>, tiers: TierTable) -> Self {
        Self {
            counters,
            tiers,
            pending_usage: Mutex::new(HashMap::new()),
        }
    }

    /// The limits of a tier.
    pub fn limits(&self, tier: Tier) -> TierLimits {
        self.tiers.limits(tier)
    }

    /// Charges `amount` units of `kind` to the user if they fit in this hour's quota.
    pub async fn charge(
        &self,
        user_id: &str,
        tier: Tier,
        kind: QuotaKind,
        amount: u64,
    ) -> anyhow::Result<QuotaDecision> {
        let now = now_ms();
        let hour_start = now - now.rem_euclid(HOUR_MS);
        let hour_end = hour_start + HOUR_MS;
        let limit = kind.limit(self.tiers.limits(tier));
        // Keys live a minute past the hour so a slow clock on another api process cannot reopen
        // a window that this one has closed.
        let window = Duration::from_millis((hour_end - now + 60_000) as u64);
        let key = quota_key(kind, user_id, hour_start);
        let state = self.counters.admit(&key, amount, limit, window).await?;
        if state.admitted {
            self.note_usage(user_id, hour_start, kind, amount);
        }
        Ok(QuotaDecision {
            allowed: state.admitted,
            limit,
            remaining: limit.saturating_sub(state.count),
            reset_at_s: hour_end / 1000,
            retry_after: Duration::from_millis((hour_end - now).max(1000) as u64),
            fits_an_hour: amount <= limit,
        })
    }

    /// What the user has used in the current hour (shared across processes with Redis).
    pub async fn current_usage(&self, user_id: &str) -> anyhow::Result<HourUsage> {
        let now = now_ms();
        let hour_start = now - now.rem_euclid(HOUR_MS);
        let messages = self
            .counters
            .peek(&quota_key(QuotaKind::Messages, user_id, hour_start))
            .await?;
        let api_calls = self
            .counters
            .peek(&quota_key(QuotaKind::ApiCalls, user_id, hour_start))
            .await?;
        Ok(HourUsage {
            messages: messages.count,
            api_calls: api_calls.count,
            window_start: crate::domain::ms_to_rfc3339(hour_start),
            window_end: crate::domain::ms_to_rfc3339(hour_start + HOUR_MS),
        })
    }

    fn note_usage(&self, user_id: &str, hour_start: i64, kind: QuotaKind, amount: u64) {
        let mut pending = self.pending_usage.lock().unwrap_or_else(|p| p.into_inner());
        let entry = pending
            .entry((user_id.to_owned(), hour_start))
            .or_insert((0, 0));
        match kind {
            QuotaKind::Messages => entry.0 += amount as i64,
            QuotaKind::ApiCalls => entry.1 += amount as i64,
        }
    }

    /// Writes accumulated usage to `usage_records` in one batch; failed batches are kept.
    pub async fn flush_usage(&self, store: &Store) -> anyhow::Result<usize> {
        let batch: Vec<(String, i64, i64, i64)> = {
            let mut pending = self.pending_usage.lock().unwrap_or_else(|p| p.into_inner());
            pending
                .drain()
                .map(|((user, hour), (messages, calls))| (user, hour, messages, calls))
                .collect()
        };
        if batch.is_empty() {
            return Ok(0);
        }
        if let Err(err) = store.add_usage(&batch).await {
            let mut pending = self.pending_usage.lock().unwrap_or_else(|p| p.into_inner());
            for (user, hour, messages, calls) in batch {
                let entry = pending.entry((user, hour)).or_insert((0, 0));
                entry.0 += messages;
                entry.1 += calls;
            }
            return Err(err.into());
        }
        Ok(batch.len())
    }
}
