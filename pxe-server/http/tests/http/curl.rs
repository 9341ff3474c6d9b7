//! The real server on 127.0.0.1, driven by the system `curl`: byte-identical downloads, ranges,
//! resume, HTTPS with a self-signed certificate, graceful shutdown.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tugboot_http::{BootServer, FileSend, serve, serve_tls, server_config};

use crate::common::Fixture;

struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.unwrap().unwrap();
    }
}

async fn start(server: Arc<BootServer>, tls: Option<Arc<rustls::ServerConfig>>) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = rx.await;
    };
    let task = match tls {
        None => tokio::spawn(serve(listener, server, shutdown)),
        Some(tls) => tokio::spawn(serve_tls(listener, tls, server, shutdown)),
    };
    Running {
        addr,
        stop: Some(tx),
        task,
    }
}

/// Runs curl with `args`; returns (exit status success, stdout).
async fn curl(args: &[&str]) -> (bool, Vec<u8>) {
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "60"])
        .args(args)
        .output()
        .await
        .expect("curl is installed");
    if !out.status.success() {
        eprintln!("curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    (out.status.success(), out.stdout)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every way a plain-HTTP file body can leave, and what the counters must say about it: on
/// 127.0.0.1 `Auto` copies, as `Copy` does.
const SEND_MODES: [(FileSend, bool); 3] = [
    (FileSend::Auto, true),
    (FileSend::Sendfile, false),
    (FileSend::Copy, true),
];

fn server_sending(f: &Fixture, mode: FileSend) -> Arc<BootServer> {
    f.server_tuned(
        Some(tugboot_http::BaseUrl::parse("http://192.0.2.1:8080").unwrap()),
        |c| c.file_send = mode,
    )
}

/// Body bytes counted, and whether the copying path sent them all (or none).
fn assert_sent_by(server: &BootServer, copies: bool, at_least: u64) {
    let c = server.counters();
    assert!(c.body_bytes >= at_least, "{c:?}");
    if copies {
        assert_eq!(c.copied_body_bytes, c.body_bytes, "all copied: {c:?}");
    } else {
        assert_eq!(c.copied_body_bytes, 0, "all with sendfile: {c:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_download_range_and_resume() {
    for (mode, copies) in SEND_MODES {
        eprintln!("file_send {mode:?}");
        download_range_and_resume(mode, copies).await;
    }
}

async fn download_range_and_resume(mode: FileSend, copies: bool) {
    // Not a multiple of the 8 MiB map window: the copy path's last window is a short one.
    let f = Fixture::new((9 << 20) + 12_345);
    let server = server_sending(&f, mode);
    let run = start(Arc::clone(&server), None).await;
    let url = format!("http://{}/artifacts/sha256/{}", run.addr, f.kernel_digest);
    let out = f.dir.path().join("kernel");

    // Byte-identical download.
    let (ok, _) = curl(&["--fail", "-o", s(&out), &url]).await;
    assert!(ok);
    assert!(std::fs::read(&out).unwrap() == f.kernel, "download differs");

    // curl -r: a middle range, and one across the copy path's first window boundary that
    // starts off a page boundary.
    let (ok, body) = curl(&["--fail", "-r", "1000000-1000999", &url]).await;
    assert!(ok);
    assert!(body == f.kernel[1_000_000..=1_000_999]);
    let (ok, body) = curl(&["--fail", "-r", "8388000-9000000", &url]).await;
    assert!(ok);
    assert!(body == f.kernel[8_388_000..=9_000_000]);

    // Resume: a partial file, then -C - continues from its end.
    std::fs::write(&out, &f.kernel[..1_234_567]).unwrap();
    let (ok, _) = curl(&["--fail", "-C", "-", "-o", s(&out), &url]).await;
    assert!(ok);
    assert!(
        std::fs::read(&out).unwrap() == f.kernel,
        "resumed download differs"
    );

    // HEAD.
    let (ok, head) = curl(&["--fail", "-I", &url]).await;
    assert!(ok);
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(
        head.contains(&format!("content-length: {}", f.kernel.len())),
        "{head}"
    );
    assert!(
        head.contains(&format!("etag: \"{}\"", f.kernel_digest)),
        "{head}"
    );

    // An unpublished digest: 404, curl --fail exits non-zero.
    let stray = format!("http://{}/artifacts/sha256/{}", run.addr, f.stray_digest);
    let (ok, _) = curl(&["--fail", "-o", "/dev/null", &stray]).await;
    assert!(!ok);
    // curl does not normalise away an encoded traversal.
    let sneaky = format!("http://{}/boot/..%2F..%2Fsecret", run.addr);
    let (ok, body) = curl(&["--path-as-is", "-w", "%{http_code}", &sneaky]).await;
    assert!(ok);
    assert_eq!(
        body, b"404",
        "an empty body (GRUB reads a 404's body as the file)"
    );

    assert_sent_by(&server, copies, 2 * f.kernel.len() as u64 - 1_234_567);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_https_with_self_signed_cert() {
    let f = Fixture::new(1 << 20);
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_path = f.dir.path().join("cert.pem");
    std::fs::write(&cert_path, ck.cert.pem()).unwrap();
    let tls = server_config(
        ck.cert.pem().as_bytes(),
        ck.key_pair.serialize_pem().as_bytes(),
    )
    .unwrap();
    let run = start(f.server_with(None), Some(tls)).await;
    let base = format!("https://127.0.0.1:{}", run.addr.port());
    let out = f.dir.path().join("kernel");
    let url = format!("{base}/artifacts/sha256/{}", f.kernel_digest);
    let (ok, _) = curl(&["--fail", "--cacert", s(&cert_path), "-o", s(&out), &url]).await;
    assert!(ok);
    assert!(std::fs::read(&out).unwrap() == f.kernel);
    let (ok, body) = curl(&["--fail", "--cacert", s(&cert_path), "-r", "-5", &url]).await;
    assert!(ok);
    assert_eq!(body, f.kernel[f.kernel.len() - 5..]);
    // Scripts served over HTTPS link to https:// URLs.
    let (ok, body) = curl(&[
        "--fail",
        "--cacert",
        s(&cert_path),
        &format!("{base}/boot.ipxe"),
    ])
    .await;
    assert!(ok);
    assert!(
        String::from_utf8(body)
            .unwrap()
            .contains(&format!("chain --autofree --replace {base}/ipxe?"))
    );
    // Without the CA the handshake fails; the server keeps serving afterwards.
    let (ok, _) = curl(&["--fail", "-o", "/dev/null", &url]).await;
    assert!(!ok);
    // Plain HTTP to the TLS port is not answered as HTTP.
    let (ok, _) = curl(&[
        "--fail",
        "-o",
        "/dev/null",
        &format!("http://127.0.0.1:{}/boot.ipxe", run.addr.port()),
    ])
    .await;
    assert!(!ok);
    let (ok, _) = curl(&["--fail", "--cacert", s(&cert_path), "-o", "/dev/null", &url]).await;
    assert!(ok);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_downloads_in_flight() {
    let f = Fixture::new(16 << 20);
    let run = start(f.server(), None).await;
    let url = format!("http://{}/artifacts/sha256/{}", run.addr, f.kernel_digest);
    let out = f.dir.path().join("slow");
    // A rate-limited download is still running when shutdown is asked for.
    let dl = {
        let out = out.clone();
        tokio::spawn(async move {
            curl(&["--fail", "--limit-rate", "8M", "-o", s(&out), &url])
                .await
                .0
        })
    };
    // Wait until the download has started (bytes on disk), then stop the server.
    while std::fs::metadata(&out).map_or(0, |m| m.len()) == 0 && !dl.is_finished() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    run.stop().await;
    assert!(dl.await.unwrap(), "download cut by shutdown");
    assert!(std::fs::read(&out).unwrap() == f.kernel);
}

/// One request the way GRUB 2.06's `http` module sends it, read until the server closes or
/// `Content-Length` bytes of body arrived; returns the raw header block and the body.
async fn grub_get(addr: SocketAddr, path: &str) -> (String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: GRUB 2.06-13+deb12u2\r\n\r\n",
        addr.ip(),
        addr.port()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .expect("the response within 5 s")
            .unwrap();
        got.extend_from_slice(&buf[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            assert!(n > 0, "closed inside the headers");
            continue;
        };
        let head = String::from_utf8(got[..end].to_vec()).unwrap();
        // GRUB's own test: byte for byte, this spelling.
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap_or_else(|| panic!("no `Content-Length: ` line GRUB would see:\n{head}"))
            .parse()
            .unwrap();
        if got.len() >= end + 4 + len {
            return (head, got[end + 4..end + 4 + len].to_vec());
        }
        assert!(n > 0, "closed inside the body");
    }
}

/// GRUB's HTTP client knows a file's size only from a header spelled `Content-Length: `
/// exactly, and takes a 404's body for the file: the server spells header names in Title-Case
/// and answers 404 with nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grub_http_client_sees_the_length_and_an_empty_404() {
    let f = Fixture::new(300_000);
    let run = start(f.server(), None).await;
    let (head, body) = grub_get(run.addr, &format!("/artifacts/sha256/{}", f.kernel_digest)).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(body == f.kernel, "kernel differs");
    let (head, body) = grub_get(run.addr, "/grub/arm64-efi/command.lst").await;
    assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{head}");
    assert!(body.is_empty());
    run.stop().await;
}

/// Issue #11 item 8: one address holding its most connections (idle, never sending a byte)
/// cannot keep curl from another address from being served; its next connection is closed at
/// once, over HTTP and over HTTPS (before the handshake). 127.0.0.0/8 is all local on Linux.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_every_connection() {
    use tokio::io::AsyncReadExt as _;
    let f = Fixture::new(1 << 20);
    let server = f.server_tuned(None, |c| c.max_connections_per_peer = 8);
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let tls = server_config(
        ck.cert.pem().as_bytes(),
        ck.key_pair.serialize_pem().as_bytes(),
    )
    .unwrap();
    let plain = start(Arc::clone(&server), None).await;
    let secure = start(Arc::clone(&server), Some(tls)).await;
    let connect = |to: SocketAddr| async move {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        sock.connect(to).await.unwrap()
    };
    // One budget for both listeners: four plain and four TLS connections fill 127.0.0.2's.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect(plain.addr).await);
        held.push(connect(secure.addr).await);
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(server.conn_budget().open(), 8);
    for to in [plain.addr, secure.addr] {
        let mut extra = connect(to).await;
        let mut b = [0u8; 16];
        let n = tokio::time::timeout(std::time::Duration::from_secs(2), extra.read(&mut b))
            .await
            .expect("the extra connection is closed at once");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }
    assert_eq!(server.counters().refused_per_peer, 2);
    // curl from 127.0.0.1 is served, over both.
    let url = format!("http://{}/artifacts/sha256/{}", plain.addr, f.kernel_digest);
    let (ok, body) = curl(&["--fail", &url]).await;
    assert!(ok && body == f.kernel);
    let url = format!(
        "https://localhost:{}/artifacts/sha256/{}",
        secure.addr.port(),
        f.kernel_digest
    );
    let (ok, body) = curl(&[
        "--fail",
        "--insecure",
        "--resolve",
        &format!("localhost:{}:127.0.0.1", secure.addr.port()),
        &url,
    ])
    .await;
    assert!(ok && body == f.kernel);
    drop(held);
    plain.stop().await;
    secure.stop().await;
}

/// Reads one response (head and `Content-Length` body) from `s`, with what was left over.
async fn read_response(
    s: &mut tokio::net::TcpStream,
    pending: &mut Vec<u8>,
    head_only: bool,
) -> (String, Vec<u8>) {
    use tokio::io::AsyncReadExt as _;
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(pending[..end + 4].to_vec()).unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            let len = if head_only { 0 } else { len };
            while pending.len() < end + 4 + len {
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed inside the body");
                pending.extend_from_slice(&chunk[..n]);
            }
            let body = pending[end + 4..end + 4 + len].to_vec();
            pending.drain(..end + 4 + len);
            return (head, body);
        }
        let n = s.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(pending)
        );
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// The plain-HTTP loop as iPXE uses it: one kept-alive connection, requests pipelined, file
/// bodies sent with sendfile (full, ranged, HEAD), Title-Case header names, and what it refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_pipelining_sendfile_and_refusals() {
    for (mode, copies) in SEND_MODES {
        eprintln!("file_send {mode:?}");
        keep_alive_pipelining_and_refusals(mode, copies).await;
    }
}

/// A blob cut short on disk while its body is being sent (someone else's truncation; tugboot
/// never rewrites a blob): the connection ends before `Content-Length`, what arrived is the
/// blob's true prefix, and the server goes on serving — the same on the sendfile and the
/// copying path (whose map must not take the process down with `SIGBUS`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_cut_short_mid_body_ends_the_connection_not_the_server() {
    use std::os::unix::fs::PermissionsExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    for mode in [FileSend::Copy, FileSend::Sendfile] {
        let f = Fixture::new(40 << 20);
        let server = server_sending(&f, mode);
        let run = start(Arc::clone(&server), None).await;
        let mut s = tokio::net::TcpStream::connect(run.addr).await.unwrap();
        let req = format!(
            "GET /artifacts/sha256/{} HTTP/1.1\r\nHost: a\r\n\r\n",
            f.kernel_digest
        );
        s.write_all(req.as_bytes()).await.unwrap();
        // The head and a first piece of the body, then the blob shrinks to 2 MiB under it.
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        while got.len() < (1 << 20) {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed early");
            got.extend_from_slice(&chunk[..n]);
        }
        let blob = f.store.path(&f.kernel_digest);
        std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&blob)
            .unwrap()
            .set_len(2 << 20)
            .unwrap();
        // Whatever was already in flight, then the end (a close or a reset).
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
        let split = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let body = &got[split..];
        assert!(
            body.len() < f.kernel.len(),
            "{mode:?}: a whole body from a cut blob"
        );
        assert!(
            body == &f.kernel[..body.len()],
            "{mode:?}: the bytes that came are not the blob's"
        );
        // Still serving: another artifact, whole.
        let url = format!("http://{}/artifacts/sha256/{}", run.addr, f.initrd_digest);
        let (ok, initrd) = curl(&["--fail", &url]).await;
        assert!(
            ok && initrd == f.initrd,
            "{mode:?}: the server stopped serving"
        );
        run.stop().await;
    }
}

async fn keep_alive_pipelining_and_refusals(mode: FileSend, copies: bool) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let f = Fixture::new(3 << 20);
    let server = server_sending(&f, mode);
    let run = start(Arc::clone(&server), None).await;
    let path = format!("/artifacts/sha256/{}", f.kernel_digest);
    let mut s = tokio::net::TcpStream::connect(run.addr).await.unwrap();
    // Three requests in one write: full GET, HEAD, a range.
    let reqs = format!(
        "GET {path} HTTP/1.1\r\nHost: a\r\n\r\nHEAD {path} HTTP/1.1\r\nHost: a\r\n\r\nGET {path} HTTP/1.1\r\nHost: a\r\nRange: bytes=1000-1999\r\n\r\n"
    );
    s.write_all(reqs.as_bytes()).await.unwrap();
    let mut pending = Vec::new();
    let (head, body) = read_response(&mut s, &mut pending, false).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("\r\nContent-Length: 3145728\r\n"), "{head}");
    assert!(head.contains("\r\nEtag: "), "Title-Case names: {head}");
    assert!(body == f.kernel, "full body differs");
    let (head, body) = read_response(&mut s, &mut pending, true).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.contains("Content-Length: 3145728"));
    assert!(body.is_empty());
    let (head, body) = read_response(&mut s, &mut pending, false).await;
    assert!(
        head.starts_with("HTTP/1.1 206 Partial Content\r\n"),
        "{head}"
    );
    assert!(
        head.contains("\r\nContent-Range: bytes 1000-1999/3145728\r\n"),
        "{head}"
    );
    assert_eq!(body, f.kernel[1000..2000]);
    // Still open: a 404 (empty body) on the same connection.
    s.write_all(b"GET /artifacts/sha256/00 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut s, &mut pending, false).await;
    assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{head}");
    assert!(body.is_empty());
    // Connection: close is honoured.
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nConnection: close\r\nRange: bytes=0-9\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (head, body) = read_response(&mut s, &mut pending, false).await;
    assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
    assert_eq!(body, f.kernel[..10]);
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty() && pending.is_empty());

    // HTTP/1.0: one response, then closed.
    let mut s = tokio::net::TcpStream::connect(run.addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).await.unwrap();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(all[split..] == f.kernel[..], "HTTP/1.0 body differs");

    // A request with a body, and garbage: 400 and closed.
    for bad in [
        &b"POST /ipxe HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"[..],
        &b"NOT HTTP\r\n\r\n"[..],
    ] {
        let mut s = tokio::net::TcpStream::connect(run.addr).await.unwrap();
        s.write_all(bad).await.unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        let text = String::from_utf8_lossy(&all);
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
    }
    // An oversized head: 431 and closed (the close may reset the connection before the 431
    // arrives, since part of the head stays unread; either way the connection ends).
    let mut s = tokio::net::TcpStream::connect(run.addr).await.unwrap();
    let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(20_000));
    let _ = s.write_all(huge.as_bytes()).await;
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all).await;
    assert!(
        all.is_empty() || all.starts_with(b"HTTP/1.1 431 "),
        "{}",
        String::from_utf8_lossy(&all)
    );
    assert_sent_by(&server, copies, 2 * (3 << 20) + 1010);
    run.stop().await;
}
