//! A provider without a network, for demos and tests: each send waits `latency_ms` (on the
//! tokio clock, so paused-time tests run instantly) and draws its outcome from a seeded
//! SplitMix64 stream, so a seed reproduces a run's sequence of outcomes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ProviderError, SendOutcome};
use crate::message::OutboundMessage;

/// `[provider.simulated]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatedConfig {
    /// How long each send takes, in milliseconds.
    pub latency_ms: u64,
    /// Fraction of sends (0 to 1) that fail transiently (as a provider's 503 would).
    pub transient_failure_rate: f64,
    /// Fraction of sends (0 to 1) that fail permanently (as an invalid recipient would).
    /// `transient_failure_rate + permanent_failure_rate` must not exceed 1.
    pub permanent_failure_rate: f64,
    /// Seed of the outcome stream: the same seed gives the same sequence of outcomes.
    pub seed: u64,
}

impl Default for SimulatedConfig {
    fn default() -> Self {
        SimulatedConfig {
            latency_ms: 50,
            transient_failure_rate: 0.1,
            permanent_failure_rate: 0.01,
            seed: 0x5EED,
        }
    }
}

/// SplitMix64's increment.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The simulated provider. Clones share one outcome stream (a lock-free SplitMix64: its state
/// is a counter), so the sequence of outcomes a seed gives does not depend on which clone
/// draws; which message gets which outcome does depend on the order of the calls.
#[derive(Debug, Clone)]
pub struct SimulatedProvider {
    latency: Duration,
    transient: f64,
    permanent: f64,
    state: Arc<AtomicU64>,
}

impl SimulatedProvider {
    /// Validate the rates and start the stream at `config.seed`.
    pub fn new(config: &SimulatedConfig) -> Result<SimulatedProvider, ProviderError> {
        let (t, p) = (config.transient_failure_rate, config.permanent_failure_rate);
        let rate_ok = |r: f64| r.is_finite() && (0.0..=1.0).contains(&r);
        if !rate_ok(t) || !rate_ok(p) || t + p > 1.0 {
            return Err(ProviderError::InvalidConfig(format!(
                "provider.simulated rates must be within 0..=1 and sum to at most 1 \
                 (transient {t}, permanent {p})"
            )));
        }
        Ok(SimulatedProvider {
            latency: Duration::from_millis(config.latency_ms),
            transient: t,
            permanent: p,
            state: Arc::new(AtomicU64::new(config.seed)),
        })
    }

    /// The next outcome of the stream, without the latency. The outcomes follow the seed (a
    /// run can be replayed); `Sent` ids are `SIM` and 32 random hex digits, unique across runs
    /// and instances as a real provider's are.
    pub fn draw(&self) -> SendOutcome {
        // Two SplitMix64 steps at once: one decides the outcome; the other is kept so that a
        // seed's sequence of outcomes stays what it was.
        let base = self
            .state
            .fetch_add(GAMMA.wrapping_mul(2), Ordering::Relaxed);
        let decide = mix(base.wrapping_add(GAMMA));
        let u = (decide >> 11) as f64 / (1u64 << 53) as f64;
        if u < self.permanent {
            SendOutcome::Permanent {
                code: None,
                detail: "simulated permanent failure".into(),
            }
        } else if u < self.permanent + self.transient {
            SendOutcome::Transient {
                class: "simulated",
                detail: "simulated transient failure".into(),
            }
        } else {
            SendOutcome::Sent {
                provider_message_id: format!("SIM{}", uuid::Uuid::new_v4().simple()),
            }
        }
    }

    /// Wait the configured latency (tokio time), then [`draw`](Self::draw).
    pub async fn send(&self, _msg: &OutboundMessage, _attempt: u32) -> SendOutcome {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        self.draw()
    }
}
