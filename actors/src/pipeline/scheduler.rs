//! `SchedulerWorker`: delayed retries, operator retries and the failed-queue re-drive.
//!
//! The database holds every retry's due time, so a restarted scheduler (or process) loses
//! nothing: it wakes at the earliest due time (or every `poll_ms`, since other instances and
//! workers schedule too), claims due rows (on PostgreSQL with `FOR UPDATE SKIP LOCKED`, so
//! instances can share one database), republishes each to the work queue with a confirm, and
//! then releases the claims. A claim whose confirm never came is taken again after its lease.

use std::collections::BTreeMap;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::broker::{Outgoing, Route};
use crate::message::ERROR_CLASS_HEADER;
use crate::pipeline::alerts::{Alert, AlertKind, raise};
use crate::pipeline::broker::connection::broker_of;
use crate::pipeline::broker::publisher::publish;
use crate::pipeline::poison::counts_against_message;
use crate::pipeline::store_worker::store_of;
use crate::pipeline::{Pipeline, PipelineError};
use crate::store::MessageStatus;

/// Messages of [`SchedulerWorker`].
#[derive(Debug)]
pub enum SchedulerMessage {
    /// A retry is due at this time (Unix ms): wake then if that is earlier than planned.
    Wake(i64),
    /// Internal: a timer fired.
    #[doc(hidden)]
    Tick,
    /// Put a failed message back into play (`retry(id)`); answers whether it was failed.
    Retry {
        id: Uuid,
        reply: RpcReplyPort<Result<bool, PipelineError>>,
    },
    /// Re-drive the failed queue (sending works again).
    Redrive,
}

/// The scheduler actor.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerWorker;

/// State of [`SchedulerWorker`].
#[derive(Debug)]
pub struct SchedulerState {
    p: Pipeline,
    /// The earliest wake-up already planned (Unix ms).
    planned: Option<i64>,
    redrive: Option<JoinHandle<()>>,
}

impl SchedulerState {
    fn plan(&mut self, myself: &ActorRef<SchedulerMessage>, at_ms: i64) {
        let now = self.p.clock.now_ms();
        let at_ms = at_ms.max(now);
        if self.planned.is_some_and(|p| p <= at_ms && p >= now) {
            return;
        }
        self.planned = Some(at_ms);
        let delay = Duration::from_millis((at_ms - now) as u64);
        myself.send_after(delay, || SchedulerMessage::Tick);
    }
}

impl Actor for SchedulerWorker {
    type Msg = SchedulerMessage;
    type State = SchedulerState;
    type Arguments = Pipeline;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        p: Pipeline,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_message(SchedulerMessage::Tick)?;
        Ok(SchedulerState {
            p,
            planned: None,
            redrive: None,
        })
    }

    async fn post_stop(
        &self,
        _: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(r) = state.redrive.take() {
            r.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SchedulerMessage::Wake(at) => state.plan(&myself, at),
            SchedulerMessage::Tick => {
                state.planned = None;
                let now = state.p.clock.now_ms();
                let poll = now + state.p.config.scheduler.poll_ms as i64;
                // The due rows stay in the database: a tick that cannot reach the store or the
                // broker is simply retried at the next poll. Those collaborators' own actors
                // fail and restart for their outages; the scheduler crashing too would only
                // spend the root's restart intensity twice for one outage.
                let next = match tick(&state.p).await {
                    Ok(next) => next.map_or(poll, |d| d.min(poll)),
                    Err(e) => {
                        tracing::warn!(error = %e, "scheduler tick skipped; retrying at the next poll");
                        poll
                    }
                };
                state.plan(&myself, next);
            }
            SchedulerMessage::Retry { id, reply } => {
                let result = retry(&state.p, id).await;
                if result.as_ref().is_ok_and(|r| *r) {
                    state.plan(&myself, state.p.clock.now_ms());
                }
                let _ = reply.send(result);
            }
            SchedulerMessage::Redrive => {
                if state.redrive.as_ref().is_some_and(|r| !r.is_finished()) {
                    return Ok(());
                }
                let p = state.p.clone();
                let me = myself.clone();
                // Shown by the admin routes; dropped (task aborted) it reads "interrupted".
                let running = p.ops.redrive_started(p.clock);
                // Ends with the scheduler even when it is killed (post_stop does not run then).
                let owner = myself.get_cell();
                state.redrive = Some(crate::pipeline::owned::spawn_owned(owner, async move {
                    match redrive(&p).await {
                        Ok(n) => {
                            tracing::info!(redriven = n, "failed queue re-driven");
                            running.finish(Ok(n));
                            let _ = me.send_message(SchedulerMessage::Tick);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "failed-queue re-drive stopped");
                            running.finish(Err(e.to_string()));
                        }
                    }
                }));
            }
        }
        Ok(())
    }
}

/// One round: republish what is due, then tell when the next row falls due.
async fn tick(p: &Pipeline) -> Result<Option<i64>, PipelineError> {
    republish_due(p).await?;
    Ok(store_of(p).await?.next_due_at().await?)
}

/// Claim due rows, republish each with a confirm, release the claims. Repeats while full
/// batches come back.
async fn republish_due(p: &Pipeline) -> Result<usize, PipelineError> {
    let store = store_of(p).await?;
    let cfg = &p.config.scheduler;
    let mut total = 0;
    loop {
        let now = p.clock.now_ms();
        let due = store
            .claim_due(now, cfg.lease_ms as i64, cfg.batch as i64)
            .await?;
        let n = due.len();
        let mut done = Vec::with_capacity(n);
        for (msg, attempts) in due {
            let mut headers = BTreeMap::new();
            headers.insert(
                crate::message::ATTEMPTS_HEADER.to_string(),
                attempts.to_string(),
            );
            let out = Outgoing {
                headers,
                ..msg.outgoing()
            };
            match publish(p, Route::Work, out).await {
                Ok(()) => done.push(msg.id),
                // A row the broker refuses to carry (stored before the contract bounded it, or
                // by another writer): set it aside so it cannot hold up the rest of the batch
                // at every tick.
                Err(e) if counts_against_message(&e) => quarantine_row(p, &store, &msg, &e).await?,
                Err(e) => {
                    // What was republished is in the work queue: release it before giving up.
                    store.release_claims(&done).await?;
                    return Err(e);
                }
            }
        }
        store.release_claims(&done).await?;
        total += n;
        if n < cfg.batch as usize {
            return Ok(total);
        }
    }
}

/// Set a due row aside that the broker refuses to republish, and alert.
async fn quarantine_row(
    p: &Pipeline,
    store: &crate::store::Store,
    msg: &crate::message::OutboundMessage,
    e: &PipelineError,
) -> Result<(), PipelineError> {
    let reason = crate::message::truncate_utf8(
        &format!("poison: the broker refused to republish it: {e}"),
        crate::message::MAX_REASON_BYTES,
    )
    .into_owned();
    store.quarantine(msg.id, &reason, p.clock.now_ms()).await?;
    tracing::error!(alert = "poison", id = %msg.id, %reason, "due retry set aside");
    raise(
        p,
        Alert {
            kind: AlertKind::Poison,
            key: format!("poison:{}", msg.id),
            summary: format!("message {} was set aside: {reason}", msg.id),
            details: serde_json::json!({ "id": msg.id, "error": e.to_string() }),
        },
    );
    Ok(())
}

/// `retry(id)`: a failed message back into play; the next tick republishes it.
pub async fn retry(p: &Pipeline, id: Uuid) -> Result<bool, PipelineError> {
    let store = store_of(p).await?;
    Ok(store.retry(id, p.clock.now_ms()).await?.is_some())
}

/// Consume what is in the failed queue now (bounded by its depth at the start), at most
/// `redrive_per_sec` a second: messages whose stored record failed for a transient reason are
/// put back into play; permanent failures (by the stored error class) and copies drover has no
/// record of go back to the end of the failed queue; copies of messages in play or sent since
/// are dropped.
pub async fn redrive(p: &Pipeline) -> Result<usize, PipelineError> {
    let broker = broker_of(p).await?;
    let store = store_of(p).await?;
    let queue = &p.config.broker.failed_queue;
    let depth = broker.queue_stats(queue).await?.ready as usize;
    if depth == 0 {
        return Ok(0);
    }
    let mut consumer = broker
        .consumer(queue, 1, &format!("drover-redrive-{}", Uuid::new_v4()))
        .await?;
    let pace = Duration::from_millis(1_000 / p.config.scheduler.redrive_per_sec.max(1) as u64);
    let mut redriven = 0;
    for _ in 0..depth {
        let Ok(Some(next)) = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await
        else {
            break;
        };
        let mut d = next?;
        let id = serde_json::from_slice::<crate::message::OutboundMessage>(&d.body)
            .ok()
            .map(|m| m.id);
        // The stored record decides, not the copy's header: a copy published again after a
        // crash, or by an older version, may carry another class than the message's own.
        let record = match id {
            Some(id) => store.get(id).await?,
            None => None,
        };
        let permanent = record.as_ref().map_or_else(
            || {
                d.headers
                    .get(ERROR_CLASS_HEADER)
                    .is_some_and(|c| c == "permanent")
            },
            |r| r.last_error_class.as_deref() == Some("permanent"),
        );
        match (id, record) {
            (Some(id), Some(r)) if r.status == MessageStatus::Failed && !permanent => {
                if store.retry(id, p.clock.now_ms()).await?.is_some() {
                    redriven += 1;
                }
            }
            // In play again or sent since (retried by an operator): this copy is stale.
            (Some(_), Some(r)) if r.status != MessageStatus::Failed => {}
            _ => {
                publish(p, Route::Failed, d.to_outgoing()).await?;
            }
        }
        d.ack().await?;
        tokio::time::sleep(pace).await;
    }
    Ok(redriven)
}
