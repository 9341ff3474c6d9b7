//! Real firmware captures (tests/fixtures/dhcp, see its README): each is classified
//! correctly and answered with the expected reply, byte for byte.

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::MessageType;
use tugboot_dhcp::boot::RPI_BOOT_MAGIC;
use tugboot_dhcp::{
    ArchCode, ClientKey, Firmware, Ingress, LeaseRecord, LeaseState, Mac, PiModel, Platform, Reply,
    Request, Server, classify, receive,
};

use crate::support::*;

fn classify_fixture(name: &str) -> tugboot_dhcp::Classification {
    let req = Request::parse(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    classify(&req)
}

/// Compares a reply with `expected/<name>` (set `TUGBOOT_UPDATE_FIXTURES=1` to
/// rewrite after an intended change, then review the diff).
fn golden(name: &str, reply: &Reply) {
    let path = fixtures_dir().join("expected").join(name);
    if std::env::var_os("TUGBOOT_UPDATE_FIXTURES").is_some() {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, &reply.bytes).expect("write golden");
    }
    let want = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(reply.bytes, want, "reply differs from {}", path.display());
}

fn answer(server: &mut Server, name: &str, ingress: Ingress, secs: u64) -> Reply {
    let out = receive(server, t(secs), &fixture(name), ingress);
    only_reply(&out).clone()
}

fn assert_pxe_tftp_boot(r: &Reply, file: &str) {
    assert_eq!(siaddr(r), SERVER, "siaddr set");
    assert_eq!(file_field(r), file.as_bytes(), "file field");
    assert_eq!(
        opt(r, 67),
        Some([file.as_bytes(), b"\0"].concat()),
        "option 67, NUL-terminated"
    );
    assert_eq!(
        opt(r, 66),
        Some(b"10.77.0.1\0".to_vec()),
        "option 66, NUL-terminated"
    );
    assert!(r.bytes.len() >= 300, "padded to the BOOTP minimum");
    assert_eq!(
        r.bytes[240..242],
        [53, 1],
        "message type is the first option"
    );
}

#[test]
fn ipxe_bios_rom() {
    let c = classify_fixture("ipxe-bios-discover.bin");
    assert_eq!(c.firmware, Firmware::Ipxe(Platform::Bios));
    assert_eq!(c.arches, vec![ArchCode(0)]);
    assert_eq!(c.user_classes, vec![b"iPXE".to_vec()]);
    assert_eq!(c.mac, Some(Mac([0x52, 0x54, 0, 0x12, 0x34, 0x01])));
    assert_eq!(c.machine_id.as_deref().map(<[u8]>::len), Some(17));
    assert_eq!(c.uuid, None, "QEMU's all-zero UUID is not an identity");

    let mut s = Server::new(auth_config());
    let offer = answer(&mut s, "ipxe-bios-discover.bin", local(), 0);
    assert_eq!(offer.msg_type, MessageType::Offer);
    assert_eq!(yiaddr(&offer), Ipv4Addr::new(10, 77, 0, 173));
    // No broadcast flag: unicast to the new address at the client's MAC.
    assert_eq!(
        offer.dest,
        SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 173), 68)
    );
    assert_eq!(offer.link_layer, c.mac);
    let url = b"http://10.77.0.1:8080/boot/52-54-00-12-34-01.ipxe";
    assert_eq!(file_field(&offer), url);
    assert_eq!(
        opt(&offer, 175),
        Some(vec![176, 1, 1]),
        "iPXE must not wait for proxyDHCP"
    );
    assert_eq!(opt(&offer, 12), Some(b"ipxe-bios".to_vec()));
    golden("ipxe-bios-offer.bin", &offer);

    let ack = answer(&mut s, "ipxe-bios-request.bin", local(), 1);
    assert_eq!(ack.msg_type, MessageType::Ack);
    assert_eq!(yiaddr(&ack), Ipv4Addr::new(10, 77, 0, 173));
    assert_eq!(opt(&ack, 51), Some(3600u32.to_be_bytes().to_vec()));
    assert_eq!(file_field(&ack), url);
    golden("ipxe-bios-ack.bin", &ack);
}

#[test]
fn ovmf_x64_pxe() {
    let c = classify_fixture("ovmf-discover.bin");
    assert_eq!(c.firmware, Firmware::Pxe(Platform::UefiX64));
    assert_eq!(c.arches, vec![ArchCode(7)]);
    assert_eq!(c.uuid, None);

    let mut s = Server::new(auth_config());
    let offer = answer(&mut s, "ovmf-discover.bin", local(), 0);
    assert_eq!(
        offer.dest,
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 68),
        "broadcast flag honoured"
    );
    assert_eq!(offer.link_layer, None);
    assert_pxe_tftp_boot(&offer, "ipxe.efi");
    assert_eq!(opt(&offer, 60), Some(b"PXEClient".to_vec()));
    assert_eq!(
        opt(&offer, 97),
        Some(vec![0; 17]),
        "option 97 mirrored as sent"
    );
    assert_eq!(opt(&offer, 43), Some(vec![6, 1, 8, 255]));
    assert_eq!(opt(&offer, 175), None);
    golden("ovmf-offer.bin", &offer);

    // The REQUEST announces 65280 as its maximum size; the ACK still fits 576.
    let ack = answer(&mut s, "ovmf-request.bin", local(), 1);
    assert_eq!(ack.msg_type, MessageType::Ack);
    assert_eq!(yiaddr(&ack), Ipv4Addr::new(10, 77, 0, 174));
    assert_pxe_tftp_boot(&ack, "ipxe.efi");
    golden("ovmf-ack.bin", &ack);
}

#[test]
fn ipxe_efi_chainloaded() {
    let c = classify_fixture("ipxe-efi-discover.bin");
    assert_eq!(c.firmware, Firmware::Ipxe(Platform::UefiX64));
    let mut s = Server::new(auth_config());
    let offer = answer(&mut s, "ipxe-efi-discover.bin", local(), 0);
    assert_eq!(
        file_field(&offer),
        b"http://10.77.0.1:8080/boot/52-54-00-12-34-02.ipxe",
        "iPXE gets its script, not iPXE again (no chainload loop)"
    );
    assert_eq!(opt(&offer, 175), Some(vec![176, 1, 1]));
    assert_eq!(siaddr(&offer), SERVER, "next-server set for iPXE too");
    golden("ipxe-efi-offer.bin", &offer);
    let ack = answer(&mut s, "ipxe-efi-request.bin", local(), 1);
    assert_eq!(yiaddr(&ack), Ipv4Addr::new(10, 77, 0, 174));
    golden("ipxe-efi-ack.bin", &ack);
}

#[test]
fn raspberry_pi_3_and_4() {
    for (name, model, serial) in [
        ("rpi3-discover.bin", PiModel::Pi3, None),
        (
            "rpi4-discover.bin",
            PiModel::Pi4,
            Some("1c2b3a49".to_string()),
        ),
    ] {
        let c = classify_fixture(name);
        assert_eq!(c.firmware, Firmware::RaspberryPi(model), "{name}");
        assert_eq!(c.pi_serial, serial, "{name}");
        let mut s = Server::new(config_with_mode("proxy"));
        let offer = answer(&mut s, name, local(), 0);
        assert_eq!(
            yiaddr(&offer),
            Ipv4Addr::UNSPECIFIED,
            "proxy never offers an address"
        );
        assert_eq!(offer.dest, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
        assert_pxe_tftp_boot(&offer, "bootcode.bin");
        let o43 = opt(&offer, 43).expect("option 43");
        assert!(
            o43.windows(RPI_BOOT_MAGIC.len())
                .any(|w| w == RPI_BOOT_MAGIC),
            "{name}"
        );
        assert_eq!(opt(&offer, 60), Some(b"PXEClient".to_vec()));
        golden(&name.replace("discover", "proxy-offer"), &offer);
    }
}

#[test]
fn every_fixture_parses_and_classifies_as_netboot() {
    let dir = fixtures_dir();
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fixtures dir") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("bin") {
            continue;
        }
        let bytes = std::fs::read(&path).expect("read");
        let req = Request::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(classify(&req).firmware.is_netboot(), "{}", path.display());
        n += 1;
    }
    assert!(n >= 8, "expected the captured fixtures, found {n}");
}

#[test]
fn aavmf_arm64_pxe() {
    let c = classify_fixture("aavmf-discover.bin");
    assert_eq!(c.firmware, Firmware::Pxe(Platform::UefiArm64));
    assert_eq!(c.arches, vec![ArchCode(11)]);
    let mut s = Server::new(auth_config());
    let offer = answer(&mut s, "aavmf-discover.bin", local(), 0);
    assert_eq!(yiaddr(&offer), Ipv4Addr::new(10, 77, 0, 175));
    assert_pxe_tftp_boot(&offer, "ipxe-arm64.efi");
    assert_eq!(opt(&offer, 43), Some(vec![6, 1, 8, 255]));
    golden("aavmf-offer.bin", &offer);
    let ack = answer(&mut s, "aavmf-request.bin", local(), 1);
    assert_eq!(ack.msg_type, MessageType::Ack);
    assert_pxe_tftp_boot(&ack, "ipxe-arm64.efi");
    golden("aavmf-ack.bin", &ack);
}

#[test]
fn aavmf_uefi_http_boot() {
    let c = classify_fixture("aavmf-httpboot-discover.bin");
    assert_eq!(c.firmware, Firmware::HttpBoot(Platform::UefiArm64));
    assert_eq!(c.arches, vec![ArchCode(19)]);
    let mut s = Server::new(auth_config());
    let offer = answer(&mut s, "aavmf-httpboot-discover.bin", local(), 0);
    let url = b"http://10.77.0.1:8080/efi/uefi-arm64/ipxe.efi";
    assert_eq!(file_field(&offer), url);
    assert_eq!(opt(&offer, 67), Some([&url[..], b"\0"].concat()));
    assert_eq!(opt(&offer, 60), Some(b"HTTPClient".to_vec()));
    assert_eq!(opt(&offer, 43), None);
    golden("aavmf-httpboot-offer.bin", &offer);
    // proxyDHCP answers HTTP boot clients too.
    let mut p = Server::new(config_with_mode("proxy"));
    let offer = answer(&mut p, "aavmf-httpboot-discover.bin", local(), 0);
    assert_eq!(yiaddr(&offer), Ipv4Addr::UNSPECIFIED);
    assert_eq!(file_field(&offer), url);
}

/// Every seed of the `receive` fuzz target goes through the same entry function,
/// so `cargo test` covers the corpus (including the expected replies, which must be
/// rejected as BOOTREPLY without a panic).
#[test]
fn fuzz_seeds_through_receive() {
    let mut seen = 0;
    let mut answered = 0;
    for dir in [fixtures_dir(), fixtures_dir().join("expected")] {
        for entry in std::fs::read_dir(&dir).expect("dir") {
            let path = entry.expect("entry").path();
            if path.is_file() {
                let bytes = std::fs::read(&path).expect("read");
                answered += tugboot_dhcp::fuzz_receive(&bytes);
                seen += 1;
            }
        }
    }
    assert!(seen >= 20, "only {seen} seeds");
    assert!(
        answered >= 10,
        "the captured requests must be answered, got {answered}"
    );
}

#[test]
fn uboot_arm64() {
    let c = classify_fixture("uboot-arm64-discover.bin");
    assert_eq!(c.firmware, Firmware::UBoot(Platform::UBootArm64));
    assert_eq!(c.arches, vec![ArchCode(22)]);
    assert_eq!(c.vendor_class.as_deref(), Some(&b"U-Boot.armv8"[..]));
    let mut s = Server::new(auth_config());
    let offer = answer(&mut s, "uboot-arm64-discover.bin", local(), 0);
    assert_eq!(yiaddr(&offer), Ipv4Addr::new(10, 77, 0, 176));
    assert_eq!(
        offer.link_layer, c.mac,
        "no broadcast flag: unicast to the MAC"
    );
    assert_pxe_tftp_boot(&offer, "boot.scr.uimg");
    assert!(offer.bytes.len() <= 576, "U-Boot accepts at most 576 bytes");
    assert_eq!(opt(&offer, 60), None, "U-Boot is not a PXE client");
    golden("uboot-arm64-offer.bin", &offer);
    let ack = answer(&mut s, "uboot-arm64-request.bin", local(), 1);
    assert_eq!(ack.msg_type, MessageType::Ack);
    assert_eq!(yiaddr(&ack), Ipv4Addr::new(10, 77, 0, 176));
    golden("uboot-arm64-ack.bin", &ack);
}

#[test]
fn ovmf_x64_uefi_http_boot() {
    let c = classify_fixture("ovmf-httpboot-discover.bin");
    assert_eq!(c.firmware, Firmware::HttpBoot(Platform::UefiX64));
    assert_eq!(c.arches, vec![ArchCode(16)]);
    // This capture comes from a run against tugboot-dhcpd itself (README): the
    // machine had no reservation and still held 10.77.0.101 from its PXE attempt a
    // moment earlier. Replay it with the same state.
    let mut config = auth_config();
    config.reservations.clear();
    let mut s = Server::new(config);
    let mac = c.mac.expect("ethernet");
    s.restore(&[LeaseRecord {
        address: Ipv4Addr::new(10, 77, 0, 101),
        client: ClientKey::Hardware([&[1u8][..], &mac.0[..]].concat()),
        mac: Some(mac),
        state: LeaseState::Bound,
        expires_at: t(600),
    }]);
    let offer = answer(&mut s, "ovmf-httpboot-discover.bin", local(), 0);
    let url = b"http://10.77.0.1:8080/efi/uefi-x64/ipxe.efi";
    assert_eq!(file_field(&offer), url);
    assert_eq!(opt(&offer, 60), Some(b"HTTPClient".to_vec()));
    golden("ovmf-httpboot-offer.bin", &offer);
    let ack = answer(&mut s, "ovmf-httpboot-request.bin", local(), 1);
    assert_eq!(ack.msg_type, MessageType::Ack);
    assert_eq!(yiaddr(&offer), Ipv4Addr::new(10, 77, 0, 101));
    assert_eq!(yiaddr(&ack), yiaddr(&offer));
    assert_eq!(file_field(&ack), url);
    golden("ovmf-httpboot-ack.bin", &ack);
}

/// Every seed of the `lease_log` fuzz target goes through the same entry function.
#[test]
fn lease_log_seeds_through_fuzz_entry() {
    let dir = fixtures_dir().join("lease-log");
    let mut seen = 0;
    for (name, records) in [
        ("clean.jsonl", 4),
        ("torn-line.jsonl", 2),
        ("torn-zero-fill.jsonl", 2),
        ("no-final-newline.jsonl", 1),
        ("damaged-middle.jsonl", 0),
    ] {
        let bytes = std::fs::read(dir.join(name)).expect(name);
        assert_eq!(tugboot_dhcp::fuzz_lease_log(&bytes), records, "{name}");
    }
    for entry in std::fs::read_dir(&dir).expect("dir") {
        let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
        tugboot_dhcp::fuzz_lease_log(&bytes);
        seen += 1;
    }
    assert!(seen >= 5);
    let clean = std::fs::read(dir.join("clean.jsonl")).expect("clean");
    let (records, _) = tugboot_dhcp::lease::scan_log(&clean).expect("clean log");
    assert_eq!(
        records[1].client,
        ClientKey::ClientId(vec![1, 82, 84, 0, 18, 52, 1])
    );
    assert_eq!(records[3].state, LeaseState::Declined);
}
