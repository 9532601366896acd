//! Why drover stopped, and the process exit code that says so.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | stopped on SIGTERM/SIGINT after a graceful shutdown |
//! | 1 | an unexpected error |
//! | 2 | bad configuration or command line |
//! | 3 | a dependency was unavailable at start: the startup check failed (database, broker or provider unreachable), the tree could not boot, or the listen address could not be bound |
//! | 4 | the root supervisor gave up (restart intensity exceeded all the way up) |

use std::net::SocketAddr;

/// Errors of `run`.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0} unavailable at start: {1}")]
    Unavailable(&'static str, String),
    #[error("cannot start the supervision tree: {0}")]
    Boot(String),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("the root supervisor gave up: {0}")]
    RootGaveUp(String),
    #[error("the root supervisor exited unexpectedly")]
    RootExited,
}

pub const EXIT_OK: i32 = 0;
pub const EXIT_ERROR: i32 = 1;
pub const EXIT_CONFIG: i32 = 2;
pub const EXIT_UNAVAILABLE: i32 = 3;
pub const EXIT_ROOT_GAVE_UP: i32 = 4;

impl RunError {
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Config(_) => EXIT_CONFIG,
            RunError::Unavailable(..) | RunError::Boot(_) | RunError::Bind(..) => EXIT_UNAVAILABLE,
            RunError::RootGaveUp(_) => EXIT_ROOT_GAVE_UP,
            RunError::RootExited => EXIT_ERROR,
        }
    }
}
