use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::Command;
use tugboot_tftp::{FileProvider, Provided};

use crate::harness::{Raw, TestServer, client, error_code, pattern, rrq};

/// More than 65535 blocks of 512 bytes, so a plain transfer wraps the block number.
const BIG: usize = 40 * 1024 * 1024 + 123;

pub async fn atftp_get(
    addr: SocketAddr,
    remote: &str,
    local: &std::path::Path,
    options: &[&str],
) -> bool {
    let Some(atftp) = client("atftp") else {
        return false;
    };
    let mut cmd = Command::new(atftp);
    for o in options {
        cmd.arg("--option").arg(o);
    }
    let out = cmd
        .arg("-g")
        .arg("-r")
        .arg(remote)
        .arg("-l")
        .arg(local)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run atftp");
    assert!(
        out.status.success(),
        "atftp failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

async fn big_file_with_atftp(options: &[&str]) {
    let server = TestServer::start(|_| {}, None).await;
    let data = pattern(BIG, 7);
    std::fs::write(server.path("big.bin"), &data).unwrap();
    let out = server.path("out.bin");
    if !atftp_get(server.addr, "big.bin", &out, options).await {
        return;
    }
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "downloaded bytes differ");
    assert_eq!(server.settle().await, 0);
    let s = server.stats.snapshot();
    assert_eq!(
        (
            s.transfers_started,
            s.transfers_completed,
            s.transfers_failed
        ),
        (1, 1, 0)
    );
    assert!(s.bytes_sent >= BIG as u64);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atftp_big_file_blksize_windowsize_tsize() {
    big_file_with_atftp(&["blksize 1468", "windowsize 16", "tsize 0"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atftp_big_file_plain_512_wraps_block_numbers() {
    big_file_with_atftp(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_download() {
    let Some(curl) = client("curl") else { return };
    let server = TestServer::start(|_| {}, None).await;
    let data = pattern(3 * 1024 * 1024 + 5, 11);
    std::fs::create_dir(server.path("grub")).unwrap();
    std::fs::write(server.path("grub/core.efi"), &data).unwrap();
    let out = server.path("out.bin");
    let url = format!("tftp://{}/grub/core.efi", server.addr);
    let st = Command::new(curl)
        .args(["-sS", "--tftp-blksize", "1468", "-o"])
        .arg(&out)
        .arg(&url)
        .status()
        .await
        .unwrap();
    assert!(st.success());
    assert!(std::fs::read(&out).unwrap() == data);
    // Missing file: curl reports the TFTP error and fails.
    let st = Command::new(client("curl").unwrap())
        .args(["-sS", "-o", "/dev/null"])
        .arg(format!("tftp://{}/nope", server.addr))
        .stderr(Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(!st.success());
    assert_eq!(server.settle().await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_download() {
    let Some(tftp) = client("tftp") else { return };
    let server = TestServer::start(|_| {}, None).await;
    // Not a multiple of 512, with CR/LF bytes that netascii would mangle.
    let mut data = pattern(700_001, 3);
    data[100..104].copy_from_slice(b"\r\n\n\r");
    std::fs::write(server.path("pxelinux.0"), &data).unwrap();
    let out = server.path("out.bin");
    let st = Command::new(tftp)
        .args(["-m", "binary"])
        .arg(server.addr.ip().to_string())
        .arg(server.addr.port().to_string())
        .arg("-c")
        .arg("get")
        .arg("pxelinux.0")
        .arg(&out)
        .status()
        .await
        .unwrap();
    assert!(st.success());
    assert!(std::fs::read(&out).unwrap() == data);
    assert_eq!(server.settle().await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_error_after_oack_leaves_no_transfer() {
    // The OVMF pattern: probe tsize, then abort with ERROR 8.
    let server = TestServer::start(|_| {}, None).await;
    std::fs::write(server.path("bootx64.efi"), pattern(100_000, 5)).unwrap();
    let raw = Raw::new().await;
    let req = rrq(
        "bootx64.efi",
        &[("tsize", "0"), ("blksize", "1468"), ("windowsize", "4")],
    );
    let (oack, tid) = raw.request(server.addr, &req).await;
    assert_eq!(
        oack,
        b"\x00\x06blksize\x001468\x00tsize\x00100000\x00windowsize\x004\x00"
    );
    assert_ne!(
        tid, server.addr,
        "standard mode answers from a new transfer ID"
    );
    assert_eq!(server.stats.snapshot().active_transfers, 1);
    raw.send(tid, b"\x00\x05\x00\x08User aborted\x00").await;
    assert_eq!(server.settle().await, 0);
    let s = server.stats.snapshot();
    assert_eq!(
        (
            s.transfers_started,
            s.transfers_completed,
            s.transfers_failed
        ),
        (1, 0, 1)
    );
    // ... and the second, real request succeeds.
    let (oack, tid) = raw
        .request(server.addr, &rrq("bootx64.efi", &[("blksize", "1468")]))
        .await;
    assert_eq!(oack, b"\x00\x06blksize\x001468\x00");
    raw.send(tid, b"\x00\x04\x00\x00").await;
    let (d1, _) = raw.recv().await;
    assert_eq!(&d1[..4], b"\x00\x03\x00\x01");
    assert_eq!(d1.len(), 4 + 1468);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_client_leaves_no_transfer() {
    let Some(atftp) = client("atftp") else { return };
    let server = TestServer::start(|_| {}, None).await;
    std::fs::write(server.path("big.bin"), pattern(BIG, 9)).unwrap();
    let mut child = Command::new(atftp)
        .args(["-g", "-r", "big.bin", "-l", "/dev/null"])
        .arg(server.addr.ip().to_string())
        .arg(server.addr.port().to_string())
        .spawn()
        .unwrap();
    for _ in 0..400 {
        if server.stats.snapshot().bytes_sent > 1_000_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(server.stats.snapshot().bytes_sent > 1_000_000);
    child.kill().await.unwrap();
    // The next DATA hits a closed port; the ICMP error ends the transfer without retries.
    assert_eq!(server.settle().await, 0);
    let s = server.stats.snapshot();
    assert_eq!((s.transfers_completed, s.transfers_failed), (0, 1));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_port_mode_serves_concurrent_clients() {
    let server = TestServer::start(|c| c.single_port = true, None).await;
    let a = pattern(2_000_000, 21);
    let b = pattern(1_500_001, 22);
    std::fs::write(server.path("a.bin"), &a).unwrap();
    std::fs::write(server.path("b.bin"), &b).unwrap();
    // Every answer comes from the listening port.
    let raw = Raw::new().await;
    let (oack, from) = raw
        .request(server.addr, &rrq("a.bin", &[("tsize", "0")]))
        .await;
    assert_eq!(from, server.addr);
    assert_eq!(oack, b"\x00\x06tsize\x002000000\x00");
    raw.send(server.addr, b"\x00\x04\x00\x00").await;
    let (d1, from) = raw.recv().await;
    assert_eq!(from, server.addr);
    assert_eq!(&d1[..4], b"\x00\x03\x00\x01");
    raw.send(server.addr, b"\x00\x05\x00\x00bye\x00").await;

    let (oa, ob) = (server.path("oa"), server.path("ob"));
    let (ra, rb) = tokio::join!(
        atftp_get(server.addr, "a.bin", &oa, &["blksize 1468", "windowsize 8"]),
        atftp_get(server.addr, "b.bin", &ob, &[]),
    );
    if ra && rb {
        assert!(std::fs::read(&oa).unwrap() == a);
        assert!(std::fs::read(&ob).unwrap() == b);
    }
    if let Some(curl) = client("curl") {
        let out = server.path("oc");
        let st = Command::new(curl)
            .args(["-sS", "-o"])
            .arg(&out)
            .arg(format!("tftp://{}/b.bin", server.addr))
            .status()
            .await
            .unwrap();
        assert!(st.success());
        assert!(std::fs::read(&out).unwrap() == b);
    }
    assert_eq!(server.settle().await, 0);
    server.stop().await;
}

/// Generates a Raspberry Pi style `<serial>/config.txt` naming the client.
struct PiConfig;

impl FileProvider for PiConfig {
    fn lookup(&self, peer: SocketAddr, path: &str) -> Option<Provided> {
        let serial = path.strip_suffix("/config.txt")?;
        Some(format!("# for {serial} at {}\narm_64bit=1\n", peer.ip()).into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_files_come_before_disk() {
    let Some(curl) = client("curl") else { return };
    let server = TestServer::start(|_| {}, Some(Arc::new(PiConfig))).await;
    std::fs::create_dir(server.path("1234abcd")).unwrap();
    std::fs::write(server.path("1234abcd/config.txt"), b"from disk").unwrap();
    std::fs::write(server.path("1234abcd/start4.elf"), b"firmware").unwrap();
    let fetch = |name: &str| {
        let url = format!("tftp://{}/{name}", server.addr);
        let curl = curl.clone();
        async move {
            let out = Command::new(curl)
                .args(["-sS", &url])
                .output()
                .await
                .unwrap();
            assert!(out.status.success(), "{url}");
            out.stdout
        }
    };
    assert_eq!(
        fetch("1234abcd/config.txt").await,
        b"# for 1234abcd at 127.0.0.1\narm_64bit=1\n"
    );
    assert_eq!(fetch("1234abcd/start4.elf").await, b"firmware");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_transfers_and_tells_clients() {
    let server = TestServer::start(|_| {}, None).await;
    std::fs::write(server.path("f"), pattern(10_000, 1)).unwrap();
    let raw = Raw::new().await;
    let (d1, tid) = raw.request(server.addr, &rrq("f", &[])).await;
    assert_eq!(&d1[..4], b"\x00\x03\x00\x01");
    let stats = Arc::clone(&server.stats);
    server.stop().await; // returns only once the transfer task has ended
    let (err, from) = raw.recv().await;
    assert_eq!(from, tid);
    assert_eq!(err, b"\x00\x05\x00\x00server shutting down\x00");
    let s = stats.snapshot();
    assert_eq!((s.active_transfers, s.transfers_failed), (0, 1));
    assert_eq!(error_code(&err), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_port_new_request_from_same_peer_replaces_transfer() {
    let server = TestServer::start(|c| c.single_port = true, None).await;
    std::fs::write(server.path("a"), pattern(5000, 1)).unwrap();
    std::fs::write(server.path("b"), b"second file").unwrap();
    let raw = Raw::new().await;
    let (d, _) = raw.request(server.addr, &rrq("a", &[])).await;
    assert_eq!(&d[..4], b"\x00\x03\x00\x01");
    // Same peer, new request (a client restarting): the old transfer is dropped silently.
    let (d, from) = raw.request(server.addr, &rrq("b", &[])).await;
    assert_eq!(from, server.addr);
    assert_eq!(d, b"\x00\x03\x00\x01second file");
    raw.send(server.addr, b"\x00\x04\x00\x01").await;
    assert_eq!(server.settle().await, 0);
    let s = server.stats.snapshot();
    assert_eq!(
        (
            s.transfers_started,
            s.transfers_completed,
            s.transfers_failed
        ),
        (2, 1, 1)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atftp_windowed_sizes_at_block_boundaries() {
    // Exact multiples end with an empty DATA block, which rides as the last (short) segment of
    // a GSO batch; the others end mid-window or on a window boundary.
    let server = TestServer::start(|_| {}, None).await;
    for (i, len) in [
        0usize,
        1,
        1468,
        1468 * 16,
        1468 * 16 + 1,
        1468 * 100,
        1468 * 37 + 5,
    ]
    .into_iter()
    .enumerate()
    {
        let data = pattern(len, 40 + i as u64);
        let name = format!("f{i}");
        std::fs::write(server.path(&name), &data).unwrap();
        let out = server.path(&format!("o{i}"));
        if !atftp_get(server.addr, &name, &out, &["blksize 1468", "windowsize 16"]).await {
            return;
        }
        assert!(std::fs::read(&out).unwrap() == data, "length {len}");
    }
    assert_eq!(server.settle().await, 0);
    assert_eq!(server.stats.snapshot().transfers_completed, 7);
    server.stop().await;
}
