//! [`Reported`]: a child actor whose failing stop hook its supervisor learns of.
//!
//! ractor reports an `Err` from `post_stop` only as an `ActorFailed` supervision event, and a
//! supervisor that is itself stopping never reads its mailbox again, so it recorded such a
//! stop as a clean `shutdown`. OTP records it as the abnormal exit it is. The child specs of
//! [`ChildSpec::worker`](super::ChildSpec::worker) run their actor inside this wrapper, which
//! writes the error where the supervisor reads it once the child is gone.

use std::sync::Arc;

use parking_lot::Mutex;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};

/// What one incarnation leaves where its supervisor reads it: the actors its start spawned
/// (killed if the start overruns its timeout) and its failing stop hook's error. One
/// allocation per start, none more for the usual single spawned actor: this is on the path
/// of every per-message worker.
#[derive(Default)]
pub struct Incarnation {
    spawned: Mutex<(Option<ActorCell>, Vec<ActorCell>)>,
    stop_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for Incarnation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incarnation")
            .field("stop_error", &*self.stop_error.lock())
            .finish()
    }
}

impl Incarnation {
    pub(crate) fn push_spawned(&self, cell: ActorCell) {
        let mut s = self.spawned.lock();
        if s.0.is_none() {
            s.0 = Some(cell);
        } else {
            s.1.push(cell);
        }
    }

    pub(crate) fn take_spawned(&self) -> Vec<ActorCell> {
        let mut s = self.spawned.lock();
        let (first, mut more) = (s.0.take(), std::mem::take(&mut s.1));
        if let Some(first) = first {
            more.insert(0, first);
        }
        more
    }

    pub(crate) fn take_stop_error(&self) -> Option<String> {
        self.stop_error.lock().take()
    }
}

/// Where an incarnation's failing stop hook leaves its error.
pub type StopError = Arc<Incarnation>;

/// Runs `A` unchanged, except that an `Err` from its `post_stop` is also written to `error`.
pub struct Reported<A> {
    pub inner: A,
    pub error: StopError,
}

impl<A> std::fmt::Debug for Reported<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reported")
            .field("inner", &std::any::type_name::<A>())
            .finish()
    }
}

impl<A: Actor> Actor for Reported<A> {
    type Msg = A::Msg;
    type State = A::State;
    type Arguments = A::Arguments;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        self.inner.pre_start(myself, args).await
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        self.inner.post_start(myself, state).await
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let result = self.inner.post_stop(myself, state).await;
        if let Err(e) = &result {
            *self.error.stop_error.lock() = Some(e.to_string());
        }
        result
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        self.inner.handle(myself, message, state).await
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        message: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        self.inner
            .handle_supervisor_evt(myself, message, state)
            .await
    }
}
