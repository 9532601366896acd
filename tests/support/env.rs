//! One test's world: its own RabbitMQ topology, PostgreSQL schema and mock provider, and the
//! cleanup that removes them (a drop guard if the test panicked).

use super::*;

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
