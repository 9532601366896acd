//! The harness shared by `tests/pipeline.rs` and `tests/faults.rs`.
//!
//! * [`MockProvider`]: a local HTTP server (axum, on `127.0.0.1:0`) that speaks Twilio's
//!   Messages API, records every call per message id (the `I-Twilio-Idempotency-Token`
//!   header) with its time, and answers as scripted per id or per recipient.
//! * [`TestEnv`]: one test's world: a unique RabbitMQ topology (exchange and queues suffixed
//!   with a uuid), a unique PostgreSQL schema, the mock provider, and a drover [`Config`]
//!   pointing at all three. [`TestEnv::cleanup`] deletes the topology and drops the schema;
//!   if a test panics before, a drop guard does it.
//! * Bounded waits: [`wait_for`] polls a condition every 50 ms under a `tokio::time::timeout`.
//!
//! RabbitMQ comes from `DROVER_TEST_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`)
//! and PostgreSQL from `DROVER_TEST_DATABASE_URL` (default
//! `postgres://drover:drover@127.0.0.1:5432/drover`). When either is unreachable the tests
//! FAIL with a message saying so; they never skip. Only loopback addresses are used.

#![allow(dead_code)] // each test binary uses its own subset

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use drover::{App, Config};
use drover_actors::broker::{
    Broker, BrokerConfig, Delivery, MemoryBroker, Outgoing, Publisher, Route,
};
use drover_actors::provider::ProviderKind;
use drover_actors::store::{MessageRecord, MessageStatus, Store, StoreConfig};
use serde_json::json;
use tokio::time::Instant;
use uuid::Uuid;

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_DATABASE_URL: &str = "postgres://drover:drover@127.0.0.1:5432/drover";

/// The Twilio account the mock expects (and drover is configured with).
pub const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
pub const AUTH_TOKEN: &str = "drover-test-token";
pub const SENDER: &str = "+15550000000";

/// Poll interval of [`wait_for`].
pub const POLL: Duration = Duration::from_millis(50);

pub fn amqp_url() -> String {
    std::env::var("DROVER_TEST_AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.to_owned())
}

pub fn database_url() -> String {
    std::env::var("DROVER_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

/// Logs go to stderr only when `RUST_LOG` is set (cargo does not capture them).
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        drover::telemetry::init(&drover::telemetry::LogConfig {
            level: "info".into(),
            format: drover::telemetry::LogFormat::Pretty,
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Bounded waits
// ---------------------------------------------------------------------------------------------

/// Poll `probe` every [`POLL`] until it returns `Ok`, for at most `limit`. `Err(state)` means
/// "not yet" and describes the current state, which the panic message shows on timeout.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let mut last = String::from("(never probed)");
    let waited = tokio::time::timeout(limit, async {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match probe().await {
                Ok(v) => return v,
                Err(state) => last = state,
            }
        }
    })
    .await;
    match waited {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}; last state: {last}"),
    }
}

/// Wait until the store's counts satisfy `done` (store errors count as "not yet": the
/// database may be restarting). Returns the counts.
pub async fn wait_counts(
    store: &Store,
    what: &str,
    limit: Duration,
    done: impl Fn(&BTreeMap<String, i64>) -> bool,
) -> BTreeMap<String, i64> {
    wait_for(what, limit, || async {
        match store.counts_by_status().await {
            Ok(c) if done(&c) => Ok(c),
            Ok(c) => Err(format!("{c:?}")),
            Err(e) => Err(format!("store error: {e}")),
        }
    })
    .await
}

/// `counts[status]`, 0 if absent.
pub fn count(counts: &BTreeMap<String, i64>, status: MessageStatus) -> i64 {
    counts.get(status.as_str()).copied().unwrap_or(0)
}

/// Sent + failed + invalid.
pub fn terminal(counts: &BTreeMap<String, i64>) -> i64 {
    count(counts, MessageStatus::Sent)
        + count(counts, MessageStatus::Failed)
        + count(counts, MessageStatus::Invalid)
}

/// Wait until message `id` has `status`; returns its record.
pub async fn wait_status(
    store: &Store,
    id: Uuid,
    status: MessageStatus,
    limit: Duration,
) -> MessageRecord {
    wait_for(&format!("message {id} to be {status}"), limit, || async {
        match store.get(id).await {
            Ok(Some(r)) if r.status == status => Ok(r),
            Ok(Some(r)) => Err(format!(
                "status {} after {} attempts, last error {:?}",
                r.status, r.attempts, r.last_error
            )),
            Ok(None) => Err("not in the store".into()),
            Err(e) => Err(format!("store error: {e}")),
        }
    })
    .await
}

/// Paths of the delivery workers alive right now (`root/broker/workers/delivery-N`).
pub fn delivery_workers(app: &App) -> Vec<String> {
    let snap = app.tree.snapshot();
    snap.find("root/broker/workers")
        .map(|w| w.children.iter().map(|c| c.path.clone()).collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// The mock provider
// ---------------------------------------------------------------------------------------------

/// What the mock answers after the scripted failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 201 with a message resource.
    Accept,
    /// 503 `{"code": 20503, ...}` forever.
    Unavailable,
    /// 400 `{"code": code, ...}` (21211: invalid `To`).
    Reject(i64),
    /// 401 `{"code": 20003, ...}`: the account's credentials refused.
    Unauthorized,
    /// 429 `{"code": 20429, ...}`: too many requests.
    TooMany,
}

/// Seeded faults on calls that would be accepted: per call, 503 with `p_unavailable`, 429 with
/// `p_too_many`, and with `p_slow` an acceptance only after `slow_ms` (past the client's
/// timeout: the provider took it, the client cannot know). Percentages of 10,000.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub p_unavailable: u64,
    pub p_too_many: u64,
    pub p_slow: u64,
    pub slow_ms: u64,
}

/// A script for one message id or one recipient: the first `fail_first` calls for a message
/// id answer 503, then every call gets `then`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub fail_first: u32,
    pub then: Answer,
}

impl Rule {
    pub fn accept() -> Rule {
        Rule {
            fail_first: 0,
            then: Answer::Accept,
        }
    }
    pub fn fail_first(n: u32) -> Rule {
        Rule {
            fail_first: n,
            then: Answer::Accept,
        }
    }
    pub fn always_unavailable() -> Rule {
        Rule {
            fail_first: 0,
            then: Answer::Unavailable,
        }
    }
    pub fn unauthorized() -> Rule {
        Rule {
            fail_first: 0,
            then: Answer::Unauthorized,
        }
    }
    pub fn reject(code: i64) -> Rule {
        Rule {
            fail_first: 0,
            then: Answer::Reject(code),
        }
    }
}

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Call {
    /// `I-Twilio-Idempotency-Token`: the message id.
    pub id: String,
    /// When it arrived.
    pub at: Instant,
    /// `X-Correlation-Id`.
    pub correlation_id: Option<String>,
    pub to: String,
    pub from: Option<String>,
    pub body: String,
    /// The form's `Attempt`.
    pub attempt: Option<u32>,
    /// The status the mock answered.
    pub status: u16,
}

/// `lock()` that survives a poisoned mutex (a panicking test thread must not hide the cause).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Default)]
struct MockState {
    calls: Mutex<Vec<Call>>,
    by_id: Mutex<HashMap<String, Rule>>,
    by_recipient: Mutex<HashMap<String, Rule>>,
    default_rule: Mutex<Option<Rule>>,
    /// Simulated latency range, ms.
    latency: Mutex<(u64, u64)>,
    faults: Mutex<Faults>,
    sid_counter: AtomicU64,
    rng: AtomicU64,
}

impl MockState {
    /// xorshift: a different draw per call, no shared RNG crate needed.
    fn next_random(&self) -> u64 {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        x
    }

    fn rule_for(&self, id: &str, to: &str) -> Rule {
        if let Some(r) = lock(&self.by_id).get(id) {
            return *r;
        }
        if let Some(r) = lock(&self.by_recipient).get(to) {
            return *r;
        }
        lock(&self.default_rule).unwrap_or(Rule::accept())
    }
}

/// A Twilio-compatible SMS API on loopback (see the module docs).
#[derive(Debug, Clone)]
pub struct MockProvider {
    pub addr: SocketAddr,
    state: Arc<MockState>,
}

impl MockProvider {
    pub async fn start() -> MockProvider {
        let state = Arc::new(MockState::default());
        state.rng.store(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        let app = Router::new()
            .route(
                "/2010-04-01/Accounts/{sid}/Messages.json",
                post(twilio_create_message),
            )
            .route("/2010-04-01/Accounts/{file}", get(twilio_fetch_account))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the mock provider on 127.0.0.1:0");
        let addr = listener.local_addr().expect("mock provider address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockProvider { addr, state }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_for_id(&self, id: Uuid, rule: Rule) {
        lock(&self.state.by_id).insert(id.to_string(), rule);
    }

    pub fn set_for_recipient(&self, to: &str, rule: Rule) {
        lock(&self.state.by_recipient).insert(to.to_owned(), rule);
    }

    pub fn set_default(&self, rule: Rule) {
        *lock(&self.state.default_rule) = Some(rule);
    }

    /// Seed the mock's generator (latencies and faults), for a reproducible run.
    pub fn seed(&self, seed: u64) {
        self.state.rng.store(seed.max(1), Ordering::Relaxed);
    }

    /// Inject `faults` into calls that would be accepted (drawn from the mock's seeded
    /// generator).
    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.state.faults) = faults;
    }

    /// Answer each call after a random delay in `min_ms..=max_ms` (simulated provider latency).
    pub fn set_latency(&self, min_ms: u64, max_ms: u64) {
        *lock(&self.state.latency) = (min_ms, max_ms.max(min_ms));
    }

    /// Every call, in arrival order.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.state.calls).clone()
    }

    /// The calls for message `id`, in arrival order.
    pub fn calls_for(&self, id: Uuid) -> Vec<Call> {
        let id = id.to_string();
        lock(&self.state.calls)
            .iter()
            .filter(|c| c.id == id)
            .cloned()
            .collect()
    }

    /// Per message id: how many calls, and how many of them were accepted (201).
    pub fn tally(&self) -> HashMap<String, (usize, usize)> {
        let mut out: HashMap<String, (usize, usize)> = HashMap::new();
        for c in lock(&self.state.calls).iter() {
            let e = out.entry(c.id.clone()).or_default();
            e.0 += 1;
            if c.status == 201 {
                e.1 += 1;
            }
        }
        out
    }
}

fn twilio_error(status: StatusCode, code: i64, message: &str) -> Response {
    (
        status,
        axum::Json(json!({
            "code": code,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status.as_u16(),
        })),
    )
        .into_response()
}

fn authorized(headers: &HeaderMap) -> bool {
    let want = format!(
        "Basic {}",
        base64(format!("{ACCOUNT_SID}:{AUTH_TOKEN}").as_bytes())
    );
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == want)
}

/// `GET /2010-04-01/Accounts/{sid}.json`: drover's startup check.
async fn twilio_fetch_account(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let Some(sid) = file.strip_suffix(".json") else {
        return twilio_error(StatusCode::NOT_FOUND, 20404, "not found");
    };
    if sid != ACCOUNT_SID || !authorized(&headers) {
        return twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    axum::Json(json!({"sid": sid, "status": "active", "type": "Full"})).into_response()
}

/// `POST /2010-04-01/Accounts/{sid}/Messages.json`: record, then answer as scripted.
async fn twilio_create_message(
    State(state): State<Arc<MockState>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let at = Instant::now();
    if sid != ACCOUNT_SID || !authorized(&headers) {
        return twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let Some(id) = header("i-twilio-idempotency-token") else {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21000,
            "missing I-Twilio-Idempotency-Token",
        );
    };
    let to = form.get("To").cloned().unwrap_or_default();
    let body = form.get("Body").cloned().unwrap_or_default();
    let from = form.get("From").cloned();
    let (answer, latency) = {
        let rule = state.rule_for(&id, &to);
        let mut calls = lock(&state.calls);
        let earlier = calls.iter().filter(|c| c.id == id).count() as u32;
        let answer = if earlier < rule.fail_first {
            Answer::Unavailable
        } else {
            rule.then
        };
        let faults = *lock(&state.faults);
        let mut slow = false;
        let answer = if answer == Answer::Accept
            && faults.p_unavailable + faults.p_too_many + faults.p_slow > 0
        {
            let draw = state.next_random() % 10_000;
            if draw < faults.p_unavailable {
                Answer::Unavailable
            } else if draw < faults.p_unavailable + faults.p_too_many {
                Answer::TooMany
            } else {
                slow = draw < faults.p_unavailable + faults.p_too_many + faults.p_slow;
                Answer::Accept
            }
        } else {
            answer
        };
        let status = match answer {
            Answer::Accept => 201,
            Answer::Unavailable => 503,
            Answer::Reject(_) => 400,
            Answer::Unauthorized => 401,
            Answer::TooMany => 429,
        };
        calls.push(Call {
            id: id.clone(),
            at,
            correlation_id: header("x-correlation-id"),
            to: to.clone(),
            from: from.clone(),
            body: body.clone(),
            attempt: form.get("Attempt").and_then(|a| a.parse().ok()),
            status,
        });
        let (lo, hi) = *lock(&state.latency);
        let latency = if slow {
            faults.slow_ms
        } else if hi == 0 {
            0
        } else {
            lo + state.next_random() % (hi - lo + 1)
        };
        (answer, latency)
    };
    if latency > 0 {
        // Simulated provider latency (not a synchronisation).
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    match answer {
        Answer::Accept => {
            let n = state.sid_counter.fetch_add(1, Ordering::Relaxed);
            let msg_sid = format!(
                "SM{:032x}",
                (u128::from(n) << 64) | u128::from(at.elapsed().subsec_nanos())
            );
            (
                StatusCode::CREATED,
                axum::Json(json!({
                    "sid": msg_sid,
                    "status": "queued",
                    "to": to,
                    "from": from,
                    "body": body,
                    "account_sid": sid,
                    "api_version": "2010-04-01",
                    "num_segments": "1",
                    "num_media": "0",
                    "direction": "outbound-api",
                    "price": null,
                    "error_code": null,
                    "error_message": null,
                    "uri": format!("/2010-04-01/Accounts/{sid}/Messages/{msg_sid}.json"),
                })),
            )
                .into_response()
        }
        Answer::Unavailable => twilio_error(
            StatusCode::SERVICE_UNAVAILABLE,
            20503,
            "Service temporarily unavailable",
        ),
        Answer::Reject(code) => twilio_error(
            StatusCode::BAD_REQUEST,
            code,
            &format!("The 'To' number {to} is not a valid phone number."),
        ),
        Answer::Unauthorized => twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate"),
        Answer::TooMany => twilio_error(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests"),
    }
}

/// Standard base64 with padding (for the expected basic-auth header).
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

/// A valid message as a publisher would put it on the work queue.
pub fn sms(id: Uuid, to: &str, body: &str, correlation_id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id.to_string(),
        "to": to,
        "body": body,
        "correlation_id": correlation_id,
    }))
    .expect("json")
}

/// The `n`-th test recipient: a valid E.164 number.
pub fn recipient(n: usize) -> String {
    format!("+1555{:07}", n % 10_000_000)
}

// ---------------------------------------------------------------------------------------------
// The test environment
// ---------------------------------------------------------------------------------------------

/// A publisher of test traffic: its own connection and confirm-mode channel, publishing to
/// the work queue exactly like production publishers do.
#[derive(Debug)]
pub struct TestPublisher {
    pub broker: Broker,
    pub publisher: Publisher,
}

impl TestPublisher {
    /// Publish `body` to the work queue with optional AMQP message / correlation ids; returns
    /// once RabbitMQ confirmed it.
    pub async fn publish(
        &self,
        body: Vec<u8>,
        message_id: Option<&str>,
        correlation_id: Option<&str>,
    ) {
        let mut out = Outgoing::new(body);
        out.message_id = message_id.map(str::to_owned);
        out.correlation_id = correlation_id.map(str::to_owned);
        self.publisher
            .publish(Route::Work, out)
            .await
            .unwrap_or_else(|e| panic!("publishing test traffic failed: {e}"));
    }

    /// Publish a valid message with this id (and the id as AMQP message id).
    pub async fn publish_sms(&self, id: Uuid, to: &str, body: &str, correlation_id: &str) {
        self.publish(
            sms(id, to, body, correlation_id),
            Some(&id.to_string()),
            Some(correlation_id),
        )
        .await;
    }

    /// Publish `ids.len()` valid messages (`load {i}`, correlation id `corr-{i}`), 64 confirms
    /// in flight at once. Sequential confirms of persistent messages cost a disk sync each
    /// (about 10 ms on a busy machine): published one by one, a load was consumed as fast as
    /// it was published, so a fault "mid-load" found it all sent.
    pub async fn publish_load(&self, ids: &[Uuid]) {
        use futures::StreamExt as _;
        futures::stream::iter(ids.iter().enumerate())
            .map(|(i, id)| async move {
                self.publish_sms(
                    *id,
                    &recipient(i),
                    &format!("load {i}"),
                    &format!("corr-{i}"),
                )
                .await;
            })
            .buffer_unordered(64)
            .collect::<Vec<()>>()
            .await;
    }

    pub async fn close(self) {
        let _ = self.broker.close().await;
    }
}

/// What [`TestEnv::cleanup`] removes (also run by its drop guard if a test panicked first).
#[derive(Debug, Clone)]
struct CleanupPlan {
    broker: BrokerConfig,
    database_url: String,
    schema: String,
    /// A vhost of the test's own, deleted last (with whatever it still holds).
    vhost: Option<String>,
}

impl CleanupPlan {
    async fn run(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        match Broker::connect_named(&self.broker, &MemoryBroker::new(), "drover-test-cleanup").await
        {
            Ok(b) => {
                if let Err(e) = b.delete_topology().await {
                    errors.push(format!("delete topology {}: {e}", self.broker.exchange));
                }
                let _ = b.close().await;
            }
            Err(e) => errors.push(format!("connect for cleanup: {e}")),
        }
        match sqlx::PgPool::connect(&self.database_url).await {
            Ok(pool) => {
                // The schema name is generated from a uuid (a plain identifier): safe to splice.
                let drop = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema);
                if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
                    .execute(&pool)
                    .await
                {
                    errors.push(format!("drop schema {}: {e}", self.schema));
                }
                pool.close().await;
            }
            Err(e) => errors.push(format!("connect to PostgreSQL for cleanup: {e}")),
        }
        if let Some(vhost) = &self.vhost {
            let out = tokio::task::spawn_blocking({
                let vhost = vhost.clone();
                move || {
                    std::process::Command::new("rabbitmqctl")
                        .args(["-q", "delete_vhost", &vhost])
                        .output()
                }
            })
            .await;
            match out {
                Ok(Ok(o)) if o.status.success() => {}
                Ok(Ok(o)) => errors.push(format!(
                    "rabbitmqctl delete_vhost {vhost}: {}",
                    String::from_utf8_lossy(&o.stderr)
                )),
                Ok(Err(e)) => errors.push(format!("cannot run rabbitmqctl: {e}")),
                Err(e) => errors.push(format!("rabbitmqctl thread: {e}")),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

#[derive(Debug)]
struct CleanupGuard {
    plan: CleanupPlan,
    done: bool,
}

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // The test failed before cleaning up: do it on a thread of its own (Drop cannot await).
        let plan = self.plan.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            rt.block_on(async move {
                match tokio::time::timeout(Duration::from_secs(15), plan.run()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => eprintln!("cleanup after a failed test: {e}"),
                    Err(_) => eprintln!("cleanup after a failed test timed out"),
                }
            });
        })
        .join();
    }
}

/// One test's world (see the module docs).
#[derive(Debug)]
pub struct TestEnv {
    /// The uuid every name of this test carries.
    pub id: String,
    /// The RabbitMQ vhost the test's topology lives in (`/` unless [`TestEnv::in_own_vhost`]).
    pub vhost: String,
    /// drover's configuration; adjust it before [`TestEnv::start`].
    pub config: Config,
    pub provider: MockProvider,
    guard: CleanupGuard,
}

impl TestEnv {
    /// Check that RabbitMQ and PostgreSQL answer (panicking with a clear message if not),
    /// start the mock provider, and build the configuration.
    pub async fn new() -> TestEnv {
        Self::build(false).await
    }

    /// Like [`TestEnv::new`], but in a RabbitMQ vhost of the test's own (created with
    /// `rabbitmqctl`, deleted at cleanup), so that disruptive operations such as
    /// `rabbitmqctl close_all_connections -p <vhost>` hit only this test's connections and not
    /// whatever else uses the broker.
    pub async fn in_own_vhost() -> TestEnv {
        Self::build(true).await
    }

    async fn build(own_vhost: bool) -> TestEnv {
        init_logging();
        let id = Uuid::new_v4().simple().to_string();
        let prefix = format!("drover-test-{id}");
        let base_url = amqp_url();
        let names = |url: String| BrokerConfig {
            url,
            exchange: prefix.clone(),
            work_queue: format!("{prefix}.outbound"),
            failed_queue: format!("{prefix}.failed"),
            invalid_queue: format!("{prefix}.invalid"),
            prefetch: 32,
            connect_timeout_ms: 5_000,
            confirm_timeout_ms: 5_000,
            ..BrokerConfig::default()
        };
        // Both services must answer (fail, never skip). The broker check declares the test's
        // topology on the default vhost: kept when the test uses it, deleted at once otherwise.
        require_postgres().await;
        require_rabbitmq(&names(base_url.clone()), own_vhost).await;
        let (url, vhost) = if own_vhost {
            let vhost = prefix.clone();
            let user = amqp_user(&base_url);
            run_command("rabbitmqctl", &["-q", "add_vhost", &vhost]).await;
            run_command(
                "rabbitmqctl",
                &[
                    "-q",
                    "set_permissions",
                    "-p",
                    &vhost,
                    &user,
                    ".*",
                    ".*",
                    ".*",
                ],
            )
            .await;
            (with_vhost(&base_url, &vhost), vhost)
        } else {
            (base_url, "/".to_owned())
        };
        let broker = names(url);
        let schema = format!("drover_test_{id}");

        let provider = MockProvider::start().await;
        let mut config = Config::default();
        config.http.addr = "127.0.0.1:0".parse().expect("literal");
        config.startup.check = true;
        config.startup.deadline_ms = 15_000;
        config.broker = broker.clone();
        config.store = StoreConfig {
            url: database_url(),
            max_connections: 8,
            acquire_timeout_ms: 3_000,
            schema: Some(schema.clone()),
            ..StoreConfig::default()
        };
        config.provider.kind = ProviderKind::Twilio;
        config.provider.timeout_ms = 2_000;
        config.provider.twilio.base_url = provider.base_url();
        config.provider.twilio.account_sid = ACCOUNT_SID.into();
        config.provider.twilio.auth_token = AUTH_TOKEN.into();
        config.provider.twilio.from = Some(SENDER.into());
        config.provider.circuit.open_ms = 1_000;
        config.delivery.retry_base_ms = 50;
        config.delivery.retry_jitter = 0.0;
        config.delivery.retry_max_ms = 2_000;
        config.delivery.worker_shutdown_ms = 3_000;
        // A provider call (2 s) plus its margin (0.5 s) leaves 2.5 s for the admission: at 3 s
        // (0.5 s of slack) admissions slowed by a loaded CI machine were given back (recorded
        // `deferred`, rescheduled), which is right but made "one attempt" tests flaky.
        config.delivery.sending_lease_ms = 5_000;
        config.scheduler.poll_ms = 100;
        config.scheduler.lease_ms = 5_000;
        config.supervision.backoff.max_ms = 2_000;

        TestEnv {
            id,
            config,
            provider,
            guard: CleanupGuard {
                plan: CleanupPlan {
                    broker,
                    database_url: database_url(),
                    schema,
                    vhost: own_vhost.then(|| vhost.clone()),
                },
                done: false,
            },
            vhost,
        }
    }

    /// Start drover with [`TestEnv::config`] (startup check on).
    pub async fn start(&self) -> App {
        drover::start(self.config.clone())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "drover did not start: {e}\n(RabbitMQ at {}, PostgreSQL at {}: both must be \
                 running; these tests fail rather than skip)",
                    self.config.broker.redacted_url(),
                    database_url()
                )
            })
    }

    /// A store handle of our own on the test's schema (not drover's).
    pub async fn store(&self) -> Store {
        Store::connect(&self.config.store)
            .await
            .unwrap_or_else(|e| panic!("cannot open the test store: {e}"))
    }

    /// A broker connection of our own on the test's topology.
    pub async fn broker(&self, name: &str) -> Broker {
        Broker::connect_named(&self.config.broker, &MemoryBroker::new(), name)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot connect to RabbitMQ at {}: {e}",
                    self.config.broker.redacted_url()
                )
            })
    }

    pub async fn publisher(&self) -> TestPublisher {
        let broker = self.broker("drover-test-publisher").await;
        let publisher = broker
            .publisher()
            .await
            .unwrap_or_else(|e| panic!("cannot open a test publisher: {e}"));
        TestPublisher { broker, publisher }
    }

    /// Take exactly `n` messages from `queue` (acking them), waiting at most `limit`; then
    /// check that no further one is there.
    pub async fn take(&self, queue: &str, n: usize, limit: Duration) -> Vec<Delivery> {
        let broker = self.broker("drover-test-reader").await;
        let tag = format!("drover-test-reader-{}", Uuid::new_v4().simple());
        let mut consumer = broker
            .consumer(queue, 16, &tag)
            .await
            .unwrap_or_else(|e| panic!("cannot consume {queue}: {e}"));
        let mut got = Vec::with_capacity(n);
        let deadline = Instant::now() + limit;
        while got.len() < n {
            let next = tokio::time::timeout_at(deadline, consumer.next()).await;
            match next {
                Ok(Some(Ok(mut d))) => {
                    d.ack().await.expect("ack a test read");
                    got.push(d);
                }
                Ok(other) => panic!("consumer of {queue} ended: {other:?}"),
                Err(_) => panic!(
                    "timed out after {limit:?}: {} of {n} messages arrived in {queue}",
                    got.len()
                ),
            }
        }
        // No more than `n`: with our consumer closed (anything it held but did not ack goes
        // back), the queue must be empty. The broker's count, not a quiet window.
        let _ = consumer.close().await;
        let stats = broker
            .queue_stats(queue)
            .await
            .unwrap_or_else(|e| panic!("cannot read {queue}'s counts: {e}"));
        assert_eq!(
            stats.ready, 0,
            "{queue} holds more than the {n} expected messages"
        );
        let _ = broker.close().await;
        got
    }

    /// Wait until the work queue has nothing ready and no delivery worker is alive (every
    /// delivery settled), on two polls in a row.
    pub async fn wait_drained(&self, app: &App, limit: Duration) {
        let broker = self.broker("drover-test-monitor").await;
        let queue = &self.config.broker.work_queue;
        let mut quiet = 0;
        let mut last = String::new();
        let drained = tokio::time::timeout(limit, async {
            let mut tick = tokio::time::interval(POLL);
            loop {
                tick.tick().await;
                let workers = delivery_workers(app).len();
                match broker.queue_stats(queue).await {
                    Ok(s) if s.ready == 0 && workers == 0 => {
                        quiet += 1;
                        if quiet >= 2 {
                            return;
                        }
                    }
                    Ok(s) => {
                        quiet = 0;
                        last = format!(
                            "ready {}, consumers {}, delivery workers {workers}",
                            s.ready, s.consumers
                        );
                    }
                    Err(e) => {
                        quiet = 0;
                        last = format!("queue_stats: {e}");
                    }
                }
            }
        })
        .await;
        let _ = broker.close().await;
        assert!(
            drained.is_ok(),
            "the work queue did not drain within {limit:?}: {last}"
        );
    }

    /// After `app.shutdown()`: the work queue holds nothing, neither ready nor unacknowledged
    /// (`rabbitmqctl list_queues`). Polled briefly, since RabbitMQ requeues a closed
    /// connection's unacked deliveries asynchronously (anything left would show up as ready).
    pub async fn assert_work_queue_empty_after_shutdown(&self) {
        let queue = &self.config.broker.work_queue;
        wait_for(
            &format!("the work queue {queue} to hold nothing after shutdown"),
            Duration::from_secs(10),
            || async {
                match rabbitmqctl_queue_counts(&self.vhost, queue).await {
                    (0, 0) => Ok(()),
                    (ready, unacked) => Err(format!("ready {ready}, unacked {unacked}")),
                }
            },
        )
        .await;
    }

    /// Delete the topology and drop the schema.
    pub async fn cleanup(mut self) {
        let plan = self.guard.plan.clone();
        self.guard.done = true;
        match tokio::time::timeout(Duration::from_secs(15), plan.run()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("cleanup failed: {e}"),
            Err(_) => panic!("cleanup timed out"),
        }
    }
}

/// The user name in an AMQP URL (`guest` if none).
fn amqp_user(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    match authority.rsplit_once('@') {
        Some((creds, _)) => creds.split(':').next().unwrap_or("guest").to_owned(),
        None => "guest".to_owned(),
    }
}

/// `url` with its vhost replaced by `vhost` (a name of `[a-z0-9-]`, needing no escaping).
fn with_vhost(url: &str, vhost: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("amqp", url));
    let authority = rest.split('/').next().unwrap_or_default();
    format!("{scheme}://{authority}/{vhost}")
}

/// Fail (never skip) when RabbitMQ does not answer.
async fn require_rabbitmq(broker: &BrokerConfig, delete_topology: bool) {
    match Broker::connect_named(broker, &MemoryBroker::new(), "drover-test-check").await {
        Ok(b) => {
            if delete_topology {
                let _ = b.delete_topology().await;
            }
            let _ = b.close().await;
        }
        Err(e) => panic!(
            "RabbitMQ is unreachable at {}: {e}\nThese tests need a running RabbitMQ (set \
             DROVER_TEST_AMQP_URL to use another one than {DEFAULT_AMQP_URL}); they fail \
             rather than skip.",
            broker.redacted_url()
        ),
    }
}

/// Fail (never skip) when PostgreSQL does not answer.
async fn require_postgres() {
    let url = database_url();
    let reachable = async {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url)
            .await?;
        sqlx::query("SELECT 1").execute(&pool).await?;
        pool.close().await;
        Ok::<(), sqlx::Error>(())
    };
    if let Err(e) = reachable.await {
        panic!(
            "PostgreSQL is unreachable at {url}: {e}\nThese tests need a running PostgreSQL \
             whose role may create schemas (set DROVER_TEST_DATABASE_URL to use another one \
             than {DEFAULT_DATABASE_URL}); they fail rather than skip."
        );
    }
}

/// Run a command to completion on a blocking thread; panic with its output if it fails.
pub async fn run_command(program: &str, args: &[&str]) -> String {
    let (program, args): (String, Vec<String>) = (
        program.to_owned(),
        args.iter().map(|a| (*a).to_owned()).collect(),
    );
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(&program)
            .args(&args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program} {args:?}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .expect("command thread")
}

/// Attempts of a record cut off mid-call (`interrupted`: its worker or process died;
/// `ambiguous`: the provider may have taken it): the only ones that may have sent it twice.
pub fn cut_off(rec: &MessageRecord) -> usize {
    rec.history
        .iter()
        .filter(|a| matches!(a.error_class.as_deref(), Some("interrupted" | "ambiguous")))
        .count()
}

/// What the invariants of a finished load found: how many messages reached the provider more
/// than once in all, and how many attempts were cut off.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadTally {
    pub duplicates: usize,
    pub cut_off: usize,
}

/// Every one of `ids` recorded `sent` and reached the provider, and a message reached it more
/// than once only as often as it had attempts cut off.
pub async fn assert_all_sent_once_but_cut_off(
    store: &Store,
    provider: &MockProvider,
    ids: &[Uuid],
) -> LoadTally {
    let calls: HashMap<String, usize> = provider
        .tally()
        .into_iter()
        .map(|(k, (calls, _))| (k, calls))
        .collect();
    let mut t = LoadTally::default();
    for id in ids {
        let rec = store
            .get(*id)
            .await
            .unwrap()
            .expect("every message is recorded");
        assert_eq!(rec.status, MessageStatus::Sent, "{id}");
        let n = calls.get(&id.to_string()).copied().unwrap_or(0);
        assert!(n >= 1, "{id} never reached the provider");
        let cut = cut_off(&rec);
        assert!(
            n - 1 <= cut,
            "{id}: {n} provider calls with {cut} cut-off attempts: {:?}",
            rec.history
        );
        t.duplicates += n - 1;
        t.cut_off += cut;
    }
    t
}

/// What `rabbitmqctl list_queues` is asked for, to be read by [`parse_queue_counts`].
pub const LIST_QUEUE_COUNTS: [&str; 5] = [
    "name",
    "messages_ready",
    "messages_unacknowledged",
    "--formatter",
    "json",
];

/// Right after a fault ended: the load of `total` was not over yet (the fault overlapped
/// messages in flight, not an idle pipeline), and it goes on: at least `step` more messages
/// (or the rest) become terminal after it, within `limit`. Returns (done at the fault's end,
/// done after the step).
pub async fn assert_flowing_after(
    store: &Store,
    what: &str,
    total: usize,
    step: i64,
    limit: Duration,
) -> (i64, i64) {
    // The store may itself be coming back (a PostgreSQL restart): the first answer counts.
    let c = wait_counts(store, "the store to answer", limit, |_| true).await;
    let done = terminal(&c);
    assert!(
        done < total as i64,
        "the load was over when {what} ended ({done} of {total} done): it hit an idle pipeline"
    );
    let goal = (done + step).min(total as i64);
    let c = wait_counts(store, &format!("progress after {what}"), limit, |c| {
        terminal(c) >= goal
    })
    .await;
    println!(
        "[{what}] {done}/{total} done when it ended, {} after",
        terminal(&c)
    );
    (done, terminal(&c))
}

/// Wait (at most 60 s) until a tenth of a load of `n` is sent: the load is flowing, and most
/// of it is still to come.
pub async fn wait_mid_load(store: &Store, n: usize) {
    wait_counts(
        store,
        "a tenth of the load sent",
        Duration::from_secs(60),
        |c| count(c, MessageStatus::Sent) >= (n / 10) as i64,
    )
    .await;
}

/// Ready and unacknowledged messages of `queue` in `rabbitmqctl list_queues --formatter json`
/// output.
pub fn parse_queue_counts(out: &str, queue: &str) -> (u64, u64) {
    let rows: Vec<serde_json::Value> = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("cannot parse rabbitmqctl list_queues output ({e}): {out}"));
    let row = rows
        .iter()
        .find(|r| r["name"] == queue)
        .unwrap_or_else(|| panic!("queue {queue} not listed by rabbitmqctl: {out}"));
    let n = |k: &str| row[k].as_u64().unwrap_or_else(|| panic!("{k} in {row}"));
    (n("messages_ready"), n("messages_unacknowledged"))
}

/// Names of the client connections open in `vhost` (`rabbitmqctl list_connections`).
pub async fn rabbitmqctl_connections(vhost: &str) -> Vec<String> {
    let out = run_command(
        "rabbitmqctl",
        &[
            "-q",
            "list_connections",
            "vhost",
            "client_properties",
            "--formatter",
            "json",
        ],
    )
    .await;
    let rows: Vec<serde_json::Value> = serde_json::from_str(out.trim()).unwrap_or_else(|e| {
        panic!("cannot parse rabbitmqctl list_connections output ({e}): {out}")
    });
    rows.iter()
        .filter(|r| r["vhost"] == vhost)
        .map(|r| {
            // client_properties is a list of [key, type, value] triples.
            r["client_properties"]
                .as_array()
                .and_then(|props| {
                    props.iter().find_map(|p| {
                        (p[0] == "connection_name").then(|| p[2].as_str().map(str::to_owned))?
                    })
                })
                .unwrap_or_else(|| "(unnamed)".to_owned())
        })
        .collect()
}

/// `(messages_ready, messages_unacknowledged)` of `queue` in `vhost`, from
/// `rabbitmqctl list_queues`.
pub async fn rabbitmqctl_queue_counts(vhost: &str, queue: &str) -> (u64, u64) {
    let out = run_command(
        "rabbitmqctl",
        &[
            &["-q", "list_queues", "-p", vhost][..],
            &LIST_QUEUE_COUNTS[..],
        ]
        .concat(),
    )
    .await;
    parse_queue_counts(&out, queue)
}

// ---- in-process HTTP ----------------------------------------------------------------------------

/// An in-process HTTP answer: status, headers, body (JSON if it parses, else a JSON string)
/// and the raw text.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: serde_json::Value,
    pub text: String,
}

/// One request; `headers` are added as given (a JSON body gets its content type unless one
/// is among them).
pub async fn request(
    r: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;
    let mut req = axum::http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if !body.is_empty()
        && !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        req = req.header("content-type", "application/json");
    }
    let resp = r
        .clone()
        .oneshot(req.body(axum::body::Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text.clone()));
    Reply {
        status,
        headers,
        body,
        text,
    }
}

// ---- the binary ---------------------------------------------------------------------------------

/// The drover binary with only what the test sets: nothing from the caller's `DROVER_*`
/// environment; JSON logs.
pub fn drover_binary() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_drover"));
    for (k, _) in std::env::vars() {
        if k.starts_with("DROVER_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("DROVER_LOG__FORMAT", "json")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// The binary on `env`'s configuration (written to a file), in a directory of its own. Its
/// logs go to `drover.log` there: a pipe nobody reads would fill up and block it.
pub fn spawn_binary(env: &TestEnv) -> (tokio::process::Child, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("drover-binary-{}", env.id));
    std::fs::create_dir_all(&dir).unwrap();
    let config_file = dir.join("drover.toml");
    std::fs::write(&config_file, toml::to_string(&env.config).unwrap()).unwrap();
    let log = std::fs::File::create(dir.join("drover.log")).unwrap();
    let child = drover_binary()
        .arg("--config")
        .arg(&config_file)
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    (child, dir)
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---- a TCP proxy that can be cut ---------------------------------------------------------------

/// A loopback TCP proxy in front of a dependency: [`TcpProxy::cut`] closes every connection
/// through it and refuses new ones, and [`TcpProxy::restore`] listens again on the same port.
/// A dependency "down" for one test only, with no side effect on anything else using it.
#[derive(Debug)]
pub struct TcpProxy {
    pub addr: SocketAddr,
    upstream: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicU64>,
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, _) = tokio::sync::watch::channel(false);
        let proxy = TcpProxy {
            addr,
            upstream,
            stop,
            task: Mutex::new(None),
            accepted: Arc::new(AtomicU64::new(0)),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let upstream = self.upstream;
        let mut stopped = self.stop.subscribe();
        let accepted = self.accepted.clone();
        let stop = self.stop.clone();
        let task = tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                    _ = stopped.wait_for(|s| *s) => return,
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let mut cut = stop.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|s| *s) => {}
                    }
                });
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    /// Close every connection through the proxy and stop listening.
    pub async fn cut(&self) {
        self.stop.send_replace(true);
        let task = self.task.lock().unwrap().take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }

    /// Listen again, on the same port.
    pub async fn restore(&self) {
        self.stop.send_replace(false);
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    /// `url` with its host and port replaced by the proxy's.
    pub fn url_for(&self, url: &str) -> String {
        let mut u = url::Url::parse(url).expect("a URL");
        u.set_host(Some("127.0.0.1")).unwrap();
        u.set_port(Some(self.addr.port())).unwrap();
        u.to_string()
    }
}

/// The loopback address of a URL's host and port (`amqp://…@127.0.0.1:5672/…`).
pub fn socket_of(url: &str) -> SocketAddr {
    let u = url::Url::parse(url).expect("a URL");
    let host = u.host_str().expect("a host");
    let port = u.port_or_known_default().unwrap_or(5672);
    format!("{host}:{port}")
        .parse()
        .expect("a loopback IP in the test URL")
}

// ---- an alert webhook --------------------------------------------------------------------------

/// A webhook on loopback: every alert POSTed to it comes out of the receiver.
pub async fn webhook() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) {
    use axum::Json;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    let app = Router::new()
        .route(
            "/alerts",
            post(
                |State(tx): State<tokio::sync::mpsc::UnboundedSender<serde_json::Value>>,
                 Json(v): Json<serde_json::Value>| async move {
                    let _ = tx.send(v);
                    "ok"
                },
            ),
        )
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/alerts"), rx)
}

/// Wait (at most `limit`) for an alert of `kind`; others are skipped.
pub async fn alert_of(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    kind: &str,
    limit: Duration,
) -> serde_json::Value {
    tokio::time::timeout(limit, async {
        loop {
            let v = rx.recv().await.expect("webhook channel open");
            if v["kind"] == kind {
                return v;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {kind} alert within {limit:?}"))
}

// ---- a RabbitMQ node of the test's own ---------------------------------------------------------

/// A RabbitMQ node of one test's own (Debian's `rabbitmq-server`, on a free loopback port,
/// its data in a temporary directory), so that the test can stop and start the whole node
/// without touching the shared one every other test uses. Stopped and deleted on drop.
#[derive(Debug)]
pub struct PrivateRabbit {
    pub node: String,
    pub port: u16,
    dist_port: u16,
    dir: std::path::PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PrivateRabbit {
    /// Start the node and wait (bounded) until it serves AMQP.
    pub async fn start() -> PrivateRabbit {
        let id = Uuid::new_v4().simple().to_string();
        let host = run_command("hostname", &["-s"]).await.trim().to_owned();
        let dir = std::env::temp_dir().join(format!("drover-rabbit-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        let rabbit = PrivateRabbit {
            node: format!("drover-{}@{host}", &id[..12]),
            port: free_port(),
            dist_port: free_port(),
            dir,
        };
        // The server drops to the `rabbitmq` user when started as root: it must own its data.
        let _ = std::process::Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&rabbit.dir)
            .status();
        rabbit.boot().await;
        rabbit
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn server(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new("rabbitmq-server");
        let d = |p: &str| self.dir.join(p).display().to_string();
        cmd.arg("-detached")
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d("mnesia"))
            .env("RABBITMQ_LOG_BASE", d("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", d("pid"));
        cmd
    }

    /// Start the node (again: same name, same data) and wait until it serves AMQP.
    pub async fn boot(&self) {
        let status = self.server().status().expect("rabbitmq-server runs");
        assert!(status.success(), "rabbitmq-server -detached: {status}");
        let node = self.node.clone();
        wait_for(
            &format!("RabbitMQ node {node} to boot"),
            Duration::from_secs(90),
            || async {
                let ok = tokio::process::Command::new("rabbitmqctl")
                    .args(["-q", "-n", &node, "await_startup", "--timeout", "5"])
                    .kill_on_drop(true)
                    .output()
                    .await
                    .is_ok_and(|o| o.status.success());
                if ok && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    Ok(())
                } else {
                    Err("not yet".to_owned())
                }
            },
        )
        .await;
    }

    /// Stop the whole node (every connection cut, the Erlang VM gone).
    pub async fn stop(&self) {
        run_command("rabbitmqctl", &["-q", "-n", &self.node, "stop"]).await;
    }

    /// `rabbitmqctl -n <node> args...`; its stdout.
    pub async fn ctl(&self, args: &[&str]) -> String {
        let mut all = vec!["-q", "-n", self.node.as_str()];
        all.extend_from_slice(args);
        run_command("rabbitmqctl", &all).await
    }

    /// Ready and unacknowledged messages of `queue` on this node's default vhost.
    pub async fn queue_counts(&self, queue: &str) -> (u64, u64) {
        let out = self
            .ctl(&[&["list_queues"][..], &LIST_QUEUE_COUNTS[..]].concat())
            .await;
        parse_queue_counts(&out, queue)
    }

    /// Kill the node's Erlang VM with SIGKILL, as a crash or a power cut would: only what it
    /// had written to disk (confirmed persistent messages) survives. Waits until it is gone.
    pub async fn kill(&self) {
        let pid = std::fs::read_to_string(self.dir.join("pid")).expect("the node's pid file");
        let pid = pid.trim().to_owned();
        run_command("kill", &["-KILL", &pid]).await;
        wait_for(
            "the RabbitMQ node to die",
            Duration::from_secs(30),
            || async {
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                    Ok(())
                } else {
                    Err("still listening".to_owned())
                }
            },
        )
        .await;
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-q", "-n", &self.node, "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
