//! `DeliveryWorker` (`root/broker/workers/delivery-N`): one per delivery, temporary.
//!
//! Validates the message, records the attempt in the database, calls the provider through the
//! provider actor, records the outcome, publishes to the failed or invalid queue when needed
//! (waiting for the confirm), and only then acks. Any failure on the way returns `Err`: the
//! worker dies, its delivery is dropped and so nacked back to the queue at once, and the
//! redelivery finds in the database what was already done. A failure that is the message's
//! own (not an outage) counts towards its quarantine by the poison guard (`poison.rs`).

use parking_lot::Mutex;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
use tracing::Instrument;

use crate::broker::{Delivery, Outgoing, Route};
use crate::message::{Envelope, Invalid, OutboundMessage, parse};
use crate::pipeline::alerts::{Alert, AlertKind, raise};
use crate::pipeline::broker::publisher::publish;
use crate::pipeline::decide::{Decision, decide};
use crate::pipeline::poison::{PanicWatch, PoisonKey, Poisoned, counts_against_message};
use crate::pipeline::provider_worker::{ProviderMessage, SendResult};
use crate::pipeline::scheduler::SchedulerMessage;
use crate::pipeline::set_aside::{Received, failed_headers, invalid_copy};
use crate::pipeline::store_worker::store_of;
use crate::pipeline::{DeliveryConfig, Pipeline, PipelineError, route};
use crate::provider::{AttemptWindow, CircuitState, ProviderConfig, Reconciliation};
use crate::store::{Admission, AttemptOutcome, Store, Uncertain};
use crate::supervisor::{ChildCtx, SplitMix64};

/// How long a worker holds a delivery whose message is in flight elsewhere before putting it
/// back in the queue (pacing, so such a delivery does not spin).
pub const IN_FLIGHT_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a worker holds a delivery it cannot process because the store or provider actor
/// is not available, before the delivery goes back to the queue (pacing, so it does not spin).
pub const UNAVAILABLE_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// How much longer than `provider.timeout_ms` a worker waits for the provider actor's answer.
pub const PROVIDER_CALL_MARGIN_MS: u64 = 500;

/// What the sending lease must cover beyond `provider.timeout_ms`: the worker's margin, and
/// as much again for the admission's commit (the lease is stamped when admission is asked).
pub const LEASE_SLACK_MS: u64 = 2 * PROVIDER_CALL_MARGIN_MS;

/// Refuse a configuration whose sending lease can lapse while a provider call is in flight:
/// a second delivery of the message would then be admitted and sent again.
pub fn lease_covers_call(
    delivery: &DeliveryConfig,
    provider: &ProviderConfig,
) -> Result<(), String> {
    let longest = provider.longest_timeout_ms();
    let needed = longest.saturating_add(LEASE_SLACK_MS);
    if delivery.sending_lease_ms < needed {
        return Err(format!(
            "delivery.sending_lease_ms = {} cannot outlast a provider call: it must be at least \
             provider.timeout_ms (the longest of the chain's: {longest}) + {LEASE_SLACK_MS} ms = \
             {needed} ms",
            delivery.sending_lease_ms
        ));
    }
    Ok(())
}

/// Whether what is left of a lease stamped `elapsed_ms` ago still covers a whole provider
/// call (else the worker gives the attempt back rather than risk a second send).
pub fn lease_allows_call(
    delivery: &DeliveryConfig,
    provider: &ProviderConfig,
    elapsed_ms: i64,
) -> bool {
    let call = provider
        .longest_timeout_ms()
        .saturating_add(PROVIDER_CALL_MARGIN_MS) as i64;
    elapsed_ms.max(0).saturating_add(call) <= delivery.sending_lease_ms as i64
}

/// A worker's arguments: the pipeline and its one delivery (taken once, at start).
#[derive(Debug)]
pub struct DeliveryArgs {
    pipeline: Pipeline,
    delivery: Mutex<Option<Delivery>>,
}

impl DeliveryArgs {
    pub fn new(pipeline: Pipeline, delivery: Delivery) -> Self {
        DeliveryArgs {
            pipeline,
            delivery: Mutex::new(Some(delivery)),
        }
    }
}

/// The `workers` supervisor's start function for one instance.
pub async fn start_delivery_worker(ctx: ChildCtx) -> Result<ActorCell, ActorProcessingErr> {
    let args = ctx
        .args::<DeliveryArgs>()
        .ok_or("delivery worker started without DeliveryArgs")?;
    let delivery = args
        .delivery
        .lock()
        .take()
        .ok_or("delivery already taken")?;
    let (r, _) = Actor::spawn_linked(
        None,
        DeliveryWorker,
        (args.pipeline.clone(), delivery),
        ctx.supervisor.clone(),
    )
    .await?;
    Ok(r.get_cell())
}

/// Messages of [`DeliveryWorker`].
#[derive(Debug)]
pub enum DeliveryMessage {
    Process,
}

/// Handles one delivery, then stops.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryWorker;

/// State of [`DeliveryWorker`]: dropping it unsettled nacks the delivery.
#[derive(Debug)]
pub struct DeliveryState {
    p: Pipeline,
    delivery: Delivery,
}

impl Actor for DeliveryWorker {
    type Msg = DeliveryMessage;
    type State = DeliveryState;
    type Arguments = (Pipeline, Delivery);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (p, delivery): (Pipeline, Delivery),
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_message(DeliveryMessage::Process)?;
        Ok(DeliveryState { p, delivery })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        _: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let span = tracing::info_span!(
            "message",
            id = tracing::field::Empty,
            correlation_id = tracing::field::Empty,
            attempt = tracing::field::Empty,
            provider = tracing::field::Empty
        );
        let guard = state.p.ops.poison.clone();
        let key = guard.key(state.delivery.message_id.as_deref(), &state.delivery.body);
        let watch = PanicWatch::new(guard.clone(), key);
        let result = process(state, key).instrument(span).await;
        watch.disarm();
        match result {
            Ok(()) => {
                guard.clear(key);
                myself.stop(None);
                Ok(())
            }
            Err(e) => {
                if counts_against_message(&e) {
                    let failures = guard.record_failure(key, &e.to_string());
                    tracing::warn!(
                        failures,
                        max = state.p.config.delivery.max_worker_failures,
                        delivery_count = state.delivery.delivery_count,
                        error = %e,
                        "worker failed on this message (counts towards its quarantine)"
                    );
                }
                Err(e.into())
            }
        }
    }
}

fn envelope(d: &Delivery) -> Envelope {
    Envelope {
        message_id: d.message_id.clone(),
        correlation_id: d.correlation_id.clone(),
    }
}

/// Hold a delivery a moment before it goes back to the queue because a collaborator is not
/// available. Failing at once would have the broker hand it straight to a new worker that
/// fails the same way, thousands of times a second for as long as the outage lasts.
async fn paced<T>(r: Result<T, PipelineError>) -> Result<T, PipelineError> {
    if r.is_err() {
        tokio::time::sleep(UNAVAILABLE_PAUSE).await;
    }
    r
}

/// A delivery in three steps: admit it (or settle it without a call), call the provider and
/// [`decide`] what its answer means, then apply that decision.
async fn process(state: &mut DeliveryState, key: PoisonKey) -> Result<(), PipelineError> {
    let p = state.p.clone();
    let store = paced(store_of(&p).await).await?;
    let Some(admitted) = admit(&p, &store, &mut state.delivery, key).await? else {
        return Ok(());
    };
    let decision = call_and_decide(&p, &admitted).await?;
    apply(&p, &store, &mut state.delivery, &admitted, decision).await
}

/// A message admitted for a provider call.
struct Admitted {
    msg: OutboundMessage,
    attempt: u32,
    /// When the sending lease was stamped (before the admission's commit).
    at_ms: i64,
    /// The chain's provider actors found running, by chain index.
    chain: Vec<Option<ActorRef<ProviderMessage>>>,
    /// The providers it may go to (`None`: any): after an attempt whose fate is unknown, the
    /// ones that could not tell ([`route::restrict`]).
    allowed: Option<Vec<usize>>,
}

/// Parse and admit the delivery. `None`: it was settled without a provider call (set aside,
/// quarantined, already sent / failed / invalid, in flight elsewhere, a conflicting id).
async fn admit(
    p: &Pipeline,
    store: &Store,
    delivery: &mut Delivery,
    key: PoisonKey,
) -> Result<Option<Admitted>, PipelineError> {
    let poisoned = p
        .ops
        .poison
        .due(key, p.config.delivery.max_worker_failures)
        .or_else(|| {
            p.ops.poison.over_delivery_limit(
                key,
                delivery.delivery_count,
                p.config.broker.delivery_limit,
            )
        });
    // The rare paths' futures are boxed: each holds a store call's sqlx future (about 15 KB),
    // and unboxed they would make every worker's state that large while it waits.
    if let Some(poisoned) = poisoned {
        Box::pin(quarantine(p, store, delivery, poisoned)).await?;
        p.ops.poison.clear(key);
        return Ok(None);
    }
    let env = envelope(delivery);
    let msg = match parse(&delivery.body, &env, &p.config.message) {
        Ok(m) => m,
        Err(invalid) => {
            let id = crate::message::salvage_id(&delivery.body, &env, &p.config.message);
            return Box::pin(set_aside(p, store, delivery, id, invalid))
                .await
                .map(|()| None);
        }
    };
    let span = tracing::Span::current();
    span.record("id", tracing::field::display(msg.id));
    span.record("correlation_id", msg.correlation_id.as_str());

    // The providers before the admission: while none is running, nothing is admitted (and no
    // attempt is spent or recorded as interrupted for a call that never left drover).
    let n = p.config.provider.fallbacks.len() + 1;
    let chain: Vec<Option<ActorRef<ProviderMessage>>> =
        (0..n).map(|i| p.provider_at(i).ok()).collect();
    if chain.iter().all(Option::is_none) {
        paced(p.provider()).await?;
    }

    let now = p.clock.now_ms();
    let admission = store
        .begin_attempt(&msg, now)
        .await
        .map_err(|e| suspect(p, e))?;
    let mut allowed = None;
    let attempt = match admission {
        Admission::Proceed {
            attempt,
            interrupted,
            uncertain,
        } => {
            if interrupted {
                tracing::warn!(
                    attempt,
                    "a previous attempt was interrupted; it may or may not have reached the provider"
                );
            }
            if let Some(u) = uncertain {
                let asked = Box::pin(reconciled(p, store, delivery, &msg, attempt, &chain, u));
                match asked.await? {
                    Lookup::Found => return Ok(None),
                    Lookup::Unanswered(unanswered) => {
                        let waited = now - u.first_started_at;
                        allowed = route::restrict(&unanswered, waited, &p.config.failover);
                    }
                }
            }
            attempt
        }
        Admission::AlreadySent { .. } => {
            tracing::info!("already sent: acked without calling the provider again");
            return ack(delivery).await.map(|()| None);
        }
        Admission::AlreadyFailed {
            last_error,
            last_error_class,
        } => {
            // Make sure the failed queue has it (a crash may have come between the commit and
            // the publish); a duplicate there is harmless. Its stored class goes with it, so a
            // re-drive never re-sends a permanent failure.
            publish_failed(
                p,
                &msg,
                last_error_class.as_deref().unwrap_or("failed"),
                last_error.as_deref().unwrap_or("failed"),
                0,
            )
            .await?;
            return ack(delivery).await.map(|()| None);
        }
        Admission::AlreadyInvalid | Admission::NotDue { .. } => {
            return ack(delivery).await.map(|()| None);
        }
        Admission::InFlight { since } => {
            // Another delivery of this message is being sent right now (a republish raced
            // it). Back to the queue after a pause: if that worker dies, this copy proceeds
            // once the sending lease has run out; if it succeeds, this copy is acked as sent.
            tracing::info!(
                since,
                "another attempt is in flight; delivery goes back to the queue"
            );
            tokio::time::sleep(IN_FLIGHT_PAUSE).await;
            return delivery
                .nack_requeue()
                .await
                .map(|()| None)
                .map_err(PipelineError::from);
        }
        Admission::Conflict => {
            let invalid = Invalid::DuplicateId(msg.id);
            return Box::pin(set_aside(p, store, delivery, None, invalid))
                .await
                .map(|()| None);
        }
    };
    span.record("attempt", attempt);
    Ok(Some(Admitted {
        msg,
        attempt,
        at_ms: now,
        chain,
        allowed,
    }))
}

/// What the lookups before a re-send came to.
enum Lookup {
    /// An earlier attempt went through: recorded sent and acked.
    Found,
    /// Not found where asked; these providers (chain indexes) could not tell.
    Unanswered(Vec<usize>),
}

/// Ask every provider of the chain whether one of the message's earlier attempts whose fate is
/// unknown went through (any of them may have made it). If one did, record the message sent
/// (with the attempt saying so) without calling a provider again, and ack: [`Lookup::Found`].
/// Otherwise the providers that could not tell (no lookup, no answer in their
/// `reconcile_timeout_ms`, a lookup that failed): the message may go only to them, as
/// [`route::restrict`] decides.
async fn reconciled(
    p: &Pipeline,
    store: &Store,
    delivery: &mut Delivery,
    msg: &OutboundMessage,
    attempt: u32,
    chain: &[Option<ActorRef<ProviderMessage>>],
    u: Uncertain,
) -> Result<Lookup, PipelineError> {
    let mut unanswered = Vec::new();
    for (index, (config, actor)) in p.config.provider.chain().into_iter().zip(chain).enumerate() {
        let found = match actor {
            Some(a) => reconcile_at(config, a, msg, u).await,
            None => Reconciliation::Failed("its actor is restarting".into()),
        };
        match found {
            Reconciliation::NotFound => {}
            Reconciliation::Found {
                provider_message_id,
            } => {
                if found_at(p, store, delivery, msg, attempt, provider_message_id).await? {
                    return Ok(Lookup::Found);
                }
            }
            Reconciliation::Unsupported => unanswered.push(index),
            Reconciliation::Failed(error) => {
                tracing::warn!(provider = %config.name, %error, "the lookup at the provider failed");
                unanswered.push(index);
            }
        }
    }
    if unanswered.is_empty() {
        tracing::info!("earlier attempts are at no provider: sending");
    }
    Ok(Lookup::Unanswered(unanswered))
}

/// One provider's answer on an earlier attempt (`Unsupported` when lookups are off).
async fn reconcile_at(
    config: &ProviderConfig,
    actor: &ActorRef<ProviderMessage>,
    msg: &OutboundMessage,
    u: Uncertain,
) -> Reconciliation {
    let limit = config.reconcile_timeout_ms;
    if limit == 0 {
        return Reconciliation::Unsupported;
    }
    let window = AttemptWindow::spanning(u.first_started_at, u.last_started_at, config.timeout_ms);
    let asked = actor
        .call(
            |reply| ProviderMessage::Reconcile {
                msg: Box::new(msg.clone()),
                window,
                reply,
            },
            Some(std::time::Duration::from_millis(
                limit + PROVIDER_CALL_MARGIN_MS,
            )),
        )
        .await;
    match asked {
        Ok(CallResult::Success(found)) => found,
        _ => Reconciliation::Failed("the provider actor did not answer the lookup".into()),
    }
}

/// A provider has the message under `provider_message_id`: record it sent and ack
/// (`Ok(true)`), unless that id is another message's (`Ok(false)`).
async fn found_at(
    p: &Pipeline,
    store: &Store,
    delivery: &mut Delivery,
    msg: &OutboundMessage,
    attempt: u32,
    provider_message_id: String,
) -> Result<bool, PipelineError> {
    let other = store
        .other_with_provider_id(&provider_message_id, msg.id)
        .await
        .map_err(|e| suspect(p, e))?;
    if let Some(other) = other {
        // Another message with the same recipient and text went out in the same window: what
        // was found is that one. Send this one.
        tracing::warn!(
            %provider_message_id,
            %other,
            "the message found at the provider is another one's: sending"
        );
        return Ok(false);
    }
    tracing::info!(
        %provider_message_id,
        "an earlier attempt reached the provider: recorded sent, not sent again"
    );
    let outcome = AttemptOutcome::Reconciled {
        provider_message_id,
    };
    store
        .record_outcome(msg.id, attempt, &outcome, p.clock.now_ms())
        .await
        .map_err(|e| suspect(p, e))?;
    p.ops.metrics.count_outcome(outcome.kind());
    ack(delivery).await?;
    Ok(true)
}

/// Call the provider for an admitted message and decide what its answer means. An `Err` is a
/// call that may have gone out unanswered: the supervisor sees it, the attempt stays
/// `sending` and is recorded interrupted at the next admission.
async fn call_and_decide(p: &Pipeline, a: &Admitted) -> Result<Decision, PipelineError> {
    let delivery_cfg = &p.config.delivery;
    let now = p.clock.now_ms();
    let given_back = |reason: &str| {
        (
            AttemptOutcome::Deferred {
                next_attempt_at: now,
                reason: reason.to_owned(),
            },
            None,
        )
    };
    if !lease_allows_call(delivery_cfg, &p.config.provider, now - a.at_ms) {
        // The admission took so long that the rest of the lease could not cover a provider
        // call: another delivery could be admitted while this one is still sending. Give the
        // attempt back instead (nothing was sent).
        tracing::warn!(
            elapsed_ms = now - a.at_ms,
            "admission took too long for the sending lease; attempt given back"
        );
        return Ok(given_back(
            "admission outlasted the sending lease's slack; nothing was sent",
        ));
    }
    let (msg, attempt) = (&a.msg, a.attempt);
    let chain = p.config.provider.chain();
    let views = p.ops.providers();
    let order = route::order(&views, now, p.config.failover.revert_after_ms);
    // Each provider in turn while they refuse because their circuit is open (an answer that
    // costs no request); the first that takes the message makes the attempt.
    let mut refused_until: Option<i64> = None;
    for index in order {
        if a.allowed.as_ref().is_some_and(|ok| !ok.contains(&index)) {
            continue;
        }
        let (Some(actor), Some(config)) = (
            a.chain.get(index).and_then(Option::as_ref),
            chain.get(index),
        ) else {
            continue;
        };
        let timeout = config.timeout_ms + PROVIDER_CALL_MARGIN_MS;
        let called = tokio::time::Instant::now();
        let call = actor
            .call(
                |reply| ProviderMessage::Send {
                    msg: Box::new(msg.clone()),
                    attempt,
                    reply,
                },
                Some(std::time::Duration::from_millis(timeout)),
            )
            .await;
        let sent = match call {
            Ok(CallResult::Success(SendResult::CircuitOpen { retry_at_ms })) => {
                refused_until = Some(refused_until.map_or(retry_at_ms, |r| r.min(retry_at_ms)));
                continue;
            }
            Ok(CallResult::Success(sent)) => sent,
            // The request never reached that provider's actor (it died between the lookup and
            // the call): certainly nothing was sent; the next may take it.
            Err(_) => {
                tracing::info!(provider = %config.name, "the provider actor had just stopped");
                continue;
            }
            Ok(CallResult::Timeout) => {
                return Err(PipelineError::NoAnswer(
                    "the provider",
                    format!("{} gave no answer within {timeout} ms", config.name),
                ));
            }
            // It took the request and stopped before answering: the call may have gone out.
            Ok(CallResult::SenderError) => {
                return Err(PipelineError::NoAnswer(
                    "the provider",
                    format!("{} stopped before answering", config.name),
                ));
            }
        };
        let latency = called.elapsed();
        p.ops.metrics.count_call(index, latency);
        tracing::Span::current().record("provider", config.name.as_str());
        // A probe of a provider whose circuit is not closed is not traffic moving: after it
        // closes the circuit, the revert hold still keeps traffic where it is.
        let probe = views
            .get(index)
            .is_some_and(|v| !matches!(v.circuit, Some(CircuitState::Closed { .. })));
        if !probe && let Some((from, to)) = p.ops.note_route(index) {
            failover_alert(p, &chain, from, to);
        }
        let now = p.clock.now_ms();
        let mut rng = SplitMix64::new(msg.id.as_u128() as u64 ^ attempt as u64);
        return Ok(decide(
            sent,
            attempt,
            delivery_cfg.max_attempts,
            latency.as_millis() as u64,
            Some(config.name.clone()),
            || now + delivery_cfg.retry_delay(attempt, &mut rng).as_millis() as i64,
        ));
    }
    // No provider took it: every circuit open (retry when the first may take a probe), or no
    // provider actor running.
    Ok(match refused_until {
        Some(retry_at_ms) => decide(
            SendResult::CircuitOpen { retry_at_ms },
            attempt,
            delivery_cfg.max_attempts,
            0,
            None,
            || retry_at_ms,
        ),
        None => {
            tracing::info!("no provider actor was running; attempt given back");
            given_back("no provider actor was running; nothing was sent")
        }
    })
}

/// Traffic left the primary (`from` 0) or came back to it: alert `provider_failover`.
fn failover_alert(p: &Pipeline, chain: &[&ProviderConfig], from: usize, to: usize) {
    let name = |i: usize| chain.get(i).map_or("?", |c| c.name.as_str()).to_string();
    let (from, to) = (name(from), name(to));
    let summary = if to == name(0) {
        format!("traffic is back on the primary provider {to} (was on {from})")
    } else {
        format!("traffic failed over from {from} to {to}")
    };
    tracing::warn!(%from, %to, "{summary}");
    raise(
        p,
        Alert {
            kind: AlertKind::ProviderFailover,
            key: format!("provider_failover:{to}"),
            summary,
            details: serde_json::json!({ "from": from, "to": to }),
        },
    );
}

/// Apply a decision: commit the outcome, count it, wake the scheduler for a retry, move a
/// failed message to the failed queue with its alert, and only then ack (ack after commit).
async fn apply(
    p: &Pipeline,
    store: &Store,
    delivery: &mut Delivery,
    a: &Admitted,
    (outcome, failed): Decision,
) -> Result<(), PipelineError> {
    let (msg, attempt) = (&a.msg, a.attempt);
    let now = p.clock.now_ms();
    store
        .record_outcome(msg.id, attempt, &outcome, now)
        .await
        .map_err(|e| suspect(p, e))?;
    p.ops.metrics.count_outcome(outcome.kind());
    match &outcome {
        AttemptOutcome::Sent { .. } => tracing::info!("sent"),
        AttemptOutcome::Reconciled { .. } => tracing::info!("sent (found at the provider)"),
        AttemptOutcome::Retry {
            next_attempt_at, ..
        }
        | AttemptOutcome::Ambiguous {
            next_attempt_at, ..
        }
        | AttemptOutcome::Deferred {
            next_attempt_at, ..
        } => {
            tracing::info!(next_attempt_at, "retry scheduled");
            if let Ok(s) = p.scheduler() {
                let _ = s.send_message(SchedulerMessage::Wake(*next_attempt_at));
            }
        }
        AttemptOutcome::Failed { .. } => {}
    }
    if let Some((class, error)) = failed {
        tracing::error!(alert = "dead_letter", error_class = class, %error, "message failed: moved to the failed queue");
        publish_failed(p, msg, class, &error, attempt).await?;
        raise(
            p,
            Alert {
                kind: AlertKind::DeadLetter,
                key: format!("dead_letter:{}", msg.id),
                summary: format!("message {} failed: {error}", msg.id),
                details: serde_json::json!({
                    "id": msg.id,
                    "correlation_id": msg.correlation_id,
                    "error_class": class,
                    "error": error.to_string(),
                    "attempt": attempt,
                }),
            },
        );
    }
    ack(delivery).await
}

async fn ack(d: &mut Delivery) -> Result<(), PipelineError> {
    d.ack().await.map_err(PipelineError::from)
}

/// A store error: tell the store actor to check its connection, and pass the error on.
fn suspect(p: &Pipeline, e: crate::store::StoreError) -> PipelineError {
    if e.is_unavailable() {
        if let Ok(s) = p.store() {
            let _ = s.send_message(crate::pipeline::store_worker::StoreMessage::Suspect);
        }
    }
    PipelineError::Store(e)
}

async fn publish_failed(
    p: &Pipeline,
    msg: &OutboundMessage,
    class: &str,
    error: &str,
    attempts: u32,
) -> Result<(), PipelineError> {
    publish(
        p,
        Route::Failed,
        Outgoing {
            headers: failed_headers(class, error, attempts),
            ..msg.outgoing()
        },
    )
    .await
}

fn received(d: &Delivery) -> Received<'_> {
    Received {
        body: &d.body,
        message_id: d.message_id.as_deref(),
        correlation_id: d.correlation_id.as_deref(),
        headers: &d.headers,
    }
}

/// Record a set-aside message. An outage fails the worker (the delivery comes back later);
/// any other error is logged and the set-aside goes on: the invalid queue's copy is the
/// record then, and the bad message must not block its queue.
async fn record_set_aside(
    p: &Pipeline,
    store: &Store,
    d: &Delivery,
    id: Option<uuid::Uuid>,
    reason: &str,
    class: &str,
) -> Result<Option<uuid::Uuid>, PipelineError> {
    let correlation_id = d.correlation_id.as_deref();
    match store
        .record_set_aside(id, correlation_id, &d.body, reason, class, p.clock.now_ms())
        .await
    {
        Ok(row) => Ok(Some(row)),
        Err(e) if e.is_unavailable() => Err(suspect(p, e)),
        Err(e) => {
            tracing::error!(error = %e, "could not record a set-aside message; the invalid queue holds it");
            Ok(None)
        }
    }
}

/// Invalid input: record it, publish it to the invalid queue with its reason, ack.
async fn set_aside(
    p: &Pipeline,
    store: &Store,
    d: &mut Delivery,
    id: Option<uuid::Uuid>,
    invalid: Invalid,
) -> Result<(), PipelineError> {
    let reason = invalid.reason();
    let row = record_set_aside(p, store, d, id, &reason, "invalid").await?;
    p.ops.metrics.count_invalid();
    tracing::warn!(id = ?row, class = invalid.class(), %reason, "invalid message set aside");
    let copy = invalid_copy(
        received(d),
        invalid.class(),
        &reason,
        p.config.message.max_payload_bytes,
    );
    publish(p, Route::Invalid, copy).await?;
    ack(d).await
}

/// The poison guard's verdict: set the delivery aside without parsing it further than the
/// bounded id salvage (whatever made its workers fail may be in the parsing), mark a stored
/// message of that id as quarantined, alert.
async fn quarantine(
    p: &Pipeline,
    store: &Store,
    d: &mut Delivery,
    poisoned: Poisoned,
) -> Result<(), PipelineError> {
    let reason = poisoned.reason();
    let id = crate::message::salvage_id(&d.body, &envelope(d), &p.config.message);
    if let Some(id) = id {
        match store.quarantine(id, &reason, p.clock.now_ms()).await {
            Ok(_) => {}
            Err(e) if e.is_unavailable() => return Err(suspect(p, e)),
            Err(e) => tracing::error!(error = %e, "could not mark the quarantined message"),
        }
    }
    let row = record_set_aside(p, store, d, id, &reason, "poison").await?;
    p.ops.metrics.count_invalid();
    tracing::error!(alert = "poison", id = ?row, %reason, "poison message quarantined to the invalid queue");
    let copy = invalid_copy(
        received(d),
        "poison",
        &reason,
        p.config.message.max_payload_bytes,
    );
    publish(p, Route::Invalid, copy).await?;
    ack(d).await?;
    let key = match row.or(id) {
        Some(id) => format!("poison:{id}"),
        None => "poison".to_owned(),
    };
    raise(
        p,
        Alert {
            kind: AlertKind::Poison,
            key,
            summary: format!("a message was quarantined: {reason}"),
            details: serde_json::json!({
                "id": row.or(id),
                "failures": poisoned.failures,
                "last_error": poisoned.last_error,
                "redelivered": d.redelivered,
                "delivery_count": d.delivery_count,
            }),
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_must_cover_a_provider_call() {
        let provider = ProviderConfig {
            timeout_ms: 10_000,
            ..ProviderConfig::default()
        };
        let lease = |ms| DeliveryConfig {
            sending_lease_ms: ms,
            ..DeliveryConfig::default()
        };
        assert!(lease_covers_call(&lease(30_000), &provider).is_ok());
        assert!(lease_covers_call(&lease(11_000), &provider).is_ok());
        let err = lease_covers_call(&lease(10_999), &provider).unwrap_err();
        assert!(
            err.contains("delivery.sending_lease_ms") && err.contains("provider.timeout_ms"),
            "{err}"
        );
        // At call time: what is left must cover timeout + margin.
        assert!(lease_allows_call(&lease(11_000), &provider, 0));
        assert!(lease_allows_call(&lease(11_000), &provider, 500));
        assert!(!lease_allows_call(&lease(11_000), &provider, 501));
        assert!(lease_allows_call(&lease(30_000), &provider, -5));
    }

    /// A worker's state while it waits is its `process` future, one per message in flight
    /// (256 by default). A store call's sqlx future awaited inline once made it 17 KB.
    #[test]
    fn a_workers_future_stays_small() {
        fn size<'a, F: std::future::Future>(
            _: impl FnOnce(&'a mut DeliveryState, PoisonKey) -> F,
        ) -> usize {
            std::mem::size_of::<F>()
        }
        let bytes = size(process);
        assert!(bytes <= 6 * 1024, "process future is {bytes} bytes");
    }
}
