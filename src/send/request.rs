//! A send request as customers post it (`POST /api/v1/external/send` and the per-type drop-in
//! routes), parsed into a [`ValidatedSend`]: the normalised recipient, the message kind, and the
//! worker body with exactly the fields WORKER_PROTOCOL.md allows (the worker rejects unknown
//! fields, so nothing the customer adds may leak through).

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::domain::{Email, InvalidInput, PhoneJid, SessionId, TextRule};

/// Longest text message accepted, in UTF-16 code units as the existing worker counts them.
pub const MAX_TEXT_CHARS: usize = 4096;
/// Longest media caption.
pub const MAX_CAPTION_CHARS: usize = 1024;
/// Longest media or link URL.
pub const MAX_URL_CHARS: usize = 2048;

// The rules of the fields the existing worker checks with limits of its own
// (WORKER_PROTOCOL.md, "What the existing worker really does" 3), counted as it counts them
// (JavaScript string length: UTF-16 code units), so that what it would refuse is a `400` here,
// not a `202` that fails later.

/// A text message's `message`.
pub const MESSAGE_RULE: TextRule = TextRule::multiline(MAX_TEXT_CHARS).utf16().non_empty();
/// `location.name`.
pub const LOCATION_NAME_RULE: TextRule = TextRule::line(100).utf16();
/// `location.address`.
pub const LOCATION_ADDRESS_RULE: TextRule = TextRule::line(200).utf16();
/// `contact.name` and `contact.organization`.
pub const CONTACT_TEXT_RULE: TextRule = TextRule::line(100).utf16();
/// `link.title`.
pub const LINK_TITLE_RULE: TextRule = TextRule::line(100).utf16();
/// `link.description`.
pub const LINK_DESCRIPTION_RULE: TextRule = TextRule::multiline(300).utf16();

/// The kinds of message a worker can send, with their protocol (`type`) and store spellings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// Plain text.
    Text,
    /// Image by URL.
    Image,
    /// Video by URL.
    Video,
    /// Document by URL.
    Document,
    /// Voice note / audio by URL.
    Audio,
    /// A location pin.
    Location,
    /// A contact card.
    Contact,
    /// A link preview.
    Link,
    /// A poll.
    Poll,
    /// Mark a received message as read.
    Seen,
    /// Show "typing…".
    TypingStart,
    /// Stop "typing…".
    TypingStop,
}

impl MessageKind {
    /// Parses the protocol spelling (case-insensitive).
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        Ok(match raw.to_ascii_lowercase().as_str() {
            "text" => MessageKind::Text,
            "image" => MessageKind::Image,
            "video" => MessageKind::Video,
            "document" | "file" => MessageKind::Document,
            "audio" | "voice" => MessageKind::Audio,
            "location" => MessageKind::Location,
            "contact" | "vcard" => MessageKind::Contact,
            "link" => MessageKind::Link,
            "poll" => MessageKind::Poll,
            "seen" => MessageKind::Seen,
            "typing_start" => MessageKind::TypingStart,
            "typing_stop" => MessageKind::TypingStop,
            _ => {
                return Err(InvalidInput::new(
                    "type",
                    "must be one of text, image, video, document, audio, location, contact, link, poll, seen, \
                     typing_start, typing_stop",
                ));
            }
        })
    }

    /// The `type` of the worker protocol.
    pub fn protocol_name(self) -> &'static str {
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

    /// The `messages.message_type` spelling.
    pub fn store_name(self) -> &'static str {
        match self {
            MessageKind::Text => "TEXT",
            MessageKind::Image => "IMAGE",
            MessageKind::Video => "VIDEO",
            MessageKind::Document => "DOCUMENT",
            MessageKind::Audio => "AUDIO",
            MessageKind::Location => "LOCATION",
            MessageKind::Contact => "CONTACT",
            MessageKind::Link => "LINK",
            MessageKind::Poll => "POLL",
            MessageKind::Seen => "SEEN",
            MessageKind::TypingStart => "TYPING_START",
            MessageKind::TypingStop => "TYPING_STOP",
        }
    }
}

/// A send as posted. Unknown fields are refused so a typo (`caption` vs `captoin`) is a clear
/// 400 instead of a silently different message.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendRequest {
    /// The session to send from (may be omitted with a session-bound API key).
    pub session_id: Option<String>,
    /// Recipient: `+62 812-…`, `62812…`, `0812…` (local) or a `…@s.whatsapp.net` JID.
    pub to: Option<String>,
    /// Message kind (default `text`).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Text of a `text` message.
    pub message: Option<String>,
    /// Media URL (image, video, document, audio).
    pub media_url: Option<String>,
    /// Media caption (image, video, document).
    pub caption: Option<String>,
    /// File name (document).
    pub filename: Option<String>,
    /// Location pin.
    pub location: Option<Value>,
    /// Contact card.
    pub contact: Option<Value>,
    /// Link preview.
    pub link: Option<Value>,
    /// Poll.
    pub poll: Option<Value>,
    /// The received message to mark as seen.
    pub message_id: Option<String>,
    /// Let the worker type at a human pace.
    pub human_simulation: Option<bool>,
}

/// A send that passed validation.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedSend {
    /// The session named in the request (None: take it from the API key).
    pub session_id: Option<SessionId>,
    /// Normalised recipient.
    pub to: PhoneJid,
    /// Kind.
    pub kind: MessageKind,
    /// Exactly the worker's send body.
    pub worker_body: Value,
}

impl SendRequest {
    /// Validates the request; `forced_kind` is set by the per-type routes (`sendImage`, …).
    pub fn validate(
        self,
        forced_kind: Option<MessageKind>,
        default_country_code: &str,
    ) -> Result<ValidatedSend, InvalidInput> {
        let kind = match (forced_kind, self.kind.as_deref()) {
            (Some(kind), _) => kind,
            (None, Some(raw)) => MessageKind::parse(raw)?,
            (None, None) => MessageKind::Text,
        };
        let session_id = self
            .session_id
            .as_deref()
            .map(|raw| SessionId::parse("sessionId", raw))
            .transpose()?;
        let to = PhoneJid::parse(
            "to",
            self.to
                .as_deref()
                .ok_or_else(|| InvalidInput::new("to", "is required"))?,
            default_country_code,
        )?;
        let mut body = Map::new();
        body.insert("to".into(), json!(to.as_str()));
        body.insert("type".into(), json!(kind.protocol_name()));
        let allowed: &[&str] = match kind {
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
        };
        let present = [
            ("message", self.message.is_some()),
            ("mediaUrl", self.media_url.is_some()),
            ("caption", self.caption.is_some()),
            ("filename", self.filename.is_some()),
            ("location", self.location.is_some()),
            ("contact", self.contact.is_some()),
            ("link", self.link.is_some()),
            ("poll", self.poll.is_some()),
            ("messageId", self.message_id.is_some()),
        ];
        if let Some((field, _)) = present
            .iter()
            .find(|(field, set)| *set && !allowed.contains(field))
        {
            return Err(InvalidInput::new(
                field,
                format!("is not a field of a `{}` message", kind.protocol_name()),
            ));
        }
        match kind {
            MessageKind::Text => {
                let text = required_text("message", self.message, MESSAGE_RULE)?;
                body.insert("message".into(), json!(text));
            }
            MessageKind::Image
            | MessageKind::Video
            | MessageKind::Document
            | MessageKind::Audio => {
                let url = http_url("mediaUrl", self.media_url.as_deref())?;
                body.insert("mediaUrl".into(), json!(url));
                if kind == MessageKind::Document {
                    let filename = required_text("filename", self.filename, TextRule::line(255))?;
                    if filename.contains(['/', '\\']) {
                        return Err(InvalidInput::new(
                            "filename",
                            "must be a file name, not a path",
                        ));
                    }
                    body.insert("filename".into(), json!(filename));
                }
                if let Some(caption) = self.caption {
                    body.insert(
                        "caption".into(),
                        json!(
                            TextRule::multiline(MAX_CAPTION_CHARS)
                                .check_owned("caption", caption)?
                        ),
                    );
                }
            }
            MessageKind::Location => {
                body.insert("location".into(), location(self.location)?);
            }
            MessageKind::Contact => {
                body.insert(
                    "contact".into(),
                    contact(self.contact, default_country_code)?,
                );
            }
            MessageKind::Link => {
                body.insert("link".into(), link(self.link)?);
            }
            MessageKind::Poll => {
                body.insert("poll".into(), poll(self.poll)?);
            }
            MessageKind::Seen => {
                let id = required_text("messageId", self.message_id, TextRule::token(200))?;
                body.insert("messageId".into(), json!(id));
            }
            MessageKind::TypingStart | MessageKind::TypingStop => {}
        }
        if let Some(human) = self.human_simulation {
            body.insert("humanSimulation".into(), json!(human));
        }
        Ok(ValidatedSend {
            session_id,
            to,
            kind,
            worker_body: Value::Object(body),
        })
    }
}

/// A required text field under `rule` (blank is refused too).
fn required_text(
    field: &'static str,
    text: Option<String>,
    rule: TextRule,
) -> Result<String, InvalidInput> {
    let text = text.ok_or_else(|| InvalidInput::new(field, "is required"))?;
    rule.non_empty().check_owned(field, text)
}

fn http_url(field: &'static str, raw: Option<&str>) -> Result<String, InvalidInput> {
    let url = raw.ok_or_else(|| InvalidInput::new(field, "is required"))?;
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| InvalidInput::new(field, "must be an http(s) URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty()
        || url.chars().count() > MAX_URL_CHARS
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(InvalidInput::new(
            field,
            "must be an http(s) URL of at most 2048 characters",
        ));
    }
    Ok(url.to_owned())
}

/// Keeps only the allowed keys of an object field, refusing unknown ones.
fn object(
    field: &'static str,
    value: Option<Value>,
    allowed: &[&str],
) -> Result<Map<String, Value>, InvalidInput> {
    let Some(Value::Object(map)) = value else {
        return Err(InvalidInput::new(field, "must be an object"));
    };
    if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(InvalidInput::new(
            field,
            format!("has an unknown field `{unknown}`"),
        ));
    }
    Ok(map)
}

/// An optional string `key` of the object `field`, under `rule`.
fn optional_string(
    field: &'static str,
    map: &Map<String, Value>,
    key: &str,
    rule: TextRule,
) -> Result<Option<String>, InvalidInput> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => match rule.check(field, s) {
            Ok(_) => Ok(Some(s.clone())),
            Err(refused) => Err(InvalidInput::new(
                field,
                format!("`{key}` {}", refused.problem),
            )),
        },
        Some(_) => Err(InvalidInput::new(
            field,
            format!(
                "`{key}` must be a string of at most {} characters",
                rule.max_chars()
            ),
        )),
    }
}

fn location(value: Option<Value>) -> Result<Value, InvalidInput> {
    let map = object(
        "location",
        value,
        &["latitude", "longitude", "name", "address"],
    )?;
    let coordinate = |key: &str, bound: f64| -> Result<f64, InvalidInput> {
        map.get(key)
            .and_then(Value::as_f64)
            .filter(|v| v.abs() <= bound)
            .ok_or_else(|| {
                InvalidInput::new(
                    "location",
                    format!("`{key}` must be a number within ±{bound}"),
                )
            })
    };
    let mut out = Map::new();
    out.insert("latitude".into(), json!(coordinate("latitude", 90.0)?));
    out.insert("longitude".into(), json!(coordinate("longitude", 180.0)?));
    for key in ["name", "address"] {
        let rule = if key == "name" {
            LOCATION_NAME_RULE
        } else {
            LOCATION_ADDRESS_RULE
        };
        if let Some(text) = optional_string("location", &map, key, rule)? {
            out.insert(key.into(), json!(text));
        }
    }
    Ok(Value::Object(out))
}

fn contact(value: Option<Value>, default_country_code: &str) -> Result<Value, InvalidInput> {
    let map = object(
        "contact",
        value,
        &["name", "phone", "email", "organization"],
    )?;
    let name = optional_string("contact", &map, "name", CONTACT_TEXT_RULE)?
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| InvalidInput::new("contact", "`name` is required"))?;
    let phone = optional_string("contact", &map, "phone", TextRule::line(32))?
        .ok_or_else(|| InvalidInput::new("contact", "`phone` is required"))?;
    let jid = PhoneJid::parse("contact", &phone, default_country_code)?;
    let mut out = Map::new();
    out.insert("name".into(), json!(name));
    out.insert("phone".into(), json!(contact_phone(&jid)));
    if let Some(email) = optional_string("contact", &map, "email", Email::RULE)? {
        let email = Email::parse(&email).map_err(|_| {
            InvalidInput::new(
                "contact",
                "`email` must be an e-mail address like name@example.com",
            )
        })?;
        out.insert("email".into(), json!(email.as_str()));
    }
    if let Some(text) = optional_string("contact", &map, "organization", CONTACT_TEXT_RULE)? {
        out.insert("organization".into(), json!(text));
    }
    Ok(Value::Object(out))
}

/// A contact's phone as the existing worker takes it: its own pattern,
/// `^(\+?62|62|0)?8\d{8,11}$` (Indonesian mobile numbers), as digits, anything else as a JID,
/// which it also accepts (WORKER_PROTOCOL.md, "What the existing worker really does" 3).
fn contact_phone(jid: &PhoneJid) -> &str {
    let digits = jid
        .as_str()
        .strip_suffix("@s.whatsapp.net")
        .unwrap_or(jid.as_str());
    let indonesian_mobile = digits
        .strip_prefix("628")
        .is_some_and(|rest| (8..=11).contains(&rest.len()));
    if indonesian_mobile {
        digits
    } else {
        jid.as_str()
    }
}

fn link(value: Option<Value>) -> Result<Value, InvalidInput> {
    let map = object("link", value, &["url", "title", "description", "thumbnail"])?;
    let mut out = Map::new();
    out.insert(
        "url".into(),
        json!(http_url("link", map.get("url").and_then(Value::as_str))?),
    );
    for (key, rule) in [
        ("title", LINK_TITLE_RULE),
        ("description", LINK_DESCRIPTION_RULE),
    ] {
        if let Some(text) = optional_string("link", &map, key, rule)? {
            out.insert(key.into(), json!(text));
        }
    }
    if let Some(thumbnail) = map.get("thumbnail").and_then(Value::as_str) {
        out.insert(
            "thumbnail".into(),
            json!(http_url("link", Some(thumbnail))?),
        );
    }
    Ok(Value::Object(out))
}

fn poll(value: Option<Value>) -> Result<Value, InvalidInput> {
    let map = object("poll", value, &["question", "options", "multipleAnswers"])?;
    let question = optional_string("poll", &map, "question", TextRule::line(255))?
        .filter(|q| !q.trim().is_empty())
        .ok_or_else(|| InvalidInput::new("poll", "`question` is required"))?;
    let options: Vec<String> = map
        .get("options")
        .and_then(Value::as_array)
        .ok_or_else(|| InvalidInput::new("poll", "`options` must be a list of 2 to 12 strings"))?
        .iter()
        .map(|o| match o.as_str() {
            Some(text) if TextRule::line(100).non_empty().check("poll", text).is_ok() => {
                Ok(text.to_owned())
            }
            _ => Err(InvalidInput::new(
                "poll",
                "each option must be a non-empty line of at most 100 characters",
            )),
        })
        .collect::<Result<_, _>>()?;
    if !(2..=12).contains(&options.len()) {
        return Err(InvalidInput::new(
            "poll",
            "`options` must have 2 to 12 entries",
        ));
    }
    let mut unique = options.clone();
    unique.sort();
    unique.dedup();
    if unique.len() != options.len() {
        return Err(InvalidInput::new(
            "poll",
            "options must be different from each other",
        ));
    }
    let mut out = Map::new();
    out.insert("question".into(), json!(question));
    out.insert("options".into(), json!(options));
    match map.get("multipleAnswers") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(b)) => {
            out.insert("multipleAnswers".into(), json!(b));
        }
        Some(_) => {
            return Err(InvalidInput::new(
                "poll",
                "`multipleAnswers` must be true or false",
            ));
        }
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<ValidatedSend, InvalidInput> {
        let request: SendRequest =
            serde_json::from_value(body).map_err(|e| InvalidInput::new("body", e.to_string()))?;
        request.validate(None, "62")
    }

    #[test]
    fn text_is_the_default_and_the_body_is_exact() {
        let send = parse(json!({"sessionId": "sales-1", "to": "0812 3456 7890", "message": "hi"}))
            .unwrap();
        assert_eq!(send.kind, MessageKind::Text);
        assert_eq!(send.session_id.unwrap().as_str(), "sales-1");
        assert_eq!(
            send.worker_body,
            json!({"to": "6281234567890@s.whatsapp.net", "type": "text", "message": "hi"})
        );
    }

    #[test]
    fn every_kind_builds_its_protocol_body() {
        let to = "+62 812-3456-7890";
        for (body, kind) in [
            (
                json!({"to": to, "type": "image", "mediaUrl": "https://x.io/a.png", "caption": "c"}),
                "image",
            ),
            (
                json!({"to": to, "type": "document", "mediaUrl": "http://x.io/a.pdf", "filename": "a.pdf"}),
                "document",
            ),
            (
                json!({"to": to, "type": "audio", "mediaUrl": "https://x.io/a.ogg"}),
                "audio",
            ),
            (
                json!({"to": to, "type": "location", "location": {"latitude": -6.2, "longitude": 106.8, "name": "Monas"}}),
                "location",
            ),
            (
                json!({"to": to, "type": "contact", "contact": {"name": "Ann", "phone": "+62 811 111 111"}}),
                "contact",
            ),
            (
                json!({"to": to, "type": "link", "link": {"url": "https://example.com", "title": "t"}}),
                "link",
            ),
            (
                json!({"to": to, "type": "poll", "poll": {"question": "Lunch?", "options": ["yes", "no"], "multipleAnswers": false}}),
                "poll",
            ),
            (
                json!({"to": to, "type": "seen", "messageId": "3EB0ABC"}),
                "seen",
            ),
            (json!({"to": to, "type": "typing_start"}), "typing_start"),
        ] {
            let send = parse(body.clone()).unwrap_or_else(|e| panic!("{body}: {e}"));
            assert_eq!(send.worker_body["type"], kind);
            assert_eq!(send.worker_body["to"], "6281234567890@s.whatsapp.net");
        }
    }

    #[test]
    fn invalid_sends_name_their_field() {
        let to = "6281234567890";
        for (body, field) in [
            (json!({"message": "hi"}), "to"),
            (json!({"to": "12", "message": "hi"}), "to"),
            (json!({"to": to}), "message"),
            (json!({"to": to, "message": "   "}), "message"),
            (
                json!({"to": to, "message": "x".repeat(MAX_TEXT_CHARS + 1)}),
                "message",
            ),
            (json!({"to": to, "type": "sticker"}), "type"),
            (
                json!({"to": to, "message": "hi", "caption": "no"}),
                "caption",
            ),
            (
                json!({"to": to, "type": "image", "mediaUrl": "ftp://x.io/a.png"}),
                "mediaUrl",
            ),
            (
                json!({"to": to, "type": "image", "mediaUrl": "https://x.io/a.png", "caption": "c".repeat(1025)}),
                "caption",
            ),
            (
                json!({"to": to, "type": "document", "mediaUrl": "https://x.io/a"}),
                "filename",
            ),
            (
                json!({"to": to, "type": "poll", "poll": {"question": "q", "options": ["only"]}}),
                "poll",
            ),
            (
                json!({"to": to, "type": "poll", "poll": {"question": "q", "options": ["a", "a"]}}),
                "poll",
            ),
            (
                json!({"to": to, "type": "poll", "poll": {"question": "q", "options": (0..13).map(|i| i.to_string()).collect::<Vec<_>>()}}),
                "poll",
            ),
            (
                json!({"to": to, "type": "location", "location": {"latitude": 91, "longitude": 0}}),
                "location",
            ),
            (
                json!({"to": to, "type": "link", "link": {"url": "https://e.com", "extra": 1}}),
                "link",
            ),
            (
                json!({"to": to, "sessionId": "a b", "message": "hi"}),
                "sessionId",
            ),
        ] {
            let err = parse(body.clone()).unwrap_err();
            assert_eq!(err.field, field, "{body}: {err}");
        }
        assert!(parse(json!({"to": to, "message": "hi", "colour": "red"})).is_err());
    }

    /// Every body the existing worker would refuse is refused here, as it counts.
    #[test]
    fn what_the_existing_worker_refuses_is_refused_at_ingress() {
        let to = "6281234567890";
        // 4096 UTF-16 code units pass; one more, or 2049 emoji (4098 units), do not.
        assert!(parse(json!({"to": to, "message": "x".repeat(4096)})).is_ok());
        assert!(parse(json!({"to": to, "message": "\u{1F600}".repeat(2048)})).is_ok());
        let emoji = parse(json!({"to": to, "message": "\u{1F600}".repeat(2049)})).unwrap_err();
        assert_eq!(emoji.field, "message");
        assert!(emoji.problem.contains("UTF-16"), "{emoji}");
        let long = |n: usize| "\u{e9}".repeat(n);
        for (body, field) in [
            // 9 digits with the country code: the worker wants 10 to 15.
            (json!({"to": "628123456", "message": "hi"}), "to"),
            (json!({"to": "+1 415 555 01", "message": "hi"}), "to"),
            (
                json!({"to": to, "type": "location", "location": {"latitude": 0, "longitude": 0, "name": long(101)}}),
                "location",
            ),
            (
                json!({"to": to, "type": "location", "location": {"latitude": 0, "longitude": 0, "address": long(201)}}),
                "location",
            ),
            (
                json!({"to": to, "type": "contact", "contact": {"name": long(101), "phone": to}}),
                "contact",
            ),
            (
                json!({"to": to, "type": "contact", "contact": {"name": "Ann", "phone": to, "organization": long(101)}}),
                "contact",
            ),
            (
                json!({"to": to, "type": "contact", "contact": {"name": "Ann", "phone": to, "email": "not-an-address"}}),
                "contact",
            ),
            (
                json!({"to": to, "type": "link", "link": {"url": "https://e.com", "title": long(101)}}),
                "link",
            ),
            (
                json!({"to": to, "type": "link", "link": {"url": "https://e.com", "description": long(301)}}),
                "link",
            ),
        ] {
            let err = parse(body.clone()).unwrap_err();
            assert_eq!(err.field, field, "{body}: {err}");
        }
        // At the limits, accepted.
        for body in [
            json!({"to": "+1 415 555 0123", "message": "hi"}),
            json!({"to": to, "type": "location", "location": {"latitude": 0, "longitude": 0, "name": long(100), "address": long(200)}}),
            json!({"to": to, "type": "contact", "contact": {"name": long(100), "phone": to, "organization": long(100), "email": "Ann@Example.com"}}),
            json!({"to": to, "type": "link", "link": {"url": "https://e.com", "title": long(100), "description": long(300)}}),
        ] {
            parse(body.clone()).unwrap_or_else(|e| panic!("{body}: {e}"));
        }
    }

    /// The worker takes a contact's phone in its own (Indonesian mobile) pattern, or as a JID.
    #[test]
    fn contact_phones_go_to_the_worker_in_a_form_it_takes() {
        let contact = |phone: &str| {
            parse(json!({"to": "6281234567890", "type": "contact",
                         "contact": {"name": "Ann", "phone": phone, "email": "Ann@Example.com"}}))
            .unwrap()
            .worker_body["contact"]
                .clone()
        };
        assert_eq!(contact("0812 3456 7890")["phone"], "6281234567890");
        assert_eq!(contact("+62 811 111 111")["phone"], "62811111111");
        assert_eq!(
            contact("+1 415 555 0123")["phone"],
            "14155550123@s.whatsapp.net"
        );
        assert_eq!(
            contact("+44 20 7946 0958")["phone"],
            "442079460958@s.whatsapp.net"
        );
        // A 62 number that is not a mobile one is a JID too.
        assert_eq!(
            contact("+62 21 5555 1234")["phone"],
            "622155551234@s.whatsapp.net"
        );
        assert_eq!(contact("0812 3456 7890")["email"], "ann@example.com");
    }

    #[test]
    fn per_type_routes_force_the_kind() {
        let request: SendRequest = serde_json::from_value(
            json!({"to": "6281234567890", "mediaUrl": "https://x.io/v.mp4"}),
        )
        .unwrap();
        let send = request.validate(Some(MessageKind::Video), "62").unwrap();
        assert_eq!(send.worker_body["type"], "video");
    }
}
