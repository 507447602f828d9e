//! wa-gateway: a multi-tenant WhatsApp gateway.
//!
//! Companies manage users, sessions and API keys over REST, post sends with API keys, and the
//! gateway routes them through a log partitioned by session to a fleet of Baileys workers.
//! See `ARCHITECTURE.md` for the codemap and invariants.
//!
//! Modules:
//! - [`config`]: the typed configuration, loaded once from the environment.
//! - [`domain`]: newtypes and enumerations, parsed once at the edge.
//! - [`store`]: the repository layer over SQLite (embedded) and PostgreSQL.
//! - [`auth`]: passwords, access/refresh tokens, API keys, the account flows.
//! - [`fleet`]: workers, session placement and routing, fencing, migration jobs (apalis).
//! - [`sim`]: the simulated Baileys worker (`wa-gateway sim-worker`).
//! - [`limits`]: fixed-window counters (in-process or Redis) under throttling and quotas.
//! - [`quota`]: tier quotas per user per hour and batched usage records.
//! - [`send`]: send requests validated into the exact worker send body, and the ingress that
//!   appends them durably to the outbound log.
//! - [`pipeline`]: the log under the send path (Kafka or the embedded log), its producer and
//!   consumer-group readers.
//! - [`delivery`]: the delivery consumer (per-session lanes to the owning worker, pacing,
//!   retries, DLQ) and the events consumer (status changes into `messages`).
//! - [`http`]: warp routes, the error envelope, the server loop.
//! - [`app`]: building and running the application; graceful shutdown.
//! - [`metrics`]: Prometheus instruments.
//! - [`priority`]: tokio runtimes at a lower scheduling priority (the consumers, a co-located
//!   simulated worker).
//! - [`loadgen`]: the send-pipeline benchmark (`wa-gateway loadgen`): spawns a gateway and
//!   simulated workers, sends, checks delivery and order, prints one `RESULT` line.
//! - [`cli`]: the `wa-gateway` command line (`serve`, `migrate`, `admin`, `sim-worker`,
//!   `loadgen`).
//! - [`telemetry`]: logging setup.

pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod delivery;
pub mod domain;
pub mod fleet;
pub mod http;
pub mod limits;
pub mod loadgen;
pub mod metrics;
pub mod pipeline;
pub mod priority;
pub mod quota;
pub mod send;
pub mod sim;
pub mod store;
pub mod telemetry;
pub mod webhooks;
