//! Reconciliation end to end: drover (in-process) on RabbitMQ and PostgreSQL, the mock Twilio
//! taking some requests and answering them only after drover's timeout (the provider has the
//! message; drover records the attempt `ambiguous`). Before the retry, drover asks the
//! provider (`ListMessage`) and records the message sent without sending it again; when the
//! lookup fails, it sends as before. Delivery workers killed mid-call leave attempts cut off
//! (`interrupted`); those are looked up the same way.

mod support;

use std::time::Duration;

use drover_actors::store::{MessageRecord, MessageStatus, OutcomeKind, Store};
use drover_actors::supervisor::SplitMix64;
use support::{Faults, TestEnv, count, terminal, wait_counts};
use uuid::Uuid;

/// Bound of a whole load.
const LOAD_LIMIT: Duration = Duration::from_secs(120);

/// drover's provider timeout here, and how late the mock answers a slow call (past it).
const TIMEOUT_MS: u64 = 500;
const SLOW_MS: u64 = 900;

fn env_with(env: &mut TestEnv, p_slow: u64) {
    env.config.provider.timeout_ms = TIMEOUT_MS;
    env.config.delivery.max_attempts = 10;
    env.provider.seed(0x00C0_FFEE);
    env.provider.set_faults(Faults {
        p_slow,
        slow_ms: SLOW_MS,
        ..Faults::default()
    });
}

async fn records(store: &Store, ids: &[Uuid]) -> Vec<MessageRecord> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push(store.get(*id).await.expect("get").expect("recorded"));
    }
    out
}

fn reconciled(r: &MessageRecord) -> bool {
    r.history
        .iter()
        .any(|a| a.error_class.as_deref() == Some("reconciled"))
}

fn ambiguous(r: &MessageRecord) -> usize {
    r.history
        .iter()
        .filter(|a| a.outcome == Some(OutcomeKind::Ambiguous))
        .count()
}

/// An attempt timed out after the request went out.
fn was_timed_out(r: &MessageRecord) -> bool {
    r.history
        .iter()
        .any(|a| a.error_class.as_deref() == Some("ambiguous"))
}

/// An attempt was cut off by its worker's death.
fn was_interrupted(r: &MessageRecord) -> bool {
    r.history
        .iter()
        .any(|a| a.error_class.as_deref() == Some("interrupted"))
}

/// Kill a random delivery worker every 40 ms until half of the `n` messages are terminal: at
/// most 60 kills, at most [`LOAD_LIMIT`]. How many were killed.
async fn kill_workers_mid_load(app: &drover::App, store: &Store, n: usize) -> usize {
    let mut rng = SplitMix64::new(0x5EED_0FC0_FFEE);
    let mut tick = tokio::time::interval(Duration::from_millis(40));
    let deadline = tokio::time::Instant::now() + LOAD_LIMIT;
    let mut kills = 0;
    while kills < 60 && tokio::time::Instant::now() < deadline {
        tick.tick().await;
        if let Ok(c) = store.counts_by_status().await
            && terminal(&c) >= (n / 2) as i64
        {
            break;
        }
        let workers = support::delivery_workers(app);
        if workers.is_empty() {
            continue;
        }
        let victim = &workers[(rng.next_u64() % workers.len() as u64) as usize];
        if let Ok(cell) = app.tree.lookup(victim) {
            cell.kill();
            kills += 1;
        }
    }
    kills
}

/// Publish `n` new messages; their ids.
async fn publish(env: &TestEnv, n: usize) -> Vec<Uuid> {
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    let publisher = env.publisher().await;
    publisher.publish_load(&ids).await;
    publisher.close().await;
    ids
}

async fn all_sent(store: &Store, n: usize) {
    let n = n as i64;
    let counts = wait_counts(store, &format!("all {n} terminal"), LOAD_LIMIT, |c| {
        terminal(c) >= n
    })
    .await;
    assert_eq!(count(&counts, MessageStatus::Sent), n, "{counts:?}");
}

/// 1,000 messages, a fifth of the provider's acceptances answered too late, and delivery
/// workers killed while the load runs (mid-call, most of them: a worker spends its life
/// waiting for the provider): every message is sent exactly once at the provider, each one
/// that timed out shows the reconciled attempt after its ambiguous one, and a message whose
/// worker was killed after the provider took it is found, not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accepted_then_timed_out_sends_are_found_not_repeated() {
    let mut env = TestEnv::new().await;
    env_with(&mut env, 2_000);
    let app = env.start().await;
    let store = env.store().await;
    let ids = publish(&env, 1_000).await;
    let kills = kill_workers_mid_load(&app, &store, ids.len()).await;
    all_sent(&store, ids.len()).await;

    let tally = env.provider.tally();
    let twice: Vec<_> = ids
        .iter()
        .filter(|id| tally.get(&id.to_string()).map_or(0, |t| t.1) != 1)
        .collect();
    let recs = records(&store, &ids).await;
    let timed_out = recs.iter().filter(|r| was_timed_out(r)).count();
    let interrupted = recs.iter().filter(|r| was_interrupted(r)).count();
    let found = recs.iter().filter(|r| reconciled(r)).count();
    let found_interrupted = recs
        .iter()
        .filter(|r| was_interrupted(r) && !was_timed_out(r) && reconciled(r))
        .count();
    println!(
        "{} messages, {kills} workers killed: {timed_out} timed out after the provider took \
         them, {interrupted} with an attempt cut off by a kill ({found_interrupted} of those \
         found at the provider), {found} found in all, {} lookups, {} accepted other than \
         exactly once",
        ids.len(),
        env.provider.lookups(),
        twice.len()
    );
    assert!(
        timed_out > 100,
        "the faults made attempts ambiguous: {timed_out}"
    );
    assert!(kills > 0, "no worker was killed");
    assert!(twice.is_empty(), "accepted other than once: {twice:?}");
    for r in &recs {
        // A timeout means the provider took the request: it must have been found. A kill may
        // have come before the request went out: found or sent, but once (checked above).
        if was_timed_out(r) {
            assert!(reconciled(r), "{}: {:?}", r.id, r.history);
        }
        if ambiguous(r) > 0 {
            let last = r.history.last().expect("attempts");
            assert_eq!(last.outcome, Some(OutcomeKind::Sent));
            assert_eq!(r.provider_message_id, last.provider_message_id);
        } else {
            assert!(!reconciled(r), "{}: {:?}", r.id, r.history);
        }
    }
    assert!(env.provider.lookups() >= found as u64);
    app.shutdown().await.expect("clean shutdown");
    store.close().await;
    env.cleanup().await;
}

/// A lookup that fails does not hold the message: it is sent again (the duplicate risk of
/// not asking), and recorded sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lookup_that_fails_falls_back_to_sending() {
    let mut env = TestEnv::new().await;
    env_with(&mut env, 10_000);
    env.provider.fail_lookups(true);
    let app = env.start().await;
    let store = env.store().await;
    let ids = publish(&env, 20).await;
    // Every first call arrived (and was drawn slow): answer the retries at once.
    support::wait_for("the 20 first calls", LOAD_LIMIT, || async {
        let n = env.provider.calls().len();
        if n >= ids.len() {
            Ok(())
        } else {
            Err(format!("{n} calls"))
        }
    })
    .await;
    env.provider.set_faults(Faults::default());
    all_sent(&store, ids.len()).await;
    let tally = env.provider.tally();
    for r in records(&store, &ids).await {
        assert!(ambiguous(&r) >= 1, "{:?}", r.history);
        assert!(!reconciled(&r), "{:?}", r.history);
        let accepted = tally.get(&r.id.to_string()).map_or(0, |t| t.1);
        assert_eq!(accepted, 1 + ambiguous(&r), "{}: {:?}", r.id, r.history);
    }
    assert!(env.provider.lookups() >= ids.len() as u64);
    app.shutdown().await.expect("clean shutdown");
    store.close().await;
    env.cleanup().await;
}
