//! Configuration of supervision, as it appears in `config/default.toml` under
//! `[supervision]`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::supervisor::{Backoff, Intensity};

/// `[supervision]`: the intensity of drover's supervisors and the default backoff of their
/// children.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisionConfig {
    /// More than this many restarts within `period_ms` and a supervisor gives up.
    pub max_restarts: u32,
    /// The sliding window of the intensity, in milliseconds.
    pub period_ms: u64,
    /// Seed of the backoff jitter (set it to reproduce a run).
    pub seed: u64,
    /// Default restart backoff of children.
    pub backoff: Backoff,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        SupervisionConfig {
            max_restarts: 10,
            period_ms: 60_000,
            seed: 0x5EED,
            backoff: Backoff::default(),
        }
    }
}

impl SupervisionConfig {
    pub fn intensity(&self) -> Intensity {
        Intensity {
            max_restarts: self.max_restarts,
            period: Duration::from_millis(self.period_ms),
        }
    }
}
