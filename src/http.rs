//! The HTTP status endpoint: the live tree and the chaos hook.
//!
//! Every answer comes from the tree's cached state ([`Tree::snapshot`]), never from messaging
//! an actor, so a hung actor cannot hang the endpoint.
//!
//! | route | what |
//! |---|---|
//! | `GET /status` | the whole tree as JSON; `?format=text` for a terminal |
//! | `POST /actors/{path}/kill` | kill the actor at `path` (admin: bearer token + switch) |
//! | `POST /messages` | accept a message (the contract of `drover_actors::message`): validated, published to the work queue with a confirm; 202 with its id |

use std::fmt::Write as _;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use drover_actors::broker::{Outgoing, Route};
use drover_actors::message::{Envelope, parse};
use drover_actors::pipeline::Pipeline;
use drover_actors::pipeline::broker::publish;
use drover_actors::tree::{LookupError, NodeSnapshot, Tree, TreeSnapshot};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address.
    pub addr: SocketAddr,
}

/// `[admin]`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token of admin routes; empty refuses everyone.
    pub token: String,
    /// Destructive admin routes answer 403 unless this is on.
    pub allow_destructive_actions: bool,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &"<redacted>")
            .field("allow_destructive_actions", &self.allow_destructive_actions)
            .finish()
    }
}

#[derive(Clone, Debug)]
struct AppState {
    tree: Tree,
    admin: AdminConfig,
    pipeline: Option<Pipeline>,
}

/// The router over a live tree (and its pipeline, for `POST /messages`).
pub fn router(tree: Tree, admin: AdminConfig, pipeline: Option<Pipeline>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/actors/{*rest}", post(actor_action))
        .route("/messages", post(accept_message))
        .with_state(AppState {
            tree,
            admin,
            pipeline,
        })
}

/// `POST /messages`: validate, publish to the work queue (confirmed), answer 202 with the id.
/// The published body always carries the id, so a retried POST of the same JSON (with or
/// without an id) maps to the same message.
async fn accept_message(State(app): State<AppState>, body: Bytes) -> Response {
    let Some(p) = app.pipeline else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no delivery pipeline in this process",
        );
    };
    let msg = match parse(&body, &Envelope::default(), &p.config.message) {
        Ok(m) => m,
        Err(invalid) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                axum::Json(json!({ "error": invalid.to_string(), "class": invalid.class() })),
            )
                .into_response();
        }
    };
    let out = Outgoing {
        body: msg.to_json(),
        message_id: Some(msg.id.to_string()),
        correlation_id: Some(msg.correlation_id.clone()),
        headers: Default::default(),
    };
    match publish(&p, Route::Work, out).await {
        Ok(()) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({ "id": msg.id, "correlation_id": msg.correlation_id })),
        )
            .into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("not accepted: {e}"),
        ),
    }
}

#[derive(Debug, Deserialize)]
struct StatusQuery {
    format: Option<String>,
}

async fn status(State(app): State<AppState>, Query(q): Query<StatusQuery>) -> Response {
    let snap = app.tree.snapshot();
    match q.format.as_deref() {
        Some("text") => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            render_text(&snap),
        )
            .into_response(),
        Some("json") | None => axum::Json(snap).into_response(),
        Some(other) => error(
            StatusCode::BAD_REQUEST,
            &format!("unknown format `{other}` (json or text)"),
        ),
    }
}

fn error(code: StatusCode, message: &str) -> Response {
    (code, axum::Json(json!({ "error": message }))).into_response()
}

/// Compare without leaking where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8;
    for (i, x) in a.iter().enumerate() {
        let y = b.get(i % b.len().max(1)).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0 && a.len() == b.len()
}

/// 401 unless a correct bearer token; 403 unless destructive actions are allowed.
fn authorize_destructive(
    headers: &HeaderMap,
    admin: &AdminConfig,
) -> Result<(), (StatusCode, &'static str)> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = match presented {
        Some(t) => {
            !admin.token.is_empty() && constant_time_eq(t.as_bytes(), admin.token.as_bytes())
        }
        None => false,
    };
    if !ok {
        return Err((
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer <admin.token>)",
        ));
    }
    if !admin.allow_destructive_actions {
        return Err((
            StatusCode::FORBIDDEN,
            "destructive actions are disabled (admin.allow_destructive_actions = false)",
        ));
    }
    Ok(())
}

async fn actor_action(
    State(app): State<AppState>,
    Path(rest): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(path) = rest.strip_suffix("/kill") else {
        return error(
            StatusCode::NOT_FOUND,
            "unknown action (try POST /actors/{path}/kill)",
        );
    };
    if let Err((code, why)) = authorize_destructive(&headers, &app.admin) {
        return error(code, why);
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

/// The tree as indented text, one node a line.
pub fn render_text(snap: &TreeSnapshot) -> String {
    fn line(out: &mut String, n: &NodeSnapshot, prefix: &str, last: bool, root: bool) {
        let branch = if root {
            ""
        } else if last {
            "└── "
        } else {
            "├── "
        };
        let mut extra = String::new();
        if let Some(s) = &n.supervisor {
            let _ = write!(
                extra,
                " {:?} {}/{} in {}ms",
                s.strategy, s.window_used, s.max_restarts, s.period_ms
            );
        }
        if let Some(ms) = n.next_restart_in_ms {
            let _ = write!(extra, " next restart in {ms}ms");
        }
        if let Some(e) = n.last_exits.last() {
            let _ = write!(extra, " last exit: {:?} ({})", e.class, e.reason);
        }
        let _ = writeln!(
            out,
            "{prefix}{branch}{} [{:?} {:?}] gen {} restarts {}{}",
            n.name, n.kind, n.status, n.generation, n.restarts, extra
        );
        let child_prefix = if root {
            String::new()
        } else {
            format!("{prefix}{}", if last { "    " } else { "│   " })
        };
        for (i, c) in n.children.iter().enumerate() {
            line(out, c, &child_prefix, i + 1 == n.children.len(), false);
        }
    }
    let mut out = String::new();
    for r in &snap.roots {
        line(&mut out, r, "", true, true);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn constant_time_eq_matches_only_equal() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
