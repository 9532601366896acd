//! Life-cycle tests of the OTP-style supervisor: ordered start and stop, boot rollback, restart
//! types against exit classes, strategies, restart intensity and escalation, and failed restarts
//! under backoff.
//!
//! Every test runs on tokio's paused clock. Nothing sleeps to synchronise: tests wait on the
//! tree's event stream (subscribed before the trigger), on RPC replies, on join handles, or on
//! `tokio::time::advance`. Every wait is bounded (event count and a virtual-time timeout), so a
//! missing event fails the test with the events seen so far instead of hanging it.

mod sup;

use sup::*;

// ------------------------------------------------------------------------------------------
// 1. Ordered start, reverse-order stop
// ------------------------------------------------------------------------------------------

/// A start function that records when it begins and when it returned around a [`Probe`] whose
/// `pre_start` takes `delay`.
fn traced_probe(id: &str, log: &Log, delay: Duration) -> ChildSpec {
    let log = log.clone();
    ChildSpec::new(id, move |ctx: ChildCtx| {
        let log = log.clone();
        async move {
            let name = last_segment(&ctx.path);
            log.lock().push(format!("begin:{name}"));
            let args = ProbeArgs {
                name: name.clone(),
                log: log.clone(),
                start_delay: delay,
                fail_start: false,
            };
            let (r, _) = Actor::spawn_linked(None, Probe, args, ctx.supervisor.clone()).await?;
            log.lock().push(format!("end:{name}"));
            Ok(r.get_cell())
        }
    })
}

#[tokio::test(start_paused = true)]
async fn children_start_in_spec_order_and_stop_in_reverse() {
    let tree = Tree::new();
    let mut ev = Events::new(&tree);
    let log = new_log();
    // Decreasing start delays: started concurrently, they would finish in reverse order.
    let spec = SupervisorSpec::new(Strategy::OneForOne, generous())
        .child(traced_probe("a", &log, Duration::from_millis(30)))
        .child(traced_probe("b", &log, Duration::from_millis(20)))
        .child(traced_probe("c", &log, Duration::from_millis(10)));
    let (root, handle) = spawn_root(&tree, spec).await.expect("root starts");

    assert_eq!(
        entries(&log),
        strs(&[
            "begin:a", "start:a", "end:a", "begin:b", "start:b", "end:b", "begin:c", "start:c",
            "end:c",
        ]),
        "each child must start after the previous start returned, in spec order"
    );
    let started: Vec<String> = ev
        .drain()
        .into_iter()
        .filter(|e| e.kind == EventKind::Started)
        .map(|e| e.path)
        .collect();
    assert_eq!(started, strs(&["root/a", "root/b", "root/c", "root"]));
    assert_eq!(
        child_paths(&tree, "root"),
        strs(&["root/a", "root/b", "root/c"])
    );

    let before_stop = entries(&log).len();
    stop_root(root, handle).await;
    assert_eq!(
        entries_since(&log, before_stop),
        strs(&["stop:c", "stop:b", "stop:a"]),
        "children must stop in reverse start order, each with its post_stop"
    );
    let exits: Vec<String> = ev
        .drain()
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::Exited {
                class: ExitClass::Shutdown,
                ..
            } => Some(e.path),
            _ => None,
        })
        .collect();
    assert_eq!(exits, strs(&["root/c", "root/b", "root/a"]));
    for p in ["root/a", "root/b", "root/c"] {
        let n = node(&tree, p);
        assert_eq!(n.status, NodeStatus::Stopped, "{p}");
        assert_eq!(last_exit(&n).class, ExitClass::Shutdown, "{p}");
    }
    assert_eq!(node(&tree, "root").status, NodeStatus::Stopped);
}

// ------------------------------------------------------------------------------------------
// 2. Boot failure rollback
// ------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn boot_failure_rolls_back_started_children_in_reverse() {
    let tree = Tree::new();
    let log = new_log();
    let spec = SupervisorSpec::new(Strategy::OneForOne, generous())
        .child(probe("first", &log))
        .child(probe("second", &log))
        .child(probe_with("third", &log, Duration::ZERO, true))
        .child(probe("fourth", &log));
    let err = match spawn_root(&tree, spec).await {
        Ok(_) => panic!("a supervisor whose third child cannot start must not start"),
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(
        text.contains("`third` failed to start"),
        "the error must name the child: {text}"
    );
    assert!(
        text.contains("third refuses to start"),
        "the error must carry the child's reason: {text}"
    );
    assert_eq!(
        entries(&log),
        strs(&[
            "start:first",
            "start:second",
            "start:third",
            "stop:second",
            "stop:first",
        ]),
        "the started children must be stopped in reverse order and the fourth never started"
    );

    let third = node(&tree, "root/third");
    assert_eq!(last_exit(&third).class, ExitClass::StartFailed);
    assert_eq!(third.status, NodeStatus::Stopped);
    for p in ["root/first", "root/second"] {
        let n = node(&tree, p);
        assert_eq!(n.status, NodeStatus::Stopped, "{p}");
        assert_eq!(last_exit(&n).class, ExitClass::Shutdown, "{p}");
        assert!(last_exit(&n).reason.contains("boot rolled back"), "{p}");
    }
    let fourth = node(&tree, "root/fourth");
    assert_eq!(
        fourth.generation, 0,
        "the fourth child must never have started"
    );
    assert!(fourth.last_exits.is_empty());
    assert_eq!(node(&tree, "root").status, NodeStatus::Stopped);
}

// ------------------------------------------------------------------------------------------
// 3. Restart types against exit classes
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum ExitHow {
    /// `myself.stop(None)`.
    Normal,
    /// `myself.stop(Some("oops"))`.
    StopOops,
    /// `myself.stop(Some("shutdown"))`.
    StopShutdown,
    Panic,
    ErrFromHandler,
    /// `cell.kill()` from outside.
    Kill,
}

#[tokio::test(start_paused = true)]
async fn restart_types_against_exit_classes() {
    use ExitHow::*;
    use Restart::*;
    // (restart type, how it exits, recorded class, restarted?)
    let table: &[(Restart, ExitHow, ExitClass, bool)] = &[
        (Permanent, Normal, ExitClass::Normal, true),
        (Permanent, StopOops, ExitClass::Abnormal, true),
        (Permanent, StopShutdown, ExitClass::Shutdown, true),
        (Permanent, Panic, ExitClass::Abnormal, true),
        (Permanent, ErrFromHandler, ExitClass::Abnormal, true),
        (Permanent, Kill, ExitClass::Killed, true),
        (Transient, Normal, ExitClass::Normal, false),
        (Transient, StopOops, ExitClass::Abnormal, true),
        (Transient, StopShutdown, ExitClass::Shutdown, false),
        (Transient, Panic, ExitClass::Abnormal, true),
        (Transient, ErrFromHandler, ExitClass::Abnormal, true),
        (Transient, Kill, ExitClass::Killed, true),
        (Temporary, Normal, ExitClass::Normal, false),
        (Temporary, StopOops, ExitClass::Abnormal, false),
        (Temporary, StopShutdown, ExitClass::Shutdown, false),
        (Temporary, Panic, ExitClass::Abnormal, false),
        (Temporary, ErrFromHandler, ExitClass::Abnormal, false),
        (Temporary, Kill, ExitClass::Killed, false),
    ];
    for &(restart, how, class, restarted) in table {
        let case = format!("{restart:?} child, exit by {how:?}");
        let tree = Tree::new();
        let log = new_log();
        let spec = SupervisorSpec::new(Strategy::OneForOne, generous())
            .child(probe("c", &log).restart(restart))
            .child(probe("sibling", &log));
        let (root, handle) = spawn_root(&tree, spec).await.expect("root starts");
        let mut ev = Events::new(&tree);
        let sibling = id_at(&tree, "root/sibling");

        let target = probe_at(&tree, "root/c");
        match how {
            Normal => target.send_message(Cmd::Stop(None)).unwrap(),
            StopOops => target.send_message(Cmd::Stop(Some("oops".into()))).unwrap(),
            StopShutdown => target
                .send_message(Cmd::Stop(Some("shutdown".into())))
                .unwrap(),
            Panic => target.send_message(Cmd::Panic).unwrap(),
            ErrFromHandler => target.send_message(Cmd::Fail).unwrap(),
            Kill => target.get_cell().kill(),
        }

        let (got, reason) = ev.exited("root/c").await;
        assert_eq!(got, class, "{case}: exit class (reason {reason:?})");
        match how {
            StopOops => assert_eq!(reason, "oops", "{case}"),
            Kill => assert_eq!(reason, "killed", "{case}"),
            Panic => assert!(reason.contains("panics on purpose"), "{case}: {reason}"),
            ErrFromHandler => assert!(reason.contains("fails on purpose"), "{case}: {reason}"),
            _ => {}
        }
        // After the exit: either a new incarnation starts, or the child is marked stopped.
        let next = ev
            .wait(&format!("{case}: Started or Stopped for root/c"), |e| {
                e.path == "root/c" && matches!(e.kind, EventKind::Started | EventKind::Stopped)
            })
            .await;
        settle(&root).await;
        let later: Vec<TreeEvent> = ev
            .drain()
            .into_iter()
            .filter(|e| e.path == "root/c")
            .collect();
        assert!(later.is_empty(), "{case}: unexpected events {later:?}");

        if restarted {
            assert_eq!(next.kind, EventKind::Started, "{case}: must be restarted");
            assert_eq!(next.generation, 2, "{case}");
            let n = node(&tree, "root/c");
            assert_eq!(n.status, NodeStatus::Running, "{case}");
            assert_eq!(n.restarts, 1, "{case}");
            assert_eq!(last_exit(&n).class, class, "{case}");
            assert_eq!(last_exit(&n).generation, 1, "{case}");
            assert_ne!(id_at(&tree, "root/c"), target.get_id(), "{case}");
        } else {
            assert_eq!(
                next.kind,
                EventKind::Stopped,
                "{case}: must not be restarted"
            );
            assert_eq!(next.generation, 1, "{case}");
            let kids = which_children(&root).await.unwrap();
            if restart == Temporary {
                assert!(
                    tree.snapshot().find("root/c").is_none(),
                    "{case}: a temporary child's spec must be removed"
                );
                assert!(
                    kids.iter().all(|k| k.id != "c"),
                    "{case}: which_children still lists the temporary child"
                );
                assert_eq!(count_children(&root).await.unwrap().specs, 1, "{case}");
            } else {
                let n = node(&tree, "root/c");
                assert_eq!(n.status, NodeStatus::Stopped, "{case}");
                assert_eq!(n.generation, 1, "{case}");
                assert_eq!(last_exit(&n).class, class, "{case}");
                assert_eq!(tree.lookup("root/c").unwrap_err(), LookupError::Stopped);
                let c = kids.iter().find(|k| k.id == "c").expect("listed");
                assert_eq!(c.status, NodeStatus::Stopped, "{case}");
            }
        }
        assert_eq!(
            id_at(&tree, "root/sibling"),
            sibling,
            "{case}: sibling untouched"
        );
        stop_root(root, handle).await;
    }
}

// ------------------------------------------------------------------------------------------
// 4. Strategies
// ------------------------------------------------------------------------------------------

fn three_probes(strategy: Strategy, log: &Log) -> SupervisorSpec {
    SupervisorSpec::new(strategy, generous())
        .child(probe("a", log))
        .child(probe("b", log))
        .child(probe("c", log))
}

#[tokio::test(start_paused = true)]
async fn one_for_one_restarts_only_the_failed_child() {
    let tree = Tree::new();
    let log = new_log();
    let (root, handle) = spawn_root(&tree, three_probes(Strategy::OneForOne, &log))
        .await
        .unwrap();
    let mut ev = Events::new(&tree);
    let (a, b, c) = (
        id_at(&tree, "root/a"),
        id_at(&tree, "root/b"),
        id_at(&tree, "root/c"),
    );
    let mark = entries(&log).len();

    probe_at(&tree, "root/b").send_message(Cmd::Panic).unwrap();
    ev.started("root/b", 2).await;
    settle(&root).await;

    assert_eq!(entries_since(&log, mark), strs(&["start:b"]));
    assert_eq!(id_at(&tree, "root/a"), a);
    assert_eq!(id_at(&tree, "root/c"), c);
    assert_ne!(id_at(&tree, "root/b"), b);
    let s = tree.snapshot();
    for (p, g) in [("root/a", 1), ("root/b", 2), ("root/c", 1)] {
        assert_eq!(s.find(p).unwrap().generation, g, "{p}");
    }
    assert!(
        !ev.seen
            .iter()
            .any(|e| e.kind == EventKind::StoppedForRestart),
        "one_for_one must not stop siblings"
    );
    stop_root(root, handle).await;
}

#[tokio::test(start_paused = true)]
async fn one_for_all_restarts_everyone_in_order_and_drops_temporary_bystander() {
    let tree = Tree::new();
    let log = new_log();
    let spec = SupervisorSpec::new(Strategy::OneForAll, generous())
        .child(probe("a", &log))
        .child(probe("b", &log))
        .child(probe("t", &log).restart(Restart::Temporary))
        .child(probe("c", &log));
    let (root, handle) = spawn_root(&tree, spec).await.unwrap();
    let mut ev = Events::new(&tree);
    let before: Vec<ActorId> = ["root/a", "root/b", "root/c"]
        .iter()
        .map(|p| id_at(&tree, p))
        .collect();
    let mark = entries(&log).len();

    probe_at(&tree, "root/b").send_message(Cmd::Panic).unwrap();
    ev.started("root/c", 2).await;
    settle(&root).await;

    assert_eq!(
        entries_since(&log, mark),
        strs(&[
            "stop:c", "stop:t", "stop:a", // siblings stopped in reverse order
            "start:a", "start:b", "start:c", // then everyone restarted in start order
        ]),
        "the temporary bystander must be stopped and not restarted"
    );
    let stopped: Vec<&str> = ev
        .seen
        .iter()
        .filter(|e| e.kind == EventKind::StoppedForRestart)
        .map(|e| e.path.as_str())
        .collect();
    assert_eq!(stopped, vec!["root/c", "root/t", "root/a"]);
    let started: Vec<&str> = ev
        .seen
        .iter()
        .filter(|e| e.kind == EventKind::Started)
        .map(|e| e.path.as_str())
        .collect();
    assert_eq!(started, vec!["root/a", "root/b", "root/c"]);

    for (p, old) in ["root/a", "root/b", "root/c"].iter().zip(&before) {
        assert_ne!(&id_at(&tree, p), old, "{p} must be a new incarnation");
        assert_eq!(node(&tree, p).generation, 2, "{p}");
    }
    assert_eq!(
        last_exit(&node(&tree, "root/a")).class,
        ExitClass::Shutdown,
        "a sibling stopped for the restart exits with shutdown"
    );
    assert_eq!(last_exit(&node(&tree, "root/b")).class, ExitClass::Abnormal);
    assert_eq!(
        child_paths(&tree, "root"),
        strs(&["root/a", "root/b", "root/c"]),
        "the temporary bystander must be removed from the snapshot"
    );
    let ids: Vec<String> = which_children(&root)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, strs(&["a", "b", "c"]));
    stop_root(root, handle).await;
}

#[tokio::test(start_paused = true)]
async fn rest_for_one_restarts_the_failed_child_and_later_ones() {
    let tree = Tree::new();
    let log = new_log();
    let spec = three_probes(Strategy::RestForOne, &log).child(probe("d", &log));
    let (root, handle) = spawn_root(&tree, spec).await.unwrap();
    let mut ev = Events::new(&tree);
    let ids: Vec<ActorId> = ["root/a", "root/b", "root/c", "root/d"]
        .iter()
        .map(|p| id_at(&tree, p))
        .collect();
    let mark = entries(&log).len();

    probe_at(&tree, "root/b").send_message(Cmd::Fail).unwrap();
    ev.started("root/d", 2).await;
    settle(&root).await;

    assert_eq!(
        entries_since(&log, mark),
        strs(&["stop:d", "stop:c", "start:b", "start:c", "start:d"])
    );
    assert_eq!(
        id_at(&tree, "root/a"),
        ids[0],
        "an earlier sibling keeps its actor"
    );
    for (p, old) in ["root/b", "root/c", "root/d"].iter().zip(&ids[1..]) {
        assert_ne!(&id_at(&tree, p), old, "{p} must be a new incarnation");
    }
    let s = tree.snapshot();
    for (p, g) in [("root/a", 1), ("root/b", 2), ("root/c", 2), ("root/d", 2)] {
        assert_eq!(s.find(p).unwrap().generation, g, "{p}");
        assert_eq!(s.find(p).unwrap().status, NodeStatus::Running, "{p}");
    }
    let stopped: Vec<&str> = ev
        .seen
        .iter()
        .filter(|e| e.kind == EventKind::StoppedForRestart)
        .map(|e| e.path.as_str())
        .collect();
    assert_eq!(stopped, vec!["root/d", "root/c"]);
    stop_root(root, handle).await;
}

// ------------------------------------------------------------------------------------------
// 5. Intensity and escalation
// ------------------------------------------------------------------------------------------

/// root (one_for_one, generous) -> mid (one_for_one, 2 restarts in 10 s) -> s1, s2 + dynamic w-N.
fn two_level(log: &Log) -> SupervisorSpec {
    let mid_log = log.clone();
    let mid = ChildSpec::supervisor("mid", move |_| {
        SupervisorSpec::new(Strategy::OneForOne, intensity(2, Duration::from_secs(10)))
            .child(probe("s1", &mid_log))
            .child(probe("s2", &mid_log))
            .dynamic(probe("w", &mid_log), 8)
    });
    SupervisorSpec::new(Strategy::OneForOne, generous()).child(mid)
}

fn mid_ref(tree: &Tree) -> ActorRef<SupervisorMessage> {
    tree.handle("root/mid")
        .actor_ref::<SupervisorMessage>()
        .expect("mid is running")
}

#[tokio::test(start_paused = true)]
async fn intensity_exceeded_escalates_and_parent_restarts_fresh_subtree() {
    let tree = Tree::new();
    let log = new_log();
    let (root, handle) = spawn_root(&tree, two_level(&log)).await.unwrap();
    let mut ev = Events::new(&tree);
    let mid = mid_ref(&tree);
    for expected in ["w-1", "w-2"] {
        let c = start_child(&mid, ()).await.expect("dynamic child starts");
        assert_eq!(c.id(), expected);
    }
    assert_eq!(count_children(&mid).await.unwrap().dynamic, 2);
    assert_eq!(
        child_paths(&tree, "root/mid"),
        strs(&["root/mid/s1", "root/mid/s2", "root/mid/w-1", "root/mid/w-2"])
    );

    // Two crashes: within intensity, restarted in place.
    for generation in 2..=3 {
        probe_at(&tree, "root/mid/s1")
            .send_message(Cmd::Panic)
            .unwrap();
        ev.started("root/mid/s1", generation).await;
    }
    let info = node(&tree, "root/mid").supervisor.unwrap();
    assert_eq!(info.window_used, 2);
    assert_eq!(info.gave_up, None);
    assert_eq!(node(&tree, "root/mid").generation, 1);

    // Third crash within the window: mid gives up, root restarts it.
    let mark = entries(&log).len();
    probe_at(&tree, "root/mid/s1")
        .send_message(Cmd::Panic)
        .unwrap();
    let reason = ev.gave_up("root/mid").await;
    assert!(reason.contains("intensity"), "{reason}");
    let (class, exit_reason) = ev.exited("root/mid").await;
    assert_eq!(class, ExitClass::Abnormal);
    assert!(exit_reason.contains("gave up"), "{exit_reason}");
    ev.started("root/mid", 2).await;

    // mid stopped its children (dynamic ones in parallel, then statics in reverse; s1 was
    // already dead), and its new incarnation started only the static ones.
    let after = entries_since(&log, mark);
    assert_eq!(after.len(), 5, "{after:?}");
    let mut stopped_dyn = after[..2].to_vec();
    stopped_dyn.sort();
    assert_eq!(stopped_dyn, strs(&["stop:w-1", "stop:w-2"]), "{after:?}");
    assert_eq!(
        after[2..].to_vec(),
        strs(&["stop:s2", "start:s1", "start:s2"])
    );
    assert_eq!(mid.get_status(), ActorStatus::Stopped, "old mid is gone");

    let new_mid = mid_ref(&tree);
    assert_ne!(new_mid.get_id(), mid.get_id());
    let kids = which_children(&new_mid).await.unwrap();
    let listed: Vec<(String, bool, u64, NodeStatus)> = kids
        .iter()
        .map(|k| (k.id.clone(), k.dynamic, k.generation, k.status))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("s1".to_string(), false, 1, NodeStatus::Running),
            ("s2".to_string(), false, 1, NodeStatus::Running),
        ]
    );
    assert_eq!(
        count_children(&new_mid).await.unwrap(),
        ChildCounts {
            specs: 2,
            active: 2,
            dynamic: 0,
            supervisors: 0,
            workers: 2,
        }
    );
    let m = node(&tree, "root/mid");
    assert_eq!(m.generation, 2);
    assert_eq!(m.status, NodeStatus::Running);
    assert_eq!(last_exit(&m).class, ExitClass::Abnormal);
    assert_eq!(
        m.children
            .iter()
            .map(|c| c.path.as_str())
            .collect::<Vec<_>>(),
        vec!["root/mid/s1", "root/mid/s2"],
        "the previous dynamic children must be gone"
    );
    for c in &m.children {
        assert_eq!(c.generation, 1, "{}: a fresh subtree", c.path);
        assert!(c.last_exits.is_empty(), "{}", c.path);
    }
    let info = m.supervisor.unwrap();
    assert_eq!((info.window_used, info.dynamic_children), (0, 0));
    assert_eq!(info.gave_up, None);
    let root_info = node(&tree, "root").supervisor.unwrap();
    assert_eq!(root_info.window_used, 1);
    assert_eq!(tree.gave_up(), None, "the root did not give up");

    // The new generation is usable: dynamic ids continue from 1 in the new incarnation.
    let c = start_child(&new_mid, ()).await.unwrap();
    assert_eq!(&*c.path, "root/mid/w-1");
    stop_root(root, handle).await;
}

#[tokio::test(start_paused = true)]
async fn crashes_spread_wider_than_the_window_do_not_give_up() {
    let tree = Tree::new();
    let log = new_log();
    let (root, handle) = spawn_root(&tree, two_level(&log)).await.unwrap();
    let mut ev = Events::new(&tree);
    let mid = mid_ref(&tree);

    // Crashes at t = 0, 6, 12, 18, 24 s: never more than 2 within any 10 s.
    for generation in 2..=6u64 {
        if generation > 2 {
            tokio::time::advance(Duration::from_secs(6)).await;
        }
        probe_at(&tree, "root/mid/s1")
            .send_message(Cmd::Panic)
            .unwrap();
        ev.started("root/mid/s1", generation).await;
        let info = node(&tree, "root/mid").supervisor.unwrap();
        let expected_window = if generation == 2 { 1 } else { 2 };
        assert_eq!(
            info.window_used,
            expected_window,
            "after crash {}",
            generation - 1
        );
    }
    settle(&mid).await;
    assert!(
        !ev.seen
            .iter()
            .any(|e| matches!(e.kind, EventKind::GaveUp { .. })),
        "mid must not give up"
    );
    assert_eq!(mid.get_status(), ActorStatus::Running);
    assert_eq!(node(&tree, "root/mid").generation, 1);
    assert_eq!(node(&tree, "root/mid/s1").restarts, 5);

    // The same supervisor does give up when crashes bunch up: the window holds the crashes
    // at t = 18 s and 24 s, so one more right now makes three within 10 s.
    probe_at(&tree, "root/mid/s1")
        .send_message(Cmd::Panic)
        .unwrap();
    let reason = ev.gave_up("root/mid").await;
    assert!(reason.contains("3 restarts within 10000 ms"), "{reason}");
    ev.started("root/mid", 2).await;
    stop_root(root, handle).await;
}

// ------------------------------------------------------------------------------------------
// 6. Zero intensity
// ------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn zero_intensity_root_gives_up_on_first_crash() {
    let tree = Tree::new();
    let log = new_log();
    let spec = SupervisorSpec::new(Strategy::OneForOne, intensity(0, Duration::from_secs(5)))
        .child(probe("a", &log))
        .child(probe("b", &log))
        .dynamic(probe("w", &log), 4);
    let (root, handle) = spawn_root(&tree, spec).await.unwrap();
    start_child(&root, ()).await.expect("dynamic child starts");
    let mut ev = Events::new(&tree);
    assert_eq!(tree.gave_up(), None);
    let mark = entries(&log).len();

    probe_at(&tree, "root/a").send_message(Cmd::Panic).unwrap();
    join(handle, "root supervisor after giving up").await;

    let outcome = tree.gave_up().expect("the root gave up");
    assert!(outcome.contains("intensity"), "{outcome}");
    let reason = ev.gave_up("root").await;
    assert_eq!(reason, outcome);
    assert_eq!(root.get_status(), ActorStatus::Stopped);
    assert_eq!(
        entries_since(&log, mark),
        strs(&["stop:w-1", "stop:b"]),
        "its other children are stopped, dynamic first, then statics in reverse"
    );
    assert!(
        !ev.seen.iter().any(|e| e.kind == EventKind::Started),
        "nothing may be restarted"
    );

    let r = node(&tree, "root");
    assert_eq!(r.status, NodeStatus::Stopped);
    assert_eq!(
        r.supervisor.as_ref().unwrap().gave_up.as_deref(),
        Some(outcome.as_str())
    );
    assert_eq!(r.supervisor.as_ref().unwrap().dynamic_children, 0);
    assert_eq!(last_exit(&node(&tree, "root/a")).class, ExitClass::Abnormal);
    assert_eq!(last_exit(&node(&tree, "root/b")).class, ExitClass::Shutdown);
    assert_eq!(
        child_paths(&tree, "root"),
        strs(&["root/a", "root/b"]),
        "dynamic children are removed when the supervisor stops"
    );
    for p in ["root/a", "root/b"] {
        assert_eq!(node(&tree, p).status, NodeStatus::Stopped, "{p}");
    }
}

// ------------------------------------------------------------------------------------------
// 7. Failed restarts under backoff
// ------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn failed_restarts_are_counted_and_retried_while_supervisor_stays_responsive() {
    const FAILURES: usize = 3;
    let tree = Tree::new();
    let log = new_log();
    let calls = Arc::new(AtomicUsize::new(0));
    let (began_tx, mut began_rx) = mpsc::unbounded_channel::<usize>();
    let flaky = {
        let (calls, log) = (calls.clone(), log.clone());
        ChildSpec::new("flaky", move |ctx: ChildCtx| {
            let (calls, log, began) = (calls.clone(), log.clone(), began_tx.clone());
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                let _ = began.send(n);
                if (2..2 + FAILURES).contains(&n) {
                    // A slow failing attempt: the supervisor must not wait for it.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    return Err(format!("attempt {n} failed").into());
                }
                let args = ProbeArgs {
                    name: "flaky".into(),
                    log,
                    start_delay: Duration::ZERO,
                    fail_start: false,
                };
                let (r, _) = Actor::spawn_linked(None, Probe, args, ctx.supervisor.clone()).await?;
                Ok(r.get_cell())
            }
        })
        .backoff(Backoff {
            min_ms: 1_000,
            max_ms: 60_000,
            multiplier: 2.0,
            jitter: 0.0,
            reset_after_ms: 0,
            max_retries: None,
        })
    };
    let spec = SupervisorSpec::new(Strategy::OneForOne, intensity(10, Duration::from_secs(60)))
        .child(probe("steady", &log))
        .child(flaky);
    let (root, handle) = spawn_root(&tree, spec).await.unwrap();
    assert_eq!(began_rx.recv().await, Some(1));
    let mut ev = Events::new(&tree);

    /// Queries must be answered without the clock moving (the supervisor is not blocked on a
    /// backoff or a start attempt): a 1 ms virtual-time budget.
    async fn promptly<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
        let t0 = tokio::time::Instant::now();
        let out = tokio::time::timeout(Duration::from_millis(1), f)
            .await
            .unwrap_or_else(|_| panic!("{what}: the supervisor did not answer promptly"));
        assert_eq!(tokio::time::Instant::now(), t0, "{what}: time passed");
        out
    }

    probe_at(&tree, "root/flaky")
        .send_message(Cmd::Panic)
        .unwrap();
    let (class, _) = ev.exited("root/flaky").await;
    assert_eq!(class, ExitClass::Abnormal);

    let mut expected_delay = 1_000u64;
    for attempt in 0..FAILURES {
        let generation = 2 + attempt as u64;
        // Backing off before this attempt.
        let e = ev
            .wait("BackingOff root/flaky", |e| {
                e.path == "root/flaky" && matches!(e.kind, EventKind::BackingOff { .. })
            })
            .await;
        assert_eq!(
            e.kind,
            EventKind::BackingOff {
                delay_ms: expected_delay
            }
        );
        let n = node(&tree, "root/flaky");
        assert_eq!(n.status, NodeStatus::BackingOff);
        assert_eq!(n.next_restart_at_ms, Some(e.at_ms + expected_delay));
        assert_eq!(n.next_restart_in_ms, Some(expected_delay));
        let json = serde_json::to_value(&n).unwrap();
        assert_eq!(json["status"], "backing_off");
        assert_eq!(json["next_restart_at_ms"], e.at_ms + expected_delay);
        let counts = promptly("count_children while backing off", count_children(&root))
            .await
            .unwrap();
        assert_eq!((counts.specs, counts.active), (2, 1));
        let kids = promptly("which_children while backing off", which_children(&root))
            .await
            .unwrap();
        let f = kids.iter().find(|k| k.id == "flaky").unwrap();
        assert_eq!(f.status, NodeStatus::BackingOff);
        assert!(f.cell.is_none());

        // The attempt begins after the backoff; while it runs, the supervisor answers.
        let n = tokio::time::timeout(Duration::from_secs(120), began_rx.recv())
            .await
            .expect("the restart attempt begins")
            .unwrap();
        assert_eq!(n, attempt + 2);
        assert_eq!(
            tree.now_ms(),
            e.at_ms + expected_delay,
            "attempt after the backoff"
        );
        let kids = promptly("which_children during an attempt", which_children(&root))
            .await
            .unwrap();
        let f = kids.iter().find(|k| k.id == "flaky").unwrap();
        assert_eq!((f.status, f.generation), (NodeStatus::Starting, generation));
        assert_eq!(
            tree.lookup("root/flaky").unwrap_err(),
            LookupError::Restarting
        );
        promptly("count_children during an attempt", count_children(&root))
            .await
            .unwrap();

        let e = ev
            .wait("Exited root/flaky (failed start)", |e| {
                e.path == "root/flaky" && matches!(e.kind, EventKind::Exited { .. })
            })
            .await;
        assert_eq!(e.generation, generation);
        assert_eq!(
            e.kind,
            EventKind::Exited {
                class: ExitClass::StartFailed,
                reason: format!("attempt {} failed", attempt + 2)
            }
        );
        let info = node(&tree, "root").supervisor.unwrap();
        assert_eq!(
            info.window_used,
            attempt as u32 + 2,
            "each failed attempt counts"
        );
        expected_delay *= 2;
    }

    let final_generation = 2 + FAILURES as u64;
    ev.started("root/flaky", final_generation).await;
    assert_eq!(calls.load(Ordering::SeqCst), FAILURES + 2);
    let n = node(&tree, "root/flaky");
    assert_eq!(n.status, NodeStatus::Running);
    assert_eq!(n.next_restart_at_ms, None);
    assert_eq!(n.restarts, final_generation - 1);
    let classes: Vec<(u64, ExitClass)> = n
        .last_exits
        .iter()
        .map(|x| (x.generation, x.class))
        .collect();
    let mut expected = vec![(1, ExitClass::Abnormal)];
    expected.extend((2..final_generation).map(|g| (g, ExitClass::StartFailed)));
    assert_eq!(classes, expected);
    let info = node(&tree, "root").supervisor.unwrap();
    assert_eq!(info.window_used, FAILURES as u32 + 1);
    assert_eq!(info.gave_up, None);
    assert_eq!(
        node(&tree, "root/steady").generation,
        1,
        "the sibling is untouched"
    );
    let starts = entries(&log).iter().filter(|e| *e == "start:flaky").count();
    assert_eq!(
        starts, 2,
        "only the first and the last attempt spawned an actor"
    );
    stop_root(root, handle).await;
}
