//! How faithfully a simulated worker copies the existing open-source worker: one switch per
//! behaviour that `docs/WORKER_PROTOCOL.md` ("What the existing worker really does") lists.
//!
//! [`Quirks::real`] (the default) reproduces every one of them, so the gateway is tested against
//! the worker customers actually run; [`Quirks::ideal`] turns every one off, which gives the
//! simulator as it was before: a worker that answers `409` for a session that is not connected,
//! names itself in every callback, reports recovery in full and never rate-limits. Each field can
//! also be set alone, for a test that needs one behaviour without the others.

use std::time::Duration;

/// The behaviours of the existing worker that an ideal worker would not have. `true` (or
/// `Some`) reproduces the existing worker.
#[derive(Clone, Debug, PartialEq)]
pub struct Quirks {
    /// A send (or manage call) for a session that is not connected answers `400` with
    /// `{"code": "SESSION_NOT_CONNECTED", "message": "Session not connected. Status: <STATUS>"}`
    /// (`NOT_FOUND` for a session this worker does not hold). Off: `409` with the same code and
    /// the message `session is not connected`.
    pub not_connected_400: bool,
    /// Validation errors read `{"success": false, "error": "Validation error", "details":
    /// [{"field", "message"}]}` (`error` is a string). Off: the envelope
    /// `{"error": {"code": "VALIDATION_ERROR", "message", "details": {"field"}}}`.
    pub validation_error_shape: bool,
    /// The existing worker's stricter send rules: `to` with 10–15 digits, text and field lengths
    /// counted in UTF-16 code units, an e-mail check on `contact.email`, a phone pattern (or a
    /// JID) for `contact.phone`. Off: `to` with 8–15 digits and no length limits.
    pub strict_validation: bool,
    /// Its rate limits; `None`: no `429` ever.
    pub rate_limits: Option<RateLimits>,
    /// Session-status callbacks carry no `workerId`, except `QR_REQUIRED`. Off: all carry it.
    pub callbacks_without_worker_id: bool,
    /// Its status vocabulary: a session that is connecting, failed or whose QR expired is
    /// reported as `INIT`, and a logout as `DISCONNECTED` with `loggedOutAt` (plus
    /// `loggedOutFromPhone` when the phone logged out) and no `reason`. Off: connecting is not
    /// reported, a failure is `ERROR`, an expired QR is replaced by a fresh one, QRs never
    /// expire on their own, and a logout also carries `reason: "LOGGED_OUT"`.
    pub status_vocabulary: bool,
    /// What it posts to `…/sessions/recovery-status` after restoring its assigned sessions.
    pub recovery_report: RecoveryReport,
    /// On shutdown (SIGINT) it also logs out every session (`DISCONNECTED` + `loggedOutAt`
    /// callbacks, after unregistering) and wipes its credentials, so the sessions need a new QR
    /// afterwards. Off: it only unregisters.
    pub logout_on_shutdown: bool,
    /// Heartbeat metrics like Node's: `cpuUsage` a random integer from 30 to 50 (not a
    /// measurement), `memoryUsage` a heap-used percentage. Off: small synthetic figures that
    /// grow with the sessions.
    pub node_metrics: bool,
    /// Its own routes do not check the bearer token. Off: every route but `GET /health`
    /// requires it.
    pub open_routes: bool,
}

impl Quirks {
    /// The existing worker as measured: every quirk on, rate limits at its fixed values, no
    /// recovery-status at all.
    pub fn real() -> Quirks {
        Quirks {
            not_connected_400: true,
            validation_error_shape: true,
            strict_validation: true,
            rate_limits: Some(RateLimits::real()),
            callbacks_without_worker_id: true,
            status_vocabulary: true,
            recovery_report: RecoveryReport::None,
            logout_on_shutdown: true,
            node_metrics: true,
            open_routes: true,
        }
    }

    /// The kind worker the simulator used to be: every quirk off, a full recovery report.
    pub fn ideal() -> Quirks {
        Quirks {
            not_connected_400: false,
            validation_error_shape: false,
            strict_validation: false,
            rate_limits: None,
            callbacks_without_worker_id: false,
            status_vocabulary: false,
            recovery_report: RecoveryReport::Full,
            logout_on_shutdown: false,
            node_metrics: false,
            open_routes: false,
        }
    }
}

impl Default for Quirks {
    fn default() -> Self {
        Quirks::real()
    }
}

/// What a worker posts to `POST /api/workers/{workerId}/sessions/recovery-status` once it has
/// restored the sessions that `GET …/sessions/assigned` listed. Whatever the mode, each restored
/// session is also reported through session-status callbacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryReport {
    /// Nothing: the callbacks are the only report (the existing worker as measured).
    None,
    /// `{"recoveryResults": [], "summary": {totalSessions, successfulRecoveries,
    /// failedRecoveries, skippedRecoveries}}`: the counts without the sessions.
    SummaryOnly,
    /// Per-session results with lower-case statuses `recovered`, `failed` or `error`, counts
    /// under `summary`.
    LowerCase,
    /// Per-session results `SUCCESS`/`FAILED`/`SKIPPED` with the counts at the top level, as the
    /// protocol documents it (the ideal worker).
    Full,
}

impl RecoveryReport {
    /// The spelling of `--recovery-report`.
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryReport::None => "none",
            RecoveryReport::SummaryOnly => "summary-only",
            RecoveryReport::LowerCase => "lower-case",
            RecoveryReport::Full => "full",
        }
    }
}

impl std::str::FromStr for RecoveryReport {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        [
            RecoveryReport::None,
            RecoveryReport::SummaryOnly,
            RecoveryReport::LowerCase,
            RecoveryReport::Full,
        ]
        .into_iter()
        .find(|mode| mode.as_str() == raw)
        .ok_or_else(|| format!("expected none, summary-only, lower-case or full, got {raw:?}"))
    }
}

/// At most `max_requests` per `window` for one key; the window starts at the key's first request
/// (like the existing worker's limiter) and the next one starts after it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests admitted per window; `0` refuses everything.
    pub max_requests: u32,
    /// Length of a window.
    pub window: Duration,
}

/// The existing worker's limits. Its values are fixed there; here they are settable so tests can
/// use small windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// `POST /api/sessions/start`, `…/restart`, `…/disconnect`, `…/logout` and
    /// `DELETE /api/sessions/{id}`, keyed by client IP plus the `X-User-Id` header when present.
    pub session_operations: RateLimit,
    /// `POST /api/{sessionId}/send`, keyed by the session alone.
    pub sends: RateLimit,
    /// Every route but `GET /health` (and the simulator's own `/sim/…` controls), keyed by
    /// client IP: the existing worker's limit under `NODE_ENV=production`. `None` (the default):
    /// off, as when `RATE_LIMITING_ENABLED=false`.
    pub global: Option<RateLimit>,
}

/// Default of `--session-operations-limit`.
pub const DEFAULT_SESSION_OPERATIONS_LIMIT: u32 = 5;
/// Default of `--session-operations-window-ms`.
pub const DEFAULT_SESSION_OPERATIONS_WINDOW: Duration = Duration::from_secs(5 * 60);
/// Default of `--sends-limit`.
pub const DEFAULT_SENDS_LIMIT: u32 = 10;
/// Default of `--sends-window-ms`.
pub const DEFAULT_SENDS_WINDOW: Duration = Duration::from_secs(60);
/// Default of `--global-limit`.
pub const DEFAULT_GLOBAL_LIMIT: u32 = 50;
/// Default of `--global-window-ms`.
pub const DEFAULT_GLOBAL_WINDOW: Duration = Duration::from_secs(15 * 60);

impl RateLimits {
    /// Session operations 5 per 5 minutes, sends 10 per minute per session, no global limit.
    pub fn real() -> RateLimits {
        RateLimits {
            session_operations: RateLimit {
                max_requests: DEFAULT_SESSION_OPERATIONS_LIMIT,
                window: DEFAULT_SESSION_OPERATIONS_WINDOW,
            },
            sends: RateLimit {
                max_requests: DEFAULT_SENDS_LIMIT,
                window: DEFAULT_SENDS_WINDOW,
            },
            global: None,
        }
    }

    /// The production global limit of the existing worker: 50 calls per 15 minutes per IP.
    pub fn production_global() -> RateLimit {
        RateLimit {
            max_requests: DEFAULT_GLOBAL_LIMIT,
            window: DEFAULT_GLOBAL_WINDOW,
        }
    }
}
