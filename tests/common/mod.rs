//! The one test harness: spawns the real application (production code path, port 0) on a fresh
//! store and talks HTTP to it like a client.
//!
//! Backends: `Backend::Sqlite` uses a temporary `DATA_DIR` and in-process counters;
//! `Backend::Postgres` creates a fresh PostgreSQL database per test from `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and uses Redis at `REDIS_URL` (default
//! `redis://127.0.0.1:6379`) under a unique key prefix. If either service is unreachable the
//! test fails loudly with the variable to set: nothing is skipped.
#![allow(dead_code, clippy::unwrap_used)]

pub mod process;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use wa_gateway::app::{AppContext, Application};
use wa_gateway::config::Config;
use wa_gateway::store::{Store, StoreLocation};

/// The send-pipeline tests' gateway settings: fast fleet timings (a worker is dead 3 s after
/// its last sign of life), pacing off, limits wide enough for the tests (quota tests set their
/// own).
pub const PIPELINE_ENV: &[(&str, &str)] = &[
    ("WORKER_HEARTBEAT_TIMEOUT_MS", "3000"),
    ("WORKER_MONITOR_INTERVAL_MS", "200"),
    ("WORKER_PROBE_INTERVAL_MS", "500"),
    ("WORKER_REQUEST_TIMEOUT_MS", "2000"),
    ("BASIC_TIER_MAX_SESSIONS", "20"),
    ("BASIC_TIER_MAX_MESSAGES_PER_HOUR", "100000"),
    ("BASIC_TIER_MAX_API_CALLS_PER_HOUR", "100000"),
    ("BASIC_TIER_SEND_INTERVAL_MS", "0"),
    ("BASIC_TIER_SEND_JITTER_MS", "0"),
];

/// Which deployment flavour a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Embedded default: SQLite + in-process counters.
    Sqlite,
    /// Distributed: PostgreSQL + Redis.
    Postgres,
    /// Distributed with Kafka: PostgreSQL + Redis + the broker at `KAFKA_BROKERS` (default
    /// `127.0.0.1:9092`), with topics and groups under a unique prefix. Pipeline tests only.
    Kafka,
}

/// Generates one test per log back end (embedded log on SQLite, embedded log on
/// PostgreSQL + Redis, Kafka on PostgreSQL + Redis) from one async body taking `Backend`.
#[macro_export]
macro_rules! pipeline_tests {
    ($($name:ident),+ $(,)?) => {
        $crate::backend_tests!($($name),+);
        mod kafka {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Kafka).await;
                }
            )+
        }
    };
}

pub fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// The brokers of [`kafka_brokers`], after checking that one answers: without a broker a Kafka
/// test fails at once, naming what to set, instead of in the client's 30 s timeouts.
pub fn reachable_kafka_brokers() -> String {
    use std::net::ToSocketAddrs;
    let brokers = kafka_brokers();
    for broker in brokers.split(',') {
        let answers = broker.trim().to_socket_addrs().is_ok_and(|mut addresses| {
            addresses.any(|address| {
                std::net::TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_ok()
            })
        });
        if answers {
            return brokers;
        }
    }
    panic!(
        "this test needs a Kafka broker: none answers at KAFKA_BROKERS={brokers}. Run the tests \
         with scripts/test (it starts one), or start a broker and set KAFKA_BROKERS"
    );
}

/// Generates one test per backend from one async body taking `Backend`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Postgres).await;
                }
            )+
        }
    };
}

pub fn postgres_admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// Creates a fresh, empty PostgreSQL database and returns its URL.
pub async fn fresh_postgres_database() -> String {
    let admin_url = postgres_admin_url();
    let admin = sqlx::postgres::PgPool::connect(&admin_url).await.unwrap_or_else(|err| {
        panic!("PostgreSQL is required for this test: cannot connect to DATABASE_URL={admin_url}: {err}")
    });
    // scripts/test gives each run its own prefix and drops that run's databases at its end.
    let prefix = std::env::var("WAG_TEST_DB_PREFIX").unwrap_or_else(|_| "wag_test_".to_owned());
    let name = unique(&prefix);
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    drop_at_exit(&admin_url, &name);
    with_database(&admin_url, &name)
}

/// The PostgreSQL databases this test created, dropped by [`drop_created_databases`] when
/// the test's app or store goes away (or a test's [`DatabasesGuard`]): each test drops what it
/// created, passed or failed, and nothing else on the server.
static CREATED_DATABASES: std::sync::Mutex<Vec<(String, String)>> =
    std::sync::Mutex::new(Vec::new());

fn drop_at_exit(admin_url: &str, name: &str) {
    CREATED_DATABASES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push((admin_url.to_owned(), name.to_owned()));
}

/// Drops every database this test created so far (`WITH (FORCE)`: a gateway still connected
/// is cut off). Blocking: runs on a thread and runtime of its own, so it works from `Drop`.
pub fn drop_created_databases() {
    drop_databases_where(|_| true);
}

/// Drops the database of `url`, if this test created it.
pub fn drop_database_of(url: &str) {
    let name = url
        .split('?')
        .next()
        .and_then(|base| base.rsplit('/').next())
        .unwrap_or_default()
        .to_owned();
    drop_databases_where(|created| created == name);
}

fn drop_databases_where(wanted: impl Fn(&str) -> bool) {
    let created: Vec<(String, String)> = {
        let mut all = CREATED_DATABASES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (dropping, kept) = std::mem::take(&mut *all)
            .into_iter()
            .partition(|(_, name)| wanted(name));
        *all = kept;
        dropping
    };
    if created.is_empty() {
        return;
    }
    let dropping = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async move {
            for (admin_url, name) in created {
                let Ok(admin) = sqlx::postgres::PgPool::connect(&admin_url).await else {
                    eprintln!("could not connect to drop the test database {name}");
                    continue;
                };
                let statement = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                if let Err(err) = sqlx::query(sqlx::AssertSqlSafe(statement))
                    .execute(&admin)
                    .await
                {
                    eprintln!("could not drop the test database {name}: {err}");
                }
                admin.close().await;
            }
        });
    });
    let _ = dropping.join();
}

/// Drops the test's databases when it goes out of scope (tests that run gateways as child
/// processes, which outlive any one handle).
pub struct DatabasesGuard;

impl Drop for DatabasesGuard {
    fn drop(&mut self) {
        drop_created_databases();
    }
}

/// `scheme://user@host:port/db?query` with the database replaced.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, ""), |(b, q)| (b, q));
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let server = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    if query.is_empty() {
        format!("{server}/{database}")
    } else {
        format!("{server}/{database}?{query}")
    }
}

/// A connected, migrated store of the given backend (repository tests); its database is
/// dropped with it.
pub struct TestStore {
    pub store: Store,
    _dir: Option<tempfile::TempDir>,
    database_url: Option<String>,
}

impl Drop for TestStore {
    fn drop(&mut self) {
        if let Some(url) = &self.database_url {
            drop_database_of(url);
        }
    }
}

impl TestStore {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let store = Store::connect(StoreLocation::SqliteFile(&dir.path().join("test.db")))
                    .await
                    .unwrap();
                store.migrate().await.unwrap();
                Self {
                    store,
                    _dir: Some(dir),
                    database_url: None,
                }
            }
            Backend::Postgres | Backend::Kafka => {
                let url = fresh_postgres_database().await;
                let store = Store::connect(StoreLocation::Postgres(&url)).await.unwrap();
                store.migrate().await.unwrap();
                Self {
                    store,
                    _dir: None,
                    database_url: Some(url),
                }
            }
        }
    }
}

/// The environment of a gateway of `backend` on `data_dir`: a fresh PostgreSQL database and
/// Redis key prefix, a fresh topic prefix on Kafka.
pub async fn gateway_vars(backend: Backend, data_dir: &std::path::Path) -> HashMap<String, String> {
    let mut vars: HashMap<String, String> = HashMap::new();
    vars.insert("HOST".into(), "127.0.0.1".into());
    vars.insert("DATA_DIR".into(), data_dir.display().to_string());
    vars.insert("LOG_LEVEL".into(), "warn".into());
    if matches!(backend, Backend::Postgres | Backend::Kafka) {
        vars.insert("DATABASE_URL".into(), fresh_postgres_database().await);
        vars.insert("REDIS_URL".into(), redis_url());
        vars.insert("REDIS_KEY_PREFIX".into(), unique("wag-test-") + ":");
    }
    if backend == Backend::Kafka {
        vars.insert("KAFKA_BROKERS".into(), reachable_kafka_brokers());
        vars.insert("KAFKA_TOPIC_PREFIX".into(), unique("t") + ".");
    }
    vars
}

/// A running gateway.
pub struct TestApp {
    pub backend: Backend,
    pub base_url: String,
    pub client: reqwest::Client,
    pub context: Arc<AppContext>,
    pub data_dir: tempfile::TempDir,
    /// The configuration it was started with (a restart reuses it).
    pub vars: HashMap<String, String>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// The PostgreSQL database this app created (not one a test handed it).
    owned_database: Option<String>,
}

/// The app's own PostgreSQL database goes with it (a restart hands it to the new app).
impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(url) = self.owned_database.take() {
            drop_database_of(&url);
        }
    }
}

/// A JSON answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn data(&self) -> &Value {
        &self.body["data"]
    }
    pub fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
    /// Asserts the error envelope shape and status.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.body
        );
        assert_eq!(self.body["success"], json!(false), "{}", self.body);
        assert_eq!(self.error_code(), code, "{}", self.body);
        assert!(self.body["error"]["message"].is_string(), "{}", self.body);
    }
    pub fn assert_ok(&self, status: u16) -> &Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.body
        );
        assert_eq!(self.body["success"], json!(true), "{}", self.body);
        self.data()
    }
}

/// Tokens of a logged-in user.
#[derive(Debug, Clone)]
pub struct Login {
    pub user_id: String,
    pub access_token: String,
    pub refresh_token: String,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, &[]).await
    }

    /// Spawns with extra environment variables (as the config would read them).
    pub async fn spawn_with(backend: Backend, extra: &[(&str, &str)]) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let mut vars = gateway_vars(backend, data_dir.path()).await;
        let created = vars.get("DATABASE_URL").cloned();
        vars.insert("PORT".into(), "0".into());
        for (key, value) in extra {
            vars.insert((*key).to_owned(), (*value).to_owned());
        }
        let owned = created
            .clone()
            .filter(|url| vars.get("DATABASE_URL") == Some(url));
        if let Some(created) = created.as_ref().filter(|_| owned.is_none()) {
            // The test named another database: the fresh one was never used.
            drop_database_of(created);
        }
        Self::start(backend, vars, data_dir, owned).await
    }

    async fn start(
        backend: Backend,
        vars: HashMap<String, String>,
        data_dir: tempfile::TempDir,
        owned_database: Option<String>,
    ) -> Self {
        let config = Config::from_vars(vars.clone()).unwrap();
        wa_gateway::telemetry::init(&config.log_level, config.log_format);
        let application = Application::build(config).await.unwrap_or_else(|err| {
            panic!("cannot start the gateway on {backend:?} (is PostgreSQL at DATABASE_URL, Redis at REDIS_URL and, for Kafka, a broker at KAFKA_BROKERS running?): {err:#}")
        });
        let base_url = format!("http://{}", application.local_addr());
        let context = application.context();
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(application.run_until_stopped(async move {
            let _ = rx.await;
        }));
        Self {
            backend,
            base_url,
            client: reqwest::Client::new(),
            context,
            data_dir,
            vars,
            shutdown: Some(tx),
            server: Some(server),
            owned_database,
        }
    }

    /// Stops the gateway gracefully, keeps it down for `down`, then starts it again on the same
    /// store, log and port, as an operator's restart would.
    pub async fn restart_after(mut self, down: Duration) -> Self {
        let backend = self.backend;
        let mut vars = std::mem::take(&mut self.vars);
        let port = self.base_url.rsplit(':').next().unwrap().to_owned();
        vars.insert("PORT".into(), port);
        let data_dir = tempfile::tempdir().unwrap();
        let data_dir = std::mem::replace(&mut self.data_dir, data_dir);
        let owned = self.owned_database.take();
        self.stop().await;
        tokio::time::sleep(down).await;
        Self::start(backend, vars, data_dir, owned).await
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("answer is not JSON ({status}): {text}"));
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        let mut request = self.client.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(request).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Answer {
        self.with_body(reqwest::Method::POST, path, token, body)
            .await
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: Value) -> Answer {
        self.with_body(reqwest::Method::PUT, path, token, body)
            .await
    }

    pub async fn patch(&self, path: &str, token: Option<&str>, body: Value) -> Answer {
        self.with_body(reqwest::Method::PATCH, path, token, body)
            .await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> Answer {
        let mut request = self.client.delete(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(request).await
    }

    async fn with_body(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> Answer {
        let mut request = self.client.request(method, self.url(path)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(request).await
    }

    /// Registers a user through the API and returns its tokens.
    pub async fn register(&self, name: &str, email: &str, password: &str) -> Login {
        let answer = self
            .post(
                "/api/v1/auth/register",
                None,
                json!({"name": name, "email": email, "password": password}),
            )
            .await;
        let data = answer.assert_ok(201);
        login_from(data)
    }

    pub async fn login(&self, email: &str, password: &str) -> Answer {
        self.post(
            "/api/v1/auth/login",
            None,
            json!({"email": email, "password": password}),
        )
        .await
    }

    /// Creates an administrator directly (as `wa-gateway admin create-user` does) and logs in.
    pub async fn admin(&self) -> Login {
        let email = format!("{}@admin.test", unique("admin"));
        let email = wa_gateway::domain::Email::parse(&email).unwrap();
        let password = wa_gateway::domain::Password::parse("password", "admin-pass-1").unwrap();
        self.context
            .auth
            .create_user(
                &email,
                "Admin",
                &password,
                wa_gateway::domain::Role::Administrator,
                wa_gateway::domain::Tier::Max,
            )
            .await
            .unwrap();
        login_from(
            self.login(email.as_str(), "admin-pass-1")
                .await
                .assert_ok(200),
        )
    }
}

pub fn login_from(data: &Value) -> Login {
    Login {
        user_id: data["user"]["id"].as_str().unwrap().to_owned(),
        access_token: data["accessToken"].as_str().unwrap().to_owned(),
        refresh_token: data["refreshToken"].as_str().unwrap().to_owned(),
    }
}

/// Polls `check` every 20 ms until it holds; panics naming `what` after `timeout`.
pub async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a simulated worker and waits until the gateway of `app` has registered it.
pub async fn start_registered_sim(
    app: &TestApp,
    config: wa_gateway::sim::SimWorkerConfig,
) -> wa_gateway::sim::SimWorker {
    let wanted = config.worker_id.clone();
    let worker = wa_gateway::sim::SimWorker::start(config).await.unwrap();
    let store = app.context.store.clone();
    wait_for(Duration::from_secs(10), "worker registration", || {
        let store = store.clone();
        let wanted = wanted.clone();
        async move { store.worker_by_id(&wanted).await.is_ok() }
    })
    .await;
    worker
}

/// The gateway's `GET /metrics` text.
pub async fn metrics_text(app: &TestApp) -> String {
    app.client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
