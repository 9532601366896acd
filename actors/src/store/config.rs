//! `[store]`: where the message ledger lives.

use serde::{Deserialize, Serialize};

/// `[store]`: the SQL database that records every message and attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Database URL: `sqlite://PATH?mode=rwc` (a file, created if missing; `sqlite::memory:`
    /// for a throwaway in-memory database) or `postgres://USER:PASSWORD@HOST:PORT/DATABASE`.
    pub url: String,
    /// Most connections the pool opens at once.
    pub max_connections: u32,
    /// PostgreSQL only: connections the pool keeps open even when idle (at most
    /// `max_connections`), reopened in the background when one is closed. A burst after a
    /// quiet spell then does not wait for connections to be opened (about 100 ms of added
    /// latency for the first messages otherwise).
    pub min_connections: u32,
    /// How long an operation may wait for a connection (including opening one against a
    /// database that is down) before it fails with an "unavailable" error, in milliseconds.
    /// On SQLite it is also the busy timeout: how long a writer waits for the file lock.
    pub acquire_timeout_ms: u64,
    /// PostgreSQL only: keep drover's tables in this schema (created if absent) by putting it
    /// on every connection's `search_path`. A plain lowercase identifier (`[a-z_][a-z0-9_]*`,
    /// at most 63 bytes). Unset: the server's default `search_path` (usually `public`).
    pub schema: Option<String>,
    /// Group commit: admissions and outcomes of concurrent workers share transactions of at
    /// most this many (0 = one transaction per call). Every worker still waits for the
    /// commit of its own call before it acks.
    pub group_commit_max_batch: usize,
    /// Group commit: at most this many batch transactions at once.
    pub group_commit_in_flight: usize,
    /// PostgreSQL only: TLS to the server (also settable in the URL as `sslmode`,
    /// `sslrootcert`, `sslcert`, `sslkey`; a key set here wins over the URL's).
    pub tls: StoreTlsConfig,
}

/// `[store.tls]`: TLS to PostgreSQL. Empty keys leave the URL's setting (or libpq's default,
/// `prefer`: TLS when the server offers it, unverified) in place.
///
/// PostgreSQL failover (RDS Multi-AZ, Cloud SQL HA, Patroni behind a proxy or a virtual IP)
/// stays behind the one endpoint of [`StoreConfig::url`]: a failover drops the connections,
/// the store actor fails, and its restart connects to the endpoint again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreTlsConfig {
    /// `disable`, `allow`, `prefer`, `require` (TLS, the certificate unchecked unless a CA is
    /// given), `verify-ca` (the certificate signed by the CA) or `verify-full` (and for the
    /// URL's host name).
    pub mode: String,
    /// PEM file of the certificate authority that signed the server's certificate.
    pub ca_file: String,
    /// PEM file of a client certificate (for `clientcert` / `cert` authentication).
    pub cert_file: String,
    /// PEM file of the client certificate's private key.
    pub key_file: String,
}

/// The sslmode words [`StoreTlsConfig::mode`] accepts.
pub const SSL_MODES: [&str; 6] = [
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: "sqlite://drover.db?mode=rwc".to_owned(),
            max_connections: 8,
            min_connections: 4,
            acquire_timeout_ms: 5000,
            schema: None,
            group_commit_max_batch: 64,
            group_commit_in_flight: 4,
            tls: StoreTlsConfig::default(),
        }
    }
}

/// Whether `name` is a schema name usable unquoted and safe to splice into SQL.
pub(super) fn is_plain_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
        && name.len() <= 63
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(is_plain_identifier("drover"));
        assert!(is_plain_identifier("_t1"));
        assert!(!is_plain_identifier(""));
        assert!(!is_plain_identifier("1abc"));
        assert!(!is_plain_identifier("Drover"));
        assert!(!is_plain_identifier("a-b"));
        assert!(!is_plain_identifier("a\"; DROP TABLE x; --"));
        assert!(!is_plain_identifier(&"a".repeat(64)));
    }
}
