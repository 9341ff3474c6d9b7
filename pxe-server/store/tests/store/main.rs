//! The store's shared test suite, compiled into one binary and run against both backends:
//! every case in `cases` is a generic async fn over [`backends::Backend`], instantiated once
//! for SQLite and once for PostgreSQL by `suite!`. PostgreSQL cases are skipped (with a
//! notice on stderr) unless `TUGBOOT_TEST_PG_URL` is set; `tests/postgres` provides one.

mod backends;
mod cases;
mod durability;
mod enrollment;

/// Calls `$m!(args... [every async case])`: the one list of cases, shared by both backends.
macro_rules! for_each_case {
    ($m:ident ! ($($args:tt)*)) => {
        $m!($($args)* [
            machines_observed_and_kept,
            machines_reject_bad_input,
            declared_machines_sync,
            corrupt_rows_are_errors,
            concurrent_observations_keep_one_row_per_mac,
            repeated_sightings_refresh_to_the_minute,
            image_outcomes_are_the_latest_per_device,
            images_crud_and_immutability,
            rollouts_crud_and_compare_and_set,
            reports_are_idempotent,
            outcome_reports_record_the_boot,
            report_retries_race_counted_once,
            device_certs_crud,
            data_survives_reopen,
            concurrent_first_open_migrates_once,
            newer_schema_is_refused,
        ]);
    };
}

macro_rules! suite {
    ($name:ident, $backend:ty, [$($case:ident),+ $(,)?]) => {
        mod $name {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some(backend) = <$backend as crate::backends::Backend>::fresh().await else {
                        return;
                    };
                    crate::cases::$case(&backend).await;
                }
            )+

            /// kill -9 of a writer process mid-burst: every acknowledged write is there.
            #[test]
            fn acknowledged_writes_survive_kill9() {
                crate::durability::kill9_during_burst::<$backend>();
            }
        }
    };
}

/// The enrollment cases (schema v3), on both backends like the others.
macro_rules! enrollment_suite {
    ($name:ident, $backend:ty) => {
        mod $name {
            enrollment_suite!(@cases $backend, [
                tokens_are_single_use_bound_and_expire,
                a_token_never_enrolls_an_enrolled_identity,
                repeated_requests_get_the_same_certificate,
                revocation_needs_the_operator_to_enroll_again,
                pending_requests_are_capped_and_written_once,
                concurrent_enrollments_issue_one_certificate,
            ]);
        }
    };
    (@cases $backend:ty, [$($case:ident),+ $(,)?]) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let Some(backend) = <$backend as crate::backends::Backend>::fresh().await else {
                    return;
                };
                crate::enrollment::$case(&backend).await;
            }
        )+
    };
}

enrollment_suite!(enrollment_sqlite, crate::backends::Sqlite);
enrollment_suite!(enrollment_postgres, crate::backends::Postgres);

for_each_case!(suite!(sqlite, crate::backends::Sqlite,));
for_each_case!(suite!(postgres, crate::backends::Postgres,));

/// Child-process entry of `acknowledged_writes_survive_kill9` (the parent runs this test
/// binary again with only this test selected). Without the environment variable it is not a
/// child and returns at once.
#[test]
fn durability_writer_child() {
    durability::writer_child_main();
}
