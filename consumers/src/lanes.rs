//! Per-session FIFO lanes.
//!
//! Many sessions share a partition, but a slow or failing session must never
//! delay another one, while messages of the *same* session must reach the
//! worker in log order. [`SessionLanes`] keeps one FIFO queue per lane key
//! (the session id), allows at most one in-flight message per lane, and
//! hands out the heads of idle lanes round-robin.
//!
//! The scheduler is a plain data structure: it never reads the clock (the
//! caller passes `now`), never sleeps and never spawns, so the async consume
//! loop stays in control and the behaviour is deterministic under test.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

/// What happened to the in-flight head of a lane; passed to
/// [`SessionLanes::finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaneOutcome {
    /// The message was handled; the lane moves on to its next message.
    Done,
    /// Delivery failed transiently; keep the message at the head and block
    /// the lane for this long, preserving order within the session.
    RetryAfter(Duration),
    /// The message can never be delivered; drop it from the lane so the
    /// session can make progress. The caller publishes it to the dead-letter
    /// topic.
    DeadLetter {
        /// Why the message was given up on, for the dead-letter record.
        reason: String,
    },
}

/// Result of [`SessionLanes::finish`], handing ownership of a removed head
/// back to the caller (to complete its offset or dead-letter it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishedHead<M> {
    /// The head was handled and removed from its lane.
    Completed(M),
    /// The head was removed from its lane and must be dead-lettered.
    DeadLettered {
        /// The message to publish to the dead-letter topic.
        item: M,
        /// The reason given in [`LaneOutcome::DeadLetter`].
        reason: String,
    },
    /// The head stays in its lane and is handed out again once eligible.
    Rescheduled {
        /// When the lane becomes eligible again.
        eligible_at: Instant,
        /// Failed attempts of this head so far, including this one.
        failed_attempts: u32,
    },
}

/// Misuse of [`SessionLanes::finish`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LaneError {
    /// The ticket does not refer to the current in-flight head: the lane was
    /// removed (see [`SessionLanes::remove_lane`]) or the ticket was already
    /// finished.
    #[error("dispatch ticket #{item_sequence} for lane {lane_key:?} is stale")]
    StaleTicket {
        /// Lane the ticket was issued for.
        lane_key: String,
        /// Sequence number of the message the ticket was issued for.
        item_sequence: u64,
    },
}

/// Proof that a lane head was handed out; must be returned to
/// [`SessionLanes::finish`].
///
/// Exists so a late result for a message whose lane was removed and later
/// recreated under the same key can never pop the wrong message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchTicket {
    lane_key: Arc<str>,
    item_sequence: u64,
    failed_attempts: u32,
}

impl DispatchTicket {
    /// Lane (session) the dispatched message belongs to.
    pub fn lane_key(&self) -> &str {
        &self.lane_key
    }

    /// Failed attempts of this message before this dispatch (0 on the first
    /// delivery); feed it to [`crate::Backoff::delay`] and compare it with a
    /// maximum to decide between retrying and dead-lettering.
    pub fn failed_attempts(&self) -> u32 {
        self.failed_attempts
    }

    /// Sequence number assigned by [`SessionLanes::push`]; unique within one
    /// scheduler, useful for logging.
    pub fn item_sequence(&self) -> u64 {
        self.item_sequence
    }
}

/// A lane head handed out by [`SessionLanes::next_ready`].
///
/// The message stays owned by the scheduler (it may need to be retried);
/// clone what the delivery needs, then report back with the ticket.
#[derive(Debug)]
pub struct DispatchedHead<'lanes, M> {
    /// Ticket to pass to [`SessionLanes::finish`].
    pub ticket: DispatchTicket,
    /// The message to deliver.
    pub item: &'lanes M,
}

/// A queued message plus its scheduling metadata.
#[derive(Debug)]
struct QueuedItem<M> {
    item_sequence: u64,
    failed_attempts: u32,
    item: M,
}

/// Where a lane is in its lifecycle. Every lane has at least one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LaneState {
    /// Idle and present exactly once in the ready queue.
    Ready,
    /// Its head was handed out and has not been finished yet.
    InFlight,
    /// Its head failed; in the backoff heap under exactly this instant (the
    /// heap may also hold stale entries of lanes woken early; they are skipped).
    BackingOff { eligible_at: Instant },
}

#[derive(Debug)]
struct Lane<M> {
    items: VecDeque<QueuedItem<M>>,
    state: LaneState,
}

/// Scheduler of per-key FIFO lanes: one in-flight message per lane, lanes
/// independent of each other, idle lanes served round-robin.
///
/// Exists so the consumer can process a partition with per-session ordering
/// but without head-of-line blocking between sessions. Memory is bounded by
/// pending messages: a lane disappears as soon as it is empty.
///
/// Costs: `push` is O(1) amortized, `next_ready` O(1) plus O(log b) per
/// expired backoff (b = lanes backing off), `finish` O(1) or O(log b) for a
/// retry, `remove_lane` O(lanes) and meant for rare session deletion.
#[derive(Debug)]
pub struct SessionLanes<M> {
    lanes: HashMap<Arc<str>, Lane<M>>,
    /// Lanes in state `Ready`, in the order they became ready.
    ready_lane_keys: VecDeque<Arc<str>>,
    /// Lanes in state `BackingOff`, earliest eligibility first.
    backing_off_lanes: BinaryHeap<Reverse<(Instant, Arc<str>)>>,
    next_item_sequence: u64,
    pending_item_count: usize,
    in_flight_count: usize,
}

impl<M> Default for SessionLanes<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M> SessionLanes<M> {
    /// Creates an empty scheduler.
    pub fn new() -> Self {
        Self {
            lanes: HashMap::new(),
            ready_lane_keys: VecDeque::new(),
            backing_off_lanes: BinaryHeap::new(),
            next_item_sequence: 0,
            pending_item_count: 0,
            in_flight_count: 0,
        }
    }

    /// Appends `item` to the lane `lane_key`, creating the lane if needed.
    /// Items of one lane are handed out strictly in push order.
    pub fn push(&mut self, lane_key: &str, item: M) {
        let queued_item = QueuedItem {
            item_sequence: self.next_item_sequence,
            failed_attempts: 0,
            item,
        };
        self.next_item_sequence += 1;
        self.pending_item_count += 1;
        if let Some(lane) = self.lanes.get_mut(lane_key) {
            lane.items.push_back(queued_item);
            return;
        }
        let lane_key: Arc<str> = Arc::from(lane_key);
        self.ready_lane_keys.push_back(Arc::clone(&lane_key));
        self.lanes.insert(
            lane_key,
            Lane {
                items: VecDeque::from([queued_item]),
                state: LaneState::Ready,
            },
        );
    }

    /// Hands out the head of the next idle lane whose backoff (if any) has
    /// expired at `now`, marking that lane in flight. Lanes take turns: a
    /// lane re-joins the back of the queue after each finished message.
    pub fn next_ready(&mut self, now: Instant) -> Option<DispatchedHead<'_, M>> {
        self.promote_expired_backoffs(now);
        // The ready queue holds exactly the `Ready` lanes; the check only
        // guards against a broken invariant turning into a stuck lane.
        let lane_key = loop {
            let lane_key = self.ready_lane_keys.pop_front()?;
            if self
                .lanes
                .get(&lane_key)
                .is_some_and(|lane| lane.state == LaneState::Ready && !lane.items.is_empty())
            {
                break lane_key;
            }
        };
        let lane = self.lanes.get_mut(&lane_key)?;
        let head = lane.items.front()?;
        lane.state = LaneState::InFlight;
        self.in_flight_count += 1;
        Some(DispatchedHead {
            ticket: DispatchTicket {
                item_sequence: head.item_sequence,
                failed_attempts: head.failed_attempts,
                lane_key,
            },
            item: &head.item,
        })
    }

    /// Reports the result of a dispatched head.
    ///
    /// [`LaneOutcome::Done`] and [`LaneOutcome::DeadLetter`] remove the head
    /// and return it; [`LaneOutcome::RetryAfter`] keeps it and blocks only
    /// this lane until `now + delay`.
    pub fn finish(
        &mut self,
        ticket: DispatchTicket,
        outcome: LaneOutcome,
        now: Instant,
    ) -> Result<FinishedHead<M>, LaneError> {
        let Some(lane) = self
            .lanes
            .get_mut(&ticket.lane_key)
            .filter(|lane| lane.state == LaneState::InFlight)
            .filter(|lane| {
                lane.items
                    .front()
                    .is_some_and(|head| head.item_sequence == ticket.item_sequence)
            })
        else {
            return Err(LaneError::StaleTicket {
                lane_key: ticket.lane_key.to_string(),
                item_sequence: ticket.item_sequence,
            });
        };
        self.in_flight_count -= 1;

        if let LaneOutcome::RetryAfter(delay) = outcome {
            let eligible_at = instant_saturating_add(now, delay);
            let mut failed_attempts = 0;
            if let Some(head) = lane.items.front_mut() {
                head.failed_attempts = head.failed_attempts.saturating_add(1);
                failed_attempts = head.failed_attempts;
            }
            if eligible_at <= now {
                lane.state = LaneState::Ready;
                self.ready_lane_keys.push_back(ticket.lane_key);
            } else {
                lane.state = LaneState::BackingOff { eligible_at };
                self.backing_off_lanes
                    .push(Reverse((eligible_at, ticket.lane_key)));
            }
            return Ok(FinishedHead::Rescheduled {
                eligible_at,
                failed_attempts,
            });
        }

        let Some(head) = lane.items.pop_front() else {
            // Unreachable: the filter above checked the head exists.
            return Err(LaneError::StaleTicket {
                lane_key: ticket.lane_key.to_string(),
                item_sequence: ticket.item_sequence,
            });
        };
        self.pending_item_count -= 1;
        if lane.items.is_empty() {
            self.lanes.remove(&ticket.lane_key);
        } else {
            lane.state = LaneState::Ready;
            self.ready_lane_keys.push_back(ticket.lane_key);
        }
        Ok(match outcome {
            LaneOutcome::DeadLetter { reason } => FinishedHead::DeadLettered {
                item: head.item,
                reason,
            },
            LaneOutcome::Done | LaneOutcome::RetryAfter(_) => FinishedHead::Completed(head.item),
        })
    }

    /// Earliest instant at which a backing-off lane becomes eligible again,
    /// so the caller knows how long it may sleep when nothing is ready.
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.backing_off_lanes
            .peek()
            .map(|Reverse((eligible_at, _))| *eligible_at)
    }

    /// Removes a lane with all its messages, in lane order, e.g. when the
    /// session is deleted. If the head was in flight it is included and its
    /// ticket becomes stale ([`SessionLanes::finish`] then returns
    /// [`LaneError::StaleTicket`]), so the caller should treat the returned
    /// items as the ones to complete.
    pub fn remove_lane(&mut self, lane_key: &str) -> Vec<M> {
        let Some(lane) = self.lanes.remove(lane_key) else {
            return Vec::new();
        };
        match lane.state {
            LaneState::Ready => self.ready_lane_keys.retain(|key| &**key != lane_key),
            LaneState::InFlight => self.in_flight_count -= 1,
            LaneState::BackingOff { .. } => self
                .backing_off_lanes
                .retain(|Reverse((_, key))| &**key != lane_key),
        }
        self.pending_item_count -= lane.items.len();
        lane.items
            .into_iter()
            .map(|queued_item| queued_item.item)
            .collect()
    }

    /// Ends the backoff of `lane_key` now, e.g. when its session just came
    /// back on a worker: the head is handed out on the next
    /// [`SessionLanes::next_ready`] instead of after the rest of its delay.
    /// Returns whether the lane was backing off; other lanes are untouched.
    pub fn wake(&mut self, lane_key: &str) -> bool {
        let Some(lane) = self.lanes.get_mut(lane_key) else {
            return false;
        };
        if !matches!(lane.state, LaneState::BackingOff { .. }) {
            return false;
        }
        // The heap entry stays; `promote_expired_backoffs` skips it because
        // the lane no longer backs off until that instant.
        lane.state = LaneState::Ready;
        self.ready_lane_keys.push_back(Arc::from(lane_key));
        true
    }

    /// The in-flight head `ticket` stands for, while it is still handed out: a caller that
    /// learned its outcome but must make that durable before the lane moves on reads it here
    /// and calls [`finish`](Self::finish) later (the lane stays blocked meanwhile).
    pub fn in_flight_head(&self, ticket: &DispatchTicket) -> Option<&M> {
        self.lanes
            .get(&ticket.lane_key)
            .filter(|lane| lane.state == LaneState::InFlight)
            .and_then(|lane| lane.items.front())
            .filter(|head| head.item_sequence == ticket.item_sequence)
            .map(|head| &head.item)
    }

    /// Whether the head of `lane_key` is currently handed out.
    pub fn is_in_flight(&self, lane_key: &str) -> bool {
        self.lanes
            .get(lane_key)
            .is_some_and(|lane| lane.state == LaneState::InFlight)
    }

    /// Messages queued in `lane_key`, including an in-flight head.
    pub fn lane_len(&self, lane_key: &str) -> usize {
        self.lanes.get(lane_key).map_or(0, |lane| lane.items.len())
    }

    /// Total messages held, including in-flight and backing-off heads.
    pub fn len(&self) -> usize {
        self.pending_item_count
    }

    /// Whether no message is held at all.
    pub fn is_empty(&self) -> bool {
        self.pending_item_count == 0
    }

    /// Number of non-empty lanes.
    pub fn lane_count(&self) -> usize {
        self.lanes.len()
    }

    /// Number of lanes whose head is handed out, to cap delivery concurrency.
    pub fn in_flight_count(&self) -> usize {
        self.in_flight_count
    }

    /// Moves lanes whose backoff expired at `now` to the back of the ready
    /// queue, earliest expiry first.
    fn promote_expired_backoffs(&mut self, now: Instant) {
        while let Some(Reverse((eligible_at, _))) = self.backing_off_lanes.peek() {
            if *eligible_at > now {
                break;
            }
            let Some(Reverse((expired_at, lane_key))) = self.backing_off_lanes.pop() else {
                break;
            };
            // An entry is stale when its lane was woken early (and may have
            // backed off again until another instant) or removed.
            if let Some(lane) = self.lanes.get_mut(&lane_key)
                && lane.state
                    == (LaneState::BackingOff {
                        eligible_at: expired_at,
                    })
            {
                lane.state = LaneState::Ready;
                self.ready_lane_keys.push_back(lane_key);
            }
        }
    }
}

/// `now + delay`, clamped to the latest representable instant instead of
/// panicking on absurd delays.
fn instant_saturating_add(now: Instant, delay: Duration) -> Instant {
    if let Some(eligible_at) = now.checked_add(delay) {
        return eligible_at;
    }
    // Binary search for the largest representable offset below `delay`.
    let mut representable = Duration::ZERO;
    let mut step = delay;
    while !step.is_zero() {
        step /= 2;
        if let Some(candidate) = representable.checked_add(step)
            && now.checked_add(candidate).is_some()
        {
            representable = candidate;
        }
    }
    now.checked_add(representable).unwrap_or(now)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn millis(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    /// Dispatches one head and returns `(lane_key, item, ticket)`.
    fn dispatch(lanes: &mut SessionLanes<u32>, now: Instant) -> (String, u32, DispatchTicket) {
        let head = lanes.next_ready(now).unwrap();
        (head.ticket.lane_key().to_owned(), *head.item, head.ticket)
    }

    /// Dispatches and completes heads until nothing is ready, returning the
    /// delivery order.
    fn drain_in_order(lanes: &mut SessionLanes<u32>, now: Instant) -> Vec<(String, u32)> {
        let mut delivered = Vec::new();
        while let Some(head) = lanes.next_ready(now) {
            let lane_key = head.ticket.lane_key().to_owned();
            let item = *head.item;
            let ticket = head.ticket;
            lanes.finish(ticket, LaneOutcome::Done, now).unwrap();
            delivered.push((lane_key, item));
        }
        delivered
    }

    #[test]
    fn one_lane_delivers_in_push_order_one_at_a_time() {
        let now = Instant::now();
        let mut lanes = SessionLanes::new();
        for item in 0..3 {
            lanes.push("session-a", item);
        }
        let (_, first, ticket) = dispatch(&mut lanes, now);
        assert_eq!(first, 0);
        assert!(lanes.is_in_flight("session-a"));
        assert!(lanes.next_ready(now).is_none(), "lane is busy");

        assert_eq!(
            lanes.finish(ticket, LaneOutcome::Done, now).unwrap(),
            FinishedHead::Completed(0)
        );
        let (_, second, ticket) = dispatch(&mut lanes, now);
        assert_eq!(second, 1);
        lanes.finish(ticket, LaneOutcome::Done, now).unwrap();
        let (_, third, ticket) = dispatch(&mut lanes, now);
        assert_eq!(third, 2);
        lanes.finish(ticket, LaneOutcome::Done, now).unwrap();
        assert!(lanes.is_empty());
        assert_eq!(lanes.lane_count(), 0);
    }

    #[test]
    fn lanes_are_dispatched_concurrently() {
        let now = Instant::now();
        let mut lanes = SessionLanes::new();
        lanes.push("a", 1);
        lanes.push("b", 2);
        lanes.push("a", 3);
        let (first_lane, _, _) = dispatch(&mut lanes, now);
        let (second_lane, _, _) = dispatch(&mut lanes, now);
        assert_eq!((first_lane.as_str(), second_lane.as_str()), ("a", "b"));
        assert_eq!(lanes.in_flight_count(), 2);
        assert!(lanes.next_ready(now).is_none());
    }

    #[test]
    fn lanes_take_turns_round_robin() {
        let now = Instant::now();
        let mut lanes = SessionLanes::new();
        for item in 0..3 {
            lanes.push("a", item);
        }
        for item in 10..13 {
            lanes.push("b", item);
        }
        lanes.push("c", 20);
        let order: Vec<String> = drain_in_order(&mut lanes, now)
            .into_iter()
            .map(|(lane_key, _)| lane_key)
            .collect();
        assert_eq!(order, ["a", "b", "c", "a", "b", "a", "b"]);
    }

    #[test]
    fn busy_lane_does_not_starve_others() {
        let now = Instant::now();
        let mut lanes = SessionLanes::new();
        for item in 0..100 {
            lanes.push("chatty", item);
        }
        lanes.push("quiet", 1_000);
        let (_, _, ticket) = dispatch(&mut lanes, now);
        lanes.finish(ticket, LaneOutcome::Done, now).unwrap();
        let (lane_key, item, _) = dispatch(&mut lanes, now);
        assert_eq!((lane_key.as_str(), item), ("quiet", 1_000));
    }

    #[test]
    fn backing_off_lane_does_not_block_other_lanes() {
        let start = Instant::now();
        let mut lanes = SessionLanes::new();
        lanes.push("failing", 1);
        lanes.push("failing", 2);
        lanes.push("healthy", 10);
        lanes.push("healthy", 11);

        let (lane_key, _, ticket) = dispatch(&mut lanes, start);
        assert_eq!(lane_key, "failing");
        let finished = lanes
            .finish(ticket, LaneOutcome::RetryAfter(millis(500)), start)
            .unwrap();
        assert_eq!(
            finished,
            FinishedHead::Rescheduled {
                eligible_at: start + millis(500),
                failed_attempts: 1
            }
        );
        assert_eq!(lanes.next_wakeup(), Some(start + millis(500)));

        let delivered = drain_in_order(&mut lanes, start + millis(100));
        assert_eq!(
            delivered,
            [("healthy".to_owned(), 10), ("healthy".to_owned(), 11)]
        );
        assert!(lanes.next_ready(start + millis(499)).is_none());
        assert_eq!(lanes.len(), 2);
    }

    #[test]
    fn retry_keeps_head_and_order_within_lane() {
        let start = Instant::now();
        let mut lanes = SessionLanes::new();
        lanes.push("a", 1);
        lanes.push("a", 2);

        let (_, item, ticket) = dispatch(&mut lanes, start);
        assert_eq!((item, ticket.failed_attempts()), (1, 0));
        lanes
            .finish(ticket, LaneOutcome::RetryAfter(millis(10)), start)
            .unwrap();
        assert!(lanes.next_ready(start + millis(9)).is_none());

        let (_, item, ticket) = dispatch(&mut lanes, start + millis(10));
        assert_eq!((item, ticket.failed_attempts()), (1, 1));
        lanes
            .finish(
                ticket,
                LaneOutcome::RetryAfter(millis(20)),
                start + millis(10),
            )
            .unwrap();

        let (_, item, ticket) = dispatch(&mut lanes, start + millis(30));
        assert_eq!((item, ticket.failed_attempts()), (1, 2));
        lanes
            .finish(ticket, LaneOutcome::Done, start + millis(30))
            .unwrap();

        let (_, item, ticket) = dispatch(&mut lanes, start + millis(30));
        assert_eq!((item, ticket.failed_attempts()), (2, 0));
        lanes
            .finish(ticket, LaneOutcome::Done, start + millis(30))
            .unwrap();
        assert!(lanes.is_empty());
        assert_eq!(lanes.next_wakeup(), None);
    }

    #[test]
    fn zero_delay_retry_is_immediately_eligible_behind_other_lanes() {
        let now = Instant::now();
        let mut lanes = SessionLanes::new();
        lanes.push("a", 1);
        lanes.push("b", 2);
        let (_, _, ticket) = dispatch(&mut lanes, now);
        lanes
            .finish(ticket, LaneOutcome::RetryAfter(Duration::ZERO), now)
            .unwrap();
        assert_eq!(lanes.next_wakeup(), None);
        let delivered = drain_in_order(&mut lanes, now);
        assert_eq!(delivered, [("b".to_owned(), 2), ("a".to_owned(), 1)]);
    }

    #[test]
    fn next_wakeup_reports_earliest_backoff() {
        let start = Instant::now();
        let mut lanes = SessionLanes::new();
        for lane_key in ["a", "b", "c"] {
            lanes.push(lane_key, 0);
        }
        let delays = [millis(300), millis(100), millis(200)];
        for delay in delays {
            let (_, _, ticket) = dispatch(&mut lanes, start);
            lanes
                .finish(ticket, LaneOutcome::RetryAfter(delay), start)
                .unwrap();
        }
        assert_eq!(lanes.next_wakeup(), Some(start + millis(100)));
        assert!(lanes.next_ready(start + millis(50)).is_none());

        let (lane_key, _, _) = dispatch(&mut lanes, start + millis(150));
        assert_eq!(lane_key, "b");
        assert_eq!(lanes.next_wakeup(), Some(start + millis(200)));
    }

    #[test]
    fn wake_ends_a_backoff_early_and_only_that_one() {
        let start = Instant::now();
        let mut lanes = SessionLanes::new();
        for lane_key in ["a", "b"] {
            lanes.push(lane_key, 0);
            lanes.push(lane_key, 1);
        }
        for _ in 0..2 {
            let (_, _, ticket) = dispatch(&mut lanes, start);
            lanes
                .finish(ticket, LaneOutcome::RetryAfter(millis(10_000)), start)
                .unwrap();
        }
        assert!(lanes.wake("a"));
        assert!(!lanes.wake("a"), "a ready lane has nothing to wake");
        assert!(!lanes.wake("missing"));
        let (lane_key, item, ticket) = dispatch(&mut lanes, start + millis(1));
        assert_eq!((lane_key.as_str(), item), ("a", 0));
        assert_eq!(ticket.failed_attempts(), 1);
        assert!(!lanes.wake("a"), "an in-flight head is not woken twice");
        assert!(
            lanes.next_ready(start + millis(1)).is_none(),
            "b still backs off"
        );
        lanes.finish(ticket, LaneOutcome::Done, start).unwrap();
        assert_eq!(
            drain_in_order(&mut lanes, start + millis(2)),
            [("a".to_owned(), 1)]
        );
    }

    #[test]
    fn a_woken_lane_is_not_promoted_again_by_its_stale_backoff() {
        let start = Instant::now();
        let mut lanes = SessionLanes::new();
        lanes.push("a", 0);
        lanes.push("a", 1);
        let (_, _, ticket) = dispatch(&mut lanes, start);
        lanes
            .finish(ticket, LaneOutcome::RetryAfter(millis(100)), start)
            .unwrap();
        lanes.wake("a");
        // In flight when the original backoff would have ended: it must stay in flight.
        let (_, _, ticket) = dispatch(&mut lanes, start + millis(1));
        assert!(lanes.next_ready(start + millis(200)).is_none());
        assert!(lanes.is_in_flight("a"));
        // Backing off again until later: the old instant does not release it.
        lanes
            .finish(
                ticket,
                LaneOutcome::RetryAfter(millis(500)),
                start + millis(200),
            )
            .unwrap();
        assert!(lanes.next_ready(start + millis(300)).is_none());
        let (_, item, _) = dispatch(&mut lanes, start + millis(700));
        assert_eq!(item, 0);
    }

    #[test]
    fn expired_backoffs_become_ready_in_expiry_order() {
        let start = Instant::now();
        let mut lanes = SessionLanes::new();
        for lane_key in ["a", "b", "c"] {
            lanes.push(lane_key, 0);
        }
        for delay in [millis(30), millis(10), millis(20)] {
            let (_, _, ticket) = dispatch(&mut lanes, start);
            lanes
                .finish(ticket, LaneOutcome::RetryAfter(delay), start)
                .unwrap();
        }
        let order: Vec<String> = drain_in_order(&mut lanes, start + millis(30))
            .into_iter()
            .map(|(lane_key, _)| lane_key)
            .collect();
        assert_eq!(order, ["b", "c", "a"]);
    }

    #[test]
    fn dead_letter_pops_head_and_returns_reason() {
        let now = Instant::now();
        let mut lanes = SessionLanes::new();
        lanes.push("a", 1);
        lanes.push("a", 2);
        let (_, _, ticket) = dispatch(&mut lanes, now);
        let finished = lanes
            .finish(
                ticket,
                LaneOutcome::DeadLetter {
                    reason: "recipient not on WhatsApp".to_owned(),
                },
                now,
            )
            .unwrap();
        assert_eq!(
            finished,
            FinishedHead::DeadLettered {
                item: 1,
                reason: "recipient not on WhatsApp".to_owned()
            }
        );
        let (_, item, _) = dispatch(&mut lanes, now);
        assert_eq!(item, 2);
    }

    #[test]
    fn finishing_twice_is_rejected() {
        let now = Instant::now();
        let mut lanes = SessionLanes::new();
        lanes.push("a", 1);
        lanes.push("a", 2);
        let (_, _, ticket) = dispatch(&mut lanes, now);
        lanes
            .finish(ticket.clone(), LaneOutcome::Done, now)
            .unwrap();
        assert_eq!(
            lanes.finish(ticket.clone(), LaneOutcome::Done, now),
            Err(LaneError::StaleTicket {
                lane_key: "a".to_owned(),
                item_sequence: ticket.item_sequence()
            })
        );
        assert_eq!(lanes.len(), 1);
        assert_eq!(lanes.in_flight_count(), 0);
    }

    #[test]
    fn an_answered_head_blocks_its_lane_until_finished() {
        let now = Instant::now();
        let mut lanes = SessionLanes::new();
        lanes.push("s1", 1);
        lanes.push("s1", 2);
        lanes.push("s2", 3);
        let (_, item, ticket) = dispatch(&mut lanes, now);
        assert_eq!(item, 1);
        // The answer is in, its outcome not yet durable: the head is still readable and the
        // lane's next message does not go out; other lanes do.
        assert_eq!(lanes.in_flight_head(&ticket), Some(&1));
        let (lane, item, other) = dispatch(&mut lanes, now);
        assert_eq!((lane.as_str(), item), ("s2", 3));
        assert!(lanes.next_ready(now).is_none());
        // A ticket of another lane, or of a removed lane, reads nothing.
        lanes.finish(other.clone(), LaneOutcome::Done, now).unwrap();
        assert_eq!(lanes.in_flight_head(&other), None);
        lanes
            .finish(ticket.clone(), LaneOutcome::Done, now)
            .unwrap();
        assert_eq!(lanes.in_flight_head(&ticket), None);
        let (_, item, _) = dispatch(&mut lanes, now);
        assert_eq!(item, 2);
    }

    #[test]
    fn finishing_a_retrying_head_again_is_rejected() {
        let now = Instant::now();
        let mut lanes = SessionLanes::new();
        lanes.push("a", 1);
        let (_, _, ticket) = dispatch(&mut lanes, now);
        lanes
            .finish(ticket.clone(), LaneOutcome::RetryAfter(millis(5)), now)
            .unwrap();
        assert!(matches!(
            lanes.finish(ticket, LaneOutcome::Done, now),
            Err(LaneError::StaleTicket { .. })
        ));
        assert_eq!(lanes.len(), 1);
    }

    #[test]
    fn remove_lane_returns_items_and_invalidates_ticket() {
        let now = Instant::now();
        let mut lanes = SessionLanes::new();
        lanes.push("a", 1);
        lanes.push("a", 2);
        lanes.push("b", 3);
        let (_, _, stale_ticket) = dispatch(&mut lanes, now);
        assert_eq!(lanes.remove_lane("a"), vec![1, 2]);
        assert_eq!(lanes.in_flight_count(), 0);
        assert_eq!(lanes.len(), 1);
        assert_eq!(lanes.lane_count(), 1);

        // A new lane under the same key must not be popped by the old ticket.
        lanes.push("a", 4);
        let (lane_key, item, _) = dispatch(&mut lanes, now);
        assert_eq!((lane_key.as_str(), item), ("b", 3));
        let (lane_key, item, _) = dispatch(&mut lanes, now);
        assert_eq!((lane_key.as_str(), item), ("a", 4));
        assert!(matches!(
            lanes.finish(stale_ticket, LaneOutcome::Done, now),
            Err(LaneError::StaleTicket { .. })
        ));
        assert_eq!(lanes.lane_len("a"), 1);
    }

    #[test]
    fn remove_lane_clears_ready_and_backoff_bookkeeping() {
        let start = Instant::now();
        let mut lanes = SessionLanes::new();
        lanes.push("waiting", 1);
        lanes.push("retrying", 2);
        lanes.push("retrying", 3);
        // Dispatch "waiting" first, put it back, then "retrying" into backoff.
        let (_, _, waiting_ticket) = dispatch(&mut lanes, start);
        let (_, _, retrying_ticket) = dispatch(&mut lanes, start);
        lanes
            .finish(retrying_ticket, LaneOutcome::RetryAfter(millis(50)), start)
            .unwrap();
        lanes
            .finish(
                waiting_ticket,
                LaneOutcome::RetryAfter(Duration::ZERO),
                start,
            )
            .unwrap();

        assert_eq!(lanes.remove_lane("retrying"), vec![2, 3]);
        assert_eq!(lanes.next_wakeup(), None);
        assert_eq!(lanes.remove_lane("waiting"), vec![1]);
        assert!(lanes.next_ready(start + millis(100)).is_none());
        assert!(lanes.is_empty());
        assert_eq!(lanes.lane_count(), 0);
        assert!(lanes.remove_lane("missing").is_empty());
    }

    #[test]
    fn recreated_lane_is_not_duplicated_in_ready_queue() {
        let now = Instant::now();
        let mut lanes = SessionLanes::new();
        lanes.push("a", 1);
        lanes.remove_lane("a");
        lanes.push("a", 2);
        lanes.push("a", 3);
        let (_, item, _) = dispatch(&mut lanes, now);
        assert_eq!(item, 2);
        assert!(lanes.next_ready(now).is_none());
    }

    #[test]
    fn push_during_flight_and_backoff_appends_to_lane() {
        let start = Instant::now();
        let mut lanes = SessionLanes::new();
        lanes.push("a", 1);
        let (_, _, ticket) = dispatch(&mut lanes, start);
        lanes.push("a", 2);
        lanes
            .finish(ticket, LaneOutcome::RetryAfter(millis(5)), start)
            .unwrap();
        lanes.push("a", 3);
        assert_eq!(lanes.lane_len("a"), 3);
        assert_eq!(lanes.lane_count(), 1);
        let delivered = drain_in_order(&mut lanes, start + millis(5));
        assert_eq!(
            delivered,
            [
                ("a".to_owned(), 1),
                ("a".to_owned(), 2),
                ("a".to_owned(), 3)
            ]
        );
    }

    #[test]
    fn counters_track_pending_work() {
        let now = Instant::now();
        let mut lanes = SessionLanes::new();
        assert!(lanes.is_empty());
        lanes.push("a", 1);
        lanes.push("b", 2);
        lanes.push("b", 3);
        assert_eq!((lanes.len(), lanes.lane_count()), (3, 2));
        let (_, _, ticket) = dispatch(&mut lanes, now);
        assert_eq!(lanes.in_flight_count(), 1);
        lanes.finish(ticket, LaneOutcome::Done, now).unwrap();
        assert_eq!((lanes.len(), lanes.lane_count()), (2, 1));
        assert_eq!(lanes.lane_len("a"), 0);
        assert_eq!(lanes.lane_len("b"), 2);
    }

    #[test]
    fn huge_retry_delay_saturates_instead_of_panicking() {
        let now = Instant::now();
        let mut lanes = SessionLanes::new();
        lanes.push("a", 1);
        let (_, _, ticket) = dispatch(&mut lanes, now);
        let finished = lanes
            .finish(ticket, LaneOutcome::RetryAfter(Duration::MAX), now)
            .unwrap();
        let FinishedHead::Rescheduled { eligible_at, .. } = finished else {
            panic!("expected a rescheduled head, got {finished:?}");
        };
        assert!(eligible_at > now);
        assert!(
            lanes
                .next_ready(now + Duration::from_secs(86_400))
                .is_none()
        );
    }

    #[test]
    fn many_lanes_all_delivered_exactly_once_in_lane_order() {
        let start = Instant::now();
        let mut lanes = SessionLanes::new();
        for item in 0..1_000u32 {
            lanes.push(&format!("session-{}", item % 7), item);
        }
        let mut now = start;
        let mut delivered: Vec<(String, u32)> = Vec::new();
        let mut retry_count = 0u32;
        // Bounded so a scheduling bug fails the test instead of hanging it.
        for _ in 0..10_000 {
            if lanes.is_empty() {
                break;
            }
            let mut tickets = Vec::new();
            while let Some(head) = lanes.next_ready(now) {
                tickets.push((head.ticket, *head.item));
            }
            for (ticket, item) in tickets {
                let outcome = if item.is_multiple_of(3) && ticket.failed_attempts() < 2 {
                    retry_count += 1;
                    LaneOutcome::RetryAfter(millis(u64::from(item % 4)))
                } else {
                    LaneOutcome::Done
                };
                let lane_key = ticket.lane_key().to_owned();
                if let FinishedHead::Completed(item) = lanes.finish(ticket, outcome, now).unwrap() {
                    delivered.push((lane_key, item));
                }
            }
            now += millis(1);
        }
        assert!(lanes.is_empty());
        assert_eq!(retry_count, 2 * 334);
        assert_eq!(delivered.len(), 1_000);
        for lane_index in 0..7 {
            let lane_key = format!("session-{lane_index}");
            let lane_items: Vec<u32> = delivered
                .iter()
                .filter(|(key, _)| *key == lane_key)
                .map(|(_, item)| *item)
                .collect();
            let mut sorted = lane_items.clone();
            sorted.sort_unstable();
            assert_eq!(lane_items, sorted, "lane {lane_key} out of order");
        }
    }
}
