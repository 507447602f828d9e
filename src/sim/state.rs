//! What a simulated worker knows: its sessions, the sends it accepted, and the process-wide
//! "credential store".
//!
//! Everything here is synchronous and free of I/O; the lifecycle in `worker` drives it. Locks are
//! `std` mutexes that are never held across an `.await`.
//!
//! Sessions carry a `generation` that changes on every transition: a timer scheduled for one
//! step of the lifecycle (show the QR, auto-connect, reconnect after a drop) remembers the
//! generation it was scheduled at and does nothing if the session moved on in the meantime.
//! That is how `scan`, `restart` or `disconnect` cancel pending timers without tracking them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;

/// The connection state of a session, as the protocol spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SessionStatus {
    /// Starting; no QR shown and not connected yet.
    Init,
    /// Waiting for the phone to scan the QR code.
    QrRequired,
    /// Logged in and able to send.
    Connected,
    /// Disconnected on request; credentials kept.
    Disconnected,
    /// The connection dropped and is coming back.
    Reconnecting,
    /// Failed. The simulator never enters it on its own; listed for completeness.
    Error,
}

impl SessionStatus {
    /// The wire spelling (`QR_REQUIRED`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Init => "INIT",
            SessionStatus::QrRequired => "QR_REQUIRED",
            SessionStatus::Connected => "CONNECTED",
            SessionStatus::Disconnected => "DISCONNECTED",
            SessionStatus::Reconnecting => "RECONNECTING",
            SessionStatus::Error => "ERROR",
        }
    }
}

impl std::fmt::Display for SessionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A session id as the worker accepts it: 3 to 50 characters of `[A-Za-z0-9_-]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct SessionId(String);

/// Why a string is not a [`SessionId`].
#[derive(Debug, thiserror::Error)]
#[error("sessionId must be 3 to 50 characters of letters, digits, '_' or '-'")]
pub(crate) struct InvalidSessionId;

impl SessionId {
    /// Parses a session id from a path segment or a body field.
    pub(crate) fn parse(raw: &str) -> Result<SessionId, InvalidSessionId> {
        let well_formed = (3..=50).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if well_formed {
            Ok(SessionId(raw.to_owned()))
        } else {
            Err(InvalidSessionId)
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A read-only snapshot of one session, for tests and `GET /sim/sessions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimSessionView {
    /// The session id.
    pub session_id: String,
    /// Its current status.
    pub status: SessionStatus,
    /// The simulated phone number; `None` unless connected.
    pub phone_number: Option<String>,
    /// The simulated WhatsApp display name; `None` unless connected.
    pub display_name: Option<String>,
}

/// One send the simulator accepted, exactly as it arrived.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceivedSend {
    /// The session it was sent through.
    pub session_id: String,
    /// The gateway's id from the `X-Message-Id` header, if there was one.
    pub message_id: Option<String>,
    /// The request body, untouched.
    pub body: Value,
    /// When it was recorded, in Unix microseconds: a benchmark on the same machine subtracts the
    /// moment the gateway accepted the send to get the end-to-end latency.
    pub received_at_us: i64,
}

/// One session held by the worker.
#[derive(Debug)]
pub(crate) struct SessionEntry {
    pub(crate) status: SessionStatus,
    /// Kept for `GET /api/sessions`; the simulator itself never needs them.
    pub(crate) user_id: Option<String>,
    pub(crate) session_name: Option<String>,
    pub(crate) phone_number: Option<String>,
    pub(crate) display_name: Option<String>,
    pub(crate) qr_code: Option<String>,
    pub(crate) qr_expires_at: Option<DateTime<Utc>>,
    pub(crate) last_activity: DateTime<Utc>,
    /// Changes on every transition; see the module docs.
    pub(crate) generation: u64,
    /// Sends through one session are served one at a time, in arrival order: the gateway relies
    /// on per-session FIFO. Tokio's mutex queues waiters fairly, which is exactly that.
    pub(crate) send_turn: Arc<tokio::sync::Mutex<()>>,
}

impl SessionEntry {
    fn new(user_id: Option<String>, session_name: Option<String>, generation: u64) -> Self {
        SessionEntry {
            status: SessionStatus::Init,
            user_id,
            session_name,
            phone_number: None,
            display_name: None,
            qr_code: None,
            qr_expires_at: None,
            last_activity: Utc::now(),
            generation,
            send_turn: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Moves to `status`, dropping what only makes sense in another state.
    fn transition(&mut self, status: SessionStatus, generation: u64) {
        self.status = status;
        self.generation = generation;
        self.last_activity = Utc::now();
        if status != SessionStatus::QrRequired {
            self.qr_code = None;
            self.qr_expires_at = None;
        }
        if status != SessionStatus::Connected {
            // The real worker reports `null` phone and name for sessions that are not connected.
            self.phone_number = None;
            self.display_name = None;
        }
    }
}

/// Why a session could not be added.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum InsertRefused {
    AlreadyExists,
    CapacityReached,
}

/// The sessions of one worker, behind [`SimState::sessions`].
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    /// Sorted so listings and heartbeats are stable.
    entries: BTreeMap<SessionId, SessionEntry>,
    /// Source of generations; global to the worker so a deleted and recreated session never
    /// reuses a generation an old timer still holds.
    next_generation: u64,
}

impl Sessions {
    pub(crate) fn get(&self, id: &SessionId) -> Option<&SessionEntry> {
        self.entries.get(id)
    }

    pub(crate) fn get_mut(&mut self, id: &SessionId) -> Option<&mut SessionEntry> {
        self.entries.get_mut(id)
    }

    /// Moves `id` to `to` if it exists, its status is one of `from` and, when `generation` is
    /// given, it is still at that generation (the timer asking is not stale). Returns the entry,
    /// already at its new generation, for the caller to fill in the details of the new state.
    pub(crate) fn advance(
        &mut self,
        id: &SessionId,
        generation: Option<u64>,
        from: &[SessionStatus],
        to: SessionStatus,
    ) -> Option<&mut SessionEntry> {
        let entry = self.entries.get(id)?;
        let current = generation.is_none_or(|expected| expected == entry.generation);
        if !current || !from.contains(&entry.status) {
            return None;
        }
        let next = self.bump();
        let entry = self.entries.get_mut(id)?;
        entry.transition(to, next);
        Some(entry)
    }

    /// A fresh generation.
    fn bump(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    /// Adds a session in `INIT` and returns its generation.
    pub(crate) fn insert(
        &mut self,
        id: SessionId,
        user_id: Option<String>,
        session_name: Option<String>,
        max_sessions: u32,
    ) -> Result<u64, InsertRefused> {
        if self.entries.contains_key(&id) {
            return Err(InsertRefused::AlreadyExists);
        }
        if self.entries.len() >= max_sessions as usize {
            return Err(InsertRefused::CapacityReached);
        }
        let generation = self.bump();
        self.entries
            .insert(id, SessionEntry::new(user_id, session_name, generation));
        Ok(generation)
    }

    pub(crate) fn remove(&mut self, id: &SessionId) -> Option<SessionEntry> {
        self.entries.remove(id)
    }

    /// Removes every session; returns their ids.
    pub(crate) fn remove_all(&mut self) -> Vec<SessionId> {
        std::mem::take(&mut self.entries).into_keys().collect()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&SessionId, &SessionEntry)> {
        self.entries.iter()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn count(&self, status: SessionStatus) -> usize {
        self.entries
            .values()
            .filter(|entry| entry.status == status)
            .count()
    }

    pub(crate) fn views(&self) -> Vec<SimSessionView> {
        self.entries
            .iter()
            .map(|(id, entry)| view_of(id, entry))
            .collect()
    }
}

fn view_of(id: &SessionId, entry: &SessionEntry) -> SimSessionView {
    SimSessionView {
        session_id: id.to_string(),
        status: entry.status,
        phone_number: entry.phone_number.clone(),
        display_name: entry.display_name.clone(),
    }
}

/// Everything one simulated worker holds in memory (and loses when killed).
#[derive(Debug, Default)]
pub(crate) struct SimState {
    pub(crate) sessions: Mutex<Sessions>,
    /// Accepted sends in arrival order. Shared pointers, so a poll copies references rather
    /// than bodies while it holds the lock that every send also takes.
    messages: Mutex<Vec<Arc<ReceivedSend>>>,
}

impl SimState {
    pub(crate) fn sessions(&self) -> MutexGuard<'_, Sessions> {
        lock(&self.sessions)
    }

    /// Records an accepted send.
    pub(crate) fn record_send(&self, send: ReceivedSend) {
        lock(&self.messages).push(Arc::new(send));
    }

    /// Loses every session, like a crashed process, and returns every send accepted up to that
    /// instant. Nothing is recorded afterwards: a send is recorded only for a connected session,
    /// under the sessions lock taken here.
    pub(crate) fn crash(&self) -> Vec<ReceivedSend> {
        let mut sessions = self.sessions();
        sessions.entries.clear();
        let received = self.messages();
        drop(sessions);
        received
    }

    pub(crate) fn messages(&self) -> Vec<ReceivedSend> {
        lock(&self.messages)
            .iter()
            .map(|send| ReceivedSend::clone(send))
            .collect()
    }

    /// The sends from index `after` on (none when `after` is past the end) and the total count,
    /// read under one lock so the two agree. Pollers pass the total they saw last and receive
    /// only what is new, however many sends the worker holds.
    pub(crate) fn messages_after(&self, after: usize) -> (usize, Vec<Arc<ReceivedSend>>) {
        let messages = lock(&self.messages);
        let newer = messages.get(after..).unwrap_or_default().to_vec();
        (messages.len(), newer)
    }

    pub(crate) fn message_count(&self) -> usize {
        lock(&self.messages).len()
    }
}

/// A poisoned lock only means another thread panicked mid-update; the data is still usable for a
/// simulator, and refusing to serve would turn one bug into many.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The process-wide credential store, keyed by session id.
///
/// On a real fleet Baileys credentials live in storage shared by all workers, so a session that
/// migrates to another worker reconnects without a new QR scan. Simulated workers in one process
/// share this store the same way; workers in separate processes do not (they go through the QR
/// flow again, which auto-connect completes). Tests must therefore use unique session ids.
///
/// The store also remembers which credentials a logout wiped, so that a recovery in this process
/// does not assume them back (a recovery in another process cannot know, and does).
pub(crate) struct CredentialStore;

/// What this process knows about a session's credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Credentials {
    Stored,
    Wiped,
}

static CREDENTIALS: LazyLock<Mutex<HashMap<String, Credentials>>> = LazyLock::new(Default::default);

impl CredentialStore {
    /// Remembers that `id` has logged in.
    pub(crate) fn store(id: &SessionId) {
        lock(&CREDENTIALS).insert(id.as_str().to_owned(), Credentials::Stored);
    }

    /// Whether `id` can connect without a QR scan.
    pub(crate) fn has(id: &SessionId) -> bool {
        lock(&CREDENTIALS).get(id.as_str()) == Some(&Credentials::Stored)
    }

    /// Forgets `id`'s credentials (logout).
    pub(crate) fn wipe(id: &SessionId) {
        lock(&CREDENTIALS).insert(id.as_str().to_owned(), Credentials::Wiped);
    }

    /// Whether a logout in this process wiped `id`'s credentials (and no login stored new ones).
    pub(crate) fn was_wiped(id: &SessionId) -> bool {
        lock(&CREDENTIALS).get(id.as_str()) == Some(&Credentials::Wiped)
    }
}

/// The simulated phone number of a session: `628` and 9 digits derived from its id, so the same
/// session shows the same number on every worker and in every run.
pub(crate) fn phone_number_for(id: &SessionId) -> String {
    format!("628{:09}", fnv1a(id.as_str().as_bytes()) % 1_000_000_000)
}

/// The simulated WhatsApp profile name of a session.
pub(crate) fn display_name_for(id: &SessionId) -> String {
    format!("Sim {id}")
}

/// FNV-1a: tiny, and unlike `DefaultHasher` guaranteed stable across Rust releases.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// An ISO 8601 timestamp like JavaScript's `toISOString()`.
pub(crate) fn iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Now, as [`iso`].
pub(crate) fn now_iso() -> String {
    iso(Utc::now())
}
