//! Child specifications: what a supervisor starts, how it restarts it, how it stops it.
//!
//! The vocabulary is Erlang/OTP's (restart types, shutdown, strategies, intensity: in
//! [`super::policy`], re-exported here) plus what OTP leaves to the caller: per-child backoff
//! and watchdogs.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, ActorProcessingErr};

use crate::supervisor::backoff::Backoff;
use crate::supervisor::reported::{Reported, StopError};
use crate::supervisor::{Supervisor, SupervisorArgs, SupervisorSpec};
use crate::tree::{NodeKind, Tree};
use crate::watchdog::Watchdog;

pub use super::policy::{AutoShutdown, Intensity, Restart, Shutdown, Strategy};

/// Arguments of one dynamic child instance, kept to restart it with the same arguments.
pub type DynArgs = Arc<dyn Any + Send + Sync>;

/// What a start function receives.
#[derive(Clone)]
pub struct ChildCtx {
    /// The supervisor: spawn the child linked to it (`Actor::spawn_linked(.., ctx.supervisor)`).
    pub supervisor: ActorCell,
    /// The child's path in the tree (`root/broker/connection`).
    pub path: Arc<str>,
    /// Incarnation number, from 1.
    pub generation: u64,
    /// The live tree (child supervisors need it).
    pub tree: Tree,
    /// Arm this around handlers when the spec has a handler deadline.
    pub watchdog: Watchdog,
    /// A dynamic child's arguments.
    pub args: Option<DynArgs>,
    /// What this start spawned ([`ChildCtx::spawned`]), killed if the start overruns its
    /// timeout so that no incarnation lives on untracked beside the next one, and where its
    /// failing stop hook is reported ([`Reported`]).
    pub(crate) incarnation: StopError,
}

impl fmt::Debug for ChildCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildCtx")
            .field("path", &self.path)
            .field("generation", &self.generation)
            .finish()
    }
}

impl ChildCtx {
    /// A dynamic child's arguments, downcast. `None` for a static child or a wrong type.
    pub fn args<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.args.clone().and_then(|a| a.downcast::<T>().ok())
    }

    /// Tell the supervisor that this start spawned `cell`. A start function that does more
    /// work after spawning its actor must call it at once: if the start then overruns its
    /// `start_timeout`, the supervisor kills `cell` instead of leaving a second, untracked
    /// incarnation running (two consumers of one queue). [`ChildSpec::worker`] and
    /// [`ChildSpec::supervisor`] do it.
    pub fn spawned(&self, cell: &ActorCell) {
        self.incarnation.push_spawned(cell.clone());
    }
}

/// Starts one incarnation: spawns the actor linked to `ctx.supervisor` and returns its cell
/// once its `pre_start` returned. An `Err` is a start failure.
pub type StartFn = Arc<
    dyn Fn(ChildCtx) -> BoxFuture<'static, Result<ActorCell, ActorProcessingErr>> + Send + Sync,
>;

/// One child of a supervisor.
#[derive(Clone)]
pub struct ChildSpec {
    pub id: String,
    pub kind: NodeKind,
    pub restart: Restart,
    pub shutdown: Shutdown,
    pub backoff: Backoff,
    /// The start function must return within this time, or the attempt is a `timeout` exit.
    pub start_timeout: Duration,
    /// If set, a handler armed through [`Watchdog::busy`] that runs longer is killed and the
    /// exit recorded as a `timeout`.
    pub handler_deadline: Option<Duration>,
    /// A significant child's end (not followed by a restart) can end its supervisor, per the
    /// supervisor's [`AutoShutdown`]. Only transient and temporary children can be.
    pub significant: bool,
    pub start: StartFn,
}

impl fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSpec")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("restart", &self.restart)
            .field("shutdown", &self.shutdown)
            .field("backoff", &self.backoff)
            .field("significant", &self.significant)
            .finish()
    }
}

/// Default graceful-stop timeout for workers (OTP's default for workers is 5 s).
pub const DEFAULT_SHUTDOWN: Duration = Duration::from_secs(5);
/// Default start timeout.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);

impl ChildSpec {
    /// A permanent worker with a custom start function.
    pub fn new<F, Fut>(id: impl Into<String>, start: F) -> Self
    where
        F: Fn(ChildCtx) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<ActorCell, ActorProcessingErr>> + Send + 'static,
    {
        ChildSpec {
            id: id.into(),
            kind: NodeKind::Worker,
            restart: Restart::Permanent,
            shutdown: Shutdown::Timeout(DEFAULT_SHUTDOWN),
            backoff: Backoff::none(),
            start_timeout: DEFAULT_START_TIMEOUT,
            handler_deadline: None,
            significant: false,
            start: Arc::new(move |ctx| Box::pin(start(ctx))),
        }
    }

    /// A permanent worker: `make(ctx)` builds the actor and its arguments for each incarnation.
    pub fn worker<A, F>(id: impl Into<String>, make: F) -> Self
    where
        A: Actor,
        F: Fn(&ChildCtx) -> (A, A::Arguments) + Send + Sync + 'static,
    {
        let make = Arc::new(make);
        Self::new(id, move |ctx: ChildCtx| {
            let make = make.clone();
            async move {
                let (inner, args) = make(&ctx);
                let actor = Reported {
                    inner,
                    error: ctx.incarnation.clone(),
                };
                let (r, _) = Actor::spawn_linked(None, actor, args, ctx.supervisor.clone())
                    .await
                    .map_err(startup_error)?;
                ctx.spawned(&r.get_cell());
                Ok(r.get_cell())
            }
        })
    }

    /// A permanent child supervisor; its own children get their paths under this one.
    pub fn supervisor<F>(id: impl Into<String>, make: F) -> Self
    where
        F: Fn(&ChildCtx) -> SupervisorSpec + Send + Sync + 'static,
    {
        let make = Arc::new(make);
        let mut spec = Self::new(id, move |ctx: ChildCtx| {
            let make = make.clone();
            async move {
                let args = SupervisorArgs {
                    spec: make(&ctx),
                    tree: ctx.tree.clone(),
                    path: ctx.path.to_string(),
                };
                let (r, _) = Actor::spawn_linked(None, Supervisor, args, ctx.supervisor.clone())
                    .await
                    .map_err(startup_error)?;
                ctx.spawned(&r.get_cell());
                Ok(r.get_cell())
            }
        });
        spec.kind = NodeKind::Supervisor;
        spec.shutdown = Shutdown::Infinity;
        spec
    }

    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    pub fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    pub fn handler_deadline(mut self, deadline: Duration) -> Self {
        self.handler_deadline = Some(deadline);
        self
    }

    /// Mark the child significant (see [`AutoShutdown`]).
    pub fn significant(mut self, significant: bool) -> Self {
        self.significant = significant;
        self
    }
}

/// A failed spawn as the error of its `pre_start`: ractor words every one "Actor panicked
/// during startup", which is wrong for an `Err` (a refused connection) and reads as a bug.
fn startup_error(e: ractor::SpawnErr) -> ActorProcessingErr {
    match e {
        ractor::SpawnErr::StartupFailed(inner) => inner,
        other => other.into(),
    }
}

/// The template of a supervisor's dynamic children: one spec, many instances, each started
/// with its own [`DynArgs`].
#[derive(Clone, Debug)]
pub struct DynamicSpec {
    /// `id` is the prefix of instance ids (`worker-1`, `worker-2`, …).
    pub template: ChildSpec,
    /// More concurrent instances are refused with [`SupervisorError::MaxChildren`](crate::supervisor::SupervisorError::MaxChildren).
    pub max_children: usize,
}
