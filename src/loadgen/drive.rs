//! The load itself: which request carries which messages (the plan), the send run over
//! `POST /api/v1/external/send[/bulk]`, and the ceiling run over `GET /api/v1/health`, both with a
//! fixed number of requests in flight on one pooled keep-alive client.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::Mode;
use super::progress::Progress;
use super::report::{AcceptedMessage, RequestTiming};
use crate::config::Secret;

/// Every message goes to this recipient: the simulated worker accepts any number, and one
/// recipient keeps the sends comparable.
const RECIPIENT: &str = "6281234567890";

/// One HTTP request of the send run: `count` consecutive messages of one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedRequest {
    /// Index of the session.
    pub session: usize,
    /// Sequence number of its first message within the session.
    pub first_seq: u64,
    /// Messages it carries (1 in single mode).
    pub count: u32,
    /// Messages of all earlier requests: with `--rate`, the request starts at
    /// `offset / rate` seconds into the run.
    pub offset: u64,
}

/// Spreads `messages` over `sessions` as evenly as possible and cuts each session's share into
/// requests of at most `per_request`, visiting the sessions round-robin so every session is busy
/// all through the run.
pub fn plan(sessions: usize, messages: u64, per_request: u32) -> Vec<PlannedRequest> {
    if sessions == 0 || per_request == 0 {
        return Vec::new();
    }
    let share = |session: usize| {
        let base = messages / sessions as u64;
        base + u64::from((session as u64) < messages % sessions as u64)
    };
    let per_request = u64::from(per_request);
    let mut requests = Vec::new();
    let mut offset = 0u64;
    let rounds = share(0).div_ceil(per_request);
    for round in 0..rounds {
        let first_seq = round * per_request;
        for session in 0..sessions {
            let remaining = share(session).saturating_sub(first_seq);
            if remaining == 0 {
                continue;
            }
            let count = remaining.min(per_request);
            requests.push(PlannedRequest {
                session,
                first_seq,
                // At most `per_request`, which came from a u32.
                count: u32::try_from(count).unwrap_or(u32::MAX),
                offset,
            });
            offset += count;
        }
    }
    requests
}

/// The text of a message: the session and its sequence number, readable in the worker's record.
pub fn message_text(session_id: &str, seq: u64) -> String {
    format!("lg {session_id} {seq}")
}

/// Body of `POST /api/v1/external/send`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SingleSend<'a> {
    session_id: &'a str,
    to: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    message: String,
}

/// Body of `POST /api/v1/external/send/bulk`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BulkSend<'a> {
    session_id: &'a str,
    messages: Vec<BulkItem<'a>>,
}

#[derive(Serialize)]
struct BulkItem<'a> {
    to: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    message: String,
}

/// The answer envelope, reduced to what the load generator reads.
#[derive(Deserialize)]
struct Envelope<T> {
    data: Option<T>,
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SingleAccepted {
    message_id: String,
}

#[derive(Deserialize)]
struct BulkAccepted {
    results: Vec<BulkResult>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BulkResult {
    index: usize,
    message_id: Option<String>,
    error: Option<ErrorBody>,
}

/// What the send run needs, shared by its tasks.
pub struct SendRun {
    pub client: reqwest::Client,
    /// The gateway's base URL.
    pub base_url: String,
    pub api_key: Secret<String>,
    pub mode: Mode,
    /// Session ids, by index.
    pub sessions: Vec<String>,
    pub plan: Vec<PlannedRequest>,
    /// Messages per second, when paced.
    pub rate: Option<f64>,
    pub concurrency: usize,
    pub progress: Arc<Progress>,
    /// Crash runs: every request carries `Idempotency-Key: <this>-<request index>` and is tried
    /// again (after [`RETRY_PAUSE`]) when it is cut off, answered `503` or `409
    /// IDEMPOTENCY_KEY_IN_PROGRESS`, until answered or [`RETRY_FOR`] has passed, as a careful
    /// integrator does while the gateway restarts.
    pub idempotency_prefix: Option<String>,
}

/// Pause before a crash run tries a request again.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// How long a crash run keeps trying one request.
const RETRY_FOR: Duration = Duration::from_secs(120);

/// What the send run observed.
#[derive(Debug, Default)]
pub struct SendOutcome {
    /// By request index; a request that never got an answer has no timing.
    pub timings: Vec<Option<RequestTiming>>,
    /// Accepted messages with the id the gateway gave them.
    pub accepted: Vec<(String, AcceptedMessage)>,
    /// Messages not accepted, by reason (`HTTP 429 RATE_LIMITED`, `transport: …`).
    pub refused: BTreeMap<String, u64>,
    /// From the first request sent to the last answer read.
    pub elapsed: Duration,
}

impl SendOutcome {
    /// Messages not accepted.
    pub fn refused_messages(&self) -> u64 {
        self.refused.values().sum()
    }
}

/// One task's share of the observations, merged at the end so the hot path takes no lock.
#[derive(Default)]
struct TaskLog {
    timings: Vec<(usize, RequestTiming)>,
    accepted: Vec<(String, AcceptedMessage)>,
    refused: BTreeMap<String, u64>,
}

impl TaskLog {
    fn refuse(&mut self, reason: String, messages: u64) {
        *self.refused.entry(reason).or_default() += messages;
    }
}

/// Sends the whole plan with `concurrency` requests in flight (fewer while `--rate` holds them
/// back).
pub async fn send_all(run: Arc<SendRun>) -> anyhow::Result<SendOutcome> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..run.concurrency.max(1) {
        tasks.spawn(send_task(Arc::clone(&run), Arc::clone(&next), started));
    }
    let mut outcome = SendOutcome {
        timings: vec![None; run.plan.len()],
        ..SendOutcome::default()
    };
    while let Some(joined) = tasks.join_next().await {
        let log = joined.context("a send task failed")?;
        for (request, timing) in log.timings {
            if let Some(slot) = outcome.timings.get_mut(request) {
                *slot = Some(timing);
            }
        }
        outcome.accepted.extend(log.accepted);
        for (reason, count) in log.refused {
            *outcome.refused.entry(reason).or_default() += count;
        }
    }
    outcome.elapsed = started.elapsed();
    Ok(outcome)
}

async fn send_task(run: Arc<SendRun>, next: Arc<AtomicUsize>, started: Instant) -> TaskLog {
    let mut log = TaskLog::default();
    let url = match run.mode {
        Mode::Single => format!("{}/api/v1/external/send", run.base_url),
        Mode::Bulk => format!("{}/api/v1/external/send/bulk", run.base_url),
    };
    loop {
        let index = next.fetch_add(1, Ordering::Relaxed);
        let Some(planned) = run.plan.get(index).copied() else {
            return log;
        };
        if let Some(rate) = run.rate {
            // Open loop: the start time comes from the schedule, not from the previous answer.
            let due = started + Duration::from_secs_f64(planned.offset as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let Some(session_id) = run.sessions.get(planned.session).map(String::as_str) else {
            log.refuse(
                "no such session in the plan".to_owned(),
                u64::from(planned.count),
            );
            continue;
        };
        let body = match request_body(run.mode, session_id, &planned) {
            Ok(body) => body,
            Err(err) => {
                log.refuse(format!("body: {err}"), u64::from(planned.count));
                continue;
            }
        };
        run.progress.add_sent(u64::from(planned.count));
        let started_at_us = unix_micros();
        let sent = Instant::now();
        let answer = match &run.idempotency_prefix {
            None => post(&run, &url, body, None).await,
            Some(prefix) => {
                let key = format!("{prefix}-{index}");
                loop {
                    let answer = post(&run, &url, body.clone(), Some(&key)).await;
                    if !worth_retrying(&answer) || sent.elapsed() > RETRY_FOR {
                        break answer;
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        };
        let latency = sent.elapsed();
        let answered_at_us = unix_micros();
        let accepted_before = log.accepted.len();
        match answer {
            Ok((status, bytes)) => read_answer(&mut log, run.mode, index, &planned, status, &bytes),
            Err(err) => log.refuse(transport_reason(&err), u64::from(planned.count)),
        }
        let accepted_now = (log.accepted.len() - accepted_before) as u64;
        run.progress.add_accepted(accepted_now);
        run.progress
            .add_refused(u64::from(planned.count).saturating_sub(accepted_now));
        log.timings.push((
            index,
            RequestTiming {
                started_at_us,
                answered_at_us,
                latency,
                accepted: accepted_now > 0,
            },
        ));
    }
}

fn request_body(
    mode: Mode,
    session_id: &str,
    planned: &PlannedRequest,
) -> serde_json::Result<Vec<u8>> {
    match mode {
        Mode::Single => serde_json::to_vec(&SingleSend {
            session_id,
            to: RECIPIENT,
            kind: "text",
            message: message_text(session_id, planned.first_seq),
        }),
        Mode::Bulk => serde_json::to_vec(&BulkSend {
            session_id,
            messages: (0..u64::from(planned.count))
                .map(|item| BulkItem {
                    to: RECIPIENT,
                    kind: "text",
                    message: message_text(session_id, planned.first_seq + item),
                })
                .collect(),
        }),
    }
}

async fn post(
    run: &SendRun,
    url: &str,
    body: Vec<u8>,
    idempotency_key: Option<&str>,
) -> reqwest::Result<(reqwest::StatusCode, bytes::Bytes)> {
    let mut request = run
        .client
        .post(url)
        .header("x-api-key", run.api_key.expose())
        .header(reqwest::header::CONTENT_TYPE, "application/json");
    if let Some(key) = idempotency_key {
        request = request.header("idempotency-key", key);
    }
    let response = request.body(body).send().await?;
    let status = response.status();
    let bytes = response.bytes().await?;
    Ok((status, bytes))
}

/// Whether a crash run tries a request again: it was cut off, the gateway is not ready
/// (`503`), or a try cut off before still holds the key (`409 IDEMPOTENCY_KEY_IN_PROGRESS`).
fn worth_retrying(answer: &reqwest::Result<(reqwest::StatusCode, bytes::Bytes)>) -> bool {
    match answer {
        Err(_) => true,
        Ok((status, _)) if *status == reqwest::StatusCode::SERVICE_UNAVAILABLE => true,
        Ok((status, bytes)) if *status == reqwest::StatusCode::CONFLICT => {
            serde_json::from_slice::<Envelope<serde_json::Value>>(bytes)
                .ok()
                .and_then(|envelope| envelope.error)
                .is_some_and(|error| error.code == "IDEMPOTENCY_KEY_IN_PROGRESS")
        }
        Ok(_) => false,
    }
}

/// Records what one answer accepted and refused.
fn read_answer(
    log: &mut TaskLog,
    mode: Mode,
    request: usize,
    planned: &PlannedRequest,
    status: reqwest::StatusCode,
    bytes: &[u8],
) {
    let messages = u64::from(planned.count);
    let accepted = |item: u64| AcceptedMessage {
        request,
        session: planned.session,
        seq: planned.first_seq + item,
    };
    if !status.is_success() {
        let code = serde_json::from_slice::<Envelope<serde_json::Value>>(bytes)
            .ok()
            .and_then(|envelope| envelope.error)
            .map_or_else(|| "-".to_owned(), |error| error.code);
        log.refuse(format!("HTTP {} {code}", status.as_u16()), messages);
        return;
    }
    match mode {
        Mode::Single => match serde_json::from_slice::<Envelope<SingleAccepted>>(bytes) {
            Ok(Envelope {
                data: Some(data), ..
            }) => log.accepted.push((data.message_id, accepted(0))),
            _ => log.refuse(
                format!("HTTP {} without a messageId", status.as_u16()),
                messages,
            ),
        },
        Mode::Bulk => match serde_json::from_slice::<Envelope<BulkAccepted>>(bytes) {
            Ok(Envelope {
                data: Some(data), ..
            }) => {
                let mut answered = 0u64;
                for result in data.results {
                    let item = result.index as u64;
                    if item >= messages {
                        continue;
                    }
                    answered += 1;
                    match (result.message_id, result.error) {
                        (Some(message_id), None) => {
                            log.accepted.push((message_id, accepted(item)));
                        }
                        (_, error) => log.refuse(
                            format!(
                                "bulk item {}",
                                error.map_or_else(|| "-".to_owned(), |error| error.code)
                            ),
                            1,
                        ),
                    }
                }
                if answered < messages {
                    log.refuse(
                        "bulk items missing from the answer".to_owned(),
                        messages - answered,
                    );
                }
            }
            _ => log.refuse(
                format!("HTTP {} without bulk results", status.as_u16()),
                messages,
            ),
        },
    }
}

fn transport_reason(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connect"
    } else if err.is_body() || err.is_decode() {
        "body"
    } else {
        "request"
    };
    format!("transport: {kind}")
}

/// The ceiling run's result.
#[derive(Clone, Copy, Debug)]
pub struct Ceiling {
    /// Health requests answered 2xx.
    pub ok: u64,
    /// Health requests that failed or were not 2xx.
    pub failed: u64,
    pub elapsed: Duration,
}

/// `requests` × `GET /api/v1/health` with `concurrency` in flight: what the gateway's HTTP
/// layer does with the same load when the request does almost nothing.
pub async fn health_ceiling(
    client: &reqwest::Client,
    base_url: &str,
    requests: usize,
    concurrency: usize,
    progress: &Arc<Progress>,
) -> anyhow::Result<Ceiling> {
    let url: Arc<str> = Arc::from(format!("{base_url}/api/v1/health"));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let client = client.clone();
        let url = Arc::clone(&url);
        let next = Arc::clone(&next);
        let progress = Arc::clone(progress);
        tasks.spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                let answered = match client.get(&*url).send().await {
                    Ok(response) => {
                        let success = response.status().is_success();
                        response.bytes().await.is_ok() && success
                    }
                    Err(_) => false,
                };
                if answered {
                    ok += 1;
                    progress.add_health(1);
                } else {
                    failed += 1;
                }
            }
            (ok, failed)
        });
    }
    let mut ceiling = Ceiling {
        ok: 0,
        failed: 0,
        elapsed: Duration::ZERO,
    };
    while let Some(joined) = tasks.join_next().await {
        let (ok, failed) = joined.context("a health task failed")?;
        ceiling.ok += ok;
        ceiling.failed += failed;
    }
    ceiling.elapsed = started.elapsed();
    Ok(ceiling)
}

/// Now, in Unix microseconds: the clock the simulated workers stamp their records with.
pub fn unix_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_plan_is_round_robin_with_per_session_sequences() {
        let requests = plan(3, 7, 1);
        let pairs: Vec<(usize, u64)> = requests.iter().map(|r| (r.session, r.first_seq)).collect();
        assert_eq!(
            pairs,
            [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1), (0, 2)]
        );
        assert!(requests.iter().all(|r| r.count == 1));
        let offsets: Vec<u64> = requests.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, (0..7).collect::<Vec<u64>>());
    }

    #[test]
    fn bulk_plan_cuts_each_share_into_chunks() {
        // 25 messages over 2 sessions: 13 and 12, in chunks of 5.
        let requests = plan(2, 25, 5);
        let chunks: Vec<(usize, u64, u32)> = requests
            .iter()
            .map(|r| (r.session, r.first_seq, r.count))
            .collect();
        assert_eq!(
            chunks,
            [
                (0, 0, 5),
                (1, 0, 5),
                (0, 5, 5),
                (1, 5, 5),
                (0, 10, 3),
                (1, 10, 2)
            ]
        );
        assert_eq!(requests.iter().map(|r| u64::from(r.count)).sum::<u64>(), 25);
        assert_eq!(requests.last().map(|r| r.offset), Some(23));
    }

    #[test]
    fn fewer_messages_than_sessions() {
        let requests = plan(5, 2, 1000);
        assert_eq!(requests.len(), 2);
        assert_eq!((requests[0].session, requests[1].session), (0, 1));
        assert!(plan(0, 10, 1).is_empty());
    }

    #[test]
    fn bulk_answers_split_into_accepted_and_refused() {
        let planned = PlannedRequest {
            session: 1,
            first_seq: 10,
            count: 3,
            offset: 0,
        };
        let answer = serde_json::json!({
            "success": true,
            "data": { "sessionId": "s", "accepted": 2, "rejected": 1, "results": [
                { "index": 0, "messageId": "m0", "status": "PENDING" },
                { "index": 1, "status": "REJECTED", "error": { "code": "INVALID_RECIPIENT", "message": "x" } },
                { "index": 2, "messageId": "m2", "status": "PENDING" }
            ]}
        });
        let mut log = TaskLog::default();
        let bytes = serde_json::to_vec(&answer).unwrap_or_default();
        read_answer(
            &mut log,
            Mode::Bulk,
            4,
            &planned,
            reqwest::StatusCode::ACCEPTED,
            &bytes,
        );
        let ids: Vec<(&str, u64)> = log
            .accepted
            .iter()
            .map(|(id, message)| (id.as_str(), message.seq))
            .collect();
        assert_eq!(ids, [("m0", 10), ("m2", 12)]);
        assert!(
            log.accepted
                .iter()
                .all(|(_, m)| m.request == 4 && m.session == 1)
        );
        assert_eq!(log.refused.get("bulk item INVALID_RECIPIENT"), Some(&1));

        let mut refused = TaskLog::default();
        let error = br#"{"success":false,"error":{"code":"RATE_LIMITED","message":"slow down"}}"#;
        read_answer(
            &mut refused,
            Mode::Single,
            0,
            &planned,
            reqwest::StatusCode::TOO_MANY_REQUESTS,
            error,
        );
        assert_eq!(refused.refused.get("HTTP 429 RATE_LIMITED"), Some(&3));
    }
}
