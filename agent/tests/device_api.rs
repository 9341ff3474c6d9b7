//! The agent against the real device API: `tugboot-api`'s `ApiServer` started in this process
//! on 127.0.0.1:0 over a fresh SQLite store, with its real CA (rcgen, ECDSA P-256), operator
//! token and blob store; the agent's own code on the other side (its `Daemon`, enrollment
//! client, report queue), as on a device. Covered: enrollment with a one-time token and with
//! an operator's approval after waiting, the CSR accepted by `openssl req -verify` and by the
//! server's CSR check, renewal, status and inventory stored by the server, a whole update
//! committed after a simulated U-Boot reboot with the rollout completing, a manifest refused
//! on the device counted as a failure by the rollout, and a revocation stopping the agent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use serde_json::Value;
use tugboot_agent::bootloader::{Slot, Vars};
use tugboot_agent::config::DeviceConfig;
use tugboot_agent::io::RealIo;
use tugboot_agent::net::daemon::{BootContext, Daemon, DaemonError, Step, open_bootloader};
use tugboot_agent::net::enroll::{DeviceKey, EnrollStep, cert_info};
use tugboot_agent::net::inventory::SysRoot;
use tugboot_agent::update::{AgentState, Evidence, Image, PlainFileEnv, sim};
use tugboot_api::server::ApiConfig;
use tugboot_firmware::Sha256Digest;

mod api;

use api::{Api, noise, root_bytes};

fn manifest(version: u64, board: &str, content: &[u8]) -> Vec<u8> {
    api::manifest_named("edge-gw", version, board, content)
}

/// A device: slots, state (v41 in slot A), a U-Boot-contract file environment, trust root,
/// the server's CA (shipped with the image) and its configuration. No certificate yet.
struct Device {
    dir: tempfile::TempDir,
    config: DeviceConfig,
}

impl Device {
    fn new(api: &Api, enroll: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let v1 = noise(50_000, 0x11);
        std::fs::write(p("slotA"), &v1).unwrap();
        std::fs::write(p("slotB"), vec![0u8; 300_000]).unwrap();
        let image = Image {
            name: "edge-gw".into(),
            version: 41,
            sha256: Sha256Digest::of(&v1),
            size: v1.len() as u64,
        };
        std::fs::write(
            p("state.json"),
            AgentState::provisioned(Slot::A, Some(image), 41).to_bytes(),
        )
        .unwrap();
        let mut vars = Vars::new();
        vars.set("tugboot_slot", "A").unwrap();
        PlainFileEnv::new(RealIo::new(), p("boot.env"))
            .initialize(&vars)
            .unwrap();
        std::fs::write(p("root.json"), root_bytes()).unwrap();
        std::fs::create_dir_all(p("tls")).unwrap();
        std::fs::write(p("tls/ca.pem"), &api.ca_pem).unwrap();
        let d = dir.path().display();
        let text = format!(
            r#"server = "{server}"
board = "raspberrypi-4"
state_file = "{d}/state.json"
trust_root = "{d}/root.json"
report_queue = "{d}/reports"
reboot_command = ["true"]
status_interval_secs = 1
[tls]
ca = "{d}/tls/ca.pem"
cert = "{d}/tls/device.pem"
key = "{d}/tls/device.key"
[slots]
a = "{d}/slotA"
b = "{d}/slotB"
[bootloader]
kind = "file"
path = "{d}/boot.env"
contract = "uboot"
[[health.command]]
name = "true"
run = ["true"]
[enroll]
mac = "02:00:00:00:aa:01"
{enroll}
"#,
            server = api.url()
        );
        let config = DeviceConfig::parse(&text).unwrap();
        Self { dir, config }
    }

    fn path(&self, n: &str) -> PathBuf {
        self.dir.path().join(n)
    }

    fn daemon(&self, ctx: BootContext) -> Daemon {
        let mut d = Daemon::new(self.config.clone(), ctx).unwrap();
        d.set_retry_delay(Duration::ZERO);
        d.set_system(sys_tree(self.dir.path()), "quiet");
        d
    }

    fn detect(&self, boot_id: &str) -> BootContext {
        let mut boot = open_bootloader(&self.config).unwrap();
        BootContext::from_sources("quiet", boot_id, &mut *boot).unwrap()
    }

    fn power_on(&self) -> Slot {
        let mut env = PlainFileEnv::new(RealIo::new(), self.path("boot.env"));
        sim::uboot_power_on(&mut env).unwrap()
    }

    fn state(&self) -> AgentState {
        AgentState::parse(&std::fs::read(self.path("state.json")).unwrap()).unwrap()
    }
}

/// A small `/proc` + `/sys` for the inventory.
fn sys_tree(dir: &Path) -> SysRoot {
    let root = dir.join("sys-root");
    for (path, text) in [
        ("proc/sys/kernel/osrelease", "6.6.31-v8+\n"),
        ("proc/device-tree/model", "Raspberry Pi 4 Model B Rev 1.5\0"),
        ("proc/meminfo", "MemTotal:        3930568 kB\n"),
        ("proc/uptime", "42.00 80.00\n"),
        ("sys/block/mmcblk0/size", "62333952\n"),
        ("sys/class/net/eth0/address", "02:00:00:00:aa:01\n"),
    ] {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    SysRoot(root)
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn enroll_with_a_token_update_and_complete_the_rollout() {
    let api = Api::start(ApiConfig::default());
    let (status, v) = api.op("POST", "/api/v1/admin/enrollment-tokens", &Value::Null);
    assert_eq!(status, 201, "{v}");
    let token_file = {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), format!("{}\n", v["token"].as_str().unwrap())).unwrap();
        f
    };
    let dev = Device::new(
        &api,
        &format!("token_file = \"{}\"", token_file.path().display()),
    );
    let mut d = dev.daemon(dev.detect("boot-1"));
    // No certificate: the cycle enrolls (token), reports status and inventory, and finds
    // nothing assigned.
    assert_eq!(d.cycle().unwrap(), Step::Idle, "{:?}", d.log);
    assert!(
        d.log
            .lines
            .iter()
            .any(|l| l.starts_with("enrolled as device")),
        "{:?}",
        d.log
    );
    assert_eq!(
        mode(&dev.path("tls/device.key")),
        0o600,
        "the key stays private"
    );
    let cert = std::fs::read(dev.path("tls/device.pem")).unwrap();
    let key = DeviceKey::from_pem(&std::fs::read(dev.path("tls/device.key")).unwrap()).unwrap();
    let der = rustls::pki_types::CertificateDer::from_pem_slice(&cert).unwrap();
    assert_eq!(
        cert_info(der.as_ref()).unwrap().public_key,
        key.public_key()
    );
    assert_eq!(
        std::fs::read_to_string(dev.path("tls/ca.pem"))
            .unwrap()
            .trim(),
        api.ca_pem.trim(),
        "the CA returned at enrollment is pinned"
    );
    let (_, machines) = api.op("GET", "/api/v1/admin/machines", &Value::Null);
    let id = machines[0]["id"].as_i64().unwrap();
    assert_eq!(machines[0]["mac"], "02:00:00:00:aa:01");
    let (_, m) = api.op("GET", &format!("/api/v1/admin/machines/{id}"), &Value::Null);
    let reports = m["reports"].as_array().unwrap();
    let status = &reports.last().unwrap_or_else(|| panic!("{m} {:?}", d.log))["report"];
    assert_eq!(status["inventory"]["board"], "raspberrypi-4", "{m}");
    assert_eq!(status["inventory"]["kernel"], "6.6.31-v8+");
    assert_eq!(status["inventory"]["memory_bytes"], 3_930_568u64 * 1024);
    assert_eq!(status["checks"]["true"]["ok"], true);
    assert_eq!(status["slot"], "A");
    assert_eq!(status["image_version"], 41);
    assert_eq!(status["uptime_secs"], 42);

    // An update over the real API: assignment, manifest, artifact, arm, reboot.
    let v2 = noise(200_000, 0x42);
    api.publish(&manifest(42, "raspberrypi-4", &v2), &v2);
    let rollout = api.rollout("edge-gw", 42, 500);
    assert_eq!(d.cycle().unwrap(), Step::Reboot, "{:?}", d.log);
    assert_eq!(
        &std::fs::read(dev.path("slotB")).unwrap()[..v2.len()],
        &v2[..]
    );
    // The trial boot: U-Boot counts it; the agent commits and reports; the rollout completes.
    assert_eq!(dev.power_on(), Slot::B);
    let ctx = dev.detect("boot-2");
    assert_eq!((ctx.slot, ctx.evidence), (Slot::B, Evidence::TrialCounter));
    let mut d = dev.daemon(ctx);
    assert_eq!(d.cycle().unwrap(), Step::Idle, "{:?}", d.log);
    assert_eq!(dev.state().committed.slot, Slot::B);
    let (_, r) = api.op(
        "GET",
        &format!("/api/v1/admin/rollouts/{rollout}"),
        &Value::Null,
    );
    assert_eq!(r["state"], "completed", "{r}");
    let (_, m) = api.op("GET", &format!("/api/v1/admin/machines/{id}"), &Value::Null);
    assert_eq!(m["machine"]["last_booted_image"], "edge-gw@42", "{m}");

    // The operator revokes the machine: the agent stops, saying why, and sends nothing more.
    let (status, _) = api.op(
        "POST",
        &format!("/api/v1/admin/machines/{id}/revoke"),
        &Value::Null,
    );
    assert_eq!(status, 200);
    let e = d.cycle().unwrap_err();
    assert!(
        matches!(&e, DaemonError::Revoked(r) if r.contains("revoked")),
        "{e}"
    );
    let (_, m) = api.op("GET", &format!("/api/v1/admin/machines/{id}"), &Value::Null);
    let before = m["reports"].as_array().unwrap().len();
    std::thread::sleep(Duration::from_millis(1100)); // a status report would be due
    assert!(matches!(d.cycle(), Err(DaemonError::Revoked(_))));
    let (_, m) = api.op("GET", &format!("/api/v1/admin/machines/{id}"), &Value::Null);
    assert_eq!(m["reports"].as_array().unwrap().len(), before);
}

#[test]
fn pending_enrollment_waits_for_approval_then_renews() {
    // Certificates of 20 days: inside both the server's 30-day and the agent's 28-day window.
    let api = Api::start(ApiConfig {
        device_cert_validity_secs: 20 * 86_400,
        ..ApiConfig::default()
    });
    let dev = Device::new(&api, "");
    let mut d = dev.daemon(dev.detect("boot-1"));
    let first = d.enroll().unwrap();
    let EnrollStep::Pending { device_id } = first else {
        panic!("{first:?}")
    };
    let key = std::fs::read(dev.path("tls/device.key")).unwrap();
    assert_eq!(mode(&dev.path("tls/device.key")), 0o600);
    // The cycle waits too, with backoff, and asks again with the same key.
    assert_eq!(d.cycle().unwrap(), Step::Idle);
    assert!(
        d.log
            .lines
            .iter()
            .any(|l| l.contains("waits for an operator's approval"))
    );
    assert_eq!(d.next_delay(), Duration::from_secs(10));
    assert_eq!(d.cycle().unwrap(), Step::Idle);
    assert_eq!(d.next_delay(), Duration::from_secs(20), "backoff");
    assert_eq!(std::fs::read(dev.path("tls/device.key")).unwrap(), key);
    assert!(!dev.path("tls/device.pem").exists());
    let (status, _) = api.op(
        "POST",
        &format!("/api/v1/admin/machines/{device_id}/approve"),
        &Value::Null,
    );
    assert_eq!(status, 200);
    let step = d.enroll().unwrap();
    assert!(
        matches!(step, EnrollStep::Issued { device_id: id, .. } if id == device_id),
        "{step:?}"
    );
    assert_eq!(
        std::fs::read(dev.path("tls/device.key")).unwrap(),
        key,
        "same key"
    );
    // The same request again (a retry after a lost answer): the same certificate, not a
    // second one.
    let cert = std::fs::read(dev.path("tls/device.pem")).unwrap();
    let again = d.enroll().unwrap();
    assert!(
        matches!(again, EnrollStep::Issued { device_id: id, .. } if id == device_id),
        "{again:?}"
    );
    assert_eq!(std::fs::read(dev.path("tls/device.pem")).unwrap(), cert);
    // A second enrollment by MAC with another key is refused by the server, with its reason.
    std::fs::rename(dev.path("tls/device.key"), dev.path("tls/device.key.kept")).unwrap();
    let e = d.enroll().unwrap_err().to_string();
    assert!(
        e.contains("HTTP 409") && e.contains("already enrolled"),
        "{e}"
    );
    std::fs::rename(dev.path("tls/device.key.kept"), dev.path("tls/device.key")).unwrap();
    // Renewal: the next cycle is within the window.
    let cert = std::fs::read(dev.path("tls/device.pem")).unwrap();
    assert_eq!(d.cycle().unwrap(), Step::Idle, "{:?}", d.log);
    assert!(
        d.log
            .lines
            .iter()
            .any(|l| l.starts_with("certificate renewed")),
        "{:?}",
        d.log
    );
    assert_ne!(std::fs::read(dev.path("tls/device.pem")).unwrap(), cert);
    let (_, m) = api.op(
        "GET",
        &format!("/api/v1/admin/machines/{device_id}"),
        &Value::Null,
    );
    assert_eq!(m["certificates"].as_array().unwrap().len(), 2, "{m}");
    // And the renewed certificate works.
    assert_eq!(d.cycle().unwrap(), Step::Idle, "{:?}", d.log);
}

#[test]
fn a_manifest_refused_on_the_device_fails_the_rollout_at_once() {
    let api = Api::start(ApiConfig::default());
    let (_, v) = api.op("POST", "/api/v1/admin/enrollment-tokens", &Value::Null);
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), v["token"].as_str().unwrap()).unwrap();
    let dev = Device::new(
        &api,
        &format!("token_file = \"{}\"", token_file.path().display()),
    );
    let mut d = dev.daemon(dev.detect("boot-1"));
    d.cycle().unwrap();
    // Published for another board: the device refuses it.
    let v2 = noise(1000, 0x9);
    api.publish(&manifest(42, "raspberrypi-5", &v2), &v2);
    let rollout = api.rollout("edge-gw", 42, 0);
    assert_eq!(d.cycle().unwrap(), Step::Idle, "{:?}", d.log);
    assert!(
        d.log.lines.iter().any(|l| l.contains("(wrong-board)")),
        "{:?}",
        d.log
    );
    let (_, r) = api.op(
        "GET",
        &format!("/api/v1/admin/rollouts/{rollout}"),
        &Value::Null,
    );
    assert_eq!(r["devices"]["failed"], 1, "{r}");
    assert_eq!(r["devices"]["pending"], 0, "{r}");
    assert_ne!(r["state"], "running", "{r}");
}

/// The CSR the agent builds itself passes `openssl req -verify` and the server's check.
#[test]
fn the_agents_csr_is_valid_for_openssl_and_the_server() {
    let key = DeviceKey::generate().unwrap();
    let pem = key.csr_pem("tugboot-agent").unwrap();
    tugboot_api::ca::check_csr(&pem).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("req.pem");
    std::fs::write(&path, &pem).unwrap();
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-in",
            path.to_str().unwrap(),
            "-noout",
            "-verify",
            "-text",
        ])
        .output()
        .expect("openssl (Debian package openssl)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("verify OK"), "{text}");
    assert!(
        text.contains("prime256v1") || text.contains("P-256"),
        "{text}"
    );
    assert!(
        text.contains("CN = tugboot-agent") || text.contains("CN=tugboot-agent"),
        "{text}"
    );
    // A corrupted signature is refused by both.
    let mut der = key.csr_der("tugboot-agent").unwrap();
    let last = der.len() - 1;
    der[last] ^= 1;
    let bad = tugboot_agent::net::enroll::pem("CERTIFICATE REQUEST", &der);
    assert!(tugboot_api::ca::check_csr(&bad).is_err());
    std::fs::write(&path, &bad).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["req", "-in", path.to_str().unwrap(), "-noout", "-verify"])
        .output()
        .unwrap();
    assert!(!out.status.success() || String::from_utf8_lossy(&out.stderr).contains("failure"));
}
