//! Set-based statements for a group-commit batch on PostgreSQL: one statement admits every
//! new message of the batch (its row and its first attempt row), one records every outcome
//! (the message and its attempt row), each with arrays bound as parameters (`unnest`). Each
//! is atomic on its own, so it runs outside an explicit transaction: one round trip and one
//! commit, for a batch of one as for 256.
//!
//! They do exactly what [`super::ops::begin_one`] and [`super::ops::record_one`] do for the
//! common case (a message seen for the first time; an outcome for the current attempt);
//! the caller runs the per-message statements for everything else (a redelivery, a repeated
//! id in the batch), in a transaction after it. Statement by statement, a batch
//! of 256 admissions and outcomes cost 1,024 round trips and as many executor runs; here 2.

use std::collections::HashSet;

use sqlx::PgPool;

use super::types::AttemptOutcome;
use crate::message::OutboundMessage;

/// Insert each message (`sending`, attempt 1) and its first attempt row unless its id exists;
/// returns the ids inserted. The ids must be distinct; the rows are inserted (and so locked)
/// in the order given, which the caller makes the id order.
const INSERT_NEW: &str = "\
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[])
        WITH ORDINALITY AS t(id, correlation_id, recipient, body, sender, segments, n)
), fresh AS (
    INSERT INTO messages (id, correlation_id, recipient, body, sender, status, attempts,
                          created_at, updated_at, segments)
    SELECT id, correlation_id, recipient, body, sender, 'sending', 1, $7, $7, segments
    FROM input ORDER BY n
    ON CONFLICT (id) DO NOTHING
    RETURNING id
), opened AS (
    INSERT INTO attempts (message_id, attempt, started_at)
    SELECT id, 1, $7 FROM fresh
)
SELECT id FROM fresh";

pub(super) async fn insert_new(
    pool: &PgPool,
    msgs: &[&OutboundMessage],
    now_ms: i64,
) -> Result<HashSet<String>, sqlx::Error> {
    let ids: Vec<String> = msgs.iter().map(|m| m.id.to_string()).collect();
    let correlation: Vec<&str> = msgs.iter().map(|m| m.correlation_id.as_str()).collect();
    let to: Vec<&str> = msgs.iter().map(|m| m.to.as_str()).collect();
    let body: Vec<&str> = msgs.iter().map(|m| m.body.as_str()).collect();
    let from: Vec<Option<&str>> = msgs.iter().map(|m| m.from.as_deref()).collect();
    let segments: Vec<i32> = msgs
        .iter()
        .map(|m| i32::try_from(m.segments()).unwrap_or(i32::MAX))
        .collect();
    let rows: Vec<(String,)> = sqlx::query_as(INSERT_NEW)
        .bind(&ids)
        .bind(&correlation)
        .bind(&to)
        .bind(&body)
        .bind(&from)
        .bind(&segments)
        .bind(now_ms)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Apply each outcome to its message if the message is `sending` with that attempt count
/// (what `record_one`'s per-outcome `UPDATE`s do, one column set per kind, written as data:
/// `sent` keeps the last error and clears the claim; `deferred` gives the attempt back) and
/// close that message's latest attempt row; returns the ids whose message changed. The ids
/// must be distinct, in the order to lock them.
const RECORD: &str = "\
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::int4[], $3::text[], $4::bool[], $5::int4[], $6::int8[],
                         $7::text[], $8::text[], $9::text[], $10::text[], $11::int8[], $13::text[])
        WITH ORDINALITY AS t(id, attempt, status, sent, delta, next_attempt_at, error,
                             error_class, provider_message_id, outcome, latency_ms, provider, n)
), locked AS (
    SELECT m.id FROM messages m JOIN input i ON m.id = i.id
    WHERE m.status = 'sending' AND m.attempts = i.attempt
    ORDER BY i.n
    FOR UPDATE OF m
), changed AS (
    UPDATE messages m
    SET status = i.status,
        attempts = m.attempts + i.delta,
        next_attempt_at = i.next_attempt_at,
        claimed_until = CASE WHEN i.sent THEN NULL ELSE m.claimed_until END,
        last_error = CASE WHEN i.sent THEN m.last_error ELSE i.error END,
        last_error_class = CASE WHEN i.sent THEN m.last_error_class ELSE i.error_class END,
        provider_message_id = CASE WHEN i.sent THEN i.provider_message_id
                                   ELSE m.provider_message_id END,
        updated_at = $12
    FROM input i JOIN locked l ON l.id = i.id
    WHERE m.id = i.id AND m.status = 'sending' AND m.attempts = i.attempt
    RETURNING m.id
), closed AS (
    UPDATE attempts a
    SET finished_at = $12, outcome = i.outcome, error_class = i.error_class, error = i.error,
        latency_ms = i.latency_ms, provider_message_id = i.provider_message_id,
        provider = i.provider
    FROM input i JOIN changed c ON c.id = i.id
    WHERE a.message_id = i.id
      AND a.attempt = (SELECT MAX(x.attempt) FROM attempts x WHERE x.message_id = i.id)
)
SELECT id FROM changed";

/// One outcome as the columns it writes.
struct Columns<'a> {
    status: &'static str,
    delta: i32,
    next_attempt_at: Option<i64>,
    /// The attempt row's error and (unless sent) the message's last error.
    error: Option<&'a str>,
    /// The attempt row's error class and (unless sent) the message's last error class.
    error_class: Option<&'a str>,
    provider_message_id: Option<&'a str>,
    latency_ms: Option<u64>,
}

/// A failed try: retried at `next` (`retry_scheduled`) or not (`failed`).
fn failure<'a>(
    next: Option<i64>,
    error: &'a str,
    error_class: &'a str,
    latency_ms: Option<u64>,
) -> Columns<'a> {
    Columns {
        status: if next.is_some() {
            "retry_scheduled"
        } else {
            "failed"
        },
        delta: 0,
        next_attempt_at: next,
        error: Some(error),
        error_class: Some(error_class),
        provider_message_id: None,
        latency_ms,
    }
}

fn columns(outcome: &AttemptOutcome) -> Columns<'_> {
    match outcome {
        AttemptOutcome::Sent {
            provider_message_id,
            latency_ms,
            ..
        } => Columns {
            status: "sent",
            delta: 0,
            next_attempt_at: None,
            error: None,
            error_class: None,
            provider_message_id: Some(provider_message_id),
            latency_ms: Some(*latency_ms),
        },
        AttemptOutcome::Reconciled {
            provider_message_id,
        } => Columns {
            status: "sent",
            delta: 0,
            next_attempt_at: None,
            error: Some(super::ops::RECONCILED_NOTE),
            error_class: Some(super::ops::RECONCILED_CLASS),
            provider_message_id: Some(provider_message_id),
            latency_ms: Some(0),
        },
        AttemptOutcome::Retry {
            next_attempt_at,
            error_class,
            error,
            latency_ms,
            ..
        } => failure(
            Some(*next_attempt_at),
            error,
            error_class,
            Some(*latency_ms),
        ),
        AttemptOutcome::Failed {
            error_class,
            error,
            latency_ms,
            ..
        } => failure(None, error, error_class, Some(*latency_ms)),
        AttemptOutcome::Deferred {
            next_attempt_at,
            reason,
        } => Columns {
            delta: -1,
            ..failure(Some(*next_attempt_at), reason, "deferred", None)
        },
        AttemptOutcome::Ambiguous {
            next_attempt_at,
            error,
            latency_ms,
            ..
        } => failure(
            Some(*next_attempt_at),
            error,
            "ambiguous",
            Some(*latency_ms),
        ),
    }
}

pub(super) async fn record(
    pool: &PgPool,
    outcomes: &[(&str, u32, &AttemptOutcome)],
    now_ms: i64,
) -> Result<HashSet<String>, sqlx::Error> {
    let cols: Vec<Columns<'_>> = outcomes.iter().map(|(_, _, o)| columns(o)).collect();
    let ids: Vec<&str> = outcomes.iter().map(|(id, _, _)| *id).collect();
    let attempt: Vec<i32> = outcomes
        .iter()
        .map(|(_, a, _)| i32::try_from(*a).unwrap_or(i32::MAX))
        .collect();
    let kinds: Vec<&str> = outcomes.iter().map(|(_, _, o)| o.kind().as_str()).collect();
    let rows: Vec<(String,)> = sqlx::query_as(RECORD)
        .bind(&ids)
        .bind(&attempt)
        .bind(cols.iter().map(|c| c.status).collect::<Vec<_>>())
        .bind(cols.iter().map(|c| c.status == "sent").collect::<Vec<_>>())
        .bind(cols.iter().map(|c| c.delta).collect::<Vec<_>>())
        .bind(cols.iter().map(|c| c.next_attempt_at).collect::<Vec<_>>())
        .bind(cols.iter().map(|c| c.error).collect::<Vec<_>>())
        .bind(cols.iter().map(|c| c.error_class).collect::<Vec<_>>())
        .bind(
            cols.iter()
                .map(|c| c.provider_message_id)
                .collect::<Vec<_>>(),
        )
        .bind(&kinds)
        .bind(
            cols.iter()
                .map(|c| c.latency_ms.map(|l| i64::try_from(l).unwrap_or(i64::MAX)))
                .collect::<Vec<_>>(),
        )
        .bind(now_ms)
        .bind(
            outcomes
                .iter()
                .map(|(_, _, o)| o.provider())
                .collect::<Vec<_>>(),
        )
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}
