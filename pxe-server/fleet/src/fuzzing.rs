//! Entry points shared by the fuzz targets (`pxe-server/fleet/fuzz`) and the seed-corpus test.
//! Each must return normally on every input: a panic is a bug.

use crate::facts::Facts;
use crate::observe::{dhcp_facts, observed};
use crate::plan::{BootRequest, Fleet, declared_registry};
use crate::profiles::ProfileSet;
use crate::selector::{Selector, Subject, Trust};

/// Parses arbitrary bytes as a profiles file; on success, plans a few requests against it
/// (with an empty catalogue, so every Linux profile reports "not published") and renders them.
pub fn profiles(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(set) = ProfileSet::from_toml(text) else {
        return;
    };
    let fleet = Fleet {
        registry: declared_registry(&set, 0),
        profiles: set,
        ..Fleet::default()
    };
    let requests = [
        (None, Facts::new()),
        (
            Some("52:54:00:00:00:01"),
            dhcp_facts("pxe/uefi-arm64", &[], 0),
        ),
        (
            Some("02:00:00:00:00:09"),
            observed(
                crate::Observer::Http,
                0,
                &[
                    ("arch", "x86_64"),
                    ("board", "raspberrypi-4"),
                    ("hostname", "h"),
                ],
            ),
        ),
    ];
    for (mac, facts) in &requests {
        let plan = fleet.plan(&BootRequest {
            mac: mac.and_then(|m| m.parse().ok()),
            uuid: None,
            serial: Some("SN-0003"),
            observed: facts,
        });
        if let Ok(p) = &plan {
            let _ = crate::render::grub::render(p);
            let _ = crate::render::pxelinux::render(p);
        }
    }
}

/// Parses arbitrary bytes as a selector; a parsed selector's text form parses back to itself,
/// and matching never panics.
pub fn selector(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(s) = Selector::parse(text) else {
        return;
    };
    let again = Selector::parse(&s.to_string()).expect("the text form of a selector parses");
    assert_eq!(again, s, "text form round trip");
    let facts = dhcp_facts("pxe/bios", &[("hostname", "h")], 0);
    let subject = Subject {
        mac: None,
        uuid: None,
        serial: Some("x"),
        name: None,
        facts: &facts,
    };
    let _ = s.matches(&subject, Trust::Any);
    let _ = s.matches(&subject, Trust::Authenticated);
}

#[cfg(test)]
mod tests {
    /// Every seed of the fuzz corpora goes through the same entry points as the fuzzers.
    #[test]
    fn seeds_do_not_panic() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");
        let mut seen = 0;
        for (dir, entry) in [
            ("profiles", super::profiles as fn(&[u8])),
            ("selector", super::selector as fn(&[u8])),
        ] {
            let dir = format!("{root}/{dir}");
            for file in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
                let path = file.unwrap().path();
                entry(&std::fs::read(&path).unwrap());
                seen += 1;
            }
        }
        assert!(seen >= 10, "only {seen} seeds");
    }
}
