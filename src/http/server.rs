//! The HTTP server: an accept loop over an already-bound listener, hyper connections, and one
//! per-request wrapper around the warp filter tree that
//!
//! * assigns the request id (accepted from `X-Request-Id` when sane, generated otherwise), puts it
//!   on the tracing span of everything the request does, and echoes it on the response;
//! * enforces the body limit on the wire (chunked bodies included) before any filter runs;
//! * records the client address for filters (throttling);
//! * logs one access line and updates the HTTP metrics.
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
use hyper_util::rt::{TokioExecutor, TokioIo};
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
    let warp_service = warp::service(filter);
    let graceful = GracefulShutdown::new();
    let builder = Builder::new(TokioExecutor::new());
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
        let context = context.clone();
        let warp_service = warp_service.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            handle(request, peer, context.clone(), warp_service.clone())
        });
        let connection = graceful.watch(
            builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned(),
        );
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
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
    let counts_as_pressure = !super::worker_api::is_worker_path(request.uri().path());
    let span = tracing::info_span!("request", request_id = %request_id, method = %method, path = %request.uri().path());

    async move {
        let _in_flight = counts_as_pressure.then(|| context.pressure.enter());
        let limit = context.config.max_body_bytes;
        let (mut parts, body) = request.into_parts();
        let mut response = match read_body(body, limit, declared_length(&parts.headers)).await {
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
            Err(BodyError::Read(err)) => ApiError::BadRequest {
                code: "BODY_READ_ERROR",
                message: format!("could not read the request body: {err}"),
                details: None,
            }
            .into_response(),
        };
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(REQUEST_ID_HEADER, value);
        }
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
        tracing::info!(
            status = status.as_u16(),
            elapsed_ms = elapsed.as_secs_f64() * 1000.0,
            "request finished"
        );
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
    Read(hyper::Error),
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
