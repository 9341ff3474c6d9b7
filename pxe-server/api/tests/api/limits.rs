//! Issue #11 item 8 at loopback level: a per-address connection cap (another address is still
//! served while one holds its most) and a body deadline (a half-sent body gets 408, the
//! connection is closed and its place given back). 127.0.0.0/8 is all local on Linux, so the
//! "attacker" connects from 127.0.0.2 and the real client from 127.0.0.1.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tugboot_api::ApiConfig;

use crate::harness::{Db, Device, Fleet, fresh};

async fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    sock.connect(to).await.unwrap()
}

/// True when the server closes `s` within `within` (EOF or reset), false if it stays open.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(within, s.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => true,
        Ok(Ok(_)) => panic!("the server sent bytes on a connection that sent none"),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_every_connection() {
    let loc = fresh(Db::Sqlite).await.unwrap();
    let f = Fleet::start_with(
        &loc.url,
        ApiConfig {
            max_connections_per_peer: 4,
            ..ApiConfig::default()
        },
    )
    .await;
    let addr = f.handle.addr;
    // Four silent connections (no TLS hello) from 127.0.0.2: admitted, held open.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from("127.0.0.2", addr).await);
    }
    for s in &mut held {
        assert!(!closed_within(s, Duration::from_millis(200)).await);
    }
    // The fifth from that address is closed at once.
    let mut fifth = connect_from("127.0.0.2", addr).await;
    assert!(closed_within(&mut fifth, Duration::from_secs(2)).await);
    // A real client from 127.0.0.1 is served meanwhile.
    let mut d = Device::new(1);
    let token = f.new_token().await;
    assert_eq!(f.enroll(&mut d, Some(&token)).await.status, 200);
    let m = String::from_utf8(f.anonymous().get("/metrics").await.unwrap().body).unwrap();
    assert!(
        m.contains("tugboot_api_refusals_total{reason=\"connections_per_peer\"} 1"),
        "{m}"
    );
    // Giving one back lets the address connect again.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = connect_from("127.0.0.2", addr).await;
    assert!(!closed_within(&mut again, Duration::from_millis(300)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_bodies_are_cut_off_and_release_their_place() {
    let loc = fresh(Db::Sqlite).await.unwrap();
    let f = Fleet::start_with(
        &loc.url,
        ApiConfig {
            max_connections_per_peer: 3,
            body_timeout: Duration::from_secs(2),
            ..ApiConfig::default()
        },
    )
    .await;
    // Three enrollments that announce 2000 bytes and send 100: every place of 127.0.0.1.
    let client = f.anonymous();
    let mut slow = Vec::new();
    let start = Instant::now();
    for _ in 0..3 {
        let mut tls = client.connect().await.unwrap();
        tls.write_all(
            b"POST /api/v1/enroll HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
              Content-Length: 2000\r\n\r\n",
        )
        .await
        .unwrap();
        tls.write_all(&[b' '; 100]).await.unwrap();
        tls.flush().await.unwrap();
        slow.push(tls);
    }
    // Meanwhile a fourth connection from the same address is refused.
    assert!(
        client.get("/healthz").await.is_err(),
        "fourth connection admitted"
    );
    // Each slow one gets 408 and the connection is closed, after the deadline and not long
    // after it.
    for mut tls in slow {
        let mut raw = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut raw)).await;
        assert!(read.is_ok(), "connection still open after 10 s");
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(
            text.to_ascii_lowercase().contains("connection: close"),
            "{text}"
        );
    }
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(2),
        "cut off before the deadline: {waited:?}"
    );
    // Their places are free again: a real client is served.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = client.get("/healthz").await.unwrap();
    assert_eq!(r.status, 200);
    let m = String::from_utf8(client.get("/metrics").await.unwrap().body).unwrap();
    assert!(
        m.contains("tugboot_api_refusals_total{reason=\"body_timeout\"} 3"),
        "{m}"
    );
}

/// A pre-v3 server's `enrollment-tokens.json`: its unused tokens move into the store once and
/// then enroll like any other; a used one does not come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_token_file_is_imported_once() {
    use tugboot_api::tokens::{LEGACY_FILE, import_legacy_file, token_hash};
    let loc = fresh(Db::Sqlite).await.unwrap();
    let f = Fleet::start(&loc.url).await;
    let dir = tempfile::tempdir().unwrap();
    let unused = "legacy-token-unused-0123456789";
    let used = "legacy-token-used-0123456789";
    std::fs::write(
        dir.path().join(LEGACY_FILE),
        serde_json::json!({"tokens": [
            {"sha256": token_hash(unused), "created_at": 1, "used_at": null, "device": null},
            {"sha256": token_hash(used), "created_at": 1, "used_at": 2, "device": 7},
        ]})
        .to_string(),
    )
    .unwrap();
    let now = crate::harness::real_now();
    assert_eq!(
        import_legacy_file(dir.path(), &f.store, now, 3600)
            .await
            .unwrap(),
        1
    );
    assert!(!dir.path().join(LEGACY_FILE).exists());
    assert!(dir.path().join(format!("{LEGACY_FILE}.imported")).exists());
    assert_eq!(
        import_legacy_file(dir.path(), &f.store, now, 3600)
            .await
            .unwrap(),
        0
    );
    let mut d = Device::new(90);
    assert_eq!(f.enroll(&mut d, Some(used)).await.status, 403);
    assert_eq!(f.enroll(&mut d, Some(unused)).await.status, 200);
}
