//! The HTTP status endpoint: the live tree and the chaos hook.
//!
//! Every answer comes from the tree's cached state ([`Tree::snapshot`]), never from messaging
//! an actor, so a hung actor cannot hang the endpoint.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the live dashboard (see [`crate::dashboard`]) |
//! | `GET /status` | the whole tree as JSON; `?format=text` for a terminal |
//! | `POST /actors/{path}/kill` | kill the actor at `path` (admin: bearer token + switch) |
//! | `POST /messages` | accept a message (the contract of `drover_actors::message`; `Content-Type: application/json`; `Idempotency-Key` honoured; rate-limited): validated, published to the work queue with a confirm; 202 with its id |
//! | `GET /livez` | 200 while the root supervisor is alive, else 503 |
//! | `GET /readyz` | `application/health+json`: database, broker, scheduler (decide readiness) and the provider's circuit (only warns) |
//! | `GET /metrics` | Prometheus text format (see [`crate::metrics`]) |
//! | `GET /messages/{id}` | a message's state and attempt history (body and recipient masked unless the admin token asks `?reveal=true`) |
//! | `GET /trends` | the last 15 minutes sampled: throughput by outcome, provider latency, queue depths, restarts |
//! | `GET /messages` | messages newest first, a page at a time (`status`, `q` = an exact id, correlation id or recipient, `before`, `limit`); masked like one message |
//! | `GET /messages/failures` | failed messages grouped by their last error's class |
//! | `POST /messages/failures/{class}/retry` | put a whole failure group back into play (admin; at most 500 a call) |
//! | `GET /openapi.json` | this API's OpenAPI description ([`crate::openapi`]) |
//! | `POST /messages/{id}/retry` | put a failed message back into play (admin) |
//! | `POST /failed/redrive` | re-drive the failed queue, rate-limited; `?dry_run=true` reports what it would (admin) |
//! | `POST /consumption/pause`, `POST /consumption/resume` | stop / resume taking deliveries (admin) |
//!
//! Who may call what: [`crate::access`]. The probes (`/livez`, `/readyz`, `/metrics`) answer
//! from cached state only. The other routes
//! may message an actor or query a dependency, always under a timeout.

use std::fmt::Write as _;
use std::net::SocketAddr;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use drover_actors::message::{Envelope, Invalid, parse};
use drover_actors::pipeline::Pipeline;
use drover_actors::pipeline::admin::{self, AdminError, Consumption, Intake};
use drover_actors::pipeline::ops::circuit_level;
use drover_actors::provider::{CircuitState, ProviderKind, receipt};
use drover_actors::store::{ListQuery, MessageStatus};
use drover_actors::supervisor::{SupervisorError, SupervisorMessage};
use drover_actors::tree::{LookupError, NodeStatus, Tree, TreeSnapshot};
use ractor::ActorRef;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

pub use crate::access::AdminConfig;
use crate::access::{Access, Caller, mask_record};
use crate::metrics::Metrics;

/// Content type of `/livez` and `/readyz` (draft-inadarei-api-health-check).
pub const HEALTH_JSON: &str = "application/health+json";
/// Content type of `/metrics`.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address.
    pub addr: SocketAddr,
    /// Sample the queues' depths for `/metrics` this often (a scrape never queries the broker).
    pub queue_sample_ms: u64,
}

#[derive(Clone, Debug)]
struct AppState {
    tree: Tree,
    access: Access,
    pipeline: Option<Pipeline>,
    metrics: Metrics,
    /// The rendered OpenAPI description served at `/openapi.json` ([`crate::openapi::json`]).
    openapi: Option<Arc<str>>,
}

/// The router over a live tree (and its pipeline, for the message and admin routes), with a
/// metrics recorder of its own: the pipeline's counters show only if they were registered
/// with it, so an application serves [`router_with_metrics`] (see `App::router`).
/// With `admin` and the default `[api]`, as a loopback listener (protected mode).
pub fn router(tree: Tree, admin: AdminConfig, pipeline: Option<Pipeline>) -> Router {
    let access = Access::new(admin, crate::access::ApiConfig::default(), true);
    router_with_metrics(tree, access, pipeline, Metrics::new(), None)
}

/// The router, rendering `/metrics` from `metrics` (the recorder the pipeline's counters are
/// bound to) and serving `openapi` at `/openapi.json`.
pub fn router_with_metrics(
    tree: Tree,
    access: Access,
    pipeline: Option<Pipeline>,
    metrics: Metrics,
    openapi: Option<Arc<str>>,
) -> Router {
    // The payload cap applies before the body is read whole (`message.max_payload_bytes`).
    let max_payload = pipeline
        .as_ref()
        .map_or(64 * 1024, |p| p.config.message.max_payload_bytes);
    Router::new()
        .route("/", get(crate::dashboard::page))
        .route("/status", get(status))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/trends", get(trends))
        .route("/openapi.json", get(openapi_json))
        .route("/actors/{*rest}", post(actor_action))
        .route(
            "/messages",
            post(accept_message)
                .layer(DefaultBodyLimit::max(max_payload))
                .get(list_messages),
        )
        .route("/messages/failures", get(failure_groups))
        .route("/messages/failures/{class}/retry", post(retry_group))
        .route("/messages/{id}", get(get_message))
        .route("/messages/{id}/retry", post(retry_message))
        .route("/failed/redrive", post(redrive))
        .route("/consumption/pause", post(pause))
        .route("/consumption/resume", post(resume))
        .route("/providers/twilio/status", post(twilio_status))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .with_state(AppState {
            tree,
            access,
            pipeline,
            metrics,
            openapi,
        })
}

/// An invalid message: 413 for a payload over the cap, 422 for the rest, with the class.
fn refused(invalid: &Invalid) -> Response {
    let code = match invalid {
        Invalid::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    (
        code,
        axum::Json(json!({ "error": invalid.reason(), "class": invalid.class() })),
    )
        .into_response()
}

/// Namespace of ids derived from `Idempotency-Key` headers (UUID v5 of the key).
const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x6472_6f76_6572_2d69_646d_2d6b_6579_0001);

/// A JSON refusal with its class.
fn refusal(code: StatusCode, class: &str, error: &str) -> Response {
    (code, axum::Json(json!({ "error": error, "class": class }))).into_response()
}

/// `Content-Type: application/json` (parameters such as `charset` allowed). Anything else
/// is refused with 415: a browser's cross-site form post cannot send it without a CORS
/// preflight, which drover never answers.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// The id of a POSTed message: its body's `id`, else one derived from its `Idempotency-Key`
/// (the same key, the same message), else a fresh UUIDv7 (every POST a message of its own).
/// `Err` for a key that is not 1 to 255 visible ASCII characters.
fn intake_id(headers: &HeaderMap) -> Result<(Uuid, bool), &'static str> {
    match headers.get("idempotency-key") {
        None => Ok((Uuid::now_v7(), false)),
        Some(v) => {
            let key = v.as_bytes();
            if key.is_empty()
                || key.len() > 255
                || !key.iter().all(|b| b.is_ascii_graphic() || *b == b' ')
            {
                return Err("Idempotency-Key must be 1 to 255 visible ASCII characters");
            }
            Ok((Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, key), true))
        }
    }
}

/// `POST /messages`: check the caller, the media type and the rate; validate; publish to the
/// work queue (confirmed); answer 202 with the id. A message whose id is already known (the
/// same `Idempotency-Key` or body `id` again) is not published again: 200 with its state if
/// the payload is the same, 422 if it is not.
#[utoipa::path(post, path = "/messages", tag = "messages",
    request_body(content = crate::responses::SubmitMessage, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header,
        description = "1 to 255 visible ASCII characters: the same key and payload give the same message (no second send); the same key with another payload is refused (422)")),
    responses(
        (status = 202, description = "Published to the work queue (confirmed)", body = crate::responses::Accepted),
        (status = 200, description = "A message with this id exists with the same payload; not sent again", body = crate::responses::Duplicate),
        (status = 400, description = "A malformed Idempotency-Key", body = crate::responses::ErrorBody),
        (status = 401, description = "A wrong token, or none while api.token is set", body = crate::responses::ErrorBody),
        (status = 413, description = "Over message.max_payload_bytes", body = crate::responses::ErrorBody),
        (status = 415, description = "Not Content-Type: application/json", body = crate::responses::ErrorBody),
        (status = 422, description = "Invalid under the message contract, or an Idempotency-Key reused with another payload", body = crate::responses::ErrorBody),
        (status = 429, description = "Over api.max_per_second", body = crate::responses::ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The broker or the store did not take it", body = crate::responses::ErrorBody),
    ),
    security((), ("api_token" = []), ("admin_token" = [])))]
async fn accept_message(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err((code, why)) = app.access.messages(&headers) {
        return error(code, why);
    }
    let Some(p) = app.pipeline else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no delivery pipeline in this process",
        );
    };
    if !is_json(&headers) {
        return refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "POST /messages takes Content-Type: application/json",
        );
    }
    if let Err(secs) = app.access.take_submission() {
        let mut r = refusal(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            &format!("more than api.max_per_second submissions; retry in {secs} s"),
        );
        if let Ok(v) = header::HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let max = p.config.message.max_payload_bytes;
    let body = match body {
        Ok(b) => b,
        // Over the cap: refused before it was read whole.
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return refused(&Invalid::PayloadTooLarge { max });
        }
        Err(r) => return error(r.status(), &r.body_text()),
    };
    let (id, keyed) = match intake_id(&headers) {
        Ok(k) => k,
        Err(why) => return refusal(StatusCode::BAD_REQUEST, "bad_idempotency_key", why),
    };
    let envelope = Envelope {
        message_id: Some(id.to_string()),
        correlation_id: None,
    };
    let msg = match parse(&body, &envelope, &p.config.message) {
        Ok(m) => m,
        Err(invalid) => return refused(&invalid),
    };
    match admin::submit(&p, &msg, keyed || msg.id != id).await {
        Ok(Intake::Accepted) => (
            StatusCode::ACCEPTED,
            axum::Json(crate::responses::Accepted {
                id: msg.id,
                correlation_id: msg.correlation_id,
            }),
        )
            .into_response(),
        Ok(Intake::Duplicate(rec)) => {
            let duplicate = crate::responses::Duplicate {
                id: rec.id,
                correlation_id: rec.correlation_id,
                status: rec.status,
                duplicate: true,
            };
            (StatusCode::OK, axum::Json(duplicate)).into_response()
        }
        Err(e) => admin_error(&e),
    }
}

#[derive(Debug, Deserialize)]
struct StatusQuery {
    format: Option<String>,
}

#[utoipa::path(get, path = "/status", tag = "probes",
    params(("format" = Option<String>, Query, description = "`json` (the default) or `text`")),
    responses(
        (status = 200, description = "The live supervision tree (JSON, or indented text with ?format=text)", 
            content((Object = "application/json"), (String = "text/plain"))),
        (status = 400, description = "An unknown format", body = crate::responses::ErrorBody),
    ))]
async fn status(
    State(app): State<AppState>,
    q: Result<Query<StatusQuery>, QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(r) => return bad_query(&r),
    };
    let snap = app.tree.snapshot();
    match q.format.as_deref() {
        Some("text") => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            crate::tree_text::render(&crate::tree_text::from_server(&snap), false),
        )
            .into_response(),
        Some("json") | None => axum::Json(snap).into_response(),
        Some(other) => error(
            StatusCode::BAD_REQUEST,
            &format!("unknown format `{other}` (json or text)"),
        ),
    }
}

/// A query string that does not parse: 400, as JSON like every other refusal.
fn bad_query(r: &QueryRejection) -> Response {
    error(StatusCode::BAD_REQUEST, &r.body_text())
}

fn error(code: StatusCode, message: &str) -> Response {
    (code, axum::Json(json!({ "error": message }))).into_response()
}

/// `POST /actors/{path}/{action}`: one route for the actor actions (axum's wildcard must end
/// the path), each handled below.
async fn actor_action(
    State(app): State<AppState>,
    Path(rest): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err((code, why)) = app.access.destructive(&headers) {
        return error(code, why);
    }
    let Some((path, action)) = rest.rsplit_once('/') else {
        return error(StatusCode::NOT_FOUND, ACTIONS);
    };
    match action {
        "kill" => kill_actor(&app, path),
        "terminate" => terminate_actor(&app, path).await,
        "restart" => restart_actor(&app, path).await,
        _ => error(StatusCode::NOT_FOUND, ACTIONS),
    }
}

const ACTIONS: &str =
    "unknown action (POST /actors/{path}/kill, /actors/{path}/terminate or /actors/{path}/restart)";

#[utoipa::path(post, path = "/actors/{path}/kill", tag = "admin",
    params(("path" = String, Path, description = "The actor's path in the tree, e.g. `root/broker/consumer`")),
    responses(
        (status = 202, description = "Killed; its supervisor handles the exit", body = crate::responses::Killed),
        (status = 401, description = "Not the admin token", body = crate::responses::ErrorBody),
        (status = 403, description = "admin.allow_destructive_actions is off", body = crate::responses::ErrorBody),
        (status = 404, description = "No such actor or action", body = crate::responses::ErrorBody),
        (status = 409, description = "The actor is not running, or it is the root", body = crate::responses::ErrorBody),
    ),
    security(("admin_token" = [])))]
fn kill_actor(app: &AppState, path: &str) -> Response {
    if path == crate::ROOT {
        return error(
            StatusCode::CONFLICT,
            "refusing to kill the root supervisor: nothing would restart it and the process \
             would exit; to stop drover send it SIGTERM, to restart a subtree kill that",
        );
    }
    let before = app.tree.snapshot();
    let generation = before.find(path).map(|n| n.generation);
    match app.tree.lookup(path) {
        Ok(cell) => {
            tracing::warn!(actor = %path, "killing actor on operator request");
            cell.kill();
            (
                StatusCode::ACCEPTED,
                axum::Json(json!({ "killed": path, "generation": generation })),
            )
                .into_response()
        }
        Err(LookupError::NotFound) => {
            error(StatusCode::NOT_FOUND, &format!("no actor at `{path}`"))
        }
        Err(e) => error(StatusCode::CONFLICT, &format!("`{path}`: {e}")),
    }
}

/// The supervisor of `path` and the child's id there; the refusal's status and reason.
fn parent_of(
    app: &AppState,
    path: &str,
) -> Result<(ActorRef<SupervisorMessage>, String), (StatusCode, String)> {
    let Some((parent, id)) = path.rsplit_once('/') else {
        return Err((
            StatusCode::CONFLICT,
            format!("`{path}` is the root: it has no supervisor (stop the process instead)"),
        ));
    };
    app.tree
        .handle(parent)
        .actor_ref::<SupervisorMessage>()
        .map(|sup| (sup, id.to_owned()))
        .map_err(|e| match e {
            LookupError::NotFound => (
                StatusCode::NOT_FOUND,
                format!("no supervisor at `{parent}`"),
            ),
            e => (StatusCode::CONFLICT, format!("`{parent}`: {e}")),
        })
}

/// A supervisor's refusal as an HTTP status.
fn supervisor_refusal(path: &str, e: &SupervisorError) -> Response {
    let code = match e {
        SupervisorError::NoSuchChild(_) => StatusCode::NOT_FOUND,
        SupervisorError::Unreachable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::CONFLICT,
    };
    error(code, &format!("`{path}`: {e}"))
}

#[utoipa::path(post, path = "/actors/{path}/terminate", tag = "admin",
    params(("path" = String, Path, description = "The actor's path in the tree, e.g. `root/scheduler`")),
    responses(
        (status = 200, description = "Stopped by its supervisor with its shutdown policy; not restarted until `restart`", body = crate::responses::Terminated),
        (status = 401, description = "Not the admin token", body = crate::responses::ErrorBody),
        (status = 403, description = "admin.allow_destructive_actions is off", body = crate::responses::ErrorBody),
        (status = 404, description = "No such actor or action", body = crate::responses::ErrorBody),
        (status = 409, description = "The root, or its supervisor is not running", body = crate::responses::ErrorBody),
        (status = 503, description = "Its supervisor did not answer", body = crate::responses::ErrorBody),
    ),
    security(("admin_token" = [])))]
async fn terminate_actor(app: &AppState, path: &str) -> Response {
    let (sup, id) = match parent_of(app, path) {
        Ok(p) => p,
        Err((code, why)) => return error(code, &why),
    };
    tracing::warn!(actor = %path, "terminating actor on operator request");
    match drover_actors::supervisor::terminate_child(&sup, &id).await {
        Ok(()) => axum::Json(json!({ "terminated": path })).into_response(),
        Err(e) => supervisor_refusal(path, &e),
    }
}

#[utoipa::path(post, path = "/actors/{path}/restart", tag = "admin",
    params(("path" = String, Path, description = "The path of a terminated actor, e.g. `root/scheduler`")),
    responses(
        (status = 200, description = "Started again by its supervisor", body = crate::responses::Restarted),
        (status = 401, description = "Not the admin token", body = crate::responses::ErrorBody),
        (status = 403, description = "admin.allow_destructive_actions is off", body = crate::responses::ErrorBody),
        (status = 404, description = "No such actor or action", body = crate::responses::ErrorBody),
        (status = 409, description = "It is running or restarting, its start failed, or it is the root", body = crate::responses::ErrorBody),
        (status = 503, description = "Its supervisor did not answer", body = crate::responses::ErrorBody),
    ),
    security(("admin_token" = [])))]
async fn restart_actor(app: &AppState, path: &str) -> Response {
    let (sup, id) = match parent_of(app, path) {
        Ok(p) => p,
        Err((code, why)) => return error(code, &why),
    };
    tracing::warn!(actor = %path, "restarting actor on operator request");
    match drover_actors::supervisor::restart_child(&sup, &id).await {
        Ok(()) => {
            let generation = app.tree.snapshot().find(path).map(|n| n.generation);
            axum::Json(json!({ "restarted": path, "generation": generation })).into_response()
        }
        Err(e) => supervisor_refusal(path, &e),
    }
}

// ---- probes: cached state only ----------------------------------------------------------------

fn health(code: StatusCode, body: Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, HEALTH_JSON)],
        body.to_string(),
    )
        .into_response()
}

/// The root supervisor is alive: its record says running, its actor is alive, it has not given
/// up.
fn root_alive(tree: &Tree) -> Result<(), String> {
    if let Some(reason) = tree.gave_up() {
        return Err(format!("the root supervisor gave up: {reason}"));
    }
    tree.lookup(crate::ROOT)
        .map(|_| ())
        .map_err(|e| format!("the root supervisor is not running: {e}"))
}

/// `GET /livez`: the process answers and the root supervisor is alive. Checks nothing
/// external.
#[utoipa::path(get, path = "/livez", tag = "probes",
    responses(
        (status = 200, description = "The root supervisor is alive", body = Object, content_type = "application/health+json"),
        (status = 503, description = "It is not", body = Object, content_type = "application/health+json"),
    ))]
async fn livez(State(app): State<AppState>) -> Response {
    match root_alive(&app.tree) {
        Ok(()) => health(StatusCode::OK, json!({ "status": "pass" })),
        Err(why) => health(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "status": "fail", "output": why }),
        ),
    }
}

/// One node's check: `pass` while it is running (and its actor alive), else `fail`.
fn node_check(tree: &Tree, snap: &TreeSnapshot, path: &str) -> Value {
    let Some(n) = snap.find(path) else {
        return json!({ "componentId": path, "status": "fail", "output": "no such actor" });
    };
    let alive = n.status == NodeStatus::Running && tree.lookup(path).is_ok();
    let status = serde_json::to_value(n.status).unwrap_or(Value::Null);
    let status = status.as_str().unwrap_or("unknown");
    let mut output = if alive {
        format!(
            "running (generation {}, {} restarts)",
            n.generation, n.restarts
        )
    } else if n.status == NodeStatus::Running {
        "exited; its supervisor is handling it".to_string()
    } else {
        status.to_string()
    };
    if let Some(ms) = n.next_restart_in_ms.filter(|_| !alive) {
        let _ = write!(output, "; next restart in {ms} ms");
    }
    if let Some(e) = n.last_exits.last().filter(|_| !alive) {
        let _ = write!(output, "; last exit {:?}: {}", e.class, e.reason);
    }
    json!({
        "componentId": path,
        "componentType": "component",
        "status": if alive { "pass" } else { "fail" },
        "output": output,
    })
}

/// The readiness check of chain entry `index`: its circuit, its actor, and for the primary
/// whether traffic has moved to a fallback.
fn circuit_check(p: &Pipeline, tree: &Tree, index: usize) -> Value {
    let chain = p.config.provider.chain();
    let name = chain.get(index).map_or("", |c| c.name.as_str());
    let path = p.path(&format!("providers/{name}"));
    let now = p.clock.now_ms();
    let circuit = p.ops.providers().get(index).and_then(|v| v.circuit.clone());
    let (status, output, level) = match circuit {
        None => ("warn", "the provider has not started yet".to_string(), None),
        Some(c) => {
            let level = circuit_level(&c, now);
            let output = match &c {
                CircuitState::Closed {
                    consecutive_failures,
                } => format!("circuit closed ({consecutive_failures} failures in a row)"),
                CircuitState::Open {
                    retry_at_ms,
                    reason,
                    ..
                } if level == 2 => format!(
                    "circuit open ({reason}): a probe in {} ms",
                    retry_at_ms - now
                ),
                CircuitState::Open { reason, .. } | CircuitState::HalfOpen { reason, .. } => {
                    format!("circuit half-open ({reason}): probing")
                }
            };
            (
                if level == 0 { "pass" } else { "warn" },
                output,
                Some(level),
            )
        }
    };
    let (status, mut output) = match tree.lookup(&path) {
        Ok(_) => (status, output),
        Err(e) => ("warn", format!("{output}; the provider actor: {e}")),
    };
    let active = p.ops.active_provider();
    let status = if index == 0 && active != 0 {
        let on = chain.get(active).map_or("?", |c| c.name.as_str());
        output.push_str(&format!("; traffic is on the fallback {on}"));
        "warn"
    } else {
        status
    };
    json!({
        "componentId": path,
        "componentType": "component",
        "observedValue": level,
        "observedUnit": "circuit (0 closed, 1 half-open, 2 open)",
        "status": status,
        "output": output,
    })
}

/// `GET /readyz` (`application/health+json`): the database, the broker (connection and
/// consumer) and the scheduler decide readiness (any `fail` -> 503); the provider's circuit
/// only warns.
#[utoipa::path(get, path = "/readyz", tag = "probes",
    responses(
        (status = 200, description = "Ready (`pass`) or ready with warnings (`warn`)", body = Object, content_type = "application/health+json"),
        (status = 503, description = "A dependency fails", body = Object, content_type = "application/health+json"),
    ))]
async fn readyz(State(app): State<AppState>) -> Response {
    let snap = app.tree.snapshot();
    let mut checks = serde_json::Map::new();
    if let Err(why) = root_alive(&app.tree) {
        checks.insert(
            "root".into(),
            json!([{ "componentId": crate::ROOT, "status": "fail", "output": why }]),
        );
    }
    if let Some(p) = &app.pipeline {
        let tree = &app.tree;
        let mut database = node_check(tree, &snap, &p.path("store"));
        if let Some(ping) = p.ops.store_ping() {
            let ago = p.clock.now_ms().saturating_sub(ping.at_ms);
            let line = match &ping.error {
                None => format!("; last ping ok {ago} ms ago ({} ms)", ping.latency_ms),
                Some(e) => format!("; last ping failed {ago} ms ago: {e}"),
            };
            if let Some(Value::String(o)) = database.get_mut("output") {
                o.push_str(&line);
            }
        }
        let mut connection = node_check(tree, &snap, &p.path("broker/connection"));
        // Which node of the cluster (broker.url may list several).
        if let Some(detail) = snap
            .find(&p.path("broker/connection"))
            .and_then(|n| n.detail.as_ref())
        {
            if let Some(Value::String(o)) = connection.get_mut("output") {
                o.push_str("; ");
                o.push_str(detail);
            }
        }
        let mut consumer = node_check(tree, &snap, &p.path("broker/consumer"));
        if p.ops.consumption_paused() {
            // Ready, but not delivering: a warning an operator sees, with the backlog.
            let waiting = p
                .ops
                .queues()
                .get(&p.config.broker.work_queue)
                .map(|q| format!("; {} messages waiting in the work queue", q.ready))
                .unwrap_or_default();
            if consumer["status"] == "pass" {
                consumer["status"] = json!("warn");
            }
            if let Some(Value::String(o)) = consumer.get_mut("output") {
                o.push_str("; consumption paused by an operator (POST /consumption/resume)");
                o.push_str(&waiting);
            }
        }
        checks.insert("database".into(), json!([database]));
        checks.insert("broker".into(), json!([connection, consumer]));
        checks.insert(
            "scheduler".into(),
            json!([node_check(tree, &snap, &p.path("scheduler"))]),
        );
        let providers: Vec<Value> = (0..p.config.provider.chain().len())
            .map(|i| circuit_check(p, tree, i))
            .collect();
        checks.insert("provider".into(), Value::Array(providers));
    }
    let worst = checks
        .values()
        .flat_map(|v| v.as_array().into_iter().flatten())
        .map(|c| match c["status"].as_str() {
            Some("fail") => 2,
            Some("warn") => 1,
            _ => 0,
        })
        .max()
        .unwrap_or(0);
    let (code, status) = match worst {
        2 => (StatusCode::SERVICE_UNAVAILABLE, "fail"),
        1 => (StatusCode::OK, "warn"),
        _ => (StatusCode::OK, "pass"),
    };
    health(code, json!({ "status": status, "checks": checks }))
}

/// `GET /openapi.json`: this API's OpenAPI description ([`crate::openapi`]).
#[utoipa::path(get, path = "/openapi.json", tag = "probes",
    responses((status = 200, description = "This description", body = Object)))]
async fn openapi_json(State(app): State<AppState>) -> Response {
    match app.openapi {
        Some(doc) => (
            [(header::CONTENT_TYPE, "application/json")],
            doc.to_string(),
        )
            .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "this router was built without an API description",
        ),
    }
}

/// `GET /trends`: the last minutes sampled by the trends worker (empty without a pipeline or
/// before its first sample). Counts and depths only, like `/metrics`.
#[utoipa::path(get, path = "/trends", tag = "probes",
    responses((status = 200, description = "Samples, oldest first", body = crate::responses::TrendsBody)))]
async fn trends(State(app): State<AppState>) -> Response {
    match &app.pipeline {
        Some(p) => axum::Json(&*p.ops.trends()).into_response(),
        None => {
            axum::Json(json!({ "sample_ms": 0, "window_ms": 0, "samples": [] })).into_response()
        }
    }
}

/// `GET /metrics`: Prometheus text format, from cached state.
#[utoipa::path(get, path = "/metrics", tag = "probes",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
async fn metrics_text(State(app): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        app.metrics.render(&app.tree, app.pipeline.as_ref()),
    )
        .into_response()
}

// ---- messages and admin routes ------------------------------------------------------------------

/// An error answer, rendered as `{"error": …}`.
#[derive(Debug)]
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.0, &self.1)
    }
}

/// A destructive admin call's prelude: the admin token and the switch, then the pipeline.
fn destructive_on<'a>(app: &'a AppState, headers: &HeaderMap) -> Result<&'a Pipeline, Refusal> {
    app.access
        .destructive(headers)
        .map_err(|(code, why)| Refusal(code, why.to_string()))?;
    pipeline_of(app)
}

fn pipeline_of(app: &AppState) -> Result<&Pipeline, Refusal> {
    app.pipeline.as_ref().ok_or_else(|| {
        Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "no delivery pipeline in this process".into(),
        )
    })
}

/// Text matched against stored ids, correlation ids, numbers or error classes: none of them
/// holds a control character (the message contract refuses them), and PostgreSQL cannot take
/// a NUL in a parameter, so such text is a bad request rather than a store error.
fn searchable(what: &str, s: &str) -> Result<(), Refusal> {
    if s.chars().any(char::is_control) {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            format!("{what} holds a control character: nothing stored can match it"),
        ));
    }
    Ok(())
}

fn parse_id(raw: &str) -> Result<Uuid, Refusal> {
    Uuid::parse_str(raw)
        .map_err(|_| Refusal(StatusCode::BAD_REQUEST, format!("`{raw}` is not a UUID")))
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
}

/// An operator call's refusal as a status.
fn admin_error(e: &AdminError) -> Response {
    match e {
        AdminError::Unavailable(_) => unavailable(e),
        AdminError::NoSuchMessage(_) | AdminError::NotFailed { .. } => {
            error(StatusCode::NOT_FOUND, &e.to_string())
        }
        AdminError::IdReused(_) => refusal(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            &e.to_string(),
        ),
        AdminError::RedriveRefused {
            why,
            retry_after_ms,
        } => {
            let secs = retry_after_ms.div_ceil(1_000).max(1);
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, secs.to_string())],
                axum::Json(json!({ "error": why, "retry_after_ms": retry_after_ms })),
            )
                .into_response()
        }
    }
}

/// Consumption after a pause or resume: 202 when only the switch was set.
fn consumption(r: Result<Consumption, AdminError>) -> Response {
    match r {
        Ok(Consumption {
            paused,
            was_paused,
            by_switch: Some(note),
        }) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({ "paused": paused, "was_paused": was_paused, "note": note })),
        )
            .into_response(),
        Ok(c) => {
            axum::Json(json!({ "paused": c.paused, "was_paused": c.was_paused })).into_response()
        }
        Err(e) => admin_error(&e),
    }
}

/// `GET /messages/{id}`: the message's state and attempt history.
#[derive(Debug, Deserialize)]
struct RevealQuery {
    reveal: Option<bool>,
}

/// `GET /messages/{id}`: its state and history; body and recipient masked unless the admin
/// token asks `?reveal=true`.
#[utoipa::path(get, path = "/messages/{id}", tag = "messages",
    params(("id" = uuid::Uuid, Path, description = "The message's id"),
        ("reveal" = Option<bool>, Query, description = "Show body and recipient unmasked (admin token only)")),
    responses(
        (status = 200, description = "Its state and attempt history; body and recipient masked unless revealed", body = drover_actors::store::MessageRecord),
        (status = 400, description = "Not a UUID, or a bad query", body = crate::responses::ErrorBody),
        (status = 401, description = "A wrong token, or none while api.token is set", body = crate::responses::ErrorBody),
        (status = 403, description = "?reveal=true without the admin token", body = crate::responses::ErrorBody),
        (status = 404, description = "No such message", body = crate::responses::ErrorBody),
        (status = 503, description = "The store did not answer", body = crate::responses::ErrorBody),
    ),
    security((), ("api_token" = []), ("admin_token" = [])))]
async fn get_message(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    q: Result<Query<RevealQuery>, QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(r) => return bad_query(&r),
    };
    let caller = match app.access.messages(&headers) {
        Ok(c) => c,
        Err((code, why)) => return error(code, why),
    };
    let reveal = q.reveal.unwrap_or(false);
    if reveal && caller != Caller::Admin {
        return error(
            StatusCode::FORBIDDEN,
            "?reveal=true needs the admin token (Authorization: Bearer <admin.token>)",
        );
    }
    let id = match parse_id(&raw) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    let p = match pipeline_of(&app) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    match admin::find(p, id).await {
        Ok(Some(record)) => {
            let value = serde_json::to_value(&record).unwrap_or(Value::Null);
            axum::Json(if reveal { value } else { mask_record(value) }).into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, &format!("no message {id}")),
        Err(e) => admin_error(&e),
    }
}

/// `GET /messages` query.
#[derive(Debug, Deserialize)]
struct ListParams {
    status: Option<String>,
    q: Option<String>,
    before: Option<String>,
    limit: Option<u32>,
    reveal: Option<bool>,
}

/// Most messages a page holds.
const MAX_PAGE: u32 = 200;

/// `GET /messages`: newest first, a page at a time (`before` = the last id of the previous
/// page, `next_before` in the answer); body and recipient masked unless revealed.
#[utoipa::path(get, path = "/messages", tag = "messages",
    params(
        ("status" = Option<String>, Query, description = "Only this status (queued, sending, sent, retry_scheduled, failed, invalid)"),
        ("q" = Option<String>, Query, description = "Only the message whose id, correlation id or recipient is exactly this"),
        ("before" = Option<uuid::Uuid>, Query, description = "Only messages older than this one (the previous page's next_before)"),
        ("limit" = Option<u32>, Query, description = "At most this many, 1 to 200 (50)"),
        ("reveal" = Option<bool>, Query, description = "Show bodies and recipients unmasked (admin token only)")),
    responses(
        (status = 200, description = "A page, newest first", body = crate::responses::MessagePage),
        (status = 400, description = "A bad status, cursor or limit, or a q holding a control character", body = crate::responses::ErrorBody),
        (status = 401, description = "A wrong token, or none while api.token is set", body = crate::responses::ErrorBody),
        (status = 403, description = "?reveal=true without the admin token", body = crate::responses::ErrorBody),
        (status = 503, description = "The store did not answer", body = crate::responses::ErrorBody),
    ),
    security((), ("api_token" = []), ("admin_token" = [])))]
async fn list_messages(
    State(app): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<ListParams>, QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(r) => return bad_query(&r),
    };
    let caller = match app.access.messages(&headers) {
        Ok(c) => c,
        Err((code, why)) => return error(code, why),
    };
    let reveal = q.reveal.unwrap_or(false);
    if reveal && caller != Caller::Admin {
        return error(
            StatusCode::FORBIDDEN,
            "?reveal=true needs the admin token (Authorization: Bearer <admin.token>)",
        );
    }
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match MessageStatus::parse(s) {
            Some(s) => Some(s),
            None => return error(StatusCode::BAD_REQUEST, &format!("`{s}` is not a status")),
        },
    };
    let before = match q.before.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(raw) => match parse_id(raw) {
            Ok(id) => Some(id),
            Err(r) => return r.into_response(),
        },
    };
    let limit = q.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("limit must be 1 to {MAX_PAGE}"),
        );
    }
    let p = match pipeline_of(&app) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let search = q.q.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    if let Some(s) = &search
        && let Err(r) = searchable("q", s)
    {
        return r.into_response();
    }
    let query = ListQuery {
        status,
        q: search,
        before,
        limit,
    };
    match admin::list(p, &query).await {
        Ok(Some(page)) => {
            let next_before = (page.len() == limit as usize)
                .then(|| page.last().map(|m| m.id))
                .flatten();
            let messages: Vec<Value> = page
                .iter()
                .map(|m| {
                    let v = serde_json::to_value(m).unwrap_or(Value::Null);
                    if reveal { v } else { mask_record(v) }
                })
                .collect();
            axum::Json(json!({ "messages": messages, "next_before": next_before })).into_response()
        }
        Ok(None) => error(
            StatusCode::BAD_REQUEST,
            "`before` names no message (start again without it)",
        ),
        Err(e) => admin_error(&e),
    }
}

/// `GET /messages/failures`: failed messages grouped by their last error's class.
#[utoipa::path(get, path = "/messages/failures", tag = "messages",
    responses(
        (status = 200, description = "The groups, the largest first", body = crate::responses::FailureGroups),
        (status = 401, description = "A wrong token, or none while api.token is set", body = crate::responses::ErrorBody),
        (status = 503, description = "The store did not answer", body = crate::responses::ErrorBody),
    ),
    security((), ("api_token" = []), ("admin_token" = [])))]
async fn failure_groups(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if let Err((code, why)) = app.access.messages(&headers) {
        return error(code, why);
    }
    let p = match pipeline_of(&app) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    match admin::failure_groups(p).await {
        Ok(groups) => axum::Json(json!({ "groups": groups })).into_response(),
        Err(e) => admin_error(&e),
    }
}

/// `POST /messages/failures/{class}/retry` (admin): a whole failure group back into play.
#[utoipa::path(post, path = "/messages/failures/{class}/retry", tag = "admin",
    params(("class" = String, Path, description = "The error class, as GET /messages/failures names it")),
    responses(
        (status = 202, description = "Put back into play (at most 500 a call)", body = crate::responses::GroupRetried),
        (status = 400, description = "A class holding a control character", body = crate::responses::ErrorBody),
        (status = 401, description = "Not the admin token", body = crate::responses::ErrorBody),
        (status = 403, description = "admin.allow_destructive_actions is off", body = crate::responses::ErrorBody),
        (status = 503, description = "The scheduler or the store did not answer", body = crate::responses::ErrorBody),
    ),
    security(("admin_token" = [])))]
async fn retry_group(
    State(app): State<AppState>,
    Path(class): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err((code, why)) = app.access.destructive(&headers) {
        return error(code, why);
    }
    if let Err(r) = searchable("the error class", &class) {
        return r.into_response();
    }
    let p = match pipeline_of(&app) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    match admin::retry_group(p, &class).await {
        Ok(done) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({
                "error_class": class,
                "retried": done.retried,
                "skipped": done.skipped,
                "more": done.retried + done.skipped >= admin::GROUP_RETRY_MAX as usize,
            })),
        )
            .into_response(),
        Err(e) => admin_error(&e),
    }
}

/// `POST /messages/{id}/retry` (admin): a failed message back into play.
#[utoipa::path(post, path = "/messages/{id}/retry", tag = "admin",
    params(("id" = uuid::Uuid, Path, description = "The failed message's id")),
    responses(
        (status = 202, description = "Back into play", body = crate::responses::Retried),
        (status = 400, description = "Not a UUID", body = crate::responses::ErrorBody),
        (status = 401, description = "Not the admin token", body = crate::responses::ErrorBody),
        (status = 403, description = "admin.allow_destructive_actions is off", body = crate::responses::ErrorBody),
        (status = 404, description = "No such message, or it is not failed", body = crate::responses::ErrorBody),
        (status = 503, description = "The scheduler or the store did not answer", body = crate::responses::ErrorBody),
    ),
    security(("admin_token" = [])))]
async fn retry_message(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err((code, why)) = app.access.destructive(&headers) {
        return error(code, why);
    }
    let id = match parse_id(&raw) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    let p = match pipeline_of(&app) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    match admin::retry(p, id).await {
        Ok(()) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({ "retried": id, "status": "retry_scheduled" })),
        )
            .into_response(),
        Err(e) => admin_error(&e),
    }
}

/// `POST /failed/redrive[?dry_run=true]` (admin).
#[utoipa::path(post, path = "/failed/redrive", tag = "admin",
    params(("dry_run" = Option<bool>, Query, description = "Only report what a re-drive would take")),
    responses(
        (status = 200, description = "Dry run: the failed queue as it is", body = crate::responses::RedriveDryRun),
        (status = 202, description = "Re-drive started", body = crate::responses::Redriving),
        (status = 400, description = "A bad dry_run", body = crate::responses::ErrorBody),
        (status = 401, description = "Not the admin token", body = crate::responses::ErrorBody),
        (status = 403, description = "admin.allow_destructive_actions is off (a dry run does not need it)", body = crate::responses::ErrorBody),
        (status = 429, description = "One is running, or the last started within admin.redrive_cooldown_ms", body = crate::responses::ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The broker or the scheduler did not answer", body = crate::responses::ErrorBody),
    ),
    security(("admin_token" = [])))]
async fn redrive(
    State(app): State<AppState>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(r) => return bad_query(&r),
    };
    let dry_run = match q.get("dry_run").map(String::as_str) {
        None | Some("false" | "0") => false,
        Some("true" | "1" | "") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("dry_run must be true or false, not `{other}`"),
            );
        }
    };
    // A dry run only reads: the admin token suffices, without the destructive switch.
    let allowed = if dry_run {
        app.access.admin(&headers)
    } else {
        app.access.destructive(&headers)
    };
    if let Err((code, why)) = allowed {
        return error(code, why);
    }
    let p = match pipeline_of(&app) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    if dry_run {
        return match admin::failed_queue(p).await {
            Ok(f) => axum::Json(json!({
                "dry_run": true,
                "queue": f.queue,
                "depth": f.depth,
                // Transient failures go back into play; permanent ones back to the failed queue.
                "would_redrive_at_most": f.depth,
                "consumers": f.consumers,
                "redrive": f.redrive,
            }))
            .into_response(),
            Err(e) => admin_error(&e),
        };
    }
    match admin::redrive(p, app.access.admin.redrive_cooldown_ms) {
        Ok(r) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({
                "redriving": true,
                "queue": r.queue,
                "depth_last_sampled": r.depth_last_sampled,
            })),
        )
            .into_response(),
        Err(e) => admin_error(&e),
    }
}

/// `POST /consumption/pause` (admin).
#[utoipa::path(post, path = "/consumption/pause", tag = "admin",
    responses(
        (status = 200, description = "Paused", body = crate::responses::Consumption),
        (status = 202, description = "Paused by the switch: the consumer is restarting and follows it", body = crate::responses::Consumption),
        (status = 401, description = "Not the admin token", body = crate::responses::ErrorBody),
        (status = 403, description = "admin.allow_destructive_actions is off", body = crate::responses::ErrorBody),
        (status = 503, description = "The consumer did not answer", body = crate::responses::ErrorBody),
    ),
    security(("admin_token" = [])))]
async fn pause(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let p = match destructive_on(&app, &headers) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    consumption(admin::pause(p).await)
}

/// `POST /consumption/resume` (admin).
#[utoipa::path(post, path = "/consumption/resume", tag = "admin",
    responses(
        (status = 200, description = "Resumed", body = crate::responses::Consumption),
        (status = 202, description = "Resumed by the switch: the consumer is restarting and follows it", body = crate::responses::Consumption),
        (status = 401, description = "Not the admin token", body = crate::responses::ErrorBody),
        (status = 403, description = "admin.allow_destructive_actions is off", body = crate::responses::ErrorBody),
        (status = 503, description = "The consumer did not answer", body = crate::responses::ErrorBody),
    ),
    security(("admin_token" = [])))]
async fn resume(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let p = match destructive_on(&app, &headers) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    consumption(admin::resume(p).await)
}

/// `POST /providers/twilio/status`: Twilio's status callback for a message drover sent with
/// `StatusCallback` (`provider.twilio.status_callback_url`). Authenticated by its
/// `X-Twilio-Signature` over that configured URL and the form (403 when it does not match),
/// not by drover's tokens. The receipt is recorded on the message whose provider id it names;
/// an unknown sid is acknowledged (200) and logged, so Twilio does not keep retrying it.
#[utoipa::path(post, path = "/providers/twilio/status", tag = "providers",
    request_body(content_type = "application/x-www-form-urlencoded",
        description = "Twilio's status callback form: MessageSid, MessageStatus, ErrorCode, ..."),
    responses(
        (status = 200, description = "Recorded, or for a sid drover does not know: acknowledged"),
        (status = 400, description = "Not a status callback (no MessageSid or MessageStatus)", body = crate::responses::ErrorBody),
        (status = 403, description = "X-Twilio-Signature missing or not Twilio's", body = crate::responses::ErrorBody),
        (status = 404, description = "Receipts are off (no provider.twilio.status_callback_url)", body = crate::responses::ErrorBody),
        (status = 503, description = "The store did not answer", body = crate::responses::ErrorBody),
    ))]
async fn twilio_status(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(p) = app.pipeline.as_ref() else {
        return error(
            StatusCode::NOT_FOUND,
            "no delivery pipeline in this process",
        );
    };
    let twilio = &p.config.provider.twilio;
    let url = match twilio.status_callback_url.as_deref().map(str::trim) {
        Some(url) if !url.is_empty() && p.config.provider.kind == ProviderKind::Twilio => url,
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "receipts are off: provider.twilio.status_callback_url is not set",
            );
        }
    };
    let params: Vec<(String, String)> = url::form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let signature = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !receipt::twilio_signature_matches(&twilio.auth_token, url, &params, signature) {
        tracing::warn!("status callback refused: X-Twilio-Signature missing or not Twilio's");
        return error(
            StatusCode::FORBIDDEN,
            "X-Twilio-Signature missing or not Twilio's",
        );
    }
    let receipt = match receipt::parse_twilio_callback(&params) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("not a status callback: {e}"),
            );
        }
    };
    match admin::record_receipt(p, &receipt).await {
        Ok(found) => {
            p.ops.metrics.delivery(&receipt.status).increment(1);
            match found {
                Some(id) => {
                    tracing::info!(%id, provider_message_id = %receipt.provider_message_id, status = %receipt.status, error_code = ?receipt.error_code, "delivery receipt")
                }
                None => {
                    tracing::warn!(provider_message_id = %receipt.provider_message_id, status = %receipt.status, "delivery receipt for a message drover does not know; acknowledged")
                }
            }
            StatusCode::OK.into_response()
        }
        Err(e) => admin_error(&e),
    }
}
