//! The HTTP server: an accept loop over an already-bound listener, hyper connections, and one
//! per-request wrapper around the warp filter tree that
//!
//! * assigns the request id (accepted from `X-Request-Id` when sane, generated otherwise), puts it
//!   on the tracing span of everything the request does, and echoes it on the response;
//! * enforces the body limit on the wire (chunked bodies included) before any filter runs;
//! * records the client address for filters (throttling);
//! * logs one access line and updates the HTTP metrics;
//! * marks every answer `nosniff`, and `no-store` unless the handler chose its caching.
//!
//! What one client can hold is bounded ([`HttpLimits`](crate::config::HttpLimits)): a request's headers must arrive within
//! the header read timeout of the connection opening or of the previous answer (which also
//! closes idle keep-alive connections), its body within the body read timeout (`408`), and
//! beyond the connection cap a new connection gets a `503` and is closed.
//!
//! Shutdown: when the shutdown future resolves the listener closes, connections are told to
//! finish their in-flight request, and the loop waits for them up to a grace period.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::Instrument;
use warp::filters::BoxedFilter;

use super::error::ApiError;
use crate::app::AppContext;

/// The request id, as an extension filters can read.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// The TCP peer of the connection, as an extension filters can read.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

const REQUEST_ID_HEADER: &str = "x-request-id";

/// Serves `filter` on `listener` until `shutdown` resolves, then drains for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    filter: BoxedFilter<(warp::reply::Response,)>,
    context: Arc<AppContext>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) {
    let limits = context.config.http_limits;
    raise_open_files_limit(limits.max_connections);
    let warp_service = warp::service(filter);
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let builder = Arc::new(builder);
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    // Flips when the listener closes: a connection still waiting for its first byte then has
    // nothing to drain and ends at once (its task holds a drain watcher meanwhile).
    let (stopping, _) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tokio::spawn(refuse_connection(stream));
            continue;
        };
        let context = context.clone();
        let warp_service = warp_service.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            handle(request, peer, context.clone(), warp_service.clone())
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let mut stopping = stopping.subscribe();
        tokio::spawn(async move {
            // hyper's header timer starts once it knows the protocol, which takes a first byte:
            // a connection that never sends one is closed here.
            let mut first = [0_u8; 1];
            let first_byte = tokio::select! {
                peeked = tokio::time::timeout(limits.header_read_timeout, stream.peek(&mut first)) => peeked,
                _ = stopping.wait_for(|stopping| *stopping) => return,
            };
            match first_byte {
                Ok(Ok(1..)) => {}
                // Silent until the timeout, gone, or broken.
                _ => return,
            }
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            if let Err(err) = watcher.watch(connection).await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    stopping.send_replace(true);
    let draining = Instant::now();
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_ok()
    {
        if draining.elapsed() > Duration::from_secs(1) {
            tracing::warn!(
                elapsed_ms = draining.elapsed().as_millis() as u64,
                "slow shutdown: draining connections"
            );
        }
    } else {
        tracing::warn!(
            grace_seconds = grace.as_secs(),
            "connections still open after the grace period"
        );
    }
}

async fn handle<S>(
    request: Request<Incoming>,
    peer: SocketAddr,
    context: Arc<AppContext>,
    mut warp_service: S,
) -> Result<warp::reply::Response, Infallible>
where
    S: tower_service::Service<
            Request<Full<Bytes>>,
            Response = warp::reply::Response,
            Error = Infallible,
        >,
{
    let started = Instant::now();
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_acceptable_request_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let method = request.method().clone();
    // Worker calls (registration, heartbeats, receipt callbacks) follow from delivery itself:
    // counting them would make delivery throttle itself (see `IngressPressure`).
    let from_worker = super::worker_api::is_worker_path(request.uri().path());
    let counts_as_pressure = !from_worker;
    let span = tracing::info_span!("request", request_id = %request_id, method = %method, path = %request.uri().path());

    async move {
        let _in_flight = counts_as_pressure.then(|| context.pressure.enter());
        let limit = context.config.max_body_bytes;
        let body_timeout = context.config.http_limits.body_read_timeout;
        let (mut parts, body) = request.into_parts();
        let read = tokio::time::timeout(
            body_timeout,
            read_body(body, limit, declared_length(&parts.headers)),
        )
        .await
        .unwrap_or(Err(BodyError::TimedOut));
        let mut response = match read {
            Ok(collected) => {
                parts.extensions.insert(RequestId(request_id.clone()));
                parts.extensions.insert(PeerAddr(peer));
                if let Ok(value) = HeaderValue::from_str(&request_id) {
                    parts.headers.insert(REQUEST_ID_HEADER, value);
                }
                let request = Request::from_parts(parts, Full::new(collected));
                match warp_service.call(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            }
            Err(BodyError::TooLarge) => {
                let mut response = ApiError::PayloadTooLarge { limit }.into_response();
                // What is left of the body is not read: the connection cannot serve another
                // request.
                response
                    .headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                response
            }
            Err(BodyError::TimedOut) => {
                let mut response = ApiError::RequestTimeout {
                    seconds: body_timeout.as_secs(),
                }
                .into_response();
                response
                    .headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                response
            }
            Err(BodyError::Read(err)) => ApiError::BadRequest {
                code: "BODY_READ_ERROR",
                message: format!("could not read the request body: {err}"),
                details: None,
            }
            .into_response(),
        };
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            headers.insert(REQUEST_ID_HEADER, value);
        }
        headers.insert(
            http::header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        // Answers carry tokens, keys and tenants' data: no cache keeps them, unless the
        // handler said otherwise (the OpenAPI description).
        headers
            .entry(http::header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-store"));
        let status = response.status();
        let elapsed = started.elapsed();
        let method_label = crate::metrics::method_label(&method);
        context
            .metrics
            .http_requests_total
            .with_label_values(&[method_label, crate::metrics::status_label(status)])
            .inc();
        context
            .metrics
            .http_request_duration_seconds
            .with_label_values(&[method_label])
            .observe(elapsed.as_secs_f64());
        // Workers call every few seconds each (heartbeats, receipts): their requests are
        // DEBUG, a client's INFO, a failure WARN whoever sent it.
        let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), elapsed_ms, "request failed");
        } else if from_worker {
            tracing::debug!(status = status.as_u16(), elapsed_ms, "request finished");
        } else {
            tracing::info!(status = status.as_u16(), elapsed_ms, "request finished");
        }
        Ok(response)
    }
    .instrument(span)
    .await
}

/// How much of an oversized body is read and thrown away before the `413` goes out, and for how
/// long. A client still writing its body when the server closes gets a connection reset instead
/// of the answer; reading the rest (when it is not absurdly large) lets it see the `413`.
const DISCARD_BYTES: u64 = 16 * 1024 * 1024;
const DISCARD_TIME: Duration = Duration::from_secs(2);

enum BodyError {
    TooLarge,
    TimedOut,
    Read(hyper::Error),
}

/// What a connection beyond [`HttpLimits::max_connections`](crate::config::HttpLimits) gets before it is closed: the
/// error envelope, written by hand (no HTTP machinery is spent on it).
static CONNECTIONS_FULL: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let body = serde_json::json!({
        "success": false,
        "error": {
            "code": "TOO_MANY_CONNECTIONS",
            "message": "the server holds as many connections as it may; retry later",
            "details": null,
        },
    })
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: {}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        super::error::SERVICE_UNAVAILABLE_RETRY_AFTER.as_secs(),
        body.len()
    )
    .into_bytes()
});

/// Answers a connection over the cap with a `503` and closes it, without reading its request
/// (bounded, so a client that never reads cannot hold the task).
async fn refuse_connection(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        stream.write_all(&CONNECTIONS_FULL).await?;
        stream.shutdown().await
    })
    .await;
}

/// Lets this process hold `connections` sockets: the soft open-files limit goes up to the hard
/// one, and a hard limit below what the cap needs is worth a warning at start.
fn raise_open_files_limit(connections: usize) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let wanted = connections as u64 + 1024;
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current.is_some_and(|current| current < wanted) {
        limit.current = match limit.maximum {
            Some(maximum) => Some(maximum.min(wanted)),
            None => Some(wanted),
        };
        if let Err(err) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %err, "could not raise the open-files limit");
        }
    }
    let current = getrlimit(Resource::Nofile).current;
    if let Some(current) = current.filter(|current| *current < wanted) {
        tracing::warn!(
            open_files = current,
            max_connections = connections,
            "the open-files limit is below HTTP_MAX_CONNECTIONS plus headroom; connections \
             beyond it fail at accept (raise `ulimit -n` or lower HTTP_MAX_CONNECTIONS)"
        );
    }
}

/// Reads a body of at most `limit` bytes. Beyond the limit the rest is discarded, within
/// [`DISCARD_BYTES`] and [`DISCARD_TIME`], before the caller answers `413`.
async fn read_body(
    mut body: Incoming,
    limit: usize,
    declared: Option<u64>,
) -> Result<Bytes, BodyError> {
    if let Some(length) = declared
        && length > limit as u64
    {
        if length <= DISCARD_BYTES {
            discard(body).await;
        }
        return Err(BodyError::TooLarge);
    }
    // Over a borrow, so the rest of the body is still there to discard after the limit.
    match Limited::new(&mut body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) => match err.downcast::<hyper::Error>() {
            Ok(err) => Err(BodyError::Read(*err)),
            Err(_) => {
                // The only other error is the limit's.
                discard(body).await;
                Err(BodyError::TooLarge)
            }
        },
    }
}

/// Reads and drops what is left of `body`, up to [`DISCARD_BYTES`] within [`DISCARD_TIME`].
async fn discard(mut body: Incoming) {
    let drain = async {
        let mut dropped = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                dropped += data.len() as u64;
                if dropped > DISCARD_BYTES {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(DISCARD_TIME, drain).await;
}

fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Client-supplied ids are echoed into logs and headers: keep them short and printable.
fn is_acceptable_request_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
}
