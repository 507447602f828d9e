//! The JSON envelope and the one error type of the HTTP boundary.
//!
//! Success: `{"success": true, "data": …}`. Failure: `{"success": false, "error": {"code",
//! "message", "details"}}` with the matching status. Handlers return [`ApiResult`]; routing
//! failures (404, 405, bad headers) arrive as warp rejections and are turned into the same
//! envelope by [`recover`].

use std::convert::Infallible;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Rejection, Reply};

use crate::auth::AuthError;
use crate::domain::InvalidInput;
use crate::store::StoreError;

/// What a handler answers: a finished response or an error to render as the envelope.
pub type ApiResult = Result<Response, ApiError>;

/// Every way a request can fail, each with its status and stable error code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body or a parameter is invalid (400).
    #[error("{message}")]
    BadRequest {
        /// Stable machine-readable code.
        code: &'static str,
        /// Human-readable explanation.
        message: String,
        /// Optional structured details (e.g. the field).
        details: Option<Value>,
    },
    /// Missing or invalid credentials (401).
    #[error("{0}")]
    Unauthorized(&'static str),
    /// Authenticated but not allowed (403).
    #[error("{message}")]
    Forbidden {
        /// Stable code.
        code: &'static str,
        /// Explanation.
        message: &'static str,
    },
    /// Nothing there, or not the caller's (404: isolation never says "forbidden").
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Path exists, method does not (405, with `Allow`).
    #[error("method not allowed; this path takes {}", allowed.join(", "))]
    MethodNotAllowed {
        /// The methods the path has.
        allowed: Vec<&'static str>,
    },
    /// State conflict such as a duplicate (409).
    #[error("{message}")]
    Conflict {
        /// Stable code.
        code: &'static str,
        /// Explanation.
        message: String,
    },
    /// Body larger than the limit (413).
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The body did not arrive within the body read timeout (408; the connection is closed).
    #[error("the request body did not arrive within {seconds} s")]
    RequestTimeout {
        /// The configured bound.
        seconds: u64,
    },
    /// Wrong content type (415).
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    /// Throttled or over quota (429, with `Retry-After`).
    #[error("{message}")]
    TooManyRequests {
        /// Stable code.
        code: &'static str,
        /// Explanation.
        message: String,
        /// When to retry.
        retry_after: Duration,
    },
    /// Over the hourly message quota (429, with `Retry-After` and `X-RateLimit-*`).
    #[error("{message}")]
    QuotaExceeded {
        /// Explanation.
        message: String,
        /// The counter's state, for the headers.
        decision: crate::quota::QuotaDecision,
    },
    /// A dependency is down (503).
    #[error("{message}")]
    ServiceUnavailable {
        /// Stable code.
        code: &'static str,
        /// Explanation.
        message: String,
    },
    /// A bug or an unexpected failure (500); details go to the log, not the client.
    #[error(transparent)]
    Unexpected(anyhow::Error),
}

/// An error a handler did not classify is a `500`, unless a database that cannot work now is
/// in its chain (a full disk under a store method that only added context): that is a `503`.
impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> Self {
        if crate::store::chain_is_unavailable(&err) {
            ApiError::store_unavailable(&err)
        } else {
            ApiError::Unexpected(err)
        }
    }
}

impl warp::reject::Reject for ApiError {}

/// The `Retry-After` of a `503`.
pub const SERVICE_UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(2);

impl ApiError {
    /// A 400 for an invalid field.
    pub fn validation(invalid: InvalidInput) -> Self {
        ApiError::BadRequest {
            code: "VALIDATION_ERROR",
            message: invalid.to_string(),
            details: Some(json!({ "field": invalid.field })),
        }
    }

    /// The `503` of a store that cannot take the request now (disk full, lock held, connection
    /// lost); the cause goes to the log.
    pub fn store_unavailable(cause: &anyhow::Error) -> Self {
        tracing::error!(error = format!("{cause:#}"), "the store is unavailable");
        ApiError::ServiceUnavailable {
            code: "STORE_UNAVAILABLE",
            message: "the store cannot take this request right now; retry later".to_owned(),
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            ApiError::Forbidden { code, .. } => (StatusCode::FORBIDDEN, code),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            ApiError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED")
            }
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE")
            }
            ApiError::RequestTimeout { .. } => (StatusCode::REQUEST_TIMEOUT, "REQUEST_TIMEOUT"),
            ApiError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE")
            }
            ApiError::TooManyRequests { code, .. } => (StatusCode::TOO_MANY_REQUESTS, code),
            ApiError::QuotaExceeded { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "MESSAGE_QUOTA_EXCEEDED")
            }
            ApiError::ServiceUnavailable { code, .. } => (StatusCode::SERVICE_UNAVAILABLE, code),
            ApiError::Unexpected(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR"),
        }
    }

    /// Renders the error envelope (and logs unexpected errors with their chain).
    pub fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            ApiError::Unexpected(err) => {
                tracing::error!(error = format!("{err:#}"), "request failed unexpectedly");
                "internal server error".to_owned()
            }
            other => other.to_string(),
        };
        let details = match &self {
            ApiError::BadRequest { details, .. } => details.clone(),
            ApiError::PayloadTooLarge { limit } => Some(json!({ "limitBytes": limit })),
            _ => None,
        };
        let body = json!({
            "success": false,
            "error": { "code": code, "message": message, "details": details },
        });
        let mut response =
            warp::reply::with_status(warp::reply::json(&body), status).into_response();
        if status == StatusCode::UNAUTHORIZED {
            // RFC 9110: a 401 names the scheme that would work.
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"wa-gateway\""),
            );
        }
        if let ApiError::MethodNotAllowed { allowed } = &self
            && let Ok(value) = HeaderValue::from_str(&allowed.join(", "))
        {
            response.headers_mut().insert(http::header::ALLOW, value);
        }
        let retry_after = match &self {
            ApiError::TooManyRequests { retry_after, .. } => Some(*retry_after),
            ApiError::QuotaExceeded { decision, .. } => {
                rate_limit_headers(&mut response, decision);
                // A request larger than the hourly limit never fits: no time to come back.
                decision.fits_an_hour.then_some(decision.retry_after)
            }
            // Every 503 is temporary (the log, the store or the fleet cannot take it now):
            // tell the client when to come back rather than let it hammer.
            ApiError::ServiceUnavailable { .. } => Some(SERVICE_UNAVAILABLE_RETRY_AFTER),
            _ => None,
        };
        if let Some(retry_after) = retry_after {
            // Round up: "retry after 0 seconds" would invite a hot loop.
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(seconds.max(1)));
        }
        response
    }
}

impl From<InvalidInput> for ApiError {
    fn from(invalid: InvalidInput) -> Self {
        ApiError::validation(invalid)
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => ApiError::NotFound("resource"),
            StoreError::Conflict(what) => ApiError::Conflict {
                code: "CONFLICT",
                message: what.to_owned(),
            },
            StoreError::Unavailable(e) => ApiError::store_unavailable(&e),
            StoreError::Unexpected(e) => ApiError::from(e),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::Invalid(invalid) => ApiError::validation(invalid),
            AuthError::InvalidCredentials => ApiError::Unauthorized("invalid email or password"),
            AuthError::AccountDisabled => ApiError::Forbidden {
                code: "ACCOUNT_DISABLED",
                message: "this account has been deactivated",
            },
            AuthError::Throttled {
                code,
                message,
                retry_after,
            } => ApiError::TooManyRequests {
                code,
                message: message.to_owned(),
                retry_after,
            },
            AuthError::InvalidRefreshToken => {
                ApiError::Unauthorized("invalid or expired refresh token")
            }
            AuthError::RefreshTokenReused => {
                ApiError::Unauthorized("refresh token reuse detected; this login has been revoked")
            }
            AuthError::EmailTaken => ApiError::Conflict {
                code: "EMAIL_TAKEN",
                message: "an account with this email already exists".to_owned(),
            },
            AuthError::StoreUnavailable(e) => ApiError::store_unavailable(&e),
            AuthError::Unexpected(e) => ApiError::from(e),
        }
    }
}

/// `Retry-After` of a worker's `429` that gave none: its session-operation budget is 5 per 5
/// minutes, so a minute is about when one frees.
const WORKER_BUSY_RETRY_AFTER: Duration = Duration::from_secs(60);

impl From<crate::fleet::FleetError> for ApiError {
    fn from(err: crate::fleet::FleetError) -> Self {
        use crate::fleet::FleetError;
        use crate::fleet::client::WorkerCallError;
        match err {
            FleetError::Invalid(invalid) => ApiError::validation(invalid),
            FleetError::NotFound(what) => ApiError::NotFound(what),
            FleetError::Conflict { code, message } => ApiError::Conflict { code, message },
            FleetError::NoWorkerAvailable => ApiError::ServiceUnavailable {
                code: "NO_WORKER_AVAILABLE",
                message: "no healthy worker with free capacity is available; retry later"
                    .to_owned(),
            },
            FleetError::NotOwner {
                worker_id,
                session_id,
            } => ApiError::Conflict {
                code: "STALE_OWNER",
                message: format!("worker {worker_id} does not own session {session_id}; stop it"),
            },
            FleetError::Worker(err @ WorkerCallError::Refused { .. }) => ApiError::Conflict {
                code: "WORKER_REFUSED",
                message: match err.refusal() {
                    Some(refusal) => format!("the worker refused the request ({refusal})"),
                    None => err.to_string(),
                },
            },
            FleetError::Worker(WorkerCallError::Busy { retry_after }) => {
                ApiError::TooManyRequests {
                    code: "WORKER_RATE_LIMITED",
                    message: "the session's worker is rate limiting operations on your sessions; \
                    retry after the time in Retry-After"
                        .to_owned(),
                    retry_after: retry_after.unwrap_or(WORKER_BUSY_RETRY_AFTER),
                }
            }
            FleetError::Worker(other) => ApiError::ServiceUnavailable {
                code: "WORKER_UNAVAILABLE",
                message: other.to_string(),
            },
            FleetError::StoreUnavailable(e) => ApiError::store_unavailable(&e),
            FleetError::Unexpected(e) => ApiError::from(e),
        }
    }
}

/// Maps a store `NotFound` to a 404 naming `what`; other store errors as usual.
pub fn not_found_as(what: &'static str) -> impl Fn(StoreError) -> ApiError {
    move |err| match err {
        StoreError::NotFound => ApiError::NotFound(what),
        other => other.into(),
    }
}

/// The success envelope around borrowed data: serialised straight from `data`, with no
/// intermediate `Value` tree (a bulk send's answer holds a thousand results).
#[derive(Serialize)]
struct SuccessEnvelope<'a, T> {
    success: bool,
    data: &'a T,
}

/// `data` inside the success envelope, as the JSON text of a response body.
pub fn success_body<T: Serialize>(data: &T) -> Result<String, ApiError> {
    serde_json::to_string(&SuccessEnvelope {
        success: true,
        data,
    })
    .map_err(|err| ApiError::Unexpected(anyhow::Error::new(err).context("rendering an answer")))
}

/// A JSON response of `status` with `body` (already the envelope's text).
pub fn json_response(status: StatusCode, body: String) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        warp::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Renders `data` inside the success envelope with `status`.
pub fn success<T: Serialize>(status: StatusCode, data: &T) -> Response {
    match success_body(data) {
        Ok(body) => json_response(status, body),
        Err(err) => err.into_response(),
    }
}

/// Turns a handler's result into a response (the last step of every route).
pub fn finish(result: ApiResult) -> Response {
    result.unwrap_or_else(ApiError::into_response)
}

/// The one place where warp rejections become the error envelope.
pub async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    let error = if let Some(api) = rejection.find::<ApiError>() {
        // ApiError is not Clone (anyhow inside); rebuild the variants that can be rejections.
        return Ok(rebuild(api).into_response());
    } else if let Some(unmatched) = rejection.find::<Unmatched>()
        && !unmatched.allowed.is_empty()
        && !unmatched
            .allowed
            .iter()
            .any(|allowed| *allowed == unmatched.method.as_str())
    {
        ApiError::MethodNotAllowed {
            allowed: unmatched.allowed.clone(),
        }
    } else if rejection.is_not_found()
        || rejection.find::<Unmatched>().is_some()
        || rejection.find::<warp::reject::MethodNotAllowed>().is_some()
    {
        // A served method whose route refused the request without saying why (a path
        // parameter that no route takes), or a path no route has.
        ApiError::NotFound("route")
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::PayloadTooLarge { limit: 0 }
    } else if rejection
        .find::<warp::reject::UnsupportedMediaType>()
        .is_some()
    {
        ApiError::UnsupportedMediaType
    } else if let Some(missing) = rejection.find::<warp::reject::MissingHeader>() {
        ApiError::BadRequest {
            code: "MISSING_HEADER",
            message: format!("missing request header `{}`", missing.name()),
            details: None,
        }
    } else if let Some(invalid) = rejection.find::<warp::reject::InvalidHeader>() {
        ApiError::BadRequest {
            code: "INVALID_HEADER",
            message: format!("invalid request header `{}`", invalid.name()),
            details: None,
        }
    } else if let Some(query) = rejection.find::<warp::reject::InvalidQuery>() {
        ApiError::BadRequest {
            code: "INVALID_QUERY",
            message: format!("invalid query string: {query}"),
            details: None,
        }
    } else if rejection
        .find::<warp::filters::cors::CorsForbidden>()
        .is_some()
    {
        ApiError::Forbidden {
            code: "CORS_FORBIDDEN",
            message: "origin not allowed",
        }
    } else {
        ApiError::Unexpected(anyhow::anyhow!("unhandled rejection: {rejection:?}"))
    };
    Ok(error.into_response())
}

/// The rejection of a request no route took (see `http::routes`): its method and the methods
/// its path has.
#[derive(Debug)]
pub struct Unmatched {
    /// The request's method.
    pub method: warp::http::Method,
    /// The methods served at its path (empty: no such path).
    pub allowed: Vec<&'static str>,
}

impl warp::reject::Reject for Unmatched {}

fn rebuild(error: &ApiError) -> ApiError {
    match error {
        ApiError::BadRequest {
            code,
            message,
            details,
        } => ApiError::BadRequest {
            code,
            message: message.clone(),
            details: details.clone(),
        },
        ApiError::Unauthorized(m) => ApiError::Unauthorized(m),
        ApiError::Forbidden { code, message } => ApiError::Forbidden { code, message },
        ApiError::NotFound(what) => ApiError::NotFound(what),
        ApiError::MethodNotAllowed { allowed } => ApiError::MethodNotAllowed {
            allowed: allowed.clone(),
        },
        ApiError::Conflict { code, message } => ApiError::Conflict {
            code,
            message: message.clone(),
        },
        ApiError::PayloadTooLarge { limit } => ApiError::PayloadTooLarge { limit: *limit },
        ApiError::RequestTimeout { seconds } => ApiError::RequestTimeout { seconds: *seconds },
        ApiError::UnsupportedMediaType => ApiError::UnsupportedMediaType,
        ApiError::TooManyRequests {
            code,
            message,
            retry_after,
        } => ApiError::TooManyRequests {
            code,
            message: message.clone(),
            retry_after: *retry_after,
        },
        ApiError::QuotaExceeded { message, decision } => ApiError::QuotaExceeded {
            message: message.clone(),
            decision: *decision,
        },
        ApiError::ServiceUnavailable { code, message } => ApiError::ServiceUnavailable {
            code,
            message: message.clone(),
        },
        ApiError::Unexpected(err) => ApiError::Unexpected(anyhow::anyhow!("{err:#}")),
    }
}

/// `X-RateLimit-Limit`, `-Remaining` and `-Reset` of a quota decision.
pub(crate) fn rate_limit_headers(
    response: &mut warp::reply::Response,
    decision: &crate::quota::QuotaDecision,
) {
    let headers = response.headers_mut();
    headers.insert("x-ratelimit-limit", HeaderValue::from(decision.limit));
    headers.insert(
        "x-ratelimit-remaining",
        HeaderValue::from(decision.remaining),
    );
    headers.insert("x-ratelimit-reset", HeaderValue::from(decision.reset_at_s));
}
