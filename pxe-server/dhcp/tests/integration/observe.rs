//! Observation events: one per netboot DISCOVER/REQUEST/INFORM (ports 67 and 4011,
//! known or not), carrying what DHCP saw, and none for anything else.

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::MessageType;
use tugboot_dhcp::{
    ArchCode, Event, Firmware, Observation, ObservedAddress, PiModel, Platform, Server, ServerPort,
    Uuid,
};

use crate::support::*;

fn observations(out: &tugboot_dhcp::Outcome) -> Vec<&Observation> {
    out.events
        .iter()
        .filter_map(|e| match e {
            Event::Observed(o) => Some(&**o),
            _ => None,
        })
        .collect()
}

fn one(out: &tugboot_dhcp::Outcome) -> Observation {
    match observations(out)[..] {
        [o] => o.clone(),
        ref other => panic!("expected one observation, got {other:#?}"),
    }
}

#[test]
fn captured_firmware_is_observed_with_what_it_sent() {
    let mut s = Server::new(auth_config());
    let o = one(&s.handle(t(0), &fixture("ipxe-bios-discover.bin"), local()));
    assert_eq!(
        o.mac.map(|m| m.to_string()).as_deref(),
        Some("52:54:00:12:34:01")
    );
    assert_eq!(o.firmware, Firmware::Ipxe(Platform::Bios));
    assert_eq!(o.firmware.label(), "ipxe/bios");
    assert_eq!(o.arches, vec![ArchCode(0)]);
    assert_eq!(o.user_classes, vec![b"iPXE".to_vec()]);
    assert_eq!(
        (o.msg_type, o.port),
        (MessageType::Discover, ServerPort::Dhcp)
    );
    assert_eq!(o.uuid, None, "QEMU's all-zero UUID is never an identity");
    assert!(o.known, "reserved by MAC");
    assert_eq!(
        o.address,
        Some(ObservedAddress::Offered(Ipv4Addr::new(10, 77, 0, 173)))
    );
    assert_eq!(o.relay, None);
    let o = one(&s.handle(t(1), &fixture("ipxe-bios-request.bin"), local()));
    assert_eq!(o.msg_type, MessageType::Request);
    assert_eq!(
        o.address,
        Some(ObservedAddress::Leased(Ipv4Addr::new(10, 77, 0, 173)))
    );

    for (name, label) in [
        ("ovmf-discover.bin", "pxe/uefi-x64"),
        ("aavmf-discover.bin", "pxe/uefi-arm64"),
        ("aavmf-httpboot-discover.bin", "http-boot/uefi-arm64"),
        ("uboot-arm64-discover.bin", "uboot/uboot-arm64"),
        ("ipxe-efi-discover.bin", "ipxe/uefi-x64"),
    ] {
        let mut s = Server::new(auth_config());
        let o = one(&s.handle(t(0), &fixture(name), local()));
        assert_eq!(o.firmware.label(), label, "{name}");
        assert!(o.mac.is_some(), "{name}");
        assert!(!o.arches.is_empty(), "{name}");
        assert!(
            matches!(o.address, Some(ObservedAddress::Offered(_))),
            "{name}"
        );
    }
    let mut s = Server::new(auth_config());
    let o = one(&s.handle(t(0), &fixture("uboot-arm64-discover.bin"), local()));
    assert_eq!(o.vendor_class_text().as_deref(), Some("U-Boot.armv8"));
    assert_eq!(o.firmware.platform(), Some(Platform::UBootArm64));
}

#[test]
fn raspberry_pi_model_and_serial_are_observed_in_proxy_mode() {
    let mut s = Server::new(config_with_mode("proxy"));
    let o = one(&s.handle(t(0), &fixture("rpi4-discover.bin"), local()));
    assert_eq!(o.firmware, Firmware::RaspberryPi(PiModel::Pi4));
    assert_eq!(o.firmware.label(), "rpi/pi4");
    assert_eq!(o.pi_serial.as_deref(), Some("1c2b3a49"));
    assert_eq!(o.address, None, "proxy mode offers no address");
}

#[test]
fn uuid_hostname_relay_facts_and_claimed_address() {
    let gi = Ipv4Addr::new(10, 88, 0, 1);
    let mut id = vec![0u8];
    id.extend_from_slice(&[
        0x8a, 0x3b, 0x1c, 0x2d, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, 0x0a,
    ]);
    let o82 = [1, 3, b'e', b't', b'1', 2, 2, 0xab, 0xcd];
    let p = Pkt::new(1, PXE_MAC)
        .giaddr(gi)
        .opt(93, &[0, 7])
        .opt(60, PXE_X64)
        .opt(97, &id)
        .opt(12, b"node7\0")
        .opt(82, &o82);
    let mut s = Server::new(auth_config());
    let o = one(&s.handle(t(0), &p.bytes(), relayed(gi)));
    let uuid: Uuid = "8a3b1c2d-0000-4000-8000-00000000000a"
        .parse()
        .expect("uuid");
    assert_eq!(o.uuid, Some(uuid));
    assert_eq!(o.hostname_text().as_deref(), Some("node7"));
    assert!(!o.known);
    let relay = o.relay.expect("relayed");
    assert_eq!(relay.giaddr, gi);
    assert_eq!(relay.circuit_id.as_deref(), Some(&b"et1"[..]));
    assert_eq!(relay.remote_id.as_deref(), Some(&[0xab, 0xcd][..]));
    assert!(!relay.trusted, "no trusted_relays configured");
    assert_eq!(
        o.address,
        Some(ObservedAddress::Offered(Ipv4Addr::new(10, 88, 0, 10)))
    );

    // Port 4011: the address the client says it holds.
    let client = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 9), 68);
    let mut proxy = Server::new(config_with_mode("proxy"));
    let req = Pkt::new(3, PXE_MAC)
        .ciaddr(*client.ip())
        .opt(93, &[0, 7])
        .opt(60, PXE_X64);
    let o = one(&proxy.handle(t(0), &req.bytes(), pxe_port(client)));
    assert_eq!(o.port, ServerPort::Pxe);
    assert_eq!(o.address, Some(ObservedAddress::Claimed(*client.ip())));
    // INFORM on 67 is observed too.
    let inform = Pkt::new(8, PXE_MAC)
        .ciaddr(*client.ip())
        .opt(93, &[0, 7])
        .opt(60, PXE_X64);
    let o = one(&s.handle(t(1), &inform.bytes(), local()));
    assert_eq!(o.msg_type, MessageType::Inform);
}

#[test]
fn only_netboot_requests_are_observed_and_unanswered_ones_too() {
    let mut s = Server::new(config_with_mode("reservation-only"));
    // Plain client: not a netboot request.
    assert!(observations(&s.handle(t(0), &Pkt::new(1, PLAIN_MAC).bytes(), local())).is_empty());
    // An unknown PXE client in reservation-only mode gets no answer, but is observed.
    let p = Pkt::new(1, PXE_MAC).opt(93, &[0, 7]).opt(60, PXE_X64);
    let out = s.handle(t(0), &p.bytes(), local());
    assert!(out.replies.is_empty());
    let o = one(&out);
    assert!(!o.known);
    assert_eq!(o.address, None);
    // RELEASE and DECLINE are not requests for boot parameters.
    let rel = Pkt::new(7, PXE_MAC).opt(93, &[0, 7]).opt(60, PXE_X64);
    assert!(observations(&s.handle(t(0), &rel.bytes(), local())).is_empty());
    // Rate-limited datagrams are dropped before anything is observed.
    let mut s = Server::new(auth_config());
    let seen = (0..20)
        .map(|_| observations(&s.handle(t(0), &p.bytes(), local())).len())
        .sum::<usize>();
    assert_eq!(seen, 10, "burst of 10, then dropped unobserved");
}
