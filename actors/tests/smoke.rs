use std::time::Duration;

use drover_actors::supervisor::{Backoff, start_child};
use drover_actors::tree::EventKind;
use drover_actors::*;
use ractor::{Actor, ActorProcessingErr, ActorRef};

struct Crashy;
impl Actor for Crashy {
    type Msg = &'static str;
    type State = ();
    type Arguments = ();
    async fn pre_start(&self, _: ActorRef<Self::Msg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        m: Self::Msg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match m {
            "panic" => panic!("boom"),
            "err" => Err("bad".into()),
            _ => Ok(()),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn smoke() {
    let tree = Tree::new();
    let mut ev = tree.subscribe();
    let spec = SupervisorSpec::new(
        Strategy::OneForOne,
        Intensity {
            max_restarts: 5,
            period: Duration::from_secs(10),
        },
    )
    .child(ChildSpec::worker("a", |_| (Crashy, ())).backoff(Backoff {
        min_ms: 1000,
        jitter: 0.0,
        ..Backoff::default()
    }))
    .dynamic(
        ChildSpec::worker("w", |_| (Crashy, ())).restart(Restart::Temporary),
        2,
    );
    let (root, _h) = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs {
            spec,
            tree: tree.clone(),
            path: "root".into(),
        },
    )
    .await
    .unwrap();
    let a = tree.handle("root/a");
    let r: ActorRef<&'static str> = a.actor_ref().unwrap();
    r.send_message("panic").unwrap();
    // Bounded (the paused clock advances to the limit if the event never comes).
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let e = ev.recv().await.unwrap();
            println!("{e:?}");
            if e.path == "root/a" && e.kind == EventKind::Started && e.generation == 2 {
                break;
            }
        }
    })
    .await
    .expect("root/a restarted within 60 s");
    let s = tree.snapshot();
    println!("{}", serde_json::to_string_pretty(&s).unwrap());
    assert_eq!(s.find("root/a").unwrap().restarts, 1);
    start_child(&root, ()).await.unwrap();
    start_child(&root, ()).await.unwrap();
    assert!(start_child(&root, ()).await.is_err());
    root.stop_and_wait(None, None).await.unwrap();
}
