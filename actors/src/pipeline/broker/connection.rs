//! `connection` ([`ConnectionWorker`]): one RabbitMQ connection under `root/broker`.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::pipeline::{Pipeline, PipelineError};

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
        tracing::info!(
            queue = %p.config.broker.work_queue,
            node = broker.node(),
            "broker connected; topology declared"
        );
        p.tree.set_detail(
            &p.path("broker/connection"),
            myself.get_id(),
            format!("connected to {}", broker.node()),
        );
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
