//! Real machines for the root-only tests: a private network namespace (a bridge, taps, nothing
//! else), `tugboot serve` inside it, QEMU guests with Debian's firmware (SeaBIOS + iPXE ROM,
//! OVMF, AAVMF, U-Boot), and initramfs images whose `/init` prints a marker on the serial
//! console and powers off. Everything is torn down on drop, also when a test fails.

#![allow(
    dead_code,
    reason = "shared by several test binaries, each using a part"
)]

pub mod fleet;

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

pub const BIOS_ROM_DIR: &str = "/usr/lib/ipxe";
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
pub const AAVMF_CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";
pub const AAVMF_VARS: &str = "/usr/share/AAVMF/AAVMF_VARS.fd";
pub const UBOOT_ARM64: &str = "/usr/lib/u-boot/qemu_arm64/u-boot.bin";
/// Filled by `tests/fetch-arm64`: vmlinuz, busybox (static), GRUB images.
pub const ARM64_CACHE: &str = "/var/cache/tugboot-arm64";

pub fn tugboot() -> &'static str {
    env!("CARGO_BIN_EXE_tugboot")
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A signing key (`<dir>/signer.key`, `.pub`) and a trust root of it alone
/// (`<dir>/root.json`), made with the CLI as an operator would.
pub fn signing_root(dir: &Path) {
    let p = |f: &str| dir.join(f).display().to_string();
    let t = |args: &[&str]| run(Command::new(tugboot()).args(args).arg("--quiet"));
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
}

pub fn require_root_and_tools(tools: &[&str], files: &[&str]) {
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
    for file in files {
        assert!(
            Path::new(file).exists(),
            "missing {file} (Debian packages ipxe, ipxe-qemu, ovmf, qemu-efi-aarch64, u-boot-qemu; \
             arm64 files: run tests/fetch-arm64, which tests/setup calls)"
        );
    }
}

/// The host's newest kernel (Debian's `linux-image-amd64`).
pub fn host_kernel() -> PathBuf {
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

/// One `newc` cpio archive, written by hand (the format is 110-byte ASCII headers).
#[derive(Default)]
pub struct Cpio {
    bytes: Vec<u8>,
    ino: u32,
}

impl Cpio {
    pub fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
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

    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, (0, 0), &[]);
    }

    pub fn file(&mut self, name: &str, data: &[u8]) {
        self.entry(name, 0o100_755, (0, 0), data);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.bytes
    }
}

fn init_script(marker: &str) -> String {
    format!(
        "#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\necho \"tugboot-cmdline: $(/bin/busybox cat /proc/cmdline)\"\necho {marker}\n/bin/busybox poweroff -f\n"
    )
}

/// An x86_64 initramfs: the host's busybox (and, when it is the dynamic build, its loader and
/// libraries) plus an `/init` that prints `marker` and powers the machine off.
pub fn initramfs_x86(marker: &str) -> Vec<u8> {
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
    cpio.file("init", init_script(marker).as_bytes());
    cpio.finish()
}

/// The arm64 initramfs: the cached static busybox and the same `/init`.
pub fn initramfs_arm64(marker: &str) -> Vec<u8> {
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
    cpio.file("init", init_script(marker).as_bytes());
    cpio.finish()
}

/// Lines of a child's output, each with the time it arrived.
pub fn lines_of(r: impl Read + Send + 'static) -> mpsc::Receiver<(Instant, String)> {
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

/// The network namespace with its bridge (10.77.0.1/24, fd77::1/64) and taps; removed (with
/// every child) on drop.
pub struct Netns {
    pub name: String,
    pub children: Vec<Child>,
    /// Other namespaces on the same bridge (deleted with this one).
    neighbours: Vec<String>,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!("tbnb-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns {
            name,
            children: Vec::new(),
            neighbours: Vec::new(),
        };
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["link", "add", "br0", "type", "bridge"],
            vec!["link", "set", "br0", "up"],
            vec!["addr", "add", "10.77.0.1/24", "dev", "br0"],
            vec!["-6", "addr", "add", "fd77::1/64", "dev", "br0", "nodad"],
        ] {
            run(Command::new("ip").args(["-n", &ns.name]).args(&args));
        }
        ns.add_tap("tap0");
        ns
    }

    /// One more tap on the bridge (a VM each).
    pub fn add_tap(&self, tap: &str) {
        for args in [
            vec!["tuntap", "add", "dev", tap, "mode", "tap"],
            vec!["link", "set", tap, "master", "br0"],
            vec!["link", "set", tap, "up"],
        ] {
            run(Command::new("ip").args(["-n", &self.name]).args(&args));
        }
    }

    /// Another namespace with one veth port on the bridge, addressed `address` (CIDR): another
    /// machine on the link, e.g. the site's own DHCP server. Returns its name.
    pub fn add_neighbour(&mut self, tag: &str, address: &str) -> String {
        let name = format!("{}-{tag}", self.name);
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(Command::new("ip").args(["netns", "add", &name]));
        self.neighbours.push(name.clone());
        let port = format!("vb-{tag}");
        run(Command::new("ip").args(["-n", &self.name]).args([
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &name,
        ]));
        for args in [
            vec!["link", "set", &port, "master", "br0"],
            vec!["link", "set", &port, "up"],
        ] {
            run(Command::new("ip").args(["-n", &self.name]).args(&args));
        }
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["addr", "add", address, "dev", "eth0"],
            vec!["link", "set", "eth0", "up"],
        ] {
            run(Command::new("ip").args(["-n", &name]).args(&args));
        }
        name
    }

    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// IPv6 router advertisements only (dnsmasq: no DHCP, no DNS). Without a router on the
    /// link, iPXE's IPv6 autoconfiguration keeps "Configuring" busy ~16 s after the DHCP ACK.
    pub fn router_advertisements(&mut self, dir: &Path) {
        let ra = self
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
            .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq (router advertisements)");
        self.children.push(ra);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for name in self.neighbours.iter().chain([&self.name]) {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

/// `tugboot serve` running in a namespace: its log as it arrives.
pub struct Serve {
    pub pid: u32,
    index: usize,
    pub log: mpsc::Receiver<(Instant, String)>,
    pub lines: Vec<String>,
}

impl Serve {
    /// Starts it and waits for `tugboot serve: ready`.
    pub fn start(ns: &mut Netns, config: &Path) -> Self {
        let serve = ns
            .command(tugboot())
            .args(["serve", "--config"])
            .arg(config)
            .env(
                "RUST_LOG",
                std::env::var("TUGBOOT_NETBOOT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tugboot serve");
        Self::adopt(ns, serve, Duration::from_secs(60))
    }

    /// Takes over a `tugboot serve` started otherwise (stderr piped; e.g. a package's unit
    /// command line in a chroot) and waits up to `wait` for `tugboot serve: ready`.
    pub fn adopt(ns: &mut Netns, mut serve: Child, wait: Duration) -> Self {
        let log = lines_of(serve.stderr.take().expect("stderr"));
        let pid = serve.id();
        ns.children.push(serve);
        let mut s = Serve {
            pid,
            index: ns.children.len() - 1,
            log,
            lines: Vec::new(),
        };
        let deadline = Instant::now() + wait;
        loop {
            let (_, line) = s
                .log
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| {
                    panic!(
                        "tugboot serve did not become ready:\n{}",
                        s.lines.join("\n")
                    )
                });
            let ready = line.contains("tugboot serve: ready");
            s.lines.push(line);
            if ready {
                return s;
            }
        }
    }

    /// Takes what the server logged so far.
    pub fn drain(&mut self) {
        self.lines.extend(self.log.try_iter().map(|(_, l)| l));
    }

    /// SIGTERM, then waits for the clean exit; returns the whole log.
    pub fn stop(mut self, ns: &mut Netns) -> String {
        run(Command::new("kill").args(["-TERM", &self.pid.to_string()]));
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Ok((_, line)) = self
            .log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.lines.push(line);
        }
        let status = ns.children[self.index].wait().expect("wait serve");
        let log = self.lines.join("\n");
        assert!(
            status.success(),
            "tugboot serve exited with {status}:\n{log}"
        );
        assert!(log.contains("tugboot serve: stopped"), "{log}");
        log
    }
}

/// A guest's firmware and how it netboots.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Firmware {
    /// SeaBIOS + the iPXE option ROM of the virtio NIC (ipxe-qemu): already iPXE.
    Bios,
    /// OVMF with its own virtio-net driver (no option ROM): PXE → TFTP snponly.efi → iPXE.
    Uefi,
    /// OVMF with PXE switched off: UEFI HTTP boot (arch 16) only.
    UefiHttp,
    /// AAVMF (arm64 EDK2): PXE → TFTP GRUB.
    Aavmf,
    /// AAVMF with PXE switched off: UEFI HTTP boot (arch 19) only.
    AavmfHttp,
    /// U-Boot (qemu_arm64): DHCP → TFTP boot.scr.uimg → `pxe get`/`pxe boot`.
    Uboot,
}

impl Firmware {
    pub fn is_arm64(self) -> bool {
        matches!(
            self,
            Firmware::Aavmf | Firmware::AavmfHttp | Firmware::Uboot
        )
    }

    /// How long a boot to the marker may take under TCG (arm64 emulation is slower; CI hosts
    /// are shared).
    pub fn timeout(self) -> Duration {
        if self.is_arm64() {
            Duration::from_secs(180)
        } else {
            Duration::from_secs(120)
        }
    }
}

/// What the serial console showed and when, seconds after QEMU started.
#[derive(Debug, Default)]
pub struct BootTimes {
    pub ipxe_configured: Option<Duration>,
    pub loader_started: Option<Duration>,
    pub kernel_started: Option<Duration>,
    pub marker: Duration,
}

/// A running guest.
pub struct Vm {
    pub firmware: Firmware,
    index: usize,
    start: Instant,
    serial: mpsc::Receiver<(Instant, String)>,
    stderr: mpsc::Receiver<(Instant, String)>,
    pub console: Vec<String>,
}

/// What a machine has beyond firmware and a NIC.
#[derive(Debug, Default, Clone)]
pub struct Hardware {
    /// A virtio disk (raw image file), kept across power cycles.
    pub disk: Option<PathBuf>,
    /// Reboots stay in the same QEMU (the machine reboots itself during its life); without,
    /// QEMU exits at the first reboot (`-no-reboot`).
    pub reboots: bool,
}

impl Vm {
    /// Powers on a guest with `firmware` and `mac` on `tap`, its state files in `dir`.
    pub fn start(ns: &mut Netns, dir: &Path, firmware: Firmware, mac: &str, tap: &str) -> Self {
        Self::start_with(ns, dir, firmware, mac, tap, &Hardware::default())
    }

    /// [`Vm::start`] with a disk and/or reboots. The firmware's variable store
    /// (`<dir>/OVMF_VARS-<mac>.fd`) is made once and kept: a second start with the same `dir`
    /// and MAC is the same machine powered on again (boot entries and all).
    pub fn start_with(
        ns: &mut Netns,
        dir: &Path,
        firmware: Firmware,
        mac: &str,
        tap: &str,
        hw: &Hardware,
    ) -> Self {
        let mut qemu = ns.command(if firmware.is_arm64() {
            "qemu-system-aarch64"
        } else {
            "qemu-system-x86_64"
        });
        // -nographic: the serial port on stdout, SeaBIOS/iPXE output copied to it (sercon).
        qemu.args(["-accel", "tcg", "-nographic", "-monitor", "none"]);
        if !hw.reboots {
            qemu.arg("-no-reboot");
        }
        if let Some(disk) = &hw.disk {
            qemu.args([
                "-drive",
                &format!("if=virtio,format=raw,file={},cache=unsafe", disk.display()),
            ]);
        }
        qemu.args([
            "-netdev",
            &format!("tap,id=n,ifname={tap},script=no,downscript=no"),
        ]);
        let tag = mac.replace(':', "");
        let copy = |from: &str, name: &str| -> PathBuf {
            let to = dir.join(format!("{name}-{tag}.fd"));
            if !to.exists() {
                fs::copy(from, &to).expect("copy firmware variables");
            }
            to
        };
        // EDK2's PXE off: HTTP boot is then the first network boot option.
        let no_pxe = [
            "-fw_cfg",
            "name=opt/org.tianocore/IPv4PXESupport,string=no",
            "-fw_cfg",
            "name=opt/org.tianocore/IPv6PXESupport,string=no",
        ];
        match firmware {
            Firmware::Bios => {
                qemu.args(["-m", "512", "-boot", "n", "-M", "pc"])
                    .args(["-device", &format!("virtio-net-pci,netdev=n,mac={mac}")]);
            }
            Firmware::Uefi | Firmware::UefiHttp => {
                let vars = copy(OVMF_VARS, "OVMF_VARS");
                qemu.args(["-m", "512", "-boot", "n", "-M", "q35"])
                    .args([
                        "-drive",
                        &format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
                        "-drive",
                        &format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
                    ])
                    // No option ROM: OVMF's own driver does PXE or HTTP boot.
                    .args([
                        "-device",
                        &format!("virtio-net-pci,netdev=n,mac={mac},romfile="),
                    ]);
                if firmware == Firmware::UefiHttp {
                    qemu.args(no_pxe);
                }
            }
            Firmware::Aavmf | Firmware::AavmfHttp => {
                // Both pflash banks must be 64 MiB; the vars bank is a writable copy.
                let vars = copy(AAVMF_VARS, "AAVMF_VARS");
                qemu.args(["-M", "virt", "-cpu", "cortex-a57", "-m", "1024"])
                    .args([
                        "-drive",
                        &format!("if=pflash,format=raw,unit=0,readonly=on,file={AAVMF_CODE}"),
                        "-drive",
                        &format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
                    ])
                    .args([
                        "-device",
                        &format!("virtio-net-pci,netdev=n,mac={mac},romfile="),
                    ]);
                if firmware == Firmware::AavmfHttp {
                    qemu.args(no_pxe);
                }
            }
            Firmware::Uboot => {
                // virtio-net-device (MMIO): with virtio-net-pci U-Boot 2023.01 uses the MAC
                // 52:52:52:52:52:52 instead of QEMU's.
                qemu.args(["-M", "virt", "-cpu", "cortex-a57", "-m", "1024"])
                    .args(["-bios", UBOOT_ARM64])
                    .args(["-device", &format!("virtio-net-device,netdev=n,mac={mac}")]);
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
        let stderr = lines_of(child.stderr.take().expect("stderr"));
        ns.children.push(child);
        Vm {
            firmware,
            index: ns.children.len() - 1,
            start,
            serial,
            stderr,
            console: Vec::new(),
        }
    }

    /// Powers the guest off (if it did not itself) and waits for QEMU to exit, so its tap is
    /// free for the next one.
    pub fn stop(self, ns: &mut Netns) {
        let child = &mut ns.children[self.index];
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Power cut: QEMU killed at once (nothing flushed by the guest).
    pub fn kill(mut self, ns: &mut Netns) {
        self.cut_power(ns);
    }

    /// [`Vm::kill`] in place (the guest is then gone; start another).
    pub fn cut_power(&mut self, ns: &mut Netns) {
        let child = &mut ns.children[self.index];
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Waits for `marker` on the serial console within `within` from now; returns when it came
    /// (since QEMU started) and the console lines that came meanwhile.
    pub fn wait_within(
        &mut self,
        marker: &str,
        within: Duration,
        serve: &mut Serve,
    ) -> (Duration, Vec<String>) {
        let from = self.console.len();
        let deadline = Instant::now() + within;
        let t = self.wait_until(marker, deadline, serve);
        (t.marker, self.console[from..].to_vec())
    }

    /// Waits for `marker` on the serial console (not in an `echo` line), collecting the
    /// server's log meanwhile; panics with both on timeout or if QEMU exits first.
    /// `TUGBOOT_NETBOOT_VERBOSE=1` prints the console as it arrives.
    pub fn wait_for(&mut self, marker: &str, serve: &mut Serve) -> BootTimes {
        let deadline = self.start + self.firmware.timeout();
        self.wait_until(marker, deadline, serve)
    }

    /// Takes what the serial console showed so far into `console`.
    pub fn drain(&mut self) {
        self.console.extend(self.serial.try_iter().map(|(_, l)| l));
    }

    fn wait_until(&mut self, marker: &str, deadline: Instant, serve: &mut Serve) -> BootTimes {
        let verbose = std::env::var_os("TUGBOOT_NETBOOT_VERBOSE").is_some();
        let mut t = BootTimes::default();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .serial
                .recv_timeout(left.min(Duration::from_millis(500)))
            {
                Ok((at, line)) => {
                    let since = at - self.start;
                    if line.contains(marker) && !line.contains("echo") {
                        t.marker = since;
                        self.console.push(line);
                        return t;
                    }
                    if verbose {
                        println!("[{:>7.3}] {}", since.as_secs_f64(), line.trim_end());
                    }
                    if t.ipxe_configured.is_none() && line.contains("Configuring (net0") {
                        t.ipxe_configured = Some(since);
                    }
                    if t.loader_started.is_none()
                        && (line.contains("Welcome to GRUB")
                            || line.contains("## Executing script"))
                    {
                        t.loader_started = Some(since);
                    }
                    if t.kernel_started.is_none()
                        && (line.contains("Linux version") || line.contains("EFI stub: Booting"))
                    {
                        t.kernel_started = Some(since);
                    }
                    self.console.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    serve.drain();
                    let errs: Vec<String> = self.stderr.try_iter().map(|(_, l)| l).collect();
                    panic!(
                        "QEMU ({:?}) exited before {marker}.\nserial:\n{}\nqemu stderr:\n{}\nserver:\n{}",
                        self.firmware,
                        self.console.join("\n"),
                        errs.join("\n"),
                        serve.lines.join("\n")
                    );
                }
            }
            serve.drain();
            assert!(
                Instant::now() < deadline,
                "{:?}: no {marker} in time.\nserial:\n{}\nserver:\n{}",
                self.firmware,
                self.console.join("\n"),
                serve.lines.join("\n")
            );
        }
    }
}
