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

use super::{SessionStatus, SimWorker, SimWorkerConfig};

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
    /// Dropping it stops the server.
    _stop: oneshot::Sender<()>,
}

impl FakeGateway {
    async fn start() -> FakeGateway {
        Self::start_with(Behaviour::default()).await
    }

    async fn start_with(behaviour: Behaviour) -> FakeGateway {
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let answers = Arc::new(behaviour);
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
            _stop: stop,
        }
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

    fn config(&self, worker_id: &str) -> SimWorkerConfig {
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
