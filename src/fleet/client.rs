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
    /// The worker is throttling us (429): back off, do not fail.
    #[error("worker is rate limiting (429)")]
    Busy,
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
pub struct StartSession<'a> {
    /// Session id.
    pub session_id: &'a str,
    /// Owner.
    pub user_id: &'a str,
    /// The owner's label.
    pub session_name: &'a str,
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

    /// `POST {endpoint}/api/sessions/start`.
    pub async fn start_session(
        &self,
        endpoint: &str,
        body: &StartSession<'_>,
    ) -> Result<Value, WorkerCallError> {
        self.call(
            self.http
                .post(format!("{endpoint}/api/sessions/start"))
                .json(body),
        )
        .await
    }

    /// `GET {endpoint}/api/sessions/{id}/status`.
    pub async fn session_status(
        &self,
        endpoint: &str,
        session_id: &str,
    ) -> Result<Value, WorkerCallError> {
        self.call(
            self.http
                .get(format!("{endpoint}/api/sessions/{session_id}/status")),
        )
        .await
    }

    /// `POST {endpoint}/api/sessions/{id}/{action}` for restart, disconnect, logout.
    pub async fn session_action(
        &self,
        endpoint: &str,
        session_id: &str,
        action: &str,
    ) -> Result<Value, WorkerCallError> {
        self.call(
            self.http
                .post(format!("{endpoint}/api/sessions/{session_id}/{action}")),
        )
        .await
    }

    /// `DELETE {endpoint}/api/sessions/{id}`: stop and forget a session.
    pub async fn delete_session(
        &self,
        endpoint: &str,
        session_id: &str,
    ) -> Result<Value, WorkerCallError> {
        self.call(
            self.http
                .delete(format!("{endpoint}/api/sessions/{session_id}")),
        )
        .await
    }

    /// `POST {endpoint}/api/{sessionId}/send` with the gateway's message id in `X-Message-Id`
    /// and `Idempotency-Key` (the worker refuses unknown body fields, so it cannot travel in
    /// the body).
    pub async fn send_message(
        &self,
        endpoint: &str,
        session_id: &str,
        message_id: &str,
        body: &Value,
    ) -> Result<Value, WorkerCallError> {
        self.call(
            self.http
                .post(format!("{endpoint}/api/{session_id}/send"))
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
        let body: Value = response.json().await.unwrap_or(Value::Null);
        match status {
            200..=299 => Ok(body),
            429 => Err(WorkerCallError::Busy),
            400..=499 => Err(WorkerCallError::Refused { status, body }),
            _ => Err(WorkerCallError::Failed { status, body }),
        }
    }
}
