//! Commit-position bookkeeping for at-least-once consumption.
//!
//! Records are handed out in offset order but finish in any order, because
//! every session lane runs independently. A partition may only be committed up
//! to the lowest offset that is *not* yet handled: committing past it would
//! lose that record if the process crashed before finishing it.
//! [`PartitionOffsets`] tracks that prefix for one partition and
//! [`ConsumerOffsets`] does it for every assigned (topic, partition).
//!
//! Offsets handed out need not be contiguous (log compaction and transaction
//! markers leave gaps), so only offsets that were actually tracked count.

use std::collections::{BTreeMap, VecDeque};

use thiserror::Error;

/// Misuse of the offset bookkeeping. Every variant is a caller bug or a
/// stale/duplicate event; none of them corrupts the tracked state.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OffsetError {
    /// Offsets must be handed out in strictly increasing order per partition.
    #[error("offset {offset} is not greater than the previously tracked offset {previous_offset}")]
    NotIncreasing {
        /// The rejected offset.
        offset: i64,
        /// The last offset that was accepted by `track`.
        previous_offset: i64,
    },
    /// The offset lies below a position that was already committed, so
    /// tracking it again could never move the commit position.
    #[error("offset {offset} is below the committed position {committed_position}")]
    BelowCommittedPosition {
        /// The rejected offset.
        offset: i64,
        /// The commit position recorded by `mark_committed`.
        committed_position: i64,
    },
    /// Kafka offsets are non-negative, and `i64::MAX` would leave no room for
    /// the "next offset" commit position.
    #[error("offset {offset} is outside the valid range 0..i64::MAX")]
    OutOfRange {
        /// The rejected offset.
        offset: i64,
    },
    /// The offset is tracked and was already completed once.
    #[error("offset {offset} was already completed")]
    AlreadyCompleted {
        /// The offset that was completed twice.
        offset: i64,
    },
    /// The offset is not in flight: it was never tracked, or it was completed
    /// and has since been released from the bookkeeping.
    #[error("offset {offset} is not in flight (never tracked, or already completed and released)")]
    NotInFlight {
        /// The unknown offset.
        offset: i64,
    },
    /// A completion arrived for a (topic, partition) that is not tracked,
    /// typically because the partition was revoked in the meantime.
    #[error("partition {topic}/{partition} is not tracked")]
    UnknownPartition {
        /// Topic of the unknown partition.
        topic: String,
        /// Partition number of the unknown partition.
        partition: i32,
    },
}

/// One handed-out offset and whether its record has been fully handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TrackedOffset {
    offset: i64,
    handled: bool,
}

/// Commit-position tracker for a single partition.
///
/// Exists so that out-of-order completion (sessions finish independently)
/// never commits an offset whose record is still being worked on.
///
/// Cost per operation: `track` is O(1), `complete` is O(log n) for the lookup
/// plus amortized O(1) for releasing the handled prefix, `committable` is
/// O(1). Memory is bounded by the distance between the oldest unhandled
/// offset and the newest tracked one.
#[derive(Debug, Clone, Default)]
pub struct PartitionOffsets {
    /// Tracked offsets in strictly increasing order. The front entry is
    /// always unhandled (handled entries at the front are released
    /// immediately), so the front is the offset that blocks the commit.
    in_flight: VecDeque<TrackedOffset>,
    /// Last offset accepted by `track`, to enforce increasing order.
    last_tracked_offset: Option<i64>,
    /// Highest offset H such that every tracked offset <= H is handled.
    handled_through_offset: Option<i64>,
    /// Last position recorded by `mark_committed`.
    committed_position: Option<i64>,
}

impl PartitionOffsets {
    /// Creates an empty tracker; use one per partition assignment.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `offset` as handed out and not yet handled.
    ///
    /// Offsets must be strictly increasing; gaps are allowed.
    pub fn track(&mut self, offset: i64) -> Result<(), OffsetError> {
        if !(0..i64::MAX).contains(&offset) {
            return Err(OffsetError::OutOfRange { offset });
        }
        if let Some(previous_offset) = self.last_tracked_offset
            && offset <= previous_offset
        {
            return Err(OffsetError::NotIncreasing {
                offset,
                previous_offset,
            });
        }
        if let Some(committed_position) = self.committed_position
            && offset < committed_position
        {
            return Err(OffsetError::BelowCommittedPosition {
                offset,
                committed_position,
            });
        }
        self.in_flight.push_back(TrackedOffset {
            offset,
            handled: false,
        });
        self.last_tracked_offset = Some(offset);
        Ok(())
    }

    /// Marks a tracked `offset` as fully handled (delivered, dead-lettered or
    /// deliberately dropped). Completion order is arbitrary.
    pub fn complete(&mut self, offset: i64) -> Result<(), OffsetError> {
        let index = self
            .in_flight
            .binary_search_by_key(&offset, |tracked| tracked.offset)
            .map_err(|_| OffsetError::NotInFlight { offset })?;
        let Some(tracked) = self.in_flight.get_mut(index) else {
            return Err(OffsetError::NotInFlight { offset });
        };
        if tracked.handled {
            return Err(OffsetError::AlreadyCompleted { offset });
        }
        tracked.handled = true;
        if index == 0 {
            self.release_handled_prefix();
        }
        Ok(())
    }

    /// Returns the Kafka-style commit position (the next offset to consume)
    /// if it has advanced past the last position given to `mark_committed`.
    ///
    /// The position is `H + 1` where `H` is the highest offset such that
    /// every tracked offset `<= H` is handled; `None` when nothing new is
    /// committable.
    pub fn committable(&self) -> Option<i64> {
        let position = self.handled_position()?;
        match self.committed_position {
            Some(committed_position) if position <= committed_position => None,
            _ => Some(position),
        }
    }

    /// Returns the current commit position regardless of what was already
    /// committed, for a final synchronous commit on revocation or shutdown.
    pub fn handled_position(&self) -> Option<i64> {
        // `track` rejects i64::MAX, so this addition cannot overflow.
        self.handled_through_offset.map(|offset| offset + 1)
    }

    /// Records that the commit position `next_offset` was committed and drops
    /// all bookkeeping below it.
    ///
    /// Positions only move forward: a position at or below the recorded one
    /// is ignored. Tracked offsets below `next_offset` are forgotten even if
    /// unhandled (the caller asserts they are committed, e.g. after a seek);
    /// completing them later yields [`OffsetError::NotInFlight`].
    pub fn mark_committed(&mut self, next_offset: i64) {
        if self
            .committed_position
            .is_some_and(|committed_position| next_offset <= committed_position)
        {
            return;
        }
        self.committed_position = Some(next_offset);
        while self
            .in_flight
            .front()
            .is_some_and(|tracked| tracked.offset < next_offset)
        {
            self.in_flight.pop_front();
        }
        let covered_through_offset = next_offset.saturating_sub(1);
        if self
            .handled_through_offset
            .is_none_or(|handled| handled < covered_through_offset)
        {
            self.handled_through_offset = Some(covered_through_offset);
        }
        self.release_handled_prefix();
    }

    /// Lowest tracked offset that is not handled yet: the record currently
    /// holding back the commit position. Useful to diagnose stuck sessions.
    pub fn oldest_unhandled_offset(&self) -> Option<i64> {
        self.in_flight.front().map(|tracked| tracked.offset)
    }

    /// Number of tracked offsets still held in memory (unhandled ones plus
    /// handled ones waiting behind a lower unhandled offset).
    pub fn tracked_len(&self) -> usize {
        self.in_flight.len()
    }

    /// Pops handled entries off the front and advances the handled prefix.
    fn release_handled_prefix(&mut self) {
        while let Some(front) = self.in_flight.front().copied() {
            if !front.handled {
                break;
            }
            self.in_flight.pop_front();
            self.handled_through_offset = Some(front.offset);
        }
    }
}

/// Commit-position trackers for every (topic, partition) this consumer owns.
///
/// Exists so the consume loop has one place to register records, report
/// completions from any lane, and periodically collect the commits to send.
/// Lookups take `&str` topics, so the hot path never allocates.
#[derive(Debug, Clone, Default)]
pub struct ConsumerOffsets {
    partitions_by_topic: BTreeMap<String, BTreeMap<i32, PartitionOffsets>>,
}

impl ConsumerOffsets {
    /// Creates an empty set of trackers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a handed-out offset, creating the partition tracker on
    /// first use. See [`PartitionOffsets::track`].
    pub fn track(&mut self, topic: &str, partition: i32, offset: i64) -> Result<(), OffsetError> {
        let partitions = match self.partitions_by_topic.get_mut(topic) {
            Some(partitions) => partitions,
            None => self
                .partitions_by_topic
                .entry(topic.to_owned())
                .or_default(),
        };
        partitions.entry(partition).or_default().track(offset)
    }

    /// Marks an offset as fully handled. See [`PartitionOffsets::complete`].
    pub fn complete(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<(), OffsetError> {
        self.partitions_by_topic
            .get_mut(topic)
            .and_then(|partitions| partitions.get_mut(&partition))
            .ok_or_else(|| OffsetError::UnknownPartition {
                topic: topic.to_owned(),
                partition,
            })?
            .complete(offset)
    }

    /// Returns `(topic, partition, next_offset)` for every partition whose
    /// commit position advanced since the previous drain, and records those
    /// positions as committed.
    ///
    /// Kafka commits are cumulative, so if sending them fails the next
    /// successful drain supersedes them; use [`Self::handled_positions`] for
    /// a final commit that must not be skipped.
    pub fn drain_committable(&mut self) -> Vec<(String, i32, i64)> {
        let mut advanced_positions = Vec::new();
        for (topic, partitions) in &mut self.partitions_by_topic {
            for (&partition, offsets) in partitions.iter_mut() {
                if let Some(next_offset) = offsets.committable() {
                    offsets.mark_committed(next_offset);
                    advanced_positions.push((topic.clone(), partition, next_offset));
                }
            }
        }
        advanced_positions
    }

    /// Returns the current commit position of every partition that has any
    /// handled prefix, whether or not it was drained before. Meant for the
    /// synchronous commit on partition revocation or shutdown.
    pub fn handled_positions(&self) -> Vec<(String, i32, i64)> {
        self.partitions_by_topic
            .iter()
            .flat_map(|(topic, partitions)| {
                partitions.iter().filter_map(|(&partition, offsets)| {
                    offsets
                        .handled_position()
                        .map(|next_offset| (topic.clone(), partition, next_offset))
                })
            })
            .collect()
    }

    /// Read access to one partition's tracker, for metrics and diagnostics.
    pub fn partition(&self, topic: &str, partition: i32) -> Option<&PartitionOffsets> {
        self.partitions_by_topic
            .get(topic)
            .and_then(|partitions| partitions.get(&partition))
    }

    /// Forgets a partition, e.g. when it is revoked in a rebalance; later
    /// completions for it yield [`OffsetError::UnknownPartition`]. Returns the
    /// tracker so the caller can still commit its final position.
    pub fn remove_partition(&mut self, topic: &str, partition: i32) -> Option<PartitionOffsets> {
        let partitions = self.partitions_by_topic.get_mut(topic)?;
        let removed = partitions.remove(&partition);
        if partitions.is_empty() {
            self.partitions_by_topic.remove(topic);
        }
        removed
    }

    /// Number of partitions currently tracked.
    pub fn partition_count(&self) -> usize {
        self.partitions_by_topic.values().map(BTreeMap::len).sum()
    }

    /// Total tracked offsets held in memory across all partitions; a growing
    /// value means some record is stuck and holding back commits.
    pub fn tracked_len(&self) -> usize {
        self.partitions_by_topic
            .values()
            .flat_map(BTreeMap::values)
            .map(PartitionOffsets::tracked_len)
            .sum()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tracked(offsets: &[i64]) -> PartitionOffsets {
        let mut partition_offsets = PartitionOffsets::new();
        for &offset in offsets {
            partition_offsets.track(offset).unwrap();
        }
        partition_offsets
    }

    #[test]
    fn nothing_is_committable_before_any_completion() {
        let partition_offsets = tracked(&[0, 1, 2]);
        assert_eq!(partition_offsets.committable(), None);
        assert_eq!(partition_offsets.handled_position(), None);
        assert_eq!(partition_offsets.oldest_unhandled_offset(), Some(0));
        assert_eq!(PartitionOffsets::new().committable(), None);
    }

    #[test]
    fn in_order_completion_commits_next_offset() {
        let mut partition_offsets = tracked(&[10, 11, 12]);
        partition_offsets.complete(10).unwrap();
        assert_eq!(partition_offsets.committable(), Some(11));
        partition_offsets.complete(11).unwrap();
        partition_offsets.complete(12).unwrap();
        assert_eq!(partition_offsets.committable(), Some(13));
        assert_eq!(partition_offsets.tracked_len(), 0);
        assert_eq!(partition_offsets.oldest_unhandled_offset(), None);
    }

    #[test]
    fn out_of_order_completion_commits_only_contiguous_prefix() {
        let mut partition_offsets = tracked(&[0, 1, 2, 3, 4]);
        partition_offsets.complete(3).unwrap();
        partition_offsets.complete(1).unwrap();
        assert_eq!(partition_offsets.committable(), None);
        assert_eq!(partition_offsets.tracked_len(), 5);

        partition_offsets.complete(0).unwrap();
        assert_eq!(partition_offsets.committable(), Some(2));
        assert_eq!(partition_offsets.oldest_unhandled_offset(), Some(2));

        partition_offsets.complete(2).unwrap();
        assert_eq!(partition_offsets.committable(), Some(4));
        assert_eq!(partition_offsets.oldest_unhandled_offset(), Some(4));

        partition_offsets.complete(4).unwrap();
        assert_eq!(partition_offsets.committable(), Some(5));
        assert_eq!(partition_offsets.tracked_len(), 0);
    }

    #[test]
    fn gaps_between_tracked_offsets_do_not_block_commits() {
        let mut partition_offsets = tracked(&[3, 7, 8, 20]);
        partition_offsets.complete(7).unwrap();
        assert_eq!(partition_offsets.committable(), None);
        partition_offsets.complete(3).unwrap();
        assert_eq!(partition_offsets.committable(), Some(8));
        partition_offsets.complete(20).unwrap();
        assert_eq!(partition_offsets.committable(), Some(8));
        partition_offsets.complete(8).unwrap();
        assert_eq!(partition_offsets.committable(), Some(21));
    }

    #[test]
    fn gap_offsets_that_were_never_tracked_cannot_be_completed() {
        let mut partition_offsets = tracked(&[3, 7]);
        assert_eq!(
            partition_offsets.complete(5),
            Err(OffsetError::NotInFlight { offset: 5 })
        );
        assert_eq!(
            partition_offsets.complete(100),
            Err(OffsetError::NotInFlight { offset: 100 })
        );
    }

    #[test]
    fn track_rejects_non_increasing_offsets() {
        let mut partition_offsets = tracked(&[5]);
        assert_eq!(
            partition_offsets.track(5),
            Err(OffsetError::NotIncreasing {
                offset: 5,
                previous_offset: 5
            })
        );
        assert_eq!(
            partition_offsets.track(2),
            Err(OffsetError::NotIncreasing {
                offset: 2,
                previous_offset: 5
            })
        );
        // Rejection after release of the prefix still uses the last tracked offset.
        partition_offsets.complete(5).unwrap();
        assert!(matches!(
            partition_offsets.track(4),
            Err(OffsetError::NotIncreasing { .. })
        ));
        partition_offsets.track(6).unwrap();
    }

    #[test]
    fn track_rejects_out_of_range_offsets() {
        let mut partition_offsets = PartitionOffsets::new();
        assert_eq!(
            partition_offsets.track(-1),
            Err(OffsetError::OutOfRange { offset: -1 })
        );
        assert_eq!(
            partition_offsets.track(i64::MAX),
            Err(OffsetError::OutOfRange { offset: i64::MAX })
        );
        partition_offsets.track(i64::MAX - 1).unwrap();
        partition_offsets.complete(i64::MAX - 1).unwrap();
        assert_eq!(partition_offsets.committable(), Some(i64::MAX));
    }

    #[test]
    fn complete_rejects_double_completion() {
        let mut partition_offsets = tracked(&[0, 1]);
        partition_offsets.complete(1).unwrap();
        assert_eq!(
            partition_offsets.complete(1),
            Err(OffsetError::AlreadyCompleted { offset: 1 })
        );
        partition_offsets.complete(0).unwrap();
        // Both are released now; a further completion is not in flight.
        assert_eq!(
            partition_offsets.complete(0),
            Err(OffsetError::NotInFlight { offset: 0 })
        );
    }

    #[test]
    fn failed_operations_leave_state_unchanged() {
        let mut partition_offsets = tracked(&[0, 1, 2]);
        partition_offsets.complete(0).unwrap();
        let _ = partition_offsets.track(1);
        let _ = partition_offsets.complete(7);
        let _ = partition_offsets.complete(0);
        assert_eq!(partition_offsets.committable(), Some(1));
        assert_eq!(partition_offsets.tracked_len(), 2);
        partition_offsets.complete(1).unwrap();
        partition_offsets.complete(2).unwrap();
        assert_eq!(partition_offsets.committable(), Some(3));
    }

    #[test]
    fn mark_committed_suppresses_repeat_until_progress() {
        let mut partition_offsets = tracked(&[0, 1, 2]);
        partition_offsets.complete(0).unwrap();
        assert_eq!(partition_offsets.committable(), Some(1));
        partition_offsets.mark_committed(1);
        assert_eq!(partition_offsets.committable(), None);
        assert_eq!(partition_offsets.handled_position(), Some(1));

        partition_offsets.complete(2).unwrap();
        assert_eq!(partition_offsets.committable(), None);
        partition_offsets.complete(1).unwrap();
        assert_eq!(partition_offsets.committable(), Some(3));
    }

    #[test]
    fn mark_committed_never_moves_backwards() {
        let mut partition_offsets = tracked(&[0, 1]);
        partition_offsets.complete(0).unwrap();
        partition_offsets.complete(1).unwrap();
        partition_offsets.mark_committed(2);
        partition_offsets.mark_committed(1);
        assert_eq!(partition_offsets.committable(), None);
        assert_eq!(
            partition_offsets.track(1),
            Err(OffsetError::NotIncreasing {
                offset: 1,
                previous_offset: 1
            })
        );
    }

    #[test]
    fn mark_committed_ahead_drops_bookkeeping_below_it() {
        let mut partition_offsets = tracked(&[0, 1, 2, 5, 6]);
        partition_offsets.complete(6).unwrap();
        partition_offsets.mark_committed(5);
        assert_eq!(partition_offsets.tracked_len(), 2);
        assert_eq!(partition_offsets.oldest_unhandled_offset(), Some(5));
        assert_eq!(partition_offsets.committable(), None);
        assert_eq!(
            partition_offsets.complete(1),
            Err(OffsetError::NotInFlight { offset: 1 })
        );
        partition_offsets.complete(5).unwrap();
        assert_eq!(partition_offsets.committable(), Some(7));
    }

    #[test]
    fn mark_committed_past_everything_releases_handled_tail() {
        let mut partition_offsets = tracked(&[0, 1, 2]);
        partition_offsets.complete(2).unwrap();
        partition_offsets.mark_committed(2);
        // Offset 2 was already handled, so the position moves on to 3.
        assert_eq!(partition_offsets.tracked_len(), 0);
        assert_eq!(partition_offsets.committable(), Some(3));
    }

    #[test]
    fn track_rejects_offsets_below_committed_position() {
        let mut partition_offsets = PartitionOffsets::new();
        partition_offsets.mark_committed(100);
        assert_eq!(
            partition_offsets.track(99),
            Err(OffsetError::BelowCommittedPosition {
                offset: 99,
                committed_position: 100
            })
        );
        partition_offsets.track(100).unwrap();
        partition_offsets.complete(100).unwrap();
        assert_eq!(partition_offsets.committable(), Some(101));
    }

    #[test]
    fn large_out_of_order_batch_commits_once_lowest_completes() {
        let mut partition_offsets = PartitionOffsets::new();
        for offset in 0..10_000 {
            partition_offsets.track(offset * 2).unwrap();
        }
        for offset in (1..10_000).rev() {
            partition_offsets.complete(offset * 2).unwrap();
        }
        assert_eq!(partition_offsets.committable(), None);
        partition_offsets.complete(0).unwrap();
        assert_eq!(partition_offsets.committable(), Some(19_999));
        assert_eq!(partition_offsets.tracked_len(), 0);
    }

    #[test]
    fn consumer_offsets_keeps_partitions_independent() {
        let mut consumer_offsets = ConsumerOffsets::new();
        consumer_offsets.track("sends", 0, 0).unwrap();
        consumer_offsets.track("sends", 0, 1).unwrap();
        consumer_offsets.track("sends", 1, 0).unwrap();
        consumer_offsets.track("receipts", 0, 40).unwrap();
        assert_eq!(consumer_offsets.partition_count(), 3);
        assert_eq!(consumer_offsets.tracked_len(), 4);

        consumer_offsets.complete("sends", 0, 1).unwrap();
        consumer_offsets.complete("sends", 1, 0).unwrap();
        assert_eq!(
            consumer_offsets.drain_committable(),
            vec![("sends".to_owned(), 1, 1)]
        );
        assert_eq!(
            consumer_offsets
                .partition("sends", 0)
                .unwrap()
                .oldest_unhandled_offset(),
            Some(0)
        );
    }

    #[test]
    fn drain_reports_only_partitions_that_advanced() {
        let mut consumer_offsets = ConsumerOffsets::new();
        for partition in 0..3 {
            for offset in 0..3 {
                consumer_offsets.track("sends", partition, offset).unwrap();
            }
        }
        assert!(consumer_offsets.drain_committable().is_empty());

        consumer_offsets.complete("sends", 0, 0).unwrap();
        consumer_offsets.complete("sends", 2, 0).unwrap();
        consumer_offsets.complete("sends", 2, 1).unwrap();
        assert_eq!(
            consumer_offsets.drain_committable(),
            vec![("sends".to_owned(), 0, 1), ("sends".to_owned(), 2, 2)]
        );
        assert!(consumer_offsets.drain_committable().is_empty());

        consumer_offsets.complete("sends", 1, 2).unwrap();
        assert!(consumer_offsets.drain_committable().is_empty());
        consumer_offsets.complete("sends", 1, 0).unwrap();
        consumer_offsets.complete("sends", 0, 1).unwrap();
        assert_eq!(
            consumer_offsets.drain_committable(),
            vec![("sends".to_owned(), 0, 2), ("sends".to_owned(), 1, 1)]
        );
    }

    #[test]
    fn handled_positions_includes_already_drained_partitions() {
        let mut consumer_offsets = ConsumerOffsets::new();
        consumer_offsets.track("sends", 0, 0).unwrap();
        consumer_offsets.track("sends", 1, 0).unwrap();
        consumer_offsets.complete("sends", 0, 0).unwrap();
        assert_eq!(consumer_offsets.drain_committable().len(), 1);
        assert_eq!(
            consumer_offsets.handled_positions(),
            vec![("sends".to_owned(), 0, 1)]
        );
    }

    #[test]
    fn complete_on_unknown_partition_is_an_error() {
        let mut consumer_offsets = ConsumerOffsets::new();
        consumer_offsets.track("sends", 0, 0).unwrap();
        assert_eq!(
            consumer_offsets.complete("sends", 9, 0),
            Err(OffsetError::UnknownPartition {
                topic: "sends".to_owned(),
                partition: 9
            })
        );
        assert!(matches!(
            consumer_offsets.complete("other", 0, 0),
            Err(OffsetError::UnknownPartition { .. })
        ));
        assert!(matches!(
            consumer_offsets.track("sends", 0, 0),
            Err(OffsetError::NotIncreasing { .. })
        ));
    }

    #[test]
    fn remove_partition_forgets_state() {
        let mut consumer_offsets = ConsumerOffsets::new();
        consumer_offsets.track("sends", 0, 0).unwrap();
        consumer_offsets.track("sends", 0, 1).unwrap();
        consumer_offsets.complete("sends", 0, 0).unwrap();

        let removed = consumer_offsets.remove_partition("sends", 0).unwrap();
        assert_eq!(removed.handled_position(), Some(1));
        assert_eq!(consumer_offsets.partition_count(), 0);
        assert!(consumer_offsets.remove_partition("sends", 0).is_none());
        assert!(matches!(
            consumer_offsets.complete("sends", 0, 1),
            Err(OffsetError::UnknownPartition { .. })
        ));

        // Re-assignment starts from a clean tracker.
        consumer_offsets.track("sends", 0, 0).unwrap();
        assert!(consumer_offsets.drain_committable().is_empty());
    }
}
