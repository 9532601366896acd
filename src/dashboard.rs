//! `GET /`: a live dashboard, one self-contained HTML page (no build step, no external
//! resources) embedded in the binary.
//!
//! The page polls `GET /status` (the tree) and `GET /metrics` (message counters, queue depths,
//! workers in flight, the provider's circuit) every second and renders them client-side: the
//! supervision tree as a nested list (each node an `<li data-path=… data-status=…
//! data-restarts=…>`), backoff countdowns, the last exits, and rates computed from successive
//! samples. Both sources are served from cached state, so the page cannot hang an actor.

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
