//! `GET /openapi.json`: the OpenAPI 3.1 description of drover's own HTTP API, generated from
//! the handlers' annotations (`utoipa`), with the two bearer-token security schemes.
//!
//! The shapes below are what the handlers answer; CI runs schemathesis against the running
//! binary with this description (`tests/run.sh`), so a handler that drifts from it fails there.

use drover_actors::store::{AttemptRecord, MessageRecord, MessageStatus, OutcomeKind};
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use uuid::Uuid;

/// Name of the security scheme of `api.token`.
pub const API_TOKEN: &str = "api_token";
/// Name of the security scheme of `admin.token`.
pub const ADMIN_TOKEN: &str = "admin_token";

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

#[derive(Debug)]
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, what) in [
            (
                API_TOKEN,
                "`api.token` (DROVER_API__TOKEN): the message routes. Empty: protected mode, \
                 anonymous callers on a loopback listener only.",
            ),
            (
                ADMIN_TOKEN,
                "`admin.token` (DROVER_ADMIN__TOKEN): the admin routes, and the message routes \
                 too; `?reveal=true` on reads.",
            ),
        ] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(what))
                        .build(),
                ),
            );
        }
    }
}

/// The description of every route of [`crate::http`].
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "drover", description = "drover's HTTP API: intake, reads, probes, operations."),
    paths(
        crate::dashboard::page,
        crate::http::status,
        crate::http::livez,
        crate::http::readyz,
        crate::http::metrics_text,
        crate::http::openapi_json,
        crate::http::accept_message,
        crate::http::get_message,
        crate::http::actor_action,
        crate::http::retry_message,
        crate::http::redrive,
        crate::http::pause,
        crate::http::resume,
    ),
    components(schemas(
        SubmitMessage, Accepted, Duplicate, ErrorBody, Killed, Retried, RedriveDryRun, Redriving,
        Consumption, MessageRecord, AttemptRecord, MessageStatus, OutcomeKind
    )),
    modifiers(&SecuritySchemes),
)]
pub struct ApiDoc;

/// The description as JSON.
pub fn json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"cannot render: {e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described_with_both_token_schemes() {
        let doc: serde_json::Value = serde_json::from_str(&json()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/",
            "/status",
            "/livez",
            "/readyz",
            "/metrics",
            "/openapi.json",
            "/messages",
            "/messages/{id}",
            "/actors/{path}/kill",
            "/messages/{id}/retry",
            "/failed/redrive",
            "/consumption/pause",
            "/consumption/resume",
        ] {
            assert!(paths.contains_key(p), "{p} missing from the description");
        }
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes[API_TOKEN]["scheme"], "bearer");
        assert_eq!(schemes[ADMIN_TOKEN]["scheme"], "bearer");
        let post = &doc["paths"]["/messages"]["post"];
        for code in [
            "200", "202", "400", "401", "413", "415", "422", "429", "503",
        ] {
            assert!(post["responses"][code].is_object(), "POST /messages {code}");
        }
        assert!(post["responses"]["429"]["headers"]["Retry-After"].is_object());
    }
}
