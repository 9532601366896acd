//! What drover publishes about a message it sets aside (the invalid queue) or fails (the
//! failed queue), built so that the publish can never fail for size or shape.
//!
//! RabbitMQ closes the whole connection (FRAME_ERROR) when a message's properties exceed the
//! negotiated frame size (131,072 bytes by default), and refuses ids over 255 bytes. A reason
//! quoting a 200 KB field, or a copied header that was already large, must therefore never
//! reach the publisher as it is. Everything here is a pure function of its inputs, so the
//! bounds are checked by table tests and a property test over arbitrary input.

use std::collections::BTreeMap;

use crate::broker::Outgoing;
use crate::message::{AMQP_SHORT_STRING_MAX, MAX_REASON_BYTES, truncate_utf8};
pub use crate::message::{
    ATTEMPTS_HEADER, BODY_TRUNCATED_HEADER, ERROR_CLASS_HEADER, ERROR_HEADER,
    HEADERS_DROPPED_HEADER, INVALID_CLASS_HEADER, INVALID_REASON_HEADER,
};

/// Most bytes (keys plus values) of a delivery's own headers copied to the invalid queue: the
/// properties must fit one frame (RabbitMQ's default frame_max is 131,072 bytes), with room
/// left for ours.
pub const COPIED_HEADERS_BUDGET: usize = 16 * 1024;
/// Longest single header value copied.
pub const COPIED_HEADER_VALUE_MAX: usize = 4 * 1024;

/// Upper bound of the encoded size of an [`Outgoing`]'s properties (ids and headers), used by
/// tests to check that what drover publishes fits a frame: each header costs its key, a type
/// byte, a length and its value.
pub fn properties_size(out: &Outgoing) -> usize {
    let ids = out.message_id.as_ref().map_or(0, |s| s.len() + 1)
        + out.correlation_id.as_ref().map_or(0, |s| s.len() + 1);
    let headers: usize = out
        .headers
        .iter()
        .map(|(k, v)| 1 + k.len() + 1 + 4 + v.len())
        .sum();
    ids + headers + 64
}

/// The raw parts of a delivery that a set-aside copies.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    pub body: &'a [u8],
    pub message_id: Option<&'a str>,
    pub correlation_id: Option<&'a str>,
    pub headers: &'a BTreeMap<String, String>,
}

/// An AMQP id property kept only if it fits (≤ 255 bytes): the memory broker takes any string.
fn fitting_id(id: Option<&str>) -> Option<String> {
    id.filter(|s| s.len() <= AMQP_SHORT_STRING_MAX)
        .map(str::to_owned)
}

/// The invalid-queue copy of a delivery: its body (cut to `max_body_bytes`, flagged), its ids
/// when they fit, as many of its string headers as fit the budget, and the bounded reason and
/// class.
pub fn invalid_copy(r: Received<'_>, class: &str, reason: &str, max_body_bytes: usize) -> Outgoing {
    let mut headers = BTreeMap::new();
    let mut budget = COPIED_HEADERS_BUDGET;
    let mut dropped = 0usize;
    for (k, v) in r.headers {
        let cost = k.len() + v.len();
        let ours = k.starts_with("x-drover-");
        if ours
            || k.is_empty()
            || k.len() > AMQP_SHORT_STRING_MAX
            || v.len() > COPIED_HEADER_VALUE_MAX
            || cost > budget
        {
            // Our own headers are set below; an earlier set-aside's are superseded.
            dropped += usize::from(!ours);
            continue;
        }
        budget -= cost;
        headers.insert(k.clone(), v.clone());
    }
    if dropped > 0 {
        headers.insert(HEADERS_DROPPED_HEADER.to_owned(), dropped.to_string());
    }
    headers.insert(
        INVALID_REASON_HEADER.to_owned(),
        truncate_utf8(reason, MAX_REASON_BYTES).into_owned(),
    );
    headers.insert(
        INVALID_CLASS_HEADER.to_owned(),
        truncate_utf8(class, 64).into_owned(),
    );
    let body = if r.body.len() > max_body_bytes {
        headers.insert(BODY_TRUNCATED_HEADER.to_owned(), r.body.len().to_string());
        r.body[..max_body_bytes].to_vec()
    } else {
        r.body.to_vec()
    };
    Outgoing {
        body,
        message_id: fitting_id(r.message_id),
        correlation_id: fitting_id(r.correlation_id),
        headers,
    }
}

/// The headers of a failed-queue copy: class, bounded error text, attempts.
pub fn failed_headers(class: &str, error: &str, attempts: u32) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            ERROR_CLASS_HEADER.to_owned(),
            truncate_utf8(class, 64).into_owned(),
        ),
        (
            ERROR_HEADER.to_owned(),
            truncate_utf8(error, MAX_REASON_BYTES).into_owned(),
        ),
        (ATTEMPTS_HEADER.to_owned(), attempts.to_string()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_inputs_are_bounded() {
        let big = "z".repeat(200_000);
        let mut hs = BTreeMap::new();
        hs.insert("trace".to_owned(), "t".repeat(100));
        hs.insert("huge".to_owned(), big.clone());
        hs.insert(INVALID_REASON_HEADER.to_owned(), big.clone());
        for i in 0..100 {
            hs.insert(format!("h{i:03}"), "v".repeat(1000));
        }
        let body = vec![b'b'; 300_000];
        let out = invalid_copy(
            Received {
                body: &body,
                message_id: Some(&big),
                correlation_id: Some("corr"),
                headers: &hs,
            },
            "bad_recipient",
            &big,
            64 * 1024,
        );
        assert_eq!(out.body.len(), 64 * 1024);
        assert_eq!(out.headers[BODY_TRUNCATED_HEADER], "300000");
        assert_eq!(out.message_id, None, "a 200 KB id is not copied");
        assert_eq!(out.correlation_id.as_deref(), Some("corr"));
        assert!(out.headers[INVALID_REASON_HEADER].len() <= MAX_REASON_BYTES);
        assert_eq!(out.headers["trace"], "t".repeat(100));
        assert!(!out.headers.contains_key("huge"));
        let dropped: usize = out.headers[HEADERS_DROPPED_HEADER].parse().unwrap();
        assert!(dropped >= 2, "{dropped}");
        assert!(
            properties_size(&out) < 24 * 1024,
            "{}",
            properties_size(&out)
        );
        assert_eq!(out.validate(), Ok(()));
    }

    #[test]
    fn small_inputs_are_kept_as_they_are() {
        let hs = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
        let out = invalid_copy(
            Received {
                body: b"not json",
                message_id: Some("m"),
                correlation_id: None,
                headers: &hs,
            },
            "not_json",
            "body is not a JSON object",
            1024,
        );
        assert_eq!(out.body, b"not json");
        assert_eq!(out.message_id.as_deref(), Some("m"));
        assert_eq!(out.headers.len(), 3);
        assert!(!out.headers.contains_key(BODY_TRUNCATED_HEADER));
    }

    #[test]
    fn failed_headers_are_bounded() {
        let h = failed_headers("permanent", &"e".repeat(100_000), 3);
        assert!(h[ERROR_HEADER].len() <= MAX_REASON_BYTES);
        assert_eq!(h[ATTEMPTS_HEADER], "3");
    }
}
