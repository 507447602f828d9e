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
