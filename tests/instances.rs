//! Several drover processes (the real binary) on one RabbitMQ vhost and one PostgreSQL schema,
//! as users scale it out: they share the work queue, and a SIGKILL of one loses nothing; its
//! in-flight messages are delivered by the others, at most those sent twice.

mod support;

use std::time::Duration;

use drover_actors::store::MessageStatus;
use support::*;
use tokio::time::Instant;
use uuid::Uuid;

const INSTANCES: usize = 3;
const N: usize = 3_000;
const PREFETCH: u16 = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_share_the_load_and_a_sigkill_of_one_loses_nothing() {
    let mut env = TestEnv::in_own_vhost().await;
    // Latency-bound, as a real provider is: 200 ms a call, so 3 instances at prefetch 16 send
    // about 240 a second and the load lasts long enough for the kill to land mid-way.
    env.provider.set_latency(200, 200);
    env.config.broker.prefetch = PREFETCH;
    let store = env.store().await;
    let publisher = env.publisher().await;
    let ids: Vec<Uuid> = (0..N).map(|_| Uuid::new_v4()).collect();
    let mut children: Vec<_> = (0..INSTANCES)
        .map(|i| spawn_instance(&env, &format!("-{i}")))
        .collect();
    // All three consume before the load starts.
    let monitor = env.broker("drover-test-monitor").await;
    let queue = env.config.broker.work_queue.clone();
    wait_for(
        "3 consumers on the work queue",
        Duration::from_secs(60),
        || async {
            match monitor.queue_stats(&queue).await {
                Ok(s) if s.consumers as usize == INSTANCES => Ok(()),
                Ok(s) => Err(format!("{} consumers", s.consumers)),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    let started = Instant::now();
    publisher.publish_load(&ids).await;
    let at_kill = wait_counts(
        &store,
        "a third of the load sent",
        Duration::from_secs(120),
        |c| count(c, MessageStatus::Sent) >= (N / 3) as i64,
    )
    .await;
    let victim = &mut children[1].0;
    victim.start_kill().expect("SIGKILL");
    let _ = victim.wait().await;
    let sent_at_kill = count(&at_kill, MessageStatus::Sent);
    wait_counts(
        &store,
        "every message sent",
        Duration::from_secs(180),
        |c| count(c, MessageStatus::Sent) == N as i64,
    )
    .await;
    let took = started.elapsed();
    let tally = assert_all_sent_once_but_cut_off(&store, &env.provider, &ids).await;
    println!(
        "{INSTANCES} instances, {N} messages at 200 ms a call, prefetch {PREFETCH}: one SIGKILLed \
         at {sent_at_kill} sent; all sent in {took:.1?}, {} sent twice, {} attempts cut off",
        tally.duplicates, tally.cut_off
    );
    assert!(
        tally.duplicates <= usize::from(PREFETCH),
        "{} sent twice: more than the killed instance had in flight (at most {PREFETCH})",
        tally.duplicates
    );
    for (child, dir) in &mut children {
        let _ = child.start_kill();
        let _ = child.wait().await;
        let _ = std::fs::remove_dir_all(dir);
    }
    publisher.close().await;
    let _ = monitor.close().await;
    env.cleanup().await;
}
