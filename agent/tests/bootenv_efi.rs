//! EFI `BootNext`/`BootOrder` backend over a fake efivarfs directory built from
//! tests/fixtures/efi/efivars, with a simulated boot manager: arm → reboot → status → commit /
//! abort / fallback; corrupt load options refused with nothing written.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use tugboot_agent::bootloader::efi::{
    self, DevicePathNode, EFI_GLOBAL_VARIABLE, EfiBootNext, EfiError, EfiSlot, Efivarfs,
    LoadOption, load_option,
};
use tugboot_agent::bootloader::{BootEnvError, Slot};
use tugboot_agent::update::{AbBootloader, BootError, BootStatus};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/efi")
}

fn var_file(name: &str) -> String {
    format!("{name}-{EFI_GLOBAL_VARIABLE}")
}

/// A machine: a copy of the fixture variables.
struct Machine {
    dir: tempfile::TempDir,
}

impl Machine {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for e in fs::read_dir(fixtures().join("efivars")).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(var_file(name))
    }

    fn backend(&self) -> EfiBootNext {
        EfiBootNext::new(
            Efivarfs::open(self.dir.path()).unwrap(),
            EfiSlot::loader("EFI/tugboot/slot-a.efi"),
            EfiSlot::loader("EFI/tugboot/slot-b.efi"),
        )
        .unwrap()
    }

    fn read(&self, name: &str) -> Option<Vec<u8>> {
        fs::read(self.path(name)).ok()
    }

    fn u16s(&self, name: &str) -> Option<Vec<u16>> {
        self.read(name).map(|b| {
            b[4..]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect()
        })
    }

    fn snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    }

    /// The boot manager at power-on (UEFI 2.10 §3.1.2), written with plain file operations:
    /// `BootNext` is deleted and booted if set; otherwise the first `BootOrder` entry. The
    /// entry booted goes into the volatile `BootCurrent` (attributes BS|RT). Returns it.
    fn power_on(&self) -> u16 {
        let n = match self.u16s("BootNext") {
            Some(next) => {
                fs::remove_file(self.path("BootNext")).unwrap();
                next[0]
            }
            None => self.u16s("BootOrder").unwrap()[0],
        };
        let mut cur = vec![6, 0, 0, 0];
        cur.extend_from_slice(&n.to_le_bytes());
        fs::write(self.path("BootCurrent"), cur).unwrap();
        n
    }
}

fn status(default: Slot, trial: Option<Slot>) -> BootStatus {
    BootStatus { default, trial }
}

fn efi_error(err: &BootError) -> &EfiError {
    let BootError::Env(BootEnvError::Io { source, .. }) = err else {
        panic!("{err:?}");
    };
    source
        .get_ref()
        .and_then(|e| e.downcast_ref::<EfiError>())
        .unwrap_or_else(|| panic!("{err:?}"))
}

#[test]
fn deconstruct_fixture_entries() {
    let m = Machine::new();
    let vars = Efivarfs::open(m.dir.path()).unwrap();
    assert_eq!(vars.boot_entries(16).unwrap(), vec![0, 1, 2, 3]);

    let v = vars.read("Boot0001").unwrap().unwrap();
    assert_eq!(v.attributes, 7);
    let opt = load_option::parse(&v.data).unwrap();
    assert_eq!(opt.description(), "tugboot A");
    assert!(opt.is_active());
    assert_eq!(
        opt.file_path().as_deref(),
        Some("\\EFI\\tugboot\\slot-a.efi")
    );
    assert_eq!(
        opt.to_string(),
        "tugboot A\tHD(1,GPT,6e5d9a3c-1f2b-4c47-9c1e-8a2d610b4701,0x800,0x32000)/File(\\EFI\\tugboot\\slot-a.efi)"
    );
    let nodes = opt.device_path().unwrap();
    let DevicePathNode::HardDrive(hd) = &nodes[0] else {
        panic!("{nodes:?}");
    };
    assert_eq!((hd.partition_number, hd.start, hd.size), (1, 2048, 204_800));
    // Emit: the same option built from its parts is byte-identical to the fixture.
    let built = LoadOption::new("tugboot A", &nodes).unwrap();
    assert_eq!(built.encode().unwrap(), v.data);

    let ui = load_option::parse(&vars.read("Boot0000").unwrap().unwrap().data).unwrap();
    assert_eq!(ui.attributes, 0x109);
    assert_eq!(ui.file_path(), None);
    assert_eq!(ui.device_path().unwrap().len(), 3);

    let pxe = load_option::parse(&vars.read("Boot0003").unwrap().unwrap().data).unwrap();
    assert_eq!(pxe.description(), "UEFI PXEv4 (MAC:525400123456)");
    assert_eq!(pxe.optional_data.len(), 16);
    assert_eq!(pxe.device_path().unwrap().len(), 5);

    let order = vars.read("BootOrder").unwrap().unwrap();
    assert_eq!(order.as_u16_list().unwrap(), vec![1, 2, 3, 0]);
    let cur = vars.read("BootCurrent").unwrap().unwrap();
    assert_eq!((cur.attributes, cur.as_u16().unwrap()), (6, 1));
}

#[test]
fn deconstruct_real_ovmf_entries() {
    let read = |name: &str| {
        let bytes = fs::read(fixtures().join(name)).unwrap();
        let var = efi::efivarfs::parse_variable(&bytes).unwrap();
        assert_eq!(var.attributes, 7, "{name}");
        let opt = load_option::parse(&var.data).unwrap();
        assert_eq!(opt.encode().unwrap(), var.data, "{name}: emit");
        opt
    };
    let dvd = read("ovmf-Boot0001-dvd.bin");
    assert_eq!(dvd.description(), "UEFI QEMU DVD-ROM QM00005 ");
    assert_eq!(
        dvd.to_string(),
        "UEFI QEMU DVD-ROM QM00005 \tPath(2,1,d041030a00000000)/Path(1,1,021f)/Path(3,18,0200ffff0000)"
    );
    // OVMF tags the options it creates with a 16-byte GUID in the optional data.
    assert_eq!(dvd.optional_data.len(), 16);
    assert_eq!(dvd.file_path(), None);
    let misc = read("ovmf-Boot0002-misc-device.bin");
    assert_eq!(misc.description(), "UEFI Misc Device");
    assert_eq!(misc.optional_data, dvd.optional_data);
    let shell = read("ovmf-Boot0003-shell.bin");
    assert_eq!(shell.description(), "EFI Internal Shell");
    assert!(shell.optional_data.is_empty());
    assert!(matches!(
        shell.device_path().unwrap().as_slice(),
        [
            DevicePathNode::Other {
                kind: 4,
                sub_type: 7,
                ..
            },
            DevicePathNode::Other {
                kind: 4,
                sub_type: 6,
                ..
            },
            DevicePathNode::EndEntire
        ]
    ));
}

#[test]
fn arm_reboot_commit() {
    let m = Machine::new();
    let mut b = m.backend();
    let state = b.state().unwrap();
    assert_eq!(state.entries, [1, 2]);
    assert_eq!(state.booted_slot(), Some(Slot::A));
    assert_eq!(b.status().unwrap(), status(Slot::A, None));

    b.arm_trial(Slot::B).unwrap();
    assert_eq!(m.read("BootNext").unwrap(), [7, 0, 0, 0, 2, 0]);
    assert_eq!(b.status().unwrap(), status(Slot::A, Some(Slot::B)));

    assert_eq!(m.power_on(), 2);
    assert_eq!(m.read("BootNext"), None, "the firmware consumed it");
    assert_eq!(b.status().unwrap(), status(Slot::A, Some(Slot::B)));
    assert!(matches!(
        b.commit(Slot::A),
        Err(BootError::NotOnTrial {
            asked: Slot::A,
            found: Slot::B
        })
    ));
    b.commit(Slot::B).unwrap();
    assert_eq!(m.u16s("BootOrder").unwrap(), vec![2, 1, 3, 0]);
    assert_eq!(m.read("BootOrder").unwrap()[..4], [7, 0, 0, 0]);
    assert_eq!(b.status().unwrap(), status(Slot::B, None));
    let before = m.snapshot();
    b.commit(Slot::B).unwrap();
    assert_eq!(m.snapshot(), before, "a repeated commit writes nothing");
    assert_eq!(m.power_on(), 2);
    assert_eq!(m.power_on(), 2);
}

#[test]
fn unhealthy_trial_is_aborted() {
    let m = Machine::new();
    let mut b = m.backend();
    b.arm_trial(Slot::B).unwrap();
    assert_eq!(m.power_on(), 2);
    let order = m.read("BootOrder");
    b.abort_trial(Slot::A).unwrap();
    assert_eq!(m.read("BootOrder"), order, "A already first: not rewritten");
    // Still running B until the reboot the agent asks for.
    assert_eq!(b.status().unwrap(), status(Slot::A, Some(Slot::B)));
    assert_eq!(m.power_on(), 1);
    assert_eq!(b.status().unwrap(), status(Slot::A, None));
}

#[test]
fn abort_before_the_reboot_clears_boot_next() {
    let m = Machine::new();
    let mut b = m.backend();
    b.arm_trial(Slot::B).unwrap();
    b.abort_trial(Slot::A).unwrap();
    assert_eq!(m.read("BootNext"), None);
    assert_eq!(b.status().unwrap(), status(Slot::A, None));
    assert_eq!(m.power_on(), 1);
}

#[test]
fn foreign_boot_next_is_left_alone() {
    let m = Machine::new();
    fs::write(m.path("BootNext"), [7, 0, 0, 0, 3, 0]).unwrap();
    let mut b = m.backend();
    assert_eq!(b.status().unwrap(), status(Slot::A, None));
    b.abort_trial(Slot::A).unwrap();
    assert_eq!(m.read("BootNext").unwrap(), [7, 0, 0, 0, 3, 0]);
}

#[test]
fn crashed_trial_falls_back_and_cannot_be_committed() {
    let m = Machine::new();
    let mut b = m.backend();
    b.arm_trial(Slot::B).unwrap();
    assert_eq!(m.power_on(), 2);
    // Hang, watchdog reset: BootNext is gone, BootOrder boots A.
    assert_eq!(m.power_on(), 1);
    let before = m.snapshot();
    assert!(matches!(
        b.commit(Slot::B),
        Err(BootError::NotOnTrial {
            asked: Slot::B,
            found: Slot::A
        })
    ));
    assert_eq!(m.snapshot(), before);
}

#[test]
fn corrupt_load_options_are_refused_and_nothing_is_written() {
    for bad in [
        "bad-truncated-path.bin",
        "bad-hd-length.bin",
        "bad-description.bin",
    ] {
        let m = Machine::new();
        fs::copy(fixtures().join(bad), m.path("Boot0004")).unwrap();
        let mut b = m.backend();
        let before = m.snapshot();
        for result in [
            b.arm_trial(Slot::B),
            b.commit(Slot::A),
            b.abort_trial(Slot::A),
            b.status().map(drop),
        ] {
            let err = result.unwrap_err();
            assert!(
                matches!(efi_error(&err), EfiError::LoadOption { name, .. } if name == "Boot0004"),
                "{bad}: {err}"
            );
        }
        assert_eq!(m.snapshot(), before, "{bad}");
    }
}

#[test]
fn missing_duplicate_and_inactive_entries() {
    let m = Machine::new();
    fs::remove_file(m.path("Boot0002")).unwrap();
    let mut b = m.backend();
    let err = b.arm_trial(Slot::B).unwrap_err();
    assert!(matches!(
        efi_error(&err),
        EfiError::NoEntry { slot: Slot::B, .. }
    ));
    assert!(err.to_string().contains("efibootmgr"), "{err}");

    let m = Machine::new();
    fs::copy(m.path("Boot0002"), m.path("Boot0007")).unwrap();
    let err = m.backend().status().unwrap_err();
    assert!(
        matches!(efi_error(&err), EfiError::AmbiguousEntry { slot: Slot::B, entries } if *entries == [2, 7])
    );

    let m = Machine::new();
    let mut inactive = m.read("Boot0002").unwrap();
    inactive[4] = 0;
    fs::write(m.path("Boot0002"), inactive).unwrap();
    let err = m.backend().arm_trial(Slot::B).unwrap_err();
    assert!(matches!(
        efi_error(&err),
        EfiError::InactiveEntry {
            slot: Slot::B,
            entry: 2
        }
    ));
    assert_eq!(m.read("BootNext"), None);

    let m = Machine::new();
    fs::write(m.path("BootOrder"), [7, 0, 0, 0, 3, 0, 0, 0]).unwrap();
    let err = m.backend().arm_trial(Slot::B).unwrap_err();
    assert!(matches!(efi_error(&err), EfiError::NotInBootOrder { .. }));
    fs::write(m.path("BootOrder"), [7, 0, 0, 0, 3]).unwrap();
    let err = m.backend().status().unwrap_err();
    assert!(matches!(
        efi_error(&err),
        EfiError::Variable {
            name: "BootOrder",
            ..
        }
    ));
}

#[test]
fn description_and_path_matching() {
    let m = Machine::new();
    let vars = Efivarfs::open(m.dir.path()).unwrap();
    let b = EfiBootNext::new(
        vars.clone(),
        EfiSlot {
            loader: "\\efi\\TUGBOOT\\slot-a.EFI".into(),
            description: Some("tugboot A".into()),
        },
        EfiSlot::loader("/EFI/tugboot/slot-b.efi"),
    )
    .unwrap();
    assert_eq!(b.state().unwrap().entries, [1, 2]);
    let wrong = EfiBootNext::new(
        vars.clone(),
        EfiSlot {
            loader: "EFI/tugboot/slot-a.efi".into(),
            description: Some("tugboot B".into()),
        },
        EfiSlot::loader("EFI/tugboot/slot-b.efi"),
    )
    .unwrap();
    assert!(matches!(
        wrong.state(),
        Err(EfiError::NoEntry { slot: Slot::A, .. })
    ));
    assert!(matches!(
        EfiBootNext::new(
            vars,
            EfiSlot::loader("EFI/x.efi"),
            EfiSlot::loader("\\EFI\\X.EFI")
        ),
        Err(EfiError::SameLoader(_))
    ));
}

#[test]
fn efivarfs_must_exist() {
    let err = Efivarfs::open("/nonexistent/efivars")
        .unwrap_err()
        .to_string();
    assert!(err.contains("mount -t efivarfs"), "{err}");
}

#[test]
fn every_seed_goes_through_the_fuzz_entry() {
    let mut files: Vec<PathBuf> = fs::read_dir(fixtures().join("efivars"))
        .unwrap()
        .chain(fs::read_dir(fixtures()).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(files.len() >= 14, "fixtures missing");
    for p in files {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let data = fs::read(&p).unwrap();
        let accepted = efi::fuzzing::load_option(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
        if name.starts_with("bad-") {
            assert!(!accepted, "{name}");
        }
        if name.starts_with("ovmf-") {
            assert!(accepted, "{name}");
        }
        if efi::efivarfs::parse_boot_entry_file_name(&name).is_some() {
            assert!(accepted, "{name}");
        }
    }
}

/// Real firmware: OVMF in QEMU/KVM boots a Debian kernel (EFI stub) from a GPT disk whose
/// ESP holds `\EFI\tugboot\slot-{a,b}.efi`; inside the guest this test binary runs
/// [`guest_efi_boot`] on the real efivarfs. Five boots: set up entries + arm B; trial of B
/// (BootNext consumed, BootCurrent = B) → commit; B is default → arm A; trial of A → no commit
/// (unhealthy); fallback to B. Needs root, qemu-system-x86 (TCG: nested KVM here cannot run OVMF), ovmf, mtools, fdisk,
/// busybox, cpio and /boot/vmlinuz-*: `cargo test -p tugboot-agent --test bootenv_efi --
/// --ignored ovmf`.
#[test]
#[ignore = "root: qemu"]
fn ovmf_bootnext() {
    use std::process::Command;
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let kernel = fs::read_dir("/boot")
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("vmlinuz-"))
        .expect("a kernel in /boot");
    let release = kernel
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_owned();

    // initramfs: busybox, this test binary, their libraries, efivarfs.ko, /init.
    let root = w.join("initramfs");
    fs::create_dir_all(root.join("bin")).unwrap();
    let probe = std::env::current_exe().unwrap();
    fs::copy(&probe, root.join("probe")).unwrap();
    fs::copy("/usr/bin/busybox", root.join("bin/busybox")).unwrap();
    for bin in [probe.as_path(), Path::new("/usr/bin/busybox")] {
        let ldd = String::from_utf8(run(Command::new("ldd").arg(bin)).stdout).unwrap();
        for lib in ldd.split_whitespace().filter(|s| s.starts_with('/')) {
            let dst = root.join(lib.trim_start_matches('/'));
            fs::create_dir_all(dst.parent().unwrap()).unwrap();
            fs::copy(lib, dst).unwrap();
        }
    }
    fs::copy(
        format!("/lib/modules/{release}/kernel/fs/efivarfs/efivarfs.ko"),
        root.join("efivarfs.ko"),
    )
    .unwrap();
    let init = "#!/bin/busybox sh\n\
        /bin/busybox mkdir -p /proc /sys /dev /tmp\n\
        /bin/busybox mount -t proc proc /proc\n\
        /bin/busybox mount -t sysfs sys /sys\n\
        /bin/busybox mount -t devtmpfs dev /dev\n\
        /bin/busybox insmod /efivarfs.ko\n\
        /bin/busybox mount -t efivarfs efivarfs /sys/firmware/efi/efivars\n\
        TUGBOOT_EFI_GUEST=1 /probe guest_efi_boot --ignored --exact --nocapture --test-threads=1\n\
        echo TUGBOOT-GUEST-END rc=$?\n\
        /bin/busybox poweroff -f\n";
    fs::write(root.join("init"), init).unwrap();
    run(Command::new("chmod").arg("755").arg(root.join("init")));
    let initrd = w.join("initrd.img");
    run(Command::new("sh").arg("-c").arg(format!(
        "cd {} && find . | cpio -o -H newc --quiet | gzip -1 > {}",
        root.display(),
        initrd.display()
    )));

    // GPT disk: ESP = partition 1, LBA 2048, fixed GUID; FAT made and filled with mtools.
    const ESP_START: u64 = 2048;
    const ESP_SECTORS: u64 = 400_000;
    const ESP_GUID: &str = "6E5D9A3C-1F2B-4C47-9C1E-8A2D610B4701";
    let disk = w.join("disk.img");
    let f = fs::File::create(&disk).unwrap();
    f.set_len((ESP_START + ESP_SECTORS + 2048) * 512).unwrap();
    drop(f);
    let script = format!(
        "label: gpt\nstart={ESP_START}, size={ESP_SECTORS}, \
         type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid={ESP_GUID}, name=ESP\n"
    );
    fs::write(w.join("layout"), script).unwrap();
    run(Command::new("sh").arg("-c").arg(format!(
        "sfdisk --no-reread --no-tell-kernel {} < {}",
        disk.display(),
        w.join("layout").display()
    )));
    let esp = format!("{}@@{}", disk.display(), ESP_START * 512);
    run(Command::new("mformat")
        .args(["-i", &esp, "-F", "-T"])
        .arg(ESP_SECTORS.to_string())
        .arg("::"));
    run(Command::new("mmd").args(["-i", &esp, "::/EFI", "::/EFI/tugboot"]));
    for (src, dst) in [
        (kernel.as_path(), "::/EFI/tugboot/slot-a.efi"),
        (kernel.as_path(), "::/EFI/tugboot/slot-b.efi"),
        (initrd.as_path(), "::/EFI/tugboot/initrd.img"),
    ] {
        run(Command::new("mcopy").args(["-i", &esp]).arg(src).arg(dst));
    }

    let vars = w.join("OVMF_VARS.fd");
    fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
    let boot = |n: usize, direct: bool| -> String {
        let mut cmd = Command::new("timeout");
        cmd.args([
            "300",
            "qemu-system-x86_64",
            "-machine",
            "q35,accel=tcg",
            "-m",
            "768",
        ])
        .args([
            "-display", "none", "-serial", "stdio", "-monitor", "none", "-nic", "none",
        ])
        .args(["-no-reboot", "-drive"])
        .arg("if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd")
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,file={}", vars.display()))
        .arg("-drive")
        .arg(format!("if=virtio,format=raw,file={}", disk.display()));
        if direct {
            cmd.arg("-kernel").arg(&kernel).arg("-initrd").arg(&initrd).arg("-append").arg(
                format!(
                    "console=ttyS0 panic=-1 tugboot.phase=setup tugboot.esp={ESP_GUID},{ESP_START},{ESP_SECTORS}"
                ),
            );
        }
        let out = run(&mut cmd);
        let log = String::from_utf8_lossy(&out.stdout).into_owned();
        fs::write(w.join(format!("boot-{n}.log")), &log).unwrap();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.starts_with("TUGBOOT-GUEST"))
            .collect();
        assert!(
            lines.iter().any(|l| l.contains("rc=0")),
            "boot {n} failed:\n{log}"
        );
        lines.join("\n")
    };
    let b1 = boot(1, true);
    assert!(b1.contains("setup entries=[0A0A, 0B0B] armed=B"), "{b1}");
    let b2 = boot(2, false);
    assert!(
        b2.contains("current=0B0B default=A trial=Some(B) boot_next=None action=commit"),
        "{b2}"
    );
    let b3 = boot(3, false);
    assert!(
        b3.contains("current=0B0B default=B trial=None boot_next=None action=arm-A"),
        "{b3}"
    );
    let b4 = boot(4, false);
    assert!(
        b4.contains("current=0A0A default=B trial=Some(A) boot_next=None action=none"),
        "{b4}"
    );
    let b5 = boot(5, false);
    assert!(b5.contains("current=0B0B default=B trial=None"), "{b5}");
    for (n, log) in [b1, b2, b3, b4, b5].iter().enumerate() {
        println!("boot {}:\n{log}", n + 1);
    }
}

/// The guest side of [`ovmf_bootnext`]; fails anywhere but inside that guest.
#[test]
#[ignore = "runs inside the QEMU guest of ovmf_bootnext"]
fn guest_efi_boot() {
    use tugboot_agent::bootloader::efi::efivarfs::{Variable, boot_entry_name};
    // This is the guest half of `ovmf_bootnext` (the guest runs this test binary). On the host,
    // where `cargo test -- --ignored` reaches it too, there is nothing to do.
    if std::env::var_os("TUGBOOT_EFI_GUEST").is_none() {
        eprintln!("guest_efi_boot: runs inside the ovmf_bootnext guest only; nothing to do here");
        return;
    }
    let vars = Efivarfs::open(efi::EFIVARFS).unwrap();
    let backend = || {
        EfiBootNext::new(
            vars.clone(),
            EfiSlot::loader("EFI/tugboot/slot-a.efi"),
            EfiSlot::loader("EFI/tugboot/slot-b.efi"),
        )
        .unwrap()
    };
    // Dump every boot variable as the firmware keeps it (fixture material).
    for n in vars.boot_entries(64).unwrap() {
        let name = boot_entry_name(n);
        let v = vars.read(&name).unwrap().unwrap();
        let opt = load_option::parse(&v.data).unwrap();
        println!(
            "TUGBOOT-GUEST-VAR {name} attrs={:#x} {} {}",
            v.attributes,
            opt,
            v.data
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
    }
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap();
    if cmdline.contains("tugboot.phase=setup") {
        let esp = cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("tugboot.esp="))
            .unwrap();
        let mut parts = esp.split(',');
        let guid = parts.next().unwrap();
        let start: u64 = parts.next().unwrap().parse().unwrap();
        let size: u64 = parts.next().unwrap().parse().unwrap();
        let hex: String = guid.chars().filter(char::is_ascii_hexdigit).collect();
        let b: Vec<u8> = (0..16)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        // GUID in EFI byte order: the first three fields little-endian.
        let signature = [
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
            b[14], b[15],
        ];
        let hd = DevicePathNode::HardDrive(efi::HardDrive {
            partition_number: 1,
            start,
            size,
            signature,
            format: 2,
            signature_type: 2,
        });
        for (n, slot, file) in [(0x0A0A, "A", "slot-a.efi"), (0x0B0B, "B", "slot-b.efi")] {
            let path = [
                hd.clone(),
                DevicePathNode::FilePath(
                    format!("\\EFI\\tugboot\\{file}").encode_utf16().collect(),
                ),
                DevicePathNode::EndEntire,
            ];
            let mut opt = LoadOption::new(&format!("tugboot {slot}"), &path).unwrap();
            opt.optional_data = format!(
                "initrd=\\EFI\\tugboot\\initrd.img console=ttyS0 panic=-1 tugboot.slot={slot}"
            )
            .encode_utf16()
            .chain([0])
            .flat_map(u16::to_le_bytes)
            .collect();
            vars.write(&boot_entry_name(n), &Variable::boot(opt.encode().unwrap()))
                .unwrap();
        }
        let mut order = vec![0x0A0A, 0x0B0B];
        order.extend(
            vars.read("BootOrder")
                .unwrap()
                .map(|v| v.as_u16_list().unwrap())
                .unwrap_or_default()
                .into_iter()
                .filter(|n| *n != 0x0A0A && *n != 0x0B0B),
        );
        vars.write("BootOrder", &Variable::boot(Variable::u16_data(&order)))
            .unwrap();
        let mut b = backend();
        b.arm_trial(Slot::B).unwrap();
        let st = b.state().unwrap();
        println!(
            "TUGBOOT-GUEST setup entries=[{:04X}, {:04X}] armed={}",
            st.entries[0],
            st.entries[1],
            st.boot_next.and_then(|n| st.slot_of(n)).unwrap()
        );
        return;
    }
    let mut b = backend();
    let state = b.state().unwrap();
    let status = b.status().unwrap();
    let current = state.boot_current.unwrap();
    let action = match (status.trial, state.booted_slot()) {
        (Some(Slot::B), Some(Slot::B)) => {
            b.commit(Slot::B).unwrap();
            "commit"
        }
        (None, _) if status.default == Slot::B => {
            b.arm_trial(Slot::A).unwrap();
            "arm-A"
        }
        _ => "none",
    };
    println!(
        "TUGBOOT-GUEST current={current:04X} default={} trial={:?} boot_next={:?} action={action}",
        status.default, status.trial, state.boot_next
    );
}
