//! `wa-gateway loadgen`: the send-pipeline benchmark.
//!
//! A run spawns its own gateway and simulated workers (or uses a running gateway with
//! `--target`), registers a user with an API key and connects sessions through the public API,
//! measures the HTTP ceiling on `GET /api/v1/health`, sends `--messages` text messages spread
//! round-robin over the sessions with `--concurrency` requests in flight, waits until every
//! accepted message has reached a worker, and prints one `RESULT` line on stdout (progress goes
//! to stderr). It exits non-zero when a message was lost, duplicated, reordered or not accepted.
//!
//! Modules:
//! - `processes`: the spawned `serve` and `sim-worker` children and their temporary directory.
//! - `setup`: user, API key and connected sessions through the REST API.
//! - `drive`: the request plan, the send run and the health ceiling run.
//! - `delivery`: polling the workers' `GET /sim/messages?after=<n>` until everything arrived.
//! - `report`: lost/dup/out-of-order, percentiles, rates and the `RESULT` line (pure).
//! - `progress`: live counters and the once-a-second progress line.
//! - `stages`: the gateway's delivery-stage histogram, read from `/metrics` after the run.

mod delivery;
mod drive;
mod processes;
mod progress;
mod report;
mod setup;
mod stages;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::task::JoinHandle;

use crate::config::{LogFormat, Secret};
use delivery::Poller;
use processes::{Processes, SpawnOptions};
use progress::Progress;
use report::{AcceptedMessage, Observations, Summary};

/// The `--help` text of `wa-gateway loadgen`.
pub const LONG_ABOUT: &str = "\
Benchmark the send pipeline and check that it loses, duplicates and reorders nothing.

Without --target, loadgen spawns `wa-gateway serve` (this executable) and --workers simulated
workers on free loopback ports, with a temporary DATA_DIR, a random WORKER_AUTH_TOKEN, tier
limits far above the run and pacing off (*_TIER_SEND_INTERVAL_MS=0, *_TIER_SEND_JITTER_MS=0).
The simulated workers stand in for a fleet on other machines and run at nice --sim-nice (10):
on one machine they take the CPU the gateway leaves instead of competing with it; --sim-nice 0
gives them the same share as the gateway.
DATABASE_URL, REDIS_URL, KAFKA_BROKERS, CONSUMER_NICE and DELIVERY_BURST_RATE are passed to
the gateway when set in loadgen's own environment (loadgen reads no .env). It registers a user,
creates an API key and --sessions sessions, waits until they are CONNECTED, then:

  1. ceiling: GET /api/v1/health with the same --concurrency, as many requests as the send run
     makes (at least 20,000), then a 1 s pause (the gateway takes the ceiling's saturation for
     an ingress burst and throttles delivery until shortly after it);
  2. sends --messages text messages, round-robin over the sessions, --concurrency requests in
     flight; single mode posts one message per POST /api/v1/external/send, bulk mode
     --bulk-size messages of one session per POST /api/v1/external/send/bulk;
  3. polls the workers' GET /sim/messages until every accepted message has arrived (or
     --delivery-timeout-s passes).

It ends with one line on stdout:

  RESULT accepted_per_s=… delivered_per_s=… accept_p50_ms=… accept_p99_ms=… e2e_p50_ms=…
         e2e_p99_ms=… lost=… dup=… out_of_order=… ceiling_per_s=… ratio=…

  accepted_per_s   accepted messages / time from the first request to the last answer
  delivered_per_s  delivered messages / time from the first request to the last delivery
  accept_p*_ms     per request: from sending it to reading its 202
  e2e_p*_ms        per message: worker receipt time - the time its 202 was read (one clock)
  lost / dup       accepted messages that never reached a worker / reached one twice or more
  out_of_order     messages that reached their worker after a message of the same session that
                   was sent only after they had been accepted (or, in one bulk request, came
                   later in the array); sends in flight together may arrive in either order
  ceiling_per_s    health requests per second at the same concurrency
  ratio            accepted_per_s / ceiling_per_s (in bulk mode: messages/s over requests/s)

Before it, on stderr, the gateway's own account of where delivery time went, from its
wa_gateway_delivery_stage_seconds histogram (GET /metrics): per stage (read: acceptance to the
delivery consumer's read; record: the PENDING rows written; queue: on the session's lane;
route: session and worker lookup; worker: the worker call) p50 and p99 as histogram bucket
bounds.

Exit status: non-zero when lost, dup or out_of_order is not 0, or a message was refused.
On failure the temporary directory with the children's logs is kept and its path printed.

Crash runs: with --kill-after N the spawned gateway is killed (SIGKILL: no drain, no flush)
once N messages are accepted, and started again on the same store and log --down-ms later.
Every request then carries an Idempotency-Key and is tried again, every 200 ms for up to
120 s, when it is cut off, answered 503 or 409 IDEMPOTENCY_KEY_IN_PROGRESS; the ceiling run
is skipped. A CRASH line follows the RESULT line:

  CRASH accepted=… delivered=… stranded=… sent_twice=… redelivered=… accepted_at_kill=…
        delivered_at_kill=… restart_ms=… resumed_after_ms=…

  stranded       accepted messages that never reached a worker
  sent_twice     messages at the workers under an id no answer gave: a request accepted twice
  redelivered    accepted messages a worker received more than once (the call in flight at
                 the kill, sent again): at most one per session
  restart_ms     from the kill to the new gateway answering its health check
  resumed_after_ms  from that answer to the first message reaching a worker

A crash run fails when a message is stranded, sent twice, out of order or refused, or when
more messages are redelivered than there are sessions.

Examples:
  wa-gateway loadgen --mode single --sessions 20 --messages 20000 --concurrency 64
  wa-gateway loadgen --mode single --sessions 20 --messages 20000 --rate 1000 --concurrency 64 --kill-after 5700
  wa-gateway loadgen --mode bulk --sessions 20 --messages 200000 --concurrency 4 --bulk-size 1000
  # e2e latency at a fixed load (e.g. half the top sustained rate), receipts off:
  wa-gateway loadgen --mode single --messages 50000 --concurrency 256 --rate 5000 --sim-receipts false

With --target URL it uses a running gateway instead and spawns nothing: give an API key
(--api-key or LOADGEN_API_KEY), --session-ids of CONNECTED sessions of that key's user, the
--sim-url of every simulated worker holding them (this version: it must support
GET /sim/messages?after=) and their token (--worker-token or WORKER_AUTH_TOKEN). Tier limits
and pacing are then the target's own.";

/// Requests the ceiling run makes at least, so a short bulk run still gets a stable
/// ceiling.
const MIN_CEILING_REQUESTS: usize = 20_000;
/// Pause between the ceiling run and the send run: longer than the gateway holds an ingress
/// burst after the last saturation ([`crate::priority::IngressPressure`]).
const CEILING_SETTLE: Duration = Duration::from_secs(1);
/// Timeout of one HTTP request; a bulk of 1000 under heavy load can take seconds, never this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The largest bulk the API takes.
const MAX_BULK_SIZE: u32 = 1000;

/// How messages are posted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// One message per `POST /api/v1/external/send`.
    Single,
    /// `--bulk-size` messages of one session per `POST /api/v1/external/send/bulk`.
    Bulk,
}

impl Mode {
    /// As given on the command line.
    fn as_str(self) -> &'static str {
        match self {
            Mode::Single => "single",
            Mode::Bulk => "bulk",
        }
    }
}

/// `wa-gateway loadgen` options.
#[derive(Debug, clap::Args)]
pub struct LoadgenArgs {
    /// single: one message per request; bulk: --bulk-size messages per request.
    #[arg(long, value_enum, default_value_t = Mode::Single)]
    pub mode: Mode,
    /// Sessions the messages are spread over, round-robin (ignored with --target).
    #[arg(long, default_value_t = 20)]
    pub sessions: u32,
    /// Messages to send in all.
    #[arg(long, default_value_t = 20_000)]
    pub messages: u64,
    /// HTTP requests in flight at once (send run and health ceiling).
    #[arg(long, default_value_t = 64)]
    pub concurrency: u32,
    /// Messages per bulk request (bulk mode), 1 to 1000.
    #[arg(long, default_value_t = 1000)]
    pub bulk_size: u32,
    /// Cap in messages per second: request starts are scheduled open-loop at this rate (give
    /// enough --concurrency to keep up). Unset: as fast as the gateway answers.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Simulated workers to spawn.
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// Whether the spawned simulated workers send SENT/DELIVERED/READ callbacks (true or false).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub sim_receipts: bool,
    /// Nice value (0 to 19) of the spawned simulated workers: they stand in for a fleet on other
    /// machines, so by default they take the CPU the gateway leaves instead of competing with it.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=19))]
    pub sim_nice: u8,
    /// How long to wait for deliveries after the last send [default: 60 + 1 per 5,000 messages].
    #[arg(long)]
    pub delivery_timeout_s: Option<u64>,
    /// Use the gateway at this base URL (http://…) instead of spawning one.
    #[arg(long)]
    pub target: Option<String>,
    /// With --target: the API key to send with.
    #[arg(long, env = "LOADGEN_API_KEY", hide_env_values = true, value_parser = parse_secret)]
    pub api_key: Option<Secret<String>>,
    /// With --target: CONNECTED sessions of the key's user, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub session_ids: Vec<String>,
    /// With --target: base URL of every simulated worker holding those sessions, comma-separated.
    #[arg(long = "sim-url", value_delimiter = ',')]
    pub sim_urls: Vec<String>,
    /// With --target: the simulated workers' token.
    #[arg(long, env = "WORKER_AUTH_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub worker_token: Option<Secret<String>>,
    /// Crash run: kill the spawned gateway (SIGKILL) once this many messages are accepted.
    #[arg(long)]
    pub kill_after: Option<u64>,
    /// Crash run: how long the gateway stays dead before it is started again, milliseconds.
    #[arg(long, default_value_t = 2_000)]
    pub down_ms: u64,
}

fn parse_secret(raw: &str) -> Result<Secret<String>, String> {
    Ok(Secret::new(raw.to_owned()))
}

/// The options after validation.
struct Options {
    mode: Mode,
    sessions: usize,
    messages: u64,
    concurrency: usize,
    per_request: u32,
    rate: Option<f64>,
    workers: u32,
    sim_receipts: bool,
    sim_nice: u8,
    delivery_timeout: Duration,
    target: Option<Target>,
    crash: Option<Crash>,
}

/// A crash run's kill.
#[derive(Clone, Copy)]
struct Crash {
    /// Accepted messages after which the gateway is killed.
    kill_after: u64,
    /// How long it stays dead.
    down: Duration,
}

/// A gateway ready to take the sends, and where to check their delivery.
struct Target {
    base_url: String,
    api_key: Secret<String>,
    session_ids: Vec<String>,
    sim_urls: Vec<String>,
    worker_token: Secret<String>,
}

impl LoadgenArgs {
    fn validate(self) -> anyhow::Result<Options> {
        anyhow::ensure!(self.messages > 0, "--messages must be at least 1");
        anyhow::ensure!(self.concurrency > 0, "--concurrency must be at least 1");
        anyhow::ensure!(self.workers > 0, "--workers must be at least 1");
        if let Some(rate) = self.rate {
            anyhow::ensure!(
                rate.is_finite() && rate > 0.0,
                "--rate must be a positive number of messages per second"
            );
        }
        let per_request = match self.mode {
            Mode::Single => 1,
            Mode::Bulk => {
                anyhow::ensure!(
                    (1..=MAX_BULK_SIZE).contains(&self.bulk_size),
                    "--bulk-size must be between 1 and {MAX_BULK_SIZE}"
                );
                self.bulk_size
            }
        };
        let target = match self.target {
            None => None,
            Some(url) => {
                let base_url = url.trim_end_matches('/').to_owned();
                anyhow::ensure!(
                    base_url.starts_with("http://"),
                    "--target must be a plain http:// URL, got {base_url}"
                );
                let api_key = self
                    .api_key
                    .context("--target needs --api-key (or LOADGEN_API_KEY)")?;
                anyhow::ensure!(
                    !self.session_ids.is_empty(),
                    "--target needs --session-ids: the CONNECTED sessions to send through"
                );
                anyhow::ensure!(
                    !self.sim_urls.is_empty(),
                    "--target needs --sim-url: the simulated workers holding the sessions"
                );
                let worker_token = self
                    .worker_token
                    .context("--target needs --worker-token (or WORKER_AUTH_TOKEN)")?;
                Some(Target {
                    base_url,
                    api_key,
                    session_ids: self.session_ids,
                    sim_urls: self.sim_urls,
                    worker_token,
                })
            }
        };
        let crash = match self.kill_after {
            None => None,
            Some(kill_after) => {
                anyhow::ensure!(
                    target.is_none(),
                    "--kill-after needs the gateway loadgen spawns: not with --target"
                );
                anyhow::ensure!(
                    kill_after < self.messages,
                    "--kill-after must be below --messages"
                );
                Some(Crash {
                    kill_after,
                    down: Duration::from_millis(self.down_ms),
                })
            }
        };
        let sessions = match &target {
            Some(target) => target.session_ids.len(),
            None => {
                anyhow::ensure!(self.sessions > 0, "--sessions must be at least 1");
                self.sessions as usize
            }
        };
        Ok(Options {
            mode: self.mode,
            sessions,
            messages: self.messages,
            concurrency: self.concurrency as usize,
            per_request,
            rate: self.rate,
            workers: self.workers,
            sim_receipts: self.sim_receipts,
            sim_nice: self.sim_nice,
            delivery_timeout: Duration::from_secs(
                self.delivery_timeout_s
                    .unwrap_or(60 + self.messages / 5_000),
            ),
            target,
            crash,
        })
    }
}

/// Runs the benchmark; Ctrl-C stops it and the spawned processes.
pub async fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    crate::telemetry::init("warn", LogFormat::Pretty);
    let options = args.validate()?;
    tokio::select! {
        result = benchmark(options) => result,
        signal = tokio::signal::ctrl_c() => {
            signal.context("could not listen for Ctrl-C")?;
            // Dropping the benchmark future killed the children (`kill_on_drop`).
            anyhow::bail!("interrupted")
        }
    }
}

/// Aborts the progress line when the run ends, however it ends.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn benchmark(mut options: Options) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(options.concurrency + 16)
        // Under the gateway's idle close (10 s by default).
        .pool_idle_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("could not build the HTTP client")?;
    let progress = Progress::new();
    let reporter = AbortOnDrop(progress.report_every_second());

    if let Some(target) = options.target.take() {
        let measured = measure(&client, &options, &target, &progress, None).await?;
        drop(reporter);
        return conclude(&measured);
    }

    let run_id = crate::auth::random_token(8).to_ascii_lowercase();
    eprintln!(
        "loadgen: run {run_id}: spawning the gateway and {} simulated workers",
        options.workers
    );
    let mut processes = Processes::start(
        &client,
        &SpawnOptions {
            run_id: run_id.clone(),
            workers: options.workers,
            sessions_per_worker: u32::try_from(options.sessions).unwrap_or(u32::MAX),
            receipts: options.sim_receipts,
            nice: options.sim_nice,
        },
    )
    .await?;
    let outcome = async {
        let session_ids: Vec<String> = (0..options.sessions)
            .map(|index| format!("lg-{run_id}-{index}"))
            .collect();
        let account = setup::create_account(&client, &processes.base_url, &run_id).await?;
        setup::create_sessions(&client, &processes.base_url, &account, &session_ids).await?;
        let connect_timeout =
            Duration::from_secs(60) + Duration::from_millis(100) * session_ids.len() as u32;
        setup::wait_connected(
            &client,
            &processes.base_url,
            &account,
            &session_ids,
            connect_timeout,
        )
        .await?;
        let target = Target {
            base_url: processes.base_url.clone(),
            api_key: account.api_key,
            session_ids,
            sim_urls: processes.sim_urls.clone(),
            worker_token: processes.worker_token.clone(),
        };
        measure(&client, &options, &target, &progress, Some(&mut processes)).await
    }
    .await;
    drop(reporter);
    if let Err(err) = processes.check_running() {
        eprintln!("loadgen: warning: {err:#}");
    }
    let concluded = outcome.and_then(|measured| conclude(&measured));
    // Closes the pooled keep-alive connections, which the gateway would otherwise wait for
    // while it drains.
    drop(client);
    processes.stop(concluded.is_err()).await;
    concluded
}

/// What one measurement produced.
struct Measured {
    summary: Summary,
    /// Messages the gateway did not accept.
    refused: u64,
    /// A crash run's figures.
    crash: Option<CrashFigures>,
}

/// What a crash run adds to the summary (see the `CRASH` line in [`LONG_ABOUT`]).
struct CrashFigures {
    sessions: usize,
    accepted_at_kill: u64,
    delivered_at_kill: u64,
    restart: Duration,
    resumed_after: Option<Duration>,
}

/// When the kill and the restart happened.
struct Killed {
    accepted_at_kill: u64,
    delivered_at_kill: u64,
    restart: Duration,
    /// Unix microseconds when the new gateway answered its health check.
    restarted_at_us: i64,
}

/// Kills the gateway once `crash.kill_after` messages are accepted and starts it again
/// `crash.down` later.
async fn kill_and_restart(
    processes: &mut Processes,
    client: &reqwest::Client,
    progress: &Progress,
    crash: Crash,
) -> anyhow::Result<Killed> {
    while progress.accepted() < crash.kill_after {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    processes.kill_gateway().await?;
    let killed = Instant::now();
    let accepted_at_kill = progress.accepted();
    let delivered_at_kill = progress.delivered();
    eprintln!("loadgen: killed the gateway (SIGKILL) after {accepted_at_kill} accepted messages");
    tokio::time::sleep(crash.down).await;
    processes.restart_gateway(client).await?;
    let restarted_at_us = drive::unix_micros();
    let restart = killed.elapsed();
    eprintln!("loadgen: the gateway answers again {restart:?} after the kill");
    Ok(Killed {
        accepted_at_kill,
        delivered_at_kill,
        restart,
        restarted_at_us,
    })
}

/// The ceiling run, the send run and the delivery check against a ready target; in a crash run
/// the gateway in `processes` is killed and started again during the send run.
async fn measure(
    client: &reqwest::Client,
    options: &Options,
    target: &Target,
    progress: &Arc<Progress>,
    processes: Option<&mut Processes>,
) -> anyhow::Result<Measured> {
    let plan = drive::plan(
        target.session_ids.len(),
        options.messages,
        options.per_request,
    );
    let ceiling_requests = if options.crash.is_some() {
        0
    } else {
        plan.len().max(MIN_CEILING_REQUESTS)
    };

    progress.set_phase("health ceiling");
    eprintln!(
        "loadgen: ceiling: {ceiling_requests} x GET /api/v1/health, {} in flight",
        options.concurrency
    );
    let ceiling = drive::health_ceiling(
        client,
        &target.base_url,
        ceiling_requests,
        options.concurrency,
        progress,
    )
    .await?;
    if ceiling.failed > 0 {
        eprintln!(
            "loadgen: warning: {} health requests failed",
            ceiling.failed
        );
    }
    // The ceiling saturates the gateway, which it takes for an ingress burst: the send run
    // starts once that is over, so it does not inherit the ceiling's throttled delivery.
    tokio::time::sleep(CEILING_SETTLE).await;

    let poller = Poller::start(
        client.clone(),
        &target.sim_urls,
        target.worker_token.clone(),
    )
    .await?;
    let background = poller.poll_in_background(Arc::clone(progress));
    progress.set_phase("sending");
    eprintln!(
        "loadgen: sending {} messages in {} requests ({} mode) over {} sessions, {} in flight{}",
        options.messages,
        plan.len(),
        options.mode.as_str(),
        target.session_ids.len(),
        options.concurrency,
        options
            .rate
            .map(|rate| format!(", paced at {rate} messages/s"))
            .unwrap_or_default()
    );
    let send_run = drive::send_all(Arc::new(drive::SendRun {
        client: client.clone(),
        base_url: target.base_url.clone(),
        api_key: target.api_key.clone(),
        mode: options.mode,
        sessions: target.session_ids.clone(),
        plan,
        rate: options.rate,
        concurrency: options.concurrency,
        progress: Arc::clone(progress),
        idempotency_prefix: options
            .crash
            .map(|_| format!("lg-{}", crate::auth::random_token(8))),
    }));
    let (sent, killed) = match (options.crash, processes) {
        (Some(crash), Some(processes)) => {
            let (sent, killed) = tokio::join!(
                send_run,
                kill_and_restart(processes, client, progress, crash)
            );
            (sent?, Some(killed?))
        }
        _ => (send_run.await?, None),
    };
    let mut poller = background.stop().await?;

    let mut index: HashMap<String, usize> = HashMap::with_capacity(sent.accepted.len());
    let mut accepted: Vec<AcceptedMessage> = Vec::with_capacity(sent.accepted.len());
    let mut repeated_ids = 0u64;
    for (message_id, message) in &sent.accepted {
        match index.entry(message_id.clone()) {
            Entry::Vacant(slot) => {
                slot.insert(accepted.len());
                accepted.push(*message);
            }
            Entry::Occupied(_) => repeated_ids += 1,
        }
    }
    if repeated_ids > 0 {
        eprintln!("loadgen: warning: the gateway gave {repeated_ids} message ids twice");
    }
    for (reason, count) in &sent.refused {
        eprintln!("loadgen: refused: {count} messages: {reason}");
    }

    progress.set_phase("waiting for delivery");
    let deadline = Instant::now() + options.delivery_timeout;
    if !poller.wait_for(&index, deadline, progress).await? {
        eprintln!(
            "loadgen: not every accepted message arrived within {:?} after the last send; the \
             missing ones count as lost (raise --delivery-timeout-s if deliveries were still \
             coming in)",
            options.delivery_timeout
        );
    }
    match stage_summary(client, &target.base_url).await {
        Ok(line) if !line.is_empty() => eprintln!("loadgen: gateway delivery stages: {line}"),
        Ok(_) => {}
        Err(err) => eprintln!("loadgen: could not read the gateway's delivery stages: {err:#}"),
    }
    let arrivals = poller.arrivals(&index);
    let crash = killed.map(|killed| CrashFigures {
        sessions: target.session_ids.len(),
        accepted_at_kill: killed.accepted_at_kill,
        delivered_at_kill: killed.delivered_at_kill,
        restart: killed.restart,
        resumed_after: arrivals
            .iter()
            .map(|arrival| arrival.received_at_us)
            .filter(|at| *at >= killed.restarted_at_us)
            .min()
            .and_then(|first| u64::try_from(first - killed.restarted_at_us).ok())
            .map(Duration::from_micros),
    });
    let summary = report::summarize(&Observations {
        requests: &sent.timings,
        accepted: &accepted,
        arrivals: &arrivals,
        send_elapsed: sent.elapsed,
        ceiling_requests: ceiling.ok,
        ceiling_elapsed: ceiling.elapsed,
    });
    eprintln!(
        "loadgen: accepted {} of {} messages in {:.2}s; {} delivered; {} sends on the workers \
         were not this run's",
        accepted.len(),
        options.messages,
        sent.elapsed.as_secs_f64(),
        summary.delivered,
        summary.foreign
    );
    Ok(Measured {
        summary,
        refused: sent.refused_messages() + repeated_ids,
        crash,
    })
}

/// The gateway's `delivery_stage_seconds` histogram, summarised (see [`stages`]).
async fn stage_summary(client: &reqwest::Client, base_url: &str) -> anyhow::Result<String> {
    let exposition = client
        .get(format!("{base_url}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(stages::summary_line(&stages::parse(&exposition)))
}

/// Prints the `RESULT` line; fails when the run was not clean.
fn conclude(measured: &Measured) -> anyhow::Result<()> {
    let summary = &measured.summary;
    println!("{summary}");
    if let Some(crash) = &measured.crash {
        println!(
            "CRASH accepted={} delivered={} stranded={} sent_twice={} redelivered={} \
             accepted_at_kill={} delivered_at_kill={} restart_ms={} resumed_after_ms={}",
            summary.delivered + summary.lost,
            summary.delivered,
            summary.lost,
            summary.foreign,
            summary.dup,
            crash.accepted_at_kill,
            crash.delivered_at_kill,
            crash.restart.as_millis(),
            crash
                .resumed_after
                .map_or_else(|| "-".to_owned(), |after| after.as_millis().to_string()),
        );
        anyhow::ensure!(
            summary.lost == 0 && summary.out_of_order == 0 && summary.foreign == 0,
            "crash check failed: stranded={} out_of_order={} sent_twice={}",
            summary.lost,
            summary.out_of_order,
            summary.foreign
        );
        anyhow::ensure!(
            summary.dup <= crash.sessions as u64,
            "{} messages redelivered: more than one call in flight per session ({})",
            summary.dup,
            crash.sessions
        );
        anyhow::ensure!(
            measured.refused == 0,
            "{} messages were not accepted (see the reasons above)",
            measured.refused
        );
        return Ok(());
    }
    anyhow::ensure!(
        summary.delivery_is_clean(),
        "delivery check failed: lost={} dup={} out_of_order={}",
        summary.lost,
        summary.dup,
        summary.out_of_order
    );
    anyhow::ensure!(
        measured.refused == 0,
        "{} messages were not accepted (see the reasons above)",
        measured.refused
    );
    Ok(())
}
