//! The account service: every auth flow, written once against the store and the counters.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::jwt::JwtKeys;
use super::throttle::Throttle;
use super::{password, random_token, sha256_hex};
use crate::config::LoginThrottle;
use crate::domain::{DisplayName, Email, InvalidInput, Password, Role, TextRule, Tier, now_ms};
use crate::limits::Counters;
use crate::store::{NewRefreshToken, NewUser, RefreshOutcome, Store, StoreError, User};

/// Why an auth flow was refused. Each maps to one HTTP status and error code.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A field failed validation.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// Wrong e-mail or password (deliberately not saying which).
    #[error("invalid email or password")]
    InvalidCredentials,
    /// The account was deactivated by an administrator.
    #[error("this account has been deactivated")]
    AccountDisabled,
    /// Too many attempts at a credential check (login, registration, refresh, current
    /// password) for this account or client address.
    #[error("{message}")]
    Throttled {
        /// Stable error code (`LOGIN_THROTTLED`, `REGISTRATION_THROTTLED`, …).
        code: &'static str,
        /// Explanation.
        message: &'static str,
        /// When the client may try again.
        retry_after: Duration,
    },
    /// The refresh token is unknown, expired or revoked.
    #[error("invalid or expired refresh token")]
    InvalidRefreshToken,
    /// A used refresh token was presented again; its whole family is now revoked.
    #[error("refresh token reuse detected; all sessions of this login were revoked")]
    RefreshTokenReused,
    /// Registering an e-mail that already has an account.
    #[error("an account with this email already exists")]
    EmailTaken,
    /// The store cannot write (or answer) now; retrying later can succeed.
    #[error("store unavailable: {0:#}")]
    StoreUnavailable(anyhow::Error),
    /// Store failure or bug.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<StoreError> for AuthError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict(_) => AuthError::EmailTaken,
            StoreError::NotFound => AuthError::InvalidCredentials,
            StoreError::Unavailable(e) => AuthError::StoreUnavailable(e),
            StoreError::Unexpected(e) => AuthError::Unexpected(e),
        }
    }
}

/// An access token and its refresh token, as the API returns them.
#[derive(Debug, Clone)]
pub struct TokenPair {
    /// Short-lived JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// Opaque, single-use token for `POST /auth/refresh`.
    pub refresh_token: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

/// The text rule of a refresh token as presented (issued ones are 64 letters and digits).
pub const REFRESH_TOKEN_RULE: TextRule = TextRule::token(256).non_empty();

/// A login as received.
#[derive(Debug)]
pub struct LoginAttempt<'a> {
    /// E-mail as typed.
    pub email: &'a str,
    /// Password as typed.
    pub password: &'a str,
    /// The client's address, for per-IP throttling.
    pub client_ip: Option<IpAddr>,
}

/// Registration, login, token rotation, logout, password change, token checks.
#[derive(Debug, Clone)]
pub struct AuthService {
    store: Store,
    jwt: JwtKeys,
    throttle: Throttle,
    refresh_ttl: Duration,
}

impl AuthService {
    /// Builds the service over shared components.
    pub fn new(
        store: Store,
        jwt: JwtKeys,
        counters: Arc<Counters>,
        throttle: LoginThrottle,
        refresh_ttl: Duration,
    ) -> Self {
        Self {
            store,
            jwt,
            throttle: Throttle::new(counters, throttle),
            refresh_ttl,
        }
    }

    /// Creates a `USER` on the `BASIC` tier and logs it in; registrations are throttled per
    /// client address (after validation, before the password is hashed).
    pub async fn register(
        &self,
        name: &str,
        email: &str,
        password: &str,
        client_ip: Option<IpAddr>,
    ) -> Result<(User, TokenPair), AuthError> {
        let name = DisplayName::parse("name", name)?;
        let email = Email::parse(email)?;
        let password = Password::parse("password", password)?;
        self.throttle.admit_registration(client_ip).await?;
        let user = self
            .create_user(&email, name.as_str(), &password, Role::User, Tier::Basic)
            .await?;
        let tokens = self.issue_tokens(&user, None).await?;
        Ok((user, tokens))
    }

    /// Creates a user with any role and tier (registration and `admin create-user`).
    pub async fn create_user(
        &self,
        email: &Email,
        name: &str,
        password: &Password,
        role: Role,
        tier: Tier,
    ) -> Result<User, AuthError> {
        let password_hash = password::hash(password.expose().to_owned()).await?;
        Ok(self
            .store
            .insert_user(NewUser {
                email,
                name,
                password_hash: &password_hash,
                role,
                tier,
            })
            .await?)
    }

    /// Checks credentials under throttling (see `auth::throttle`) and issues a token pair.
    /// Text that breaks the text rule is a `400`; a clean but malformed address cannot match
    /// an account and is answered like a wrong password.
    pub async fn login(&self, attempt: LoginAttempt<'_>) -> Result<(User, TokenPair), AuthError> {
        Email::RULE.check("email", attempt.email)?;
        Password::PRESENTED.check("password", attempt.password)?;
        let email = Email::parse(attempt.email).map_err(|_| AuthError::InvalidCredentials)?;
        let admission = self
            .throttle
            .admit_login(email.as_str(), attempt.client_ip)
            .await?;

        let user = match self.store.user_by_email(&email).await {
            Ok(user) => Some(user),
            Err(StoreError::NotFound) => None,
            Err(err) => return Err(err.into()),
        };
        let stored_hash = match &user {
            Some(user) => user.password_hash.clone(),
            None => password::decoy_hash().await.to_owned(),
        };
        let password_ok = password::verify(attempt.password.to_owned(), stored_hash).await?;
        // A failure keeps the slots it took: that is what the throttle counts.
        let Some(user) = user.filter(|_| password_ok) else {
            return Err(AuthError::InvalidCredentials);
        };
        self.throttle.succeeded(admission).await?;
        if !user.is_active() {
            return Err(AuthError::AccountDisabled);
        }
        self.store.touch_user_login(&user.id).await?;
        let tokens = self.issue_tokens(&user, None).await?;
        Ok((user, tokens))
    }

    /// Exchanges a refresh token for a new pair (rotation); a replayed token revokes its family.
    /// Failed refreshes are throttled per client address.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        client_ip: Option<IpAddr>,
    ) -> Result<(User, TokenPair), AuthError> {
        REFRESH_TOKEN_RULE.check("refreshToken", refresh_token)?;
        let admission = self.throttle.admit_refresh(client_ip).await?;
        let record = match self
            .store
            .consume_refresh_token(&sha256_hex(refresh_token))
            .await?
        {
            RefreshOutcome::Rotated(record) => record,
            RefreshOutcome::ReuseDetected => return Err(AuthError::RefreshTokenReused),
            RefreshOutcome::Invalid => return Err(AuthError::InvalidRefreshToken),
        };
        self.throttle.succeeded(admission).await?;
        let user = match self.store.user_by_id(&record.user_id).await {
            Ok(user) => user,
            Err(StoreError::NotFound) => return Err(AuthError::InvalidRefreshToken),
            Err(err) => return Err(err.into()),
        };
        if !user.is_active() {
            self.store.revoke_refresh_family(&record.family_id).await?;
            return Err(AuthError::AccountDisabled);
        }
        let tokens = self.issue_tokens(&user, Some(&record.family_id)).await?;
        Ok((user, tokens))
    }

    /// Ends a login. With a refresh token: revokes that login's family (it must be the user's).
    /// Without: revokes every refresh token of the user and every outstanding access token.
    pub async fn logout(&self, user: &User, refresh_token: Option<&str>) -> Result<(), AuthError> {
        REFRESH_TOKEN_RULE.check_optional("refreshToken", refresh_token)?;
        match refresh_token {
            Some(token) => match self.store.refresh_token_by_hash(&sha256_hex(token)).await? {
                Some(record) if record.user_id == user.id => {
                    self.store.revoke_refresh_family(&record.family_id).await?;
                    Ok(())
                }
                _ => Err(AuthError::InvalidRefreshToken),
            },
            None => {
                self.store.revoke_user_refresh_tokens(&user.id).await?;
                self.store.bump_token_generation(&user.id).await?;
                Ok(())
            }
        }
    }

    /// Changes the password after checking the current one (throttled per user); every
    /// other login ends.
    pub async fn change_password(
        &self,
        user: &User,
        current: &str,
        new: &str,
    ) -> Result<TokenPair, AuthError> {
        Password::PRESENTED.check("currentPassword", current)?;
        let new = Password::parse("newPassword", new)?;
        let admission = self.throttle.admit_password_check(&user.id).await?;
        if !password::verify(current.to_owned(), user.password_hash.clone()).await? {
            return Err(AuthError::InvalidCredentials);
        }
        self.throttle.succeeded(admission).await?;
        let hash = password::hash(new.expose().to_owned()).await?;
        self.store.update_user_password(&user.id, &hash).await?;
        self.store.revoke_user_refresh_tokens(&user.id).await?;
        let user = self.store.user_by_id(&user.id).await?;
        self.issue_tokens(&user, None).await
    }

    /// Resolves an access token to its (active, current-generation) user.
    pub async fn user_for_access_token(&self, token: &str) -> Result<Option<User>, AuthError> {
        let Some(claims) = self.jwt.verify(token) else {
            return Ok(None);
        };
        let user = match self.store.user_by_id(&claims.sub).await {
            Ok(user) => user,
            Err(StoreError::NotFound) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        Ok((user.is_active() && user.token_generation == claims.generation).then_some(user))
    }

    /// The JWT keys (tests and tools mint tokens with them).
    pub fn jwt(&self) -> &JwtKeys {
        &self.jwt
    }

    async fn issue_tokens(
        &self,
        user: &User,
        family_id: Option<&str>,
    ) -> Result<TokenPair, AuthError> {
        let access_token =
            self.jwt
                .issue(&user.id, user.role, user.token_generation, now_ms() / 1000)?;
        let refresh_token = random_token(64);
        let new_family;
        let family_id = match family_id {
            Some(existing) => existing,
            None => {
                new_family = crate::domain::new_id();
                &new_family
            }
        };
        self.store
            .insert_refresh_token(NewRefreshToken {
                user_id: &user.id,
                family_id,
                token_hash: &sha256_hex(&refresh_token),
                expires_at: now_ms() + self.refresh_ttl.as_millis() as i64,
            })
            .await?;
        Ok(TokenPair {
            access_token,
            refresh_token,
            expires_in: self.jwt.ttl().as_secs(),
        })
    }
}
