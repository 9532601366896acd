//! Group commit: admissions and outcomes from many workers, batched into few transactions.
//!
//! Each worker still waits for the commit of its own admission or outcome before it goes on
//! (and, for outcomes, before it acks), so batching changes how many commits the database
//! does, not what a worker may assume after its call returns: the ack-after-commit rule
//! holds. A batch that fails is retried op by op, so one bad op cannot fail its neighbours
//! and every caller gets its own error.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};
use uuid::Uuid;

use super::{Admission, AttemptOutcome, Store, StoreError};
use crate::message::OutboundMessage;

pub(super) enum Op {
    Begin {
        msg: OutboundMessage,
        now_ms: i64,
        reply: oneshot::Sender<Result<Admission, StoreError>>,
    },
    Record {
        id: Uuid,
        attempt: u32,
        outcome: AttemptOutcome,
        now_ms: i64,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// The sending side of a store's batcher. Clones share one batcher; the batcher task ends
/// when the last clone is dropped.
#[derive(Debug, Clone)]
pub(super) struct GroupCommit {
    tx: mpsc::UnboundedSender<Op>,
}

impl GroupCommit {
    /// Start the batcher over `store` (which must not itself batch): at most `max_batch` ops
    /// per transaction, at most `in_flight` transactions at once.
    pub(super) fn spawn(store: Store, max_batch: usize, in_flight: usize) -> GroupCommit {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(store, rx, max_batch.max(1), in_flight.max(1)));
        GroupCommit { tx }
    }

    pub(super) async fn begin(
        &self,
        msg: &OutboundMessage,
        now_ms: i64,
    ) -> Result<Admission, StoreError> {
        let (reply, rx) = oneshot::channel();
        let op = Op::Begin {
            msg: msg.clone(),
            now_ms,
            reply,
        };
        self.tx.send(op).map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    pub(super) async fn record(
        &self,
        id: Uuid,
        attempt: u32,
        outcome: &AttemptOutcome,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        let op = Op::Record {
            id,
            attempt,
            outcome: outcome.clone(),
            now_ms,
            reply,
        };
        self.tx.send(op).map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable(sqlx::Error::PoolClosed)
}

async fn run(
    store: Store,
    mut rx: mpsc::UnboundedReceiver<Op>,
    max_batch: usize,
    in_flight: usize,
) {
    let permits = Arc::new(Semaphore::new(in_flight));
    loop {
        // Wait for a free transaction slot first: while all are busy, ops pile up and the
        // next batch takes them all.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else { return };
        let mut ops = vec![first];
        while ops.len() < max_batch {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let store = store.clone();
        tokio::spawn(async move {
            execute(&store, ops).await;
            drop(permit);
        });
    }
}

async fn execute(store: &Store, ops: Vec<Op>) {
    let mut begins = Vec::new();
    let mut records = Vec::new();
    for op in ops {
        match op {
            Op::Begin { msg, now_ms, reply } => begins.push((msg, now_ms, reply)),
            Op::Record {
                id,
                attempt,
                outcome,
                now_ms,
                reply,
            } => records.push((id, attempt, outcome, now_ms, reply)),
        }
    }
    tokio::join!(
        execute_begins(store, begins),
        execute_records(store, records)
    );
}

type BeginOp = (
    OutboundMessage,
    i64,
    oneshot::Sender<Result<Admission, StoreError>>,
);
type RecordOp = (
    Uuid,
    u32,
    AttemptOutcome,
    i64,
    oneshot::Sender<Result<(), StoreError>>,
);

async fn execute_begins(store: &Store, ops: Vec<BeginOp>) {
    if ops.is_empty() {
        return;
    }
    let now = ops.iter().map(|(_, n, _)| *n).max().unwrap_or_default();
    // The messages move out of the ops (no copy per message on this hot path).
    let (msgs, rest): (Vec<OutboundMessage>, Vec<_>) =
        ops.into_iter().map(|(m, n, r)| (m, (n, r))).unzip();
    let (admissions, failed) = store.begin_batch(&msgs, now).await;
    if let (Some(e), [_]) = (failed, rest.as_slice()) {
        // A batch of one: its error is its caller's own.
        if let Some((_, reply)) = rest.into_iter().next() {
            let _ = reply.send(Err(e));
        }
        return;
    }
    let mut undecided = Vec::new();
    for ((msg, (now, reply)), a) in msgs.into_iter().zip(rest).zip(admissions) {
        match a {
            Some(a) => {
                let _ = reply.send(Ok(a));
            }
            None => undecided.push((msg, now, reply)),
        }
    }
    // What the batch left undecided, op by op, so each caller gets its own error.
    for (msg, now, reply) in undecided {
        let _ = reply.send(store.begin_attempt_direct(&msg, now).await);
    }
}

async fn execute_records(store: &Store, ops: Vec<RecordOp>) {
    if ops.is_empty() {
        return;
    }
    let now = ops
        .iter()
        .map(|(_, _, _, n, _)| *n)
        .max()
        .unwrap_or_default();
    let (batch, rest): (Vec<(Uuid, u32, AttemptOutcome)>, Vec<_>) = ops
        .into_iter()
        .map(|(id, a, o, n, r)| ((id, a, o), (n, r)))
        .unzip();
    let (done, failed) = store.record_batch(&batch, now).await;
    if let (Some(e), [_]) = (failed, rest.as_slice()) {
        // A batch of one: its error is its caller's own.
        if let Some((_, reply)) = rest.into_iter().next() {
            let _ = reply.send(Err(e));
        }
        return;
    }
    for (((id, attempt, outcome), (now, reply)), done) in batch.iter().zip(rest).zip(done) {
        let result = if done {
            Ok(())
        } else {
            store
                .record_outcome_direct(*id, *attempt, outcome, now)
                .await
        };
        let _ = reply.send(result);
    }
}
