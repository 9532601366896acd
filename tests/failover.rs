//! Provider failover end to end: drover (in-process) on RabbitMQ and PostgreSQL with a chain of
//! two Twilio-compatible mock providers on loopback, `primary` then `backup`.
//!
//! * The primary answers 503 for a while mid-load: its circuit opens, the backup sends, none is
//!   lost and none is accepted by both; the primary recovers, a probe closes its circuit and
//!   traffic returns to it after `failover.revert_after_ms`; `provider_failover` alerts both
//!   ways; a permanent refusal is never sent through the backup. The outage lasts
//!   `DROVER_FAILOVER_OUTAGE_MS` (3 s by default; the 30 s run sets it) and the test
//!   prints each provider's sends, the longest gap between two acceptances, and the
//!   duplicates.
//! * A message whose attempt on the primary was accepted but answered too late (ambiguous) is
//!   looked up at the primary before any other send: found, it is not sent again anywhere;
//!   while the primary can neither send nor answer, the message waits for it
//!   (`ambiguous_policy = "wait"`) and the backup never sends it.
//! * The primary's actor killed mid-load: the backup serves meanwhile.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use drover_actors::provider::{ProviderConfig, ProviderKind};
use drover_actors::store::MessageStatus;
use support::{
    ACCOUNT_SID, AUTH_TOKEN, Faults, MockProvider, Rule, SENDER, TestEnv, alert_of, count,
    recipient, terminal, wait_counts, wait_for, wait_status, webhook,
};
use uuid::Uuid;

const LIMIT: Duration = Duration::from_secs(120);

/// A chain: the env's mock as `primary`, `backup` as the fallback.
fn chain(env: &mut TestEnv, backup: &MockProvider) {
    let c = &mut env.config;
    c.provider.name = "primary".into();
    c.provider.circuit.failure_threshold = 3;
    c.provider.circuit.open_ms = 500;
    let mut b = ProviderConfig {
        name: "backup".into(),
        kind: ProviderKind::Twilio,
        timeout_ms: c.provider.timeout_ms,
        ..ProviderConfig::default()
    };
    b.twilio.base_url = backup.base_url();
    b.twilio.account_sid = ACCOUNT_SID.into();
    b.twilio.auth_token = AUTH_TOKEN.into();
    b.twilio.from = Some(SENDER.into());
    b.circuit = c.provider.circuit;
    c.provider.fallbacks = vec![b];
    c.failover.revert_after_ms = 1_500;
}

/// Accepted (201) calls per message id at one mock.
fn accepted(p: &MockProvider) -> HashMap<String, usize> {
    p.tally()
        .into_iter()
        .filter(|(_, (_, ok))| *ok > 0)
        .map(|(id, (_, ok))| (id, ok))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_backup_sends_while_the_primary_is_down_and_traffic_returns() {
    let outage_ms: u64 = std::env::var("DROVER_FAILOVER_OUTAGE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000);
    let (url, mut alerts) = webhook().await;
    let backup = MockProvider::start().await;
    let mut env = TestEnv::new().await;
    chain(&mut env, &backup);
    env.config.alerts.webhook_url = Some(url);
    env.config.alerts.retry_base_ms = 20;
    // A recipient the primary refuses for good: never the backup's.
    let refused = recipient(999_999);
    env.provider
        .set_for_recipient(&refused, Rule::reject(21211));
    let app = env.start().await;
    let store = env.store().await;
    let publisher = env.publisher().await;

    // 50 messages a second: 1 s before the outage, the outage, 4 s after (bounded in count).
    let every = Duration::from_millis(20);
    let total = ((1_000 + outage_ms + 4_000) / 20) as usize;
    let mut ids = Vec::with_capacity(total);
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(every);
    let (mut down, mut up) = (false, false);
    for i in 0..total {
        tick.tick().await;
        let at = started.elapsed().as_millis() as u64;
        if !down && at >= 1_000 {
            env.provider.set_default(Rule::always_unavailable());
            down = true;
        }
        if !up && at >= 1_000 + outage_ms {
            env.provider.set_default(Rule::accept());
            up = true;
        }
        let id = Uuid::new_v4();
        publisher
            .publish_sms(id, &recipient(i), "failover", &format!("corr-fo-{i}"))
            .await;
        ids.push(id);
    }
    if !up {
        env.provider.set_default(Rule::accept());
    }
    let bad = Uuid::new_v4();
    publisher
        .publish_sms(bad, &refused, "never twice", "corr-fo-refused")
        .await;
    let n = ids.len() as i64 + 1;
    let counts = wait_counts(&store, "every message terminal", LIMIT, |c| {
        terminal(c) >= n
    })
    .await;
    assert_eq!(count(&counts, MessageStatus::Sent), n - 1, "{counts:?}");
    assert_eq!(count(&counts, MessageStatus::Failed), 1, "{counts:?}");

    let (a, b) = (accepted(&env.provider), accepted(&backup));
    let twice: Vec<&String> = a
        .keys()
        .filter(|id| b.contains_key(*id))
        .chain(
            a.iter()
                .chain(b.iter())
                .filter(|(_, n)| **n > 1)
                .map(|(id, _)| id),
        )
        .collect();
    // The longest pause between two acceptances, across both providers.
    let mut times: Vec<tokio::time::Instant> = env
        .provider
        .calls()
        .into_iter()
        .chain(backup.calls())
        .filter(|c| c.status == 201)
        .map(|c| c.at)
        .collect();
    times.sort();
    let gap = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    println!(
        "[failover] {} messages, primary down {outage_ms} ms: primary sent {}, backup sent {}, \
         longest gap between two sends {} ms, accepted by both or twice: {}",
        ids.len(),
        a.len(),
        b.len(),
        gap.as_millis(),
        twice.len()
    );
    assert!(twice.is_empty(), "sent twice: {twice:?}");
    assert_eq!(
        a.len() + b.len(),
        ids.len(),
        "each sent once, by one of them"
    );
    assert!(b.len() > 10, "the backup took over: {}", b.len());
    assert!(
        !b.contains_key(&bad.to_string()),
        "a permanent refusal never fails over"
    );
    assert!(backup.calls_for(bad).is_empty());
    // Each attempt says which provider made it.
    let by_backup: Uuid = b.keys().next().unwrap().parse().unwrap();
    let rec = store.get(by_backup).await.unwrap().unwrap();
    let last_try = rec.history.last().unwrap();
    assert_eq!(
        last_try.provider.as_deref(),
        Some("backup"),
        "{:?}",
        rec.history
    );
    // Traffic went back: the last messages were sent by the primary.
    let last = ids.last().unwrap().to_string();
    assert!(
        a.contains_key(&last),
        "the last message went through the primary"
    );

    let away = alert_of(&mut alerts, "provider_failover", LIMIT).await;
    assert_eq!(
        (
            away["details"]["from"].as_str(),
            away["details"]["to"].as_str()
        ),
        (Some("primary"), Some("backup")),
        "{away}"
    );
    let back = alert_of(&mut alerts, "provider_failover", LIMIT).await;
    assert_eq!(back["details"]["to"], "primary", "{back}");

    // Per-provider series.
    let metrics = reqwest::get(format!("http://{}/metrics", app.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for provider in ["primary", "backup"] {
        assert!(
            metrics.contains(&format!("drover_attempts_total{{provider=\"{provider}\"}}")),
            "{provider}: {}",
            metrics
                .lines()
                .filter(|l| l.contains("attempts"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    app.shutdown().await.expect("clean shutdown");
    publisher.close().await;
    store.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ambiguous_attempt_is_found_at_the_primary_and_never_sent_by_the_backup() {
    let backup = MockProvider::start().await;
    let mut env = TestEnv::new().await;
    chain(&mut env, &backup);
    env.config.provider.timeout_ms = 500;
    env.config.provider.fallbacks[0].timeout_ms = 500;
    env.config.failover.ambiguous_wait_ms = 600_000;
    // Every acceptance of the primary answered after drover's timeout: ambiguous.
    env.provider.set_faults(Faults {
        p_slow: 10_000,
        slow_ms: 900,
        ..Faults::default()
    });
    let app = env.start().await;
    let store = env.store().await;
    let publisher = env.publisher().await;

    // Found: the primary has it, nobody sends it again.
    let found = Uuid::new_v4();
    publisher
        .publish_sms(found, &recipient(1), "found", "corr-amb-found")
        .await;
    let rec = wait_status(&store, found, MessageStatus::Sent, LIMIT).await;
    assert!(
        rec.history
            .iter()
            .any(|a| a.error_class.as_deref() == Some("reconciled")),
        "{:?}",
        rec.history
    );
    assert_eq!(accepted(&env.provider).get(&found.to_string()), Some(&1));
    assert!(
        backup.calls_for(found).is_empty(),
        "the backup never sent it"
    );

    // The primary can neither answer lookups nor send: the message waits for it.
    let waits = Uuid::new_v4();
    env.provider.fail_lookups(true);
    publisher
        .publish_sms(waits, &recipient(2), "waits", "corr-amb-waits")
        .await;
    // Its first call reached the primary (which answers only after drover's timeout): from now
    // on the primary refuses every send.
    wait_for("the first call at the primary", LIMIT, || async {
        (!env.provider.calls_for(waits).is_empty())
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
    env.provider.set_default(Rule::always_unavailable());
    env.provider.set_faults(Faults::default());
    // Long enough for several retries (50 ms base) and the primary's circuit to open.
    wait_for("the primary's circuit to open", LIMIT, || async {
        let body = reqwest::get(format!("http://{}/metrics", app.addr))
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        body.lines()
            .find(|l| l.starts_with("drover_provider_circuit_state{provider=\"primary\""))
            .filter(|l| !l.ends_with(" 0"))
            .map(|_| ())
            .ok_or_else(|| "closed".to_string())
    })
    .await;
    let rec = store.get(waits).await.unwrap().unwrap();
    assert_ne!(rec.status, MessageStatus::Sent, "{:?}", rec.history);
    assert!(
        backup.calls_for(waits).is_empty(),
        "the backup must not send it"
    );
    // The primary recovers and answers: found there, sent once in all.
    env.provider.fail_lookups(false);
    env.provider.set_default(Rule::accept());
    let rec = wait_status(&store, waits, MessageStatus::Sent, LIMIT).await;
    assert_eq!(
        accepted(&env.provider).get(&waits.to_string()),
        Some(&1),
        "{:?}",
        rec.history
    );
    assert!(backup.calls_for(waits).is_empty());

    // Kill the primary's actor: the backup serves while it restarts.
    app.tree.lookup("root/providers/primary").unwrap().kill();
    let during = Uuid::new_v4();
    publisher
        .publish_sms(during, &recipient(3), "during", "corr-amb-kill")
        .await;
    wait_status(&store, during, MessageStatus::Sent, LIMIT).await;

    app.shutdown().await.expect("clean shutdown");
    publisher.close().await;
    store.close().await;
    env.cleanup().await;
}
