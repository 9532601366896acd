//! The values the store takes and returns.

use std::fmt;

use serde::Serialize;
use uuid::Uuid;

use crate::message::OutboundMessage;

/// Where a message is in its life (`messages.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    /// Claimed by a scheduler to be republished to the work queue (or republished and
    /// waiting to be consumed).
    Queued,
    /// A worker admitted it and is (or was, if it died) talking to the provider.
    Sending,
    /// The provider accepted it. Final.
    Sent,
    /// Waiting until `next_attempt_at` for another attempt.
    RetryScheduled,
    /// Gave up (permanent error or retries exhausted). Final unless [`Store::retry`]ed.
    ///
    /// [`Store::retry`]: super::Store::retry
    Failed,
    /// The payload was not a valid message. Final.
    Invalid,
}

impl MessageStatus {
    /// Every status, in the order of the state machine.
    pub const ALL: [MessageStatus; 6] = [
        MessageStatus::Queued,
        MessageStatus::Sending,
        MessageStatus::Sent,
        MessageStatus::RetryScheduled,
        MessageStatus::Failed,
        MessageStatus::Invalid,
    ];

    /// The name stored in the database (`retry_scheduled`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Queued => "queued",
            MessageStatus::Sending => "sending",
            MessageStatus::Sent => "sent",
            MessageStatus::RetryScheduled => "retry_scheduled",
            MessageStatus::Failed => "failed",
            MessageStatus::Invalid => "invalid",
        }
    }

    /// The status named `name` (as stored), if any.
    pub fn parse(name: &str) -> Option<MessageStatus> {
        MessageStatus::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for MessageStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one attempt ended (`attempts.outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// The provider accepted the message.
    Sent,
    /// A transient error; another attempt was scheduled.
    Retry,
    /// A permanent error, or the last attempt failed.
    Failed,
    /// Not tried (the provider's circuit was open); did not count as an attempt.
    Deferred,
    /// Unknown whether the provider got it (timeout after sending, or the worker died
    /// mid-attempt); another attempt was scheduled.
    Ambiguous,
}

impl OutcomeKind {
    /// Every outcome.
    pub const ALL: [OutcomeKind; 5] = [
        OutcomeKind::Sent,
        OutcomeKind::Retry,
        OutcomeKind::Failed,
        OutcomeKind::Deferred,
        OutcomeKind::Ambiguous,
    ];

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Sent => "sent",
            OutcomeKind::Retry => "retry",
            OutcomeKind::Failed => "failed",
            OutcomeKind::Deferred => "deferred",
            OutcomeKind::Ambiguous => "ambiguous",
        }
    }

    /// The outcome named `name` (as stored), if any.
    pub fn parse(name: &str) -> Option<OutcomeKind> {
        OutcomeKind::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When the earlier attempts whose fate is unknown started (Unix ms): the first and the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Uncertain {
    pub first_started_at: i64,
    pub last_started_at: i64,
}

/// What a worker may do with a delivered message ([`Store::begin_attempt`]).
///
/// [`Store::begin_attempt`]: super::Store::begin_attempt
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "admission", rename_all = "snake_case")]
pub enum Admission {
    /// Send it: this is attempt number `attempt` (1-based, counting attempts spent against the
    /// retry budget). `interrupted`: the message was already `sending`, i.e. a previous worker
    /// died mid-attempt (that attempt is recorded as ambiguous), so the provider may already
    /// have it.
    Proceed {
        /// The attempt number to pass back to [`Store::record_outcome`].
        ///
        /// [`Store::record_outcome`]: super::Store::record_outcome
        attempt: u32,
        /// Whether a previous attempt was cut short.
        interrupted: bool,
        /// Earlier attempts whose fate is unknown (recorded `ambiguous`: timed out after
        /// the request went out, or cut short): the provider may already have the message,
        /// so ask it before sending again.
        uncertain: Option<Uncertain>,
    },
    /// Another worker started an attempt less than the sending lease ago and is presumably
    /// still at it: do not send; put this delivery back (if that worker dies, its own
    /// delivery comes back too, and after the lease an attempt proceeds).
    InFlight {
        /// When that attempt started (Unix ms).
        since: i64,
    },
    /// A retry is scheduled for later and the scheduler will republish it then; drop this
    /// delivery.
    NotDue {
        /// When the retry is due (Unix ms).
        next_attempt_at: i64,
    },
    /// Already sent; drop this delivery.
    AlreadySent {
        /// The provider's id from the successful attempt.
        provider_message_id: Option<String>,
    },
    /// Already failed for good; drop this delivery.
    AlreadyFailed {
        /// Why it failed.
        last_error: Option<String>,
        /// The class of that error (`permanent`: never re-driven).
        last_error_class: Option<String>,
    },
    /// The id belongs to a message recorded as invalid; drop this delivery.
    AlreadyInvalid,
    /// The id is already used by a message with a different recipient, body or sender; the
    /// existing row was not touched (the delivery is an invalid duplicate id).
    Conflict,
}

/// How an attempt ended, as the worker reports it ([`Store::record_outcome`]).
///
/// [`Store::record_outcome`]: super::Store::record_outcome
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The provider accepted it: status `sent`.
    Sent {
        /// The provider's id for the message.
        provider_message_id: String,
        /// How long the provider call took.
        latency_ms: u64,
        /// Which provider of the chain made the call (its `name`).
        #[serde(skip_serializing_if = "Option::is_none")]
        provider: Option<String>,
    },
    /// Not sent: an earlier attempt whose fate was unknown turns out to have reached the
    /// provider, which has it under `provider_message_id` (see `provider::reconcile`). Status
    /// `sent`; the attempt row's outcome is `sent` with error class `reconciled`.
    Reconciled {
        /// The provider's id for the message, as its lookup found it.
        provider_message_id: String,
    },
    /// A transient failure: status `retry_scheduled` until `next_attempt_at`.
    Retry {
        /// When to try again (Unix ms).
        next_attempt_at: i64,
        /// A short machine-readable class (`timeout`, `http_503`, …).
        error_class: String,
        /// The error, for humans.
        error: String,
        /// How long the provider call took.
        latency_ms: u64,
        /// Which provider of the chain made the call (its `name`).
        #[serde(skip_serializing_if = "Option::is_none")]
        provider: Option<String>,
    },
    /// A permanent failure (or the retry budget is spent): status `failed`.
    Failed {
        /// A short machine-readable class.
        error_class: String,
        /// The error, for humans.
        error: String,
        /// How long the provider call took.
        latency_ms: u64,
        /// Which provider of the chain made the call (its `name`).
        #[serde(skip_serializing_if = "Option::is_none")]
        provider: Option<String>,
    },
    /// Not tried (the provider's circuit is open): status `retry_scheduled` and the attempt is
    /// given back (`attempts - 1`); the attempt row's outcome is `deferred`.
    Deferred {
        /// When to try again (Unix ms).
        next_attempt_at: i64,
        /// Why it was not tried.
        reason: String,
    },
    /// Unknown whether the provider got it (e.g. a timeout after the request was sent): status
    /// `retry_scheduled`, error class `ambiguous`.
    Ambiguous {
        /// When to try again (Unix ms).
        next_attempt_at: i64,
        /// The error, for humans.
        error: String,
        /// How long the provider call took.
        latency_ms: u64,
        /// Which provider of the chain made the call (its `name`).
        #[serde(skip_serializing_if = "Option::is_none")]
        provider: Option<String>,
    },
}

impl AttemptOutcome {
    /// The provider of the chain that made the call, for an outcome of a call.
    pub fn provider(&self) -> Option<&str> {
        match self {
            AttemptOutcome::Sent { provider, .. }
            | AttemptOutcome::Retry { provider, .. }
            | AttemptOutcome::Failed { provider, .. }
            | AttemptOutcome::Ambiguous { provider, .. } => provider.as_deref(),
            AttemptOutcome::Reconciled { .. } | AttemptOutcome::Deferred { .. } => None,
        }
    }

    /// The outcome recorded on the attempt row.
    pub fn kind(&self) -> OutcomeKind {
        match self {
            AttemptOutcome::Sent { .. } | AttemptOutcome::Reconciled { .. } => OutcomeKind::Sent,
            AttemptOutcome::Retry { .. } => OutcomeKind::Retry,
            AttemptOutcome::Failed { .. } => OutcomeKind::Failed,
            AttemptOutcome::Deferred { .. } => OutcomeKind::Deferred,
            AttemptOutcome::Ambiguous { .. } => OutcomeKind::Ambiguous,
        }
    }
}

/// A message as stored, with its attempt history ([`Store::get`]).
///
/// [`Store::get`]: super::Store::get
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct MessageRecord {
    /// The idempotency key.
    pub id: Uuid,
    /// The publisher's correlation id (the id itself if there was none).
    pub correlation_id: String,
    /// Destination number; empty for invalid messages.
    pub recipient: String,
    /// Text; for invalid messages the raw payload (lossy UTF-8).
    pub body: String,
    /// Sender, if the publisher chose one.
    pub sender: Option<String>,
    /// Where it is in its life.
    pub status: MessageStatus,
    /// Attempts spent against the retry budget. The history can hold more entries: a deferred
    /// try, and the tries before an operator's retry, gave their attempt back.
    pub attempts: u32,
    /// When the scheduled retry is due (Unix ms).
    pub next_attempt_at: Option<i64>,
    /// The latest error (for invalid messages: why the payload was rejected).
    pub last_error: Option<String>,
    /// The latest error's class (`invalid` for invalid messages).
    pub last_error_class: Option<String>,
    /// The provider's id, once sent.
    pub provider_message_id: Option<String>,
    /// When it was first recorded (Unix ms).
    pub created_at: i64,
    /// When it last changed (Unix ms).
    pub updated_at: i64,
    /// While a scheduler holds its claim: when the claim lapses (Unix ms).
    pub claimed_until: Option<i64>,
    /// SMS segments its body takes (GSM-7 or UCS-2); `None` for invalid payloads.
    pub segments: Option<u32>,
    /// An invalid payload stored cut to `message.max_payload_bytes`.
    pub body_truncated: bool,
    /// Every attempt, oldest first.
    pub history: Vec<AttemptRecord>,
    /// What the provider last said became of it after accepting it (its furthest delivery
    /// receipt: a late `sent` after `delivered` does not move it back); `None` before any.
    pub delivery: Option<ReceiptRecord>,
    /// Every delivery receipt, as they came.
    pub receipts: Vec<ReceiptRecord>,
}

/// A message without its history, as a list shows it ([`Store::list`]).
///
/// [`Store::list`]: super::Store::list
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct MessageSummary {
    pub id: Uuid,
    pub correlation_id: String,
    /// Destination number; empty for invalid messages.
    pub recipient: String,
    /// Text; for invalid messages the raw payload (lossy UTF-8).
    pub body: String,
    pub status: MessageStatus,
    /// Attempts spent against the retry budget.
    pub attempts: u32,
    /// When the scheduled retry is due (Unix ms).
    pub next_attempt_at: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_class: Option<String>,
    pub provider_message_id: Option<String>,
    /// When it was first recorded (Unix ms).
    pub created_at: i64,
    /// When it last changed (Unix ms).
    pub updated_at: i64,
}

/// What to list ([`Store::list`]): newest first.
///
/// [`Store::list`]: super::Store::list
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only messages in this status.
    pub status: Option<MessageStatus>,
    /// Only the message with this id, correlation id or recipient (exact).
    pub q: Option<String>,
    /// Only messages older than this one (the last of the previous page).
    pub before: Option<Uuid>,
    /// At most this many.
    pub limit: u32,
}

/// Failed messages of one error class ([`Store::failure_groups`]).
///
/// [`Store::failure_groups`]: super::Store::failure_groups
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FailureGroup {
    /// The last error's class (`unknown` when there is none).
    pub error_class: String,
    /// Failed messages of that class.
    pub count: i64,
    /// One of their last errors, as an example.
    pub example_error: Option<String>,
    /// When the latest of them failed (Unix ms).
    pub latest_at: i64,
}

/// Final receipts of one kind in a window: how many messages got `status` with `error_code`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FinalCount {
    /// `delivered`, `undelivered` or `failed`.
    pub status: String,
    /// The provider's error code (Twilio 30003-30008), if any.
    pub error_code: Option<i64>,
    /// Messages.
    pub messages: i64,
}

/// What the delivery-rate monitor reads from the store: final receipts received since a time,
/// and how many of the messages sent in an earlier window got any receipt at all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryWindow {
    /// Final receipts received in the window, by status and error code.
    pub finals: Vec<FinalCount>,
    /// Messages that went `sent` in the send window.
    pub sent: i64,
    /// Of those, the ones with at least one receipt.
    pub with_receipt: i64,
}

/// One delivery receipt (`receipts` row): the provider's word on a message it accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ReceiptRecord {
    /// `queued`, `sending`, `sent`, `delivered`, `undelivered`, `failed`, `read`, ...
    pub status: String,
    /// The provider's error code (Twilio 30003-30008: carrier failures), if any.
    pub error_code: Option<i64>,
    /// When drover received it (Unix ms).
    pub received_at: i64,
}

impl MessageRecord {
    /// The message to send, unless it was recorded as invalid.
    pub fn message(&self) -> Option<OutboundMessage> {
        (self.status != MessageStatus::Invalid).then(|| OutboundMessage {
            id: self.id,
            to: self.recipient.clone(),
            body: self.body.clone(),
            from: self.sender.clone(),
            correlation_id: self.correlation_id.clone(),
        })
    }
}

/// One attempt (`attempts` row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AttemptRecord {
    /// Sequence number among this message's attempts (1, 2, …), never reused. It differs
    /// from the `attempt` of [`Admission::Proceed`] once an attempt was deferred or the message was
    /// [`retry`](super::Store::retry)ed, since those give attempts back to the budget.
    pub attempt: u32,
    /// When the worker was admitted (Unix ms).
    pub started_at: i64,
    /// When the outcome was recorded (Unix ms).
    pub finished_at: Option<i64>,
    /// How it ended; `None` while in flight.
    pub outcome: Option<OutcomeKind>,
    /// Error class (`interrupted` for an attempt whose worker died).
    pub error_class: Option<String>,
    /// Error (for a deferred attempt: the reason).
    pub error: Option<String>,
    /// How long the provider call took.
    pub latency_ms: Option<i64>,
    /// The provider's id, if it accepted the message.
    pub provider_message_id: Option<String>,
    /// Which provider of the chain made the call (`None` before migration 0006, or for an
    /// attempt that made none).
    pub provider: Option<String>,
}
