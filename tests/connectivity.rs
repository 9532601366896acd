//! Where users run drover: TLS to RabbitMQ and PostgreSQL (with the CA and certificates
//! `tests/run.sh` generates into `DROVER_TEST_TLS_DIR`; RabbitMQ's TLS listener is
//! `DROVER_TEST_AMQPS_URL`), mutual TLS, quorum queues, and a broker cluster given as several
//! URLs of which the first refuses connections.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use drover_actors::broker::{
    Broker, BrokerConfig, BrokerError, BrokerTlsConfig, MemoryBroker, Outgoing, QueueType, Route,
};
use drover_actors::store::{MessageStatus, Store, StoreTlsConfig};
use support::*;
use tokio::time::Instant;
use uuid::Uuid;

fn tls_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("DROVER_TEST_TLS_DIR").unwrap_or_else(|_| "/var/lib/drover-test-tls".into()),
    )
}

fn tls_file(name: &str) -> String {
    let path = tls_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: tests/run.sh generates the test certificates (run it, or set \
         DROVER_TEST_TLS_DIR); these tests fail rather than skip",
        path.display()
    );
    path.display().to_string()
}

/// RabbitMQ's TLS listener, with the vhost of `plain` (the test's).
fn amqps_url(plain: &str) -> String {
    let tls = std::env::var("DROVER_TEST_AMQPS_URL")
        .unwrap_or_else(|_| "amqps://guest:guest@127.0.0.1:5671/%2f".into());
    let vhost = plain.rsplit('/').next().unwrap_or("%2f");
    let base = tls.rsplit_once('/').map_or(tls.as_str(), |(b, _)| b);
    format!("{base}/{vhost}")
}

fn trusted() -> BrokerTlsConfig {
    BrokerTlsConfig {
        ca_file: tls_file("ca.crt"),
        ..BrokerTlsConfig::default()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Connect `rounds` times (closing each), returning the connect times in ms.
async fn connect_times(config: &BrokerConfig, rounds: usize) -> Vec<f64> {
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        let broker = Broker::connect(config, &MemoryBroker::new())
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", config.redacted_url()));
        times.push(started.elapsed().as_secs_f64() * 1_000.0);
        let _ = broker.close().await;
    }
    times
}

/// `amqps://` with the test CA: the connection is made, the topology declared, messages go
/// through it; the TLS connect time is printed beside the plain one (same run, same broker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_over_tls_with_a_private_ca() {
    let env = TestEnv::new().await;
    let mut tls = env.config.broker.clone();
    tls.url = amqps_url(&env.config.broker.url);
    tls.tls = trusted();
    let broker = Broker::connect(&tls, &MemoryBroker::new())
        .await
        .unwrap_or_else(|e| panic!("amqps connect: {e}"));
    assert!(
        broker.node().starts_with("amqps://127.0.0.1:"),
        "{}",
        broker.node()
    );
    let publisher = broker.publisher().await.expect("publisher over TLS");
    publisher
        .publish(Route::Work, Outgoing::new("over tls"))
        .await
        .expect("a confirmed publish over TLS");
    let _ = broker.close().await;
    let got = env
        .take(&env.config.broker.work_queue, 1, Duration::from_secs(10))
        .await;
    assert_eq!(got[0].body, b"over tls");

    const ROUNDS: usize = 7;
    let plain = connect_times(&env.config.broker, ROUNDS).await;
    let secure = connect_times(&tls, ROUNDS).await;
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        format!("{lo:.1}-{hi:.1}")
    };
    let (p, s) = (median(plain.clone()), median(secure.clone()));
    println!(
        "broker connect + topology, {ROUNDS} rounds: plain {p:.1} ms median ({}), TLS {s:.1} ms \
         median ({}), ratio {:.2}",
        range(&plain),
        range(&secure),
        s / p
    );
    env.cleanup().await;
}

/// Mutual TLS: drover presents its client certificate (RabbitMQ sees its subject); a client
/// certificate from a CA the broker does not trust is refused, with a certificate error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_presents_the_client_certificate() {
    let env = TestEnv::new().await;
    let mut tls = env.config.broker.clone();
    tls.url = amqps_url(&env.config.broker.url);
    tls.tls = BrokerTlsConfig {
        cert_file: tls_file("client.crt"),
        key_file: tls_file("client.key"),
        ..trusted()
    };
    let name = format!("drover-mtls-{}", env.id);
    let broker = Broker::connect_named(&tls, &MemoryBroker::new(), &name)
        .await
        .unwrap_or_else(|e| panic!("mutual TLS connect: {e}"));
    let out = run_command(
        "rabbitmqctl",
        &[
            "-q",
            "list_connections",
            "client_properties",
            "peer_cert_subject",
            "ssl",
            "--formatter",
            "json",
        ],
    )
    .await;
    let rows: Vec<serde_json::Value> = serde_json::from_str(out.trim()).expect("json");
    let ours = rows
        .iter()
        .find(|r| r["client_properties"].to_string().contains(&name))
        .unwrap_or_else(|| panic!("our connection {name} in {out}"));
    assert_eq!(ours["ssl"], true, "{ours}");
    assert!(
        ours["peer_cert_subject"]
            .as_str()
            .is_some_and(|s| s.contains("drover-client")),
        "the broker saw our client certificate: {ours}"
    );
    let _ = broker.close().await;

    let mut stranger = tls.clone();
    stranger.tls.cert_file = tls_file("other-client.crt");
    stranger.tls.key_file = tls_file("other-client.key");
    match Broker::connect(&stranger, &MemoryBroker::new()).await {
        Ok(_) => panic!("a client certificate of an untrusted CA was accepted"),
        // The broker refuses with a TLS alert ("UnknownCA": a certificate error), or, when
        // the handshake already looked done to the client (TLS 1.3 checks the client's
        // certificate after the client's last flight), by resetting the connection.
        Err(e) => {
            assert!(
                matches!(e, BrokerError::Certificate { .. })
                    || matches!(&e, BrokerError::Connect { reason, .. } if reason.contains("reset")),
                "{e:?}"
            );
            println!("untrusted client certificate refused: {e}");
        }
    }
    env.cleanup().await;
}

/// A CA that did not sign the broker's certificate: refused at start, exit 3, one line
/// naming the broker and saying "certificate", at once (not after the startup deadline).
/// Same for the database with `sslmode=verify-full`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_refused_at_start_with_exit_3() {
    for dependency in ["broker", "database"] {
        let mut env = TestEnv::new().await;
        env.config.startup.deadline_ms = 20_000;
        if dependency == "broker" {
            env.config.broker.url = amqps_url(&env.config.broker.url);
            env.config.broker.tls.ca_file = tls_file("other-ca.crt");
        } else {
            env.config.store.tls = StoreTlsConfig {
                mode: "verify-full".into(),
                ca_file: tls_file("other-ca.crt"),
                ..StoreTlsConfig::default()
            };
        }
        let started = Instant::now();
        let (mut child, dir) = spawn_binary(&env);
        let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
            .await
            .unwrap_or_else(|_| panic!("{dependency}: still running 15 s after a wrong CA"))
            .expect("wait");
        let took = started.elapsed();
        let log = std::fs::read_to_string(dir.join("drover.log")).unwrap_or_default();
        assert_eq!(status.code(), Some(3), "{dependency}: {}", tail(&log, 5));
        let reason = log
            .lines()
            .rev()
            .find(|l| l.contains("certificate"))
            .unwrap_or_else(|| panic!("{dependency}: no certificate reason in {}", tail(&log, 8)));
        assert!(reason.contains(dependency), "{dependency}: {reason}");
        println!(
            "{dependency}, wrong CA: exit 3 after {took:?}: {}",
            tail(reason, 1)
        );
        assert!(
            took < Duration::from_secs(10),
            "a certificate error does not wait out the startup deadline: {took:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
        env.cleanup().await;
    }
}

/// PostgreSQL over TLS: `verify-full` with the test CA from the URL (`sslmode`,
/// `sslrootcert`) and from `store.tls.*`; the server reports the connections as TLS ones.
/// The connect times (pool + migrations check) are printed beside plain ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_over_tls_verify_full() {
    let env = TestEnv::new().await;
    let ca = tls_file("ca.crt");
    let app_name = |how: &str| format!("drover-tls-{how}-{}", &env.id[..8]);
    let in_url = {
        let mut c = env.config.store.clone();
        c.url = format!(
            "{}?sslmode=verify-full&sslrootcert={ca}&application_name={}",
            database_url(),
            app_name("url")
        );
        c
    };
    let in_keys = {
        let mut c = env.config.store.clone();
        c.url = format!("{}?application_name={}", database_url(), app_name("keys"));
        c.tls = StoreTlsConfig {
            mode: "verify-full".into(),
            ca_file: ca.clone(),
            ..StoreTlsConfig::default()
        };
        c
    };
    let plain = env.config.store.clone();
    let check = Store::connect(&plain).await.expect("plain store");
    let _ = check;
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&database_url())
        .await
        .expect("admin connection");
    let mut times: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for (how, config) in [("url", &in_url), ("keys", &in_keys), ("plain", &plain)] {
        for _ in 0..5 {
            let started = Instant::now();
            let store = Store::connect(config)
                .await
                .unwrap_or_else(|e| panic!("{how}: {e}"));
            store.ping().await.expect("ping");
            times
                .entry(how)
                .or_default()
                .push(started.elapsed().as_secs_f64() * 1_000.0);
            if how != "plain" {
                let (tls, total): (i64, i64) = sqlx::query_as(
                    "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_ssl s \
                     JOIN pg_stat_activity a USING (pid) WHERE a.application_name = $1",
                )
                .bind(app_name(how))
                .fetch_one(&admin)
                .await
                .expect("pg_stat_ssl");
                assert!(
                    total > 0 && tls == total,
                    "{how}: {tls} of {total} over TLS"
                );
            }
        }
    }
    let m: BTreeMap<&str, f64> = times.into_iter().map(|(k, v)| (k, median(v))).collect();
    println!(
        "database connect (pool, migrations check, ping), 5 rounds, medians: plain {:.1} ms, \
         verify-full {:.1} ms (URL) / {:.1} ms (store.tls keys), ratio {:.2}",
        m["plain"],
        m["url"],
        m["keys"],
        m["keys"] / m["plain"]
    );
    env.cleanup().await;
}

/// Quorum queues: declared as such, consumed, and each redelivery carries the broker's
/// `x-delivery-count`. A queue that already exists as classic is refused with an error that
/// names it and both types, and the startup check does not retry it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_count_deliveries_and_a_type_mismatch_is_named() {
    let mut env = TestEnv::new().await;
    // TestEnv::new declared the topology as classic queues; start from none.
    env.broker("drover-test-reset")
        .await
        .delete_topology()
        .await
        .expect("delete");
    env.config.broker.queue_type = QueueType::Quorum;
    env.config.broker.delivery_limit = 50;
    let broker = env.broker("drover-test-quorum").await;
    let out = run_command(
        "rabbitmqctl",
        &[
            "-q",
            "list_queues",
            "name",
            "type",
            "arguments",
            "--formatter",
            "json",
        ],
    )
    .await;
    let rows: Vec<serde_json::Value> = serde_json::from_str(out.trim()).expect("json");
    for queue in [
        &env.config.broker.work_queue,
        &env.config.broker.failed_queue,
        &env.config.broker.invalid_queue,
    ] {
        let row = rows
            .iter()
            .find(|r| r["name"] == queue.as_str())
            .unwrap_or_else(|| panic!("{queue} in {out}"));
        assert_eq!(row["type"], "quorum", "{row}");
        assert!(
            row["arguments"].to_string().contains("x-delivery-limit"),
            "{row}"
        );
    }
    let publisher = broker.publisher().await.expect("publisher");
    publisher
        .publish(Route::Work, Outgoing::new("counted"))
        .await
        .expect("publish");
    let mut consumer = broker
        .consumer(&env.config.broker.work_queue, 1, "drover-test-counter")
        .await
        .expect("consume");
    let mut counts = Vec::new();
    for _ in 0..3 {
        let mut d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a delivery within 10 s")
            .expect("open")
            .expect("delivery");
        counts.push(d.delivery_count);
        d.nack_requeue().await.expect("requeue");
    }
    // The first delivery carries no count (or 0, by version), then one more per return.
    assert_eq!(counts[1..], [Some(1), Some(2)], "{counts:?}");
    let _ = consumer.close().await;
    let _ = broker.close().await;

    // The pipeline on quorum queues delivers, the guard reading the count.
    let app = env.start().await;
    let store = env.store().await;
    let publisher = env.publisher().await;
    let ids: Vec<Uuid> = (0..20).map(|_| Uuid::new_v4()).collect();
    publisher.publish_load(&ids).await;
    wait_counts(
        &store,
        "20 sent over quorum queues",
        Duration::from_secs(30),
        |c| count(c, MessageStatus::Sent) == 20,
    )
    .await;
    app.shutdown().await.expect("clean stop");
    publisher.close().await;

    // The other way round: quorum queues exist, classic ones are asked for. RabbitMQ's
    // refusal names another argument, so the type comes from drover's own probe.
    let mut classic = env.config.broker.clone();
    classic.queue_type = QueueType::Classic;
    match Broker::connect(&classic, &MemoryBroker::new()).await {
        Err(e @ BrokerError::QueueMismatch { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("already exists as a quorum queue, but"),
                "{text}"
            );
        }
        other => panic!("expected a queue mismatch, got {other:?}"),
    }

    // Classic queues of the same names exist; asking for quorum is refused with both types.
    env.broker("drover-test-reset")
        .await
        .delete_topology()
        .await
        .expect("delete");
    let b = Broker::connect(&classic, &MemoryBroker::new())
        .await
        .expect("classic topology");
    let _ = b.close().await;
    match Broker::connect(&env.config.broker, &MemoryBroker::new()).await {
        Err(e @ BrokerError::QueueMismatch { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&env.config.broker.work_queue), "{text}");
            assert!(
                text.contains("quorum") && text.contains("classic"),
                "{text}"
            );
            assert!(e.is_permanent());
            println!("type mismatch: {text}");
        }
        other => panic!("expected a queue mismatch, got {other:?}"),
    }
    let started = Instant::now();
    let (mut child, dir) = spawn_binary(&env);
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits at once on a type mismatch")
        .expect("wait");
    let log = std::fs::read_to_string(dir.join("drover.log")).unwrap_or_default();
    assert_eq!(status.code(), Some(3), "{}", tail(&log, 5));
    assert!(
        log.contains("already exists as a classic queue"),
        "{}",
        tail(&log, 5)
    );
    println!(
        "binary on a type mismatch: exit 3 after {:?}",
        started.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}

/// Two broker URLs, the first refusing connections: drover connects to the second, says so
/// in `/status` and `/readyz`, and each reconnect starts after the node used last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_url_list_skips_a_node_that_refuses() {
    let mut env = TestEnv::new().await;
    // A loopback port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let real = env.config.broker.url.clone();
    let vhost = real.rsplit('/').next().unwrap();
    env.config.broker.url = format!("amqp://guest:guest@127.0.0.1:{port}/{vhost},{real}");
    env.config.broker.connect_timeout_ms = 2_000;
    let app = env.start().await;
    let router = app.router();
    let status = request(&router, "GET", "/status", &[], "").await;
    let text = status.text.clone();
    let real_node = drover_actors::redact::origin(&real);
    assert!(
        text.contains(&format!("connected to {real_node}")),
        "/status names the node: {text}"
    );
    let ready = request(&router, "GET", "/readyz", &[], "").await;
    assert!(
        ready.text.contains(&format!("connected to {real_node}")),
        "/readyz names the node: {}",
        ready.text
    );
    // Delivers through it.
    let store = env.store().await;
    let publisher = env.publisher().await;
    let id = Uuid::new_v4();
    publisher
        .publish_sms(id, "+15550001111", "via the second node", "corr-cluster")
        .await;
    wait_status(&store, id, MessageStatus::Sent, Duration::from_secs(20)).await;
    app.shutdown().await.expect("clean stop");
    publisher.close().await;
    env.cleanup().await;
}
