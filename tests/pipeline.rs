//! End-to-end scenarios of the delivery pipeline: real RabbitMQ, real PostgreSQL, drover
//! started in-process with `drover::start`, and a local Twilio-compatible provider
//! (`support::MockProvider`). Test traffic is published straight to the work queue with a
//! broker connection of the test's own, so drover consumes it like production traffic.
//!
//! Each test has its own exchange, queues and schema (see `support::TestEnv`), so the tests
//! run in parallel. RabbitMQ and PostgreSQL must be running: when they are not, the tests fail
//! (they never skip). Every wait is bounded; nothing sleeps to synchronise.

mod support;

use std::time::Duration;

use drover_actors::message::{
    ATTEMPTS_HEADER, ERROR_CLASS_HEADER, INVALID_CLASS_HEADER, INVALID_REASON_HEADER,
};
use drover_actors::pipeline::scheduler;
use drover_actors::store::{MessageStatus, OutcomeKind, Store};
use drover_actors::tree::EventKind;
use support::{Rule, TestEnv, recipient, wait_counts, wait_for, wait_status};
use uuid::Uuid;

/// Bound of every wait for something that must happen.
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_sends_each_message_once_and_acks_it() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let store = env.store().await;
    let publisher = env.publisher().await;

    let msgs: Vec<(Uuid, String, String)> = (0..10)
        .map(|i| {
            (
                Uuid::new_v4(),
                recipient(100 + i),
                format!("order-{i}-{}", env.id),
            )
        })
        .collect();
    for (i, (id, to, corr)) in msgs.iter().enumerate() {
        publisher
            .publish_sms(*id, to, &format!("hello number {i}"), corr)
            .await;
    }
    let counts = wait_counts(&store, "10 messages sent", WAIT, |c| {
        support::count(c, MessageStatus::Sent) == 10
    })
    .await;
    assert_eq!(support::terminal(&counts), 10, "{counts:?}");

    for (i, (id, to, corr)) in msgs.iter().enumerate() {
        let calls = env.provider.calls_for(*id);
        assert_eq!(calls.len(), 1, "provider calls for {id}: {calls:?}");
        let call = &calls[0];
        assert_eq!(call.correlation_id.as_deref(), Some(corr.as_str()));
        assert_eq!(&call.to, to);
        assert_eq!(call.body, format!("hello number {i}"));
        assert_eq!(call.from.as_deref(), Some(support::SENDER));
        assert_eq!(call.attempt, Some(1));
        let rec = store.get(*id).await.unwrap().expect("stored");
        assert_eq!(rec.status, MessageStatus::Sent);
        assert_eq!(rec.attempts, 1);
        assert_eq!(rec.correlation_id, *corr);
        assert!(
            rec.provider_message_id
                .as_deref()
                .is_some_and(|s| s.starts_with("SM")),
            "{rec:?}"
        );
        // One attempt sent; any other was given back before the call (`deferred`: an
        // admission that outlasted the lease's slack), which sends and spends nothing.
        let outcomes: Vec<_> = rec.history.iter().map(|a| a.outcome).collect();
        assert_eq!(
            outcomes
                .iter()
                .filter(|o| **o == Some(OutcomeKind::Sent))
                .count(),
            1,
            "{outcomes:?}"
        );
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, Some(OutcomeKind::Sent | OutcomeKind::Deferred))),
            "{outcomes:?}"
        );
    }
    assert_eq!(env.provider.calls().len(), 10, "no other provider call");

    env.wait_drained(&app, WAIT).await;
    let stats = publisher
        .broker
        .queue_stats(&env.config.broker.work_queue)
        .await
        .unwrap();
    assert_eq!(stats.ready, 0);
    assert_eq!(stats.consumers, 1, "drover's one consumer");
    publisher.close().await;
    app.shutdown().await.expect("clean shutdown");
    env.assert_work_queue_empty_after_shutdown().await;
    store.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_with_growing_delays_then_sent() {
    let mut env = TestEnv::new().await;
    // A base long enough against the scheduler's poll that the two gaps cannot overlap: the
    // first retry in [base, base + slack], the second in [3 base, 3 base + slack].
    env.config.delivery.retry_base_ms = 400;
    env.config.scheduler.poll_ms = 50;
    let base = env.config.delivery.retry_base_ms as i64;
    // What may come on top of the delay: a poll, a republish, a delivery, an admission; on a
    // loaded 2-core machine a few hundred ms.
    let slack = 700;
    assert_eq!(env.config.delivery.retry_multiplier, 3.0);
    assert_eq!(env.config.delivery.retry_jitter, 0.0);
    let to = recipient(200);
    env.provider.set_for_recipient(&to, Rule::fail_first(2));
    let app = env.start().await;
    let store = env.store().await;
    let publisher = env.publisher().await;

    let id = Uuid::new_v4();
    publisher
        .publish_sms(id, &to, "try again", "transient-1")
        .await;
    let rec = wait_status(&store, id, MessageStatus::Sent, WAIT).await;

    assert_eq!(rec.attempts, 3, "{rec:?}");
    let outcomes: Vec<_> = rec.history.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        [
            Some(OutcomeKind::Retry),
            Some(OutcomeKind::Retry),
            Some(OutcomeKind::Sent)
        ],
        "{rec:?}"
    );
    assert_eq!(rec.history[0].error_class.as_deref(), Some("server_error"));
    // From the store's attempt history: the second attempt started at least `base` after the
    // first ended, the third at least 3 × base after the second ended.
    let (h1, h2, h3) = (&rec.history[0], &rec.history[1], &rec.history[2]);
    let gap1 = h2.started_at - h1.finished_at.expect("first attempt closed");
    let gap2 = h3.started_at - h2.finished_at.expect("second attempt closed");
    assert!(
        (base..=base + slack).contains(&gap1),
        "first retry after {gap1} ms, expected {base}..={} ms",
        base + slack
    );
    assert!(
        (3 * base..=3 * base + slack).contains(&gap2),
        "second retry after {gap2} ms, expected {}..={} ms (x3)",
        3 * base,
        3 * base + slack
    );

    // And from the provider's side: three calls, spaced likewise.
    let calls = env.provider.calls_for(id);
    let statuses: Vec<u16> = calls.iter().map(|c| c.status).collect();
    assert_eq!(statuses, [503, 503, 201]);
    let attempts: Vec<Option<u32>> = calls.iter().map(|c| c.attempt).collect();
    assert_eq!(attempts, [Some(1), Some(2), Some(3)]);
    let d1 = calls[1].at - calls[0].at;
    let d2 = calls[2].at - calls[1].at;
    let base_d = Duration::from_millis(base as u64);
    assert!(d1 >= base_d, "provider saw the first retry after {d1:?}");
    assert!(
        d2 >= 3 * base_d,
        "provider saw the second retry after {d2:?}"
    );
    let slack_d = Duration::from_millis(slack as u64);
    assert!(
        d1 <= base_d + slack_d && d2 <= 3 * base_d + slack_d,
        "retries are not held back: {d1:?}, {d2:?}"
    );
    println!("retry gaps: store {gap1} ms, {gap2} ms; provider {d1:?}, {d2:?}");

    env.wait_drained(&app, WAIT).await;
    publisher.close().await;
    app.shutdown().await.expect("clean shutdown");
    env.assert_work_queue_empty_after_shutdown().await;
    store.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failure_goes_straight_to_the_failed_queue() {
    let env = TestEnv::new().await;
    let to = recipient(300);
    env.provider.set_for_recipient(&to, Rule::reject(21211));
    let app = env.start().await;
    let store = env.store().await;
    let publisher = env.publisher().await;

    let id = Uuid::new_v4();
    publisher
        .publish_sms(id, &to, "no such number", "perm-1")
        .await;
    let rec = wait_status(&store, id, MessageStatus::Failed, WAIT).await;
    assert_eq!(rec.attempts, 1, "{rec:?}");
    assert_eq!(
        rec.last_error_class.as_deref(),
        Some("permanent"),
        "{rec:?}"
    );
    assert!(
        rec.last_error
            .as_deref()
            .is_some_and(|e| e.contains("21211")),
        "{rec:?}"
    );
    assert_eq!(env.provider.calls_for(id).len(), 1, "no retry");

    let failed = env
        .take(&env.config.broker.failed_queue, 1, WAIT)
        .await
        .remove(0);
    assert_eq!(failed.message_id.as_deref(), Some(id.to_string().as_str()));
    assert_eq!(
        failed.headers.get(ERROR_CLASS_HEADER).map(String::as_str),
        Some("permanent"),
        "{:?}",
        failed.headers
    );
    assert_eq!(
        failed.headers.get(ATTEMPTS_HEADER).map(String::as_str),
        Some("1")
    );
    let body: serde_json::Value = serde_json::from_slice(&failed.body).unwrap();
    assert_eq!(body["id"], id.to_string());
    assert_eq!(body["to"], to);

    env.wait_drained(&app, WAIT).await;
    assert_eq!(env.provider.calls_for(id).len(), 1, "still no retry");
    publisher.close().await;
    app.shutdown().await.expect("clean shutdown");
    env.assert_work_queue_empty_after_shutdown().await;
    store.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_attempts_go_to_the_failed_queue() {
    let mut env = TestEnv::new().await;
    env.config.delivery.max_attempts = 3;
    let to = recipient(400);
    env.provider
        .set_for_recipient(&to, Rule::always_unavailable());
    let app = env.start().await;
    let store = env.store().await;
    let publisher = env.publisher().await;

    let id = Uuid::new_v4();
    publisher
        .publish_sms(id, &to, "never works", "exhaust-1")
        .await;
    let rec = wait_status(&store, id, MessageStatus::Failed, WAIT).await;
    assert_eq!(rec.attempts, 3, "{rec:?}");
    assert_eq!(rec.history.len(), 3, "{rec:?}");
    assert_eq!(rec.history[2].outcome, Some(OutcomeKind::Failed));
    assert!(
        rec.last_error
            .as_deref()
            .is_some_and(|e| e.contains("gave up after 3 attempts")),
        "{rec:?}"
    );
    let calls = env.provider.calls_for(id);
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(calls.iter().all(|c| c.status == 503));

    let failed = env
        .take(&env.config.broker.failed_queue, 1, WAIT)
        .await
        .remove(0);
    assert_eq!(failed.message_id.as_deref(), Some(id.to_string().as_str()));
    assert_eq!(
        failed.headers.get(ERROR_CLASS_HEADER).map(String::as_str),
        Some("exhausted"),
        "{:?}",
        failed.headers
    );
    assert_eq!(
        failed.headers.get(ATTEMPTS_HEADER).map(String::as_str),
        Some("3")
    );

    env.wait_drained(&app, WAIT).await;
    assert_eq!(env.provider.calls_for(id).len(), 3, "no fourth attempt");
    publisher.close().await;
    app.shutdown().await.expect("clean shutdown");
    env.assert_work_queue_empty_after_shutdown().await;
    store.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_message_is_not_sent_twice() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let store = env.store().await;
    let publisher = env.publisher().await;
    let mut events = app.tree.subscribe();

    let id = Uuid::new_v4();
    let to = recipient(500);
    // The same JSON with the same id, twice in a row: the copies meet in the pipeline.
    publisher.publish_sms(id, &to, "only once", "dup-1").await;
    publisher.publish_sms(id, &to, "only once", "dup-1").await;
    wait_status(&store, id, MessageStatus::Sent, WAIT).await;
    env.wait_drained(&app, WAIT).await;
    assert_eq!(env.provider.calls_for(id).len(), 1);

    // And once more after it was sent: acked without calling the provider.
    let finished_before = count_finished_workers(&mut events);
    publisher.publish_sms(id, &to, "only once", "dup-1").await;
    wait_for(
        "the third copy to be handled by a delivery worker",
        WAIT,
        || {
            let n = count_finished_workers(&mut events);
            async move {
                if n > 0 {
                    Ok(())
                } else {
                    Err("no delivery worker finished yet".into())
                }
            }
        },
    )
    .await;
    env.wait_drained(&app, WAIT).await;

    let calls = env.provider.calls_for(id);
    assert_eq!(calls.len(), 1, "provider called once in all: {calls:?}");
    let rec = store.get(id).await.unwrap().expect("stored");
    assert_eq!(rec.status, MessageStatus::Sent);
    assert_eq!(rec.attempts, 1, "{rec:?}");
    assert_eq!(rec.history.len(), 1, "{rec:?}");
    println!("workers finished before the third copy: {finished_before}");

    publisher.close().await;
    app.shutdown().await.expect("clean shutdown");
    env.assert_work_queue_empty_after_shutdown().await;
    store.close().await;
    env.cleanup().await;
}

/// Delivery workers that finished (their `Stopped` event) since the last call.
fn count_finished_workers(
    events: &mut tokio::sync::broadcast::Receiver<drover_actors::tree::TreeEvent>,
) -> usize {
    let mut n = 0;
    while let Ok(e) = events.try_recv() {
        if e.path.starts_with("root/broker/workers/delivery-") && e.kind == EventKind::Stopped {
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_inputs_are_set_aside_and_the_queue_keeps_flowing() {
    let env = TestEnv::new().await;
    let max = env.config.message.max_body_chars;
    let app = env.start().await;
    let store = env.store().await;
    let publisher = env.publisher().await;

    // A message whose id the duplicate below reuses with another payload.
    let original = Uuid::new_v4();
    let to = recipient(600);
    publisher
        .publish_sms(original, &to, "the original", "orig-1")
        .await;
    wait_status(&store, original, MessageStatus::Sent, WAIT).await;

    struct Case {
        label: &'static str,
        body: Vec<u8>,
        class: &'static str,
        reason: String,
        /// The AMQP message id: invalid records are stored under it.
        mid: Uuid,
    }
    let case = |label, body: Vec<u8>, class, reason: &str| Case {
        label,
        body,
        class,
        reason: reason.to_owned(),
        mid: Uuid::new_v4(),
    };
    let cases = vec![
        case(
            "not UTF-8",
            b"\xff\xfe{\"to\":\"+15551234567\"}".to_vec(),
            "not_utf8",
            "not UTF-8",
        ),
        case(
            "not JSON",
            b"hello, this is not json".to_vec(),
            "not_json",
            "not a JSON object",
        ),
        case(
            "missing to",
            br#"{"body":"hi"}"#.to_vec(),
            "missing_field",
            "missing field `to`",
        ),
        case(
            "missing body",
            format!(r#"{{"to":"{to}"}}"#).into_bytes(),
            "missing_field",
            "missing field `body`",
        ),
        case(
            "empty body",
            format!(r#"{{"to":"{to}","body":""}}"#).into_bytes(),
            "empty_field",
            "empty field `body`",
        ),
        case(
            "non-E.164 to",
            br#"{"to":"555-1234","body":"hi"}"#.to_vec(),
            "bad_recipient",
            "not an E.164 number",
        ),
        case(
            "body over the limit",
            format!(r#"{{"to":"{to}","body":"{}"}}"#, "x".repeat(max + 1)).into_bytes(),
            "body_too_long",
            &format!("more than the limit of {max}"),
        ),
        case(
            "duplicate id, other payload",
            support::sms(original, &to, "a different text", "orig-1"),
            "duplicate_id",
            &format!("id {original} was already used for a different payload"),
        ),
    ];
    for c in &cases {
        publisher
            .publish(c.body.clone(), Some(&c.mid.to_string()), Some(c.label))
            .await;
    }
    // The queue keeps flowing: a valid message published after them is sent.
    let after = Uuid::new_v4();
    publisher
        .publish_sms(after, &recipient(601), "still flowing", "after-1")
        .await;
    wait_status(&store, after, MessageStatus::Sent, WAIT).await;
    let counts = wait_counts(&store, "8 invalid records", WAIT, |c| {
        support::count(c, MessageStatus::Invalid) == cases.len() as i64
    })
    .await;
    assert_eq!(
        support::count(&counts, MessageStatus::Sent),
        2,
        "{counts:?}"
    );

    let invalid = env
        .take(&env.config.broker.invalid_queue, cases.len(), WAIT)
        .await;
    for c in &cases {
        let mid = c.mid.to_string();
        let d = invalid
            .iter()
            .find(|d| d.message_id.as_deref() == Some(mid.as_str()))
            .unwrap_or_else(|| panic!("{}: not in the invalid queue", c.label));
        assert_eq!(d.body, c.body, "{}: the payload is kept as is", c.label);
        assert_eq!(
            d.correlation_id.as_deref(),
            Some(c.label),
            "{}: properties are kept",
            c.label
        );
        let reason = d
            .headers
            .get(INVALID_REASON_HEADER)
            .unwrap_or_else(|| panic!("{}: no reason header: {:?}", c.label, d.headers));
        assert!(
            reason.contains(&c.reason),
            "{}: reason {reason:?} should mention {:?}",
            c.label,
            c.reason
        );
        assert_eq!(
            d.headers.get(INVALID_CLASS_HEADER).map(String::as_str),
            Some(c.class),
            "{}",
            c.label
        );
        if c.class == "duplicate_id" {
            // The original is left alone; the duplicate is recorded under an id of its own.
            let orig = store.get(original).await.unwrap().expect("original");
            assert_eq!(orig.status, MessageStatus::Sent);
            assert_eq!(orig.body, "the original");
        } else {
            let rec = store
                .get(c.mid)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{}: not recorded under its message id", c.label));
            assert_eq!(rec.status, MessageStatus::Invalid, "{}", c.label);
            assert_eq!(
                rec.last_error.as_deref(),
                Some(reason.as_str()),
                "{}",
                c.label
            );
        }
    }
    assert_eq!(env.provider.calls_for(original).len(), 1);
    assert_eq!(env.provider.calls_for(after).len(), 1);
    assert_eq!(
        env.provider.calls().len(),
        2,
        "invalid input never reaches the provider"
    );

    env.wait_drained(&app, WAIT).await;
    publisher.close().await;
    app.shutdown().await.expect("clean shutdown");
    env.assert_work_queue_empty_after_shutdown().await;
    store.close().await;
    env.cleanup().await;
}

/// The embedded defaults (in-memory broker, SQLite), with only what must change for a test:
/// a temporary database file, a free port, and the provider pointed at the local mock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_defaults_accept_post_messages_and_send_it() {
    support::init_logging();
    let provider = support::MockProvider::start().await;
    let dir = std::env::temp_dir().join(format!("drover-test-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("drover.db");

    let mut config = drover::Config::default();
    assert_eq!(config.broker.url, "memory");
    assert!(config.store.url.starts_with("sqlite:"));
    assert!(config.startup.check);
    config.http.addr = "127.0.0.1:0".parse().unwrap();
    config.store.url = format!("sqlite://{}?mode=rwc", db.display());
    config.provider.kind = drover_actors::provider::ProviderKind::Twilio;
    config.provider.twilio.base_url = provider.base_url();
    config.provider.twilio.account_sid = support::ACCOUNT_SID.into();
    config.provider.twilio.auth_token = support::AUTH_TOKEN.into();
    config.provider.twilio.from = Some(support::SENDER.into());
    let app = drover::start(config.clone())
        .await
        .unwrap_or_else(|e| panic!("drover did not start on its embedded defaults: {e}"));
    assert!(app.addr.ip().is_loopback());

    let client = reqwest::Client::new();
    let resp = client
        .post(format!("http://{}/messages", app.addr))
        .header("content-type", "application/json")
        .body(r#"{"to":"+15557654321","body":"over http","correlation_id":"http-1"}"#)
        .send()
        .await
        .expect("POST /messages");
    assert_eq!(resp.status().as_u16(), 202);
    let answer: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(answer["correlation_id"], "http-1");
    let id: Uuid = answer["id"].as_str().unwrap().parse().unwrap();

    // An invalid one is refused at the door.
    let resp = client
        .post(format!("http://{}/messages", app.addr))
        .header("content-type", "application/json")
        .body(r#"{"to":"nope","body":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 422);

    let store: Store = drover_actors::pipeline::store_worker::store_of(&app.pipeline)
        .await
        .expect("drover's store");
    assert_eq!(store.backend(), "sqlite");
    let rec = wait_status(&store, id, MessageStatus::Sent, WAIT).await;
    assert_eq!(rec.correlation_id, "http-1");
    let calls = provider.calls_for(id);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].correlation_id.as_deref(), Some("http-1"));
    assert_eq!(calls[0].to, "+15557654321");
    assert_eq!(calls[0].body, "over http");
    wait_for("the in-memory work queue to drain", WAIT, || async {
        let workers = support::delivery_workers(&app).len();
        if workers == 0 {
            Ok(())
        } else {
            Err(format!("{workers} delivery workers"))
        }
    })
    .await;

    app.shutdown().await.expect("clean shutdown");
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_puts_a_failed_message_back_and_sends_it() {
    let env = TestEnv::new().await;
    let to = recipient(700);
    env.provider.set_for_recipient(&to, Rule::reject(21211));
    let app = env.start().await;
    let store = env.store().await;
    let publisher = env.publisher().await;

    let id = Uuid::new_v4();
    publisher
        .publish_sms(id, &to, "second chance", "retry-1")
        .await;
    wait_status(&store, id, MessageStatus::Failed, WAIT).await;
    env.take(&env.config.broker.failed_queue, 1, WAIT).await;
    assert_eq!(env.provider.calls_for(id).len(), 1);

    // Retrying something that is not failed is refused.
    assert!(
        !scheduler::retry(&app.pipeline, Uuid::new_v4())
            .await
            .expect("retry of an unknown id"),
    );
    // The provider works again; the operator puts the message back.
    env.provider.set_for_recipient(&to, Rule::accept());
    assert!(
        scheduler::retry(&app.pipeline, id)
            .await
            .expect("retry answered"),
        "the message was failed, so retry takes it"
    );
    let rec = wait_status(&store, id, MessageStatus::Sent, WAIT).await;
    let calls = env.provider.calls_for(id);
    let statuses: Vec<u16> = calls.iter().map(|c| c.status).collect();
    assert_eq!(statuses, [400, 201], "one rejected call, one accepted");
    assert_eq!(rec.history.len(), 2, "{rec:?}");
    assert_eq!(rec.history[1].outcome, Some(OutcomeKind::Sent));
    assert!(
        !scheduler::retry(&app.pipeline, id).await.unwrap(),
        "a sent message cannot be retried"
    );

    env.wait_drained(&app, WAIT).await;
    assert_eq!(env.provider.calls_for(id).len(), 2);
    publisher.close().await;
    app.shutdown().await.expect("clean shutdown");
    env.assert_work_queue_empty_after_shutdown().await;
    store.close().await;
    env.cleanup().await;
}
