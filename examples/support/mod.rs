//! What the benchmark examples share: the command line's numbers, and the gateway started in
//! the benchmark's own process on the embedded store, or on PostgreSQL + Redis when
//! `DATABASE_URL` / `REDIS_URL` are set.

use std::collections::HashMap;
use std::sync::Arc;

use wa_gateway::app::{AppContext, Application};
use wa_gateway::config::Config;

/// `--name N` from the command line, else `default`.
pub fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A gateway running in this process until [`Gateway::stop`].
pub struct Gateway {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// Its shared state (store, fleet, configuration).
    pub context: Arc<AppContext>,
    /// `sqlite+in-process` or `postgres+redis`.
    pub backend: &'static str,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    _data_dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts a gateway with `settings` on top of a fresh `DATA_DIR`, a free port and quiet logs.
    pub async fn start(settings: &[(&str, String)]) -> anyhow::Result<Gateway> {
        let data_dir = tempfile::tempdir()?;
        let mut vars: HashMap<String, String> = HashMap::from([
            ("HOST".to_owned(), "127.0.0.1".to_owned()),
            ("PORT".to_owned(), "0".to_owned()),
            ("DATA_DIR".to_owned(), data_dir.path().display().to_string()),
            ("LOG_LEVEL".to_owned(), "error".to_owned()),
        ]);
        for (key, value) in settings {
            vars.insert((*key).to_owned(), value.clone());
        }
        for key in ["DATABASE_URL", "REDIS_URL"] {
            if let Ok(value) = std::env::var(key) {
                vars.insert(key.to_owned(), value);
            }
        }
        let backend = if vars.contains_key("DATABASE_URL") {
            "postgres+redis"
        } else {
            "sqlite+in-process"
        };
        let config = Config::from_vars(vars)?;
        wa_gateway::telemetry::init(&config.log_level, config.log_format);
        let application = Application::build(config).await?;
        let base_url = format!("http://{}", application.local_addr());
        let context = application.context();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(application.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        Ok(Gateway {
            base_url,
            context,
            backend,
            stop,
            server,
            _data_dir: data_dir,
        })
    }

    /// Stops it and waits for its shutdown.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.server.await?
    }
}
