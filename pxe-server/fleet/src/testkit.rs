//! Signed images for the tests of this crate (test keys, fixed times).

use std::collections::BTreeMap;

use tugboot_firmware::{
    Artifact, Manifest, Policy, Role, SecretKey, Sha256Digest, Signed, Timestamp, TrustRoot,
    TrustedRoot, VerifiedManifest, verify_manifest,
};

use crate::catalogue::Catalogue;
use crate::cmdline::KernelCmdline;

/// 2026-06-01T00:00:00Z.
pub const NOW: Timestamp = Timestamp::from_unix(1_780_272_000);

fn key() -> SecretKey {
    SecretKey::from_seed(&[7; 32])
}

/// A root trusting the one test key.
pub fn root() -> TrustedRoot {
    let root = TrustRoot {
        version: 1,
        expires: Timestamp::from_unix(1_893_456_000),
        threshold: 1,
        keys: vec![key().public()],
        revoked: vec![],
    };
    let mut signed = Signed::new(root).unwrap();
    signed.sign(&key());
    TrustedRoot::bootstrap(&signed.to_bytes(), NOW).unwrap()
}

/// `name` v`version` for `boards` with a kernel, an initrd and the given dtbs, verified.
pub fn image(name: &str, version: u64, boards: &[&str], dtbs: &[&str]) -> VerifiedManifest {
    let art = |role, n: &str| Artifact {
        role,
        name: n.into(),
        sha256: Sha256Digest::of(format!("{name}-{version}-{n}").as_bytes()),
        size: 100,
    };
    let mut artifacts = vec![
        art(Role::Kernel, "vmlinuz"),
        art(Role::Initrd, "initrd.img"),
    ];
    artifacts.extend(dtbs.iter().map(|d| art(Role::Dtb, d)));
    let m = Manifest {
        name: name.into(),
        version,
        boards: boards.iter().map(|b| (*b).to_owned()).collect(),
        artifacts,
        created: Timestamp::from_unix(1_767_225_600),
        expires: Timestamp::from_unix(1_798_761_600),
        min_version: None,
        labels: BTreeMap::new(),
    };
    let mut signed = Signed::new(m).unwrap();
    signed.sign(&key());
    verify_manifest(&signed.to_bytes(), &root(), &Policy::at(NOW)).unwrap()
}

/// A catalogue of `(name, version, image cmdline)`.
pub fn catalogue(images: &[(&str, u64, &str)]) -> Catalogue {
    let mut c = Catalogue::new();
    for (name, version, cmdline) in images {
        c.insert(
            image(name, *version, &["x86_64-uefi"], &[]),
            KernelCmdline::parse(cmdline).unwrap(),
        )
        .unwrap();
    }
    c
}
