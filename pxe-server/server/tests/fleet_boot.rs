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
use std::path::Path;
use std::process::{Command, Stdio};

use vm::{
    AAVMF_CODE, AAVMF_VARS, ARM64_CACHE, BIOS_ROM_DIR, Firmware, Netns, OVMF_CODE, OVMF_VARS,
    Serve, UBOOT_ARM64, Vm, host_kernel, initramfs_arm64, initramfs_x86, require_root_and_tools,
    run, tugboot,
};

const X86_MARKER: &str = "TUGBOOT-FLEET-OK-x86-os";
const ARM_MARKER: &str = "TUGBOOT-FLEET-OK-arm-os";

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

fn build_image(
    dir: &Path,
    name: &str,
    kernel: &Path,
    initrd: &[u8],
    cmdline: &str,
    boards: &[&str],
) {
    let p = |f: &str| dir.join(f).display().to_string();
    let initrd_path = p(&format!("staging/{name}.cpio"));
    fs::write(&initrd_path, initrd).expect("write initrd");
    let kernel = kernel.display().to_string();
    let (blobs, manifest, signer) = (
        p("local-blobs"),
        p(&format!("staging/{name}.json")),
        p("signer.key"),
    );
    let mut args = vec![
        "image",
        "build",
        "--kernel",
        &kernel,
        "--initrd",
        &initrd_path,
        "--cmdline",
        cmdline,
        "--name",
        name,
        "--version",
        "1",
    ];
    for b in boards {
        args.extend(["--board", b]);
    }
    args.extend([
        "--sign", &signer, "--store", &blobs, "--out", &manifest, "--quiet",
    ]);
    run(Command::new(tugboot()).args(&args));
}

fn setup(dir: &Path, dhcp_mode: &str) {
    let p = |f: &str| dir.join(f).display().to_string();
    let t = |args: &[&str]| run(Command::new(tugboot()).args(args).arg("--quiet"));
    for sub in ["staging", "tftp", "boot"] {
        fs::create_dir_all(dir.join(sub)).expect("mkdir");
    }
    t(&["keys", "generate", "--out", &p("signer")]);
    t(&[
        "keys",
        "root",
        "init",
        "--key",
        &p("signer.pub"),
        "--sign",
        &p("signer.key"),
        "--out",
        &p("root.json"),
    ]);
    t(&["ca", "init", "--dir", &p("ca")]);
    build_image(
        dir,
        "x86-os",
        &host_kernel(),
        &initramfs_x86(X86_MARKER),
        "console=ttyS0 panic=-1",
        &["x86_64-bios", "x86_64-uefi"],
    );
    // QEMU's arm64 `virt` machine has its serial port on ttyAMA0, under AAVMF and U-Boot.
    build_image(
        dir,
        "arm-os",
        &Path::new(ARM64_CACHE).join("vmlinuz"),
        &initramfs_arm64(ARM_MARKER),
        "console=ttyAMA0 panic=-1",
        &["arm64-uefi", "qemu-arm64-uboot"],
    );
    // Boot files as Debian packages them: iPXE (ipxe) for PXE and for UEFI HTTP boot, and
    // GRUB's stock monolithic network image (grub-efi-arm64-bin), which reads /grub/grub.cfg.
    for f in ["undionly.kpxe", "snponly.efi"] {
        fs::copy(Path::new(BIOS_ROM_DIR).join(f), dir.join("tftp").join(f)).expect("copy iPXE");
    }
    fs::copy(
        Path::new(ARM64_CACHE).join("grubnetaa64-stock.efi"),
        dir.join("tftp/grubnetaa64.efi"),
    )
    .expect("copy GRUB");
    fs::copy(
        Path::new(BIOS_ROM_DIR).join("snponly.efi"),
        dir.join("boot/uefi-x64.efi"),
    )
    .expect("copy iPXE");
    // Debian's GRUB images have no `http` module: HTTP boot needs one assembled with it
    // (grub-mkimage from Debian's modules, tests/fetch-arm64).
    fs::copy(
        Path::new(ARM64_CACHE).join("grubhttpaa64.efi"),
        dir.join("boot/uefi-arm64.efi"),
    )
    .expect("copy GRUB (http)");
    fs::write(
        dir.join("profiles.toml"),
        r#"
[profiles.x86]
image = "x86-os"
cmdline = "tugboot.mac={{mac}}"

[profiles.arm]
image = "arm-os"
cmdline = "tugboot.mac={{mac}}"

[[groups]]
name = "x86"
profile = "x86"
selector = "arch=x86_64"

[[groups]]
name = "arm"
profile = "arm"
selector = { arch = "arm64" }
"#,
    )
    .expect("write profiles");
    let config = r#"
data_dir = "data"
trust_root = "root.json"
profiles = "profiles.toml"

[network]
interface = "br0"
address = "10.77.0.1"

[dhcp]
mode = "MODE"
[dhcp.boot]
uefi_x64 = "snponly.efi"
http_boot = "/boot/{arch}.efi"
[[dhcp.subnets]]
network = "10.77.0.0/24"
pools = [{ start = "10.77.0.100", end = "10.77.0.150" }]
router = "10.77.0.1"

[tftp]
root = "tftp"

[http]
listen = "10.77.0.1:8080"
boot_dir = "boot"

[api]
listen = "10.77.0.1:8443"
ca_dir = "ca"
"#;
    fs::write(dir.join("serve.toml"), config.replace("MODE", dhcp_mode)).expect("write config");
}

/// The site's own DHCP server for proxy mode: dnsmasq in a namespace of its own on the same
/// link, addresses only (no boot options), like the router of an office or lab.
fn site_dhcp(ns: &mut Netns, dir: &Path) {
    let site = ns.add_neighbour("site", "10.77.0.2/24");
    let dnsmasq = Command::new("ip")
        .args(["netns", "exec", &site, "dnsmasq"])
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",
            "--no-resolv",
            "--no-hosts",
            "--interface=eth0",
            "--bind-interfaces",
            "--dhcp-range=10.77.0.200,10.77.0.250,255.255.255.0,1h",
            "--dhcp-option=option:router,10.77.0.1",
            "--log-facility=-",
        ])
        .arg(format!(
            "--dhcp-leasefile={}",
            dir.join("site.leases").display()
        ))
        .arg(format!("--pid-file={}", dir.join("site.pid").display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dnsmasq (site DHCP)");
    ns.children.push(dnsmasq);
}

/// Everything a fleet boot needs on this machine.
fn require_fleet_tools() {
    let cache = |f: &str| format!("{ARM64_CACHE}/{f}");
    let arm64_files = [
        cache("vmlinuz"),
        cache("busybox"),
        cache("grubnetaa64-stock.efi"),
        cache("grubhttpaa64.efi"),
    ];
    let mut files: Vec<&str> = arm64_files.iter().map(String::as_str).collect();
    files.extend([
        "/usr/lib/ipxe/undionly.kpxe",
        "/usr/lib/ipxe/snponly.efi",
        OVMF_CODE,
        OVMF_VARS,
        AAVMF_CODE,
        AAVMF_VARS,
        UBOOT_ARM64,
    ]);
    require_root_and_tools(
        &[
            "ip",
            "qemu-system-x86_64",
            "qemu-system-aarch64",
            "busybox",
            "ldd",
            "dnsmasq",
        ],
        &files,
    );
}

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

fn boot_fleet(dhcp_mode: &str, guests: &[(Firmware, &str)]) {
    require_fleet_tools();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    setup(d, dhcp_mode);
    let s = |f: &str| d.join(f).display().to_string();

    let mut ns = Netns::new(&format!("fleet{}", &dhcp_mode[..2]));
    ns.router_advertisements(d);
    if dhcp_mode == "proxy" {
        site_dhcp(&mut ns, d);
    }
    let mut serve = Serve::start(&mut ns, &d.join("serve.toml"));

    // The images reach the server through the API only.
    let (token, ca) = (s("data/api/operator-token"), s("ca/ca.pem"));
    let operator = |args: &[&str]| -> String {
        run(ns
            .command(tugboot())
            .args(args)
            .env("TUGBOOT_SERVER", "https://10.77.0.1:8443")
            .env("TUGBOOT_TOKEN_FILE", &token)
            .env("TUGBOOT_CA_CERT", &ca))
    };
    for name in ["x86-os", "arm-os"] {
        operator(&[
            "images",
            "push",
            &s(&format!("staging/{name}.json")),
            "--store",
            &s("local-blobs"),
        ]);
    }
    let listed = operator(&["images", "list"]);
    assert!(
        listed.contains("x86-os") && listed.contains("arm-os"),
        "{listed}"
    );
    assert!(
        !d.join("data/manifests").exists()
            || fs::read_dir(d.join("data/manifests"))
                .expect("manifests dir")
                .next()
                .is_none(),
        "nothing was copied beside the API"
    );

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
        let tap = format!("tap{}", i + 1);
        ns.add_tap(&tap);
        let mut vm = Vm::start(&mut ns, d, *firmware, mac, &tap);
        let t = vm.wait_for(marker, &mut serve);
        let cmdline = vm
            .console
            .iter()
            .find(|l| l.contains("tugboot-cmdline:") && !l.contains("echo"))
            .cloned()
            .unwrap_or_default();
        assert!(
            cmdline.contains(&format!("tugboot.mac={mac}")),
            "{firmware:?} booted with someone else's command line: {cmdline:?}\n{}",
            vm.console.join("\n")
        );
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
        vm.stop(&mut ns);
        times.push((*firmware, t));
    }

    // Who asked for what, on which protocol.
    serve.drain();
    let log = serve.lines.join("\n");
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
    let log = serve.stop(&mut ns);
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
