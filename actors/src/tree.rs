//! The live tree: one shared, cached view of every node of the supervision tree.
//!
//! Supervisors write their children's records here as things happen (start, exit, backoff,
//! restart, stop); readers (the status endpoint, the stable [`ChildHandle`]s, tests) never
//! message an actor to read it, so a hung actor can never hang a snapshot.
//!
//! Ownership of a record: the *parent* supervisor writes a node's status, generation, restart
//! count and exits; a supervisor writes its *own* [`SupervisorInfo`] (strategy, intensity,
//! window usage). When a supervisor dies, its parent purges the dead subtree's records; the
//! next incarnation writes them again.
//!
//! Times come from `tokio::time` (so the paused test clock governs them) and are reported in
//! milliseconds since the tree was created, plus a wall-clock rendering anchored at creation.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use ractor::{ActorCell, ActorRef, ActorStatus};
use serde::Serialize;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::supervisor::policy::{Restart, Strategy};

/// How many exits each node remembers, newest last.
pub const DEFAULT_MAX_EXITS: usize = 10;
/// The event ring is allocated whole when the tree is made (about 130 bytes a slot) and keeps
/// the last this many events alive: room for a test or a console that reads in bursts.
const EVENT_CAPACITY: usize = 16_384;
/// Give-ups are rare: a listener for them alone needs few slots.
const GAVE_UP_CAPACITY: usize = 64;

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    Supervisor,
    Worker,
}

/// Where a node is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Its start function is running.
    Starting,
    /// Up and handling messages.
    Running,
    /// Crashed; waiting out its backoff before the next start attempt (`next_restart_at`).
    BackingOff,
    /// Stopped by its supervisor as part of a group restart (one_for_all / rest_for_one), or
    /// queued behind an earlier sibling's restart.
    Restarting,
    /// Being shut down.
    Stopping,
    /// Not running and not going to be restarted (a transient child that exited normally, or
    /// the tree is shut down).
    Stopped,
}

/// How an incarnation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitClass {
    /// Stopped by itself without a reason, or with reason `"normal"`.
    Normal,
    /// Stopped by its supervisor, or by itself with reason `"shutdown"` / `"shutdown: …"`.
    Shutdown,
    /// A panic, an `Err` from a hook or handler, or a stop with any other reason.
    Abnormal,
    /// `ActorCell::kill()` from anyone but its supervisor's own shutdown.
    Killed,
    /// Its start function failed.
    StartFailed,
    /// A watchdog fired: the start timeout or the handler deadline.
    Timeout,
}

impl ExitClass {
    /// Whether a transient child is restarted after an exit of this class (OTP: anything but
    /// `normal`, `shutdown` and `{shutdown, _}`).
    pub fn is_abnormal(self) -> bool {
        !matches!(self, ExitClass::Normal | ExitClass::Shutdown)
    }
}

/// One remembered exit.
#[derive(Debug, Clone, Serialize)]
pub struct ExitRecord {
    pub generation: u64,
    pub class: ExitClass,
    pub reason: String,
    /// Milliseconds since the tree was created.
    pub at_ms: u64,
    /// Wall clock, Unix milliseconds.
    pub at_unix_ms: u64,
}

/// A supervisor's own view of itself.
#[derive(Debug, Clone, Serialize)]
pub struct SupervisorInfo {
    pub strategy: Strategy,
    pub max_restarts: u32,
    pub period_ms: u64,
    /// Restarts counted in the current sliding window.
    pub window_used: u32,
    pub dynamic_children: usize,
    pub max_children: Option<usize>,
    /// Set when the supervisor gave up (intensity or max retries exceeded).
    pub gave_up: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct NodeRecord {
    pub kind: NodeKind,
    pub restart: Restart,
    pub order: u64,
    pub cell: Option<ActorCell>,
    pub generation: u64,
    pub status: NodeStatus,
    pub restarts: u64,
    pub started_at: Option<Instant>,
    pub next_restart_at: Option<Instant>,
    pub exits: VecDeque<ExitRecord>,
    pub supervisor: Option<SupervisorInfo>,
}

impl NodeRecord {
    pub(crate) fn new(kind: NodeKind, restart: Restart, order: u64) -> Self {
        NodeRecord {
            kind,
            restart,
            order,
            cell: None,
            generation: 0,
            status: NodeStatus::Starting,
            restarts: 0,
            started_at: None,
            next_restart_at: None,
            exits: VecDeque::new(),
            supervisor: None,
        }
    }
}

/// Order offset of a supervisor's dynamic children after its static ones (a record's `order`
/// at or above it marks a dynamic child).
pub(crate) const DYN_ORDER_BASE: u64 = 1 << 32;

/// What happened, as a stream (see [`Tree::subscribe`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    Started,
    Exited {
        class: ExitClass,
        reason: String,
    },
    BackingOff {
        delay_ms: u64,
    },
    /// Stopped by its supervisor because a sibling failed (one_for_all / rest_for_one).
    StoppedForRestart,
    /// A child's exit that needs no restart (temporary, transient + normal) or a shutdown.
    Stopped,
    /// A supervision event from an incarnation that is no longer current; ignored.
    StaleIgnored,
    /// The supervisor at `path` gave up.
    GaveUp {
        reason: String,
    },
}

/// One supervision event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TreeEvent {
    pub at_ms: u64,
    pub path: String,
    pub generation: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// One node of a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct NodeSnapshot {
    pub path: String,
    pub name: String,
    pub kind: NodeKind,
    /// The ractor actor id of the current incarnation, if one is alive.
    pub id: Option<String>,
    pub generation: u64,
    pub status: NodeStatus,
    pub restart: Restart,
    pub restarts: u64,
    pub uptime_ms: Option<u64>,
    pub next_restart_at_ms: Option<u64>,
    pub next_restart_in_ms: Option<u64>,
    pub last_exits: Vec<ExitRecord>,
    /// What the running actor says about itself ([`Tree::set_detail`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supervisor: Option<SupervisorInfo>,
    pub children: Vec<NodeSnapshot>,
}

impl NodeSnapshot {
    /// Depth-first search by path.
    pub fn find(&self, path: &str) -> Option<&NodeSnapshot> {
        if self.path == path {
            return Some(self);
        }
        if !path.starts_with(&self.path) {
            return None;
        }
        self.children.iter().find_map(|c| c.find(path))
    }

    /// Every node of this subtree, depth first.
    pub fn walk(&self) -> Vec<&NodeSnapshot> {
        let mut out = vec![self];
        for c in &self.children {
            out.extend(c.walk());
        }
        out
    }
}

/// The whole tree at one instant.
#[derive(Debug, Clone, Serialize)]
pub struct TreeSnapshot {
    pub taken_at_ms: u64,
    pub taken_at_unix_ms: u64,
    pub nodes: usize,
    pub roots: Vec<NodeSnapshot>,
}

impl TreeSnapshot {
    pub fn find(&self, path: &str) -> Option<&NodeSnapshot> {
        self.roots.iter().find_map(|r| r.find(path))
    }
}

/// Why a lookup through a stable handle found no live actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("the actor is restarting")]
    Restarting,
    #[error("the actor is stopped")]
    Stopped,
    #[error("no such actor")]
    NotFound,
}

struct TreeInner {
    /// Keyed by path, shared with the supervisor's own record of the child (no copy per start).
    nodes: RwLock<BTreeMap<Arc<str>, NodeRecord>>,
    events: broadcast::Sender<TreeEvent>,
    /// Only the `GaveUp` events, for a listener (the alert worker) that wants nothing else:
    /// while it is the only one, no event is built for each worker's start and stop.
    gave_up: broadcast::Sender<TreeEvent>,
    origin: Instant,
    wall_origin: SystemTime,
    max_exits: usize,
    outcome: Mutex<Option<String>>,
    /// What a running actor says about itself, with the incarnation that said it (see
    /// [`Tree::set_detail`]).
    details: RwLock<BTreeMap<String, (ractor::ActorId, String)>>,
}

/// The shared live tree. Cheap to clone; pass it in `Args`.
#[derive(Clone)]
pub struct Tree {
    inner: Arc<TreeInner>,
}

impl std::fmt::Debug for Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tree")
            .field("nodes", &self.inner.nodes.read().len())
            .finish()
    }
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    pub fn new() -> Self {
        Self::with_max_exits(DEFAULT_MAX_EXITS)
    }

    /// A tree whose nodes remember the last `max_exits` exits each.
    pub fn with_max_exits(max_exits: usize) -> Self {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let (gave_up, _) = broadcast::channel(GAVE_UP_CAPACITY);
        Tree {
            inner: Arc::new(TreeInner {
                nodes: RwLock::new(BTreeMap::new()),
                events,
                gave_up,
                origin: Instant::now(),
                wall_origin: SystemTime::now(),
                max_exits: max_exits.max(1),
                outcome: Mutex::new(None),
                details: RwLock::new(BTreeMap::new()),
            }),
        }
    }

    /// The stream of supervision events from now on. A receiver that falls more than 16,384
    /// events behind loses the oldest ones (`RecvError::Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<TreeEvent> {
        self.inner.events.subscribe()
    }

    /// The `GaveUp` events from now on, and nothing else (64 may be pending before the
    /// oldest is lost).
    pub fn subscribe_gave_up(&self) -> broadcast::Receiver<TreeEvent> {
        self.inner.gave_up.subscribe()
    }

    /// Milliseconds since the tree was created (tokio clock).
    pub fn now_ms(&self) -> u64 {
        self.ms_of(Instant::now())
    }

    pub(crate) fn ms_of(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.inner.origin).as_millis() as u64
    }

    fn unix_ms_of(&self, at_ms: u64) -> u64 {
        let wall = self.inner.wall_origin + Duration::from_millis(at_ms);
        wall.duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    /// Whether anyone listens: lets a caller skip building an event nobody reads.
    pub(crate) fn has_subscribers(&self) -> bool {
        self.inner.events.receiver_count() > 0
    }

    pub(crate) fn emit(&self, path: &str, generation: u64, kind: EventKind) {
        let gave_up =
            matches!(kind, EventKind::GaveUp { .. }) && self.inner.gave_up.receiver_count() > 0;
        if !gave_up && !self.has_subscribers() {
            return;
        }
        let event = TreeEvent {
            at_ms: self.now_ms(),
            path: path.to_string(),
            generation,
            kind,
        };
        if gave_up {
            let _ = self.inner.gave_up.send(event.clone());
        }
        if self.has_subscribers() {
            let _ = self.inner.events.send(event);
        }
    }

    /// A line the actor `me` at `path` says about itself (the broker connection: the node it
    /// is connected to), shown in snapshots (`detail`) while that incarnation runs: a
    /// restarted actor shows nothing until it says something anew.
    pub fn set_detail(&self, path: &str, me: ractor::ActorId, detail: String) {
        self.inner
            .details
            .write()
            .insert(path.to_owned(), (me, detail));
    }

    pub(crate) fn insert(&self, path: Arc<str>, record: NodeRecord) {
        self.inner.nodes.write().insert(path, record);
    }

    pub(crate) fn update<R>(&self, path: &str, f: impl FnOnce(&mut NodeRecord) -> R) -> Option<R> {
        self.inner.nodes.write().get_mut(path).map(f)
    }

    pub(crate) fn remove(&self, path: &str) {
        self.inner.nodes.write().remove(path);
    }

    /// Remove every record strictly below `path` (a dead supervisor's subtree).
    pub(crate) fn purge_below(&self, path: &str) {
        let prefix = format!("{path}/");
        let mut nodes = self.inner.nodes.write();
        let doomed: Vec<Arc<str>> = nodes
            .range::<str, _>((
                std::ops::Bound::Included(prefix.as_str()),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            nodes.remove(&k);
        }
    }

    pub(crate) fn exit_record(
        &self,
        generation: u64,
        class: ExitClass,
        reason: String,
    ) -> ExitRecord {
        let at_ms = self.now_ms();
        ExitRecord {
            generation,
            class,
            reason,
            at_ms,
            at_unix_ms: self.unix_ms_of(at_ms),
        }
    }

    pub(crate) fn push_exit(&self, path: &str, exit: ExitRecord) {
        let max = self.inner.max_exits;
        self.update(path, |r| {
            r.exits.push_back(exit);
            while r.exits.len() > max {
                r.exits.pop_front();
            }
        });
    }

    pub(crate) fn set_outcome(&self, reason: String) {
        *self.inner.outcome.lock() = Some(reason);
    }

    /// If a root supervisor gave up: why.
    pub fn gave_up(&self) -> Option<String> {
        self.inner.outcome.lock().clone()
    }

    /// A stable handle on the node at `path`: it follows restarts.
    pub fn handle(&self, path: impl Into<String>) -> ChildHandle {
        ChildHandle {
            tree: self.clone(),
            path: path.into(),
        }
    }

    /// The live actor at `path`, or why there is none. Never returns a dead incarnation.
    pub fn lookup(&self, path: &str) -> Result<ActorCell, LookupError> {
        let nodes = self.inner.nodes.read();
        let rec = nodes.get(path).ok_or(LookupError::NotFound)?;
        match (&rec.status, &rec.cell) {
            (NodeStatus::Running, Some(cell)) => {
                if cell.get_status() <= ActorStatus::Running {
                    Ok(cell.clone())
                } else {
                    // Dead, but its supervisor has not processed the exit yet.
                    Err(LookupError::Restarting)
                }
            }
            (NodeStatus::Stopped, _) | (NodeStatus::Stopping, _) => Err(LookupError::Stopped),
            _ => Err(LookupError::Restarting),
        }
    }

    /// Number of nodes currently recorded.
    pub fn len(&self) -> usize {
        self.inner.nodes.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Snapshot of the whole tree, nested by path, children in start order.
    pub fn snapshot(&self) -> TreeSnapshot {
        let now = Instant::now();
        let now_ms = self.ms_of(now);
        // Copy out under the read lock; build the nested structure outside it.
        let flat: Vec<(Arc<str>, NodeSnapshot, u64)> = {
            let nodes = self.inner.nodes.read();
            // Once per snapshot, not once per node (10,000 dynamic children).
            let details = self.inner.details.read();
            nodes
                .iter()
                .map(|(path, r)| {
                    let snap = self.node_snapshot(path, r, now, &details);
                    (path.clone(), snap, r.order)
                })
                .collect()
        };
        let count = flat.len();
        let mut by_parent: HashMap<String, Vec<(u64, NodeSnapshot)>> = HashMap::new();
        let mut roots = Vec::new();
        let known: std::collections::HashSet<&str> = flat.iter().map(|(p, _, _)| &**p).collect();
        let mut parents = Vec::with_capacity(count);
        for (path, _, _) in &flat {
            let parent = path
                .rsplit_once('/')
                .map(|(p, _)| p)
                .filter(|p| known.contains(p))
                .map(str::to_string);
            parents.push(parent);
        }
        drop(known);
        for ((_, snap, order), parent) in flat.into_iter().zip(parents) {
            match parent {
                Some(p) => by_parent.entry(p).or_default().push((order, snap)),
                None => roots.push(snap),
            }
        }
        fn attach(
            node: &mut NodeSnapshot,
            by_parent: &mut HashMap<String, Vec<(u64, NodeSnapshot)>>,
        ) {
            let kids = by_parent.remove(&node.path);
            if let Some(info) = node.supervisor.as_mut() {
                // Counted here rather than written by the supervisor at every start and exit
                // of a per-message worker.
                info.dynamic_children = kids.as_ref().map_or(0, |k| {
                    k.iter().filter(|(o, _)| *o >= DYN_ORDER_BASE).count()
                });
            }
            if let Some(mut kids) = kids {
                kids.sort_by_key(|(o, _)| *o);
                node.children = kids.into_iter().map(|(_, s)| s).collect();
                for c in &mut node.children {
                    attach(c, by_parent);
                }
            }
        }
        for r in &mut roots {
            attach(r, &mut by_parent);
        }
        TreeSnapshot {
            taken_at_ms: now_ms,
            taken_at_unix_ms: self.unix_ms_of(now_ms),
            nodes: count,
            roots,
        }
    }

    fn node_snapshot(
        &self,
        path: &str,
        r: &NodeRecord,
        now: Instant,
        details: &BTreeMap<String, (ractor::ActorId, String)>,
    ) -> NodeSnapshot {
        let alive = r.status == NodeStatus::Running;
        NodeSnapshot {
            path: path.to_string(),
            name: path.rsplit('/').next().unwrap_or(path).to_string(),
            kind: r.kind,
            id: r
                .cell
                .as_ref()
                .filter(|_| alive)
                .map(|c| c.get_id().to_string()),
            generation: r.generation,
            status: r.status,
            restart: r.restart,
            restarts: r.restarts,
            uptime_ms: r
                .started_at
                .filter(|_| alive)
                .map(|s| now.saturating_duration_since(s).as_millis() as u64),
            next_restart_at_ms: r.next_restart_at.map(|t| self.ms_of(t)),
            next_restart_in_ms: r
                .next_restart_at
                .map(|t| t.saturating_duration_since(now).as_millis() as u64),
            last_exits: r.exits.iter().cloned().collect(),
            detail: match (&r.cell, alive) {
                (Some(cell), true) => details
                    .get(path)
                    .filter(|(id, _)| *id == cell.get_id())
                    .map(|(_, d)| d.clone()),
                _ => None,
            },
            supervisor: r.supervisor.clone(),
            children: Vec::new(),
        }
    }
}

/// A stable way to reach the current incarnation of a child: it never returns a dead actor,
/// and during a restart it says [`LookupError::Restarting`].
#[derive(Clone, Debug)]
pub struct ChildHandle {
    tree: Tree,
    path: String,
}

impl ChildHandle {
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn cell(&self) -> Result<ActorCell, LookupError> {
        self.tree.lookup(&self.path)
    }

    /// The current incarnation as a typed reference. The caller names the message type the
    /// child was built with; a wrong type makes sends fail with `InvalidActorType`.
    pub fn actor_ref<M: ractor::Message>(&self) -> Result<ActorRef<M>, LookupError> {
        self.cell().map(ActorRef::from)
    }
}
