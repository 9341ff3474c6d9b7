//! "Nothing acknowledged is lost": a child process writes reports and takes leases as fast as
//! it can, printing each one only after the store call returned; the parent SIGKILLs it in
//! the middle of the burst, reopens the database and checks that every printed write is there.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::Ipv4Addr;
use std::os::unix::process::ExitStatusExt as _;
use std::process::{Command, Stdio};

use tugboot_store::{AnyStore, LeasePool, LeaseState, Store};

use crate::backends::Backend;
use crate::cases::{client, report, request, sighting};

/// Set (to a store location) only in the child process.
const CHILD_VAR: &str = "TUGBOOT_STORE_WRITER_LOCATION";
/// Acknowledgements the parent waits for before killing the child.
const ACKS_BEFORE_KILL: usize = 300;
const POOL: &str = "burst";

fn pool() -> LeasePool {
    LeasePool {
        name: POOL.into(),
        first: Ipv4Addr::new(10, 1, 0, 0),
        last: Ipv4Addr::new(10, 1, 15, 255),
    }
}

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
    // Schema, machine and pool exist before the child starts, so it only writes.
    let device = rt.block_on(async {
        let s = backend.open().await;
        s.add_pool(&pool(), 0).await.unwrap();
        s.record_sighting(&sighting(1), 1).await.unwrap().id
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
    let mut leases = Vec::new();
    let mut record = |line: &str| {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields.as_slice() {
            ["ACK", "report", n] => reports.push(n.parse::<u32>().expect("report number")),
            ["ACK", "lease", n, addr] => {
                leases.push((
                    n.parse::<u32>().expect("client number"),
                    addr.parse::<Ipv4Addr>().expect("address"),
                ));
            }
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
    assert!(!reports.is_empty() && !leases.is_empty());

    rt.block_on(async {
        let s = backend.open().await;
        for n in &reports {
            let id = format!("burst-{n}");
            assert!(
                s.get_report(device, &id).await.unwrap().is_some(),
                "acknowledged report {id} lost"
            );
        }
        for (n, addr) in &leases {
            let lease = s.get_lease(POOL, *addr).await.unwrap().expect("lease row");
            assert_eq!(
                lease.client_id,
                Some(client(*n).client_id),
                "acknowledged lease {addr} for client {n} lost"
            );
            assert_eq!(lease.state, LeaseState::Bound);
        }
        // Nothing beyond what the child could have written, and no address twice.
        let count = s.count_reports().await.unwrap();
        assert!(
            count >= reports.len() as u64 && count <= reports.len() as u64 + 1,
            "{count} reports stored"
        );
        let mut addrs: Vec<_> = leases.iter().map(|(_, a)| *a).collect();
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), leases.len());
    });
    eprintln!(
        "kill -9 after {} acknowledged reports and {} acknowledged leases: all present",
        reports.len(),
        leases.len()
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
            .find_machine_by_mac(sighting(1).mac)
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
            let lease = s
                .allocate_lease(&request(POOL, n, LeaseState::Bound, 1_000_000), 10)
                .await
                .unwrap()
                .expect("pool has room");
            writeln!(out, "ACK lease {n} {}", lease.addr).unwrap();
            out.flush().unwrap();
        }
    });
}
