//! The DHCP side of `tugboot init`'s link probe, sans-IO: the DHCPDISCOVER a client sends to
//! find out whether a DHCP server already answers on a link, and reading the offers that come
//! back. The server binary's `init` command owns the socket (docs/packages.md).
//!
//! [`parse_offer`] faces the network: it never panics, whatever the bytes (fuzz target
//! `offer` in `fuzz/`, seeds in tests/fixtures/init).

use std::net::Ipv4Addr;

use serde::Serialize;

/// The PXE vendor class the probe announces, so proxyDHCP servers (which answer only netboot
/// clients) answer it too; plain DHCP servers ignore it.
pub const PXE_CLASS: &[u8] = b"PXEClient:Arch:00000:UNDI:002001";

/// A DHCPDISCOVER from `mac` with transaction id `xid`: broadcast flag set (the answer must
/// reach a socket bound to 0.0.0.0:68), parameter request list, PXE vendor class and client
/// architecture 0 (BIOS), padded to the BOOTP minimum of 300 bytes.
#[must_use]
pub fn discover(mac: [u8; 6], xid: u32) -> Vec<u8> {
    let mut p = vec![0u8; 240];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[10] = 0x80; // broadcast flag
    p[28..34].copy_from_slice(&mac);
    p[236..240].copy_from_slice(&[99, 130, 83, 99]);
    p.extend_from_slice(&[53, 1, 1]);
    p.extend_from_slice(&[55, 6, 1, 3, 6, 54, 60, 67]);
    p.push(60);
    p.push(u8::try_from(PXE_CLASS.len()).unwrap_or(0));
    p.extend_from_slice(PXE_CLASS);
    p.extend_from_slice(&[93, 2, 0, 0]);
    p.push(255);
    p.resize(p.len().max(300), 0);
    p
}

/// What answered the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OfferKind {
    /// A DHCP server offering an address.
    Address,
    /// A proxyDHCP/PXE server: boot parameters, no address.
    Proxy,
}

/// One DHCPOFFER for the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Offer {
    /// Server identifier (option 54), else the datagram's source.
    pub server: Ipv4Addr,
    /// Address offered (0.0.0.0 for a proxy offer).
    pub yiaddr: Ipv4Addr,
    /// Which kind of server.
    pub kind: OfferKind,
}

/// Reads a datagram as an offer for transaction `xid`, or `None` for anything else (other
/// transactions, requests, truncated or malformed packets). Never panics, whatever the bytes:
/// the header is read through `get`, options through `crate::wire::find_option`.
#[must_use]
pub fn parse_offer(bytes: &[u8], xid: u32, from: Ipv4Addr) -> Option<Offer> {
    let bytes = bytes.get(..bytes.len().min(crate::wire::MAX_REQUEST_LEN))?;
    if bytes.len() < 240 || bytes.first() != Some(&2) {
        return None;
    }
    if bytes.get(4..8)? != xid.to_be_bytes() || bytes.get(236..240)? != [99, 130, 83, 99] {
        return None;
    }
    if crate::wire::find_option(bytes, 53).as_deref() != Some(&[2]) {
        return None;
    }
    let ip = |r: std::ops::Range<usize>| -> Option<Ipv4Addr> {
        let b: [u8; 4] = bytes.get(r)?.try_into().ok()?;
        Some(Ipv4Addr::from(b))
    };
    let yiaddr = ip(16..20)?;
    let server = crate::wire::find_option(bytes, 54)
        .and_then(|s| <[u8; 4]>::try_from(s.as_slice()).ok())
        .map_or(from, Ipv4Addr::from);
    let kind = if yiaddr.is_unspecified() {
        OfferKind::Proxy
    } else {
        OfferKind::Address
    };
    Some(Offer {
        server,
        yiaddr,
        kind,
    })
}

/// Fuzz entry: every byte string through [`parse_offer`], with the transaction id its own
/// header claims (so the option walk is reached).
pub fn fuzz_offer(data: &[u8]) {
    let xid = data
        .get(4..8)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_be_bytes);
    let _ = parse_offer(data, xid, Ipv4Addr::UNSPECIFIED);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_discover_is_a_broadcast_pxe_request_of_300_bytes() {
        let d = discover([2, 0, 0, 0, 0, 1], 0x1234_5678);
        assert_eq!(d.len(), 300);
        let r = crate::wire::Request::parse(&d).expect("our DHCP parser reads it");
        assert_eq!(r.msg_type, dhcproto_type_discover());
        assert_eq!(r.chaddr(), &[2, 0, 0, 0, 0, 1]);
        assert_eq!(&d[4..8], &[0x12, 0x34, 0x56, 0x78]);
        assert_eq!(d[10], 0x80);
        assert_eq!(crate::wire::find_option(&d, 60).as_deref(), Some(PXE_CLASS));
    }

    fn dhcproto_type_discover() -> crate::MessageType {
        crate::MessageType::Discover
    }

    /// A DHCPOFFER as Debian's dnsmasq 2.90 sent it (3.04 s after the DISCOVER: its ping
    /// check) to this probe's DISCOVER over a veth pair: tests/fixtures/init/dnsmasq-offer.bin.
    const DNSMASQ_OFFER: &[u8] = include_bytes!("../../../tests/fixtures/init/dnsmasq-offer.bin");

    fn xid_of(p: &[u8]) -> u32 {
        u32::from_be_bytes(p[4..8].try_into().expect("xid"))
    }

    #[test]
    fn a_dnsmasq_offer_is_an_address_offer() {
        let xid = xid_of(DNSMASQ_OFFER);
        let o = parse_offer(DNSMASQ_OFFER, xid, Ipv4Addr::new(10, 77, 0, 2)).expect("offer");
        assert_eq!(o.kind, OfferKind::Address);
        assert_eq!(o.server, Ipv4Addr::new(10, 77, 0, 2));
        assert!(!o.yiaddr.is_unspecified());
        // Another transaction's offer is not ours.
        assert_eq!(
            parse_offer(DNSMASQ_OFFER, xid ^ 1, Ipv4Addr::UNSPECIFIED),
            None
        );
    }

    #[test]
    fn a_proxy_offer_and_non_offers() {
        let mut p = DNSMASQ_OFFER.to_vec();
        let xid = xid_of(&p);
        p[16..20].copy_from_slice(&[0, 0, 0, 0]);
        let o = parse_offer(&p, xid, Ipv4Addr::new(10, 77, 0, 2)).expect("offer");
        assert_eq!(o.kind, OfferKind::Proxy);
        // Our own DISCOVER (op 1) is not an offer, nor a truncated one.
        assert_eq!(
            parse_offer(&discover([2; 6], xid), xid, Ipv4Addr::UNSPECIFIED),
            None
        );
        assert_eq!(parse_offer(&p[..239], xid, Ipv4Addr::UNSPECIFIED), None);
    }

    /// Every prefix and many corruptions of a real offer: `parse_offer` answers, never panics
    /// (the offer parser faces the network).
    #[test]
    fn hostile_bytes_never_panic() {
        let xid = xid_of(DNSMASQ_OFFER);
        for n in 0..=DNSMASQ_OFFER.len() {
            let _ = parse_offer(&DNSMASQ_OFFER[..n], xid, Ipv4Addr::UNSPECIFIED);
        }
        // A deterministic walk (xorshift) over single-byte corruptions of the options.
        let mut s: u32 = 0x9e37_79b9;
        for _ in 0..20_000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let mut p = DNSMASQ_OFFER.to_vec();
            let i = usize::try_from(s).unwrap_or(0) % p.len();
            p[i] = u8::try_from(s >> 24).unwrap_or(0);
            let _ = parse_offer(&p, xid, Ipv4Addr::UNSPECIFIED);
        }
        let big = vec![2u8; 70_000];
        assert_eq!(parse_offer(&big, xid, Ipv4Addr::UNSPECIFIED), None);
    }

    /// Every seed of the fuzz target through the same entry (tests/fixtures/init).
    #[test]
    fn fuzz_seeds_run() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/init");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).expect("seeds") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "bin") {
                fuzz_offer(&std::fs::read(&p).expect("seed"));
                n += 1;
            }
        }
        assert!(n > 0, "no seeds in {}", dir.display());
    }
}
