//! The status endpoint, driven in-process (tower `oneshot` on the router, paused clock) and
//! over a real loopback socket (the app started as `main` starts it).

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use drover::Config;
use drover::http::router;
use drover_actors::tree::{EventKind, ExitClass, NodeStatus, TreeEvent};
use http_body_util::BodyExt;
use tokio::sync::broadcast;
use tower::ServiceExt;

fn test_config(token: &str, allow: bool) -> Config {
    let mut c = Config::default();
    c.http.addr = "127.0.0.1:0".parse().unwrap();
    c.admin.token = token.into();
    c.admin.allow_destructive_actions = allow;
    // No scheduled crashes: the only failures are the ones a test causes.
    c.demo.crash_every_ms = 0;
    c.demo.job_every_ms = 0;
    c.demo.enabled = true;
    // These tests are about the supervision tree and its endpoint, on a paused clock: no
    // pipeline (its real I/O would let the paused clock race ahead).
    c.pipeline.enabled = false;
    c
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::String(
        String::from_utf8_lossy(&bytes).into(),
    ));
    (status, json)
}

async fn wait_for(
    rx: &mut broadcast::Receiver<TreeEvent>,
    what: impl Fn(&TreeEvent) -> bool,
) -> TreeEvent {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let e = rx.recv().await.expect("event stream closed");
            if what(&e) {
                return e;
            }
        }
    })
    .await
    .expect("the awaited supervision event never came")
}

#[tokio::test(start_paused = true)]
async fn status_returns_the_live_tree_as_json_and_text() {
    let app = drover::start(test_config("t", true)).await.unwrap();
    let r = router(app.tree.clone(), test_config("t", true).admin, None);
    let (code, body) = call(&r, "GET", "/status", None).await;
    assert_eq!(code, StatusCode::OK);
    let root = &body["roots"][0];
    assert_eq!(root["path"], "root");
    assert_eq!(root["kind"], "supervisor");
    assert_eq!(root["supervisor"]["strategy"], "one_for_one");
    let demo = &root["children"][0];
    let names: Vec<&str> = demo["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["ticker", "flaky", "pool", "feeder", "batch"],
        "children in start order"
    );
    assert!(
        demo["children"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"] == "running")
    );

    let (code, body) = call(&r, "GET", "/status?format=text", None).await;
    assert_eq!(code, StatusCode::OK);
    let text = body.as_str().unwrap();
    assert!(
        text.contains("└── demo") && text.contains("ticker [worker] running gen 1"),
        "{text}"
    );
    let (code, _) = call(&r, "GET", "/status?format=yaml", None).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    app.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn kill_requires_token_then_switch_and_knows_paths() {
    let app = drover::start(test_config("s3cret", false)).await.unwrap();
    let off = router(app.tree.clone(), test_config("s3cret", false).admin, None);
    let kill = "/actors/root/demo/ticker/kill";
    assert_eq!(
        call(&off, "POST", kill, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&off, "POST", kill, Some("wrong")).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (code, body) = call(&off, "POST", kill, Some("s3cret")).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("allow_destructive_actions")
    );
    // An empty configured token refuses everyone, even an empty bearer.
    let empty = router(app.tree.clone(), test_config("", true).admin, None);
    assert_eq!(
        call(&empty, "POST", kill, Some("")).await.0,
        StatusCode::UNAUTHORIZED
    );

    let on = router(app.tree.clone(), test_config("s3cret", true).admin, None);
    let (code, body) = call(&on, "POST", "/actors/root/nope/kill", Some("s3cret")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("root/nope"));
    assert_eq!(
        call(
            &on,
            "POST",
            "/actors/root/demo/ticker/explode",
            Some("s3cret")
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    // Nothing was killed by any refused call.
    assert_eq!(
        app.tree
            .snapshot()
            .find("root/demo/ticker")
            .unwrap()
            .restarts,
        0
    );
    app.shutdown().await.unwrap();
}

/// `drover terminate` / `drover restart` underneath: the actor's supervisor stops it (not
/// restarted), then starts it again; a running actor cannot be restarted, the root has no
/// supervisor to ask, and both need the admin token and the destructive switch like kill.
#[tokio::test(start_paused = true)]
async fn terminate_then_restart_through_the_supervisor() {
    let app = drover::start(test_config("t", true)).await.unwrap();
    let r = router(app.tree.clone(), test_config("t", true).admin, None);
    let off = router(app.tree.clone(), test_config("t", false).admin, None);
    let ticker = "root/demo/ticker";
    let terminate = format!("/actors/{ticker}/terminate");
    let restart = format!("/actors/{ticker}/restart");
    assert_eq!(
        call(&r, "POST", &terminate, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&off, "POST", &terminate, Some("t")).await.0,
        StatusCode::FORBIDDEN
    );

    let (code, body) = call(&r, "POST", &restart, Some("t")).await;
    assert_eq!(code, StatusCode::CONFLICT, "a running actor: {body}");
    assert!(
        body["error"].as_str().unwrap().contains("is running"),
        "{body}"
    );

    let (code, body) = call(&r, "POST", &terminate, Some("t")).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["terminated"], ticker);
    let node = app.tree.snapshot().find(ticker).unwrap().clone();
    assert_eq!(node.status, NodeStatus::Stopped);

    let (code, body) = call(&r, "POST", &restart, Some("t")).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["restarted"], ticker);
    assert_eq!(body["generation"], 2);
    assert_eq!(
        app.tree.snapshot().find(ticker).unwrap().status,
        NodeStatus::Running
    );

    let (code, body) = call(&r, "POST", "/actors/root/terminate", Some("t")).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("is the root"),
        "{body}"
    );
    let (code, _) = call(&r, "POST", "/actors/root/demo/nope/restart", Some("t")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    app.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn kill_restarts_the_actor_with_restarts_plus_one_and_last_exit_killed() {
    let app = drover::start(test_config("t", true)).await.unwrap();
    let r = router(app.tree.clone(), test_config("t", true).admin, None);
    let mut events = app.tree.subscribe();
    let before = app.tree.snapshot().find("root/demo/flaky").unwrap().clone();

    let (code, body) = call(&r, "POST", "/actors/root/demo/flaky/kill", Some("t")).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["killed"], "root/demo/flaky");
    wait_for(&mut events, |e| {
        e.path == "root/demo/flaky" && e.kind == EventKind::Started
    })
    .await;

    let (_, body) = call(&r, "GET", "/status", None).await;
    let flaky = body["roots"][0]["children"][0]["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "flaky")
        .unwrap()
        .clone();
    assert_eq!(flaky["restarts"].as_u64().unwrap(), before.restarts + 1);
    assert_eq!(flaky["status"], "running");
    assert_ne!(
        flaky["id"].as_str(),
        before.id.as_deref(),
        "a new incarnation"
    );
    let last = flaky["last_exits"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        last["class"],
        serde_json::to_value(ExitClass::Killed).unwrap()
    );
    // rest_for_one: the siblings started after flaky were restarted with it; ticker was not.
    let snap = app.tree.snapshot();
    assert_eq!(snap.find("root/demo/ticker").unwrap().restarts, 0);
    assert_eq!(snap.find("root/demo/feeder").unwrap().restarts, 1);
    app.shutdown().await.unwrap();
}

/// The binary's path: a real listener on loopback, a real HTTP client.
#[tokio::test]
async fn serves_status_over_loopback_and_shuts_down_cleanly() {
    let app = drover::start(test_config("t", true)).await.unwrap();
    let base = format!("http://{}", app.addr);
    let mut events = app.tree.subscribe();
    let client = reqwest::Client::new();
    let status: serde_json::Value = client
        .get(format!("{base}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["roots"][0]["path"], "root");
    let resp = client
        .post(format!("{base}/actors/root/demo/ticker/kill"))
        .bearer_auth("t")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let e = wait_for(&mut events, |e| {
        e.path == "root/demo/ticker" && matches!(e.kind, EventKind::Exited { .. })
    })
    .await;
    assert_eq!(
        e.kind,
        EventKind::Exited {
            class: ExitClass::Killed,
            reason: "killed".into()
        }
    );
    wait_for(&mut events, |e| {
        e.path == "root/demo/ticker" && e.kind == EventKind::Started
    })
    .await;
    app.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn root_giving_up_makes_run_fail_with_exit_code_4() {
    let mut c = test_config("t", true);
    c.supervision.max_restarts = 0;
    let app = drover::start(c).await.unwrap();
    let r = router(app.tree.clone(), test_config("t", true).admin, None);
    // demo (one restart allowed: none) gives up, root restarts it: more than 0 -> root gives up.
    call(&r, "POST", "/actors/root/demo/ticker/kill", Some("t")).await;
    let err = tokio::time::timeout(
        Duration::from_secs(600),
        app.serve_until(std::future::pending()),
    )
    .await
    .expect("the root gives up (bounded)")
    .unwrap_err();
    assert_eq!(err.exit_code(), drover::exit::EXIT_ROOT_GAVE_UP, "{err}");
    assert!(err.to_string().contains("intensity"), "{err}");
}
