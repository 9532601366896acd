//! `AlertWorker`: tells a human when self-healing is not enough.
//!
//! Every alert is logged at error level; with `[alerts] webhook_url` set it is also POSTed as
//! JSON (`{"kind","key","summary","details","at_ms","service":"drover"}`) with retries and
//! exponential backoff, in a task of its own so a slow webhook never blocks the actor. The
//! same alert key is sent at most once per `dedupe_ms`, and at most `max_per_minute` alerts are
//! sent per minute; the others are dropped, counted and logged.
//!
//! Sources: the tree's event stream (a supervisor giving up: `subtree_gave_up`, or
//! `root_gave_up` for the root), the delivery workers (`dead_letter`), the provider worker
//! (`circuit_open`), the monitor (`backlog`), the delivery-rate monitor (`delivery_rate`) and
//! the canary (`canary`). Successful restarts do not alert. When the
//! root gives up it takes this actor with it, so drover's `serve_until` sends that last alert
//! itself with [`post_alert`].

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::pipeline::Pipeline;
use crate::tree::EventKind;

/// `[alerts]`: where alerts go and how often.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertConfig {
    /// POST alerts as JSON here; unset = log only.
    pub webhook_url: Option<String>,
    /// Retries of a failed POST.
    pub retries: u32,
    /// Delay before the first retry; doubles each time.
    pub retry_base_ms: u64,
    /// The same alert key is sent at most once per this window.
    pub dedupe_ms: u64,
    /// At most this many alerts are sent per minute; the others are dropped and counted.
    pub max_per_minute: u32,
    /// How often the monitor samples the work queue.
    pub sample_ms: u64,
    /// A backlog is alerted when the work queue grew (or had messages and no consumer) over
    /// this whole window.
    pub backlog_window_ms: u64,
    /// Alert when the provider's circuit has stayed open longer than this.
    pub circuit_open_alert_ms: u64,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            webhook_url: None,
            retries: 3,
            retry_base_ms: 500,
            dedupe_ms: 300_000,
            max_per_minute: 30,
            sample_ms: 5_000,
            backlog_window_ms: 60_000,
            circuit_open_alert_ms: 300_000,
        }
    }
}

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    DeadLetter,
    /// A message kept making its workers fail and was quarantined to the invalid queue.
    Poison,
    SubtreeGaveUp,
    RootGaveUp,
    Backlog,
    CircuitOpen,
    /// The provider's delivery receipts say too many SMS did not arrive, or stopped coming.
    DeliveryRate,
    /// The end-to-end canary failed or was late.
    Canary,
    /// Traffic left the primary provider for a fallback, or came back to it.
    ProviderFailover,
}

impl AlertKind {
    /// The kind's word, as the JSON, the webhook and the log fields say it (`dead_letter`).
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::DeadLetter => "dead_letter",
            AlertKind::Poison => "poison",
            AlertKind::SubtreeGaveUp => "subtree_gave_up",
            AlertKind::RootGaveUp => "root_gave_up",
            AlertKind::Backlog => "backlog",
            AlertKind::CircuitOpen => "circuit_open",
            AlertKind::DeliveryRate => "delivery_rate",
            AlertKind::Canary => "canary",
            AlertKind::ProviderFailover => "provider_failover",
        }
    }
}

/// One alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    pub kind: AlertKind,
    /// Deduplication key (`dead_letter:<id>`, `circuit_open`, `backlog`, `gave_up:<path>`).
    pub key: String,
    pub summary: String,
    pub details: serde_json::Value,
}

impl Alert {
    /// The JSON body POSTed to the webhook.
    pub fn payload(&self, at_ms: i64) -> serde_json::Value {
        serde_json::json!({
            "kind": self.kind,
            "key": self.key,
            "summary": self.summary,
            "details": self.details,
            "at_ms": at_ms,
            "service": "drover",
        })
    }

    /// The alert for a supervisor at `path` giving up (`root` = the root's path).
    pub fn gave_up(path: &str, root: &str, reason: &str) -> Alert {
        let kind = if path == root {
            AlertKind::RootGaveUp
        } else {
            AlertKind::SubtreeGaveUp
        };
        Alert {
            kind,
            key: format!("gave_up:{path}"),
            summary: format!("supervisor {path} gave up: {reason}"),
            details: serde_json::json!({ "path": path, "reason": reason }),
        }
    }
}

/// Messages of [`AlertWorker`].
#[derive(Debug)]
pub enum AlertMessage {
    Raise(Alert),
}

/// Log an alert at error level.
pub fn log_alert(alert: &Alert) {
    tracing::error!(
        alert = alert.kind.as_str(),
        key = %alert.key,
        details = %alert.details,
        "ALERT: {}",
        alert.summary
    );
}

/// An HTTP client for the webhook.
pub fn alert_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default()
}

/// POST `payload` to `url`, retrying `retries` times (backoff `retry_base_ms × 2^n`) on a
/// transport error or a non-2xx answer. Shared by the alert worker and drover's exit path.
pub async fn post_alert(
    client: &reqwest::Client,
    url: &str,
    payload: &serde_json::Value,
    retries: u32,
    retry_base_ms: u64,
) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 0..=retries {
        if attempt > 0 {
            let delay = retry_base_ms.saturating_mul(1u64 << (attempt - 1).min(16));
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        // Errors name the webhook by its origin only: its path is often the secret.
        match client.post(url).json(payload).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => {
                last = format!(
                    "webhook {} answered {}",
                    crate::redact::origin(url),
                    r.status()
                )
            }
            Err(e) => {
                last = format!(
                    "webhook {}: {}",
                    crate::redact::origin(url),
                    e.without_url()
                )
            }
        }
    }
    Err(last)
}

/// Log `alert` and, if a webhook is configured, POST it once (with retries) right now: for
/// when no alert worker is left to do it (the root gave up).
pub async fn send_now(config: &AlertConfig, alert: &Alert, at_ms: i64) {
    log_alert(alert);
    let Some(url) = &config.webhook_url else {
        return;
    };
    let payload = alert.payload(at_ms);
    let (retries, base) = (config.retries, config.retry_base_ms);
    if let Err(e) = post_alert(&alert_client(), url, &payload, retries, base).await {
        tracing::error!(error = %e, key = %alert.key, "alert not delivered to the webhook");
    }
}

/// Raise an alert through the pipeline's alert worker (logged here if it is not there).
pub fn raise(p: &Pipeline, alert: Alert) {
    match p.alerts() {
        Ok(a) => {
            if let Err(ractor::MessagingErr::SendErr(AlertMessage::Raise(alert))) =
                a.send_message(AlertMessage::Raise(alert))
            {
                log_alert(&alert);
            }
        }
        Err(_) => log_alert(&alert),
    }
}

/// What [`Limiter::check`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Send,
    /// The same key was sent within the dedupe window.
    Duplicate,
    /// Too many alerts were sent in the last minute.
    RateLimited,
}

/// Deduplication by key and a per-minute rate limit.
#[derive(Debug, Default)]
pub struct Limiter {
    dedupe_ms: u64,
    max_per_minute: u32,
    last_sent: HashMap<String, i64>,
    sent: VecDeque<i64>,
    /// Alerts dropped as duplicates.
    pub duplicates: u64,
    /// Alerts dropped by the rate limit.
    pub rate_limited: u64,
}

impl Limiter {
    pub fn new(dedupe_ms: u64, max_per_minute: u32) -> Limiter {
        Limiter {
            dedupe_ms,
            max_per_minute,
            ..Limiter::default()
        }
    }

    /// Whether an alert with `key` may be sent at `now_ms`; records it if so.
    pub fn check(&mut self, key: &str, now_ms: i64) -> Verdict {
        let dedupe = self.dedupe_ms as i64;
        if self
            .last_sent
            .get(key)
            .is_some_and(|&at| now_ms.saturating_sub(at) < dedupe)
        {
            self.duplicates += 1;
            return Verdict::Duplicate;
        }
        while self.sent.front().is_some_and(|&at| now_ms - at >= 60_000) {
            self.sent.pop_front();
        }
        if self.sent.len() >= self.max_per_minute as usize {
            self.rate_limited += 1;
            return Verdict::RateLimited;
        }
        self.sent.push_back(now_ms);
        if self.last_sent.len() >= 4_096 {
            self.last_sent
                .retain(|_, at| now_ms.saturating_sub(*at) < dedupe);
        }
        self.last_sent.insert(key.to_owned(), now_ms);
        Verdict::Send
    }
}

/// The alert actor.
#[derive(Debug, Clone, Copy)]
pub struct AlertWorker;

/// State of [`AlertWorker`].
#[derive(Debug)]
pub struct AlertState {
    p: Pipeline,
    limiter: Limiter,
    client: reqwest::Client,
    events: JoinHandle<()>,
}

impl Actor for AlertWorker {
    type Msg = AlertMessage;
    type State = AlertState;
    type Arguments = Pipeline;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        p: Pipeline,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut rx = p.tree.subscribe_gave_up();
        let root = p.root.clone();
        let events = tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        if let EventKind::GaveUp { reason } = &ev.kind {
                            let alert = Alert::gave_up(&ev.path, &root, reason);
                            if myself.send_message(AlertMessage::Raise(alert)).is_err() {
                                return;
                            }
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "alert worker missed tree events");
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        let c = &p.config.alerts;
        Ok(AlertState {
            limiter: Limiter::new(c.dedupe_ms, c.max_per_minute),
            p,
            client: alert_client(),
            events,
        })
    }

    async fn post_stop(
        &self,
        _: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.events.abort();
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let AlertMessage::Raise(alert) = msg;
        log_alert(&alert);
        let config = &state.p.config.alerts;
        let Some(url) = config.webhook_url.clone() else {
            return Ok(());
        };
        let now = state.p.clock.now_ms();
        match state.limiter.check(&alert.key, now) {
            Verdict::Send => {}
            Verdict::Duplicate => {
                tracing::info!(key = %alert.key, dropped = state.limiter.duplicates, "alert not sent again: duplicate within the dedupe window");
                return Ok(());
            }
            Verdict::RateLimited => {
                tracing::warn!(key = %alert.key, dropped = state.limiter.rate_limited, "alert dropped: rate limit reached");
                return Ok(());
            }
        }
        let (client, payload) = (state.client.clone(), alert.payload(now));
        let (retries, base) = (config.retries, config.retry_base_ms);
        tokio::spawn(async move {
            if let Err(e) = post_alert(&client, &url, &payload, retries, base).await {
                tracing::error!(error = %e, key = %alert.key, "alert not delivered to the webhook");
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_key_is_sent_once_per_dedupe_window() {
        let mut l = Limiter::new(1_000, 100);
        assert_eq!(l.check("a", 0), Verdict::Send);
        assert_eq!(l.check("a", 999), Verdict::Duplicate);
        assert_eq!(l.check("b", 999), Verdict::Send);
        assert_eq!(l.check("a", 1_000), Verdict::Send);
        assert_eq!(l.duplicates, 1);
    }

    #[test]
    fn at_most_max_per_minute_are_sent() {
        let mut l = Limiter::new(0, 3);
        for i in 0..3 {
            assert_eq!(l.check(&format!("k{i}"), i), Verdict::Send);
        }
        assert_eq!(l.check("k3", 10), Verdict::RateLimited);
        assert_eq!(l.check("k4", 59_999), Verdict::RateLimited);
        assert_eq!(l.rate_limited, 2);
        // The first one left the minute; a dropped key was not recorded as sent.
        assert_eq!(l.check("k3", 60_000), Verdict::Send);
        assert_eq!(l.check("k4", 60_000), Verdict::RateLimited);
    }

    #[test]
    fn gave_up_alerts_name_the_root() {
        assert_eq!(
            Alert::gave_up("root", "root", "x").kind,
            AlertKind::RootGaveUp
        );
        let a = Alert::gave_up("root/broker", "root", "x");
        assert_eq!(a.kind, AlertKind::SubtreeGaveUp);
        assert_eq!(a.payload(5)["kind"], "subtree_gave_up");
        assert_eq!(a.payload(5)["service"], "drover");
    }
}
