//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>): every delivery carries
//! `webhook-id` (one event to one endpoint, the same across retries), `webhook-timestamp`
//! (Unix seconds of this attempt) and `webhook-signature`: `v1,<base64 HMAC-SHA256 of
//! "{id}.{timestamp}.{body}">`, several space-separated while a rotated secret still signs
//! beside the new one. Secrets are `whsec_` + base64 of the key bytes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::InvalidInput;

/// The secret's prefix.
pub const SECRET_PREFIX: &str = "whsec_";
/// Key bytes of a generated secret.
const GENERATED_LEN: usize = 32;
/// Fewest key bytes accepted.
const MIN_LEN: usize = 24;
/// Most key bytes accepted.
const MAX_LEN: usize = 64;

/// A signing secret. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(Vec<u8>);

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(…)")
    }
}

impl SigningSecret {
    /// A fresh random secret.
    pub fn generate() -> SigningSecret {
        let bytes: [u8; GENERATED_LEN] = rand::random();
        SigningSecret(bytes.to_vec())
    }

    /// Reads `whsec_<base64>` (the prefix is optional, as in the reference libraries).
    pub fn parse(field: &'static str, text: &str) -> Result<SigningSecret, InvalidInput> {
        let encoded = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|_| InvalidInput::new(field, "is not `whsec_` followed by base64"))?;
        if !(MIN_LEN..=MAX_LEN).contains(&bytes.len()) {
            return Err(InvalidInput::new(
                field,
                format!("must hold {MIN_LEN} to {MAX_LEN} bytes"),
            ));
        }
        Ok(SigningSecret(bytes))
    }

    /// The `whsec_…` text: shown to its owner once, and sealed at rest.
    pub fn reveal(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.0))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// One `v1,<base64>` signature.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }

    /// Whether `signature` (`v1,<base64>`) is this secret's for the message, in constant time.
    pub fn verifies(&self, signature: &str, id: &str, timestamp: i64, body: &[u8]) -> bool {
        let Some(encoded) = signature.strip_prefix("v1,") else {
            return false;
        };
        let Ok(tag) = STANDARD.decode(encoded) else {
            return false;
        };
        self.mac(id, timestamp, body).verify_slice(&tag).is_ok()
    }
}

/// The `webhook-signature` header: one signature per secret, space-separated.
pub fn signature_header<'a>(
    secrets: impl IntoIterator<Item = &'a SigningSecret>,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    let mut header = String::new();
    for secret in secrets {
        if !header.is_empty() {
            header.push(' ');
        }
        header.push_str(&secret.sign(id, timestamp, body));
    }
    header
}

/// Whether any signature of a `webhook-signature` header is `secret`'s.
pub fn header_verifies(
    secret: &SigningSecret,
    header: &str,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> bool {
    header
        .split(' ')
        .any(|signature| secret.verifies(signature, id, timestamp, body))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The specification's published example: a receiver's library must accept what we send,
    /// so the delimiter, the base64 alphabet and the key decoding must all be exactly right.
    #[test]
    fn the_specifications_example_vector_reproduces() {
        let secret =
            SigningSecret::parse("secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(header_verifies(
            &secret,
            "v1,bm9wZQ== v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            body,
        ));
        assert!(!secret.verifies(
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_331,
            body,
        ));
    }

    #[test]
    fn generated_secrets_read_back_and_bad_ones_are_refused() {
        let secret = SigningSecret::generate();
        let text = secret.reveal();
        assert!(text.starts_with("whsec_"));
        assert_eq!(SigningSecret::parse("secret", &text).unwrap(), secret);
        assert!(!format!("{secret:?}").contains(&text[6..]));
        for bad in ["whsec_not base64!", "whsec_c2hvcnQ=", ""] {
            assert_eq!(
                SigningSecret::parse("secret", bad).unwrap_err().field,
                "secret"
            );
        }
    }

    #[test]
    fn during_a_rotation_both_secrets_sign() {
        let (old, new) = (SigningSecret::generate(), SigningSecret::generate());
        let header = signature_header([&new, &old], "msg_1", 1_700_000_000, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        assert!(header_verifies(
            &old,
            &header,
            "msg_1",
            1_700_000_000,
            b"{}"
        ));
        assert!(header_verifies(
            &new,
            &header,
            "msg_1",
            1_700_000_000,
            b"{}"
        ));
        assert!(!header_verifies(
            &SigningSecret::generate(),
            &header,
            "msg_1",
            1_700_000_000,
            b"{}"
        ));
    }

    /// The reference Rust library (an independent implementation) accepts our headers.
    #[test]
    fn the_reference_library_verifies_our_signatures() {
        let secret = SigningSecret::generate();
        let now = chrono::Utc::now().timestamp();
        let body = br#"{"type":"webhook.test","timestamp":"2026-12-02T00:00:00Z","data":{}}"#;
        let mut headers = http::HeaderMap::new();
        headers.insert("webhook-id", "evt_1".parse().unwrap());
        headers.insert("webhook-timestamp", now.to_string().parse().unwrap());
        headers.insert(
            "webhook-signature",
            signature_header([&SigningSecret::generate(), &secret], "evt_1", now, body)
                .parse()
                .unwrap(),
        );
        let reference = standardwebhooks::Webhook::new(&secret.reveal()).unwrap();
        reference.verify(body, &headers).unwrap();
        let stranger = standardwebhooks::Webhook::new(&SigningSecret::generate().reveal()).unwrap();
        assert!(stranger.verify(body, &headers).is_err());
    }
}
