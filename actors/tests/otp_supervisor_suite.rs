//! drover's supervisor against Erlang/OTP's own test suite (`lib/stdlib/test/supervisor_SUITE.erl`):
//! one test per applicable case, named after it. Cases OTP has no name for (deviations found
//! in drover's supervisor, and its additions such as backoff) are named after what they prove.
//! The README maps every OTP case to its test here or elsewhere, or to why it does not apply.
//!
//! Paused clock throughout; waits are on the tree's event stream, RPC replies and join handles,
//! each bounded (see `sup/mod.rs`).

mod sup;

use drover_actors::supervisor::{
    AutoShutdown, SupervisorError, delete_child, restart_child, start_static_child,
    terminate_child, terminate_child_by_id,
};
use ractor::ActorCell;
use sup::*;

fn one_for_one() -> SupervisorSpec {
    SupervisorSpec::new(Strategy::OneForOne, generous())
}

/// A probe whose start fails on the incarnations `fail_on` lists (1 = the first).
fn failing_on(id: &str, log: &Log, fail_on: &'static [usize]) -> ChildSpec {
    let log = log.clone();
    let n = Arc::new(AtomicUsize::new(0));
    ChildSpec::new(id, move |ctx: ChildCtx| {
        let (log, n) = (log.clone(), n.clone());
        async move {
            let k = n.fetch_add(1, Ordering::SeqCst) + 1;
            let args = ProbeArgs {
                name: last_segment(&ctx.path),
                log,
                start_delay: Duration::ZERO,
                fail_start: fail_on.contains(&k),
            };
            let (r, _) = Actor::spawn_linked(None, Probe, args, ctx.supervisor.clone()).await?;
            Ok(r.get_cell())
        }
    })
}

fn status(tree: &Tree, path: &str) -> NodeStatus {
    node(tree, path).status
}

fn ids(children: &[drover_actors::supervisor::ChildInfo]) -> Vec<String> {
    children.iter().map(|c| c.id.clone()).collect()
}

// ---- sup_stop ------------------------------------------------------------------------------

/// `sup_stop_brutal_kill`: at the supervisor's stop, a `brutal_kill` child is killed (its
/// `post_stop` does not run) and recorded `killed`; the other stops with `shutdown`.
#[tokio::test(start_paused = true)]
async fn sup_stop_brutal_kill() {
    let tree = Tree::new();
    let log = new_log();
    let spec = one_for_one()
        .child(probe("child1", &log))
        .child(probe("child2", &log).shutdown(Shutdown::BrutalKill));
    let (root, handle) = spawn_root(&tree, spec).await.expect("starts");
    stop_root(root, handle).await;
    assert_eq!(
        last_exit(&node(&tree, "root/child1")).class,
        ExitClass::Shutdown
    );
    let killed = node(&tree, "root/child2");
    assert_eq!(last_exit(&killed).class, ExitClass::Killed);
    assert!(
        last_exit(&killed)
            .reason
            .starts_with("killed (brutal_kill)")
    );
    assert_eq!(
        entries(&log),
        strs(&["start:child1", "start:child2", "stop:child1"])
    );
}

/// A stop hook (`post_stop`) that fails makes the stop abnormal, as an exit with another
/// reason than `shutdown` is in OTP; ractor alone reports it to nobody who listens.
#[tokio::test(start_paused = true)]
async fn sup_stop_failing_stop_hook_is_abnormal() {
    struct FailingStop;
    impl Actor for FailingStop {
        type Msg = ();
        type State = ();
        type Arguments = ();
        async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
        async fn post_stop(&self, _: ActorRef<()>, _: &mut ()) -> Result<(), ActorProcessingErr> {
            Err("cannot flush".into())
        }
    }
    let tree = Tree::new();
    let spec = one_for_one().child(ChildSpec::worker("flusher", |_| (FailingStop, ())));
    let (root, handle) = spawn_root(&tree, spec).await.expect("starts");
    terminate_child(&root, "flusher").await.expect("terminated");
    let exit = last_exit(&node(&tree, "root/flusher")).clone();
    assert_eq!(exit.class, ExitClass::Abnormal, "{exit:?}");
    assert!(
        exit.reason.contains("stop hook failed: cannot flush"),
        "{exit:?}"
    );
    stop_root(root, handle).await;
}

// ---- child_adm -----------------------------------------------------------------------------

/// `child_adm`: start_child of a spec at run time, already_started / already_present,
/// terminate_child, restart_child (not of a running child), delete_child (only of a
/// terminated one), which_children and count_children along the way.
#[tokio::test(start_paused = true)]
async fn child_adm() {
    let tree = Tree::new();
    let log = new_log();
    let (root, handle) = spawn_root(&tree, one_for_one()).await.expect("starts");
    let cell = start_static_child(&root, probe("child1", &log))
        .await
        .expect("start_child");
    assert_eq!(
        ids(&which_children(&root).await.unwrap()),
        strs(&["child1"])
    );
    assert_eq!(
        count_children(&root).await.unwrap(),
        ChildCounts {
            specs: 1,
            active: 1,
            dynamic: 0,
            supervisors: 0,
            workers: 1
        }
    );
    assert_eq!(
        start_static_child(&root, probe("child1", &log)).await.err(),
        Some(SupervisorError::AlreadyStarted("child1".into()))
    );
    assert_eq!(
        delete_child(&root, "child1").await,
        Err(SupervisorError::Running("child1".into()))
    );
    assert_eq!(
        restart_child(&root, "child1").await,
        Err(SupervisorError::Running("child1".into()))
    );

    terminate_child(&root, "child1").await.expect("terminate");
    assert_eq!(cell.get_status(), ActorStatus::Stopped);
    assert_eq!(status(&tree, "root/child1"), NodeStatus::Stopped);
    assert_eq!(count_children(&root).await.unwrap().active, 0);
    assert_eq!(
        start_static_child(&root, probe("child1", &log)).await.err(),
        Some(SupervisorError::AlreadyPresent("child1".into()))
    );

    restart_child(&root, "child1").await.expect("restart_child");
    assert_eq!(status(&tree, "root/child1"), NodeStatus::Running);
    assert_eq!(node(&tree, "root/child1").generation, 2);

    terminate_child(&root, "child1").await.expect("terminate");
    delete_child(&root, "child1").await.expect("delete_child");
    assert!(which_children(&root).await.unwrap().is_empty());
    assert!(tree.snapshot().find("root/child1").is_none());
    assert_eq!(
        restart_child(&root, "child1").await,
        Err(SupervisorError::NoSuchChild("child1".into()))
    );
    assert_eq!(
        delete_child(&root, "child1").await,
        Err(SupervisorError::NoSuchChild("child1".into()))
    );
    // A child whose start fails is not added (sup_start_child_returns_error).
    let refused = start_static_child(&root, probe_with("bad", &log, Duration::ZERO, true)).await;
    assert!(
        matches!(refused, Err(SupervisorError::StartFailed { .. })),
        "{refused:?}"
    );
    assert!(which_children(&root).await.unwrap().is_empty());
    // sup_start_restart_child_returns_error: a restart whose start fails is an error, and
    // the child stays, terminated.
    start_static_child(&root, failing_on("flaky", &log, &[2]))
        .await
        .expect("first start");
    terminate_child(&root, "flaky").await.expect("terminate");
    let again = restart_child(&root, "flaky").await;
    assert!(
        matches!(again, Err(SupervisorError::StartFailed { .. })),
        "{again:?}"
    );
    assert_eq!(ids(&which_children(&root).await.unwrap()), strs(&["flaky"]));
    assert_eq!(status(&tree, "root/flaky"), NodeStatus::Stopped);
    stop_root(root, handle).await;
}

/// `child_adm_simple`: a dynamic child is terminated by identity (OTP: by pid) as well as by
/// id; its spec goes with it.
#[tokio::test(start_paused = true)]
async fn child_adm_simple() {
    let tree = Tree::new();
    let log = new_log();
    let spec = one_for_one().dynamic(probe("job", &log).restart(Restart::Temporary), 10);
    let (root, handle) = spawn_root(&tree, spec).await.expect("starts");
    let a = start_child(&root, ()).await.expect("a");
    let b = start_child(&root, ()).await.expect("b");
    terminate_child_by_id(&root, a.cell.get_id())
        .await
        .expect("by identity");
    assert_eq!(a.cell.get_status(), ActorStatus::Stopped);
    assert_eq!(
        ids(&which_children(&root).await.unwrap()),
        vec![b.id().to_string()]
    );
    terminate_child(&root, b.id()).await.expect("by id");
    assert!(which_children(&root).await.unwrap().is_empty());
    assert_eq!(
        terminate_child_by_id(&root, a.cell.get_id()).await,
        Err(SupervisorError::NoSuchChild(a.cell.get_id().to_string()))
    );
    stop_root(root, handle).await;

    // sup_start_child_returns_error_simple: a dynamic child whose start fails is refused
    // and not kept.
    let tree = Tree::new();
    let spec = one_for_one().dynamic(probe_with("bad", &log, Duration::ZERO, true), 10);
    let (root, handle) = spawn_root(&tree, spec).await.expect("starts");
    let refused = start_child(&root, ()).await;
    assert!(
        matches!(refused, Err(SupervisorError::StartFailed { .. })),
        "{refused:?}"
    );
    assert!(which_children(&root).await.unwrap().is_empty());
    stop_root(root, handle).await;
}

/// `do_not_save_child_specs_for_temporary_children`: a temporary static child's spec is
/// deleted when it is terminated, and when it exits on its own.
#[tokio::test(start_paused = true)]
async fn do_not_save_child_specs_for_temporary_children() {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let log = new_log();
    let spec = one_for_one()
        .child(probe("terminated", &log).restart(Restart::Temporary))
        .child(probe("exits", &log).restart(Restart::Temporary))
        .child(probe("stays", &log));
    let (root, handle) = spawn_root(&tree, spec).await.expect("starts");
    terminate_child(&root, "terminated")
        .await
        .expect("terminate");
    probe_at(&tree, "root/exits")
        .send_message(Cmd::Stop(None))
        .unwrap();
    ev.exited("root/exits").await;
    settle(&root).await;
    assert_eq!(ids(&which_children(&root).await.unwrap()), strs(&["stays"]));
    assert_eq!(count_children(&root).await.unwrap().specs, 1);
    assert_eq!(child_paths(&tree, "root"), strs(&["root/stays"]));
    stop_root(root, handle).await;
}

// ---- restart strategies ---------------------------------------------------------------------

/// `one_for_all_other_child_fails_restart`: during a one_for_all restart a sibling fails to
/// start: the whole group is restarted again, not that child alone.
#[tokio::test(start_paused = true)]
async fn one_for_all_other_child_fails_restart() {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let log = new_log();
    let spec = SupervisorSpec::new(Strategy::OneForAll, generous())
        .child(probe("a", &log))
        .child(failing_on("b", &log, &[2]))
        .child(probe("c", &log));
    let (root, handle) = spawn_root(&tree, spec).await.expect("starts");
    let from = entries(&log).len();
    probe_at(&tree, "root/a").send_message(Cmd::Fail).unwrap();
    ev.started("root/c", 2).await;
    assert_eq!(
        entries_since(&log, from),
        strs(&[
            "stop:c", "stop:b", // a failed: the others stop in reverse order
            "start:a", "start:b", // b's second incarnation refuses to start
            "stop:a",  // so the group goes again: a, restarted already, stops
            "start:a", "start:b", "start:c",
        ])
    );
    // c never ran in the round b broke off: its second incarnation is this one.
    for (p, generation) in [("root/a", 3), ("root/b", 3), ("root/c", 2)] {
        assert_eq!(node(&tree, p).generation, generation, "{p}");
        assert_eq!(status(&tree, p), NodeStatus::Running, "{p}");
    }
    stop_root(root, handle).await;
}

/// `rest_for_one_other_child_fails_restart`: a later sibling failing to start during a
/// rest_for_one restart is started again alone; the failed child is not restarted twice.
#[tokio::test(start_paused = true)]
async fn rest_for_one_other_child_fails_restart() {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let log = new_log();
    let spec = SupervisorSpec::new(Strategy::RestForOne, generous())
        .child(probe("a", &log))
        .child(probe("b", &log))
        .child(failing_on("c", &log, &[2]));
    let (root, handle) = spawn_root(&tree, spec).await.expect("starts");
    let from = entries(&log).len();
    probe_at(&tree, "root/b").send_message(Cmd::Fail).unwrap();
    ev.started("root/c", 3).await;
    assert_eq!(
        entries_since(&log, from),
        strs(&["stop:c", "start:b", "start:c", "start:c"])
    );
    assert_eq!(node(&tree, "root/a").generation, 1);
    assert_eq!(node(&tree, "root/b").generation, 2);
    stop_root(root, handle).await;
}

/// `hanging_restart_loop_rest_for_one`: a child that never starts again does not hang its
/// supervisor: it keeps answering while the restarts fail, and gives up past its intensity.
#[tokio::test(start_paused = true)]
async fn hanging_restart_loop_rest_for_one() {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let log = new_log();
    let backoff = Backoff {
        min_ms: 100,
        max_ms: 100,
        jitter: 0.0,
        ..Backoff::default()
    };
    let spec = SupervisorSpec::new(Strategy::RestForOne, intensity(3, Duration::from_secs(60)))
        .child(probe("a", &log))
        .child(failing_on("b", &log, &[2, 3, 4, 5, 6, 7, 8]).backoff(backoff))
        .child(probe("c", &log));
    let (root, handle) = spawn_root(&tree, spec).await.expect("starts");
    probe_at(&tree, "root/b").send_message(Cmd::Fail).unwrap();
    ev.wait("the first failed restart", |e| {
        e.path == "root/b"
            && matches!(
                e.kind,
                EventKind::Exited {
                    class: ExitClass::StartFailed,
                    ..
                }
            )
    })
    .await;
    // Still answering between failed restarts.
    assert_eq!(count_children(&root).await.expect("answers").specs, 3);
    let reason = ev.gave_up("root").await;
    assert!(reason.contains("restart intensity exceeded"), "{reason}");
    join(handle, "root after giving up").await;
    assert_eq!(
        node(&tree, "root/a").generation,
        1,
        "a, before b, is never restarted"
    );
}

/// Under rest_for_one a sibling that fails without backoff restarts at once, even while a
/// later sibling waits out its own backoff (it used to wait for the later one's time too).
#[tokio::test(start_paused = true)]
async fn rest_for_one_an_earlier_sibling_does_not_wait_for_a_later_backoff() {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let log = new_log();
    let slow = Backoff {
        min_ms: 10_000,
        max_ms: 10_000,
        jitter: 0.0,
        ..Backoff::default()
    };
    let spec = SupervisorSpec::new(Strategy::RestForOne, generous())
        .child(probe("a", &log))
        .child(probe("b", &log).backoff(slow));
    let (root, handle) = spawn_root(&tree, spec).await.expect("starts");
    let t0 = tree.now_ms();
    probe_at(&tree, "root/b").send_message(Cmd::Fail).unwrap();
    ev.exited("root/b").await;
    tokio::time::advance(Duration::from_millis(1_000)).await;
    probe_at(&tree, "root/a").send_message(Cmd::Fail).unwrap();
    let a = ev.started("root/a", 2).await;
    assert!(
        a.at_ms - t0 < 1_100,
        "a restarted at {} ms, not after b's backoff",
        a.at_ms - t0
    );
    let b = ev.started("root/b", 2).await;
    assert!(
        b.at_ms - t0 >= 10_000,
        "b keeps its own backoff: {} ms",
        b.at_ms - t0
    );
    stop_root(root, handle).await;
}

/// A child terminated while it waits out its restart backoff stays terminated, under every
/// strategy (under the group strategies its queued restart used to run anyway).
#[tokio::test(start_paused = true)]
async fn a_child_terminated_in_backoff_stays_terminated() {
    for strategy in [
        Strategy::OneForOne,
        Strategy::OneForAll,
        Strategy::RestForOne,
    ] {
        let tree = Tree::new();
        let mut ev = Events::new(&tree);
        let log = new_log();
        let slow = Backoff {
            min_ms: 3_000,
            max_ms: 3_000,
            jitter: 0.0,
            ..Backoff::default()
        };
        let spec = SupervisorSpec::new(strategy, generous())
            .child(probe("a", &log).backoff(slow))
            .child(probe("b", &log));
        let (root, handle) = spawn_root(&tree, spec).await.expect("starts");
        probe_at(&tree, "root/a").send_message(Cmd::Fail).unwrap();
        ev.exited("root/a").await;
        settle(&root).await;
        assert_eq!(
            status(&tree, "root/a"),
            NodeStatus::BackingOff,
            "{strategy:?}"
        );
        terminate_child(&root, "a").await.expect("terminate");
        tokio::time::advance(Duration::from_secs(10)).await;
        settle(&root).await;
        let a = node(&tree, "root/a");
        assert_eq!(
            (a.status, a.generation),
            (NodeStatus::Stopped, 1),
            "{strategy:?}"
        );
        if strategy != Strategy::OneForOne {
            // The rest of the group still comes back.
            assert_eq!(status(&tree, "root/b"), NodeStatus::Running, "{strategy:?}");
        }
        stop_root(root, handle).await;
    }
}

/// A child terminated while its restart is in flight during a one_for_all restart: the
/// group restart goes on with the next sibling (it used to stall for good).
#[tokio::test(start_paused = true)]
async fn terminating_a_child_mid_group_restart_does_not_stall_it() {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let log = new_log();
    let spec = SupervisorSpec::new(Strategy::OneForAll, generous())
        .child(probe("a", &log))
        .child(probe_with("b", &log, Duration::from_secs(5), false))
        .child(probe("c", &log));
    let (root, handle) = spawn_root(&tree, spec).await.expect("starts");
    probe_at(&tree, "root/a").send_message(Cmd::Fail).unwrap();
    ev.started("root/a", 2).await;
    settle(&root).await;
    assert_eq!(status(&tree, "root/b"), NodeStatus::Starting);
    terminate_child(&root, "b").await.expect("terminate");
    ev.started("root/c", 2).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    settle(&root).await;
    assert_eq!(status(&tree, "root/b"), NodeStatus::Stopped);
    assert!(
        tree.lookup("root/b").is_err(),
        "b's in-flight incarnation is not kept"
    );
    stop_root(root, handle).await;
}

/// A start that spawned its actor and then overran `start_timeout` leaves no incarnation
/// behind: the spawned actor is killed before the next attempt (two consumers of one queue).
#[tokio::test(start_paused = true)]
async fn a_start_that_overruns_its_timeout_leaves_no_second_incarnation() {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let log = new_log();
    let first: Arc<Mutex<Option<ActorCell>>> = Arc::default();
    let n = Arc::new(AtomicUsize::new(0));
    let (log2, first2) = (log.clone(), first.clone());
    let spec = one_for_one().child(
        ChildSpec::new("slow", move |ctx: ChildCtx| {
            let (log, first, n) = (log2.clone(), first2.clone(), n.clone());
            async move {
                let args = ProbeArgs {
                    name: "slow".into(),
                    log,
                    start_delay: Duration::ZERO,
                    fail_start: false,
                };
                let (r, _) = Actor::spawn_linked(None, Probe, args, ctx.supervisor.clone()).await?;
                ctx.spawned(&r.get_cell());
                if n.fetch_add(1, Ordering::SeqCst) == 1 {
                    // The first restart: spawned, then stuck past the start timeout.
                    *first.lock() = Some(r.get_cell());
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                Ok(r.get_cell())
            }
        })
        .start_timeout(Duration::from_secs(1)),
    );
    let (root, handle) = spawn_root(&tree, spec).await.expect("starts");
    probe_at(&tree, "root/slow")
        .send_message(Cmd::Fail)
        .unwrap();
    ev.wait("the timed-out start", |e| {
        e.path == "root/slow"
            && matches!(
                e.kind,
                EventKind::Exited {
                    class: ExitClass::Timeout,
                    ..
                }
            )
    })
    .await;
    ev.started("root/slow", 3).await;
    let orphan = first.lock().clone().expect("the overrunning start spawned");
    assert_eq!(
        orphan.get_status(),
        ActorStatus::Stopped,
        "no second incarnation runs"
    );
    stop_root(root, handle).await;
}

// ---- child specs and flags --------------------------------------------------------------------

/// `child_specs` / `sup_flags`: specs OTP refuses are refused at start, naming the field.
#[tokio::test(start_paused = true)]
async fn child_specs() {
    let log = new_log();
    let cases: Vec<(SupervisorSpec, &str)> = vec![
        (
            one_for_one()
                .child(probe("x", &log))
                .child(probe("x", &log)),
            "duplicate child id `x`",
        ),
        (
            SupervisorSpec::new(Strategy::OneForOne, intensity(1, Duration::ZERO)),
            "intensity.period",
        ),
        (
            one_for_one().dynamic(probe("job", &log), 0),
            "dynamic.max_children",
        ),
        (
            one_for_one().dynamic(probe("", &log), 5),
            "dynamic.template.id",
        ),
        (
            one_for_one()
                .auto_shutdown(AutoShutdown::AnySignificant)
                .child(probe("p", &log).significant(true)),
            "permanent",
        ),
        (
            one_for_one().child(
                probe("t", &log)
                    .restart(Restart::Temporary)
                    .significant(true),
            ),
            "auto_shutdown is never",
        ),
    ];
    for (spec, words) in cases {
        let tree = Tree::new();
        match spawn_root(&tree, spec).await {
            Ok(_) => panic!("a spec with {words} was accepted"),
            Err(e) => assert!(format!("{e:?}").contains(words), "{words}: {e:?}"),
        }
    }
    assert!(
        entries(&log).is_empty(),
        "nothing started from a refused spec"
    );
}

// ---- significant children and auto_shutdown ----------------------------------------------------

/// A job supervisor `root/job` (transient, so its normal end is not restarted) with the
/// given auto_shutdown and children.
fn job(auto_shutdown: AutoShutdown, children: Vec<ChildSpec>) -> SupervisorSpec {
    let children = Arc::new(children);
    one_for_one().child(
        ChildSpec::supervisor("job", move |_| {
            children.iter().cloned().fold(
                one_for_one().auto_shutdown(auto_shutdown),
                SupervisorSpec::child,
            )
        })
        .restart(Restart::Transient),
    )
}

/// `significant_temporary`: a significant temporary child's end, whatever its reason, ends
/// its supervisor (`any_significant`), which stops its other children and exits `shutdown`.
#[tokio::test(start_paused = true)]
async fn significant_temporary() {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let log = new_log();
    let spec = job(
        AutoShutdown::AnySignificant,
        vec![
            probe("step", &log)
                .restart(Restart::Temporary)
                .significant(true),
            probe("helper", &log),
        ],
    );
    let (root, handle) = spawn_root(&tree, spec).await.expect("starts");
    probe_at(&tree, "root/job/step")
        .send_message(Cmd::Fail)
        .unwrap();
    let (class, reason) = ev.exited("root/job").await;
    assert_eq!(class, ExitClass::Shutdown, "{reason}");
    assert!(reason.contains("auto_shutdown"), "{reason}");
    settle(&root).await;
    assert_eq!(
        status(&tree, "root/job"),
        NodeStatus::Stopped,
        "transient: not restarted"
    );
    assert!(entries(&log).contains(&"stop:helper".to_string()));
    stop_root(root, handle).await;
}

/// `significant_transient`: a significant transient child that fails is restarted (the job
/// goes on); once it ends normally, the supervisor ends.
#[tokio::test(start_paused = true)]
async fn significant_transient() {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let log = new_log();
    let spec = job(
        AutoShutdown::AnySignificant,
        vec![
            probe("step", &log)
                .restart(Restart::Transient)
                .significant(true),
        ],
    );
    let (root, handle) = spawn_root(&tree, spec).await.expect("starts");
    probe_at(&tree, "root/job/step")
        .send_message(Cmd::Fail)
        .unwrap();
    ev.started("root/job/step", 2).await;
    assert_eq!(status(&tree, "root/job"), NodeStatus::Running);
    probe_at(&tree, "root/job/step")
        .send_message(Cmd::Stop(None))
        .unwrap();
    let (class, _) = ev.exited("root/job").await;
    assert_eq!(class, ExitClass::Shutdown);
    stop_root(root, handle).await;
}

/// `significant_bystander` and `nonsignificant_temporary`: under `all_significant`, one of
/// two significant children ending is not enough, and a non-significant child's end never
/// counts; the supervisor ends when the last significant child has.
#[tokio::test(start_paused = true)]
async fn significant_bystander() {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let log = new_log();
    let spec = job(
        AutoShutdown::AllSignificant,
        vec![
            probe("one", &log)
                .restart(Restart::Temporary)
                .significant(true),
            probe("two", &log)
                .restart(Restart::Temporary)
                .significant(true),
            probe("bystander", &log).restart(Restart::Temporary),
        ],
    );
    let (root, handle) = spawn_root(&tree, spec).await.expect("starts");
    for p in ["bystander", "one"] {
        probe_at(&tree, &format!("root/job/{p}"))
            .send_message(Cmd::Stop(None))
            .unwrap();
        ev.exited(&format!("root/job/{p}")).await;
        settle(&root).await;
        assert_eq!(status(&tree, "root/job"), NodeStatus::Running, "after {p}");
    }
    probe_at(&tree, "root/job/two")
        .send_message(Cmd::Stop(None))
        .unwrap();
    let (class, _) = ev.exited("root/job").await;
    assert_eq!(class, ExitClass::Shutdown);
    stop_root(root, handle).await;
}

/// The demonstration tree's `batch`: two significant steps of different lengths under
/// `all_significant`; the batch supervisor ends by itself once the second has finished, and
/// stays stopped (transient).
#[tokio::test(start_paused = true)]
async fn the_demo_batch_ends_with_its_last_significant_step() {
    use drover_actors::demo::{DemoConfig, demo_spec};
    use drover_actors::supervisor::config::SupervisionConfig;
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let config = DemoConfig {
        crash_every_ms: 0,
        job_every_ms: 0,
        job_ms: 1_000,
        ..DemoConfig::default()
    };
    let spec = one_for_one().child(ChildSpec::supervisor("demo", move |_| {
        demo_spec(&config, &SupervisionConfig::default())
    }));
    let (root, handle) = spawn_root(&tree, spec).await.expect("starts");
    let t0 = tree.now_ms();
    ev.exited("root/demo/batch/step-1").await;
    settle(&root).await;
    assert_eq!(status(&tree, "root/demo/batch"), NodeStatus::Running);
    let (class, reason) = ev.exited("root/demo/batch").await;
    assert_eq!(class, ExitClass::Shutdown, "{reason}");
    let took = tree.now_ms() - t0;
    assert!(
        (2_000..2_500).contains(&took),
        "ended with step-2, at {took} ms"
    );
    settle(&root).await;
    assert_eq!(status(&tree, "root/demo/batch"), NodeStatus::Stopped);
    assert_eq!(
        status(&tree, "root/demo/ticker"),
        NodeStatus::Running,
        "the rest goes on"
    );
    stop_root(root, handle).await;
}

/// `sup_stop_race` / `sup_stop_non_shutdown_exit_dynamic`: a child that exits on its own while
/// its supervisor is stopping has its exit recorded with its own class and reason (not lost,
/// not a `shutdown`), and a temporary one's spec is deleted.
#[tokio::test(start_paused = true)]
async fn sup_stop_race() {
    use drover_actors::supervisor::shutdown;
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let log = new_log();
    // Stopped in reverse order: `slow` first (its post_stop takes 1 s), then `keeper`, then
    // `racer`, which fails on its own 500 ms into the stop.
    struct SlowStop;
    impl Actor for SlowStop {
        type Msg = ();
        type State = ();
        type Arguments = ();
        async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
        async fn post_stop(&self, _: ActorRef<()>, _: &mut ()) -> Result<(), ActorProcessingErr> {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(())
        }
    }
    let spec = one_for_one()
        .child(probe("racer", &log).restart(Restart::Temporary))
        .child(probe("keeper", &log))
        .child(
            ChildSpec::worker("slow", |_| (SlowStop, ()))
                .shutdown(Shutdown::Timeout(Duration::from_secs(5))),
        );
    let (root, handle) = spawn_root(&tree, spec).await.expect("starts");
    probe_at(&tree, "root/racer").send_after(Duration::from_millis(500), || Cmd::Fail);
    shutdown(&root).await.expect("stops");
    join(handle, "root after shutdown").await;
    let events = ev.drain();
    let racer: Vec<_> = events
        .iter()
        .filter(|e| e.path == "root/racer")
        .filter_map(|e| match &e.kind {
            EventKind::Exited { class, reason } => Some((*class, reason.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        racer,
        [(ExitClass::Abnormal, "racer fails on purpose".to_string())],
        "{}",
        ev.recent()
    );
    assert!(
        tree.snapshot().find("root/racer").is_none(),
        "temporary: spec deleted"
    );
    assert_eq!(
        last_exit(&node(&tree, "root/keeper")).class,
        ExitClass::Shutdown
    );
}

/// `significant_simple`: a significant dynamic (temporary) child's end ends its supervisor
/// under `any_significant`, as a static one does.
#[tokio::test(start_paused = true)]
async fn significant_simple() {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let log = new_log();
    let template = probe("step", &log)
        .restart(Restart::Temporary)
        .significant(true);
    let spec = one_for_one().child(
        ChildSpec::supervisor("job", move |_| {
            one_for_one()
                .auto_shutdown(AutoShutdown::AnySignificant)
                .dynamic(template.clone(), 4)
        })
        .restart(Restart::Transient),
    );
    let (root, handle) = spawn_root(&tree, spec).await.expect("starts");
    let job: ActorRef<SupervisorMessage> = tree.handle("root/job").actor_ref().expect("job");
    let a = start_child(&job, ()).await.expect("a");
    let _b = start_child(&job, ()).await.expect("b");
    settle(&job).await;
    assert_eq!(status(&tree, "root/job"), NodeStatus::Running);
    a.cell.send_message(Cmd::Stop(None)).expect("a is a probe");
    let (class, reason) = ev.exited("root/job").await;
    assert_eq!(class, ExitClass::Shutdown, "{reason}");
    // The other instance (`step-2`) was stopped with its supervisor.
    assert!(
        entries(&log).contains(&"stop:step-2".to_string()),
        "{:?}",
        entries(&log)
    );
    stop_root(root, handle).await;
}

/// `count_restarting_children`: a child waiting out its restart counts as a spec, not as
/// active; once back it is active again.
#[tokio::test(start_paused = true)]
async fn count_restarting_children() {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let log = new_log();
    let slow = Backoff {
        min_ms: 1_000,
        max_ms: 1_000,
        jitter: 0.0,
        ..Backoff::default()
    };
    let spec = one_for_one()
        .child(probe("a", &log).backoff(slow))
        .child(probe("b", &log));
    let (root, handle) = spawn_root(&tree, spec).await.expect("starts");
    probe_at(&tree, "root/a").send_message(Cmd::Fail).unwrap();
    ev.exited("root/a").await;
    settle(&root).await;
    let c = count_children(&root).await.unwrap();
    assert_eq!((c.specs, c.active, c.workers), (2, 1, 2), "{c:?}");
    ev.started("root/a", 2).await;
    let c = count_children(&root).await.unwrap();
    assert_eq!((c.specs, c.active), (2, 2), "{c:?}");
    stop_root(root, handle).await;
}

/// `sup_stop_brutal_kill_dynamic`: dynamic children with `brutal_kill` are killed at the
/// supervisor's stop, each recorded `killed`, none running its `post_stop`.
#[tokio::test(start_paused = true)]
async fn sup_stop_brutal_kill_dynamic() {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let log = new_log();
    let template = probe("job", &log)
        .restart(Restart::Temporary)
        .shutdown(Shutdown::BrutalKill);
    let (root, handle) = spawn_root(&tree, one_for_one().dynamic(template, 10))
        .await
        .expect("starts");
    for _ in 0..3 {
        start_child(&root, ()).await.expect("started");
    }
    stop_root(root, handle).await;
    let killed = ev
        .drain()
        .into_iter()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::Exited {
                    class: ExitClass::Killed,
                    ..
                }
            )
        })
        .count();
    assert_eq!(killed, 3, "{}", ev.recent());
    assert!(
        !entries(&log).iter().any(|e| e.starts_with("stop:")),
        "{:?}",
        entries(&log)
    );
}

/// `simple_one_for_one_escalation`: dynamic children crashing past the intensity make their
/// supervisor give up, as static ones do.
#[tokio::test(start_paused = true)]
async fn simple_one_for_one_escalation() {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let log = new_log();
    let spec = SupervisorSpec::new(Strategy::OneForOne, intensity(1, Duration::from_secs(60)))
        .dynamic(probe("job", &log), 10);
    let (root, handle) = spawn_root(&tree, spec).await.expect("starts");
    let child = start_child(&root, ()).await.expect("started");
    let path = child.path.clone();
    probe_at(&tree, &path).send_message(Cmd::Fail).unwrap();
    ev.started(&path, 2).await;
    probe_at(&tree, &path).send_message(Cmd::Fail).unwrap();
    let reason = ev.gave_up("root").await;
    assert!(reason.contains("restart intensity exceeded"), "{reason}");
    join(handle, "root after giving up").await;
}

/// `hanging_restart_loop_simple`: a dynamic child whose restarts keep failing does not hang
/// its supervisor, which answers meanwhile and gives up past its intensity.
#[tokio::test(start_paused = true)]
async fn hanging_restart_loop_simple() {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let log = new_log();
    let backoff = Backoff {
        min_ms: 100,
        max_ms: 100,
        jitter: 0.0,
        ..Backoff::default()
    };
    let template = failing_on("job", &log, &[2, 3, 4, 5, 6, 7, 8]).backoff(backoff);
    let spec = SupervisorSpec::new(Strategy::OneForOne, intensity(3, Duration::from_secs(60)))
        .dynamic(template, 10);
    let (root, handle) = spawn_root(&tree, spec).await.expect("starts");
    let child = start_child(&root, ()).await.expect("started");
    probe_at(&tree, &child.path)
        .send_message(Cmd::Fail)
        .unwrap();
    let path = child.path.to_string();
    ev.wait("the first failed restart", |e| {
        e.path == path
            && matches!(
                e.kind,
                EventKind::Exited {
                    class: ExitClass::StartFailed,
                    ..
                }
            )
    })
    .await;
    assert_eq!(count_children(&root).await.expect("answers").dynamic, 1);
    let reason = ev.gave_up("root").await;
    assert!(reason.contains("restart intensity exceeded"), "{reason}");
    join(handle, "root after giving up").await;
}

/// `significant_escalation`: a supervisor that ends by auto_shutdown is itself a significant
/// child of a supervisor with auto_shutdown: that one ends too.
#[tokio::test(start_paused = true)]
async fn significant_escalation() {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let log = new_log();
    let step = probe("step", &log)
        .restart(Restart::Temporary)
        .significant(true);
    let inner = ChildSpec::supervisor("inner", move |_| {
        one_for_one()
            .auto_shutdown(AutoShutdown::AnySignificant)
            .child(step.clone())
    })
    .restart(Restart::Transient)
    .significant(true);
    let spec = one_for_one().child(
        ChildSpec::supervisor("outer", move |_| {
            one_for_one()
                .auto_shutdown(AutoShutdown::AnySignificant)
                .child(inner.clone())
        })
        .restart(Restart::Transient),
    );
    let (root, handle) = spawn_root(&tree, spec).await.expect("starts");
    probe_at(&tree, "root/outer/inner/step")
        .send_message(Cmd::Stop(None))
        .unwrap();
    let (class, _) = ev.exited("root/outer/inner").await;
    assert_eq!(class, ExitClass::Shutdown);
    let (class, reason) = ev.exited("root/outer").await;
    assert_eq!(class, ExitClass::Shutdown, "{reason}");
    settle(&root).await;
    assert_eq!(status(&tree, "root/outer"), NodeStatus::Stopped);
    stop_root(root, handle).await;
}
