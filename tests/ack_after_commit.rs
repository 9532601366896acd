//! Ack after commit on the failure paths, against RabbitMQ and PostgreSQL: the outcome's commit
//! refused after the provider answered, and the failed / invalid queue's publish left without
//! a confirm. In each case the work-queue delivery is not acked early (it is redelivered, or
//! still held by the broker while the publish is stuck), and after redelivery the outcome is
//! consistent: one terminal state in the store, the message where that state says it is.
//!
//! A publish without a confirm is made with RabbitMQ's memory alarm (a watermark of 0 blocks
//! every publisher), on a RabbitMQ node of the test's own ([`support::PrivateRabbit`]).

mod support;

use std::time::Duration;

use drover_actors::broker::Route;
use drover_actors::store::{MessageStatus, OutcomeKind};
use drover_actors::tree::{EventKind, TreeEvent};
use support::{PrivateRabbit, Rule, TestEnv, recipient, wait_for};
use tokio::sync::broadcast;
use uuid::Uuid;

const LIMIT: Duration = Duration::from_secs(60);

/// The outcome's commit refused (a trigger, the first two times the `sent` outcome is written)
/// after the provider accepted: the worker fails without acking, the delivery comes back, and
/// the message ends `sent` with the cut-off attempts recorded. The redeliveries ask the
/// provider first (reconciliation) and find the first send there: the provider is called once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_commit_after_the_provider_answered_is_not_acked() {
    let env = TestEnv::new().await;
    let schema = env
        .config
        .store
        .schema
        .clone()
        .expect("a schema of the test's own");
    let app = env.start().await;
    let pool = sqlx::PgPool::connect(&env.config.store.url).await.unwrap();
    // The schema name is a generated plain identifier: safe to splice.
    let ddl = format!(
        "CREATE SEQUENCE {schema}.refusals;
         CREATE FUNCTION {schema}.refuse_commit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF nextval('{schema}.refusals') <= 2 THEN
             RAISE EXCEPTION 'outcome commit refused by the test';
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_commit BEFORE UPDATE ON {schema}.messages FOR EACH ROW
         WHEN (NEW.status = 'sent' AND NEW.body = 'refused commit')
         EXECUTE FUNCTION {schema}.refuse_commit();"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(&pool)
        .await
        .unwrap();
    let store = env.store().await;
    let consumed_before = app.pipeline.ops.consumed();
    let publisher = env.publisher().await;
    let id = Uuid::new_v4();
    publisher
        .publish_sms(id, &recipient(1), "refused commit", "corr-commit")
        .await;
    wait_for("the message sent after its redelivery", LIMIT, || async {
        match store.get(id).await.unwrap() {
            Some(r) if r.status == MessageStatus::Sent => Ok(r),
            other => Err(format!("{:?}", other.map(|r| (r.status, r.history)))),
        }
    })
    .await;
    let rec = store.get(id).await.unwrap().unwrap();
    let sent = rec
        .history
        .iter()
        .filter(|a| a.outcome == Some(OutcomeKind::Sent))
        .count();
    assert_eq!(sent, 1, "one sent attempt: {:?}", rec.history);
    let calls = env.provider.calls_for(id).len();
    let cut = support::cut_off(&rec);
    assert!(
        cut >= 1,
        "the refused commit's send is recorded as cut off: {:?}",
        rec.history
    );
    assert_eq!(
        calls, 1,
        "found at the provider, not sent again: {:?}",
        rec.history
    );
    assert_eq!(
        rec.history.last().and_then(|a| a.error_class.as_deref()),
        Some("reconciled"),
        "{:?}",
        rec.history
    );
    assert!(
        app.pipeline.ops.consumed() - consumed_before >= 2,
        "redelivered: the first delivery was not acked"
    );
    let refusals: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT last_value FROM {schema}.refusals"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(refusals >= 2, "the trigger refused the commit ({refusals})");
    println!(
        "refused commit: {calls} provider calls, history {:?}",
        rec.history
            .iter()
            .map(|a| a.error_class.clone().unwrap_or_else(|| "sent".into()))
            .collect::<Vec<_>>()
    );
    pool.close().await;
    app.shutdown().await.unwrap();
    publisher.close().await;
    env.cleanup().await;
}

/// Wait for a delivery worker to exit with a reason that contains `what`.
async fn worker_exit(events: &mut broadcast::Receiver<TreeEvent>, what: &str) -> String {
    tokio::time::timeout(LIMIT, async {
        loop {
            match events.recv().await {
                Ok(TreeEvent {
                    path,
                    kind: EventKind::Exited { reason, .. },
                    ..
                }) if path.contains("/workers/") && reason.contains(what) => return reason,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event stream: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no worker exited with {what:?} within {LIMIT:?}"))
}

/// A message bound for the `route` queue (failed: a permanent provider refusal; invalid: a
/// bad recipient) whose publish there gets no confirm: the work-queue delivery stays with the
/// broker until the publish is confirmed; then the message is in that queue, the store agrees,
/// and the work queue is empty.
async fn a_publish_without_confirm_is_not_acked(route: Route) {
    let rabbit = PrivateRabbit::start().await;
    let mut env = TestEnv::new().await;
    env.config.broker.url = rabbit.url();
    env.config.broker.confirm_timeout_ms = 3_000;
    let id = Uuid::new_v4();
    let to = match route {
        Route::Failed => {
            let to = recipient(7);
            env.provider.set_for_recipient(&to, Rule::reject(21211));
            to
        }
        _ => "not a number".to_owned(),
    };
    // The message is queued (the test's connection declares the topology) before the alarm,
    // and drover starts after it: its connection is not blocked until it publishes, so it
    // consumes, and its publish to the failed or invalid queue is the first to hang.
    let publisher = env.publisher().await;
    publisher
        .publish(
            support::sms(id, &to, "no confirm", "corr-confirm"),
            Some(&id.to_string()),
            None,
        )
        .await;
    rabbit.ctl(&["set_vm_memory_high_watermark", "0"]).await;
    let app = env.start().await;
    let mut events = app.tree.subscribe();
    let store = env.store().await;
    let work = env.config.broker.work_queue.clone();
    let reason = worker_exit(&mut events, "not confirmed").await;
    assert!(reason.contains(&route.to_string()), "{reason}");
    let (ready, unacked) = rabbit.queue_counts(&work).await;
    assert_eq!(
        ready + unacked,
        1,
        "the delivery is still the broker's while its {route} publish is unconfirmed"
    );
    rabbit.ctl(&["set_vm_memory_high_watermark", "0.4"]).await;
    let want = match route {
        Route::Failed => MessageStatus::Failed,
        _ => MessageStatus::Invalid,
    };
    let queue = env.config.broker.queue(route).to_owned();
    wait_for("the message settled", LIMIT, || async {
        let status = store.get(id).await.unwrap().map(|r| r.status);
        let (ready, unacked) = rabbit.queue_counts(&work).await;
        let (there, _) = rabbit.queue_counts(&queue).await;
        if status == Some(want) && ready + unacked == 0 && there >= 1 {
            Ok(there)
        } else {
            Err(format!(
                "{status:?}, work {ready}+{unacked}, {queue} {there}"
            ))
        }
    })
    .await;
    let copies = env
        .take(&queue, rabbit.queue_counts(&queue).await.0 as usize, LIMIT)
        .await;
    assert!(
        copies
            .iter()
            .all(|d| d.message_id.as_deref() == Some(id.to_string().as_str())),
        "only this message in {queue}"
    );
    // The unconfirmed publish may have been stored before the alarm cleared: at-least-once.
    assert!((1..=2).contains(&copies.len()), "{} copies", copies.len());
    println!(
        "{route} publish without confirm: held by the broker until confirmed, then {} cop{} in {queue}",
        copies.len(),
        if copies.len() == 1 { "y" } else { "ies" }
    );
    app.shutdown().await.unwrap();
    publisher.close().await;
    env.cleanup().await;
    drop(rabbit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_queue_publish_without_confirm_is_not_acked() {
    a_publish_without_confirm_is_not_acked(Route::Failed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invalid_queue_publish_without_confirm_is_not_acked() {
    a_publish_without_confirm_is_not_acked(Route::Invalid).await;
}
