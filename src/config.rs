//! Configuration: one typed struct, loaded once from the environment (and `.env`), with the
//! variable names of DESIGN.md. Secrets are wrapped in [`Secret`] so they never print.
//!
//! Loading is a pure function of a variable map ([`Config::from_vars`]) so tests build configs
//! without touching the process environment; [`Config::from_env`] feeds it `std::env`.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::domain::Tier;

/// A value that must never reach a log line or a `Debug` dump.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a sensitive value.
    pub fn new(value: T) -> Self {
        Self(value)
    }
    /// The only way to read the value: call sites that do are easy to audit.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Why the configuration was refused: always names the variable, so the operator knows what to fix.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {variable}: {problem}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub variable: &'static str,
    /// What is wrong with it, in words an operator understands.
    pub problem: String,
}

impl ConfigError {
    fn new(variable: &'static str, problem: impl Into<String>) -> Self {
        Self {
            variable,
            problem: problem.into(),
        }
    }
}

/// Deployment flavour: production refuses generated or default secrets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppEnv {
    /// Local runs and the embedded default: missing secrets are generated and kept in `DATA_DIR`.
    Development,
    /// Real deployments: every secret must be given explicitly.
    Production,
}

/// Log output format; JSON by default in production so log shippers can parse it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Which origins may call the API from a browser.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CorsOrigins {
    /// Unset: no cross-origin browser access at all (a dashboard on another origin must be
    /// named in `CORS_ORIGIN`).
    None,
    /// `*`: any origin (no credentials).
    Any,
    /// An explicit allow-list of origins such as `https://dash.example.com`.
    List(Vec<String>),
}

/// What one client may hold of the HTTP server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// A request's headers must arrive within this of the connection opening or of the
    /// previous response; an idle keep-alive connection is closed after it too
    /// (`HTTP_HEADER_READ_TIMEOUT_MS`, 10000).
    pub header_read_timeout: Duration,
    /// A request's body must arrive within this of its headers, or the answer is `408`
    /// (`HTTP_BODY_READ_TIMEOUT_MS`, 30000).
    pub body_read_timeout: Duration,
    /// Open connections at most; beyond it a new connection gets `503` and is closed
    /// (`HTTP_MAX_CONNECTIONS`, 16384; the open-files limit is raised to fit it at start).
    pub max_connections: usize,
    /// Live event streams (SSE) one user may hold at once; one more is `429`
    /// (`SSE_MAX_STREAMS_PER_USER`, 8).
    pub sse_streams_per_user: usize,
}

/// The per-hour budget of one tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TierLimits {
    /// Sessions a user may own (every session not deleted counts).
    pub max_sessions: u32,
    /// Messages a user may send per hour (each bulk item counts).
    pub messages_per_hour: u32,
    /// Authenticated API calls per hour (API key or JWT).
    pub api_calls_per_hour: u32,
    /// Least time between two sends of one session, so a number does not look like a bot
    /// (`{TIER}_TIER_SEND_INTERVAL_MS`; 0 turns pacing off).
    pub send_interval_ms: u64,
    /// Random extra up to this much on top of `send_interval` (`{TIER}_TIER_SEND_JITTER_MS`).
    pub send_jitter_ms: u64,
    /// Webhook endpoints a user may register (`{TIER}_TIER_MAX_WEBHOOKS`).
    pub max_webhooks: u32,
}

/// Limits for every tier, overridable per tier through `{TIER}_TIER_MAX_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TierTable {
    basic: TierLimits,
    pro: TierLimits,
    max: TierLimits,
}

impl TierTable {
    /// The limits that apply to `tier`.
    pub fn limits(&self, tier: Tier) -> TierLimits {
        match tier {
            Tier::Basic => self.basic,
            Tier::Pro => self.pro,
            Tier::Max => self.max,
        }
    }
}

impl Default for TierTable {
    fn default() -> Self {
        Self {
            basic: TierLimits {
                max_sessions: 1,
                messages_per_hour: 100,
                api_calls_per_hour: 1_000,
                send_interval_ms: 2_000,
                send_jitter_ms: 1_000,
                max_webhooks: 2,
            },
            pro: TierLimits {
                max_sessions: 5,
                messages_per_hour: 1_000,
                api_calls_per_hour: 10_000,
                send_interval_ms: 1_000,
                send_jitter_ms: 500,
                max_webhooks: 10,
            },
            max: TierLimits {
                max_sessions: 20,
                messages_per_hour: 10_000,
                api_calls_per_hour: 100_000,
                send_interval_ms: 300,
                send_jitter_ms: 200,
                max_webhooks: 50,
            },
        }
    }
}

/// Thresholds for throttling repeated failed logins.
#[derive(Clone, Copy, Debug)]
pub struct LoginThrottle {
    /// Failed attempts on one account within the window before it is locked for the window.
    pub max_failures_per_account: u32,
    /// Failed attempts from one client address within the window before it is refused.
    pub max_failures_per_ip: u32,
    /// How long failures are remembered.
    pub window: Duration,
}

/// Everything the gateway needs to start, parsed and validated once.
#[derive(Clone, Debug)]
pub struct Config {
    /// Development or production (`APP_ENV`).
    pub app_env: AppEnv,
    /// Address to listen on (`HOST`).
    pub host: IpAddr,
    /// Port to listen on (`PORT`, 8000); `0` picks a free port (tests).
    pub port: u16,
    /// Where the embedded store and generated secrets live (`DATA_DIR`).
    pub data_dir: PathBuf,
    /// PostgreSQL URL; unset means the embedded SQLite store (`DATABASE_URL`).
    pub database_url: Option<Secret<String>>,
    /// Redis URL; unset means in-process quotas and routing cache (`REDIS_URL`).
    pub redis_url: Option<Secret<String>>,
    /// Prefix of every Redis key, so several deployments or test runs share one Redis safely.
    pub redis_key_prefix: String,
    /// Kafka bootstrap servers; unset means the embedded log (`KAFKA_BROKERS`).
    pub kafka_brokers: Option<String>,
    /// Put in front of every topic and consumer-group name (`KAFKA_TOPIC_PREFIX`, empty), so
    /// several gateways (or test runs) can share one cluster.
    pub topic_prefix: String,
    /// This process's static member id in its Kafka consumer groups
    /// (`KAFKA_GROUP_INSTANCE_ID`; default: the host name and the HTTP port). A process
    /// restarted under the same id takes its dead predecessor's place in the group at once,
    /// instead of joining beside a member the coordinator still believes alive. Must be unique
    /// among the gateway processes sharing a cluster and stable across restarts of one.
    pub kafka_group_instance_id: Option<String>,
    /// HMAC key of access tokens (`JWT_SECRET`).
    pub jwt_secret: Secret<String>,
    /// Shared secret of the worker protocol, both directions (`WORKER_AUTH_TOKEN`).
    pub worker_auth_token: Secret<String>,
    /// Seals the secrets stored at rest that the gateway reads back (webhook signing secrets):
    /// `DATA_ENCRYPTION_KEY`, see [`crate::crypto::SecretBox`].
    pub data_encryption_key: Secret<String>,
    /// Keys that sealed values before the current one; they still open them
    /// (`DATA_ENCRYPTION_KEYS_PREVIOUS`, comma-separated).
    pub data_encryption_keys_previous: Vec<Secret<String>>,
    /// Which webhook endpoints are allowed (`WEBHOOK_ALLOW_PRIVATE`, `WEBHOOK_ALLOW_HTTP`).
    pub webhook_targets: crate::webhooks::ssrf::TargetPolicy,
    /// Lifetime of access tokens (`JWT_ACCESS_TOKEN_TTL_SECONDS`, 900).
    pub access_token_ttl: Duration,
    /// Lifetime of refresh tokens (`JWT_REFRESH_TOKEN_TTL_SECONDS`, 30 days).
    pub refresh_token_ttl: Duration,
    /// Browser origins allowed by CORS (`CORS_ORIGIN`, comma-separated or `*`).
    pub cors_origins: CorsOrigins,
    /// `tracing` filter directive (`LOG_LEVEL`, `info`).
    pub log_level: String,
    /// Log line format (`LOG_FORMAT`: `pretty` or `json`).
    pub log_format: LogFormat,
    /// Largest request body accepted (`MAX_BODY_BYTES`, 1 MiB).
    pub max_body_bytes: usize,
    /// Connections, timeouts and streams of the HTTP server (`HTTP_*`, `SSE_MAX_STREAMS_PER_USER`).
    pub http_limits: HttpLimits,
    /// When set, `GET /metrics` wants `Authorization: Bearer <METRICS_TOKEN>` (`METRICS_TOKEN`).
    pub metrics_token: Option<Secret<String>>,
    /// Per-tier limits (`{BASIC,PRO,MAX}_TIER_MAX_{SESSIONS,MESSAGES_PER_HOUR,API_CALLS_PER_HOUR}`).
    pub tiers: TierTable,
    /// Throttling of the credential checks (`LOGIN_MAX_FAILURES_PER_ACCOUNT`;
    /// `LOGIN_MAX_FAILURES_PER_IP`, which also bounds registrations and failed refreshes per
    /// address; `LOGIN_THROTTLE_WINDOW_SECONDS`); see `auth::throttle`.
    pub login_throttle: LoginThrottle,
    /// Whether `X-Forwarded-For` names the client (only behind a trusted proxy: `TRUST_PROXY_HEADERS`).
    pub trust_proxy_headers: bool,
    /// How often batched bookkeeping (API key `last_used`, usage records) is flushed
    /// (`FLUSH_INTERVAL_MS`, 5000).
    pub flush_interval: Duration,
    /// A worker without a heartbeat this long is OFFLINE (healthy probes do not count)
    /// (`WORKER_HEARTBEAT_TIMEOUT_MS`, 90000).
    pub worker_heartbeat_timeout: Duration,
    /// How often worker liveness is checked (`WORKER_MONITOR_INTERVAL_MS`, 1000).
    pub worker_monitor_interval: Duration,
    /// How often workers are probed with `GET /health` (`WORKER_PROBE_INTERVAL_MS`, 1000); a
    /// worker refusing connections to 3 probes in a row is OFFLINE.
    pub worker_probe_interval: Duration,
    /// Timeout of one gateway → worker call (`WORKER_REQUEST_TIMEOUT_MS`, 10000).
    pub worker_request_timeout: Duration,
    /// A session that should run on its worker but is missing from that worker's heartbeats
    /// this long after it was placed there is started again (`SESSION_RECONCILE_AFTER_MS`,
    /// 60000: two of the existing worker's heartbeat periods).
    pub session_reconcile_after: Duration,
    /// How long worker metrics samples are kept (`WORKER_METRICS_RETENTION_HOURS`, 24).
    pub worker_metrics_retention: Duration,
    /// Country calling code put in front of local numbers (`0812…`) (`DEFAULT_COUNTRY_CODE`, 62).
    pub default_country_code: String,
    /// How long an accepted message may wait for its session's worker before it is FAILED and
    /// dead-lettered (`DELIVERY_MAX_WAIT_MS`, 600000).
    pub delivery_max_wait: Duration,
    /// Delivery attempts before a message is FAILED and dead-lettered (`DELIVERY_MAX_ATTEMPTS`, 50).
    pub delivery_max_attempts: u32,
    /// Worker calls the delivery consumer keeps in flight at once, one per session at most
    /// (`DELIVERY_MAX_IN_FLIGHT`, 512).
    pub delivery_max_in_flight: usize,
    /// Worker calls per second the delivery consumer still starts while the ingress is
    /// saturated ([`crate::priority::IngressPressure`]), one at a time (`DELIVERY_BURST_RATE`,
    /// 50): the log holds the rest until the burst is over.
    pub delivery_burst_rate: u32,
    /// Nice value of the consumers' threads (delivery, events), 0 to 19 (`CONSUMER_NICE`, 0):
    /// above 0 the HTTP ingress always gets the CPU first, at the cost of delivery latency.
    pub consumer_nice: u8,
}

/// Values that ship in `.env.example` and docs; production must not run with them.
const KNOWN_DEFAULT_SECRETS: &[&str] = &[
    "change-me",
    "changeme",
    "secret",
    "change-me-to-a-long-random-string",
];

/// Shortest secret production accepts: HS256 keys below 256 bits are guessable.
const MIN_SECRET_LEN: usize = 32;

/// Name of the file in `DATA_DIR` that keeps generated secrets between runs.
const GENERATED_SECRETS_FILE: &str = "secrets.env";

impl Config {
    /// Reads `.env` (when present) and the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        // A missing .env is normal; a malformed one is an error worth reporting.
        if let Err(err) = dotenvy::dotenv()
            && !err.not_found()
        {
            return Err(ConfigError::new(".env", err.to_string()));
        }
        Self::from_vars(std::env::vars().collect())
    }

    /// Builds the configuration from a variable map; generates missing secrets in development.
    pub fn from_vars(vars: HashMap<String, String>) -> Result<Self, ConfigError> {
        let source = VarSource { vars };
        let app_env = match source
            .get("APP_ENV")
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("development") | Some("dev") | Some("test") => AppEnv::Development,
            Some("production") | Some("prod") => AppEnv::Production,
            Some(other) => {
                return Err(ConfigError::new(
                    "APP_ENV",
                    format!("expected `development` or `production`, got `{other}`"),
                ));
            }
        };
        let host = source.parse_or("HOST", IpAddr::V4(Ipv4Addr::UNSPECIFIED))?;
        let port = source.parse_or("PORT", 8000u16)?;
        let data_dir = PathBuf::from(source.get("DATA_DIR").unwrap_or("./data"));
        let database_url = source
            .get("DATABASE_URL")
            .map(|url| Secret::new(url.to_owned()));
        if let Some(url) = &database_url
            && !(url.expose().starts_with("postgres://")
                || url.expose().starts_with("postgresql://"))
        {
            return Err(ConfigError::new(
                "DATABASE_URL",
                "expected a postgres:// URL (leave it unset for the embedded SQLite store)",
            ));
        }
        let redis_url = source
            .get("REDIS_URL")
            .map(|url| Secret::new(url.to_owned()));
        if let Some(url) = &redis_url {
            if url.expose().starts_with("rediss://") {
                // This build has no TLS for Redis: refused here rather than at the first
                // connection attempt with a less clear error.
                return Err(ConfigError::new(
                    "REDIS_URL",
                    "rediss:// (Redis over TLS) is not supported by this build; use redis:// \
                     on a private network or through a TLS tunnel (stunnel, a sidecar)",
                ));
            }
            if !url.expose().starts_with("redis://") {
                return Err(ConfigError::new("REDIS_URL", "expected a redis:// URL"));
            }
        }
        let redis_key_prefix = source.get("REDIS_KEY_PREFIX").unwrap_or("wag:").to_owned();
        let kafka_brokers = source.get("KAFKA_BROKERS").map(str::to_owned);

        let [jwt_secret, worker_auth_token, data_encryption_key] = match app_env {
            AppEnv::Production => [
                production_secret(&source, "JWT_SECRET")?,
                production_secret(&source, "WORKER_AUTH_TOKEN")?,
                production_secret(&source, "DATA_ENCRYPTION_KEY")?,
            ],
            AppEnv::Development => development_secrets(&source, &data_dir)?,
        };
        let data_encryption_keys_previous = source
            .get("DATA_ENCRYPTION_KEYS_PREVIOUS")
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|key| !key.is_empty())
            .map(|key| Secret::new(key.to_owned()))
            .collect();
        let webhook_targets = crate::webhooks::ssrf::TargetPolicy {
            allow_private: source.parse_or("WEBHOOK_ALLOW_PRIVATE", false)?,
            allow_http: source.parse_or("WEBHOOK_ALLOW_HTTP", false)?,
        };

        let cors_origins = match source.get("CORS_ORIGIN") {
            None | Some("") => CorsOrigins::None,
            Some("*") => CorsOrigins::Any,
            Some(list) => {
                let origins: Vec<String> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|o| !o.is_empty())
                    .map(str::to_owned)
                    .collect();
                if let Some(bad) = origins
                    .iter()
                    .find(|o| !(o.starts_with("http://") || o.starts_with("https://")))
                {
                    return Err(ConfigError::new(
                        "CORS_ORIGIN",
                        format!(
                            "`{bad}` is not an origin like https://dash.example.com (or use *)"
                        ),
                    ));
                }
                CorsOrigins::List(origins)
            }
        };
        let log_format = match source.get("LOG_FORMAT") {
            None if app_env == AppEnv::Production => LogFormat::Json,
            None | Some("pretty") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::new(
                    "LOG_FORMAT",
                    format!("expected `pretty` or `json`, got `{other}`"),
                ));
            }
        };

        let defaults = TierTable::default();
        let tiers = TierTable {
            basic: tier_limits(&source, "BASIC", defaults.basic)?,
            pro: tier_limits(&source, "PRO", defaults.pro)?,
            max: tier_limits(&source, "MAX", defaults.max)?,
        };

        Ok(Self {
            app_env,
            host,
            port,
            data_dir,
            database_url,
            redis_url,
            redis_key_prefix,
            kafka_brokers,
            topic_prefix: source.get("KAFKA_TOPIC_PREFIX").unwrap_or("").to_owned(),
            kafka_group_instance_id: source
                .get("KAFKA_GROUP_INSTANCE_ID")
                .map(str::to_owned)
                .filter(|id| !id.is_empty()),
            jwt_secret,
            worker_auth_token,
            data_encryption_key,
            data_encryption_keys_previous,
            webhook_targets,
            access_token_ttl: Duration::from_secs(
                source.positive_or("JWT_ACCESS_TOKEN_TTL_SECONDS", 900)?,
            ),
            refresh_token_ttl: Duration::from_secs(
                source.positive_or("JWT_REFRESH_TOKEN_TTL_SECONDS", 30 * 24 * 3600)?,
            ),
            cors_origins,
            log_level: source.get("LOG_LEVEL").unwrap_or("info").to_owned(),
            log_format,
            max_body_bytes: source.positive_or("MAX_BODY_BYTES", 1024 * 1024)? as usize,
            http_limits: HttpLimits {
                header_read_timeout: Duration::from_millis(
                    source.positive_or("HTTP_HEADER_READ_TIMEOUT_MS", 10_000)?,
                ),
                body_read_timeout: Duration::from_millis(
                    source.positive_or("HTTP_BODY_READ_TIMEOUT_MS", 30_000)?,
                ),
                max_connections: source.positive_or("HTTP_MAX_CONNECTIONS", 16_384)? as usize,
                sse_streams_per_user: source.positive_or("SSE_MAX_STREAMS_PER_USER", 8)? as usize,
            },
            metrics_token: source
                .get("METRICS_TOKEN")
                .filter(|token| !token.is_empty())
                .map(|token| Secret::new(token.to_owned())),
            tiers,
            login_throttle: LoginThrottle {
                max_failures_per_account: source.positive_or("LOGIN_MAX_FAILURES_PER_ACCOUNT", 5)?
                    as u32,
                max_failures_per_ip: source.positive_or("LOGIN_MAX_FAILURES_PER_IP", 50)? as u32,
                window: Duration::from_secs(
                    source.positive_or("LOGIN_THROTTLE_WINDOW_SECONDS", 900)?,
                ),
            },
            trust_proxy_headers: source.parse_or("TRUST_PROXY_HEADERS", false)?,
            flush_interval: Duration::from_millis(source.positive_or("FLUSH_INTERVAL_MS", 5000)?),
            worker_heartbeat_timeout: Duration::from_millis(
                source.positive_or("WORKER_HEARTBEAT_TIMEOUT_MS", 90_000)?,
            ),
            worker_monitor_interval: Duration::from_millis(
                source.positive_or("WORKER_MONITOR_INTERVAL_MS", 1_000)?,
            ),
            worker_probe_interval: Duration::from_millis(
                source.positive_or("WORKER_PROBE_INTERVAL_MS", 1_000)?,
            ),
            worker_request_timeout: Duration::from_millis(
                source.positive_or("WORKER_REQUEST_TIMEOUT_MS", 10_000)?,
            ),
            session_reconcile_after: Duration::from_millis(
                source.positive_or("SESSION_RECONCILE_AFTER_MS", 60_000)?,
            ),
            worker_metrics_retention: Duration::from_secs(
                3600 * source.positive_or("WORKER_METRICS_RETENTION_HOURS", 24)?,
            ),
            default_country_code: parse_country_code(source.get("DEFAULT_COUNTRY_CODE"))?,
            delivery_max_wait: Duration::from_millis(
                source.positive_or("DELIVERY_MAX_WAIT_MS", 600_000)?,
            ),
            delivery_max_attempts: source.positive_or("DELIVERY_MAX_ATTEMPTS", 50)? as u32,
            delivery_max_in_flight: source.positive_or("DELIVERY_MAX_IN_FLIGHT", 512)? as usize,
            delivery_burst_rate: match source.positive_or("DELIVERY_BURST_RATE", 50)? {
                rate @ 1..=1_000 => rate as u32,
                _ => return Err(ConfigError::new("DELIVERY_BURST_RATE", "must be 1 to 1000")),
            },
            consumer_nice: match source.parse_or("CONSUMER_NICE", 0u8)? {
                nice @ 0..=19 => nice,
                _ => return Err(ConfigError::new("CONSUMER_NICE", "must be 0 to 19")),
            },
        })
    }

    /// Path of the embedded SQLite database.
    pub fn sqlite_path(&self) -> PathBuf {
        self.data_dir.join("wa-gateway.db")
    }
}

fn production_secret(
    source: &VarSource,
    variable: &'static str,
) -> Result<Secret<String>, ConfigError> {
    let value = source
        .get(variable)
        .ok_or_else(|| ConfigError::new(variable, "must be set when APP_ENV=production"))?;
    if KNOWN_DEFAULT_SECRETS.contains(&value.to_ascii_lowercase().as_str()) {
        return Err(ConfigError::new(
            variable,
            "is a documented default; set a random value",
        ));
    }
    if value.len() < MIN_SECRET_LEN {
        return Err(ConfigError::new(
            variable,
            format!("must be at least {MIN_SECRET_LEN} characters in production"),
        ));
    }
    Ok(Secret::new(value.to_owned()))
}

/// The secrets development generates when they are not set, in this order.
const GENERATED_SECRETS: [&str; 3] = ["JWT_SECRET", "WORKER_AUTH_TOKEN", "DATA_ENCRYPTION_KEY"];

/// In development a missing secret is generated once and kept in `DATA_DIR/secrets.env`, so
/// tokens survive restarts, sealed values stay readable, and `admin` commands share the
/// running server's secrets. A secret added by a newer version is appended to an older file.
fn development_secrets(
    source: &VarSource,
    data_dir: &Path,
) -> Result<[Secret<String>; 3], ConfigError> {
    let given = GENERATED_SECRETS.map(|name| source.get(name).map(str::to_owned));
    if let [Some(jwt), Some(worker), Some(key)] = &given {
        return Ok([jwt, worker, key].map(|value| Secret::new(value.clone())));
    }
    let path = data_dir.join(GENERATED_SECRETS_FILE);
    let mut stored: HashMap<String, String> = match std::fs::read_to_string(&path) {
        Ok(text) => text
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
        Err(err) => {
            return Err(ConfigError::new(
                "DATA_DIR",
                format!("cannot read {}: {err}", path.display()),
            ));
        }
    };
    let mut changed = false;
    for name in GENERATED_SECRETS {
        if !stored.contains_key(name) {
            stored.insert(name.to_owned(), crate::auth::random_token(48));
            changed = true;
        }
    }
    if changed {
        std::fs::create_dir_all(data_dir).map_err(|err| {
            ConfigError::new(
                "DATA_DIR",
                format!("cannot create {}: {err}", data_dir.display()),
            )
        })?;
        let mut text = format!(
            "# Generated by wa-gateway on first start; set {} to override.\n",
            GENERATED_SECRETS.join(" / ")
        );
        for name in GENERATED_SECRETS {
            text.push_str(&format!("{name}={}\n", stored[name]));
        }
        write_private_file(&path, &text).map_err(|err| {
            ConfigError::new(
                "DATA_DIR",
                format!("cannot write {}: {err}", path.display()),
            )
        })?;
    }
    let pick = |i: usize| {
        Secret::new(
            given[i]
                .clone()
                .unwrap_or_else(|| stored[GENERATED_SECRETS[i]].clone()),
        )
    };
    Ok([pick(0), pick(1), pick(2)])
}

/// Creates `DATA_DIR` if needed and makes it and the files directly in it private to this user
/// (0700, 0600): it holds the store, the log and generated secrets, and may have been made by
/// an older version or by hand with the usual 0755 / 0644.
pub fn make_data_dir_private(data_dir: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let failed = |what: &str, err: std::io::Error| {
        ConfigError::new(
            "DATA_DIR",
            format!("cannot {what} {}: {err}", data_dir.display()),
        )
    };
    std::fs::create_dir_all(data_dir).map_err(|err| failed("create", err))?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|err| failed("restrict", err))?;
    for entry in std::fs::read_dir(data_dir).map_err(|err| failed("read", err))? {
        let entry = entry.map_err(|err| failed("read", err))?;
        let Ok(metadata) = entry.metadata() else {
            continue;
        };
        let mode = metadata.permissions().mode();
        if metadata.is_file() && mode & 0o077 != 0 {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode & 0o700))
                .map_err(|err| failed("restrict a file in", err))?;
        }
    }
    Ok(())
}

fn write_private_file(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(text.as_bytes())
}

/// `DEFAULT_COUNTRY_CODE`: 1 to 3 digits, a leading `+` tolerated.
fn parse_country_code(raw: Option<&str>) -> Result<String, ConfigError> {
    let code = raw.unwrap_or("62").trim_start_matches('+');
    if (1..=3).contains(&code.len())
        && code.bytes().all(|b| b.is_ascii_digit())
        && !code.starts_with('0')
    {
        Ok(code.to_owned())
    } else {
        Err(ConfigError::new(
            "DEFAULT_COUNTRY_CODE",
            format!("`{code}` is not a country calling code (1 to 3 digits, e.g. 62)"),
        ))
    }
}

/// The variables of one tier, one per [`TierLimits`] field.
struct TierVars {
    sessions: &'static str,
    messages: &'static str,
    api_calls: &'static str,
    interval: &'static str,
    jitter: &'static str,
    webhooks: &'static str,
}

/// Spelled out: a [`ConfigError`] names its variable with a `&'static str`.
const TIER_VARS: [(&str, TierVars); 3] = [
    (
        "BASIC",
        TierVars {
            sessions: "BASIC_TIER_MAX_SESSIONS",
            messages: "BASIC_TIER_MAX_MESSAGES_PER_HOUR",
            api_calls: "BASIC_TIER_MAX_API_CALLS_PER_HOUR",
            interval: "BASIC_TIER_SEND_INTERVAL_MS",
            jitter: "BASIC_TIER_SEND_JITTER_MS",
            webhooks: "BASIC_TIER_MAX_WEBHOOKS",
        },
    ),
    (
        "PRO",
        TierVars {
            sessions: "PRO_TIER_MAX_SESSIONS",
            messages: "PRO_TIER_MAX_MESSAGES_PER_HOUR",
            api_calls: "PRO_TIER_MAX_API_CALLS_PER_HOUR",
            interval: "PRO_TIER_SEND_INTERVAL_MS",
            jitter: "PRO_TIER_SEND_JITTER_MS",
            webhooks: "PRO_TIER_MAX_WEBHOOKS",
        },
    ),
    (
        "MAX",
        TierVars {
            sessions: "MAX_TIER_MAX_SESSIONS",
            messages: "MAX_TIER_MAX_MESSAGES_PER_HOUR",
            api_calls: "MAX_TIER_MAX_API_CALLS_PER_HOUR",
            interval: "MAX_TIER_SEND_INTERVAL_MS",
            jitter: "MAX_TIER_SEND_JITTER_MS",
            webhooks: "MAX_TIER_MAX_WEBHOOKS",
        },
    ),
];

fn tier_limits(
    source: &VarSource,
    tier: &'static str,
    default: TierLimits,
) -> Result<TierLimits, ConfigError> {
    let Some((_, vars)) = TIER_VARS.iter().find(|(name, _)| *name == tier) else {
        return Ok(default);
    };
    Ok(TierLimits {
        max_sessions: source.parse_or(vars.sessions, default.max_sessions)?,
        messages_per_hour: source.parse_or(vars.messages, default.messages_per_hour)?,
        api_calls_per_hour: source.parse_or(vars.api_calls, default.api_calls_per_hour)?,
        send_interval_ms: source.parse_or(vars.interval, default.send_interval_ms)?,
        send_jitter_ms: source.parse_or(vars.jitter, default.send_jitter_ms)?,
        max_webhooks: source.parse_or(vars.webhooks, default.max_webhooks)?,
    })
}

struct VarSource {
    vars: HashMap<String, String>,
}

impl VarSource {
    /// A set, non-blank variable.
    fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    fn parse_or<T: std::str::FromStr>(
        &self,
        name: &'static str,
        default: T,
    ) -> Result<T, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw.parse().map_err(|_| {
                ConfigError::new(
                    name,
                    format!("cannot parse `{raw}` as {}", std::any::type_name::<T>()),
                )
            }),
        }
    }

    fn positive_or(&self, name: &'static str, default: u64) -> Result<u64, ConfigError> {
        let value = self.parse_or(name, default)?;
        if value == 0 {
            return Err(ConfigError::new(name, "must be greater than zero"));
        }
        Ok(value)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn development_generates_and_keeps_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let dir_str = dir.path().to_str().unwrap();
        let first = Config::from_vars(vars(&[("DATA_DIR", dir_str)])).unwrap();
        let second = Config::from_vars(vars(&[("DATA_DIR", dir_str)])).unwrap();
        assert_eq!(first.jwt_secret, second.jwt_secret);
        assert_eq!(first.worker_auth_token, second.worker_auth_token);
        assert!(first.jwt_secret.expose().len() >= MIN_SECRET_LEN);
        assert_eq!(format!("{:?}", first.jwt_secret), "Secret(***)");
    }

    #[test]
    fn production_refuses_missing_and_default_secrets() {
        let err = Config::from_vars(vars(&[("APP_ENV", "production")])).unwrap_err();
        assert_eq!(err.variable, "JWT_SECRET");
        let err = Config::from_vars(vars(&[
            ("APP_ENV", "production"),
            ("JWT_SECRET", "change-me"),
            ("WORKER_AUTH_TOKEN", "x".repeat(40).as_str()),
        ]))
        .unwrap_err();
        assert_eq!(err.variable, "JWT_SECRET");
        let err = Config::from_vars(vars(&[
            ("APP_ENV", "production"),
            ("JWT_SECRET", "j".repeat(40).as_str()),
            ("WORKER_AUTH_TOKEN", "w".repeat(40).as_str()),
        ]))
        .unwrap_err();
        assert_eq!(err.variable, "DATA_ENCRYPTION_KEY");
        let ok = Config::from_vars(vars(&[
            ("APP_ENV", "production"),
            ("JWT_SECRET", "j".repeat(40).as_str()),
            ("WORKER_AUTH_TOKEN", "w".repeat(40).as_str()),
            ("DATA_ENCRYPTION_KEY", "k".repeat(40).as_str()),
        ]))
        .unwrap();
        assert_eq!(ok.log_format, LogFormat::Json);
    }

    #[test]
    fn redis_over_tls_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let err = Config::from_vars(vars(&[
            ("DATA_DIR", dir.path().to_str().unwrap()),
            ("REDIS_URL", "rediss://cache.example.com:6380"),
        ]))
        .unwrap_err();
        assert_eq!(err.variable, "REDIS_URL");
        assert!(err.to_string().contains("not supported"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let base = [("DATA_DIR", dir.path().to_str().unwrap())];
        for (name, value) in [
            ("PORT", "eighty"),
            ("PRO_TIER_MAX_MESSAGES_PER_HOUR", "-1"),
            ("DATABASE_URL", "mysql://x"),
            ("CORS_ORIGIN", "dash.example.com"),
            ("MAX_BODY_BYTES", "0"),
            ("CONSUMER_NICE", "20"),
            ("CONSUMER_NICE", "-1"),
            ("DELIVERY_BURST_RATE", "0"),
            ("DELIVERY_BURST_RATE", "5000"),
        ] {
            let mut all = vars(&base);
            all.insert(name.to_owned(), value.to_owned());
            let err = Config::from_vars(all).unwrap_err();
            assert_eq!(err.variable, name, "{err}");
        }
    }

    #[test]
    fn tier_overrides_apply() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_vars(vars(&[
            ("DATA_DIR", dir.path().to_str().unwrap()),
            ("BASIC_TIER_MAX_MESSAGES_PER_HOUR", "7"),
        ]))
        .unwrap();
        assert_eq!(config.tiers.limits(Tier::Basic).messages_per_hour, 7);
        assert_eq!(config.tiers.limits(Tier::Pro).messages_per_hour, 1_000);
    }
}
