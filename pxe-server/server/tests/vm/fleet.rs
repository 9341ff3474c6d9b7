//! The fleet lab shared by the root tests that boot machines nobody declared (`fleet_boot.rs`,
//! `hostile_lan.rs`): one `tugboot serve` (DHCP, TFTP, HTTP, the device API) in a private
//! namespace, two signed images (x86_64, arm64) pushed through the API as an operator would,
//! and a profiles file that picks the image by the architecture the network observed.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use super::{
    AAVMF_CODE, AAVMF_VARS, ARM64_CACHE, BIOS_ROM_DIR, Firmware, Netns, OVMF_CODE, OVMF_VARS,
    Serve, UBOOT_ARM64, Vm, host_kernel, initramfs_arm64, initramfs_x86, require_root_and_tools,
    run, tugboot,
};

pub const X86_MARKER: &str = "TUGBOOT-FLEET-OK-x86-os";
pub const ARM_MARKER: &str = "TUGBOOT-FLEET-OK-arm-os";

/// A running lab: its directory, namespace and server (torn down on drop: the namespace kills
/// the server and every guest).
pub struct FleetLab {
    pub serve: Serve,
    pub ns: Netns,
    pub dir: tempfile::TempDir,
}

impl FleetLab {
    /// Sets up, starts the server (beside the site's dnsmasq in proxy mode) and pushes both
    /// images through the API; nothing is copied beside it.
    pub fn start(dhcp_mode: &'static str, tag: &str) -> Self {
        require_fleet_tools();
        let dir = tempfile::tempdir().expect("tempdir");
        setup(dir.path(), dhcp_mode);
        let mut ns = Netns::new(tag);
        ns.router_advertisements(dir.path());
        if dhcp_mode == "proxy" {
            site_dhcp(&mut ns, dir.path());
        }
        let serve = Serve::start(&mut ns, &dir.path().join("serve.toml"));
        let lab = FleetLab { serve, ns, dir };
        for name in ["x86-os", "arm-os"] {
            lab.operator(&[
                "images",
                "push",
                &lab.path(&format!("staging/{name}.json")),
                "--store",
                &lab.path("local-blobs"),
            ]);
        }
        let listed = lab.operator(&["images", "list"]);
        assert!(
            listed.contains("x86-os") && listed.contains("arm-os"),
            "{listed}"
        );
        let manifests = lab.dir.path().join("data/manifests");
        assert!(
            !manifests.exists()
                || fs::read_dir(&manifests)
                    .expect("manifests dir")
                    .next()
                    .is_none(),
            "nothing was copied beside the API"
        );
        lab
    }

    /// Stops the server (SIGTERM, a clean exit asserted) and removes the namespace; returns the
    /// server's log and the lab's directory.
    pub fn stop(self) -> (String, tempfile::TempDir) {
        let FleetLab {
            serve, mut ns, dir, ..
        } = self;
        let log = serve.stop(&mut ns);
        drop(ns);
        (log, dir)
    }

    /// A path in the lab's directory, as a string.
    pub fn path(&self, f: &str) -> String {
        self.dir.path().join(f).display().to_string()
    }

    /// The operator CLI against the lab's API, from inside the namespace.
    pub fn operator(&self, args: &[&str]) -> String {
        run(self
            .ns
            .command(tugboot())
            .args(args)
            .env("TUGBOOT_SERVER", "https://10.77.0.1:8443")
            .env("TUGBOOT_TOKEN_FILE", self.path("data/api/operator-token"))
            .env("TUGBOOT_CA_CERT", self.path("ca/ca.pem")))
    }

    /// Powers on a guest on a new tap `tap`.
    pub fn power_on(&mut self, firmware: Firmware, mac: &str, tap: &str) -> Vm {
        self.ns.add_tap(tap);
        Vm::start(&mut self.ns, self.dir.path(), firmware, mac, tap)
    }

    /// The address each MAC holds now in the server's lease log (its last record per MAC and
    /// per address), asserting no address is bound to two machines.
    pub fn bound_addresses(&self) -> std::collections::BTreeMap<String, String> {
        let log =
            fs::read_to_string(self.dir.path().join("data/dhcp-leases.jsonl")).unwrap_or_default();
        let mut by_address = std::collections::BTreeMap::<String, (String, String)>::new();
        for line in log.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).expect("lease record");
            let (Some(a), Some(m), Some(s)) = (
                v["address"].as_str(),
                v["mac"].as_str(),
                v["state"].as_str(),
            ) else {
                continue;
            };
            by_address.insert(a.to_owned(), (m.to_owned(), s.to_owned()));
        }
        let mut by_mac = std::collections::BTreeMap::new();
        for (address, (mac, state)) in by_address {
            if state == "bound"
                && let Some(other) = by_mac.insert(mac.clone(), address.clone())
            {
                panic!("{mac} holds two addresses: {other} and {address}\n{log}");
            }
        }
        by_mac
    }
}

/// The kernel command line the guest printed must carry its own MAC (the group's `{{mac}}`).
pub fn assert_own_cmdline(vm: &Vm, mac: &str) {
    let cmdline = vm
        .console
        .iter()
        .find(|l| l.contains("tugboot-cmdline:") && !l.contains("echo"))
        .cloned()
        .unwrap_or_default();
    assert!(
        cmdline.contains(&format!("tugboot.mac={mac}")),
        "{:?} booted with someone else's command line: {cmdline:?}\n{}",
        vm.firmware,
        vm.console.join("\n")
    );
}

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

/// Keys, a trust root, a CA, the two signed images (in a blob store of their own, not the
/// server's), Debian's boot files, the profiles file (two groups by architecture) and
/// `serve.toml` for `dhcp_mode` (`authoritative` or `proxy`).
pub fn setup(dir: &Path, dhcp_mode: &str) {
    let p = |f: &str| dir.join(f).display().to_string();
    let t = |args: &[&str]| run(Command::new(tugboot()).args(args).arg("--quiet"));
    for sub in ["staging", "tftp", "boot"] {
        fs::create_dir_all(dir.join(sub)).expect("mkdir");
    }
    super::signing_root(dir);
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
pub fn site_dhcp(ns: &mut Netns, dir: &Path) {
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
pub fn require_fleet_tools() {
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
