//! The supervision vocabulary of Erlang/OTP: restart types, shutdown, strategies, intensity.
//! Plain values, importing nothing of the crate, so the tree ([`crate::tree`]) can describe its
//! nodes with them while child specs ([`super::spec`]) are built on the tree.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// When a child is restarted (OTP restart types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    /// Always restarted.
    Permanent,
    /// Restarted only after an abnormal exit (not `normal`, not `shutdown`).
    Transient,
    /// Never restarted; its spec is removed when it exits.
    Temporary,
}

/// How a child is stopped when its supervisor stops it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Ask it to stop (its `post_stop` runs); kill it if it is not gone within the timeout.
    Timeout(Duration),
    /// Kill it at once (`post_stop` does not run).
    BrutalKill,
    /// Ask it to stop and wait as long as it takes: for child supervisors, which stop their
    /// own children within their own timeouts.
    Infinity,
}

/// Which siblings are restarted with a failed child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Only the failed child.
    OneForOne,
    /// Every static child: the others are stopped in reverse order, then all start in order.
    OneForAll,
    /// The failed child and the static children started after it.
    RestForOne,
}

/// Restart intensity: more than `max_restarts` restarts within `period` makes the supervisor
/// give up. OTP's default is 1 restart in 5 seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intensity {
    pub max_restarts: u32,
    pub period: Duration,
}

impl Default for Intensity {
    fn default() -> Self {
        Intensity {
            max_restarts: 1,
            period: Duration::from_secs(5),
        }
    }
}

/// When a supervisor ends by itself because its significant children ended (OTP 24's
/// `auto_shutdown`): for a supervisor of a finite job, whose children are the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutoShutdown {
    /// Never: significant children are not allowed.
    #[default]
    Never,
    /// When any significant child ends (without being restarted).
    AnySignificant,
    /// When every significant child has ended.
    AllSignificant,
}
