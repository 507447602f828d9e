//! Strict validation of send and message-management bodies, the way the real worker checks them.
//!
//! The real worker rejects any field it does not know, at the top level or nested, so the
//! gateway must send exactly the documented shape (its own message id travels in the
//! `X-Message-Id` header for that reason). Optional fields must be absent rather than `null`.
//! Fields that belong to another message type count as unknown: a `text` send with a
//! `caption` is refused.
//!
//! [`Rules::RealWorker`] adds the existing worker's value rules (`Quirks::strict_validation`):
//! `to` with 10 to 15 digits, lengths counted in UTF-16 code units as JavaScript counts them
//! (text 4096, `location.name` 100, `location.address` 200, `contact.name` and
//! `contact.organization` 100, `link.title` 100, `link.description` 300), an e-mail address in
//! `contact.email`, and a phone number (`^(\+?62|62|0)?8\d{8,11}$`) or a JID in `contact.phone`.

use std::ops::RangeInclusive;

use serde_json::{Map, Value};

/// The message types of `POST /api/{sessionId}/send`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MessageKind {
    Text,
    Image,
    Video,
    Document,
    Audio,
    Location,
    Contact,
    Link,
    Poll,
    Seen,
    TypingStart,
    TypingStop,
}

impl MessageKind {
    fn parse(raw: &str) -> Option<MessageKind> {
        Some(match raw {
            "text" => MessageKind::Text,
            "image" => MessageKind::Image,
            "video" => MessageKind::Video,
            "document" => MessageKind::Document,
            "audio" => MessageKind::Audio,
            "location" => MessageKind::Location,
            "contact" => MessageKind::Contact,
            "link" => MessageKind::Link,
            "poll" => MessageKind::Poll,
            "seen" => MessageKind::Seen,
            "typing_start" => MessageKind::TypingStart,
            "typing_stop" => MessageKind::TypingStop,
            _ => return None,
        })
    }

    /// The wire spelling.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            MessageKind::Text => "text",
            MessageKind::Image => "image",
            MessageKind::Video => "video",
            MessageKind::Document => "document",
            MessageKind::Audio => "audio",
            MessageKind::Location => "location",
            MessageKind::Contact => "contact",
            MessageKind::Link => "link",
            MessageKind::Poll => "poll",
            MessageKind::Seen => "seen",
            MessageKind::TypingStart => "typing_start",
            MessageKind::TypingStop => "typing_stop",
        }
    }

    /// Whether WhatsApp sends delivery and read receipts for it: real messages do, presence
    /// updates and read markers do not.
    pub(crate) fn has_receipts(self) -> bool {
        !matches!(
            self,
            MessageKind::Seen | MessageKind::TypingStart | MessageKind::TypingStop
        )
    }

    /// The fields this type adds to `to`, `type` and `humanSimulation`.
    fn own_fields(self) -> &'static [&'static str] {
        match self {
            MessageKind::Text => &["message"],
            MessageKind::Image | MessageKind::Video => &["mediaUrl", "caption"],
            MessageKind::Document => &["mediaUrl", "filename", "caption"],
            MessageKind::Audio => &["mediaUrl"],
            MessageKind::Location => &["location"],
            MessageKind::Contact => &["contact"],
            MessageKind::Link => &["link"],
            MessageKind::Poll => &["poll"],
            MessageKind::Seen => &["messageId"],
            MessageKind::TypingStart | MessageKind::TypingStop => &[],
        }
    }
}

/// What a valid send body says, for the answer and the receipts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ValidatedSend {
    pub(crate) kind: MessageKind,
    pub(crate) to: String,
}

/// A body the worker refuses, with the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct ValidationError {
    /// Dotted path of the field (`location.latitude`), or empty for the body itself.
    pub(crate) field: String,
    pub(crate) message: String,
}

impl ValidationError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError {
            field: field.into(),
            message: message.into(),
        }
    }
}

type Checked<T> = Result<T, ValidationError>;

/// Which value rules a send body must also pass, beyond its shape and types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rules {
    /// The existing worker's: digit counts, UTF-16 lengths, e-mail and phone formats.
    RealWorker,
    /// Shape and types only, `to` with 8 to 15 digits (the ideal worker).
    Lenient,
}

/// The longest `text` message the existing worker accepts, in UTF-16 code units.
const MAX_TEXT_UTF16: usize = 4096;

/// Validates a `POST /api/{sessionId}/send` body.
pub(crate) fn validate_send(body: &Value, rules: Rules) -> Checked<ValidatedSend> {
    let object = Fields::root(body)?;
    let kind_raw = object.required_str("type")?;
    let kind = MessageKind::parse(kind_raw).ok_or_else(|| {
        ValidationError::new(
            "type",
            format!("\"type\" must be one of text, image, video, document, audio, location, contact, link, poll, seen, typing_start, typing_stop (got \"{kind_raw}\")"),
        )
    })?;
    let mut allowed = vec!["to", "type", "humanSimulation"];
    allowed.extend_from_slice(kind.own_fields());
    object.only(&allowed)?;

    let strict = rules == Rules::RealWorker;
    // A length limit that only the existing worker applies.
    let max = |limit: usize| strict.then_some(limit);
    let to = object.required_str("to")?;
    let to_digits = if strict { 10..=15 } else { 8..=15 };
    if !is_user_jid(to, to_digits.clone()) {
        return Err(ValidationError::new(
            "to",
            format!(
                "\"to\" must be <{} to {} digits>@s.whatsapp.net",
                to_digits.start(),
                to_digits.end()
            ),
        ));
    }
    object.optional_bool("humanSimulation")?;

    match kind {
        MessageKind::Text => {
            object.required_text("message", max(MAX_TEXT_UTF16))?;
        }
        MessageKind::Image | MessageKind::Video => {
            object.required_str("mediaUrl")?;
            object.optional_text("caption", None)?;
        }
        MessageKind::Document => {
            object.required_str("mediaUrl")?;
            object.required_str("filename")?;
            object.optional_text("caption", None)?;
        }
        MessageKind::Audio => {
            object.required_str("mediaUrl")?;
        }
        MessageKind::Location => {
            let location = object.required_object("location")?;
            location.only(&["latitude", "longitude", "name", "address"])?;
            location.required_number_in("latitude", -90.0, 90.0)?;
            location.required_number_in("longitude", -180.0, 180.0)?;
            location.optional_text("name", max(100))?;
            location.optional_text("address", max(200))?;
        }
        MessageKind::Contact => {
            let contact = object.required_object("contact")?;
            contact.only(&["name", "phone", "email", "organization"])?;
            contact.required_text("name", max(100))?;
            let phone = contact.required_str("phone")?;
            if strict && !is_contact_phone(phone) {
                return Err(contact.error(
                    "phone",
                    "must be a phone number like 081234567890, +6281234567890 or 6281234567890@s.whatsapp.net",
                ));
            }
            let email = contact.optional_text("email", None)?;
            if strict && email.is_some_and(|email| !is_email(email)) {
                return Err(contact.error("email", "must be a valid email"));
            }
            contact.optional_text("organization", max(100))?;
        }
        MessageKind::Link => {
            let link = object.required_object("link")?;
            link.only(&["url", "title", "description", "thumbnail"])?;
            link.required_str("url")?;
            link.optional_text("title", max(100))?;
            link.optional_text("description", max(300))?;
            link.optional_text("thumbnail", None)?;
        }
        MessageKind::Poll => {
            let poll = object.required_object("poll")?;
            poll.only(&["question", "options", "multipleAnswers"])?;
            poll.required_str("question")?;
            poll.required_string_list("options", 2, 12)?;
            poll.optional_bool("multipleAnswers")?;
        }
        MessageKind::Seen => {
            object.required_str("messageId")?;
        }
        MessageKind::TypingStart | MessageKind::TypingStop => {}
    }
    Ok(ValidatedSend {
        kind,
        to: to.to_owned(),
    })
}

/// The actions of `POST /api/message/{sessionId}/manage`.
const MANAGE_ACTIONS: &[&str] = &[
    "delete", "unsend", "star", "unstar", "edit", "reaction", "read",
];

/// What a valid manage body says, for the answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ValidatedManage {
    pub(crate) action: String,
    pub(crate) message_id: String,
}

/// Validates a `POST /api/message/{sessionId}/manage` body.
pub(crate) fn validate_manage(body: &Value) -> Checked<ValidatedManage> {
    let object = Fields::root(body)?;
    object.only(&[
        "action",
        "messageId",
        "phone",
        "forEveryone",
        "emoji",
        "newText",
    ])?;
    let action = object.required_str("action")?;
    if !MANAGE_ACTIONS.contains(&action) {
        return Err(ValidationError::new(
            "action",
            format!("\"action\" must be one of {}", MANAGE_ACTIONS.join(", ")),
        ));
    }
    let message_id = object.required_str("messageId")?;
    object.required_str("phone")?;
    object.optional_bool("forEveryone")?;
    match action {
        "edit" => {
            object.required_str("newText")?;
        }
        // An empty emoji removes a reaction, so it only has to be a string.
        "reaction" => match object.get("emoji") {
            Some(Value::String(_)) => {}
            _ => {
                return Err(ValidationError::new(
                    "emoji",
                    "\"emoji\" is required for a reaction and must be a string",
                ));
            }
        },
        _ => {}
    }
    object.optional_str("emoji")?;
    object.optional_str("newText")?;
    Ok(ValidatedManage {
        action: action.to_owned(),
        message_id: message_id.to_owned(),
    })
}

/// `<digits>@s.whatsapp.net` with a digit count in `digits`.
fn is_user_jid(to: &str, digits: RangeInclusive<usize>) -> bool {
    to.strip_suffix("@s.whatsapp.net")
        .is_some_and(|number| digits.contains(&number.len()) && is_digits(number))
}

fn is_digits(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_digit())
}

/// The existing worker's contact phone rule: `^(\+?62|62|0)?8\d{8,11}$` (an Indonesian mobile
/// number, with or without its prefix) or a JID of 10 to 15 digits.
fn is_contact_phone(phone: &str) -> bool {
    let mobile = |rest: &str| {
        rest.strip_prefix('8')
            .is_some_and(|tail| (8..=11).contains(&tail.len()) && is_digits(tail))
    };
    let as_mobile = ["+62", "62", "0", ""]
        .iter()
        .any(|prefix| phone.strip_prefix(prefix).is_some_and(mobile));
    as_mobile || is_user_jid(phone, 10..=15)
}

/// An e-mail address as a validator sees one: `local@domain.tld`, no spaces, a dotted domain
/// of letters, digits and hyphens with an alphabetic top-level label of at least 2 letters.
fn is_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c));
    let domain_ok = domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        && domain
            .rsplit_once('.')
            .is_some_and(|(_, tld)| tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic()));
    local_ok && domain_ok
}

/// The length JavaScript gives a string (UTF-16 code units): an emoji outside the Basic
/// Multilingual Plane counts 2.
fn utf16_len(text: &str) -> usize {
    text.encode_utf16().count()
}

/// A JSON object being checked, with the dotted path that leads to it for error messages.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    prefix: String,
}

impl<'a> Fields<'a> {
    fn root(body: &'a Value) -> Checked<Fields<'a>> {
        match body {
            Value::Object(map) => Ok(Fields {
                map,
                prefix: String::new(),
            }),
            _ => Err(ValidationError::new("", "the body must be a JSON object")),
        }
    }

    fn path(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key)
    }

    /// Refuses every key not in `allowed`.
    fn only(&self, allowed: &[&str]) -> Checked<()> {
        match self.map.keys().find(|key| !allowed.contains(&key.as_str())) {
            Some(unknown) => Err(ValidationError::new(
                self.path(unknown),
                format!("\"{}\" is not allowed", self.path(unknown)),
            )),
            None => Ok(()),
        }
    }

    fn required_str(&self, key: &str) -> Checked<&'a str> {
        match self.get(key) {
            Some(Value::String(text)) if !text.trim().is_empty() => Ok(text),
            Some(Value::String(_)) => Err(self.error(key, "is not allowed to be empty")),
            Some(_) => Err(self.error(key, "must be a string")),
            None => Err(self.error(key, "is required")),
        }
    }

    fn optional_str(&self, key: &str) -> Checked<()> {
        self.optional_text(key, None).map(drop)
    }

    /// A required, non-blank string of at most `max` UTF-16 code units when `max` is given.
    fn required_text(&self, key: &str, max: Option<usize>) -> Checked<&'a str> {
        let text = self.required_str(key)?;
        self.within(key, text, max)?;
        Ok(text)
    }

    /// An optional string of at most `max` UTF-16 code units when `max` is given.
    fn optional_text(&self, key: &str, max: Option<usize>) -> Checked<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(text)) => {
                self.within(key, text, max)?;
                Ok(Some(text))
            }
            Some(_) => Err(self.error(key, "must be a string")),
        }
    }

    fn within(&self, key: &str, text: &str, max: Option<usize>) -> Checked<()> {
        match max {
            // A UTF-8 string never has more UTF-16 code units than bytes: most texts need no
            // counting.
            Some(max) if text.len() > max && utf16_len(text) > max => Err(self.error(
                key,
                &format!("length must be less than or equal to {max} characters long"),
            )),
            _ => Ok(()),
        }
    }

    fn optional_bool(&self, key: &str) -> Checked<()> {
        match self.get(key) {
            None | Some(Value::Bool(_)) => Ok(()),
            Some(_) => Err(self.error(key, "must be a boolean")),
        }
    }

    fn required_number_in(&self, key: &str, min: f64, max: f64) -> Checked<()> {
        match self.get(key).map(|value| (value, value.as_f64())) {
            Some((Value::Number(_), Some(number))) if (min..=max).contains(&number) => Ok(()),
            Some((Value::Number(_), _)) => {
                Err(self.error(key, &format!("must be between {min} and {max}")))
            }
            Some(_) => Err(self.error(key, "must be a number")),
            None => Err(self.error(key, "is required")),
        }
    }

    fn required_object(&self, key: &str) -> Checked<Fields<'a>> {
        match self.get(key) {
            Some(Value::Object(map)) => Ok(Fields {
                map,
                prefix: format!("{}.", self.path(key)),
            }),
            Some(_) => Err(self.error(key, "must be an object")),
            None => Err(self.error(key, "is required")),
        }
    }

    fn required_string_list(&self, key: &str, min: usize, max: usize) -> Checked<()> {
        let Some(value) = self.get(key) else {
            return Err(self.error(key, "is required"));
        };
        let Value::Array(items) = value else {
            return Err(self.error(key, "must be an array"));
        };
        if !(min..=max).contains(&items.len()) {
            return Err(self.error(key, &format!("must hold {min} to {max} items")));
        }
        let all_text = items
            .iter()
            .all(|item| item.as_str().is_some_and(|text| !text.trim().is_empty()));
        if all_text {
            Ok(())
        } else {
            Err(self.error(key, "must hold non-empty strings only"))
        }
    }

    fn error(&self, key: &str, problem: &str) -> ValidationError {
        let path = self.path(key);
        ValidationError::new(path.clone(), format!("\"{path}\" {problem}"))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const TO: &str = "6281234567890@s.whatsapp.net";

    const BOTH: [Rules; 2] = [Rules::RealWorker, Rules::Lenient];

    /// The field of the refusal, the same under both rule sets.
    fn refused_field(body: Value) -> String {
        let [strict, lenient] = BOTH.map(|rules| refused_under(rules, &body).field);
        assert_eq!(strict, lenient, "{body}");
        strict
    }

    fn refused_under(rules: Rules, body: &Value) -> ValidationError {
        match validate_send(body, rules) {
            Err(error) => error,
            Ok(ok) => panic!("accepted under {rules:?}: {body}: {ok:?}"),
        }
    }

    fn accepted_under(rules: Rules, body: &Value) {
        if let Err(error) = validate_send(body, rules) {
            panic!("refused under {rules:?}: {body}: {error:?}");
        }
    }

    /// Accepted by the ideal worker, refused by the existing one, for `field`; returns the
    /// message.
    fn only_the_real_worker_refuses(body: Value, field: &str) -> String {
        accepted_under(Rules::Lenient, &body);
        let refused = refused_under(Rules::RealWorker, &body);
        assert_eq!(refused.field, field, "{body}");
        refused.message
    }

    fn text(chars: &str, count: usize) -> String {
        chars.repeat(count)
    }

    #[test]
    fn accepts_every_documented_shape() {
        let bodies = [
            json!({"to": TO, "type": "text", "message": "hi", "humanSimulation": true}),
            json!({"to": TO, "type": "image", "mediaUrl": "https://x/y.png", "caption": "c"}),
            json!({"to": TO, "type": "video", "mediaUrl": "https://x/y.mp4"}),
            json!({"to": TO, "type": "document", "mediaUrl": "https://x/y.pdf", "filename": "y.pdf"}),
            json!({"to": TO, "type": "audio", "mediaUrl": "https://x/y.ogg"}),
            json!({"to": TO, "type": "location", "location": {"latitude": -6.2, "longitude": 106.8, "name": "n", "address": "a"}}),
            json!({"to": TO, "type": "contact", "contact": {"name": "A", "phone": "+6281234567890", "email": "a@b.co", "organization": "o"}}),
            json!({"to": TO, "type": "link", "link": {"url": "https://x", "title": "t", "description": "d", "thumbnail": "https://x/t.png"}}),
            json!({"to": TO, "type": "poll", "poll": {"question": "q", "options": ["a", "b"], "multipleAnswers": false}}),
            json!({"to": TO, "type": "seen", "messageId": "3EB0AA"}),
            json!({"to": TO, "type": "typing_start"}),
            json!({"to": TO, "type": "typing_stop"}),
        ];
        for rules in BOTH {
            for body in &bodies {
                let validated =
                    validate_send(body, rules).unwrap_or_else(|e| panic!("{rules:?} {body}: {e}"));
                assert_eq!(validated.to, TO);
                assert_eq!(validated.kind.as_str(), body["type"]);
            }
        }
    }

    #[test]
    fn refuses_unknown_fields_at_any_depth() {
        assert_eq!(
            refused_field(json!({"to": TO, "type": "text", "message": "hi", "messageId": "g-1"})),
            "messageId"
        );
        assert_eq!(
            refused_field(json!({"to": TO, "type": "text", "message": "hi", "caption": "c"})),
            "caption"
        );
        assert_eq!(
            refused_field(
                json!({"to": TO, "type": "location", "location": {"latitude": 1, "longitude": 2, "zoom": 3}})
            ),
            "location.zoom"
        );
        assert_eq!(
            refused_field(
                json!({"to": TO, "type": "poll", "poll": {"question": "q", "options": ["a", "b"], "extra": 1}})
            ),
            "poll.extra"
        );
    }

    #[test]
    fn refuses_bad_values() {
        for to in [
            "6281234567890",
            "+6281234567890@s.whatsapp.net",
            "1234567@s.whatsapp.net",
            "1234567890123456@s.whatsapp.net",
            "6281234567890@g.us",
        ] {
            assert_eq!(
                refused_field(json!({"to": to, "type": "text", "message": "hi"})),
                "to"
            );
        }
        assert_eq!(refused_field(json!({"to": TO, "type": "sticker"})), "type");
        assert_eq!(
            refused_field(json!({"to": TO, "type": "text", "message": ""})),
            "message"
        );
        assert_eq!(
            refused_field(
                json!({"to": TO, "type": "text", "message": "hi", "humanSimulation": "yes"})
            ),
            "humanSimulation"
        );
        assert_eq!(
            refused_field(json!({"to": TO, "type": "image", "mediaUrl": "u", "caption": null})),
            "caption"
        );
        assert_eq!(
            refused_field(json!({"to": TO, "type": "document", "mediaUrl": "u"})),
            "filename"
        );
        assert_eq!(
            refused_field(
                json!({"to": TO, "type": "location", "location": {"latitude": 91, "longitude": 0}})
            ),
            "location.latitude"
        );
        assert_eq!(
            refused_field(
                json!({"to": TO, "type": "poll", "poll": {"question": "q", "options": ["a"]}})
            ),
            "poll.options"
        );
        let thirteen: Vec<String> = (0..13).map(|i| i.to_string()).collect();
        assert_eq!(
            refused_field(
                json!({"to": TO, "type": "poll", "poll": {"question": "q", "options": thirteen}})
            ),
            "poll.options"
        );
        assert_eq!(refused_field(json!(["not", "an", "object"])), "");
    }

    #[test]
    fn manage_checks_action_and_its_fields() {
        let ok = validate_manage(
            &json!({"action": "reaction", "messageId": "m", "phone": "628", "emoji": ""}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok.action, "reaction");
        assert_eq!(ok.message_id, "m");
        let refused = |body: Value| validate_manage(&body).err().map(|e| e.field);
        assert_eq!(
            refused(json!({"action": "pin", "messageId": "m", "phone": "628"})),
            Some("action".to_owned())
        );
        assert_eq!(
            refused(json!({"action": "edit", "messageId": "m", "phone": "628"})),
            Some("newText".to_owned())
        );
        assert_eq!(
            refused(json!({"action": "star", "messageId": "m", "phone": "628", "x": 1})),
            Some("x".to_owned())
        );
    }

    #[test]
    fn the_real_worker_wants_10_to_15_digits_in_to() {
        let send = |to: &str| json!({"to": to, "type": "text", "message": "hi"});
        for short in ["12345678@s.whatsapp.net", "123456789@s.whatsapp.net"] {
            let message = only_the_real_worker_refuses(send(short), "to");
            assert!(message.contains("10 to 15 digits"), "{message}");
        }
        for fine in [
            "1234567890@s.whatsapp.net",
            "123456789012345@s.whatsapp.net",
        ] {
            accepted_under(Rules::RealWorker, &send(fine));
        }
        refused_under(Rules::RealWorker, &send("1234567890123456@s.whatsapp.net"));
    }

    #[test]
    fn text_length_is_counted_in_utf16_code_units() {
        let send = |message: String| json!({"to": TO, "type": "text", "message": message});
        accepted_under(Rules::RealWorker, &send(text("a", 4096)));
        only_the_real_worker_refuses(send(text("a", 4097)), "message");
        // 2048 emoji are 8192 bytes but exactly 4096 UTF-16 code units.
        accepted_under(Rules::RealWorker, &send(text("😀", 2048)));
        // One more counts 2: 4098.
        let message = only_the_real_worker_refuses(send(text("😀", 2049)), "message");
        assert_eq!(
            message,
            "\"message\" length must be less than or equal to 4096 characters long"
        );
        // 4096 characters of the Basic Multilingual Plane are 4096 units (and 12288 bytes).
        accepted_under(Rules::RealWorker, &send(text("€", 4096)));
        assert_eq!(utf16_len("a😀€"), 4);
    }

    #[test]
    fn location_name_and_address_lengths() {
        let send = |name: String, address: String| json!({"to": TO, "type": "location", "location": {"latitude": 1, "longitude": 2, "name": name, "address": address}});
        accepted_under(Rules::RealWorker, &send(text("n", 100), text("a", 200)));
        only_the_real_worker_refuses(send(text("n", 101), text("a", 200)), "location.name");
        only_the_real_worker_refuses(send(text("n", 100), text("a", 201)), "location.address");
        only_the_real_worker_refuses(send(text("😀", 51), String::new()), "location.name");
    }

    #[test]
    fn contact_name_and_organization_lengths() {
        let send = |name: String, organization: String| json!({"to": TO, "type": "contact", "contact": {"name": name, "phone": "081234567890", "organization": organization}});
        accepted_under(Rules::RealWorker, &send(text("n", 100), text("o", 100)));
        only_the_real_worker_refuses(send(text("n", 101), text("o", 1)), "contact.name");
        only_the_real_worker_refuses(send(text("n", 1), text("o", 101)), "contact.organization");
    }

    #[test]
    fn contact_email_must_be_an_email_address() {
        let send = |email: &str| json!({"to": TO, "type": "contact", "contact": {"name": "A", "phone": "081234567890", "email": email}});
        for fine in [
            "a@b.co",
            "first.last+tag@mail.example.com",
            "x_y@sub-domain.id",
        ] {
            accepted_under(Rules::RealWorker, &send(fine));
        }
        for bad in [
            "", "plain", "a@b", "a@b.c", "@b.co", "a@.co", "a b@c.co", "a@b..co", "a@@b.co",
            "a@-b.co", "a@b.c0", ".a@b.co",
        ] {
            let message = only_the_real_worker_refuses(send(bad), "contact.email");
            assert_eq!(message, "\"contact.email\" must be a valid email");
        }
    }

    #[test]
    fn contact_phone_is_a_mobile_number_or_a_jid() {
        let send = |phone: &str| json!({"to": TO, "type": "contact", "contact": {"name": "A", "phone": phone}});
        for fine in [
            "81234567890",
            "081234567890",
            "6281234567890",
            "+6281234567890",
            "+62812345678",
            "0812345678901",
            // International numbers go as JIDs.
            "14155550123@s.whatsapp.net",
            "447911123456@s.whatsapp.net",
        ] {
            accepted_under(Rules::RealWorker, &send(fine));
        }
        for bad in [
            "+14155550123",
            "071234567890",
            "0812345",
            "08123456789012",
            "+62 812 3456 7890",
            "62-812-3456-7890",
            "123456789@s.whatsapp.net",
            "6281234567890@g.us",
            "+6281234567890@s.whatsapp.net",
        ] {
            let message = only_the_real_worker_refuses(send(bad), "contact.phone");
            assert!(message.contains("@s.whatsapp.net"), "{message}");
        }
    }

    #[test]
    fn link_title_and_description_lengths() {
        let send = |title: String, description: String| json!({"to": TO, "type": "link", "link": {"url": "https://x", "title": title, "description": description}});
        accepted_under(Rules::RealWorker, &send(text("t", 100), text("d", 300)));
        only_the_real_worker_refuses(send(text("t", 101), text("d", 300)), "link.title");
        only_the_real_worker_refuses(send(text("t", 100), text("d", 301)), "link.description");
    }
}
