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

/// `(version, description, sql, no_tx)` of each migration, in order. `no_tx`: the script
/// manages its own transaction (unused so far; note that sqlx's SQLite driver always wraps a
/// migration in a transaction).
type Embedded = &'static [(i64, &'static str, &'static str, bool)];

pub(crate) const SQLITE: Embedded = &[
    (
        1,
        "initial",
        include_str!("../migrations/sqlite/0001_initial.sql"),
        false,
    ),
    (
        2,
        "fleet",
        include_str!("../migrations/sqlite/0002_fleet.sql"),
        false,
    ),
    (
        3,
        "enrollment",
        include_str!("../migrations/sqlite/0003_enrollment.sql"),
        false,
    ),
];

pub(crate) const POSTGRES: Embedded = &[
    (
        1,
        "initial",
        include_str!("../migrations/postgres/0001_initial.sql"),
        false,
    ),
    (
        2,
        "fleet",
        include_str!("../migrations/postgres/0002_fleet.sql"),
        false,
    ),
    (
        3,
        "enrollment",
        include_str!("../migrations/postgres/0003_enrollment.sql"),
        false,
    ),
];

#[derive(Debug)]
struct EmbeddedSource(Embedded);

impl<'s> MigrationSource<'s> for EmbeddedSource {
    fn resolve(self) -> BoxFuture<'s, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|&(version, description, sql, no_tx)| {
                    Migration::new(
                        version,
                        Cow::Borrowed(description),
                        MigrationType::Simple,
                        Cow::Borrowed(sql),
                        no_tx,
                    )
                })
                .collect())
        })
    }
}

pub(crate) async fn migrator(set: Embedded) -> Result<Migrator, StoreError> {
    Ok(Migrator::new(EmbeddedSource(set)).await?)
}

#[cfg(test)]
mod tests {
    //! A database written by schema v1 (board, profile and labels as columns, outcomes only
    //! inside the report JSON, lease tables) migrates to v2 without losing a row.

    use sqlx::Connection as _;

    use super::*;
    use crate::{OutcomeKind, Store};

    const V1_ROWS: &str = r#"
        INSERT INTO machines (mac, smbios_uuid, serial, board, profile, labels, state, first_seen, last_seen, last_booted_image)
            VALUES ('02:00:00:00:00:01', '8a3b1c2d-0000-4000-8000-000000000001', 'SN1', 'raspberrypi-4', 'edge',
                    '{"rack":"r1","site":"lab"}', 'approved', 10, 20, 'edge@1');
        INSERT INTO machines (mac, labels, state, first_seen, last_seen) VALUES ('02:00:00:00:00:02', '{}', 'unknown', 11, 11);
        INSERT INTO reports (device_id, report_id, boot_id, slot, image_version, checks, uptime_secs, last_error, received_at)
            VALUES (1, 'b1-1', 'b1', 'b', 2,
                    '{"id":"b1-1","boot_id":"b1","outcome":{"outcome":"committed","name":"edge","version":2,"slot":"B"}}',
                    30, NULL, 40);
        INSERT INTO reports (device_id, report_id, boot_id, slot, image_version, checks, uptime_secs, last_error, received_at)
            VALUES (1, 'b1-2', 'b1', 'a', 2, '{"disk":"ok"}', 31, NULL, 41);
        INSERT INTO device_certs (serial, device_id, issued_at, not_after, revoked_at) VALUES ('0a', 1, 5, 500, NULL);
        INSERT INTO lease_pools (name, first_addr, last_addr) VALUES ('p', 1, 2);
    "#;

    async fn check_v2<S: Store>(s: &S) {
        let all = s.list_machines().await.expect("machines");
        assert_eq!(all.len(), 2);
        let m = &all[0];
        assert_eq!(m.serial.as_deref(), Some("SN1"));
        assert_eq!(
            m.uuid.map(|u| u.to_string()).as_deref(),
            Some("8a3b1c2d-0000-4000-8000-000000000001")
        );
        assert_eq!(m.last_booted_image.as_deref(), Some("edge@1"));
        let board = m.facts.get("board").expect("board");
        assert_eq!(
            board.source.as_str(),
            "observed:dhcp",
            "v1 boards were unauthenticated"
        );
        assert_eq!(m.facts.trusted_value("profile"), Some("edge"));
        assert_eq!(m.facts.trusted_value("label.rack"), Some("r1"));
        assert_eq!(m.facts.trusted_value("label.site"), Some("lab"));
        assert!(all[1].facts.is_empty());
        let v = s.image_outcomes("edge", 2).await.expect("outcomes");
        assert_eq!(v.len(), 1);
        assert_eq!(
            (v[0].device, v[0].kind, v[0].at),
            (m.id, OutcomeKind::Committed, 40)
        );
        assert_eq!(s.count_reports().await.expect("count"), 2);
        let r = s
            .get_report(m.id, "b1-2")
            .await
            .expect("report")
            .expect("b1-2");
        assert!(r.outcome.is_none());
        assert_eq!(s.list_device_certs(m.id).await.expect("certs").len(), 1);
        // The rebuilt tables still cascade.
        assert!(s.delete_machine(m.id).await.expect("delete"));
        assert_eq!(s.count_reports().await.expect("count"), 0);
    }

    #[tokio::test]
    async fn sqlite_v1_data_migrates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("v1.db");
        {
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true)
                .foreign_keys(true);
            let mut conn = sqlx::SqliteConnection::connect_with(&options)
                .await
                .expect("connect");
            migrator(&SQLITE[..1])
                .await
                .expect("v1")
                .run(&mut conn)
                .await
                .expect("migrate v1");
            sqlx::raw_sql(V1_ROWS)
                .execute(&mut conn)
                .await
                .expect("v1 rows");
            conn.close().await.expect("close");
        }
        let s = crate::SqliteStore::open(&path)
            .await
            .expect("open migrates to v2");
        check_v2(&s).await;
    }

    #[tokio::test]
    async fn postgres_v1_data_migrates() {
        let Ok(url) = std::env::var("TUGBOOT_TEST_PG_URL") else {
            assert!(
                std::env::var_os("TUGBOOT_REQUIRE_PG").is_none(),
                "TUGBOOT_REQUIRE_PG is set but TUGBOOT_TEST_PG_URL is not"
            );
            eprintln!("SKIP: TUGBOOT_TEST_PG_URL not set (tests/postgres starts a server)");
            return;
        };
        let schema = format!("v1mig_{}", std::process::id());
        let mut admin = sqlx::PgConnection::connect(&url).await.expect("connect");
        sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut admin)
            .await
            .expect("schema");
        let sep = if url.contains('?') { '&' } else { '?' };
        let scoped = format!("{url}{sep}options[search_path]={schema}");
        {
            let mut conn = sqlx::PgConnection::connect(&scoped).await.expect("connect");
            migrator(&POSTGRES[..1])
                .await
                .expect("v1")
                .run(&mut conn)
                .await
                .expect("migrate v1");
            sqlx::raw_sql(V1_ROWS)
                .execute(&mut conn)
                .await
                .expect("v1 rows");
            conn.close().await.expect("close");
        }
        let s = crate::PgStore::connect(&scoped)
            .await
            .expect("connect migrates to v2");
        check_v2(&s).await;
        s.close().await;
        sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&mut admin)
            .await
            .expect("drop");
    }

    /// v2 → v3: a device enrolled before v3 (an unrevoked certificate) is enrolled after it,
    /// so its MAC alone does not get it a second certificate; a revoked one is not.
    #[tokio::test]
    async fn sqlite_v2_enrolled_devices_stay_enrolled() {
        use crate::{EnrollAttempt, EnrollOutcome, EnrollRefusal};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("v2.db");
        {
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true)
                .foreign_keys(true);
            let mut conn = sqlx::SqliteConnection::connect_with(&options)
                .await
                .expect("connect");
            migrator(&SQLITE[..2])
                .await
                .expect("v2")
                .run(&mut conn)
                .await
                .expect("migrate v2");
            sqlx::raw_sql(
                "INSERT INTO machines (mac, state, first_seen, last_seen) VALUES \
                   ('02:00:00:00:00:01', 'approved', 1, 1), ('02:00:00:00:00:02', 'approved', 1, 1);
                 INSERT INTO device_certs VALUES ('0a', 1, 5, 500, NULL), ('0b', 1, 6, 600, NULL),
                   ('0c', 2, 5, 500, 7);",
            )
            .execute(&mut conn)
            .await
            .expect("v2 rows");
            conn.close().await.expect("close");
        }
        let s = crate::SqliteStore::open(&path)
            .await
            .expect("open migrates to v3");
        let attempt = |n: u8| EnrollAttempt {
            mac: tugboot_wire::Mac([2, 0, 0, 0, 0, n]),
            serial: None,
            facts: tugboot_fleet::Facts::new(),
            key_sha256: format!("{n:064x}"),
            token_hash: None,
            max_pending: 10,
            replay_window_secs: 60,
            now: 100,
        };
        let o = s
            .enroll(&attempt(1), |_| Err("no".into()))
            .await
            .expect("enroll");
        assert!(matches!(
            o,
            EnrollOutcome::Refused {
                reason: EnrollRefusal::AlreadyEnrolled,
                ..
            }
        ));
        let o = s
            .enroll(&attempt(2), |_| {
                Ok(crate::EnrolledCert {
                    serial: "0d".into(),
                    pem: "pem".into(),
                    not_after: 900,
                })
            })
            .await
            .expect("enroll");
        assert!(matches!(
            o,
            EnrollOutcome::Issued {
                repeated: false,
                ..
            }
        ));
    }
}
