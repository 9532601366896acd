//! The poison guard: a message that keeps making its worker fail is quarantined instead of
//! being redelivered forever.
//!
//! Every known class of bad input is refused by the message contract (`message.rs`); this is
//! the guard for the classes nobody has thought of yet. Each delivery is recognised by a
//! digest of its AMQP message id and payload (the same bytes come back on a redelivery); a
//! worker that fails on it for a reason of the message's own (a query error, a publish the
//! broker refuses for its shape, a panic) counts one failure. After
//! `delivery.max_worker_failures` the next delivery of it is quarantined to the invalid
//! queue with the reason `poison: worker failed N times: <last error>`, recorded, acked and
//! alerted. An outage of a dependency (store unavailable, broker lost, an actor restarting or
//! not answering) never counts: those deliveries keep pacing as before.
//!
//! The counts live in this process only (a digest is seeded per process) and in a bounded
//! table: at most [`CAPACITY`] messages, the least recently failed forgotten first.

use std::collections::HashMap;
use std::hash::RandomState;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::message::{MAX_REASON_BYTES, delivery_digest, truncate_utf8};
use crate::pipeline::PipelineError;

/// Most messages whose failures are remembered at once.
pub const CAPACITY: usize = 10_000;

/// A delivery's identity for the guard (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoisonKey(u64);

#[derive(Debug)]
struct Entry {
    failures: u32,
    last_error: String,
    /// Logical time of the last failure, for eviction.
    seen: u64,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<PoisonKey, Entry>,
    tick: u64,
}

/// The shared failure table. Cheap to clone; clones share it.
#[derive(Debug, Clone, Default)]
pub struct PoisonGuard {
    table: Arc<Mutex<Table>>,
    hasher: Arc<RandomState>,
}

/// A message due for quarantine: how often its workers failed and the last error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poisoned {
    pub failures: u32,
    pub last_error: String,
    /// Set when the broker's count decided it: the delivery's `x-delivery-count`.
    pub delivered: Option<u64>,
}

impl Poisoned {
    /// The quarantine reason (bounded).
    pub fn reason(&self) -> String {
        let reason = match self.delivered {
            Some(n) if self.failures > 0 => format!(
                "poison: delivered {n} times before (x-delivery-count reached \
                 broker.delivery_limit); workers here failed {} times: {}",
                self.failures, self.last_error
            ),
            Some(n) => format!(
                "poison: delivered {n} times before (x-delivery-count reached \
                 broker.delivery_limit)"
            ),
            None => format!(
                "poison: worker failed {} times: {}",
                self.failures, self.last_error
            ),
        };
        truncate_utf8(&reason, MAX_REASON_BYTES).into_owned()
    }
}

impl PoisonGuard {
    /// The key of a delivery.
    pub fn key(&self, message_id: Option<&str>, body: &[u8]) -> PoisonKey {
        PoisonKey(delivery_digest(&*self.hasher, message_id, body))
    }

    /// `Some` when the message's workers failed at least `max_failures` times (0: never).
    pub fn due(&self, key: PoisonKey, max_failures: u32) -> Option<Poisoned> {
        if max_failures == 0 {
            return None;
        }
        let table = self.table.lock();
        let e = table.entries.get(&key)?;
        (e.failures >= max_failures).then(|| Poisoned {
            failures: e.failures,
            last_error: e.last_error.clone(),
            delivered: None,
        })
    }

    /// `Some` when the broker delivered the message `limit` times before
    /// (`delivery_count`, RabbitMQ quorum queues' `x-delivery-count`): the last delivery the
    /// broker would make before dead-lettering it. This count survives restarts of drover
    /// and spans every instance, so it also ends a message that kills whole processes. On
    /// RabbitMQ before 4.3 every return counts, the paced ones during an outage too, which is
    /// why the limit is high (`broker.delivery_limit`).
    pub fn over_delivery_limit(
        &self,
        key: PoisonKey,
        delivery_count: Option<u64>,
        limit: u32,
    ) -> Option<Poisoned> {
        let count = delivery_count.filter(|&n| n >= u64::from(limit))?;
        let table = self.table.lock();
        let (failures, last_error) = table
            .entries
            .get(&key)
            .map(|e| (e.failures, e.last_error.clone()))
            .unwrap_or_default();
        Some(Poisoned {
            failures,
            last_error,
            delivered: Some(count),
        })
    }

    /// Count one failure of a worker on this message; returns the count.
    pub fn record_failure(&self, key: PoisonKey, error: &str) -> u32 {
        let mut table = self.table.lock();
        table.tick += 1;
        let tick = table.tick;
        if !table.entries.contains_key(&key) && table.entries.len() >= CAPACITY {
            // Full: forget the least recently failed (a linear scan, only when full).
            if let Some(oldest) = table
                .entries
                .iter()
                .min_by_key(|(_, e)| e.seen)
                .map(|(k, _)| *k)
            {
                table.entries.remove(&oldest);
            }
        }
        let e = table.entries.entry(key).or_insert(Entry {
            failures: 0,
            last_error: String::new(),
            seen: tick,
        });
        e.failures = e.failures.saturating_add(1);
        e.last_error = truncate_utf8(error, MAX_REASON_BYTES / 2).into_owned();
        e.seen = tick;
        e.failures
    }

    /// The message was handled (or quarantined): forget its failures.
    pub fn clear(&self, key: PoisonKey) {
        let mut table = self.table.lock();
        if !table.entries.is_empty() {
            table.entries.remove(&key);
        }
    }

    /// Messages with failures on record.
    pub fn len(&self) -> usize {
        self.table.lock().entries.len()
    }

    /// True when no failure is on record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a worker's error is the message's own fault (it counts towards quarantine) rather
/// than an outage of a dependency (it never counts).
pub fn counts_against_message(e: &PipelineError) -> bool {
    use crate::broker::BrokerError as B;
    match e {
        PipelineError::Unavailable(..) | PipelineError::NoAnswer(..) => false,
        PipelineError::Store(s) => !s.is_unavailable(),
        // The broker refused what the message made drover publish; a lost connection or
        // channel, a missing confirm or a nack (a resource alarm) is the broker's outage.
        PipelineError::Broker(b) => matches!(
            b,
            B::InvalidMessage(_) | B::Unroutable { .. } | B::Publish { .. }
        ),
        PipelineError::Provider(_) => false,
    }
}

/// Counts a worker's panic on drop, unless disarmed first: a panicking worker runs no code of
/// its own after the panic, but its stack unwinds through this guard.
#[derive(Debug)]
pub struct PanicWatch {
    guard: PoisonGuard,
    key: PoisonKey,
    armed: bool,
}

impl PanicWatch {
    pub fn new(guard: PoisonGuard, key: PoisonKey) -> Self {
        PanicWatch {
            guard,
            key,
            armed: true,
        }
    }

    /// The worker ended without panicking.
    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for PanicWatch {
    fn drop(&mut self) {
        // Killed or aborted workers are dropped too, but not while panicking: those are an
        // operator's or a supervisor's doing, not the message's.
        if self.armed && std::thread::panicking() {
            let n = self
                .guard
                .record_failure(self.key, "the worker panicked (see the log)");
            tracing::error!(failures = n, "delivery worker panicked on this message");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::BrokerError;
    use crate::store::StoreError;

    #[test]
    fn counts_reach_the_limit_and_clear() {
        let g = PoisonGuard::default();
        let k = g.key(Some("m"), b"body");
        assert_eq!(g.key(Some("m"), b"body"), k, "stable for the same delivery");
        assert_ne!(g.key(None, b"body"), k);
        assert_ne!(g.key(Some("m"), b"other"), k);
        for i in 1..=4 {
            assert_eq!(g.record_failure(k, "boom"), i);
            assert_eq!(g.due(k, 5), None);
        }
        g.record_failure(k, &"x".repeat(10_000));
        let p = g.due(k, 5).expect("due after 5");
        assert_eq!(p.failures, 5);
        assert!(p.reason().starts_with("poison: worker failed 5 times: xxx"));
        assert!(p.reason().len() <= MAX_REASON_BYTES);
        assert_eq!(g.due(k, 0), None, "0 disables the guard");
        g.clear(k);
        assert_eq!(g.due(k, 1), None);
        assert!(g.is_empty());
    }

    #[test]
    fn the_brokers_delivery_count_reaches_the_limit() {
        let g = PoisonGuard::default();
        let k = g.key(Some("m"), b"body");
        let cases = [
            (
                None,
                3,
                false,
                "no count (classic queues, the memory broker)",
            ),
            (Some(0), 3, false, "first delivery"),
            (Some(2), 3, false, "below the limit"),
            (Some(3), 3, true, "at the limit: the broker's last delivery"),
            (Some(40), 3, true, "past it (the limit was lowered)"),
        ];
        for (count, limit, due, case) in cases {
            assert_eq!(
                g.over_delivery_limit(k, count, limit).is_some(),
                due,
                "{case}"
            );
        }
        let p = g.over_delivery_limit(k, Some(3), 3).expect("due");
        assert_eq!(
            p.reason(),
            "poison: delivered 3 times before (x-delivery-count reached broker.delivery_limit)"
        );
        g.record_failure(k, "boom");
        let p = g.over_delivery_limit(k, Some(3), 3).expect("due");
        assert!(
            p.reason().ends_with("workers here failed 1 times: boom"),
            "{}",
            p.reason()
        );
    }

    #[test]
    fn a_panic_counts_and_a_kill_does_not() {
        let g = PoisonGuard::default();
        let k = g.key(None, b"x");
        // Dropped without panicking (a killed or aborted worker): not the message's fault.
        drop(PanicWatch::new(g.clone(), k));
        PanicWatch::new(g.clone(), k).disarm();
        assert!(g.is_empty());
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _watch = PanicWatch::new(g.clone(), k);
            panic!("a bug this message triggers");
        }));
        assert!(unwound.is_err());
        let p = g.due(k, 1).expect("the panic counted");
        assert_eq!(p.failures, 1);
        assert!(p.last_error.contains("panicked"));
    }

    #[test]
    fn the_table_is_bounded() {
        let g = PoisonGuard::default();
        for i in 0..(CAPACITY + 50) {
            g.record_failure(g.key(None, &i.to_le_bytes()), "e");
        }
        assert_eq!(g.len(), CAPACITY);
        // The oldest were forgotten, the newest kept.
        assert_eq!(g.due(g.key(None, &0usize.to_le_bytes()), 1), None);
        assert!(
            g.due(g.key(None, &(CAPACITY + 49).to_le_bytes()), 1)
                .is_some()
        );
    }

    #[test]
    fn only_the_messages_own_failures_count() {
        use crate::tree::LookupError;
        let db = |e: sqlx::Error| PipelineError::Store(StoreError::from(e));
        let cases: Vec<(PipelineError, bool)> = vec![
            (
                PipelineError::Unavailable("the store", LookupError::Restarting),
                false,
            ),
            (
                PipelineError::NoAnswer("the provider", "timeout".into()),
                false,
            ),
            (db(sqlx::Error::PoolTimedOut), false),
            (db(sqlx::Error::RowNotFound), true),
            (
                PipelineError::Broker(BrokerError::ConnectionClosed("gone".into())),
                false,
            ),
            (
                PipelineError::Broker(BrokerError::ConfirmTimeout {
                    route: crate::broker::Route::Failed,
                    timeout_ms: 1,
                }),
                false,
            ),
            (
                PipelineError::Broker(BrokerError::PublishNacked {
                    route: crate::broker::Route::Failed,
                }),
                false,
            ),
            (
                PipelineError::Broker(BrokerError::InvalidMessage("too long".into())),
                true,
            ),
        ];
        for (e, counts) in cases {
            assert_eq!(counts_against_message(&e), counts, "{e}");
        }
    }
}
