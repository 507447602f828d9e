//! Fixed-window counters: the mechanism under login throttling and tier quotas.
//!
//! Two implementations behind one enum: in-process (embedded default, one api process) and Redis
//! (`REDIS_URL`), where one Lua script does check-and-increment atomically so several api
//! processes sharing Redis enforce one exact limit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use redis::aio::ConnectionManager;

/// The state of one window after an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowState {
    /// Whether the operation was admitted (always true for plain hits).
    pub admitted: bool,
    /// The count in the current window after the operation.
    pub count: u64,
    /// Time until the window resets.
    pub resets_in: Duration,
}

/// Counters shared by every request of this process (and, with Redis, of every process).
pub enum Counters {
    /// Counters in this process's memory.
    InProcess(InProcessCounters),
    /// Counters in Redis under `prefix`.
    Redis(RedisCounters),
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Counters::InProcess(_) => f.write_str("Counters::InProcess"),
            Counters::Redis(r) => write!(f, "Counters::Redis({})", r.prefix),
        }
    }
}

impl Counters {
    /// Adds `amount` to `key` if that keeps it within `limit`; otherwise leaves it unchanged and
    /// answers `admitted: false`. The window starts at the first admitted hit.
    pub async fn admit(
        &self,
        key: &str,
        amount: u64,
        limit: u64,
        window: Duration,
    ) -> anyhow::Result<WindowState> {
        match self {
            Counters::InProcess(c) => Ok(c.admit(key, amount, limit, window, Instant::now())),
            Counters::Redis(c) => c.admit(key, amount, limit, window).await,
        }
    }

    /// Adds `amount` unconditionally.
    pub async fn hit(
        &self,
        key: &str,
        amount: u64,
        window: Duration,
    ) -> anyhow::Result<WindowState> {
        self.admit(key, amount, u64::MAX / 2, window).await
    }

    /// Takes `amount` back from `key` (never below zero) and keeps its window: an admitted
    /// unit that turned out not to count (a throttled attempt that succeeded, or that a later
    /// gate refused before it did any work).
    pub async fn release(&self, key: &str, amount: u64) -> anyhow::Result<()> {
        match self {
            Counters::InProcess(c) => {
                c.release(key, amount, Instant::now());
                Ok(())
            }
            Counters::Redis(c) => c.release(key, amount).await,
        }
    }

    /// Reads the current window without changing it.
    pub async fn peek(&self, key: &str) -> anyhow::Result<WindowState> {
        match self {
            Counters::InProcess(c) => Ok(c.peek(key, Instant::now())),
            Counters::Redis(c) => c.peek(key).await,
        }
    }

    /// Forgets a key (e.g. failed logins after a success).
    pub async fn clear(&self, key: &str) -> anyhow::Result<()> {
        match self {
            Counters::InProcess(c) => {
                c.lock().remove(key);
                Ok(())
            }
            Counters::Redis(c) => c.clear(key).await,
        }
    }

    /// Round-trips to the backing service (health).
    pub async fn ping(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        if let Counters::Redis(c) = self {
            let mut conn = c.conn.clone();
            let _: String = tokio::time::timeout(
                Duration::from_secs(2),
                redis::cmd("PING").query_async(&mut conn),
            )
            .await
            .context("redis did not answer within 2 s")?
            .context("redis PING")?;
        }
        Ok(started.elapsed())
    }
}

/// In-memory windows; expired entries are swept as new keys arrive so memory stays bounded.
#[derive(Debug, Default)]
pub struct InProcessCounters {
    windows: Mutex<HashMap<String, (u64, Instant)>>,
}

/// Sweep expired windows every this many inserts.
const SWEEP_EVERY: usize = 1024;

impl InProcessCounters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Instant)>> {
        self.windows
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn admit(
        &self,
        key: &str,
        amount: u64,
        limit: u64,
        window: Duration,
        now: Instant,
    ) -> WindowState {
        let mut windows = self.lock();
        if windows.len() % SWEEP_EVERY == SWEEP_EVERY - 1 {
            windows.retain(|_, (_, expires)| *expires > now);
        }
        let entry = windows.entry(key.to_owned()).or_insert((0, now + window));
        if entry.1 <= now {
            *entry = (0, now + window);
        }
        let admitted = entry.0.saturating_add(amount) <= limit;
        if admitted {
            entry.0 += amount;
        }
        WindowState {
            admitted,
            count: entry.0,
            resets_in: entry.1 - now,
        }
    }

    fn release(&self, key: &str, amount: u64, now: Instant) {
        if let Some((count, expires)) = self.lock().get_mut(key)
            && *expires > now
        {
            *count = count.saturating_sub(amount);
        }
    }

    fn peek(&self, key: &str, now: Instant) -> WindowState {
        match self.lock().get(key) {
            Some((count, expires)) if *expires > now => WindowState {
                admitted: true,
                count: *count,
                resets_in: *expires - now,
            },
            _ => WindowState {
                admitted: true,
                count: 0,
                resets_in: Duration::ZERO,
            },
        }
    }
}

/// Check-and-increment in one round trip. KEYS[1] = counter; ARGV = amount, limit, window ms.
/// Returns {admitted (0/1), count, ms until reset}.
const ADMIT_SCRIPT: &str = r#"
local amount = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current + amount > limit then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl < 0 then ttl = window end
  return {0, current, ttl}
end
local count = redis.call('INCRBY', KEYS[1], amount)
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], window)
  ttl = window
end
return {1, count, ttl}
"#;

/// Decrement that stops at zero and keeps the key's expiry. KEYS[1] = counter; ARGV = amount.
const RELEASE_SCRIPT: &str = r#"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current <= 0 then return 0 end
local amount = math.min(tonumber(ARGV[1]), current)
return redis.call('DECRBY', KEYS[1], amount)
"#;

/// Counters in Redis.
pub struct RedisCounters {
    conn: ConnectionManager,
    prefix: String,
    admit_script: redis::Script,
    release_script: redis::Script,
}

/// Opens the process's one Redis connection (multiplexed, reconnecting); every Redis-backed
/// component shares a clone of it.
pub async fn connect_redis(url: &str) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(url).context("parsing REDIS_URL")?;
    tokio::time::timeout(Duration::from_secs(5), client.get_connection_manager())
        .await
        .context("connecting to Redis (REDIS_URL): timed out after 5 s")?
        .context("connecting to Redis (REDIS_URL)")
}

impl RedisCounters {
    /// Counters on a shared connection, every key namespaced under `prefix`.
    pub fn new(conn: ConnectionManager, prefix: &str) -> Self {
        Self {
            conn,
            prefix: format!("{prefix}counter:"),
            admit_script: redis::Script::new(ADMIT_SCRIPT),
            release_script: redis::Script::new(RELEASE_SCRIPT),
        }
    }

    async fn admit(
        &self,
        key: &str,
        amount: u64,
        limit: u64,
        window: Duration,
    ) -> anyhow::Result<WindowState> {
        let mut conn = self.conn.clone();
        let (admitted, count, ttl_ms): (i64, u64, i64) = self
            .admit_script
            .key(format!("{}{key}", self.prefix))
            .arg(amount)
            .arg(limit)
            .arg(window.as_millis() as u64)
            .invoke_async(&mut conn)
            .await
            .context("redis counter script")?;
        Ok(WindowState {
            admitted: admitted == 1,
            count,
            resets_in: Duration::from_millis(ttl_ms.max(0) as u64),
        })
    }

    async fn release(&self, key: &str, amount: u64) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .release_script
            .key(format!("{}{key}", self.prefix))
            .arg(amount)
            .invoke_async(&mut conn)
            .await
            .context("redis counter release script")?;
        Ok(())
    }

    async fn peek(&self, key: &str) -> anyhow::Result<WindowState> {
        let mut conn = self.conn.clone();
        let full_key = format!("{}{key}", self.prefix);
        let (count, ttl_ms): (Option<u64>, i64) = redis::pipe()
            .get(&full_key)
            .pttl(&full_key)
            .query_async(&mut conn)
            .await
            .context("redis counter read")?;
        Ok(WindowState {
            admitted: true,
            count: count.unwrap_or(0),
            resets_in: Duration::from_millis(ttl_ms.max(0) as u64),
        })
    }

    async fn clear(&self, key: &str) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("DEL")
            .arg(format!("{}{key}", self.prefix))
            .query_async(&mut conn)
            .await
            .context("redis counter delete")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_process_window_admits_up_to_the_limit_then_resets() {
        let counters = InProcessCounters::default();
        let start = Instant::now();
        let window = Duration::from_secs(60);
        assert!(counters.admit("k", 60, 100, window, start).admitted);
        let refused = counters.admit("k", 41, 100, window, start);
        assert!(!refused.admitted);
        assert_eq!(refused.count, 60);
        assert!(counters.admit("k", 40, 100, window, start).admitted);
        assert!(!counters.admit("k", 1, 100, window, start).admitted);
        let later = start + window + Duration::from_millis(1);
        let fresh = counters.admit("k", 1, 100, window, later);
        assert!(fresh.admitted);
        assert_eq!(fresh.count, 1);
        assert_eq!(counters.peek("other", later).count, 0);
    }

    #[test]
    fn a_release_gives_back_within_the_window_and_never_goes_below_zero() {
        let counters = InProcessCounters::default();
        let start = Instant::now();
        let window = Duration::from_secs(60);
        assert!(counters.admit("k", 2, 2, window, start).admitted);
        assert!(!counters.admit("k", 1, 2, window, start).admitted);
        counters.release("k", 1, start);
        assert!(counters.admit("k", 1, 2, window, start).admitted);
        counters.release("k", 5, start);
        assert_eq!(counters.peek("k", start).count, 0);
        counters.release("absent", 1, start);
        assert_eq!(counters.peek("absent", start).count, 0);
    }
}
