//! The content-addressed blob store.

use std::io::{self, Read};

use tugboot_firmware::{BlobError, BlobStore, Role, Sha256Digest, StreamError};

use crate::common::*;

fn tmp_entries(store: &BlobStore) -> usize {
    std::fs::read_dir(store.root().join("tmp")).unwrap().count()
}

#[test]
fn put_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().join("blobs")).unwrap();
    let data = noise(3 << 20, 5);
    let (digest, size) = store.put(data.as_slice(), None).unwrap();
    assert_eq!(digest, Sha256Digest::of(&data));
    assert_eq!(size, data.len() as u64);
    assert!(store.contains(&digest));
    assert_eq!(
        store.path(&digest),
        dir.path().join("blobs/sha256").join(digest.to_hex())
    );
    assert_eq!(std::fs::read(store.path(&digest)).unwrap(), data);
    assert_eq!(tmp_entries(&store), 0);

    let a = artifact(Role::Slot, "rootfs.img", &data);
    store.verify(&a).unwrap();
    let mut out = Vec::new();
    store
        .open_verified(&a)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    assert_eq!(out, data);
    // Putting the same content again (with its expectation) is fine.
    assert_eq!(
        store.put(data.as_slice(), Some((digest, size))).unwrap(),
        (digest, size)
    );
    assert_eq!(tmp_entries(&store), 0);
}

#[test]
fn mismatching_blob_refused_without_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let data = noise(100_000, 9);
    let digest = Sha256Digest::of(&data);
    let mut bad = data.clone();
    bad[50_000] ^= 1;

    let err = store
        .put(bad.as_slice(), Some((digest, data.len() as u64)))
        .unwrap_err();
    assert!(
        matches!(err, BlobError::Stream(StreamError::DigestMismatch { .. })),
        "{err:?}"
    );
    assert!(!store.contains(&digest));
    assert!(!store.contains(&Sha256Digest::of(&bad)));
    assert_eq!(tmp_entries(&store), 0);

    let err = store
        .put(&data[..10], Some((digest, data.len() as u64)))
        .unwrap_err();
    assert!(
        matches!(err, BlobError::Stream(StreamError::TooShort { .. })),
        "{err:?}"
    );
    // Endless source: refused as soon as it passes the size, and cleaned up.
    let err = store
        .put(
            Endless {
                chunk: 4096,
                produced: 0,
            },
            Some((digest, data.len() as u64)),
        )
        .unwrap_err();
    assert!(
        matches!(err, BlobError::Stream(StreamError::TooLong { .. })),
        "{err:?}"
    );
    assert_eq!(tmp_entries(&store), 0);
    assert_eq!(
        std::fs::read_dir(dir.path().join("sha256"))
            .unwrap()
            .count(),
        0
    );
}

struct FailingReader(usize);

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0 == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "peer went away",
            ));
        }
        self.0 -= 1;
        buf[0] = 1;
        Ok(1)
    }
}

#[test]
fn source_error_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let err = store.put(FailingReader(3), None).unwrap_err();
    assert!(
        matches!(err, BlobError::Read(ref e) if e.kind() == io::ErrorKind::ConnectionReset),
        "{err:?}"
    );
    assert_eq!(tmp_entries(&store), 0);
}

#[test]
fn damaged_or_missing_blob_detected() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let a = artifact(Role::Kernel, "vmlinuz", KERNEL);
    assert!(matches!(store.verify(&a), Err(BlobError::Missing(d)) if d == a.sha256));
    store.put(KERNEL, Some((a.sha256, a.size))).unwrap();
    store.verify(&a).unwrap();

    let mut damaged = KERNEL.to_vec();
    damaged[3] ^= 0x20;
    std::fs::write(store.path(&a.sha256), &damaged).unwrap();
    assert!(matches!(
        store.verify(&a),
        Err(BlobError::Stream(StreamError::DigestMismatch { .. }))
    ));
    let mut reader = store.open_verified(&a).unwrap();
    let err = io::copy(&mut reader, &mut io::sink()).unwrap_err();
    assert!(matches!(
        StreamError::from_io(&err),
        Some(StreamError::DigestMismatch { .. })
    ));

    std::fs::write(store.path(&a.sha256), &KERNEL[..5]).unwrap();
    assert!(matches!(
        store.verify(&a),
        Err(BlobError::Stream(StreamError::TooShort { .. }))
    ));
    std::fs::write(store.path(&a.sha256), [KERNEL, b"x"].concat()).unwrap();
    assert!(matches!(
        store.verify(&a),
        Err(BlobError::Stream(StreamError::TooLong { .. }))
    ));
}

#[test]
fn clean_tmp_removes_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    std::fs::write(dir.path().join("tmp/put-crashed"), b"partial").unwrap();
    assert_eq!(store.clean_tmp().unwrap(), 1);
    assert_eq!(tmp_entries(&store), 0);
}

/// A crash between the last chunk's fsync and the move into the store leaves a complete
/// partial file: the upload must still finish (it used to report itself complete without the
/// blob ever being stored, so the publish that followed was refused forever).
#[test]
fn complete_upload_left_by_a_crash_is_finished() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().join("blobs")).unwrap();
    let data = noise(300_000, 11);
    let digest = Sha256Digest::of(&data);
    let size = data.len() as u64;
    assert_eq!(
        store
            .upload_append(&digest, size, 0, &data[..100_000])
            .unwrap(),
        100_000
    );
    // What the last chunk left on disk when the process died before the rename.
    let part = dir
        .path()
        .join("blobs/uploads")
        .join(format!("{}-{size}.part", digest.to_hex()));
    std::fs::OpenOptions::new()
        .append(true)
        .open(&part)
        .and_then(|mut f| io::Write::write_all(&mut f, &data[100_000..]))
        .unwrap();
    assert!(!store.contains(&digest));
    assert_eq!(store.upload_offset(&digest, size).unwrap(), size);
    assert!(store.contains(&digest));
    assert!(!part.exists());
    store
        .verify(&artifact(Role::Slot, "rootfs.img", &data))
        .unwrap();

    // The same for the retried last chunk (PATCH without a HEAD first).
    let other = noise(50_000, 12);
    let d2 = Sha256Digest::of(&other);
    let part2 =
        dir.path()
            .join("blobs/uploads")
            .join(format!("{}-{}.part", d2.to_hex(), other.len()));
    std::fs::write(&part2, &other).unwrap();
    assert_eq!(
        store
            .upload_append(&d2, other.len() as u64, 0, &other)
            .unwrap(),
        other.len() as u64
    );
    assert!(store.contains(&d2));

    // A complete partial file that does not hash to its name is dropped: start over.
    let wrong = Sha256Digest::of(b"something else");
    let part3 =
        dir.path()
            .join("blobs/uploads")
            .join(format!("{}-{}.part", wrong.to_hex(), other.len()));
    std::fs::write(&part3, &other).unwrap();
    assert_eq!(store.upload_offset(&wrong, other.len() as u64).unwrap(), 0);
    assert!(!store.contains(&wrong));
    assert!(!part3.exists());
}
