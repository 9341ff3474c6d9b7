//! Entry points shared by the fuzz targets (`pxe-server/http/fuzz`) and the seed-corpus test.
//! Each must return normally on every input: a panic is a bug.

use crate::profiles::{Facts, ProfileSet, RawFacts};
use crate::range::{RangeDecision, decide_range, if_none_match, if_range_matches};

/// Parses arbitrary bytes as a profiles file; on success, resolves a few requests against it
/// and renders their command lines.
pub fn profiles(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(set) = ProfileSet::from_toml(text) else {
        return;
    };
    let requests = [
        RawFacts::default(),
        RawFacts {
            mac: Some("52:54:00:00:00:01".into()),
            arch: Some("x86_64".into()),
            ..RawFacts::default()
        },
        RawFacts {
            uuid: Some("8a3b1c2d-0000-4000-8000-000000000002".into()),
            serial: Some("SN-0003".into()),
            hostname: Some("h".into()),
            arch: Some("arm64".into()),
            board: Some("raspberrypi-4".into()),
            ..RawFacts::default()
        },
    ];
    for raw in &requests {
        let Ok(facts) = Facts::try_from(raw) else {
            continue;
        };
        if let Some(res) = set.resolve(&facts) {
            let _ = res.cmdline(&facts);
        }
    }
}

/// Runs arbitrary bytes through the `Range`, `If-None-Match` and `If-Range` parsers, checking
/// the invariants the server relies on.
pub fn range(data: &[u8]) {
    let (len_bytes, header) = data.split_at(data.len().min(8));
    let mut le = [0u8; 8];
    le[..len_bytes.len()].copy_from_slice(len_bytes);
    let len = u64::from_le_bytes(le);
    for len in [len, len % 4096, 0] {
        match decide_range(Some(header), len) {
            RangeDecision::Partial { start, end } => {
                assert!(start <= end && end < len, "bad range {start}-{end}/{len}");
            }
            RangeDecision::Full | RangeDecision::Unsatisfiable => {}
        }
    }
    let _ = if_none_match(header, "abc");
    let _ = if_range_matches(header, "abc");
}

#[cfg(test)]
mod tests {
    /// Every seed of the fuzz corpora goes through the same entry points as the fuzzers.
    #[test]
    fn seeds_do_not_panic() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/http");
        let mut seen = 0;
        for (dir, entry) in [
            ("profiles", super::profiles as fn(&[u8])),
            ("range", super::range as fn(&[u8])),
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
