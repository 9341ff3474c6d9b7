//! Entry points shared by the fuzz targets (`fuzz/`) and the seed test, so `cargo test` runs
//! every seed through exactly the code the fuzzer exercises. Each asserts the invariants that
//! must hold for *any* input; a panic here is a bug.

use std::time::{Duration, Instant};

use crate::packet::{MAX_PACKET_LEN, Repr};
use crate::path::CleanPath;
use crate::transfer::{Limits, Transfer, Transmit};

/// Parse untrusted bytes as a datagram; whatever parses must emit and re-parse to itself, and a
/// request's file name must either be refused or map to a clean relative path.
pub fn request(data: &[u8]) {
    let Ok(repr) = Repr::parse_bytes(data) else {
        return;
    };
    let mut buf = vec![0u8; repr.buffer_len()];
    let n = repr.emit(&mut buf);
    assert_eq!(n, buf.len());
    let again = Repr::parse_bytes(&buf).expect("emitted datagram must parse");
    // Options re-parse to the same values; errors keep code and message.
    assert_eq!(repr, again);
    if let Repr::Request(r) = repr
        && let Ok(clean) = CleanPath::new(r.filename)
    {
        let s = clean.as_str();
        assert!(!s.starts_with('/'));
        assert!(!s.split('/').any(|c| c == ".." || c.is_empty()));
    }
}

/// Drive a [`Transfer`] with arbitrary client datagrams and timer firings.
///
/// Layout: byte 0 picks the options, bytes 1..4 the file size; the rest is a sequence of
/// `[len, bytes...]` datagrams, a zero length meaning "let the timer fire".
pub fn client_packets(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let (size_bytes, mut rest) = rest.split_at(rest.len().min(3));
    let mut size = 0u64;
    for b in size_bytes {
        size = (size << 8) | u64::from(*b);
    }
    let options = crate::packet::Options {
        blksize: (sel & 1 != 0).then_some(8 + u16::from(sel)),
        tsize: (sel & 2 != 0).then_some(0),
        timeout: (sel & 4 != 0).then_some(1 + (sel >> 4)),
        windowsize: (sel & 8 != 0).then_some(1 + u16::from(sel >> 4)),
    };
    let req = crate::packet::Request {
        kind: crate::packet::RequestKind::Read,
        filename: "fuzz",
        mode: crate::packet::Mode::Octet,
        options,
    };
    let start = Instant::now();
    let mut now = start;
    let mut t = Transfer::new(&req, size, Limits::default(), now);
    let mut buf = vec![0u8; MAX_PACKET_LEN];
    let blksize = u64::from(t.blksize());
    let mut drain = |t: &mut Transfer, now: Instant| {
        let mut sent = 0;
        while let Some(tx) = t.poll_transmit(now, &mut buf) {
            sent += 1;
            assert!(sent <= usize::from(t.windowsize()) + 2, "unbounded burst");
            if let Transmit::Data { offset, len, .. } = tx {
                assert!(len as u64 <= blksize);
                assert!(offset + len as u64 <= size);
                assert!(offset % blksize == 0);
            }
        }
    };
    drain(&mut t, now);
    while let Some((&len, after)) = rest.split_first() {
        let len = usize::from(len).min(after.len());
        let (dgram, after) = after.split_at(len);
        rest = after;
        if len == 0 {
            if let Some(d) = t.poll_timeout() {
                assert!(d >= now);
                now = d;
                t.handle_timeout(now);
            }
        } else {
            now += Duration::from_millis(1);
            t.handle_datagram(now, dgram);
        }
        drain(&mut t, now);
        if t.is_done() {
            assert!(t.poll_timeout().is_none());
        }
    }
    assert!(t.bytes_sent() <= size.max(1) * 64 * 64 + 1_000_000);
}

/// Drive [`crate::budget::Admission`] and [`crate::budget::ByteBudget`] with arbitrary
/// requests, endings and reservations; the caps must hold after every step.
///
/// Layout: byte 0 picks the caps and the mode; then 4-byte steps `[op, host, port, x]`: `op`
/// even admits a request (`x` picks its bytes) from `10.0.0.<host % 8>:<port % 4>` (or an
/// IPv6 host of a few /64s), odd ends the `x`-th admitted transfer; every step also resizes one
/// of four reservations to `x * 1000` bytes.
pub fn admission(data: &[u8]) {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    use crate::budget::{Admission, AdmissionLimits, Admit, ByteBudget, TransferId};

    let Some((&sel, steps)) = data.split_first() else {
        return;
    };
    let limits = AdmissionLimits {
        max_transfers: usize::from(sel & 0x0f),
        max_per_peer: usize::from(sel >> 4 & 0x07),
        max_waiting: usize::from(sel >> 2 & 0x03),
    };
    let replace = sel & 0x80 != 0;
    let mut adm = Admission::new(limits);
    let budget = ByteBudget::new(100_000);
    let mut reservations: Vec<_> = (0..4).map(|_| budget.reservation()).collect();
    let mut admitted: Vec<TransferId> = Vec::new();
    // Simulated time: each step is one second later.
    let t0 = std::time::Instant::now();
    for (n, step) in (0u64..).zip(steps.chunks_exact(4)) {
        let now = t0 + std::time::Duration::from_secs(n);
        let [op, host, port, x] = [step[0], step[1], step[2], step[3]];
        let ip = if host & 0x80 == 0 {
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, host % 8))
        } else {
            IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                0,
                u16::from(host % 3),
                u16::from(host),
                0,
                0,
                1,
            ))
        };
        let peer = SocketAddr::new(ip, u16::from(port % 4));
        if op % 2 == 0 {
            let request = [1, x % 3];
            match adm.admit(peer, &request, replace, now) {
                Admit::Start { id, replaced } => {
                    assert!(!admitted.contains(&id), "ids are never reused");
                    admitted.push(id);
                    if let Some(old) = replaced {
                        assert!(replace);
                        assert_eq!(adm.finish(old), None, "a replaced transfer is released");
                    }
                }
                Admit::Duplicate => assert!(adm.active_for(ip) > 0),
                Admit::Queued => assert!(adm.waiting() <= limits.max_waiting),
                Admit::Busy => assert!(adm.waiting() >= limits.max_waiting),
                Admit::PeerBusy => assert!(adm.active_for(ip) >= limits.max_per_peer),
            }
        } else if !admitted.is_empty() {
            let id = admitted[usize::from(x) % admitted.len()];
            let _ = adm.finish(id);
        }
        while let Some(started) = adm.start_waiting(now) {
            assert!(!admitted.contains(&started.id), "ids are never reused");
            admitted.push(started.id);
        }
        assert!(adm.active() <= limits.max_transfers);
        assert!(adm.waiting() <= limits.max_waiting);
        assert!(adm.active_for(ip) <= limits.max_per_peer);
        let r = &mut reservations[usize::from(op >> 1) % 4];
        let before = r.bytes();
        if !r.try_resize(usize::from(x) * 1000) {
            assert_eq!(r.bytes(), before);
        }
        assert!(budget.used() <= budget.limit());
        assert_eq!(
            budget.used(),
            reservations
                .iter()
                .map(crate::budget::Reservation::bytes)
                .sum::<usize>()
        );
    }
    drop(reservations);
    assert_eq!(budget.used(), 0);
}
