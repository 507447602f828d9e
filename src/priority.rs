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
//! the HTTP requests in flight, and while that many are queued up (a burst: clients waiting on
//! the gateway) the delivery consumer keeps only one worker call in flight and reads little
//! ahead, so the CPU goes to accepting; it resumes at full width as soon as the burst is over.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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
#[derive(Debug, Default)]
pub struct IngressPressure {
    in_flight: AtomicUsize,
}

/// Requests in flight from which the ingress counts as saturated: at moderate load requests are
/// answered as they come (a handful in flight); only clients queueing up on the gateway get
/// this many.
pub const BURST_IN_FLIGHT: usize = 32;

impl IngressPressure {
    /// Counts a request until the guard is dropped.
    pub fn enter(&self) -> InFlightGuard<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self)
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether the ingress is in a burst ([`BURST_IN_FLIGHT`] or more requests in flight).
    pub fn is_burst(&self) -> bool {
        self.in_flight() >= BURST_IN_FLIGHT
    }
}

/// One request in flight; see [`IngressPressure::enter`].
#[derive(Debug)]
pub struct InFlightGuard<'a>(&'a IngressPressure);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
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
    fn pressure_counts_requests_in_flight_and_flags_a_burst() {
        let pressure = IngressPressure::default();
        let guards: Vec<_> = (0..BURST_IN_FLIGHT - 1).map(|_| pressure.enter()).collect();
        assert_eq!(pressure.in_flight(), BURST_IN_FLIGHT - 1);
        assert!(!pressure.is_burst());
        let last = pressure.enter();
        assert!(pressure.is_burst());
        drop(last);
        drop(guards);
        assert_eq!(pressure.in_flight(), 0);
        assert!(!pressure.is_burst());
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
