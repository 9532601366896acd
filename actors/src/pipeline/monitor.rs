//! `MonitorWorker`: watches the work queue for a backlog, and keeps the queues' depths that
//! `/metrics` and the probes read (a scrape never queries the broker itself).
//!
//! Every `queue_sample_ms` (`http.queue_sample_ms`) it caches the three queues' counters in
//! `Pipeline::ops`; a failed sample keeps the previous values. Both timers live in this one
//! supervised actor, so a sampler that hangs or dies is restarted like any other child.
//!
//! Every `[alerts] sample_ms` it samples the work queue's depth and consumers (the cached
//! sample in `Pipeline::ops` when it is fresh, else `queue_stats` from the broker) and the
//! deliveries this service consumed, keeps the samples of the last `backlog_window_ms`, and
//! raises a `backlog` alert when [`detect_backlog`] says so: over the whole window the queue
//! kept growing (publishing outpaces consumption), or it held messages with no consumer.

use std::collections::VecDeque;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::broker::Route;
use crate::pipeline::alerts::{Alert, AlertKind, raise};
use crate::pipeline::broker::connection::broker_of;
use crate::pipeline::ops::QueueSample;
use crate::pipeline::{Pipeline, PipelineError};

/// One sample of the work queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub at_ms: i64,
    /// Messages ready in the queue.
    pub ready: u32,
    /// Consumers on the queue.
    pub consumers: u32,
    /// Deliveries this service consumed so far (a counter).
    pub consumed: u64,
}

/// Why the queue is backed up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backlog {
    /// Depth grew across the window, every sample above the first: publishing outpaces
    /// consumption.
    Growing,
    /// Messages waiting and no consumer, all along the window.
    NoConsumer,
}

/// The backlog decision over a window of samples (oldest first). Decides only once the
/// samples span at least `window_ms`.
pub fn detect_backlog(samples: &[Sample], window_ms: u64) -> Option<Backlog> {
    let (first, last) = (samples.first()?, samples.last()?);
    if samples.len() < 2 || last.at_ms - first.at_ms < window_ms as i64 {
        return None;
    }
    if samples.iter().all(|s| s.consumers == 0 && s.ready > 0) {
        return Some(Backlog::NoConsumer);
    }
    // Publish rate = (Δready + Δconsumed) / Δt > consumption rate = Δconsumed / Δt
    // exactly when Δready > 0.
    let grew = last.ready > first.ready;
    let consumed = last.consumed.saturating_sub(first.consumed) as i64;
    let published = (last.ready as i64 - first.ready as i64) + consumed;
    if grew && published > consumed && samples[1..].iter().all(|s| s.ready > first.ready) {
        return Some(Backlog::Growing);
    }
    None
}

/// Add `s` to the window, dropping samples no longer needed to span `window_ms`.
pub fn push_sample(window: &mut VecDeque<Sample>, s: Sample, window_ms: u64) {
    window.push_back(s);
    while window.len() > 2 && s.at_ms - window[1].at_ms >= window_ms as i64 {
        window.pop_front();
    }
}

/// Messages of [`MonitorWorker`].
#[derive(Debug)]
pub enum MonitorMessage {
    /// Internal: take a backlog sample.
    #[doc(hidden)]
    Tick,
    /// Internal: cache the queues' depths.
    #[doc(hidden)]
    SampleQueues,
}

/// The monitor actor.
#[derive(Debug, Clone, Copy)]
pub struct MonitorWorker;

/// State of [`MonitorWorker`].
#[derive(Debug)]
pub struct MonitorState {
    p: Pipeline,
    window: VecDeque<Sample>,
}

async fn sample(p: &Pipeline, every_ms: u64) -> Result<Sample, PipelineError> {
    let queue = p.config.broker.queue(Route::Work);
    let now = p.clock.now_ms();
    let consumed = p.ops.consumed();
    let cached = p.ops.queues().get(queue).copied();
    if let Some(c) = cached.filter(|c| now - c.at_ms < every_ms as i64) {
        return Ok(Sample {
            at_ms: now,
            ready: c.ready,
            consumers: c.consumers,
            consumed,
        });
    }
    let stats = broker_of(p).await?.queue_stats(queue).await?;
    Ok(Sample {
        at_ms: now,
        ready: stats.ready,
        consumers: stats.consumers,
        consumed,
    })
}

impl Actor for MonitorWorker {
    type Msg = MonitorMessage;
    type State = MonitorState;
    type Arguments = Pipeline;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        p: Pipeline,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_message(MonitorMessage::SampleQueues)?;
        myself.send_message(MonitorMessage::Tick)?;
        Ok(MonitorState {
            p,
            window: VecDeque::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MonitorMessage::Tick => backlog_tick(&myself, state).await,
            MonitorMessage::SampleQueues => {
                let every = Duration::from_millis(state.p.config.queue_sample_ms.max(100));
                let bound = every.max(Duration::from_secs(5));
                match tokio::time::timeout(bound, sample_queues(&state.p)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "queue depth not sampled"),
                    Err(_) => tracing::debug!("queue depth sample timed out"),
                }
                myself.send_after(every, || MonitorMessage::SampleQueues);
            }
        }
        Ok(())
    }
}

/// One backlog sample and its verdict; schedules the next.
async fn backlog_tick(myself: &ActorRef<MonitorMessage>, state: &mut MonitorState) {
    let c = &state.p.config.alerts;
    let (every_ms, window_ms) = (c.sample_ms.max(10), c.backlog_window_ms);
    let bound = Duration::from_millis(every_ms).max(Duration::from_secs(5));
    match tokio::time::timeout(bound, sample(&state.p, every_ms)).await {
        Ok(Ok(s)) => {
            push_sample(&mut state.window, s, window_ms);
            let samples: Vec<Sample> = state.window.iter().copied().collect();
            if let Some(why) = detect_backlog(&samples, window_ms) {
                let (first, last) = (samples[0], samples[samples.len() - 1]);
                let summary = match why {
                    Backlog::Growing => format!(
                        "work queue backlog: {} -> {} messages over {} ms",
                        first.ready,
                        last.ready,
                        last.at_ms - first.at_ms
                    ),
                    Backlog::NoConsumer => format!(
                        "work queue holds {} messages and has no consumer",
                        last.ready
                    ),
                };
                raise(
                    &state.p,
                    Alert {
                        kind: AlertKind::Backlog,
                        key: "backlog".into(),
                        summary,
                        details: serde_json::json!({
                            "reason": format!("{why:?}"),
                            "first_ready": first.ready,
                            "last_ready": last.ready,
                            "consumers": last.consumers,
                            "consumed_in_window": last.consumed.saturating_sub(first.consumed),
                            "window_ms": last.at_ms - first.at_ms,
                        }),
                    },
                );
            }
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "work queue not sampled"),
        Err(_) => tracing::debug!("work queue sample timed out"),
    }
    myself.send_after(Duration::from_millis(every_ms), || MonitorMessage::Tick);
}

/// Sample the three queues' counters into the cache (the monitor does this every
/// `queue_sample_ms`; readers never do).
pub async fn sample_queues(p: &Pipeline) -> Result<(), PipelineError> {
    let broker = broker_of(p).await?;
    for route in Route::ALL {
        let queue = p.config.broker.queue(route);
        let stats = broker.queue_stats(queue).await?;
        p.ops.set_queue(
            queue,
            QueueSample {
                ready: stats.ready,
                consumers: stats.consumers,
                dropped: stats.dropped,
                at_ms: p.clock.now_ms(),
            },
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (at_ms, ready, consumers, consumed)
    type Row = (i64, u32, u32, u64);

    fn run(seq: &[Row], window_ms: u64) -> Option<Backlog> {
        let mut w = VecDeque::new();
        let mut verdict = None;
        for &(at_ms, ready, consumers, consumed) in seq {
            push_sample(
                &mut w,
                Sample {
                    at_ms,
                    ready,
                    consumers,
                    consumed,
                },
                window_ms,
            );
            let s: Vec<Sample> = w.iter().copied().collect();
            verdict = detect_backlog(&s, window_ms);
        }
        verdict
    }

    #[test]
    fn backlog_table() {
        use Backlog::*;
        let table: &[(&str, &[Row], Option<Backlog>)] = &[
            ("empty", &[], None),
            ("one sample", &[(0, 100, 0, 0)], None),
            (
                "growing but window not yet spanned",
                &[(0, 1, 1, 0), (100, 5, 1, 0), (200, 9, 1, 0)],
                None,
            ),
            (
                "growing over the window",
                &[
                    (0, 1, 1, 0),
                    (100, 5, 1, 3),
                    (200, 9, 1, 6),
                    (300, 12, 1, 9),
                ],
                Some(Growing),
            ),
            (
                "growing with a dip still above the first",
                &[
                    (0, 1, 1, 0),
                    (100, 5, 1, 3),
                    (200, 2, 1, 9),
                    (300, 12, 1, 9),
                ],
                Some(Growing),
            ),
            (
                "dips back to the first",
                &[
                    (0, 5, 1, 0),
                    (100, 9, 1, 3),
                    (200, 5, 1, 9),
                    (300, 12, 1, 9),
                ],
                None,
            ),
            (
                "flat",
                &[(0, 5, 1, 0), (100, 5, 1, 3), (300, 5, 1, 9)],
                None,
            ),
            (
                "draining",
                &[(0, 9, 1, 0), (150, 5, 1, 3), (300, 1, 1, 9)],
                None,
            ),
            (
                "messages and no consumer all along",
                &[(0, 3, 0, 0), (150, 3, 0, 0), (300, 3, 0, 0)],
                Some(NoConsumer),
            ),
            (
                "no consumer but empty",
                &[(0, 0, 0, 0), (150, 0, 0, 0), (300, 0, 0, 0)],
                None,
            ),
            (
                "consumer came back within the window",
                &[(0, 3, 0, 0), (150, 3, 1, 0), (300, 3, 0, 0)],
                None,
            ),
            (
                "old growth slid out of the window",
                &[
                    (0, 1, 1, 0),
                    (100, 5, 1, 0),
                    (200, 9, 1, 0),
                    (300, 9, 1, 4),
                    (400, 9, 1, 8),
                    (500, 9, 1, 12),
                ],
                None,
            ),
        ];
        for (name, seq, want) in table {
            assert_eq!(run(seq, 300), *want, "{name}");
        }
    }
}
