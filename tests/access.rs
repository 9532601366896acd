//! Access control and safe intake, in-process on the embedded default (in-memory broker, a
//! SQLite file of the test's own, the simulated provider), always on a loopback listener:
//! every route against every kind of caller, protected mode's refusals, the media type, the
//! `Idempotency-Key` cases, the submit rate limit and the in-memory broker's bound.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use drover::{App, Config};
use drover_actors::broker::Broker;
use serde_json::{Value, json};
use support::{Reply as Answer, request};
use tower::ServiceExt;
use uuid::Uuid;

const ADMIN: &str = "admin-s3cret";
const API: &str = "api-s3cret";
const LIMIT: Duration = Duration::from_secs(30);

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

struct TestApp {
    app: App,
    router: Router,
    db: PathBuf,
}

fn config(api_token: &str, allow: bool) -> (Config, PathBuf) {
    let mut c = Config::default();
    c.http.addr = "127.0.0.1:0".parse().unwrap();
    c.admin.token = ADMIN.into();
    c.admin.allow_destructive_actions = allow;
    c.api.token = api_token.into();
    let db = std::env::temp_dir().join(format!("drover-access-{}.db", Uuid::new_v4().simple()));
    c.store.url = format!("sqlite://{}?mode=rwc", db.display());
    c.provider.simulated.latency_ms = 1;
    c.provider.simulated.transient_failure_rate = 0.0;
    c.provider.simulated.permanent_failure_rate = 0.0;
    (c, db)
}

impl TestApp {
    async fn start((config, db): (Config, PathBuf)) -> TestApp {
        let app = drover::start(config).await.expect("drover starts");
        let router = app.router();
        TestApp { app, router, db }
    }

    async fn post(&self, headers: &[(&str, &str)], body: &Value) -> Answer {
        request(
            &self.router,
            "POST",
            "/messages",
            headers,
            &body.to_string(),
        )
        .await
    }

    /// Poll the store (as admin) until message `id` is `status`.
    async fn wait_status(&self, id: &str, status: &str) {
        let auth = bearer(ADMIN);
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let a = request(
                &self.router,
                "GET",
                &format!("/messages/{id}"),
                &[("authorization", &auth)],
                "",
            )
            .await;
            if a.body["status"] == status {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "message {id} never became {status}: {} {}",
                a.status,
                a.text
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

#[derive(Clone, Copy, Debug, PartialEq)]
enum Presented {
    Nothing,
    Wrong,
    ApiToken,
    AdminToken,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// Probes and the dashboard: anyone.
    Open,
    /// The message routes: the api token, the admin token, or anyone in protected mode.
    Messages,
    /// `?reveal=true`: the admin token only.
    Reveal,
    /// The admin routes: the admin token, and the switch.
    Admin,
    /// Admin routes that only read (a re-drive's dry run): the admin token, no switch.
    AdminRead,
}

/// What a caller gets: `None` for "let in" (the route's own answer), else the refusal.
fn expected(kind: Kind, who: Presented, api_set: bool, allow: bool) -> Option<StatusCode> {
    use Presented::*;
    // The api token is a valid credential only when it is configured.
    let who = if who == ApiToken && !api_set {
        Wrong
    } else {
        who
    };
    match (kind, who) {
        (Kind::Open, _) => None,
        (_, Wrong) => Some(StatusCode::UNAUTHORIZED),
        (Kind::Messages, Nothing) if api_set => Some(StatusCode::UNAUTHORIZED),
        (Kind::Messages, _) => None,
        (Kind::Reveal, Nothing) if api_set => Some(StatusCode::UNAUTHORIZED),
        (Kind::Reveal, Nothing | ApiToken) => Some(StatusCode::FORBIDDEN),
        (Kind::Reveal, AdminToken) => None,
        (Kind::Admin | Kind::AdminRead, Nothing | ApiToken) => Some(StatusCode::UNAUTHORIZED),
        (Kind::AdminRead, AdminToken) => None,
        (Kind::Admin, AdminToken) if !allow => Some(StatusCode::FORBIDDEN),
        (Kind::Admin, AdminToken) => None,
    }
}

/// Every route × {no token, a wrong one, the api token, the admin token} × {switch on, off} ×
/// {`api.token` set, unset}, on a loopback listener. A caller let in gets the route's own
/// answer (given beside it), never a 401 or 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_by_caller_switch_and_api_token() {
    let mut checked = 0;
    for api_set in [false, true] {
        for allow in [false, true] {
            let t = TestApp::start(config(if api_set { API } else { "" }, allow)).await;
            let admin = bearer(ADMIN);
            let seeded = t
                .post(
                    &[("authorization", &admin)],
                    &json!({ "to": "+15550001111", "body": "code 4242" }),
                )
                .await;
            assert_eq!(seeded.status, StatusCode::ACCEPTED, "{}", seeded.text);
            let id = seeded.body["id"].as_str().unwrap().to_owned();
            t.wait_status(&id, "sent").await;
            let routes: Vec<(Kind, &str, String, StatusCode)> = vec![
                (Kind::Open, "GET", "/".into(), StatusCode::OK),
                (Kind::Open, "GET", "/status".into(), StatusCode::OK),
                (Kind::Open, "GET", "/livez".into(), StatusCode::OK),
                (Kind::Open, "GET", "/readyz".into(), StatusCode::OK),
                (Kind::Open, "GET", "/metrics".into(), StatusCode::OK),
                (Kind::Open, "GET", "/trends".into(), StatusCode::OK),
                (Kind::Open, "GET", "/openapi.json".into(), StatusCode::OK),
                (
                    Kind::Messages,
                    "POST",
                    "/messages".into(),
                    StatusCode::ACCEPTED,
                ),
                (
                    Kind::Messages,
                    "GET",
                    format!("/messages/{id}"),
                    StatusCode::OK,
                ),
                (
                    Kind::Reveal,
                    "GET",
                    format!("/messages/{id}?reveal=true"),
                    StatusCode::OK,
                ),
                (Kind::Messages, "GET", "/messages".into(), StatusCode::OK),
                (
                    Kind::Reveal,
                    "GET",
                    "/messages?reveal=true".into(),
                    StatusCode::OK,
                ),
                (
                    Kind::Messages,
                    "GET",
                    "/messages/failures".into(),
                    StatusCode::OK,
                ),
                // No failure group of that class: nothing retried, still accepted.
                (
                    Kind::Admin,
                    "POST",
                    "/messages/failures/no-such-class/retry".into(),
                    StatusCode::ACCEPTED,
                ),
                (
                    Kind::Admin,
                    "POST",
                    "/actors/root/no-such-actor/kill".into(),
                    StatusCode::NOT_FOUND,
                ),
                // Sent, not failed: nothing to retry.
                (
                    Kind::Admin,
                    "POST",
                    format!("/messages/{id}/retry"),
                    StatusCode::NOT_FOUND,
                ),
                (
                    Kind::AdminRead,
                    "POST",
                    "/failed/redrive?dry_run=true".into(),
                    StatusCode::OK,
                ),
                (
                    Kind::Admin,
                    "POST",
                    "/actors/root/no-such-actor/terminate".into(),
                    StatusCode::NOT_FOUND,
                ),
                (
                    Kind::Admin,
                    "POST",
                    "/actors/root/no-such-actor/restart".into(),
                    StatusCode::NOT_FOUND,
                ),
                (
                    Kind::Admin,
                    "POST",
                    "/actors/root/kill".into(),
                    StatusCode::CONFLICT,
                ),
                (
                    Kind::Admin,
                    "POST",
                    "/consumption/pause".into(),
                    StatusCode::OK,
                ),
                (
                    Kind::Admin,
                    "POST",
                    "/consumption/resume".into(),
                    StatusCode::OK,
                ),
            ];
            for who in [
                Presented::Nothing,
                Presented::Wrong,
                Presented::ApiToken,
                Presented::AdminToken,
            ] {
                let auth = match who {
                    Presented::Nothing => None,
                    Presented::Wrong => Some(bearer("not-the-token")),
                    Presented::ApiToken => Some(bearer(API)),
                    Presented::AdminToken => Some(bearer(ADMIN)),
                };
                let headers: Vec<(&str, &str)> = auth
                    .as_deref()
                    .map(|a| vec![("authorization", a)])
                    .unwrap_or_default();
                for (kind, method, uri, own) in &routes {
                    let body = if uri == "/messages" {
                        json!({ "to": "+15550002222", "body": "hello" }).to_string()
                    } else {
                        String::new()
                    };
                    let a = request(&t.router, method, uri, &headers, &body).await;
                    let want = expected(*kind, who, api_set, allow).unwrap_or(*own);
                    assert_eq!(
                        a.status, want,
                        "{method} {uri} by {who:?} (api.token set: {api_set}, switch: {allow}): {}",
                        a.text
                    );
                    if want == StatusCode::UNAUTHORIZED || want == StatusCode::FORBIDDEN {
                        assert!(a.body["error"].is_string(), "{method} {uri}: {}", a.text);
                    }
                    // A masked read never carries the body; a revealed one does.
                    if *kind == Kind::Messages && *method == "GET" && want == StatusCode::OK {
                        assert!(!a.text.contains("4242"), "{uri} by {who:?}: {}", a.text);
                        assert!(!a.text.contains("15550001111"), "{}", a.text);
                    }
                    if *kind == Kind::Reveal && want == StatusCode::OK {
                        assert!(a.text.contains("\"code 4242\""), "{uri}: {}", a.text);
                        assert!(a.text.contains("15550001111"), "{uri}: {}", a.text);
                    }
                    checked += 1;
                }
            }
            // Probes never show a body either.
            for uri in ["/status", "/metrics", "/trends"] {
                let a = request(&t.router, "GET", uri, &[], "").await;
                assert!(!a.text.contains("4242"), "{uri}: {}", a.text);
            }
            t.finish().await;
        }
    }
    assert_eq!(checked, 4 * 4 * 22);
}

/// Only `application/json` is taken: a cross-site form post (`text/plain`,
/// `application/x-www-form-urlencoded`, `multipart/form-data`) gets 415, and no answer carries
/// a CORS header, not even to a preflight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_json_intake_is_415_and_no_cors_headers() {
    let t = TestApp::start(config("", false)).await;
    let body = json!({ "to": "+15550003333", "body": "hi" }).to_string();
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonp",
    ] {
        let a = request(
            &t.router,
            "POST",
            "/messages",
            &[("content-type", ct), ("origin", "http://evil.example")],
            &body,
        )
        .await;
        assert_eq!(
            a.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{ct}: {}",
            a.text
        );
        assert_eq!(a.body["class"], "unsupported_media_type");
        assert!(
            !a.headers.contains_key("access-control-allow-origin"),
            "{ct}"
        );
    }
    let a = request(
        &t.router,
        "POST",
        "/messages",
        &[("content-type", "application/json; charset=utf-8")],
        &body,
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    assert!(!a.headers.contains_key("access-control-allow-origin"));
    let preflight = request(
        &t.router,
        "OPTIONS",
        "/messages",
        &[
            ("origin", "http://evil.example"),
            ("access-control-request-method", "POST"),
        ],
        "",
    )
    .await;
    assert!(!preflight.status.is_success(), "{}", preflight.status);
    assert!(
        !preflight
            .headers
            .contains_key("access-control-allow-origin")
    );
    // Without a content type at all: 415 too.
    let r = t
        .router
        .clone()
        .oneshot(
            Request::builder()
                .method("POST")
                .uri("/messages")
                .body(Body::from(body.clone()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    t.finish().await;
}

/// The IETF httpapi draft's semantics: the same key and payload give the same message (its
/// state, no second send); the same key with another payload is 422; no key, a new message
/// (a fresh UUIDv7) every time, even for the same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_cases() {
    let t = TestApp::start(config("", false)).await;
    let payload = json!({ "to": "+15550004444", "body": "your code is 9876" });

    let first = t.post(&[("idempotency-key", "order-17")], &payload).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
    let id = first.body["id"].as_str().unwrap().to_owned();
    t.wait_status(&id, "sent").await;

    // The same key and payload (serialized differently): the same message, not sent again.
    let again = request(
        &t.router,
        "POST",
        "/messages",
        &[("idempotency-key", "order-17")],
        "{ \"body\" : \"your code is 9876\",\n \"to\":\"+15550004444\" }",
    )
    .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.body["id"], id.as_str());
    assert_eq!(again.body["duplicate"], true);
    assert_eq!(again.body["status"], "sent");

    // The same key, another payload: refused.
    let other = t
        .post(
            &[("idempotency-key", "order-17")],
            &json!({ "to": "+15550004444", "body": "another text" }),
        )
        .await;
    assert_eq!(
        other.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        other.text
    );
    assert_eq!(other.body["class"], "idempotency_key_reused");

    // No key: each POST is a message of its own, with a UUIDv7.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let a = t.post(&[], &payload).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
        let id: Uuid = a.body["id"].as_str().unwrap().parse().unwrap();
        assert_eq!(id.get_version_num(), 7, "{id}");
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);
    for id in &ids {
        t.wait_status(&id.to_string(), "sent").await;
    }

    // A key that is not visible ASCII, or too long: 400.
    for bad in ["", &"k".repeat(256)] {
        let a = t.post(&[("idempotency-key", bad)], &payload).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad:?}: {}", a.text);
        assert_eq!(a.body["class"], "bad_idempotency_key");
    }

    // Three sends in all: the keyed one once, the two unkeyed ones.
    let metrics = request(&t.router, "GET", "/metrics", &[], "").await;
    let sent = metrics
        .text
        .lines()
        .find(|l| l.starts_with("drover_messages_total{outcome=\"sent\"}"))
        .unwrap_or_else(|| panic!("no sent counter: {}", metrics.text));
    assert!(sent.ends_with(" 3"), "{sent}");
    t.finish().await;
}

/// Beyond `api.max_per_second` and its burst: 429 with `Retry-After`, and the refused
/// submissions are not published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_beyond_the_rate_get_429_with_retry_after() {
    let (mut c, db) = config("", false);
    c.api.max_per_second = 1;
    c.api.burst = 3;
    let t = TestApp::start((c, db)).await;
    let mut codes = Vec::new();
    let mut retry_after = None;
    for i in 0..6 {
        let a = t
            .post(
                &[],
                &json!({ "to": "+15550005555", "body": format!("n{i}") }),
            )
            .await;
        if a.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(a.body["class"], "rate_limited", "{}", a.text);
            retry_after = a
                .headers
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
        }
        codes.push(a.status.as_u16());
    }
    // The burst passes at once; the rest of the same instant does not (the limiter refills one
    // a second, so at most one more can slip in on a slow machine).
    let accepted = codes.iter().filter(|c| **c == 202).count();
    assert!((3..=4).contains(&accepted), "{codes:?}");
    assert!(codes.contains(&429), "{codes:?}");
    let secs = retry_after.expect("a Retry-After header in seconds");
    assert!((1..=2).contains(&secs), "Retry-After: {secs}");
    t.finish().await;
}

/// The in-memory work queue's bound: with consumption paused and `broker.memory_max_length`
/// reached, a submission is refused (503: not accepted), not dropped; once it drains, intake
/// works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_memory_work_queue_refuses_intake_and_drops_nothing() {
    let (mut c, db) = config("", true);
    c.broker.memory_max_length = 3;
    let t = TestApp::start((c, db)).await;
    let admin = bearer(ADMIN);
    let a = request(
        &t.router,
        "POST",
        "/consumption/pause",
        &[("authorization", &admin)],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    // The paused consumer closes once its deliveries in flight are settled: from then on the
    // work queue only fills.
    let broker = Broker::connect(&t.app.pipeline.config.broker, &t.app.pipeline.memory)
        .await
        .unwrap();
    let work = t.app.pipeline.config.broker.work_queue.clone();
    let deadline = tokio::time::Instant::now() + LIMIT;
    while broker.queue_stats(&work).await.unwrap().consumers > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the consumer never closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut accepted = Vec::new();
    for i in 0..3 {
        let a = t
            .post(
                &[],
                &json!({ "to": "+15550006666", "body": format!("q{i}") }),
            )
            .await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
        accepted.push(a.body["id"].as_str().unwrap().to_owned());
    }
    let full = t
        .post(&[], &json!({ "to": "+15550006666", "body": "q3" }))
        .await;
    assert_eq!(
        full.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        full.text
    );
    assert!(full.text.contains("nacked"), "{}", full.text);
    let a = request(
        &t.router,
        "POST",
        "/consumption/resume",
        &[("authorization", &admin)],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    for id in &accepted {
        t.wait_status(id, "sent").await;
    }
    let after = t
        .post(&[], &json!({ "to": "+15550006666", "body": "q3" }))
        .await;
    assert_eq!(after.status, StatusCode::ACCEPTED, "{}", after.text);
    t.finish().await;
}

/// Protected mode at start: a non-loopback listener without `api.token`, or with destructive
/// admin actions on and no `admin.token`, is refused before anything listens. Only the
/// refusal is observed: the test never talks to a non-loopback address.
#[tokio::test]
async fn a_non_loopback_listener_without_tokens_is_refused_before_listening() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (mut c, _db) = config("", false);
    c.http.addr = format!("0.0.0.0:{port}").parse().unwrap();
    let e = drover::start(c.clone()).await.expect_err("refused");
    assert_eq!(e.exit_code(), 2, "{e}");
    let line = e.to_string();
    assert!(
        line.contains("http.addr") && line.contains("api.token"),
        "{line}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "something listens on {port}"
    );

    c.api.token = API.into();
    c.admin.token = String::new();
    c.admin.allow_destructive_actions = true;
    let e = drover::start(c).await.expect_err("refused");
    assert_eq!(e.exit_code(), 2, "{e}");
    assert!(e.to_string().contains("admin.token"), "{e}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}
