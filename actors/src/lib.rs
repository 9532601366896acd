//! # drover-actors
//!
//! Everything that runs inside drover's supervision tree: the OTP-style [`supervisor`], the
//! live [`tree`] (snapshots and the event stream), handler [`watchdog`]s, and the actors.
//!
//! ```text
//! root (Supervisor, one_for_one)
//! └── demo (Supervisor, rest_for_one)      until the delivery pipeline replaces it
//!     ├── ticker (worker, permanent)
//!     ├── flaky  (worker, permanent, backoff ×3)
//!     └── pool   (Supervisor, one_for_one, dynamic workers)
//! ```

pub mod broker;
pub mod clock;
pub mod demo;
pub mod message;
pub mod pipeline;
pub mod provider;
pub mod redact;
pub mod store;
pub mod supervisor;
pub mod tree;
pub mod watchdog;

pub use supervisor::{
    Backoff, ChildCtx, ChildSpec, Intensity, Restart, Shutdown, Strategy, Supervisor,
    SupervisorArgs, SupervisorError, SupervisorMessage, SupervisorSpec,
};
pub use tree::{
    ChildHandle, ExitClass, LookupError, NodeKind, NodeStatus, Tree, TreeEvent, TreeSnapshot,
};
pub use watchdog::Watchdog;
