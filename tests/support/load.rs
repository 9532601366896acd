//! Test traffic and what a load must end as: messages, the test publisher, and the
//! sent-once-but-cut-off invariant.

use super::*;

/// A valid message as a publisher would put it on the work queue.
pub fn sms(id: Uuid, to: &str, body: &str, correlation_id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id.to_string(),
        "to": to,
        "body": body,
        "correlation_id": correlation_id,
    }))
    .expect("json")
}

/// The `n`-th test recipient: a valid E.164 number.
pub fn recipient(n: usize) -> String {
    format!("+1555{:07}", n % 10_000_000)
}

/// A publisher of test traffic: its own connection and confirm-mode channel, publishing to
/// the work queue exactly like production publishers do.
#[derive(Debug)]
pub struct TestPublisher {
    pub broker: Broker,
    pub publisher: Publisher,
}

impl TestPublisher {
    /// Publish `body` to the work queue with optional AMQP message / correlation ids; returns
    /// once RabbitMQ confirmed it.
    pub async fn publish(
        &self,
        body: Vec<u8>,
        message_id: Option<&str>,
        correlation_id: Option<&str>,
    ) {
        let mut out = Outgoing::new(body);
        out.message_id = message_id.map(str::to_owned);
        out.correlation_id = correlation_id.map(str::to_owned);
        self.publisher
            .publish(Route::Work, out)
            .await
            .unwrap_or_else(|e| panic!("publishing test traffic failed: {e}"));
    }

    /// Publish a valid message with this id (and the id as AMQP message id).
    pub async fn publish_sms(&self, id: Uuid, to: &str, body: &str, correlation_id: &str) {
        self.publish(
            sms(id, to, body, correlation_id),
            Some(&id.to_string()),
            Some(correlation_id),
        )
        .await;
    }

    /// Publish `ids.len()` valid messages (`load {i}`, correlation id `corr-{i}`), 64 confirms
    /// in flight at once. Sequential confirms of persistent messages cost a disk sync each
    /// (about 10 ms on a busy machine): published one by one, a load was consumed as fast as
    /// it was published, so a fault "mid-load" found it all sent.
    pub async fn publish_load(&self, ids: &[Uuid]) {
        use futures::StreamExt as _;
        futures::stream::iter(ids.iter().enumerate())
            .map(|(i, id)| async move {
                self.publish_sms(
                    *id,
                    &recipient(i),
                    &format!("load {i}"),
                    &format!("corr-{i}"),
                )
                .await;
            })
            .buffer_unordered(64)
            .collect::<Vec<()>>()
            .await;
    }

    pub async fn close(self) {
        let _ = self.broker.close().await;
    }
}

/// Attempts of a record cut off mid-call (`interrupted`: its worker or process died;
/// `ambiguous`: the provider may have taken it): the only ones that may have sent it twice.
pub fn cut_off(rec: &MessageRecord) -> usize {
    rec.history
        .iter()
        .filter(|a| matches!(a.error_class.as_deref(), Some("interrupted" | "ambiguous")))
        .count()
}

/// What the invariants of a finished load found: how many messages reached the provider more
/// than once in all, and how many attempts were cut off.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadTally {
    pub duplicates: usize,
    pub cut_off: usize,
}

/// Every one of `ids` recorded `sent` and reached the provider, and a message reached it more
/// than once only as often as it had attempts cut off.
pub async fn assert_all_sent_once_but_cut_off(
    store: &Store,
    provider: &MockProvider,
    ids: &[Uuid],
) -> LoadTally {
    let calls: HashMap<String, usize> = provider
        .tally()
        .into_iter()
        .map(|(k, (calls, _))| (k, calls))
        .collect();
    let mut t = LoadTally::default();
    for id in ids {
        let rec = store
            .get(*id)
            .await
            .unwrap()
            .expect("every message is recorded");
        assert_eq!(rec.status, MessageStatus::Sent, "{id}");
        let n = calls.get(&id.to_string()).copied().unwrap_or(0);
        assert!(n >= 1, "{id} never reached the provider");
        let cut = cut_off(&rec);
        assert!(
            n - 1 <= cut,
            "{id}: {n} provider calls with {cut} cut-off attempts: {:?}",
            rec.history
        );
        t.duplicates += n - 1;
        t.cut_off += cut;
    }
    t
}

/// Right after a fault ended: the load of `total` was not over yet (the fault overlapped
/// messages in flight, not an idle pipeline), and it goes on: at least `step` more messages
/// (or the rest) become terminal after it, within `limit`. Returns (done at the fault's end,
/// done after the step).
pub async fn assert_flowing_after(
    store: &Store,
    what: &str,
    total: usize,
    step: i64,
    limit: Duration,
) -> (i64, i64) {
    // The store may itself be coming back (a PostgreSQL restart): the first answer counts.
    let c = wait_counts(store, "the store to answer", limit, |_| true).await;
    let done = terminal(&c);
    assert!(
        done < total as i64,
        "the load was over when {what} ended ({done} of {total} done): it hit an idle pipeline"
    );
    let goal = (done + step).min(total as i64);
    let c = wait_counts(store, &format!("progress after {what}"), limit, |c| {
        terminal(c) >= goal
    })
    .await;
    println!(
        "[{what}] {done}/{total} done when it ended, {} after",
        terminal(&c)
    );
    (done, terminal(&c))
}
