//! The OpenAPI description (`GET /api/v1/openapi.json`) against what the API really does.

use serde_json::Value;
use wa_gateway::domain::{Role, SessionStatus, Tier, WorkerStatus};

use crate::common::{Backend, TestApp};

/// The documented values of each wire enum are the ones the API sends and accepts
/// (`QR_REQUIRED`, not the Rust name `QrRequired`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_enums_are_the_wire_spellings() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let spec: Value = app
        .client
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schemas = &spec["components"]["schemas"];
    let documented = |name: &str| -> Vec<String> {
        schemas[name]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} has no enum: {}", schemas[name]))
            .iter()
            .map(|value| value.as_str().unwrap().to_owned())
            .collect()
    };
    let wire = |values: Vec<&str>| values.into_iter().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        documented("Role"),
        wire(Role::ALL.iter().map(|v| v.as_str()).collect())
    );
    assert_eq!(
        documented("Tier"),
        wire(Tier::ALL.iter().map(|v| v.as_str()).collect())
    );
    assert_eq!(
        documented("SessionStatus"),
        wire(SessionStatus::ALL.iter().map(|v| v.as_str()).collect())
    );
    assert_eq!(
        documented("WorkerStatus"),
        wire(WorkerStatus::ALL.iter().map(|v| v.as_str()).collect())
    );
    app.stop().await;
}
