//! `ProviderWorker`: one SMS provider of the chain (`root/providers/<name>`).
//!
//! Owns that provider's HTTP client and circuit breaker. Each send runs in a task of its own (sends
//! are concurrent); its outcome comes back to this actor to drive the breaker, then to the
//! caller. While the circuit is open, sends are refused with the time to try again, so
//! messages are rescheduled without spending attempts. When a half-open probe succeeds the
//! circuit closes and the failed queue is re-driven (see `scheduler`).
//! Every change of the circuit is written to the cached cell `Pipeline::ops` (read by the
//! router, `/readyz` and `/metrics`, which never message this actor).

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::message::OutboundMessage;
use crate::pipeline::Pipeline;
use crate::provider::{
    AttemptWindow, CircuitBreaker, CircuitState, Fetched, Permit, Provider, Reconciliation,
    SendOutcome, Transition,
};

/// What a send came to.
#[derive(Debug, Clone)]
pub enum SendResult {
    /// The provider was called.
    Done(SendOutcome),
    /// The circuit is open: try again at this wall-clock time (Unix ms).
    CircuitOpen { retry_at_ms: i64 },
}

/// Messages of [`ProviderWorker`].
#[derive(Debug)]
pub enum ProviderMessage {
    Send {
        msg: Box<OutboundMessage>,
        attempt: u32,
        reply: RpcReplyPort<SendResult>,
    },
    /// Ask the provider whether an earlier attempt of `msg` within `window` went through
    /// (`provider.reconcile_timeout_ms` at most; counted in `drover_reconciled_total`).
    Reconcile {
        msg: Box<OutboundMessage>,
        window: AttemptWindow,
        reply: RpcReplyPort<Reconciliation>,
    },
    /// The provider's current word on the message it knows as `provider_message_id` (Twilio's
    /// `FetchMessage`; `provider.reconcile_timeout_ms` at most): for the canary when no
    /// receipts come.
    Fetch {
        provider_message_id: String,
        reply: RpcReplyPort<Fetched>,
    },
    /// Internal: `alerts.circuit_open_alert_ms` after the circuit opened at `since` (Unix
    /// ms): if it is still open, alert, whether or not a send comes by.
    #[doc(hidden)]
    OpenTooLong { since: i64 },
    /// Internal: a send finished.
    #[doc(hidden)]
    Finished {
        outcome: SendOutcome,
        probe: bool,
        reply: RpcReplyPort<SendResult>,
    },
}

/// The provider actor.
#[derive(Debug, Clone, Copy)]
pub struct ProviderWorker;

/// Arguments of [`ProviderWorker`]: the pipeline, and which provider of the chain.
#[derive(Debug, Clone)]
pub struct ProviderArgs {
    pub p: Pipeline,
    /// Index into `provider.chain()` (0: the primary).
    pub index: usize,
}

/// State of [`ProviderWorker`].
#[derive(Debug)]
pub struct ProviderState {
    p: Pipeline,
    index: usize,
    /// This provider's section of the chain.
    config: crate::provider::ProviderConfig,
    provider: Provider,
    circuit: CircuitBreaker,
    probe_in_flight: bool,
    /// Since when the circuit has been open (half-open probes included), Unix ms.
    open_since_ms: Option<i64>,
    /// The circuit_open alert went out for this open period (one alert per period).
    alerted: bool,
}

impl ProviderState {
    /// Cache the circuit for the router and the probes, and say it in the tree (`/status`:
    /// `primary twilio, circuit closed`).
    fn publish_circuit(&self, me: &ActorRef<ProviderMessage>) {
        let state = self.circuit.state();
        let circuit = match &state {
            CircuitState::Closed { .. } => "closed",
            CircuitState::Open { .. } => "open",
            CircuitState::HalfOpen { .. } => "half-open",
        };
        let role = if self.index == 0 {
            "primary"
        } else {
            "fallback"
        };
        self.p.tree.set_detail(
            &self.p.path(&format!("providers/{}", self.config.name)),
            me.get_id(),
            format!("{role} {}, circuit {circuit}", self.config.kind),
        );
        self.p.ops.set_provider_circuit(
            self.index,
            &self.config.name,
            state,
            self.p.clock.now_ms(),
        );
    }

    /// Alert once per open period when the circuit has stayed open `circuit_open_alert_ms`:
    /// at that time (a timer set when it opened) or at a refused send after it.
    fn check_open_too_long(&mut self) {
        let Some(since) = self.open_since_ms else {
            return;
        };
        let open_ms = self.p.clock.now_ms() - since;
        let limit = self.p.config.alerts.circuit_open_alert_ms;
        if open_ms >= limit as i64 && !self.alerted {
            self.alerted = true;
            crate::pipeline::alerts::raise(
                &self.p,
                crate::pipeline::alerts::Alert {
                    kind: crate::pipeline::alerts::AlertKind::CircuitOpen,
                    // The primary keeps the plain key; a fallback's names it.
                    key: if self.index == 0 {
                        "circuit_open".into()
                    } else {
                        format!("circuit_open:{}", self.config.name)
                    },
                    summary: format!(
                        "provider {} circuit open for {open_ms} ms",
                        self.config.name
                    ),
                    details: serde_json::json!({
                        "provider": self.config.name,
                        "open_ms": open_ms,
                        "state": self.circuit.state(),
                    }),
                },
            );
        }
    }
}

impl Actor for ProviderWorker {
    type Msg = ProviderMessage;
    type State = ProviderState;
    type Arguments = ProviderArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ProviderArgs { p, index }: ProviderArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let Some(config) = p.config.provider.chain().get(index).map(|c| (*c).clone()) else {
            panic!("provider {index} is not in the chain: the providers spec is built from it");
        };
        let provider = Provider::from_config(&config)?;
        let circuit = CircuitBreaker::new(&config.circuit);
        let state = ProviderState {
            p,
            index,
            config,
            provider,
            circuit,
            probe_in_flight: false,
            open_since_ms: None,
            alerted: false,
        };
        state.publish_circuit(&myself);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ProviderMessage::Send {
                msg,
                attempt,
                reply,
            } => {
                let permit = state.circuit.check();
                if permit != Permit::Allowed {
                    // It may have just moved to half-open: keep the cached state current.
                    state.publish_circuit(&myself);
                }
                let probe = match permit {
                    Permit::Allowed => false,
                    Permit::Probe if !state.probe_in_flight => true,
                    Permit::Probe => {
                        state.check_open_too_long();
                        let _ = reply.send(SendResult::CircuitOpen {
                            retry_at_ms: state.p.clock.now_ms() + 1_000,
                        });
                        return Ok(());
                    }
                    Permit::Rejected { retry_at } => {
                        state.check_open_too_long();
                        let wait = retry_at.saturating_duration_since(tokio::time::Instant::now());
                        let _ = reply.send(SendResult::CircuitOpen {
                            retry_at_ms: state.p.clock.now_ms() + wait.as_millis() as i64,
                        });
                        return Ok(());
                    }
                };
                state.probe_in_flight |= probe;
                let provider = state.provider.clone();
                let me = myself.clone();
                tokio::spawn(async move {
                    let outcome = provider.send(&msg, attempt).await;
                    if let Err(ractor::MessagingErr::SendErr(ProviderMessage::Finished {
                        outcome,
                        reply,
                        ..
                    })) = me.send_message(ProviderMessage::Finished {
                        outcome,
                        probe,
                        reply,
                    }) {
                        // The actor is gone; the caller still gets its answer.
                        let _ = reply.send(SendResult::Done(outcome));
                    }
                });
            }
            ProviderMessage::Reconcile { msg, window, reply } => {
                // Asked even while the circuit is open: a lookup is a read, bounded by its own
                // timeout, and the answer is what keeps a recovering provider's first send from
                // repeating a message it already has.
                let provider = state.provider.clone();
                let limit = state.config.reconcile_timeout_ms;
                let metrics = state.p.ops.metrics.clone();
                tokio::spawn(async move {
                    let found = tokio::time::timeout(
                        std::time::Duration::from_millis(limit),
                        provider.reconcile(&msg, window),
                    )
                    .await
                    .unwrap_or_else(|_| {
                        Reconciliation::Failed(format!("no answer within {limit} ms"))
                    });
                    metrics.reconciled(found.label()).increment(1);
                    let _ = reply.send(found);
                });
            }
            ProviderMessage::Fetch {
                provider_message_id,
                reply,
            } => {
                let provider = state.provider.clone();
                let limit = state.config.reconcile_timeout_ms.max(1);
                tokio::spawn(async move {
                    let fetched = tokio::time::timeout(
                        std::time::Duration::from_millis(limit),
                        provider.fetch(&provider_message_id),
                    )
                    .await
                    .unwrap_or_else(|_| Fetched::Failed(format!("no answer within {limit} ms")));
                    let _ = reply.send(fetched);
                });
            }
            ProviderMessage::OpenTooLong { since } => {
                // Still the same open period (not closed and reopened since).
                if state.open_since_ms == Some(since) {
                    state.check_open_too_long();
                }
            }
            ProviderMessage::Finished {
                outcome,
                probe,
                reply,
            } => {
                if probe {
                    state.probe_in_flight = false;
                }
                match state.circuit.on_outcome(&outcome) {
                    Some(Transition::Opened) => {
                        tracing::error!(provider = %state.config.name, %outcome, "provider circuit opened");
                        if state.open_since_ms.is_none() {
                            let since = state.p.clock.now_ms();
                            state.open_since_ms = Some(since);
                            let after = std::time::Duration::from_millis(
                                state.p.config.alerts.circuit_open_alert_ms,
                            );
                            myself
                                .send_after(after, move || ProviderMessage::OpenTooLong { since });
                        }
                    }
                    Some(Transition::Closed) => {
                        state.open_since_ms = None;
                        state.alerted = false;
                        tracing::info!(provider = %state.config.name, "provider circuit closed: sending works again");
                        if let Ok(s) = state.p.scheduler() {
                            let _ = s.send_message(
                                crate::pipeline::scheduler::SchedulerMessage::Redrive,
                            );
                        }
                    }
                    _ => {}
                }
                state.publish_circuit(&myself);
                let _ = reply.send(SendResult::Done(outcome));
            }
        }
        Ok(())
    }
}
