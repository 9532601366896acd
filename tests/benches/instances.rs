//! Throughput of 1 and of 3 drover processes (the real binary) on one RabbitMQ vhost and one
//! PostgreSQL schema, with a latency-bound provider (a local Twilio-style server answering
//! after 200 ms): how far adding instances scales a deployment whose bottleneck is the
//! provider's latency, not drover. Each round publishes the load first, starts the instances
//! and times from the first `sent` to the last.
//!
//! `cargo bench --bench instances` (needs RabbitMQ and PostgreSQL, as the tests do: run
//! `tests/run.sh` once). `DROVER_BENCH_MESSAGES` (default 3,000), `DROVER_BENCH_ROUNDS`
//! (default 3), `DROVER_BENCH_LATENCY_MS` (default 200), `DROVER_BENCH_PREFETCH` (default 16).

#[path = "../support/mod.rs"]
mod support;

use std::time::Duration;

use drover_actors::store::MessageStatus;
use support::*;
use tokio::time::Instant;
use uuid::Uuid;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Messages per second of `instances` processes sending `n` messages.
async fn round(instances: usize, n: usize, latency_ms: u64, prefetch: u16) -> f64 {
    let mut env = TestEnv::in_own_vhost().await;
    env.provider.set_latency(latency_ms, latency_ms);
    env.config.broker.prefetch = prefetch;
    let store = env.store().await;
    let publisher = env.publisher().await;
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    publisher.publish_load(&ids).await;
    let mut children: Vec<_> = (0..instances)
        .map(|i| spawn_instance(&env, &format!("-bench-{i}")))
        .collect();
    let limit = Duration::from_secs(600);
    let first = wait_counts(&store, "the first message sent", limit, |c| {
        count(c, MessageStatus::Sent) > 0
    })
    .await;
    let t0 = Instant::now();
    let sent0 = count(&first, MessageStatus::Sent);
    wait_counts(&store, "every message sent", limit, |c| {
        count(c, MessageStatus::Sent) == n as i64
    })
    .await;
    let rate = (n as i64 - sent0) as f64 / t0.elapsed().as_secs_f64();
    for (child, dir) in &mut children {
        let _ = child.start_kill();
        let _ = child.wait().await;
        let _ = std::fs::remove_dir_all(dir);
    }
    publisher.close().await;
    env.cleanup().await;
    rate
}

fn median_range(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing: run only when
    // asked to bench.
    if !std::env::args().any(|a| a == "--bench") {
        println!("instances: run with `cargo bench --bench instances`");
        return;
    }
    let n = knob("DROVER_BENCH_MESSAGES", 3_000) as usize;
    let rounds = knob("DROVER_BENCH_ROUNDS", 3).max(1) as usize;
    let latency = knob("DROVER_BENCH_LATENCY_MS", 200);
    let prefetch = knob("DROVER_BENCH_PREFETCH", 16) as u16;
    println!(
        "instances: {n} messages, provider latency {latency} ms, prefetch {prefetch}, {rounds} rounds"
    );
    let (mut one, mut three, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for r in 1..=rounds {
        let a = round(1, n, latency, prefetch).await;
        let b = round(3, n, latency, prefetch).await;
        println!(
            "round {r}: 1 instance {a:.0} msgs/s, 3 instances {b:.0} msgs/s, ratio {:.2}",
            b / a
        );
        one.push(a);
        three.push(b);
        ratios.push(b / a);
    }
    let (m1, lo1, hi1) = median_range(&one);
    let (m3, lo3, hi3) = median_range(&three);
    let (mr, lor, hir) = median_range(&ratios);
    // The bound: each instance keeps `prefetch` calls in flight, each taking `latency`.
    let bound = f64::from(prefetch) * 1_000.0 / latency as f64;
    println!(
        "instances: 1 instance {m1:.0} msgs/s median ({lo1:.0}-{hi1:.0}), 3 instances {m3:.0} \
         msgs/s median ({lo3:.0}-{hi3:.0}); ratio {mr:.2} median ({lor:.2}-{hir:.2}); the \
         latency bound is {bound:.0} msgs/s per instance"
    );
}
