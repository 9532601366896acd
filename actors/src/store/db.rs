//! A thin layer over the two sqlx backends, so the store's logic is written once.
//!
//! Statements are `&'static str` with `$N` placeholders, which both PostgreSQL and SQLite (as
//! sqlx binds them) understand; where the dialects differ the caller picks one of two strings
//! with [`Tx::pick`]. Rows decode into small structs declared with [`db_row!`].

use sqlx::Transaction;
use sqlx::postgres::{PgPool, PgRow, Postgres};
use sqlx::sqlite::{Sqlite, SqlitePool, SqliteRow};

/// A pool of either backend.
#[derive(Debug, Clone)]
pub(super) enum Pool {
    Pg(PgPool),
    Sqlite(SqlitePool),
}

/// What a transaction will do, which decides how it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Reads then writes: on SQLite `BEGIN IMMEDIATE`, so the write lock is taken up front
    /// (waiting up to the busy timeout) instead of failing when a read upgrades to a write.
    Write,
    /// Reads only: one consistent snapshot (`REPEATABLE READ READ ONLY` on PostgreSQL).
    Read,
}

impl Pool {
    /// Start a transaction on a pooled connection.
    pub(super) async fn begin(&self, mode: Mode) -> Result<Tx, sqlx::Error> {
        Ok(match (self, mode) {
            (Pool::Pg(p), Mode::Write) => Tx::Pg(p.begin().await?),
            (Pool::Pg(p), Mode::Read) => Tx::Pg(
                p.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?,
            ),
            (Pool::Sqlite(p), Mode::Write) => Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
            (Pool::Sqlite(p), Mode::Read) => Tx::Sqlite(p.begin().await?),
        })
    }

    /// The PostgreSQL pool, for statements only it understands.
    pub(super) fn pg(&self) -> Option<&PgPool> {
        match self {
            Pool::Pg(p) => Some(p),
            Pool::Sqlite(_) => None,
        }
    }

    /// One round trip.
    pub(super) async fn ping(&self) -> Result<(), sqlx::Error> {
        match self {
            Pool::Pg(p) => sqlx::query("SELECT 1").execute(p).await.map(drop),
            Pool::Sqlite(p) => sqlx::query("SELECT 1").execute(p).await.map(drop),
        }
    }

    /// Close every connection; later operations fail.
    pub(super) async fn close(&self) {
        match self {
            Pool::Pg(p) => p.close().await,
            Pool::Sqlite(p) => p.close().await,
        }
    }
}

/// An open transaction; rolled back if dropped without [`Tx::commit`].
#[derive(Debug)]
pub(super) enum Tx {
    Pg(Transaction<'static, Postgres>),
    Sqlite(Transaction<'static, Sqlite>),
}

/// A bind parameter.
#[derive(Debug, Clone, Copy)]
pub(super) enum Arg<'a> {
    Int(i64),
    OptInt(Option<i64>),
    Text(&'a str),
    OptText(Option<&'a str>),
}

/// Bind `$args` (a slice of [`Arg`]) to the query `$query`, in order (`$1`, `$2`, …).
macro_rules! bind_args {
    ($query:expr, $args:expr) => {{
        let mut query = $query;
        for arg in $args {
            query = match *arg {
                Arg::Int(v) => query.bind(v),
                Arg::OptInt(v) => query.bind(v),
                Arg::Text(v) => query.bind(v),
                Arg::OptText(v) => query.bind(v),
            };
        }
        query
    }};
}

impl Tx {
    /// `pg` on PostgreSQL, `sqlite` on SQLite.
    pub(super) fn pick(&self, pg: &'static str, sqlite: &'static str) -> &'static str {
        match self {
            Tx::Pg(_) => pg,
            Tx::Sqlite(_) => sqlite,
        }
    }

    pub(super) async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Pg(tx) => tx.commit().await,
            Tx::Sqlite(tx) => tx.commit().await,
        }
    }

    /// Run a statement; the number of rows it affected.
    pub(super) async fn execute(
        &mut self,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> Result<u64, sqlx::Error> {
        Ok(match self {
            Tx::Pg(tx) => bind_args!(sqlx::query(sql), args)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
            Tx::Sqlite(tx) => bind_args!(sqlx::query(sql), args)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
        })
    }

    /// Run a query expected to return at most one row.
    pub(super) async fn fetch_optional<T: FromDbRow>(
        &mut self,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> Result<Option<T>, sqlx::Error> {
        match self {
            Tx::Pg(tx) => bind_args!(sqlx::query(sql), args)
                .fetch_optional(&mut **tx)
                .await?
                .map(|row| T::from_pg(&row))
                .transpose(),
            Tx::Sqlite(tx) => bind_args!(sqlx::query(sql), args)
                .fetch_optional(&mut **tx)
                .await?
                .map(|row| T::from_sqlite(&row))
                .transpose(),
        }
    }

    /// Run a query and decode every row.
    pub(super) async fn fetch_all<T: FromDbRow>(
        &mut self,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> Result<Vec<T>, sqlx::Error> {
        match self {
            Tx::Pg(tx) => bind_args!(sqlx::query(sql), args)
                .fetch_all(&mut **tx)
                .await?
                .iter()
                .map(T::from_pg)
                .collect(),
            Tx::Sqlite(tx) => bind_args!(sqlx::query(sql), args)
                .fetch_all(&mut **tx)
                .await?
                .iter()
                .map(T::from_sqlite)
                .collect(),
        }
    }
}

/// A row type that decodes from either backend.
pub(super) trait FromDbRow: Sized {
    fn from_pg(row: &PgRow) -> Result<Self, sqlx::Error>;
    fn from_sqlite(row: &SqliteRow) -> Result<Self, sqlx::Error>;
}

/// Declare a struct whose fields are read from the columns of the same names.
macro_rules! db_row {
    ($(#[$meta:meta])* struct $name:ident { $($field:ident: $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        pub(super) struct $name {
            $(pub(super) $field: $ty,)*
        }

        impl $crate::store::db::FromDbRow for $name {
            fn from_pg(row: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
                use sqlx::Row as _;
                Ok($name { $($field: row.try_get(stringify!($field))?,)* })
            }
            fn from_sqlite(row: &sqlx::sqlite::SqliteRow) -> Result<Self, sqlx::Error> {
                use sqlx::Row as _;
                Ok($name { $($field: row.try_get(stringify!($field))?,)* })
            }
        }
    };
}
pub(super) use db_row;
