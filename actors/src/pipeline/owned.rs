//! Helper tasks that end with their owning actor.

use std::future::Future;

use ractor::ActorCell;
use tokio::task::JoinHandle;

/// Spawn a helper task of the actor `owner` that ends with `task` or with the owner, whichever
/// comes first. ractor runs `post_stop` only after a graceful stop, not when the actor is
/// killed or fails, so a helper holding a connection, a channel or a consumer must not rely on
/// `post_stop` alone to end: it would keep that resource open after its owner is gone.
pub fn spawn_owned(
    owner: ActorCell,
    task: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        tokio::select! {
            () = task => {}
            _ = owner.wait(None) => {}
        }
    })
}
