//! Consumer side of the send pipeline: the pure, runtime-independent core of
//! the worker-bound delivery consumer.
//!
//! Send requests are read from a partitioned log with **at-least-once**
//! semantics: a record's offset is committed only after the record has been
//! fully handled (delivered to its Baileys worker, or dead-lettered), so a
//! crash re-delivers rather than loses messages.
//!
//! Two pieces make that work without head-of-line blocking:
//!
//! * [`SessionLanes`] gives every session its own FIFO lane. Messages of one
//!   session are delivered strictly in log order, one at a time, while
//!   sessions never block each other, even when they share a partition: a
//!   session that is backing off after a failure ([`LaneOutcome::RetryAfter`],
//!   delays from [`Backoff`]) only delays itself. Idle lanes are served
//!   round-robin.
//! * [`ConsumerOffsets`] (one [`PartitionOffsets`] per topic/partition)
//!   accepts completions in any order and only ever commits up to the lowest
//!   contiguous fully-handled offset of each partition, tolerating offset
//!   gaps left by compaction or transactions.
//!
//! Lanes, offsets and backoff never read the clock, sleep or do I/O: the async
//! consume loop passes `now` in and performs the worker calls itself, which
//! keeps them deterministic and cheap to test. [`source`] is the one I/O part:
//! the reader of the log ([`LogSource`]), over the embedded log or Kafka.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use consumers::{ConsumerOffsets, FinishedHead, LaneOutcome, SessionLanes};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut offsets = ConsumerOffsets::new();
//! let mut lanes: SessionLanes<(i32, i64, &str)> = SessionLanes::new();
//! let now = Instant::now();
//!
//! // Poll loop: register every record, then queue it on its session lane.
//! for (offset, session, text) in [(0, "s1", "hi"), (1, "s2", "yo"), (2, "s1", "bye")] {
//!     offsets.track("sends", 0, offset)?;
//!     lanes.push(session, (0, offset, text));
//! }
//!
//! // Dispatch: s1 and s2 are delivered concurrently, s1's second message waits.
//! let mut tickets = Vec::new();
//! while let Some(head) = lanes.next_ready(now) {
//!     tickets.push(head.ticket);
//! }
//! assert_eq!(tickets.len(), 2);
//!
//! // s2 succeeds first; s1 fails transiently and backs off.
//! let s1_ticket = tickets.remove(0);
//! let s2_ticket = tickets.remove(0);
//! if let FinishedHead::Completed((partition, offset, _)) =
//!     lanes.finish(s2_ticket, LaneOutcome::Done, now)?
//! {
//!     offsets.complete("sends", partition, offset)?;
//! }
//! lanes.finish(s1_ticket, LaneOutcome::RetryAfter(Duration::from_secs(1)), now)?;
//!
//! // Offset 1 is handled but offset 0 is not, so nothing is committable yet.
//! assert!(offsets.drain_committable().is_empty());
//! assert_eq!(lanes.next_wakeup(), Some(now + Duration::from_secs(1)));
//! # Ok(())
//! # }
//! ```

mod backoff;
pub mod kafka;
mod lanes;
mod offsets;
pub mod source;

pub use backoff::{Backoff, BackoffJitter};
pub use kafka::KafkaSource;
pub use lanes::{
    DispatchTicket, DispatchedHead, FinishedHead, LaneError, LaneOutcome, SessionLanes,
};
pub use offsets::{ConsumerOffsets, OffsetError, PartitionOffsets};
pub use source::{EmbeddedSource, LogSource, SourceError, SourceEvent, SourceRecord};
