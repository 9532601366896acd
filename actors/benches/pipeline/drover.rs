//! The pipeline bench: drover, built as `drover::start` builds it.

use super::*;

pub(crate) fn drover_pipeline(
    s: &Settings,
    names: &Names,
    provider: SocketAddr,
    clock: Clock,
) -> Pipeline {
    let tree = Tree::new();
    Pipeline {
        tree,
        root: "root".into(),
        config: std::sync::Arc::new(PipelineConfig {
            supervision: SupervisionConfig::default(),
            broker: names.broker_config(s),
            store: names.store_config(s),
            provider: provider_config(provider),
            ..PipelineConfig::default()
        }),
        clock,
        memory: MemoryBroker::default(),
        ops: Default::default(),
    }
}

/// `drover::root_spec` with the pipeline enabled and the demo off.
pub(crate) fn root_spec(pipeline: &Pipeline) -> SupervisorSpec {
    let sup = &pipeline.config.supervision;
    let mut spec = SupervisorSpec::new(Strategy::OneForOne, sup.intensity()).seed(sup.seed);
    for child in pipeline_children(pipeline) {
        spec = spec.child(child);
    }
    spec
}

pub(crate) async fn start_drover(
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

/// Stop drover's root supervisor and wait for its task.
pub(crate) async fn stop_root(
    root: ActorRef<SupervisorMessage>,
    done: JoinHandle<()>,
) -> BenchResult<()> {
    root.stop_and_wait(Some("bench over".into()), Some(STEP_LIMIT))
        .await
        .map_err(|e| err("stopping the root supervisor")(&e))?;
    tokio::time::timeout(STEP_LIMIT, done)
        .await
        .map_err(|_| "root supervisor did not exit".to_string())?
        .map_err(|e| err("root supervisor task")(&e))
}

/// What runs the pipeline in a phase.
pub(crate) enum Sut {
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
    pub(crate) fn gave_up(&self) -> Option<String> {
        match self {
            Sut::Drover { tree, .. } => tree.gave_up(),
            Sut::Consumer { task, .. } => task.is_finished().then(|| "consumer task ended".into()),
        }
    }

    pub(crate) fn counters(&self) -> Option<&ConsumerCounters> {
        match self {
            Sut::Drover { .. } => None,
            Sut::Consumer { counters, .. } => Some(counters),
        }
    }

    pub(crate) async fn stop(self) -> BenchResult<()> {
        match self {
            Sut::Drover { root, done, .. } => stop_root(root, done).await,
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
pub(crate) async fn start_sut(
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
