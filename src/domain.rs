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

/// What a text field may hold besides printable characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextKind {
    /// An identifier or opaque token (ids, cursors, refresh tokens, worker message ids):
    /// printable ASCII only, no space.
    Token,
    /// One line (names, labels, search terms, idempotency keys): no control character at all,
    /// no line or paragraph separator, no bidirectional override, embedding or isolate.
    Line,
    /// Free text (message bodies, captions, descriptions): like [`TextKind::Line`], but `\n`,
    /// `\r` and `\t` are allowed and so are bidirectional controls (pasted right-to-left text
    /// carries them; they cannot break storage or logs).
    Multiline,
}

/// The one rule for every string that enters the gateway from outside: client bodies, query
/// parameters, path ids and cursors, worker callbacks and heartbeats. It bounds the length (in
/// characters) and refuses the characters the field's [`TextKind`] does not allow; NUL is
/// never allowed anywhere (PostgreSQL cannot store it in `TEXT`, and a NUL that reaches a
/// shared pipeline is a poison pill). A refusal names the field, so the client gets `400`
/// with `details.field`.
///
/// ```
/// use wa_gateway::domain::TextRule;
/// assert!(TextRule::line(100).check("name", "Ann").is_ok());
/// assert!(TextRule::line(100).check("name", "A\u{0}nn").is_err());
/// assert!(TextRule::multiline(4096).check("message", "hi\nthere").is_ok());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextRule {
    kind: TextKind,
    max_chars: usize,
    non_empty: bool,
    /// The length is counted in UTF-16 code units, as JavaScript counts it: the rule of a
    /// field a Node worker checks (an emoji outside the Basic Multilingual Plane counts 2).
    utf16: bool,
}

impl TextRule {
    /// An id the gateway issued (users, API keys, messages, workers) as it arrives in a path,
    /// a query parameter or a cursor: 1 to 128 printable ASCII characters.
    pub const ID: TextRule = TextRule::token(128).non_empty();

    /// An identifier or token of at most `max_chars` printable ASCII characters, no space.
    pub const fn token(max_chars: usize) -> Self {
        Self {
            kind: TextKind::Token,
            max_chars,
            non_empty: false,
            utf16: false,
        }
    }

    /// One line of at most `max_chars` characters.
    pub const fn line(max_chars: usize) -> Self {
        Self {
            kind: TextKind::Line,
            max_chars,
            non_empty: false,
            utf16: false,
        }
    }

    /// Free text of at most `max_chars` characters; line breaks and tabs allowed.
    pub const fn multiline(max_chars: usize) -> Self {
        Self {
            kind: TextKind::Multiline,
            max_chars,
            non_empty: false,
            utf16: false,
        }
    }

    /// The same rule, also refusing an empty (or, for text, all-blank) value.
    pub const fn non_empty(self) -> Self {
        Self {
            non_empty: true,
            ..self
        }
    }

    /// The same rule, its length counted in UTF-16 code units (JavaScript's `length`): for
    /// fields that a worker checks with its own limits.
    pub const fn utf16(self) -> Self {
        Self {
            utf16: true,
            ..self
        }
    }

    /// The longest value accepted, in characters (in UTF-16 code units if
    /// [`TextRule::counts_utf16`]).
    pub const fn max_chars(self) -> usize {
        self.max_chars
    }

    /// Whether the length is counted in UTF-16 code units rather than characters.
    pub const fn counts_utf16(self) -> bool {
        self.utf16
    }

    /// Whether an empty (or all-blank) value is refused.
    pub const fn refuses_empty(self) -> bool {
        self.non_empty
    }

    /// The rule's characters as a JSON Schema (ECMA 262) `pattern`, for the OpenAPI
    /// description: the same characters [`TextRule::check`] allows, and for a
    /// [`TextRule::non_empty`] rule at least one that is not blank. (The length is the
    /// schema's `maxLength`, in characters as here.)
    pub fn pattern(self) -> String {
        // The characters each kind refuses, as the inside of a character class.
        let refused = match self.kind {
            TextKind::Token => {
                return if self.non_empty {
                    "^[!-~]+$"
                } else {
                    "^[!-~]*$"
                }
                .to_owned();
            }
            TextKind::Line => {
                "\\u0000-\\u001F\\u007F-\\u009F\\u2028\\u2029\\u061C\\u202A-\\u202E\\u2066-\\u2069"
            }
            TextKind::Multiline => "\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F",
        };
        if self.non_empty {
            format!("^[^{refused}]*[^\\s{refused}][^{refused}]*$")
        } else {
            format!("^[^{refused}]*$")
        }
    }

    /// Checks `raw`, given for `field`; answers it unchanged when it passes.
    pub fn check<'raw>(
        self,
        field: &'static str,
        raw: &'raw str,
    ) -> Result<&'raw str, InvalidInput> {
        if let Some(bad) = raw.chars().find(|&c| !self.allows(c)) {
            return Err(InvalidInput::new(field, self.refusal(bad)));
        }
        // Cheap first: a string of at most `max_chars` bytes has at most that many characters,
        // and at most that many UTF-16 code units (no character takes more units than bytes).
        if raw.len() > self.max_chars {
            if self.utf16 && raw.encode_utf16().count() > self.max_chars {
                return Err(InvalidInput::new(
                    field,
                    format!(
                        "must be at most {} UTF-16 code units (most emoji count 2)",
                        self.max_chars
                    ),
                ));
            }
            if !self.utf16 && raw.chars().count() > self.max_chars {
                return Err(InvalidInput::new(
                    field,
                    format!("must be at most {} characters", self.max_chars),
                ));
            }
        }
        if self.non_empty && raw.trim().is_empty() {
            return Err(InvalidInput::new(field, "must not be empty"));
        }
        Ok(raw)
    }

    /// [`TextRule::check`] for an owned value.
    pub fn check_owned(self, field: &'static str, raw: String) -> Result<String, InvalidInput> {
        self.check(field, &raw)?;
        Ok(raw)
    }

    /// [`TextRule::check`] for an optional value (absent passes).
    pub fn check_optional<'raw>(
        self,
        field: &'static str,
        raw: Option<&'raw str>,
    ) -> Result<Option<&'raw str>, InvalidInput> {
        raw.map(|raw| self.check(field, raw)).transpose()
    }

    fn allows(self, c: char) -> bool {
        match self.kind {
            TextKind::Token => c.is_ascii_graphic(),
            TextKind::Line => !c.is_control() && !is_line_break(c) && !is_bidi_control(c),
            TextKind::Multiline => matches!(c, '\n' | '\r' | '\t') || !c.is_control(),
        }
    }

    fn refusal(self, bad: char) -> String {
        let what = match self.kind {
            TextKind::Token => "must be printable ASCII without spaces",
            TextKind::Line => {
                "must be one line without control, line-separator or bidirectional-override characters"
            }
            TextKind::Multiline => {
                "must not contain control characters other than \\n, \\r and \\t"
            }
        };
        format!("{what} (found U+{:04X})", u32::from(bad))
    }
}

/// Line and paragraph separators (besides the control characters `\n` and `\r`).
fn is_line_break(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}' | '\u{85}')
}

/// Bidirectional embeddings, overrides and isolates (and the Arabic letter mark): they make
/// text display differently from what it is ("Trojan source" spoofing).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Characters that print as nothing: zero-width spaces and joiners, direction marks, the soft
/// hyphen, word joiners, variation selectors, fillers, tags, the byte-order mark. Refused in
/// e-mail addresses, where they make two addresses look the same.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFFB}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        // By hand: the derive does not see `serde(rename)` through the macro and documented
        // the Rust names (`Max`, `QrRequired`), which the API refuses.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($text),+]))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}

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

impl SessionStatus {
    /// Whether a report of this status moves a session backwards (away from running):
    /// `INIT`, `DISCONNECTED`, `RECONNECTING`, `ERROR`. A stale worker's report is always one of
    /// these; `QR_REQUIRED` and `CONNECTED` come only from a worker that runs the session.
    pub fn is_setback(self) -> bool {
        !matches!(self, SessionStatus::QrRequired | SessionStatus::Connected)
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
    /// Why a `PENDING` message has not been sent yet.
    WaitingReason {
        /// The session is not connected (reconnecting, or its worker says it is not ready).
        SessionReconnecting = "SESSION_RECONNECTING",
        /// The session's worker is unreachable, failing, or the session is being moved.
        WorkerDown = "WORKER_DOWN",
        /// The worker answered `429`: its own send limit for the session.
        WorkerRateLimited = "WORKER_RATE_LIMITED",
        /// The tier's pacing between two sends of one session.
        Paced = "PACED",
        /// In line behind the session's earlier messages.
        Queued = "QUEUED",
        /// The gateway's store could not be read; delivery resumes when it can.
        StoreUnavailable = "STORE_UNAVAILABLE",
    }
}

string_enum! {
    /// The events a webhook endpoint (and the live stream) receives.
    EventType {
        MessageSent = "message.sent",
        MessageDelivered = "message.delivered",
        MessageRead = "message.read",
        MessageFailed = "message.failed",
        MessageReceived = "message.received",
        SessionStatus = "session.status",
        SessionQr = "session.qr",
        WebhookTest = "webhook.test",
        WebhookDisabled = "webhook.disabled",
    }
}

string_enum! {
    /// State of one webhook delivery.
    WebhookDeliveryStatus { Pending = "PENDING", Delivered = "DELIVERED", Failed = "FAILED", Retrying = "RETRYING" }
}

/// A normalised e-mail address (trimmed, lower-cased), the login name of a user.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// The longest address accepted (RFC 5321's path limit).
    pub const MAX_CHARS: usize = 254;

    /// The text rule of an address as typed (surrounding spaces allowed, trimmed later).
    pub const RULE: TextRule = TextRule::line(Self::MAX_CHARS + 64);

    /// Accepts `local@domain.tld` of at most 254 characters: one line (see [`TextRule`]), no
    /// whitespace, no invisible character (zero-width, direction marks, soft hyphen, …), a
    /// local part of letters, digits and `!#$%&'*+/=?^_`{|}~.-`, a domain of dot-separated
    /// labels of letters, digits and `-`.
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let checked = Self::RULE.check("email", raw)?;
        let email = checked.trim().to_lowercase();
        let invalid =
            || InvalidInput::new("email", "must be an e-mail address like name@example.com");
        if email.chars().count() > Self::MAX_CHARS
            || email
                .chars()
                .any(|c| c.is_whitespace() || is_invisible(c) || is_bidi_control(c))
        {
            return Err(invalid());
        }
        let (local, domain) = email.split_once('@').ok_or_else(invalid)?;
        let local_ok = !local.is_empty()
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local
                .chars()
                .all(|c| c.is_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c));
        let domain_ok = domain.contains('.')
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_alphanumeric() || c == '-')
            });
        if !local_ok || !domain_ok {
            return Err(invalid());
        }
        Ok(Self(email))
    }

    /// The normalised address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password that satisfies the policy: 8 to 128 characters with a letter and a digit, one
/// line (no control characters). Never printed (no `Debug` of the content).
#[derive(Clone)]
pub struct Password(String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

impl Password {
    /// The rule for a password presented to be checked (login, current password): bounded so
    /// nobody makes the gateway hash megabytes, no NUL or control character other than a tab
    /// or line break (looser than [`Password::parse`], so no older password is refused
    /// unread).
    pub const PRESENTED: TextRule = TextRule::multiline(1024);

    /// Applies the password policy to a new password.
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, InvalidInput> {
        TextRule::line(128).check(field, raw)?;
        let length = raw.chars().count();
        if length < 8 {
            return Err(InvalidInput::new(field, "must be at least 8 characters"));
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

/// A display name: 1 to 100 characters after trimming, one line (see [`TextRule::line`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    /// The rule of a name (before trimming).
    pub const RULE: TextRule = TextRule::line(100);

    /// Validates a name given for `field`.
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, InvalidInput> {
        // Characters are checked on what was sent (a trailing line break is refused, not
        // trimmed away), the length on the trimmed name.
        TextRule::line(usize::MAX).check(field, raw)?;
        let name = Self::RULE.non_empty().check(field, raw.trim())?;
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

/// A WhatsApp recipient as workers expect it: `<10–15 digits>@s.whatsapp.net`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct PhoneJid(String);

impl PhoneJid {
    /// The longest number accepted as typed (separators included).
    pub const MAX_CHARS: usize = 64;
    /// The fewest digits of a number, country code included.
    pub const MIN_DIGITS: usize = 10;
    /// The most digits of a number (E.164), country code included.
    pub const MAX_DIGITS: usize = 15;

    /// Normalises what customers type: `+62 812-3456-7890`, `6281234567890`, `081234567890`
    /// (a leading 0 is a local number: it takes `default_country_code`), or an existing JID.
    pub fn parse(
        field: &'static str,
        raw: &str,
        default_country_code: &str,
    ) -> Result<Self, InvalidInput> {
        if raw.len() > Self::MAX_CHARS {
            return Err(InvalidInput::new(
                field,
                format!("must be at most {} characters", Self::MAX_CHARS),
            ));
        }
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
        // The existing worker refuses fewer than 10 digits (WORKER_PROTOCOL.md, "What the
        // existing worker really does" 3): refused here, not after a 202.
        if !(Self::MIN_DIGITS..=Self::MAX_DIGITS).contains(&digits.len()) {
            return Err(InvalidInput::new(
                field,
                "must have 10 to 15 digits including the country code",
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
    fn text_rule_refuses_nul_and_controls_where_the_kind_does_not_allow_them() {
        let line = TextRule::line(10);
        assert_eq!(line.check("name", "Ann Lee").unwrap(), "Ann Lee");
        for bad in [
            "a\u{0}b",
            "a\nb",
            "a\tb",
            "a\u{7f}",
            "a\u{85}",
            "a\u{2028}",
            "a\u{202E}b",
        ] {
            let refused = line.check("name", bad).unwrap_err();
            assert_eq!(refused.field, "name", "{bad:?}");
        }
        assert!(
            line.check("name", "ann\u{200D}x").is_ok(),
            "joiners make emoji"
        );
        assert!(line.check("name", &"x".repeat(11)).is_err());
        assert!(
            line.check("name", &"é".repeat(10)).is_ok(),
            "characters, not bytes"
        );
        assert!(line.check("name", "").is_ok());
        assert!(line.non_empty().check("name", "  ").is_err());

        let text = TextRule::multiline(100);
        assert!(text.check("message", "one\r\ntwo\tthree \u{202B}x").is_ok());
        for bad in ["a\u{0}", "a\u{1b}[31m", "a\u{8}", "\u{9f}"] {
            assert_eq!(text.check("message", bad).unwrap_err().field, "message");
        }

        let token = TextRule::ID;
        assert!(
            token
                .check("id", "0192f0c1-8d3e-7a7b-9c1d-3f4e5a6b7c8d")
                .is_ok()
        );
        for bad in ["", "has space", "é", "a\u{0}", &"x".repeat(129)] {
            assert!(token.check("id", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn emails_with_hidden_characters_are_refused() {
        for bad in [
            "ann\u{0}@example.com",
            "ann@example.com\u{0}",
            "ann\u{1}@example.com",
            "ann\n@example.com",
            "ann@example.com\n",
            "a\u{200B}nn@example.com",
            "ann@exa\u{200D}mple.com",
            "\u{202E}moc.elpmaxe@nna",
            "ann\u{FEFF}@example.com",
            "ann@example..com",
            "ann@-example.com",
            ".ann@example.com",
            "ann\"@example.com",
            "ann@exam_ple.com",
        ] {
            let refused = Email::parse(bad).unwrap_err();
            assert_eq!(refused.field, "email", "{bad:?}");
        }
        assert!(Email::parse("ann.lee+tag@mail.example.com").is_ok());
        assert!(Email::parse("josé@example.com").is_ok());
    }

    #[test]
    fn names_and_passwords_follow_the_text_rule() {
        assert_eq!(
            DisplayName::parse("name", "  Ann  ").unwrap().as_str(),
            "Ann"
        );
        assert!(DisplayName::parse("name", "Ann\n").is_err());
        assert!(DisplayName::parse("name", "A\u{0}nn").is_err());
        assert!(DisplayName::parse("name", "   ").is_err());
        assert!(DisplayName::parse("name", &"x".repeat(101)).is_err());
        assert!(DisplayName::parse("name", &format!(" {} ", "x".repeat(100))).is_ok());
        assert!(Password::parse("password", "secret123\u{0}").is_err());
        assert!(Password::PRESENTED.check("password", "old\tpass1").is_ok());
        assert!(Password::PRESENTED.check("password", "pass\u{0}1").is_err());
        assert!(
            Password::PRESENTED
                .check("password", &"x".repeat(1025))
                .is_err()
        );
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
