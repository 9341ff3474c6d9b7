//! Raspberry Pi tryboot backend against the fixtures in tests/fixtures/rpi/ and a simulated
//! firmware: arm → `reboot "0 tryboot"` → status → commit / abort / fallback, on real files.

use std::fs;
use std::path::{Path, PathBuf};

use tugboot_agent::bootloader::Slot;
use tugboot_agent::bootloader::rpi::{
    self, BootInfo, REBOOT_ARG, RpiPartitions, RpiTryboot, TrybootError, read_boot_info,
};
use tugboot_agent::io::RealIo;
use tugboot_agent::update::{AbBootloader, BootError, BootStatus};

const PARTS: RpiPartitions = RpiPartitions { a: 2, b: 3 };

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/rpi")
}

fn fixture(name: &str) -> Vec<u8> {
    let p = fixtures().join(name);
    fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A device: the mounted autoboot partition and the firmware's device tree.
struct Pi {
    _dir: tempfile::TempDir,
    autoboot: PathBuf,
    dt: PathBuf,
}

impl Pi {
    fn new(autoboot_fixture: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("autoboot");
        fs::create_dir(&mnt).unwrap();
        let autoboot = mnt.join(rpi::AUTOBOOT_FILE);
        fs::write(&autoboot, fixture(autoboot_fixture)).unwrap();
        let dt = dir.path().join("device-tree");
        let pi = Self {
            _dir: dir,
            autoboot,
            dt,
        };
        pi.power_on(false);
        pi
    }

    fn backend(&self) -> RpiTryboot<RealIo> {
        RpiTryboot::new(RealIo::new(), &self.autoboot, PARTS)
            .unwrap()
            .with_device_tree(&self.dt)
    }

    fn file(&self) -> Vec<u8> {
        fs::read(&self.autoboot).unwrap()
    }

    /// What the firmware does at power-on, written independently of the agent's parser: read
    /// `autoboot.txt` line by line; `boot_partition` under `[all]` applies always, under
    /// `[tryboot]` only with the one-shot flag; the last applicable one wins. Then tell Linux
    /// through the device tree. Returns the booted partition.
    fn power_on(&self, tryboot_flag: bool) -> u32 {
        let text = String::from_utf8(self.file()).unwrap();
        let mut applies = true;
        let mut partition: u32 = 0;
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            match line {
                "[all]" => applies = true,
                "[tryboot]" => applies = tryboot_flag,
                l if l.starts_with('[') => applies = false,
                l => {
                    if let Some(v) = l.strip_prefix("boot_partition=")
                        && applies
                    {
                        partition = v.parse().unwrap();
                    }
                }
            }
        }
        assert!(text.contains("tryboot_a_b=1\n") || text.contains("tryboot_a_b=1\r\n"));
        let node = self.dt.join("chosen/bootloader");
        fs::create_dir_all(&node).unwrap();
        fs::write(node.join("partition"), partition.to_be_bytes()).unwrap();
        fs::write(node.join("tryboot"), u32::from(tryboot_flag).to_be_bytes()).unwrap();
        partition
    }
}

fn status(default: Slot, trial: Option<Slot>) -> BootStatus {
    BootStatus { default, trial }
}

#[test]
fn device_tree_fixtures_decode() {
    for (dir, partition, tryboot) in [
        ("devicetree-normal-p2", 2, false),
        ("devicetree-tryboot-p3", 3, true),
        ("devicetree-normal-p3", 3, false),
    ] {
        assert_eq!(
            read_boot_info(&fixtures().join(dir)).unwrap(),
            BootInfo { partition, tryboot },
            "{dir}"
        );
        assert_eq!(
            fs::read(fixtures().join(dir).join("chosen/bootloader/partition")).unwrap(),
            [0, 0, 0, u8::try_from(partition).unwrap()]
        );
    }
}

#[test]
fn arm_tryboot_commit() {
    let pi = Pi::new("autoboot-idle-a.txt");
    let mut b = pi.backend();
    assert_eq!(b.status().unwrap(), status(Slot::A, None));
    assert_eq!(b.booted_slot().unwrap(), Some(Slot::A));
    b.arm_trial(Slot::B).unwrap();
    // Arming the idle file gives exactly the example of the Raspberry Pi documentation.
    assert_eq!(pi.file(), fixture("autoboot-ab-doc.txt"));
    assert_eq!(b.status().unwrap(), status(Slot::A, Some(Slot::B)));
    assert_eq!(b.reboot_argument(), "0 tryboot");
    assert_eq!(REBOOT_ARG, "0 tryboot");

    assert_eq!(pi.power_on(true), 3);
    assert_eq!(
        b.boot_info().unwrap(),
        Some(BootInfo {
            partition: 3,
            tryboot: true
        })
    );
    assert_eq!(b.status().unwrap(), status(Slot::A, Some(Slot::B)));
    b.commit(Slot::B).unwrap();
    assert_eq!(pi.file(), fixture("autoboot-committed-b.txt"));
    assert_eq!(b.status().unwrap(), status(Slot::B, None));
    // A repeated commit (power cut before the agent recorded the first) is a no-op.
    b.commit(Slot::B).unwrap();
    assert_eq!(pi.power_on(false), 3);
    assert_eq!(b.booted_slot().unwrap(), Some(Slot::B));
    // A stray tryboot reboot cannot reach the old slot any more.
    assert_eq!(pi.power_on(true), 3);
    let leftovers: Vec<_> = fs::read_dir(pi.autoboot.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("autoboot.txt")]);
}

#[test]
fn unhealthy_trial_is_aborted() {
    let pi = Pi::new("autoboot-idle-a.txt");
    let mut b = pi.backend();
    b.arm_trial(Slot::B).unwrap();
    assert_eq!(pi.power_on(true), 3);
    b.abort_trial(Slot::A).unwrap();
    assert_eq!(pi.file(), fixture("autoboot-idle-a.txt"));
    assert_eq!(b.status().unwrap(), status(Slot::A, None));
    assert_eq!(pi.power_on(false), 2);
    assert_eq!(pi.power_on(true), 2);
}

#[test]
fn crashed_trial_falls_back_and_cannot_be_committed() {
    let pi = Pi::new("autoboot-idle-a.txt");
    let mut b = pi.backend();
    b.arm_trial(Slot::B).unwrap();
    assert_eq!(pi.power_on(true), 3);
    // The trial hangs; the watchdog resets; the firmware cleared its one-shot flag.
    assert_eq!(pi.power_on(false), 2);
    let before = pi.file();
    assert!(matches!(
        b.commit(Slot::B),
        Err(BootError::NotOnTrial {
            asked: Slot::B,
            found: Slot::A
        })
    ));
    assert_eq!(pi.file(), before, "nothing written");
    b.abort_trial(Slot::A).unwrap();
    assert_eq!(b.status().unwrap(), status(Slot::A, None));
}

#[test]
fn comments_and_crlf_survive_edits() {
    let pi = Pi::new("autoboot-comments-crlf.txt");
    let mut b = pi.backend();
    let original = pi.file();
    b.arm_trial(Slot::B).unwrap();
    let armed = pi.file();
    assert_eq!(armed.len(), original.len());
    let diff: Vec<usize> = (0..armed.len())
        .filter(|&i| armed[i] != original[i])
        .collect();
    assert_eq!(diff.len(), 1, "only the [tryboot] digit changes");
    assert_eq!(armed[diff[0]], b'3');
    assert_eq!(pi.power_on(true), 3);
    b.commit(Slot::B).unwrap();
    let committed = String::from_utf8(pi.file()).unwrap();
    assert!(committed.starts_with("# tugboot A/B (written on Windows)\r\n\r\n[all]\r\n"));
    assert!(committed.contains("[none]\r\nboot_partition=7\r\n"));
    assert!(committed.ends_with("[all]\r\nsome_future_key=1"));
    assert_eq!(pi.power_on(false), 3);
}

#[test]
fn corrupt_autoboot_is_refused_and_nothing_is_written() {
    for (name, msg) in [
        ("autoboot-bad-duplicate.txt", "set again"),
        ("autoboot-bad-filter.txt", "cannot evaluate"),
        ("autoboot-bad-spaces.txt", "spaces around"),
        ("autoboot-bad-too-large.txt", "512-byte cap"),
    ] {
        let pi = Pi::new("autoboot-idle-a.txt");
        fs::write(&pi.autoboot, fixture(name)).unwrap();
        let mut b = pi.backend();
        for result in [
            b.arm_trial(Slot::B),
            b.commit(Slot::A),
            b.abort_trial(Slot::A),
            b.status().map(drop),
        ] {
            let err = result.unwrap_err();
            let text = format!(
                "{err}: {}",
                std::error::Error::source(&err).map_or(String::new(), ToString::to_string)
            );
            let BootError::Env(tugboot_agent::bootloader::BootEnvError::Io { source, .. }) = &err
            else {
                panic!("{name}: {err:?}");
            };
            let typed = source
                .get_ref()
                .and_then(|e| e.downcast_ref::<TrybootError>());
            assert!(typed.is_some(), "{name}: typed error travels: {err:?}");
            assert!(
                typed.unwrap().to_string().contains(msg),
                "{name}: {text} / {typed:?}"
            );
        }
        assert_eq!(pi.file(), fixture(name), "{name}: unchanged");
        assert!(!pi.autoboot.with_file_name("autoboot.txt.tmp").exists());
    }
}

#[test]
fn missing_file_and_missing_device_tree_are_clear_errors() {
    let pi = Pi::new("autoboot-idle-a.txt");
    fs::remove_file(&pi.autoboot).unwrap();
    let mut b = pi.backend();
    let err = b.status().unwrap_err().to_string();
    assert!(err.contains("autoboot.txt"), "{err}");
    b.initialize(Slot::A).unwrap();
    assert_eq!(pi.file(), fixture("autoboot-idle-a.txt"));

    fs::remove_file(pi.dt.join("chosen/bootloader/tryboot")).unwrap();
    b.arm_trial(Slot::B).unwrap();
    assert!(
        b.commit(Slot::B).is_err(),
        "no proof the trial slot is running"
    );
    assert_eq!(pi.file(), fixture("autoboot-ab-doc.txt"));
}

#[test]
fn every_seed_goes_through_the_fuzz_entry() {
    let mut files = Vec::new();
    let mut dirs = vec![fixtures()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    assert!(files.len() >= 14, "fixtures missing");
    for p in files {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let data = fs::read(&p).unwrap();
        let accepted = rpi::fuzzing::autoboot(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
        if name.starts_with("autoboot-") {
            assert_eq!(accepted, !name.starts_with("autoboot-bad-"), "{name}");
        }
    }
}
