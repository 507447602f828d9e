//! The `wa-gateway` command line. `main.rs` only parses and calls [`run`].

use clap::{Parser, Subcommand};

use crate::app::{AppContext, Application, shutdown_signal};
use crate::config::Config;
use crate::domain::{DisplayName, Email, Password, Role, Tier};

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
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Run a simulated Baileys worker (tests, demos, benchmarks, smoke tests of a deployment).
    SimWorker(SimWorkerArgs),
    /// Administrative tasks against the configured store.
    Admin {
        /// Which task.
        #[command(subcommand)]
        command: AdminCommand,
    },
}

/// `wa-gateway admin …`
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create a user with any role and tier (works while `serve` runs).
    CreateUser {
        /// Login e-mail.
        #[arg(long)]
        email: String,
        /// Password (at least 8 characters with a letter and a digit).
        #[arg(long)]
        password: String,
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

/// `wa-gateway sim-worker` options; the token comes from `WORKER_AUTH_TOKEN`.
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
}

fn parse_role(raw: &str) -> Result<Role, String> {
    raw.to_ascii_uppercase().parse()
}

fn parse_tier(raw: &str) -> Result<Tier, String> {
    raw.to_ascii_uppercase().parse()
}

/// Runs a parsed command line; the error is printed by `main` and the process exits non-zero.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::from_env()?;
    crate::telemetry::init(&config.log_level, config.log_format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::SimWorker(args) => {
            if !(0.0..=1.0).contains(&args.fail_rate) {
                anyhow::bail!("--fail-rate must be between 0 and 1");
            }
            let sim = crate::sim::SimWorkerConfig {
                listen: args.listen,
                backend_url: args.backend.trim_end_matches('/').to_owned(),
                worker_id: args.worker_id,
                auth_token: config.worker_auth_token.expose().clone(),
                max_sessions: args.max_sessions,
                heartbeat_interval: std::time::Duration::from_millis(args.heartbeat_interval_ms),
                auto_connect: std::time::Duration::from_millis(args.auto_connect_ms),
                send_latency: std::time::Duration::from_millis(args.send_latency_ms),
                fail_rate: args.fail_rate,
                register_delay: std::time::Duration::ZERO,
                register_retries: 5,
                register_retry_interval: std::time::Duration::from_secs(5),
            };
            crate::sim::run(sim, shutdown_signal()).await
        }
        Command::Serve => {
            let application = Application::build(config).await?;
            application.run_until_stopped(shutdown_signal()).await
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
        Command::Admin {
            command:
                AdminCommand::CreateUser {
                    email,
                    password,
                    name,
                    role,
                    tier,
                },
        } => {
            let email = Email::parse(&email)?;
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
