//! An artifact download as a [`Read`] that survives dropped connections: when the body ends
//! early or breaks, it asks again with `Range: bytes=N-` where N is the number of bytes it has
//! already handed out.
//!
//! Handed-out bytes are exactly the bytes that went through the slot writer's verifier
//! (`slot::write_slot` hashes every byte it reads, in order, before writing it), so resuming at
//! N continues the same verifier state: nothing is hashed twice or skipped, and a server that
//! answers a range with the wrong bytes is caught by the final digest like any other tampering.
//! A server that ignores the range (`200` instead of `206`) or answers another range is refused.

use std::io::{self, Read};
use std::time::Duration;

use crate::net::{HttpClient, NetError};

/// Consecutive failed attempts (no byte received) before the download gives up.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 6;

/// What a download gives up with (inside the `io::Error` its `read` returns).
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct DownloadError {
    /// The failures were of a kind that may go away (transport errors, 5xx, 408, 429, a body
    /// cut short): the update stays resumable. Otherwise (another status, a server that
    /// ignores or misanswers the range) the download cannot succeed as asked.
    pub retryable: bool,
    /// The last failure.
    #[source]
    pub source: NetError,
}

impl DownloadError {
    /// The `DownloadError` inside an `io::Error` from [`ResumableDownload`], if it is one.
    #[must_use]
    pub fn from_io(e: &io::Error) -> Option<&Self> {
        e.get_ref()?.downcast_ref::<Self>()
    }
}

/// A resumable GET of one artifact.
pub struct ResumableDownload<'a> {
    client: &'a HttpClient,
    url: String,
    offset: u64,
    expected: Option<u64>,
    body: Option<ureq::BodyReader<'static>>,
    failures: u32,
    max_attempts: u32,
    retry_delay: Duration,
    resumes: Vec<u64>,
}

impl std::fmt::Debug for ResumableDownload<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumableDownload")
            .field("url", &self.url)
            .field("offset", &self.offset)
            .field("resumes", &self.resumes)
            .finish_non_exhaustive()
    }
}

impl<'a> ResumableDownload<'a> {
    /// A download of `url` (absolute, or a path on the client's server) from byte 0.
    #[must_use]
    pub fn new(client: &'a HttpClient, url: &str) -> Self {
        Self {
            client,
            url: client.resolve(url),
            offset: 0,
            expected: None,
            body: None,
            failures: 0,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_delay: Duration::from_secs(1),
            resumes: Vec::new(),
        }
    }

    /// Starts at byte `from` (the bytes before it are already in the slot from an earlier
    /// attempt): the first request already asks for `Range: bytes=from-`.
    #[must_use]
    pub fn starting_at(mut self, from: u64) -> Self {
        self.offset = from;
        self
    }

    /// The signed size: a body that ends before it is a dropped connection, resumed. (Without
    /// it, the first end of a body is taken as the end.)
    #[must_use]
    pub fn expect_len(mut self, size: u64) -> Self {
        self.expected = Some(size);
        self
    }

    /// Attempts in a row without receiving a byte before giving up (at least 1).
    #[must_use]
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Pause before the k-th retry in a row: `k * delay`.
    #[must_use]
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    /// Bytes handed out so far.
    #[must_use]
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The offsets at which the download was resumed, in order.
    #[must_use]
    pub fn resumes(&self) -> &[u64] {
        &self.resumes
    }

    /// Opens the body at the current offset. `Err(true)` for errors worth retrying.
    fn open(&mut self) -> Result<ureq::BodyReader<'static>, (bool, NetError)> {
        let from = (self.offset > 0).then_some(self.offset);
        let resp = self.client.get(&self.url, from).map_err(|e| (true, e))?;
        let status = resp.status().as_u16();
        let url = || self.url.clone();
        match (status, from) {
            (200, None) => {}
            (206, Some(from)) => {
                let start = resp
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if start != Some(from) {
                    return Err((
                        false,
                        NetError::Protocol {
                            url: url(),
                            reason: format!("asked for bytes from {from}, got range {start:?}"),
                        },
                    ));
                }
            }
            (200, Some(from)) => {
                return Err((
                    false,
                    NetError::Protocol {
                        url: url(),
                        reason: format!("server ignored the range request from byte {from}"),
                    },
                ));
            }
            (s, _) => {
                let retry = s >= 500 || s == 408 || s == 429;
                return Err((
                    retry,
                    crate::net::client::refused(url(), status, resp.into_body()),
                ));
            }
        }
        if from.is_some() {
            self.resumes.push(self.offset);
        }
        Ok(resp.into_body().into_reader())
    }

    fn failed(&mut self, err: NetError) -> io::Result<()> {
        self.body = None;
        self.failures += 1;
        if self.failures >= self.max_attempts {
            return Err(io::Error::other(DownloadError {
                retryable: true,
                source: err,
            }));
        }
        std::thread::sleep(self.retry_delay * self.failures);
        Ok(())
    }
}

impl Read for ResumableDownload<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let body = match self.body.as_mut() {
                Some(b) => b,
                None => match self.open() {
                    Ok(b) => self.body.insert(b),
                    Err((true, e)) => {
                        self.failed(e)?;
                        continue;
                    }
                    Err((false, e)) => {
                        return Err(io::Error::other(DownloadError {
                            retryable: false,
                            source: e,
                        }));
                    }
                },
            };
            match body.read(buf) {
                Ok(0) => {
                    // The body ended. Before the signed size, the connection was cut: resume.
                    // Otherwise this is the end; the verifier decides whether it is right.
                    self.body = None;
                    match self.expected {
                        Some(size) if self.offset < size => {
                            let url = self.url.clone();
                            let offset = self.offset;
                            self.failed(NetError::Protocol {
                                url,
                                reason: format!("body ended at byte {offset} of {size}"),
                            })?;
                        }
                        _ => return Ok(0),
                    }
                }
                Ok(n) => {
                    self.failures = 0;
                    self.offset += u64::try_from(n).unwrap_or(u64::MAX);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let url = self.url.clone();
                    self.failed(NetError::Body { url, source: e })?;
                }
            }
        }
    }
}

/// An artifact on the server as an [`ArtifactSource`]: each `open_at` is a
/// [`ResumableDownload`] from that byte (which itself resumes after dropped connections).
/// Errors are transient when the download gave up on failures that may go away.
#[derive(Debug)]
pub struct ArtifactDownload<'a> {
    client: &'a HttpClient,
    url: String,
    size: u64,
    retry_delay: Duration,
    max_attempts: u32,
    live: Option<std::sync::Arc<crate::net::health::Liveness>>,
    /// Every offset a request started at other than 0, in order (a resumed download, or an
    /// earlier attempt's checkpoint).
    pub resumes: Vec<u64>,
}

impl<'a> ArtifactDownload<'a> {
    /// The artifact of signed `size` at `url`.
    #[must_use]
    pub fn new(client: &'a HttpClient, url: &str, size: u64) -> Self {
        Self {
            client,
            url: url.to_owned(),
            size,
            retry_delay: Duration::from_secs(1),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            live: None,
            resumes: Vec::new(),
        }
    }

    /// Pause before the k-th retry in a row: `k * delay`.
    #[must_use]
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    /// Each read is a sign of life for the watchdog feeder (a long download is not a hang).
    #[must_use]
    pub fn liveness(mut self, live: Option<std::sync::Arc<crate::net::health::Liveness>>) -> Self {
        self.live = live;
        self
    }

    /// Attempts in a row without a byte before a download gives up.
    #[must_use]
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }
}

/// Records the offsets of a download's range requests into its source's list when dropped.
struct Tracked<'a, 'b> {
    inner: ResumableDownload<'a>,
    resumes: &'b mut Vec<u64>,
    live: Option<&'b crate::net::health::Liveness>,
}

impl Read for Tracked<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(l) = self.live {
            l.beat();
        }
        self.inner.read(buf)
    }
}

impl Drop for Tracked<'_, '_> {
    fn drop(&mut self) {
        self.resumes.extend_from_slice(self.inner.resumes());
    }
}

impl crate::slot::ArtifactSource for ArtifactDownload<'_> {
    fn open_at(&mut self, from: u64) -> io::Result<Box<dyn Read + '_>> {
        let inner = ResumableDownload::new(self.client, &self.url)
            .starting_at(from)
            .expect_len(self.size)
            .retry_delay(self.retry_delay)
            .max_attempts(self.max_attempts);
        Ok(Box::new(Tracked {
            inner,
            resumes: &mut self.resumes,
            live: self.live.as_deref(),
        }))
    }

    fn is_transient(&self, error: &io::Error) -> bool {
        DownloadError::from_io(error).is_some_and(|d| d.retryable)
    }
}
