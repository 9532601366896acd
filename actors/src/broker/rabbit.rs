//! The RabbitMQ backend, on lapin.
//!
//! * lapin's automatic recovery stays **off**: a lost connection is reported (through
//!   [`Broker::closed`](super::Broker::closed), failing consumers and publishers) and the
//!   owning actors fail; their supervisors restart them and they connect anew.
//! * A background task per connection watches lapin's event stream (and, as a fallback, polls
//!   the connection state) to resolve `closed()` when the connection goes away.
//! * Every consumer and publisher has its own channel; a consumer's channel closing makes
//!   RabbitMQ requeue its unacknowledged deliveries.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    Acker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind,
    ExchangeKind,
};
use tokio::sync::watch;

use super::config::redact_url;
use super::{
    BrokerConfig, BrokerError, Delivery, Outgoing, QueueStats, QueueType, Route, Settler, Signal,
    cluster, tls,
};

/// How often closure is re-checked by polling, in case an event is missed.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// AMQP reply code for a normal close.
const REPLY_SUCCESS: u16 = 200;

/// `delivery_mode` of persistent messages.
const PERSISTENT: u8 = 2;

/// One RabbitMQ connection (the [`Broker::Rabbit`](super::Broker::Rabbit) variant). Cheap to
/// clone; clones share the connection.
#[derive(Clone, Debug)]
pub struct RabbitBroker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    connection: Connection,
    config: BrokerConfig,
    /// The node connected to (redacted URL).
    node: String,
    /// Fired once the connection is closed or lost.
    lost: Arc<Signal>,
    /// Bumped on every error event lapin reports (a channel or the connection ended), so
    /// channel-level `closed()` waiters re-check their channel.
    errors: Arc<watch::Sender<u64>>,
}

fn short(value: &str, what: &str) -> Result<ShortString, BrokerError> {
    ShortString::try_new(value)
        .map_err(|e| BrokerError::InvalidMessage(format!("{what} {value:?}: {e}")))
}

fn amqp_error(error: &lapin::Error) -> Option<&AMQPErrorKind> {
    match error.kind() {
        ErrorKind::ProtocolError(e) => Some(e.kind()),
        _ => None,
    }
}

fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(
        amqp_error(error),
        Some(AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
    )
}

/// The queue's type when a PRECONDITION_FAILED reply is about `x-queue-type`: RabbitMQ says
/// `inequivalent arg 'x-queue-type' ... but current is 'classic'` (or `none`: classic).
fn queue_type_in(reply: &str) -> Option<String> {
    let about = reply.split("inequivalent arg 'x-queue-type'").nth(1)?;
    let current = about.split("current is ").nth(1)?;
    if current.starts_with("none") {
        return Some("classic".into());
    }
    let quoted = current.split('\'').nth(1)?;
    let name: String = quoted
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// The arguments drover declares a queue with. Classic queues: none, as drover always
/// declared them (any other would make the redeclaration of an existing queue fail).
/// Quorum queues: the type, an explicit delivery limit (RabbitMQ 4 otherwise applies 20
/// and drops what exceeds it) and, for the work and failed queues, the invalid queue as
/// where a message past the limit goes, so the broker never drops one.
fn queue_arguments(config: &BrokerConfig, route: Route) -> FieldTable {
    let mut args = FieldTable::default();
    if config.queue_type == QueueType::Quorum {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(config.delivery_limit)),
        );
        if route != Route::Invalid {
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(config.exchange.as_str().into()),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(config.invalid_queue.as_str().into()),
            );
        }
    }
    args
}

fn is_not_found(error: &lapin::Error) -> bool {
    matches!(
        amqp_error(error),
        Some(AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
    )
}

impl RabbitBroker {
    /// Connect to the first node that answers, in [`cluster::order`], each within the
    /// connect timeout, and declare the topology.
    pub(super) async fn connect(
        config: &BrokerConfig,
        connection_name: &str,
    ) -> Result<RabbitBroker, BrokerError> {
        let nodes = config.urls();
        let mut failures = Vec::new();
        for index in cluster::order(&config.url, nodes.len()) {
            let url = nodes[index];
            let attempt = tokio::time::timeout(
                config.connect_timeout(),
                Self::connect_node(config, url, connection_name),
            )
            .await
            .unwrap_or_else(|_| {
                Err(BrokerError::ConnectTimeout {
                    url: redact_url(url),
                    timeout_ms: config.connect_timeout_ms,
                })
            });
            match attempt {
                Ok(broker) => {
                    cluster::used(&config.url, index, nodes.len());
                    return Ok(broker);
                }
                // The node answered and refused the topology: another node says the same.
                Err(e @ BrokerError::QueueMismatch { .. }) => return Err(e),
                Err(e @ BrokerError::Certificate { .. }) if nodes.len() == 1 => return Err(e),
                Err(e) if nodes.len() == 1 => return Err(e),
                Err(e) => {
                    tracing::warn!(node = %redact_url(url), error = %e, "broker node unreachable; trying the next");
                    failures.push(e.to_string());
                }
            }
        }
        Err(BrokerError::Connect {
            url: config.redacted_url(),
            reason: format!("no node answered: {}", failures.join("; ")),
        })
    }

    async fn connect_node(
        config: &BrokerConfig,
        url: &str,
        connection_name: &str,
    ) -> Result<RabbitBroker, BrokerError> {
        let node = redact_url(url);
        // Automatic recovery is off by default; never enable it (supervisors reconnect).
        // frame_max is left to the server (RabbitMQ: 128 KiB, and lapin keeps 8 MiB of buffers
        // per connection for it): a message's headers must fit in one frame, so asking for
        // less would make a message with large headers undeliverable and block the queue
        // (tests/hostile.rs publishes a 100 KB header).
        let properties =
            ConnectionProperties::default().with_connection_name(connection_name.into());
        let connect_error = |e: lapin::Error| tls::classify(&node, &e);
        let connection = if url.starts_with("amqps://") {
            let runtime = lapin::runtime::default_runtime().map_err(connect_error)?;
            Connection::connect_with_config(
                url,
                properties,
                tls::load(&config.tls, &node)?,
                runtime,
            )
            .await
        } else {
            Connection::connect(url, properties).await
        }
        .map_err(connect_error)?;
        let broker = RabbitBroker {
            inner: Arc::new(Inner {
                connection,
                config: config.clone(),
                node: node.clone(),
                lost: Arc::new(Signal::new()),
                errors: Arc::new(watch::channel(0).0),
            }),
        };
        broker.spawn_monitor();
        if let Err(e) = broker.declare_topology().await {
            let _ = broker.close().await;
            return Err(e);
        }
        tracing::info!(
            node = %node,
            name = connection_name,
            queue_type = %config.queue_type,
            "connected to RabbitMQ"
        );
        Ok(broker)
    }

    /// The node this connection is to: scheme, host and port of its URL.
    pub(super) fn node(&self) -> &str {
        &self.inner.node
    }

    /// Watch the connection: fire `lost` when it goes away, bump `errors` on every error event.
    fn spawn_monitor(&self) {
        let events = self.inner.connection.events_listener();
        let status = self.inner.connection.status().clone();
        let lost = self.inner.lost.clone();
        let errors = self.inner.errors.clone();
        // Holds no strong reference to the connection, so dropping every handle still closes it.
        tokio::spawn(async move {
            let mut events = Box::pin(events);
            let mut poll = tokio::time::interval(POLL_INTERVAL);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let already_lost = lost.wait();
            tokio::pin!(already_lost);
            loop {
                tokio::select! {
                    _ = &mut already_lost => return,
                    event = events.next() => match event {
                        Some(lapin::Event::Error(error)) => {
                            errors.send_modify(|n| *n = n.wrapping_add(1));
                            if !status.connected() {
                                tracing::warn!(%error, "RabbitMQ connection lost");
                                lost.fire(BrokerError::ConnectionClosed(error.to_string()));
                                return;
                            }
                        }
                        Some(_) => {}
                        None => {
                            lost.fire(BrokerError::ConnectionClosed("connection dropped".into()));
                            return;
                        }
                    },
                    _ = poll.tick() => {
                        if !status.connected() {
                            lost.fire(BrokerError::ConnectionClosed(describe(&status)));
                            errors.send_modify(|n| *n = n.wrapping_add(1));
                            return;
                        }
                    }
                }
            }
        });
    }

    async fn declare_topology(&self) -> Result<(), BrokerError> {
        let config = &self.inner.config;
        let channel = self.channel().await?;
        let declare_error = |what: String| {
            move |e: lapin::Error| BrokerError::Declare {
                what,
                reason: e.to_string(),
            }
        };
        let exchange = short(&config.exchange, "exchange")?;
        channel
            .exchange_declare(
                exchange.clone(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(declare_error(format!("exchange {:?}", config.exchange)))?;
        for route in Route::ALL {
            let queue = short(config.queue(route), "queue")?;
            let routing_key = short(config.routing_key(route), "routing key")?;
            let declared = channel
                .queue_declare(
                    queue.clone(),
                    QueueDeclareOptions::durable(),
                    queue_arguments(config, route),
                )
                .await
                .map_err(|e| (is_precondition_failed(&e), e.to_string()));
            if let Err((mismatch, reason)) = declared {
                if !mismatch {
                    return Err(BrokerError::Declare {
                        what: format!("queue {queue:?}"),
                        reason,
                    });
                }
                // The refusal closed the channel, and names only the first argument that
                // differs: ask again with the type alone to learn the queue's type.
                let existing = match queue_type_in(&reason) {
                    Some(t) => t,
                    None => self.existing_type(&queue, route).await,
                };
                return Err(BrokerError::QueueMismatch {
                    queue: config.queue(route).to_owned(),
                    wanted: config.queue_type,
                    existing,
                    reason,
                });
            }
            channel
                .queue_bind(
                    queue.clone(),
                    exchange.clone(),
                    routing_key,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(declare_error(format!(
                    "binding of queue {queue:?} to exchange {exchange:?}"
                )))?;
        }
        self.close_channel(&channel).await;
        Ok(())
    }

    /// The type of an existing `queue` (of `route`) that refused drover's declaration: it is
    /// declared again as drover would declare it with each type (quorum first: a classic
    /// declaration carries no type to compare), and the one the broker accepts is its type;
    /// failing that, a refusal that names `x-queue-type` says it. `unknown` when neither does
    /// (the type matches one of ours but other arguments differ, e.g. another delivery limit).
    async fn existing_type(&self, queue: &ShortString, route: Route) -> String {
        let mut refusals = Vec::new();
        for queue_type in [QueueType::Quorum, QueueType::Classic] {
            let Ok(channel) = self.channel().await else {
                return "unknown".into();
            };
            let config = BrokerConfig {
                queue_type,
                ..self.inner.config.clone()
            };
            let probe = channel.queue_declare(
                queue.clone(),
                QueueDeclareOptions::durable(),
                queue_arguments(&config, route),
            );
            let answer = self.bounded("queue.declare (type probe)", probe).await;
            self.close_channel(&channel).await;
            match answer {
                Ok(Ok(_)) => return queue_type.as_str().to_owned(),
                Ok(Err(e)) => refusals.push(e.to_string()),
                Err(_) => return "unknown".into(),
            }
        }
        refusals
            .iter()
            .find_map(|r| queue_type_in(r))
            .unwrap_or_else(|| "unknown".into())
    }

    /// Await a broker round trip, bounded by the connect timeout: a peer that stopped
    /// answering would otherwise hang it until heartbeats notice.
    async fn bounded<T>(
        &self,
        operation: &str,
        round_trip: impl Future<Output = lapin::Result<T>>,
    ) -> Result<lapin::Result<T>, BrokerError> {
        tokio::time::timeout(self.inner.config.connect_timeout(), round_trip)
            .await
            .map_err(|_| BrokerError::Timeout {
                operation: operation.to_owned(),
                timeout_ms: self.inner.config.connect_timeout_ms,
            })
    }

    /// Close a channel if it is still open, ignoring errors and timeouts (it is going away
    /// either way).
    async fn close_channel(&self, channel: &Channel) {
        if channel.status().connected() {
            let _ = self
                .bounded("channel.close", channel.close(REPLY_SUCCESS, "OK".into()))
                .await;
        }
    }

    /// Open a channel.
    async fn channel(&self) -> Result<Channel, BrokerError> {
        if let Some(reason) = self.lost_now() {
            return Err(reason);
        }
        let created = self
            .bounded("channel.open", self.inner.connection.create_channel())
            .await?;
        created.map_err(|e| {
            self.classify(&e)
                .unwrap_or(BrokerError::Channel(e.to_string()))
        })
    }

    /// If the connection is gone, the error saying so.
    fn lost_now(&self) -> Option<BrokerError> {
        if let Some(reason) = self.inner.lost.get() {
            return Some(reason);
        }
        let status = self.inner.connection.status();
        if status.connected() {
            None
        } else {
            let reason = BrokerError::ConnectionClosed(describe(status));
            self.inner.lost.fire(reason.clone());
            Some(reason)
        }
    }

    /// Classify a lapin error as "connection lost" / "channel closed" if it is one.
    fn classify(&self, error: &lapin::Error) -> Option<BrokerError> {
        if let Some(reason) = self.lost_now() {
            return Some(reason);
        }
        match error.kind() {
            ErrorKind::InvalidConnectionState(_)
            | ErrorKind::IOError(_)
            | ErrorKind::MissingHeartbeatError
            | ErrorKind::RuntimeShutdownError(_) => {
                Some(BrokerError::ConnectionClosed(error.to_string()))
            }
            ErrorKind::InvalidChannelState(..) | ErrorKind::InvalidChannel(_) => {
                Some(BrokerError::ChannelClosed(error.to_string()))
            }
            ErrorKind::ProtocolError(e) if matches!(e.kind(), AMQPErrorKind::Hard(_)) => {
                Some(BrokerError::ConnectionClosed(error.to_string()))
            }
            _ => None,
        }
    }

    pub(super) fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }

    pub(super) fn is_open(&self) -> bool {
        self.lost_now().is_none()
    }

    pub(super) async fn closed(&self) -> BrokerError {
        loop {
            if let Some(reason) = self.lost_now() {
                return reason;
            }
            tokio::select! {
                reason = self.inner.lost.wait() => return reason,
                () = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
    }

    pub(super) async fn close(&self) -> Result<(), BrokerError> {
        if self.lost_now().is_some() {
            return Ok(());
        }
        self.inner.lost.fire(BrokerError::ConnectionClosed(
            "closed by the application".into(),
        ));
        let closing = self
            .inner
            .connection
            .close(REPLY_SUCCESS, "closed by drover".into());
        match self.bounded("connection.close", closing).await? {
            Ok(()) => Ok(()),
            Err(_) if !self.inner.connection.status().connected() => Ok(()),
            Err(e) => Err(BrokerError::Operation {
                operation: "connection.close".into(),
                reason: e.to_string(),
            }),
        }
    }

    pub(super) async fn consumer(
        &self,
        queue: &str,
        prefetch: u16,
        tag: &str,
    ) -> Result<RabbitConsumer, BrokerError> {
        let queue_name = short(queue, "queue")?;
        let tag_name = short(tag, "consumer tag")?;
        let channel = self.channel().await?;
        let fail = |e: lapin::Error| {
            if is_not_found(&e) {
                BrokerError::QueueNotFound(queue.to_owned())
            } else {
                self.classify(&e).unwrap_or(BrokerError::Consume {
                    queue: queue.to_owned(),
                    reason: e.to_string(),
                })
            }
        };
        self.bounded(
            "basic.qos",
            channel.basic_qos(prefetch, BasicQosOptions::default()),
        )
        .await?
        .map_err(fail)?;
        let consume = channel.basic_consume(
            queue_name,
            tag_name,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        );
        let consumer = self
            .bounded("basic.consume", consume)
            .await?
            .map_err(fail)?;
        Ok(RabbitConsumer {
            broker: self.clone(),
            tag: consumer.tag().to_string(),
            queue: queue.to_owned(),
            consumer,
            channel,
            done: false,
        })
    }

    pub(super) async fn publisher(&self) -> Result<RabbitPublisher, BrokerError> {
        let channel = self.channel().await?;
        self.bounded(
            "confirm.select",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?
        .map_err(|e| {
            self.classify(&e)
                .unwrap_or(BrokerError::Channel(format!("confirm.select: {e}")))
        })?;
        Ok(RabbitPublisher {
            broker: self.clone(),
            channel,
        })
    }

    pub(super) async fn queue_stats(&self, queue: &str) -> Result<QueueStats, BrokerError> {
        let queue_name = short(queue, "queue")?;
        let channel = self.channel().await?;
        let declare = channel.queue_declare(
            queue_name,
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        );
        let result = self.bounded("queue.declare (passive)", declare).await;
        self.close_channel(&channel).await;
        let result = result?;
        match result {
            Ok(q) => Ok(QueueStats {
                ready: q.message_count(),
                consumers: q.consumer_count(),
                dropped: 0,
            }),
            Err(e) if is_not_found(&e) => Err(BrokerError::QueueNotFound(queue.to_owned())),
            Err(e) => Err(self.classify(&e).unwrap_or(BrokerError::Operation {
                operation: format!("passive declare of queue {queue:?}"),
                reason: e.to_string(),
            })),
        }
    }

    pub(super) async fn delete_topology(&self) -> Result<(), BrokerError> {
        let config = &self.inner.config;
        let mut first_error = None;
        for route in Route::ALL {
            let queue = short(config.queue(route), "queue")?;
            let channel = self.channel().await?;
            let delete = channel.queue_delete(queue.clone(), QueueDeleteOptions::default());
            let result = self.bounded("queue.delete", delete).await;
            self.close_channel(&channel).await;
            let result = result?;
            if let Err(e) = result
                && !is_not_found(&e)
            {
                first_error.get_or_insert(BrokerError::Operation {
                    operation: format!("delete queue {queue:?}"),
                    reason: e.to_string(),
                });
            }
        }
        let exchange = short(&config.exchange, "exchange")?;
        let channel = self.channel().await?;
        let delete = channel.exchange_delete(exchange.clone(), ExchangeDeleteOptions::default());
        let result = self.bounded("exchange.delete", delete).await;
        self.close_channel(&channel).await;
        let result = result?;
        if let Err(e) = result
            && !is_not_found(&e)
        {
            first_error.get_or_insert(BrokerError::Operation {
                operation: format!("delete exchange {exchange:?}"),
                reason: e.to_string(),
            });
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn describe(status: &lapin::ConnectionStatus) -> String {
    if status.errored() {
        "connection failed".into()
    } else if status.closed() || status.closing() {
        "connection closed".into()
    } else {
        "connection not open".into()
    }
}

/// Wait until `channel` is no longer open or the connection is lost.
async fn channel_closed(broker: &RabbitBroker, channel: &Channel, what: &str) -> BrokerError {
    let mut errors = broker.inner.errors.subscribe();
    loop {
        if let Some(reason) = broker.lost_now() {
            return reason;
        }
        if !channel.status().connected() {
            return BrokerError::ChannelClosed(format!("{what} channel closed"));
        }
        tokio::select! {
            reason = broker.inner.lost.wait() => return reason,
            _ = errors.changed() => {}
            () = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }
}

/// A consumer with its own channel.
pub(super) struct RabbitConsumer {
    broker: RabbitBroker,
    channel: Channel,
    consumer: lapin::Consumer,
    queue: String,
    tag: String,
    done: bool,
}

impl fmt::Debug for RabbitConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitConsumer")
            .field("channel", &self.channel.id())
            .field("queue", &self.queue)
            .field("tag", &self.tag)
            .field("done", &self.done)
            .finish()
    }
}

impl RabbitConsumer {
    pub(super) async fn next(&mut self) -> Option<Result<Delivery, BrokerError>> {
        if self.done {
            return None;
        }
        let next = tokio::select! {
            biased;
            reason = channel_closed(&self.broker, &self.channel, "consumer") => {
                self.done = true;
                return Some(Err(reason));
            }
            next = self.consumer.next() => next,
        };
        match next {
            Some(Ok(delivery)) => Some(Ok(convert(delivery))),
            Some(Err(e)) => {
                self.done = true;
                Some(Err(self
                    .broker
                    .classify(&e)
                    .unwrap_or(BrokerError::ChannelClosed(e.to_string()))))
            }
            None => {
                self.done = true;
                None
            }
        }
    }

    pub(super) fn queue(&self) -> &str {
        &self.queue
    }

    pub(super) fn tag(&self) -> &str {
        &self.tag
    }

    pub(super) async fn close(self) -> Result<(), BrokerError> {
        // Closing the channel cancels the consumer and requeues its unacked deliveries.
        if self.channel.status().connected() {
            let closing = self.channel.close(REPLY_SUCCESS, "consumer closed".into());
            self.broker
                .bounded("channel.close", closing)
                .await?
                .or_else(|e| match self.broker.classify(&e) {
                    Some(_) => Ok(()),
                    None => Err(BrokerError::Operation {
                        operation: "channel.close".into(),
                        reason: e.to_string(),
                    }),
                })?;
        }
        Ok(())
    }
}

/// Turn a lapin delivery into ours.
fn convert(delivery: lapin::message::Delivery) -> Delivery {
    let lapin::message::Delivery {
        delivery_tag,
        exchange,
        routing_key,
        redelivered,
        properties,
        data,
        acker,
    } = delivery;
    let headers = properties
        .headers()
        .as_ref()
        .map(|table| {
            table
                .inner()
                .iter()
                .filter_map(|(key, value)| {
                    let value = match value {
                        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?,
                        AMQPValue::ShortString(s) => s.as_str(),
                        _ => return None,
                    };
                    Some((key.to_string(), value.to_owned()))
                })
                .collect()
        })
        .unwrap_or_default();
    let delivery_count = properties.headers().as_ref().and_then(|table| {
        let v = table.inner().get("x-delivery-count")?;
        match v {
            AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
            AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
            AMQPValue::LongUInt(n) => Some(u64::from(*n)),
            AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
            AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
            AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
            AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
            _ => None,
        }
    });
    Delivery {
        body: data,
        message_id: properties.message_id().as_ref().map(ToString::to_string),
        correlation_id: properties
            .correlation_id()
            .as_ref()
            .map(ToString::to_string),
        headers,
        redelivered,
        delivery_count,
        delivery_tag,
        exchange: exchange.to_string(),
        routing_key: routing_key.to_string(),
        settled: false,
        settler: Settler::Rabbit(acker),
    }
}

fn settle_result(result: lapin::Result<bool>, tag: u64, action: &str) -> Result<(), BrokerError> {
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err(BrokerError::ChannelClosed(format!(
            "cannot {action} delivery {tag}: its channel is closed (the broker requeues it)"
        ))),
        Err(e) => Err(match e.kind() {
            ErrorKind::InvalidChannelState(..)
            | ErrorKind::InvalidChannel(_)
            | ErrorKind::ProtocolError(_) => BrokerError::ChannelClosed(format!(
                "cannot {action} delivery {tag}: {e} (the broker requeues it)"
            )),
            ErrorKind::InvalidConnectionState(_)
            | ErrorKind::IOError(_)
            | ErrorKind::MissingHeartbeatError => BrokerError::ConnectionClosed(format!(
                "cannot {action} delivery {tag}: {e} (the broker requeues it)"
            )),
            _ => BrokerError::Settle {
                delivery_tag: tag,
                reason: e.to_string(),
            },
        }),
    }
}

/// Longest wait for lapin to take an ack or nack. It answers at once on a live channel (a
/// settlement has no reply from the broker); right after the connection closed, its promise
/// can stay unresolved forever (seen in the conformance suite), which would hang the worker.
const SETTLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

async fn bounded_settle(
    settle: impl std::future::Future<Output = lapin::Result<bool>>,
    tag: u64,
    action: &str,
) -> Result<(), BrokerError> {
    match tokio::time::timeout(SETTLE_TIMEOUT, settle).await {
        Ok(result) => settle_result(result, tag, action),
        Err(_) => Err(BrokerError::ConnectionClosed(format!(
            "cannot {action} delivery {tag}: no answer within {} ms (the broker requeues it)",
            SETTLE_TIMEOUT.as_millis()
        ))),
    }
}

pub(super) async fn ack(acker: &Acker, tag: u64) -> Result<(), BrokerError> {
    bounded_settle(acker.ack(BasicAckOptions::default()), tag, "ack").await
}

const NACK_REQUEUE: BasicNackOptions = BasicNackOptions {
    multiple: false,
    requeue: true,
};

pub(super) async fn nack_requeue(acker: &Acker, tag: u64) -> Result<(), BrokerError> {
    bounded_settle(acker.nack(NACK_REQUEUE), tag, "nack").await
}

/// Nack-with-requeue a delivery being dropped unsettled.
///
/// The nack is handed to lapin's IO thread synchronously, on the first poll of the future, so
/// it goes out at once even without a runtime or if the runtime is shutting down; the outcome
/// is then awaited (for logging) on the current tokio runtime if there is one.
pub(super) fn requeue_on_drop(acker: &Acker, tag: u64) {
    let acker = acker.clone();
    let mut nack = Box::pin(async move { acker.nack(NACK_REQUEUE).await });
    let log = move |result: lapin::Result<bool>| match settle_result(result, tag, "requeue") {
        Ok(()) => tracing::debug!(delivery_tag = tag, "dropped delivery requeued"),
        Err(error) => tracing::debug!(delivery_tag = tag, %error, "dropped delivery not nacked"),
    };
    match nack.as_mut().now_or_never() {
        Some(result) => log(result),
        None => {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { log(nack.await) });
            }
        }
    }
}

/// A publisher with its own confirm-mode channel.
#[derive(Clone, Debug)]
pub(super) struct RabbitPublisher {
    broker: RabbitBroker,
    channel: Channel,
}

impl RabbitPublisher {
    pub(super) async fn publish(&self, route: Route, msg: Outgoing) -> Result<(), BrokerError> {
        let config = self.broker.config();
        let exchange = short(&config.exchange, "exchange")?;
        let routing_key = short(config.routing_key(route), "routing key")?;
        let mut properties = BasicProperties::default().with_delivery_mode(PERSISTENT);
        if let Some(id) = &msg.message_id {
            properties = properties.with_message_id(short(id, "message_id")?);
        }
        if let Some(id) = &msg.correlation_id {
            properties = properties.with_correlation_id(short(id, "correlation_id")?);
        }
        if !msg.headers.is_empty() {
            let mut table = BTreeMap::new();
            for (key, value) in &msg.headers {
                table.insert(
                    short(key, "header key")?,
                    AMQPValue::LongString(value.as_str().into()),
                );
            }
            properties = properties.with_headers(FieldTable::from(table));
        }
        if let Some(reason) = self.broker.lost_now() {
            return Err(reason);
        }
        let confirmed = async {
            self.channel
                .basic_publish(
                    exchange,
                    routing_key,
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &msg.body,
                    properties,
                )
                .await?
                .await
        };
        let failed = |e: lapin::Error| {
            if !self.channel.status().connected() {
                self.broker
                    .lost_now()
                    .unwrap_or(BrokerError::ChannelClosed(e.to_string()))
            } else {
                self.broker.classify(&e).unwrap_or(BrokerError::Publish {
                    route,
                    reason: e.to_string(),
                })
            }
        };
        match tokio::time::timeout(config.confirm_timeout(), confirmed).await {
            Err(_) => Err(BrokerError::ConfirmTimeout {
                route,
                timeout_ms: config.confirm_timeout_ms,
            }),
            Ok(Err(e)) => Err(failed(e)),
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(returned)))) => Err(BrokerError::Unroutable {
                route,
                reason: returned.reply_text.to_string(),
            }),
            Ok(Ok(Confirmation::Nack(_))) => Err(BrokerError::PublishNacked { route }),
            Ok(Ok(Confirmation::NotRequested)) => Err(BrokerError::Publish {
                route,
                reason: "the channel is not in confirm mode".into(),
            }),
        }
    }

    pub(super) async fn closed(&self) -> BrokerError {
        channel_closed(&self.broker, &self.channel, "publisher").await
    }

    pub(super) async fn close(&self) -> Result<(), BrokerError> {
        self.broker.close_channel(&self.channel).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_type_is_read_from_a_refusal() {
        let cases = [
            (
                "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q' in vhost '/': \
                 received the value 'quorum' of type 'longstr' but current is the value 'classic' \
                 of type 'longstr'",
                Some("classic"),
            ),
            (
                "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q' in vhost '/': \
                 received 'quorum' but current is 'stream'",
                Some("stream"),
            ),
            (
                "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q' in vhost '/': \
                 received the value 'quorum' of type 'longstr' but current is none",
                Some("classic"),
            ),
            (
                "PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-exchange' for queue 'q': \
                 received the value 'd' of type 'longstr' but current is none",
                None,
            ),
        ];
        for (reply, want) in cases {
            assert_eq!(queue_type_in(reply).as_deref(), want, "{reply}");
        }
    }
}
