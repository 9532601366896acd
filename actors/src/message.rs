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
//! * `body` (required, non-empty): at most `message.max_body_chars` UTF-16 code units (what
//!   SMS encodings and Twilio's 1,600 limit count: an emoji outside the BMP counts 2).
//! * `from` (optional): sender; the provider's configured sender otherwise. At most
//!   `message.max_from_bytes` bytes.
//! * `correlation_id` (optional): else the AMQP `correlation_id` property, else the id. At most
//!   `message.max_correlation_id_bytes` bytes (AMQP's short-string limit, 255, at most).
//!
//! # Bounds, checked here before anything else sees the message
//!
//! The same [`parse`] serves AMQP deliveries and `POST /messages`. In order: the payload's
//! size (`max_payload_bytes`, before any parsing), UTF-8, the JSON nesting depth
//! (`max_json_depth`, before the JSON parser runs), the JSON shape, then every field: lengths,
//! and no control character (U+0000-U+001F, U+007F-U+009F) in `id`, `to`, `from`,
//! `correlation_id` or the AMQP ids standing in for them; the body may hold newlines and tabs,
//! only NUL is refused there (PostgreSQL text cannot hold it).
//!
//! Anything else is [`Invalid`]: its [`class`](Invalid::class) is a short fixed string and its
//! message is bounded ([`MAX_REASON_BYTES`]) however large the input, since it travels in the
//! invalid queue's `x-drover-invalid-reason` header and the database.

use std::hash::{BuildHasher, Hasher};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// AMQP 0-9-1's short-string limit (message id, correlation id, header keys), the broker
/// layer's.
pub use crate::broker::MAX_SHORT_STRING as AMQP_SHORT_STRING_MAX;

// ---- header names of the message contract (on the failed and invalid queues' copies) ----

/// Header carrying why a message was set aside as invalid.
pub const INVALID_REASON_HEADER: &str = "x-drover-invalid-reason";
/// Header carrying the class of that reason.
pub const INVALID_CLASS_HEADER: &str = "x-drover-invalid-class";
/// Set when the payload was cut to `message.max_payload_bytes`: its original length in bytes.
pub const BODY_TRUNCATED_HEADER: &str = "x-drover-body-truncated";
/// Set when some of the delivery's own headers were left out to keep the properties small:
/// how many.
pub const HEADERS_DROPPED_HEADER: &str = "x-drover-headers-dropped";
/// Headers on failed-queue messages.
pub const ERROR_HEADER: &str = "x-drover-error";
pub const ERROR_CLASS_HEADER: &str = "x-drover-error-class";
pub const ATTEMPTS_HEADER: &str = "x-drover-attempts";

/// Longest reason text drover writes about an invalid message (header, database row, log).
pub const MAX_REASON_BYTES: usize = 512;

/// How much of an offending value an error message quotes.
const QUOTE_BYTES: usize = 40;

/// `[message]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MessageConfig {
    /// Longest accepted body, in UTF-16 code units (Twilio's own limit is 1600).
    pub max_body_chars: usize,
    /// Largest accepted payload (AMQP body or HTTP request body), in bytes, checked before
    /// parsing. Larger payloads are invalid (`payload_too_large`); what drover keeps of them
    /// is cut to this size and flagged.
    pub max_payload_bytes: usize,
    /// Deepest accepted JSON nesting (objects and arrays), checked before parsing.
    pub max_json_depth: usize,
    /// Longest accepted `from`, in bytes.
    pub max_from_bytes: usize,
    /// Longest accepted correlation id, in bytes (at most 255, the AMQP property's limit).
    pub max_correlation_id_bytes: usize,
}

impl Default for MessageConfig {
    fn default() -> Self {
        MessageConfig {
            max_body_chars: 1600,
            max_payload_bytes: 64 * 1024,
            max_json_depth: 32,
            max_from_bytes: 64,
            max_correlation_id_bytes: AMQP_SHORT_STRING_MAX,
        }
    }
}

impl MessageConfig {
    /// Refuse limits that cannot work: zero limits, a correlation id longer than AMQP can carry,
    /// or a body limit the payload limit cannot hold.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_body_chars == 0
            || self.max_payload_bytes == 0
            || self.max_json_depth == 0
            || self.max_from_bytes == 0
            || self.max_correlation_id_bytes == 0
        {
            return Err("message limits must be positive".into());
        }
        if self.max_correlation_id_bytes > AMQP_SHORT_STRING_MAX {
            return Err(format!(
                "message.max_correlation_id_bytes = {} exceeds AMQP's limit of {AMQP_SHORT_STRING_MAX} bytes",
                self.max_correlation_id_bytes
            ));
        }
        if self.max_payload_bytes < 1024 {
            return Err(format!(
                "message.max_payload_bytes = {} is below 1024 bytes",
                self.max_payload_bytes
            ));
        }
        Ok(())
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
    /// The message as published to a queue: the one way an `Outgoing` is built from a
    /// message (its JSON, its id and correlation id as AMQP properties, no headers yet).
    pub fn outgoing(&self) -> crate::broker::Outgoing {
        crate::broker::Outgoing::new(self.to_json())
            .with_message_id(self.id.to_string())
            .with_correlation_id(self.correlation_id.clone())
    }

    pub fn same_payload(&self, other: &OutboundMessage) -> bool {
        self.to == other.to && self.body == other.body && self.from == other.from
    }

    /// The SMS segments its body takes (what operators pay for).
    pub fn segments(&self) -> u32 {
        sms_segments(&self.body).1
    }
}

/// AMQP properties that stand in for missing body fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
}

/// Why a message is invalid. Every message is bounded: values are quoted at most
/// [`QUOTE_BYTES`] long.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("payload is larger than the limit of {max} bytes")]
    PayloadTooLarge { max: usize },
    #[error("body is not UTF-8: {0}")]
    NotUtf8(String),
    #[error("JSON nested deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("body is not a JSON object: {0}")]
    NotJson(String),
    #[error("missing field `{0}`")]
    Missing(&'static str),
    #[error("empty field `{0}`")]
    Empty(&'static str),
    #[error("`{field}` has {len} bytes, more than the limit of {max}")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("`{field}` contains a control character (U+{code:04X})")]
    ControlChar { field: &'static str, code: u32 },
    #[error("`to` is not an E.164 number: {0}")]
    NotE164(String),
    #[error("`from` is empty or too long")]
    BadFrom,
    #[error("body has {len} characters (UTF-16 code units), more than the limit of {max}")]
    BodyTooLong { len: usize, max: usize },
    #[error("`id` is not a UUID: {0}")]
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
            Invalid::PayloadTooLarge { .. } => "payload_too_large",
            Invalid::NotUtf8(_) => "not_utf8",
            Invalid::TooDeep { .. } => "too_deep",
            Invalid::NotJson(_) => "not_json",
            Invalid::Missing(_) => "missing_field",
            Invalid::Empty(_) => "empty_field",
            Invalid::FieldTooLong { .. } => "field_too_long",
            Invalid::ControlChar { .. } => "control_character",
            Invalid::NotE164(_) => "bad_recipient",
            Invalid::BadFrom => "bad_sender",
            Invalid::BodyTooLong { .. } => "body_too_long",
            Invalid::BadId(_) => "bad_id",
            Invalid::NulInBody => "nul_in_body",
            Invalid::DuplicateId(_) => "duplicate_id",
        }
    }

    /// The reason text, at most [`MAX_REASON_BYTES`] long.
    pub fn reason(&self) -> String {
        truncate_utf8(&self.to_string(), MAX_REASON_BYTES).into_owned()
    }
}

/// `s` cut to at most `max` bytes at a character boundary, with `…` when cut.
pub fn truncate_utf8(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return std::borrow::Cow::Borrowed(s);
    }
    let ellipsis = '…'.len_utf8();
    let mut end = max.saturating_sub(ellipsis);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}…", &s[..end]))
}

/// A value quoted in an error: debug-escaped (so control characters show) and bounded.
fn quote(s: &str) -> String {
    let cut = truncate_utf8(s, QUOTE_BYTES);
    if cut.len() < s.len() {
        format!("{cut:?} ({} bytes)", s.len())
    } else {
        format!("{cut:?}")
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

/// Namespace of ids given to invalid payloads that claim none (UUID v5 of the payload, so a
/// redelivery finds its earlier record instead of adding one).
const INVALID_NAMESPACE: Uuid = Uuid::from_u128(0x6472_6f76_6572_2d69_6e76_616c_6964_0001);

/// The id an invalid message claims, if it claims a usable one (its body's `id`, else the
/// AMQP `message_id`), so its invalid record can be found by it. Never parses more than
/// `max_payload_bytes` or deeper than `max_json_depth`.
pub fn salvage_id(bytes: &[u8], envelope: &Envelope, config: &MessageConfig) -> Option<Uuid> {
    let from_body = (bytes.len() <= config.max_payload_bytes
        && json_depth_within(bytes, config.max_json_depth))
    .then(|| serde_json::from_slice::<serde_json::Value>(bytes).ok())
    .flatten()
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

/// The id an invalid payload is recorded under when it claims none: derived from its bytes.
pub fn invalid_payload_id(bytes: &[u8]) -> Uuid {
    Uuid::new_v5(&INVALID_NAMESPACE, bytes)
}

/// A fast, process-local digest of a delivery (AMQP message id and payload), to recognise the
/// same delivery coming back. Not for storage: the hasher is seeded per process.
pub fn delivery_digest(hasher: &impl BuildHasher, message_id: Option<&str>, bytes: &[u8]) -> u64 {
    let mut h = hasher.build_hasher();
    match message_id {
        Some(m) => {
            h.write_u8(1);
            h.write(m.as_bytes());
        }
        None => h.write_u8(0),
    }
    h.write_usize(bytes.len());
    h.write(bytes);
    h.finish()
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

/// Whether the JSON text nests objects and arrays at most `max` deep (strings are skipped,
/// escapes included). A linear scan that never allocates, run before the parser.
pub fn json_depth_within(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// The first control character of `s` (C0, DEL or C1), if any.
fn control_char(s: &str) -> Option<char> {
    s.chars().find(|c| c.is_control())
}

/// A short identifying field: bounded and free of control characters.
fn check_field(field: &'static str, value: &str, max: usize) -> Result<(), Invalid> {
    if value.len() > max {
        return Err(Invalid::FieldTooLong {
            field,
            len: value.len(),
            max,
        });
    }
    if let Some(c) = control_char(value) {
        return Err(Invalid::ControlChar {
            field,
            code: c as u32,
        });
    }
    Ok(())
}

/// SMS encoding of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmsEncoding {
    /// The GSM 03.38 7-bit alphabet (160 septets in one SMS, 153 per part).
    Gsm7,
    /// UCS-2 / UTF-16 (70 code units in one SMS, 67 per part).
    Ucs2,
}

/// GSM 03.38 basic character set.
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// GSM 03.38 extension table (each takes two septets: escape + character).
const GSM7_EXTENDED: &str = "^{}\\[~]|€\u{c}";

/// How a body is encoded as SMS and how many segments it takes.
pub fn sms_segments(body: &str) -> (SmsEncoding, u32) {
    let mut septets = 0usize;
    let mut gsm = true;
    for c in body.chars() {
        if GSM7_BASIC.contains(c) {
            septets += 1;
        } else if GSM7_EXTENDED.contains(c) {
            septets += 2;
        } else {
            gsm = false;
            break;
        }
    }
    let (encoding, units, single, part) = if gsm {
        (SmsEncoding::Gsm7, septets, 160, 153)
    } else {
        (SmsEncoding::Ucs2, body.encode_utf16().count(), 70, 67)
    };
    let segments = if units <= single {
        1
    } else {
        units.div_ceil(part)
    };
    (encoding, segments as u32)
}

/// Parse and validate one delivery body.
pub fn parse(
    bytes: &[u8],
    envelope: &Envelope,
    config: &MessageConfig,
) -> Result<OutboundMessage, Invalid> {
    if bytes.len() > config.max_payload_bytes {
        return Err(Invalid::PayloadTooLarge {
            max: config.max_payload_bytes,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| Invalid::NotUtf8(e.to_string()))?;
    if !json_depth_within(bytes, config.max_json_depth) {
        return Err(Invalid::TooDeep {
            max: config.max_json_depth,
        });
    }
    let wire: Wire = serde_json::from_str(text)
        .map_err(|e| Invalid::NotJson(truncate_utf8(&e.to_string(), 160).into_owned()))?;
    let to = wire.to.ok_or(Invalid::Missing("to"))?;
    if to.trim().is_empty() {
        return Err(Invalid::Empty("to"));
    }
    if !is_e164(&to) {
        return Err(Invalid::NotE164(quote(&to)));
    }
    let body = wire.body.ok_or(Invalid::Missing("body"))?;
    if body.trim().is_empty() {
        return Err(Invalid::Empty("body"));
    }
    if body.contains('\0') {
        return Err(Invalid::NulInBody);
    }
    let len = body.encode_utf16().count();
    if len > config.max_body_chars {
        return Err(Invalid::BodyTooLong {
            len,
            max: config.max_body_chars,
        });
    }
    let from = match wire.from {
        Some(f) if f.trim().is_empty() || f.len() > config.max_from_bytes => {
            return Err(Invalid::BadFrom);
        }
        Some(f) => {
            check_field("from", &f, config.max_from_bytes)?;
            Some(f)
        }
        None => None,
    };
    if let Some(mid) = envelope.message_id.as_deref() {
        check_field("message_id", mid, AMQP_SHORT_STRING_MAX)?;
    }
    let id = match (wire.id, envelope.message_id.as_deref()) {
        (Some(id), _) => Uuid::parse_str(&id).map_err(|_| Invalid::BadId(quote(&id)))?,
        (None, Some(mid)) => match Uuid::parse_str(mid) {
            Ok(u) => u,
            // A non-UUID message_id still identifies the message: derive from it.
            Err(_) => Uuid::new_v5(&PAYLOAD_NAMESPACE, mid.as_bytes()),
        },
        (None, None) => Uuid::new_v5(&PAYLOAD_NAMESPACE, bytes),
    };
    let correlation_id = match wire.correlation_id.filter(|c| !c.trim().is_empty()) {
        Some(c) => {
            check_field("correlation_id", &c, config.max_correlation_id_bytes)?;
            c
        }
        None => match envelope
            .correlation_id
            .clone()
            .filter(|c| !c.trim().is_empty())
        {
            Some(c) => {
                check_field("correlation_id", &c, config.max_correlation_id_bytes)?;
                c
            }
            None => id.to_string(),
        },
    };
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
        let cfg = MessageConfig {
            max_body_chars: 5,
            ..MessageConfig::default()
        };
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
        let cfg = MessageConfig {
            max_body_chars: 3,
            ..MessageConfig::default()
        };
        assert!(
            parse(
                r#"{"to":"+15551234567","body":"äöü"}"#.as_bytes(),
                &Envelope::default(),
                &cfg
            )
            .is_ok()
        );
    }

    #[test]
    fn bounds_are_checked_before_parsing_and_every_reason_is_bounded() {
        let cfg = MessageConfig {
            max_payload_bytes: 2048,
            ..MessageConfig::default()
        };
        let big = "9".repeat(200_000);
        let cid = "c".repeat(256);
        let cases: Vec<(Vec<u8>, Envelope, &str)> = vec![
            (vec![b'x'; 2049], Envelope::default(), "payload_too_large"),
            (
                format!("{}{}", "[".repeat(40), "]".repeat(40)).into_bytes(),
                Envelope::default(),
                "too_deep",
            ),
            (
                format!(r#"{{"to":"+{}","body":"x"}}"#, &big[..1500]).into_bytes(),
                Envelope::default(),
                "bad_recipient",
            ),
            (
                format!(r#"{{"to":"+15551234567","body":"x","{}":1}}"#, &big[..1500]).into_bytes(),
                Envelope::default(),
                "not_json",
            ),
            (
                format!(
                    r#"{{"to":"+15551234567","body":"x","id":"{}"}}"#,
                    &big[..1500]
                )
                .into_bytes(),
                Envelope::default(),
                "bad_id",
            ),
            (
                br#"{"to":"+15551234567","body":"x","from":"a\u0000b"}"#.to_vec(),
                Envelope::default(),
                "control_character",
            ),
            (
                br#"{"to":"+15551234567","body":"x","correlation_id":"a\u0000b"}"#.to_vec(),
                Envelope::default(),
                "control_character",
            ),
            (
                br#"{"to":"+15551234567","body":"x","correlation_id":"line\nbreak"}"#.to_vec(),
                Envelope::default(),
                "control_character",
            ),
            (
                br#"{"to":"+15551234567","body":"x"}"#.to_vec(),
                Envelope {
                    message_id: None,
                    correlation_id: Some("a\u{0}b".into()),
                },
                "control_character",
            ),
            (
                br#"{"to":"+15551234567","body":"x"}"#.to_vec(),
                Envelope {
                    message_id: Some("m\u{7f}".into()),
                    correlation_id: None,
                },
                "control_character",
            ),
            (
                format!(r#"{{"to":"+15551234567","body":"x","correlation_id":"{cid}"}}"#)
                    .into_bytes(),
                Envelope::default(),
                "field_too_long",
            ),
            (
                br#"{"to":"+15551234567","body":"x","from":"+1555\u0085"}"#.to_vec(),
                Envelope::default(),
                "control_character",
            ),
            (
                br#"{"to":"+15551234567","body":"a\u0000"}"#.to_vec(),
                Envelope::default(),
                "nul_in_body",
            ),
            (
                br#"{"to":"+15551234567","to":"+15551234568","body":"x"}"#.to_vec(),
                Envelope::default(),
                "not_json",
            ),
            (
                br#"{"to":"+15551234567","body":["x"]}"#.to_vec(),
                Envelope::default(),
                "not_json",
            ),
        ];
        for (input, env, class) in cases {
            let err = parse(&input, &env, &cfg).unwrap_err();
            assert_eq!(err.class(), class, "{err}");
            assert!(err.to_string().len() <= 200, "bounded: {err}");
            assert!(err.reason().len() <= MAX_REASON_BYTES);
        }
        // Newlines and tabs are fine in the body, and a 255-byte correlation id is accepted.
        let ok = format!(
            r#"{{"to":"+15551234567","body":"two\nlines\tand a tab","correlation_id":"{}"}}"#,
            "c".repeat(255)
        );
        assert!(parse(ok.as_bytes(), &Envelope::default(), &cfg).is_ok());
    }

    #[test]
    fn body_limit_counts_utf16_code_units() {
        let cfg = MessageConfig {
            max_body_chars: 3,
            ..MessageConfig::default()
        };
        let two_emoji = r#"{"to":"+15551234567","body":"😀😀"}"#;
        let err = parse(two_emoji.as_bytes(), &Envelope::default(), &cfg).unwrap_err();
        assert_eq!(err, Invalid::BodyTooLong { len: 4, max: 3 });
    }

    #[test]
    fn segments_follow_gsm7_and_ucs2() {
        let cases: Vec<(String, SmsEncoding, u32)> = vec![
            ("hello".into(), SmsEncoding::Gsm7, 1),
            ("x".repeat(160), SmsEncoding::Gsm7, 1),
            ("x".repeat(161), SmsEncoding::Gsm7, 2),
            ("x".repeat(306), SmsEncoding::Gsm7, 2),
            ("x".repeat(307), SmsEncoding::Gsm7, 3),
            // Extension characters take two septets.
            ("€".repeat(80), SmsEncoding::Gsm7, 1),
            ("€".repeat(81), SmsEncoding::Gsm7, 2),
            ("äöüß@£".into(), SmsEncoding::Gsm7, 1),
            ("привет".into(), SmsEncoding::Ucs2, 1),
            ("я".repeat(70), SmsEncoding::Ucs2, 1),
            ("я".repeat(71), SmsEncoding::Ucs2, 2),
            ("😀".repeat(35), SmsEncoding::Ucs2, 1),
            ("😀".repeat(36), SmsEncoding::Ucs2, 2),
        ];
        for (body, encoding, segments) in cases {
            assert_eq!(sms_segments(&body), (encoding, segments), "{body:?}");
        }
    }

    #[test]
    fn depth_scan_skips_strings() {
        assert!(json_depth_within(br#"{"a":"[[[[[[[[[[[[["}"#, 2));
        assert!(json_depth_within(br#"{"a":"\"[[[["}"#, 1));
        assert!(!json_depth_within(br#"{"a":[[1]]}"#, 2));
        assert!(json_depth_within(br#"{"a":[[1]]}"#, 3));
    }

    #[test]
    fn truncation_keeps_char_boundaries() {
        let s = "ä".repeat(100);
        let t = truncate_utf8(&s, 11);
        assert!(t.len() <= 11 && t.ends_with('…'), "{t}");
        assert_eq!(truncate_utf8("short", 11), "short");
    }
}
