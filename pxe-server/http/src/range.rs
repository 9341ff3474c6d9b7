//! HTTP byte ranges and conditional requests (RFC 9110 §13, §14), pure: header bytes in,
//! decisions out.
//!
//! Only single ranges are served. A `Range` header this server does not understand (other units,
//! several ranges, bad syntax, oversized) is ignored and the whole representation is sent, as
//! RFC 9110 §14.2 allows; only a well-formed single range that lies wholly beyond the end gives
//! 416.

/// A `Range` header longer than this is ignored without being parsed.
pub const MAX_RANGE_HEADER: usize = 128;
/// An `If-None-Match` header longer than this is treated as not matching.
pub const MAX_IF_NONE_MATCH: usize = 4096;

/// What to send for a representation of `len` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeDecision {
    /// 200 with the whole body.
    Full,
    /// 206 with bytes `start..=end` (both inclusive, `end < len`).
    Partial { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

impl RangeDecision {
    /// Number of body bytes this decision sends.
    pub fn body_len(self, len: u64) -> u64 {
        match self {
            RangeDecision::Full => len,
            RangeDecision::Partial { start, end } => end - start + 1,
            RangeDecision::Unsatisfiable => 0,
        }
    }
}

fn number(s: &[u8]) -> Option<u64> {
    // Leading zeros aside, more than 20 digits cannot fit a u64; overflow is caught below.
    if s.is_empty() || s.len() > 32 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Decides how to answer `Range: <header>` for a representation of `len` bytes. `None` (no
/// header) is [`RangeDecision::Full`].
pub fn decide_range(header: Option<&[u8]>, len: u64) -> RangeDecision {
    let Some(header) = header else {
        return RangeDecision::Full;
    };
    if header.len() > MAX_RANGE_HEADER {
        return RangeDecision::Full;
    }
    let header = trim(header);
    let Some(eq) = header.iter().position(|&b| b == b'=') else {
        return RangeDecision::Full;
    };
    let (unit, spec) = header.split_at(eq);
    if !trim(unit).eq_ignore_ascii_case(b"bytes") {
        return RangeDecision::Full;
    }
    let spec = trim(&spec[1..]);
    if spec.contains(&b',') {
        // Several ranges: multipart/byteranges is not offered; send everything.
        return RangeDecision::Full;
    }
    let Some(dash) = spec.iter().position(|&b| b == b'-') else {
        return RangeDecision::Full;
    };
    let (first, last) = (trim(&spec[..dash]), trim(&spec[dash + 1..]));
    if first.is_empty() {
        // Suffix range: the last N bytes.
        let Some(n) = number(last) else {
            return RangeDecision::Full;
        };
        if n == 0 || len == 0 {
            return RangeDecision::Unsatisfiable;
        }
        return RangeDecision::Partial {
            start: len.saturating_sub(n),
            end: len - 1,
        };
    }
    let Some(start) = number(first) else {
        return RangeDecision::Full;
    };
    let end = if last.is_empty() {
        None
    } else {
        match number(last) {
            Some(e) if e >= start => Some(e),
            // first > last, or junk: syntactically invalid, so ignored.
            _ => return RangeDecision::Full,
        }
    };
    if start >= len {
        return RangeDecision::Unsatisfiable;
    }
    let end = end.map_or(len - 1, |e| e.min(len - 1));
    RangeDecision::Partial { start, end }
}

/// The entity tags listed in an `If-None-Match` / `If-Range` style header. Returns `None` on
/// syntax errors (the caller then treats the condition as not met, the safe side).
fn entity_tags(header: &[u8]) -> Option<Vec<(bool, &[u8])>> {
    let mut out = Vec::new();
    for item in header.split(|&b| b == b',') {
        let item = trim(item);
        if item.is_empty() {
            continue;
        }
        let (weak, tag) = match item.strip_prefix(b"W/") {
            Some(rest) => (true, rest),
            None => (false, item),
        };
        let inner = tag.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
        if inner.contains(&b'"') {
            return None;
        }
        out.push((weak, inner));
    }
    Some(out)
}

/// `If-None-Match` against our strong tag `etag` (the opaque part, without quotes): true means
/// "not modified" (304 for GET/HEAD). Uses the weak comparison, as RFC 9110 §13.1.2 requires.
pub fn if_none_match(header: &[u8], etag: &str) -> bool {
    if header.len() > MAX_IF_NONE_MATCH {
        return false;
    }
    if trim(header) == b"*" {
        return true;
    }
    entity_tags(header).is_some_and(|tags| tags.iter().any(|(_, t)| *t == etag.as_bytes()))
}

/// `If-Range`: the range is honoured only if the header is our exact strong tag (a date never
/// matches: these representations carry no `Last-Modified`).
pub fn if_range_matches(header: &[u8], etag: &str) -> bool {
    match entity_tags(trim(header)).as_deref() {
        Some([(false, t)]) => *t == etag.as_bytes(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(h: &str, len: u64) -> RangeDecision {
        decide_range(Some(h.as_bytes()), len)
    }

    use RangeDecision::{Full, Partial, Unsatisfiable};

    #[test]
    fn single_ranges() {
        assert_eq!(decide_range(None, 10), Full);
        assert_eq!(d("bytes=0-0", 10), Partial { start: 0, end: 0 });
        assert_eq!(d("bytes=0-9", 10), Partial { start: 0, end: 9 });
        assert_eq!(d("bytes=2-5", 10), Partial { start: 2, end: 5 });
        assert_eq!(d("bytes=5-", 10), Partial { start: 5, end: 9 });
        assert_eq!(d("bytes=5-100", 10), Partial { start: 5, end: 9 });
        assert_eq!(d("bytes=-3", 10), Partial { start: 7, end: 9 });
        assert_eq!(d("bytes=-30", 10), Partial { start: 0, end: 9 });
        assert_eq!(d(" Bytes = 1 - 2 ", 10), Partial { start: 1, end: 2 });
        assert_eq!(d("bytes=9-", 10), Partial { start: 9, end: 9 });
        assert_eq!(
            d("bytes=0-18446744073709551615", 10),
            Partial { start: 0, end: 9 }
        );
    }

    #[test]
    fn unsatisfiable_ranges() {
        assert_eq!(d("bytes=10-", 10), Unsatisfiable);
        assert_eq!(d("bytes=10-20", 10), Unsatisfiable);
        assert_eq!(d("bytes=-0", 10), Unsatisfiable);
        assert_eq!(d("bytes=0-", 0), Unsatisfiable);
        assert_eq!(d("bytes=-5", 0), Unsatisfiable);
    }

    #[test]
    fn ignored_ranges_send_everything() {
        for h in [
            "bytes=5-2",
            "bytes=0-1,4-5",
            "items=0-1",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=1-b",
            "bytes=+1-2",
            "bytes=0x1-2",
            "bytes 0-1",
            "bytes=99999999999999999999-",
            "bytes=--1",
            "",
        ] {
            assert_eq!(d(h, 10), Full, "{h:?}");
        }
        let long = format!("bytes=0-1{}", " ".repeat(MAX_RANGE_HEADER));
        assert_eq!(d(&long, 10), Full);
    }

    #[test]
    fn body_lengths() {
        assert_eq!(Full.body_len(10), 10);
        assert_eq!(Partial { start: 2, end: 5 }.body_len(10), 4);
        assert_eq!(Unsatisfiable.body_len(10), 0);
    }

    #[test]
    fn conditional_headers() {
        let tag = "abc";
        assert!(if_none_match(b"\"abc\"", tag));
        assert!(if_none_match(b"W/\"abc\"", tag));
        assert!(if_none_match(b"\"x\", \"abc\"", tag));
        assert!(if_none_match(b"*", tag));
        assert!(!if_none_match(b"\"abd\"", tag));
        assert!(!if_none_match(b"abc", tag));
        assert!(!if_none_match(b"\"a\"bc\"", tag));
        assert!(if_range_matches(b"\"abc\"", tag));
        assert!(
            !if_range_matches(b"W/\"abc\"", tag),
            "weak tags never match If-Range"
        );
        assert!(!if_range_matches(b"Sat, 29 Nov 2026 05:00:00 GMT", tag));
        assert!(!if_range_matches(b"\"abc\", \"abc\"", tag));
    }
}
