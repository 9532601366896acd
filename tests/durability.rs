//! Durability: RabbitMQ itself killed (SIGKILL of the node's VM, as a crash would) and started
//! again while messages are queued and in flight. A node of the test's own (see
//! [`support::PrivateRabbit`]), so the shared broker every other test uses is never touched.
//! A regression to transient messages or non-durable queues loses the queued messages here.

mod support;

use std::time::Duration;

use drover_actors::store::MessageStatus;
use support::{
    PrivateRabbit, TestEnv, TestPublisher, assert_all_sent_once_but_cut_off, count, wait_counts,
    wait_mid_load,
};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rabbitmq_crash_and_restart_with_messages_queued_and_in_flight_loses_nothing() {
    let rabbit = PrivateRabbit::start().await;
    let mut env = TestEnv::new().await;
    env.config.broker.url = rabbit.url();
    // The node takes several seconds to come back: a backoff that keeps the restarts within
    // the supervisors' intensity meanwhile (as production's 30 s cap does).
    env.config.supervision.backoff.max_ms = 4_000;
    env.provider.set_latency(200, 400);
    let prefetch = usize::from(env.config.broker.prefetch);
    let app = env.start().await;
    let broker = env.broker("drover-test-durability").await;
    let publisher = TestPublisher {
        publisher: broker.publisher().await.expect("a publisher"),
        broker,
    };
    // 1,000 at prefetch 32 and 200-400 ms a call take about 9 s; the kill follows the first
    // 100. Published concurrently: one confirm at a time (a disk sync each on the node), the
    // load was consumed as fast as it was published and 400 were all sent before the kill.
    const N: usize = 1_000;
    let ids: Vec<Uuid> = (0..N).map(|_| Uuid::new_v4()).collect();
    publisher.publish_load(&ids).await;
    publisher.close().await;
    let store = env.store().await;
    wait_mid_load(&store, N).await;
    rabbit.kill().await;
    let at_stop = store.counts_by_status().await.unwrap();
    let sent_at_stop = count(&at_stop, MessageStatus::Sent);
    // Mid-load: more than a prefetch window still queued on the broker's disk.
    assert!(
        (sent_at_stop as usize) + prefetch < N,
        "the stop came mid-load: {at_stop:?}"
    );
    rabbit.boot().await;
    wait_counts(
        &store,
        "every message sent after the restart",
        Duration::from_secs(120),
        |c| count(c, MessageStatus::Sent) == N as i64,
    )
    .await;
    let duplicates = assert_all_sent_once_but_cut_off(&store, &env.provider, &ids)
        .await
        .duplicates;
    let restarts = app
        .tree
        .snapshot()
        .find("root/broker/connection")
        .map_or(0, |n| n.restarts);
    println!(
        "rabbitmq killed and restarted: {sent_at_stop}/{N} sent at the kill, all {N} sent after it, \
         {duplicates} sent twice, broker connection restarted {restarts} times"
    );
    assert!(restarts >= 1, "the connection was lost and re-made");
    app.shutdown().await.unwrap();
    env.cleanup().await;
    drop(rabbit);
}
