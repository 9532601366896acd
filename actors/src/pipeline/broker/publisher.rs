//! `publisher` ([`PublisherWorker`]): the confirm-mode channel under `root/broker`.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;

use crate::broker::{BrokerError, Outgoing, Publisher, Route};
use crate::pipeline::broker::connection::broker_of;
use crate::pipeline::owned::spawn_owned;
use crate::pipeline::{Pipeline, PipelineError};

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
