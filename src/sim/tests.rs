//! The simulated worker against a fake gateway: a warp server on port 0 that answers the worker
//! calls and records them. Each test uses its own gateway, worker ids and session ids (the
//! credential store is process-wide), and waits by polling with a deadline, never by sleeping a
//! fixed time and hoping.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::oneshot;
use warp::Filter;
use warp::http::StatusCode;

use super::{
    Quirks, RateLimit, RateLimits, RecoveryReport, SessionStatus, SimWorker, SimWorkerConfig,
};

const TOKEN: &str = "test-worker-token";
const TO: &str = "6281234567890@s.whatsapp.net";
/// Generous: only a broken simulator waits this long.
const DEADLINE: Duration = Duration::from_secs(3);

/// One request the fake gateway received.
#[derive(Clone, Debug)]
struct Call {
    method: String,
    path: String,
    authorization: Option<String>,
    body: Value,
}

/// How the fake gateway answers.
#[derive(Default)]
struct Behaviour {
    /// Registrations to refuse with 503 before accepting.
    refuse_registrations: AtomicU32,
    /// When set, registration answers `recoveryRequired: true` and these are the assigned sessions.
    assigned_sessions: Mutex<Option<Vec<Value>>>,
    /// Heartbeats answer 404 (the gateway forgot the worker).
    forget_workers: AtomicBool,
    /// Session-status reports answer `409 STALE_OWNER`.
    fence_sessions: AtomicBool,
}

struct FakeGateway {
    url: String,
    calls: Arc<Mutex<Vec<Call>>>,
    behaviour: Arc<Behaviour>,
    /// Dropping it stops the server.
    _stop: oneshot::Sender<()>,
}

impl FakeGateway {
    async fn start() -> FakeGateway {
        Self::start_with(Behaviour::default()).await
    }

    async fn start_with(behaviour: Behaviour) -> FakeGateway {
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let behaviour = Arc::new(behaviour);
        let answers = Arc::clone(&behaviour);
        let recorded = Arc::clone(&calls);
        let filter = warp::method()
            .and(warp::path::full())
            .and(warp::header::optional::<String>("authorization"))
            .and(warp::body::bytes())
            .map(
                move |method: warp::http::Method,
                      path: warp::path::FullPath,
                      authorization: Option<String>,
                      body: bytes::Bytes| {
                    let call = Call {
                        method: method.to_string(),
                        path: path.as_str().to_owned(),
                        authorization,
                        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                    };
                    let (status, answer) = answer(&answers, &call);
                    recorded.lock().unwrap().push(call);
                    warp::reply::with_status(warp::reply::json(&answer), status)
                },
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(
            warp::serve(filter)
                .incoming(listener)
                .graceful(async move {
                    let _ = stopped.await;
                })
                .run(),
        );
        FakeGateway {
            url: format!("http://{addr}"),
            calls,
            behaviour,
            _stop: stop,
        }
    }

    /// From now on, registrations ask for recovery of `sessions`.
    fn assign(&self, sessions: Vec<Value>) {
        *self.behaviour.assigned_sessions.lock().unwrap() = Some(sessions);
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn calls_to(&self, method: &str, path: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|call| call.method == method && call.path == path)
            .collect()
    }

    /// Session-status reports about `session_id`, in arrival order.
    fn session_reports(&self, session_id: &str) -> Vec<Value> {
        self.calls_to("POST", "/api/webhooks/session-status")
            .into_iter()
            .map(|call| call.body)
            .filter(|body| body["sessionId"] == session_id)
            .collect()
    }

    /// Waits for the first session-status report about `session_id` with `status`.
    async fn session_report(&self, session_id: &str, status: &str) -> Value {
        eventually(&format!("{status} report for {session_id}"), || {
            self.session_reports(session_id)
                .into_iter()
                .find(|body| body["status"] == status)
        })
        .await
    }

    /// An ideal worker (every quirk off) with slow timers: the tests of the lifecycle itself.
    fn config(&self, worker_id: &str) -> SimWorkerConfig {
        SimWorkerConfig {
            quirks: Quirks::ideal(),
            ..self.real_config(worker_id)
        }
    }

    /// The existing worker as it really is (the default), with slow timers.
    fn real_config(&self, worker_id: &str) -> SimWorkerConfig {
        SimWorkerConfig {
            heartbeat_interval: Duration::from_secs(60),
            auto_connect: Duration::from_secs(60),
            register_retry_interval: Duration::from_millis(20),
            ..SimWorkerConfig::new(&self.url, worker_id, TOKEN)
        }
    }
}

fn answer(behaviour: &Behaviour, call: &Call) -> (StatusCode, Value) {
    let ok = |data: Value| (StatusCode::OK, json!({ "success": true, "data": data }));
    let error = |status: StatusCode, code: &str| {
        (
            status,
            json!({ "success": false, "error": { "code": code, "message": code } }),
        )
    };
    let path = call.path.as_str();
    match call.method.as_str() {
        "POST" if path == "/api/workers/register" => {
            let refused = behaviour
                .refuse_registrations
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if refused {
                return error(StatusCode::SERVICE_UNAVAILABLE, "NOT_READY");
            }
            let assigned = behaviour.assigned_sessions.lock().unwrap().clone();
            ok(json!({
                "workerId": call.body["workerId"],
                "status": "ONLINE",
                "recoveryRequired": assigned.is_some(),
                "assignedSessionCount": assigned.map_or(0, |sessions| sessions.len()),
            }))
        }
        "PUT"
            if path.ends_with("/heartbeat") && behaviour.forget_workers.load(Ordering::SeqCst) =>
        {
            error(StatusCode::NOT_FOUND, "WORKER_NOT_FOUND")
        }
        "GET" if path.ends_with("/sessions/assigned") => {
            let assigned = behaviour.assigned_sessions.lock().unwrap().clone();
            ok(json!({ "sessions": assigned.unwrap_or_default() }))
        }
        "POST"
            if path == "/api/webhooks/session-status"
                && behaviour.fence_sessions.load(Ordering::SeqCst) =>
        {
            error(StatusCode::CONFLICT, "STALE_OWNER")
        }
        _ => ok(json!({})),
    }
}

/// Polls `probe` until it yields, or panics after [`DEADLINE`].
async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A session id no other test uses (the credential store is shared by the whole process).
fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Talks to a simulated worker the way the gateway does.
struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(worker: &SimWorker) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: worker.endpoint(),
        }
    }

    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        message_id: Option<&str>,
        body: Option<Value>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(id) = message_id {
            request = request
                .header("X-Message-Id", id)
                .header("Idempotency-Key", id);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// A call as the gateway makes it about a user's session: the token, and `X-User-Id` when
    /// given. Answers the status, the `Retry-After` header and the body.
    async fn call_as(
        &self,
        method: reqwest::Method,
        path: &str,
        user_id: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN);
        if let Some(user_id) = user_id {
            request = request.header("X-User-Id", user_id);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|value| value.to_str().unwrap().parse().unwrap());
        let body = response.json().await.unwrap_or(Value::Null);
        Answer {
            status,
            retry_after,
            body,
        }
    }

    /// `POST /api/sessions/start` for `user_id` (as `X-User-Id` too, when given).
    async fn start_as(&self, session_id: &str, user_id: Option<&str>) -> Answer {
        let body = json!({ "sessionId": session_id, "userId": user_id.unwrap_or("user-1") });
        self.call_as(
            reqwest::Method::POST,
            "/api/sessions/start",
            user_id,
            Some(body),
        )
        .await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.request(reqwest::Method::GET, path, Some(TOKEN), None, None)
            .await
            .unwrap()
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.request(reqwest::Method::POST, path, Some(TOKEN), None, Some(body))
            .await
            .unwrap()
    }

    async fn send(&self, session_id: &str, message_id: Option<&str>, body: Value) -> (u16, Value) {
        let path = format!("/api/{session_id}/send");
        self.request(
            reqwest::Method::POST,
            &path,
            Some(TOKEN),
            message_id,
            Some(body),
        )
        .await
        .unwrap()
    }

    async fn start(&self, session_id: &str) -> (u16, Value) {
        self.post(
            "/api/sessions/start",
            json!({ "sessionId": session_id, "userId": "user-1", "sessionName": "Sales" }),
        )
        .await
    }

    /// Starts a session and scans its QR once shown; returns once it is connected.
    async fn connected_session(&self, gateway: &FakeGateway, prefix: &str) -> String {
        let id = unique(prefix);
        assert_eq!(self.start(&id).await.0, 201);
        gateway.session_report(&id, "QR_REQUIRED").await;
        let (status, body) = self
            .post(&format!("/sim/sessions/{id}/scan"), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
        gateway.session_report(&id, "CONNECTED").await;
        id
    }
}

/// One answer of [`Client::call_as`].
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    body: Value,
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn registers_with_retries_then_unregisters_on_shutdown() {
    let gateway = FakeGateway::start_with(Behaviour {
        refuse_registrations: AtomicU32::new(1),
        ..Behaviour::default()
    })
    .await;
    let worker = SimWorker::start(gateway.config("sim-register"))
        .await
        .unwrap();
    let registrations = eventually("a second registration", || {
        let calls = gateway.calls_to("POST", "/api/workers/register");
        (calls.len() >= 2).then_some(calls)
    })
    .await;
    let register = &registrations[1];
    assert_eq!(
        register.authorization.as_deref(),
        Some("Bearer test-worker-token")
    );
    assert_eq!(register.body["workerId"], "sim-register");
    assert_eq!(register.body["endpoint"], worker.endpoint());
    assert_eq!(register.body["maxSessions"], 50);
    assert_eq!(register.body["environment"], "TESTING");
    assert!(register.body["version"].is_string());
    assert!(register.body["description"].is_string());
    // Refused once, accepted once: no further attempts, and no recovery was asked for.
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(gateway.calls_to("POST", "/api/workers/register").len(), 2);
    assert!(
        gateway
            .calls()
            .iter()
            .all(|call| !call.path.ends_with("/assigned"))
    );

    let endpoint = worker.endpoint();
    worker.shutdown().await.unwrap();
    let unregister = gateway.calls_to("DELETE", "/api/workers/unregister");
    assert_eq!(unregister.len(), 1);
    assert_eq!(
        unregister[0].body,
        json!({ "workerId": "sim-register", "endpoint": endpoint })
    );
    assert_eq!(
        unregister[0].authorization.as_deref(),
        Some("Bearer test-worker-token")
    );
}

#[tokio::test]
async fn heartbeats_report_null_phone_until_connected() {
    let gateway = FakeGateway::start().await;
    let worker = SimWorker::start(SimWorkerConfig {
        heartbeat_interval: Duration::from_millis(30),
        ..gateway.config("sim-heartbeat")
    })
    .await
    .unwrap();
    let client = Client::new(&worker);
    let id = unique("hb");
    assert_eq!(client.start(&id).await.0, 201);
    gateway.session_report(&id, "QR_REQUIRED").await;

    let heartbeat_listing = |status: &'static str| {
        let id = id.clone();
        let gateway = &gateway;
        move || {
            gateway
                .calls_to("PUT", "/api/workers/sim-heartbeat/heartbeat")
                .into_iter()
                .find(|call| {
                    call.body["sessions"].as_array().is_some_and(|s| {
                        s.iter()
                            .any(|s| s["sessionId"] == id && s["status"] == status)
                    })
                })
        }
    };
    let waiting = eventually(
        "a heartbeat with the QR session",
        heartbeat_listing("QR_REQUIRED"),
    )
    .await;
    assert_eq!(
        waiting.authorization.as_deref(),
        Some("Bearer test-worker-token")
    );
    let body = &waiting.body;
    let session = &body["sessions"][0];
    assert_eq!(session.get("phoneNumber"), Some(&Value::Null));
    assert_eq!(session.get("displayName"), Some(&Value::Null));
    assert!(session["lastActivity"].is_string());
    assert!(body.get("capabilities").is_none());
    assert!(body["lastActivity"].is_string());
    for metric in [
        "cpuUsage",
        "memoryUsage",
        "uptime",
        "messageCount",
        "totalSessions",
        "activeSessions",
    ] {
        assert!(
            body["metrics"][metric].is_number(),
            "metrics.{metric}: {body}"
        );
    }
    assert_eq!(body["metrics"]["totalSessions"], 1);
    assert_eq!(body["metrics"]["activeSessions"], 0);

    client
        .post(&format!("/sim/sessions/{id}/scan"), json!({}))
        .await;
    let connected = eventually(
        "a heartbeat with the connected session",
        heartbeat_listing("CONNECTED"),
    )
    .await;
    let session = &connected.body["sessions"][0];
    assert!(
        session["phoneNumber"]
            .as_str()
            .is_some_and(|p| p.starts_with("628"))
    );
    assert_eq!(session["displayName"], format!("Sim {id}"));
    assert_eq!(connected.body["metrics"]["activeSessions"], 1);
}

#[tokio::test]
async fn start_shows_a_qr_then_connects_on_scan() {
    let gateway = FakeGateway::start().await;
    let worker = SimWorker::start(SimWorkerConfig {
        max_sessions: 1,
        ..gateway.config("sim-scan")
    })
    .await
    .unwrap();
    let client = Client::new(&worker);
    let id = unique("scan");

    let (status, body) = client.start(&id).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body,
        json!({ "success": true, "data": { "sessionId": id, "status": "INIT" } })
    );
    let (status, body) = client.start(&id).await;
    assert_eq!((status, error_code(&body)), (409, "SESSION_ALREADY_EXISTS"));
    let (status, body) = client.start(&unique("scan2")).await;
    assert_eq!((status, error_code(&body)), (503, "CAPACITY_REACHED"));
    let (status, body) = client
        .post(
            "/api/sessions/start",
            json!({ "sessionId": "a!", "userId": "u" }),
        )
        .await;
    assert_eq!((status, error_code(&body)), (400, "VALIDATION_ERROR"));

    let qr = gateway.session_report(&id, "QR_REQUIRED").await;
    let qr_code = qr["qrCode"].as_str().unwrap().to_owned();
    assert!(qr_code.starts_with("2@"));
    assert_eq!(qr["workerId"], "sim-scan");
    assert!(qr["timestamp"].as_str().unwrap().ends_with('Z'));
    let (status, body) = client.get(&format!("/api/sessions/{id}/status")).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["status"], "QR_REQUIRED");
    assert_eq!(body["data"]["qrCode"], qr_code);
    assert!(body["data"]["qrExpiresAt"].is_string());
    assert_eq!(body["data"]["phoneNumber"], Value::Null);

    let (status, _) = client
        .post(&format!("/sim/sessions/{id}/scan"), json!({}))
        .await;
    assert_eq!(status, 200);
    let connected = gateway.session_report(&id, "CONNECTED").await;
    let phone = connected["phoneNumber"].as_str().unwrap();
    assert!(
        phone.len() == 12 && phone.starts_with("628") && phone.bytes().all(|b| b.is_ascii_digit())
    );
    assert_eq!(connected["displayName"], format!("Sim {id}"));
    assert!(connected.get("qrCode").is_none());
    let statuses: Vec<Value> = gateway
        .session_reports(&id)
        .iter()
        .map(|r| r["status"].clone())
        .collect();
    assert_eq!(statuses, [json!("QR_REQUIRED"), json!("CONNECTED")]);

    let (_, body) = client.get(&format!("/api/sessions/{id}/status")).await;
    assert_eq!(body["data"]["status"], "CONNECTED");
    assert_eq!(body["data"]["phoneNumber"], phone);
    assert!(body["data"].get("qrCode").is_none());
    let sessions = worker.sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].status, SessionStatus::Connected);
    assert_eq!(sessions[0].phone_number.as_deref(), Some(phone));
    let (status, body) = client.get("/api/sessions/unknown-session/status").await;
    assert_eq!((status, error_code(&body)), (404, "SESSION_NOT_FOUND"));
}

#[tokio::test]
async fn auto_connect_completes_the_login() {
    let gateway = FakeGateway::start().await;
    let worker = SimWorker::start(SimWorkerConfig {
        auto_connect: Duration::from_millis(30),
        ..gateway.config("sim-auto")
    })
    .await
    .unwrap();
    let client = Client::new(&worker);
    let id = unique("auto");
    assert_eq!(client.start(&id).await.0, 201);
    gateway.session_report(&id, "CONNECTED").await;
    let statuses: Vec<Value> = gateway
        .session_reports(&id)
        .iter()
        .map(|r| r["status"].clone())
        .collect();
    assert_eq!(statuses, [json!("QR_REQUIRED"), json!("CONNECTED")]);
}

#[tokio::test]
async fn send_validation_is_strict() {
    let gateway = FakeGateway::start().await;
    let worker = SimWorker::start(gateway.config("sim-validate"))
        .await
        .unwrap();
    let client = Client::new(&worker);
    let id = client.connected_session(&gateway, "val").await;

    let refused = [
        json!({ "to": TO, "type": "text", "message": "hi", "messageId": "gw-1" }),
        json!({ "to": TO, "type": "location", "location": { "latitude": 1, "longitude": 2, "zoom": 3 } }),
        json!({ "to": "+62 812-3456-7890", "type": "text", "message": "hi" }),
        json!({ "to": TO, "type": "text" }),
        json!({ "to": TO, "type": "sticker" }),
    ];
    for body in refused {
        let (status, answer) = client.send(&id, Some("gw-1"), body.clone()).await;
        assert_eq!(
            (status, error_code(&answer)),
            (400, "VALIDATION_ERROR"),
            "{body}"
        );
        assert_eq!(answer["success"], false);
    }
    let (status, answer) = client
        .request(
            reqwest::Method::POST,
            &format!("/api/{id}/send"),
            Some(TOKEN),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!((status, error_code(&answer)), (400, "INVALID_JSON"));
    let text = json!({ "to": TO, "type": "text", "message": "hi" });
    let (status, answer) = client.send("x", None, text.clone()).await;
    assert_eq!((status, error_code(&answer)), (400, "VALIDATION_ERROR"));

    let waiting = unique("val-qr");
    assert_eq!(client.start(&waiting).await.0, 201);
    let (status, answer) = client.send(&waiting, None, text.clone()).await;
    assert_eq!(
        (status, error_code(&answer)),
        (409, "SESSION_NOT_CONNECTED")
    );
    let (status, answer) = client.send(&unique("nowhere"), None, text).await;
    assert_eq!(
        (status, error_code(&answer)),
        (409, "SESSION_NOT_CONNECTED")
    );
    assert!(worker.messages().is_empty());
}

#[tokio::test]
async fn sends_are_recorded_in_order_and_receipts_follow() {
    let gateway = FakeGateway::start().await;
    let worker = SimWorker::start(SimWorkerConfig {
        send_latency: Duration::from_millis(2),
        ..gateway.config("sim-send")
    })
    .await
    .unwrap();
    let client = Client::new(&worker);
    let id = client.connected_session(&gateway, "send").await;

    let mut bodies = Vec::new();
    for i in 0..4 {
        let body = json!({ "to": TO, "type": "text", "message": format!("hello {i}") });
        let (status, answer) = client
            .send(&id, Some(&format!("gw-{i}")), body.clone())
            .await;
        assert_eq!(status, 200, "{answer}");
        let data = &answer["data"];
        let whatsapp_id = data["messageId"].as_str().unwrap();
        assert!(whatsapp_id.starts_with("3EB0") && whatsapp_id.len() == 20);
        assert_eq!(data["status"], "sent");
        assert_eq!(data["type"], "text");
        assert_eq!(data["to"], TO);
        assert!(data["timestamp"].is_string());
        bodies.push(body);
    }
    let poll =
        json!({ "to": TO, "type": "poll", "poll": { "question": "q", "options": ["a", "b"] } });
    let (status, answer) = client.send(&id, None, poll.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let poll_whatsapp_id = answer["data"]["messageId"].as_str().unwrap().to_owned();

    let messages = worker.messages();
    assert_eq!(messages.len(), 5);
    for (i, message) in messages.iter().take(4).enumerate() {
        assert_eq!(message.session_id, id);
        assert_eq!(
            message.message_id.as_deref(),
            Some(format!("gw-{i}").as_str())
        );
        assert_eq!(message.body, bodies[i]);
    }
    assert_eq!(messages[4].message_id, None);
    assert_eq!(messages[4].body, poll);
    let (_, listed) = client.get("/sim/messages").await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 5);
    assert_eq!(listed["data"][0]["messageId"], "gw-0");
    assert_eq!(listed["data"][0]["sessionId"], id);
    assert_eq!(listed["data"][4]["messageId"], Value::Null);

    // Receipts carry the gateway's id when it sent one, the WhatsApp id otherwise.
    let mut receipt_ids: Vec<String> = (0..4).map(|i| format!("gw-{i}")).collect();
    receipt_ids.push(poll_whatsapp_id);
    for message_id in receipt_ids {
        let statuses = eventually(&format!("three receipts for {message_id}"), || {
            let statuses: Vec<Value> = gateway
                .calls_to("POST", "/api/webhooks/message-status")
                .into_iter()
                .filter(|call| call.body["messageId"] == message_id.as_str())
                .map(|call| {
                    assert_eq!(call.body["sessionId"], id.as_str());
                    assert!(call.body["timestamp"].is_string());
                    call.body["status"].clone()
                })
                .collect();
            (statuses.len() == 3).then_some(statuses)
        })
        .await;
        assert_eq!(statuses, [json!("SENT"), json!("DELIVERED"), json!("READ")]);
    }

    let (status, answer) = client
        .post(
            &format!("/api/message/{id}/manage"),
            json!({ "action": "star", "messageId": "3EB0AA", "phone": "6281234567890" }),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["data"],
        json!({ "action": "star", "messageId": "3EB0AA", "success": true })
    );
}

#[tokio::test]
async fn messages_page_after_an_index_with_receipt_times_and_receipts_off() {
    let gateway = FakeGateway::start().await;
    let worker = SimWorker::start(SimWorkerConfig {
        receipts: false,
        ..gateway.config("sim-page")
    })
    .await
    .unwrap();
    let client = Client::new(&worker);
    let id = client.connected_session(&gateway, "page").await;
    let before_us = chrono::Utc::now().timestamp_micros();
    for i in 0..3 {
        let body = json!({ "to": TO, "type": "text", "message": format!("page {i}") });
        let (status, answer) = client.send(&id, Some(&format!("page-{i}")), body).await;
        assert_eq!(status, 200, "{answer}");
    }
    let after_us = chrono::Utc::now().timestamp_micros();

    let (status, page) = client.get("/sim/messages?after=1").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["data"]["total"], 3);
    let messages = page["data"]["messages"].as_array().unwrap();
    let ids: Vec<&str> = messages
        .iter()
        .map(|m| m["messageId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["page-1", "page-2"]);
    let stamps: Vec<i64> = messages
        .iter()
        .map(|m| m["receivedAtUs"].as_i64().unwrap())
        .collect();
    assert!(stamps[0] <= stamps[1], "{stamps:?}");
    assert!(
        stamps
            .iter()
            .all(|&at| (before_us..=after_us).contains(&at))
    );
    let recorded = worker.messages();
    assert!(recorded.iter().all(|m| m.received_at_us >= before_us));

    // Past the end: the total only. Without `after`: the plain list, as before.
    let (_, end) = client.get("/sim/messages?after=99").await;
    assert_eq!(end["data"], json!({ "total": 3, "messages": [] }));
    let (_, all) = client.get("/sim/messages").await;
    assert_eq!(all["data"].as_array().unwrap().len(), 3);
    let (status, bad) = client.get("/sim/messages?after=-1").await;
    assert_eq!(status, 400, "{bad}");

    // Receipts would leave at once (SENT has no delay); give them ample time not to.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        gateway
            .calls_to("POST", "/api/webhooks/message-status")
            .is_empty()
    );
}

#[tokio::test]
async fn concurrent_sends_keep_per_session_arrival_order() {
    let gateway = FakeGateway::start().await;
    let worker = SimWorker::start(SimWorkerConfig {
        send_latency: Duration::from_millis(20),
        ..gateway.config("sim-fifo")
    })
    .await
    .unwrap();
    let client = Arc::new(Client::new(&worker));
    let id = client.connected_session(&gateway, "fifo").await;
    // Each send starts while the previous one is still inside its 20 ms latency.
    let started = tokio::time::Instant::now();
    let mut sends = Vec::new();
    for i in 0..4 {
        let client = Arc::clone(&client);
        let id = id.clone();
        sends.push(tokio::spawn(async move {
            let body = json!({ "to": TO, "type": "text", "message": format!("m{i}") });
            client.send(&id, Some(&format!("fifo-{i}")), body).await.0
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for send in sends {
        assert_eq!(send.await.unwrap(), 200);
    }
    // Served one at a time, not side by side: the latencies add up.
    assert!(started.elapsed() >= Duration::from_millis(80));
    let order: Vec<Option<String>> = worker
        .messages()
        .into_iter()
        .map(|m| m.message_id)
        .collect();
    let expected: Vec<Option<String>> = (0..4).map(|i| Some(format!("fifo-{i}"))).collect();
    assert_eq!(order, expected);
}

#[tokio::test]
async fn fail_rate_one_fails_every_send() {
    let gateway = FakeGateway::start().await;
    let worker = SimWorker::start(SimWorkerConfig {
        fail_rate: 1.0,
        ..gateway.config("sim-fail")
    })
    .await
    .unwrap();
    let client = Client::new(&worker);
    let id = client.connected_session(&gateway, "fail").await;
    let (status, answer) = client
        .send(
            &id,
            Some("gw-f"),
            json!({ "to": TO, "type": "text", "message": "hi" }),
        )
        .await;
    assert_eq!((status, error_code(&answer)), (500, "SEND_FAILED"));
    assert!(worker.messages().is_empty());
}

#[tokio::test]
async fn requires_the_token_except_on_health() {
    let gateway = FakeGateway::start().await;
    let worker = SimWorker::start(gateway.config("sim-auth")).await.unwrap();
    let client = Client::new(&worker);
    for token in [None, Some("wrong-token")] {
        for path in ["/api/sessions", "/sim/messages", "/no/such/route"] {
            let (status, body) = client
                .request(reqwest::Method::GET, path, token, None, None)
                .await
                .unwrap();
            assert_eq!((status, error_code(&body)), (401, "UNAUTHORIZED"), "{path}");
            assert_eq!(body["success"], false);
        }
    }
    let (status, body) = client
        .request(reqwest::Method::GET, "/health", None, None, None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["workerId"], "sim-auth");
    assert_eq!(body["sessions"]["maxSessions"], 50);
    assert_eq!(body["sessions"]["total"], 0);
    assert!(body["resources"]["cpu"].is_number());
    assert!(body["version"].is_string());
    assert!(body.get("success").is_none());
    let (status, body) = client.get("/no/such/route").await;
    assert_eq!((status, error_code(&body)), (404, "NOT_FOUND"));
}

#[tokio::test]
async fn kill_loses_state_without_unregistering() {
    let gateway = FakeGateway::start().await;
    let worker = SimWorker::start(gateway.config("sim-kill")).await.unwrap();
    let client = Client::new(&worker);
    let id = client.connected_session(&gateway, "kill").await;
    let (status, _) = client
        .send(
            &id,
            Some("gw-k"),
            json!({ "to": TO, "type": "text", "message": "hi" }),
        )
        .await;
    assert_eq!(status, 200);
    eventually("registration", || {
        (!gateway.calls_to("POST", "/api/workers/register").is_empty()).then_some(())
    })
    .await;

    worker.kill().await;
    // The pooled keep-alive connection died with the worker, and nothing listens any more.
    assert!(
        client
            .request(
                reqwest::Method::GET,
                "/api/sessions",
                Some(TOKEN),
                None,
                None
            )
            .await
            .is_err()
    );
    assert!(
        gateway
            .calls_to("DELETE", "/api/workers/unregister")
            .is_empty()
    );

    let restarted = SimWorker::start(gateway.config("sim-kill")).await.unwrap();
    assert!(restarted.sessions().is_empty());
    assert!(restarted.messages().is_empty());
}

#[tokio::test]
async fn recovery_restores_the_assigned_sessions() {
    let id = unique("recover");
    let gateway = FakeGateway::start_with(Behaviour {
        assigned_sessions: Mutex::new(Some(vec![json!({
            "sessionId": id,
            "userId": "user-1",
            "sessionName": "Sales",
            "phoneNumber": null,
            "status": "CONNECTED",
        })])),
        ..Behaviour::default()
    })
    .await;
    let worker = SimWorker::start(gateway.config("sim-recover"))
        .await
        .unwrap();
    let report = eventually("the recovery report", || {
        gateway
            .calls_to("POST", "/api/workers/sim-recover/sessions/recovery-status")
            .pop()
    })
    .await;
    assert_eq!(
        gateway
            .calls_to("GET", "/api/workers/sim-recover/sessions/assigned")
            .len(),
        1
    );
    let body = &report.body;
    assert_eq!(body["totalSessions"], 1);
    assert_eq!(body["successfulRecoveries"], 1);
    assert_eq!(body["failedRecoveries"], 0);
    assert_eq!(body["recoveryResults"][0]["sessionId"], id);
    assert_eq!(body["recoveryResults"][0]["status"], "SUCCESS");
    assert!(body["recoveryResults"][0]["recoveredAt"].is_string());
    // Stored credentials: straight to CONNECTED, no QR.
    gateway.session_report(&id, "CONNECTED").await;
    assert!(
        gateway
            .session_reports(&id)
            .iter()
            .all(|r| r["status"] != "QR_REQUIRED")
    );
    assert_eq!(worker.sessions()[0].status, SessionStatus::Connected);
}

#[tokio::test]
async fn a_migrated_session_reconnects_without_a_qr() {
    let gateway = FakeGateway::start().await;
    let first = SimWorker::start(gateway.config("sim-migrate-a"))
        .await
        .unwrap();
    let id = Client::new(&first)
        .connected_session(&gateway, "migrate")
        .await;
    first.kill().await;

    let second = SimWorker::start(gateway.config("sim-migrate-b"))
        .await
        .unwrap();
    assert_eq!(Client::new(&second).start(&id).await.0, 201);
    let connected = eventually("CONNECTED from the second worker", || {
        gateway
            .session_reports(&id)
            .into_iter()
            .find(|r| r["workerId"] == "sim-migrate-b" && r["status"] == "CONNECTED")
    })
    .await;
    assert!(connected["phoneNumber"].is_string());
    let from_second: Vec<Value> = gateway
        .session_reports(&id)
        .into_iter()
        .filter(|r| r["workerId"] == "sim-migrate-b")
        .map(|r| r["status"].clone())
        .collect();
    assert_eq!(from_second, [json!("CONNECTED")]);
}

#[tokio::test]
async fn a_fencing_answer_stops_the_session() {
    let gateway = FakeGateway::start_with(Behaviour {
        fence_sessions: AtomicBool::new(true),
        ..Behaviour::default()
    })
    .await;
    let worker = SimWorker::start(gateway.config("sim-fenced"))
        .await
        .unwrap();
    let client = Client::new(&worker);
    let id = unique("fenced");
    assert_eq!(client.start(&id).await.0, 201);
    gateway.session_report(&id, "QR_REQUIRED").await;
    eventually("the fenced session to stop", || {
        worker.sessions().is_empty().then_some(())
    })
    .await;
    let (status, _) = client.get(&format!("/api/sessions/{id}/status")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_forgotten_worker_registers_again() {
    let gateway = FakeGateway::start_with(Behaviour {
        forget_workers: AtomicBool::new(true),
        ..Behaviour::default()
    })
    .await;
    let _worker = SimWorker::start(SimWorkerConfig {
        heartbeat_interval: Duration::from_millis(20),
        ..gateway.config("sim-forgotten")
    })
    .await
    .unwrap();
    eventually("a re-registration after a 404 heartbeat", || {
        let registrations = gateway.calls_to("POST", "/api/workers/register").len();
        let heartbeats = gateway
            .calls_to("PUT", "/api/workers/sim-forgotten/heartbeat")
            .len();
        (registrations >= 2 && heartbeats >= 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn session_controls_report_their_transitions() {
    let gateway = FakeGateway::start().await;
    let worker = SimWorker::start(gateway.config("sim-controls"))
        .await
        .unwrap();
    let client = Client::new(&worker);
    let id = client.connected_session(&gateway, "ctl").await;

    // A dropped connection comes back on its own.
    let (status, _) = client
        .post(&format!("/sim/sessions/{id}/drop"), json!({}))
        .await;
    assert_eq!(status, 200);
    let statuses = eventually("RECONNECTING then CONNECTED", || {
        let statuses: Vec<Value> = gateway
            .session_reports(&id)
            .iter()
            .map(|r| r["status"].clone())
            .collect();
        (statuses.len() >= 4).then_some(statuses)
    })
    .await;
    assert_eq!(
        statuses,
        [
            json!("QR_REQUIRED"),
            json!("CONNECTED"),
            json!("RECONNECTING"),
            json!("CONNECTED")
        ]
    );

    // Inbound messages are forwarded.
    let (status, answer) = client
        .post(
            &format!("/sim/sessions/{id}/inbound"),
            json!({ "from": "6281111111111", "message": "hello gateway" }),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let inbound = eventually("the forwarded message", || {
        gateway
            .calls_to("POST", "/api/webhooks/message-received")
            .pop()
    })
    .await;
    assert_eq!(inbound.body["sessionId"], id);
    assert_eq!(inbound.body["from"], "6281111111111@s.whatsapp.net");
    assert_eq!(inbound.body["type"], "text");
    assert_eq!(inbound.body["message"], "hello gateway");
    assert_eq!(inbound.body["messageId"], answer["data"]["messageId"]);

    // Disconnect keeps the credentials: a restart connects without a QR.
    let (status, _) = client
        .post(&format!("/api/sessions/{id}/disconnect"), json!({}))
        .await;
    assert_eq!(status, 200);
    gateway.session_report(&id, "DISCONNECTED").await;
    let (status, body) = client
        .post(&format!("/api/sessions/{id}/restart"), json!({}))
        .await;
    assert_eq!((status, &body["data"]["status"]), (200, &json!("INIT")));
    eventually("CONNECTED after the restart", || {
        (worker.sessions()[0].status == SessionStatus::Connected).then_some(())
    })
    .await;

    // Logout wipes them: reported as DISCONNECTED/LOGGED_OUT, and the next start needs a QR.
    let (status, _) = client
        .post(&format!("/api/sessions/{id}/logout"), json!({}))
        .await;
    assert_eq!(status, 200);
    let logged_out = eventually("the logout report", || {
        gateway
            .session_reports(&id)
            .into_iter()
            .find(|r| r["reason"] == "LOGGED_OUT")
    })
    .await;
    assert_eq!(logged_out["status"], "DISCONNECTED");
    assert!(logged_out["loggedOutAt"].is_string());
    assert!(worker.sessions().is_empty());
    let qr_reports_before = gateway
        .session_reports(&id)
        .iter()
        .filter(|r| r["status"] == "QR_REQUIRED")
        .count();
    assert_eq!(client.start(&id).await.0, 201);
    eventually("a new QR after logout", || {
        let qr_reports = gateway
            .session_reports(&id)
            .iter()
            .filter(|r| r["status"] == "QR_REQUIRED")
            .count();
        (qr_reports > qr_reports_before).then_some(())
    })
    .await;

    // Delete forgets the session without a callback.
    let reports_before = gateway.session_reports(&id).len();
    let (status, _) = client
        .request(
            reqwest::Method::DELETE,
            &format!("/api/sessions/{id}"),
            Some(TOKEN),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(worker.sessions().is_empty());
    let (status, _) = client
        .request(
            reqwest::Method::DELETE,
            &format!("/api/sessions/{id}"),
            Some(TOKEN),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 404);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(gateway.session_reports(&id).len(), reports_before);
}

// ----- the existing worker's quirks, each on (the default) and off ------------------------------

/// Statuses of the session-status reports about `session_id`, in arrival order.
fn statuses_of(gateway: &FakeGateway, session_id: &str) -> Vec<String> {
    gateway
        .session_reports(session_id)
        .iter()
        .map(|report| report["status"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Waits until the reports about `session_id` are exactly `expected`, then a little longer to
/// see that nothing else follows.
async fn reported_exactly(gateway: &FakeGateway, session_id: &str, expected: &[&str]) {
    eventually(&format!("reports {expected:?} for {session_id}"), || {
        (statuses_of(gateway, session_id).len() >= expected.len()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(statuses_of(gateway, session_id), expected);
}

#[test]
fn the_default_is_the_real_worker() {
    let config = SimWorkerConfig::new("http://127.0.0.1:9", "w", TOKEN);
    assert_eq!(config.quirks, Quirks::real());
    assert_eq!(Quirks::default(), Quirks::real());
    let real = Quirks::real();
    assert!(
        real.not_connected_400
            && real.validation_error_shape
            && real.strict_validation
            && real.callbacks_without_worker_id
            && real.status_vocabulary
            && real.logout_on_shutdown
            && real.node_metrics
            && real.open_routes
    );
    assert_eq!(real.recovery_report, RecoveryReport::None);
    assert_eq!(real.rate_limits, Some(RateLimits::real()));
    let limits = RateLimits::real();
    assert_eq!(
        (
            limits.session_operations.max_requests,
            limits.session_operations.window
        ),
        (5, Duration::from_secs(300))
    );
    assert_eq!(
        (limits.sends.max_requests, limits.sends.window),
        (10, Duration::from_secs(60))
    );
    assert_eq!(limits.global, None);
    let ideal = Quirks::ideal();
    assert!(
        !ideal.not_connected_400
            && !ideal.validation_error_shape
            && !ideal.strict_validation
            && !ideal.callbacks_without_worker_id
            && !ideal.status_vocabulary
            && !ideal.logout_on_shutdown
            && !ideal.node_metrics
            && !ideal.open_routes
    );
    assert_eq!(ideal.rate_limits, None);
    assert_eq!(ideal.recovery_report, RecoveryReport::Full);
}

#[test]
fn sim_worker_flags_set_the_quirks() {
    use clap::Parser;
    let quirks_of = |extra: &[&str]| {
        let mut argv = vec![
            "wa-gateway",
            "sim-worker",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "http://127.0.0.1:9",
            "--worker-id",
            "w",
        ];
        argv.extend_from_slice(extra);
        match crate::cli::Cli::try_parse_from(argv).unwrap().command {
            Some(crate::cli::Command::SimWorker(args)) => args.quirks(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(quirks_of(&[]), Quirks::real());
    assert_eq!(quirks_of(&["--ideal"]), Quirks::ideal());
    let each_off = quirks_of(&[
        "--no-quirk-not-connected-400",
        "--no-quirk-validation-shape",
        "--no-quirk-strict-validation",
        "--no-quirk-rate-limits",
        "--no-quirk-callbacks-without-worker-id",
        "--no-quirk-status-vocabulary",
        "--no-quirk-logout-on-shutdown",
        "--no-quirk-node-metrics",
        "--no-quirk-open-routes",
        "--recovery-report",
        "full",
    ]);
    assert_eq!(each_off, Quirks::ideal());
    assert_eq!(
        quirks_of(&["--no-quirk-open-routes"]),
        Quirks {
            open_routes: false,
            ..Quirks::real()
        }
    );
    assert_eq!(
        quirks_of(&["--ideal", "--recovery-report", "summary-only"]).recovery_report,
        RecoveryReport::SummaryOnly
    );
    let limits = quirks_of(&[
        "--session-operations-limit",
        "2",
        "--session-operations-window-ms",
        "1500",
        "--sends-limit",
        "3",
        "--sends-window-ms",
        "250",
        "--global-rate-limit",
        "--global-limit",
        "7",
        "--global-window-ms",
        "900",
    ])
    .rate_limits
    .unwrap();
    assert_eq!(
        limits,
        RateLimits {
            session_operations: RateLimit {
                max_requests: 2,
                window: Duration::from_millis(1500)
            },
            sends: RateLimit {
                max_requests: 3,
                window: Duration::from_millis(250)
            },
            global: Some(RateLimit {
                max_requests: 7,
                window: Duration::from_millis(900)
            }),
        }
    );
    let with_global = quirks_of(&["--global-rate-limit"]).rate_limits.unwrap();
    assert_eq!(with_global.global, Some(RateLimits::production_global()));
    // The global limit needs the rate limits on.
    for conflicting in ["--ideal", "--no-quirk-rate-limits"] {
        let parsed = crate::cli::Cli::try_parse_from([
            "wa-gateway",
            "sim-worker",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "http://127.0.0.1:9",
            "--worker-id",
            "w",
            "--global-rate-limit",
            conflicting,
        ]);
        assert!(parsed.is_err(), "{conflicting}");
    }
    let bad = crate::cli::Cli::try_parse_from([
        "wa-gateway",
        "sim-worker",
        "--listen",
        "127.0.0.1:0",
        "--backend",
        "http://127.0.0.1:9",
        "--worker-id",
        "w",
        "--recovery-report",
        "SOME",
    ]);
    assert!(bad.is_err());
}

#[tokio::test]
async fn not_connected_is_400_for_the_real_worker_409_for_the_ideal() {
    let gateway = FakeGateway::start().await;
    let real = SimWorker::start(gateway.real_config("sim-nc-real"))
        .await
        .unwrap();
    let ideal = SimWorker::start(gateway.config("sim-nc-ideal"))
        .await
        .unwrap();
    let text = json!({ "to": TO, "type": "text", "message": "hi" });
    let star = json!({ "action": "star", "messageId": "3EB0AA", "phone": "6281234567890" });
    for (worker, not_connected) in [(&real, 400), (&ideal, 409)] {
        let client = Client::new(worker);
        let waiting = unique("nc");
        assert_eq!(client.start(&waiting).await.0, 201);
        gateway.session_report(&waiting, "QR_REQUIRED").await;
        let (status, body) = client.send(&waiting, None, text.clone()).await;
        let (status_of_missing, body_of_missing) =
            client.send(&unique("nowhere"), None, text.clone()).await;
        let (status_of_manage, _) = client
            .post(&format!("/api/message/{waiting}/manage"), star.clone())
            .await;
        assert_eq!(
            (status, status_of_missing, status_of_manage),
            (not_connected, not_connected, not_connected)
        );
        if not_connected == 400 {
            assert_eq!(
                body,
                json!({"success": false, "error": {"code": "SESSION_NOT_CONNECTED", "message": "Session not connected. Status: QR_REQUIRED"}})
            );
            assert_eq!(
                body_of_missing,
                json!({"success": false, "error": {"code": "SESSION_NOT_CONNECTED", "message": "Session not connected. Status: NOT_FOUND"}})
            );
        } else {
            assert_eq!(
                body,
                json!({"success": false, "error": {"code": "SESSION_NOT_CONNECTED", "message": "session is not connected"}})
            );
            assert_eq!(error_code(&body_of_missing), "SESSION_NOT_CONNECTED");
        }
        assert!(worker.messages().is_empty());
    }
}

#[tokio::test]
async fn validation_errors_have_the_real_shape_and_rules() {
    let gateway = FakeGateway::start().await;
    let real = SimWorker::start(gateway.real_config("sim-val-real"))
        .await
        .unwrap();
    let ideal = SimWorker::start(gateway.config("sim-val-ideal"))
        .await
        .unwrap();
    let long_emoji_text = "😀".repeat(2049);
    for (worker, is_real) in [(&real, true), (&ideal, false)] {
        let client = Client::new(worker);
        let id = client.connected_session(&gateway, "val").await;
        let (status, body) = client
            .send(&id, None, json!({ "to": TO, "type": "text" }))
            .await;
        assert_eq!(status, 400);
        if is_real {
            assert_eq!(
                body,
                json!({"success": false, "error": "Validation error", "details": [{"field": "message", "message": "\"message\" is required"}]})
            );
        } else {
            assert_eq!(
                body,
                json!({"success": false, "error": {"code": "VALIDATION_ERROR", "message": "\"message\" is required", "details": {"field": "message"}}})
            );
        }
        // The session id is validated the same way.
        let (status, body) = client
            .send(
                "x",
                None,
                json!({ "to": TO, "type": "text", "message": "hi" }),
            )
            .await;
        assert_eq!(status, 400);
        assert_eq!(body["error"] == "Validation error", is_real, "{body}");

        // An emoji counts 2: 2049 of them are 4098 UTF-16 code units.
        let (status, body) = client
            .send(
                &id,
                None,
                json!({ "to": TO, "type": "text", "message": long_emoji_text }),
            )
            .await;
        if is_real {
            assert_eq!(status, 400, "{body}");
            assert_eq!(body["details"][0]["field"], "message");
            assert_eq!(
                body["details"][0]["message"],
                "\"message\" length must be less than or equal to 4096 characters long"
            );
        } else {
            assert_eq!(status, 200, "{body}");
        }
        // A JID as contact phone: fine for both; an international number is not, for the
        // existing worker.
        let contact = |phone: &str| json!({ "to": TO, "type": "contact", "contact": { "name": "Ann", "phone": phone } });
        let (status, body) = client
            .send(&id, None, contact("14155550123@s.whatsapp.net"))
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = client.send(&id, None, contact("+14155550123")).await;
        assert_eq!(status, if is_real { 400 } else { 200 }, "{body}");
        // A 9-digit `to`.
        let (status, _) = client
            .send(
                &id,
                None,
                json!({ "to": "123456789@s.whatsapp.net", "type": "text", "message": "hi" }),
            )
            .await;
        assert_eq!(status, if is_real { 400 } else { 200 });
    }
}

/// A worker whose rate limits are `session_operations` per minute and `sends` per minute.
fn limited_config(
    gateway: &FakeGateway,
    worker_id: &str,
    session_operations: u32,
    sends: u32,
) -> SimWorkerConfig {
    let mut config = gateway.real_config(worker_id);
    config.quirks.rate_limits = Some(RateLimits {
        session_operations: RateLimit {
            max_requests: session_operations,
            window: Duration::from_secs(60),
        },
        sends: RateLimit {
            max_requests: sends,
            window: Duration::from_secs(60),
        },
        global: None,
    });
    config
}

#[tokio::test]
async fn session_operations_are_limited_per_ip_and_user_id() {
    let gateway = FakeGateway::start().await;
    let worker = SimWorker::start(limited_config(&gateway, "sim-rl-ops", 2, 100))
        .await
        .unwrap();
    let client = Client::new(&worker);
    let other_client = Client::new(&worker);

    // Without X-User-Id: one budget per IP, whichever connection the calls come on, shared by
    // every kind of session operation.
    let first = unique("rl");
    assert_eq!(client.start_as(&first, None).await.status, 201);
    let deleted = other_client
        .call_as(
            reqwest::Method::DELETE,
            &format!("/api/sessions/{first}"),
            None,
            None,
        )
        .await;
    assert_eq!(deleted.status, 200, "{deleted:?}");
    let refused = client
        .call_as(
            reqwest::Method::POST,
            &format!("/api/sessions/{first}/restart"),
            None,
            None,
        )
        .await;
    assert_eq!(refused.status, 429);
    assert_eq!(
        refused.body,
        json!({"success": false, "error": {"code": "RATE_LIMIT_EXCEEDED", "message": "Too many session operations, please try again later"}})
    );
    let retry_after = refused.retry_after.expect("Retry-After");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    for action in ["disconnect", "logout"] {
        let answer = other_client
            .call_as(
                reqwest::Method::POST,
                &format!("/api/sessions/{first}/{action}"),
                None,
                None,
            )
            .await;
        assert_eq!(answer.status, 429, "{action}");
    }
    assert_eq!(client.start_as(&unique("rl"), None).await.status, 429);

    // Each X-User-Id has its own budget.
    for user in ["user-a", "user-b"] {
        assert_eq!(client.start_as(&unique("rl"), Some(user)).await.status, 201);
        assert_eq!(client.start_as(&unique("rl"), Some(user)).await.status, 201);
        let refused = client.start_as(&unique("rl"), Some(user)).await;
        assert_eq!(refused.status, 429, "{user}");
        assert!(refused.retry_after.is_some());
    }
    // An empty header is no header.
    assert_eq!(client.start_as(&unique("rl"), Some("")).await.status, 429);
    // Bytes that are not text still key a budget of their own (and fail nothing).
    let odd = reqwest::header::HeaderValue::from_bytes(b"\xff\xfe").unwrap();
    for expected in [201, 201, 429] {
        let answer = client
            .http
            .post(format!("{}/api/sessions/start", client.base))
            .header("X-User-Id", odd.clone())
            .json(&json!({ "sessionId": unique("rl"), "userId": "user-odd" }))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), expected);
    }
    // Reads and sim controls are not session operations.
    for _ in 0..5 {
        assert_eq!(client.get("/api/sessions").await.0, 200);
    }
}

#[tokio::test]
async fn sends_are_limited_per_session() {
    let gateway = FakeGateway::start().await;
    let worker = SimWorker::start(limited_config(&gateway, "sim-rl-sends", 100, 2))
        .await
        .unwrap();
    let client = Client::new(&worker);
    let first = client.connected_session(&gateway, "rls").await;
    let second = client.connected_session(&gateway, "rls").await;
    let text = json!({ "to": TO, "type": "text", "message": "hi" });
    for _ in 0..2 {
        assert_eq!(client.send(&first, None, text.clone()).await.0, 200);
    }
    let refused = client
        .call_as(
            reqwest::Method::POST,
            &format!("/api/{first}/send"),
            Some("another-user"),
            Some(text.clone()),
        )
        .await;
    assert_eq!(refused.status, 429);
    assert_eq!(
        refused.body,
        json!({"success": false, "error": {"code": "RATE_LIMIT_EXCEEDED", "message": "Message rate limit exceeded, please slow down"}})
    );
    assert!(refused.retry_after.is_some_and(|s| (1..=60).contains(&s)));
    // The limit counts before validation: even a broken body is refused with 429 now.
    let (status, _) = client.send(&first, None, json!({})).await;
    assert_eq!(status, 429);
    assert_eq!(client.send(&second, None, text).await.0, 200);
    assert_eq!(worker.messages().len(), 3);
}

#[tokio::test]
async fn a_slot_frees_when_the_window_ends() {
    let gateway = FakeGateway::start().await;
    let mut config = gateway.real_config("sim-rl-window");
    let window = Duration::from_millis(300);
    config.quirks.rate_limits = Some(RateLimits {
        session_operations: RateLimit {
            max_requests: 1,
            window,
        },
        ..RateLimits::real()
    });
    let worker = SimWorker::start(config).await.unwrap();
    let client = Client::new(&worker);
    let started = tokio::time::Instant::now();
    assert_eq!(client.start_as(&unique("rlw"), None).await.status, 201);
    let refused = client.start_as(&unique("rlw"), None).await;
    assert_eq!((refused.status, refused.retry_after), (429, Some(1)));
    // Refusals meanwhile do not extend the window.
    let next = unique("rlw");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let answer = client.start_as(&next, None).await;
        if answer.status == 201 {
            break;
        }
        assert_eq!(answer.status, 429);
        assert!(
            tokio::time::Instant::now() < deadline,
            "no slot after the window"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(started.elapsed() >= window);
}

#[tokio::test]
async fn without_the_rate_limit_quirk_nothing_is_limited() {
    let gateway = FakeGateway::start().await;
    let mut config = gateway.real_config("sim-rl-off");
    config.quirks.rate_limits = None;
    let worker = SimWorker::start(config).await.unwrap();
    let client = Client::new(&worker);
    for _ in 0..8 {
        assert_eq!(client.start_as(&unique("rloff"), None).await.status, 201);
    }
    let id = client.connected_session(&gateway, "rloff").await;
    for _ in 0..12 {
        let (status, _) = client
            .send(
                &id,
                None,
                json!({ "to": TO, "type": "text", "message": "hi" }),
            )
            .await;
        assert_eq!(status, 200);
    }
    // The ideal worker has none either.
    let ideal = SimWorker::start(gateway.config("sim-rl-ideal"))
        .await
        .unwrap();
    let client = Client::new(&ideal);
    for _ in 0..8 {
        assert_eq!(client.start_as(&unique("rlid"), None).await.status, 201);
    }
}

#[tokio::test]
async fn the_production_global_limit_spares_health() {
    let gateway = FakeGateway::start().await;
    let mut config = gateway.real_config("sim-rl-global");
    config.quirks.rate_limits = Some(RateLimits {
        global: Some(RateLimit {
            max_requests: 2,
            window: Duration::from_secs(60),
        }),
        ..RateLimits::real()
    });
    let worker = SimWorker::start(config).await.unwrap();
    let client = Client::new(&worker);
    for _ in 0..5 {
        let (status, _) = client
            .request(reqwest::Method::GET, "/health", None, None, None)
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
    // Nor the simulation controls.
    for _ in 0..5 {
        assert_eq!(client.get("/sim/sessions").await.0, 200);
    }
    assert_eq!(client.get("/api/sessions").await.0, 200);
    assert_eq!(client.get("/no/such/route").await.0, 404);
    let refused = client
        .call_as(reqwest::Method::GET, "/api/sessions", None, None)
        .await;
    assert_eq!(refused.status, 429);
    assert_eq!(
        refused.body,
        json!({"success": false, "error": {"code": "RATE_LIMIT_EXCEEDED", "message": "Too many requests from this IP, please try again later"}})
    );
    assert!(refused.retry_after.is_some());
    // By IP: X-User-Id makes no difference here.
    let refused = client
        .call_as(reqwest::Method::GET, "/api/sessions", Some("u"), None)
        .await;
    assert_eq!(refused.status, 429);
}

#[tokio::test]
async fn callbacks_name_the_worker_only_when_showing_a_qr() {
    let gateway = FakeGateway::start().await;
    for (config, everywhere) in [
        (gateway.real_config("sim-wid-real"), false),
        (gateway.config("sim-wid-ideal"), true),
    ] {
        let worker_id = config.worker_id.clone();
        let worker = SimWorker::start(config).await.unwrap();
        let client = Client::new(&worker);
        let id = client.connected_session(&gateway, "wid").await;
        let (status, _) = client
            .post(&format!("/api/sessions/{id}/disconnect"), json!({}))
            .await;
        assert_eq!(status, 200);
        gateway.session_report(&id, "DISCONNECTED").await;
        let reports = gateway.session_reports(&id);
        assert!(reports.len() >= 3, "{reports:?}");
        for report in reports {
            let names_itself = everywhere || report["status"] == "QR_REQUIRED";
            if names_itself {
                assert_eq!(report["workerId"], worker_id.as_str(), "{report}");
            } else {
                assert!(report.get("workerId").is_none(), "{report}");
            }
        }
    }
}

#[tokio::test]
async fn connecting_failed_and_expired_qr_are_init_for_the_real_worker() {
    let gateway = FakeGateway::start().await;
    let real = SimWorker::start(gateway.real_config("sim-voc-real"))
        .await
        .unwrap();
    let client = Client::new(&real);

    // Connecting is reported as INIT, before the QR.
    let id = client.connected_session(&gateway, "voc").await;
    reported_exactly(&gateway, &id, &["INIT", "QR_REQUIRED", "CONNECTED"]).await;
    // A failure is INIT too, and stays until a restart.
    let (status, body) = client
        .post(&format!("/sim/sessions/{id}/fail"), json!({}))
        .await;
    assert_eq!((status, &body["data"]["status"]), (200, &json!("INIT")));
    reported_exactly(&gateway, &id, &["INIT", "QR_REQUIRED", "CONNECTED", "INIT"]).await;
    let (_, detail) = client.get(&format!("/api/sessions/{id}/status")).await;
    assert_eq!(detail["data"]["status"], "INIT");
    assert_eq!(detail["data"]["phoneNumber"], Value::Null);
    // A reconnect opens a new socket: RECONNECTING, INIT, CONNECTED.
    let dropped = client.connected_session(&gateway, "voc-drop").await;
    client
        .post(&format!("/sim/sessions/{dropped}/drop"), json!({}))
        .await;
    reported_exactly(
        &gateway,
        &dropped,
        &[
            "INIT",
            "QR_REQUIRED",
            "CONNECTED",
            "RECONNECTING",
            "INIT",
            "CONNECTED",
        ],
    )
    .await;
    // An expired QR: INIT, and no connection after it.
    let expiring = unique("voc-qr");
    assert_eq!(client.start(&expiring).await.0, 201);
    gateway.session_report(&expiring, "QR_REQUIRED").await;
    let (status, body) = client
        .post(&format!("/sim/sessions/{expiring}/expire-qr"), json!({}))
        .await;
    assert_eq!((status, &body["data"]["status"]), (200, &json!("INIT")));
    reported_exactly(&gateway, &expiring, &["INIT", "QR_REQUIRED", "INIT"]).await;
    let (_, detail) = client
        .get(&format!("/api/sessions/{expiring}/status"))
        .await;
    assert!(detail["data"].get("qrCode").is_none());
    // Only a QR can expire.
    let (status, body) = client
        .post(&format!("/sim/sessions/{expiring}/expire-qr"), json!({}))
        .await;
    assert_eq!((status, error_code(&body)), (409, "INVALID_SESSION_STATE"));
    let all_statuses: Vec<String> = gateway
        .calls_to("POST", "/api/webhooks/session-status")
        .iter()
        .map(|call| call.body["status"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        !all_statuses
            .iter()
            .any(|s| s == "ERROR" || s == "LOGGED_OUT")
    );
}

#[tokio::test]
async fn the_ideal_worker_reports_error_and_renews_an_expired_qr() {
    let gateway = FakeGateway::start().await;
    let ideal = SimWorker::start(SimWorkerConfig {
        auto_connect: Duration::from_millis(200),
        ..gateway.config("sim-voc-ideal")
    })
    .await
    .unwrap();
    let client = Client::new(&ideal);
    let id = client.connected_session(&gateway, "voci").await;
    reported_exactly(&gateway, &id, &["QR_REQUIRED", "CONNECTED"]).await;
    let (status, body) = client
        .post(&format!("/sim/sessions/{id}/fail"), json!({}))
        .await;
    assert_eq!((status, &body["data"]["status"]), (200, &json!("ERROR")));
    reported_exactly(&gateway, &id, &["QR_REQUIRED", "CONNECTED", "ERROR"]).await;
    let (status, _) = client
        .post(&format!("/sim/sessions/{id}/fail"), json!({}))
        .await;
    assert_eq!(status, 409);

    let expiring = unique("voci-qr");
    assert_eq!(client.start(&expiring).await.0, 201);
    let first_qr = gateway.session_report(&expiring, "QR_REQUIRED").await;
    let (status, body) = client
        .post(&format!("/sim/sessions/{expiring}/expire-qr"), json!({}))
        .await;
    assert_eq!(
        (status, &body["data"]["status"]),
        (200, &json!("QR_REQUIRED"))
    );
    // A fresh QR, then auto-connect still completes the login.
    reported_exactly(&gateway, &expiring, &["QR_REQUIRED", "QR_REQUIRED"]).await;
    let reports = gateway.session_reports(&expiring);
    assert_ne!(reports[1]["qrCode"], first_qr["qrCode"]);
    gateway.session_report(&expiring, "CONNECTED").await;
    let dropped = client.connected_session(&gateway, "voci-drop").await;
    client
        .post(&format!("/sim/sessions/{dropped}/drop"), json!({}))
        .await;
    reported_exactly(
        &gateway,
        &dropped,
        &["QR_REQUIRED", "CONNECTED", "RECONNECTING", "CONNECTED"],
    )
    .await;
}

#[tokio::test]
async fn a_logout_is_disconnected_with_logged_out_at() {
    let gateway = FakeGateway::start().await;
    for (config, is_real) in [
        (gateway.real_config("sim-lo-real"), true),
        (gateway.config("sim-lo-ideal"), false),
    ] {
        let worker = SimWorker::start(config).await.unwrap();
        let client = Client::new(&worker);
        let by_api = client.connected_session(&gateway, "lo").await;
        let by_phone = client.connected_session(&gateway, "lo-phone").await;
        let (status, _) = client
            .post(&format!("/api/sessions/{by_api}/logout"), json!({}))
            .await;
        assert_eq!(status, 200);
        let (status, body) = client
            .post(
                &format!("/sim/sessions/{by_phone}/logout-from-phone"),
                json!({}),
            )
            .await;
        assert_eq!(
            (status, &body["data"]["status"]),
            (200, &json!("DISCONNECTED"))
        );
        for (id, from_phone) in [(&by_api, false), (&by_phone, true)] {
            let report = gateway.session_report(id, "DISCONNECTED").await;
            let keys: Vec<&str> = report
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            let mut expected = vec!["loggedOutAt", "sessionId", "status", "timestamp"];
            if from_phone {
                expected.push("loggedOutFromPhone");
                assert_eq!(report["loggedOutFromPhone"], true);
            }
            if !is_real {
                expected.extend(["reason", "workerId"]);
                assert_eq!(report["reason"], "LOGGED_OUT");
            }
            let mut keys = keys;
            keys.sort_unstable();
            expected.sort_unstable();
            assert_eq!(keys, expected, "{report}");
            assert!(report["loggedOutAt"].as_str().unwrap().ends_with('Z'));
        }
        assert!(worker.sessions().is_empty());
        // The credentials are gone: the next start needs a QR.
        assert_eq!(client.start(&by_phone).await.0, 201);
        second_qr(&gateway, &by_phone, "a new QR").await;
    }
}

/// Assigned sessions: `good` (valid) and an id the worker refuses.
fn recovery_gateway_behaviour(good: &str) -> Behaviour {
    Behaviour {
        assigned_sessions: Mutex::new(Some(vec![
            json!({ "sessionId": "bad id!", "userId": "user-1" }),
            json!({ "sessionId": good, "userId": "user-1", "sessionName": "Sales", "status": "CONNECTED" }),
        ])),
        ..Behaviour::default()
    }
}

/// Starts a recovering worker of `quirks`; returns once `good` is CONNECTED, with the
/// recovery-status posts so far.
async fn recover_with(quirks: Quirks, worker_id: &str) -> (FakeGateway, String, Vec<Call>) {
    let good = unique("rec");
    let gateway = FakeGateway::start_with(recovery_gateway_behaviour(&good)).await;
    let worker = SimWorker::start(SimWorkerConfig {
        quirks,
        ..gateway.config(worker_id)
    })
    .await
    .unwrap();
    gateway.session_report(&good, "CONNECTED").await;
    assert!(
        statuses_of(&gateway, &good)
            .iter()
            .all(|status| status != "QR_REQUIRED")
    );
    let path = format!("/api/workers/{worker_id}/sessions/recovery-status");
    // The report, when there is one, follows the connection at once.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let posted = gateway.calls_to("POST", &path);
    assert_eq!(worker.sessions().len(), 1);
    (gateway, good, posted)
}

#[tokio::test]
async fn recovery_posts_no_status_by_default() {
    let (gateway, good, posted) = recover_with(Quirks::real(), "sim-rec-none").await;
    assert!(posted.is_empty(), "{posted:?}");
    assert_eq!(
        gateway
            .calls_to("GET", "/api/workers/sim-rec-none/sessions/assigned")
            .len(),
        1
    );
    // Reported through callbacks instead: connecting, then connected.
    assert_eq!(statuses_of(&gateway, &good), ["INIT", "CONNECTED"]);
}

#[tokio::test]
async fn recovery_summary_only() {
    let quirks = Quirks {
        recovery_report: RecoveryReport::SummaryOnly,
        ..Quirks::real()
    };
    let (_gateway, _good, posted) = recover_with(quirks, "sim-rec-summary").await;
    assert_eq!(posted.len(), 1);
    assert_eq!(
        posted[0].body,
        json!({
            "recoveryResults": [],
            "summary": { "totalSessions": 2, "successfulRecoveries": 1, "failedRecoveries": 1, "skippedRecoveries": 0 },
        })
    );
}

#[tokio::test]
async fn recovery_in_lower_case() {
    let quirks = Quirks {
        recovery_report: RecoveryReport::LowerCase,
        ..Quirks::real()
    };
    let (_gateway, good, posted) = recover_with(quirks, "sim-rec-lower").await;
    assert_eq!(posted.len(), 1);
    let body = &posted[0].body;
    assert_eq!(
        body["summary"],
        json!({ "totalSessions": 2, "successfulRecoveries": 1, "failedRecoveries": 1, "skippedRecoveries": 0 })
    );
    let results = body["recoveryResults"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["sessionId"], "bad id!");
    assert_eq!(results[0]["status"], "error");
    assert!(results[0]["error"].is_string());
    assert_eq!(results[1]["sessionId"], good);
    assert_eq!(results[1]["status"], "recovered");
    assert!(results[1]["recoveredAt"].is_string());
    assert!(body.get("totalSessions").is_none());
}

#[tokio::test]
async fn recovery_in_full_for_the_ideal_worker() {
    let (gateway, good, posted) = recover_with(Quirks::ideal(), "sim-rec-full").await;
    assert_eq!(posted.len(), 1);
    let body = &posted[0].body;
    assert_eq!(body["totalSessions"], 2);
    assert_eq!(body["successfulRecoveries"], 1);
    assert_eq!(body["failedRecoveries"], 1);
    assert!(body.get("summary").is_none());
    let statuses: Vec<&Value> = body["recoveryResults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|result| &result["status"])
        .collect();
    assert_eq!(statuses, [&json!("FAILED"), &json!("SUCCESS")]);
    assert_eq!(statuses_of(&gateway, &good), ["CONNECTED"]);
}

#[tokio::test]
async fn shutdown_logs_every_session_out_for_the_real_worker() {
    let gateway = FakeGateway::start().await;
    // Through `run`, the SIGINT path of the CLI, on a port picked beforehand.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = SimWorkerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        ..gateway.real_config("sim-sigint")
    };
    let (interrupt, interrupted) = oneshot::channel::<()>();
    let running = tokio::spawn(super::run(config, async move {
        let _ = interrupted.await;
    }));
    let client = Client {
        http: reqwest::Client::new(),
        base: format!("http://127.0.0.1:{port}"),
    };
    let mut ids = Vec::new();
    for _ in 0..2 {
        let id = unique("sigint");
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while client
            .request(reqwest::Method::GET, "/health", None, None, None)
            .await
            .is_err()
        {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(client.start(&id).await.0, 201);
        gateway.session_report(&id, "QR_REQUIRED").await;
        client
            .post(&format!("/sim/sessions/{id}/scan"), json!({}))
            .await;
        gateway.session_report(&id, "CONNECTED").await;
        ids.push(id);
    }
    interrupt.send(()).unwrap();
    running.await.unwrap().unwrap();

    let calls = gateway.calls();
    let unregistered_at = calls
        .iter()
        .position(|call| call.method == "DELETE" && call.path == "/api/workers/unregister")
        .expect("unregistered");
    for id in &ids {
        let logged_out_at = calls
            .iter()
            .position(|call| {
                call.path == "/api/webhooks/session-status"
                    && call.body["sessionId"] == id.as_str()
                    && call.body["status"] == "DISCONNECTED"
            })
            .expect("a logout report");
        assert!(
            logged_out_at > unregistered_at,
            "the existing worker unregisters first"
        );
        let report = &calls[logged_out_at].body;
        assert!(report["loggedOutAt"].is_string());
        assert!(report.get("reason").is_none());
        assert!(report.get("workerId").is_none());
    }
    // After a restart, the sessions need a new QR: neither a start nor a recovery reconnects
    // them without one.
    let restarted = SimWorker::start(gateway.real_config("sim-sigint-2"))
        .await
        .unwrap();
    let client = Client::new(&restarted);
    assert_eq!(client.start(&ids[0]).await.0, 201);
    second_qr(&gateway, &ids[0], "a new QR after the restart").await;
}

#[tokio::test]
async fn a_recovery_after_the_shutdown_logout_needs_a_qr() {
    let gateway = FakeGateway::start().await;
    let first = SimWorker::start(gateway.real_config("sim-sigint-rec"))
        .await
        .unwrap();
    let id = Client::new(&first)
        .connected_session(&gateway, "sigrec")
        .await;
    first.shutdown().await.unwrap();
    gateway.session_report(&id, "DISCONNECTED").await;

    gateway.assign(vec![json!({ "sessionId": id, "userId": "user-1" })]);
    let quirks = Quirks {
        recovery_report: RecoveryReport::Full,
        ..Quirks::real()
    };
    let _second = SimWorker::start(SimWorkerConfig {
        quirks,
        ..gateway.real_config("sim-sigint-rec")
    })
    .await
    .unwrap();
    let report = eventually("the recovery report", || {
        gateway
            .calls_to(
                "POST",
                "/api/workers/sim-sigint-rec/sessions/recovery-status",
            )
            .pop()
    })
    .await;
    assert_eq!(report.body["recoveryResults"][0]["status"], "FAILED");
    assert_eq!(report.body["failedRecoveries"], 1);
    second_qr(&gateway, &id, "a new QR for the recovered session").await;
}

#[tokio::test]
async fn shutdown_of_the_ideal_worker_keeps_the_sessions_credentials() {
    let gateway = FakeGateway::start().await;
    let first = SimWorker::start(gateway.config("sim-shutdown-ideal"))
        .await
        .unwrap();
    let id = Client::new(&first)
        .connected_session(&gateway, "keep")
        .await;
    first.shutdown().await.unwrap();
    assert_eq!(
        gateway.calls_to("DELETE", "/api/workers/unregister").len(),
        1
    );
    let second = SimWorker::start(gateway.config("sim-shutdown-ideal-2"))
        .await
        .unwrap();
    assert_eq!(Client::new(&second).start(&id).await.0, 201);
    reported_exactly(&gateway, &id, &["QR_REQUIRED", "CONNECTED", "CONNECTED"]).await;
}

#[tokio::test]
async fn heartbeat_metrics_like_node() {
    let gateway = FakeGateway::start().await;
    for (config, node) in [
        (gateway.real_config("sim-metrics-real"), true),
        (gateway.config("sim-metrics-ideal"), false),
    ] {
        let worker_id = config.worker_id.clone();
        let _worker = SimWorker::start(SimWorkerConfig {
            heartbeat_interval: Duration::from_millis(10),
            ..config
        })
        .await
        .unwrap();
        let path = format!("/api/workers/{worker_id}/heartbeat");
        let heartbeats = eventually("ten heartbeats", || {
            let heartbeats = gateway.calls_to("PUT", &path);
            (heartbeats.len() >= 10).then_some(heartbeats)
        })
        .await;
        let cpu: Vec<f64> = heartbeats
            .iter()
            .map(|call| call.body["metrics"]["cpuUsage"].as_f64().unwrap())
            .collect();
        let memory: Vec<f64> = heartbeats
            .iter()
            .map(|call| call.body["metrics"]["memoryUsage"].as_f64().unwrap())
            .collect();
        if node {
            assert!(
                cpu.iter()
                    .all(|c| (30.0..=50.0).contains(c) && c.fract() == 0.0),
                "{cpu:?}"
            );
            assert!(
                memory.iter().all(|m| (55.0..=95.0).contains(m)),
                "{memory:?}"
            );
        } else {
            assert!(cpu.iter().all(|c| *c == 1.0), "{cpu:?}");
            assert!(memory.iter().all(|m| *m == 10.0), "{memory:?}");
        }
    }
}

#[tokio::test]
async fn the_real_worker_checks_no_token() {
    let gateway = FakeGateway::start().await;
    let worker = SimWorker::start(gateway.real_config("sim-open"))
        .await
        .unwrap();
    let client = Client::new(&worker);
    for token in [None, Some("wrong-token")] {
        for path in ["/api/sessions", "/sim/messages", "/sim/sessions"] {
            let (status, body) = client
                .request(reqwest::Method::GET, path, token, None, None)
                .await
                .unwrap();
            assert_eq!(status, 200, "{path}: {body}");
        }
        let (status, body) = client
            .request(reqwest::Method::GET, "/no/such/route", token, None, None)
            .await
            .unwrap();
        assert_eq!((status, error_code(&body)), (404, "NOT_FOUND"));
    }
    let (status, _) = client
        .request(
            reqwest::Method::POST,
            "/api/sessions/start",
            None,
            None,
            Some(json!({ "sessionId": unique("open"), "userId": "u" })),
        )
        .await
        .unwrap();
    assert_eq!(status, 201);
    // Requiring it is a quirk switched off.
    let mut config = gateway.real_config("sim-closed");
    config.quirks.open_routes = false;
    let closed = SimWorker::start(config).await.unwrap();
    let (status, body) = Client::new(&closed)
        .request(reqwest::Method::GET, "/api/sessions", None, None, None)
        .await
        .unwrap();
    assert_eq!((status, error_code(&body)), (401, "UNAUTHORIZED"));
}

/// Waits until `id` was reported `QR_REQUIRED` a second time (a new QR after a logout).
async fn second_qr(gateway: &FakeGateway, id: &str, what: &str) {
    eventually(what, || {
        let qrs = statuses_of(gateway, id)
            .iter()
            .filter(|s| *s == "QR_REQUIRED")
            .count();
        (qrs == 2).then_some(())
    })
    .await;
}
