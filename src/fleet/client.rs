//! Calls from the gateway to a worker (WORKER_PROTOCOL.md "Gateway → worker"): bounded timeouts,
//! the shared bearer token, and typed outcomes so callers can tell "retry later" from "refused".

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::config::Secret;

/// Why a worker call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerCallError {
    /// Connection refused, reset, DNS, or timeout: the worker may be down.
    #[error("worker unreachable: {0}")]
    Unreachable(String),
    /// The worker is throttling us (429): the same worker, later; neither a failure nor a
    /// reason to pick another worker.
    #[error("worker is rate limiting (429)")]
    Busy {
        /// The worker's `Retry-After`, when it gave one.
        retry_after: Option<Duration>,
    },
    /// The worker refused the request (4xx other than 429): do not retry.
    #[error("worker refused the request ({status}): {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The worker's answer.
        body: Value,
    },
    /// The worker failed (5xx): retry later.
    #[error("worker failed ({status}): {body}")]
    Failed {
        /// HTTP status.
        status: u16,
        /// The worker's answer.
        body: Value,
    },
}

impl WorkerCallError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        !matches!(self, WorkerCallError::Refused { .. })
    }

    /// The refusal's reason in the worker's own words, if this is a refusal.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            WorkerCallError::Refused { status, body } => Some(Refusal::read(*status, body)),
            _ => None,
        }
    }
}

/// A worker's `4xx` as the gateway reads it, from either error shape of the existing worker:
/// `{"error": {"code", "message"}}`, or validation's `{"error": "Validation error", "details":
/// [{"field", "message"}]}` (WORKER_PROTOCOL.md, "What the existing worker really does" 1-2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status.
    pub status: u16,
    /// The worker's error code, when it gave one (`SESSION_NOT_CONNECTED`, ...).
    pub code: Option<String>,
    /// The worker's words, with each validation detail as `field: message`; printable, at
    /// most [`MAX_REASON_CHARS`] characters.
    pub reason: String,
}

/// The longest worker reason kept (in a message's status, in an answer).
pub const MAX_REASON_CHARS: usize = 500;

/// Error codes by which a worker says the session is not ready there (reconnecting, not started
/// yet, moved): a reason to wait, never to refuse the message.
const SESSION_NOT_READY_CODES: [&str; 5] = [
    "SESSION_NOT_CONNECTED",
    "SESSION_NOT_READY",
    "SESSION_NOT_FOUND",
    "SESSION_RECONNECTING",
    "SESSION_CONNECTING",
];

impl Refusal {
    /// Reads a refusal's body; anything unexpected gives "no reason given", never an error.
    pub fn read(status: u16, body: &Value) -> Self {
        let error = body.get("error");
        let code = error
            .and_then(|e| e.get("code"))
            .and_then(Value::as_str)
            .map(printable);
        let message = error
            .and_then(|e| e.get("message"))
            .or_else(|| error.filter(|e| e.is_string()))
            .or_else(|| body.get("message"))
            .and_then(Value::as_str);
        let details: Vec<String> = body
            .get("details")
            .or_else(|| error.and_then(|e| e.get("details")))
            .and_then(Value::as_array)
            .map(|details| {
                details
                    .iter()
                    .filter_map(|detail| {
                        let text = detail.get("message").and_then(Value::as_str);
                        match (detail.get("field").and_then(Value::as_str), text) {
                            (Some(field), Some(text)) => Some(format!("{field}: {text}")),
                            (None, Some(text)) => Some(text.to_owned()),
                            (Some(field), None) => Some(format!("{field}: invalid")),
                            (None, None) => None,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let reason = match (message, details.is_empty()) {
            (Some(message), true) => message.to_owned(),
            (Some(message), false) => format!("{message}: {}", details.join("; ")),
            (None, false) => details.join("; "),
            (None, true) => "no reason given".to_owned(),
        };
        Refusal {
            status,
            code,
            reason: printable(&reason),
        }
    }

    /// Whether the worker only says the session is not ready there (not connected yet,
    /// reconnecting, not started, moved): `404`, `409`, or a "session not ready" code with any
    /// `4xx` (the existing worker answers `400 SESSION_NOT_CONNECTED`).
    pub fn session_not_ready(&self) -> bool {
        matches!(self.status, 404 | 409)
            || self
                .code
                .as_deref()
                .is_some_and(|code| SESSION_NOT_READY_CODES.contains(&code))
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.code {
            Some(code) => write!(f, "{} {code}: {}", self.status, self.reason),
            None => write!(f, "{}: {}", self.status, self.reason),
        }
    }
}

/// A worker's words as they may travel on: control characters become spaces (a NUL in a
/// reason would be a status the store cannot hold), at most [`MAX_REASON_CHARS`] characters.
fn printable(raw: &str) -> String {
    raw.chars()
        .take(MAX_REASON_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// What a liveness probe found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// `2xx` from `/health`.
    Healthy,
    /// The worker answered, but not `2xx`: alive, not healthy.
    Unhealthy,
    /// The connection was refused (or reset, or the name did not resolve): nothing listens.
    Refused,
    /// No answer within the probe's timeout.
    NoAnswer,
}

/// Which session a call is about and where it runs. The owner travels as `X-User-Id` on every
/// call about a session: the existing worker keys its rate limits by client IP plus that
/// header, and the whole gateway is one client IP to it, so without it every customer would
/// share one budget (5 session operations per 5 minutes).
#[derive(Clone, Copy, Debug)]
pub struct OnWorker<'a> {
    /// The worker's base URL.
    pub endpoint: &'a str,
    /// The session.
    pub session_id: &'a str,
    /// The session's owner; `None` only for a stray session the gateway does not know.
    pub user_id: Option<&'a str>,
}

/// HTTP client for worker endpoints; cheap to clone (one connection pool).
#[derive(Clone, Debug)]
pub struct WorkerClient {
    http: reqwest::Client,
    token: Secret<String>,
}

/// The body of `POST /api/sessions/start`.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct StartSession<'a> {
    session_id: &'a str,
    user_id: &'a str,
    session_name: &'a str,
}

impl WorkerClient {
    /// A client with the worker token and per-call timeout.
    pub fn new(token: Secret<String>, timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self { http, token })
    }

    /// `GET {endpoint}/health`: the worker's own view of its health and load.
    pub async fn health(&self, endpoint: &str) -> Result<Value, WorkerCallError> {
        self.call(self.http.get(format!("{endpoint}/health"))).await
    }

    /// A liveness probe (`GET {endpoint}/health` within `timeout`), telling a process that is
    /// gone (its port refuses connections: strong evidence) from one that does not answer in
    /// time (a partition or a busy worker: weak evidence).
    pub async fn probe(&self, endpoint: &str, timeout: Duration) -> Probe {
        let answer = self
            .http
            .get(format!("{endpoint}/health"))
            .timeout(timeout)
            .send()
            .await;
        match answer {
            Ok(response) if response.status().is_success() => Probe::Healthy,
            Ok(_) => Probe::Unhealthy,
            Err(err) if err.is_connect() && !err.is_timeout() => Probe::Refused,
            Err(_) => Probe::NoAnswer,
        }
    }

    /// `POST {endpoint}/api/sessions/start` for the session of `user_id` named `session_name`.
    pub async fn start_session(
        &self,
        on: OnWorker<'_>,
        user_id: &str,
        session_name: &str,
    ) -> Result<Value, WorkerCallError> {
        let body = StartSession {
            session_id: on.session_id,
            user_id,
            session_name,
        };
        let url = format!("{}/api/sessions/start", on.endpoint);
        self.call(owned_by(self.http.post(url), Some(user_id)).json(&body))
            .await
    }

    /// `GET {endpoint}/api/sessions/{id}/status`.
    pub async fn session_status(&self, on: OnWorker<'_>) -> Result<Value, WorkerCallError> {
        let url = format!("{}/api/sessions/{}/status", on.endpoint, on.session_id);
        self.call(owned_by(self.http.get(url), on.user_id)).await
    }

    /// `POST {endpoint}/api/sessions/{id}/{action}` for restart, disconnect, logout.
    pub async fn session_action(
        &self,
        on: OnWorker<'_>,
        action: &str,
    ) -> Result<Value, WorkerCallError> {
        let url = format!("{}/api/sessions/{}/{action}", on.endpoint, on.session_id);
        self.call(owned_by(self.http.post(url), on.user_id)).await
    }

    /// `DELETE {endpoint}/api/sessions/{id}`: stop and forget a session.
    pub async fn delete_session(&self, on: OnWorker<'_>) -> Result<Value, WorkerCallError> {
        let url = format!("{}/api/sessions/{}", on.endpoint, on.session_id);
        self.call(owned_by(self.http.delete(url), on.user_id)).await
    }

    /// `POST {endpoint}/api/{sessionId}/send` with the gateway's message id in `X-Message-Id`
    /// and `Idempotency-Key` (the worker refuses unknown body fields, so it cannot travel in
    /// the body).
    pub async fn send_message(
        &self,
        on: OnWorker<'_>,
        message_id: &str,
        body: &Value,
    ) -> Result<Value, WorkerCallError> {
        let url = format!("{}/api/{}/send", on.endpoint, on.session_id);
        self.call(
            owned_by(self.http.post(url), on.user_id)
                .header("x-message-id", message_id)
                .header("idempotency-key", message_id)
                .json(body),
        )
        .await
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Value, WorkerCallError> {
        let response = request
            .bearer_auth(self.token.expose())
            .send()
            .await
            .map_err(|e| WorkerCallError::Unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let retry_after = (status == 429)
            .then(|| retry_after(response.headers()))
            .flatten();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        match status {
            200..=299 => Ok(body),
            429 => Err(WorkerCallError::Busy { retry_after }),
            400..=499 => Err(WorkerCallError::Refused { status, body }),
            _ => Err(WorkerCallError::Failed { status, body }),
        }
    }
}

/// The request with the session owner's `X-User-Id`, when known.
fn owned_by(request: reqwest::RequestBuilder, user_id: Option<&str>) -> reqwest::RequestBuilder {
    match user_id {
        Some(user_id) => request.header("x-user-id", user_id),
        None => request,
    }
}

/// The longest `Retry-After` believed: a worker asking for more is asked again sooner.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(15 * 60);

/// A `Retry-After` in seconds (the form the existing worker's limiter sets; an HTTP date is
/// not used by workers and is read as absent).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn both_error_shapes_give_the_workers_reason() {
        let not_connected = Refusal::read(
            400,
            &json!({"success": false, "error": {"code": "SESSION_NOT_CONNECTED",
                "message": "Session not connected. Status: RECONNECTING"}}),
        );
        assert_eq!(not_connected.code.as_deref(), Some("SESSION_NOT_CONNECTED"));
        assert_eq!(
            not_connected.reason,
            "Session not connected. Status: RECONNECTING"
        );
        assert!(not_connected.session_not_ready());

        let invalid = Refusal::read(
            400,
            &json!({"success": false, "error": "Validation error", "details": [
                {"field": "to", "message": "must have 10-15 digits"},
                {"field": "message", "message": "too long"}]}),
        );
        assert_eq!(invalid.code, None);
        assert_eq!(
            invalid.reason,
            "Validation error: to: must have 10-15 digits; message: too long"
        );
        assert!(!invalid.session_not_ready());
        assert_eq!(
            invalid.to_string(),
            "400: Validation error: to: must have 10-15 digits; message: too long"
        );
    }

    #[test]
    fn odd_refusals_still_read() {
        assert_eq!(Refusal::read(400, &Value::Null).reason, "no reason given");
        assert_eq!(
            Refusal::read(422, &json!({"message": "bad\u{0}thing"})).reason,
            "bad thing"
        );
        assert_eq!(
            Refusal::read(400, &json!({"error": {"details": [{"field": "to"}]}})).reason,
            "to: invalid"
        );
        let long = "x".repeat(MAX_REASON_CHARS * 2);
        assert_eq!(
            Refusal::read(400, &json!({"error": long})).reason.len(),
            MAX_REASON_CHARS
        );
        // 404 and 409 say "not here (yet)" whatever the code.
        assert!(Refusal::read(404, &json!({})).session_not_ready());
        assert!(Refusal::read(409, &json!({"error": {"code": "X"}})).session_not_ready());
        assert!(!Refusal::read(400, &json!({"error": {"code": "X"}})).session_not_ready());
    }

    #[test]
    fn retry_after_is_read_in_seconds_and_bounded() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(reqwest::header::RETRY_AFTER, "42".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(42)));
        headers.insert(reqwest::header::RETRY_AFTER, "999999".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
        headers.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), None);
    }
}
