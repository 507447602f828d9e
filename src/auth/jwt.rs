//! Short-lived HS256 access tokens. Claims carry the user's token generation so a password change
//! or deactivation invalidates every outstanding token at once.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::domain::Role;

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    /// User id.
    pub sub: String,
    /// Role at issue time (re-checked against the store on every request).
    pub role: Role,
    /// The user's token generation at issue time.
    #[serde(rename = "gen")]
    pub generation: i64,
    /// Issued at (seconds).
    pub iat: i64,
    /// Expires at (seconds).
    pub exp: i64,
    /// Token type, so a token of another kind signed with the same key is never accepted.
    pub typ: String,
}

const ACCESS_TYPE: &str = "access";

/// Issues and checks access tokens with one HMAC key.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl JwtKeys {
    /// Keys from the `JWT_SECRET` bytes; tokens live `ttl`.
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is exact: a 15-minute token is dead at minute 15, not a minute later.
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub", "iat"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
        }
    }

    /// How long issued tokens live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Issues a token for the user, valid from `now_s` (seconds).
    pub fn issue(
        &self,
        user_id: &str,
        role: Role,
        generation: i64,
        now_s: i64,
    ) -> anyhow::Result<String> {
        let claims = AccessClaims {
            sub: user_id.to_owned(),
            role,
            generation,
            iat: now_s,
            exp: now_s + self.ttl.as_secs() as i64,
            typ: ACCESS_TYPE.to_owned(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| anyhow::anyhow!("signing access token: {e}"))
    }

    /// Verifies signature, expiry and type; `None` for any invalid token.
    pub fn verify(&self, token: &str) -> Option<AccessClaims> {
        let data =
            jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation).ok()?;
        (data.claims.typ == ACCESS_TYPE).then_some(data.claims)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_expiry() {
        let keys = JwtKeys::new(
            b"0123456789abcdef0123456789abcdef",
            Duration::from_secs(900),
        );
        let now = chrono::Utc::now().timestamp();
        let token = keys.issue("u1", Role::User, 3, now).unwrap();
        let claims = keys.verify(&token).unwrap();
        assert_eq!(claims.sub, "u1");
        assert_eq!(claims.generation, 3);
        let expired = keys.issue("u1", Role::User, 3, now - 901).unwrap();
        assert!(keys.verify(&expired).is_none());
        let other = JwtKeys::new(
            b"another-key-another-key-another!!",
            Duration::from_secs(900),
        );
        assert!(other.verify(&token).is_none());
    }
}
