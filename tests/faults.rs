//! Fault injection under load: drover (started in-process) works through a load of messages
//! published straight to RabbitMQ while something is broken underneath it:
//!
//! * every RabbitMQ connection is closed by the broker (`rabbitmqctl close_all_connections`),
//! * PostgreSQL restarts (`pg_ctlcluster <version> main restart`),
//! * actors are killed: random delivery workers, the consumer, the connection actor;
//! * the store actor is killed and kept down a second by its backoff;
//!
//! plus, while idle, the consumer and the connection actor are killed and must not leave
//! their channel or connection behind. One message in 20 of each load fails its first
//! provider call (503), so retries are in flight too.
//!
//! After each, the invariant: every published message ends in exactly one terminal state in
//! the store (here: sent, since the provider accepts everything), none is missing, the
//! provider accepted each id exactly once except where the store's attempt history admits an
//! ambiguous attempt (see [`check_invariant`]), the work queue has nothing ready, and after
//! `app.shutdown()` nothing is left unacknowledged (`rabbitmqctl list_queues`).
//!
//! These scenarios disturb shared services, so they run one at a time (a global lock). Each
//! runs in a RabbitMQ vhost of its own, so closing "all" connections closes only the test's;
//! the PostgreSQL restart does affect every client of that server. RabbitMQ, `rabbitmqctl`,
//! PostgreSQL and `pg_ctlcluster` (run as root) must be available: the tests fail otherwise.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use drover::App;
use drover_actors::store::{MessageStatus, OutcomeKind, Store};
use drover_actors::supervisor::SplitMix64;
use drover_actors::tree::{EventKind, TreeEvent};
use futures::StreamExt;
use support::{Rule, TestEnv, count, terminal, wait_counts};
use tokio::sync::broadcast;
use tokio::time::Instant;
use uuid::Uuid;

/// One scenario at a time: they break services every test here depends on.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Bound of the whole load, fault included.
const LOAD_LIMIT: Duration = Duration::from_secs(90);
/// Bound of the drain and shutdown checks.
const WAIT: Duration = Duration::from_secs(30);

/// The environment of a fault scenario: a loaded pipeline with a bit of provider latency so
/// that attempts are in flight when the fault hits.
async fn fault_env() -> TestEnv {
    let mut env = TestEnv::in_own_vhost().await;
    env.config.broker.prefetch = 32;
    env.provider.set_latency(1, 8);
    // Short enough that deliveries of interrupted attempts are retried within the test; the
    // provider's timeout shortened with it, since the lease must cover a whole call.
    env.config.delivery.sending_lease_ms = 2_000;
    env.config.provider.timeout_ms = 1_000;
    env.config.delivery.worker_shutdown_ms = 2_000;
    env
}

/// Every this many messages of a load, one fails its first provider call with a 503, so
/// that retries (the scheduler, the database's due times) are in play when the fault hits.
const TRANSIENT_EVERY: usize = 20;

/// Publish `n` valid messages to the work queue, 64 confirms in flight at a time.
async fn publish_load(env: &TestEnv, n: usize) -> Vec<Uuid> {
    let publisher = env.publisher().await;
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    for id in ids.iter().step_by(TRANSIENT_EVERY) {
        env.provider.set_for_id(*id, Rule::fail_first(1));
    }
    publisher.publish_load(&ids).await;
    publisher.close().await;
    ids
}

/// Wait until at least `n` messages are terminal (the fault then hits mid-load); returns how
/// many were.
async fn wait_progress(store: &Store, n: i64, total: usize) -> i64 {
    let c = wait_counts(
        store,
        &format!("{n} of {total} messages done"),
        LOAD_LIMIT,
        |c| terminal(c) >= n,
    )
    .await;
    let done = terminal(&c);
    assert!(
        done < total as i64,
        "the load was over before the fault could hit it ({done} of {total} done)"
    );
    done
}

/// What the invariant check found.
#[derive(Debug, Default)]
struct Report {
    published: usize,
    sent: usize,
    failed: usize,
    invalid: usize,
    /// Provider calls in all.
    calls: usize,
    /// Messages with a retried attempt in their history (most of those whose first call was
    /// answered 503 on purpose; not all: a worker killed before recording that 503 leaves an
    /// interrupted attempt instead).
    retried: usize,
    /// Accepted provider calls beyond the first, summed over ids.
    duplicates: usize,
    /// Attempts recorded as ambiguous (error class `interrupted`: the worker died mid-attempt,
    /// or a provider timeout).
    ambiguous: usize,
    interrupted: usize,
}

/// The invariant after a fault (see the module docs). Bound on duplicates: a message can be
/// sent twice only when an attempt reached the provider but its outcome was never committed
/// (the worker died after the provider answered, or the database went away before the
/// commit); the next attempt of that message then closes the earlier one as `ambiguous`
/// (error class `interrupted`). So for every id,
/// `accepted provider calls - 1 <= ambiguous attempts in its history`, and the total number
/// of duplicates is at most the total number of ambiguous attempts.
async fn check_invariant(env: &TestEnv, store: &Store, ids: &[Uuid]) -> Report {
    let tally = env.provider.tally();
    let records: Vec<_> = futures::stream::iter(ids.iter().copied())
        .map(|id| async move { (id, store.get(id).await) })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut report = Report {
        published: ids.len(),
        calls: tally.values().map(|t| t.0).sum(),
        ..Report::default()
    };
    let mut problems = Vec::new();
    for (id, rec) in records {
        let rec = match rec {
            Ok(Some(r)) => r,
            Ok(None) => {
                problems.push(format!("{id}: missing from the store"));
                continue;
            }
            Err(e) => panic!("reading {id} from the store: {e}"),
        };
        let (calls, accepted) = tally.get(&id.to_string()).copied().unwrap_or((0, 0));
        let ambiguous = rec
            .history
            .iter()
            .filter(|a| a.outcome == Some(OutcomeKind::Ambiguous))
            .count();
        report.ambiguous += ambiguous;
        report.interrupted += rec
            .history
            .iter()
            .filter(|a| a.error_class.as_deref() == Some("interrupted"))
            .count();
        if let Some(open) = rec.history.iter().find(|a| a.outcome.is_none()) {
            problems.push(format!("{id}: attempt {} never closed", open.attempt));
        }
        match rec.status {
            MessageStatus::Sent => {
                report.sent += 1;
                if accepted == 0 {
                    problems.push(format!("{id}: sent but the provider never accepted it"));
                }
            }
            MessageStatus::Failed => report.failed += 1,
            MessageStatus::Invalid => report.invalid += 1,
            other => problems.push(format!("{id}: not terminal: {other}")),
        }
        if rec
            .history
            .iter()
            .any(|a| a.outcome == Some(OutcomeKind::Retry))
        {
            report.retried += 1;
        }
        let dup = accepted.saturating_sub(1);
        report.duplicates += dup;
        if dup > ambiguous {
            problems.push(format!(
                "{id}: provider accepted it {accepted} times ({calls} calls) with only \
                 {ambiguous} ambiguous attempts: {:?}",
                rec.history
            ));
        }
    }
    let known: std::collections::HashSet<String> = ids.iter().map(Uuid::to_string).collect();
    let strangers: Vec<&String> = tally.keys().filter(|k| !known.contains(*k)).collect();
    if !strangers.is_empty() {
        problems.push(format!("provider got ids never published: {strangers:?}"));
    }
    assert!(
        problems.is_empty(),
        "invariant violated ({} problems):\n{}",
        problems.len(),
        problems
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        report.duplicates <= report.ambiguous,
        "{report:?}: more duplicates than ambiguous attempts"
    );
    report
}

/// Abnormal exits seen on the event stream, by path (delivery workers folded together).
fn exits(events: &mut broadcast::Receiver<TreeEvent>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    loop {
        match events.try_recv() {
            Ok(e) => {
                if let EventKind::Exited { class, .. } = &e.kind {
                    if class.is_abnormal() {
                        let path = match e.path.split_once("/delivery-") {
                            Some((sup, _)) => format!("{sup}/delivery-*"),
                            None => e.path.clone(),
                        };
                        *out.entry(path).or_default() += 1;
                    }
                }
            }
            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                *out.entry("(events lost)".into()).or_default() += n as usize;
            }
            Err(_) => return out,
        }
    }
}

/// Everything after the fault: all terminal, invariant, drained, shut down, nothing left.
async fn finish(
    label: &str,
    env: TestEnv,
    app: App,
    store: Store,
    ids: Vec<Uuid>,
    started: Instant,
    mut events: broadcast::Receiver<TreeEvent>,
) -> (Report, BTreeMap<String, usize>) {
    let n = ids.len() as i64;
    let counts = wait_counts(
        &store,
        &format!("all {n} messages terminal"),
        LOAD_LIMIT,
        |c| terminal(c) >= n,
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(terminal(&counts), n, "{counts:?}");
    assert_eq!(
        count(&counts, MessageStatus::Sent),
        n,
        "the provider accepts everything, so everything is sent: {counts:?}"
    );
    env.wait_drained(&app, WAIT).await;
    let monitor = env.broker("drover-test-monitor").await;
    let stats = monitor
        .queue_stats(&env.config.broker.work_queue)
        .await
        .expect("queue_stats");
    let _ = monitor.close().await;
    assert_eq!(stats.ready, 0, "{stats:?}");
    assert_eq!(
        stats.consumers, 1,
        "exactly drover's one live consumer on the work queue (no leftover of a dead one)"
    );
    let report = check_invariant(&env, &store, &ids).await;
    // Every message scripted to fail its first call was tried again after the 503.
    let tally = env.provider.tally();
    for id in ids.iter().step_by(TRANSIENT_EVERY) {
        let (calls, accepted) = tally.get(&id.to_string()).copied().unwrap_or_default();
        assert!(
            calls >= 2 && accepted >= 1,
            "{id}: {calls} calls, {accepted} accepted"
        );
    }
    let exits = exits(&mut events);
    println!(
        "[{label}] {} messages in {:.1?}: sent {} ({} after a retry), failed {}, invalid {}; \
         provider calls {}, duplicates {}, ambiguous attempts {} (interrupted {}); abnormal \
         exits {exits:?}",
        report.published,
        elapsed,
        report.sent,
        report.retried,
        report.failed,
        report.invalid,
        report.calls,
        report.duplicates,
        report.ambiguous,
        report.interrupted,
    );

    app.shutdown().await.expect("clean shutdown");
    env.assert_work_queue_empty_after_shutdown().await;
    // Nothing of drover's stays connected once it is shut down.
    let vhost = env.vhost.clone();
    support::wait_for(
        &format!("every connection in {vhost} to close after shutdown"),
        Duration::from_secs(10),
        || async {
            let left = support::rabbitmqctl_connections(&vhost).await;
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("still open: {left:?}"))
            }
        },
    )
    .await;
    store.close().await;
    env.cleanup().await;
    (report, exits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_closes_every_connection_mid_load() {
    let _serial = SERIAL.lock().await;
    let env = fault_env().await;
    let app = env.start().await;
    let store = env.store().await;
    let events = app.tree.subscribe();
    // Starting `rabbitmqctl` takes seconds, in which a warm pipeline sent the rest of a
    // 1,000-message load (CI: 256 done at the close, 1,000 when it ended): enough load that it
    // is still flowing when the close ends.
    let total = 3_000;
    let started = Instant::now();
    let ids = publish_load(&env, total).await;

    let at = wait_progress(&store, 250, total).await;
    support::run_command(
        "rabbitmqctl",
        &["-q", "close_all_connections", "-p", &env.vhost, "test"],
    )
    .await;
    println!(
        "[broker close] closed every connection of {} at {at}/{total} done",
        env.vhost
    );
    support::assert_flowing_after(&store, "broker close", total, 100, LOAD_LIMIT).await;

    let (_, exits) = finish("broker close", env, app, store, ids, started, events).await;
    assert!(
        exits.get("root/broker/connection").copied().unwrap_or(0) >= 1,
        "the connection actor saw its connection go: {exits:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarts_mid_load() {
    let _serial = SERIAL.lock().await;
    let version = postgres_version();
    let env = fault_env().await;
    let app = env.start().await;
    let store = env.store().await;
    let events = app.tree.subscribe();
    // The restart takes seconds, and the load goes on through much of it: enough load that
    // it is still flowing when the restart ends.
    let total = 3_000;
    let started = Instant::now();
    let ids = publish_load(&env, total).await;

    let before = postmaster_start_time().await;
    let at = wait_progress(&store, 250, total).await;
    let t = Instant::now();
    support::run_command("pg_ctlcluster", &[&version, "main", "restart"]).await;
    println!(
        "[postgres restart] PostgreSQL {version} restarted at {at}/{total} done (took {:.1?})",
        t.elapsed()
    );
    assert_ne!(
        postmaster_start_time().await,
        before,
        "PostgreSQL really restarted"
    );
    support::assert_flowing_after(&store, "postgres restart", total, 100, LOAD_LIMIT).await;

    finish("postgres restart", env, app, store, ids, started, events).await;
}

/// `pg_postmaster_start_time()`, as text: changes when the server restarts.
async fn postmaster_start_time() -> String {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&support::database_url())
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL: {e}"));
    let t: String = sqlx::query_scalar("SELECT pg_postmaster_start_time()::text")
        .fetch_one(&pool)
        .await
        .expect("pg_postmaster_start_time");
    pool.close().await;
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_consumer_and_connection_killed_mid_load() {
    let _serial = SERIAL.lock().await;
    let env = fault_env().await;
    let app = env.start().await;
    let store = env.store().await;
    let events = app.tree.subscribe();
    let total = 1_000;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let mut rng = SplitMix64::new(seed);
    let started = Instant::now();
    let ids = publish_load(&env, total).await;

    // Kill while the load runs: a random delivery worker every 40 ms, the consumer once a
    // quarter is done, the connection actor once half is done. Bounded in kills and time.
    let mut killed: HashMap<&str, usize> = HashMap::new();
    let (mut consumer_done, mut connection_done) = (false, false);
    let quarter = total as i64 / 4;
    let mut tick = tokio::time::interval(Duration::from_millis(40));
    let deadline = Instant::now() + LOAD_LIMIT;
    for _ in 0..2_000 {
        tick.tick().await;
        let done = match store.counts_by_status().await {
            Ok(c) => terminal(&c),
            Err(_) => continue,
        };
        if done >= 3 * quarter || Instant::now() > deadline {
            break;
        }
        if killed.get("delivery").copied().unwrap_or(0) < 40 {
            let workers = support::delivery_workers(&app);
            if !workers.is_empty() {
                let victim = &workers[(rng.next_u64() % workers.len() as u64) as usize];
                if let Ok(cell) = app.tree.lookup(victim) {
                    cell.kill();
                    *killed.entry("delivery").or_default() += 1;
                }
            }
        }
        if !consumer_done && done >= quarter {
            if let Ok(cell) = app.tree.lookup("root/broker/consumer") {
                cell.kill();
                consumer_done = true;
                println!("[kills] killed root/broker/consumer at {done}/{total} done");
            }
        }
        if consumer_done && !connection_done && done >= 2 * quarter {
            if let Ok(cell) = app.tree.lookup("root/broker/connection") {
                cell.kill();
                connection_done = true;
                println!("[kills] killed root/broker/connection at {done}/{total} done");
            }
        }
    }
    assert!(
        consumer_done && connection_done,
        "the load ended before every kill was made (consumer {consumer_done}, connection \
         {connection_done})"
    );
    println!(
        "[kills] seed {seed}: killed {} delivery workers, the consumer and the connection",
        killed.get("delivery").copied().unwrap_or(0)
    );
    assert!(
        killed.get("delivery").copied().unwrap_or(0) > 0,
        "no worker was killed"
    );

    let (_, exits) = finish("kills", env, app, store, ids, started, events).await;
    assert!(exits.contains_key("root/broker/consumer"), "{exits:?}");
    assert!(exits.contains_key("root/broker/connection"), "{exits:?}");
}

/// The store actor killed mid-load, and held down for a second by its restart backoff: the
/// deliveries that arrive meanwhile cannot be processed and go back to the queue, but must
/// not come straight back in a busy loop of crashing workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_actor_killed_mid_load_without_a_busy_loop() {
    let _serial = SERIAL.lock().await;
    let mut env = fault_env().await;
    env.config.supervision.backoff.min_ms = 1_000;
    env.config.supervision.backoff.jitter = 0.0;
    let prefetch = usize::from(env.config.broker.prefetch);
    let app = env.start().await;
    let store = env.store().await;
    let events = app.tree.subscribe();
    let total = 500;
    let started = Instant::now();
    let ids = publish_load(&env, total).await;

    let at = wait_progress(&store, 100, total).await;
    app.tree
        .lookup("root/store")
        .expect("the store actor is up")
        .kill();
    println!("[store kill] killed root/store at {at}/{total} done");
    support::assert_flowing_after(&store, "store kill", total, 50, LOAD_LIMIT).await;

    let (_, exits) = finish("store kill", env, app, store, ids, started, events).await;
    assert!(exits.contains_key("root/store"), "{exits:?}");
    let crashed = exits
        .get("root/broker/workers/delivery-*")
        .copied()
        .unwrap_or(0);
    // About a second without a store: each of the `prefetch` deliveries in flight may fail a
    // few times (each failure after a pause), not hundreds of times.
    assert!(
        crashed <= 4 * prefetch,
        "{crashed} delivery workers failed while the store restarted (prefetch {prefetch}): \
         deliveries spin through crashing workers"
    );
}

/// Killing the consumer or the connection actor while idle: ractor skips `post_stop` for a
/// killed actor, so whatever its helper tasks hold (the consumer's channel, the connection)
/// must still be released, or the dead consumer stays registered on the queue and the dead
/// connection stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_consumer_and_connection_release_what_they_held() {
    let _serial = SERIAL.lock().await;
    let env = fault_env().await;
    let app = env.start().await;
    let store = env.store().await;
    let mut events = app.tree.subscribe();
    let monitor = env.broker("drover-test-monitor").await;
    let queue = env.config.broker.work_queue.clone();

    for path in ["root/broker/consumer", "root/broker/connection"] {
        app.tree
            .lookup(path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .kill();
        wait_for_event(&mut events, path, |k| *k == EventKind::Started).await;
        let consumers = support::wait_for(
            &format!("one consumer on the work queue after killing {path}"),
            WAIT,
            || async {
                match monitor.queue_stats(&queue).await {
                    Ok(s) if s.consumers == 1 => Ok(s.consumers),
                    Ok(s) => Err(format!("{} consumers", s.consumers)),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await;
        assert_eq!(consumers, 1);
        support::wait_for(
            &format!("drover to hold exactly one connection after killing {path}"),
            WAIT,
            || async {
                let names = support::rabbitmqctl_connections(&env.vhost).await;
                if names.iter().filter(|n| *n == "drover").count() == 1 {
                    Ok(())
                } else {
                    Err(format!("connections: {names:?}"))
                }
            },
        )
        .await;
    }
    let _ = monitor.close().await;

    // And it still works.
    let started = Instant::now();
    let ids = publish_load(&env, 20).await;
    finish("idle kills", env, app, store, ids, started, events).await;
}

async fn wait_for_event(
    events: &mut broadcast::Receiver<TreeEvent>,
    path: &str,
    what: impl Fn(&EventKind) -> bool,
) {
    let seen = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(e) if e.path == path && what(&e.kind) => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("event stream closed"),
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "no awaited event for {path} within {WAIT:?}");
}

/// The installed PostgreSQL major version (`ls /usr/lib/postgresql`), the cluster's.
fn postgres_version() -> String {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap_or_else(|e| panic!("cannot list /usr/lib/postgresql to find PostgreSQL: {e}"))
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    versions
        .last()
        .unwrap_or_else(|| panic!("no PostgreSQL version under /usr/lib/postgresql"))
        .to_string()
}

/// `/readyz` follows the database: it fails (503, `database` check failing) while PostgreSQL
/// is stopped, and passes again once it is back and the store actor has reconnected; `/livez`
/// stays up throughout (nothing external decides liveness).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_fails_while_postgres_is_stopped_and_passes_when_it_is_back() {
    let _serial = SERIAL.lock().await;
    let version = postgres_version();
    let env = TestEnv::new().await;
    let app = env.start().await;
    let client = reqwest::Client::new();
    let base = format!("http://{}", app.addr);
    let probe = |path: &'static str| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let resp = client
                .get(format!("{base}{path}"))
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((status, body))
        }
    };
    support::wait_for("readyz passing at start", WAIT, || async {
        match probe("/readyz").await {
            Ok((200, b)) if b["status"] == "pass" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    support::run_command("pg_ctlcluster", &[&version, "main", "stop"]).await;
    // Whatever happens below, PostgreSQL comes back for the tests after this one.
    let _restart = StartPostgresOnDrop(version.clone());
    let failing = support::wait_for("readyz failing while PostgreSQL is down", WAIT, || async {
        match probe("/readyz").await {
            Ok((503, b)) if b["status"] == "fail" => Ok(b),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let live = probe("/livez").await;
    support::run_command("pg_ctlcluster", &[&version, "main", "start"]).await;
    assert_eq!(
        failing["checks"]["database"][0]["status"], "fail",
        "the database check is what fails: {failing}"
    );
    assert!(
        matches!(live, Ok((200, _))),
        "livez checks nothing external: {live:?}"
    );

    support::wait_for(
        "readyz passing once PostgreSQL is back",
        Duration::from_secs(60),
        || async {
            match probe("/readyz").await {
                Ok((200, b)) if b["status"] == "pass" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    app.shutdown().await.expect("clean shutdown");
    env.cleanup().await;
}

/// Starts the PostgreSQL cluster again when dropped (also when a test panics).
struct StartPostgresOnDrop(String);

impl Drop for StartPostgresOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("pg_ctlcluster")
            .args([self.0.as_str(), "main", "start"])
            .status();
    }
}
