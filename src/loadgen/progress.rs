//! Live counters of a load-generator run and the once-a-second progress line on stderr (stdout
//! is kept for the `RESULT` line alone).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

/// Counters the drivers bump and the reporter reads; relaxed atomics, as the line is only a hint.
pub struct Progress {
    started: Instant,
    phase: Mutex<&'static str>,
    health: AtomicU64,
    sent: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    delivered: AtomicU64,
}

impl Progress {
    pub fn new() -> Arc<Progress> {
        Arc::new(Progress {
            started: Instant::now(),
            phase: Mutex::new("setup"),
            health: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
        })
    }

    /// Names what the run is doing now; printed with every line.
    pub fn set_phase(&self, phase: &'static str) {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner) = phase;
    }

    pub fn add_health(&self, requests: u64) {
        self.health.fetch_add(requests, Ordering::Relaxed);
    }

    pub fn add_sent(&self, messages: u64) {
        self.sent.fetch_add(messages, Ordering::Relaxed);
    }

    pub fn add_accepted(&self, messages: u64) {
        self.accepted.fetch_add(messages, Ordering::Relaxed);
    }

    /// Messages accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn add_refused(&self, messages: u64) {
        self.refused.fetch_add(messages, Ordering::Relaxed);
    }

    /// Sends the workers recorded so far (as last polled).
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Sends the workers recorded so far in this run.
    pub fn set_delivered(&self, messages: u64) {
        self.delivered.store(messages, Ordering::Relaxed);
    }

    fn line(&self) -> String {
        let phase = *self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        format!(
            "loadgen [{:>5.1}s] {phase}: health={} sent={} accepted={} refused={} delivered={}",
            self.started.elapsed().as_secs_f64(),
            self.health.load(Ordering::Relaxed),
            self.sent.load(Ordering::Relaxed),
            self.accepted.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.delivered.load(Ordering::Relaxed),
        )
    }

    /// Prints the progress line every second until the returned task is aborted.
    pub fn report_every_second(self: &Arc<Self>) -> JoinHandle<()> {
        let progress = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(1));
            ticks.tick().await;
            loop {
                ticks.tick().await;
                eprintln!("{}", progress.line());
            }
        })
    }
}
