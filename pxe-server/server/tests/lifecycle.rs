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
    ARM64_CACHE, BIOS_ROM_DIR, Firmware, Hardware, Netns, OVMF_CODE, OVMF_VARS, Serve, Vm,
    host_kernel, require_root_and_tools, run, tugboot,
};

const MAC: &str = "52:54:00:1f:00:01";
const API: &str = "https://10.77.0.1:8443";

/// The static agent for x86_64, built (or found up to date) by cargo.
fn agent_binary() -> PathBuf {
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
        "x86_64-unknown-linux-musl",
    ]));
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    target.join("x86_64-unknown-linux-musl/release-agent/tugboot-agent")
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
fn os_image(dir: &Path, agent: &Path, version: u64, init: &str, health: &str) {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/os");
    let p = |f: &str| dir.join(f).display().to_string();
    let kernel = host_kernel();
    let root = dir.join(format!("os{version}/rootfs"));
    fs::create_dir_all(root.join("boot")).expect("mkdir");
    fs::copy(&kernel, root.join("boot/vmlinuz")).expect("kernel");
    let release = dir.join(format!("os{version}/os-release"));
    fs::write(&release, format!("os v{version}\n")).expect("os-release");
    // The image's agent settings: poll and report often, so the test does not wait minutes.
    let settings = dir.join(format!("os{version}/agent-settings.toml"));
    fs::write(
        &settings,
        "poll_interval_secs = 5\nstatus_interval_secs = 20\ndownload_checkpoint_mib = 1\n",
    )
    .expect("settings");
    let ex = |f: &str| examples.join(f).display().to_string();
    let mut args = vec![
        "initramfs".to_owned(),
        "build".into(),
        "--init".into(),
        ex(init),
        "--busybox".into(),
        format!("{ARM64_CACHE}/busybox-x86_64"),
        "--modules".into(),
        modules_dir(&kernel).display().to_string(),
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
    for m in ["virtio_pci", "virtio_blk", "virtio_net", "ext4", "efivarfs"] {
        args.extend(["--module".into(), m.into()]);
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
        "x86_64-uefi",
        "--sign",
        &p("signer.key"),
        "--store",
        &p("local-blobs"),
        "--out",
        &p(&format!("staging/os-{version}.json")),
    ]));
}

fn setup(dir: &Path) {
    let p = |f: &str| dir.join(f).display().to_string();
    let t = |args: &[&str]| run(Command::new(tugboot()).args(args).arg("--quiet"));
    for sub in ["staging", "tftp"] {
        fs::create_dir_all(dir.join(sub)).expect("mkdir");
    }
    vm::signing_root(dir);
    t(&["ca", "init", "--dir", &p("ca")]);
    let agent = agent_binary();
    let kernel = host_kernel();
    t(&[
        "installer",
        "build",
        "--kernel",
        &kernel.display().to_string(),
        "--modules",
        &modules_dir(&kernel).display().to_string(),
        "--busybox",
        &format!("{ARM64_CACHE}/busybox-x86_64"),
        "--agent",
        &agent.display().to_string(),
        "--grub-efi",
        &format!("{ARM64_CACHE}/grubx64-stock.efi"),
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
        "--board",
        "x86_64-uefi",
        "--version",
        "1",
        "--sign",
        &p("signer.key"),
        "--store",
        &p("local-blobs"),
        "--out",
        &p("staging/installer.json"),
    ]);
    os_image(dir, &agent, 1, "init", "health-ok.toml");
    os_image(dir, &agent, 2, "init", "health-ok.toml");
    os_image(dir, &agent, 3, "init", "health-broken.toml");
    os_image(dir, &agent, 4, "init-panic", "health-ok.toml");
    os_image(dir, &agent, 5, "init", "health-ok.toml");
    os_image(dir, &agent, 6, "init", "health-ok.toml");
    fs::copy(
        Path::new(BIOS_ROM_DIR).join("snponly.efi"),
        dir.join("tftp/snponly.efi"),
    )
    .expect("copy iPXE");
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
mac = "{MAC}"
board = "x86_64-uefi"
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
const STEPS: [&str; 9] = [
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
    start: Instant,
    last: Instant,
    done: Vec<Value>,
    out: Option<PathBuf>,
    finished: bool,
}

impl Steps {
    fn ok(&mut self, name: &str, detail: &str) {
        assert_eq!(
            STEPS.get(self.done.len()),
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

    fn write(&self, machine: &Value, rollouts: &Value) {
        let Some(dir) = &self.out else { return };
        let mut steps = self.done.clone();
        for name in &STEPS[self.done.len()..] {
            steps.push(
                json!({"name": name, "ok": false, "seconds": null, "detail": "did not happen"}),
            );
        }
        let doc = json!({"steps": steps, "machine": machine, "rollouts": rollouts});
        let path = dir.join("lifecycle.json");
        fs::write(&path, serde_json::to_vec_pretty(&doc).expect("json")).expect("lifecycle.json");
        println!("lifecycle: wrote {}", path.display());
    }

    fn finish(&mut self, machine: &Value, rollouts: &Value) {
        self.write(machine, rollouts);
        self.finished = true;
    }
}

impl Drop for Steps {
    fn drop(&mut self) {
        if !self.finished {
            self.write(&Value::Null, &Value::Null);
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

/// Waits until slot A of `disk.img` (the installer's layout: after a 1 MiB gap and the 64 MiB
/// ESP) holds the slot artifact of `manifest` at `offset`; says how far it got.
fn slot_written_past(dir: &Path, manifest: &str, offset: usize, within: Duration) -> String {
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
    let slot_a: u64 = (1 + 64) << 20;
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
    let kept = std::env::var_os("TUGBOOT_LIFECYCLE_DIR").map(PathBuf::from);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = kept.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    fs::create_dir_all(&dir).expect("mkdir");
    setup(&dir);
    let s = |f: &str| dir.join(f).display().to_string();

    let mut ns = Netns::new("life");
    ns.router_advertisements(&dir);
    let mut serve = Serve::start(&mut ns, &dir.join("serve.toml"));
    let (token, ca) = (s("data/api/operator-token"), s("ca/ca.pem"));
    let op = |ns: &Netns, args: &[&str]| -> String {
        run(ns
            .command(tugboot())
            .args(args)
            .env("TUGBOOT_SERVER", API)
            .env("TUGBOOT_TOKEN_FILE", &token)
            .env("TUGBOOT_CA_CERT", &ca))
    };
    let push = |ns: &Netns, manifest: &str| {
        op(
            ns,
            &["images", "push", &s(manifest), "--store", &s("local-blobs")],
        );
    };
    push(&ns, "staging/installer.json");
    push(&ns, "staging/os-1.json");
    op(&ns, &["machines", "approve", "dev-1"]);

    let disk = dir.join("disk.img");
    let f = fs::File::create(&disk).expect("disk");
    f.set_len(1 << 30).expect("sparse 1 GiB disk");
    drop(f);
    let hw = Hardware {
        disk: Some(disk),
        reboots: true,
    };
    let mut steps = Steps {
        start: Instant::now(),
        last: Instant::now(),
        done: Vec::new(),
        out: kept.clone(),
        finished: false,
    };
    let mut vm = Vm::start_with(&mut ns, &dir, Firmware::Uefi, MAC, "tap0", &hw);
    let minutes = |m: u64| Duration::from_secs(m * 60);
    vm.wait_within("tugboot-installer: installed", minutes(6), &mut serve);
    steps.ok(
        "install",
        "netbooted installer: disk partitioned, os v1 in slot A, boot entry, reported",
    );
    vm.wait_within(
        "tugboot-os: os v1 booted from slot A",
        minutes(3),
        &mut serve,
    );
    steps.ok("first-boot", "from the disk: GRUB, slot A, os v1");

    let machine = |ns: &Netns| -> Value {
        serde_json::from_str(&op(ns, &["machines", "show", "dev-1", "--json"])).expect("json")
    };
    let fact = |m: &Value, k: &str| -> Option<String> {
        m["machine"]["facts"][k]["value"]
            .as_str()
            .map(str::to_owned)
    };
    let wait_until = |what: &str, within: Duration, mut ok: Box<dyn FnMut() -> bool + '_>| {
        let deadline = Instant::now() + within;
        while !ok() {
            assert!(Instant::now() < deadline, "{what}: not within {within:?}");
            std::thread::sleep(Duration::from_secs(2));
        }
    };
    wait_until(
        "the installed agent's status report",
        minutes(2),
        Box::new(|| fact(&machine(&ns), "image").as_deref() == Some("os@1")),
    );
    let m = machine(&ns);
    assert_eq!(fact(&m, "installed").as_deref(), Some("os@1"), "{m}");
    assert_eq!(fact(&m, "board").as_deref(), Some("x86_64-uefi"), "{m}");
    steps.ok(
        "enroll",
        "certificate from the installer; status and inventory over mTLS",
    );

    let rollout = |ns: &Netns, version: &str| -> i64 {
        let out = op(
            ns,
            &[
                "rollout",
                "create",
                "--image",
                "os",
                "--version",
                version,
                "--selector",
                "board=x86_64-uefi",
                "--stage",
                "100",
                "--max-failure-permille",
                "0",
                "--min-reports",
                "1",
                "--json",
            ],
        );
        let v: Value = serde_json::from_str(&out).expect("json");
        v["id"].as_i64().unwrap_or_else(|| panic!("{v}"))
    };
    let rollout_state = |ns: &Netns, id: i64| -> String {
        let v: Value =
            serde_json::from_str(&op(ns, &["rollout", "status", &id.to_string(), "--json"]))
                .expect("json");
        v["state"].as_str().unwrap_or_default().to_owned()
    };

    push(&ns, "staging/os-2.json");
    let r2 = rollout(&ns, "2");
    vm.wait_within(
        "tugboot-os: os v2 booted from slot B",
        minutes(5),
        &mut serve,
    );
    wait_until(
        "rollout of v2 completed",
        minutes(2),
        Box::new(|| rollout_state(&ns, r2) == "completed"),
    );
    steps.ok(
        "update-committed",
        "v2 into slot B, GRUB trial boot, healthy, committed; rollout completed",
    );

    push(&ns, "staging/os-3.json");
    let r3 = rollout(&ns, "3");
    vm.wait_within(
        "tugboot-os: os v3 booted from slot A",
        minutes(5),
        &mut serve,
    );
    vm.wait_within(
        "tugboot-os: os v2 booted from slot B",
        minutes(4),
        &mut serve,
    );
    wait_until(
        "rollout of v3 paused",
        minutes(2),
        Box::new(|| rollout_state(&ns, r3) == "paused"),
    );
    steps.ok(
        "rollback",
        "v3 failed its health check; the agent rolled back to v2 and reported it",
    );
    op(&ns, &["rollout", "abort", &r3.to_string()]);

    push(&ns, "staging/os-4.json");
    let r4 = rollout(&ns, "4");
    vm.wait_within("tugboot-os: broken init", minutes(5), &mut serve);
    vm.wait_within(
        "tugboot-os: os v2 booted from slot B",
        minutes(4),
        &mut serve,
    );
    wait_until(
        "rollout of v4 paused",
        minutes(2),
        Box::new(|| rollout_state(&ns, r4) == "paused"),
    );
    steps.ok(
        "rollout-paused",
        "v4 panicked at boot; GRUB fell back to v2; reported; rollout paused",
    );

    let m = machine(&ns);
    assert_eq!(fact(&m, "image").as_deref(), Some("os@2"), "{m}");
    op(&ns, &["rollout", "abort", &r4.to_string()]);

    // Power cuts (QEMU killed) at three moments of an OTA; each must end on a bootable,
    // verified slot and a truthful report. Slot A holds the failed v4, B the committed v2.
    let power_on = |ns: &mut Netns| Vm::start_with(ns, &dir, Firmware::Uefi, MAC, "tap0", &hw);
    push(&ns, "staging/os-5.json");
    let r5 = rollout(&ns, "5");
    // 1. While slot A is being written: once the disk shows v5's bytes past 3 MiB into slot A
    //    (the agent syncs and records a checkpoint every MiB), before it finished.
    wait_log(&mut serve, &mut vm, "device artifact download", minutes(3));
    let written = slot_written_past(&dir, "staging/os-5.json", 3 << 20, minutes(3));
    vm.kill(&mut ns);
    vm = power_on(&mut ns);
    vm.wait_within(
        "tugboot-os: os v2 booted from slot B",
        minutes(3),
        &mut serve,
    );
    let resumed = field(
        &wait_log(&mut serve, &mut vm, "device artifact download", minutes(3)),
        "range",
    );
    let from: u64 = resumed
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the download after the cut is no resume: range {resumed}"));
    assert!(from >= 1 << 20, "resumed from {from}");
    steps.ok(
        "power-cut-writing",
        &format!(
            "cut {written} into slot A; came back on the committed v2 in B; the download \
             resumed from byte {from}"
        ),
    );
    // 2. Right after arming: the agent armed the trial and says it reboots.
    vm.wait_within("tugboot-agent: rebooting", minutes(5), &mut serve);
    vm.kill(&mut ns);
    vm = power_on(&mut ns);
    vm.wait_within(
        "tugboot-os: os v5 booted from slot A",
        minutes(3),
        &mut serve,
    );
    wait_until(
        "rollout of v5 completed",
        minutes(3),
        Box::new(|| rollout_state(&ns, r5) == "completed"),
    );
    let m = machine(&ns);
    assert_eq!(fact(&m, "image").as_deref(), Some("os@5"), "{m}");
    assert_eq!(fact(&m, "slot").as_deref(), Some("A"), "{m}");
    steps.ok(
        "power-cut-armed",
        "cut right after arming; GRUB's trial booted v5 from A, committed",
    );
    // 3. During the trial boot of v6 in B, before the agent could confirm it.
    push(&ns, "staging/os-6.json");
    let r6 = rollout(&ns, "6");
    vm.wait_within(
        "tugboot-os: os v6 booted from slot B",
        minutes(5),
        &mut serve,
    );
    vm.kill(&mut ns);
    vm = power_on(&mut ns);
    vm.wait_within(
        "tugboot-os: os v5 booted from slot A",
        minutes(3),
        &mut serve,
    );
    wait_until(
        "rollout of v6 paused",
        minutes(3),
        Box::new(|| rollout_state(&ns, r6) == "paused"),
    );
    let m = machine(&ns);
    assert_eq!(fact(&m, "image").as_deref(), Some("os@5"), "{m}");
    steps.ok(
        "power-cut-trial",
        "cut during v6's trial boot; GRUB fell back to v5 in A; reported; rollout paused",
    );

    let rollouts: Value =
        serde_json::from_str(&op(&ns, &["rollout", "status", "--json"])).expect("json");
    vm.kill(&mut ns);
    serve.stop(&mut ns);
    steps.finish(&m, &rollouts);
}
