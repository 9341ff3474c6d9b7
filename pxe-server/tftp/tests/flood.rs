//! A flood of never-acknowledged requests must neither lock real clients out nor grow the
//! server's memory (issue #11, items 1 and 2).
//!
//! This is its own test binary, holding this one test, so that the process's peak resident set
//! (`VmHWM` in /proc/self/status) is the server's plus a small harness, not that of other tests
//! running alongside. Everything is on loopback: the flood comes from 127.0.0.2 and from
//! 127.0.1.1..=127.0.1.24, the real clients from 127.0.0.1.

#[allow(
    dead_code,
    reason = "shared with the integration binary; this test uses a part"
)]
#[path = "integration/harness.rs"]
mod harness;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::process::Command;
use tugboot_tftp::{FileProvider, Provided};

use harness::{Raw, TestServer, client, error_code, is_pattern, rrq, write_pattern};

/// A 64 MiB initrd, the size the issue reported.
const INITRD: u64 = 64 * 1024 * 1024;
/// Bound asserted on the whole test process's peak RSS (docs/tftp.md states the server's).
const MAX_HWM_KIB: u64 = 64 * 1024;

struct Initrd {
    path: PathBuf,
}

impl FileProvider for Initrd {
    fn lookup(&self, _peer: SocketAddr, path: &str) -> Option<Provided> {
        (path == "blobs/initrd").then(|| Provided::file(&self.path, INITRD))
    }
}

fn vm_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("field in /proc/self/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_of_unacknowledged_requests_locks_out_no_one_and_memory_stays_bounded() {
    let blobs = tempfile::tempdir().unwrap();
    let path = blobs.path().join("initrd");
    write_pattern(&path, INITRD, 99);
    let server = TestServer::start(
        |c| c.max_transfers = 256,
        Some(Arc::new(Initrd { path: path.clone() })),
    )
    .await;
    let rss_before = vm_kib("VmRSS:");

    // 1. One host, 300 source ports, plain RRQs for the initrd (DATA 1 goes out at once), never
    //    acknowledged. Only the per-peer cap (8) get a transfer; the rest are refused.
    let mut flood = Vec::new();
    let mut started = 0;
    for _ in 0..300 {
        let raw = Raw::bind("127.0.0.2:0").await;
        let (d, _) = raw.request(server.addr, &rrq("blobs/initrd", &[])).await;
        match error_code(&d) {
            None => started += 1,
            Some(code) => assert_eq!(code, 0),
        }
        flood.push(raw);
    }
    assert_eq!(started, 8);

    // 2. Twenty-four more hosts, eight ports each, ask for big windows, acknowledge the OACK and
    //    the first window, then go silent: each of their 192 transfers has sent two windows and
    //    wants read-ahead and batch buffers.
    for host in 1..=24 {
        for _ in 0..8 {
            let raw = Raw::bind(&format!("127.0.1.{host}:0")).await;
            let (oack, tid) = raw
                .request(
                    server.addr,
                    &rrq(
                        "blobs/initrd",
                        &[("blksize", "1468"), ("windowsize", "64"), ("tsize", "0")],
                    ),
                )
                .await;
            assert_eq!(&oack[..2], b"\x00\x06", "host {host}: {oack:?}");
            raw.send(tid, b"\x00\x04\x00\x00").await;
            // Wait for the window's last block (a lost datagram is resent with the window).
            while raw.recv().await.0[..4] != *b"\x00\x03\x00\x40" {}
            raw.send(tid, b"\x00\x04\x00\x40").await;
            flood.push(raw);
        }
    }
    assert_eq!(server.stats.snapshot().active_transfers, 8 + 192);

    // 3. Meanwhile real clients from 127.0.0.1 download the whole initrd, byte for byte.
    let mut completed = 0;
    if let Some(atftp) = client("atftp") {
        let out = server.path("atftp.out");
        let st = Command::new(atftp)
            .args(["--option", "blksize 1468", "--option", "windowsize 16"])
            .args(["--option", "tsize 0", "-g", "-r", "blobs/initrd", "-l"])
            .arg(&out)
            .arg(server.addr.ip().to_string())
            .arg(server.addr.port().to_string())
            .stdout(std::process::Stdio::null())
            .status()
            .await
            .unwrap();
        assert!(st.success(), "atftp was locked out");
        assert!(is_pattern(&out, INITRD, 99), "atftp: bytes differ");
        std::fs::remove_file(&out).unwrap();
        completed += 1;
    }
    if let Some(curl) = client("curl") {
        let out = server.path("curl.out");
        let st = Command::new(curl)
            .args(["-sS", "--tftp-blksize", "1468", "-o"])
            .arg(&out)
            .arg(format!("tftp://{}/blobs/initrd", server.addr))
            .status()
            .await
            .unwrap();
        assert!(st.success(), "curl was locked out");
        assert!(is_pattern(&out, INITRD, 99), "curl: bytes differ");
        std::fs::remove_file(&out).unwrap();
        completed += 1;
    }

    let s = server.stats.snapshot();
    assert_eq!(s.transfers_completed, completed);
    assert!(s.requests_busy >= 292, "{s:?}");
    assert!(
        s.buffer_bytes <= 16 << 20,
        "within the default budget: {s:?}"
    );
    let hwm = vm_kib("VmHWM:");
    println!("flood: RSS before {rss_before} KiB, peak {hwm} KiB (bound {MAX_HWM_KIB} KiB); {s:?}");
    assert!(
        hwm <= MAX_HWM_KIB,
        "peak RSS {hwm} KiB over the bound {MAX_HWM_KIB} KiB"
    );
    drop(flood);
    server.stop().await;
}
