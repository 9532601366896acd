//! Reconciliation: before an attempt that follows one whose fate is unknown (a timeout after
//! the request went out, a worker killed mid-call), ask the provider whether the earlier one
//! went through, so that it is not sent twice.
//!
//! Twilio has no idempotency key for sending; it is asked by listing the account's messages
//! to the recipient sent since the earlier attempt's day ([`TwilioClient::find`]) and matching
//! one that has the same text and sender and was created while the earlier attempt was
//! running ([`is_the_attempt`]). The webhook provider needs no lookup: it deduplicates by the
//! `Idempotency-Key` header (the message id) itself. The simulation has nothing to ask.
//!
//! A lookup never blocks a message: when it fails, the caller sends as it would have without
//! it (the duplicate risk of today, no worse).
//!
//! [`TwilioClient::find`]: super::TwilioClient::find

use chrono::{DateTime, Utc};

use super::MessageResource;
use crate::message::OutboundMessage;

/// What the provider says about an earlier attempt whose fate is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciliation {
    /// It went through: the provider has it under this id. Do not send again.
    Found {
        /// The provider's id of the message it has.
        provider_message_id: String,
    },
    /// The provider has no such message: send it.
    NotFound,
    /// This provider is not asked (it deduplicates by itself, or there is nothing to ask).
    Unsupported,
    /// The lookup did not give an answer; send as without it.
    Failed(String),
}

/// The `result` labels of `drover_reconciled_total`, one per [`Reconciliation`] variant.
pub const RESULTS: [&str; 4] = ["found", "not_found", "unsupported", "failed"];

impl Reconciliation {
    /// The `result` label of `drover_reconciled_total` (one of [`RESULTS`]).
    pub fn label(&self) -> &'static str {
        RESULTS[match self {
            Reconciliation::Found { .. } => 0,
            Reconciliation::NotFound => 1,
            Reconciliation::Unsupported => 2,
            Reconciliation::Failed(_) => 3,
        }]
    }
}

/// When the earlier attempt could have reached the provider, in Unix ms: from its start to
/// its start plus the provider timeout, widened on both sides by [`CLOCK_SLACK_MS`] for the
/// difference between our clock and the provider's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptWindow {
    pub from_ms: i64,
    pub until_ms: i64,
}

/// How far the provider's clock may be from ours.
pub const CLOCK_SLACK_MS: i64 = 60_000;

impl AttemptWindow {
    /// The window of an attempt that started at `started_ms` and could run `timeout_ms`.
    pub fn of_attempt(started_ms: i64, timeout_ms: u64) -> AttemptWindow {
        AttemptWindow::spanning(started_ms, started_ms, timeout_ms)
    }

    /// The window of attempts that started from `first_ms` to `last_ms`, each able to run
    /// `timeout_ms`: any of them may be the one that went through.
    pub fn spanning(first_ms: i64, last_ms: i64, timeout_ms: u64) -> AttemptWindow {
        AttemptWindow {
            from_ms: first_ms.min(last_ms) - CLOCK_SLACK_MS,
            until_ms: first_ms.max(last_ms) + timeout_ms as i64 + CLOCK_SLACK_MS,
        }
    }

    /// The `DateSent>` filter: the UTC day the window opens (Twilio filters by day).
    pub fn first_day(&self) -> String {
        DateTime::<Utc>::from_timestamp_millis(self.from_ms)
            .unwrap_or_default()
            .format("%Y-%m-%d")
            .to_string()
    }

    fn contains(&self, ms: i64) -> bool {
        (self.from_ms..=self.until_ms).contains(&ms)
    }
}

/// The sender a send names: `From`, else the messaging service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SentFrom<'a> {
    Number(&'a str),
    Service(&'a str),
}

/// Whether `m`, a message the provider lists, is the one the earlier attempt of `msg` sent:
/// an outbound message to the same recipient with the same text and sender, created within
/// the attempt's window. Pure.
///
/// Two different messages with the same recipient and text created within the same window
/// of a few seconds cannot be told apart this way; the caller also checks that the id found
/// is not already another message's.
pub fn is_the_attempt(
    m: &MessageResource,
    msg: &OutboundMessage,
    from: SentFrom<'_>,
    window: AttemptWindow,
) -> bool {
    let outbound = m
        .direction
        .as_deref()
        .is_none_or(|d| d.starts_with("outbound"));
    let sender = match from {
        SentFrom::Number(n) => m.from.as_deref() == Some(n),
        // The service picks the number: the resource names the service.
        SentFrom::Service(s) => m.messaging_service_sid.as_deref() == Some(s),
    };
    let created = m
        .date_created
        .as_deref()
        .and_then(|d| DateTime::parse_from_rfc2822(d).ok())
        .map(|d| d.timestamp_millis());
    outbound
        && sender
        && m.to.as_deref() == Some(msg.to.as_str())
        && m.body.as_deref() == Some(msg.body.as_str())
        && m.sid.as_deref().is_some_and(|s| !s.is_empty())
        && created.is_some_and(|c| window.contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn msg() -> OutboundMessage {
        OutboundMessage {
            id: Uuid::nil(),
            to: "+15551234567".into(),
            body: "your code is 1234".into(),
            from: None,
            correlation_id: "c".into(),
        }
    }

    /// 2026-12-04 10:00:00 UTC.
    const T: i64 = 1_796_378_400_000;

    fn listed(date_created: &str) -> MessageResource {
        MessageResource {
            sid: Some("SM1".into()),
            to: Some("+15551234567".into()),
            from: Some("+15550000000".into()),
            body: Some("your code is 1234".into()),
            direction: Some("outbound-api".into()),
            date_created: Some(date_created.into()),
            ..MessageResource::default()
        }
    }

    #[test]
    fn the_window_and_its_first_day() {
        let w = AttemptWindow::of_attempt(T, 10_000);
        assert_eq!(w.from_ms, T - 60_000);
        assert_eq!(w.until_ms, T + 70_000);
        assert_eq!(w.first_day(), "2026-12-04");
        // Just after midnight, the slack reaches into the day before.
        assert_eq!(
            AttemptWindow::of_attempt(T - 10 * 3_600_000 + 30_000, 10_000).first_day(),
            "2026-12-03"
        );
    }

    #[test]
    fn matches_only_the_attempts_own_message() {
        let w = AttemptWindow::of_attempt(T, 10_000);
        let number = SentFrom::Number("+15550000000");
        let at = "Fri, 04 Dec 2026 10:00:03 +0000";
        let cases: Vec<(&str, MessageResource, SentFrom<'_>, bool)> = vec![
            ("the same message, 3 s in", listed(at), number, true),
            (
                "at the window's far edge",
                listed("Fri, 04 Dec 2026 10:01:10 +0000"),
                number,
                true,
            ),
            (
                "after the window",
                listed("Fri, 04 Dec 2026 10:01:11 +0000"),
                number,
                false,
            ),
            (
                "an hour before",
                listed("Fri, 04 Dec 2026 09:00:00 +0000"),
                number,
                false,
            ),
            (
                "another text",
                MessageResource {
                    body: Some("your code is 9999".into()),
                    ..listed(at)
                },
                number,
                false,
            ),
            (
                "another recipient",
                MessageResource {
                    to: Some("+15557654321".into()),
                    ..listed(at)
                },
                number,
                false,
            ),
            (
                "another sender",
                MessageResource {
                    from: Some("+15559999999".into()),
                    ..listed(at)
                },
                number,
                false,
            ),
            (
                "inbound",
                MessageResource {
                    direction: Some("inbound".into()),
                    ..listed(at)
                },
                number,
                false,
            ),
            (
                "no sid",
                MessageResource {
                    sid: None,
                    ..listed(at)
                },
                number,
                false,
            ),
            ("an unreadable date", listed("yesterday"), number, false),
            (
                "through the messaging service",
                MessageResource {
                    from: None,
                    messaging_service_sid: Some("MG1".into()),
                    ..listed(at)
                },
                SentFrom::Service("MG1"),
                true,
            ),
            (
                "through another service",
                MessageResource {
                    messaging_service_sid: Some("MG2".into()),
                    ..listed(at)
                },
                SentFrom::Service("MG1"),
                false,
            ),
        ];
        for (name, m, from, want) in cases {
            assert_eq!(is_the_attempt(&m, &msg(), from, w), want, "{name}");
        }
    }
}
