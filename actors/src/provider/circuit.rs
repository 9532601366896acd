//! A circuit breaker for the provider: a pure state machine over `tokio::time::Instant` (no
//! tasks, no timers; the caller asks before each send and reports each outcome).
//!
//! ```text
//!            failure_threshold consecutive Transient/Ambiguous,
//!            or one ProviderFault
//!   Closed ─────────────────────────────────────────────▶ Open (until now + open_ms)
//!     ▲                                                   │  ▲
//!     │ the probe succeeds                    open_ms over │  │ the probe fails
//!     │ (Sent or Permanent)                                ▼  │
//!     └──────────────────────────────────────────────── HalfOpen: exactly one probe
//! ```
//!
//! `Sent` and `Permanent` both count as success: a permanent rejection is the message's
//! fault, and proves the provider is answering. While open, late outcomes of requests that
//! started before it opened are ignored. A probe that is never reported does not wedge the
//! breaker: after `open_ms` another probe is allowed.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::SendOutcome;
use crate::clock::Clock;

/// `[provider.circuit]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitConfig {
    /// Consecutive transient or ambiguous failures that open the circuit (0 counts as 1). A
    /// provider fault (401/403) opens it at once.
    pub failure_threshold: u32,
    /// How long the circuit stays open before one probe is let through, in milliseconds.
    pub open_ms: u64,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        CircuitConfig {
            failure_threshold: 5,
            open_ms: 30_000,
        }
    }
}

/// The answer of [`CircuitBreaker::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Closed: send.
    Allowed,
    /// Half-open: send this one as the probe, and report its outcome.
    Probe,
    /// Open (or a probe is in flight): do not send before `retry_at`.
    Rejected {
        /// When to ask again.
        retry_at: Instant,
    },
}

/// A change of state reported by the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    /// Closed or half-open -> open.
    Opened,
    /// Open -> half-open: the next [`check`](CircuitBreaker::check) gets the probe.
    HalfOpened,
    /// Half-open -> closed: the provider works again; re-drive what failed meanwhile.
    Closed,
}

/// The breaker's state, for status endpoints: times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CircuitState {
    /// Sending normally.
    Closed {
        /// Transient or ambiguous failures in a row so far.
        consecutive_failures: u32,
    },
    /// Not sending until `retry_at_ms`.
    Open {
        /// When it (last) opened.
        opened_at_ms: i64,
        /// When a probe will be allowed.
        retry_at_ms: i64,
        /// The error class of the outcome that opened it.
        reason: String,
    },
    /// Letting one probe through.
    HalfOpen {
        /// When it (last) opened.
        opened_at_ms: i64,
        /// Whether the probe has been handed out and not reported yet.
        probe_in_flight: bool,
        /// The error class of the outcome that opened it.
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inner {
    Closed {
        failures: u32,
    },
    Open {
        opened_at: Instant,
        until: Instant,
    },
    HalfOpen {
        opened_at: Instant,
        probe_since: Option<Instant>,
    },
}

/// The circuit breaker (see the module documentation).
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    threshold: u32,
    open_for: Duration,
    inner: Inner,
    reason: String,
    clock: Clock,
}

impl CircuitBreaker {
    /// A closed breaker; [`state`](Self::state) reports times on a [`Clock`] created now.
    pub fn new(config: &CircuitConfig) -> CircuitBreaker {
        CircuitBreaker::with_clock(config, Clock::new())
    }

    /// A closed breaker that reports times on `clock`.
    pub fn with_clock(config: &CircuitConfig, clock: Clock) -> CircuitBreaker {
        CircuitBreaker {
            threshold: config.failure_threshold.max(1),
            open_for: Duration::from_millis(config.open_ms),
            inner: Inner::Closed { failures: 0 },
            reason: String::new(),
            clock,
        }
    }

    /// Move from open to half-open once `open_ms` is over: `Some(HalfOpened)` when it does
    /// (also done by [`check`](Self::check), which then hands out the probe).
    pub fn poll(&mut self) -> Option<Transition> {
        match self.inner {
            Inner::Open { opened_at, until } if Instant::now() >= until => {
                self.inner = Inner::HalfOpen {
                    opened_at,
                    probe_since: None,
                };
                Some(Transition::HalfOpened)
            }
            _ => None,
        }
    }

    /// May a request go out now? Closed: `Allowed`. Half-open without a probe in flight:
    /// `Probe` (exactly once). Otherwise `Rejected` with when to ask again.
    pub fn check(&mut self) -> Permit {
        self.poll();
        let now = Instant::now();
        match self.inner {
            Inner::Closed { .. } => Permit::Allowed,
            Inner::Open { until, .. } => Permit::Rejected { retry_at: until },
            Inner::HalfOpen {
                opened_at,
                probe_since,
            } => match probe_since {
                Some(since) if now < since + self.open_for => Permit::Rejected {
                    retry_at: since + self.open_for,
                },
                // No probe yet, or the last one was never reported.
                _ => {
                    self.inner = Inner::HalfOpen {
                        opened_at,
                        probe_since: Some(now),
                    };
                    Permit::Probe
                }
            },
        }
    }

    /// Report the outcome of a request: `Some(transition)` when the state changed.
    pub fn on_outcome(&mut self, outcome: &SendOutcome) -> Option<Transition> {
        let failure = match outcome {
            SendOutcome::Sent { .. } | SendOutcome::Permanent { .. } => None,
            SendOutcome::Transient { .. } | SendOutcome::Ambiguous { .. } => Some(false),
            SendOutcome::ProviderFault { .. } => Some(true),
        };
        match (self.inner, failure) {
            // Late outcomes of requests sent before it opened.
            (Inner::Open { .. }, _) => None,
            (Inner::Closed { .. }, None) => {
                self.inner = Inner::Closed { failures: 0 };
                None
            }
            (Inner::HalfOpen { .. }, None) => {
                self.inner = Inner::Closed { failures: 0 };
                self.reason.clear();
                Some(Transition::Closed)
            }
            (Inner::Closed { failures }, Some(fault)) => {
                let failures = failures.saturating_add(1);
                if fault || failures >= self.threshold {
                    self.open(outcome)
                } else {
                    self.inner = Inner::Closed { failures };
                    None
                }
            }
            (Inner::HalfOpen { .. }, Some(_)) => self.open(outcome),
        }
    }

    fn open(&mut self, outcome: &SendOutcome) -> Option<Transition> {
        let now = Instant::now();
        self.inner = Inner::Open {
            opened_at: now,
            until: now + self.open_for,
        };
        self.reason = outcome.error_class().to_string();
        Some(Transition::Opened)
    }

    /// When a probe will be allowed, while open.
    pub fn retry_at(&self) -> Option<Instant> {
        match self.inner {
            Inner::Open { until, .. } => Some(until),
            _ => None,
        }
    }

    /// Whether requests flow normally.
    pub fn is_closed(&self) -> bool {
        matches!(self.inner, Inner::Closed { .. })
    }

    /// The state as status endpoints show it (an open circuit whose time is over shows as
    /// half-open).
    pub fn state(&self) -> CircuitState {
        let now = Instant::now();
        let now_ms = self.clock.now_ms();
        let ms = |at: Instant| {
            if at >= now {
                now_ms + (at - now).as_millis() as i64
            } else {
                now_ms - (now - at).as_millis() as i64
            }
        };
        match self.inner {
            Inner::Closed { failures } => CircuitState::Closed {
                consecutive_failures: failures,
            },
            Inner::Open { opened_at, until } if now < until => CircuitState::Open {
                opened_at_ms: ms(opened_at),
                retry_at_ms: ms(until),
                reason: self.reason.clone(),
            },
            Inner::Open { opened_at, .. } => CircuitState::HalfOpen {
                opened_at_ms: ms(opened_at),
                probe_in_flight: false,
                reason: self.reason.clone(),
            },
            Inner::HalfOpen {
                opened_at,
                probe_since,
            } => CircuitState::HalfOpen {
                opened_at_ms: ms(opened_at),
                probe_in_flight: probe_since.is_some_and(|s| now < s + self.open_for),
                reason: self.reason.clone(),
            },
        }
    }
}
