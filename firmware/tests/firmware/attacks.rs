//! Every attack the format defends against, each rejected with its own error.

use tugboot_firmware::{
    FormatError, KeyId, MAX_MANIFEST_BYTES, Manifest, Policy, Signed, Timestamp, TrustRoot,
    TrustedRoot, VerifyError, verify_manifest,
};

use crate::common::*;

fn policy() -> Policy<'static> {
    Policy {
        now: NOW,
        board: Some("rpi4"),
        floor: 1,
        current_version: Some(41),
    }
}

fn verify(bytes: &[u8]) -> Result<tugboot_firmware::VerifiedManifest, VerifyError> {
    verify_manifest(bytes, &trusted_v1(), &policy())
}

fn id(n: u8) -> KeyId {
    key(n).key_id()
}

#[track_caller]
fn malformed(bytes: &[u8]) -> FormatError {
    match verify(bytes) {
        Err(VerifyError::Malformed(e)) => e,
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn valid_manifest_round_trips() {
    let bytes = sign(manifest(), &[1, 2]);
    let verified = verify(&bytes).unwrap();
    assert_eq!(verified.name, "edge-gw");
    assert_eq!(
        verified
            .artifact(tugboot_firmware::Role::Kernel)
            .unwrap()
            .size,
        KERNEL.len() as u64
    );
    let parsed = Signed::<Manifest>::from_bytes(&bytes).unwrap();
    assert_eq!(parsed.value(), &manifest());
    assert_eq!(parsed.to_bytes(), bytes);
    // A third signature, and a re-signature by the same key, change nothing.
    let mut s = Signed::new(manifest()).unwrap();
    for n in [1, 2, 3, 1] {
        s.sign(&key(n));
    }
    assert_eq!(s.signatures.len(), 3);
    verify(&s.to_bytes()).unwrap();
    // Envelope whitespace outside the signed object is not covered by signatures, and is accepted.
    let spaced = replace(&bytes, "{\"signatures\":", "{ \"signatures\" :\n");
    verify(&spaced).unwrap();
}

#[test]
fn bad_signature() {
    let bytes = sign(manifest(), &[1, 2]);
    let text = String::from_utf8(bytes.clone()).unwrap();
    let at = text.find("\"sig\":\"").unwrap() + 7;
    let mut tampered = bytes.clone();
    tampered[at] = if tampered[at] == b'0' { b'1' } else { b'0' };
    let err = verify(&tampered).unwrap_err();
    assert!(
        matches!(err, VerifyError::BadSignature { keyid } if keyid == id(1)),
        "{err:?}"
    );
    assert_eq!(err.code(), "bad-signature");

    // Content changed after signing, still canonical: every signature fails.
    let changed = replace(&bytes, "\"version\":42", "\"version\":43");
    assert!(matches!(verify(&changed), Err(VerifyError::BadSignature { keyid }) if keyid == id(1)));
    // A signature moved to another key id fails as that key's.
    let swapped = replace(&bytes, &id(2).to_string(), &id(3).to_string());
    assert!(matches!(verify(&swapped), Err(VerifyError::BadSignature { keyid }) if keyid == id(3)));
}

#[test]
fn unknown_key() {
    let err = verify(&sign(manifest(), &[1, 9])).unwrap_err();
    assert!(
        matches!(err, VerifyError::UnknownKey { keyid } if keyid == id(9)),
        "{err:?}"
    );
    assert_eq!(err.code(), "unknown-key");
}

#[test]
fn revoked_key_does_not_count() {
    // Key 2 is still listed but revoked; the threshold of 2 now needs keys 1 and 3.
    let root = TrustRoot {
        revoked: vec![id(2)],
        ..root_v1()
    };
    let trusted = TrustedRoot::bootstrap(&sign(root, &[1, 3]), NOW).unwrap();
    let err = verify_manifest(&sign(manifest(), &[1, 2]), &trusted, &policy()).unwrap_err();
    assert!(
        matches!(err, VerifyError::RevokedKey { keyid } if keyid == id(2)),
        "{err:?}"
    );
    assert_eq!(err.code(), "revoked-key");
    verify_manifest(&sign(manifest(), &[1, 3]), &trusted, &policy()).unwrap();
    // A root whose only valid signatures include a revoked key's does not bootstrap either.
    let root = TrustRoot {
        revoked: vec![id(2)],
        ..root_v1()
    };
    assert!(matches!(
        TrustedRoot::bootstrap(&sign(root, &[1, 2]), NOW),
        Err(VerifyError::RevokedKey { .. })
    ));
}

#[test]
fn below_threshold() {
    let err = verify(&sign(manifest(), &[1])).unwrap_err();
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
    assert_eq!(err.code(), "below-threshold");
    assert!(matches!(
        verify(&sign(manifest(), &[])),
        Err(VerifyError::BelowThreshold {
            valid: 0,
            threshold: 2
        })
    ));
    // The same signature twice counts once.
    let mut s = Signed::new(manifest()).unwrap();
    s.sign(&key(1));
    s.signatures.push(s.signatures[0].clone());
    assert!(matches!(
        verify(&s.to_bytes()),
        Err(VerifyError::BelowThreshold {
            valid: 1,
            threshold: 2
        })
    ));
}

#[test]
fn most_specific_error_wins() {
    // Revoked beats unknown; a bad signature beats both.
    let root = TrustRoot {
        revoked: vec![id(2)],
        ..root_v1()
    };
    let trusted = TrustedRoot::bootstrap(&sign(root, &[1, 3]), NOW).unwrap();
    let err = verify_manifest(&sign(manifest(), &[9, 2]), &trusted, &policy()).unwrap_err();
    assert!(matches!(err, VerifyError::RevokedKey { .. }), "{err:?}");
    let mut s = Signed::new(manifest()).unwrap();
    s.sign(&key(9));
    s.sign(&key(2));
    s.sign(&key(3));
    s.signatures[2].sig[0] ^= 1;
    let err = verify_manifest(&s.to_bytes(), &trusted, &policy()).unwrap_err();
    assert!(
        matches!(err, VerifyError::BadSignature { keyid } if keyid == id(3)),
        "{err:?}"
    );
}

#[test]
fn expired_manifest() {
    let bytes = sign(manifest(), &[1, 2]);
    let at = Policy {
        now: MANIFEST_EXPIRES,
        ..policy()
    };
    let err = verify_manifest(&bytes, &trusted_v1(), &at).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Expired {
                what: "manifest",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.code(), "expired");
    let just_before = Policy {
        now: Timestamp::from_unix(MANIFEST_EXPIRES.unix() - 1),
        ..policy()
    };
    verify_manifest(&bytes, &trusted_v1(), &just_before).unwrap();
}

#[test]
fn expired_root() {
    // The root expires (2026-03-01) before the manifest does; checked at NOW (2026-06-01).
    let short = TrustRoot {
        expires: Timestamp::from_unix(1_772_323_200),
        ..root_v1()
    };
    let bytes = sign(short, &[1, 2]);
    let err = TrustedRoot::bootstrap(&bytes, NOW).unwrap_err();
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
    let trusted = TrustedRoot::bootstrap(&bytes, CREATED).unwrap();
    let err = verify_manifest(&sign(manifest(), &[1, 2]), &trusted, &policy()).unwrap_err();
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

#[test]
fn rollback() {
    let at = Policy {
        floor: 43,
        ..policy()
    };
    let err = verify_manifest(&sign(manifest(), &[1, 2]), &trusted_v1(), &at).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Rollback {
                version: 42,
                floor: 43
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.code(), "rollback");
    // Re-installing the same version is allowed.
    verify_manifest(
        &sign(manifest(), &[1, 2]),
        &trusted_v1(),
        &Policy {
            floor: 42,
            ..policy()
        },
    )
    .unwrap();
}

#[test]
fn minimum_version() {
    let bytes = sign(manifest(), &[1, 2]);
    let err = verify_manifest(
        &bytes,
        &trusted_v1(),
        &Policy {
            current_version: Some(39),
            ..policy()
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::MinimumVersion {
                required: 40,
                current: Some(39)
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.code(), "minimum-version");
    let err = verify_manifest(
        &bytes,
        &trusted_v1(),
        &Policy {
            current_version: None,
            ..policy()
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::MinimumVersion {
                required: 40,
                current: None
            }
        ),
        "{err:?}"
    );
    verify_manifest(
        &bytes,
        &trusted_v1(),
        &Policy {
            current_version: Some(40),
            ..policy()
        },
    )
    .unwrap();
    // Without min_version any (or no) current version is fine.
    let open = sign(
        Manifest {
            min_version: None,
            ..manifest()
        },
        &[1, 2],
    );
    verify_manifest(
        &open,
        &trusted_v1(),
        &Policy {
            current_version: None,
            ..policy()
        },
    )
    .unwrap();
}

#[test]
fn wrong_board() {
    let bytes = sign(manifest(), &[1, 2]);
    let err = verify_manifest(
        &bytes,
        &trusted_v1(),
        &Policy {
            board: Some("rpi3"),
            ..policy()
        },
    )
    .unwrap_err();
    match &err {
        VerifyError::WrongBoard { board, allowed } => {
            assert_eq!(board, "rpi3");
            assert_eq!(allowed, &["rpi4", "x86-64-uefi"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.code(), "wrong-board");
    verify_manifest(
        &bytes,
        &trusted_v1(),
        &Policy {
            board: Some("x86-64-uefi"),
            ..policy()
        },
    )
    .unwrap();
    verify_manifest(
        &bytes,
        &trusted_v1(),
        &Policy {
            board: None,
            ..policy()
        },
    )
    .unwrap();
}

#[test]
fn oversize() {
    let mut bytes = sign(manifest(), &[1, 2]);
    bytes.resize(MAX_MANIFEST_BYTES + 1, b' ');
    let err = verify(&bytes).unwrap_err();
    assert!(
        matches!(err, VerifyError::Oversize { limit: MAX_MANIFEST_BYTES, actual } if actual == MAX_MANIFEST_BYTES + 1)
    );
    assert_eq!(err.code(), "oversize");
    assert!(matches!(
        Signed::<Manifest>::from_bytes(&bytes),
        Err(FormatError::Oversize { .. })
    ));
    // The cap is on the input length, even when the JSON would stop early.
    let mut padded = sign(root_v1(), &[1, 2]);
    padded.resize(tugboot_firmware::MAX_ROOT_BYTES + 1, b'\n');
    assert!(matches!(
        TrustedRoot::bootstrap(&padded, NOW),
        Err(VerifyError::Oversize { .. })
    ));
}

#[test]
fn malformed_kinds() {
    let bytes = sign(manifest(), &[1, 2]);
    let m = |from: &str, to: &str| malformed(&replace(&bytes, from, to));

    // Whitespace, key order and escaping inside the signed object.
    assert!(matches!(
        m("\"version\":42", "\"version\": 42"),
        FormatError::NonCanonical
    ));
    assert!(matches!(
        m("{\"artifacts\":", "{ \"artifacts\":"),
        FormatError::NonCanonical
    ));
    assert!(matches!(
        m("\"name\":\"edge-gw\"", "\"name\":\"edg\\u0065-gw\""),
        FormatError::NonCanonical
    ));
    let reordered = replace(
        &bytes,
        "\"name\":\"edge-gw\",\"type\":\"tugboot/manifest@1\",\"version\":42",
        "\"type\":\"tugboot/manifest@1\",\"name\":\"edge-gw\",\"version\":42",
    );
    assert!(matches!(malformed(&reordered), FormatError::NonCanonical));
    // Empty labels must be omitted, not written as {}.
    let empty_labels = replace(
        &bytes,
        "\"labels\":{\"channel\":\"stable\"}",
        "\"labels\":{}",
    );
    assert!(matches!(
        malformed(&empty_labels),
        FormatError::NonCanonical
    ));
    // A duplicated key (last one wins in most parsers, so the bytes are not canonical).
    assert!(matches!(
        m("\"version\":42", "\"version\":1,\"version\":42"),
        FormatError::NonCanonical
    ));

    // Values outside the subset.
    assert!(matches!(
        m("\"version\":42", "\"version\":42.0"),
        FormatError::Float
    ));
    assert!(matches!(
        m("\"min_version\":40", "\"min_version\":null"),
        FormatError::Null
    ));
    assert!(matches!(
        m("\"version\":42", "\"version\":9007199254740992"),
        FormatError::IntegerRange { .. }
    ));

    // Unknown field (canonically placed), wrong type tag, wrong field type, missing field.
    assert!(matches!(
        m("\"expires\":", "\"evil\":1,\"expires\":"),
        FormatError::Json(_)
    ));
    assert!(matches!(
        m("tugboot/manifest@1", "tugboot/root@1"),
        FormatError::WrongType { .. }
    ));
    assert!(matches!(
        m("\"version\":42", "\"version\":\"42\""),
        FormatError::Json(_)
    ));
    assert!(matches!(
        m("\"created\":\"2026-01-01T00:00:00Z\",", ""),
        FormatError::Json(_)
    ));
    assert!(matches!(
        m("2027-01-01T00:00:00Z", "2027-01-01T00:00:00+00:00"),
        FormatError::Json(_)
    ));
    assert!(matches!(
        m("5bf3790fbabaa58b", "5BF3790FBABAA58B"),
        FormatError::Json(_)
    ));
    // Field values the format forbids.
    assert!(matches!(
        m("\"name\":\"vmlinuz\"", "\"name\":\"../vmlinuz\""),
        FormatError::InvalidName { .. }
    ));
    assert!(matches!(
        m("\"role\":\"initrd\"", "\"role\":\"kernel\""),
        FormatError::Duplicate { .. }
    ));

    // Envelope damage.
    assert!(matches!(
        malformed(&bytes[..bytes.len() / 2]),
        FormatError::Json(_)
    ));
    assert!(matches!(malformed(b"not json"), FormatError::Json(_)));
    assert!(matches!(malformed(b""), FormatError::Json(_)));
    assert!(matches!(
        m("{\"signatures\":", "{\"extra\":1,\"signatures\":"),
        FormatError::Json(_)
    ));
    assert!(matches!(
        m("\"sig\":\"", "\"sig\":\"00"),
        FormatError::Json(_)
    ));
    let root_envelope = sign(root_v1(), &[1, 2]);
    assert!(matches!(
        malformed(&root_envelope),
        FormatError::WrongType { .. }
    ));

    let mut many = Signed::new(manifest()).unwrap();
    many.signatures = vec![
        many.signatures
            .first()
            .cloned()
            .unwrap_or(tugboot_firmware::Signature {
                keyid: id(1),
                sig: [0; 64]
            });
        65
    ];
    assert!(matches!(
        malformed(&many.to_bytes()),
        FormatError::TooMany {
            what: "signatures",
            ..
        }
    ));

    assert_eq!(
        VerifyError::Malformed(FormatError::NonCanonical).code(),
        "malformed"
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let mut doc = String::from("{\"signatures\":[],\"signed\":");
    doc.push_str(&"[".repeat(100_000));
    assert!(matches!(
        verify(doc.as_bytes()),
        Err(VerifyError::Malformed(FormatError::Json(_)))
    ));
}

#[test]
fn signing_refuses_invalid_documents() {
    let bad = Manifest {
        boards: vec![],
        ..manifest()
    };
    assert!(matches!(
        Signed::new(bad),
        Err(FormatError::Empty { what: "boards" })
    ));
    let bad_root = TrustRoot {
        threshold: 4,
        ..root_v1()
    };
    assert!(matches!(
        Signed::new(bad_root),
        Err(FormatError::Threshold {
            threshold: 4,
            usable: 3
        })
    ));
    let far = Manifest {
        expires: Timestamp::from_unix(u64::MAX),
        ..manifest()
    };
    assert!(matches!(Signed::new(far), Err(FormatError::Timestamp(_))));
}
