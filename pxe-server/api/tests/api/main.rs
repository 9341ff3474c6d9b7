//! Integration tests of the device API: a real server on 127.0.0.1:0 over mutual TLS, every
//! store-backed case run on SQLite and (when `TUGBOOT_TEST_PG_URL` is set) on PostgreSQL.

mod cases;
mod durability;
mod harness;
mod limits;
mod seeds;

macro_rules! for_each_case {
    ($m:ident ! ($($args:tt)*)) => {
        $m!($($args)* [
            no_client_certificate_is_refused,
            certificate_of_another_ca_is_refused,
            expired_certificate_is_refused,
            revoked_certificate_is_refused,
            impersonation_is_refused,
            enrollment_tokens_are_single_use,
            enrollment_tokens_expire_and_bind,
            enrollment_replays_get_one_certificate,
            revoked_machine_cannot_enroll_again,
            concurrent_enrollments_for_one_mac_issue_one_certificate,
            pending_enrollments_are_capped_and_polls_write_nothing,
            enrollment_waits_for_approval_then_renews,
            happy_path_rollout_advances,
            rollout_pauses_resumes_aborts,
            silent_devices_time_out,
            publish_checks_signature_and_blobs,
            reports_attest_facts_that_rollouts_select_by,
        ]);
    };
}

macro_rules! suite {
    ($name:ident, $db:expr, [$($case:ident),+ $(,)?]) => {
        mod $name {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(loc) = crate::harness::fresh($db).await else {
                        return;
                    };
                    crate::cases::$case(&loc.url).await;
                }
            )+

            /// kill -9 of the server process during a burst of reports.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn acknowledged_reports_survive_kill9() {
                let Some(loc) = crate::harness::fresh($db).await else {
                    return;
                };
                crate::durability::kill9_during_report_burst(&loc.url).await;
            }

            /// kill -9 of the server process during a burst of enrollments.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn acknowledged_enrollments_survive_kill9() {
                let Some(loc) = crate::harness::fresh($db).await else {
                    return;
                };
                crate::durability::kill9_during_enrollment_burst(&loc.url).await;
            }

            /// kill -9 of the server process while operators publish images.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn acknowledged_publishes_survive_kill9() {
                let Some(loc) = crate::harness::fresh($db).await else {
                    return;
                };
                crate::durability::kill9_during_publish_burst(&loc.url).await;
            }

            /// kill -9 of the server process during rollout reports and operator commands.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rollout_transitions_survive_kill9() {
                let Some(loc) = crate::harness::fresh($db).await else {
                    return;
                };
                crate::durability::kill9_during_rollout(&loc.url).await;
            }
        }
    };
}

for_each_case!(suite!(sqlite, crate::harness::Db::Sqlite,));
for_each_case!(suite!(postgres, crate::harness::Db::Postgres,));

/// Child-process entry of the kill -9 tests; returns at once unless the
/// parent set the environment variable.
#[test]
fn api_server_child() {
    durability::child_main();
}
