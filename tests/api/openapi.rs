//! The OpenAPI description (`GET /api/v1/openapi.json`) against what the API really does.

use serde_json::Value;
use wa_gateway::domain::{Role, SessionStatus, Tier, WorkerStatus};

use crate::common::{Backend, TestApp};

/// The documented values of each wire enum are the ones the API sends and accepts
/// (`QR_REQUIRED`, not the Rust name `QrRequired`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_enums_are_the_wire_spellings() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let spec = description(&app).await;
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

async fn description(app: &TestApp) -> Value {
    app.client
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// A concrete path for a template: each `{parameter}` becomes a value no route reserves.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                "probe-1"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The documented operations are exactly the served routes (`http::SERVED`), and each served
/// route answers as one: never the router's "route not found" nor a `405`. Every other method
/// on a documented path is a `405` whose `Allow` lists exactly the documented methods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_routes_are_the_served_routes() {
    use std::collections::BTreeSet;
    let app = TestApp::spawn(Backend::Sqlite).await;
    let spec = description(&app).await;
    let documented: BTreeSet<(String, String)> = spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = wa_gateway::http::SERVED
        .iter()
        .map(|(method, path)| ((*method).to_owned(), (*path).to_owned()))
        .collect();
    assert_eq!(
        documented.difference(&served).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented but not in http::SERVED"
    );
    assert_eq!(
        served.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "served but not documented"
    );

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (method, template) in &served {
        let path = concrete(template);
        let response = client
            .request(method.parse().unwrap(), app.url(&path))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert_ne!(status, 405, "{method} {path} is documented but 405: {text}");
        assert!(
            !(status == 404 && text.contains("route not found")),
            "{method} {path} is documented but no route took it: {text}"
        );
    }
    let paths: BTreeSet<&String> = served.iter().map(|(_, path)| path).collect();
    for template in paths {
        let allowed: Vec<&str> = METHODS
            .iter()
            .copied()
            .filter(|method| served.contains(&((*method).to_owned(), template.clone())))
            .collect();
        let mut expected = allowed.clone();
        expected.sort_unstable();
        for method in METHODS.iter().filter(|method| !allowed.contains(method)) {
            let path = concrete(template);
            let response = client
                .request(method.parse().unwrap(), app.url(&path))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 405, "{method} {path}");
            assert_eq!(
                response.headers()["allow"].to_str().unwrap(),
                expected.join(", "),
                "Allow of {method} {path}"
            );
        }
    }
    app.stop().await;
}

/// Every operation documents the errors it can give: `503` everywhere, `401` where it takes
/// credentials, `400`/`413`/`415` where it takes a body, `429` where the API call quota
/// applies; each error answer has the error envelope; every reference resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_documents_its_errors() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let spec = description(&app).await;
    let resolve = |value: &Value| -> Value {
        match value["$ref"].as_str() {
            Some(reference) => {
                let pointer = reference.trim_start_matches('#');
                spec.pointer(pointer)
                    .unwrap_or_else(|| panic!("{reference} does not resolve"))
                    .clone()
            }
            None => value.clone(),
        }
    };
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let name = format!("{} {path}", method.to_uppercase());
            let responses = operation["responses"].as_object().unwrap();
            assert!(responses.contains_key("503"), "{name}: no 503");
            let secured = operation["security"]
                .as_array()
                .is_some_and(|requirements| {
                    requirements
                        .iter()
                        .any(|r| r.as_object().is_some_and(|r| !r.is_empty()))
                });
            if secured {
                assert!(responses.contains_key("401"), "{name}: no 401");
            }
            if operation.get("requestBody").is_some() {
                for status in ["400", "413", "415"] {
                    assert!(responses.contains_key(status), "{name}: no {status}");
                }
            }
            let user_credentials = operation["security"].as_array().is_some_and(|all| {
                all.iter()
                    .any(|r| r.get("bearer").is_some() || r.get("apiKey").is_some())
            });
            if user_credentials {
                assert!(responses.contains_key("429"), "{name}: no 429");
            }
            for (status, response) in responses {
                let response = resolve(response);
                if status.starts_with('4') || status.starts_with('5') {
                    let schema = &response["content"]["application/json"]["schema"];
                    let envelope = resolve(schema);
                    let is_error_envelope = schema["$ref"]
                        .as_str()
                        .is_some_and(|r| r.ends_with("/ErrorEnvelope"))
                        || envelope["properties"]["error"].is_object()
                        || envelope["properties"]["success"].is_object();
                    assert!(is_error_envelope, "{name} {status}: not the error envelope");
                }
            }
        }
    }
    // The bodies carry their rules: a sample of fields and parameters.
    let schemas = &spec["components"]["schemas"];
    assert!(schemas["RegisterRequest"]["properties"]["email"]["pattern"].is_string());
    assert_eq!(
        schemas["CreateSessionRequest"]["properties"]["sessionId"]["pattern"],
        "^[A-Za-z0-9_-]{3,50}$"
    );
    assert_eq!(schemas["SendText"]["additionalProperties"], false);
    assert_eq!(
        spec["paths"]["/api/v1/users/usage"]["get"]["parameters"][0]["schema"]["maximum"],
        720
    );
    // The migrate body may be left out; it is never `null`.
    let migrate = &spec["paths"]["/api/v1/admin/sessions/{id}/migrate"]["post"]["requestBody"];
    assert_eq!(migrate["required"], false);
    let schema = resolve(&migrate["content"]["application/json"]["schema"]);
    assert_eq!(schema["type"], "object", "{schema}");
    app.stop().await;
}
