//! Trust-root bootstrap and rotation.

use tugboot_firmware::{Policy, Timestamp, TrustRoot, TrustedRoot, VerifyError, verify_manifest};

use crate::common::*;

fn policy() -> Policy<'static> {
    Policy {
        now: NOW,
        board: None,
        floor: 0,
        current_version: Some(42),
    }
}

#[test]
fn bootstrap_needs_own_threshold() {
    let err = TrustedRoot::bootstrap(&sign(root_v1(), &[1]), NOW).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::BelowThreshold {
                valid: 1,
                threshold: 2
            }
        ),
        "{err:?}"
    );
    let err = TrustedRoot::bootstrap(&sign(root_v1(), &[1, 9]), NOW).unwrap_err();
    assert!(matches!(err, VerifyError::UnknownKey { .. }), "{err:?}");
    let trusted = TrustedRoot::bootstrap(&sign(root_v1(), &[2, 3]), NOW).unwrap();
    // What is persisted bootstraps again to the same root.
    let again = TrustedRoot::bootstrap(&trusted.to_bytes(), NOW).unwrap();
    assert_eq!(again.root(), trusted.root());
}

#[test]
fn proper_rotation_accepted_and_takes_effect() {
    let v2 = trusted_v1()
        .rotate(&sign(root_v2(), &[1, 2, 3]), NOW)
        .unwrap();
    assert_eq!(v2.root().version, 2);
    // Key 4 is new and key 1 revoked: old signers no longer suffice, new ones do.
    let err = verify_manifest(&sign(manifest(), &[1, 2]), &v2, &policy()).unwrap_err();
    assert!(
        matches!(err, VerifyError::RevokedKey { keyid } if keyid == key(1).key_id()),
        "{err:?}"
    );
    verify_manifest(&sign(manifest(), &[2, 4]), &v2, &policy()).unwrap();
    // Key 4 was not trusted under v1.
    let err = verify_manifest(&sign(manifest(), &[2, 4]), &trusted_v1(), &policy()).unwrap_err();
    assert!(
        matches!(err, VerifyError::UnknownKey { keyid } if keyid == key(4).key_id()),
        "{err:?}"
    );
}

#[test]
fn old_threshold_missing() {
    // Keys 3 and 4 satisfy v2 but only key 3 is in v1.
    let err = trusted_v1()
        .rotate(&sign(root_v2(), &[3, 4]), NOW)
        .unwrap_err();
    assert!(
        matches!(err, VerifyError::UnknownKey { keyid } if keyid == key(4).key_id()),
        "{err:?}"
    );
    let err = trusted_v1()
        .rotate(&sign(root_v2(), &[3]), NOW)
        .unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::BelowThreshold {
                valid: 1,
                threshold: 2
            }
        ),
        "{err:?}"
    );
}

#[test]
fn new_threshold_missing() {
    // Keys 1 and 2 satisfy v1, but v2 revokes key 1, so only key 2 counts for v2.
    let err = trusted_v1()
        .rotate(&sign(root_v2(), &[1, 2]), NOW)
        .unwrap_err();
    assert!(
        matches!(err, VerifyError::RevokedKey { keyid } if keyid == key(1).key_id()),
        "{err:?}"
    );
    // A new root made only of new keys, signed only by old keys.
    let fresh = TrustRoot {
        version: 2,
        keys: vec![key(5).public(), key(6).public()],
        revoked: vec![],
        ..root_v1()
    };
    let err = trusted_v1()
        .rotate(&sign(fresh.clone(), &[1, 2]), NOW)
        .unwrap_err();
    assert!(matches!(err, VerifyError::UnknownKey { .. }), "{err:?}");
    trusted_v1()
        .rotate(&sign(fresh, &[1, 2, 5, 6]), NOW)
        .unwrap();
}

#[test]
fn version_must_be_next() {
    let skipped = TrustRoot {
        version: 3,
        ..root_v2()
    };
    let err = trusted_v1()
        .rotate(&sign(skipped, &[1, 2, 3]), NOW)
        .unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::RootVersion {
                expected: 2,
                found: 3
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.code(), "root-version");
    let replay = trusted_v1()
        .rotate(&sign(root_v1(), &[1, 2]), NOW)
        .unwrap_err();
    assert!(
        matches!(
            replay,
            VerifyError::RootVersion {
                expected: 2,
                found: 1
            }
        ),
        "{replay:?}"
    );
    // v1 → v2 → v3 step by step works.
    let v2 = trusted_v1()
        .rotate(&sign(root_v2(), &[1, 2, 3]), NOW)
        .unwrap();
    let v3 = TrustRoot {
        version: 3,
        ..root_v2()
    };
    assert_eq!(
        v2.rotate(&sign(v3, &[2, 3]), NOW).unwrap().root().version,
        3
    );
}

#[test]
fn expiry_on_rotation() {
    // An expired current root can still be rotated away from (that is how devices recover) ...
    let old = TrustedRoot::bootstrap(&sign(root_v1(), &[1, 2]), NOW).unwrap();
    let later = Timestamp::from_unix(ROOT_EXPIRES.unix() + 86_400);
    let fresh = TrustRoot {
        expires: Timestamp::from_unix(ROOT_EXPIRES.unix() + 10 * 86_400),
        ..root_v2()
    };
    old.rotate(&sign(fresh, &[1, 2, 3]), later).unwrap();
    // ... but never to an expired one.
    let err = old.rotate(&sign(root_v2(), &[1, 2, 3]), later).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Expired {
                what: "trust root",
                ..
            }
        ),
        "{err:?}"
    );
}
