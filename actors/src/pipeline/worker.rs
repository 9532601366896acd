//! `DeliveryWorker`: one per delivery, temporary, under the `workers` supervisor.
//!
//! Validates the message, records the attempt in the database, calls the provider through the
//! provider actor, records the outcome, publishes to the failed or invalid queue when needed
//! (waiting for the confirm), and only then acks. Any failure on the way returns `Err`: the
//! worker dies, its delivery is dropped and so nacked back to the queue at once, and the
//! redelivery finds in the database what was already done.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
use tracing::Instrument;

use crate::broker::{Delivery, Outgoing, Route};
use crate::message::{Envelope, Invalid, OutboundMessage, parse};
use crate::pipeline::broker::publish;
use crate::pipeline::provider_worker::{ProviderMessage, SendResult};
use crate::pipeline::scheduler::SchedulerMessage;
use crate::pipeline::store_worker::store_of;
use crate::pipeline::{Pipeline, PipelineError};
use crate::provider::SendOutcome;
use crate::store::{Admission, AttemptOutcome, Store};
use crate::supervisor::{ChildCtx, SplitMix64};

/// Header carrying why a message was set aside as invalid.
pub const INVALID_REASON_HEADER: &str = "x-drover-invalid-reason";
/// Header carrying the class of that reason.
pub const INVALID_CLASS_HEADER: &str = "x-drover-invalid-class";
/// Headers on failed-queue messages.
pub const ERROR_HEADER: &str = "x-drover-error";
pub const ERROR_CLASS_HEADER: &str = "x-drover-error-class";
pub const ATTEMPTS_HEADER: &str = "x-drover-attempts";

/// How long a worker holds a delivery whose message is in flight elsewhere before putting it
/// back in the queue (pacing, so such a delivery does not spin).
pub const IN_FLIGHT_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a worker holds a delivery it cannot process because the store actor is not
/// available, before the delivery goes back to the queue (pacing, so it does not spin).
pub const UNAVAILABLE_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

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
            attempt = tracing::field::Empty
        );
        process(state).instrument(span).await?;
        myself.stop(None);
        Ok(())
    }
}

fn envelope(d: &Delivery) -> Envelope {
    Envelope {
        message_id: d.message_id.clone(),
        correlation_id: d.correlation_id.clone(),
    }
}

async fn process(state: &mut DeliveryState) -> Result<(), PipelineError> {
    let p = state.p.clone();
    let store = match store_of(&p).await {
        Ok(store) => store,
        Err(e) => {
            // No store (its actor is restarting, or backing off while the database is away):
            // hold the delivery a moment before it goes back to the queue. Failing at once
            // would have the broker hand it straight to a new worker that fails the same way,
            // thousands of times a second for as long as the store is down.
            tokio::time::sleep(UNAVAILABLE_PAUSE).await;
            return Err(e);
        }
    };
    let env = envelope(&state.delivery);
    let msg = match parse(&state.delivery.body, &env, &p.config.message) {
        Ok(m) => m,
        Err(invalid) => {
            let id = crate::message::salvage_id(&state.delivery.body, &env);
            return set_aside(
                &p,
                &store,
                &mut state.delivery,
                id,
                env.correlation_id.as_deref(),
                invalid,
            )
            .await;
        }
    };
    let span = tracing::Span::current();
    span.record("id", tracing::field::display(msg.id));
    span.record("correlation_id", msg.correlation_id.as_str());

    let now = p.clock.now_ms();
    let admission = store
        .begin_attempt(&msg, now)
        .await
        .map_err(|e| suspect(&p, e))?;
    let attempt = match admission {
        Admission::Proceed {
            attempt,
            interrupted,
        } => {
            if interrupted {
                tracing::warn!(
                    attempt,
                    "a previous attempt was interrupted; it may or may not have reached the provider"
                );
            }
            attempt
        }
        Admission::AlreadySent { .. } => {
            tracing::info!("already sent: acked without calling the provider again");
            return ack(&mut state.delivery).await;
        }
        Admission::AlreadyFailed { last_error } => {
            // Make sure the failed queue has it (a crash may have come between the commit and
            // the publish); a duplicate there is harmless.
            publish_failed(
                &p,
                &msg,
                "failed",
                last_error.as_deref().unwrap_or("failed"),
                0,
            )
            .await?;
            return ack(&mut state.delivery).await;
        }
        Admission::AlreadyInvalid | Admission::NotDue { .. } => {
            return ack(&mut state.delivery).await;
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
            return state
                .delivery
                .nack_requeue()
                .await
                .map_err(PipelineError::from);
        }
        Admission::Conflict => {
            let invalid = Invalid::DuplicateId(msg.id);
            return set_aside(
                &p,
                &store,
                &mut state.delivery,
                None,
                Some(&msg.correlation_id),
                invalid,
            )
            .await;
        }
    };
    span.record("attempt", attempt);

    let provider = p.provider()?;
    let timeout = p.config.provider.timeout_ms + 5_000;
    let called = tokio::time::Instant::now();
    let sent = ractor::call_t!(
        provider,
        |reply| ProviderMessage::Send {
            msg: Box::new(msg.clone()),
            attempt,
            reply
        },
        timeout
    )
    .map_err(|e| PipelineError::NoAnswer("the provider", e.to_string()))?;
    if matches!(sent, SendResult::Done(_)) {
        p.ops.metrics.attempts.increment(1);
        p.ops
            .metrics
            .provider_latency
            .record(called.elapsed().as_secs_f64());
    }
    let now = p.clock.now_ms();
    let delivery_cfg = &p.config.delivery;
    let mut rng = SplitMix64::new(msg.id.as_u128() as u64 ^ attempt as u64);
    let retry_at =
        |rng: &mut SplitMix64| now + delivery_cfg.retry_delay(attempt, rng).as_millis() as i64;
    let (outcome, failed) = match sent {
        SendResult::CircuitOpen { retry_at_ms } => (
            AttemptOutcome::Deferred {
                next_attempt_at: retry_at_ms,
                reason: "provider circuit open".into(),
            },
            None,
        ),
        SendResult::Done(SendOutcome::Sent {
            provider_message_id,
        }) => (
            AttemptOutcome::Sent {
                provider_message_id,
                latency_ms: 0,
            },
            None,
        ),
        SendResult::Done(SendOutcome::ProviderFault { status, detail }) => (
            AttemptOutcome::Deferred {
                next_attempt_at: retry_at(&mut rng),
                reason: format!("provider fault {status}: {detail}"),
            },
            None,
        ),
        SendResult::Done(SendOutcome::Permanent { code, detail }) => {
            let error = format!("permanent provider error {code:?}: {detail}");
            (
                AttemptOutcome::Failed {
                    error_class: "permanent".into(),
                    error: error.clone(),
                    latency_ms: 0,
                },
                Some(("permanent", error)),
            )
        }
        SendResult::Done(other) => {
            let class = other.error_class().to_string();
            let error = format!("{other:?}");
            if attempt >= delivery_cfg.max_attempts {
                let error = format!("gave up after {attempt} attempts; last: {error}");
                (
                    AttemptOutcome::Failed {
                        error_class: class.clone(),
                        error: error.clone(),
                        latency_ms: 0,
                    },
                    Some(("exhausted", error)),
                )
            } else if matches!(other, SendOutcome::Ambiguous { .. }) {
                (
                    AttemptOutcome::Ambiguous {
                        next_attempt_at: retry_at(&mut rng),
                        error,
                        latency_ms: 0,
                    },
                    None,
                )
            } else {
                (
                    AttemptOutcome::Retry {
                        next_attempt_at: retry_at(&mut rng),
                        error_class: class,
                        error,
                        latency_ms: 0,
                    },
                    None,
                )
            }
        }
    };
    store
        .record_outcome(msg.id, attempt, &outcome, now)
        .await
        .map_err(|e| suspect(&p, e))?;
    p.ops.metrics.outcome(outcome.kind()).increment(1);
    match &outcome {
        AttemptOutcome::Sent { .. } => tracing::info!("sent"),
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
        publish_failed(&p, &msg, class, &error, attempt).await?;
        crate::pipeline::alerts::raise(
            &p,
            crate::pipeline::alerts::Alert {
                kind: crate::pipeline::alerts::AlertKind::DeadLetter,
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
    ack(&mut state.delivery).await
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
    let mut headers = BTreeMap::new();
    headers.insert(ERROR_CLASS_HEADER.to_string(), class.to_string());
    headers.insert(ERROR_HEADER.to_string(), error.to_string());
    headers.insert(ATTEMPTS_HEADER.to_string(), attempts.to_string());
    publish(
        p,
        Route::Failed,
        Outgoing {
            body: msg.to_json(),
            message_id: Some(msg.id.to_string()),
            correlation_id: Some(msg.correlation_id.clone()),
            headers,
        },
    )
    .await
}

/// Invalid input: record it, publish it to the invalid queue with its reason, ack.
async fn set_aside(
    p: &Pipeline,
    store: &Store,
    d: &mut Delivery,
    id: Option<uuid::Uuid>,
    correlation_id: Option<&str>,
    invalid: Invalid,
) -> Result<(), PipelineError> {
    let reason = invalid.to_string();
    let row = store
        .record_invalid(id, correlation_id, &d.body, &reason, p.clock.now_ms())
        .await
        .map_err(|e| suspect(p, e))?;
    p.ops.metrics.invalid().increment(1);
    tracing::warn!(id = %row, class = invalid.class(), %reason, "invalid message set aside");
    let mut headers = d.headers.clone();
    headers.insert(INVALID_REASON_HEADER.to_string(), reason);
    headers.insert(
        INVALID_CLASS_HEADER.to_string(),
        invalid.class().to_string(),
    );
    publish(
        p,
        Route::Invalid,
        Outgoing {
            body: d.body.clone(),
            message_id: d.message_id.clone(),
            correlation_id: d.correlation_id.clone(),
            headers,
        },
    )
    .await?;
    ack(d).await
}

/// Keep the type in use for callers that need to share a worker's args.
pub type SharedDeliveryArgs = Arc<DeliveryArgs>;
