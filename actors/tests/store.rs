//! The message ledger against both backends: every test body below runs once on PostgreSQL
//! (in a fresh schema, dropped afterwards) and once on SQLite (in a fresh temp file).
//!
//! PostgreSQL comes from `DROVER_TEST_DATABASE_URL` (default
//! `postgres://drover:drover@127.0.0.1:5432/drover`); the role must be allowed to create
//! schemas. When it is unreachable the PostgreSQL tests fail, they never skip.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use drover_actors::message::OutboundMessage;
use drover_actors::store::{
    Admission, AttemptOutcome, AttemptRecord, DeliveryWindow, ListQuery, MessageRecord,
    MessageStatus, MessageSummary, OutcomeKind, ReceiptRecord, Store, StoreConfig, StoreError,
    Uncertain,
};
use futures::FutureExt;
use sqlx::AssertSqlSafe;
use uuid::Uuid;

/// An arbitrary "now" (Unix ms); the store never reads a clock.
const NOW: i64 = 1_750_000_000_000;
/// A claim lease long enough not to lapse unless a test wants it to.
const LEASE: i64 = 60_000;
const DEFAULT_PG_URL: &str = "postgres://drover:drover@127.0.0.1:5432/drover";

// -------------------------------------------------------------------------------------------
// Harness

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Postgres,
    Sqlite,
}

fn pg_url() -> String {
    std::env::var("DROVER_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_PG_URL.to_owned())
}

/// `url` without its password, for messages.
fn redacted(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((credentials, host)) = rest.rsplit_once('@')
    {
        let user = credentials.split(':').next().unwrap_or_default();
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_owned()
}

/// One test's private database.
struct TestDb {
    backend: Backend,
    config: StoreConfig,
    sqlite_path: Option<PathBuf>,
    /// Whether a store ever connected (else there is nothing to clean up).
    connected: AtomicBool,
}

impl TestDb {
    fn new(backend: Backend) -> TestDb {
        let unique = Uuid::new_v4().simple().to_string();
        match backend {
            Backend::Postgres => TestDb {
                backend,
                config: StoreConfig {
                    url: pg_url(),
                    max_connections: 4,
                    acquire_timeout_ms: 10_000,
                    schema: Some(format!("drover_test_{unique}")),
                    ..StoreConfig::default()
                },
                sqlite_path: None,
                connected: AtomicBool::new(false),
            },
            Backend::Sqlite => {
                let path = std::env::temp_dir().join(format!("drover-store-test-{unique}.db"));
                TestDb {
                    backend,
                    config: StoreConfig {
                        url: format!("sqlite://{}?mode=rwc", path.display()),
                        max_connections: 4,
                        acquire_timeout_ms: 10_000,
                        schema: None,
                        ..StoreConfig::default()
                    },
                    sqlite_path: Some(path),
                    connected: AtomicBool::new(false),
                }
            }
        }
    }

    /// A new store (its own pool) on this test's database; connecting applies migrations.
    async fn store(&self) -> Store {
        match Store::connect(&self.config).await {
            Ok(store) => {
                self.connected.store(true, Ordering::Relaxed);
                store
            }
            Err(e) if self.backend == Backend::Postgres => panic!(
                "cannot use PostgreSQL at {} for the store tests: {e}\n\
                 Start it, or point DROVER_TEST_DATABASE_URL at one (the role must be able to \
                 create schemas). These tests fail rather than skip.",
                redacted(&self.config.url)
            ),
            Err(e) => panic!("cannot open SQLite at {}: {e}", self.config.url),
        }
    }

    /// Drop the schema / delete the files.
    async fn clean_up(&self) {
        if !self.connected.load(Ordering::Relaxed) {
            return;
        }
        if let Some(schema) = &self.config.schema {
            // Best effort: a failure here must not hide the test's own result.
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(10))
                .connect(&self.config.url)
                .await;
            if let Ok(pool) = pool {
                // `schema` is generated above from a UUID: safe to splice in.
                let drop = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
                if let Err(e) = sqlx::raw_sql(AssertSqlSafe(drop)).execute(&pool).await {
                    eprintln!("could not drop test schema {schema}: {e}");
                }
                pool.close().await;
            }
        }
        if let Some(path) = &self.sqlite_path {
            for suffix in ["", "-wal", "-shm"] {
                let mut file = path.clone().into_os_string();
                file.push(suffix);
                let _ = std::fs::remove_file(file);
            }
        }
    }
}

/// Run `body` on a fresh database of `backend`, cleaning up even if it panics.
async fn run(backend: Backend, body: impl AsyncFnOnce(&TestDb)) {
    let db = TestDb::new(backend);
    let result = AssertUnwindSafe(body(&db)).catch_unwind().await;
    db.clean_up().await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// For each named test body, a `postgres::NAME` and a `sqlite::NAME` test.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::run(super::Backend::Postgres, super::$name).await
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::run(super::Backend::Sqlite, super::$name).await
                }
            )*
        }
    };
}

on_both_backends!(
    migrations_apply_idempotently,
    admission_table,
    outcomes_and_history,
    deferred_does_not_spend_attempts,
    claim_due_returns_only_due_rows,
    concurrent_claimers_never_share_a_row,
    concurrent_admissions_are_serialized,
    stale_claim_is_reclaimed_after_its_lease,
    retry_revives_failed_messages,
    record_invalid_with_and_without_id,
    quarantine_sets_a_message_in_play_aside,
    batch_variants_match_single_ones,
    ambiguous_attempts_make_an_admission_uncertain,
    receipts_keep_what_says_the_most,
    delivery_window_counts_receipts_and_sends,
    lists_page_newest_first_and_group_failures,
    sending_lease_separates_in_flight_from_interrupted,
    group_commit_gives_each_caller_its_own_committed_answer,
);

// -------------------------------------------------------------------------------------------
// Helpers

/// Group commit: many concurrent callers, few transactions, the same answers as direct calls,
/// each committed before its call returns.
async fn group_commit_gives_each_caller_its_own_committed_answer(db: &TestDb) {
    let store = db
        .store()
        .await
        .with_sending_lease(30_000)
        .with_group_commit(16, 2);
    let msgs: Vec<OutboundMessage> = (1..=40).map(msg).collect();
    let admissions =
        futures::future::join_all(msgs.iter().map(|m| store.begin_attempt(m, NOW))).await;
    for a in &admissions {
        assert_eq!(a.as_ref().unwrap(), &proceed(1));
    }
    // The same message twice at once: one attempt proceeds, the other sees it in flight.
    let (a, b) = tokio::join!(
        store.begin_attempt(&msgs[0], NOW + 1),
        store.begin_attempt(&msgs[0], NOW + 1)
    );
    let both = [a.unwrap(), b.unwrap()];
    assert!(
        both.iter().all(|x| matches!(x, Admission::InFlight { .. })),
        "{both:?}"
    );
    let outcomes = futures::future::join_all(msgs.iter().map(|m| {
        let store = store.clone();
        async move {
            store
                .record_outcome(m.id, 1, &sent(&format!("SM{}", m.id.simple())), NOW + 2)
                .await
        }
    }))
    .await;
    assert!(outcomes.iter().all(Result::is_ok));
    // Committed: a store without batching sees every outcome.
    let direct = db.store().await;
    let counts = direct.counts_by_status().await.unwrap();
    assert_eq!(counts["sent"], 40, "{counts:?}");
    assert_eq!(
        get(&direct, msgs[7].id)
            .await
            .provider_message_id
            .as_deref(),
        Some(format!("SM{}", msgs[7].id.simple()).as_str())
    );
}

/// With a sending lease, a message `sending` since less than the lease is in flight elsewhere
/// (no second attempt); after the lease it is an interrupted attempt and proceeds.
async fn sending_lease_separates_in_flight_from_interrupted(db: &TestDb) {
    let store = db.store().await.with_sending_lease(30_000);
    let m = msg(1);
    assert_eq!(store.begin_attempt(&m, NOW).await.unwrap(), proceed(1));
    assert_eq!(
        store.begin_attempt(&m, NOW + 29_999).await.unwrap(),
        Admission::InFlight { since: NOW }
    );
    assert_eq!(
        get(&store, m.id).await.attempts,
        1,
        "an in-flight answer spends nothing"
    );
    assert_eq!(
        store.begin_attempt(&m, NOW + 30_000).await.unwrap(),
        interrupted(2, NOW, NOW)
    );
}

fn msg(n: u32) -> OutboundMessage {
    OutboundMessage {
        id: Uuid::new_v4(),
        to: format!("+1555{n:07}"),
        body: format!("hello {n}"),
        from: (n % 2 == 0).then(|| "+15550000000".to_owned()),
        correlation_id: format!("corr-{n}"),
    }
}

fn proceed(attempt: u32) -> Admission {
    Admission::Proceed {
        attempt,
        interrupted: false,
        uncertain: None,
    }
}

/// Attempt `attempt` after an interrupted one; the ambiguous ones so far started from `first`
/// to `last`.
fn interrupted(attempt: u32, first: i64, last: i64) -> Admission {
    match after_ambiguous(attempt, first, last) {
        Admission::Proceed {
            attempt, uncertain, ..
        } => Admission::Proceed {
            attempt,
            interrupted: true,
            uncertain,
        },
        other => other,
    }
}

/// Attempt `attempt` (not after an interruption) when ambiguous ones started from `first` to
/// `last`.
fn after_ambiguous(attempt: u32, first: i64, last: i64) -> Admission {
    Admission::Proceed {
        attempt,
        interrupted: false,
        uncertain: Some(Uncertain {
            first_started_at: first,
            last_started_at: last,
        }),
    }
}

fn sent(provider_message_id: &str) -> AttemptOutcome {
    AttemptOutcome::Sent {
        provider_message_id: provider_message_id.to_owned(),
        latency_ms: 12,
        provider: Some("primary".into()),
    }
}

fn retry_at(next_attempt_at: i64) -> AttemptOutcome {
    AttemptOutcome::Retry {
        next_attempt_at,
        error_class: "http_503".to_owned(),
        error: "service unavailable".to_owned(),
        latency_ms: 40,
        provider: Some("backup".into()),
    }
}

fn failed() -> AttemptOutcome {
    AttemptOutcome::Failed {
        error_class: "http_400".to_owned(),
        error: "not a mobile number".to_owned(),
        latency_ms: 7,
        provider: None,
    }
}

fn deferred(next_attempt_at: i64) -> AttemptOutcome {
    AttemptOutcome::Deferred {
        next_attempt_at,
        reason: "provider circuit open".to_owned(),
    }
}

fn ambiguous(next_attempt_at: i64) -> AttemptOutcome {
    AttemptOutcome::Ambiguous {
        next_attempt_at,
        error: "timed out after sending".to_owned(),
        latency_ms: 30_000,
        provider: Some("primary".into()),
    }
}

async fn get(store: &Store, id: Uuid) -> MessageRecord {
    store
        .get(id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("message {id} is not stored"))
}

/// A message admitted at `NOW` whose first attempt asked for a retry at `due`.
async fn scheduled(store: &Store, n: u32, due: i64) -> OutboundMessage {
    let m = msg(n);
    assert_eq!(store.begin_attempt(&m, NOW).await.unwrap(), proceed(1));
    store
        .record_outcome(m.id, 1, &retry_at(due), NOW)
        .await
        .unwrap();
    m
}

fn ids(claimed: &[(OutboundMessage, u32)]) -> Vec<Uuid> {
    claimed.iter().map(|(m, _)| m.id).collect()
}

// -------------------------------------------------------------------------------------------
// Bodies

async fn migrations_apply_idempotently(db: &TestDb) {
    let first = db.store().await;
    let second = db.store().await; // migrations already applied: a no-op
    let expected = match db.backend {
        Backend::Postgres => "postgres",
        Backend::Sqlite => "sqlite",
    };
    assert_eq!(first.backend(), expected);
    assert_eq!(second.backend(), expected);
    first.ping().await.unwrap();
    second.ping().await.unwrap();

    let empty = first.counts_by_status().await.unwrap();
    let statuses: Vec<&str> = MessageStatus::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        empty.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        statuses.iter().copied().collect()
    );
    assert!(empty.values().all(|&n| n == 0));
    assert_eq!(first.next_due_at().await.unwrap(), None);
    assert_eq!(first.get(Uuid::new_v4()).await.unwrap(), None);

    // Data survives reconnecting, which applies migrations a third time.
    let m = msg(1);
    assert_eq!(first.begin_attempt(&m, NOW).await.unwrap(), proceed(1));
    if let Some(path) = &db.sqlite_path {
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        assert!(PathBuf::from(wal).exists(), "SQLite runs in WAL mode");
    }
    let third = db.store().await;
    assert_eq!(get(&third, m.id).await.status, MessageStatus::Sending);
    assert_eq!(third.counts_by_status().await.unwrap()["sending"], 1);

    // A clone shares the pool.
    let clone = third.clone();
    clone.ping().await.unwrap();
    first.close().await;
    assert!(first.ping().await.is_err(), "a closed store fails");
    second.ping().await.unwrap();
}

async fn admission_table(db: &TestDb) {
    let s = db.store().await;
    let m = msg(1);

    // Absent: inserted, sending, attempt 1.
    assert_eq!(s.begin_attempt(&m, NOW).await.unwrap(), proceed(1));
    let r = get(&s, m.id).await;
    assert_eq!(r.message(), Some(m.clone()));
    assert_eq!(
        (r.status, r.attempts, r.created_at, r.updated_at),
        (MessageStatus::Sending, 1, NOW, NOW)
    );
    assert_eq!(r.history.len(), 1);
    assert_eq!(
        (
            r.history[0].attempt,
            r.history[0].started_at,
            r.history[0].outcome
        ),
        (1, NOW, None)
    );

    // Sending: the previous worker died mid-send.
    assert_eq!(
        s.begin_attempt(&m, NOW + 1).await.unwrap(),
        interrupted(2, NOW, NOW)
    );
    let r = get(&s, m.id).await;
    assert_eq!(
        (r.status, r.attempts, r.updated_at),
        (MessageStatus::Sending, 2, NOW + 1)
    );
    assert_eq!(r.history.len(), 2);
    assert_eq!(r.history[0].outcome, Some(OutcomeKind::Ambiguous));
    assert_eq!(r.history[0].error_class.as_deref(), Some("interrupted"));
    assert_eq!(r.history[0].finished_at, Some(NOW + 1));
    assert_eq!((r.history[1].attempt, r.history[1].outcome), (2, None));

    // Another payload under the same id: conflict, row untouched.
    let before = get(&s, m.id).await;
    let other_body = OutboundMessage {
        body: "something else".into(),
        ..m.clone()
    };
    let other_to = OutboundMessage {
        to: "+15559999999".into(),
        ..m.clone()
    };
    let other_from = OutboundMessage {
        from: Some("ACME".into()),
        ..m.clone()
    };
    for other in [&other_body, &other_to, &other_from] {
        assert_eq!(
            s.begin_attempt(other, NOW + 2).await.unwrap(),
            Admission::Conflict
        );
    }
    assert_eq!(get(&s, m.id).await, before);

    // Retry scheduled: not due, untouched (also with another correlation id: same payload).
    s.record_outcome(m.id, 2, &retry_at(NOW + 1000), NOW + 3)
        .await
        .unwrap();
    let before = get(&s, m.id).await;
    assert_eq!(
        s.begin_attempt(&m, NOW + 4).await.unwrap(),
        Admission::NotDue {
            next_attempt_at: NOW + 1000
        }
    );
    let recorrelated = OutboundMessage {
        correlation_id: "another".into(),
        ..m.clone()
    };
    assert_eq!(
        s.begin_attempt(&recorrelated, NOW + 4).await.unwrap(),
        Admission::NotDue {
            next_attempt_at: NOW + 1000
        }
    );
    assert_eq!(get(&s, m.id).await, before);

    // Queued (claimed by a scheduler, republished): sending, attempts + 1, claim cleared.
    let claimed = s.claim_due(NOW + 1000, LEASE, 10).await.unwrap();
    assert_eq!(claimed, vec![(m.clone(), 2)]);
    assert_eq!(get(&s, m.id).await.status, MessageStatus::Queued);
    // Its first attempt was interrupted: uncertain.
    assert_eq!(
        s.begin_attempt(&m, NOW + 1001).await.unwrap(),
        after_ambiguous(3, NOW, NOW)
    );
    let r = get(&s, m.id).await;
    assert_eq!(
        (r.status, r.attempts, r.claimed_until, r.next_attempt_at),
        (MessageStatus::Sending, 3, None, None)
    );
    assert_eq!(r.history.len(), 3);

    // Sent.
    s.record_outcome(m.id, 3, &sent("SM1"), NOW + 1002)
        .await
        .unwrap();
    let before = get(&s, m.id).await;
    assert_eq!(
        s.begin_attempt(&m, NOW + 1003).await.unwrap(),
        Admission::AlreadySent {
            provider_message_id: Some("SM1".into())
        }
    );
    assert_eq!(get(&s, m.id).await, before);

    // Failed.
    let f = msg(2);
    assert_eq!(s.begin_attempt(&f, NOW).await.unwrap(), proceed(1));
    s.record_outcome(f.id, 1, &failed(), NOW + 1).await.unwrap();
    assert_eq!(
        s.begin_attempt(&f, NOW + 2).await.unwrap(),
        Admission::AlreadyFailed {
            last_error: Some("not a mobile number".into()),
            last_error_class: Some("http_400".into())
        }
    );
    assert_eq!(get(&s, f.id).await.status, MessageStatus::Failed);

    // Invalid: whatever the payload.
    let i = msg(3);
    assert_eq!(
        s.record_invalid(Some(i.id), None, b"{\"to\":1}", "`to` is not a string", NOW)
            .await
            .unwrap(),
        i.id
    );
    assert_eq!(
        s.begin_attempt(&i, NOW + 1).await.unwrap(),
        Admission::AlreadyInvalid
    );
    assert_eq!(get(&s, i.id).await.status, MessageStatus::Invalid);

    let counts = s.counts_by_status().await.unwrap();
    let expected: BTreeMap<String, i64> = [
        ("queued", 0),
        ("sending", 0),
        ("sent", 1),
        ("retry_scheduled", 0),
        ("failed", 1),
        ("invalid", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(counts, expected);
}

async fn outcomes_and_history(db: &TestDb) {
    let s = db.store().await;
    let m = msg(1);

    assert_eq!(s.begin_attempt(&m, NOW).await.unwrap(), proceed(1));
    s.record_outcome(m.id, 1, &retry_at(NOW + 100), NOW + 10)
        .await
        .unwrap();
    let r = get(&s, m.id).await;
    assert_eq!(r.status, MessageStatus::RetryScheduled);
    assert_eq!(
        (r.attempts, r.next_attempt_at, r.created_at, r.updated_at),
        (1, Some(NOW + 100), NOW, NOW + 10)
    );
    assert_eq!(r.last_error.as_deref(), Some("service unavailable"));
    assert_eq!(r.last_error_class.as_deref(), Some("http_503"));
    assert_eq!(
        r.history,
        vec![AttemptRecord {
            attempt: 1,
            started_at: NOW,
            finished_at: Some(NOW + 10),
            outcome: Some(OutcomeKind::Retry),
            error_class: Some("http_503".into()),
            error: Some("service unavailable".into()),
            latency_ms: Some(40),
            provider_message_id: None,
            provider: Some("backup".into()),
        }]
    );

    // Ambiguous.
    assert_eq!(s.claim_due(NOW + 100, LEASE, 10).await.unwrap().len(), 1);
    assert_eq!(s.begin_attempt(&m, NOW + 101).await.unwrap(), proceed(2));
    s.record_outcome(m.id, 2, &ambiguous(NOW + 300), NOW + 200)
        .await
        .unwrap();
    let r = get(&s, m.id).await;
    assert_eq!(
        (r.status, r.attempts, r.next_attempt_at),
        (MessageStatus::RetryScheduled, 2, Some(NOW + 300))
    );
    assert_eq!(r.last_error_class.as_deref(), Some("ambiguous"));
    assert_eq!(r.last_error.as_deref(), Some("timed out after sending"));
    assert_eq!(r.history[1].outcome, Some(OutcomeKind::Ambiguous));
    assert_eq!(r.history[1].error_class.as_deref(), Some("ambiguous"));
    assert_eq!(r.history[1].latency_ms, Some(30_000));

    // A stale report (an older attempt) changes nothing.
    assert_eq!(s.claim_due(NOW + 300, LEASE, 10).await.unwrap().len(), 1);
    assert_eq!(
        s.begin_attempt(&m, NOW + 301).await.unwrap(),
        after_ambiguous(3, NOW + 101, NOW + 101)
    );
    let before = get(&s, m.id).await;
    s.record_outcome(m.id, 2, &sent("STALE"), NOW + 302)
        .await
        .unwrap();
    assert_eq!(get(&s, m.id).await, before);

    // Sent.
    s.record_outcome(m.id, 3, &sent("SM-42"), NOW + 400)
        .await
        .unwrap();
    let r = get(&s, m.id).await;
    assert_eq!(r.status, MessageStatus::Sent);
    assert_eq!(
        (r.attempts, r.next_attempt_at, r.updated_at),
        (3, None, NOW + 400)
    );
    assert_eq!(r.provider_message_id.as_deref(), Some("SM-42"));
    assert_eq!(r.history.len(), 3);
    assert_eq!(
        r.history[2],
        AttemptRecord {
            attempt: 3,
            started_at: NOW + 301,
            finished_at: Some(NOW + 400),
            outcome: Some(OutcomeKind::Sent),
            error_class: None,
            error: None,
            latency_ms: Some(12),
            provider_message_id: Some("SM-42".into()),
            provider: Some("primary".into()),
        }
    );

    // Reported twice, or for an unknown message: nothing changes, no error.
    s.record_outcome(m.id, 3, &failed(), NOW + 500)
        .await
        .unwrap();
    assert_eq!(get(&s, m.id).await, r);
    s.record_outcome(Uuid::new_v4(), 1, &failed(), NOW + 500)
        .await
        .unwrap();
    assert_eq!(s.counts_by_status().await.unwrap()["sent"], 1);
    assert_eq!(s.counts_by_status().await.unwrap().values().sum::<i64>(), 1);

    // Failed.
    let f = msg(2);
    assert_eq!(s.begin_attempt(&f, NOW).await.unwrap(), proceed(1));
    s.record_outcome(f.id, 1, &failed(), NOW + 5).await.unwrap();
    let r = get(&s, f.id).await;
    assert_eq!(
        (r.status, r.attempts, r.next_attempt_at),
        (MessageStatus::Failed, 1, None)
    );
    assert_eq!(r.last_error.as_deref(), Some("not a mobile number"));
    assert_eq!(r.last_error_class.as_deref(), Some("http_400"));
    assert_eq!(r.history[0].outcome, Some(OutcomeKind::Failed));
    assert_eq!(r.history[0].latency_ms, Some(7));

    // The record serializes.
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["status"], "failed");
    assert_eq!(json["history"][0]["outcome"], "failed");
}

async fn deferred_does_not_spend_attempts(db: &TestDb) {
    let s = db.store().await;
    let m = msg(1);

    assert_eq!(s.begin_attempt(&m, NOW).await.unwrap(), proceed(1));
    s.record_outcome(m.id, 1, &deferred(NOW + 500), NOW + 1)
        .await
        .unwrap();
    let r = get(&s, m.id).await;
    assert_eq!(
        (r.status, r.attempts, r.next_attempt_at),
        (MessageStatus::RetryScheduled, 0, Some(NOW + 500))
    );
    assert_eq!(r.last_error.as_deref(), Some("provider circuit open"));
    assert_eq!(r.last_error_class.as_deref(), Some("deferred"));
    assert_eq!(r.history.len(), 1);
    assert_eq!(r.history[0].outcome, Some(OutcomeKind::Deferred));
    assert_eq!(r.history[0].error.as_deref(), Some("provider circuit open"));
    assert_eq!(r.history[0].latency_ms, None);

    // The claim reports no attempt spent, and the next admission is attempt 1 again.
    assert_eq!(
        s.claim_due(NOW + 500, LEASE, 10).await.unwrap(),
        vec![(m.clone(), 0)]
    );
    assert_eq!(s.begin_attempt(&m, NOW + 501).await.unwrap(), proceed(1));

    // Deferred again, then a real retry: only that one counts.
    s.record_outcome(m.id, 1, &deferred(NOW + 600), NOW + 502)
        .await
        .unwrap();
    assert_eq!(get(&s, m.id).await.attempts, 0);
    s.claim_due(NOW + 600, LEASE, 10).await.unwrap();
    assert_eq!(s.begin_attempt(&m, NOW + 601).await.unwrap(), proceed(1));
    s.record_outcome(m.id, 1, &retry_at(NOW + 700), NOW + 602)
        .await
        .unwrap();
    assert_eq!(
        s.claim_due(NOW + 700, LEASE, 10).await.unwrap(),
        vec![(m.clone(), 1)]
    );
    assert_eq!(s.begin_attempt(&m, NOW + 701).await.unwrap(), proceed(2));

    // The history keeps every try, numbered in sequence.
    let r = get(&s, m.id).await;
    let outcomes: Vec<(u32, Option<OutcomeKind>)> =
        r.history.iter().map(|a| (a.attempt, a.outcome)).collect();
    assert_eq!(
        outcomes,
        vec![
            (1, Some(OutcomeKind::Deferred)),
            (2, Some(OutcomeKind::Deferred)),
            (3, Some(OutcomeKind::Retry)),
            (4, None),
        ]
    );
}

async fn claim_due_returns_only_due_rows(db: &TestDb) {
    let s = db.store().await;
    assert_eq!(s.next_due_at().await.unwrap(), None);
    assert!(s.claim_due(NOW, LEASE, 10).await.unwrap().is_empty());

    let b = scheduled(&s, 2, NOW).await;
    let a = scheduled(&s, 1, NOW - 10).await;
    let c = scheduled(&s, 3, NOW + 10).await;
    // Rows in other states are never claimed.
    let sending = msg(4);
    s.begin_attempt(&sending, NOW).await.unwrap();
    let done = msg(5);
    s.begin_attempt(&done, NOW).await.unwrap();
    s.record_outcome(done.id, 1, &sent("SM5"), NOW)
        .await
        .unwrap();
    let gone = msg(6);
    s.begin_attempt(&gone, NOW).await.unwrap();
    s.record_outcome(gone.id, 1, &failed(), NOW).await.unwrap();
    s.record_invalid(None, None, b"junk", "not json", NOW)
        .await
        .unwrap();

    assert_eq!(s.next_due_at().await.unwrap(), Some(NOW - 10));
    assert!(s.claim_due(NOW - 11, LEASE, 10).await.unwrap().is_empty());
    assert!(s.claim_due(NOW, LEASE, 0).await.unwrap().is_empty());
    assert!(s.claim_due(NOW, LEASE, -1).await.unwrap().is_empty());

    // Due ones, earliest first, with the attempts they have spent.
    let claimed = s.claim_due(NOW, LEASE, 10).await.unwrap();
    assert_eq!(claimed, vec![(a.clone(), 1), (b.clone(), 1)]);
    for m in [&a, &b] {
        let r = get(&s, m.id).await;
        assert_eq!(
            (r.status, r.claimed_until, r.updated_at),
            (MessageStatus::Queued, Some(NOW + LEASE), NOW)
        );
    }
    // Claimed rows are not handed out again while the lease holds.
    assert!(s.claim_due(NOW, LEASE, 10).await.unwrap().is_empty());
    assert_eq!(s.next_due_at().await.unwrap(), Some(NOW + 10));

    assert_eq!(
        ids(&s.claim_due(NOW + 10, LEASE, 10).await.unwrap()),
        vec![c.id]
    );
    assert_eq!(get(&s, sending.id).await.status, MessageStatus::Sending);
    assert_eq!(get(&s, done.id).await.status, MessageStatus::Sent);
    assert_eq!(get(&s, gone.id).await.status, MessageStatus::Failed);

    // `limit` is respected.
    let mut later = BTreeSet::new();
    for n in 0..5 {
        later.insert(scheduled(&s, 10 + n, NOW + 20).await.id);
    }
    let mut got = BTreeSet::new();
    for expected in [2, 2, 1, 0] {
        let batch = s.claim_due(NOW + 20, LEASE, 2).await.unwrap();
        assert_eq!(batch.len(), expected);
        got.extend(ids(&batch));
    }
    assert_eq!(got, later);
}

async fn concurrent_claimers_never_share_a_row(db: &TestDb) {
    let first = db.store().await;
    let second = db.store().await;
    let msgs: Vec<OutboundMessage> = (0..60).map(msg).collect();
    assert!(
        first
            .begin_attempts(&msgs, NOW)
            .await
            .unwrap()
            .iter()
            .all(|a| *a == proceed(1))
    );
    let outcomes: Vec<(Uuid, u32, AttemptOutcome)> =
        msgs.iter().map(|m| (m.id, 1, retry_at(NOW))).collect();
    first.record_outcomes(&outcomes, NOW).await.unwrap();

    async fn drain(store: &Store) -> Vec<Uuid> {
        let mut claimed = Vec::new();
        loop {
            let batch = store.claim_due(NOW, LEASE, 7).await.unwrap();
            if batch.is_empty() {
                return claimed;
            }
            claimed.extend(ids(&batch));
        }
    }
    // Two instances, two schedulers each, all at once.
    let (a, b, c, d) = tokio::join!(drain(&first), drain(&second), drain(&first), drain(&second));

    let mut seen = BTreeSet::new();
    for id in a.iter().chain(&b).chain(&c).chain(&d) {
        assert!(seen.insert(*id), "{id} was claimed twice");
    }
    let all: BTreeSet<Uuid> = msgs.iter().map(|m| m.id).collect();
    assert_eq!(seen, all);
    assert_eq!(first.counts_by_status().await.unwrap()["queued"], 60);
}

async fn concurrent_admissions_are_serialized(db: &TestDb) {
    let first = db.store().await;
    let second = db.store().await;

    // Two workers get the same new message at once: one inserts it, the other finds it
    // sending (it cannot tell a live worker from a dead one) and proceeds as interrupted.
    let m = msg(1);
    let (a, b) = tokio::join!(first.begin_attempt(&m, NOW), second.begin_attempt(&m, NOW));
    let mut got = vec![a.unwrap(), b.unwrap()];
    got.sort_by_key(|a| format!("{a:?}"));
    assert_eq!(got, vec![proceed(1), interrupted(2, NOW, NOW)]);
    let r = get(&first, m.id).await;
    assert_eq!((r.attempts, r.history.len()), (2, 2));

    // Overlapping batches in different orders from two instances neither deadlock nor lose
    // an admission.
    let msgs: Vec<OutboundMessage> = (0..20).map(msg).collect();
    let reversed: Vec<OutboundMessage> = msgs.iter().rev().cloned().collect();
    let odd_first: Vec<OutboundMessage> = msgs
        .iter()
        .skip(1)
        .step_by(2)
        .chain(msgs.iter().step_by(2))
        .cloned()
        .collect();
    let (x, y, z) = tokio::join!(
        first.begin_attempts(&msgs, NOW),
        second.begin_attempts(&reversed, NOW),
        second.begin_attempts(&odd_first, NOW),
    );
    for batch in [x, y, z] {
        assert!(
            batch
                .unwrap()
                .iter()
                .all(|a| matches!(a, Admission::Proceed { .. }))
        );
    }
    for m in &msgs {
        let r = get(&first, m.id).await;
        assert_eq!((r.attempts, r.history.len()), (3, 3));
    }
}

async fn stale_claim_is_reclaimed_after_its_lease(db: &TestDb) {
    let s = db.store().await;
    let a = scheduled(&s, 1, NOW).await;
    let b = scheduled(&s, 2, NOW).await;
    assert_eq!(s.claim_due(NOW, 1000, 10).await.unwrap().len(), 2);

    // b's republishing was confirmed; a's scheduler died before confirming.
    s.release_claims(&[b.id]).await.unwrap();
    assert_eq!(get(&s, b.id).await.claimed_until, None);
    assert_eq!(get(&s, a.id).await.claimed_until, Some(NOW + 1000));
    assert_eq!(s.next_due_at().await.unwrap(), Some(NOW + 1000));

    assert!(s.claim_due(NOW + 999, 1000, 10).await.unwrap().is_empty());
    let reclaimed = s.claim_due(NOW + 1000, 1000, 10).await.unwrap();
    assert_eq!(reclaimed, vec![(a.clone(), 1)]);
    let r = get(&s, a.id).await;
    assert_eq!(
        (r.status, r.claimed_until, r.attempts),
        (MessageStatus::Queued, Some(NOW + 2000), 1)
    );

    // A worker admits it: the claim is gone, and releasing it late changes nothing.
    assert_eq!(s.begin_attempt(&a, NOW + 1001).await.unwrap(), proceed(2));
    s.release_claims(&[a.id, Uuid::new_v4()]).await.unwrap();
    s.release_claims(&[]).await.unwrap();
    let r = get(&s, a.id).await;
    assert_eq!((r.status, r.claimed_until), (MessageStatus::Sending, None));

    // b sits in the work queue (released), a is sending: nothing for the scheduler.
    assert_eq!(s.next_due_at().await.unwrap(), None);
    assert!(
        s.claim_due(NOW + 100_000, 1000, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn retry_revives_failed_messages(db: &TestDb) {
    let s = db.store().await;
    let m = msg(1);
    assert_eq!(s.begin_attempt(&m, NOW).await.unwrap(), proceed(1));
    s.record_outcome(m.id, 1, &failed(), NOW + 1).await.unwrap();

    assert_eq!(s.retry(m.id, NOW + 50).await.unwrap(), Some(m.clone()));
    let r = get(&s, m.id).await;
    assert_eq!(
        (r.status, r.attempts, r.next_attempt_at, r.updated_at),
        (MessageStatus::RetryScheduled, 0, Some(NOW + 50), NOW + 50)
    );
    assert_eq!(s.next_due_at().await.unwrap(), Some(NOW + 50));

    // Only failed messages.
    assert_eq!(s.retry(m.id, NOW + 51).await.unwrap(), None);
    assert_eq!(s.retry(Uuid::new_v4(), NOW + 51).await.unwrap(), None);
    let ok = msg(2);
    s.begin_attempt(&ok, NOW).await.unwrap();
    s.record_outcome(ok.id, 1, &sent("SM2"), NOW).await.unwrap();
    assert_eq!(s.retry(ok.id, NOW + 51).await.unwrap(), None);
    assert_eq!(get(&s, ok.id).await.status, MessageStatus::Sent);

    // A fresh budget: the scheduler picks it up and the next attempt is number 1.
    assert_eq!(
        s.claim_due(NOW + 50, LEASE, 10).await.unwrap(),
        vec![(m.clone(), 0)]
    );
    assert_eq!(s.begin_attempt(&m, NOW + 60).await.unwrap(), proceed(1));
    let r = get(&s, m.id).await;
    assert_eq!(
        r.history.iter().map(|a| a.attempt).collect::<Vec<_>>(),
        vec![1, 2]
    );
}

async fn record_invalid_with_and_without_id(db: &TestDb) {
    let s = db.store().await;

    // Without an id: one derived from the payload, so a redelivery finds the same row.
    let raw: &[u8] = b"\xff\xfe not utf8";
    let a = s
        .record_invalid(None, Some("corr-x"), raw, "body is not UTF-8", NOW)
        .await
        .unwrap();
    let r = get(&s, a).await;
    assert_eq!(r.status, MessageStatus::Invalid);
    assert_eq!(r.body, "\u{FFFD}\u{FFFD} not utf8");
    assert_eq!((r.recipient.as_str(), r.sender.as_deref()), ("", None));
    assert_eq!(r.correlation_id, "corr-x");
    assert_eq!(r.last_error.as_deref(), Some("body is not UTF-8"));
    assert_eq!(r.last_error_class.as_deref(), Some("invalid"));
    assert_eq!(
        (r.attempts, r.next_attempt_at, r.created_at),
        (0, None, NOW)
    );
    assert!(r.history.is_empty());
    assert_eq!(r.message(), None);
    let b = s
        .record_invalid(None, None, raw, "body is not UTF-8", NOW + 1)
        .await
        .unwrap();
    assert_eq!(a, b, "the same payload again is the same row");
    assert_eq!(get(&s, b).await, r, "and the row is untouched");
    let c = s
        .record_invalid(None, None, b"another payload", "not json", NOW)
        .await
        .unwrap();
    assert_ne!(a, c);
    assert_eq!(get(&s, c).await.correlation_id, c.to_string());

    // With an unused id: that id; the same payload again is the same row.
    let id = Uuid::new_v4();
    let payload = br#"{"id":"x","to":"+15551234567"}"#;
    assert_eq!(
        s.record_invalid(Some(id), None, payload, "missing field `body`", NOW)
            .await
            .unwrap(),
        id
    );
    assert_eq!(get(&s, id).await.correlation_id, id.to_string());
    assert_eq!(
        s.record_invalid(Some(id), None, payload, "missing field `body`", NOW + 1)
            .await
            .unwrap(),
        id
    );
    assert_eq!(get(&s, id).await.updated_at, NOW);

    // The id of another invalid payload: a fresh id, the first row untouched.
    let before = get(&s, id).await;
    let other = s
        .record_invalid(Some(id), Some("c"), b"{}", "missing field `to`", NOW + 2)
        .await
        .unwrap();
    assert_ne!(other, id);
    assert_eq!(get(&s, id).await, before);
    assert_eq!(get(&s, other).await.body, "{}");

    // The id of a valid message (a duplicate id): a fresh id, the message untouched.
    let m = msg(1);
    s.begin_attempt(&m, NOW).await.unwrap();
    let before = get(&s, m.id).await;
    let dup = s
        .record_invalid(
            Some(m.id),
            Some(&m.correlation_id),
            b"{}",
            "id already used",
            NOW + 3,
        )
        .await
        .unwrap();
    assert_ne!(dup, m.id);
    assert_eq!(get(&s, m.id).await, before);
    assert_eq!(get(&s, dup).await.correlation_id, m.correlation_id);
    let again = s
        .record_invalid(
            Some(m.id),
            Some(&m.correlation_id),
            b"{}",
            "id already used",
            NOW + 4,
        )
        .await
        .unwrap();
    assert_eq!(again, dup, "a redelivered duplicate finds its row");

    // NUL bytes (which PostgreSQL text cannot hold) are replaced.
    let nul = s
        .record_invalid(None, None, b"a\0b", "not json", NOW)
        .await
        .unwrap();
    assert_eq!(get(&s, nul).await.body, "a\u{FFFD}b");

    // Bounded whatever the input: NUL in the correlation id, a 200 KB reason, a 5 MB payload.
    let huge = vec![b'x'; 5 * 1024 * 1024];
    let big = s
        .record_invalid(None, Some("c\0d"), &huge, &"r".repeat(200_000), NOW)
        .await
        .unwrap();
    let r = get(&s, big).await;
    assert_eq!(r.correlation_id, "c\u{FFFD}d");
    assert!(r.last_error.unwrap().len() <= 512);
    assert_eq!(r.body.len(), 64 * 1024);
    assert!(r.body_truncated);
    assert!(!get(&s, nul).await.body_truncated);

    assert_eq!(s.counts_by_status().await.unwrap()["invalid"], 7);
}

async fn quarantine_sets_a_message_in_play_aside(db: &TestDb) {
    let s = db.store().await;
    let m = msg(1);
    assert_eq!(s.begin_attempt(&m, NOW).await.unwrap(), proceed(1));
    assert_eq!(get(&s, m.id).await.segments, Some(1));
    assert!(
        s.quarantine(m.id, "poison: worker failed 5 times: boom", NOW + 1)
            .await
            .unwrap()
    );
    let r = get(&s, m.id).await;
    assert_eq!(r.status, MessageStatus::Invalid);
    assert_eq!(r.last_error_class.as_deref(), Some("poison"));
    assert_eq!(
        r.history[0].error_class.as_deref(),
        Some("interrupted"),
        "the open attempt is closed"
    );
    assert_eq!(
        s.begin_attempt(&m, NOW + 2).await.unwrap(),
        Admission::AlreadyInvalid
    );
    // A sent message is left alone.
    let ok = msg(2);
    s.begin_attempt(&ok, NOW).await.unwrap();
    s.record_outcome(ok.id, 1, &sent("SM2"), NOW).await.unwrap();
    assert!(!s.quarantine(ok.id, "poison", NOW + 1).await.unwrap());
    assert_eq!(get(&s, ok.id).await.status, MessageStatus::Sent);
    assert!(!s.quarantine(Uuid::new_v4(), "poison", NOW).await.unwrap());
}

/// After an attempt recorded `ambiguous` (a timeout after the request went out), the next
/// admission says when the uncertain attempts started, so the worker can ask the provider;
/// a `reconciled` outcome records the message sent with the attempt saying why. A transient
/// failure leaves nothing uncertain. Batch calls answer and record as single ones.
async fn ambiguous_attempts_make_an_admission_uncertain(db: &TestDb) {
    let s = db.store().await;
    let timed_out = msg(1);
    let refused = msg(2);
    let batched = msg(3);
    for m in [&timed_out, &refused, &batched] {
        assert_eq!(s.begin_attempt(m, NOW).await.unwrap(), proceed(1));
    }
    s.record_outcome(timed_out.id, 1, &ambiguous(NOW + 10), NOW + 1)
        .await
        .unwrap();
    s.record_outcome(refused.id, 1, &retry_at(NOW + 10), NOW + 1)
        .await
        .unwrap();
    s.record_outcomes(&[(batched.id, 1, ambiguous(NOW + 10))], NOW + 1)
        .await
        .unwrap();
    assert_eq!(s.claim_due(NOW + 10, LEASE, 10).await.unwrap().len(), 3);

    let uncertain = Admission::Proceed {
        attempt: 2,
        interrupted: false,
        uncertain: Some(Uncertain {
            first_started_at: NOW,
            last_started_at: NOW,
        }),
    };
    assert_eq!(
        s.begin_attempt(&timed_out, NOW + 11).await.unwrap(),
        uncertain
    );
    assert_eq!(
        s.begin_attempt(&refused, NOW + 11).await.unwrap(),
        proceed(2)
    );
    assert_eq!(
        s.begin_attempts(std::slice::from_ref(&batched), NOW + 11)
            .await
            .unwrap(),
        vec![uncertain]
    );

    let found = |sid: &str| AttemptOutcome::Reconciled {
        provider_message_id: sid.into(),
    };
    s.record_outcome(timed_out.id, 2, &found("SMfound1"), NOW + 12)
        .await
        .unwrap();
    s.record_outcomes(&[(batched.id, 2, found("SMfound3"))], NOW + 12)
        .await
        .unwrap();
    for (m, sid) in [(&timed_out, "SMfound1"), (&batched, "SMfound3")] {
        let r = get(&s, m.id).await;
        assert_eq!(r.status, MessageStatus::Sent);
        assert_eq!(r.provider_message_id.as_deref(), Some(sid));
        assert_eq!(r.history.len(), 2);
        let last = &r.history[1];
        assert_eq!(last.outcome, Some(OutcomeKind::Sent));
        assert_eq!(last.error_class.as_deref(), Some("reconciled"));
        assert_eq!(last.provider_message_id.as_deref(), Some(sid));
        assert_eq!(r.history[0].outcome, Some(OutcomeKind::Ambiguous));
    }
}

/// The console's reads: pages newest first by keyset (`before` the last of a page), filtered
/// by status and by an exact id, correlation id or recipient; failed messages grouped by
/// their last error's class, and the ids of one group.
async fn lists_page_newest_first_and_group_failures(db: &TestDb) {
    let s = db.store().await;
    // Seven messages created at NOW+1 .. NOW+7; the 2nd and 5th fail, the 4th is sent.
    let ms: Vec<OutboundMessage> = (1..=7).map(msg).collect();
    for (i, m) in ms.iter().enumerate() {
        s.begin_attempt(m, NOW + 1 + i as i64).await.unwrap();
    }
    for i in [1, 4] {
        s.record_outcome(ms[i].id, 1, &failed(), NOW + 20)
            .await
            .unwrap();
    }
    s.record_outcome(ms[3].id, 1, &sent("SM4"), NOW + 20)
        .await
        .unwrap();
    let page = |status, q: Option<&str>, before, limit| ListQuery {
        status,
        q: q.map(str::to_owned),
        before,
        limit,
    };
    let ids = |v: Vec<MessageSummary>| v.into_iter().map(|m| m.id).collect::<Vec<_>>();
    let first = s.list(&page(None, None, None, 3)).await.unwrap().unwrap();
    assert_eq!(ids(first.clone()), [ms[6].id, ms[5].id, ms[4].id]);
    let second = s
        .list(&page(None, None, Some(first[2].id), 3))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids(second.clone()), [ms[3].id, ms[2].id, ms[1].id]);
    let last = s
        .list(&page(None, None, Some(second[2].id), 3))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids(last), [ms[0].id]);
    assert_eq!(
        s.list(&page(None, None, Some(Uuid::new_v4()), 3))
            .await
            .unwrap(),
        None,
        "a cursor that names no message"
    );
    let failed_ones = s
        .list(&page(Some(MessageStatus::Failed), None, None, 10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids(failed_ones), [ms[4].id, ms[1].id]);
    for q in [
        ms[3].id.to_string(),
        ms[3].correlation_id.clone(),
        ms[3].to.clone(),
    ] {
        let found = s
            .list(&page(None, Some(&q), None, 10))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ids(found.clone()), [ms[3].id], "{q}");
        assert_eq!(found[0].status, MessageStatus::Sent);
        assert_eq!(found[0].provider_message_id.as_deref(), Some("SM4"));
    }
    let none = s
        .list(&page(
            Some(MessageStatus::Failed),
            Some(&ms[3].to),
            None,
            10,
        ))
        .await
        .unwrap()
        .unwrap();
    assert!(none.is_empty());

    let groups = s.failure_groups().await.unwrap();
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(
        (groups[0].error_class.as_str(), groups[0].count),
        ("http_400", 2)
    );
    assert_eq!(groups[0].latest_at, NOW + 20);
    assert_eq!(s.failed_of_class("http_400", 10).await.unwrap().len(), 2);
    assert_eq!(s.failed_of_class("http_400", 1).await.unwrap().len(), 1);
    assert!(s.failed_of_class("other", 10).await.unwrap().is_empty());
}

/// The delivery-rate monitor's read: final receipts since a time (each message once per
/// status and code, repeated callbacks too), and of the messages sent in a window those with
/// any receipt.
async fn delivery_window_counts_receipts_and_sends(db: &TestDb) {
    let s = db.store().await;
    let ms: Vec<OutboundMessage> = (1..=5).map(msg).collect();
    for (i, m) in ms.iter().enumerate() {
        s.begin_attempt(m, NOW).await.unwrap();
        // Sent at NOW+1 .. NOW+5.
        s.record_outcome(m.id, 1, &sent(&format!("SMw{i}")), NOW + 1 + i as i64)
            .await
            .unwrap();
    }
    let receipt = |sid: &'static str, status: &'static str, code: Option<i64>, at: i64| {
        let s = s.clone();
        async move { s.record_receipt(sid, status, code, at).await.unwrap() }
    };
    receipt("SMw0", "delivered", None, NOW + 10).await;
    receipt("SMw1", "undelivered", Some(30003), NOW + 10).await;
    receipt("SMw1", "undelivered", Some(30003), NOW + 11).await; // posted again
    receipt("SMw2", "sent", None, NOW + 10).await; // not final
    receipt("SMw3", "failed", Some(30005), NOW + 2).await; // before the window
    let w = s.delivery_window(NOW + 5, NOW + 1, NOW + 5).await.unwrap();
    let mut finals: Vec<(String, Option<i64>, i64)> = w
        .finals
        .iter()
        .map(|f| (f.status.clone(), f.error_code, f.messages))
        .collect();
    finals.sort();
    assert_eq!(
        finals,
        [
            ("delivered".to_string(), None, 1),
            ("undelivered".to_string(), Some(30003), 1)
        ]
    );
    // Sent from NOW+1 to before NOW+5: SMw0..SMw3, of which all four have a receipt.
    assert_eq!((w.sent, w.with_receipt), (4, 4));
    // Sent from NOW+3: SMw2, SMw3, SMw4; SMw4 has none.
    let w = s
        .delivery_window(NOW + 5, NOW + 3, NOW + 100)
        .await
        .unwrap();
    assert_eq!((w.sent, w.with_receipt), (3, 2));
    let w = s
        .delivery_window(NOW + 100, NOW + 100, NOW + 200)
        .await
        .unwrap();
    assert_eq!(w, DeliveryWindow::default());
}

/// Delivery receipts are kept as they come, found by the provider's id; the message's
/// delivery is the one that says the most (a late `sent` does not undo `delivered`); a
/// receipt for an unknown provider id is recorded nowhere.
async fn receipts_keep_what_says_the_most(db: &TestDb) {
    let s = db.store().await;
    let (a, b) = (msg(1), msg(2));
    for (m, sid) in [(&a, "SMa"), (&b, "SMb")] {
        s.begin_attempt(m, NOW).await.unwrap();
        s.record_outcome(m.id, 1, &sent(sid), NOW + 1)
            .await
            .unwrap();
    }
    assert_eq!(get(&s, a.id).await.delivery, None);
    assert_eq!(
        s.record_receipt("SMa", "delivered", None, NOW + 5)
            .await
            .unwrap(),
        Some(a.id)
    );
    assert_eq!(
        s.record_receipt("SMa", "sent", None, NOW + 6)
            .await
            .unwrap(),
        Some(a.id)
    );
    assert_eq!(
        s.record_receipt("SMb", "undelivered", Some(30003), NOW + 7)
            .await
            .unwrap(),
        Some(b.id)
    );
    assert_eq!(
        s.record_receipt("SMnobody", "delivered", None, NOW)
            .await
            .unwrap(),
        None
    );
    let r = get(&s, a.id).await;
    let statuses: Vec<&str> = r.receipts.iter().map(|x| x.status.as_str()).collect();
    assert_eq!(statuses, ["delivered", "sent"]);
    assert_eq!(
        r.delivery,
        Some(ReceiptRecord {
            status: "delivered".into(),
            error_code: None,
            received_at: NOW + 5,
        })
    );
    let r = get(&s, b.id).await;
    assert_eq!(r.delivery.as_ref().map(|d| d.error_code), Some(Some(30003)));
    // A provider id is another message's, or not.
    assert_eq!(
        s.other_with_provider_id("SMa", b.id).await.unwrap(),
        Some(a.id)
    );
    assert_eq!(s.other_with_provider_id("SMa", a.id).await.unwrap(), None);
    assert_eq!(
        s.other_with_provider_id("SMnobody", a.id).await.unwrap(),
        None
    );
    assert_eq!(
        r.status,
        MessageStatus::Sent,
        "drover's own status is apart"
    );
}

async fn batch_variants_match_single_ones(db: &TestDb) {
    let s = db.store().await;
    assert_eq!(s.begin_attempts(&[], NOW).await.unwrap(), vec![]);
    s.record_outcomes(&[], NOW).await.unwrap();

    // The same story twice, with different ids: once call by call, once in batches.
    let singles: Vec<OutboundMessage> = (0..6).map(msg).collect();
    let batched: Vec<OutboundMessage> = (0..6).map(msg).collect();

    let outcomes = |msgs: &[OutboundMessage]| -> Vec<(Uuid, u32, AttemptOutcome)> {
        vec![
            (msgs[0].id, 1, sent("SM0")),
            (msgs[1].id, 1, retry_at(NOW + 100)),
            (msgs[2].id, 1, failed()),
            (msgs[3].id, 1, deferred(NOW + 100)),
            (msgs[4].id, 1, ambiguous(NOW + 100)),
            (msgs[1].id, 1, sent("stale: already recorded")),
            (Uuid::new_v4(), 1, failed()),
            // msgs[5] stays sending
        ]
    };
    let again = |msgs: &[OutboundMessage]| -> Vec<OutboundMessage> {
        let mut list = msgs.to_vec();
        list.push(msgs[5].clone()); // twice in one batch
        list.push(OutboundMessage {
            body: "conflicting".into(),
            ..msgs[0].clone()
        });
        list
    };

    let mut single_admissions = Vec::new();
    for m in &singles {
        single_admissions.push(s.begin_attempt(m, NOW).await.unwrap());
    }
    let batch_admissions = s.begin_attempts(&batched, NOW).await.unwrap();
    assert_eq!(single_admissions, vec![proceed(1); 6]);
    assert_eq!(batch_admissions, single_admissions);

    for (id, attempt, outcome) in outcomes(&singles) {
        s.record_outcome(id, attempt, &outcome, NOW + 1)
            .await
            .unwrap();
    }
    s.record_outcomes(&outcomes(&batched), NOW + 1)
        .await
        .unwrap();

    let mut single_admissions = Vec::new();
    for m in again(&singles) {
        single_admissions.push(s.begin_attempt(&m, NOW + 2).await.unwrap());
    }
    let batch_admissions = s.begin_attempts(&again(&batched), NOW + 2).await.unwrap();
    let not_due = Admission::NotDue {
        next_attempt_at: NOW + 100,
    };
    assert_eq!(
        single_admissions,
        vec![
            Admission::AlreadySent {
                provider_message_id: Some("SM0".into())
            },
            not_due.clone(),
            Admission::AlreadyFailed {
                last_error: Some("not a mobile number".into()),
                last_error_class: Some("http_400".into())
            },
            not_due.clone(),
            not_due,
            interrupted(2, NOW, NOW),
            interrupted(3, NOW, NOW + 2),
            Admission::Conflict,
        ]
    );
    assert_eq!(batch_admissions, single_admissions);

    // A new id twice in one batch: the first occurrence is admitted and the second sees it
    // (this store's sending lease is 0: it takes it over as interrupted), as two single calls
    // would.
    let new_single = msg(10);
    let new_batched = OutboundMessage {
        id: Uuid::new_v4(),
        ..new_single.clone()
    };
    let single_admissions = vec![
        s.begin_attempt(&new_single, NOW + 3).await.unwrap(),
        s.begin_attempt(&new_single, NOW + 3).await.unwrap(),
    ];
    let batch_admissions = s
        .begin_attempts(&[new_batched.clone(), new_batched.clone()], NOW + 3)
        .await
        .unwrap();
    assert_eq!(
        single_admissions,
        vec![proceed(1), interrupted(2, NOW + 3, NOW + 3)]
    );
    assert_eq!(batch_admissions, single_admissions);

    let pairs = [
        (&singles[..], &batched[..]),
        (&[new_single][..], &[new_batched][..]),
    ];
    for (singles, batched) in pairs {
        for (single, batch) in singles.iter().zip(batched) {
            let mut single = get(&s, single.id).await;
            let mut batch = get(&s, batch.id).await;
            single.id = Uuid::nil();
            batch.id = Uuid::nil();
            assert_eq!(single, batch);
        }
    }
}

// -------------------------------------------------------------------------------------------
// Backend-independent

#[tokio::test]
async fn unreachable_postgres_is_unavailable_within_the_acquire_timeout() {
    let config = StoreConfig {
        url: "postgres://drover:drover@127.0.0.1:1/drover".into(),
        acquire_timeout_ms: 1000,
        ..StoreConfig::default()
    };
    let started = Instant::now();
    let err = Store::connect(&config)
        .await
        .expect_err("nothing listens on port 1");
    let elapsed = started.elapsed();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(elapsed < Duration::from_millis(3000), "took {elapsed:?}");
}

#[tokio::test]
async fn unopenable_sqlite_is_unavailable() {
    let dir = std::env::temp_dir().join(format!("drover-missing-{}", Uuid::new_v4().simple()));
    let config = StoreConfig {
        url: format!("sqlite://{}/drover.db?mode=rwc", dir.display()),
        acquire_timeout_ms: 1000,
        ..StoreConfig::default()
    };
    let err = Store::connect(&config)
        .await
        .expect_err("the directory does not exist");
    assert!(err.is_unavailable(), "{err:?}");
}

#[tokio::test]
async fn in_memory_sqlite_works_across_connections() {
    let config = StoreConfig {
        url: "sqlite::memory:".into(),
        ..StoreConfig::default()
    };
    let s = Store::connect(&config).await.unwrap();
    let msgs: Vec<OutboundMessage> = (0..20).map(msg).collect();
    // Concurrent operations use several connections of the pool: they must see one database.
    let results = futures::future::join_all(msgs.iter().map(|m| s.begin_attempt(m, NOW))).await;
    assert!(results.into_iter().all(|r| r.unwrap() == proceed(1)));
    assert_eq!(s.counts_by_status().await.unwrap()["sending"], 20);
}

#[tokio::test]
async fn configuration_errors_are_not_unavailable() {
    let defaults = StoreConfig::default();
    assert_eq!(defaults.url, "sqlite://drover.db?mode=rwc");
    assert_eq!(
        (
            defaults.max_connections,
            defaults.acquire_timeout_ms,
            defaults.schema
        ),
        (8, 5000, None)
    );

    let parsed: StoreConfig =
        serde_json::from_str(r#"{"url": "postgres://h/db", "schema": "drover"}"#).unwrap();
    assert_eq!(parsed.max_connections, 8);
    assert_eq!(parsed.schema.as_deref(), Some("drover"));
    assert!(
        serde_json::from_str::<StoreConfig>(r#"{"uri": "x"}"#).is_err(),
        "unknown fields are rejected"
    );

    let cases = [
        StoreConfig {
            url: "mysql://localhost/drover".into(),
            ..StoreConfig::default()
        },
        StoreConfig {
            schema: Some("drover".into()),
            ..StoreConfig::default()
        },
        StoreConfig {
            url: "postgres://drover:drover@127.0.0.1:1/drover".into(),
            schema: Some("Robert'); DROP TABLE students;--".into()),
            ..StoreConfig::default()
        },
        StoreConfig {
            max_connections: 0,
            ..StoreConfig::default()
        },
        StoreConfig {
            max_connections: 2,
            min_connections: 3,
            ..StoreConfig::default()
        },
    ];
    for config in cases {
        let err = Store::connect(&config)
            .await
            .expect_err("bad configuration");
        assert!(matches!(err, StoreError::Config(_)), "{config:?}: {err:?}");
        assert!(!err.is_unavailable());
    }
}

/// The store's futures can be spawned and held across `.await` in actors (compile-time check).
#[allow(dead_code)]
fn store_futures_are_send(store: &Store, m: &OutboundMessage, o: &AttemptOutcome) {
    fn is_send<T: Send>(_: T) {}
    is_send(Store::connect(&StoreConfig::default()));
    is_send(store.ping());
    is_send(store.begin_attempt(m, 0));
    is_send(store.begin_attempts(std::slice::from_ref(m), 0));
    is_send(store.record_outcome(m.id, 1, o, 0));
    is_send(store.record_outcomes(&[], 0));
    is_send(store.record_invalid(None, None, b"", "", 0));
    is_send(store.claim_due(0, 0, 1));
    is_send(store.release_claims(&[]));
    is_send(store.next_due_at());
    is_send(store.retry(m.id, 0));
    is_send(store.get(m.id));
    is_send(store.counts_by_status());
}
