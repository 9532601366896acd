//! `GET /`, the live dashboard, rendered in headless Chromium (`/usr/bin/chromium`, Debian's
//! `chromium` package; `tests/run.sh` installs it). The assertions are on the DOM the page's
//! script built from `GET /status` (`--dump-dom`), not on the HTML source. Without Chromium the
//! test fails; it never skips.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use drover::{App, Config};
use drover_actors::tree::EventKind;
use uuid::Uuid;

const CHROMIUM: &str = "/usr/bin/chromium";
const TOKEN: &str = "dashboard-s3cret";
const TICKER: &str = "root/demo/ticker";
const CHROMIUM_LIMIT: Duration = Duration::from_secs(90);

fn test_config() -> Config {
    let mut c = Config::default();
    c.http.addr = "127.0.0.1:0".parse().unwrap();
    c.admin.token = TOKEN.into();
    c.admin.allow_destructive_actions = true;
    c.pipeline.enabled = false;
    c.demo.enabled = true;
    c.demo.crash_every_ms = 0;
    c.demo.job_every_ms = 0;
    c
}

fn chromium() -> &'static str {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} not found: the dashboard test needs headless Chromium. Install Debian's \
         `chromium` package (tests/run.sh does: apt-get install --no-install-recommends chromium)"
    );
    CHROMIUM
}

/// A fresh profile directory, removed on drop.
struct Profile(PathBuf);

impl Profile {
    fn new() -> Profile {
        let dir = std::env::temp_dir().join(format!("drover-chromium-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Profile(dir)
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run headless Chromium on `url` with `extra` arguments; its stdout.
async fn run_chromium(url: &str, extra: &[&str]) -> String {
    let profile = Profile::new();
    let mut cmd = tokio::process::Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=3000",
    ])
    .arg(format!("--user-data-dir={}", profile.0.display()))
    .args(extra)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {CHROMIUM}: {e}"));
    let out = tokio::time::timeout(CHROMIUM_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("chromium did not finish within {CHROMIUM_LIMIT:?}"))
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn dump_dom(app: &App) -> String {
    let dom = run_chromium(&format!("http://{}/", app.addr), &["--dump-dom"]).await;
    assert!(
        dom.contains("id=\"tree\""),
        "not the dashboard's DOM:\n{dom}"
    );
    dom
}

/// The attributes of the element carrying `data-path="{path}"` in a dumped DOM.
fn node_attrs(dom: &str, path: &str) -> Option<Vec<(String, String)>> {
    let needle = format!("data-path=\"{path}\"");
    let at = dom.find(&needle)?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    let tag = &dom[start + 1..end];
    let mut attrs = Vec::new();
    let mut rest = tag.split_once(char::is_whitespace).map_or("", |(_, r)| r);
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].trim().to_string();
        let after = &rest[eq + 2..];
        let close = after.find('"')?;
        attrs.push((name, after[..close].to_string()));
        rest = &after[close + 1..];
    }
    Some(attrs)
}

fn attr<'a>(attrs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_renders_the_live_tree_in_chromium() {
    chromium();
    let app = drover::start(test_config()).await.expect("drover starts");

    // The page's script rendered the tree from GET /status.
    let dom = dump_dom(&app).await;
    for path in ["root", "root/demo", TICKER] {
        assert!(
            node_attrs(&dom, path).is_some(),
            "no node {path} in the DOM:\n{dom}"
        );
    }
    let ticker = node_attrs(&dom, TICKER).unwrap();
    assert_eq!(attr(&ticker, "data-status"), Some("running"), "{ticker:?}");
    assert_eq!(attr(&ticker, "data-restarts"), Some("0"), "{ticker:?}");
    assert_eq!(attr(&ticker, "data-kind"), Some("worker"), "{ticker:?}");
    let generation: u64 = attr(&ticker, "data-generation").unwrap().parse().unwrap();
    assert!(
        dom.contains("id=\"circuit\""),
        "no circuit panel in the DOM"
    );

    // Kill the ticker through the chaos hook; wait for its supervisor to restart it.
    let mut events = app.tree.subscribe();
    let resp = reqwest::Client::new()
        .post(format!("http://{}/actors/{TICKER}/kill", app.addr))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("kill request");
    assert_eq!(resp.status().as_u16(), 202, "{:?}", resp.text().await);
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.recv().await {
                Ok(e) if e.path == TICKER && e.kind == EventKind::Started => break,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("the event stream ended: {e}"),
            }
        }
    })
    .await
    .expect("root/demo/ticker restarted within 30 s");

    let dom = dump_dom(&app).await;
    let ticker = node_attrs(&dom, TICKER).expect("the ticker is still in the DOM");
    assert_eq!(attr(&ticker, "data-restarts"), Some("1"), "{ticker:?}");
    assert_eq!(attr(&ticker, "data-status"), Some("running"), "{ticker:?}");
    let next = (generation + 1).to_string();
    assert_eq!(
        attr(&ticker, "data-generation"),
        Some(next.as_str()),
        "{ticker:?}"
    );
    assert!(
        dom.contains("data-class="),
        "the ticker's last exit is not rendered:\n{dom}"
    );

    // A screenshot, for a human.
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(
        &format!("http://{}/", app.addr),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,900",
        ],
    )
    .await;
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("{}: {e}", shot.display()));
    assert!(
        png.len() > 1000,
        "screenshot too small: {} bytes",
        png.len()
    );
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");

    app.shutdown().await.expect("clean shutdown");
}
