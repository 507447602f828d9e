//! The routing cache: session → (worker, endpoint, epoch). The store is the source of truth; the
//! cache spares a store round trip on every routed call. With Redis every api process shares one
//! cache; a write only lands if its epoch is newer than the cached one, so a slow process can
//! never put back a route that a migration has replaced.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use redis::aio::ConnectionManager;

/// Where a session runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Owning worker.
    pub worker_id: String,
    /// Its base URL.
    pub endpoint: String,
    /// The session epoch this route belongs to.
    pub epoch: i64,
}

/// Routes cached in this process or in Redis.
pub enum RouteCache {
    /// In-process map (embedded default: one api process).
    InProcess(Mutex<HashMap<String, Route>>),
    /// Shared through Redis.
    Redis {
        /// Connection (auto-reconnecting).
        conn: ConnectionManager,
        /// Key prefix.
        prefix: String,
    },
}

impl std::fmt::Debug for RouteCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteCache::InProcess(_) => f.write_str("RouteCache::InProcess"),
            RouteCache::Redis { prefix, .. } => write!(f, "RouteCache::Redis({prefix})"),
        }
    }
}

/// Routes expire so a cache can never outlive its store rows by much.
const ROUTE_TTL: Duration = Duration::from_secs(3600);

/// Sets KEYS[1] to ARGV[2] unless the cached epoch (prefix before '|') is >= ARGV[1].
const SET_IF_NEWER: &str = r#"
local current = redis.call('GET', KEYS[1])
if current then
  local epoch = tonumber(string.match(current, '^(%-?%d+)|'))
  if epoch and epoch >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"#;

impl RouteCache {
    /// An in-process cache.
    pub fn in_process() -> Self {
        RouteCache::InProcess(Mutex::new(HashMap::new()))
    }

    /// A Redis-backed cache on a shared connection, keys under `prefix`.
    pub fn redis(conn: ConnectionManager, prefix: &str) -> Self {
        RouteCache::Redis {
            conn,
            prefix: format!("{prefix}route:"),
        }
    }

    /// The cached route of a session.
    pub async fn get(&self, session_id: &str) -> anyhow::Result<Option<Route>> {
        match self {
            RouteCache::InProcess(map) => Ok(lock(map).get(session_id).cloned()),
            RouteCache::Redis { conn, prefix } => {
                let mut conn = conn.clone();
                let raw: Option<String> = redis::cmd("GET")
                    .arg(format!("{prefix}{session_id}"))
                    .query_async(&mut conn)
                    .await
                    .context("redis route read")?;
                Ok(raw.as_deref().and_then(decode))
            }
        }
    }

    /// Caches a route unless a newer epoch is already cached.
    pub async fn put(&self, session_id: &str, route: &Route) -> anyhow::Result<()> {
        match self {
            RouteCache::InProcess(map) => {
                let mut map = lock(map);
                let newer = map
                    .get(session_id)
                    .is_none_or(|cached| cached.epoch < route.epoch);
                if newer {
                    map.insert(session_id.to_owned(), route.clone());
                }
                Ok(())
            }
            RouteCache::Redis { conn, prefix } => {
                let mut conn = conn.clone();
                let _: i64 = redis::Script::new(SET_IF_NEWER)
                    .key(format!("{prefix}{session_id}"))
                    .arg(route.epoch)
                    .arg(encode(route))
                    .arg(ROUTE_TTL.as_millis() as u64)
                    .invoke_async(&mut conn)
                    .await
                    .context("redis route write")?;
                Ok(())
            }
        }
    }

    /// Forgets a session's route (unassigned or deleted).
    pub async fn remove(&self, session_id: &str) -> anyhow::Result<()> {
        match self {
            RouteCache::InProcess(map) => {
                lock(map).remove(session_id);
                Ok(())
            }
            RouteCache::Redis { conn, prefix } => {
                let mut conn = conn.clone();
                let _: i64 = redis::cmd("DEL")
                    .arg(format!("{prefix}{session_id}"))
                    .query_async(&mut conn)
                    .await
                    .context("redis route delete")?;
                Ok(())
            }
        }
    }
}

fn lock(map: &Mutex<HashMap<String, Route>>) -> std::sync::MutexGuard<'_, HashMap<String, Route>> {
    map.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn encode(route: &Route) -> String {
    format!("{}|{}|{}", route.epoch, route.worker_id, route.endpoint)
}

fn decode(raw: &str) -> Option<Route> {
    let mut parts = raw.splitn(3, '|');
    let epoch = parts.next()?.parse().ok()?;
    let worker_id = parts.next()?.to_owned();
    let endpoint = parts.next()?.to_owned();
    Some(Route {
        worker_id,
        endpoint,
        epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn older_epochs_never_replace_newer_routes() {
        let cache = RouteCache::in_process();
        let new = Route {
            worker_id: "b".into(),
            endpoint: "http://b".into(),
            epoch: 3,
        };
        let old = Route {
            worker_id: "a".into(),
            endpoint: "http://a".into(),
            epoch: 2,
        };
        cache.put("s", &new).await.ok();
        cache.put("s", &old).await.ok();
        assert_eq!(cache.get("s").await.ok().flatten(), Some(new.clone()));
        assert_eq!(decode(&encode(&new)), Some(new));
    }
}
