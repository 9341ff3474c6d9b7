//! Protocol flows on synthetic packets: lease life cycle, relays, proxy mode,
//! policies and limits. Time is simulated with `t(secs)`.

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::MessageType;
use tugboot_dhcp::{
    Config, Event, Firmware, Ignored, LeaseState, Platform, Request, Server, UnknownPolicy,
    classify,
};

use crate::support::*;

const C1: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);

fn server() -> Server {
    Server::new(auth_config())
}

fn dora(s: &mut Server, mac: [u8; 6], at: u64) -> Ipv4Addr {
    let offer = s.handle(t(at), &Pkt::new(1, mac).bytes(), local());
    let addr = yiaddr(only_reply(&offer));
    let req = Pkt::new(3, mac)
        .opt(54, &SERVER.octets())
        .opt(50, &addr.octets());
    let ack = s.handle(t(at), &req.bytes(), local());
    assert_eq!(only_reply(&ack).msg_type, MessageType::Ack);
    addr
}

fn ignored(out: &tugboot_dhcp::Outcome) -> Vec<Ignored> {
    out.events
        .iter()
        .filter_map(|e| match e {
            Event::Ignored { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn plain_client_gets_a_lease_and_no_boot_options() {
    let mut s = server();
    let out = s.handle(t(0), &Pkt::new(1, PLAIN_MAC).bytes(), local());
    let offer = only_reply(&out);
    assert_eq!(offer.msg_type, MessageType::Offer);
    assert_eq!(yiaddr(offer), C1);
    assert!(out.persist.is_empty(), "offers are not persisted");
    assert_eq!(opt(offer, 67), None);
    assert_eq!(opt(offer, 60), None);
    assert_eq!(siaddr(offer), Ipv4Addr::UNSPECIFIED);
    assert_eq!(opt(offer, 1), Some(vec![255, 255, 255, 0]));
    assert_eq!(opt(offer, 3), Some(SERVER.octets().to_vec()));

    let req = Pkt::new(3, PLAIN_MAC)
        .opt(54, &SERVER.octets())
        .opt(50, &C1.octets());
    let out = s.handle(t(1), &req.bytes(), local());
    let ack = only_reply(&out);
    assert_eq!(ack.msg_type, MessageType::Ack);
    assert_eq!(
        out.persist.len(),
        1,
        "the binding is persisted with the ACK"
    );
    let rec = &out.persist[0];
    assert_eq!((rec.address, rec.state), (C1, LeaseState::Bound));
    assert_eq!(rec.expires_at, t(1 + 3600));
    assert_eq!(opt(ack, 58), Some(1800u32.to_be_bytes().to_vec()));
    assert_eq!(opt(ack, 59), Some(3150u32.to_be_bytes().to_vec()));
}

/// OVMF's PXE sends no client identifier; the iPXE it loads sends option 61 = 01 + MAC. One
/// machine, one lease: the second DORA gets the first one's address, and the pool loses one.
#[test]
fn firmware_then_ipxe_with_a_hardware_client_id_hold_one_lease() {
    let mut s = server();
    let mac = [0x52, 0x54, 0, 0xf5, 0, 2];
    let firmware = dora(&mut s, mac, 0);
    let mut id = vec![1];
    id.extend_from_slice(&mac);
    let offer = s.handle(t(5), &Pkt::new(1, mac).opt(61, &id).bytes(), local());
    assert_eq!(
        yiaddr(only_reply(&offer)),
        firmware,
        "iPXE was offered another address"
    );
    let req = Pkt::new(3, mac)
        .opt(61, &id)
        .opt(54, &SERVER.octets())
        .opt(50, &firmware.octets());
    let ack = s.handle(t(5), &req.bytes(), local());
    assert_eq!(only_reply(&ack).msg_type, MessageType::Ack);
    // Another identifier from the same MAC (a DUID) is another client.
    let duid = [255, 0, 0, 0, 1, 0, 1, 0x52];
    let offer = s.handle(t(6), &Pkt::new(1, mac).opt(61, &duid).bytes(), local());
    assert_ne!(yiaddr(only_reply(&offer)), firmware);
}

#[test]
fn renew_rebind_release_and_reuse() {
    let mut s = server();
    let a = dora(&mut s, PLAIN_MAC, 0);
    // RENEWING: unicast, ciaddr set, no server id / requested address.
    let out = s.handle(t(1800), &Pkt::new(3, PLAIN_MAC).ciaddr(a).bytes(), local());
    let ack = only_reply(&out);
    assert_eq!(ack.msg_type, MessageType::Ack);
    assert_eq!(
        ack.dest,
        SocketAddrV4::new(a, 68),
        "renewal answered to ciaddr"
    );
    assert_eq!(out.persist[0].expires_at, t(1800 + 3600));
    // REBINDING: broadcast, same shape.
    let out = s.handle(
        t(3300),
        &Pkt::new(3, PLAIN_MAC).ciaddr(a).broadcast().bytes(),
        local(),
    );
    assert_eq!(only_reply(&out).msg_type, MessageType::Ack);
    // RELEASE: no reply, persisted.
    let out = s.handle(t(3400), &Pkt::new(7, PLAIN_MAC).ciaddr(a).bytes(), local());
    assert!(out.replies.is_empty());
    assert_eq!(out.persist[0].state, LeaseState::Released);
    assert_eq!(s.leases().bound_count(), 0);
    // The next client gets a fresh address (no immediate reuse), but the released
    // one is free again for a client that asks for it.
    let other = [2, 0, 0, 0, 0, 9];
    assert_ne!(dora(&mut s, other, 3401), a);
    let third = Pkt::new(1, [2, 0, 0, 0, 0, 10]).opt(50, &a.octets());
    assert_eq!(
        yiaddr(only_reply(&s.handle(t(3402), &third.bytes(), local()))),
        a
    );
}

#[test]
fn renewal_of_someone_elses_address_is_naked() {
    let mut s = server();
    let a = dora(&mut s, PLAIN_MAC, 0);
    let thief = [2, 0, 0, 0, 0, 7];
    let out = s.handle(t(5), &Pkt::new(3, thief).ciaddr(a).bytes(), local());
    let nak = only_reply(&out);
    assert_eq!(nak.msg_type, MessageType::Nak);
    assert_eq!(nak.dest, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
    assert!(out.persist.is_empty());
}

#[test]
fn init_reboot_wrong_subnet_naks_unknown_address_is_silent() {
    let mut s = server();
    let wrong = Pkt::new(3, PLAIN_MAC).opt(50, &[192, 168, 1, 50]);
    let out = s.handle(t(0), &wrong.bytes(), local());
    assert_eq!(only_reply(&out).msg_type, MessageType::Nak);
    let unknown = Pkt::new(3, PLAIN_MAC).opt(50, &[10, 77, 0, 150]);
    let out = s.handle(t(0), &unknown.bytes(), local());
    assert!(out.replies.is_empty());
    assert_eq!(ignored(&out), vec![Ignored::NoRecord]);
}

#[test]
fn lease_expires_by_now() {
    let mut s = server();
    let a = dora(&mut s, PLAIN_MAC, 0);
    let late = s.handle(t(3601), &Pkt::new(3, PLAIN_MAC).ciaddr(a).bytes(), local());
    assert!(late.replies.is_empty(), "expired lease: no record, silent");
    assert_eq!(s.leases().bound_count(), 0);
}

#[test]
fn decline_holds_the_address_out_of_the_pool() {
    let mut s = server();
    let a = dora(&mut s, PLAIN_MAC, 0);
    let out = s.handle(
        t(2),
        &Pkt::new(4, PLAIN_MAC)
            .opt(50, &a.octets())
            .opt(54, &SERVER.octets())
            .bytes(),
        local(),
    );
    assert!(out.replies.is_empty());
    assert_eq!(out.persist[0].state, LeaseState::Declined);
    assert_eq!(out.persist[0].expires_at, t(2 + 600));
    let again = s.handle(t(3), &Pkt::new(1, PLAIN_MAC).bytes(), local());
    assert_ne!(
        yiaddr(only_reply(&again)),
        a,
        "declined address not offered"
    );
    let asks = Pkt::new(1, [2, 0, 0, 0, 0, 0x33]).opt(50, &a.octets());
    let during = s.handle(t(100), &asks.bytes(), local());
    assert_ne!(yiaddr(only_reply(&during)), a, "not even when asked for");
    let asks = Pkt::new(1, [2, 0, 0, 0, 0, 0x34]).opt(50, &a.octets());
    let after = s.handle(t(700), &asks.bytes(), local());
    assert_eq!(
        yiaddr(only_reply(&after)),
        a,
        "back in the pool after the hold"
    );
}

#[test]
fn inform_gets_configuration_without_a_lease() {
    let mut s = server();
    let ci = Ipv4Addr::new(10, 77, 0, 42);
    let out = s.handle(t(0), &Pkt::new(8, PLAIN_MAC).ciaddr(ci).bytes(), local());
    let ack = only_reply(&out);
    assert_eq!(ack.msg_type, MessageType::Ack);
    assert_eq!(yiaddr(ack), Ipv4Addr::UNSPECIFIED);
    assert_eq!(opt(ack, 51), None);
    assert_eq!(ack.dest, SocketAddrV4::new(ci, 68));
    assert!(out.persist.is_empty());
}

#[test]
fn client_choosing_another_server_frees_the_offer() {
    let mut s = server();
    let offer = s.handle(t(0), &Pkt::new(1, PLAIN_MAC).bytes(), local());
    let a = yiaddr(only_reply(&offer));
    let other = Pkt::new(3, PLAIN_MAC)
        .opt(54, &[10, 77, 0, 254])
        .opt(50, &[10, 77, 0, 9]);
    let out = s.handle(t(1), &other.bytes(), local());
    assert!(out.replies.is_empty());
    assert_eq!(ignored(&out), vec![Ignored::OtherServer]);
    let next = Pkt::new(1, [2, 0, 0, 0, 0, 0x44]).opt(50, &a.octets());
    let next = s.handle(t(2), &next.bytes(), local());
    assert_eq!(
        yiaddr(only_reply(&next)),
        a,
        "the withdrawn offer's address is free"
    );
}

#[test]
fn relay_selects_subnet_and_echoes_option_82_verbatim() {
    let mut s = server();
    let gi = Ipv4Addr::new(10, 88, 0, 1);
    // Circuit id, remote id, and an unknown sub-option 9 that must survive untouched.
    let o82 = [1, 3, b'e', b't', b'1', 2, 2, 0xab, 0xcd, 9, 1, 0x55];
    let p = Pkt::new(1, PLAIN_MAC).giaddr(gi).opt(82, &o82);
    let out = s.handle(t(0), &p.bytes(), relayed(gi));
    let offer = only_reply(&out);
    assert_eq!(
        offer.dest,
        SocketAddrV4::new(gi, 67),
        "relayed replies go to giaddr:67"
    );
    assert_eq!(yiaddr(offer), Ipv4Addr::new(10, 88, 0, 10));
    assert_eq!(opt(offer, 82), Some(o82.to_vec()));
    assert_eq!(offer.bytes[24..28], gi.octets(), "giaddr kept");
    let req = Request::parse(&p.bytes()).expect("parse");
    let c = classify(&req);
    assert_eq!(c.relay.circuit_id, Some(b"et1".to_vec()));
    assert_eq!(c.relay.remote_id, Some(vec![0xab, 0xcd]));
}

#[test]
fn link_selection_and_subnet_selection_override_giaddr() {
    let mut s = trusting(&[Ipv4Addr::new(172, 16, 0, 1)]);
    let gi = Ipv4Addr::new(172, 16, 0, 1);
    let o82 = [5, 4, 10, 88, 0, 0];
    let out = s.handle(
        t(0),
        &Pkt::new(1, PLAIN_MAC).giaddr(gi).opt(82, &o82).bytes(),
        relayed(gi),
    );
    assert_eq!(yiaddr(only_reply(&out)), Ipv4Addr::new(10, 88, 0, 10));
    let out = s.handle(
        t(0),
        &Pkt::new(1, [2, 0, 0, 0, 0, 5])
            .giaddr(gi)
            .opt(118, &[10, 88, 0, 0])
            .bytes(),
        relayed(gi),
    );
    assert_eq!(yiaddr(only_reply(&out)), Ipv4Addr::new(10, 88, 0, 11));
    let out = s.handle(
        t(0),
        &Pkt::new(1, [2, 0, 0, 0, 0, 6]).giaddr(gi).bytes(),
        relayed(gi),
    );
    assert_eq!(ignored(&out), vec![Ignored::NoSubnet(gi)]);
}

#[test]
fn pool_exhaustion_is_reported() {
    let mut s = server();
    let gi = Ipv4Addr::new(10, 88, 0, 1);
    // Offers alone never exhaust a pool (they are soft); bindings do.
    for n in 0..2u8 {
        dora_relayed(&mut s, [2, 0, 0, 0, 1, n], gi, 0);
    }
    let out = s.handle(
        t(0),
        &Pkt::new(1, [2, 0, 0, 0, 1, 9]).giaddr(gi).bytes(),
        relayed(gi),
    );
    assert_eq!(ignored(&out), vec![Ignored::PoolExhausted]);
}

#[test]
fn proxy_mode_answers_only_pxe_and_never_offers_addresses() {
    let mut s = Server::new(config_with_mode("proxy"));
    let out = s.handle(t(0), &Pkt::new(1, PLAIN_MAC).bytes(), local());
    assert!(
        out.replies.is_empty(),
        "plain clients are the other server's business"
    );
    let p = Pkt::new(1, PXE_MAC)
        .opt(93, &[0, 7])
        .opt(60, PXE_X64)
        .opt(97, &[0; 17]);
    let out = s.handle(t(0), &p.bytes(), local());
    let offer = only_reply(&out);
    assert_eq!(offer.msg_type, MessageType::Offer);
    assert_eq!(yiaddr(offer), Ipv4Addr::UNSPECIFIED);
    assert_eq!(opt(offer, 51), None, "no lease time in a proxy offer");
    assert_eq!(opt(offer, 43), Some(vec![6, 1, 8, 255]));
    assert_eq!(opt(offer, 54), Some(SERVER.octets().to_vec()));
    assert_eq!(offer.dest, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
    // REQUEST on 67 belongs to the real DHCP server.
    let req = Pkt::new(3, PXE_MAC)
        .opt(93, &[0, 7])
        .opt(60, PXE_X64)
        .opt(54, &[10, 77, 0, 254])
        .opt(50, &[10, 77, 0, 9]);
    assert!(s.handle(t(1), &req.bytes(), local()).replies.is_empty());
    // On 4011 the client (now configured) asks the boot server; ACK to its port.
    let client = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 9), 68);
    let on4011 = Pkt::new(3, PXE_MAC)
        .ciaddr(*client.ip())
        .opt(93, &[0, 7])
        .opt(60, PXE_X64);
    let out = s.handle(t(2), &on4011.bytes(), pxe_port(client));
    let ack = only_reply(&out);
    assert_eq!(ack.msg_type, MessageType::Ack);
    assert_eq!(ack.dest, client);
    assert_eq!(file_field(ack), b"ipxe.efi");
    assert!(out.persist.is_empty());
}

#[test]
fn uefi_http_boot_gets_a_url_and_httpclient_echoed() {
    let mut s = server();
    let p = Pkt::new(1, PXE_MAC)
        .opt(93, &[0, 16])
        .opt(60, b"HTTPClient:Arch:00016:UNDI:003000")
        .broadcast();
    let out = s.handle(t(0), &p.bytes(), local());
    let offer = only_reply(&out);
    assert_eq!(
        file_field(offer),
        b"http://10.77.0.1:8080/efi/uefi-x64/ipxe.efi"
    );
    assert_eq!(opt(offer, 60), Some(b"HTTPClient".to_vec()));
    assert_eq!(
        opt(offer, 67),
        Some(b"http://10.77.0.1:8080/efi/uefi-x64/ipxe.efi\0".to_vec())
    );
}

#[test]
fn option_93_is_a_list_and_the_first_known_arch_wins() {
    let p = Pkt::new(1, PXE_MAC)
        .opt(93, &[0x01, 0x00, 0, 11, 0, 7])
        .opt(60, b"PXEClient");
    let c = classify(&Request::parse(&p.bytes()).expect("parse"));
    assert_eq!(c.arches.len(), 3);
    assert_eq!(c.firmware, Firmware::Pxe(Platform::UefiArm64));
    // Missing option 93: fall back to the vendor class arch field.
    let p = Pkt::new(1, PXE_MAC).opt(60, b"PXEClient:Arch:00011:UNDI:003000");
    let c = classify(&Request::parse(&p.bytes()).expect("parse"));
    assert_eq!(c.firmware, Firmware::Pxe(Platform::UefiArm64));
    // A real UUID in option 97 is an identity; all-zero is not.
    let mut id = vec![0u8];
    id.extend_from_slice(&[0x11; 16]);
    let p = Pkt::new(1, PXE_MAC).opt(97, &id).opt(60, b"PXEClient");
    let c = classify(&Request::parse(&p.bytes()).expect("parse"));
    assert_eq!(
        c.uuid_string().as_deref(),
        Some("11111111-1111-1111-1111-111111111111")
    );
}

#[test]
fn unknown_machines_are_reported_and_policy_applies() {
    let p = Pkt::new(1, PXE_MAC).opt(93, &[0, 7]).opt(60, PXE_X64);
    let mut s = server();
    let out = s.handle(t(0), &p.bytes(), local());
    let unknown = out.events.iter().find_map(|e| match e {
        Event::Observed(o) if !o.known => Some((
            o.mac.map(|m| m.to_string()),
            o.firmware.label(),
            o.arches.iter().map(|a| a.0).collect::<Vec<u16>>(),
            o.vendor_class_text(),
        )),
        _ => None,
    });
    assert_eq!(
        unknown,
        Some((
            Some("02:00:00:00:00:02".into()),
            "pxe/uefi-x64".into(),
            vec![7],
            Some(String::from_utf8_lossy(PXE_X64).into_owned())
        ))
    );
    assert_eq!(
        file_field(only_reply(&out)),
        b"ipxe.efi",
        "boot-default boots unknown machines"
    );

    let mut cfg: Config = auth_config();
    cfg.unknown_machines = UnknownPolicy::Ignore;
    let mut s = Server::new(cfg.clone());
    let out = s.handle(t(0), &p.bytes(), local());
    let offer = only_reply(&out);
    assert_eq!(opt(offer, 67), None, "ignored: address only, no boot file");
    assert_eq!(yiaddr(offer), C1);

    cfg.mode = tugboot_dhcp::Mode::Proxy;
    let mut s = Server::new(cfg);
    assert!(s.handle(t(0), &p.bytes(), local()).replies.is_empty());
}

#[test]
fn reservation_only_answers_known_machines_only() {
    let mut s = Server::new(config_with_mode("reservation-only"));
    let out = s.handle(t(0), &Pkt::new(1, PLAIN_MAC).bytes(), local());
    assert!(out.replies.is_empty());
    assert_eq!(ignored(&out), vec![Ignored::NotForUs]);
    // Not on the PXE port either.
    let client = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 9), 68);
    let pxe = Pkt::new(3, PXE_MAC)
        .ciaddr(*client.ip())
        .opt(93, &[0, 7])
        .opt(60, PXE_X64);
    assert!(
        s.handle(t(0), &pxe.bytes(), pxe_port(client))
            .replies
            .is_empty()
    );
    let out = s.handle(
        t(0),
        &Pkt::new(1, [0x52, 0x54, 0, 0x12, 0x34, 0x03]).bytes(),
        local(),
    );
    assert_eq!(yiaddr(only_reply(&out)), Ipv4Addr::new(10, 77, 0, 175));
}

#[test]
fn reserved_addresses_are_not_handed_to_others() {
    let mut s = server();
    let p = Pkt::new(1, PLAIN_MAC).opt(50, &[10, 77, 0, 173]);
    let out = s.handle(t(0), &p.bytes(), local());
    assert_ne!(yiaddr(only_reply(&out)), Ipv4Addr::new(10, 77, 0, 173));
    let req = Pkt::new(3, PLAIN_MAC).opt(50, &[10, 77, 0, 173]);
    let out = s.handle(t(0), &req.bytes(), local());
    assert_eq!(only_reply(&out).msg_type, MessageType::Nak);
}

#[test]
fn rate_limit_per_mac() {
    let mut s = server();
    let p = Pkt::new(1, PLAIN_MAC).bytes();
    let answered = (0..20)
        .filter(|_| !s.handle(t(0), &p, local()).replies.is_empty())
        .count();
    assert_eq!(answered, 10, "burst of 10");
    let other = s.handle(t(0), &Pkt::new(1, [2, 0, 0, 0, 0, 0x77]).bytes(), local());
    assert_eq!(other.replies.len(), 1, "other clients unaffected");
    assert_eq!(
        s.handle(t(1), &p, local()).replies.len(),
        1,
        "refilled after a second"
    );
}

#[test]
fn a_full_offer_table_still_answers_and_reserves_nothing() {
    let mut cfg = auth_config();
    cfg.limits.max_pending_offers = 3;
    let mut s = Server::new(cfg);
    for n in 0..3u8 {
        let out = s.handle(t(0), &Pkt::new(1, [2, 0, 0, 0, 2, n]).bytes(), local());
        assert_eq!(out.replies.len(), 1);
    }
    let late = [2, 0, 0, 0, 2, 9];
    let out = s.handle(t(0), &Pkt::new(1, late).bytes(), local());
    let a = yiaddr(only_reply(&out));
    assert_eq!(
        s.leases().pending_offers(),
        3,
        "the fourth offer is not remembered"
    );
    // ... but its REQUEST binds the offered address (free, in the pool).
    let req = Pkt::new(3, late)
        .opt(54, &SERVER.octets())
        .opt(50, &a.octets());
    let out = s.handle(t(1), &req.bytes(), local());
    assert_eq!(only_reply(&out).msg_type, MessageType::Ack);
    assert_eq!(out.persist[0].address, a);
    // Offers are forgotten after offer_ttl (10 s by default).
    assert_eq!(s.leases().pending_offers(), 3);
    s.handle(t(11), &Pkt::new(1, [2, 0, 0, 0, 3, 0]).bytes(), local());
    assert_eq!(s.leases().pending_offers(), 1);
}

/// Issue #11 item 7: DISCOVERs from rotating MACs (never a REQUEST) used to pin every
/// address of a pool for 60 s. Offers are soft now: the pool is never exhausted by
/// offers, and a real client that DISCOVERs in the middle of the flood gets bound even
/// if the flood takes its offered address over before its REQUEST arrives.
#[test]
fn a_discover_flood_from_rotating_macs_cannot_starve_the_pool() {
    let mut s = server();
    let gi = Ipv4Addr::new(10, 88, 0, 1);
    // The relayed subnet has a pool of two: the smallest pool to starve.
    let flood = |s: &mut Server, from: u32, n: u32, at: u64| {
        for i in from..from + n {
            let [_, a, b, c] = i.to_be_bytes();
            let out = s.handle(
                t(at),
                &Pkt::new(1, [2, 0x66, 0x66, a, b, c]).giaddr(gi).bytes(),
                relayed(gi),
            );
            assert_eq!(out.replies.len(), 1, "every DISCOVER is answered");
        }
    };
    flood(&mut s, 0, 500, 0);
    let real = [2, 0, 0, 0, 0x42, 1];
    let out = s.handle(t(1), &Pkt::new(1, real).giaddr(gi).bytes(), relayed(gi));
    let a = yiaddr(only_reply(&out));
    flood(&mut s, 500, 500, 1);
    let req = Pkt::new(3, real)
        .giaddr(gi)
        .opt(54, &SERVER.octets())
        .opt(50, &a.octets());
    let out = s.handle(t(2), &req.bytes(), relayed(gi));
    assert_eq!(only_reply(&out).msg_type, MessageType::Ack);
    assert_eq!(out.persist[0].address, a);
    // The other address still serves a second real client, flood or not.
    flood(&mut s, 1000, 500, 2);
    let second = [2, 0, 0, 0, 0x42, 2];
    assert_ne!(dora_relayed(&mut s, second, gi, 3), a);
    // Now the pool really is full (two bindings): the flood is told so.
    let out = s.handle(
        t(4),
        &Pkt::new(1, [2, 0x66, 0, 0, 0, 1]).giaddr(gi).bytes(),
        relayed(gi),
    );
    assert_eq!(ignored(&out), vec![Ignored::PoolExhausted]);
}

fn dora_relayed(s: &mut Server, mac: [u8; 6], gi: Ipv4Addr, at: u64) -> Ipv4Addr {
    let offer = s.handle(t(at), &Pkt::new(1, mac).giaddr(gi).bytes(), relayed(gi));
    let addr = yiaddr(only_reply(&offer));
    let req = Pkt::new(3, mac)
        .giaddr(gi)
        .opt(54, &SERVER.octets())
        .opt(50, &addr.octets());
    let ack = s.handle(t(at), &req.bytes(), relayed(gi));
    assert_eq!(only_reply(&ack).msg_type, MessageType::Ack);
    addr
}

#[test]
fn soft_offers_first_request_wins_the_second_is_naked() {
    let mut s = server();
    let gi = Ipv4Addr::new(10, 88, 0, 1);
    // Fill the two-address pool with offers, then a third client takes one over.
    let macs = [
        [2, 0, 0, 0, 0x50, 1],
        [2, 0, 0, 0, 0x50, 2],
        [2, 0, 0, 0, 0x50, 3],
    ];
    let offered: Vec<Ipv4Addr> = macs
        .iter()
        .map(|m| {
            yiaddr(only_reply(&s.handle(
                t(0),
                &Pkt::new(1, *m).giaddr(gi).bytes(),
                relayed(gi),
            )))
        })
        .collect();
    assert_ne!(offered[0], offered[1]);
    let shared = offered[2];
    let first = macs[offered
        .iter()
        .position(|a| *a == shared)
        .expect("taken over")];
    let request = |m: [u8; 6]| {
        Pkt::new(3, m)
            .giaddr(gi)
            .opt(54, &SERVER.octets())
            .opt(50, &shared.octets())
            .bytes()
    };
    let out = s.handle(t(1), &request(macs[2]), relayed(gi));
    assert_eq!(only_reply(&out).msg_type, MessageType::Ack);
    let out = s.handle(t(1), &request(first), relayed(gi));
    assert_eq!(
        only_reply(&out).msg_type,
        MessageType::Nak,
        "bound to another: NAK"
    );
    assert!(out.persist.is_empty());
}

#[test]
fn a_request_after_the_offer_expired_binds_if_the_address_is_free() {
    let mut s = server();
    let offer = s.handle(t(0), &Pkt::new(1, PLAIN_MAC).bytes(), local());
    let a = yiaddr(only_reply(&offer));
    let req = Pkt::new(3, PLAIN_MAC)
        .opt(54, &SERVER.octets())
        .opt(50, &a.octets());
    let out = s.handle(t(45), &req.bytes(), local());
    assert_eq!(only_reply(&out).msg_type, MessageType::Ack);
    // SELECTING an address outside the pools (but in the subnet) is still refused, and
    // INIT-REBOOT for an address without a record still gets silence.
    let outside = Pkt::new(3, [2, 0, 0, 0, 0, 0x71])
        .opt(54, &SERVER.octets())
        .opt(50, &[10, 77, 0, 20]);
    assert_eq!(
        only_reply(&s.handle(t(46), &outside.bytes(), local())).msg_type,
        MessageType::Nak
    );
    let reboot = Pkt::new(3, [2, 0, 0, 0, 0, 0x72]).opt(50, &[10, 77, 0, 150]);
    assert!(s.handle(t(46), &reboot.bytes(), local()).replies.is_empty());
}

fn trusting(relays: &[Ipv4Addr]) -> Server {
    let mut cfg = auth_config();
    cfg.trusted_relays = relays
        .iter()
        .map(|a| tugboot_dhcp::config::Cidr {
            addr: *a,
            prefix: 32,
        })
        .collect();
    Server::new(cfg)
}

/// Issue #11 item 7, second half: option 118 and option 82 link selection from a client
/// on the local link (giaddr 0) used to select another subnet's pool.
#[test]
fn relay_options_count_only_from_trusted_relays() {
    let gi = Ipv4Addr::new(10, 88, 0, 1);
    let selects_88 = |p: Pkt| p.opt(118, &[10, 88, 0, 0]).opt(82, &[5, 4, 10, 88, 0, 0]);
    // From the local link: ignored, whatever the configuration.
    for mut s in [server(), trusting(&[gi])] {
        let p = selects_88(Pkt::new(1, PLAIN_MAC));
        let out = s.handle(t(0), &p.bytes(), local());
        assert_eq!(yiaddr(only_reply(&out)), C1, "the interface's subnet");
    }
    // From a relay that is not trusted (none configured): giaddr selects, options ignored.
    let other = Ipv4Addr::new(10, 77, 0, 2);
    let mut s = server();
    let p = selects_88(Pkt::new(1, PLAIN_MAC).giaddr(other));
    let offer = s.handle(t(0), &p.bytes(), relayed(other));
    assert_eq!(yiaddr(only_reply(&offer)), C1);
    // Server identifier override from an untrusted relay: ignored.
    let p = Pkt::new(1, [2, 0, 0, 0, 0, 0x21])
        .giaddr(gi)
        .opt(82, &[11, 4, 10, 88, 0, 1]);
    let offer = s.handle(t(0), &p.bytes(), relayed(gi));
    assert_eq!(opt(only_reply(&offer), 54), Some(SERVER.octets().to_vec()));
    // Once relays are configured, relayed datagrams from anyone else are dropped.
    let mut s = trusting(&[gi]);
    let p = Pkt::new(1, PLAIN_MAC).giaddr(other);
    let out = s.handle(t(0), &p.bytes(), relayed(other));
    assert_eq!(ignored(&out), vec![Ignored::UntrustedRelay(other)]);
    // A trusted relay's link selection is honoured.
    let p = Pkt::new(1, [2, 0, 0, 0, 0, 0x22])
        .giaddr(gi)
        .opt(82, &[5, 4, 10, 88, 0, 0]);
    let out = s.handle(t(0), &p.bytes(), relayed(gi));
    assert_eq!(yiaddr(only_reply(&out)), Ipv4Addr::new(10, 88, 0, 10));
}

#[test]
fn restored_leases_survive_a_restart() {
    let mut s = server();
    let offer = s.handle(t(0), &Pkt::new(1, PLAIN_MAC).bytes(), local());
    let a = yiaddr(only_reply(&offer));
    let req = Pkt::new(3, PLAIN_MAC)
        .opt(54, &SERVER.octets())
        .opt(50, &a.octets());
    let ack = s.handle(t(0), &req.bytes(), local());
    let saved = ack.persist.clone();
    // "Crash": a new core restored from what the shell persisted.
    let mut s2 = server();
    s2.restore(&saved);
    let out = s2.handle(t(100), &Pkt::new(3, PLAIN_MAC).ciaddr(a).bytes(), local());
    assert_eq!(only_reply(&out).msg_type, MessageType::Ack);
    let other = s2.handle(t(100), &Pkt::new(1, [2, 0, 0, 0, 0, 0x55]).bytes(), local());
    assert_ne!(yiaddr(only_reply(&other)), a);
}

#[test]
fn malformed_input_is_reported_not_answered() {
    let mut s = server();
    for bad in [&[][..], &[1u8; 100][..], &[0u8; 300][..]] {
        let out = s.handle(t(0), bad, local());
        assert!(out.replies.is_empty());
        assert!(matches!(ignored(&out)[..], [Ignored::Malformed(_)]));
    }
}

#[test]
fn rfc5107_server_identifier_override() {
    let mut s = trusting(&[Ipv4Addr::new(10, 88, 0, 1)]);
    let gi = Ipv4Addr::new(10, 88, 0, 1);
    let o82 = [11, 4, 10, 88, 0, 1];
    let out = s.handle(
        t(0),
        &Pkt::new(1, PLAIN_MAC).giaddr(gi).opt(82, &o82).bytes(),
        relayed(gi),
    );
    let offer = only_reply(&out);
    assert_eq!(
        opt(offer, 54),
        Some(gi.octets().to_vec()),
        "server id is the relay's override"
    );
    let a = yiaddr(offer);
    // The client selects us by the overridden identifier.
    let req = Pkt::new(3, PLAIN_MAC)
        .giaddr(gi)
        .opt(82, &o82)
        .opt(54, &gi.octets())
        .opt(50, &a.octets());
    let out = s.handle(t(1), &req.bytes(), relayed(gi));
    assert_eq!(only_reply(&out).msg_type, MessageType::Ack);
}

#[test]
fn an_offered_address_is_not_offered_twice() {
    let mut s = server();
    let first = s.handle(t(0), &Pkt::new(1, PLAIN_MAC).bytes(), local());
    let a = yiaddr(only_reply(&first));
    let asks = Pkt::new(1, [2, 0, 0, 0, 0, 0x66]).opt(50, &a.octets());
    let second = s.handle(t(1), &asks.bytes(), local());
    assert_ne!(yiaddr(only_reply(&second)), a);
    // The same client asking again gets the same offer.
    let again = s.handle(t(2), &Pkt::new(1, PLAIN_MAC).bytes(), local());
    assert_eq!(yiaddr(only_reply(&again)), a);
}

#[test]
fn proxy_offers_to_ipxe_carry_pxeclient() {
    // iPXE only takes a ProxyDHCP offer that has option 60 "PXEClient" (found
    // with QEMU's iPXE ROM beside dnsmasq; see docs/dhcp.md).
    let ipxe = Pkt::new(1, PXE_MAC)
        .opt(93, &[0, 0])
        .opt(60, b"PXEClient:Arch:00000:UNDI:002001")
        .opt(77, b"iPXE");
    let mut s = Server::new(config_with_mode("proxy"));
    let out = s.handle(t(0), &ipxe.bytes(), local());
    let offer = only_reply(&out);
    assert_eq!(opt(offer, 60), Some(b"PXEClient".to_vec()));
    // ... and "PXE options": a next-server plus a boot file (iPXE's dhcp_has_pxeopts).
    assert_eq!(siaddr(offer), SERVER);
    assert_eq!(
        file_field(offer),
        b"http://10.77.0.1:8080/boot/02-00-00-00-00-02.ipxe"
    );
    // The authoritative answer to the same client needs no option 60.
    let mut a = server();
    let out = a.handle(t(0), &ipxe.bytes(), local());
    assert_eq!(opt(only_reply(&out), 60), None);
}

#[test]
fn relayed_client_renews_by_unicast_through_a_router() {
    use tugboot_dhcp::core::DHCP_CLIENT_PORT;
    use tugboot_dhcp::{Ingress, ServerPort};
    // Bound through a relay on 10.88.0.0/24, then RENEWING: unicast from its own
    // address straight to the server, no giaddr. The subnet comes from ciaddr.
    let mut s = server();
    let gi = Ipv4Addr::new(10, 88, 0, 1);
    let mac = [2, 0, 0, 0, 8, 8];
    let offer = s.handle(t(0), &Pkt::new(1, mac).giaddr(gi).bytes(), relayed(gi));
    let addr = yiaddr(only_reply(&offer));
    assert_eq!(addr, Ipv4Addr::new(10, 88, 0, 10));
    let req = Pkt::new(3, mac)
        .giaddr(gi)
        .opt(50, &addr.octets())
        .opt(54, &SERVER.octets());
    let ack = s.handle(t(1), &req.bytes(), relayed(gi));
    assert_eq!(opt(only_reply(&ack), 53), Some(vec![5]));
    let routed = Ingress {
        interface: SERVER,
        port: ServerPort::Dhcp,
        src: SocketAddrV4::new(addr, DHCP_CLIENT_PORT),
    };
    let renew = s.handle(t(60), &Pkt::new(3, mac).ciaddr(addr).bytes(), routed);
    let r = only_reply(&renew);
    assert_eq!(opt(r, 53), Some(vec![5]), "routed RENEW is ACKed");
    assert_eq!(yiaddr(r), addr);
    assert_eq!(r.dest, SocketAddrV4::new(addr, DHCP_CLIENT_PORT));
    assert_eq!(renew.persist.len(), 1);
    // A client on the local link asking for a relayed subnet's address it does not
    // hold is still refused.
    let other = Ipv4Addr::new(10, 88, 0, 11);
    let local_src = Ingress {
        interface: SERVER,
        port: ServerPort::Dhcp,
        src: SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 150), DHCP_CLIENT_PORT),
    };
    let wrong = s.handle(
        t(61),
        &Pkt::new(3, [2, 0, 0, 0, 8, 9]).ciaddr(other).bytes(),
        local_src,
    );
    assert!(wrong.persist.is_empty(), "{wrong:?}");
    assert!(
        wrong.replies.iter().all(|r| opt(r, 53) != Some(vec![5])),
        "{wrong:?}"
    );
}
