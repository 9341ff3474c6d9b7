//! The `tugboot-agent` binary and its configuration: every failure is a non-zero exit with one
//! line saying why; configuration errors name the key; installer mode end to end on files.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use tugboot_agent::bootloader::{BootEnv, Slot, Vars};
use tugboot_agent::config::{ConfigError, DeviceConfig, MAX_CONFIG_BYTES};
use tugboot_agent::io::RealIo;
use tugboot_agent::update::{AgentState, Image, Phase, PlainFileEnv, UpdateRecord};
use tugboot_firmware::{
    Artifact, Document, Manifest, Role, SecretKey, Sha256Digest, Signed, Timestamp, TrustRoot,
};

const BIN: &str = env!("CARGO_BIN_EXE_tugboot-agent");

fn agent(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Non-zero exit; the last line on stderr is the only `error: ` line and contains `want`.
fn assert_fails(o: &Output, want: &str) {
    let all = stderr(o);
    assert!(!o.status.success(), "succeeded: {all}");
    assert_eq!(
        all.lines().filter(|l| l.starts_with("error: ")).count(),
        1,
        "{all}"
    );
    let e = all.lines().last().unwrap_or_default();
    assert!(e.starts_with("error: "), "{all}");
    assert!(e.contains(want), "wanted {want:?} in {e}");
}

const BASE: &str = r#"
server = "https://tugboot.example:8443"
board = "rpi4"
state_file = "/data/state.json"
trust_root = "/etc/tugboot/root.json"
report_queue = "/data/reports"
[tls]
ca = "/etc/tugboot/ca.pem"
cert = "/etc/tugboot/device.pem"
key = "/etc/tugboot/device.key"
[slots]
a = "/dev/mmcblk0p2"
b = "/dev/mmcblk0p3"
[bootloader]
kind = "grub"
env_file = "/boot/grub/grubenv"
"#;

fn config_err(text: &str) -> String {
    let e = DeviceConfig::parse(text).unwrap_err();
    let s = e.to_string();
    assert!(!s.contains('\n'), "{s}");
    s
}

#[test]
fn config_base_is_valid() {
    let c = DeviceConfig::parse(BASE).unwrap();
    assert_eq!(c.board, "rpi4");
    assert!(c.health.is_empty());
}

#[test]
fn config_errors_name_the_key() {
    for (edit, want) in [
        // Unknown keys, at the top and in tables.
        (
            ("board = \"rpi4\"", "board = \"rpi4\"\nboard_name = \"x\""),
            "board_name",
        ),
        (
            ("kind = \"grub\"", "kind = \"grub\"\nbootlimit = 3"),
            "bootlimit",
        ),
        (("[tls]", "[tls]\npassword = \"x\""), "password"),
        // Wrong types and missing keys.
        (("board = \"rpi4\"", "board = 4"), "board"),
        (
            ("server = \"https://tugboot.example:8443\"\n", ""),
            "server",
        ),
        (("kind = \"grub\"", "kind = \"lilo\""), "lilo"),
        // Values.
        (
            ("https://tugboot", "http://tugboot"),
            "server: must be a https URL",
        ),
        (
            ("/data/state.json", "data/state.json"),
            "state_file: must be an absolute path",
        ),
        (
            ("/dev/mmcblk0p3", "/dev/mmcblk0p2"),
            "slots.b: must differ from slots.a",
        ),
        (
            (
                "env_file = \"/boot/grub/grubenv\"",
                "env_file = \"/boot/grub/grubenv\"\ntries = 4",
            ),
            "bootloader.tries: must be 1..=3",
        ),
        (
            (
                "board = \"rpi4\"",
                "board = \"rpi4\"\npoll_interval_secs = 0",
            ),
            "poll_interval_secs",
        ),
        (
            ("board = \"rpi4\"", "board = \"rpi4\"\nreboot_command = []"),
            "reboot_command",
        ),
        (("board = \"rpi4\"", "board = \"\""), "board: must be"),
        (("/etc/tugboot/device.key", "device.key"), "tls.key"),
    ] {
        let text = BASE.replacen(edit.0, edit.1, 1);
        assert_ne!(text, BASE, "edit {edit:?} did not apply");
        let e = config_err(&text);
        assert!(e.contains(want), "{edit:?}: {e}");
    }
}

#[test]
fn config_errors_in_health_checks_and_backends() {
    let uboot = BASE.replace(
        "kind = \"grub\"\nenv_file = \"/boot/grub/grubenv\"",
        "kind = \"uboot\"\nfw_env_config = \"/etc/fw_env.config\"\nbootlimit = 17",
    );
    assert!(config_err(&uboot).contains("bootloader.bootlimit: must be 1..=16"));
    let file = BASE.replace(
        "kind = \"grub\"\nenv_file = \"/boot/grub/grubenv\"",
        "kind = \"file\"\npath = \"/boot/env\"\ncontract = \"lilo\"",
    );
    assert!(config_err(&file).contains("bootloader.contract"));
    let cmd = format!("{BASE}\n[[health.command]]\nname = \"x\"\nrun = []\n");
    assert!(config_err(&cmd).contains("health.command[0].run"));
    let http =
        format!("{BASE}\n[[health.http]]\nname = \"api\"\nurl = \"ftp://x\"\ntimeout_secs = 5\n");
    assert!(config_err(&http).contains("health.http[0].url"));
    let slow = format!(
        "{BASE}\n[[health.http]]\nname = \"api\"\nurl = \"http://127.0.0.1/\"\ntimeout_secs = 0\n"
    );
    assert!(config_err(&slow).contains("health.http[0].timeout_secs"));
    let unknown =
        format!("{BASE}\n[[health.http]]\nname = \"api\"\nurl = \"http://x\"\nmethod = \"GET\"\n");
    assert!(config_err(&unknown).contains("method"));
}

#[test]
fn config_size_is_capped_before_parsing() {
    let big = format!("{BASE}\n#{}\n", "x".repeat(MAX_CONFIG_BYTES));
    assert!(matches!(
        DeviceConfig::parse(&big),
        Err(ConfigError::TooLarge { .. })
    ));
}

#[test]
fn binary_reports_usage_and_config_errors_on_one_line() {
    let o = agent(&["version"]);
    assert!(o.status.success());
    assert_eq!(
        stdout(&o).trim(),
        format!("tugboot-agent {}", env!("CARGO_PKG_VERSION"))
    );
    assert_fails(&agent(&["frobnicate"]), "unknown command \"frobnicate\"");
    assert_fails(&agent(&[]), "missing command");
    assert_fails(&agent(&["run", "--bogus"]), "unknown option \"--bogus\"");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    assert_fails(
        &agent(&["--config", missing.to_str().unwrap(), "status"]),
        "nope.toml",
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, BASE.replace("[slots]", "[slots]\nc = \"/dev/x\"")).unwrap();
    assert_fails(
        &agent(&["-c", bad.to_str().unwrap(), "check-config"]),
        "unknown field `c`",
    );
    let good = dir.path().join("good.toml");
    std::fs::write(&good, BASE).unwrap();
    let o = agent(&["-c", good.to_str().unwrap(), "check-config"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("bootloader = grub (env /boot/grub/grubenv, tries 1)"));
}

// ---------------------------------------------------------------------------------------------
// Installer mode and the commands that read the device's state.

const CREATED: Timestamp = Timestamp::from_unix(1_767_225_600);
const EXPIRES: Timestamp = Timestamp::from_unix(1_956_528_000);

fn key(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32])
}

fn sign<T: Document>(value: T, signers: &[u8]) -> Vec<u8> {
    let mut signed = Signed::new(value).unwrap();
    for &n in signers {
        signed.sign(&key(n));
    }
    signed.to_bytes()
}

fn manifest(content: &[u8]) -> Vec<u8> {
    manifest_by(content, &[1, 2])
}

fn manifest_by(content: &[u8], signers: &[u8]) -> Vec<u8> {
    sign(
        Manifest {
            name: "edge-gw".into(),
            version: 7,
            boards: vec!["rpi4".into()],
            artifacts: vec![Artifact {
                role: Role::Slot,
                name: "rootfs.img".into(),
                sha256: Sha256Digest::of(content),
                size: content.len() as u64,
            }],
            created: CREATED,
            expires: EXPIRES,
            min_version: None,
            labels: BTreeMap::new(),
        },
        signers,
    )
}

struct Fixture {
    dir: tempfile::TempDir,
    config: String,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("root.json"),
            sign(
                TrustRoot {
                    version: 1,
                    expires: EXPIRES,
                    threshold: 2,
                    keys: vec![key(1).public(), key(2).public(), key(3).public()],
                    revoked: vec![],
                },
                &[1, 2],
            ),
        )
        .unwrap();
        std::fs::write(d.join("slotA"), b"").unwrap();
        std::fs::write(d.join("slotB"), b"old").unwrap();
        let mut vars = Vars::new();
        vars.set("tugboot_slot", "A").unwrap();
        PlainFileEnv::new(RealIo::new(), d.join("boot.env"))
            .initialize(&vars)
            .unwrap();
        std::fs::create_dir(d.join("artifacts")).unwrap();
        let p = d.display();
        let config = d.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                r#"
server = "https://127.0.0.1:1"
board = "rpi4"
state_file = "{p}/state.json"
trust_root = "{p}/root.json"
report_queue = "{p}/reports"
reboot_command = ["true"]
[tls]
ca = "{p}/ca.pem"
cert = "{p}/device.pem"
key = "{p}/device.key"
[slots]
a = "{p}/slotA"
b = "{p}/slotB"
[bootloader]
kind = "file"
path = "{p}/boot.env"
"#
            ),
        )
        .unwrap();
        Self {
            config: config.display().to_string(),
            dir,
        }
    }

    fn path(&self, n: &str) -> std::path::PathBuf {
        self.dir.path().join(n)
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut all = vec!["--config", &self.config];
        all.extend_from_slice(args);
        agent(&all)
    }

    fn env(&self) -> Vars {
        PlainFileEnv::new(RealIo::new(), self.path("boot.env"))
            .load()
            .unwrap()
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn install_from_files_then_status() {
    let f = Fixture::new();
    let image: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(f.path("artifacts/rootfs.img"), &image).unwrap();
    std::fs::write(f.path("m.json"), manifest(&image)).unwrap();

    let o = f.run(&[
        "install",
        "--manifest",
        p(&f.path("m.json")),
        "--artifacts",
        p(&f.path("artifacts")),
        "--slot",
        "B",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("installed edge-gw 7 into slot B"));
    assert_eq!(std::fs::read(f.path("slotB")).unwrap(), image);
    assert_eq!(f.env().get_str("tugboot_slot"), Some("B"));
    let state = AgentState::parse(&std::fs::read(f.path("state.json")).unwrap()).unwrap();
    assert_eq!(state.committed.slot, Slot::B);
    assert_eq!(state.floor, 7);

    let o = f.run(&["status"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("committed: slot B edge-gw 7"), "{out}");
    assert!(
        out.contains("bootloader: default slot B, trial none"),
        "{out}"
    );
    assert!(out.contains("queued reports: 0"), "{out}");

    let o = f.run(&["status", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["state"]["committed"]["slot"], "B");
    assert_eq!(v["state"]["floor"], 7);
    assert_eq!(v["bootloader"]["default"], "B");
    assert_eq!(v["queued_reports"], 0);

    // No trial: the trial commands refuse, changing nothing.
    let env_before = std::fs::read(f.path("boot.env")).unwrap();
    assert_fails(&f.run(&["mark-good"]), "no slot is on trial");
    assert_fails(&f.run(&["rollback"]), "no slot is on trial");
    assert_eq!(std::fs::read(f.path("boot.env")).unwrap(), env_before);
}

#[test]
fn install_refuses_a_tampered_artifact_and_writes_no_state() {
    let f = Fixture::new();
    let image = vec![0x5a; 100_000];
    std::fs::write(f.path("m.json"), manifest(&image)).unwrap();
    let mut bad = image.clone();
    bad[99_999] = 0;
    std::fs::write(f.path("artifacts/rootfs.img"), &bad).unwrap();
    let env_before = std::fs::read(f.path("boot.env")).unwrap();
    let o = f.run(&[
        "install",
        "--manifest",
        p(&f.path("m.json")),
        "--artifacts",
        p(&f.path("artifacts")),
    ]);
    assert_fails(&o, "sha256 mismatch");
    assert!(!f.path("state.json").exists());
    assert_eq!(std::fs::read(f.path("boot.env")).unwrap(), env_before);

    // A manifest signed by one key only (threshold 2).
    std::fs::write(f.path("artifacts/rootfs.img"), &image).unwrap();
    std::fs::write(f.path("m1.json"), manifest_by(&image, &[1])).unwrap();
    let o = f.run(&[
        "install",
        "--manifest",
        p(&f.path("m1.json")),
        "--artifacts",
        p(&f.path("artifacts")),
    ]);
    assert_fails(&o, "rejected");
}

#[test]
fn status_without_state_and_verify_keep_working() {
    let f = Fixture::new();
    let o = f.run(&["status"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("state: none yet"));

    let image = vec![1u8; 10];
    std::fs::write(f.path("m.json"), manifest(&image)).unwrap();
    let o = agent(&[
        "verify",
        "--root",
        p(&f.path("root.json")),
        "--manifest",
        p(&f.path("m.json")),
        "--board",
        "rpi4",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "edge-gw version 7 verified");
    let o = agent(&[
        "verify",
        "--root",
        p(&f.path("root.json")),
        "--manifest",
        p(&f.path("m.json")),
        "--floor",
        "8",
    ]);
    assert_fails(&o, "rollback");
}

#[test]
fn run_once_fails_cleanly_without_tls_files() {
    let f = Fixture::new();
    assert_fails(&f.run(&["run", "--once"]), "tls.ca");
}

/// A device in the trial boot of slot B: the state says `trying` (armed in another boot), the
/// U-Boot-contract environment has B on trial. With no `tugboot.slot=` on the host's kernel
/// command line, the agent takes the booted slot from the bootloader: the armed trial, B.
fn on_trial() -> Fixture {
    let f = Fixture::new();
    let image = |version, byte| Image {
        name: "edge-gw".into(),
        version,
        sha256: Sha256Digest::of(&[byte]),
        size: 1,
    };
    let mut state = AgentState::provisioned(Slot::A, Some(image(41, 1)), 41);
    state.update = Some(UpdateRecord {
        slot: Slot::B,
        image: image(42, 2),
        manifest_sha256: Sha256Digest::of(b"manifest"),
        phase: Phase::Trying {
            boot_id: "an-earlier-boot".into(),
        },
    });
    std::fs::write(f.path("state.json"), state.to_bytes()).unwrap();
    let mut vars = Vars::new();
    vars.set("tugboot_slot", "B").unwrap();
    vars.set("upgrade_available", "1").unwrap();
    vars.set("bootcount", "1").unwrap();
    vars.set("bootlimit", "1").unwrap();
    PlainFileEnv::new(RealIo::new(), f.path("boot.env"))
        .initialize(&vars)
        .unwrap();
    f
}

fn read_state(f: &Fixture) -> AgentState {
    AgentState::parse(&std::fs::read(f.path("state.json")).unwrap()).unwrap()
}

#[test]
fn mark_good_commits_the_trial_and_queues_the_report() {
    if std::fs::read_to_string("/proc/cmdline").is_ok_and(|c| c.contains("tugboot.slot=")) {
        return; // the host itself says which slot it booted; this test needs the fallback
    }
    let f = on_trial();
    let o = f.run(&["mark-good"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("committed edge-gw 42 in slot B"),
        "{}",
        stdout(&o)
    );
    let state = read_state(&f);
    assert_eq!(state.committed.slot, Slot::B);
    assert_eq!(state.floor, 42);
    assert!(state.update.is_none());
    assert_eq!(f.env().get_str("upgrade_available"), Some("0"));
    assert_eq!(f.env().get_str("tugboot_slot"), Some("B"));
    let queued = std::fs::read_dir(f.path("reports"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().len() == 25
        })
        .count();
    assert_eq!(queued, 1);
    // Now there is nothing on trial.
    assert_fails(&f.run(&["mark-good"]), "no slot is on trial");
}

#[test]
fn rollback_points_the_bootloader_back_and_reboots() {
    if std::fs::read_to_string("/proc/cmdline").is_ok_and(|c| c.contains("tugboot.slot=")) {
        return;
    }
    let f = on_trial();
    let o = f.run(&["rollback"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("rebooting into slot A"),
        "{}",
        stdout(&o)
    );
    assert_eq!(f.env().get_str("tugboot_slot"), Some("A"));
    assert_eq!(f.env().get_str("upgrade_available"), Some("0"));
    let state = read_state(&f);
    assert_eq!(state.committed.slot, Slot::A);
    assert_eq!(state.floor, 41);
    assert!(matches!(
        state.update.map(|u| u.phase),
        Some(Phase::RollingBack { reason }) if reason.contains("operator")
    ));
}
