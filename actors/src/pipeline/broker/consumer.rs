//! `consumer` ([`ConsumerWorker`]): the work queue's consumer under `root/broker`; one
//! `DeliveryWorker` per delivery, started under `root/broker/workers`.

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;

use crate::broker::{Broker, Consumer, Delivery};
use crate::pipeline::broker::connection::broker_of;
use crate::pipeline::delivery::DeliveryArgs;
use crate::pipeline::owned::spawn_owned;
use crate::pipeline::{Pipeline, PipelineError};
use crate::supervisor::start_child;

/// Messages of [`ConsumerWorker`].
#[derive(Debug)]
pub enum ConsumerMessage {
    /// Internal: a delivery arrived.
    #[doc(hidden)]
    Delivered(Box<Delivery>),
    /// Internal: the consumer's channel ended.
    #[doc(hidden)]
    Lost(String),
    /// Stop taking deliveries: the consumer is cancelled (its channel closed once the
    /// deliveries in flight have settled), so messages stay in the queue. Sets the pause
    /// switch in `Pipeline::ops`, so a restarted consumer stays paused. Answers whether it
    /// was consuming.
    Pause(RpcReplyPort<bool>),
    /// Consume again: a new consumer on the kept connection. Answers whether it was paused;
    /// if the consumer cannot be opened the actor fails (and its restart consumes).
    Resume(RpcReplyPort<Result<bool, PipelineError>>),
}

/// Consumes the work queue on its own channel and starts one worker per delivery. Its
/// channel's prefetch bounds the deliveries in flight; a worker that dies drops its delivery,
/// which nacks it back to the queue at once.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerWorker;

/// State of [`ConsumerWorker`].
#[derive(Debug)]
pub struct ConsumerState {
    p: Pipeline,
    /// The connection the consumers are opened on (kept to resume after a pause).
    broker: Broker,
    pump: Option<Pump>,
    consumer: Option<Consumer>,
    /// A paused consumer waiting for its deliveries in flight before it closes.
    drain: Option<JoinHandle<()>>,
}

/// The task that takes deliveries from a consumer and hands them to the actor.
#[derive(Debug)]
struct Pump {
    task: JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
    /// The consumer, handed back when stopped.
    back: tokio::sync::oneshot::Receiver<Consumer>,
}

fn pump(consumer: Consumer, me: ActorRef<ConsumerMessage>) -> Pump {
    let mut consumer = consumer;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let (give_back, back) = tokio::sync::oneshot::channel();
    // Ends with the actor: a killed consumer's channel must close (requeueing what it holds)
    // rather than stay registered on the queue, taking deliveries nobody handles.
    let task = spawn_owned(me.get_cell(), async move {
        loop {
            let next = tokio::select! {
                biased;
                _ = &mut stopped => {
                    let _ = give_back.send(consumer);
                    return;
                }
                next = consumer.next() => next,
            };
            match next {
                Some(Ok(d)) => {
                    if me
                        .send_message(ConsumerMessage::Delivered(Box::new(d)))
                        .is_err()
                    {
                        return;
                    }
                }
                Some(Err(e)) => {
                    let _ = me.send_message(ConsumerMessage::Lost(format!(
                        "consumer channel failed: {e}"
                    )));
                    return;
                }
                None => {
                    let _ =
                        me.send_message(ConsumerMessage::Lost("consumer channel closed".into()));
                    return;
                }
            }
        }
    });
    Pump { task, stop, back }
}

async fn open_consumer(p: &Pipeline, broker: &Broker) -> Result<Consumer, PipelineError> {
    let tag = format!("drover-{}", uuid::Uuid::new_v4());
    Ok(broker
        .consumer(&p.config.broker.work_queue, p.config.broker.prefetch, &tag)
        .await?)
}

/// Close a paused consumer once no delivery worker has been alive for a few polls (their
/// acks go over its channel), or after `delivery.worker_shutdown_ms` at the latest; closing
/// it requeues what it had prefetched. Ends with the actor (dropping the consumer closes it).
fn drain(p: Pipeline, consumer: Consumer, owner: ActorCell) -> JoinHandle<()> {
    spawn_owned(owner, async move {
        let workers = p.path("broker/workers");
        let deadline = tokio::time::Instant::now()
            + std::time::Duration::from_millis(p.config.delivery.worker_shutdown_ms);
        let mut quiet = 0;
        while quiet < 3 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let busy = p
                .tree
                .snapshot()
                .find(&workers)
                .is_some_and(|n| !n.children.is_empty());
            quiet = if busy { 0 } else { quiet + 1 };
        }
        if let Err(e) = consumer.close().await {
            tracing::warn!(error = %e, "closing the paused consumer failed");
        }
    })
}

impl Actor for ConsumerWorker {
    type Msg = ConsumerMessage;
    type State = ConsumerState;
    type Arguments = Pipeline;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        p: Pipeline,
    ) -> Result<Self::State, ActorProcessingErr> {
        let broker = broker_of(&p).await?;
        let consumer = if p.ops.consumption_paused() {
            tracing::info!("consumption is paused: not consuming until resumed");
            None
        } else {
            Some(open_consumer(&p, &broker).await?)
        };
        Ok(ConsumerState {
            p,
            broker,
            pump: None,
            consumer,
            drain: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(c) = state.consumer.take() {
            state.pump = Some(pump(c, myself));
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(p) = state.pump.take() {
            p.task.abort();
        }
        if let Some(d) = state.drain.take() {
            d.abort();
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
            ConsumerMessage::Delivered(d) => {
                state.p.ops.record_consumed();
                let workers = match state.p.workers() {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::warn!(error = %e, "no workers supervisor; delivery goes back to the queue");
                        return Ok(());
                    }
                };
                let args = DeliveryArgs::new(state.p.clone(), *d);
                if let Err(e) = start_child(&workers, args).await {
                    // The delivery was dropped with the arguments: it is back in the queue.
                    tracing::warn!(error = %e, "could not start a delivery worker");
                }
                Ok(())
            }
            ConsumerMessage::Lost(why) => Err(why.into()),
            ConsumerMessage::Pause(reply) => {
                state.p.ops.set_consumption_paused(true);
                let Some(Pump { task, stop, back }) = state.pump.take() else {
                    let _ = reply.send(false);
                    return Ok(());
                };
                let _ = stop.send(());
                // The pump only ever waits for the next delivery: it hands the consumer back
                // at once. If it ended instead, its `Lost` is already in the mailbox.
                match tokio::time::timeout(std::time::Duration::from_secs(5), back).await {
                    Ok(Ok(consumer)) => {
                        tracing::warn!("consumption paused by an operator");
                        if let Some(old) = state.drain.take() {
                            old.abort();
                        }
                        state.drain = Some(drain(state.p.clone(), consumer, myself.get_cell()));
                    }
                    _ => task.abort(),
                }
                let _ = reply.send(true);
                Ok(())
            }
            ConsumerMessage::Resume(reply) => {
                state.p.ops.set_consumption_paused(false);
                if state.pump.is_some() {
                    let _ = reply.send(Ok(false));
                    return Ok(());
                }
                match open_consumer(&state.p, &state.broker).await {
                    Ok(c) => {
                        tracing::info!("consumption resumed by an operator");
                        state.pump = Some(pump(c, myself));
                        let _ = reply.send(Ok(true));
                        Ok(())
                    }
                    Err(e) => {
                        let why = format!("could not resume consuming: {e}");
                        let _ = reply.send(Err(e));
                        Err(why.into())
                    }
                }
            }
        }
    }
}
