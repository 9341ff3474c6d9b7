//! Caps over the wire: per-peer slots, retransmitted requests, the client's `timeout` option,
//! and transfers that get no buffer memory at all.

use std::time::Duration;

use crate::harness::{Raw, TestServer, client, error_code, pattern, rrq};
use crate::real_clients::atftp_get;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_peer_cap_refuses_only_the_flooding_host() {
    let server = TestServer::start(|c| c.max_transfers_per_peer = 3, None).await;
    std::fs::write(server.path("f"), pattern(100_000, 2)).unwrap();
    // Five source ports of 127.0.0.2, none of which ever ACKs: three transfers, two refusals.
    let mut flood = Vec::new();
    let mut codes = Vec::new();
    for _ in 0..5 {
        let raw = Raw::bind("127.0.0.2:0").await;
        let (d, _) = raw.request(server.addr, &rrq("f", &[])).await;
        codes.push(error_code(&d));
        if error_code(&d).is_some() {
            assert_eq!(
                d,
                b"\x00\x05\x00\x00too many transfers from your address\x00"
            );
        }
        flood.push(raw);
    }
    assert_eq!(codes, [None, None, None, Some(0), Some(0)]);
    assert_eq!(server.stats.snapshot().active_transfers, 3);
    assert_eq!(server.stats.snapshot().requests_busy, 2);
    // Another host is served at once.
    let real = Raw::new().await;
    let (d, _) = real.request(server.addr, &rrq("f", &[])).await;
    assert_eq!(&d[..4], b"\x00\x03\x00\x01");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retransmitted_request_does_not_start_a_second_transfer() {
    let server = TestServer::start(|_| {}, None).await;
    std::fs::write(server.path("f"), pattern(100_000, 3)).unwrap();
    let raw = Raw::new().await;
    let req = rrq("f", &[("blksize", "1468")]);
    let (oack, tid) = raw.request(server.addr, &req).await;
    assert_eq!(oack, b"\x00\x06blksize\x001468\x00");
    // The client did not see the OACK in time and resends the same RRQ twice.
    raw.send(server.addr, &req).await;
    raw.send(server.addr, &req).await;
    // A request for a missing file from the same socket is handled after the resent ones: once
    // its answer is here, the server has seen (and ignored) the duplicates.
    let (a, _) = raw.request(server.addr, &rrq("nope", &[])).await;
    assert_eq!(error_code(&a), Some(1));
    // (Not the `active_transfers` gauge: the refused request's slot is released just after its
    // ERROR is sent, so under load the gauge can still count it here.)
    assert_eq!(server.stats.snapshot().transfers_started, 1);
    // The one transfer goes on normally.
    raw.send(tid, b"\x00\x04\x00\x00").await;
    let (d, from) = raw.recv().await;
    assert_eq!((from, &d[..4]), (tid, &b"\x00\x03\x00\x01"[..]));
    raw.send(tid, b"\x00\x05\x00\x00enough\x00").await;
    assert_eq!(server.settle().await, 0);
    // Once it has ended, the same request is a new transfer.
    let (oack, _) = raw.request(server.addr, &req).await;
    assert_eq!(oack, b"\x00\x06blksize\x001468\x00");
    assert_eq!(server.stats.snapshot().transfers_started, 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_client_timeout_is_declined() {
    let server = TestServer::start(|_| {}, None).await;
    std::fs::write(server.path("f"), pattern(3000, 4)).unwrap();
    let raw = Raw::new().await;
    let (oack, tid) = raw
        .request(
            server.addr,
            &rrq("f", &[("timeout", "255"), ("tsize", "0")]),
        )
        .await;
    assert_eq!(oack, b"\x00\x06tsize\x003000\x00", "timeout 255 left out");
    raw.send(tid, b"\x00\x05\x00\x00bye\x00").await;
    let (oack, tid) = raw
        .request(server.addr, &rrq("f", &[("timeout", "5"), ("tsize", "0")]))
        .await;
    assert_eq!(oack, b"\x00\x06tsize\x003000\x00timeout\x005\x00");
    raw.send(tid, b"\x00\x05\x00\x00bye\x00").await;
    assert_eq!(server.settle().await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_without_any_buffer_budget_still_complete() {
    // With nothing to reserve, every block is read on its own and sent on its own: slower,
    // never wrong.
    let server = TestServer::start(|c| c.buffer_budget = 0, None).await;
    let data = pattern(3 * 1024 * 1024 + 13, 6);
    std::fs::write(server.path("f"), &data).unwrap();
    let out = server.path("out");
    for options in [&["blksize 1468", "windowsize 16", "tsize 0"][..], &[]] {
        if !atftp_get(server.addr, "f", &out, options).await {
            return;
        }
        assert!(std::fs::read(&out).unwrap() == data, "{options:?}");
    }
    if let Some(curl) = client("curl") {
        let st = tokio::process::Command::new(curl)
            .args(["-sS", "-o"])
            .arg(&out)
            .arg(format!("tftp://{}/f", server.addr))
            .status()
            .await
            .unwrap();
        assert!(st.success());
        assert!(std::fs::read(&out).unwrap() == data);
    }
    assert_eq!(server.settle().await, 0);
    let s = server.stats.snapshot();
    assert_eq!((s.transfers_completed, s.buffer_bytes), (3, 0));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_transfer_gives_its_buffers_back() {
    let server = TestServer::start(|_| {}, None).await;
    std::fs::write(server.path("f"), pattern(1_000_000, 7)).unwrap();
    let raw = Raw::new().await;
    let (oack, tid) = raw
        .request(
            server.addr,
            &rrq("f", &[("blksize", "1468"), ("windowsize", "16")]),
        )
        .await;
    assert_eq!(oack, b"\x00\x06blksize\x001468\x00windowsize\x0016\x00");
    // Nothing is held before the OACK is acknowledged.
    assert_eq!(server.stats.snapshot().buffer_bytes, 0);
    raw.send(tid, b"\x00\x04\x00\x00").await;
    for _ in 0..16 {
        raw.recv().await;
    }
    assert!(
        server.stats.snapshot().buffer_bytes > 0,
        "a window in flight"
    );
    // No ACK: after the first timeout (1 s) the window is resent and the buffers are released.
    let (d, _) = raw.recv().await;
    assert_eq!(&d[..4], b"\x00\x03\x00\x01", "retransmission");
    for _ in 0..200 {
        if server.stats.snapshot().buffer_bytes == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.stats.snapshot().buffer_bytes, 0);
    server.stop().await;
}
