//! Handler deadlines.
//!
//! ractor gives a supervisor no view into whether a child is inside a handler, so a child
//! that wants a deadline arms its [`Watchdog`] around the work (`let _busy = wd.busy();`).
//! The supervisor runs one watcher task per incarnation of a child whose spec has a
//! `handler_deadline`: if the same busy period lasts longer than the deadline, the watcher
//! tells the supervisor, which kills the child and records the exit as a `timeout`.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Debug, Default)]
struct Shared {
    /// (busy period number, when it began) while busy.
    busy: Mutex<Option<(u64, Instant)>>,
    seq: Mutex<u64>,
    changed: Notify,
}

/// Arms a deadline around a handler. Cloning shares the same watchdog. A default watchdog
/// (no deadline in the spec) is never watched; arming it costs a lock and nothing else.
#[derive(Debug, Clone, Default)]
pub struct Watchdog {
    shared: Arc<Shared>,
}

/// While alive, the child counts as busy.
#[derive(Debug)]
pub struct BusyGuard {
    shared: Arc<Shared>,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        *self.shared.busy.lock() = None;
        self.shared.changed.notify_waiters();
    }
}

impl Watchdog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Mark the start of a handler; the returned guard marks its end when dropped.
    pub fn busy(&self) -> BusyGuard {
        let n = {
            let mut s = self.shared.seq.lock();
            *s += 1;
            *s
        };
        *self.shared.busy.lock() = Some((n, Instant::now()));
        self.shared.changed.notify_one();
        BusyGuard {
            shared: self.shared.clone(),
        }
    }

    /// Resolves when one busy period has lasted longer than `deadline`; returns how long it
    /// had lasted. Runs until then (the supervisor aborts it when the incarnation exits).
    pub(crate) async fn overrun(&self, deadline: Duration) -> Duration {
        loop {
            let current = *self.shared.busy.lock();
            match current {
                None => {
                    let notified = self.shared.changed.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    if self.shared.busy.lock().is_some() {
                        continue;
                    }
                    notified.await;
                }
                Some((n, since)) => {
                    tokio::time::sleep_until(since + deadline).await;
                    if let Some((m, s)) = *self.shared.busy.lock() {
                        if m == n {
                            return Instant::now().saturating_duration_since(s);
                        }
                    }
                }
            }
        }
    }
}
