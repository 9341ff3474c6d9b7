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

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const MARKER: &str = "TUGBOOT-NETBOOT-OK";
const MAC: &str = "52:54:00:12:34:01";
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
const BIOS_ROM_DIR: &str = "/usr/lib/ipxe";
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const AAVMF_CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";
const AAVMF_VARS: &str = "/usr/share/AAVMF/AAVMF_VARS.fd";
const UBOOT_ARM64: &str = "/usr/lib/u-boot/qemu_arm64/u-boot.bin";
/// Filled by `tests/fetch-arm64`: vmlinuz, busybox (static), grubnetaa64.efi.
const ARM64_CACHE: &str = "/var/cache/tugboot-arm64";
/// TCG emulates arm64 on x86 several times slower than x86 on x86; a 33 MB kernel over TFTP.
const ARM64_BOOT_TIMEOUT: Duration = Duration::from_secs(180);

fn tugboot() -> &'static str {
    env!("CARGO_BIN_EXE_tugboot")
}

fn require_root_and_tools(tools: &[&str], extra: &[&str]) {
    let uid = Command::new("id").arg("-u").output().expect("run id");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "this test needs root (network namespaces, tap devices): run it with sudo or in CI"
    );
    for tool in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(found, "missing tool {tool:?} (see tests/setup)");
    }
    for file in extra {
        assert!(
            Path::new(file).exists(),
            "missing {file} (Debian packages ipxe, ipxe-qemu, ovmf, qemu-efi-aarch64, u-boot-qemu; \
             arm64 files: run tests/fetch-arm64, which tests/setup should call)"
        );
    }
}

fn kernel() -> PathBuf {
    let mut kernels: Vec<PathBuf> = fs::read_dir("/boot")
        .expect("read /boot")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    kernels
        .pop()
        .expect("no /boot/vmlinuz-* (Debian package linux-image-amd64)")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One `newc` cpio archive, written by hand (the format is 110-byte ASCII headers).
#[derive(Default)]
struct Cpio {
    bytes: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let size = u32::try_from(data.len()).expect("file under 4 GiB");
        let namesize = u32::try_from(name.len() + 1).expect("short name");
        let fields = [
            self.ino, mode, 0, 0, 1, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
        ];
        self.bytes.extend_from_slice(b"070701");
        for f in fields {
            self.bytes.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, data: &[u8]) {
        self.entry(name, 0o100_755, (0, 0), data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.bytes
    }
}

/// busybox (and, when it is the dynamic build, its loader and libraries) plus an `/init` that
/// prints the marker and powers the machine off.
fn initramfs() -> Vec<u8> {
    let busybox = run(Command::new("sh").args(["-c", "command -v busybox"]));
    let busybox = busybox.trim();
    let mut cpio = Cpio::default();
    for d in ["bin", "dev", "proc", "lib", "lib64", "lib/x86_64-linux-gnu"] {
        cpio.dir(d);
    }
    // The kernel opens /dev/console for init's stdout before anything is mounted.
    cpio.entry("dev/console", 0o020_600, (5, 1), &[]);
    cpio.file("bin/busybox", &fs::read(busybox).expect("read busybox"));
    let ldd = Command::new("ldd").arg(busybox).output().expect("run ldd");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = line
            .split("=>")
            .last()
            .and_then(|s| s.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(p) = path {
            let data = fs::read(p).unwrap_or_else(|e| panic!("read {p}: {e}"));
            let name = p.trim_start_matches('/');
            if name.starts_with("lib/x86_64-linux-gnu/") || name.starts_with("lib64/") {
                cpio.file(name, &data);
            } else {
                let base = Path::new(p)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .expect("name");
                cpio.file(&format!("lib/x86_64-linux-gnu/{base}"), &data);
            }
        }
    }
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\necho {MARKER}\n/bin/busybox poweroff -f\n"
    );
    cpio.file("init", init.as_bytes());
    cpio.finish()
}

/// The arm64 initramfs: the cached static busybox and the same `/init`.
fn initramfs_arm64() -> Vec<u8> {
    let busybox = Path::new(ARM64_CACHE).join("busybox");
    let mut cpio = Cpio::default();
    for d in ["bin", "dev", "proc"] {
        cpio.dir(d);
    }
    cpio.entry("dev/console", 0o020_600, (5, 1), &[]);
    cpio.file(
        "bin/busybox",
        &fs::read(&busybox).unwrap_or_else(|e| panic!("read {}: {e}", busybox.display())),
    );
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\necho {MARKER}\n/bin/busybox poweroff -f\n"
    );
    cpio.file("init", init.as_bytes());
    cpio.finish()
}

/// The network namespace with its bridge and tap; removed (with every child) on drop.
struct Netns {
    name: String,
    children: Vec<Child>,
}

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("tbnb-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns {
            name,
            children: Vec::new(),
        };
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["link", "add", "br0", "type", "bridge"],
            vec!["tuntap", "add", "dev", "tap0", "mode", "tap"],
            vec!["link", "set", "tap0", "master", "br0"],
            vec!["link", "set", "tap0", "up"],
            vec!["link", "set", "br0", "up"],
            vec!["addr", "add", "10.77.0.1/24", "dev", "br0"],
            vec!["-6", "addr", "add", "fd77::1/64", "dev", "br0", "nodad"],
        ] {
            run(Command::new("ip").args(["-n", &ns.name]).args(&args));
        }
        ns
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Lines of a child's output, each with the time it arrived.
fn lines_of(r: impl Read + Send + 'static) -> mpsc::Receiver<(Instant, String)> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(r).split(b'\n') {
            let Ok(line) = line else { break };
            if tx
                .send((Instant::now(), String::from_utf8_lossy(&line).into_owned()))
                .is_err()
            {
                break;
            }
        }
    });
    rx
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Firmware {
    /// SeaBIOS + the iPXE option ROM of the virtio NIC (ipxe-qemu): already iPXE.
    Bios,
    /// OVMF with its own virtio-net driver (no option ROM): PXE → TFTP snponly.efi → iPXE.
    Uefi,
    /// AAVMF (arm64 EDK2): PXE → TFTP grubnetaa64.efi → TFTP grub.cfg-01-<mac> → kernel and
    /// initrd over TFTP.
    Aavmf,
    /// U-Boot (qemu_arm64): DHCP → TFTP boot.scr.uimg → `pxe get` pxelinux.cfg/01-<mac> →
    /// kernel and initrd over TFTP → `booti`.
    Uboot,
}

impl Firmware {
    fn is_arm64(self) -> bool {
        matches!(self, Firmware::Aavmf | Firmware::Uboot)
    }

    fn tag(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
            Firmware::Aavmf => "aavmf",
            Firmware::Uboot => "uboot",
        }
    }
}

fn write_setup(dir: &Path, firmware: Firmware) -> PathBuf {
    let t = |args: &[&str]| {
        run(Command::new(tugboot()).args(args).arg("--quiet"));
    };
    let p = |name: &str| dir.join(name).display().to_string();
    fs::create_dir_all(dir.join("data/manifests")).expect("mkdir");
    fs::create_dir_all(dir.join("tftp")).expect("mkdir");
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
    let arm64 = firmware.is_arm64();
    let (initrd, kernel, cmdline, boards): (_, PathBuf, _, &[&str]) = if arm64 {
        // The console comes from the board (ttyAMA0), through the machine entry below.
        (
            initramfs_arm64(),
            Path::new(ARM64_CACHE).join("vmlinuz"),
            "panic=-1",
            &["arm64-uefi", "qemu-arm64-uboot"],
        )
    } else {
        (
            initramfs(),
            kernel(),
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
        // GRUB's network image, built by tests/fetch-arm64 with prefix (tftp)/grub.
        fs::copy(
            Path::new(ARM64_CACHE).join("grubnetaa64.efi"),
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
    let arm64_files = [cache("vmlinuz"), cache("busybox"), cache("grubnetaa64.efi")];
    let mut need: Vec<&str> = match firmware {
        Firmware::Bios | Firmware::Uefi => {
            vec!["/usr/lib/ipxe/undionly.kpxe", "/usr/lib/ipxe/snponly.efi"]
        }
        Firmware::Aavmf | Firmware::Uboot => arm64_files.iter().map(String::as_str).collect(),
    };
    match firmware {
        Firmware::Bios => {}
        Firmware::Uefi => need.extend([OVMF_CODE, OVMF_VARS]),
        Firmware::Aavmf => need.extend([AAVMF_CODE, AAVMF_VARS]),
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
    let boot_timeout = if firmware.is_arm64() {
        ARM64_BOOT_TIMEOUT
    } else {
        BOOT_TIMEOUT
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_setup(dir.path(), firmware);
    let check = run(Command::new(tugboot())
        .args(["check-config", "--json", "--config"])
        .arg(&config));
    assert!(
        check.contains("\"public_url\": \"http://10.77.0.1:8080\""),
        "{check}"
    );

    let mut ns = Netns::new(firmware.tag());
    // IPv6 router advertisements (dnsmasq, RA only: no DHCP, no DNS). Without a router on the
    // link, iPXE's IPv6 autoconfiguration keeps "Configuring" busy ~16 s after the DHCP ACK.
    // GRUB and U-Boot do no IPv6 autoconfiguration: no router needed on the arm64 link.
    if !firmware.is_arm64() {
        let ra = ns
            .command("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--port=0",
                "--no-resolv",
                "--no-hosts",
                "--interface=br0",
                "--enable-ra",
                "--dhcp-range=::,constructor:br0,ra-only",
                "--log-facility=-",
            ])
            .arg(format!(
                "--pid-file={}",
                dir.path().join("dnsmasq.pid").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq (router advertisements)");
        ns.children.push(ra);
    }
    let mut serve = ns
        .command(tugboot())
        .args(["serve", "--config"])
        .arg(&config)
        .env(
            "RUST_LOG",
            std::env::var("TUGBOOT_NETBOOT_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tugboot serve");
    let serve_log = lines_of(serve.stderr.take().expect("stderr"));
    let serve_pid = serve.id();
    ns.children.push(serve);
    let serve_index = ns.children.len() - 1;
    let mut log = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, line) = serve_log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("tugboot serve did not become ready:\n{}", log.join("\n")));
        let ready = line.contains("tugboot serve: ready");
        log.push(line);
        if ready {
            break;
        }
    }

    let mut qemu = ns.command(if firmware.is_arm64() {
        "qemu-system-aarch64"
    } else {
        "qemu-system-x86_64"
    });
    // -nographic: the serial port on stdout, SeaBIOS/iPXE output copied to it (sercon).
    qemu.args([
        "-accel",
        "tcg",
        "-nographic",
        "-monitor",
        "none",
        "-no-reboot",
    ])
    .args(["-netdev", "tap,id=n,ifname=tap0,script=no,downscript=no"]);
    if !firmware.is_arm64() {
        qemu.args(["-m", "512", "-boot", "n"]);
    }
    let vars = dir.path().join("OVMF_VARS.fd");
    match firmware {
        Firmware::Aavmf => {
            // Both pflash banks must be 64 MiB; the vars bank is a writable copy.
            let vars = dir.path().join("AAVMF_VARS.fd");
            fs::copy(AAVMF_VARS, &vars).expect("copy AAVMF vars");
            qemu.args(["-M", "virt", "-cpu", "cortex-a57", "-m", "1024"])
                .args([
                    "-drive",
                    &format!("if=pflash,format=raw,unit=0,readonly=on,file={AAVMF_CODE}"),
                    "-drive",
                    &format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
                ])
                .args([
                    "-device",
                    &format!("virtio-net-pci,netdev=n,mac={MAC},romfile="),
                ]);
        }
        Firmware::Uboot => {
            // virtio-net-device (MMIO): with virtio-net-pci U-Boot 2023.01 uses the MAC
            // 52:52:52:52:52:52 instead of QEMU's.
            qemu.args(["-M", "virt", "-cpu", "cortex-a57", "-m", "1024"])
                .args(["-bios", UBOOT_ARM64])
                .args(["-device", &format!("virtio-net-device,netdev=n,mac={MAC}")]);
        }
        Firmware::Bios => {
            qemu.args([
                "-M",
                "pc",
                "-device",
                &format!("virtio-net-pci,netdev=n,mac={MAC}"),
            ]);
        }
        Firmware::Uefi => {
            fs::copy(OVMF_VARS, &vars).expect("copy OVMF vars");
            qemu.args(["-M", "q35"])
                .args([
                    "-drive",
                    &format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
                    "-drive",
                    &format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
                ])
                // No option ROM: OVMF's own driver does PXE, so iPXE comes over TFTP.
                .args([
                    "-device",
                    &format!("virtio-net-pci,netdev=n,mac={MAC},romfile="),
                ]);
        }
    }
    let start = Instant::now();
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu");
    let serial = lines_of(child.stdout.take().expect("stdout"));
    let qemu_err = lines_of(child.stderr.take().expect("stderr"));
    ns.children.push(child);

    // TUGBOOT_NETBOOT_VERBOSE=1: the serial console with timestamps, as it arrives.
    let verbose = std::env::var_os("TUGBOOT_NETBOOT_VERBOSE").is_some();
    let mut console = Vec::new();
    let mut first_dhcp: Option<Duration> = None;
    let mut kernel_start: Option<Duration> = None;
    // iPXE prints this line (with its dots and "ok") once every configurator has finished.
    let mut ipxe_configured: Option<Duration> = None;
    // arm64: GRUB started (from AAVMF's TFTP), or U-Boot's script started (boot.scr.uimg).
    let mut loader_started: Option<Duration> = None;
    let marker_at = loop {
        let left = (start + boot_timeout).saturating_duration_since(Instant::now());
        match serial.recv_timeout(left.min(Duration::from_millis(500))) {
            Ok((at, line)) => {
                if line.contains(MARKER) && !line.contains("echo") {
                    break at - start;
                }
                if verbose {
                    println!("[{:>7.3}] {}", (at - start).as_secs_f64(), line.trim_end());
                }
                if ipxe_configured.is_none() && line.contains("Configuring (net0") {
                    ipxe_configured = Some(at - start);
                }
                if loader_started.is_none()
                    && (line.contains("Welcome to GRUB") || line.contains("## Executing script"))
                {
                    loader_started = Some(at - start);
                }
                if kernel_start.is_none() && line.contains("Linux version") {
                    kernel_start = Some(at - start);
                }
                console.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let errs: Vec<String> = qemu_err.try_iter().map(|(_, l)| l).collect();
                panic!(
                    "QEMU exited before the marker.\nserial:\n{}\nqemu stderr:\n{}\nserver:\n{}",
                    console.join("\n"),
                    errs.join("\n"),
                    log.join("\n")
                );
            }
        }
        for (at, line) in serve_log.try_iter() {
            if first_dhcp.is_none() && line.contains("dhcp: leased") {
                first_dhcp = Some(at.saturating_duration_since(start));
            }
            log.push(line);
        }
        assert!(
            start.elapsed() < boot_timeout,
            "no {MARKER} within {boot_timeout:?}.\nserial:\n{}\nserver:\n{}",
            console.join("\n"),
            log.join("\n")
        );
    };

    // Stop the server like an operator would and wait for its clean exit.
    run(Command::new("kill").args(["-TERM", &serve_pid.to_string()]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Ok((at, line)) =
        serve_log.recv_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        if first_dhcp.is_none() && line.contains("dhcp: leased") {
            first_dhcp = Some(at.saturating_duration_since(start));
        }
        log.push(line);
    }
    let status = ns.children[serve_index].wait().expect("wait serve");
    let log = log.join("\n");
    if verbose {
        println!("server log:\n{log}");
    }
    assert!(
        status.success(),
        "tugboot serve exited with {status}:\n{log}"
    );
    assert!(log.contains("tugboot serve: stopped"), "{log}");
    assert!(log.contains("manifest published"), "{log}");
    // The arm64 loaders got their configuration generated for this MAC.
    match firmware {
        Firmware::Aavmf => assert!(log.contains("grub config"), "{log}"),
        Firmware::Uboot => assert!(log.contains("pxelinux config"), "{log}"),
        Firmware::Bios | Firmware::Uefi => {}
    }

    // The lease was made durable and the unknown machine recorded in the store.
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
    assert!(
        machine.is_some(),
        "machine {MAC} not recorded in the store:\n{log}"
    );

    println!(
        "netboot {firmware:?}: after QEMU start: first DHCP lease {first_dhcp:?}, iPXE configured {ipxe_configured:?}, GRUB/U-Boot script started {loader_started:?}, kernel started {kernel_start:?}, marker {marker_at:?}"
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
fn aavmf_pxe_loads_grub_which_boots_an_arm64_image_over_tftp() {
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
