//! `GET /`: the operator console, one self-contained HTML page (no build step, no external
//! resources) embedded in the binary. Three views, by the URL's fragment:
//!
//! * `#overview`: the live tree polled from `GET /status` every second (each node an `<li
//!   data-path=… data-status=… data-restarts=…>` with its backoff countdown, last exits, its
//!   restart history and kill / restart buttons), the circuit with pause / resume / re-drive
//!   (a dry run's count first), message and queue counters from `GET /metrics`, and charts of
//!   the last 15 minutes drawn as SVG from `GET /trends`.
//! * `#messages[?q=…&status=…]`: the message explorer (`GET /messages`): a search box (id,
//!   correlation id, recipient), status tabs, a live "next attempt in" countdown, the failed
//!   ones grouped by class (`GET /messages/failures`) with a retry per group.
//! * `#message/<id>`: one message's timeline (`GET /messages/{id}`): every attempt with its
//!   outcome, class, latency and provider id, the receipts, and a retry for a failed one.
//!
//! Every action asks for confirmation in a dialog and sends the admin token typed in the
//! header (kept in the tab's session storage only). Light and dark follow
//! `prefers-color-scheme`; one column below 800 px. Every source is cached state, so the page
//! cannot hang an actor.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The page.
pub const PAGE: &str = include_str!("dashboard.html");

/// `GET /`.
#[utoipa::path(get, path = "/", tag = "probes",
    responses((status = 200, description = "The live dashboard", body = String, content_type = "text/html")))]
pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}
