//! The command line, run as the real binary: help, `config`, usage and configuration errors,
//! and the client commands against an instance started in-process by the test.

use std::process::Output;

use drover::Config;
use tokio::process::Command;

/// The binary with a clean environment as far as drover is concerned: no `DROVER_*` variables
/// from the caller leak into the child.
fn drover(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_drover"));
    cmd.args(args).env_remove("NO_COLOR").kill_on_drop(true);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("DROVER_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

async fn output(cmd: &mut Command) -> Output {
    tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output())
        .await
        .expect("drover did not finish within 60 s")
        .expect("cannot run drover")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exactly one line on stderr, `drover: ...`; returns it.
fn one_error_line(o: &Output) -> String {
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr, got: {err:?}");
    assert!(lines[0].starts_with("drover: "), "{err:?}");
    lines[0].to_string()
}

#[tokio::test]
async fn help_succeeds_and_lists_the_commands() {
    let o = output(&mut drover(&["--help"])).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let help = stdout(&o);
    for word in [
        "serve", "status", "kill", "retry", "redrive", "config", "--url", "--token",
    ] {
        assert!(help.contains(word), "`{word}` missing from --help:\n{help}");
    }
}

#[tokio::test]
async fn config_prints_the_effective_config_with_secrets_redacted() {
    // A value no key contains (`api_secret` is a key's name).
    let o = output(
        drover(&["config"])
            .env("DROVER_ADMIN__TOKEN", "s3cr3t-admin")
            .env("DROVER_PROVIDER__VONAGE__API_SECRET", "s3cr3t-vonage"),
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("[http]"), "{out}");
    assert!(out.contains("<redacted>"), "{out}");
    assert!(!out.contains("s3cr3t"), "{out}");
}

#[tokio::test]
async fn a_bad_config_key_exits_2_with_one_line() {
    let o = output(drover(&["config"]).env("DROVER_HTTP__BOGUS", "1")).await;
    assert_eq!(o.status.code(), Some(2));
    let line = one_error_line(&o);
    assert!(line.contains("bogus"), "{line}");
    assert!(stdout(&o).is_empty());
}

#[tokio::test]
async fn a_lease_shorter_than_a_provider_call_exits_2_naming_both_keys() {
    let o = output(
        drover(&["config"])
            .env("DROVER_DELIVERY__SENDING_LEASE_MS", "5000")
            .env("DROVER_PROVIDER__TIMEOUT_MS", "10000"),
    )
    .await;
    assert_eq!(o.status.code(), Some(2));
    let line = one_error_line(&o);
    assert!(
        line.contains("delivery.sending_lease_ms") && line.contains("provider.timeout_ms"),
        "{line}"
    );
}

#[tokio::test]
async fn a_missing_config_file_exits_2() {
    let o = output(&mut drover(&[
        "--config",
        "/nonexistent/drover.toml",
        "config",
    ]))
    .await;
    assert_eq!(o.status.code(), Some(2));
    let line = one_error_line(&o);
    assert!(line.contains("/nonexistent/drover.toml"), "{line}");
}

#[tokio::test]
async fn usage_errors_exit_2_with_one_line() {
    let o = output(&mut drover(&["frobnicate"])).await;
    assert_eq!(o.status.code(), Some(2));
    let line = one_error_line(&o);
    assert!(line.contains("frobnicate"), "{line}");

    let o = output(&mut drover(&["kill"])).await;
    assert_eq!(o.status.code(), Some(2));
    let line = one_error_line(&o);
    assert!(line.contains("<PATH>"), "{line}");
}

#[tokio::test]
async fn an_unreachable_instance_exits_1_with_one_clear_line() {
    let o = output(&mut drover(&["status", "--url", "http://127.0.0.1:1"])).await;
    assert_eq!(o.status.code(), Some(1));
    let line = one_error_line(&o);
    assert!(
        line.starts_with("drover: cannot reach drover at http://127.0.0.1:1"),
        "{line}"
    );
}

fn live_config(token: &str) -> Config {
    let mut c = Config::default();
    c.http.addr = "127.0.0.1:0".parse().unwrap();
    c.admin.token = token.into();
    c.admin.allow_destructive_actions = true;
    c.pipeline.enabled = false;
    c.demo.enabled = true;
    // No scheduled crashes: the ticker stays up for the kill below.
    c.demo.crash_every_ms = 0;
    c.demo.job_every_ms = 0;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_against_a_live_instance() {
    let app = drover::start(live_config("s3cret")).await.unwrap();
    let url = format!("http://{}", app.addr);

    let o = output(&mut drover(&["status", "--url", &url])).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let tree = stdout(&o);
    assert!(tree.starts_with("root [supervisor] running"), "{tree}");
    assert!(tree.contains("ticker [worker] running"), "{tree}");
    assert!(
        !tree.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );

    let o = output(&mut drover(&["status", "--json", "--url", &url])).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["roots"][0]["path"], "root");

    let o = output(&mut drover(&[
        "kill",
        "root/demo/ticker",
        "--url",
        &url,
        "--token",
        "wrong",
    ]))
    .await;
    assert_eq!(o.status.code(), Some(1));
    let line = one_error_line(&o);
    assert!(line.contains("401"), "{line}");
    assert!(line.contains("bearer token"), "{line}");

    // The token from the config layering (DROVER_ADMIN__TOKEN) when --token is absent.
    let o = output(
        drover(&["kill", "root/demo/ticker", "--url", &url]).env("DROVER_ADMIN__TOKEN", "wrong"),
    )
    .await;
    assert_eq!(o.status.code(), Some(1));
    assert!(one_error_line(&o).contains("401"));

    let o = output(&mut drover(&[
        "kill",
        "root/demo/ticker",
        "--url",
        &url,
        "--token",
        "s3cret",
    ]))
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("killed root/demo/ticker"),
        "{}",
        stdout(&o)
    );
    // --json: the server's answer instead of the line, for every client command.
    let o = output(&mut drover(&[
        "terminate",
        "root/demo/feeder",
        "--json",
        "--url",
        &url,
        "--token",
        "s3cret",
    ]))
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["terminated"], "root/demo/feeder");
    let o = output(&mut drover(&[
        "restart",
        "root/demo/feeder",
        "--url",
        &url,
        "--token",
        "s3cret",
    ]))
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        "restarted root/demo/feeder (generation 2)"
    );

    let o = output(&mut drover(&[
        "kill",
        "root/nope",
        "--url",
        &url,
        "--token",
        "s3cret",
    ]))
    .await;
    assert_eq!(o.status.code(), Some(1));
    assert!(one_error_line(&o).contains("404"));

    app.shutdown().await.unwrap();
}

/// Every secret-bearing key, redacted by parsing: a password holding `@` or `%40`, query
/// values of secret-looking names, credentials in the Twilio base URL and the alert webhook's
/// path; what is not secret (hosts, other query keys) still shows.
#[tokio::test]
async fn config_redacts_every_secret_bearing_url_and_token() {
    let o = output(
        drover(&["config"])
            .env(
                "DROVER_STORE__URL",
                "postgres://drover:p@ss%40w0rd@127.0.0.1/drover?password=qs3cret&sslmode=disable",
            )
            .env(
                "DROVER_BROKER__URL",
                "amqp://guest:br0ker%40pw@127.0.0.1:5672/%2f",
            )
            .env(
                "DROVER_PROVIDER__TWILIO__BASE_URL",
                "https://ACuser:tw1l10pw@127.0.0.1:9443",
            )
            .env(
                "DROVER_PROVIDER__WEBHOOK__URL",
                "http://127.0.0.1:9/hook?api_key=wh00kkey&Signature=s1gval&region=eu",
            )
            .env(
                "DROVER_ALERTS__WEBHOOK_URL",
                "https://127.0.0.1:9/services/T000/B000/alertp4thtoken",
            )
            .env("DROVER_API__TOKEN", "ap1t0ken")
            .env("DROVER_ADMIN__TOKEN", "adm1nt0ken")
            .env("DROVER_PROVIDER__TWILIO__AUTH_TOKEN", "tw1l10auth")
            .env("DROVER_PROVIDER__WEBHOOK__BEARER_TOKEN", "b3arer"),
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for secret in [
        "p@ss",
        "w0rd",
        "qs3cret",
        "br0ker",
        "tw1l10pw",
        "wh00kkey",
        "s1gval",
        "alertp4th",
        "ap1t0ken",
        "adm1nt0ken",
        "tw1l10auth",
        "b3arer",
    ] {
        assert!(!out.contains(secret), "`{secret}` printed:\n{out}");
    }
    for shown in [
        "postgres://drover:REDACTED@127.0.0.1/drover",
        "sslmode=disable",
        "amqp://guest:REDACTED@127.0.0.1:5672/%2f",
        "https://ACuser:REDACTED@127.0.0.1:9443",
        "region=eu",
        "https://127.0.0.1:9/REDACTED",
    ] {
        assert!(out.contains(shown), "`{shown}` missing:\n{out}");
    }
}

/// A non-loopback `http.addr` without `api.token`: exit 2 and one line naming both keys,
/// before anything listens (only the refusal is observed; nothing talks to 0.0.0.0).
#[tokio::test]
async fn serve_on_a_non_loopback_address_without_api_token_exits_2() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = output(drover(&["serve"]).env("DROVER_HTTP__ADDR", format!("0.0.0.0:{port}"))).await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let line = one_error_line(&o);
    assert!(
        line.contains("http.addr") && line.contains("api.token"),
        "{line}"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

/// A failed alert POST is logged naming the webhook by scheme, host and port only: its path
/// token and query secrets stay out of the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_alert_post_logs_the_webhook_origin_only() {
    use tokio::io::AsyncBufReadExt;
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (http_port, dead_port) = (free(), free());
    let db = std::env::temp_dir().join(format!("drover-cli-{}.db", uuid::Uuid::new_v4().simple()));
    let mut child = drover(&["serve"])
        .env("DROVER_HTTP__ADDR", format!("127.0.0.1:{http_port}"))
        .env(
            "DROVER_STORE__URL",
            format!("sqlite://{}?mode=rwc", db.display()),
        )
        .env("DROVER_LOG__FORMAT", "json")
        .env(
            "DROVER_ALERTS__WEBHOOK_URL",
            format!("http://127.0.0.1:{dead_port}/hooks/alertp4thtoken?token=qs3cret"),
        )
        .env("DROVER_ALERTS__RETRIES", "0")
        .env("DROVER_PROVIDER__SIMULATED__TRANSIENT_FAILURE_RATE", "0")
        .env("DROVER_PROVIDER__SIMULATED__PERMANENT_FAILURE_RATE", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("drover starts");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{http_port}");
    let found = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        // Up: then one message, which fails permanently and raises a dead-letter alert.
        loop {
            if client.get(format!("{base}/livez")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let r = client
            .post(format!("{base}/messages"))
            .header("content-type", "application/json")
            .body(r#"{"to":"+15550007777","body":"never arrives"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let mut seen = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("alert not delivered to the webhook") {
                return (line, seen);
            }
            seen.push(line);
        }
        panic!("drover's stderr ended: {seen:#?}");
    })
    .await
    .expect("no failed-alert log line within 60 s");
    let (line, seen) = found;
    let _ = child.kill().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    assert!(
        line.contains(&format!("http://127.0.0.1:{dead_port}")),
        "{line}"
    );
    for l in seen.iter().chain([&line]) {
        assert!(
            !l.contains("alertp4th") && !l.contains("qs3cret"),
            "a secret in the log: {l}"
        );
    }
}

/// Mistakes in the provider's or the broker's settings are configuration errors: exit 2 with
/// the key, before any startup check (they used to exit 3, "provider unavailable at start").
#[tokio::test]
async fn dependency_settings_mistakes_exit_2_naming_the_key() {
    let cases: [(&[(&str, &str)], &str); 3] = [
        (
            &[("DROVER_PROVIDER__SIMULATED__PERMANENT_FAILURE_RATE", "1.0")],
            "provider.simulated",
        ),
        (
            &[
                ("DROVER_PROVIDER__KIND", "twilio"),
                ("DROVER_PROVIDER__TWILIO__FROM", "+15550000000"),
            ],
            "provider.twilio.account_sid",
        ),
        (&[("DROVER_BROKER__URL", "http://broker")], "broker.url"),
    ];
    for (env, key) in cases {
        let mut cmd = drover(&["serve"]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let o = output(&mut cmd).await;
        assert_eq!(o.status.code(), Some(2), "{key}: {}", stderr(&o));
        let line = one_error_line(&o);
        assert!(line.contains(key), "{key}: {line}");
        assert!(!line.contains("unavailable"), "{key}: {line}");
    }
}

/// Without the startup check, a broker that refuses connections stops the boot: exit 3, one
/// line saying what failed, not ractor's "Actor panicked during startup" chain.
#[tokio::test]
async fn a_refused_broker_without_the_startup_check_exits_3_with_one_plain_line() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let o = output(
        drover(&["serve"])
            .env("DROVER_STARTUP__CHECK", "false")
            .env("DROVER_STORE__URL", "sqlite::memory:")
            .env("DROVER_HTTP__ADDR", "127.0.0.1:0")
            .env("DROVER_LOG__LEVEL", "error")
            .env(
                "DROVER_BROKER__URL",
                format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            )
            .env("DROVER_BROKER__CONNECT_TIMEOUT_MS", "500")
            .env("DROVER_SUPERVISION__BACKOFF__MAX_RETRIES", "0"),
    )
    .await;
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    // The logs (JSON) come first; the reason is the last line.
    let err = stderr(&o);
    let line = err.lines().last().unwrap_or_default();
    assert!(line.starts_with("drover: "), "{err}");
    assert!(!line.contains("panicked"), "{line}");
    assert!(line.contains("could not connect to the broker"), "{line}");
}
