//! GRUB environment blocks cross-checked against Debian's real tools: `grub-editenv` and
//! `grub-script-check` (grub-common), and the shipped A/B snippet run inside real GRUB
//! (`grub-emu`, package grub-emu) against an ext2 image (`mke2fs`/`debugfs`, e2fsprogs).
//!
//! A missing tool fails the test with the package to install, unless
//! `TUGBOOT_SKIP_TOOL_TESTS=1` is set.

use std::path::{Path, PathBuf};
use std::process::Command;

use tugboot_agent::bootloader::grub::{self, GrubEnvError, GrubEnvFile, ab};
use tugboot_agent::bootloader::{BootEnv, BootEnvError, Slot, Vars};

mod common;
use common::{fixture, run, tool, vars};

/// Values GRUB has to escape or that shells and parsers commonly get wrong.
const TRICKY: &[(&str, &str)] = &[
    ("tugboot_slot", "A"),
    ("spaced", "a b  c "),
    ("eq", "x=y=z"),
    ("back", "C:\\path\\"),
    ("multi", "line1\nline2\n"),
    ("empty", ""),
    ("hashval", "#not a comment"),
];

/// What `grub-editenv list` prints: `name=value` lines in block order.
fn list_text(v: &Vars) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, val) in v.iter() {
        out.extend_from_slice(n);
        out.push(b'=');
        out.extend_from_slice(val);
        out.push(b'\n');
    }
    out
}

fn editenv(tool: &Path, file: &Path, args: &[&str]) -> Vec<u8> {
    run(Command::new(tool).arg(file).args(args))
}

#[test]
fn editenv_block_is_read_by_ours() {
    let Some(ge) = tool("grub-editenv", "grub-common") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("grubenv");
    editenv(&ge, &f, &["create"]);
    let args: Vec<String> = TRICKY.iter().map(|(n, v)| format!("{n}={v}")).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    editenv(&ge, &f, &[&["set"], args.as_slice()].concat());
    let got = GrubEnvFile::new(&f).load().unwrap();
    assert!(got.eq_ordered(&vars(TRICKY)), "{got:?}");
}

#[test]
fn ours_block_is_listed_by_editenv() {
    let Some(ge) = tool("grub-editenv", "grub-common") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("grubenv");
    let mut env = GrubEnvFile::new(&f);
    env.initialize(&vars(&[("stale", "1")])).unwrap();
    env.store(&vars(TRICKY)).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&editenv(&ge, &f, &["list"])),
        String::from_utf8_lossy(&list_text(&vars(TRICKY)))
    );
    // grub-editenv can keep editing what we wrote, and we read its edits.
    editenv(&ge, &f, &["set", "spaced=changed", "new=v"]);
    editenv(&ge, &f, &["unset", "eq"]);
    let mut expect = vars(TRICKY);
    expect.set("spaced", "changed").unwrap();
    expect.remove("eq");
    expect.set("new", "v").unwrap();
    assert!(env.load().unwrap().eq_ordered(&expect));
}

#[test]
fn same_edits_give_same_bytes_as_editenv() {
    let Some(ge) = tool("grub-editenv", "grub-common") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let theirs = dir.path().join("theirs");
    let ours = dir.path().join("ours");
    editenv(&ge, &theirs, &["create"]);
    let mut env = GrubEnvFile::new(&ours);
    let mut v = Vars::new();
    env.initialize(&v).unwrap();
    assert_eq!(
        std::fs::read(&ours).unwrap(),
        std::fs::read(&theirs).unwrap()
    );

    enum Edit {
        Set(&'static str, &'static str),
        Unset(&'static str),
    }
    let steps = [
        Edit::Set("a", "1"),
        Edit::Set("b", "x\\y"),
        Edit::Set("c", "l1\nl2"),
        Edit::Set("a", "a much longer value than before"),
        Edit::Unset("b"),
        Edit::Set("d", ""),
        Edit::Set("a", "s"),
        Edit::Set("b", "back at the end"),
    ];
    for (i, step) in steps.iter().enumerate() {
        match step {
            Edit::Set(n, val) => {
                editenv(&ge, &theirs, &["set", &format!("{n}={val}")]);
                v.set(*n, *val).unwrap();
            }
            Edit::Unset(n) => {
                editenv(&ge, &theirs, &["unset", n]);
                v.remove(n);
            }
        }
        env.store(&v).unwrap();
        assert!(
            std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(),
            "bytes differ after step {i}"
        );
    }
}

#[test]
fn too_large_is_refused_by_both_and_nothing_changes() {
    let Some(ge) = tool("grub-editenv", "grub-common") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("grubenv");
    editenv(&ge, &f, &["create"]);
    editenv(&ge, &f, &["set", "keep=1"]);
    let before = std::fs::read(&f).unwrap();
    let big = "x".repeat(1000);
    let status = Command::new(&ge)
        .arg(&f)
        .args(["set", &format!("big={big}")])
        .output()
        .unwrap()
        .status;
    assert!(!status.success());
    let mut env = GrubEnvFile::new(&f);
    let mut v = env.load().unwrap();
    v.set("big", big).unwrap();
    assert!(matches!(
        env.store(&v),
        Err(BootEnvError::Grub(GrubEnvError::TooLarge { .. }))
    ));
    assert_eq!(std::fs::read(&f).unwrap(), before);
}

#[test]
fn fixtures_from_grub_editenv_parse() {
    let empty = std::fs::read(fixture("grubenv-empty.bin")).unwrap();
    assert_eq!(empty.len(), grub::DEFAULT_SIZE);
    assert!(grub::parse(&empty).unwrap().is_empty());
    assert_eq!(
        grub::encode(&Vars::new(), grub::DEFAULT_SIZE).unwrap(),
        empty
    );

    let block = std::fs::read(fixture("grubenv-editenv.bin")).unwrap();
    let v = grub::parse(&block).unwrap();
    let expect = vars(&[
        ("tugboot_slot", "A"),
        ("tugboot_try", "B"),
        ("tugboot_tries", "3"),
        ("spaced", "a b  c"),
        ("eq", "x=y=z"),
        ("back", "C:\\path\\"),
        ("multi", "line1\nline2"),
    ]);
    assert!(v.eq_ordered(&expect), "{v:?}");
    assert_eq!(grub::encode(&v, grub::DEFAULT_SIZE).unwrap(), block);
    assert_eq!(ab::slot(&v), Ok(Slot::A));
    assert_eq!(
        ab::trial(&v),
        Ok(Some(ab::Trial {
            slot: Slot::B,
            tries_left: 3
        }))
    );
}

fn snippet() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../firmware/boot/grub-ab.cfg")
}

#[test]
fn ab_snippet_passes_grub_script_check() {
    let Some(check) = tool("grub-script-check", "grub-common") else {
        return;
    };
    run(Command::new(check).arg(snippet()));
}

/// Boots real GRUB (grub-emu) on an ext2 image holding a grubenv written by our code, with a
/// grub.cfg that sources the shipped snippet and prints its decision, then reads the block
/// back out of the image.
struct GrubEmu {
    dir: tempfile::TempDir,
    emu: PathBuf,
    mke2fs: PathBuf,
    debugfs: PathBuf,
}

impl GrubEmu {
    fn new() -> Option<Self> {
        let emu = tool("grub-emu", "grub-emu")?;
        let mke2fs = tool("mke2fs", "e2fsprogs")?;
        let debugfs = tool("debugfs", "e2fsprogs")?;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::os::unix::fs::symlink("/usr/lib/grub/x86_64-emu", p.join("x86_64-emu")).unwrap();
        std::fs::write(
            p.join("device.map"),
            format!("(hd0) {}\n", p.join("disk.img").display()),
        )
        .unwrap();
        std::fs::write(
            p.join("grub.cfg"),
            format!(
                "set tugboot_env=(hd0)/grubenv\nsource (host){}\n\
                 echo \"RESULT boot=${{tugboot_boot}} default=${{default}}\"\nhalt\n",
                snippet().display()
            ),
        )
        .unwrap();
        std::fs::create_dir(p.join("content")).unwrap();
        Some(Self {
            dir,
            emu,
            mke2fs,
            debugfs,
        })
    }

    /// Formats the disk image with a grubenv holding `vars`, written by our backend.
    fn install(&self, vars: &Vars) {
        let p = self.dir.path();
        GrubEnvFile::new(p.join("content/grubenv"))
            .initialize(vars)
            .unwrap();
        let _ = std::fs::remove_file(p.join("disk.img"));
        run(Command::new(&self.mke2fs)
            .args(["-q", "-t", "ext2", "-d"])
            .arg(p.join("content"))
            .arg(p.join("disk.img"))
            .arg("4M"));
    }

    /// One boot: returns the slot GRUB chose and the environment it left behind.
    fn boot(&self) -> (String, Vars) {
        let p = self.dir.path();
        let out = run(Command::new("timeout")
            .arg("120")
            .arg(&self.emu)
            .arg("-d")
            .arg(p)
            .arg("-m")
            .arg(p.join("device.map"))
            .stdin(std::process::Stdio::null()));
        let text = String::from_utf8_lossy(&out);
        let line = text
            .split(['\r', '\n'])
            .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r.to_owned()))
            .unwrap_or_else(|| panic!("no RESULT line from grub-emu:\n{text}"));
        let block = run(Command::new(&self.debugfs)
            .args(["-R", "cat /grubenv"])
            .arg(p.join("disk.img")));
        (line, grub::parse(&block).unwrap())
    }
}

#[test]
fn real_grub_counts_down_a_trial_and_falls_back() {
    let Some(emu) = GrubEmu::new() else {
        return;
    };
    let mut v = Vars::new();
    v.set(ab::SLOT, "A").unwrap();
    ab::arm_trial(&mut v, Slot::B, 2).unwrap();
    emu.install(&v);

    let (r, env) = emu.boot();
    assert_eq!(r, "boot=B default=tugboot_B");
    assert_eq!(
        ab::trial(&env),
        Ok(Some(ab::Trial {
            slot: Slot::B,
            tries_left: 1
        }))
    );
    let (r, env) = emu.boot();
    assert_eq!(r, "boot=B default=tugboot_B");
    assert_eq!(
        ab::trial(&env),
        Ok(Some(ab::Trial {
            slot: Slot::B,
            tries_left: 0
        }))
    );
    // Never committed: the third boot gives up on B for good.
    for _ in 0..2 {
        let (r, env) = emu.boot();
        assert_eq!(r, "boot=A default=tugboot_A");
        assert_eq!(ab::trial(&env), Ok(None));
        assert_eq!(ab::slot(&env), Ok(Slot::A));
    }
}

#[test]
fn real_grub_boots_committed_trial_slot() {
    let Some(emu) = GrubEmu::new() else {
        return;
    };
    let mut v = Vars::new();
    ab::arm_trial(&mut v, Slot::B, 1).unwrap();
    emu.install(&v);
    let (r, mut env) = emu.boot();
    assert_eq!(r, "boot=B default=tugboot_B");
    // The agent finds the system healthy and commits B.
    ab::commit(&mut env, Slot::B);
    emu.install(&env);
    for _ in 0..2 {
        let (r, env) = emu.boot();
        assert_eq!(r, "boot=B default=tugboot_B");
        assert_eq!(ab::trial(&env), Ok(None));
    }
}

#[test]
fn real_grub_without_writable_env_does_not_try() {
    let Some(emu) = GrubEmu::new() else {
        return;
    };
    // The env on the host file system: GRUB cannot save_env there ("sparse file not allowed"),
    // so the trial must not be attempted.
    let p = emu.dir.path();
    let mut v = Vars::new();
    ab::arm_trial(&mut v, Slot::B, 3).unwrap();
    GrubEnvFile::new(p.join("host-grubenv"))
        .initialize(&v)
        .unwrap();
    let cfg = std::fs::read_to_string(p.join("grub.cfg"))
        .unwrap()
        .replace(
            "(hd0)/grubenv",
            &format!("(host){}", p.join("host-grubenv").display()),
        );
    std::fs::write(p.join("grub.cfg"), cfg).unwrap();
    emu.install(&Vars::new());
    let (r, _) = emu.boot();
    assert_eq!(r, "boot=A default=tugboot_A");
    let after = GrubEnvFile::new(p.join("host-grubenv")).load().unwrap();
    assert_eq!(ab::trial(&after).unwrap().unwrap().tries_left, 3);
}
