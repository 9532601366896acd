//! # drover-actors
//!
//! Everything that runs inside drover's supervision tree: the OTP-style [`supervisor`], the
//! live [`tree`] (snapshots and the event stream), handler [`watchdog`]s, and the actors.
//!
//! The delivery pipeline's tree (drawn in [`pipeline`]) is the root's: alerts, store,
//! provider, broker (connection, publisher, consumer, workers), scheduler, monitor. With
//! `demo.enabled`, a demonstration subtree ([`demo`]) runs beside it.

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
