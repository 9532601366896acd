//! Wall-clock time derived from `tokio::time`, so the paused test clock governs timestamps
//! and due times stored in the database as well as timers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Unix milliseconds that advance with the tokio clock. Create one per process (or per test)
/// and pass it in `Args`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall_origin_ms: i64,
    origin: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    pub fn new() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Clock {
            wall_origin_ms: wall,
            origin: Instant::now(),
        }
    }

    /// Now, in Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.wall_origin_ms
            + Instant::now()
                .saturating_duration_since(self.origin)
                .as_millis() as i64
    }

    /// The tokio instant at which the wall clock reads `at_ms` (now, if that is past).
    pub fn instant_at(&self, at_ms: i64) -> Instant {
        let now = self.now_ms();
        Instant::now() + Duration::from_millis(at_ms.saturating_sub(now).max(0) as u64)
    }
}
