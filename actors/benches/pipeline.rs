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
//! sustain, the latencies show service time instead of time spent in the backlog).

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

/// drover must at least match the plain consumer ...
const TARGET_RATIO: f64 = 1.0;
/// ... and aims for twice its throughput.
const AIM_RATIO: f64 = 2.0;

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

// ---------------------------------------------------------------------------------------------
// settings

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Drover,
    Plain,
    Tasks,
    Batched,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Drover => "drover",
            Kind::Plain => "plain",
            Kind::Tasks => "tasks",
            Kind::Batched => "batched",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Kind::Drover => "drover: root supervisor + pipeline_children (actors)",
            Kind::Plain => "plain: lapin + task per delivery + INSERT/POST/UPDATE",
            Kind::Tasks => {
                "tasks: task per delivery + drover's Store (as configured) and Provider, no actors"
            }
            Kind::Batched => {
                "batched: drover's Store batch calls (group commit) + Provider, no actors"
            }
        }
    }

    /// The table whose rows become `sent`.
    fn table(self) -> &'static str {
        match self {
            Kind::Plain => "plain_messages",
            Kind::Drover | Kind::Tasks | Kind::Batched => "messages",
        }
    }
}

#[derive(Debug, Clone)]
struct Settings {
    messages: usize,
    amqp_url: String,
    database_url: String,
    database_port: u16,
    prefetch: u16,
    max_connections: u32,
    /// `store.group_commit_max_batch` (0 = one transaction per call).
    group_commit: usize,
    /// `store.group_commit_in_flight`.
    group_in_flight: usize,
    phases: Vec<Kind>,
    rounds: usize,
    /// Publish at this many messages a second instead of as fast as possible.
    rate: Option<f64>,
    batch: usize,
    log_json: bool,
    keep: bool,
    quiet_wait: Duration,
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> BenchResult<T> {
    match std::env::var(key) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| format!("{key}={v:?} is not a valid value")),
        _ => Ok(default),
    }
}

impl Settings {
    fn from_env() -> BenchResult<Settings> {
        let messages: usize = env_or("DROVER_BENCH_MESSAGES", DEFAULT_MESSAGES)?;
        if messages == 0 || messages > u32::MAX as usize {
            return Err("DROVER_BENCH_MESSAGES must be between 1 and 2^32 - 1".into());
        }
        let phases = env_or("DROVER_BENCH_PHASES", "drover,plain,tasks".to_string())?
            .split(',')
            .map(|p| match p.trim() {
                "drover" => Ok(Kind::Drover),
                "plain" => Ok(Kind::Plain),
                "tasks" => Ok(Kind::Tasks),
                "batched" => Ok(Kind::Batched),
                other => Err(format!(
                    "DROVER_BENCH_PHASES: unknown phase {other:?} (drover, plain, tasks, batched)"
                )),
            })
            .collect::<BenchResult<Vec<Kind>>>()?;
        let rounds: usize = env_or("DROVER_BENCH_ROUNDS", 3)?;
        if rounds == 0 || rounds > 20 {
            return Err("DROVER_BENCH_ROUNDS must be between 1 and 20".into());
        }
        let prefetch: u16 = env_or("DROVER_BENCH_PREFETCH", BrokerConfig::default().prefetch)?;
        let log = env_or("DROVER_BENCH_LOG", "off".to_string())?;
        if !matches!(log.as_str(), "off" | "json") {
            return Err(format!("DROVER_BENCH_LOG={log:?}: use off or json"));
        }
        let database_url: String =
            env_or("DROVER_TEST_DATABASE_URL", DEFAULT_DATABASE_URL.to_string())?;
        let database_port = database_url
            .parse::<PgConnectOptions>()
            .map_err(|e| format!("DROVER_TEST_DATABASE_URL: {e}"))?
            .get_port();
        Ok(Settings {
            messages,
            amqp_url: env_or("DROVER_TEST_AMQP_URL", DEFAULT_AMQP_URL.to_string())?,
            database_url,
            database_port,
            prefetch,
            max_connections: env_or(
                "DROVER_BENCH_MAX_CONNECTIONS",
                StoreConfig::default().max_connections,
            )?,
            group_commit: env_or(
                "DROVER_BENCH_GROUP_COMMIT",
                StoreConfig::default().group_commit_max_batch,
            )?,
            group_in_flight: env_or(
                "DROVER_BENCH_GROUP_IN_FLIGHT",
                StoreConfig::default().group_commit_in_flight,
            )?,
            phases,
            rounds,
            rate: match env_or("DROVER_BENCH_RATE", 0.0f64)? {
                r if r > 0.0 => Some(r),
                _ => None,
            },
            batch: env_or("DROVER_BENCH_BATCH", (usize::from(prefetch) / 2).max(1))?.max(1),
            log_json: log == "json",
            keep: env_or("DROVER_BENCH_KEEP", 0u8)? != 0,
            quiet_wait: Duration::from_secs(env_or("DROVER_BENCH_QUIET_WAIT_S", 60u64)?.min(600)),
        })
    }
}

/// Names of one phase's broker topology and schema.
#[derive(Debug, Clone)]
struct Names {
    exchange: String,
    work: String,
    failed: String,
    invalid: String,
    schema: String,
}

impl Names {
    fn new(tag: &str, kind: Kind) -> Names {
        let base = format!("drover-bench.{tag}.{}", kind.name());
        Names {
            exchange: base.clone(),
            work: format!("{base}.outbound"),
            failed: format!("{base}.failed"),
            invalid: format!("{base}.invalid"),
            schema: format!("bench_{tag}_{}", kind.name()),
        }
    }

    fn broker_config(&self, s: &Settings) -> BrokerConfig {
        BrokerConfig {
            url: s.amqp_url.clone(),
            exchange: self.exchange.clone(),
            work_queue: self.work.clone(),
            failed_queue: self.failed.clone(),
            invalid_queue: self.invalid.clone(),
            prefetch: s.prefetch,
            ..BrokerConfig::default()
        }
    }

    fn store_config(&self, s: &Settings) -> StoreConfig {
        StoreConfig {
            url: s.database_url.clone(),
            max_connections: s.max_connections,
            schema: Some(self.schema.clone()),
            group_commit_max_batch: s.group_commit,
            group_commit_in_flight: s.group_in_flight,
            ..StoreConfig::default()
        }
    }
}

fn provider_config(addr: SocketAddr) -> ProviderConfig {
    ProviderConfig {
        kind: ProviderKind::Twilio,
        twilio: TwilioConfig {
            base_url: format!("http://{addr}"),
            account_sid: ACCOUNT_SID.into(),
            auth_token: AUTH_TOKEN.into(),
            from: Some(FROM.into()),
            messaging_service_sid: None,
        },
        ..ProviderConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// per-message marks, shared by the publisher, the provider and the analysis

/// What the harness saw of each message, indexed by its number. Ids are `prefix | index`.
struct Marks {
    origin: Instant,
    prefix: u128,
    /// Harness clock (ns since `origin`, + 1; 0 = not yet) just before `basic_publish`.
    publish_ns: Vec<AtomicU64>,
    /// `Clock::now_ms` at the same moment (to compare with `updated_at`).
    publish_ms: Vec<AtomicI64>,
    /// Harness clock when the provider first received a request for the message.
    received_ns: Vec<AtomicU64>,
    /// Requests the provider received per message.
    hits: Vec<AtomicU32>,
    received_unique: AtomicUsize,
    received_total: AtomicU64,
    unknown: AtomicU64,
    /// Set when the publisher gave up (its error comes with its task's result).
    publish_failed: std::sync::atomic::AtomicBool,
}

impl Marks {
    fn new(n: usize) -> Marks {
        let zero64 = || (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        Marks {
            origin: Instant::now(),
            prefix: Uuid::new_v4().as_u128() & !0xFFFF_FFFFu128,
            publish_ns: zero64(),
            publish_ms: (0..n).map(|_| AtomicI64::new(0)).collect(),
            received_ns: zero64(),
            hits: (0..n).map(|_| AtomicU32::new(0)).collect(),
            received_unique: AtomicUsize::new(0),
            received_total: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            publish_failed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64 + 1
    }

    fn id(&self, i: usize) -> Uuid {
        Uuid::from_u128(self.prefix | i as u128)
    }

    fn index(&self, id: &Uuid) -> Option<usize> {
        let v = id.as_u128();
        let i = (v & 0xFFFF_FFFF) as usize;
        (v & !0xFFFF_FFFFu128 == self.prefix && i < self.hits.len()).then_some(i)
    }

    fn index_of_text(&self, id: &str) -> Option<usize> {
        Uuid::parse_str(id).ok().and_then(|u| self.index(&u))
    }
}

// ---------------------------------------------------------------------------------------------
// the provider: a Twilio-compatible server that accepts everything at once

async fn twilio_send(
    State(m): State<Arc<Marks>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], String) {
    let now = m.now_ns();
    m.received_total.fetch_add(1, Ordering::Relaxed);
    let id = headers
        .get(IDEMPOTENCY_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Uuid::parse_str(v).ok());
    match id.and_then(|id| m.index(&id)) {
        Some(i) => {
            let _ = m.received_ns[i].compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
            if m.hits[i].fetch_add(1, Ordering::Relaxed) == 0 {
                m.received_unique.fetch_add(1, Ordering::Release);
            }
        }
        None => {
            m.unknown.fetch_add(1, Ordering::Relaxed);
        }
    }
    let sid = format!("SM{:032x}", id.map_or(0, |u| u.as_u128()));
    let answer = format!(
        r#"{{"sid":"{sid}","status":"queued","account_sid":"{ACCOUNT_SID}","num_segments":"1","body_len":{}}}"#,
        body.len()
    );
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        answer,
    )
}

async fn twilio_account() -> (StatusCode, [(header::HeaderName, &'static str); 1], String) {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"sid":"{ACCOUNT_SID}","status":"active"}}"#),
    )
}

struct ProviderServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

/// Start the provider on the current (harness) runtime.
async fn start_provider(marks: Arc<Marks>) -> BenchResult<ProviderServer> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| err("bind the provider")(&e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| err("provider address")(&e))?;
    let router = Router::new()
        .route(
            "/2010-04-01/Accounts/{sid}/Messages.json",
            post(twilio_send),
        )
        .route("/2010-04-01/Accounts/{sid}", get(twilio_account))
        .with_state(marks);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    Ok(ProviderServer { addr, stop, task })
}

// ---------------------------------------------------------------------------------------------
// the publisher

fn message_body(marks: &Marks, i: usize) -> String {
    format!(
        r#"{{"id":"{}","to":"{TO}","body":"bench message {i}","correlation_id":"bench-{i}"}}"#,
        marks.id(i)
    )
}

struct Published {
    first: Instant,
    confirmed: Instant,
}

/// Publish every message through its own connection, confirms on, at most
/// [`PUBLISH_WINDOW`] unconfirmed.
async fn publish_all(
    url: String,
    names: Names,
    marks: Arc<Marks>,
    clock: Clock,
    rate: Option<f64>,
    deadline: Instant,
) -> BenchResult<Published> {
    let n = marks.hits.len();
    let conn = Connection::connect(
        &url,
        ConnectionProperties::default().with_connection_name("drover-bench-publisher".into()),
    )
    .await
    .map_err(|e| err("publisher connect")(&e))?;
    let channel = conn
        .create_channel()
        .await
        .map_err(|e| err("publisher channel")(&e))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| err("confirm.select")(&e))?;
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    let check = |c: lapin::Result<Confirmation>| match c {
        Ok(Confirmation::Ack(None)) => Ok(()),
        other => Err(format!("publish not confirmed: {other:?}")),
    };
    let mut pending = FuturesUnordered::new();
    let first = Instant::now();
    for i in 0..n {
        if i % 256 == 0 && Instant::now() > deadline {
            return Err(format!(
                "publishing aborted after {i} of {n} messages: time limit"
            ));
        }
        if let Some(rate) = rate {
            let due = first + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let body = message_body(&marks, i);
        marks.publish_ms[i].store(clock.now_ms(), Ordering::Relaxed);
        marks.publish_ns[i].store(marks.now_ns(), Ordering::Relaxed);
        let confirm = channel
            .basic_publish(
                names.exchange.as_str().into(),
                names.work.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                props.clone(),
            )
            .await
            .map_err(|e| err("basic.publish")(&e))?;
        pending.push(confirm);
        while pending.len() >= PUBLISH_WINDOW {
            match tokio::time::timeout_at(deadline.into(), pending.next()).await {
                Ok(Some(c)) => check(c)?,
                Ok(None) => break,
                Err(_) => return Err("publish confirms timed out".into()),
            }
        }
    }
    while !pending.is_empty() {
        match tokio::time::timeout_at(deadline.into(), pending.next()).await {
            Ok(Some(c)) => check(c)?,
            Ok(None) => break,
            Err(_) => return Err("publish confirms timed out".into()),
        }
    }
    let confirmed = Instant::now();
    let _ = channel.close(200, "done".into()).await;
    let _ = conn.close(200, "done".into()).await;
    Ok(Published { first, confirmed })
}

// ---------------------------------------------------------------------------------------------
// the plain consumer and the tasks consumer

const PLAIN_TABLE: &str = "\
CREATE TABLE plain_messages (
    id                  TEXT    PRIMARY KEY,
    correlation_id      TEXT    NOT NULL,
    recipient           TEXT    NOT NULL,
    body                TEXT    NOT NULL,
    sender              TEXT,
    status              TEXT    NOT NULL,
    attempts            INTEGER NOT NULL,
    provider_message_id TEXT,
    created_at          BIGINT  NOT NULL,
    updated_at          BIGINT  NOT NULL
)";

const PLAIN_INSERT: &str = "\
INSERT INTO plain_messages (id, correlation_id, recipient, body, sender, status, attempts, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, 'sending', 1, $6, $6)
ON CONFLICT (id) DO NOTHING";

const PLAIN_SENT: &str = "\
UPDATE plain_messages SET status = 'sent', provider_message_id = $2, updated_at = $3
WHERE id = $1 AND status = 'sending'";

#[derive(serde::Deserialize)]
struct Created {
    sid: String,
}

struct PlainCtx {
    pool: PgPool,
    http: reqwest::Client,
    url: String,
    clock: Clock,
    message: MessageConfig,
}

struct TasksCtx {
    store: Store,
    provider: Provider,
    clock: Clock,
    message: MessageConfig,
    /// `batched` only: most deliveries per group commit.
    batch: usize,
}

#[derive(Clone)]
enum Work {
    Plain(Arc<PlainCtx>),
    Tasks(Arc<TasksCtx>),
    Batched(Arc<TasksCtx>),
}

#[derive(Default)]
struct ConsumerCounters {
    deliveries: AtomicU64,
    redelivered: AtomicU64,
    errors: AtomicU64,
    batches: AtomicU64,
    first_error: parking_lot::Mutex<Option<String>>,
}

async fn plain_handle(ctx: &PlainCtx, body: &[u8]) -> Result<(), String> {
    let msg = parse(body, &Envelope::default(), &ctx.message).map_err(|e| e.to_string())?;
    let id = msg.id.to_string();
    sqlx::query(PLAIN_INSERT)
        .bind(id.as_str())
        .bind(msg.correlation_id.as_str())
        .bind(msg.to.as_str())
        .bind(msg.body.as_str())
        .bind(msg.from.as_deref())
        .bind(ctx.clock.now_ms())
        .execute(&ctx.pool)
        .await
        .map_err(|e| err("insert")(&e))?;
    let from = msg.from.as_deref().unwrap_or(FROM);
    let resp = ctx
        .http
        .post(ctx.url.as_str())
        .basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN))
        .header(header::ACCEPT, "application/json")
        .header(CORRELATION_HEADER, msg.correlation_id.as_str())
        .header(IDEMPOTENCY_HEADER, id.as_str())
        .form(&[
            ("To", msg.to.as_str()),
            ("From", from),
            ("Body", msg.body.as_str()),
            ("Attempt", "1"),
        ])
        .send()
        .await
        .map_err(|e| err("provider")(&e))?;
    if !resp.status().is_success() {
        return Err(format!("provider answered {}", resp.status()));
    }
    let created: Created = resp.json().await.map_err(|e| err("provider answer")(&e))?;
    sqlx::query(PLAIN_SENT)
        .bind(id.as_str())
        .bind(created.sid.as_str())
        .bind(ctx.clock.now_ms())
        .execute(&ctx.pool)
        .await
        .map_err(|e| err("update")(&e))?;
    Ok(())
}

async fn tasks_handle(ctx: &TasksCtx, body: &[u8]) -> Result<(), String> {
    let msg = parse(body, &Envelope::default(), &ctx.message).map_err(|e| e.to_string())?;
    let admission = ctx
        .store
        .begin_attempt(&msg, ctx.clock.now_ms())
        .await
        .map_err(|e| err("begin_attempt")(&e))?;
    let attempt = match admission {
        Admission::Proceed { attempt, .. } => attempt,
        Admission::AlreadySent { .. } => return Ok(()),
        other => return Err(format!("unexpected admission {other:?}")),
    };
    let provider_message_id = match ctx.provider.send(&msg, attempt).await {
        SendOutcome::Sent {
            provider_message_id,
        } => provider_message_id,
        other => return Err(format!("provider: {other}")),
    };
    ctx.store
        .record_outcome(
            msg.id,
            attempt,
            &AttemptOutcome::Sent {
                provider_message_id,
                latency_ms: 0,
            },
            ctx.clock.now_ms(),
        )
        .await
        .map_err(|e| err("record_outcome")(&e))
}

/// The `batched` phase: many deliveries, one transaction for their admissions, concurrent
/// sends, one transaction for their outcomes.
async fn batch_handle(ctx: &TasksCtx, batch: &[lapin::message::Delivery]) -> Result<(), String> {
    let msgs = batch
        .iter()
        .map(|d| parse(&d.data, &Envelope::default(), &ctx.message).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let admissions = ctx
        .store
        .begin_attempts(&msgs, ctx.clock.now_ms())
        .await
        .map_err(|e| err("begin_attempts")(&e))?;
    let mut to_send = Vec::with_capacity(msgs.len());
    for (msg, admission) in msgs.iter().zip(admissions) {
        match admission {
            Admission::Proceed { attempt, .. } => to_send.push((msg, attempt)),
            Admission::AlreadySent { .. } => {}
            other => return Err(format!("unexpected admission {other:?}")),
        }
    }
    let sent = futures::future::join_all(to_send.into_iter().map(|(msg, attempt)| async move {
        (msg.id, attempt, ctx.provider.send(msg, attempt).await)
    }))
    .await;
    let mut outcomes = Vec::with_capacity(sent.len());
    for (id, attempt, outcome) in sent {
        match outcome {
            SendOutcome::Sent {
                provider_message_id,
            } => outcomes.push((
                id,
                attempt,
                AttemptOutcome::Sent {
                    provider_message_id,
                    latency_ms: 0,
                },
            )),
            other => return Err(format!("provider: {other}")),
        }
    }
    ctx.store
        .record_outcomes(&outcomes, ctx.clock.now_ms())
        .await
        .map_err(|e| err("record_outcomes")(&e))
}

async fn settle(
    d: &lapin::message::Delivery,
    result: &Result<(), String>,
    counters: &ConsumerCounters,
) {
    let settled = match result {
        Ok(()) => d.acker.ack(BasicAckOptions::default()).await,
        Err(e) => {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            counters.first_error.lock().get_or_insert(e.clone());
            d.acker
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                })
                .await
        }
    };
    if let Err(e) = settled {
        counters.errors.fetch_add(1, Ordering::Relaxed);
        counters
            .first_error
            .lock()
            .get_or_insert(format!("settle: {e}"));
    }
}

/// How long the batcher waits for a batch to fill once it holds a delivery.
const BATCH_LINGER: Duration = Duration::from_millis(1);

/// Group deliveries (up to `ctx.batch`, or what came within [`BATCH_LINGER`]) and run each
/// group as a task; the prefetch bounds what is in flight.
async fn batcher(
    ctx: Arc<TasksCtx>,
    mut rx: mpsc::UnboundedReceiver<lapin::message::Delivery>,
    counters: Arc<ConsumerCounters>,
) {
    let mut running = JoinSet::new();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let linger = tokio::time::sleep(BATCH_LINGER);
        tokio::pin!(linger);
        while batch.len() < ctx.batch {
            tokio::select! {
                biased;
                d = rx.recv() => match d {
                    Some(d) => batch.push(d),
                    None => break,
                },
                _ = &mut linger => break,
            }
        }
        counters.batches.fetch_add(1, Ordering::Relaxed);
        let (ctx, counters) = (ctx.clone(), counters.clone());
        running.spawn(async move {
            let result = batch_handle(&ctx, &batch).await;
            for d in &batch {
                settle(d, &result, &counters).await;
            }
        });
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
}

async fn handle_delivery(work: Work, d: lapin::message::Delivery, counters: Arc<ConsumerCounters>) {
    let result = match &work {
        Work::Plain(ctx) => plain_handle(ctx, &d.data).await,
        Work::Tasks(ctx) => tasks_handle(ctx, &d.data).await,
        Work::Batched(_) => Err("batched deliveries go through the batcher".to_string()),
    };
    settle(&d, &result, &counters).await;
}

/// Consume `queue` with `prefetch`, one task per delivery, until `stop`.
async fn consume(
    url: String,
    queue: String,
    prefetch: u16,
    work: Work,
    counters: Arc<ConsumerCounters>,
    mut stop: oneshot::Receiver<()>,
) -> BenchResult<()> {
    let conn = Connection::connect(
        &url,
        ConnectionProperties::default().with_connection_name("drover-bench-consumer".into()),
    )
    .await
    .map_err(|e| err("consumer connect")(&e))?;
    let channel = conn
        .create_channel()
        .await
        .map_err(|e| err("consumer channel")(&e))?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| err("basic.qos")(&e))?;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "drover-bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| err("basic.consume")(&e))?;
    let mut tasks = JoinSet::new();
    let (batch_tx, batch_rx) = mpsc::unbounded_channel();
    let batching = match &work {
        Work::Batched(ctx) => Some(tokio::spawn(batcher(
            ctx.clone(),
            batch_rx,
            counters.clone(),
        ))),
        _ => None,
    };
    let outcome = loop {
        tokio::select! {
            _ = &mut stop => break Ok(()),
            next = consumer.next() => match next {
                Some(Ok(d)) => {
                    counters.deliveries.fetch_add(1, Ordering::Relaxed);
                    if d.redelivered {
                        counters.redelivered.fetch_add(1, Ordering::Relaxed);
                    }
                    if batching.is_some() {
                        let _ = batch_tx.send(d);
                    } else {
                        tasks.spawn(handle_delivery(work.clone(), d, counters.clone()));
                    }
                }
                Some(Err(e)) => break Err(format!("consumer failed: {e}")),
                None => break Err("consumer ended".to_string()),
            },
        }
        while tasks.try_join_next().is_some() {}
    };
    drop(batch_tx);
    let _ = tokio::time::timeout(STEP_LIMIT, async {
        while tasks.join_next().await.is_some() {}
        if let Some(b) = batching {
            let _ = b.await;
        }
    })
    .await;
    let _ = channel.close(200, "bench over".into()).await;
    let _ = conn.close(200, "bench over".into()).await;
    outcome
}

// ---------------------------------------------------------------------------------------------
// drover, built as `drover::start` builds it

fn drover_pipeline(s: &Settings, names: &Names, provider: SocketAddr, clock: Clock) -> Pipeline {
    let tree = Tree::new();
    Pipeline {
        tree,
        root: "root".into(),
        config: PipelineConfig {
            supervision: SupervisionConfig::default(),
            broker: names.broker_config(s),
            store: names.store_config(s),
            provider: provider_config(provider),
            ..PipelineConfig::default()
        },
        clock,
        memory: MemoryBroker::default(),
        ops: Default::default(),
    }
}

/// `drover::root_spec` with the pipeline enabled and the demo off.
fn root_spec(pipeline: &Pipeline) -> SupervisorSpec {
    let sup = &pipeline.config.supervision;
    let mut spec = SupervisorSpec::new(Strategy::OneForOne, sup.intensity()).seed(sup.seed);
    for child in pipeline_children(pipeline) {
        spec = spec.child(child);
    }
    spec
}

async fn start_drover(
    pipeline: Pipeline,
) -> BenchResult<(ActorRef<SupervisorMessage>, JoinHandle<()>)> {
    Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs {
            spec: root_spec(&pipeline),
            tree: pipeline.tree.clone(),
            path: pipeline.root.clone(),
        },
    )
    .await
    .map_err(|e| err("root supervisor")(&e))
}

/// What runs the pipeline in a phase.
enum Sut {
    Drover {
        root: ActorRef<SupervisorMessage>,
        done: JoinHandle<()>,
        tree: Tree,
    },
    Consumer {
        stop: oneshot::Sender<()>,
        task: JoinHandle<BenchResult<()>>,
        counters: Arc<ConsumerCounters>,
        pool: Option<PgPool>,
        store: Option<Store>,
    },
}

impl Sut {
    fn gave_up(&self) -> Option<String> {
        match self {
            Sut::Drover { tree, .. } => tree.gave_up(),
            Sut::Consumer { task, .. } => task.is_finished().then(|| "consumer task ended".into()),
        }
    }

    fn counters(&self) -> Option<&ConsumerCounters> {
        match self {
            Sut::Drover { .. } => None,
            Sut::Consumer { counters, .. } => Some(counters),
        }
    }

    async fn stop(self) -> BenchResult<()> {
        match self {
            Sut::Drover { root, done, .. } => {
                root.stop_and_wait(Some("bench over".into()), Some(STEP_LIMIT))
                    .await
                    .map_err(|e| err("stopping the root supervisor")(&e))?;
                tokio::time::timeout(STEP_LIMIT, done)
                    .await
                    .map_err(|_| "root supervisor did not exit".to_string())?
                    .map_err(|e| err("root supervisor task")(&e))
            }
            Sut::Consumer {
                stop,
                task,
                pool,
                store,
                ..
            } => {
                let _ = stop.send(());
                let result = tokio::time::timeout(STEP_LIMIT, task)
                    .await
                    .map_err(|_| "consumer did not stop".to_string())?
                    .map_err(|e| err("consumer task")(&e))?;
                if let Some(p) = pool {
                    p.close().await;
                }
                if let Some(s) = store {
                    s.close().await;
                }
                result
            }
        }
    }
}

/// Start the system under test on the `sut` runtime.
async fn start_sut(
    kind: Kind,
    s: &Settings,
    names: &Names,
    provider: SocketAddr,
    clock: Clock,
    sut: &Handle,
) -> BenchResult<Sut> {
    match kind {
        Kind::Drover => {
            let pipeline = drover_pipeline(s, names, provider, clock);
            let tree = pipeline.tree.clone();
            let (root, done) = sut
                .spawn(Box::pin(start_drover(pipeline)))
                .await
                .map_err(|e| err("starting drover")(&e))??;
            Ok(Sut::Drover { root, done, tree })
        }
        Kind::Plain | Kind::Tasks | Kind::Batched => {
            let (pool, store, work) = if kind == Kind::Plain {
                let options: PgConnectOptions = s
                    .database_url
                    .parse()
                    .map_err(|e| err("database url")(&e))?;
                let options = options.options([("search_path", names.schema.as_str())]);
                let pool = sut
                    .spawn(
                        PgPoolOptions::new()
                            .max_connections(s.max_connections)
                            .acquire_timeout(Duration::from_secs(5))
                            .connect_with(options),
                    )
                    .await
                    .map_err(|e| err("plain pool")(&e))?
                    .map_err(|e| err("plain pool")(&e))?;
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .connect_timeout(Duration::from_secs(5))
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| err("http client")(&e))?;
                let ctx = PlainCtx {
                    pool: pool.clone(),
                    http,
                    url: format!(
                        "http://{provider}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
                    ),
                    clock,
                    message: MessageConfig::default(),
                };
                (Some(pool), None, Work::Plain(Arc::new(ctx)))
            } else {
                let config = names.store_config(s);
                // As the store worker sets it up (its batcher runs on the sut runtime).
                let store = sut
                    .spawn(async move {
                        let store = Store::connect(&config).await?.with_sending_lease(
                            drover_actors::pipeline::DeliveryConfig::default().sending_lease_ms
                                as i64,
                        );
                        Ok::<_, drover_actors::store::StoreError>(
                            match config.group_commit_max_batch {
                                0 => store,
                                n => store.with_group_commit(n, config.group_commit_in_flight),
                            },
                        )
                    })
                    .await
                    .map_err(|e| err("tasks store")(&e))?
                    .map_err(|e| err("tasks store")(&e))?;
                let provider = Provider::from_config(&provider_config(provider))
                    .map_err(|e| err("provider")(&e))?;
                let ctx = Arc::new(TasksCtx {
                    store: store.clone(),
                    provider,
                    clock,
                    message: MessageConfig::default(),
                    batch: s.batch,
                });
                let work = if kind == Kind::Batched {
                    Work::Batched(ctx)
                } else {
                    Work::Tasks(ctx)
                };
                (None, Some(store), work)
            };
            let counters = Arc::new(ConsumerCounters::default());
            let (stop, stopped) = oneshot::channel();
            let task = sut.spawn(consume(
                s.amqp_url.clone(),
                names.work.clone(),
                s.prefetch,
                work,
                counters.clone(),
                stopped,
            ));
            Ok(Sut::Consumer {
                stop,
                task,
                counters,
                pool,
                store,
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// /proc: memory and CPU

fn status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Reset the process's peak RSS to its current RSS (Linux ≥ 4.0).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// `(comm, utime + stime)` of a `/proc/.../stat` line.
fn parse_stat(text: &str) -> Option<(String, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // Fields after the comm start at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

#[derive(Debug, Clone, Default)]
struct CpuSnap {
    /// This process's threads: tid → (name, ticks).
    threads: HashMap<u64, (String, u64)>,
    process: u64,
    /// PostgreSQL and RabbitMQ processes: pid → (comm, ticks).
    services: HashMap<u64, (String, u64)>,
    /// Machine: (busy, total) ticks.
    machine: (u64, u64),
}

fn cpu_snapshot() -> CpuSnap {
    let mut snap = CpuSnap::default();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u64>().ok()) else {
                continue;
            };
            if let Some(stat) = std::fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|t| parse_stat(&t))
            {
                snap.threads.insert(tid, stat);
            }
        }
    }
    snap.process = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|t| parse_stat(&t))
        .map_or(0, |(_, t)| t);
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|t| t.parse::<u64>().ok()) else {
                continue;
            };
            if let Some((comm, ticks)) = std::fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|t| parse_stat(&t))
            {
                if comm == "postgres" || comm.starts_with("beam") || comm.starts_with("erl") {
                    snap.services.insert(pid, (comm, ticks));
                }
            }
        }
    }
    if let Some(line) = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| t.lines().next().map(str::to_string))
    {
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let total: u64 = v.iter().take(8).sum();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        snap.machine = (total.saturating_sub(idle), total);
    }
    snap
}

#[derive(Debug, Clone, Default)]
struct CpuDelta {
    /// Seconds per thread name of this process.
    threads: BTreeMap<String, f64>,
    process: f64,
    postgres: f64,
    /// Of `postgres`: the backends serving this process's connections.
    postgres_mine: f64,
    rabbitmq: f64,
    /// Busy CPU seconds of the machine not accounted for by the three above.
    other: f64,
    machine_busy: f64,
    cores: f64,
}

fn cpu_delta(before: &CpuSnap, after: &CpuSnap, mine: &HashSet<u64>) -> CpuDelta {
    let mut d = CpuDelta::default();
    for (tid, (name, ticks)) in &after.threads {
        let was = before.threads.get(tid).map_or(0, |(_, t)| *t);
        *d.threads.entry(name.clone()).or_default() +=
            ticks.saturating_sub(was) as f64 / TICKS_PER_SEC;
    }
    d.process = after.process.saturating_sub(before.process) as f64 / TICKS_PER_SEC;
    for (pid, (comm, ticks)) in &after.services {
        let was = before.services.get(pid).map_or(0, |(_, t)| *t);
        let secs = ticks.saturating_sub(was) as f64 / TICKS_PER_SEC;
        if comm == "postgres" {
            d.postgres += secs;
            if mine.contains(pid) {
                d.postgres_mine += secs;
            }
        } else {
            d.rabbitmq += secs;
        }
    }
    let busy = after.machine.0.saturating_sub(before.machine.0) as f64;
    let total = after.machine.1.saturating_sub(before.machine.1) as f64;
    d.machine_busy = if total > 0.0 { busy / total } else { 0.0 };
    d.cores = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    d.other = (busy / TICKS_PER_SEC - d.process - d.postgres - d.rabbitmq).max(0.0);
    d
}

/// Local ports of this process's TCP connections to `remote_port`.
fn my_local_ports(remote_port: u16) -> Vec<i32> {
    let inodes: HashSet<u64> = std::fs::read_dir("/proc/self/fd")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| {
                    let link = std::fs::read_link(e.path()).ok()?;
                    let link = link.to_str()?;
                    link.strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default();
    let port = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(inode)) = (f.get(1), f.get(2), f.get(9)) else {
                continue;
            };
            if port(remote) == Some(remote_port)
                && inode.parse().is_ok_and(|i: u64| inodes.contains(&i))
            {
                if let Some(p) = port(local) {
                    ports.push(i32::from(p));
                }
            }
        }
    }
    ports
}

/// PostgreSQL backends (pids) serving this process's connections.
async fn my_backends(admin: &PgPool, server_port: u16) -> HashSet<u64> {
    let ports = my_local_ports(server_port);
    sqlx::query_scalar::<_, i32>("SELECT pid FROM pg_stat_activity WHERE client_port = ANY($1)")
        .bind(ports)
        .fetch_all(admin)
        .await
        .map(|pids| pids.into_iter().map(|p| p as u64).collect())
        .unwrap_or_default()
}

/// The machine's busy share over `window`.
async fn machine_busy(window: Duration) -> f64 {
    let a = cpu_snapshot().machine;
    tokio::time::sleep(window).await;
    let b = cpu_snapshot().machine;
    let total = b.1.saturating_sub(a.1) as f64;
    if total > 0.0 {
        b.0.saturating_sub(a.0) as f64 / total
    } else {
        0.0
    }
}

/// Below this busy share the machine counts as quiet.
const QUIET_BUSY: f64 = 0.15;

/// Wait (at most `limit`) until the machine is quiet: other processes (builds, tests, the
/// previous phase's database housekeeping) would otherwise take CPU from the phase.
async fn wait_quiet(limit: Duration) -> (bool, f64, Duration) {
    let start = Instant::now();
    loop {
        let busy = machine_busy(Duration::from_millis(500)).await;
        if busy < QUIET_BUSY || start.elapsed() >= limit {
            return (busy < QUIET_BUSY, busy, start.elapsed());
        }
    }
}

/// PostgreSQL's own counters: the database's (every client of it, not only this bench) and
/// the server's WAL.
#[derive(Debug, Clone, Copy, Default)]
struct PgCounters {
    commits: i64,
    inserted: i64,
    updated: i64,
    wal_records: i64,
    wal_bytes: i64,
    wal_syncs: i64,
}

async fn pg_counters(admin: &PgPool) -> Option<PgCounters> {
    let (commits, inserted, updated) = sqlx::query_as::<_, (i64, i64, i64)>(
        "SELECT xact_commit, tup_inserted, tup_updated FROM pg_stat_database \
         WHERE datname = current_database()",
    )
    .fetch_one(admin)
    .await
    .ok()?;
    let (wal_records, wal_bytes, wal_syncs) = sqlx::query_as::<_, (i64, i64, i64)>(
        "SELECT wal_records, wal_bytes::bigint, wal_sync FROM pg_stat_wal",
    )
    .fetch_one(admin)
    .await
    .ok()?;
    Some(PgCounters {
        commits,
        inserted,
        updated,
        wal_records,
        wal_bytes,
        wal_syncs,
    })
}

fn pg_note(before: Option<PgCounters>, after: Option<PgCounters>, n: usize) -> String {
    let (Some(b), Some(a)) = (before, after) else {
        return "postgres counters: not available".into();
    };
    let per = |x: i64, y: i64| (x - y) as f64 / n as f64;
    format!(
        "postgres per message (whole database and server, so other clients count too): {:.2} commits, {:.2} rows inserted, {:.2} rows updated, {:.1} WAL records, {:.0} WAL bytes, {:.2} WAL fsyncs",
        per(a.commits, b.commits),
        per(a.inserted, b.inserted),
        per(a.updated, b.updated),
        per(a.wal_records, b.wal_records),
        per(a.wal_bytes, b.wal_bytes),
        per(a.wal_syncs, b.wal_syncs)
    )
}

// ---------------------------------------------------------------------------------------------
// statistics and output

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

struct Latency {
    p50: f64,
    p99: f64,
    max: f64,
    mean: f64,
    count: usize,
}

fn latency(mut v: Vec<f64>) -> Latency {
    v.sort_by(f64::total_cmp);
    let mean = if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    };
    Latency {
        p50: percentile(&v, 0.50),
        p99: percentile(&v, 0.99),
        max: v.last().copied().unwrap_or(f64::NAN),
        mean,
        count: v.len(),
    }
}

struct PhaseReport {
    kind: Kind,
    n: usize,
    elapsed: Duration,
    throughput: f64,
    publish_rate: f64,
    /// N / (first publish → the greatest `updated_at`), a cross-check of the throughput.
    throughput_by_updated_at: f64,
    sent_latency: Latency,
    provider_latency: Latency,
    rss_start_kb: u64,
    rss_peak_kb: u64,
    rss_end_kb: u64,
    peak_reset: bool,
    cpu: CpuDelta,
    notes: Vec<String>,
}

impl PhaseReport {
    fn print(&self) {
        let k = self.kind.name();
        println!(
            "[{k}] throughput {:.0} msgs/s ({} messages in {:.3} s, first publish -> last sent row seen); publisher alone {:.0} msgs/s",
            self.throughput,
            self.n,
            self.elapsed.as_secs_f64(),
            self.publish_rate
        );
        println!(
            "[{k}]   cross-check: N / (first publish -> max updated_at) = {:.0} msgs/s",
            self.throughput_by_updated_at
        );
        let l = &self.sent_latency;
        println!(
            "[{k}] latency publish->sent (updated_at, 1 ms resolution): p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  mean {:.1} ms  (n = {})",
            l.p50, l.p99, l.max, l.mean, l.count
        );
        let l = &self.provider_latency;
        println!(
            "[{k}] latency publish->provider received (harness clock):  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  mean {:.2} ms  (n = {})",
            l.p50, l.p99, l.max, l.mean, l.count
        );
        println!(
            "[{k}] RSS: {:.1} MiB at start, peak {:.1} MiB during the phase ({}; +{:.1} MiB over the start), {:.1} MiB after teardown",
            mib(self.rss_start_kb),
            mib(self.rss_peak_kb),
            if self.peak_reset {
                "VmHWM reset at the phase start"
            } else {
                "VmHWM NOT reset: process-wide peak"
            },
            mib(self.rss_peak_kb.saturating_sub(self.rss_start_kb)),
            mib(self.rss_end_kb)
        );
        let c = &self.cpu;
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let per_msg = |s: f64| s * 1e6 / self.n as f64;
        let threads: Vec<String> = c
            .threads
            .iter()
            .filter(|(_, s)| **s >= 0.005)
            .map(|(name, s)| format!("{name} {s:.2} s ({:.0} µs/msg)", per_msg(*s)))
            .collect();
        println!(
            "[{k}] CPU over {secs:.2} s: this process {:.2} s [{}]; postgres {:.2} s ({:.0} µs/msg); rabbitmq {:.2} s ({:.0} µs/msg); other processes {:.2} s; machine busy {:.0}% of {} cores",
            c.process,
            threads.join(", "),
            c.postgres,
            per_msg(c.postgres),
            c.rabbitmq,
            per_msg(c.rabbitmq),
            c.other,
            c.machine_busy * 100.0,
            c.cores
        );
        let sut_threads = c.threads.get("sut").copied().unwrap_or(0.0);
        let own = sut_threads + c.postgres_mine;
        println!(
            "[{k}] CPU of the system under test: its runtime {sut_threads:.2} s + its PostgreSQL backends {:.2} s = {:.0} µs/msg (RabbitMQ and the harness excluded; the backends include the harness's few polls)",
            c.postgres_mine,
            per_msg(own)
        );
        if c.other > 0.1 * secs * c.cores {
            println!(
                "[{k}] WARNING: other processes used {:.0}% of the machine during this phase: its figures are disturbed",
                c.other * 100.0 / (secs * c.cores)
            );
        }
        for n in &self.notes {
            println!("[{k}] {n}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// one phase

async fn count_sent(admin: &PgPool, names: &Names, kind: Kind) -> BenchResult<i64> {
    let sql = format!(
        "SELECT count(*) FROM {}.{} WHERE status = 'sent'",
        names.schema,
        kind.table()
    );
    sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql))
        .fetch_one(admin)
        .await
        .map_err(|e| err("count sent rows")(&e))
}

async fn status_counts(admin: &PgPool, names: &Names, kind: Kind) -> String {
    let sql = format!(
        "SELECT status, count(*) FROM {}.{} GROUP BY status ORDER BY status",
        names.schema,
        kind.table()
    );
    match sqlx::query_as::<_, (String, i64)>(AssertSqlSafe(sql))
        .fetch_all(admin)
        .await
    {
        Ok(rows) if rows.is_empty() => "no rows".into(),
        Ok(rows) => rows
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        Err(e) => format!("(could not count: {e})"),
    }
}

/// Wait until every message was received by the provider and recorded `sent`; returns when
/// the database first counted N `sent` rows.
async fn wait_done(
    admin: &PgPool,
    names: &Names,
    kind: Kind,
    marks: &Marks,
    sut: &Sut,
    deadline: Instant,
) -> BenchResult<Instant> {
    let n = marks.hits.len();
    let mut next_report = Instant::now() + Duration::from_secs(10);
    while marks.received_unique.load(Ordering::Acquire) < n {
        let now = Instant::now();
        if now > deadline {
            return Err(format!(
                "phase {} aborted after {} s: the provider saw {} of {n} messages; database: {}",
                kind.name(),
                PHASE_LIMIT.as_secs(),
                marks.received_unique.load(Ordering::Acquire),
                status_counts(admin, names, kind).await
            ));
        }
        if marks.publish_failed.load(Ordering::Acquire) {
            return Err(format!(
                "phase {} aborted: the publisher failed",
                kind.name()
            ));
        }
        if let Some(why) = sut.gave_up() {
            return Err(format!("phase {} aborted: {why}", kind.name()));
        }
        if now > next_report {
            println!(
                "[{}]   ... provider has seen {} of {n}",
                kind.name(),
                marks.received_unique.load(Ordering::Acquire)
            );
            next_report = now + Duration::from_secs(10);
        }
        tokio::time::sleep(PROVIDER_POLL).await;
    }
    loop {
        let sent = count_sent(admin, names, kind).await?;
        if sent as usize >= n {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "phase {} aborted after {} s: {sent} of {n} rows sent; database: {}",
                kind.name(),
                PHASE_LIMIT.as_secs(),
                status_counts(admin, names, kind).await
            ));
        }
        tokio::time::sleep(DB_POLL).await;
    }
}

async fn wait_consumer(setup: &Broker, names: &Names, sut: &Sut) -> BenchResult<()> {
    let deadline = Instant::now() + STEP_LIMIT;
    loop {
        match setup.queue_stats(&names.work).await {
            Ok(stats) if stats.consumers >= 1 => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(format!("queue stats: {e}")),
        }
        if let Some(why) = sut.gave_up() {
            return Err(format!("the system under test did not come up: {why}"));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no consumer on {} after {} s",
                names.work,
                STEP_LIMIT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn prepare_schema(admin: &PgPool, names: &Names, kind: Kind) -> BenchResult<()> {
    if kind != Kind::Plain {
        // drover's store creates its schema and migrates at connect.
        return Ok(());
    }
    let create = format!("CREATE SCHEMA {}", names.schema);
    sqlx::raw_sql(AssertSqlSafe(create))
        .execute(admin)
        .await
        .map_err(|e| err("create schema")(&e))?;
    let table = format!(
        "SET search_path TO {}; {PLAIN_TABLE}; SET search_path TO DEFAULT",
        names.schema
    );
    sqlx::raw_sql(AssertSqlSafe(table))
        .execute(admin)
        .await
        .map_err(|e| err("create table")(&e))?;
    Ok(())
}

async fn drop_schema(admin: &PgPool, names: &Names) {
    let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", names.schema);
    if let Err(e) = sqlx::raw_sql(AssertSqlSafe(sql)).execute(admin).await {
        println!("warning: could not drop schema {}: {e}", names.schema);
    }
}

/// Latencies from the `sent` rows and the provider's marks.
async fn collect_latencies(
    admin: &PgPool,
    names: &Names,
    kind: Kind,
    marks: &Marks,
) -> BenchResult<(Vec<f64>, Vec<f64>, i64)> {
    let sql = format!(
        "SELECT id, updated_at FROM {}.{} WHERE status = 'sent'",
        names.schema,
        kind.table()
    );
    let rows = sqlx::query_as::<_, (String, i64)>(AssertSqlSafe(sql))
        .fetch_all(admin)
        .await
        .map_err(|e| err("read sent rows")(&e))?;
    let mut sent = Vec::with_capacity(rows.len());
    let mut max_updated = i64::MIN;
    for (id, updated_at) in rows {
        if let Some(i) = marks.index_of_text(&id) {
            let published = marks.publish_ms[i].load(Ordering::Relaxed);
            sent.push((updated_at - published) as f64);
            max_updated = max_updated.max(updated_at);
        }
    }
    let provider = (0..marks.hits.len())
        .filter_map(|i| {
            let r = marks.received_ns[i].load(Ordering::Relaxed);
            let p = marks.publish_ns[i].load(Ordering::Relaxed);
            (r > 0 && p > 0).then(|| r.saturating_sub(p) as f64 / 1e6)
        })
        .collect();
    Ok((sent, provider, max_updated))
}

async fn run_phase(
    kind: Kind,
    s: &Settings,
    tag: &str,
    sut_rt: &Handle,
    admin: &PgPool,
) -> BenchResult<PhaseReport> {
    let names = Names::new(tag, kind);
    let n = s.messages;
    println!();
    println!("== phase {} ({}) ==", kind.name(), kind.describe());
    println!(
        "[{}] queue {}, schema {}",
        kind.name(),
        names.work,
        names.schema
    );
    let marks = Arc::new(Marks::new(n));
    let clock = Clock::new();
    let provider = start_provider(marks.clone()).await?;
    let setup = Broker::connect_named(
        &names.broker_config(s),
        &MemoryBroker::default(),
        "drover-bench-setup",
    )
    .await
    .map_err(|e| err("declaring the topology")(&e))?;
    let result = async {
        prepare_schema(admin, &names, kind).await?;
        // The same start for every phase: no dirty pages of the previous one pending.
        let _ = sqlx::raw_sql("CHECKPOINT").execute(admin).await;
        let (quiet, busy, waited) = wait_quiet(s.quiet_wait).await;
        if quiet {
            println!(
                "[{}] machine quiet ({:.0}% busy) after {:.1} s",
                kind.name(),
                busy * 100.0,
                waited.as_secs_f64()
            );
        } else {
            println!(
                "[{}] WARNING: machine still {:.0}% busy after waiting {:.0} s for it to calm down",
                kind.name(),
                busy * 100.0,
                waited.as_secs_f64()
            );
        }
        let rss_start_kb = status_kb("VmRSS").unwrap_or(0);
        let peak_reset = reset_peak_rss();
        let pg_before = pg_counters(admin).await;
        let cpu_before = cpu_snapshot();
        let sut = start_sut(kind, s, &names, provider.addr, clock, sut_rt).await?;
        let measured = async {
            wait_consumer(&setup, &names, &sut).await?;
            let deadline = Instant::now() + PHASE_LIMIT;
            let publisher = tokio::spawn({
                let marks = marks.clone();
                let publish = publish_all(
                    s.amqp_url.clone(),
                    names.clone(),
                    marks.clone(),
                    clock,
                    s.rate,
                    deadline,
                );
                async move {
                    let result = publish.await;
                    if result.is_err() {
                        marks.publish_failed.store(true, Ordering::Release);
                    }
                    result
                }
            });
            let done = wait_done(admin, &names, kind, &marks, &sut, deadline).await;
            let published = publisher
                .await
                .map_err(|e| err("publisher task")(&e))??;
            Ok::<_, String>((published, done?))
        }
        .await;
        let cpu_after = cpu_snapshot();
        let mine = my_backends(admin, s.database_port).await;
        let rss_peak_kb = status_kb("VmHWM").unwrap_or(0);
        let counters = sut.counters().map(|c| {
            (
                c.deliveries.load(Ordering::Relaxed),
                c.redelivered.load(Ordering::Relaxed),
                c.errors.load(Ordering::Relaxed),
                c.batches.load(Ordering::Relaxed),
                c.first_error.lock().clone(),
            )
        });
        let stopped = sut.stop().await;
        // Backends report their counters when they exit or at most once a second.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let pg_after = pg_counters(admin).await;
        let (published, end) = measured?;
        stopped?;
        let (sent_lat, provider_lat, max_updated) =
            collect_latencies(admin, &names, kind, &marks).await?;
        let elapsed = end.saturating_duration_since(published.first);
        let first_publish_ms = (0..n)
            .map(|i| marks.publish_ms[i].load(Ordering::Relaxed))
            .min()
            .unwrap_or(0);
        let mut notes = vec![pg_note(pg_before, pg_after, n)];
        let duplicates = marks
            .hits
            .iter()
            .filter(|h| h.load(Ordering::Relaxed) > 1)
            .count();
        notes.push(format!(
            "checks: provider requests {} for {} ids ({} sent twice or more, {} unknown); rows: {}",
            marks.received_total.load(Ordering::Relaxed),
            marks.received_unique.load(Ordering::Relaxed),
            duplicates,
            marks.unknown.load(Ordering::Relaxed),
            status_counts(admin, &names, kind).await
        ));
        if let Some((deliveries, redelivered, errors, batches, first_error)) = counters {
            notes.push(format!(
                "consumer: {deliveries} deliveries ({redelivered} redelivered), {errors} errors{}{}",
                if batches > 0 {
                    format!(
                        ", {batches} batches (mean {:.1} deliveries, at most {})",
                        deliveries as f64 / batches as f64,
                        s.batch
                    )
                } else {
                    String::new()
                },
                first_error.map_or(String::new(), |e| format!(" (first: {e})"))
            ));
        }
        if kind != Kind::Plain {
            let sql = format!(
                "SELECT count(*), count(*) FILTER (WHERE outcome = 'sent') FROM {}.attempts",
                names.schema
            );
            if let Ok((all, sent)) = sqlx::query_as::<_, (i64, i64)>(AssertSqlSafe(sql))
                .fetch_one(admin)
                .await
            {
                notes.push(format!("attempts rows: {all} ({sent} sent)"));
            }
        }
        match setup.queue_stats(&names.work).await {
            Ok(q) => notes.push(format!(
                "work queue after shutdown: {} ready (unacked ones would be back here), {} consumers",
                q.ready, q.consumers
            )),
            Err(e) => notes.push(format!("work queue stats: {e}")),
        }
        let publish_secs = published
            .confirmed
            .saturating_duration_since(published.first)
            .as_secs_f64();
        let updated_span_ms = (max_updated - first_publish_ms).max(1) as f64;
        Ok::<_, String>(PhaseReport {
            kind,
            n,
            elapsed,
            throughput: n as f64 / elapsed.as_secs_f64().max(1e-9),
            publish_rate: n as f64 / publish_secs.max(1e-9),
            throughput_by_updated_at: n as f64 / (updated_span_ms / 1e3),
            sent_latency: latency(sent_lat),
            provider_latency: latency(provider_lat),
            rss_start_kb,
            rss_peak_kb,
            rss_end_kb: status_kb("VmRSS").unwrap_or(0),
            peak_reset,
            cpu: cpu_delta(&cpu_before, &cpu_after, &mine),
            notes,
        })
    }
    .await;
    if !s.keep {
        if let Err(e) = setup.delete_topology().await {
            println!(
                "warning: could not delete the topology of {}: {e}",
                names.work
            );
        }
        drop_schema(admin, &names).await;
    }
    let _ = setup.close().await;
    let _ = provider.stop.send(());
    let _ = tokio::time::timeout(STEP_LIMIT, provider.task).await;
    let mut report = result?;
    report.rss_end_kb = status_kb("VmRSS").unwrap_or(0);
    report.print();
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// driver

async fn run(s: Settings, sut_rt: Handle) -> BenchResult<Vec<Row>> {
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
    for round in 1..=s.rounds {
        if s.rounds > 1 {
            println!();
            println!("######## round {round} of {}", s.rounds);
        }
        for kind in &s.phases {
            reports.push(run_phase(*kind, &s, &tag, &sut_rt, &admin).await?);
        }
    }
    admin.close().await;
    Ok(summary(&s, &reports))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn summary(s: &Settings, reports: &[PhaseReport]) -> Vec<Row> {
    let mut kinds: Vec<Kind> = Vec::new();
    for k in &s.phases {
        if !kinds.contains(k) {
            kinds.push(*k);
        }
    }
    let of = |k: Kind| reports.iter().filter(move |r| r.kind == k);
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
            format!(
                "{:.0} µs",
                median(
                    of(*k)
                        .map(|r| {
                            let sut = r.cpu.threads.get("sut").copied().unwrap_or(0.0);
                            (sut + r.cpu.postgres_mine) * 1e6 / r.n as f64
                        })
                        .collect()
                )
            ),
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
        rows.push(row(
            "throughput ratio drover/plain (aim)",
            format!("{ratio:.2}"),
            &format!(">= {AIM_RATIO:.1}"),
            if ratio >= AIM_RATIO {
                "reached"
            } else {
                "not reached"
            },
        ));
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
        Ok(rows) => {
            print_table(&rows);
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
