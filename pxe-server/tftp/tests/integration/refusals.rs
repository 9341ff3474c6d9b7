use std::os::unix::fs::symlink;

use crate::harness::{Raw, TestServer, error_code, pattern, rrq};

async fn code_for(server: &TestServer, request: &[u8]) -> Option<u16> {
    let raw = Raw::new().await;
    let (answer, _) = raw.request(server.addr, request).await;
    error_code(&answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_escapes_are_refused() {
    let server = TestServer::start(|_| {}, None).await;
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"secret").unwrap();
    std::fs::write(server.path("inside"), b"inside").unwrap();
    std::fs::create_dir(server.path("sub")).unwrap();
    symlink(outside.path().join("secret"), server.path("leak")).unwrap();
    symlink(outside.path(), server.path("leakdir")).unwrap();
    symlink(server.path("inside"), server.path("sub/ok")).unwrap();

    // `..` anywhere is refused outright (access violation), with either separator.
    for name in [
        "../secret",
        "sub/../../secret",
        "sub\\..\\..\\secret",
        "/../secret",
        "..",
    ] {
        assert_eq!(code_for(&server, &rrq(name, &[])).await, Some(2), "{name}");
    }
    // Absolute paths are mapped inside the root: /etc/passwd is simply not there.
    assert_eq!(code_for(&server, &rrq("/etc/passwd", &[])).await, Some(1));
    // Symlinks that leave the root are refused; the file and directory behind them exist.
    assert_eq!(code_for(&server, &rrq("leak", &[])).await, Some(2));
    assert_eq!(
        code_for(&server, &rrq("leakdir/secret", &[])).await,
        Some(2)
    );
    // Directories are not files.
    assert_eq!(code_for(&server, &rrq("sub", &[])).await, Some(1));
    // A symlink staying inside the root and an absolute GRUB-style path both work.
    let raw = Raw::new().await;
    let (d, _) = raw.request(server.addr, &rrq("sub/ok", &[])).await;
    assert_eq!(d, b"\x00\x03\x00\x01inside");
    let (d, _) = raw.request(server.addr, &rrq("//sub/./ok", &[])).await;
    assert_eq!(d, b"\x00\x03\x00\x01inside");
    std::fs::create_dir(server.path("etc")).unwrap();
    std::fs::write(server.path("etc/passwd"), b"root-relative").unwrap();
    let (d, _) = raw.request(server.addr, &rrq("/etc/passwd", &[])).await;
    assert_eq!(d, b"\x00\x03\x00\x01root-relative");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_bad_requests_are_refused() {
    let server = TestServer::start(|_| {}, None).await;
    std::fs::write(server.path("f"), b"x").unwrap();
    let raw = Raw::new().await;
    // WRQ: access violation, answered from the listening port, nothing written.
    let (a, from) = raw.request(server.addr, b"\x00\x02new\x00octet\x00").await;
    assert_eq!(from, server.addr);
    assert_eq!(a, b"\x00\x05\x00\x02read-only server\x00");
    assert!(!server.path("new").exists());
    // Malformed and unsupported requests: illegal operation.
    assert_eq!(code_for(&server, b"\x00\x01f\x00octet").await, Some(4));
    assert_eq!(code_for(&server, b"\x00\x01f\x00binary\x00").await, Some(4));
    assert_eq!(code_for(&server, b"\x00\x01f\x00mail\x00").await, Some(4));
    assert_eq!(code_for(&server, b"\x00\x01\x00octet\x00").await, Some(4));
    // Stray non-requests get no answer: the first answer is the one to the following RRQ.
    raw.send(server.addr, b"\x00\x04\x00\x01").await;
    raw.send(server.addr, b"\x00\x09garbage").await;
    raw.send(server.addr, b"\x01").await;
    let (d, _) = raw.request(server.addr, &rrq("f", &[])).await;
    assert_eq!(d, b"\x00\x03\x00\x01x");
    let s = server.stats.snapshot();
    assert_eq!(s.requests_refused, 5);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_file_gets_error_1() {
    let server = TestServer::start(|_| {}, None).await;
    let raw = Raw::new().await;
    let (a, _) = raw
        .request(server.addr, &rrq("nope.efi", &[("tsize", "0")]))
        .await;
    assert_eq!(a, b"\x00\x05\x00\x01file not found\x00");
    assert_eq!(server.settle().await, 0);
    assert_eq!(server.stats.snapshot().transfers_started, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_beyond_the_cap_wait_in_line_then_are_left_unanswered() {
    // max_transfers 2: two run, two may wait, the next is left unanswered.
    let server = TestServer::start(|c| c.max_transfers = 2, None).await;
    std::fs::write(server.path("f"), pattern(100_000, 2)).unwrap();
    let holders = [Raw::new().await, Raw::new().await];
    let mut tids = Vec::new();
    for h in &holders {
        let (d, tid) = h.request(server.addr, &rrq("f", &[])).await;
        assert_eq!(&d[..4], b"\x00\x03\x00\x01");
        tids.push(tid);
    }
    // Beyond the cap: no answer (an ERROR would end a firmware's boot attempt), but the first
    // two wait in line; a resend keeps its place.
    let late = [Raw::new().await, Raw::new().await, Raw::new().await];
    for l in &late {
        l.send(server.addr, &rrq("f", &[])).await;
    }
    late[0].send(server.addr, &rrq("f", &[])).await;
    let mut buf = [0u8; 600];
    for l in &late {
        let quiet = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            l.socket.recv_from(&mut buf),
        )
        .await;
        assert!(quiet.is_err(), "a request beyond the cap is not answered");
    }
    let s = server.stats.snapshot();
    assert_eq!((s.requests_queued, s.requests_busy), (2, 1), "{s:?}");
    // One holder gives up: the oldest waiting request starts without being resent.
    holders[0].send(tids[0], b"\x00\x05\x00\x00done\x00").await;
    let (n, _) = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        late[0].socket.recv_from(&mut buf),
    )
    .await
    .expect("the first in line is served when a slot frees")
    .unwrap();
    assert_eq!(&buf[..4], b"\x00\x03\x00\x01", "{:?}", &buf[..n]);
    let quiet = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        late[1].socket.recv_from(&mut buf),
    )
    .await;
    assert!(quiet.is_err(), "the second in line still waits");
    server.stop().await;
}
