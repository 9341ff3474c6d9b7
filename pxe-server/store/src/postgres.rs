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

impl PgStore {
    /// The rows of [`crate::Store::observe`] in three statements whatever the batch's size
    /// (machines, their ids, their facts: arrays through `unnest`), rows in MAC order. One
    /// statement per machine and per fact cost a round trip and a statement execution each:
    /// 54 statements per booted machine in a 1,000-machine storm, most of PostgreSQL's CPU.
    async fn observe_in(
        conn: &mut sqlx::PgConnection,
        sightings: &[crate::Sighting],
        order: &[usize],
        now: i64,
    ) -> Result<Vec<tugboot_fleet::MachineId>, StoreError> {
        let macs: Vec<String> = order
            .iter()
            .map(|&i| sightings[i].mac.to_string())
            .collect();
        sqlx::query(crate::sql::OBSERVE_MACHINES_PG)
            .bind(&macs)
            .bind(now)
            .execute(&mut *conn)
            .await
            .map_err(StoreError::backend("observe"))?;
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT mac, id FROM machines WHERE mac = ANY($1)")
                .bind(&macs)
                .fetch_all(&mut *conn)
                .await
                .map_err(StoreError::backend("observe"))?;
        let by_mac: std::collections::HashMap<String, i64> = rows.into_iter().collect();
        let mut ids = vec![tugboot_fleet::MachineId(0); sightings.len()];
        let (mut fact_ids, mut keys, mut values, mut sources, mut ranks, mut ats) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for (&i, mac) in order.iter().zip(&macs) {
            let id = *by_mac.get(mac).ok_or_else(|| StoreError::NotFound {
                entity: "machine",
                key: mac.clone(),
            })?;
            ids[i] = tugboot_fleet::MachineId(id);
            for (key, fact) in sightings[i].facts.iter() {
                fact_ids.push(id);
                keys.push(key.as_str());
                values.push(fact.value.as_str());
                sources.push(fact.source.as_str());
                ranks.push(i64::from(fact.source.rank()));
                ats.push(fact.at);
            }
        }
        if !fact_ids.is_empty() {
            sqlx::query(crate::sql::OFFER_FACTS_PG)
                .bind(&fact_ids)
                .bind(&keys)
                .bind(&values)
                .bind(&sources)
                .bind(&ranks)
                .bind(&ats)
                .execute(&mut *conn)
                .await
                .map_err(StoreError::backend("offer_fact"))?;
        }
        Ok(ids)
    }

    /// The updates of [`crate::Store::record_boots`] in one statement.
    async fn record_boots_in(
        conn: &mut sqlx::PgConnection,
        ids: &[i64],
        images: &[&str],
        now: i64,
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query(crate::sql::RECORD_BOOTS_PG)
            .bind(ids)
            .bind(images)
            .bind(now)
            .execute(&mut *conn)
            .await
            .map_err(StoreError::backend("record_boots"))?
            .rows_affected())
    }
}

impl_store!(
    PgStore,
    row = sqlx::postgres::PgRow,
    conn = sqlx::PgConnection
);
