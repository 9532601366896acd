//! The pipeline bench: the provider: a Twilio-compatible server that accepts everything at once.

use super::*;

pub(crate) async fn twilio_send(
    State(m): State<Arc<Marks>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], String) {
    let now = m.now_ns();
    m.received_total.fetch_add(1, Ordering::Relaxed);
    let id = headers
        .get(IDEMPOTENCY_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Uuid::parse_str(v).ok());
    match id.and_then(|id| m.index(&id)) {
        Some(i) => {
            let _ = m.received_ns[i].compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
            if m.hits[i].fetch_add(1, Ordering::Relaxed) == 0 {
                m.received_unique.fetch_add(1, Ordering::Release);
            }
        }
        None => {
            m.unknown.fetch_add(1, Ordering::Relaxed);
        }
    }
    let sid = format!("SM{:032x}", id.map_or(0, |u| u.as_u128()));
    let answer = format!(
        r#"{{"sid":"{sid}","status":"queued","account_sid":"{ACCOUNT_SID}","num_segments":"1","body_len":{}}}"#,
        body.len()
    );
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        answer,
    )
}

pub(crate) async fn twilio_account() -> (StatusCode, [(header::HeaderName, &'static str); 1], String)
{
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"sid":"{ACCOUNT_SID}","status":"active"}}"#),
    )
}

pub(crate) struct ProviderServer {
    pub(crate) addr: SocketAddr,
    pub(crate) stop: oneshot::Sender<()>,
    pub(crate) task: JoinHandle<std::io::Result<()>>,
}

/// Start the provider on the current (harness) runtime.
pub(crate) async fn start_provider(marks: Arc<Marks>) -> BenchResult<ProviderServer> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| err("bind the provider")(&e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| err("provider address")(&e))?;
    let router = Router::new()
        .route(
            "/2010-04-01/Accounts/{sid}/Messages.json",
            post(twilio_send),
        )
        .route("/2010-04-01/Accounts/{sid}", get(twilio_account))
        .with_state(marks);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    Ok(ProviderServer { addr, stop, task })
}
