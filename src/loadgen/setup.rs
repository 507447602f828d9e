//! What a run needs on a fresh gateway, made through the public API like a customer would: a
//! registered user, an API key, and sessions that are CONNECTED on the simulated workers.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::config::Secret;

/// Session calls in flight at once while creating many sessions.
const SETUP_CONCURRENCY: usize = 16;
/// How long `connect` is retried while no worker has registered yet (the gateway answers 503).
const CONNECT_RETRY_FOR: Duration = Duration::from_secs(30);

/// The account a run sends with.
pub struct Account {
    /// JWT for the session calls.
    pub access_token: Secret<String>,
    /// `wg_…`, for the sends.
    pub api_key: Secret<String>,
}

/// A status and the JSON body of an answer.
async fn call(request: reqwest::RequestBuilder, what: &str) -> anyhow::Result<(StatusCode, Value)> {
    let response = request
        .send()
        .await
        .with_context(|| format!("{what}: no answer"))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .with_context(|| format!("{what}: could not read the answer"))?;
    let body = serde_json::from_str(&text)
        .with_context(|| format!("{what}: the answer ({status}) is not JSON: {text}"))?;
    Ok((status, body))
}

fn expect(status: StatusCode, body: &Value, wanted: StatusCode, what: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        status == wanted,
        "{what}: expected {wanted}, got {status}: {body}"
    );
    Ok(())
}

fn string_at(body: &Value, pointer: &str, what: &str) -> anyhow::Result<String> {
    body.pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("{what}: no {pointer} in {body}"))
}

/// Registers a user unique to this run (a shared PostgreSQL keeps earlier runs' users) and
/// creates its API key.
pub async fn create_account(
    client: &reqwest::Client,
    base_url: &str,
    run_id: &str,
) -> anyhow::Result<Account> {
    let what = "registering the load-generator user";
    let password = format!("Lg1{}", crate::auth::random_token(24));
    let (status, body) = call(
        client
            .post(format!("{base_url}/api/v1/auth/register"))
            .json(&json!({
                "name": "loadgen",
                "email": format!("loadgen-{run_id}@loadgen.example.com"),
                "password": password,
            })),
        what,
    )
    .await?;
    expect(status, &body, StatusCode::CREATED, what)?;
    let access_token = Secret::new(string_at(&body, "/data/accessToken", what)?);

    let what = "creating the API key";
    let (status, body) = call(
        client
            .post(format!("{base_url}/api/v1/users/api-keys"))
            .bearer_auth(access_token.expose())
            .json(&json!({ "name": format!("loadgen {run_id}") })),
        what,
    )
    .await?;
    expect(status, &body, StatusCode::CREATED, what)?;
    let api_key = Secret::new(string_at(&body, "/data/key", what)?);
    Ok(Account {
        access_token,
        api_key,
    })
}

/// Creates the sessions and asks the gateway to connect them (placement picks the workers).
pub async fn create_sessions(
    client: &reqwest::Client,
    base_url: &str,
    account: &Account,
    session_ids: &[String],
) -> anyhow::Result<()> {
    let results: Vec<anyhow::Result<()>> = futures_util::stream::iter(session_ids)
        .map(|id| create_and_connect(client, base_url, account, id))
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

async fn create_and_connect(
    client: &reqwest::Client,
    base_url: &str,
    account: &Account,
    id: &str,
) -> anyhow::Result<()> {
    let token = account.access_token.expose();
    let what = format!("creating session {id}");
    let (status, body) = call(
        client
            .post(format!("{base_url}/api/v1/sessions"))
            .bearer_auth(token)
            .json(&json!({ "name": id, "sessionId": id })),
        &what,
    )
    .await?;
    expect(status, &body, StatusCode::CREATED, &what)?;

    let what = format!("connecting session {id}");
    let retry_until = Instant::now() + CONNECT_RETRY_FOR;
    loop {
        let (status, body) = call(
            client
                .post(format!("{base_url}/api/v1/sessions/{id}/connect"))
                .bearer_auth(token)
                .json(&json!({})),
            &what,
        )
        .await?;
        // 503 until the simulated workers have registered.
        if status == StatusCode::SERVICE_UNAVAILABLE && Instant::now() < retry_until {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        return expect(status, &body, StatusCode::OK, &what);
    }
}

/// Waits until every session of `session_ids` is CONNECTED.
pub async fn wait_connected(
    client: &reqwest::Client,
    base_url: &str,
    account: &Account,
    session_ids: &[String],
    timeout: Duration,
) -> anyhow::Result<()> {
    let what = "listing the sessions";
    let deadline = Instant::now() + timeout;
    loop {
        let (status, body) = call(
            client
                .get(format!("{base_url}/api/v1/sessions"))
                .bearer_auth(account.access_token.expose()),
            what,
        )
        .await?;
        expect(status, &body, StatusCode::OK, what)?;
        let connected: HashSet<&str> = body["data"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter(|session| session["status"] == "CONNECTED")
            .filter_map(|session| session["id"].as_str())
            .collect();
        let not_connected: Vec<&str> = session_ids
            .iter()
            .map(String::as_str)
            .filter(|id| !connected.contains(id))
            .collect();
        if not_connected.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} of {} sessions not CONNECTED after {timeout:?}, e.g. {}",
            not_connected.len(),
            session_ids.len(),
            not_connected[0]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
