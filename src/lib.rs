//! # drover
//!
//! A self-healing message delivery service, built as an Erlang/OTP-style supervision tree on
//! `ractor`. This crate holds what runs before the tree starts and after it stops: config
//! loading ([`config`]), logging ([`telemetry`]), the HTTP status endpoint ([`http`]) and its
//! metrics ([`metrics`]),
//! and [`run`], which the thin binary calls and tests call in-process.
//! Everything inside the tree lives in the `drover-actors` crate.

pub mod access;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod exit;
pub mod http;
pub mod metrics;
pub mod openapi;
pub mod responses;
pub mod telemetry;
pub mod tree_text;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use drover_actors::broker::{Broker, MemoryBroker};
use drover_actors::clock::Clock;
use drover_actors::pipeline::alerts;
use drover_actors::pipeline::ops::Ops;
use drover_actors::pipeline::{Pipeline, pipeline_children};
use drover_actors::provider::Provider;
use drover_actors::store::Store;

use drover_actors::demo::demo_spec;
use drover_actors::supervisor::{
    ChildSpec, Strategy, Supervisor, SupervisorArgs, SupervisorMessage, SupervisorSpec,
};
use drover_actors::tree::Tree;
use ractor::{Actor, ActorRef};
use tokio::task::JoinHandle;

pub use config::Config;
pub use exit::RunError;

/// The path of the root supervisor.
pub const ROOT: &str = "root";

/// The root supervisor's spec. One for one: its children are independent subtrees (the
/// broker subtree holds everything that depends on the connection).
pub fn root_spec(config: &Config, pipeline: &Pipeline) -> SupervisorSpec {
    let sup = &config.supervision;
    let mut spec = SupervisorSpec::new(Strategy::OneForOne, sup.intensity()).seed(sup.seed);
    if config.pipeline.enabled {
        for child in pipeline_children(pipeline) {
            spec = spec.child(child);
        }
    }
    if config.demo.enabled {
        let (demo, supervision) = (config.demo.clone(), sup.clone());
        spec = spec.child(
            ChildSpec::supervisor("demo", move |_| demo_spec(&demo, &supervision))
                .backoff(sup.backoff),
        );
    }
    spec
}

/// A running drover: the tree and the HTTP endpoint.
#[derive(Debug)]
pub struct App {
    /// Where the HTTP endpoint listens (useful with port 0).
    pub addr: SocketAddr,
    pub tree: Tree,
    pub pipeline: Pipeline,
    pub root: ActorRef<SupervisorMessage>,
    /// This app's metrics recorder (`GET /metrics`).
    pub metrics: metrics::Metrics,
    /// The admin configuration the endpoint was started with.
    pub admin: http::AdminConfig,
    /// Who may use which route (shared with the endpoint: the same rate limit).
    pub access: access::Access,
    /// The OpenAPI description, rendered once at start and shared by every router.
    openapi: std::sync::Arc<str>,
    root_done: JoinHandle<()>,
    http_stop: tokio::sync::oneshot::Sender<()>,
    http_task: JoinHandle<std::io::Result<()>>,
    /// Samples the queue depths for `/metrics` (none without the pipeline); stops when the
    /// app is dropped or has served.
    /// `[pipeline] enabled`: the endpoint serves the pipeline's routes.
    pipeline_enabled: bool,
}

/// Check that the database, the broker and the provider answer before the tree starts. Each
/// is tried again with backoff (100 ms doubling to 2 s, each failed try logged) until
/// `startup.deadline_ms`: started together with its dependencies (compose, Kubernetes),
/// drover waits for a broker still booting instead of exiting at the first refusal. The three
/// are checked side by side; past the deadline, drover refuses to start (exit code 3) naming
/// every one still unreachable and why. An error that waiting cannot cure (a certificate the
/// broker or drover does not trust, a queue of another type) ends its wait at once.
pub async fn preflight(config: &Config, memory: &MemoryBroker) -> Result<(), RunError> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(config.startup.deadline_ms);
    let providers = config
        .provider
        .chain()
        .into_iter()
        .map(|c| Provider::from_config(c).map(|p| (c.name.clone(), p)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| RunError::Unavailable("provider", e.to_string()))?;
    let database = until_deadline("database", deadline, || async {
        let store = Store::connect(&config.store).await.map_err(|e| Failed {
            permanent: e.is_permanent(),
            error: e.to_string(),
        })?;
        store.ping().await.map_err(Failed::of)
    });
    let broker = until_deadline("broker", deadline, || async {
        let broker = Broker::connect(&config.broker, memory)
            .await
            .map_err(|e| Failed {
                permanent: e.is_permanent(),
                error: e.to_string(),
            })?;
        tracing::info!(node = broker.node(), "startup check: broker reachable");
        let _ = broker.close().await;
        Ok(())
    });
    // One provider of the chain is enough to start: the others are failed over from.
    let provider = until_deadline("provider", deadline, || async {
        let checks = providers
            .iter()
            .map(|(name, p)| async move { (name, p.check().await) });
        let results = futures::future::join_all(checks).await;
        if results.iter().any(|(_, r)| r.is_ok()) {
            for (name, r) in &results {
                if let Err(e) = r {
                    tracing::warn!(provider = %name, error = %e, "startup check: provider unreachable; the chain starts without it");
                }
            }
            return Ok(());
        }
        let why: Vec<String> = results
            .into_iter()
            .filter_map(|(name, r)| r.err().map(|e| (name, e)))
            .map(|(name, e)| {
                if providers.len() > 1 {
                    format!("{name}: {e}")
                } else {
                    e.to_string()
                }
            })
            .collect();
        Err(Failed {
            permanent: false,
            error: why.join("; "),
        })
    });
    let (database, broker, provider) = tokio::join!(database, broker, provider);
    let down: Vec<(&'static str, String)> = [database, broker, provider]
        .into_iter()
        .filter_map(Result::err)
        .collect();
    match down.as_slice() {
        [] => Ok(()),
        [(what, why)] => Err(RunError::Unavailable(what, why.clone())),
        _ => {
            let why: Vec<String> = down.iter().map(|(w, e)| format!("{w}: {e}")).collect();
            Err(RunError::Unavailable("dependencies", why.join("; ")))
        }
    }
}

/// A failed try of the startup check.
struct Failed {
    error: String,
    /// Trying again cannot help (a certificate not trusted, a queue of another type).
    permanent: bool,
}

impl Failed {
    fn of(e: impl std::fmt::Display) -> Failed {
        Failed {
            error: e.to_string(),
            permanent: false,
        }
    }
}

/// How long past `startup.deadline_ms` a try already under way may take.
const TRY_GRACE: Duration = Duration::from_secs(10);

/// Try `check` until it passes or `deadline` comes; the error is the last failure's, with
/// the number of tries and the time they took.
async fn until_deadline<F, Fut>(
    what: &'static str,
    deadline: tokio::time::Instant,
    mut check: F,
) -> Result<(), (&'static str, String)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), Failed>>,
{
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(100);
    let mut last_error: Option<String> = None;
    let mut tries = 0u32;
    loop {
        tries += 1;
        // A try is not cut at the deadline (a cancelled lapin connect leaves its I/O thread
        // panicking on the way out); each bounds itself (connect timeouts), and the grace
        // only catches one that does not.
        let error = match tokio::time::timeout_at(deadline + TRY_GRACE, check()).await {
            Ok(Ok(())) => {
                if tries > 1 {
                    tracing::info!(dependency = what, tries, "startup check: {what} reachable");
                }
                return Ok(());
            }
            Ok(Err(Failed {
                error,
                permanent: true,
            })) => {
                return Err((what, error));
            }
            Ok(Err(e)) => e.error,
            // A silent listener: the last refusal, if any, says more than the deadline.
            Err(_) => last_error.take().unwrap_or_else(|| {
                format!(
                    "no answer within the startup deadline ({} ms) and {} s of grace",
                    deadline.duration_since(started).as_millis(),
                    TRY_GRACE.as_secs()
                )
            }),
        };
        let now = tokio::time::Instant::now();
        if now >= deadline {
            let ms = now.duration_since(started).as_millis();
            return Err((what, format!("{error} (tried {tries} times in {ms} ms)")));
        }
        tracing::warn!(
            dependency = what,
            tries,
            retry_in_ms = pause.as_millis() as u64,
            %error,
            "startup check: {what} not reachable yet"
        );
        last_error = Some(error);
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Start the tree and the HTTP endpoint; return once both are up.
pub async fn start(config: Config) -> Result<App, RunError> {
    config.validate()?;
    let memory = MemoryBroker::default();
    if config.startup.check && config.pipeline.enabled {
        preflight(&config, &memory).await?;
        tracing::info!("startup check passed: database, broker and provider reachable");
    }
    let tree = Tree::new();
    let metrics = metrics::Metrics::new();
    let providers: Vec<String> = config
        .provider
        .chain()
        .iter()
        .map(|c| c.name.clone())
        .collect();
    let pipeline = Pipeline {
        tree: tree.clone(),
        root: ROOT.into(),
        config: config.pipeline().into(),
        clock: Clock::new(),
        memory,
        ops: Ops::new(metrics.pipeline_metrics(&providers)),
    };
    let (root, root_done) = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs {
            spec: root_spec(&config, &pipeline),
            tree: tree.clone(),
            path: ROOT.into(),
        },
    )
    .await
    .map_err(|e| match e {
        // Not a panic: a child's start returned an error (ractor words both alike).
        ractor::SpawnErr::StartupFailed(inner) => RunError::Boot(inner.to_string()),
        e => RunError::Boot(e.to_string()),
    })?;

    let listener = match tokio::net::TcpListener::bind(config.http.addr).await {
        Ok(l) => l,
        Err(e) => {
            root.stop_and_wait(Some("shutdown".into()), None).await.ok();
            return Err(RunError::Bind(config.http.addr, e));
        }
    };
    let addr = listener
        .local_addr()
        .map_err(|e| RunError::Bind(config.http.addr, e))?;
    let access = access::Access::new(
        config.admin.clone(),
        config.api.clone(),
        addr.ip().is_loopback(),
    );
    let openapi_doc: std::sync::Arc<str> = openapi::json().into();
    let router = http::router_with_metrics(
        tree.clone(),
        access.clone(),
        config.pipeline.enabled.then(|| pipeline.clone()),
        metrics.clone(),
        Some(openapi_doc.clone()),
    );
    let (http_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let http_task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    tracing::info!(%addr, "drover is up; GET /status shows the tree");
    Ok(App {
        addr,
        tree,
        pipeline,
        root,
        metrics,
        admin: config.admin.clone(),
        access,
        openapi: openapi_doc,
        root_done,
        http_stop,
        http_task,
        pipeline_enabled: config.pipeline.enabled,
    })
}

impl App {
    /// Wait until `shutdown` resolves (then stop gracefully) or the root supervisor exits on
    /// its own (then report why).
    pub async fn serve_until(self, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
        let App {
            tree,
            pipeline,
            root,
            mut root_done,
            http_stop,
            http_task,
            ..
        } = self;
        let result = tokio::select! {
            _ = shutdown => {
                tracing::info!("shutdown requested: stopping the tree in reverse start order");
                // Through the root's mailbox, so exits during the stop are recorded too.
                drover_actors::supervisor::shutdown(&root).await.ok();
                let _ = (&mut root_done).await;
                Ok(())
            }
            _ = &mut root_done => Err(match tree.gave_up() {
                Some(reason) => RunError::RootGaveUp(reason),
                None => RunError::RootExited,
            }),
        };
        let _ = http_stop.send(());
        let _ = http_task.await;
        if let Err(RunError::RootGaveUp(reason)) = &result {
            // The root took the alert worker down with it: send this last alert directly.
            let alert = alerts::Alert::gave_up(&pipeline.root, &pipeline.root, reason);
            alerts::send_now(&pipeline.config.alerts, &alert, pipeline.clock.now_ms()).await;
        }
        match &result {
            Err(e) => tracing::error!(error = %e, "drover stops"),
            // The last line of a clean stop: everything was stopped in order, in-flight work
            // finished or went back to its queue.
            Ok(()) => tracing::info!("drover stopped: the tree and the endpoint are down; exit 0"),
        }
        result
    }

    /// The HTTP router this app serves (the same state: tree, pipeline, admin, metrics), for
    /// in-process requests.
    pub fn router(&self) -> axum::Router {
        http::router_with_metrics(
            self.tree.clone(),
            self.access.clone(),
            self.pipeline_enabled.then(|| self.pipeline.clone()),
            self.metrics.clone(),
            Some(self.openapi.clone()),
        )
    }

    /// Stop gracefully now.
    pub async fn shutdown(self) -> Result<(), RunError> {
        self.serve_until(async {}).await
    }
}

/// Run drover until `shutdown` resolves. Errors map to exit codes ([`RunError::exit_code`]).
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    start(config).await?.serve_until(shutdown).await
}
