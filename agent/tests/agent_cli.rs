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
board = "raspberrypi-4"
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
    assert_eq!(c.board, "raspberrypi-4");
    assert!(c.health.is_empty());
}

#[test]
fn config_errors_name_the_key() {
    for (edit, want) in [
        // Unknown keys, at the top and in tables.
        (
            (
                "board = \"raspberrypi-4\"",
                "board = \"raspberrypi-4\"\nboard_name = \"x\"",
            ),
            "board_name",
        ),
        (
            ("kind = \"grub\"", "kind = \"grub\"\nbootlimit = 3"),
            "bootlimit",
        ),
        (("[tls]", "[tls]\npassword = \"x\""), "password"),
        // Wrong types and missing keys.
        (("board = \"raspberrypi-4\"", "board = 4"), "board"),
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
                "board = \"raspberrypi-4\"",
                "board = \"raspberrypi-4\"\npoll_interval_secs = 0",
            ),
            "poll_interval_secs",
        ),
        (
            (
                "board = \"raspberrypi-4\"",
                "board = \"raspberrypi-4\"\nreboot_command = []",
            ),
            "reboot_command",
        ),
        (
            ("board = \"raspberrypi-4\"", "board = \"\""),
            "board: \"\" is not a board name",
        ),
        // Issue #10: a board the catalogue does not know.
        (
            ("board = \"raspberrypi-4\"", "board = \"rpi4\""),
            "board: \"rpi4\" is not a board of the catalogue (did you mean \"raspberrypi-4\"?)",
        ),
        (
            (
                "board = \"raspberrypi-4\"",
                "board = \"my-board\"\nextra_boards = [\"My Board\"]",
            ),
            "extra_boards[0]: \"My Board\" is not a board name",
        ),
        (
            (
                "board = \"raspberrypi-4\"",
                "board = \"raspberrypi-4\"\nstatus_interval_secs = 0",
            ),
            "status_interval_secs",
        ),
        (
            ("[slots]", "[enroll]\nca_sha256 = \"abc\"\n[slots]"),
            "enroll.ca_sha256: must be 64 hex digits",
        ),
        (
            ("[slots]", "[enroll]\nmac = \"02:00\"\n[slots]"),
            "enroll.mac",
        ),
        (
            ("[slots]", "[enroll]\nrenew_before_days = 0\n[slots]"),
            "enroll.renew_before_days: must be 1..=365",
        ),
        (
            ("[slots]", "[enroll]\ntoken_file = \"token\"\n[slots]"),
            "enroll.token_file: must be an absolute path",
        ),
        (
            ("[slots]", "[watchdog]\nfeed_secs = 5\n[slots]"),
            "watchdog.feed_secs: needs watchdog.device",
        ),
        (
            ("[slots]", "[watchdog]\ndevice = \"watchdog\"\n[slots]"),
            "watchdog.device: must be an absolute path",
        ),
        (("/etc/tugboot/device.key", "device.key"), "tls.key"),
    ] {
        let text = BASE.replacen(edit.0, edit.1, 1);
        assert_ne!(text, BASE, "edit {edit:?} did not apply");
        let e = config_err(&text);
        assert!(e.contains(want), "{edit:?}: {e}");
    }
}

#[test]
fn custom_boards_and_the_new_tables_parse() {
    let text = BASE.replacen(
        "board = \"raspberrypi-4\"",
        "board = \"lab-gateway-2\"\nextra_boards = [\"lab-gateway-2\"]\nstatus_interval_secs = 60",
        1,
    ) + "[enroll]\ntoken_file = \"/etc/tugboot/token\"\ninterface = \"eth0\"\n\
         ca_sha256 = \"sha256:AB:cd:000000000000000000000000000000000000000000000000000000000000\"\n\
         [watchdog]\ndevice = \"/dev/watchdog\"\n\
         [[health.file]]\nname = \"data\"\npath = \"/data/ok\"\nnon_empty = true\n\
         [[health.service]]\nname = \"web\"\nunit = \"nginx.service\"\n";
    let c = DeviceConfig::parse(&text).unwrap();
    assert_eq!(c.board, "lab-gateway-2");
    assert_eq!(c.status_interval.as_secs(), 60);
    assert_eq!(c.enroll.ca_sha256.unwrap()[..2], [0xab, 0xcd]);
    assert_eq!(c.enroll.renew_before.as_secs(), 28 * 86_400);
    assert_eq!(c.watchdog_device.as_ref().unwrap().1.as_secs(), 10);
    let kinds: Vec<_> = c.health.iter().map(|h| h.kind()).collect();
    assert_eq!(kinds, ["file", "service"]);
    let d = c.describe();
    assert!(
        d.contains("health web: systemd unit nginx.service active within 30s"),
        "{d}"
    );
    assert!(
        d.contains("watchdog = /dev/watchdog fed every 10s while healthy"),
        "{d}"
    );
    assert!(d.contains("tls.ca pinned to sha256:abcd0000"), "{d}");
}

/// `check-config` refuses a board the catalogue does not know, naming the right one.
#[test]
fn check_config_validates_the_board_against_the_catalogue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, BASE.replacen("raspberrypi-4", "rpi4", 1)).unwrap();
    let o = agent(&["--config", path.to_str().unwrap(), "check-config"]);
    assert_fails(
        &o,
        "board: \"rpi4\" is not a board of the catalogue (did you mean \"raspberrypi-4\"?)",
    );
    std::fs::write(&path, BASE).unwrap();
    let o = agent(&["--config", path.to_str().unwrap(), "check-config"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("board = raspberrypi-4"));
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
            boards: vec!["raspberrypi-4".into()],
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
        Self::with_bootloader(
            "reboot_command = [\"true\"]",
            "kind = \"file\"\npath = \"{p}/boot.env\"",
        )
    }

    /// The device with `extra` top-level keys and the `[bootloader]` table `table` (`{p}` is
    /// the device's directory).
    fn with_bootloader(extra: &str, table: &str) -> Self {
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
board = "raspberrypi-4"
state_file = "{p}/state.json"
trust_root = "{p}/root.json"
report_queue = "{p}/reports"
{extra}
[tls]
ca = "{p}/ca.pem"
cert = "{p}/device.pem"
key = "{p}/device.key"
[slots]
a = "{p}/slotA"
b = "{p}/slotB"
[bootloader]
{table}
"#,
                extra = extra.replace("{p}", &p.to_string()),
                table = table.replace("{p}", &p.to_string()),
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
        out.contains("bootloader: file, default slot B, trial none"),
        "{out}"
    );
    assert!(out.contains("queued reports: 0"), "{out}");

    let o = f.run(&["status", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["state"]["committed"]["slot"], "B");
    assert_eq!(v["state"]["floor"], 7);
    assert_eq!(v["bootloader"]["default"], "B");
    assert_eq!(v["bootloader"]["backend"], "file");
    assert!(v["bootloader"].get("firmware").is_none());
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
        "raspberrypi-4",
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
        downloaded: 0,
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

// ---------------------------------------------------------------------------------------------
// Raspberry Pi tryboot and EFI BootNext, selected by the configuration, over the fixture files
// (tests/fixtures/rpi, tests/fixtures/efi/efivars) copied into the device's directory.

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// The host's own kernel command line names a slot: the agent would believe it over the
/// firmware fixtures, so these tests cannot run there.
fn host_names_a_slot() -> bool {
    std::fs::read_to_string("/proc/cmdline").is_ok_and(|c| c.contains("tugboot.slot="))
}

/// Reboot commands that only leave a mark: which one ran.
const REBOOTS: &str = r#"reboot_command = ["sh", "-c", "echo plain > {p}/rebooted"]
trial_reboot_command = ["sh", "-c", "echo trial > {p}/rebooted # 0 tryboot"]"#;

/// State: slot A committed (version 41), slot B (42) armed for a trial in an earlier boot.
fn write_trying_state(f: &Fixture) {
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
        downloaded: 0,
    });
    std::fs::write(f.path("state.json"), state.to_bytes()).unwrap();
}

/// A Pi whose autoboot.txt is `autoboot` (a fixture name) and whose firmware reports the
/// device tree `devicetree` (a fixture directory).
fn rpi(autoboot: &str, devicetree: &str) -> Fixture {
    let f = Fixture::with_bootloader(
        REBOOTS,
        "kind = \"rpi-tryboot\"\nautoboot_mount = \"{p}/autoboot\"\nboot_partition_a = 2\n\
         boot_partition_b = 3\ndevice_tree = \"{p}/dt\"",
    );
    std::fs::create_dir(f.path("autoboot")).unwrap();
    std::fs::copy(
        fixtures().join("rpi").join(autoboot),
        f.path("autoboot/autoboot.txt"),
    )
    .unwrap();
    copy_tree(&fixtures().join("rpi").join(devicetree), &f.path("dt"));
    f
}

fn autoboot(f: &Fixture) -> String {
    std::fs::read_to_string(f.path("autoboot/autoboot.txt")).unwrap()
}

fn fixture_text(name: &str) -> String {
    std::fs::read_to_string(fixtures().join("rpi").join(name)).unwrap()
}

#[test]
fn rpi_check_config_and_status_show_the_backend_and_trial() {
    if host_names_a_slot() {
        return;
    }
    let f = rpi("autoboot-ab-doc.txt", "devicetree-tryboot-p3");
    let o = f.run(&["check-config"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("bootloader = rpi-tryboot ("), "{out}");
    assert!(
        out.contains("slot A partition 2, slot B partition 3"),
        "{out}"
    );
    assert!(out.contains("# 0 tryboot\"]"), "{out}");

    write_trying_state(&f);
    let o = f.run(&["status"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("bootloader: rpi-tryboot, default slot A, trial B"),
        "{out}"
    );
    assert!(
        out.contains("firmware: booted partition 3 (slot B), tryboot"),
        "{out}"
    );
    assert!(
        out.contains("update: edge-gw 42 into slot B, trying"),
        "{out}"
    );
    let o = f.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["bootloader"]["backend"], "rpi-tryboot");
    assert_eq!(v["bootloader"]["trial"], "B");
    assert_eq!(
        v["bootloader"]["firmware"],
        "booted partition 3 (slot B), tryboot"
    );
    // status wrote nothing.
    assert_eq!(autoboot(&f), fixture_text("autoboot-ab-doc.txt"));
}

#[test]
fn rpi_mark_good_commits_the_tryboot_partition() {
    if host_names_a_slot() {
        return;
    }
    let f = rpi("autoboot-ab-doc.txt", "devicetree-tryboot-p3");
    write_trying_state(&f);
    let o = f.run(&["mark-good"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("committed edge-gw 42 in slot B"));
    assert_eq!(autoboot(&f), fixture_text("autoboot-committed-b.txt"));
    assert_eq!(read_state(&f).committed.slot, Slot::B);
    assert!(!f.path("rebooted").exists());
    let o = f.run(&["status"]);
    assert!(
        stdout(&o).contains("bootloader: rpi-tryboot, default slot B, trial none"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn rpi_rollback_restores_the_committed_partition_with_a_plain_reboot() {
    if host_names_a_slot() {
        return;
    }
    let f = rpi("autoboot-ab-doc.txt", "devicetree-tryboot-p3");
    write_trying_state(&f);
    let o = f.run(&["rollback"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("rebooting into slot A"));
    assert_eq!(autoboot(&f), fixture_text("autoboot-idle-a.txt"));
    // Back into the committed slot: never a tryboot.
    assert_eq!(
        std::fs::read_to_string(f.path("rebooted")).unwrap(),
        "plain\n"
    );
}

#[test]
fn rpi_trial_that_fell_back_is_not_committed() {
    if host_names_a_slot() {
        return;
    }
    // autoboot.txt still arms B, but the firmware booted partition 2 without tryboot: the
    // trial crashed or was reset. The device tree, not autoboot.txt, says what runs.
    let f = rpi("autoboot-ab-doc.txt", "devicetree-normal-p2");
    write_trying_state(&f);
    assert_fails(&f.run(&["mark-good"]), "no slot is on trial");
    assert_eq!(autoboot(&f), fixture_text("autoboot-idle-a.txt"));
    let state = read_state(&f);
    assert_eq!(state.committed.slot, Slot::A);
    assert_eq!(state.floor, 41);
}

#[test]
fn rpi_broken_autoboot_is_reported_and_never_rewritten() {
    if host_names_a_slot() {
        return;
    }
    let f = rpi("autoboot-bad-filter.txt", "devicetree-tryboot-p3");
    write_trying_state(&f);
    let o = f.run(&["status"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("bootloader: rpi-tryboot, unreadable:"),
        "{}",
        stdout(&o)
    );
    assert_fails(&f.run(&["mark-good"]), "autoboot.txt");
    assert_eq!(autoboot(&f), fixture_text("autoboot-bad-filter.txt"));
}

const GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";

/// A UEFI machine from tests/fixtures/efi/efivars (Boot0001 = slot A, Boot0002 = slot B,
/// BootOrder 1,2,3,0), booted from entry `current`.
fn efi(current: u16) -> Fixture {
    let f = Fixture::with_bootloader(
        REBOOTS,
        "kind = \"efi-bootnext\"\nefivars = \"{p}/efivars\"\n\
         loader_a = \"EFI/tugboot/slot-a.efi\"\nloader_b = \"\\\\EFI\\\\tugboot\\\\slot-b.efi\"\n\
         description_b = \"tugboot B\"",
    );
    copy_tree(&fixtures().join("efi/efivars"), &f.path("efivars"));
    let mut var = 6u32.to_le_bytes().to_vec(); // BOOTSERVICE_ACCESS | RUNTIME_ACCESS
    var.extend_from_slice(&current.to_le_bytes());
    std::fs::write(efivar(&f, "BootCurrent"), var).unwrap();
    f
}

fn efivar(f: &Fixture, name: &str) -> std::path::PathBuf {
    f.path(&format!("efivars/{name}-{GLOBAL}"))
}

fn boot_order(f: &Fixture) -> Vec<u16> {
    std::fs::read(efivar(f, "BootOrder")).unwrap()[4..]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

#[test]
fn efi_status_shows_the_backend_and_the_running_trial() {
    if host_names_a_slot() {
        return;
    }
    let f = efi(2);
    write_trying_state(&f);
    let o = f.run(&["status"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("bootloader: efi-bootnext, default slot A, trial B"),
        "{out}"
    );
    assert!(
        out.contains(
            "firmware: BootCurrent 0002 (slot B), BootNext unset, slot entries Boot0001 (A) \
             Boot0002 (B)"
        ),
        "{out}"
    );
    let o = f.run(&["check-config"]);
    assert!(
        stdout(&o).contains("slot B \\EFI\\tugboot\\slot-b.efi \"tugboot B\""),
        "{}",
        stdout(&o)
    );
}

#[test]
fn efi_mark_good_puts_the_trial_first_in_boot_order() {
    if host_names_a_slot() {
        return;
    }
    let f = efi(2);
    write_trying_state(&f);
    let o = f.run(&["mark-good"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("committed edge-gw 42 in slot B"));
    assert_eq!(boot_order(&f), vec![2, 1, 3, 0]);
    assert!(!efivar(&f, "BootNext").exists());
    assert_eq!(read_state(&f).committed.slot, Slot::B);
    assert!(!f.path("rebooted").exists());
    let o = f.run(&["status"]);
    assert!(
        stdout(&o).contains("bootloader: efi-bootnext, default slot B, trial none"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn efi_rollback_keeps_the_committed_entry_first_and_reboots_plainly() {
    if host_names_a_slot() {
        return;
    }
    let f = efi(2);
    write_trying_state(&f);
    let o = f.run(&["rollback"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("rebooting into slot A"));
    assert_eq!(boot_order(&f), vec![1, 2, 3, 0]);
    assert!(!efivar(&f, "BootNext").exists());
    assert_eq!(
        std::fs::read_to_string(f.path("rebooted")).unwrap(),
        "plain\n"
    );
    assert!(matches!(
        read_state(&f).update.map(|u| u.phase),
        Some(Phase::RollingBack { .. })
    ));
}

#[test]
fn efi_trial_that_fell_back_is_not_committed() {
    if host_names_a_slot() {
        return;
    }
    // BootCurrent is slot A's entry: the firmware consumed BootNext but B never came up.
    let f = efi(1);
    write_trying_state(&f);
    assert_fails(&f.run(&["mark-good"]), "no slot is on trial");
    assert_eq!(boot_order(&f), vec![1, 2, 3, 0]);
    assert_eq!(read_state(&f).committed.slot, Slot::A);
}

#[test]
fn efi_missing_efivars_is_a_clear_error() {
    let f = efi(1);
    std::fs::remove_dir_all(f.path("efivars")).unwrap();
    let o = f.run(&["status"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("bootloader: efi-bootnext, unreadable:"),
        "{}",
        stdout(&o)
    );
    assert_fails(&f.run(&["mark-good"]), "efivars");
}

// ---------------------------------------------------------------------------------------------
// The seeds of the `agent_config` and `assignment` fuzz targets, through the same entries:
// `good-*` files are accepted, `bad-*` files are refused with an error, nothing panics.

fn seeds(dir: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fixtures().join(dir);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&path).unwrap(),
            )
        })
        .collect();
    out.sort();
    assert!(out.len() >= 8, "seeds missing in {}", dir.display());
    out
}

#[test]
fn agent_config_seeds() {
    let mut kinds = std::collections::BTreeSet::new();
    for (name, bytes) in seeds("agent-config") {
        match DeviceConfig::parse_bytes(&bytes) {
            Ok(c) => {
                assert!(name.starts_with("good-"), "{name} should be refused");
                assert_eq!(DeviceConfig::parse_bytes(&bytes).unwrap(), c, "{name}");
                kinds.insert(c.bootloader.kind());
            }
            Err(e) => {
                assert!(name.starts_with("bad-"), "{name} refused: {e}");
                assert!(!e.to_string().contains('\n'), "{name}: {e}");
            }
        }
    }
    assert_eq!(kinds.len(), 5, "a good seed per backend: {kinds:?}");
}

#[test]
fn assignment_seeds() {
    use tugboot_agent::net::daemon::{AssignmentCheck, check_assignment};
    for (name, bytes) in seeds("agent-assignment") {
        match check_assignment("https://tugboot.example:8443", &bytes) {
            Ok(a) => {
                assert!(name.starts_with("good-"), "{name} should be refused");
                assert!(!a.manifest_url.is_empty());
            }
            Err(AssignmentCheck::Refused(e)) => {
                assert!(name.starts_with("bad-"), "{name} refused: {e}");
            }
            Err(e) => panic!("{name}: {e}"),
        }
    }
}
