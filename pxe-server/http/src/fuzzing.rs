//! Entry points shared by the fuzz targets (`pxe-server/http/fuzz`) and the seed-corpus test.
//! Each must return normally on every input: a panic is a bug.

use crate::query::{RawQuery, parse};
use crate::range::{RangeDecision, decide_range, if_none_match, if_range_matches};

/// Splits arbitrary bytes on `&` into `key=value` pairs of an iPXE script query and parses it.
pub fn query(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut raw = RawQuery::default();
    for pair in text.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = Some(v.to_owned());
        match k {
            "mac" => raw.mac = v,
            "uuid" => raw.uuid = v,
            "serial" => raw.serial = v,
            "arch" => raw.arch = v,
            "platform" => raw.platform = v,
            "board" => raw.board = v,
            "hostname" => raw.hostname = v,
            _ => {}
        }
    }
    if let Ok(q) = parse(&raw, 0) {
        assert!(q.facts.iter().all(|(_, f)| !f.source.is_authenticated()));
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

/// Runs arbitrary bytes through the plain-HTTP loop's request-head path (httparse, then the
/// conversion into the router's request), checking what the loop relies on: a head it accepts
/// has a path starting with `/` (or `*`) and announces no body.
pub fn request_head(data: &[u8]) {
    crate::conn::fuzz_request_head(data);
}

#[cfg(test)]
mod tests {
    /// Every seed of the fuzz corpora goes through the same entry points as the fuzzers.
    #[test]
    fn seeds_do_not_panic() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/http");
        let mut seen = 0;
        for (dir, entry) in [
            ("query", super::query as fn(&[u8])),
            ("range", super::range as fn(&[u8])),
            ("request-head", super::request_head as fn(&[u8])),
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
