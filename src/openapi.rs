//! `GET /openapi.json`: the OpenAPI 3.1 description of drover's own HTTP API, generated from
//! the handlers' annotations (`utoipa`), with the two bearer-token security schemes. The
//! router is handed the rendered description ([`json`]) by the application, so `http` never
//! imports this module (which imports `http`'s handlers).
//!
//! The bodies' shapes live in [`crate::responses`]; CI runs schemathesis against the running
//! binary with this description (`tests/run.sh`), so a handler that drifts from it fails there.

use drover_actors::store::{
    AttemptRecord, FailureGroup, MessageRecord, MessageStatus, MessageSummary, OutcomeKind,
    ReceiptRecord,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::responses::{
    Accepted, Consumption, Duplicate, ErrorBody, FailureGroups, GroupRetried, Killed, MessagePage,
    RedriveDryRun, Redriving, Restarted, Retried, SubmitMessage, Terminated, TrendSampleBody,
    TrendsBody,
};

/// Name of the security scheme of `api.token`.
pub const API_TOKEN: &str = "api_token";
/// Name of the security scheme of `admin.token`.
pub const ADMIN_TOKEN: &str = "admin_token";

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
        crate::http::trends,
        crate::http::openapi_json,
        crate::http::accept_message,
        crate::http::get_message,
        crate::http::list_messages,
        crate::http::failure_groups,
        crate::http::retry_group,
        crate::http::kill_actor,
        crate::http::terminate_actor,
        crate::http::restart_actor,
        crate::http::retry_message,
        crate::http::redrive,
        crate::http::pause,
        crate::http::resume,
        crate::http::twilio_status,
    ),
    components(schemas(
        SubmitMessage, Accepted, Duplicate, ErrorBody, Killed, Terminated, Restarted, Retried,
        RedriveDryRun, Redriving,
        Consumption, MessageRecord, AttemptRecord, ReceiptRecord, MessageStatus, OutcomeKind,
        MessagePage, FailureGroups, GroupRetried, MessageSummary, FailureGroup, TrendsBody,
        TrendSampleBody
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
            "/trends",
            "/openapi.json",
            "/messages",
            "/messages/{id}",
            "/messages/failures",
            "/messages/failures/{class}/retry",
            "/actors/{path}/kill",
            "/actors/{path}/terminate",
            "/actors/{path}/restart",
            "/messages/{id}/retry",
            "/failed/redrive",
            "/consumption/pause",
            "/consumption/resume",
            "/providers/twilio/status",
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
