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
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: "sqlite://drover.db?mode=rwc".to_owned(),
            max_connections: 8,
            acquire_timeout_ms: 5000,
            schema: None,
            group_commit_max_batch: 64,
            group_commit_in_flight: 4,
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
