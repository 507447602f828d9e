//! Response bodies shared by several routes, in the API's camelCase.

use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::TokenPair;
use crate::domain::WorkerStatus;
use crate::domain::{Role, Tier, ms_to_rfc3339};
use crate::store::{ApiKeyRecord, Session, User, Worker};

/// The success envelope, as documented in OpenAPI.
#[derive(Serialize, ToSchema)]
pub struct Envelope<T> {
    /// Always `true` on success.
    pub success: bool,
    /// The payload.
    pub data: T,
}

/// The error envelope.
#[derive(Serialize, ToSchema)]
pub struct ErrorEnvelope {
    /// Always `false`.
    pub success: bool,
    /// What went wrong.
    pub error: ErrorBody,
}

/// Error details.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `VALIDATION_ERROR`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// Optional structured details.
    #[schema(value_type = Object, nullable = true)]
    pub details: Option<serde_json::Value>,
}

/// A user as clients see it (no password hash, no internals).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    /// User id.
    pub id: String,
    /// Login e-mail.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Tier.
    pub tier: Tier,
    /// False once deactivated.
    pub active: bool,
    /// Last successful login (RFC 3339).
    pub last_login_at: Option<String>,
    /// Creation (RFC 3339).
    pub created_at: String,
    /// Last change (RFC 3339).
    pub updated_at: String,
}

impl From<&User> for UserView {
    fn from(user: &User) -> Self {
        Self {
            id: user.id.clone(),
            email: user.email.clone(),
            name: user.name.clone(),
            role: user.role,
            tier: user.tier,
            active: user.is_active(),
            last_login_at: user.last_login_at.map(ms_to_rfc3339),
            created_at: ms_to_rfc3339(user.created_at),
            updated_at: ms_to_rfc3339(user.updated_at),
        }
    }
}

/// Tokens plus the user they belong to.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthTokens {
    /// JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// Single-use token for `POST /api/v1/auth/refresh`.
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// The authenticated user.
    pub user: UserView,
}

impl AuthTokens {
    /// Combines a token pair with its user.
    pub fn new(user: &User, tokens: TokenPair) -> Self {
        Self {
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            token_type: "Bearer",
            expires_in: tokens.expires_in,
            user: user.into(),
        }
    }
}

/// An API key as listed (never the secret).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyView {
    /// Key id (for revocation).
    pub id: String,
    /// Label.
    pub name: String,
    /// First characters of the key.
    pub prefix: String,
    /// Session the key is bound to, if any.
    pub session_id: Option<String>,
    /// `ACTIVE`, `REVOKED` or `EXPIRED`.
    pub status: &'static str,
    /// Expiry (RFC 3339).
    pub expires_at: Option<String>,
    /// Last use (RFC 3339), updated in batches.
    pub last_used_at: Option<String>,
    /// Revocation (RFC 3339).
    pub revoked_at: Option<String>,
    /// Creation (RFC 3339).
    pub created_at: String,
}

impl ApiKeyView {
    /// The view of a stored key at `now_ms`.
    pub fn new(record: &ApiKeyRecord, now_ms: i64) -> Self {
        let status = if record.revoked_at.is_some() {
            "REVOKED"
        } else if !record.is_usable(now_ms) {
            "EXPIRED"
        } else {
            "ACTIVE"
        };
        Self {
            id: record.id.clone(),
            name: record.name.clone(),
            prefix: record.key_prefix.clone(),
            session_id: record.session_id.clone(),
            status,
            expires_at: record.expires_at.map(ms_to_rfc3339),
            last_used_at: record.last_used_at.map(ms_to_rfc3339),
            revoked_at: record.revoked_at.map(ms_to_rfc3339),
            created_at: ms_to_rfc3339(record.created_at),
        }
    }
}

/// A worker with its load, as the admin API and registration answer it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerView {
    /// Worker id.
    pub id: String,
    /// Base URL.
    pub endpoint: String,
    /// ONLINE, OFFLINE or MAINTENANCE.
    pub status: WorkerStatus,
    /// Live sessions assigned.
    pub session_count: i64,
    /// Capacity.
    pub max_sessions: i64,
    /// Last heartbeat (RFC 3339).
    pub last_heartbeat: Option<String>,
    /// Last successful probe (RFC 3339).
    pub last_probe_ok: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// Worker version.
    pub version: Option<String>,
    /// Environment.
    pub environment: Option<String>,
    /// Last reported CPU.
    pub cpu_usage: Option<f64>,
    /// Last reported memory.
    pub memory_usage: Option<f64>,
    /// Last reported uptime (s).
    pub uptime_seconds: Option<i64>,
    /// First registration (RFC 3339).
    pub registered_at: String,
}

impl From<&Worker> for WorkerView {
    fn from(worker: &Worker) -> Self {
        Self {
            id: worker.id.clone(),
            endpoint: worker.endpoint.clone(),
            status: worker.status,
            session_count: worker.session_count,
            max_sessions: worker.max_sessions,
            last_heartbeat: worker.last_heartbeat_at.map(ms_to_rfc3339),
            last_probe_ok: worker.last_probe_ok_at.map(ms_to_rfc3339),
            description: worker.description.clone(),
            version: worker.version.clone(),
            environment: worker.environment.clone(),
            cpu_usage: worker.cpu_usage,
            memory_usage: worker.memory_usage,
            uptime_seconds: worker.uptime_seconds,
            registered_at: ms_to_rfc3339(worker.registered_at),
        }
    }
}

/// A session as users see it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    /// Session id.
    pub id: String,
    /// Label.
    pub name: String,
    /// INIT, QR_REQUIRED, CONNECTED, DISCONNECTED, RECONNECTING or ERROR.
    pub status: crate::domain::SessionStatus,
    /// Worker running it.
    pub worker_id: Option<String>,
    /// WhatsApp number once connected.
    pub phone_number: Option<String>,
    /// WhatsApp name once connected.
    pub display_name: Option<String>,
    /// Owner.
    pub user_id: String,
    /// Fencing epoch (bumped on every move).
    pub epoch: i64,
    /// Last report (RFC 3339).
    pub last_activity_at: Option<String>,
    /// Creation (RFC 3339).
    pub created_at: String,
    /// Last change (RFC 3339).
    pub updated_at: String,
}

impl From<&Session> for SessionView {
    fn from(session: &Session) -> Self {
        Self {
            id: session.id.clone(),
            name: session.name.clone(),
            status: session.status,
            worker_id: session.worker_id.clone(),
            phone_number: session.phone_number.clone(),
            display_name: session.display_name.clone(),
            user_id: session.user_id.clone(),
            epoch: session.epoch,
            last_activity_at: session.last_activity_at.map(ms_to_rfc3339),
            created_at: ms_to_rfc3339(session.created_at),
            updated_at: ms_to_rfc3339(session.updated_at),
        }
    }
}
