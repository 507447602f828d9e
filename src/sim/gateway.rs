//! Calls from the simulated worker to the gateway: registration, heartbeats, recovery,
//! unregistration and the webhook callbacks, each with `Authorization: Bearer <token>`.
//!
//! Bodies are typed structs so what the simulator sends is written down in one place. Optional
//! fields are omitted rather than sent as `null` ("strict in what you send"), except in
//! heartbeats, where the real worker sends `phoneNumber: null` and `displayName: null` for
//! sessions that are not connected and the simulator does the same on purpose.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::state::SessionStatus;

/// How long one call to the gateway may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Pauses between the attempts of a callback; its length is the number of retries.
const CALLBACK_BACKOFF: [Duration; 3] = [
    Duration::from_millis(50),
    Duration::from_millis(200),
    Duration::from_millis(800),
];

/// Error codes with which the gateway says "this worker no longer owns that session".
const FENCING_CODES: [&str; 2] = ["STALE_OWNER", "NOT_OWNER"];

/// How a call to the gateway failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GatewayError {
    /// No answer: connection refused, timeout, reset.
    #[error("gateway unreachable: {0}")]
    Unreachable(#[source] reqwest::Error),
    /// The gateway answered with an error status.
    #[error("gateway answered {status}: {code} {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    /// A success status with a body that is not the expected envelope.
    #[error("unexpected gateway answer: {0}")]
    Malformed(String),
}

impl GatewayError {
    /// Worth another attempt: no answer, a server error, or throttling.
    fn is_transient(&self) -> bool {
        match self {
            GatewayError::Unreachable(_) => true,
            GatewayError::Rejected { status, .. } => *status >= 500 || *status == 429,
            GatewayError::Malformed(_) => false,
        }
    }

    /// The gateway does not know the thing the call is about (e.g. it forgot this worker).
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, GatewayError::Rejected { status: 404, .. })
    }

    /// The gateway fenced this worker off a session (`409 STALE_OWNER` / `NOT_OWNER`).
    pub(crate) fn is_fencing(&self) -> bool {
        matches!(self, GatewayError::Rejected { status: 409, code, .. } if FENCING_CODES.contains(&code.as_str()))
    }
}

/// `POST /api/workers/register`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Registration<'a> {
    pub(crate) worker_id: &'a str,
    pub(crate) endpoint: &'a str,
    pub(crate) max_sessions: u32,
    pub(crate) description: &'a str,
    pub(crate) version: &'a str,
    pub(crate) environment: &'a str,
}

/// What the simulator needs from the registration answer.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Registered {
    pub(crate) recovery_required: bool,
}

/// `PUT /api/workers/{workerId}/heartbeat`. No `capabilities`: the real worker omits them.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Heartbeat {
    pub(crate) sessions: Vec<HeartbeatSession>,
    pub(crate) metrics: HeartbeatMetrics,
    pub(crate) last_activity: String,
}

/// One session in a heartbeat.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HeartbeatSession {
    pub(crate) session_id: String,
    pub(crate) status: SessionStatus,
    /// `null` unless connected, like the real worker.
    pub(crate) phone_number: Option<String>,
    /// `null` unless connected, like the real worker.
    pub(crate) display_name: Option<String>,
    pub(crate) last_activity: String,
}

/// The metrics sample of a heartbeat. CPU and memory are synthetic (the simulator does no work
/// worth measuring), shaped like the real worker's percentages.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HeartbeatMetrics {
    pub(crate) cpu_usage: f64,
    pub(crate) memory_usage: f64,
    /// Seconds since the worker started.
    pub(crate) uptime: u64,
    pub(crate) message_count: u64,
    pub(crate) total_sessions: u64,
    pub(crate) active_sessions: u64,
}

/// One session the gateway wants restored, from `GET …/sessions/assigned`. Only the id is needed;
/// the rest is kept for the session listing.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AssignedSession {
    pub(crate) session_id: String,
    #[serde(default)]
    pub(crate) user_id: Option<String>,
    #[serde(default)]
    pub(crate) session_name: Option<String>,
}

/// `POST /api/workers/{workerId}/sessions/recovery-status` as the protocol documents it: the
/// counts at the top level.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RecoveryReport {
    pub(crate) recovery_results: Vec<RecoveryResult>,
    pub(crate) total_sessions: u64,
    pub(crate) successful_recoveries: u64,
    pub(crate) failed_recoveries: u64,
}

/// The same report with the counts nested under `summary`, as the existing worker sends it
/// (with an empty `recoveryResults`, or with lower-case statuses).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SummarizedRecoveryReport {
    pub(crate) recovery_results: Vec<RecoveryResult>,
    pub(crate) summary: RecoverySummary,
}

/// The counts of a [`SummarizedRecoveryReport`].
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RecoverySummary {
    pub(crate) total_sessions: u64,
    pub(crate) successful_recoveries: u64,
    pub(crate) failed_recoveries: u64,
    pub(crate) skipped_recoveries: u64,
}

/// The outcome for one assigned session.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RecoveryResult {
    pub(crate) session_id: String,
    /// `SUCCESS`, `FAILED` or `SKIPPED`; in lower case `recovered`, `failed` or `error`.
    pub(crate) status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) recovered_at: Option<String>,
}

/// `POST /api/webhooks/session-status`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SessionStatusReport {
    pub(crate) session_id: String,
    pub(crate) status: SessionStatus,
    pub(crate) timestamp: String,
    /// Absent from most reports of a worker with `Quirks::callbacks_without_worker_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) worker_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) qr_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) phone_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) display_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) logged_out_at: Option<String>,
    /// `true` when the phone logged the session out (not a logout through the API).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) logged_out_from_phone: Option<bool>,
}

/// `POST /api/webhooks/message-status`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MessageStatusReport {
    pub(crate) session_id: String,
    pub(crate) message_id: String,
    /// `SENT`, `DELIVERED` or `READ`.
    pub(crate) status: &'static str,
    pub(crate) timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) delivered_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) read_at: Option<String>,
}

/// `POST /api/webhooks/message-received`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InboundMessageReport {
    pub(crate) session_id: String,
    pub(crate) message_id: String,
    pub(crate) from: String,
    #[serde(rename = "type")]
    pub(crate) kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) message: Option<String>,
    pub(crate) timestamp: String,
}

/// The HTTP client of one simulated worker.
#[derive(Debug)]
pub(crate) struct GatewayClient {
    http: reqwest::Client,
    /// Without a trailing slash.
    base_url: String,
    token: String,
    worker_id: String,
}

/// How long an idle connection to the gateway stays pooled.
const IDLE_CONNECTION: Duration = Duration::from_secs(5);

impl GatewayClient {
    pub(crate) fn new(base_url: &str, token: &str, worker_id: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            // Under the gateway's idle close (HTTP_HEADER_READ_TIMEOUT_MS, 10 s by default), so
            // a pooled connection is not reused just as the gateway closes it.
            .pool_idle_timeout(IDLE_CONNECTION)
            .build()
            .map_err(|err| anyhow::anyhow!("could not build the gateway client: {err}"))?;
        Ok(GatewayClient {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            worker_id: worker_id.to_owned(),
        })
    }

    /// `POST /api/workers/register`, one attempt.
    pub(crate) async fn register(
        &self,
        registration: &Registration<'_>,
    ) -> Result<Registered, GatewayError> {
        let answer = self
            .call(
                reqwest::Method::POST,
                "/api/workers/register",
                Some(registration),
            )
            .await?;
        // The flag belongs in `data`; accept it at the top level too (be liberal).
        let recovery_required = answer
            .pointer("/data/recoveryRequired")
            .or_else(|| answer.get("recoveryRequired"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(Registered { recovery_required })
    }

    /// `PUT /api/workers/{workerId}/heartbeat`.
    pub(crate) async fn heartbeat(&self, heartbeat: &Heartbeat) -> Result<(), GatewayError> {
        let path = format!("/api/workers/{}/heartbeat", self.worker_id);
        self.call(reqwest::Method::PUT, &path, Some(heartbeat))
            .await
            .map(drop)
    }

    /// `GET /api/workers/{workerId}/sessions/assigned`.
    pub(crate) async fn assigned_sessions(&self) -> Result<Vec<AssignedSession>, GatewayError> {
        let path = format!("/api/workers/{}/sessions/assigned", self.worker_id);
        let answer = self.call::<()>(reqwest::Method::GET, &path, None).await?;
        let sessions = answer
            .pointer("/data/sessions")
            .cloned()
            .unwrap_or(Value::Array(Vec::new()));
        serde_json::from_value(sessions)
            .map_err(|err| GatewayError::Malformed(format!("assigned sessions: {err}")))
    }

    /// `POST /api/workers/{workerId}/sessions/recovery-status` (either shape), retried like a
    /// callback.
    pub(crate) async fn recovery_status<T: Serialize>(
        &self,
        report: &T,
    ) -> Result<(), GatewayError> {
        let path = format!("/api/workers/{}/sessions/recovery-status", self.worker_id);
        self.deliver(&path, report).await
    }

    /// `DELETE /api/workers/unregister`.
    pub(crate) async fn unregister(&self, endpoint: &str) -> Result<(), GatewayError> {
        let body = serde_json::json!({ "workerId": self.worker_id, "endpoint": endpoint });
        self.call(
            reqwest::Method::DELETE,
            "/api/workers/unregister",
            Some(&body),
        )
        .await
        .map(drop)
    }

    /// `POST /api/webhooks/session-status`, retried.
    pub(crate) async fn session_status(
        &self,
        report: &SessionStatusReport,
    ) -> Result<(), GatewayError> {
        self.deliver("/api/webhooks/session-status", report).await
    }

    /// `POST /api/webhooks/message-status`, retried.
    pub(crate) async fn message_status(
        &self,
        report: &MessageStatusReport,
    ) -> Result<(), GatewayError> {
        self.deliver("/api/webhooks/message-status", report).await
    }

    /// `POST /api/webhooks/message-received`, retried.
    pub(crate) async fn message_received(
        &self,
        report: &InboundMessageReport,
    ) -> Result<(), GatewayError> {
        self.deliver("/api/webhooks/message-received", report).await
    }

    /// A callback: POSTed, and retried with backoff while the failure is transient. Runs in a
    /// background task, never in a request handler.
    async fn deliver<T: Serialize>(&self, path: &str, body: &T) -> Result<(), GatewayError> {
        let mut pauses = CALLBACK_BACKOFF.iter();
        loop {
            match self.call(reqwest::Method::POST, path, Some(body)).await {
                Ok(_) => return Ok(()),
                Err(err) if err.is_transient() => match pauses.next() {
                    Some(pause) => {
                        tracing::debug!(path, error = %err, "callback failed; retrying");
                        tokio::time::sleep(*pause).await;
                    }
                    None => return Err(err),
                },
                Err(err) => return Err(err),
            }
        }
    }

    /// One authenticated call; a non-2xx answer becomes [`GatewayError::Rejected`] with the code
    /// from the error envelope when there is one.
    async fn call<T: Serialize + ?Sized>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&T>,
    ) -> Result<Value, GatewayError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base_url))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(GatewayError::Unreachable)?;
        let status = response.status();
        let text = response.text().await.map_err(GatewayError::Unreachable)?;
        let answer: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            return Ok(answer);
        }
        let field = |name: &str| {
            answer
                .pointer(&format!("/error/{name}"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Err(GatewayError::Rejected {
            status: status.as_u16(),
            code: field("code"),
            message: field("message"),
        })
    }
}
