//! Session events for dashboards (SSE): status and QR changes, fanned out per session.
//! Senders are created on first subscription and dropped when the last subscriber leaves.
//! Delivery also hears of every session that comes up on a worker, so messages waiting out a
//! retry delay behind a migration go as soon as the session is back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;

/// A change a dashboard wants to see.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionEvent {
    /// Session id.
    pub session_id: String,
    /// New status.
    pub status: String,
    /// Raw QR string while `QR_REQUIRED`.
    pub qr_code: Option<String>,
    /// Phone number once connected.
    pub phone_number: Option<String>,
    /// Display name once connected.
    pub display_name: Option<String>,
    /// Worker running the session.
    pub worker_id: Option<String>,
    /// When it happened (RFC 3339).
    pub at: String,
}

/// Per-session broadcast channels, and one for sessions that came up.
#[derive(Debug)]
pub struct SessionEvents {
    channels: Mutex<HashMap<String, broadcast::Sender<SessionEvent>>>,
    connected: broadcast::Sender<Arc<str>>,
}

/// Events buffered per subscriber before the slowest one starts losing the oldest.
const CHANNEL_CAPACITY: usize = 64;
/// Connected sessions buffered for a subscriber (a whole worker's sessions after a failover).
const CONNECTED_CAPACITY: usize = 4_096;

impl Default for SessionEvents {
    fn default() -> Self {
        Self {
            channels: Mutex::default(),
            connected: broadcast::channel(CONNECTED_CAPACITY).0,
        }
    }
}

impl SessionEvents {
    /// Hears the id of every session that becomes `CONNECTED` in this process.
    pub fn subscribe_connected(&self) -> broadcast::Receiver<Arc<str>> {
        self.connected.subscribe()
    }

    /// Subscribes to a session's events.
    pub fn subscribe(&self, session_id: &str) -> broadcast::Receiver<SessionEvent> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels
            .entry(session_id.to_owned())
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe()
    }

    /// Publishes to current subscribers (none: dropped, and the channel is freed).
    pub fn publish(&self, event: SessionEvent) {
        if event.status == "CONNECTED" {
            // No subscriber (no delivery consumer in this process) is fine.
            let _ = self.connected.send(Arc::from(event.session_id.as_str()));
        }
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = channels.get(&event.session_id) {
            let session_id = event.session_id.clone();
            if sender.send(event).is_err() {
                channels.remove(&session_id);
            }
        }
    }
}
