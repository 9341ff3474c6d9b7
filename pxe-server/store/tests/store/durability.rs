//! "Nothing acknowledged is lost": a child process writes reports, batches of sightings and
//! operator facts as fast as it can, printing each one only after the store call returned; the
//! parent SIGKILLs it in the middle of the burst, reopens the database and checks that every
//! printed write is there.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::process::ExitStatusExt as _;
use std::process::{Command, Stdio};

use tugboot_fleet::facts::{Declarer, FactKey, Source};
use tugboot_store::{AnyStore, Store};

use crate::backends::Backend;
use crate::cases::{mac, machine_of, report, sighting_with};

/// Set (to a store location) only in the child process.
const CHILD_VAR: &str = "TUGBOOT_STORE_WRITER_LOCATION";
/// Acknowledgements the parent waits for before killing the child.
const ACKS_BEFORE_KILL: usize = 300;
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

pub fn kill9_during_burst<B: Backend>() {
    let rt = runtime();
    let Some(backend) = rt.block_on(B::fresh()) else {
        return;
    };
    // Schema and machine exist before the child starts, so it only writes.
    let device = rt.block_on(async {
        let s = backend.open().await;
        machine_of(&s, 1, 1).await
    });

    let mut child = Command::new(std::env::current_exe().expect("current_exe"))
        .args([
            "--exact",
            "durability_writer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_VAR, backend.location())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn writer child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut lines = BufReader::new(stdout).lines();

    let mut reports = Vec::new();
    let mut batches = Vec::new();
    let mut record = |line: &str| {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields.as_slice() {
            ["ACK", "report", n] => reports.push(n.parse::<u32>().expect("report number")),
            ["ACK", "batch", n] => batches.push(n.parse::<u32>().expect("batch number")),
            _ => {} // the test harness's own output
        }
    };
    let mut acks = 0;
    for line in lines.by_ref() {
        let line = line.expect("read child stdout");
        if line.starts_with("ACK ") {
            acks += 1;
        }
        record(&line);
        if acks >= ACKS_BEFORE_KILL {
            break;
        }
    }
    assert_eq!(
        acks, ACKS_BEFORE_KILL,
        "the writer stopped before {ACKS_BEFORE_KILL} acknowledgements"
    );
    child.kill().expect("SIGKILL the writer");
    // Lines already in the pipe were acknowledged too.
    for line in lines {
        match line {
            Ok(line) => record(&line),
            Err(_) => break,
        }
    }
    let status = child.wait().expect("wait for writer");
    assert_eq!(
        status.signal(),
        Some(9),
        "the writer died of SIGKILL mid-burst, not on its own: {status:?}"
    );
    assert!(!reports.is_empty() && !batches.is_empty());

    rt.block_on(async {
        let s = backend.open().await;
        for n in &reports {
            let id = format!("burst-{n}");
            assert!(
                s.get_report(device, &id).await.unwrap().is_some(),
                "acknowledged report {id} lost"
            );
        }
        for n in &batches {
            // Each batch saw 8 machines and labelled the first.
            for k in 0..8 {
                let m = s
                    .find_machine_by_mac(mac(1000 + n * 8 + k))
                    .await
                    .unwrap()
                    .unwrap_or_else(|| panic!("acknowledged sighting of batch {n} lost"));
                assert_eq!(m.facts.value("arch"), Some("arm64"));
                if k == 0 {
                    assert_eq!(
                        m.facts.trusted_value("label.batch"),
                        Some(n.to_string().as_str()),
                        "acknowledged label of batch {n} lost"
                    );
                }
            }
        }
        let count = s.count_reports().await.unwrap();
        assert!(
            count >= reports.len() as u64 && count <= reports.len() as u64 + 1,
            "{count} reports stored"
        );
        let machines = s.list_machines().await.unwrap().len();
        let expected = 1 + batches.len() * 8;
        assert!(
            (expected..=expected + 8).contains(&machines),
            "{machines} machines"
        );
    });
    eprintln!(
        "kill -9 after {} acknowledged reports and {} acknowledged sighting batches: all present",
        reports.len(),
        batches.len()
    );
}

/// The child: alternate a report and a lease forever, acknowledging each on stdout once the
/// store call has returned.
pub fn writer_child_main() {
    let Ok(location) = std::env::var(CHILD_VAR) else {
        return;
    };
    runtime().block_on(async {
        let s = AnyStore::open(&location)
            .await
            .expect("child opens the store");
        let device = s
            .find_machine_by_mac(mac(1))
            .await
            .unwrap()
            .expect("device")
            .id;
        let mut out = std::io::stdout().lock();
        for n in 0u32.. {
            s.insert_report(&report(device, &format!("burst-{n}"), i64::from(n)))
                .await
                .unwrap();
            writeln!(out, "ACK report {n}").unwrap();
            out.flush().unwrap();
            let batch: Vec<_> = (0..8)
                .map(|k| sighting_with(1000 + n * 8 + k, &[("arch", "arm64")], i64::from(n)))
                .collect();
            let ids = s.observe(&batch, i64::from(n)).await.unwrap();
            s.set_facts(
                ids[0],
                &[(FactKey::new("label.batch").unwrap(), n.to_string())],
                Source::Declared(Declarer::Operator),
                i64::from(n),
            )
            .await
            .unwrap();
            writeln!(out, "ACK batch {n}").unwrap();
            out.flush().unwrap();
        }
    });
}
