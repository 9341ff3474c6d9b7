//! A device's whole life in a real VM (root: network namespaces + QEMU): netboot install,
//! enrollment, first boot from its disk, an OTA through Debian's GRUB, and two broken updates
//! the device survives without a human.
//!
//! The real `tugboot serve` (DHCP, TFTP, HTTP, device API) in a private namespace; the real
//! static `tugboot-agent`; OVMF with a persistent variable store and a virtio disk; Debian's
//! kernel, busybox-static and monolithic grubx64.efi. Every image is built and pushed with the
//! real CLI, every operator step is a CLI command:
//!
//! 1. `install`: the machine (declared with an `install` profile, approved by MAC) PXE-boots
//!    the installer, which enrolls, partitions the disk, writes slot A, the ESP and the data
//!    partition, adds a boot entry and reports `installed`;
//! 2. `first-boot`: it reboots into GRUB → slot A (os v1);
//! 3. `enroll`: its agent reports over mutual TLS (status, inventory → attested facts);
//! 4. `update-committed`: rollout of v2 → slot B written, GRUB trial, healthy → committed;
//! 5. `rollback`: v3 fails its health check → the agent rolls back to B, reports it;
//! 6. `rollout-paused`: the v3 rollout pauses at its error threshold; then v4, whose kernel
//!    panics at boot (init exits): GRUB's countdown falls back to B, reported, paused too;
//! 7. `power-cut-writing`, `power-cut-armed`, `power-cut-trial`: QEMU killed while slot A is
//!    being written (3 MiB in; the download then resumes from its checkpoint), right after the agent armed the trial
//!    (it says it reboots), and during the trial boot of the next version: each ends on a
//!    bootable, verified slot (v2, then v5 committed, then v5 again) and a truthful report.
//!
//! `TUGBOOT_LIFECYCLE_DIR=DIR` keeps everything in DIR and writes `DIR/lifecycle.json` (steps,
//! the machine and the rollouts as the server's API shows them): what
//! `pxe-server/quickstart --lifecycle` runs. Times are printed, never asserted.
//!
//! `cargo test -p tugboot --test lifecycle -- --ignored --nocapture` (as root).

mod vm;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vm::{
    ARM64_CACHE, BIOS_ROM_DIR, Firmware, Hardware, Netns, OVMF_CODE, OVMF_VARS, Serve, UBOOT_ARM64,
    Vm, host_kernel, require_root_and_tools, run, tugboot,
};

const API: &str = "https://10.77.0.1:8443";

/// The machine whose life is played: its firmware, board and what its images are made of.
struct Target {
    firmware: Firmware,
    board: &'static str,
    mac: &'static str,
    /// The agent's Rust target.
    triple: &'static str,
    kernel: PathBuf,
    modules: PathBuf,
    busybox: String,
    /// The installed OS's (and the installer's) kernel command line.
    cmdline: &'static str,
    /// Modules the OS image loads.
    os_modules: &'static [&'static str],
    /// Modules the installer loads (`None`: its defaults).
    installer_modules: Option<&'static [&'static str]>,
    /// `tugboot installer build` arguments for the boot side (GRUB ESP or U-Boot script).
    boot_args: Vec<String>,
    /// The bootloader's name in step details.
    loader: &'static str,
    /// Size of partition 1 (the ESP or boot partition), MiB.
    esp_mib: u64,
}

impl Target {
    /// OVMF with a persistent variable store; Debian's GRUB on the ESP.
    fn x86_64_uefi() -> Self {
        let kernel = host_kernel();
        Target {
            firmware: Firmware::Uefi,
            board: "x86_64-uefi",
            mac: "52:54:00:1f:00:01",
            triple: "x86_64-unknown-linux-musl",
            modules: modules_dir(&kernel),
            kernel,
            busybox: format!("{ARM64_CACHE}/busybox-x86_64"),
            cmdline: "console=ttyS0 panic=3",
            os_modules: &["virtio_pci", "virtio_blk", "virtio_net", "ext4", "efivarfs"],
            installer_modules: None,
            boot_args: vec![
                "--grub-efi".into(),
                format!("{ARM64_CACHE}/grubx64-stock.efi"),
            ],
            loader: "GRUB",
            esp_mib: 64,
        }
    }

    /// SeaBIOS with the iPXE ROM; Debian's GRUB for BIOS embedded in the disk's head.
    fn x86_64_bios() -> Self {
        let uefi = Target::x86_64_uefi();
        Target {
            firmware: Firmware::Bios,
            board: "x86_64-bios",
            mac: "52:54:00:1f:00:03",
            boot_args: vec!["--grub-pc".into(), format!("{ARM64_CACHE}/grub/i386-pc")],
            loader: "GRUB (BIOS)",
            ..uefi
        }
    }

    /// Debian's U-Boot for qemu_arm64 (no boot counter, no squashfs): tugboot's boot script on
    /// a FAT boot partition, slot kernels copied there by the agent.
    fn arm64_uboot() -> Self {
        const MODULES: &[&str] = &[
            "virtio_mmio",
            "virtio_pci",
            "virtio_blk",
            "virtio_net",
            "ext4",
            "vfat",
            "nls_cp437",
            "nls_ascii",
            "squashfs",
        ];
        Target {
            firmware: Firmware::Uboot,
            board: "qemu-arm64-uboot",
            mac: "52:54:00:1f:00:02",
            triple: "aarch64-unknown-linux-musl",
            kernel: PathBuf::from(format!("{ARM64_CACHE}/vmlinuz")),
            modules: PathBuf::from(format!("{ARM64_CACHE}/modules")),
            busybox: format!("{ARM64_CACHE}/busybox"),
            cmdline: "console=ttyAMA0 panic=3",
            os_modules: MODULES,
            installer_modules: Some(MODULES),
            // Two arm64 kernels (32 MB uncompressed Images) and initrds.
            boot_args: vec!["--uboot-script".into(), "--esp-mib".into(), "160".into()],
            loader: "U-Boot",
            esp_mib: 160,
        }
    }
}

/// The static agent for `triple`, built (or found up to date) by cargo.
fn agent_binary(triple: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).current_dir(&root).args([
        "build",
        "--quiet",
        "--locked",
        "--profile",
        "release-agent",
        "-p",
        "tugboot-agent",
        "--target",
        triple,
    ]));
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    target.join(format!("{triple}/release-agent/tugboot-agent"))
}

fn modules_dir(kernel: &Path) -> PathBuf {
    let release = kernel
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .expect("kernel named vmlinuz-<release>");
    PathBuf::from(format!("/lib/modules/{release}"))
}

/// One version of the reference OS (pxe-server/examples/os) as a slot image: its initramfs is
/// the whole system; `init` and `health` say how well it works.
fn os_image(dir: &Path, t: &Target, agent: &Path, version: u64, init: &str, health: &str) {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/os");
    let p = |f: &str| dir.join(f).display().to_string();
    let root = dir.join(format!("os{version}/rootfs"));
    fs::create_dir_all(root.join("boot")).expect("mkdir");
    fs::copy(&t.kernel, root.join("boot/vmlinuz")).expect("kernel");
    let release = dir.join(format!("os{version}/os-release"));
    fs::write(&release, format!("os v{version}\n")).expect("os-release");
    // The image's agent settings: poll and report often, so the test does not wait minutes.
    let settings = dir.join(format!("os{version}/agent-settings.toml"));
    fs::write(
        &settings,
        "poll_interval_secs = 2\nstatus_interval_secs = 20\ndownload_checkpoint_mib = 1\n",
    )
    .expect("settings");
    let ex = |f: &str| examples.join(f).display().to_string();
    let mut args = vec![
        "initramfs".to_owned(),
        "build".into(),
        "--init".into(),
        ex(init),
        "--busybox".into(),
        t.busybox.clone(),
        "--modules".into(),
        t.modules.display().to_string(),
        "--file".into(),
        format!("{}:/usr/bin/tugboot-agent", agent.display()),
        "--file".into(),
        format!("{}:/etc/tugboot/health.toml", ex(health)),
        "--file".into(),
        format!("{}:/usr/share/udhcpc/default.script", ex("udhcpc.script")),
        "--file".into(),
        format!("{}:/etc/tugboot/os-release", release.display()),
        "--file".into(),
        format!("{}:/etc/tugboot/agent-settings.toml", settings.display()),
        "--out".into(),
        root.join("boot/initrd.img").display().to_string(),
    ];
    for m in t.os_modules {
        args.extend(["--module".into(), (*m).into()]);
    }
    run(Command::new(tugboot()).args(&args).arg("--quiet"));
    run(Command::new(tugboot()).arg("--quiet").args([
        "image",
        "build",
        "--rootfs",
        &root.display().to_string(),
        "--name",
        "os",
        "--version",
        &version.to_string(),
        "--board",
        t.board,
        "--sign",
        &p("signer.key"),
        "--store",
        &p("local-blobs"),
        "--out",
        &p(&format!("staging/os-{version}.json")),
    ]));
}

/// Keys, CA, the installer and OS images v1..=`versions`, profiles and serve.toml in `dir`.
fn setup(dir: &Path, t: &Target, versions: u64) {
    let p = |f: &str| dir.join(f).display().to_string();
    let tb = |args: &[String]| run(Command::new(tugboot()).args(args).arg("--quiet"));
    for sub in ["staging", "tftp"] {
        fs::create_dir_all(dir.join(sub)).expect("mkdir");
    }
    vm::signing_root(dir);
    tb(&["ca".into(), "init".into(), "--dir".into(), p("ca")]);
    let agent = agent_binary(t.triple);
    let mut args: Vec<String> = [
        "installer",
        "build",
        "--kernel",
        &t.kernel.display().to_string(),
        "--modules",
        &t.modules.display().to_string(),
        "--busybox",
        &t.busybox,
        "--agent",
        &agent.display().to_string(),
        "--server",
        API,
        "--ca",
        &p("ca/ca.pem"),
        "--trust-root",
        &p("root.json"),
        "--disk",
        "/dev/vda",
        "--slot-mib",
        "96",
        "--cmdline",
        t.cmdline,
        "--os-cmdline",
        t.cmdline,
        "--board",
        t.board,
        "--version",
        "1",
        "--sign",
        &p("signer.key"),
        "--store",
        &p("local-blobs"),
        "--out",
        &p("staging/installer.json"),
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(t.boot_args.iter().cloned());
    for m in t.installer_modules.unwrap_or_default() {
        args.extend(["--module".into(), (*m).into()]);
    }
    tb(&args);
    // v3's health check fails; v4's init exits (the kernel panics at boot).
    for version in 1..=versions {
        let (init, health) = match version {
            3 => ("init", "health-broken.toml"),
            4 => ("init-panic", "health-ok.toml"),
            _ => ("init", "health-ok.toml"),
        };
        os_image(dir, t, &agent, version, init, health);
    }
    fs::copy(
        Path::new(BIOS_ROM_DIR).join("snponly.efi"),
        dir.join("tftp/snponly.efi"),
    )
    .expect("copy iPXE");
    let (mac, board) = (t.mac, t.board);
    fs::write(
        dir.join("profiles.toml"),
        format!(
            r#"
[profiles.fleet]
template = "install"
image = "os"
installer = "installer"

[[machines]]
name = "dev-1"
mac = "{mac}"
board = "{board}"
profile = "fleet"
"#
        ),
    )
    .expect("profiles");
    fs::write(
        dir.join("serve.toml"),
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

[api]
listen = "10.77.0.1:8443"
ca_dir = "ca"
"#,
    )
    .expect("serve.toml");
}

/// The steps of the device's life, in order (`lifecycle.json` names them so).
const STEPS: &[&str] = &[
    "install",
    "first-boot",
    "enroll",
    "update-committed",
    "rollback",
    "rollout-paused",
    "power-cut-writing",
    "power-cut-armed",
    "power-cut-trial",
];

/// The steps that happened, how long each took; written to `lifecycle.json` when kept — also
/// when the test fails (then the missing steps are `"ok": false`).
struct Steps {
    names: &'static [&'static str],
    start: Instant,
    last: Instant,
    done: Vec<Value>,
    out: Option<PathBuf>,
    finished: bool,
}

impl Steps {
    fn ok(&mut self, name: &str, detail: &str) {
        assert_eq!(
            self.names.get(self.done.len()),
            Some(&name),
            "steps out of order"
        );
        let now = Instant::now();
        let secs = (now - self.last).as_secs_f64();
        println!(
            "lifecycle: {name:<17} ok  {secs:>6.1} s  (at {:>6.1} s)  {detail}",
            (now - self.start).as_secs_f64()
        );
        self.done
            .push(json!({"name": name, "ok": true, "seconds": secs, "detail": detail}));
        self.last = now;
    }

    fn write(&self, machine: &Value, rollouts: &Value, agent: &Value) {
        let Some(dir) = &self.out else { return };
        let mut steps = self.done.clone();
        for name in &self.names[self.done.len()..] {
            steps.push(
                json!({"name": name, "ok": false, "seconds": null, "detail": "did not happen"}),
            );
        }
        let doc = json!({"steps": steps, "machine": machine, "rollouts": rollouts, "agent": agent});
        let path = dir.join("lifecycle.json");
        fs::write(&path, serde_json::to_vec_pretty(&doc).expect("json")).expect("lifecycle.json");
        println!("lifecycle: wrote {}", path.display());
    }

    fn finish(&mut self, machine: &Value, rollouts: &Value, agent: &Value) {
        self.write(machine, rollouts, agent);
        self.finished = true;
    }
}

impl Drop for Steps {
    fn drop(&mut self) {
        if !self.finished {
            self.write(&Value::Null, &Value::Null, &Value::Null);
        }
    }
}

/// Waits for a line of the server's log holding `needle`; returns it. The VM's console is
/// collected meanwhile (and shown if the line never comes).
fn wait_log(serve: &mut Serve, vm: &mut Vm, needle: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        vm.drain();
        let left = deadline.saturating_duration_since(Instant::now());
        match serve.log.recv_timeout(left.min(Duration::from_millis(500))) {
            Ok((_, line)) => {
                serve.lines.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
            Err(_) if Instant::now() < deadline => {}
            Err(_) => {
                let tail = vm.console.len().saturating_sub(200);
                panic!(
                    "no {needle:?} in the server's log within {within:?}.\nserial (last \
                     lines):\n{}\nserver:\n{}",
                    vm.console[tail..].join("\n"),
                    serve.lines.join("\n")
                );
            }
        }
    }
}

/// Waits until slot A of `disk.img` (the installer's layout: after a 1 MiB gap and the
/// `esp_mib` ESP) holds the slot artifact of `manifest` at `offset`; says how far it got.
fn slot_written_past(
    dir: &Path,
    esp_mib: u64,
    manifest: &str,
    offset: usize,
    within: Duration,
) -> String {
    use std::os::unix::fs::FileExt as _;
    let m: Value =
        serde_json::from_slice(&fs::read(dir.join(manifest)).expect("manifest")).expect("json");
    let digest = m["signed"]["artifacts"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["role"] == "slot"))
        .and_then(|a| a["sha256"].as_str())
        .expect("slot artifact")
        .to_owned();
    let blob = fs::read(dir.join("local-blobs/sha256").join(&digest)).expect("blob");
    assert!(
        blob.len() > offset + 4096,
        "the slot image is too small to cut"
    );
    let want = &blob[offset..offset + 4096];
    let disk = fs::File::open(dir.join("disk.img")).expect("disk");
    let slot_a: u64 = (1 + esp_mib) << 20;
    let mut got = vec![0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        disk.read_exact_at(&mut got, slot_a + offset as u64)
            .expect("read disk");
        if got == want {
            return format!("{} MiB of {} MiB", offset >> 20, blob.len() >> 20);
        }
        assert!(
            Instant::now() < deadline,
            "slot A never got past {offset} bytes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `key=value` of a tracing line (`-` when absent).
fn field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or("-")
        .to_owned()
}

/// A device's life in progress: the lab, the server, the VM, the steps so far.
struct Life {
    t: Target,
    dir: PathBuf,
    ns: Netns,
    serve: Serve,
    vm: Vm,
    hw: Hardware,
    steps: Steps,
    /// Peak RSS the agent reported (KiB): the installer's, and the largest of the installed
    /// agent's (it says so when it reboots after an install).
    installer_rss: Option<u64>,
    agent_rss: Option<u64>,
    _tmp: tempfile::TempDir,
}

fn minutes(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

/// The value of fact `k` in `machines show --json` output.
fn fact(m: &Value, k: &str) -> Option<String> {
    m["machine"]["facts"][k]["value"]
        .as_str()
        .map(str::to_owned)
}

fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_secs(2));
    }
}

impl Life {
    /// Sets up `t`'s lab (images v1..=`versions`), starts the server, pushes the installer
    /// and v1, approves the machine and powers it on with an empty 1 GiB disk.
    fn begin(t: Target, versions: u64, names: &'static [&'static str]) -> Life {
        let kept = std::env::var_os("TUGBOOT_LIFECYCLE_DIR").map(PathBuf::from);
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = kept.clone().unwrap_or_else(|| tmp.path().to_path_buf());
        fs::create_dir_all(&dir).expect("mkdir");
        setup(&dir, &t, versions);
        let mut ns = Netns::new("life");
        ns.router_advertisements(&dir);
        let serve = Serve::start(&mut ns, &dir.join("serve.toml"));
        let disk = dir.join("disk.img");
        let f = fs::File::create(&disk).expect("disk");
        f.set_len(1 << 30).expect("sparse 1 GiB disk");
        drop(f);
        let hw = Hardware {
            disk: Some(disk),
            reboots: true,
        };
        let steps = Steps {
            names,
            start: Instant::now(),
            last: Instant::now(),
            done: Vec::new(),
            out: kept,
            finished: false,
        };
        let vm = Vm::start_with(&mut ns, &dir, t.firmware, t.mac, "tap0", &hw);
        let life = Life {
            t,
            dir,
            ns,
            serve,
            vm,
            hw,
            steps,
            installer_rss: None,
            agent_rss: None,
            _tmp: tmp,
        };
        // The VM only asks for DHCP after its firmware started: pushed and approved before.
        life.push("staging/installer.json");
        life.push("staging/os-1.json");
        life.op(&["machines", "approve", "dev-1"]);
        life
    }

    fn path(&self, f: &str) -> String {
        self.dir.join(f).display().to_string()
    }

    fn op(&self, args: &[&str]) -> String {
        run(self
            .ns
            .command(tugboot())
            .args(args)
            .env("TUGBOOT_SERVER", API)
            .env("TUGBOOT_TOKEN_FILE", self.path("data/api/operator-token"))
            .env("TUGBOOT_CA_CERT", self.path("ca/ca.pem")))
    }

    fn push(&self, manifest: &str) {
        self.op(&[
            "images",
            "push",
            &self.path(manifest),
            "--store",
            &self.path("local-blobs"),
        ]);
    }

    fn machine(&self) -> Value {
        serde_json::from_str(&self.op(&["machines", "show", "dev-1", "--json"])).expect("json")
    }

    fn rollout(&self, version: &str) -> i64 {
        let selector = format!("board={}", self.t.board);
        let out = self.op(&[
            "rollout",
            "create",
            "--image",
            "os",
            "--version",
            version,
            "--selector",
            &selector,
            "--stage",
            "100",
            "--max-failure-permille",
            "0",
            "--min-reports",
            "1",
            "--json",
        ]);
        let v: Value = serde_json::from_str(&out).expect("json");
        v["id"].as_i64().unwrap_or_else(|| panic!("{v}"))
    }

    /// Pushes os v`version` and starts its rollout; the rollout's id.
    fn roll_out(&self, version: &str) -> i64 {
        self.push(&format!("staging/os-{version}.json"));
        self.rollout(version)
    }

    /// Waits until rollout `id` is in `state`.
    fn wait_rollout(&self, id: i64, state: &str, within: Duration) {
        wait_until(&format!("rollout {id} {state}"), within, || {
            self.rollout_state(id) == state
        });
    }

    fn rollout_state(&self, id: i64) -> String {
        let v: Value =
            serde_json::from_str(&self.op(&["rollout", "status", &id.to_string(), "--json"]))
                .expect("json");
        v["state"].as_str().unwrap_or_default().to_owned()
    }

    fn wait_vm(&mut self, marker: &str, within: Duration) {
        self.vm.wait_within(marker, within, &mut self.serve);
    }

    /// Takes the agent's peak RSS figures from the current VM's console.
    fn note_rss(&mut self) {
        self.vm.drain();
        let kib = |line: &str, tag: &str| -> Option<u64> {
            let rest = &line[line.find(tag)? + tag.len()..];
            rest.split_whitespace().next()?.parse().ok()
        };
        for line in &self.vm.console {
            if let Some(k) = kib(line, "installer peak RSS ") {
                self.installer_rss = self.installer_rss.max(Some(k));
            } else if let Some(k) = kib(line, "(peak RSS ") {
                self.agent_rss = self.agent_rss.max(Some(k));
            }
        }
    }

    /// Power cut, then power on again (same disk, same firmware variables).
    fn power_cycle(&mut self) {
        self.note_rss();
        self.vm.cut_power(&mut self.ns);
        self.vm = Vm::start_with(
            &mut self.ns,
            &self.dir,
            self.t.firmware,
            self.t.mac,
            "tap0",
            &self.hw,
        );
    }

    /// Install → first boot → enroll → v2 committed → v3 rolled back (when its step is in
    /// this life's list: the agent's health-check rollback does not depend on the
    /// bootloader) → v4 (kernel panic) fallen back, rollouts paused: the life every board
    /// must live.
    fn install_update_and_fall_back(&mut self) {
        let loader = self.t.loader;
        self.wait_vm("tugboot-installer: installed", minutes(6));
        self.steps.ok(
            "install",
            &format!(
                "netbooted installer: disk partitioned, os v1 in slot A, {loader} boot side, reported"
            ),
        );
        self.wait_vm("tugboot-os: os v1 booted from slot A", minutes(3));
        self.steps.ok(
            "first-boot",
            &format!("from the disk: {loader}, slot A, os v1"),
        );

        wait_until("the installed agent's status report", minutes(2), || {
            fact(&self.machine(), "image").as_deref() == Some("os@1")
        });
        let m = self.machine();
        assert_eq!(fact(&m, "installed").as_deref(), Some("os@1"), "{m}");
        assert_eq!(fact(&m, "board").as_deref(), Some(self.t.board), "{m}");
        self.steps.ok(
            "enroll",
            "certificate from the installer; status and inventory over mTLS",
        );

        let r2 = self.roll_out("2");
        self.wait_vm("tugboot-os: os v2 booted from slot B", minutes(5));
        self.wait_rollout(r2, "completed", minutes(2));
        self.steps.ok(
            "update-committed",
            &format!("v2 into slot B, {loader} trial boot, healthy, committed; rollout completed"),
        );

        if self.steps.names.contains(&"rollback") {
            self.health_rollback();
        }

        let r4 = self.roll_out("4");
        self.wait_vm("tugboot-os: broken init", minutes(5));
        self.wait_vm("tugboot-os: os v2 booted from slot B", minutes(4));
        self.wait_rollout(r4, "paused", minutes(2));
        self.steps.ok(
            "rollout-paused",
            &format!("v4 panicked at boot; {loader} fell back to v2; reported; rollout paused"),
        );
        let m = self.machine();
        assert_eq!(fact(&m, "image").as_deref(), Some("os@2"), "{m}");
        self.op(&["rollout", "abort", &r4.to_string()]);
    }

    /// v3 fails its health check: the agent rolls back; the rollout pauses.
    fn health_rollback(&mut self) {
        let r3 = self.roll_out("3");
        self.wait_vm("tugboot-os: os v3 booted from slot A", minutes(5));
        self.wait_vm("tugboot-os: os v2 booted from slot B", minutes(4));
        self.wait_rollout(r3, "paused", minutes(2));
        self.steps.ok(
            "rollback",
            "v3 failed its health check; the agent rolled back to v2 and reported it",
        );
        self.op(&["rollout", "abort", &r3.to_string()]);
    }

    /// Power cuts (QEMU killed) at three moments of an OTA; each must end on a bootable,
    /// verified slot and a truthful report. Slot A holds the failed v4, B the committed v2.
    fn power_cuts(&mut self) {
        let loader = self.t.loader;
        let r5 = self.roll_out("5");
        // 1. While slot A is being written: once the disk shows v5's bytes past 3 MiB into slot A
        //    (the agent syncs and records a checkpoint every MiB), before it finished.
        wait_log(
            &mut self.serve,
            &mut self.vm,
            "device artifact download",
            minutes(3),
        );
        let written = slot_written_past(
            &self.dir,
            self.t.esp_mib,
            "staging/os-5.json",
            3 << 20,
            minutes(3),
        );
        self.power_cycle();
        self.wait_vm("tugboot-os: os v2 booted from slot B", minutes(3));
        let resumed = field(
            &wait_log(
                &mut self.serve,
                &mut self.vm,
                "device artifact download",
                minutes(3),
            ),
            "range",
        );
        let from: u64 = resumed
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("the download after the cut is no resume: range {resumed}"));
        assert!(from >= 1 << 20, "resumed from {from}");
        self.steps.ok(
            "power-cut-writing",
            &format!(
                "cut {written} into slot A; came back on the committed v2 in B; the download \
                 resumed from byte {from}"
            ),
        );
        // 2. Right after arming: the agent armed the trial and says it reboots.
        self.wait_vm("tugboot-agent: rebooting", minutes(5));
        self.power_cycle();
        self.wait_vm("tugboot-os: os v5 booted from slot A", minutes(3));
        self.wait_rollout(r5, "completed", minutes(3));
        let m = self.machine();
        assert_eq!(fact(&m, "image").as_deref(), Some("os@5"), "{m}");
        assert_eq!(fact(&m, "slot").as_deref(), Some("A"), "{m}");
        self.steps.ok(
            "power-cut-armed",
            &format!("cut right after arming; {loader}'s trial booted v5 from A, committed"),
        );
        // 3. During the trial boot of v6 in B, before the agent could confirm it.
        let r6 = self.roll_out("6");
        self.wait_vm("tugboot-os: os v6 booted from slot B", minutes(5));
        self.power_cycle();
        self.wait_vm("tugboot-os: os v5 booted from slot A", minutes(3));
        self.wait_rollout(r6, "paused", minutes(3));
        let m = self.machine();
        assert_eq!(fact(&m, "image").as_deref(), Some("os@5"), "{m}");
        self.steps.ok(
            "power-cut-trial",
            &format!(
                "cut during v6's trial boot; {loader} fell back to v5 in A; reported; rollout \
                 paused"
            ),
        );
    }

    /// `uboot.env` on the boot partition as Debian's `fw_printenv` reads it (the last writer
    /// may be U-Boot's `env export` or the agent).
    fn uboot_env(&self) -> String {
        let env = self.dir.join("uboot.env");
        run(Command::new("mcopy")
            .arg("-o")
            .arg("-i")
            .arg(format!("{}@@1M", self.dir.join("disk.img").display()))
            .arg("::/uboot.env")
            .arg(&env));
        let config = self.dir.join("fw_env.config");
        fs::write(&config, format!("{} 0x0 0x200\n", env.display())).expect("fw_env.config");
        run(Command::new("fw_printenv").arg("-c").arg(&config))
    }

    fn finish(mut self) {
        self.note_rss();
        println!(
            "lifecycle: agent peak RSS: installer {} KiB, installed agent {} KiB (largest reported)",
            self.installer_rss.map_or("-".into(), |k| k.to_string()),
            self.agent_rss.map_or("-".into(), |k| k.to_string())
        );
        let agent = json!({
            "installer_peak_rss_kib": self.installer_rss,
            "agent_peak_rss_kib": self.agent_rss,
        });
        let m = self.machine();
        let rollouts: Value =
            serde_json::from_str(&self.op(&["rollout", "status", "--json"])).expect("json");
        self.vm.kill(&mut self.ns);
        self.serve.stop(&mut self.ns);
        self.steps.finish(&m, &rollouts, &agent);
    }
}

/// The steps of the BIOS machine: the bootloader's part of the life (the agent's health-check
/// rollback and the power cuts are run on UEFI and U-Boot).
const BIOS_LIFE: &[&str] = &[
    "install",
    "first-boot",
    "enroll",
    "update-committed",
    "rollout-paused",
];

#[test]
#[ignore = "root: network namespaces + QEMU"]
fn a_device_installs_enrolls_updates_and_survives_two_broken_updates() {
    let cache = |f: &str| format!("{ARM64_CACHE}/{f}");
    let files = [cache("busybox-x86_64"), cache("grubx64-stock.efi")];
    let mut need: Vec<&str> = files.iter().map(String::as_str).collect();
    need.extend([OVMF_CODE, OVMF_VARS, "/usr/lib/ipxe/snponly.efi"]);
    require_root_and_tools(
        &[
            "ip",
            "qemu-system-x86_64",
            "dnsmasq",
            "mksquashfs",
            "mformat",
            "mcopy",
        ],
        &need,
    );
    let mut life = Life::begin(Target::x86_64_uefi(), 6, STEPS);
    life.install_update_and_fall_back();
    life.power_cuts();
    life.finish();
}

/// The same life on arm64 through Debian's stock U-Boot (qemu_arm64), which has no boot
/// counter and cannot read squashfs: tugboot's boot script (firmware/boot/uboot-ab.cmd) on
/// the boot partition counts the trial boots in `uboot.env` and loads each slot's kernel from
/// the copy the agent made there before arming it.
#[test]
#[ignore = "root: network namespaces + QEMU"]
fn an_arm64_uboot_device_installs_updates_and_falls_back_through_its_boot_script() {
    let cache = |f: &str| format!("{ARM64_CACHE}/{f}");
    let files = [
        cache("busybox"),
        cache("vmlinuz"),
        cache("modules/modules.dep"),
    ];
    let mut need: Vec<&str> = files.iter().map(String::as_str).collect();
    need.push(UBOOT_ARM64);
    require_root_and_tools(
        &[
            "ip",
            "qemu-system-aarch64",
            "mksquashfs",
            "mcopy",
            "fw_printenv",
        ],
        &need,
    );
    let mut life = Life::begin(Target::arm64_uboot(), 6, STEPS);
    life.install_update_and_fall_back();
    life.power_cuts();
    // The environment as left on the disk, once the machine is off.
    life.vm.cut_power(&mut life.ns);
    let env = life.uboot_env();
    assert!(env.contains("tugboot_slot=A\n"), "{env}");
    assert!(env.contains("upgrade_available=0\n"), "{env}");
    life.finish();
}

/// The bootloader's part of the life on a BIOS machine (install, first boot, an OTA committed
/// through a trial boot, a kernel panic fallen back): Debian's GRUB for BIOS, embedded as
/// `grub-install` does (boot.img in the MBR, a grub-mkimage core.img after the GPT), with the
/// same A/B configuration as UEFI.
#[test]
#[ignore = "root: network namespaces + QEMU"]
fn a_bios_device_installs_and_updates_through_grub_for_bios() {
    let cache = |f: &str| format!("{ARM64_CACHE}/{f}");
    let files = [cache("busybox-x86_64"), cache("grub/i386-pc/boot.img")];
    let mut need: Vec<&str> = files.iter().map(String::as_str).collect();
    need.push("/usr/lib/ipxe/qemu/efi-virtio.rom");
    require_root_and_tools(
        &[
            "ip",
            "qemu-system-x86_64",
            "mksquashfs",
            "mformat",
            "mcopy",
            "grub-mkimage",
        ],
        &need,
    );
    let mut life = Life::begin(Target::x86_64_bios(), 4, BIOS_LIFE);
    life.install_update_and_fall_back();
    life.finish();
}
