//! The shapes of the HTTP API's bodies, as [`crate::openapi`] describes them. `POST /messages`
//! answers with these types themselves; the other handlers still build their JSON inline, and
//! CI's schemathesis run (`tests/schemathesis.sh`) checks every real answer against these.

use drover_actors::store::MessageStatus;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// The body of `POST /messages` (the contract of `drover_actors::message`; unknown fields are
/// refused).
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documentation only: the handler parses the bytes itself, under limits
pub struct SubmitMessage {
    /// Destination number, E.164 (`+`, then 2 to 15 digits, not starting with 0).
    #[schema(pattern = r"^\+[1-9][0-9]{1,14}$")]
    to: String,
    /// The text (at most `message.max_body_chars` characters).
    #[schema(min_length = 1)]
    body: String,
    /// Sender id or number (at most `message.max_from_bytes` bytes).
    from: Option<String>,
    /// The message's id, a UUID; without it (and without an `Idempotency-Key`) every POST is a
    /// message of its own.
    id: Option<Uuid>,
    /// Carried through logs, rows and provider calls; the id if absent.
    correlation_id: Option<String>,
}

/// `202` to `POST /messages`: published to the work queue, confirmed by the broker.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    pub id: Uuid,
    pub correlation_id: String,
}

/// `200` to `POST /messages`: a message with this id exists with the same payload; nothing
/// was published again.
#[derive(Debug, Serialize, ToSchema)]
pub struct Duplicate {
    pub id: Uuid,
    pub correlation_id: String,
    pub status: MessageStatus,
    /// Always `true`.
    pub duplicate: bool,
}

/// Every refusal and failure: a sentence, and for message refusals a stable class.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for humans.
    pub error: String,
    /// For machines: e.g. `unsupported_media_type`, `rate_limited`, `idempotency_key_reused`,
    /// `bad_idempotency_key`, or the invalid-message class (`payload_too_large`, `bad_json`,
    /// ...).
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// With a `429` of `POST /failed/redrive`: when to try again.
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// `202` to `POST /actors/{path}/kill`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Killed {
    pub killed: String,
    pub generation: Option<u64>,
}

/// `200` to `POST /actors/{path}/terminate`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Terminated {
    pub terminated: String,
}

/// `200` to `POST /actors/{path}/restart`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Restarted {
    pub restarted: String,
    /// The new incarnation's generation.
    pub generation: Option<u64>,
}

/// `202` to `POST /messages/{id}/retry`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Retried {
    pub retried: Uuid,
    /// Always `retry_scheduled`.
    pub status: String,
}

/// `200` to `POST /failed/redrive?dry_run=true`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RedriveDryRun {
    pub dry_run: bool,
    pub queue: String,
    pub depth: u32,
    pub would_redrive_at_most: u32,
    pub consumers: u32,
    /// The last re-drive, as seen.
    #[schema(value_type = Object)]
    pub redrive: serde_json::Value,
}

/// `202` to `POST /failed/redrive`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Redriving {
    pub redriving: bool,
    pub queue: String,
    /// The failed queue's depth when last sampled, if it was.
    pub depth_last_sampled: Option<u32>,
}

/// `200` / `202` to `POST /consumption/pause` and `/resume` (`202`: the consumer is
/// restarting; its next incarnation follows the switch).
#[derive(Debug, Serialize, ToSchema)]
pub struct Consumption {
    pub paused: bool,
    pub was_paused: bool,
    /// With a `202`: why the consumer was not told directly.
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `200` to `GET /messages`: a page, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessagePage {
    /// Body and recipient masked unless revealed.
    pub messages: Vec<drover_actors::store::MessageSummary>,
    /// Pass as `before` for the next page; `null` on the last.
    pub next_before: Option<Uuid>,
}

/// `200` to `GET /messages/failures`.
#[derive(Debug, Serialize, ToSchema)]
pub struct FailureGroups {
    pub groups: Vec<drover_actors::store::FailureGroup>,
}

/// `202` to `POST /messages/failures/{class}/retry`.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupRetried {
    pub error_class: String,
    /// Put back into play.
    pub retried: u64,
    /// No longer failed when their turn came.
    pub skipped: u64,
    /// The group had more than one call takes: call again.
    pub more: bool,
}

/// `200` to `GET /trends` (built by `drover_actors::pipeline::trends`).
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documentation only: the handler serializes the trends worker's ring
pub struct TrendsBody {
    /// One sample per this many milliseconds.
    sample_ms: u64,
    /// Samples of this long are kept.
    window_ms: u64,
    /// Oldest first.
    samples: Vec<TrendSampleBody>,
}

/// One interval of `GET /trends`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documentation only
pub struct TrendSampleBody {
    /// End of the interval (Unix ms).
    at_ms: i64,
    interval_ms: u64,
    /// Attempts by outcome (sent, retry, failed, deferred, ambiguous) and invalid messages.
    outcomes: std::collections::BTreeMap<String, u64>,
    /// Provider calls.
    calls: u64,
    /// Their mean latency; null without a call.
    latency_ms: Option<f64>,
    /// Messages ready per queue.
    queues: std::collections::BTreeMap<String, u32>,
    /// Restarts in the tree.
    restarts: u64,
}
