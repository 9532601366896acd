//! The harness shared by the integration tests, a file per concern: `env.rs` (one test's
//! world), `provider.rs` (the mock Twilio), `load.rs` (traffic and the sent-once invariant),
//! `wait.rs` (bounded waits), `rabbitmq.rs` (`rabbitmqctl`, a node of a test's own),
//! `http.rs` (in-process requests, an alert webhook), `binary.rs`, `proxy.rs`. The `use`s
//! below are their shared prelude (`use super::*`).
//!
//! * [`MockProvider`]: a local HTTP server (axum, on `127.0.0.1:0`) that speaks Twilio's
//!   Messages API, records every call per message id (the `I-Twilio-Idempotency-Token`
//!   header) with its time, and answers as scripted per id or per recipient.
//! * [`TestEnv`]: one test's world: a unique RabbitMQ topology (exchange and queues suffixed
//!   with a uuid), a unique PostgreSQL schema, the mock provider, and a drover [`Config`]
//!   pointing at all three. [`TestEnv::cleanup`] deletes the topology and drops the schema;
//!   if a test panics before, a drop guard does it.
//! * Bounded waits: [`wait_for`] polls a condition every 50 ms under a `tokio::time::timeout`.
//!
//! RabbitMQ comes from `DROVER_TEST_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`)
//! and PostgreSQL from `DROVER_TEST_DATABASE_URL` (default
//! `postgres://drover:drover@127.0.0.1:5432/drover`). When either is unreachable the tests
//! FAIL with a message saying so; they never skip. Only loopback addresses are used.

#![allow(dead_code)] // each test binary uses its own subset

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use drover::{App, Config};
use drover_actors::broker::{
    Broker, BrokerConfig, Delivery, MemoryBroker, Outgoing, Publisher, Route,
};
use drover_actors::provider::ProviderKind;
use drover_actors::store::{MessageRecord, MessageStatus, Store, StoreConfig};
use serde_json::json;
use tokio::time::Instant;
use uuid::Uuid;

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_DATABASE_URL: &str = "postgres://drover:drover@127.0.0.1:5432/drover";

/// The Twilio account the mock expects (and drover is configured with).
pub const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
pub const AUTH_TOKEN: &str = "drover-test-token";
pub const SENDER: &str = "+15550000000";

/// Poll interval of [`wait_for`].
pub const POLL: Duration = Duration::from_millis(50);

pub fn amqp_url() -> String {
    std::env::var("DROVER_TEST_AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.to_owned())
}

pub fn database_url() -> String {
    std::env::var("DROVER_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

/// Logs go to stderr only when `RUST_LOG` is set (cargo does not capture them).
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        drover::telemetry::init(&drover::telemetry::LogConfig {
            level: "info".into(),
            format: drover::telemetry::LogFormat::Pretty,
        });
    }
}

mod binary;
mod env;
mod http;
mod load;
mod provider;
mod proxy;
mod rabbitmq;
mod wait;

// Each test binary uses its own subset.
#[allow(unused_imports)]
pub use binary::*;
#[allow(unused_imports)]
pub use env::*;
#[allow(unused_imports)]
pub use http::*;
#[allow(unused_imports)]
pub use load::*;
#[allow(unused_imports)]
pub use provider::*;
#[allow(unused_imports)]
pub use proxy::*;
#[allow(unused_imports)]
pub use rabbitmq::*;
#[allow(unused_imports)]
pub use wait::*;
