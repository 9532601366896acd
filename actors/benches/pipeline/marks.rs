//! The pipeline bench: per-message marks, shared by the publisher, the provider and the analysis.

use super::*;

/// What the harness saw of each message, indexed by its number. Ids are `prefix | index`.
pub(crate) struct Marks {
    pub(crate) origin: Instant,
    pub(crate) prefix: u128,
    /// Harness clock (ns since `origin`, + 1; 0 = not yet) just before `basic_publish`.
    pub(crate) publish_ns: Vec<AtomicU64>,
    /// `Clock::now_ms` at the same moment (to compare with `updated_at`).
    pub(crate) publish_ms: Vec<AtomicI64>,
    /// Harness clock when the provider first received a request for the message.
    pub(crate) received_ns: Vec<AtomicU64>,
    /// Requests the provider received per message.
    pub(crate) hits: Vec<AtomicU32>,
    pub(crate) received_unique: AtomicUsize,
    pub(crate) received_total: AtomicU64,
    pub(crate) unknown: AtomicU64,
    /// Set when the publisher gave up (its error comes with its task's result).
    pub(crate) publish_failed: std::sync::atomic::AtomicBool,
}

impl Marks {
    pub(crate) fn new(n: usize) -> Marks {
        let zero64 = || (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        Marks {
            origin: Instant::now(),
            prefix: Uuid::new_v4().as_u128() & !0xFFFF_FFFFu128,
            publish_ns: zero64(),
            publish_ms: (0..n).map(|_| AtomicI64::new(0)).collect(),
            received_ns: zero64(),
            hits: (0..n).map(|_| AtomicU32::new(0)).collect(),
            received_unique: AtomicUsize::new(0),
            received_total: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            publish_failed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(crate) fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64 + 1
    }

    pub(crate) fn id(&self, i: usize) -> Uuid {
        Uuid::from_u128(self.prefix | i as u128)
    }

    pub(crate) fn index(&self, id: &Uuid) -> Option<usize> {
        let v = id.as_u128();
        let i = (v & 0xFFFF_FFFF) as usize;
        (v & !0xFFFF_FFFFu128 == self.prefix && i < self.hits.len()).then_some(i)
    }

    pub(crate) fn index_of_text(&self, id: &str) -> Option<usize> {
        Uuid::parse_str(id).ok().and_then(|u| self.index(&u))
    }
}
