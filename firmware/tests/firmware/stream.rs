//! Streaming verification: digest and size enforced while bytes flow.

use std::io::{self, Read, Write};

use tugboot_firmware::{
    Artifact, ArtifactVerifier, Manifest, Role, Sha256Digest, StreamError, VerifyingReader,
    VerifyingWriter,
};

use crate::common::*;

fn stream_error(e: &io::Error) -> StreamError {
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    StreamError::from_io(e).unwrap_or_else(|| panic!("not a StreamError: {e}"))
}

fn copy_through(data: &[u8], a: &Artifact) -> Result<u64, StreamError> {
    let mut reader = VerifyingReader::new(data, a);
    io::copy(&mut reader, &mut io::sink()).map_err(|e| stream_error(&e))
}

#[test]
fn exact_content_passes_in_any_chunking() {
    let data = noise(100_003, 7);
    let a = artifact(Role::Slot, "rootfs.img", &data);
    assert_eq!(copy_through(&data, &a).unwrap(), data.len() as u64);
    for chunk in [1, 7, 4096, 65_536] {
        let mut reader = VerifyingReader::new(data.as_slice(), &a);
        let mut out = Vec::new();
        let mut buf = vec![0; chunk];
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out, data);
        assert_eq!(reader.digest(), Some(a.sha256));
        assert_eq!(reader.bytes_seen(), data.len() as u64);
        assert_eq!(reader.read(&mut buf).unwrap(), 0);
    }
    let mut v = ArtifactVerifier::for_artifact(&a);
    for part in data.chunks(1000) {
        v.update(part).unwrap();
    }
    assert_eq!(v.finish().unwrap(), Sha256Digest::of(&data));
}

#[test]
fn flipped_byte_anywhere_is_rejected() {
    let data = noise(65_536 + 17, 11);
    let a = artifact(Role::Slot, "rootfs.img", &data);
    let mut positions: Vec<usize> = (0..data.len()).step_by(613).collect();
    positions.extend([1, 63, 64, 65, 4095, 4096, data.len() - 2, data.len() - 1]);
    for &pos in &positions {
        for bit in [0x01, 0x80] {
            let mut bad = data.clone();
            bad[pos] ^= bit;
            let err = copy_through(&bad, &a).unwrap_err();
            assert!(
                matches!(err, StreamError::DigestMismatch { expected, .. } if expected == a.sha256),
                "pos {pos}"
            );
        }
    }
    assert!(positions.len() > 100);
}

#[test]
fn artifact_from_another_manifest_is_rejected() {
    // Two releases with kernels of identical size: the older kernel does not pass for the newer.
    let old_kernel = b"tugboot test kernel\x01".to_vec();
    assert_eq!(old_kernel.len(), KERNEL.len());
    let mut old = manifest();
    old.version = 41;
    old.artifacts[0] = artifact(Role::Kernel, "vmlinuz", &old_kernel);
    let new: Manifest = manifest();
    let err = copy_through(&old_kernel, new.artifact(Role::Kernel).unwrap()).unwrap_err();
    assert!(matches!(err, StreamError::DigestMismatch { .. }), "{err:?}");
    // Another role's content of the same size is refused as well.
    let err = copy_through(INITRD, new.artifact(Role::Kernel).unwrap()).unwrap_err();
    assert!(matches!(err, StreamError::DigestMismatch { .. }));
    copy_through(KERNEL, new.artifact(Role::Kernel).unwrap()).unwrap();
    copy_through(&old_kernel, old.artifact(Role::Kernel).unwrap()).unwrap();
}

#[test]
fn endless_data_fails_as_soon_as_size_is_exceeded() {
    let size = 10_000u64;
    let mut reader = VerifyingReader::with(
        Endless {
            chunk: 4096,
            produced: 0,
        },
        Sha256Digest::of(b""),
        size,
    );
    let mut buf = vec![0u8; 4096];
    let mut accepted = 0u64;
    let err = loop {
        match reader.read(&mut buf) {
            Ok(n) => accepted += n as u64,
            Err(e) => break e,
        }
    };
    assert!(matches!(
        stream_error(&err),
        StreamError::TooLong { expected: 10_000 }
    ));
    // Failed on the chunk that crossed the size: no more than one chunk beyond it was pulled.
    assert_eq!(accepted, 8192);
    assert_eq!(reader.bytes_seen(), 8192);
    let pulled = reader.into_inner().produced;
    assert!(pulled <= size + 4096, "{pulled}");

    // io::copy over an endless source terminates with the error.
    let mut reader = VerifyingReader::with(
        Endless {
            chunk: 1 << 16,
            produced: 0,
        },
        Sha256Digest::of(b""),
        size,
    );
    let err = io::copy(&mut reader, &mut io::sink()).unwrap_err();
    assert!(matches!(stream_error(&err), StreamError::TooLong { .. }));
    // The error repeats instead of resuming the stream.
    let err = reader.read(&mut buf).unwrap_err();
    assert!(matches!(stream_error(&err), StreamError::TooLong { .. }));

    // The sans-IO verifier refuses the chunk that would cross the size.
    let mut v = ArtifactVerifier::new(Sha256Digest::of(b"ab"), 2);
    v.update(b"a").unwrap();
    assert!(matches!(
        v.update(b"bc"),
        Err(StreamError::TooLong { expected: 2 })
    ));
    v.update(b"b").unwrap();
    v.finish().unwrap();
}

#[test]
fn short_and_long_streams() {
    let a = artifact(Role::Kernel, "vmlinuz", KERNEL);
    let err = copy_through(&KERNEL[..KERNEL.len() - 1], &a).unwrap_err();
    assert!(
        matches!(
            err,
            StreamError::TooShort {
                expected: 20,
                actual: 19
            }
        ),
        "{err:?}"
    );
    let err = copy_through(b"", &a).unwrap_err();
    assert!(matches!(
        err,
        StreamError::TooShort {
            expected: 20,
            actual: 0
        }
    ));
    let mut long = KERNEL.to_vec();
    long.push(b'x');
    assert!(matches!(
        copy_through(&long, &a),
        Err(StreamError::TooLong { expected: 20 })
    ));
    // Zero-size artifact.
    let empty = artifact(Role::File, "empty", b"");
    copy_through(b"", &empty).unwrap();
    assert!(matches!(
        copy_through(b"x", &empty),
        Err(StreamError::TooLong { expected: 0 })
    ));
}

#[test]
fn writer_checks_before_writing() {
    let data = noise(50_000, 3);
    let a = artifact(Role::Slot, "rootfs.img", &data);

    let mut w = VerifyingWriter::new(Vec::new(), &a);
    for part in data.chunks(999) {
        w.write_all(part).unwrap();
    }
    assert_eq!(w.bytes_seen(), 50_000);
    assert_eq!(w.finish().unwrap(), data);

    // Too long: the overflowing write is refused before the inner writer sees any of it.
    let mut w = VerifyingWriter::new(Vec::new(), &a);
    w.write_all(&data).unwrap();
    let err = w.write_all(b"x").unwrap_err();
    assert!(matches!(stream_error(&err), StreamError::TooLong { .. }));
    let mut w = VerifyingWriter::new(Vec::new(), &a);
    let err = io::copy(
        &mut Endless {
            chunk: 8192,
            produced: 0,
        },
        &mut w,
    )
    .unwrap_err();
    assert!(matches!(stream_error(&err), StreamError::TooLong { .. }));
    assert!(w.bytes_seen() <= 50_000);

    // Wrong content and short content fail at finish.
    let mut bad = data.clone();
    bad[12_345] ^= 4;
    let mut w = VerifyingWriter::new(Vec::new(), &a);
    w.write_all(&bad).unwrap();
    assert!(matches!(
        w.finish(),
        Err(StreamError::DigestMismatch { .. })
    ));
    let mut w = VerifyingWriter::new(Vec::new(), &a);
    w.write_all(&data[..100]).unwrap();
    assert!(matches!(
        w.finish(),
        Err(StreamError::TooShort {
            expected: 50_000,
            actual: 100
        })
    ));
}

/// Claims to have read more than the buffer holds (a broken `Read` impl).
struct Liar;

impl Read for Liar {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(buf.len() + 1)
    }
}

#[test]
fn broken_inner_reader_is_an_error_not_a_panic() {
    let mut reader = VerifyingReader::with(Liar, Sha256Digest::of(b""), 100);
    let err = reader.read(&mut [0u8; 8]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::Other);
    let dir = tempfile::tempdir().unwrap();
    let store = tugboot_firmware::BlobStore::open(dir.path()).unwrap();
    assert!(matches!(
        store.put(Liar, None),
        Err(tugboot_firmware::BlobError::Read(_))
    ));
}
