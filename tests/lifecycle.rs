//! The process lifecycle, on the real binary: the startup system check's exit code, and
//! SIGTERM during load losing nothing.

mod support;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use drover_actors::store::MessageStatus;
use support::{TestEnv, count, recipient, wait_counts};
use uuid::Uuid;

fn drover() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_drover"));
    // Only what the test sets: nothing from the caller's DROVER_* environment.
    for (k, _) in std::env::vars() {
        if k.starts_with("DROVER_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("DROVER_LOG__FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_check_exits_3_naming_the_broker_when_rabbitmq_is_down() {
    let dir = std::env::temp_dir().join(format!("drover-lifecycle-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        drover()
            .current_dir(&dir)
            .env("DROVER_HTTP__ADDR", "127.0.0.1:0")
            .env("DROVER_BROKER__URL", "amqp://guest:guest@127.0.0.1:1/%2f")
            .env("DROVER_BROKER__CONNECT_TIMEOUT_MS", "1000")
            .env(
                "DROVER_STORE__URL",
                format!("sqlite://{}/drover.db?mode=rwc", dir.display()),
            )
            .output(),
    )
    .await
    .expect("drover must give up within its startup deadline")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "exit code 3 = dependency unavailable at start; stderr:\n{stderr}"
    );
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("drover: broker unavailable at start"),
        "one clear line naming the broker: {last}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM while messages are flowing: drover stops consuming, lets in-flight messages finish
/// (their outcome committed and acked), puts the rest back in the queue, stops the tree and
/// exits 0. A second instance then delivers what is left: every message ends sent, none
/// missing, each reaching the provider once (at most one more per attempt recorded as
/// interrupted/ambiguous).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_load_exits_0_and_loses_nothing() {
    let mut env = TestEnv::new().await;
    // Slow enough that the load outlasts the stop on a quiet machine: at prefetch 32 and
    // 200-400 ms a call, 400 messages take about 4 s, and the SIGTERM follows the first 40
    // (about 0.4 s in). At 5-20 ms all 400 were sometimes sent before the signal landed.
    env.provider.set_latency(200, 400);
    env.config.startup.check = true;
    let dir = std::env::temp_dir().join(format!("drover-lifecycle-{}", env.id));
    std::fs::create_dir_all(&dir).unwrap();
    let config_file = dir.join("drover.toml");
    std::fs::write(&config_file, toml::to_string(&env.config).unwrap()).unwrap();

    // Its logs go to a file: a pipe nobody reads would fill up and block it.
    let log = std::fs::File::create(dir.join("drover.log")).unwrap();
    let mut child = drover()
        .arg("--config")
        .arg(&config_file)
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let publisher = env.publisher().await;
    const N: usize = 400;
    let mut ids = Vec::with_capacity(N);
    for i in 0..N {
        let id = Uuid::new_v4();
        publisher
            .publish_sms(
                id,
                &recipient(i),
                &format!("load {i}"),
                &format!("corr-{i}"),
            )
            .await;
        ids.push(id);
    }
    let store = env.store().await;
    // Mid-load: some sent, not all.
    wait_counts(
        &store,
        "a tenth of the load sent",
        Duration::from_secs(60),
        |c| count(c, MessageStatus::Sent) >= (N / 10) as i64,
    )
    .await;
    let pid = child.id().expect("running").to_string();
    let kill = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("drover must stop within its grace period")
        .unwrap();
    let stderr = std::fs::read_to_string(dir.join("drover.log")).unwrap_or_default();
    assert_eq!(
        status.code(),
        Some(0),
        "graceful shutdown exits 0; stderr tail:\n{}",
        tail(&stderr)
    );
    let sent_at_stop = count(
        &store.counts_by_status().await.unwrap(),
        MessageStatus::Sent,
    );
    assert!(
        sent_at_stop < N as i64,
        "the stop came mid-load ({sent_at_stop}/{N} sent)"
    );
    // Nothing is left `sending`: in-flight messages finished or went back to the queue.
    let counts = store.counts_by_status().await.unwrap();
    assert_eq!(count(&counts, MessageStatus::Sending), 0, "{counts:?}");

    // A second instance delivers the rest.
    let app = env.start().await;
    wait_counts(
        &store,
        "every message sent",
        Duration::from_secs(120),
        |c| count(c, MessageStatus::Sent) == N as i64,
    )
    .await;
    let tally = env.provider.tally();
    let mut interrupted = 0usize;
    for id in &ids {
        let rec = store
            .get(*id)
            .await
            .unwrap()
            .expect("every published message is recorded");
        assert_eq!(rec.status, MessageStatus::Sent);
        interrupted += rec
            .history
            .iter()
            .filter(|a| a.error_class.as_deref() == Some("interrupted"))
            .count();
    }
    let calls: HashMap<String, usize> = tally
        .iter()
        .map(|(k, (calls, _))| (k.clone(), *calls))
        .collect();
    let duplicates: usize = ids
        .iter()
        .map(|id| {
            calls
                .get(&id.to_string())
                .copied()
                .unwrap_or(0)
                .saturating_sub(1)
        })
        .sum();
    println!(
        "sigterm mid-load: {sent_at_stop}/{N} sent at the stop, duplicates {duplicates}, interrupted attempts {interrupted}"
    );
    assert!(
        ids.iter()
            .all(|id| calls.get(&id.to_string()).copied().unwrap_or(0) >= 1)
    );
    assert!(
        duplicates <= interrupted,
        "a duplicate needs an interrupted attempt"
    );
    app.shutdown().await.unwrap();
    env.assert_work_queue_empty_after_shutdown().await;
    env.cleanup().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
