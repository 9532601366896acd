//! The store's operations, each within a transaction the caller opened.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::StoreError;
use super::db::{Arg, Tx, db_row};
use super::types::{
    Admission, AttemptOutcome, AttemptRecord, DeliveryWindow, FailureGroup, FinalCount, ListQuery,
    MessageRecord, MessageStatus, MessageSummary, OutcomeKind, ReceiptRecord, Uncertain,
};
use crate::message::OutboundMessage;

use Arg::{Int, OptInt, OptText, Text};

/// Every column of `messages`, in [`MessageRow`] order.
macro_rules! message_columns {
    () => {
        "id, correlation_id, recipient, body, sender, status, attempts, next_attempt_at, \
         last_error, last_error_class, provider_message_id, created_at, updated_at, claimed_until, \
         segments, body_truncated"
    };
}

db_row! {
    /// A `messages` row.
    struct MessageRow {
        id: String,
        correlation_id: String,
        recipient: String,
        body: String,
        sender: Option<String>,
        status: String,
        attempts: i32,
        next_attempt_at: Option<i64>,
        last_error: Option<String>,
        last_error_class: Option<String>,
        provider_message_id: Option<String>,
        created_at: i64,
        updated_at: i64,
        claimed_until: Option<i64>,
        segments: Option<i32>,
        body_truncated: i32,
    }
}

db_row! {
    /// An `attempts` row (without the message id).
    struct AttemptRow {
        attempt: i32,
        started_at: i64,
        finished_at: Option<i64>,
        outcome: Option<String>,
        error_class: Option<String>,
        error: Option<String>,
        latency_ms: Option<i64>,
        provider_message_id: Option<String>,
        provider: Option<String>,
    }
}

db_row! {
    /// When a message's ambiguous attempts started ([`UNCERTAIN_ATTEMPTS`]).
    struct UncertainRow {
        first_started_at: Option<i64>,
        last_started_at: Option<i64>,
    }
}

db_row! {
    /// A `receipts` row (without the message id).
    struct ReceiptRow {
        status: String,
        error_code: Option<i64>,
        received_at: i64,
    }
}

db_row! {
    /// The message a receipt was recorded for.
    struct ReceiptIdRow {
        message_id: String,
    }
}

db_row! {
    /// What `claim_due` returns per row.
    struct ClaimedRow {
        id: String,
        correlation_id: String,
        recipient: String,
        body: String,
        sender: Option<String>,
        attempts: i32,
        next_attempt_at: Option<i64>,
    }
}

db_row! {
    /// A message's payload.
    struct PayloadRow {
        id: String,
        correlation_id: String,
        recipient: String,
        body: String,
        sender: Option<String>,
    }
}

db_row! {
    /// The part of a row `record_invalid` compares.
    struct InvalidCheckRow {
        status: String,
        body: String,
    }
}

db_row! {
    /// One `GROUP BY status` row.
    struct StatusCountRow {
        status: String,
        n: i64,
    }
}

db_row! {
    /// The two candidates for `next_due_at`.
    struct DueRow {
        next_retry: Option<i64>,
        next_reclaim: Option<i64>,
    }
}

// ---------------------------------------------------------------------------------------------
// begin_attempt

const INSERT_SENDING: &str = "\
INSERT INTO messages (id, correlation_id, recipient, body, sender, status, attempts, created_at, updated_at,
                      segments)
VALUES ($1, $2, $3, $4, $5, 'sending', 1, $6, $6, $7)
ON CONFLICT (id) DO NOTHING";

const SELECT_MESSAGE_FOR_UPDATE_PG: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE id = $1 FOR UPDATE"
);

const SELECT_MESSAGE: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE id = $1"
);

/// Open the next attempt row of message `$1`, started at `$2`.
const INSERT_ATTEMPT: &str = "\
INSERT INTO attempts (message_id, attempt, started_at)
SELECT $1, COALESCE(MAX(attempt), 0) + 1, $2 FROM attempts WHERE message_id = $1";

/// Close the attempts of message `$1` that never got an outcome: their worker died.
const MARK_INTERRUPTED: &str = "\
UPDATE attempts
SET outcome = 'ambiguous', error_class = 'interrupted',
    error = 'the worker stopped before recording an outcome', finished_at = $2
WHERE message_id = $1 AND outcome IS NULL";

/// When the message's attempts recorded `ambiguous` (an interrupted one included, marked just
/// before) started: the first and the last (both NULL when there is none).
const UNCERTAIN_ATTEMPTS: &str = "\
SELECT MIN(started_at) AS first_started_at, MAX(started_at) AS last_started_at
FROM attempts WHERE message_id = $1 AND outcome = 'ambiguous'";

const ADMIT: &str = "\
UPDATE messages
SET status = 'sending', attempts = attempts + 1, next_attempt_at = NULL, claimed_until = NULL,
    updated_at = $2
WHERE id = $1";

pub(super) async fn begin_one(
    tx: &mut Tx,
    msg: &OutboundMessage,
    now_ms: i64,
    sending_lease_ms: i64,
) -> Result<Admission, StoreError> {
    let id = msg.id.to_string();
    let inserted = tx
        .execute(
            INSERT_SENDING,
            &[
                Text(&id),
                Text(&msg.correlation_id),
                Text(&msg.to),
                Text(&msg.body),
                OptText(msg.from.as_deref()),
                Int(now_ms),
                Int(i64::from(msg.segments())),
            ],
        )
        .await?;
    if inserted == 1 {
        tx.execute(INSERT_ATTEMPT, &[Text(&id), Int(now_ms)])
            .await?;
        return Ok(Admission::Proceed {
            attempt: 1,
            interrupted: false,
            uncertain: None,
        });
    }

    // It exists: lock it (PostgreSQL; SQLite's `BEGIN IMMEDIATE` already serializes writers).
    let select = tx.pick(SELECT_MESSAGE_FOR_UPDATE_PG, SELECT_MESSAGE);
    let row: MessageRow = tx
        .fetch_optional(select, &[Text(&id)])
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("message {id} vanished during admission")))?;
    let status = parse_status(&row.status)?;
    if status == MessageStatus::Invalid {
        return Ok(Admission::AlreadyInvalid);
    }
    if row.recipient != msg.to || row.body != msg.body || row.sender != msg.from {
        return Ok(Admission::Conflict);
    }
    Ok(match status {
        MessageStatus::Sent => Admission::AlreadySent {
            provider_message_id: row.provider_message_id,
        },
        MessageStatus::Failed => Admission::AlreadyFailed {
            last_error: row.last_error,
            last_error_class: row.last_error_class,
        },
        MessageStatus::RetryScheduled => Admission::NotDue {
            next_attempt_at: row.next_attempt_at.unwrap_or(now_ms),
        },
        MessageStatus::Sending if row.updated_at + sending_lease_ms > now_ms => {
            Admission::InFlight {
                since: row.updated_at,
            }
        }
        MessageStatus::Queued | MessageStatus::Sending => {
            let interrupted = status == MessageStatus::Sending;
            if interrupted {
                tx.execute(MARK_INTERRUPTED, &[Text(&id), Int(now_ms)])
                    .await?;
            }
            // Before the new attempt row: the attempts so far whose fate is unknown.
            let uncertain = tx
                .fetch_optional::<UncertainRow>(UNCERTAIN_ATTEMPTS, &[Text(&id)])
                .await?
                .and_then(|r| match (r.first_started_at, r.last_started_at) {
                    (Some(first_started_at), Some(last_started_at)) => Some(Uncertain {
                        first_started_at,
                        last_started_at,
                    }),
                    _ => None,
                });
            tx.execute(ADMIT, &[Text(&id), Int(now_ms)]).await?;
            tx.execute(INSERT_ATTEMPT, &[Text(&id), Int(now_ms)])
                .await?;
            Admission::Proceed {
                attempt: to_u32(row.attempts, "attempts")?.saturating_add(1),
                interrupted,
                uncertain,
            }
        }
        MessageStatus::Invalid => Admission::AlreadyInvalid,
    })
}

// ---------------------------------------------------------------------------------------------
// record_outcome

// Each applies only to a message that is `sending` with attempts = $2.

const OUTCOME_SENT: &str = "\
UPDATE messages
SET status = 'sent', provider_message_id = $3, next_attempt_at = NULL, claimed_until = NULL,
    updated_at = $4
WHERE id = $1 AND status = 'sending' AND attempts = $2";

const OUTCOME_RETRY: &str = "\
UPDATE messages
SET status = 'retry_scheduled', next_attempt_at = $3, last_error = $4, last_error_class = $5,
    updated_at = $6
WHERE id = $1 AND status = 'sending' AND attempts = $2";

const OUTCOME_FAILED: &str = "\
UPDATE messages
SET status = 'failed', next_attempt_at = NULL, last_error = $3, last_error_class = $4,
    updated_at = $5
WHERE id = $1 AND status = 'sending' AND attempts = $2";

const OUTCOME_DEFERRED: &str = "\
UPDATE messages
SET status = 'retry_scheduled', attempts = attempts - 1, next_attempt_at = $3, last_error = $4,
    last_error_class = 'deferred', updated_at = $5
WHERE id = $1 AND status = 'sending' AND attempts = $2";

const OUTCOME_AMBIGUOUS: &str = "\
UPDATE messages
SET status = 'retry_scheduled', next_attempt_at = $3, last_error = $4,
    last_error_class = 'ambiguous', updated_at = $5
WHERE id = $1 AND status = 'sending' AND attempts = $2";

/// The attempt row of a [`AttemptOutcome::Reconciled`]: its error class and note.
pub(super) const RECONCILED_CLASS: &str = "reconciled";
pub(super) const RECONCILED_NOTE: &str =
    "an earlier attempt reached the provider (found by asking it); not sent again";

/// Close the latest attempt row of message `$1`.
const CLOSE_ATTEMPT: &str = "\
UPDATE attempts
SET finished_at = $2, outcome = $3, error_class = $4, error = $5, latency_ms = $6,
    provider_message_id = $7, provider = $8
WHERE message_id = $1 AND attempt = (SELECT MAX(attempt) FROM attempts WHERE message_id = $1)";

/// An outcome for an attempt that is no longer current: logged, nothing changes.
pub(super) fn stale_outcome(id: Uuid, attempt: u32, outcome: &AttemptOutcome) {
    tracing::warn!(
        message_id = %id,
        attempt,
        outcome = outcome.kind().as_str(),
        "stale attempt outcome ignored: the message is not sending with that attempt"
    );
}

pub(super) async fn record_one(
    tx: &mut Tx,
    id: Uuid,
    attempt: u32,
    outcome: &AttemptOutcome,
    now_ms: i64,
) -> Result<(), StoreError> {
    let id_text = id.to_string();
    let id_arg = Text(&id_text);
    let attempt_arg = Int(i64::from(attempt));
    let now = Int(now_ms);
    // (update of messages, then the attempt row's error_class, error, latency, provider id)
    let (updated, error_class, error, latency_ms, provider_message_id) = match outcome {
        AttemptOutcome::Sent {
            provider_message_id,
            latency_ms,
            ..
        } => {
            let args = [id_arg, attempt_arg, Text(provider_message_id), now];
            let n = tx.execute(OUTCOME_SENT, &args).await?;
            (
                n,
                None,
                None,
                Some(*latency_ms),
                Some(provider_message_id.as_str()),
            )
        }
        AttemptOutcome::Reconciled {
            provider_message_id,
        } => {
            let args = [id_arg, attempt_arg, Text(provider_message_id), now];
            let n = tx.execute(OUTCOME_SENT, &args).await?;
            (
                n,
                Some(RECONCILED_CLASS),
                Some(RECONCILED_NOTE),
                Some(0),
                Some(provider_message_id.as_str()),
            )
        }
        AttemptOutcome::Retry {
            next_attempt_at,
            error_class,
            error,
            latency_ms,
            ..
        } => {
            let args = [
                id_arg,
                attempt_arg,
                Int(*next_attempt_at),
                Text(error),
                Text(error_class),
                now,
            ];
            let n = tx.execute(OUTCOME_RETRY, &args).await?;
            (
                n,
                Some(error_class.as_str()),
                Some(error.as_str()),
                Some(*latency_ms),
                None,
            )
        }
        AttemptOutcome::Failed {
            error_class,
            error,
            latency_ms,
            ..
        } => {
            let args = [id_arg, attempt_arg, Text(error), Text(error_class), now];
            let n = tx.execute(OUTCOME_FAILED, &args).await?;
            (
                n,
                Some(error_class.as_str()),
                Some(error.as_str()),
                Some(*latency_ms),
                None,
            )
        }
        AttemptOutcome::Deferred {
            next_attempt_at,
            reason,
        } => {
            let args = [
                id_arg,
                attempt_arg,
                Int(*next_attempt_at),
                Text(reason),
                now,
            ];
            let n = tx.execute(OUTCOME_DEFERRED, &args).await?;
            (n, Some("deferred"), Some(reason.as_str()), None, None)
        }
        AttemptOutcome::Ambiguous {
            next_attempt_at,
            error,
            latency_ms,
            ..
        } => {
            let args = [id_arg, attempt_arg, Int(*next_attempt_at), Text(error), now];
            let n = tx.execute(OUTCOME_AMBIGUOUS, &args).await?;
            (
                n,
                Some("ambiguous"),
                Some(error.as_str()),
                Some(*latency_ms),
                None,
            )
        }
    };
    if updated == 0 {
        stale_outcome(id, attempt, outcome);
        return Ok(());
    }
    tx.execute(
        CLOSE_ATTEMPT,
        &[
            id_arg,
            now,
            Text(outcome.kind().as_str()),
            OptText(error_class),
            OptText(error),
            OptInt(latency_ms.map(|l| i64::try_from(l).unwrap_or(i64::MAX))),
            OptText(provider_message_id),
            OptText(outcome.provider()),
        ],
    )
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// record_invalid

const INSERT_INVALID: &str = "\
INSERT INTO messages (id, correlation_id, recipient, body, status, attempts, last_error,
                      last_error_class, created_at, updated_at, body_truncated)
VALUES ($1, $2, '', $3, 'invalid', 0, $4, $6, $5, $5, $7)
ON CONFLICT (id) DO NOTHING";

const SELECT_INVALID_CHECK: &str = "SELECT status, body FROM messages WHERE id = $1";

/// Text PostgreSQL can store (no NUL), bounded.
fn storable(s: &str, max: usize) -> String {
    crate::message::truncate_utf8(&s.replace('\0', "\u{FFFD}"), max).into_owned()
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn record_invalid(
    tx: &mut Tx,
    id: Option<Uuid>,
    correlation_id: Option<&str>,
    raw: &[u8],
    reason: &str,
    class: &str,
    now_ms: i64,
    max_body_bytes: usize,
) -> Result<Uuid, StoreError> {
    // Bounded whatever the input: the payload cut to the limit (and flagged), NUL replaced
    // (PostgreSQL text cannot hold it) in every text column, ids and reasons cut short.
    let truncated = raw.len() > max_body_bytes;
    let kept = &raw[..raw.len().min(max_body_bytes)];
    let body = String::from_utf8_lossy(kept).replace('\0', "\u{FFFD}");
    let reason = storable(reason, crate::message::MAX_REASON_BYTES);
    // With no id of its own, a payload is recorded under an id derived from it, so a
    // redelivery finds its record instead of adding one.
    let wanted = id.unwrap_or_else(|| crate::message::invalid_payload_id(raw));
    let correlation = correlation_id
        .map(|c| storable(c, crate::message::AMQP_SHORT_STRING_MAX))
        .unwrap_or_else(|| wanted.to_string());
    let insert = |row_id: Uuid| InvalidRow {
        id: row_id.to_string(),
        correlation_id: &correlation,
        body: &body,
        reason: &reason,
        class,
        now_ms,
        truncated,
    };
    // The id it claims, then one derived from that id and the payload (the claimed id
    // belongs to another message), so a redelivery is recognised either way.
    let derived = Uuid::new_v5(&wanted, raw);
    for candidate in [wanted, derived] {
        if insert(candidate).write(tx).await? == 1 {
            return Ok(candidate);
        }
        let text = candidate.to_string();
        let existing: Option<InvalidCheckRow> = tx
            .fetch_optional(SELECT_INVALID_CHECK, &[Text(&text)])
            .await?;
        if let Some(existing) = existing
            && existing.status == MessageStatus::Invalid.as_str()
            && existing.body == body
        {
            // The same invalid payload again (a redelivery): already recorded.
            return Ok(candidate);
        }
    }
    let fresh = Uuid::new_v4();
    if insert(fresh).write(tx).await? != 1 {
        return Err(StoreError::Corrupt(format!(
            "fresh id {fresh} already in use"
        )));
    }
    Ok(fresh)
}

/// An invalid row to insert (if its id is free).
struct InvalidRow<'a> {
    id: String,
    correlation_id: &'a str,
    body: &'a str,
    reason: &'a str,
    class: &'a str,
    now_ms: i64,
    truncated: bool,
}

impl InvalidRow<'_> {
    /// Insert unless the id is taken; rows inserted (0 or 1).
    async fn write(&self, tx: &mut Tx) -> Result<u64, StoreError> {
        let args = [
            Text(&self.id),
            Text(self.correlation_id),
            Text(self.body),
            Text(self.reason),
            Int(self.now_ms),
            Text(self.class),
            Int(i64::from(self.truncated)),
        ];
        Ok(tx.execute(INSERT_INVALID, &args).await?)
    }
}

/// Close a message's open attempts as interrupted and set it aside (`invalid`, class
/// `poison`), if it is still in play (queued, sending or retry_scheduled).
const QUARANTINE: &str = "\
UPDATE messages
SET status = 'invalid', last_error = $2, last_error_class = 'poison', next_attempt_at = NULL,
    claimed_until = NULL, updated_at = $3
WHERE id = $1 AND status IN ('queued', 'sending', 'retry_scheduled')";

pub(super) async fn quarantine(
    tx: &mut Tx,
    id: Uuid,
    reason: &str,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let id = id.to_string();
    let reason = storable(reason, crate::message::MAX_REASON_BYTES);
    let changed = tx
        .execute(QUARANTINE, &[Text(&id), Text(&reason), Int(now_ms)])
        .await?;
    if changed == 1 {
        tx.execute(MARK_INTERRUPTED, &[Text(&id), Int(now_ms)])
            .await?;
    }
    Ok(changed == 1)
}

// ---------------------------------------------------------------------------------------------
// Scheduler

/// `$1` now, `$2` claimed_until, `$3` limit.
const CLAIM_DUE_PG: &str = "\
WITH due AS (
    SELECT id FROM messages
    WHERE (status = 'retry_scheduled' AND next_attempt_at <= $1)
       OR (status = 'queued' AND claimed_until <= $1)
    ORDER BY next_attempt_at, id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE messages AS m
SET status = 'queued', claimed_until = $2, updated_at = $1
FROM due
WHERE m.id = due.id
RETURNING m.id, m.correlation_id, m.recipient, m.body, m.sender, m.attempts, m.next_attempt_at";

const CLAIM_DUE_SQLITE: &str = "\
UPDATE messages
SET status = 'queued', claimed_until = $2, updated_at = $1
WHERE id IN (
    SELECT id FROM messages
    WHERE (status = 'retry_scheduled' AND next_attempt_at <= $1)
       OR (status = 'queued' AND claimed_until <= $1)
    ORDER BY next_attempt_at, id
    LIMIT $3
)
RETURNING id, correlation_id, recipient, body, sender, attempts, next_attempt_at";

pub(super) async fn claim_due(
    tx: &mut Tx,
    now_ms: i64,
    lease_ms: i64,
    limit: i64,
) -> Result<Vec<(OutboundMessage, u32)>, StoreError> {
    let sql = tx.pick(CLAIM_DUE_PG, CLAIM_DUE_SQLITE);
    let args = [
        Int(now_ms),
        Int(now_ms.saturating_add(lease_ms)),
        Int(limit),
    ];
    let mut rows: Vec<ClaimedRow> = tx.fetch_all(sql, &args).await?;
    rows.sort_by(|a, b| (a.next_attempt_at, &a.id).cmp(&(b.next_attempt_at, &b.id)));
    rows.into_iter()
        .map(|r| {
            let attempts = to_u32(r.attempts, "attempts")?;
            let msg = outbound(PayloadRow {
                id: r.id,
                correlation_id: r.correlation_id,
                recipient: r.recipient,
                body: r.body,
                sender: r.sender,
            })?;
            Ok((msg, attempts))
        })
        .collect()
}

const RELEASE_CLAIM: &str =
    "UPDATE messages SET claimed_until = NULL WHERE id = $1 AND status = 'queued'";

pub(super) async fn release_claim(tx: &mut Tx, id: Uuid) -> Result<(), StoreError> {
    let id = id.to_string();
    tx.execute(RELEASE_CLAIM, &[Text(&id)]).await?;
    Ok(())
}

const NEXT_DUE: &str = "\
SELECT
    (SELECT MIN(next_attempt_at) FROM messages WHERE status = 'retry_scheduled') AS next_retry,
    (SELECT MIN(claimed_until) FROM messages WHERE status = 'queued') AS next_reclaim";

pub(super) async fn next_due_at(tx: &mut Tx) -> Result<Option<i64>, StoreError> {
    let row: Option<DueRow> = tx.fetch_optional(NEXT_DUE, &[]).await?;
    Ok(row.and_then(|r| match (r.next_retry, r.next_reclaim) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }))
}

const RETRY_FAILED: &str = "\
UPDATE messages
SET status = 'retry_scheduled', next_attempt_at = $2, attempts = 0, claimed_until = NULL,
    updated_at = $2
WHERE id = $1 AND status = 'failed'
RETURNING id, correlation_id, recipient, body, sender";

pub(super) async fn retry(
    tx: &mut Tx,
    id: Uuid,
    now_ms: i64,
) -> Result<Option<OutboundMessage>, StoreError> {
    let id = id.to_string();
    let row: Option<PayloadRow> = tx
        .fetch_optional(RETRY_FAILED, &[Text(&id), Int(now_ms)])
        .await?;
    row.map(outbound).transpose()
}

// ---------------------------------------------------------------------------------------------
// Reads

const SELECT_RECEIPTS: &str = "\
SELECT status, error_code, received_at FROM receipts WHERE message_id = $1 ORDER BY seq";

/// A receipt for the message(s) the provider knows as `$1`.
const RECORD_RECEIPT: &str = "\
INSERT INTO receipts (message_id, received_at, status, error_code)
SELECT id, $2, $3, $4 FROM messages WHERE provider_message_id = $1
RETURNING message_id";

/// Record a delivery receipt for the message the provider knows as `provider_message_id`;
/// the ids it was recorded for (none for a sid no message has).
pub(super) async fn record_receipt(
    tx: &mut Tx,
    provider_message_id: &str,
    status: &str,
    error_code: Option<i64>,
    now_ms: i64,
) -> Result<Vec<Uuid>, StoreError> {
    let rows: Vec<ReceiptIdRow> = tx
        .fetch_all(
            RECORD_RECEIPT,
            &[
                Text(provider_message_id),
                Int(now_ms),
                Text(status),
                OptInt(error_code),
            ],
        )
        .await?;
    rows.iter().map(|r| parse_id(&r.message_id)).collect()
}

db_row! {
    /// Final receipts of one status and code.
    struct FinalCountRow {
        status: String,
        error_code: Option<i64>,
        n: i64,
    }
}

db_row! {
    /// Messages sent in a window, and how many have a receipt.
    struct SentWindowRow {
        sent: i64,
        with_receipt: i64,
    }
}

/// Final receipts since `$1`, each message counted once per status and code (Twilio may
/// post the same callback again).
const FINAL_RECEIPTS: &str = "\
SELECT status, error_code, COUNT(DISTINCT message_id) AS n FROM receipts
WHERE received_at >= $1 AND status IN ('delivered', 'undelivered', 'failed')
GROUP BY status, error_code";

/// Messages that went `sent` in [`$1`, `$2`) and how many of them have any receipt.
const SENT_WINDOW: &str = "\
SELECT COUNT(*) AS sent,
       COALESCE(SUM(CASE WHEN EXISTS (SELECT 1 FROM receipts r WHERE r.message_id = m.id)
                    THEN 1 ELSE 0 END), 0) AS with_receipt
FROM messages m WHERE m.status = 'sent' AND m.updated_at >= $1 AND m.updated_at < $2";

/// See [`Store::delivery_window`](super::Store::delivery_window).
pub(super) async fn delivery_window(
    tx: &mut Tx,
    receipts_since_ms: i64,
    sent_from_ms: i64,
    sent_until_ms: i64,
) -> Result<DeliveryWindow, StoreError> {
    let finals: Vec<FinalCountRow> = tx
        .fetch_all(FINAL_RECEIPTS, &[Int(receipts_since_ms)])
        .await?;
    let sent: Vec<SentWindowRow> = tx
        .fetch_all(SENT_WINDOW, &[Int(sent_from_ms), Int(sent_until_ms)])
        .await?;
    let sent = sent.into_iter().next();
    Ok(DeliveryWindow {
        finals: finals
            .into_iter()
            .map(|r| FinalCount {
                status: r.status,
                error_code: r.error_code,
                messages: r.n,
            })
            .collect(),
        sent: sent.as_ref().map_or(0, |r| r.sent),
        with_receipt: sent.map_or(0, |r| r.with_receipt),
    })
}

db_row! {
    /// Where a page starts: the cursor message's creation time.
    struct CursorRow {
        created_at: i64,
    }
}

const CURSOR: &str = "SELECT created_at FROM messages WHERE id = $1";

/// A page newest first, older than ($1, $2), in status $3 ('' = any); (created_at, id)
/// indexed since migration 0005.
const LIST: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE (created_at, id) < ($1, $2) AND ($3 = '' OR status = $3) \
     ORDER BY created_at DESC, id DESC LIMIT $4"
);

/// The same, for the message whose id, correlation id or recipient is $5 (each indexed).
const LIST_Q: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE (created_at, id) < ($1, $2) AND ($3 = '' OR status = $3) \
     AND (id = $5 OR correlation_id = $5 OR recipient = $5) \
     ORDER BY created_at DESC, id DESC LIMIT $4"
);

/// See [`Store::list`](super::Store::list).
pub(super) async fn list(
    tx: &mut Tx,
    query: &ListQuery,
) -> Result<Option<Vec<MessageSummary>>, StoreError> {
    // No cursor: after every message (ids are UUID text, all below "~").
    let (at, id) = match query.before {
        None => (i64::MAX, "~".to_string()),
        Some(before) => {
            let before = before.to_string();
            let row: Option<CursorRow> = tx.fetch_optional(CURSOR, &[Text(&before)]).await?;
            match row {
                Some(r) => (r.created_at, before),
                None => return Ok(None),
            }
        }
    };
    let status = query.status.map_or("", |s| s.as_str());
    let limit = i64::from(query.limit);
    let rows: Vec<MessageRow> = match query.q.as_deref() {
        None => {
            tx.fetch_all(LIST, &[Int(at), Text(&id), Text(status), Int(limit)])
                .await?
        }
        Some(q) => {
            tx.fetch_all(
                LIST_Q,
                &[Int(at), Text(&id), Text(status), Int(limit), Text(q)],
            )
            .await?
        }
    };
    rows.into_iter()
        .map(|row| {
            Ok(MessageSummary {
                id: parse_id(&row.id)?,
                correlation_id: row.correlation_id,
                recipient: row.recipient,
                body: row.body,
                status: parse_status(&row.status)?,
                attempts: to_u32(row.attempts, "attempts")?,
                next_attempt_at: row.next_attempt_at,
                last_error: row.last_error,
                last_error_class: row.last_error_class,
                provider_message_id: row.provider_message_id,
                created_at: row.created_at,
                updated_at: row.updated_at,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()
        .map(Some)
}

db_row! {
    /// Failed messages of one class.
    struct FailureGroupRow {
        error_class: String,
        n: i64,
        example_error: Option<String>,
        latest_at: i64,
    }
}

const FAILURE_GROUPS: &str = "\
SELECT COALESCE(last_error_class, 'unknown') AS error_class, COUNT(*) AS n,
       MAX(last_error) AS example_error, MAX(updated_at) AS latest_at
FROM messages WHERE status = 'failed'
GROUP BY COALESCE(last_error_class, 'unknown') ORDER BY n DESC, error_class";

/// See [`Store::failure_groups`](super::Store::failure_groups).
pub(super) async fn failure_groups(tx: &mut Tx) -> Result<Vec<FailureGroup>, StoreError> {
    let rows: Vec<FailureGroupRow> = tx.fetch_all(FAILURE_GROUPS, &[]).await?;
    Ok(rows
        .into_iter()
        .map(|r| FailureGroup {
            error_class: r.error_class,
            count: r.n,
            example_error: r.example_error,
            latest_at: r.latest_at,
        })
        .collect())
}

const FAILED_OF_CLASS: &str = "\
SELECT id FROM messages WHERE status = 'failed' AND COALESCE(last_error_class, 'unknown') = $1
ORDER BY updated_at, id LIMIT $2";

/// See [`Store::failed_of_class`](super::Store::failed_of_class).
pub(super) async fn failed_of_class(
    tx: &mut Tx,
    class: &str,
    limit: u32,
) -> Result<Vec<Uuid>, StoreError> {
    let rows: Vec<OtherIdRow> = tx
        .fetch_all(FAILED_OF_CLASS, &[Text(class), Int(i64::from(limit))])
        .await?;
    rows.iter().map(|r| parse_id(&r.id)).collect()
}

db_row! {
    /// Another message with a given provider id.
    struct OtherIdRow {
        id: String,
    }
}

/// A message other than `$2` that the provider knows as `$1` (indexed since migration 0003).
const OTHER_WITH_PROVIDER_ID: &str = "\
SELECT id FROM messages WHERE provider_message_id = $1 AND id <> $2 LIMIT 1";

/// A message other than `id` that already has `provider_message_id`, if any.
pub(super) async fn other_with_provider_id(
    tx: &mut Tx,
    provider_message_id: &str,
    id: Uuid,
) -> Result<Option<Uuid>, StoreError> {
    let row: Option<OtherIdRow> = tx
        .fetch_optional(
            OTHER_WITH_PROVIDER_ID,
            &[Text(provider_message_id), Text(&id.to_string())],
        )
        .await?;
    row.map(|r| parse_id(&r.id)).transpose()
}

const SELECT_ATTEMPTS: &str = "\
SELECT attempt, started_at, finished_at, outcome, error_class, error, latency_ms, provider_message_id,
       provider
FROM attempts WHERE message_id = $1 ORDER BY attempt";

pub(super) async fn get(tx: &mut Tx, id: Uuid) -> Result<Option<MessageRecord>, StoreError> {
    let id_text = id.to_string();
    let row: Option<MessageRow> = tx.fetch_optional(SELECT_MESSAGE, &[Text(&id_text)]).await?;
    let Some(row) = row else { return Ok(None) };
    let attempts: Vec<AttemptRow> = tx.fetch_all(SELECT_ATTEMPTS, &[Text(&id_text)]).await?;
    let receipts: Vec<ReceiptRecord> = tx
        .fetch_all::<ReceiptRow>(SELECT_RECEIPTS, &[Text(&id_text)])
        .await?
        .into_iter()
        .map(|r| ReceiptRecord {
            status: r.status,
            error_code: r.error_code,
            received_at: r.received_at,
        })
        .collect();
    let history = attempts
        .into_iter()
        .map(|a| {
            Ok(AttemptRecord {
                attempt: to_u32(a.attempt, "attempt")?,
                started_at: a.started_at,
                finished_at: a.finished_at,
                outcome: a
                    .outcome
                    .map(|o| {
                        OutcomeKind::parse(&o).ok_or_else(|| {
                            StoreError::Corrupt(format!("unknown attempt outcome {o:?}"))
                        })
                    })
                    .transpose()?,
                error_class: a.error_class,
                error: a.error,
                latency_ms: a.latency_ms,
                provider_message_id: a.provider_message_id,
                provider: a.provider,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Some(MessageRecord {
        id: parse_id(&row.id)?,
        correlation_id: row.correlation_id,
        recipient: row.recipient,
        body: row.body,
        sender: row.sender,
        status: parse_status(&row.status)?,
        attempts: to_u32(row.attempts, "attempts")?,
        next_attempt_at: row.next_attempt_at,
        last_error: row.last_error,
        last_error_class: row.last_error_class,
        provider_message_id: row.provider_message_id,
        created_at: row.created_at,
        updated_at: row.updated_at,
        claimed_until: row.claimed_until,
        segments: row.segments.map(|n| n.max(0) as u32),
        body_truncated: row.body_truncated != 0,
        history,
        delivery: furthest(&receipts).cloned(),
        receipts,
    }))
}

/// The receipt that says the most (the highest rank; of equals, the latest): callbacks can
/// come out of order, and a late `sent` must not undo a `delivered`.
fn furthest(receipts: &[ReceiptRecord]) -> Option<&ReceiptRecord> {
    let rank = |r: &ReceiptRecord| crate::provider::receipt::rank(&r.status).unwrap_or(0);
    receipts
        .iter()
        .enumerate()
        .max_by_key(|(i, r)| (rank(r), *i))
        .map(|(_, r)| r)
}

const COUNT_BY_STATUS: &str = "SELECT status, COUNT(*) AS n FROM messages GROUP BY status";

pub(super) async fn counts_by_status(tx: &mut Tx) -> Result<BTreeMap<String, i64>, StoreError> {
    let mut counts: BTreeMap<String, i64> = MessageStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    let rows: Vec<StatusCountRow> = tx.fetch_all(COUNT_BY_STATUS, &[]).await?;
    for row in rows {
        counts.insert(row.status, row.n);
    }
    Ok(counts)
}

// ---------------------------------------------------------------------------------------------
// Conversions

fn parse_id(id: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(id).map_err(|_| StoreError::Corrupt(format!("message id {id:?} is not a UUID")))
}

fn parse_status(status: &str) -> Result<MessageStatus, StoreError> {
    MessageStatus::parse(status)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown message status {status:?}")))
}

fn to_u32(n: i32, column: &str) -> Result<u32, StoreError> {
    u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative {column}: {n}")))
}

fn outbound(row: PayloadRow) -> Result<OutboundMessage, StoreError> {
    Ok(OutboundMessage {
        id: parse_id(&row.id)?,
        to: row.recipient,
        body: row.body,
        from: row.sender,
        correlation_id: row.correlation_id,
    })
}
