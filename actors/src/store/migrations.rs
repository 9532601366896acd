//! The schema migrations, embedded in the binary.
//!
//! Each backend has its own set under `actors/migrations/{postgres,sqlite}/`, files named
//! `NNNN_description.sql`. Adding one: add the file *and* a line to the list below (a unit test
//! checks that the lists and the folders agree). Never edit an applied migration: sqlx
//! records each one's checksum and refuses to start against a database whose history differs.

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// One embedded migration: version, description, SQL.
type Embedded = (i64, &'static str, &'static str);

/// PostgreSQL migrations, in version order.
const POSTGRES: &[Embedded] = &[
    (
        1,
        "messages",
        include_str!("../../migrations/postgres/0001_messages.sql"),
    ),
    (
        2,
        "segments_truncation",
        include_str!("../../migrations/postgres/0002_segments_truncation.sql"),
    ),
    (
        3,
        "receipts",
        include_str!("../../migrations/postgres/0003_receipts.sql"),
    ),
    (
        4,
        "delivery_window",
        include_str!("../../migrations/postgres/0004_delivery_window.sql"),
    ),
    (
        5,
        "message_search",
        include_str!("../../migrations/postgres/0005_message_search.sql"),
    ),
    (
        6,
        "attempt_provider",
        include_str!("../../migrations/postgres/0006_attempt_provider.sql"),
    ),
];

/// SQLite migrations, in version order.
const SQLITE: &[Embedded] = &[
    (
        1,
        "messages",
        include_str!("../../migrations/sqlite/0001_messages.sql"),
    ),
    (
        2,
        "segments_truncation",
        include_str!("../../migrations/sqlite/0002_segments_truncation.sql"),
    ),
    (
        3,
        "receipts",
        include_str!("../../migrations/sqlite/0003_receipts.sql"),
    ),
    (
        4,
        "delivery_window",
        include_str!("../../migrations/sqlite/0004_delivery_window.sql"),
    ),
    (
        5,
        "message_search",
        include_str!("../../migrations/sqlite/0005_message_search.sql"),
    ),
    (
        6,
        "attempt_provider",
        include_str!("../../migrations/sqlite/0006_attempt_provider.sql"),
    ),
];

fn migrator(set: &'static [Embedded]) -> Migrator {
    Migrator::with_migrations(
        set.iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// The migrator for PostgreSQL.
pub(super) fn postgres() -> Migrator {
    migrator(POSTGRES)
}

/// The migrator for SQLite.
pub(super) fn sqlite() -> Migrator {
    migrator(SQLITE)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded lists name exactly the files in the migration folders.
    #[test]
    fn embedded_lists_match_the_folders() {
        for (dir, set) in [("postgres", POSTGRES), ("sqlite", SQLITE)] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(dir);
            let mut files: Vec<String> = std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|f| f.ends_with(".sql"))
                .collect();
            files.sort();
            let listed: Vec<String> = set
                .iter()
                .map(|(v, d, _)| format!("{v:04}_{d}.sql"))
                .collect();
            assert_eq!(files, listed, "{}", path.display());
            for (i, (v, _, sql)) in set.iter().enumerate() {
                assert_eq!(*v, i as i64 + 1, "versions are consecutive");
                let on_disk = std::fs::read_to_string(path.join(&listed[i])).unwrap();
                assert_eq!(&on_disk, sql);
            }
        }
    }
}
