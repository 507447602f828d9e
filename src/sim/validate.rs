//! Strict validation of send and message-management bodies, the way the real worker checks them.
//!
//! The real worker rejects any field it does not know, at the top level or nested, so the
//! gateway must send exactly the documented shape (its own message id travels in the
//! `X-Message-Id` header for that reason). Optional fields must be absent rather than `null`.
//! Fields that belong to another message type count as unknown: a `text` send with a
//! `caption` is refused.

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

/// Validates a `POST /api/{sessionId}/send` body.
pub(crate) fn validate_send(body: &Value) -> Checked<ValidatedSend> {
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

    let to = object.required_str("to")?;
    if !is_user_jid(to) {
        return Err(ValidationError::new(
            "to",
            "\"to\" must be <8 to 15 digits>@s.whatsapp.net",
        ));
    }
    object.optional_bool("humanSimulation")?;

    match kind {
        MessageKind::Text => {
            object.required_str("message")?;
        }
        MessageKind::Image | MessageKind::Video => {
            object.required_str("mediaUrl")?;
            object.optional_str("caption")?;
        }
        MessageKind::Document => {
            object.required_str("mediaUrl")?;
            object.required_str("filename")?;
            object.optional_str("caption")?;
        }
        MessageKind::Audio => {
            object.required_str("mediaUrl")?;
        }
        MessageKind::Location => {
            let location = object.required_object("location")?;
            location.only(&["latitude", "longitude", "name", "address"])?;
            location.required_number_in("latitude", -90.0, 90.0)?;
            location.required_number_in("longitude", -180.0, 180.0)?;
            location.optional_str("name")?;
            location.optional_str("address")?;
        }
        MessageKind::Contact => {
            let contact = object.required_object("contact")?;
            contact.only(&["name", "phone", "email", "organization"])?;
            contact.required_str("name")?;
            contact.required_str("phone")?;
            contact.optional_str("email")?;
            contact.optional_str("organization")?;
        }
        MessageKind::Link => {
            let link = object.required_object("link")?;
            link.only(&["url", "title", "description", "thumbnail"])?;
            link.required_str("url")?;
            link.optional_str("title")?;
            link.optional_str("description")?;
            link.optional_str("thumbnail")?;
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

/// `<8 to 15 digits>@s.whatsapp.net`.
pub(crate) fn is_user_jid(to: &str) -> bool {
    to.strip_suffix("@s.whatsapp.net").is_some_and(|digits| {
        (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
    })
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
        match self.get(key) {
            None | Some(Value::String(_)) => Ok(()),
            Some(_) => Err(self.error(key, "must be a string")),
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

    fn refused_field(body: Value) -> String {
        match validate_send(&body) {
            Err(error) => error.field,
            Ok(ok) => panic!("accepted {body}: {ok:?}"),
        }
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
            json!({"to": TO, "type": "contact", "contact": {"name": "A", "phone": "+62812", "email": "a@b.c", "organization": "o"}}),
            json!({"to": TO, "type": "link", "link": {"url": "https://x", "title": "t", "description": "d", "thumbnail": "https://x/t.png"}}),
            json!({"to": TO, "type": "poll", "poll": {"question": "q", "options": ["a", "b"], "multipleAnswers": false}}),
            json!({"to": TO, "type": "seen", "messageId": "3EB0AA"}),
            json!({"to": TO, "type": "typing_start"}),
            json!({"to": TO, "type": "typing_stop"}),
        ];
        for body in bodies {
            let validated = validate_send(&body).unwrap_or_else(|e| panic!("{body}: {e}"));
            assert_eq!(validated.to, TO);
            assert_eq!(validated.kind.as_str(), body["type"]);
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
}
