//! Identity: password hashing, access and refresh tokens, API keys, and the account service that
//! ties them to the store (register, login, refresh, logout, change password), and the
//! throttle in front of every credential check.

pub mod api_keys;
pub mod jwt;
pub mod password;
mod service;
pub mod throttle;

pub use service::{AuthError, AuthService, LoginAttempt, REFRESH_TOKEN_RULE, TokenPair};

use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};

/// A random string of `[A-Za-z0-9]` from a CSPRNG (thread-local ChaCha seeded by the OS).
pub fn random_token(length: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(length)
        .map(char::from)
        .collect()
}

/// Hex SHA-256, the lookup hash of high-entropy secrets (API keys, refresh tokens).
pub fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}
