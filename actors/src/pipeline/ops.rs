//! Cached operational state of the pipeline: what the HTTP probes (`/livez`, `/readyz`) and
//! `/metrics` read, written by the actors as things happen.
//!
//! Nothing here is ever computed by messaging an actor or querying a dependency on behalf of a
//! reader: the provider worker writes its circuit state at every change, the store worker the
//! result of its periodic ping, a sampler task the queue depths, the scheduler its re-drive
//! status. A hung actor therefore leaves a stale value behind, never a hung probe.
//!
//! [`PipelineMetrics`] holds the pipeline's counters and histogram as `metrics` handles bound
//! to one recorder (the application's Prometheus recorder); [`PipelineMetrics::default`] is a
//! set of no-op handles, for benches and tests that do not scrape.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use metrics::{Counter, Gauge, Histogram, Unit};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;

use crate::broker::Route;
use crate::clock::Clock;
use crate::provider::CircuitState;
use crate::store::OutcomeKind;

/// Counter: messages by final outcome of an attempt (`outcome` = `sent`, `retry`, `failed`,
/// `invalid`, `deferred`, `ambiguous`).
pub const MESSAGES_TOTAL: &str = "drover_messages_total";
/// Counter: provider calls (attempts that reached the provider).
pub const ATTEMPTS_TOTAL: &str = "drover_attempts_total";
/// Histogram: provider call latency, in seconds.
pub const PROVIDER_LATENCY_SECONDS: &str = "drover_provider_latency_seconds";
/// Counter: confirmed publishes by `route` (`work`, `failed`, `invalid`).
pub const PUBLISHED_TOTAL: &str = "drover_published_total";
/// Counter: deliveries taken from the work queue.
pub const CONSUMED_TOTAL: &str = "drover_consumed_total";
/// Lookups of an earlier attempt's fate at the provider, by `result`.
pub const RECONCILED_TOTAL: &str = "drover_reconciled_total";
/// Delivery receipts received, by the provider's `status`.
pub const DELIVERY_TOTAL: &str = "drover_delivery_total";
/// Gauge: the share of `undelivered` + `failed` among the final receipts of the
/// delivery-rate monitor's window.
pub const DELIVERY_FAILURE_RATIO: &str = "drover_delivery_failure_ratio";
/// Gauge: the share of messages sent in the delivery-rate monitor's send window that have no
/// receipt.
pub const RECEIPTS_MISSING_RATIO: &str = "drover_receipts_missing_ratio";
/// Counter: canaries by `result` (`sent`, `delivered`, `failed`, `late`).
pub const CANARY_TOTAL: &str = "drover_canary_total";
/// Gauge: the last canary's time from publish to `stage` (`sent`, `delivered`), seconds.
pub const CANARY_SECONDS: &str = "drover_canary_seconds";
/// The `result` labels of [`CANARY_TOTAL`].
pub const CANARY_RESULTS: [&str; 4] = ["sent", "delivered", "failed", "late"];
/// The `stage` labels of [`CANARY_SECONDS`].
pub const CANARY_STAGES: [&str; 2] = ["sent", "delivered"];

/// The `status` labels of [`DELIVERY_TOTAL`]: the receipt statuses, then this one for any
/// other word.
const OTHER_STATUS: &str = "other";

fn delivery_statuses() -> impl Iterator<Item = &'static str> {
    crate::provider::receipt::STATUSES
        .iter()
        .map(|(s, _)| *s)
        .chain([OTHER_STATUS])
}

/// The counter of `label` among `labels` (the last, the catch-all, for any other word).
fn labelled<'a>(
    counters: &'a [Counter],
    mut labels: impl Iterator<Item = &'static str>,
    label: &str,
) -> &'a Counter {
    let i = labels
        .position(|l| l == label)
        .unwrap_or(counters.len() - 1);
    &counters[i]
}

/// Bucket bounds of [`PROVIDER_LATENCY_SECONDS`].
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The pipeline's counters and histogram (see the module documentation).
#[derive(Debug, Clone)]
pub struct PipelineMetrics {
    sent: Counter,
    retry: Counter,
    failed: Counter,
    invalid: Counter,
    deferred: Counter,
    ambiguous: Counter,
    /// Provider calls and their latency (seconds), one pair per provider of the chain (the
    /// `provider` label), in chain order; the last pair also counts an index past the chain.
    calls: Vec<(Counter, Histogram)>,
    published: [Counter; 3],
    /// Deliveries taken from the work queue.
    pub consumed: Counter,
    reconciled: [Counter; 4],
    /// One per [`delivery_statuses`].
    delivery: Vec<Counter>,
    /// [`DELIVERY_FAILURE_RATIO`].
    pub delivery_failure_ratio: Gauge,
    /// [`RECEIPTS_MISSING_RATIO`].
    pub receipts_missing_ratio: Gauge,
    /// One per [`CANARY_RESULTS`].
    canary: [Counter; 4],
    /// One per [`CANARY_STAGES`].
    canary_seconds: [Gauge; 2],
    /// The same events as plain totals this process can read back, for the trends.
    pub tallies: Arc<Tallies>,
}

/// Totals of what the counters count, readable in-process (a `metrics` counter is write-only):
/// what the trends worker samples.
#[derive(Debug, Default)]
pub struct Tallies {
    /// Per [`Tallies::OUTCOMES`].
    outcomes: [AtomicU64; 6],
    latency_us: AtomicU64,
    calls: AtomicU64,
}

/// A reading of [`Tallies`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TallyReading {
    /// Per [`Tallies::OUTCOMES`].
    pub outcomes: [u64; 6],
    /// Provider calls and their summed latency.
    pub calls: u64,
    pub latency_us: u64,
}

impl Tallies {
    /// The outcomes tallied, in order.
    pub const OUTCOMES: [&'static str; 6] = [
        "sent",
        "retry",
        "failed",
        "deferred",
        "ambiguous",
        "invalid",
    ];

    fn index(kind: OutcomeKind) -> usize {
        match kind {
            OutcomeKind::Sent => 0,
            OutcomeKind::Retry => 1,
            OutcomeKind::Failed => 2,
            OutcomeKind::Deferred => 3,
            OutcomeKind::Ambiguous => 4,
        }
    }

    /// Now.
    pub fn read(&self) -> TallyReading {
        TallyReading {
            outcomes: std::array::from_fn(|i| self.outcomes[i].load(Ordering::Relaxed)),
            calls: self.calls.load(Ordering::Relaxed),
            latency_us: self.latency_us.load(Ordering::Relaxed),
        }
    }
}

impl Default for PipelineMetrics {
    /// No-op handles.
    fn default() -> Self {
        PipelineMetrics {
            sent: Counter::noop(),
            retry: Counter::noop(),
            failed: Counter::noop(),
            invalid: Counter::noop(),
            deferred: Counter::noop(),
            ambiguous: Counter::noop(),
            calls: vec![(Counter::noop(), Histogram::noop())],
            published: [Counter::noop(), Counter::noop(), Counter::noop()],
            consumed: Counter::noop(),
            reconciled: [
                Counter::noop(),
                Counter::noop(),
                Counter::noop(),
                Counter::noop(),
            ],
            delivery: delivery_statuses().map(|_| Counter::noop()).collect(),
            delivery_failure_ratio: Gauge::noop(),
            receipts_missing_ratio: Gauge::noop(),
            canary: CANARY_RESULTS.map(|_| Counter::noop()),
            canary_seconds: CANARY_STAGES.map(|_| Gauge::noop()),
            tallies: Arc::default(),
        }
    }
}

impl PipelineMetrics {
    /// Register (and describe) every series with the current recorder: call it inside
    /// `metrics::with_local_recorder` to bind the handles to that recorder. Every series
    /// exists from the start, at 0.
    pub fn register() -> Self {
        Self::register_for(&["primary".to_string()])
    }

    /// [`PipelineMetrics::register`], with a provider-call series per provider of the chain.
    pub fn register_for(providers: &[String]) -> Self {
        metrics::describe_counter!(
            MESSAGES_TOTAL,
            Unit::Count,
            "Messages by outcome of their attempt (sent, retry, failed, invalid, deferred, ambiguous)"
        );
        metrics::describe_counter!(ATTEMPTS_TOTAL, Unit::Count, "Provider calls");
        metrics::describe_histogram!(
            PROVIDER_LATENCY_SECONDS,
            Unit::Seconds,
            "Latency of provider calls"
        );
        metrics::describe_counter!(
            PUBLISHED_TOTAL,
            Unit::Count,
            "Publishes confirmed by the broker, by route"
        );
        metrics::describe_counter!(
            CONSUMED_TOTAL,
            Unit::Count,
            "Deliveries taken from the work queue"
        );
        metrics::describe_counter!(
            RECONCILED_TOTAL,
            Unit::Count,
            "Lookups at the provider of an earlier attempt whose fate was unknown, by result"
        );
        metrics::describe_counter!(
            DELIVERY_TOTAL,
            Unit::Count,
            "Delivery receipts from the provider, by its status"
        );
        metrics::describe_gauge!(
            DELIVERY_FAILURE_RATIO,
            Unit::Count,
            "Share of undelivered and failed among the final delivery receipts of the window"
        );
        metrics::describe_gauge!(
            RECEIPTS_MISSING_RATIO,
            Unit::Count,
            "Share of the messages sent in the receipt window that have no delivery receipt"
        );
        metrics::describe_counter!(
            CANARY_TOTAL,
            Unit::Count,
            "End-to-end canary messages, by result"
        );
        metrics::describe_gauge!(
            CANARY_SECONDS,
            Unit::Seconds,
            "The last canary's time from publish to sent and to delivered"
        );
        let outcome = |o: &'static str| metrics::counter!(MESSAGES_TOTAL, "outcome" => o);
        let published = |r: Route| metrics::counter!(PUBLISHED_TOTAL, "route" => r.to_string());
        let m = PipelineMetrics {
            sent: outcome("sent"),
            retry: outcome("retry"),
            failed: outcome("failed"),
            invalid: outcome("invalid"),
            deferred: outcome("deferred"),
            ambiguous: outcome("ambiguous"),
            calls: providers
                .iter()
                .map(|name| {
                    (
                        metrics::counter!(ATTEMPTS_TOTAL, "provider" => name.clone()),
                        metrics::histogram!(PROVIDER_LATENCY_SECONDS, "provider" => name.clone()),
                    )
                })
                .collect(),
            published: Route::ALL.map(published),
            consumed: metrics::counter!(CONSUMED_TOTAL),
            reconciled: crate::provider::reconcile::RESULTS
                .map(|r| metrics::counter!(RECONCILED_TOTAL, "result" => r)),
            delivery: delivery_statuses()
                .map(|s| metrics::counter!(DELIVERY_TOTAL, "status" => s))
                .collect(),
            delivery_failure_ratio: metrics::gauge!(DELIVERY_FAILURE_RATIO),
            receipts_missing_ratio: metrics::gauge!(RECEIPTS_MISSING_RATIO),
            canary: CANARY_RESULTS.map(|r| metrics::counter!(CANARY_TOTAL, "result" => r)),
            canary_seconds: CANARY_STAGES.map(|s| metrics::gauge!(CANARY_SECONDS, "stage" => s)),
            tallies: Arc::default(),
        };
        // Make every series visible at 0 before the first event.
        for c in [
            &m.sent,
            &m.retry,
            &m.failed,
            &m.invalid,
            &m.deferred,
            &m.ambiguous,
            &m.consumed,
        ]
        .into_iter()
        .chain(m.published.iter())
        .chain(m.reconciled.iter())
        .chain(m.delivery.iter())
        .chain(m.canary.iter())
        .chain(m.calls.iter().map(|(c, _)| c))
        {
            c.increment(0);
        }
        m.delivery_failure_ratio.set(0.0);
        m.receipts_missing_ratio.set(0.0);
        m
    }

    /// The counter of a lookup that came to `result` (a [`Reconciliation::label`]).
    ///
    /// [`Reconciliation::label`]: crate::provider::Reconciliation::label
    pub fn reconciled(&self, result: &str) -> &Counter {
        let results = crate::provider::reconcile::RESULTS.into_iter();
        labelled(&self.reconciled, results, result)
    }

    /// The counter of receipts with `status` (`other` for a word not in the list).
    pub fn delivery(&self, status: &str) -> &Counter {
        labelled(&self.delivery, delivery_statuses(), status)
    }

    /// The counter of canaries that came to `result` (one of [`CANARY_RESULTS`]).
    pub fn canary(&self, result: &str) -> &Counter {
        labelled(&self.canary, CANARY_RESULTS.into_iter(), result)
    }

    /// The gauge of the last canary's time to `stage` (one of [`CANARY_STAGES`]).
    pub fn canary_seconds(&self, stage: &str) -> &Gauge {
        let i = CANARY_STAGES.iter().position(|s| *s == stage).unwrap_or(0);
        &self.canary_seconds[i]
    }

    /// Count an attempt's recorded outcome (the counter and the tally).
    pub fn count_outcome(&self, kind: OutcomeKind) {
        self.outcome(kind).increment(1);
        self.tallies.outcomes[Tallies::index(kind)].fetch_add(1, Ordering::Relaxed);
    }

    /// Count a message set aside as invalid (the counter and the tally).
    pub fn count_invalid(&self) {
        self.invalid.increment(1);
        self.tallies.outcomes[5].fetch_add(1, Ordering::Relaxed);
    }

    /// Count a call to provider `index` of the chain that took `latency` (the counter, the
    /// histogram, the tally).
    pub fn count_call(&self, index: usize, latency: std::time::Duration) {
        if let Some((calls, histogram)) = self.calls.get(index).or(self.calls.last()) {
            calls.increment(1);
            histogram.record(latency.as_secs_f64());
        }
        self.tallies.calls.fetch_add(1, Ordering::Relaxed);
        self.tallies
            .latency_us
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// The counter of an attempt's recorded outcome.
    pub fn outcome(&self, kind: OutcomeKind) -> &Counter {
        match kind {
            OutcomeKind::Sent => &self.sent,
            OutcomeKind::Retry => &self.retry,
            OutcomeKind::Failed => &self.failed,
            OutcomeKind::Deferred => &self.deferred,
            OutcomeKind::Ambiguous => &self.ambiguous,
        }
    }

    /// The counter of messages set aside as invalid.
    pub fn invalid(&self) -> &Counter {
        &self.invalid
    }

    /// The counter of confirmed publishes on `route`.
    pub fn published(&self, route: Route) -> &Counter {
        match route {
            Route::Work => &self.published[0],
            Route::Failed => &self.published[1],
            Route::Invalid => &self.published[2],
        }
    }
}

/// The store worker's last connection check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PingRecord {
    /// When it finished (Unix ms).
    pub at_ms: i64,
    /// How long it took.
    pub latency_ms: u64,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// A queue's counters as last sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QueueSample {
    /// Messages ready (not counting delivered-but-unacked ones).
    pub ready: u32,
    /// Consumers on the queue.
    pub consumers: u32,
    /// Dropped to stay within the in-memory broker's bound (0 on RabbitMQ).
    pub dropped: u64,
    /// When sampled (Unix ms).
    pub at_ms: i64,
}

/// One interval of the trends (see `trends.rs`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrendSample {
    /// End of the interval (Unix ms).
    pub at_ms: i64,
    /// Its length.
    pub interval_ms: u64,
    /// Attempts recorded in it, by outcome (sent, retry, failed, deferred, ambiguous), and
    /// messages set aside as invalid.
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Provider calls in it.
    pub calls: u64,
    /// Their mean latency (`None` without a call).
    pub latency_ms: Option<f64>,
    /// Messages ready in each queue, as last sampled.
    pub queues: BTreeMap<String, u32>,
    /// Restarts in the tree in it.
    pub restarts: u64,
}

/// The trends worker's ring of samples, oldest first (cached here for `GET /trends`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Trends {
    pub sample_ms: u64,
    pub window_ms: u64,
    pub samples: VecDeque<TrendSample>,
}

/// The failed-queue re-drive, as last seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RedriveStatus {
    /// A re-drive is running now.
    pub running: bool,
    /// When the last one was requested or started (Unix ms).
    pub last_started_at_ms: Option<i64>,
    /// When the last one ended (Unix ms).
    pub last_finished_at_ms: Option<i64>,
    /// Messages put back into play by the last one.
    pub last_redriven: Option<usize>,
    /// Why the last one stopped early, if it did.
    pub last_error: Option<String>,
}

/// Why a re-drive was refused ([`Ops::reserve_redrive`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedriveRefused {
    /// One is running.
    Running,
    /// The last one started less than the cooldown ago: ask again in this many ms.
    TooSoon { retry_after_ms: u64 },
}

#[derive(Debug, Default)]
struct Cells {
    /// One per provider of the chain, in chain order (grown as their actors report).
    providers: RwLock<Vec<crate::pipeline::route::ProviderView>>,
    /// The provider the last send went to (chain index).
    active: Mutex<Option<usize>>,
    store_ping: RwLock<Option<PingRecord>>,
    queues: RwLock<BTreeMap<String, QueueSample>>,
    consumption_paused: AtomicBool,
    redrive: Mutex<RedriveStatus>,
    consumed: AtomicU64,
    trends: RwLock<Arc<Trends>>,
    /// The store worker's handle, with the incarnation that published it.
    store: RwLock<Option<(ractor::ActorId, crate::store::Store)>>,
}

/// The pipeline's cached operational state and metrics. Cheap to clone; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Ops {
    /// The pipeline's counters and histogram.
    pub metrics: PipelineMetrics,
    /// Worker failures per message, for quarantining poison messages.
    pub poison: crate::pipeline::poison::PoisonGuard,
    cells: Arc<Cells>,
}

impl Ops {
    /// Fresh state recording into `metrics`.
    pub fn new(metrics: PipelineMetrics) -> Ops {
        Ops {
            metrics,
            poison: Default::default(),
            cells: Arc::default(),
        }
    }

    /// The primary provider's circuit as last written by its worker (`None` before its first
    /// start).
    pub fn circuit(&self) -> Option<CircuitState> {
        self.cells
            .providers
            .read()
            .first()
            .and_then(|v| v.circuit.clone())
    }

    /// Every provider of the chain as last reported, in chain order.
    pub fn providers(&self) -> Vec<crate::pipeline::route::ProviderView> {
        self.cells.providers.read().clone()
    }

    /// Written by the worker of chain entry `index` (`name`) at start and at every change of
    /// its circuit, at `now_ms`; remembers when a circuit closed after being open.
    pub fn set_provider_circuit(&self, index: usize, name: &str, state: CircuitState, now_ms: i64) {
        let mut views = self.cells.providers.write();
        while views.len() <= index {
            views.push(crate::pipeline::route::ProviderView {
                name: String::new(),
                circuit: None,
                closed_at_ms: None,
            });
        }
        let v = &mut views[index];
        v.name = name.to_string();
        let was_closed = matches!(v.circuit, None | Some(CircuitState::Closed { .. }));
        if matches!(state, CircuitState::Closed { .. }) && !was_closed {
            v.closed_at_ms = Some(now_ms);
        }
        v.circuit = Some(state);
    }

    /// A send went to chain entry `index`: the provider traffic moved from and to, when it
    /// moved off the primary or back onto it (for the `provider_failover` alert).
    pub fn note_route(&self, index: usize) -> Option<(usize, usize)> {
        let mut active = self.cells.active.lock();
        let before = active.replace(index).unwrap_or(0);
        ((before == 0) != (index == 0)).then_some((before, index))
    }

    /// The provider the last send went to (chain index; 0, the primary, before any).
    pub fn active_provider(&self) -> usize {
        self.cells.active.lock().unwrap_or(0)
    }

    /// The store handle published by the store worker incarnation `current` (the one the tree
    /// has now), if it published one: a handle left by an earlier incarnation never matches.
    pub fn store(&self, current: ractor::ActorId) -> Option<crate::store::Store> {
        match &*self.cells.store.read() {
            Some((id, store)) if *id == current => Some(store.clone()),
            _ => None,
        }
    }

    /// Written by the store worker once connected, so workers need not ask it per message.
    pub fn set_store(&self, me: ractor::ActorId, store: crate::store::Store) {
        *self.cells.store.write() = Some((me, store));
    }

    /// Withdrawn by the store worker `me` as it stops, so its pool is not kept open.
    pub fn clear_store(&self, me: ractor::ActorId) {
        let mut cell = self.cells.store.write();
        if cell.as_ref().is_some_and(|(id, _)| *id == me) {
            *cell = None;
        }
    }

    /// The trends as last sampled (empty before the first sample).
    pub fn trends(&self) -> Arc<Trends> {
        self.cells.trends.read().clone()
    }

    /// Written by the trends worker after each sample.
    pub fn set_trends(&self, trends: Arc<Trends>) {
        *self.cells.trends.write() = trends;
    }

    /// The store worker's last connection check.
    pub fn store_ping(&self) -> Option<PingRecord> {
        self.cells.store_ping.read().clone()
    }

    /// Written by the store worker after each connection check.
    pub fn record_store_ping(&self, ping: PingRecord) {
        *self.cells.store_ping.write() = Some(ping);
    }

    /// Queue depths as last sampled, by queue name.
    pub fn queues(&self) -> BTreeMap<String, QueueSample> {
        self.cells.queues.read().clone()
    }

    /// Record a queue sample.
    pub fn set_queue(&self, queue: &str, sample: QueueSample) {
        self.cells.queues.write().insert(queue.to_owned(), sample);
    }

    /// Deliveries taken from the work queue so far (read by the backlog monitor).
    pub fn consumed(&self) -> u64 {
        self.cells.consumed.load(Ordering::Relaxed)
    }

    /// Count a delivery taken from the work queue (also in the `consumed` metric).
    pub fn record_consumed(&self) {
        self.cells.consumed.fetch_add(1, Ordering::Relaxed);
        self.metrics.consumed.increment(1);
    }

    /// Whether an operator paused consumption (a restarted consumer stays paused).
    pub fn consumption_paused(&self) -> bool {
        self.cells.consumption_paused.load(Ordering::SeqCst)
    }

    /// Set the pause switch; returns the previous value.
    pub fn set_consumption_paused(&self, paused: bool) -> bool {
        self.cells.consumption_paused.swap(paused, Ordering::SeqCst)
    }

    /// The re-drive status.
    pub fn redrive_status(&self) -> RedriveStatus {
        self.cells.redrive.lock().clone()
    }

    /// Reserve an operator re-drive: refused while one runs or within `cooldown_ms` of the
    /// last start. On success the start time is recorded now (so a concurrent request is
    /// refused) and the previous one returned, for [`cancel_redrive`](Self::cancel_redrive).
    pub fn reserve_redrive(
        &self,
        now_ms: i64,
        cooldown_ms: u64,
    ) -> Result<Option<i64>, RedriveRefused> {
        let mut r = self.cells.redrive.lock();
        if r.running {
            return Err(RedriveRefused::Running);
        }
        if let Some(last) = r.last_started_at_ms {
            let next = last.saturating_add(cooldown_ms as i64);
            if now_ms < next {
                return Err(RedriveRefused::TooSoon {
                    retry_after_ms: (next - now_ms) as u64,
                });
            }
        }
        Ok(r.last_started_at_ms.replace(now_ms))
    }

    /// Undo a reservation whose request could not be delivered.
    pub fn cancel_redrive(&self, previous: Option<i64>) {
        self.cells.redrive.lock().last_started_at_ms = previous;
    }

    /// Mark a re-drive as running until the returned guard is finished or dropped (a
    /// re-drive task aborted or dropped midway ends as "interrupted").
    pub fn redrive_started(&self, clock: Clock) -> RedriveGuard {
        {
            let mut r = self.cells.redrive.lock();
            r.running = true;
            r.last_started_at_ms = Some(clock.now_ms());
        }
        RedriveGuard {
            ops: self.clone(),
            clock,
            result: None,
        }
    }
}

/// Marks a re-drive as running while alive ([`Ops::redrive_started`]).
#[derive(Debug)]
pub struct RedriveGuard {
    ops: Ops,
    clock: Clock,
    result: Option<Result<usize, String>>,
}

impl RedriveGuard {
    /// Record how the re-drive ended.
    pub fn finish(mut self, result: Result<usize, String>) {
        self.result = Some(result);
    }
}

impl Drop for RedriveGuard {
    fn drop(&mut self) {
        let mut r = self.ops.cells.redrive.lock();
        r.running = false;
        r.last_finished_at_ms = Some(self.clock.now_ms());
        match self.result.take() {
            Some(Ok(n)) => {
                r.last_redriven = Some(n);
                r.last_error = None;
            }
            Some(Err(e)) => {
                r.last_redriven = None;
                r.last_error = Some(e);
            }
            None => {
                r.last_redriven = None;
                r.last_error = Some("interrupted".into());
            }
        }
    }
}

/// The circuit as a number: 0 closed, 1 half-open (also an open circuit whose time is over),
/// 2 open.
pub fn circuit_level(state: &CircuitState, now_ms: i64) -> u8 {
    match state {
        CircuitState::Closed { .. } => 0,
        CircuitState::HalfOpen { .. } => 1,
        CircuitState::Open { retry_at_ms, .. } if *retry_at_ms <= now_ms => 1,
        CircuitState::Open { .. } => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redrive_reservations_respect_running_and_cooldown() {
        let ops = Ops::default();
        assert_eq!(ops.reserve_redrive(1_000, 500), Ok(None));
        assert_eq!(
            ops.reserve_redrive(1_200, 500),
            Err(RedriveRefused::TooSoon {
                retry_after_ms: 300
            })
        );
        assert_eq!(ops.reserve_redrive(1_500, 500), Ok(Some(1_000)));
        ops.cancel_redrive(Some(1_000));
        let guard = ops.redrive_started(Clock::new());
        assert_eq!(
            ops.reserve_redrive(i64::MAX / 2, 0),
            Err(RedriveRefused::Running)
        );
        guard.finish(Ok(3));
        let s = ops.redrive_status();
        assert!(!s.running);
        assert_eq!(s.last_redriven, Some(3));
        drop(ops.redrive_started(Clock::new()));
        assert_eq!(
            ops.redrive_status().last_error.as_deref(),
            Some("interrupted")
        );
    }

    #[test]
    fn circuit_levels() {
        let closed = CircuitState::Closed {
            consecutive_failures: 2,
        };
        let open = CircuitState::Open {
            opened_at_ms: 0,
            retry_at_ms: 100,
            reason: "x".into(),
        };
        assert_eq!(circuit_level(&closed, 0), 0);
        assert_eq!(circuit_level(&open, 50), 2);
        assert_eq!(circuit_level(&open, 100), 1);
    }
}
