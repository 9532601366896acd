//! Bounded waits: poll a condition every [`POLL`](super::POLL) under a timeout, never a bare sleep.

use super::*;

/// Poll `probe` every [`POLL`] until it returns `Ok`, for at most `limit`. `Err(state)` means
/// "not yet" and describes the current state, which the panic message shows on timeout.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let mut last = String::from("(never probed)");
    let waited = tokio::time::timeout(limit, async {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match probe().await {
                Ok(v) => return v,
                Err(state) => last = state,
            }
        }
    })
    .await;
    match waited {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}; last state: {last}"),
    }
}

/// Wait until the store's counts satisfy `done` (store errors count as "not yet": the
/// database may be restarting). Returns the counts.
pub async fn wait_counts(
    store: &Store,
    what: &str,
    limit: Duration,
    done: impl Fn(&BTreeMap<String, i64>) -> bool,
) -> BTreeMap<String, i64> {
    wait_for(what, limit, || async {
        match store.counts_by_status().await {
            Ok(c) if done(&c) => Ok(c),
            Ok(c) => Err(format!("{c:?}")),
            Err(e) => Err(format!("store error: {e}")),
        }
    })
    .await
}

/// `counts[status]`, 0 if absent.
pub fn count(counts: &BTreeMap<String, i64>, status: MessageStatus) -> i64 {
    counts.get(status.as_str()).copied().unwrap_or(0)
}

/// Sent + failed + invalid.
pub fn terminal(counts: &BTreeMap<String, i64>) -> i64 {
    count(counts, MessageStatus::Sent)
        + count(counts, MessageStatus::Failed)
        + count(counts, MessageStatus::Invalid)
}

/// Wait until message `id` has `status`; returns its record.
pub async fn wait_status(
    store: &Store,
    id: Uuid,
    status: MessageStatus,
    limit: Duration,
) -> MessageRecord {
    wait_for(&format!("message {id} to be {status}"), limit, || async {
        match store.get(id).await {
            Ok(Some(r)) if r.status == status => Ok(r),
            Ok(Some(r)) => Err(format!(
                "status {} after {} attempts, last error {:?}",
                r.status, r.attempts, r.last_error
            )),
            Ok(None) => Err("not in the store".into()),
            Err(e) => Err(format!("store error: {e}")),
        }
    })
    .await
}

/// Paths of the delivery workers alive right now (`root/broker/workers/delivery-N`).
pub fn delivery_workers(app: &App) -> Vec<String> {
    let snap = app.tree.snapshot();
    snap.find("root/broker/workers")
        .map(|w| w.children.iter().map(|c| c.path.clone()).collect())
        .unwrap_or_default()
}

/// Wait (at most 60 s) until a tenth of a load of `n` is sent: the load is flowing, and most
/// of it is still to come.
pub async fn wait_mid_load(store: &Store, n: usize) {
    wait_counts(
        store,
        "a tenth of the load sent",
        Duration::from_secs(60),
        |c| count(c, MessageStatus::Sent) >= (n / 10) as i64,
    )
    .await;
}
