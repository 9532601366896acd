//! # `DemoSupervisor`: a small demonstration tree
//!
//! Runs beside the delivery pipeline when `demo.enabled` is set, so the tree shows restarts
//! and dynamic children even while no message flows: one worker ticks, one crashes on a timer and is restarted
//! with backoff, and a pool supervisor runs short-lived dynamic jobs.
//!
//! **Supervises** (in start order): `ticker` (worker, permanent), `flaky` (worker, permanent,
//! backoff from config), `pool` (supervisor, one_for_one, dynamic `job` workers, temporary),
//! `feeder` (worker, permanent; starts a job in `pool` on a timer), `batch` (supervisor,
//! transient, `auto_shutdown = all_significant`: two significant temporary `step` workers of
//! different lengths; once both have finished, the batch supervisor ends by itself, normally,
//! and stays `stopped`: OTP 24's significant children).
//! **Strategy**: rest_for_one: if `pool` dies, `feeder` (which holds its address) restarts too.
//! **Intensity**: from `[supervision]`.
//! **Supervised by**: the root supervisor.

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};

use crate::supervisor::config::SupervisionConfig;
use crate::supervisor::{
    AutoShutdown, ChildSpec, Restart, Shutdown, Strategy, SupervisorMessage, SupervisorSpec,
    start_child,
};
use crate::tree::{LookupError, Tree};

/// `[demo]`: the demonstration tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoConfig {
    /// Run the demonstration tree under the root supervisor.
    pub enabled: bool,
    /// `flaky` fails this long after each start (milliseconds; 0 = never).
    pub crash_every_ms: u64,
    /// `feeder` starts a job this often (milliseconds; 0 = never).
    pub job_every_ms: u64,
    /// Each job lives this long (milliseconds).
    pub job_ms: u64,
    /// At most this many jobs at once (the pool's `max_children`).
    pub max_jobs: usize,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            enabled: true,
            crash_every_ms: 20_000,
            job_every_ms: 2_000,
            job_ms: 5_000,
            max_jobs: 8,
        }
    }
}

/// The demo subtree's spec.
pub fn demo_spec(config: &DemoConfig, supervision: &SupervisionConfig) -> SupervisorSpec {
    let crash_after = Duration::from_millis(config.crash_every_ms);
    let job_every = Duration::from_millis(config.job_every_ms);
    let job_ms = Duration::from_millis(config.job_ms);
    let max_jobs = config.max_jobs;
    let intensity = supervision.intensity();
    SupervisorSpec::new(Strategy::RestForOne, intensity)
        .seed(supervision.seed)
        .child(
            ChildSpec::worker("ticker", |_| (TickerWorker, Duration::from_secs(1)))
                .backoff(supervision.backoff),
        )
        .child(
            ChildSpec::worker("flaky", move |_| (FlakyWorker, crash_after))
                .backoff(supervision.backoff),
        )
        .child(
            ChildSpec::supervisor("pool", move |_| {
                SupervisorSpec::new(Strategy::OneForOne, intensity).dynamic(
                    ChildSpec::worker("job", move |_| (JobWorker, job_ms))
                        .restart(Restart::Temporary)
                        .shutdown(Shutdown::Timeout(Duration::from_secs(1))),
                    max_jobs,
                )
            })
            .backoff(supervision.backoff),
        )
        .child(
            ChildSpec::worker("feeder", move |ctx| {
                (
                    FeederWorker,
                    FeederArgs {
                        pool: ctx.tree.clone(),
                        pool_path: ctx
                            .path
                            .rsplit_once('/')
                            .map(|(p, _)| p)
                            .unwrap_or("")
                            .to_string()
                            + "/pool",
                        every: job_every,
                    },
                )
            })
            .backoff(supervision.backoff),
        )
        .child(
            ChildSpec::supervisor("batch", move |_| {
                let step = |id: &str, life: Duration| {
                    ChildSpec::worker(id, move |_| (JobWorker, life))
                        .restart(Restart::Temporary)
                        .significant(true)
                };
                SupervisorSpec::new(Strategy::OneForOne, intensity)
                    .auto_shutdown(AutoShutdown::AllSignificant)
                    .child(step("step-1", job_ms))
                    .child(step("step-2", job_ms * 2))
            })
            .restart(Restart::Transient),
        )
}

/// Messages of the demo workers.
#[derive(Debug)]
pub enum DemoMessage {
    Tick,
}

/// Ticks once a period; never fails.
#[derive(Debug, Clone, Copy)]
pub struct TickerWorker;

/// State of [`TickerWorker`].
#[derive(Debug)]
pub struct TickerState {
    pub ticks: u64,
}

impl Actor for TickerWorker {
    type Msg = DemoMessage;
    type State = TickerState;
    type Arguments = Duration;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        every: Duration,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_interval(every, || DemoMessage::Tick);
        Ok(TickerState { ticks: 0 })
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        _: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.ticks += 1;
        Ok(())
    }
}

/// Fails on a timer, to show restarts and backoff.
#[derive(Debug, Clone, Copy)]
pub struct FlakyWorker;

impl Actor for FlakyWorker {
    type Msg = DemoMessage;
    type State = ();
    type Arguments = Duration;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        after: Duration,
    ) -> Result<(), ActorProcessingErr> {
        if !after.is_zero() {
            myself.send_after(after, || DemoMessage::Tick);
        }
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        _: Self::Msg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        Err("demo: the flaky worker failed on schedule".into())
    }
}

/// A short-lived job: stops normally after its lifetime.
#[derive(Debug, Clone, Copy)]
pub struct JobWorker;

impl Actor for JobWorker {
    type Msg = DemoMessage;
    type State = ();
    type Arguments = Duration;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        life: Duration,
    ) -> Result<(), ActorProcessingErr> {
        myself.send_after(life, || DemoMessage::Tick);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        _: Self::Msg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        myself.stop(None);
        Ok(())
    }
}

/// Arguments of [`FeederWorker`]: where the pool is (a stable lookup, so it follows the
/// pool's restarts) and how often to start a job.
#[derive(Debug, Clone)]
pub struct FeederArgs {
    pub pool: Tree,
    pub pool_path: String,
    pub every: Duration,
}

/// Starts a job in the pool on a timer; a full pool or a restarting pool skips a beat.
#[derive(Debug, Clone, Copy)]
pub struct FeederWorker;

impl Actor for FeederWorker {
    type Msg = DemoMessage;
    type State = FeederArgs;
    type Arguments = FeederArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: FeederArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        if !args.every.is_zero() {
            myself.send_interval(args.every, || DemoMessage::Tick);
        }
        Ok(args)
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        _: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let pool: ActorRef<SupervisorMessage> =
            match state.pool.handle(state.pool_path.clone()).actor_ref() {
                Ok(pool) => pool,
                Err(LookupError::Restarting) => return Ok(()),
                Err(e) => return Err(format!("demo pool unavailable: {e}").into()),
            };
        if let Err(e) = start_child(&pool, ()).await {
            tracing::debug!(error = %e, "demo job not started");
        }
        Ok(())
    }
}
