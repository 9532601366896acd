//! The message ledger: every message drover takes, and every attempt to send it, in SQL
//! (PostgreSQL, or SQLite for a single instance).
//!
//! # States
//!
//! ```text
//!                begin_attempt                      record_outcome
//!  (new) ───────────────────────▶ sending ──┬── Sent ─────────────────────▶ sent
//!                                  ▲   ▲    ├── Failed ───────────────────▶ failed
//!                     begin_attempt│   │    └── Retry, Ambiguous, Deferred ─▶ retry_scheduled
//!                                  │   └── begin_attempt again (the worker died: interrupted)
//!                                queued ◀── claim_due ── retry_scheduled ◀── retry() ── failed
//!
//!  record_invalid ─▶ invalid
//! ```
//!
//! * A worker calls [`Store::begin_attempt`] for each delivery; the [`Admission`] says
//!   whether to send (and which attempt it is) or why not.
//! * It reports how the attempt ended with [`Store::record_outcome`].
//! * A scheduler calls [`Store::claim_due`] for retries that are due, republishes them, and
//!   [`Store::release_claims`] once the broker confirmed. Claims are leases, so when a
//!   scheduler dies between the two another one (on any instance) takes the rows over once
//!   the lease lapses. [`Store::next_due_at`] says when to look next.
//!
//! Every single-message operation runs in one transaction; the batch variants
//! ([`Store::begin_attempts`], [`Store::record_outcomes`]) do the same for many messages in
//! one transaction (group commit), with the same result as the single calls in order.
//!
//! Times are Unix milliseconds passed in by the caller (from [`crate::clock::Clock`]); the
//! store never reads a clock, so tests with a paused tokio clock stay deterministic.
//!
//! Ids are stored as canonical UUID text in both backends. Migrations (under
//! `actors/migrations/`) are embedded in the binary and applied by [`Store::connect`].

mod batch;
mod config;
mod db;
mod error;
mod migrations;
mod ops;
mod pg_batch;
mod types;

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::AssertSqlSafe;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use uuid::Uuid;

pub use config::{StoreConfig, StoreTlsConfig};
pub use error::StoreError;
pub use types::{
    Admission, AttemptOutcome, AttemptRecord, DeliveryWindow, FailureGroup, FinalCount, ListQuery,
    MessageRecord, MessageStatus, MessageSummary, OutcomeKind, ReceiptRecord, Uncertain,
};

use crate::message::OutboundMessage;
use db::{Mode, Pool};

/// A handle on the ledger: a connection pool to PostgreSQL or SQLite. Cheap to clone (clones
/// share the pool).
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
    /// A `sending` row younger than this is in flight elsewhere (0: every `sending` row is
    /// an interrupted attempt).
    sending_lease_ms: i64,
    /// Group commit of admissions and outcomes, when enabled.
    batcher: Option<batch::GroupCommit>,
    /// Invalid payloads are stored cut to this many bytes.
    invalid_body_limit: usize,
}

impl Store {
    /// Batch [`Store::begin_attempt`] and [`Store::record_outcome`] calls from concurrent
    /// callers into shared transactions (group commit): at most `max_batch` per transaction,
    /// `in_flight` transactions at once. Every caller still returns only after the commit
    /// that holds its own call. Needs a tokio runtime (it spawns the batcher).
    pub fn with_group_commit(mut self, max_batch: usize, in_flight: usize) -> Self {
        let direct = Store {
            batcher: None,
            ..self.clone()
        };
        self.batcher = Some(batch::GroupCommit::spawn(direct, max_batch, in_flight));
        self
    }

    /// Treat a message found `sending` for less than `lease_ms` as being sent by another
    /// worker right now ([`Admission::InFlight`]) rather than as an interrupted attempt: the
    /// lease must exceed the longest attempt (provider timeout plus database round trips).
    pub fn with_sending_lease(mut self, lease_ms: i64) -> Self {
        self.sending_lease_ms = lease_ms.max(0);
        self
    }

    /// Store invalid payloads cut to `bytes` (flagged `body_truncated`); the default is
    /// `message.max_payload_bytes`'s default.
    pub fn with_invalid_body_limit(mut self, bytes: usize) -> Self {
        self.invalid_body_limit = bytes;
        self
    }

    /// Open a pool for `config.url` and apply the embedded migrations (a no-op when they
    /// already are; concurrent instances are serialized by sqlx's migration lock).
    ///
    /// On PostgreSQL with [`StoreConfig::schema`] set, the schema is created if absent and put
    /// on every connection's `search_path`. SQLite runs in WAL mode with the acquire timeout as
    /// busy timeout.
    ///
    /// Fails with [`StoreError::Unavailable`] if no connection could be opened within
    /// `acquire_timeout_ms`.
    pub async fn connect(config: &StoreConfig) -> Result<Store, StoreError> {
        if config.max_connections == 0 {
            return Err(StoreError::Config(
                "max_connections must be at least 1".to_owned(),
            ));
        }
        if config.min_connections > config.max_connections {
            return Err(StoreError::Config(format!(
                "min_connections ({}) must not exceed max_connections ({})",
                config.min_connections, config.max_connections
            )));
        }
        let timeout = Duration::from_millis(config.acquire_timeout_ms);
        let url = config.url.trim();
        let pool = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            connect_postgres(url, config, timeout).await?
        } else if url.starts_with("sqlite:") {
            if config.schema.is_some() {
                return Err(StoreError::Config(
                    "`schema` applies to PostgreSQL only".to_owned(),
                ));
            }
            connect_sqlite(url, config, timeout).await?
        } else {
            let scheme = url.split(':').next().unwrap_or_default();
            return Err(StoreError::Config(format!(
                "unsupported database URL scheme {scheme:?}: expected postgres:// or sqlite:"
            )));
        };
        let store = Store {
            pool,
            sending_lease_ms: 0,
            batcher: None,
            invalid_body_limit: crate::message::MessageConfig::default().max_payload_bytes,
        };
        tracing::info!(
            backend = store.backend(),
            "store connected, migrations applied"
        );
        Ok(store)
    }

    /// `"postgres"` or `"sqlite"`.
    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Pg(_) => "postgres",
            Pool::Sqlite(_) => "sqlite",
        }
    }

    /// One round trip to the database (health checks).
    pub async fn ping(&self) -> Result<(), StoreError> {
        Ok(self.pool.ping().await?)
    }

    /// Close the pool's connections. Clones share the pool, so all of them stop working.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Admit a delivered message for an attempt (see [`Admission`]):
    ///
    /// | stored row | effect | result |
    /// | --- | --- | --- |
    /// | none | insert, `sending`, attempts 1 | `Proceed { attempt: 1, interrupted: false }` |
    /// | `invalid` (any payload) | none | `AlreadyInvalid` |
    /// | other recipient, body or sender | none | `Conflict` |
    /// | `queued` | `sending`, attempts + 1 | `Proceed { interrupted: false }` |
    /// | `sending` | previous attempt marked ambiguous (`interrupted`), attempts + 1 | `Proceed { interrupted: true }` |
    /// | `retry_scheduled` | none | `NotDue` |
    /// | `sent` | none | `AlreadySent` |
    /// | `failed` | none | `AlreadyFailed` |
    ///
    /// Admitting opens a new attempt row. On PostgreSQL the row is locked for the decision,
    /// so concurrent admissions of one id are serialized.
    pub async fn begin_attempt(
        &self,
        msg: &OutboundMessage,
        now_ms: i64,
    ) -> Result<Admission, StoreError> {
        // Boxed: sqlx's futures are large (about 15 KB here), and every worker awaiting this
        // would carry that much in its own state even when the batcher is used.
        match &self.batcher {
            Some(b) => b.begin(msg, now_ms).await,
            None => Box::pin(self.begin_attempt_direct(msg, now_ms)).await,
        }
    }

    pub(super) async fn begin_attempt_direct(
        &self,
        msg: &OutboundMessage,
        now_ms: i64,
    ) -> Result<Admission, StoreError> {
        let mut tx = self.pool.begin(Mode::Write).await?;
        let admission = ops::begin_one(&mut tx, msg, now_ms, self.sending_lease_ms).await?;
        tx.commit().await?;
        Ok(admission)
    }

    /// [`Store::begin_attempt`] for each message; the admissions are in the order of `msgs`
    /// and equal to those of single calls in that order (a repeated id sees the effect of its
    /// earlier occurrence). On PostgreSQL the messages seen for the first time are admitted
    /// by one statement, committed on its own; the others (redeliveries, repeated ids) then in
    /// one transaction. Rows are locked in id order so that concurrent batches cannot
    /// deadlock. An `Err` may come after the first part committed.
    pub async fn begin_attempts(
        &self,
        msgs: &[OutboundMessage],
        now_ms: i64,
    ) -> Result<Vec<Admission>, StoreError> {
        let (admissions, failed) = self.begin_batch(msgs, now_ms).await;
        match failed {
            Some(e) => Err(e),
            None => Ok(admissions.into_iter().flatten().collect()),
        }
    }

    /// [`Store::begin_attempts`], telling which admissions were decided (and committed) when
    /// it failed part way: `None` for those that were not.
    pub(super) async fn begin_batch(
        &self,
        msgs: &[OutboundMessage],
        now_ms: i64,
    ) -> (Vec<Option<Admission>>, Option<StoreError>) {
        let mut results: Vec<Option<Admission>> = msgs.iter().map(|_| None).collect();
        let order = lock_order(msgs, |m| m.id);
        if let Some(pool) = self.pool.pg() {
            // The first occurrence of an id is the one single calls in order would admit.
            let firsts = first_occurrences(&order, |i| msgs[i].id);
            let new: Vec<&OutboundMessage> = firsts.iter().map(|&i| &msgs[i]).collect();
            match pg_batch::insert_new(pool, &new, now_ms).await {
                Ok(fresh) => {
                    for &i in &firsts {
                        if fresh.contains(msgs[i].id.to_string().as_str()) {
                            results[i] = Some(Admission::Proceed {
                                attempt: 1,
                                interrupted: false,
                                uncertain: None,
                            });
                        }
                    }
                }
                Err(e) => return (results, Some(e.into())),
            }
            if results.iter().all(Option::is_some) {
                return (results, None);
            }
        }
        let rest = async {
            let mut tx = self.pool.begin(Mode::Write).await?;
            let mut decided = Vec::new();
            for &i in &order {
                if results[i].is_none() {
                    let a =
                        ops::begin_one(&mut tx, &msgs[i], now_ms, self.sending_lease_ms).await?;
                    decided.push((i, a));
                }
            }
            tx.commit().await?;
            Ok::<_, StoreError>(decided)
        };
        match rest.await {
            Ok(decided) => {
                for (i, a) in decided {
                    results[i] = Some(a);
                }
                (results, None)
            }
            Err(e) => (results, Some(e)),
        }
    }

    /// Record how attempt `attempt` of message `id` ended (see [`AttemptOutcome`] for each
    /// outcome's effect), closing its attempt row.
    ///
    /// Applies only while the message is `sending` with `attempt` attempts, i.e. this is still
    /// the current attempt. Otherwise (unknown id, an attempt that was superseded because the
    /// worker was presumed dead, an outcome recorded twice) nothing changes, a warning is
    /// logged, and the result is still `Ok(())`: the report is stale and there is nothing the
    /// caller could do about it. [`Store::get`] shows what happened.
    pub async fn record_outcome(
        &self,
        id: Uuid,
        attempt: u32,
        outcome: &AttemptOutcome,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        match &self.batcher {
            Some(b) => b.record(id, attempt, outcome, now_ms).await,
            // Boxed for the reason given in `begin_attempt`.
            None => Box::pin(self.record_outcome_direct(id, attempt, outcome, now_ms)).await,
        }
    }

    pub(super) async fn record_outcome_direct(
        &self,
        id: Uuid,
        attempt: u32,
        outcome: &AttemptOutcome,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin(Mode::Write).await?;
        ops::record_one(&mut tx, id, attempt, outcome, now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    /// [`Store::record_outcome`] for each `(id, attempt, outcome)`, with the same effect as
    /// single calls in order. On PostgreSQL the first outcome of each message is recorded by
    /// one statement, committed on its own; a repeated id's later outcomes then in one
    /// transaction. An `Err` may come after the first part committed.
    pub async fn record_outcomes(
        &self,
        outcomes: &[(Uuid, u32, AttemptOutcome)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        match self.record_batch(outcomes, now_ms).await.1 {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// [`Store::record_outcomes`], telling which were recorded (and committed) when it failed
    /// part way.
    pub(super) async fn record_batch(
        &self,
        outcomes: &[(Uuid, u32, AttemptOutcome)],
        now_ms: i64,
    ) -> (Vec<bool>, Option<StoreError>) {
        let mut done = vec![false; outcomes.len()];
        let order = lock_order(outcomes, |o| o.0);
        if let Some(pool) = self.pool.pg() {
            let firsts = first_occurrences(&order, |i| outcomes[i].0);
            let ids: Vec<String> = firsts.iter().map(|&i| outcomes[i].0.to_string()).collect();
            let batch: Vec<(&str, u32, &AttemptOutcome)> = firsts
                .iter()
                .zip(&ids)
                .map(|(&i, id)| (id.as_str(), outcomes[i].1, &outcomes[i].2))
                .collect();
            match pg_batch::record(pool, &batch, now_ms).await {
                Ok(changed) => {
                    for (&i, id) in firsts.iter().zip(&ids) {
                        if !changed.contains(id) {
                            let (id, attempt, outcome) = &outcomes[i];
                            ops::stale_outcome(*id, *attempt, outcome);
                        }
                        done[i] = true;
                    }
                }
                Err(e) => return (done, Some(e.into())),
            }
            if done.iter().all(|d| *d) {
                return (done, None);
            }
        }
        // The rest in input order: a repeated id's later outcomes after its first.
        let rest = async {
            let mut tx = self.pool.begin(Mode::Write).await?;
            let keys: Vec<usize> = if self.pool.pg().is_some() {
                (0..outcomes.len()).filter(|&i| !done[i]).collect()
            } else {
                order.clone()
            };
            for &i in &keys {
                let (id, attempt, outcome) = &outcomes[i];
                ops::record_one(&mut tx, *id, *attempt, outcome, now_ms).await?;
            }
            tx.commit().await?;
            Ok::<_, StoreError>(keys)
        };
        match rest.await {
            Ok(keys) => {
                for i in keys {
                    done[i] = true;
                }
                (done, None)
            }
            Err(e) => (done, Some(e)),
        }
    }

    /// Record a payload that is not a valid message: a row with status `invalid`, the raw
    /// payload (lossy UTF-8, NUL characters replaced, cut to the invalid-body limit and then
    /// flagged `body_truncated`) as body, an empty recipient, and `reason` as last error
    /// (class `invalid`; at most 512 bytes). Returns the row's id:
    ///
    /// * `id` given and unused: that id.
    /// * `id` given and already an invalid row with the same raw payload (a redelivery):
    ///   that id, unchanged.
    /// * `id` given but used by another message: that row is left alone and the invalid one
    ///   is stored under an id derived from `id` and the payload (the same again on a
    ///   redelivery).
    /// * no `id`: an id derived from the payload ([`crate::message::invalid_payload_id`]).
    ///
    /// The correlation id defaults to the given id, else the row's id.
    pub async fn record_invalid(
        &self,
        id: Option<Uuid>,
        correlation_id: Option<&str>,
        raw: &[u8],
        reason: &str,
        now_ms: i64,
    ) -> Result<Uuid, StoreError> {
        self.record_set_aside(id, correlation_id, raw, reason, "invalid", now_ms)
            .await
    }

    /// [`Store::record_invalid`] with another class than `invalid` (`poison`: quarantined
    /// by the poison guard).
    pub async fn record_set_aside(
        &self,
        id: Option<Uuid>,
        correlation_id: Option<&str>,
        raw: &[u8],
        reason: &str,
        class: &str,
        now_ms: i64,
    ) -> Result<Uuid, StoreError> {
        let mut tx = self.pool.begin(Mode::Write).await?;
        let stored = ops::record_invalid(
            &mut tx,
            id,
            correlation_id,
            raw,
            reason,
            class,
            now_ms,
            self.invalid_body_limit,
        )
        .await?;
        tx.commit().await?;
        Ok(stored)
    }

    /// Set a message still in play (queued, sending, retry_scheduled) aside as `invalid` with
    /// class `poison` and `reason`, closing its open attempt as interrupted: the poison guard
    /// quarantined it, so nothing may send it again. Returns whether such a row existed.
    pub async fn quarantine(
        &self,
        id: Uuid,
        reason: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin(Mode::Write).await?;
        let changed = ops::quarantine(&mut tx, id, reason, now_ms).await?;
        tx.commit().await?;
        Ok(changed)
    }

    /// Claim up to `limit` messages whose turn has come, for republishing: `retry_scheduled`
    /// ones with `next_attempt_at <= now_ms`, and `queued` ones whose claim lapsed
    /// (`claimed_until <= now_ms`: the scheduler that claimed them died before
    /// [`Store::release_claims`]). They become `queued` with `claimed_until = now_ms +
    /// lease_ms`. Returns each message with the attempts it has spent so far, earliest due
    /// first (nothing if `limit <= 0`).
    ///
    /// Safe for several schedulers on one database: on PostgreSQL rows are picked with
    /// `FOR UPDATE SKIP LOCKED` (and re-checked after locking), so no row is handed to two
    /// claimers; SQLite serializes writers.
    pub async fn claim_due(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<(OutboundMessage, u32)>, StoreError> {
        if limit <= 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin(Mode::Write).await?;
        let claimed = ops::claim_due(&mut tx, now_ms, lease_ms, limit).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    /// Drop the claims on `ids` (`claimed_until = NULL`) once their republishing is
    /// confirmed: the work queue holds them now, so no scheduler should take them over.
    /// Ids that are not `queued` any more (a worker already admitted them) are skipped.
    pub async fn release_claims(&self, ids: &[Uuid]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin(Mode::Write).await?;
        for i in lock_order(ids, |id| *id) {
            ops::release_claim(&mut tx, ids[i]).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// When [`Store::claim_due`] will next find something: the earliest `next_attempt_at` of
    /// `retry_scheduled` messages or `claimed_until` of claimed `queued` ones (possibly in the
    /// past). `None`: nothing is waiting.
    pub async fn next_due_at(&self) -> Result<Option<i64>, StoreError> {
        let mut tx = self.pool.begin(Mode::Read).await?;
        let due = ops::next_due_at(&mut tx).await?;
        tx.commit().await?;
        Ok(due)
    }

    /// Put a `failed` message back into play: `retry_scheduled`, due `now_ms`, attempts reset
    /// to 0 (a fresh retry budget). Returns the message, or `None` if there is no such message
    /// or it is not `failed`.
    pub async fn retry(
        &self,
        id: Uuid,
        now_ms: i64,
    ) -> Result<Option<OutboundMessage>, StoreError> {
        let mut tx = self.pool.begin(Mode::Write).await?;
        let msg = ops::retry(&mut tx, id, now_ms).await?;
        tx.commit().await?;
        Ok(msg)
    }

    /// Record a delivery receipt (`status`, `error_code`) for the message the provider knows
    /// as `provider_message_id`, received at `now_ms`: the message's id, or `None` when no
    /// message has that provider id (a receipt for someone else's message, or one sent before
    /// drover recorded its sid). Receipts are kept as they come; [`MessageRecord::delivery`]
    /// is the one that says the most.
    pub async fn record_receipt(
        &self,
        provider_message_id: &str,
        status: &str,
        error_code: Option<i64>,
        now_ms: i64,
    ) -> Result<Option<Uuid>, StoreError> {
        let mut tx = self.pool.begin(Mode::Write).await?;
        let ids =
            ops::record_receipt(&mut tx, provider_message_id, status, error_code, now_ms).await?;
        tx.commit().await?;
        Ok(ids.into_iter().next())
    }

    /// Messages newest first (by creation, then id), filtered and paged by `query`: the next
    /// page is `before` the last one returned. `None` when `before` names no message.
    pub async fn list(&self, query: &ListQuery) -> Result<Option<Vec<MessageSummary>>, StoreError> {
        let mut tx = self.pool.begin(Mode::Read).await?;
        let page = ops::list(&mut tx, query).await?;
        tx.commit().await?;
        Ok(page)
    }

    /// Failed messages grouped by their last error's class, the largest group first.
    pub async fn failure_groups(&self) -> Result<Vec<FailureGroup>, StoreError> {
        let mut tx = self.pool.begin(Mode::Read).await?;
        let groups = ops::failure_groups(&mut tx).await?;
        tx.commit().await?;
        Ok(groups)
    }

    /// The ids of at most `limit` failed messages whose last error's class is `class`
    /// (`unknown`: none), the oldest failure first.
    pub async fn failed_of_class(&self, class: &str, limit: u32) -> Result<Vec<Uuid>, StoreError> {
        let mut tx = self.pool.begin(Mode::Read).await?;
        let ids = ops::failed_of_class(&mut tx, class, limit).await?;
        tx.commit().await?;
        Ok(ids)
    }

    /// For the delivery-rate monitor: the final receipts (delivered, undelivered, failed)
    /// received since `receipts_since_ms`, and how many messages that went `sent` from
    /// `sent_from_ms` to before `sent_until_ms` have any receipt (both read by index, see
    /// migration 0004).
    pub async fn delivery_window(
        &self,
        receipts_since_ms: i64,
        sent_from_ms: i64,
        sent_until_ms: i64,
    ) -> Result<DeliveryWindow, StoreError> {
        let mut tx = self.pool.begin(Mode::Read).await?;
        let window =
            ops::delivery_window(&mut tx, receipts_since_ms, sent_from_ms, sent_until_ms).await?;
        tx.commit().await?;
        Ok(window)
    }

    /// The message other than `id` already recorded with `provider_message_id`, if any: a
    /// provider id found by a lookup that belongs to another message is not this one's.
    pub async fn other_with_provider_id(
        &self,
        provider_message_id: &str,
        id: Uuid,
    ) -> Result<Option<Uuid>, StoreError> {
        let mut tx = self.pool.begin(Mode::Read).await?;
        let other = ops::other_with_provider_id(&mut tx, provider_message_id, id).await?;
        tx.commit().await?;
        Ok(other)
    }

    /// A message with its attempt history, if it exists.
    pub async fn get(&self, id: Uuid) -> Result<Option<MessageRecord>, StoreError> {
        let mut tx = self.pool.begin(Mode::Read).await?;
        let record = ops::get(&mut tx, id).await?;
        tx.commit().await?;
        Ok(record)
    }

    /// How many messages are in each status; every status is present (0 if none).
    pub async fn counts_by_status(&self) -> Result<BTreeMap<String, i64>, StoreError> {
        let mut tx = self.pool.begin(Mode::Read).await?;
        let counts = ops::counts_by_status(&mut tx).await?;
        tx.commit().await?;
        Ok(counts)
    }
}

async fn connect_postgres(
    url: &str,
    config: &StoreConfig,
    timeout: Duration,
) -> Result<Pool, StoreError> {
    let mut options: PgConnectOptions = url.parse()?;
    options = with_tls(options, &config.tls)?;
    if let Some(schema) = &config.schema {
        if !config::is_plain_identifier(schema) {
            return Err(StoreError::Config(format!(
                "schema {schema:?} is not a plain lowercase identifier ([a-z_][a-z0-9_]*, at most 63 bytes)"
            )));
        }
        options = options.options([("search_path", schema.as_str())]);
    }
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .min_connections(config.min_connections)
        .acquire_timeout(timeout)
        .connect_with(options)
        .await?;
    if let Some(schema) = &config.schema {
        // `schema` is a plain identifier (checked above), so splicing it in is safe.
        let create = format!("CREATE SCHEMA IF NOT EXISTS {schema}");
        match sqlx::raw_sql(AssertSqlSafe(create)).execute(&pool).await {
            Ok(_) => {}
            // Another instance created it at the same moment.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("23505" | "42P06")) => {}
            Err(e) => return Err(e.into()),
        }
    }
    migrations::postgres().run(&pool).await?;
    Ok(Pool::Pg(pool))
}

/// `options` with the `[store.tls]` keys that are set applied over the URL's.
fn with_tls(
    mut options: PgConnectOptions,
    tls: &config::StoreTlsConfig,
) -> Result<PgConnectOptions, StoreError> {
    let mode = tls.mode.trim();
    if !mode.is_empty() {
        let parsed = mode.parse::<sqlx::postgres::PgSslMode>().map_err(|_| {
            StoreError::Config(format!(
                "store.tls.mode {mode:?} is not one of {}",
                config::SSL_MODES.join(", ")
            ))
        })?;
        options = options.ssl_mode(parsed);
    }
    if tls.cert_file.trim().is_empty() != tls.key_file.trim().is_empty() {
        return Err(StoreError::Config(
            "store.tls.cert_file and store.tls.key_file go together: set both, or neither".into(),
        ));
    }
    if !tls.ca_file.trim().is_empty() {
        options = options.ssl_root_cert(tls.ca_file.trim());
    }
    if !tls.cert_file.trim().is_empty() {
        options = options
            .ssl_client_cert(tls.cert_file.trim())
            .ssl_client_key(tls.key_file.trim());
    }
    Ok(options)
}

async fn connect_sqlite(
    url: &str,
    config: &StoreConfig,
    timeout: Duration,
) -> Result<Pool, StoreError> {
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    let mut options: SqliteConnectOptions = url.parse()?;
    options = options.busy_timeout(timeout).foreign_keys(true);
    if !in_memory {
        options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal);
    }
    let mut pool_options = SqlitePoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(timeout);
    if in_memory {
        // An in-memory database lives only as long as one of its connections: keep one.
        pool_options = pool_options
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None);
    }
    let pool = pool_options.connect_with(options).await?;
    migrations::sqlite().run(&pool).await?;
    Ok(Pool::Sqlite(pool))
}

/// Indices of `items` sorted by `key`, stably: the order in which a batch touches rows.
/// A consistent lock order keeps concurrent batches from deadlocking; stability keeps
/// repeated ids in input order, so a batch behaves like the single calls in order.
fn lock_order<T>(items: &[T], key: impl Fn(&T) -> Uuid) -> Vec<usize> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| key(&items[i]));
    order
}

/// The indices of `order` whose key is seen for the first time, in `order`'s order (a stable
/// sort by key keeps a repeated key's occurrences in input order: the first is the earliest).
fn first_occurrences(order: &[usize], key: impl Fn(usize) -> Uuid) -> Vec<usize> {
    let mut seen = std::collections::HashSet::with_capacity(order.len());
    order
        .iter()
        .copied()
        .filter(|&i| seen.insert(key(i)))
        .collect()
}
