//! The provider's circuit breaker through the whole pipeline, on RabbitMQ and PostgreSQL with
//! a Twilio-compatible mock: a 401 opens it, messages are deferred without spending attempts,
//! `/readyz` warns and `circuit_open` is alerted while it stays open; when a probe closes it
//! every deferred message is sent and the failed queue is re-driven (its transient failures
//! sent), and `/readyz` passes again.

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use drover_actors::store::{MessageStatus, OutcomeKind};
use http_body_util::BodyExt;
use serde_json::Value;
use support::{Rule, TestEnv, alert_of, recipient, wait_for, webhook};
use tower::ServiceExt;
use uuid::Uuid;

const LIMIT: Duration = Duration::from_secs(60);

async fn readyz(app: &drover::App) -> Value {
    let resp = app
        .router()
        .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_circuit_opens_on_401_defers_without_spending_and_redrives_when_it_closes() {
    let mut env = TestEnv::new().await;
    let (hook, mut alerts) = webhook().await;
    env.config.alerts.webhook_url = Some(hook);
    env.config.alerts.circuit_open_alert_ms = 300;
    env.config.alerts.retry_base_ms = 50;
    env.config.provider.circuit.open_ms = 1_500;
    env.config.delivery.max_attempts = 2;
    let app = env.start().await;
    let store = env.store().await;
    let publisher = env.publisher().await;

    // A transient failure that runs out of attempts: in the failed queue, to be re-driven.
    let stuck_to = recipient(900);
    env.provider
        .set_for_recipient(&stuck_to, Rule::always_unavailable());
    let stuck = Uuid::new_v4();
    publisher
        .publish_sms(stuck, &stuck_to, "stuck", "corr-stuck")
        .await;
    wait_for("the stuck message failed", LIMIT, || async {
        match store.get(stuck).await.unwrap() {
            Some(r) if r.status == MessageStatus::Failed => Ok(()),
            other => Err(format!("{:?}", other.map(|r| r.status))),
        }
    })
    .await;

    // The account's credentials refused: the first call opens the circuit.
    env.provider.set_default(Rule::unauthorized());
    let ids: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
    for (i, id) in ids.iter().enumerate() {
        publisher
            .publish_sms(*id, &recipient(i), &format!("deferred {i}"), "corr-c")
            .await;
    }
    let alert = alert_of(&mut alerts, "circuit_open", LIMIT).await;
    assert!(
        alert["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("circuit"),
        "{alert}"
    );
    // After circuit_open_alert_ms (300 ms), while still open: not only at the half-open probe
    // (open_ms = 1,500), the first time a send came by again.
    assert_eq!(alert["details"]["state"]["state"], "open", "{alert}");
    let ready = readyz(&app).await;
    assert_eq!(ready["status"], "warn", "{ready}");
    assert_eq!(ready["checks"]["provider"][0]["status"], "warn", "{ready}");
    // Deferred, none failed, none charged an attempt beyond the one that met the 401.
    wait_for("every message recorded and deferred", LIMIT, || async {
        let mut pending = 0;
        for id in &ids {
            match store.get(*id).await.unwrap() {
                Some(r) if r.status == MessageStatus::RetryScheduled => {}
                other => pending += usize::from(other.is_none()) + 1,
            }
        }
        if pending == 0 {
            Ok(())
        } else {
            Err(format!("{pending} not yet deferred"))
        }
    })
    .await;
    // Calls already under way when the first 401 came back meet it too; then none.
    let refused = env
        .provider
        .calls()
        .iter()
        .filter(|c| c.status == 401)
        .count();
    for id in &ids {
        let r = store.get(*id).await.unwrap().unwrap();
        assert!(r.attempts <= 1, "{id}: attempts spent while open: {r:?}");
        assert!(
            r.history
                .iter()
                .all(|a| a.outcome != Some(OutcomeKind::Failed)),
            "{r:?}"
        );
    }

    // The provider takes the credentials again: a probe closes the circuit, everything goes.
    env.provider.set_default(Rule::accept());
    env.provider.set_for_recipient(&stuck_to, Rule::accept());
    wait_for("every deferred message sent", LIMIT, || async {
        let mut left = 0;
        for id in &ids {
            if store.get(*id).await.unwrap().map(|r| r.status) != Some(MessageStatus::Sent) {
                left += 1;
            }
        }
        if left == 0 {
            Ok(())
        } else {
            Err(format!("{left} not sent"))
        }
    })
    .await;
    wait_for("the failed queue re-driven", LIMIT, || async {
        match store.get(stuck).await.unwrap().map(|r| r.status) {
            Some(MessageStatus::Sent) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    for id in ids.iter().chain([&stuck]) {
        let accepted = env
            .provider
            .calls_for(*id)
            .iter()
            .filter(|c| c.status == 201)
            .count();
        assert_eq!(accepted, 1, "{id} sent once");
    }
    wait_for("/readyz passes again", LIMIT, || async {
        let r = readyz(&app).await;
        if r["status"] == "pass" {
            Ok(())
        } else {
            Err(r.to_string())
        }
    })
    .await;
    println!(
        "circuit cycle: {refused} calls met the 401 (of {} messages), all sent after the probe, the failed one re-driven",
        ids.len()
    );
    app.shutdown().await.unwrap();
    publisher.close().await;
    env.cleanup().await;
}
