//! The in-memory lease table owned by the core, and the lease log's line format.
//!
//! Persistence contract: every change that a reply acknowledges (a binding, a
//! release, a decline) is returned in `Outcome::persist`; the shell makes those
//! records durable *before* it sends the replies of the same outcome. On start the
//! shell feeds the stored records back through [`LeaseTable::restore`]. Offers are
//! not persisted: an offer is no commitment (RFC 2131 §4.3.1).
//!
//! The log is JSON lines, one [`LeaseRecord`] per line, each line ending in `\n`
//! ([`encode_record`], [`decode_record`]). [`LogScanner`] reads it back without I/O and
//! tells a torn tail (an append cut by a crash: nothing after it parses) from damage in
//! the middle (a bad line with good ones after it); the shell cuts the first and refuses
//! the second. [`LeaseTable::snapshot`] is what compaction writes: the live leases only.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
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

impl ClientKey {
    /// The key of a client that sent `client_id` (option 61, if any) from hardware address
    /// `htype` + `chaddr`. A client identifier that *is* the hardware address (RFC 2132 §9.14:
    /// the htype byte, then chaddr — what iPXE sends) names the same client as no identifier
    /// at all: a UEFI machine's PXE firmware (no option 61) and the iPXE it loads (option 61 =
    /// 01 + MAC) hold one lease, not two (dnsmasq matches them by hardware address too).
    pub fn of_client(client_id: Option<&[u8]>, htype: u8, chaddr: &[u8]) -> Self {
        let mut hardware = Vec::with_capacity(1 + chaddr.len());
        hardware.push(htype);
        hardware.extend_from_slice(chaddr);
        match client_id {
            Some(id) if !id.is_empty() && id != hardware.as_slice() => {
                ClientKey::ClientId(id.to_vec())
            }
            _ => ClientKey::Hardware(hardware),
        }
    }

    /// This key as [`ClientKey::of_client`] makes it now, for records written before it
    /// folded hardware-address identifiers (`mac` is the record's holder MAC).
    #[must_use]
    pub fn canonical(self, mac: Option<Mac>) -> Self {
        match (self, mac) {
            (ClientKey::ClientId(id), Some(mac))
                if id.len() == 7 && id[0] == 1 && id[1..] == mac.0[..] =>
            {
                ClientKey::Hardware(id)
            }
            (key, _) => key,
        }
    }
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

/// One durable lease event. Its JSON form is the lease log's line format; it has not
/// changed since the first release, so every log ever written still loads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Address concerned.
    pub address: Ipv4Addr,
    /// Holder.
    pub client: ClientKey,
    /// Holder's MAC, when Ethernet (`"aa:bb:cc:dd:ee:ff"`).
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

#[derive(Debug, Clone, PartialEq, Eq)]
struct Decline {
    client: ClientKey,
    mac: Option<Mac>,
    until: SystemTime,
}

/// What an agenda entry may expire. Entries are hints: when one comes due, the table
/// checks that the thing it names still expires at that time (a renewal or a new offer
/// leaves a stale entry behind, which is then skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    Binding(Ipv4Addr),
    Offer(Ipv4Addr),
    Decline(Ipv4Addr),
}

/// Leases, outstanding offers and declined addresses.
///
/// Offers are *soft*: an offered address is skipped while other addresses are free,
/// but it never stops a REQUEST from another client, and when every free address is
/// offered a new DISCOVER may take one over (see `Server`). So DISCOVERs alone, however
/// many MACs they come from, cannot hold a pool.
#[derive(Debug, Default)]
pub struct LeaseTable {
    bound: HashMap<Ipv4Addr, Binding>,
    by_client: HashMap<ClientKey, Ipv4Addr>,
    offers: HashMap<ClientKey, Offer>,
    /// Reverse index of `offers` (one offer per address, one address per offer).
    offered: HashMap<Ipv4Addr, ClientKey>,
    declined: HashMap<Ipv4Addr, Decline>,
    /// Min-heap of expiry times: `expire` pops what is due instead of scanning the
    /// table, so a flood of short-lived offers costs O(log n) each.
    agenda: BinaryHeap<Reverse<(SystemTime, Due)>>,
}

impl LeaseTable {
    /// Rebuilds the table from persisted records (in the order they were written).
    pub fn restore<'a>(&mut self, records: impl IntoIterator<Item = &'a LeaseRecord>) {
        for r in records {
            self.apply(r);
        }
    }

    /// Applies one persisted record.
    pub fn apply(&mut self, r: &LeaseRecord) {
        let client = r.client.clone().canonical(r.mac);
        match r.state {
            LeaseState::Bound => self.bind(r.address, client, r.mac, r.expires_at),
            LeaseState::Released => {
                self.release(r.address, &client);
            }
            LeaseState::Declined => {
                self.decline(r.address, client, r.mac, r.expires_at);
            }
        }
    }

    /// The live state as records (bindings and decline holds, by address): replaying
    /// them into an empty table gives this table minus its offers. What compaction writes.
    pub fn snapshot(&self) -> Vec<LeaseRecord> {
        let mut out: Vec<LeaseRecord> = Vec::with_capacity(self.live_count());
        out.extend(self.bound.iter().map(|(a, b)| LeaseRecord {
            address: *a,
            client: b.client.clone(),
            mac: b.mac,
            state: LeaseState::Bound,
            expires_at: b.expires_at,
        }));
        out.extend(self.declined.iter().map(|(a, d)| LeaseRecord {
            address: *a,
            client: d.client.clone(),
            mac: d.mac,
            state: LeaseState::Declined,
            expires_at: d.until,
        }));
        out.sort_unstable_by_key(|r| r.address);
        out
    }

    /// Bindings plus decline holds: the records a snapshot would hold.
    pub fn live_count(&self) -> usize {
        self.bound.len() + self.declined.len()
    }

    /// Drops everything that has expired at `now`.
    pub fn expire(&mut self, now: SystemTime) {
        while let Some(Reverse((at, due))) = self.agenda.peek().copied() {
            if at > now {
                break;
            }
            self.agenda.pop();
            match due {
                Due::Binding(a) => {
                    if self.bound.get(&a).is_some_and(|b| b.expires_at == at)
                        && let Some(b) = self.bound.remove(&a)
                        && self.by_client.get(&b.client) == Some(&a)
                    {
                        self.by_client.remove(&b.client);
                    }
                }
                Due::Offer(a) => {
                    if let Some(k) = self.offered.get(&a)
                        && self.offers.get(k).is_some_and(|o| o.expires_at == at)
                        && let Some(k) = self.offered.remove(&a)
                    {
                        self.offers.remove(&k);
                    }
                }
                Due::Decline(a) => {
                    if self.declined.get(&a).is_some_and(|d| d.until == at) {
                        self.declined.remove(&a);
                    }
                }
            }
        }
        self.trim_agenda();
    }

    fn schedule(&mut self, at: SystemTime, due: Due) {
        self.agenda.push(Reverse((at, due)));
    }

    /// Stale entries (renewed bindings, withdrawn offers) stay in the heap until they
    /// come due; rebuild it when they outnumber the live ones, so memory stays
    /// proportional to the table whatever the expiry times.
    fn trim_agenda(&mut self) {
        let live = self.bound.len() + self.offers.len() + self.declined.len();
        if self.agenda.len() <= 4 * live + 1024 {
            return;
        }
        let mut v = Vec::with_capacity(live);
        v.extend(
            self.bound
                .iter()
                .map(|(a, b)| Reverse((b.expires_at, Due::Binding(*a)))),
        );
        v.extend(
            self.offers
                .values()
                .map(|o| Reverse((o.expires_at, Due::Offer(o.address)))),
        );
        v.extend(
            self.declined
                .iter()
                .map(|(a, d)| Reverse((d.until, Due::Decline(*a)))),
        );
        self.agenda = BinaryHeap::from(v);
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

    /// Whether `client` may be *bound* to `address` now: not bound to anyone else, not
    /// declined. Offers to others do not count (they are soft).
    pub fn is_bindable_by(&self, address: Ipv4Addr, client: &ClientKey) -> bool {
        !self.declined.contains_key(&address)
            && self.bound.get(&address).is_none_or(|b| &b.client == client)
    }

    /// Whether `address` may be *offered* to `client` without taking over anyone's
    /// offer: bindable, and not offered to another client.
    pub fn is_free_for(&self, address: Ipv4Addr, client: &ClientKey) -> bool {
        self.is_bindable_by(address, client)
            && self.offered.get(&address).is_none_or(|k| k == client)
    }

    fn remove_offer(&mut self, client: &ClientKey) {
        if let Some(o) = self.offers.remove(client)
            && self.offered.get(&o.address) == Some(client)
        {
            self.offered.remove(&o.address);
        }
    }

    /// Records an offer, replacing the client's previous one and taking the address
    /// over from any other client it was offered to.
    pub fn offer(&mut self, client: ClientKey, address: Ipv4Addr, expires_at: SystemTime) {
        self.remove_offer(&client);
        if let Some(other) = self.offered.remove(&address) {
            self.offers.remove(&other);
        }
        self.schedule(expires_at, Due::Offer(address));
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
    /// of either and any offer of the address.
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
        if let Some(other) = self.offered.remove(&address) {
            self.offers.remove(&other);
        }
        self.declined.remove(&address);
        self.schedule(expires_at, Due::Binding(address));
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

    /// Takes `address` out of the pool until `until` (declined by `client`), dropping
    /// any binding or offer of it.
    pub fn decline(
        &mut self,
        address: Ipv4Addr,
        client: ClientKey,
        mac: Option<Mac>,
        until: SystemTime,
    ) {
        if let Some(b) = self.bound.remove(&address)
            && self.by_client.get(&b.client) == Some(&address)
        {
            self.by_client.remove(&b.client);
        }
        if let Some(k) = self.offered.remove(&address) {
            self.offers.remove(&k);
        }
        self.schedule(until, Due::Decline(address));
        self.declined
            .insert(address, Decline { client, mac, until });
    }

    /// Whether `address` is held out after a decline.
    pub fn is_declined(&self, address: Ipv4Addr) -> bool {
        self.declined.contains_key(&address)
    }
}

/// Longest line a lease log may hold. A record is at most ~1.2 KiB (a 255-byte client
/// identifier written as a JSON array); anything longer is damage, and the cap bounds
/// the memory a hostile or broken file can make the loader use.
pub const MAX_RECORD_LINE: usize = 16 << 10;

/// Appends `record` as one log line (JSON and `\n`).
pub fn encode_record(record: &LeaseRecord, out: &mut Vec<u8>) {
    // A LeaseRecord has only plain fields (no maps with non-string keys, no floats):
    // serialising it into memory cannot fail.
    if serde_json::to_writer(&mut *out, record).is_ok() {
        out.push(b'\n');
    }
}

/// Parses one log line (without its `\n`).
pub fn decode_record(line: &[u8]) -> Result<LeaseRecord, String> {
    if line.len() > MAX_RECORD_LINE {
        return Err(format!("line longer than {MAX_RECORD_LINE} bytes"));
    }
    serde_json::from_slice(line).map_err(|e| e.to_string())
}

/// A lease log that is damaged, not torn: a line that is not a record, with records
/// after it. Cutting there would drop acknowledged leases, so the shell refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "line {line} (byte {offset}) is not a lease record ({reason}), and valid records follow it: \
     the log is damaged in the middle, not torn by a crash"
)]
pub struct LogDamaged {
    /// 1-based line number of the first bad line.
    pub line: u64,
    /// Byte offset where it starts.
    pub offset: u64,
    /// Why it did not parse.
    pub reason: String,
}

/// The end of a scan: where the valid log ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanEnd {
    /// Bytes scanned.
    pub len: u64,
    /// End of the last valid line: the shell truncates the file here before appending.
    pub valid_len: u64,
    /// Valid record lines.
    pub records: u64,
}

impl ScanEnd {
    /// Bytes after the valid log (a torn append), 0 for a clean log.
    pub fn torn_bytes(&self) -> u64 {
        self.len - self.valid_len
    }
}

/// Reads a lease log as a byte stream, line by line, in bounded memory.
///
/// Rules: a `\n`-terminated line that parses is a record; blank lines are ignored. The
/// log is *torn* when everything after its last valid line is bad — unparseable lines,
/// an over-long line, NUL fill, or a final line without `\n` (even one that parses: an
/// append writes its records and their newlines in one write and is acknowledged only
/// after `fsync`, so a line without its newline was never acknowledged). A bad line
/// followed by a valid one is damage ([`LogDamaged`]).
#[derive(Debug, Default)]
pub struct LogScanner {
    partial: Vec<u8>,
    overlong: bool,
    consumed: u64,
    line_start: u64,
    line_no: u64,
    valid_len: u64,
    records: u64,
    bad: Option<LogDamaged>,
}

impl LogScanner {
    /// A scanner at the start of a log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes; `record` receives each valid record in order.
    pub fn feed(
        &mut self,
        mut chunk: &[u8],
        record: &mut impl FnMut(LeaseRecord),
    ) -> Result<(), LogDamaged> {
        while !chunk.is_empty() {
            let (piece, rest, ended) = match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => (&chunk[..i], &chunk[i + 1..], true),
                None => (chunk, &[][..], false),
            };
            chunk = rest;
            if !self.overlong {
                if self.partial.len() + piece.len() > MAX_RECORD_LINE {
                    self.overlong = true;
                    self.partial.clear();
                } else {
                    self.partial.extend_from_slice(piece);
                }
            }
            self.consumed += u64::try_from(piece.len()).unwrap_or(u64::MAX);
            if ended {
                self.consumed += 1;
                self.end_line(record)?;
            }
        }
        Ok(())
    }

    fn end_line(&mut self, record: &mut impl FnMut(LeaseRecord)) -> Result<(), LogDamaged> {
        self.line_no += 1;
        let verdict = if self.overlong {
            Err(format!("line longer than {MAX_RECORD_LINE} bytes"))
        } else if self.partial.iter().all(u8::is_ascii_whitespace) {
            Ok(None)
        } else {
            decode_record(&self.partial).map(Some)
        };
        self.partial.clear();
        self.overlong = false;
        let start = self.line_start;
        self.line_start = self.consumed;
        match verdict {
            Ok(r) => {
                if let Some(bad) = self.bad.take() {
                    if r.is_some() {
                        return Err(bad);
                    }
                    // A blank line inside a torn tail changes nothing.
                    self.bad = Some(bad);
                    return Ok(());
                }
                self.valid_len = self.consumed;
                if let Some(r) = r {
                    self.records += 1;
                    record(r);
                }
            }
            Err(reason) => {
                if self.bad.is_none() {
                    self.bad = Some(LogDamaged {
                        line: self.line_no,
                        offset: start,
                        reason,
                    });
                }
            }
        }
        Ok(())
    }

    /// Ends the scan. Whatever follows the last valid line (bad lines, an unterminated
    /// last line) is the torn tail.
    pub fn finish(self) -> ScanEnd {
        ScanEnd {
            len: self.consumed,
            valid_len: self.valid_len,
            records: self.records,
        }
    }
}

/// Scans a whole log held in memory: its records in order and where it ends.
pub fn scan_log(bytes: &[u8]) -> Result<(Vec<LeaseRecord>, ScanEnd), LogDamaged> {
    let mut scanner = LogScanner::new();
    let mut records = Vec::new();
    scanner.feed(bytes, &mut |r| records.push(r))?;
    Ok((records, scanner.finish()))
}

/// The lease-log fuzz target's entry: scans arbitrary bytes and checks the recovery
/// invariants. Panics only on a broken invariant.
///
/// - the valid prefix ends on a line boundary and re-scans to the same records with no
///   torn tail (recovery is idempotent: truncate, reopen, nothing else is cut);
/// - every record re-encodes to a line that decodes to itself;
/// - replaying the records and snapshotting the table is a fixed point.
pub fn fuzz_lease_log(bytes: &[u8]) -> usize {
    let Ok((records, end)) = scan_log(bytes) else {
        return 0;
    };
    assert_eq!(end.len, u64::try_from(bytes.len()).unwrap_or(u64::MAX));
    let valid = usize::try_from(end.valid_len).expect("valid_len within the input");
    assert!(valid == 0 || bytes[valid - 1] == b'\n', "cut inside a line");
    let (again, end2) = scan_log(&bytes[..valid]).expect("the valid prefix is valid");
    assert_eq!(again, records, "re-scan of the valid prefix differs");
    assert_eq!(end2.torn_bytes(), 0, "the valid prefix has a torn tail");
    let mut line = Vec::new();
    for r in &records {
        line.clear();
        encode_record(r, &mut line);
        assert_eq!(line.last(), Some(&b'\n'));
        let back = decode_record(&line[..line.len() - 1]).expect("own encoding decodes");
        assert_eq!(&back, r, "record does not round-trip");
    }
    let mut table = LeaseTable::default();
    table.restore(&records);
    let snap = table.snapshot();
    let mut again = LeaseTable::default();
    again.restore(&snap);
    assert_eq!(again.snapshot(), snap, "snapshot is not a fixed point");
    records.len()
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
    fn a_client_id_that_is_the_hardware_address_names_the_same_client() {
        let mac = [0x52, 0x54, 0, 0xf5, 0, 2];
        let hw = ClientKey::of_client(None, 1, &mac);
        // iPXE after OVMF's PXE: option 61 = 01 + MAC.
        let ipxe = ClientKey::of_client(Some(&[1, 0x52, 0x54, 0, 0xf5, 0, 2]), 1, &mac);
        assert_eq!(hw, ipxe);
        assert_eq!(ClientKey::of_client(Some(&[]), 1, &mac), hw);
        // Any other identifier (a DUID, another MAC) is a client of its own.
        let duid = ClientKey::of_client(Some(&[255, 0, 0, 0, 1, 0, 1]), 1, &mac);
        assert_eq!(duid, ClientKey::ClientId(vec![255, 0, 0, 0, 1, 0, 1]));
        let other = ClientKey::of_client(Some(&[1, 2, 0, 0, 0, 0, 9]), 1, &mac);
        assert_ne!(other, hw);
    }

    #[test]
    fn records_of_hardware_address_identifiers_restore_under_one_key() {
        // A log written before the fold: the same machine bound twice, once per key.
        let mac = Mac([0x52, 0x54, 0, 0xf5, 0, 2]);
        let mut id = vec![1];
        id.extend_from_slice(&mac.0);
        let bound = |a, client| LeaseRecord {
            address: a,
            client,
            mac: Some(mac),
            state: LeaseState::Bound,
            expires_at: t(1000),
        };
        let mut table = LeaseTable::default();
        table.restore(&[
            bound(A, ClientKey::Hardware(id.clone())),
            bound(B, ClientKey::ClientId(id.clone())),
        ]);
        let key = ClientKey::of_client(Some(&id), 1, &mac.0);
        assert_eq!(table.lease_of(&key), Some(B), "the later binding wins");
        assert_eq!(
            table
                .snapshot()
                .iter()
                .filter(|r| r.state == LeaseState::Bound && r.client == key)
                .count(),
            1,
            "{:?}",
            table.snapshot()
        );
    }

    fn rec(a: Ipv4Addr, n: u8, state: LeaseState, at: u64) -> LeaseRecord {
        LeaseRecord {
            address: a,
            client: k(n),
            mac: Some(Mac([2, 0, 0, 0, 0, n])),
            state,
            expires_at: t(at),
        }
    }

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
    fn a_renewal_outlives_the_first_expiry() {
        let mut l = LeaseTable::default();
        l.bind(A, k(1), None, t(100));
        l.bind(A, k(1), None, t(200));
        l.expire(t(150));
        assert_eq!(
            l.lease_of(&k(1)),
            Some(A),
            "the stale agenda entry is skipped"
        );
        l.expire(t(200));
        assert_eq!(l.lease_of(&k(1)), None);
    }

    #[test]
    fn offers_and_declines_hold_addresses() {
        let mut l = LeaseTable::default();
        l.offer(k(1), A, t(60));
        assert!(!l.is_free_for(A, &k(2)));
        assert!(l.is_bindable_by(A, &k(2)), "offers are soft");
        l.decline(B, k(3), None, t(600));
        assert!(!l.is_free_for(B, &k(1)));
        assert!(!l.is_bindable_by(B, &k(1)));
        l.expire(t(60));
        assert!(l.is_free_for(A, &k(2)));
        assert!(l.is_declined(B));
        l.expire(t(600));
        assert!(!l.is_declined(B));
    }

    #[test]
    fn an_offer_taken_over_leaves_one_offer_per_address() {
        let mut l = LeaseTable::default();
        l.offer(k(1), A, t(10));
        l.offer(k(2), A, t(20));
        assert_eq!(l.offer_of(&k(1)), None);
        assert_eq!(l.offer_of(&k(2)), Some(A));
        assert_eq!(l.pending_offers(), 1);
        // The first offer's agenda entry is stale and must not remove the second.
        l.expire(t(10));
        assert_eq!(l.offer_of(&k(2)), Some(A));
        l.expire(t(20));
        assert_eq!(l.pending_offers(), 0);
        // Binding the address withdraws whoever it was offered to.
        l.offer(k(3), B, t(30));
        l.bind(B, k(4), None, t(40));
        assert_eq!(l.offer_of(&k(3)), None);
    }

    #[test]
    fn the_agenda_stays_proportional_to_the_table() {
        let mut l = LeaseTable::default();
        for i in 0..100_000u32 {
            // One client re-offered over and over: one live offer, many stale entries.
            l.offer(k(1), Ipv4Addr::from(0x0a00_0000 + (i % 200)), t(1_000_000));
            l.expire(t(u64::from(i)));
        }
        assert_eq!(l.pending_offers(), 1);
        assert!(l.agenda.len() <= 4 + 1024 + 1, "{}", l.agenda.len());
    }

    #[test]
    fn restore_replays_records_and_snapshot_is_the_live_state() {
        let recs = vec![
            rec(A, 1, LeaseState::Bound, 100),
            rec(B, 2, LeaseState::Bound, 100),
            rec(B, 2, LeaseState::Released, 50),
            rec(Ipv4Addr::new(10, 0, 0, 7), 3, LeaseState::Declined, 700),
        ];
        let mut l = LeaseTable::default();
        l.restore(&recs);
        assert_eq!(l.lease_of(&k(1)), Some(A));
        assert_eq!(l.lease_of(&k(2)), None);
        let snap = l.snapshot();
        assert_eq!(
            snap,
            vec![
                rec(Ipv4Addr::new(10, 0, 0, 7), 3, LeaseState::Declined, 700),
                rec(A, 1, LeaseState::Bound, 100),
            ]
        );
        assert_eq!(l.live_count(), 2);
        let mut again = LeaseTable::default();
        again.restore(&snap);
        assert_eq!(again.snapshot(), snap);
        assert!(again.is_declined(Ipv4Addr::new(10, 0, 0, 7)));
    }

    /// A line written by the first release of the lease log (hand-kept here, not
    /// generated by today's code) still decodes.
    #[test]
    fn old_lines_still_decode() {
        let old = br#"{"address":"10.94.1.7","client":{"Hardware":[1,2,0,94,0,0,7]},"mac":"02:00:5e:00:00:07","state":"bound","expires_at":{"secs_since_epoch":1764400000,"nanos_since_epoch":123}}"#;
        let r = decode_record(old).expect("old line");
        assert_eq!(r.address, Ipv4Addr::new(10, 94, 1, 7));
        assert_eq!(r.mac, Some(Mac([2, 0, 0x5e, 0, 0, 7])));
        assert_eq!(r.state, LeaseState::Bound);
        let mut line = Vec::new();
        encode_record(&r, &mut line);
        assert_eq!(&line[..line.len() - 1], &old[..], "same encoding today");
        let id = br#"{"address":"10.0.0.9","client":{"ClientId":[1,82,84]},"mac":null,"state":"declined","expires_at":{"secs_since_epoch":5,"nanos_since_epoch":0}}"#;
        assert_eq!(decode_record(id).expect("id").mac, None);
    }

    fn log_of(recs: &[LeaseRecord]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in recs {
            encode_record(r, &mut out);
        }
        out
    }

    #[test]
    fn every_cut_of_the_tail_is_a_torn_tail() {
        let recs: Vec<_> = (1..=4)
            .map(|n| rec(Ipv4Addr::new(10, 0, 0, n), n, LeaseState::Bound, 100))
            .collect();
        let log = log_of(&recs);
        let ends: Vec<usize> = log
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .map(|(i, _)| i + 1)
            .collect();
        for cut in 0..=log.len() {
            let (got, end) = scan_log(&log[..cut]).expect("a cut log is torn, not damaged");
            let whole = ends.iter().filter(|e| **e <= cut).count();
            assert_eq!(got, recs[..whole], "cut at {cut}");
            let valid = if whole == 0 { 0 } else { ends[whole - 1] };
            assert_eq!(end.valid_len, valid as u64, "cut at {cut}");
            assert_eq!(end.torn_bytes(), (cut - valid) as u64);
        }
    }

    #[test]
    fn garbage_after_the_last_record_is_torn_but_records_after_garbage_are_damage() {
        let recs = vec![rec(A, 1, LeaseState::Bound, 100)];
        let mut log = log_of(&recs);
        let good = log.len() as u64;
        // Zero fill (a size update that reached the disk before the data), garbage
        // lines, blank lines: all torn.
        log.extend_from_slice(&[0; 300]);
        log.extend_from_slice(b"\n{\"address\":\"10.0\n\n");
        log.extend_from_slice(&[0; 10]);
        let (got, end) = scan_log(&log).expect("torn");
        assert_eq!((got, end.valid_len), (recs.clone(), good));
        // ... but a record after them is damage, and names the first bad line.
        log.extend_from_slice(b"\n");
        log.extend_from_slice(&log_of(&recs));
        let err = scan_log(&log).expect_err("damage");
        assert_eq!((err.line, err.offset), (2, good));
        // An over-long line is bad too, in bounded memory.
        let mut long = log_of(&recs);
        long.extend(std::iter::repeat_n(b'x', MAX_RECORD_LINE * 3));
        let (_, end) = scan_log(&long).expect("torn");
        assert_eq!(end.valid_len, good);
        // A complete record without its newline was never acknowledged: torn.
        let mut no_nl = log_of(&recs);
        no_nl.extend_from_slice(&log_of(&recs));
        no_nl.pop();
        assert_eq!(scan_log(&no_nl).expect("torn").1.valid_len, good);
    }

    #[test]
    fn fuzz_entry_accepts_real_logs() {
        let recs = vec![
            rec(A, 1, LeaseState::Bound, 100),
            rec(A, 1, LeaseState::Released, 100),
            rec(B, 2, LeaseState::Declined, 100),
        ];
        let mut log = log_of(&recs);
        log.extend_from_slice(b"{\"addr");
        assert_eq!(fuzz_lease_log(&log), 3);
        assert_eq!(fuzz_lease_log(b"\x00\n{}\n"), 0);
    }
}
