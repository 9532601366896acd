//! The end-to-end canary: drover (in-process) on RabbitMQ and PostgreSQL publishes a canary
//! through its own work queue to the mock Twilio and follows it to `delivered`, by a signed
//! delivery receipt or, with receipts off, by asking Twilio (`FetchMessage`); its times and
//! results are metrics; a provider that refuses the canary raises a `canary` alert.

mod support;

use std::time::Duration;

use drover_actors::provider::receipt::twilio_signature;
use support::{AUTH_TOKEN, Rule, TestEnv, alert_of, recipient, wait_for, webhook};

const CALLBACK_URL: &str = "https://sms.example.com/providers/twilio/status";
const LIMIT: Duration = Duration::from_secs(30);

fn canary_on(env: &mut TestEnv) -> String {
    let to = recipient(9_000);
    let c = &mut env.config.canary;
    c.every_ms = 600_000;
    c.to = to.clone();
    c.poll_ms = 50;
    c.late_ms = 20_000;
    c.delivery_late_ms = 25_000;
    to
}

/// `/metrics` lines starting with `drover_canary`.
async fn canary_metrics(http: &reqwest::Client, base: &str) -> Vec<String> {
    let body = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    body.lines()
        .filter(|l| l.starts_with("drover_canary"))
        .map(str::to_owned)
        .collect()
}

/// The value of the series `name` (labels included) in `lines`.
fn value(lines: &[String], name: &str) -> Option<f64> {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Wait until the series `name` is above 0; all canary lines then.
async fn wait_metric(http: &reqwest::Client, base: &str, name: &str) -> Vec<String> {
    wait_for(&format!("{name} > 0"), LIMIT, || async {
        let lines = canary_metrics(http, base).await;
        match value(&lines, name) {
            Some(v) if v > 0.0 => Ok(lines),
            _ => Err(lines.join("\n")),
        }
    })
    .await
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_canary_is_followed_to_delivered_by_its_receipt() {
    let mut env = TestEnv::new().await;
    env.config.provider.twilio.status_callback_url = Some(CALLBACK_URL.into());
    let to = canary_on(&mut env);
    let app = env.start().await;
    let (http, base) = (http(), format!("http://{}", app.addr));
    let sent = wait_metric(&http, &base, "drover_canary_seconds{stage=\"sent\"}").await;
    assert!(
        value(&sent, "drover_canary_seconds{stage=\"sent\"}").unwrap() > 0.0,
        "{sent:?}"
    );
    let sids = env.provider.sids_to(&to);
    assert_eq!(sids.len(), 1, "one canary at a time: {sids:?}");
    let form = vec![
        ("MessageSid".to_string(), sids[0].clone()),
        ("MessageStatus".to_string(), "delivered".to_string()),
    ];
    let sig = twilio_signature(AUTH_TOKEN, CALLBACK_URL, &form);
    let status = http
        .post(format!("{base}/providers/twilio/status"))
        .header("X-Twilio-Signature", sig)
        .form(&form)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let lines = wait_metric(&http, &base, "drover_canary_total{result=\"delivered\"}").await;
    let delivered = value(&lines, "drover_canary_seconds{stage=\"delivered\"}").unwrap();
    let sent = value(&lines, "drover_canary_seconds{stage=\"sent\"}").unwrap();
    assert!(delivered >= sent && sent > 0.0, "{lines:?}");
    assert_eq!(
        value(&lines, "drover_canary_total{result=\"failed\"}"),
        Some(0.0)
    );
    assert_eq!(
        value(&lines, "drover_canary_total{result=\"late\"}"),
        Some(0.0)
    );
    app.shutdown().await.expect("clean shutdown");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_receipts_the_canary_asks_the_provider() {
    let mut env = TestEnv::new().await;
    let to = canary_on(&mut env);
    let app = env.start().await;
    let (http, base) = (http(), format!("http://{}", app.addr));
    let sid = wait_for("the canary at the provider", LIMIT, || async {
        env.provider
            .sids_to(&to)
            .first()
            .cloned()
            .ok_or("not yet".to_string())
    })
    .await;
    // Asked while Twilio still says `sent`, then it says `delivered`.
    wait_for("a FetchMessage", LIMIT, || async {
        (env.provider.fetches() > 0)
            .then_some(())
            .ok_or_else(|| "none yet".to_string())
    })
    .await;
    env.provider.set_status(&sid, "delivered");
    let lines = wait_metric(&http, &base, "drover_canary_total{result=\"delivered\"}").await;
    assert!(
        value(&lines, "drover_canary_seconds{stage=\"delivered\"}").unwrap() > 0.0,
        "{lines:?}"
    );
    app.shutdown().await.expect("clean shutdown");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_canary_raises_a_canary_alert() {
    let (url, mut alerts) = webhook().await;
    let mut env = TestEnv::new().await;
    env.config.alerts.webhook_url = Some(url);
    env.config.alerts.retry_base_ms = 20;
    let to = canary_on(&mut env);
    env.provider
        .set_for_recipient(&to, Rule::always_unavailable());
    let app = env.start().await;
    let alert = alert_of(&mut alerts, "canary", LIMIT).await;
    assert_eq!(alert["key"], "canary:failed", "{alert}");
    assert!(
        alert["details"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("503")),
        "{alert}"
    );
    let (http, base) = (http(), format!("http://{}", app.addr));
    let lines = wait_metric(&http, &base, "drover_canary_total{result=\"failed\"}").await;
    assert_eq!(
        value(&lines, "drover_canary_total{result=\"sent\"}"),
        Some(0.0)
    );
    app.shutdown().await.expect("clean shutdown");
    env.cleanup().await;
}
