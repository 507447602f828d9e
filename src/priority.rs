//! Tokio runtimes at a lower scheduling priority.
//!
//! The pipeline's consumers (delivery to workers, status events into `messages`) run on their
//! own runtime, whose threads may get a higher nice value (`CONSUMER_NICE`) than the HTTP
//! ingress. A `202` waits for the request's durable append; delivery does not have to keep pace
//! with acceptance, the log holds the backlog. When the CPU is contended, the kernel then runs
//! the ingress threads first and the consumers catch up in the gaps.
//!
//! The simulated worker uses the same (`sim-worker --nice`) when it shares a machine with the
//! gateway it stands in a remote fleet for (the load generator's runs).
//!
//! A nice value is a blunt tool: it delays the consumers' every wake-up whenever the ingress
//! runs, also at moderate load, where it costs delivery latency for nothing. So the default is
//! 0, and the consumers yield to the ingress by themselves instead: [`IngressPressure`] counts
//! the client HTTP requests in flight, and while many stay queued up (a burst: clients waiting
//! on the gateway) the delivery consumer starts only `DELIVERY_BURST_RATE` worker calls per
//! second, one at a time, and reads little ahead, so the CPU goes to accepting; it resumes at
//! full width as soon as the burst is over. A bulk send weighs what its items cost to accept
//! ([`BULK_MESSAGES_PER_UNIT`] items a request), so a few clients streaming large bulks count
//! as the burst they are. Worker calls into the gateway (receipt callbacks) are not counted:
//! they follow from delivery, and counting them would make delivery throttle itself.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;

/// A multi-threaded tokio runtime whose threads run at a given nice value.
pub struct PriorityRuntime {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl PriorityRuntime {
    /// Starts one worker thread per core at nice value `nice` (0 to 19: only lowering the
    /// priority needs no privilege; 0 leaves the threads at the process's own).
    pub fn start(name: &str, nice: u8) -> anyhow::Result<Self> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if nice > 0 {
            builder.on_thread_start(move || lower_priority(nice));
        }
        let runtime = builder
            .thread_name(name)
            .enable_all()
            .build()
            .with_context(|| format!("could not start the {name} runtime"))?;
        let handle = runtime.handle().clone();
        Ok(Self {
            runtime: Some(runtime),
            handle,
        })
    }

    /// Runs `task` on this runtime's threads; the handle can be awaited from any runtime.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }
}

impl Drop for PriorityRuntime {
    /// Stops the runtime without blocking (it may be dropped inside another runtime); its
    /// tasks have been awaited by then, what remains is idle connection upkeep.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::ZERO);
        }
    }
}

/// HTTP requests in flight at the ingress, and whether that is a burst the consumers should
/// yield to.
///
/// The count is a noisy signal both ways. Under saturation it dips under the threshold many
/// times a second (between one answer and a client's next request a connection has nothing in
/// flight), and at moderate load one slow moment (a checkpoint, a descheduled thread) queues
/// requests up past it for a few milliseconds. So a burst is a streak: the count reached
/// [`BURST_IN_FLIGHT`] again and again, never [`BURST_HOLD`] apart, for at least
/// [`BURST_MIN`]; it ends [`BURST_HOLD`] after the last time.
#[derive(Debug)]
pub struct IngressPressure {
    in_flight: AtomicUsize,
    /// Origin of the two instants below.
    epoch: Instant,
    /// Milliseconds since `epoch`, plus one (0: never), when the count last reached
    /// [`BURST_IN_FLIGHT`].
    saturated_at: AtomicU64,
    /// Same scale: when the current streak of saturation began.
    streak_began_at: AtomicU64,
}

/// Requests in flight from which the ingress counts as saturated: at moderate load requests are
/// answered as they come (a handful in flight); only clients queueing up on the gateway get
/// this many.
pub const BURST_IN_FLIGHT: usize = 32;

/// Bulk send items that weigh as much as one request in flight. Accepting a message of a bulk
/// costs about an eighth of a single send's whole request (measured with `wa-gateway loadgen`:
/// about 12 µs against about 95 µs of CPU on this project's 2-core machine), so four clients
/// each posting 1000-message bulks keep 500 units in flight: the ingress is as busy as with
/// hundreds of single-send clients, and delivery yields to it the same way.
pub const BULK_MESSAGES_PER_UNIT: usize = 8;

/// How long saturation must go on before it is a burst.
pub const BURST_MIN: Duration = Duration::from_millis(500);

/// How long a burst outlasts the last moment [`BURST_IN_FLIGHT`] requests were in flight (and
/// the longest gap within one streak).
pub const BURST_HOLD: Duration = Duration::from_millis(250);

impl Default for IngressPressure {
    fn default() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            epoch: Instant::now(),
            saturated_at: AtomicU64::new(0),
            streak_began_at: AtomicU64::new(0),
        }
    }
}

impl IngressPressure {
    /// Counts a request until the guard is dropped.
    pub fn enter(&self) -> InFlightGuard<'_> {
        self.enter_weighted(1)
    }

    /// Counts `units` request's worth of work until the guard is dropped: a bulk send's items
    /// add to the request that carries them (see [`BULK_MESSAGES_PER_UNIT`]), so a few clients
    /// posting large bulks saturate the ingress as many posting single sends do.
    pub fn enter_weighted(&self, units: usize) -> InFlightGuard<'_> {
        let in_flight = self.in_flight.fetch_add(units, Ordering::Relaxed) + units;
        if units > 0 && in_flight >= BURST_IN_FLIGHT {
            let now = self.now();
            let previous = self.saturated_at.swap(now, Ordering::Relaxed);
            if previous == 0 || now.saturating_sub(previous) >= millis(BURST_HOLD) {
                self.streak_began_at.store(now, Ordering::Relaxed);
            }
        }
        InFlightGuard {
            pressure: self,
            units,
        }
    }

    /// Requests in flight now (in units: a bulk send counts its items' weight too).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether the ingress is in a burst (see the type's documentation).
    pub fn is_burst(&self) -> bool {
        let saturated_at = self.saturated_at.load(Ordering::Relaxed);
        if saturated_at == 0 {
            return false;
        }
        let now = self.now();
        let began_at = self.streak_began_at.load(Ordering::Relaxed);
        now.saturating_sub(saturated_at) < millis(BURST_HOLD)
            && saturated_at.saturating_sub(began_at) >= millis(BURST_MIN)
    }

    /// Milliseconds since `epoch`, plus one.
    fn now(&self) -> u64 {
        millis(self.epoch.elapsed()).saturating_add(1)
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// One request (or its weight) in flight; see [`IngressPressure::enter_weighted`].
#[derive(Debug)]
pub struct InFlightGuard<'a> {
    pressure: &'a IngressPressure,
    units: usize,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.pressure
            .in_flight
            .fetch_sub(self.units, Ordering::Relaxed);
    }
}

/// Sets the calling thread's nice value; a failure is logged, the thread runs on unchanged.
#[cfg(target_os = "linux")]
fn lower_priority(nice: u8) {
    // On Linux a thread is a task with its own nice value; `gettid` names just this one.
    let thread = rustix::thread::gettid();
    if let Err(err) = rustix::process::setpriority_process(Some(thread), i32::from(nice)) {
        tracing::warn!(error = %err, nice, "could not lower a thread's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(nice: u8) {
    tracing::debug!(nice, "per-thread priority is only set on Linux");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    fn own_nice() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
    }

    #[test]
    fn pressure_counts_requests_in_flight_and_flags_a_sustained_burst() {
        let pressure = IngressPressure::default();
        let saturate = || {
            let _guards: Vec<_> = (0..BURST_IN_FLIGHT).map(|_| pressure.enter()).collect();
            assert_eq!(pressure.in_flight(), BURST_IN_FLIGHT);
        };
        let below: Vec<_> = (0..BURST_IN_FLIGHT - 1).map(|_| pressure.enter()).collect();
        assert_eq!(pressure.in_flight(), BURST_IN_FLIGHT - 1);
        drop(below);
        assert!(!pressure.is_burst());
        // A moment of saturation is no burst.
        saturate();
        assert!(!pressure.is_burst());
        // Saturation again and again (gaps under BURST_HOLD) for BURST_MIN is.
        let began = Instant::now();
        while began.elapsed() < BURST_MIN + Duration::from_millis(20) {
            saturate();
            std::thread::sleep(BURST_HOLD / 5);
        }
        saturate();
        assert!(pressure.is_burst());
        assert_eq!(pressure.in_flight(), 0);
        // It outlasts the dips, then ends; the next moment of saturation starts a new streak.
        std::thread::sleep(BURST_HOLD + Duration::from_millis(50));
        assert!(!pressure.is_burst());
        saturate();
        assert!(!pressure.is_burst());
    }

    #[test]
    fn a_bulk_weighs_its_items_and_a_stream_of_them_is_a_burst() {
        let pressure = IngressPressure::default();
        // Four clients posting 1000-message bulks: each request carries its items' weight.
        let units = 1000_usize.div_ceil(BULK_MESSAGES_PER_UNIT);
        let bulks = || {
            let requests: Vec<_> = (0..4).map(|_| pressure.enter()).collect();
            let weights: Vec<_> = (0..4).map(|_| pressure.enter_weighted(units)).collect();
            assert_eq!(pressure.in_flight(), 4 * (units + 1));
            drop((requests, weights));
        };
        bulks();
        assert_eq!(pressure.in_flight(), 0);
        assert!(!pressure.is_burst(), "one round of bulks is no burst");
        let began = Instant::now();
        while began.elapsed() < BURST_MIN + Duration::from_millis(20) {
            bulks();
            std::thread::sleep(BURST_HOLD / 5);
        }
        bulks();
        assert!(pressure.is_burst());
        // A weight of nothing never saturates, whatever is in flight.
        std::thread::sleep(BURST_HOLD + Duration::from_millis(50));
        let many: Vec<_> = (0..BURST_IN_FLIGHT)
            .map(|_| pressure.enter_weighted(0))
            .collect();
        assert_eq!(pressure.in_flight(), 0);
        assert!(!pressure.is_burst());
        drop(many);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_runtime_threads_run_at_the_nice_value_and_no_other_thread_does() {
        let before = own_nice();
        // 19 is the lowest priority: any thread may move there.
        let runtime = PriorityRuntime::start("wa-test", 19).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..4 {
            let tx = tx.clone();
            drop(runtime.spawn(async move {
                tx.send(own_nice()).unwrap();
            }));
        }
        for _ in 0..4 {
            assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 19);
        }
        assert_eq!(own_nice(), before);
    }
}
