//! Entry points of the fuzz targets in `firmware/fuzz`, also run over every seed file by a unit
//! test so that `cargo test` covers the corpus. They panic only when an invariant breaks.

use crate::{Manifest, Policy, Signed, Timestamp, TrustRoot, TrustedRoot, verify_manifest};

/// The root every fuzzed manifest is checked against (test vector `root-v1.json`).
pub const ROOT_V1: &[u8] = include_bytes!("../../tests/fixtures/root/root-v1.json");
/// 2026-06-01T00:00:00Z: inside the validity of every test vector.
pub const NOW: Timestamp = Timestamp::from_unix(1_780_272_000);

/// Verified once per process: the fuzzers spend their time on the input, not on the fixture.
fn fixed_root() -> &'static TrustedRoot {
    static ROOT: std::sync::OnceLock<TrustedRoot> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        TrustedRoot::bootstrap(ROOT_V1, NOW).expect("test vector root-v1.json must verify")
    })
}

/// Parse, re-encode and verify arbitrary bytes as a manifest envelope.
pub fn manifest(data: &[u8]) {
    let parsed = Signed::<Manifest>::from_bytes(data);
    if let Ok(signed) = &parsed {
        // Whatever parses re-encodes to an envelope that parses to the same signed bytes.
        let again = Signed::<Manifest>::from_bytes(&signed.to_bytes())
            .expect("re-encoded envelope must parse");
        assert_eq!(again.signed_bytes(), signed.signed_bytes());
        assert_eq!(again.value(), signed.value());
    }
    let root = fixed_root();
    let policy = Policy {
        now: NOW,
        board: Some("rpi4"),
        floor: 1,
        current_version: Some(41),
    };
    if let Ok(verified) = verify_manifest(data, root, &policy) {
        assert!(parsed.is_ok(), "verified but does not parse");
        assert_eq!(verified.envelope_bytes(), data);
    }
}

/// Bootstrap from arbitrary bytes, and rotate the fixed root to them.
pub fn root(data: &[u8]) {
    if let Ok(signed) = Signed::<TrustRoot>::from_bytes(data) {
        let again = Signed::<TrustRoot>::from_bytes(&signed.to_bytes())
            .expect("re-encoded envelope must parse");
        assert_eq!(again.signed_bytes(), signed.signed_bytes());
    }
    if let Ok(trusted) = TrustedRoot::bootstrap(data, NOW) {
        let again = TrustedRoot::bootstrap(&trusted.to_bytes(), NOW)
            .expect("persisted root must bootstrap");
        assert_eq!(again.root(), trusted.root());
    }
    if let Ok(next) = fixed_root().rotate(data, NOW) {
        assert_eq!(next.root().version, 2);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::NOW;
    use crate::{Policy, TrustedRoot, verify_manifest};

    fn seeds(area: &str) -> Vec<(String, Vec<u8>)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(area);
        let mut out: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
            .collect();
        out.sort();
        out
    }

    fn file_name(path: &str) -> &str {
        path.rsplit('/').next().unwrap_or(path)
    }

    /// Every seed goes through the fuzz entry point; `bad-*` seeds must also be rejected and the
    /// test vectors accepted, so a seed that silently stopped exercising its path is noticed.
    #[test]
    fn manifest_seed_corpus() {
        let seeds = seeds("manifest");
        assert!(seeds.len() >= 5, "seed corpus missing");
        let root = super::fixed_root();
        let policy = Policy {
            now: NOW,
            board: Some("rpi4"),
            floor: 1,
            current_version: Some(41),
        };
        for (path, data) in &seeds {
            super::manifest(data);
            let verdict = verify_manifest(data, root, &policy);
            let name = file_name(path);
            if name.starts_with("bad-") {
                assert!(verdict.is_err(), "{name} accepted");
            } else {
                assert!(verdict.is_ok(), "{name}: {verdict:?}");
            }
        }
    }

    #[test]
    fn root_seed_corpus() {
        let seeds = seeds("root");
        assert!(seeds.len() >= 4, "seed corpus missing");
        for (path, data) in &seeds {
            super::root(data);
            let name = file_name(path);
            let bootstrap = TrustedRoot::bootstrap(data, NOW);
            let rotate = super::fixed_root().rotate(data, NOW);
            match name {
                "root-v1.json" => assert!(bootstrap.is_ok(), "{bootstrap:?}"),
                "root-v2.json" => assert!(rotate.is_ok(), "{rotate:?}"),
                // Self-consistent, but not signed by a threshold of root v1.
                _ if name.starts_with("bad-rotation-") => {
                    assert!(rotate.is_err(), "{name} accepted")
                }
                _ if name.starts_with("bad-") => {
                    assert!(bootstrap.is_err() && rotate.is_err(), "{name} accepted")
                }
                _ => {}
            }
        }
    }
}
