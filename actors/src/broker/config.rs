//! `[broker]`: where the broker is (one node, or a cluster's nodes in turn), how drover talks
//! to it (TLS, timeouts) and which topology it declares (names, queue type, delivery limit).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{BrokerError, MAX_SHORT_STRING, Route};

/// The [`BrokerConfig::url`] value that selects the in-memory broker.
pub const MEMORY_URL: &str = "memory";

/// How drover reaches its message broker and which topology it uses.
///
/// Every field has a default, so an empty configuration section selects the in-memory broker
/// with the standard names.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Where the broker is: `"memory"` for the in-process [`MemoryBroker`](super::MemoryBroker),
    /// otherwise an AMQP URL including credentials and the (percent-encoded) vhost, e.g.
    /// `amqp://guest:guest@127.0.0.1:5672/%2f`, or `amqps://` for TLS. Several URLs separated
    /// by commas are the nodes of one cluster ([`urls`](Self::urls)); a comma inside a
    /// password must be percent-encoded (`%2C`).
    pub url: String,
    /// TLS settings for `amqps://` URLs.
    pub tls: BrokerTlsConfig,
    /// Type of the three queues drover declares (RabbitMQ only).
    pub queue_type: QueueType,
    /// Quorum queues only: the queues' `x-delivery-limit`, and the poison guard's limit on
    /// the broker's `x-delivery-count`. A delivery past it is dead-lettered to the invalid
    /// queue (the work and failed queues) by the broker, or quarantined by drover first.
    pub delivery_limit: u32,
    /// Name of the durable direct exchange every message is published to.
    pub exchange: String,
    /// Durable queue holding messages waiting to be delivered ([`Route::Work`]).
    pub work_queue: String,
    /// Durable queue receiving messages whose delivery failed permanently ([`Route::Failed`]).
    pub failed_queue: String,
    /// Durable queue receiving messages that could not be parsed or validated ([`Route::Invalid`]).
    pub invalid_queue: String,
    /// Maximum number of unacknowledged deliveries per consumer (AMQP `basic.qos`); `0` means
    /// unlimited.
    pub prefetch: u16,
    /// How long one connect to one node may take (TCP, TLS, AMQP handshake and topology
    /// declaration), in milliseconds.
    pub connect_timeout_ms: u64,
    /// How long [`Publisher::publish`](super::Publisher::publish) waits for the broker's
    /// publisher confirm, in milliseconds.
    pub confirm_timeout_ms: u64,
    /// In-memory broker only: the work queue holds at most this many ready messages; a publish
    /// beyond it is refused as a nack ([`BrokerError::PublishNacked`], RabbitMQ's
    /// `x-overflow = reject-publish`), so nothing is dropped silently. `0`: unbounded.
    pub memory_max_length: usize,
    /// In-memory broker only: the failed and invalid queues keep the newest this many messages
    /// and count the older ones they drop ([`QueueStats::dropped`](super::QueueStats)). Their
    /// rows stay in the store, so a dropped failed message can still be retried by id.
    /// `0`: unbounded.
    pub memory_keep_newest: usize,
}

/// TLS to RabbitMQ (`amqps://` URLs). The server's certificate is always verified, and its
/// name against the URL's host; the public web roots are trusted, plus [`ca_file`](Self::ca_file).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerTlsConfig {
    /// PEM file of the certificate authority (or chain) that signed the broker's certificate;
    /// empty: the public web roots only (enough for CloudAMQP, Amazon MQ and the like).
    pub ca_file: String,
    /// PEM file of the client certificate for mutual TLS; empty: none. Needs `key_file`.
    pub cert_file: String,
    /// PEM file of the client certificate's private key (PKCS#8, RSA or SEC1).
    pub key_file: String,
}

/// The RabbitMQ queue type of drover's queues.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueType {
    /// Classic queues, declared without arguments as drover always has. The default: a queue
    /// cannot change its type once declared, so a new default would stop every existing
    /// deployment at upgrade.
    #[default]
    Classic,
    /// Quorum queues (`x-queue-type = quorum`): replicated across a cluster's nodes, the type
    /// RabbitMQ recommends for data that must not be lost.
    Quorum,
}

impl QueueType {
    /// The `x-queue-type` word.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

impl fmt::Display for QueueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            url: MEMORY_URL.to_owned(),
            tls: BrokerTlsConfig::default(),
            queue_type: QueueType::Classic,
            delivery_limit: 10_000,
            exchange: "drover".to_owned(),
            work_queue: "drover.outbound".to_owned(),
            failed_queue: "drover.failed".to_owned(),
            invalid_queue: "drover.invalid".to_owned(),
            prefetch: 256,
            connect_timeout_ms: 5_000,
            confirm_timeout_ms: 10_000,
            memory_max_length: 100_000,
            memory_keep_newest: 10_000,
        }
    }
}

impl fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("url", &self.redacted_url())
            .field("tls", &self.tls)
            .field("queue_type", &self.queue_type)
            .field("delivery_limit", &self.delivery_limit)
            .field("exchange", &self.exchange)
            .field("work_queue", &self.work_queue)
            .field("failed_queue", &self.failed_queue)
            .field("invalid_queue", &self.invalid_queue)
            .field("prefetch", &self.prefetch)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("confirm_timeout_ms", &self.confirm_timeout_ms)
            .field("memory_max_length", &self.memory_max_length)
            .field("memory_keep_newest", &self.memory_keep_newest)
            .finish()
    }
}

impl BrokerConfig {
    /// True when [`url`](Self::url) selects the in-memory broker.
    #[must_use]
    pub fn is_memory(&self) -> bool {
        self.url.trim() == MEMORY_URL
    }

    /// The nodes of [`url`](Self::url), in the order given (one for a single broker).
    #[must_use]
    pub fn urls(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect()
    }

    /// The queue a [`Route`] leads to. The routing key of a route is the same string.
    #[must_use]
    pub fn queue(&self, route: Route) -> &str {
        match route {
            Route::Work => &self.work_queue,
            Route::Failed => &self.failed_queue,
            Route::Invalid => &self.invalid_queue,
        }
    }

    /// The routing key used to publish on `route` (equal to [`queue`](Self::queue)).
    #[must_use]
    pub fn routing_key(&self, route: Route) -> &str {
        self.queue(route)
    }

    /// [`url`](Self::url) as errors and logs name it: scheme, host and port of each node.
    #[must_use]
    pub fn redacted_url(&self) -> String {
        if self.is_memory() {
            return MEMORY_URL.to_owned();
        }
        self.urls()
            .into_iter()
            .map(redact_url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// [`connect_timeout_ms`](Self::connect_timeout_ms) as a [`Duration`].
    #[must_use]
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// [`confirm_timeout_ms`](Self::confirm_timeout_ms) as a [`Duration`].
    #[must_use]
    pub fn confirm_timeout(&self) -> Duration {
        Duration::from_millis(self.confirm_timeout_ms)
    }

    /// Check the configuration without connecting: non-empty `amqp://` / `amqps://` URLs (or
    /// `"memory"`), a client certificate with its key, names of at most 255 bytes, three
    /// distinct queue names, non-zero timeouts and delivery limit.
    pub fn validate(&self) -> Result<(), BrokerError> {
        let invalid = |reason: String| Err(BrokerError::InvalidConfig(reason));
        if self.url.trim().is_empty() {
            return invalid(
                "broker.url must not be empty (use \"memory\" for the in-memory broker)".into(),
            );
        }
        if !self.is_memory() {
            for url in self.urls() {
                if !url.starts_with("amqp://") && !url.starts_with("amqps://") {
                    return invalid(format!(
                        "broker.url {} is neither \"memory\" nor amqp:// or amqps:// URLs",
                        redact_url(url)
                    ));
                }
            }
        }
        if self.tls.cert_file.trim().is_empty() != self.tls.key_file.trim().is_empty() {
            return invalid(
                "broker.tls.cert_file and broker.tls.key_file go together: set both for \
                 mutual TLS, or neither"
                    .into(),
            );
        }
        for (field, name) in [
            ("exchange", &self.exchange),
            ("work_queue", &self.work_queue),
            ("failed_queue", &self.failed_queue),
            ("invalid_queue", &self.invalid_queue),
        ] {
            if name.is_empty() {
                return invalid(format!("broker.{field} must not be empty"));
            }
            if name.len() > MAX_SHORT_STRING {
                return invalid(format!(
                    "broker.{field} is longer than {MAX_SHORT_STRING} bytes"
                ));
            }
            if name.starts_with("amq.") {
                return invalid(format!(
                    "broker.{field} {name:?} uses the reserved \"amq.\" prefix"
                ));
            }
        }
        if self.work_queue == self.failed_queue
            || self.work_queue == self.invalid_queue
            || self.failed_queue == self.invalid_queue
        {
            return invalid(
                "broker.work_queue, broker.failed_queue and broker.invalid_queue must be distinct"
                    .into(),
            );
        }
        if self.connect_timeout_ms == 0 || self.confirm_timeout_ms == 0 {
            return invalid(
                "broker.connect_timeout_ms and broker.confirm_timeout_ms must be positive".into(),
            );
        }
        if self.delivery_limit == 0 {
            return invalid("broker.delivery_limit must be positive".into());
        }
        Ok(())
    }
}

/// How errors and logs name one broker URL: scheme, host and port (no credentials, no vhost).
pub(super) fn redact_url(url: &str) -> String {
    if url.trim() == MEMORY_URL {
        return MEMORY_URL.to_owned();
    }
    crate::redact::origin(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("amqp://guest:secret@host:5672/%2f"),
            "amqp://host:5672"
        );
        assert_eq!(redact_url("amqp://host/%2f"), "amqp://host");
        assert_eq!(redact_url("amqp://user@host/%2f"), "amqp://host");
        assert_eq!(redact_url("amqp://u:p@ss@host/v"), "amqp://host");
        assert_eq!(redact_url("memory"), "memory");
        let config = BrokerConfig {
            url: "amqp://u:hunter2@h/v".into(),
            ..BrokerConfig::default()
        };
        assert!(!format!("{config:?}").contains("hunter2"));
        let cluster = BrokerConfig {
            url: "amqps://u:one@a:5671/v, amqps://u:two@b:5671/v".into(),
            ..BrokerConfig::default()
        };
        assert_eq!(cluster.redacted_url(), "amqps://a:5671,amqps://b:5671");
    }

    #[test]
    fn splits_cluster_urls() {
        let config = BrokerConfig {
            url: "amqps://a:5671, amqps://b:5671,".into(),
            ..BrokerConfig::default()
        };
        assert_eq!(config.urls(), ["amqps://a:5671", "amqps://b:5671"]);
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn validates() {
        assert_eq!(BrokerConfig::default().validate(), Ok(()));
        let cases: [(&str, BrokerConfig, Option<&str>); 6] = [
            (
                "same queue twice",
                BrokerConfig {
                    failed_queue: "drover.outbound".into(),
                    ..BrokerConfig::default()
                },
                Some("distinct"),
            ),
            (
                "tls",
                BrokerConfig {
                    url: "amqps://h".into(),
                    ..BrokerConfig::default()
                },
                None,
            ),
            (
                "a node that is not amqp",
                BrokerConfig {
                    url: "amqp://a,http://b".into(),
                    ..BrokerConfig::default()
                },
                Some("http://b"),
            ),
            (
                "a certificate without its key",
                BrokerConfig {
                    url: "amqps://h".into(),
                    tls: BrokerTlsConfig {
                        cert_file: "client.crt".into(),
                        ..BrokerTlsConfig::default()
                    },
                    ..BrokerConfig::default()
                },
                Some("broker.tls.key_file"),
            ),
            (
                "no delivery limit",
                BrokerConfig {
                    delivery_limit: 0,
                    ..BrokerConfig::default()
                },
                Some("broker.delivery_limit"),
            ),
            (
                "reserved name",
                BrokerConfig {
                    exchange: "amq.direct".into(),
                    ..BrokerConfig::default()
                },
                Some("broker.exchange"),
            ),
        ];
        for (case, config, error) in cases {
            match (config.validate(), error) {
                (Ok(()), None) => {}
                (Err(e), Some(words)) => assert!(e.to_string().contains(words), "{case}: {e}"),
                (got, want) => panic!("{case}: got {got:?}, want an error with {want:?}"),
            }
        }
    }

    #[test]
    fn queue_type_reads_as_words() {
        #[derive(Deserialize)]
        struct T {
            t: QueueType,
        }
        let t: T = serde_json::from_str(r#"{"t": "quorum"}"#).expect("quorum");
        assert_eq!(t.t, QueueType::Quorum);
        assert!(serde_json::from_str::<T>(r#"{"t": "stream"}"#).is_err());
    }
}
