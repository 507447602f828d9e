//! The worker-bound side of the send path: the delivery consumer of `wa.outbound.v1` and the
//! events consumer of `wa.events.v1`.
//!
//! Delivery ([`run_delivery`]) reads the outbound log in a consumer group, records each message
//! (PENDING) in the store, queues it on its session's FIFO lane ([`consumers::SessionLanes`]) and
//! hands lane heads to the session's owning worker, at most one in flight per session, paced per
//! tier. Outcomes are events on `wa.events.v1` (and the DLQ topic for dead letters); a record's
//! offset is completed only once its outcome is durably in the log, and only the lowest
//! contiguous completed offset of each partition is committed ([`consumers::ConsumerOffsets`]).
//!
//! Events ([`events::run_events`]) apply the status changes to `messages` in batches.

pub mod events;
mod outcome;
mod sessions;
mod waiting;

pub use waiting::Waiting;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use consumers::{
    Backoff, BackoffJitter, ConsumerOffsets, FinishedHead, LaneOutcome, LogSource, SessionLanes,
    SourceEvent, SourceRecord,
};
use producers::{EventEnvelope, OutboundEnvelope, WorkerEvent};
use tokio::sync::{broadcast, mpsc, watch};

use crate::app::AppContext;
use crate::domain::{MessageStatus, WaitingReason, now_ms};
use crate::metrics::DeliveryStage;
use crate::store::{FailureClass, NewOutboundMessage, SentAnswer, Store, StoreError};
use outcome::{Attempt, Verdict};
use sessions::SessionDirectory;

/// Records asked of the log at once.
const FETCH_MAX_RECORDS: usize = 2_000;
/// How long the reader waits for new records before it checks for commits again.
const FETCH_WAIT: Duration = Duration::from_millis(50);
/// Queued messages above which the consumer stops reading until lanes drain (memory bound).
const MAX_QUEUED: usize = 100_000;
/// While the ingress is in a burst ([`crate::priority::IngressPressure`]): worker calls in
/// flight at most (started no faster than `DELIVERY_BURST_RATE`), queued messages above which
/// reading waits, and how often the loop looks whether the burst is over. A delivered message
/// costs several times what accepting it did (the worker call, three receipt callbacks, their
/// events and store writes), so during a burst delivery only keeps moving, and catches up at
/// full width once the burst is over.
const BURST_MAX_IN_FLIGHT: usize = 1;
const BURST_MAX_QUEUED: usize = FETCH_MAX_RECORDS;
const BURST_RECHECK: Duration = Duration::from_millis(20);
/// Retry delays of one session's head: 250 ms doubling to 15 s, jittered.
const RETRY_BACKOFF: Backoff = Backoff::new(
    Duration::from_millis(250),
    Duration::from_secs(15),
    BackoffJitter::Equal,
);
/// Pause before recording a fetched batch again after the store refused it.
const RECORD_RETRY: Duration = Duration::from_millis(500);
/// Pause before writing outcomes again after a failed flush: 100 ms doubling to 2 s. A full
/// disk fails every write at once; retrying without a pause would spin.
const FLUSH_RETRY_FIRST: Duration = Duration::from_millis(100);
const FLUSH_RETRY_MAX: Duration = Duration::from_secs(2);

/// What the delivery consumer needs besides the context.
#[derive(Debug, Clone)]
pub struct LogTopics {
    /// Wire name of the outbound topic.
    pub outbound: String,
    /// Wire name of the events topic.
    pub events: String,
    /// Wire name of the outbound dead-letter topic.
    pub dead_letters: String,
    /// Wire name of the events dead-letter topic.
    pub event_dead_letters: String,
}

/// A message waiting on its session's lane.
#[derive(Debug, Clone)]
struct Queued {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    envelope: Arc<OutboundEnvelope>,
    /// When it was put on its lane (for the `queue` stage's timing).
    queued_at: Instant,
}

/// What a dispatch task reports back.
enum Report {
    /// A worker call finished (or was not possible) with this verdict.
    Attempted {
        ticket: consumers::DispatchTicket,
        verdict: Verdict,
    },
    /// A fetched batch is recorded in the store.
    Recorded {
        decoded: Vec<Queued>,
        recorded: Recorded,
    },
    /// A flush of outcome events finished; these offsets are now fully handled.
    Flushed {
        result: Result<(), String>,
        batch: FlushBatch,
    },
}

/// Outcomes waiting to be written, and the offsets they stand for. A worker's `2xx` is written
/// straight to `messages` (one batched statement; the worker's own `SENT` callback still flows
/// through `wa.events.v1`); failures go to the log as events (`message.failed`) and to the DLQ.
#[derive(Default)]
struct FlushBatch {
    sent: Vec<SentAnswer>,
    /// The lane heads whose `2xx` is in `sent`: their lanes stay blocked until it is durable,
    /// so a crash can only resend a call whose answer had not arrived, never one answered
    /// before the next message of its session went out.
    sent_heads: Vec<(consumers::DispatchTicket, Instant)>,
    events: Vec<(String, Vec<u8>)>,
    dead_letters: Vec<(String, Vec<u8>)>,
    offsets: Vec<(Arc<str>, i32, i64)>,
}

impl FlushBatch {
    fn is_empty(&self) -> bool {
        self.sent.is_empty()
            && self.sent_heads.is_empty()
            && self.events.is_empty()
            && self.dead_letters.is_empty()
            && self.offsets.is_empty()
    }

    /// Appends `newer` after what this batch holds (the order outcomes are written in).
    fn extend(&mut self, newer: FlushBatch) {
        self.sent.extend(newer.sent);
        self.sent_heads.extend(newer.sent_heads);
        self.events.extend(newer.events);
        self.dead_letters.extend(newer.dead_letters);
        self.offsets.extend(newer.offsets);
    }
}

/// Runs the delivery consumer until `stop` flips; then stops reading, lets in-flight worker calls
/// finish (bounded), writes their outcomes and commits.
pub async fn run_delivery(
    context: Arc<AppContext>,
    store: Store,
    source: LogSource,
    topics: LogTopics,
    mut stop: watch::Receiver<bool>,
) {
    let (records_tx, mut records_rx) = mpsc::channel::<SourceEvent>(2);
    let (commits_tx, commits_rx) = mpsc::unbounded_channel::<Vec<(String, i32, i64)>>();
    let reader = tokio::spawn(run_reader(source, records_tx, commits_rx, stop.clone()));
    let (reports_tx, mut reports_rx) = mpsc::unbounded_channel::<Report>();
    let mut state = DeliveryState {
        context: context.clone(),
        store,
        topics,
        directory: Arc::new(SessionDirectory::new(context.clone())),
        lanes: SessionLanes::new(),
        held: HashSet::new(),
        resumed_sessions: HashSet::new(),
        offsets: ConsumerOffsets::new(),
        sessions_by_partition: HashMap::new(),
        next_send_at: HashMap::new(),
        burst_interval: Duration::from_secs(1) / context.config.delivery_burst_rate.max(1),
        next_burst_dispatch: Instant::now(),
        in_flight: 0,
        recording: false,
        pending: FlushBatch::default(),
        flushing: false,
        flush_failures: 0,
        flush_not_before: Instant::now(),
        reports: reports_tx,
        commits: commits_tx,
        stop: stop.clone(),
    };
    let mut connected = context.fleet.events().subscribe_connected();
    let mut hearing_connects = true;
    let mut reading = true;
    loop {
        let burst = state.context.pressure.is_burst();
        state.dispatch_ready(burst);
        state.flush();
        let now = Instant::now();
        let lanes_wakeup = state
            .lanes
            .next_wakeup()
            .unwrap_or(now + Duration::from_secs(3600));
        // During a burst nothing goes before the next burst dispatch is due, and the burst may
        // end without any other wake-up: look again within BURST_RECHECK (never at once: what
        // is ready may be held back by the burst bounds, and a report wakes the loop anyway).
        let wakeup = if burst {
            lanes_wakeup
                .max(state.next_burst_dispatch)
                .clamp(now + Duration::from_millis(1), now + BURST_RECHECK)
        } else {
            lanes_wakeup
        };
        // Outcomes waiting out a failed flush's pause are written when it ends.
        let wakeup = state.flush_retry_at().map_or(wakeup, |at| wakeup.min(at));
        let wakeup = tokio::time::Instant::from_std(wakeup);
        // One batch is recorded at a time, so batches reach the lanes in log order. During an
        // ingress burst only a small backlog is read ahead (recording costs store writes).
        let queue_bound = if burst { BURST_MAX_QUEUED } else { MAX_QUEUED };
        let can_read = reading && !state.recording && state.lanes.len() < queue_bound;
        tokio::select! {
            event = records_rx.recv(), if can_read => match event {
                Some(mut event) => {
                    // What the reader read while the last batch was being recorded goes into
                    // one recording: many small batches would each pay a store transaction
                    // and queue behind one another.
                    let mut after = None;
                    if let SourceEvent::Records(records) = &mut event {
                        while let Ok(next) = records_rx.try_recv() {
                            match next {
                                SourceEvent::Records(more) => records.extend(more),
                                other => {
                                    after = Some(other);
                                    break;
                                }
                            }
                        }
                    }
                    state.on_source_event(event);
                    if let Some(other) = after {
                        state.on_source_event(other);
                    }
                }
                None => reading = false,
            },
            Some(report) = reports_rx.recv() => {
                state.on_report(report);
                while let Ok(report) = reports_rx.try_recv() {
                    state.on_report(report);
                }
            }
            came_up = connected.recv(), if hearing_connects => match came_up {
                Ok(session_id) => state.on_session_connected(&session_id),
                // Missed some: their lanes still retry on their own schedule.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => hearing_connects = false,
            },
            _ = tokio::time::sleep_until(wakeup) => {}
            _ = stop.changed() => break,
        }
    }
    // Drain: no new dispatches; wait (bounded) for what is in flight and write its outcomes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while state.in_flight > 0 || state.flushing || !state.pending.is_empty() {
        state.flush();
        // Wake for a flush waiting out its retry pause too, not only for reports.
        let wake = state
            .flush_retry_at()
            .map_or(deadline, |at| at.min(deadline));
        match tokio::time::timeout_at(tokio::time::Instant::from_std(wake), reports_rx.recv()).await
        {
            Ok(Some(report)) => state.on_report(report),
            Ok(None) => break,
            Err(_) if Instant::now() >= deadline => break,
            Err(_) => {}
        }
    }
    // The reader may be parked on a full channel; closing it is what lets it see the stop.
    drop(records_rx);
    drop(state);
    if let Err(err) = reader.await {
        tracing::warn!(error = %err, "delivery reader task failed");
    }
}

/// Owns the log reader: applies commits between reads and forwards what it reads. Reads and
/// commits happen in this one task because a Kafka consumer commits through the instance that
/// holds the assignment, and a fetch must never be cancelled halfway.
async fn run_reader(
    mut source: LogSource,
    records: mpsc::Sender<SourceEvent>,
    mut commits: mpsc::UnboundedReceiver<Vec<(String, i32, i64)>>,
    stop: watch::Receiver<bool>,
) {
    let mut failures = 0_u32;
    loop {
        let mut positions: HashMap<(String, i32), i64> = HashMap::new();
        let mut closed = false;
        loop {
            match commits.try_recv() {
                Ok(batch) => {
                    for (topic, partition, offset) in batch {
                        let slot = positions.entry((topic, partition)).or_insert(offset);
                        *slot = (*slot).max(offset);
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if !positions.is_empty() {
            let positions: Vec<(String, i32, i64)> = positions
                .into_iter()
                .map(|((topic, partition), offset)| (topic, partition, offset))
                .collect();
            if let Err(err) = source.commit(&positions).await {
                tracing::warn!(error = %err, "committing consumer positions failed; will retry with the next ones");
            }
        }
        if closed {
            return;
        }
        if *stop.borrow() {
            // Keep committing until the delivery loop has drained and dropped its sender.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        match source.next(FETCH_MAX_RECORDS, FETCH_WAIT).await {
            Ok(SourceEvent::Records(batch)) if batch.is_empty() => {}
            Ok(event) => {
                failures = 0;
                if records.send(event).await.is_err() {
                    return;
                }
            }
            Err(err) => {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %err, "reading the outbound log failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(failures.min(25)))).await;
            }
        }
    }
}

struct DeliveryState {
    context: Arc<AppContext>,
    /// The consumers' own pool: its writes (message rows, SENT outcomes) run at the consumers'
    /// priority, not the ingress's.
    store: Store,
    topics: LogTopics,
    directory: Arc<SessionDirectory>,
    lanes: SessionLanes<Queued>,
    /// Ids of the messages on the lanes: a second append of one of them (same id) is dropped.
    held: HashSet<String>,
    /// Sessions whose first message read again without an outcome was counted as a possible
    /// resend (`delivery_redelivered_total`), so the messages queued behind it are not.
    resumed_sessions: HashSet<String>,
    offsets: ConsumerOffsets,
    /// Which sessions have queued messages from each partition, to drop them on revocation.
    sessions_by_partition: HashMap<(Arc<str>, i32), HashSet<String>>,
    /// Pacing: a session's next send may not start before this.
    next_send_at: HashMap<String, Instant>,
    /// During an ingress burst: the spacing of worker calls, and when the next may start.
    burst_interval: Duration,
    next_burst_dispatch: Instant,
    in_flight: usize,
    /// Whether a fetched batch is being recorded in the store (reading waits for it).
    recording: bool,
    /// Outcomes not yet handed to a flush.
    pending: FlushBatch,
    /// Whether a flush is being written (one at a time keeps the log's order of outcomes;
    /// overlapping flushes of `2xx` outcomes were tried and only queued on SQLite's writer).
    flushing: bool,
    /// Flushes that failed in a row, and when the next may start (retries back off).
    flush_failures: u32,
    flush_not_before: Instant,
    reports: mpsc::UnboundedSender<Report>,
    commits: mpsc::UnboundedSender<Vec<(String, i32, i64)>>,
    /// Shutdown: ends the recording task's retries.
    stop: watch::Receiver<bool>,
}

impl DeliveryState {
    fn on_source_event(&mut self, event: SourceEvent) {
        match event {
            SourceEvent::Assigned(partitions) => {
                tracing::info!(
                    partitions = partitions.len(),
                    "delivery: partitions assigned"
                );
            }
            SourceEvent::Revoked(partitions) => self.on_revoked(&partitions),
            SourceEvent::Records(records) => self.on_records(records),
        }
    }

    /// Another consumer owns these partitions now: forget their work without committing it.
    fn on_revoked(&mut self, partitions: &[(String, i32)]) {
        for (topic, partition) in partitions {
            let key = (Arc::<str>::from(topic.as_str()), *partition);
            if let Some(sessions) = self.sessions_by_partition.remove(&key) {
                for session in sessions {
                    for queued in self.lanes.remove_lane(&session) {
                        self.held.remove(&queued.envelope.message_id);
                    }
                    self.resumed_sessions.remove(&session);
                }
            }
            self.offsets.remove_partition(topic, *partition);
        }
        tracing::info!(
            partitions = partitions.len(),
            "delivery: partitions revoked"
        );
    }

    /// Decodes and tracks a fetched batch, then records its messages in the store on a task
    /// (the loop keeps dispatching meanwhile); [`Self::on_recorded`] queues them.
    fn on_records(&mut self, records: Vec<SourceRecord>) {
        let mut decoded = Vec::with_capacity(records.len());
        let read_at = Instant::now();
        let read_at_ms = now_ms();
        for record in records {
            let topic: Arc<str> = Arc::from(record.topic.as_str());
            if let Err(err) = self
                .offsets
                .track(&record.topic, record.partition, record.offset)
            {
                tracing::warn!(error = %err, "delivery: offset already tracked; skipping record");
                continue;
            }
            match OutboundEnvelope::decode(&record.value)
                .map_err(|err| ("undecodable", err.to_string()))
                .and_then(|envelope| {
                    valid_envelope(&envelope)
                        .map(|()| envelope)
                        .map_err(|invalid| ("invalid", invalid.to_string()))
                }) {
                Ok(envelope) => {
                    self.context
                        .metrics
                        .delivery_stage(DeliveryStage::Read, envelope.age_at(read_at_ms));
                    decoded.push(Queued {
                        topic,
                        partition: record.partition,
                        offset: record.offset,
                        envelope: Arc::new(envelope),
                        queued_at: read_at,
                    })
                }
                Err((label, reason)) => {
                    // Not ours to interpret: park it on the DLQ as it was.
                    tracing::warn!(reason = %reason, partition = record.partition, offset = record.offset,
                        "{label} outbound record; set aside on the dead-letter topic");
                    self.pending
                        .dead_letters
                        .push((record.key.clone(), dead_letter_value_raw(&record, &reason)));
                    self.pending
                        .offsets
                        .push((topic, record.partition, record.offset));
                    self.context.metrics.delivery_outcome("dead_lettered");
                    self.context.metrics.dead_lettered(CONSUMER, label);
                }
            }
        }
        if decoded.is_empty() {
            return;
        }
        let rows: Vec<NewOutboundMessage> = decoded
            .iter()
            .map(|queued| new_message_row(&queued.envelope))
            .collect();
        self.recording = true;
        let store = self.store.clone();
        let reports = self.reports.clone();
        let metrics = self.context.metrics.clone();
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            // Shutting down: none of the batch's offsets is completed, so the next reader of
            // the partitions gets it again.
            let Ok(recorded) = record_batch(&store, &rows, &mut stop).await else {
                return;
            };
            let took = read_at.elapsed();
            for _ in &decoded {
                metrics.delivery_stage(DeliveryStage::Record, took);
            }
            let _ = reports.send(Report::Recorded { decoded, recorded });
        });
    }

    /// Queues a recorded batch on its sessions' lanes, skipping messages that already have an
    /// outcome (redelivery after a restart), second appends of a message already queued here
    /// (an idempotent request retried after its claim was taken over: same message id) and
    /// partitions revoked meanwhile.
    fn on_recorded(&mut self, decoded: Vec<Queued>, recorded: Recorded) {
        self.recording = false;
        let now = Instant::now();
        for mut queued in decoded {
            if self
                .offsets
                .partition(&queued.topic, queued.partition)
                .is_none()
            {
                continue;
            }
            let message_id = &queued.envelope.message_id;
            if let Some((label, reason)) = recorded.rejected.get(message_id) {
                // The store refused this message's row: set it aside, the partition moves on.
                tracing::warn!(message_id = %message_id, reason = %reason,
                    "outbound message set aside on the dead-letter topic");
                self.context.metrics.delivery_outcome("dead_lettered");
                self.context.metrics.dead_lettered(CONSUMER, label);
                self.pending.dead_letters.push((
                    queued.envelope.session_id.clone(),
                    dead_letter_value(&queued.envelope, reason),
                ));
                self.pending
                    .offsets
                    .push((queued.topic.clone(), queued.partition, queued.offset));
                continue;
            }
            let duplicate = self.held.contains(message_id);
            if duplicate || recorded.settled.contains(message_id) {
                self.context.metrics.delivery_outcome(if duplicate {
                    "duplicate"
                } else {
                    "skipped"
                });
                self.pending
                    .offsets
                    .push((queued.topic.clone(), queued.partition, queued.offset));
                continue;
            }
            let session = queued.envelope.session_id.clone();
            if recorded.seen_before.contains(message_id)
                && self.lanes.lane_len(&session) == 0
                && self.resumed_sessions.insert(session.clone())
            {
                // Only a session's first message without an outcome can have been in flight
                // when the previous reader stopped: every earlier one had its answer durable
                // before it went out.
                self.context.metrics.delivery_redelivered_total.inc();
            }
            self.held.insert(message_id.clone());
            self.sessions_by_partition
                .entry((queued.topic.clone(), queued.partition))
                .or_default()
                .insert(session.clone());
            queued.queued_at = now;
            self.lanes.push(&session, queued);
        }
    }

    /// A session came up on a worker (placed, migrated, recovered): its lane stops waiting out a
    /// retry delay, and its route is read afresh.
    fn on_session_connected(&mut self, session_id: &str) {
        self.directory.invalidate(session_id);
        if self.lanes.wake(session_id) {
            tracing::debug!(session_id, "session is back; its waiting messages go now");
        }
    }

    /// Starts worker calls for every lane head that is ready, up to the in-flight bound (while
    /// the ingress is in a burst: one at a time, `DELIVERY_BURST_RATE` per second at most; the
    /// CPU goes to accepting, the log holds the backlog).
    fn dispatch_ready(&mut self, burst: bool) {
        let max_in_flight = if burst {
            BURST_MAX_IN_FLIGHT.min(self.context.config.delivery_max_in_flight)
        } else {
            self.context.config.delivery_max_in_flight
        };
        let now = Instant::now();
        while self.in_flight < max_in_flight {
            if burst && now < self.next_burst_dispatch {
                break;
            }
            let Some(head) = self.lanes.next_ready(now) else {
                break;
            };
            if burst {
                self.next_burst_dispatch = now + self.burst_interval;
            }
            let ticket = head.ticket;
            let queued = head.item.clone();
            if ticket.failed_attempts() == 0 {
                self.context
                    .metrics
                    .delivery_stage(DeliveryStage::Queue, now.duration_since(queued.queued_at));
            }
            let not_before = self.next_send_at.get(&queued.envelope.session_id).copied();
            let attempt = Attempt {
                context: self.context.clone(),
                directory: self.directory.clone(),
                envelope: queued.envelope,
                failed_attempts: ticket.failed_attempts(),
                not_before,
            };
            let reports = self.reports.clone();
            self.in_flight += 1;
            tokio::spawn(async move {
                let verdict = attempt.run().await;
                let _ = reports.send(Report::Attempted { ticket, verdict });
            });
        }
    }

    fn on_report(&mut self, report: Report) {
        match report {
            Report::Attempted { ticket, verdict } => {
                self.in_flight = self.in_flight.saturating_sub(1);
                self.on_verdict(ticket, verdict);
            }
            Report::Recorded { decoded, recorded } => self.on_recorded(decoded, recorded),
            Report::Flushed { result, batch } => {
                self.flushing = false;
                match result {
                    Ok(()) => {
                        let now = Instant::now();
                        for (ticket, answered_at) in batch.sent_heads {
                            self.context
                                .metrics
                                .delivery_stage(DeliveryStage::Durable, answered_at.elapsed());
                            // A lane dropped meanwhile (partition revoked) has a stale ticket.
                            match self.lanes.finish(ticket, LaneOutcome::Done, now) {
                                Ok(FinishedHead::Completed(queued)) => {
                                    self.held.remove(&queued.envelope.message_id);
                                }
                                Ok(_) => {}
                                Err(err) => {
                                    tracing::debug!(error = %err, "durable outcome for a dropped lane");
                                }
                            }
                        }
                        for (topic, partition, offset) in batch.offsets {
                            if let Err(err) = self.offsets.complete(&topic, partition, offset) {
                                // The partition was revoked meanwhile; its new owner redoes it.
                                tracing::debug!(error = %err, "completing an offset of a revoked partition");
                            }
                        }
                        let committable = self.offsets.drain_committable();
                        if !committable.is_empty() {
                            let _ = self.commits.send(committable);
                        }
                        self.flush_failures = 0;
                    }
                    Err(err) => {
                        self.flush_failures = self.flush_failures.saturating_add(1);
                        let pause = FLUSH_RETRY_FIRST
                            .saturating_mul(1 << self.flush_failures.min(8).saturating_sub(1))
                            .min(FLUSH_RETRY_MAX);
                        self.flush_not_before = Instant::now() + pause;
                        tracing::error!(error = %err, retry_in_ms = pause.as_millis() as u64,
                            "writing delivery outcomes failed; retrying");
                        // Put them back in front of newer outcomes and try again after the pause.
                        let newer = std::mem::take(&mut self.pending);
                        self.pending = batch;
                        self.pending.extend(newer);
                    }
                }
            }
        }
    }

    fn on_verdict(&mut self, ticket: consumers::DispatchTicket, verdict: Verdict) {
        let now = Instant::now();
        let (outcome, waiting) = match verdict {
            Verdict::Sent { whatsapp_id, pace } => {
                return self.on_sent(ticket, whatsapp_id, pace, now);
            }
            Verdict::Retry {
                delay,
                waiting,
                reason,
            } => {
                // Said on the message's status (why it waits, when it is tried next), through
                // the events log like every other outcome.
                let waiting = self.lanes.in_flight_head(&ticket).map(|queued| {
                    waiting_event(
                        &queued.envelope,
                        waiting,
                        &reason,
                        ticket.failed_attempts().saturating_add(1),
                        delay,
                    )
                });
                (LaneOutcome::RetryAfter(delay), waiting.map(|w| (w, reason)))
            }
            Verdict::Failed { reason } => (LaneOutcome::DeadLetter { reason }, None),
        };
        let session_id = ticket.lane_key().to_owned();
        let attempts = Some(ticket.failed_attempts().saturating_add(1));
        let finished = match self.lanes.finish(ticket, outcome, now) {
            Ok(finished) => finished,
            Err(err) => {
                // The lane was dropped (partition revoked) while its head was in flight.
                tracing::debug!(error = %err, "delivery outcome for a dropped lane");
                return;
            }
        };
        match finished {
            FinishedHead::DeadLettered { item, reason } => {
                self.held.remove(&item.envelope.message_id);
                self.context.metrics.delivery_outcome("dead_lettered");
                tracing::warn!(message_id = %item.envelope.message_id, reason = %reason, "message failed");
                self.pending
                    .events
                    .push(failed_event(&item.envelope, &reason, attempts));
                self.pending.dead_letters.push((
                    item.envelope.session_id.clone(),
                    dead_letter_value(&item.envelope, &reason),
                ));
                self.pending
                    .offsets
                    .push((item.topic, item.partition, item.offset));
            }
            FinishedHead::Rescheduled { .. } => {
                self.context.metrics.delivery_outcome("retried");
                if let Some((event, reason)) = waiting {
                    tracing::debug!(session_id, reason = %reason, "delivery will retry");
                    self.pending.events.push(event);
                }
            }
            finished @ FinishedHead::Completed(_) => {
                // Unreachable by construction (only a retry or a dead letter gets here); keep
                // the offset uncompleted rather than guess, so a restart redelivers it.
                tracing::error!(?finished, "delivery outcome does not match its verdict");
            }
        }
    }

    /// A worker answered `2xx`: the outcome is queued for the next flush, and the session's lane
    /// stays blocked until that flush made it durable (see [`FlushBatch::sent_heads`]).
    fn on_sent(
        &mut self,
        ticket: consumers::DispatchTicket,
        whatsapp_id: Option<String>,
        pace: Duration,
        now: Instant,
    ) {
        let Some(queued) = self.lanes.in_flight_head(&ticket) else {
            // The lane was dropped (partition revoked) while its head was in flight.
            tracing::debug!(
                session_id = ticket.lane_key(),
                "delivery outcome for a dropped lane"
            );
            return;
        };
        let envelope = &queued.envelope;
        self.context.metrics.delivery_outcome("sent");
        self.context
            .metrics
            .delivery_latency_seconds
            .observe(envelope.age_at(now_ms()).as_secs_f64());
        self.pending.sent.push(SentAnswer {
            message_id: envelope.message_id.clone(),
            worker_message_id: whatsapp_id,
            attempts: i64::from(ticket.failed_attempts().saturating_add(1)),
            at: now_ms(),
        });
        self.pending
            .offsets
            .push((queued.topic.clone(), queued.partition, queued.offset));
        let session_id = ticket.lane_key().to_owned();
        if pace > Duration::ZERO {
            self.next_send_at.insert(session_id, now + pace);
        } else {
            self.next_send_at.remove(&session_id);
        }
        self.pending.sent_heads.push((ticket, now));
    }

    /// When a flush waiting out its retry pause may go (`None`: none waits).
    fn flush_retry_at(&self) -> Option<Instant> {
        (!self.flushing && !self.pending.is_empty() && self.flush_failures > 0)
            .then_some(self.flush_not_before)
    }

    /// Hands pending outcomes to a background append (one at a time, pausing after failures).
    fn flush(&mut self) {
        if self.flushing || self.pending.is_empty() || Instant::now() < self.flush_not_before {
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        self.flushing = true;
        let context = self.context.clone();
        let store = self.store.clone();
        let topics = self.topics.clone();
        let reports = self.reports.clone();
        tokio::spawn(async move {
            let log = context.ingress.log();
            let result = async {
                if !batch.sent.is_empty() {
                    store
                        .record_sent(&batch.sent)
                        .await
                        .map_err(|err| format!("writing SENT outcomes: {err}"))?;
                }
                if !batch.dead_letters.is_empty() {
                    log.append_batch(&topics.dead_letters, batch.dead_letters.clone())
                        .await
                        .map_err(|err| format!("appending to the DLQ: {err}"))?;
                }
                if !batch.events.is_empty() {
                    log.append_batch(&topics.events, batch.events.clone())
                        .await
                        .map_err(|err| format!("appending outcome events: {err}"))?;
                }
                Ok(())
            }
            .await;
            let _ = reports.send(Report::Flushed { result, batch });
        });
    }
}

/// What recording a batch found besides the new rows.
#[derive(Default)]
struct Recorded {
    /// Ids that already have an outcome (sent, failed): nothing more to do for them.
    settled: HashSet<String>,
    /// Ids recorded before (by an earlier reader, or an earlier append of the same id) and
    /// still without an outcome.
    seen_before: HashSet<String>,
    /// Ids whose row the store refused on its own (a permanent failure), with the metric's
    /// reason label and the words: they go to the dead-letter topic, not to a worker.
    rejected: HashMap<String, (&'static str, String)>,
}

/// The consumer is stopping (delivery or events): whatever was not done is read again by the
/// next reader.
struct Stopped;

/// [`record`] until it is done: a store that cannot work now is waited for (delivering before
/// the row exists would let the outcome miss it); a batch it refuses for anything else is
/// recorded again one message at a time, and a message refused on its own (permanently, or
/// [`RECORD_UNKNOWN_TRIES`] times for an unclassified failure) is reported in
/// [`Recorded::rejected`] instead of holding up the partition.
async fn record_batch(
    store: &Store,
    rows: &[NewOutboundMessage],
    stop: &mut watch::Receiver<bool>,
) -> Result<Recorded, Stopped> {
    let refused = match until_not_transient(
        "recording outbound messages failed",
        || record(store, rows),
        |_| RECORD_RETRY,
        stop,
    )
    .await?
    {
        Ok(recorded) => return Ok(recorded),
        Err(err) => err,
    };
    tracing::warn!(
        error = format!("{refused:#}"),
        messages = rows.len(),
        "the store refused a batch of outbound messages; recording them one by one"
    );
    let mut all = Recorded::default();
    for row in rows {
        let mut tries = 0;
        loop {
            match until_not_transient(
                "recording outbound messages failed",
                || record(store, std::slice::from_ref(row)),
                |_| RECORD_RETRY,
                stop,
            )
            .await?
            {
                Ok(one) => {
                    all.settled.extend(one.settled);
                    all.seen_before.extend(one.seen_before);
                    break;
                }
                Err(err) => {
                    tries += 1;
                    let label = match err.class() {
                        FailureClass::Permanent => "rejected",
                        _ if tries < RECORD_UNKNOWN_TRIES => {
                            pause(RECORD_RETRY, stop).await?;
                            continue;
                        }
                        _ => "unapplicable",
                    };
                    all.rejected.insert(
                        row.id.clone(),
                        (label, format!("the store refused it: {err:#}")),
                    );
                    break;
                }
            }
        }
    }
    Ok(all)
}

/// Tries of one message alone that failed neither transiently nor permanently before it is
/// set aside.
const RECORD_UNKNOWN_TRIES: u32 = 3;

/// The delivery consumer's label in `wa_gateway_dead_letters_total`.
const CONSUMER: &str = "delivery";

/// Runs `work` until it succeeds or fails for any reason but a transient one (the store cannot
/// work now), which is logged (the first and every 20th) and waited out, `backoff(failures)`
/// each time, while the consumer runs. Shared by the delivery and events consumers.
async fn until_not_transient<T, Fut>(
    failing: &str,
    work: impl Fn() -> Fut,
    backoff: impl Fn(u32) -> Duration,
    stop: &mut watch::Receiver<bool>,
) -> Result<Result<T, StoreError>, Stopped>
where
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut failures = 0_u32;
    loop {
        match work().await {
            Err(err) if err.class() == FailureClass::Transient => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(20) {
                    tracing::error!(
                        error = format!("{err:#}"),
                        failures,
                        "{failing}: the store cannot work now; retrying"
                    );
                }
                pause(backoff(failures), stop).await?;
            }
            other => return Ok(other),
        }
    }
}

/// Waits `delay`; `Stopped` when the consumer stops meanwhile.
async fn pause(delay: Duration, stop: &mut watch::Receiver<bool>) -> Result<(), Stopped> {
    tokio::select! {
        _ = tokio::time::sleep(delay) => Ok(()),
        _ = stop.wait_for(|stopped| *stopped) => Err(Stopped),
    }
}

/// What the delivery consumer interprets in an outbound record: its ids (they become a row's
/// keys and travel to the worker in headers).
fn valid_envelope(envelope: &OutboundEnvelope) -> Result<(), crate::domain::InvalidInput> {
    crate::domain::SessionId::parse("sessionId", &envelope.session_id)?;
    events::MESSAGE_ID_RULE.check("messageId", &envelope.message_id)?;
    crate::domain::TextRule::token(256)
        .non_empty()
        .check("userId", &envelope.user_id)?;
    Ok(())
}

/// Records a batch (idempotently) and reports which of its messages were there before.
async fn record(store: &Store, rows: &[NewOutboundMessage]) -> Result<Recorded, StoreError> {
    let inserted = store.insert_outbound_messages(rows).await?;
    if inserted.len() == rows.len() {
        // All new: none can have an outcome yet.
        return Ok(Recorded::default());
    }
    let old: Vec<&str> = rows
        .iter()
        .map(|row| row.id.as_str())
        .filter(|id| !inserted.contains(*id))
        .collect();
    let settled = store.settled_message_ids(&old).await?;
    let seen_before = old
        .into_iter()
        .filter(|id| !settled.contains(*id))
        .map(str::to_owned)
        .collect();
    Ok(Recorded {
        settled,
        seen_before,
        rejected: HashMap::new(),
    })
}

fn new_message_row(envelope: &OutboundEnvelope) -> NewOutboundMessage {
    NewOutboundMessage {
        id: envelope.message_id.clone(),
        user_id: envelope.user_id.clone(),
        session_id: envelope.session_id.clone(),
        message_type: crate::send::MessageKind::parse(&envelope.kind)
            .map(crate::send::MessageKind::store_name)
            .unwrap_or("TEXT"),
        remote_jid: envelope
            .payload
            .get("to")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        content: envelope.payload.to_string(),
        idempotency_key: envelope.idempotency_key.clone(),
        accepted_at: envelope.accepted_at_ms,
    }
}

/// The `wa.events.v1` record of a message given up on (`message.failed`).
fn failed_event(
    envelope: &OutboundEnvelope,
    reason: &str,
    attempts: Option<u32>,
) -> (String, Vec<u8>) {
    let event = EventEnvelope::new(
        envelope.session_id.clone(),
        now_ms(),
        WorkerEvent::MessageStatus {
            message_id: envelope.message_id.clone(),
            status: MessageStatus::Failed.as_str().to_owned(),
            error_message: Some(reason.to_owned()),
            delivered_at: None,
            read_at: None,
            whatsapp_message_id: None,
            attempts,
        },
    );
    (envelope.session_id.clone(), event.encode())
}

/// The event that says why a message waits and when it is tried next.
fn waiting_event(
    envelope: &OutboundEnvelope,
    waiting: WaitingReason,
    reason: &str,
    attempts: u32,
    delay: Duration,
) -> (String, Vec<u8>) {
    let now = now_ms();
    let event = EventEnvelope::new(
        envelope.session_id.clone(),
        now,
        WorkerEvent::MessageWaiting {
            message_id: envelope.message_id.clone(),
            reason: waiting.as_str().to_owned(),
            detail: Some(reason.to_owned()),
            attempts,
            next_attempt_at: now
                .saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
        },
    );
    (envelope.session_id.clone(), event.encode())
}

/// A DLQ record: the envelope as it was, with why it was given up on.
fn dead_letter_value(envelope: &OutboundEnvelope, reason: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "v": 1,
        "reason": reason,
        "failedAtMs": now_ms(),
        "envelope": envelope,
    }))
    .unwrap_or_default()
}

fn dead_letter_value_raw(record: &SourceRecord, reason: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "v": 1,
        "reason": reason,
        "failedAtMs": now_ms(),
        "source": {"topic": record.topic, "partition": record.partition, "offset": record.offset},
        "raw": String::from_utf8_lossy(&record.value),
    }))
    .unwrap_or_default()
}
