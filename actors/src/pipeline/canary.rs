//! `CanaryWorker`: an end-to-end probe through the whole path.
//!
//! Every `[canary] every_ms` it publishes a message to `canary.to` onto the work queue, as any
//! client would, and watches its record every `poll_ms` until it knows how the message fared:
//!
//! * `sent`: the provider accepted it; `drover_canary_seconds{stage="sent"}` is the time from
//!   publish to the provider's acceptance (the sending attempt's end).
//! * `delivered`: the provider says it reached the handset, by a delivery receipt when receipts
//!   are on, else (Twilio) by asking for the message's status (`FetchMessage`);
//!   `drover_canary_seconds{stage="delivered"}` is the time from publish to that news.
//! * `failed`: publishing was refused, an attempt failed (a retry is scheduled), the message
//!   failed or was set aside, or the provider says it was not delivered. Alert `canary`.
//! * `late`: not sent within `late_ms`, or not delivered within `delivery_late_ms`. Alert
//!   `canary`.
//!
//! Each canary counts once in `drover_canary_total{result}`. One canary at a time: after a
//! `failed` or `late` one, the next is published only once the previous has reached a final
//! status, so an outage never piles canaries up. With Twilio's test credentials and its magic
//! test numbers a canary costs nothing; a provider that cannot be asked for a status (the
//! webhook, the simulation, test credentials) measures to `sent` only.

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::broker::Route;
use crate::message::OutboundMessage;
use crate::pipeline::Pipeline;
use crate::pipeline::alerts::{Alert, AlertKind, raise};
use crate::pipeline::broker::publisher::publish;
use crate::pipeline::provider_worker::ProviderMessage;
use crate::provider::{Fetched, ProviderKind};
use crate::store::{MessageRecord, MessageStatus, OutcomeKind};

/// `[canary]`: the end-to-end probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CanaryConfig {
    /// Publish a canary this often; 0 = no canary.
    pub every_ms: u64,
    /// Its recipient (E.164): a number of your own, or a provider's test number.
    pub to: String,
    /// Its text.
    pub body: String,
    /// Alert when a canary is not sent this long after it was published.
    pub late_ms: u64,
    /// Alert when a canary is not known delivered this long after it was published.
    pub delivery_late_ms: u64,
    /// How often the canary in flight is looked at.
    pub poll_ms: u64,
}

impl Default for CanaryConfig {
    fn default() -> Self {
        CanaryConfig {
            every_ms: 0,
            to: String::new(),
            body: "drover canary".into(),
            late_ms: 60_000,
            delivery_late_ms: 300_000,
            poll_ms: 1_000,
        }
    }
}

impl CanaryConfig {
    /// Refuse a canary that cannot work (an error naming the key).
    pub fn validate(&self) -> Result<(), String> {
        if self.every_ms == 0 {
            return Ok(());
        }
        if !crate::message::is_e164(&self.to) {
            return Err(format!(
                "canary.to must be an E.164 number (+ then 2 to 15 digits) when canary.every_ms is set, not {:?}",
                self.to
            ));
        }
        if self.body.trim().is_empty() {
            return Err("canary.body is empty".into());
        }
        if self.poll_ms == 0 || self.late_ms == 0 {
            return Err("canary.poll_ms and canary.late_ms must be positive".into());
        }
        Ok(())
    }
}

/// A canary being watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    pub id: Uuid,
    pub published_ms: i64,
    /// When it was seen sent (the sending attempt's end), once it was.
    pub sent_ms: Option<i64>,
}

/// What the canary's record and the provider say now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// `None`: no record yet (not consumed yet, or the store did not answer).
    pub status: Option<MessageStatus>,
    /// When the sending attempt ended, for a sent message.
    pub sent_at_ms: Option<i64>,
    pub last_error: Option<String>,
    /// The provider's last word on it (receipt or fetched status): status, error code, when.
    pub delivery: Option<(String, Option<i64>, i64)>,
}

/// A canary's result (the `result` label of `drover_canary_total`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// Sent; no delivery stage to wait for.
    Sent {
        after_ms: i64,
    },
    Delivered {
        after_ms: i64,
    },
    Failed {
        why: String,
    },
    Late {
        stage: &'static str,
        after_ms: i64,
    },
}

impl Finish {
    pub fn label(&self) -> &'static str {
        match self {
            Finish::Sent { .. } => "sent",
            Finish::Delivered { .. } => "delivered",
            Finish::Failed { .. } => "failed",
            Finish::Late { .. } => "late",
        }
    }
}

/// What to do after a look at the canary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Wait,
    /// Seen sent for the first time, `after_ms` after publish; now waiting for delivery.
    Sent {
        at_ms: i64,
        after_ms: i64,
    },
    Finish(Finish),
}

/// Statuses a receipt can end with that mean the SMS arrived.
const ARRIVED: [&str; 2] = ["delivered", "read"];
/// ... and that mean it did not.
const NOT_ARRIVED: [&str; 3] = ["undelivered", "failed", "canceled"];

/// The next step for canary `w` given what is `seen` at `now_ms`; `delivery_stage`: whether
/// delivery can be learnt at all. Pure.
pub fn step(w: &Watch, seen: &Seen, now_ms: i64, c: &CanaryConfig, delivery_stage: bool) -> Step {
    let age = now_ms - w.published_ms;
    let why = || seen.last_error.clone().unwrap_or_default();
    match seen.status {
        Some(MessageStatus::Failed) => Step::Finish(Finish::Failed {
            why: format!("failed: {}", why()),
        }),
        Some(MessageStatus::Invalid) => Step::Finish(Finish::Failed {
            why: format!("set aside as invalid: {}", why()),
        }),
        Some(MessageStatus::RetryScheduled) => Step::Finish(Finish::Failed {
            why: format!("an attempt failed, retry scheduled: {}", why()),
        }),
        Some(MessageStatus::Sent) => {
            if w.sent_ms.is_none() {
                let at = seen.sent_at_ms.unwrap_or(now_ms);
                let after_ms = at - w.published_ms;
                if after_ms > c.late_ms as i64 {
                    return Step::Finish(Finish::Late {
                        stage: "sent",
                        after_ms,
                    });
                }
                if !delivery_stage {
                    return Step::Finish(Finish::Sent { after_ms });
                }
                return Step::Sent {
                    at_ms: at,
                    after_ms,
                };
            }
            match &seen.delivery {
                Some((status, _, at)) if ARRIVED.contains(&status.as_str()) => {
                    Step::Finish(Finish::Delivered {
                        after_ms: at - w.published_ms,
                    })
                }
                Some((status, code, _)) if NOT_ARRIVED.contains(&status.as_str()) => {
                    Step::Finish(Finish::Failed {
                        why: match code {
                            Some(code) => format!("the provider says {status} (error {code})"),
                            None => format!("the provider says {status}"),
                        },
                    })
                }
                _ if age > c.delivery_late_ms as i64 => Step::Finish(Finish::Late {
                    stage: "delivered",
                    after_ms: age,
                }),
                _ => Step::Wait,
            }
        }
        // Not recorded yet, claimed, or being sent.
        _ if age > c.late_ms as i64 => Step::Finish(Finish::Late {
            stage: "sent",
            after_ms: age,
        }),
        _ => Step::Wait,
    }
}

/// How the canary learns of delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeliveryCheck {
    Receipts,
    Fetch,
    None,
}

/// Messages of [`CanaryWorker`].
#[derive(Debug)]
pub enum CanaryMessage {
    /// Internal: publish a canary if it is time, look at the one in flight.
    #[doc(hidden)]
    Tick,
}

/// The canary actor.
#[derive(Debug, Clone, Copy)]
pub struct CanaryWorker;

/// State of [`CanaryWorker`].
#[derive(Debug)]
pub struct CanaryState {
    p: Pipeline,
    check: DeliveryCheck,
    /// The canary being watched.
    watch: Option<Watch>,
    /// A canary that finished `failed` or `late` but has no final status yet: no new one
    /// until it has.
    unsettled: Option<Uuid>,
    next_publish_ms: i64,
}

fn seen_of(rec: Option<MessageRecord>) -> Seen {
    let Some(rec) = rec else {
        return Seen::default();
    };
    let sent_at_ms = rec
        .history
        .iter()
        .rev()
        .find(|a| a.outcome == Some(OutcomeKind::Sent))
        .and_then(|a| a.finished_at)
        .or((rec.status == MessageStatus::Sent).then_some(rec.updated_at));
    Seen {
        status: Some(rec.status),
        sent_at_ms,
        last_error: rec.last_error,
        delivery: rec
            .delivery
            .map(|d| (d.status, d.error_code, d.received_at)),
    }
}

async fn record_of(p: &Pipeline, id: Uuid) -> Option<MessageRecord> {
    crate::pipeline::admin::find(p, id)
        .await
        .unwrap_or_else(|e| {
            tracing::debug!(error = %e, canary = %id, "canary record not read");
            None
        })
}

impl CanaryState {
    async fn publish(&mut self) {
        let c = &self.p.config.canary;
        let id = Uuid::new_v4();
        let msg = OutboundMessage {
            id,
            to: c.to.clone(),
            body: c.body.clone(),
            from: None,
            correlation_id: format!("canary-{}", id.simple()),
        };
        let now = self.p.clock.now_ms();
        self.next_publish_ms = now + c.every_ms as i64;
        match publish(&self.p, Route::Work, msg.outgoing()).await {
            Ok(()) => {
                tracing::debug!(canary = %id, "canary published");
                self.watch = Some(Watch {
                    id,
                    published_ms: now,
                    sent_ms: None,
                });
            }
            Err(e) => self.finish(
                id,
                Finish::Failed {
                    why: format!("not accepted for sending: {e}"),
                },
                false,
            ),
        }
    }

    /// The provider's word on a sent canary, when receipts do not bring it.
    async fn fetched(&mut self, sid: &str) -> Option<(String, Option<i64>, i64)> {
        let provider = self.p.provider().ok()?;
        let answer = ractor::call!(provider, |reply| ProviderMessage::Fetch {
            provider_message_id: sid.to_string(),
            reply
        });
        match answer {
            Ok(Fetched::Known(r)) => Some((r.status, r.error_code, self.p.clock.now_ms())),
            Ok(other) => {
                // Test credentials cannot fetch: measure to `sent` from now on.
                tracing::warn!(answer = ?other, "the provider could not be asked for the canary's status; canaries are measured to sent only");
                self.check = DeliveryCheck::None;
                None
            }
            Err(e) => {
                tracing::debug!(error = %e, "canary status not fetched");
                None
            }
        }
    }

    async fn look(&mut self) {
        let Some(w) = self.watch.clone() else {
            return;
        };
        let rec = record_of(&self.p, w.id).await;
        let sid = rec.as_ref().and_then(|r| r.provider_message_id.clone());
        let mut seen = seen_of(rec);
        if w.sent_ms.is_some()
            && self.check == DeliveryCheck::Fetch
            && let Some(sid) = sid
        {
            seen.delivery = self.fetched(&sid).await;
        }
        let delivery_stage = self.check != DeliveryCheck::None;
        let now = self.p.clock.now_ms();
        match step(&w, &seen, now, &self.p.config.canary, delivery_stage) {
            Step::Wait => {}
            Step::Sent { at_ms, after_ms } => {
                self.p
                    .ops
                    .metrics
                    .canary_seconds("sent")
                    .set(after_ms as f64 / 1_000.0);
                if let Some(w) = self.watch.as_mut() {
                    w.sent_ms = Some(at_ms);
                }
            }
            Step::Finish(finish) => {
                let settled = matches!(
                    seen.status,
                    Some(MessageStatus::Sent | MessageStatus::Failed | MessageStatus::Invalid)
                );
                self.watch = None;
                self.finish(w.id, finish, settled);
            }
        }
    }

    fn finish(&mut self, id: Uuid, finish: Finish, settled: bool) {
        let metrics = &self.p.ops.metrics;
        metrics.canary(finish.label()).increment(1);
        match &finish {
            Finish::Sent { after_ms } => {
                metrics
                    .canary_seconds("sent")
                    .set(*after_ms as f64 / 1_000.0);
                tracing::info!(canary = %id, after_ms, "canary sent");
            }
            Finish::Delivered { after_ms } => {
                metrics
                    .canary_seconds("delivered")
                    .set(*after_ms as f64 / 1_000.0);
                tracing::info!(canary = %id, after_ms, "canary delivered");
            }
            Finish::Failed { why } => raise(
                &self.p,
                Alert {
                    kind: AlertKind::Canary,
                    key: "canary:failed".into(),
                    summary: format!("canary {id} failed: {why}"),
                    details: serde_json::json!({ "id": id, "result": "failed", "reason": why }),
                },
            ),
            Finish::Late { stage, after_ms } => raise(
                &self.p,
                Alert {
                    kind: AlertKind::Canary,
                    key: "canary:late".into(),
                    summary: format!("canary {id} not {stage} after {after_ms} ms"),
                    details: serde_json::json!({
                        "id": id,
                        "result": "late",
                        "stage": stage,
                        "after_ms": after_ms,
                    }),
                },
            ),
        }
        if !settled && matches!(finish, Finish::Failed { .. } | Finish::Late { .. }) {
            self.unsettled = Some(id);
        }
    }

    /// Whether the unsettled canary (if any) has reached a final status; its real time to
    /// sent is recorded when it got there.
    async fn settled(&mut self) -> bool {
        let Some(id) = self.unsettled else {
            return true;
        };
        let Some(rec) = record_of(&self.p, id).await else {
            return false;
        };
        let seen = seen_of(Some(rec));
        match seen.status {
            Some(MessageStatus::Sent | MessageStatus::Failed | MessageStatus::Invalid) => {
                self.unsettled = None;
                true
            }
            _ => false,
        }
    }
}

impl Actor for CanaryWorker {
    type Msg = CanaryMessage;
    type State = CanaryState;
    type Arguments = Pipeline;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        p: Pipeline,
    ) -> Result<Self::State, ActorProcessingErr> {
        p.config.canary.validate()?;
        myself.send_interval(
            Duration::from_millis(p.config.canary.poll_ms.max(10)),
            || CanaryMessage::Tick,
        );
        let check = if p.config.provider.receipts_on() {
            DeliveryCheck::Receipts
        } else if p.config.provider.kind == ProviderKind::Twilio {
            DeliveryCheck::Fetch
        } else {
            DeliveryCheck::None
        };
        let now = p.clock.now_ms();
        Ok(CanaryState {
            p,
            check,
            watch: None,
            unsettled: None,
            next_publish_ms: now,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let CanaryMessage::Tick = msg;
        if state.watch.is_some() {
            state.look().await;
        } else if state.p.clock.now_ms() >= state.next_publish_ms && state.settled().await {
            state.publish().await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c() -> CanaryConfig {
        CanaryConfig {
            every_ms: 10_000,
            to: "+15005550006".into(),
            late_ms: 1_000,
            delivery_late_ms: 5_000,
            ..CanaryConfig::default()
        }
    }

    fn seen(status: Option<MessageStatus>) -> Seen {
        Seen {
            status,
            sent_at_ms: None,
            last_error: Some("boom".into()),
            delivery: None,
        }
    }

    #[test]
    fn steps() {
        use MessageStatus as S;
        let fresh = Watch {
            id: Uuid::nil(),
            published_ms: 0,
            sent_ms: None,
        };
        let sent = Watch {
            sent_ms: Some(300),
            ..fresh.clone()
        };
        let sent_at = |at| Seen {
            sent_at_ms: Some(at),
            ..seen(Some(S::Sent))
        };
        let receipt = |s: &str, code, at| Seen {
            delivery: Some((s.to_string(), code, at)),
            ..sent_at(300)
        };
        // (case, watch, seen, now, delivery stage, expected)
        let cases: Vec<(&str, &Watch, Seen, i64, bool, Step)> = vec![
            (
                "not consumed yet",
                &fresh,
                seen(None),
                500,
                true,
                Step::Wait,
            ),
            (
                "not consumed past late_ms",
                &fresh,
                seen(None),
                1_001,
                true,
                Step::Finish(Finish::Late {
                    stage: "sent",
                    after_ms: 1_001,
                }),
            ),
            (
                "being sent",
                &fresh,
                seen(Some(S::Sending)),
                900,
                true,
                Step::Wait,
            ),
            (
                "sent, no delivery stage",
                &fresh,
                sent_at(300),
                400,
                false,
                Step::Finish(Finish::Sent { after_ms: 300 }),
            ),
            (
                "sent, waiting for delivery",
                &fresh,
                sent_at(300),
                400,
                true,
                Step::Sent {
                    at_ms: 300,
                    after_ms: 300,
                },
            ),
            (
                "sent after late_ms",
                &fresh,
                sent_at(1_200),
                1_300,
                true,
                Step::Finish(Finish::Late {
                    stage: "sent",
                    after_ms: 1_200,
                }),
            ),
            (
                "no receipt yet",
                &sent,
                sent_at(300),
                4_000,
                true,
                Step::Wait,
            ),
            (
                "delivered",
                &sent,
                receipt("delivered", None, 2_000),
                2_500,
                true,
                Step::Finish(Finish::Delivered { after_ms: 2_000 }),
            ),
            (
                "undelivered",
                &sent,
                receipt("undelivered", Some(30003), 2_000),
                2_500,
                true,
                Step::Finish(Finish::Failed {
                    why: "the provider says undelivered (error 30003)".into(),
                }),
            ),
            (
                "only 'sent' from the provider past delivery_late_ms",
                &sent,
                receipt("sent", None, 1_000),
                5_001,
                true,
                Step::Finish(Finish::Late {
                    stage: "delivered",
                    after_ms: 5_001,
                }),
            ),
            (
                "a retry scheduled",
                &fresh,
                seen(Some(S::RetryScheduled)),
                100,
                true,
                Step::Finish(Finish::Failed {
                    why: "an attempt failed, retry scheduled: boom".into(),
                }),
            ),
            (
                "failed",
                &fresh,
                seen(Some(S::Failed)),
                100,
                true,
                Step::Finish(Finish::Failed {
                    why: "failed: boom".into(),
                }),
            ),
        ];
        for (case, w, s, now, stage, expected) in cases {
            assert_eq!(step(w, &s, now, &c(), stage), expected, "{case}");
        }
    }

    #[test]
    fn a_canary_needs_a_recipient() {
        assert!(
            CanaryConfig::default().validate().is_ok(),
            "off: nothing to check"
        );
        let mut bad = c();
        bad.to = "12345".into();
        assert!(bad.validate().unwrap_err().contains("canary.to"));
        assert!(c().validate().is_ok());
    }
}
