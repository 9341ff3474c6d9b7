//! A mixed fleet nobody declared, booted for real (root: network namespaces + QEMU).
//!
//! One `tugboot serve` (DHCP, TFTP, HTTP and the device API) in a private namespace. Two signed
//! images — an x86_64 one and an arm64 one — are built into a blob store the server does not
//! share and reach it only through `tugboot images push` over the API, as an operator would.
//! The profiles file declares no machine: two groups pick the image by the architecture the
//! network observed (`arch=x86_64`, `arch=arm64`). Six machines the server has never seen then
//! boot one after another on the same link, each with its own MAC:
//!
//! | firmware | path |
//! |---|---|
//! | SeaBIOS + iPXE ROM | DHCP → HTTP script → kernel |
//! | OVMF, PXE | DHCP → TFTP `snponly.efi` → iPXE → HTTP |
//! | OVMF, HTTP boot | DHCP (`HTTPClient`) → HTTP `snponly.efi` → iPXE → HTTP |
//! | AAVMF, PXE | DHCP → TFTP Debian's stock `grubnetaa64.efi` (byte for byte) → TFTP `/grub/grub.cfg` → TFTP kernel |
//! | AAVMF, HTTP boot | DHCP (`HTTPClient`) → HTTP GRUB (with `http`) → HTTP `/grub/grub.cfg` → HTTP kernel |
//! | U-Boot | DHCP → TFTP `boot.scr.uimg` → PXELINUX config → TFTP kernel |
//!
//! Each must reach its image's marker with its own MAC on the kernel command line (the group's
//! `{{mac}}` placeholder); afterwards the store must hold each machine, what it booted and the
//! architecture and firmware it was observed with. Boot times are printed, never asserted.
//!
//! `cargo test -p tugboot --test fleet_boot -- --ignored --nocapture` (as root).

mod vm;

use std::fs;
use std::time::Instant;

use vm::Firmware;
use vm::fleet::{ARM_MARKER, FleetLab, X86_MARKER, assert_own_cmdline};

/// The machines, in boot order: firmware, MAC, what they must end up running.
const GUESTS: [(Firmware, &str); 6] = [
    (Firmware::Bios, "52:54:00:f1:00:01"),
    (Firmware::Uefi, "52:54:00:f1:00:02"),
    (Firmware::UefiHttp, "52:54:00:f1:00:03"),
    (Firmware::Aavmf, "52:54:00:f1:00:04"),
    (Firmware::AavmfHttp, "52:54:00:f1:00:05"),
    (Firmware::Uboot, "52:54:00:f1:00:06"),
];

/// Proxy mode: the same firmware, other MACs (the site's DHCP server remembers addresses).
/// Not among them, because they cannot boot from a proxyDHCP server (docs/netboot.md, "DHCP
/// modes"): AAVMF PXE with GRUB (GRUB takes its TFTP server from the site's DHCP ACK, never
/// from the proxy offer) and U-Boot (ignores proxy offers).
const PROXY_GUESTS: [(Firmware, &str); 4] = [
    (Firmware::Bios, "52:54:00:f2:00:01"),
    (Firmware::Uefi, "52:54:00:f2:00:02"),
    (Firmware::UefiHttp, "52:54:00:f2:00:03"),
    (Firmware::AavmfHttp, "52:54:00:f2:00:05"),
];

#[test]
#[ignore = "root: network namespaces + QEMU"]
fn unknown_machines_of_every_firmware_boot_the_image_their_architecture_selects() {
    boot_fleet("authoritative", &GUESTS);
}

/// Proxy mode beside the site's DHCP server: the addresses are dnsmasq's, so the server does
/// not know which machine an address is — stock GRUB (TFTP) and GRUB over HTTP get the
/// dispatch configuration, which loads their per-MAC file by GRUB's own `$net_default_mac`.
#[test]
#[ignore = "root: network namespaces + QEMU"]
fn proxy_mode_beside_the_sites_dhcp_server_boots_the_same_fleet() {
    boot_fleet("proxy", &PROXY_GUESTS);
}

fn boot_fleet(dhcp_mode: &'static str, guests: &[(Firmware, &str)]) {
    let mut lab = FleetLab::start(dhcp_mode, &format!("fleet{}", &dhcp_mode[..2]));

    // `TUGBOOT_FLEET_ONLY=AavmfHttp,Uboot` boots only those (while working on one path).
    let only = std::env::var("TUGBOOT_FLEET_ONLY").unwrap_or_default();
    let guests: Vec<(Firmware, &str)> = guests
        .iter()
        .copied()
        .filter(|(f, _)| only.is_empty() || only.split(',').any(|o| o == format!("{f:?}")))
        .collect();
    let mut times = Vec::new();
    for (i, (firmware, mac)) in guests.iter().enumerate() {
        let marker = if firmware.is_arm64() {
            ARM_MARKER
        } else {
            X86_MARKER
        };
        let mut vm = lab.power_on(*firmware, mac, &format!("tap{}", i + 1));
        let t = vm.wait_for(marker, &mut lab.serve);
        assert_own_cmdline(&vm, mac);
        if let Some(arch) = match firmware {
            Firmware::UefiHttp => Some("uefi-x64"),
            Firmware::AavmfHttp => Some("uefi-arm64"),
            _ => None,
        } {
            let uri = format!("URI: http://10.77.0.1:8080/boot/{arch}.efi");
            assert!(
                vm.console.iter().any(|l| l.contains(&uri)),
                "{firmware:?} did not HTTP boot {uri}:\n{}",
                vm.console.join("\n")
            );
        }
        vm.stop(&mut lab.ns);
        times.push((*firmware, t));
    }

    // Who asked for what, on which protocol.
    lab.serve.drain();
    let log = lab.serve.lines.join("\n");
    for (firmware, mac) in &guests {
        let needle = match firmware {
            // Stock GRUB over TFTP reads /grub/grub.cfg and gets its machine's configuration.
            // In proxy mode the server does not know the address: the dispatch configuration
            // sends GRUB on to its per-MAC file.
            Firmware::Aavmf if dhcp_mode == "proxy" => {
                &format!("path=\"grub/grub.cfg-01-{}\"", mac.replace(':', "-"))
            }
            Firmware::Aavmf => "path=\"grub/grub.cfg\"",
            // GRUB over HTTP does the same on HTTP.
            Firmware::AavmfHttp if dhcp_mode == "proxy" => &format!(
                "what=\"loader file over http\" path=\"/grub/grub.cfg-01-{}\"",
                mac.replace(':', "-")
            ),
            Firmware::AavmfHttp => "what=\"loader file over http\" path=\"/grub/grub.cfg\"",
            Firmware::Uboot => &format!("pxelinux.cfg/01-{}", mac.replace(':', "-")),
            Firmware::Bios | Firmware::Uefi | Firmware::UefiHttp => "what=\"ipxe\"",
        };
        assert!(
            log.contains(needle),
            "{firmware:?}: no {needle} in the server log:\n{log}"
        );
    }
    let (log, dir) = lab.stop();
    let d = dir.path();
    let s = |f: &str| d.join(f).display().to_string();
    if dhcp_mode == "proxy" {
        // Every address came from the site's server; tugboot leased nothing.
        let site = fs::read_to_string(d.join("site.leases")).expect("dnsmasq leases");
        for (_, mac) in &guests {
            assert!(site.contains(mac), "{mac} not leased by the site:\n{site}");
        }
        let ours = fs::read_to_string(d.join("data/dhcp-leases.jsonl")).unwrap_or_default();
        assert!(!ours.contains("bound"), "proxy mode leased:\n{ours}");
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let machines = rt.block_on(async {
        use tugboot_store::Store;
        let store = tugboot_store::AnyStore::open(&s("data/tugboot.sqlite"))
            .await
            .expect("open store");
        let mut found = Vec::new();
        for (_, mac) in &guests {
            found.push(
                store
                    .find_machine_by_mac(mac.parse().expect("mac"))
                    .await
                    .expect("query"),
            );
        }
        store.close().await;
        found
    });
    for ((firmware, mac), machine) in guests.iter().zip(machines) {
        let m = machine.unwrap_or_else(|| panic!("{mac} ({firmware:?}) not in the store:\n{log}"));
        let (image, arch, fw) = match firmware {
            Firmware::Bios => ("x86-os@1", "x86_64", "bios"),
            Firmware::Uefi | Firmware::UefiHttp => ("x86-os@1", "x86_64", "uefi"),
            Firmware::Aavmf | Firmware::AavmfHttp => ("arm-os@1", "arm64", "uefi"),
            Firmware::Uboot => ("arm-os@1", "arm64", "uboot"),
        };
        assert_eq!(
            m.last_booted_image.as_deref(),
            Some(image),
            "{mac} ({firmware:?}):\n{log}"
        );
        assert_eq!(
            m.facts.value("arch"),
            Some(arch),
            "{mac} ({firmware:?}): {:?}",
            m.facts
        );
        assert_eq!(
            m.facts.value("firmware"),
            Some(fw),
            "{mac} ({firmware:?}): {:?}",
            m.facts
        );
        assert!(
            m.facts
                .get("arch")
                .is_some_and(|f| f.source.as_str().starts_with("observed:")),
            "{mac}: {:?}",
            m.facts
        );
    }
    for (firmware, t) in times {
        println!(
            "fleet boot {firmware:?}: after QEMU start: iPXE configured {:?}, GRUB/U-Boot started {:?}, kernel started {:?}, marker {:?}",
            t.ipxe_configured, t.loader_started, t.kernel_started, t.marker
        );
    }
}

/// Issue #12's real-VM storm: four machines the server never saw — two SeaBIOS + iPXE ROM, two
/// OVMF PXE (TFTP `snponly.efi`, then iPXE over HTTP) — powered on within the same second on one
/// link. Each must reach its image with its own MAC on the kernel command line and hold its own
/// address (none leased twice). Times are printed, never asserted.
#[test]
#[ignore = "root: network namespaces + QEMU"]
fn four_machines_powered_on_in_the_same_second_all_boot() {
    const AT_ONCE: [(Firmware, &str); 4] = [
        (Firmware::Bios, "52:54:00:f3:00:01"),
        (Firmware::Uefi, "52:54:00:f3:00:02"),
        (Firmware::Bios, "52:54:00:f3:00:03"),
        (Firmware::Uefi, "52:54:00:f3:00:04"),
    ];
    let mut lab = FleetLab::start("authoritative", "storm4");
    for i in 0..AT_ONCE.len() {
        lab.ns.add_tap(&format!("tap{}", i + 1));
    }
    let first = Instant::now();
    let mut vms: Vec<_> = AT_ONCE
        .iter()
        .enumerate()
        .map(|(i, (firmware, mac))| {
            vm::Vm::start(
                &mut lab.ns,
                lab.dir.path(),
                *firmware,
                mac,
                &format!("tap{}", i + 1),
            )
        })
        .collect();
    let spread = first.elapsed();
    let mut times = Vec::new();
    for (vm, (_, mac)) in vms.iter_mut().zip(AT_ONCE) {
        let t = vm.wait_for(X86_MARKER, &mut lab.serve);
        assert_own_cmdline(vm, mac);
        times.push(t.marker);
    }
    let bound = lab.bound_addresses();
    for (firmware, mac) in AT_ONCE {
        assert!(
            bound.contains_key(mac),
            "{mac} ({firmware:?}) holds no address: {bound:?}"
        );
    }
    for vm in vms {
        vm.stop(&mut lab.ns);
    }
    lab.stop();
    println!(
        "4 machines powered on within {:.0} ms: {}; addresses {:?}",
        spread.as_secs_f64() * 1000.0,
        AT_ONCE
            .iter()
            .zip(&times)
            .map(|((f, mac), t)| format!("{f:?} {mac} at its image after {:.1} s", t.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", "),
        bound
    );
}
