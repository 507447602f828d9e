//! Encryption at rest of the few secrets the gateway must read back in clear: webhook signing
//! secrets (it signs with them) and, later, the dashboard's per-session keys. Everything else
//! secret (passwords, API keys, refresh tokens) is hashed and never read back.
//!
//! XChaCha20-Poly1305 with a random 192-bit nonce per value (no nonce bookkeeping), the row's
//! identity as associated data (a sealed value copied into another row does not open there),
//! and a key derived from `DATA_ENCRYPTION_KEY`. A sealed value names its key by a short id, so
//! the key can be rotated: the new key seals, the previous ones
//! (`DATA_ENCRYPTION_KEYS_PREVIOUS`) still open what they sealed.
//!
//! Sealed form: `k1.<key id, 8 hex>.<base64url of nonce ‖ ciphertext ‖ tag>`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

/// Domain separation of the key derivation.
const KEY_LABEL: &[u8] = b"wa-gateway data encryption key v1\0";
const FORMAT: &str = "k1";
const NONCE_LEN: usize = 24;

/// A value that cannot be opened: not sealed by this format, sealed with a key this process
/// does not have, or altered (or moved to another row).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a sealed value cannot be opened ({0})")]
pub struct Unopenable(pub(crate) &'static str);

/// One key: its id and cipher.
struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
}

impl Key {
    fn derive(secret: &str) -> Key {
        let material = Sha256::new()
            .chain_update(KEY_LABEL)
            .chain_update(secret.as_bytes())
            .finalize();
        let id = hex::encode(&Sha256::digest(material)[..4]);
        Key {
            id,
            cipher: XChaCha20Poly1305::new(&material),
        }
    }
}

/// Seals and opens secrets stored at rest.
pub struct SecretBox {
    /// The sealing key first, then the previous ones (open only).
    keys: Vec<Key>,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("SecretBox").field("key_ids", &ids).finish()
    }
}

impl SecretBox {
    /// A box sealing with `current` and opening with it and each of `previous`.
    pub fn new<'a>(current: &str, previous: impl IntoIterator<Item = &'a str>) -> SecretBox {
        let mut keys = vec![Key::derive(current)];
        keys.extend(previous.into_iter().map(Key::derive));
        SecretBox { keys }
    }

    /// Seals `plain` for the row `context` (e.g. `webhook:<id>`).
    pub fn seal(&self, plain: &[u8], context: &str) -> String {
        let key = &self.keys[0];
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let sealed = key
            .cipher
            .encrypt(
                &XNonce::from(nonce_bytes),
                Payload {
                    msg: plain,
                    aad: context.as_bytes(),
                },
            )
            // Encryption fails only for inputs beyond 256 GiB.
            .unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&sealed);
        format!("{FORMAT}.{}.{}", key.id, URL_SAFE_NO_PAD.encode(out))
    }

    /// Opens what [`SecretBox::seal`] sealed for the same `context`.
    pub fn open(&self, sealed: &str, context: &str) -> Result<Vec<u8>, Unopenable> {
        let mut parts = sealed.splitn(3, '.');
        let (Some(FORMAT), Some(key_id), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(Unopenable("not a sealed value"));
        };
        let key = self
            .keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or(Unopenable("sealed with a key this process does not have"))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| Unopenable("not a sealed value"))?;
        if bytes.len() < NONCE_LEN {
            return Err(Unopenable("not a sealed value"));
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| Unopenable("not a sealed value"))?;
        key.cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| Unopenable("altered, or sealed for another row"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_for_their_row_and_with_a_known_key() {
        let vault = SecretBox::new("current-key-material-of-32-chars!", []);
        let sealed = vault.seal(b"whsec_abc", "webhook:1");
        assert!(sealed.starts_with("k1."));
        assert!(!sealed.contains("whsec_abc"));
        assert_eq!(vault.open(&sealed, "webhook:1").unwrap(), b"whsec_abc");
        // Same plaintext, fresh nonce: never the same sealed text.
        assert_ne!(vault.seal(b"whsec_abc", "webhook:1"), sealed);
        assert!(vault.open(&sealed, "webhook:2").is_err());
        let mut altered = sealed.clone();
        let last = altered.pop().unwrap();
        altered.push(if last == 'A' { 'B' } else { 'A' });
        assert!(vault.open(&altered, "webhook:1").is_err());
        assert!(vault.open("plain text", "webhook:1").is_err());
        let stranger = SecretBox::new("another-key-material-of-32-chars!", []);
        assert!(stranger.open(&sealed, "webhook:1").is_err());
    }

    #[test]
    fn a_rotated_key_still_opens_what_the_previous_one_sealed() {
        let old = SecretBox::new("old-key-material-of-at-least-32-chars", []);
        let sealed = old.seal(b"s3cret", "session:s1");
        let rotated = SecretBox::new(
            "new-key-material-of-at-least-32-chars",
            ["old-key-material-of-at-least-32-chars"],
        );
        assert_eq!(rotated.open(&sealed, "session:s1").unwrap(), b"s3cret");
        let resealed = rotated.seal(b"s3cret", "session:s1");
        assert!(old.open(&resealed, "session:s1").is_err());
        assert!(!format!("{rotated:?}").contains("key-material"));
    }
}
