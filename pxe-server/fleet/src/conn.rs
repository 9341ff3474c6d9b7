//! A budget of open connections for the TCP front ends (HTTP(S) and the device API): a global
//! cap and a cap per client address, so that one host on the LAN (any number of source ports)
//! cannot hold the connections every other client needs (docs/security.md, item 8).
//!
//! No I/O and no clock: the shells ask [`ConnBudget::admit`] after `accept` and keep the
//! returned [`ConnPermit`] for as long as the connection is open; dropping it gives the place
//! back. Time limits (header and body deadlines) are the shells' own.
//!
//! IPv6 clients are counted by their /64 prefix (a host picks addresses within its /64 at
//! will); IPv4-mapped IPv6 addresses count as the IPv4 address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnRefusal {
    /// The server holds its most connections.
    Global,
    /// This client address holds its most connections.
    PerPeer,
}

impl ConnRefusal {
    /// A short stable name (metrics labels, logs).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Global => "global",
            Self::PerPeer => "per_peer",
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
}

/// Caps on the connections open at once, in total and per client address.
#[derive(Debug)]
pub struct ConnBudget {
    max_total: usize,
    max_per_peer: usize,
    counts: Mutex<Counts>,
}

/// The address a client is counted under: IPv4 as is (also when IPv4-mapped), IPv6 by /64.
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

impl ConnBudget {
    /// A budget of `max_total` connections, at most `max_per_peer` from one client address
    /// (both at least 1).
    #[must_use]
    pub fn new(max_total: usize, max_per_peer: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total: max_total.max(1),
            max_per_peer: max_per_peer.max(1),
            counts: Mutex::new(Counts::default()),
        })
    }

    /// A place for one connection from `ip`, held until the permit is dropped.
    ///
    /// # Errors
    /// [`ConnRefusal`] when either cap is reached (nothing is counted then).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnPermit, ConnRefusal> {
        let key = peer_key(ip);
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if c.total >= self.max_total {
            return Err(ConnRefusal::Global);
        }
        let n = c.per_peer.entry(key).or_insert(0);
        if *n >= self.max_per_peer {
            return Err(ConnRefusal::PerPeer);
        }
        *n += 1;
        c.total += 1;
        Ok(ConnPermit {
            budget: Arc::clone(self),
            key,
        })
    }

    /// Connections open now.
    #[must_use]
    pub fn open(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }

    /// Connections open now from the address `ip` is counted under.
    #[must_use]
    pub fn open_from(&self, ip: IpAddr) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .per_peer
            .get(&peer_key(ip))
            .copied()
            .unwrap_or(0)
    }

    /// The caps: (total, per client address).
    #[must_use]
    pub fn caps(&self) -> (usize, usize) {
        (self.max_total, self.max_per_peer)
    }
}

/// One admitted connection; its place is given back when this is dropped.
#[derive(Debug)]
pub struct ConnPermit {
    budget: Arc<ConnBudget>,
    key: IpAddr,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut c = self
            .budget
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_peer.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                c.per_peer.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_peer_and_global_caps() {
        let b = ConnBudget::new(5, 2);
        let a1 = b.admit(ip("10.0.0.1")).unwrap();
        let _a2 = b.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(b.admit(ip("10.0.0.1")).unwrap_err(), ConnRefusal::PerPeer);
        // The mapped spelling is the same host.
        assert_eq!(
            b.admit(ip("::ffff:10.0.0.1")).unwrap_err(),
            ConnRefusal::PerPeer
        );
        let _b1 = b.admit(ip("10.0.0.2")).unwrap();
        let _b2 = b.admit(ip("10.0.0.2")).unwrap();
        let _c1 = b.admit(ip("10.0.0.3")).unwrap();
        assert_eq!(b.open(), 5);
        assert_eq!(b.admit(ip("10.0.0.4")).unwrap_err(), ConnRefusal::Global);
        drop(a1);
        assert_eq!(b.open_from(ip("10.0.0.1")), 1);
        let _a3 = b.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(b.open(), 5);
    }

    #[test]
    fn ipv6_counts_by_prefix() {
        let b = ConnBudget::new(100, 1);
        let _p = b.admit(ip("2001:db8:0:1::5")).unwrap();
        assert_eq!(
            b.admit(ip("2001:db8:0:1:ffff::9")).unwrap_err(),
            ConnRefusal::PerPeer
        );
        let _q = b.admit(ip("2001:db8:0:2::5")).unwrap();
    }

    #[test]
    fn dropping_every_permit_forgets_the_peer() {
        let b = ConnBudget::new(10, 10);
        let permits: Vec<_> = (0..10).map(|_| b.admit(ip("10.0.0.9")).unwrap()).collect();
        assert_eq!(b.open_from(ip("10.0.0.9")), 10);
        drop(permits);
        assert_eq!(b.open(), 0);
        assert!(b.counts.lock().unwrap().per_peer.is_empty());
    }
}
