//! Deterministic integration tests of the supervisor: backoff, intensity, shutdown, stale
//! events, max_children, the live tree (snapshot and event stream), watchdogs, stable
//! handles, and a randomized kill/crash run checked for consistency after every round.
//!
//! Every test runs on tokio's paused clock. Nothing sleeps in a test body to synchronise:
//! tests wait on the tree's event stream, on RPC replies, on join handles, or move the clock
//! with `tokio::time::advance`. A wait that never ends panics after a generous (paused)
//! timeout with the events seen so far.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use drover_actors::supervisor::{
    Backoff, ChildCtx, SplitMix64, SupervisorError, count_children, start_child, which_children,
};
use drover_actors::tree::{EventKind, NodeSnapshot, TreeEvent};
use drover_actors::*;
use parking_lot::Mutex;
use ractor::{Actor, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------------------------
// A configurable test worker
// ---------------------------------------------------------------------------------------------

/// What a worker's `post_stop` does.
#[derive(Debug, Clone, Copy, PartialEq)]
enum PostStop {
    Quick,
    /// Never returns.
    Hang,
    /// Returns `Err`.
    Fail,
    /// Takes this long (the child's own behaviour, not test synchronisation).
    Sleep(Duration),
}

/// Shared, per-child-spec behaviour of [`Worker`]; clones share the counters and the log.
#[derive(Debug, Clone)]
struct Behaviour {
    name: &'static str,
    /// How many of the next incarnations fail right after their start (in `post_start`).
    fail_starts: Arc<AtomicU32>,
    post_stop: PostStop,
    /// `"<name>:<what>"` lines, in the order they happened.
    log: Arc<Mutex<Vec<String>>>,
}

impl Behaviour {
    fn new(name: &'static str) -> Self {
        Behaviour {
            name,
            fail_starts: Arc::new(AtomicU32::new(0)),
            post_stop: PostStop::Quick,
            log: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn fail_starts(self, n: u32) -> Self {
        self.fail_starts.store(n, Ordering::SeqCst);
        self
    }

    fn post_stop(mut self, p: PostStop) -> Self {
        self.post_stop = p;
        self
    }

    fn with_log(mut self, log: &Arc<Mutex<Vec<String>>>) -> Self {
        self.log = log.clone();
        self
    }

    fn note(&self, what: &str) {
        self.log.lock().push(format!("{}:{what}", self.name));
    }

    fn take_start_failure(&self) -> bool {
        self.fail_starts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

#[derive(Debug)]
enum WMsg {
    /// The handler returns `Err`.
    Crash,
    /// Arms the watchdog, acknowledges, then never returns.
    Hang(Option<RpcReplyPort<()>>),
    /// Arms the watchdog and works for this long.
    Busy(Duration),
    /// Replies with the incarnation's generation.
    Ping(RpcReplyPort<u64>),
}

struct Worker;

struct WArgs {
    b: Behaviour,
    generation: u64,
    watchdog: Watchdog,
}

impl Actor for Worker {
    type Msg = WMsg;
    type State = WArgs;
    type Arguments = WArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: WArgs,
    ) -> Result<WArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn post_start(
        &self,
        _: ActorRef<Self::Msg>,
        s: &mut WArgs,
    ) -> Result<(), ActorProcessingErr> {
        if s.b.take_start_failure() {
            return Err("crash at start".into());
        }
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        m: WMsg,
        s: &mut WArgs,
    ) -> Result<(), ActorProcessingErr> {
        match m {
            WMsg::Crash => return Err("crash".into()),
            WMsg::Hang(ack) => {
                let _busy = s.watchdog.busy();
                s.b.note("hang");
                if let Some(ack) = ack {
                    let _ = ack.send(());
                }
                std::future::pending::<()>().await;
            }
            WMsg::Busy(d) => {
                let _busy = s.watchdog.busy();
                tokio::time::sleep(d).await;
            }
            WMsg::Ping(reply) => {
                let _ = reply.send(s.generation);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<Self::Msg>,
        s: &mut WArgs,
    ) -> Result<(), ActorProcessingErr> {
        s.b.note("post_stop");
        match s.b.post_stop {
            PostStop::Quick => Ok(()),
            PostStop::Hang => std::future::pending().await,
            PostStop::Fail => Err("post_stop failed".into()),
            PostStop::Sleep(d) => {
                tokio::time::sleep(d).await;
                s.b.note("post_stop_done");
                Ok(())
            }
        }
    }
}

fn worker_spec(id: &str, b: &Behaviour) -> ChildSpec {
    let b = b.clone();
    ChildSpec::worker(id.to_string(), move |ctx: &ChildCtx| {
        (
            Worker,
            WArgs {
                b: b.clone(),
                generation: ctx.generation,
                watchdog: ctx.watchdog.clone(),
            },
        )
    })
}

fn backoff(min_ms: u64, max_ms: u64, multiplier: f64) -> Backoff {
    Backoff {
        min_ms,
        max_ms,
        multiplier,
        jitter: 0.0,
        reset_after_ms: 60_000,
        max_retries: None,
    }
}

fn intensity(max_restarts: u32, period_ms: u64) -> Intensity {
    Intensity {
        max_restarts,
        period: Duration::from_millis(period_ms),
    }
}

fn generous() -> Intensity {
    intensity(1_000_000, 1_000)
}

async fn spawn_root(
    tree: &Tree,
    spec: SupervisorSpec,
) -> (ActorRef<SupervisorMessage>, JoinHandle<()>) {
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
    .expect("root supervisor failed to start")
}

async fn stop_root(root: ActorRef<SupervisorMessage>, handle: JoinHandle<()>) {
    root.stop(None);
    within("the root supervisor to stop", handle)
        .await
        .expect("root task panicked");
}

async fn ping(tree: &Tree, path: &str) -> u64 {
    let r: ActorRef<WMsg> = tree
        .handle(path)
        .actor_ref()
        .unwrap_or_else(|e| panic!("no live actor at {path}: {e}"));
    within(&format!("{path} to answer a ping"), async {
        ractor::call!(r, WMsg::Ping)
    })
    .await
    .unwrap_or_else(|e| panic!("ping {path}: {e}"))
}

fn send(tree: &Tree, path: &str, m: WMsg) {
    let r: ActorRef<WMsg> = tree
        .handle(path)
        .actor_ref()
        .unwrap_or_else(|e| panic!("no live actor at {path}: {e}"));
    r.send_message(m)
        .unwrap_or_else(|_| panic!("send to {path} failed"));
}

// ---------------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------------

/// How long any single wait may take (paused clock: it auto-advances when everything idles).
const WAIT: Duration = Duration::from_secs(600);

/// Await `fut`, or panic saying what did not happen.
async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} (paused clock) waiting for {what}"),
    }
}

/// The event stream, with a history for diagnostics and sequence assertions.
struct Events {
    rx: broadcast::Receiver<TreeEvent>,
    /// Every event received so far.
    all: Vec<TreeEvent>,
    /// Index in `all` of the first event not yet returned by [`Events::since_mark`].
    mark: usize,
}

impl Events {
    fn new(tree: &Tree) -> Self {
        Events {
            rx: tree.subscribe(),
            all: Vec::new(),
            mark: 0,
        }
    }

    fn recent(&self) -> String {
        let from = self.all.len().saturating_sub(40);
        self.all[from..]
            .iter()
            .map(|e| format!("  {e:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The next event; panics if none comes within [`WAIT`].
    async fn next(&mut self, what: &str) -> TreeEvent {
        match tokio::time::timeout(WAIT, self.rx.recv()).await {
            Ok(Ok(e)) => {
                self.all.push(e.clone());
                e
            }
            Ok(Err(e)) => panic!("event stream broke ({e}) waiting for {what}"),
            Err(_) => panic!(
                "timed out after {WAIT:?} (paused clock) waiting for {what}; last events:\n{}",
                self.recent()
            ),
        }
    }

    /// Skip events until one matches.
    async fn wait(&mut self, what: &str, pred: impl Fn(&TreeEvent) -> bool) -> TreeEvent {
        loop {
            let e = self.next(what).await;
            if pred(&e) {
                return e;
            }
        }
    }

    /// Wait for `kind` at `path`, generation `generation`.
    async fn wait_for(&mut self, path: &str, generation: u64, kind: &str) -> TreeEvent {
        let what = format!("{kind} of {path} generation {generation}");
        self.wait(&what, |e| {
            e.path == path && e.generation == generation && kind_name(&e.kind) == kind
        })
        .await
    }

    /// The end of `path`'s incarnation `generation`: its exit, or its exit ignored as stale
    /// (its supervisor had already retired it for a group restart).
    async fn wait_for_end(&mut self, path: &str, generation: u64, round: usize) -> TreeEvent {
        let what = format!("round {round}: the exit of {path} generation {generation}");
        self.wait(&what, |e| {
            e.path == path
                && e.generation == generation
                && matches!(e.kind, EventKind::Exited { .. } | EventKind::StaleIgnored)
        })
        .await
    }

    /// Events received since the last call (or since the start).
    fn since_mark(&mut self) -> Vec<TreeEvent> {
        let out = self.all[self.mark..].to_vec();
        self.mark = self.all.len();
        out
    }

    /// Everything already delivered, without waiting.
    fn drain_now(&mut self) -> Vec<TreeEvent> {
        let mut out = Vec::new();
        loop {
            match self.rx.try_recv() {
                Ok(e) => {
                    self.all.push(e.clone());
                    out.push(e);
                }
                Err(broadcast::error::TryRecvError::Empty) => return out,
                Err(e) => panic!("event stream broke: {e}"),
            }
        }
    }
}

fn kind_name(k: &EventKind) -> &'static str {
    match k {
        EventKind::Started => "started",
        EventKind::Exited { .. } => "exited",
        EventKind::BackingOff { .. } => "backing_off",
        EventKind::StoppedForRestart => "stopped_for_restart",
        EventKind::Stopped => "stopped",
        EventKind::StaleIgnored => "stale_ignored",
        EventKind::GaveUp { .. } => "gave_up",
    }
}

fn delay_of(e: &TreeEvent) -> u64 {
    match e.kind {
        EventKind::BackingOff { delay_ms } => delay_ms,
        ref k => panic!("not a backing_off event: {k:?}"),
    }
}

fn exit_of(e: &TreeEvent) -> (ExitClass, String) {
    match &e.kind {
        EventKind::Exited { class, reason } => (*class, reason.clone()),
        k => panic!("not an exited event: {k:?}"),
    }
}

/// `(path, generation, kind)` with the interesting payloads, for sequence assertions.
fn brief(events: &[TreeEvent]) -> Vec<(String, u64, String)> {
    events
        .iter()
        .map(|e| {
            let k = match &e.kind {
                EventKind::Exited { class, reason } => format!("exited {class:?}: {reason}"),
                EventKind::BackingOff { delay_ms } => format!("backing_off {delay_ms}"),
                EventKind::GaveUp { reason } => format!("gave_up: {reason}"),
                k => kind_name(k).to_string(),
            };
            (e.path.clone(), e.generation, k)
        })
        .collect()
}

fn tev(path: &str, generation: u64, kind: &str) -> (String, u64, String) {
    (path.to_string(), generation, kind.to_string())
}

fn node(tree: &Tree, path: &str) -> NodeSnapshot {
    tree.snapshot()
        .find(path)
        .cloned()
        .unwrap_or_else(|| panic!("no node {path} in the snapshot"))
}

/// A crash-looping child's delays and restart times, through a real supervisor.
async fn crash_loop_delays(spec_backoff: Backoff, seed: u64, n: u64) -> Vec<(u64, u64)> {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let b = Behaviour::new("c").fail_starts(u32::MAX);
    let spec = SupervisorSpec::new(Strategy::OneForOne, intensity(1000, 60_000))
        .child(worker_spec("c", &b).backoff(spec_backoff))
        .seed(seed);
    let (root, h) = spawn_root(&tree, spec).await;
    // (delay_ms, at_ms of the next start)
    let mut out = Vec::new();
    for generation in 1..=n {
        ev.wait_for("root/c", generation, "exited").await;
        let bo = ev.wait_for("root/c", generation, "backing_off").await;
        let started = ev.wait_for("root/c", generation + 1, "started").await;
        let d = delay_of(&bo);
        // The timer sleeps the unrounded delay; the event reports whole milliseconds.
        assert!(
            started.at_ms == bo.at_ms + d || started.at_ms == bo.at_ms + d + 1,
            "restart of generation {generation} at {} ms, expected {} ms + {d} ms",
            started.at_ms,
            bo.at_ms
        );
        out.push((d, started.at_ms));
    }
    stop_root(root, h).await;
    out
}

// ---------------------------------------------------------------------------------------------
// 1. The delay sequence
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn backoff_delays_grow_by_multiplier_up_to_max_at_exact_times() {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let b = Behaviour::new("c").fail_starts(u32::MAX);
    let spec = SupervisorSpec::new(Strategy::OneForOne, intensity(100, 60_000))
        .child(worker_spec("c", &b).backoff(backoff(1000, 10_000, 3.0)));
    let (root, h) = spawn_root(&tree, spec).await;

    let mut delays = Vec::new();
    let mut starts = Vec::new();
    for generation in 1..=5 {
        let started = ev.wait_for("root/c", generation, "started").await;
        assert_eq!(tree.now_ms(), started.at_ms, "clock moved past a start");
        starts.push(started.at_ms);
        let exited = ev.wait_for("root/c", generation, "exited").await;
        assert_eq!(
            exit_of(&exited),
            (ExitClass::Abnormal, "crash at start".to_string())
        );
        assert_eq!(exited.at_ms, started.at_ms, "it crashes right after start");
        let bo = ev.wait_for("root/c", generation, "backing_off").await;
        assert_eq!(bo.at_ms, started.at_ms);
        let d = delay_of(&bo);
        delays.push(d);
        let n = node(&tree, "root/c");
        assert_eq!(n.status, NodeStatus::BackingOff);
        assert_eq!(n.next_restart_at_ms, Some(bo.at_ms + d));
        assert_eq!(n.next_restart_in_ms, Some(d));
        assert_eq!(n.id, None, "a backing-off node has no live actor");
        assert_eq!(tree.lookup("root/c").err(), Some(LookupError::Restarting));
    }
    assert_eq!(delays, vec![1000, 3000, 9000, 10_000, 10_000]);
    assert_eq!(starts, vec![0, 1000, 4000, 13_000, 23_000]);

    let sixth = ev.wait_for("root/c", 6, "started").await;
    assert_eq!(sixth.at_ms, 33_000);
    assert_eq!(tree.now_ms(), 33_000);
    let n = node(&tree, "root/c");
    assert_eq!(n.generation, 6);
    assert_eq!(n.restarts, 5);
    stop_root(root, h).await;
}

// ---------------------------------------------------------------------------------------------
// 2. Reset after a stable uptime
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn backoff_sequence_resets_after_stable_uptime() {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    // Generations 1 and 2 crash at start; later ones stay up until told to crash.
    let b = Behaviour::new("c").fail_starts(2);
    let bo = Backoff {
        reset_after_ms: 5000,
        ..backoff(1000, 10_000, 3.0)
    };
    let spec = SupervisorSpec::new(Strategy::OneForOne, intensity(100, 60_000))
        .child(worker_spec("c", &b).backoff(bo));
    let (root, h) = spawn_root(&tree, spec).await;

    assert_eq!(
        delay_of(&ev.wait_for("root/c", 1, "backing_off").await),
        1000
    );
    assert_eq!(
        delay_of(&ev.wait_for("root/c", 2, "backing_off").await),
        3000
    );
    let s3 = ev.wait_for("root/c", 3, "started").await;
    assert_eq!(s3.at_ms, 4000);
    assert_eq!(ping(&tree, "root/c").await, 3);

    // Up for 6 s (> 5 s): the next crash starts the sequence again at min.
    tokio::time::advance(Duration::from_secs(6)).await;
    send(&tree, "root/c", WMsg::Crash);
    let e = ev.wait_for("root/c", 3, "exited").await;
    assert_eq!(exit_of(&e), (ExitClass::Abnormal, "crash".to_string()));
    assert_eq!(e.at_ms, 10_000);
    let bo3 = ev.wait_for("root/c", 3, "backing_off").await;
    assert_eq!(
        delay_of(&bo3),
        1000,
        "sequence not reset after 6 s of uptime"
    );
    let s4 = ev.wait_for("root/c", 4, "started").await;
    assert_eq!(s4.at_ms, 11_000);

    // Up for only 2 s (< 5 s): the sequence goes on.
    tokio::time::advance(Duration::from_secs(2)).await;
    send(&tree, "root/c", WMsg::Crash);
    let bo4 = ev.wait_for("root/c", 4, "backing_off").await;
    assert_eq!(
        delay_of(&bo4),
        3000,
        "sequence reset after only 2 s of uptime"
    );
    let s5 = ev.wait_for("root/c", 5, "started").await;
    assert_eq!(s5.at_ms, 13_000 + 3000);
    stop_root(root, h).await;
}

// ---------------------------------------------------------------------------------------------
// 3. Max retries
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn max_retries_gives_up_after_consecutive_failures() {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let b = Behaviour::new("c").fail_starts(u32::MAX);
    let bo = Backoff {
        max_retries: Some(2),
        ..backoff(100, 10_000, 2.0)
    };
    let spec = SupervisorSpec::new(Strategy::OneForOne, intensity(100, 60_000))
        .child(worker_spec("c", &b).backoff(bo));
    let (_root, h) = spawn_root(&tree, spec).await;

    let gave_up = ev
        .wait("the root to give up", |e| {
            matches!(e.kind, EventKind::GaveUp { .. })
        })
        .await;
    let got = brief(&ev.since_mark());
    let boot = tev("root/c", 1, "started");
    let exit = |g| tev("root/c", g, "exited Abnormal: crash at start");
    assert_eq!(
        got[..got.len() - 1].to_vec(),
        vec![
            boot,
            tev("root", 1, "started"),
            exit(1),
            tev("root/c", 1, "backing_off 100"),
            tev("root/c", 2, "started"),
            exit(2),
            tev("root/c", 2, "backing_off 200"),
            tev("root/c", 3, "started"),
            exit(3),
        ]
    );
    assert_eq!(gave_up.path, "root");
    assert_eq!(gave_up.at_ms, 300);
    let EventKind::GaveUp { reason } = &gave_up.kind else {
        unreachable!()
    };
    assert!(reason.contains("max_retries"), "reason: {reason}");
    assert!(reason.contains("`c`"), "reason: {reason}");
    assert_eq!(tree.gave_up().as_deref(), Some(reason.as_str()));
    within("the root actor to end", h).await.unwrap();
    let root = node(&tree, "root");
    assert_eq!(root.status, NodeStatus::Stopped);
    assert_eq!(
        root.supervisor.as_ref().unwrap().gave_up.as_deref(),
        Some(reason.as_str())
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Backoff keeps a crash loop under the restart intensity
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn crash_loop_without_backoff_exceeds_intensity() {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let b = Behaviour::new("c").fail_starts(u32::MAX);
    let spec = SupervisorSpec::new(Strategy::OneForOne, intensity(3, 5000))
        .child(worker_spec("c", &b).backoff(Backoff::none()));
    let (_root, h) = spawn_root(&tree, spec).await;
    let gave_up = ev
        .wait("the root to give up", |e| {
            matches!(e.kind, EventKind::GaveUp { .. })
        })
        .await;
    let EventKind::GaveUp { reason } = &gave_up.kind else {
        unreachable!()
    };
    assert!(
        reason.contains("restart intensity exceeded"),
        "reason: {reason}"
    );
    let seen = ev.since_mark();
    let starts = seen
        .iter()
        .filter(|e| e.path == "root/c" && e.kind == EventKind::Started)
        .count();
    let exits = seen
        .iter()
        .filter(|e| e.path == "root/c" && matches!(e.kind, EventKind::Exited { .. }))
        .count();
    // 1 start + 3 restarts, the 4th exit exceeds 3 restarts in 5 s.
    assert_eq!((starts, exits), (4, 4), "events: {:#?}", brief(&seen));
    assert_eq!(gave_up.at_ms, 0, "without backoff it all happens at once");
    within("the root actor to end", h).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn backoff_throttles_crash_loop_below_intensity() {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let b = Behaviour::new("c").fail_starts(u32::MAX);
    let spec = SupervisorSpec::new(Strategy::OneForOne, intensity(3, 5000))
        .child(worker_spec("c", &b).backoff(backoff(2000, 10_000, 3.0)));
    let (root, h) = spawn_root(&tree, spec).await;
    for generation in 1..=10 {
        let e = ev
            .wait(&format!("exit {generation} of root/c"), |e| {
                e.path == "root/c" && matches!(e.kind, EventKind::Exited { .. })
                    || matches!(e.kind, EventKind::GaveUp { .. })
            })
            .await;
        assert_eq!(
            (e.path.as_str(), e.generation),
            ("root/c", generation),
            "unexpected event {e:?}"
        );
        let info = node(&tree, "root").supervisor.unwrap();
        assert!(info.window_used <= 3, "window {}", info.window_used);
        assert_eq!(info.gave_up, None);
    }
    assert_eq!(tree.gave_up(), None);
    // Still alive and answering.
    let counts = within("count_children", count_children(&root))
        .await
        .unwrap();
    assert_eq!(counts.specs, 1);
    assert!(
        !ev.all
            .iter()
            .any(|e| e.path == "root" && e.kind != EventKind::Started)
    );
    // 2 + 6 + 10 × 7 s of backoff before the 10th exit.
    assert_eq!(tree.now_ms(), 2000 + 6000 + 7 * 10_000);
    stop_root(root, h).await;
}

// ---------------------------------------------------------------------------------------------
// 5. Jitter with a seed
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn jitter_is_reproducible_from_seed_and_within_fraction() {
    let b = Backoff {
        jitter: 0.25,
        ..backoff(1000, 60_000, 2.0)
    };
    let first = crash_loop_delays(b, 7, 6).await;
    let again = crash_loop_delays(b, 7, 6).await;
    let other = crash_loop_delays(b, 8, 6).await;
    assert_eq!(first, again, "same seed, different delays");
    assert_ne!(first, other, "different seeds, same delays");

    let mut rng = SplitMix64::new(7);
    for (i, (d, _)) in first.iter().enumerate() {
        let n = i as u32 + 1;
        let base = b.base_delay(n).as_millis() as u64;
        assert!(
            (*d as f64) >= base as f64 * 0.75 - 1.0 && (*d as f64) <= base as f64 * 1.25,
            "delay {n} = {d} ms outside {base} ms ± 25 %"
        );
        // The supervisor draws from one generator seeded with the spec's seed.
        assert_eq!(*d, b.delay(n, &mut rng).as_millis() as u64);
    }
    assert!(
        first
            .iter()
            .enumerate()
            .any(|(i, (d, _))| *d != b.base_delay(i as u32 + 1).as_millis() as u64),
        "no jitter applied: {first:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Shutdown: timeout then kill, failing post_stop, brutal kill
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn shutdown_timeout_kills_and_does_not_block_siblings() {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let log = Arc::new(Mutex::new(Vec::new()));
    let one_s = Shutdown::Timeout(Duration::from_secs(1));
    let quick = Behaviour::new("normal").with_log(&log);
    let hang_post_stop = Behaviour::new("hang_post_stop")
        .with_log(&log)
        .post_stop(PostStop::Hang);
    let hang_handler = Behaviour::new("hang_handler").with_log(&log);
    let failing = Behaviour::new("failing")
        .with_log(&log)
        .post_stop(PostStop::Fail);
    let brutal = Behaviour::new("brutal").with_log(&log);
    // Stopped in reverse order: brutal, failing, hang_handler, hang_post_stop, normal.
    let spec = SupervisorSpec::new(Strategy::OneForOne, intensity(10, 5000))
        .child(worker_spec("normal", &quick).shutdown(one_s))
        .child(worker_spec("hang_post_stop", &hang_post_stop).shutdown(one_s))
        .child(worker_spec("hang_handler", &hang_handler).shutdown(one_s))
        .child(worker_spec("failing", &failing).shutdown(one_s))
        .child(worker_spec("brutal", &brutal).shutdown(Shutdown::BrutalKill));
    let (root, h) = spawn_root(&tree, spec).await;
    ev.wait_for("root", 1, "started").await;
    ev.since_mark();

    let r: ActorRef<WMsg> = tree.handle("root/hang_handler").actor_ref().unwrap();
    within("hang_handler to be inside its handler", async {
        ractor::call!(r, |tx| WMsg::Hang(Some(tx)))
    })
    .await
    .unwrap();

    let t0 = tree.now_ms();
    within("the root to stop", root.stop_and_wait(None, None))
        .await
        .unwrap();
    let elapsed = tree.now_ms() - t0;
    within("the root task", h).await.unwrap();
    assert_eq!(
        elapsed, 2000,
        "two children overran a 1 s shutdown timeout, one after the other"
    );

    let why = "(supervisor shutting down)";
    let killed = format!("did not stop within the shutdown timeout of 1000 ms; killed {why}");
    let stopped = ev.wait_for("root", 1, "stopped").await;
    assert_eq!(stopped.at_ms, 2000);
    let got: Vec<_> = ev
        .since_mark()
        .into_iter()
        .map(|e| (e.path.clone(), e.generation, e.kind.clone(), e.at_ms))
        .filter(|(_, _, k, _)| matches!(k, EventKind::Exited { .. }))
        .collect();
    let exited = |p: &str, class, reason: &str, at| {
        (
            format!("root/{p}"),
            1,
            EventKind::Exited {
                class,
                reason: reason.to_string(),
            },
            at,
        )
    };
    assert_eq!(
        got,
        vec![
            exited(
                "brutal",
                ExitClass::Killed,
                &format!("killed (brutal_kill) {why}"),
                0
            ),
            exited(
                "failing",
                ExitClass::Abnormal,
                &format!("stop hook failed: post_stop failed {why}"),
                0
            ),
            exited("hang_handler", ExitClass::Killed, &killed, 1000),
            exited("hang_post_stop", ExitClass::Killed, &killed, 2000),
            exited(
                "normal",
                ExitClass::Shutdown,
                &format!("shutdown {why}"),
                2000
            ),
        ]
    );
    assert_eq!(
        *log.lock(),
        vec![
            "hang_handler:hang",
            "failing:post_stop",
            "hang_post_stop:post_stop",
            "normal:post_stop",
        ],
        "brutal's post_stop must not run; the hung handler never reaches post_stop"
    );

    let snap = tree.snapshot();
    for p in [
        "normal",
        "hang_post_stop",
        "hang_handler",
        "failing",
        "brutal",
    ] {
        let n = snap.find(&format!("root/{p}")).unwrap();
        assert_eq!(n.status, NodeStatus::Stopped, "{p}");
        assert_eq!(n.id, None, "{p}");
        assert_eq!(n.last_exits.len(), 1, "{p}");
    }
    let hp = snap.find("root/hang_post_stop").unwrap();
    assert_eq!(hp.last_exits[0].class, ExitClass::Killed);
    assert!(hp.last_exits[0].reason.contains("shutdown timeout"));
    assert_eq!(
        snap.find("root/brutal").unwrap().last_exits[0].class,
        ExitClass::Killed
    );
    assert_eq!(snap.find("root").unwrap().status, NodeStatus::Stopped);
}

// ---------------------------------------------------------------------------------------------
// 7. Dynamic children stop in parallel
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn dynamic_children_stop_in_parallel() {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let log = Arc::new(Mutex::new(Vec::new()));
    let slow = Behaviour::new("d")
        .with_log(&log)
        .post_stop(PostStop::Sleep(Duration::from_secs(1)));
    let spec = SupervisorSpec::new(Strategy::OneForOne, intensity(10, 5000)).dynamic(
        worker_spec("d", &slow)
            .restart(Restart::Transient)
            .shutdown(Shutdown::Timeout(Duration::from_secs(5))),
        10,
    );
    let (root, h) = spawn_root(&tree, spec).await;
    let mut cells = Vec::new();
    for _ in 0..10 {
        let c = within("start_child", start_child(&root, ()))
            .await
            .expect("start_child");
        cells.push(c.cell);
    }
    assert_eq!(
        within("count", count_children(&root))
            .await
            .unwrap()
            .dynamic,
        10
    );
    ev.since_mark();
    let t0 = tree.now_ms();
    within("the root to stop", root.stop_and_wait(None, None))
        .await
        .unwrap();
    let elapsed = tree.now_ms() - t0;
    within("the root task", h).await.unwrap();
    assert_eq!(elapsed, 1000, "10 × 1 s post_stop should overlap");
    let done = log
        .lock()
        .iter()
        .filter(|l| *l == "d:post_stop_done")
        .count();
    assert_eq!(done, 10, "every post_stop completed");
    for c in &cells {
        assert_eq!(c.get_status(), ActorStatus::Stopped);
    }
    let exits: Vec<_> = ev
        .drain_now()
        .into_iter()
        .filter(|e| matches!(e.kind, EventKind::Exited { .. }))
        .collect();
    assert_eq!(exits.len(), 10);
    for e in &exits {
        assert_eq!(e.at_ms, t0 + 1000);
        assert_eq!(exit_of(e).0, ExitClass::Shutdown);
    }
}

// ---------------------------------------------------------------------------------------------
// 8. A stale exit of a dead incarnation is ignored
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn stale_exit_of_dead_incarnation_is_ignored() {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let spec = SupervisorSpec::new(Strategy::OneForAll, intensity(10, 5000))
        .child(worker_spec("a", &Behaviour::new("a")).backoff(Backoff::none()))
        .child(worker_spec("b", &Behaviour::new("b")).backoff(Backoff::none()));
    let (root, h) = spawn_root(&tree, spec).await;
    ev.wait_for("root", 1, "started").await;
    ev.since_mark();

    // Both crash before anyone else runs.
    send(&tree, "root/a", WMsg::Crash);
    send(&tree, "root/b", WMsg::Crash);
    ev.wait_for("root/b", 2, "started").await;
    // Flush: anything the supervisor still had to do is done once it answers.
    within("which_children", which_children(&root))
        .await
        .unwrap();
    let mut got = ev.since_mark();
    got.extend(ev.drain_now());
    assert_eq!(
        brief(&got),
        vec![
            tev("root/a", 1, "exited Abnormal: crash"),
            tev("root/b", 1, "stopped_for_restart"),
            tev("root/a", 1, "backing_off 0"),
            tev("root/b", 1, "stale_ignored"),
            tev("root/a", 2, "started"),
            tev("root/b", 2, "started"),
        ]
    );
    assert_eq!(ping(&tree, "root/a").await, 2);
    assert_eq!(ping(&tree, "root/b").await, 2);
    let snap = tree.snapshot();
    for p in ["root/a", "root/b"] {
        let n = snap.find(p).unwrap();
        assert_eq!(
            (n.status, n.generation, n.restarts),
            (NodeStatus::Running, 2, 1)
        );
    }
    assert_eq!(
        snap.find("root")
            .unwrap()
            .supervisor
            .as_ref()
            .unwrap()
            .window_used,
        1,
        "one group restart, counted once"
    );
    stop_root(root, h).await;
}

// ---------------------------------------------------------------------------------------------
// 9. max_children
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn max_children_refuses_then_allows_after_a_stop() {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let spec = SupervisorSpec::new(Strategy::OneForOne, intensity(10, 5000)).dynamic(
        worker_spec("w", &Behaviour::new("w")).restart(Restart::Transient),
        3,
    );
    let (root, h) = spawn_root(&tree, spec).await;
    let mut started = Vec::new();
    for _ in 0..3 {
        started.push(
            within("start_child", start_child(&root, ()))
                .await
                .expect("start_child"),
        );
    }
    let fourth = within("4th start_child", start_child(&root, ())).await;
    assert_eq!(fourth.err(), Some(SupervisorError::MaxChildren(3)));
    let counts = within("count_children", count_children(&root))
        .await
        .expect("the supervisor still answers");
    assert_eq!((counts.dynamic, counts.active), (3, 3));
    assert_eq!(node(&tree, "root").status, NodeStatus::Running);
    let info = node(&tree, "root").supervisor.unwrap();
    assert_eq!((info.dynamic_children, info.max_children), (3, Some(3)));

    // One stops normally (transient: not restarted, removed).
    let gone = started.remove(1);
    gone.cell.stop(None);
    let e = ev.wait_for(&gone.path, 1, "stopped").await;
    assert_eq!(e.path, "root/w-2");
    assert!(tree.snapshot().find(&gone.path).is_none());
    let fifth = within("start_child after a stop", start_child(&root, ()))
        .await
        .expect("a slot is free again");
    assert_eq!(&*fifth.path, "root/w-4");
    assert_eq!(
        within("count_children", count_children(&root))
            .await
            .unwrap()
            .dynamic,
        3
    );
    assert_eq!(
        within("5th start_child", start_child(&root, ()))
            .await
            .err(),
        Some(SupervisorError::MaxChildren(3))
    );
    stop_root(root, h).await;
}

// ---------------------------------------------------------------------------------------------
// 10. Snapshot and event stream after a known sequence
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn snapshot_and_events_after_known_crashes() {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let wb = backoff(500, 5000, 2.0);
    let root_spec = SupervisorSpec::new(Strategy::OneForOne, intensity(5, 10_000)).child(
        ChildSpec::supervisor("s", move |_| {
            SupervisorSpec::new(Strategy::RestForOne, intensity(10, 60_000))
                .child(worker_spec("a", &Behaviour::new("a")).backoff(wb))
                .child(worker_spec("b", &Behaviour::new("b")).backoff(wb))
                .child(worker_spec("c", &Behaviour::new("c")).backoff(wb))
        }),
    );
    let (root, h) = spawn_root(&tree, root_spec).await;
    ev.wait_for("root", 1, "started").await;
    assert_eq!(
        brief(&ev.since_mark()),
        vec![
            tev("root/s/a", 1, "started"),
            tev("root/s/b", 1, "started"),
            tev("root/s/c", 1, "started"),
            tev("root/s", 1, "started"),
            tev("root", 1, "started"),
        ]
    );

    // Crash b: rest_for_one stops c, restarts b then c after b's backoff.
    send(&tree, "root/s/b", WMsg::Crash);
    let c2 = ev.wait_for("root/s/c", 2, "started").await;
    assert_eq!(c2.at_ms, 500);
    let got = ev.since_mark();
    assert_eq!(
        brief(&got),
        vec![
            tev("root/s/b", 1, "exited Abnormal: crash"),
            tev(
                "root/s/c",
                1,
                "exited Shutdown: shutdown (sibling `b` failed)"
            ),
            tev("root/s/c", 1, "stopped_for_restart"),
            tev("root/s/b", 1, "backing_off 500"),
            tev("root/s/b", 2, "started"),
            tev("root/s/c", 2, "started"),
        ]
    );
    assert_eq!(
        got.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
        vec![0, 0, 0, 0, 500, 500]
    );

    // Kill c at 1500 ms: only c is restarted (it is the last one).
    tokio::time::advance(Duration::from_secs(1)).await;
    let c_cell = tree.lookup("root/s/c").unwrap();
    c_cell.kill();
    let c3 = ev.wait_for("root/s/c", 3, "started").await;
    assert_eq!(c3.at_ms, 2000);
    assert_eq!(
        brief(&ev.since_mark()),
        vec![
            tev("root/s/c", 2, "exited Killed: killed"),
            tev("root/s/c", 2, "backing_off 500"),
            tev("root/s/c", 3, "started"),
        ]
    );

    let snap = tree.snapshot();
    assert_eq!(snap.nodes, 5);
    assert_eq!(snap.taken_at_ms, 2000);
    let root_n = snap.find("root").unwrap();
    assert_eq!(
        root_n
            .children
            .iter()
            .map(|c| c.path.as_str())
            .collect::<Vec<_>>(),
        vec!["root/s"]
    );
    let s = snap.find("root/s").unwrap();
    assert_eq!(
        s.children
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        vec!["a", "b", "c"]
    );
    let ri = root_n.supervisor.as_ref().unwrap();
    assert_eq!(
        (ri.strategy, ri.window_used, ri.max_restarts, ri.period_ms),
        (Strategy::OneForOne, 0, 5, 10_000)
    );
    let si = s.supervisor.as_ref().unwrap();
    assert_eq!(
        (si.strategy, si.window_used, si.max_restarts, si.period_ms),
        (Strategy::RestForOne, 2, 10, 60_000)
    );
    assert_eq!(si.gave_up, None);
    assert_eq!(
        (s.status, s.generation, s.restarts, s.kind),
        (NodeStatus::Running, 1, 0, NodeKind::Supervisor)
    );
    assert!(s.last_exits.is_empty());

    let exits = |p: &str| {
        snap.find(p)
            .unwrap()
            .last_exits
            .iter()
            .map(|x| (x.generation, x.class, x.reason.clone(), x.at_ms))
            .collect::<Vec<_>>()
    };
    let a = snap.find("root/s/a").unwrap();
    assert_eq!(
        (a.status, a.generation, a.restarts),
        (NodeStatus::Running, 1, 0)
    );
    assert_eq!(a.uptime_ms, Some(2000));
    assert!(exits("root/s/a").is_empty());
    let b = snap.find("root/s/b").unwrap();
    assert_eq!(
        (b.status, b.generation, b.restarts),
        (NodeStatus::Running, 2, 1)
    );
    assert_eq!(b.uptime_ms, Some(1500));
    assert_eq!(
        exits("root/s/b"),
        vec![(1, ExitClass::Abnormal, "crash".to_string(), 0)]
    );
    let c = snap.find("root/s/c").unwrap();
    assert_eq!(
        (c.status, c.generation, c.restarts),
        (NodeStatus::Running, 3, 2)
    );
    assert_eq!(c.uptime_ms, Some(0));
    assert_eq!(
        exits("root/s/c"),
        vec![
            (
                1,
                ExitClass::Shutdown,
                "shutdown (sibling `b` failed)".to_string(),
                0
            ),
            (2, ExitClass::Killed, "killed".to_string(), 1500),
        ]
    );
    for n in snap.roots[0].walk() {
        assert!(n.id.is_some(), "{} has no id", n.path);
        assert_eq!(n.next_restart_at_ms, None, "{}", n.path);
    }
    assert_ne!(
        c.id.as_deref(),
        Some(c_cell.get_id().to_string().as_str()),
        "the snapshot shows the new incarnation"
    );
    stop_root(root, h).await;
}

// ---------------------------------------------------------------------------------------------
// 11. Watchdogs
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn watchdog_start_timeout_is_recorded_as_timeout() {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let b = Behaviour::new("slow");
    // Generation 2's start never returns.
    let slow = ChildSpec::new("slow", move |ctx: ChildCtx| {
        let b = b.clone();
        async move {
            if ctx.generation == 2 {
                std::future::pending::<()>().await;
            }
            let args = WArgs {
                b,
                generation: ctx.generation,
                watchdog: ctx.watchdog.clone(),
            };
            let (r, _) = Actor::spawn_linked(None, Worker, args, ctx.supervisor.clone()).await?;
            Ok(r.get_cell())
        }
    })
    .start_timeout(Duration::from_secs(1))
    .backoff(backoff(500, 5000, 2.0));
    let spec = SupervisorSpec::new(Strategy::OneForOne, intensity(10, 60_000)).child(slow);
    let (root, h) = spawn_root(&tree, spec).await;
    ev.wait_for("root", 1, "started").await;
    ev.since_mark();

    send(&tree, "root/slow", WMsg::Crash);
    let s3 = ev.wait_for("root/slow", 3, "started").await;
    let got = ev.since_mark();
    assert_eq!(
        brief(&got),
        vec![
            tev("root/slow", 1, "exited Abnormal: crash"),
            tev("root/slow", 1, "backing_off 500"),
            tev(
                "root/slow",
                2,
                "exited Timeout: start did not return within 1000 ms"
            ),
            tev("root/slow", 2, "backing_off 1000"),
            tev("root/slow", 3, "started"),
        ]
    );
    assert_eq!(
        got.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
        vec![0, 0, 1500, 1500, 2500]
    );
    assert_eq!(s3.at_ms, 2500);
    let n = node(&tree, "root/slow");
    assert_eq!(
        n.last_exits.iter().map(|x| x.class).collect::<Vec<_>>(),
        vec![ExitClass::Abnormal, ExitClass::Timeout]
    );
    assert_eq!((n.generation, n.restarts), (3, 2));
    assert_eq!(ping(&tree, "root/slow").await, 3);
    stop_root(root, h).await;
}

#[tokio::test(start_paused = true)]
async fn watchdog_start_timeout_at_boot_fails_the_start() {
    let tree = Tree::new();
    let never = ChildSpec::new("never", |_ctx: ChildCtx| async move {
        std::future::pending::<Result<ractor::ActorCell, ActorProcessingErr>>().await
    })
    .start_timeout(Duration::from_secs(1));
    let spec = SupervisorSpec::new(Strategy::OneForOne, intensity(10, 60_000)).child(never);
    let res = within(
        "the root's start to fail",
        Actor::spawn(
            None,
            Supervisor,
            SupervisorArgs {
                spec,
                tree: tree.clone(),
                path: "root".into(),
            },
        ),
    )
    .await;
    let Err(err) = res else {
        panic!("a child that never starts must fail the boot");
    };
    assert!(
        err.to_string()
            .contains("start did not return within 1000 ms"),
        "{err}"
    );
    assert_eq!(tree.now_ms(), 1000);
    let n = node(&tree, "root/never");
    assert_eq!(n.status, NodeStatus::Stopped);
    assert_eq!(n.last_exits.len(), 1);
    assert_eq!(n.last_exits[0].class, ExitClass::Timeout);
}

#[tokio::test(start_paused = true)]
async fn watchdog_handler_deadline_kills_and_restarts() {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let spec = SupervisorSpec::new(Strategy::OneForOne, intensity(10, 60_000)).child(
        worker_spec("w", &Behaviour::new("w"))
            .handler_deadline(Duration::from_secs(2))
            .backoff(backoff(100, 1000, 2.0)),
    );
    let (root, h) = spawn_root(&tree, spec).await;
    ev.wait_for("root", 1, "started").await;
    ev.since_mark();

    // Busy for 1.5 s, under the deadline: nothing happens.
    send(&tree, "root/w", WMsg::Busy(Duration::from_millis(1500)));
    assert_eq!(ping(&tree, "root/w").await, 1);
    assert_eq!(tree.now_ms(), 1500);
    assert!(ev.drain_now().is_empty());

    // Hung in a handler from 1500 ms: killed at 3500 ms.
    let r: ActorRef<WMsg> = tree.handle("root/w").actor_ref().unwrap();
    within("w to be inside its handler", async {
        ractor::call!(r, |tx| WMsg::Hang(Some(tx)))
    })
    .await
    .unwrap();
    let exited = ev.wait_for("root/w", 1, "exited").await;
    let (class, reason) = exit_of(&exited);
    assert_eq!(class, ExitClass::Timeout);
    assert_eq!(
        reason,
        "handler deadline of 2000 ms exceeded (busy for 2000 ms); killed"
    );
    assert_eq!(exited.at_ms, 3500);
    let s2 = ev.wait_for("root/w", 2, "started").await;
    assert_eq!(s2.at_ms, 3600);
    assert_eq!(r.get_status(), ActorStatus::Stopped);
    assert_eq!(ping(&tree, "root/w").await, 2);
    let n = node(&tree, "root/w");
    assert_eq!(n.last_exits.len(), 1);
    assert_eq!(n.last_exits[0].class, ExitClass::Timeout);
    stop_root(root, h).await;
}

// ---------------------------------------------------------------------------------------------
// 12. Stable handle during a restart
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn stable_handle_never_returns_dead_incarnation() {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let spec = SupervisorSpec::new(Strategy::OneForOne, intensity(10, 60_000))
        .child(worker_spec("c", &Behaviour::new("c")).backoff(backoff(1000, 5000, 2.0)));
    let (root, h) = spawn_root(&tree, spec).await;
    ev.wait_for("root", 1, "started").await;
    let handle = tree.handle("root/c");
    let old = handle.cell().expect("running");
    assert_eq!(handle.path(), "root/c");

    send(&tree, "root/c", WMsg::Crash);
    // At every event until the restart, the handle gives the live incarnation or Restarting.
    loop {
        let e = ev.next("the restart of root/c").await;
        match tree.lookup("root/c") {
            Ok(cell) => {
                assert_ne!(
                    cell.get_id(),
                    old.get_id(),
                    "lookup returned the dead actor"
                );
                assert_eq!(cell.get_status(), ActorStatus::Running);
            }
            Err(err) => assert_eq!(err, LookupError::Restarting, "after {e:?}"),
        }
        if e.kind == (EventKind::BackingOff { delay_ms: 1000 }) {
            break;
        }
    }
    assert_eq!(old.get_status(), ActorStatus::Stopped);
    assert_eq!(handle.cell().err(), Some(LookupError::Restarting));
    assert_eq!(
        handle.actor_ref::<WMsg>().err(),
        Some(LookupError::Restarting)
    );
    tokio::time::advance(Duration::from_millis(999)).await;
    assert_eq!(tree.lookup("root/c").err(), Some(LookupError::Restarting));

    let s2 = ev.wait_for("root/c", 2, "started").await;
    assert_eq!(s2.at_ms, 1000);
    let new = handle.cell().expect("running again");
    assert_ne!(new.get_id(), old.get_id());
    assert_eq!(new.get_status(), ActorStatus::Running);
    assert_eq!(node(&tree, "root/c").id, Some(new.get_id().to_string()));
    assert_eq!(ping(&tree, "root/c").await, 2);
    assert_eq!(tree.lookup("root/nope").err(), Some(LookupError::NotFound));
    stop_root(root, h).await;
    assert_eq!(handle.cell().err(), Some(LookupError::Stopped));
}

// ---------------------------------------------------------------------------------------------
// 13. Randomized kills and crashes
// ---------------------------------------------------------------------------------------------

/// Supervisors in the snapshot (root included).
fn supervisors(snap: &drover_actors::TreeSnapshot) -> Vec<NodeSnapshot> {
    snap.roots
        .iter()
        .flat_map(|r| r.walk())
        .filter(|n| n.kind == NodeKind::Supervisor)
        .cloned()
        .collect()
}

async fn sup_ref(tree: &Tree, path: &str) -> ActorRef<SupervisorMessage> {
    tree.handle(path)
        .actor_ref()
        .unwrap_or_else(|e| panic!("supervisor {path}: {e}"))
}

/// Whether every node is running, in the snapshot and in every supervisor's own books.
async fn settled(tree: &Tree) -> bool {
    let snap = tree.snapshot();
    let all_running = snap
        .roots
        .iter()
        .flat_map(|r| r.walk())
        .all(|n| n.status == NodeStatus::Running);
    if !all_running {
        return false;
    }
    for s in supervisors(&snap) {
        let Ok(r) = tree
            .handle(s.path.as_str())
            .actor_ref::<SupervisorMessage>()
        else {
            return false;
        };
        match within("which_children", which_children(&r)).await {
            Ok(list) if list.iter().all(|c| c.status == NodeStatus::Running) => {}
            _ => return false,
        }
    }
    true
}

async fn settle(tree: &Tree, ev: &mut Events, round: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !settled(tree).await {
        if tokio::time::Instant::now() > deadline {
            panic!(
                "round {round}: the tree did not settle; snapshot:\n{}\nlast events:\n{}",
                serde_json::to_string_pretty(&tree.snapshot()).unwrap(),
                ev.recent()
            );
        }
        // The next event, or a quiet second (paused clock) before looking again.
        if let Ok(r) = tokio::time::timeout(Duration::from_secs(1), ev.rx.recv()).await {
            ev.all.push(r.expect("event stream broke"));
        }
    }
}

async fn assert_consistent(tree: &Tree, round: usize) {
    let snap = tree.snapshot();
    let ctx = |what: String| format!("round {round}: {what}");
    assert_eq!(
        tree.gave_up(),
        None,
        "{}",
        ctx("a supervisor gave up".into())
    );
    let nodes: Vec<&NodeSnapshot> = snap.roots.iter().flat_map(|r| r.walk()).collect();
    assert_eq!(nodes.len(), snap.nodes, "{}", ctx("orphan records".into()));
    for n in &nodes {
        assert_eq!(n.status, NodeStatus::Running, "{}", ctx(n.path.clone()));
        let id =
            n.id.as_ref()
                .unwrap_or_else(|| panic!("{}", ctx(format!("{} running without id", n.path))));
        let cell = tree
            .lookup(&n.path)
            .unwrap_or_else(|e| panic!("{}", ctx(format!("lookup {}: {e}", n.path))));
        assert_eq!(&cell.get_id().to_string(), id, "{}", ctx(n.path.clone()));
        assert_eq!(
            cell.get_status(),
            ActorStatus::Running,
            "{}",
            ctx(format!("{} is not really alive", n.path))
        );
        assert!(n.generation >= 1, "{}", ctx(n.path.clone()));
        assert_eq!(
            n.restarts,
            n.generation - 1,
            "{}",
            ctx(format!("{} restarts vs generation", n.path))
        );
    }
    let mut reported = 0;
    for s in supervisors(&snap) {
        let cell = tree.lookup(&s.path).unwrap();
        let real: BTreeSet<String> = cell
            .get_children()
            .iter()
            .map(|c| c.get_id().to_string())
            .collect();
        let shown: BTreeSet<String> = s.children.iter().filter_map(|c| c.id.clone()).collect();
        assert_eq!(
            real,
            shown,
            "{}",
            ctx(format!("ractor children of {} vs snapshot", s.path))
        );
        let r = sup_ref(tree, &s.path).await;
        let list = within("which_children", which_children(&r)).await.unwrap();
        reported += list.len();
        let listed: BTreeSet<(String, Option<String>, u64)> = list
            .iter()
            .map(|c| {
                (
                    c.path.clone(),
                    c.cell.as_ref().map(|x| x.get_id().to_string()),
                    c.generation,
                )
            })
            .collect();
        let in_snap: BTreeSet<(String, Option<String>, u64)> = s
            .children
            .iter()
            .map(|c| (c.path.clone(), c.id.clone(), c.generation))
            .collect();
        assert_eq!(
            listed,
            in_snap,
            "{}",
            ctx(format!("which_children of {} vs snapshot", s.path))
        );
    }
    assert_eq!(
        snap.nodes,
        1 + reported,
        "{}",
        ctx("snapshot size vs which_children".into())
    );
}

#[tokio::test(start_paused = true)]
async fn randomized_kills_and_crashes_keep_the_tree_consistent() {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let wb = Backoff {
        min_ms: 10,
        max_ms: 200,
        multiplier: 2.0,
        jitter: 0.2,
        reset_after_ms: 1000,
        max_retries: None,
    };
    // Shared by every worker: arming it makes the next starts crash right after starting.
    let flaky = Behaviour::new("w");
    let child_sup = |id: &str, strategy: Strategy, seed: u64| {
        let flaky = flaky.clone();
        ChildSpec::supervisor(id.to_string(), move |_| {
            let w = |id: &str| worker_spec(id, &flaky).backoff(wb);
            SupervisorSpec::new(strategy, generous())
                .child(w("w1"))
                .child(w("w2").backoff(Backoff::none()))
                .child(w("w3"))
                .dynamic(w("d"), 4)
                .seed(seed)
        })
    };
    let spec = SupervisorSpec::new(Strategy::OneForOne, generous())
        .child(child_sup("s1", Strategy::OneForAll, 1))
        .child(child_sup("s2", Strategy::RestForOne, 2).backoff(wb));
    let (root, h) = spawn_root(&tree, spec).await;
    ev.wait_for("root", 1, "started").await;
    for s in ["root/s1", "root/s2"] {
        let r = sup_ref(&tree, s).await;
        for _ in 0..2 {
            within("start_child", start_child(&r, ())).await.unwrap();
        }
    }
    settle(&tree, &mut ev, 0).await;
    assert_consistent(&tree, 0).await;
    assert_eq!(tree.snapshot().nodes, 1 + 2 * (1 + 3 + 2));

    let mut rng = SplitMix64::new(0xD20E_5EED);
    let (mut kills, mut crashes, mut starts, mut doubles, mut armed) = (0, 0, 0, 0, 0);
    for round in 1..=200 {
        let snap = tree.snapshot();
        let op = rng.next_u64() % 10;
        if op == 0 {
            let s = ["root/s1", "root/s2"][(rng.next_u64() % 2) as usize];
            let r = sup_ref(&tree, s).await;
            match within("start_child", start_child(&r, ())).await {
                Ok(_) => starts += 1,
                Err(SupervisorError::MaxChildren(4)) => {}
                Err(e) => panic!("round {round}: start_child on {s}: {e}"),
            }
        } else {
            let candidates: Vec<&NodeSnapshot> = snap.roots[0]
                .walk()
                .into_iter()
                .filter(|n| n.path != "root")
                .collect();
            let n = candidates[(rng.next_u64() % candidates.len() as u64) as usize];
            let mut victims = vec![n];
            if op == 9 {
                // Two siblings at once: the second one's exit may become stale.
                let parent = n.path.rsplit_once('/').unwrap().0;
                let siblings: Vec<&NodeSnapshot> = candidates
                    .iter()
                    .copied()
                    .filter(|c| c.path != n.path && c.path.rsplit_once('/').unwrap().0 == parent)
                    .collect();
                assert!(
                    !siblings.is_empty(),
                    "round {round}: {} has no sibling",
                    n.path
                );
                victims.push(siblings[(rng.next_u64() % siblings.len() as u64) as usize]);
                doubles += 1;
            }
            if rng.next_u64() % 4 == 0 {
                flaky
                    .fail_starts
                    .store(1 + (rng.next_u64() % 3) as u32, Ordering::SeqCst);
                armed += 1;
            }
            for v in &victims {
                let cell = tree
                    .lookup(&v.path)
                    .unwrap_or_else(|e| panic!("round {round}: lookup {}: {e}", v.path));
                if op <= 5 || op == 9 {
                    kills += 1;
                    cell.kill();
                } else {
                    crashes += 1;
                    match v.kind {
                        NodeKind::Worker => ActorRef::<WMsg>::from(cell)
                            .send_message(WMsg::Crash)
                            .unwrap(),
                        NodeKind::Supervisor => cell.stop(Some("crash".into())),
                    }
                }
            }
            let e = ev.wait_for_end(&n.path, n.generation, round).await;
            if let EventKind::Exited { class, .. } = e.kind {
                assert!(class.is_abnormal(), "round {round}: {e:?}");
            }
        }
        settle(&tree, &mut ev, round).await;
        assert_consistent(&tree, round).await;
    }
    let mut kinds = std::collections::BTreeMap::new();
    for e in &ev.all {
        *kinds.entry(kind_name(&e.kind)).or_insert(0) += 1;
    }
    println!(
        "kills {kills}, crashes {crashes}, dynamic starts {starts}, double kills {doubles}, \
         crash-at-start armed {armed}; events: {kinds:?}"
    );
    assert!(
        kills > 50 && crashes > 40 && starts > 5 && doubles > 5 && armed > 20,
        "{kills} {crashes} {starts} {doubles} {armed}"
    );
    assert!(kinds.get("stale_ignored").is_some_and(|n| *n > 0));
    assert!(
        ev.all
            .iter()
            .any(|e| e.kind == EventKind::StoppedForRestart),
        "no group restart happened"
    );
    stop_root(root, h).await;
}
