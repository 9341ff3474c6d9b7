//! Test vectors: fixed seeds give fixed keys, canonical bytes and signatures (ed25519 is
//! deterministic). Cross-checked against OpenSSL, see docs/image-format.md. Run with
//! `TUGBOOT_WRITE_FIXTURES=1` to (re)write the fixture files instead of comparing.

use tugboot_firmware::{Manifest, Policy, Signed, TrustRoot, TrustedRoot, verify_manifest};

use crate::common::*;

const PUBLIC_KEYS: [&str; 4] = [
    "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c",
    "8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394",
    "ed4928c628d1c2c6eae90338905995612959273a5c63f93636c14614ac8737d1",
    "ca93ac1705187071d67b83c7ff0efe8108e8ec4530575d7726879333dbdabe7c",
];
const KEY_IDS: [&str; 4] = [
    "34750f98bd59fcfc946da45aaabe933be154a4b5094e1c4abf42866505f3c97e",
    "6a3803d5f059902a1c6dafbc9ba4729212f7caac08634cc3ae76b27529f03827",
    "b62e867fa2f33afe62d5d6b1642e1621d543307846b2a57b897e710919b76709",
    "c5b940ed3f65c391965de8295fc5d25f474fa57b48d36eb10ad363b8539c1b79",
];
const MANIFEST_CANONICAL: &str = r#"{"artifacts":[{"name":"vmlinuz","role":"kernel","sha256":"5bf3790fbabaa58b435cbdb0fd0cec24494c8d121d691378320581e3b58011ff","size":20},{"name":"initrd.img","role":"initrd","sha256":"d1383b665eb9db9c3aa01ca21fe23f57b52ff1d4e00e2c19d0176779e1430e7f","size":20},{"name":"cmdline.txt","role":"cmdline","sha256":"ee49bb4ccc8f6173c2a612800865caa7917948ac4603c0110a19717d91c2f3fd","size":20}],"boards":["rpi4","x86-64-uefi"],"created":"2026-01-01T00:00:00Z","expires":"2027-01-01T00:00:00Z","labels":{"channel":"stable"},"min_version":40,"name":"edge-gw","type":"tugboot/manifest@1","version":42}"#;
const ROOT_V1_CANONICAL: &str = r#"{"expires":"2030-01-01T00:00:00Z","keys":["8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c","8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394","ed4928c628d1c2c6eae90338905995612959273a5c63f93636c14614ac8737d1"],"threshold":2,"type":"tugboot/root@1","version":1}"#;
const MANIFEST_SIG_K1: &str = "88ca015b1049b91fbce1b13e71d80798b124032e8d4d04ea8cd5c379eeea4996ba515f664b55f3d8403424d9a024ee9505b811633ef88dc1eea23ce41dee6703";

fn check_fixture(area: &str, name: &str, bytes: &[u8]) {
    let path = fixture(area, name);
    if std::env::var_os("TUGBOOT_WRITE_FIXTURES").is_some() {
        std::fs::write(&path, bytes).unwrap();
    }
    let stored = std::fs::read(&path).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&stored),
        String::from_utf8_lossy(bytes),
        "{}",
        path.display()
    );
}

#[test]
fn keys_from_seeds() {
    for (i, n) in (1..=4u8).enumerate() {
        assert_eq!(
            hex::encode(key(n).public().as_bytes()),
            PUBLIC_KEYS[i],
            "public key {n}"
        );
        assert_eq!(key(n).key_id().to_string(), KEY_IDS[i], "key id {n}");
    }
}

#[test]
fn canonical_bytes_and_signatures() {
    let signed = Signed::new(manifest()).unwrap();
    assert_eq!(
        std::str::from_utf8(signed.signed_bytes()).unwrap(),
        MANIFEST_CANONICAL
    );
    let root = Signed::new(root_v1()).unwrap();
    assert_eq!(
        std::str::from_utf8(root.signed_bytes()).unwrap(),
        ROOT_V1_CANONICAL
    );

    let mut signed = signed;
    signed.sign(&key(1));
    assert_eq!(hex::encode(signed.signatures[0].sig), MANIFEST_SIG_K1);
    let message = signed.signing_message();
    assert!(message.starts_with(b"tugboot-signature-v1\n"));
    assert_eq!(&message[21..], signed.signed_bytes());
}

#[test]
fn fixture_files() {
    check_fixture("root", "root-v1.json", &sign(root_v1(), &[1, 2]));
    check_fixture("root", "root-v2.json", &sign(root_v2(), &[1, 2, 3]));
    check_fixture("manifest", "manifest-v42.json", &sign(manifest(), &[1, 2]));
    // Seeds for the fuzzers that get past the signature parsing but not the checks.
    check_fixture(
        "root",
        "bad-rotation-v2-old-threshold-missing.json",
        &sign(root_v2(), &[3, 4]),
    );
    check_fixture(
        "manifest",
        "bad-manifest-v42-below-threshold.json",
        &sign(manifest(), &[1]),
    );
}

#[test]
fn fixture_files_verify() {
    let v1 = std::fs::read(fixture("root", "root-v1.json")).unwrap();
    let v2 = std::fs::read(fixture("root", "root-v2.json")).unwrap();
    let m = std::fs::read(fixture("manifest", "manifest-v42.json")).unwrap();
    let root = TrustedRoot::bootstrap(&v1, NOW).unwrap();
    assert_eq!(root.root(), &root_v1());
    let policy = Policy {
        now: NOW,
        board: Some("rpi4"),
        floor: 42,
        current_version: Some(40),
    };
    let verified = verify_manifest(&m, &root, &policy).unwrap();
    assert_eq!(*verified, manifest());
    assert_eq!(verified.envelope_bytes(), m.as_slice());
    let rotated = root.rotate(&v2, NOW).unwrap();
    assert_eq!(rotated.root(), &root_v2());
    // Round trips of the parsed forms.
    assert_eq!(Signed::<Manifest>::from_bytes(&m).unwrap().to_bytes(), m);
    assert_eq!(Signed::<TrustRoot>::from_bytes(&v2).unwrap().to_bytes(), v2);
    assert_eq!(root.to_bytes(), v1);
}
