//! A content-addressed blob directory: `<root>/sha256/<hex>`, staging in `<root>/tmp`, resumable
//! uploads in `<root>/uploads`.
//!
//! A blob appears under its name only once its bytes are complete, hashed and synced: readers never
//! see a partial blob, and a crash leaves at worst a stray file in `tmp/` (removed by
//! [`BlobStore::clean_tmp`]) or a partial upload that the next upload continues.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

use crate::digest::Sha256Digest;
use crate::error::BlobError;
use crate::manifest::Artifact;
use crate::stream::{ArtifactVerifier, StreamError, VerifyingReader, bad_reader};

const COPY_BUF: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

/// Removes the staging file unless the blob made it to its final name.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

enum Check {
    Expect(ArtifactVerifier),
    Hash(Sha256, u64),
}

impl BlobStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, BlobError> {
        let store = BlobStore { root: root.into() };
        for dir in [store.blob_dir(), store.tmp_dir()] {
            fs::create_dir_all(&dir).map_err(|e| BlobError::io(&dir, e))?;
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_dir(&self) -> PathBuf {
        self.root.join("sha256")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn upload_path(&self, d: &Sha256Digest, size: u64) -> PathBuf {
        self.root
            .join("uploads")
            .join(format!("{}-{size}.part", d.to_hex()))
    }

    /// Where an upload of blob `d` (of `size` bytes) stands: `size` when the blob is stored,
    /// else the bytes received so far (0 when none).
    ///
    /// An upload whose every byte arrived but that was never moved into the store (the process
    /// died between the last chunk's fsync and the rename) is finished here: hashed and stored,
    /// or, when it does not match `d`, deleted (the upload starts over). Never `size` for a
    /// blob that is not in the store.
    pub fn upload_offset(&self, d: &Sha256Digest, size: u64) -> Result<u64, BlobError> {
        if self.contains(d) {
            return Ok(size);
        }
        let path = self.upload_path(d, size);
        let have = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(BlobError::io(path, e)),
        };
        if have < size {
            return Ok(have);
        }
        match self.finish_upload(d, size, &path) {
            Ok(()) => Ok(size),
            Err(BlobError::Stream(_)) => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Moves the complete upload at `path` into the store under `d` (hashed and checked against
    /// `d` and `size`); the partial file is removed either way.
    fn finish_upload(&self, d: &Sha256Digest, size: u64, path: &Path) -> Result<(), BlobError> {
        let result = File::open(path)
            .map_err(|e| BlobError::io(path, e))
            .and_then(|f| self.put(f, Some((*d, size))));
        // Stored or refused: the partial file has served its purpose either way.
        let _ = fs::remove_file(path);
        result.map(|_| ())
    }

    /// Appends `data` at `offset` to the upload of blob `d` (`size` bytes in all), durably
    /// (fsync before returning). The chunk must continue exactly where the upload stands and not
    /// go past `size`. When the last byte arrives, the whole file is hashed against `d` and, if
    /// it matches, moved into the store (a mismatch deletes it: the upload starts over). Returns
    /// the new offset (`size` once stored).
    pub fn upload_append(
        &self,
        d: &Sha256Digest,
        size: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<u64, BlobError> {
        let have = self.upload_offset(d, size)?;
        if have == size {
            return Ok(size);
        }
        if offset != have {
            return Err(BlobError::UploadOffset {
                digest: *d,
                offset,
                have,
            });
        }
        let end = offset.saturating_add(data.len() as u64);
        if end > size {
            return Err(StreamError::TooLong { expected: size }.into());
        }
        let path = self.upload_path(d, size);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| BlobError::io(dir, e))?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| BlobError::io(&path, e))?;
        file.write_all(data).map_err(|e| BlobError::io(&path, e))?;
        file.sync_data().map_err(|e| BlobError::io(&path, e))?;
        drop(file);
        if end < size {
            return Ok(end);
        }
        self.finish_upload(d, size, &path).map(|()| size)
    }

    pub fn path(&self, d: &Sha256Digest) -> PathBuf {
        self.blob_dir().join(d.to_hex())
    }

    pub fn contains(&self, d: &Sha256Digest) -> bool {
        self.path(d).is_file()
    }

    /// Copies the reader into a temp file while hashing; fsyncs the file; refuses (and removes the
    /// temp) if `expected` (digest, size) does not match; renames; fsyncs the directory. With an
    /// expected size, data beyond it is refused as soon as it arrives. Returns (digest, size).
    pub fn put(
        &self,
        mut reader: impl Read,
        expected: Option<(Sha256Digest, u64)>,
    ) -> Result<(Sha256Digest, u64), BlobError> {
        let (mut file, mut temp) = self.create_temp()?;
        let mut check = match expected {
            Some((d, size)) => Check::Expect(ArtifactVerifier::new(d, size)),
            None => Check::Hash(Sha256::new(), 0),
        };
        let mut buf = vec![0u8; COPY_BUF];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(BlobError::Read(e)),
            };
            let Some(chunk) = buf.get(..n) else {
                return Err(BlobError::Read(bad_reader()));
            };
            match &mut check {
                Check::Expect(v) => v.update(chunk)?,
                Check::Hash(h, len) => {
                    h.update(chunk);
                    *len += n as u64;
                }
            }
            file.write_all(chunk)
                .map_err(|e| BlobError::io(&temp.path, e))?;
        }
        let (digest, size) = match check {
            Check::Expect(v) => {
                let size = v.bytes_seen();
                (v.finish()?, size)
            }
            Check::Hash(h, len) => (Sha256Digest(h.finalize().into()), len),
        };
        file.sync_all().map_err(|e| BlobError::io(&temp.path, e))?;
        drop(file);
        let dest = self.path(&digest);
        fs::rename(&temp.path, &dest).map_err(|e| BlobError::io(&dest, e))?;
        temp.keep = true;
        let dir = self.blob_dir();
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| BlobError::io(&dir, e))?;
        Ok((digest, size))
    }

    fn create_temp(&self) -> Result<(File, TempFile), BlobError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = self
                .tmp_dir()
                .join(format!("put-{}-{nanos}-{n}", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => return Ok((f, TempFile { path, keep: false })),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(BlobError::io(path, e)),
            }
        }
    }

    /// Removes leftovers of interrupted `put`s. Only call when no `put` is running.
    pub fn clean_tmp(&self) -> Result<usize, BlobError> {
        let dir = self.tmp_dir();
        let mut removed = 0;
        for entry in fs::read_dir(&dir).map_err(|e| BlobError::io(&dir, e))? {
            let path = entry.map_err(|e| BlobError::io(&dir, e))?.path();
            fs::remove_file(&path).map_err(|e| BlobError::io(&path, e))?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Opens a stored blob behind a [`VerifyingReader`]: whoever reads it to the end gets an error
    /// if the file on disk no longer matches the artifact.
    pub fn open_verified(&self, a: &Artifact) -> Result<VerifyingReader<File>, BlobError> {
        let path = self.path(&a.sha256);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BlobError::Missing(a.sha256));
            }
            Err(e) => return Err(BlobError::io(path, e)),
        };
        let len = file.metadata().map_err(|e| BlobError::io(&path, e))?.len();
        if len > a.size {
            return Err(StreamError::TooLong { expected: a.size }.into());
        }
        if len < a.size {
            return Err(StreamError::TooShort {
                expected: a.size,
                actual: len,
            }
            .into());
        }
        Ok(VerifyingReader::new(file, a))
    }

    /// Re-hashes the stored blob against the artifact.
    pub fn verify(&self, a: &Artifact) -> Result<(), BlobError> {
        let mut reader = self.open_verified(a)?;
        let mut buf = vec![0u8; COPY_BUF];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(match StreamError::from_io(&e) {
                        Some(s) => BlobError::Stream(s),
                        None => BlobError::io(self.path(&a.sha256), e),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod upload_tests {
    use super::*;

    #[test]
    fn uploads_resume_verify_and_refuse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(dir.path()).expect("open");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let d = Sha256Digest::of(&data);
        let size = data.len() as u64;
        assert_eq!(store.upload_offset(&d, size).unwrap(), 0);
        assert_eq!(
            store.upload_append(&d, size, 0, &data[..40_000]).unwrap(),
            40_000
        );
        // A reopened store (a restarted server) continues where the upload stands.
        let store = BlobStore::open(dir.path()).expect("reopen");
        assert_eq!(store.upload_offset(&d, size).unwrap(), 40_000);
        assert!(matches!(
            store.upload_append(&d, size, 10, &data[10..20]),
            Err(BlobError::UploadOffset { have: 40_000, .. })
        ));
        assert!(matches!(
            store.upload_append(&d, size, 40_000, &vec![0; 70_000]),
            Err(BlobError::Stream(StreamError::TooLong { .. }))
        ));
        assert!(!store.contains(&d));
        assert_eq!(
            store
                .upload_append(&d, size, 40_000, &data[40_000..])
                .unwrap(),
            size
        );
        assert!(store.contains(&d));
        assert_eq!(fs::read(store.path(&d)).unwrap(), data);
        assert_eq!(store.upload_offset(&d, size).unwrap(), size, "complete");
        // Bytes that do not hash to the name are refused and the upload starts over.
        let wrong = Sha256Digest::of(b"something else");
        assert!(store.upload_append(&wrong, 3, 0, b"abc").is_err());
        assert!(!store.contains(&wrong));
        assert_eq!(store.upload_offset(&wrong, 3).unwrap(), 0);
    }
}
