//! The pure outcome decision of a delivery: what a send result means for the message
//! (sent, retry, deferred, ambiguous, failed), table-tested here; `delivery.rs` applies it.

use crate::pipeline::provider_worker::SendResult;
use crate::provider::SendOutcome;
use crate::store::AttemptOutcome;

/// What to record for an attempt, and (class, error) when the message goes to the failed
/// queue.
pub type Decision = (AttemptOutcome, Option<(&'static str, String)>);

/// What to record for a send result, and whether (with which class and error) the message
/// goes to the failed queue. `latency_ms`: how long the provider call took (recorded on the
/// attempt); `provider`: the chain's provider that made it; `retry_at` gives the next
/// attempt's due time.
pub fn decide(
    sent: SendResult,
    attempt: u32,
    max_attempts: u32,
    latency_ms: u64,
    provider: Option<String>,
    mut retry_at: impl FnMut() -> i64,
) -> Decision {
    match sent {
        SendResult::CircuitOpen { retry_at_ms } => (
            AttemptOutcome::Deferred {
                next_attempt_at: retry_at_ms,
                reason: "provider circuit open".into(),
            },
            None,
        ),
        SendResult::Done(SendOutcome::Sent {
            provider_message_id,
        }) => (
            AttemptOutcome::Sent {
                provider_message_id,
                latency_ms,
                provider: provider.clone(),
            },
            None,
        ),
        SendResult::Done(SendOutcome::ProviderFault { status, detail }) => (
            AttemptOutcome::Deferred {
                next_attempt_at: retry_at(),
                reason: bounded(format!("provider fault {status}: {detail}")),
            },
            None,
        ),
        SendResult::Done(SendOutcome::Permanent { code, detail }) => {
            let error = bounded(match code {
                Some(code) => format!("permanent provider error {code}: {detail}"),
                None => format!("permanent provider error: {detail}"),
            });
            (
                AttemptOutcome::Failed {
                    error_class: "permanent".into(),
                    error: error.clone(),
                    latency_ms,
                    provider: provider.clone(),
                },
                Some(("permanent", error)),
            )
        }
        SendResult::Done(other) => {
            let class = other.error_class().to_string();
            let error = bounded(other.to_string());
            if attempt >= max_attempts {
                let error = bounded(format!("gave up after {attempt} attempts; last: {error}"));
                (
                    AttemptOutcome::Failed {
                        error_class: class,
                        error: error.clone(),
                        latency_ms,
                        provider: provider.clone(),
                    },
                    Some(("exhausted", error)),
                )
            } else if matches!(other, SendOutcome::Ambiguous { .. }) {
                (
                    AttemptOutcome::Ambiguous {
                        next_attempt_at: retry_at(),
                        error,
                        latency_ms,
                        provider: provider.clone(),
                    },
                    None,
                )
            } else {
                (
                    AttemptOutcome::Retry {
                        next_attempt_at: retry_at(),
                        error_class: class,
                        error,
                        latency_ms,
                        provider: provider.clone(),
                    },
                    None,
                )
            }
        }
    }
}

/// Error text as stored and published: a provider's answer can be as long as it likes.
fn bounded(s: String) -> String {
    crate::message::truncate_utf8(&s, crate::message::MAX_REASON_BYTES).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_per_send_result() {
        let due = || 42;
        let cases: Vec<(SendResult, u32, &str, Option<&str>)> = vec![
            (
                SendResult::CircuitOpen { retry_at_ms: 7 },
                1,
                "deferred",
                None,
            ),
            (
                SendResult::Done(SendOutcome::Sent {
                    provider_message_id: "SM1".into(),
                }),
                1,
                "sent",
                None,
            ),
            (
                SendResult::Done(SendOutcome::Permanent {
                    code: Some(21610),
                    detail: "unsubscribed".into(),
                }),
                1,
                "failed",
                Some("permanent"),
            ),
            (
                SendResult::Done(SendOutcome::ProviderFault {
                    status: 401,
                    detail: "x".repeat(100_000),
                }),
                1,
                "deferred",
                None,
            ),
        ];
        for (sent, attempt, kind, failed) in cases {
            let (outcome, f) = decide(sent, attempt, 5, 37, Some("backup".into()), due);
            assert_eq!(outcome.kind().as_str(), kind);
            // The call's latency goes with every outcome of a call (none for a deferral).
            let latency = serde_json::to_value(&outcome).unwrap()["latency_ms"].clone();
            if kind != "deferred" {
                assert_eq!(latency, 37, "{kind}");
                assert_eq!(outcome.provider(), Some("backup"), "{kind}");
            }
            assert_eq!(f.as_ref().map(|(c, _)| *c), failed);
            let text = serde_json::to_string(&outcome).unwrap();
            assert!(text.len() < 2 * crate::message::MAX_REASON_BYTES, "bounded");
        }
    }
}
