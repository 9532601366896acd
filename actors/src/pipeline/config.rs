//! Configuration of the delivery pipeline's own actors (`[delivery]`, `[scheduler]`; `[alerts]`
//! lives in `alerts`), and the composition the pipeline receives.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::broker::BrokerConfig;
use crate::message::MessageConfig;
use crate::pipeline::alerts::AlertConfig;
use crate::pipeline::canary::CanaryConfig;
use crate::pipeline::delivery_rate::DeliveryRateConfig;
use crate::pipeline::route::FailoverConfig;
use crate::pipeline::trends::TrendsConfig;
use crate::provider::ProviderConfig;
use crate::store::StoreConfig;
use crate::supervisor::SplitMix64;
use crate::supervisor::config::SupervisionConfig;

/// `[delivery]`: retries of a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Attempts before a message is failed and published to the failed queue.
    pub max_attempts: u32,
    /// Delay before the first retry (the reference design's 1 min).
    pub retry_base_ms: u64,
    /// Each further retry waits this many times longer (×3: 1 min, 3 min, 9 min, …).
    pub retry_multiplier: f64,
    /// Longest delay between two attempts.
    pub retry_max_ms: u64,
    /// ± this fraction of random jitter on each retry delay.
    pub retry_jitter: f64,
    /// A worker still running this long after being asked to stop is killed (its delivery is
    /// nacked back to the queue).
    pub worker_shutdown_ms: u64,
    /// A message found `sending` for longer than this is treated as interrupted (its worker
    /// or process died) and attempted again; younger, it is being sent by another worker.
    /// Must cover a whole provider call: at least `provider.timeout_ms` + 1,000 ms (checked
    /// at start).
    pub sending_lease_ms: u64,
    /// A message whose workers failed this many times for reasons of its own (not an outage)
    /// is quarantined to the invalid queue (0: never).
    pub max_worker_failures: u32,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            max_attempts: 5,
            retry_base_ms: 60_000,
            retry_multiplier: 3.0,
            retry_max_ms: 3_600_000,
            retry_jitter: 0.1,
            worker_shutdown_ms: 15_000,
            sending_lease_ms: 30_000,
            max_worker_failures: 5,
        }
    }
}

impl DeliveryConfig {
    /// `base × multiplier^(attempt-1)`, capped, jittered.
    pub fn retry_delay(&self, attempt: u32, rng: &mut SplitMix64) -> Duration {
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let raw = self.retry_base_ms as f64 * self.retry_multiplier.max(1.0).powi(exp);
        let capped = raw.min(self.retry_max_ms.max(self.retry_base_ms) as f64);
        let j = self.retry_jitter.clamp(0.0, 1.0);
        let factor = if j > 0.0 {
            1.0 + (rng.next_f64() * 2.0 - 1.0) * j
        } else {
            1.0
        };
        Duration::from_millis((capped * factor).max(0.0) as u64)
    }
}

/// `[scheduler]`: the actor that republishes due retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Look for due messages at least this often (other instances may have scheduled some).
    pub poll_ms: u64,
    /// Claim at most this many due messages per round.
    pub batch: u32,
    /// A claim not confirmed within this time is taken again (its claimer died).
    pub lease_ms: u64,
    /// Re-drive the failed queue at most this many messages a second.
    pub redrive_per_sec: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            poll_ms: 5_000,
            batch: 500,
            lease_ms: 60_000,
            redrive_per_sec: 50,
        }
    }
}

/// Everything the pipeline's actors are configured with.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PipelineConfig {
    pub supervision: SupervisionConfig,
    pub broker: BrokerConfig,
    pub store: StoreConfig,
    pub provider: ProviderConfig,
    pub message: MessageConfig,
    pub delivery: DeliveryConfig,
    pub scheduler: SchedulerConfig,
    pub alerts: AlertConfig,
    pub delivery_rate: DeliveryRateConfig,
    pub canary: CanaryConfig,
    pub trends: TrendsConfig,
    pub failover: FailoverConfig,
    /// How often the monitor caches the queues' depths for `/metrics` (`http.queue_sample_ms`;
    /// 0 means the 100 ms floor).
    pub queue_sample_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_multiply_by_three_and_cap() {
        let c = DeliveryConfig {
            retry_jitter: 0.0,
            retry_max_ms: 600_000,
            ..DeliveryConfig::default()
        };
        let mut rng = SplitMix64::new(1);
        let got: Vec<u64> = (1..=4)
            .map(|a| c.retry_delay(a, &mut rng).as_millis() as u64)
            .collect();
        assert_eq!(got, vec![60_000, 180_000, 540_000, 600_000]);
    }
}
