//! Streaming verification of artifacts: SHA-256 and exact size, enforced while the bytes flow.
//!
//! The size is enforced on every chunk (endless-data protection): the first byte beyond the
//! signed size fails, without waiting for the end of the stream.

use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

use crate::digest::Sha256Digest;
use crate::manifest::Artifact;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    #[error("more than the expected {expected} bytes")]
    TooLong { expected: u64 },
    #[error("stream ended after {actual} of {expected} bytes")]
    TooShort { expected: u64, actual: u64 },
    #[error("sha256 mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
}

impl StreamError {
    /// The `io::Error` form used by the reader and writer adaptors (kind `InvalidData`); the
    /// `StreamError` stays reachable through [`StreamError::from_io`].
    pub fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }

    /// Recovers the `StreamError` inside an `io::Error` made by this module.
    pub fn from_io(e: &io::Error) -> Option<StreamError> {
        e.get_ref()?.downcast_ref::<StreamError>().cloned()
    }
}

/// An inner reader claimed more bytes than the buffer holds (a broken `Read` impl): an error, not a
/// panic.
pub(crate) fn bad_reader() -> io::Error {
    io::Error::other("inner reader reported more bytes than its buffer holds")
}

fn bad_writer() -> io::Error {
    io::Error::other("inner writer reported more bytes than it was given")
}

/// Hashes and counts a stream against an expected digest and size (sans-IO: bytes in, verdict out).
#[derive(Debug, Clone)]
pub struct ArtifactVerifier {
    hasher: Sha256,
    expected: Sha256Digest,
    size: u64,
    seen: u64,
}

impl ArtifactVerifier {
    pub fn new(sha256: Sha256Digest, size: u64) -> Self {
        ArtifactVerifier {
            hasher: Sha256::new(),
            expected: sha256,
            size,
            seen: 0,
        }
    }

    pub fn for_artifact(a: &Artifact) -> Self {
        Self::new(a.sha256, a.size)
    }

    /// Feeds the next chunk. Fails (and hashes nothing of it) if it would take the stream past
    /// the expected size.
    pub fn update(&mut self, data: &[u8]) -> Result<(), StreamError> {
        let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
        if len > self.size - self.seen {
            return Err(StreamError::TooLong {
                expected: self.size,
            });
        }
        self.hasher.update(data);
        self.seen += len;
        Ok(())
    }

    pub fn bytes_seen(&self) -> u64 {
        self.seen
    }

    /// Bytes still expected.
    pub fn remaining(&self) -> u64 {
        self.size - self.seen
    }

    /// The end of the stream: size and digest must both match.
    pub fn finish(self) -> Result<Sha256Digest, StreamError> {
        if self.seen < self.size {
            return Err(StreamError::TooShort {
                expected: self.size,
                actual: self.seen,
            });
        }
        let actual = Sha256Digest(self.hasher.finalize().into());
        if actual != self.expected {
            return Err(StreamError::DigestMismatch {
                expected: self.expected,
                actual,
            });
        }
        Ok(actual)
    }
}

#[derive(Debug)]
enum State {
    Reading(ArtifactVerifier),
    Done(Sha256Digest),
    Failed(StreamError),
}

/// A `Read` adaptor that verifies what passes through. Data beyond the size fails the read that
/// brings it; at end of stream a short or wrong stream fails the final read, so `io::copy`
/// succeeds only when everything is right. Errors are `io::ErrorKind::InvalidData` wrapping a
/// [`StreamError`] and repeat on every later call.
#[derive(Debug)]
pub struct VerifyingReader<R> {
    inner: R,
    seen: u64,
    state: State,
}

impl<R: Read> VerifyingReader<R> {
    pub fn new(inner: R, a: &Artifact) -> Self {
        Self::with(inner, a.sha256, a.size)
    }

    pub fn with(inner: R, sha256: Sha256Digest, size: u64) -> Self {
        VerifyingReader {
            inner,
            seen: 0,
            state: State::Reading(ArtifactVerifier::new(sha256, size)),
        }
    }

    /// Bytes accepted so far (a chunk that overran the size is not counted).
    pub fn bytes_seen(&self) -> u64 {
        self.seen
    }

    /// The verified digest, once the whole stream has been read successfully.
    pub fn digest(&self) -> Option<Sha256Digest> {
        match self.state {
            State::Done(d) => Some(d),
            _ => None,
        }
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let verifier = match &mut self.state {
            State::Reading(v) => v,
            State::Done(_) => return Ok(0),
            State::Failed(e) => return Err(e.clone().into_io()),
        };
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n > 0 {
            let chunk = buf.get(..n).ok_or_else(bad_reader)?;
            if let Err(e) = verifier.update(chunk) {
                self.state = State::Failed(e.clone());
                return Err(e.into_io());
            }
            self.seen = verifier.bytes_seen();
            return Ok(n);
        }
        let State::Reading(v) =
            std::mem::replace(&mut self.state, State::Done(Sha256Digest([0; 32])))
        else {
            return Ok(0);
        };
        match v.finish() {
            Ok(d) => {
                self.state = State::Done(d);
                Ok(0)
            }
            Err(e) => {
                self.state = State::Failed(e.clone());
                Err(e.into_io())
            }
        }
    }
}

/// A `Write` adaptor for the agent: refuses any write that would exceed the size before a byte of
/// it reaches the inner writer; [`VerifyingWriter::finish`] checks size and digest.
#[derive(Debug)]
pub struct VerifyingWriter<W> {
    inner: W,
    verifier: ArtifactVerifier,
}

impl<W: Write> VerifyingWriter<W> {
    pub fn new(inner: W, a: &Artifact) -> Self {
        Self::with(inner, a.sha256, a.size)
    }

    pub fn with(inner: W, sha256: Sha256Digest, size: u64) -> Self {
        VerifyingWriter {
            inner,
            verifier: ArtifactVerifier::new(sha256, size),
        }
    }

    pub fn bytes_seen(&self) -> u64 {
        self.verifier.bytes_seen()
    }

    /// Checks size and digest and hands back the inner writer. Does not flush or sync it: the
    /// caller decides how durable the data must be before it switches to it.
    pub fn finish(self) -> Result<W, StreamError> {
        self.verifier.finish()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for VerifyingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if u64::try_from(buf.len()).unwrap_or(u64::MAX) > self.verifier.remaining() {
            return Err(StreamError::TooLong {
                expected: self.verifier.size,
            }
            .into_io());
        }
        let n = self.inner.write(buf)?;
        // Hash exactly what the inner writer took; `n <= buf.len()` is its contract, but a
        // misbehaving writer must not make us panic.
        let written = buf.get(..n).ok_or_else(bad_writer)?;
        self.verifier
            .update(written)
            .map_err(StreamError::into_io)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
