//! The worker fleet and session orchestration: registration and liveness of workers, placement of
//! sessions, routing of every session call to its owner, status reports with fencing, and the
//! migration of sessions off dead or drained workers.
//!
//! The store is the source of truth for ownership: `sessions.worker_id` + `sessions.epoch`. Every
//! change of owner is a compare-and-set on the epoch ([`Store::assign_session`]), made *before*
//! the session is started on the new worker, so at any instant exactly one worker owns a session
//! and reports from any other worker are fenced off (and that worker is told to stop it).

pub mod client;
pub mod events;
pub mod jobs;
pub mod migration;
pub mod placement;
pub mod qr;
pub mod routing;

use std::time::Duration;

use serde_json::Value;

use self::client::{OnWorker, Probe, WorkerCallError, WorkerClient};
use self::events::{SessionEvent, SessionEvents};
use self::migration::{MigrateSession, MigrationQueue};
use self::routing::{Route, RouteCache};
use crate::domain::{InvalidInput, SessionId, SessionStatus, WorkerStatus, ms_to_rfc3339, now_ms};
use crate::store::{
    Session, SessionReport, Store, StoreError, Worker, WorkerMetricsSample, WorkerRegistration,
};

/// Why a fleet operation failed; the HTTP layer maps each to a status and code.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A field is invalid.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// No such worker or session (or not the caller's).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A state conflict (duplicate worker, worker not empty, ...).
    #[error("{message}")]
    Conflict {
        /// Stable code.
        code: &'static str,
        /// Explanation.
        message: String,
    },
    /// No healthy worker has room.
    #[error("no healthy worker with free capacity is available")]
    NoWorkerAvailable,
    /// The worker could not be reached or failed.
    #[error("worker call failed: {0}")]
    Worker(#[from] WorkerCallError),
    /// The report came from a worker that does not own the session's current epoch.
    #[error("worker {worker_id} does not own session {session_id}")]
    NotOwner {
        /// Reporting worker.
        worker_id: String,
        /// Session.
        session_id: String,
    },
    /// The store cannot write (or answer) now; retrying later can succeed.
    #[error("store unavailable: {0:#}")]
    StoreUnavailable(anyhow::Error),
    /// Store failure or bug.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<StoreError> for FleetError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => FleetError::NotFound("resource"),
            StoreError::Conflict(what) => FleetError::Conflict {
                code: "CONFLICT",
                message: what.to_owned(),
            },
            StoreError::Unavailable(e) => FleetError::StoreUnavailable(e),
            StoreError::Unexpected(e) => FleetError::Unexpected(e),
        }
    }
}

/// Tunables of the fleet.
#[derive(Clone, Copy, Debug)]
pub struct FleetSettings {
    /// After this long without a heartbeat a worker is OFFLINE (healthy probes do not extend
    /// it; three refused probes in a row end it early).
    pub heartbeat_timeout: Duration,
    /// How often liveness is checked.
    pub monitor_interval: Duration,
    /// How often workers are probed with `GET /health`.
    pub probe_interval: Duration,
    /// How long metrics samples are kept.
    pub metrics_retention: Duration,
    /// A session missing from its owner's heartbeats this long after its placement is
    /// started there again.
    pub reconcile_after: Duration,
}

/// What [`Fleet::connect`] achieved.
#[derive(Debug)]
pub enum Connected {
    /// The worker started the session (its QR or connection follows by callback).
    Started(Session),
    /// The session is placed, but its worker is rate limiting session starts: the start is
    /// queued on that worker and happens by itself.
    Queued {
        /// The session as placed.
        session: Session,
        /// The worker's `Retry-After`, if it gave one.
        retry_after: Option<Duration>,
    },
}

/// A worker's registration as received.
#[derive(Debug)]
pub struct RegisterWorker {
    /// Worker id.
    pub worker_id: String,
    /// Base URL.
    pub endpoint: String,
    /// Capacity.
    pub max_sessions: i64,
    /// Free text.
    pub description: Option<String>,
    /// Version.
    pub version: Option<String>,
    /// Environment.
    pub environment: Option<String>,
}

/// What a registration answers.
#[derive(Debug)]
pub struct Registered {
    /// The stored worker.
    pub worker: Worker,
    /// Whether the worker still owns live sessions it should restore.
    pub recovery_required: bool,
    /// How many.
    pub assigned_session_count: usize,
}

/// One session as a worker lists it in a heartbeat.
#[derive(Debug, Clone)]
pub struct ReportedSession {
    /// Session id.
    pub session_id: String,
    /// Status as the worker spells it (may be `LOGGED_OUT`).
    pub status: Option<String>,
    /// Phone, null when not connected.
    pub phone_number: Option<String>,
    /// Name, null when not connected.
    pub display_name: Option<String>,
}

/// A `session-status` callback.
#[derive(Debug, Clone)]
pub struct StatusReport {
    /// Session id.
    pub session_id: String,
    /// Status as the worker spells it.
    pub status: String,
    /// QR string.
    pub qr_code: Option<String>,
    /// Phone.
    pub phone_number: Option<String>,
    /// Name.
    pub display_name: Option<String>,
    /// Reporting worker, when the worker says.
    pub worker_id: Option<String>,
    /// Why (e.g. logged out).
    pub reason: Option<String>,
    /// Logged-out marker.
    pub logged_out: bool,
}

/// Translates the worker's status spelling; `LOGGED_OUT` is a disconnection with wiped credentials.
pub fn parse_reported_status(raw: &str) -> Result<(SessionStatus, bool), InvalidInput> {
    match raw {
        "LOGGED_OUT" => Ok((SessionStatus::Disconnected, true)),
        other => other
            .parse::<SessionStatus>()
            .map(|status| (status, false))
            .map_err(|problem| InvalidInput::new("status", problem)),
    }
}

/// Refused probes in a row after which an ONLINE worker is OFFLINE: a process that is gone
/// refuses every connection, and with probes every second this is about three seconds.
pub const REFUSED_PROBES_TO_OFFLINE: u32 = 3;

/// One worker's recent probes, in this process.
#[derive(Debug, Default)]
struct ProbeState {
    /// Connections refused in a row.
    refused_in_row: u32,
    /// Whether the last probe found it healthy (`None`: not probed yet).
    healthy: Option<bool>,
    /// When its probe state was last written to the store (Unix ms).
    recorded_at: i64,
}

/// [`Fleet::hearing_since_ms`] while heartbeats cannot be recorded: every worker counts as heard.
const DEAF: i64 = i64::MAX;

/// The fleet: shared by the HTTP handlers, the monitor and the migration jobs.
#[derive(Debug)]
pub struct Fleet {
    store: Store,
    client: WorkerClient,
    routes: RouteCache,
    events: SessionEvents,
    migrations: MigrationQueue,
    settings: FleetSettings,
    /// Per stuck worker, the job window in which its sessions were last re-enqueued.
    reevacuated: std::sync::Mutex<std::collections::HashMap<String, i64>>,
    /// Per worker, what this process's probes found lately.
    probes: std::sync::Mutex<std::collections::HashMap<String, ProbeState>>,
    /// When this process started hearing heartbeats (Unix ms; 0 until
    /// [`Fleet::start_hearing`], [`DEAF`] while the store cannot record them). Silence before
    /// it says nothing about a worker: a gateway that was down (or could not write) longer
    /// than the timeout must not take its own outage for a fleet failure, so no worker goes
    /// OFFLINE before a full timeout has passed since then.
    hearing_since_ms: std::sync::atomic::AtomicI64,
    /// This gateway's listen address, once bound (see [`Fleet::listening_on`]).
    listen_addr: std::sync::OnceLock<std::net::SocketAddr>,
}

impl Fleet {
    /// Builds the fleet over shared components.
    pub fn new(
        store: Store,
        client: WorkerClient,
        routes: RouteCache,
        migrations: MigrationQueue,
        settings: FleetSettings,
    ) -> Self {
        Self {
            store,
            client,
            routes,
            events: SessionEvents::default(),
            migrations,
            settings,
            reevacuated: Default::default(),
            probes: Default::default(),
            hearing_since_ms: std::sync::atomic::AtomicI64::new(0),
            listen_addr: std::sync::OnceLock::new(),
        }
    }

    /// Marks the moment this process can receive heartbeats (its listener is bound and the
    /// monitor runs); liveness counts from then. Called once by the fleet monitor at start.
    pub fn start_hearing(&self) {
        self.hearing_since_ms
            .store(now_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    /// A heartbeat could not be recorded because the store is unavailable (a full disk, a lost
    /// database): until one is recorded again, this process hears nobody, so it judges nobody.
    fn lose_hearing(&self) {
        self.hearing_since_ms
            .store(DEAF, std::sync::atomic::Ordering::Relaxed);
    }

    /// A heartbeat was recorded: if the store had been unavailable, hearing starts again now,
    /// and every worker gets a full timeout from here to be heard.
    fn heard(&self) {
        let _ = self.hearing_since_ms.compare_exchange(
            DEAF,
            now_ms(),
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Whether `worker` has shown life within the timeout, where this process cannot have
    /// heard anything before it started hearing.
    fn is_alive(&self, worker: &Worker, now: i64) -> bool {
        let hearing_since = self
            .hearing_since_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        let seen = worker.last_seen_at().unwrap_or(i64::MIN).max(hearing_since);
        now.saturating_sub(seen) <= self.timeout_ms()
    }

    /// Tunables.
    pub fn settings(&self) -> FleetSettings {
        self.settings
    }

    /// The worker client.
    pub fn client(&self) -> &WorkerClient {
        &self.client
    }

    /// The dashboard event hub.
    pub fn events(&self) -> &SessionEvents {
        &self.events
    }

    /// The migration queue.
    pub fn migrations(&self) -> &MigrationQueue {
        &self.migrations
    }

    fn timeout_ms(&self) -> i64 {
        self.settings.heartbeat_timeout.as_millis() as i64
    }

    // ----- worker-facing -------------------------------------------------------------------

    /// Registers (or re-registers) a worker after probing its `/health`.
    pub async fn register(&self, registration: RegisterWorker) -> Result<Registered, FleetError> {
        validate_worker_id(&registration.worker_id)?;
        let endpoint = normalize_endpoint(&registration.endpoint)?;
        if registration.max_sessions < 1 || registration.max_sessions > 100_000 {
            return Err(InvalidInput::new("maxSessions", "must be between 1 and 100000").into());
        }
        let now = now_ms();
        if let Some(other) = self.store.worker_by_endpoint(&endpoint).await?
            && other.id != registration.worker_id
            && other.status != WorkerStatus::Offline
            && other.is_alive(now, self.timeout_ms())
        {
            return Err(FleetError::Conflict {
                code: "ENDPOINT_IN_USE",
                message: format!("endpoint {endpoint} belongs to live worker {}", other.id),
            });
        }
        match self.store.worker_by_id(&registration.worker_id).await {
            Ok(existing)
                if existing.endpoint != endpoint
                    && existing.status != WorkerStatus::Offline
                    && existing.is_alive(now, self.timeout_ms()) =>
            {
                return Err(FleetError::Conflict {
                    code: "WORKER_ID_IN_USE",
                    message: format!(
                        "worker id {} is live at another endpoint ({})",
                        existing.id, existing.endpoint
                    ),
                });
            }
            Ok(_) | Err(StoreError::NotFound) => {}
            Err(err) => return Err(err.into()),
        }
        self.probe(&endpoint).await?;
        // A dead worker's endpoint may still be recorded under its old id: free it.
        if let Some(stale) = self.store.worker_by_endpoint(&endpoint).await?
            && stale.id != registration.worker_id
        {
            self.retire_worker(&stale, "endpoint taken over by a new worker")
                .await?;
        }
        let worker = self
            .store
            .upsert_worker(&WorkerRegistration {
                id: &registration.worker_id,
                endpoint: &endpoint,
                max_sessions: registration.max_sessions,
                description: registration.description.as_deref(),
                version: registration.version.as_deref(),
                environment: registration.environment.as_deref(),
            })
            .await?;
        let assigned = self.store.sessions_on_worker(&worker.id).await?;
        tracing::info!(worker = %worker.id, endpoint = %worker.endpoint, assigned = assigned.len(), "worker registered");
        Ok(Registered {
            recovery_required: !assigned.is_empty(),
            assigned_session_count: assigned.len(),
            worker,
        })
    }

    /// The gateway's own listen address (set once it is bound): an endpoint there is refused,
    /// so a token holder cannot make the gateway call itself.
    pub fn listening_on(&self, addr: std::net::SocketAddr) {
        let _ = self.listen_addr.set(addr);
    }

    /// Probes `GET {endpoint}/health` of a would-be worker (`endpoint` as
    /// [`normalize_endpoint`] made it): `400` for the gateway's own address, `409
    /// WORKER_UNREACHABLE` when it does not answer. Why it did not answer goes to the log, not
    /// to the caller: the answer must not make the gateway a port scanner for token holders.
    pub async fn probe(&self, endpoint: &str) -> Result<Value, FleetError> {
        if self.is_own_address(endpoint).await {
            return Err(
                InvalidInput::new("endpoint", "must not be the gateway's own address").into(),
            );
        }
        self.client.health(endpoint).await.map_err(|err| {
            tracing::warn!(endpoint, error = %err, "a would-be worker did not answer its health probe");
            FleetError::Conflict {
                code: "WORKER_UNREACHABLE",
                message: "the worker did not answer GET /health at its endpoint".to_owned(),
            }
        })
    }

    /// Whether `endpoint` (normalised) names this gateway's listener: same port, and a host that
    /// resolves to a loopback or unspecified address, to the listen address, or (listening on
    /// every interface) to an address of this machine.
    async fn is_own_address(&self, endpoint: &str) -> bool {
        let Some(own) = self.listen_addr.get().copied() else {
            return false;
        };
        let Some((host, port)) = endpoint_host_port(endpoint) else {
            return false;
        };
        if port != own.port() {
            return false;
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let resolved = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::lookup_host((host.as_str(), port)),
        )
        .await;
        let Ok(Ok(addresses)) = resolved else {
            // Unresolvable: the probe cannot reach it either.
            return false;
        };
        addresses.into_iter().any(|address| {
            let ip = address.ip();
            ip.is_loopback()
                || ip.is_unspecified()
                || ip == own.ip()
                || (own.ip().is_unspecified() && std::net::UdpSocket::bind((ip, 0)).is_ok())
        })
    }

    /// Records a heartbeat and reconciles the sessions it lists (`None`: a heartbeat without a
    /// session list, which tells nothing about them). Sessions the worker lists but does not
    /// own are fenced: the worker is told to stop them. Sessions it owns and should run but
    /// does not list, past [`FleetSettings::reconcile_after`] since their placement, are
    /// started there again: a start that failed or met a `429`, or a worker that restarted
    /// without them.
    pub async fn heartbeat(
        &self,
        worker_id: &str,
        sample: &WorkerMetricsSample,
        sessions: Option<&[ReportedSession]>,
    ) -> Result<(), FleetError> {
        let recorded = match self.store.record_heartbeat(worker_id, sample).await {
            Ok(recorded) => {
                self.heard();
                recorded
            }
            Err(err) => {
                if matches!(err, StoreError::Unavailable(_)) {
                    self.lose_hearing();
                }
                return Err(err.into());
            }
        };
        if !recorded {
            return Err(FleetError::NotFound("worker"));
        }
        let worker = self.store.worker_by_id(worker_id).await?;
        // One read for the whole heartbeat, not one per listed session.
        let owned: std::collections::HashMap<String, Session> = self
            .store
            .sessions_on_worker(worker_id)
            .await?
            .into_iter()
            .map(|session| (session.id.clone(), session))
            .collect();
        let Some(sessions) = sessions else {
            return Ok(());
        };
        self.reconcile(&worker, &owned, sessions).await?;
        for reported in sessions {
            let Some(session) = owned.get(&reported.session_id) else {
                self.fence(&worker, &reported.session_id);
                continue;
            };
            let (status, logged_out) = match reported.status.as_deref().map(parse_reported_status) {
                Some(Ok(parsed)) => (Some(parsed.0), parsed.1),
                // A status this gateway does not know must not make a healthy heartbeat fail.
                Some(Err(_)) | None => (None, false),
            };
            let report = SessionReport {
                status,
                phone_number: reported.phone_number.clone(),
                display_name: reported.display_name.clone(),
                qr_code: None,
                logged_out,
            };
            if status.is_some_and(|s| s != session.status)
                && let Some(updated) = self
                    .store
                    .apply_session_report(&session.id, worker_id, session.epoch, &report)
                    .await?
            {
                self.publish(&updated);
            }
        }
        Ok(())
    }

    /// Starts again, on `worker`, each session it owns and should run but did not list, once
    /// its placement is older than the bound (a fresh one may not be listed yet).
    async fn reconcile(
        &self,
        worker: &Worker,
        owned: &std::collections::HashMap<String, Session>,
        listed: &[ReportedSession],
    ) -> Result<(), FleetError> {
        let listed: std::collections::HashSet<&str> =
            listed.iter().map(|s| s.session_id.as_str()).collect();
        let oldest = now_ms() - self.settings.reconcile_after.as_millis() as i64;
        for session in owned.values() {
            if listed.contains(session.id.as_str())
                || !session.should_run()
                || session.updated_at > oldest
            {
                continue;
            }
            tracing::info!(session = %session.id, worker = %worker.id, "session missing from its worker's heartbeat; starting it there again");
            self.start_later(session, &worker.id, "missing from its worker's heartbeat")
                .await?;
        }
        Ok(())
    }

    /// Enqueues a start of `session` on `worker_id`, where it is placed already (a start that
    /// met a `429`, or a session its worker does not run): the same worker, later, at the same
    /// epoch.
    async fn start_later(
        &self,
        session: &Session,
        worker_id: &str,
        reason: &str,
    ) -> Result<(), FleetError> {
        self.enqueue_from(session, worker_id, Some(worker_id), reason.to_owned())
            .await
    }

    /// Enqueues a job for `session`, placed on `worker_id` at its current epoch, to `target`
    /// (`None`: whichever worker placement picks; the same worker: a start in place).
    async fn enqueue_from(
        &self,
        session: &Session,
        worker_id: &str,
        target: Option<&str>,
        reason: String,
    ) -> Result<(), FleetError> {
        self.migrations
            .enqueue(MigrateSession {
                session_id: session.id.clone(),
                from_worker_id: Some(worker_id.to_owned()),
                expected_epoch: session.epoch,
                target_worker_id: target.map(str::to_owned),
                reason,
            })
            .await?;
        Ok(())
    }

    /// Sessions a restarted worker should restore.
    pub async fn assigned_sessions(&self, worker_id: &str) -> Result<Vec<Session>, FleetError> {
        self.store
            .worker_by_id(worker_id)
            .await
            .map_err(not_found("worker"))?;
        Ok(self.store.sessions_on_worker(worker_id).await?)
    }

    /// Applies a worker's recovery results: SUCCESS (or `recovered`) → CONNECTED and routed,
    /// FAILED (or `error`) → ERROR.
    pub async fn recovery_results(
        &self,
        worker_id: &str,
        results: &[(String, String)],
    ) -> Result<usize, FleetError> {
        let worker = self
            .store
            .worker_by_id(worker_id)
            .await
            .map_err(not_found("worker"))?;
        let mut applied = 0;
        for (session_id, outcome) in results {
            let Ok(session) = self.store.session_by_id(session_id).await else {
                continue;
            };
            if session.worker_id.as_deref() != Some(worker_id) {
                self.fence(&worker, session_id);
                continue;
            }
            // The protocol's words and the existing worker's (`recovered`, `failed`, `error`,
            // upper-cased by the caller); anything else (`SKIPPED`) changes nothing.
            let status = match outcome.as_str() {
                "SUCCESS" | "RECOVERED" => SessionStatus::Connected,
                "FAILED" | "ERROR" => SessionStatus::Error,
                _ => continue,
            };
            let report = SessionReport {
                status: Some(status),
                ..SessionReport::default()
            };
            if let Some(updated) = self
                .store
                .apply_session_report(session_id, worker_id, session.epoch, &report)
                .await?
            {
                self.cache_route(&updated, &worker).await;
                self.publish(&updated);
                applied += 1;
            }
        }
        Ok(applied)
    }

    /// A worker leaves the fleet: it goes OFFLINE and its sessions migrate.
    pub async fn unregister(
        &self,
        worker_id: &str,
        endpoint: Option<&str>,
    ) -> Result<usize, FleetError> {
        let worker = self
            .store
            .worker_by_id(worker_id)
            .await
            .map_err(not_found("worker"))?;
        if let Some(endpoint) = endpoint
            && normalize_endpoint(endpoint).ok().as_deref() != Some(worker.endpoint.as_str())
        {
            return Err(FleetError::Conflict {
                code: "ENDPOINT_MISMATCH",
                message: "endpoint does not match the registered worker".to_owned(),
            });
        }
        self.store
            .transition_worker(worker_id, worker.status, WorkerStatus::Offline)
            .await?;
        self.evacuate(&worker, "worker unregistered").await
    }

    /// Applies a `session-status` callback with fencing. Returns the updated session.
    pub async fn session_status(&self, report: StatusReport) -> Result<Session, FleetError> {
        let (status, logged_out) = parse_reported_status(&report.status)?;
        let session = self
            .store
            .session_by_id(&report.session_id)
            .await
            .map_err(not_found("session"))?;
        let Some(owner) = session.worker_id.clone() else {
            if let Some(reporter) = &report.worker_id {
                self.fence_by_id(reporter, &session.id).await;
                return Err(FleetError::NotOwner {
                    worker_id: reporter.clone(),
                    session_id: session.id,
                });
            }
            return Err(FleetError::Conflict {
                code: "SESSION_NOT_PLACED",
                message: "session is not assigned to any worker".to_owned(),
            });
        };
        if let Some(reporter) = &report.worker_id
            && reporter != &owner
        {
            self.fence_by_id(reporter, &session.id).await;
            return Err(FleetError::NotOwner {
                worker_id: reporter.clone(),
                session_id: session.id,
            });
        }
        // The existing worker names itself only on QR_REQUIRED, so an anonymous report may
        // come from a worker that no longer owns the session (it posts DISCONNECTED when a
        // migration stops it there). A move backwards is applied only as the owner confirms
        // it, with the status the owner gives; forward moves come only from a live session.
        let status = if report.worker_id.is_none() && status.is_setback() {
            let logout = logged_out || report.logged_out;
            self.confirm_setback(&session, &owner, status, logout)
                .await?
        } else {
            status
        };
        let update = SessionReport {
            status: Some(status),
            phone_number: report.phone_number.filter(|p| !p.is_empty()),
            display_name: report.display_name.filter(|n| !n.is_empty()),
            // A QR only from the session's owner: the callback must name it (the real worker
            // names itself exactly on QR_REQUIRED; a report that names another worker was
            // fenced above). Anyone else holding the worker token could otherwise show a
            // customer a QR of their own to scan.
            qr_code: report
                .qr_code
                .filter(|_| status == SessionStatus::QrRequired && report.worker_id.is_some()),
            logged_out: logged_out || report.logged_out,
        };
        let updated = self
            .store
            .apply_session_report(&session.id, &owner, session.epoch, &update)
            .await?
            .ok_or_else(|| FleetError::NotOwner {
                worker_id: owner.clone(),
                session_id: session.id.clone(),
            })?;
        if status == SessionStatus::Connected
            && let Ok(worker) = self.store.worker_by_id(&owner).await
        {
            self.cache_route(&updated, &worker).await;
        }
        self.publish(&updated);
        Ok(updated)
    }

    /// Asks the owner for the session's status before an anonymous report that moves it
    /// backwards is applied: the owner's own setback status (it may be more exact than the
    /// report's), or `STALE_REPORT` when the owner runs the session fine, does not hold it
    /// (yet: a migration's start in flight), or cannot be asked (its next heartbeat tells).
    /// A logout is the exception to "does not hold it": the existing worker forgets a session
    /// it logged out, so the owner's "not found" confirms it.
    async fn confirm_setback(
        &self,
        session: &Session,
        owner: &str,
        reported: SessionStatus,
        logout: bool,
    ) -> Result<SessionStatus, FleetError> {
        let stale = |why: String| FleetError::Conflict {
            code: "STALE_REPORT",
            message: format!(
                "{reported} for session {} was not applied: {why}; a report without workerId \
                 that moves a session backwards needs its owner's confirmation",
                session.id
            ),
        };
        let worker = self.store.worker_by_id(owner).await?;
        let live = match self
            .client
            .session_status(on_worker(&worker.endpoint, session))
            .await
        {
            Ok(live) => live,
            Err(err)
                if logout
                    && err
                        .refusal()
                        .is_some_and(|refusal| refusal.session_not_ready()) =>
            {
                return Ok(reported);
            }
            Err(err) => {
                return Err(stale(format!(
                    "its owner {owner} could not confirm it ({err})"
                )));
            }
        };
        let confirmed = live
            .pointer("/data/status")
            .and_then(Value::as_str)
            .and_then(|raw| parse_reported_status(&raw.to_ascii_uppercase()).ok())
            .map(|(status, _)| status);
        match confirmed {
            Some(status) if status.is_setback() => Ok(status),
            Some(status) => Err(stale(format!("its owner {owner} reports {status}"))),
            None => Err(stale(format!("its owner {owner} gave no status for it"))),
        }
    }

    // ----- session operations (dashboard) ----------------------------------------------------

    /// Creates a session for `user_id`, enforcing the tier's session limit.
    pub async fn create_session(
        &self,
        user_id: &str,
        name: &str,
        session_id: Option<&str>,
        max_sessions: u32,
    ) -> Result<Session, FleetError> {
        let id = match session_id {
            Some(raw) => SessionId::parse("sessionId", raw)?.as_str().to_owned(),
            None => format!("s-{}", uuid::Uuid::new_v4().simple()),
        };
        if self.store.count_live_sessions(user_id).await? >= i64::from(max_sessions) {
            return Err(FleetError::Conflict {
                code: "SESSION_LIMIT_REACHED",
                message: format!(
                    "your tier allows at most {max_sessions} session(s); delete one first"
                ),
            });
        }
        self.store
            .insert_session(&id, user_id, name)
            .await
            .map_err(|err| match err {
                StoreError::Conflict(_) => FleetError::Conflict {
                    code: "SESSION_ID_TAKEN",
                    message: format!("session id {id} is already in use"),
                },
                other => other.into(),
            })
    }

    /// Places the session on a worker (if it has no live one) and starts it there. A worker
    /// that is rate limiting (`429`) keeps the session: the start is queued on it
    /// ([`Connected::Queued`]) and happens by itself later; another worker is never tried for
    /// that, nor is it "no capacity".
    pub async fn connect(&self, session: &Session) -> Result<Connected, FleetError> {
        let workers = self.store.list_workers().await?;
        let now = now_ms();
        if let Some(current) = session
            .worker_id
            .as_deref()
            .and_then(|id| workers.iter().find(|w| w.id == id))
            && current.status == WorkerStatus::Online
            && current.is_alive(now, self.timeout_ms())
        {
            return match self.start_on(current, session).await {
                Ok(()) | Err(WorkerCallError::Refused { status: 409, .. }) => Ok(
                    Connected::Started(self.store.session_by_id(&session.id).await?),
                ),
                Err(WorkerCallError::Busy { retry_after }) => {
                    self.start_later(session, &current.id, "connect met a 429")
                        .await?;
                    Ok(Connected::Queued {
                        session: session.clone(),
                        retry_after,
                    })
                }
                // A start its worker could not carry out now (a 5xx, no answer): the same
                // worker, later.
                Err(err) if err.is_transient() => {
                    tracing::warn!(session = %session.id, worker = %current.id, error = %err, "start failed; starting it there again later");
                    self.start_later(session, &current.id, "connect's start failed")
                        .await?;
                    Ok(Connected::Queued {
                        session: session.clone(),
                        retry_after: None,
                    })
                }
                Err(err) => Err(err.into()),
            };
        }
        let mut excluded: Vec<String> = Vec::new();
        let mut epoch = session.epoch;
        // The last placement whose start failed for now (not refused): where the session is
        // started again later when no other worker takes it.
        let mut failed_for_now: Option<(Session, String)> = None;
        loop {
            let excluded_refs: Vec<&str> = excluded.iter().map(String::as_str).collect();
            let Some(target) =
                placement::choose_worker(&workers, now, self.timeout_ms(), &excluded_refs)
            else {
                if let Some((assigned, worker_id)) = failed_for_now {
                    self.start_later(&assigned, &worker_id, "connect's start failed")
                        .await?;
                    return Ok(Connected::Queued {
                        session: assigned,
                        retry_after: None,
                    });
                }
                return Err(FleetError::NoWorkerAvailable);
            };
            let Some(assigned) = self
                .store
                .assign_session(&session.id, epoch, Some(&target.id), SessionStatus::Init)
                .await?
            else {
                return Err(FleetError::Conflict {
                    code: "SESSION_BUSY",
                    message: "the session is being moved; retry shortly".to_owned(),
                });
            };
            epoch = assigned.epoch;
            match self.start_on(target, &assigned).await {
                Ok(()) | Err(WorkerCallError::Refused { status: 409, .. }) => {
                    self.cache_route(&assigned, target).await;
                    self.publish(&assigned);
                    return Ok(Connected::Started(assigned));
                }
                Err(WorkerCallError::Busy { retry_after }) => {
                    self.cache_route(&assigned, target).await;
                    self.publish(&assigned);
                    self.start_later(&assigned, &target.id, "connect met a 429")
                        .await?;
                    return Ok(Connected::Queued {
                        session: assigned,
                        retry_after,
                    });
                }
                Err(err) => {
                    tracing::warn!(session = %session.id, worker = %target.id, error = %err, "start failed; trying another worker");
                    failed_for_now = err
                        .is_transient()
                        .then(|| (assigned, target.id.clone()))
                        .or(failed_for_now);
                    excluded.push(target.id.clone());
                }
            }
        }
    }

    async fn start_on(&self, worker: &Worker, session: &Session) -> Result<(), WorkerCallError> {
        self.client
            .start_session(
                on_worker(&worker.endpoint, session),
                &session.user_id,
                &session.name,
            )
            .await
            .map(|_| ())
    }

    /// Forwards restart, disconnect or logout to the session's owner.
    pub async fn session_action(
        &self,
        session: &Session,
        action: &str,
    ) -> Result<Value, FleetError> {
        let route = self.route(session).await?.ok_or(FleetError::Conflict {
            code: "SESSION_NOT_PLACED",
            message: "the session is not running on any worker; connect it first".to_owned(),
        })?;
        Ok(self
            .client
            .session_action(on_worker(&route.endpoint, session), action)
            .await?)
    }

    /// The owner's live view of the session (QR, status), if it runs anywhere.
    pub async fn live_status(&self, session: &Session) -> Option<Value> {
        let route = self.route(session).await.ok().flatten()?;
        self.client
            .session_status(on_worker(&route.endpoint, session))
            .await
            .ok()
    }

    /// Stops the session on its worker (best effort) and deletes it.
    pub async fn delete_session(&self, session: &Session) -> Result<(), FleetError> {
        if let Ok(Some(route)) = self.route(session).await
            && let Err(err) = self
                .client
                .delete_session(on_worker(&route.endpoint, session))
                .await
        {
            tracing::warn!(session = %session.id, error = %err, "could not stop the session on its worker");
        }
        self.store.delete_session(&session.id).await?;
        if let Err(err) = self.routes.remove(&session.id).await {
            tracing::warn!(error = format!("{err:#}"), "route cache delete failed");
        }
        Ok(())
    }

    /// Where the session runs: cache first, store on a miss (or when the cache is stale).
    pub async fn route(&self, session: &Session) -> Result<Option<Route>, FleetError> {
        match self.routes.get(&session.id).await {
            Ok(Some(route)) if route.epoch == session.epoch => return Ok(Some(route)),
            Ok(_) => {}
            Err(err) => tracing::warn!(
                error = format!("{err:#}"),
                "route cache read failed; using the store"
            ),
        }
        let Some(worker_id) = session.worker_id.as_deref() else {
            return Ok(None);
        };
        let worker = self.store.worker_by_id(worker_id).await?;
        Ok(Some(self.cache_route(session, &worker).await))
    }

    // ----- liveness and migration -----------------------------------------------------------

    /// One liveness pass: workers silent past the timeout go OFFLINE and their sessions migrate.
    /// Safe to run in several processes at once: the status change is a compare-and-set.
    pub async fn check_liveness(&self) -> Result<usize, FleetError> {
        let now = now_ms();
        let mut evacuated = 0;
        for worker in self.store.list_workers().await? {
            if worker.status == WorkerStatus::Online && !self.is_alive(&worker, now) {
                if self
                    .store
                    .transition_worker(&worker.id, WorkerStatus::Online, WorkerStatus::Offline)
                    .await?
                {
                    tracing::warn!(worker = %worker.id, "worker missed its heartbeats; OFFLINE");
                }
                // Counts as this window's evacuation, so the next tick does not repeat it.
                self.due_for_reevacuation(&worker.id, now);
                evacuated += self.evacuate(&worker, "worker offline").await?;
            } else if worker.status != WorkerStatus::Online
                && worker.session_count > 0
                && self.due_for_reevacuation(&worker.id, now)
            {
                // OFFLINE or MAINTENANCE workers must not keep sessions: ask again once per job
                // window (a job that ran out of retries, e.g. no capacity yet, is replaced).
                evacuated += self.evacuate(&worker, "worker not online").await?;
            }
        }
        Ok(evacuated)
    }

    /// Whether a stuck worker's sessions should be re-enqueued now: once per job dedup window,
    /// so a dead worker with many waiting sessions does not cost a job insert per session per tick.
    fn due_for_reevacuation(&self, worker_id: &str, now: i64) -> bool {
        let window = now / jobs::DEDUP_WINDOW_MS;
        let mut last = self.reevacuated.lock().unwrap_or_else(|p| p.into_inner());
        if last.get(worker_id) == Some(&window) {
            return false;
        }
        last.insert(worker_id.to_owned(), window);
        true
    }

    /// Probes every non-OFFLINE worker's `/health` once, all at once, each within the probe
    /// interval. A dead process is seen at once, whatever its heartbeat period: after
    /// [`REFUSED_PROBES_TO_OFFLINE`] refused connections in a row an ONLINE worker is OFFLINE
    /// and its sessions move. A probe that times out is weak evidence (a partition, a busy
    /// worker): it only stops counting as a sign of life, and the heartbeat timeout decides.
    /// The store is written only when a worker's probe state changes, or to renew a healthy
    /// worker's sign of life a few times per heartbeat timeout: probing every second costs no
    /// write per worker per second.
    pub async fn probe_workers(&self) -> Result<(), FleetError> {
        let workers = self.store.list_workers().await?;
        let timeout = self
            .settings
            .probe_interval
            .clamp(Duration::from_millis(100), Duration::from_secs(5));
        let probes = workers
            .iter()
            .filter(|w| w.status != WorkerStatus::Offline)
            .map(|w| async move { (w, self.client.probe(&w.endpoint, timeout).await) });
        let now = now_ms();
        let renew_every = (self.timeout_ms() / 4).max(1);
        for (worker, probe) in futures_util::future::join_all(probes).await {
            let (refused_in_row, record) = {
                let mut states = self.probes.lock().unwrap_or_else(|p| p.into_inner());
                let state = states.entry(worker.id.clone()).or_default();
                let healthy = probe == Probe::Healthy;
                state.refused_in_row = if probe == Probe::Refused {
                    state.refused_in_row.saturating_add(1)
                } else {
                    0
                };
                // A change of health is written at once; a healthy worker's probe renews its
                // sign of life every quarter of the heartbeat timeout.
                let record = match (healthy, state.healthy) {
                    (true, Some(true)) => now - state.recorded_at >= renew_every,
                    (false, Some(false)) => false,
                    _ => true,
                };
                state.healthy = Some(healthy);
                if record {
                    state.recorded_at = now;
                }
                (state.refused_in_row, record.then_some(healthy))
            };
            if let Some(ok) = record {
                self.store.record_probe(&worker.id, ok).await?;
            }
            if refused_in_row >= REFUSED_PROBES_TO_OFFLINE && worker.status == WorkerStatus::Online
            {
                if self
                    .store
                    .transition_worker(&worker.id, WorkerStatus::Online, WorkerStatus::Offline)
                    .await?
                {
                    tracing::warn!(worker = %worker.id, refused = refused_in_row, "worker refuses connections; OFFLINE");
                }
                self.due_for_reevacuation(&worker.id, now);
                self.evacuate(worker, "worker refuses connections").await?;
            }
        }
        Ok(())
    }

    /// Enqueues a migration job for each live session of `worker`.
    pub async fn evacuate(&self, worker: &Worker, reason: &str) -> Result<usize, FleetError> {
        let sessions = self.store.sessions_on_worker(&worker.id).await?;
        for session in &sessions {
            self.migrations
                .enqueue(MigrateSession {
                    session_id: session.id.clone(),
                    from_worker_id: Some(worker.id.clone()),
                    expected_epoch: session.epoch,
                    target_worker_id: None,
                    reason: reason.to_owned(),
                })
                .await?;
        }
        Ok(sessions.len())
    }

    /// Moves one session (the body of the migration job). Idempotent: a job whose session has
    /// moved on (epoch changed) does nothing.
    pub async fn migrate(
        &self,
        job: &MigrateSession,
    ) -> Result<migration::MigrationOutcome, FleetError> {
        use migration::MigrationOutcome;
        let session = match self.store.session_by_id(&job.session_id).await {
            Ok(session) => session,
            Err(StoreError::NotFound) => return Ok(MigrationOutcome::Skipped("session deleted")),
            Err(err) => return Err(err.into()),
        };
        if session.epoch != job.expected_epoch || session.worker_id != job.from_worker_id {
            return Ok(MigrationOutcome::Skipped("session already moved"));
        }
        if job.target_worker_id.is_some() && job.target_worker_id == job.from_worker_id {
            return self.start_in_place(&session).await;
        }
        let workers = self.store.list_workers().await?;
        let exclude: Vec<&str> = job.from_worker_id.iter().map(String::as_str).collect();
        let target = match &job.target_worker_id {
            Some(wanted) => workers.iter().find(|w| {
                &w.id == wanted
                    && w.status == WorkerStatus::Online
                    && !exclude.contains(&w.id.as_str())
            }),
            None => placement::choose_worker(&workers, now_ms(), self.timeout_ms(), &exclude),
        };
        let Some(target) = target else {
            return Ok(MigrationOutcome::RetryLater(
                "no healthy worker with free capacity",
            ));
        };
        let Some(moved) = self
            .store
            .assign_session(
                &session.id,
                session.epoch,
                Some(&target.id),
                SessionStatus::Reconnecting,
            )
            .await?
        else {
            return Ok(MigrationOutcome::Skipped(
                "lost the race to another migration",
            ));
        };
        self.cache_route(&moved, target).await;
        self.publish(&moved);
        // The old owner must stop (it may be alive: drain, partition); best effort.
        if let Some(old) = job
            .from_worker_id
            .as_deref()
            .and_then(|id| workers.iter().find(|w| w.id == id))
        {
            let _ = self
                .client
                .delete_session(on_worker(&old.endpoint, &session))
                .await;
        }
        match self.start_on(target, &moved).await {
            Ok(()) | Err(WorkerCallError::Refused { status: 409, .. }) => {
                tracing::info!(session = %session.id, from = job.from_worker_id.as_deref().unwrap_or("none"), to = %target.id, epoch = moved.epoch, reason = %job.reason, "session migrated");
                Ok(MigrationOutcome::Moved {
                    to_worker_id: target.id.clone(),
                    epoch: moved.epoch,
                })
            }
            Err(WorkerCallError::Busy { .. }) => {
                // Rate limited: the target keeps it and the start is asked again later.
                self.start_later(&moved, &target.id, "migration start met a 429")
                    .await?;
                tracing::info!(session = %session.id, to = %target.id, epoch = moved.epoch, "session migrated; its start waits for the worker's rate limit");
                Ok(MigrationOutcome::Moved {
                    to_worker_id: target.id.clone(),
                    epoch: moved.epoch,
                })
            }
            Err(err) => {
                // The target did not take it: the next attempt moves it again from there.
                tracing::warn!(session = %session.id, to = %target.id, error = %err, "start on migration target failed");
                self.move_away(&moved, &target.id, "failed").await?;
                Ok(MigrationOutcome::Skipped("target refused; re-enqueued"))
            }
        }
    }

    /// Starts a session again on the worker it is placed on (a start-later job): done when the
    /// worker runs it; later while the worker is rate limiting or does not answer; moved to
    /// another worker when this one refuses it for good.
    async fn start_in_place(
        &self,
        session: &Session,
    ) -> Result<migration::MigrationOutcome, FleetError> {
        use migration::MigrationOutcome;
        let Some(worker_id) = session.worker_id.as_deref() else {
            return Ok(MigrationOutcome::Skipped("session not placed"));
        };
        let worker = match self.store.worker_by_id(worker_id).await {
            Ok(worker) => worker,
            Err(StoreError::NotFound) => return Ok(MigrationOutcome::Skipped("worker gone")),
            Err(err) => return Err(err.into()),
        };
        if worker.status != WorkerStatus::Online || !self.is_alive(&worker, now_ms()) {
            // Its evacuation moves the session.
            return Ok(MigrationOutcome::Skipped("worker not online"));
        }
        match self.start_on(&worker, session).await {
            Ok(()) | Err(WorkerCallError::Refused { status: 409, .. }) => {
                tracing::info!(session = %session.id, worker = %worker.id, epoch = session.epoch, "session started on its worker");
                Ok(MigrationOutcome::Moved {
                    to_worker_id: worker.id.clone(),
                    epoch: session.epoch,
                })
            }
            // The worker says when: a start job is due then (no start before it would be taken,
            // and quick retries would only spend the customer's budget).
            Err(WorkerCallError::Busy {
                retry_after: Some(after),
            }) if after.as_millis() as i64 >= jobs::DEDUP_WINDOW_MS => {
                self.migrations
                    .enqueue_after(
                        MigrateSession {
                            session_id: session.id.clone(),
                            from_worker_id: Some(worker.id.clone()),
                            expected_epoch: session.epoch,
                            target_worker_id: Some(worker.id.clone()),
                            reason: "the worker's Retry-After".to_owned(),
                        },
                        after + Duration::from_millis(rand::random_range(0..1_000)),
                    )
                    .await?;
                Ok(MigrationOutcome::Skipped(
                    "rescheduled after the worker's Retry-After",
                ))
            }
            Err(WorkerCallError::Busy { .. }) => Ok(MigrationOutcome::RetryLater(
                "the worker is rate limiting session starts (429)",
            )),
            Err(err) if err.is_transient() => Ok(MigrationOutcome::RetryLater(
                "the worker did not take the start",
            )),
            Err(err) => {
                tracing::warn!(session = %session.id, worker = %worker.id, error = %err, "the worker refused the start; moving the session");
                self.move_away(session, &worker.id, "refused").await?;
                Ok(MigrationOutcome::Skipped("start refused; moving"))
            }
        }
    }

    /// Enqueues a move of `session` (placed on `worker_id`) to whichever worker placement
    /// picks: the start there `outcome` ("failed", "refused").
    async fn move_away(
        &self,
        session: &Session,
        worker_id: &str,
        outcome: &str,
    ) -> Result<(), FleetError> {
        let reason = format!("start on {worker_id} {outcome}");
        self.enqueue_from(session, worker_id, None, reason).await
    }

    /// Requests a manual migration (admin), optionally to a chosen worker.
    pub async fn request_migration(
        &self,
        session: &Session,
        target: Option<String>,
    ) -> Result<(), FleetError> {
        if let Some(target) = &target {
            let worker = self
                .store
                .worker_by_id(target)
                .await
                .map_err(not_found("worker"))?;
            if worker.status != WorkerStatus::Online
                || session.worker_id.as_deref() == Some(target.as_str())
            {
                return Err(FleetError::Conflict {
                    code: "INVALID_TARGET",
                    message: "the target must be another ONLINE worker".to_owned(),
                });
            }
        }
        self.migrations
            .enqueue(MigrateSession {
                session_id: session.id.clone(),
                from_worker_id: session.worker_id.clone(),
                expected_epoch: session.epoch,
                target_worker_id: target,
                reason: "manual migration".to_owned(),
            })
            .await?;
        Ok(())
    }

    /// Deletes metrics samples past the retention period.
    pub async fn prune_metrics(&self) -> Result<(), FleetError> {
        let cutoff = now_ms() - self.settings.metrics_retention.as_millis() as i64;
        self.store.prune_worker_metrics(cutoff).await?;
        Ok(())
    }

    async fn retire_worker(&self, worker: &Worker, reason: &str) -> Result<(), FleetError> {
        self.store
            .transition_worker(&worker.id, worker.status, WorkerStatus::Offline)
            .await?;
        self.evacuate(worker, reason).await?;
        Ok(())
    }

    /// Caches (and returns) the route of `session` on `worker`; a cache failure only costs a
    /// store read later.
    async fn cache_route(&self, session: &Session, worker: &Worker) -> Route {
        let route = Route {
            worker_id: worker.id.clone(),
            endpoint: worker.endpoint.clone(),
            epoch: session.epoch,
        };
        if let Err(err) = self.routes.put(&session.id, &route).await {
            tracing::warn!(error = format!("{err:#}"), "route cache write failed");
        }
        route
    }

    fn publish(&self, session: &Session) {
        self.events.publish(SessionEvent {
            session_id: session.id.clone(),
            status: session.status.as_str().to_owned(),
            qr_code: session.qr_code.clone(),
            phone_number: session.phone_number.clone(),
            display_name: session.display_name.clone(),
            worker_id: session.worker_id.clone(),
            at: ms_to_rfc3339(session.updated_at),
        });
    }

    /// Tells `worker` to stop a session it does not own (in the background: never delays the
    /// worker's own request).
    fn fence(&self, worker: &Worker, session_id: &str) {
        tracing::warn!(worker = %worker.id, session = %session_id, "fenced a report from a non-owner; stopping the session there");
        let client = self.client.clone();
        let store = self.store.clone();
        let endpoint = worker.endpoint.clone();
        let session_id = session_id.to_owned();
        tokio::spawn(async move {
            // The stop is charged to the session's owner where the gateway knows it (the
            // worker's rate limits are per X-User-Id), to nobody's budget for a stray.
            let owner = store
                .session_by_id(&session_id)
                .await
                .ok()
                .map(|s| s.user_id);
            let on = OnWorker {
                endpoint: &endpoint,
                session_id: &session_id,
                user_id: owner.as_deref(),
            };
            if let Err(err) = client.delete_session(on).await {
                tracing::debug!(error = %err, "fencing stop failed");
            }
        });
    }

    async fn fence_by_id(&self, worker_id: &str, session_id: &str) {
        if let Ok(worker) = self.store.worker_by_id(worker_id).await {
            self.fence(&worker, session_id);
        }
    }
}

fn not_found(what: &'static str) -> impl Fn(StoreError) -> FleetError {
    move |err| match err {
        StoreError::NotFound => FleetError::NotFound(what),
        other => other.into(),
    }
}

/// Words that are paths of the worker routes beside `/api/v1/workers/{id}`
/// (`/api/v1/workers/register`): never a worker's id.
pub const RESERVED_WORKER_IDS: [&str; 3] = ["stats", "register", "unregister"];

fn validate_worker_id(id: &str) -> Result<(), InvalidInput> {
    if RESERVED_WORKER_IDS.contains(&id) {
        return Err(InvalidInput::new(
            "workerId",
            "is a word of the worker routes' paths; choose another id",
        ));
    }
    let ok = (1..=100).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(InvalidInput::new(
            "workerId",
            "must be 1 to 100 of letters, digits, '_', '-', '.', ':'",
        ))
    }
}

/// A worker's base URL as `scheme://host[:port]`: `http` or `https`, a host, an optional port,
/// nothing else (no user info, path, query or fragment; a lone trailing `/` is dropped). The
/// gateway appends its own paths to it, so anything more would let a caller steer its calls.
pub fn normalize_endpoint(raw: &str) -> Result<String, InvalidInput> {
    const EXPECTED: &str = "must be scheme://host:port (http or https), such as http://10.0.0.5:3001, \
         without user info, path, query or fragment";
    let refuse = || InvalidInput::new("endpoint", EXPECTED);
    let trimmed = raw.trim();
    if trimmed.is_empty()
        || trimmed.len() > 500
        || trimmed.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(refuse());
    }
    let url = reqwest::Url::parse(trimmed).map_err(|_| refuse())?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none()
        && url.path() == "/"
        // `Url` drops an empty `?`/`#` and a `/` it adds itself: look at what was written.
        && !trimmed.contains(['?', '#', '@'])
        && trimmed
            .split_once("://")
            .is_some_and(|(_, rest)| !rest.trim_end_matches('/').contains('/'));
    let Some(host) = url.host_str().filter(|_| plain) else {
        return Err(refuse());
    };
    Ok(match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    })
}

/// Host and port (the scheme's default when none is written) of a normalised endpoint.
fn endpoint_host_port(endpoint: &str) -> Option<(String, u16)> {
    let url = reqwest::Url::parse(endpoint).ok()?;
    Some((url.host_str()?.to_owned(), url.port_or_known_default()?))
}

/// A call about `session` on the worker at `endpoint`, in its owner's name.
fn on_worker<'a>(endpoint: &'a str, session: &'a Session) -> OnWorker<'a> {
    OnWorker {
        endpoint,
        session_id: &session.id,
        user_id: Some(&session.user_id),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod endpoint_tests {
    use super::normalize_endpoint;

    #[test]
    fn endpoints_are_scheme_host_and_port_only() {
        for (raw, normal) in [
            ("http://10.0.0.5:3001", "http://10.0.0.5:3001"),
            ("http://10.0.0.5:3001/", "http://10.0.0.5:3001"),
            (
                " https://Worker.Example:8443 ",
                "https://worker.example:8443",
            ),
            ("http://worker.internal", "http://worker.internal"),
            ("http://[::1]:3001", "http://[::1]:3001"),
        ] {
            assert_eq!(normalize_endpoint(raw).unwrap(), normal, "{raw}");
        }
        for raw in [
            "",
            "10.0.0.5:3001",
            "ftp://10.0.0.5:3001",
            "file:///etc/passwd",
            "http://10.0.0.5:3001/api",
            "http://10.0.0.5:3001/health?x=1",
            "http://10.0.0.5:3001?",
            "http://10.0.0.5:3001#frag",
            "http://user:secret@10.0.0.5:3001",
            "http://user@10.0.0.5:3001",
            "http://10.0.0.5:3001//",
            "http://10.0.0.5:99999",
            "http://",
            "http://10.0.0.5:3001\u{0}",
            "http://10.0.0.5 :3001",
        ] {
            let refused = normalize_endpoint(raw).unwrap_err();
            assert_eq!(refused.field, "endpoint", "{raw}");
        }
    }
}
