//! A real network boot, end to end (root: network namespaces + QEMU).
//!
//! In a private network namespace (a bridge and a tap, nothing else) the real `tugboot serve`
//! binary answers a QEMU machine: firmware DHCP → iPXE → HTTP per-machine script → kernel +
//! initrd of a signed image built with the real CLI from Debian's kernel and a busybox initramfs
//! whose `/init` prints a marker on the serial console and powers off. The test passes when the
//! marker appears; it also checks that the DHCP lease was logged and the unknown machine recorded
//! in the store. Boot times are printed (docs/netboot.md), never asserted.
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

fn tugboot() -> &'static str {
    env!("CARGO_BIN_EXE_tugboot")
}

fn require_root_and_tools(extra: &[&str]) {
    let uid = Command::new("id").arg("-u").output().expect("run id");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "this test needs root (network namespaces, tap devices): run it with sudo or in CI"
    );
    for tool in ["ip", "qemu-system-x86_64", "busybox", "ldd", "dnsmasq"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(found, "missing tool {tool:?} (see tests/setup)");
    }
    for file in extra {
        assert!(
            Path::new(file).exists(),
            "missing {file} (Debian packages ipxe, ipxe-qemu, ovmf)"
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
}

fn write_setup(dir: &Path) -> PathBuf {
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
    fs::write(dir.join("initrd.cpio"), initramfs()).expect("write initrd");
    t(&[
        "image",
        "build",
        "--kernel",
        &kernel().display().to_string(),
        "--initrd",
        &p("initrd.cpio"),
        "--cmdline",
        "console=ttyS0 panic=-1",
        "--name",
        "netboot-test",
        "--version",
        "1",
        "--board",
        "x86_64-bios",
        "--board",
        "x86_64-uefi",
        "--sign",
        &p("signer.key"),
        "--store",
        &p("data/blobs"),
        "--out",
        &p("data/manifests/netboot-test.json"),
    ]);
    // Copies, not symlinks: the TFTP server refuses links that leave its root.
    for f in ["undionly.kpxe", "ipxe.efi", "snponly.efi"] {
        fs::copy(Path::new(BIOS_ROM_DIR).join(f), dir.join("tftp").join(f)).expect("copy iPXE");
    }
    fs::write(
        dir.join("profiles.toml"),
        "default_profile = \"test\"\n[profiles.test]\nimage = \"netboot-test\"\n",
    )
    .expect("write profiles");
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
    let mut need = vec!["/usr/lib/ipxe/undionly.kpxe", "/usr/lib/ipxe/snponly.efi"];
    if firmware == Firmware::Uefi {
        need.extend([OVMF_CODE, OVMF_VARS]);
    }
    require_root_and_tools(&need);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_setup(dir.path());
    let check = run(Command::new(tugboot())
        .args(["check-config", "--json", "--config"])
        .arg(&config));
    assert!(
        check.contains("\"public_url\": \"http://10.77.0.1:8080\""),
        "{check}"
    );

    let mut ns = Netns::new(match firmware {
        Firmware::Bios => "bios",
        Firmware::Uefi => "uefi",
    });
    // IPv6 router advertisements (dnsmasq, RA only: no DHCP, no DNS). Without a router on the
    // link, iPXE's IPv6 autoconfiguration keeps "Configuring" busy ~16 s after the DHCP ACK.
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

    let mut qemu = ns.command("qemu-system-x86_64");
    // -nographic: the serial port on stdout, SeaBIOS/iPXE output copied to it (sercon).
    qemu.args(["-m", "512", "-accel", "tcg", "-nographic"])
        .args(["-monitor", "none", "-no-reboot", "-boot", "n"])
        .args(["-netdev", "tap,id=n,ifname=tap0,script=no,downscript=no"]);
    let vars = dir.path().join("OVMF_VARS.fd");
    match firmware {
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
    let marker_at = loop {
        let left = (start + BOOT_TIMEOUT).saturating_duration_since(Instant::now());
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
            start.elapsed() < BOOT_TIMEOUT,
            "no {MARKER} within {BOOT_TIMEOUT:?}.\nserial:\n{}\nserver:\n{}",
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
        "netboot {firmware:?}: after QEMU start: first DHCP lease {first_dhcp:?}, iPXE configured {ipxe_configured:?}, kernel started {kernel_start:?}, marker {marker_at:?}"
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
