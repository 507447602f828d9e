//! What delivery needs to know about a session (row, route, owner's tier), cached for a moment:
//! without it every message would cost a store read. A failed send invalidates the entry, so a
//! migration is noticed on the next attempt rather than after the cache expires.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::app::AppContext;
use crate::domain::Tier;
use crate::fleet::routing::Route;
use crate::store::{Session, StoreError};

/// How long a session's row and route are trusted.
const SESSION_TTL: Duration = Duration::from_millis(1_000);
/// How long an owner's tier is trusted (it only changes by an administrator's hand).
const TIER_TTL: Duration = Duration::from_secs(60);

/// A session as delivery sees it.
#[derive(Debug, Clone)]
pub(super) struct SessionEntry {
    pub(super) session: Session,
    /// Where it runs; `None` while it is not placed (or between workers).
    pub(super) route: Option<Route>,
    /// The owner's tier, for pacing.
    pub(super) tier: Tier,
}

/// A cached lookup: the entry (`None`: the session is gone) and when it was read.
type CachedSession = (Option<Arc<SessionEntry>>, Instant);

#[derive(Debug)]
pub(super) struct SessionDirectory {
    context: Arc<AppContext>,
    sessions: Mutex<HashMap<String, CachedSession>>,
    tiers: Mutex<HashMap<String, (Tier, Instant)>>,
}

impl SessionDirectory {
    pub(super) fn new(context: Arc<AppContext>) -> Self {
        Self {
            context,
            sessions: Mutex::new(HashMap::new()),
            tiers: Mutex::new(HashMap::new()),
        }
    }

    /// The session, or `None` when it was deleted.
    pub(super) async fn lookup(
        &self,
        session_id: &str,
    ) -> Result<Option<Arc<SessionEntry>>, StoreError> {
        let now = Instant::now();
        if let Some((entry, at)) = lock(&self.sessions).get(session_id)
            && now.duration_since(*at) < SESSION_TTL
        {
            return Ok(entry.clone());
        }
        let entry = match self.context.store.session_by_id(session_id).await {
            Ok(session) => {
                let route = match self.context.fleet.route(&session).await {
                    Ok(route) => route,
                    Err(err) => {
                        tracing::warn!(error = %err, session_id, "route lookup failed");
                        None
                    }
                };
                let tier = self.tier(&session.user_id).await?;
                Some(Arc::new(SessionEntry {
                    session,
                    route,
                    tier,
                }))
            }
            Err(StoreError::NotFound) => None,
            Err(err) => return Err(err),
        };
        let mut sessions = lock(&self.sessions);
        if sessions.len() > 100_000 {
            sessions.retain(|_, (_, at)| now.duration_since(*at) < SESSION_TTL);
        }
        sessions.insert(session_id.to_owned(), (entry.clone(), now));
        Ok(entry)
    }

    /// Forgets the cached entry so the next lookup reads the store.
    pub(super) fn invalidate(&self, session_id: &str) {
        lock(&self.sessions).remove(session_id);
    }

    async fn tier(&self, user_id: &str) -> Result<Tier, StoreError> {
        let now = Instant::now();
        if let Some((tier, at)) = lock(&self.tiers).get(user_id)
            && now.duration_since(*at) < TIER_TTL
        {
            return Ok(*tier);
        }
        let tier = self.context.store.user_by_id(user_id).await?.tier;
        lock(&self.tiers).insert(user_id.to_owned(), (tier, now));
        Ok(tier)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
