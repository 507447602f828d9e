//! The delivery check: polls every simulated worker's `GET /sim/messages?after=<n>` (each send is
//! fetched once, however long the run) and collects what they recorded, until every accepted
//! message has arrived or the deadline passes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Deserialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::progress::Progress;
use super::report::Arrival;
use crate::config::Secret;

/// Between polls while waiting for the last deliveries.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Between polls while sends are running: every send is fetched once whatever the interval, so
/// this only sets how fresh the progress line is and how many requests the polling adds.
const BACKGROUND_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// An `after` past any real record: answers the current total and no sends.
const PAST_THE_END: u64 = u32::MAX as u64;

/// One send as a worker recorded it, reduced to what the check needs (the body is skipped).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawArrival {
    /// The gateway's `X-Message-Id`.
    pub message_id: Option<String>,
    /// Unix microseconds at receipt.
    pub received_at_us: i64,
}

/// The `?after=` answer.
#[derive(Deserialize)]
struct Page {
    total: usize,
    messages: Vec<RawArrival>,
}

#[derive(Deserialize)]
struct Envelope {
    data: Page,
}

/// One worker's record as far as fetched.
struct Feed {
    url: String,
    /// Index of the next send to fetch.
    cursor: usize,
    /// Sends recorded during this run, in the worker's arrival order.
    arrivals: Vec<RawArrival>,
}

/// Polls a set of simulated workers.
pub struct Poller {
    client: reqwest::Client,
    token: Secret<String>,
    feeds: Vec<Feed>,
}

impl Poller {
    /// Starts after what the workers already hold, so sends of earlier runs (with `--target`)
    /// are not fetched at all.
    pub async fn start(
        client: reqwest::Client,
        sim_urls: &[String],
        token: Secret<String>,
    ) -> anyhow::Result<Poller> {
        let mut poller = Poller {
            client,
            token,
            feeds: sim_urls
                .iter()
                .map(|url| Feed {
                    url: url.trim_end_matches('/').to_owned(),
                    cursor: 0,
                    arrivals: Vec::new(),
                })
                .collect(),
        };
        for index in 0..poller.feeds.len() {
            let page = poller.fetch(index, PAST_THE_END).await?;
            poller.feeds[index].cursor = page.total;
        }
        Ok(poller)
    }

    async fn fetch(&self, index: usize, after: u64) -> anyhow::Result<Page> {
        let url = &self.feeds[index].url;
        let response = self
            .client
            .get(format!("{url}/sim/messages?after={after}"))
            .bearer_auth(self.token.expose())
            .send()
            .await
            .with_context(|| format!("could not poll the simulated worker at {url}"))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .with_context(|| format!("could not read the answer of {url}/sim/messages"))?;
        anyhow::ensure!(
            status.is_success(),
            "{url}/sim/messages answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
        let envelope: Envelope = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{url}/sim/messages?after= did not answer {{total, messages[].receivedAtUs}}: \
                 is it a simulated worker of this version?"
            )
        })?;
        Ok(envelope.data)
    }

    /// Fetches what every worker recorded since the last poll; returns how many new sends.
    pub async fn poll_once(&mut self) -> anyhow::Result<usize> {
        let mut new = 0;
        for index in 0..self.feeds.len() {
            let cursor = self.feeds[index].cursor;
            let page = self.fetch(index, cursor as u64).await?;
            let feed = &mut self.feeds[index];
            feed.cursor += page.messages.len();
            new += page.messages.len();
            feed.arrivals.extend(page.messages);
        }
        Ok(new)
    }

    /// Sends recorded during this run, all workers.
    pub fn recorded(&self) -> usize {
        self.feeds.iter().map(|feed| feed.arrivals.len()).sum()
    }

    /// Keeps polling in the background (for the progress line, and so the final wait only has
    /// the tail to fetch) until the returned handle is stopped.
    pub fn poll_in_background(mut self, progress: Arc<Progress>) -> BackgroundPoll {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            loop {
                if let Err(err) = self.poll_once().await {
                    // The final wait polls again and reports a persistent failure.
                    eprintln!("loadgen: polling the workers failed (will retry): {err:#}");
                }
                progress.set_delivered(self.recorded() as u64);
                tokio::select! {
                    _ = &mut stopped => return self,
                    () = tokio::time::sleep(BACKGROUND_POLL_INTERVAL) => {}
                }
            }
        });
        BackgroundPoll { stop, task }
    }

    /// Polls until every message of `accepted` (message id → index) has arrived or `deadline`
    /// passes; returns whether all arrived.
    pub async fn wait_for(
        &mut self,
        accepted: &HashMap<String, usize>,
        deadline: Instant,
        progress: &Progress,
    ) -> anyhow::Result<bool> {
        let mut arrived = vec![false; accepted.len()];
        let mut delivered = 0usize;
        let mut checked: Vec<usize> = vec![0; self.feeds.len()];
        loop {
            for (feed, checked) in self.feeds.iter().zip(checked.iter_mut()) {
                for raw in feed.arrivals.get(*checked..).unwrap_or_default() {
                    let index = raw.message_id.as_ref().and_then(|id| accepted.get(id));
                    if let Some(&index) = index
                        && let Some(seen) = arrived.get_mut(index)
                        && !*seen
                    {
                        *seen = true;
                        delivered += 1;
                    }
                }
                *checked = feed.arrivals.len();
            }
            progress.set_delivered(delivered as u64);
            if delivered == accepted.len() {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            if self.poll_once().await? == 0 {
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }
    }

    /// Everything recorded during the run, resolved against the accepted message ids: each
    /// worker's record in its order, workers one after the other.
    pub fn arrivals(&self, accepted: &HashMap<String, usize>) -> Vec<Arrival> {
        self.feeds
            .iter()
            .enumerate()
            .flat_map(|(worker, feed)| {
                feed.arrivals.iter().map(move |raw| Arrival {
                    worker,
                    message: raw
                        .message_id
                        .as_ref()
                        .and_then(|id| accepted.get(id))
                        .copied(),
                    received_at_us: raw.received_at_us,
                })
            })
            .collect()
    }
}

/// A [`Poller`] running in the background.
pub struct BackgroundPoll {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Poller>,
}

impl BackgroundPoll {
    /// Stops polling and hands the poller back.
    pub async fn stop(self) -> anyhow::Result<Poller> {
        // A send error means the task already ended; joining tells how.
        let _ = self.stop.send(());
        self.task.await.context("the background poller failed")
    }
}
