//! Test vectors and helpers shared by the test modules. The same values are written down in
//! docs/image-format.md and stored under tests/fixtures/.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tugboot_firmware::{
    Artifact, Document, Manifest, Role, SecretKey, Sha256Digest, Signed, Timestamp, TrustRoot,
    TrustedRoot,
};

/// 2026-06-01T00:00:00Z.
pub const NOW: Timestamp = Timestamp::from_unix(1_780_272_000);
/// 2026-01-01T00:00:00Z.
pub const CREATED: Timestamp = Timestamp::from_unix(1_767_225_600);
/// 2027-01-01T00:00:00Z.
pub const MANIFEST_EXPIRES: Timestamp = Timestamp::from_unix(1_798_761_600);
/// 2030-01-01T00:00:00Z.
pub const ROOT_EXPIRES: Timestamp = Timestamp::from_unix(1_893_456_000);

pub const KERNEL: &[u8] = b"tugboot test kernel\n";
pub const INITRD: &[u8] = b"tugboot test initrd\n";
pub const CMDLINE: &[u8] = b"console=ttyS0 quiet\n";

/// Test key N: ed25519 seed of 32 bytes all equal to N.
pub fn key(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32])
}

pub fn artifact(role: Role, name: &str, content: &[u8]) -> Artifact {
    Artifact {
        role,
        name: name.into(),
        sha256: Sha256Digest::of(content),
        size: content.len() as u64,
    }
}

/// The sample manifest of the test vectors.
pub fn manifest() -> Manifest {
    Manifest {
        name: "edge-gw".into(),
        version: 42,
        boards: vec!["rpi4".into(), "x86-64-uefi".into()],
        artifacts: vec![
            artifact(Role::Kernel, "vmlinuz", KERNEL),
            artifact(Role::Initrd, "initrd.img", INITRD),
            artifact(Role::Cmdline, "cmdline.txt", CMDLINE),
        ],
        created: CREATED,
        expires: MANIFEST_EXPIRES,
        min_version: Some(40),
        labels: BTreeMap::from([("channel".into(), "stable".into())]),
    }
}

/// Root v1: keys 1, 2, 3; threshold 2.
pub fn root_v1() -> TrustRoot {
    TrustRoot {
        version: 1,
        expires: ROOT_EXPIRES,
        threshold: 2,
        keys: vec![key(1).public(), key(2).public(), key(3).public()],
        revoked: vec![],
    }
}

/// Root v2: key 1 retired and revoked, key 4 added; threshold 2.
pub fn root_v2() -> TrustRoot {
    TrustRoot {
        version: 2,
        expires: ROOT_EXPIRES,
        threshold: 2,
        keys: vec![key(2).public(), key(3).public(), key(4).public()],
        revoked: vec![key(1).key_id()],
    }
}

/// Envelope of `value` signed by the test keys `signers`, in that order.
pub fn sign<T: Document>(value: T, signers: &[u8]) -> Vec<u8> {
    let mut signed = Signed::new(value).unwrap();
    for &n in signers {
        signed.sign(&key(n));
    }
    signed.to_bytes()
}

pub fn trusted_v1() -> TrustedRoot {
    TrustedRoot::bootstrap(&sign(root_v1(), &[1, 2]), NOW).unwrap()
}

pub fn fixture(area: &str, name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(area)
        .join(name)
}

/// Replaces the first occurrence of `from` in `bytes` (which must occur).
pub fn replace(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = std::str::from_utf8(bytes).unwrap();
    assert!(text.contains(from), "{from:?} not in {text}");
    text.replacen(from, to, 1).into_bytes()
}

/// Reads forever: the same byte, in chunks of at most `chunk`. Counts what it handed out.
pub struct Endless {
    pub chunk: usize,
    pub produced: u64,
}

impl std::io::Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.chunk);
        buf[..n].fill(0x5a);
        self.produced += n as u64;
        Ok(n)
    }
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}
