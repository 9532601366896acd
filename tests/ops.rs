//! The operations surface of the HTTP endpoint: probes (`/livez`, `/readyz`), `/metrics`,
//! `GET /messages/{id}` and the admin routes (retry, re-drive, pause/resume), in-process
//! (`tower::ServiceExt::oneshot` on the app's router).
//!
//! Most tests run on the embedded default (in-memory broker, a SQLite file of their own in the
//! temp directory, the simulated provider). `ops_against_rabbitmq_and_postgres` runs against
//! RabbitMQ and PostgreSQL (`DROVER_TEST_AMQP_URL`, `DROVER_TEST_DATABASE_URL`; unique queue
//! and schema names; it fails rather than skips when they are not there).

mod support;

use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use drover::http::router;
use drover::{App, Config};
use drover_actors::broker::Broker;
use drover_actors::tree::{NodeStatus, Tree};
use serde_json::{Value, json};
use uuid::Uuid;

use support::{Reply as Answer, Rule, TestEnv, recipient, wait_for};

const TOKEN: &str = "ops-s3cret";
const LIMIT: Duration = Duration::from_secs(30);

async fn call(r: &Router, method: &str, uri: &str, token: Option<&str>, body: &str) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    support::request(r, method, uri, &headers, body).await
}

fn content_type(a: &Answer) -> &str {
    a.headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// An app on the embedded default with a SQLite file of its own.
struct MemApp {
    app: App,
    router: Router,
    db: PathBuf,
}

fn memory_config(allow: bool) -> (Config, PathBuf) {
    let mut c = Config::default();
    c.http.addr = "127.0.0.1:0".parse().unwrap();
    c.http.queue_sample_ms = 100;
    c.admin.token = TOKEN.into();
    c.admin.allow_destructive_actions = allow;
    let db = std::env::temp_dir().join(format!("drover-ops-{}.db", Uuid::new_v4().simple()));
    c.store.url = format!("sqlite://{}?mode=rwc", db.display());
    c.provider.simulated.latency_ms = 2;
    c.provider.simulated.transient_failure_rate = 0.0;
    c.provider.simulated.permanent_failure_rate = 0.0;
    c.scheduler.poll_ms = 100;
    c.delivery.retry_base_ms = 50;
    c.delivery.retry_jitter = 0.0;
    (c, db)
}

impl MemApp {
    async fn start(config: Config, db: PathBuf) -> MemApp {
        let app = drover::start(config).await.expect("drover starts");
        let router = app.router();
        MemApp { app, router, db }
    }

    async fn new(allow: bool) -> MemApp {
        let (c, db) = memory_config(allow);
        Self::start(c, db).await
    }

    async fn call(&self, method: &str, uri: &str, token: Option<&str>) -> Answer {
        call(&self.router, method, uri, token, "").await
    }

    /// `POST /messages`; returns the id.
    async fn send(&self, to: &str) -> Uuid {
        let body = json!({ "to": to, "body": "your code is 1234" }).to_string();
        let a = call(&self.router, "POST", "/messages", None, &body).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
        a.body["id"].as_str().unwrap().parse().unwrap()
    }

    /// Poll `GET /messages/{id}` until its status is `status`.
    async fn wait_status(&self, id: Uuid, status: &str) -> Value {
        wait_for(&format!("message {id} to be {status}"), LIMIT, || async {
            let a = self.call("GET", &format!("/messages/{id}"), None).await;
            if a.status == StatusCode::OK && a.body["status"] == status {
                Ok(a.body)
            } else {
                Err(format!("{} {}", a.status, a.text))
            }
        })
        .await
    }

    async fn broker(&self) -> Broker {
        Broker::connect(&self.app.pipeline.config.broker, &self.app.pipeline.memory)
            .await
            .unwrap()
    }

    async fn finish(self) {
        self.app.shutdown().await.unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.db.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

#[tokio::test]
async fn livez_and_readyz_pass_on_a_healthy_app() {
    let m = MemApp::new(false).await;
    let a = m.call("GET", "/livez", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, json!({ "status": "pass" }));

    let a = m.call("GET", "/readyz", None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(content_type(&a), "application/health+json");
    assert_eq!(a.body["status"], "pass", "{}", a.text);
    for (key, n) in [
        ("database", 1),
        ("broker", 2),
        ("scheduler", 1),
        ("provider", 1),
    ] {
        let checks = a.body["checks"][key].as_array().unwrap_or_else(|| {
            panic!("no {key} check: {}", a.text);
        });
        assert_eq!(checks.len(), n, "{key}: {}", a.text);
        for c in checks {
            assert_eq!(c["status"], "pass", "{key}: {c}");
            assert!(c["output"].is_string(), "{key}: {c}");
        }
    }
    assert!(
        a.body["checks"]["database"][0]["output"]
            .as_str()
            .unwrap()
            .contains("last ping ok"),
        "{}",
        a.text
    );
    m.finish().await;
}

#[tokio::test]
async fn livez_fails_without_a_live_root() {
    // A tree whose root never started (or has gone).
    let r = router(Tree::new(), Config::default().admin, None);
    let a = call(&r, "GET", "/livez", None, "").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.body["status"], "fail");
    let a = call(&r, "GET", "/readyz", None, "").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.body["status"], "fail");
}

#[tokio::test]
async fn readyz_fails_while_the_store_is_down_and_livez_still_passes() {
    let (mut c, db) = memory_config(true);
    // A long backoff keeps the killed store down while we look (deterministic).
    c.supervision.backoff.min_ms = 120_000;
    c.supervision.backoff.max_ms = 120_000;
    let m = MemApp::start(c, db).await;
    m.app.tree.lookup("root/store").unwrap().kill();
    wait_for("root/store to be backing off", LIMIT, || async {
        match m.app.tree.snapshot().find("root/store").map(|n| n.status) {
            Some(NodeStatus::BackingOff) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let a = m.call("GET", "/readyz", None).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text);
    assert_eq!(content_type(&a), "application/health+json");
    assert_eq!(a.body["status"], "fail");
    let db_check = &a.body["checks"]["database"][0];
    assert_eq!(db_check["status"], "fail", "{}", a.text);
    assert!(
        db_check["output"].as_str().unwrap().contains("backing_off"),
        "{db_check}"
    );
    assert_eq!(a.body["checks"]["broker"][0]["status"], "pass");
    // Liveness checks nothing but the root.
    let a = m.call("GET", "/livez", None).await;
    assert_eq!(a.status, StatusCode::OK);
    m.finish().await;
}

fn sample<'a>(
    scrape: &'a prometheus_parse::Scrape,
    name: &str,
    label: Option<(&str, &str)>,
) -> Option<&'a prometheus_parse::Sample> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
}

fn number(s: &prometheus_parse::Sample) -> f64 {
    match &s.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => *v,
        other => panic!("{} is not a number: {other:?}", s.metric),
    }
}

fn scrape(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("valid Prometheus text format")
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_every_series() {
    let m = MemApp::new(false).await;
    let ids = [m.send(&recipient(1)).await, m.send(&recipient(2)).await];
    for id in ids {
        m.wait_status(id, "sent").await;
    }
    let queue = m.app.pipeline.config.broker.work_queue.clone();
    let s = wait_for("the queue sampler and the counters", LIMIT, || async {
        let a = m.call("GET", "/metrics", None).await;
        assert_eq!(a.status, StatusCode::OK);
        assert!(
            content_type(&a).starts_with("text/plain; version=0.0.4"),
            "{}",
            content_type(&a)
        );
        let s = scrape(&a.text);
        let sent = sample(&s, "drover_messages_total", Some(("outcome", "sent"))).map(number);
        let depth = sample(&s, "drover_queue_depth", Some(("queue", &queue)));
        if sent == Some(2.0) && depth.is_some() {
            Ok(s)
        } else {
            Err(a.text)
        }
    })
    .await;
    for outcome in [
        "sent",
        "retry",
        "failed",
        "invalid",
        "deferred",
        "ambiguous",
    ] {
        assert!(
            sample(&s, "drover_messages_total", Some(("outcome", outcome))).is_some(),
            "drover_messages_total{{outcome={outcome}}}"
        );
    }
    assert_eq!(
        number(sample(&s, "drover_attempts_total", None).unwrap()),
        2.0
    );
    assert_eq!(
        number(sample(&s, "drover_consumed_total", None).unwrap()),
        2.0
    );
    assert_eq!(
        number(sample(&s, "drover_published_total", Some(("route", "work"))).unwrap()),
        2.0
    );
    let latency = sample(&s, "drover_provider_latency_seconds", None).expect("latency histogram");
    match &latency.value {
        prometheus_parse::Value::Histogram(buckets) => {
            let inf = buckets.iter().find(|b| b.less_than.is_infinite()).unwrap();
            assert_eq!(inf.count, 2.0, "{buckets:?}");
        }
        other => panic!("latency is not a histogram: {other:?}"),
    }
    assert_eq!(
        number(sample(&s, "drover_actor_restarts", Some(("path", "root/store"))).unwrap()),
        0.0
    );
    assert!(number(sample(&s, "drover_actors", Some(("status", "running"))).unwrap()) >= 9.0);
    assert!(sample(&s, "drover_actors", Some(("status", "backing_off"))).is_some());
    assert!(sample(&s, "drover_workers_in_flight", None).is_some());
    assert_eq!(
        number(sample(&s, "drover_provider_circuit_state", None).unwrap()),
        0.0
    );
    assert_eq!(
        number(sample(&s, "drover_queue_depth", Some(("queue", &queue))).unwrap()),
        0.0
    );
    assert!(sample(&s, "drover_queue_consumers", Some(("queue", &queue))).is_some());
    assert_eq!(
        number(sample(&s, "drover_consumption_paused", None).unwrap()),
        0.0
    );
    // No series of their own for the temporary delivery workers.
    assert!(!s.samples.iter().any(|x| {
        x.labels
            .get("path")
            .is_some_and(|p| p.contains("delivery-"))
    }),);
    // A second app in the same process counts its own messages.
    let other = MemApp::new(false).await;
    let a = other.call("GET", "/metrics", None).await;
    let s2 = scrape(&a.text);
    assert_eq!(
        number(sample(&s2, "drover_messages_total", Some(("outcome", "sent"))).unwrap()),
        0.0
    );
    other.finish().await;
    m.finish().await;
}

#[tokio::test]
async fn get_message_shows_state_and_history_404_and_400() {
    let m = MemApp::new(false).await;
    let id = m.send(&recipient(3)).await;
    let body = m.wait_status(id, "sent").await;
    assert_eq!(body["id"], id.to_string());
    // Masked without the admin token; revealed with it.
    assert_eq!(body["masked"], true);
    assert_ne!(body["recipient"], recipient(3));
    let a = m
        .call("GET", &format!("/messages/{id}?reveal=true"), Some(TOKEN))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.body["recipient"], recipient(3));
    assert_eq!(a.body["body"], "your code is 1234");
    let history = body["history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{body}");
    assert_eq!(history[0]["outcome"], "sent");
    assert!(body["provider_message_id"].is_string());

    let a = m
        .call("GET", &format!("/messages/{}", Uuid::new_v4()), None)
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.body["error"].is_string(), "{}", a.text);
    let a = m.call("GET", "/messages/not-a-uuid", None).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.body["error"].as_str().unwrap().contains("not a UUID"));
    m.finish().await;
}

const ADMIN_ROUTES: [&str; 5] = [
    "/messages/0190c7b2-6f0a-7cc0-8c1e-3a1f2b3c4d5e/retry",
    "/failed/redrive",
    "/failed/redrive?dry_run=true",
    "/consumption/pause",
    "/consumption/resume",
];

#[tokio::test]
async fn admin_routes_require_the_token_then_the_switch() {
    let off = MemApp::new(false).await;
    for route in ADMIN_ROUTES {
        let a = off.call("POST", route, None).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{route}");
        assert!(a.body["error"].is_string(), "{route}: {}", a.text);
        let a = off.call("POST", route, Some("wrong")).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{route}");
        let a = off.call("POST", route, Some(TOKEN)).await;
        if route.ends_with("dry_run=true") {
            // A dry run only reads: the admin token suffices, switch or not.
            assert_eq!(a.status, StatusCode::OK, "{route}: {}", a.text);
            assert_eq!(a.body["dry_run"], true, "{route}: {}", a.text);
            continue;
        }
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{route}");
        assert!(
            a.body["error"]
                .as_str()
                .unwrap()
                .contains("allow_destructive_actions"),
            "{route}"
        );
    }
    // Nothing was done by any refused call.
    assert!(!off.app.pipeline.ops.consumption_paused());
    assert_eq!(
        off.app.pipeline.ops.redrive_status().last_started_at_ms,
        None
    );
    // Unknown paths: 404 with a JSON error.
    for (method, path) in [
        ("GET", "/nope"),
        ("POST", "/failed/nope"),
        ("POST", "/consumption/stop"),
    ] {
        let a = off.call(method, path, Some(TOKEN)).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
        assert!(a.body["error"].is_string(), "{path}: {}", a.text);
    }
    off.finish().await;
}

#[tokio::test]
async fn retry_puts_a_failed_message_back_and_404s_otherwise() {
    let (mut c, db) = memory_config(true);
    c.provider.simulated.permanent_failure_rate = 1.0;
    let m = MemApp::start(c, db).await;
    let id = m.send(&recipient(4)).await;
    let failed = m.wait_status(id, "failed").await;
    assert_eq!(failed["history"].as_array().unwrap().len(), 1);

    let a = m
        .call("POST", &format!("/messages/{id}/retry"), Some(TOKEN))
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    assert_eq!(a.body["retried"], id.to_string());
    // Republished and attempted again (and, the provider still refusing, failed again).
    wait_for("a second attempt", LIMIT, || async {
        let a = m.call("GET", &format!("/messages/{id}"), None).await;
        match a.body["history"].as_array().map(Vec::len) {
            Some(n) if n >= 2 && a.body["status"] == "failed" => Ok(()),
            _ => Err(a.text),
        }
    })
    .await;

    let a = m
        .call(
            "POST",
            &format!("/messages/{}/retry", Uuid::new_v4()),
            Some(TOKEN),
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    assert!(a.body["error"].as_str().unwrap().contains("no message"));
    let a = m
        .call("POST", "/messages/not-a-uuid/retry", Some(TOKEN))
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    m.finish().await;

    // A message that is not failed: 404 too, saying why.
    let m = MemApp::new(true).await;
    let id = m.send(&recipient(5)).await;
    m.wait_status(id, "sent").await;
    let a = m
        .call("POST", &format!("/messages/{id}/retry"), Some(TOKEN))
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    assert!(a.body["error"].as_str().unwrap().contains("not failed"));
    m.finish().await;
}

#[tokio::test]
async fn redrive_dry_run_reports_without_consuming_and_redrive_is_rate_limited() {
    let (mut c, db) = memory_config(true);
    c.provider.simulated.permanent_failure_rate = 1.0;
    let m = MemApp::start(c, db).await;
    for n in 0..3 {
        let id = m.send(&recipient(10 + n)).await;
        m.wait_status(id, "failed").await;
    }
    let failed_queue = m.app.pipeline.config.broker.failed_queue.clone();
    let broker = m.broker().await;
    wait_for("3 messages in the failed queue", LIMIT, || async {
        match broker.queue_stats(&failed_queue).await {
            Ok(s) if s.ready == 3 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    for _ in 0..2 {
        let a = m
            .call("POST", "/failed/redrive?dry_run=true", Some(TOKEN))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert_eq!(a.body["dry_run"], true);
        assert_eq!(a.body["queue"], failed_queue.as_str());
        assert_eq!(a.body["depth"], 3, "{}", a.text);
        assert_eq!(a.body["would_redrive_at_most"], 3);
    }
    // Nothing was consumed, and a dry run is no re-drive.
    assert_eq!(broker.queue_stats(&failed_queue).await.unwrap().ready, 3);
    assert_eq!(m.app.pipeline.ops.redrive_status().last_started_at_ms, None);
    let a = m
        .call("POST", "/failed/redrive?dry_run=maybe", Some(TOKEN))
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);

    let a = m.call("POST", "/failed/redrive", Some(TOKEN)).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    assert_eq!(a.body["redriving"], true);
    let a = m.call("POST", "/failed/redrive", Some(TOKEN)).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.text);
    assert!(a.headers.contains_key(header::RETRY_AFTER));
    assert!(a.body["error"].is_string());
    // The re-drive ran: permanent failures went back to the failed queue.
    wait_for("the re-drive to finish", LIMIT, || async {
        let s = m.app.pipeline.ops.redrive_status();
        if !s.running && s.last_finished_at_ms.is_some() {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    assert_eq!(broker.queue_stats(&failed_queue).await.unwrap().ready, 3);
    // Still within the cooldown.
    let a = m.call("POST", "/failed/redrive", Some(TOKEN)).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    let _ = broker.close().await;
    m.finish().await;
}

#[tokio::test]
async fn pause_leaves_messages_in_the_queue_and_resume_delivers_them() {
    let m = MemApp::new(true).await;
    let work = m.app.pipeline.config.broker.work_queue.clone();
    let broker = m.broker().await;
    let consumers = || async { broker.queue_stats(&work).await.unwrap() };
    assert_eq!(consumers().await.consumers, 1);

    let a = m.call("POST", "/consumption/pause", Some(TOKEN)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.body, json!({ "paused": true, "was_paused": false }));
    wait_for("the consumer to be cancelled", LIMIT, || async {
        match consumers().await {
            s if s.consumers == 0 => Ok(()),
            s => Err(format!("{s:?}")),
        }
    })
    .await;
    let a = m.call("POST", "/consumption/pause", Some(TOKEN)).await;
    assert_eq!(a.body["was_paused"], true);

    let consumed = m.app.pipeline.ops.consumed();
    let id = m.send(&recipient(20)).await;
    // No consumer on the queue (the broker's own count), so nothing can take it; that it was
    // not taken before the resume is checked by its record's creation time below.
    wait_for("the message waiting in the queue", LIMIT, || async {
        match consumers().await {
            s if (s.ready, s.consumers) == (1, 0) => Ok(()),
            s => Err(format!("{s:?}")),
        }
    })
    .await;
    let a = m.call("GET", &format!("/messages/{id}"), None).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "not taken: {}", a.text);
    // Ready, but warning: paused, with what waits (as the queue sampler last saw it).
    let a = wait_for("/readyz to warn with the backlog", LIMIT, || async {
        let a = m.call("GET", "/readyz", None).await;
        let consumer = &a.body["checks"]["broker"][1];
        let output = consumer["output"].as_str().unwrap_or_default();
        if output.contains("1 messages waiting") {
            Ok(a)
        } else {
            Err(a.text)
        }
    })
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["status"], "warn", "{}", a.text);
    let consumer = &a.body["checks"]["broker"][1];
    assert_eq!(consumer["status"], "warn", "{}", a.text);
    assert!(
        consumer["output"]
            .as_str()
            .unwrap()
            .contains("consumption paused by an operator (POST /consumption/resume)"),
        "{}",
        a.text
    );

    // A restarted consumer stays paused.
    m.app.tree.lookup("root/broker/consumer").unwrap().kill();
    wait_for("the consumer to restart", LIMIT, || async {
        match m.app.tree.snapshot().find("root/broker/consumer") {
            Some(n) if n.restarts == 1 && n.status == NodeStatus::Running => Ok(()),
            other => Err(format!("{:?}", other.map(|n| (n.status, n.restarts)))),
        }
    })
    .await;
    assert!(m.app.pipeline.ops.consumption_paused());
    let s = consumers().await;
    assert_eq!(
        (s.ready, s.consumers),
        (1, 0),
        "still waiting, nobody consuming"
    );
    assert_eq!(
        m.app.pipeline.ops.consumed(),
        consumed,
        "nothing taken while paused"
    );

    let resumed_at = m.app.pipeline.clock.now_ms();
    let a = m.call("POST", "/consumption/resume", Some(TOKEN)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.body, json!({ "paused": false, "was_paused": true }));
    let rec = m.wait_status(id, "sent").await;
    assert!(
        rec["created_at"].as_i64().unwrap() >= resumed_at,
        "taken only after the resume: {rec}"
    );
    assert_eq!(consumers().await.consumers, 1);
    let a = m.call("POST", "/consumption/resume", Some(TOKEN)).await;
    assert_eq!(a.body["was_paused"], false);
    let _ = broker.close().await;
    m.finish().await;
}

/// The same routes against the real dependencies.
#[tokio::test]
async fn ops_against_rabbitmq_and_postgres() {
    let mut env = TestEnv::new().await;
    env.config.admin.token = TOKEN.into();
    env.config.admin.allow_destructive_actions = true;
    env.config.http.queue_sample_ms = 100;
    let app = env.start().await;
    let r = app.router();

    let a = call(&r, "GET", "/readyz", None, "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.body["status"], "pass", "{}", a.text);

    // Pause: a published message stays in RabbitMQ's queue, nobody consuming it.
    let a = call(&r, "POST", "/consumption/pause", Some(TOKEN), "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let monitor = env.broker("drover-test-ops-monitor").await;
    let work = env.config.broker.work_queue.clone();
    wait_for("the consumer to be cancelled", LIMIT, || async {
        match monitor.queue_stats(&work).await {
            Ok(s) if s.consumers == 0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let publisher = env.publisher().await;
    let refused = Uuid::new_v4();
    let to = recipient(30);
    env.provider.set_for_recipient(&to, Rule::reject(21211));
    publisher.publish_sms(refused, &to, "hi", "ops-1").await;
    wait_for("the message waiting in the queue", LIMIT, || async {
        match monitor.queue_stats(&work).await {
            Ok(s) if (s.ready, s.consumers) == (1, 0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let a = call(&r, "GET", &format!("/messages/{refused}"), None, "").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);

    // Resume: it is taken (only now: see its creation time), and refused permanently by the
    // provider.
    let resumed_at = app.pipeline.clock.now_ms();
    let a = call(&r, "POST", "/consumption/resume", Some(TOKEN), "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let get = |id: Uuid| {
        let r = r.clone();
        async move { call(&r, "GET", &format!("/messages/{id}"), None, "").await }
    };
    let failed = wait_for("the message to fail", LIMIT, || async {
        let a = get(refused).await;
        if a.body["status"] == "failed" {
            Ok(a.body)
        } else {
            Err(a.text)
        }
    })
    .await;
    assert!(
        failed["created_at"].as_i64().unwrap() >= resumed_at,
        "taken only after the resume: {failed}"
    );

    // The failed queue holds it: a dry run says so without consuming it.
    let failed_queue = env.config.broker.failed_queue.clone();
    wait_for("the failed queue to hold it", LIMIT, || async {
        let a = call(&r, "POST", "/failed/redrive?dry_run=true", Some(TOKEN), "").await;
        if a.body["depth"] == 1 {
            Ok(())
        } else {
            Err(a.text)
        }
    })
    .await;
    assert_eq!(monitor.queue_stats(&failed_queue).await.unwrap().ready, 1);

    // Retry it once the provider accepts.
    env.provider.set_for_recipient(&to, Rule::accept());
    let a = call(
        &r,
        "POST",
        &format!("/messages/{refused}/retry"),
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    wait_for("the retried message to be sent", LIMIT, || async {
        let a = get(refused).await;
        if a.body["status"] == "sent" {
            Ok(a.body)
        } else {
            Err(a.text)
        }
    })
    .await;

    // Re-drive: the failed queue's copy of a message since sent is taken and dropped, never
    // sent again (re-drive goes by the stored record, not by the copy).
    let a = call(&r, "POST", "/failed/redrive", Some(TOKEN), "").await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    let a = call(&r, "POST", "/failed/redrive", Some(TOKEN), "").await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.text);
    wait_for(
        "the failed queue drained by the re-drive",
        LIMIT,
        || async {
            match monitor.queue_stats(&failed_queue).await {
                Ok(s) if s.ready == 0 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let finished = wait_for("the re-drive finished", LIMIT, || async {
        let a = call(&r, "POST", "/failed/redrive?dry_run=true", Some(TOKEN), "").await;
        if a.body["redrive"]["last_finished_at_ms"].is_i64() {
            Ok(a.body)
        } else {
            Err(a.text)
        }
    })
    .await;
    assert_eq!(
        finished["redrive"]["last_redriven"], 0,
        "nothing put back into play: {finished}"
    );
    let accepted = env
        .provider
        .calls_for(refused)
        .iter()
        .filter(|c| c.status == 201)
        .count();
    assert_eq!(
        accepted, 1,
        "sent once, by the retry; the re-drive sent nothing"
    );
    let work_stats = monitor.queue_stats(&work).await.unwrap();
    assert_eq!(work_stats.ready, 0, "nothing republished to the work queue");

    let a = call(&r, "GET", "/metrics", None, "").await;
    let s = scrape(&a.text);
    assert!(number(sample(&s, "drover_consumed_total", None).unwrap()) >= 2.0);
    assert_eq!(
        number(sample(&s, "drover_messages_total", Some(("outcome", "failed"))).unwrap()),
        1.0
    );
    assert!(
        number(sample(&s, "drover_published_total", Some(("route", "failed"))).unwrap()) >= 1.0
    );

    publisher.close().await;
    let _ = monitor.close().await;
    app.shutdown().await.unwrap();
    env.cleanup().await;
}

/// The binary's path: `serve_until` running, a real client over loopback.
#[tokio::test]
async fn probes_and_metrics_over_loopback_while_serving() {
    let (c, db) = memory_config(false);
    let app = drover::start(c).await.unwrap();
    let base = format!("http://{}", app.addr);
    let queue = app.pipeline.config.broker.work_queue.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(app.serve_until(async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let livez = client.get(format!("{base}/livez")).send().await.unwrap();
    assert_eq!(livez.status().as_u16(), 200);
    let readyz = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(readyz.status().as_u16(), 200);
    assert_eq!(
        readyz.headers()["content-type"].to_str().unwrap(),
        "application/health+json"
    );
    // The queue sampler runs while the app serves.
    wait_for("a sampled queue depth", LIMIT, || async {
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        let s = scrape(&text);
        match sample(&s, "drover_queue_depth", Some(("queue", &queue))) {
            Some(_) => Ok(()),
            None => Err(text),
        }
    })
    .await;
    stop.send(()).unwrap();
    served.await.unwrap().unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}
