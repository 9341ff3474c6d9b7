//! U-Boot environments cross-checked against Debian's real tools: `mkenvimage` (u-boot-tools)
//! and `fw_printenv`/`fw_setenv` (libubootenv-tool).
//!
//! A missing tool fails the test with the package to install, unless
//! `TUGBOOT_SKIP_TOOL_TESTS=1` is set.

use std::path::PathBuf;
use std::process::Command;

use tugboot_agent::bootloader::uboot::{
    self, CopyIndex, EnvConfig, EnvDevice, UbootEnvFile, encode_redundant_copy, encode_single,
    parse_redundant, parse_redundant_copy, parse_single,
};
use tugboot_agent::bootloader::{BootEnv, BootEnvError, Vars};

mod common;
use common::{fixture, run, tool, vars};

/// What `fw_printenv` prints for `v`: sorted `name=value` lines.
fn printenv_text(v: &Vars) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, val) in v.iter_sorted() {
        out.extend_from_slice(n);
        out.push(b'=');
        out.extend_from_slice(val);
        out.push(b'\n');
    }
    out
}

/// The mkenvimage input format: `name=value` lines, `#` comments, blank lines skipped.
fn parse_mkenvimage_text(text: &str) -> Vars {
    let mut v = Vars::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (n, val) = line.split_once('=').unwrap();
        v.set(n, val).unwrap();
    }
    v
}

fn tricky_vars() -> Vars {
    vars(&[
        ("tugboot_slot", "B"),
        ("bootcount", "0"),
        ("spaced", "a b  c "),
        ("eq", "x=y=z"),
        ("quote", "'\"`$"),
        ("back", "C:\\path\\"),
        (
            "bootargs",
            "console=ttyS0,115200 root=PARTLABEL=rootB rootwait",
        ),
    ])
}

struct Sandbox {
    _dir: tempfile::TempDir,
    disk: PathBuf,
    config: PathBuf,
}

/// A 16 KiB "disk" with the environment at 0x1000 (and 0x2000 when redundant), plus a
/// fw_env.config describing it.
fn sandbox(redundant: bool) -> (Sandbox, UbootEnvFile) {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 0x4000]).unwrap();
    let config = dir.path().join("fw_env.config");
    let mut text = format!("# test\n{} 0x1000 0x1000\n", disk.display());
    if redundant {
        text.push_str(&format!("{} 0x2000 0x1000\n", disk.display()));
    }
    std::fs::write(&config, &text).unwrap();
    let env = UbootEnvFile::from_config_file(&config).unwrap();
    assert_eq!(env.config().is_redundant(), redundant);
    (
        Sandbox {
            _dir: dir,
            disk,
            config,
        },
        env,
    )
}

#[test]
fn ours_single_is_read_by_fw_printenv() {
    let Some(printenv) = tool("fw_printenv", "libubootenv-tool") else {
        return;
    };
    let (sb, mut env) = sandbox(false);
    let v = tricky_vars();
    env.initialize(&v).unwrap();
    let out = run(Command::new(&printenv).arg("-c").arg(&sb.config));
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&printenv_text(&v))
    );
    let out = run(Command::new(&printenv)
        .arg("-c")
        .arg(&sb.config)
        .args(["-n", "back"]));
    assert_eq!(out, b"C:\\path\\\n");
}

#[test]
fn fw_setenv_single_is_read_by_ours_and_ours_by_it() {
    let (Some(printenv), Some(setenv)) = (
        tool("fw_printenv", "libubootenv-tool"),
        tool("fw_setenv", "libubootenv-tool"),
    ) else {
        return;
    };
    let (sb, mut env) = sandbox(false);
    env.initialize(&vars(&[("a", "1")])).unwrap();
    run(Command::new(&setenv)
        .arg("-c")
        .arg(&sb.config)
        .args(["spaced", "x y=z"]));
    let got = env.load().unwrap();
    assert_eq!(got, vars(&[("a", "1"), ("spaced", "x y=z")]));

    let mut next = got.clone();
    next.remove("a");
    next.set("bootlimit", "5").unwrap();
    env.store(&next).unwrap();
    let out = run(Command::new(&printenv).arg("-c").arg(&sb.config));
    assert_eq!(out, printenv_text(&next));
    // The bytes outside the region are untouched by either side.
    let disk = std::fs::read(&sb.disk).unwrap();
    assert!(
        disk[..0x1000]
            .iter()
            .chain(&disk[0x2000..])
            .all(|&b| b == 0)
    );
}

#[test]
fn redundant_interleaved_with_fw_setenv_across_flag_wrap() {
    let (Some(printenv), Some(setenv)) = (
        tool("fw_printenv", "libubootenv-tool"),
        tool("fw_setenv", "libubootenv-tool"),
    ) else {
        return;
    };
    let (sb, mut env) = sandbox(true);
    // Start just below the wrap: copy 0 current with flags 0xfd, copy 1 older with 0xfc.
    let start = vars(&[("n", "0")]);
    let mut disk = std::fs::read(&sb.disk).unwrap();
    disk[0x1000..0x2000].copy_from_slice(&encode_redundant_copy(&start, 0x1000, 0xfd, 0).unwrap());
    disk[0x2000..0x3000].copy_from_slice(&encode_redundant_copy(&start, 0x1000, 0xfc, 0).unwrap());
    std::fs::write(&sb.disk, &disk).unwrap();

    let mut expected_current = CopyIndex::First;
    for round in 1..=6u32 {
        // Odd rounds: we write; even rounds: fw_setenv writes. Each reads the other's result.
        if round % 2 == 1 {
            let mut v = env.load().unwrap();
            v.set("n", round.to_string()).unwrap();
            v.set(format!("ours{round}"), "x y").unwrap();
            env.store(&v).unwrap();
            let out = run(Command::new(&printenv).arg("-c").arg(&sb.config));
            assert_eq!(out, printenv_text(&v), "round {round}");
        } else {
            run(Command::new(&setenv)
                .arg("-c")
                .arg(&sb.config)
                .args(["n", &round.to_string()]));
            let v = env.load().unwrap();
            assert_eq!(v.get_str("n"), Some(round.to_string().as_str()));
            assert_eq!(v.get_str(&format!("ours{}", round - 1)), Some("x y"));
        }
        expected_current = expected_current.other();
        let r = env.load_redundant().unwrap();
        assert_eq!(r.current, expected_current, "round {round}");
        assert_eq!(r.flags, 0xfdu8.wrapping_add(u8::try_from(round).unwrap()));
        assert!(r.other_valid);
    }
}

#[test]
fn ours_redundant_fresh_is_read_by_fw_printenv() {
    let Some(printenv) = tool("fw_printenv", "libubootenv-tool") else {
        return;
    };
    let (sb, mut env) = sandbox(true);
    env.initialize(&vars(&[("stale", "1")])).unwrap();
    env.store(&tricky_vars()).unwrap();
    let out = run(Command::new(&printenv).arg("-c").arg(&sb.config));
    assert_eq!(out, printenv_text(&tricky_vars()));
}

#[test]
fn mkenvimage_output_is_byte_identical_to_ours() {
    let Some(mkenvimage) = tool("mkenvimage", "u-boot-tools") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let v = parse_mkenvimage_text(&std::fs::read_to_string(fixture("uboot-env.txt")).unwrap());
    // mkenvimage keeps its input order while libubootenv (and our encoder) sort by name, so
    // feed it the sorted variables; the bytes must then be identical.
    let txt = dir.path().join("sorted.txt");
    std::fs::write(&txt, printenv_text(&v)).unwrap();
    for (size, redundant, pad) in [
        (0x1000, false, None),
        (0x2000, true, None),
        (0x400, false, Some(0u8)),
    ] {
        let out = dir.path().join("img.bin");
        let mut cmd = Command::new(&mkenvimage);
        cmd.args(["-s", &format!("{size:#x}")]).arg("-o").arg(&out);
        if redundant {
            cmd.arg("-r");
        }
        if let Some(p) = pad {
            cmd.args(["-p", &p.to_string()]);
        }
        run(cmd.arg(&txt));
        let theirs = std::fs::read(&out).unwrap();
        let pad = pad.unwrap_or(0xff);
        let ours = if redundant {
            encode_redundant_copy(&v, size, 1, pad).unwrap()
        } else {
            encode_single(&v, size, pad).unwrap()
        };
        assert!(
            theirs == ours,
            "size {size:#x} redundant {redundant}: bytes differ"
        );
        if redundant {
            assert_eq!(parse_redundant_copy(&theirs).unwrap(), (1, v.clone()));
        } else {
            assert_eq!(parse_single(&theirs).unwrap(), v);
        }
    }
}

#[test]
fn fixtures_from_real_tools_parse() {
    let v = parse_mkenvimage_text(&std::fs::read_to_string(fixture("uboot-env.txt")).unwrap());
    let single = std::fs::read(fixture("uboot-single-mkenvimage.bin")).unwrap();
    assert_eq!(parse_single(&single).unwrap(), v);
    let red = std::fs::read(fixture("uboot-redundant-mkenvimage.bin")).unwrap();
    // A freshly flashed redundant image next to an erased (invalid) second copy.
    let erased = vec![0xffu8; red.len()];
    let env = parse_redundant(&red, &erased, uboot::FlagScheme::Incremental).unwrap();
    assert_eq!(
        (env.current, env.flags, env.other_valid),
        (CopyIndex::First, 1, false)
    );
    assert_eq!(env.vars, v);

    // fw_setenv wrote twice: copy 1 (flags 2) then copy 0 (flags 3).
    let pair = std::fs::read(fixture("uboot-redundant-pair-fwsetenv.bin")).unwrap();
    let (a, b) = pair.split_at(0x1000);
    let env = parse_redundant(a, b, uboot::FlagScheme::Incremental).unwrap();
    assert_eq!((env.current, env.flags), (CopyIndex::First, 3));
    let mut expect = v.clone();
    expect.set("upgrade_available", "1").unwrap();
    expect.set("tugboot_slot", "B").unwrap();
    assert_eq!(env.vars, expect);
    assert_eq!(
        uboot::ab::slot(&env.vars),
        Ok(Some(tugboot_agent::bootloader::Slot::B))
    );
    assert_eq!(uboot::ab::upgrade_available(&env.vars), Ok(true));
    assert_eq!(uboot::ab::bootlimit(&env.vars), Ok(Some(3)));
}

#[test]
fn corrupt_environment_is_refused_by_ours_and_by_fw_printenv() {
    let Some(printenv) = tool("fw_printenv", "libubootenv-tool") else {
        return;
    };
    let (sb, mut env) = sandbox(true);
    // Both copies zero: invalid CRCs.
    let out = Command::new(&printenv)
        .arg("-c")
        .arg(&sb.config)
        .output()
        .unwrap();
    assert!(!out.status.success() || out.stdout.is_empty());
    assert!(matches!(
        env.store(&vars(&[("a", "1")])),
        Err(BootEnvError::Uboot(
            uboot::UbootEnvError::BothCopiesCorrupt { .. }
        ))
    ));
    assert!(std::fs::read(&sb.disk).unwrap().iter().all(|&b| b == 0));
}

#[test]
fn config_file_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fw_env.config");
    std::fs::write(&cfg, "/dev/mmcblk0 0x3fe000\n").unwrap();
    let err = UbootEnvFile::from_config_file(&cfg).unwrap_err();
    assert_eq!(
        err.to_string(),
        "U-Boot environment config: line 1: expected `device offset env-size [sector-size [sector-count]]`"
    );
    let single = EnvConfig::single(EnvDevice::new("/x", 0, 0x100)).unwrap();
    assert!(!single.is_redundant());
}

/// Whether the test runs as root (read from /proc: no libc in the agent's dependencies).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// A loop device over a temp file, detached on drop.
struct Loop {
    losetup: PathBuf,
    dev: PathBuf,
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new(&self.losetup)
            .arg("-d")
            .arg(&self.dev)
            .status();
    }
}

#[test]
#[ignore = "root: loop devices"]
fn redundant_env_on_a_real_block_device() {
    let (Some(losetup), Some(printenv), Some(setenv)) = (
        tool("losetup", "mount"),
        tool("fw_printenv", "libubootenv-tool"),
        tool("fw_setenv", "libubootenv-tool"),
    ) else {
        return;
    };
    assert!(
        is_root(),
        "this test attaches a loop device and needs root (tests/run runs it as root)"
    );
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("disk.img");
    std::fs::write(&backing, vec![0u8; 1 << 20]).unwrap();
    let out = run(Command::new(&losetup).args(["-f", "--show"]).arg(&backing));
    let dev = PathBuf::from(String::from_utf8(out).unwrap().trim());
    let _guard = Loop {
        losetup,
        dev: dev.clone(),
    };
    let config = dir.path().join("fw_env.config");
    std::fs::write(
        &config,
        format!(
            "{d} 0x10000 0x2000\n{d} 0x20000 0x2000\n",
            d = dev.display()
        ),
    )
    .unwrap();
    let mut env = UbootEnvFile::from_config_file(&config).unwrap();
    env.initialize(&vars(&[("tugboot_slot", "A")])).unwrap();
    let mut v = env.load().unwrap();
    uboot::ab::arm_trial(&mut v, tugboot_agent::bootloader::Slot::B, 3).unwrap();
    env.store(&v).unwrap();
    let out = run(Command::new(&printenv).arg("-c").arg(&config));
    assert_eq!(out, printenv_text(&v));
    run(Command::new(&setenv)
        .arg("-c")
        .arg(&config)
        .args(["bootcount", "2"]));
    let after = env.load().unwrap();
    assert_eq!(uboot::ab::bootcount(&after), Ok(2));
    assert_eq!(env.load_redundant().unwrap().flags, 3);
}
