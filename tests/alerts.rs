//! Alerting end to end, on the embedded default (in-memory broker, a SQLite file of its own,
//! the simulated provider): a local webhook (axum on `127.0.0.1:0`) receives the alerts on a
//! channel; every wait is a bounded `tokio::time::timeout` on that channel.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use drover::Config;
use serde_json::{Value, json};
use support::webhook;
use tokio::sync::mpsc;
use uuid::Uuid;

const LIMIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "alerts-s3cret";

/// Wait (bounded) for an alert of `kind`; others are skipped.
async fn alert_of(rx: &mut mpsc::UnboundedReceiver<Value>, kind: &str) -> Value {
    support::alert_of(rx, kind, LIMIT).await
}

fn config(url: &str) -> (Config, PathBuf) {
    let mut c = Config::default();
    c.http.addr = "127.0.0.1:0".parse().unwrap();
    c.admin.token = TOKEN.into();
    c.admin.allow_destructive_actions = true;
    let db = std::env::temp_dir().join(format!("drover-alerts-{}.db", Uuid::new_v4().simple()));
    c.store.url = format!("sqlite://{}?mode=rwc", db.display());
    c.provider.simulated.latency_ms = 0;
    c.provider.simulated.transient_failure_rate = 0.0;
    c.provider.simulated.permanent_failure_rate = 0.0;
    c.alerts.webhook_url = Some(url.to_owned());
    c.alerts.retry_base_ms = 20;
    (c, db)
}

async fn post_json(client: &reqwest::Client, url: String, body: &Value) -> reqwest::Response {
    client
        .post(url)
        .bearer_auth(TOKEN)
        .json(body)
        .send()
        .await
        .expect("drover answers")
}

fn cleanup(db: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}

#[tokio::test]
async fn a_permanently_failed_message_raises_a_dead_letter_alert() {
    let (url, mut rx) = webhook().await;
    let (mut c, db) = config(&url);
    c.provider.simulated.permanent_failure_rate = 1.0;
    let app = drover::start(c).await.expect("drover starts");
    let client = reqwest::Client::new();
    let r = post_json(
        &client,
        format!("http://{}/messages", app.addr),
        &json!({"to": "+15551234567", "body": "your code is 1234"}),
    )
    .await;
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let alert = alert_of(&mut rx, "dead_letter").await;
    assert_eq!(alert["key"], format!("dead_letter:{id}"));
    assert_eq!(alert["service"], "drover");
    assert_eq!(alert["details"]["id"], id);
    assert!(alert["at_ms"].as_i64().unwrap() > 0);
    app.shutdown().await.unwrap();
    cleanup(&db);
}

#[tokio::test]
async fn a_paused_consumer_with_arriving_messages_raises_a_backlog_alert() {
    let (url, mut rx) = webhook().await;
    let (mut c, db) = config(&url);
    c.alerts.sample_ms = 100;
    c.alerts.backlog_window_ms = 500;
    let app = drover::start(c).await.expect("drover starts");
    let client = reqwest::Client::new();
    let base = format!("http://{}", app.addr);
    let r = post_json(&client, format!("{base}/consumption/pause"), &json!({})).await;
    assert!(r.status().is_success(), "pause: {}", r.status());
    // Messages keep arriving while nobody consumes.
    let publisher = {
        let (client, base) = (client.clone(), base.clone());
        tokio::spawn(async move {
            for i in 0..200 {
                let body = json!({"to": "+15551234567", "body": format!("code {i}")});
                let _ = post_json(&client, format!("{base}/messages"), &body).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let alert = alert_of(&mut rx, "backlog").await;
    publisher.abort();
    assert_eq!(alert["key"], "backlog");
    assert!(alert["details"]["last_ready"].as_u64().unwrap() > 0);
    app.shutdown().await.unwrap();
    cleanup(&db);
}

#[tokio::test]
async fn the_root_giving_up_raises_a_root_gave_up_alert() {
    let (url, mut rx) = webhook().await;
    let (mut c, db) = config(&url);
    c.supervision.max_restarts = 0;
    let app = drover::start(c).await.expect("drover starts");
    let tree = app.tree.clone();
    let served = tokio::spawn(app.serve_until(std::future::pending()));
    tree.lookup("root/store").expect("store is up").kill();
    let alert = alert_of(&mut rx, "root_gave_up").await;
    assert_eq!(alert["key"], "gave_up:root");
    let result = tokio::time::timeout(LIMIT, served)
        .await
        .expect("drover stops")
        .unwrap();
    assert!(
        matches!(result, Err(drover::RunError::RootGaveUp(_))),
        "{result:?}"
    );
    cleanup(&db);
}
