//! The update path on real files: the real U-Boot (redundant copies) and GRUB environment
//! backends, slots as regular files and as partitions of a loop device, and installer mode.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use tugboot_agent::bootloader::grub::GrubEnvFile;
use tugboot_agent::bootloader::uboot::{EnvConfig, EnvDevice, UbootEnvFile};
use tugboot_agent::bootloader::{Slot, Vars};
use tugboot_agent::io::{Io, RealIo};
use tugboot_agent::slot::SlotPaths;
use tugboot_agent::update::{
    AbBootloader, Agent, AgentConfig, AgentState, BootStatus, Grub, InstallConfig, InstallError,
    Next, Outcome, Uboot, install_from_files, sim,
};
use tugboot_firmware::{
    Artifact, Document, Manifest, Role, SecretKey, Sha256Digest, Signed, Timestamp, TrustRoot,
    TrustedRoot,
};

const NOW: Timestamp = Timestamp::from_unix(1_780_272_000);

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

fn root() -> TrustedRoot {
    let root = TrustRoot {
        version: 1,
        expires: Timestamp::from_unix(1_893_456_000),
        threshold: 1,
        keys: vec![key(1).public()],
        revoked: vec![],
    };
    TrustedRoot::bootstrap(&sign(root, &[1]), NOW).unwrap()
}

fn content(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 241).to_le_bytes()[0] ^ salt.wrapping_mul((i / 241).to_le_bytes()[0]))
        .collect()
}

fn manifest(version: u64, data: &[u8]) -> Vec<u8> {
    sign(
        Manifest {
            name: "lab-node".into(),
            version,
            boards: vec!["x86-64-uefi".into()],
            artifacts: vec![Artifact {
                role: Role::Slot,
                name: format!("rootfs-{version}.img"),
                sha256: Sha256Digest::of(data),
                size: data.len() as u64,
            }],
            created: Timestamp::from_unix(1_767_225_600),
            expires: Timestamp::from_unix(1_798_761_600),
            min_version: None,
            labels: BTreeMap::new(),
        },
        &[1],
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Uboot,
    Grub,
}

struct Device {
    dir: tempfile::TempDir,
    kind: Kind,
    slots: SlotPaths,
    boots: u32,
}

impl Device {
    /// Slots are files (or the given partitions); the environment is initialized to boot A.
    fn new(kind: Kind, slots: Option<SlotPaths>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let slots = slots.unwrap_or_else(|| {
            let s = SlotPaths {
                a: dir.path().join("slotA.img"),
                b: dir.path().join("slotB.img"),
            };
            std::fs::write(&s.a, [0u8; 1024]).unwrap();
            std::fs::write(&s.b, [0u8; 1024]).unwrap();
            s
        });
        let mut vars = Vars::new();
        vars.set("tugboot_slot", "A").unwrap();
        let d = Self {
            dir,
            kind,
            slots,
            boots: 0,
        };
        match kind {
            Kind::Uboot => {
                std::fs::write(d.dir.path().join("uboot.env"), vec![0u8; 0x4000]).unwrap();
                d.uboot_env().initialize(&vars).unwrap();
            }
            Kind::Grub => d.grub_env().initialize(&vars).unwrap(),
        }
        d
    }

    fn uboot_env(&self) -> UbootEnvFile {
        let path = self.dir.path().join("uboot.env");
        UbootEnvFile::new(
            EnvConfig::redundant(
                EnvDevice::new(&path, 0, 0x2000),
                EnvDevice::new(&path, 0x2000, 0x2000),
            )
            .unwrap(),
        )
    }

    fn grub_env(&self) -> GrubEnvFile {
        GrubEnvFile::new(self.dir.path().join("grubenv"))
    }

    fn bootloader(&self) -> Box<dyn AbBootloader> {
        match self.kind {
            Kind::Uboot => Box::new(Uboot::new(self.uboot_env(), 1)),
            Kind::Grub => Box::new(Grub::new(self.grub_env(), 1)),
        }
    }

    fn state_path(&self) -> PathBuf {
        self.dir.path().join("state.json")
    }

    fn config(&self) -> AgentConfig {
        AgentConfig {
            state_path: self.state_path(),
            slots: self.slots.clone(),
            board: Some("x86-64-uefi".into()),
            chunk: 4096,
            checkpoint: 4096,
        }
    }

    fn power_on(&mut self) -> (Slot, String) {
        self.boots += 1;
        let slot = match self.kind {
            Kind::Uboot => sim::uboot_power_on(&mut self.uboot_env()),
            Kind::Grub => sim::grub_power_on(&mut self.grub_env()),
        }
        .unwrap();
        (slot, format!("boot-{}", self.boots))
    }

    fn start(&mut self) -> (Agent<RealIo, Box<dyn AbBootloader>>, Next) {
        let (slot, id) = self.power_on();
        Agent::start(RealIo::new(), self.bootloader(), self.config(), slot, &id).unwrap()
    }

    fn install(&self, version: u64, data: &[u8]) -> Result<AgentState, InstallError> {
        let artifacts = self.dir.path().join("media");
        std::fs::create_dir_all(&artifacts).unwrap();
        std::fs::write(artifacts.join(format!("rootfs-{version}.img")), data).unwrap();
        let manifest_path = artifacts.join("manifest.json");
        std::fs::write(&manifest_path, manifest(version, data)).unwrap();
        install_from_files(
            &manifest_path,
            &artifacts,
            &root(),
            &InstallConfig {
                slots: self.slots.clone(),
                target: Slot::A,
                state_path: self.state_path(),
                board: Some("x86-64-uefi".into()),
                now: NOW,
                chunk: 4096,
            },
            &mut RealIo::new(),
            &mut *self.bootloader(),
        )
    }

    fn slot_starts_with(&self, slot: Slot, data: &[u8]) -> bool {
        let mut io = RealIo::new();
        let mut buf = vec![0u8; data.len()];
        let n = io.read_at(self.slots.path(slot), 0, &mut buf).unwrap();
        n == data.len() && buf == data
    }
}

/// Installer → update committed → update rolled back, on one device.
fn lifecycle(mut d: Device) {
    let v1 = content(20_000, 3);
    let v2 = content(30_001, 5);
    let v3 = content(12_345, 7);
    let state = d.install(1, &v1).unwrap();
    assert_eq!((state.committed.slot, state.floor), (Slot::A, 1));
    assert!(d.slot_starts_with(Slot::A, &v1));

    let (mut agent, next) = d.start();
    assert_eq!(next, Next::Idle);
    let m2 = manifest(2, &v2);
    assert_eq!(
        agent.update(&m2, &root(), NOW, &mut &v2[..]).unwrap(),
        Next::Reboot
    );
    assert_eq!(
        agent.bootloader().status().unwrap(),
        BootStatus {
            default: Slot::A,
            trial: Some(Slot::B)
        }
    );
    let (mut agent, next) = d.start();
    assert_eq!(next, Next::HealthCheck);
    assert_eq!(agent.health(Ok(())).unwrap(), Next::Idle);
    assert!(matches!(
        agent.take_reports().as_slice(),
        [Outcome::Committed {
            version: 2,
            slot: Slot::B,
            ..
        }]
    ));
    assert!(d.slot_starts_with(Slot::B, &v2));

    // v3 goes into A (now inactive), fails its health check, and the device returns to B.
    let (mut agent, _) = d.start();
    let m3 = manifest(3, &v3);
    assert_eq!(
        agent.update(&m3, &root(), NOW, &mut &v3[..]).unwrap(),
        Next::Reboot
    );
    let (mut agent, next) = d.start();
    assert_eq!(next, Next::HealthCheck);
    assert_eq!(
        agent.health(Err("kubelet not ready".into())).unwrap(),
        Next::Reboot
    );
    let (mut agent, next) = d.start();
    assert_eq!(next, Next::Idle);
    assert!(matches!(
        agent.take_reports().as_slice(),
        [Outcome::RolledBack { version: 3, slot: Slot::B, reason, .. }] if reason.contains("kubelet")
    ));
    let state = agent.state().clone();
    assert_eq!((state.committed.slot, state.floor), (Slot::B, 2));
    assert_eq!(d.power_on().0, Slot::B);
    // An older image is refused by the floor.
    let (mut agent, _) = d.start();
    let m1 = manifest(1, &v1);
    assert!(agent.update(&m1, &root(), NOW, &mut &v1[..]).is_err());
}

#[test]
fn uboot_redundant_env_on_files() {
    lifecycle(Device::new(Kind::Uboot, None));
}

#[test]
fn grub_env_on_files() {
    lifecycle(Device::new(Kind::Grub, None));
}

#[test]
fn installer_refuses_bad_media() {
    let d = Device::new(Kind::Grub, None);
    let v1 = content(5000, 1);
    let media = d.dir.path().join("media");
    std::fs::create_dir_all(&media).unwrap();
    // The artifact on the media does not match the signed digest.
    std::fs::write(media.join("rootfs-1.img"), content(5000, 2)).unwrap();
    std::fs::write(media.join("manifest.json"), manifest(1, &v1)).unwrap();
    let env_before = std::fs::read(d.dir.path().join("grubenv")).unwrap();
    let err = install_from_files(
        &media.join("manifest.json"),
        &media,
        &root(),
        &InstallConfig {
            slots: d.slots.clone(),
            target: Slot::A,
            state_path: d.state_path(),
            board: None,
            now: NOW,
            chunk: 4096,
        },
        &mut RealIo::new(),
        &mut *d.bootloader(),
    )
    .unwrap_err();
    assert!(matches!(err, InstallError::Slot(_)), "{err}");
    assert!(!d.state_path().exists(), "no state written");
    assert_eq!(
        std::fs::read(d.dir.path().join("grubenv")).unwrap(),
        env_before
    );
}

/// A GPT disk image (made by `sfdisk`) whose two slot partitions are attached as loop devices
/// (by offset and size, which needs no udev to create partition nodes); detached on drop.
struct LoopDisk {
    parts: Vec<String>,
    _image: tempfile::NamedTempFile,
}

impl LoopDisk {
    fn new() -> Self {
        let image = tempfile::NamedTempFile::new().unwrap();
        image.as_file().set_len(8 << 20).unwrap();
        let mut sfdisk = Command::new("sfdisk")
            .arg(image.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("sfdisk (Debian package fdisk)");
        std::io::Write::write_all(
            sfdisk.stdin.as_mut().unwrap(),
            b"label: gpt\nsize=3MiB, name=slotA\nsize=3MiB, name=slotB\n",
        )
        .unwrap();
        drop(sfdisk.stdin.take());
        assert!(sfdisk.wait().unwrap().success());
        let out = Command::new("sfdisk")
            .arg("--json")
            .arg(image.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        let table: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut disk = Self {
            parts: Vec::new(),
            _image: image,
        };
        for part in table["partitiontable"]["partitions"].as_array().unwrap() {
            let start = part["start"].as_u64().unwrap() * 512;
            let size = part["size"].as_u64().unwrap() * 512;
            let out = Command::new("losetup")
                .args(["--find", "--show"])
                .args([
                    "--offset",
                    &start.to_string(),
                    "--sizelimit",
                    &size.to_string(),
                ])
                .arg(disk._image.path())
                .output()
                .expect("losetup (Debian package mount)");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            disk.parts
                .push(String::from_utf8(out.stdout).unwrap().trim().to_owned());
        }
        assert_eq!(disk.parts.len(), 2);
        disk
    }

    fn part(&self, n: usize) -> PathBuf {
        PathBuf::from(&self.parts[n - 1])
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        for p in &self.parts {
            let _ = Command::new("losetup").args(["-d", p]).status();
        }
    }
}

#[test]
#[ignore = "root: loop devices"]
fn slots_on_loop_device_partitions() {
    let disk = LoopDisk::new();
    let slots = SlotPaths {
        a: disk.part(1),
        b: disk.part(2),
    };
    let mut io = RealIo::new();
    assert_eq!(io.capacity(&slots.a).unwrap(), Some(3 << 20));
    // Too large for the partition: refused before anything is written.
    let d = Device::new(Kind::Uboot, Some(slots.clone()));
    let huge = content((3 << 20) + 1, 9);
    assert!(matches!(d.install(1, &huge), Err(InstallError::Slot(_))));
    lifecycle(d);
    assert!(Path::new(&disk.parts[0]).exists());
}
