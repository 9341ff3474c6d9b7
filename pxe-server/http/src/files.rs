//! Streaming files (artifacts, boot files) with ranges, entity tags and pooled read buffers.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::task::JoinHandle;

use crate::conn::FileHint;
use crate::range::{self, RangeDecision};
use crate::server::Counters;

/// What streaming needs from the server: the frame size, counters and the buffer pool.
#[derive(Debug, Clone)]
pub(crate) struct Streaming {
    pub(crate) chunk: usize,
    pub(crate) counters: Arc<Counters>,
    pub(crate) buffers: Arc<BufPool>,
}

/// 404 with an empty body: GRUB's HTTP client does not look at the status of a 404 (it
/// reads past it) and would take a body as the file's content.
pub(crate) fn not_found() -> Response {
    plain(StatusCode::NOT_FOUND, "")
}

pub(crate) fn plain(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

pub(crate) struct FileRequest {
    pub(crate) path: PathBuf,
    /// The size the file must have (published artifacts); a mismatch is a 500, never served.
    pub(crate) expected_len: Option<u64>,
    /// Strong entity tag (opaque part, no quotes).
    pub(crate) etag: Option<String>,
    /// Content-addressed: cacheable forever.
    pub(crate) immutable: bool,
}

fn open_at(path: PathBuf) -> io::Result<(File, u64)> {
    let file = File::open(&path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "not a regular file",
        ));
    }
    Ok((file, meta.len()))
}

pub(crate) async fn serve_file(
    s: &Streaming,
    req: FileRequest,
    method: &Method,
    headers: &HeaderMap,
) -> Response {
    let path = req.path.clone();
    let opened = tokio::task::spawn_blocking(move || open_at(path)).await;
    let (file, len) = match opened {
        Ok(Ok(x)) => x,
        Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => return not_found(),
        Ok(Err(e)) => {
            tracing::error!(path = %req.path.display(), error = %e, "cannot open");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot read file\n");
        }
        Err(e) => {
            tracing::error!(error = %e, "open task failed");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
        }
    };
    if let Some(expected) = req.expected_len
        && expected != len
    {
        tracing::error!(
            path = %req.path.display(),
            expected,
            actual = len,
            "stored blob does not have its published size; not serving it"
        );
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "stored blob is damaged\n",
        );
    }

    let mut builder = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .header(
            header::CACHE_CONTROL,
            if req.immutable {
                "public, max-age=31536000, immutable"
            } else {
                "no-cache"
            },
        );
    if let Some(tag) = &req.etag {
        builder = builder.header(header::ETAG, format!("\"{tag}\""));
        if let Some(inm) = headers.get(header::IF_NONE_MATCH)
            && range::if_none_match(inm.as_bytes(), tag)
        {
            return finish(builder.status(StatusCode::NOT_MODIFIED), Body::empty());
        }
    }
    let honour_range = match headers.get(header::IF_RANGE) {
        None => true,
        Some(v) => req
            .etag
            .as_deref()
            .is_some_and(|tag| range::if_range_matches(v.as_bytes(), tag)),
    };
    let range_header = headers
        .get(header::RANGE)
        .filter(|_| honour_range)
        .map(HeaderValue::as_bytes);
    let decision = range::decide_range(range_header, len);
    let (status, start) = match decision {
        RangeDecision::Full => (StatusCode::OK, 0),
        RangeDecision::Partial { start, end } => {
            builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
            (StatusCode::PARTIAL_CONTENT, start)
        }
        RangeDecision::Unsatisfiable => {
            return finish(
                builder
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{len}")),
                Body::empty(),
            );
        }
    };
    let body_len = decision.body_len(len);
    let builder = builder
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, body_len);
    if method == Method::HEAD || body_len == 0 {
        return finish(builder, Body::empty());
    }
    // The plain-HTTP loop sends the file itself (the hint: sendfile(2), or copied from a map);
    // the streaming body, for HTTPS, starts reading only when polled, so the unused one costs
    // nothing.
    let file = Arc::new(Mutex::new(Some(file)));
    let builder = builder.extension(FileHint {
        file: Arc::clone(&file),
        start,
        len: body_len,
        immutable: req.immutable,
        counters: Arc::clone(&s.counters),
    });
    let body = file_body(
        file,
        start,
        body_len,
        s.chunk,
        Arc::clone(&s.counters),
        Arc::clone(&s.buffers),
    );
    finish(builder, body)
}

fn finish(builder: axum::http::response::Builder, body: Body) -> Response {
    builder.body(body).unwrap_or_else(|e| {
        tracing::error!(error = %e, "building response");
        plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
    })
}

/// Read buffers handed back once the HTTP layer has written them. Reusing the most recently
/// freed buffer keeps it warm in the CPU cache and spares the page faults and zeroing of fresh
/// memory; measured in `docs/benchmarks.md`.
#[derive(Debug, Default)]
pub(crate) struct BufPool {
    free: Mutex<Vec<Vec<u8>>>,
}

/// Most buffers kept for reuse (the rest are freed).
const POOLED_BUFFERS: usize = 64;

impl BufPool {
    fn take(&self, cap: usize) -> Vec<u8> {
        let reused = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut buf = reused.unwrap_or_default();
        buf.clear();
        buf.reserve_exact(cap);
        buf
    }

    fn give(&self, buf: Vec<u8>) {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        if free.len() < POOLED_BUFFERS {
            free.push(buf);
        }
    }
}

/// The owner of a body frame's memory: returns the buffer to the pool when hyper drops the frame.
struct Pooled {
    buf: Vec<u8>,
    pool: Arc<BufPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

type ReadJob = JoinHandle<(File, io::Result<Vec<u8>>)>;

/// Starts reading the next `n` bytes of `file` (at its current position) on the blocking pool.
fn read_next(file: File, n: u64, seek_to: Option<u64>, pool: &Arc<BufPool>) -> ReadJob {
    let pool = Arc::clone(pool);
    tokio::task::spawn_blocking(move || {
        let mut file = file;
        let result = (|| {
            if let Some(pos) = seek_to {
                file.seek(SeekFrom::Start(pos))?;
            }
            let mut buf = pool.take(usize::try_from(n).unwrap_or(usize::MAX));
            // File reads straight into the spare capacity: no zeroing pass.
            (&mut file).take(n).read_to_end(&mut buf)?;
            Ok(buf)
        })();
        (file, result)
    })
}

/// Streams `len` bytes from `start`, in `chunk`-sized frames, always one read ahead of the
/// network so disk and socket work overlap. A file that turns out shorter than expected ends the
/// body with an error, which aborts the connection: the client never mistakes it for the end.
fn file_body(
    file: Arc<Mutex<Option<File>>>,
    start: u64,
    len: u64,
    chunk: usize,
    counters: Arc<Counters>,
    pool: Arc<BufPool>,
) -> Body {
    let chunk = u64::try_from(chunk).unwrap_or(u64::MAX);
    struct St {
        /// The file until the first poll (then it moves into the read jobs).
        file: Arc<Mutex<Option<File>>>,
        start: u64,
        job: Option<ReadJob>,
        remaining: u64,
        chunk: u64,
        counters: Arc<Counters>,
        pool: Arc<BufPool>,
    }
    let st = St {
        file,
        start,
        job: None,
        remaining: len,
        chunk,
        counters,
        pool,
    };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        if st.remaining == 0 {
            return None;
        }
        if st.job.is_none() {
            let taken = st
                .file
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            let Some(file) = taken else {
                return Some((Err(io::Error::other("file already sent")), st));
            };
            let first = st.remaining.min(st.chunk);
            st.job = Some(read_next(file, first, Some(st.start), &st.pool));
        }
        let job = st.job.take()?;
        let want = st.remaining.min(st.chunk);
        let (file, result) = match job.await {
            Ok(x) => x,
            Err(e) => return Some((Err(io::Error::other(e)), st)),
        };
        let buf = match result {
            Ok(buf) if buf.len() as u64 == want => buf,
            Ok(buf) => {
                let e = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("file ended early: read {} of {want} bytes", buf.len()),
                );
                tracing::error!(error = %e, "streaming file");
                return Some((Err(e), st));
            }
            Err(e) => {
                tracing::error!(error = %e, "streaming file");
                return Some((Err(e), st));
            }
        };
        st.remaining -= want;
        if st.remaining > 0 {
            st.job = Some(read_next(file, st.remaining.min(st.chunk), None, &st.pool));
        }
        st.counters.body_bytes.fetch_add(want, Ordering::Relaxed);
        let frame = Bytes::from_owner(Pooled {
            buf,
            pool: Arc::clone(&st.pool),
        });
        Some((Ok::<Bytes, io::Error>(frame), st))
    });
    Body::from_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_buffers_return_to_the_pool() {
        let pool = Arc::new(BufPool::default());
        let mut buf = pool.take(1000);
        buf.extend_from_slice(b"abc");
        let ptr = buf.as_ptr();
        let frame = Bytes::from_owner(Pooled {
            buf,
            pool: Arc::clone(&pool),
        });
        let copy = frame.clone();
        drop(frame);
        assert_eq!(&copy[..], b"abc", "still owned by the other handle");
        assert!(pool.free.lock().unwrap().is_empty());
        drop(copy);
        let again = pool.take(10);
        assert_eq!(again.as_ptr(), ptr, "the freed buffer is reused");
        assert!(again.is_empty() && again.capacity() >= 1000);
        for _ in 0..POOLED_BUFFERS + 10 {
            pool.give(Vec::with_capacity(1));
        }
        assert_eq!(pool.free.lock().unwrap().len(), POOLED_BUFFERS);
    }
}
