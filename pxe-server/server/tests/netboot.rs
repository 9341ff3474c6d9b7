//! A real network boot, end to end (root: network namespaces + QEMU).
//!
//! In a private network namespace (a bridge and a tap, nothing else) the real `tugboot serve`
//! binary answers a QEMU machine: firmware DHCP → iPXE → HTTP per-machine script → kernel +
//! initrd of a signed image built with the real CLI from Debian's kernel and a busybox initramfs
//! whose `/init` prints a marker on the serial console and powers off. The test passes when the
//! marker appears; it also checks that the DHCP lease was logged and the unknown machine recorded
//! in the store. Boot times are printed (docs/netboot.md), never asserted.
//!
//! arm64 (AAVMF → GRUB over TFTP, U-Boot → PXELINUX over TFTP) uses Debian's arm64 kernel and a
//! static arm64 busybox from the cache `tests/fetch-arm64` fills (/var/cache/tugboot-arm64).
//!
//! `cargo test -p tugboot --test netboot -- --ignored --nocapture` (as root).

mod vm;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use vm::{
    AAVMF_CODE, AAVMF_VARS, ARM64_CACHE, BIOS_ROM_DIR, Firmware, Netns, OVMF_CODE, OVMF_VARS,
    Serve, UBOOT_ARM64, Vm, host_kernel, initramfs_arm64, initramfs_x86, lines_of,
    require_root_and_tools, run, tugboot,
};

const MARKER: &str = "TUGBOOT-NETBOOT-OK";
const MAC: &str = "52:54:00:12:34:01";

fn write_setup(dir: &Path, firmware: Firmware) -> PathBuf {
    let t = |args: &[&str]| {
        run(Command::new(tugboot()).args(args).arg("--quiet"));
    };
    let p = |name: &str| dir.join(name).display().to_string();
    fs::create_dir_all(dir.join("data/manifests")).expect("mkdir");
    fs::create_dir_all(dir.join("tftp")).expect("mkdir");
    vm::signing_root(dir);
    let arm64 = firmware.is_arm64();
    let (initrd, kernel, cmdline, boards): (_, PathBuf, _, &[&str]) = if arm64 {
        // The console comes from the board (ttyAMA0), through the machine entry below.
        (
            initramfs_arm64(MARKER),
            Path::new(ARM64_CACHE).join("vmlinuz"),
            "panic=-1",
            &["arm64-uefi", "qemu-arm64-uboot"],
        )
    } else {
        (
            initramfs_x86(MARKER),
            host_kernel(),
            "console=ttyS0 panic=-1",
            &["x86_64-bios", "x86_64-uefi"],
        )
    };
    fs::write(dir.join("initrd.cpio"), initrd).expect("write initrd");
    let kernel = kernel.display().to_string();
    let initrd_path = p("initrd.cpio");
    let blobs = p("data/blobs");
    let manifest = p("data/manifests/netboot-test.json");
    let signer = p("signer.key");
    let mut build = vec![
        "image",
        "build",
        "--kernel",
        &kernel,
        "--initrd",
        &initrd_path,
        "--cmdline",
        cmdline,
        "--name",
        "netboot-test",
        "--version",
        "1",
    ];
    for b in boards {
        build.extend(["--board", b]);
    }
    build.extend(["--sign", &signer, "--store", &blobs, "--out", &manifest]);
    t(&build);
    if arm64 {
        // Debian's stock GRUB network image (prefix /grub; reads /grub/grub.cfg only).
        fs::copy(
            Path::new(ARM64_CACHE).join("grubnetaa64-stock.efi"),
            dir.join("tftp/grubnetaa64.efi"),
        )
        .expect("copy grubnetaa64.efi");
        let board = if firmware == Firmware::Aavmf {
            "arm64-uefi"
        } else {
            "qemu-arm64-uboot"
        };
        fs::write(
            dir.join("profiles.toml"),
            format!(
                "[profiles.test]\nimage = \"netboot-test\"\n\n[[machines]]\nname = \"arm64-vm\"\nmac = \"{MAC}\"\nboard = \"{board}\"\nprofile = \"test\"\n"
            ),
        )
        .expect("write profiles");
        return write_config(dir);
    }
    // Copies, not symlinks: the TFTP server refuses links that leave its root.
    for f in ["undionly.kpxe", "ipxe.efi", "snponly.efi"] {
        fs::copy(Path::new(BIOS_ROM_DIR).join(f), dir.join("tftp").join(f)).expect("copy iPXE");
    }
    fs::write(
        dir.join("profiles.toml"),
        "default_profile = \"test\"\n[profiles.test]\nimage = \"netboot-test\"\n",
    )
    .expect("write profiles");
    write_config(dir)
}

fn write_config(dir: &Path) -> PathBuf {
    let config = dir.join("serve.toml");
    fs::write(
        &config,
        r#"
data_dir = "data"
trust_root = "root.json"
profiles = "profiles.toml"

[network]
interface = "br0"
address = "10.77.0.1"

[dhcp]
mode = "authoritative"
[dhcp.boot]
uefi_x64 = "snponly.efi"
# arm64: serve's defaults, uefi_arm64 = "grubnetaa64.efi" and uboot_arm64 = "boot.scr.uimg".
[[dhcp.subnets]]
network = "10.77.0.0/24"
pools = [{ start = "10.77.0.100", end = "10.77.0.150" }]
router = "10.77.0.1"

[tftp]
root = "tftp"

[http]
listen = "10.77.0.1:8080"
boot_dir = "tftp"
"#,
    )
    .expect("write config");
    config
}

fn netboot(firmware: Firmware) {
    let cache = |f: &str| format!("{ARM64_CACHE}/{f}");
    let arm64_files = [
        cache("vmlinuz"),
        cache("busybox"),
        cache("grubnetaa64-stock.efi"),
    ];
    let mut need: Vec<&str> = match firmware {
        Firmware::Bios | Firmware::Uefi | Firmware::UefiHttp => {
            vec!["/usr/lib/ipxe/undionly.kpxe", "/usr/lib/ipxe/snponly.efi"]
        }
        Firmware::Aavmf | Firmware::AavmfHttp | Firmware::Uboot => {
            arm64_files.iter().map(String::as_str).collect()
        }
    };
    match firmware {
        Firmware::Bios => {}
        Firmware::Uefi | Firmware::UefiHttp => need.extend([OVMF_CODE, OVMF_VARS]),
        Firmware::Aavmf | Firmware::AavmfHttp => need.extend([AAVMF_CODE, AAVMF_VARS]),
        Firmware::Uboot => need.push(UBOOT_ARM64),
    }
    if firmware.is_arm64() {
        require_root_and_tools(&["ip", "qemu-system-aarch64"], &need);
    } else {
        require_root_and_tools(
            &["ip", "qemu-system-x86_64", "busybox", "ldd", "dnsmasq"],
            &need,
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_setup(dir.path(), firmware);
    let check = run(Command::new(tugboot())
        .args(["check-config", "--json", "--config"])
        .arg(&config));
    assert!(
        check.contains("\"public_url\": \"http://10.77.0.1:8080\""),
        "{check}"
    );

    let mut ns = Netns::new(&format!("{firmware:?}").to_lowercase());
    // GRUB and U-Boot do no IPv6 autoconfiguration: no router needed on the arm64 link.
    if !firmware.is_arm64() {
        ns.router_advertisements(dir.path());
    }
    let mut serve = Serve::start(&mut ns, &config);
    let mut vm = Vm::start(&mut ns, dir.path(), firmware, MAC, "tap0");
    let times = vm.wait_for(MARKER, &mut serve);
    vm.stop(&mut ns);
    let log = serve.stop(&mut ns);
    let verbose = std::env::var_os("TUGBOOT_NETBOOT_VERBOSE").is_some();
    if verbose {
        println!("server log:\n{log}");
    }
    assert!(log.contains("manifest published"), "{log}");
    // The arm64 loaders got their configuration generated for this MAC.
    match firmware {
        Firmware::Aavmf => assert!(
            log.contains("loader configuration") && log.contains("grub/grub.cfg"),
            "{log}"
        ),
        Firmware::Uboot => assert!(
            log.contains("loader configuration") && log.contains("pxelinux.cfg/01-"),
            "{log}"
        ),
        _ => {}
    }

    // The lease was made durable and the machine recorded in the store.
    let leases = fs::read_to_string(dir.path().join("data/dhcp-leases.jsonl")).expect("lease log");
    if verbose {
        println!("lease log:\n{leases}");
    }
    assert!(leases.contains("bound"), "{leases}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let machine = rt.block_on(async {
        use tugboot_store::Store;
        let store = tugboot_store::AnyStore::open(
            &dir.path().join("data/tugboot.sqlite").display().to_string(),
        )
        .await
        .expect("open store");
        let m = store
            .find_machine_by_mac(MAC.parse().expect("mac"))
            .await
            .expect("query");
        store.close().await;
        m
    });
    let machine =
        machine.unwrap_or_else(|| panic!("machine {MAC} not recorded in the store:\n{log}"));
    assert_eq!(
        machine.last_booted_image.as_deref(),
        Some("netboot-test@1"),
        "who booted what:\n{log}"
    );
    println!(
        "netboot {firmware:?}: after QEMU start: iPXE configured {:?}, GRUB/U-Boot started {:?}, kernel started {:?}, marker {:?}",
        times.ipxe_configured, times.loader_started, times.kernel_started, times.marker
    );
}

#[test]
#[ignore = "root: network namespaces + QEMU"]
fn bios_ipxe_rom_boots_a_signed_image_over_http() {
    netboot(Firmware::Bios);
}

#[test]
#[ignore = "root: network namespaces + QEMU"]
fn uefi_pxe_chainloads_ipxe_over_tftp_then_boots_over_http() {
    netboot(Firmware::Uefi);
}

#[test]
#[ignore = "root: network namespaces + QEMU"]
fn aavmf_pxe_loads_stock_grub_which_boots_an_arm64_image_over_tftp() {
    netboot(Firmware::Aavmf);
}

#[test]
#[ignore = "root: network namespaces + QEMU"]
fn uboot_script_and_pxelinux_config_boot_an_arm64_image_over_tftp() {
    netboot(Firmware::Uboot);
}

/// A whole TFTP read (RFC 1350, 512-byte blocks, no options); `Err` carries an ERROR packet's
/// code and message.
fn tftp_get(server: std::net::SocketAddr, name: &str) -> Result<Vec<u8>, (u16, String)> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut rrq = vec![0, 1];
    rrq.extend_from_slice(name.as_bytes());
    rrq.push(0);
    rrq.extend_from_slice(b"octet\0");
    sock.send_to(&rrq, server).expect("send rrq");
    let mut out = Vec::new();
    let mut buf = [0u8; 600];
    let mut expect: u16 = 1;
    loop {
        let (n, from) = sock.recv_from(&mut buf).expect("tftp reply");
        if buf[..2] == [0, 5] {
            let code = u16::from_be_bytes([buf[2], buf[3]]);
            let msg = String::from_utf8_lossy(&buf[4..n]);
            return Err((code, msg.trim_end_matches('\0').to_owned()));
        }
        assert_eq!(&buf[..2], &[0, 3], "not DATA: {:?}", &buf[..n]);
        assert_eq!(u16::from_be_bytes([buf[2], buf[3]]), expect);
        out.extend_from_slice(&buf[4..n]);
        sock.send_to(&[0, 4, buf[2], buf[3]], from).expect("ack");
        if n < 4 + 512 {
            return Ok(out);
        }
        expect = expect.wrapping_add(1);
    }
}

/// The arm64 boot files without QEMU or root: the real server on loopback, read with a plain
/// TFTP client. GRUB and PXELINUX configurations for a known MAC name the published artifacts
/// (which are served byte for byte), an unknown MAC gets GRUB's error configuration and no
/// PXELINUX file, `boot.scr.uimg` is a script image `dumpimage` reads, and digests that are
/// not published are not served.
#[test]
fn arm64_boot_files_are_served_over_tftp_from_the_published_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let p = |name: &str| d.join(name).display().to_string();
    let t = |args: &[&str]| run(Command::new(tugboot()).args(args).arg("--quiet"));
    for sub in ["data/manifests", "tftp"] {
        fs::create_dir_all(d.join(sub)).expect("mkdir");
    }
    vm::signing_root(d);
    // Content does not matter to the server: any bytes, as long as they are signed.
    let kernel: Vec<u8> = (0..70_001u32).map(|i| (i * 7 % 251) as u8).collect();
    let initrd: Vec<u8> = (0..3_000u32).map(|i| (i * 13 % 241) as u8).collect();
    fs::write(d.join("kernel"), &kernel).expect("write");
    fs::write(d.join("initrd"), &initrd).expect("write");
    t(&[
        "image",
        "build",
        "--kernel",
        &p("kernel"),
        "--initrd",
        &p("initrd"),
        "--cmdline",
        "quiet",
        "--name",
        "arm",
        "--version",
        "3",
        "--board",
        "arm64-uefi",
        "--sign",
        &p("signer.key"),
        "--store",
        &p("data/blobs"),
        "--out",
        &p("data/manifests/arm-3.json"),
    ]);
    let inspect = run(Command::new(tugboot()).args([
        "image",
        "inspect",
        "--json",
        &p("data/manifests/arm-3.json"),
    ]));
    let inspect: serde_json::Value = serde_json::from_str(&inspect).expect("json");
    let digest_of = |role: &str| -> String {
        inspect["manifest"]["artifacts"]
            .as_array()
            .expect("artifacts")
            .iter()
            .find(|a| a["role"] == role)
            .and_then(|a| a["sha256"].as_str())
            .unwrap_or_else(|| panic!("no {role} in {inspect}"))
            .to_owned()
    };
    let (kd, id) = (digest_of("kernel"), digest_of("initrd"));
    fs::write(
        d.join("profiles.toml"),
        format!(
            "[profiles.arm]\nimage = \"arm\"\ncmdline = \"rw\"\n\n[[machines]]\nname = \"vm1\"\nmac = \"{MAC}\"\nboard = \"arm64-uefi\"\nprofile = \"arm\"\n"
        ),
    )
    .expect("write");
    fs::write(
        d.join("serve.toml"),
        "data_dir = \"data\"\ntrust_root = \"root.json\"\nprofiles = \"profiles.toml\"\n\
         [network]\naddress = \"127.0.0.1\"\n[tftp]\nroot = \"tftp\"\nlisten = \"127.0.0.1:0\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\n",
    )
    .expect("write");

    let mut child = Command::new(tugboot())
        .args(["serve", "--config"])
        .arg(d.join("serve.toml"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tugboot serve");
    let log = lines_of(child.stderr.take().expect("stderr"));
    // Killed however the test ends.
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Kill(child);
    let mut lines = Vec::new();
    let tftp: std::net::SocketAddr = loop {
        let (_, line) = log
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("serve never became ready:\n{}", lines.join("\n")));
        if line.contains("tugboot serve: ready") {
            let addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("tftp="))
                .and_then(|a| a.parse().ok());
            break addr.unwrap_or_else(|| panic!("no tftp address in {line}"));
        }
        lines.push(line);
    };

    let mac_path = MAC.replace(':', "-");
    let grub = tftp_get(tftp, &format!("/grub/grub.cfg-01-{mac_path}")).expect("grub.cfg");
    let grub = String::from_utf8(grub).expect("utf-8");
    assert!(
        grub.contains(&format!(
            "linux /artifacts/sha256/{kd} 'console=tty0' 'console=ttyAMA0,115200n8' 'quiet' 'rw'\n"
        )),
        "{grub}"
    );
    assert!(
        grub.contains(&format!("initrd /artifacts/sha256/{id}\n")),
        "{grub}"
    );
    assert!(
        grub.contains("# tugboot: machine vm1 profile arm image arm v3"),
        "{grub}"
    );

    let pxe = tftp_get(tftp, &format!("pxelinux.cfg/01-{mac_path}")).expect("pxelinux config");
    let pxe = String::from_utf8(pxe).expect("utf-8");
    assert!(
        pxe.contains(&format!("  kernel artifacts/sha256/{kd}\n  initrd artifacts/sha256/{id}\n  append console=tty0 console=ttyAMA0,115200n8 quiet rw\n")),
        "{pxe}"
    );

    // Another machine: no profile. GRUB is told why; U-Boot gets "not found" for its MAC file.
    let other = "grub/grub.cfg-01-02-00-00-00-00-09";
    let err = String::from_utf8(tftp_get(tftp, other).expect("error config")).expect("utf-8");
    assert!(
        err.contains("echo 'tugboot: no profile for machine 02:00:00:00:00:09'"),
        "{err}"
    );
    assert!(err.contains("reboot\n"), "{err}");
    assert_eq!(
        tftp_get(tftp, "pxelinux.cfg/01-02-00-00-00-00-09").map_err(|e| e.0),
        Err(1)
    );

    let script = tftp_get(tftp, "boot.scr.uimg").expect("boot.scr.uimg");
    let script_path = d.join("boot.scr.uimg");
    fs::write(&script_path, &script).expect("write");
    let listing = run(Command::new("dumpimage").arg("-l").arg(&script_path));
    assert!(listing.contains("AArch64 Linux Script"), "{listing}");
    assert!(
        String::from_utf8_lossy(&script).contains("if pxe get; then pxe boot; fi"),
        "{listing}"
    );

    assert_eq!(
        tftp_get(tftp, &format!("artifacts/sha256/{kd}")).expect("kernel"),
        kernel
    );
    assert_eq!(
        tftp_get(tftp, &format!("/artifacts/sha256/{id}")).expect("initrd"),
        initrd
    );
    // A blob in the store whose image is not published, and a digest nobody has: not served.
    fs::write(d.join("stray"), b"not published").expect("write");
    let stray = run(Command::new(tugboot()).args([
        "image",
        "build",
        "--kernel",
        &p("stray"),
        "--name",
        "stray",
        "--version",
        "1",
        "--board",
        "arm64-uefi",
        "--sign",
        &p("signer.key"),
        "--store",
        &p("data/blobs"),
        "--out",
        &p("stray.json"),
        "--quiet",
    ]));
    drop(stray);
    let stray_digest = tugboot_firmware::Sha256Digest::of(b"not published").to_hex();
    assert!(
        d.join("data/blobs/sha256").join(&stray_digest).is_file(),
        "the stray blob should be in the store"
    );
    for missing in [stray_digest, "0".repeat(64)] {
        assert_eq!(
            tftp_get(tftp, &format!("artifacts/sha256/{missing}")).map_err(|e| e.0),
            Err(1),
            "{missing}"
        );
    }
    // GRUB's module probes are answered "not found" at once.
    assert_eq!(
        tftp_get(tftp, "/grub/arm64-efi/command.lst").map_err(|e| e.0),
        Err(1)
    );
}
