//! Webhook endpoints as their owners manage them: validated (the URL through the SSRF guard,
//! event types, the owner's own sessions), limited per tier, with the signing secret sealed
//! at rest and shown in clear only at creation and at a rotation.

use std::sync::Arc;
use std::time::Duration;

use crate::crypto::SecretBox;
use crate::domain::{EventType, InvalidInput, SessionId, TextRule, now_ms};
use crate::store::{NewWebhook, Store, StoreError, WebhookChanges, WebhookRecord};
use crate::webhooks::SigningSecret;
use crate::webhooks::ssrf::TargetPolicy;

/// How long a rotated-out secret keeps signing beside the new one.
pub const ROTATION_OVERLAP: Duration = Duration::from_secs(24 * 3600);
/// Longest endpoint URL.
const URL_RULE: TextRule = TextRule::token(2048).non_empty();
/// An endpoint's note.
const DESCRIPTION_RULE: TextRule = TextRule::line(500);
/// Most event types and sessions one endpoint names.
const MAX_EVENTS: usize = 32;
const MAX_SESSIONS: usize = 100;
/// "Every event type".
pub const ALL_EVENTS: &str = "*";

/// Why an endpoint operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// A field is invalid.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// The owner has as many endpoints as the tier allows.
    #[error("your tier allows at most {0} webhook endpoint(s); delete one first")]
    Limit(u32),
    /// No such endpoint of this owner.
    #[error("webhook not found")]
    NotFound,
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for EndpointError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => EndpointError::NotFound,
            other => EndpointError::Store(other),
        }
    }
}

/// What an owner asks for at creation.
#[derive(Debug, Clone)]
pub struct EndpointSpec {
    /// Where events go.
    pub url: String,
    /// Event types, or `*`.
    pub events: Vec<String>,
    /// Only these sessions; `None`: all the owner's.
    pub session_ids: Option<Vec<String>>,
    /// A note.
    pub description: Option<String>,
    /// Created enabled (default) or not.
    pub enabled: bool,
}

/// Changes an owner asks for; `None` leaves a field.
#[derive(Debug, Clone, Default)]
pub struct EndpointPatch {
    /// New URL.
    pub url: Option<String>,
    /// New event types.
    pub events: Option<Vec<String>>,
    /// New session filter (`Some(None)`: all sessions).
    pub session_ids: Option<Option<Vec<String>>>,
    /// New note (`Some(None)` clears it).
    pub description: Option<Option<String>>,
    /// Enable or disable.
    pub enabled: Option<bool>,
}

/// An endpoint with a secret to show once.
#[derive(Debug)]
pub struct WithSecret {
    /// The endpoint.
    pub endpoint: WebhookRecord,
    /// `whsec_…`.
    pub secret: SigningSecret,
}

/// The webhook endpoints service.
#[derive(Clone)]
pub struct Endpoints {
    store: Store,
    vault: Arc<SecretBox>,
    targets: TargetPolicy,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints")
            .field("targets", &self.targets)
            .finish_non_exhaustive()
    }
}

/// The associated data of an endpoint's sealed secrets.
fn seal_context(id: &str) -> String {
    format!("webhook:{id}")
}

impl Endpoints {
    /// The service over `store`, sealing with `vault`, allowing `targets`.
    pub fn new(store: Store, vault: Arc<SecretBox>, targets: TargetPolicy) -> Self {
        Self {
            store,
            vault,
            targets,
        }
    }

    /// The endpoint's signing secrets now: the current one, and the previous one while its
    /// rotation overlap lasts.
    pub fn signing_secrets(
        &self,
        endpoint: &WebhookRecord,
        now_ms: i64,
    ) -> Result<Vec<SigningSecret>, crate::crypto::Unopenable> {
        let context = seal_context(&endpoint.id);
        let open = |sealed: &str| -> Result<SigningSecret, crate::crypto::Unopenable> {
            let plain = self.vault.open(sealed, &context)?;
            let text =
                String::from_utf8(plain).map_err(|_| crate::crypto::Unopenable("not a secret"))?;
            SigningSecret::parse("secret", &text)
                .map_err(|_| crate::crypto::Unopenable("not a secret"))
        };
        let mut secrets = vec![open(&endpoint.secret)?];
        if let (Some(previous), Some(until)) =
            (&endpoint.previous_secret, endpoint.previous_secret_until)
            && until > now_ms
        {
            secrets.push(open(previous)?);
        }
        Ok(secrets)
    }

    /// Creates an endpoint for `user_id` (at most `limit`), with a fresh secret.
    pub async fn create(
        &self,
        user_id: &str,
        spec: EndpointSpec,
        limit: u32,
    ) -> Result<WithSecret, EndpointError> {
        let url = self.check_url(&spec.url).await?;
        let events = check_events(&spec.events)?;
        let session_ids = match &spec.session_ids {
            Some(ids) => Some(self.check_sessions(user_id, ids).await?),
            None => None,
        };
        let description = check_description(spec.description.as_deref())?;
        let secret = SigningSecret::generate();
        let revealed = secret.reveal();
        let endpoint = self
            .store
            .insert_webhook(
                NewWebhook {
                    user_id,
                    url: &url,
                    events: &events,
                    session_ids: session_ids.as_deref(),
                    description,
                    disabled: !spec.enabled,
                },
                limit,
                |id| self.vault.seal(revealed.as_bytes(), &seal_context(id)),
            )
            .await
            .map_err(|err| match err {
                StoreError::Conflict("webhook limit") => EndpointError::Limit(limit),
                other => other.into(),
            })?;
        Ok(WithSecret { endpoint, secret })
    }

    /// Applies `patch` to one of `user_id`'s endpoints.
    pub async fn update(
        &self,
        user_id: &str,
        id: &str,
        patch: EndpointPatch,
    ) -> Result<WebhookRecord, EndpointError> {
        let url = match &patch.url {
            Some(url) => Some(self.check_url(url).await?),
            None => None,
        };
        let events = patch.events.as_deref().map(check_events).transpose()?;
        let session_ids = match &patch.session_ids {
            Some(Some(ids)) => Some(Some(self.check_sessions(user_id, ids).await?)),
            Some(None) => Some(None),
            None => None,
        };
        let description = match &patch.description {
            Some(text) => Some(check_description(text.as_deref())?),
            None => None,
        };
        Ok(self
            .store
            .update_webhook(
                user_id,
                id,
                WebhookChanges {
                    url: url.as_deref(),
                    events: events.as_deref(),
                    session_ids: session_ids.as_ref().map(Option::as_deref),
                    description,
                    enabled: patch.enabled,
                },
            )
            .await?)
    }

    /// A new secret for one of `user_id`'s endpoints; the current one keeps signing beside it
    /// for [`ROTATION_OVERLAP`].
    pub async fn rotate_secret(
        &self,
        user_id: &str,
        id: &str,
    ) -> Result<WithSecret, EndpointError> {
        let secret = SigningSecret::generate();
        let sealed = self
            .vault
            .seal(secret.reveal().as_bytes(), &seal_context(id));
        let until = now_ms() + ROTATION_OVERLAP.as_millis() as i64;
        let endpoint = self
            .store
            .rotate_webhook_secret(user_id, id, &sealed, until)
            .await?;
        Ok(WithSecret { endpoint, secret })
    }

    async fn check_url(&self, raw: &str) -> Result<String, EndpointError> {
        URL_RULE.check("url", raw)?;
        Ok(self.targets.check(raw).await?.to_string())
    }

    /// The owner's sessions named, each once; another user's (or no) session is refused.
    async fn check_sessions(
        &self,
        user_id: &str,
        ids: &[String],
    ) -> Result<Vec<String>, EndpointError> {
        if ids.is_empty() || ids.len() > MAX_SESSIONS {
            return Err(InvalidInput::new(
                "sessionIds",
                format!("must name 1 to {MAX_SESSIONS} sessions (omit it for all sessions)"),
            )
            .into());
        }
        let mut checked: Vec<String> = Vec::with_capacity(ids.len());
        for id in ids {
            let id = SessionId::parse("sessionIds", id)?;
            match self.store.session_by_id(id.as_str()).await {
                Ok(session) if session.user_id == user_id => {}
                Ok(_) | Err(StoreError::NotFound) => {
                    return Err(InvalidInput::new(
                        "sessionIds",
                        format!("`{}` is not one of your sessions", id.as_str()),
                    )
                    .into());
                }
                Err(err) => return Err(err.into()),
            }
            if !checked.iter().any(|c| c == id.as_str()) {
                checked.push(id.as_str().to_owned());
            }
        }
        Ok(checked)
    }
}

/// Known event types (or `*`), each once.
fn check_events(events: &[String]) -> Result<Vec<String>, InvalidInput> {
    if events.is_empty() || events.len() > MAX_EVENTS {
        return Err(InvalidInput::new(
            "events",
            format!("must name 1 to {MAX_EVENTS} event types, or [\"*\"] for all"),
        ));
    }
    let mut checked: Vec<String> = Vec::with_capacity(events.len());
    for event in events {
        if event != ALL_EVENTS {
            event
                .parse::<EventType>()
                .map_err(|problem| InvalidInput::new("events", format!("{problem}, or `*`")))?;
        }
        if !checked.contains(event) {
            checked.push(event.clone());
        }
    }
    if checked.iter().any(|e| e == ALL_EVENTS) {
        checked = vec![ALL_EVENTS.to_owned()];
    }
    Ok(checked)
}

fn check_description(text: Option<&str>) -> Result<Option<&str>, InvalidInput> {
    DESCRIPTION_RULE.check_optional("description", text)
}
