//! Prometheus instruments. Labels are bounded (method, status class): never a user, session or
//! phone number.

use anyhow::Context;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};

/// The registry and the instruments the gateway updates.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests by method and status class (`2xx` … `5xx`).
    pub http_requests_total: IntCounterVec,
    /// Request latency by method.
    pub http_request_duration_seconds: HistogramVec,
    /// Messages accepted into the outbound log.
    pub messages_accepted_total: IntCounter,
    /// Delivery outcomes by kind (`sent`, `failed`, `retried`, `dead_lettered`, `skipped`,
    /// `duplicate`).
    pub delivery_outcomes_total: IntCounterVec,
    /// Messages that go to their worker again after a restart or rebalance: read again
    /// with no outcome, at the head of their session, so the one call that may have reached
    /// the worker before its answer was made durable.
    pub delivery_redelivered_total: IntCounter,
    /// Time from acceptance to the worker's answer, for messages sent.
    pub delivery_latency_seconds: Histogram,
    /// Worker events applied to the store.
    pub events_applied_total: IntCounter,
    /// `dead_letters_total{consumer, reason}`: records a consumer set aside on a dead-letter
    /// topic instead of applying them (see [`Metrics::dead_lettered`]).
    pub dead_letters_total: IntCounterVec,
    /// `delivery_stage_seconds{stage}`: where a message's delivery time goes, one child per
    /// [`DeliveryStage`], resolved once (indexed by the stage).
    delivery_stages: [Histogram; DeliveryStage::ALL.len()],
}

/// The stages of a message's way from acceptance to its worker, timed by
/// `wa_gateway_delivery_stage_seconds{stage}`. Declared in [`Self::ALL`]'s order: a stage's
/// discriminant indexes its histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStage {
    /// From acceptance (before the durable append) until the delivery consumer read it.
    Read,
    /// Recording a read batch in `messages` (PENDING), before any of it may be dispatched.
    Record,
    /// On its session's lane, from recorded until its first attempt started.
    Queue,
    /// Finding the session's row and route (a cache hit is near zero).
    Route,
    /// The worker call, from sending it until the worker's answer was read.
    Worker,
    /// From the worker's `2xx` until that outcome is durable in the store: the session's next
    /// message waits for it.
    Durable,
}

impl DeliveryStage {
    /// Every stage, in a message's order.
    pub const ALL: [DeliveryStage; 6] = [
        Self::Read,
        Self::Record,
        Self::Queue,
        Self::Route,
        Self::Worker,
        Self::Durable,
    ];

    /// The `stage` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Record => "record",
            Self::Queue => "queue",
            Self::Route => "route",
            Self::Worker => "worker",
            Self::Durable => "durable",
        }
    }
}

impl Metrics {
    /// Registers every instrument in a fresh registry (one per app, so tests do not collide).
    pub fn new() -> anyhow::Result<Self> {
        let registry =
            Registry::new_custom(Some("wa_gateway".into()), None).context("metrics registry")?;
        let http_requests_total = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests answered, by method and status class",
            ),
            &["method", "status"],
        )?;
        let http_request_duration_seconds = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency").buckets(
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ],
            ),
            &["method"],
        )?;
        let messages_accepted_total = IntCounter::new(
            "messages_accepted_total",
            "Messages accepted into the outbound log",
        )?;
        let delivery_outcomes_total = IntCounterVec::new(
            Opts::new(
                "delivery_outcomes_total",
                "Delivery attempts by outcome (sent, failed, retried, dead_lettered, skipped: had an outcome already, duplicate: a second append of a message queued here)",
            ),
            &["outcome"],
        )?;
        let delivery_latency_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "delivery_latency_seconds",
                "From acceptance to the worker's answer, for messages sent",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0,
            ]),
        )?;
        let delivery_redelivered_total = IntCounter::new(
            "delivery_redelivered_total",
            "Messages handed to a worker again after a restart or rebalance: read again without an outcome at the head of their session, so possibly sent once before",
        )?;
        let events_applied_total =
            IntCounter::new("events_applied_total", "Worker events applied to the store")?;
        let dead_letters_total = IntCounterVec::new(
            Opts::new(
                "dead_letters_total",
                "Log records a consumer set aside on its dead-letter topic, by consumer (events, delivery) and reason (undecodable, invalid, rejected: the store refused the values, unapplicable: failed alone again and again)",
            ),
            &["consumer", "reason"],
        )?;
        let delivery_stage_seconds = HistogramVec::new(
            HistogramOpts::new(
                "delivery_stage_seconds",
                "Time a message spends in each stage of delivery (read, record, queue, route, worker)",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
                5.0, 30.0,
            ]),
            &["stage"],
        )?;
        registry.register(Box::new(http_requests_total.clone()))?;
        registry.register(Box::new(http_request_duration_seconds.clone()))?;
        registry.register(Box::new(messages_accepted_total.clone()))?;
        registry.register(Box::new(delivery_outcomes_total.clone()))?;
        registry.register(Box::new(delivery_redelivered_total.clone()))?;
        registry.register(Box::new(delivery_latency_seconds.clone()))?;
        registry.register(Box::new(events_applied_total.clone()))?;
        registry.register(Box::new(dead_letters_total.clone()))?;
        registry.register(Box::new(delivery_stage_seconds.clone()))?;
        let delivery_stages = DeliveryStage::ALL
            .map(|stage| delivery_stage_seconds.with_label_values(&[stage.label()]));
        Ok(Self {
            registry,
            http_requests_total,
            http_request_duration_seconds,
            messages_accepted_total,
            delivery_outcomes_total,
            delivery_redelivered_total,
            delivery_latency_seconds,
            events_applied_total,
            dead_letters_total,
            delivery_stages,
        })
    }

    /// Counts messages accepted into the log.
    pub fn messages_accepted(&self, count: u64) {
        self.messages_accepted_total.inc_by(count);
    }

    /// Counts one delivery outcome.
    pub fn delivery_outcome(&self, outcome: &'static str) {
        self.delivery_outcomes_total
            .with_label_values(&[outcome])
            .inc();
    }

    /// Counts one record set aside by `consumer` (`events`, `delivery`) for `reason`
    /// (`undecodable`, `invalid`, `rejected`, `unapplicable`).
    pub fn dead_lettered(&self, consumer: &'static str, reason: &'static str) {
        self.dead_letters_total
            .with_label_values(&[consumer, reason])
            .inc();
    }

    /// Times one stage of one message's delivery.
    pub fn delivery_stage(&self, stage: DeliveryStage, took: std::time::Duration) {
        self.delivery_stages[stage as usize].observe(took.as_secs_f64());
    }

    /// The text exposition format for `GET /metrics`.
    pub fn render(&self) -> anyhow::Result<String> {
        let mut buffer = Vec::with_capacity(8 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .context("encoding metrics")?;
        String::from_utf8(buffer).context("metrics are not UTF-8")
    }
}

/// A bounded method label.
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::HEAD => "HEAD",
        _ => "OTHER",
    }
}

/// A bounded status label.
pub fn status_label(status: http::StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
