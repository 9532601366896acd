//! Broker conformance: the same test bodies run against the in-memory broker (`memory::*`) and
//! a real RabbitMQ (`rabbit::*`).
//!
//! RabbitMQ is reached at `DROVER_TEST_AMQP_URL` (default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`). If it is unreachable the `rabbit::*` tests FAIL
//! (they never skip). Every test uses its own exchange and queues (named with a fresh uuid), so
//! tests run in parallel and can be re-run; the topology is deleted when the test ends, even if
//! it fails. The forced-close test needs `rabbitmqctl` and closes only its own connection.
//!
//! Waits are bounded with `tokio::time::timeout`; nothing sleeps to synchronise, and "nothing
//! else is delivered" is shown by a sentinel published last arriving next, not by a quiet
//! window.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use drover_actors::broker::{
    Broker, BrokerConfig, BrokerError, Consumer, Delivery, MemoryBroker, Outgoing, Publisher,
    QueueStats, Route,
};
use tokio::time::timeout;

/// Bound for things that must happen (far below RabbitMQ's 30 min consumer timeout).
const WAIT: Duration = Duration::from_secs(10);

/// Bound for one `rabbitmqctl` invocation (the CLI boots an Erlang VM each time).
const RABBITMQCTL_TIMEOUT: Duration = Duration::from_secs(60);

const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn amqp_url() -> String {
    std::env::var("DROVER_TEST_AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.to_owned())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Memory,
    Rabbit,
}

/// One test's world: a backend and a unique topology. Dropping it deletes the topology.
struct Env {
    backend: Backend,
    memory: MemoryBroker,
    config: BrokerConfig,
    id: String,
}

impl Env {
    fn new(backend: Backend) -> Env {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let prefix = format!("drover-test-{id}");
        let config = BrokerConfig {
            url: match backend {
                Backend::Memory => "memory".to_owned(),
                Backend::Rabbit => amqp_url(),
            },
            exchange: prefix.clone(),
            work_queue: format!("{prefix}.outbound"),
            failed_queue: format!("{prefix}.failed"),
            invalid_queue: format!("{prefix}.invalid"),
            prefetch: 16,
            connect_timeout_ms: 5_000,
            confirm_timeout_ms: 5_000,
            ..BrokerConfig::default()
        };
        Env {
            backend,
            memory: MemoryBroker::new(),
            config,
            id,
        }
    }

    fn work(&self) -> &str {
        &self.config.work_queue
    }

    async fn connect(&self) -> Broker {
        self.connect_named(&format!("drover-test-{}", self.id))
            .await
    }

    async fn connect_named(&self, name: &str) -> Broker {
        match within(
            "connect",
            Broker::connect_named(&self.config, &self.memory, name),
        )
        .await
        {
            Ok(broker) => broker,
            Err(e) => panic!(
                "cannot connect to the {:?} test broker at {}: {e}\n\
                 These tests need a running RabbitMQ (set DROVER_TEST_AMQP_URL to use another \
                 one than {DEFAULT_AMQP_URL}); they fail rather than skip.",
                self.backend,
                self.config.redacted_url()
            ),
        }
    }

    /// Close the connection named `name` from the broker's side, like an operator would.
    async fn force_close(&self, name: &str) {
        match self.backend {
            Backend::Memory => self.memory.close_all_connections(),
            Backend::Rabbit => {
                rabbitmq_close_connection(name).await;
            }
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if self.backend != Backend::Rabbit {
            return;
        }
        // Delete this test's exchange and queues, also when the test failed. Runs on its own
        // thread and runtime since Drop cannot await.
        let config = self.config.clone();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(async move {
                let cleaned = timeout(WAIT, async {
                    let broker =
                        Broker::connect_named(&config, &MemoryBroker::new(), "drover-test-cleanup")
                            .await?;
                    broker.delete_topology().await?;
                    broker.close().await
                })
                .await;
                match cleaned {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => eprintln!("cleanup of {} failed: {e}", config.exchange),
                    Err(_) => eprintln!("cleanup of {} timed out", config.exchange),
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Run `rabbitmqctl args...` (bounded by [`RABBITMQCTL_TIMEOUT`]) and return its stdout.
async fn rabbitmqctl(args: &[&str]) -> String {
    let run = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .kill_on_drop(true)
        .output();
    let output = timeout(RABBITMQCTL_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| {
            panic!("rabbitmqctl {args:?} did not finish in {RABBITMQCTL_TIMEOUT:?}")
        })
        .unwrap_or_else(|e| panic!("cannot run rabbitmqctl {args:?}: {e}"));
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `rabbitmqctl close_connection` on the connection whose client properties carry `name`.
/// RabbitMQ may list a new connection a moment late: the listing is retried (bounded), and a
/// connection that never shows fails the test. Never `close_all_connections`: that would cut
/// the connections of every test running beside this one.
async fn rabbitmq_close_connection(name: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let pids = loop {
        // One line per connection: the pid (`<rabbit@host.N.M.K>`), a tab, the client
        // properties.
        let listing = rabbitmqctl(&[
            "list_connections",
            "pid",
            "client_properties",
            "--quiet",
            "--no-table-headers",
        ])
        .await;
        let pids: Vec<String> = listing
            .lines()
            .filter(|line| line.contains(name))
            .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
            .collect();
        if !pids.is_empty() {
            break pids;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "connection {name:?} never listed by rabbitmqctl list_connections"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for pid in pids {
        rabbitmqctl(&["close_connection", &pid, "test"]).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

async fn open_publisher(broker: &Broker) -> Publisher {
    within("open a publisher", broker.publisher())
        .await
        .expect("open a publisher")
}

async fn publish(publisher: &Publisher, route: Route, body: &str) {
    timeout(WAIT, publisher.publish(route, Outgoing::new(body)))
        .await
        .expect("publish did not return in time")
        .unwrap_or_else(|e| panic!("publish {body:?} on {route}: {e}"));
}

async fn open_consumer(broker: &Broker, queue: &str, prefetch: u16) -> Consumer {
    within(
        "open a consumer",
        broker.consumer(queue, prefetch, "conformance"),
    )
    .await
    .unwrap_or_else(|e| panic!("consume from {queue}: {e}"))
}

/// The next delivery, which must arrive within [`WAIT`].
async fn next(consumer: &mut Consumer) -> Delivery {
    match timeout(WAIT, consumer.next()).await {
        Ok(Some(Ok(delivery))) => delivery,
        Ok(Some(Err(e))) => panic!("consumer failed: {e}"),
        Ok(None) => panic!("consumer ended"),
        Err(_) => panic!("no delivery within {WAIT:?}"),
    }
}

/// `n` deliveries.
async fn next_n(consumer: &mut Consumer, n: usize) -> Vec<Delivery> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next(consumer).await);
    }
    out
}

/// Nothing else is delivered: a sentinel published to `route` now is the consumer's next
/// delivery. Anything unwanted (a redelivery, a requeued or duplicated message) would be
/// ahead of it in the queue, so this needs no quiet window that a late event could outlast.
async fn assert_only_sentinel_follows(
    publisher: &Publisher,
    route: Route,
    consumer: &mut Consumer,
) {
    let sentinel = format!("sentinel-{}", uuid::Uuid::new_v4().simple());
    publish(publisher, route, &sentinel).await;
    let mut d = next(consumer).await;
    assert_eq!(body(&d), sentinel, "a delivery came before the sentinel");
    d.ack().await.expect("ack the sentinel");
}

/// The consumer ends (`None` or an error) within [`WAIT`].
async fn assert_ends(consumer: &mut Consumer) {
    match timeout(WAIT, consumer.next()).await {
        Ok(None | Some(Err(_))) => {}
        Ok(Some(Ok(d))) => panic!("expected the consumer to end, got {d:?}"),
        Err(_) => panic!("consumer did not end within {WAIT:?}"),
    }
}

fn body(delivery: &Delivery) -> String {
    String::from_utf8_lossy(&delivery.body).into_owned()
}

fn sorted_bodies(deliveries: &[Delivery]) -> Vec<String> {
    let mut bodies: Vec<String> = deliveries.iter().map(body).collect();
    bodies.sort();
    bodies
}

/// Wait (bounded) until `queue`'s stats equal `want`.
async fn wait_stats(broker: &Broker, queue: &str, want: QueueStats) {
    let mut last = None;
    let reached = timeout(WAIT, async {
        let mut poll = tokio::time::interval(Duration::from_millis(25));
        loop {
            poll.tick().await;
            let stats = broker.queue_stats(queue).await.expect("queue_stats");
            if stats == want {
                return;
            }
            last = Some(stats);
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "stats of {queue} never became {want:?}; last {last:?}"
    );
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {WAIT:?}"))
}

// ---------------------------------------------------------------------------------------------
// The conformance bodies

async fn publish_consume_ack(env: Env) {
    let broker = env.connect().await;
    let publisher = open_publisher(&broker).await;
    publish(&publisher, Route::Work, "m1").await;

    let mut consumer1 = open_consumer(&broker, env.work(), 8).await;
    let mut d = next(&mut consumer1).await;
    assert_eq!(body(&d), "m1");
    assert!(!d.redelivered);
    assert!(!d.is_settled());
    d.ack().await.expect("ack");
    assert!(d.is_settled());
    assert!(
        matches!(d.ack().await, Err(BrokerError::AlreadySettled { .. })),
        "a second ack must fail"
    );
    drop(d);
    consumer1.close().await.expect("close consumer");

    // Had m1 not been acked, closing the consumer would have put it back in front of m2.
    publish(&publisher, Route::Work, "m2").await;
    let mut consumer2 = open_consumer(&broker, env.work(), 8).await;
    let mut d = next(&mut consumer2).await;
    assert_eq!(body(&d), "m2");
    d.ack().await.expect("ack");
    assert_only_sentinel_follows(&publisher, Route::Work, &mut consumer2).await;
    wait_stats(
        &broker,
        env.work(),
        QueueStats {
            ready: 0,
            consumers: 1,
            dropped: 0,
        },
    )
    .await;
    drop(consumer2);
    wait_stats(
        &broker,
        env.work(),
        QueueStats {
            ready: 0,
            consumers: 0,
            dropped: 0,
        },
    )
    .await;
    broker.close().await.expect("close");
}

async fn properties_round_trip(env: Env) {
    let broker = env.connect().await;
    let publisher = open_publisher(&broker).await;
    let headers: BTreeMap<String, String> = [
        ("tenant", "acme"),
        ("x-attempt", "3"),
        ("unicode", "héllo ✓"),
        ("empty", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let binary = vec![0_u8, 159, 146, 150, 255, b'\n'];
    let sent = Outgoing {
        body: binary.clone(),
        message_id: Some("msg-42".into()),
        correlation_id: Some("corr-7".into()),
        headers: headers.clone(),
    };
    within("publish", publisher.publish(Route::Work, sent))
        .await
        .expect("publish");
    publish(&publisher, Route::Work, "bare").await;

    let mut consumer = open_consumer(&broker, env.work(), 8).await;
    let mut d = next(&mut consumer).await;
    assert_eq!(d.body, binary);
    assert_eq!(d.message_id.as_deref(), Some("msg-42"));
    assert_eq!(d.correlation_id.as_deref(), Some("corr-7"));
    assert_eq!(d.headers, headers);
    assert_eq!(d.exchange, env.config.exchange);
    assert_eq!(d.routing_key, env.config.work_queue);
    assert!(!d.redelivered);
    d.ack().await.expect("ack");

    let mut d = next(&mut consumer).await;
    assert_eq!(body(&d), "bare");
    assert_eq!(d.message_id, None);
    assert_eq!(d.correlation_id, None);
    assert!(d.headers.is_empty());
    assert!(d.delivery_tag > 0);
    d.ack().await.expect("ack");

    // Ids longer than AMQP allows are rejected up front, not sent.
    let too_long = Outgoing::new("x").with_message_id("i".repeat(300));
    assert!(matches!(
        publisher.publish(Route::Work, too_long).await,
        Err(BrokerError::InvalidMessage(_))
    ));
    broker.close().await.expect("close");
}

async fn nack_requeue_redelivers(env: Env) {
    let broker = env.connect().await;
    let publisher = open_publisher(&broker).await;
    publish(&publisher, Route::Work, "a").await;
    publish(&publisher, Route::Work, "b").await;

    let mut consumer = open_consumer(&broker, env.work(), 1).await;
    let mut d = next(&mut consumer).await;
    assert_eq!(body(&d), "a");
    assert!(!d.redelivered);
    d.nack_requeue().await.expect("nack");
    assert!(d.is_settled());
    assert!(matches!(
        d.nack_requeue().await,
        Err(BrokerError::AlreadySettled { .. })
    ));

    // Back at the FRONT of the queue, marked redelivered.
    let mut again = next(&mut consumer).await;
    assert_eq!(body(&again), "a");
    assert!(again.redelivered);
    again.ack().await.expect("ack");

    let mut b = next(&mut consumer).await;
    assert_eq!(body(&b), "b");
    assert!(!b.redelivered);
    b.ack().await.expect("ack");
    assert_only_sentinel_follows(&publisher, Route::Work, &mut consumer).await;
    broker.close().await.expect("close");
}

async fn dropped_delivery_requeued_promptly(env: Env) {
    let broker = env.connect().await;
    let publisher = open_publisher(&broker).await;
    publish(&publisher, Route::Work, "x").await;
    let mut consumer = open_consumer(&broker, env.work(), 1).await;

    // 1. Its worker panics while holding it.
    let d = next(&mut consumer).await;
    assert!(!d.redelivered);
    let worker = tokio::spawn(async move {
        let _held = d;
        panic!("simulated worker panic (expected by this test)");
    });
    assert!(worker.await.expect_err("worker must panic").is_panic());
    let d = next(&mut consumer).await;
    assert_eq!(body(&d), "x");
    assert!(d.redelivered);

    // 2. Its worker is killed (the task aborted) while holding it.
    let worker = tokio::spawn(async move {
        let _held = d;
        std::future::pending::<()>().await;
    });
    worker.abort();
    assert!(worker.await.expect_err("worker was aborted").is_cancelled());
    let d = next(&mut consumer).await;
    assert_eq!(body(&d), "x");
    assert!(d.redelivered);

    // 3. Dropped on a thread without any tokio runtime.
    std::thread::spawn(move || drop(d))
        .join()
        .expect("drop thread");
    let mut d = next(&mut consumer).await;
    assert_eq!(body(&d), "x");
    assert!(d.redelivered);
    d.ack().await.expect("ack");
    assert_only_sentinel_follows(&publisher, Route::Work, &mut consumer).await;
    broker.close().await.expect("close");
}

async fn closed_consumer_requeues_unacked(env: Env) {
    let broker = env.connect().await;
    let publisher = open_publisher(&broker).await;
    for i in 0..3 {
        publish(&publisher, Route::Work, &format!("m{i}")).await;
    }
    let expected = vec!["m0".to_owned(), "m1".to_owned(), "m2".to_owned()];

    // Closed explicitly while holding three unacked deliveries.
    let mut c1 = open_consumer(&broker, env.work(), 10).await;
    let mut held1 = next_n(&mut c1, 3).await;
    assert_eq!(sorted_bodies(&held1), expected);
    assert!(held1.iter().all(|d| !d.redelivered));
    within("consumer close", c1.close()).await.expect("close");
    // Their channel is gone: they cannot be settled any more.
    let mut stale = held1.pop().expect("held");
    assert!(
        stale.ack().await.is_err(),
        "ack on a closed consumer must fail"
    );

    let mut c2 = open_consumer(&broker, env.work(), 10).await;
    let held2 = next_n(&mut c2, 3).await;
    assert_eq!(sorted_bodies(&held2), expected);
    assert!(held2.iter().all(|d| d.redelivered));

    // Dropped (not closed) while holding them.
    drop(c2);
    let mut c3 = open_consumer(&broker, env.work(), 10).await;
    let mut held3 = next_n(&mut c3, 3).await;
    assert_eq!(sorted_bodies(&held3), expected);
    assert!(held3.iter().all(|d| d.redelivered));
    for d in &mut held3 {
        d.ack().await.expect("ack");
    }
    // Dropping the stale deliveries now must not requeue anything.
    drop(held1);
    drop(held2);
    drop(stale);
    assert_only_sentinel_follows(&publisher, Route::Work, &mut c3).await;
    wait_stats(
        &broker,
        env.work(),
        QueueStats {
            ready: 0,
            consumers: 1,
            dropped: 0,
        },
    )
    .await;
    broker.close().await.expect("close");
}

async fn prefetch_respected(env: Env) {
    let broker = env.connect().await;
    let publisher = open_publisher(&broker).await;
    for i in 0..5 {
        publish(&publisher, Route::Work, &format!("m{i}")).await;
    }
    let mut consumer = open_consumer(&broker, env.work(), 2).await;
    let mut d0 = next(&mut consumer).await;
    let mut d1 = next(&mut consumer).await;
    assert_eq!((body(&d0), body(&d1)), ("m0".into(), "m1".into()));
    // The window is full: the other three wait in the queue (the broker's count).
    wait_stats(
        &broker,
        env.work(),
        QueueStats {
            ready: 3,
            consumers: 1,
            dropped: 0,
        },
    )
    .await;

    d0.ack().await.expect("ack");
    let mut d2 = next(&mut consumer).await;
    assert_eq!(body(&d2), "m2");
    wait_stats(
        &broker,
        env.work(),
        QueueStats {
            ready: 2,
            consumers: 1,
            dropped: 0,
        },
    )
    .await;

    d1.ack().await.expect("ack");
    d2.ack().await.expect("ack");
    let mut rest = next_n(&mut consumer, 2).await;
    assert_eq!(sorted_bodies(&rest), vec!["m3".to_owned(), "m4".to_owned()]);
    for d in &mut rest {
        d.ack().await.expect("ack");
    }
    assert_only_sentinel_follows(&publisher, Route::Work, &mut consumer).await;
    wait_stats(
        &broker,
        env.work(),
        QueueStats {
            ready: 0,
            consumers: 1,
            dropped: 0,
        },
    )
    .await;
    broker.close().await.expect("close");
}

async fn topology_declaration_idempotent(env: Env) {
    let first = env.connect().await;
    let second = env.connect().await;
    let publisher = open_publisher(&second).await;
    publish(&publisher, Route::Work, "kept").await;

    // A third connect (re-declaring) after the first went away keeps the queued message.
    first.close().await.expect("close");
    let third = env.connect().await;
    for route in Route::ALL {
        let want = QueueStats {
            ready: u32::from(route == Route::Work),
            consumers: 0,
            dropped: 0,
        };
        wait_stats(&third, env.config.queue(route), want).await;
    }
    let mut consumer = open_consumer(&third, env.work(), 4).await;
    let mut d = next(&mut consumer).await;
    assert_eq!(body(&d), "kept");
    d.ack().await.expect("ack");
    second.close().await.expect("close");
    third.close().await.expect("close");
}

async fn failed_and_invalid_routes(env: Env) {
    let broker = env.connect().await;
    let publisher = open_publisher(&broker).await;
    publish(&publisher, Route::Failed, "f").await;
    publish(&publisher, Route::Invalid, "i").await;
    publish(&publisher, Route::Work, "w").await;
    for route in Route::ALL {
        let queue = env.config.queue(route);
        wait_stats(
            &broker,
            queue,
            QueueStats {
                ready: 1,
                consumers: 0,
                dropped: 0,
            },
        )
        .await;
        let mut consumer = open_consumer(&broker, queue, 4).await;
        let mut d = next(&mut consumer).await;
        let want = match route {
            Route::Work => "w",
            Route::Failed => "f",
            Route::Invalid => "i",
        };
        assert_eq!(body(&d), want, "route {route}");
        assert_eq!(d.routing_key, queue);
        d.ack().await.expect("ack");
        assert_only_sentinel_follows(&publisher, route, &mut consumer).await;
    }
    broker.close().await.expect("close");
}

async fn queue_stats_counts(env: Env) {
    let broker = env.connect().await;
    let other = env.connect().await;
    let publisher = open_publisher(&broker).await;
    wait_stats(
        &broker,
        env.work(),
        QueueStats {
            ready: 0,
            consumers: 0,
            dropped: 0,
        },
    )
    .await;
    for i in 0..3 {
        publish(&publisher, Route::Work, &format!("m{i}")).await;
    }
    wait_stats(
        &broker,
        env.work(),
        QueueStats {
            ready: 3,
            consumers: 0,
            dropped: 0,
        },
    )
    .await;

    // Prefetched (even if not yet taken with next()) messages are no longer "ready".
    let c1 = open_consumer(&broker, env.work(), 1).await;
    wait_stats(
        &broker,
        env.work(),
        QueueStats {
            ready: 2,
            consumers: 1,
            dropped: 0,
        },
    )
    .await;
    let c2 = open_consumer(&other, env.work(), 1).await;
    wait_stats(
        &broker,
        env.work(),
        QueueStats {
            ready: 1,
            consumers: 2,
            dropped: 0,
        },
    )
    .await;
    drop(c1);
    wait_stats(
        &broker,
        env.work(),
        QueueStats {
            ready: 2,
            consumers: 1,
            dropped: 0,
        },
    )
    .await;
    c2.close().await.expect("close");
    wait_stats(
        &broker,
        env.work(),
        QueueStats {
            ready: 3,
            consumers: 0,
            dropped: 0,
        },
    )
    .await;

    let missing = format!("{}.missing", env.config.exchange);
    match broker.queue_stats(&missing).await {
        Err(BrokerError::QueueNotFound(q)) => assert_eq!(q, missing),
        other => panic!("expected QueueNotFound, got {other:?}"),
    }
    // The failed lookup does not hurt the connection.
    assert!(broker.is_open());
    wait_stats(
        &broker,
        env.work(),
        QueueStats {
            ready: 3,
            consumers: 0,
            dropped: 0,
        },
    )
    .await;
    assert!(matches!(
        broker.consumer(&missing, 1, "").await,
        Err(BrokerError::QueueNotFound(_))
    ));
    broker.close().await.expect("close");
    other.close().await.expect("close");
}

/// Shared by the application-close and forced-close tests: after `close` runs, everything made
/// from the connection fails, and a fresh connection gets the unacked message back.
async fn connection_loss(env: Env, forced: bool) {
    let name = format!("drover-test-conn-{}", uuid::Uuid::new_v4().simple());
    let broker = env.connect_named(&name).await;
    let publisher = open_publisher(&broker).await;
    publish(&publisher, Route::Work, "unacked").await;
    let mut consumer = open_consumer(&broker, env.work(), 4).await;
    let mut held = next(&mut consumer).await;
    assert_eq!(body(&held), "unacked");
    assert!(broker.is_open());

    if forced {
        env.force_close(&name).await;
    } else {
        within("close", broker.close()).await.expect("close");
    }

    let reason = within("broker.closed()", broker.closed()).await;
    assert!(reason.is_connection_lost(), "{reason:?}");
    assert!(!broker.is_open());
    assert_ends(&mut consumer).await;
    within("publisher.closed()", publisher.closed()).await;
    assert!(
        within(
            "publish",
            publisher.publish(Route::Work, Outgoing::new("late"))
        )
        .await
        .is_err(),
        "publishing on a lost connection must fail"
    );
    assert!(
        within("ack on a lost connection", held.ack())
            .await
            .is_err(),
        "ack on a lost connection must fail"
    );
    assert!(
        within("a publisher on a lost connection", broker.publisher())
            .await
            .is_err()
    );
    assert!(
        within(
            "a consumer on a lost connection",
            broker.consumer(env.work(), 1, "")
        )
        .await
        .is_err()
    );
    assert!(within("close again", broker.close()).await.is_ok());

    // A fresh connection works and gets the unacked message again.
    let fresh = env.connect().await;
    let mut consumer = open_consumer(&fresh, env.work(), 4).await;
    let mut d = next(&mut consumer).await;
    assert_eq!(body(&d), "unacked");
    assert!(d.redelivered);
    within("ack", d.ack()).await.expect("ack");
    let publisher = open_publisher(&fresh).await;
    assert_only_sentinel_follows(&publisher, Route::Work, &mut consumer).await;
    let publisher = open_publisher(&fresh).await;
    publish(&publisher, Route::Work, "after").await;
    let mut d = next(&mut consumer).await;
    assert_eq!(body(&d), "after");
    within("ack", d.ack()).await.expect("ack");
    within("close", fresh.close()).await.expect("close");
}

async fn close_all_connections(env: Env) {
    connection_loss(env, true).await;
}

async fn broker_close(env: Env) {
    connection_loss(env, false).await;
}

async fn publish_fails_without_exchange(env: Env) {
    let broker = env.connect().await;
    let publisher = open_publisher(&broker).await;
    publish(&publisher, Route::Work, "before").await;
    broker.delete_topology().await.expect("delete topology");
    let result = within(
        "publish",
        publisher.publish(Route::Work, Outgoing::new("x")),
    )
    .await;
    assert!(result.is_err(), "publish to a missing exchange must fail");
    // The broker closes the publisher's channel (404), not the connection.
    let reason = within("publisher.closed()", publisher.closed()).await;
    assert!(
        matches!(reason, BrokerError::ChannelClosed(_)),
        "{reason:?}"
    );
    assert!(broker.is_open());
    assert!(matches!(
        broker.queue_stats(env.work()).await,
        Err(BrokerError::QueueNotFound(_))
    ));
    broker.close().await.expect("close");
}

/// Bound for a whole test body, so a broken broker fails a test instead of hanging the run.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

async fn run(body: impl Future<Output = ()>) {
    if timeout(TEST_TIMEOUT, body).await.is_err() {
        panic!("test did not finish within {TEST_TIMEOUT:?}");
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::run(super::$name(super::Env::new(super::Backend::Memory))).await;
                }
            )*
        }
        mod rabbit {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::run(super::$name(super::Env::new(super::Backend::Rabbit))).await;
                }
            )*
        }
    };
}

conformance!(
    publish_consume_ack,
    properties_round_trip,
    nack_requeue_redelivers,
    dropped_delivery_requeued_promptly,
    closed_consumer_requeues_unacked,
    prefetch_respected,
    topology_declaration_idempotent,
    failed_and_invalid_routes,
    queue_stats_counts,
    close_all_connections,
    broker_close,
    publish_fails_without_exchange,
);

// ---------------------------------------------------------------------------------------------
// Backend-independent checks

#[test]
fn api_types_are_thread_safe() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Delivery>();
    assert_send_sync::<Broker>();
    assert_send_sync::<Publisher>();
    assert_send_sync::<Consumer>();
    assert_send_sync::<MemoryBroker>();
    assert_send_sync::<BrokerError>();
}

#[test]
fn config_defaults_and_strictness() {
    let config: BrokerConfig = serde_json::from_str("{}").expect("empty config");
    assert_eq!(config, BrokerConfig::default());
    assert!(config.is_memory());
    assert_eq!(config.exchange, "drover");
    assert_eq!(config.queue(Route::Work), "drover.outbound");
    assert_eq!(config.queue(Route::Failed), "drover.failed");
    assert_eq!(config.queue(Route::Invalid), "drover.invalid");
    assert_eq!(config.prefetch, 256);
    assert_eq!(config.connect_timeout_ms, 5_000);
    assert_eq!(config.confirm_timeout_ms, 10_000);
    let unknown = serde_json::from_str::<BrokerConfig>(r#"{"url":"memory","prefech":3}"#);
    assert!(unknown.is_err(), "unknown fields must be rejected");
    let secret = BrokerConfig {
        url: "amqp://user:s3cret@example:5672/%2f".into(),
        ..BrokerConfig::default()
    };
    assert!(!format!("{secret:?}").contains("s3cret"));
}

#[tokio::test]
async fn invalid_config_is_rejected() {
    let config = BrokerConfig {
        work_queue: "same".into(),
        failed_queue: "same".into(),
        ..BrokerConfig::default()
    };
    assert!(matches!(
        Broker::connect(&config, &MemoryBroker::new()).await,
        Err(BrokerError::InvalidConfig(_))
    ));
}

#[tokio::test]
async fn rabbit_unreachable_fails_fast() {
    let config = BrokerConfig {
        url: "amqp://guest:guest@127.0.0.1:1/%2f".into(),
        connect_timeout_ms: 3_000,
        ..BrokerConfig::default()
    };
    let result = within(
        "connect failure",
        Broker::connect(&config, &MemoryBroker::new()),
    )
    .await;
    let error = result.expect_err("nothing listens on port 1");
    assert!(error.is_connection_lost(), "{error:?}");
    assert!(
        !error.to_string().contains(":guest@"),
        "password leaked: {error}"
    );
}

#[tokio::test]
async fn rabbit_bad_credentials_fail() {
    // RabbitMQ must be there: refused credentials, not a refused connection, are the point.
    let good = BrokerConfig {
        url: amqp_url(),
        ..BrokerConfig::default()
    };
    let probe = within("connect", Broker::connect(&good, &MemoryBroker::new()))
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ must be reachable for this test: {e}"));
    probe.close().await.expect("close");
    let url = amqp_url();
    let (scheme, rest) = url.split_once("://").expect("an amqp:// URL");
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let url = format!("{scheme}://drover-no-such-user:wrong@{host}");
    let config = BrokerConfig {
        url,
        ..BrokerConfig::default()
    };
    let result = within(
        "connect failure",
        Broker::connect(&config, &MemoryBroker::new()),
    )
    .await;
    let Err(BrokerError::Connect { reason, url }) = &result else {
        panic!("expected a refused login, got {result:?}");
    };
    assert!(
        reason.contains("ACCESS_REFUSED") || reason.to_lowercase().contains("auth"),
        "the reason names the refused login: {reason}"
    );
    assert!(!url.contains("wrong"), "password leaked: {url}");
}

/// The in-memory broker's bounds: the work queue refuses beyond `memory_max_length` (a nack:
/// the sender keeps the message), and takes again once a consumer drained it; the failed and
/// invalid queues keep the newest `memory_keep_newest` and count what they drop.
#[tokio::test]
async fn memory_queues_are_bounded() {
    let mut env = Env::new(Backend::Memory);
    env.config.memory_max_length = 3;
    env.config.memory_keep_newest = 2;
    let broker = env.connect().await;
    let publisher = open_publisher(&broker).await;
    for i in 0..3 {
        publish(&publisher, Route::Work, &format!("w{i}")).await;
    }
    let refused = publisher
        .publish(
            Route::Work,
            Outgoing {
                body: b"w3".to_vec(),
                ..Outgoing::default()
            },
        )
        .await;
    assert_eq!(
        refused,
        Err(BrokerError::PublishNacked { route: Route::Work })
    );
    let mut consumer = open_consumer(&broker, env.work(), 1).await;
    let mut d = next(&mut consumer).await;
    assert_eq!(body(&d), "w0");
    d.ack().await.expect("ack");
    publish(&publisher, Route::Work, "w3").await;

    for i in 0..5 {
        publish(&publisher, Route::Failed, &format!("f{i}")).await;
    }
    publish(&publisher, Route::Invalid, "i0").await;
    let failed = env.config.failed_queue.clone();
    wait_stats(
        &broker,
        &failed,
        QueueStats {
            ready: 2,
            consumers: 0,
            dropped: 3,
        },
    )
    .await;
    let mut consumer = open_consumer(&broker, &failed, 4).await;
    let kept = next_n(&mut consumer, 2).await;
    assert_eq!(sorted_bodies(&kept), ["f3", "f4"], "the newest are kept");
    wait_stats(
        &broker,
        &env.config.invalid_queue,
        QueueStats {
            ready: 1,
            consumers: 0,
            dropped: 0,
        },
    )
    .await;
}
