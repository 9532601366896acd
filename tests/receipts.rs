//! Delivery receipts end to end: drover (in-process) on RabbitMQ and PostgreSQL sends through
//! the mock Twilio with `StatusCallback`, then Twilio's status callbacks arrive at
//! `POST /providers/twilio/status`, signed as Twilio signs them (or not): a good signature is
//! recorded on the message, a bad or missing one is refused (403), callbacks out of order
//! never move the delivery status back, an unknown sid is acknowledged. The delivery-rate
//! monitor reads them back: too many undelivered receipts, or none at all for sent
//! messages, raise a `delivery_rate` alert.

mod support;

use std::time::Duration;

use drover_actors::provider::receipt::twilio_signature;
use drover_actors::store::MessageStatus;
use support::{ACCOUNT_SID, AUTH_TOKEN, TestEnv, alert_of, recipient, wait_status, webhook};
use uuid::Uuid;

/// The public URL Twilio is told to call (and signs); the test posts to the local address.
const CALLBACK_URL: &str = "https://sms.example.com/providers/twilio/status";

fn form(sid: &str, status: &str, error_code: Option<&str>) -> Vec<(String, String)> {
    let mut f = vec![
        ("AccountSid".to_string(), ACCOUNT_SID.to_string()),
        ("ApiVersion".to_string(), "2010-04-01".to_string()),
        ("MessageSid".to_string(), sid.to_string()),
        ("MessageStatus".to_string(), status.to_string()),
        ("SmsSid".to_string(), sid.to_string()),
        ("SmsStatus".to_string(), status.to_string()),
    ];
    if let Some(code) = error_code {
        f.push(("ErrorCode".to_string(), code.to_string()));
    }
    f
}

async fn post(
    http: &reqwest::Client,
    base: &str,
    form: &[(String, String)],
    signature: Option<&str>,
) -> u16 {
    let mut req = http
        .post(format!("{base}/providers/twilio/status"))
        .form(form);
    if let Some(sig) = signature {
        req = req.header("X-Twilio-Signature", sig);
    }
    req.send()
        .await
        .expect("the callback reaches drover")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_callbacks_are_verified_and_recorded() {
    let mut env = TestEnv::new().await;
    env.config.provider.twilio.status_callback_url = Some(CALLBACK_URL.into());
    let app = env.start().await;
    let store = env.store().await;
    let publisher = env.publisher().await;
    let id = Uuid::new_v4();
    publisher
        .publish_sms(id, &recipient(1), "receipt please", "corr-receipt")
        .await;
    let rec = wait_status(&store, id, MessageStatus::Sent, Duration::from_secs(30)).await;
    let sid = rec.provider_message_id.clone().expect("a sid");
    assert_eq!(rec.delivery, None);

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let base = format!("http://{}", app.addr);
    let signed = |f: &[(String, String)]| twilio_signature(AUTH_TOKEN, CALLBACK_URL, f);

    // Delivered first, then a late "sent": the delivery stays delivered, both are kept.
    let delivered = form(&sid, "delivered", None);
    assert_eq!(
        post(&http, &base, &delivered, Some(&signed(&delivered))).await,
        200
    );
    let late = form(&sid, "sent", None);
    assert_eq!(post(&http, &base, &late, Some(&signed(&late))).await, 200);
    // Refused: no signature, a signature of other content, one over another URL.
    let forged = form(&sid, "undelivered", Some("30003"));
    assert_eq!(post(&http, &base, &forged, None).await, 403);
    assert_eq!(post(&http, &base, &forged, Some(&signed(&late))).await, 403);
    let elsewhere = twilio_signature(AUTH_TOKEN, "https://attacker.example/", &forged);
    assert_eq!(post(&http, &base, &forged, Some(&elsewhere)).await, 403);
    // An unknown sid: acknowledged. Not a status callback: 400.
    let unknown = form("SMnobodyknows", "delivered", None);
    assert_eq!(
        post(&http, &base, &unknown, Some(&signed(&unknown))).await,
        200
    );
    let junk = vec![("MessageSid".to_string(), sid.clone())];
    assert_eq!(post(&http, &base, &junk, Some(&signed(&junk))).await, 400);

    let rec = store.get(id).await.unwrap().unwrap();
    let statuses: Vec<&str> = rec.receipts.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["delivered", "sent"], "{:?}", rec.receipts);
    assert_eq!(
        rec.delivery.as_ref().map(|d| d.status.as_str()),
        Some("delivered")
    );
    assert_eq!(rec.status, MessageStatus::Sent);
    let body = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.lines()
            .any(|l| l.starts_with("drover_delivery_total{status=\"delivered\"} 2")),
        "delivered twice (one for the unknown sid): {}",
        body.lines()
            .filter(|l| l.starts_with("drover_delivery_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    app.shutdown().await.expect("clean shutdown");
    publisher.close().await;
    store.close().await;
    env.cleanup().await;
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Publish `n` messages and wait until all are sent; their sids.
async fn send_n(env: &TestEnv, n: usize, tag: &str) -> Vec<String> {
    let store = env.store().await;
    let publisher = env.publisher().await;
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    for (i, id) in ids.iter().enumerate() {
        publisher
            .publish_sms(*id, &recipient(i), "rate me", &format!("corr-{tag}-{i}"))
            .await;
    }
    let mut sids = Vec::new();
    for id in ids {
        let rec = wait_status(&store, id, MessageStatus::Sent, Duration::from_secs(30)).await;
        sids.push(rec.provider_message_id.expect("a sid"));
    }
    publisher.close().await;
    store.close().await;
    sids
}

/// Receipts on, alerts to a local webhook, the delivery rate judged every 100 ms.
async fn watched_env() -> (
    TestEnv,
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) {
    let (url, alerts) = webhook().await;
    let mut env = TestEnv::new().await;
    env.config.provider.twilio.status_callback_url = Some(CALLBACK_URL.into());
    env.config.alerts.webhook_url = Some(url);
    env.config.alerts.retry_base_ms = 20;
    env.config.delivery_rate.sample_ms = 100;
    (env, alerts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn too_many_undelivered_receipts_raise_a_delivery_rate_alert() {
    let (mut env, mut alerts) = watched_env().await;
    let c = &mut env.config.delivery_rate;
    c.min_receipts = 8;
    // Nothing is old enough for the missing-receipts judgement.
    c.receipt_grace_ms = 600_000;
    let app = env.start().await;
    let sids = send_n(&env, 8, "rate").await;
    let (http, base) = (http(), format!("http://{}", app.addr));
    let receipts = [
        ("delivered", None),
        ("delivered", None),
        ("undelivered", Some("30003")),
        ("undelivered", Some("30003")),
        ("undelivered", Some("30003")),
        ("failed", Some("30003")),
        ("undelivered", Some("30005")),
        ("failed", Some("30005")),
    ];
    for (sid, (status, code)) in sids.iter().zip(receipts) {
        let f = form(sid, status, code);
        let sig = twilio_signature(AUTH_TOKEN, CALLBACK_URL, &f);
        assert_eq!(post(&http, &base, &f, Some(&sig)).await, 200);
    }
    let alert = alert_of(&mut alerts, "delivery_rate", Duration::from_secs(20)).await;
    assert_eq!(alert["key"], "delivery_rate:failing", "{alert}");
    let d = &alert["details"];
    assert_eq!(
        (d["failed"].as_i64(), d["final_receipts"].as_i64()),
        (Some(6), Some(8)),
        "{alert}"
    );
    assert_eq!(d["top_error_codes"][0]["code"], 30003, "{alert}");
    assert_eq!(d["top_error_codes"][0]["messages"], 4, "{alert}");
    assert_eq!(d["top_error_codes"][1]["code"], 30005, "{alert}");
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "drover_delivery_failure_ratio 0.75"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("ratio"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    app.shutdown().await.expect("clean shutdown");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sent_messages_without_receipts_raise_a_delivery_rate_alert() {
    let (mut env, mut alerts) = watched_env().await;
    let c = &mut env.config.delivery_rate;
    c.receipt_grace_ms = 2_000;
    c.min_sent = 6;
    let app = env.start().await;
    let sids = send_n(&env, 6, "silent").await;
    // One receipt of six: five of six (83 %) have none, above the default half.
    let f = form(&sids[0], "delivered", None);
    let sig = twilio_signature(AUTH_TOKEN, CALLBACK_URL, &f);
    assert_eq!(
        post(&http(), &format!("http://{}", app.addr), &f, Some(&sig)).await,
        200
    );
    let alert = alert_of(&mut alerts, "delivery_rate", Duration::from_secs(20)).await;
    assert_eq!(alert["key"], "delivery_rate:missing", "{alert}");
    assert_eq!(alert["details"]["sent"], 6, "{alert}");
    assert_eq!(alert["details"]["with_receipt"], 1, "{alert}");
    app.shutdown().await.expect("clean shutdown");
    env.cleanup().await;
}
