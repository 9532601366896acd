//! The in-memory broker: RabbitMQ's semantics for the subset drover uses, in process.
//!
//! * Exchanges are direct: a message goes to every queue bound with its routing key.
//! * Queues keep their messages until the process exits (or [`Broker::delete_topology`]).
//! * Deliveries are pushed to consumers (round robin) as long as they have room in their
//!   prefetch window, like RabbitMQ does, so `QueueStats::ready` only counts messages not yet
//!   handed to a consumer.
//! * Nacked-with-requeue messages, and the unsettled deliveries of a consumer that goes away,
//!   return to the **front** of their queue, marked `redelivered`.
//! * Publishes are confirmed at once, except beyond the work queue's bound
//!   ([`BrokerConfig::memory_max_length`]): nacked, like RabbitMQ's `reject-publish`. The
//!   failed and invalid queues keep their newest [`BrokerConfig::memory_keep_newest`] and count
//!   what they drop (`drop-head`).
//!
//! Locking: one mutex guards the whole broker. Nothing that could take it again (a
//! [`Delivery`], whose `Drop` requeues) is ever created or dropped while it is held: consumers
//! receive raw messages over a channel and build the `Delivery` outside the lock.
//!
//! [`Broker::delete_topology`]: super::Broker::delete_topology

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::{BrokerConfig, BrokerError, Delivery, Outgoing, QueueStats, Route, Settler, Signal};

/// An in-process message broker with RabbitMQ's queueing semantics (see the module docs of
/// [`crate::broker`]). Cheap to clone; clones share the same queues.
///
/// Connect to it with [`Broker::connect`](super::Broker::connect) and `url = "memory"`.
#[derive(Clone, Default)]
pub struct MemoryBroker {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// exchange -> routing key -> bound queues.
    exchanges: HashMap<String, HashMap<String, BTreeSet<String>>>,
    queues: HashMap<String, Queue>,
    consumers: HashMap<u64, ConsumerState>,
    /// Open connections and their "lost" latches.
    connections: HashMap<u64, Arc<Signal>>,
    next_id: u64,
}

#[derive(Default)]
struct Queue {
    ready: VecDeque<Message>,
    /// Consumer ids, in subscription order.
    consumers: Vec<u64>,
    /// Index in `consumers` of the next one to try (round robin).
    next_consumer: usize,
    /// Messages dropped from the head to stay within `memory_keep_newest`.
    dropped: u64,
}

#[derive(Clone)]
struct Message {
    body: Vec<u8>,
    message_id: Option<String>,
    correlation_id: Option<String>,
    headers: BTreeMap<String, String>,
    exchange: String,
    routing_key: String,
    redelivered: bool,
}

struct ConsumerState {
    connection: u64,
    queue: String,
    prefetch: u16,
    next_tag: u64,
    unacked: BTreeMap<u64, Message>,
    tx: mpsc::UnboundedSender<Event>,
    /// Set once the consumer is removed: anything still in its channel is stale (requeued).
    dead: Arc<AtomicBool>,
}

impl ConsumerState {
    fn has_room(&self) -> bool {
        self.prefetch == 0 || self.unacked.len() < usize::from(self.prefetch)
    }
}

/// What the broker sends a consumer.
enum Event {
    Deliver { tag: u64, message: Message },
    Closed(BrokerError),
}

impl State {
    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn declare(&mut self, config: &BrokerConfig) {
        let exchange = self.exchanges.entry(config.exchange.clone()).or_default();
        for route in Route::ALL {
            let queue = config.queue(route);
            exchange
                .entry(config.routing_key(route).to_owned())
                .or_default()
                .insert(queue.to_owned());
            self.queues.entry(queue.to_owned()).or_default();
        }
    }

    /// Hand ready messages of `queue` to its consumers while any has room.
    fn dispatch(&mut self, queue: &str) {
        let Some(q) = self.queues.get_mut(queue) else {
            return;
        };
        while !q.ready.is_empty() && !q.consumers.is_empty() {
            let n = q.consumers.len();
            let chosen = (0..n).map(|i| (q.next_consumer + i) % n).find(|&idx| {
                self.consumers
                    .get(&q.consumers[idx])
                    .is_some_and(ConsumerState::has_room)
            });
            let Some(idx) = chosen else {
                break;
            };
            let id = q.consumers[idx];
            let (Some(consumer), Some(message)) =
                (self.consumers.get_mut(&id), q.ready.pop_front())
            else {
                break;
            };
            q.next_consumer = (idx + 1) % n;
            consumer.next_tag += 1;
            let tag = consumer.next_tag;
            consumer.unacked.insert(tag, message.clone());
            if consumer.tx.send(Event::Deliver { tag, message }).is_err() {
                // The receiving end is gone without the consumer being removed (cannot happen
                // through the public API): treat it as closed.
                q.consumers.remove(idx);
                q.next_consumer = 0;
                if let Some(consumer) = self.consumers.remove(&id) {
                    consumer.dead.store(true, Ordering::SeqCst);
                    requeue_front(q, consumer.unacked);
                }
            }
        }
    }

    /// Remove a consumer, requeue its unsettled deliveries and tell it why (if `reason`).
    fn remove_consumer(&mut self, id: u64, reason: Option<BrokerError>) {
        let Some(consumer) = self.consumers.remove(&id) else {
            return;
        };
        consumer.dead.store(true, Ordering::SeqCst);
        if let Some(reason) = reason {
            // Ignored if the consumer is being dropped.
            let _ = consumer.tx.send(Event::Closed(reason));
        }
        if let Some(q) = self.queues.get_mut(&consumer.queue) {
            if let Some(pos) = q.consumers.iter().position(|c| *c == id) {
                q.consumers.remove(pos);
                if q.next_consumer > pos {
                    q.next_consumer -= 1;
                }
                if q.next_consumer >= q.consumers.len() {
                    q.next_consumer = 0;
                }
            }
            requeue_front(q, consumer.unacked);
        }
        self.dispatch(&consumer.queue);
    }

    fn close_connection(&mut self, id: u64, reason: &BrokerError) {
        if let Some(signal) = self.connections.remove(&id) {
            signal.fire(reason.clone());
        }
        let consumers: Vec<u64> = self
            .consumers
            .iter()
            .filter(|(_, c)| c.connection == id)
            .map(|(cid, _)| *cid)
            .collect();
        for cid in consumers {
            self.remove_consumer(cid, Some(reason.clone()));
        }
    }
}

/// Put `unacked` back at the front of `q`, in their original order, marked redelivered.
fn requeue_front(q: &mut Queue, unacked: BTreeMap<u64, Message>) {
    for (_, mut message) in unacked.into_iter().rev() {
        message.redelivered = true;
        q.ready.push_front(message);
    }
}

impl MemoryBroker {
    /// A new, empty broker.
    #[must_use]
    pub fn new() -> Self {
        MemoryBroker::default()
    }

    /// Open a connection and declare `config`'s topology (idempotently). Usually called through
    /// [`Broker::connect`](super::Broker::connect).
    pub fn connect(&self, config: &BrokerConfig) -> Result<MemoryConnection, BrokerError> {
        config.validate()?;
        let lost = Arc::new(Signal::new());
        let mut state = self.shared.state.lock();
        state.declare(config);
        let id = state.next_id();
        state.connections.insert(id, lost.clone());
        drop(state);
        Ok(MemoryConnection {
            handle: Arc::new(ConnectionHandle {
                broker: self.clone(),
                id,
                lost,
                config: config.clone(),
            }),
        })
    }

    /// Close every connection currently open on this broker, like
    /// `rabbitmqctl close_all_connections`: their consumers end (unsettled deliveries are
    /// requeued), publishes fail and every `closed()` resolves. New connections work as usual.
    pub fn close_all_connections(&self) {
        let reason = BrokerError::ConnectionClosed(
            "CONNECTION_FORCED - closed by close_all_connections".into(),
        );
        let mut state = self.shared.state.lock();
        let ids: Vec<u64> = state.connections.keys().copied().collect();
        for id in ids {
            state.close_connection(id, &reason);
        }
    }

    /// Number of open connections.
    #[must_use]
    pub fn connection_count(&self) -> usize {
        self.shared.state.lock().connections.len()
    }
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state.lock();
        f.debug_struct("MemoryBroker")
            .field("exchanges", &state.exchanges.len())
            .field("queues", &state.queues.len())
            .field("consumers", &state.consumers.len())
            .field("connections", &state.connections.len())
            .finish()
    }
}

/// One connection to a [`MemoryBroker`] (the [`Broker::Memory`](super::Broker::Memory)
/// variant). Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct MemoryConnection {
    handle: Arc<ConnectionHandle>,
}

struct ConnectionHandle {
    broker: MemoryBroker,
    id: u64,
    lost: Arc<Signal>,
    config: BrokerConfig,
}

impl Drop for ConnectionHandle {
    fn drop(&mut self) {
        // Last user (broker clones, consumers, publishers) gone: forget the connection.
        self.broker.shared.state.lock().connections.remove(&self.id);
    }
}

impl fmt::Debug for MemoryConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryConnection")
            .field("id", &self.handle.id)
            .field("lost", &self.handle.lost.get())
            .finish()
    }
}

impl MemoryConnection {
    pub(super) fn config(&self) -> &BrokerConfig {
        &self.handle.config
    }

    pub(super) fn is_open(&self) -> bool {
        self.handle.lost.get().is_none()
    }

    pub(super) async fn closed(&self) -> BrokerError {
        self.handle.lost.wait().await
    }

    fn ensure_open(&self) -> Result<(), BrokerError> {
        match self.handle.lost.get() {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }

    fn state(&self) -> parking_lot::MutexGuard<'_, State> {
        self.handle.broker.shared.state.lock()
    }

    pub(super) fn close(&self) {
        let reason = BrokerError::ConnectionClosed("closed by the application".into());
        self.state().close_connection(self.handle.id, &reason);
    }

    pub(super) fn consumer(
        &self,
        queue: &str,
        prefetch: u16,
        tag: &str,
    ) -> Result<MemoryConsumer, BrokerError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let dead = Arc::new(AtomicBool::new(false));
        let mut state = self.state();
        // Checked under the lock, so a concurrent close cannot miss this consumer.
        self.ensure_open()?;
        if !state.queues.contains_key(queue) {
            return Err(BrokerError::QueueNotFound(queue.to_owned()));
        }
        let id = state.next_id();
        if let Some(q) = state.queues.get_mut(queue) {
            q.consumers.push(id);
        }
        state.consumers.insert(
            id,
            ConsumerState {
                connection: self.handle.id,
                queue: queue.to_owned(),
                prefetch,
                next_tag: 0,
                unacked: BTreeMap::new(),
                tx,
                dead: dead.clone(),
            },
        );
        state.dispatch(queue);
        drop(state);
        Ok(MemoryConsumer {
            connection: self.clone(),
            id,
            queue: queue.to_owned(),
            tag: if tag.is_empty() {
                format!("amq.ctag-memory-{id}")
            } else {
                tag.to_owned()
            },
            rx,
            dead,
        })
    }

    pub(super) fn publisher(&self) -> Result<MemoryPublisher, BrokerError> {
        self.ensure_open()?;
        Ok(MemoryPublisher {
            connection: self.clone(),
            channel: Arc::new(Signal::new()),
        })
    }

    pub(super) fn queue_stats(&self, queue: &str) -> Result<QueueStats, BrokerError> {
        let state = self.state();
        self.ensure_open()?;
        let q = state
            .queues
            .get(queue)
            .ok_or_else(|| BrokerError::QueueNotFound(queue.to_owned()))?;
        Ok(QueueStats {
            ready: u32::try_from(q.ready.len()).unwrap_or(u32::MAX),
            consumers: u32::try_from(q.consumers.len()).unwrap_or(u32::MAX),
            dropped: q.dropped,
        })
    }

    pub(super) fn delete_topology(&self) -> Result<(), BrokerError> {
        let config = &self.handle.config;
        let mut state = self.state();
        self.ensure_open()?;
        for route in Route::ALL {
            let queue = config.queue(route);
            let consumers: Vec<u64> = state
                .consumers
                .iter()
                .filter(|(_, c)| c.queue == queue)
                .map(|(id, _)| *id)
                .collect();
            // Like RabbitMQ: consumers of a deleted queue are cancelled (their next() ends).
            for id in consumers {
                state.remove_consumer(id, None);
            }
            state.queues.remove(queue);
            for bindings in state.exchanges.values_mut() {
                for queues in bindings.values_mut() {
                    queues.remove(queue);
                }
            }
        }
        state.exchanges.remove(&config.exchange);
        Ok(())
    }
}

/// A consumer on a [`MemoryBroker`] queue.
pub(super) struct MemoryConsumer {
    connection: MemoryConnection,
    id: u64,
    queue: String,
    tag: String,
    rx: mpsc::UnboundedReceiver<Event>,
    dead: Arc<AtomicBool>,
}

impl fmt::Debug for MemoryConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryConsumer")
            .field("id", &self.id)
            .field("queue", &self.queue)
            .field("tag", &self.tag)
            .finish()
    }
}

impl MemoryConsumer {
    pub(super) async fn next(&mut self) -> Option<Result<Delivery, BrokerError>> {
        loop {
            match self.rx.recv().await? {
                Event::Deliver { tag, message } => {
                    if self.dead.load(Ordering::SeqCst) {
                        // Requeued when the consumer was closed; skip.
                        continue;
                    }
                    return Some(Ok(Delivery {
                        body: message.body,
                        message_id: message.message_id,
                        correlation_id: message.correlation_id,
                        headers: message.headers,
                        redelivered: message.redelivered,
                        delivery_count: None,
                        delivery_tag: tag,
                        exchange: message.exchange,
                        routing_key: message.routing_key,
                        settled: false,
                        settler: Settler::Memory(MemoryAcker {
                            shared: self.connection.handle.broker.shared.clone(),
                            consumer: self.id,
                        }),
                    }));
                }
                Event::Closed(reason) => return Some(Err(reason)),
            }
        }
    }

    pub(super) fn queue(&self) -> &str {
        &self.queue
    }

    pub(super) fn tag(&self) -> &str {
        &self.tag
    }

    pub(super) fn close(self) {
        // Drop does it.
    }
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        // The lock is released before `rx` (and the raw messages in it) is dropped.
        self.connection.state().remove_consumer(self.id, None);
    }
}

/// Settles one consumer's deliveries.
pub(super) struct MemoryAcker {
    shared: Arc<Shared>,
    consumer: u64,
}

impl MemoryAcker {
    /// Remove delivery `tag` from the consumer's unacked set and give it to `then`.
    fn settle(&self, tag: u64, then: impl FnOnce(&mut Queue, Message)) -> Result<(), BrokerError> {
        let mut state = self.shared.state.lock();
        let Some(consumer) = state.consumers.get_mut(&self.consumer) else {
            return Err(BrokerError::ChannelClosed(format!(
                "cannot settle delivery {tag}: its consumer is closed (the message was requeued)"
            )));
        };
        let Some(message) = consumer.unacked.remove(&tag) else {
            return Err(BrokerError::Settle {
                delivery_tag: tag,
                reason: "unknown delivery tag".into(),
            });
        };
        let queue = consumer.queue.clone();
        if let Some(q) = state.queues.get_mut(&queue) {
            then(q, message);
        }
        state.dispatch(&queue);
        Ok(())
    }

    pub(super) fn ack(&self, tag: u64) -> Result<(), BrokerError> {
        self.settle(tag, |_, _| {})
    }

    pub(super) fn nack_requeue(&self, tag: u64) -> Result<(), BrokerError> {
        self.settle(tag, |q, mut message| {
            message.redelivered = true;
            q.ready.push_front(message);
        })
    }

    pub(super) fn requeue_on_drop(&self, tag: u64) {
        // Fails only if the consumer is gone, in which case the message was requeued already.
        let _ = self.nack_requeue(tag);
    }
}

/// A publisher on a [`MemoryBroker`].
#[derive(Clone)]
pub(super) struct MemoryPublisher {
    connection: MemoryConnection,
    channel: Arc<Signal>,
}

impl fmt::Debug for MemoryPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryPublisher")
            .field("connection", &self.connection)
            .field("closed", &self.channel.get())
            .finish()
    }
}

impl MemoryPublisher {
    pub(super) fn publish(&self, route: Route, msg: Outgoing) -> Result<(), BrokerError> {
        let config = self.connection.config();
        let mut state = self.connection.state();
        self.connection.ensure_open()?;
        if let Some(reason) = self.channel.get() {
            return Err(reason);
        }
        let routing_key = config.routing_key(route);
        let Some(bindings) = state.exchanges.get(&config.exchange) else {
            // RabbitMQ closes the channel with a 404 in this case.
            let reason = BrokerError::ChannelClosed(format!(
                "NOT_FOUND - no exchange '{}'",
                config.exchange
            ));
            self.channel.fire(reason.clone());
            return Err(reason);
        };
        let queues: Vec<String> = bindings
            .get(routing_key)
            .map(|qs| qs.iter().cloned().collect())
            .unwrap_or_default();
        if queues.is_empty() {
            return Err(BrokerError::Unroutable {
                route,
                reason: "NO_ROUTE".into(),
            });
        }
        // The work queue refuses beyond its bound (the publisher sees a nack and the message
        // stays with its sender); the failed and invalid queues drop their oldest instead.
        let (max, keep) = match route {
            Route::Work => (config.memory_max_length, 0),
            Route::Failed | Route::Invalid => (0, config.memory_keep_newest),
        };
        if max > 0
            && queues
                .iter()
                .any(|q| state.queues.get(q).is_some_and(|q| q.ready.len() >= max))
        {
            return Err(BrokerError::PublishNacked { route });
        }
        let message = Message {
            body: msg.body,
            message_id: msg.message_id,
            correlation_id: msg.correlation_id,
            headers: msg.headers,
            exchange: config.exchange.clone(),
            routing_key: routing_key.to_owned(),
            redelivered: false,
        };
        for queue in &queues {
            if let Some(q) = state.queues.get_mut(queue) {
                q.ready.push_back(message.clone());
                while keep > 0 && q.ready.len() > keep {
                    q.ready.pop_front();
                    q.dropped += 1;
                }
            }
            state.dispatch(queue);
        }
        Ok(())
    }

    pub(super) async fn closed(&self) -> BrokerError {
        tokio::select! {
            reason = self.connection.closed() => reason,
            reason = self.channel.wait() => reason,
        }
    }

    pub(super) fn close(&self) {
        self.channel.fire(BrokerError::ChannelClosed(
            "publisher closed by the application".into(),
        ));
    }
}
