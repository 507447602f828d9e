//! Domain newtypes: identifiers and validated inputs, parsed once at the edge
//! ("parse, don't validate"). Everything past the HTTP layer takes these, never raw strings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a client-supplied value was refused; becomes a `400 VALIDATION_ERROR` naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidInput {
    /// The request field at fault (camelCase, as the client wrote it).
    pub field: &'static str,
    /// What is wrong, in words a client developer understands.
    pub problem: String,
}

impl InvalidInput {
    /// A refusal of `field` for `problem`.
    pub fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored and wire spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                match text {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "`{other}` is not one of {}",
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

string_enum! {
    /// What a user may do: administrators manage every tenant and the worker fleet.
    Role { User = "USER", Administrator = "ADMINISTRATOR" }
}

string_enum! {
    /// A user's plan; decides session count and hourly quotas.
    Tier { Basic = "BASIC", Pro = "PRO", Max = "MAX" }
}

string_enum! {
    /// Lifecycle of a WhatsApp session as workers report it.
    SessionStatus {
        Init = "INIT",
        QrRequired = "QR_REQUIRED",
        Connected = "CONNECTED",
        Disconnected = "DISCONNECTED",
        Reconnecting = "RECONNECTING",
        Error = "ERROR",
    }
}

string_enum! {
    /// Whether a worker takes sessions.
    WorkerStatus { Online = "ONLINE", Offline = "OFFLINE", Maintenance = "MAINTENANCE" }
}

string_enum! {
    /// Where a message went.
    MessageDirection { Inbound = "INBOUND", Outbound = "OUTBOUND" }
}

string_enum! {
    /// Delivery state of a message, in the order it normally advances.
    MessageStatus { Pending = "PENDING", Sent = "SENT", Delivered = "DELIVERED", Read = "READ", Failed = "FAILED" }
}

string_enum! {
    /// State of one webhook delivery.
    WebhookDeliveryStatus { Pending = "PENDING", Delivered = "DELIVERED", Failed = "FAILED", Retrying = "RETRYING" }
}

/// A normalised e-mail address (trimmed, lower-cased), the login name of a user.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// Accepts `local@domain.tld` of at most 254 characters.
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let email = raw.trim().to_lowercase();
        let invalid =
            || InvalidInput::new("email", "must be an e-mail address like name@example.com");
        if email.len() > 254 || email.chars().any(char::is_whitespace) {
            return Err(invalid());
        }
        let (local, domain) = email.split_once('@').ok_or_else(invalid)?;
        if local.is_empty()
            || domain.contains('@')
            || !domain.contains('.')
            || domain.starts_with('.')
            || domain.ends_with('.')
            || domain.contains("..")
        {
            return Err(invalid());
        }
        Ok(Self(email))
    }

    /// The normalised address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password that satisfies the policy: 8 to 128 characters with a letter and a digit.
/// Never printed (no `Debug` of the content).
#[derive(Clone)]
pub struct Password(String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

impl Password {
    /// Applies the password policy to a new password.
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, InvalidInput> {
        let length = raw.chars().count();
        if length < 8 {
            return Err(InvalidInput::new(field, "must be at least 8 characters"));
        }
        if length > 128 {
            return Err(InvalidInput::new(field, "must be at most 128 characters"));
        }
        if !raw.chars().any(char::is_alphabetic) || !raw.chars().any(|c| c.is_ascii_digit()) {
            return Err(InvalidInput::new(
                field,
                "must contain at least one letter and one digit",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The password itself, for hashing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A display name: 1 to 100 characters after trimming, no control characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    /// Validates a name given for `field`.
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, InvalidInput> {
        let name = raw.trim();
        if name.is_empty() {
            return Err(InvalidInput::new(field, "must not be empty"));
        }
        if name.chars().count() > 100 {
            return Err(InvalidInput::new(field, "must be at most 100 characters"));
        }
        if name.chars().any(char::is_control) {
            return Err(InvalidInput::new(
                field,
                "must not contain control characters",
            ));
        }
        Ok(Self(name.to_owned()))
    }

    /// The trimmed name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Takes the string out.
    pub fn into_inner(self) -> String {
        self.0
    }
}

/// A WhatsApp session id as the worker protocol requires: 3 to 50 of `[A-Za-z0-9_-]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct SessionId(String);

impl SessionId {
    /// Validates a session id given for `field`.
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, InvalidInput> {
        let valid_length = (3..=50).contains(&raw.len());
        let valid_chars = raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_length || !valid_chars {
            return Err(InvalidInput::new(
                field,
                "must be 3 to 50 characters of letters, digits, '_' or '-'",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A WhatsApp recipient as workers expect it: `<8–15 digits>@s.whatsapp.net`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct PhoneJid(String);

impl PhoneJid {
    /// Normalises what customers type: `+62 812-3456-7890`, `6281234567890`, `081234567890`
    /// (a leading 0 is a local number: it takes `default_country_code`), or an existing JID.
    pub fn parse(
        field: &'static str,
        raw: &str,
        default_country_code: &str,
    ) -> Result<Self, InvalidInput> {
        let raw = raw.trim();
        let number = raw.strip_suffix("@s.whatsapp.net").unwrap_or(raw);
        let international = number.starts_with('+') || number.starts_with("00");
        if number
            .chars()
            .any(|c| !(c.is_ascii_digit() || matches!(c, '+' | ' ' | '-' | '(' | ')' | '.')))
        {
            return Err(InvalidInput::new(
                field,
                "must be a phone number like +62 812-3456-7890",
            ));
        }
        let mut digits: String = number.chars().filter(char::is_ascii_digit).collect();
        if international && number.starts_with("00") {
            digits.drain(..2);
        } else if !international && digits.starts_with('0') {
            digits = format!("{default_country_code}{}", digits.trim_start_matches('0'));
        }
        if !(8..=15).contains(&digits.len()) {
            return Err(InvalidInput::new(
                field,
                "must have 8 to 15 digits including the country code",
            ));
        }
        Ok(Self(format!("{digits}@s.whatsapp.net")))
    }

    /// The JID.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Milliseconds since the Unix epoch: the one time representation of the store.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// RFC 3339 (UTC, milliseconds) for JSON answers.
pub fn ms_to_rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Parses an RFC 3339 instant from a client into epoch milliseconds.
pub fn rfc3339_to_ms(field: &'static str, raw: &str) -> Result<i64, InvalidInput> {
    chrono::DateTime::parse_from_rfc3339(raw)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            InvalidInput::new(
                field,
                "must be an RFC 3339 timestamp like 2030-01-31T12:00:00Z",
            )
        })
}

/// A fresh, time-ordered identifier for rows the gateway creates.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn email_is_normalised_and_checked() {
        assert_eq!(
            Email::parse("  Ann@Example.COM ").unwrap().as_str(),
            "ann@example.com"
        );
        for bad in [
            "",
            "ann",
            "ann@",
            "@example.com",
            "ann@example",
            "a b@example.com",
            "a@@b.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn password_policy() {
        assert!(Password::parse("password", "short1").is_err());
        assert!(Password::parse("password", "allletters").is_err());
        assert!(Password::parse("password", "12345678").is_err());
        assert!(Password::parse("password", "correct horse 1").is_ok());
        assert_eq!(
            format!("{:?}", Password::parse("p", "secret123").unwrap()),
            "Password(***)"
        );
    }

    #[test]
    fn session_ids_follow_the_protocol() {
        assert!(SessionId::parse("sessionId", "ab").is_err());
        assert!(SessionId::parse("sessionId", "has space").is_err());
        assert!(SessionId::parse("sessionId", &"x".repeat(51)).is_err());
        assert!(SessionId::parse("sessionId", "sales-team_01").is_ok());
    }

    #[test]
    fn phone_numbers_are_normalised() {
        let jid = |raw: &str| PhoneJid::parse("to", raw, "62").map(|j| j.as_str().to_owned());
        assert_eq!(
            jid("+62 812-3456-7890").unwrap(),
            "6281234567890@s.whatsapp.net"
        );
        assert_eq!(
            jid("6281234567890").unwrap(),
            "6281234567890@s.whatsapp.net"
        );
        assert_eq!(jid("081234567890").unwrap(), "6281234567890@s.whatsapp.net");
        assert_eq!(
            jid("0062 812 3456 7890").unwrap(),
            "6281234567890@s.whatsapp.net"
        );
        assert_eq!(
            jid("6281234567890@s.whatsapp.net").unwrap(),
            "6281234567890@s.whatsapp.net"
        );
        for bad in [
            "",
            "1234567",
            "+1234567890123456",
            "call me",
            "62812x4567890",
            "123@g.us",
        ] {
            assert!(jid(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn enums_round_trip() {
        for tier in Tier::ALL {
            assert_eq!(tier.as_str().parse::<Tier>().unwrap(), *tier);
        }
        assert!("GOLD".parse::<Tier>().is_err());
        assert_eq!(
            serde_json::to_string(&Role::Administrator).unwrap(),
            "\"ADMINISTRATOR\""
        );
    }
}
