//! The OpenAPI 3.1 description (`GET /api/v1/openapi.json`) and Swagger UI served from files
//! compiled into the binary (`GET /api/v1/docs`), so docs work offline.
//!
//! The description starts from the handlers' annotations ([`ApiDoc`]) and is completed once at
//! start-up by [`description`]: what every route shares is added by rule rather than written on
//! each handler (the error answers a route can give follow from its credentials, parameters and
//! body), the aliases are copied from the route they alias (`/health`, the worker routes under
//! `/api/v1`, `POST` for `PUT`/`DELETE` where the existing worker uses it, the per-type send
//! routes), and the field rules come from the same [`TextRule`]s the handlers check. A test
//! compares the result with [`super::SERVED`], route for route.

use std::sync::Arc;

use serde_json::{Map, Value, json};
use utoipa::OpenApi;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::Uri;
use warp::reply::{Reply, Response};

use super::{
    admin, auth, external, health, sessions, users, views, webhooks, worker_api, workers_admin,
};
use crate::domain::{DisplayName, Email, Password, TextRule};
use crate::send::request::{
    CONTACT_TEXT_RULE, LINK_DESCRIPTION_RULE, LINK_TITLE_RULE, LOCATION_ADDRESS_RULE,
    LOCATION_NAME_RULE, MAX_CAPTION_CHARS, MAX_URL_CHARS, MESSAGE_RULE,
};

/// The API description from the handlers' annotations; [`description`] completes it.
#[derive(OpenApi)]
#[openapi(
    info(title = "wa-gateway", description = "Multi-tenant WhatsApp gateway API. Every answer is the envelope \
        `{success, data}` or `{success: false, error: {code, message, details}}`. A path that exists \
        with another method is `405` with `Allow`."),
    paths(
        auth::register, auth::login, auth::refresh, auth::logout, auth::me, auth::change_password,
        users::get_profile, users::update_profile, users::get_tier, users::get_usage,
        users::create_api_key, users::list_api_keys, users::revoke_api_key,
        admin::list_users, admin::get_user, admin::update_user,
        health::health, health::metrics,
        sessions::create_session, sessions::list_sessions, sessions::get_session, sessions::delete_session,
        sessions::connect_session, sessions::session_status, sessions::restart_session,
        sessions::disconnect_session, sessions::logout_session, sessions::session_events,
        sessions::migrate_session,
        external::send_single, external::send_bulk, external::session_status, external::get_message,
        external::list_messages, external::session_messages,
        workers_admin::list_workers, workers_admin::get_worker, workers_admin::fleet_stats, workers_admin::add_worker,
        workers_admin::update_worker, workers_admin::delete_worker, workers_admin::test_worker,
        worker_api::register, worker_api::heartbeat, worker_api::legacy_heartbeat, worker_api::assigned,
        worker_api::recovery, worker_api::unregister, worker_api::session_status,
        worker_api::message_status, worker_api::message_received,
        webhooks::create_webhook, webhooks::list_webhooks, webhooks::get_webhook,
        webhooks::update_webhook, webhooks::delete_webhook, webhooks::rotate_secret,
    ),
    components(schemas(views::ErrorEnvelope, views::ErrorBody, views::UserView, views::AuthTokens,
        views::ApiKeyView, views::SessionView, views::WorkerView, crate::fleet::events::SessionEvent)),
    tags(
        (name = "auth", description = "Accounts and tokens"),
        (name = "users", description = "The caller's profile, tier and usage"),
        (name = "api-keys", description = "Integration keys"),
        (name = "admin", description = "Administrators only"),
        (name = "sessions", description = "WhatsApp sessions"),
        (name = "external", description = "Integrators: sends and lookups (API key or access token)"),
        (name = "workers", description = "The worker fleet (administrators)"),
        (name = "worker-protocol", description = "Called by workers (docs/WORKER_PROTOCOL.md), with the worker token; \
            at /api/... as the existing worker calls them and under /api/v1/..."),
        (name = "webhooks", description = "Customer webhook endpoints: signed (Standard Webhooks) deliveries of your events"),
        (name = "health", description = "Liveness, backends and metrics"),
        (name = "docs", description = "This description and Swagger UI"),
    )
)]
pub struct ApiDoc;

const OPENAPI_PATH: &str = "/api/v1/openapi.json";

/// The drop-in send routes, the message kind each implies, and its body's schema.
const PER_TYPE_SENDS: [(&str, &str); 12] = [
    ("sendText", "SendText"),
    ("sendImage", "SendImage"),
    ("sendFile", "SendDocument"),
    ("sendVoice", "SendAudio"),
    ("sendVideo", "SendVideo"),
    ("sendLocation", "SendLocation"),
    ("sendContactVcard", "SendContact"),
    ("sendLink", "SendLink"),
    ("sendPoll", "SendPoll"),
    ("sendSeen", "SendSeen"),
    ("startTyping", "SendTyping"),
    ("stopTyping", "SendTyping"),
];

/// The complete description, as served.
pub fn description() -> Value {
    let mut spec = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    add_security_schemes(&mut spec);
    add_field_rules(&mut spec);
    add_parameter_rules(&mut spec);
    add_send_bodies(&mut spec);
    add_aliases(&mut spec);
    add_docs_routes(&mut spec);
    for (path, method) in [
        ("/api/v1/admin/sessions/{id}/migrate", "post"),
        ("/api/v1/auth/logout", "post"),
    ] {
        // The body may be left out altogether (and is never `null`).
        if let Some(body) = spec["paths"][path][method].get_mut("requestBody") {
            body["required"] = json!(false);
        }
    }
    add_event_stream(&mut spec);
    add_error_answers(&mut spec);
    spec
}

/// The session event stream, event by event: `event: session`, `data:` the session as JSON
/// first, then each change.
fn add_event_stream(spec: &mut Value) {
    let Some(answer) =
        spec.pointer_mut("/paths/~1api~1v1~1sessions~1{id}~1events/get/responses/200")
    else {
        return;
    };
    answer["content"] = json!({"text/event-stream": {"schema": {
        "type": "object", "required": ["event", "data"],
        "properties": {
            "event": {"const": "session"},
            "data": {"type": "string", "contentMediaType": "application/json",
                     "contentSchema": {"anyOf": [{"$ref": "#/components/schemas/SessionView"},
                                                 {"$ref": "#/components/schemas/SessionEvent"}]}}},
        "description": "One event of the stream (the first is the session as it is, then each change)"}}});
}

fn add_security_schemes(spec: &mut Value) {
    spec["components"]["securitySchemes"] = json!({
        "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                   "description": "A user's access token (`POST /api/v1/auth/login`)."},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                   "description": "An integration key `wg_…` (`POST /api/v1/users/api-keys`); also accepted as `Authorization: Bearer wg_…`."},
        "workerToken": {"type": "http", "scheme": "bearer",
                   "description": "The fleet's shared `WORKER_AUTH_TOKEN`."},
        "metricsToken": {"type": "http", "scheme": "bearer",
                   "description": "`METRICS_TOKEN`, when the operator set one."},
    });
}

/// A string under `rule`, as a JSON Schema.
fn text(rule: TextRule) -> Value {
    let mut schema =
        json!({"type": "string", "maxLength": rule.max_chars(), "pattern": rule.pattern()});
    if rule.refuses_empty() {
        schema["minLength"] = json!(1);
    }
    if rule.counts_utf16() {
        // JSON Schema counts characters; the rule counts as the worker does.
        schema["description"] = json!(format!(
            "At most {} UTF-16 code units (a character outside the Basic Multilingual Plane, \
             such as most emoji, counts 2)",
            rule.max_chars()
        ));
    }
    schema
}

/// A session id (3 to 50 of letters, digits, `_`, `-`).
fn session_id() -> Value {
    json!({"type": "string", "pattern": "^[A-Za-z0-9_-]{3,50}$", "minLength": 3, "maxLength": 50})
}

/// An http(s) URL as sends take it.
fn http_url() -> Value {
    json!({"type": "string", "format": "uri", "maxLength": MAX_URL_CHARS,
           "pattern": "^https?://[^/?#\\s\\u0000-\\u001F\\u007F-\\u009F][^\\s\\u0000-\\u001F\\u007F-\\u009F]*$"})
}

/// A recipient: 10 to 15 digits with the country code, separators allowed, or a JID.
fn phone() -> Value {
    json!({"type": "string", "maxLength": 64,
           "pattern": "^(\\+?[ ().-]*[1-9][ ().-]*([0-9][ ().-]*){9,14}|[1-9][0-9]{9,14}@s\\.whatsapp\\.net)$",
           "description": "`+62 812-3456-7890`, `6281234567890` or `6281234567890@s.whatsapp.net` \
                           (also accepted: `00` before the country code, and a local number with a \
                           leading 0, which takes the configured `DEFAULT_COUNTRY_CODE`)"})
}

/// The id a worker registers under (not a word of the worker routes' own paths).
fn new_worker_id() -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": 100, "pattern": "^[A-Za-z0-9_.:-]+$",
           "not": {"enum": crate::fleet::RESERVED_WORKER_IDS}})
}

/// A worker's endpoint: `http(s)://host[:port]` (a name whose last label starts with a letter, or
/// a dotted IPv4 address), nothing more.
fn endpoint() -> Value {
    let label = "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
    let last_label = "[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
    let octet = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
    let port = "([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])";
    json!({"type": "string", "maxLength": 500,
           "pattern": format!("^https?://(({label}\\.)*{last_label}|{octet}(\\.{octet}){{3}})(:{port})?/?$"),
           "description": "`http(s)://host[:port]`: no user info, path, query or fragment; not the gateway itself"})
}

/// Any JSON a worker forwards with an inbound message: object keys one line of at most 100
/// characters, strings at most 65,536 characters without control characters but line breaks.
fn worker_value() -> Value {
    let reference = json!({"$ref": "#/components/schemas/WorkerValue"});
    json!({"anyOf": [
        {"type": ["null", "boolean", "number"]},
        text(worker_api::BODY_TEXT),
        {"type": "array", "items": reference},
        {"type": "object", "propertyNames": text(worker_api::LABEL), "additionalProperties": reference},
    ]})
}

/// An e-mail address as [`Email::parse`] takes it.
fn email() -> Value {
    let mut schema = text(Email::RULE);
    schema["format"] = json!("email");
    schema
}

/// Merges the rules the handlers check into the generated schemas' properties.
fn add_field_rules(spec: &mut Value) {
    let display_name = || {
        let mut schema = text(DisplayName::RULE.non_empty());
        schema["description"] = json!("1 to 100 characters after trimming, one line");
        schema
    };
    let new_password = || {
        // The line rule, with a letter and a digit somewhere (the policy counts any letter;
        // the pattern names ASCII ones, so what it describes is always accepted).
        let allowed =
            "[^\\u0000-\\u001F\\u007F-\\u009F\\u2028\\u2029\\u061C\\u202A-\\u202E\\u2066-\\u2069]";
        json!({"type": "string", "minLength": 8, "maxLength": 128,
               "pattern": format!("^{allowed}*([A-Za-z]{allowed}*[0-9]|[0-9]{allowed}*[A-Za-z]){allowed}*$"),
               "description": "8 to 128 characters, one line, with at least one letter and one digit"})
    };
    let rules: Vec<(&str, &str, Value)> = vec![
        ("RegisterRequest", "name", display_name()),
        ("RegisterRequest", "email", email()),
        ("RegisterRequest", "password", new_password()),
        ("LoginRequest", "email", text(Email::RULE)),
        ("LoginRequest", "password", text(Password::PRESENTED)),
        (
            "RefreshRequest",
            "refreshToken",
            text(crate::auth::REFRESH_TOKEN_RULE),
        ),
        (
            "ChangePasswordRequest",
            "currentPassword",
            text(Password::PRESENTED),
        ),
        ("ChangePasswordRequest", "newPassword", new_password()),
        ("ProfileUpdate", "name", display_name()),
        ("CreateApiKeyRequest", "name", display_name()),
        ("CreateApiKeyRequest", "sessionId", session_id()),
        (
            "CreateApiKeyRequest",
            "expiresAt",
            json!({"type": "string", "format": "date-time", "maxLength": 64}),
        ),
        ("AdminUserUpdate", "name", display_name()),
        ("CreateSessionRequest", "name", display_name()),
        ("CreateSessionRequest", "sessionId", session_id()),
        ("MigrateRequest", "targetWorkerId", text(TextRule::ID)),
        ("AddWorkerRequest", "endpoint", endpoint()),
        ("AddWorkerRequest", "workerId", new_worker_id()),
        (
            "AddWorkerRequest",
            "description",
            text(worker_api::DESCRIPTION),
        ),
        (
            "AddWorkerRequest",
            "maxSessions",
            json!({"minimum": 1, "maximum": 100000}),
        ),
        (
            "UpdateWorkerRequest",
            "description",
            text(worker_api::DESCRIPTION),
        ),
        (
            "UpdateWorkerRequest",
            "maxSessions",
            json!({"minimum": 1, "maximum": 100000}),
        ),
        ("RegisterBody", "workerId", new_worker_id()),
        ("RegisterBody", "endpoint", endpoint()),
        ("RegisterBody", "description", text(worker_api::DESCRIPTION)),
        ("RegisterBody", "version", text(worker_api::LABEL)),
        ("RegisterBody", "environment", text(worker_api::LABEL)),
        (
            "RegisterBody",
            "maxSessions",
            json!({"minimum": 1, "maximum": 100000}),
        ),
        ("HeartbeatSession", "sessionId", session_id()),
        ("HeartbeatSession", "status", text(worker_api::STATUS)),
        ("HeartbeatSession", "phoneNumber", text(worker_api::PHONE)),
        (
            "HeartbeatSession",
            "displayName",
            text(worker_api::DISPLAY_NAME),
        ),
        (
            "LegacyHeartbeatBody",
            "workerId",
            text(worker_api::WORKER_ID),
        ),
        ("RecoveryResult", "sessionId", session_id()),
        ("RecoveryResult", "status", text(worker_api::STATUS)),
        ("UnregisterBody", "workerId", text(worker_api::WORKER_ID)),
        ("UnregisterBody", "endpoint", text(worker_api::ENDPOINT)),
        ("SessionStatusBody", "sessionId", session_id()),
        (
            "SessionStatusBody",
            "status",
            json!({"type": "string", "enum": ["INIT", "QR_REQUIRED", "CONNECTED",
                "DISCONNECTED", "RECONNECTING", "ERROR", "LOGGED_OUT"]}),
        ),
        ("SessionStatusBody", "qrCode", text(worker_api::QR_CODE)),
        ("SessionStatusBody", "phoneNumber", text(worker_api::PHONE)),
        (
            "SessionStatusBody",
            "displayName",
            text(worker_api::DISPLAY_NAME),
        ),
        ("SessionStatusBody", "workerId", text(worker_api::WORKER_ID)),
        ("SessionStatusBody", "reason", text(worker_api::REASON)),
        ("MessageStatusBody", "sessionId", session_id()),
        (
            "MessageStatusBody",
            "messageId",
            text(worker_api::MESSAGE_ID),
        ),
        (
            "MessageStatusBody",
            "status",
            json!({"enum": ["PENDING", "SENT", "DELIVERED", "READ", "FAILED",
            "pending", "sent", "delivered", "read", "failed"]}),
        ),
        (
            "MessageStatusBody",
            "errorMessage",
            text(worker_api::REASON),
        ),
        ("MessageReceivedBody", "sessionId", session_id()),
        (
            "MessageReceivedBody",
            "messageId",
            text(worker_api::MESSAGE_ID),
        ),
        ("MessageReceivedBody", "from", text(worker_api::PHONE)),
        ("MessageReceivedBody", "type", text(worker_api::LABEL)),
    ];
    let schemas = &mut spec["components"]["schemas"];
    schemas["WorkerValue"] = worker_value();
    if let Some(received) = schemas.get_mut("MessageReceivedBody") {
        received["propertyNames"] = text(worker_api::LABEL);
        received["additionalProperties"] = json!({"$ref": "#/components/schemas/WorkerValue"});
    }
    for (schema, property, rule) in rules {
        let target = spec
            .pointer_mut(&format!("/components/schemas/{schema}/properties"))
            .and_then(|properties| properties.get_mut(property));
        let Some(target) = target else {
            // A renamed field: the description test names it (every rule must land).
            tracing::warn!(
                schema,
                property,
                "OpenAPI rule for a field that is not there"
            );
            continue;
        };
        merge(target, rule);
    }
}

/// The path parameters' rules (by name; a session's `id` is a session id), and the
/// `Idempotency-Key` header's.
fn add_parameter_rules(spec: &mut Value) {
    // Ids the gateway issues are printable ASCII; in a path, only the characters a URL carries
    // as they are (an encoded one is refused: no issued id has one).
    let issued_id = |max: usize| json!({"type": "string", "minLength": 1, "maxLength": max, "pattern": "^[A-Za-z0-9._~-]+$"});
    let Some(paths) = spec["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(operations) = item.as_object_mut() else {
            continue;
        };
        for operation in operations.values_mut() {
            let Some(parameters) = operation
                .get_mut("parameters")
                .and_then(Value::as_array_mut)
            else {
                continue;
            };
            for parameter in parameters {
                let schema = match (parameter["in"].as_str(), parameter["name"].as_str()) {
                    (Some("path"), Some("id"))
                        if path.contains("/sessions/") || path.contains("/session/") =>
                    {
                        session_id()
                    }
                    (Some("path"), Some("id" | "messageId")) => issued_id(128),
                    (Some("path"), Some("workerId")) => issued_id(100),
                    (Some("header"), Some("Idempotency-Key")) => {
                        text(TextRule::line(255).non_empty())
                    }
                    _ => continue,
                };
                parameter["schema"] = schema;
            }
        }
    }
}

/// Adds `rule`'s keys to `target` (a schema object or a `oneOf`/`$ref` wrapper).
fn merge(target: &mut Value, rule: Value) {
    let (Some(target), Value::Object(rule)) = (target.as_object_mut(), rule) else {
        return;
    };
    // An optional field stays nullable (serde reads `null` as absent).
    let nullable = target
        .get("type")
        .and_then(Value::as_array)
        .is_some_and(|types| types.contains(&json!("null")));
    for (key, value) in rule {
        let value = match (key.as_str(), value) {
            ("type", Value::String(kind)) if nullable => json!([kind, "null"]),
            (_, value) => value,
        };
        target.insert(key, value);
    }
}

/// The send bodies: one schema per message kind, `/send` takes any of them (`type` picks).
fn add_send_bodies(spec: &mut Value) {
    let common = |kind: &str, extra: Value, required: &[&str]| -> Value {
        let mut properties = json!({
            "sessionId": {"description": "The session to send from (may be omitted with a key bound to a session).",
                          "oneOf": [session_id(), {"type": "null"}]},
            "to": phone(),
            "type": {"type": ["string", "null"], "enum": [kind, null],
                     "description": "The message kind; implied by the per-type route."},
            "humanSimulation": {"type": ["boolean", "null"], "description": "Let the worker type at a human pace."},
        });
        if let (Some(properties), Value::Object(extra)) = (properties.as_object_mut(), extra) {
            properties.extend(extra);
        }
        let mut required_fields = vec![json!("to")];
        required_fields.extend(required.iter().map(|field| json!(field)));
        json!({"type": "object", "properties": properties, "required": required_fields,
               "additionalProperties": false})
    };
    let optional = |schema: Value| json!({"oneOf": [schema, {"type": "null"}]});
    let caption = || optional(text(TextRule::multiline(MAX_CAPTION_CHARS)));
    let kinds = [
        (
            "SendText",
            "text",
            json!({"message": text(MESSAGE_RULE)}),
            vec!["message"],
        ),
        (
            "SendImage",
            "image",
            json!({"mediaUrl": http_url(), "caption": caption()}),
            vec!["mediaUrl"],
        ),
        (
            "SendVideo",
            "video",
            json!({"mediaUrl": http_url(), "caption": caption()}),
            vec!["mediaUrl"],
        ),
        (
            "SendDocument",
            "document",
            json!({"mediaUrl": http_url(), "caption": caption(),
            "filename": {"type": "string", "maxLength": 255,
                         "pattern": "^[^/\\\\\\u0000-\\u001F\\u007F-\\u009F\\u2028\\u2029\\u061C\\u202A-\\u202E\\u2066-\\u2069]*[^/\\\\\\s\\u0000-\\u001F\\u007F-\\u009F\\u2028\\u2029\\u061C\\u202A-\\u202E\\u2066-\\u2069][^/\\\\\\u0000-\\u001F\\u007F-\\u009F\\u2028\\u2029\\u061C\\u202A-\\u202E\\u2066-\\u2069]*$",
                         "description": "A file name, not a path"}}),
            vec!["mediaUrl", "filename"],
        ),
        (
            "SendAudio",
            "audio",
            json!({"mediaUrl": http_url()}),
            vec!["mediaUrl"],
        ),
        (
            "SendLocation",
            "location",
            json!({"location": {"type": "object", "additionalProperties": false,
            "required": ["latitude", "longitude"],
            "properties": {"latitude": {"type": "number", "minimum": -90, "maximum": 90},
                           "longitude": {"type": "number", "minimum": -180, "maximum": 180},
                           "name": optional(text(LOCATION_NAME_RULE)),
                           "address": optional(text(LOCATION_ADDRESS_RULE))}}}),
            vec!["location"],
        ),
        (
            "SendContact",
            "contact",
            json!({"contact": {"type": "object", "additionalProperties": false,
            "required": ["name", "phone"],
            "properties": {"name": text(CONTACT_TEXT_RULE.non_empty()),
                           "phone": {"allOf": [phone(), {"maxLength": 32}]},
                           "email": optional(email()),
                           "organization": optional(text(CONTACT_TEXT_RULE))}}}),
            vec!["contact"],
        ),
        (
            "SendLink",
            "link",
            json!({"link": {"type": "object", "additionalProperties": false,
            "required": ["url"],
            "properties": {"url": http_url(), "title": optional(text(LINK_TITLE_RULE)),
                           "description": optional(text(LINK_DESCRIPTION_RULE)),
                           "thumbnail": http_url()}}}),
            vec!["link"],
        ),
        (
            "SendPoll",
            "poll",
            json!({"poll": {"type": "object", "additionalProperties": false,
            "required": ["question", "options"],
            "properties": {"question": text(TextRule::line(255).non_empty()),
                           "options": {"type": "array", "minItems": 2, "maxItems": 12, "uniqueItems": true,
                                       "items": text(TextRule::line(100).non_empty())},
                           "multipleAnswers": {"type": ["boolean", "null"]}}}}),
            vec!["poll"],
        ),
        (
            "SendSeen",
            "seen",
            json!({"messageId": text(TextRule::token(200).non_empty())}),
            vec!["messageId"],
        ),
    ];
    let schemas = &mut spec["components"]["schemas"];
    for (name, kind, extra, required) in kinds {
        schemas[name] = common(kind, extra, &required);
    }
    // Typing needs only the recipient; `/send` tells start from stop by `type`.
    let mut typing = common("typing_start", json!({}), &[]);
    typing["properties"]["type"] =
        json!({"type": ["string", "null"], "enum": ["typing_start", "typing_stop", null]});
    schemas["SendTyping"] = typing;
    // In `/send`, every kind but text must say its `type`.
    for name in [
        "SendImage",
        "SendVideo",
        "SendDocument",
        "SendAudio",
        "SendLocation",
        "SendContact",
        "SendLink",
        "SendPoll",
        "SendSeen",
        "SendTyping",
    ] {
        let mut schema = schemas[name].clone();
        if let Some(values) = schema["properties"]["type"]["enum"].as_array_mut() {
            values.retain(|value| !value.is_null());
        }
        schema["properties"]["type"]["type"] = json!("string");
        if let Some(required) = schema["required"].as_array_mut() {
            required.push(json!("type"));
        }
        schemas[format!("{name}Typed")] = schema;
    }
    let any_kind = [
        "SendText",
        "SendImageTyped",
        "SendVideoTyped",
        "SendDocumentTyped",
        "SendAudioTyped",
        "SendLocationTyped",
        "SendContactTyped",
        "SendLinkTyped",
        "SendPollTyped",
        "SendSeenTyped",
        "SendTypingTyped",
    ];
    // A bulk item is a send without its own session (the bulk names it once).
    let items: Vec<Value> = any_kind
        .iter()
        .map(|name| {
            let mut item = schemas[*name].clone();
            if let Some(properties) = item["properties"].as_object_mut() {
                properties.remove("sessionId");
            }
            item
        })
        .collect();
    // A single send names its session (a key bound to one may leave it out: the one leniency
    // the description does not show).
    for name in any_kind.iter().copied().chain([
        "SendImage",
        "SendVideo",
        "SendDocument",
        "SendAudio",
        "SendLocation",
        "SendContact",
        "SendLink",
        "SendPoll",
        "SendSeen",
        "SendTyping",
    ]) {
        let schema = &mut schemas[name];
        schema["properties"]["sessionId"] = session_id();
        schema["properties"]["sessionId"]["description"] =
            json!("The session to send from (a key bound to a session may leave it out).");
        if let Some(required) = schema["required"].as_array_mut() {
            required.push(json!("sessionId"));
        }
    }
    schemas["SendRequest"] = json!({
        "oneOf": any_kind.iter().map(|name| json!({"$ref": format!("#/components/schemas/{name}")})).collect::<Vec<_>>(),
        "description": "One message; `type` (default `text`) decides which fields it takes."});
    let mut session = session_id();
    session["description"] = json!(
        "The session every message goes through (a key bound to a session may leave it out)."
    );
    schemas["BulkRequest"] = json!({"type": "object", "additionalProperties": false,
        "required": ["sessionId", "messages"],
        "properties": {
            "sessionId": session,
            "messages": {"type": "array", "minItems": 1, "maxItems": external::MAX_BULK_MESSAGES,
                         "items": {"oneOf": items},
                         "description": "Each like a single send, without `sessionId`; an invalid one is refused \
                                         alone (`REJECTED` in the results) and the rest are accepted."}}});
    let body = |schema: &str| json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    spec["paths"]["/api/v1/external/send"]["post"]["requestBody"] = body("SendRequest");
    spec["paths"]["/api/v1/external/send/bulk"]["post"]["requestBody"] = body("BulkRequest");
    let send = spec["paths"]["/api/v1/external/send"]["post"].clone();
    for (route, schema) in PER_TYPE_SENDS {
        let mut operation = send.clone();
        operation["operationId"] = json!(route);
        operation["summary"] = json!(format!(
            "Sends one `{schema}` message (the original gateway's `{route}`)"
        ));
        operation["description"] =
            json!("The body of `POST /api/v1/external/send` with `type` implied by the route.");
        operation["requestBody"] = body(schema);
        spec["paths"][format!("/api/v1/external/{route}")] = json!({"post": operation});
    }
}

/// `/health`, the worker routes under `/api/v1`, and the other methods a route takes.
fn add_aliases(spec: &mut Value) {
    let paths = &mut spec["paths"];
    paths["/health"] = rename_operations(paths["/api/v1/health"].clone(), "_root");
    for (path, from, to) in [
        ("/api/workers/{workerId}/heartbeat", "put", "post"),
        ("/api/workers/unregister", "delete", "post"),
        ("/api/v1/admin/users/{id}", "put", "patch"),
        ("/api/v1/workers/{id}", "put", "patch"),
    ] {
        let mut operation = paths[path][from].clone();
        let id = operation["operationId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        operation["operationId"] = json!(format!("{id}_{to}"));
        paths[path][to] = operation;
    }
    let worker_paths: Vec<String> = paths
        .as_object()
        .map(|all| {
            all.keys()
                .filter(|path| {
                    path.starts_with("/api/workers/") || path.starts_with("/api/webhooks/")
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    for path in worker_paths {
        let alias = path.replacen("/api/", "/api/v1/", 1);
        paths[alias] = rename_operations(paths[&path].clone(), "_v1");
    }
}

/// A path item's operations with `suffix` on each operation id.
fn rename_operations(mut item: Value, suffix: &str) -> Value {
    if let Some(operations) = item.as_object_mut() {
        for operation in operations.values_mut() {
            if let Some(id) = operation["operationId"].as_str().map(str::to_owned) {
                operation["operationId"] = json!(format!("{id}{suffix}"));
            }
        }
    }
    item
}

fn add_docs_routes(spec: &mut Value) {
    let paths = &mut spec["paths"];
    paths["/"] = json!({"get": {"tags": ["docs"], "operationId": "index", "summary": "Where the docs, the description and health are",
        "responses": {"200": {"description": "links", "content": {"application/json": {"schema": {
            "type": "object", "required": ["success", "data"], "properties": {
                "success": {"type": "boolean"},
                "data": {"type": "object", "required": ["name", "version", "docs", "openapi", "health"],
                         "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                        "docs": {"type": "string"}, "openapi": {"type": "string"},
                                        "health": {"type": "string"}}}}}}}}}}});
    paths[OPENAPI_PATH] = json!({"get": {"tags": ["docs"], "operationId": "openapi", "summary": "This description",
        "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}}});
    paths["/api/v1/docs"] = json!({"get": {"tags": ["docs"], "operationId": "docs_redirect", "summary": "Swagger UI (redirects to `/api/v1/docs/`)",
        "responses": {"302": {"description": "to `/api/v1/docs/`",
            "headers": {"Location": {"required": true, "schema": {"type": "string"}}}}}}});
    paths["/api/v1/docs/{file}"] = json!({"get": {"tags": ["docs"], "operationId": "docs_file", "summary": "A Swagger UI file (`index.html` when empty)",
        "parameters": [{"name": "file", "in": "path", "required": true, "schema": {"type": "string"}}],
        "responses": {
            "200": {"description": "the file", "content": {"text/html": {"schema": {"type": "string"}},
                                                           "text/css": {"schema": {"type": "string"}},
                                                           "application/javascript": {"schema": {"type": "string"}},
                                                           "image/png": {"schema": {"type": "string"}}}},
            "404": {"$ref": "#/components/responses/NotFound"}}}});
}

/// The error answers every route can give, added by rule to each operation that does not
/// document that status itself.
fn add_error_answers(spec: &mut Value) {
    let error = |description: &str, code: &str, message: &str| {
        json!({"description": description, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/ErrorEnvelope"},
            "example": {"success": false, "error": {"code": code, "message": message, "details": null}}}}})
    };
    let retry_after = json!({"Retry-After": {"description": "Seconds to wait before retrying",
                                              "schema": {"type": "integer", "minimum": 1}}});
    let mut responses = Map::new();
    responses.insert("BadRequest".into(), error(
        "Invalid body, parameter or header (`VALIDATION_ERROR`, `INVALID_JSON`, `INVALID_QUERY`, `INVALID_HEADER`; \
         `details.field` names the field)",
        "VALIDATION_ERROR", "name must not be empty"));
    let mut unauthorized = error(
        "Missing, invalid or expired credentials",
        "UNAUTHORIZED",
        "invalid or expired access token",
    );
    unauthorized["headers"] =
        json!({"WWW-Authenticate": {"required": true, "schema": {"type": "string"}}});
    responses.insert("Unauthorized".into(), unauthorized);
    responses.insert("Forbidden".into(), error(
        "Authenticated but not allowed: an API key where an access token is needed (`ACCESS_TOKEN_REQUIRED`), \
         or not an administrator (`FORBIDDEN`)",
        "FORBIDDEN", "administrator role required"));
    responses.insert(
        "NotFound".into(),
        error(
            "No such object, or not the caller's (isolation never says forbidden)",
            "NOT_FOUND",
            "session not found",
        ),
    );
    responses.insert(
        "RequestTimeout".into(),
        error(
            "The body did not arrive within `HTTP_BODY_READ_TIMEOUT_MS`",
            "REQUEST_TIMEOUT",
            "the request body did not arrive within 30 s",
        ),
    );
    responses.insert(
        "PayloadTooLarge".into(),
        error(
            "Body larger than the limit",
            "PAYLOAD_TOO_LARGE",
            "request body exceeds 1048576 bytes",
        ),
    );
    responses.insert(
        "UnsupportedMediaType".into(),
        error(
            "A body that is not `application/json`",
            "UNSUPPORTED_MEDIA_TYPE",
            "expected Content-Type: application/json",
        ),
    );
    let mut throttled = error(
        "Over the hourly API call quota of the tier (`API_CALL_QUOTA_EXCEEDED`) or another limit",
        "API_CALL_QUOTA_EXCEEDED",
        "hourly API call quota of 1000 for the BASIC tier is used up",
    );
    throttled["headers"] = retry_after.clone();
    responses.insert("TooManyRequests".into(), throttled);
    let mut unavailable = error(
        "The gateway cannot take the request now: the store or the log is unavailable (`STORE_UNAVAILABLE`, \
         `LOG_UNAVAILABLE`), no worker (`NO_WORKER_AVAILABLE`, `WORKER_UNAVAILABLE`), or too many connections \
         (`TOO_MANY_CONNECTIONS`)",
        "STORE_UNAVAILABLE",
        "the store cannot take this request right now; retry later",
    );
    unavailable["headers"] = retry_after;
    responses.insert("ServiceUnavailable".into(), unavailable);
    spec["components"]["responses"] = Value::Object(responses);

    let Some(paths) = spec["paths"].as_object_mut() else {
        return;
    };
    for item in paths.values_mut() {
        let Some(operations) = item.as_object_mut() else {
            continue;
        };
        for operation in operations.values_mut() {
            let schemes: Vec<String> = operation["security"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_object)
                .flat_map(|requirement| requirement.keys().cloned())
                .collect();
            let secured = !schemes.is_empty();
            let user_credentials = schemes.iter().any(|s| s == "bearer" || s == "apiKey");
            let access_token_only = schemes.iter().all(|s| s == "bearer") && secured;
            let parameters: Vec<&str> = operation["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|parameter| parameter["in"].as_str())
                .collect();
            let has_path = parameters.contains(&"path");
            let has_query_or_header = parameters.iter().any(|p| *p == "query" || *p == "header");
            let has_body = operation.get("requestBody").is_some();
            let mut add = |status: &str, response: &str, when: bool| {
                if when && operation["responses"].get(status).is_none() {
                    operation["responses"][status] =
                        json!({"$ref": format!("#/components/responses/{response}")});
                }
            };
            add(
                "400",
                "BadRequest",
                secured || has_body || has_query_or_header,
            );
            add("401", "Unauthorized", secured);
            add("403", "Forbidden", access_token_only);
            add("404", "NotFound", has_path);
            add("408", "RequestTimeout", has_body);
            add("413", "PayloadTooLarge", has_body);
            add("415", "UnsupportedMediaType", has_body);
            add("429", "TooManyRequests", user_credentials);
            add("503", "ServiceUnavailable", true);
        }
    }
}

/// The docs routes.
pub fn routes() -> BoxedFilter<(Response,)> {
    let spec = Arc::new(description().to_string());
    // GET /api/v1/openapi.json
    let openapi = warp::path!("api" / "v1" / "openapi.json")
        .and(warp::get())
        .map(move || {
            warp::reply::with_header(spec.as_str().to_owned(), "content-type", "application/json")
                .into_response()
        });
    let config = Arc::new(utoipa_swagger_ui::Config::from(OPENAPI_PATH));
    // GET /api/v1/docs (redirects to /api/v1/docs/) and GET /api/v1/docs/{file}
    let docs = warp::path!("api" / "v1" / "docs" / ..)
        .and(warp::get())
        .and(warp::path::full())
        .and(warp::path::tail())
        .map(move |full: warp::path::FullPath, tail: warp::path::Tail| {
            if full.as_str() == "/api/v1/docs" {
                warp::redirect::found(Uri::from_static("/api/v1/docs/")).into_response()
            } else {
                serve_swagger_file(tail.as_str(), config.clone())
            }
        });
    // GET /: where to go from here.
    let index = warp::path::end().and(warp::get()).map(|| {
        super::error::success(
            warp::http::StatusCode::OK,
            &json!({
                "name": "wa-gateway",
                "version": env!("CARGO_PKG_VERSION"),
                "docs": "/api/v1/docs/",
                "openapi": OPENAPI_PATH,
                "health": "/health",
            }),
        )
    });
    openapi.or(docs).unify().or(index).unify().boxed()
}

fn serve_swagger_file(path: &str, config: Arc<utoipa_swagger_ui::Config<'static>>) -> Response {
    match utoipa_swagger_ui::serve(path, config) {
        Ok(Some(file)) => {
            warp::reply::with_header(file.bytes.into_owned(), "content-type", file.content_type)
                .into_response()
        }
        Ok(None) => super::error::ApiError::NotFound("documentation file").into_response(),
        Err(err) => {
            super::error::ApiError::Unexpected(anyhow::anyhow!("swagger ui: {err}")).into_response()
        }
    }
}
