//! `StoreWorker`: the database connection actor.
//!
//! Connects (and migrates) in `pre_start`, so an unreachable database is a start failure its
//! supervisor retries with backoff. Pings on a timer and fails when the database is gone, so
//! reconnection is a restart. Each ping's result is cached in `Pipeline::ops` (`/readyz`
//! shows it without querying the database). Hands out the pool handle
//! (`StoreMessage::Get`): sqlx pools are concurrent, so queries do not queue behind this actor.

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::pipeline::Pipeline;
use crate::pipeline::ops::PingRecord;
use crate::store::Store;

/// How often the connection is checked.
pub const PING_EVERY: Duration = Duration::from_secs(2);

/// Messages of [`StoreWorker`].
#[derive(Debug)]
pub enum StoreMessage {
    /// The store handle.
    Get(RpcReplyPort<Store>),
    /// A caller saw the database fail: check now.
    Suspect,
    /// Timer: check the connection.
    Ping,
}

/// The database connection actor.
#[derive(Debug, Clone, Copy)]
pub struct StoreWorker;

/// State of [`StoreWorker`].
#[derive(Debug)]
pub struct StoreState {
    store: Store,
    p: Pipeline,
}

impl Actor for StoreWorker {
    type Msg = StoreMessage;
    type State = StoreState;
    type Arguments = Pipeline;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        p: Pipeline,
    ) -> Result<Self::State, ActorProcessingErr> {
        let store = Store::connect(&p.config.store)
            .await?
            .with_sending_lease(p.config.delivery.sending_lease_ms as i64)
            .with_invalid_body_limit(p.config.message.max_payload_bytes);
        let store = match p.config.store.group_commit_max_batch {
            0 => store,
            n => store.with_group_commit(n, p.config.store.group_commit_in_flight),
        };
        tracing::info!(backend = store.backend(), "database connected and migrated");
        p.ops.set_store(myself.get_id(), store.clone());
        myself.send_interval(PING_EVERY, || StoreMessage::Ping);
        p.ops.record_store_ping(PingRecord {
            at_ms: p.clock.now_ms(),
            latency_ms: 0,
            error: None,
        });
        Ok(StoreState { store, p })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.p.ops.clear_store(myself.get_id());
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            StoreMessage::Get(reply) => {
                let _ = reply.send(state.store.clone());
            }
            StoreMessage::Ping | StoreMessage::Suspect => {
                let started = tokio::time::Instant::now();
                let result = state.store.ping().await;
                state.p.ops.record_store_ping(PingRecord {
                    at_ms: state.p.clock.now_ms(),
                    latency_ms: started.elapsed().as_millis() as u64,
                    error: result.as_ref().err().map(ToString::to_string),
                });
                if let Err(e) = result {
                    // Failing skips post_stop: withdraw the handle here.
                    state.p.ops.clear_store(myself.get_id());
                    return Err(format!("database unreachable: {e}").into());
                }
            }
        }
        Ok(())
    }
}

/// The current store handle: the one the running store worker published, else asked of it.
pub async fn store_of(p: &Pipeline) -> Result<Store, crate::pipeline::PipelineError> {
    let actor = p.store()?;
    if let Some(store) = p.ops.store(actor.get_id()) {
        return Ok(store);
    }
    ractor::call_t!(actor, StoreMessage::Get, 5_000)
        .map_err(|e| crate::pipeline::PipelineError::NoAnswer("the store", e.to_string()))
}
