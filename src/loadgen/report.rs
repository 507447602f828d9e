//! The figures of a load-generator run, computed from what the client timed and what the
//! simulated workers recorded: throughput, latency percentiles, lost, duplicated and reordered
//! messages, and the `RESULT` line. Pure functions of their inputs, so they are unit-tested on
//! synthetic runs.
//!
//! Ordering is judged by what the client can know. Two sends of one session are ordered when the
//! first was answered before the second was sent (the gateway accepted the first before it even
//! saw the second), or when they are items of one bulk request (array order). Sends that were in
//! flight at the same time have no defined order: the gateway may accept either first, so
//! reaching the worker in either order is correct.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

/// Client-side timing of one HTTP request of the send run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RequestTiming {
    /// Wall clock when the request was sent, Unix microseconds.
    pub started_at_us: i64,
    /// Wall clock when its answer had been read, Unix microseconds: the accept time of every
    /// message it carried, the origin of their end-to-end latency.
    pub answered_at_us: i64,
    /// Monotonic time from sending to the read answer (the accept latency).
    pub latency: Duration,
    /// Whether the gateway accepted at least one of its messages; only those requests count
    /// towards the accept latency.
    pub accepted: bool,
}

/// One message the gateway accepted (answered with a message id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcceptedMessage {
    /// Index of the request that carried it, into the request timings.
    pub request: usize,
    /// Index of its session.
    pub session: usize,
    /// Its per-session sequence number (also embedded in the text); increasing in the order the
    /// client sent the session's messages.
    pub seq: u64,
}

/// One send recorded by a simulated worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arrival {
    /// Which worker recorded it: order is only known within one worker's record.
    pub worker: usize,
    /// The accepted message it carried (by its `X-Message-Id`), `None` for a send this run did
    /// not make (another client's, or one without a message id).
    pub message: Option<usize>,
    /// When the worker recorded it, Unix microseconds.
    pub received_at_us: i64,
}

/// Everything a run observed. `arrivals` is each worker's record in its arrival order, workers
/// one after the other.
#[derive(Clone, Copy, Debug)]
pub struct Observations<'a> {
    /// Every request of the send run, by request index; `None` for one never sent.
    pub requests: &'a [Option<RequestTiming>],
    /// Every accepted message.
    pub accepted: &'a [AcceptedMessage],
    /// What the workers recorded during the run.
    pub arrivals: &'a [Arrival],
    /// From the first request sent to the last answer read.
    pub send_elapsed: Duration,
    /// Successful health requests of the ceiling run.
    pub ceiling_requests: u64,
    /// How long the ceiling run took.
    pub ceiling_elapsed: Duration,
}

/// The figures of one run; `Display` is the `RESULT` line.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Accepted messages per second of the send run.
    pub accepted_per_s: f64,
    /// Delivered messages per second, from the first request to the last delivery.
    pub delivered_per_s: f64,
    /// Median accept latency of requests, milliseconds.
    pub accept_p50_ms: f64,
    /// 99th percentile accept latency of requests, milliseconds.
    pub accept_p99_ms: f64,
    /// Median of worker receipt minus accept time, milliseconds.
    pub e2e_p50_ms: f64,
    /// 99th percentile of worker receipt minus accept time, milliseconds.
    pub e2e_p99_ms: f64,
    /// Accepted messages no worker received.
    pub lost: u64,
    /// Accepted messages a worker received more than once.
    pub dup: u64,
    /// Messages that reached their worker after a message of the same session that had to come
    /// after them (see the module docs).
    pub out_of_order: u64,
    /// Health requests per second at the same concurrency.
    pub ceiling_per_s: f64,
    /// `accepted_per_s / ceiling_per_s`.
    pub ratio: f64,
    /// Accepted messages received at least once.
    pub delivered: u64,
    /// Sends the workers recorded that this run did not make.
    pub foreign: u64,
}

impl Summary {
    /// Whether every accepted message arrived exactly once and in order.
    pub fn delivery_is_clean(&self) -> bool {
        self.lost == 0 && self.dup == 0 && self.out_of_order == 0
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RESULT accepted_per_s={:.0} delivered_per_s={:.0} accept_p50_ms={:.2} \
             accept_p99_ms={:.2} e2e_p50_ms={:.2} e2e_p99_ms={:.2} lost={} dup={} \
             out_of_order={} ceiling_per_s={:.0} ratio={:.2}",
            self.accepted_per_s,
            self.delivered_per_s,
            self.accept_p50_ms,
            self.accept_p99_ms,
            self.e2e_p50_ms,
            self.e2e_p99_ms,
            self.lost,
            self.dup,
            self.out_of_order,
            self.ceiling_per_s,
            self.ratio,
        )
    }
}

/// Computes the figures of a run.
pub fn summarize(observed: &Observations<'_>) -> Summary {
    let accepted_count = observed.accepted.len();
    let mut arrivals_of = vec![0u32; accepted_count];
    let mut first_arrival_us: Vec<Option<i64>> = vec![None; accepted_count];
    let mut foreign = 0u64;
    let mut order = OrderCheck::default();
    for arrival in observed.arrivals {
        let Some(index) = arrival.message.filter(|&index| index < accepted_count) else {
            foreign += 1;
            continue;
        };
        arrivals_of[index] = arrivals_of[index].saturating_add(1);
        if first_arrival_us[index].is_some() {
            // A duplicate: counted once as such, and its position says nothing about order.
            continue;
        }
        first_arrival_us[index] = Some(arrival.received_at_us);
        order.observe(arrival.worker, &observed.accepted[index], observed.requests);
    }

    let lost = arrivals_of.iter().filter(|&&count| count == 0).count() as u64;
    let dup = arrivals_of.iter().filter(|&&count| count > 1).count() as u64;
    let delivered = accepted_count as u64 - lost;

    let mut e2e_ms: Vec<f64> = Vec::with_capacity(accepted_count);
    let mut last_delivery_us: Option<i64> = None;
    for (message, received_at_us) in observed.accepted.iter().zip(&first_arrival_us) {
        let Some(received_at_us) = *received_at_us else {
            continue;
        };
        last_delivery_us = last_delivery_us.max(Some(received_at_us));
        if let Some(request) = timing_of(observed.requests, message.request) {
            e2e_ms.push(micros_to_ms(received_at_us - request.answered_at_us));
        }
    }
    let mut accept_ms: Vec<f64> = observed
        .requests
        .iter()
        .flatten()
        .filter(|request| request.accepted)
        .map(|request| request.latency.as_secs_f64() * 1000.0)
        .collect();

    let first_send_us = observed
        .requests
        .iter()
        .flatten()
        .map(|request| request.started_at_us)
        .min();
    let delivered_per_s = match (first_send_us, last_delivery_us) {
        (Some(first), Some(last)) if last > first => {
            delivered as f64 / ((last - first) as f64 / 1_000_000.0)
        }
        _ => 0.0,
    };
    let accepted_per_s = per_second(accepted_count as u64, observed.send_elapsed);
    let ceiling_per_s = per_second(observed.ceiling_requests, observed.ceiling_elapsed);
    let ratio = if ceiling_per_s > 0.0 {
        accepted_per_s / ceiling_per_s
    } else {
        0.0
    };
    Summary {
        accepted_per_s,
        delivered_per_s,
        accept_p50_ms: percentile(&mut accept_ms, 0.50),
        accept_p99_ms: percentile(&mut accept_ms, 0.99),
        e2e_p50_ms: percentile(&mut e2e_ms, 0.50),
        e2e_p99_ms: percentile(&mut e2e_ms, 0.99),
        lost,
        dup,
        out_of_order: order.violations,
        ceiling_per_s,
        ratio,
        delivered,
        foreign,
    }
}

/// The out-of-order test of the module docs, in one pass over the arrivals.
///
/// For each (worker, session) stream it keeps the latest send time among the requests whose
/// messages already arrived: a message whose request was answered before that time arrives after
/// something that was sent after it had been accepted. Within one request it keeps the highest
/// sequence number that arrived, since bulk items are ordered by their position.
#[derive(Default)]
struct OrderCheck {
    latest_send_us: HashMap<(usize, usize), i64>,
    highest_seq_in_request: HashMap<usize, u64>,
    violations: u64,
}

impl OrderCheck {
    fn observe(
        &mut self,
        worker: usize,
        message: &AcceptedMessage,
        requests: &[Option<RequestTiming>],
    ) {
        let Some(request) = timing_of(requests, message.request) else {
            return;
        };
        let latest = self
            .latest_send_us
            .entry((worker, message.session))
            .or_insert(i64::MIN);
        let overtaken_by_later_request = *latest > request.answered_at_us;
        *latest = (*latest).max(request.started_at_us);
        let highest = self
            .highest_seq_in_request
            .entry(message.request)
            .or_insert(message.seq);
        let overtaken_within_request = *highest > message.seq;
        *highest = (*highest).max(message.seq);
        if overtaken_by_later_request || overtaken_within_request {
            self.violations += 1;
        }
    }
}

fn timing_of(requests: &[Option<RequestTiming>], index: usize) -> Option<&RequestTiming> {
    requests.get(index).and_then(Option::as_ref)
}

fn micros_to_ms(micros: i64) -> f64 {
    micros as f64 / 1000.0
}

fn per_second(count: u64, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        0.0
    } else {
        count as f64 / elapsed.as_secs_f64()
    }
}

/// Nearest-rank percentile (`p` in `0.0..=1.0`): the smallest value with at least `p` of the
/// values at or below it. Sorts `values` in place; 0 for no values.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_unstable_by(f64::total_cmp);
    let rank = (p * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1000;

    fn request(started_ms: i64, answered_ms: i64) -> Option<RequestTiming> {
        Some(RequestTiming {
            started_at_us: started_ms * MS,
            answered_at_us: answered_ms * MS,
            latency: Duration::from_millis((answered_ms - started_ms) as u64),
            accepted: true,
        })
    }

    fn message(request: usize, session: usize, seq: u64) -> AcceptedMessage {
        AcceptedMessage {
            request,
            session,
            seq,
        }
    }

    fn arrival(message: usize, received_ms: i64) -> Arrival {
        Arrival {
            worker: 0,
            message: Some(message),
            received_at_us: received_ms * MS,
        }
    }

    fn summarize_run(
        requests: &[Option<RequestTiming>],
        accepted: &[AcceptedMessage],
        arrivals: &[Arrival],
    ) -> Summary {
        summarize(&Observations {
            requests,
            accepted,
            arrivals,
            send_elapsed: Duration::from_secs(1),
            ceiling_requests: 0,
            ceiling_elapsed: Duration::ZERO,
        })
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut values: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&mut values, 0.50), 50.0);
        assert_eq!(percentile(&mut values, 0.99), 99.0);
        assert_eq!(percentile(&mut values, 1.0), 100.0);
        assert_eq!(percentile(&mut values, 0.0), 1.0);
        assert_eq!(percentile(&mut [7.0], 0.99), 7.0);
        assert_eq!(percentile(&mut [], 0.5), 0.0);
        let mut two = [2.0, 1.0];
        assert_eq!(percentile(&mut two, 0.50), 1.0);
        assert_eq!(percentile(&mut two, 0.99), 2.0);
    }

    #[test]
    fn counts_lost_duplicated_and_foreign_sends() {
        let requests = [request(0, 1), request(0, 2), request(0, 3)];
        let accepted = [message(0, 0, 0), message(1, 1, 0), message(2, 2, 0)];
        let arrivals = [
            arrival(0, 5),
            arrival(0, 6),
            arrival(0, 7),
            arrival(2, 8),
            Arrival {
                worker: 0,
                message: None,
                received_at_us: 9 * MS,
            },
        ];
        let summary = summarize_run(&requests, &accepted, &arrivals);
        assert_eq!(summary.lost, 1, "message 1 never arrived");
        assert_eq!(
            summary.dup, 1,
            "message 0 arrived three times: one duplicated message"
        );
        assert_eq!(summary.delivered, 2);
        assert_eq!(summary.foreign, 1);
        assert_eq!(summary.out_of_order, 0);
        assert!(!summary.delivery_is_clean());
    }

    #[test]
    fn overlapping_requests_may_arrive_in_either_order() {
        // Both sends of session 0 were in flight together (0..10 and 2..12 ms).
        let requests = [request(0, 10), request(2, 12)];
        let accepted = [message(0, 0, 0), message(1, 0, 1)];
        let arrivals = [arrival(1, 11), arrival(0, 12)];
        let summary = summarize_run(&requests, &accepted, &arrivals);
        assert_eq!(summary.out_of_order, 0);
        assert!(summary.delivery_is_clean());
    }

    #[test]
    fn a_send_accepted_before_the_next_was_sent_must_arrive_first() {
        // Session 0: seq 0 answered at 10 ms, seq 1 sent at 11 ms, but seq 1 arrived first.
        // Session 1 is in order and stays clean; the same reversal on another worker's stream
        // of session 0 would be judged on its own.
        let requests = [
            request(0, 10),
            request(11, 20),
            request(0, 5),
            request(6, 9),
        ];
        let accepted = [
            message(0, 0, 0),
            message(1, 0, 1),
            message(2, 1, 0),
            message(3, 1, 1),
        ];
        let arrivals = [
            arrival(1, 21),
            arrival(0, 22),
            arrival(2, 6),
            arrival(3, 10),
        ];
        let summary = summarize_run(&requests, &accepted, &arrivals);
        assert_eq!(summary.out_of_order, 1);
        assert_eq!(summary.lost, 0);
    }

    #[test]
    fn bulk_items_must_arrive_in_array_order() {
        let requests = [request(0, 10)];
        let accepted = [message(0, 0, 0), message(0, 0, 1), message(0, 0, 2)];
        let arrivals = [arrival(0, 11), arrival(2, 12), arrival(1, 13)];
        let summary = summarize_run(&requests, &accepted, &arrivals);
        assert_eq!(summary.out_of_order, 1, "item 1 arrived after item 2");
    }

    #[test]
    fn duplicates_do_not_count_as_reordering() {
        let requests = [request(0, 1), request(2, 3)];
        let accepted = [message(0, 0, 0), message(1, 0, 1)];
        // The redelivery of seq 0 after seq 1 is a duplicate, not a reordering.
        let arrivals = [arrival(0, 4), arrival(1, 5), arrival(0, 6)];
        let summary = summarize_run(&requests, &accepted, &arrivals);
        assert_eq!((summary.dup, summary.out_of_order), (1, 0));
    }

    #[test]
    fn latencies_and_rates() {
        // Two requests, 4 ms and 8 ms; messages accepted at 4 ms and 9 ms, received at 6 ms
        // and 10 ms (end to end 2 ms and 1 ms).
        let requests = [request(0, 4), request(1, 9)];
        let accepted = [message(0, 0, 0), message(1, 1, 0)];
        let arrivals = [arrival(0, 6), arrival(1, 10)];
        let summary = summarize(&Observations {
            requests: &requests,
            accepted: &accepted,
            arrivals: &arrivals,
            send_elapsed: Duration::from_millis(9),
            ceiling_requests: 10,
            ceiling_elapsed: Duration::from_millis(5),
        });
        assert_eq!(summary.accept_p50_ms, 4.0);
        assert_eq!(summary.accept_p99_ms, 8.0);
        assert_eq!(summary.e2e_p50_ms, 1.0);
        assert_eq!(summary.e2e_p99_ms, 2.0);
        // Delivered: 2 messages between the first send (0 ms) and the last delivery (10 ms).
        assert!((summary.delivered_per_s - 200.0).abs() < 1e-9);
        assert!((summary.accepted_per_s - 2.0 / 0.009).abs() < 1e-6);
        assert!((summary.ceiling_per_s - 2000.0).abs() < 1e-9);
        assert!((summary.ratio - summary.accepted_per_s / 2000.0).abs() < 1e-12);
    }

    #[test]
    fn result_line_has_the_keys_in_order() {
        let summary = Summary {
            accepted_per_s: 1234.4,
            delivered_per_s: 1200.6,
            accept_p50_ms: 1.234,
            accept_p99_ms: 9.876,
            e2e_p50_ms: 2.0,
            e2e_p99_ms: 10.5,
            lost: 0,
            dup: 1,
            out_of_order: 2,
            ceiling_per_s: 2468.8,
            ratio: 0.5,
            delivered: 10,
            foreign: 0,
        };
        assert_eq!(
            summary.to_string(),
            "RESULT accepted_per_s=1234 delivered_per_s=1201 accept_p50_ms=1.23 \
             accept_p99_ms=9.88 e2e_p50_ms=2.00 e2e_p99_ms=10.50 lost=0 dup=1 out_of_order=2 \
             ceiling_per_s=2469 ratio=0.50"
        );
    }
}
