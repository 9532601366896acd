//! Shared by the supervision test files: a probe worker that logs its life cycle, a root
//! supervisor on a tree, bounded waits on the tree's event stream. Every wait is bounded in
//! events and in virtual time (the tests run on tokio's paused clock).

#![allow(dead_code, unused_imports)] // each test file uses its own subset

pub use std::sync::Arc;
pub use std::sync::atomic::{AtomicUsize, Ordering};
pub use std::time::Duration;

pub use drover_actors::supervisor::{
    Backoff, ChildCounts, count_children, start_child, which_children,
};
pub use drover_actors::tree::{EventKind, NodeSnapshot};
pub use drover_actors::*;
pub use parking_lot::Mutex;
pub use ractor::concurrency::JoinHandle;
pub use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, ActorStatus, SpawnErr};
pub use tokio::sync::{broadcast, mpsc};

/// Shared record of life-cycle steps, in the order they happened.
pub type Log = Arc<Mutex<Vec<String>>>;

pub fn new_log() -> Log {
    Arc::new(Mutex::new(Vec::new()))
}

pub fn entries(log: &Log) -> Vec<String> {
    log.lock().clone()
}

/// Entries recorded since `from` (an earlier `log.lock().len()`).
pub fn entries_since(log: &Log, from: usize) -> Vec<String> {
    log.lock()[from..].to_vec()
}

pub fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// What a test tells a [`Probe`] to do.
#[derive(Debug)]
pub enum Cmd {
    /// `myself.stop(reason)`.
    Stop(Option<String>),
    /// Panic in the handler.
    Panic,
    /// Return `Err` from the handler.
    Fail,
}

#[derive(Clone)]
pub struct ProbeArgs {
    pub name: String,
    pub log: Log,
    /// Simulated slow start (not synchronisation: makes concurrent starts visibly reorder).
    pub start_delay: Duration,
    pub fail_start: bool,
}

/// A test worker that records `start:<name>` in `pre_start` and `stop:<name>` in `post_stop`.
pub struct Probe;

impl Actor for Probe {
    type Msg = Cmd;
    type State = ProbeArgs;
    type Arguments = ProbeArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: ProbeArgs,
    ) -> Result<ProbeArgs, ActorProcessingErr> {
        if !args.start_delay.is_zero() {
            tokio::time::sleep(args.start_delay).await;
        }
        args.log.lock().push(format!("start:{}", args.name));
        if args.fail_start {
            return Err(format!("{} refuses to start", args.name).into());
        }
        Ok(args)
    }

    async fn post_stop(
        &self,
        _: ActorRef<Self::Msg>,
        state: &mut ProbeArgs,
    ) -> Result<(), ActorProcessingErr> {
        state.log.lock().push(format!("stop:{}", state.name));
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Cmd,
        state: &mut ProbeArgs,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            Cmd::Stop(reason) => myself.stop(reason),
            Cmd::Panic => panic!("{} panics on purpose", state.name),
            Cmd::Fail => return Err(format!("{} fails on purpose", state.name).into()),
        }
        Ok(())
    }
}

pub fn last_segment(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

/// A permanent [`Probe`] worker named after the last segment of its path.
pub fn probe(id: &str, log: &Log) -> ChildSpec {
    probe_with(id, log, Duration::ZERO, false)
}

pub fn probe_with(id: &str, log: &Log, start_delay: Duration, fail_start: bool) -> ChildSpec {
    let log = log.clone();
    ChildSpec::worker(id, move |ctx| {
        (
            Probe,
            ProbeArgs {
                name: last_segment(&ctx.path),
                log: log.clone(),
                start_delay,
                fail_start,
            },
        )
    })
}

pub fn intensity(max_restarts: u32, period: Duration) -> Intensity {
    Intensity {
        max_restarts,
        period,
    }
}

pub fn generous() -> Intensity {
    intensity(100, Duration::from_secs(10))
}

pub async fn spawn_root(
    tree: &Tree,
    spec: SupervisorSpec,
) -> Result<(ActorRef<SupervisorMessage>, JoinHandle<()>), SpawnErr> {
    Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs {
            spec,
            tree: tree.clone(),
            path: "root".into(),
        },
    )
    .await
}

/// Stop a root supervisor and wait until it is gone.
pub async fn stop_root(root: ActorRef<SupervisorMessage>, handle: JoinHandle<()>) {
    root.stop(None);
    join(handle, "root supervisor after stop").await;
}

/// Wait (bounded, in virtual time) for an actor task to end.
pub async fn join(handle: JoinHandle<()>, what: &str) {
    tokio::time::timeout(Duration::from_secs(300), handle)
        .await
        .unwrap_or_else(|_| panic!("{what} did not exit within 300 s of virtual time"))
        .unwrap_or_else(|e| panic!("{what}: join error {e}"));
}

/// Typed reference to the live incarnation at `path`.
pub fn probe_at(tree: &Tree, path: &str) -> ActorRef<Cmd> {
    tree.handle(path)
        .actor_ref::<Cmd>()
        .unwrap_or_else(|e| panic!("no live actor at {path}: {e}"))
}

pub fn id_at(tree: &Tree, path: &str) -> ActorId {
    tree.lookup(path)
        .unwrap_or_else(|e| panic!("no live actor at {path}: {e}"))
        .get_id()
}

pub fn node(tree: &Tree, path: &str) -> NodeSnapshot {
    tree.snapshot()
        .find(path)
        .cloned()
        .unwrap_or_else(|| panic!("{path} is not in the snapshot"))
}

pub fn child_paths(tree: &Tree, path: &str) -> Vec<String> {
    node(tree, path)
        .children
        .iter()
        .map(|c| c.path.clone())
        .collect()
}

pub fn last_exit(n: &NodeSnapshot) -> &drover_actors::tree::ExitRecord {
    n.last_exits
        .last()
        .unwrap_or_else(|| panic!("{} has no recorded exit", n.path))
}

pub const MAX_EVENTS: usize = 10_000;
pub const WAIT_LIMIT: Duration = Duration::from_secs(300);

/// The tree's event stream, with bounded waits that explain themselves when they fail.
pub struct Events {
    pub rx: broadcast::Receiver<TreeEvent>,
    pub seen: Vec<TreeEvent>,
}

impl Events {
    pub fn new(tree: &Tree) -> Self {
        Events {
            rx: tree.subscribe(),
            seen: Vec::new(),
        }
    }

    /// The next event matching `pred`; panics after `MAX_EVENTS` events or `WAIT_LIMIT` of
    /// virtual time (the paused clock auto-advances, so the limit is deterministic).
    pub async fn wait(&mut self, what: &str, pred: impl Fn(&TreeEvent) -> bool) -> TreeEvent {
        let rx = &mut self.rx;
        let seen = &mut self.seen;
        let outcome = tokio::time::timeout(WAIT_LIMIT, async {
            for _ in 0..MAX_EVENTS {
                match rx.recv().await {
                    Ok(e) => {
                        seen.push(e.clone());
                        if pred(&e) {
                            return Ok(e);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        return Err(format!("lagged by {n} events"));
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err("event stream closed".to_string());
                    }
                }
            }
            Err(format!("not among the next {MAX_EVENTS} events"))
        })
        .await;
        match outcome {
            Ok(Ok(e)) => e,
            Ok(Err(why)) => panic!("waiting for {what}: {why}\n{}", self.recent()),
            Err(_) => panic!(
                "waiting for {what}: nothing within {} s of virtual time\n{}",
                WAIT_LIMIT.as_secs(),
                self.recent()
            ),
        }
    }

    pub async fn started(&mut self, path: &str, generation: u64) -> TreeEvent {
        self.wait(&format!("Started {path} gen {generation}"), |e| {
            e.path == path && e.generation == generation && e.kind == EventKind::Started
        })
        .await
    }

    pub async fn exited(&mut self, path: &str) -> (ExitClass, String) {
        let e = self
            .wait(&format!("Exited {path}"), |e| {
                e.path == path && matches!(e.kind, EventKind::Exited { .. })
            })
            .await;
        match e.kind {
            EventKind::Exited { class, reason } => (class, reason),
            _ => unreachable!(),
        }
    }

    pub async fn gave_up(&mut self, path: &str) -> String {
        let e = self
            .wait(&format!("GaveUp {path}"), |e| {
                e.path == path && matches!(e.kind, EventKind::GaveUp { .. })
            })
            .await;
        match e.kind {
            EventKind::GaveUp { reason } => reason,
            _ => unreachable!(),
        }
    }

    /// Events already delivered, without waiting.
    pub fn drain(&mut self) -> Vec<TreeEvent> {
        let mut out = Vec::new();
        loop {
            match self.rx.try_recv() {
                Ok(e) => {
                    self.seen.push(e.clone());
                    out.push(e);
                }
                Err(broadcast::error::TryRecvError::Lagged(n)) => panic!("lagged by {n} events"),
                Err(_) => return out,
            }
        }
    }

    pub fn recent(&self) -> String {
        let from = self.seen.len().saturating_sub(40);
        let lines: Vec<String> = self.seen[from..]
            .iter()
            .map(|e| {
                format!(
                    "  {:>7} ms {} gen {} {:?}",
                    e.at_ms, e.path, e.generation, e.kind
                )
            })
            .collect();
        format!(
            "last {} of {} events seen:\n{}",
            lines.len(),
            self.seen.len(),
            lines.join("\n")
        )
    }
}

/// Let a supervisor act on everything already in its mailbox: an RPC round trip, then a few
/// scheduler turns for tasks it spawned. Used before asserting that something did NOT happen.
pub async fn settle(sup: &ActorRef<SupervisorMessage>) {
    for _ in 0..3 {
        count_children(sup).await.expect("supervisor answers");
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }
}
