//! The existing worker's rate limits ([`Quirks::rate_limits`](super::Quirks::rate_limits)):
//! fixed windows per key, like its limiter. A key's window starts at its first request and
//! admits `max_requests`; the next request after the window ends starts a new one.
//!
//! State stays bounded: keys are stored as 64-bit hashes (a header of any length costs the same),
//! ended windows are evicted on every request, and at most [`MAX_KEYS`] live windows are kept per
//! limiter (past that, a new key waits for the oldest window to end). Eviction is cheap because
//! every window of a limiter has the same length: windows end in the order they started, so a
//! queue in start order has the ended ones at its front.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use warp::http::HeaderValue;

use super::quirks::{RateLimit, RateLimits};
use super::state::lock;

/// Live windows kept per limiter: a few megabytes at most.
const MAX_KEYS: usize = 100_000;

/// Who is calling, as the existing worker's session limiter sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Caller {
    /// The peer address of the connection (the whole gateway is one client IP).
    pub(crate) ip: Option<IpAddr>,
    /// The `X-User-Id` header, as sent: the gateway sends the session owner's id, so each of its
    /// customers has a budget of its own.
    pub(crate) user_id: Option<HeaderValue>,
}

/// A refusal: how long until the key's window ends, and what to tell the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Limited {
    pub(crate) retry_after: Duration,
    pub(crate) message: &'static str,
}

impl Limited {
    /// `Retry-After` in whole seconds, rounded up and at least 1: a client that waits that long
    /// finds a slot.
    pub(crate) fn retry_after_seconds(&self) -> u64 {
        let whole = self.retry_after.as_secs();
        let seconds = if self.retry_after.subsec_nanos() > 0 {
            whole.saturating_add(1)
        } else {
            whole
        };
        seconds.max(1)
    }
}

/// The limiters of one worker.
#[derive(Debug)]
pub(crate) struct Limiters {
    session_operations: Limiter,
    sends: Limiter,
    global: Option<Limiter>,
}

impl Limiters {
    pub(crate) fn new(limits: &RateLimits) -> Limiters {
        Limiters {
            session_operations: Limiter::new(
                limits.session_operations,
                "Too many session operations, please try again later",
            ),
            sends: Limiter::new(
                limits.sends,
                "Message rate limit exceeded, please slow down",
            ),
            global: limits.global.map(|limit| {
                Limiter::new(
                    limit,
                    "Too many requests from this IP, please try again later",
                )
            }),
        }
    }

    /// Start, restart, disconnect, logout, delete: keyed by client IP and `X-User-Id`.
    pub(crate) fn session_operation(&self, caller: &Caller, now: Instant) -> Result<(), Limited> {
        self.session_operations.hit(caller, now)
    }

    /// A send through `session_id` (the raw path segment, valid or not): keyed by the session.
    pub(crate) fn send(&self, session_id: &str, now: Instant) -> Result<(), Limited> {
        self.sends.hit(session_id, now)
    }

    /// Any route but `GET /health`, when the production limit is on: keyed by client IP.
    pub(crate) fn global(&self, ip: Option<IpAddr>, now: Instant) -> Result<(), Limited> {
        match &self.global {
            Some(limiter) => limiter.hit(ip, now),
            None => Ok(()),
        }
    }
}

/// One fixed-window limiter.
#[derive(Debug)]
pub(crate) struct Limiter {
    limit: RateLimit,
    message: &'static str,
    /// Keys are hashed once with a per-limiter random seed, so callers cannot aim collisions.
    hasher: RandomState,
    windows: Mutex<Windows>,
}

#[derive(Debug, Default)]
struct Windows {
    by_key: HashMap<u64, Window>,
    /// One entry per key in `by_key`, in the order their windows started (and will end).
    by_start: VecDeque<(Instant, u64)>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    requests: u32,
}

impl Limiter {
    pub(crate) fn new(limit: RateLimit, message: &'static str) -> Limiter {
        Limiter {
            limit,
            message,
            hasher: RandomState::new(),
            windows: Mutex::default(),
        }
    }

    /// Counts one request of `key` at `now`; refused when its window already holds
    /// `max_requests`. Refused requests count too, as in the existing worker, but they never
    /// extend the window.
    pub(crate) fn hit(&self, key: impl Hash, now: Instant) -> Result<(), Limited> {
        let key = self.hasher.hash_one(key);
        let window = self.limit.window;
        let mut windows = lock(&self.windows);
        windows.evict_ended(now, window);
        if let Some(current) = windows.by_key.get_mut(&key) {
            current.requests = current.requests.saturating_add(1);
            if current.requests <= self.limit.max_requests {
                return Ok(());
            }
            return Err(self.limited(current.started, now));
        }
        if windows.by_key.len() >= MAX_KEYS {
            let oldest = windows
                .by_start
                .front()
                .map_or(now, |(started, _)| *started);
            return Err(self.limited(oldest, now));
        }
        windows.by_key.insert(
            key,
            Window {
                started: now,
                requests: 1,
            },
        );
        windows.by_start.push_back((now, key));
        if self.limit.max_requests == 0 {
            return Err(self.limited(now, now));
        }
        Ok(())
    }

    /// A refusal until the window that started at `started` ends. Computed on durations, not
    /// instants: a window of any configured length cannot overflow a clock.
    fn limited(&self, started: Instant, now: Instant) -> Limited {
        let elapsed = now.saturating_duration_since(started);
        Limited {
            retry_after: self.limit.window.saturating_sub(elapsed),
            message: self.message,
        }
    }

    /// Live windows, for tests of the bound.
    #[cfg(test)]
    pub(crate) fn tracked_keys(&self) -> usize {
        lock(&self.windows).by_key.len()
    }
}

impl Windows {
    /// Forgets every window that has ended by `now`.
    fn evict_ended(&mut self, now: Instant, window: Duration) {
        while let Some(&(started, key)) = self.by_start.front() {
            if now.saturating_duration_since(started) < window {
                break;
            }
            self.by_start.pop_front();
            self.by_key.remove(&key);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn limiter(max_requests: u32, window: Duration) -> Limiter {
        Limiter::new(
            RateLimit {
                max_requests,
                window,
            },
            "slow down",
        )
    }

    #[test]
    fn admits_max_requests_per_window_then_says_when_a_slot_frees() {
        let limiter = limiter(3, 10 * SECOND);
        let start = Instant::now();
        for offset in 0..3 {
            assert_eq!(limiter.hit("k", start + offset * SECOND), Ok(()));
        }
        let refused = limiter.hit("k", start + 3 * SECOND).unwrap_err();
        assert_eq!(refused.retry_after, 7 * SECOND);
        assert_eq!(refused.retry_after_seconds(), 7);
        assert_eq!(refused.message, "slow down");
        // Refusals do not move the end of the window.
        let refused = limiter
            .hit("k", start + 9 * SECOND + Duration::from_millis(1))
            .unwrap_err();
        assert_eq!(refused.retry_after_seconds(), 1);
        // The window ended: a fresh one.
        assert_eq!(limiter.hit("k", start + 10 * SECOND), Ok(()));
    }

    #[test]
    fn keys_have_separate_budgets() {
        let limiter = limiter(1, 60 * SECOND);
        let now = Instant::now();
        assert_eq!(limiter.hit("a", now), Ok(()));
        assert!(limiter.hit("a", now).is_err());
        assert_eq!(limiter.hit("b", now), Ok(()));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let limited = |retry_after| Limited {
            retry_after,
            message: "",
        };
        assert_eq!(limited(Duration::from_millis(1)).retry_after_seconds(), 1);
        assert_eq!(limited(Duration::ZERO).retry_after_seconds(), 1);
        assert_eq!(
            limited(Duration::from_millis(1500)).retry_after_seconds(),
            2
        );
        assert_eq!(limited(2 * SECOND).retry_after_seconds(), 2);
    }

    #[test]
    fn ended_windows_are_evicted() {
        let limiter = limiter(5, SECOND);
        let start = Instant::now();
        for key in 0..1000 {
            limiter.hit(key, start).unwrap();
        }
        assert_eq!(limiter.tracked_keys(), 1000);
        limiter.hit("late", start + SECOND).unwrap();
        assert_eq!(limiter.tracked_keys(), 1);
    }

    #[test]
    fn a_full_table_refuses_new_keys_until_the_oldest_window_ends() {
        let limiter = limiter(5, 10 * SECOND);
        let start = Instant::now();
        for key in 0..MAX_KEYS {
            limiter.hit(key, start).unwrap();
        }
        let refused = limiter.hit("one more", start + SECOND).unwrap_err();
        assert_eq!(refused.retry_after, 9 * SECOND);
        // Known keys keep their budget.
        assert_eq!(limiter.hit(7_usize, start + SECOND), Ok(()));
        assert_eq!(limiter.hit("one more", start + 10 * SECOND), Ok(()));
        assert_eq!(limiter.tracked_keys(), 1);
    }

    #[test]
    fn an_enormous_window_does_not_overflow() {
        let limiter = limiter(1, Duration::MAX);
        let now = Instant::now();
        assert_eq!(limiter.hit("k", now), Ok(()));
        let refused = limiter.hit("k", now + SECOND).unwrap_err();
        assert_eq!(refused.retry_after, Duration::MAX - SECOND);
        assert_eq!(refused.retry_after_seconds(), u64::MAX);
        assert_eq!(
            Limited {
                retry_after: Duration::MAX,
                message: ""
            }
            .retry_after_seconds(),
            u64::MAX
        );
    }

    #[test]
    fn zero_admits_nothing() {
        let limiter = limiter(0, SECOND);
        assert!(limiter.hit("k", Instant::now()).is_err());
    }

    #[test]
    fn session_operations_are_keyed_by_ip_and_user_id() {
        let limiters = Limiters::new(&RateLimits {
            session_operations: RateLimit {
                max_requests: 1,
                window: 60 * SECOND,
            },
            ..RateLimits::real()
        });
        let now = Instant::now();
        let ip = Some(IpAddr::from([10, 0, 0, 1]));
        let caller = |user: Option<&'static str>| Caller {
            ip,
            user_id: user.map(HeaderValue::from_static),
        };
        assert!(limiters.session_operation(&caller(None), now).is_ok());
        assert!(limiters.session_operation(&caller(None), now).is_err());
        assert!(limiters.session_operation(&caller(Some("u1")), now).is_ok());
        assert!(
            limiters
                .session_operation(&caller(Some("u1")), now)
                .is_err()
        );
        assert!(limiters.session_operation(&caller(Some("u2")), now).is_ok());
        let elsewhere = Caller {
            ip: Some(IpAddr::from([10, 0, 0, 2])),
            user_id: None,
        };
        assert!(limiters.session_operation(&elsewhere, now).is_ok());
        // No global limit unless asked for.
        for _ in 0..100 {
            assert!(limiters.global(ip, now).is_ok());
        }
    }
}
