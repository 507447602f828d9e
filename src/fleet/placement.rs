//! Placement: the healthy worker with the most headroom. Pure, so it is tested without a fleet.

use crate::domain::WorkerStatus;
use crate::store::Worker;

/// Picks a worker for a new or moving session: ONLINE, alive within `timeout_ms`, below capacity,
/// not in `exclude`; most free capacity (as a fraction) first, then fewer sessions, lower CPU, id.
pub fn choose_worker<'a>(
    workers: &'a [Worker],
    now_ms: i64,
    timeout_ms: i64,
    exclude: &[&str],
) -> Option<&'a Worker> {
    workers
        .iter()
        .filter(|w| w.status == WorkerStatus::Online)
        .filter(|w| w.is_alive(now_ms, timeout_ms))
        .filter(|w| w.session_count < w.max_sessions)
        .filter(|w| !exclude.contains(&w.id.as_str()))
        .max_by(|a, b| {
            headroom(a)
                .total_cmp(&headroom(b))
                .then_with(|| b.session_count.cmp(&a.session_count))
                .then_with(|| {
                    b.cpu_usage
                        .unwrap_or(0.0)
                        .total_cmp(&a.cpu_usage.unwrap_or(0.0))
                })
                .then_with(|| b.id.cmp(&a.id))
        })
}

fn headroom(worker: &Worker) -> f64 {
    if worker.max_sessions <= 0 {
        return 0.0;
    }
    (worker.max_sessions - worker.session_count) as f64 / worker.max_sessions as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(id: &str, sessions: i64, max: i64, status: WorkerStatus, seen: i64) -> Worker {
        Worker {
            id: id.into(),
            endpoint: format!("http://{id}"),
            status,
            max_sessions: max,
            description: None,
            version: None,
            environment: None,
            cpu_usage: None,
            memory_usage: None,
            uptime_seconds: None,
            last_heartbeat_at: Some(seen),
            last_probe_ok_at: None,
            probe_failures: 0,
            registered_at: 0,
            updated_at: 0,
            session_count: sessions,
        }
    }

    #[test]
    fn most_headroom_wins_and_unhealthy_workers_are_skipped() {
        let now = 100_000;
        let workers = vec![
            worker("a", 5, 10, WorkerStatus::Online, now),
            worker("b", 2, 10, WorkerStatus::Online, now),
            worker("c", 0, 10, WorkerStatus::Maintenance, now),
            worker("d", 0, 10, WorkerStatus::Online, now - 60_000),
            worker("e", 10, 10, WorkerStatus::Online, now),
        ];
        assert_eq!(
            choose_worker(&workers, now, 30_000, &[]).map(|w| w.id.as_str()),
            Some("b")
        );
        assert_eq!(
            choose_worker(&workers, now, 30_000, &["b"]).map(|w| w.id.as_str()),
            Some("a")
        );
        assert!(choose_worker(&workers, now, 30_000, &["a", "b"]).is_none());
    }

    #[test]
    fn ties_spread_sessions_evenly() {
        let now = 1;
        let workers = vec![
            worker("a", 1, 4, WorkerStatus::Online, now),
            worker("b", 2, 8, WorkerStatus::Online, now),
        ];
        // Same fraction free (0.75): fewer sessions first.
        assert_eq!(
            choose_worker(&workers, now, 10, &[]).map(|w| w.id.as_str()),
            Some("a")
        );
    }
}
