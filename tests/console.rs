//! The operator console's API, end to end: drover (in-process) on RabbitMQ and PostgreSQL,
//! the mock Twilio refusing some recipients. `GET /messages` pages newest first and filters by
//! status and by an exact id, correlation id or recipient; `GET /messages/failures` groups the
//! failed ones by class; `POST /messages/failures/{class}/retry` puts a whole group back into
//! play; every attempt carries the provider call's latency; `GET /trends` holds the traffic.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use drover_actors::store::{AttemptRecord, MessageStatus, OutcomeKind};
use serde_json::Value;
use support::{Rule, TestEnv, recipient, wait_status};
use uuid::Uuid;

const ADMIN: &str = "console-admin-s3cret";
const LIMIT: Duration = Duration::from_secs(30);

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, admin: bool) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if admin {
            req = req.bearer_auth(ADMIN);
        }
        let resp = req.send().await.expect("drover answers");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, path, false).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }
}

fn ids(page: &Value) -> Vec<String> {
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_page_filter_group_and_retry_by_group() {
    let mut env = TestEnv::new().await;
    env.config.admin.token = ADMIN.into();
    env.config.admin.allow_destructive_actions = true;
    env.config.delivery.max_attempts = 2;
    env.provider.set_latency(20, 30);
    env.config.trends.sample_ms = 200;
    // Recipients 1-3 are invalid at the provider (21211: permanent), 4-5 always answer 503
    // (given up after two attempts); 0, 6-9 are sent.
    for n in 1..=3 {
        env.provider
            .set_for_recipient(&recipient(n), Rule::reject(21211));
    }
    for n in 4..=5 {
        env.provider
            .set_for_recipient(&recipient(n), Rule::always_unavailable());
    }
    let app = env.start().await;
    let store = env.store().await;
    let publisher = env.publisher().await;
    let mut sent = Vec::new();
    for n in 0..10 {
        let id = Uuid::new_v4();
        publisher
            .publish_sms(id, &recipient(n), "console", &format!("corr-console-{n}"))
            .await;
        let status = match n {
            1..=5 => MessageStatus::Failed,
            _ => MessageStatus::Sent,
        };
        // One at a time, so creation order is publish order.
        wait_status(&store, id, status, LIMIT).await;
        sent.push(id.to_string());
    }
    let api = Api {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        base: format!("http://{}", app.addr),
    };

    // Pages of 4, newest first, until next_before is null.
    let mut seen = Vec::new();
    let mut path = "/messages?limit=4".to_string();
    for _ in 0..5 {
        let page = api.get(&path).await;
        seen.extend(ids(&page));
        match page["next_before"].as_str() {
            Some(next) => path = format!("/messages?limit=4&before={next}"),
            None => break,
        }
    }
    let newest_first: Vec<String> = sent.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);
    let page = api.get("/messages?limit=4").await;
    assert_eq!(page["messages"][0]["masked"], true, "{page}");
    assert_ne!(page["messages"][0]["body"], "console", "masked: {page}");

    // Filters.
    let failed: HashSet<String> = ids(&api.get("/messages?status=failed").await)
        .into_iter()
        .collect();
    assert_eq!(failed, sent[1..=5].iter().cloned().collect());
    let by_corr = api.get("/messages?q=corr-console-7").await;
    assert_eq!(ids(&by_corr), [sent[7].clone()]);
    let by_to = api
        .get(&format!("/messages?q={}", recipient(8).replace('+', "%2B")))
        .await;
    assert_eq!(ids(&by_to), [sent[8].clone()]);
    for bad in [
        "/messages?status=lost",
        "/messages?limit=0",
        "/messages?limit=201",
        "/messages?before=nope",
        "/messages?q=%00%27%3B--",
    ] {
        let (status, body) = api.call(reqwest::Method::GET, bad, false).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _) = api
        .call(
            reqwest::Method::GET,
            &format!("/messages?before={}", Uuid::new_v4()),
            false,
        )
        .await;
    assert_eq!(status, 400, "a cursor that names no message");

    // Failure groups: three permanent, two given up after 503s.
    let groups = api.get("/messages/failures").await;
    let groups: Vec<(String, i64)> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["error_class"].as_str().unwrap().to_owned(),
                g["count"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        groups,
        [
            ("permanent".to_string(), 3),
            ("server_error".to_string(), 2)
        ]
    );

    // The provider works again for 4 and 5: their group is retried, and sent.
    for n in 4..=5 {
        env.provider
            .set_for_recipient(&recipient(n), Rule::accept());
    }
    let (status, body) = api
        .call(
            reqwest::Method::POST,
            "/messages/failures/server_error/retry",
            false,
        )
        .await;
    assert_eq!(status, 401, "admin only: {body}");
    let (status, body) = api
        .call(reqwest::Method::POST, "/messages/failures/%00/retry", true)
        .await;
    assert_eq!(status, 400, "a NUL is no class: {body}");
    let (status, body) = api
        .call(
            reqwest::Method::POST,
            "/messages/failures/server_error/retry",
            true,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        (body["retried"].as_u64(), body["skipped"].as_u64()),
        (Some(2), Some(0))
    );
    for id in &sent[4..=5] {
        let rec = wait_status(&store, id.parse().unwrap(), MessageStatus::Sent, LIMIT).await;
        // Every attempt that reached the mock carries its latency (the mock waits 20-30 ms).
        let called = |a: &&AttemptRecord| a.outcome.is_some_and(|o| o != OutcomeKind::Deferred);
        for a in rec.history.iter().filter(called) {
            assert!(
                a.latency_ms.is_some_and(|l| l >= 20),
                "{id}: {:?}",
                rec.history
            );
        }
    }
    let groups = api.get("/messages/failures").await;
    assert_eq!(groups["groups"].as_array().unwrap().len(), 1, "{groups}");

    // The trends hold the traffic: 7 sent in all (5 + the 2 retried), provider latency.
    let trends = support::wait_for("the trends to hold every send", LIMIT, || async {
        let t = api.get("/trends").await;
        let samples = t["samples"].as_array().cloned().unwrap_or_default();
        let sent: u64 = samples
            .iter()
            .map(|s| s["outcomes"]["sent"].as_u64().unwrap_or(0))
            .sum();
        if sent >= 7 {
            Ok(t)
        } else {
            Err(format!("{sent} sent: {t}"))
        }
    })
    .await;
    let samples = trends["samples"].as_array().unwrap();
    assert_eq!(trends["sample_ms"], 200);
    assert!(
        samples
            .iter()
            .any(|s| s["latency_ms"].as_f64().is_some_and(|l| l >= 20.0)),
        "{trends}"
    );
    let failed: u64 = samples
        .iter()
        .map(|s| s["outcomes"]["failed"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(failed, 5, "{trends}");

    app.shutdown().await.expect("clean shutdown");
    publisher.close().await;
    store.close().await;
    env.cleanup().await;
}
