//! [`StoreError`] and the classification of driver errors.

use sqlx::migrate::MigrateError;

/// Why a store operation failed.
///
/// [`StoreError::is_unavailable`] separates failures of the database connection (the server
/// is down, unreachable, refusing connections, or the pool timed out waiting for one), after
/// which the store actor should crash and be restarted with backoff, from failures of one
/// statement.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The configuration cannot work (unknown URL scheme, bad schema name, zero connections…).
    #[error("invalid store configuration: {0}")]
    Config(String),
    /// The database cannot be reached or the connection failed.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// TLS to the database failed: its certificate was not trusted or not for its host name,
    /// or a certificate file could not be read.
    #[error(
        "TLS to the database failed: certificate problem (check store.tls.ca_file / the URL's \
         sslrootcert, store.tls.mode / sslmode, and that the URL's host is a name in the \
         server's certificate): {0}"
    )]
    Certificate(#[source] sqlx::Error),
    /// A statement failed (constraint violation, serialization failure, …).
    #[error("database query failed: {0}")]
    Query(#[source] sqlx::Error),
    /// Applying the embedded migrations failed (for a reason other than the connection).
    #[error("database migration failed: {0}")]
    Migration(#[source] MigrateError),
    /// A row holds something drover never writes (an unknown status, a malformed id…).
    #[error("unexpected data in the database: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether this is a connection-level failure (see the type's docs).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_) | StoreError::Certificate(_)
        )
    }

    /// True when trying again cannot help until someone changes the configuration or the
    /// server (a bad configuration, a certificate not trusted): the startup check stops
    /// waiting at such an error.
    pub fn is_permanent(&self) -> bool {
        matches!(self, StoreError::Config(_) | StoreError::Certificate(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if is_certificate_error(&error) {
            StoreError::Certificate(error)
        } else if is_connection_error(&error) {
            StoreError::Unavailable(error)
        } else if matches!(error, sqlx::Error::Configuration(_)) {
            StoreError::Config(error.to_string())
        } else {
            StoreError::Query(error)
        }
    }
}

impl From<MigrateError> for StoreError {
    fn from(error: MigrateError) -> Self {
        match error {
            MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _)
                if is_connection_error(&e) =>
            {
                StoreError::Unavailable(e)
            }
            other => StoreError::Migration(other),
        }
    }
}

/// Whether `error` is TLS refusing the server (or the server refusing drover's certificate).
/// sqlx reports rustls's verdict as an I/O error ("invalid peer certificate: UnknownIssuer"),
/// so its text is what tells.
fn is_certificate_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Tls(_) => true,
        sqlx::Error::Io(e) => {
            let text = e.to_string().to_ascii_lowercase();
            text.contains("certificate") || text.contains("handshake")
        }
        _ => false,
    }
}

/// Whether `error` means the connection (not the statement) failed.
fn is_connection_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let Some(code) = db.code() else { return false };
            if db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some()
            {
                is_pg_connection_sqlstate(&code)
            } else if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                code.parse::<i32>().is_ok_and(is_sqlite_connection_code)
            } else {
                false
            }
        }
        _ => false,
    }
}

/// PostgreSQL SQLSTATEs of connection-level failures: class 08 (connection exception),
/// class 28 (authorization), 53300 (too many connections), 57P01–57P03 (server shutting
/// down, crashed, or not accepting connections yet).
fn is_pg_connection_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("28")
        || matches!(code, "53300" | "57P01" | "57P02" | "57P03")
}

/// SQLite result codes (primary part of an extended code) that mean the database file is
/// unusable right now: BUSY and LOCKED (still locked after the busy timeout), IOERR, FULL,
/// CANTOPEN.
fn is_sqlite_connection_code(code: i32) -> bool {
    matches!(code & 0xff, 5 | 6 | 10 | 13 | 14)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_timeouts_are_unavailable_and_row_errors_are_not() {
        assert!(StoreError::from(sqlx::Error::PoolTimedOut).is_unavailable());
        assert!(
            StoreError::from(sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()))
                .is_unavailable()
        );
        assert!(!StoreError::from(sqlx::Error::RowNotFound).is_unavailable());
        assert!(!StoreError::Corrupt("x".into()).is_unavailable());
    }

    #[test]
    fn a_certificate_refused_is_permanent_and_says_so() {
        let refused = StoreError::from(sqlx::Error::Io(std::io::Error::other(
            "invalid peer certificate: UnknownIssuer",
        )));
        assert!(refused.is_unavailable() && refused.is_permanent());
        assert!(
            refused.to_string().contains("certificate problem"),
            "{refused}"
        );
        let reset = StoreError::from(sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()));
        assert!(!reset.is_permanent());
    }

    #[test]
    fn sqlstates() {
        assert!(is_pg_connection_sqlstate("08006"));
        assert!(is_pg_connection_sqlstate("57P01"));
        assert!(is_pg_connection_sqlstate("28P01"));
        assert!(!is_pg_connection_sqlstate("23505"));
        assert!(!is_pg_connection_sqlstate("40001"));
        assert!(is_sqlite_connection_code(5));
        assert!(is_sqlite_connection_code(261)); // SQLITE_BUSY_RECOVERY
        assert!(!is_sqlite_connection_code(19)); // SQLITE_CONSTRAINT
        assert!(!is_sqlite_connection_code(2067)); // SQLITE_CONSTRAINT_UNIQUE
    }
}
