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
    let span = tracing::info_span!("request", request_id = %request_id, method = %method, path = %request.uri().path());

    async move {
        let limit = context.config.max_body_bytes;
        let (mut parts, body) = request.into_parts();
        let mut response = match declared_length(&parts.headers) {
            Some(length) if length > limit as u64 => {
                ApiError::PayloadTooLarge { limit }.into_response()
            }
            _ => match Limited::new(body, limit).collect().await {
                Ok(collected) => {
                    parts.extensions.insert(RequestId(request_id.clone()));
                    parts.extensions.insert(PeerAddr(peer));
                    if let Ok(value) = HeaderValue::from_str(&request_id) {
                        parts.headers.insert(REQUEST_ID_HEADER, value);
                    }
                    let request = Request::from_parts(parts, Full::new(collected.to_bytes()));
                    match warp_service.call(request).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    }
                }
                Err(err)
                    if err
                        .downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some() =>
                {
                    ApiError::PayloadTooLarge { limit }.into_response()
                }
                Err(err) => ApiError::BadRequest {
                    code: "BODY_READ_ERROR",
                    message: format!("could not read the request body: {err}"),
                    details: None,
                }
                .into_response(),
            },
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
