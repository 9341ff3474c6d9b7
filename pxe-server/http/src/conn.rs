//! The plain-HTTP/1.1 connection loop: reads requests, hands them to the router, writes the
//! responses — and sends file bodies with `sendfile(2)`, straight from the page cache to the
//! socket, without reading them into user memory first; or, to a client on this same host
//! ([`FileSend::Auto`]), copies an artifact once from a map of it into the socket (why: the
//! [`FileSend`] docs and docs/http.md).
//!
//! Why not hyper here: hyper writes bodies from memory, so every artifact byte was read from
//! the page cache into a buffer and copied again into the socket; with a rack booting at once
//! that is most of the server's CPU (measured in `docs/benchmarks.md`, boot storms). The
//! router stays the same; a file response carries a [`FileHint`] the loop uses instead of
//! the (lazy, never started) streaming body. HTTPS keeps hyper (TLS encrypts in user memory
//! anyway).
//!
//! What the loop does and does not do, as the boot endpoints need it:
//! - HTTP/1.1 keep-alive (iPXE loads script, kernel and initrd over one connection), pipelined
//!   requests, `Connection: close`; HTTP/1.0 gets one response and a close;
//! - header names written in Title-Case (GRUB matches `Content-Length: ` byte for byte);
//! - a deadline for a request's head ([`HEADER_READ_TIMEOUT`](crate::server::HEADER_READ_TIMEOUT),
//!   also for an idle kept-alive connection), a cap on its size;
//! - no request bodies (every endpoint is GET/HEAD): a request announcing one gets 400 and
//!   a close;
//! - graceful shutdown: idle connections close, requests in flight finish.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, Response, StatusCode, Version, header};
use http_body_util::BodyExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt as _;

use crate::server::{Counters, HEADER_READ_TIMEOUT, PeerAddr};

/// Longest request head accepted (request line and headers).
pub const MAX_HEAD: usize = 16 << 10;
/// Most request headers accepted.
const MAX_HEADERS: usize = 64;
/// A client that accepts no body byte for this long is dropped.
pub const SEND_STALL: Duration = Duration::from_secs(60);
/// Largest single `sendfile` call (the kernel caps one call a little below 2 GiB anyway).
const SENDFILE_MAX: usize = 1 << 30;
/// Bytes of an artifact mapped at a time on the copy path. Bounds what the maps add to the
/// process's RSS (page-cache pages, not memory of its own): 8 MiB per copying connection, and
/// those all come from this host's addresses, 32 per address by default. 2 MiB measured equal
/// with 200 connections and 5–7 % slower with 8.
const MAP_WINDOW: u64 = 8 << 20;
/// Bytes per `write(2)` on the copy path (256 KiB, 1 MiB and 4 MiB measured: 1 MiB fastest).
const COPY_PIECE: usize = 1 << 20;

/// How the plain-HTTP loop sends file bodies (`[http] file_send` in `tugboot serve`'s config).
///
/// `sendfile(2)` hands page-cache pages to the socket: with a network card, the card's DMA reads
/// them and no CPU copies a byte. With the client on this host (loopback, or one of this host's
/// own addresses) there is no card: the client's `read` copies straight out of the page cache,
/// in its own small reads, and that costs more CPU than the server copying the bytes once, in
/// large pieces, into socket buffers the client then reads while they are still in the CPU's
/// cache (measured: docs/benchmarks.md, "HTTP artifacts"; the whole host serves ≈ 1.5× the
/// bytes per second that way on loopback).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileSend {
    /// `sendfile(2)`, except to clients on this host: those get artifacts copied (default).
    #[default]
    Auto,
    /// Always `sendfile(2)`.
    Sendfile,
    /// Always copy artifacts. Behind a veth pair (a container's link) measured no faster than
    /// `sendfile`; there for links where it may be (docs/http.md).
    Copy,
}

impl FileSend {
    /// Whether a connection from `peer`, accepted on `local`, gets artifacts copied.
    pub(crate) fn copies_for(self, peer: SocketAddr, local: Option<SocketAddr>) -> bool {
        match self {
            FileSend::Sendfile => false,
            FileSend::Copy => true,
            FileSend::Auto => {
                let peer = peer.ip().to_canonical();
                // A client on this host connects from loopback, or from the very address it
                // connects to (the kernel routes a host's own addresses over loopback).
                peer.is_loopback() || local.is_some_and(|l| l.ip().to_canonical() == peer)
            }
        }
    }
}

/// A file body the connection loop sends itself (with `sendfile(2)`, or copied from a map): the
/// file, where the body starts and how long it is. Attached to a response as an extension by
/// `files::serve_file`; the response's own body streams the same bytes for connections that
/// cannot use it (HTTPS).
#[derive(Clone, Debug)]
pub(crate) struct FileHint {
    /// Shared with the lazy streaming body: whoever takes the file first sends it.
    pub(crate) file: Arc<Mutex<Option<File>>>,
    pub(crate) start: u64,
    pub(crate) len: u64,
    /// A content-addressed blob, never rewritten in place: safe to map (`mapped.rs`).
    pub(crate) immutable: bool,
    pub(crate) counters: Arc<Counters>,
}

impl FileHint {
    fn take(&self) -> Option<File> {
        self.file
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// Serves plain HTTP on `listener` until `shutdown` completes, then lets requests in flight
/// finish.
/// Every connection is admitted against `budget` first (per address and in all; the others
/// are closed at once and counted in `counters`) and holds its place until it ends.
pub(crate) async fn serve_plain(
    listener: TcpListener,
    router: Router,
    budget: Arc<tugboot_fleet::conn::ConnBudget>,
    counters: &Counters,
    file_send: FileSend,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => match budget.admit(peer.ip()) {
                    Ok(permit) => {
                        let _ = tcp.set_nodelay(true);
                        let copy = file_send.copies_for(peer, tcp.local_addr().ok());
                        let conn = connection(tcp, peer, copy, router.clone(), stop_rx.clone());
                        tasks.spawn(async move {
                            conn.await;
                            drop(permit);
                        });
                    }
                    Err(why) => crate::server::refused(counters, peer, why),
                },
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Why a connection ends.
#[derive(Debug)]
enum End {
    /// Closed by the client, idle too long, or shutting down: nothing to answer.
    Quiet,
    /// A request that cannot be served: answer with this status, then close.
    Refuse(StatusCode),
    /// The socket failed, or a body could not be completed: close at once.
    Abort,
}

/// `copy`: send artifacts by copying them from a map instead of with `sendfile(2)`
/// ([`FileSend`]).
async fn connection(
    mut tcp: TcpStream,
    peer: SocketAddr,
    copy: bool,
    router: Router,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let (req, used) = match read_request(&mut tcp, &mut buf, &mut stop, peer).await {
            Ok(r) => r,
            Err(End::Refuse(status)) => {
                let _ = write_refusal(&mut tcp, status).await;
                return;
            }
            Err(End::Quiet | End::Abort) => return,
        };
        buf.drain(..used);
        let method = req.method().clone();
        let keep_alive = wants_keep_alive(req.version(), req.headers());
        let Ok(resp) = router.clone().oneshot(req).await;
        match write_response(&mut tcp, &method, resp, keep_alive, copy).await {
            Ok(()) if keep_alive => {}
            Ok(()) => {
                let _ = tcp.shutdown().await;
                return;
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                return;
            }
        }
    }
}

fn wants_keep_alive(version: Version, headers: &HeaderMap) -> bool {
    let has = |token: &str| {
        headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    version == Version::HTTP_11 && !has("close")
}

/// Reads one request head (more bytes may follow in `buf`: pipelining); returns the request
/// and how many bytes of `buf` it used.
async fn read_request(
    tcp: &mut TcpStream,
    buf: &mut Vec<u8>,
    stop: &mut watch::Receiver<bool>,
    peer: SocketAddr,
) -> Result<(Request<Body>, usize), End> {
    let deadline = tokio::time::Instant::now() + HEADER_READ_TIMEOUT;
    loop {
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Request::new(&mut headers);
            match parsed.parse(buf) {
                Ok(httparse::Status::Complete(used)) => {
                    return Ok((to_request(&parsed, peer)?, used));
                }
                Ok(httparse::Status::Partial) => {}
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(End::Refuse(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
                }
                Err(_) => return Err(End::Refuse(StatusCode::BAD_REQUEST)),
            }
            if buf.len() >= MAX_HEAD {
                return Err(End::Refuse(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
            }
        }
        let idle = buf.is_empty();
        let old = buf.len();
        buf.resize(old + 4096, 0);
        let read = tokio::select! {
            r = tokio::time::timeout_at(deadline, tcp.read(&mut buf[old..])) => r,
            // Shutting down: an idle connection closes; a request being read is finished.
            _ = stop.wait_for(|s| *s), if idle => Ok(Ok(0)),
        };
        let n = match read {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => return Err(End::Abort),
            Err(_) => return Err(End::Quiet),
        };
        buf.truncate(old + n);
        if n == 0 {
            return Err(End::Quiet);
        }
    }
}

fn to_request(parsed: &httparse::Request<'_, '_>, peer: SocketAddr) -> Result<Request<Body>, End> {
    let bad = || End::Refuse(StatusCode::BAD_REQUEST);
    let method =
        Method::from_bytes(parsed.method.ok_or_else(bad)?.as_bytes()).map_err(|_| bad())?;
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Err(End::Refuse(StatusCode::HTTP_VERSION_NOT_SUPPORTED)),
    };
    let mut req = Request::builder()
        .method(method)
        .uri(parsed.path.ok_or_else(bad)?)
        .version(version);
    for h in parsed.headers.iter() {
        let name = header::HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad())?;
        if name == header::TRANSFER_ENCODING
            || (name == header::CONTENT_LENGTH && h.value.iter().any(|b| *b != b'0'))
        {
            // Every endpoint is GET/HEAD: a body would have to be read and thrown away.
            return Err(bad());
        }
        req = req.header(
            name,
            header::HeaderValue::from_bytes(h.value).map_err(|_| bad())?,
        );
    }
    let mut req = req.body(Body::empty()).map_err(|_| bad())?;
    req.extensions_mut().insert(ConnectInfo(PeerAddr(peer)));
    Ok(req)
}

/// The fuzz target's entry (`fuzzing::request_head`).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn fuzz_request_head(data: &[u8]) {
    let peer = SocketAddr::from(([192, 0, 2, 1], 1234));
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    if let Ok(httparse::Status::Complete(used)) = parsed.parse(data) {
        assert!(used <= data.len());
        if let Ok(req) = to_request(&parsed, peer) {
            assert!(!req.headers().contains_key(header::TRANSFER_ENCODING));
            let _ = wants_keep_alive(req.version(), req.headers());
            let head = head_bytes(StatusCode::OK, req.headers(), 7, false);
            assert!(head.ends_with(b"\r\n\r\n"));
        }
    }
}

/// `content-length` → `Content-Length`.
fn title_case(name: &str, out: &mut Vec<u8>) {
    let mut up = true;
    for b in name.bytes() {
        out.push(if up { b.to_ascii_uppercase() } else { b });
        up = b == b'-';
    }
}

fn head_bytes(
    status: StatusCode,
    headers: &HeaderMap,
    content_length: u64,
    keep_alive: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if matches!(
            *name,
            header::CONTENT_LENGTH | header::CONNECTION | header::TRANSFER_ENCODING | header::DATE
        ) {
            continue;
        }
        title_case(name.as_str(), &mut out);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Date: ");
    out.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
    out.extend_from_slice(b"\r\n");
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    // 304 and 204 carry no Content-Length of their own body.
    if status != StatusCode::NOT_MODIFIED && status != StatusCode::NO_CONTENT {
        out.extend_from_slice(b"Content-Length: ");
        out.extend_from_slice(content_length.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

async fn write_refusal(tcp: &mut TcpStream, status: StatusCode) -> io::Result<()> {
    let head = head_bytes(status, &HeaderMap::new(), 0, false);
    tcp.write_all(&head).await?;
    tcp.shutdown().await
}

async fn write_response(
    tcp: &mut TcpStream,
    method: &Method,
    resp: Response<Body>,
    keep_alive: bool,
    copy: bool,
) -> io::Result<()> {
    let (parts, body) = resp.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let no_body = *method == Method::HEAD
        || parts.status == StatusCode::NOT_MODIFIED
        || parts.status == StatusCode::NO_CONTENT;
    if no_body {
        let head = head_bytes(
            parts.status,
            &parts.headers,
            declared.unwrap_or(0),
            keep_alive,
        );
        return tcp.write_all(&head).await;
    }
    if let Some(hint) = parts.extensions.get::<FileHint>()
        && let Some(file) = hint.take()
    {
        drop(body);
        let head = head_bytes(parts.status, &parts.headers, hint.len, keep_alive);
        tcp.write_all(&head).await?;
        if copy && hint.immutable {
            return send_mapped(tcp, &file, hint.start, hint.len, &hint.counters).await;
        }
        return send_file(tcp, &file, hint.start, hint.len, &hint.counters).await;
    }
    match declared {
        // A streaming body of known length: frames as they come, checked against the length.
        Some(len) => {
            let head = head_bytes(parts.status, &parts.headers, len, keep_alive);
            tcp.write_all(&head).await?;
            let mut body = body;
            let mut sent = 0u64;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(io::Error::other)?;
                if let Ok(data) = frame.into_data() {
                    sent += data.len() as u64;
                    if sent > len {
                        return Err(io::Error::other("body longer than its Content-Length"));
                    }
                    tcp.write_all(&data).await?;
                }
            }
            if sent == len {
                Ok(())
            } else {
                Err(io::Error::other("body shorter than its Content-Length"))
            }
        }
        // Scripts and texts: small, in memory; head and body in one write.
        None => {
            let bytes = body.collect().await.map_err(io::Error::other)?.to_bytes();
            let mut out = head_bytes(parts.status, &parts.headers, bytes.len() as u64, keep_alive);
            out.extend_from_slice(&bytes);
            tcp.write_all(&out).await
        }
    }
}

/// One write-like `call` on the socket (`write`, `sendfile`) once it is writable, again while
/// it would block; the bytes it moved. A client that takes nothing for [`SEND_STALL`] is an
/// error.
async fn write_when_ready(
    tcp: &TcpStream,
    mut call: impl FnMut() -> io::Result<usize>,
) -> io::Result<usize> {
    loop {
        tokio::time::timeout(SEND_STALL, tcp.writable())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client stalled"))??;
        match tcp.try_io(Interest::WRITABLE, &mut call) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            done => return done,
        }
    }
}

/// `len` bytes of `file` from `start` to the socket with `sendfile(2)`.
async fn send_file(
    tcp: &TcpStream,
    file: &File,
    start: u64,
    len: u64,
    counters: &Counters,
) -> io::Result<()> {
    let mut offset = start;
    let end = start + len;
    while offset < end {
        let want = usize::try_from(end - offset)
            .unwrap_or(SENDFILE_MAX)
            .min(SENDFILE_MAX);
        let before = offset;
        let sent = write_when_ready(tcp, || {
            rustix::fs::sendfile(tcp.as_fd(), file.as_fd(), Some(&mut offset), want)
                .map_err(io::Error::from)
        })
        .await?;
        if sent == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("file ended early at byte {offset} of {end}"),
            ));
        }
        counters
            .body_bytes
            .fetch_add(offset - before, Ordering::Relaxed);
    }
    Ok(())
}

/// `len` bytes of the content-addressed `file` from `start` to the socket, copied by `write(2)`
/// from a map of [`MAP_WINDOW`] bytes at a time ([`FileSend`]).
async fn send_mapped(
    tcp: &TcpStream,
    file: &File,
    start: u64,
    len: u64,
    counters: &Counters,
) -> io::Result<()> {
    let mut offset = start;
    let end = start + len;
    while offset < end {
        let window = (end - offset).min(MAP_WINDOW);
        // A blob cut short since it was opened ends the response here, as a short file does on
        // the sendfile path (one cut short while a window is out fails that window's write).
        let now_len = file.metadata()?.len();
        if now_len < offset + window {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("file ended early at byte {now_len} of {end}"),
            ));
        }
        let map = match crate::mapped::Window::map(
            file,
            offset,
            usize::try_from(window).map_err(io::Error::other)?,
        ) {
            Ok(map) => map,
            // A file system without maps, or the process out of map slots: the rest goes the
            // sendfile way rather than failing the download.
            Err(e) => {
                tracing::debug!(error = %e, "cannot map an artifact; sending the rest with sendfile");
                return send_file(tcp, file, offset, end - offset, counters).await;
            }
        };
        let mut pos = 0;
        while pos < map.len() {
            let sent =
                match write_when_ready(tcp, || map.write_to(tcp.as_fd(), pos, COPY_PIECE)).await {
                    Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                    Ok(n) => n,
                    Err(e) if e.raw_os_error() == Some(rustix::io::Errno::FAULT.raw_os_error()) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!(
                                "file cut short under its map near byte {}",
                                offset + pos as u64
                            ),
                        ));
                    }
                    Err(e) => return Err(e),
                };
            pos += sent;
            counters
                .body_bytes
                .fetch_add(sent as u64, Ordering::Relaxed);
            counters
                .copied_body_bytes
                .fetch_add(sent as u64, Ordering::Relaxed);
        }
        offset += window;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clients_on_this_host_get_copies_by_default() {
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        let here = Some(sa("10.0.0.1:8080"));
        let auto = FileSend::Auto;
        // Loopback, either family, also as an IPv4-mapped address on a dual-stack listener.
        assert!(auto.copies_for(sa("127.0.0.1:5000"), Some(sa("127.0.0.1:8080"))));
        assert!(auto.copies_for(sa("127.3.2.1:5000"), here));
        assert!(auto.copies_for(sa("[::1]:5000"), Some(sa("[::1]:8080"))));
        assert!(auto.copies_for(sa("[::ffff:127.0.0.1]:5000"), Some(sa("[::]:8080"))));
        // This host's own address, connecting to itself.
        assert!(auto.copies_for(sa("10.0.0.1:5000"), here));
        assert!(auto.copies_for(sa("[::ffff:10.0.0.1]:5000"), here));
        // Anyone else, or no local address known: sendfile.
        assert!(!auto.copies_for(sa("10.0.0.2:5000"), here));
        assert!(!auto.copies_for(sa("[fd00::2]:5000"), Some(sa("[fd00::1]:8080"))));
        assert!(!auto.copies_for(sa("10.0.0.1:5000"), None));
        // The fixed modes ignore the addresses.
        assert!(FileSend::Copy.copies_for(sa("10.0.0.2:5000"), here));
        assert!(!FileSend::Sendfile.copies_for(sa("127.0.0.1:5000"), here));
    }

    #[test]
    fn header_names_go_out_in_title_case() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        h.insert(header::ETAG, "\"x\"".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "99".parse().unwrap());
        let head = String::from_utf8(head_bytes(StatusCode::OK, &h, 5, true)).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("\r\nContent-Type: text/plain\r\n"), "{head}");
        assert!(head.contains("\r\nEtag: \"x\"\r\n"), "{head}");
        assert!(head.contains("\r\nDate: "), "{head}");
        // Our own length, once; no Connection header on a kept-alive connection.
        assert_eq!(head.matches("Content-Length").count(), 1, "{head}");
        assert!(head.ends_with("\r\nContent-Length: 5\r\n\r\n"), "{head}");
        assert!(!head.contains("Connection"));
        let closing =
            String::from_utf8(head_bytes(StatusCode::NOT_MODIFIED, &h, 0, false)).unwrap();
        assert!(closing.contains("\r\nConnection: close\r\n"));
        assert!(!closing.contains("Content-Length"), "{closing}");
    }

    #[test]
    fn keep_alive_by_version_and_connection_header() {
        let mut h = HeaderMap::new();
        assert!(wants_keep_alive(Version::HTTP_11, &h));
        assert!(!wants_keep_alive(Version::HTTP_10, &h));
        h.insert(header::CONNECTION, "Keep-Alive, Close".parse().unwrap());
        assert!(!wants_keep_alive(Version::HTTP_11, &h));
    }

    #[test]
    fn requests_with_bodies_or_bad_heads_are_refused() {
        let peer: SocketAddr = "192.0.2.1:1234".parse().unwrap();
        let parse = |raw: &[u8]| {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut r = httparse::Request::new(&mut headers);
            assert!(r.parse(raw).unwrap().is_complete());
            to_request(&r, peer).map(|r| r.uri().to_string())
        };
        assert_eq!(
            parse(b"GET /ipxe?mac=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").unwrap(),
            "/ipxe?mac=1"
        );
        assert!(matches!(
            parse(b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\n"),
            Err(End::Refuse(StatusCode::BAD_REQUEST))
        ));
        assert!(matches!(
            parse(b"GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(End::Refuse(StatusCode::BAD_REQUEST))
        ));
    }
}
