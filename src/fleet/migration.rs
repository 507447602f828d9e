//! Session migration jobs: when a worker goes OFFLINE, unregisters or is drained, each of its
//! live sessions gets one job; the job picks a target, bumps the epoch, starts the session there
//! and switches routing ([`super::Fleet::migrate`]). No target yet: the job is retried with
//! backoff. Jobs are idempotent (they carry the epoch they expect), so duplicates from several
//! monitors are harmless.

use serde::{Deserialize, Serialize};

/// One session to move.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MigrateSession {
    /// The session.
    pub session_id: String,
    /// The worker it is expected to be on (None: unplaced).
    pub from_worker_id: Option<String>,
    /// The epoch it is expected to have; a different one means it already moved.
    pub expected_epoch: i64,
    /// A specific target (manual migration), else placement decides.
    pub target_worker_id: Option<String>,
    /// Why (for logs).
    pub reason: String,
}

/// What one attempt achieved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MigrationOutcome {
    /// Now owned by `to_worker_id` at `epoch`.
    Moved {
        /// New owner.
        to_worker_id: String,
        /// New epoch.
        epoch: i64,
    },
    /// Nothing to do (already moved, deleted, re-enqueued).
    Skipped(&'static str),
    /// Try again later (no capacity yet).
    RetryLater(&'static str),
}

pub use super::jobs::MigrationQueue;
