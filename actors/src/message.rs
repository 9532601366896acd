//! The message contract: what a publisher puts on the work queue, and how drover validates it.
//!
//! ```json
//! {"id": "0190c7b2-…", "to": "+15551234567", "body": "hello", "from": "+15550000000", "correlation_id": "order-42"}
//! ```
//!
//! * `id` (optional UUID): the idempotency key. Absent, drover takes the AMQP `message_id`
//!   property if it is a UUID; absent too, it derives a UUID v5 from the payload itself, so a
//!   redelivery of the same bytes maps to the same message (to send identical content twice on
//!   purpose, give each its own id).
//! * `to` (required): an E.164 number (`+` then 2 to 15 digits, not starting with 0).
//! * `body` (required, non-empty): at most `message.max_body_chars` characters.
//! * `from` (optional): sender; the provider's configured sender otherwise.
//! * `correlation_id` (optional): else the AMQP `correlation_id` property, else the id.
//!
//! Anything else (not UTF-8, not JSON, a missing or empty field, a bad `to`, a body over the
//! limit, an unknown field) is [`Invalid`] with a reason that goes in the invalid queue's
//! `x-drover-invalid-reason` header.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `[message]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageConfig {
    /// Longest accepted body, in characters (Twilio's own limit is 1600).
    pub max_body_chars: usize,
}

impl Default for MessageConfig {
    fn default() -> Self {
        MessageConfig {
            max_body_chars: 1600,
        }
    }
}

/// A valid outbound message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundMessage {
    pub id: Uuid,
    pub to: String,
    pub body: String,
    pub from: Option<String>,
    pub correlation_id: String,
}

impl OutboundMessage {
    /// The canonical JSON body (what drover itself publishes: always with id and
    /// correlation id).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("plain struct serializes")
    }

    /// Whether `other` carries the same payload (same id is assumed).
    pub fn same_payload(&self, other: &OutboundMessage) -> bool {
        self.to == other.to && self.body == other.body && self.from == other.from
    }
}

/// AMQP properties that stand in for missing body fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
}

/// Why a message is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("body is not UTF-8: {0}")]
    NotUtf8(String),
    #[error("body is not a JSON object: {0}")]
    NotJson(String),
    #[error("missing field `{0}`")]
    Missing(&'static str),
    #[error("empty field `{0}`")]
    Empty(&'static str),
    #[error("`to` is not an E.164 number: {0:?}")]
    NotE164(String),
    #[error("`from` is empty or too long")]
    BadFrom,
    #[error("body has {len} characters, more than the limit of {max}")]
    BodyTooLong { len: usize, max: usize },
    #[error("`id` is not a UUID: {0:?}")]
    BadId(String),
    #[error("body contains a NUL character")]
    NulInBody,
    #[error("id {0} was already used for a different payload")]
    DuplicateId(Uuid),
}

impl Invalid {
    /// A short machine-readable class (`x-drover-invalid-class`).
    pub fn class(&self) -> &'static str {
        match self {
            Invalid::NotUtf8(_) => "not_utf8",
            Invalid::NotJson(_) => "not_json",
            Invalid::Missing(_) => "missing_field",
            Invalid::Empty(_) => "empty_field",
            Invalid::NotE164(_) => "bad_recipient",
            Invalid::BadFrom => "bad_sender",
            Invalid::BodyTooLong { .. } => "body_too_long",
            Invalid::BadId(_) => "bad_id",
            Invalid::NulInBody => "nul_in_body",
            Invalid::DuplicateId(_) => "duplicate_id",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    id: Option<String>,
    to: Option<String>,
    body: Option<String>,
    from: Option<String>,
    correlation_id: Option<String>,
}

/// Namespace of ids derived from payloads (UUID v5).
const PAYLOAD_NAMESPACE: Uuid = Uuid::from_u128(0x6472_6f76_6572_2d6d_7367_2d69_642d_7635);

/// The id an invalid message claims, if it claims a usable one (its body's `id`, else the
/// AMQP `message_id`), so its invalid record can be found by it.
pub fn salvage_id(bytes: &[u8], envelope: &Envelope) -> Option<Uuid> {
    let from_body = serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| {
            v.get("id")
                .and_then(|i| i.as_str())
                .and_then(|s| Uuid::parse_str(s).ok())
        });
    from_body.or_else(|| {
        envelope
            .message_id
            .as_deref()
            .and_then(|m| Uuid::parse_str(m).ok())
    })
}

/// `+` then 2 to 15 digits, the first not 0.
pub fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// Parse and validate one delivery body.
pub fn parse(
    bytes: &[u8],
    envelope: &Envelope,
    config: &MessageConfig,
) -> Result<OutboundMessage, Invalid> {
    let text = std::str::from_utf8(bytes).map_err(|e| Invalid::NotUtf8(e.to_string()))?;
    let wire: Wire = serde_json::from_str(text).map_err(|e| Invalid::NotJson(e.to_string()))?;
    let to = wire.to.ok_or(Invalid::Missing("to"))?;
    if to.trim().is_empty() {
        return Err(Invalid::Empty("to"));
    }
    if !is_e164(&to) {
        return Err(Invalid::NotE164(to));
    }
    let body = wire.body.ok_or(Invalid::Missing("body"))?;
    if body.trim().is_empty() {
        return Err(Invalid::Empty("body"));
    }
    if body.contains('\0') {
        return Err(Invalid::NulInBody);
    }
    let len = body.chars().count();
    if len > config.max_body_chars {
        return Err(Invalid::BodyTooLong {
            len,
            max: config.max_body_chars,
        });
    }
    let from = match wire.from {
        Some(f) if f.trim().is_empty() || f.len() > 64 => return Err(Invalid::BadFrom),
        other => other,
    };
    let id = match (wire.id, envelope.message_id.as_deref()) {
        (Some(id), _) => Uuid::parse_str(&id).map_err(|_| Invalid::BadId(id))?,
        (None, Some(mid)) => match Uuid::parse_str(mid) {
            Ok(u) => u,
            // A non-UUID message_id still identifies the message: derive from it.
            Err(_) => Uuid::new_v5(&PAYLOAD_NAMESPACE, mid.as_bytes()),
        },
        (None, None) => Uuid::new_v5(&PAYLOAD_NAMESPACE, bytes),
    };
    let correlation_id = wire
        .correlation_id
        .filter(|c| !c.trim().is_empty())
        .or_else(|| {
            envelope
                .correlation_id
                .clone()
                .filter(|c| !c.trim().is_empty())
        })
        .unwrap_or_else(|| id.to_string());
    Ok(OutboundMessage {
        id,
        to,
        body,
        from,
        correlation_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<OutboundMessage, Invalid> {
        parse(
            s.as_bytes(),
            &Envelope::default(),
            &MessageConfig::default(),
        )
    }

    #[test]
    fn accepts_the_documented_example() {
        let m = p(r#"{"id":"0190c7b2-6f0a-7cc0-8c1e-3a1f2b3c4d5e","to":"+15551234567","body":"hi","from":"+15550000000","correlation_id":"order-42"}"#).unwrap();
        assert_eq!(m.to, "+15551234567");
        assert_eq!(m.correlation_id, "order-42");
        assert_eq!(m.id.to_string(), "0190c7b2-6f0a-7cc0-8c1e-3a1f2b3c4d5e");
    }

    #[test]
    fn envelope_fills_missing_id_and_correlation() {
        let env = Envelope {
            message_id: Some("6a2f41a3-c54c-fce8-32d2-0324e1c32e22".into()),
            correlation_id: Some("corr".into()),
        };
        let m = parse(
            br#"{"to":"+4915112345678","body":"x"}"#,
            &env,
            &MessageConfig::default(),
        )
        .unwrap();
        assert_eq!(m.id.to_string(), "6a2f41a3-c54c-fce8-32d2-0324e1c32e22");
        assert_eq!(m.correlation_id, "corr");
    }

    #[test]
    fn derived_id_is_stable_for_the_same_bytes() {
        let a = p(r#"{"to":"+15551234567","body":"x"}"#).unwrap();
        let b = p(r#"{"to":"+15551234567","body":"x"}"#).unwrap();
        let c = p(r#"{"to":"+15551234567","body":"y"}"#).unwrap();
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert_eq!(a.correlation_id, a.id.to_string());
    }

    #[test]
    fn each_kind_of_invalid_input_has_its_reason() {
        let cfg = MessageConfig { max_body_chars: 5 };
        let cases: Vec<(&[u8], &str)> = vec![
            (b"\xff\xfe", "not_utf8"),
            (b"not json", "not_json"),
            (b"[1,2]", "not_json"),
            (br#"{"body":"x"}"#, "missing_field"),
            (br#"{"to":"+15551234567"}"#, "missing_field"),
            (br#"{"to":"","body":"x"}"#, "empty_field"),
            (br#"{"to":"+15551234567","body":"  "}"#, "empty_field"),
            (br#"{"to":"15551234567","body":"x"}"#, "bad_recipient"),
            (br#"{"to":"+0555","body":"x"}"#, "bad_recipient"),
            (br#"{"to":"+1555123456789012","body":"x"}"#, "bad_recipient"),
            (
                br#"{"to":"+15551234567","body":"toolong"}"#,
                "body_too_long",
            ),
            (br#"{"to":"+15551234567","body":"x","id":"nope"}"#, "bad_id"),
            (
                br#"{"to":"+15551234567","body":"x","from":""}"#,
                "bad_sender",
            ),
            (br#"{"to":"+15551234567","body":"x","extra":1}"#, "not_json"),
        ];
        for (input, class) in cases {
            let err = parse(input, &Envelope::default(), &cfg).unwrap_err();
            assert_eq!(
                err.class(),
                class,
                "{:?} -> {err}",
                String::from_utf8_lossy(input)
            );
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn body_limit_counts_characters_not_bytes() {
        let cfg = MessageConfig { max_body_chars: 3 };
        assert!(
            parse(
                r#"{"to":"+15551234567","body":"äöü"}"#.as_bytes(),
                &Envelope::default(),
                &cfg
            )
            .is_ok()
        );
    }
}
