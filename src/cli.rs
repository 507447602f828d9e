//! The `wa-gateway` command line. `main.rs` only parses and calls [`run`].

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::app::{AppContext, Application, shutdown_signal};
use crate::config::Config;
use crate::domain::{DisplayName, Email, Password, Role, Tier};
use crate::priority::PriorityRuntime;

/// Multi-tenant WhatsApp gateway.
#[derive(Debug, Parser)]
#[command(name = "wa-gateway", version, about)]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default when no subcommand is given).
    #[command(after_long_help = SERVE_ENVIRONMENT)]
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Run a simulated Baileys worker (tests, demos, benchmarks, smoke tests of a deployment).
    /// By default it reproduces the existing worker's quirks (docs/WORKER_PROTOCOL.md, "What the
    /// existing worker really does"); `--ideal` turns them all off.
    SimWorker(SimWorkerArgs),
    /// Benchmark the send pipeline: spawn a gateway and simulated workers (or use --target),
    /// send, check delivery, print one RESULT line.
    #[command(long_about = crate::loadgen::LONG_ABOUT)]
    Loadgen(crate::loadgen::LoadgenArgs),
    /// Kafka tasks against `KAFKA_BROKERS`.
    Kafka {
        /// Which task.
        #[command(subcommand)]
        command: KafkaCommand,
    },
    /// Administrative tasks against the configured store.
    Admin {
        /// Which task.
        #[command(subcommand)]
        command: AdminCommand,
    },
}

/// `serve --help`: the configuration, which is the environment (and `.env`), as `.env.example`
/// documents it.
const SERVE_ENVIRONMENT: &str = concat!(
    "Configuration comes from the environment and from ./.env; every variable, with its default:\n\n",
    include_str!("../.env.example")
);

/// `wa-gateway kafka …`
#[derive(Debug, Subcommand)]
pub enum KafkaCommand {
    /// Create the topics of `kafka/topics.toml` (under `KAFKA_TOPIC_PREFIX`) that do not exist
    /// yet; fails when one exists with another partition count. The gateway does the same at
    /// start.
    CreateTopics,
}

/// `wa-gateway admin …`
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create a user with any role and tier (works while `serve` runs).
    CreateUser {
        /// Login e-mail.
        #[arg(long)]
        email: String,
        /// Password (at least 8 characters with a letter and a digit). Visible to other users
        /// of the machine in the process list: prefer `--password-stdin`.
        #[arg(
            long,
            required_unless_present = "password_stdin",
            conflicts_with = "password_stdin"
        )]
        password: Option<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// Display name.
        #[arg(long)]
        name: String,
        /// USER or ADMINISTRATOR.
        #[arg(long, default_value = "USER", value_parser = parse_role)]
        role: Role,
        /// BASIC, PRO or MAX.
        #[arg(long, default_value = "BASIC", value_parser = parse_tier)]
        tier: Tier,
    },
}

/// `wa-gateway sim-worker` options; the token comes from `WORKER_AUTH_TOKEN` (never generated:
/// it must be the gateway's).
#[derive(Debug, clap::Args)]
pub struct SimWorkerArgs {
    /// Address to listen on, e.g. 127.0.0.1:3001.
    #[arg(long)]
    pub listen: std::net::SocketAddr,
    /// The gateway's base URL, e.g. http://127.0.0.1:8000.
    #[arg(long)]
    pub backend: String,
    /// This worker's id.
    #[arg(long)]
    pub worker_id: String,
    /// Sessions this worker accepts.
    #[arg(long, default_value_t = 50)]
    pub max_sessions: u32,
    /// Heartbeat period.
    #[arg(long, default_value_t = 30_000)]
    pub heartbeat_interval_ms: u64,
    /// Delay from QR to CONNECTED without a scan.
    #[arg(long, default_value_t = 2_000)]
    pub auto_connect_ms: u64,
    /// Added latency of every send.
    #[arg(long, default_value_t = 0)]
    pub send_latency_ms: u64,
    /// Probability (0..=1) that a send fails with 500.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Send SENT/DELIVERED/READ message-status callbacks after each send (true or false).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub receipts: bool,
    /// Run at this nice value (0 to 19), e.g. when sharing a machine with the gateway it stands
    /// in a remote fleet for.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=19))]
    pub nice: u8,

    /// Behave like an ideal worker: every quirk below off, and a full recovery-status
    /// (`--recovery-report` still overrides that).
    #[arg(long, help_heading = QUIRKS)]
    pub ideal: bool,
    /// 409 instead of 400 SESSION_NOT_CONNECTED for a send to a session that is not connected.
    #[arg(long, help_heading = QUIRKS)]
    pub no_quirk_not_connected_400: bool,
    /// Validation errors as {"error": {"code": "VALIDATION_ERROR", "message", "details":
    /// {"field"}}} instead of {"error": "Validation error", "details": [{"field", "message"}]}.
    #[arg(long, help_heading = QUIRKS)]
    pub no_quirk_validation_shape: bool,
    /// Check send bodies for shape and types only (`to` with 8 to 15 digits), without the
    /// existing worker's rules: `to` with 10 to 15 digits, UTF-16 lengths, contact e-mail and
    /// phone formats.
    #[arg(long, help_heading = QUIRKS)]
    pub no_quirk_strict_validation: bool,
    /// No rate limits (no 429 ever).
    #[arg(long, help_heading = QUIRKS)]
    pub no_quirk_rate_limits: bool,
    /// Name this worker (workerId) in every session-status callback, not only in QR_REQUIRED.
    #[arg(long, help_heading = QUIRKS)]
    pub no_quirk_callbacks_without_worker_id: bool,
    /// Report a failed session as ERROR (not INIT), say nothing while connecting, keep QRs
    /// until scanned (no INIT when one expires), add reason LOGGED_OUT to logouts.
    #[arg(long, help_heading = QUIRKS)]
    pub no_quirk_status_vocabulary: bool,
    /// On SIGINT/SIGTERM only unregister: keep the sessions' credentials (no logout of every
    /// session).
    #[arg(long, help_heading = QUIRKS)]
    pub no_quirk_logout_on_shutdown: bool,
    /// Heartbeat cpuUsage and memoryUsage as small figures growing with the sessions, instead
    /// of a random 30-50 CPU and a Node-like heap percentage.
    #[arg(long, help_heading = QUIRKS)]
    pub no_quirk_node_metrics: bool,
    /// Require the bearer token (WORKER_AUTH_TOKEN) on every route but GET /health.
    #[arg(long, help_heading = QUIRKS)]
    pub no_quirk_open_routes: bool,
    /// What to post to /sessions/recovery-status after restoring assigned sessions: none (the
    /// existing worker), summary-only (empty recoveryResults, counts under summary),
    /// lower-case (recovered/failed/error) or full (SUCCESS/FAILED/SKIPPED). Default: none, or
    /// full with --ideal.
    #[arg(long, help_heading = QUIRKS)]
    pub recovery_report: Option<crate::sim::RecoveryReport>,
    /// Session operations (start, restart, disconnect, logout, delete) admitted per window and
    /// per client IP + X-User-Id header.
    #[arg(long, help_heading = RATE_LIMITS, default_value_t = crate::sim::DEFAULT_SESSION_OPERATIONS_LIMIT)]
    pub session_operations_limit: u32,
    /// The session operations' window.
    #[arg(long, help_heading = RATE_LIMITS, default_value_t = millis(crate::sim::DEFAULT_SESSION_OPERATIONS_WINDOW))]
    pub session_operations_window_ms: u64,
    /// Sends admitted per window and per session.
    #[arg(long, help_heading = RATE_LIMITS, default_value_t = crate::sim::DEFAULT_SENDS_LIMIT)]
    pub sends_limit: u32,
    /// The sends' window.
    #[arg(long, help_heading = RATE_LIMITS, default_value_t = millis(crate::sim::DEFAULT_SENDS_WINDOW))]
    pub sends_window_ms: u64,
    /// Also limit every route but GET /health (and the /sim controls) per client IP, like the
    /// existing worker with NODE_ENV=production (and RATE_LIMITING_ENABLED not false).
    #[arg(long, help_heading = RATE_LIMITS, conflicts_with_all = ["ideal", "no_quirk_rate_limits"])]
    pub global_rate_limit: bool,
    /// Requests admitted per window by --global-rate-limit.
    #[arg(long, help_heading = RATE_LIMITS, default_value_t = crate::sim::DEFAULT_GLOBAL_LIMIT)]
    pub global_limit: u32,
    /// The window of --global-rate-limit.
    #[arg(long, help_heading = RATE_LIMITS, default_value_t = millis(crate::sim::DEFAULT_GLOBAL_WINDOW))]
    pub global_window_ms: u64,
}

/// `sim-worker --help` headings.
const QUIRKS: &str = "Quirks of the existing worker (all on by default)";
const RATE_LIMITS: &str = "Rate limits (when the rate-limit quirk is on)";

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl SimWorkerArgs {
    /// The quirks these flags ask for: the existing worker's, minus what `--ideal` or a
    /// `--no-quirk-…` flag turns off.
    pub fn quirks(&self) -> crate::sim::Quirks {
        use crate::sim::{Quirks, RateLimit, RateLimits};
        use std::time::Duration;
        let base = if self.ideal {
            Quirks::ideal()
        } else {
            Quirks::real()
        };
        let rate_limits = RateLimits {
            session_operations: RateLimit {
                max_requests: self.session_operations_limit,
                window: Duration::from_millis(self.session_operations_window_ms),
            },
            sends: RateLimit {
                max_requests: self.sends_limit,
                window: Duration::from_millis(self.sends_window_ms),
            },
            global: self.global_rate_limit.then_some(RateLimit {
                max_requests: self.global_limit,
                window: Duration::from_millis(self.global_window_ms),
            }),
        };
        Quirks {
            not_connected_400: base.not_connected_400 && !self.no_quirk_not_connected_400,
            validation_error_shape: base.validation_error_shape && !self.no_quirk_validation_shape,
            strict_validation: base.strict_validation && !self.no_quirk_strict_validation,
            rate_limits: base
                .rate_limits
                .filter(|_| !self.no_quirk_rate_limits)
                .map(|_| rate_limits),
            callbacks_without_worker_id: base.callbacks_without_worker_id
                && !self.no_quirk_callbacks_without_worker_id,
            status_vocabulary: base.status_vocabulary && !self.no_quirk_status_vocabulary,
            recovery_report: self.recovery_report.unwrap_or(base.recovery_report),
            logout_on_shutdown: base.logout_on_shutdown && !self.no_quirk_logout_on_shutdown,
            node_metrics: base.node_metrics && !self.no_quirk_node_metrics,
            open_routes: base.open_routes && !self.no_quirk_open_routes,
        }
    }
}

fn parse_role(raw: &str) -> Result<Role, String> {
    raw.to_ascii_uppercase().parse()
}

fn parse_tier(raw: &str) -> Result<Tier, String> {
    raw.to_ascii_uppercase().parse()
}

/// Runs a parsed command line; the error is printed by `main` and the process exits non-zero.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // The load generator configures the processes it spawns itself: it must not read `.env`,
    // generate secrets in `./data` or refuse a production `APP_ENV` of the shell it runs in.
    let command = match cli.command {
        Some(Command::Loadgen(args)) => return crate::loadgen::run(args).await,
        Some(Command::SimWorker(args)) => return sim_worker(args).await,
        other => other,
    };
    let config = Config::from_env()?;
    crate::telemetry::init(&config.log_level, config.log_format);
    match command.unwrap_or(Command::Serve) {
        Command::SimWorker(args) => sim_worker(args).await,
        Command::Loadgen(args) => crate::loadgen::run(args).await,
        Command::Serve => {
            let stop = shutdown_signal();
            let application = Application::build(config).await?;
            application.run_until_stopped(stop).await
        }
        Command::Migrate => {
            let context = AppContext::connect(config).await?;
            tracing::info!(
                store = context.store.backend().as_str(),
                "migrations applied"
            );
            context.store.close().await;
            Ok(())
        }
        Command::Kafka {
            command: KafkaCommand::CreateTopics,
        } => {
            let Some(brokers) = config.kafka_brokers.as_deref() else {
                anyhow::bail!("KAFKA_BROKERS is not set: the embedded log needs no topics");
            };
            let catalog = crate::pipeline::catalog(&config)?;
            let created = producers::kafka::create_topics(brokers, &catalog).await?;
            for spec in catalog.iter() {
                let state = if created.contains(&spec.name) {
                    "created"
                } else {
                    "exists"
                };
                println!("{state:8} {} ({} partitions)", spec.name, spec.partitions);
            }
            Ok(())
        }
        Command::Admin {
            command:
                AdminCommand::CreateUser {
                    email,
                    password,
                    // clap makes it the one way when --password is absent.
                    password_stdin: _,
                    name,
                    role,
                    tier,
                },
        } => {
            let email = Email::parse(&email)?;
            let password = match password {
                Some(password) => password,
                None => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .context("reading the password from standard input")?;
                    line.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            let password = Password::parse("password", &password)?;
            let name = DisplayName::parse("name", &name)?;
            let context = AppContext::connect(config).await?;
            let user = context
                .auth
                .create_user(&email, name.as_str(), &password, role, tier)
                .await?;
            println!(
                "created user {} <{}> role={} tier={}",
                user.id, user.email, user.role, user.tier
            );
            context.store.close().await;
            Ok(())
        }
    }
}

/// `wa-gateway sim-worker`: needs only `WORKER_AUTH_TOKEN` (and `LOG_LEVEL`) from the
/// environment or `.env`. It never generates a token: one of its own would only be refused by
/// the gateway.
async fn sim_worker(args: SimWorkerArgs) -> anyhow::Result<()> {
    if let Err(err) = dotenvy::dotenv()
        && !err.not_found()
    {
        anyhow::bail!(".env: {err}");
    }
    let log_level = std::env::var("LOG_LEVEL").unwrap_or_else(|_| "info".to_owned());
    crate::telemetry::init(&log_level, crate::config::LogFormat::Pretty);
    let token = std::env::var("WORKER_AUTH_TOKEN")
        .ok()
        .filter(|token| !token.is_empty())
        .context(
            "sim-worker needs WORKER_AUTH_TOKEN, the gateway's worker token (a gateway in \
             development keeps the one it generated in DATA_DIR/secrets.env)",
        )?;
    if !(0.0..=1.0).contains(&args.fail_rate) {
        anyhow::bail!("--fail-rate must be between 0 and 1");
    }
    let quirks = args.quirks();
    let sim = crate::sim::SimWorkerConfig {
        listen: args.listen,
        backend_url: args.backend.trim_end_matches('/').to_owned(),
        worker_id: args.worker_id,
        auth_token: token,
        max_sessions: args.max_sessions,
        heartbeat_interval: std::time::Duration::from_millis(args.heartbeat_interval_ms),
        auto_connect: std::time::Duration::from_millis(args.auto_connect_ms),
        send_latency: std::time::Duration::from_millis(args.send_latency_ms),
        fail_rate: args.fail_rate,
        receipts: args.receipts,
        register_delay: std::time::Duration::ZERO,
        register_retries: 5,
        register_retry_interval: std::time::Duration::from_secs(5),
        quirks,
    };
    if args.nice == 0 {
        return crate::sim::run(sim, shutdown_signal()).await;
    }
    let runtime = PriorityRuntime::start("wa-sim", args.nice)?;
    runtime
        .spawn(crate::sim::run(sim, shutdown_signal()))
        .await
        .context("the simulated worker's task failed")?
}
