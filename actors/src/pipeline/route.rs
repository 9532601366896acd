//! Which provider of the chain a message goes to (pure decisions, table-tested here; the
//! delivery worker applies them).
//!
//! The chain is `[provider]` (the primary) then `[[provider.fallbacks]]`, each provider an
//! actor of its own with its own circuit (`root/providers/<name>`). A message is offered to
//! them in [`order`]: chain order, except that a provider whose circuit closed less than
//! `failover.revert_after_ms` ago waits at the back (a flapping primary does not whipsaw the
//! traffic). A provider whose circuit is open refuses at once and the next is asked; a
//! half-open one takes one probe message. So while the primary is down the fallback sends,
//! and after a probe has closed the primary's circuit and the hold has passed, the primary
//! sends again. A failure that is not the provider's (a permanent error: the recipient's)
//! never moves a message to another provider.
//!
//! Never twice: an attempt whose fate is unknown (ambiguous, interrupted) may have reached
//! the provider that made it. Before any further attempt every provider of the chain that can
//! be asked is asked ([`Reconciliation`](crate::provider::Reconciliation)); found, the message
//! is sent. If one cannot answer (its lookup failed, or it has no lookup), [`restrict`] keeps
//! the message to the providers that could not answer (a second send there is the risk drover
//! always had with one provider, and a provider that deduplicates by itself, such as the
//! webhook, makes it none); once `failover.ambiguous_wait_ms` has passed since the first
//! uncertain attempt, `failover.ambiguous_policy` says whether the whole chain may send
//! (`send`, accepting the risk) or the message keeps waiting for them (`wait`).

use serde::{Deserialize, Serialize};

use crate::provider::CircuitState;

/// `[failover]`: how the provider chain hands traffic over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    /// A provider whose circuit closed this recently is tried after the others.
    pub revert_after_ms: u64,
    /// How long a message whose earlier attempt's fate is unknown waits for the providers
    /// that could not tell before `ambiguous_policy` applies.
    pub ambiguous_wait_ms: u64,
    /// After `ambiguous_wait_ms`: `"wait"` (only those providers, however long) or `"send"`
    /// (any provider of the chain, accepting a possible second SMS).
    pub ambiguous_policy: AmbiguousPolicy,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            revert_after_ms: 60_000,
            ambiguous_wait_ms: 300_000,
            ambiguous_policy: AmbiguousPolicy::Wait,
        }
    }
}

/// What a message whose earlier attempt's fate is unknown does once it has waited
/// `ambiguous_wait_ms` for the providers that could not tell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AmbiguousPolicy {
    /// Keep waiting for them: never risk a second SMS through another provider.
    #[default]
    Wait,
    /// Send through any provider of the chain.
    Send,
}

/// One provider of the chain as the router sees it (cached by its actor in `Pipeline::ops`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProviderView {
    pub name: String,
    /// `None` before its actor first started.
    pub circuit: Option<CircuitState>,
    /// When its circuit last closed after having been open (Unix ms).
    pub closed_at_ms: Option<i64>,
}

/// The order in which to offer a message to the chain's providers (indexes into `views`):
/// chain order, with the providers whose circuit closed less than `revert_after_ms` ago
/// moved to the back (in chain order among themselves). Pure.
pub fn order(views: &[ProviderView], now_ms: i64, revert_after_ms: u64) -> Vec<usize> {
    let held = |v: &ProviderView| {
        matches!(v.circuit, Some(CircuitState::Closed { .. }))
            && v.closed_at_ms
                .is_some_and(|at| now_ms - at < revert_after_ms as i64)
    };
    let (mut ready, back): (Vec<usize>, Vec<usize>) =
        (0..views.len()).partition(|&i| !held(&views[i]));
    ready.extend(back);
    ready
}

/// Which providers may take a message whose earlier attempts' fate is unknown, given the ones
/// that could not tell (`unanswered`, indexes into the chain) and how long it has waited
/// since its first uncertain attempt: `None` = any. Pure.
pub fn restrict(
    unanswered: &[usize],
    waited_ms: i64,
    config: &FailoverConfig,
) -> Option<Vec<usize>> {
    if unanswered.is_empty() {
        return None;
    }
    if waited_ms >= config.ambiguous_wait_ms as i64
        && config.ambiguous_policy == AmbiguousPolicy::Send
    {
        return None;
    }
    Some(unanswered.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(name: &str, circuit: Option<CircuitState>, closed_at_ms: Option<i64>) -> ProviderView {
        ProviderView {
            name: name.into(),
            circuit,
            closed_at_ms,
        }
    }

    fn closed() -> Option<CircuitState> {
        Some(CircuitState::Closed {
            consecutive_failures: 0,
        })
    }

    fn open() -> Option<CircuitState> {
        Some(CircuitState::Open {
            opened_at_ms: 0,
            retry_at_ms: 1_000,
            reason: "server_error".into(),
        })
    }

    #[test]
    fn orders() {
        let now = 100_000;
        let cases: Vec<(&str, Vec<ProviderView>, Vec<usize>)> = vec![
            (
                "all closed: chain order",
                vec![v("a", closed(), None), v("b", closed(), None)],
                vec![0, 1],
            ),
            (
                "primary open: still offered first (it refuses at once, or takes its probe)",
                vec![v("a", open(), None), v("b", closed(), None)],
                vec![0, 1],
            ),
            (
                "primary closed 10 s ago, hold 60 s: the fallback first",
                vec![v("a", closed(), Some(now - 10_000)), v("b", closed(), None)],
                vec![1, 0],
            ),
            (
                "primary closed 60 s ago: back to the primary",
                vec![v("a", closed(), Some(now - 60_000)), v("b", closed(), None)],
                vec![0, 1],
            ),
            (
                "three, the first two in their hold",
                vec![
                    v("a", closed(), Some(now - 1)),
                    v("b", closed(), Some(now - 2)),
                    v("c", closed(), None),
                ],
                vec![2, 0, 1],
            ),
            ("one provider", vec![v("a", closed(), Some(now))], vec![0]),
        ];
        for (case, views, expected) in cases {
            assert_eq!(order(&views, now, 60_000), expected, "{case}");
        }
    }

    #[test]
    fn restrictions() {
        let wait = FailoverConfig {
            ambiguous_wait_ms: 1_000,
            ..FailoverConfig::default()
        };
        let send = FailoverConfig {
            ambiguous_policy: AmbiguousPolicy::Send,
            ..wait.clone()
        };
        assert_eq!(restrict(&[], 0, &wait), None, "everyone answered: any");
        assert_eq!(restrict(&[0], 10, &wait), Some(vec![0]));
        assert_eq!(
            restrict(&[0], 10, &send),
            Some(vec![0]),
            "not waited long enough"
        );
        assert_eq!(restrict(&[0], 1_000, &send), None, "waited: send anywhere");
        assert_eq!(
            restrict(&[0, 2], 5_000, &wait),
            Some(vec![0, 2]),
            "wait forever"
        );
    }
}
