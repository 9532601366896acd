//! `TrendsWorker`: the last minutes of the pipeline, for the console's charts.
//!
//! Every `[trends] sample_ms` it reads what the pipeline already counts (the outcome tallies
//! beside the Prometheus counters, the provider calls and their latency, the cached queue
//! depths, the tree's restart counts) and keeps one [`TrendSample`] per interval for the last
//! `window_ms` in a bounded ring. The ring is published to `Pipeline::ops` after each sample,
//! so `GET /trends` reads it without messaging this actor. Lost with the process: trends are
//! a view of the present, `/metrics` is the record.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};

use crate::pipeline::Pipeline;
use crate::pipeline::ops::{Tallies, TallyReading, TrendSample, Trends};

/// `[trends]`: what the console's charts show.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrendsConfig {
    /// One sample per this many milliseconds.
    pub sample_ms: u64,
    /// Keep the samples of this long.
    pub window_ms: u64,
}

impl Default for TrendsConfig {
    fn default() -> Self {
        TrendsConfig {
            sample_ms: 5_000,
            window_ms: 900_000,
        }
    }
}

impl TrendsConfig {
    /// Samples the ring holds (at least 2, at most 10,000).
    pub fn capacity(&self) -> usize {
        (self.window_ms / self.sample_ms.max(1)).clamp(2, 10_000) as usize
    }
}

/// The sample of the interval from `before` to `now` (totals read then). Pure.
pub fn sample_between(
    before: &TallyReading,
    now: &TallyReading,
    restarts: (u64, u64),
    at_ms: i64,
    interval_ms: u64,
    queues: BTreeMap<String, u32>,
) -> TrendSample {
    let outcomes = Tallies::OUTCOMES
        .iter()
        .enumerate()
        .map(|(i, name)| (*name, now.outcomes[i].saturating_sub(before.outcomes[i])))
        .collect();
    let calls = now.calls.saturating_sub(before.calls);
    let latency_us = now.latency_us.saturating_sub(before.latency_us);
    TrendSample {
        at_ms,
        interval_ms,
        outcomes,
        calls,
        latency_ms: (calls > 0).then(|| latency_us as f64 / calls as f64 / 1_000.0),
        queues,
        restarts: restarts.1.saturating_sub(restarts.0),
    }
}

/// Add `s`, dropping the oldest beyond `capacity`.
pub fn push(ring: &mut VecDeque<TrendSample>, s: TrendSample, capacity: usize) {
    ring.push_back(s);
    while ring.len() > capacity {
        ring.pop_front();
    }
}

/// Messages of [`TrendsWorker`].
#[derive(Debug)]
pub enum TrendsMessage {
    /// Internal: take a sample.
    #[doc(hidden)]
    Tick,
}

/// The trends actor.
#[derive(Debug, Clone, Copy)]
pub struct TrendsWorker;

/// State of [`TrendsWorker`].
#[derive(Debug)]
pub struct TrendsState {
    p: Pipeline,
    last: TallyReading,
    last_restarts: u64,
    last_at_ms: i64,
    trends: Trends,
}

/// Restarts counted in the tree now.
fn restarts(p: &Pipeline) -> u64 {
    p.tree
        .snapshot()
        .roots
        .iter()
        .flat_map(|r| r.walk())
        .map(|n| n.restarts)
        .sum()
}

impl Actor for TrendsWorker {
    type Msg = TrendsMessage;
    type State = TrendsState;
    type Arguments = Pipeline;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        p: Pipeline,
    ) -> Result<Self::State, ActorProcessingErr> {
        let c = p.config.trends.clone();
        myself.send_interval(Duration::from_millis(c.sample_ms.max(100)), || {
            TrendsMessage::Tick
        });
        // A restarted worker goes on from the published ring.
        let mut trends = (*p.ops.trends()).clone();
        trends.sample_ms = c.sample_ms;
        trends.window_ms = c.window_ms;
        Ok(TrendsState {
            last: p.ops.metrics.tallies.read(),
            last_restarts: restarts(&p),
            last_at_ms: p.clock.now_ms(),
            trends,
            p,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let TrendsMessage::Tick = msg;
        let p = &state.p;
        let now = p.ops.metrics.tallies.read();
        let restarts_now = restarts(p);
        let at_ms = p.clock.now_ms();
        let queues = p
            .ops
            .queues()
            .into_iter()
            .map(|(q, s)| (q, s.ready))
            .collect();
        let s = sample_between(
            &state.last,
            &now,
            (state.last_restarts, restarts_now),
            at_ms,
            (at_ms - state.last_at_ms).max(0) as u64,
            queues,
        );
        push(&mut state.trends.samples, s, p.config.trends.capacity());
        p.ops.set_trends(Arc::new(state.trends.clone()));
        state.last = now;
        state.last_restarts = restarts_now;
        state.last_at_ms = at_ms;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(outcomes: [u64; 6], calls: u64, latency_us: u64) -> TallyReading {
        TallyReading {
            outcomes,
            calls,
            latency_us,
        }
    }

    #[test]
    fn a_sample_is_the_difference_of_two_readings() {
        let a = reading([10, 1, 0, 0, 0, 2], 11, 110_000);
        let b = reading([25, 3, 1, 0, 0, 2], 29, 290_000 + 110_000);
        let s = sample_between(&a, &b, (4, 6), 1_000, 5_000, BTreeMap::new());
        assert_eq!(s.outcomes["sent"], 15);
        assert_eq!(s.outcomes["retry"], 2);
        assert_eq!(s.outcomes["failed"], 1);
        assert_eq!(s.outcomes["invalid"], 0);
        assert_eq!(s.calls, 18);
        assert_eq!(s.latency_ms, Some(290_000.0 / 18.0 / 1_000.0));
        assert_eq!(s.restarts, 2);
        let idle = sample_between(&b, &b, (6, 6), 2_000, 5_000, BTreeMap::new());
        assert_eq!(idle.latency_ms, None);
        assert_eq!(idle.calls, 0);
    }

    #[test]
    fn the_ring_keeps_the_window() {
        let c = TrendsConfig {
            sample_ms: 5_000,
            window_ms: 15_000,
        };
        assert_eq!(c.capacity(), 3);
        let mut ring = VecDeque::new();
        let r = TallyReading::default();
        for at in 0..5 {
            push(
                &mut ring,
                sample_between(&r, &r, (0, 0), at, 5_000, BTreeMap::new()),
                c.capacity(),
            );
        }
        let kept: Vec<i64> = ring.iter().map(|s| s.at_ms).collect();
        assert_eq!(kept, [2, 3, 4]);
        assert_eq!(TrendsConfig::default().capacity(), 180);
    }
}
