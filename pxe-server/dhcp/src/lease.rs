//! The in-memory lease table owned by the core, and the records the shell persists.
//!
//! Persistence contract: every change that a reply acknowledges (a binding, a
//! release, a decline) is returned in `Outcome::persist`; the shell makes those
//! records durable *before* it sends the replies of the same outcome. On start the
//! shell feeds the stored records back through [`LeaseTable::restore`]. Offers are
//! not persisted: an offer is no commitment (RFC 2131 §4.3.1).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::classify::Mac;

/// Who holds a lease: the client identifier (option 61) if sent, else the hardware
/// address (RFC 2131 §4.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ClientKey {
    /// Option 61 bytes.
    ClientId(Vec<u8>),
    /// `htype` followed by `chaddr[..hlen]`.
    Hardware(Vec<u8>),
}

/// State carried by a persisted record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeaseState {
    /// Bound until `expires_at`.
    Bound,
    /// Released by the client; the address is free.
    Released,
    /// Declined by the client (address in use); out of the pool until `expires_at`.
    Declined,
}

/// One durable lease event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Address concerned.
    pub address: Ipv4Addr,
    /// Holder.
    pub client: ClientKey,
    /// Holder's MAC, when Ethernet.
    pub mac: Option<Mac>,
    /// What happened.
    pub state: LeaseState,
    /// End of the binding or of the decline hold.
    pub expires_at: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Binding {
    client: ClientKey,
    mac: Option<Mac>,
    expires_at: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Offer {
    address: Ipv4Addr,
    expires_at: SystemTime,
}

/// Leases, outstanding offers and declined addresses.
#[derive(Debug, Default)]
pub struct LeaseTable {
    bound: HashMap<Ipv4Addr, Binding>,
    by_client: HashMap<ClientKey, Ipv4Addr>,
    offers: HashMap<ClientKey, Offer>,
    /// Reverse index of `offers`, so checking an address is O(1) during pool scans.
    offered: HashMap<Ipv4Addr, ClientKey>,
    declined: HashMap<Ipv4Addr, SystemTime>,
    /// Earliest expiry of anything in the table: `expire` only scans once it passes.
    next_expiry: Option<SystemTime>,
}

impl LeaseTable {
    /// Rebuilds the table from persisted records (in the order they were written).
    pub fn restore<'a>(&mut self, records: impl IntoIterator<Item = &'a LeaseRecord>) {
        for r in records {
            match r.state {
                LeaseState::Bound => self.bind(r.address, r.client.clone(), r.mac, r.expires_at),
                LeaseState::Released => {
                    self.release(r.address, &r.client);
                }
                LeaseState::Declined => self.decline(r.address, r.expires_at),
            }
        }
    }

    /// Drops everything that has expired at `now`.
    pub fn expire(&mut self, now: SystemTime) {
        if self.next_expiry.is_none_or(|t| t > now) {
            return;
        }
        let gone: Vec<Ipv4Addr> = self
            .bound
            .iter()
            .filter(|(_, b)| b.expires_at <= now)
            .map(|(a, _)| *a)
            .collect();
        for a in gone {
            if let Some(b) = self.bound.remove(&a)
                && self.by_client.get(&b.client) == Some(&a)
            {
                self.by_client.remove(&b.client);
            }
        }
        self.offers.retain(|_, o| o.expires_at > now);
        self.reindex_offers();
        self.declined.retain(|_, until| *until > now);
        self.next_expiry = self
            .bound
            .values()
            .map(|b| b.expires_at)
            .chain(self.offers.values().map(|o| o.expires_at))
            .chain(self.declined.values().copied())
            .min();
    }

    fn note_expiry(&mut self, at: SystemTime) {
        self.next_expiry = Some(self.next_expiry.map_or(at, |t| t.min(at)));
    }

    /// The address bound to `client`, if any.
    pub fn lease_of(&self, client: &ClientKey) -> Option<Ipv4Addr> {
        self.by_client.get(client).copied()
    }

    /// The holder of `address`, if bound.
    pub fn holder(&self, address: Ipv4Addr) -> Option<&ClientKey> {
        self.bound.get(&address).map(|b| &b.client)
    }

    /// Expiry of the binding of `address`.
    pub fn expires_at(&self, address: Ipv4Addr) -> Option<SystemTime> {
        self.bound.get(&address).map(|b| b.expires_at)
    }

    /// The outstanding offer to `client`.
    pub fn offer_of(&self, client: &ClientKey) -> Option<Ipv4Addr> {
        self.offers.get(client).map(|o| o.address)
    }

    /// Number of outstanding offers.
    pub fn pending_offers(&self) -> usize {
        self.offers.len()
    }

    /// Number of bound leases.
    pub fn bound_count(&self) -> usize {
        self.bound.len()
    }

    /// Whether `address` may be given to `client` now: not bound or offered to
    /// anyone else, not declined.
    pub fn is_free_for(&self, address: Ipv4Addr, client: &ClientKey) -> bool {
        if self.declined.contains_key(&address) {
            return false;
        }
        if self
            .bound
            .get(&address)
            .is_some_and(|b| &b.client != client)
        {
            return false;
        }
        self.offered.get(&address).is_none_or(|k| k == client)
    }

    fn reindex_offers(&mut self) {
        if self.offered.len() != self.offers.len() {
            self.offered = self
                .offers
                .iter()
                .map(|(k, o)| (o.address, k.clone()))
                .collect();
        }
    }

    fn remove_offer(&mut self, client: &ClientKey) {
        if let Some(o) = self.offers.remove(client)
            && self.offered.get(&o.address) == Some(client)
        {
            self.offered.remove(&o.address);
        }
    }

    /// Records an offer.
    pub fn offer(&mut self, client: ClientKey, address: Ipv4Addr, expires_at: SystemTime) {
        self.remove_offer(&client);
        self.note_expiry(expires_at);
        self.offered.insert(address, client.clone());
        self.offers.insert(
            client,
            Offer {
                address,
                expires_at,
            },
        );
    }

    /// Forgets the offer to `client` (it chose another server, or got bound).
    pub fn withdraw_offer(&mut self, client: &ClientKey) {
        self.remove_offer(client);
    }

    /// Binds `address` to `client` until `expires_at`, replacing any older binding
    /// of either.
    pub fn bind(
        &mut self,
        address: Ipv4Addr,
        client: ClientKey,
        mac: Option<Mac>,
        expires_at: SystemTime,
    ) {
        if let Some(old) = self.by_client.get(&client).copied()
            && old != address
        {
            self.bound.remove(&old);
        }
        if let Some(prev) = self.bound.get(&address)
            && prev.client != client
        {
            self.by_client.remove(&prev.client.clone());
        }
        self.remove_offer(&client);
        self.note_expiry(expires_at);
        self.by_client.insert(client.clone(), address);
        self.bound.insert(
            address,
            Binding {
                client,
                mac,
                expires_at,
            },
        );
    }

    /// Releases `address` if `client` holds it. Returns whether anything changed.
    pub fn release(&mut self, address: Ipv4Addr, client: &ClientKey) -> bool {
        if self
            .bound
            .get(&address)
            .is_some_and(|b| &b.client == client)
        {
            self.bound.remove(&address);
            self.by_client.remove(client);
            true
        } else {
            false
        }
    }

    /// Takes `address` out of the pool until `until`, dropping any binding of it.
    pub fn decline(&mut self, address: Ipv4Addr, until: SystemTime) {
        if let Some(b) = self.bound.remove(&address) {
            self.by_client.remove(&b.client);
        }
        if let Some(k) = self.offered.remove(&address) {
            self.offers.remove(&k);
        }
        self.note_expiry(until);
        self.declined.insert(address, until);
    }

    /// Whether `address` is held out after a decline.
    pub fn is_declined(&self, address: Ipv4Addr) -> bool {
        self.declined.contains_key(&address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }
    fn k(n: u8) -> ClientKey {
        ClientKey::Hardware(vec![1, 0, 0, 0, 0, 0, n])
    }
    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 101);

    #[test]
    fn bind_release_expire() {
        let mut l = LeaseTable::default();
        l.bind(A, k(1), None, t(100));
        assert_eq!(l.lease_of(&k(1)), Some(A));
        assert!(!l.is_free_for(A, &k(2)));
        assert!(l.is_free_for(A, &k(1)));
        // Rebinding the client elsewhere frees the old address.
        l.bind(B, k(1), None, t(100));
        assert!(l.holder(A).is_none());
        assert!(!l.release(B, &k(2)), "only the holder may release");
        assert!(l.release(B, &k(1)));
        l.bind(A, k(1), None, t(100));
        l.expire(t(99));
        assert_eq!(l.lease_of(&k(1)), Some(A));
        l.expire(t(100));
        assert_eq!(l.lease_of(&k(1)), None);
        assert_eq!(l.bound_count(), 0);
    }

    #[test]
    fn offers_and_declines_hold_addresses() {
        let mut l = LeaseTable::default();
        l.offer(k(1), A, t(60));
        assert!(!l.is_free_for(A, &k(2)));
        l.decline(B, t(600));
        assert!(!l.is_free_for(B, &k(1)));
        l.expire(t(60));
        assert!(l.is_free_for(A, &k(2)));
        assert!(l.is_declined(B));
        l.expire(t(600));
        assert!(!l.is_declined(B));
    }

    #[test]
    fn restore_replays_records() {
        let recs = vec![
            LeaseRecord {
                address: A,
                client: k(1),
                mac: None,
                state: LeaseState::Bound,
                expires_at: t(100),
            },
            LeaseRecord {
                address: B,
                client: k(2),
                mac: None,
                state: LeaseState::Bound,
                expires_at: t(100),
            },
            LeaseRecord {
                address: B,
                client: k(2),
                mac: None,
                state: LeaseState::Released,
                expires_at: t(50),
            },
        ];
        let mut l = LeaseTable::default();
        l.restore(&recs);
        assert_eq!(l.lease_of(&k(1)), Some(A));
        assert_eq!(l.lease_of(&k(2)), None);
    }
}
