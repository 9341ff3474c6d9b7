//! Schema migrations, embedded in the binary (one set per backend).
//!
//! The SQL lives in `migrations/<backend>/NNNN_name.sql`; this module compiles it in with
//! `include_str!` and hands it to sqlx's migrator, which records applied versions and their
//! checksums in `_sqlx_migrations` and refuses to start if an applied migration was edited.
//! On PostgreSQL the migrator takes an advisory lock, so several servers starting at once apply
//! each migration exactly once. Migrations are append-only: never edit a released file.

use std::borrow::Cow;

use futures_util::future::BoxFuture;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

use crate::StoreError;

/// `(version, description, sql)` of each migration, in order.
type Embedded = &'static [(i64, &'static str, &'static str)];

pub(crate) const SQLITE: Embedded = &[(
    1,
    "initial",
    include_str!("../migrations/sqlite/0001_initial.sql"),
)];

pub(crate) const POSTGRES: Embedded = &[(
    1,
    "initial",
    include_str!("../migrations/postgres/0001_initial.sql"),
)];

#[derive(Debug)]
struct EmbeddedSource(Embedded);

impl<'s> MigrationSource<'s> for EmbeddedSource {
    fn resolve(self) -> BoxFuture<'s, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|&(version, description, sql)| {
                    Migration::new(
                        version,
                        Cow::Borrowed(description),
                        MigrationType::Simple,
                        Cow::Borrowed(sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

pub(crate) async fn migrator(set: Embedded) -> Result<Migrator, StoreError> {
    Ok(Migrator::new(EmbeddedSource(set)).await?)
}
