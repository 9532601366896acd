//! Chaos on the real binary, against RabbitMQ (a vhost of the test's own) and PostgreSQL:
//! 3,000 messages while an actor is killed every 100 ms through `POST /actors/{path}/kill`
//! (mostly delivery workers, every twentieth a supervised actor: each of the five about every
//! 10 s), every broker connection of the
//! vhost is closed once (early), PostgreSQL restarts once (at about a third), and the provider answers 503 to 8 % of the
//! calls, 429 to 6 %, and 2 % only after the client's timeout. Each infrastructure fault is
//! asserted to end while messages still flow, with progress measured after it.
//!
//! Then the invariants: every message in exactly one terminal state, none lost, a message sent
//! twice only where an attempt was cut off (interrupted or ambiguous), the work queue drained,
//! the process still up (and it stops with exit 0 on SIGTERM). Seeded (`DROVER_CHAOS_SEED`
//! replays a run; the seed is printed), bounded in count and time.
//!
//! The PostgreSQL restart affects every client of that server: this binary holds this one
//! test only, and cargo runs test binaries one after another.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use drover_actors::store::MessageStatus;
use drover_actors::supervisor::SplitMix64;
use serde_json::Value;
use support::{
    Faults, TestEnv, count, cut_off, recipient, run_command, spawn_binary, tail, terminal,
    wait_counts,
};
use tokio::time::Instant;
use uuid::Uuid;

const N: usize = 3_000;
const ADMIN: &str = "chaos-admin";
/// The whole load must be terminal within this.
const LOAD_LIMIT: Duration = Duration::from_secs(240);
/// Supervised actors the chaos kills now and then (the rest of the time: delivery workers).
const SUPERVISED: [&str; 5] = [
    "root/providers/primary",
    "root/store",
    "root/scheduler",
    "root/broker/consumer",
    "root/broker/connection",
];

/// The paths of the live delivery workers, from `/status`.
fn workers(status: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = status["roots"].as_array().into_iter().flatten().collect();
    while let Some(n) = stack.pop() {
        let path = n["path"].as_str().unwrap_or_default();
        if path.contains("/workers/delivery-") && n["status"] == "running" {
            out.push(path.to_owned());
        }
        stack.extend(n["children"].as_array().into_iter().flatten());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_binary_under_chaos_loses_nothing_and_stays_up() {
    let seed: u64 = std::env::var("DROVER_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("[chaos] seed {seed} (DROVER_CHAOS_SEED={seed} replays the kills and faults)");
    let mut rng = SplitMix64::new(seed);
    let mut env = TestEnv::in_own_vhost().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    env.config.http.addr = format!("127.0.0.1:{port}").parse().unwrap();
    env.config.admin.token = ADMIN.into();
    env.config.admin.allow_destructive_actions = true;
    // A supervised actor killed every second for minutes is far beyond the default intensity
    // (10 restarts a minute): this run tests healing, not giving up.
    env.config.supervision.max_restarts = 500;
    // Killed every few seconds, an actor never stays up long enough to reset its backoff:
    // capped at 1 s, each kill costs at most about a second of that actor.
    env.config.supervision.backoff.max_ms = 1_000;
    env.config.delivery.max_attempts = 10;
    env.provider.seed(seed);
    // About 300 messages a second at the test's prefetch of 32: the load outlasts the faults.
    env.provider.set_latency(50, 150);
    env.provider.set_faults(Faults {
        p_unavailable: 800,
        p_too_many: 600,
        p_slow: 200,
        // Past provider.timeout_ms (2 s in the test environment): the provider took it, the
        // client saw a timeout (ambiguous).
        slow_ms: 2_500,
    });
    let (mut child, dir) = spawn_binary(&env);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    support::wait_for(
        "drover to answer /livez",
        Duration::from_secs(60),
        || async {
            match http.get(format!("{base}/livez")).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    let publisher = env.publisher().await;
    let started = Instant::now();
    let mut ids = Vec::with_capacity(N);
    for i in 0..N {
        let id = Uuid::new_v4();
        publisher
            .publish_sms(
                id,
                &recipient(i),
                &format!("chaos {i}"),
                &format!("corr-{i}"),
            )
            .await;
        ids.push(id);
    }
    let store = env.store().await;

    // The killer: every 100 ms while the load runs, bounded by the load limit.
    let (stop_killing, mut stopped) = tokio::sync::watch::channel(false);
    let killer = {
        let http = http.clone();
        let base = base.clone();
        let mut rng = SplitMix64::new(seed ^ 0x5eed);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut killed: BTreeMap<String, usize> = BTreeMap::new();
            let deadline = Instant::now() + LOAD_LIMIT;
            let mut n = 0u64;
            while Instant::now() < deadline {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.wait_for(|s| *s) => break,
                }
                n += 1;
                let path = if n.is_multiple_of(20) {
                    SUPERVISED[(rng.next_u64() % SUPERVISED.len() as u64) as usize].to_owned()
                } else {
                    let Ok(r) = http.get(format!("{base}/status")).send().await else {
                        continue;
                    };
                    let Ok(status) = r.json::<Value>().await else {
                        continue;
                    };
                    let w = workers(&status);
                    if w.is_empty() {
                        continue;
                    }
                    w[(rng.next_u64() % w.len() as u64) as usize].clone()
                };
                let r = http
                    .post(format!("{base}/actors/{path}/kill"))
                    .bearer_auth(ADMIN)
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status() == reqwest::StatusCode::ACCEPTED) {
                    let key = if path.contains("/workers/") {
                        "delivery workers".to_owned()
                    } else {
                        path
                    };
                    *killed.entry(key).or_default() += 1;
                }
            }
            killed
        })
    };

    // The broker's connections closed, early in the load (`rabbitmqctl` itself takes seconds
    // to start).
    let at = (N / 20) as i64 + (rng.next_u64() % 100) as i64;
    wait_counts(&store, "a twentieth done", LOAD_LIMIT, |c| {
        terminal(c) >= at
    })
    .await;
    run_command(
        "rabbitmqctl",
        &["-q", "close_all_connections", "-p", &env.vhost, "chaos"],
    )
    .await;
    support::assert_flowing_after(&store, "broker connections closed", N, 100, LOAD_LIMIT).await;

    // PostgreSQL restarted, a little later.
    let at = (N / 3) as i64 + (rng.next_u64() % 100) as i64;
    wait_counts(&store, "a third done", LOAD_LIMIT, |c| terminal(c) >= at).await;
    let version = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .max_by_key(|v| v.parse::<u32>().unwrap_or(0))
        .expect("a PostgreSQL version");
    run_command("pg_ctlcluster", &[&version, "main", "restart"]).await;
    support::assert_flowing_after(&store, "PostgreSQL restarted", N, 100, LOAD_LIMIT).await;

    let done = wait_counts(&store, "every message terminal", LOAD_LIMIT, |c| {
        terminal(c) == N as i64
    })
    .await;
    let elapsed = started.elapsed();
    stop_killing.send_replace(true);
    let killed = killer.await.expect("the killer task");

    // The invariants.
    assert!(
        child.try_wait().unwrap().is_none(),
        "drover exited under chaos; log tail:\n{}",
        tail(
            &std::fs::read_to_string(dir.join("drover.log")).unwrap_or_default(),
            20
        )
    );
    let live = http.get(format!("{base}/livez")).send().await.unwrap();
    assert!(live.status().is_success(), "/livez {}", live.status());
    let calls = env.provider.calls();
    let mut accepted: BTreeMap<String, usize> = BTreeMap::new();
    let mut answers: BTreeMap<u16, usize> = BTreeMap::new();
    for c in &calls {
        *answers.entry(c.status).or_default() += 1;
        if c.status == 201 {
            *accepted.entry(c.id.clone()).or_default() += 1;
        }
    }
    let (mut duplicates, mut cut) = (0usize, 0usize);
    for id in &ids {
        let rec = store
            .get(*id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{id} lost: no record"));
        assert!(
            matches!(rec.status, MessageStatus::Sent | MessageStatus::Failed),
            "{id} not terminal: {:?}",
            rec.status
        );
        let n = accepted.get(&id.to_string()).copied().unwrap_or(0);
        if rec.status == MessageStatus::Sent {
            assert!(n >= 1, "{id} sent but the provider never took it");
        }
        let c = cut_off(&rec);
        assert!(
            n <= 1 + c,
            "{id}: taken {n} times with {c} cut-off attempts: {:?}",
            rec.history
        );
        duplicates += n.saturating_sub(1);
        cut += c;
    }
    support::wait_for(
        "the work queue drained",
        Duration::from_secs(30),
        || async {
            let (ready, unacked) =
                support::rabbitmqctl_queue_counts(&env.vhost, &env.config.broker.work_queue).await;
            if ready + unacked == 0 {
                Ok(())
            } else {
                Err(format!("{ready} ready, {unacked} unacked"))
            }
        },
    )
    .await;
    println!(
        "[chaos] {N} messages terminal in {elapsed:.1?}: sent {}, failed {}; kills {killed:?}; \
         provider answers {answers:?}; {duplicates} taken twice, {cut} attempts cut off",
        count(&done, MessageStatus::Sent),
        count(&done, MessageStatus::Failed),
    );
    assert!(
        killed.get("delivery workers").copied().unwrap_or(0) >= 10,
        "the chaos killed workers: {killed:?}"
    );

    // Still a clean stop.
    let pid = child.id().expect("running").to_string();
    run_command("kill", &["-TERM", &pid]).await;
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("drover stops within its grace period")
        .unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM after chaos exits 0");
    publisher.close().await;
    env.cleanup().await;
    let _ = std::fs::remove_dir_all(&dir);
}
