//! The process lifecycle, on the real binary: the startup system check's exit code, and
//! SIGTERM during load losing nothing.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use drover_actors::store::MessageStatus;
use support::{
    LoadTally, TcpProxy, TestEnv, TestPublisher, alert_of, assert_all_sent_once_but_cut_off, count,
    recipient, socket_of, spawn_binary, wait_counts, wait_for, wait_mid_load, webhook,
};
use uuid::Uuid;

fn drover() -> tokio::process::Command {
    support::drover_binary()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_check_exits_3_naming_the_broker_when_rabbitmq_is_down() {
    let dir = std::env::temp_dir().join(format!("drover-lifecycle-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        drover()
            .current_dir(&dir)
            .env("DROVER_HTTP__ADDR", "127.0.0.1:0")
            .env("DROVER_BROKER__URL", "amqp://guest:guest@127.0.0.1:1/%2f")
            .env("DROVER_BROKER__CONNECT_TIMEOUT_MS", "1000")
            // The check now retries until its deadline: a short one keeps this test short.
            .env("DROVER_STARTUP__DEADLINE_MS", "3000")
            .env(
                "DROVER_STORE__URL",
                format!("sqlite://{}/drover.db?mode=rwc", dir.display()),
            )
            .output(),
    )
    .await
    .expect("drover must give up within its startup deadline")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "exit code 3 = dependency unavailable at start; stderr:\n{stderr}"
    );
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("drover: broker unavailable at start"),
        "one clear line naming the broker: {last}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Started before its broker is reachable (as compose or Kubernetes start everything at
/// once), drover waits within `startup.deadline_ms`: each refused try is logged, and once the
/// broker answers the check passes and the tree starts. RabbitMQ is "down" through a loopback
/// proxy that refuses connections until the test restores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_startup_check_waits_for_a_broker_that_comes_up_late() {
    let mut env = TestEnv::new().await;
    let proxy = TcpProxy::start(socket_of(&env.config.broker.url)).await;
    proxy.cut().await;
    env.config.broker.url = proxy.url_for(&env.config.broker.url);
    env.config.broker.connect_timeout_ms = 1_000;
    env.config.startup.deadline_ms = 30_000;
    let (mut child, dir) = spawn_binary(&env);
    let log = dir.join("drover.log");
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let logged = |what: &'static str| {
        wait_for(what, Duration::from_secs(20), move || async move {
            let text = read();
            if text.contains(what) {
                Ok(())
            } else {
                Err(tail(&text))
            }
        })
    };
    logged("startup check: broker not reachable yet").await;
    proxy.restore().await;
    logged("startup check passed").await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "still running once the broker came up"
    );
    let text = read();
    let refused = text
        .matches("startup check: broker not reachable yet")
        .count();
    println!("startup check: {refused} refused tries logged before the broker came up");
    child.start_kill().unwrap();
    let _ = child.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}

/// SIGTERM while messages are flowing: drover stops consuming, lets in-flight messages finish
/// (their outcome committed and acked), puts the rest back in the queue, stops the tree and
/// exits 0. A second instance then delivers what is left: every message ends sent, none
/// missing, each reaching the provider once (at most one more per attempt recorded as
/// interrupted/ambiguous).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_load_exits_0_and_loses_nothing() {
    let mut env = TestEnv::new().await;
    // Slow enough that the load outlasts the stop on a quiet machine: at prefetch 32 and
    // 200-400 ms a call, 1,000 messages take about 9 s, and the SIGTERM follows the first 100
    // (about 1 s in). At 5-20 ms all 400 were sometimes sent before the signal landed.
    env.provider.set_latency(200, 400);
    env.config.startup.check = true;
    let (mut child, dir) = spawn_binary(&env);
    let publisher = env.publisher().await;
    const N: usize = 1_000;
    let ids = publish_load(&publisher, N).await;
    let store = env.store().await;
    // Mid-load: some sent, not all.
    wait_mid_load(&store, N).await;
    let pid = child.id().expect("running").to_string();
    let kill = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("drover must stop within its grace period")
        .unwrap();
    let stderr = std::fs::read_to_string(dir.join("drover.log")).unwrap_or_default();
    assert_eq!(
        status.code(),
        Some(0),
        "graceful shutdown exits 0; stderr tail:\n{}",
        tail(&stderr)
    );
    let sent_at_stop = count(
        &store.counts_by_status().await.unwrap(),
        MessageStatus::Sent,
    );
    assert!(
        sent_at_stop < N as i64,
        "the stop came mid-load ({sent_at_stop}/{N} sent)"
    );
    // Nothing is left `sending`: in-flight messages finished or went back to the queue.
    let counts = store.counts_by_status().await.unwrap();
    assert_eq!(count(&counts, MessageStatus::Sending), 0, "{counts:?}");

    // A second instance delivers the rest.
    let app = env.start().await;
    wait_counts(
        &store,
        "every message sent",
        Duration::from_secs(120),
        |c| count(c, MessageStatus::Sent) == N as i64,
    )
    .await;
    let tally = env.provider.tally();
    let mut interrupted = 0usize;
    for id in &ids {
        let rec = store
            .get(*id)
            .await
            .unwrap()
            .expect("every published message is recorded");
        assert_eq!(rec.status, MessageStatus::Sent);
        interrupted += rec
            .history
            .iter()
            .filter(|a| a.error_class.as_deref() == Some("interrupted"))
            .count();
    }
    let calls: HashMap<String, usize> = tally
        .iter()
        .map(|(k, (calls, _))| (k.clone(), *calls))
        .collect();
    let duplicates: usize = ids
        .iter()
        .map(|id| {
            calls
                .get(&id.to_string())
                .copied()
                .unwrap_or(0)
                .saturating_sub(1)
        })
        .sum();
    println!(
        "sigterm mid-load: {sent_at_stop}/{N} sent at the stop, duplicates {duplicates}, interrupted attempts {interrupted}"
    );
    assert!(
        ids.iter()
            .all(|id| calls.get(&id.to_string()).copied().unwrap_or(0) >= 1)
    );
    assert!(
        duplicates <= interrupted,
        "a duplicate needs an interrupted attempt"
    );
    app.shutdown().await.unwrap();
    env.assert_work_queue_empty_after_shutdown().await;
    env.cleanup().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Publish `n` messages to distinct recipients; their ids.
async fn publish_load(publisher: &TestPublisher, n: usize) -> Vec<Uuid> {
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    publisher.publish_load(&ids).await;
    ids
}

fn tail(s: &str) -> String {
    support::tail(s, 15)
}

/// A dependency that stays down past the root's intensity, on the real binary: drover raises
/// `root_gave_up` (POSTed to the webhook) and exits 4, rather than limp. RabbitMQ is "down"
/// for this process only: it reaches it through a loopback proxy that the test cuts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_down_past_the_roots_intensity_exits_4_with_root_gave_up() {
    let mut env = TestEnv::new().await;
    let proxy = TcpProxy::start(socket_of(&env.config.broker.url)).await;
    env.config.broker.url = proxy.url_for(&env.config.broker.url);
    env.config.broker.connect_timeout_ms = 1_000;
    env.config.supervision.max_restarts = 2;
    env.config.supervision.period_ms = 60_000;
    env.config.supervision.backoff.min_ms = 20;
    env.config.supervision.backoff.max_ms = 100;
    let (hook, mut alerts) = webhook().await;
    env.config.alerts.webhook_url = Some(hook);
    env.config.alerts.retries = 1;
    env.config.alerts.retry_base_ms = 50;
    let (mut child, dir) = spawn_binary(&env);

    // Working first: a message goes through.
    let publisher = env.publisher().await;
    let id = Uuid::new_v4();
    publisher
        .publish_sms(id, &recipient(0), "before the outage", "corr-0")
        .await;
    let store = env.store().await;
    wait_counts(
        &store,
        "the first message sent",
        Duration::from_secs(60),
        |c| count(c, MessageStatus::Sent) == 1,
    )
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(1), child.wait())
            .await
            .is_err(),
        "drover runs"
    );

    proxy.cut().await;
    let status = tokio::time::timeout(Duration::from_secs(90), child.wait())
        .await
        .expect("drover must give up while the broker stays down")
        .unwrap();
    let stderr = std::fs::read_to_string(dir.join("drover.log")).unwrap_or_default();
    assert_eq!(
        status.code(),
        Some(4),
        "exit code 4 = the root supervisor gave up; stderr tail:\n{}",
        tail(&stderr)
    );
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("drover: "), "one closing line: {last}");
    let alert = alert_of(&mut alerts, "root_gave_up", Duration::from_secs(10)).await;
    assert_eq!(alert["key"], "gave_up:root", "{alert}");
    println!(
        "broker down: exit 4 after {} proxied connections; {last}",
        proxy.accepted.load(std::sync::atomic::Ordering::SeqCst)
    );
    publisher.close().await;
    env.cleanup().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGKILL of the binary mid-load, then a new instance: every message ends sent, none lost,
/// and a message reaches the provider more than once only where an attempt was cut off by the
/// kill (recorded `interrupted` or `ambiguous`), so never more than the deliveries in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_load_and_a_restart_lose_nothing() {
    let env = TestEnv::new().await;
    env.provider.set_latency(200, 400);
    let prefetch = usize::from(env.config.broker.prefetch);
    let (mut child, dir) = spawn_binary(&env);
    let publisher = env.publisher().await;
    const N: usize = 1_000;
    let ids = publish_load(&publisher, N).await;
    let store = env.store().await;
    wait_mid_load(&store, N).await;
    child.start_kill().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("SIGKILL ends it")
        .unwrap();
    assert_eq!(status.code(), None, "killed by a signal");
    let at_kill = store.counts_by_status().await.unwrap();
    let sent_at_kill = count(&at_kill, MessageStatus::Sent);
    let sending_at_kill = count(&at_kill, MessageStatus::Sending);
    assert!(
        sent_at_kill < N as i64,
        "the kill came mid-load: {at_kill:?}"
    );

    let app = env.start().await;
    wait_counts(
        &store,
        "every message sent",
        Duration::from_secs(120),
        |c| count(c, MessageStatus::Sent) == N as i64,
    )
    .await;
    let LoadTally {
        duplicates,
        cut_off,
    } = assert_all_sent_once_but_cut_off(&store, &env.provider, &ids).await;
    println!(
        "sigkill mid-load: {sent_at_kill}/{N} sent and {sending_at_kill} sending at the kill, \
         {cut_off} attempts cut off, {duplicates} sent twice"
    );
    assert!(
        duplicates <= prefetch,
        "{duplicates} duplicates, more than the {prefetch} deliveries in flight"
    );
    app.shutdown().await.unwrap();
    env.assert_work_queue_empty_after_shutdown().await;
    publisher.close().await;
    env.cleanup().await;
    let _ = std::fs::remove_dir_all(&dir);
}
