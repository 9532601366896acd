//! # The delivery pipeline
//!
//! ```text
//! root (Supervisor: one_for_one)   children.rs
//! ├── alerts      AlertWorker      alerts.rs           logs alerts, POSTs them to [alerts] webhook_url
//! ├── store       StoreWorker      store_worker.rs     owns the sqlx pool; pings it; fails when the database is gone
//! ├── providers   Supervisor (one_for_one)  providers.rs: header + spec
//! │   └── <name>  ProviderWorker   provider_worker.rs  one per provider of the chain: its client and circuit breaker
//! ├── broker      Supervisor (rest_for_one)  broker/mod.rs: header + spec
//! │   ├── connection  ConnectionWorker  broker/connection.rs  one RabbitMQ connection; declares the topology
//! │   ├── publisher   PublisherWorker   broker/publisher.rs   its own confirm-mode channel
//! │   ├── consumer    ConsumerWorker    broker/consumer.rs    its own channel on the work queue
//! │   └── workers     Supervisor (one_for_one, dynamic)       broker/mod.rs
//! │       └── delivery-N  DeliveryWorker (temporary)          delivery.rs, decide.rs
//! ├── scheduler   SchedulerWorker  scheduler.rs        republishes due retries from the database
//! ├── monitor     MonitorWorker    monitor.rs          caches queue depths; alerts on a backlog
//! ├── trends      TrendsWorker     trends.rs           the last 15 minutes, sampled for the console
//! ├── delivery_rate  DeliveryRateWorker  delivery_rate.rs  (receipts on) alerts on a bad delivery rate
//! └── canary      CanaryWorker     canary.rs           (canary.every_ms > 0) an end-to-end probe
//! ```
//!
//! `alerts` starts first so every other actor can raise an alert ([`alerts::raise`]); it also
//! turns a supervisor giving up (from the tree's event stream) into an alert.
//!
//! A lost RabbitMQ connection fails `connection`; rest_for_one restarts the publisher, the
//! consumer and the workers with it (they hold its channels and deliveries), and nothing
//! else. A worker that dies mid-message drops its delivery, which nacks it back to the queue
//! at once. A delivery is acked only after the database commit of its outcome and the
//! confirm of any publish it caused.

pub mod admin;
pub mod alerts;
pub mod broker;
pub mod canary;
pub mod children;
pub mod config;
pub mod decide;
pub mod delivery;
pub mod delivery_rate;
pub mod monitor;
pub mod ops;
pub mod owned;
pub mod poison;
pub mod provider_worker;
pub mod providers;
pub mod route;
pub mod scheduler;
pub mod set_aside;
pub mod store_worker;
pub mod trends;

use ractor::ActorRef;
use std::sync::Arc;

pub use children::pipeline_children;
pub use config::{DeliveryConfig, PipelineConfig, SchedulerConfig};

use crate::broker::MemoryBroker;
use crate::clock::Clock;
use crate::tree::{LookupError, Tree};

/// Errors of the pipeline actors.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{0} is not available: {1}")]
    Unavailable(&'static str, LookupError),
    #[error("{0} did not answer: {1}")]
    NoAnswer(&'static str, String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
    #[error(transparent)]
    Provider(#[from] crate::provider::ProviderError),
}

/// How the pipeline's actors reach each other: stable handles through the live tree, so a
/// restarted collaborator is found again and a restarting one says so.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub tree: Tree,
    pub root: String,
    /// Shared: every worker holds the pipeline, and a deep copy per message cost more than
    /// its store call.
    pub config: Arc<PipelineConfig>,
    pub clock: Clock,
    pub memory: MemoryBroker,
    /// Cached operational state (circuit, last store ping, queue depths, pause switch,
    /// re-drive status) and metrics handles, for the HTTP probes and `/metrics`.
    pub ops: ops::Ops,
}

impl Pipeline {
    pub fn path(&self, rel: &str) -> String {
        format!("{}/{rel}", self.root)
    }

    fn lookup<M: ractor::Message>(
        &self,
        rel: &str,
        what: &'static str,
    ) -> Result<ActorRef<M>, PipelineError> {
        self.tree
            .handle(self.path(rel))
            .actor_ref()
            .map_err(|e| PipelineError::Unavailable(what, e))
    }

    pub fn store(&self) -> Result<ActorRef<store_worker::StoreMessage>, PipelineError> {
        self.lookup("store", "the store")
    }

    /// The primary provider's actor.
    pub fn provider(&self) -> Result<ActorRef<provider_worker::ProviderMessage>, PipelineError> {
        self.provider_at(0)
    }

    /// The actor of provider `index` of the chain (0: the primary).
    pub fn provider_at(
        &self,
        index: usize,
    ) -> Result<ActorRef<provider_worker::ProviderMessage>, PipelineError> {
        // Called for every provider of the chain on every delivery: no chain built for it.
        let p = &self.config.provider;
        let name = match index {
            0 => p.name.as_str(),
            i => p.fallbacks.get(i - 1).map_or("", |c| c.name.as_str()),
        };
        self.lookup(&format!("providers/{name}"), "the provider")
    }

    pub fn connection(
        &self,
    ) -> Result<ActorRef<broker::connection::ConnectionMessage>, PipelineError> {
        self.lookup("broker/connection", "the broker connection")
    }

    pub fn publisher(
        &self,
    ) -> Result<ActorRef<broker::publisher::PublisherMessage>, PipelineError> {
        self.lookup("broker/publisher", "the publisher")
    }

    pub fn consumer(&self) -> Result<ActorRef<broker::consumer::ConsumerMessage>, PipelineError> {
        self.lookup("broker/consumer", "the consumer")
    }

    pub fn workers(&self) -> Result<ActorRef<crate::supervisor::SupervisorMessage>, PipelineError> {
        self.lookup("broker/workers", "the workers supervisor")
    }

    pub fn scheduler(&self) -> Result<ActorRef<scheduler::SchedulerMessage>, PipelineError> {
        self.lookup("scheduler", "the scheduler")
    }

    pub fn alerts(&self) -> Result<ActorRef<alerts::AlertMessage>, PipelineError> {
        self.lookup("alerts", "the alert worker")
    }
}
