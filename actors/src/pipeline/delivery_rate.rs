//! `DeliveryRateWorker`: watches what the provider says became of the messages it accepted.
//!
//! drover's own `sent` ends at the provider's door; the delivery receipts (Twilio's status
//! callbacks, recorded by `POST /providers/twilio/status`) say whether the SMS reached a
//! handset. Every `[delivery_rate] sample_ms` this actor reads from the store
//! ([`Store::delivery_window`]):
//!
//! * the final receipts (`delivered`, `undelivered`, `failed`) of the last `window_ms`, and
//! * the messages that went `sent` in a window of the same length that ended
//!   `receipt_grace_ms` ago, and how many of them got any receipt at all;
//!
//! and [`judge`] (pure) raises a `delivery_rate` alert when the share of `undelivered` +
//! `failed` among the final receipts is above `max_failure_share` (with the top error codes in
//! its details: 30003 unreachable, 30005 unknown number, 30007 filtered, ...), or when the
//! share of sent messages without any receipt is above `max_missing_share` (receipts stopped
//! arriving: the callback URL unreachable, its signature refused, the provider's callbacks
//! down). Each judgement needs enough data (`min_receipts`, `min_sent`) so that three
//! messages never page anyone. The shares are also gauges for `/metrics`.
//!
//! It runs only when receipts are on (`provider.twilio.status_callback_url`): without them no
//! receipt ever comes, and silence would be no news. A failed read is logged and the next
//! sample tries again; a store outage is the store worker's to report.
//!
//! [`Store::delivery_window`]: crate::store::Store::delivery_window

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};

use crate::pipeline::Pipeline;
use crate::pipeline::alerts::{Alert, AlertKind, raise};
use crate::pipeline::store_worker::store_of;
use crate::store::DeliveryWindow;

/// `[delivery_rate]`: when the provider's delivery rate is bad news.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryRateConfig {
    /// How often the store is read and the window judged.
    pub sample_ms: u64,
    /// Length of both windows.
    pub window_ms: u64,
    /// Alert when `undelivered` + `failed` are more than this share of the final receipts.
    pub max_failure_share: f64,
    /// ...judged only with at least this many final receipts in the window.
    pub min_receipts: u64,
    /// A sent message is expected to have a receipt this long after it was sent: the send
    /// window ends this long ago.
    pub receipt_grace_ms: u64,
    /// Alert when more than this share of the messages sent in the send window have no
    /// receipt at all.
    pub max_missing_share: f64,
    /// ...judged only with at least this many messages sent in the send window.
    pub min_sent: u64,
}

impl Default for DeliveryRateConfig {
    fn default() -> Self {
        DeliveryRateConfig {
            sample_ms: 60_000,
            window_ms: 900_000,
            max_failure_share: 0.2,
            min_receipts: 20,
            receipt_grace_ms: 600_000,
            max_missing_share: 0.5,
            min_sent: 20,
        }
    }
}

/// Final receipt statuses that mean the SMS did not reach the handset.
const FAILED_STATUSES: [&str; 2] = ["undelivered", "failed"];

/// Most error codes an alert lists.
pub const TOP_CODES: usize = 5;

/// What is wrong with the provider's delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryProblem {
    /// Too many final receipts say the SMS did not arrive.
    Failing {
        failed: i64,
        finals: i64,
        share: f64,
        /// The most frequent error codes of the failed ones, most frequent first (ties by
        /// code), at most [`TOP_CODES`]; `None` stands for receipts without a code.
        top_codes: Vec<(Option<i64>, i64)>,
    },
    /// Too many sent messages got no receipt at all.
    Missing {
        sent: i64,
        with_receipt: i64,
        share: f64,
    },
}

/// The share of failed final receipts and of sent messages without any receipt in `w`
/// (`None` where there is nothing to divide by).
pub fn shares(w: &DeliveryWindow) -> (Option<f64>, Option<f64>) {
    let finals: i64 = w.finals.iter().map(|f| f.messages).sum();
    let failed: i64 = w
        .finals
        .iter()
        .filter(|f| FAILED_STATUSES.contains(&f.status.as_str()))
        .map(|f| f.messages)
        .sum();
    let failing = (finals > 0).then(|| failed as f64 / finals as f64);
    let missing =
        (w.sent > 0).then(|| (w.sent - w.with_receipt.min(w.sent)) as f64 / w.sent as f64);
    (failing, missing)
}

/// The problems `w` shows under `c` (none, one or both). Pure.
pub fn judge(w: &DeliveryWindow, c: &DeliveryRateConfig) -> Vec<DeliveryProblem> {
    let mut problems = Vec::new();
    let (failing, missing) = shares(w);
    let finals: i64 = w.finals.iter().map(|f| f.messages).sum();
    if let Some(share) = failing
        && finals >= c.min_receipts.max(1) as i64
        && share > c.max_failure_share
    {
        let mut codes: Vec<(Option<i64>, i64)> = Vec::new();
        for f in w
            .finals
            .iter()
            .filter(|f| FAILED_STATUSES.contains(&f.status.as_str()))
        {
            match codes.iter_mut().find(|(code, _)| *code == f.error_code) {
                Some((_, n)) => *n += f.messages,
                None => codes.push((f.error_code, f.messages)),
            }
        }
        codes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let failed = codes.iter().map(|(_, n)| n).sum();
        codes.truncate(TOP_CODES);
        problems.push(DeliveryProblem::Failing {
            failed,
            finals,
            share,
            top_codes: codes,
        });
    }
    if let Some(share) = missing
        && w.sent >= c.min_sent.max(1) as i64
        && share > c.max_missing_share
    {
        problems.push(DeliveryProblem::Missing {
            sent: w.sent,
            with_receipt: w.with_receipt,
            share,
        });
    }
    problems
}

impl DeliveryProblem {
    /// The `delivery_rate` alert for this problem.
    pub fn alert(&self, c: &DeliveryRateConfig) -> Alert {
        match self {
            DeliveryProblem::Failing {
                failed,
                finals,
                share,
                top_codes,
            } => Alert {
                kind: AlertKind::DeliveryRate,
                key: "delivery_rate:failing".into(),
                summary: format!(
                    "{failed} of {finals} delivery receipts in the last {} s say the SMS did not arrive ({:.0} % > {:.0} %)",
                    c.window_ms / 1_000,
                    share * 100.0,
                    c.max_failure_share * 100.0
                ),
                details: serde_json::json!({
                    "reason": "failing",
                    "failed": failed,
                    "final_receipts": finals,
                    "share": share,
                    "max_failure_share": c.max_failure_share,
                    "window_ms": c.window_ms,
                    "top_error_codes": top_codes
                        .iter()
                        .map(|(code, n)| serde_json::json!({ "code": code, "messages": n }))
                        .collect::<Vec<_>>(),
                }),
            },
            DeliveryProblem::Missing {
                sent,
                with_receipt,
                share,
            } => Alert {
                kind: AlertKind::DeliveryRate,
                key: "delivery_rate:missing".into(),
                summary: format!(
                    "receipts stopped arriving: {} of {sent} messages sent {}-{} s ago have none ({:.0} % > {:.0} %)",
                    sent - with_receipt,
                    c.receipt_grace_ms / 1_000,
                    (c.receipt_grace_ms + c.window_ms) / 1_000,
                    share * 100.0,
                    c.max_missing_share * 100.0
                ),
                details: serde_json::json!({
                    "reason": "missing",
                    "sent": sent,
                    "with_receipt": with_receipt,
                    "share": share,
                    "max_missing_share": c.max_missing_share,
                    "receipt_grace_ms": c.receipt_grace_ms,
                    "window_ms": c.window_ms,
                }),
            },
        }
    }
}

/// Messages of [`DeliveryRateWorker`].
#[derive(Debug)]
pub enum DeliveryRateMessage {
    /// Internal: read the window and judge it.
    #[doc(hidden)]
    Tick,
}

/// The delivery-rate monitor.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryRateWorker;

/// State of [`DeliveryRateWorker`].
#[derive(Debug)]
pub struct DeliveryRateState {
    p: Pipeline,
}

async fn read_window(p: &Pipeline) -> Result<DeliveryWindow, String> {
    let c = &p.config.delivery_rate;
    let now = p.clock.now_ms();
    let sent_until = now - c.receipt_grace_ms as i64;
    let store = store_of(p).await.map_err(|e| e.to_string())?;
    store
        .delivery_window(
            now - c.window_ms as i64,
            sent_until - c.window_ms as i64,
            sent_until,
        )
        .await
        .map_err(|e| e.to_string())
}

impl Actor for DeliveryRateWorker {
    type Msg = DeliveryRateMessage;
    type State = DeliveryRateState;
    type Arguments = Pipeline;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        p: Pipeline,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_interval(
            Duration::from_millis(p.config.delivery_rate.sample_ms.max(10)),
            || DeliveryRateMessage::Tick,
        );
        Ok(DeliveryRateState { p })
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let DeliveryRateMessage::Tick = msg;
        let p = &state.p;
        let bound =
            Duration::from_millis(p.config.delivery_rate.sample_ms).max(Duration::from_secs(5));
        let window = match tokio::time::timeout(bound, read_window(p)).await {
            Ok(Ok(w)) => w,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "delivery window not read");
                return Ok(());
            }
            Err(_) => {
                tracing::warn!("delivery window not read in time");
                return Ok(());
            }
        };
        let (failing, missing) = shares(&window);
        let metrics = &p.ops.metrics;
        metrics.delivery_failure_ratio.set(failing.unwrap_or(0.0));
        metrics.receipts_missing_ratio.set(missing.unwrap_or(0.0));
        for problem in judge(&window, &p.config.delivery_rate) {
            raise(p, problem.alert(&p.config.delivery_rate));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FinalCount;

    fn fc(status: &str, code: Option<i64>, n: i64) -> FinalCount {
        FinalCount {
            status: status.into(),
            error_code: code,
            messages: n,
        }
    }

    fn window(finals: Vec<FinalCount>, sent: i64, with_receipt: i64) -> DeliveryWindow {
        DeliveryWindow {
            finals,
            sent,
            with_receipt,
        }
    }

    #[test]
    fn judgements() {
        let c = DeliveryRateConfig {
            min_receipts: 10,
            min_sent: 10,
            max_failure_share: 0.2,
            max_missing_share: 0.5,
            ..DeliveryRateConfig::default()
        };
        // (case, window, expected: failing?, missing?)
        let cases: Vec<(&str, DeliveryWindow, bool, bool)> = vec![
            ("nothing at all", window(vec![], 0, 0), false, false),
            (
                "all delivered, all with receipts",
                window(vec![fc("delivered", None, 50)], 50, 50),
                false,
                false,
            ),
            (
                "20 % failing is not above 20 %",
                window(
                    vec![fc("delivered", None, 8), fc("undelivered", Some(30003), 2)],
                    10,
                    10,
                ),
                false,
                false,
            ),
            (
                "30 % failing",
                window(
                    vec![fc("delivered", None, 7), fc("undelivered", Some(30003), 3)],
                    10,
                    10,
                ),
                true,
                false,
            ),
            (
                "all failing but too few receipts to judge",
                window(vec![fc("failed", Some(30008), 9)], 0, 0),
                false,
                false,
            ),
            (
                "no receipt for 6 of 10 sent",
                window(vec![fc("delivered", None, 4)], 10, 4),
                false,
                true,
            ),
            (
                "half without receipts is not above half",
                window(vec![], 10, 5),
                false,
                false,
            ),
            (
                "none of 9 sent has a receipt: too few to judge",
                window(vec![], 9, 0),
                false,
                false,
            ),
            (
                "both at once",
                window(vec![fc("failed", None, 10)], 100, 10),
                true,
                true,
            ),
        ];
        for (case, w, failing, missing) in cases {
            let got = judge(&w, &c);
            let f = got
                .iter()
                .any(|p| matches!(p, DeliveryProblem::Failing { .. }));
            let m = got
                .iter()
                .any(|p| matches!(p, DeliveryProblem::Missing { .. }));
            assert_eq!((f, m), (failing, missing), "{case}: {got:?}");
        }
    }

    #[test]
    fn the_alert_names_the_top_error_codes() {
        let c = DeliveryRateConfig {
            min_receipts: 1,
            ..DeliveryRateConfig::default()
        };
        let w = window(
            vec![
                fc("delivered", None, 10),
                fc("undelivered", Some(30003), 4),
                fc("failed", Some(30003), 3),
                fc("undelivered", Some(30005), 5),
                fc("undelivered", None, 1),
                fc("failed", Some(30006), 1),
                fc("failed", Some(30007), 1),
                fc("failed", Some(30008), 1),
            ],
            0,
            0,
        );
        let problems = judge(&w, &c);
        let [
            DeliveryProblem::Failing {
                failed,
                finals,
                top_codes,
                ..
            },
        ] = problems.as_slice()
        else {
            panic!("one failing problem: {problems:?}");
        };
        assert_eq!((*failed, *finals), (16, 26));
        // 30003 counted across statuses; ties by code, receipts without a code first.
        assert_eq!(
            top_codes,
            &[
                (Some(30003), 7),
                (Some(30005), 5),
                (None, 1),
                (Some(30006), 1),
                (Some(30007), 1)
            ]
        );
        let alert = problems[0].alert(&c);
        assert_eq!(alert.kind.as_str(), "delivery_rate");
        assert_eq!(alert.key, "delivery_rate:failing");
        assert_eq!(alert.details["top_error_codes"][0]["code"], 30003);
        assert_eq!(alert.details["top_error_codes"][0]["messages"], 7);
        assert_eq!(
            alert.details["top_error_codes"].as_array().unwrap().len(),
            TOP_CODES
        );
    }
}
