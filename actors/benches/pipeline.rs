//! End-to-end pipeline benchmark: drover's supervised delivery pipeline against a plain,
//! hand-written tokio consumer doing the same work, on real RabbitMQ and PostgreSQL.
//!
//! Run with `cargo bench -p drover-actors --bench pipeline` (harness = false; under
//! `cargo test --all-targets` the binary runs but returns at once without `--bench`).
//!
//! Needs RabbitMQ at `DROVER_TEST_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`)
//! and PostgreSQL at `DROVER_TEST_DATABASE_URL` (default
//! `postgres://drover:drover@127.0.0.1:5432/drover`). Every phase uses its own exchange and
//! queues (`drover-bench.<tag>.<phase>.*`) and its own schema (`bench_<tag>_<phase>`), deleted
//! at the end of the phase (`DROVER_BENCH_KEEP=1` keeps them).
//!
//! # Phases (each measured the same way, in one run)
//!
//! * **drover**: the root supervisor with `pipeline_children` (store on PostgreSQL with a fresh
//!   schema, provider = the Twilio client, broker subtree on RabbitMQ), built as
//!   `drover::start` builds it, with the default `[supervision]`, `[delivery]`, `[scheduler]`
//!   and `[store]` group commit settings. What `drover::start` adds around the tree is left
//!   out: the startup check, the HTTP endpoint, the queue-depth sampler, the Prometheus
//!   recorder (the pipeline's metrics handles are no-ops) and, unless `DROVER_BENCH_LOG=json`,
//!   the log subscriber.
//! * **plain**: a hand-written consumer: lapin consumer with the same prefetch, one tokio task
//!   per delivery (so at most `prefetch` in flight), parse with `message::parse`, `INSERT` a row
//!   (autocommit), HTTP POST of the same Twilio form to the same kind of local provider,
//!   `UPDATE` the row to `sent` (autocommit), ack. A sqlx pool of the same size as drover's.
//! * **tasks** (run by default): the plain consumer's shape,
//!   but each task calls drover's own `Store::begin_attempt` / `Provider::send` /
//!   `Store::record_outcome` on a store set up as the store worker sets it up (group commit
//!   included): the same SQL and HTTP as drover without the actors, to split drover's cost
//!   into "its SQL" and "its actors": the summary's drover/tasks ratio is the cost of
//!   supervision, beside drover/plain.
//! * **batched** (opt-in): no actors either; deliveries are grouped (up to
//!   `DROVER_BENCH_BATCH`, default prefetch / 2, or what arrives within 1 ms) and each group
//!   goes through drover's `Store::begin_attempts` (one transaction), concurrent
//!   `Provider::send`s and `Store::record_outcomes` (one transaction): what group commit
//!   would give drover.
//!
//! In each phase a local axum server on 127.0.0.1:0 plays Twilio (`201 {"sid": ...}` at
//! once), the work queue is consumed by the system under test, and the harness publishes N
//! messages (`DROVER_BENCH_MESSAGES`, default 20,000) through its own connection with
//! publisher confirms (up to [`PUBLISH_WINDOW`] unconfirmed), as fast as it can, while the
//! consumer runs.
//!
//! # Measures
//!
//! * **Throughput** = N / (first publish → the moment the harness sees N rows `sent` in the
//!   database). The harness waits until its provider has seen all N ids (in memory, free),
//!   then polls `count(*) ... status = 'sent'` every [`DB_POLL`]: the end is the return of
//!   the first poll that counts N, an upper bound off by at most one poll.
//! * **Latency publish → sent** = `updated_at` of the message's `sent` row (Unix ms from the
//!   same `Clock` the harness stamps publishes with) − its publish time. Both implementations
//!   set `updated_at` from that clock right after the provider answered, just before the
//!   transaction that records `sent`, so it excludes that last commit and the ack; its
//!   resolution is 1 ms. Also shown: publish → the provider received the request (harness
//!   clock, µs), which needs nothing from the system under test.
//! * **Memory**: before each phase the process's peak RSS is reset (`5` into
//!   `/proc/self/clear_refs`), so `VmHWM` after the phase is that phase's peak; the delta is
//!   against the RSS at the phase's start.
//! * **CPU** per phase: this process by thread (`sut` = the system under test's runtime,
//!   `harness` = publisher, provider server, polling, `lapin-io-loop` = lapin's own I/O
//!   threads), PostgreSQL and RabbitMQ processes, other processes, and the whole machine's busy
//!   share (from `/proc`). A phase where other processes took more than 10% of the machine is
//!   flagged. Before each phase the harness runs `CHECKPOINT` and waits (at most
//!   `DROVER_BENCH_QUIET_WAIT_S`, default 60) for the machine to be under 15% busy.
//! * **PostgreSQL counters** per message (`pg_stat_database` of the database, `pg_stat_wal`):
//!   commits, rows inserted / updated, WAL records, bytes and fsyncs. They count every client
//!   of the server.
//!
//! Runtimes: the system under test runs on a multi-thread tokio runtime with 2 workers (what
//! drover gets on this 2-core machine); the harness on its own 1-worker runtime, the same for
//! every phase.
//!
//! Environment: `DROVER_BENCH_MESSAGES` (20000), `DROVER_BENCH_PREFETCH` (256, drover's
//! default), `DROVER_BENCH_MAX_CONNECTIONS` (8, drover's default pool size, used by every
//! phase), `DROVER_BENCH_PHASES` (`drover,plain,tasks`, in that order; also `batched`),
//! `DROVER_BENCH_ROUNDS` (3: the phases are run this many times, interleaved, and the summary
//! shows medians with per-round figures; a FAIL verdict exits 1), `DROVER_BENCH_LOG` (`off`; `json` installs drover's production log format,
//! JSON lines at `info`, written to `/dev/null`), `DROVER_BENCH_GROUP_COMMIT` and
//! `DROVER_BENCH_GROUP_IN_FLIGHT` (the store's `group_commit_max_batch` / `_in_flight`,
//! defaults as drover's; `0` = no group commit), `DROVER_BENCH_BATCH`,
//! `DROVER_BENCH_QUIET_WAIT_S`, `DROVER_BENCH_KEEP`, `DROVER_BENCH_RATE` (publish at this
//! many messages a second instead of as fast as possible: with a rate below what both sides
//! sustain, the latencies show service time instead of time spent in the backlog),
//! `DROVER_BENCH_PACED_RATE` (1000; `0` = off) and `DROVER_BENCH_PACED_MESSAGES` (5000): unless
//! the whole run is paced, each round ends with drover and plain again at that rate, for the
//! paced latency target. `DROVER_BENCH_EMBEDDED` (1; `0` = off): each round also runs the
//! embedded default against a plain loop on the same parts (see `pipeline/embedded.rs`).
//!
//! # Targets
//!
//! Verdict rows (a FAIL exits 1): throughput drover/plain >= 2.0 (median of the rounds), CPU
//! per message <= 0.5x plain's, paced publish -> sent p99 <= 1.5x plain's and under 50 ms,
//! drover's peak RSS over its start <= +49 MiB. The last line states them for a script:
//! `pipeline: drover/plain throughput ratio X.XX (median of N rounds); cpu/msg ratio Y.YY;
//! paced p99 ratio Z.ZZ`.

#[path = "common/table.rs"]
mod table;
use table::{Row, any_failed, print_table, row, verdict};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use drover_actors::broker::{Broker, BrokerConfig, MemoryBroker};
use drover_actors::clock::Clock;
use drover_actors::message::{Envelope, MessageConfig, parse};
use drover_actors::pipeline::{Pipeline, PipelineConfig, pipeline_children};
use drover_actors::provider::{Provider, ProviderConfig, ProviderKind, SendOutcome, TwilioConfig};
use drover_actors::store::{Admission, AttemptOutcome, Store, StoreConfig};
use drover_actors::supervisor::config::SupervisionConfig;
use drover_actors::{
    Strategy, Supervisor, SupervisorArgs, SupervisorMessage, SupervisorSpec, Tree,
};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use ractor::{Actor, ActorRef};
use sqlx::AssertSqlSafe;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use uuid::Uuid;

const DEFAULT_MESSAGES: usize = 20_000;
const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const DEFAULT_DATABASE_URL: &str = "postgres://drover:drover@127.0.0.1:5432/drover";

/// A phase (from the first publish to the last `sent` row) is aborted past this.
const PHASE_LIMIT: Duration = Duration::from_secs(120);
/// Setting up or tearing down a phase (connect, readiness, shutdown) is aborted past this.
const STEP_LIMIT: Duration = Duration::from_secs(30);
/// Unconfirmed publishes the harness keeps in flight.
const PUBLISH_WINDOW: usize = 1_000;
/// How often the harness looks at its provider's counter (in memory).
const PROVIDER_POLL: Duration = Duration::from_millis(2);
/// How often the harness counts `sent` rows once the provider has seen every message.
const DB_POLL: Duration = Duration::from_millis(5);

/// Issue 12's targets: drover at least twice the plain consumer's throughput ...
const TARGET_RATIO: f64 = 2.0;
/// ... at most half its CPU per message (runtime + PostgreSQL backends) ...
const TARGET_CPU_RATIO: f64 = 0.5;
/// ... paced, a publish -> sent p99 at most 1.5x plain's and under 50 ms ...
const TARGET_PACED_P99_RATIO: f64 = 1.5;
const TARGET_PACED_P99_MS: f64 = 50.0;
/// ... and a peak RSS over its start no higher than before the work (MiB, first round).
const TARGET_RSS_MIB: f64 = 49.0;

const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
const AUTH_TOKEN: &str = "bench-token";
const FROM: &str = "+15550000000";
const TO: &str = "+15551234567";
const IDEMPOTENCY_HEADER: &str = "I-Twilio-Idempotency-Token";
const CORRELATION_HEADER: &str = "X-Correlation-Id";
/// Linux clock ticks per second (`getconf CLK_TCK`).
const TICKS_PER_SEC: f64 = 100.0;

type BenchResult<T> = Result<T, String>;

fn err(what: &str) -> impl Fn(&dyn std::fmt::Display) -> String + '_ {
    move |e| format!("{what}: {e}")
}

#[path = "pipeline/drover.rs"]
mod drover;
#[path = "pipeline/embedded.rs"]
mod embedded;
#[path = "pipeline/marks.rs"]
mod marks;
#[path = "pipeline/phase.rs"]
mod phase;
#[path = "pipeline/plain.rs"]
mod plain;
#[path = "pipeline/procfs.rs"]
mod procfs;
#[path = "pipeline/provider.rs"]
mod provider;
#[path = "pipeline/publisher.rs"]
mod publisher;
#[path = "pipeline/settings.rs"]
mod settings;
#[path = "pipeline/stats.rs"]
mod stats;
use drover::*;
use embedded::*;
use marks::*;
use phase::*;
use plain::*;
use procfs::*;
use provider::*;
use publisher::*;
use settings::*;
use stats::*;

async fn run(s: Settings, sut_rt: Handle) -> BenchResult<(Vec<Row>, Option<String>)> {
    let tag = Uuid::new_v4().simple().to_string()[..8].to_string();
    let admin = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&s.database_url)
        .await
        .map_err(|e| {
            format!(
                "PostgreSQL at DROVER_TEST_DATABASE_URL is not reachable: {e} \
                 (this bench needs PostgreSQL and RabbitMQ; see the module docs)"
            )
        })?;
    let mut reports: Vec<PhaseReport> = Vec::new();
    let mut embedded: Vec<EmbeddedReport> = Vec::new();
    for round in 1..=s.rounds {
        if s.rounds > 1 {
            println!();
            println!("######## round {round} of {}", s.rounds);
        }
        for kind in &s.phases {
            reports.push(run_phase(*kind, &s, &tag, &sut_rt, &admin).await?);
        }
        if let Some((rate, messages)) = s.paced {
            let paced = Settings {
                rate: Some(rate),
                messages,
                ..s.clone()
            };
            for kind in [Kind::Drover, Kind::Plain] {
                if s.phases.contains(&kind) {
                    println!();
                    println!("-- paced pass: {messages} messages at {rate} msgs/s --");
                    let mut report = run_phase(kind, &paced, &tag, &sut_rt, &admin).await?;
                    report.paced = true;
                    reports.push(report);
                }
            }
        }
        if s.embedded {
            for kind in [EmbeddedKind::Drover, EmbeddedKind::Plain] {
                embedded.push(run_embedded(kind, &s, &tag, &sut_rt).await?);
            }
        }
    }
    admin.close().await;
    let (mut rows, line) = summary(&s, &reports);
    rows.extend(embedded_rows(&embedded));
    Ok((rows, line))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The summary table and, when drover and plain both ran at full speed, the line that states
/// the targets' figures.
fn summary(s: &Settings, reports: &[PhaseReport]) -> (Vec<Row>, Option<String>) {
    let mut final_line = None;
    let mut kinds: Vec<Kind> = Vec::new();
    for k in &s.phases {
        if !kinds.contains(k) {
            kinds.push(*k);
        }
    }
    let of = |k: Kind| reports.iter().filter(move |r| r.kind == k && !r.paced);
    let paced_of = |k: Kind| reports.iter().filter(move |r| r.kind == k && r.paced);
    let cpu_per_msg = |r: &PhaseReport| {
        let sut = r.cpu.threads.get("sut").copied().unwrap_or(0.0);
        (sut + r.cpu.postgres_mine) * 1e6 / r.n as f64
    };
    let throughput = |k: Kind| median(of(k).map(|r| r.throughput).collect());
    let rounds_note = |values: Vec<f64>, unit: &str| {
        if values.len() > 1 {
            let all: Vec<String> = values.iter().map(|v| format!("{v:.0}")).collect();
            format!(" (median of {}: {} {unit})", values.len(), all.join(", "))
        } else {
            String::new()
        }
    };
    let mut rows = Vec::new();
    for k in &kinds {
        let name = k.name();
        let tps: Vec<f64> = of(*k).map(|r| r.throughput).collect();
        rows.push(row(
            format!("{name} throughput"),
            format!("{:.0} msgs/s{}", throughput(*k), rounds_note(tps, "msgs/s")),
            "",
            "",
        ));
        rows.push(row(
            format!("{name} publish->sent p50 / p99"),
            format!(
                "{:.1} / {:.1} ms",
                median(of(*k).map(|r| r.sent_latency.p50).collect()),
                median(of(*k).map(|r| r.sent_latency.p99).collect())
            ),
            "",
            "",
        ));
        // Later rounds reuse memory the allocator kept: the first run of a phase is the one
        // that shows what it needs.
        if let Some(first) = of(*k).next() {
            rows.push(row(
                format!("{name} peak RSS in phase / over its start"),
                format!(
                    "{:.1} / +{:.1} MiB{}",
                    mib(first.rss_peak_kb),
                    mib(first.rss_peak_kb.saturating_sub(first.rss_start_kb)),
                    if s.rounds > 1 { " (round 1)" } else { "" }
                ),
                "",
                "",
            ));
        }
        rows.push(row(
            format!("{name} CPU per message (runtime + its PG backends)"),
            format!("{:.0} µs", median(of(*k).map(cpu_per_msg).collect())),
            "",
            "",
        ));
        let disturbed = of(*k)
            .filter(|r| r.cpu.other > 0.1 * r.elapsed.as_secs_f64() * r.cpu.cores)
            .count();
        if disturbed > 0 {
            rows.push(row(
                format!("{name} runs disturbed by other processes"),
                format!("{disturbed} of {}", of(*k).count()),
                "0",
                "WARN",
            ));
        }
    }
    let has = |k: Kind| kinds.contains(&k);
    let paced = s.rate.is_some();
    if has(Kind::Drover) && has(Kind::Plain) && paced {
        rows.push(row(
            "throughput ratio drover/plain",
            format!("{:.3}", throughput(Kind::Drover) / throughput(Kind::Plain)),
            "",
            "n/a: publishing was paced (DROVER_BENCH_RATE)",
        ));
    } else if has(Kind::Drover) && has(Kind::Plain) {
        let ratio = throughput(Kind::Drover) / throughput(Kind::Plain);
        let per_round: Vec<f64> = of(Kind::Drover)
            .zip(of(Kind::Plain))
            .map(|(d, p)| d.throughput / p.throughput)
            .collect();
        let note = if per_round.len() > 1 {
            let all: Vec<String> = per_round.iter().map(|v| format!("{v:.2}")).collect();
            format!(" (per round: {})", all.join(", "))
        } else {
            String::new()
        };
        rows.push(row(
            "throughput ratio drover/plain",
            format!("{ratio:.2}{note}"),
            &format!(">= {TARGET_RATIO:.1}"),
            verdict(ratio >= TARGET_RATIO),
        ));
        let cpu = |k: Kind| median(of(k).map(cpu_per_msg).collect());
        let cpu_ratio = cpu(Kind::Drover) / cpu(Kind::Plain);
        rows.push(row(
            "cpu/msg ratio drover/plain (runtime + PG backends)",
            format!(
                "{cpu_ratio:.2} ({:.0} / {:.0} µs)",
                cpu(Kind::Drover),
                cpu(Kind::Plain)
            ),
            &format!("<= {TARGET_CPU_RATIO:.1}"),
            verdict(cpu_ratio <= TARGET_CPU_RATIO),
        ));
        let mut line = format!(
            "pipeline: drover/plain throughput ratio {ratio:.2} (median of {} rounds); cpu/msg ratio {cpu_ratio:.2}",
            per_round.len()
        );
        let p99 = |k: Kind| median(paced_of(k).map(|r| r.sent_latency.p99).collect());
        if paced_of(Kind::Drover).next().is_some() && paced_of(Kind::Plain).next().is_some() {
            let (d, p) = (p99(Kind::Drover), p99(Kind::Plain));
            let per_round: Vec<String> = paced_of(Kind::Drover)
                .zip(paced_of(Kind::Plain))
                .map(|(d, p)| format!("{:.0}/{:.0}", d.sent_latency.p99, p.sent_latency.p99))
                .collect();
            let rate = s.paced.map_or(0.0, |(r, _)| r);
            rows.push(row(
                format!("paced {rate:.0} msgs/s publish->sent p99 drover / plain"),
                format!(
                    "{d:.1} / {p:.1} ms (per round: {} ms)",
                    per_round.join(", ")
                ),
                &format!("drover < {TARGET_PACED_P99_MS:.0} ms"),
                verdict(d < TARGET_PACED_P99_MS),
            ));
            let paced_ratio = d / p.max(1.0);
            rows.push(row(
                "paced p99 ratio drover/plain",
                format!("{paced_ratio:.2}"),
                &format!("<= {TARGET_PACED_P99_RATIO:.1}"),
                verdict(paced_ratio <= TARGET_PACED_P99_RATIO),
            ));
            line.push_str(&format!("; paced p99 ratio {paced_ratio:.2}"));
        }
        if let Some(first) = of(Kind::Drover).next() {
            let over = mib(first.rss_peak_kb.saturating_sub(first.rss_start_kb));
            rows.push(row(
                "drover peak RSS over its start (round 1)",
                format!("+{over:.1} MiB"),
                &format!("<= +{TARGET_RSS_MIB:.0} MiB"),
                verdict(over <= TARGET_RSS_MIB),
            ));
        }
        final_line = Some(line);
    }
    for (other, label) in [
        (Kind::Tasks, "drover/tasks (cost of the actors)"),
        (Kind::Batched, "batched/plain (group commit, no actors)"),
    ] {
        let base = if other == Kind::Tasks {
            Kind::Drover
        } else {
            Kind::Plain
        };
        if has(other) && has(base) {
            let (num, den) = if other == Kind::Tasks {
                (throughput(base), throughput(other))
            } else {
                (throughput(other), throughput(base))
            };
            rows.push(row(
                format!("throughput ratio {label}"),
                format!("{:.2}", num / den),
                "",
                "",
            ));
        }
    }
    (rows, final_line)
}

/// The embedded default against the plain loop on the same parts (measured, no target).
fn embedded_rows(reports: &[EmbeddedReport]) -> Vec<Row> {
    let of = |k: EmbeddedKind| reports.iter().filter(move |r| r.kind == k);
    let mut rows = Vec::new();
    for k in [EmbeddedKind::Drover, EmbeddedKind::Plain] {
        if of(k).next().is_none() {
            continue;
        }
        let tps: Vec<String> = of(k).map(|r| format!("{:.0}", r.throughput)).collect();
        rows.push(row(
            format!("{} throughput / CPU per message", k.name()),
            format!(
                "{:.0} msgs/s (rounds: {}) / {:.0} µs",
                median(of(k).map(|r| r.throughput).collect()),
                tps.join(", "),
                median(of(k).map(EmbeddedReport::cpu_per_msg_us).collect())
            ),
            "",
            "",
        ));
        if let Some(first) = of(k).next() {
            rows.push(row(
                format!("{} peak RSS over its start (round 1)", k.name()),
                format!(
                    "+{:.1} MiB",
                    mib(first.rss_peak_kb.saturating_sub(first.rss_start_kb))
                ),
                "",
                "",
            ));
        }
    }
    if of(EmbeddedKind::Drover).next().is_some() && of(EmbeddedKind::Plain).next().is_some() {
        let tp = |k| median(of(k).map(|r: &EmbeddedReport| r.throughput).collect());
        let cpu = |k| median(of(k).map(EmbeddedReport::cpu_per_msg_us).collect());
        rows.push(row(
            "embedded drover/plain throughput ratio; cpu/msg ratio",
            format!(
                "{:.2}; {:.2}",
                tp(EmbeddedKind::Drover) / tp(EmbeddedKind::Plain),
                cpu(EmbeddedKind::Drover) / cpu(EmbeddedKind::Plain)
            ),
            "",
            "",
        ));
    }
    rows
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` / `--all-targets` does not: there
    // the binary must only prove it builds, not need RabbitMQ and PostgreSQL.
    if !std::env::args().any(|a| a == "--bench") {
        println!("pipeline bench: skipped (not run by `cargo bench`; pass --bench to run it)");
        return;
    }
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            println!("pipeline bench: FAIL: {e}");
            std::process::exit(1);
        }
    };
    if settings.log_json {
        let devnull = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .expect("open /dev/null");
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_writer(std::sync::Mutex::new(devnull))
            .json()
            .flatten_event(true)
            .try_init();
    }
    let sut = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sut")
        .enable_all()
        .build()
        .expect("tokio runtime");
    let harness = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("harness")
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!(
        "drover-actors pipeline bench: {} messages, prefetch {}, pool {} connections per phase, store group commit {} (in flight {}), phases {}, logs {}, publishing {}; \
         system under test on tokio multi-thread with 2 workers, harness on 1; {} CPUs, {} build, load average at start: {}",
        settings.messages,
        settings.prefetch,
        settings.max_connections,
        if settings.group_commit == 0 {
            "off".to_string()
        } else {
            format!("max batch {}", settings.group_commit)
        },
        settings.group_in_flight,
        settings
            .phases
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(","),
        if settings.log_json {
            "json (info, to /dev/null)"
        } else {
            "off"
        },
        settings
            .rate
            .map_or("as fast as possible".to_string(), |r| {
                format!("at {r} msgs/s (throughput then only shows the rate was kept)")
            }),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if cfg!(debug_assertions) {
            "DEBUG"
        } else {
            "optimised"
        },
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| {
                let f: Vec<&str> = l.split_whitespace().take(3).collect();
                (f.len() == 3).then(|| f.join(" "))
            })
            .unwrap_or_else(|| "n/a".into())
    );
    let sut_handle = sut.handle().clone();
    let outcome = harness
        .block_on(async move { tokio::spawn(run(settings, sut_handle)).await })
        .map_err(|e| format!("benchmark driver panicked: {e}"))
        .and_then(|r| r);
    let failed = match outcome {
        Ok((rows, line)) => {
            print_table(&rows);
            if let Some(line) = line {
                println!("{line}");
            }
            if any_failed(&rows) {
                println!("pipeline bench: FAIL (a target was missed; see the summary)");
            }
            any_failed(&rows)
        }
        Err(e) => {
            println!();
            println!("pipeline bench: FAIL: {e}");
            true
        }
    };
    harness.shutdown_timeout(Duration::from_secs(5));
    sut.shutdown_timeout(Duration::from_secs(5));
    if failed {
        std::process::exit(1);
    }
}
