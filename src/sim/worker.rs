//! The running simulated worker: the session lifecycle, sends, registration, heartbeats and
//! recovery. HTTP handlers in `server` are thin calls into [`Worker`].
//!
//! Every background activity (lifecycle timers, callbacks, the heartbeat loop) is a task in one
//! [`Tasks`] set, so killing the worker aborts all of it at once. Session-status reports go
//! through one ordered queue so the gateway sees `QR_REQUIRED` before `CONNECTED`; message
//! receipts are delivered per message (`SENT`, then `DELIVERED`, then `READ`).
//!
//! The quirks of the existing worker (`SimWorkerConfig::quirks`) that concern the lifecycle
//! live here: what a report says and to whom it names itself ([`Worker::status_report`],
//! [`Worker::logout_report`]), the `INIT` reports of a session that connects, fails or whose QR
//! expires, the recovery report, the logout of every session on shutdown, the heartbeat metrics
//! and the rate limits. How refusals read is `server`'s business.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::SimWorkerConfig;
use super::gateway::{
    GatewayClient, GatewayError, Heartbeat, HeartbeatMetrics, HeartbeatSession,
    InboundMessageReport, MessageStatusReport, RecoveryReport, RecoveryResult, RecoverySummary,
    Registration, SessionStatusReport, SummarizedRecoveryReport,
};
use super::limits::{Caller, Limited, Limiters};
use super::quirks::RecoveryReport as RecoveryReportMode;
use super::state::{
    CredentialStore, InsertRefused, ReceivedSend, SessionEntry, SessionId, SessionStatus, Sessions,
    SimState, display_name_for, iso, lock, now_iso, phone_number_for,
};
use super::validate::{Rules, ValidatedSend};

/// INIT → QR_REQUIRED: Baileys shows the first QR almost at once.
const QR_DELAY: Duration = Duration::from_millis(50);
/// INIT → CONNECTED when credentials are stored (restart, recovery, migration).
const STORED_CREDENTIALS_CONNECT_DELAY: Duration = Duration::from_millis(50);
/// RECONNECTING → CONNECTED after a simulated connection drop.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// What `qrExpiresAt` announces; the protocol says a QR is valid about 2 minutes. The existing
/// worker gives up on a QR that was not scanned by then (`Quirks::status_vocabulary`).
const QR_VALIDITY: Duration = Duration::from_secs(120);
/// Between SENT and DELIVERED, and between DELIVERED and READ.
const RECEIPT_DELAY: Duration = Duration::from_millis(20);

/// Where a session can fail from: anywhere it is trying to be or is connected.
const LIVE_STATUSES: &[SessionStatus] = &[
    SessionStatus::Init,
    SessionStatus::QrRequired,
    SessionStatus::Connected,
    SessionStatus::Reconnecting,
];

const EVERY_STATUS: &[SessionStatus] = &[
    SessionStatus::Init,
    SessionStatus::QrRequired,
    SessionStatus::Connected,
    SessionStatus::Disconnected,
    SessionStatus::Reconnecting,
    SessionStatus::Error,
];

/// Why a session operation was refused; `server` maps each to a status and an error code.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("session not found")]
    NotFound,
    #[error("session already exists on this worker")]
    AlreadyExists,
    #[error("this worker already holds its maximum number of sessions")]
    CapacityReached,
    /// The session's status here, `None` when it is not here at all.
    #[error("session is not connected")]
    NotConnected(Option<SessionStatus>),
    #[error("session is {0}")]
    WrongState(SessionStatus),
    #[error("simulated send failure")]
    SendFailed,
}

/// The answer to an accepted send.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SentMessage {
    /// The WhatsApp-side id.
    pub(crate) message_id: String,
    pub(crate) status: &'static str,
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) to: String,
    pub(crate) timestamp: String,
}

/// One session as `GET /api/sessions/{id}/status` and `GET /api/sessions` show it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SessionDetail {
    session_id: String,
    status: SessionStatus,
    phone_number: Option<String>,
    display_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    qr_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    qr_expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_name: Option<String>,
    last_activity: String,
}

impl SessionDetail {
    fn of(id: &SessionId, entry: &SessionEntry) -> Self {
        SessionDetail {
            session_id: id.to_string(),
            status: entry.status,
            phone_number: entry.phone_number.clone(),
            display_name: entry.display_name.clone(),
            qr_code: entry.qr_code.clone(),
            qr_expires_at: entry.qr_expires_at.map(iso),
            user_id: entry.user_id.clone(),
            session_name: entry.session_name.clone(),
            last_activity: iso(entry.last_activity),
        }
    }
}

/// The background tasks of one worker. Closing the set aborts them all and refuses new ones, so
/// nothing a killed worker started can still talk to the gateway.
#[derive(Default)]
pub(crate) struct Tasks {
    inner: Mutex<TaskSet>,
}

#[derive(Default)]
struct TaskSet {
    set: JoinSet<()>,
    closed: bool,
}

impl Tasks {
    /// Runs `task` in the background unless the set is closed.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut inner = lock(&self.inner);
        if inner.closed {
            return;
        }
        // Reap finished tasks so a long-running worker does not accumulate them.
        while let Some(finished) = inner.set.try_join_next() {
            if let Err(err) = finished
                && err.is_panic()
            {
                tracing::error!(error = %err, "a simulated worker task panicked");
            }
        }
        inner.set.spawn(task);
    }

    /// Aborts every task and waits until they are gone.
    pub(crate) async fn close(&self) {
        let mut set = {
            let mut inner = lock(&self.inner);
            inner.closed = true;
            std::mem::take(&mut inner.set)
        };
        set.shutdown().await;
    }

    /// Aborts every task without waiting (for `Drop`).
    pub(crate) fn abort_now(&self) {
        let mut inner = lock(&self.inner);
        inner.closed = true;
        inner.set.abort_all();
    }
}

/// One simulated worker at run time.
pub(crate) struct Worker {
    pub(crate) config: SimWorkerConfig,
    /// The URL the gateway reaches this worker at (what registration announces).
    pub(crate) endpoint: String,
    pub(crate) state: SimState,
    pub(crate) gateway: GatewayClient,
    pub(crate) tasks: Tasks,
    /// Session-status reports, delivered in order by one background task.
    reports: mpsc::UnboundedSender<SessionStatusReport>,
    /// The existing worker's rate limits, when its quirks ask for them.
    limits: Option<Limiters>,
    started_at: Instant,
    /// Session starts still to fail (`POST /sim/fail-starts/{n}`): a start the worker accepts
    /// as a request but cannot carry out (its WhatsApp client failed to initialise).
    failing_starts: std::sync::atomic::AtomicU32,
}

impl Worker {
    /// Builds the worker and starts its background work: the report queue, then registration
    /// (after `register_delay`, with retries) followed by heartbeats. The server must already be
    /// listening: the gateway probes `GET /health` while registering.
    pub(crate) fn launch(config: SimWorkerConfig, endpoint: String) -> anyhow::Result<Arc<Worker>> {
        let gateway =
            GatewayClient::new(&config.backend_url, &config.auth_token, &config.worker_id)?;
        let (reports, queue) = mpsc::unbounded_channel();
        let limits = config.quirks.rate_limits.as_ref().map(Limiters::new);
        let worker = Arc::new(Worker {
            config,
            endpoint,
            state: SimState::default(),
            gateway,
            tasks: Tasks::default(),
            reports,
            limits,
            started_at: Instant::now(),
            failing_starts: std::sync::atomic::AtomicU32::new(0),
        });
        worker
            .tasks
            .spawn(Arc::clone(&worker).deliver_session_reports(queue));
        worker
            .tasks
            .spawn(Arc::clone(&worker).register_then_heartbeat());
        Ok(worker)
    }

    // ----- rate limits and rules ------------------------------------------------------------

    /// Makes the next `count` session starts fail.
    pub(crate) fn fail_starts(&self, count: u32) {
        self.failing_starts
            .store(count, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether this start is one of those told to fail (and counts it).
    pub(crate) fn start_fails(&self) -> bool {
        self.failing_starts
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |left| left.checked_sub(1),
            )
            .is_ok()
    }

    /// Counts a session operation (start, restart, disconnect, logout, delete) of `caller`.
    pub(crate) fn admit_session_operation(
        &self,
        caller: &Caller,
        now: Instant,
    ) -> Result<(), Limited> {
        match &self.limits {
            Some(limits) => limits.session_operation(caller, now),
            None => Ok(()),
        }
    }

    /// Counts a send through `raw_session_id`.
    pub(crate) fn admit_send(&self, raw_session_id: &str, now: Instant) -> Result<(), Limited> {
        match &self.limits {
            Some(limits) => limits.send(raw_session_id, now),
            None => Ok(()),
        }
    }

    /// Counts any request but `GET /health` from `ip` (the production limit).
    pub(crate) fn admit_global(
        &self,
        ip: Option<std::net::IpAddr>,
        now: Instant,
    ) -> Result<(), Limited> {
        match &self.limits {
            Some(limits) => limits.global(ip, now),
            None => Ok(()),
        }
    }

    /// The value rules of send bodies.
    pub(crate) fn send_rules(&self) -> Rules {
        if self.config.quirks.strict_validation {
            Rules::RealWorker
        } else {
            Rules::Lenient
        }
    }

    // ----- sessions -------------------------------------------------------------------------

    /// `POST /api/sessions/start`: adds the session in `INIT` and starts logging it in.
    pub(crate) fn start_session(
        self: &Arc<Self>,
        id: SessionId,
        user_id: Option<String>,
        session_name: Option<String>,
    ) -> Result<(), SessionError> {
        let generation = {
            let mut sessions = self.state.sessions();
            let generation = sessions
                .insert(id.clone(), user_id, session_name, self.config.max_sessions)
                .map_err(|refused| match refused {
                    InsertRefused::AlreadyExists => SessionError::AlreadyExists,
                    InsertRefused::CapacityReached => SessionError::CapacityReached,
                })?;
            self.report_connecting(&id);
            generation
        };
        self.schedule_login(id, generation);
        Ok(())
    }

    /// `POST /api/sessions/{id}/restart`: back to `INIT`, then logs in again (without a QR when
    /// credentials are stored).
    pub(crate) fn restart_session(self: &Arc<Self>, id: &SessionId) -> Result<(), SessionError> {
        let generation = {
            let mut sessions = self.state.sessions();
            let generation = sessions
                .advance(id, None, EVERY_STATUS, SessionStatus::Init)
                .map(|entry| entry.generation)
                .ok_or(SessionError::NotFound)?;
            self.report_connecting(id);
            generation
        };
        self.schedule_login(id.clone(), generation);
        Ok(())
    }

    /// `POST /api/sessions/{id}/disconnect`: `DISCONNECTED`, credentials kept.
    pub(crate) fn disconnect_session(&self, id: &SessionId) -> Result<(), SessionError> {
        let mut sessions = self.state.sessions();
        sessions
            .advance(id, None, EVERY_STATUS, SessionStatus::Disconnected)
            .ok_or(SessionError::NotFound)?;
        self.report(self.status_report(id, SessionStatus::Disconnected));
        Ok(())
    }

    /// `POST /api/sessions/{id}/logout`: reported as `DISCONNECTED` with `loggedOutAt` (see
    /// [`Worker::logout_report`]), then the session and its credentials are gone.
    pub(crate) fn logout_session(&self, id: &SessionId) -> Result<(), SessionError> {
        self.log_out(id, false)
    }

    /// `POST /sim/sessions/{id}/logout-from-phone`: the user logged the session out on the
    /// phone; like a logout, with `loggedOutFromPhone: true`.
    pub(crate) fn logout_from_phone(&self, id: &SessionId) -> Result<(), SessionError> {
        self.log_out(id, true)
    }

    fn log_out(&self, id: &SessionId, from_phone: bool) -> Result<(), SessionError> {
        let mut sessions = self.state.sessions();
        sessions.remove(id).ok_or(SessionError::NotFound)?;
        CredentialStore::wipe(id);
        // Queued under the sessions lock so reports leave in the order of the transitions.
        self.report(self.logout_report(id, from_phone));
        Ok(())
    }

    /// On shutdown with `Quirks::logout_on_shutdown`: every session is logged out and its
    /// credentials wiped, each reported at once (the report queue is already stopped).
    pub(crate) async fn log_out_every_session(&self) {
        let reports: Vec<SessionStatusReport> = {
            let mut sessions = self.state.sessions();
            sessions
                .remove_all()
                .iter()
                .map(|id| {
                    CredentialStore::wipe(id);
                    self.logout_report(id, false)
                })
                .collect()
        };
        let deliveries = reports
            .iter()
            .map(|report| self.gateway.session_status(report));
        let outcomes = futures_util::future::join_all(deliveries).await;
        for (report, outcome) in reports.iter().zip(outcomes) {
            if let Err(err) = outcome {
                tracing::warn!(session_id = report.session_id, error = %err, "logout report on shutdown failed");
            }
        }
        tracing::info!(
            sessions = reports.len(),
            "logged out every session on shutdown"
        );
    }

    /// `POST /sim/sessions/{id}/fail`: the connection failed for good (until a restart). The
    /// existing worker reports that as `INIT`, an ideal one as `ERROR`. Returns the new status.
    pub(crate) fn fail_session(&self, id: &SessionId) -> Result<SessionStatus, SessionError> {
        let failed = if self.config.quirks.status_vocabulary {
            SessionStatus::Init
        } else {
            SessionStatus::Error
        };
        let mut sessions = self.state.sessions();
        if sessions.advance(id, None, LIVE_STATUSES, failed).is_none() {
            return Err(refusal(&sessions, id));
        }
        self.report(self.status_report(id, failed));
        Ok(failed)
    }

    /// `POST /sim/sessions/{id}/expire-qr`, or the existing worker's QR timeout (then at
    /// `generation`): the QR was not scanned in time. The existing worker gives up and reports
    /// `INIT`; an ideal one shows a fresh QR and keeps waiting for a scan. Returns the new status.
    pub(crate) fn expire_qr(
        self: &Arc<Self>,
        id: &SessionId,
        generation: Option<u64>,
    ) -> Result<SessionStatus, SessionError> {
        let mut sessions = self.state.sessions();
        let waiting = [SessionStatus::QrRequired];
        if self.config.quirks.status_vocabulary {
            if sessions
                .advance(id, generation, &waiting, SessionStatus::Init)
                .is_none()
            {
                return Err(refusal(&sessions, id));
            }
            self.report(self.status_report(id, SessionStatus::Init));
            return Ok(SessionStatus::Init);
        }
        let Some(entry) = sessions.advance(id, generation, &waiting, SessionStatus::QrRequired)
        else {
            return Err(refusal(&sessions, id));
        };
        let generation = self.new_qr(id, entry);
        drop(sessions);
        let worker = Arc::clone(self);
        let id = id.clone();
        self.tasks
            .spawn(async move { worker.wait_for_scan(&id, generation).await });
        Ok(SessionStatus::QrRequired)
    }

    /// `DELETE /api/sessions/{id}`: stops and forgets the session without a callback. The
    /// credentials stay in shared storage: the gateway uses this to fence a session that now
    /// belongs to another worker.
    pub(crate) fn delete_session(&self, id: &SessionId) -> Result<(), SessionError> {
        self.state
            .sessions()
            .remove(id)
            .map(drop)
            .ok_or(SessionError::NotFound)
    }

    /// `POST /sim/sessions/{id}/scan`: the phone scanned the QR; connected now.
    pub(crate) fn scan(&self, id: &SessionId) -> Result<(), SessionError> {
        let waiting_for_qr = [SessionStatus::Init, SessionStatus::QrRequired];
        if self.connect(id, None, &waiting_for_qr) {
            return Ok(());
        }
        match self.state.sessions().get(id).map(|entry| entry.status) {
            None => Err(SessionError::NotFound),
            Some(SessionStatus::Connected) => Ok(()),
            Some(other) => Err(SessionError::WrongState(other)),
        }
    }

    /// `POST /sim/sessions/{id}/drop`: the connection drops (`RECONNECTING`) and comes back
    /// (`CONNECTED`) after a moment, both reported.
    pub(crate) fn drop_connection(self: &Arc<Self>, id: &SessionId) -> Result<(), SessionError> {
        let generation = {
            let mut sessions = self.state.sessions();
            let advanced = sessions
                .advance(
                    id,
                    None,
                    &[SessionStatus::Connected],
                    SessionStatus::Reconnecting,
                )
                .map(|entry| entry.generation);
            let Some(generation) = advanced else {
                return Err(refusal(&sessions, id));
            };
            // Queued under the sessions lock so reports leave in the order of the transitions.
            self.report(self.status_report(id, SessionStatus::Reconnecting));
            generation
        };
        let worker = Arc::clone(self);
        let id = id.clone();
        self.tasks.spawn(async move {
            tokio::time::sleep(RECONNECT_DELAY).await;
            if !worker.config.quirks.status_vocabulary {
                worker.connect(&id, Some(generation), &[SessionStatus::Reconnecting]);
                return;
            }
            // The existing worker opens a new socket: "connecting", reported as INIT.
            let reopened = {
                let mut sessions = worker.state.sessions();
                let reopened = sessions
                    .advance(
                        &id,
                        Some(generation),
                        &[SessionStatus::Reconnecting],
                        SessionStatus::Init,
                    )
                    .map(|entry| entry.generation);
                if reopened.is_some() {
                    worker.report_connecting(&id);
                }
                reopened
            };
            if let Some(generation) = reopened {
                worker.connect(&id, Some(generation), &[SessionStatus::Init]);
            }
        });
        Ok(())
    }

    /// `GET /api/sessions/{id}/status`.
    pub(crate) fn session_detail(&self, id: &SessionId) -> Option<SessionDetail> {
        self.state
            .sessions()
            .get(id)
            .map(|entry| SessionDetail::of(id, entry))
    }

    /// `GET /api/sessions`.
    pub(crate) fn session_details(&self) -> Vec<SessionDetail> {
        self.state
            .sessions()
            .iter()
            .map(|(id, entry)| SessionDetail::of(id, entry))
            .collect()
    }

    /// Checks that a session can send or receive.
    pub(crate) fn ensure_connected(&self, id: &SessionId) -> Result<(), SessionError> {
        match self.state.sessions().get(id).map(|entry| entry.status) {
            Some(SessionStatus::Connected) => Ok(()),
            other => Err(SessionError::NotConnected(other)),
        }
    }

    /// Logs a session in from `INIT` (the caller reported [`Worker::report_connecting`]):
    /// straight to `CONNECTED` with stored credentials, otherwise a QR, then `CONNECTED` after
    /// `auto_connect` unless a scan came first.
    fn schedule_login(self: &Arc<Self>, id: SessionId, generation: u64) {
        let worker = Arc::clone(self);
        self.tasks.spawn(async move {
            if CredentialStore::has(&id) {
                tokio::time::sleep(STORED_CREDENTIALS_CONNECT_DELAY).await;
                worker.connect(&id, Some(generation), &[SessionStatus::Init]);
                return;
            }
            tokio::time::sleep(QR_DELAY).await;
            let Some(generation) = worker.show_qr(&id, generation) else {
                return;
            };
            worker.wait_for_scan(&id, generation).await;
        });
    }

    /// The existing worker reports the socket opening ("connecting") as `INIT`; an ideal worker
    /// says nothing until there is a QR or a connection. Called under the sessions lock, right
    /// after the transition to `INIT`.
    fn report_connecting(&self, id: &SessionId) {
        if self.config.quirks.status_vocabulary {
            self.report(self.status_report(id, SessionStatus::Init));
        }
    }

    /// A QR is shown (at `generation`): connects after `auto_connect` unless a scan came first,
    /// or, for the existing worker, gives up on the QR once it expired if that comes sooner.
    async fn wait_for_scan(self: &Arc<Self>, id: &SessionId, generation: u64) {
        let auto_connect = self.config.auto_connect;
        if self.config.quirks.status_vocabulary && auto_connect > QR_VALIDITY {
            tokio::time::sleep(QR_VALIDITY).await;
            // Refused when a scan or a restart came first: nothing to expire then.
            let _ = self.expire_qr(id, Some(generation));
            return;
        }
        tokio::time::sleep(auto_connect).await;
        self.connect(id, Some(generation), &[SessionStatus::QrRequired]);
    }

    /// `INIT` → `QR_REQUIRED` with a fresh QR, reported; returns the new generation.
    fn show_qr(&self, id: &SessionId, generation: u64) -> Option<u64> {
        let mut sessions = self.state.sessions();
        let entry = sessions.advance(
            id,
            Some(generation),
            &[SessionStatus::Init],
            SessionStatus::QrRequired,
        )?;
        Some(self.new_qr(id, entry))
    }

    /// Gives an entry that just moved to `QR_REQUIRED` a fresh QR and reports it; returns its
    /// generation. The caller holds the sessions lock, so reports leave in the order the
    /// transitions happened.
    fn new_qr(&self, id: &SessionId, entry: &mut SessionEntry) -> u64 {
        let qr_code = new_qr_code();
        entry.qr_code = Some(qr_code.clone());
        entry.qr_expires_at = Some(Utc::now() + QR_VALIDITY);
        self.report(SessionStatusReport {
            qr_code: Some(qr_code),
            ..self.status_report(id, SessionStatus::QrRequired)
        });
        entry.generation
    }

    /// → `CONNECTED` (from one of `from`, at `generation` when given), reported with the phone
    /// number and name; stores the credentials. Returns whether the transition happened.
    fn connect(&self, id: &SessionId, generation: Option<u64>, from: &[SessionStatus]) -> bool {
        let mut sessions = self.state.sessions();
        let Some(entry) = sessions.advance(id, generation, from, SessionStatus::Connected) else {
            return false;
        };
        let phone_number = phone_number_for(id);
        let display_name = display_name_for(id);
        entry.phone_number = Some(phone_number.clone());
        entry.display_name = Some(display_name.clone());
        CredentialStore::store(id);
        self.report(SessionStatusReport {
            phone_number: Some(phone_number),
            display_name: Some(display_name),
            ..self.status_report(id, SessionStatus::Connected)
        });
        true
    }

    /// The gateway says another worker owns the session now: stop it here (credentials stay,
    /// the new owner needs them).
    fn fenced(&self, session_id: &str) {
        if let Ok(id) = SessionId::parse(session_id)
            && self.state.sessions().remove(&id).is_some()
        {
            tracing::info!(
                session_id,
                "fenced off by the gateway; session stopped locally"
            );
        }
    }

    // ----- messages -------------------------------------------------------------------------

    /// `POST /api/{sessionId}/send`, after validation. Sends through one session are served one
    /// at a time in arrival order; the receipts follow in the background.
    pub(crate) async fn send(
        self: &Arc<Self>,
        id: &SessionId,
        gateway_message_id: Option<String>,
        send: ValidatedSend,
        body: Value,
    ) -> Result<SentMessage, SessionError> {
        let turn = self
            .state
            .sessions()
            .get(id)
            .map(|entry| Arc::clone(&entry.send_turn))
            .ok_or(SessionError::NotConnected(None))?;
        let _turn = turn.lock().await;
        self.ensure_connected(id)?;
        if !self.config.send_latency.is_zero() {
            tokio::time::sleep(self.config.send_latency).await;
        }
        if self.config.fail_rate > 0.0 && rand::random_bool(self.config.fail_rate) {
            return Err(SessionError::SendFailed);
        }
        let whatsapp_id = new_whatsapp_message_id();
        {
            // Recorded under the sessions lock: a disconnect cannot slip in between the check and
            // the record.
            let mut sessions = self.state.sessions();
            let entry = sessions
                .get_mut(id)
                .ok_or(SessionError::NotConnected(None))?;
            if entry.status != SessionStatus::Connected {
                return Err(SessionError::NotConnected(Some(entry.status)));
            }
            entry.last_activity = Utc::now();
            self.state.record_send(ReceivedSend {
                session_id: id.to_string(),
                message_id: gateway_message_id.clone(),
                body,
                received_at_us: Utc::now().timestamp_micros(),
            });
        }
        if self.config.receipts && send.kind.has_receipts() {
            let reported_id = gateway_message_id.unwrap_or_else(|| whatsapp_id.clone());
            self.spawn_receipts(id.to_string(), reported_id);
        }
        Ok(SentMessage {
            message_id: whatsapp_id,
            status: "sent",
            kind: send.kind.as_str(),
            to: send.to,
            timestamp: now_iso(),
        })
    }

    /// SENT, DELIVERED, READ for one message, in that order.
    fn spawn_receipts(self: &Arc<Self>, session_id: String, message_id: String) {
        let worker = Arc::clone(self);
        self.tasks.spawn(async move {
            for status in ["SENT", "DELIVERED", "READ"] {
                if status != "SENT" {
                    tokio::time::sleep(RECEIPT_DELAY).await;
                }
                let now = now_iso();
                let report = MessageStatusReport {
                    session_id: session_id.clone(),
                    message_id: message_id.clone(),
                    status,
                    delivered_at: (status == "DELIVERED").then(|| now.clone()),
                    read_at: (status == "READ").then(|| now.clone()),
                    timestamp: now,
                };
                match worker.gateway.message_status(&report).await {
                    Ok(()) => {}
                    Err(err) if err.is_fencing() => {
                        worker.fenced(&session_id);
                        return;
                    }
                    Err(err) => tracing::warn!(
                        session_id, message_id, status, error = %err,
                        "message-status callback failed"
                    ),
                }
            }
        });
    }

    /// `POST /sim/sessions/{id}/inbound`: a contact writes to the session; forwarded to the
    /// gateway in the background. Returns the new message id.
    pub(crate) fn inbound(
        self: &Arc<Self>,
        id: &SessionId,
        from: String,
        kind: String,
        message: Option<String>,
    ) -> Result<String, SessionError> {
        self.ensure_connected(id)?;
        let message_id = new_inbound_message_id();
        let report = InboundMessageReport {
            session_id: id.to_string(),
            message_id: message_id.clone(),
            from,
            kind,
            message,
            timestamp: now_iso(),
        };
        let worker = Arc::clone(self);
        self.tasks.spawn(async move {
            if let Err(err) = worker.gateway.message_received(&report).await {
                tracing::warn!(session_id = report.session_id, error = %err, "message-received callback failed");
            }
        });
        Ok(message_id)
    }

    // ----- health, heartbeat, registration --------------------------------------------------

    /// `GET /health`, at the top level (not enveloped), as the protocol lists it.
    pub(crate) fn health(&self) -> Value {
        let sessions = self.state.sessions();
        let total = sessions.len();
        let connected = sessions.count(SessionStatus::Connected);
        // Sessions that will not come back on their own; RECONNECTING and INIT are on their way.
        let disconnected =
            sessions.count(SessionStatus::Disconnected) + sessions.count(SessionStatus::Error);
        let qr_required = sessions.count(SessionStatus::QrRequired);
        drop(sessions);
        let metrics = self.metrics(total, connected);
        json!({
            "status": "healthy",
            "workerId": self.config.worker_id,
            "sessions": {
                "total": total,
                "connected": connected,
                "disconnected": disconnected,
                "qrRequired": qr_required,
                "maxSessions": self.config.max_sessions,
            },
            "resources": { "cpu": metrics.cpu_usage, "memory": metrics.memory_usage },
            "version": super::VERSION,
        })
    }

    /// The heartbeat body: every session (phone and name `null` unless connected) and metrics.
    fn heartbeat(&self) -> Heartbeat {
        let sessions = self.state.sessions();
        let listed: Vec<HeartbeatSession> = sessions
            .iter()
            .map(|(id, entry)| HeartbeatSession {
                session_id: id.to_string(),
                status: entry.status,
                phone_number: entry.phone_number.clone(),
                display_name: entry.display_name.clone(),
                last_activity: iso(entry.last_activity),
            })
            .collect();
        let total = sessions.len();
        let connected = sessions.count(SessionStatus::Connected);
        drop(sessions);
        Heartbeat {
            sessions: listed,
            metrics: self.metrics(total, connected),
            last_activity: now_iso(),
        }
    }

    /// Synthetic. Like the existing worker (`Quirks::node_metrics`): a random CPU figure from 30
    /// to 50, and a memory figure shaped like Node's heap-used percentage (mostly between 55 and
    /// 90, creeping up with the sessions). Otherwise: a little CPU and memory per session.
    fn metrics(&self, total: usize, connected: usize) -> HeartbeatMetrics {
        let (cpu_usage, memory_usage) = if self.config.quirks.node_metrics {
            let heap_used_percent = (55 + total / 10 + rand::random_range(0..=20_usize)).min(95);
            (
                f64::from(rand::random_range(30..=50_u32)),
                heap_used_percent as f64,
            )
        } else {
            (
                (1.0 + 0.1 * connected as f64).min(100.0),
                (10.0 + 0.5 * total as f64).min(100.0),
            )
        };
        HeartbeatMetrics {
            cpu_usage,
            memory_usage,
            uptime: self.started_at.elapsed().as_secs(),
            message_count: self.state.message_count() as u64,
            total_sessions: total as u64,
            active_sessions: connected as u64,
        }
    }

    /// Registers (after `register_delay`, `1 + register_retries` attempts), then heartbeats
    /// forever. Heartbeats start even when every attempt failed: a gateway that answers a
    /// heartbeat with 404 gets a new registration.
    async fn register_then_heartbeat(self: Arc<Self>) {
        if !self.config.register_delay.is_zero() {
            tokio::time::sleep(self.config.register_delay).await;
        }
        let attempts = self.config.register_retries.saturating_add(1);
        for attempt in 1..=attempts {
            match self.register_once().await {
                Ok(()) => break,
                Err(err) if attempt < attempts => {
                    tracing::warn!(attempt, attempts, error = %err, "registration failed; retrying");
                    tokio::time::sleep(self.config.register_retry_interval).await;
                }
                Err(err) => {
                    tracing::error!(attempts, error = %err, "registration failed; giving up until a heartbeat is answered 404");
                }
            }
        }
        self.heartbeat_loop().await;
    }

    /// One registration; starts recovery when the gateway asks for it.
    async fn register_once(self: &Arc<Self>) -> Result<(), GatewayError> {
        let registered = self
            .gateway
            .register(&Registration {
                worker_id: &self.config.worker_id,
                endpoint: &self.endpoint,
                max_sessions: self.config.max_sessions,
                description: "wa-gateway simulated worker",
                version: super::VERSION,
                environment: "TESTING",
            })
            .await?;
        tracing::info!(
            worker_id = self.config.worker_id,
            recovery_required = registered.recovery_required,
            "registered with the gateway"
        );
        if registered.recovery_required {
            self.tasks.spawn(Arc::clone(self).recover());
        }
        Ok(())
    }

    /// The first heartbeat goes out one interval after registration, like the real worker.
    async fn heartbeat_loop(self: &Arc<Self>) {
        // `interval` panics on a zero period.
        let period = self.config.heartbeat_interval.max(Duration::from_millis(1));
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match self.gateway.heartbeat(&self.heartbeat()).await {
                Ok(()) => {}
                Err(err) if err.is_not_found() => {
                    tracing::info!("the gateway does not know this worker; registering again");
                    if let Err(err) = self.register_once().await {
                        tracing::warn!(error = %err, "re-registration failed");
                    }
                }
                Err(err) => tracing::warn!(error = %err, "heartbeat failed"),
            }
        }
    }

    /// Restores the sessions the gateway says this worker owns, each reported through
    /// session-status callbacks, then posts the recovery report its quirks call for. Restored
    /// sessions count as having stored credentials (they live in storage shared by the fleet)
    /// and connect without a QR, unless this process saw them wiped by a logout: those need a
    /// new QR scan, as on the existing worker after its logout on shutdown.
    async fn recover(self: Arc<Self>) {
        let assigned = match self.gateway.assigned_sessions().await {
            Ok(assigned) => assigned,
            Err(err) => {
                tracing::warn!(error = %err, "could not fetch the assigned sessions; no recovery");
                return;
            }
        };
        let total = assigned.len();
        let mut outcomes = Vec::with_capacity(total);
        let mut restoring = Vec::new();
        for session in assigned {
            let id = match SessionId::parse(&session.session_id) {
                Ok(id) => id,
                Err(err) => {
                    outcomes.push((session.session_id, Recovery::Error(err.to_string())));
                    continue;
                }
            };
            let logged_out = CredentialStore::was_wiped(&id);
            if !logged_out {
                CredentialStore::store(&id);
            }
            let inserted = {
                let mut sessions = self.state.sessions();
                let inserted = sessions.insert(
                    id.clone(),
                    session.user_id,
                    session.session_name,
                    self.config.max_sessions,
                );
                if inserted.is_ok() {
                    self.report_connecting(&id);
                }
                inserted
            };
            match inserted {
                Ok(generation) if logged_out => {
                    self.schedule_login(id.clone(), generation);
                    let needs_qr = "logged out: the session needs a new QR scan".to_owned();
                    outcomes.push((id.to_string(), Recovery::Failed(needs_qr)));
                }
                Ok(generation) => restoring.push((id, generation)),
                Err(InsertRefused::AlreadyExists) => {
                    outcomes.push((id.to_string(), self.recovery_of(&id)));
                }
                Err(InsertRefused::CapacityReached) => outcomes.push((
                    id.to_string(),
                    Recovery::Error(SessionError::CapacityReached.to_string()),
                )),
            }
        }
        if !restoring.is_empty() {
            tokio::time::sleep(STORED_CREDENTIALS_CONNECT_DELAY).await;
        }
        for (id, generation) in restoring {
            self.connect(&id, Some(generation), &[SessionStatus::Init]);
            outcomes.push((id.to_string(), self.recovery_of(&id)));
        }
        self.report_recovery(total, outcomes).await;
    }

    /// How the recovery of a session here went: connected, here in another state (someone
    /// restarted or logged it out meanwhile), or gone.
    fn recovery_of(&self, id: &SessionId) -> Recovery {
        match self.state.sessions().get(id).map(|entry| entry.status) {
            Some(SessionStatus::Connected) => Recovery::Recovered { at: now_iso() },
            Some(other) => Recovery::Skipped(format!("session is {other} on this worker")),
            None => Recovery::Failed("session vanished during recovery".to_owned()),
        }
    }

    /// Posts `…/sessions/recovery-status` in the shape of `Quirks::recovery_report`, or nothing.
    async fn report_recovery(&self, total: usize, outcomes: Vec<(String, Recovery)>) {
        let count = |wanted: fn(&Recovery) -> bool| {
            outcomes
                .iter()
                .filter(|(_, outcome)| wanted(outcome))
                .count() as u64
        };
        let successful = count(|outcome| matches!(outcome, Recovery::Recovered { .. }));
        let skipped = count(|outcome| matches!(outcome, Recovery::Skipped(_)));
        let failed = count(|outcome| matches!(outcome, Recovery::Failed(_) | Recovery::Error(_)));
        let total = total as u64;
        let summary = RecoverySummary {
            total_sessions: total,
            successful_recoveries: successful,
            failed_recoveries: failed,
            skipped_recoveries: skipped,
        };
        let results = |spelling: fn(&Recovery) -> &'static str| -> Vec<RecoveryResult> {
            outcomes
                .iter()
                .map(|(session_id, outcome)| outcome.result(session_id, spelling))
                .collect()
        };
        let posted = match self.config.quirks.recovery_report {
            RecoveryReportMode::None => {
                tracing::info!(total, successful, failed, "recovery done; not reported");
                return;
            }
            RecoveryReportMode::SummaryOnly => {
                let report = SummarizedRecoveryReport {
                    recovery_results: Vec::new(),
                    summary,
                };
                self.gateway.recovery_status(&report).await
            }
            RecoveryReportMode::LowerCase => {
                let report = SummarizedRecoveryReport {
                    recovery_results: results(Recovery::lower_case),
                    summary,
                };
                self.gateway.recovery_status(&report).await
            }
            RecoveryReportMode::Full => {
                let report = RecoveryReport {
                    recovery_results: results(Recovery::upper_case),
                    total_sessions: total,
                    successful_recoveries: successful,
                    failed_recoveries: failed,
                };
                self.gateway.recovery_status(&report).await
            }
        };
        match posted {
            Ok(()) => tracing::info!(total, successful, failed, "recovery reported"),
            Err(err) => tracing::warn!(error = %err, "could not report the recovery"),
        }
    }

    // ----- reports --------------------------------------------------------------------------

    /// A session-status report with only the common fields set. The existing worker names
    /// itself only when it shows a QR (`Quirks::callbacks_without_worker_id`).
    fn status_report(&self, id: &SessionId, status: SessionStatus) -> SessionStatusReport {
        let names_itself =
            !self.config.quirks.callbacks_without_worker_id || status == SessionStatus::QrRequired;
        SessionStatusReport {
            session_id: id.to_string(),
            status,
            timestamp: now_iso(),
            worker_id: names_itself.then(|| self.config.worker_id.clone()),
            qr_code: None,
            phone_number: None,
            display_name: None,
            reason: None,
            logged_out_at: None,
            logged_out_from_phone: None,
        }
    }

    /// A logout: `DISCONNECTED` with `loggedOutAt` (and `loggedOutFromPhone: true` when the
    /// phone did it), never `LOGGED_OUT`. An ideal worker also says `reason: "LOGGED_OUT"`.
    fn logout_report(&self, id: &SessionId, from_phone: bool) -> SessionStatusReport {
        let now = now_iso();
        SessionStatusReport {
            reason: (!self.config.quirks.status_vocabulary).then_some("LOGGED_OUT"),
            logged_out_at: Some(now.clone()),
            logged_out_from_phone: from_phone.then_some(true),
            timestamp: now,
            ..self.status_report(id, SessionStatus::Disconnected)
        }
    }

    /// Queues a session-status report. Fails only once the worker is stopped, when nobody is
    /// left to tell.
    fn report(&self, report: SessionStatusReport) {
        let _ = self.reports.send(report);
    }

    /// Delivers session-status reports one after the other, in the order they were queued.
    async fn deliver_session_reports(
        self: Arc<Self>,
        mut queue: mpsc::UnboundedReceiver<SessionStatusReport>,
    ) {
        while let Some(report) = queue.recv().await {
            match self.gateway.session_status(&report).await {
                Ok(()) => {}
                Err(err) if err.is_fencing() => self.fenced(&report.session_id),
                Err(err) => tracing::warn!(
                    session_id = report.session_id,
                    status = %report.status,
                    error = %err,
                    "session-status callback failed"
                ),
            }
        }
    }
}

/// How the recovery of one assigned session went.
#[derive(Debug)]
enum Recovery {
    /// Connected here.
    Recovered { at: String },
    /// Here, but in another state.
    Skipped(String),
    /// Not connected and not coming back without help (gone, or needs a QR).
    Failed(String),
    /// Could not even be tried (an invalid id, no capacity left).
    Error(String),
}

impl Recovery {
    /// The protocol's spelling.
    fn upper_case(&self) -> &'static str {
        match self {
            Recovery::Recovered { .. } => "SUCCESS",
            Recovery::Skipped(_) => "SKIPPED",
            Recovery::Failed(_) | Recovery::Error(_) => "FAILED",
        }
    }

    /// The existing worker's spelling; it has no word for "skipped".
    fn lower_case(&self) -> &'static str {
        match self {
            Recovery::Recovered { .. } => "recovered",
            Recovery::Skipped(_) | Recovery::Failed(_) => "failed",
            Recovery::Error(_) => "error",
        }
    }

    fn result(&self, session_id: &str, spelling: fn(&Recovery) -> &'static str) -> RecoveryResult {
        let (error, recovered_at) = match self {
            Recovery::Recovered { at } => (None, Some(at.clone())),
            Recovery::Skipped(why) | Recovery::Failed(why) | Recovery::Error(why) => {
                (Some(why.clone()), None)
            }
        };
        RecoveryResult {
            session_id: session_id.to_owned(),
            status: spelling(self),
            error,
            recovered_at,
        }
    }
}

/// Why a transition of `id` was refused: it is not here, or not in a state that allows it.
fn refusal(sessions: &Sessions, id: &SessionId) -> SessionError {
    match sessions.get(id) {
        None => SessionError::NotFound,
        Some(entry) => SessionError::WrongState(entry.status),
    }
}

fn random_text(length: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(length)
        .map(char::from)
        .collect()
}

/// Shaped like a Baileys QR payload: `2@<ref>,<noise key>,<identity key>,<adv secret>`.
fn new_qr_code() -> String {
    format!(
        "2@{},{},{},{}",
        random_text(60),
        random_text(44),
        random_text(44),
        random_text(44)
    )
}

/// Shaped like an id of a message sent from Baileys: `3EB0` and 16 hex digits.
fn new_whatsapp_message_id() -> String {
    format!("3EB0{:016X}", rand::random::<u64>())
}

/// Shaped like an id of a message sent from a phone.
fn new_inbound_message_id() -> String {
    format!("3A{:016X}", rand::random::<u64>())
}
