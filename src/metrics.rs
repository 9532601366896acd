//! `GET /metrics`: Prometheus text format.
//!
//! One [`PrometheusRecorder`] per [`App`](crate::App) (never the process-global recorder, so
//! several apps in one process, as in tests, keep their own numbers). The pipeline's counters
//! and histogram (`drover_actors::pipeline::ops`) are handles bound to it; the gauges are
//! computed at scrape time from cached state only (the tree snapshot, the circuit cell, the
//! sampled queue depths), so a scrape never messages an actor or queries a dependency.
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `drover_messages_total` | counter | `outcome` | attempts' recorded outcomes: `sent`, `retry`, `failed`, `invalid`, `deferred`, `ambiguous` |
//! | `drover_attempts_total` | counter | `provider` | provider calls |
//! | `drover_provider_latency_seconds` | histogram | `provider` | provider call latency |
//! | `drover_published_total` | counter | `route` | confirmed publishes: `work`, `failed`, `invalid` |
//! | `drover_consumed_total` | counter | | deliveries taken from the work queue |
//! | `drover_actor_restarts` | gauge | `path` | restarts of each supervised actor (temporary ones excluded) |
//! | `drover_actors` | gauge | `status` | actors by status |
//! | `drover_workers_in_flight` | gauge | | live delivery workers (children of `root/broker/workers`) |
//! | `drover_provider_circuit_state` | gauge | `provider`, `role` (primary, fallback) | 0 closed, 1 half-open, 2 open |
//! | `drover_queue_depth` | gauge | `queue` | ready messages, as last sampled (`http.queue_sample_ms`) |
//! | `drover_queue_consumers` | gauge | `queue` | consumers, as last sampled |
//! | `drover_queue_dropped` | gauge | `queue` | messages the in-memory broker's failed / invalid queue dropped to stay within `broker.memory_keep_newest` (0 on RabbitMQ) |
//! | `drover_consumption_paused` | gauge | | 1 while an operator paused consumption |

use std::sync::Arc;

use drover_actors::pipeline::Pipeline;
use drover_actors::pipeline::ops::{
    LATENCY_BUCKETS, PROVIDER_LATENCY_SECONDS, PipelineMetrics, circuit_level,
};
use drover_actors::supervisor::Restart;
use drover_actors::tree::{NodeStatus, Tree};
use metrics::Unit;
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// Gauge: restarts by actor path.
pub const ACTOR_RESTARTS: &str = "drover_actor_restarts";
/// Gauge: actors by status.
pub const ACTORS: &str = "drover_actors";
/// Gauge: live delivery workers.
pub const WORKERS_IN_FLIGHT: &str = "drover_workers_in_flight";
/// Gauge: the provider's circuit (0 closed, 1 half-open, 2 open).
pub const CIRCUIT_STATE: &str = "drover_provider_circuit_state";
/// Gauge: ready messages by queue, as last sampled.
pub const QUEUE_DEPTH: &str = "drover_queue_depth";
/// Gauge: consumers by queue, as last sampled.
pub const QUEUE_CONSUMERS: &str = "drover_queue_consumers";
/// Gauge: messages a bounded in-memory queue dropped, by queue.
pub const QUEUE_DROPPED: &str = "drover_queue_dropped";
/// Gauge: 1 while consumption is paused.
pub const CONSUMPTION_PAUSED: &str = "drover_consumption_paused";

const STATUSES: [(NodeStatus, &str); 6] = [
    (NodeStatus::Starting, "starting"),
    (NodeStatus::Running, "running"),
    (NodeStatus::BackingOff, "backing_off"),
    (NodeStatus::Restarting, "restarting"),
    (NodeStatus::Stopping, "stopping"),
    (NodeStatus::Stopped, "stopped"),
];

/// An application's metrics: its own recorder and the handle that renders it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh recorder (not installed globally).
    pub fn new() -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(PROVIDER_LATENCY_SECONDS.into()),
                LATENCY_BUCKETS,
            )
            .expect("LATENCY_BUCKETS is not empty")
            .build_recorder();
        let handle = recorder.handle();
        let m = Metrics {
            recorder: Arc::new(recorder),
            handle,
        };
        m.with(|| {
            metrics::describe_gauge!(
                ACTOR_RESTARTS,
                Unit::Count,
                "Restarts of each supervised actor"
            );
            metrics::describe_gauge!(ACTORS, Unit::Count, "Actors by status");
            metrics::describe_gauge!(WORKERS_IN_FLIGHT, Unit::Count, "Live delivery workers");
            metrics::describe_gauge!(
                CIRCUIT_STATE,
                "The provider's circuit: 0 closed, 1 half-open, 2 open"
            );
            metrics::describe_gauge!(
                QUEUE_DEPTH,
                Unit::Count,
                "Ready messages by queue, as last sampled"
            );
            metrics::describe_gauge!(
                QUEUE_CONSUMERS,
                Unit::Count,
                "Consumers by queue, as last sampled"
            );
            metrics::describe_gauge!(
                QUEUE_DROPPED,
                Unit::Count,
                "Messages a bounded in-memory queue dropped (oldest first), as last sampled"
            );
            metrics::describe_gauge!(CONSUMPTION_PAUSED, "1 while an operator paused consumption");
        });
        m
    }

    fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(self.recorder.as_ref(), f)
    }

    /// The pipeline's counters and histogram, bound to this recorder, with a provider-call
    /// series per provider of the chain.
    pub fn pipeline_metrics(&self, providers: &[String]) -> PipelineMetrics {
        self.with(|| PipelineMetrics::register_for(providers))
    }

    /// Set the scrape-time gauges from cached state, then render everything.
    pub fn render(&self, tree: &Tree, pipeline: Option<&Pipeline>) -> String {
        let snap = tree.snapshot();
        self.with(|| {
            let mut by_status = [0u64; STATUSES.len()];
            let mut nodes: Vec<_> = snap.roots.iter().collect();
            while let Some(n) = nodes.pop() {
                nodes.extend(n.children.iter());
                if let Some(i) = STATUSES.iter().position(|(s, _)| *s == n.status) {
                    by_status[i] += 1;
                }
                // Temporary children (dynamic delivery workers, demo jobs) come and go by the
                // thousand and never restart: no series of their own.
                if n.restart != Restart::Temporary {
                    metrics::gauge!(ACTOR_RESTARTS, "path" => n.path.clone())
                        .set(n.restarts as f64);
                }
            }
            for ((_, name), count) in STATUSES.iter().zip(by_status) {
                metrics::gauge!(ACTORS, "status" => *name).set(count as f64);
            }
            let Some(p) = pipeline else {
                return;
            };
            let in_flight = snap
                .find(&p.path("broker/workers"))
                .map_or(0, |n| n.children.len());
            metrics::gauge!(WORKERS_IN_FLIGHT).set(in_flight as f64);
            for (i, v) in p.ops.providers().into_iter().enumerate() {
                if let Some(c) = v.circuit {
                    let role = if i == 0 { "primary" } else { "fallback" };
                    metrics::gauge!(CIRCUIT_STATE, "provider" => v.name, "role" => role)
                        .set(f64::from(circuit_level(&c, p.clock.now_ms())));
                }
            }
            for (queue, s) in p.ops.queues() {
                metrics::gauge!(QUEUE_DEPTH, "queue" => queue.clone()).set(f64::from(s.ready));
                metrics::gauge!(QUEUE_CONSUMERS, "queue" => queue.clone())
                    .set(f64::from(s.consumers));
                metrics::gauge!(QUEUE_DROPPED, "queue" => queue).set(s.dropped as f64);
            }
            metrics::gauge!(CONSUMPTION_PAUSED).set(if p.ops.consumption_paused() {
                1.0
            } else {
                0.0
            });
        });
        self.handle.render()
    }
}
