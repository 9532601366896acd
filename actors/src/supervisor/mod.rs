//! # `Supervisor`: an Erlang/OTP supervisor on ractor
//!
//! **Supervises** (in start order): the static children of its [`SupervisorSpec`], each after
//! the previous one's start returned; then, on demand, dynamic instances of its one
//! [`DynamicSpec`] template (per-message workers), at most `max_children` at once.
//! **Strategy**: per spec: `one_for_one`, `one_for_all` or `rest_for_one` over the static
//! children; dynamic children are always restarted one for one.
//! **Intensity**: per spec: more than `max_restarts` restart attempts (failed ones included)
//! in a sliding `period` and it gives up: it stops its children in reverse order and fails to
//! its parent with a reason saying so.
//! **Auto shutdown**: per spec (OTP 24): with `any_significant` / `all_significant` it ends
//! itself, with reason `shutdown: auto_shutdown`, once its significant children have ended.
//! **Supervised by**: its parent `Supervisor` (through [`ChildSpec::supervisor`]), or nobody
//! when it is the root, in which case [`Tree::gave_up`] tells why it gave up.
//!
//! Its spec is validated at start ([`SupervisorSpec::validate`]); children are administered
//! at run time with [`start_static_child`], [`terminate_child`], [`terminate_child_by_id`],
//! [`restart_child`], [`delete_child`], [`which_children`] and [`count_children`], OTP's API.
//!
//! What it overrides in ractor: ractor's default `handle_supervisor_evt` stops the parent when
//! any child exits, keeps children unordered, kills (without `post_stop`) the subtree of an
//! exiting actor, and reports `kill()` as a plain termination with reason `"killed"`. This
//! supervisor restarts per restart type and strategy, orders start and stop, stops its
//! children gracefully in its own `post_stop` before ractor would kill them, and classifies
//! every exit (see [`ExitClass`]).
//!
//! Restarts never block it: a restart's start function runs in a task of its own and reports
//! back with [`SupervisorMessage::StartDone`], so the supervisor keeps answering queries while
//! a child is failing to come back. Every incarnation carries a generation and a token; a
//! report or an exit from an incarnation that is no longer current is ignored.

pub mod backoff;
pub mod config;
pub mod policy;
pub mod reported;
pub mod spec;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, ActorStatus, RactorErr, RpcReplyPort,
    SupervisionEvent,
};
use tokio::task::AbortHandle;
use tokio::time::Instant;

pub use backoff::{Backoff, SplitMix64};
pub use spec::{
    AutoShutdown, ChildCtx, ChildSpec, DynArgs, DynamicSpec, Intensity, Restart, Shutdown, StartFn,
    Strategy,
};

use crate::tree::{EventKind, ExitClass, NodeKind, NodeRecord, NodeStatus, SupervisorInfo, Tree};
use crate::watchdog::Watchdog;

/// Errors of the supervision layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SupervisorError {
    #[error("child `{child}` failed to start: {reason}")]
    StartFailed { child: String, reason: String },
    #[error("max_children ({0}) reached")]
    MaxChildren(usize),
    #[error("this supervisor has no dynamic child template")]
    NoDynamicSpec,
    #[error("the supervisor is shutting down")]
    ShuttingDown,
    #[error("no child `{0}`")]
    NoSuchChild(String),
    #[error("supervisor `{path}` gave up: {reason}")]
    GaveUp { path: String, reason: String },
    #[error("supervisor unreachable: {0}")]
    Unreachable(String),
    /// The spec cannot work (OTP refuses it at start too).
    #[error("invalid supervisor spec: {field}: {reason}")]
    InvalidSpec { field: String, reason: String },
    /// `start_child` of a static spec whose id is taken by a terminated child.
    #[error("child `{0}` is already present (terminated): restart or delete it")]
    AlreadyPresent(String),
    /// `start_child` of a static spec whose id is taken by a running child.
    #[error("child `{0}` is already started")]
    AlreadyStarted(String),
    /// `restart_child` / `delete_child` of a running child.
    #[error("child `{0}` is running")]
    Running(String),
    /// `restart_child` / `delete_child` of a child being restarted by its supervisor.
    #[error("child `{0}` is restarting")]
    Restarting(String),
}

/// What a supervisor starts and how it reacts.
#[derive(Clone, Debug)]
pub struct SupervisorSpec {
    pub strategy: Strategy,
    pub intensity: Intensity,
    /// Static children, in start order.
    pub children: Vec<ChildSpec>,
    pub dynamic: Option<DynamicSpec>,
    /// Seed of the backoff jitter.
    pub seed: u64,
    /// Whether the end of significant children ends this supervisor.
    pub auto_shutdown: AutoShutdown,
}

/// A child id is one path segment of the tree: not empty, no `/`.
fn check_id(id: &str, field: &str) -> Result<(), SupervisorError> {
    if id.is_empty() || id.contains('/') {
        return Err(SupervisorError::InvalidSpec {
            field: field.to_owned(),
            reason: format!("{id:?} is empty or holds a '/'"),
        });
    }
    Ok(())
}

fn check_significant(
    c: &ChildSpec,
    auto_shutdown: AutoShutdown,
    field: &str,
) -> Result<(), SupervisorError> {
    let reason = if !c.significant {
        return Ok(());
    } else if c.restart == Restart::Permanent {
        format!(
            "`{}` is permanent: only transient or temporary children can be significant",
            c.id
        )
    } else if auto_shutdown == AutoShutdown::Never {
        format!("`{}` is significant but auto_shutdown is never", c.id)
    } else {
        return Ok(());
    };
    Err(SupervisorError::InvalidSpec {
        field: field.to_owned(),
        reason,
    })
}

impl SupervisorSpec {
    pub fn new(strategy: Strategy, intensity: Intensity) -> Self {
        SupervisorSpec {
            strategy,
            intensity,
            children: Vec::new(),
            dynamic: None,
            seed: 0x5EED,
            auto_shutdown: AutoShutdown::Never,
        }
    }

    pub fn auto_shutdown(mut self, auto_shutdown: AutoShutdown) -> Self {
        self.auto_shutdown = auto_shutdown;
        self
    }

    /// Check the spec as OTP's `supervisor:check_childspecs/1` and its flag checks do: unique
    /// child ids (static ones, and the dynamic template's prefix apart from them), a
    /// non-zero period, a dynamic template with an id and room for at least one child,
    /// significant children only transient or temporary and only with an `auto_shutdown`.
    pub fn validate(&self) -> Result<(), SupervisorError> {
        let invalid = |field: &str, reason: String| {
            Err(SupervisorError::InvalidSpec {
                field: field.to_owned(),
                reason,
            })
        };
        if self.intensity.period.is_zero() {
            return invalid("intensity.period", "must be positive".into());
        }
        let mut seen = HashSet::new();
        for c in &self.children {
            check_id(&c.id, "children.id")?;
            if !seen.insert(c.id.as_str()) {
                return invalid("children.id", format!("duplicate child id `{}`", c.id));
            }
            check_significant(c, self.auto_shutdown, "children.significant")?;
        }
        if let Some(d) = &self.dynamic {
            check_id(&d.template.id, "dynamic.template.id")?;
            if d.max_children == 0 {
                return invalid("dynamic.max_children", "must be at least 1".into());
            }
            check_significant(
                &d.template,
                self.auto_shutdown,
                "dynamic.template.significant",
            )?;
        }
        Ok(())
    }

    pub fn child(mut self, child: ChildSpec) -> Self {
        self.children.push(child);
        self
    }

    pub fn dynamic(mut self, template: ChildSpec, max_children: usize) -> Self {
        self.dynamic = Some(DynamicSpec {
            template,
            max_children,
        });
        self
    }

    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

/// Arguments of a [`Supervisor`].
#[derive(Debug)]
pub struct SupervisorArgs {
    pub spec: SupervisorSpec,
    pub tree: Tree,
    /// This supervisor's path; its children are `path/<id>`.
    pub path: String,
}

/// A started dynamic child.
#[derive(Debug, Clone)]
pub struct StartedChild {
    pub path: Arc<str>,
    pub cell: ActorCell,
}

impl StartedChild {
    /// The child's id: the last segment of its path (`worker-7`).
    pub fn id(&self) -> &str {
        last_segment(&self.path)
    }
}

fn last_segment(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, id)| id)
}

/// One child, as [`SupervisorMessage::WhichChildren`] reports it.
#[derive(Debug, Clone)]
pub struct ChildInfo {
    pub id: String,
    pub path: String,
    pub dynamic: bool,
    pub status: NodeStatus,
    pub generation: u64,
    pub cell: Option<ActorCell>,
}

/// Counts, as [`SupervisorMessage::CountChildren`] reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChildCounts {
    pub specs: usize,
    pub active: usize,
    pub dynamic: usize,
    pub supervisors: usize,
    pub workers: usize,
}

/// Which child a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChildKey {
    Static(usize),
    Dynamic(u64),
}

/// A timer that fired.
#[derive(Debug, Clone, Copy)]
pub enum Due {
    /// One child's backoff ended (one_for_one, dynamic children).
    Child { key: ChildKey, token: u64 },
    /// The group restart queue may go on (one_for_all, rest_for_one).
    Queue { token: u64 },
}

/// The supervisor's one message enum.
#[derive(Debug)]
pub enum SupervisorMessage {
    /// Start a dynamic child with these arguments.
    StartChild {
        args: DynArgs,
        reply: RpcReplyPort<Result<StartedChild, SupervisorError>>,
    },
    /// Start a dynamic child with these arguments and answer nobody: for callers that hand
    /// work over and need no reply (the arguments are dropped if the start fails, which is
    /// how a per-delivery worker's delivery goes back to its queue).
    StartChildNoReply {
        args: DynArgs,
    },
    /// Stop a child (by id) with its shutdown policy; it is not restarted. Dynamic children
    /// are removed; static ones stay `stopped`.
    TerminateChild {
        id: String,
        reply: RpcReplyPort<Result<(), SupervisorError>>,
    },
    /// Stop the dynamic or static child that is this actor (OTP's `terminate_child` by pid).
    TerminateChildById {
        actor: ActorId,
        reply: RpcReplyPort<Result<(), SupervisorError>>,
    },
    /// Add a static child at run time, after the others, and start it at once (OTP's
    /// `start_child` of a child spec).
    StartStaticChild {
        spec: Box<ChildSpec>,
        reply: RpcReplyPort<Result<ActorCell, SupervisorError>>,
    },
    /// Start a terminated static child again (OTP's `restart_child`).
    RestartChild {
        id: String,
        reply: RpcReplyPort<Result<(), SupervisorError>>,
    },
    /// Remove a terminated static child's spec (OTP's `delete_child`).
    DeleteChild {
        id: String,
        reply: RpcReplyPort<Result<(), SupervisorError>>,
    },
    WhichChildren(RpcReplyPort<Vec<ChildInfo>>),
    CountChildren(RpcReplyPort<ChildCounts>),
    /// Stop: every child in reverse start order, then itself with reason `shutdown`. Unlike
    /// ractor's stop signal, this keeps the mailbox open while the children stop, so a child
    /// that exits on its own meanwhile still has its exit recorded (OTP's `sup_stop_race`).
    /// [`shutdown`] sends it and waits; parents stop child supervisors with it.
    Shutdown,
    /// Internal: the children are stopped and their exits handled: stop.
    #[doc(hidden)]
    FinishShutdown,
    /// Internal: a backoff timer fired.
    #[doc(hidden)]
    RestartDue(Due),
    /// Internal: an asynchronous (re)start finished.
    #[doc(hidden)]
    StartDone {
        key: ChildKey,
        token: u64,
        result: Result<ActorCell, (ExitClass, String)>,
    },
    /// Internal: a child's handler overran its deadline.
    #[doc(hidden)]
    WatchdogFired {
        key: ChildKey,
        token: u64,
        busy_for: Duration,
    },
}

/// The supervisor actor.
#[derive(Debug, Clone, Copy, Default)]
pub struct Supervisor;

struct Child {
    spec: Arc<ChildSpec>,
    args: Option<DynArgs>,
    /// `<supervisor path>/<id>`, shared with the tree's key and each start's context.
    path: Arc<str>,
    order: u64,
    cell: Option<ActorCell>,
    status: NodeStatus,
    generation: u64,
    token: u64,
    consecutive: u32,
    started_at: Option<Instant>,
    next_restart_at: Option<Instant>,
    watcher: Option<AbortHandle>,
    /// The current incarnation's watchdog (also in its `ChildCtx`).
    watchdog: Watchdog,
    /// Set when the supervisor kills it on purpose (watchdog), to classify the exit.
    pending_exit: Option<(ExitClass, String)>,
    /// What the current incarnation's start spawned and its failing stop hook, if it failed
    /// ([`reported::Reported`]); made by each start.
    incarnation: Option<reported::StopError>,
    removed: bool,
}

impl Child {
    fn id(&self) -> &str {
        last_segment(&self.path)
    }

    fn new(spec: Arc<ChildSpec>, args: Option<DynArgs>, path: Arc<str>, order: u64) -> Self {
        Child {
            spec,
            args,
            path,
            order,
            cell: None,
            status: NodeStatus::Starting,
            generation: 0,
            token: 0,
            consecutive: 0,
            started_at: None,
            next_restart_at: None,
            watcher: None,
            watchdog: Watchdog::disabled(),
            pending_exit: None,
            incarnation: None,
            removed: false,
        }
    }
}

/// The supervisor's state.
pub struct SupervisorState {
    path: String,
    tree: Tree,
    strategy: Strategy,
    intensity: Intensity,
    rng: SplitMix64,
    statics: Vec<Child>,
    /// The dynamic template (shared by every instance's `Child`) and `max_children`.
    dynamic: Option<(Arc<ChildSpec>, usize)>,
    dyns: BTreeMap<u64, Child>,
    next_dyn: u64,
    by_id: HashMap<ActorId, ChildKey>,
    /// Incarnations stopped by this supervisor: their exit events are expected and dropped.
    expected: HashSet<ActorId>,
    /// Incarnations found already dead when they were to be stopped: their late exit events
    /// are stale (`StaleIgnored`).
    retired: HashMap<ActorId, (Arc<str>, u64)>,
    /// Exits of actors not (yet) in `by_id`, kept while a spawned start is in flight: an
    /// incarnation can die before its `StartDone` is handled (ractor delivers supervision
    /// events before messages), and that exit must not be lost.
    early_exits: HashMap<ActorId, (ExitClass, String)>,
    /// Spawned starts whose `StartDone` has not been handled yet.
    starts_in_flight: usize,
    /// Children found dead on their own while this supervisor stops, their exit event still
    /// in the mailbox: recorded when it is handled (path, generation, temporary static index).
    dying: HashMap<ActorId, (Arc<str>, u64, Option<usize>)>,
    window: std::collections::VecDeque<Instant>,
    /// Group restarts (one_for_all, rest_for_one): static children to start again, in start
    /// order, each not before its own time (its own backoff: a sibling queued without one
    /// does not wait for another's).
    queue: BTreeMap<usize, Instant>,
    /// The queued child whose start is in flight, with the token of that start.
    queue_inflight: Option<(usize, u64)>,
    queue_token: u64,
    shutting_down: bool,
    gave_up: Option<String>,
    auto_shutdown: AutoShutdown,
    /// Reused to build dynamic children's paths.
    path_buf: String,
}

impl std::fmt::Debug for SupervisorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorState")
            .field("path", &self.path)
            .field("statics", &self.statics.len())
            .field("dynamic", &self.dyns.len())
            .finish()
    }
}

/// Classify a `Terminated` exit reason.
/// The usual reasons are borrowed: a per-message worker's normal end allocates nothing here.
pub fn classify_stop(reason: Option<&str>) -> (ExitClass, Cow<'static, str>) {
    match reason {
        None | Some("normal") => (ExitClass::Normal, Cow::Borrowed("normal")),
        Some("shutdown") => (ExitClass::Shutdown, Cow::Borrowed("shutdown")),
        Some(r) if r.starts_with("shutdown:") => (ExitClass::Shutdown, r.to_owned().into()),
        Some("killed") | Some("actor_task_cancelled") => {
            (ExitClass::Killed, Cow::Borrowed("killed"))
        }
        Some(r) => (ExitClass::Abnormal, r.to_owned().into()),
    }
}

use crate::tree::DYN_ORDER_BASE;

impl SupervisorState {
    fn child(&self, key: ChildKey) -> Option<&Child> {
        match key {
            ChildKey::Static(i) => self.statics.get(i).filter(|c| !c.removed),
            ChildKey::Dynamic(n) => self.dyns.get(&n),
        }
    }

    fn child_mut(&mut self, key: ChildKey) -> Option<&mut Child> {
        match key {
            ChildKey::Static(i) => self.statics.get_mut(i).filter(|c| !c.removed),
            ChildKey::Dynamic(n) => self.dyns.get_mut(&n),
        }
    }

    fn is_root(&self) -> bool {
        !self.path.contains('/')
    }

    fn group_strategy(&self) -> bool {
        self.strategy != Strategy::OneForOne
    }

    /// Write a child's record to the live tree.
    fn publish(&self, key: ChildKey) {
        let Some(c) = self.child(key) else { return };
        let cell = c.cell.clone();
        let (status, generation, started_at, next) =
            (c.status, c.generation, c.started_at, c.next_restart_at);
        self.tree.update(&c.path, |r| {
            r.cell = cell;
            r.status = status;
            r.generation = generation;
            r.restarts = generation.saturating_sub(1);
            r.started_at = started_at;
            r.next_restart_at = next;
        });
    }

    /// Write this supervisor's own info to the live tree.
    fn publish_self(&self) {
        let info = SupervisorInfo {
            strategy: self.strategy,
            max_restarts: self.intensity.max_restarts,
            period_ms: self.intensity.period.as_millis() as u64,
            window_used: self.window.len() as u32,
            dynamic_children: self.dyns.len(),
            max_children: self.dynamic.as_ref().map(|d| d.1),
            gave_up: self.gave_up.clone(),
        };
        self.tree.update(&self.path, |r| r.supervisor = Some(info));
    }

    fn set_status(&mut self, key: ChildKey, status: NodeStatus) {
        if let Some(c) = self.child_mut(key) {
            c.status = status;
            if status != NodeStatus::BackingOff {
                c.next_restart_at = None;
            }
        }
        self.publish(key);
    }

    /// Prepare an incarnation: new generation and token, `starting`, and the context.
    fn prepare_start(
        &mut self,
        myself: &ActorCell,
        key: ChildKey,
    ) -> Option<(StartFn, Duration, ChildCtx)> {
        let tree = self.tree.clone();
        let c = self.child_mut(key)?;
        c.generation += 1;
        c.token += 1;
        c.status = NodeStatus::Starting;
        c.next_restart_at = None;
        let watchdog = if c.spec.handler_deadline.is_some() {
            Watchdog::new()
        } else {
            Watchdog::disabled()
        };
        c.watchdog = watchdog.clone();
        let incarnation = reported::StopError::default();
        c.incarnation = Some(incarnation.clone());
        let ctx = ChildCtx {
            supervisor: myself.clone(),
            path: c.path.clone(),
            generation: c.generation,
            tree,
            watchdog,
            args: c.args.clone(),
            incarnation,
        };
        let out = (c.spec.start.clone(), c.spec.start_timeout, ctx);
        self.publish(key);
        Some(out)
    }

    /// A start returned a live cell.
    fn on_started(&mut self, myself: &ActorRef<SupervisorMessage>, key: ChildKey, cell: ActorCell) {
        let now = Instant::now();
        self.by_id.insert(cell.get_id(), key);
        let Some(c) = self.child_mut(key) else { return };
        c.cell = Some(cell);
        c.status = NodeStatus::Running;
        c.started_at = Some(now);
        c.next_restart_at = None;
        if let Some(deadline) = c.spec.handler_deadline {
            let me = myself.clone();
            let token = c.token;
            let watchdog = c.watchdog.clone();
            let task = tokio::spawn(async move {
                let busy_for = watchdog.overrun(deadline).await;
                let _ = me.send_message(SupervisorMessage::WatchdogFired {
                    key,
                    token,
                    busy_for,
                });
            });
            c.watcher = Some(task.abort_handle());
        }
        let (path, generation) = (c.path.clone(), c.generation);
        self.publish(key);
        self.tree.emit(&path, generation, EventKind::Started);
    }

    fn record_exit(&self, key: ChildKey, class: ExitClass, reason: String) {
        let Some(c) = self.child(key) else { return };
        let exit = self.tree.exit_record(c.generation, class, reason.clone());
        self.tree.push_exit(&c.path, exit);
        self.tree
            .emit(&c.path, c.generation, EventKind::Exited { class, reason });
    }

    /// Count one restart attempt in the sliding window; `Err` when intensity is exceeded.
    fn count_restart(&mut self) -> Result<(), String> {
        let now = Instant::now();
        self.window.push_back(now);
        while let Some(front) = self.window.front() {
            if now.saturating_duration_since(*front) > self.intensity.period {
                self.window.pop_front();
            } else {
                break;
            }
        }
        self.publish_self();
        if self.window.len() as u32 > self.intensity.max_restarts {
            Err(format!(
                "restart intensity exceeded: {} restarts within {} ms (max {})",
                self.window.len(),
                self.intensity.period.as_millis(),
                self.intensity.max_restarts
            ))
        } else {
            Ok(())
        }
    }

    /// Take a child's live cell out of the books before stopping it on purpose.
    fn detach(&mut self, key: ChildKey) -> Option<(ActorCell, Shutdown, reported::StopError)> {
        let c = self.child_mut(key)?;
        c.token += 1;
        if let Some(w) = c.watcher.take() {
            w.abort();
        }
        let cell = c.cell.take()?;
        let policy = c.spec.shutdown;
        let stop_error = c.incarnation.clone().unwrap_or_default();
        let (path, generation) = (c.path.clone(), c.generation);
        c.status = NodeStatus::Stopping;
        self.by_id.remove(&cell.get_id());
        if cell.get_status() >= ActorStatus::Stopping {
            if self.shutting_down {
                // Died on its own while we stop: its exit, still in our mailbox, is recorded
                // when it is handled (before the supervisor itself stops, under `Shutdown`).
                let temporary = match key {
                    ChildKey::Static(i) if self.statics[i].spec.restart == Restart::Temporary => {
                        Some(i)
                    }
                    _ => None,
                };
                self.dying
                    .insert(cell.get_id(), (path, generation, temporary));
            } else {
                // Died on its own and its exit is still in our mailbox: that exit is stale now.
                self.retired.insert(cell.get_id(), (path, generation));
            }
            self.publish(key);
            return None;
        }
        self.expected.insert(cell.get_id());
        self.publish(key);
        Some((cell, policy, stop_error))
    }

    /// Stop the given children: dynamic ones in parallel, then static ones one by one in the
    /// order given. Records each exit; leaves each child with `status_after`.
    async fn stop_children(&mut self, keys: &[ChildKey], status_after: NodeStatus, why: &str) {
        let (dyn_keys, static_keys): (Vec<ChildKey>, Vec<ChildKey>) =
            keys.iter().partition(|k| matches!(k, ChildKey::Dynamic(_)));
        let mut parallel = Vec::new();
        for k in dyn_keys {
            if let Some((cell, policy, stop_error)) = self.detach(k) {
                parallel.push((k, cell, policy, stop_error));
            } else {
                self.set_status(k, status_after);
            }
        }
        let results = join_all(parallel.into_iter().map(
            |(k, cell, policy, stop_error)| async move {
                (k, shutdown_cell(cell, policy, &stop_error).await)
            },
        ))
        .await;
        for (k, (class, reason)) in results {
            self.record_exit(k, class, format!("{reason} ({why})"));
            self.set_status(k, status_after);
        }
        for k in static_keys {
            if let Some((cell, policy, stop_error)) = self.detach(k) {
                let (class, reason) = shutdown_cell(cell, policy, &stop_error).await;
                self.record_exit(k, class, format!("{reason} ({why})"));
            }
            self.set_status(k, status_after);
        }
    }

    /// Stop everything: dynamic children in parallel, then static children in reverse order.
    async fn stop_all(&mut self, why: &str) {
        self.shutting_down = true;
        let mut keys: Vec<ChildKey> = self.dyns.keys().map(|n| ChildKey::Dynamic(*n)).collect();
        keys.extend(
            (0..self.statics.len())
                .rev()
                .filter(|i| !self.statics[*i].removed)
                .map(ChildKey::Static),
        );
        self.stop_children(&keys, NodeStatus::Stopped, why).await;
        for c in self.statics.iter().chain(self.dyns.values()) {
            if c.spec.kind == NodeKind::Supervisor {
                self.tree.purge_below(&c.path);
            }
        }
        for c in std::mem::take(&mut self.dyns).into_values() {
            // A dynamic child's path is `<sup>/<template id>-<n>`, not `<sup>/<n>`.
            self.tree.remove(&c.path);
        }
        self.publish_self();
    }

    fn child_kind(&self, key: ChildKey) -> Option<NodeKind> {
        match key {
            ChildKey::Static(i) => self.statics.get(i).map(|c| c.spec.kind),
            // Already removed from `dyns` by the time this is asked: the template's kind.
            ChildKey::Dynamic(_) => self.dynamic.as_ref().map(|d| d.0.kind),
        }
    }

    /// Remove a child's spec (temporary children, finished dynamic children).
    fn remove_child(&mut self, key: ChildKey) {
        let path = match key {
            ChildKey::Static(i) => {
                let c = &mut self.statics[i];
                c.removed = true;
                c.path.clone()
            }
            ChildKey::Dynamic(n) => match self.dyns.remove(&n) {
                Some(c) => c.path,
                None => return,
            },
        };
        if self.child_kind(key) != Some(NodeKind::Worker) {
            self.tree.purge_below(&path);
        }
        self.tree.remove(&path);
        // A dynamic child's coming and going needs no write of this supervisor's info: the
        // snapshot counts its dynamic children itself (the hot path of per-message workers).
        if matches!(key, ChildKey::Static(_)) {
            self.publish_self();
        }
    }

    async fn give_up(&mut self, reason: String) -> Result<(), ActorProcessingErr> {
        tracing::error!(supervisor = %self.path, %reason, "supervisor gives up");
        self.gave_up = Some(reason.clone());
        self.stop_all("supervisor gave up").await;
        self.publish_self();
        self.tree.emit(
            &self.path,
            0,
            EventKind::GaveUp {
                reason: reason.clone(),
            },
        );
        if self.is_root() {
            self.tree.set_outcome(reason.clone());
            self.tree.update(&self.path, |r| {
                r.status = NodeStatus::Stopped;
                r.cell = None;
            });
        }
        Err(Box::new(SupervisorError::GaveUp {
            path: self.path.clone(),
            reason,
        }))
    }

    /// Start a child in this task (boot and dynamic start), with its start timeout.
    async fn start_inline(
        &mut self,
        myself: &ActorRef<SupervisorMessage>,
        key: ChildKey,
    ) -> Result<(), (ExitClass, String)> {
        let (start, timeout, ctx) = self
            .prepare_start(&myself.get_cell(), key)
            .ok_or_else(|| (ExitClass::StartFailed, "no such child".to_string()))?;
        match run_start(start, timeout, ctx).await {
            Ok(cell) => {
                self.on_started(myself, key, cell);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Start a child in a task of its own; the result comes back as `StartDone`.
    fn spawn_start(&mut self, myself: &ActorRef<SupervisorMessage>, key: ChildKey) {
        let Some((start, timeout, ctx)) = self.prepare_start(&myself.get_cell(), key) else {
            return;
        };
        let token = self.child(key).map(|c| c.token).unwrap_or_default();
        let me = myself.clone();
        self.starts_in_flight += 1;
        tokio::spawn(async move {
            let result = run_start(start, timeout, ctx).await;
            if let Err(ractor::MessagingErr::SendErr(SupervisorMessage::StartDone {
                result: Ok(cell),
                ..
            })) = me.send_message(SupervisorMessage::StartDone { key, token, result })
            {
                // The supervisor is gone: nobody will own this incarnation.
                cell.kill();
            }
        });
    }

    fn schedule(&self, myself: &ActorRef<SupervisorMessage>, at: Instant, due: Due) {
        let me = myself.clone();
        if at <= Instant::now() {
            let _ = me.send_message(SupervisorMessage::RestartDue(due));
            return;
        }
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let _ = me.send_message(SupervisorMessage::RestartDue(due));
        });
    }

    /// A child needs a restart (after an exit, or after a failed start attempt).
    async fn restart_later(
        &mut self,
        myself: &ActorRef<SupervisorMessage>,
        key: ChildKey,
        uptime: Option<Duration>,
        after_failed_start: bool,
    ) -> Result<(), ActorProcessingErr> {
        if let Err(reason) = self.count_restart() {
            return self.give_up(reason).await;
        }
        let mut rng = self.rng.clone();
        let (delay, id, exceeded) = {
            let Some(c) = self.child_mut(key) else {
                return Ok(());
            };
            let b = c.spec.backoff;
            if let Some(up) = uptime {
                if b.reset_after_ms > 0 && up >= b.reset_after() {
                    c.consecutive = 0;
                }
            }
            c.consecutive += 1;
            let exceeded = b.max_retries.is_some_and(|m| c.consecutive > m);
            (
                b.delay(c.consecutive, &mut rng),
                c.id().to_string(),
                exceeded.then_some(b.max_retries),
            )
        };
        self.rng = rng;
        if let Some(Some(max)) = exceeded {
            return self
                .give_up(format!(
                    "child `{id}` failed more than max_retries ({max}) times in a row"
                ))
                .await;
        }
        let at = Instant::now() + delay;
        match key {
            ChildKey::Static(i) if self.group_strategy() => {
                // one_for_all restarts the whole group again when a sibling fails to start
                // during a group restart (OTP's one_for_all_other_child_fails_restart);
                // rest_for_one re-queues only it (those before it are already up).
                if !after_failed_start || self.strategy == Strategy::OneForAll {
                    let group: Vec<usize> = match self.strategy {
                        Strategy::OneForAll => (0..self.statics.len()).collect(),
                        _ => (i..self.statics.len()).collect(),
                    };
                    let group: Vec<usize> = group
                        .into_iter()
                        .filter(|j| !self.statics[*j].removed)
                        .collect();
                    let others: Vec<ChildKey> = group
                        .iter()
                        .rev()
                        .filter(|j| **j != i)
                        .map(|j| ChildKey::Static(*j))
                        .collect();
                    if self.queue_inflight.is_some_and(|(j, _)| group.contains(&j)) {
                        self.queue_inflight = None;
                    }
                    let why = format!("sibling `{id}` failed");
                    self.stop_group(&others, &why).await;
                    for j in group {
                        if !self.statics[j].removed {
                            self.enqueue(j, at);
                        }
                    }
                } else {
                    self.enqueue(i, at);
                }
                for j in self.queue.keys().copied().collect::<Vec<_>>() {
                    if j != i {
                        self.set_status(ChildKey::Static(j), NodeStatus::Restarting);
                    }
                }
                let hold = self.queue.get(&i).copied().unwrap_or(at);
                self.mark_backing_off(key, hold, delay);
                self.drive_queue(myself);
            }
            _ => {
                self.mark_backing_off(key, at, delay);
                let token = self.child(key).map(|c| c.token).unwrap_or_default();
                self.schedule(myself, at, Due::Child { key, token });
            }
        }
        Ok(())
    }

    /// Stop the siblings of a failed child for a group restart. Temporary ones are removed.
    async fn stop_group(&mut self, others: &[ChildKey], why: &str) {
        for k in others {
            // A sibling whose start is in flight: its result will be discarded (token bumped).
            if let Some(c) = self.child_mut(*k) {
                if c.cell.is_none() {
                    c.token += 1;
                }
            }
            self.stop_children(std::slice::from_ref(k), NodeStatus::Restarting, why)
                .await;
            let (path, generation, temporary) = match self.child(*k) {
                Some(c) => (
                    c.path.clone(),
                    c.generation,
                    c.spec.restart == Restart::Temporary,
                ),
                None => continue,
            };
            self.tree
                .emit(&path, generation, EventKind::StoppedForRestart);
            if self
                .child(*k)
                .is_some_and(|c| c.spec.kind == NodeKind::Supervisor)
            {
                self.tree.purge_below(&path);
            }
            if temporary {
                self.remove_child(*k);
            }
        }
    }

    fn mark_backing_off(&mut self, key: ChildKey, at: Instant, delay: Duration) {
        let Some(c) = self.child_mut(key) else { return };
        c.status = NodeStatus::BackingOff;
        c.next_restart_at = Some(at);
        let (path, generation) = (c.path.clone(), c.generation);
        self.publish(key);
        self.tree.emit(
            &path,
            generation,
            EventKind::BackingOff {
                delay_ms: delay.as_millis() as u64,
            },
        );
    }

    /// Queue static child `j` for a group restart not before `at`; a child already queued
    /// keeps the later of its time and `at` (its own backoff is not cut short).
    fn enqueue(&mut self, j: usize, at: Instant) {
        let hold = self.queue.get(&j).map_or(at, |h| (*h).max(at));
        self.queue.insert(j, hold);
    }

    /// Take a static child out of the group restart queue (it was terminated).
    fn dequeue(&mut self, i: usize) {
        self.queue.remove(&i);
        if self.queue_inflight.is_some_and(|(j, _)| j == i) {
            self.queue_inflight = None;
        }
    }

    /// Start the next queued static child if its time has come, else wake up then. One at
    /// a time, in start order.
    fn drive_queue(&mut self, myself: &ActorRef<SupervisorMessage>) {
        if self.shutting_down || self.queue_inflight.is_some() {
            return;
        }
        while let Some((&i, &hold)) = self.queue.first_key_value() {
            if self.statics[i].removed {
                self.queue.remove(&i);
                continue;
            }
            if hold > Instant::now() {
                self.queue_token += 1;
                let token = self.queue_token;
                self.schedule(myself, hold, Due::Queue { token });
                return;
            }
            self.queue.remove(&i);
            self.spawn_start(myself, ChildKey::Static(i));
            let token = self.statics[i].token;
            self.queue_inflight = Some((i, token));
            return;
        }
    }

    /// A supervision event about one of our children.
    async fn on_exit(
        &mut self,
        myself: &ActorRef<SupervisorMessage>,
        id: ActorId,
        class: ExitClass,
        reason: Cow<'static, str>,
    ) -> Result<(), ActorProcessingErr> {
        if self.expected.remove(&id) {
            return Ok(());
        }
        if let Some((path, generation, temporary)) = self.dying.remove(&id) {
            tracing::info!(child = %path, generation, ?class, %reason, "child exited on its own while its supervisor stopped");
            let reason = reason.into_owned();
            let exit = self.tree.exit_record(generation, class, reason.clone());
            self.tree.push_exit(&path, exit);
            self.tree
                .emit(&path, generation, EventKind::Exited { class, reason });
            if let Some(i) = temporary {
                // OTP keeps no spec of a temporary child (sup_stop_non_shutdown_exit_dynamic).
                self.remove_child(ChildKey::Static(i));
            }
            return Ok(());
        }
        let Some(key) = self.by_id.remove(&id) else {
            if let Some((path, generation)) = self.retired.remove(&id) {
                tracing::debug!(%path, generation, "ignoring exit of a retired incarnation");
                self.tree.emit(&path, generation, EventKind::StaleIgnored);
            } else if self.starts_in_flight > 0 {
                // Maybe an incarnation whose StartDone is still in our mailbox.
                self.early_exits.insert(id, (class, reason.into_owned()));
            }
            return Ok(());
        };
        let now = Instant::now();
        let shutting_down = self.shutting_down;
        let Some(c) = self.child_mut(key) else {
            return Ok(());
        };
        if let Some(w) = c.watcher.take() {
            w.abort();
        }
        c.cell = None;
        c.token += 1;
        let (class, reason) = match c.pending_exit.take() {
            Some((class, reason)) => (class, Cow::Owned(reason)),
            None => (class, reason),
        };
        let uptime = c.started_at.map(|s| now.saturating_duration_since(s));
        let restart = match c.spec.restart {
            Restart::Permanent => true,
            Restart::Transient => class.is_abnormal(),
            Restart::Temporary => false,
        } && !shutting_down;
        let (kind, restart_type, path, generation, significant) = (
            c.spec.kind,
            c.spec.restart,
            c.path.clone(),
            c.generation,
            c.spec.significant,
        );
        if class.is_abnormal() {
            tracing::info!(child = %path, generation, ?class, %reason, restart, "child exited");
        } else {
            tracing::debug!(child = %path, generation, ?class, %reason, restart, "child exited");
        }
        let removing =
            !restart && (restart_type == Restart::Temporary || matches!(key, ChildKey::Dynamic(_)));
        if removing {
            // Its record goes away at once: only the event stream hears of this exit.
            if self.tree.has_subscribers() {
                let reason = reason.into_owned();
                self.tree
                    .emit(&path, generation, EventKind::Exited { class, reason });
            }
        } else {
            self.record_exit(key, class, reason.into_owned());
        }
        if kind == NodeKind::Supervisor {
            // Its subtree died with it; the next incarnation writes its own.
            self.tree.purge_below(&path);
        }
        if restart {
            return self.restart_later(myself, key, uptime, false).await;
        }
        if removing {
            self.remove_child(key);
        } else {
            self.set_status(key, NodeStatus::Stopped);
        }
        self.tree.emit(&path, generation, EventKind::Stopped);
        if significant && !shutting_down && self.auto_shutdown_due() {
            tracing::info!(supervisor = %self.path, child = %path, "significant child ended: auto_shutdown");
            myself.stop(Some("shutdown: auto_shutdown".into()));
        }
        Ok(())
    }

    /// Stop a child on request; it is not restarted. A dynamic or temporary child's spec goes
    /// (OTP keeps no spec of a temporary child); a static one stays `stopped`, out of any
    /// pending group restart.
    async fn terminate(&mut self, myself: &ActorRef<SupervisorMessage>, key: ChildKey) {
        if let ChildKey::Static(i) = key {
            self.dequeue(i);
        }
        self.stop_children(&[key], NodeStatus::Stopped, "terminated on request")
            .await;
        let temporary = self
            .child(key)
            .is_some_and(|c| c.spec.restart == Restart::Temporary);
        if matches!(key, ChildKey::Dynamic(_)) || temporary {
            self.remove_child(key);
        }
        self.drive_queue(myself);
    }

    /// The index of static child `id` if it is terminated (restartable, deletable).
    fn terminated_static(&self, id: &str) -> Result<usize, SupervisorError> {
        let Some(ChildKey::Static(i)) = self.child_key_by_id(id) else {
            return Err(SupervisorError::NoSuchChild(id.to_owned()));
        };
        match self.statics[i].status {
            NodeStatus::Stopped => Ok(i),
            NodeStatus::Running | NodeStatus::Starting | NodeStatus::Stopping => {
                Err(SupervisorError::Running(id.to_owned()))
            }
            _ => Err(SupervisorError::Restarting(id.to_owned())),
        }
    }

    /// Append a static child at run time and start it at once.
    async fn add_static(
        &mut self,
        myself: &ActorRef<SupervisorMessage>,
        spec: ChildSpec,
    ) -> Result<ActorCell, SupervisorError> {
        if self.shutting_down {
            return Err(SupervisorError::ShuttingDown);
        }
        if let Some(ChildKey::Static(i)) = self.child_key_by_id(&spec.id) {
            return Err(match self.statics[i].status {
                NodeStatus::Stopped => SupervisorError::AlreadyPresent(spec.id),
                _ => SupervisorError::AlreadyStarted(spec.id),
            });
        }
        check_id(&spec.id, "id")?;
        check_significant(&spec, self.auto_shutdown, "significant")?;
        let i = self.statics.len();
        let id = spec.id.clone();
        let path: Arc<str> = format!("{}/{id}", self.path).into();
        let order = i as u64;
        self.tree.insert(
            path.clone(),
            NodeRecord::new(spec.kind, spec.restart, order),
        );
        self.statics
            .push(Child::new(Arc::new(spec), None, path, order));
        let key = ChildKey::Static(i);
        match self.start_inline(myself, key).await {
            Ok(()) => self.child(key).and_then(|c| c.cell.clone()).ok_or_else(|| {
                SupervisorError::StartFailed {
                    child: id,
                    reason: "exited during start".into(),
                }
            }),
            Err((_, reason)) => {
                // OTP: a child that fails to start is not added.
                self.remove_child(key);
                Err(SupervisorError::StartFailed { child: id, reason })
            }
        }
    }

    /// After a significant child ended without a restart: whether this supervisor ends
    /// (its `auto_shutdown`).
    fn auto_shutdown_due(&self) -> bool {
        let alive = || {
            self.statics
                .iter()
                .filter(|c| !c.removed)
                .chain(self.dyns.values())
                .any(|c| c.spec.significant && c.status != NodeStatus::Stopped)
        };
        match self.auto_shutdown {
            AutoShutdown::Never => false,
            AutoShutdown::AnySignificant => true,
            AutoShutdown::AllSignificant => !alive(),
        }
    }

    fn child_key_by_id(&self, id: &str) -> Option<ChildKey> {
        if let Some(i) = self.statics.iter().position(|c| !c.removed && c.id() == id) {
            return Some(ChildKey::Static(i));
        }
        self.dyns
            .iter()
            .find(|(_, c)| c.id() == id)
            .map(|(n, _)| ChildKey::Dynamic(*n))
    }
}

/// Run a start function under its start timeout.
async fn run_start(
    start: StartFn,
    timeout: Duration,
    ctx: ChildCtx,
) -> Result<ActorCell, (ExitClass, String)> {
    let incarnation = ctx.incarnation.clone();
    match tokio::time::timeout(timeout, start(ctx)).await {
        Ok(Ok(cell)) => Ok(cell),
        Ok(Err(e)) => Err((ExitClass::StartFailed, e.to_string())),
        Err(_) => {
            // It may have spawned its actor before overrunning: that incarnation is nobody's
            // and must not run beside the next one.
            let orphans = incarnation.take_spawned();
            for cell in &orphans {
                let _ = cell.kill_and_wait(None).await;
            }
            Err((
                ExitClass::Timeout,
                format!("start did not return within {} ms", timeout.as_millis()),
            ))
        }
    }
}

/// Stop one cell per its shutdown policy; returns how it ended. A stop hook that failed
/// makes it abnormal.
async fn shutdown_cell(
    cell: ActorCell,
    policy: Shutdown,
    stop_error: &reported::StopError,
) -> (ExitClass, String) {
    let ended = stop_per_policy(cell, policy).await;
    match stop_error.take_stop_error() {
        Some(e) if ended.0 == ExitClass::Shutdown => {
            (ExitClass::Abnormal, format!("stop hook failed: {e}"))
        }
        _ => ended,
    }
}

async fn stop_per_policy(cell: ActorCell, policy: Shutdown) -> (ExitClass, String) {
    match policy {
        Shutdown::BrutalKill => {
            let _ = cell.kill_and_wait(None).await;
            (ExitClass::Killed, "killed (brutal_kill)".into())
        }
        Shutdown::Timeout(d) => match cell.stop_and_wait(Some("shutdown".into()), Some(d)).await {
            Err(RactorErr::Timeout) => {
                let _ = cell.kill_and_wait(None).await;
                (
                    ExitClass::Killed,
                    format!(
                        "did not stop within the shutdown timeout of {} ms; killed",
                        d.as_millis()
                    ),
                )
            }
            _ => (ExitClass::Shutdown, "shutdown".into()),
        },
        Shutdown::Infinity => {
            // A child supervisor stops through its mailbox, so that its own children's exits
            // during the stop are recorded; anything else through ractor's stop signal.
            if cell.is_message_type_of::<SupervisorMessage>() == Some(true)
                && cell.send_message(SupervisorMessage::Shutdown).is_ok()
            {
                let _ = cell.wait(None).await;
            } else {
                let _ = cell.stop_and_wait(Some("shutdown".into()), None).await;
            }
            (ExitClass::Shutdown, "shutdown".into())
        }
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMessage;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let SupervisorArgs { spec, tree, path } = args;
        spec.validate()?;
        let root = !path.contains('/');
        if root || tree.update(&path, |_| ()).is_none() {
            tree.insert(
                path.as_str().into(),
                NodeRecord::new(NodeKind::Supervisor, Restart::Permanent, 0),
            );
        }
        let statics = spec
            .children
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let child_path = format!("{path}/{}", s.id).into();
                Child::new(Arc::new(s), None, child_path, i as u64)
            })
            .collect::<Vec<_>>();
        let mut state = SupervisorState {
            path: path.clone(),
            tree: tree.clone(),
            strategy: spec.strategy,
            intensity: spec.intensity,
            rng: SplitMix64::new(spec.seed),
            statics,
            dynamic: spec.dynamic.map(|d| (Arc::new(d.template), d.max_children)),
            dyns: BTreeMap::new(),
            next_dyn: 0,
            by_id: HashMap::new(),
            expected: HashSet::new(),
            retired: HashMap::new(),
            early_exits: HashMap::new(),
            starts_in_flight: 0,
            dying: HashMap::new(),
            window: Default::default(),
            queue: BTreeMap::new(),
            queue_inflight: None,
            queue_token: 0,
            shutting_down: false,
            gave_up: None,
            auto_shutdown: spec.auto_shutdown,
            path_buf: String::new(),
        };
        state.publish_self();
        for i in 0..state.statics.len() {
            let c = &state.statics[i];
            let rec = NodeRecord::new(c.spec.kind, c.spec.restart, c.order);
            tree.insert(c.path.clone(), rec);
        }
        for i in 0..state.statics.len() {
            if let Err((class, reason)) = state.start_inline(&myself, ChildKey::Static(i)).await {
                let id = state.statics[i].id().to_string();
                state.record_exit(ChildKey::Static(i), class, reason.clone());
                state.set_status(ChildKey::Static(i), NodeStatus::Stopped);
                tracing::error!(supervisor = %path, child = %id, %reason, "child failed to start at boot; rolling back");
                let started: Vec<ChildKey> = (0..i).rev().map(ChildKey::Static).collect();
                state
                    .stop_children(&started, NodeStatus::Stopped, "boot rolled back")
                    .await;
                if root {
                    tree.update(&path, |r| r.status = NodeStatus::Stopped);
                }
                return Err(Box::new(SupervisorError::StartFailed { child: id, reason }));
            }
        }
        if root {
            let cell = myself.get_cell();
            tree.update(&path, |r| {
                r.cell = Some(cell);
                r.status = NodeStatus::Running;
                r.generation = 1;
                r.started_at = Some(Instant::now());
            });
            tree.emit(&path, 1, EventKind::Started);
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.stop_all("supervisor shutting down").await;
        if state.is_root() {
            state.tree.update(&state.path, |r| {
                r.status = NodeStatus::Stopped;
                r.cell = None;
            });
            state.tree.emit(&state.path, 1, EventKind::Stopped);
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMessage::StartChild { args, reply } => {
                let result = start_dynamic(&myself, state, args).await;
                let _ = reply.send(result);
            }
            SupervisorMessage::StartChildNoReply { args } => {
                if let Err(e) = start_dynamic(&myself, state, args).await {
                    tracing::warn!(supervisor = %state.path, error = %e, "dynamic child not started");
                }
            }
            SupervisorMessage::TerminateChild { id, reply } => {
                let result = match state.child_key_by_id(&id) {
                    None => Err(SupervisorError::NoSuchChild(id)),
                    Some(key) => {
                        state.terminate(&myself, key).await;
                        Ok(())
                    }
                };
                let _ = reply.send(result);
            }
            SupervisorMessage::TerminateChildById { actor, reply } => {
                let result = match state.by_id.get(&actor).copied() {
                    None => Err(SupervisorError::NoSuchChild(actor.to_string())),
                    Some(key) => {
                        state.terminate(&myself, key).await;
                        Ok(())
                    }
                };
                let _ = reply.send(result);
            }
            SupervisorMessage::StartStaticChild { spec, reply } => {
                let result = state.add_static(&myself, *spec).await;
                let _ = reply.send(result);
            }
            SupervisorMessage::RestartChild { id, reply } => {
                let result = match state.terminated_static(&id) {
                    Err(e) => Err(e),
                    Ok(i) => state
                        .start_inline(&myself, ChildKey::Static(i))
                        .await
                        .map_err(|(class, reason)| {
                            state.record_exit(ChildKey::Static(i), class, reason.clone());
                            state.set_status(ChildKey::Static(i), NodeStatus::Stopped);
                            SupervisorError::StartFailed {
                                child: id.clone(),
                                reason,
                            }
                        }),
                };
                let _ = reply.send(result);
            }
            SupervisorMessage::DeleteChild { id, reply } => {
                let result = state
                    .terminated_static(&id)
                    .map(|i| state.remove_child(ChildKey::Static(i)));
                let _ = reply.send(result);
            }
            SupervisorMessage::Shutdown => {
                if !state.shutting_down {
                    state.stop_all("supervisor shutting down").await;
                    // After the exits queued meanwhile (supervision events come first).
                    myself.send_message(SupervisorMessage::FinishShutdown)?;
                }
            }
            SupervisorMessage::FinishShutdown => {
                myself.stop(Some("shutdown".into()));
            }
            SupervisorMessage::WhichChildren(reply) => {
                let list = state
                    .statics
                    .iter()
                    .filter(|c| !c.removed)
                    .map(|c| (false, c))
                    .chain(state.dyns.values().map(|c| (true, c)))
                    .map(|(dynamic, c)| ChildInfo {
                        id: c.id().to_string(),
                        path: c.path.to_string(),
                        dynamic,
                        status: c.status,
                        generation: c.generation,
                        cell: c.cell.clone(),
                    })
                    .collect();
                let _ = reply.send(list);
            }
            SupervisorMessage::CountChildren(reply) => {
                let all = state
                    .statics
                    .iter()
                    .filter(|c| !c.removed)
                    .chain(state.dyns.values());
                let mut counts = ChildCounts::default();
                for c in all {
                    counts.specs += 1;
                    if c.status == NodeStatus::Running {
                        counts.active += 1;
                    }
                    match c.spec.kind {
                        NodeKind::Supervisor => counts.supervisors += 1,
                        NodeKind::Worker => counts.workers += 1,
                    }
                }
                counts.dynamic = state.dyns.len();
                let _ = reply.send(counts);
            }
            SupervisorMessage::RestartDue(due) => {
                if state.shutting_down {
                    return Ok(());
                }
                match due {
                    Due::Child { key, token } => {
                        if state
                            .child(key)
                            .is_some_and(|c| c.token == token && c.status == NodeStatus::BackingOff)
                        {
                            state.spawn_start(&myself, key);
                        }
                    }
                    Due::Queue { token } => {
                        if token == state.queue_token {
                            state.drive_queue(&myself);
                        }
                    }
                }
            }
            SupervisorMessage::StartDone { key, token, result } => {
                state.starts_in_flight = state.starts_in_flight.saturating_sub(1);
                let early = match &result {
                    Ok(cell) => state.early_exits.remove(&cell.get_id()),
                    Err(_) => None,
                };
                if state.starts_in_flight == 0 {
                    state.early_exits.clear();
                }
                // The queue goes on after this start, current or not (a stale report that
                // left the marker set stalled the group restart for good).
                if let ChildKey::Static(i) = key {
                    if state.queue_inflight == Some((i, token)) {
                        state.queue_inflight = None;
                    }
                }
                let current =
                    state.child(key).is_some_and(|c| c.token == token) && !state.shutting_down;
                if !current {
                    if let Ok(cell) = result {
                        // Superseded while starting: this incarnation is nobody's.
                        if early.is_none() {
                            state.expected.insert(cell.get_id());
                        }
                        cell.kill();
                    }
                    state.drive_queue(&myself);
                    return Ok(());
                }
                match result {
                    Ok(cell) => {
                        let id = cell.get_id();
                        state.on_started(&myself, key, cell);
                        if let Some((class, reason)) = early {
                            // It died before this report was handled: its exit counts now.
                            state.on_exit(&myself, id, class, reason.into()).await?;
                        }
                        state.drive_queue(&myself);
                    }
                    Err((class, reason)) => {
                        tracing::warn!(child = %state.child(key).map(|c| &*c.path).unwrap_or("?"), %reason, "restart attempt failed");
                        state.record_exit(key, class, reason);
                        state.restart_later(&myself, key, None, true).await?;
                    }
                }
            }
            SupervisorMessage::WatchdogFired {
                key,
                token,
                busy_for,
            } => {
                if let Some(c) = state.child_mut(key) {
                    if c.token == token {
                        if let Some(cell) = c.cell.clone() {
                            let deadline = c.spec.handler_deadline.unwrap_or_default();
                            c.pending_exit = Some((
                                ExitClass::Timeout,
                                format!(
                                    "handler deadline of {} ms exceeded (busy for {} ms); killed",
                                    deadline.as_millis(),
                                    busy_for.as_millis()
                                ),
                            ));
                            cell.kill();
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let (class, reason) = classify_stop(reason.as_deref());
                state.on_exit(&myself, cell.get_id(), class, reason).await
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                state
                    .on_exit(
                        &myself,
                        cell.get_id(),
                        ExitClass::Abnormal,
                        err.to_string().into(),
                    )
                    .await
            }
            _ => Ok(()),
        }
    }
}

async fn start_dynamic(
    myself: &ActorRef<SupervisorMessage>,
    state: &mut SupervisorState,
    args: DynArgs,
) -> Result<StartedChild, SupervisorError> {
    if state.shutting_down {
        return Err(SupervisorError::ShuttingDown);
    }
    let Some((template, max_children)) = state.dynamic.clone() else {
        return Err(SupervisorError::NoDynamicSpec);
    };
    if state.dyns.len() >= max_children {
        return Err(SupervisorError::MaxChildren(max_children));
    }
    state.next_dyn += 1;
    let n = state.next_dyn;
    // Written into a kept buffer and copied once into the shared `Arc<str>`.
    let mut buf = std::mem::take(&mut state.path_buf);
    buf.clear();
    let _ = write!(buf, "{}/{}-{n}", state.path, template.id);
    let path: Arc<str> = Arc::from(buf.as_str());
    state.path_buf = buf;
    let order = DYN_ORDER_BASE + n;
    let record = NodeRecord::new(template.kind, template.restart, order);
    state
        .dyns
        .insert(n, Child::new(template, Some(args), path.clone(), order));
    state.tree.insert(path.clone(), record);
    let key = ChildKey::Dynamic(n);
    match state.start_inline(myself, key).await {
        Ok(()) => {
            let cell = state
                .child(key)
                .and_then(|c| c.cell.clone())
                .ok_or_else(|| SupervisorError::StartFailed {
                    child: last_segment(&path).to_string(),
                    reason: "exited during start".into(),
                })?;
            Ok(StartedChild { path, cell })
        }
        Err((_, reason)) => {
            state.remove_child(key);
            Err(SupervisorError::StartFailed {
                child: last_segment(&path).to_string(),
                reason,
            })
        }
    }
}

/// Start a dynamic child of `sup` with `args`.
pub async fn start_child<T: std::any::Any + Send + Sync>(
    sup: &ActorRef<SupervisorMessage>,
    args: T,
) -> Result<StartedChild, SupervisorError> {
    let args: DynArgs = Arc::new(args);
    ractor::call!(sup, |reply| SupervisorMessage::StartChild { args, reply })
        .map_err(|e| SupervisorError::Unreachable(e.to_string()))?
}

/// Start a dynamic child of `sup` with `args` without waiting for it: `Ok` means the request
/// was handed to the supervisor. Failures to start are logged by the supervisor and drop
/// `args`.
pub fn start_child_no_reply<T: std::any::Any + Send + Sync>(
    sup: &ActorRef<SupervisorMessage>,
    args: T,
) -> Result<(), SupervisorError> {
    let args: DynArgs = Arc::new(args);
    sup.send_message(SupervisorMessage::StartChildNoReply { args })
        .map_err(|e| SupervisorError::Unreachable(e.to_string()))
}

/// Stop one child of `sup` by id.
pub async fn terminate_child(
    sup: &ActorRef<SupervisorMessage>,
    id: &str,
) -> Result<(), SupervisorError> {
    let id = id.to_string();
    ractor::call!(sup, |reply| SupervisorMessage::TerminateChild { id, reply })
        .map_err(|e| SupervisorError::Unreachable(e.to_string()))?
}

/// Count the children of `sup`.
pub async fn count_children(
    sup: &ActorRef<SupervisorMessage>,
) -> Result<ChildCounts, SupervisorError> {
    ractor::call!(sup, SupervisorMessage::CountChildren)
        .map_err(|e| SupervisorError::Unreachable(e.to_string()))
}

/// List the children of `sup`.
pub async fn which_children(
    sup: &ActorRef<SupervisorMessage>,
) -> Result<Vec<ChildInfo>, SupervisorError> {
    ractor::call!(sup, SupervisorMessage::WhichChildren)
        .map_err(|e| SupervisorError::Unreachable(e.to_string()))
}

/// Stop the child of `sup` that is `actor` (a dynamic instance or a static child), by
/// identity rather than id.
pub async fn terminate_child_by_id(
    sup: &ActorRef<SupervisorMessage>,
    actor: ActorId,
) -> Result<(), SupervisorError> {
    ractor::call!(sup, |reply| SupervisorMessage::TerminateChildById {
        actor,
        reply
    })
    .map_err(|e| SupervisorError::Unreachable(e.to_string()))?
}

/// Add `spec` as the last static child of `sup` and start it; its cell once started.
pub async fn start_static_child(
    sup: &ActorRef<SupervisorMessage>,
    spec: ChildSpec,
) -> Result<ActorCell, SupervisorError> {
    let spec = Box::new(spec);
    ractor::call!(sup, |reply| SupervisorMessage::StartStaticChild {
        spec,
        reply
    })
    .map_err(|e| SupervisorError::Unreachable(e.to_string()))?
}

/// Start the terminated static child `id` of `sup` again.
pub async fn restart_child(
    sup: &ActorRef<SupervisorMessage>,
    id: &str,
) -> Result<(), SupervisorError> {
    let id = id.to_string();
    ractor::call!(sup, |reply| SupervisorMessage::RestartChild { id, reply })
        .map_err(|e| SupervisorError::Unreachable(e.to_string()))?
}

/// Remove the terminated static child `id` of `sup`.
pub async fn delete_child(
    sup: &ActorRef<SupervisorMessage>,
    id: &str,
) -> Result<(), SupervisorError> {
    let id = id.to_string();
    ractor::call!(sup, |reply| SupervisorMessage::DeleteChild { id, reply })
        .map_err(|e| SupervisorError::Unreachable(e.to_string()))?
}

/// Stop `sup` through its mailbox ([`SupervisorMessage::Shutdown`]) and wait until it is gone.
pub async fn shutdown(sup: &ActorRef<SupervisorMessage>) -> Result<(), SupervisorError> {
    sup.send_message(SupervisorMessage::Shutdown)
        .map_err(|e| SupervisorError::Unreachable(e.to_string()))?;
    sup.get_cell()
        .wait(None)
        .await
        .map_err(|e| SupervisorError::Unreachable(e.to_string()))
}
