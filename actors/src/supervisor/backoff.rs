//! Per-child restart backoff: `delay(n) = min × multiplier^(n-1)`, capped at `max`, with a
//! symmetric jitter fraction drawn from a seedable generator.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Backoff policy of one child.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Backoff {
    /// Delay before the first restart, in milliseconds.
    pub min_ms: u64,
    /// Cap, in milliseconds.
    pub max_ms: u64,
    /// Growth factor per consecutive failure (the reference design's ×3: 1 min, 3 min, 9 min).
    pub multiplier: f64,
    /// Fraction of the delay added or removed at random: 0.1 means ±10 %.
    pub jitter: f64,
    /// A child that stayed up this long (milliseconds) starts its sequence again from `min`.
    pub reset_after_ms: u64,
    /// After this many consecutive failed incarnations, the supervisor gives up.
    pub max_retries: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min_ms: 100,
            max_ms: 30_000,
            multiplier: 3.0,
            jitter: 0.1,
            reset_after_ms: 60_000,
            max_retries: None,
        }
    }
}

impl Backoff {
    /// Restart at once, every time (OTP's behaviour).
    pub fn none() -> Self {
        Backoff {
            min_ms: 0,
            max_ms: 0,
            multiplier: 1.0,
            jitter: 0.0,
            reset_after_ms: 0,
            max_retries: None,
        }
    }

    /// `min × multiplier^(n-1)` capped at `max`, before jitter; `n` counts from 1.
    pub fn base_delay(&self, n: u32) -> Duration {
        if self.min_ms == 0 {
            return Duration::ZERO;
        }
        let exp = n.saturating_sub(1).min(64) as i32;
        let raw = self.min_ms as f64 * self.multiplier.max(1.0).powi(exp);
        let capped = raw.min(self.max_ms.max(self.min_ms) as f64);
        Duration::from_millis(capped as u64)
    }

    /// The delay before restart number `n` (from 1), jittered with `rng`.
    pub fn delay(&self, n: u32, rng: &mut SplitMix64) -> Duration {
        let base = self.base_delay(n);
        let j = self.jitter.clamp(0.0, 1.0);
        if j == 0.0 || base.is_zero() {
            return base;
        }
        // uniform in [-j, +j]
        let u = rng.next_f64() * 2.0 - 1.0;
        let factor = 1.0 + u * j;
        Duration::from_secs_f64((base.as_secs_f64() * factor).max(0.0))
    }

    pub fn reset_after(&self) -> Duration {
        Duration::from_millis(self.reset_after_ms)
    }
}

/// A tiny deterministic generator (SplitMix64) so jitter is reproducible from a seed.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_without_jitter_is_min_times_multiplier_capped() {
        let b = Backoff {
            min_ms: 60_000,
            max_ms: 600_000,
            multiplier: 3.0,
            jitter: 0.0,
            ..Backoff::default()
        };
        let mut rng = SplitMix64::new(1);
        let got: Vec<u64> = (1..=5)
            .map(|n| b.delay(n, &mut rng).as_millis() as u64)
            .collect();
        assert_eq!(got, vec![60_000, 180_000, 540_000, 600_000, 600_000]);
    }

    #[test]
    fn jitter_stays_within_fraction_and_is_reproducible_from_seed() {
        let b = Backoff {
            min_ms: 1000,
            max_ms: 1000,
            multiplier: 3.0,
            jitter: 0.2,
            ..Backoff::default()
        };
        let a: Vec<Duration> = {
            let mut r = SplitMix64::new(42);
            (0..100).map(|_| b.delay(1, &mut r)).collect()
        };
        let again: Vec<Duration> = {
            let mut r = SplitMix64::new(42);
            (0..100).map(|_| b.delay(1, &mut r)).collect()
        };
        assert_eq!(a, again);
        assert!(
            a.iter()
                .all(|d| *d >= Duration::from_millis(800) && *d <= Duration::from_millis(1200))
        );
        assert!(a.iter().any(|d| *d != Duration::from_millis(1000)));
    }
}
