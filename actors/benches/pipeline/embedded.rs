//! The pipeline bench: the embedded default (`cargo run` with no configuration: the in-memory
//! broker, SQLite, the simulated provider) with the provider's latency and failures set to 0,
//! against a plain loop on the same three parts: a task per delivery that parses, `INSERT`s,
//! calls the same simulated provider, `UPDATE`s and acks.
//!
//! No RabbitMQ, PostgreSQL or HTTP is involved, so this shows what drover's own machinery
//! (actors, admission, group commit on SQLite) costs where nothing else does. Throughput is N /
//! (first publish -> N rows `sent`, seen by polling the SQLite file); CPU is this process's
//! threads other than the harness's (the runtime and sqlx's SQLite workers).

use super::*;

use drover_actors::broker::{Outgoing, Route};
use drover_actors::provider::SimulatedConfig;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

/// The plain consumer's statements with SQLite's numbered parameters (`?1` for `$1`).
fn sqlite_sql(postgres: &str) -> String {
    postgres.replace('$', "?")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EmbeddedKind {
    Drover,
    Plain,
}

impl EmbeddedKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            EmbeddedKind::Drover => "embedded drover",
            EmbeddedKind::Plain => "embedded plain",
        }
    }
}

pub(crate) struct EmbeddedReport {
    pub(crate) kind: EmbeddedKind,
    pub(crate) n: usize,
    pub(crate) throughput: f64,
    /// CPU seconds of this process's threads other than the harness's.
    pub(crate) cpu: f64,
    pub(crate) rss_start_kb: u64,
    pub(crate) rss_peak_kb: u64,
}

impl EmbeddedReport {
    pub(crate) fn cpu_per_msg_us(&self) -> f64 {
        self.cpu * 1e6 / self.n as f64
    }
}

fn simulated() -> ProviderConfig {
    ProviderConfig {
        kind: ProviderKind::Simulated,
        simulated: SimulatedConfig {
            latency_ms: 0,
            transient_failure_rate: 0.0,
            permanent_failure_rate: 0.0,
            ..SimulatedConfig::default()
        },
        ..ProviderConfig::default()
    }
}

fn broker_config(s: &Settings) -> BrokerConfig {
    BrokerConfig {
        url: "memory".into(),
        prefetch: s.prefetch,
        memory_max_length: 0,
        ..BrokerConfig::default()
    }
}

/// Run one embedded phase: a fresh SQLite file, N messages published into the memory broker.
pub(crate) async fn run_embedded(
    kind: EmbeddedKind,
    s: &Settings,
    tag: &str,
    sut: &Handle,
) -> BenchResult<EmbeddedReport> {
    let n = s.messages;
    let name = kind.name();
    println!();
    println!("== phase {name} (memory broker + SQLite + simulated provider at 0 ms) ==");
    let path = std::env::temp_dir().join(format!("drover-bench-{tag}-{}.db", kind_file(kind)));
    remove_db(&path);
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let memory = MemoryBroker::default();
    let broker = broker_config(s);
    let marks = Marks::new(n);
    let rss_start_kb = status_kb("VmRSS").unwrap_or(0);
    reset_peak_rss();
    let running = match kind {
        EmbeddedKind::Drover => {
            let pipeline = Pipeline {
                tree: Tree::new(),
                root: "root".into(),
                config: std::sync::Arc::new(PipelineConfig {
                    supervision: SupervisionConfig::default(),
                    broker: broker.clone(),
                    store: StoreConfig {
                        url: url.clone(),
                        ..StoreConfig::default()
                    },
                    provider: simulated(),
                    ..PipelineConfig::default()
                }),
                clock: Clock::new(),
                memory: memory.clone(),
                ops: Default::default(),
            };
            let (root, done) = sut
                .spawn(Box::pin(start_drover(pipeline)))
                .await
                .map_err(|e| err("starting drover")(&e))??;
            Running::Drover { root, done }
        }
        EmbeddedKind::Plain => {
            let pool = sqlite_pool(&path, s.max_connections).await?;
            sqlx::raw_sql(PLAIN_TABLE)
                .execute(&pool)
                .await
                .map_err(|e| err("create table")(&e))?;
            let provider = Provider::from_config(&simulated()).map_err(|e| err("provider")(&e))?;
            let (stop, stopped) = oneshot::channel();
            let task = sut.spawn(plain_loop(
                broker.clone(),
                memory.clone(),
                s.prefetch,
                pool.clone(),
                provider,
                stopped,
            ));
            Running::Plain { stop, task, pool }
        }
    };
    let table = match kind {
        EmbeddedKind::Drover => "messages",
        EmbeddedKind::Plain => "plain_messages",
    };
    let measured = async {
        let publisher = Broker::connect(&broker, &memory)
            .await
            .map_err(|e| err("memory broker")(&e))?
            .publisher()
            .await
            .map_err(|e| err("memory publisher")(&e))?;
        // The poller opens its own connection once the table exists (drover creates it).
        let cpu_before = cpu_snapshot();
        let first = Instant::now();
        for i in 0..n {
            let out =
                Outgoing::new(message_body(&marks, i)).with_message_id(marks.id(i).to_string());
            publisher
                .publish(Route::Work, out)
                .await
                .map_err(|e| err("publish")(&e))?;
        }
        let reader = sqlite_pool(&path, 1).await?;
        let deadline = first + STEP_LIMIT * 12;
        let count = format!("SELECT count(*) FROM {table} WHERE status = 'sent'");
        loop {
            let sent: i64 = sqlx::query_scalar(AssertSqlSafe(count.clone()))
                .fetch_one(&reader)
                .await
                .unwrap_or(0);
            if sent as usize >= n {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{name}: {sent} of {n} sent before the deadline"));
            }
            tokio::time::sleep(DB_POLL).await;
        }
        let elapsed = first.elapsed();
        let cpu_after = cpu_snapshot();
        reader.close().await;
        Ok::<_, String>((elapsed, cpu_before, cpu_after))
    }
    .await;
    let stopped = running.stop().await;
    let rss_peak_kb = status_kb("VmHWM").unwrap_or(0);
    remove_db(&path);
    let (elapsed, before, after) = measured?;
    stopped?;
    let delta = cpu_delta(&before, &after, &HashSet::new());
    let cpu: f64 = delta
        .threads
        .iter()
        .filter(|(thread, _)| !thread.starts_with("harness"))
        .map(|(_, secs)| secs)
        .sum();
    let report = EmbeddedReport {
        kind,
        n,
        throughput: n as f64 / elapsed.as_secs_f64().max(1e-9),
        cpu,
        rss_start_kb,
        rss_peak_kb,
    };
    println!(
        "[{name}] throughput {:.0} msgs/s ({n} messages in {:.3} s); CPU {:.2} s = {:.0} µs/msg (runtime and SQLite threads: {}); peak RSS +{:.1} MiB over the start",
        report.throughput,
        elapsed.as_secs_f64(),
        cpu,
        report.cpu_per_msg_us(),
        delta
            .threads
            .iter()
            .filter(|(t, s)| !t.starts_with("harness") && **s >= 0.01)
            .map(|(t, s)| format!("{t} {s:.2} s"))
            .collect::<Vec<_>>()
            .join(", "),
        mib(rss_peak_kb.saturating_sub(rss_start_kb)),
    );
    Ok(report)
}

fn kind_file(kind: EmbeddedKind) -> &'static str {
    match kind {
        EmbeddedKind::Drover => "drover",
        EmbeddedKind::Plain => "plain",
    }
}

fn remove_db(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

/// A pool set up as drover's SQLite store sets its own up (WAL, `synchronous = NORMAL`).
async fn sqlite_pool(path: &std::path::Path, max: u32) -> BenchResult<SqlitePool> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5));
    SqlitePoolOptions::new()
        .max_connections(max)
        .connect_with(options)
        .await
        .map_err(|e| err("sqlite pool")(&e))
}

enum Running {
    Drover {
        root: ActorRef<SupervisorMessage>,
        done: JoinHandle<()>,
    },
    Plain {
        stop: oneshot::Sender<()>,
        task: JoinHandle<BenchResult<u64>>,
        pool: SqlitePool,
    },
}

impl Running {
    async fn stop(self) -> BenchResult<()> {
        match self {
            Running::Drover { root, done } => stop_root(root, done).await,
            Running::Plain { stop, task, pool } => {
                let _ = stop.send(());
                let errors = tokio::time::timeout(STEP_LIMIT, task)
                    .await
                    .map_err(|_| "plain loop did not stop".to_string())?
                    .map_err(|e| err("plain loop")(&e))??;
                pool.close().await;
                match errors {
                    0 => Ok(()),
                    n => Err(format!("embedded plain: {n} deliveries failed")),
                }
            }
        }
    }
}

/// The plain loop: a task per delivery (at most `prefetch` unacked), each parse, INSERT,
/// send, UPDATE, ack. Returns how many deliveries failed.
async fn plain_loop(
    config: BrokerConfig,
    memory: MemoryBroker,
    prefetch: u16,
    pool: SqlitePool,
    provider: Provider,
    mut stop: oneshot::Receiver<()>,
) -> BenchResult<u64> {
    let broker = Broker::connect(&config, &memory)
        .await
        .map_err(|e| err("memory broker")(&e))?;
    let mut consumer = broker
        .consumer(&config.work_queue, prefetch, "bench-plain")
        .await
        .map_err(|e| err("memory consumer")(&e))?;
    let clock = Clock::new();
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    loop {
        let delivery = tokio::select! {
            _ = &mut stop => break,
            d = consumer.next() => d,
        };
        let Some(Ok(mut delivery)) = delivery else {
            break;
        };
        let (pool, provider, errors) = (pool.clone(), provider.clone(), errors.clone());
        tasks.spawn(async move {
            let ok = plain_one(&pool, &provider, &clock, &delivery.body).await;
            if let Err(e) = &ok {
                if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    println!("[embedded plain] first error: {e}");
                }
            }
            let settled = match ok {
                Ok(()) => delivery.ack().await,
                Err(_) => delivery.nack_requeue().await,
            };
            let _ = settled;
        });
        while tasks.try_join_next().is_some() {}
    }
    tasks.shutdown().await;
    Ok(errors.load(Ordering::Relaxed))
}

async fn plain_one(
    pool: &SqlitePool,
    provider: &Provider,
    clock: &Clock,
    body: &[u8],
) -> Result<(), String> {
    let msg =
        parse(body, &Envelope::default(), &MessageConfig::default()).map_err(|e| e.to_string())?;
    let id = msg.id.to_string();
    sqlx::query(AssertSqlSafe(sqlite_sql(PLAIN_INSERT)))
        .bind(id.as_str())
        .bind(msg.correlation_id.as_str())
        .bind(msg.to.as_str())
        .bind(msg.body.as_str())
        .bind(msg.from.as_deref())
        .bind(clock.now_ms())
        .execute(pool)
        .await
        .map_err(|e| err("insert")(&e))?;
    let sid = match provider.send(&msg, 1).await {
        SendOutcome::Sent {
            provider_message_id,
        } => provider_message_id,
        other => return Err(format!("provider: {other}")),
    };
    sqlx::query(AssertSqlSafe(sqlite_sql(PLAIN_SENT)))
        .bind(id.as_str())
        .bind(sid.as_str())
        .bind(clock.now_ms())
        .execute(pool)
        .await
        .map_err(|e| err("update")(&e))?;
    Ok(())
}
