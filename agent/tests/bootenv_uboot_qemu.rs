//! The shipped U-Boot boot script (`firmware/boot/uboot-ab.cmd`) run by Debian's real U-Boot
//! (`u-boot-qemu`, qemu_arm64, under QEMU's TCG), cross-checked against the simulated U-Boot
//! the agent's exhaustive power-loss tests use (`update::sim::uboot_power_on`): for the same
//! environment, written by the agent's own code, both boot the same slot and leave the same
//! A/B variables behind, power-on after power-on (arm → trial boots → fallback, commit,
//! counts past 9, a second arming).
//!
//! The disk: a GPT with one FAT partition holding `boot.scr.uimg` (made by Debian's `mkimage`
//! from the shipped script) and `uboot.env`; no kernels, so each boot stops after the script
//! said which slot it boots. QEMU, not root: `cargo test -p tugboot-agent --test
//! bootenv_uboot_qemu -- --ignored`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tugboot_agent::bootloader::uboot::{EnvConfig, EnvDevice, UbootEnvFile, ab};
use tugboot_agent::bootloader::{BootEnv, Slot, Vars};
use tugboot_agent::update::sim::uboot_power_on;

mod common;
use common::{run, tool};

const UBOOT: &str = "/usr/lib/u-boot/qemu_arm64/u-boot.bin";
const ENV_SIZE: usize = 0x200;
/// The contract's variables (what the script imports and exports).
const CONTRACT: [&str; 5] = [
    ab::SLOT,
    ab::UPGRADE_AVAILABLE,
    ab::BOOTCOUNT,
    ab::BOOTLIMIT,
    ab::ALTBOOTCMD,
];

struct Lab {
    dir: tempfile::TempDir,
    qemu: PathBuf,
    mcopy: PathBuf,
}

fn env_file(path: &Path) -> UbootEnvFile {
    UbootEnvFile::new(EnvConfig::single(EnvDevice::new(path, 0, ENV_SIZE)).unwrap())
}

/// A new environment file at `path` holding `vars`, written by the agent's backend.
fn new_env_file(path: &Path, vars: &Vars) -> UbootEnvFile {
    std::fs::File::create(path)
        .unwrap()
        .set_len(ENV_SIZE as u64)
        .unwrap();
    let mut env = env_file(path);
    env.initialize(vars).unwrap();
    env
}

impl Lab {
    fn new() -> Option<Self> {
        let qemu = tool("qemu-system-aarch64", "qemu-system-arm")?;
        let mkimage = tool("mkimage", "u-boot-tools")?;
        let mformat = tool("mformat", "mtools")?;
        let mcopy = tool("mcopy", "mtools")?;
        let sfdisk = tool("sfdisk", "fdisk")?;
        assert!(
            Path::new(UBOOT).exists(),
            "{UBOOT} missing: install u-boot-qemu"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let script = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../firmware/boot/uboot-ab.cmd"),
        )
        .unwrap();
        std::fs::write(
            p.join("boot.cmd"),
            format!("setenv tugboot_cmdline \"console=ttyAMA0\"\n{script}"),
        )
        .unwrap();
        run(Command::new(mkimage)
            .args(["-A", "arm64", "-O", "linux", "-T", "script", "-C", "none"])
            .args(["-n", "tugboot A/B", "-d"])
            .arg(p.join("boot.cmd"))
            .arg(p.join("boot.scr.uimg")));
        let disk = p.join("disk.img");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(40 << 20)
            .unwrap();
        let mut sf = Command::new(sfdisk)
            .arg("--quiet")
            .arg(&disk)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        std::io::Write::write_all(
            sf.stdin.as_mut().unwrap(),
            b"label: gpt\nstart=2048, size=65536, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n",
        )
        .unwrap();
        drop(sf.stdin.take());
        assert!(sf.wait().unwrap().success(), "sfdisk");
        run(Command::new(mformat)
            .arg("-i")
            .arg(format!("{}@@1M", disk.display()))
            .args(["-v", "TUGBOOT-ESP", "::"]));
        run(Command::new(&mcopy)
            .arg("-i")
            .arg(format!("{}@@1M", disk.display()))
            .arg(p.join("boot.scr.uimg"))
            .arg("::/boot.scr.uimg"));
        Some(Self { dir, qemu, mcopy })
    }

    fn part(&self) -> String {
        format!("{}@@1M", self.dir.path().join("disk.img").display())
    }

    /// Puts `vars` on the boot partition, written by the agent's U-Boot backend.
    fn install(&self, vars: &Vars) {
        let f = self.dir.path().join("uboot.env");
        new_env_file(&f, vars);
        self.put_env(&f);
    }

    /// Copies the file `from` to the boot partition's `uboot.env`.
    fn put_env(&self, from: &Path) {
        run(Command::new(&self.mcopy)
            .args(["-o", "-i", &self.part()])
            .arg(from)
            .arg("::/uboot.env"));
    }

    /// Copies the boot partition's `uboot.env` to the file `to`.
    fn get_env(&self, to: &Path) {
        run(Command::new(&self.mcopy)
            .args(["-o", "-i", &self.part(), "::/uboot.env"])
            .arg(to));
    }

    /// The environment on the boot partition, read by the agent's backend.
    fn env(&self) -> Vars {
        let f = self.dir.path().join("uboot.env");
        self.get_env(&f);
        env_file(&f).load().unwrap()
    }

    /// One power-on of real U-Boot: the slot the script boots.
    fn boot(&self) -> Slot {
        let mut child = Command::new(&self.qemu)
            .args(["-M", "virt", "-cpu", "cortex-a57", "-m", "256"])
            .args([
                "-accel",
                "tcg",
                "-nographic",
                "-monitor",
                "none",
                "-nic",
                "none",
            ])
            .args(["-bios", UBOOT, "-drive"])
            .arg(format!(
                "if=virtio,format=raw,file={}",
                self.dir.path().join("disk.img").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut seen = Vec::new();
        let mut slot = None;
        // "booting slot X" comes after the count was saved; the line after it (the kernel
        // load failing) shows the script went on, so the write is complete.
        while let Some(Ok(line)) = lines.next() {
            if let Some(s) = line.trim().strip_prefix("tugboot: booting slot ") {
                slot = Some(if s.starts_with('B') { Slot::B } else { Slot::A });
            } else if slot.is_some() && line.contains("did not boot") {
                break;
            }
            seen.push(line);
            assert!(
                Instant::now() < deadline,
                "U-Boot never booted a slot:\n{}",
                seen.join("\n")
            );
        }
        let _ = child.kill();
        let _ = child.wait();
        slot.unwrap_or_else(|| panic!("no slot booted:\n{}", seen.join("\n")))
    }
}

fn contract(v: &Vars) -> Vec<(&'static str, Option<String>)> {
    CONTRACT
        .iter()
        .map(|n| (*n, v.get_str(n).map(str::to_owned)))
        .collect()
}

/// Power-on after power-on: real U-Boot and the simulation, from the same environment, boot
/// the same slot and leave the same contract variables. `edit` runs the agent's side between
/// boots (commit, arm again), on both.
fn cross_check(lab: &Lab, start: &Vars, boots: usize, edit: &dyn Fn(usize, &mut Vars)) {
    let mut sim = new_env_file(&lab.dir.path().join("sim.env"), start);
    lab.install(start);
    for n in 0..boots {
        let real = lab.boot();
        let simulated = uboot_power_on(&mut sim).unwrap();
        let (real_env, mut sim_env) = (lab.env(), sim.load().unwrap());
        assert_eq!(real, simulated, "boot {n}: slot");
        assert_eq!(
            contract(&real_env),
            contract(&sim_env),
            "boot {n}: environment"
        );
        edit(n, &mut sim_env);
        sim.store(&sim_env).unwrap();
        lab.install(&sim_env);
    }
}

#[test]
#[ignore = "QEMU (arm64 under TCG): run by tests/run"]
fn real_uboot_runs_the_script_like_the_simulation() {
    let Some(lab) = Lab::new() else {
        return;
    };
    let mut v = Vars::new();
    ab::set_slot(&mut v, Slot::A);

    // Committed A, no trial: boots A, writes nothing.
    cross_check(&lab, &v, 1, &|_, _| {});

    // A trial of B with 2 boots allowed: B, B, then the fallback to A for good.
    let mut armed = v.clone();
    ab::arm_trial(&mut armed, Slot::B, 2).unwrap();
    cross_check(&lab, &armed, 4, &|_, _| {});

    // A trial of B that comes up healthy: the agent commits after the first boot; B stays.
    let mut once = v.clone();
    ab::arm_trial(&mut once, Slot::B, 1).unwrap();
    cross_check(&lab, &once, 3, &|n, env| {
        if n == 0 {
            ab::commit(env);
        }
    });

    // Counting is decimal past 9 (the script's chain, not setexpr's hex): 9 → 10 → 11, then
    // over bootlimit 10 the fallback.
    let mut long = v.clone();
    ab::arm_trial(&mut long, Slot::B, 10).unwrap();
    ab::set_bootcount(&mut long, 9);
    cross_check(&lab, &long, 3, &|_, _| {});

    // B committed, a trial of A armed again after a fallback: the same rules the other way.
    let mut back = Vars::new();
    ab::set_slot(&mut back, Slot::B);
    ab::arm_trial(&mut back, Slot::A, 1).unwrap();
    cross_check(&lab, &back, 3, &|_, _| {});
}

#[test]
#[ignore = "QEMU (arm64 under TCG): run by tests/run"]
fn real_uboot_with_a_corrupt_environment_boots_slot_a_and_writes_nothing() {
    let Some(lab) = Lab::new() else {
        return;
    };
    let mut v = Vars::new();
    ab::arm_trial(&mut v, Slot::B, 1).unwrap();
    lab.install(&v);
    // One flipped byte in the data: the CRC no longer matches.
    let f = lab.dir.path().join("uboot.env");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[10] ^= 0x20;
    std::fs::write(&f, &bytes).unwrap();
    lab.put_env(&f);
    // The simulation refuses such an environment; U-Boot boots its default, A (never an
    // uncounted trial), and leaves the file as it was.
    assert!(uboot_power_on(&mut env_file(&f)).is_err());
    assert_eq!(lab.boot(), Slot::A);
    let out = lab.dir.path().join("after.env");
    lab.get_env(&out);
    assert_eq!(std::fs::read(out).unwrap(), bytes);
}
