//! How many live event streams (SSE) each user holds in this process, against
//! `SSE_MAX_STREAMS_PER_USER`: a stream is an open connection and a subscription for as long as
//! the client likes, so one user must not be able to hold them by the thousand.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The per-user count of open streams.
#[derive(Debug)]
pub struct StreamSlots {
    per_user: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open stream; its slot is free again when this is dropped (the stream ended or the
/// client went away).
#[derive(Debug)]
pub struct StreamSlot {
    user_id: String,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

impl StreamSlots {
    /// At most `per_user` open streams per user.
    pub fn new(per_user: usize) -> Self {
        Self {
            per_user,
            open: Arc::default(),
        }
    }

    /// A slot for one more stream of `user_id`, or `None` when the user holds the maximum.
    pub fn take(&self, user_id: &str) -> Option<StreamSlot> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let held = open.entry(user_id.to_owned()).or_default();
        if *held >= self.per_user {
            return None;
        }
        *held += 1;
        Some(StreamSlot {
            user_id: user_id.to_owned(),
            open: self.open.clone(),
        })
    }

    /// The most streams one user may hold.
    pub fn per_user(&self) -> usize {
        self.per_user
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(held) = open.get_mut(&self.user_id) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                open.remove(&self.user_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_holds_at_most_the_maximum_and_a_dropped_slot_is_free_again() {
        let slots = StreamSlots::new(2);
        let first = slots.take("ann").expect("a first slot");
        let _second = slots.take("ann").expect("a second slot");
        assert!(slots.take("ann").is_none());
        assert!(
            slots.take("bob").is_some(),
            "another user has slots of their own"
        );
        drop(first);
        assert!(slots.take("ann").is_some());
    }
}
