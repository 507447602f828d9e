//! The queue of the hot-path write transactions on one SQLite file, with two priorities.
//!
//! SQLite has one writer at a time; writers that collide wait in its busy handler, which sleeps
//! in growing steps (1, 2, 5, 10… ms). The pipeline's writers queue here instead. Recording a
//! message read from the outbound log is on every message's way to its worker, so it is
//! *urgent*; status changes (delivery outcomes, worker receipts) are not, and step aside: a
//! normal writer does not queue while an urgent one waits, and one that got the lock while an
//! urgent writer was waiting hands it on; either way only once per turn it asks for, so normal
//! writers are not starved (and the longer they wait, the more changes each of their batches
//! carries).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Mutex, Notify, OwnedMutexGuard};

/// A held turn; the next writer goes when it is dropped.
pub(crate) type WriteTurn = OwnedMutexGuard<()>;

#[derive(Debug, Default)]
pub(crate) struct WriteGate {
    lock: Arc<Mutex<()>>,
    /// Urgent writers that asked for the lock, and those of them that got it (or gave up
    /// waiting); the difference is how many wait.
    urgent_arrived: AtomicU64,
    urgent_served: AtomicU64,
    /// Signalled each time an urgent writer stops waiting.
    urgent_progress: Notify,
}

impl WriteGate {
    /// A turn ahead of every normal writer that is not already holding or about to take the
    /// lock.
    pub(crate) async fn urgent(&self) -> WriteTurn {
        let waiting = UrgentWaiting::new(self);
        let turn = Arc::clone(&self.lock).lock_owned().await;
        drop(waiting);
        turn
    }

    /// A turn after the urgent writers waiting now. It steps aside once at most (before
    /// queueing, or on being granted the lock while an urgent writer waits), and only for the
    /// urgent writers that were waiting at that moment, so a steady stream of urgent writers
    /// delays it by a few turns, never indefinitely.
    pub(crate) async fn normal(&self) -> WriteTurn {
        if self.urgent_waiting() {
            self.wait_for_waiting_urgent().await;
            return Arc::clone(&self.lock).lock_owned().await;
        }
        let turn = Arc::clone(&self.lock).lock_owned().await;
        if !self.urgent_waiting() {
            return turn;
        }
        // An urgent writer queued behind this one while it waited: let it go first.
        drop(turn);
        self.wait_for_waiting_urgent().await;
        Arc::clone(&self.lock).lock_owned().await
    }

    fn urgent_waiting(&self) -> bool {
        self.urgent_served.load(Ordering::Acquire) < self.urgent_arrived.load(Ordering::Acquire)
    }

    /// Waits until every urgent writer that is waiting now has the lock (or gave up).
    async fn wait_for_waiting_urgent(&self) {
        let arrived = self.urgent_arrived.load(Ordering::Acquire);
        loop {
            let progress = self.urgent_progress.notified();
            tokio::pin!(progress);
            // Registered before the check, so a notification between the two is not missed.
            progress.as_mut().enable();
            if self.urgent_served.load(Ordering::Acquire) >= arrived {
                return;
            }
            progress.await;
        }
    }
}

/// Counts an urgent writer as waiting until it has the lock or its future is dropped.
struct UrgentWaiting<'a>(&'a WriteGate);

impl<'a> UrgentWaiting<'a> {
    fn new(gate: &'a WriteGate) -> Self {
        gate.urgent_arrived.fetch_add(1, Ordering::AcqRel);
        Self(gate)
    }
}

impl Drop for UrgentWaiting<'_> {
    fn drop(&mut self) {
        self.0.urgent_served.fetch_add(1, Ordering::AcqRel);
        self.0.urgent_progress.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn an_urgent_writer_goes_before_normal_writers_that_came_earlier() {
        let gate = Arc::new(WriteGate::default());
        let held = gate.normal().await;
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, urgent) in [("normal-1", false), ("normal-2", false), ("urgent", true)] {
            let gate = Arc::clone(&gate);
            let order = Arc::clone(&order);
            tasks.push(tokio::spawn(async move {
                let _turn = if urgent {
                    gate.urgent().await
                } else {
                    gate.normal().await
                };
                order.lock().expect("order lock").push(name);
            }));
            // Each is queued before the next arrives.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(held);
        for task in tasks {
            task.await.expect("writer task");
        }
        let order = order.lock().expect("order lock").clone();
        assert_eq!(order[0], "urgent", "{order:?}");
        assert_eq!(order.len(), 3);
    }

    #[tokio::test]
    async fn normal_writers_go_once_no_urgent_writer_waits() {
        let gate = Arc::new(WriteGate::default());
        let urgent = gate.urgent().await;
        let waiter = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move {
                let _turn = gate.normal().await;
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(urgent);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the normal writer got its turn")
            .expect("writer task");
    }

    #[tokio::test]
    async fn a_stream_of_urgent_writers_does_not_starve_a_normal_writer() {
        let gate = Arc::new(WriteGate::default());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Two urgent writers taking turns back to back: one is always waiting.
        let urgent: Vec<_> = (0..2)
            .map(|_| {
                let gate = Arc::clone(&gate);
                let stop = Arc::clone(&stop);
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let _turn = gate.urgent().await;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let normal = tokio::time::timeout(Duration::from_secs(5), gate.normal()).await;
        stop.store(true, Ordering::Relaxed);
        assert!(normal.is_ok(), "the normal writer never got a turn");
        drop(normal);
        for task in urgent {
            task.await.expect("urgent writer");
        }
    }

    #[tokio::test]
    async fn an_abandoned_urgent_wait_does_not_block_normal_writers() {
        let gate = Arc::new(WriteGate::default());
        let held = gate.normal().await;
        let abandoned = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move {
                let _turn = gate.urgent().await;
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        abandoned.abort();
        let _ = abandoned.await;
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), gate.normal())
            .await
            .expect("no urgent writer is waiting any more");
    }
}
