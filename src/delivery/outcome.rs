//! One delivery attempt of a lane head and its verdict.
//!
//! The worker protocol's rules: `2xx` is sent; `429` (after its `Retry-After`), `5xx`,
//! timeouts and unreachable workers are transient; other `4xx` refuse the message for good, with
//! the worker's own reason, unless they only say the session is not ready on that worker
//! (`404`, `409`, or the existing worker's `400 SESSION_NOT_CONNECTED` while it reconnects):
//! that is a session reconnecting or a migration settling, and the message waits. A deleted or
//! logged-out session fails its messages. Transient failures retry with backoff until
//! `DELIVERY_MAX_WAIT_MS` after acceptance or `DELIVERY_MAX_ATTEMPTS` attempts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use producers::OutboundEnvelope;
use serde_json::Value;

use super::RETRY_BACKOFF;
use super::sessions::{SessionDirectory, SessionEntry};
use crate::app::AppContext;
use crate::domain::{SessionStatus, WaitingReason, now_ms};
use crate::fleet::client::{OnWorker, Refusal, WorkerCallError};
use crate::metrics::DeliveryStage;

/// What became of an attempt.
#[derive(Debug, Clone)]
pub(super) enum Verdict {
    /// The worker accepted the message.
    Sent {
        /// WhatsApp's id from the worker's answer.
        whatsapp_id: Option<String>,
        /// The session's next send waits this long (tier pacing).
        pace: Duration,
    },
    /// Try again after `delay`; the session's later messages wait behind it.
    Retry {
        /// Backoff before the next attempt.
        delay: Duration,
        /// Why, as the message's status shows it.
        waiting: WaitingReason,
        /// Why, in words (logs and the message's status).
        reason: String,
    },
    /// Give up: FAILED, dead-lettered.
    Failed {
        /// Why, stored on the message.
        reason: String,
    },
}

/// One attempt, run on its own task.
pub(super) struct Attempt {
    pub(super) context: Arc<AppContext>,
    pub(super) directory: Arc<SessionDirectory>,
    pub(super) envelope: Arc<OutboundEnvelope>,
    /// Failed attempts of this message before this one.
    pub(super) failed_attempts: u32,
    /// Pacing: do not call the worker before this.
    pub(super) not_before: Option<Instant>,
}

impl Attempt {
    pub(super) async fn run(self) -> Verdict {
        if let Some(not_before) = self.not_before {
            tokio::time::sleep_until(tokio::time::Instant::from_std(not_before)).await;
        }
        match self.try_once().await {
            Verdict::Retry {
                delay,
                waiting,
                reason,
            } => self.bounded(delay, waiting, reason),
            verdict => verdict,
        }
    }

    /// Turns a retry into a failure once the message waited or tried long enough.
    fn bounded(&self, delay: Duration, waiting: WaitingReason, reason: String) -> Verdict {
        let config = &self.context.config;
        let waited = self.envelope.age_at(now_ms());
        let attempts = self.failed_attempts.saturating_add(1);
        if waited + delay > config.delivery_max_wait {
            Verdict::Failed {
                reason: format!(
                    "not delivered within {} s: {reason}",
                    config.delivery_max_wait.as_secs()
                ),
            }
        } else if attempts >= config.delivery_max_attempts {
            Verdict::Failed {
                reason: format!("not delivered after {attempts} attempts: {reason}"),
            }
        } else {
            Verdict::Retry {
                delay,
                waiting,
                reason,
            }
        }
    }

    fn retry(&self, waiting: WaitingReason, reason: impl Into<String>) -> Verdict {
        Verdict::Retry {
            delay: self.retry_delay(),
            waiting,
            reason: reason.into(),
        }
    }

    /// The backoff before this message's next attempt.
    fn retry_delay(&self) -> Duration {
        RETRY_BACKOFF.delay(self.failed_attempts, rand::random())
    }

    async fn try_once(&self) -> Verdict {
        let session_id = &self.envelope.session_id;
        let looking_up = Instant::now();
        let entry = self.directory.lookup(session_id).await;
        let metrics = &self.context.metrics;
        metrics.delivery_stage(DeliveryStage::Route, looking_up.elapsed());
        let entry = match entry {
            Ok(Some(entry)) => entry,
            Ok(None) => return session_gone(),
            Err(err) => {
                return self.retry(
                    WaitingReason::StoreUnavailable,
                    format!("store unavailable: {err}"),
                );
            }
        };
        if let Some(verdict) = self.unusable(&entry) {
            return verdict;
        }
        let Some(route) = entry.route.clone() else {
            return self.retry(
                WaitingReason::WorkerDown,
                "the session has no worker (being placed or migrated)",
            );
        };
        let calling = Instant::now();
        let answer = self
            .context
            .fleet
            .client()
            .send_message(
                OnWorker {
                    endpoint: &route.endpoint,
                    session_id,
                    user_id: Some(&self.envelope.user_id),
                },
                &self.envelope.message_id,
                &self.envelope.payload,
            )
            .await;
        metrics.delivery_stage(DeliveryStage::Worker, calling.elapsed());
        match answer {
            Ok(body) => Verdict::Sent {
                // WhatsApp's id is kept only when it is one (a NUL in it would make the SENT
                // outcome a write the store refuses, again and again).
                whatsapp_id: body
                    .pointer("/data/messageId")
                    .and_then(Value::as_str)
                    .filter(|id| {
                        super::events::MESSAGE_ID_RULE
                            .check("messageId", id)
                            .is_ok()
                    })
                    .map(str::to_owned),
                pace: pace(&self.context, &entry),
            },
            Err(WorkerCallError::Busy { retry_after }) => {
                let reason = "the worker is rate limiting this session's sends (429)";
                match retry_after {
                    // The worker says when: no sooner (a retry before it is another 429), and
                    // not much later either.
                    Some(after) => Verdict::Retry {
                        delay: after.max(self.retry_delay()),
                        waiting: WaitingReason::WorkerRateLimited,
                        reason: reason.to_owned(),
                    },
                    None => self.retry(WaitingReason::WorkerRateLimited, reason),
                }
            }
            Err(WorkerCallError::Failed { status, .. }) => self.retry(
                WaitingReason::WorkerDown,
                format!("the worker failed ({status})"),
            ),
            Err(WorkerCallError::Unreachable(err)) => {
                self.directory.invalidate(session_id);
                self.retry(
                    WaitingReason::WorkerDown,
                    format!("the worker is unreachable: {err}"),
                )
            }
            Err(WorkerCallError::Refused { status, body }) => {
                self.refused(&route, status, &body).await
            }
        }
    }

    /// A deleted, logged-out or not connected session: fail or wait.
    fn unusable(&self, entry: &SessionEntry) -> Option<Verdict> {
        let session = &entry.session;
        if session.logged_out_at.is_some() {
            return Some(Verdict::Failed {
                reason: "the session was logged out".to_owned(),
            });
        }
        if session.status != SessionStatus::Connected {
            return Some(self.retry(
                WaitingReason::SessionReconnecting,
                format!("the session is {}", session.status),
            ));
        }
        None
    }

    /// A `4xx`: the message is refused, unless the session moved or is not connected there.
    async fn refused(
        &self,
        used: &crate::fleet::routing::Route,
        status: u16,
        body: &Value,
    ) -> Verdict {
        let session_id = &self.envelope.session_id;
        self.directory.invalidate(session_id);
        let fresh = match self.directory.lookup(session_id).await {
            Ok(Some(fresh)) => fresh,
            Ok(None) => return session_gone(),
            Err(err) => {
                return self.retry(
                    WaitingReason::StoreUnavailable,
                    format!("store unavailable: {err}"),
                );
            }
        };
        if let Some(verdict) = self.unusable(&fresh) {
            return verdict;
        }
        if fresh.route.as_ref() != Some(used) {
            return self.retry(
                WaitingReason::SessionReconnecting,
                "the session moved to another worker",
            );
        }
        let refusal = Refusal::read(status, body);
        if refusal.session_not_ready() {
            // "Session not connected / not found" from the owner we believe in: the session is
            // reconnecting, or ownership is settling (a restart or migration in progress). Not
            // a refusal of the message: it waits like a session whose worker is down, within
            // the same bounds.
            return self.retry(
                WaitingReason::SessionReconnecting,
                format!("the session is not ready on its worker ({refusal})"),
            );
        }
        Verdict::Failed {
            reason: format!("the worker refused the message ({refusal})"),
        }
    }
}

fn session_gone() -> Verdict {
    Verdict::Failed {
        reason: "the session no longer exists".to_owned(),
    }
}

/// The pause after a send of this session: the tier's interval plus random jitter.
fn pace(context: &AppContext, entry: &SessionEntry) -> Duration {
    let limits = context.quotas.limits(entry.tier);
    let jitter_ms = if limits.send_jitter_ms == 0 {
        0
    } else {
        rand::random_range(0..=limits.send_jitter_ms)
    };
    Duration::from_millis(limits.send_interval_ms.saturating_add(jitter_ms))
}
