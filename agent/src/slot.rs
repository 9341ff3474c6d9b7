//! Slot backends: streaming a verified artifact into the inactive slot, and checking it again
//! before the bootloader may boot it.
//!
//! A slot is a file or a block device. Every chunk passes through the firmware crate's
//! [`ArtifactVerifier`] *before* it is written, so the signed size caps what ever reaches the
//! device; the digest is known only at the end, which is why a slot is never armed on the
//! strength of the stream alone: [`sync_and_verify`] makes the data durable and hashes what the
//! device gives back.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use tugboot_firmware::{ArtifactVerifier, Sha256Digest, StreamError};

use crate::bootloader::Slot;
use crate::io::Io;

/// Default chunk size for streaming into a slot (and reading it back).
pub const DEFAULT_CHUNK: usize = 64 * 1024;

/// Where the two slots live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotPaths {
    /// Slot A: a partition (block device) or, for tests and simulations, a file.
    pub a: PathBuf,
    /// Slot B.
    pub b: PathBuf,
}

impl SlotPaths {
    /// The path of `slot`.
    #[must_use]
    pub fn path(&self, slot: Slot) -> &Path {
        match slot {
            Slot::A => &self.a,
            Slot::B => &self.b,
        }
    }
}

/// Why content could not be installed into or confirmed in a slot.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SlotError {
    /// The stream is not the signed artifact (too long, too short, wrong digest).
    #[error("artifact rejected: {0}")]
    Stream(#[from] StreamError),
    /// The artifact is larger than the slot.
    #[error("artifact of {size} bytes does not fit the {capacity}-byte slot {path}")]
    TooLarge {
        /// The slot.
        path: PathBuf,
        /// Artifact size.
        size: u64,
        /// Slot size.
        capacity: u64,
    },
    /// The slot does not exist.
    #[error("slot {0} does not exist")]
    Missing(PathBuf),
    /// Reading the artifact source failed.
    #[error("reading the artifact: {0}")]
    Source(#[source] io::Error),
    /// The slot could not be written, synced or read.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The slot.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// What the device returns after the sync is not the verified artifact.
    #[error("slot {path} reads back wrong after sync: {source}")]
    ReadBack {
        /// The slot.
        path: PathBuf,
        /// How it differs.
        #[source]
        source: StreamError,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SlotError + 'a {
    move |source| SlotError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn u64_of(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Checks that an artifact of `size` bytes fits the slot at `path`.
///
/// # Errors
/// [`SlotError::Missing`], [`SlotError::TooLarge`] or an I/O error.
pub fn check_fits(io: &mut dyn Io, path: &Path, size: u64) -> Result<(), SlotError> {
    if io.len(path).map_err(io_err("stat", path))?.is_none() {
        return Err(SlotError::Missing(path.to_path_buf()));
    }
    match io.capacity(path).map_err(io_err("stat", path))? {
        Some(capacity) if size > capacity => Err(SlotError::TooLarge {
            path: path.to_path_buf(),
            size,
            capacity,
        }),
        _ => Ok(()),
    }
}

/// Streams `source` into the slot at `path` through a verifier for (`sha256`, `size`), calling
/// `progress(bytes)` after each chunk is written. Nothing beyond the signed size is written: a
/// longer stream fails on the chunk that crosses it, before that chunk is written.
///
/// # Errors
/// A stream that is not the artifact, a source or slot I/O error. The slot then holds garbage
/// and must not be booted (the caller never arms it).
pub fn write_slot(
    io: &mut dyn Io,
    path: &Path,
    sha256: Sha256Digest,
    size: u64,
    source: &mut dyn Read,
    chunk: usize,
    progress: &mut dyn FnMut(u64),
) -> Result<(), SlotError> {
    check_fits(io, path, size)?;
    let mut verifier = ArtifactVerifier::new(sha256, size);
    stream(
        io,
        path,
        &mut verifier,
        source,
        chunk,
        &mut Progress(progress),
    )?;
    verifier.finish()?;
    Ok(())
}

/// Where an artifact's bytes come from, from any offset: a download that can start with
/// `Range: bytes=N-`, a file, a buffer.
pub trait ArtifactSource {
    /// A reader of the artifact from byte `from` on.
    ///
    /// # Errors
    /// The source cannot be opened there.
    fn open_at(&mut self, from: u64) -> io::Result<Box<dyn Read + '_>>;

    /// Whether an error of this source is worth trying again later (the network went away)
    /// rather than a sign that the artifact is bad or unobtainable. The update of a download
    /// that stops this way stays resumable; any other failure ends it as failed.
    fn is_transient(&self, _error: &io::Error) -> bool {
        false
    }
}

impl ArtifactSource for &[u8] {
    fn open_at(&mut self, from: u64) -> io::Result<Box<dyn Read + '_>> {
        let start = usize::try_from(from).unwrap_or(usize::MAX).min(self.len());
        Ok(Box::new(self.get(start..).unwrap_or_default()))
    }
}

/// Follows a slot write: progress, and checkpoints (`offset` bytes written and synced).
pub trait WriteObserver {
    /// `len` more bytes were written.
    fn written(&mut self, _len: u64) {}

    /// Bytes between checkpoints (0: none).
    fn checkpoint_every(&self) -> u64 {
        0
    }

    /// Called after the slot was synced up to `offset`; records it (a failure stops the write).
    ///
    /// # Errors
    /// Whatever recording it failed with.
    fn checkpoint(&mut self, _io: &mut dyn Io, _offset: u64) -> io::Result<()> {
        Ok(())
    }
}

/// Progress only.
struct Progress<'a>(&'a mut dyn FnMut(u64));

impl WriteObserver for Progress<'_> {
    fn written(&mut self, len: u64) {
        (self.0)(len);
    }
}

/// Writes the artifact into the slot from byte `from` (bytes before it are already in the slot
/// from an earlier, interrupted attempt), syncing the slot and calling `observer.checkpoint`
/// every `observer.checkpoint_every()` bytes so that a later attempt can start from there.
///
/// Resuming: the verifier's state cannot be saved, so the first `from` bytes are read back
/// from the slot and hashed again (a local read, much faster than the network) before the
/// source is opened at `from`. The final digest then covers exactly what the slot holds. If
/// it does not match after a resume (storage that lost synced data, or a prefix written by
/// something else), the write starts once more from byte 0 (checkpoint 0 first) before the
/// artifact is declared bad: a resume never turns a good download into a failed update.
///
/// # Errors
/// As for [`write_slot`]; errors of the source are [`SlotError::Source`].
#[allow(clippy::too_many_arguments)] // the shell's one call site names each; a struct adds nothing
pub fn write_slot_from(
    io: &mut dyn Io,
    path: &Path,
    sha256: Sha256Digest,
    size: u64,
    from: u64,
    source: &mut dyn ArtifactSource,
    chunk: usize,
    observer: &mut dyn WriteObserver,
) -> Result<(), SlotError> {
    check_fits(io, path, size)?;
    let mut from = if from > size { 0 } else { from };
    loop {
        let mut verifier = ArtifactVerifier::new(sha256, size);
        if from > 0 {
            rehash_prefix(io, path, &mut verifier, from, chunk)?;
        }
        if verifier.remaining() > 0 {
            let mut reader = source.open_at(from).map_err(SlotError::Source)?;
            stream(io, path, &mut verifier, &mut reader, chunk, observer)?;
        }
        match verifier.finish() {
            Err(StreamError::DigestMismatch { .. }) if from > 0 => {
                observer
                    .checkpoint(io, 0)
                    .map_err(io_err("checkpoint", path))?;
                from = 0;
            }
            result => return result.map(|_| ()).map_err(Into::into),
        }
    }
}

/// Hashes the slot's first `len` bytes into `verifier`.
fn rehash_prefix(
    io: &mut dyn Io,
    path: &Path,
    verifier: &mut ArtifactVerifier,
    len: u64,
    chunk: usize,
) -> Result<(), SlotError> {
    let mut buf = vec![0u8; chunk.max(1)];
    while verifier.bytes_seen() < len {
        let want = usize::try_from(len - verifier.bytes_seen())
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let Some(dst) = buf.get_mut(..want) else {
            break;
        };
        let n = io
            .read_at(path, verifier.bytes_seen(), dst)
            .map_err(io_err("read", path))?;
        let Some(data) = buf.get(..n).filter(|d| !d.is_empty()) else {
            return Err(SlotError::Io {
                op: "read",
                path: path.to_path_buf(),
                source: io::Error::new(io::ErrorKind::UnexpectedEof, "slot shorter than resumed"),
            });
        };
        verifier.update(data)?;
    }
    Ok(())
}

/// Reads `source` to its end into the slot at the verifier's position: every chunk through
/// the verifier first, then written; a checkpoint (sync, then record) each time another
/// `every()` bytes are in.
fn stream(
    io: &mut dyn Io,
    path: &Path,
    verifier: &mut ArtifactVerifier,
    source: &mut dyn Read,
    chunk: usize,
    observer: &mut dyn WriteObserver,
) -> Result<(), SlotError> {
    let mut buf = vec![0u8; chunk.max(1)];
    let every = observer.checkpoint_every();
    let mut offset = verifier.bytes_seen();
    let mut last = offset;
    loop {
        let n = match source.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StreamError::from_io(&e).map_or(SlotError::Source(e), Into::into)),
        };
        let Some(data) = buf.get(..n) else {
            return Err(SlotError::Source(io::Error::other(
                "source reported more bytes than its buffer holds",
            )));
        };
        if data.is_empty() {
            return Ok(());
        }
        verifier.update(data)?;
        io.write_at(path, offset, data)
            .map_err(io_err("write", path))?;
        offset += u64_of(n);
        observer.written(u64_of(n));
        if every > 0 && offset - last >= every && verifier.remaining() > 0 {
            io.sync(path).map_err(io_err("sync", path))?;
            observer
                .checkpoint(io, offset)
                .map_err(io_err("checkpoint", path))?;
            last = offset;
        }
    }
}

/// Makes the slot's content durable (`fsync`), then reads the first `size` bytes back and checks
/// them against `sha256`. Only a slot that passed this since its last write may be armed.
///
/// # Errors
/// I/O errors, or [`SlotError::ReadBack`] when the device does not hold the artifact.
pub fn sync_and_verify(
    io: &mut dyn Io,
    path: &Path,
    sha256: Sha256Digest,
    size: u64,
    chunk: usize,
) -> Result<(), SlotError> {
    io.sync(path).map_err(io_err("sync", path))?;
    verify(io, path, sha256, size, chunk)
}

/// Hashes the first `size` bytes of the slot and compares them with `sha256` (no sync).
///
/// # Errors
/// I/O errors, or [`SlotError::ReadBack`] when the slot does not hold the artifact.
pub fn verify(
    io: &mut dyn Io,
    path: &Path,
    sha256: Sha256Digest,
    size: u64,
    chunk: usize,
) -> Result<(), SlotError> {
    let mut verifier = ArtifactVerifier::new(sha256, size);
    let mut buf = vec![0u8; chunk.max(1)];
    while verifier.remaining() > 0 {
        let want = usize::try_from(verifier.remaining())
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let Some(dst) = buf.get_mut(..want) else {
            break;
        };
        let n = io
            .read_at(path, verifier.bytes_seen(), dst)
            .map_err(io_err("read", path))?;
        if n == 0 {
            break;
        }
        if let Some(data) = buf.get(..n) {
            verifier
                .update(data)
                .map_err(|source| SlotError::ReadBack {
                    path: path.to_path_buf(),
                    source,
                })?;
        }
    }
    verifier
        .finish()
        .map(|_| ())
        .map_err(|source| SlotError::ReadBack {
            path: path.to_path_buf(),
            source,
        })
}

/// The slot the running system was booted from, from the kernel command line's
/// `tugboot.slot=A|B` (set by the boot scripts). The last occurrence wins, as for the kernel.
#[must_use]
pub fn booted_slot_from_cmdline(cmdline: &str) -> Option<Slot> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix("tugboot.slot="))
        .next_back()
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::FaultyIo;

    const PATH: &str = "/dev/slotB";

    fn image() -> Vec<u8> {
        (0..10_000u32).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn writes_verifies_and_reports_progress() {
        let mut io = FaultyIo::new();
        io.add_device(PATH, &[], 16_384);
        let img = image();
        let mut seen = Vec::new();
        write_slot(
            &mut io,
            Path::new(PATH),
            Sha256Digest::of(&img),
            10_000,
            &mut &img[..],
            4096,
            &mut |n| seen.push(n),
        )
        .unwrap();
        assert_eq!(seen, vec![4096, 4096, 1808]);
        sync_and_verify(
            &mut io,
            Path::new(PATH),
            Sha256Digest::of(&img),
            10_000,
            1000,
        )
        .unwrap();
        io.power_cycle();
        verify(
            &mut io,
            Path::new(PATH),
            Sha256Digest::of(&img),
            10_000,
            333,
        )
        .unwrap();
    }

    #[test]
    fn longer_stream_never_writes_past_the_size() {
        let mut io = FaultyIo::new();
        io.add_device(PATH, &[], 16_384);
        let img = image();
        let err = write_slot(
            &mut io,
            Path::new(PATH),
            Sha256Digest::of(&img[..5000]),
            5000,
            &mut &img[..],
            4096,
            &mut |_| {},
        )
        .unwrap_err();
        assert!(
            matches!(err, SlotError::Stream(StreamError::TooLong { .. })),
            "{err}"
        );
        let got = io.contents(Path::new(PATH)).unwrap();
        assert_eq!(&got[..4096], &img[..4096]);
        assert!(
            got[4096..].iter().all(|&b| b == 0),
            "second chunk not written"
        );
    }

    #[test]
    fn short_or_wrong_stream_fails() {
        let img = image();
        for (data, expect_short) in [(&img[..9000], true), (&img[1..], true)] {
            let mut io = FaultyIo::new();
            io.add_device(PATH, &[], 16_384);
            let err = write_slot(
                &mut io,
                Path::new(PATH),
                Sha256Digest::of(&img),
                10_000,
                &mut &data[..],
                4096,
                &mut |_| {},
            )
            .unwrap_err();
            assert_eq!(
                matches!(err, SlotError::Stream(StreamError::TooShort { .. })),
                expect_short
            );
        }
        let mut tampered = img.clone();
        tampered[77] ^= 1;
        let mut io = FaultyIo::new();
        io.add_device(PATH, &[], 16_384);
        let err = write_slot(
            &mut io,
            Path::new(PATH),
            Sha256Digest::of(&img),
            10_000,
            &mut &tampered[..],
            4096,
            &mut |_| {},
        )
        .unwrap_err();
        assert!(matches!(
            err,
            SlotError::Stream(StreamError::DigestMismatch { .. })
        ));
    }

    #[test]
    fn too_large_for_the_device() {
        let mut io = FaultyIo::new();
        io.add_device(PATH, &[], 100);
        let err = write_slot(
            &mut io,
            Path::new(PATH),
            Sha256Digest::of(b""),
            101,
            &mut &b""[..],
            4096,
            &mut |_| {},
        )
        .unwrap_err();
        assert!(matches!(err, SlotError::TooLarge { .. }));
        assert_eq!(io.steps(), 0);
    }

    #[test]
    fn unsynced_slot_fails_read_back_after_power_loss() {
        let mut io = FaultyIo::new();
        io.add_device(PATH, &[], 16_384);
        let img = image();
        let d = Sha256Digest::of(&img);
        write_slot(
            &mut io,
            Path::new(PATH),
            d,
            10_000,
            &mut &img[..],
            4096,
            &mut |_| {},
        )
        .unwrap();
        io.power_cycle();
        let err = verify(&mut io, Path::new(PATH), d, 10_000, 4096).unwrap_err();
        assert!(matches!(err, SlotError::ReadBack { .. }));
    }

    #[test]
    fn cmdline_slot() {
        assert_eq!(
            booted_slot_from_cmdline("console=ttyS0 tugboot.slot=B quiet"),
            Some(Slot::B)
        );
        assert_eq!(
            booted_slot_from_cmdline("tugboot.slot=B tugboot.slot=A"),
            Some(Slot::A)
        );
        assert_eq!(booted_slot_from_cmdline("tugboot.slot=C"), None);
        assert_eq!(booted_slot_from_cmdline("root=/dev/sda2"), None);
    }
}
