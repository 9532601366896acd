//! Typed operator calls on the running pipeline, for the HTTP API (and anything else that
//! drives it): each reaches the actors it needs, holds the operator policy (pause by the
//! switch while the consumer restarts, the re-drive reservation, why a retry found nothing),
//! and answers with a typed result. Callers map results to status codes; they never speak
//! an actor's protocol themselves.

use std::future::Future;
use std::time::Duration;

use uuid::Uuid;

use crate::broker::Route;
use crate::message::OutboundMessage;
use crate::pipeline::broker::connection::broker_of;
use crate::pipeline::broker::consumer::ConsumerMessage;
use crate::pipeline::broker::publisher::publish;
use crate::pipeline::ops::{RedriveRefused, RedriveStatus};
use crate::pipeline::scheduler::SchedulerMessage;
use crate::pipeline::store_worker::store_of;
use crate::pipeline::{Pipeline, PipelineError};
use crate::store::{FailureGroup, ListQuery, MessageRecord, MessageStatus, MessageSummary};

/// How long an operator call waits for the actors it reaches.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an operator call did not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A collaborator is not there or did not answer (503).
    #[error("{0}")]
    Unavailable(String),
    /// No message of that id (404).
    #[error("no message {0}")]
    NoSuchMessage(Uuid),
    /// The message is not in a state the call applies to (404).
    #[error("message {id} is {status}, not failed: only failed messages are retried")]
    NotFailed { id: Uuid, status: MessageStatus },
    /// An id (or Idempotency-Key) already used for another payload (422).
    #[error("message {0} exists with another payload")]
    IdReused(Uuid),
    /// A re-drive is running or the last one is too recent (429).
    #[error("{why}")]
    RedriveRefused { why: String, retry_after_ms: u64 },
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> AdminError {
    AdminError::Unavailable(format!("{what}: {e}"))
}

/// Ask `what` (the store, the broker) within `limit`: an error or silence is `Unavailable`.
async fn within<T>(
    what: &str,
    limit: Duration,
    ask: impl Future<Output = Result<T, String>>,
) -> Result<T, AdminError> {
    match tokio::time::timeout(limit, ask).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(unavailable(what, e)),
        Err(_) => Err(AdminError::Unavailable(format!(
            "{what} did not answer in time"
        ))),
    }
}

async fn stored(
    p: &Pipeline,
    id: Uuid,
    limit: Duration,
) -> Result<Option<MessageRecord>, AdminError> {
    within("the store", limit, async {
        let store = store_of(p).await.map_err(|e| e.to_string())?;
        store.get(id).await.map_err(|e| e.to_string())
    })
    .await
}

/// What became of a submission.
#[derive(Debug)]
pub enum Intake {
    /// Published to the work queue (confirmed).
    Accepted,
    /// The same payload under the same id is known already: nothing published.
    Duplicate(Box<MessageRecord>),
}

/// Submit a parsed message. `may_repeat`: its id is the caller's (an id or an
/// Idempotency-Key), so it may be a retry of an earlier submission; the store is asked first.
pub async fn submit(
    p: &Pipeline,
    msg: &OutboundMessage,
    may_repeat: bool,
) -> Result<Intake, AdminError> {
    if may_repeat {
        match find(p, msg.id).await? {
            Some(rec) if rec.message().is_some_and(|m| m.same_payload(msg)) => {
                return Ok(Intake::Duplicate(Box::new(rec)));
            }
            Some(_) => return Err(AdminError::IdReused(msg.id)),
            None => {}
        }
    }
    publish(p, Route::Work, msg.outgoing())
        .await
        .map_err(|e| unavailable("not accepted", e))?;
    Ok(Intake::Accepted)
}

/// Record a delivery receipt: the id of the message it is for, `None` for an unknown sid.
pub async fn record_receipt(
    p: &Pipeline,
    receipt: &crate::provider::receipt::Receipt,
) -> Result<Option<Uuid>, AdminError> {
    let store = store_of(p).await.map_err(|e| unavailable("the store", e))?;
    store
        .record_receipt(
            &receipt.provider_message_id,
            &receipt.status,
            receipt.error_code,
            p.clock.now_ms(),
        )
        .await
        .map_err(|e| unavailable("receipt not recorded", e))
}

/// A message's stored record, if there is one.
pub async fn find(p: &Pipeline, id: Uuid) -> Result<Option<MessageRecord>, AdminError> {
    stored(p, id, ADMIN_TIMEOUT).await
}

/// A page of messages (see [`Store::list`](crate::store::Store::list)); `None` when the
/// query's cursor names no message.
pub async fn list(
    p: &Pipeline,
    query: &ListQuery,
) -> Result<Option<Vec<MessageSummary>>, AdminError> {
    within("the store", ADMIN_TIMEOUT, async {
        let store = store_of(p).await.map_err(|e| e.to_string())?;
        store.list(query).await.map_err(|e| e.to_string())
    })
    .await
}

/// Failed messages grouped by their last error's class.
pub async fn failure_groups(p: &Pipeline) -> Result<Vec<FailureGroup>, AdminError> {
    within("the store", ADMIN_TIMEOUT, async {
        let store = store_of(p).await.map_err(|e| e.to_string())?;
        store.failure_groups().await.map_err(|e| e.to_string())
    })
    .await
}

/// Most failed messages one group retry puts back into play; a larger group takes more calls.
pub const GROUP_RETRY_MAX: u32 = 500;

/// What a group retry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupRetry {
    /// Put back into play.
    pub retried: usize,
    /// Found failed but no longer failed when retried (another operator, a re-drive).
    pub skipped: usize,
}

/// Put back into play every failed message of error class `class` (at most
/// [`GROUP_RETRY_MAX`] a call, the oldest failures first), each as [`retry`] does.
pub async fn retry_group(p: &Pipeline, class: &str) -> Result<GroupRetry, AdminError> {
    let ids = within("the store", ADMIN_TIMEOUT, async {
        let store = store_of(p).await.map_err(|e| e.to_string())?;
        store
            .failed_of_class(class, GROUP_RETRY_MAX)
            .await
            .map_err(|e| e.to_string())
    })
    .await?;
    let mut done = GroupRetry {
        retried: 0,
        skipped: 0,
    };
    for id in ids {
        match retry(p, id).await {
            Ok(()) => done.retried += 1,
            Err(AdminError::NotFailed { .. } | AdminError::NoSuchMessage(_)) => done.skipped += 1,
            Err(e) if done.retried == 0 => return Err(e),
            // Part of the group is back in play: say so rather than fail the whole call.
            Err(e) => {
                tracing::warn!(error = %e, class, retried = done.retried, "group retry stopped early");
                break;
            }
        }
    }
    tracing::warn!(
        class,
        retried = done.retried,
        "failure group put back into play on operator request"
    );
    Ok(done)
}

/// Put a failed message back into play (through the scheduler).
pub async fn retry(p: &Pipeline, id: Uuid) -> Result<(), AdminError> {
    let scheduler = p
        .scheduler()
        .map_err(|e| AdminError::Unavailable(e.to_string()))?;
    let answer = ractor::call_t!(
        scheduler,
        |reply| SchedulerMessage::Retry { id, reply },
        ADMIN_TIMEOUT.as_millis() as u64
    );
    match answer {
        Ok(Ok(true)) => {
            tracing::warn!(%id, "failed message put back into play on operator request");
            Ok(())
        }
        Ok(Ok(false)) => {
            // Say why, if the store answers quickly.
            let status = stored(p, id, Duration::from_secs(2)).await.ok().flatten();
            Err(match status.map(|r| r.status) {
                Some(status) => AdminError::NotFailed { id, status },
                None => AdminError::NoSuchMessage(id),
            })
        }
        Ok(Err(e)) => Err(unavailable("retry failed", e)),
        Err(e) => Err(unavailable("the scheduler did not answer", e)),
    }
}

/// The failed queue as a re-drive would find it.
#[derive(Debug, Clone)]
pub struct FailedQueue {
    pub queue: String,
    pub depth: u32,
    pub consumers: u32,
    pub redrive: RedriveStatus,
}

/// Read the failed queue's depth (a dry run of a re-drive: nothing moves).
pub async fn failed_queue(p: &Pipeline) -> Result<FailedQueue, AdminError> {
    let queue = p.config.broker.failed_queue.clone();
    let s = within("the broker", ADMIN_TIMEOUT, async {
        let broker = broker_of(p).await.map_err(|e| e.to_string())?;
        broker.queue_stats(&queue).await.map_err(|e| e.to_string())
    })
    .await?;
    Ok(FailedQueue {
        queue,
        depth: s.ready,
        consumers: s.consumers,
        redrive: p.ops.redrive_status(),
    })
}

/// A re-drive that was started.
#[derive(Debug, Clone)]
pub struct Redriving {
    pub queue: String,
    /// The failed queue's depth at its last sample, if there is one.
    pub depth_last_sampled: Option<u32>,
}

/// Start a re-drive of the failed queue, at most one at a time and one per `cooldown_ms`.
pub fn redrive(p: &Pipeline, cooldown_ms: u64) -> Result<Redriving, AdminError> {
    let previous = p
        .ops
        .reserve_redrive(p.clock.now_ms(), cooldown_ms)
        .map_err(|refused| match refused {
            RedriveRefused::Running => AdminError::RedriveRefused {
                why: "a re-drive is running".into(),
                retry_after_ms: 1_000,
            },
            RedriveRefused::TooSoon { retry_after_ms } => AdminError::RedriveRefused {
                why: format!(
                    "the last re-drive started less than {cooldown_ms} ms ago \
                     (admin.redrive_cooldown_ms)"
                ),
                retry_after_ms,
            },
        })?;
    let sent = p.scheduler().map_err(|e| e.to_string()).and_then(|s| {
        s.send_message(SchedulerMessage::Redrive)
            .map_err(|e| e.to_string())
    });
    if let Err(e) = sent {
        p.ops.cancel_redrive(previous);
        return Err(unavailable("the scheduler", e));
    }
    let queue = p.config.broker.failed_queue.clone();
    tracing::warn!(%queue, "failed queue re-drive requested by an operator");
    let depth_last_sampled = p.ops.queues().get(&queue).map(|s| s.ready);
    Ok(Redriving {
        queue,
        depth_last_sampled,
    })
}

/// Consumption after a pause or resume.
#[derive(Debug, Clone)]
pub struct Consumption {
    pub paused: bool,
    pub was_paused: bool,
    /// Set when the consumer was restarting: the switch is set, and its next incarnation
    /// follows it.
    pub by_switch: Option<String>,
}

/// The consumer is restarting: set the switch its next incarnation reads.
fn by_switch(p: &Pipeline, paused: bool, why: PipelineError) -> Consumption {
    Consumption {
        paused,
        was_paused: p.ops.set_consumption_paused(paused),
        by_switch: Some(why.to_string()),
    }
}

/// Stop taking deliveries; messages stay in the queue.
pub async fn pause(p: &Pipeline) -> Result<Consumption, AdminError> {
    let consumer = match p.consumer() {
        Ok(c) => c,
        Err(e) => return Ok(by_switch(p, true, e)),
    };
    match ractor::call_t!(
        consumer,
        ConsumerMessage::Pause,
        ADMIN_TIMEOUT.as_millis() as u64
    ) {
        Ok(was_consuming) => Ok(Consumption {
            paused: true,
            was_paused: !was_consuming,
            by_switch: None,
        }),
        Err(e) => Err(unavailable("the consumer did not answer", e)),
    }
}

/// Consume again.
pub async fn resume(p: &Pipeline) -> Result<Consumption, AdminError> {
    let consumer = match p.consumer() {
        Ok(c) => c,
        Err(e) => return Ok(by_switch(p, false, e)),
    };
    match ractor::call_t!(
        consumer,
        ConsumerMessage::Resume,
        ADMIN_TIMEOUT.as_millis() as u64
    ) {
        Ok(Ok(was_paused)) => Ok(Consumption {
            paused: false,
            was_paused,
            by_switch: None,
        }),
        Ok(Err(e)) => Err(AdminError::Unavailable(format!(
            "could not resume: {e} (the consumer restarts and consumes)"
        ))),
        Err(e) => Err(unavailable("the consumer did not answer", e)),
    }
}
