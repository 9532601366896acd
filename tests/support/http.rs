//! HTTP around a test: in-process requests to the app's router, and an alert webhook.

use super::*;

/// An in-process HTTP answer: status, headers, body (JSON if it parses, else a JSON string)
/// and the raw text.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: serde_json::Value,
    pub text: String,
}

/// One request; `headers` are added as given (a JSON body gets its content type unless one
/// is among them).
pub async fn request(
    r: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;
    let mut req = axum::http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if !body.is_empty()
        && !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        req = req.header("content-type", "application/json");
    }
    let resp = r
        .clone()
        .oneshot(req.body(axum::body::Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text.clone()));
    Reply {
        status,
        headers,
        body,
        text,
    }
}

/// A webhook on loopback: every alert POSTed to it comes out of the receiver.
pub async fn webhook() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) {
    use axum::Json;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    let app = Router::new()
        .route(
            "/alerts",
            post(
                |State(tx): State<tokio::sync::mpsc::UnboundedSender<serde_json::Value>>,
                 Json(v): Json<serde_json::Value>| async move {
                    let _ = tx.send(v);
                    "ok"
                },
            ),
        )
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/alerts"), rx)
}

/// Wait (at most `limit`) for an alert of `kind`; others are skipped.
pub async fn alert_of(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    kind: &str,
    limit: Duration,
) -> serde_json::Value {
    tokio::time::timeout(limit, async {
        loop {
            let v = rx.recv().await.expect("webhook channel open");
            if v["kind"] == kind {
                return v;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {kind} alert within {limit:?}"))
}
