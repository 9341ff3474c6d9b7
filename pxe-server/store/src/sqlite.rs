//! SQLite backend: the embedded default, one file, zero set-up.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::StoreError;

/// How long a statement waits for another connection's write lock (another store on the same
/// file, or `sqlite3` run by an operator) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Attempts at applying the migrations when another process migrates the same file at once.
const MIGRATION_TRIES: u64 = 8;

/// Connections for reads; WAL lets them run while the writer commits.
const READERS: u32 = 4;

/// The SQLite store.
///
/// Durability: WAL journal with `synchronous=FULL`, so every commit fsyncs the WAL before the
/// call returns; an acknowledged write survives a process crash *and* a power cut (NORMAL would
/// survive the former only). Writes go through a single connection (SQLite allows one writer
/// at a time anyway, and queueing in the pool is fairer and faster than busy-waiting); reads use
/// a small pool of their own.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` and applies pending migrations.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path.as_ref())
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(StoreError::backend("open"))?;
        let migrator = crate::migrations::migrator(crate::migrations::SQLITE).await?;
        // SQLite has no advisory lock: another process opening the same fresh file at the same
        // moment may apply a migration between our check and our attempt (each migration is
        // its own transaction, so with several the two may cross more than once). A later run
        // sees its work; a real problem fails every time and is returned.
        let mut tries = 0;
        while let Err(e) = migrator.run(&writer).await {
            tries += 1;
            if tries >= MIGRATION_TRIES {
                return Err(e.into());
            }
            tokio::time::sleep(Duration::from_millis(20 * tries)).await;
        }
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(options)
            .await
            .map_err(StoreError::backend("open"))?;
        Ok(Self { writer, reader })
    }

    /// Closes both pools, waiting for in-flight statements (and checkpointing the WAL).
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    /// A write transaction that takes the write lock at `BEGIN`: a transaction that reads
    /// before it writes (enrollment) must not find, at its first write, that another
    /// connection to the file wrote since its read (`SQLITE_BUSY`, not retried by
    /// `busy_timeout`); with `IMMEDIATE` it waits for the lock up front instead.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.writer.begin_with("BEGIN IMMEDIATE").await
    }

    fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }
}

impl SqliteStore {
    /// The rows of [`crate::Store::observe`], in `order` (MAC order), one statement each: an
    /// embedded database pays no round trip per statement.
    async fn observe_in(
        conn: &mut sqlx::SqliteConnection,
        sightings: &[crate::Sighting],
        order: &[usize],
        now: i64,
    ) -> Result<Vec<tugboot_fleet::MachineId>, StoreError> {
        let mut ids = vec![tugboot_fleet::MachineId(0); sightings.len()];
        for &i in order {
            let s = &sightings[i];
            let written: Option<(i64,)> = sqlx::query_as(crate::sql::OBSERVE_MACHINE)
                .bind(s.mac.to_string())
                .bind(now)
                .fetch_optional(&mut *conn)
                .await
                .map_err(StoreError::backend("observe"))?;
            let (id,) = match written {
                Some(row) => row,
                None => sqlx::query_as("SELECT id FROM machines WHERE mac = $1")
                    .bind(s.mac.to_string())
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(StoreError::backend("observe"))?,
            };
            for (key, fact) in s.facts.iter() {
                Self::offer_fact(conn, id, key, fact).await?;
            }
            ids[i] = tugboot_fleet::MachineId(id);
        }
        Ok(ids)
    }

    /// The updates of [`crate::Store::record_boots`], one statement per machine.
    async fn record_boots_in(
        conn: &mut sqlx::SqliteConnection,
        ids: &[i64],
        images: &[&str],
        now: i64,
    ) -> Result<u64, StoreError> {
        let mut n = 0;
        for (id, image) in ids.iter().zip(images) {
            n += sqlx::query(crate::sql::RECORD_BOOT)
                .bind(id)
                .bind(image)
                .bind(now)
                .execute(&mut *conn)
                .await
                .map_err(StoreError::backend("record_boots"))?
                .rows_affected();
        }
        Ok(n)
    }
}

impl_store!(
    SqliteStore,
    row = sqlx::sqlite::SqliteRow,
    conn = sqlx::SqliteConnection
);
