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

/// Arms a deadline around a handler. Cloning shares the same watchdog. A disabled watchdog
/// (no deadline in the child's spec) is never watched and arming it does nothing.
#[derive(Debug, Clone, Default)]
pub struct Watchdog {
    shared: Option<Arc<Shared>>,
}

/// While alive, the child counts as busy.
#[derive(Debug)]
pub struct BusyGuard {
    shared: Option<Arc<Shared>>,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            *shared.busy.lock() = None;
            shared.changed.notify_waiters();
        }
    }
}

impl Watchdog {
    /// A watchdog that can be watched.
    pub fn new() -> Self {
        Watchdog {
            shared: Some(Arc::default()),
        }
    }

    /// A watchdog nobody watches (the child has no handler deadline).
    pub fn disabled() -> Self {
        Watchdog { shared: None }
    }

    /// Mark the start of a handler; the returned guard marks its end when dropped.
    pub fn busy(&self) -> BusyGuard {
        if let Some(shared) = &self.shared {
            let n = {
                let mut s = shared.seq.lock();
                *s += 1;
                *s
            };
            *shared.busy.lock() = Some((n, Instant::now()));
            shared.changed.notify_one();
        }
        BusyGuard {
            shared: self.shared.clone(),
        }
    }

    /// Resolves when one busy period has lasted longer than `deadline`; returns how long it
    /// had lasted. Runs until then (the supervisor aborts it when the incarnation exits). A
    /// disabled watchdog never resolves.
    pub(crate) async fn overrun(&self, deadline: Duration) -> Duration {
        let Some(shared) = &self.shared else {
            return std::future::pending().await;
        };
        loop {
            let current = *shared.busy.lock();
            match current {
                None => {
                    let notified = shared.changed.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    if shared.busy.lock().is_some() {
                        continue;
                    }
                    notified.await;
                }
                Some((n, since)) => {
                    tokio::time::sleep_until(since + deadline).await;
                    if let Some((m, s)) = *shared.busy.lock() {
                        if m == n {
                            return Instant::now().saturating_duration_since(s);
                        }
                    }
                }
            }
        }
    }
}
