//! # `root/broker`: the RabbitMQ subtree (a supervisor built from [`spec`])
//!
//! **Supervises** (in start order): `connection` ([`ConnectionWorker`]), `publisher`
//! ([`PublisherWorker`]), `consumer` ([`ConsumerWorker`]), `workers` (a supervisor of dynamic,
//! temporary `DeliveryWorker`s (`delivery.rs`), at most 2 × prefetch).
//! **Strategy**: rest_for_one: a lost connection restarts everything after it (the channels
//! and the deliveries held on them); a lost consumer channel restarts the consumer and the
//! workers; a publisher failure restarts the publisher, the consumer and the workers.
//! **Intensity**: `[supervision]`. **Supervised by**: the root supervisor.
//!
//! lapin's own recovery stays off: every reconnection is a restart with backoff, and every
//! connect declares the topology again.

pub mod connection;
pub mod consumer;
pub mod publisher;

use std::time::Duration;

use crate::pipeline::Pipeline;
use crate::pipeline::delivery::start_delivery_worker;
use crate::supervisor::{ChildSpec, Restart, Shutdown, Strategy, SupervisorSpec};
use connection::ConnectionWorker;
use consumer::ConsumerWorker;
use publisher::PublisherWorker;

/// The subtree's spec: its children in start order, the workers' dynamic spec.
pub fn spec(pb: &Pipeline) -> SupervisorSpec {
    let backoff = pb.config.supervision.backoff;
    let intensity = pb.config.supervision.intensity();
    let seed = pb.config.supervision.seed;
    let (pc, ppub, pcons) = (pb.clone(), pb.clone(), pb.clone());
    let max_workers = (pb.config.broker.prefetch as usize).max(1) * 2;
    let worker_shutdown =
        Shutdown::Timeout(Duration::from_millis(pb.config.delivery.worker_shutdown_ms));
    SupervisorSpec::new(Strategy::RestForOne, intensity)
        .seed(seed)
        .child(
            ChildSpec::worker("connection", move |_| (ConnectionWorker, pc.clone()))
                .backoff(backoff),
        )
        .child(
            ChildSpec::worker("publisher", move |_| (PublisherWorker, ppub.clone()))
                .backoff(backoff),
        )
        .child(
            ChildSpec::worker("consumer", move |_| (ConsumerWorker, pcons.clone()))
                .backoff(backoff),
        )
        .child(ChildSpec::supervisor("workers", move |_| {
            SupervisorSpec::new(Strategy::OneForOne, intensity).dynamic(
                ChildSpec::new("delivery", start_delivery_worker)
                    .restart(Restart::Temporary)
                    .shutdown(worker_shutdown),
                max_workers,
            )
        }))
}
