//! # Broker layer
//!
//! drover takes outbound messages from a message broker. This module is the only place that
//! knows how to talk to one; everything else codes against the small, backend-agnostic API
//! below, which has two implementations with the same semantics:
//!
//! * **RabbitMQ** (`amqp://` or, over TLS, `amqps://` URLs; several for a cluster), via `lapin`, with lapin's automatic recovery switched
//!   **off**: a lost connection surfaces as an error / [`Broker::closed`] resolving, and the
//!   owning actor fails so its supervisor restarts it (and reconnects).
//! * **In memory** (`url = "memory"`), a [`MemoryBroker`] shared by every connection made from
//!   it, used by tests and by the demo mode.
//!
//! ## Topology
//!
//! Every [`Broker::connect`] idempotently declares one durable direct exchange
//! ([`BrokerConfig::exchange`]) and three durable queues ([`BrokerConfig::work_queue`],
//! [`BrokerConfig::failed_queue`], [`BrokerConfig::invalid_queue`]), each bound with a routing
//! key equal to its own name. A [`Route`] names one of those queues.
//!
//! ## Objects
//!
//! * [`Broker`]: one connection (cheap to clone; clones share it).
//! * [`Consumer`]: its own channel with a prefetch window, manual acknowledgements.
//! * [`Delivery`]: one received message. It **must** be settled with [`Delivery::ack`] or
//!   [`Delivery::nack_requeue`]; if it is dropped unsettled (its worker panicked or was
//!   killed) it is requeued immediately.
//! * [`Publisher`]: its own channel in confirm mode; [`Publisher::publish`] returns only once
//!   the broker has confirmed the message.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

mod cluster;
mod config;
mod memory;
mod rabbit;
mod tls;

pub use config::{BrokerConfig, BrokerTlsConfig, MEMORY_URL, QueueType};
pub use memory::{MemoryBroker, MemoryConnection};
pub use rabbit::RabbitBroker;

/// The connection name [`Broker::connect`] announces to RabbitMQ (see [`Broker::connect_named`]).
pub const DEFAULT_CONNECTION_NAME: &str = "drover";

/// Longest name, message id, correlation id or header key AMQP 0-9-1 can carry (a "short string").
pub const MAX_SHORT_STRING: usize = 255;

/// Where a published message goes. Each route is a queue of the topology, bound to the exchange
/// with a routing key equal to the queue name (see [`BrokerConfig::queue`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// Messages waiting to be delivered ([`BrokerConfig::work_queue`]).
    Work,
    /// Messages whose delivery failed permanently ([`BrokerConfig::failed_queue`]).
    Failed,
    /// Messages that could not be parsed or validated ([`BrokerConfig::invalid_queue`]).
    Invalid,
}

impl Route {
    /// Every route, in declaration order.
    pub const ALL: [Route; 3] = [Route::Work, Route::Failed, Route::Invalid];
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Route::Work => "work",
            Route::Failed => "failed",
            Route::Invalid => "invalid",
        })
    }
}

/// Everything that can go wrong talking to the broker.
///
/// Errors carry rendered reasons (not the underlying client errors) so they are `Clone` and the
/// same for both backends. [`is_connection_lost`](Self::is_connection_lost) tells whether the
/// connection (or channel) is gone and the owner should fail / reconnect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The configuration is unusable.
    #[error("invalid broker configuration: {0}")]
    InvalidConfig(String),
    /// The connection could not be established.
    #[error("could not connect to the broker at {url}: {reason}")]
    Connect {
        /// The broker URL, password redacted.
        url: String,
        /// Why.
        reason: String,
    },
    /// TLS to the broker failed: its certificate was not trusted or not for its name, the
    /// broker refused drover's client certificate, or a certificate file could not be read.
    #[error(
        "TLS to the broker at {url} failed: certificate problem (check broker.tls.ca_file, \
         cert_file, key_file and that the URL's host is a name in the broker's certificate): \
         {reason}"
    )]
    Certificate {
        /// The broker URL, password redacted.
        url: String,
        /// Why.
        reason: String,
    },
    /// Connecting (including the topology declaration) took longer than
    /// [`BrokerConfig::connect_timeout_ms`].
    #[error("connecting to the broker at {url} timed out after {timeout_ms} ms")]
    ConnectTimeout {
        /// The broker URL, password redacted.
        url: String,
        /// The configured timeout.
        timeout_ms: u64,
    },
    /// The connection is closed or was lost.
    #[error("broker connection closed: {0}")]
    ConnectionClosed(String),
    /// The channel (of a consumer or publisher) is closed or was closed by the broker.
    #[error("broker channel closed: {0}")]
    ChannelClosed(String),
    /// A channel could not be opened or configured.
    #[error("could not open a broker channel: {0}")]
    Channel(String),
    /// Declaring the exchange, a queue or a binding failed.
    #[error("failed to declare {what}: {reason}")]
    Declare {
        /// What was being declared, e.g. `queue "drover.outbound"`.
        what: String,
        /// Why.
        reason: String,
    },
    /// A queue of the topology already exists with other arguments (another type, another
    /// delivery limit) than drover declares: RabbitMQ refuses the redeclaration, and it
    /// cannot be fixed by retrying.
    #[error("{}", mismatch(queue, *wanted, existing, reason))]
    QueueMismatch {
        /// The queue.
        queue: String,
        /// The configured type.
        wanted: QueueType,
        /// The type the queue has (`classic`, `quorum`, `stream`, or `unknown`).
        existing: String,
        /// The broker's reply (it names the argument, the existing value and ours).
        reason: String,
    },
    /// The queue does not exist.
    #[error("queue {0:?} does not exist")]
    QueueNotFound(String),
    /// Starting a consumer failed.
    #[error("could not consume from queue {queue:?}: {reason}")]
    Consume {
        /// The queue.
        queue: String,
        /// Why.
        reason: String,
    },
    /// The message cannot be represented in AMQP (e.g. a message id longer than 255 bytes).
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// The broker negatively acknowledged (nacked) the publish: it did not take responsibility
    /// for the message.
    #[error("publish to {route} was nacked by the broker")]
    PublishNacked {
        /// The route published to.
        route: Route,
    },
    /// The broker did not confirm the publish within [`BrokerConfig::confirm_timeout_ms`]; the
    /// message may or may not have been stored.
    #[error("publish to {route} was not confirmed within {timeout_ms} ms")]
    ConfirmTimeout {
        /// The route published to.
        route: Route,
        /// The configured timeout.
        timeout_ms: u64,
    },
    /// The broker could not route the message to any queue (the message was returned).
    #[error("publish to {route} was unroutable: {reason}")]
    Unroutable {
        /// The route published to.
        route: Route,
        /// The broker's reply text.
        reason: String,
    },
    /// Publishing failed for another reason.
    #[error("publish to {route} failed: {reason}")]
    Publish {
        /// The route published to.
        route: Route,
        /// Why.
        reason: String,
    },
    /// The delivery was already acked or nacked.
    #[error("delivery {delivery_tag} is already settled")]
    AlreadySettled {
        /// The delivery's tag.
        delivery_tag: u64,
    },
    /// Acknowledging (ack / nack) a delivery failed. Unless the message was acked, the broker
    /// redelivers it once the channel is gone.
    #[error("could not settle delivery {delivery_tag}: {reason}")]
    Settle {
        /// The delivery's tag.
        delivery_tag: u64,
        /// Why.
        reason: String,
    },
    /// A round trip to the broker (opening a channel, setting up a consumer, a passive
    /// declare, a close, ...) got no answer within [`BrokerConfig::connect_timeout_ms`]: the
    /// connection is presumably dead (counts as [`is_connection_lost`](Self::is_connection_lost)).
    #[error("broker operation {operation} got no answer within {timeout_ms} ms")]
    Timeout {
        /// What was attempted.
        operation: String,
        /// The configured timeout.
        timeout_ms: u64,
    },
    /// Any other broker operation failed.
    #[error("broker operation {operation} failed: {reason}")]
    Operation {
        /// What was attempted.
        operation: String,
        /// Why.
        reason: String,
    },
}

/// [`BrokerError::QueueMismatch`]'s sentence: what the queue is, what drover wanted, what to do.
fn mismatch(queue: &str, wanted: QueueType, existing: &str, reason: &str) -> String {
    let what = if existing == wanted.as_str() {
        format!("already exists as a {existing} queue with other arguments")
    } else if existing == "unknown" {
        "already exists with other arguments".to_owned()
    } else {
        format!("already exists as a {existing} queue")
    };
    let todo = if existing == wanted.as_str() || existing == "unknown" {
        "delete the queue after draining it, or match its arguments (broker.delivery_limit)"
    } else {
        "a queue cannot change type; set broker.queue_type to its type, or drain and delete it"
    };
    format!(
        "queue {queue:?} {what}, but drover declares it as a {wanted} queue (broker.queue_type = \
         \"{wanted}\"): {todo}; the broker says: {reason}"
    )
}

impl BrokerError {
    /// True when trying again cannot help until someone changes the configuration or the
    /// broker: a certificate not trusted, a queue declared with other arguments, a bad
    /// configuration. The startup check stops waiting at such an error.
    #[must_use]
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            BrokerError::InvalidConfig(_)
                | BrokerError::Certificate { .. }
                | BrokerError::QueueMismatch { .. }
        )
    }

    /// True when the error means the connection or channel is gone (so the owning actor should
    /// fail and be restarted, reconnecting), as opposed to a problem with one operation.
    #[must_use]
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            BrokerError::ConnectionClosed(_)
                | BrokerError::ChannelClosed(_)
                | BrokerError::Connect { .. }
                | BrokerError::Certificate { .. }
                | BrokerError::ConnectTimeout { .. }
                | BrokerError::Timeout { .. }
        )
    }
}

/// Queue counters, as reported by the broker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Messages ready to be delivered (not counting delivered-but-unacknowledged ones).
    pub ready: u32,
    /// Active consumers on the queue.
    pub consumers: u32,
    /// Messages the queue dropped to stay within its bound (the in-memory broker's failed and
    /// invalid queues, [`BrokerConfig::memory_keep_newest`]); always 0 on RabbitMQ.
    #[serde(default)]
    pub dropped: u64,
}

/// A message to publish.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outgoing {
    /// The payload.
    pub body: Vec<u8>,
    /// AMQP `message-id` property (at most 255 bytes).
    pub message_id: Option<String>,
    /// AMQP `correlation-id` property (at most 255 bytes).
    pub correlation_id: Option<String>,
    /// Application headers, sent as AMQP long strings (keys at most 255 bytes).
    pub headers: BTreeMap<String, String>,
}

impl Outgoing {
    /// A message with `body` and no properties.
    #[must_use]
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        Outgoing {
            body: body.into(),
            ..Outgoing::default()
        }
    }

    /// Set the message id.
    #[must_use]
    pub fn with_message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// Set the correlation id.
    #[must_use]
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Add (or replace) a header.
    #[must_use]
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }

    /// Check the message fits AMQP's limits (ids and header keys of at most 255 bytes).
    pub fn validate(&self) -> Result<(), BrokerError> {
        let too_long = |what: &str| {
            Err(BrokerError::InvalidMessage(format!(
                "{what} is longer than {MAX_SHORT_STRING} bytes"
            )))
        };
        if self
            .message_id
            .as_ref()
            .is_some_and(|id| id.len() > MAX_SHORT_STRING)
        {
            return too_long("message_id");
        }
        if self
            .correlation_id
            .as_ref()
            .is_some_and(|id| id.len() > MAX_SHORT_STRING)
        {
            return too_long("correlation_id");
        }
        if let Some(key) = self.headers.keys().find(|k| k.len() > MAX_SHORT_STRING) {
            return too_long(&format!("header key {key:?}"));
        }
        Ok(())
    }
}

/// One received message.
///
/// It must be settled exactly once with [`ack`](Self::ack) (done with it) or
/// [`nack_requeue`](Self::nack_requeue) (give it back). A `Delivery` dropped while still
/// unsettled — its worker panicked, was killed, or forgot — is nacked with requeue **at once**,
/// so the broker redelivers it (marked `redelivered`) without waiting for a consumer timeout.
/// If the consumer's channel or connection is gone, the broker requeues the message itself and
/// settling fails with an error.
pub struct Delivery {
    /// The payload.
    pub body: Vec<u8>,
    /// AMQP `message-id` property.
    pub message_id: Option<String>,
    /// AMQP `correlation-id` property.
    pub correlation_id: Option<String>,
    /// Application headers whose values are strings (other header types are left out).
    pub headers: BTreeMap<String, String>,
    /// True if the broker delivered this message before (to this or another consumer) and it
    /// was requeued.
    pub redelivered: bool,
    /// How often the broker delivered it before, where it counts (`x-delivery-count` on
    /// RabbitMQ quorum queues); `None` elsewhere. It counts every requeue, outages included.
    pub delivery_count: Option<u64>,
    /// The delivery tag, unique per consumer (channel).
    pub delivery_tag: u64,
    /// The exchange the message was published to.
    pub exchange: String,
    /// The routing key the message was published with.
    pub routing_key: String,
    settled: bool,
    settler: Settler,
}

/// How a [`Delivery`] is settled, per backend.
enum Settler {
    Rabbit(lapin::Acker),
    Memory(memory::MemoryAcker),
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("delivery_tag", &self.delivery_tag)
            .field("message_id", &self.message_id)
            .field("correlation_id", &self.correlation_id)
            .field("headers", &self.headers)
            .field("redelivered", &self.redelivered)
            .field("delivery_count", &self.delivery_count)
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .field("body_len", &self.body.len())
            .field("settled", &self.settled)
            .field(
                "backend",
                &match self.settler {
                    Settler::Rabbit(_) => "rabbit",
                    Settler::Memory(_) => "memory",
                },
            )
            .finish()
    }
}

impl Delivery {
    /// Acknowledge: the message is done with and the broker forgets it.
    ///
    /// Fails with [`BrokerError::AlreadySettled`] if already settled, or with an error if the
    /// channel is gone (the broker then redelivers the message). Either way the delivery counts
    /// as settled afterwards.
    pub async fn ack(&mut self) -> Result<(), BrokerError> {
        self.begin_settle()?;
        let tag = self.delivery_tag;
        match &self.settler {
            Settler::Rabbit(acker) => rabbit::ack(acker, tag).await,
            Settler::Memory(acker) => acker.ack(tag),
        }
    }

    /// Negatively acknowledge with requeue: the broker puts the message back at the front of
    /// its queue and redelivers it (marked `redelivered`).
    ///
    /// Fails like [`ack`](Self::ack).
    pub async fn nack_requeue(&mut self) -> Result<(), BrokerError> {
        self.begin_settle()?;
        let tag = self.delivery_tag;
        match &self.settler {
            Settler::Rabbit(acker) => rabbit::nack_requeue(acker, tag).await,
            Settler::Memory(acker) => acker.nack_requeue(tag),
        }
    }

    /// The same message, to publish again (body, ids and headers as received).
    #[must_use]
    pub fn to_outgoing(&self) -> Outgoing {
        Outgoing {
            body: self.body.clone(),
            message_id: self.message_id.clone(),
            correlation_id: self.correlation_id.clone(),
            headers: self.headers.clone(),
        }
    }

    /// True once [`ack`](Self::ack) or [`nack_requeue`](Self::nack_requeue) was called.
    #[must_use]
    pub fn is_settled(&self) -> bool {
        self.settled
    }

    fn begin_settle(&mut self) -> Result<(), BrokerError> {
        if self.settled {
            return Err(BrokerError::AlreadySettled {
                delivery_tag: self.delivery_tag,
            });
        }
        // Settled from here on, even if this future is dropped before completing: the
        // acknowledgement is sent on the first poll, so Drop must not send a second one.
        self.settled = true;
        Ok(())
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        self.settled = true;
        tracing::warn!(
            delivery_tag = self.delivery_tag,
            message_id = ?self.message_id,
            "delivery dropped unsettled; requeueing it"
        );
        match &self.settler {
            Settler::Rabbit(acker) => rabbit::requeue_on_drop(acker, self.delivery_tag),
            Settler::Memory(acker) => acker.requeue_on_drop(self.delivery_tag),
        }
    }
}

/// One connection to the broker: RabbitMQ or the in-memory broker.
///
/// Cheap to clone; clones share the connection. Consumers and publishers open their own
/// channels on it. When the connection is lost, [`closed`](Self::closed) resolves and every
/// consumer / publisher made from it fails; nothing reconnects automatically (the owning
/// actor's supervisor restarts it, and it connects anew).
#[derive(Clone, Debug)]
pub enum Broker {
    /// A RabbitMQ connection.
    Rabbit(RabbitBroker),
    /// A connection to an in-memory broker.
    Memory(MemoryConnection),
}

impl Broker {
    /// Connect per `config` (for `url = "memory"`, to `memory`) and declare the topology.
    ///
    /// Equivalent to [`connect_named`](Self::connect_named) with [`DEFAULT_CONNECTION_NAME`].
    pub async fn connect(
        config: &BrokerConfig,
        memory: &MemoryBroker,
    ) -> Result<Broker, BrokerError> {
        Broker::connect_named(config, memory, DEFAULT_CONNECTION_NAME).await
    }

    /// Connect per `config`, announcing `connection_name` to RabbitMQ (shown by the management
    /// UI and `rabbitmqctl list_connections client_properties`), and declare the topology.
    ///
    /// The whole operation is bounded by [`BrokerConfig::connect_timeout_ms`]. The in-memory
    /// broker ignores the name.
    pub async fn connect_named(
        config: &BrokerConfig,
        memory: &MemoryBroker,
        connection_name: &str,
    ) -> Result<Broker, BrokerError> {
        config.validate()?;
        if config.is_memory() {
            memory.connect(config).map(Broker::Memory)
        } else {
            RabbitBroker::connect(config, connection_name)
                .await
                .map(Broker::Rabbit)
        }
    }

    /// The configuration this connection was made with.
    #[must_use]
    pub fn config(&self) -> &BrokerConfig {
        match self {
            Broker::Rabbit(b) => b.config(),
            Broker::Memory(b) => b.config(),
        }
    }

    /// The node this connection is to, as errors and logs name it (scheme, host and port;
    /// `"memory"` for the in-memory broker): with several [`BrokerConfig::urls`], the one
    /// that answered.
    #[must_use]
    pub fn node(&self) -> &str {
        match self {
            Broker::Rabbit(b) => b.node(),
            Broker::Memory(_) => MEMORY_URL,
        }
    }

    /// True while the connection is usable.
    #[must_use]
    pub fn is_open(&self) -> bool {
        match self {
            Broker::Rabbit(b) => b.is_open(),
            Broker::Memory(b) => b.is_open(),
        }
    }

    /// Resolves once the connection is closed or lost, with the reason. Resolves at once if
    /// it already is.
    pub async fn closed(&self) -> BrokerError {
        match self {
            Broker::Rabbit(b) => b.closed().await,
            Broker::Memory(b) => b.closed().await,
        }
    }

    /// Close the connection (and with it every consumer and publisher made from it; their
    /// unacknowledged deliveries are requeued). Closing a closed connection is a no-op.
    pub async fn close(&self) -> Result<(), BrokerError> {
        match self {
            Broker::Rabbit(b) => b.close().await,
            Broker::Memory(b) => {
                b.close();
                Ok(())
            }
        }
    }

    /// Start consuming from `queue` on a new channel with a prefetch window of `prefetch`
    /// unacknowledged deliveries (`0` = unlimited) and manual acknowledgement. `tag` is the
    /// consumer tag (empty: let the broker choose).
    pub async fn consumer(
        &self,
        queue: &str,
        prefetch: u16,
        tag: &str,
    ) -> Result<Consumer, BrokerError> {
        let inner = match self {
            Broker::Rabbit(b) => {
                ConsumerInner::Rabbit(Box::new(b.consumer(queue, prefetch, tag).await?))
            }
            Broker::Memory(b) => ConsumerInner::Memory(b.consumer(queue, prefetch, tag)?),
        };
        Ok(Consumer { inner })
    }

    /// Open a publisher: a new channel in confirm mode.
    pub async fn publisher(&self) -> Result<Publisher, BrokerError> {
        let inner = match self {
            Broker::Rabbit(b) => PublisherInner::Rabbit(b.publisher().await?),
            Broker::Memory(b) => PublisherInner::Memory(b.publisher()?),
        };
        Ok(Publisher { inner })
    }

    /// Ready-message and consumer counts of `queue` (a passive declare on RabbitMQ).
    /// Fails with [`BrokerError::QueueNotFound`] if the queue does not exist.
    pub async fn queue_stats(&self, queue: &str) -> Result<QueueStats, BrokerError> {
        match self {
            Broker::Rabbit(b) => b.queue_stats(queue).await,
            Broker::Memory(b) => b.queue_stats(queue),
        }
    }

    /// Delete the three queues and the exchange of this connection's topology, with whatever
    /// they hold. Meant for tests and tooling, never called by the service itself.
    pub async fn delete_topology(&self) -> Result<(), BrokerError> {
        match self {
            Broker::Rabbit(b) => b.delete_topology().await,
            Broker::Memory(b) => b.delete_topology(),
        }
    }
}

/// A consumer on one queue, on its own channel. Dropping it (or [`close`](Self::close)) closes
/// the channel, and the broker requeues every delivery not yet settled.
#[derive(Debug)]
pub struct Consumer {
    inner: ConsumerInner,
}

#[derive(Debug)]
enum ConsumerInner {
    // Boxed: lapin's consumer is much larger than the in-memory one.
    Rabbit(Box<rabbit::RabbitConsumer>),
    Memory(memory::MemoryConsumer),
}

impl Consumer {
    /// The next delivery. `None` (or `Some(Err(_))`, then `None`) once the consumer, its channel
    /// or the connection is gone: the owner should then fail.
    pub async fn next(&mut self) -> Option<Result<Delivery, BrokerError>> {
        match &mut self.inner {
            ConsumerInner::Rabbit(c) => c.next().await,
            ConsumerInner::Memory(c) => c.next().await,
        }
    }

    /// The queue consumed from.
    #[must_use]
    pub fn queue(&self) -> &str {
        match &self.inner {
            ConsumerInner::Rabbit(c) => c.queue(),
            ConsumerInner::Memory(c) => c.queue(),
        }
    }

    /// The consumer tag.
    #[must_use]
    pub fn tag(&self) -> &str {
        match &self.inner {
            ConsumerInner::Rabbit(c) => c.tag(),
            ConsumerInner::Memory(c) => c.tag(),
        }
    }

    /// Cancel the consumer and close its channel; unsettled deliveries are requeued.
    pub async fn close(self) -> Result<(), BrokerError> {
        match self.inner {
            ConsumerInner::Rabbit(c) => c.close().await,
            ConsumerInner::Memory(c) => {
                c.close();
                Ok(())
            }
        }
    }
}

/// A publisher on its own confirm-mode channel. Cheap to clone; clones share the channel.
#[derive(Clone, Debug)]
pub struct Publisher {
    inner: PublisherInner,
}

#[derive(Clone, Debug)]
enum PublisherInner {
    Rabbit(rabbit::RabbitPublisher),
    Memory(memory::MemoryPublisher),
}

impl Publisher {
    /// Publish `msg` on `route` (persistent, mandatory) and wait until the broker confirms it.
    ///
    /// Returns `Ok` only once the broker has taken responsibility for the message. Fails if the
    /// broker nacks it, does not confirm within [`BrokerConfig::confirm_timeout_ms`], cannot
    /// route it, or the channel / connection is gone.
    pub async fn publish(&self, route: Route, msg: Outgoing) -> Result<(), BrokerError> {
        msg.validate()?;
        match &self.inner {
            PublisherInner::Rabbit(p) => p.publish(route, msg).await,
            PublisherInner::Memory(p) => p.publish(route, msg),
        }
    }

    /// Resolves once the publisher's channel or connection is closed or lost, with the reason.
    pub async fn closed(&self) -> BrokerError {
        match &self.inner {
            PublisherInner::Rabbit(p) => p.closed().await,
            PublisherInner::Memory(p) => p.closed().await,
        }
    }

    /// Close the publisher's channel (every clone's). Closing twice is a no-op.
    pub async fn close(&self) -> Result<(), BrokerError> {
        match &self.inner {
            PublisherInner::Rabbit(p) => p.close().await,
            PublisherInner::Memory(p) => {
                p.close();
                Ok(())
            }
        }
    }
}

/// A one-shot "closed, and why" latch shared by a connection or channel and its waiters.
#[derive(Debug)]
struct Signal(tokio::sync::watch::Sender<Option<BrokerError>>);

impl Signal {
    fn new() -> Self {
        Signal(tokio::sync::watch::channel(None).0)
    }

    /// Record `reason` unless already closed. Returns true if this call closed it.
    fn fire(&self, reason: BrokerError) -> bool {
        self.0.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason);
                true
            } else {
                false
            }
        })
    }

    /// The reason, if closed.
    fn get(&self) -> Option<BrokerError> {
        self.0.borrow().clone()
    }

    /// Resolves with the reason once closed.
    async fn wait(&self) -> BrokerError {
        let mut rx = self.0.subscribe();
        let reason = match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            // Unreachable while `self` is borrowed (the sender lives in it), but harmless.
            Err(_) => None,
        };
        reason.unwrap_or_else(|| BrokerError::ConnectionClosed("closed".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_mismatch_says_what_the_queue_is_and_what_to_do() {
        let cases = [
            (
                "classic",
                QueueType::Quorum,
                "already exists as a classic queue, but",
                "cannot change type",
            ),
            (
                "quorum",
                QueueType::Quorum,
                "as a quorum queue with other arguments",
                "broker.delivery_limit",
            ),
            (
                "unknown",
                QueueType::Classic,
                "already exists with other arguments, but",
                "broker.delivery_limit",
            ),
        ];
        for (existing, wanted, what, todo) in cases {
            let text = mismatch("q", wanted, existing, "PRECONDITION_FAILED");
            assert!(
                text.contains(what) && text.contains(todo),
                "{existing}: {text}"
            );
        }
    }

    #[test]
    fn validates() {
        assert_eq!(BrokerConfig::default().validate(), Ok(()));
        let same = BrokerConfig {
            failed_queue: "drover.outbound".into(),
            ..BrokerConfig::default()
        };
        assert!(same.validate().is_err());
        assert!(
            Outgoing::new("x")
                .with_message_id("a".repeat(256))
                .validate()
                .is_err()
        );
        assert!(
            Outgoing::new("x")
                .with_header("k", "v".repeat(1000))
                .validate()
                .is_ok()
        );
    }
}
