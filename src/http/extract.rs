//! Reusable filters: shared state, JSON bodies and query strings with clear 4xx errors, path
//! ids under the text rule, the caller's identity (access token or API key), the client
//! address.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use warp::{Filter, Rejection};

use super::error::ApiError;
use super::server::PeerAddr;
use crate::app::AppContext;
use crate::auth::api_keys::looks_like_key;
use crate::auth::sha256_hex;
use crate::domain::{InvalidInput, Role, TextRule, now_ms};
use crate::quota::QuotaKind;
use crate::store::{ApiKeyRecord, User};

/// Shared state handed to handlers.
pub type Ctx = Arc<AppContext>;

/// Injects the shared context.
pub fn with_context(context: Ctx) -> impl Filter<Extract = (Ctx,), Error = Infallible> + Clone {
    warp::any().map(move || context.clone())
}

/// Parses a JSON body into `T`. Syntax errors are `400 INVALID_JSON`; well-formed JSON of the
/// wrong shape (missing or mistyped field) is `400 VALIDATION_ERROR`; a non-JSON content type
/// is `415`. The body size was already bounded by the server.
pub fn json_body<T: DeserializeOwned + Send + 'static>()
-> impl Filter<Extract = (T,), Error = Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        .and(warp::body::bytes())
        .and_then(
            |content_type: Option<String>, body: bytes::Bytes| async move {
                parse_json_body::<T>(content_type.as_deref(), &body).map_err(warp::reject::custom)
            },
        )
}

/// [`json_body`]'s parsing, for handlers that also need the raw bytes (idempotency).
pub fn parse_json_body<'body, T: Deserialize<'body>>(
    content_type: Option<&str>,
    body: &'body [u8],
) -> Result<T, ApiError> {
    if let Some(content_type) = content_type {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !(essence == "application/json" || essence.ends_with("+json")) {
            return Err(ApiError::UnsupportedMediaType);
        }
    }
    if body.is_empty() {
        return Err(ApiError::BadRequest {
            code: "INVALID_JSON",
            message: "request body is empty; expected a JSON object".to_owned(),
            details: None,
        });
    }
    // The fast path is plain serde: no field tracking on a request that parses.
    serde_json::from_slice(body).map_err(|err| match err.classify() {
        // Well-formed JSON of the wrong shape: parsed again, tracking the path, to name the
        // field (`messages[2].to`). Only failed requests pay for it.
        serde_json::error::Category::Data => {
            let field = serde_path_to_error::deserialize::<_, T>(
                &mut serde_json::Deserializer::from_slice(body),
            )
            .err()
            .map(|err| err.path().to_string())
            .filter(|field| field != ".");
            match field {
                Some(field) => ApiError::BadRequest {
                    code: "VALIDATION_ERROR",
                    message: format!("{field}: {err}"),
                    details: Some(serde_json::json!({ "field": field })),
                },
                None => ApiError::BadRequest {
                    code: "VALIDATION_ERROR",
                    message: format!("invalid request body: {err}"),
                    details: None,
                },
            }
        }
        _ => ApiError::BadRequest {
            code: "INVALID_JSON",
            message: format!("invalid request body: {err}"),
            details: None,
        },
    })
}

/// A request's query string as name/value pairs (percent-decoded). Handlers take each
/// parameter from it under the text rule, so a refusal is a `400 INVALID_QUERY` naming the
/// parameter in `details.field`. (warp's typed `query` filter names nothing, and its rejection
/// loses to a sibling route's `405` when the rejections of an `or` are combined.)
#[derive(Clone, Debug, Default)]
pub struct QueryParams(Vec<(String, String)>);

/// The `400` of a query parameter.
fn invalid_query(invalid: InvalidInput) -> ApiError {
    ApiError::BadRequest {
        code: "INVALID_QUERY",
        message: invalid.to_string(),
        details: Some(serde_json::json!({ "field": invalid.field })),
    }
}

impl QueryParams {
    /// Refuses a parameter that is not in `allowed`, or one given twice.
    pub fn only(&self, allowed: &[&'static str]) -> Result<(), ApiError> {
        for (index, (name, _)) in self.0.iter().enumerate() {
            let Some(known) = allowed.iter().find(|known| *known == name) else {
                let listed = allowed.join(", ");
                // The name is the client's: echoed only if it passes the rule itself.
                let shown = TextRule::token(64)
                    .check("query", name)
                    .map_or("(unprintable)", |name| name);
                return Err(invalid_query(InvalidInput::new(
                    "query",
                    format!("unknown query parameter `{shown}`; expected one of {listed}"),
                )));
            };
            if self.0[..index].iter().any(|(earlier, _)| earlier == name) {
                return Err(invalid_query(InvalidInput::new(
                    known,
                    "must be given at most once",
                )));
            }
        }
        Ok(())
    }

    /// The text of parameter `name`, checked by `rule` (an empty value counts as absent).
    pub fn text(&self, name: &'static str, rule: TextRule) -> Result<Option<&str>, ApiError> {
        let value = self
            .0
            .iter()
            .find(|(given, _)| given == name)
            .map(|(_, value)| value.as_str())
            .filter(|value| !value.is_empty());
        rule.check_optional(name, value).map_err(invalid_query)
    }

    /// Parameter `name` as a whole number within `range`.
    pub fn number(
        &self,
        name: &'static str,
        range: std::ops::RangeInclusive<u32>,
    ) -> Result<Option<u32>, ApiError> {
        let refusal = || {
            invalid_query(InvalidInput::new(
                name,
                format!(
                    "must be a whole number from {} to {}",
                    range.start(),
                    range.end()
                ),
            ))
        };
        let Some(raw) = self.text(name, TextRule::token(10))? else {
            return Ok(None);
        };
        let number: u32 = raw.parse().map_err(|_| refusal())?;
        if range.contains(&number) {
            Ok(Some(number))
        } else {
            Err(refusal())
        }
    }
}

/// The query string as [`QueryParams`]; an undecodable one is `400 INVALID_QUERY`.
pub fn query_params() -> impl Filter<Extract = (QueryParams,), Error = Rejection> + Clone {
    warp::query::<Vec<(String, String)>>()
        .map(QueryParams)
        .or_else(|_| async {
            Err(warp::reject::custom(ApiError::BadRequest {
                code: "INVALID_QUERY",
                message: "the query string is not application/x-www-form-urlencoded".to_owned(),
                details: None,
            }))
        })
}

/// A path segment that names an object by the id the gateway gave it (users, API keys,
/// messages): checked by [`TextRule::ID`] as `field`. warp hands the segment over still
/// percent-encoded; no id the gateway issues has a `%`, so an encoded character (`%00`) is
/// refused rather than looked up.
pub fn path_id(field: &'static str, raw: &str) -> Result<(), ApiError> {
    TextRule::ID.check(field, raw)?;
    if raw.contains('%') {
        return Err(InvalidInput::new(field, "must not contain percent-encoded characters").into());
    }
    Ok(())
}

/// How the caller proved who they are.
#[derive(Clone, Debug)]
pub enum Credential {
    /// A dashboard access token.
    AccessToken,
    /// An integrator's API key.
    ApiKey(ApiKeyRecord),
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The user acting.
    pub user: User,
    /// How they authenticated.
    pub credential: Credential,
}

/// Accepts an access token (`Authorization: Bearer <jwt>`) or an API key (`X-API-Key: wg_…` or
/// `Authorization: Bearer wg_…`), and charges one API call to the user's hourly quota.
pub fn authenticated(
    context: Ctx,
) -> impl Filter<Extract = (Principal,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(warp::header::optional::<String>("x-api-key"))
        .and(with_context(context))
        .and_then(
            |authorization: Option<String>, api_key: Option<String>, context: Ctx| async move {
                let principal =
                    identify(&context, authorization.as_deref(), api_key.as_deref()).await?;
                charge_api_call(&context, &principal.user).await?;
                Ok::<_, Rejection>(principal)
            },
        )
}

/// Like [`authenticated`] but only for dashboard access tokens: account and key management must
/// not be reachable with a (possibly leaked) integration key.
pub fn user_session(context: Ctx) -> impl Filter<Extract = (User,), Error = Rejection> + Clone {
    authenticated(context).and_then(|principal: Principal| async move {
        match principal.credential {
            Credential::AccessToken => Ok(principal.user),
            Credential::ApiKey(_) => Err(warp::reject::custom(ApiError::Forbidden {
                code: "ACCESS_TOKEN_REQUIRED",
                message: "this endpoint needs a user access token, not an API key",
            })),
        }
    })
}

/// An administrator with an access token; `403` for everyone else.
pub fn administrator(context: Ctx) -> impl Filter<Extract = (User,), Error = Rejection> + Clone {
    user_session(context).and_then(|user: User| async move {
        if user.role == Role::Administrator {
            Ok(user)
        } else {
            Err(warp::reject::custom(ApiError::Forbidden {
                code: "FORBIDDEN",
                message: "administrator role required",
            }))
        }
    })
}

async fn identify(
    context: &AppContext,
    authorization: Option<&str>,
    api_key: Option<&str>,
) -> Result<Principal, Rejection> {
    let bearer = authorization.and_then(|value| {
        let (scheme, token) = value.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    // Two different credentials: which one acts is the client's mistake to fix, not ours to
    // guess (and an invalid one must not pass unnoticed beside a valid one).
    if let (Some(key), Some(_)) = (api_key, authorization)
        && bearer != Some(key.trim())
    {
        return Err(warp::reject::custom(ApiError::Unauthorized(
            "send one credential: X-API-Key or Authorization, not both",
        )));
    }
    if let Some(key) = api_key.or(bearer.filter(|token| looks_like_key(token))) {
        return api_key_principal(context, key.trim())
            .await
            .map_err(warp::reject::custom);
    }
    let Some(token) = bearer else {
        return Err(warp::reject::custom(ApiError::Unauthorized(
            "authentication required: send Authorization: Bearer <token> or X-API-Key",
        )));
    };
    match context.auth.user_for_access_token(token).await {
        Ok(Some(user)) => Ok(Principal {
            user,
            credential: Credential::AccessToken,
        }),
        Ok(None) => Err(warp::reject::custom(ApiError::Unauthorized(
            "invalid or expired access token",
        ))),
        Err(err) => Err(warp::reject::custom(ApiError::from(err))),
    }
}

async fn api_key_principal(context: &AppContext, key: &str) -> Result<Principal, ApiError> {
    const REFUSED: ApiError = ApiError::Unauthorized("invalid, revoked or expired API key");
    if !looks_like_key(key) {
        return Err(REFUSED);
    }
    let now = now_ms();
    let hash = sha256_hex(key);
    let (record, user) = match context.verified_keys.get(&hash) {
        Some(verified) => verified,
        None => {
            let Some(record) = context.store.api_key_by_hash(&hash).await? else {
                return Err(REFUSED);
            };
            let user = context.store.user_by_id(&record.user_id).await?;
            context
                .verified_keys
                .put(hash, record.clone(), user.clone());
            (record, user)
        }
    };
    // Checked on every request, cached or not: expiry is a matter of the clock.
    if !record.is_usable(now) || !user.is_active() {
        return Err(REFUSED);
    }
    context.api_key_usage.note(&record.id, now);
    Ok(Principal {
        user,
        credential: Credential::ApiKey(record),
    })
}

async fn charge_api_call(context: &AppContext, user: &User) -> Result<(), Rejection> {
    let decision = context
        .quotas
        .charge(&user.id, user.tier, QuotaKind::ApiCalls, 1)
        .await
        .map_err(|e| warp::reject::custom(ApiError::from(e)))?;
    if decision.allowed {
        Ok(())
    } else {
        Err(warp::reject::custom(ApiError::TooManyRequests {
            code: "API_CALL_QUOTA_EXCEEDED",
            message: format!(
                "hourly API call quota of {} for the {} tier is used up",
                decision.limit, user.tier
            ),
            retry_after: decision.retry_after,
        }))
    }
}

/// The client's address: the first `X-Forwarded-For` hop behind a trusted proxy, else the peer.
pub fn client_ip(
    context: Ctx,
) -> impl Filter<Extract = (Option<IpAddr>,), Error = Rejection> + Clone {
    warp::header::optional::<String>("x-forwarded-for")
        .and(warp::ext::optional::<PeerAddr>())
        .map(move |forwarded: Option<String>, peer: Option<PeerAddr>| {
            let from_proxy = forwarded
                .filter(|_| context.config.trust_proxy_headers)
                .and_then(|value| {
                    value
                        .split(',')
                        .next()
                        .and_then(|ip| ip.trim().parse().ok())
                });
            from_proxy.or(peer.map(|p| p.0.ip()))
        })
}
