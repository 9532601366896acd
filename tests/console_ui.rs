//! The operator console in a real browser: Debian's `chromium`, headless, driven through
//! Debian's `chromium-driver` (WebDriver on loopback; `tests/run.sh` installs both), against
//! drover (in-process) on RabbitMQ and PostgreSQL with the mock Twilio. A person's path:
//! search a message by its correlation id, open its timeline, retry it with the admin token
//! (through the confirmation dialog) and watch it become sent; kill an actor from the tree and
//! see its restart; the charts fill with the traffic. Screenshots at 1280 px and at 390 px (a
//! phone) are written to `target/tmp/console-*.png` for a human to look at. Without Chromium or
//! its driver the test fails; it never skips.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use drover_actors::store::MessageStatus;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use support::{Rule, TestEnv, recipient, wait_for, wait_status};
use uuid::Uuid;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const ADMIN: &str = "console-ui-s3cret";
const LIMIT: Duration = Duration::from_secs(30);

/// `chromedriver` on a free loopback port, killed on drop.
struct Driver {
    child: tokio::process::Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(bin).exists(),
                "{bin} not found: the console test needs Debian's chromium and chromium-driver \
                 (tests/run.sh installs them: apt-get install --no-install-recommends chromium \
                 chromium-driver)"
            );
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        wait_for("chromedriver to listen", LIMIT, || async {
            match reqwest::get(&status).await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("HTTP {}", r.status())),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
        Driver { child, url }
    }

    /// A headless browser session; `mobile`: a 390 px wide phone viewport.
    async fn session(&self, mobile: bool) -> Client {
        let mut options = json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--window-size=1280,1000",
            ],
        });
        if mobile {
            options["mobileEmulation"] =
                json!({ "deviceMetrics": { "width": 390, "height": 844, "pixelRatio": 1.0 } });
        }
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), options);
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a WebDriver session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Evaluate `script` (a function body) in the page until it returns `want`.
async fn until(c: &Client, what: &str, script: &str, want: Value) {
    wait_for(what, LIMIT, || async {
        match c.execute(script, vec![]).await {
            Ok(v) if v == want => Ok(()),
            Ok(v) => Err(format!("{v}")),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
}

async fn click(c: &Client, css: &str) {
    c.wait()
        .at_most(LIMIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

fn artifact(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)
}

async fn screenshot(c: &Client, name: &str) -> (u32, u32) {
    let png = c.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    std::fs::write(artifact(name), &png).unwrap();
    // The IHDR chunk: width and height, big-endian, at bytes 16..24.
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&png[16..20]), be(&png[20..24]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_finds_retries_and_kills_from_the_console() {
    let driver = Driver::start().await;
    let mut env = TestEnv::new().await;
    env.config.admin.token = ADMIN.into();
    env.config.admin.allow_destructive_actions = true;
    env.config.trends.sample_ms = 200;
    // The customer's number is refused (21211, permanent) until the operator's fix.
    let customer = recipient(42);
    env.provider
        .set_for_recipient(&customer, Rule::reject(21211));
    let app = env.start().await;
    let store = env.store().await;
    let publisher = env.publisher().await;
    for n in 0..5 {
        publisher
            .publish_sms(
                Uuid::new_v4(),
                &recipient(n),
                "traffic",
                &format!("corr-ui-{n}"),
            )
            .await;
    }
    let lost = Uuid::new_v4();
    publisher
        .publish_sms(lost, &customer, "your code is 1234", "order-7731")
        .await;
    wait_status(&store, lost, MessageStatus::Failed, LIMIT).await;
    let base = format!("http://{}", app.addr);

    let c = driver.session(false).await;
    // Search by correlation id: one row, failed.
    c.goto(&format!("{base}/#messages")).await.unwrap();
    let search = c
        .wait()
        .at_most(LIMIT)
        .for_element(Locator::Css("#search"))
        .await
        .unwrap();
    search.send_keys("order-7731").await.unwrap();
    click(&c, "#search-form button[type=submit]").await;
    until(
        &c,
        "the search to find the message",
        "const rows = document.querySelectorAll('#message-list tbody tr.msg'); \
         return rows.length === 1 ? rows[0].getAttribute('data-status') + ' ' + rows[0].getAttribute('data-id') : String(rows.length);",
        json!(format!("failed {lost}")),
    )
    .await;
    screenshot(&c, "console-1280-search.png").await;

    // Its timeline; the operator fixes the cause, types the token, retries, confirms.
    click(&c, "#message-list tbody tr.msg a").await;
    until(
        &c,
        "the timeline",
        "const d = document.querySelector('#message-detail dl'); return d && d.getAttribute('data-status');",
        json!("failed"),
    )
    .await;
    env.provider.set_for_recipient(&customer, Rule::accept());
    c.find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(ADMIN)
        .await
        .unwrap();
    click(&c, "button[data-action=retry]").await;
    until(
        &c,
        "the confirmation dialog",
        "return document.getElementById('confirm').open;",
        json!(true),
    )
    .await;
    click(&c, "#confirm-yes").await;
    until(
        &c,
        "the message to show sent",
        "const d = document.querySelector('#message-detail dl'); return d && d.getAttribute('data-status');",
        json!("sent"),
    )
    .await;
    let attempts = c
        .execute(
            "return document.querySelectorAll('#attempts tbody tr').length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(attempts, json!(2), "the refused attempt and the sent one");
    screenshot(&c, "console-1280-timeline.png").await;

    // Kill the scheduler from the tree: it comes back, restarts 1.
    c.goto(&format!("{base}/#overview")).await.unwrap();
    click(&c, "button[data-action=kill][data-target='root/scheduler']").await;
    click(&c, "#confirm-yes").await;
    until(
        &c,
        "the scheduler's restart in the tree",
        "const n = document.querySelector('li[data-path=\"root/scheduler\"]'); \
         return n && n.getAttribute('data-restarts') + ' ' + n.getAttribute('data-status');",
        json!("1 running"),
    )
    .await;
    // The charts hold the traffic.
    until(
        &c,
        "the throughput chart to have data",
        "const s = document.getElementById('chart-throughput'); \
         return Number(s.getAttribute('data-points')) >= 2 && Number(s.getAttribute('data-max')) > 0;",
        json!(true),
    )
    .await;
    until(
        &c,
        "the restarts chart to show the kill",
        "return Number(document.getElementById('chart-restarts').getAttribute('data-max')) >= 1;",
        json!(true),
    )
    .await;
    let (w, _) = screenshot(&c, "console-1280-overview.png").await;
    assert_eq!(w, 1280);
    c.close().await.unwrap();

    // A phone: one column, nothing wider than the screen.
    let phone = driver.session(true).await;
    for (view, name) in [
        ("#overview", "console-390-overview.png"),
        ("#messages", "console-390-messages.png"),
    ] {
        phone.goto(&format!("{base}/{view}")).await.unwrap();
        until(
            &phone,
            "the page to render",
            "return document.getElementById('conn').getAttribute('data-state');",
            json!("ok"),
        )
        .await;
        let width = phone
            .execute(
                "return [window.innerWidth, document.documentElement.scrollWidth];",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(width, json!([390, 390]), "{view} fits a phone's width");
        let (w, _) = screenshot(&phone, name).await;
        assert_eq!(w, 390);
    }
    phone.close().await.unwrap();

    app.shutdown().await.expect("clean shutdown");
    publisher.close().await;
    store.close().await;
    env.cleanup().await;
}
