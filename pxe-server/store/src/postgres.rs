//! PostgreSQL backend: one fleet shared by several tugboot servers (one per rack or L2 segment).

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::StoreError;

/// Default number of connections per server.
pub const DEFAULT_PG_CONNECTIONS: u32 = 16;

/// The PostgreSQL store.
///
/// Durability: a call returns after its transaction committed, and with PostgreSQL's default
/// `synchronous_commit=on` a commit is flushed to the WAL on disk first. Do not turn
/// `synchronous_commit` off for a tugboot database.
///
/// Several servers may share one database: every write is a single statement or transaction,
/// facts obey their authority rule inside the upsert itself, batches lock machine rows in MAC
/// order, rollout transitions are compare-and-set, and reports and images are idempotent.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host/db`, or a unix socket with `?host=/dir`) and
    /// applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse().map_err(|_| StoreError::InvalidLocation {
            location: url.to_owned(),
            reason: "not a PostgreSQL connection URL",
        })?;
        Self::connect_with(options, DEFAULT_PG_CONNECTIONS).await
    }

    /// Connects with explicit options and pool size, and applies pending migrations.
    pub async fn connect_with(
        options: PgConnectOptions,
        max_connections: u32,
    ) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect_with(options)
            .await
            .map_err(StoreError::backend("connect"))?;
        crate::migrations::migrator(crate::migrations::POSTGRES)
            .await?
            .run(&pool)
            .await?;
        Ok(Self { pool })
    }

    /// Closes the pool, waiting for in-flight statements.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A write transaction (PostgreSQL locks rows as statements touch them).
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.pool.begin().await
    }

    fn writer(&self) -> &PgPool {
        &self.pool
    }

    fn reader(&self) -> &PgPool {
        &self.pool
    }
}

impl_store!(
    PgStore,
    row = sqlx::postgres::PgRow,
    conn = sqlx::PgConnection
);
