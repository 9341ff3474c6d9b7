//! Shared by the bootloader-environment tests that cross-check real tools.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::Command;

use tugboot_agent::bootloader::Vars;

/// The tool's path, or `None` (skip) when absent and skipping is allowed.
pub fn tool(name: &str, package: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    // mke2fs/debugfs/losetup live in sbin, which is not on every user's PATH.
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    let found = dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("TUGBOOT_SKIP_TOOL_TESTS").as_deref() == Ok("1"),
            "`{name}` not found: install the Debian package `{package}` \
             (or set TUGBOOT_SKIP_TOOL_TESTS=1 to skip tool cross-checks)"
        );
        eprintln!("skipping: {name} not installed and TUGBOOT_SKIP_TOOL_TESTS=1");
    }
    found
}

pub fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().expect("spawn tool");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/bootenv")
        .join(name)
}

pub fn vars(pairs: &[(&str, &str)]) -> Vars {
    let mut v = Vars::new();
    for (n, val) in pairs {
        v.set(*n, *val).unwrap();
    }
    v
}
