//! Budgets that keep hostile or broken clients from exhausting the server (no I/O, no clock).
//!
//! Two resources are bounded here:
//! - **transfer slots** ([`Admission`]): a global cap and a per-peer cap, so a flood of requests
//!   from one host (any number of source ports) cannot take the slots a real client from another
//!   host needs; a retransmitted request of a running transfer is recognised and never starts a
//!   second one; requests beyond the global cap wait in arrival order (bounded) and start as
//!   slots free, so in a boot storm the oldest request is served next instead of whichever
//!   retransmission happens to arrive just after a slot freed;
//! - **buffer memory** ([`ByteBudget`]): every byte a transfer keeps besides its fixed
//!   per-transfer minimum (read-ahead, the window batch for UDP GSO, generated contents) is
//!   reserved here first, so the server's memory has a bound that does not grow with the number or
//!   size of the files requested.
//!
//! Time-based limits (the client's `timeout` option, the lifetime of a transfer that makes no
//! progress) live in the transfer core, see [`crate::transfer::Limits`].

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A shared pool of bytes that transfers reserve before allocating buffers.
///
/// Invariant: the sum of all live [`Reservation`]s never exceeds `limit`. Reserving never blocks:
/// a transfer that gets no bytes falls back to a slower path that needs none.
#[derive(Debug)]
pub struct ByteBudget {
    limit: usize,
    used: AtomicUsize,
}

impl ByteBudget {
    /// A budget of `limit` bytes.
    #[must_use]
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes the budget holds in total.
    #[must_use]
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes reserved right now.
    #[must_use]
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// An empty reservation to grow with [`Reservation::try_resize`].
    #[must_use]
    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: Arc::clone(self),
            bytes: 0,
        }
    }

    /// The share of the budget one of `active` transfers should aim for, so that all of them
    /// get buffers instead of the first ones taking everything.
    #[must_use]
    pub fn fair_share(&self, active: usize) -> usize {
        self.limit / active.max(1)
    }

    fn try_grow(&self, by: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(by).filter(|&n| n <= self.limit)
            })
            .is_ok()
    }

    fn shrink(&self, by: usize) {
        self.used.fetch_sub(by, Ordering::AcqRel);
    }
}

/// Bytes held from a [`ByteBudget`]; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<ByteBudget>,
    bytes: usize,
}

impl Reservation {
    /// Bytes held.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Hold exactly `bytes` from now on. Shrinking always succeeds; growing succeeds only if the
    /// budget has room, and on failure the reservation is left as it was.
    pub fn try_resize(&mut self, bytes: usize) -> bool {
        if bytes <= self.bytes {
            self.budget.shrink(self.bytes - bytes);
            self.bytes = bytes;
            return true;
        }
        if self.budget.try_grow(bytes - self.bytes) {
            self.bytes = bytes;
            true
        } else {
            false
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.shrink(self.bytes);
    }
}

/// Caps on running transfers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Transfers running at once, all peers together.
    pub max_transfers: usize,
    /// Transfers running or waiting at once for one peer (see [`peer_key`]).
    pub max_per_peer: usize,
    /// Requests that may wait for a slot once `max_transfers` run (0: none wait; beyond the
    /// cap a request is left unanswered and the client resends it on its own timer).
    pub max_waiting: usize,
}

/// How long a waiting request stays valid without being resent. Firmware resends an
/// unanswered request within 1–8 s (PXE ROMs 1, 2, 4, 8 s; EDK2 4 s; U-Boot up to 5 s), and a
/// resend refreshes its place: a request older than this belongs to a client that gave up.
pub const WAIT_VALIDITY: Duration = Duration::from_secs(10);

/// Identifies one admitted transfer until [`Admission::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransferId(u64);

/// What to do with a read request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Admit {
    /// Start a transfer. `replaced` is a running transfer of the same peer address and port that
    /// this one supersedes (single-port mode): it must be stopped; it no longer counts.
    Start {
        /// The new transfer.
        id: TransferId,
        /// The transfer it replaces, if any.
        replaced: Option<TransferId>,
    },
    /// Byte-identical to the request of a transfer still running for the same address and port:
    /// the client resent it before seeing the answer. Already being served; ignore it.
    Duplicate,
    /// The global cap is reached; the request waits in line (see [`Admission::start_waiting`]).
    Queued,
    /// The global cap is reached and the waiting line is full.
    Busy,
    /// The cap for this peer is reached.
    PeerBusy,
}

#[derive(Debug)]
struct Running {
    peer: SocketAddr,
    request: Box<[u8]>,
}

#[derive(Debug)]
struct Waiting {
    peer: SocketAddr,
    request: Box<[u8]>,
    /// When it arrived or was last resent.
    seen: Instant,
}

/// A waiting request that may start now (from [`Admission::start_waiting`]).
#[derive(Debug)]
pub struct Started {
    /// The transfer it becomes.
    pub id: TransferId,
    /// Who asked.
    pub peer: SocketAddr,
    /// The request datagram, as it arrived.
    pub request: Box<[u8]>,
}

/// Which transfers may start: the sans-IO bookkeeping behind the server's caps.
///
/// Invariants: `running.len() <= max_transfers`, `waiting.len() <= max_waiting`, and every peer
/// key counts at most `max_per_peer` running and waiting requests, except for the moment a
/// replaced transfer takes to stop (it is no longer counted once replaced).
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    next: u64,
    running: HashMap<TransferId, Running>,
    /// The most recent transfer of each exact address and port (for duplicate detection).
    latest: HashMap<SocketAddr, TransferId>,
    /// Requests beyond the global cap, oldest first.
    waiting: VecDeque<Waiting>,
    per_peer: HashMap<IpAddr, usize>,
}

/// The key a peer is counted under: the IPv4 address (also when it arrives IPv4-mapped on a
/// dual-stack socket), or the /64 prefix of an IPv6 address, since one IPv6 host can use any of
/// the 2^64 addresses of its subnet.
#[must_use]
pub fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Admission {
    /// No transfer running yet.
    #[must_use]
    pub fn new(limits: AdmissionLimits) -> Self {
        Self {
            limits,
            next: 0,
            running: HashMap::new(),
            latest: HashMap::new(),
            waiting: VecDeque::new(),
            per_peer: HashMap::new(),
        }
    }

    /// Transfers counted as running.
    #[must_use]
    pub fn active(&self) -> usize {
        self.running.len()
    }

    /// Requests waiting for a slot.
    #[must_use]
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Transfers running and requests waiting for the peer key of `ip`.
    #[must_use]
    pub fn active_for(&self, ip: IpAddr) -> usize {
        self.per_peer.get(&peer_key(ip)).copied().unwrap_or(0)
    }

    /// Decide on a read request (`request`: the datagram's bytes) from `peer`. With
    /// `replace_same_peer` (single-port mode, where transfers are told apart only by the peer's
    /// address and port) a different request from the same address and port supersedes the
    /// running one; otherwise both run, each counted.
    ///
    /// Beyond the global cap the request waits (if the line has room), and a resent copy of a
    /// waiting request only refreshes it (keeping its place). `now` dates waiting requests.
    pub fn admit(
        &mut self,
        peer: SocketAddr,
        request: &[u8],
        replace_same_peer: bool,
        now: Instant,
    ) -> Admit {
        let previous = self.latest.get(&peer).copied();
        if let Some(prev) = previous
            && self
                .running
                .get(&prev)
                .is_some_and(|r| *r.request == *request)
        {
            return Admit::Duplicate;
        }
        if let Some(w) = self
            .waiting
            .iter_mut()
            .find(|w| w.peer == peer && *w.request == *request)
        {
            w.seen = now;
            return Admit::Duplicate;
        }
        let replaced = if replace_same_peer {
            previous.filter(|prev| self.release(*prev).is_some())
        } else {
            None
        };
        if replaced.is_none() {
            if self.active_for(peer.ip()) >= self.limits.max_per_peer {
                return Admit::PeerBusy;
            }
            if self.running.len() >= self.limits.max_transfers || !self.waiting.is_empty() {
                self.drop_stale(now);
            }
            if self.running.len() >= self.limits.max_transfers || !self.waiting.is_empty() {
                if self.waiting.len() >= self.limits.max_waiting {
                    return Admit::Busy;
                }
                self.waiting.push_back(Waiting {
                    peer,
                    request: request.into(),
                    seen: now,
                });
                *self.per_peer.entry(peer_key(peer.ip())).or_insert(0) += 1;
                return Admit::Queued;
            }
        }
        let id = self.run(peer, request.into());
        *self.per_peer.entry(peer_key(peer.ip())).or_insert(0) += 1;
        Admit::Start { id, replaced }
    }

    /// The oldest waiting request still valid, if a slot is free: it becomes a running
    /// transfer. Call after [`Admission::finish`] until it returns `None`.
    pub fn start_waiting(&mut self, now: Instant) -> Option<Started> {
        self.drop_stale(now);
        if self.running.len() >= self.limits.max_transfers {
            return None;
        }
        let w = self.waiting.pop_front()?;
        // Its per-peer count moves from waiting to running unchanged.
        let id = self.run(w.peer, w.request.clone());
        Some(Started {
            id,
            peer: w.peer,
            request: w.request,
        })
    }

    fn run(&mut self, peer: SocketAddr, request: Box<[u8]>) -> TransferId {
        let id = TransferId(self.next);
        self.next += 1;
        self.running.insert(id, Running { peer, request });
        self.latest.insert(peer, id);
        id
    }

    /// Forgets waiting requests not resent within [`WAIT_VALIDITY`].
    fn drop_stale(&mut self, now: Instant) {
        let before = self.waiting.len();
        let mut gone = Vec::new();
        self.waiting.retain(|w| {
            let fresh = now.saturating_duration_since(w.seen) < WAIT_VALIDITY;
            if !fresh {
                gone.push(w.peer);
            }
            fresh
        });
        if self.waiting.len() != before {
            for peer in gone {
                self.uncount(peer);
            }
        }
    }

    fn uncount(&mut self, peer: SocketAddr) {
        let key = peer_key(peer.ip());
        if let Some(n) = self.per_peer.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&key);
            }
        }
    }

    /// The transfer `id` has ended (or its task is gone). Returns its peer the first time, `None`
    /// if it was already released (replaced, or finished twice).
    pub fn finish(&mut self, id: TransferId) -> Option<SocketAddr> {
        self.release(id)
    }

    fn release(&mut self, id: TransferId) -> Option<SocketAddr> {
        let running = self.running.remove(&id)?;
        let peer = running.peer;
        if self.latest.get(&peer) == Some(&id) {
            self.latest.remove(&peer);
        }
        self.uncount(peer);
        Some(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Instant {
        Instant::now()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn started(a: Admit) -> TransferId {
        match a {
            Admit::Start { id, .. } => id,
            other => panic!("not started: {other:?}"),
        }
    }

    const LIMITS: AdmissionLimits = AdmissionLimits {
        max_transfers: 10,
        max_per_peer: 3,
        max_waiting: 0,
    };

    #[test]
    fn reservations_never_exceed_the_limit_and_return_on_drop() {
        let budget = ByteBudget::new(1000);
        let mut a = budget.reservation();
        let mut b = budget.reservation();
        assert!(a.try_resize(600));
        assert!(!b.try_resize(401), "over the limit");
        assert_eq!(
            b.bytes(),
            0,
            "a failed grow leaves the reservation unchanged"
        );
        assert!(b.try_resize(400));
        assert_eq!(budget.used(), 1000);
        assert!(!a.try_resize(601));
        assert_eq!(a.bytes(), 600);
        // Shrinking always works and frees room for others.
        assert!(a.try_resize(100));
        assert!(b.try_resize(900));
        assert_eq!(budget.used(), 1000);
        drop(b);
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 0);
        // A zero budget grants nothing but empty reservations.
        let none = ByteBudget::new(0);
        let mut r = none.reservation();
        assert!(r.try_resize(0));
        assert!(!r.try_resize(1));
    }

    #[test]
    fn reservations_hold_under_concurrent_use() {
        let budget = ByteBudget::new(10_000);
        std::thread::scope(|s| {
            for _ in 0..4 {
                let budget = Arc::clone(&budget);
                s.spawn(move || {
                    let mut r = budget.reservation();
                    for i in 0..10_000usize {
                        let _ = r.try_resize((i * 37) % 4000);
                        assert!(budget.used() <= budget.limit());
                    }
                });
            }
        });
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn fair_share_divides_the_budget() {
        let budget = ByteBudget::new(16 << 20);
        assert_eq!(budget.fair_share(0), 16 << 20);
        assert_eq!(budget.fair_share(200), (16 << 20) / 200);
    }

    #[test]
    fn per_peer_cap_leaves_room_for_other_hosts() {
        let mut adm = Admission::new(LIMITS);
        // One host, many source ports: only `max_per_peer` start.
        let mut ids = Vec::new();
        for port in 0..50u16 {
            match adm.admit(
                SocketAddr::new("10.0.0.9".parse().unwrap(), 2000 + port),
                b"rrq",
                false,
                now(),
            ) {
                Admit::Start { id, replaced: None } => ids.push(id),
                Admit::PeerBusy => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(ids.len(), 3);
        assert_eq!(adm.active(), 3);
        // Another host is served.
        started(adm.admit(addr("10.0.0.10:3000"), b"rrq", false, now()));
        // Ending one of the flood's transfers frees exactly one slot for that host.
        assert_eq!(adm.finish(ids[0]), Some(addr("10.0.0.9:2000")));
        assert_eq!(adm.finish(ids[0]), None, "finishing twice is harmless");
        started(adm.admit(addr("10.0.0.9:9999"), b"rrq", false, now()));
        assert_eq!(
            adm.admit(addr("10.0.0.9:9998"), b"rrq", false, now()),
            Admit::PeerBusy
        );
    }

    #[test]
    fn global_cap_applies_across_peers() {
        let mut adm = Admission::new(AdmissionLimits {
            max_transfers: 4,
            max_per_peer: 3,
            max_waiting: 0,
        });
        for i in 0..4 {
            started(adm.admit(addr(&format!("10.0.0.{i}:69")), b"r", false, now()));
        }
        assert_eq!(
            adm.admit(addr("10.0.0.50:69"), b"r", false, now()),
            Admit::Busy
        );
        assert_eq!(adm.active(), 4);
    }

    #[test]
    fn retransmitted_request_is_a_duplicate_while_running() {
        let mut adm = Admission::new(LIMITS);
        let peer = addr("192.0.2.7:4000");
        let id = started(adm.admit(peer, b"\0\x01a\0octet\0", false, now()));
        assert_eq!(
            adm.admit(peer, b"\0\x01a\0octet\0", false, now()),
            Admit::Duplicate
        );
        assert_eq!(
            adm.admit(peer, b"\0\x01a\0octet\0", true, now()),
            Admit::Duplicate
        );
        assert_eq!(adm.active(), 1);
        // The same bytes from another port are another client.
        started(adm.admit(addr("192.0.2.7:4001"), b"\0\x01a\0octet\0", false, now()));
        // Once the transfer has ended, the same request is a new transfer.
        adm.finish(id);
        started(adm.admit(peer, b"\0\x01a\0octet\0", false, now()));
    }

    #[test]
    fn different_request_from_same_port() {
        let peer = addr("192.0.2.7:4000");
        // Standard mode: both run and both count.
        let mut adm = Admission::new(LIMITS);
        started(adm.admit(peer, b"one", false, now()));
        started(adm.admit(peer, b"two", false, now()));
        assert_eq!(adm.active_for(peer.ip()), 2);
        // Single-port mode: the new one replaces the old, even at the per-peer cap.
        let mut adm = Admission::new(LIMITS);
        let first = started(adm.admit(peer, b"one", true, now()));
        started(adm.admit(addr("192.0.2.7:1"), b"x", true, now()));
        started(adm.admit(addr("192.0.2.7:2"), b"x", true, now()));
        assert_eq!(adm.active_for(peer.ip()), 3);
        let Admit::Start { id, replaced } = adm.admit(peer, b"two", true, now()) else {
            panic!("not started")
        };
        assert_eq!(replaced, Some(first));
        assert_eq!(adm.active_for(peer.ip()), 3);
        // The replaced task ending later changes nothing.
        assert_eq!(adm.finish(first), None);
        assert_eq!(adm.active_for(peer.ip()), 3);
        assert_eq!(adm.finish(id), Some(peer));
        assert_eq!(adm.active_for(peer.ip()), 2);
    }

    #[test]
    fn peers_are_counted_by_host() {
        let v6a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:1:2:bbbb::7".parse().unwrap();
        assert_eq!(peer_key(v6a), peer_key(v6b), "same /64");
        assert_ne!(
            peer_key(v6a),
            peer_key("2001:db8:1:3::1".parse().unwrap()),
            "other /64"
        );
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(peer_key(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
        let mut adm = Admission::new(LIMITS);
        for i in 0..3u16 {
            started(adm.admit(SocketAddr::new(v6a, i), b"r", false, now()));
        }
        assert_eq!(
            adm.admit(SocketAddr::new(v6b, 9), b"r", false, now()),
            Admit::PeerBusy
        );
    }

    #[test]
    fn beyond_the_cap_requests_wait_in_arrival_order() {
        let mut adm = Admission::new(AdmissionLimits {
            max_transfers: 2,
            max_per_peer: 3,
            max_waiting: 3,
        });
        let t0 = Instant::now();
        let a = started(adm.admit(addr("10.0.0.1:1"), b"r", false, t0));
        started(adm.admit(addr("10.0.0.2:1"), b"r", false, t0));
        for i in 3..=5 {
            assert_eq!(
                adm.admit(addr(&format!("10.0.0.{i}:1")), b"r", false, t0),
                Admit::Queued
            );
        }
        // The line is full; a resend of a waiting request keeps its place.
        assert_eq!(adm.admit(addr("10.0.0.6:1"), b"r", false, t0), Admit::Busy);
        let later = t0 + Duration::from_secs(6);
        assert_eq!(
            adm.admit(addr("10.0.0.3:1"), b"r", false, later),
            Admit::Duplicate
        );
        assert_eq!(adm.waiting(), 3);
        assert!(adm.start_waiting(later).is_none(), "no slot free yet");
        adm.finish(a);
        let next = adm.start_waiting(later).expect("a slot is free");
        assert_eq!(next.peer, addr("10.0.0.3:1"), "oldest first");
        assert_eq!(&*next.request, b"r");
        assert!(adm.start_waiting(later).is_none());
        assert_eq!(adm.active(), 2);
        // Its resend is now a duplicate of the running transfer.
        assert_eq!(
            adm.admit(addr("10.0.0.3:1"), b"r", false, later),
            Admit::Duplicate
        );
        // 10.0.0.4 and .5 were not resent for WAIT_VALIDITY: their clients gave up.
        adm.finish(next.id);
        let expired = t0 + WAIT_VALIDITY;
        assert!(adm.start_waiting(expired).is_none());
        assert_eq!(adm.waiting(), 0);
        assert_eq!(adm.active_for("10.0.0.4".parse().unwrap()), 0);
        started(adm.admit(addr("10.0.0.7:1"), b"r", false, expired));
    }

    #[test]
    fn waiting_requests_count_against_their_peer() {
        let mut adm = Admission::new(AdmissionLimits {
            max_transfers: 1,
            max_per_peer: 2,
            max_waiting: 100,
        });
        let t0 = Instant::now();
        started(adm.admit(addr("10.0.0.1:1"), b"r", false, t0));
        assert_eq!(
            adm.admit(addr("10.0.0.9:1"), b"r", false, t0),
            Admit::Queued
        );
        assert_eq!(
            adm.admit(addr("10.0.0.9:2"), b"r", false, t0),
            Admit::Queued
        );
        // One host cannot fill the line.
        assert_eq!(
            adm.admit(addr("10.0.0.9:3"), b"r", false, t0),
            Admit::PeerBusy
        );
        assert_eq!(adm.waiting(), 2);
    }
}
