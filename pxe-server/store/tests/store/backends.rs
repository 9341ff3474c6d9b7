//! The two backends the shared suite runs against, behind one small trait.

use std::io::Write as _;
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection as _;
use tugboot_store::{PgStore, SqliteStore, Store};

/// Environment variable naming the PostgreSQL server the tests may use (`tests/postgres`
/// prints it). Each test gets a schema of its own in that database.
pub const PG_URL_VAR: &str = "TUGBOOT_TEST_PG_URL";

/// A fresh, empty database of one backend. `open` may be called several times: each call is
/// another independent store (its own pool) on the same database, like a second server.
pub trait Backend: Sized + Send + Sync + 'static {
    type S: Store + 'static;
    /// A fresh database, or `None` (after saying why) when the backend is unavailable.
    async fn fresh() -> Option<Self>;
    async fn open(&self) -> Self::S;
    /// Like `open`, but returns the error.
    async fn open_result(&self) -> Result<Self::S, tugboot_store::StoreError>;
    /// A location `AnyStore::open` understands, for child processes.
    fn location(&self) -> String;
    /// Runs raw SQL against the database, bypassing the store (to plant corrupt rows).
    async fn exec_raw(&self, sql: &str);
}

pub struct Sqlite {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl Backend for Sqlite {
    type S = SqliteStore;

    async fn fresh() -> Option<Self> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fleet.db");
        Some(Self { _dir: dir, path })
    }

    async fn open(&self) -> SqliteStore {
        self.open_result().await.expect("open sqlite store")
    }

    async fn open_result(&self) -> Result<SqliteStore, tugboot_store::StoreError> {
        SqliteStore::open(&self.path).await
    }

    fn location(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }

    async fn exec_raw(&self, sql: &str) {
        let url = format!("sqlite://{}", self.path.display());
        let mut conn = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("raw sqlite connection");
        sqlx::raw_sql(sql)
            .execute(&mut conn)
            .await
            .expect("raw sql");
        conn.close().await.expect("close");
    }
}

pub struct Postgres {
    url: String,
}

static SCHEMA_SEQ: AtomicU32 = AtomicU32::new(0);
static SKIP_NOTICE: Once = Once::new();

impl Backend for Postgres {
    type S = PgStore;

    async fn fresh() -> Option<Self> {
        let Ok(base) = std::env::var(PG_URL_VAR) else {
            // tests/run (and so CI) starts PostgreSQL and sets this: there, a missing server is a
            // failure, never a silent skip.
            assert!(
                std::env::var_os("TUGBOOT_REQUIRE_PG").is_none(),
                "TUGBOOT_REQUIRE_PG is set but {PG_URL_VAR} is not: PostgreSQL was not started"
            );
            SKIP_NOTICE.call_once(|| {
                // Written straight to the process's stderr so the test harness does not
                // swallow it.
                let _ = writeln!(
                    std::io::stderr(),
                    "tugboot-store: PostgreSQL tests skipped: {PG_URL_VAR} is not set \
                     (run `eval \"$(tests/postgres)\"` first)"
                );
            });
            return None;
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let schema = format!(
            "t{}_{}_{}",
            std::process::id(),
            SCHEMA_SEQ.fetch_add(1, Ordering::Relaxed),
            nanos
        );
        let mut conn = sqlx::PgConnection::connect(&base)
            .await
            .expect("connect to TUGBOOT_TEST_PG_URL");
        sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut conn)
            .await
            .expect("create schema");
        conn.close().await.expect("close");
        let sep = if base.contains('?') { '&' } else { '?' };
        Some(Self {
            url: format!("{base}{sep}options[search_path]={schema}"),
        })
    }

    async fn open(&self) -> PgStore {
        self.open_result().await.expect("open postgres store")
    }

    async fn open_result(&self) -> Result<PgStore, tugboot_store::StoreError> {
        PgStore::connect(&self.url).await
    }

    fn location(&self) -> String {
        self.url.clone()
    }

    async fn exec_raw(&self, sql: &str) {
        let mut conn = sqlx::PgConnection::connect(&self.url)
            .await
            .expect("raw pg connection");
        sqlx::raw_sql(sql)
            .execute(&mut conn)
            .await
            .expect("raw sql");
        conn.close().await.expect("close");
    }
}
