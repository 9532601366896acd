//! # `BrokerSupervisor`: the RabbitMQ subtree
//!
//! **Supervises** (in start order): `connection` ([`ConnectionWorker`]), `publisher`
//! ([`PublisherWorker`]), `consumer` ([`ConsumerWorker`]), `workers` (a supervisor of dynamic,
//! temporary `DeliveryWorker`s, at most 2 × prefetch).
//! **Strategy**: rest_for_one: a lost connection restarts everything after it (the channels
//! and the deliveries held on them); a lost consumer channel restarts the consumer and the
//! workers; a publisher failure restarts the publisher, the consumer and the workers.
//! **Intensity**: `[supervision]`. **Supervised by**: the root supervisor.
//!
//! lapin's own recovery stays off: every reconnection is a restart with backoff, and every
//! connect declares the topology again.

use std::future::Future;
use std::sync::Arc;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;

use crate::broker::{Broker, BrokerError, Consumer, Delivery, Outgoing, Publisher, Route};
use crate::pipeline::worker::DeliveryArgs;
use crate::pipeline::{Pipeline, PipelineError};
use crate::supervisor::start_child;

/// Spawn a helper task of the actor `owner` that ends with `task` or with the owner, whichever
/// comes first. ractor runs `post_stop` only after a graceful stop, not when the actor is
/// killed or fails, so a helper holding a connection, a channel or a consumer must not rely on
/// `post_stop` alone to end: it would keep that resource open after its owner is gone.
pub(crate) fn spawn_owned(
    owner: ActorCell,
    task: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        tokio::select! {
            () = task => {}
            _ = owner.wait(None) => {}
        }
    })
}

// ---- connection -----------------------------------------------------------------------------

/// Messages of [`ConnectionWorker`].
#[derive(Debug)]
pub enum ConnectionMessage {
    /// The connection, to open channels on.
    Get(RpcReplyPort<Broker>),
    /// Internal: the connection was lost.
    #[doc(hidden)]
    Lost(String),
}

/// One broker connection; declares the topology at connect; fails when the connection is lost.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionWorker;

/// State of [`ConnectionWorker`].
#[derive(Debug)]
pub struct ConnectionState {
    broker: Broker,
    watcher: JoinHandle<()>,
}

impl Actor for ConnectionWorker {
    type Msg = ConnectionMessage;
    type State = ConnectionState;
    type Arguments = Pipeline;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        p: Pipeline,
    ) -> Result<Self::State, ActorProcessingErr> {
        let broker = Broker::connect(&p.config.broker, &p.memory).await?;
        tracing::info!(queue = %p.config.broker.work_queue, "broker connected; topology declared");
        let b = broker.clone();
        let owner = myself.get_cell();
        // The watcher holds a handle on the connection. When this actor dies without its
        // `post_stop` (killed), nobody else will close that connection: the watcher does.
        let watcher = tokio::spawn(async move {
            tokio::select! {
                _ = b.closed() => {
                    let _ = myself
                        .send_message(ConnectionMessage::Lost("broker connection lost".into()));
                }
                _ = owner.wait(None) => {
                    let _ = b.close().await;
                }
            }
        });
        Ok(ConnectionState { broker, watcher })
    }

    async fn post_stop(
        &self,
        _: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.watcher.abort();
        let _ = state.broker.close().await;
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConnectionMessage::Get(reply) => {
                let _ = reply.send(state.broker.clone());
                Ok(())
            }
            ConnectionMessage::Lost(why) => Err(why.into()),
        }
    }
}

/// The current connection, through the connection actor.
pub async fn broker_of(p: &Pipeline) -> Result<Broker, PipelineError> {
    let c = p.connection()?;
    ractor::call_t!(c, ConnectionMessage::Get, 5_000)
        .map_err(|e| PipelineError::NoAnswer("the broker connection", e.to_string()))
}

// ---- publisher ------------------------------------------------------------------------------

/// Messages of [`PublisherWorker`].
#[derive(Debug)]
pub enum PublisherMessage {
    /// Publish and answer once the broker confirmed it.
    Publish {
        route: Route,
        msg: Box<Outgoing>,
        reply: RpcReplyPort<Result<(), BrokerError>>,
    },
    /// Internal: the channel was lost.
    #[doc(hidden)]
    Lost(String),
}

/// A confirm-mode channel; publishes run concurrently, each answered after its confirm.
#[derive(Debug, Clone, Copy)]
pub struct PublisherWorker;

/// State of [`PublisherWorker`].
#[derive(Debug)]
pub struct PublisherState {
    publisher: Arc<Publisher>,
    watcher: JoinHandle<()>,
}

impl Actor for PublisherWorker {
    type Msg = PublisherMessage;
    type State = PublisherState;
    type Arguments = Pipeline;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        p: Pipeline,
    ) -> Result<Self::State, ActorProcessingErr> {
        let broker = broker_of(&p).await?;
        let publisher = Arc::new(broker.publisher().await?);
        let watch = publisher.clone();
        let watcher = spawn_owned(myself.get_cell(), async move {
            watch.closed().await;
            let _ = myself.send_message(PublisherMessage::Lost("publisher channel lost".into()));
        });
        Ok(PublisherState { publisher, watcher })
    }

    async fn post_stop(
        &self,
        _: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.watcher.abort();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PublisherMessage::Publish { route, msg, reply } => {
                let publisher = state.publisher.clone();
                tokio::spawn(async move {
                    let result = publisher.publish(route, *msg).await;
                    if let Err(e) = &result {
                        if e.is_connection_lost() {
                            let _ = myself.send_message(PublisherMessage::Lost(e.to_string()));
                        }
                    }
                    let _ = reply.send(result);
                });
                Ok(())
            }
            PublisherMessage::Lost(why) => Err(why.into()),
        }
    }
}

/// Publish through the publisher actor; `Ok` only after the broker confirmed.
pub async fn publish(p: &Pipeline, route: Route, msg: Outgoing) -> Result<(), PipelineError> {
    let publisher = p.publisher()?;
    let timeout = p.config.broker.confirm_timeout_ms + 1_000;
    ractor::call_t!(
        publisher,
        |reply| PublisherMessage::Publish {
            route,
            msg: Box::new(msg),
            reply
        },
        timeout
    )
    .map_err(|e| PipelineError::NoAnswer("the publisher", e.to_string()))?
    // Typed, so the poison guard can tell a publish the broker refused for the message's
    // shape from a lost connection.
    .map_err(PipelineError::Broker)?;
    p.ops.metrics.published(route).increment(1);
    Ok(())
}

// ---- consumer ------------------------------------------------------------------------------

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
    Resume(RpcReplyPort<Result<bool, String>>),
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
                        let _ = reply.send(Err(e.to_string()));
                        Err(format!("could not resume consuming: {e}").into())
                    }
                }
            }
        }
    }
}
