//! The store's one error type.

/// Everything that can go wrong in the store.
///
/// Callers branch on the *kind* (not found, conflict, invalid input) rather than on backend
/// details; the backend error is kept as the source for logs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database (SQLite or PostgreSQL) reported an error while running `op`.
    #[error("database error during {op}")]
    Backend {
        /// What the store was doing (e.g. `"insert_report"`).
        op: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// Applying the schema migrations failed.
    #[error("schema migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The store URL or path is not one we can open.
    #[error("invalid store location {location:?}: {reason}")]
    InvalidLocation {
        /// The URL or path as given.
        location: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A value handed to the store is outside what it accepts (too long, out of range, ...).
    /// Checked before anything is written.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The offending field.
        field: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// A row read back from the database does not decode (a value no migration could have
    /// written): the database was edited by hand or is corrupt.
    #[error("corrupt row in {table}.{column}: {reason}")]
    CorruptRow {
        /// Table name.
        table: &'static str,
        /// Column name.
        column: &'static str,
        /// What was wrong with the value.
        reason: String,
    },
    /// The entity the operation refers to does not exist (e.g. a rollout of an unknown image,
    /// a report from an unknown device).
    #[error("{entity} not found: {key}")]
    NotFound {
        /// Kind of entity.
        entity: &'static str,
        /// Its key, as text.
        key: String,
    },
    /// The write would break a uniqueness rule (e.g. a second certificate with the same serial).
    #[error("{entity} already exists: {key}")]
    AlreadyExists {
        /// Kind of entity.
        entity: &'static str,
        /// Its key, as text.
        key: String,
    },
    /// An image with this name and version is already stored with a different manifest: images
    /// are immutable once stored.
    #[error("image {name} version {version} already exists with a different manifest")]
    ImageImmutable {
        /// Image name.
        name: String,
        /// Image version.
        version: u64,
    },
}

impl StoreError {
    pub(crate) fn backend(op: &'static str) -> impl FnOnce(sqlx::Error) -> Self {
        move |source| Self::Backend { op, source }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidInput {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn corrupt(
        table: &'static str,
        column: &'static str,
        reason: impl Into<String>,
    ) -> Self {
        Self::CorruptRow {
            table,
            column,
            reason: reason.into(),
        }
    }
}

/// True when `err` is a unique / primary-key violation (both backends).
pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// True when `err` is a foreign-key violation (both backends).
pub(crate) fn is_foreign_key_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_foreign_key_violation())
}
